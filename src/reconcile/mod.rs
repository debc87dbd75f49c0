//! Reconcile: make git equal to what the cluster really persisted.
//!
//! Admission sees attempts; this module sees what landed. At start it lists every
//! recorded resource and writes what git lacks (the snapshot), prunes files with no
//! live object where a rule says so, then watches each resource from its list and
//! commits the changes that never went through admission. Admitted changes wait in
//! [`Confirmations`] until the watch shows them; one that never shows is read back
//! and, if the cluster never persisted it, reverted. Discovery runs again on an
//! interval, so CRDs added later are listed and watched too.
//!
//! Invariants: a resource is reconciled exactly when a write to it would be recorded
//! by some rule ([`crate::policy::Policy::records_resource`]), so admission and
//! reconcile never disagree on what belongs in git. Every reconcile commit is
//! authored by kubescribe and says why in a `Kubescribe-Reconcile` trailer; the real
//! author stays on admission's commits. One page of objects is in memory at a time.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod cleanup;
mod confirm;
mod watch;

use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};

pub use confirm::{Confirmations, Observed, Pending};

use kube_core::admission::Operation;

use crate::manifest::{Action, Change, Layout};
use crate::metrics::Metrics;
use crate::store::{Outcome, StoreHandle};

use crate::policy::Policy;

/// Talking to the Kubernetes API failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(String),
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error("listing {resource} failed: {reason}")]
    List { resource: String, reason: String },
    #[error("cannot write the snapshot: {0}")]
    Store(String),
    /// 403: kubescribe's RBAC does not allow it.
    #[error("kubescribe may not list {resource} (403 Forbidden): grant get, list and watch on it")]
    Forbidden { resource: String },
    /// 410 Gone: the watch's resourceVersion is too old; list again.
    #[error("the watch of {resource} expired (410 Gone): relist")]
    Expired { resource: String },
}

/// A client for the cluster: from `kubeconfig` when given, else inferred (the pod's
/// service account in a cluster, `$KUBECONFIG` or `~/.kube/config` outside).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ReconcileError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                ReconcileError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ReconcileError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ReconcileError::Client(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| ReconcileError::Client(e.to_string()))
}

/// One resource to list and watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural, as in the API path.
    pub resource: String,
    pub namespaced: bool,
}

impl Recorded {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &kube_core::GroupVersionKind::gvk(&self.group, &self.version, &self.kind),
            &self.resource,
        )
    }

    /// The API of this resource in `namespace` (ignored for a cluster-scoped one),
    /// or across every namespace.
    fn api(
        &self,
        client: &kube::Client,
        namespace: Option<&str>,
    ) -> kube::Api<kube::api::DynamicObject> {
        let ar = self.api_resource();
        match (namespace, self.namespaced) {
            (Some(ns), true) => kube::Api::namespaced_with(client.clone(), ns, &ar),
            _ => kube::Api::all_with(client.clone(), &ar),
        }
    }
}

/// The resources the rules record, at each group's preferred version, sorted by
/// group and resource. Only resources that can be listed and watched count;
/// subresources never do (a scale write is recorded through its parent).
pub async fn recorded_resources(
    client: &kube::Client,
    policy: &Policy,
) -> Result<Vec<Recorded>, ReconcileError> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| ReconcileError::Discovery(e.to_string()))?;
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            if let Some(recorded) = select(&resource, &capabilities, policy) {
                found.push(recorded);
            }
        }
    }
    found.sort_by(|a, b| (&a.group, &a.resource).cmp(&(&b.group, &b.resource)));
    Ok(found)
}

fn select(resource: &ApiResource, caps: &ApiCapabilities, policy: &Policy) -> Option<Recorded> {
    if resource.plural.contains('/')
        || !caps.supports_operation(verbs::LIST)
        || !caps.supports_operation(verbs::WATCH)
        || !policy.records_resource(&resource.group, &resource.plural)
    {
        return None;
    }
    Some(Recorded {
        group: resource.group.clone(),
        version: resource.version.clone(),
        kind: resource.kind.clone(),
        resource: resource.plural.clone(),
        namespaced: caps.scope == Scope::Namespaced,
    })
}

/// One page of a list: the objects as the API sent them (JSON), in order.
pub type Page = Vec<serde_json::Value>;

/// What a paged list saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub objects: usize,
    pub pages: usize,
    /// The list's resourceVersion, where a watch continues from.
    pub resource_version: Option<String>,
}

