//! Following one resource's watch and committing what git lacks.
//!
//! A watch is read as fast as it comes. Changes that arrive while a commit is
//! being made wait, and go into the next commit together, so a churning cluster
//! makes one commit per writer round trip instead of one per event and never
//! holds the apiserver's stream back. A lone change is still its own commit,
//! with the message and version trailers it always had.
//!
//! Invariants:
//! - every state the watch shows is some commit's state: a commit never holds two
//!   changes of one file, so a change to a file already waiting starts the next
//!   commit instead of replacing it;
//! - commits are made in the order the watch showed their changes;
//! - the resourceVersion handed back (to watch from next) is only handed back once
//!   every change before it is in git;
//! - at most [`WAITING_MAX`] changes wait besides the commit being made; reading
//!   stops while that many do;
//! - a change to a file an admitted change waits on is not written over it (see
//!   [`super::confirm`]), checked again when its commit is made;
//! - a watch that fails loses no deletion: the files of deletions not yet committed
//!   go back into `known`, so the relist sweeps them.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use kube_core::admission::Operation;
use prometheus_client::metrics::gauge::Gauge;

use super::{
    object_json, write_for, Followed, Live, Observed, ReconcileError, Reconciler, Recorded,
};
use crate::manifest::{Action, Change};

/// How many watched changes may wait for their commit; also the most one commit
/// holds (as the snapshot's commits).
const WAITING_MAX: usize = super::SNAPSHOT_COMMIT_OBJECTS;

/// Changes that go into one commit per target, in the order they came.
#[derive(Default)]
struct Batch {
    /// Per target: each change and when its event arrived.
    changes: Vec<Vec<(Change, Instant)>>,
    /// `(target, path)` of every change, so no file is in it twice.
    paths: HashSet<(usize, String)>,
    /// The resourceVersion of its last event.
    resource_version: String,
}

impl Batch {
    fn len(&self) -> usize {
        self.paths.len()
    }
}

/// The changes waiting for their commits, oldest batch first, counted in a gauge
/// shared by every watch.
struct Waiting {
    batches: VecDeque<Batch>,
    count: usize,
    gauge: Gauge,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A watch that fails drops what waits: it is watched again from before it,
        // or relisted.
        self.gauge.dec_by(self.count as i64);
    }
}

impl Waiting {
    fn new(gauge: Gauge) -> Self {
        Self {
            batches: VecDeque::new(),
            count: 0,
            gauge,
        }
    }

    fn push(&mut self, target: usize, change: Change, seen: Instant, resource_version: &str) {
        let key = (target, change.path.as_str().to_owned());
        let open = self
            .batches
            .back()
            .is_some_and(|b| b.len() < WAITING_MAX && !b.paths.contains(&key));
        if !open {
            self.batches.push_back(Batch::default());
        }
        let batch = self
            .batches
            .back_mut()
            .expect("just made sure there is one");
        if batch.changes.len() <= target {
            batch.changes.resize_with(target + 1, Vec::new);
        }
        batch.changes[target].push((change, seen));
        batch.paths.insert(key);
        batch.resource_version = resource_version.to_owned();
        self.count += 1;
        self.gauge.inc();
    }

    fn pop(&mut self) -> Option<Batch> {
        let batch = self.batches.pop_front()?;
        self.count -= batch.len();
        self.gauge.dec_by(batch.len() as i64);
        Some(batch)
    }
}

/// What committing a batch did.
#[derive(Default)]
struct Committed {
    written: usize,
    confirmed: usize,
    held: usize,
    /// `(target, path)` of the files of deleted objects it took out.
    removed: Vec<(usize, String)>,
}

type Committing<'a> = Pin<Box<dyn Future<Output = Result<Committed, ReconcileError>> + Send + 'a>>;

