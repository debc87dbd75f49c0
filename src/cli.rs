//! Command-line arguments (clap), and turning them into a [`Config`].
//!
//! Precedence, highest first: a flag, its environment variable, the config file, the
//! built-in default. clap resolves flag versus env; [`ServeArgs::config`] lays the
//! result over the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "kubescribe",
    version,
    about = "Record every admitted Kubernetes write as a git commit"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, kubescribe serves; these are `serve`'s flags, also
    /// accepted before `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log format.
    #[arg(long, global = true, env = "KUBESCRIBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook (the default).
    Serve(ServeArgs),
    /// Show what the webhook would answer for manifests or AdmissionReviews, offline.
    /// Exit code: 0 all allowed, 1 a write is denied, 2 bad input or usage.
    Check(crate::check::CheckArgs),
    /// Print the ValidatingWebhookConfiguration and MutatingWebhookConfiguration for
    /// a config file (YAML on stdout).
    WebhookConfig(crate::webhook::WebhookConfigArgs),
    /// Make a CA and a serving certificate, and print the caBundle.
    Certs(CertsArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// DNS names for the serving certificate; repeat for more. With none: the
    /// Service names of `--service` in `--namespace`.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// IP addresses for the serving certificate; repeat for more.
    #[arg(long = "ip")]
    pub ips: Vec<std::net::IpAddr>,
    #[arg(long, default_value = "kubescribe")]
    pub service: String,
    #[arg(long, default_value = "kubescribe")]
    pub namespace: String,
    /// Where ca.crt, ca.key, tls.crt and tls.key are written.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Replace files that are already there.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// Config file (YAML); see docs/configuration.md.
    #[arg(long, env = "KUBESCRIBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "KUBESCRIBE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for state; the repository is <DIR>/repo.git [default: data].
    #[arg(long, env = "KUBESCRIBE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serving certificate chain (PEM). Without it a dev certificate is made.
    #[arg(long, env = "KUBESCRIBE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, env = "KUBESCRIBE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Git remote the default repository's branch is pushed to (credentials go in
    /// the config file's repository.remote).
    #[arg(long, env = "KUBESCRIBE_REMOTE")]
    pub remote: Option<String>,
    /// Branch of the default repository [default: main].
    #[arg(long, env = "KUBESCRIBE_BRANCH")]
    pub branch: Option<String>,
    /// The namespace kubescribe runs in: never recorded, by admission or the
    /// reconciler (added to ignore.namespaces). The Helm chart sets it.
    #[arg(long, env = "KUBESCRIBE_NAMESPACE")]
    pub namespace: Option<String>,
}

impl Cli {
    /// The command to run; `serve` when none is given. Serve flags given before the
    /// subcommand count too, and those after it win.
    pub fn into_command(self) -> Command {
        match self.command {
            Some(Command::Serve(args)) => Command::Serve(args.or(self.serve)),
            // `kubescribe --config f check ...` means the same config file as
            // `kubescribe check --config f ...`.
            Some(Command::Check(mut args)) => {
                args.config = args.config.or(self.serve.config);
                Command::Check(args)
            }
            Some(Command::WebhookConfig(mut args)) => {
                args.config = args.config.or(self.serve.config);
                Command::WebhookConfig(args)
            }
            Some(other) => other,
            None => Command::Serve(self.serve),
        }
    }
}

