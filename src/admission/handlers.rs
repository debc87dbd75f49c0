//! Routes and the review logic behind `/validate` and `/mutate`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kube_core::admission::Operation;
use tracing::{field::Empty, Instrument};

use super::answer::Answer;
use super::gate::Gate;
use crate::config::{RailMode, Then, Wait};
use crate::manifest::{self, Layout, Placement};
use crate::metrics::{
    DecisionLabel, EndpointLabel, EndpointLabels, Metrics, OperationLabel, RequestLabels,
};
use crate::policy::{Policy, Write};
use crate::push::{Denial, PushHandle, Pushed};
use crate::review::Proposal;
use crate::store::{Outcome, PushReceipt, Receipt, StoreError, StoreHandle};

/// One repository (and branch) writes are recorded to.
pub struct TargetState {
    /// For the `kubescribe.io/git-repo` annotation.
    pub repo: String,
    pub layout: Layout,
    pub store: StoreHandle,
    /// Present when the branch has a remote.
    pub push: Option<PushHandle>,
}

/// Everything a request needs; shared by every connection.
pub struct AppState {
    pub policy: Policy,
    /// With the reconciler on: admitted changes wait here for the watch to show
    /// they were persisted (see [`crate::reconcile::Confirmations`]).
    pub confirmations: Option<Arc<crate::reconcile::Confirmations>>,
    /// `/mutate` stamps recorded objects with their git path and repository.
    pub annotate: bool,
    /// In the order of [`crate::config::Config::targets`]: the default first.
    pub targets: Vec<TargetState>,
    /// One per rule with `review`.
    pub reviews: Vec<Arc<crate::review::Reviewer>>,
    pub metrics: Arc<Metrics>,
    /// Set once the repository is open and the certificate loaded.
    pub ready: AtomicBool,
    pub max_body_bytes: usize,
    pub default_timeout: Duration,
    pub deadline_margin: Duration,
}

