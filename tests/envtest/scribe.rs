//! The real `kubescribe serve` binary, registered with the test apiserver through the
//! configurations `kubescribe webhook-config` renders for the same config file: what
//! we ship is what is tested. Its serving certificate comes from `kubescribe certs`
//! (a real CA, `127.0.0.1` in the SAN), and the webhook configurations name it by URL
//! with that CA as `caBundle`.
//!
//! Each test names its own configurations (they are cluster-wide) and gives its rules
//! its own namespace, so tests sharing one apiserver never see each other's writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::plane::{ControlPlane, User, ADMIN};
use super::process::{self, Proc};

/// How long kubescribe gets to answer /readyz, and the apiserver to start calling a
/// newly registered webhook (its informer picks configurations up asynchronously).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Kubescribe {
    plane: &'static ControlPlane,
    /// The name of both webhook configurations.
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub repo: PathBuf,
    certs: PathBuf,
    proc: Option<Proc>,
    extra_args: Vec<String>,
}

impl Kubescribe {
    /// Serves `config_yaml` (its repository in a temp dir unless the config names
    /// one), waits until ready, and registers the webhook configurations.
    pub fn start(plane: &'static ControlPlane, name: &str, config_yaml: &str) -> Self {
        Self::start_with(plane, name, config_yaml, &[])
    }

    /// [`Self::start`] with more `serve` flags.
    pub fn start_with(
        plane: &'static ControlPlane,
        name: &str,
        config_yaml: &str,
        extra_args: &[&str],
    ) -> Self {
        let dir = process::work_dir(&format!("kubescribe-{name}"));
        let config = dir.join("kubescribe.yaml");
        std::fs::write(&config, with_client_auth(plane, config_yaml)).unwrap();
        let certs = dir.join("certs");
        run_ok(
            Command::new(binary())
                .args(["certs", "--ip", "127.0.0.1", "--out"])
                .arg(&certs),
        );
        let mut scribe = Self {
            plane,
            name: name.to_owned(),
            repo: dir.join("data").join("repo.git"),
            config,
            dir,
            port: process::free_port(),
            certs,
            proc: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        scribe.launch();
        scribe.register();
        scribe
    }

    fn launch(&mut self) {
        assert!(self.proc.is_none(), "kubescribe already runs");
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--tls-cert")
            .arg(self.certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(self.certs.join("tls.key"))
            .args(&self.extra_args)
            .env("RUST_LOG", "kubescribe=debug,info")
            .current_dir(&self.dir);
        let log = self.dir.join("kubescribe.log");
        let mut proc = Proc::spawn("kubescribe", cmd, &log);
        let (ca, port) = (self.certs.join("ca.crt"), self.port);
        process::wait_ready(&mut proc, READY_TIMEOUT, || readyz(&ca, port));
        self.proc = Some(proc);
    }

    /// `kubescribe webhook-config` for this config, applied as the admin.
    fn register(&self) {
        let rendered = run_ok(
            Command::new(binary())
                .arg("webhook-config")
                .arg("--config")
                .arg(&self.config)
                .arg("--url")
                .arg(format!("https://127.0.0.1:{}", self.port))
                .arg("--ca-bundle")
                .arg(self.certs.join("ca.crt"))
                .arg("--name")
                .arg(&self.name)
                // This suite's apiserver (1.20) predates matchConditions.
                .arg("--match-conditions=false"),
        );
        std::fs::write(self.dir.join("webhooks.yaml"), &rendered).unwrap();
        self.plane
            .kubectl_ok(ADMIN, &["apply", "-f", "-"], Some(&rendered));
    }

    /// Waits until the apiserver calls this kubescribe for writes in `namespace`: a
    /// server-side dry run of a ConfigMap there comes back with kubescribe's word
    /// (a warning, or a denial). The apiserver loads webhook configurations from a
    /// watch, so a write right after `register` may not be sent yet.
    pub fn await_webhook(&self, namespace: &str) {
        self.await_webhook_with(
            &[
                "create",
                "configmap",
                "kubescribe-probe",
                "-n",
                namespace,
                "--dry-run=server",
                "-o",
                "name",
            ],
            None,
        );
    }

    /// [`Self::await_webhook`] with a probe of the caller's: kubectl `args` (a
    /// server-side dry run) that kubescribe's rules record.
    pub fn await_webhook_with(&self, args: &[&str], stdin: Option<&str>) {
        let until = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.plane.kubectl(ADMIN, args, stdin);
            if String::from_utf8_lossy(&out.stderr).contains("kubescribe") {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "the apiserver did not call kubescribe {} for `kubectl {}` within {READY_TIMEOUT:?}; kubectl said: {}\nkubescribe log:\n{}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops kubescribe as Kubernetes would (SIGTERM, then SIGKILL after 10 s). The
    /// webhook configurations stay registered.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop(Duration::from_secs(10));
        }
    }

    /// Starts the stopped kubescribe again on the same port, data and config.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The CA of kubescribe's serving certificate (for curl's `--cacert`).
    /// What curl got from POSTing `body` to `/validate` straight to the port, as a
    /// forger would: the HTTP status (None when no answer came, as after a refused
    /// handshake) and the body. `extra`: more curl arguments (credentials, HTTP/2).
    pub fn post_review(&self, body: &str, extra: &[&str]) -> (Option<u16>, String) {
        let dir = tempfile::tempdir().unwrap();
        let body_file = dir.path().join("review.json");
        std::fs::write(&body_file, body).unwrap();
        let answer = dir.path().join("answer");
        let out = Command::new("curl")
            .args(["-s", "--max-time", "20", "-o"])
            .arg(&answer)
            .args(["-w", "%{http_code}", "--cacert"])
            .arg(self.serving_ca())
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body_file.display()))
            .args(extra)
            .arg(format!("{}/validate?timeout=10s", self.url()))
            .output()
            .expect("curl runs");
        let code: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let text = std::fs::read_to_string(&answer).unwrap_or_default();
        ((code != 0).then_some(code), text)
    }

