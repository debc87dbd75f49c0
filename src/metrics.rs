//! Prometheus metrics, registered in one place and passed around in state.
//!
//! Labels are small closed sets (operation, decision, reason): never object names,
//! users or uids, so the series count stays bounded whatever the cluster does.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum OperationLabel {
    Create,
    Update,
    Delete,
    Connect,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DecisionLabel {
    /// Committed and durable before the answer (`wait: commit`).
    Recorded,
    /// Handed to the writer; the answer did not wait (`wait: none`).
    Queued,
    /// Would have been recorded, but already matched the file.
    Unchanged,
    Skipped,
    DryRun,
    Denied,
    /// Allowed, but could not be recorded (queue full under `wait: none`).
    Unrecorded,
    /// Passed through the mutating webhook, which never records.
    Mutate,
}

/// Label values are the snake_case of the variant, as Prometheus users expect.
macro_rules! snake_case_label {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(Self::$variant => $text),* })
            }
        }
    };
}

snake_case_label!(OperationLabel { Create => "create", Update => "update", Delete => "delete", Connect => "connect" });
snake_case_label!(DecisionLabel {
    Recorded => "recorded",
    Queued => "queued",
    Unchanged => "unchanged",
    Skipped => "skipped",
    DryRun => "dry_run",
    Denied => "denied",
    Unrecorded => "unrecorded",
    Mutate => "mutate",
});
snake_case_label!(EndpointLabel { Validate => "validate", Mutate => "mutate" });

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: OperationLabel,
    pub decision: DecisionLabel,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum EndpointLabel {
    Validate,
    Mutate,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: EndpointLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub rejected: Family<RejectionLabels, Counter>,
    pub commits: Counter,
    pub queue_depth: Gauge,
    pub retry_depth: Gauge,
    pub batch_size: Histogram,
    pub store_errors: Family<ErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubescribe");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by operation and decision",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register(
            "admission_duration_seconds",
            "Time from a review's arrival to its answer",
            latency.clone(),
        );
        let rejected = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "http_rejections",
            "Requests refused before a review could be read (bad JSON, content type, size)",
            rejected.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "commits",
            "Commits written to the repository",
            commits.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "store_queue_depth",
            "Changes waiting for the writer",
            queue_depth.clone(),
        );
        let retry_depth = Gauge::default();
        registry.register(
            "store_retry_depth",
            "Admitted changes whose commit failed, waiting for a retry",
            retry_depth.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "store_batch_size",
            "Changes committed under one sync (group commit)",
            batch_size.clone(),
        );
        let store_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Batches or changes the writer could not commit, by reason",
            store_errors.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            rejected,
            commits,
            queue_depth,
            retry_depth,
            batch_size,
            store_errors,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
