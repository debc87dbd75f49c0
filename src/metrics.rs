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
    /// Committed and pushed before the answer (`wait: push`).
    Pushed,
    /// Committed and pushed, then denied so GitOps applies it (`then: deny`).
    GitOps,
    /// Noted, to be committed once the watch shows it (`record: confirmed`).
    Noted,
    /// Proposed in a pull request, then denied until it is merged (`review`).
    Proposed,
}

/// Label values are the snake_case of the variant, as Prometheus users expect.
macro_rules! snake_case_label {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The label value.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }

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
    Noted => "noted",
    Mutate => "mutate",
    Pushed => "pushed",
    GitOps => "gitops",
    Proposed => "proposed",
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

/// One repository (and branch) writes go to, by its name in the config.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepositoryLabels {
    pub repository: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushWaitLabels {
    pub repository: String,
    /// `commit`, `queued` or `pushing`: see [`crate::outbox::Waited`].
    pub stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushFailureLabels {
    pub repository: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeftoverLabels {
    pub leftover: &'static str,
}

pub struct Metrics {
    registry: Registry,
    certificate_reloads: Family<ResultLabels, Counter>,
    callers_refused: Family<ReasonLabels, Counter>,
    store_recovered: Family<LeftoverLabels, Counter>,
    store_folds: Family<ResultLabels, Counter>,
    pub push_duration: Family<RepositoryLabels, Histogram>,
    push_wait: Family<PushWaitLabels, Histogram>,
    pub push_failures: Family<PushFailureLabels, Counter>,
    pub unpushed: Family<RepositoryLabels, Gauge>,
    seconds_since_push: Family<RepositoryLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// When each repository last pushed (or its pusher started), for
    /// `seconds_since_last_push`, which is computed at scrape time.
    last_push: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub rejected: Family<RejectionLabels, Counter>,
    pub commits: Counter,
    /// Times the writer opened the repository again (after a fold of packs, or
    /// after enough new packs, so their mappings go).
    pub store_reopens: Counter,
    pub denied_reverted: Counter,
    pub queue_depth: Gauge,
    pub retry_depth: Gauge,
    pub connections_open: Gauge,
    pub requests_in_flight: Gauge,
    overload_refused: Family<ReasonLabels, Counter>,
    pub batch_size: Histogram,
    pub store_errors: Family<ErrorLabels, Counter>,
    pub reconcile: ReconcileMetrics,
    pub reviews: ReviewMetrics,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleOutcomeLabels {
    pub rule: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleReasonLabels {
    pub rule: String,
    pub reason: &'static str,
}

/// Pull requests a rule's `review` opened and what became of them (issue 16).
#[derive(Default)]
pub struct ReviewMetrics {
    pub open: Family<RuleLabels, Gauge>,
    pub oldest_seconds: Family<RuleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub conflicting: Family<RuleLabels, Gauge>,
    /// `opened`, `updated` (a session's later write), `merged`, `closed`.
    pub outcomes: Family<RuleOutcomeLabels, Counter>,
    pub api_errors: Family<RuleReasonLabels, Counter>,
    /// Forge webhooks, by result: `accepted` or `refused` (a bad signature).
    pub webhooks: Family<RuleResultLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleResultLabels {
    pub rule: String,
    pub result: &'static str,
}

impl ReviewMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("reviews");
        r.register(
            "open",
            "Open pull requests kubescribe proposed",
            self.open.clone(),
        );
        r.register(
            "oldest_age_seconds",
            "Age of the oldest open pull request, as of the last poll",
            self.oldest_seconds.clone(),
        );
        r.register(
            "conflicting",
            "Open pull requests the forge says cannot merge cleanly",
            self.conflicting.clone(),
        );
        r.register(
            "outcomes",
            "Pull requests opened, updated by a session's later write, merged, and closed without merging",
            self.outcomes.clone(),
        );
        r.register(
            "api_errors",
            "Forge API calls that failed, by reason: auth, not_found, rate_limited, unavailable, refused, credentials, invalid",
            self.api_errors.clone(),
        );
        r.register(
            "webhooks",
            "Forge webhooks received, by result: accepted, refused (no or a wrong signature)",
            self.webhooks.clone(),
        );
    }
}

/// The reconciler's progress (issue #6).
pub struct ReconcileMetrics {
    pub objects_listed: Counter,
    pub files_written: Counter,
    pub files_pruned: Counter,
    /// By reason: `expired` (410, relisted) or `error` (retried).
    pub watch_restarts: Family<ErrorLabels, Counter>,
    pub phantoms: Counter,
    pub confirmed: Counter,
    pub pending: Gauge,
    pub resources: Gauge,
    /// `record: confirmed` changes committed, and how long after admission.
    pub noted_recorded: Counter,
    pub noted_latency: Histogram,
    /// From a watch event's arrival to git having it (committed, or already there).
    pub watch_lag: Histogram,
    /// Commits the watches made, and the changes in them (a commit groups the
    /// changes that arrived while the one before it was being made).
    pub watch_commits: Counter,
    pub watch_changes: Counter,
    /// Changes the watches read that wait for their commit.
    pub watch_waiting: Gauge,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            objects_listed: Counter::default(),
            files_written: Counter::default(),
            files_pruned: Counter::default(),
            watch_restarts: Family::default(),
            phantoms: Counter::default(),
            confirmed: Counter::default(),
            pending: Gauge::default(),
            resources: Gauge::default(),
            noted_recorded: Counter::default(),
            // 5 ms to about 80 s.
            noted_latency: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            // 1 ms to about 30 s, in steps of 1.5×, fine enough for a p99.
            watch_lag: Histogram::new(exponential_buckets(0.001, 1.5, 26)),
            watch_commits: Counter::default(),
            watch_changes: Counter::default(),
            watch_waiting: Gauge::default(),
        }
    }
}

impl ReconcileMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("reconcile");
        r.register(
            "objects_listed",
            "Objects read by reconcile lists (the snapshot and relists)",
            self.objects_listed.clone(),
        );
        r.register(
            "files_written",
            "Files written or removed by reconcile commits",
            self.files_written.clone(),
        );
        r.register(
            "files_pruned",
            "Files removed because no live object matched them after a full list (prune: always)",
            self.files_pruned.clone(),
        );
        r.register(
            "watch_restarts",
            "Watches started again, by reason: expired (410 Gone, relisted) or error (retried)",
            self.watch_restarts.clone(),
        );
        r.register(
            "phantoms",
            "Admitted changes the cluster never persisted, reverted to the cluster's object",
            self.phantoms.clone(),
        );
        r.register(
            "confirmed",
            "Admitted changes the watch (or a read back) showed were persisted",
            self.confirmed.clone(),
        );
        r.register(
            "pending_confirmations",
            "Admitted changes waiting for the watch to confirm them",
            self.pending.clone(),
        );
        r.register(
            "resources",
            "Resources listed and watched",
            self.resources.clone(),
        );
        r.register(
            "noted_recorded",
            "record: confirmed changes committed, by their user, once the cluster showed them",
            self.noted_recorded.clone(),
        );
        r.register(
            "noted_latency_seconds",
            "record: confirmed changes: from admission's note to the durable commit",
            self.noted_latency.clone(),
        );
        r.register(
            "watch_lag_seconds",
            "From a watch event's arrival to git having its change (committed durably, or already there)",
            self.watch_lag.clone(),
        );
        r.register(
            "watch_commits",
            "Commits made by the watches",
            self.watch_commits.clone(),
        );
        r.register(
            "watch_changes",
            "Changes the watches committed (several to a commit under churn)",
            self.watch_changes.clone(),
        );
        r.register(
            "watch_waiting",
            "Changes the watches read that wait for their commit",
            self.watch_waiting.clone(),
        );
    }
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
        let store_reopens = Counter::default();
        registry.register(
            "store_reopens",
            "Times the writer opened its repository again: after a fold of its packs (or a git repack), or after enough new packs that their mappings should go",
            store_reopens.clone(),
        );
        let denied_reverted = Counter::default();
        registry.register(
            "denied_reverted",
            "Commits of writes denied after they were committed (deadline passed, push late), reverted before they could be pushed without their revert",
            denied_reverted.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "store_queue_depth",
            "Changes waiting for the writer",
            queue_depth.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Open client connections (at most server.maxConnections)",
            connections_open.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "/validate and /mutate requests being handled (at most server.maxInFlight)",
            requests_in_flight.clone(),
        );
        let overload_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "overload_refused",
            "Connections and requests refused to bound resources: connections (maxConnections), in_flight (maxInFlight, 503), body_timeout (requestTimeout, 408)",
            overload_refused.clone(),
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
        let push_duration = Family::<RepositoryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "push_duration_seconds",
            "Time a successful git push took, by repository",
            push_duration.clone(),
        );
        // Finer than the push's own buckets: a stage of a few milliseconds matters
        // against a push of tens.
        let push_wait = Family::<PushWaitLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 1.5, 24))
        });
        registry.register(
            "push_wait_seconds",
            "How long a write waiting for its push waited, by stage: commit (until its commit was durable), queued (until the push carrying it started), pushing (that push)",
            push_wait.clone(),
        );
        let push_failures = Family::<PushFailureLabels, Counter>::default();
        registry.register(
            "push_failures",
            "Failed git pushes, by repository and reason (auth, host_key, unreachable, rejected, conflict, timeout, credentials, other)",
            push_failures.clone(),
        );
        let unpushed = Family::<RepositoryLabels, Gauge>::default();
        registry.register(
            "unpushed_commits",
            "Local commits the remote does not have yet",
            unpushed.clone(),
        );
        let seconds_since_push =
            Family::<RepositoryLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "seconds_since_last_push",
            "Seconds since the last successful push (or since kubescribe started)",
            seconds_since_push.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate changes on disk: ok (now in use) or error (refused, the previous pair stays)",
            certificate_reloads.clone(),
        );
        let callers_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "callers_refused",
            "Calls to /validate or /mutate refused with 401: no_credentials, no_certificate, name_not_allowed or wrong_token",
            callers_refused.clone(),
        );
        let store_recovered = Family::<LeftoverLabels, Counter>::default();
        registry.register(
            "store_recovered",
            "Files an abrupt stop left in a repository, removed at start: ref_lock, keep, pack_without_index, temporary",
            store_recovered.clone(),
        );
        let store_folds = Family::<ResultLabels, Counter>::default();
        registry.register(
            "store_folds",
            "Background folds of the writer's packs that ended: folded, nothing (the packs already grew geometrically), needs_git (left to git repack), failed (see the log); and git repacks: repacked, repack_failed",
            store_folds.clone(),
        );
        let reconcile = ReconcileMetrics::default();
        reconcile.register(&mut registry);
        let reviews = ReviewMetrics::default();
        reviews.register(&mut registry);
        Self {
            reviews,
            connections_open,
            requests_in_flight,
            overload_refused,
            store_recovered,
            store_folds,
            registry,
            reconcile,
            certificate_reloads,
            callers_refused,
            push_duration,
            push_wait,
            push_failures,
            unpushed,
            seconds_since_push,
            last_push: std::sync::Mutex::new(Vec::new()),
            requests,
            latency,
            rejected,
            commits,
            store_reopens,
            denied_reverted,
            queue_depth,
            retry_depth,
            batch_size,
            store_errors,
        }
    }

    /// Counts a reload of the serving certificate (`ok`) or a refused one (`error`).
    pub fn certificate_reloaded(&self, ok: bool) {
        self.certificate_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts a connection or request refused to bound resources.
    pub fn overload_refused(&self, reason: &'static str) {
        self.overload_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts files an abrupt stop left behind, removed at start.
    pub fn store_recovered(&self, leftover: &'static str, count: u64) {
        if count > 0 {
            self.store_recovered
                .get_or_create(&LeftoverLabels { leftover })
                .inc_by(count);
        }
    }

    /// Counts a fold of packs, or a `git repack`, that ended with `result`.
    pub fn store_folded(&self, result: &'static str) {
        self.store_folds
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a call refused for want of credentials.
    pub fn caller_refused(&self, reason: &'static str) {
        self.callers_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Notes how long a write that a push answered waited, stage by stage.
    pub(crate) fn push_waited(&self, repository: &str, waited: crate::outbox::Waited) {
        for (stage, duration) in [
            ("commit", waited.commit),
            ("queued", waited.queued),
            ("pushing", waited.pushing),
        ] {
            self.push_wait
                .get_or_create(&PushWaitLabels {
                    repository: repository.to_owned(),
                    stage,
                })
                .observe(duration.as_secs_f64());
        }
    }

    /// Notes a successful push (or a pusher's start) for `seconds_since_last_push`.
    pub fn pushed(&self, repository: &str) {
        let mut last = self.last_push.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match last.iter_mut().find(|(name, _)| name == repository) {
            Some(entry) => entry.1 = now,
            None => last.push((repository.to_owned(), now)),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        for (repository, at) in self
            .last_push
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            self.seconds_since_push
                .get_or_create(&RepositoryLabels {
                    repository: repository.clone(),
                })
                .set(at.elapsed().as_secs_f64());
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