impl AppState {
    /// Where `change` goes in target `target`: its own document when the branch is
    /// edited in place and declares it (see [`manifest::plan_in_place`]); and
    /// whether a Secret can be encrypted there ([`manifest::sealable`]).
    fn place(&self, target: usize, change: &mut manifest::Change, write: &Write) -> Placement {
        let store = &self.targets[target].store;
        let placement = match store.declared() {
            Some(shared) => {
                let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
                // Only `overlay: patch` reads the branch's files at admission.
                let tree = (shared.config.overlay == crate::config::Overlay::Patch)
                    .then(|| shared.tree.read().unwrap_or_else(|e| e.into_inner()));
                let read = tree.as_ref().map(|tree| tree.reader());
                let read = read
                    .as_ref()
                    .map(|read| read as &crate::declared::overlay::ReadFile<'_>);
                manifest::plan_in_place(&index, &shared.config, change, write, read)
            }
            None => Placement::Canonical,
        };
        manifest::sealable(placement, change, store.sealer())
    }
}

/// The webhook's router with every caller accepted and `/metrics` on it.
pub fn app(state: Arc<AppState>) -> Router {
    let in_flight = crate::limits::InFlight::new(
        64,
        128 << 20,
        state.max_body_bytes,
        state.default_timeout,
        state.deadline_margin,
        state.metrics.clone(),
    );
    routes(state, None, true, in_flight, Duration::from_secs(30))
}

/// The webhook's router. Production and every test build it here. With `callers`,
/// `/validate` and `/mutate` refuse callers that do not prove they are the
/// apiserver ([`crate::caller::CallerPolicy::check`]); the probes stay open. Without
/// `with_metrics`, `/metrics` is served elsewhere ([`probes`]).
pub fn routes(
    state: Arc<AppState>,
    callers: Option<Arc<crate::caller::CallerPolicy>>,
    with_metrics: bool,
    in_flight: Arc<crate::limits::InFlight>,
    body_timeout: Duration,
) -> Router {
    // Who the caller is, a slot in flight, the whole body: see [`Gate`].
    let gate = Arc::new(Gate {
        callers,
        in_flight,
        body_limit: state.max_body_bytes,
        body_timeout,
        metrics: state.metrics.clone(),
    });
    let mutate_gate = gate.clone();
    let mut router = Router::new()
        .route(
            "/validate",
            post(move |State(state), request| validate(state, gate.clone(), request)),
        )
        .route(
            "/mutate",
            post(move |State(state), request| mutate(state, mutate_gate.clone(), request)),
        );
    // The forges' webhooks cannot prove they are the apiserver: their own
    // signature is checked instead, and they can only ask for an early poll. The
    // path is there only when a rule takes them.
    if state.reviews.iter().any(|r| r.takes_webhooks()) {
        router = router.route("/reviews/{rule}", post(forge_hook));
    }
    router = router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if with_metrics {
        router = router.route("/metrics", get(metrics));
    }
    router.with_state(state)
}

/// `/metrics`, `/healthz` and `/readyz` alone, for `server.metricsListen`.
pub fn probes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let broken: Vec<String> = state
        .targets
        .iter()
        .filter_map(|target| {
            target
                .store
                .not_open()
                .map(|why| format!("repository {}: {why}", target.repo))
        })
        .collect();
    if !broken.is_empty() {
        let text = format!(
            "not ready: {}; kubescribe tries again every 30 s at most, no restart needed\n",
            broken.join("; ")
        );
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    }
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn validate(state: Arc<AppState>, gate: Arc<Gate>, request: Request) -> Response {
    let entered = match gate.enter(request).await {
        Ok(entered) => entered,
        Err(refusal) => return refusal,
    };
    // The deadline counts from the request's arrival, before any wait for a slot
    // and for the body.
    let (started, deadline) = (entered.arrival.at, entered.arrival.deadline);
    let write = &entered.write;
    let span = review_span(write);
    let deadline = Deadline {
        soft: deadline,
        hard: deadline + grace(state.deadline_margin, started, deadline),
    };
    let (response, decision) = answer(&state, write, deadline)
        .instrument(span.clone())
        .await;
    span.record("decision", tracing::field::debug(decision));
    span.in_scope(|| {
        tracing::info!(
            allowed = response.allowed,
            elapsed_us = started.elapsed().as_micros() as u64,
            "answered"
        );
    });
    finish(&state, EndpointLabel::Validate, write, decision, started);
    response.into_response(&write.uid)
}

async fn mutate(state: Arc<AppState>, gate: Arc<Gate>, request: Request) -> Response {
    let entered = match gate.enter(request).await {
        Ok(entered) => entered,
        Err(refusal) => return refusal,
    };
    let write = &entered.write;
    finish(
        &state,
        EndpointLabel::Mutate,
        write,
        DecisionLabel::Mutate,
        entered.arrival.at,
    );
    let response = Answer::allow();
    let patch = if state.annotate {
        annotation(&state, write)
    } else {
        None
    };
    let Some(patch) = patch else {
        return response.into_response(&write.uid);
    };
    // The apiserver reads `patch` as Go's []byte: a base64 string of the JSON Patch,
    // built and checked with json-patch.
    match serde_json::from_value::<json_patch::Patch>(patch)
        .and_then(|patch| serde_json::to_vec(&patch))
    {
        Ok(bytes) => response.with_patch(&bytes).into_response(&write.uid),
        Err(error) => {
            // Never block a write over an annotation.
            tracing::warn!(%error, "cannot build the annotation patch");
            response.into_response(&write.uid)
        }
    }
}

/// The annotation patch for a write the validating webhook would record.
fn annotation(state: &AppState, write: &Write) -> Option<serde_json::Value> {
    let verdict = crate::verdict::evaluate(
        write,
        &state.policy,
        |i| &state.targets[i].layout,
        |i, change, write| state.place(i, change, write),
    );
    if !verdict.allowed {
        return None;
    }
    let target = &state.targets[verdict.target?];
    crate::verdict::annotation_patch(write, verdict.path.as_deref()?, &target.repo)
}

fn review_span(write: &Write) -> tracing::Span {
    tracing::info_span!(
        "review",
        uid = %write.uid,
        kind = %write.kind.kind,
        namespace = write.namespace.as_deref().unwrap_or(""),
        name = %write.name,
        operation = ?write.operation,
        dry_run = write.dry_run,
        decision = Empty,
    )
}

fn finish(
    state: &AppState,
    endpoint: EndpointLabel,
    write: &Write,
    decision: DecisionLabel,
    started: Instant,
) {
    let operation = match write.operation {
        Operation::Create => OperationLabel::Create,
        Operation::Update => OperationLabel::Update,
        Operation::Delete => OperationLabel::Delete,
        Operation::Connect => OperationLabel::Connect,
    };
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            operation,
            decision,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&EndpointLabels { endpoint })
        .observe(started.elapsed().as_secs_f64());
}