impl ServeArgs {
    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(other.config),
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            remote: self.remote.or(other.remote),
            branch: self.branch.or(other.branch),
            namespace: self.namespace.or(other.namespace),
        }
    }

    /// The config file with these arguments laid over it, checked once every source
    /// is applied (flag > environment > file).
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load_unchecked(self.config.as_deref())?;
        if let Some(url) = &self.remote {
            config
                .repository
                .remote
                .get_or_insert_with(Default::default)
                .url = url.clone();
        }
        if let Some(branch) = &self.branch {
            config.repository.branch = branch.clone();
        }
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.server.tls_cert = Some(cert.clone());
            config.server.tls_key = Some(key.clone());
        }
        // Its own objects (Deployment, Service, ConfigMap) are the installation's,
        // which the webhook is never sent; the reconciler leaves them out as well.
        if let Some(namespace) = self.namespace.as_ref().filter(|ns| !ns.is_empty()) {
            if !config.ignore.namespaces.contains(namespace) {
                config.ignore.namespaces.push(namespace.clone());
            }
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubescribe").chain(args.iter().copied()))
    }

    fn serve_args(cli: Cli) -> ServeArgs {
        match cli.into_command() {
            Command::Serve(args) => args,
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn a_config_flag_before_check_is_checks_config() {
        let cli = parse(&["--config", "/etc/k.yaml", "check", "-f", "x.yaml"]).unwrap();
        match cli.into_command() {
            Command::Check(args) => {
                assert_eq!(
                    args.config.as_deref(),
                    Some(std::path::Path::new("/etc/k.yaml"))
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn its_own_namespace_is_one_the_control_plane_keeps() {
        let config = serve_args(parse(&["--namespace", "kubescribe-system"]).unwrap())
            .config()
            .unwrap();
        assert_eq!(
            config.ignore.namespaces,
            [
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "kubescribe-system"
            ]
        );
    }

    #[test]
    fn remote_and_branch_flags_set_the_default_repository() {
        let config =
            serve_args(parse(&["--remote", "file:///srv/r.git", "--branch", "cluster-a"]).unwrap())
                .config()
                .unwrap();
        assert_eq!(config.repository.branch, "cluster-a");
        assert_eq!(
            config.repository.remote.map(|r| r.url).as_deref(),
            Some("file:///srv/r.git")
        );
        let err = serve_args(parse(&["--branch", "a..b"]).unwrap())
            .config()
            .unwrap_err();
        assert!(err.to_string().contains("branch"), "{err}");
    }

    #[test]
    fn a_file_may_rely_on_a_flag_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        // `wait: push` needs a remote, which the flag (or KUBESCRIBE_REMOTE) gives.
        let push = write("push.yaml", "rules:\n- name: all\n  wait: push\n");
        let config = serve_args(
            parse(&["serve", "--config", &push, "--remote", "file:///srv/r.git"]).unwrap(),
        )
        .config()
        .expect("the flag completes the file");
        assert_eq!(config.rules[0].wait, crate::config::Wait::Push);
        let err = serve_args(parse(&["serve", "--config", &push]).unwrap())
            .config()
            .unwrap_err();
        assert!(err.to_string().contains("needs a remote"), "{err}");
        // A file with half of a TLS pair, the flags giving both.
        let half = write("half.yaml", "server:\n  tlsCert: /file.crt\n");
        let config = serve_args(
            parse(&[
                "serve",
                "--config",
                &half,
                "--tls-cert",
                "/a.crt",
                "--tls-key",
                "/a.key",
            ])
            .unwrap(),
        )
        .config()
        .expect("the flags complete the pair");
        assert_eq!(config.server.tls_cert.unwrap(), PathBuf::from("/a.crt"));
        // A remote section without a url, completed by --remote.
        let section = write(
            "section.yaml",
            "repository:\n  remote:\n    timeout: 5s\nrules:\n- name: all\n  wait: push\n",
        );
        let config = serve_args(
            parse(&[
                "serve",
                "--config",
                &section,
                "--remote",
                "https://git.example.com/x.git",
            ])
            .unwrap(),
        )
        .config()
        .unwrap();
        let remote = config.repository.remote.unwrap();
        assert_eq!(remote.url, "https://git.example.com/x.git");
        // A flag that breaks the file is caught after it is applied.
        let err = serve_args(
            parse(&[
                "serve",
                "--config",
                &section,
                "--remote",
                "https://tok3n@git.example.com/x.git",
            ])
            .unwrap(),
        )
        .config()
        .unwrap_err();
        assert!(err.to_string().contains("user name"), "{err}");
    }

    #[test]
    fn no_arguments_means_serve_on_defaults() {
        let config = serve_args(parse(&[]).unwrap()).config().unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(config.repository_path(), PathBuf::from("data/repo.git"));
        assert!(config.server.tls_cert.is_none());
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "server:\n  listen: 0.0.0.0:9443\ndataDir: /from-file\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let from_file = serve_args(parse(&["serve", "--config", file]).unwrap())
            .config()
            .unwrap();
        assert_eq!(from_file.server.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(from_file.data_dir, PathBuf::from("/from-file"));
        let overridden = serve_args(
            parse(&[
                "serve",
                "--config",
                file,
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                "/flag",
            ])
            .unwrap(),
        )
        .config()
        .unwrap();
        assert_eq!(overridden.server.listen.to_string(), "127.0.0.1:1");
        assert_eq!(overridden.data_dir, PathBuf::from("/flag"));
    }

    #[test]
    fn serve_is_the_default_command_with_the_same_flags() {
        let args = serve_args(parse(&["--listen", "127.0.0.1:2"]).unwrap());
        assert_eq!(
            args.config().unwrap().server.listen.to_string(),
            "127.0.0.1:2"
        );
        let before = serve_args(
            parse(&["--listen", "127.0.0.1:2", "--log-format", "json", "serve"]).unwrap(),
        );
        assert_eq!(before.listen.unwrap().to_string(), "127.0.0.1:2");
        let both = serve_args(
            parse(&[
                "--listen",
                "127.0.0.1:2",
                "serve",
                "--listen",
                "127.0.0.1:3",
            ])
            .unwrap(),
        );
        assert_eq!(
            both.listen.unwrap().to_string(),
            "127.0.0.1:3",
            "the subcommand's flag wins"
        );
    }

    #[test]
    fn tls_flags_come_in_pairs_and_bad_addresses_are_refused() {
        assert!(parse(&["serve", "--tls-cert", "a.crt"]).is_err());
        assert!(parse(&["serve", "--listen", "not-an-address"]).is_err());
        let args =
            serve_args(parse(&["serve", "--tls-cert", "a.crt", "--tls-key", "a.key"]).unwrap());
        assert_eq!(
            args.config().unwrap().server.tls_key,
            Some(PathBuf::from("a.key"))
        );
    }

    #[test]
    fn every_flag_has_its_environment_variable() {
        let command = <Cli as clap::CommandFactory>::command();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve
            .get_arguments()
            .filter(|a| !a.is_positional() && a.get_long().is_some_and(|l| l != "help"))
        {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let expected = format!(
                "KUBESCRIBE_{}",
                arg.get_long().unwrap().to_uppercase().replace('-', "_")
            );
            assert_eq!(
                env.as_deref(),
                Some(expected.as_str()),
                "--{}",
                arg.get_long().unwrap()
            );
        }
    }
}