impl Reconciler {
    /// Watches `resource` from `resource_version` (with bookmarks) until the server
    /// ends the watch, writing every change git does not have yet: objects created or
    /// changed without an admission record (kubescribe was down, the webhook failed
    /// open), and deletions behind its back (garbage collection). Commits are
    /// authored by kubescribe and say so; changes that arrive while one is made go
    /// into the next together. Admitted changes the watch shows are confirmed.
    /// `known` follows the files of live objects. `Expired` (410 Gone) means the
    /// caller must relist.
    pub async fn follow(
        &self,
        resource: &Recorded,
        resource_version: &str,
        timeout_seconds: u32,
        known: &mut Live,
    ) -> Result<Followed, ReconcileError> {
        use futures::TryStreamExt as _;
        use kube::api::WatchEvent;
        let ar = resource.api_resource();
        let api = resource.api(&self.client, None);
        // Bookmarks are on by default.
        let params = kube::api::WatchParams::default().timeout(timeout_seconds);
        let watch_error = |e: &dyn std::fmt::Display| ReconcileError::List {
            resource: resource.resource.clone(),
            reason: format!("watch: {e}"),
        };
        let stream = api
            .watch(&params, resource_version)
            .await
            .map_err(|e| watch_error(&e))?;
        futures::pin_mut!(stream);
        let mut followed = Followed {
            resource_version: resource_version.to_owned(),
            ..Followed::default()
        };
        let mut waiting = Waiting::new(self.metrics.reconcile.watch_waiting.clone());
        let mut committing: Option<Committing<'_>> = None;
        // Files of deleted objects not known to be removed from git yet. `known`
        // forgets them at once; if the watch fails first, it gets them back, so the
        // relist that follows still sweeps them.
        let mut removing: HashSet<(usize, String)> = HashSet::new();
        let outcome = async {
        loop {
            tokio::select! {
                // Finish commits first, so what waits is bounded by what one
                // commit's time lets arrive.
                biased;
                done = async { committing.as_mut().expect("only polled while committing").await }, if committing.is_some() => {
                    followed.add(done?, &mut removing);
                    committing = waiting.pop().map(|batch| self.commit_batch(resource, batch));
                }
                event = stream.try_next(), if waiting.count < WAITING_MAX => {
                    let Some(event) = event.map_err(|e| watch_error(&e))? else {
                        break;
                    };
                    let (object, operation) = match event {
                        WatchEvent::Added(object) => (object, Operation::Create),
                        WatchEvent::Modified(object) => (object, Operation::Update),
                        WatchEvent::Deleted(object) => (object, Operation::Delete),
                        WatchEvent::Bookmark(bookmark) => {
                            followed.bookmarks += 1;
                            followed.resource_version = bookmark.metadata.resource_version;
                            continue;
                        }
                        WatchEvent::Error(status) if status.code == 410 => {
                            return Err(ReconcileError::Expired {
                                resource: resource.resource.clone(),
                            });
                        }
                        WatchEvent::Error(status) => return Err(watch_error(&status.message)),
                    };
                    let seen = Instant::now();
                    if let Some(version) = object.metadata.resource_version.clone() {
                        followed.resource_version = version;
                    }
                    let write = write_for(resource, object_json(object, &ar), operation);
                    self.see_leaving(&write);
                    let Some((target, _, change)) = self.plan(&write) else {
                        continue;
                    };
                    let path = change.path.as_str().to_owned();
                    if change.action == Action::Remove {
                        known[target].remove(&path);
                        removing.insert((target, path));
                    } else {
                        known[target].insert(path);
                    }
                    match self.observe(target, &change) {
                        Observed::Write => {
                            waiting.push(target, change, seen, &followed.resource_version);
                            if committing.is_none() {
                                committing = waiting.pop().map(|batch| self.commit_batch(resource, batch));
                            }
                        }
                        Observed::Hold => followed.held += 1,
                        Observed::Record {
                            change,
                            note,
                            since,
                        } => {
                            // Its user's commit comes after everything the watch
                            // showed before it.
                            if let Some(earlier) = committing.take() {
                                followed.add(earlier.await?, &mut removing);
                            }
                            while let Some(batch) = waiting.pop() {
                                followed.add(self.commit_batch(resource, batch).await?, &mut removing);
                            }
                            if self.record_noted(target, *change, *note, since).await? {
                                followed.written += 1;
                            } else {
                                followed.confirmed += 1;
                            }
                        }
                    }
                }
            }
        }
        if let Some(last) = committing.take() {
            followed.add(last.await?, &mut removing);
        }
        while let Some(batch) = waiting.pop() {
            followed.add(self.commit_batch(resource, batch).await?, &mut removing);
        }
        Ok(followed)
        }
        .await;
        if outcome.is_err() {
            for (target, path) in removing {
                known[target].insert(path);
            }
        }
        outcome
    }