    pub fn serving_ca(&self) -> PathBuf {
        self.certs.join("ca.crt")
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Fails the test if kubescribe has exited.
    pub fn assert_running(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.assert_running();
        }
    }

    /// The last lines of kubescribe's log, for a failed test's message.
    pub fn log(&self) -> String {
        process::log_tail(&self.dir.join("kubescribe.log"), 80)
    }

    /// kubescribe's whole log (text format, as in a pod).
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kubescribe.log")).unwrap_or_default()
    }

    /// The value of one sample (name and labels, as exposed) of kubescribe's
    /// /metrics, if it is there.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(self.certs.join("ca.crt"))
            .arg(format!("https://127.0.0.1:{}/metrics", self.port))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| line.strip_prefix(sample))
            .and_then(|value| value.trim().parse().ok())
    }

    /// `git --git-dir <repo> <args>`; fails the test on error.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.repo, args)
    }

    /// The file at `path` on `main`'s tip, if any.
    pub fn file(&self, path: &str) -> Option<String> {
        file_at(&self.repo, "main", path)
    }

    /// Commits on `main`, newest first.
    pub fn commit_count(&self) -> usize {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.repo)
            .args(["rev-list", "--count", "main"])
            .output()
            .unwrap();
        if !out.status.success() {
            return 0; // no commit yet: the branch does not exist
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    pub fn kubectl(&self, user: User, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        self.plane.kubectl(user, args, stdin)
    }
}

impl Drop for Kubescribe {
    fn drop(&mut self) {
        // Unregister first: with kubescribe gone, a `Fail` entry would refuse the
        // namespace's writes for the rest of the run.
        for kind in [
            "validatingwebhookconfiguration",
            "mutatingwebhookconfiguration",
        ] {
            let _ = self.plane.kubectl(
                ADMIN,
                &["delete", kind, &self.name, "--ignore-not-found"],
                None,
            );
        }
        self.stop();
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kubescribe")
}

/// GET /readyz over TLS with the test CA, through curl (installed by
/// scripts/install-deps.sh).
fn readyz(ca: &Path, port: u16) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "2", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .output()
        .expect("curl runs (scripts/install-deps.sh installs it)")
        .status
        .success()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn git(repo: &Path, args: &[&str]) -> String {
    run_ok(Command::new("git").arg("--git-dir").arg(repo).args(args))
}

/// `path` at `rev` in `repo`, if the revision and file exist.
pub fn file_at(repo: &Path, rev: &str, path: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["show", &format!("{rev}:{path}")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// `config_yaml` with `server.clientAuth` set, unless it sets it itself, to what a
/// production install uses: the apiserver's client certificate (its CA, the name
/// `kube-apiserver`). So every scenario runs with callers authenticated.
fn with_client_auth(plane: &ControlPlane, config_yaml: &str) -> String {
    let mut config: serde_json::Value = if config_yaml.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_yaml_ng::from_str(config_yaml).expect("the test's config is YAML")
    };
    let server = config
        .as_object_mut()
        .expect("the test's config is a mapping")
        .entry("server")
        .or_insert_with(|| serde_json::json!({}));
    if server.get("clientAuth").is_none() {
        server["clientAuth"] = serde_json::json!({
            "caFile": plane.webhook_client_ca,
            "allowedNames": [kubescribe::tls::APISERVER_CLIENT_NAME],
        });
    }
    serde_yaml_ng::to_string(&config).unwrap()
}

/// A real apiserver review (a ConfigMap create, from the recordings) by "mallory",
/// moved into `namespace` and renamed `name`, for a forger to send.
pub fn forged_review(namespace: &str, name: &str) -> String {
    let mut review = crate::common::fixture("009").review;
    review["request"]["namespace"] = serde_json::Value::from(namespace);
    review["request"]["name"] = serde_json::Value::from(name);
    review["request"]["object"]["metadata"]["namespace"] = serde_json::Value::from(namespace);
    review["request"]["object"]["metadata"]["name"] = serde_json::Value::from(name);
    review["request"]["userInfo"]["username"] = serde_json::Value::from("mallory");
    review.to_string()
}
