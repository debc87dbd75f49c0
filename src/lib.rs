//! kubescribe: a Kubernetes admission webhook that records every admitted write as a
//! sanitised YAML file and a git commit authored by the Kubernetes user.
//!
//! The flow is admission → policy → manifest → store; each is a module here.

pub mod admission;
pub mod caller;
pub mod cascade;
pub mod check;
pub mod cli;
pub mod config;
pub mod declared;
pub mod fault;
pub mod intent;
pub(crate) mod kinds;
pub mod limits;
pub mod load;
pub mod manifest;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod push;
pub mod reconcile;
pub mod review;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod tls;
pub mod verdict;
pub mod webhook;
pub(crate) mod yaml;

/// An error with its sources, `a: b: c`, each cause once (gix repeats them).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
