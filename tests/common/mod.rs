//! Shared test scaffolding: a real server over real TLS, a client that trusts its
//! dev CA, the recorded fixtures, and the `git` CLI to read what was written.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub mod apiserver;
pub mod forge;
pub mod forge_server;
pub mod gitops;
pub mod helm;
pub mod remotes;
pub mod sops;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use kubescribe::config::Config;
use kubescribe::load::{self, Client, Connection, Fixture};
use kubescribe::serve::Server;
use serde_json::Value;

pub struct TestServer {
    pub server: Server,
    pub client: Client,
    pub repo: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with `config_yaml` and its state in a temp dir.
    pub async fn start(config_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config_yaml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config_yaml: &str) -> Self {
        Self::start_with_faults(dir, config_yaml, kubescribe::fault::Faults::default()).await
    }

    /// [`TestServer::start_in`] with fault points a test holds and opens.
    pub async fn start_with_faults(
        dir: tempfile::TempDir,
        config_yaml: &str,
        faults: kubescribe::fault::Faults,
    ) -> Self {
        let mut config = Config::from_yaml(config_yaml).expect("test config parses");
        config.faults = faults;
        // These tests send reviews as a client that proves nothing, by design; the
        // tests of caller authentication set `server.clientAuth` themselves.
        if !config.server.client_auth.authenticates() {
            config.server.client_auth.allow_unauthenticated = true;
        }
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.dev_cert_dir = dir.path().join("certs");
        if config.repository.path.is_none() && config.data_dir == Path::new("data") {
            config.data_dir = dir.path().join("data");
        }
        let server = Server::start(&config).await.expect("server starts");
        let ca = server.dev_ca.clone().expect("tests use the dev CA");
        let client = Client::new(server.local_addr(), &ca).expect("client");
        Self {
            server,
            client,
            repo: config.repository_path(),
            dir,
        }
    }

    /// Sends one fixture's review on a fresh connection; the answer must be HTTP 200.
    pub async fn send(&self, fixture: &Fixture) -> Value {
        let (status, answer) = self
            .connect()
            .await
            .review(&fixture.path, body(&fixture.review))
            .await
            .expect("the review is answered");
        assert_eq!(status, 200, "{}", fixture.file);
        answer
    }

    pub async fn connect(&self) -> Connection {
        self.client
            .connect()
            .await
            .expect("TLS connection to the test server")
    }

    /// A GET of `path` (`/metrics`, `/readyz`) on a new connection.
    pub async fn get(&self, path: &str) -> (axum::http::StatusCode, Bytes) {
        self.connect()
            .await
            .send(axum::http::Method::GET, path, None, Bytes::new())
            .await
            .unwrap()
    }

    /// Runs `git` in the repository and returns its stdout; fails the test on error.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.repo, args)
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes: for work a server
/// does in the background (pushes, reconcile), which has no event to await from
/// outside.
pub async fn eventually(limit: std::time::Duration, what: &str, mut check: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The value of one sample of the server's /metrics; fails the test without it.
pub async fn metric(server: &TestServer, sample: &str) -> f64 {
    let (value, text) = sample_of(server, sample).await;
    value.unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

/// The value of one sample of the server's /metrics, if it is there yet (a labelled
/// series appears at its first count), and the whole exposition.
pub async fn sample_of(server: &TestServer, sample: &str) -> (Option<f64>, String) {
    let (_, text) = server.get("/metrics").await;
    let text = String::from_utf8(text.to_vec()).unwrap();
    let value = sample_in(&text, sample);
    (value, text)
}

/// The value of `sample` (name and labels, as exposed) in a /metrics text.
pub fn sample_in(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample))
        .and_then(|value| value.trim().parse().ok())
}

pub fn git(repo: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()
        .expect("the git CLI is installed");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git output is UTF-8")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission/k8s-1.19")
}

pub fn fixtures() -> Vec<Fixture> {
    load::read_fixtures(&fixtures_dir()).expect("fixtures load")
}

pub fn fixture(prefix: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|f| f.file.starts_with(prefix))
        .unwrap_or_else(|| panic!("no fixture {prefix}"))
}

pub fn body(review: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(review).unwrap())
}

/// Whether an answered review allowed the write.
pub fn allowed(answer: &Value) -> bool {
    answer["response"]["allowed"] == true
}

/// The denial message of an answered review ("" when none).
pub fn message(answer: &Value) -> String {
    answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The warnings of an answered review.
pub fn warnings(answer: &Value) -> Vec<String> {
    answer["response"]["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The commit a `recorded <sha> <path>` warning names.
pub fn recorded_sha(answer: &Value) -> Option<String> {
    warnings(answer).iter().find_map(|w| {
        w.strip_prefix("recorded ")
            .map(|rest| rest.split(' ').next().unwrap_or_default().to_owned())
    })
}
