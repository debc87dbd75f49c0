//! Reviews: a rule's writes proposed as pull requests (GitLab: merge requests)
//! against its branch instead of committed to it (issue 16).
//!
//! A write under a `review` rule is committed by the store on a review branch of
//! its own ([`crate::store::StoreHandle::propose`]), pushed there with a lease, and
//! a pull request is opened from it; the write is denied with the pull request's
//! URL, and the GitOps tool applies the change once a person merges it. The
//! reviewer then follows each open pull request (conditional reads) until it is
//! merged or closed, and deletes the branches it created.
//!
//! Invariants:
//! - The rule's branch, its outbox and its pusher never see a review commit.
//! - Only branches kubescribe created are moved or deleted, each with a lease on
//!   the commit kubescribe last put there; nothing is ever force-pushed over a
//!   branch someone else wrote.
//! - What is open lives in git: the local review branches (under the template's
//!   fixed prefix) are the open reviews, and after a restart each is looked up on
//!   the forge by its branch. Memory only caches it.
//! - A proposal that fails half-way is withdrawn: the local branch goes back, and a
//!   branch pushed without a pull request is deleted, so no orphan is left.

pub mod forge;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gix::hash::ObjectId;

use crate::config::{Forge, Grouping, OpenWith, ReviewConfig};
use crate::manifest::Change;
use crate::metrics::{Metrics, RuleLabels, RuleOutcomeLabels, RuleReasonLabels};
use crate::policy::Write;
use crate::push::{PushError, Remote};
use crate::store::{Proposed, StoreError, StoreHandle};

pub use forge::{ApiError, ForgeApi, PullRequest, State};

/// Why a write could not be proposed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{0}; {advice}", advice = .0.advice())]
    Store(StoreError),
    #[error("{0}")]
    Refused(String),
    #[error("pushing the review branch {branch} failed: {error}; {advice}", advice = .error.advice())]
    Push { branch: String, error: PushError },
    #[error("opening the pull request failed: {0}; {advice}", advice = .0.advice())]
    Api(ApiError),
}

/// What became of a proposed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// On `branch` at `commit`, in the pull request at `url`; `added` when a
    /// session's pull request was open already.
    Opened {
        url: String,
        branch: String,
        commit: ObjectId,
        added: bool,
    },
    /// The branch (a session's, or the rule's) already has this; `url` is the
    /// session's pull request, if one is open.
    Unchanged { url: Option<String> },
}

/// One open review, as the reviewer follows it.
#[derive(Debug, Clone)]
struct Open {
    number: u64,
    url: String,
    user: String,
    /// What kubescribe last put on the branch.
    tip: ObjectId,
    paths: BTreeSet<String>,
    since: Instant,
    etag: Option<String>,
    conflicting: bool,
}

