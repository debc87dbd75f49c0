//! Certificate rotation without a restart, the way a Secret volume rotates: kubelet
//! writes a new `..<timestamp>` directory and swaps the `..data` symlink in one
//! rename. A real TLS client must trust the new CA after the swap and fail with the
//! old one; a broken new pair is refused and the old one keeps serving.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubescribe::config::Config;
use kubescribe::load::Client;
use kubescribe::serve::Server;
use kubescribe::tls::{generate, Generated};

/// A Secret volume as kubelet lays it out: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, cert: &str, key: &str) -> Self {
        let mut volume = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        volume.swap(cert, key);
        symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        volume
    }

    /// Writes a new version and points `..data` at it with one atomic rename.
    fn swap(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let name = format!("..2026_11_21_00_00_0{}", self.version);
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("tls.crt"), cert).unwrap();
        std::fs::write(version.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

fn pair() -> Generated {
    generate(&["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap()
}

/// Whether a fresh TLS connection trusting only `ca` gets through the handshake.
async fn trusted(server: &Server, dir: &Path, name: &str, ca: &str) -> bool {
    let ca_path = dir.join(name);
    std::fs::write(&ca_path, ca).unwrap();
    let client = Client::new(server.local_addr(), &ca_path).unwrap();
    client.connect().await.is_ok()
}

async fn metric(server: &Server, dir: &Path, ca: &str, sample: &str) -> f64 {
    let ca_path = dir.join("metrics-ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let client = Client::new(server.local_addr(), &ca_path).unwrap();
    let (_, text) = client
        .connect()
        .await
        .unwrap()
        .send(
            axum::http::Method::GET,
            "/metrics",
            None,
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    common::sample_in(std::str::from_utf8(&text).unwrap(), sample).unwrap_or(0.0)
}

/// Polls `check` (the server re-reads its files on a timer; nothing to await).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_secret_volume_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let old = pair();
    let new = pair();
    let mut volume = SecretVolume::new(&secret, &old.cert, &old.key);

    let mut config = Config::from_yaml(&format!(
        "server:\n  listen: 127.0.0.1:0\n  tlsCert: {}\n  tlsKey: {}\n  certReloadInterval: 100ms\ndataDir: {}\n",
        volume.cert().display(),
        volume.key().display(),
        dir.path().join("data").display()
    ))
    .unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(&config).await.unwrap();
    let d = dir.path();
    assert!(trusted(&server, d, "old.pem", &old.ca_cert).await);
    assert!(!trusted(&server, d, "new.pem", &new.ca_cert).await);

    volume.swap(&new.cert, &new.key);
    eventually("new connections get the new certificate", || {
        trusted(&server, d, "new.pem", &new.ca_cert)
    })
    .await;
    assert!(
        !trusted(&server, d, "old.pem", &old.ca_cert).await,
        "the old CA no longer works"
    );

    // A pair whose key is not the certificate's: refused, the new pair stays.
    volume.swap(&old.cert, &new.key);
    let errors = "kubescribe_certificate_reloads_total{result=\"error\"}";
    eventually("the broken pair is noticed", || async {
        metric(&server, d, &new.ca_cert, errors).await >= 1.0
    })
    .await;
    assert!(trusted(&server, d, "new.pem", &new.ca_cert).await);
    assert!(!trusted(&server, d, "old.pem", &old.ca_cert).await);
    server.shutdown().await.unwrap();
}
