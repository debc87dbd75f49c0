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
//! - Every review branch has a name of its own (the first write's admission uid is
//!   in it, sessions included), so a branch left behind never blocks a new review.
//! - Only branches kubescribe created are moved or deleted, each with a lease on
//!   the commit kubescribe last put there, and only while kubescribe's commit is
//!   their tip; nothing is ever force-pushed over a branch someone else wrote.
//! - What is open lives in git: the review branches (under the template's fixed
//!   prefix) on the remote and locally are the open reviews, and after a restart,
//!   even with a new local repository, each is looked up on the forge by its
//!   branch. Memory only caches it.
//! - A proposal that fails half-way is withdrawn, on the remote and locally, so the
//!   user, who is told it failed, finds nothing of it anywhere.

pub mod forge;
pub mod hook;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Branches found at start (or whose deletion failed) whose pull request is
    /// still to be looked up.
    unknown: Mutex<BTreeSet<String>>,
    /// Whether the remote's review branches were listed since the start.
    listed: std::sync::atomic::AtomicBool,
    /// Branches whose pull request is finished, to delete (a remote that failed).
    to_delete: Mutex<Vec<(String, ObjectId)>>,
    /// With `group: session`, one proposal at a time per user.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A forge webhook asks for a poll now.
    poke: tokio::sync::Notify,
    /// Branches being proposed right now, which recovery must not take for
    /// orphans.
    in_flight: Mutex<std::collections::HashSet<String>>,
}

/// Marks a branch as being proposed while it lives.
struct InFlight<'a> {
    set: &'a Mutex<std::collections::HashSet<String>>,
    branch: String,
}