/// The reviews of one rule.
pub struct Reviewer {
    rule: String,
    config: ReviewConfig,
    /// The rule's branch, which pull requests go into.
    base: String,
    api: ForgeApi,
    remote: Remote,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    /// By branch.
    open: Mutex<BTreeMap<String, Open>>,
    /// Branches found at start whose pull request could not be looked up yet.
    unknown: Mutex<Vec<(String, ObjectId)>>,
    /// One proposal at a time per session branch.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// `{user}`, `{id}` and `{branch}` of `template` filled in, each made safe for a
/// ref name; `Err` when the result is not a valid branch name.
pub fn branch_name(template: &str, user: &str, id: &str, branch: &str) -> Result<String, String> {
    let name = template
        .replace("{user}", &ref_safe(user))
        .replace("{id}", &ref_safe(id))
        .replace("{branch}", &ref_safe(branch));
    if name.contains(['{', '}']) {
        return Err(format!(
            "branch {template:?}: only {{user}}, {{id}} and {{branch}} can be filled in"
        ));
    }
    if gix::refs::FullName::try_from(format!("refs/heads/{name}")).is_err() {
        return Err(format!(
            "branch {template:?} gives {name:?}, not a valid branch name"
        ));
    }
    match prefix(template) {
        Some(_) => Ok(name),
        None => Err(format!(
            "branch {template:?} must start with a fixed directory (`kubescribe/`) before any {{…}}, so kubescribe knows its branches after a restart"
        )),
    }
}

/// The fixed directory review branches of `template` live under (`kubescribe/`).
pub fn prefix(template: &str) -> Option<&str> {
    let fixed = &template[..template.find('{').unwrap_or(template.len())];
    let end = fixed.rfind('/')?;
    Some(&template[..=end]).filter(|p| p.len() > 1)
}

/// `system:serviceaccount:ci:deployer` → `system-serviceaccount-ci-deployer`: only
/// letters, digits, `.`, `_` and `-`, never starting with `.` or `-` or ending with
/// `.lock` or `.`, and no `..`.
fn ref_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let keep = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let c = if keep { c } else { '-' };
        if (c == '-' && out.ends_with('-')) || (c == '.' && out.ends_with('.')) {
            continue;
        }
        out.push(c);
    }
    let mut out = out.trim_matches(['-', '.']).to_owned();
    while out.ends_with(".lock") {
        out.truncate(out.len() - ".lock".len());
    }
    if out.is_empty() {
        "unknown".to_owned()
    } else {
        out.chars().take(64).collect()
    }
}

/// The first 8 characters of the admission uid, without dashes.
fn short_id(uid: &str) -> String {
    let id: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    if id.is_empty() {
        "write".to_owned()
    } else {
        id
    }
}

/// The longest diff put in a pull request's description (GitHub takes 65,536
/// characters in all).
const DIFF_SHOWN: usize = 48 * 1024;

impl Reviewer {
    pub fn new(
        rule: String,
        config: ReviewConfig,
        remote: Remote,
        store: StoreHandle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        let api = ForgeApi::new(&config)?;
        metrics
            .reviews
            .open
            .get_or_create(&RuleLabels { rule: rule.clone() })
            .set(0);
        Ok(Self {
            base: remote.branch.clone(),
            rule,
            config,
            api,
            remote,
            store,
            metrics,
            open: Mutex::default(),
            unknown: Mutex::default(),
            sessions: Mutex::default(),
        })
    }

    pub fn rule(&self) -> &str {
        &self.rule
    }

    fn outcome(&self, outcome: &'static str) {
        self.metrics
            .reviews
            .outcomes
            .get_or_create(&RuleOutcomeLabels {
                rule: self.rule.clone(),
                outcome,
            })
            .inc();
    }

    fn api_error(&self, error: &ApiError) {
        self.metrics
            .reviews
            .api_errors
            .get_or_create(&RuleReasonLabels {
                rule: self.rule.clone(),
                reason: error.label(),
            })
            .inc();
    }

    fn open_count(&self, open: &BTreeMap<String, Open>) {
        let labels = RuleLabels {
            rule: self.rule.clone(),
        };
        let reviews = &self.metrics.reviews;
        reviews.open.get_or_create(&labels).set(open.len() as i64);
        reviews
            .conflicting
            .get_or_create(&labels)
            .set(open.values().filter(|o| o.conflicting).count() as i64);
        let oldest = open
            .values()
            .map(|o| o.since.elapsed().as_secs_f64())
            .fold(0.0, f64::max);
        reviews.oldest_seconds.get_or_create(&labels).set(oldest);
    }

    /// The review branch of `write`.
    pub fn branch_of(&self, write: &Write) -> String {
        let id = match self.config.group {
            Grouping::Write => short_id(&write.uid),
            Grouping::Session => "session".to_owned(),
        };
        // The template was checked at start with a sample; a user name cannot
        // make it invalid (ref_safe), so this falls back only defensively.
        branch_name(&self.config.branch, &write.user, &id, &self.base)
            .unwrap_or_else(|_| format!("kubescribe/{}", short_id(&write.uid)))
    }