/// The apiserver's deadline (`?timeout=10s`) minus our margin, so the answer
/// arrives before the apiserver gives up on us.
pub(crate) fn deadline(
    query: Option<&str>,
    started: Instant,
    default: Duration,
    margin: Duration,
) -> Instant {
    let timeout = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(crate::config::parse_go_duration)
        .unwrap_or(default)
        // The apiserver never waits longer than 30s for a webhook.
        .min(MAX_TIMEOUT);
    let margin = margin.min(timeout / 4);
    started + timeout.saturating_sub(margin)
}

const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// When a waiting answer gives up.
#[derive(Clone, Copy)]
struct Deadline {
    /// The apiserver's deadline less the margin: waits for a commit or a push end
    /// here, unless the writer is committing the change already.
    soft: Instant,
    /// Half way through the margin: the end of the wait for a commit that is being
    /// written (the rest of the margin carries the answer).
    hard: Instant,
}

/// Half the margin [`deadline`] left before the apiserver's own deadline: `margin`,
/// or a quarter of the timeout when that is less (the time to `soft` is then
/// three quarters of it).
fn grace(margin: Duration, started: Instant, soft: Instant) -> Duration {
    margin.min(soft.saturating_duration_since(started) / 3) / 2
}

/// Decides and, if recording, hands the change to the store and waits as the rule says.
async fn answer(state: &AppState, write: &Write, deadline: Deadline) -> (Answer, DecisionLabel) {
    let mut response = Answer::allow();
    let mut verdict = crate::verdict::evaluate(
        write,
        &state.policy,
        |i| &state.targets[i].layout,
        |i, change, write| state.place(i, change, write),
    );
    if let Some(warning) = cascade_warning(state, write, &verdict, deadline.soft).await {
        verdict.warnings.push(warning);
    }
    for warning in verdict.warnings {
        response.warn(warning);
    }
    let rule = verdict.rule;
    let Some(recording) = verdict.record else {
        if !verdict.findings.is_empty() {
            tracing::info!(findings = ?verdict.findings, "guard rails");
        }
        match verdict.label {
            DecisionLabel::Unrecorded => {
                tracing::warn!(warnings = ?response.warnings, "cannot turn the write into a file");
            }
            label => tracing::debug!(decision = label.as_str(), "not recorded"),
        }
        if let Some(message) = verdict.message {
            response = response.deny(message);
        }
        return (response, verdict.label);
    };
    let crate::verdict::Recording {
        change,
        wait,
        then,
        target,
        require_recording,
        record,
        review,
    } = recording;
    if review {
        return propose(
            state,
            write,
            (change, target),
            rule.as_deref(),
            response,
            deadline,
        )
        .await;
    }
    let target_index = target;
    let target = &state.targets[target];
    let path = change.path.clone();
    if record == crate::config::Record::Confirmed {
        // Only noted: the reconciler commits it, by this user, once its watch shows
        // the object so. (The config refuses `confirmed` without the reconciler.)
        match &state.confirmations {
            Some(confirmations) => {
                Expected::new(confirmations, target_index, &change, write, true).kept = true;
                tracing::debug!(%path, "noted; recorded once the cluster shows it");
                return (response, DecisionLabel::Noted);
            }
            None => {
                response.warn(format!("kubescribe: not recorded: {path} waits for the reconciler, which is not running"),
                );
                return (response, DecisionLabel::Unrecorded);
            }
        }
    }
    // With the reconciler on, the change waits for the watch to confirm it. It is
    // noted before it is committed, so the reconciler never writes an older state
    // over it meanwhile, and withdrawn unless the write is allowed and recorded.
    let mut expected = match (&state.confirmations, then) {
        (Some(confirmations), Then::Allow) => Some(Expected::new(
            confirmations,
            target_index,
            &change,
            write,
            false,
        )),
        _ => None,
    };
    let mut keep_expected = || {
        if let Some(expected) = expected.as_mut() {
            expected.kept = true;
        }
    };
    match wait {
        Wait::None => {
            let unavailable = match require_recording {
                RailMode::Off => None,
                _ => target.store.unavailable(),
            };
            if unavailable.is_some() && require_recording == RailMode::Enforce {
                // The repository failed its last batch: this answer waits for the
                // commit, as under `wait: commit`, so the write is denied unless it
                // is recorded, and a repository that is back lets it through.
                let (outcome, _) = commit_and_wait(&target.store, change, false, deadline).await;
                return match outcome {
                    Ok(Outcome::Refused { reason }) => deny_unrecorded(response, &path, &reason),
                    Ok(outcome) => {
                        if let Outcome::Committed { .. } = outcome {
                            keep_expected();
                        }
                        (response, DecisionLabel::Recorded)
                    }
                    Err(error) => {
                        deny_unrecorded(response, &path, &format!("{error}; {}", error.advice()))
                    }
                };
            }
            let submitted = target
                .store
                .submit(change, None, false, deadline.soft)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e}; {}", e.advice()));
            if submitted.is_ok() {
                keep_expected();
            }
            match (submitted, require_recording) {
                (Ok(()), RailMode::Audit) if unavailable.is_some() => {
                    response.warn(format!(
                            "kubescribe: audit: requireRecording: the repository is unavailable ({}); the change is queued and retried",
                            unavailable.unwrap_or_default()
                        ),
                    );
                    (response, DecisionLabel::Queued)
                }
                (Ok(()), _) => (response, DecisionLabel::Queued),
                (Err(error), RailMode::Enforce) => deny_unrecorded(response, &path, &error),
                (Err(error), _) => {
                    // The rule does not hold writes, so the write goes through unrecorded.
                    tracing::error!(%error, %path, "write admitted without a record");
                    state
                        .metrics
                        .store_errors
                        .get_or_create(&crate::metrics::ErrorLabels {
                            reason: "queue_full",
                        })
                        .inc();
                    response.warn(format!("kubescribe: not recorded in git: {error}"));
                    (response, DecisionLabel::Unrecorded)
                }
            }
        }
        Wait::Commit | Wait::Push => {
            let push = match (wait, &target.push) {
                // Kept to name the change (and revert it): the bytes are not needed.
                (Wait::Push, Some(push)) => Some((push, change.without_body())),
                _ => None,
            };
            let (outcome, pushed) =
                commit_and_wait(&target.store, change, push.is_some(), deadline).await;
            let ticket = pushed.as_ref().map(|p| p.ticket);
            match outcome {
                Ok(Outcome::ParentMissing) => {
                    response.warn(format!("kubescribe: {path} is not recorded yet, so this scale change is not either"));
                    (response, DecisionLabel::Unrecorded)
                }
                Ok(Outcome::Refused { reason }) => {
                    tracing::error!(%reason, %path, "write denied: not committed");
                    let message = format!(
                        "kubescribe could not record this change in git, so it was not applied: {reason}"
                    );
                    (response.deny(message), DecisionLabel::Denied)
                }
                Ok(outcome) => match (push, pushed) {
                    (Some((push, change)), Some(mut pushed)) => {
                        // Dropped while waiting (the apiserver gave up on the request,
                        // or the server stops): the write was not applied, so deny
                        // and revert like at the deadline.
                        let guard = Unanswered {
                            push,
                            store: &target.store,
                            change: match outcome {
                                Outcome::Committed { commit } => {
                                    Some((change.clone(), commit, pushed.ticket))
                                }
                                _ => None,
                            },
                        };
                        let result =
                            match tokio::time::timeout_at(deadline.soft.into(), &mut pushed.pushed)
                                .await
                            {
                                Ok(result) => result.ok(),
                                // Closed first: from here on the pusher cannot tell this
                                // waiter "pushed" unseen, so the answer below is exact.
                                Err(_) => {
                                    pushed.pushed.close();
                                    pushed.pushed.try_recv().ok()
                                }
                            };
                        guard.disarm();
                        let answer = answer_push(
                            response,
                            push,
                            target,
                            (change, outcome, ticket),
                            result,
                            then,
                        );
                        if answer.1 == DecisionLabel::Pushed {
                            keep_expected();
                        }
                        answer
                    }
                    _ => match outcome {
                        Outcome::Committed { commit } => {
                            keep_expected();
                            let short = commit.to_hex_with_len(12);
                            response.warn(format!("recorded {short} {path}"));
                            (response, DecisionLabel::Recorded)
                        }
                        _ => {
                            response.warn(format!("unchanged {path}"));
                            (response, DecisionLabel::Unchanged)
                        }
                    },
                },
                Err(error) => {
                    tracing::error!(%error, %path, "write denied: not committed");
                    let message = format!(
                        "kubescribe could not record this change in git, so it was not applied: {error}; {}",
                        error.advice()
                    );
                    (response.deny(message), DecisionLabel::Denied)
                }
            }
        }
    }
}

