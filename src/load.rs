//! An HTTPS client and load generator for the webhook, shared by the integration
//! tests and the `kubescribe-load` benchmark binary.
//!
//! The client speaks HTTP/1.1 over one keep-alive TLS connection at a time and trusts
//! exactly one CA, as kube-apiserver does with a webhook's caBundle. The load
//! generator replays fixture reviews with fresh uids and names at a set concurrency
//! (optionally paced to a total rate) and reports throughput and latency quantiles.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read CA {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("cannot read fixtures: {0}")]
    Fixtures(String),
}

/// Connects to one webhook address, trusting one CA.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl Client {
    pub fn new(addr: SocketAddr, ca_pem: &Path) -> Result<Self, LoadError> {
        let ca_error = |reason: String| LoadError::Ca {
            path: ca_pem.display().to_string(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).map_err(|e| ca_error(e.to_string()))? {
            roots
                .add(cert.map_err(|e| ca_error(e.to_string()))?)
                .map_err(|e| ca_error(e.to_string()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a TLS connection without HTTP on top, for tests that speak raw HTTP.
    pub async fn connect_tls(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, LoadError> {
        let connect_error = |source| LoadError::Connect {
            addr: self.addr,
            source,
        };
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        self.connector
            .connect(name, tcp)
            .await
            .map_err(connect_error)
    }

    /// Opens one keep-alive connection.
    pub async fn connect(&self) -> Result<Connection, LoadError> {
        let tls = self.connect_tls().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), LoadError> {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        self.send_with(method, path, &headers, body).await
    }

    /// [`Self::send`] with any headers (a forge's webhook signature, say).
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), LoadError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "kubescribe");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs an AdmissionReview and returns the status and parsed answer.
    pub async fn review(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Value), LoadError> {
        let (status, body) = self
            .send(Method::POST, path, Some("application/json"), body)
            .await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// A fixture: the path the apiserver called and the review it sent.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub file: String,
    pub path: String,
    pub review: Value,
}

/// Reads every `*.json` fixture in `dir`, in file-name order (the order they arrived).
pub fn read_fixtures(dir: &Path) -> Result<Vec<Fixture>, LoadError> {
    let error = |e: &dyn std::fmt::Display| LoadError::Fixtures(format!("{}: {e}", dir.display()));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| error(&e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read(&file).map_err(|e| error(&e))?;
            let value: Value = serde_json::from_slice(&text).map_err(|e| error(&e))?;
            Ok(Fixture {
                file: file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                path: value["path"].as_str().unwrap_or("/validate").to_owned(),
                review: value["review"].clone(),
            })
        })
        .collect()
}

/// A copy of `review` that is a distinct write: fresh uid, and `-<n>` on the name.
pub fn unique_review(review: &Value, n: usize) -> Value {
    spread_review(review, n, 0)
}

/// Like [`unique_review`], and a namespaced object also moves to one of
/// `namespaces` namespaces (`<namespace>-<n % namespaces>`), as writes spread over a
/// real cluster; 0 keeps the namespace.
pub fn spread_review(review: &Value, n: usize, namespaces: usize) -> Value {
    let mut review = review.clone();
    let request = &mut review["request"];
    if namespaces > 0 {
        if let Some(namespace) = request["namespace"].as_str().filter(|ns| !ns.is_empty()) {
            let spread = Value::String(format!("{namespace}-{}", n % namespaces));
            request["namespace"] = spread.clone();
            for field in ["object", "oldObject"] {
                if let Some(meta) = request.get_mut(field).and_then(|o| o.get_mut("metadata")) {
                    meta["namespace"] = spread.clone();
                }
            }
        }
    }
    request["uid"] = Value::String(format!("00000000-0000-4000-8000-{n:012}"));
    let name = request["name"].as_str().unwrap_or("object").to_owned();
    let unique = format!("{name}-{n}");
    request["name"] = Value::String(unique.clone());
    for field in ["object", "oldObject"] {
        if let Some(meta) = request.get_mut(field).and_then(|o| o.get_mut("metadata")) {
            meta["name"] = Value::String(unique.clone());
        }
    }
    review
}

/// A create of a Secret or a ConfigMap (`kind`: `secret`, `configmap`) in
/// `team-a`, by alice, with `keys` values of `value_bytes` bytes each, base64
/// text in both kinds, so both objects are the same size ([`vary_values`] gives
/// them their bytes).
pub fn synthetic_create(kind: &str, keys: usize, value_bytes: usize) -> Result<Fixture, LoadError> {
    use base64::Engine as _;
    let (kind, resource) = match kind {
        "secret" => ("Secret", "secrets"),
        "configmap" => ("ConfigMap", "configmaps"),
        other => {
            return Err(LoadError::Fixtures(format!(
                "synthetic: {other:?} is neither secret nor configmap"
            )))
        }
    };
    let mut data = serde_json::Map::new();
    for key in 0..keys {
        let text = base64::engine::general_purpose::STANDARD.encode(vec![0u8; value_bytes]);
        data.insert(format!("key-{key}"), Value::String(text));
    }
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": "bench", "namespace": "team-a", "uid": "6a3c9f6e-0000-4000-8000-000000000000", "resourceVersion": "1"},
        "data": data,
    });
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "6a3c9f6e-0000-4000-8000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": resource},
            "name": "bench",
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["devs", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        },
    });
    Ok(Fixture {
        file: format!("synthetic-{resource}"),
        path: "/validate?timeout=10s".to_owned(),
        review,
    })
}

