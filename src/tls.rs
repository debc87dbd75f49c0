//! TLS for the webhook: loading a serving certificate, and making a dev CA.
//!
//! The server speaks TLS 1.2 and 1.3 only (rustls, ring provider) and offers HTTP/2
//! and HTTP/1.1 by ALPN, as kube-apiserver expects. Dev certificates are for a laptop
//! or a test: a fresh CA signs a serving certificate for localhost and loopback
//! addresses. Private keys are written with mode 0600 and never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Loading or making certificates failed. Not retried: fix the files and restart.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("the certificate and key do not make a usable TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("cannot generate a dev certificate")]
    Generate(#[source] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A rustls server configuration from PEM files (the chain, then the key), served
/// through a [`CertStore`] like the server's (nobody reloads this one).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    reloading_server_config(CertStore::load(cert_path, key_path)?)
}

/// Paths of a dev CA and the serving pair it signed.
#[derive(Debug, Clone)]
pub struct DevCertificates {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCertificates {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    fn exist(&self) -> bool {
        self.ca_cert.exists() && self.cert.exists() && self.key.exists()
    }
}

/// The names a dev serving certificate is valid for by default.
pub fn default_dev_names() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

/// Uses the dev certificates in `dir`, creating a CA and serving pair there if any
/// file is missing. Returns whether they were created.
pub fn ensure_dev_certificates(
    dir: &Path,
    names: &[String],
) -> Result<(DevCertificates, bool), TlsError> {
    let paths = DevCertificates::in_dir(dir);
    if paths.exist() {
        return Ok((paths, false));
    }
    // Some file is missing: a whole new set, so the pair always matches its CA.
    write_new_certificates(dir, names, true)?;
    Ok((paths, true))
}

/// Writes a fresh CA, a serving pair for `names` and a client pair for the apiserver
/// (`client.crt`, `client.key`, CN `kube-apiserver`; see `server.clientAuth`) into
/// `dir` (keys 0600), refusing to replace existing files unless `force`; returns the
/// CA certificate's PEM.
pub fn write_new_certificates(
    dir: &Path,
    names: &[String],
    force: bool,
) -> Result<String, TlsError> {
    let files = [
        "ca.crt",
        "ca.key",
        "tls.crt",
        "tls.key",
        "client.crt",
        "client.key",
    ]
    .map(|f| dir.join(f));
    if !force {
        if let Some(existing) = files.iter().find(|f| f.exists()) {
            return Err(TlsError::Write {
                path: existing.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; pass --force to replace it",
                ),
            });
        }
    }
    let generated = generate(names)?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_file(&files[0], &generated.ca_cert, false)?;
    write_file(&files[1], &generated.ca_key, true)?;
    write_file(&files[2], &generated.cert, false)?;
    write_file(&files[3], &generated.key, true)?;
    write_file(&files[4], &generated.client_cert, false)?;
    write_file(&files[5], &generated.client_key, true)?;
    Ok(generated.ca_cert)
}

/// PEM text of a fresh CA, a serving certificate it signed, and a client certificate
/// it signed for the apiserver to present.
pub struct Generated {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// The name `kubescribe certs` gives the apiserver's client certificate (its CN and
/// DNS SAN), for `server.clientAuth.allowedNames`.
pub const APISERVER_CLIENT_NAME: &str = "kube-apiserver";

/// Makes a CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<Generated, TlsError> {
    let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubescribe dev CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Generate)?;

    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("kubescribe", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;

    let client_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut client = CertificateParams::new(vec![APISERVER_CLIENT_NAME.to_owned()])
        .map_err(TlsError::Generate)?;
    client
        .distinguished_name
        .push(DnType::CommonName, APISERVER_CLIENT_NAME);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .map_err(TlsError::Generate)?;
    Ok(Generated {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_are_made_once_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, created) = ensure_dev_certificates(dir.path(), &default_dev_names()).unwrap();
        assert!(created);
        server_config(&paths.cert, &paths.key).unwrap();
        let before = std::fs::read(&paths.cert).unwrap();
        let (_, created_again) = ensure_dev_certificates(dir.path(), &default_dev_names()).unwrap();
        assert!(!created_again);
        assert_eq!(std::fs::read(&paths.cert).unwrap(), before);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_missing_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, _) = ensure_dev_certificates(dir.path(), &default_dev_names()).unwrap();
        let err = server_config(&paths.cert, &dir.path().join("nope.key")).unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
    }
}

/// The serving certificate and key, re-read from their files now and then, so a
/// rotated pair (cert-manager renewing it, kubelet swapping the Secret volume's
/// `..data` symlink) is used for new connections without a restart.
///
/// Invariant: the pair in use is always a valid one. A new pair that cannot be read
/// or parsed, or whose key does not belong to its certificate, is refused with an
/// error log, and the previous pair stays in use; the next change to the files is
/// tried again.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    /// The bytes the current pair was made from, to notice a change.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertStore {
    /// Loads the pair; an unusable one is an error here (at start there is no old one).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        let certified = certified_key(cert_path, &cert, key_path, &key)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: std::sync::RwLock::new(Arc::new(certified)),
            loaded: std::sync::Mutex::new((cert, key)),
        }))
    }

    /// Re-reads the files; says whether a new pair is now in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let certified = certified_key(&self.cert_path, &cert, &self.key_path, &key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        *loaded = (cert, key);
        Ok(true)
    }

    /// Checks the files every `every` on the runtime, until the process ends.
    pub fn watch(
        self: &Arc<Self>,
        every: std::time::Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(store) = store.upgrade() else { return };
                match store.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.certificate_reloaded(true);
                        tracing::info!(cert = %store.cert_path.display(), "serving certificate reloaded; new connections use it");
                    }
                    Err(error) => {
                        metrics.certificate_reloaded(false);
                        tracing::error!(error = %crate::error_chain(&error), cert = %store.cert_path.display(), key = %store.key_path.display(), "the new serving certificate or key is unusable; still serving the previous pair");
                    }
                }
            }
        });
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The server's TLS configuration, serving whatever `store` holds.
pub fn reloading_server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_clients(store, None)
}

/// [`reloading_server_config`] that asks for client certificates and verifies them
/// with `clients` (see [`crate::caller`]).
pub fn server_config_with_clients(
    store: Arc<CertStore>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?;
    let authenticates = clients.is_some();
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    if authenticates {
        // A resumed session carries the client certificate of the handshake that
        // made it, unverified again: after the client CA rotates (or the certificate
        // expires) a resumption would still count as authenticated. The apiserver
        // does not resume anyway, so there is nothing to resume.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_owned(),
            source: rustls_pki_types::pem::Error::Io(e),
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn certified_key(
    cert_path: &Path,
    cert: &[u8],
    key_path: &Path,
    key: &[u8],
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::Read {
        path: key_path.to_owned(),
        source,
    })?;
    // Checks that the key belongs to the certificate.
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(TlsError::Config)
}