/// What a recorded delete of a namespace or a definition takes out of git with it
/// (see [`crate::cascade`]), as the branch is now: the person deleting sees it in the
/// answer, and a dry run says it before.
async fn cascade_warning(
    state: &AppState,
    write: &Write,
    verdict: &crate::verdict::Verdict,
    deadline: Instant,
) -> Option<String> {
    let scope = crate::cascade::Scope::of(write)?;
    let (target, own) = (verdict.target?, verdict.path.clone()?);
    let target = &state.targets[target];
    let cascade = crate::cascade::Cascade {
        layout: target.layout.clone(),
        scope,
    };
    let store = target.store.clone();
    let scope = cascade.scope.clone();
    // Reading the branch must not eat the time the commit needs: at most a second,
    // and a quarter of what is left; past that, the warning goes without the list.
    let now = Instant::now();
    let limit = (now + CASCADE_LOOKUP_MAX).min(now + deadline.saturating_duration_since(now) / 4);
    let lookup = tokio::task::spawn_blocking(move || store.cascade_files(&cascade, &own));
    let files = match tokio::time::timeout_at(limit.into(), lookup).await {
        Ok(Ok(Ok(files))) if files.is_empty() => return None,
        Ok(Ok(Ok(files))) => Some(files),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "cannot list the files this delete removes");
            None
        }
        Ok(Err(_)) | Err(_) => None,
    };
    Some(crate::cascade::warning(
        &scope,
        files.as_deref(),
        write.dry_run,
    ))
}

