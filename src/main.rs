//! The `kubescribe` binary: parse arguments, build the config, run, and own the exit code.

use std::process::ExitCode;

use clap::Parser;
use kubescribe::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.into_command() {
        Command::Serve(args) => {
            let config = args.config()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let server = kubescribe::serve::Server::start(&config).await?;
                if let Some(ca) = &server.dev_ca {
                    println!(
                        "kubescribe: serving https://{} with the dev CA at {}",
                        server.local_addr(),
                        ca.display()
                    );
                }
                server.run_until_signal().await?;
                anyhow::Ok(())
            })
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
