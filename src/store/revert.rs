//! Undoing the commits of writes that were denied after they were committed. A revert
//! is owed before anything made after the denied commit reaches the outbox, so no push
//! carries a denied change without its revert.

use std::time::Instant;

use gix::hash::ObjectId;

use super::*;
use crate::manifest::Change;
use crate::outbox::{Outbox, PushWaiter, Unpushed};

/// A recorded change whose write was denied after all (its push did not land in
/// time): the file goes back to what it was before, unless a newer change replaced
/// it meanwhile.
#[derive(Clone)]
pub(super) struct Revert {
    pub(super) commit: ObjectId,
    pub(super) reason: String,
}

/// A revert the writer owes: committed before any later commit is given to the
/// outbox, retried like a failed batch until it is.
pub(super) struct PendingRevert {
    /// The denied change, without its body (the revert restores the file before it).
    pub(super) change: Change,
    pub(super) revert: Revert,
    /// The outbox hold to lift once the revert is appended.
    pub(super) ticket: Option<u64>,
}

/// The blobs `path` had in `commit` and in its parent.
#[allow(clippy::type_complexity)]
pub(super) fn revert_edit(
    repo: &gix::Repository,
    commit: ObjectId,
    path: &str,
) -> Result<(Option<ObjectId>, Option<ObjectId>), Box<dyn std::error::Error + Send + Sync>> {
    let found = repo.find_commit(commit)?;
    let wrote = lookup(repo, found.tree_id()?.detach(), path)?;
    let before = match found.parent_ids().next() {
        Some(parent) => {
            let parent_tree = repo.find_commit(parent)?.tree_id()?.detach();
            lookup(repo, parent_tree, path)?
        }
        None => None,
    };
    Ok((wrote, before))
}

/// `revert update v1 ConfigMap team-a/web`, why, and the trailers.
pub(super) fn revert_message(change: &Change, revert: &Revert) -> String {
    format!(
        "revert {verb} {api_version} {kind} {object}\n\n{reason}\n\nReverts: {commit}\nAdmission-Uid: {uid}\n",
        verb = change.verb.as_str(),
        api_version = change.api_version,
        kind = change.kind,
        object = change.object_ref(),
        reason = revert.reason,
        commit = revert.commit,
        uid = one_line(&change.uid),
    )
}

impl Writer {
    /// Commits the pending reverts as one batch, then gives the outbox what was
    /// withheld and the reverts, lifting their holds. False when it failed (retried
    /// at `retry_at`, like a failed batch).
    pub(super) fn settle_reverts(&mut self) -> bool {
        if self.reverts.is_empty() {
            return true;
        }
        if let Some(gate) = &self.settings.before_revert {
            gate.pass();
        }
        // A replay since the denial renamed the commit: revert what the branch has.
        if let Some(outbox) = &self.settings.outbox {
            for pending in &mut self.reverts {
                if let Some(commit) = pending.ticket.and_then(|t| outbox.commit_of(t)) {
                    pending.revert.commit = commit;
                }
            }
        }
        let jobs: Vec<Job> = self
            .reverts
            .iter()
            .map(|pending| Job {
                change: pending.change.clone(),
                waiter: None,
                push_waiter: None,
                revert: Some(pending.revert.clone()),
                bundle: None,
                _queued_bytes: None,
            })
            .collect();
        self.repo.objects.reset_object_memory();
        let result = self.apply(&jobs).and_then(|(outcomes, tip, tree)| {
            self.make_durable(tip, tree)?;
            Ok(outcomes)
        });
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(error) => {
                self.repo.objects.reset_object_memory();
                self.count_error(error.label(), 1);
                tracing::error!(%error, reverts = self.reverts.len(), retry_in_ms = self.backoff.as_millis() as u64, "cannot revert denied writes yet; nothing is pushed until they are");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return false;
            }
        };
        let pending = std::mem::take(&mut self.reverts);
        let mut tickets = Vec::new();
        let mut commits = std::mem::take(&mut self.withheld);
        for (pending, outcome) in pending.into_iter().zip(outcomes) {
            tickets.extend(pending.ticket);
            match outcome {
                Outcome::Committed { commit } => {
                    self.metrics.commits.inc();
                    self.metrics.denied_reverted.inc();
                    tracing::warn!(path = %pending.change.path, denied = %pending.revert.commit, revert = %commit, reason = %pending.revert.reason, "reverted a denied write");
                    commits.push(Unpushed {
                        commit,
                        waiters: Vec::new(),
                    });
                }
                _ => {
                    tracing::info!(path = %pending.change.path, denied = %pending.revert.commit, "a denied write was already replaced by a newer change; nothing to revert");
                }
            }
        }
        if let Some(outbox) = &self.settings.outbox {
            outbox.append_reverts(commits, &tickets);
            self.count_unpushed(outbox);
        }
        true
    }

    pub(super) fn count_unpushed(&self, outbox: &Outbox) {
        self.metrics
            .unpushed
            .get_or_create(&crate::metrics::RepositoryLabels {
                repository: self.settings.name.clone(),
            })
            .set(outbox.len() as i64);
    }

    /// Gives durable commits to the outbox, or keeps them back while a revert is
    /// pending (they reach the outbox with it).
    pub(super) fn publish(&mut self, commits: Vec<Unpushed>, tip_waiters: Vec<PushWaiter>) {
        let Some(outbox) = self.settings.outbox.clone() else {
            return;
        };
        if self.reverts.is_empty() {
            outbox.append(commits, tip_waiters, self.tip);
            self.count_unpushed(&outbox);
            return;
        }
        self.withheld.extend(commits);
        match self.withheld.last_mut() {
            Some(last) => last.waiters.extend(tip_waiters),
            None => outbox.append(Vec::new(), tip_waiters, self.tip),
        }
    }
}