/// Lists `resource` (in `namespace`, or everywhere) `limit` objects at a time,
/// handing each page to `on_page` before asking for the next, so memory holds one
/// page however big the cluster is.
pub async fn list_pages(
    client: &kube::Client,
    resource: &Recorded,
    namespace: Option<&str>,
    limit: u32,
    mut on_page: impl FnMut(Page),
) -> Result<Listed, ReconcileError> {
    let mut pager = Pager::new(client, resource, namespace, limit);
    let mut listed = Listed {
        objects: 0,
        pages: 0,
        resource_version: None,
    };
    while let Some(page) = pager.next().await? {
        listed.pages += 1;
        listed.objects += page.len();
        on_page(page);
    }
    listed.resource_version = pager.resource_version;
    Ok(listed)
}

/// The files of live objects, by target ([`crate::config::Config::targets`] order).
pub type Live = Vec<HashSet<String>>;

/// Where a resource's watch starts: its list's resourceVersion, and the files its
/// objects had then (a relist after a 410 removes those whose object went away).
#[derive(Debug, Clone)]
pub struct WatchFrom {
    pub resource: Recorded,
    pub resource_version: String,
    pub known: Live,
}

/// What a snapshot did.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    pub resources: usize,
    pub objects: usize,
    /// Objects the rules record (the others are noise, controller-owned, ...).
    pub recorded: usize,
    pub commits: usize,
    /// Files removed because no live object matched them (`prune: always`).
    pub pruned: usize,
    /// Resources kubescribe may not list (RBAC): skipped, with an error logged.
    pub forbidden: Vec<String>,
    /// Each listed resource, where its watch starts.
    pub watch_from: Vec<WatchFrom>,
    /// Files of the control plane's objects removed (see [`cleanup`]).
    pub control_plane_removed: usize,
    /// Per target, where the control plane's listed objects would have their files.
    control_plane: Vec<Vec<cleanup::Candidate>>,
}

/// Who the reconciler's writes are attributed to when the policy decides on them.
const RECONCILE_USER: &str = "system:kubescribe:reconcile";

/// A snapshot commits a resource's pages together, up to this many objects or
/// file bytes per commit: every commit rewrites the trees of the directories it
/// touches, so a commit per page made a large cluster's snapshot quadratic in its
/// directories' sizes; this bounds what waits in memory.
const SNAPSHOT_COMMIT_OBJECTS: usize = 5_000;
const SNAPSHOT_COMMIT_BYTES: usize = 16 << 20;

/// How long a reconcile commit may wait for the writer.
const COMMIT_DEADLINE: Duration = Duration::from_secs(60);

/// Pause before a watch that failed (not expired) is tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What the reconciler's tasks share: the client, the policy, each target's layout
/// and store ([`crate::config::Config::targets`] order), and the admitted changes
/// waiting for the watch to confirm them.
pub struct Reconciler {
    client: kube::Client,
    policy: Policy,
    targets: Vec<(Layout, StoreHandle)>,
    confirmations: Option<Arc<Confirmations>>,
    metrics: Arc<Metrics>,
    page_size: u32,
    /// `timeoutSeconds` of each watch request.
    watch_timeout: u32,
    /// Per target: remove the control plane's files at start (see [`cleanup`]).
    clean_control_plane: Vec<bool>,
}

impl Reconciler {
    pub fn new(
        client: kube::Client,
        policy: Policy,
        targets: Vec<(Layout, StoreHandle)>,
        metrics: Arc<Metrics>,
        page_size: u32,
    ) -> Self {
        Self {
            client,
            policy,
            targets,
            confirmations: None,
            metrics,
            page_size,
            watch_timeout: 290,
            clean_control_plane: Vec::new(),
        }
    }

    /// Each watch request asks the apiserver to end it after `timeout` (whole
    /// seconds, at least 1); the watch then resumes from its last resourceVersion.
    pub fn with_watch_timeout(mut self, timeout: Duration) -> Self {
        self.watch_timeout = timeout.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        self
    }

    /// Which targets remove the control plane's files at start (see [`cleanup`]).
    pub fn with_control_plane_cleanup(mut self, clean: Vec<bool>) -> Self {
        self.clean_control_plane = clean;
        self
    }

    /// Admitted changes are confirmed against what the watch shows (phantoms).
    pub fn with_confirmations(mut self, confirmations: Arc<Confirmations>) -> Self {
        self.confirmations = Some(confirmations);
        self
    }

