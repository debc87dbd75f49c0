//! Pushes to an http(s) remote by speaking git's smart HTTP protocol in process
//! (`remote.transport: builtin`), instead of starting `git push`.
//!
//! `git push` over HTTP starts three local processes (git, its remote helper and
//! `pack-objects`) and makes two requests, each of which starts `receive-pack` on
//! the server: the ref discovery and the push itself. Here one kept-alive
//! connection carries the push, the pack is built in process
//! ([`crate::store::PackSource`]), and ref discovery is skipped while the branch's
//! tip on the remote is known: it is the commit our last accepted push set. The
//! protocol keeps no state on the server (gitprotocol-http, "Session state"), and
//! every push names the tip it replaces, so a stale guess cannot overwrite anything:
//! the server refuses it and the next attempt asks again.
//!
//! Invariants: discovery runs before the first push, after any failure and after
//! any refusal; the answer is the remote's word only (`ok`/`ng` of `report-status`).
//! Whatever this module does not understand (a redirect, a dumb server, a refused
//! update it cannot explain, a huge backlog) is handed back as [`Attempt::UseGit`],
//! and the caller pushes with the `git` CLI instead. Credentials are read from their
//! files at every push and are sent only in the `Authorization` header.

use std::sync::Arc;

use bytes::Bytes;
use gix::hash::ObjectId;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

use super::remote::{authorization, PushError, Remote};
use crate::config::{RemoteConfig, Transport};
use crate::store::{Outgoing, PackSource};

impl From<PushError> for Attempt {
    fn from(error: PushError) -> Self {
        Attempt::Done(Err(error))
    }
}

/// What a builtin push came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The remote's answer (or why it could not be reached).
    Done(Result<(), PushError>),
    /// Not something this module handles; push with the `git` CLI. Says why.
    UseGit(String),
}

/// The smart HTTP pusher of one remote branch.
pub(crate) struct SmartHttp {
    config: RemoteConfig,
    display: String,
    refname: String,
    endpoint: Endpoint,
    packs: PackSource,
    connection: Option<SendRequest<Full<Bytes>>>,
    /// The branch's tip on the remote (`Some(None)`: no such branch), as our last
    /// accepted push, discovery or fetch left it; `None` when it must be asked.
    known: Option<Option<ObjectId>>,
    /// Ref discovery has shown the server speaks what we send.
    discovered: bool,
    /// Ref discovery handed the push to git (a redirect, a server without the smart
    /// protocol, TLS that only git accepts): git pushes alone until then, rather
    /// than every push asking first.
    resting: Option<(std::time::Instant, String)>,
}

/// How long git pushes alone after ref discovery handed a push to it.
const REST: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// The repository's path, without a trailing `/`.
    path: String,
}