/// How long the answer may spend listing what a delete takes out of git.
const CASCADE_LOOKUP_MAX: Duration = Duration::from_secs(1);

/// The largest forge webhook body read, and how long it may take to arrive.
const HOOK_BODY_BYTES: usize = 1 << 20;
const HOOK_BODY_TIME: Duration = Duration::from_secs(10);

/// A forge's webhook for rule `rule`'s pull requests: checked against the
/// webhook's secret, then only a hint to poll now (see [`crate::review::hook`]).
async fn forge_hook(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(rule): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> Response {
    let message = super::extract::refusal;
    let Some(reviewer) = state.reviews.iter().find(|r| r.rule() == rule) else {
        return message(StatusCode::NOT_FOUND, "no review rule of that name");
    };
    let secret = match reviewer.webhook_secret() {
        None => {
            return message(
                StatusCode::NOT_FOUND,
                "this rule's review takes no webhooks: set review.webhookSecretFile",
            )
        }
        Some(Err(error)) => {
            tracing::error!(%rule, %error, "cannot read the forge webhook's secret");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "kubescribe cannot read this webhook's secret; see its logs",
            );
        }
        Some(Ok(secret)) => secret,
    };
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    // Pull request events are a few KiB; nothing is read before the rule and its
    // secret are known, and never more than this.
    let result = match crate::review::hook::signature_present(reviewer.forge(), &headers) {
        Err(why) => Err(why),
        Ok(()) => match tokio::time::timeout(
            HOOK_BODY_TIME,
            axum::body::to_bytes(body, HOOK_BODY_BYTES),
        )
        .await
        {
            Ok(Ok(body)) => crate::review::hook::verify(reviewer.forge(), &secret, &headers, &body),
            Ok(Err(_)) | Err(_) => Err(format!(
                "the body is over {HOOK_BODY_BYTES} bytes or did not arrive within {HOOK_BODY_TIME:?}"
            )),
        },
    };
    state
        .metrics
        .reviews
        .webhooks
        .get_or_create(&crate::metrics::RuleResultLabels {
            rule: rule.clone(),
            result: if result.is_ok() {
                "accepted"
            } else {
                "refused"
            },
        })
        .inc();
    match result {
        Ok(()) => {
            reviewer.poke();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => {
            // Anyone can call this path: the metric counts refusals, the log
            // does not grow with them.
            tracing::debug!(%rule, why, "forge webhook refused");
            message(
                StatusCode::UNAUTHORIZED,
                &format!("{why}: give the forge's webhook the secret in review.webhookSecretFile"),
            )
        }
    }
}

/// A write under a `review` rule: proposed in a pull request, and denied with its
/// URL (see [`crate::review`]). The proposal runs on its own task, so a slow forge
/// finishes it after the answer instead of leaving half of it.
async fn propose(
    state: &AppState,
    write: &Write,
    (change, target): (manifest::Change, usize),
    rule: Option<&str>,
    mut response: Answer,
    deadline: Deadline,
) -> (Answer, DecisionLabel) {
    let Some(reviewer) = state
        .reviews
        .iter()
        .find(|r| Some(r.rule()) == rule)
        .cloned()
    else {
        let message = "kubescribe: this write's rule proposes pull requests, but its reviewer is not running, so the write was not applied; see kubescribe's logs".to_owned();
        return (response.deny(message), DecisionLabel::Denied);
    };
    let path = change.path.to_string();
    for (user, url) in reviewer.others_on(&path, &write.user) {
        response.warn(format!("kubescribe: {path} is also changed by an open pull request of {user}: {url}; the second one merged may conflict"),
        );
    }
    let branch = reviewer.branch_of(write);
    let warnings = response.warnings.clone();
    // The object before the write, as a file: what a session merges the write's
    // own change from. A Secret is written whole (encrypted), never merged.
    let secrets = state.policy.secret_mode(rule.unwrap_or_default());
    let base = write.old_object.as_ref().and_then(|old| {
        let before = Write {
            object: Some(old.clone()),
            old_object: None,
            ..write.clone()
        };
        match manifest::plan(&before, &state.targets[target].layout, secrets) {
            Ok(manifest::Change {
                action: manifest::Action::Put(bytes),
                ..
            }) => Some(bytes),
            _ => None,
        }
    });
    let task = tokio::spawn(reviewer.propose(Arc::new(write.clone()), change, base, warnings));
    let gitops = "this cluster changes only through GitOps, so the write is not applied now; your GitOps tool applies it once the pull request is merged";
    let (message, label) = match tokio::time::timeout_at(deadline.hard.into(), task).await {
        Ok(Ok(Ok(Proposal::Opened {
            url,
            branch,
            commit,
            added,
        }))) => {
            let what = if added {
                "added this change to your open pull request"
            } else {
                "proposed this change in the pull request"
            };
            (
                format!(
                    "kubescribe {what} {url} (branch {branch}, commit {}); {gitops}",
                    commit.to_hex_with_len(12)
                ),
                DecisionLabel::Proposed,
            )
        }
        Ok(Ok(Ok(Proposal::Unchanged { url }))) => (
            match url {
                Some(url) => format!("kubescribe: your open pull request {url} already has this change; {gitops}"),
                None => format!("kubescribe: git already has {path} as written, so there is nothing to propose; this cluster changes only through GitOps, so the write is not applied directly"),
            },
            DecisionLabel::Unchanged,
        ),
        Ok(Ok(Err(error))) => {
            tracing::error!(%error, %branch, "cannot propose the write");
            (
                format!("kubescribe could not propose this change for review, so it was not applied: {error}"),
                DecisionLabel::Denied,
            )
        }
        Ok(Err(panic)) => {
            tracing::error!(error = %panic, %branch, "proposing the write failed");
            (
                "kubescribe could not propose this change for review (an internal error; see kubescribe's logs), so it was not applied; retry the write".to_owned(),
                DecisionLabel::Denied,
            )
        }
        Err(_) => {
            tracing::warn!(%branch, "still proposing at the deadline");
            (
                format!("kubescribe was still proposing this change on branch {branch} at the apiserver's deadline, so it was not applied; a pull request from that branch appears once the forge answers (if none does, retry the write)"),
                DecisionLabel::Denied,
            )
        }
    };
    (response.deny(message), label)
}

/// The denial of a write `requireRecording: enforce` needs recorded, and cannot be
/// (`error` says why and what to do).
fn deny_unrecorded(
    response: Answer,
    path: &manifest::RepoPath,
    error: &str,
) -> (Answer, DecisionLabel) {
    tracing::error!(%error, %path, "write denied: cannot be recorded (requireRecording)");
    (
        response.deny(format!(
            "kubescribe: requireRecording: this write must be recorded in git, and cannot be right now: {error}"
        )),
        DecisionLabel::Denied,
    )
}

/// An admitted change noted for confirmation; withdrawn when dropped unless kept
/// (the write was allowed and recorded).
struct Expected<'a> {
    confirmations: &'a crate::reconcile::Confirmations,
    target: usize,
    path: String,
    uid: String,
    kept: bool,
}

