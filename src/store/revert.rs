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
    /// Where the denied commit stands in [`Touches`], when known: a file a later
    /// admitted change left as the commit did (a delete of a file a cascade already
    /// removed) is not reverted.
    pub(super) after: Option<u64>,
}

/// A revert the writer owes: committed before any later commit is given to the
/// outbox, retried like a failed batch until it is.
pub(super) struct PendingRevert {
    /// The denied change, without its body (the revert restores the file before it).
    pub(super) change: Change,
    pub(super) revert: Revert,
    /// The outbox hold to lift once the revert is appended.
    pub(super) ticket: Option<u64>,
    /// Where the denied change stands in [`Touches`], when the writer knows.
    pub(super) at: Option<u64>,
    /// Its note on disk (see [`super::denials`]), removed once the revert is durable.
    pub(super) note: Option<std::path::PathBuf>,
}

/// What came after a commit that may be denied later: a change that found the file
/// already as it wanted (no commit) was admitted with that content, and reverting
/// the denied commit under it would leave git disagreeing with the cluster. (A later
/// commit is seen by the revert itself: the file's blob differs.)
#[derive(Default)]
pub(super) struct Touches {
    seq: u64,
    /// Path → the position of its last change that made no commit.
    unchanged: std::collections::HashMap<String, u64>,
    /// `wait: push` ticket → the position of its commit.
    tickets: std::collections::HashMap<u64, u64>,
}

/// Beyond this many entries a map starts over: a revert then decides by the file's
/// content alone, as it would without these notes.
const TOUCHES_MAX: usize = 65_536;

impl Touches {
    /// Notes one admitted change's outcome; returns its position.
    pub(super) fn note(&mut self, path: &str, outcome: &Outcome, ticket: Option<u64>) -> u64 {
        self.seq += 1;
        match outcome {
            Outcome::Unchanged => {
                if self.unchanged.len() >= TOUCHES_MAX {
                    self.unchanged.clear();
                }
                self.unchanged.insert(path.to_owned(), self.seq);
            }
            Outcome::Committed { .. } => {
                if let Some(ticket) = ticket {
                    if self.tickets.len() >= TOUCHES_MAX {
                        self.tickets.clear();
                    }
                    self.tickets.insert(ticket, self.seq);
                }
            }
            Outcome::ParentMissing | Outcome::Refused { .. } => {}
        }
        self.seq
    }

    /// Where `pending`'s commit stands, when known.
    fn position(&self, pending: &PendingRevert) -> Option<u64> {
        pending
            .at
            .or_else(|| pending.ticket.and_then(|t| self.tickets.get(&t).copied()))
    }

    /// Whether a change admitted after `pending`'s commit left the file as it is.
    fn kept_since(&self, pending: &PendingRevert) -> bool {
        self.position(pending)
            .is_some_and(|at| self.kept_after(&super::writer::supersedes(&pending.change), at))
    }

    /// Whether a change admitted after position `at` left `path` as it was.
    pub(super) fn kept_after(&self, path: &str, at: u64) -> bool {
        self.unchanged
            .get(path)
            .is_some_and(|&unchanged| unchanged > at)
    }
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

/// Every file `commit` changed, with the blob it wrote (`None`: removed) and the file
/// before it, with its kind (`None`: added).
#[allow(clippy::type_complexity)]
pub(super) fn revert_edits(
    repo: &gix::Repository,
    commit: ObjectId,
) -> Result<
    Vec<(
        String,
        Option<ObjectId>,
        Option<(gix::objs::tree::EntryKind, ObjectId)>,
    )>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let found = repo.find_commit(commit)?;
    let tree = found.tree_id()?.detach();
    let parent_tree = match found.parent_ids().next() {
        Some(parent) => repo.find_commit(parent)?.tree_id()?.detach(),
        None => ObjectId::empty_tree(repo.object_hash()),
    };
    let mut changes = Vec::new();
    super::replay::diff_trees(repo, parent_tree, tree, "", &mut changes)?;
    changes
        .into_iter()
        .map(|(path, wrote)| {
            let before = lookup_entry(repo, parent_tree, &path)?;
            Ok((path, wrote.map(|(_, id)| id), before))
        })
        .collect()
}

/// `revert update v1 ConfigMap team-a/web`, why, and the trailers.
pub(super) fn revert_message(change: &Change, revert: &Revert) -> String {
    format!(
        "revert {verb} {api_version} {kind} {object}\n\n{reason}\n\nReverts: {commit}\nAdmission-Uid: {uid}\n",
        verb = change.verb.as_str(),
        api_version = one_line(&change.api_version),
        kind = one_line(&change.kind),
        object = one_line(&change.object_ref()),
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
        // A revert under a later admitted write with the same content is not owed.
        let mut tickets = Vec::new();
        let touches = &self.touches;
        let (kept, owed): (Vec<PendingRevert>, Vec<PendingRevert>) =
            std::mem::take(&mut self.reverts)
                .into_iter()
                .partition(|pending| touches.kept_since(pending));
        for pending in kept {
            tracing::info!(path = %pending.change.path, denied = %pending.revert.commit, "a later admitted write left the file as the denied one did; nothing to revert");
            tickets.extend(pending.ticket);
            if let Some(note) = &pending.note {
                super::denials::settled(note);
            }
        }
        // A note that names a commit this repository does not have (a note from
        // another repository, or damaged) has nothing to revert.
        let (owed, unknown): (Vec<PendingRevert>, Vec<PendingRevert>) = owed
            .into_iter()
            .partition(|pending| self.repo.find_commit(pending.revert.commit).is_ok());
        for pending in unknown {
            tracing::error!(path = %pending.change.path, denied = %pending.revert.commit, "a denied write names a commit the repository does not have; nothing to revert");
            tickets.extend(pending.ticket);
            if let Some(note) = &pending.note {
                super::denials::settled(note);
            }
        }
        self.reverts = owed;
        if self.reverts.is_empty() {
            if let Some(outbox) = &self.settings.outbox {
                outbox.append_reverts(std::mem::take(&mut self.withheld), &tickets);
                self.count_unpushed(outbox);
            }
            return true;
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
                revert: Some(Revert {
                    after: self.touches.position(pending),
                    ..pending.revert.clone()
                }),
                bundle: None,
                _queued_bytes: None,
                trailer: None,
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
        let mut commits = std::mem::take(&mut self.withheld);
        for (pending, outcome) in pending.into_iter().zip(outcomes) {
            tickets.extend(pending.ticket);
            if let Some(note) = &pending.note {
                super::denials::settled(note);
            }
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
    pub(super) fn publish(&mut self, mut commits: Vec<Unpushed>, mut tip_waiters: Vec<PushWaiter>) {
        let Some(outbox) = self.settings.outbox.clone() else {
            return;
        };
        // Now, not when a pending revert lets them into the outbox: holding them is
        // part of their wait for a push.
        crate::outbox::note_durable(
            commits
                .iter_mut()
                .flat_map(|c| c.waiters.iter_mut())
                .chain(&mut tip_waiters),
        );
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