impl Endpoint {
    /// `None` for URLs the `git` CLI should handle: other schemes, user info, a
    /// query or a fragment.
    fn parse(url: &str) -> Option<Self> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return None;
        }
        let uri: hyper::Uri = format!("http://{authority}/").parse().ok()?;
        // Every request path must be a valid URI path as it is.
        format!("{path}/info/refs?service=git-receive-pack")
            .parse::<hyper::Uri>()
            .ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        Some(Self {
            tls,
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// Proxy variables git (libcurl) would honour.
const PROXY_VARIABLES: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "HTTP_PROXY",
];

/// Whether git would reach `host` through a proxy: a proxy variable is set and
/// `no_proxy` does not exempt the host (libcurl's rules: `*`, the host itself, or a
/// domain it is in). The builtin transport speaks to servers directly, so such
/// pushes are left to git.
fn proxied(host: &str, env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if !PROXY_VARIABLES.iter().any(|name| set(name).is_some()) {
        return false;
    }
    let exempt = set("no_proxy")
        .or_else(|| set("NO_PROXY"))
        .unwrap_or_default();
    let host = host.to_ascii_lowercase();
    !exempt.split(',').map(str::trim).any(|entry| {
        let entry = entry.trim_start_matches('.').to_ascii_lowercase();
        entry == "*"
            || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
    })
}

/// Longest answers read: a push's status report, and a ref advertisement.
const MAX_REPORT: usize = 1 << 20;
const MAX_ADVERTISEMENT: usize = 64 << 20;

const USER_AGENT: &str = concat!("git/2.0 (kubescribe/", env!("CARGO_PKG_VERSION"), ")");

impl SmartHttp {
    /// The builtin pusher for `remote`, or `None` when the `git` CLI pushes to it
    /// (not http(s), `transport: git`, credentials in the URL, or a proxy set).
    pub(crate) fn for_remote(remote: &Remote) -> Option<Self> {
        if remote.config.transport != Transport::Builtin {
            return None;
        }
        let endpoint = Endpoint::parse(&remote.config.url)?;
        if proxied(&endpoint.host, |name| std::env::var(name).ok()) {
            return None;
        }
        let packs = match PackSource::start(&remote.git_dir) {
            Ok(packs) => packs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the pack thread; pushing with git");
                return None;
            }
        };
        Some(Self {
            config: remote.config.clone(),
            display: remote.display_url(),
            refname: format!("refs/heads/{}", remote.branch),
            endpoint,
            packs,
            connection: None,
            known: None,
            discovered: false,
            resting: None,
        })
    }

    /// The remote has `tip` on the branch (a `git` push or fetch said so).
    pub(crate) fn remote_has(&mut self, tip: Option<ObjectId>) {
        self.known = Some(tip);
    }

    /// Pushes exactly `tip` to the branch. Never forced.
    pub(crate) async fn push(&mut self, tip: ObjectId) -> Attempt {
        if let Some((until, why)) = &self.resting {
            if std::time::Instant::now() < *until {
                return Attempt::UseGit(format!("since the last ref discovery: {why}"));
            }
            self.resting = None;
        }
        let attempt = tokio::time::timeout(self.config.timeout, self.try_push(tip)).await;
        let attempt = attempt.unwrap_or_else(|_| {
            Attempt::Done(Err(PushError::Timeout {
                remote: self.display.clone(),
                timeout: self.config.timeout,
            }))
        });
        match &attempt {
            Attempt::Done(Ok(())) => self.known = Some(Some(tip)),
            _ => {
                self.known = None;
                self.connection = None;
            }
        }
        attempt
    }

    async fn try_push(&mut self, tip: ObjectId) -> Attempt {
        let authorization = match authorization(&self.config) {
            Ok(authorization) => authorization,
            Err(e) => return Attempt::Done(Err(e)),
        };
        // With the tip as we know it first; if the server refuses that, once more
        // with the tip discovery shows.
        let mut guess = self.known.filter(|_| self.discovered);
        loop {
            let (base, discovered) = match guess.take() {
                Some(base) => (base, false),
                None => match self.discover(authorization.as_deref()).await {
                    Ok(base) => (base, true),
                    Err(Attempt::UseGit(why)) => {
                        self.resting = Some((std::time::Instant::now() + REST, why.clone()));
                        return Attempt::UseGit(why);
                    }
                    Err(attempt) => return attempt,
                },
            };
            if base == Some(tip) {
                if discovered {
                    return Attempt::Done(Ok(()));
                }
                continue;
            }
            let pack = match self.packs.build(base, tip).await {
                Ok(Outgoing::Pack { bytes, commits }) => {
                    tracing::trace!(commits, bytes = bytes.len(), "pack built");
                    bytes
                }
                Ok(Outgoing::NotOnTop) if !discovered => continue,
                Ok(Outgoing::NotOnTop) => return Attempt::Done(Err(self.conflict())),
                Ok(Outgoing::TooLarge) => {
                    return Attempt::UseGit("more commits than one pack in memory holds".into())
                }
                Err(e) => return Attempt::UseGit(format!("cannot build the pack: {e}")),
            };
            let report = match self
                .send_pack(base, tip, pack, authorization.as_deref())
                .await
            {
                Ok(report) => report,
                Err(attempt) => return attempt,
            };
            return match report {
                Report::Ok => Attempt::Done(Ok(())),
                Report::Refused(reason) if is_stale(&reason) => Attempt::Done(Err(self.conflict())),
                Report::Refused(_) if !discovered => continue,
                Report::Refused(reason) => {
                    // Refused although the base was just discovered: the update landed
                    // already (a resent request), the branch moved in between, or the
                    // server will not take it; git says which in the last case.
                    match self.discover(authorization.as_deref()).await {
                        Ok(now) if now == Some(tip) => Attempt::Done(Ok(())),
                        Ok(now) if now != base => Attempt::Done(Err(self.conflict())),
                        Ok(_) => {
                            if reason.contains("missing necessary objects") {
                                tracing::warn!(remote = %self.display, reason, "the server found our pack incomplete; pushing with git");
                            }
                            Attempt::UseGit(format!("the server refused the update: {reason}"))
                        }
                        Err(attempt) => attempt,
                    }
                }
                Report::Unpack(reason) => {
                    tracing::warn!(remote = %self.display, reason, "the server could not store our pack; pushing with git");
                    Attempt::UseGit(format!("the server could not store the pack: {reason}"))
                }
            };
        }
    }

    fn conflict(&self) -> PushError {
        PushError::Conflict {
            remote: self.display.clone(),
        }
    }

    /// Ref discovery: the branch's tip on the remote, after checking the server
    /// takes what we send.
    async fn discover(&mut self, authorization: Option<&str>) -> Result<Option<ObjectId>, Attempt> {
        let path = format!("{}/info/refs?service=git-receive-pack", self.endpoint.path);
        let request = self
            .request(Method::GET, &path, authorization)
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.other(e))?;
        let (status, content_type, body) = self.send(request, MAX_ADVERTISEMENT).await?;
        self.check_status(status)?;
        if content_type != "application/x-git-receive-pack-advertisement" {
            return Err(Attempt::UseGit(format!(
                "the server answered ref discovery with {content_type:?}, not git's smart protocol"
            )));
        }
        let tip = parse_advertisement(&body, &self.refname).map_err(Attempt::UseGit)?;
        self.discovered = true;
        self.known = Some(tip);
        Ok(tip)
    }

    /// Sends the update request with `pack`.
    async fn send_pack(
        &mut self,
        base: Option<ObjectId>,
        tip: ObjectId,
        pack: Vec<u8>,
        authorization: Option<&str>,
    ) -> Result<Report, Attempt> {
        let old = base.unwrap_or_else(|| ObjectId::null(tip.kind()));
        let command = format!("{old} {tip} {}\0report-status\n", self.refname);
        let mut body = Vec::with_capacity(command.len() + 8 + pack.len());
        body.extend_from_slice(format!("{:04x}", command.len() + 4).as_bytes());
        body.extend_from_slice(command.as_bytes());
        body.extend_from_slice(b"0000");
        body.extend_from_slice(&pack);
        drop(pack);
        let path = format!("{}/git-receive-pack", self.endpoint.path);
        let request = self
            .request(Method::POST, &path, authorization)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-git-receive-pack-request",
            )
            .header(
                hyper::header::ACCEPT,
                "application/x-git-receive-pack-result",
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.other(e))?;
        let (status, content_type, answer) = self.send(request, MAX_REPORT).await?;
        self.check_status(status)?;
        if content_type != "application/x-git-receive-pack-result" {
            return Err(Attempt::UseGit(format!(
                "the server answered the push with {content_type:?}"
            )));
        }
        parse_report(&answer, &self.refname).map_err(Attempt::UseGit)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
    ) -> hyper::http::request::Builder {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.endpoint.host_header())
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(hyper::header::PRAGMA, "no-cache");
        if let Some(authorization) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        request
    }

    /// Failures named by the HTTP status, as git names them.
    fn check_status(&self, status: StatusCode) -> Result<(), Attempt> {
        let remote = self.display.clone();
        let detail = format!("the server answered HTTP {status}");
        Err(match status.as_u16() {
            200 => return Ok(()),
            401 | 403 | 404 => PushError::Auth { remote, detail }.into(),
            500..=599 => PushError::Unreachable { remote, detail }.into(),
            _ => Attempt::UseGit(detail),
        })
    }

    /// Sends `request` on the kept-alive connection (a new one if there is none or
    /// it broke before answering) and reads at most `limit` bytes of the answer.
    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(StatusCode, String, Bytes), Attempt> {
        let reused = self.connection.as_ref().is_some_and(|c| !c.is_closed());
        // Kept for a second try: an update names the tip it replaces, so sending it
        // twice cannot apply it twice.
        let retry = reused.then(|| clone_request(&request));
        let response = match self.send_once(request).await {
            Ok(response) => response,
            Err(_) if retry.is_some() => {
                self.connection = None;
                let retry = retry.expect("checked");
                self.send_once(retry).await?
            }
            Err(attempt) => return Err(attempt),
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                self.connection = None;
                self.unreachable(format!("reading the answer failed: {e}"))
            })?
            .to_bytes();
        Ok((status, content_type, body))
    }

    async fn send_once(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Attempt> {
        if self.connection.as_ref().is_none_or(|c| c.is_closed()) {
            self.connection = Some(self.connect().await?);
        }
        let connection = self.connection.as_mut().expect("connected above");
        let sent = async {
            connection.ready().await?;
            connection.send_request(request).await
        };
        sent.await.map_err(|e| {
            self.connection = None;
            self.unreachable(e.to_string()).into()
        })
    }

    /// Connects; a TLS failure hands the push to git, whose TLS library is the
    /// reference for which certificates are good.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Attempt> {
        let endpoint = &self.endpoint;
        let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| self.unreachable(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if !endpoint.tls {
            return Ok(self.handshake(tcp).await?);
        }
        let config = self.tls_config()?;
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|e| Attempt::UseGit(format!("host name for TLS: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| Attempt::UseGit(format!("TLS: {e}")))?;
        Ok(self.handshake(tls).await?)
    }

    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<Full<Bytes>>, PushError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Trusts `caFile` alone when set (like `GIT_SSL_CAINFO`), otherwise the
    /// system's certificates; read at every connection, so a rotated bundle counts.
    fn tls_config(&self) -> Result<rustls::ClientConfig, PushError> {
        let credentials = |detail: String| PushError::Credentials { detail };
        let mut roots = rustls::RootCertStore::empty();
        match &self.config.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| credentials(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| credentials(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| credentials(format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| self.other(e))
    }

    fn unreachable(&self, detail: String) -> PushError {
        PushError::Unreachable {
            remote: self.display.clone(),
            detail,
        }
    }

    fn other(&self, e: impl std::fmt::Display) -> PushError {
        PushError::Other {
            remote: self.display.clone(),
            detail: e.to_string(),
        }
    }
}

fn clone_request(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// What `report-status` said about our one update.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Ok,
    /// `ng <ref> <reason>`.
    Refused(String),
    /// The server could not unpack the pack.
    Unpack(String),
}

/// Refusals that mean the branch is not where the update said it was.
fn is_stale(reason: &str) -> bool {
    ["fetch first", "non-fast-forward", "stale info"]
        .iter()
        .any(|s| reason.contains(s))
}

/// The pkt-lines of `body`, flush packets as `None`.
fn pkt_lines(mut body: &[u8]) -> Result<Vec<Option<&[u8]>>, String> {
    let mut lines = Vec::new();
    while !body.is_empty() {
        let length = body
            .get(..4)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or("the answer is not in git's pkt-line format")?;
        match length {
            0 => {
                lines.push(None);
                body = &body[4..];
            }
            1..=3 => return Err(format!("unexpected pkt-line {length:04x}")),
            _ => {
                let line = body
                    .get(4..length)
                    .ok_or("the answer ends inside a pkt-line")?;
                lines.push(Some(line.strip_suffix(b"\n").unwrap_or(line)));
                body = &body[length..];
            }
        }
    }
    Ok(lines)
}

/// The tip of `refname` in a receive-pack ref advertisement (`None`: no such
/// branch), once the server is seen to take `report-status` over SHA-1.
fn parse_advertisement(body: &[u8], refname: &str) -> Result<Option<ObjectId>, String> {
    let lines = pkt_lines(body)?;
    let mut lines = lines.into_iter().peekable();
    if let Some(Some(first)) = lines.peek() {
        if first.starts_with(b"# service=") {
            lines.next();
            // The flush that ends the service announcement.
            if lines.next() != Some(None) {
                return Err("malformed ref advertisement".into());
            }
        }
    }
    let mut tip = None;
    let mut capabilities: Option<String> = None;
    for line in lines {
        let Some(line) = line else { break };
        if line.starts_with(b"ERR ") {
            return Err(format!(
                "the server refused: {}",
                String::from_utf8_lossy(&line[4..])
            ));
        }
        let (reference, caps) = match line.iter().position(|b| *b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if let Some(caps) = caps {
            capabilities = Some(String::from_utf8_lossy(caps).into_owned());
        }
        let reference = String::from_utf8_lossy(reference);
        let Some((id, name)) = reference.split_once(' ') else {
            return Err("malformed ref advertisement".into());
        };
        if name == refname {
            tip = Some(
                id.parse::<ObjectId>()
                    .map_err(|e| format!("bad object id {id:?}: {e}"))?,
            );
        }
    }
    let capabilities = capabilities.ok_or("the server advertised no capabilities")?;
    let mut words = capabilities.split(' ');
    if !words.clone().any(|c| c == "report-status") {
        return Err("the server does not offer report-status".into());
    }
    // Our packs store trees as offset deltas (see `store::delta`).
    if !words.clone().any(|c| c == "ofs-delta") {
        return Err("the server does not take offset deltas (ofs-delta)".into());
    }
    if words.any(|c| c.starts_with("object-format=") && c != "object-format=sha1") {
        return Err("the repository does not use SHA-1".into());
    }
    Ok(tip.filter(|id| !id.is_null()))
}

/// Reads `report-status` for `refname`.
fn parse_report(body: &[u8], refname: &str) -> Result<Report, String> {
    let lines = pkt_lines(body)?;
    let text = |line: &[u8]| String::from_utf8_lossy(line).into_owned();
    let mut lines = lines.into_iter().flatten();
    let unpack = lines
        .next()
        .map(text)
        .ok_or("the server sent no status report")?;
    if let Some(reason) = unpack.strip_prefix("ERR ") {
        return Ok(Report::Refused(reason.to_owned()));
    }
    match unpack.strip_prefix("unpack ") {
        Some("ok") => {}
        Some(reason) => return Ok(Report::Unpack(reason.to_owned())),
        None => return Err(format!("unexpected status line {unpack:?}")),
    }
    for line in lines.map(text) {
        if line == format!("ok {refname}") {
            return Ok(Report::Ok);
        }
        if let Some(rest) = line.strip_prefix(&format!("ng {refname} ")) {
            return Ok(Report::Refused(rest.to_owned()));
        }
    }
    Err(format!("the status report does not mention {refname}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_taken_apart_and_odd_urls_left_to_git() {
        assert_eq!(
            Endpoint::parse("https://git.example/org/repo.git/"),
            Some(Endpoint {
                tls: true,
                host: "git.example".into(),
                port: 443,
                path: "/org/repo.git".into()
            })
        );
        let local = Endpoint::parse("http://127.0.0.1:8080/git/repo.git").unwrap();
        assert_eq!(
            (local.port, local.host_header()),
            (8080, "127.0.0.1:8080".into())
        );
        let v6 = Endpoint::parse("http://[::1]:9000/r.git").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.host_header()),
            ("::1", "[::1]:9000".into())
        );
        for url in [
            "ssh://git@host/repo.git",
            "git@host:repo.git",
            "file:///srv/repo.git",
            "https://user@host/repo.git",
            "https://host/repo.git?x=1",
            "https:///repo.git",
            "https://host/a repo.git",
        ] {
            assert_eq!(Endpoint::parse(url), None, "{url}");
        }
    }

    /// A server that is not git's (here: HTML for everything) sends the push to
    /// git, and the next pushes go to git without asking it again.
    #[tokio::test]
    async fn a_server_without_the_smart_protocol_is_left_to_git_for_a_while() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let page = "<html>hello</html>";
                        let answer = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}", page.len());
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let remote = Remote {
            config: RemoteConfig {
                url: format!("http://127.0.0.1:{port}/repo.git"),
                ..Default::default()
            },
            branch: "main".to_owned(),
            git_dir: dir.path().to_owned(),
        };
        let mut http = SmartHttp::for_remote(&remote).expect("an http URL is ours");
        let tip = ObjectId::from_hex(TIP.as_bytes()).unwrap();
        let Attempt::UseGit(why) = http.push(tip).await else {
            panic!("not a git server");
        };
        assert!(why.contains("text/html"), "{why}");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
        let Attempt::UseGit(again) = http.push(tip).await else {
            panic!("still git's");
        };
        assert!(again.contains("text/html"), "{again}");
        assert_eq!(
            requests.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not asked again"
        );
    }

    #[test]
    fn pushes_that_git_would_proxy_are_left_to_git() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!proxied("git.example", env(&[])));
        assert!(proxied(
            "git.example",
            env(&[("HTTPS_PROXY", "http://proxy:3128")])
        ));
        let exempt = env(&[
            ("https_proxy", "http://proxy:3128"),
            ("NO_PROXY", "localhost, 127.0.0.1,.corp.example"),
        ]);
        assert!(!proxied("127.0.0.1", exempt));
        assert!(!proxied("git.corp.example", exempt));
        assert!(proxied("github.com", exempt));
        assert!(!proxied(
            "github.com",
            env(&[("ALL_PROXY", "socks5://p"), ("no_proxy", "*")])
        ));
    }

    const TIP: &str = "a4791771299b657e29803b103644bbe33523ac71";

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[test]
    fn ref_advertisements_give_the_branch_tip_and_check_capabilities() {
        let caps = "report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta object-format=sha1 agent=git/2.47.3";
        let body = format!(
            "{}0000{}{}0000",
            pkt("# service=git-receive-pack\n"),
            pkt(&format!("{TIP} refs/heads/dev\0{caps}\n")),
            pkt(&format!("{TIP} refs/heads/main\n")),
        );
        let tip = parse_advertisement(body.as_bytes(), "refs/heads/main").unwrap();
        assert_eq!(tip, Some(TIP.parse().unwrap()));
        assert_eq!(
            parse_advertisement(body.as_bytes(), "refs/heads/prod"),
            Ok(None)
        );

        let empty = format!(
            "{}0000{}0000",
            pkt("# service=git-receive-pack\n"),
            pkt(&format!("{} capabilities^{{}}\0{caps}\n", "0".repeat(40))),
        );
        assert_eq!(
            parse_advertisement(empty.as_bytes(), "refs/heads/main"),
            Ok(None)
        );

        let old_server = format!(
            "{}0000",
            pkt(&format!("{TIP} refs/heads/main\0delete-refs\n"))
        );
        assert!(parse_advertisement(old_server.as_bytes(), "refs/heads/main").is_err());
        let sha256 = format!(
            "{}0000",
            pkt(&format!(
                "{TIP} refs/heads/main\0report-status ofs-delta object-format=sha256\n"
            ))
        );
        assert_eq!(
            parse_advertisement(sha256.as_bytes(), "refs/heads/main"),
            Err("the repository does not use SHA-1".into())
        );
        let no_deltas = format!(
            "{}0000",
            pkt(&format!(
                "{TIP} refs/heads/main\0report-status object-format=sha1\n"
            ))
        );
        assert_eq!(
            parse_advertisement(no_deltas.as_bytes(), "refs/heads/main"),
            Err("the server does not take offset deltas (ofs-delta)".into())
        );
        assert!(parse_advertisement(b"<html>", "refs/heads/main").is_err());
    }

    #[test]
    fn status_reports_say_pushed_refused_or_unpack_failed() {
        let report = |lines: &[&str]| {
            let body: String = lines.iter().map(|l| pkt(l)).collect::<String>() + "0000";
            parse_report(body.as_bytes(), "refs/heads/main")
        };
        assert_eq!(
            report(&["unpack ok\n", "ok refs/heads/main\n"]),
            Ok(Report::Ok)
        );
        assert_eq!(
            report(&["unpack ok\n", "ng refs/heads/main failed to update ref\n"]),
            Ok(Report::Refused("failed to update ref".into()))
        );
        assert_eq!(
            report(&[
                "unpack index-pack abnormal exit\n",
                "ng refs/heads/main unpacker error\n"
            ]),
            Ok(Report::Unpack("index-pack abnormal exit".into()))
        );
        assert!(report(&["unpack ok\n", "ok refs/heads/other\n"]).is_err());
        assert!(parse_report(b"0003", "refs/heads/main").is_err());
        assert!(parse_report(b"00ffshort", "refs/heads/main").is_err());
        assert!(is_stale("non-fast-forward"));
        assert!(!is_stale("pre-receive hook declined"));
    }
}