    /// Lists every recorded resource, a page at a time, and writes each object's file
    /// as admission would have, in commits of up to [`SNAPSHOT_COMMIT_OBJECTS`] per
    /// repository, authored by kubescribe itself; files already equal make no
    /// commit. Then prunes, where a rule says `prune: always`, files whose object no
    /// list showed.
    pub async fn snapshot(&self) -> Result<SnapshotReport, ReconcileError> {
        let mut report = SnapshotReport::default();
        let mut live: Live = vec![HashSet::new(); self.targets.len()];
        let mut listed = Vec::new();
        for resource in recorded_resources(&self.client, &self.policy).await? {
            match self.list(&resource, &mut report).await {
                Ok((resource_version, known)) => {
                    // Every live file, once more, only when something is pruned
                    // by it: at 100,000 objects that is megabytes.
                    if self.policy.prunes() {
                        for (all, these) in live.iter_mut().zip(&known) {
                            all.extend(these.iter().cloned());
                        }
                    }
                    report.resources += 1;
                    listed.push(resource.clone());
                    report.watch_from.push(WatchFrom {
                        resource,
                        resource_version,
                        known,
                    });
                }
                Err(ReconcileError::Forbidden { resource }) => {
                    tracing::error!(%resource, "not allowed to list; it is not reconciled (grant get, list and watch on it)");
                    report.forbidden.push(resource);
                }
                Err(error) => return Err(error),
            }
        }
        report.control_plane_removed = self
            .remove_control_plane(std::mem::take(&mut report.control_plane))
            .await;
        report.pruned = self.remove_gone(&listed, &live, None).await?;
        self.metrics
            .reconcile
            .resources
            .set(report.resources as i64);
        Ok(report)
    }

    /// Lists and writes one resource (see [`Self::snapshot`]); returns the list's
    /// resourceVersion and the files of its live objects.
    pub async fn list(
        &self,
        resource: &Recorded,
        report: &mut SnapshotReport,
    ) -> Result<(String, Live), ReconcileError> {
        self.list_in(resource, None, report).await
    }

    /// [`Self::list`] of the objects in `namespace` only, or of all.
    async fn list_in(
        &self,
        resource: &Recorded,
        namespace: Option<&str>,
        report: &mut SnapshotReport,
    ) -> Result<(String, Live), ReconcileError> {
        let mut live: Live = vec![HashSet::new(); self.targets.len()];
        let (objects_before, commits_before) = (report.objects, report.commits);
        // One page in memory at a time: each is written before the next is asked for.
        let mut pager = Pager::new(&self.client, resource, namespace, self.page_size);
        // A full list of Namespaces or CRDs says which scopes being deleted are gone.
        let defines_scopes = namespace.is_none()
            && matches!(
                (resource.group.as_str(), resource.resource.as_str()),
                ("", "namespaces") | ("apiextensions.k8s.io", "customresourcedefinitions")
            );
        let mut scopes = HashSet::new();
        // Changes waiting for their commit, by target, and their weight.
        let mut by_target: Vec<Vec<Change>> = vec![Vec::new(); self.targets.len()];
        let (mut waiting, mut waiting_bytes) = (0, 0);
        while let Some(page) = pager.next().await? {
            report.objects += page.len();
            self.metrics
                .reconcile
                .objects_listed
                .inc_by(page.len() as u64);
            for object in page {
                let write = write_for(resource, object, Operation::Create);
                self.see_leaving(&write);
                if defines_scopes {
                    scopes.extend(crate::cascade::Leaving::key_of(
                        &write.resource.group,
                        &write.resource.resource,
                        &write.name,
                        write.live_object(),
                    ));
                }
                let Some((target, _, change)) = self.plan(&write) else {
                    self.note_control_plane(&write, report);
                    continue;
                };
                report.recorded += 1;
                if change.action != Action::Remove {
                    live[target].insert(change.path.as_str().to_owned());
                }
                match self.observe(target, &change) {
                    Observed::Write => {
                        waiting += 1;
                        waiting_bytes += match &change.action {
                            Action::Put(bytes) => bytes.len(),
                            _ => 0,
                        };
                        by_target[target].push(change);
                    }
                    Observed::Hold => {}
                    Observed::Record {
                        change,
                        note,
                        since,
                    } => {
                        if self.record_noted(target, *change, *note, since).await? {
                            report.commits += 1;
                        }
                    }
                }
            }
            if waiting >= SNAPSHOT_COMMIT_OBJECTS || waiting_bytes >= SNAPSHOT_COMMIT_BYTES {
                report.commits += self.commit_snapshot(resource, &mut by_target).await?;
                (waiting, waiting_bytes) = (0, 0);
            }
        }
        report.commits += self.commit_snapshot(resource, &mut by_target).await?;
        if let (true, Some(confirmations)) = (defines_scopes, &self.confirmations) {
            confirmations.leaving.relisted(
                resource.group.is_empty(),
                &scopes,
                confirmations.window,
            );
        }
        tracing::info!(
            group = %resource.group,
            resource = %resource.resource,
            objects = report.objects - objects_before,
            commits = report.commits - commits_before,
            "listed"
        );
        Ok((pager.resource_version.unwrap_or_default(), live))
    }