/// Gives every value of the object's `data` in `review` new bytes (as many as
/// before), made from `n`: values that do not compress and differ from write to
/// write, as real Secrets (and their ciphertexts) do, and the same every run.
pub fn vary_values(review: &mut Value, n: usize) {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let Some(data) = review
        .pointer_mut("/request/object/data")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for value in data.values_mut() {
        let len = value
            .as_str()
            .and_then(|text| engine.decode(text).ok())
            .map_or(0, |bytes| bytes.len());
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // xorshift
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        *value = Value::String(engine.encode(bytes));
    }
}

/// What to send and how hard.
pub struct LoadSpec {
    /// (path, body) pairs, sent in turn.
    pub bodies: Arc<Vec<(String, Bytes)>>,
    pub concurrency: usize,
    /// Total requests per second across all connections; `None` sends as fast as answered.
    pub rate: Option<f64>,
}

/// The result of a load run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub requests: usize,
    pub errors: usize,
    pub denied: usize,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Sends every body once, spread over `concurrency` keep-alive connections.
pub async fn run(client: &Client, spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    let total = spec.bodies.len();
    let concurrency = spec.concurrency.max(1).min(total.max(1));
    let interval = spec
        .rate
        .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut connection = client.connect().await?;
        let bodies = spec.bodies.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut denied) = (0, 0);
            // Stagger workers so a paced run is evenly spread, not bursty.
            let offset = interval.map(|i| i.mul_f64(worker as f64 / concurrency as f64));
            for (k, i) in (worker..bodies.len()).step_by(concurrency).enumerate() {
                if let (Some(interval), Some(offset)) = (interval, offset) {
                    tokio::time::sleep_until((started + offset + interval * k as u32).into()).await;
                }
                let (path, body) = &bodies[i];
                let sent = Instant::now();
                match connection.review(path, body.clone()).await {
                    Ok((status, answer)) if status.is_success() => {
                        latencies.push(sent.elapsed());
                        if answer["response"]["allowed"] == Value::Bool(false) {
                            denied += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors, denied)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let (mut errors, mut denied) = (0, 0);
    for worker in workers {
        let (l, e, d) = worker.await.unwrap_or_default();
        latencies.extend(l);
        errors += e;
        denied += d;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(LoadReport {
        requests: total,
        errors,
        denied,
        seconds,
        throughput: total as f64 / seconds,
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        max_ms: quantile(1.0),
    })
}

/// The baseline: an axum app that reads the body and answers a canned allow, with
/// none of kubescribe's work. Served over the same rustls setup it shows what TLS,
/// HTTP and body reading cost on their own.
pub fn noop_router() -> axum::Router {
    async fn allow(_body: Bytes) -> impl axum::response::IntoResponse {
        const ALLOW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            ALLOW,
        )
    }
    axum::Router::new()
        .route("/validate", axum::routing::post(allow))
        .route("/mutate", axum::routing::post(allow))
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024))
}
