//! The writer thread: takes changes from the queue in batches, commits them (see
//! [`super::commit`]), makes each batch durable with one pack and one branch move, and
//! answers the waiters. Owns the repository: no other code moves the branch.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::hash::ObjectId;
use gix::refs::transaction::PreviousValue;
use tokio::sync::mpsc;

use super::*;
use crate::error_chain;
use crate::metrics::Metrics;
use crate::outbox::{tracking_ref, Unpushed};

pub(super) struct Writer {
    pub(super) repo: gix::Repository,
    pub(super) settings: StoreSettings,
    pub(super) branch_ref: gix::refs::FullName,
    pub(super) tip: Option<ObjectId>,
    pub(super) tree: ObjectId,
    pub(super) rx: mpsc::Receiver<Job>,
    pub(super) control: mpsc::UnboundedReceiver<Control>,
    pub(super) metrics: Arc<Metrics>,
    /// `wait: none` changes whose batch failed, oldest first. They are retried in
    /// batches of their own, so a change that keeps failing never takes new ones down
    /// with it.
    pub(super) retry: Vec<Job>,
    pub(super) retry_at: Instant,
    pub(super) backoff: Duration,
    /// A moving average of how long a batch takes, to skip waiters who would hear
    /// too late.
    pub(super) batch_cost: Duration,
    pub(super) packs_written: u64,
    /// Bytes of the packs written since the repository was last opened: gix maps
    /// each pack whole and keeps it mapped, and the trees a commit reads make up
    /// most of a pack, so its pages stay in this process's RSS until it is opened
    /// again (see [`Writer::maintain`]).
    pub(super) pack_bytes_mapped: u64,
    /// A fold of the packs, or a `git repack`, running in the background.
    pub(super) repack: Option<super::compact::Running>,
    /// What the fold needs to know of the packs written ([`super::compact::Ledger`]).
    pub(super) ledger: super::compact::Ledger,
    /// Shared with [`StoreHandle::unavailable`].
    pub(super) failing: Arc<std::sync::Mutex<Option<String>>>,
    /// Reverts of denied writes not committed yet (their commit failed); retried
    /// with `retry_at`. While there are any, new commits wait in `withheld`.
    pub(super) reverts: Vec<PendingRevert>,
    /// Commits made while a revert is pending, oldest first: the outbox gets them
    /// together with the revert, so no push carries a denied change without it.
    pub(super) withheld: Vec<Unpushed>,
    /// What came after commits that may be denied later; see [`Touches`].
    pub(super) touches: Touches,
    /// The index of what the branch declares, when it is edited in place; always
    /// of `tree`.
    pub(super) declared: Option<super::in_place::DeclaredTree>,
    /// The repository's lock, held while this writer lives.
    pub(super) _lock: std::fs::File,
}

/// What a newer change replaces: the file, or for a change edited in place (whose
/// file may declare other objects) the object. The retry list, the notes of what
/// later changes left as it was, and reverts all key by it.
pub(super) fn supersedes(change: &Change) -> String {
    match &change.in_place {
        // Written where the path template says: the file is the object's.
        Some(in_place) if in_place.canonical != change.path.as_str() => {
            let key = &in_place.key;
            format!(
                "{}\0{}\0{}\0{}",
                key.group,
                key.kind,
                key.namespace.as_deref().unwrap_or_default(),
                key.name
            )
        }
        _ => change.path.as_str().to_owned(),
    }
}

