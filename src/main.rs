//! The `kubescribe` binary: parse arguments, build the config, run, and own the exit code.

use std::process::ExitCode;

use clap::Parser;
use kubescribe::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Usage errors are exit 2 (clap's own code), help and version are 0.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    // Only the server logs; the other subcommands' stdout is their output (a report,
    // YAML, a caBundle) and errors go to stderr.
    if matches!(cli.command, None | Some(Command::Serve(_))) {
        init_tracing(cli.log_format);
    }
    let command = cli.into_command();
    if let Command::Check(args) = &command {
        return check(args);
    }
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// glibc's malloc serves blocks from 128 KiB up with their own mappings, but raises
/// that threshold to the largest such block freed, up to 32 MiB. After a snapshot's
/// commits (list pages, packs of several MiB) every later large block then comes
/// from the heap, where freed memory stays in RSS: 20 MB of a 100,000-object
/// snapshot's 66 MB. A fixed threshold keeps large blocks in mappings that go back
/// to the system when freed. Typical requests' blocks are far smaller; a body of
/// 256 KiB or more now gets a mapping of its own, given back when it is freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before any thread
    // starts, and a refused value (it returns 0) leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// `kubescribe check`: the report on stdout, the exit code from the report.
fn check(args: &kubescribe::check::CheckArgs) -> ExitCode {
    use kubescribe::check::{self, OutputFormat};
    match check::run(args, &mut std::io::stdin()) {
        Ok(report) => {
            let text = match args.output {
                OutputFormat::Text => check::render_text(&report),
                OutputFormat::Json => check::render_json(&report),
                OutputFormat::Junit => check::render_junit(&report),
            };
            print!("{text}");
            ExitCode::from(report.exit_code())
        }
        Err(error) => {
            eprintln!(
                "error: {}",
                anyhow::Error::from(error)
                    .chain()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check(_) => unreachable!("handled in main"),
        Command::WebhookConfig(args) => {
            print!("{}", kubescribe::webhook::render(&args)?);
            Ok(())
        }
        Command::Certs(args) => {
            use base64::Engine as _;
            let mut names = args.dns.clone();
            if names.is_empty() {
                let (svc, ns) = (&args.service, &args.namespace);
                names = vec![
                    svc.clone(),
                    format!("{svc}.{ns}"),
                    format!("{svc}.{ns}.svc"),
                    format!("{svc}.{ns}.svc.cluster.local"),
                ];
            }
            names.extend(args.ips.iter().map(ToString::to_string));
            let ca = kubescribe::tls::write_new_certificates(&args.out, &names, args.force)?;
            eprintln!(
                "kubescribe: wrote ca.crt, ca.key, tls.crt and tls.key to {} for {}, and client.crt and client.key for the apiserver to present (server.clientAuth); the caBundle follows",
                args.out.display(),
                names.join(", ")
            );
            println!("{}", base64::engine::general_purpose::STANDARD.encode(ca));
            Ok(())
        }
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
    // Colours only on a terminal: a pod's stdout is not one, and escape codes in
    // `kubectl logs` and log collectors break searching by field.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
