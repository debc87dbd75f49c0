//! Who may call the webhook: only the apiserver may make kubescribe write to git.
//!
//! Two proofs are accepted on `/validate` and `/mutate`, each optional, either one
//! enough (`server.clientAuth`):
//! - a client certificate that a CA in `caFile` signed, verified by rustls during the
//!   handshake, whose CN or a DNS SAN is in `allowedNames` (any name when the list is
//!   empty);
//! - `Authorization: Bearer <token>` equal to the content of `tokenFile`, compared in
//!   constant time.
//!
//! Invariants: a certificate that does not verify against the CA ends the handshake
//! (rustls); a missing certificate does not, so `/healthz`, `/readyz` and `/metrics`
//! stay reachable for probes that present none, and the HTTP layer refuses an
//! unauthenticated `/validate` or `/mutate` with 401 before the body is read, so the
//! call has no side effect. The CA and the token are re-read every
//! `server.certReloadInterval`; a file that becomes unusable keeps the previous one.
//! Tokens and certificates are never logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::ClientAuthConfig;
use crate::metrics::Metrics;

/// Reading or using `caFile` or `tokenFile` failed.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM CA certificate")]
    NoCa { path: PathBuf },
    #[error("{path} cannot verify client certificates: {reason}")]
    Verifier { path: PathBuf, reason: String },
    #[error("{path} is empty; it must hold the bearer token the apiserver sends")]
    EmptyToken { path: PathBuf },
}

/// The CAs client certificates must chain to, re-read from `caFile` on change.
pub struct ClientCa {
    path: PathBuf,
    /// The bundle in use, and the last one refused (so it is logged once, not at
    /// every check).
    loaded: Mutex<(Vec<u8>, Option<Vec<u8>>)>,
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .finish()
    }
}

impl ClientCa {
    pub fn load(path: &Path) -> Result<Arc<Self>, CallerError> {
        let pem = read(path)?;
        let verifier = verifier(path, &pem)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            loaded: Mutex::new((pem, None)),
            verifier: RwLock::new(verifier),
        }))
    }

    /// Re-reads the file; `Ok(true)` when a changed, usable bundle was swapped in.
    pub fn reload(&self) -> Result<bool, CallerError> {
        let pem = read(&self.path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.0 == pem || loaded.1.as_ref() == Some(&pem) {
            return Ok(false);
        }
        let verifier = match verifier(&self.path, &pem) {
            Ok(verifier) => verifier,
            Err(error) => {
                loaded.1 = Some(pem);
                return Err(error);
            }
        };
        *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = verifier;
        *loaded = (pem, None);
        Ok(true)
    }

    // Looked up per call, so a reload between the certificate check and the
    // signature check of one handshake may use two verifiers: harmless, since
    // webpki's signature checks do not depend on the roots.
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// WebPKI verification against every CA in the bundle. A client may present no
/// certificate at all (the health probes do not); whether that is enough is decided
/// per route by [`CallerPolicy::check`].
fn verifier(path: &Path, pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, CallerError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| CallerError::Verifier {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| CallerError::Verifier {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(CallerError::NoCa {
            path: path.to_owned(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| CallerError::Verifier {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: they would have to outlive a reload. Go's TLS client (the
    // apiserver's) then sends its certificate whatever CA signed it, which is what
    // we want; a wrong one is refused by verify_client_cert.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The bearer token in `tokenFile`, re-read on change.
pub struct TokenFile {
    path: PathBuf,
    token: RwLock<Vec<u8>>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish()
    }
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Arc<Self>, CallerError> {
        Ok(Arc::new(Self {
            path: path.to_owned(),
            token: RwLock::new(read_token(path)?),
        }))
    }

    /// Re-reads the file. A deleted file revokes the token (no token is accepted
    /// until the file is back); an empty or unreadable one keeps the previous token.
    pub fn reload(&self) -> Result<bool, CallerError> {
        let token = match read_token(&self.path) {
            Err(CallerError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            other => other?,
        };
        let mut current = self.token.write().unwrap_or_else(|e| e.into_inner());
        if *current == token {
            return Ok(false);
        }
        *current = token;
        Ok(true)
    }

    /// Constant time in the token's content (only its length can leak, as it does
    /// on the wire anyway).
    fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let token = self.token.read().unwrap_or_else(|e| e.into_inner());
        !token.is_empty() && bool::from(token.as_slice().ct_eq(presented))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CallerError> {
    std::fs::read(path).map_err(|source| CallerError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The file's content without surrounding whitespace (a trailing newline is usual).
fn read_token(path: &Path) -> Result<Vec<u8>, CallerError> {
    let bytes = read(path)?;
    let token = bytes.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(CallerError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token)
}

/// What a connection's TLS handshake proved: the names of a client certificate
/// that verified against the client CA, if one was presented.
#[derive(Debug, Clone, Default)]
pub struct Peer(Option<Arc<[String]>>);

impl Peer {
    /// The CN and DNS SANs of the leaf certificate rustls already verified.
    pub fn from_certificates(certs: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Self(None);
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            // Verified by rustls, so it parses. If not: no names, which matches no
            // `allowedNames` (and passes without them, as any certificate the CA
            // signed does).
            return Self(Some(Arc::from(Vec::new())));
        };
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push((*dns).to_owned());
                }
            }
        }
        Self(Some(Arc::from(names)))
    }
}

/// A connection's service: its [`Peer`], if it presented a certificate, added to
/// every request's extensions, and its slot of `maxConnections` held while it
/// lives.
#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: Peer,
    _slot: Arc<crate::limits::ConnectionSlot>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for WithPeer<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        // No certificate proves nothing, as no extension does; not inserting it
        // saves a map per request.
        if self.peer.0.is_some() {
            request.extensions_mut().insert(self.peer.clone());
        }
        self.inner.call(request)
    }
}

/// A slot of `maxConnections` (or the connection is closed), `TCP_NODELAY`, TLS
/// within `handshake_timeout`, a deadline for the first bytes, then the
/// handshake's [`Peer`] attached to the connection's requests.
#[derive(Clone)]
pub struct PeerAcceptor {
    tls: axum_server::tls_rustls::RustlsAcceptor<axum_server::accept::NoDelayAcceptor>,
    connections: crate::limits::Connections,
    first_read: std::time::Duration,
}

impl PeerAcceptor {
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        handshake_timeout: std::time::Duration,
        first_read: std::time::Duration,
        max_connections: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tls: axum_server::tls_rustls::RustlsAcceptor::new(
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )
            .handshake_timeout(handshake_timeout)
            .acceptor(axum_server::accept::NoDelayAcceptor::new()),
            connections: crate::limits::Connections::new(max_connections, metrics),
            first_read,
        }
    }
}

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for PeerAcceptor
where
    S: Send + 'static,
{
    type Stream = crate::limits::FirstRead<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;
    type Service = WithPeer<S>;
    type Future =
        futures::future::BoxFuture<'static, std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let Some(slot) = self.connections.take() else {
            // Dropping the stream closes the socket, before any TLS work.
            drop(stream);
            return Box::pin(std::future::ready(Err(std::io::Error::other(
                "server.maxConnections reached",
            ))));
        };
        let handshake = self.tls.accept(stream, service);
        let first_read = self.first_read;
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            let peer = Peer::from_certificates(stream.get_ref().1.peer_certificates());
            Ok((
                crate::limits::FirstRead::new(stream, first_read),
                WithPeer {
                    inner: service,
                    peer,
                    _slot: Arc::new(slot),
                },
            ))
        })
    }
}

