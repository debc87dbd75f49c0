//! The way into `/validate` and `/mutate`, in order: the caller proves it is the
//! apiserver (headers and the handshake only), then a slot in flight and its share
//! of memory, then the whole body within the request's deadline, then the review
//! read from it. So a caller that proves nothing never takes a slot or memory. Each
//! early refusal (401, 503, 413) first reads and drops, for a bounded time and
//! size, what the client is still sending, so it reaches an HTTP/2 client instead
//! of a stream reset; 408 is for a body that did not arrive in time.
//!
//! This is one function the handlers call, not a stack of tower middlewares: each
//! `from_fn` layer boxed a future and a service per request, and handing the body
//! on rebuilt it, about a fifth of the request path's allocations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;

use super::extract::{read_review, settle_body, ApiError, Refusal};
use crate::caller::CallerPolicy;
use crate::limits::{Arrival, InFlight, InFlightSlot};
use crate::metrics::{Metrics, RejectionLabels};
use crate::policy::Write;

/// The checks every request to a recording endpoint passes, shared by them all.
pub(crate) struct Gate {
    pub(crate) callers: Option<Arc<CallerPolicy>>,
    pub(crate) in_flight: Arc<InFlight>,
    /// `server.maxBodyBytes`.
    pub(crate) body_limit: usize,
    /// `server.requestTimeout`: the longest a body may take to arrive.
    pub(crate) body_timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
}

/// A request through the gate: when it arrived, its slot (held until the handler
/// has built its answer), and the write its review asks for.
pub(crate) struct Entered {
    pub(crate) arrival: Arrival,
    pub(crate) write: Write,
    _slot: InFlightSlot,
}

impl Gate {
    /// `Err` is the refusal to send as it is.
    pub(crate) async fn enter(&self, request: Request) -> Result<Entered, Response> {
        let request = match &self.callers {
            Some(callers) => callers.check(request).await?,
            None => request,
        };
        let (request, arrival, slot) = self.in_flight.enter(request).await?;
        let (parts, body) = request.into_parts();
        // No longer than the apiserver waits for this request, nor than
        // requestTimeout.
        let until = arrival.deadline.min(Instant::now() + self.body_timeout);
        let bytes = settle_body(&parts, body, (self.body_limit, self.body_timeout, until))
            .await
            .map_err(|refusal| match refusal {
                Refusal::TooSlow(response) => {
                    self.metrics.overload_refused("body_timeout");
                    response
                }
                Refusal::Unreadable(error) => unreadable(&self.metrics, error),
            })?;
        let write = read_review(&parts, &bytes).map_err(|e| unreadable(&self.metrics, e))?;
        Ok(Entered {
            arrival,
            write,
            _slot: slot,
        })
    }
}

/// The answer to a request whose review cannot be read (400, 413, 415), logged and
/// counted in `kubescribe_http_rejections_total`.
fn unreadable(metrics: &Metrics, error: ApiError) -> Response {
    use axum::response::IntoResponse as _;
    let status = error.status().as_u16();
    tracing::warn!(status, %error, "unreadable admission request");
    metrics
        .rejected
        .get_or_create(&RejectionLabels { status })
        .inc();
    error.into_response()
}