impl<'a> Expected<'a> {
    fn new(
        confirmations: &'a crate::reconcile::Confirmations,
        target: usize,
        change: &manifest::Change,
        write: &Write,
        noted: bool,
    ) -> Self {
        confirmations.expect(
            target,
            change,
            &write.resource.group,
            &write.resource.resource,
            noted,
        );
        Self {
            confirmations,
            target,
            path: change.path.as_str().to_owned(),
            uid: change.uid.clone(),
            kept: false,
        }
    }
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.confirmations
                .withdraw(self.target, &self.path, &self.uid);
        }
    }
}

/// Queues a change whose answer waits, and waits for its commit until `deadline`;
/// also returns the receiver of its push when `push` is set.
///
/// At the soft deadline the change is abandoned, unless the writer has claimed it
/// already: then the answer waits for the commit until the hard deadline, and a
/// commit that lands after that is reverted by the writer before it is pushed.
async fn commit_and_wait(
    store: &StoreHandle,
    change: manifest::Change,
    push: bool,
    deadline: Deadline,
) -> (Result<Outcome, StoreError>, Option<PushReceipt>) {
    let receipt = match store
        .submit(change, Some(deadline.soft), push, deadline.soft)
        .await
    {
        Ok(Some(receipt)) => receipt,
        Ok(None) => unreachable!("a waiting submit always returns a receipt"),
        Err(error) => return (Err(error), None),
    };
    let Receipt {
        mut committed,
        claim,
        pushed,
    } = receipt;
    let outcome = match tokio::time::timeout_at(deadline.soft.into(), &mut committed).await {
        Ok(result) => result.unwrap_or(Err(StoreError::Closed)),
        Err(_) if claim.abandon() => Err(StoreError::Expired),
        Err(_) => match tokio::time::timeout_at(deadline.hard.into(), &mut committed).await {
            Ok(result) => result.unwrap_or(Err(StoreError::Closed)),
            Err(_) => {
                // Closed first, so the writer either delivered its outcome before
                // this line (read here) or learns that nobody heard it (and reverts).
                committed.close();
                committed.try_recv().unwrap_or(Err(StoreError::Late))
            }
        },
    };
    (outcome, pushed)
}