    /// The other users' open reviews that change `path`: (user, URL).
    pub fn others_on(&self, path: &str, user: &str) -> Vec<(String, String)> {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|o| o.user != user && o.paths.contains(path))
            .map(|o| (o.user.clone(), o.url.clone()))
            .collect()
    }

    /// Proposes `change` (of `write`): commits it on the write's review branch,
    /// pushes that, and opens (or, in a session, adds to) its pull request.
    /// `warnings` are the answer's, for the description.
    pub async fn propose(
        self: Arc<Self>,
        write: Arc<Write>,
        change: Change,
        warnings: Vec<String>,
        deadline: Instant,
    ) -> Result<Proposal, ReviewError> {
        let branch = self.branch_of(&write);
        let session = self.session_lock(&branch);
        let _turn = match &session {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut existing = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&branch)
            .cloned();
        if let Some(open) = &existing {
            // A session's pull request may have been merged or closed since the
            // last poll: adding to it then would add to nothing.
            match self.api.read(open.number, None).await {
                Ok(forge::Read::Changed(pull_request, _))
                    if !matches!(pull_request.state, State::Open { .. }) =>
                {
                    self.forget_and_finish(&branch, pull_request).await;
                    existing = None;
                }
                Ok(_) => {}
                Err(error) => {
                    self.api_error(&error);
                    return Err(ReviewError::Api(error));
                }
            }
        }
        let path = change.path.to_string();
        let (commit, previous) = match self
            .store
            .propose(change.clone(), &branch, deadline)
            .await
            .map_err(ReviewError::Store)?
        {
            Proposed::Committed { commit, previous } => (commit, previous),
            Proposed::Unchanged => {
                return Ok(Proposal::Unchanged {
                    url: existing.map(|o| o.url),
                })
            }
            Proposed::Refused { reason } => return Err(ReviewError::Refused(reason)),
        };
        let opens_by_push = self.config.open_with == OpenWith::PushOptions && existing.is_none();
        let options = if opens_by_push {
            vec![
                "merge_request.create".to_owned(),
                format!("merge_request.target={}", self.base),
                format!("merge_request.title={}", title(&write, &change)),
                "merge_request.remove_source_branch".to_owned(),
            ]
        } else {
            Vec::new()
        };
        if let Err(error) = self
            .remote
            .push_branch(commit, &branch, previous, &options)
            .await
        {
            self.withdraw_local(&branch, commit, previous).await;
            return Err(ReviewError::Push { branch, error });
        }
        let pull_request = match &existing {
            Some(open) => Ok(PullRequest {
                number: open.number,
                url: open.url.clone(),
                state: State::Open {
                    conflicting: open.conflicting,
                },
                head: None,
            }),
            None if opens_by_push => match self.api.find(&branch, &self.base).await {
                Ok(Some(found)) => Ok(found),
                Ok(None) => Err(ApiError::Refused {
                    forge: "GitLab".to_owned(),
                    status: 404,
                    detail: format!(
                        "the push with merge_request.create did not open a merge request for {branch}"
                    ),
                }),
                Err(e) => Err(e),
            },
            None => {
                let diff = self.diff(commit).await;
                let body = description(&write, &change, &self.base, &diff, &warnings);
                self.api
                    .open(&branch, &self.base, &title(&write, &change), &body)
                    .await
            }
        };
        let pull_request = match pull_request {
            Ok(pull_request) => pull_request,
            Err(error) => {
                self.api_error(&error);
                if previous.is_none() {
                    // Nobody can review a branch without a pull request.
                    if let Err(e) = self.remote.delete_branch(&branch, commit).await {
                        tracing::warn!(%branch, error = %e, "cannot delete a review branch whose pull request failed; delete it by hand");
                    }
                    self.withdraw_local(&branch, commit, previous).await;
                }
                return Err(ReviewError::Api(error));
            }
        };
        let added = existing.is_some();
        self.outcome(if added { "updated" } else { "opened" });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let entry = open.entry(branch.clone()).or_insert_with(|| Open {
            number: pull_request.number,
            url: pull_request.url.clone(),
            user: write.user.clone(),
            tip: commit,
            paths: BTreeSet::new(),
            since: Instant::now(),
            etag: None,
            conflicting: false,
        });
        entry.tip = commit;
        entry.paths.insert(path);
        self.open_count(&open);
        tracing::info!(%branch, url = %pull_request.url, %commit, added, "proposed");
        Ok(Proposal::Opened {
            url: pull_request.url,
            branch,
            commit,
            added,
        })
    }

    /// Puts the local review branch back where it was before `commit`.
    async fn withdraw_local(&self, branch: &str, commit: ObjectId, previous: Option<ObjectId>) {
        if let Err(e) = self.store.move_review(branch, commit, previous).await {
            tracing::warn!(%branch, error = %e, "cannot withdraw a local review commit; it is proposed again with the next write to the branch");
        }
    }

    /// The commit's change, as `git show` prints it.
    async fn diff(&self, commit: ObjectId) -> String {
        let hex = commit.to_string();
        match self
            .remote
            .read_local(&[
                "show",
                "--no-color",
                "--no-ext-diff",
                "--format=",
                "--end-of-options",
                &hex,
            ])
            .await
        {
            Ok(diff) if diff.len() > DIFF_SHOWN => {
                let mut at = DIFF_SHOWN;
                while !diff.is_char_boundary(at) {
                    at -= 1;
                }
                format!(
                    "{}\n… (cut; the branch has the whole change)\n",
                    &diff[..at]
                )
            }
            Ok(diff) => diff,
            Err(e) => format!("(cannot show the diff: {e})\n"),
        }
    }

    /// Finds the reviews left open by an earlier run: every local branch under the
    /// template's prefix, looked up on the forge by its branch.
    pub async fn recover(&self) {
        let Some(prefix) = prefix(&self.config.branch).map(str::to_owned) else {
            return;
        };
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || store.branches_under(&prefix)).await;
        let branches = match found {
            Ok(Ok(branches)) => branches,
            Ok(Err(e)) => {
                tracing::warn!(rule = %self.rule, error = %e, "cannot list the review branches; open reviews are not followed until the next start");
                return;
            }
            Err(_) => return,
        };
        *self.unknown.lock().unwrap_or_else(|e| e.into_inner()) = branches;
        self.look_up_unknown().await;
    }

    async fn look_up_unknown(&self) {
        let unknown = std::mem::take(&mut *self.unknown.lock().unwrap_or_else(|e| e.into_inner()));
        let mut left = Vec::new();
        for (branch, tip) in unknown {
            match self.api.find(&branch, &self.base).await {
                Ok(Some(pull_request)) => match pull_request.state {
                    State::Open { conflicting } => {
                        let (user, paths) = self.branch_facts(&branch).await;
                        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                        open.insert(
                            branch.clone(),
                            Open {
                                number: pull_request.number,
                                url: pull_request.url,
                                user,
                                tip,
                                paths,
                                since: Instant::now(),
                                etag: None,
                                conflicting,
                            },
                        );
                        self.open_count(&open);
                        tracing::info!(rule = %self.rule, %branch, "following an open review from before the restart");
                    }
                    _ => self.finished(&branch, tip, &pull_request).await,
                },
                Ok(None) => {
                    // Pushed, but the pull request was never opened (the process
                    // stopped in between): nobody was told of it.
                    tracing::info!(rule = %self.rule, %branch, "a review branch without a pull request; deleting it");
                    self.delete(&branch, tip).await;
                }
                Err(error) => {
                    self.api_error(&error);
                    left.push((branch, tip));
                }
            }
        }
        self.unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(left);
    }

    /// The user who proposed `branch` and the files it changes.
    async fn branch_facts(&self, branch: &str) -> (String, BTreeSet<String>) {
        let range = format!("refs/heads/{}...refs/heads/{branch}", self.base);
        let paths = self
            .remote
            .read_local(&[
                "diff",
                "--name-only",
                "--no-renames",
                "--end-of-options",
                &range,
            ])
            .await
            .map(|out| out.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let head = format!("refs/heads/{branch}");
        let user = self
            .remote
            .read_local(&["log", "-1", "--format=%an", "--end-of-options", &head])
            .await
            .map(|out| out.trim().to_owned())
            .unwrap_or_default();
        (user, paths)
    }

    /// Forgets `branch`'s review (so a session's next write starts anew) and
    /// finishes it.
    async fn forget_and_finish(&self, branch: &str, pull_request: PullRequest) {
        let forgotten = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(branch);
        if let Some(open) = forgotten {
            self.finished(branch, open.tip, &pull_request).await;
        }
    }

    fn session_lock(&self, branch: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        (self.config.group == Grouping::Session).then(|| {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(branch.to_owned())
                .or_default()
                .clone()
        })
    }

    /// A merged or closed review: forget it, and delete its branch (a closed one
    /// only with `deleteClosedBranches`; the local one always, so a session starts
    /// afresh).
    async fn finished(&self, branch: &str, tip: ObjectId, pull_request: &PullRequest) {
        let merged = pull_request.state == State::Merged;
        self.outcome(if merged { "merged" } else { "closed" });
        tracing::info!(rule = %self.rule, %branch, url = %pull_request.url, merged, "review finished");
        if merged && pull_request.head.is_some_and(|head| head != tip) {
            // A session's write landed on the branch after the merge: it is not
            // in the merged change, and its branch is the only place it is in.
            tracing::error!(rule = %self.rule, %branch, url = %pull_request.url, "the branch has commits the merged pull request does not; kept for a person to propose again");
            return;
        }
        if merged || self.config.delete_closed_branches {
            self.delete(branch, tip).await;
        } else if let Err(e) = self.store.move_review(branch, tip, None).await {
            tracing::warn!(%branch, error = %e, "cannot delete the local review branch");
        }
    }

    async fn delete(&self, branch: &str, tip: ObjectId) {
        if let Err(e) = self.remote.delete_branch(branch, tip).await {
            tracing::warn!(rule = %self.rule, %branch, error = %e, advice = e.advice(), "cannot delete the review branch on the remote (it moved, or the remote refused); left as it is");
        }
        if let Err(e) = self.store.move_review(branch, tip, None).await {
            tracing::warn!(%branch, error = %e, "cannot delete the local review branch");
        }
    }

    /// Looks at every open review once.
    pub async fn poll(&self) {
        if !self
            .unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.look_up_unknown().await;
        }
        let open: Vec<(String, Open)> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(b, o)| (b.clone(), o.clone()))
            .collect();
        for (branch, review) in open {
            match self.api.read(review.number, review.etag.as_deref()).await {
                Ok(forge::Read::Unchanged) => {}
                Ok(forge::Read::Changed(pull_request, etag)) => match pull_request.state {
                    State::Open { conflicting } => {
                        if conflicting && !review.conflicting {
                            tracing::warn!(rule = %self.rule, %branch, url = %review.url, "the pull request conflicts with its branch; resolve it on the forge, or close it and write again");
                        }
                        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(entry) = open.get_mut(&branch) {
                            entry.etag = etag;
                            entry.conflicting = conflicting;
                        }
                    }
                    _ => {
                        // Not while a session's write is being added to it.
                        let session = self.session_lock(&branch);
                        let _turn = match &session {
                            Some(lock) => Some(lock.lock().await),
                            None => None,
                        };
                        self.forget_and_finish(&branch, pull_request).await;
                    }
                },
                Err(error) => {
                    self.api_error(&error);
                    tracing::warn!(rule = %self.rule, %branch, %error, advice = error.advice(), "cannot read the pull request");
                    if matches!(error, ApiError::RateLimited { .. }) {
                        break;
                    }
                }
            }
        }
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        self.open_count(&open);
    }

    /// Follows the open reviews every `pollInterval`, until the task is aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            self.recover().await;
            loop {
                tokio::time::sleep(self.config.poll_interval).await;
                self.poll().await;
            }
        })
    }

    /// The forge, for messages.
    pub fn forge(&self) -> Forge {
        self.config.forge
    }
}