    /// Commits a batch's changes, one commit per target, and notes how long each
    /// change waited since its event arrived. A change to a file an admitted change
    /// now waits on is left out, as if the watch had shown it then (it is older
    /// than what admission recorded since).
    fn commit_batch<'a>(&'a self, resource: &'a Recorded, batch: Batch) -> Committing<'a> {
        Box::pin(async move {
            let mut committed = Committed::default();
            for (target, changes) in batch.changes.into_iter().enumerate() {
                committed.removed.extend(
                    changes
                        .iter()
                        .filter(|(c, _)| c.action == Action::Remove)
                        .map(|(c, _)| (target, c.path.as_str().to_owned())),
                );
                let before = changes.len();
                let changes: Vec<(Change, Instant)> = changes
                    .into_iter()
                    .filter(|(c, _)| {
                        !self
                            .confirmations
                            .as_ref()
                            .is_some_and(|k| k.is_pending(target, c.path.as_str()))
                    })
                    .collect();
                committed.held += before - changes.len();
                if changes.is_empty() {
                    continue;
                }
                let (changes, seen): (Vec<Change>, Vec<Instant>) = changes.into_iter().unzip();
                let count = changes.len();
                let message = message(resource, &changes, &batch.resource_version);
                if self.commit(target, changes, message).await? {
                    committed.written += count;
                    self.metrics.reconcile.watch_commits.inc();
                    self.metrics.reconcile.watch_changes.inc_by(count as u64);
                } else {
                    committed.confirmed += count;
                }
                for seen in seen {
                    self.metrics
                        .reconcile
                        .watch_lag
                        .observe(seen.elapsed().as_secs_f64());
                }
            }
            Ok(committed)
        })
    }
}

impl Followed {
    fn add(&mut self, committed: Committed, removing: &mut HashSet<(usize, String)>) {
        self.written += committed.written;
        self.confirmed += committed.confirmed;
        self.held += committed.held;
        for removed in committed.removed {
            removing.remove(&removed);
        }
    }
}

/// How many changes a commit of many lists by name in its body.
const LISTED_MAX: usize = 100;

/// The message of a watch commit. One change: `reconcile: update v1 ConfigMap a/b`
/// with the object's version trailers. Several: how many, each listed (up to
/// [`LISTED_MAX`]), and a version trailer per file, so a replay between replicas
/// still keeps the newest record of each (see [`crate::store`]'s replay).
fn message(resource: &Recorded, changes: &[Change], resource_version: &str) -> String {
    const WHY: &str = "admission never recorded it (kubescribe was down, the webhook failed open, or the change came from inside the cluster, such as garbage collection)";
    if let [change] = changes {
        return format!(
            "reconcile: {verb} {api_version} {kind} {object}\n\nThe cluster has this, and git did not: {WHY}.\n\nKubescribe-Reconcile: watch\nResource-Version: {resource_version}\n{version}",
            verb = change.verb.as_str(),
            api_version = change.api_version,
            kind = change.kind,
            object = change.object_ref(),
            // Where this state stands in the object's history, so a replay
            // between replicas keeps the newest record (see store::replay).
            version = change
                .version
                .as_ref()
                .map_or_else(String::new, |v| v.trailers()),
        );
    }
    let mut text = format!(
        "reconcile: {} changes of {} from the watch\n\nThe cluster has these, and git did not: for each, {WHY}. They came while the commit before was being made.\n\n",
        changes.len(),
        resource.resource
    );
    for change in changes.iter().take(LISTED_MAX) {
        text.push_str(&format!(
            "{} {} {} {}\n",
            change.verb.as_str(),
            change.api_version,
            change.kind,
            change.object_ref()
        ));
    }
    if changes.len() > LISTED_MAX {
        text.push_str(&format!("and {} more\n", changes.len() - LISTED_MAX));
    }
    text.push_str(&format!(
        "\nKubescribe-Reconcile: watch\nResource-Version: {resource_version}\n"
    ));
    for change in changes {
        if let Some(version) = &change.version {
            text.push_str(&version.trailer_of(change.path.as_str()));
        }
    }
    text
}
