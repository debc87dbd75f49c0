//! Bounds on what callers can make the server hold: open connections, requests in
//! flight on the recording endpoints, and time (handshake, headers, body).
//!
//! Invariants: a connection over `server.maxConnections` is closed before its TLS
//! handshake; a connection must finish the handshake within `handshakeTimeout` and
//! send its first bytes within `headerReadTimeout` after it (then
//! `headerReadTimeout` per HTTP/1.1 request); a `/validate` or `/mutate` request
//! over `server.maxInFlight` or `maxInFlightBytes` waits for a slot until shortly
//! before its deadline, then gets 503; every refusal is counted in
//! `kubescribe_overload_refused_total{reason}`. An HTTP/2 connection that has sent
//! its preface and then idles keeps its slot (hyper has no idle timeout for it).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// `maxConnections`: a slot per open connection, taken before its TLS handshake.
#[derive(Clone)]
pub struct Connections {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            metrics,
        }
    }

    /// A slot for a new connection, or `None` (counted) when all are taken: the
    /// caller then closes the connection.
    pub fn take(&self) -> Option<ConnectionSlot> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.overload_refused("connections");
            return None;
        };
        self.metrics.connections_open.inc();
        Some(ConnectionSlot {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }
}

/// One open connection's share of `maxConnections`, released when the connection
/// is closed.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// When a request arrived, before it waited for a slot or its body: the apiserver's
/// deadline counts from here.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: std::time::Instant,
    /// The apiserver's deadline for this request, less the margin.
    pub deadline: std::time::Instant,
}

/// How much memory handling a request may take, as a multiple of its body: the
/// body, the objects' raw JSON, their parsed values (a JSON number of two bytes is
/// a 32-byte value, so dense bodies cost most), the YAML and the blob. Measured
/// with `scripts/bench-memory.sh` (docs/performance.md).
const MEMORY_PER_BODY_BYTE: usize = 16;

/// The budget's unit, so a semaphore's `u32` permits cover any budget.
const UNIT: usize = 1024;

/// `maxInFlight` and `maxInFlightBytes`: the recording endpoints' requests being
/// handled at once, and the memory they may take together.
pub struct InFlight {
    slots: Arc<Semaphore>,
    max: usize,
    /// `maxInFlightBytes` in [`UNIT`]s.
    memory: Arc<Semaphore>,
    memory_units: usize,
    max_body_bytes: usize,
    default_timeout: std::time::Duration,
    deadline_margin: std::time::Duration,
    metrics: Arc<Metrics>,
}

impl InFlight {
    pub fn new(
        max: usize,
        max_bytes: usize,
        max_body_bytes: usize,
        default_timeout: std::time::Duration,
        deadline_margin: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let memory_units =
            (max_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            memory: Arc::new(Semaphore::new(memory_units)),
            memory_units,
            max_body_bytes,
            default_timeout,
            deadline_margin,
            metrics,
        })
    }

    /// Waits for one of `maxInFlight` slots, at most until the apiserver's
    /// deadline for this request (its `?timeout=`, less the margin); past it, 503
    /// with a JSON message. A waiting request has not read its body yet, so it
    /// holds no more than its connection's flow-control window. A `Fail` webhook
    /// then refuses the write and an `Ignore` one lets it through unrecorded, as
    /// for any webhook that cannot answer in time.
    pub(crate) async fn enter(
        &self,
        request: Request,
    ) -> Result<(Request, Arrival, InFlightSlot), Response> {
        let arrived = std::time::Instant::now();
        let deadline = crate::admission::deadline(
            request.uri().query(),
            arrived,
            self.default_timeout,
            self.deadline_margin,
        );
        let arrival = Arrival {
            at: arrived,
            deadline,
        };
        // Stop waiting a little before the deadline: the drain and the 503 must
        // still reach the apiserver in time.
        let wait_until = deadline
            - self
                .deadline_margin
                .min(deadline.saturating_duration_since(arrived) / 4);
        // The memory the request may take, from its announced length (the largest
        // body when it announces none; the body is never read past it).
        let length = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(self.max_body_bytes)
            .min(self.max_body_bytes);
        let units =
            (length.saturating_mul(MEMORY_PER_BODY_BYTE) / UNIT).clamp(1, self.memory_units);
        let acquired = tokio::time::timeout_at(wait_until.into(), async {
            let slot = self.slots.clone().acquire_owned().await?;
            let memory = self.memory.clone().acquire_many_owned(units as u32).await?;
            Ok::<_, tokio::sync::AcquireError>((slot, memory))
        })
        .await;
        let Ok(Ok(permit)) = acquired else {
            self.metrics.overload_refused("in_flight");
            // Read (and drop) what the client is still sending, briefly, so the 503
            // reaches it over HTTP/2 instead of a stream reset.
            let cap = self
                .max_body_bytes
                .saturating_mul(crate::admission::DRAIN_FACTOR);
            let _ = tokio::time::timeout_at(
                deadline.into(),
                crate::admission::discard_body(request.into_body(), cap),
            )
            .await;
            let body = serde_json::json!({
                "message": format!(
                    "kubescribe was handling server.maxInFlight ({}) requests, or server.maxInFlightBytes of them, until this one's deadline; retry the write, and raise those limits if this is the normal load",
                    self.max
                ),
                "status": 503,
            });
            return Err((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
        };
        self.metrics.requests_in_flight.inc();
        // Released however the request ends, a client that hangs up included.
        let slot = InFlightSlot {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        Ok((request, arrival, slot))
    }
}

/// A request's share of `maxInFlight` and `maxInFlightBytes`, released when it is
/// dropped.
pub(crate) struct InFlightSlot {
    _permit: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    metrics: Arc<Metrics>,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
    }
}

/// A stream that must deliver its first bytes within a time limit: after the TLS
/// handshake, hyper waits for the first bytes (to tell HTTP/1.1 from HTTP/2)
/// without a timeout of its own, so an idle TLS session would keep its connection
/// slot for ever.
pub struct FirstRead<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstRead<S> {
    pub fn new(inner: S, limit: std::time::Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstRead<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| std::future::Future::poll(d.as_mut(), cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within server.headerReadTimeout of the handshake",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstRead<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