impl<'a> InFlight<'a> {
    fn new(set: &'a Mutex<std::collections::HashSet<String>>, branch: &str) -> Self {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(branch.to_owned());
        Self {
            set,
            branch: branch.to_owned(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.branch);
    }
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
/// letters, digits, `.`, `_` and `-`, at most 64 of them, never starting with `.`
/// or `-` or ending with `.lock` or `.`, and no `..`. Different users may come out
/// the same; nothing relies on the name to tell users apart.
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
    // Cut first, then trim: a cut may end in `.` or `.lock`.
    let mut out: String = out.chars().take(64).collect();
    loop {
        let trimmed = out.trim_matches(['-', '.']);
        let trimmed = trimmed.strip_suffix(".lock").unwrap_or(trimmed);
        if trimmed.len() == out.len() {
            break;
        }
        out = trimmed.to_owned();
    }
    if out.is_empty() {
        "unknown".to_owned()
    } else {
        out
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

/// How old a review branch without a pull request must be before it is taken for
/// an orphan (a proposal that stopped half-way) and deleted: longer than any
/// proposal takes.
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// How long a proposal waits for the store: the proposal outlives the admission
/// answer (which says so when it is late), so this only bounds a stuck writer.
const STORE_PATIENCE: Duration = Duration::from_secs(60);

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
            listed: std::sync::atomic::AtomicBool::new(false),
            to_delete: Mutex::default(),
            turns: Mutex::default(),
            poke: tokio::sync::Notify::new(),
            in_flight: Mutex::default(),
        })
    }

    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The forge, whose way of signing webhooks is checked.
    pub fn forge(&self) -> Forge {
        self.config.forge
    }

    /// Whether the rule takes forge webhooks (`webhookSecretFile`).
    pub fn takes_webhooks(&self) -> bool {
        self.config.webhook_secret_file.is_some()
    }

    /// The forge webhook's secret, when the rule takes webhooks: `None` when it
    /// does not, `Some(Err)` when the file cannot be read.
    pub fn webhook_secret(&self) -> Option<Result<Vec<u8>, String>> {
        let path = self.config.webhook_secret_file.as_ref()?;
        Some(
            std::fs::read(path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|mut secret| {
                    while secret.last().is_some_and(u8::is_ascii_whitespace) {
                        secret.pop();
                    }
                    // An empty key is a signature anyone can make.
                    if secret.is_empty() {
                        Err(format!("{} is empty", path.display()))
                    } else {
                        Ok(secret)
                    }
                }),
        )
    }

    /// Polls at once (a forge webhook said something changed); pokes while a poll
    /// is due fold into it.
    pub fn poke(&self) {
        self.poke.notify_one();
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

    fn open(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_open(&self) {
        let open = self.open();
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

    /// With `group: session`, waits for the user's turn (one proposal at a time)
    /// and holds it while the guard lives.
    async fn turn(&self, user: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if self.config.group != Grouping::Session {
            return None;
        }
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user.to_owned())
            .or_default()
            .clone();
        Some(turn.lock_owned().await)
    }

    /// The user's open session: its branch and review.
    fn session_of(&self, user: &str) -> Option<(String, Open)> {
        if self.config.group != Grouping::Session {
            return None;
        }
        self.open()
            .iter()
            .find(|(_, open)| open.user == user)
            .map(|(branch, open)| (branch.clone(), open.clone()))
    }

    /// The branch `write` is proposed on: its user's open session's, or a new one.
    pub fn branch_of(&self, write: &Write) -> String {
        if let Some((branch, _)) = self.session_of(&write.user) {
            return branch;
        }
        // The template was checked at start; a user name cannot make it invalid
        // (ref_safe), so this falls back only defensively, under the same prefix.
        branch_name(
            &self.config.branch,
            &write.user,
            &short_id(&write.uid),
            &self.base,
        )
        .unwrap_or_else(|_| {
            format!(
                "{}{}",
                prefix(&self.config.branch).unwrap_or("kubescribe/"),
                short_id(&write.uid)
            )
        })
    }

    /// The other users' open reviews that change `path`: (user, URL).
    pub fn others_on(&self, path: &str, user: &str) -> Vec<(String, String)> {
        self.open()
            .values()
            .filter(|o| o.user != user && o.paths.contains(path))
            .map(|o| (o.user.clone(), o.url.clone()))
            .collect()
    }

    /// What every commit of this rule's reviews ends with: which rule, into which
    /// branch. Only a branch with it is taken for one of this rule's reviews.
    fn trailer(&self) -> String {
        format!("Kubescribe-Review: {} into {}", self.rule, self.base)
    }

    /// Proposes `change` (of `write`): commits it on the write's review branch,
    /// pushes that, and opens (or, in a session, adds to) its pull request. `base`
    /// is the object before the write, rendered as a file (for a session's merge);
    /// `warnings` are the answer's, for the description.
    pub async fn propose(
        self: Arc<Self>,
        write: Arc<Write>,
        change: Change,
        base: Option<Vec<u8>>,
        warnings: Vec<String>,
    ) -> Result<Proposal, ReviewError> {
        let _turn = self.turn(&write.user).await;
        let mut existing = self.session_of(&write.user);
        if let Some((branch, open)) = &existing {
            // The session's pull request may have been merged or closed since the
            // last poll: adding to it then would add to nothing.
            match self.still_open(open).await {
                Ok(Some(finished)) => {
                    self.forget_and_finish(branch, open.number, finished).await;
                    existing = None;
                }
                Ok(None) => {}
                Err(error) => return Err(ReviewError::Api(error)),
            }
        }
        let branch = match &existing {
            Some((branch, _)) => branch.clone(),
            None => self.branch_of(&write),
        };
        let mut existing = existing.map(|(_, open)| open);
        let _in_flight = InFlight::new(&self.in_flight, &branch);
        let path = change.path.to_string();
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
        let mut fetched = false;
        let (commit, previous) = loop {
            let (commit, previous) = match self
                .store
                .propose(
                    change.clone(),
                    &branch,
                    &self.trailer(),
                    base.clone(),
                    Instant::now() + STORE_PATIENCE,
                )
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
            match self
                .remote
                .push_branch(commit, &branch, previous, &options)
                .await
            {
                Ok(()) => break (commit, previous),
                // The session's branch moved on the remote (a reviewer pushed a
                // fixup to the pull request): build on what it has now, once.
                Err(PushError::Conflict { .. }) if previous.is_some() && !fetched => {
                    fetched = true;
                    self.withdraw_local(&branch, commit, previous).await;
                    if let Err(error) = self.remote.fetch_branch(&branch).await {
                        return Err(ReviewError::Push { branch, error });
                    }
                }
                // Refused: nothing landed.
                Err(
                    error @ (PushError::Conflict { .. }
                    | PushError::Rejected { .. }
                    | PushError::Auth { .. }
                    | PushError::HostKey { .. }
                    | PushError::Credentials { .. }),
                ) => {
                    self.withdraw_local(&branch, commit, previous).await;
                    return Err(ReviewError::Push { branch, error });
                }
                // The outcome is unknown (a timeout, a dropped connection): the
                // remote says whether it has the commit.
                Err(error) => {
                    if self.remote_has(&branch, commit).await == Ok(true) {
                        tracing::info!(%branch, %error, "the push's answer was lost, but the remote has it");
                        break (commit, previous);
                    }
                    // Taken back with a lease, which is safe whether it landed or not.
                    self.withdraw(&branch, commit, previous).await;
                    return Err(ReviewError::Push { branch, error });
                }
            }
        };
        if let Some(open) = &existing {
            // Merged or closed while the commit was being pushed: the commit is in
            // no pull request, so it gets a new one, from the same branch.
            match self.still_open(open).await {
                Ok(Some(finished)) => {
                    self.outcome(if finished.state == State::Merged {
                        "merged"
                    } else {
                        "closed"
                    });
                    existing = None;
                }
                Ok(None) => {}
                Err(error) => {
                    self.withdraw(&branch, commit, previous).await;
                    return Err(ReviewError::Api(error));
                }
            }
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
                Ok(Some(found)) if matches!(found.state, State::Open { .. }) => Ok(found),
                Ok(_) => Err(ApiError::Refused {
                    forge: "GitLab".to_owned(),
                    status: 404,
                    detail: format!(
                        "the push with merge_request.create opened no merge request for {branch} (check that the remote is GitLab and takes push options)"
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
                // Nobody can review a branch without a pull request, and the user
                // is told it failed: take it back everywhere.
                self.withdraw(&branch, commit, previous).await;
                return Err(ReviewError::Api(error));
            }
        };
        let added = existing.is_some();
        self.outcome(if added { "updated" } else { "opened" });
        {
            let mut open = self.open();
            let fresh = || Open {
                number: pull_request.number,
                url: pull_request.url.clone(),
                user: write.user.clone(),
                tip: commit,
                paths: BTreeSet::new(),
                since: Instant::now(),
                etag: None,
                conflicting: false,
            };
            let entry = open.entry(branch.clone()).or_insert_with(fresh);
            if entry.number != pull_request.number {
                // A new pull request from a session's branch.
                let paths = std::mem::take(&mut entry.paths);
                *entry = Open { paths, ..fresh() };
            }
            entry.tip = commit;
            entry.paths.insert(path);
        }
        self.count_open();
        tracing::info!(%branch, url = %pull_request.url, %commit, added, "proposed");
        Ok(Proposal::Opened {
            url: pull_request.url,
            branch,
            commit,
            added,
        })
    }

    /// `None` while `open`'s pull request is open; what it became otherwise.
    async fn still_open(&self, open: &Open) -> Result<Option<PullRequest>, ApiError> {
        match self.api.read(open.number, None).await {
            Ok(forge::Read::Changed(pull_request, _))
                if !matches!(pull_request.state, State::Open { .. }) =>
            {
                Ok(Some(pull_request))
            }
            Ok(forge::Read::Gone) => Ok(Some(gone(open))),
            Ok(_) => Ok(None),
            Err(error) => {
                self.api_error(&error);
                Err(error)
            }
        }
    }

    /// Whether the remote's `branch` is at `commit`.
    async fn remote_has(&self, branch: &str, commit: ObjectId) -> Result<bool, PushError> {
        let found = self.remote.branches_under(branch).await?;
        Ok(found.iter().any(|(b, tip)| b == branch && *tip == commit))
    }

    /// Puts the local review branch back where it was before `commit`.
    async fn withdraw_local(&self, branch: &str, commit: ObjectId, previous: Option<ObjectId>) {
        if let Err(e) = self.store.move_review(branch, commit, previous).await {
            tracing::warn!(%branch, error = %e, "cannot withdraw a local review commit");
        }
    }

    /// Takes `commit` back from the remote's and the local `branch`.
    async fn withdraw(&self, branch: &str, commit: ObjectId, previous: Option<ObjectId>) {
        let undone = match previous {
            None => self.remote.delete_branch(branch, commit).await,
            Some(previous) => {
                self.remote
                    .push_branch(previous, branch, Some(commit), &[])
                    .await
            }
        };
        if let Err(e) = undone {
            tracing::warn!(%branch, error = %e, advice = e.advice(), "cannot take a failed proposal back from the remote; its branch has a commit nobody reviews: delete it by hand");
        }
        self.withdraw_local(branch, commit, previous).await;
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

    /// Finds the reviews left open by an earlier run: the review branches of the
    /// local repository and of the remote (a new local repository has none), each
    /// looked up on the forge by its branch.
    pub async fn recover(&self) {
        let Some(prefix) = prefix(&self.config.branch).map(str::to_owned) else {
            return;
        };
        let store = self.store.clone();
        let under = prefix.clone();
        match tokio::task::spawn_blocking(move || store.branches_under(&under)).await {
            Ok(Ok(local)) => self
                .unknown_lock()
                .extend(local.into_iter().map(|(b, _)| b)),
            Ok(Err(e)) => {
                tracing::warn!(rule = %self.rule, error = %e, "cannot list the local review branches")
            }
            Err(_) => return,
        }
        self.list_remote(&prefix).await;
        self.look_up_unknown().await;
    }

    fn unknown_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.unknown.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the remote's review branches the local repository lacks home.
    async fn list_remote(&self, prefix: &str) {
        match self.remote.branches_under(prefix).await {
            Ok(remote) => {
                for (branch, _) in remote {
                    if let Err(e) = self.remote.fetch_branch(&branch).await {
                        tracing::warn!(rule = %self.rule, %branch, error = %e, "cannot fetch a review branch");
                        continue;
                    }
                    self.unknown_lock().insert(branch);
                }
                self.listed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(rule = %self.rule, error = %e, advice = e.advice(), "cannot list the remote's review branches; trying again at the next poll")
            }
        }
    }

    /// The local tip of `branch`, if it has one.
    async fn local_tip(&self, branch: &str) -> Option<ObjectId> {
        let name = format!("refs/heads/{branch}");
        self.remote
            .read_local(&[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &name,
            ])
            .await
            .ok()
            .and_then(|out| out.trim().parse().ok())
    }

    async fn look_up_unknown(&self) {
        let unknown = std::mem::take(&mut *self.unknown_lock());
        let mut left = Vec::new();
        for branch in unknown {
            let busy = self.open().contains_key(&branch)
                || self
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&branch);
            if busy || branch == self.base {
                continue;
            }
            let Some(tip) = self.local_tip(&branch).await else {
                continue;
            };
            let Some(facts) = self.branch_facts(&branch).await else {
                tracing::debug!(rule = %self.rule, %branch, "not one of this rule's review branches");
                continue;
            };
            match self.api.find(&branch, &self.base).await {
                Ok(Some(pull_request)) => match pull_request.state {
                    State::Open { conflicting } => {
                        let (user, paths) = facts;
                        self.open().entry(branch.clone()).or_insert(Open {
                            number: pull_request.number,
                            url: pull_request.url,
                            user,
                            tip,
                            paths,
                            since: Instant::now(),
                            etag: None,
                            conflicting,
                        });
                        self.count_open();
                        tracing::info!(rule = %self.rule, %branch, "following an open review from before the restart");
                    }
                    _ => self.finished(&branch, tip, &pull_request).await,
                },
                Ok(None) if self.age(tip).await < ORPHAN_GRACE => {
                    // Perhaps still being proposed (by another process): look again
                    // later.
                    left.push(branch);
                }
                Ok(None) => {
                    // Pushed, but the pull request was never opened (the process
                    // stopped in between): nobody was told of it.
                    tracing::info!(rule = %self.rule, %branch, "a review branch without a pull request; deleting it");
                    self.delete(&branch, tip).await;
                }
                Err(error) => {
                    self.api_error(&error);
                    left.push(branch);
                }
            }
        }
        self.unknown_lock().extend(left);
        self.count_open();
    }

    /// How long ago `commit` was made.
    async fn age(&self, commit: ObjectId) -> Duration {
        let hex = commit.to_string();
        let made = self
            .remote
            .read_local(&["log", "-1", "--format=%ct", "--end-of-options", &hex])
            .await
            .ok()
            .and_then(|out| out.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Duration::from_secs(now.saturating_sub(made))
    }

    /// Of one of this rule's review branches (a commit of it says so in its
    /// trailer): the user who proposed it (the `Kubernetes-User` of its first such
    /// commit) and the files it changes. `None` for any other branch.
    async fn branch_facts(&self, branch: &str) -> Option<(String, BTreeSet<String>)> {
        let head = format!("refs/heads/{branch}");
        let log = self
            .remote
            .read_local(&[
                "log",
                "--max-count=500",
                "--format=%(trailers:key=Kubescribe-Review,valueonly,separator=%x2C)%x00%(trailers:key=Kubernetes-User,valueonly,separator=%x2C)",
                "--end-of-options",
                &head,
            ])
            .await
            .ok()?;
        let ours = self.trailer();
        let ours = ours.trim_start_matches("Kubescribe-Review: ");
        // Newest first: the last of ours is the first write.
        let user = log
            .lines()
            .filter_map(|line| line.split_once('\0'))
            .rfind(|(review, _)| review.trim() == ours)
            .map(|(_, user)| user.trim().to_owned())?;
        let range = format!("refs/heads/{}...{head}", self.base);
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
        Some((user, paths))
    }

    /// Forgets `branch`'s review `number` (so a session's next write starts anew)
    /// and finishes it; nothing when the branch has another review by now.
    async fn forget_and_finish(&self, branch: &str, number: u64, pull_request: PullRequest) {
        let forgotten = {
            let mut open = self.open();
            match open.get(branch) {
                Some(entry) if entry.number == number => open.remove(branch),
                _ => None,
            }
        };
        self.count_open();
        if let Some(open) = forgotten {
            self.finished(branch, open.tip, &pull_request).await;
        }
    }

    /// A merged or closed review: delete its branch (a closed one only with
    /// `deleteClosedBranches`; the local one always).
    async fn finished(&self, branch: &str, tip: ObjectId, pull_request: &PullRequest) {
        let merged = pull_request.state == State::Merged;
        self.outcome(if merged { "merged" } else { "closed" });
        tracing::info!(rule = %self.rule, %branch, url = %pull_request.url, merged, "review finished");
        if merged && pull_request.head.is_some_and(|head| head != tip) {
            // A session's write landed on the branch after the merge: it is not in
            // the merged change, and its branch is the only place it is in.
            tracing::error!(rule = %self.rule, %branch, url = %pull_request.url, "the branch has commits the merged pull request does not; kept for a person to propose again");
            return;
        }
        if merged || self.config.delete_closed_branches {
            self.delete(branch, tip).await;
        } else {
            self.withdraw_local(branch, tip, None).await;
        }
    }

    /// Deletes review branch `branch` on the remote and locally, if `tip` is still
    /// its tip and is kubescribe's commit of this rule's review (a person's commit
    /// on it makes the branch theirs).
    async fn delete(&self, branch: &str, tip: ObjectId) {
        let hex = tip.to_string();
        let made = self
            .remote
            .read_local(&[
                "log",
                "-1",
                "--format=%ce%x00%(trailers:key=Kubescribe-Review,valueonly)",
                "--end-of-options",
                &hex,
            ])
            .await
            .unwrap_or_default();
        let (committer, review) = made.split_once('\0').unwrap_or_default();
        let ours = self.trailer();
        if committer.trim() != self.store.committer_email()
            || review.trim() != ours.trim_start_matches("Kubescribe-Review: ")
        {
            tracing::info!(rule = %self.rule, %branch, "the review branch's last commit is not kubescribe's; left as it is");
            self.withdraw_local(branch, tip, None).await;
            return;
        }
        match self.remote.delete_branch(branch, tip).await {
            Ok(()) => self.withdraw_local(branch, tip, None).await,
            Err(e @ PushError::Conflict { .. }) => {
                tracing::info!(rule = %self.rule, %branch, error = %e, "the review branch moved on the remote; left to whoever moved it");
                self.withdraw_local(branch, tip, None).await;
            }
            Err(e @ PushError::Rejected { .. }) => {
                tracing::warn!(rule = %self.rule, %branch, error = %e, advice = e.advice(), "the remote refuses to delete the review branch; delete it by hand");
                self.withdraw_local(branch, tip, None).await;
            }
            Err(e) => {
                tracing::warn!(rule = %self.rule, %branch, error = %e, advice = e.advice(), "cannot delete the review branch on the remote; trying again at the next poll");
                self.to_delete
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((branch.to_owned(), tip));
            }
        }
    }

    /// Looks at every open review once.
    pub async fn poll(&self) {
        let retry = std::mem::take(&mut *self.to_delete.lock().unwrap_or_else(|e| e.into_inner()));
        for (branch, tip) in retry {
            self.delete(&branch, tip).await;
        }
        if !self.listed.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(prefix) = prefix(&self.config.branch).map(str::to_owned) {
                self.list_remote(&prefix).await;
            }
        }
        if !self.unknown_lock().is_empty() {
            self.look_up_unknown().await;
        }
        let open: Vec<(String, Open)> = self
            .open()
            .iter()
            .map(|(b, o)| (b.clone(), o.clone()))
            .collect();
        for (branch, review) in open {
            let finished = match self.api.read(review.number, review.etag.as_deref()).await {
                Ok(forge::Read::Unchanged) => None,
                Ok(forge::Read::Changed(pull_request, etag)) => match pull_request.state {
                    State::Open { conflicting } => {
                        if conflicting && !review.conflicting {
                            tracing::warn!(rule = %self.rule, %branch, url = %review.url, "the pull request conflicts with its branch; resolve it on the forge, or close it and write again");
                        }
                        if let Some(entry) = self
                            .open()
                            .get_mut(&branch)
                            .filter(|e| e.number == review.number)
                        {
                            entry.etag = etag;
                            entry.conflicting = conflicting;
                        }
                        None
                    }
                    _ => Some(pull_request),
                },
                Ok(forge::Read::Gone) => {
                    tracing::warn!(rule = %self.rule, %branch, url = %review.url, "the pull request was deleted on the forge");
                    Some(gone(&review))
                }
                Err(error) => {
                    self.api_error(&error);
                    tracing::warn!(rule = %self.rule, %branch, %error, advice = error.advice(), "cannot read the pull request");
                    if matches!(error, ApiError::RateLimited { .. }) {
                        break;
                    }
                    None
                }
            };
            if let Some(pull_request) = finished {
                // Not while a session's write is being added to it.
                let _turn = self.turn(&review.user).await;
                self.forget_and_finish(&branch, review.number, pull_request)
                    .await;
            }
        }
        self.count_open();
    }

    /// Follows the open reviews every `pollInterval`, until the task is aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            self.recover().await;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = self.poke.notified() => {}
                }
                self.poll().await;
            }
        })
    }
}

/// A deleted pull request, as a closed one.
fn gone(open: &Open) -> PullRequest {
    PullRequest {
        number: open.number,
        url: open.url.clone(),
        state: State::Closed,
        head: None,
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
