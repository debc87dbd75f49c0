//! The webhook's HTTP face: decodes AdmissionReview v1, asks policy, hands recorded
//! changes to the store, and answers.
//!
//! Invariants: a readable review always gets HTTP 200 and an AdmissionReview that
//! echoes its uid (a denial is `allowed: false`, never an HTTP error, which a
//! `failurePolicy: Ignore` webhook would turn into an admit). Only unreadable
//! requests get 400/413/415, always as JSON `{"message","status"}`. `/mutate` never
//! records and never denies; with `annotate: true` it only adds a JSON Patch that
//! stamps the git path (see [`crate::verdict::annotation_patch`]). Every wait is bounded by the apiserver's
//! `?timeout=` minus a margin. Request bodies are never logged: they carry Secrets.

mod answer;
mod extract;
mod gate;
mod handlers;
mod object;

pub use extract::{decode_review, ApiError};
pub(crate) use extract::{discard_body, DRAIN_FACTOR};
pub(crate) use handlers::deadline;
pub use handlers::{app, probes, routes, AppState, TargetState};