/// `alice: update Deployment team-a/web`.
fn title(write: &Write, change: &Change) -> String {
    let title = format!(
        "{}: {} {} {}",
        write.user,
        change.verb.as_str(),
        change.kind,
        change.object_ref()
    );
    title.replace(['\n', '\r'], " ").chars().take(200).collect()
}

/// What a reviewer reads: who asked for what, where, the change itself, and what
/// kubescribe warned about.
fn description(
    write: &Write,
    change: &Change,
    base: &str,
    diff: &str,
    warnings: &[String],
) -> String {
    let code = |text: &str| text.replace('`', "'").replace(['\n', '\r'], " ");
    let mut body = format!(
        "`{user}` asked the Kubernetes API to {verb} {kind} `{object}`.\n\n\
         kubescribe denied the write and proposes it here instead: the cluster changes once this is merged into `{base}` and the GitOps tool applies it.\n\n\
         | | |\n|---|---|\n\
         | user | `{user}` |\n\
         | groups | `{groups}` |\n\
         | file | `{path}` |\n\
         | admission uid | `{uid}` |\n",
        user = code(&write.user),
        verb = change.verb.as_str(),
        kind = code(&change.kind),
        object = code(&change.object_ref()),
        groups = code(&write.groups.join(", ")),
        path = code(change.path.as_str()),
        uid = code(&write.uid),
    );
    if !warnings.is_empty() {
        body.push_str("\nWarnings kubescribe gave the write:\n\n");
        for warning in warnings {
            body.push_str(&format!("- {}\n", warning.replace(['\n', '\r'], " ")));
        }
    }
    // A fence longer than any run of backticks in the diff.
    let longest = diff.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    body.push_str(&format!("\n{fence}diff\n{diff}{fence}\n"));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_safe_refs_under_a_fixed_prefix() {
        let name = |user: &str, id: &str| branch_name("kubescribe/{user}/{id}", user, id, "main");
        assert_eq!(
            name("alice", "0a1b2c3d").unwrap(),
            "kubescribe/alice/0a1b2c3d"
        );
        assert_eq!(
            name("system:serviceaccount:ci:deployer", "x").unwrap(),
            "kubescribe/system-serviceaccount-ci-deployer/x"
        );
        assert_eq!(
            name("bob@example.com", "x").unwrap(),
            "kubescribe/bob-example.com/x"
        );
        assert_eq!(name("..a..b.lock", "x").unwrap(), "kubescribe/a.b/x");
        assert_eq!(name("@{-1}", "x").unwrap(), "kubescribe/1/x");
        assert_eq!(name("", "x").unwrap(), "kubescribe/unknown/x");
        assert!(branch_name("{user}/{id}", "a", "b", "main").is_err());
        assert!(branch_name("kubescribe/{who}", "a", "b", "main").is_err());
        assert_eq!(prefix("kubescribe/{user}/{id}"), Some("kubescribe/"));
        assert_eq!(
            prefix("reviews/kubescribe/{user}"),
            Some("reviews/kubescribe/")
        );
        assert_eq!(short_id("8f1c-22aa-44"), "8f1c22aa");
    }

    #[test]
    fn a_description_fences_the_diff_whatever_it_holds() {
        let fence = "````";
        let diff = "+ a: ```b```\n";
        let longest = diff.split(|c| c != '`').map(str::len).max().unwrap();
        assert_eq!("`".repeat(longest.max(2) + 1), fence);
    }
}