/// The answer of a `wait: push` rule once the commit is durable: allowed (or, with
/// `then: deny`, refused in favour of GitOps) when the remote has it; denied, and
/// the commit reverted, when it did not get there before the deadline. A denied
/// commit the push in flight does not carry is held back until its revert is
/// appended, so the remote never gets it alone; when the push in flight carries
/// it, the denial says the change may still reach the remote.
fn answer_push(
    response: Answer,
    push: &PushHandle,
    target: &TargetState,
    (change, outcome, ticket): (manifest::Change, Outcome, Option<u64>),
    result: Option<Pushed>,
    then: Then,
) -> (Answer, DecisionLabel) {
    let mut response = response;
    let Some(Pushed { commit }) = result else {
        let reason = match push.outbox.last_error() {
            Some(error) => format!("{error} ({})", error.advice()),
            None => "the push is still running".to_owned(),
        };
        let denial = match (outcome, ticket) {
            (Outcome::Committed { commit }, Some(ticket)) => {
                let denial = push.outbox.deny(ticket);
                let current = match denial {
                    Denial::Withheld { commit } | Denial::InFlight { commit } => commit,
                    Denial::NotYet | Denial::Gone => commit,
                };
                target.store.revert(
                    change.clone(),
                    current,
                    format!(
                        "The write was denied because its commit did not reach {} before the apiserver's deadline: {reason}.",
                        push.remote
                    ),
                    Some(ticket),
                );
                Some((denial, current))
            }
            _ => None,
        };
        let message = match denial {
            Some((Denial::InFlight { .. }, commit)) => {
                tracing::error!(path = %change.path, remote = %push.remote, %commit, %reason, "write denied: push outcome unknown at the deadline; its revert follows it");
                format!(
                    "kubescribe could not confirm the push of this change to {} {} before the apiserver's deadline, so it was not applied: {reason}. The push was sent and has not answered, so the change may still reach {}; if it does, kubescribe pushes a commit reverting it (it reverts {}) right after. Retry the write once the remote answers.",
                    push.remote,
                    push.branch,
                    push.remote,
                    commit.to_hex_with_len(12)
                )
            }
            Some((Denial::Gone, commit)) => {
                tracing::error!(path = %change.path, remote = %push.remote, %commit, "write denied: the remote accepted it just after the deadline; its revert follows it");
                format!(
                    "kubescribe could not confirm the push of this change to {} {} before the apiserver's deadline, so it was not applied. The remote accepted it just after; kubescribe pushes a commit reverting it (it reverts {}) next. Retry the write.",
                    push.remote,
                    push.branch,
                    commit.to_hex_with_len(12)
                )
            }
            None => {
                tracing::error!(path = %change.path, remote = %push.remote, %reason, "write denied: the branch did not reach the remote in time");
                format!(
                    "kubescribe could not confirm that {} {} has this object's file before the apiserver's deadline, so the write was not applied: {reason}. The file was already as written, so nothing was committed for it. Retry the write once the remote is reachable.",
                    push.remote, push.branch
                )
            }
            Some((Denial::Withheld { .. } | Denial::NotYet, _)) => {
                tracing::error!(path = %change.path, remote = %push.remote, %reason, "write denied: not pushed in time; held back and reverted");
                format!(
                    "kubescribe could not push this change to {} {} before the apiserver's deadline, so it was not applied: {reason}. It will not reach the remote: kubescribe reverts it before its next push. Retry the write once the remote is reachable.",
                    push.remote, push.branch
                )
            }
        };
        return (response.deny(message), DecisionLabel::Denied);
    };
    let text = match commit {
        Some(commit) => format!(
            "pushed {} to {} {}",
            commit.to_hex_with_len(12),
            push.remote,
            push.branch
        ),
        None => format!(
            "unchanged {}: nothing to push to {} {}",
            change.path, push.remote, push.branch
        ),
    };
    match then {
        Then::Allow => {
            response.warn(text);
            (response, DecisionLabel::Pushed)
        }
        Then::Deny => (
            response.deny(format!(
                "kubescribe recorded this change in git ({text}); this cluster changes only through GitOps, so it is not applied directly: your GitOps tool applies it from git"
            )),
            DecisionLabel::GitOps,
        ),
    }
}

