//! Reading a review out of an HTTP request, and the errors for requests we cannot read.

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kube_core::admission::Operation;
use kube_core::{GroupVersionKind, GroupVersionResource};

use super::object::RawObject;
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

/// Reads the request body (at most `limit` bytes) before the review is read, so
/// every answer after it, a refusal (413, 415, 400) included, comes after the client
/// has sent the whole request. Over HTTP/2, an answer to a stream that is still sending
/// is followed by RST_STREAM, which clients (curl, in 8 of 10 tries) report as a
/// framing error instead of the answer. An oversized body is read and dropped up to
/// [`DRAIN_FACTOR`] times the limit, then answered 413.
pub(crate) async fn settle_body(
    parts: &Parts,
    body: axum::body::Body,
    (limit, timeout, until): (usize, std::time::Duration, std::time::Instant),
) -> Result<Bytes, Refusal> {
    match tokio::time::timeout_at(until.into(), read_bounded(parts, body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(Refusal::Unreadable(error)),
        Err(_) => Err(Refusal::TooSlow(refusal(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within server.requestTimeout ({timeout:?}) or before the apiserver's deadline"),
        ))),
    }
}

/// Why [`settle_body`] has no body to give.
pub(crate) enum Refusal {
    /// The body did not arrive in time: the 408 to send.
    TooSlow(Response),
    /// It cannot be read (too large, broken).
    Unreadable(ApiError),
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
    parts: &Parts,
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

/// Reads the review in a body that has arrived whole.
pub(crate) fn read_review(parts: &Parts, bytes: &[u8]) -> Result<Write, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    if !essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
    {
        return Err(ApiError::ContentType(
            String::from_utf8_lossy(content_type).into_owned(),
        ));
    }
    decode_review(bytes)
}

/// The envelope, read in one pass. kube-core's `AdmissionReview` flattens its type
/// fields, which makes serde buffer the whole body first.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<WireRequest>,
}

/// The fields of an AdmissionRequest that kubescribe reads, decoded straight into
/// what [`Write`] owns. The rest (`requestKind`, `options`, `userInfo.extra`, ...)
/// is skipped while parsing, never built: this is the request path's largest cost
/// after TLS. The fields read are required or optional as in kube-core's
/// `AdmissionRequest`; the rest are not checked, and the apiserver always sends
/// them well formed.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    user_info: UserInfo,
    #[serde(default)]
    object: Option<RawObject>,
    #[serde(default)]
    old_object: Option<RawObject>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(serde::Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

/// Decodes an AdmissionReview v1 body exactly as the webhook does: the write with
/// its objects as the JSON that was sent.
pub fn decode_review(bytes: &[u8]) -> Result<Write, ApiError> {
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
    let Some(request) = envelope.request else {
        return Err(ApiError::NotAReview(
            "an AdmissionReview without a request".to_owned(),
        ));
    };
    if request.uid.is_empty() {
        return Err(ApiError::NotAReview(
            "an AdmissionReview whose request has no uid".to_owned(),
        ));
    }
    // The apiserver sets a Namespace's own name as its namespace (since 1.20 on
    // every operation, before only on update and delete); it is cluster-scoped.
    let a_namespace =
        request.resource.group.is_empty() && request.resource.resource == "namespaces";
    let write = Write {
        uid: request.uid,
        operation: request.operation,
        kind: request.kind,
        resource: request.resource,
        sub_resource: request.sub_resource.filter(|s| !s.is_empty()),
        namespace: request
            .namespace
            .filter(|s| !s.is_empty())
            .filter(|_| !a_namespace),
        name: request.name,
        user: request.user_info.username.unwrap_or_default(),
        groups: request.user_info.groups.unwrap_or_default(),
        dry_run: request.dry_run,
        object: request.object.map(|o| o.0).filter(|o| !o.is_null()),
        old_object: request.old_object.map(|o| o.0).filter(|o| !o.is_null()),
        from_cluster: false,
    };
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(request: serde_json::Value) -> Result<Write, ApiError> {
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": request,
        });
        decode_review(&serde_json::to_vec(&body).unwrap())
    }

    fn namespace_create() -> serde_json::Value {
        serde_json::json!({
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "requestKind": {"group": "", "version": "v1", "kind": "Namespace"},
            "requestResource": {"group": "", "version": "v1", "resource": "namespaces"},
            "subResource": "",
            "name": "team-a",
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "uid": "1", "groups": ["devs"], "extra": {"k": ["v"]}},
            "object": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}},
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        })
    }

    #[test]
    fn the_write_takes_what_policy_reads_and_skips_the_rest() {
        let write = review(namespace_create()).unwrap();
        assert_eq!(write.uid, "u-1");
        assert_eq!(write.operation, Operation::Create);
        assert_eq!(write.kind.kind, "Namespace");
        assert_eq!(write.resource.resource, "namespaces");
        // A Namespace is cluster-scoped, whatever namespace the apiserver names.
        assert_eq!(write.namespace, None);
        assert_eq!(write.sub_resource, None);
        assert_eq!(
            (write.user.as_str(), write.groups),
            ("alice", vec!["devs".to_owned()])
        );
        assert!(write.dry_run);
        assert_eq!(
            write.object,
            Some(
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
            )
        );
        assert_eq!(write.old_object, None);
        assert!(!write.from_cluster);
    }

    #[test]
    fn a_request_without_what_kube_core_requires_is_not_a_review() {
        for field in ["uid", "kind", "resource", "operation", "userInfo"] {
            let mut request = namespace_create();
            request.as_object_mut().unwrap().remove(field);
            let error = review(request).err().unwrap_or_else(|| panic!("{field}"));
            assert!(matches!(error, ApiError::NotAReview(_)), "{field}: {error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        let mut request = namespace_create();
        request["uid"] = "".into();
        assert!(matches!(review(request), Err(ApiError::NotAReview(m)) if m.contains("no uid")));
        let mut request = namespace_create();
        request["operation"] = "PATCH".into();
        assert!(matches!(review(request), Err(ApiError::NotAReview(_))));
    }
}
