//! Review commits: a change committed on a review branch of its own (see
//! [`crate::review`]) instead of the rule's branch.
//!
//! Invariants: a review commit never moves the rule's branch, its tree, its index
//! or its outbox; the writer only adds objects and moves the review branch, by
//! compare-and-swap, after the objects are durable. A new review branch starts at
//! the rule's branch as the writer has it; a review branch that exists (a session)
//! gets the commit on top of its own tip.

use gix::hash::ObjectId;
use gix::refs::transaction::{Change as RefChange, PreviousValue, RefEdit, RefLog};
use tokio::sync::oneshot;

use super::writer::Writer;
use super::*;
use crate::manifest::Action;

/// A change to propose on `branch`.
pub(super) struct ReviewJob {
    pub(super) change: Change,
    pub(super) branch: String,
    /// Says which review the commit is of (see [`crate::review`]).
    pub(super) trailer: String,
    /// The object's file before the write, for a session's merge.
    pub(super) base: Option<Vec<u8>>,
    pub(super) reply: oneshot::Sender<Result<Proposed, StoreError>>,
}

/// What a review commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposed {
    /// `commit` is on the review branch, which pointed at `previous` before (`None`:
    /// the branch is new, and starts at the rule's branch).
    Committed {
        commit: ObjectId,
        previous: Option<ObjectId>,
    },
    /// The branch (or, for a new one, the rule's branch) already has this.
    Unchanged,
    /// Cannot be proposed as asked, and why (an edit in place that cannot be made).
    Refused { reason: String },
}

fn full_name(branch: &str) -> Result<gix::refs::FullName, StoreError> {
    gix::refs::FullName::try_from(format!("refs/heads/{branch}")).map_err(|e| StoreError::Branch {
        branch: branch.to_owned(),
        reason: e.to_string(),
    })
}

impl Writer {
    pub(super) fn propose(&mut self, job: ReviewJob) {
        let ReviewJob {
            change,
            branch,
            trailer,
            base,
            reply,
        } = job;
        if reply.is_closed() {
            return;
        }
        let mut result = self.commit_review(change.clone(), &branch, &trailer, base.as_deref());
        if matches!(result, Err(StoreError::Write { .. })) && self.repack.is_some() {
            // A repack may have moved objects out of a pack gix still had open.
            self.reopen();
            result = self.commit_review(change, &branch, &trailer, base.as_deref());
        }
        if let Err(error) = &result {
            self.count_error(error.label(), 1);
        }
        if let Err(Ok(Proposed::Committed { commit, previous })) = reply.send(result) {
            // Nobody will push it: its proposer gave up. Left on the local branch,
            // the next proposal there would build on a commit the remote never got.
            if let Err(e) = self.move_review(&branch, commit, previous) {
                tracing::warn!(%branch, error = %e, "cannot withdraw a review commit nobody waits for");
            }
        }
    }

