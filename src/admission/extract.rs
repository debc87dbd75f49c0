//! Reading a review out of an HTTP request, and the errors for requests we cannot read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kube_core::admission::AdmissionRequest;

use super::object::RawObject;

use super::AppState;
use crate::policy::Write;

/// A request we could not read as an AdmissionReview. These are transport errors;
/// a readable review is always answered with a review, never with one of these.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Content-Type must be application/json, got {0:?}")]
    ContentType(String),
    #[error("request body is larger than {limit} bytes; raise server.maxBodyBytes if the apiserver really sends objects this large")]
    TooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("request body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("expected an admission.k8s.io/v1 AdmissionReview, got {0}")]
    NotAReview(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Body(_) | ApiError::NotJson(_) | ApiError::NotAReview(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        refusal(self.status(), &self.to_string())
    }
}

/// An answer that is not an AdmissionReview, as every such answer is:
/// `{"message", "status"}`.
pub(crate) fn refusal(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message, "status": status.as_u16() });
    (status, axum::Json(body)).into_response()
}

/// How much of an oversized body is read and thrown away so that the 413 reaches the
/// client, as a multiple of `server.maxBodyBytes`; past it the stream is reset.
pub(crate) const DRAIN_FACTOR: usize = 4;

/// Reads the request body (at most `limit` bytes) before anything answers, so every
/// answer, an early refusal (401, 413, 415) included, comes after the client has
/// sent the whole request. Over HTTP/2, an answer to a stream that is still sending
/// is followed by RST_STREAM, which clients (curl, in 8 of 10 tries) report as a
/// framing error instead of the answer. An oversized body is read and dropped up to
/// [`DRAIN_FACTOR`] times the limit, then answered 413.
pub(crate) async fn settle_body(
    axum::extract::State((limit, timeout, metrics)): axum::extract::State<(
        usize,
        std::time::Duration,
        Arc<crate::metrics::Metrics>,
    )>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // No longer than the apiserver waits for this request, nor than requestTimeout.
    let until = match parts.extensions.get::<crate::limits::Arrival>() {
        Some(arrival) => arrival.deadline.min(std::time::Instant::now() + timeout),
        None => std::time::Instant::now() + timeout,
    };
    match tokio::time::timeout_at(until.into(), read_bounded(&parts, body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(error)) => error.into_response(),
        Err(_) => {
            metrics.overload_refused("body_timeout");
            refusal(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request body did not arrive within server.requestTimeout ({timeout:?}) or before the apiserver's deadline"),
            )
        }
    }
}

/// Reads and drops up to `cap` bytes of `body`, so an early answer reaches a client
/// still sending (see [`settle_body`]) without holding what it sent.
pub(crate) async fn discard_body(mut body: axum::body::Body, cap: usize) {
    use http_body_util::BodyExt as _;
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            read += data.len();
            if read > cap {
                break;
            }
        }
    }
}

/// The body, at most `limit` bytes; past that, read and dropped up to
/// [`DRAIN_FACTOR`] times the limit, then [`ApiError::TooLarge`].
async fn read_bounded(
    parts: &axum::http::request::Parts,
    mut body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let hint = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut bytes = bytes::BytesMut::with_capacity(hint.min(limit));
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        read += data.len();
        if read <= limit {
            bytes.extend_from_slice(&data);
        } else {
            bytes = bytes::BytesMut::new();
            if read > limit.saturating_mul(DRAIN_FACTOR) {
                break;
            }
        }
    }
    if read > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(bytes.freeze())
}

/// A decoded review: kube-core's typed request, plus the write with its objects kept
/// as the raw JSON the apiserver sent.
pub struct Review {
    pub request: AdmissionRequest<RawObject>,
    pub write: Write,
}

impl FromRequest<Arc<AppState>> for Review {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::ContentType(content_type));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge {
                    limit: state.max_body_bytes,
                }
            } else {
                ApiError::Body(rejection.body_text())
            }
        })?;
        decode(&bytes)
    }
}

/// Decodes a review body.
pub(crate) fn decode(bytes: &[u8]) -> Result<Review, ApiError> {
    decode_review(bytes)
}

/// The envelope, read in one pass. kube-core's `AdmissionReview` flattens its type
/// fields, which makes serde buffer the whole body first; its `AdmissionRequest`
/// does not, so we read that directly.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest<RawObject>>,
}

/// Decodes an AdmissionReview v1 body exactly as the webhook does: kube-core's typed
/// request and the write with its objects as the JSON that was sent.
pub fn decode_review(bytes: &[u8]) -> Result<Review, ApiError> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::NotAReview(format!("an invalid AdmissionReview: {e}"))
        }
        _ => ApiError::NotJson(e),
    })?;
    let (api_version, kind) = (envelope.api_version.as_str(), envelope.kind.as_str());
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        let got = if api_version.is_empty() && kind.is_empty() {
            "a JSON document without apiVersion and kind".to_owned()
        } else {
            format!("apiVersion {api_version:?} kind {kind:?}")
        };
        return Err(ApiError::NotAReview(got));
    }
    let Some(mut request) = envelope.request else {
        return Err(ApiError::NotAReview(
            "an AdmissionReview without a request".to_owned(),
        ));
    };
    request.types = kube_core::TypeMeta {
        api_version: envelope.api_version,
        kind: envelope.kind,
    };
    if request.uid.is_empty() {
        return Err(ApiError::NotAReview(
            "an AdmissionReview whose request has no uid".to_owned(),
        ));
    }
    let object = request.object.take().map(|o| o.value);
    let old_object = request.old_object.take().map(|o| o.value);
    let write = Write::from_request(&request, object, old_object);
    Ok(Review { request, write })
}