/// Niceness of the writer thread (and so of the fold's thread it starts) and of
/// `git repack`, relative to the request path.
pub(super) const WRITER_NICENESS: i32 = 19;

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Sleeps until `at`, or forever without one.
pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Writer {
    pub(super) fn new(
        settings: StoreSettings,
        opened: Opened,
        rx: mpsc::Receiver<Job>,
        control: mpsc::UnboundedReceiver<Control>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Opened {
            repo,
            branch_ref,
            tip,
            tree,
            reverts,
            withheld,
            lock,
            declared,
        } = opened;
        Self {
            repo,
            settings,
            branch_ref,
            tip,
            tree,
            rx,
            control,
            metrics,
            retry: Vec::new(),
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
            batch_cost: Duration::ZERO,
            packs_written: 0,
            pack_bytes_mapped: 0,
            repack: None,
            ledger: Default::default(),
            failing: Arc::default(),
            reverts,
            withheld,
            touches: Touches::default(),
            declared,
            _lock: lock,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            while let Ok(control) = self.control.try_recv() {
                self.handle(control);
            }
            if !self.reverts.is_empty() && Instant::now() >= self.retry_at {
                self.settle_reverts();
            }
            if !self.retry.is_empty() && Instant::now() >= self.retry_at {
                let retry = std::mem::take(&mut self.retry);
                self.commit_batch(retry, true);
                continue;
            }
            let retry_at =
                (!self.retry.is_empty() || !self.reverts.is_empty()).then_some(self.retry_at);
            let next = tokio::select! {
                biased;
                Some(control) = self.control.recv() => {
                    self.handle(control);
                    continue;
                }
                job = self.rx.recv() => job,
                () = sleep_until_some(retry_at) => continue,
            };
            let Some(first) = next else { break };
            let mut batch = vec![first];
            while batch.len() < self.settings.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // Nobody waits for these: gather more for a while, so a steady trickle of
            // writes makes a few large batches instead of one pack per write. A waiting
            // change ends the gathering at once, `wait: push` included: committing it
            // while a push is in flight means the next push can start the moment this
            // one ends (gathering until then measured slower: docs/performance.md).
            let linger_until = Instant::now() + self.settings.linger;
            let mut anyone_waits = batch.iter().any(|j| j.waiter.is_some());
            while batch.len() < self.settings.max_batch && !anyone_waits {
                match tokio::time::timeout_at(linger_until.into(), self.rx.recv()).await {
                    Ok(Some(job)) => {
                        anyone_waits = job.waiter.is_some();
                        batch.push(job);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            self.metrics.queue_depth.dec_by(batch.len() as i64);
            self.commit_batch(batch, false);
            self.maintain();
        }
        if !self.retry.is_empty() {
            // One last try before exit, without waiting out the backoff.
            let retry = std::mem::take(&mut self.retry);
            self.commit_batch(retry, true);
        }
        if !self.reverts.is_empty() && !self.settle_reverts() {
            tracing::error!(
                reverts = self.reverts.len(),
                withheld = self.withheld.len(),
                "shutting down with denied writes not reverted; their commits stay local and unpushed, and are pushed after the next start unless reverted by hand"
            );
        }
        if let Some(running) = self.repack.take() {
            // Stopped part way, a fold removes what it wrote: the packs stay as they are.
            self.ledger.stop();
            running.wait();
        }
        if !self.retry.is_empty() {
            tracing::error!(
                lost = self.retry.len(),
                "shutting down with admitted changes that could not be committed; they are only in the cluster now"
            );
        }
    }

    pub(super) fn handle(&mut self, control: Control) {
        match control {
            Control::Replay { onto, reply } => {
                let result = self.replay(onto);
                if let Err(error) = &result {
                    self.count_error(error.label(), 1);
                }
                let _ = reply.send(result);
            }
            Control::Pushed { commit } => {
                let tracking = tracking_ref(&self.settings.branch);
                if let Err(e) = self.repo.reference(
                    tracking.as_str(),
                    commit,
                    PreviousValue::Any,
                    "kubescribe: pushed",
                ) {
                    tracing::warn!(error = %error_chain(&e), "pushed, but cannot record it in the tracking ref; a restart pushes again (a no-op)");
                }
            }
            Control::Revert(revert) => {
                self.reverts.push(*revert);
                self.settle_reverts();
            }
            Control::Propose(job) => self.propose(*job),
            Control::MoveReview {
                branch,
                from,
                to,
                reply,
            } => {
                let _ = reply.send(self.move_review(&branch, from, to));
            }
        }
    }

    pub(super) fn count_error(&self, reason: &'static str, by: u64) {
        self.metrics
            .store_errors
            .get_or_create(&crate::metrics::ErrorLabels { reason })
            .inc_by(by);
    }

    pub(super) fn commit_batch(&mut self, batch: Vec<Job>, is_retry: bool) {
        // A waiter who would hear after its deadline has been denied already, or will
        // be: committing its change would record a write that never happened.
        let cutoff = Instant::now() + self.batch_cost * 2;
        // Claiming is the last check: once claimed, the caller waits for the outcome.
        let (jobs, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| {
            job.waiter
                .as_ref()
                .is_none_or(|w| w.deadline > cutoff && !w.reply.is_closed() && w.claim.take())
        });
        if !expired.is_empty() {
            self.count_error("expired", expired.len() as u64);
        }
        for job in expired {
            if let Some(waiter) = job.waiter {
                let _ = waiter.reply.send(Err(StoreError::Expired));
            }
        }
        if jobs.is_empty() {
            return;
        }
        self.metrics.batch_size.observe(jobs.len() as f64);
        // Objects left in memory by a failed batch must not end up in this one's pack.
        self.repo.objects.reset_object_memory();

        let started = Instant::now();
        let applied = match self.apply(&jobs) {
            // A concurrent repack may have moved objects out of a pack gix still
            // had open; a fresh view of the packs settles that.
            Err(StoreError::Write { reason })
                if self.repack.is_some() || self.packs_written == 0 =>
            {
                tracing::debug!(%reason, "retrying a batch on a reopened repository");
                self.reopen();
                self.apply(&jobs)
            }
            other => other,
        };
        let result = applied.and_then(|(outcomes, tip, tree)| {
            if let Some(gate) = &self.settings.before_durable {
                gate.pass();
            }
            if self
                .settings
                .failing_disk
                .as_ref()
                .is_some_and(|s| s.is_on())
            {
                return Err(StoreError::Sync {
                    reason: "No space left on device (injected by a test)".to_owned(),
                });
            }
            self.make_durable(tip, tree)?;
            Ok(outcomes)
        });
        let elapsed = started.elapsed();
        self.batch_cost = (self.batch_cost * 4 + elapsed) / 5;
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = result
            .as_ref()
            .err()
            .map(|e| format!("{e}; {}", e.advice()));
        match result {
            Ok(outcomes) => {
                let commits = outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Committed { .. }))
                    .count();
                self.metrics.commits.inc_by(commits as u64);
                if is_retry {
                    self.backoff = MIN_BACKOFF;
                    tracing::info!(changes = jobs.len(), commits, "retried changes committed");
                } else if !self.retry.is_empty() {
                    // A newer write to the same object supersedes a change still
                    // waiting for its retry; replaying the old one later would undo it.
                    // (A file edited in place holds other objects, which do not.)
                    let objects: std::collections::HashSet<String> = jobs
                        .iter()
                        .flat_map(|j| match &j.bundle {
                            Some(bundle) => bundle.changes.iter().collect::<Vec<_>>(),
                            None => vec![&j.change],
                        })
                        .map(supersedes)
                        .collect();
                    self.retry
                        .retain(|j| !objects.contains(&supersedes(&j.change)));
                }
                tracing::debug!(
                    changes = jobs.len(),
                    commits,
                    elapsed_us = elapsed.as_micros() as u64,
                    "batch durable"
                );
                // Answer first: a caller who stopped listening (it was told "denied"
                // at its deadline while the batch ran) must not keep its commit, so
                // its revert is owed before anything of this batch is pushed.
                let mut commits = Vec::new();
                let mut tip_waiters = Vec::new();
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let denied = match job.waiter {
                        Some(waiter) => waiter.reply.send(Ok(outcome.clone())).is_err(),
                        None => false,
                    };
                    let at = (job.bundle.is_none() && job.revert.is_none()).then(|| {
                        let ticket = job.push_waiter.as_ref().map(|w| w.ticket);
                        self.touches
                            .note(&supersedes(&job.change), &outcome, ticket)
                    });
                    match outcome {
                        Outcome::Committed { commit } if denied && job.bundle.is_none() => {
                            self.count_error("late", 1);
                            self.reverts.push(PendingRevert {
                                change: job.change.without_body(),
                                revert: Revert {
                                    commit,
                                    reason: "The write was denied because this commit was not durable before the apiserver's deadline.".to_owned(),
                                    after: None,
                                },
                                ticket: None,
                                at,
                                // Reverted right below, before this batch is pushed.
                                note: None,
                            });
                            commits.push(Unpushed {
                                commit,
                                waiters: Vec::new(),
                            });
                        }
                        Outcome::Committed { commit } => commits.push(Unpushed {
                            commit,
                            waiters: job.push_waiter.into_iter().collect(),
                        }),
                        Outcome::Unchanged => tip_waiters.extend(job.push_waiter),
                        Outcome::ParentMissing => {}
                        Outcome::Refused { reason } => {
                            self.count_error("refused", 1);
                            tracing::error!(path = %job.change.path, %reason, "change not recorded");
                        }
                    }
                }
                self.publish(commits, tip_waiters);
                self.settle_reverts();
            }
            Err(error) => {
                self.count_error(error.label(), 1);
                if matches!(error, StoreError::Branch { .. }) {
                    // Someone else moved the branch: continue from where it is now.
                    self.reload_tip();
                }
                let mut kept = 0;
                for job in jobs {
                    match job.waiter {
                        Some(waiter) => {
                            let _ = waiter.reply.send(Err(error.clone()));
                        }
                        None => {
                            kept += 1;
                            // The retry list has its own limit (queueCapacity);
                            // keeping the queue's bytes would starve new writes
                            // for as long as the disk fails.
                            let mut job = job;
                            job._queued_bytes = None;
                            self.retry.push(job);
                        }
                    }
                }
                let overflow = self
                    .retry
                    .len()
                    .saturating_sub(self.settings.queue_capacity);
                if overflow > 0 {
                    self.retry.drain(..overflow);
                    self.count_error("retry_overflow", overflow as u64);
                    tracing::error!(dropped = overflow, "too many changes waiting for a retry; the oldest are dropped and only in the cluster now");
                }
                self.metrics.retry_depth.set(self.retry.len() as i64);
                tracing::error!(%error, retrying = kept, retry_in_ms = self.backoff.as_millis() as u64, "batch not committed");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return;
            }
        }
        self.metrics.retry_depth.set(self.retry.len() as i64);
    }

    pub(super) fn reload_tip(&mut self) {
        match read_tip(&self.repo, &self.branch_ref) {
            Ok((tip, tree)) => {
                tracing::warn!(tip = ?tip, "branch moved by another process; continuing from its new tip");
                if let Some(declared) = &mut self.declared {
                    declared.advance(&self.repo, self.tree, tree);
                }
                self.tip = tip;
                self.tree = tree;
                self.follow_sops();
            }
            Err(e) => tracing::error!(error = %e, "cannot read the branch after a failed update"),
        }
    }

    /// Writes the batch's objects as one pack, flushes it, moves the branch to `tip`
    /// by compare-and-swap, and flushes the branch. Once the branch moved, `tip` and
    /// `tree` are ours, even if the last flush fails.
    pub(super) fn make_durable(
        &mut self,
        tip: Option<ObjectId>,
        tree: ObjectId,
    ) -> Result<(), StoreError> {
        let objects = self.repo.objects.reset_object_memory().unwrap_or_default();
        let Some(tip) = tip.filter(|tip| Some(*tip) != self.tip) else {
            return Ok(());
        };
        // A replay onto the remote's tip with nothing of ours left writes no objects.
        let written = if objects.is_empty() {
            None
        } else {
            Some(self.write_pack(&objects)?)
        };
        let previous = match self.tip {
            Some(old) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(old)),
            None => PreviousValue::MustNotExist,
        };
        let moved = self
            .repo
            .reference(
                self.branch_ref.as_ref(),
                tip,
                previous,
                "kubescribe: record",
            )
            .map_err(|e| StoreError::Branch {
                branch: self.settings.branch.clone(),
                reason: error_chain(&e),
            });
        // Named by the branch or not, the pack needs no protection any more.
        if let Some(Err(e)) = written.map(|w| w.release()) {
            tracing::warn!(error = %e, "cannot remove a pack's .keep file; packs are never folded with that one");
        }
        moved?;
        if let Some(declared) = &mut self.declared {
            declared.advance(&self.repo, self.tree, tree);
        }
        self.tip = Some(tip);
        self.tree = tree;
        self.follow_sops();
        self.sync_ref(&self.branch_ref.clone())
    }

    /// Writes `objects` as one pack and flushes it; it keeps its `.keep` until a
    /// ref names what it holds.
    pub(super) fn write_pack(
        &mut self,
        objects: &gix::odb::memory::Storage,
    ) -> Result<pack::Written, StoreError> {
        let repo = &self.repo;
        let outside = |id: &ObjectId| repo.find_object(*id).ok().map(|o| o.detach().data);
        // Not while a fold removes packs: this batch's pack may be one of them
        // (the same objects make the same pack), which `pack::write` would then
        // take for complete.
        let _fold_waits = self.ledger.writing();
        let mut written = pack::write(
            &self.repo.git_dir().join("objects"),
            objects,
            self.repo.object_hash(),
            &outside,
        )
        .map_err(|e| StoreError::Write {
            reason: e.to_string(),
        })?;
        if let Some(pack) = written.pack() {
            self.ledger
                .written(pack.with_extension(""), std::mem::take(&mut written.hints));
        }
        self.packs_written += 1;
        self.pack_bytes_mapped += written.bytes;
        written.sync().map_err(|e| StoreError::Sync {
            reason: e.to_string(),
        })?;
        Ok(written)
    }

    /// Flushes ref `name`'s file and its directory, once it moved.
    pub(super) fn sync_ref(&self, name: &gix::refs::FullName) -> Result<(), StoreError> {
        let ref_file = self.repo.git_dir().join(name.as_bstr().to_string());
        File::open(&ref_file)
            .and_then(|f| f.sync_all())
            .and_then(|()| File::open(ref_file.parent().unwrap_or(&self.settings.path))?.sync_all())
            .map_err(|e| StoreError::Sync {
                reason: e.to_string(),
            })
    }

    /// Folds the per-batch packs together now and then, in the background
    /// ([`super::compact`]), or has `git repack` do it when the fold cannot. Both are
    /// safe next to the writer: they rewrite whole packs only, and a pack no branch
    /// names yet keeps its `.keep` until it is named. When either ends, the
    /// repository is reopened so gix sees exactly the packs on disk.
    pub(super) fn maintain(&mut self) {
        if let Some(running) = self.repack.take() {
            use super::compact::Next;
            let ended = match running.try_end() {
                Ok(ended) => ended,
                Err(running) => {
                    self.repack = Some(running);
                    return;
                }
            };
            let (next, result) = ended.report();
            self.metrics.store_folded(result);
            match next {
                Next::Nothing => {}
                Next::Reopen => self.reopen(),
                Next::RunGit => {
                    self.start_git_repack();
                    return;
                }
            }
        }
        // Packs written since the last open stay mapped (and their pages resident)
        // as long as this handle lives; a fresh one maps only what it reads next.
        if self.settings.reopen_after_pack_bytes > 0
            && self.pack_bytes_mapped >= self.settings.reopen_after_pack_bytes
        {
            self.reopen();
        }
        if self.settings.fold_after_packs == 0
            || self.packs_written < self.settings.fold_after_packs
        {
            return;
        }
        self.packs_written = 0;
        match super::compact::Running::fold(
            self.settings.path.clone(),
            self.repo.object_hash(),
            self.ledger.clone(),
        ) {
            Ok(running) => self.repack = Some(running),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start folding packs; they accumulate until the next try")
            }
        }
    }

    fn start_git_repack(&mut self) {
        match super::compact::Running::git(&self.settings.path, WRITER_NICENESS) {
            Ok(running) => self.repack = Some(running),
            Err(e) => {
                tracing::warn!(error = %e, "cannot run git repack; packs accumulate until the next try")
            }
        }
    }

    pub(super) fn reopen(&mut self) {
        match open_repository(&self.settings.path) {
            Ok(repo) => {
                self.repo = repo;
                self.pack_bytes_mapped = 0;
                self.metrics.store_reopens.inc();
            }
            Err(e) => {
                // Tried again after as many new packs, not after every batch.
                self.pack_bytes_mapped = 0;
                tracing::error!(error = %e, "cannot reopen the repository; keeping the old handle")
            }
        }
    }
}