/// What `/validate` and `/mutate` require of a caller.
pub struct CallerPolicy {
    client_ca: Option<Arc<ClientCa>>,
    allowed_names: Vec<String>,
    token: Option<Arc<TokenFile>>,
    metrics: Arc<Metrics>,
}

impl CallerPolicy {
    /// Loads `caFile` and `tokenFile`; with neither, every caller is accepted.
    pub fn load(config: &ClientAuthConfig, metrics: Arc<Metrics>) -> Result<Self, CallerError> {
        Ok(Self {
            client_ca: config.ca_file.as_deref().map(ClientCa::load).transpose()?,
            allowed_names: config.allowed_names.clone(),
            token: config
                .token_file
                .as_deref()
                .map(TokenFile::load)
                .transpose()?,
            metrics,
        })
    }

    /// The verifier for the TLS configuration, when client certificates are asked for.
    pub fn client_ca(&self) -> Option<Arc<ClientCa>> {
        self.client_ca.clone()
    }

    /// Whether callers must prove who they are.
    pub fn authenticates(&self) -> bool {
        self.client_ca.is_some() || self.token.is_some()
    }

    /// Re-reads the CA bundle and token file every `every`, keeping the previous one
    /// when a new file is unusable.
    pub fn watch(self: &Arc<Self>, every: std::time::Duration) {
        let policy = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(policy) = policy.upgrade() else {
                    return;
                };
                if let Some(ca) = &policy.client_ca {
                    match ca.reload() {
                        Ok(true) => {
                            tracing::info!(ca = %ca.path.display(), "client CA reloaded; new connections are verified against it")
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::error!(%error, "the new client CA bundle is unusable; still verifying against the previous one")
                        }
                    }
                }
                if let Some(token) = &policy.token {
                    match token.reload() {
                        Ok(true) => {
                            tracing::info!(file = %token.path.display(), "caller token reloaded")
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::error!(%error, "the new caller token file is unusable; still accepting the previous token")
                        }
                    }
                }
            }
        });
    }

    /// Why `request` may not call a recording endpoint, if it may not.
    fn refusal(&self, request: &Request) -> Option<Refusal> {
        if !self.authenticates() {
            return None;
        }
        let peer = request.extensions().get::<Peer>().and_then(|p| p.0.clone());
        if self.client_ca.is_some() {
            if let Some(names) = &peer {
                // Names compare without case, as DNS names do.
                if self.allowed_names.is_empty()
                    || names.iter().any(|n| {
                        self.allowed_names
                            .iter()
                            .any(|allowed| allowed.eq_ignore_ascii_case(n))
                    })
                {
                    return None;
                }
            }
        }
        // The scheme's name is case-insensitive (RFC 7235).
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..]);
        if let (Some(token), Some(presented)) = (&self.token, bearer) {
            if token.matches(presented.trim_ascii()) {
                return None;
            }
            return Some(Refusal::WrongToken);
        }
        Some(match (peer, bearer) {
            (Some(names), _) => Refusal::NameNotAllowed(names.to_vec()),
            // Here a token is never enough (no tokenFile).
            (None, Some(_)) => Refusal::NoCertificate,
            (None, None) => Refusal::NoCredentials,
        })
    }
}

