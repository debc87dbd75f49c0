//! The upgrade path to intent-only repositories: files of the control plane's own
//! objects that an earlier kubescribe (or an earlier `ignore` setting) put in git are
//! removed in one commit at start, authored by kubescribe, listing each file and why.
//!
//! Invariants: a file goes only when the cluster's object at its path is the control
//! plane's by [`crate::intent`] (the policy that keeps such objects out in the first
//! place), the file is on the branch, and its last change is a commit kubescribe
//! authored itself (its reconciler's): a person's recorded write, or a file a person
//! committed, stays. It runs only where the
//! configuration says so (`reconcile.removeControlPlaneFiles`; unset, only for
//! repositories kubescribe started empty), since a GitOps tool that prunes deletes
//! what leaves git. The objects themselves are never touched.

use super::*;
use crate::manifest::{Coordinates, Verb};
use crate::policy::{Decision, SkipReason};

/// A control-plane object's file a cleanup may remove, and why it is the control
/// plane's.
pub(super) type Candidate = (Change, String);

impl Reconciler {
    /// Notes where `write`'s object (one the snapshot listed and no rule records)
    /// would have its file in each target, when the policy says it is the control
    /// plane's.
    pub(super) fn note_control_plane(
        &self,
        write: &crate::policy::Write,
        report: &mut SnapshotReport,
    ) {
        let Decision::Skip(SkipReason::ControlPlane(why)) =
            crate::policy::decide(write, &self.policy)
        else {
            return;
        };
        report
            .control_plane
            .resize_with(self.targets.len(), Vec::new);
        for (target, (layout, _)) in self.targets.iter().enumerate() {
            let Ok(path) = layout.place(Coordinates {
                namespace: write.namespace.as_deref().filter(|ns| !ns.is_empty()),
                group: &write.resource.group,
                resource: &write.resource.resource,
                name: &write.name,
            }) else {
                continue;
            };
            let change = Change {
                path,
                action: Action::Remove,
                verb: Verb::Delete,
                api_version: write.kind.api_version(),
                kind: write.kind.kind.clone(),
                namespace: write.namespace.clone(),
                name: write.name.clone(),
                user: RECONCILE_USER.to_owned(),
                groups: Vec::new(),
                uid: write.uid.clone(),
                version: None,
                in_place: None,
            };
            report.control_plane[target].push((change, why.clone()));
        }
    }

    /// Removes, in one commit per target that cleans, the noted files kubescribe
    /// wrote on its own; elsewhere says how many there are and what to set. Returns
    /// how many went. Never fails the snapshot: what cannot be done is logged and
    /// tried again at the next start.
    pub(super) async fn remove_control_plane(&self, candidates: Vec<Vec<Candidate>>) -> usize {
        let mut removed = 0;
        for (target, candidates) in candidates.into_iter().enumerate() {
            if candidates.is_empty() {
                continue;
            }
            let clean = self
                .clean_control_plane
                .get(target)
                .copied()
                .unwrap_or(false);
            let store = &self.targets[target].1;
            let paths: Vec<String> = candidates
                .iter()
                .map(|(change, _)| change.path.as_str().to_owned())
                .collect();
            // Only the files on the branch, and, to remove, only kubescribe's own:
            // the history is read only then.
            let found = match blocking(|| store.written_by_kubescribe(&paths, clean)) {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, advice = error.advice(), repository = target, "cannot look for files of the control plane's own objects; trying again at the next start");
                    continue;
                }
            };
            let mut gone: Vec<Candidate> = candidates
                .into_iter()
                .filter(|(change, _)| found.contains(change.path.as_str()))
                .collect();
            if gone.is_empty() {
                continue;
            }
            gone.sort_by(|a, b| a.0.path.as_str().cmp(b.0.path.as_str()));
            gone.dedup_by(|a, b| a.0.path == b.0.path);
            if !clean {
                tracing::warn!(
                    files = gone.len(),
                    repository = target,
                    "git holds files of the control plane's own objects; set reconcile.removeControlPlaneFiles: true to remove those kubescribe recorded on its own in one commit (see docs/operations.md first if your GitOps tool prunes)"
                );
                continue;
            }
            let mut message = format!(
                "reconcile: remove {} {} of the control plane's own objects\n\nkubescribe records what people write. These files hold objects the control plane\nmade and keeps, which an earlier kubescribe recorded; a GitOps tool applying them\nwould take them over. The objects stay in the cluster; only their files leave git\n(reconcile.removeControlPlaneFiles).\n\n",
                gone.len(),
                if gone.len() == 1 { "file" } else { "files" }
            );
            for (change, why) in &gone {
                message.push_str(&format!("- {}: {why}\n", change.path));
            }
            message.push_str("\nKubescribe-Reconcile: control-plane\n");
            let count = gone.len();
            let changes = gone.into_iter().map(|(change, _)| change).collect();
            match self.commit(target, changes, message).await {
                Ok(true) => {
                    tracing::warn!(
                        removed = count,
                        repository = target,
                        "removed files of the control plane's own objects an earlier kubescribe recorded"
                    );
                    removed += count;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, repository = target, "cannot remove files of the control plane's own objects; trying again at the next start");
                }
            }
        }
        removed
    }
}