    /// The target, rule and change admission would have made for `write`.
    /// `None` for objects the reconciler leaves alone: those no rule records, and
    /// those of `then: deny` rules, whose files are ahead of the cluster by design
    /// (written first, then applied by the GitOps tool), so the cluster's older
    /// state must never be written over them.
    fn plan(&self, write: &crate::policy::Write) -> Option<(usize, String, Change)> {
        if write.operation != Operation::Delete
            && self.confirmations.as_ref().is_some_and(|c| {
                c.leaving.holds(
                    write.namespace.as_deref(),
                    &write.resource.group,
                    &write.resource.resource,
                )
            })
        {
            // Its namespace (or definition) is being deleted: not written back.
            return None;
        }
        let crate::policy::Decision::Record {
            target, rule, then, ..
        } = crate::policy::decide(write, &self.policy)
        else {
            return None;
        };
        if then == crate::config::Then::Deny {
            return None;
        }
        let secrets = self.policy.secret_mode(&rule);
        match crate::manifest::plan(write, &self.targets[target].0, secrets) {
            Ok(mut change) => {
                // A state the cluster shows, not a write: ordered as such against
                // other replicas' records (see store::replay).
                change.version = write
                    .live_object()
                    .and_then(crate::manifest::ObjectVersion::of_state);
                Some((target, rule, change))
            }
            Err(error) => {
                tracing::warn!(%error, resource = %write.resource.resource, name = %write.name, "cannot turn the cluster's object into a file");
                None
            }
        }
    }