impl fmt::Debug for CallerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerPolicy")
            .field("client_ca", &self.client_ca)
            .field("allowed_names", &self.allowed_names)
            .field("token", &self.token)
            .finish()
    }
}

enum Refusal {
    NoCredentials,
    NoCertificate,
    NameNotAllowed(Vec<String>),
    WrongToken,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::NoCertificate => "no_certificate",
            Refusal::NameNotAllowed(_) => "name_not_allowed",
            Refusal::WrongToken => "wrong_token",
        }
    }

    fn message(&self) -> String {
        let what = match self {
            Refusal::NoCredentials => {
                "the request carried neither a client certificate nor a bearer token".to_owned()
            }
            Refusal::NoCertificate => "the request carried no client certificate, and bearer tokens are not accepted (no server.clientAuth.tokenFile)".to_owned(),
            Refusal::NameNotAllowed(names) => format!(
                "the client certificate's names ({}) are not in server.clientAuth.allowedNames",
                names.join(", ")
            ),
            Refusal::WrongToken => {
                "the bearer token does not match server.clientAuth.tokenFile".to_owned()
            }
        };
        format!(
            "kubescribe accepts admission reviews only from the apiserver: {what}. Configure the apiserver's AdmissionConfiguration kubeconfig with kubescribe's client certificate or token (docs/security.md)"
        )
    }
}

/// At most this much of a refused caller's body is read (and dropped), for at most
/// [`DRAIN_TIME`], before the 401.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

impl CallerPolicy {
    /// For the recording endpoints, before anything else: `None` when the caller
    /// proved it is the apiserver (or nothing is required), else the 401 with a
    /// JSON message, answered before the caller takes a slot in flight or memory,
    /// and without decoding its body.
    pub(crate) async fn check(&self, request: Request) -> Result<Request, Response> {
        let Some(refusal) = self.refusal(&request) else {
            return Ok(request);
        };
        // Read (and drop) what the caller is still sending, briefly, so the 401
        // reaches it over HTTP/2 instead of a stream reset; nothing is kept.
        let path = request.uri().path().to_owned();
        let _ = tokio::time::timeout(
            DRAIN_TIME,
            crate::admission::discard_body(request.into_body(), DRAIN_BYTES),
        )
        .await;
        self.metrics.caller_refused(refusal.reason());
        tracing::warn!(
            reason = refusal.reason(),
            %path,
            "refused an unauthenticated call"
        );
        let body = serde_json::json!({
            "message": refusal.message(),
            "status": 401,
        });
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(body),
        )
            .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_trimmed_reloaded_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let token = TokenFile::load(&path).unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret2"));
        assert!(!token.matches(b""));
        std::fs::write(&path, "other").unwrap();
        assert!(token.reload().unwrap());
        assert!(token.matches(b"other") && !token.matches(b"s3cret"));
        // An emptied file keeps the previous token; a deleted one revokes it.
        std::fs::write(&path, "\n").unwrap();
        assert!(token.reload().unwrap_err().to_string().contains("empty"));
        assert!(token.matches(b"other"));
        std::fs::remove_file(&path).unwrap();
        assert!(token.reload().unwrap());
        assert!(!token.matches(b"other") && !token.matches(b""));
    }

    #[test]
    fn a_client_ca_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = ClientCa::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("ca.crt") && err.contains("no usable PEM CA"),
            "{err}"
        );
    }

    #[test]
    fn peer_names_are_the_leaf_cn_and_dns_sans() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::write_new_certificates(dir.path(), &["localhost".to_owned()], false).unwrap();
        let pem = std::fs::read(dir.path().join("client.crt")).unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        let peer = Peer::from_certificates(Some(&certs));
        let names = peer.0.unwrap();
        assert!(
            names.iter().any(|n| n == crate::tls::APISERVER_CLIENT_NAME),
            "{names:?}"
        );
        assert!(Peer::from_certificates(None).0.is_none());
    }
}
