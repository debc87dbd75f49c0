//! The AdmissionReview kubescribe answers with.
//!
//! Besides `apiVersion` and `kind`, only the fields the apiserver reads are
//! written: `uid`, `allowed`, `status` (with its `message` on a denial), `warnings`,
//! and on `/mutate` a base64 JSON Patch.
//! It is serialised straight from borrowed strings into one buffer: kube-core's
//! `AdmissionResponse` copies the uid and the type strings twice on the way, which
//! showed up as a tenth of the request path's allocations.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What the answer to one review says, before it is tied to the request's uid.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) allowed: bool,
    /// Why the write was denied; the apiserver shows it to the client.
    message: String,
    /// Shown by kubectl as `Warning: ...`.
    pub(crate) warnings: Vec<String>,
    /// A JSON Patch, base64 as the apiserver reads Go's `[]byte`.
    patch: Option<String>,
}

impl Answer {
    pub(crate) fn allow() -> Self {
        Self {
            allowed: true,
            message: String::new(),
            warnings: Vec::new(),
            patch: None,
        }
    }

    pub(crate) fn deny(mut self, message: impl Into<String>) -> Self {
        self.allowed = false;
        self.message = message.into();
        self
    }

    pub(crate) fn warn(&mut self, text: String) {
        self.warnings.push(text);
    }

    /// Adds a JSON Patch (its JSON text), for `/mutate`.
    pub(crate) fn with_patch(mut self, json_patch: &[u8]) -> Self {
        use base64::Engine as _;
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(json_patch));
        self
    }

    /// The HTTP answer: 200 and the AdmissionReview for request `uid`.
    pub(crate) fn into_response(self, uid: &str) -> Response {
        let review = Review {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response: Body {
                uid,
                allowed: self.allowed,
                status: Status {
                    message: &self.message,
                },
                patch: self.patch.as_deref(),
                patch_type: self.patch.as_ref().map(|_| "JSONPatch"),
                warnings: &self.warnings,
            },
        };
        let size = 128
            + uid.len()
            + self.message.len()
            + self.patch.as_ref().map_or(0, String::len)
            + self.warnings.iter().map(|w| w.len() + 3).sum::<usize>();
        let mut body = Vec::with_capacity(size);
        match serde_json::to_writer(&mut body, &review) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            // Strings and booleans always serialise; this is only for the type.
            Err(error) => super::extract::refusal(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode the answer: {error}"),
            ),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Body<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    uid: &'a str,
    allowed: bool,
    status: Status<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Serialize)]
struct Status<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json(response: Response) -> serde_json::Value {
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn answers_carry_the_uid_and_only_what_the_apiserver_reads() {
        assert_eq!(
            json(Answer::allow().into_response("u-1")).await,
            serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": "u-1", "allowed": true, "status": {}}
            })
        );
        let mut denied = Answer::allow();
        denied.warn("first \"quoted\"".to_owned());
        let denied = denied.deny("no: see \\ docs");
        assert_eq!(
            json(denied.into_response("u-2")).await["response"],
            serde_json::json!({
                "uid": "u-2",
                "allowed": false,
                "status": {"message": "no: see \\ docs"},
                "warnings": ["first \"quoted\""]
            })
        );
        let patched = Answer::allow().with_patch(br#"[{"op":"add"}]"#);
        let response = json(patched.into_response("u-3")).await["response"].clone();
        assert_eq!(response["patchType"], "JSONPatch");
        use base64::Engine as _;
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(patch, br#"[{"op":"add"}]"#);
    }
}