/// Denies and reverts a `wait: push` commit whose answer was never given: the request
/// was dropped while it waited for the push (the apiserver gave up on it, which
/// denies the write, or the server stopped). Disarmed once the answer is decided.
struct Unanswered<'a> {
    push: &'a PushHandle,
    store: &'a StoreHandle,
    change: Option<(manifest::Change, gix::hash::ObjectId, u64)>,
}

impl Unanswered<'_> {
    fn disarm(mut self) {
        self.change = None;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some((change, commit, ticket)) = self.change.take() else {
            return;
        };
        let commit = match self.push.outbox.deny(ticket) {
            Denial::Withheld { commit } | Denial::InFlight { commit } => commit,
            Denial::NotYet | Denial::Gone => commit,
        };
        tracing::error!(path = %change.path, %commit, "write dropped while waiting for its push; the apiserver denies it, so it is reverted");
        self.store.revert(
            change,
            commit,
            "The write's request ended before its push was confirmed (the apiserver gave up on it), so it was not applied.".to_owned(),
            Some(ticket),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_apiservers_timeout_minus_a_margin() {
        let start = Instant::now();
        let ten = Duration::from_secs(10);
        let half = Duration::from_millis(500);
        let cases = [
            (Some("timeout=10s"), Duration::from_millis(9_500)),
            (Some("timeout=2s"), Duration::from_millis(1_500)),
            (Some("timeout=1s"), Duration::from_millis(750)),
            (Some("a=b&timeout=4s"), Duration::from_millis(3_500)),
            (None, Duration::from_millis(9_500)),
            (Some("timeout=garbage"), Duration::from_millis(9_500)),
            // Absurd values neither overflow nor wait past the apiserver's own limit.
            (
                Some("timeout=3000000000000000h"),
                Duration::from_millis(29_500),
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(
                deadline(query, start, ten, half) - start,
                expected,
                "{query:?}"
            );
        }
    }
}