    fn commit_review(
        &mut self,
        change: Change,
        branch: &str,
        trailer: &str,
        base: Option<&[u8]>,
    ) -> Result<Proposed, StoreError> {
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let name = full_name(branch)?;
        // Nothing a failed batch left in memory may reach this pack.
        self.repo.objects.reset_object_memory();
        let previous = match self
            .repo
            .try_find_reference(name.as_ref())
            .map_err(|e| write_error(&e))?
        {
            Some(mut reference) => {
                Some(reference.peel_to_commit().map_err(|e| write_error(&e))?.id)
            }
            None => None,
        };
        let (parent, tree) = match previous {
            Some(tip) => (
                Some(tip),
                self.repo
                    .find_commit(tip)
                    .and_then(|c| c.tree_id())
                    .map_err(|e| write_error(&e))?
                    .detach(),
            ),
            None if !self.reverts.is_empty() || !self.withheld.is_empty() => {
                // The branch holds a denied write until its revert is committed: a
                // review from here would propose that write too.
                return Ok(Proposed::Refused {
                    reason: "a denied write is being reverted on the branch right now; retry the write in a moment".to_owned(),
                });
            }
            None => (self.tip, self.tree),
        };
        let mut change = change;
        if previous.is_some() {
            if let Some(refused) = self.merge_into_session(&mut change, tree, base)? {
                return Ok(refused);
            }
        }
        let job = Job {
            change,
            waiter: None,
            push_waiter: None,
            revert: None,
            bundle: None,
            _queued_bytes: None,
            trailer: Some(trailer.to_owned()),
        };
        let (outcomes, _, _) = self.apply_on(std::slice::from_ref(&job), parent, tree)?;
        let commit = match outcomes.into_iter().next() {
            Some(Outcome::Committed { commit }) => commit,
            Some(Outcome::Refused { reason }) => return Ok(Proposed::Refused { reason }),
            Some(Outcome::ParentMissing) => {
                self.repo.objects.reset_object_memory();
                return Ok(Proposed::Refused {
                    reason: format!(
                        "{} has no file in git to scale; propose the object itself first",
                        job.change.path
                    ),
                });
            }
            Some(Outcome::Unchanged) | None => {
                self.repo.objects.reset_object_memory();
                return Ok(Proposed::Unchanged);
            }
        };
        let objects = self.repo.objects.reset_object_memory().unwrap_or_default();
        let written = self.write_pack(&objects)?;
        let expected = match previous {
            Some(old) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(old)),
            None => PreviousValue::MustNotExist,
        };
        let moved = self
            .repo
            .reference(name.as_ref(), commit, expected, "kubescribe: propose")
            .map_err(|e| StoreError::Branch {
                branch: branch.to_owned(),
                reason: error_chain(&e),
            });
        if let Err(e) = written.release() {
            tracing::warn!(error = %e, "cannot remove a pack's .keep file; packs are never folded with that one");
        }
        moved?;
        self.sync_ref(&name)?;
        Ok(Proposed::Committed { commit, previous })
    }

    /// In a session (a review branch with earlier writes), a whole-file write is
    /// the object as the cluster has it, which never got the session's earlier
    /// changes: written as it is, it would undo them. So only its own change (from
    /// `before`, the object before the write rendered alike, or else the rule's
    /// branch's file, to it) is merged into the session's file, as `git
    /// merge-file` does; where both change the same lines, it is refused. Edits in
    /// place are already changes of fields, applied to the session's file.
    fn merge_into_session(
        &self,
        change: &mut Change,
        session: ObjectId,
        before: Option<&[u8]>,
    ) -> Result<Option<Proposed>, StoreError> {
        let Action::Put(bytes) = &change.action else {
            return Ok(None);
        };
        if change.in_place.is_some() {
            return Ok(None);
        }
        let read_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let path = change.path.to_string();
        let on_branch = lookup(&self.repo, self.tree, &path).map_err(|e| read_error(&e))?;
        let current = lookup(&self.repo, session, &path).map_err(|e| read_error(&e))?;
        let (Some(on_branch), Some(current)) = (on_branch, current) else {
            // New in the session, or gone from the branch: the write says it all.
            return Ok(None);
        };
        if on_branch == current {
            return Ok(None);
        }
        let blob = |id: ObjectId| -> Result<Vec<u8>, StoreError> {
            Ok(self
                .repo
                .find_blob(id)
                .map_err(|e| read_error(&e))?
                .data
                .clone())
        };
        // The object before the write says best what the write changed: the
        // branch's file may be behind a merge kubescribe has not fetched yet.
        let base = match before {
            Some(before) => before.to_vec(),
            None => blob(on_branch)?,
        };
        match super::merge::merge(
            &std::env::temp_dir(),
            &blob(current)?,
            &base,
            bytes,
            super::merge::Conflicts::Refuse,
        ) {
            Ok(Some(merged)) => {
                change.action = Action::Put(merged);
                Ok(None)
            }
            Ok(None) => Ok(Some(Proposed::Refused {
                reason: format!(
                    "this write changes the same lines of {path} as an earlier write in your open pull request; change it there, or close that pull request and write again"
                ),
            })),
            Err(reason) => Err(StoreError::Write { reason }),
        }
    }

    /// Moves review branch `branch` from `from` back to `to` (`None`: deletes it),
    /// if nothing moved it meanwhile: a proposal that did not reach the remote.
    pub(super) fn move_review(
        &mut self,
        branch: &str,
        from: ObjectId,
        to: Option<ObjectId>,
    ) -> Result<(), StoreError> {
        let name = full_name(branch)?;
        let expected = PreviousValue::MustExistAndMatch(gix::refs::Target::Object(from));
        let edited = match to {
            Some(to) => self
                .repo
                .reference(
                    name.as_ref(),
                    to,
                    expected,
                    "kubescribe: proposal withdrawn",
                )
                .map(|_| ()),
            None => self
                .repo
                .edit_reference(RefEdit {
                    change: RefChange::Delete {
                        expected,
                        log: RefLog::AndReference,
                    },
                    name,
                    deref: false,
                })
                .map(|_| ()),
        };
        edited.map_err(|e| StoreError::Branch {
            branch: branch.to_owned(),
            reason: error_chain(&e),
        })
    }
}