    /// Follows Namespaces and definitions being deleted, from what a list or the
    /// watch shows of them (see [`crate::cascade::Leaving`]).
    fn see_leaving(&self, write: &crate::policy::Write) {
        let Some(confirmations) = &self.confirmations else {
            return;
        };
        let object = write.live_object();
        let seen = if write.operation == Operation::Delete {
            crate::cascade::Seen::Deleted
        } else if object.is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some()) {
            crate::cascade::Seen::Terminating
        } else {
            crate::cascade::Seen::Live
        };
        confirmations.leaving.seen(
            &write.resource.group,
            &write.resource.resource,
            &write.name,
            object,
            seen,
            confirmations.window,
        );
    }

    /// What to do with the cluster's state of the change's file now: write it, not
    /// while an admitted change to it waits for confirmation, and as a noted change's
    /// own commit when it confirms one (see [`confirm`]).
    fn observe(&self, target: usize, change: &Change) -> Observed {
        match &self.confirmations {
            Some(c) => c.observe(target, change),
            None => Observed::Write,
        }
    }

    /// Commits a noted (`record: confirmed`) change the cluster showed, authored by
    /// the user who made it; whether a commit was made.
    /// When the commit fails, the note is put back, so the change is still recorded
    /// as its user's once it can be (by the next event, or the read back).
    async fn record_noted(
        &self,
        target: usize,
        change: Change,
        note: Pending,
        since: Instant,
    ) -> Result<bool, ReconcileError> {
        let deadline = Instant::now() + COMMIT_DEADLINE;
        let path = change.path.clone();
        let outcome = self.targets[target].1.commit_change(change, deadline).await;
        if outcome.is_err() {
            if let Some(confirmations) = &self.confirmations {
                confirmations.retry(target, note, RETRY_PAUSE);
            }
        }
        match outcome {
            Ok(Outcome::Committed { .. }) => {
                let waited = since.elapsed();
                self.metrics.reconcile.noted_recorded.inc();
                self.metrics
                    .reconcile
                    .noted_latency
                    .observe(waited.as_secs_f64());
                tracing::debug!(%path, waited_ms = waited.as_millis() as u64, "confirmed by the cluster; recorded");
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(error) => Err(ReconcileError::Store(format!(
                "{error}; {}",
                error.advice()
            ))),
        }
    }

    /// Commits each target's waiting snapshot changes of `resource` (taking them);
    /// how many commits were made.
    async fn commit_snapshot(
        &self,
        resource: &Recorded,
        by_target: &mut [Vec<Change>],
    ) -> Result<usize, ReconcileError> {
        let mut commits = 0;
        for (target, changes) in by_target.iter_mut().enumerate() {
            if changes.is_empty() {
                continue;
            }
            let changes = std::mem::take(changes);
            let message = format!(
                "reconcile: snapshot of {} ({} objects)\n\nKubescribe-Reconcile: snapshot\n",
                resource.resource,
                changes.len()
            );
            if self.commit(target, changes, message).await? {
                commits += 1;
            }
        }
        Ok(commits)
    }

    /// Commits `changes` as one commit by kubescribe; whether a commit was made.
    async fn commit(
        &self,
        target: usize,
        changes: Vec<Change>,
        message: String,
    ) -> Result<bool, ReconcileError> {
        let deadline = Instant::now() + COMMIT_DEADLINE;
        match self.targets[target]
            .1
            .commit_bundle(changes, message, deadline)
            .await
        {
            Ok(Outcome::Committed { .. }) => Ok(true),
            Ok(_) => Ok(false),
            Err(error) => Err(ReconcileError::Store(format!(
                "{error}; {}",
                error.advice()
            ))),
        }
    }

    /// After full lists of `listed` that showed `live`: removes the files (under each
    /// target's root) of those resources' objects that are gone. A file goes when its
    /// rule says `prune: always`, or when `known` (the files the lists before showed
    /// live) has it: its object was deleted while no watch ran. Files of other kinds,
    /// files that are not manifests, files not at their object's path and files with
    /// an admitted change waiting for confirmation are kept. Returns how many went.
    async fn remove_gone(
        &self,
        listed: &[Recorded],
        live: &Live,
        known: Option<&Live>,
    ) -> Result<usize, ReconcileError> {
        let vanished = known.is_some_and(|known| {
            known
                .iter()
                .zip(live)
                .any(|(known, live)| known.iter().any(|path| !live.contains(path)))
        });
        if !vanished && !self.policy.prunes() {
            // Nothing could go: spare reading the whole tree.
            return Ok(0);
        }
        let mut removed = 0;
        for (target, (layout, store)) in self.targets.iter().enumerate() {
            let mut gone = Vec::new();
            let root = layout.root();
            // Reading the tree blocks: off the async workers where the runtime can.
            let scan = blocking(|| {
                store.for_each_file(&root, |path, bytes| {
                    if live[target].contains(path)
                        || self
                            .confirmations
                            .as_ref()
                            .is_some_and(|c| c.is_pending(target, path))
                    {
                        return;
                    }
                    let was_live = known.is_some_and(|k| k[target].contains(path));
                    if let Some(change) = self.removal(listed, target, path, bytes, was_live) {
                        gone.push(change);
                    }
                })
            });
            scan.map_err(|e| ReconcileError::Store(format!("{e}; {}", e.advice())))?;
            for chunk in gone.chunks(self.page_size.max(1) as usize) {
                let mut message = format!(
                    "reconcile: remove {} files with no live object\n\nA full list of the cluster no longer shows these objects:\n\n",
                    chunk.len()
                );
                for change in chunk {
                    message.push_str(&format!("- {}\n", change.path));
                }
                message.push_str("\nKubescribe-Reconcile: prune\n");
                if self.commit(target, chunk.to_vec(), message).await? {
                    removed += chunk.len();
                    self.metrics
                        .reconcile
                        .files_pruned
                        .inc_by(chunk.len() as u64);
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed files with no live object");
        }
        Ok(removed)
    }

    /// The removal of the file at `path` of `target`, if it holds an object of a
    /// listed resource that belongs there and may go (see [`Self::remove_gone`]).
    fn removal(
        &self,
        listed: &[Recorded],
        target: usize,
        path: &str,
        bytes: &[u8],
        was_live: bool,
    ) -> Option<Change> {
        let object: serde_json::Value = serde_yaml_ng::from_slice(bytes).ok()?;
        let group = object
            .get("apiVersion")
            .and_then(serde_json::Value::as_str)?
            .parse::<kube_core::GroupVersion>()
            .ok()?
            .group;
        let kind = object.get("kind").and_then(serde_json::Value::as_str)?;
        let resource = listed.iter().find(|r| r.group == group && r.kind == kind)?;
        let (planned, rule, change) = self.plan(&write_for(resource, object, Operation::Delete))?;
        let prune = self.policy.prune(&rule) == crate::config::Prune::Always;
        (planned == target && change.path.as_str() == path && (prune || was_live)).then_some(change)
    }

    /// Keeps git following the cluster: watches `from.resource` from where its list
    /// ended, relisting when the watch expires (410) and retrying after a pause on
    /// other errors. Runs until the task is aborted.
    pub async fn follow_forever(self: Arc<Self>, from: WatchFrom) {
        let WatchFrom {
            resource,
            mut resource_version,
            mut known,
        } = from;
        loop {
            let started = Instant::now();
            match self
                .follow(&resource, &resource_version, self.watch_timeout, &mut known)
                .await
            {
                Ok(followed) => {
                    let idle = followed.written + followed.confirmed + followed.bookmarks == 0;
                    resource_version = followed.resource_version;
                    // A server that ends watches at once must not make this spin.
                    if idle && started.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(ReconcileError::Expired { .. }) => {
                    self.restarted("expired");
                    tracing::info!(resource = %resource.resource, "watch expired (410); relisting");
                    match self.relist(&resource, &known).await {
                        Ok((relisted, live)) => {
                            resource_version = relisted;
                            known = live;
                        }
                        Err(error) => {
                            tracing::warn!(%error, resource = %resource.resource, "relist failed; retrying");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
                Err(error) => {
                    self.restarted("error");
                    tracing::warn!(%error, resource = %resource.resource, "watch failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    fn restarted(&self, reason: &'static str) {
        self.metrics
            .reconcile
            .watch_restarts
            .get_or_create(&crate::metrics::ErrorLabels { reason })
            .inc();
    }

    /// Lists `resource` again after its watch expired: writes what changed meanwhile
    /// and removes the files of objects deleted meanwhile (those in `known` that the
    /// list no longer shows), so nothing is lost and, as files already equal make no
    /// commit, nothing is written twice.
    pub async fn relist(
        &self,
        resource: &Recorded,
        known: &Live,
    ) -> Result<(String, Live), ReconcileError> {
        let mut report = SnapshotReport::default();
        let (resource_version, live) = self.list(resource, &mut report).await?;
        self.remove_gone(std::slice::from_ref(resource), &live, Some(known))
            .await?;
        Ok((resource_version, live))
    }

    /// Reads back every admitted change whose confirmation window ended: if the
    /// cluster shows it, it is confirmed; if not, it never landed (a phantom), and
    /// the cluster's object is committed back, naming the admission uid. A change
    /// whose read back fails is tried again a few times, then given up (logged).
    /// Returns how many phantoms were reverted.
    pub async fn check_unconfirmed(&self, resources: &[Recorded]) -> usize {
        let Some(confirmations) = &self.confirmations else {
            return 0;
        };
        let mut phantoms = 0;
        for (target, pending) in confirmations.take_due(Instant::now()) {
            let Some(watched) = resources
                .iter()
                .find(|r| r.group == pending.group && r.resource == pending.resource)
            else {
                // Not a resource the reconciler lists (or not any more): nothing to
                // read back.
                continue;
            };
            // Read back at the version admission recorded, so the rendering compares
            // like with like (a client may write at a version that is not preferred).
            let mut resource = watched.clone();
            match pending
                .change
                .api_version
                .parse::<kube_core::GroupVersion>()
            {
                Ok(recorded) if recorded.group == resource.group => {
                    resource.version = recorded.version;
                }
                // A scale write records the Scale's apiVersion: read the parent back
                // at its preferred version.
                _ => {}
            }
            match self.read_back(&resource, target, &pending).await {
                Ok(Some(truth)) => {
                    if pending.shown_by(&truth.action) {
                        self.metrics.reconcile.confirmed.inc();
                        if let Some(since) = pending.noted {
                            // Noted, and the watch missed it: the read back shows it.
                            // What the cluster has, by the user who made it.
                            let change = Change {
                                user: pending.change.user.clone(),
                                groups: pending.change.groups.clone(),
                                uid: pending.change.uid.clone(),
                                action: confirm::with_cascade(&pending.change.action, truth.action),
                                ..truth
                            };
                            if let Err(error) =
                                self.record_noted(target, change, pending, since).await
                            {
                                tracing::warn!(%error, "cannot commit a confirmed change; retrying");
                            }
                        }
                        continue;
                    }
                    let path = truth.path.as_str().to_owned();
                    if confirmations.is_pending(target, &path) {
                        // A newer admitted change to the file is on its way; it is
                        // checked in its turn.
                        continue;
                    }
                    if pending.noted.is_some() {
                        // Never committed, so nothing to take back: git keeps what it
                        // has, and the cluster's state is written like any other.
                        tracing::info!(uid = %pending.change.uid, %path, user = %pending.change.user, "a noted change never showed in the cluster (forged, or denied after kubescribe); nothing recorded");
                        self.metrics.reconcile.phantoms.inc();
                        let message = format!(
                            "reconcile: {verb} {api_version} {kind} {object}\n\nThe cluster has this, and git did not.\n\nKubescribe-Reconcile: read-back\n",
                            verb = truth.verb.as_str(),
                            api_version = truth.api_version,
                            kind = truth.kind,
                            object = truth.object_ref(),
                        );
                        if let Err(error) = self.commit(target, vec![truth], message).await {
                            tracing::warn!(%error, "cannot commit the cluster's object; retrying");
                            confirmations.retry(target, pending, RETRY_PAUSE);
                        }
                        continue;
                    }
                    tracing::warn!(uid = %pending.change.uid, %path, user = %pending.change.user, "admitted change never landed (phantom); restoring the cluster's object");
                    if let Action::Cascade(cascade) = &pending.change.action {
                        self.restore_cascade(resources, &cascade.scope).await;
                    }
                    let message = format!(
                        "reconcile: revert {verb} {api_version} {kind} {object}, which never landed\n\nAdmission recorded this change by {user} (uid {uid}), but the cluster did not persist it within {window:?}: another admission webhook or a quota denied it, it conflicted, or the apiserver timed out. This commit puts back what the cluster has.\n\nKubescribe-Reconcile: phantom\nReverts-Admission-Uid: {uid}\n",
                        verb = pending.change.verb.as_str(),
                        api_version = pending.change.api_version,
                        kind = pending.change.kind,
                        object = pending.change.object_ref(),
                        user = pending.change.user,
                        uid = pending.change.uid,
                        window = confirmations.window,
                    );
                    match self.commit(target, vec![truth], message).await {
                        Ok(_) => {
                            phantoms += 1;
                            self.metrics.reconcile.phantoms.inc();
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot commit the cluster's object back; retrying");
                            confirmations.retry(target, pending, RETRY_PAUSE);
                        }
                    }
                }
                // The object no longer belongs in this repository.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, object = %pending.change.object_ref(), "cannot read back an admitted change; retrying");
                    confirmations.retry(target, pending, RETRY_PAUSE);
                }
            }
        }
        phantoms
    }

    /// A person's delete of a namespace (or definition) never landed: the scope no
    /// longer holds the reconciler back, and its objects are listed again, so the
    /// files the recorded delete took come back as the cluster has them now (an
    /// object deleted since stays out).
    async fn restore_cascade(&self, resources: &[Recorded], scope: &crate::cascade::Scope) {
        if let Some(confirmations) = &self.confirmations {
            confirmations.leaving.cancel(scope);
        }
        let (namespace, lists): (Option<&str>, Vec<&Recorded>) = match scope {
            crate::cascade::Scope::Namespace(namespace) => (
                Some(namespace.as_str()),
                resources.iter().filter(|r| r.namespaced).collect(),
            ),
            crate::cascade::Scope::Resource {
                group, resource, ..
            } => (
                None,
                resources
                    .iter()
                    .filter(|r| &r.group == group && &r.resource == resource)
                    .collect(),
            ),
        };
        for resource in lists {
            let mut report = SnapshotReport::default();
            if let Err(error) = self.list_in(resource, namespace, &mut report).await {
                tracing::warn!(%error, resource = %resource.resource, "cannot list the objects of a delete that never landed; they come back as the cluster shows them again");
            }
        }
    }

    /// The change that makes git show what the cluster has for `pending`'s object:
    /// its file, or its removal when the object does not exist. `None` when the
    /// object is no longer recorded to `target`.
    async fn read_back(
        &self,
        resource: &Recorded,
        target: usize,
        pending: &Pending,
    ) -> Result<Option<Change>, ReconcileError> {
        let ar = resource.api_resource();
        let api = resource.api(&self.client, pending.change.namespace.as_deref());
        let name = &pending.change.name;
        let object = match api.get(name).await {
            Ok(object) => object,
            // Only a 404 about this very object means it does not exist; a 404 for
            // the resource type (a version no longer served) is an error.
            Err(kube::Error::Api(status))
                if status.code == 404
                    && status.details.as_ref().is_some_and(|d| &d.name == name) =>
            {
                return Ok(Some(Change {
                    action: Action::Remove,
                    verb: crate::manifest::Verb::Delete,
                    ..pending.change.clone()
                }));
            }
            Err(error) => {
                return Err(ReconcileError::List {
                    resource: resource.resource.clone(),
                    reason: format!("read back {}: {error}", pending.change.object_ref()),
                })
            }
        };
        let write = write_for(resource, object_json(object, &ar), Operation::Update);
        Ok(self
            .plan(&write)
            .filter(|(planned, _, _)| *planned == target)
            .map(|(_, _, change)| change))
    }

    /// The reconciler's life after its snapshot: one watch per resource, phantom
    /// checks, and discovery again every `discovery_interval`, which lists and
    /// watches resources that appeared (a CRD was added) and stops watching those
    /// that went. Each watch task is pushed to `tasks`, so shutdown can stop them.
    pub async fn run(
        self: Arc<Self>,
        report: SnapshotReport,
        discovery_interval: Duration,
        tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    ) {
        let mut watched: Vec<(Recorded, tokio::task::AbortHandle)> = Vec::new();
        let spawn = |from: WatchFrom, watched: &mut Vec<(Recorded, tokio::task::AbortHandle)>| {
            let resource = from.resource.clone();
            let task = tokio::spawn(self.clone().follow_forever(from));
            watched.push((resource, task.abort_handle()));
            tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        };
        for from in report.watch_from {
            spawn(from, &mut watched);
        }
        let check_every = (self
            .confirmations
            .as_ref()
            .map_or(Duration::from_secs(1), |c| c.window / 4))
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut check = tokio::time::interval(check_every);
        let mut discover = tokio::time::interval(discovery_interval);
        discover.tick().await;
        loop {
            tokio::select! {
                _ = check.tick() => {
                    let resources: Vec<Recorded> = watched.iter().map(|(r, _)| r.clone()).collect();
                    self.check_unconfirmed(&resources).await;
                }
                _ = discover.tick() => {
                    let found = match recorded_resources(&self.client, &self.policy).await {
                        Ok(found) => found,
                        Err(error) => {
                            tracing::warn!(%error, "discovery failed; retrying");
                            continue;
                        }
                    };
                    tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|task| !task.is_finished());
                    watched.retain(|(resource, task)| {
                        let keep = found.iter().any(|f| same_resource(f, resource));
                        if !keep {
                            tracing::info!(resource = %resource.resource, group = %resource.group, "resource went away; no longer watched");
                            task.abort();
                        }
                        keep
                    });
                    for resource in found {
                        if watched.iter().any(|(w, _)| same_resource(w, &resource)) {
                            continue;
                        }
                        tracing::info!(resource = %resource.resource, group = %resource.group, "new resource; listing and watching it");
                        let mut report = SnapshotReport::default();
                        match self.list(&resource, &mut report).await {
                            Ok((resource_version, known)) => {
                                let live = known.clone();
                                if let Err(error) = self.remove_gone(std::slice::from_ref(&resource), &live, None).await {
                                    tracing::warn!(%error, "prune failed");
                                }
                                spawn(WatchFrom { resource, resource_version, known }, &mut watched);
                            }
                            Err(error) => tracing::warn!(%error, "listing a new resource failed; retrying at the next discovery"),
                        }
                    }
                    self.metrics.reconcile.resources.set(watched.len() as i64);
                }
            }
        }
    }
}

/// Runs `f`, which blocks, telling a multi-threaded runtime to move other tasks off
/// this worker meanwhile (a current-thread runtime has nowhere to move them).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The same resource at the same version: when discovery prefers another version
/// (the old one may stop being served), the resource is listed and watched anew.
fn same_resource(a: &Recorded, b: &Recorded) -> bool {
    a.group == b.group && a.resource == b.resource && a.version == b.version
}

/// What following a watch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// Changes git did not have yet, committed as `reconcile:` commits.
    pub written: usize,
    /// Changes git already had (admission recorded them): confirmed.
    pub confirmed: usize,
    /// Changes not written because an admitted change to the same file waits for
    /// its confirmation.
    pub held: usize,
    pub bookmarks: usize,
    /// Where to watch from next.
    pub resource_version: String,
}

/// The write admission would have seen for `object` of `resource`: for a DELETE the
/// object is the old one, as in an admission request.
fn write_for(
    resource: &Recorded,
    object: serde_json::Value,
    operation: Operation,
) -> crate::policy::Write {
    use kube_core::{GroupVersionKind, GroupVersionResource};
    let meta = |key: &str| {
        object
            .pointer(&format!("/metadata/{key}"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let namespace = resource.namespaced.then(|| meta("namespace"));
    let (uid, name) = (format!("reconcile-{}", meta("uid")), meta("name"));
    let (object, old_object) = match operation {
        Operation::Delete => (None, Some(object)),
        _ => (Some(object), None),
    };
    crate::policy::Write {
        uid,
        operation,
        kind: GroupVersionKind::gvk(&resource.group, &resource.version, &resource.kind),
        resource: GroupVersionResource::gvr(&resource.group, &resource.version, &resource.resource),
        sub_resource: None,
        namespace,
        name,
        user: RECONCILE_USER.to_owned(),
        groups: Vec::new(),
        dry_run: false,
        object,
        old_object,
        from_cluster: true,
    }
}

/// An object from the API as JSON, with the apiVersion and kind it was served at
/// (list items and watch events do not carry them).
fn object_json(mut object: kube::api::DynamicObject, ar: &ApiResource) -> serde_json::Value {
    object.types = Some(kube::api::TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
}

/// Pages through a list with `limit` and `continue`.
pub struct Pager<'a> {
    api: kube::Api<kube::api::DynamicObject>,
    resource: &'a Recorded,
    params: Option<kube::api::ListParams>,
    /// The list's resourceVersion so far, where a watch continues from.
    pub resource_version: Option<String>,
}

impl<'a> Pager<'a> {
    pub fn new(
        client: &kube::Client,
        resource: &'a Recorded,
        namespace: Option<&str>,
        limit: u32,
    ) -> Self {
        let api = resource.api(client, namespace);
        Self {
            api,
            resource,
            params: Some(kube::api::ListParams::default().limit(limit)),
            resource_version: None,
        }
    }

    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Page>, ReconcileError> {
        let Some(params) = self.params.take() else {
            return Ok(None);
        };
        let list = self.api.list(&params).await.map_err(|e| match e {
            kube::Error::Api(status) if status.code == 403 => ReconcileError::Forbidden {
                resource: self.resource.resource.clone(),
            },
            e => ReconcileError::List {
                resource: self.resource.resource.clone(),
                reason: e.to_string(),
            },
        })?;
        self.resource_version = list.metadata.resource_version.clone();
        if let Some(token) = list.metadata.continue_.filter(|c| !c.is_empty()) {
            self.params = Some(params.continue_token(&token));
        }
        let ar = self.resource.api_resource();
        Ok(Some(
            list.items
                .into_iter()
                .map(|object| object_json(object, &ar))
                .collect(),
        ))
    }
}
