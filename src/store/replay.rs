//! Replaying unpushed commits onto the remote's tip when it moved: each commit's file
//! changes again, with its author and message, so history stays linear.
//!
//! Invariant: the newest record of an object wins, whoever pushes last. A commit
//! carries where its write stands in the object's history (trailers, see
//! [`crate::manifest::ObjectVersion`]); a replayed change to a file whose last remote
//! change is newer is left out, so another replica's newer record is never
//! overwritten with an older one.

use std::time::{SystemTime, UNIX_EPOCH};

use gix::bstr::BString;
use gix::hash::ObjectId;
use gix::objs::tree::EntryKind;

use super::sealed::Resealed;
use super::*;

pub(super) type TreeChange = (String, Option<(EntryKind, ObjectId)>);

/// How many remote commits a replay reads for the versions of what they changed.
const VERSIONS_READ_MAX: usize = 10_000;

/// What the remote did since `base` (our first unpushed commit's parent): for each
/// file it changed, the version of its newest record there (the newest commit of
/// that one file that says where its write stood), or `None` when no commit says.
#[allow(clippy::type_complexity)]
fn remote_versions(
    repo: &gix::Repository,
    onto: Option<ObjectId>,
    base: Option<ObjectId>,
) -> Result<
    std::collections::HashMap<String, Option<crate::manifest::ObjectVersion>>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let mut versions = std::collections::HashMap::new();
    let mut next = onto;
    let mut read = 0;
    while let Some(id) = next.filter(|id| Some(*id) != base) {
        read += 1;
        if read > VERSIONS_READ_MAX {
            tracing::warn!(read, "the remote has too many new commits to read their versions; older ones are not compared");
            break;
        }
        let commit = repo.find_commit(id)?;
        let decoded = commit.decode()?;
        let version =
            crate::manifest::ObjectVersion::from_message(&String::from_utf8_lossy(decoded.message));
        let parent = decoded.parents().next();
        let parent_tree = match parent {
            Some(parent) => repo.find_commit(parent)?.tree_id()?.detach(),
            None => ObjectId::empty_tree(repo.object_hash()),
        };
        let mut changes = Vec::new();
        diff_trees(repo, parent_tree, decoded.tree(), "", &mut changes)?;
        // A trailer per file (a watch's commit, however many files it ends up
        // changing) speaks for its file. Otherwise a version speaks for the one
        // object its commit changed; a commit of many files says nothing about each
        // of them (a person's, a reconcile snapshot), and neither does one without
        // trailers: the newest record that does counts.
        let single = changes.len() == 1;
        let mut of_paths =
            crate::manifest::ObjectVersion::of_paths(&String::from_utf8_lossy(decoded.message));
        for (path, _) in changes {
            let version = match of_paths.remove(&path) {
                Some(version) => Some(version),
                None if single => version.clone(),
                None => None,
            };
            // Newest first: the first version seen of a file is its latest.
            let newest = versions.entry(path).or_insert(None);
            if newest.is_none() {
                *newest = version;
            }
        }
        next = parent;
    }
    Ok(versions)
}

/// The files that differ between two trees: the new entry, or `None` for a removal.
pub(super) fn diff_trees(
    repo: &gix::Repository,
    old: ObjectId,
    new: ObjectId,
    prefix: &str,
    out: &mut Vec<TreeChange>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::collections::BTreeMap;
    if old == new {
        return Ok(());
    }
    let entries = |id: ObjectId| -> Result<
        BTreeMap<BString, (gix::objs::tree::EntryMode, ObjectId)>,
        Box<dyn std::error::Error + Send + Sync>,
    > {
        if id.is_empty_tree() {
            return Ok(BTreeMap::new());
        }
        let tree = repo.find_tree(id)?;
        let decoded = tree.decode()?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| (e.filename.to_owned(), (e.mode, e.oid.to_owned())))
            .collect())
    };
    let empty = ObjectId::empty_tree(repo.object_hash());
    let old_entries = entries(old)?;
    let new_entries = entries(new)?;
    let names: std::collections::BTreeSet<&BString> =
        old_entries.keys().chain(new_entries.keys()).collect();
    for name in names {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let before = old_entries.get(name).copied();
        let after = new_entries.get(name).copied();
        if before == after {
            continue;
        }
        let old_sub = before
            .filter(|(m, _)| m.is_tree())
            .map_or(empty, |(_, id)| id);
        let new_sub = after
            .filter(|(m, _)| m.is_tree())
            .map_or(empty, |(_, id)| id);
        if old_sub != new_sub {
            diff_trees(repo, old_sub, new_sub, &path, out)?;
        }
        match after {
            Some((mode, id)) if !mode.is_tree() => out.push((path, Some((mode.kind(), id)))),
            _ => {
                if before.is_some_and(|(m, _)| !m.is_tree()) {
                    out.push((path, None));
                }
            }
        }
    }
    Ok(())
}

impl Writer {
    /// Our in-place change of `path` (from `parent_tree` to `ours`) applied to the
    /// file as `tree` has it: where both changed the same lines, ours wins, except
    /// in a kustomization, whose entries are redone by name. `None` when there is
    /// nothing to merge (a side added or removed the file) or no YAML comes out; the
    /// caller then does what it does for any file.
    fn merge_into_theirs(
        &self,
        path: &str,
        parent_tree: ObjectId,
        tree: ObjectId,
        ours: Option<(EntryKind, ObjectId)>,
        revert: bool,
    ) -> Result<Option<(ObjectId, Vec<u8>)>, StoreError> {
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let repo = &self.repo;
        let (Some((_, ours)), Some(base), Some(current)) = (
            ours,
            lookup(repo, parent_tree, path).map_err(|e| write_error(&e))?,
            lookup(repo, tree, path).map_err(|e| write_error(&e))?,
        ) else {
            return Ok(None);
        };
        let read = |id: ObjectId| -> Result<Vec<u8>, StoreError> {
            Ok(repo
                .find_blob(id)
                .map_err(|e| write_error(&e))?
                .detach()
                .data)
        };
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if crate::declared::kustomization_file(name) {
            // Entries by the files they name, so a person's entries and removals stay.
            return Ok(crate::declared::edit::relist(
                &read(current)?,
                dir,
                &read(base)?,
                &read(ours)?,
            )
            .map(|merged| (current, merged)));
        }
        // Our edit redone on the remote's documents: a person's edit of a line next
        // to ours stays, which a line merge could not tell from a conflict.
        if let Some(redone) =
            crate::declared::edit::redo(&read(current)?, &read(base)?, &read(ours)?)
        {
            return Ok(Some((current, redone)));
        }
        // Where both changed the same lines: a record wins, as for any file; a
        // revert does not merge at all (the caller writes it whole).
        let conflicts = if revert {
            super::merge::Conflicts::Refuse
        } else {
            super::merge::Conflicts::Change
        };
        match super::merge::merge(
            &std::env::temp_dir(),
            &read(current)?,
            &read(base)?,
            &read(ours)?,
            conflicts,
        ) {
            Ok(Some(merged)) => Ok(Some((current, merged))),
            Ok(None) => {
                tracing::warn!(
                    path,
                    "our change and the remote's do not merge into YAML; ours is written whole"
                );
                Ok(None)
            }
            Err(error) => {
                tracing::warn!(path, %error, "cannot merge our change into the remote's file; ours is written whole");
                Ok(None)
            }
        }
    }

    /// Replays the outbox's commits onto `onto`, the remote's tip: each commit's file
    /// changes are applied again, with its author and message, and the branch moves
    /// to the result. Commits whose changes the remote already has disappear.
    pub(super) fn replay(&mut self, onto: Option<ObjectId>) -> Result<(), StoreError> {
        let Some(outbox) = self.settings.outbox.clone() else {
            return Ok(());
        };
        // Withheld commits sit on the branch after the outbox's: replaying only the
        // outbox would drop them. Settle the reverts first (that empties `withheld`).
        if !self.settle_reverts() {
            return Err(StoreError::Write {
                reason: "denied writes are waiting for their revert; replaying after that"
                    .to_owned(),
            });
        }
        // The fetch added a pack gix has not seen yet.
        self.reopen();
        self.repo.objects.reset_object_memory();
        let pending = outbox.take();
        let commits: Vec<ObjectId> = pending.iter().map(|u| u.commit).collect();
        let result = self
            .rebuild(&commits, onto)
            .and_then(|(renamed, tip, tree)| {
                let tip = tip.or(self.tip);
                self.make_durable(tip, tree)?;
                Ok(renamed)
            });
        match result {
            Ok(renamed) => {
                let replayed = renamed
                    .into_iter()
                    .zip(pending)
                    .map(|(commit, u)| (commit, u.waiters))
                    .collect();
                outbox.replace(replayed, onto);
                tracing::info!(repository = %self.settings.name, onto = ?onto, commits = commits.len(), tip = ?self.tip, "replayed local commits onto the remote's branch");
                Ok(())
            }
            Err(error) => {
                self.repo.objects.reset_object_memory();
                // The rebuild followed the remote's `.sops.yaml`; the branch is
                // still where it was.
                self.follow_sops();
                let unchanged = pending
                    .into_iter()
                    .map(|u| (Some(u.commit), u.waiters))
                    .collect();
                outbox.replace(unchanged, onto);
                Err(error)
            }
        }
    }

    /// New commits on `onto` with the changes of `commits`; for each, its new id, or
    /// `None` when it changed nothing there.
    #[allow(clippy::type_complexity)]
    pub(super) fn rebuild(
        &self,
        commits: &[ObjectId],
        onto: Option<ObjectId>,
    ) -> Result<(Vec<Option<ObjectId>>, Option<ObjectId>, ObjectId), StoreError> {
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let repo = &self.repo;
        let empty = ObjectId::empty_tree(repo.object_hash());
        let tree_of = |commit: ObjectId| -> Result<ObjectId, StoreError> {
            repo.find_commit(commit)
                .map_err(|e| write_error(&e))?
                .tree_id()
                .map(|id| id.detach())
                .map_err(|e| write_error(&e))
        };
        let mut tip = onto;
        let mut tree = match onto {
            Some(commit) => tree_of(commit)?,
            None => empty,
        };
        let root: gix::objs::Tree = if tree.is_empty_tree() {
            gix::objs::Tree::empty()
        } else {
            repo.find_tree(tree)
                .and_then(|t| t.decode().map(Into::into))
                .map_err(|e| write_error(&e))?
        };
        let objects = &repo.objects;
        let mut editor = gix::objs::tree::Editor::new(root, objects, repo.object_hash());
        let mut write_tree = |tree: &gix::objs::Tree| gix::objs::Write::write(objects, tree);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let base = match commits.first() {
            Some(&first) => repo
                .find_commit(first)
                .map_err(|e| write_error(&e))?
                .parent_ids()
                .next()
                .map(|id| id.detach()),
            None => None,
        };
        let theirs = remote_versions(repo, onto, base).map_err(|e| write_error(&e))?;
        // Secrets are encrypted for the recipients of the tree they land on.
        if let Some(sealer) = &self.settings.sealer {
            super::sealed::follow(sealer, repo, tree);
        }
        let mut renamed = Vec::with_capacity(commits.len());
        // Secrets encrypted again for the remote's recipients: their first blob,
        // and the new one, so a revert still finds what it undoes.
        let mut resealed: std::collections::HashMap<ObjectId, ObjectId> =
            std::collections::HashMap::new();
        for &id in commits {
            let found = repo.find_commit(id).map_err(|e| write_error(&e))?;
            let decoded = found.decode().map_err(|e| write_error(&e))?;
            let parent_tree = match decoded.parents().next() {
                Some(parent) => tree_of(parent)?,
                None => empty,
            };
            let original = gix::objs::Commit::try_from(decoded).map_err(|e| write_error(&e))?;
            let ours = crate::manifest::ObjectVersion::from_message(&String::from_utf8_lossy(
                &original.message,
            ));
            let of_paths = crate::manifest::ObjectVersion::of_paths(&String::from_utf8_lossy(
                &original.message,
            ));
            // A revert undoes its denied commit only where the file still holds what
            // that commit wrote (a newer record may have replaced both meanwhile).
            let reverts = String::from_utf8_lossy(&original.message)
                .lines()
                .find_map(|line| line.strip_prefix("Reverts: "))
                .and_then(|hex| ObjectId::from_hex(hex.trim().as_bytes()).ok());
            let mut changes = Vec::new();
            diff_trees(repo, parent_tree, original.tree, "", &mut changes)
                .map_err(|e| write_error(&e))?;
            let single = changes.len() == 1;
            let in_place = super::merge::is_in_place(&String::from_utf8_lossy(&original.message));
            for (path, entry) in changes {
                // A file edited in place is shared with people and other objects: our
                // change goes into the remote's version of it, as `git rebase` would.
                if in_place && theirs.contains_key(&path) {
                    match self.merge_into_theirs(
                        &path,
                        parent_tree,
                        tree,
                        entry,
                        reverts.is_some(),
                    )? {
                        Some((current, merged)) => {
                            put_blob(repo, &mut editor, &path, &merged, Some(current))?;
                            continue;
                        }
                        // A revert that does not merge is written whole: the denied
                        // change must not reach the remote, whatever else goes.
                        None if reverts.is_some() => {
                            tracing::error!(%path, commit = %id, "the revert of a denied change does not merge with the remote's file; its version is written whole");
                            if let Some((kind, blob)) = entry {
                                editor
                                    .upsert(path.split('/'), kind, blob)
                                    .map_err(|e| write_error(&e))?;
                            }
                            continue;
                        }
                        None => {}
                    }
                }
                // A watch's commit says where each of its files stands.
                let of_path = of_paths.get(&path);
                let keep_theirs = match (theirs.get(&path), &ours) {
                    (None, _) => false,
                    (Some(Some(newer)), _) if of_path.is_some() => {
                        of_path.is_some_and(|ours| newer.newer_than(ours) == Some(true))
                    }
                    (Some(_), _) if of_path.is_some() => false,
                    // A version speaks for its commit's one file.
                    (Some(Some(newer)), Some(ours)) if single => {
                        newer.newer_than(ours) == Some(true)
                    }
                    (Some(_), _) if single => false,
                    // A file of many (a cascade's removals, a reconcile bundle) the
                    // remote changed since: its record stays unless ours is from a
                    // later state of the cluster (resourceVersions are one etcd
                    // revision for every object).
                    (Some(Some(newer)), Some(ours)) => match (newer.after, ours.after) {
                        (Some(theirs), Some(ours)) => theirs > ours,
                        _ => true,
                    },
                    (Some(_), _) => true,
                };
                if keep_theirs {
                    tracing::info!(%path, commit = %id, "the remote has a newer record of this object; keeping it");
                    continue;
                }
                if let Some(denied) = reverts {
                    let wrote = revert_edit(repo, denied, &path)
                        .map(|(wrote, _)| wrote)
                        .map_err(|e| write_error(&e))?;
                    let now = lookup(repo, tree, &path).map_err(|e| write_error(&e))?;
                    if now != wrote && now != wrote.and_then(|w| resealed.get(&w).copied()) {
                        tracing::info!(%path, commit = %id, "the denied change a revert undoes is no longer there; nothing to revert");
                        continue;
                    }
                }
                if let Some((_, blob)) = entry {
                    if let Resealed::New(bytes) = self.reseal(&path, blob, tree)? {
                        let current = lookup(repo, tree, &path).map_err(|e| write_error(&e))?;
                        put_blob(repo, &mut editor, &path, &bytes, current)?;
                        let id = gix::objs::compute_hash(
                            repo.object_hash(),
                            gix::objs::Kind::Blob,
                            &bytes,
                        )
                        .map_err(|e| write_error(&e))?;
                        resealed.insert(blob, id);
                        continue;
                    }
                }
                match entry {
                    Some((kind, blob)) => editor.upsert(path.split('/'), kind, blob),
                    None => editor.remove(path.split('/')),
                }
                .map_err(|e| write_error(&e))?;
            }
            let new_tree = editor.write(&mut write_tree).map_err(|e| write_error(&e))?;
            if new_tree == tree {
                renamed.push(None);
                continue;
            }
            let commit = gix::objs::Commit {
                tree: new_tree,
                parents: tip.into_iter().collect(),
                committer: signature(
                    &self.settings.committer.name,
                    &self.settings.committer.email,
                    now,
                ),
                extra_headers: Vec::new(),
                ..original
            };
            let new_id = gix::objs::Write::write(objects, &commit).map_err(|e| write_error(&e))?;
            tip = Some(new_id);
            tree = new_tree;
            renamed.push(Some(new_id));
        }
        Ok((renamed, tip, tree))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn the_remote_s_versions_come_from_one_file_commits_and_from_per_file_trailers() {
        use crate::manifest::ObjectVersion;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        git(work, &["init", "-q", "-b", "main"]);
        let state = |uid: &str, rv: u64| ObjectVersion {
            uid: uid.to_owned(),
            created: "2026-01-01T00:00:00Z".to_owned(),
            after: Some(rv),
            state: true,
        };
        let commit = |files: &[&str], message: &str| {
            for file in files {
                std::fs::write(work.join(file), message).unwrap();
            }
            git(work, &["add", "-A"]);
            git(work, &["commit", "-q", "-m", message]);
            git(work, &["rev-parse", "HEAD"])
        };
        let base = commit(&["x.yaml"], "start");
        // Oldest first: a one-file commit, a commit of many with a trailer per file
        // (one file has none), then a one-file commit without trailers.
        commit(
            &["a.yaml"],
            &format!("one\n\n{}", state("u-a", 5).trailers()),
        );
        commit(
            &["a.yaml", "b.yaml", "c.yaml"],
            &format!(
                "many\n\nKubescribe-Reconcile: watch\n{}{}",
                state("u-a", 9).trailer_of("a.yaml"),
                state("u-b", 8).trailer_of("b.yaml")
            ),
        );
        // A watch's commit of many whose other changes git already had: one file.
        commit(
            &["d.yaml"],
            &format!(
                "many\n\nKubescribe-Reconcile: watch\n{}{}",
                state("u-a", 10).trailer_of("a.yaml"),
                state("u-d", 11).trailer_of("d.yaml")
            ),
        );
        let tip = commit(&["b.yaml"], "a person's edit");
        let repo = gix::open(work.join(".git")).unwrap();
        let id = |hex: &str| ObjectId::from_hex(hex.as_bytes()).unwrap();
        let versions = remote_versions(&repo, Some(id(&tip)), Some(id(&base))).unwrap();
        // a: its newest record says 9 (the commit of many), not 5.
        assert_eq!(versions["a.yaml"], Some(state("u-a", 9)));
        // b: the newest commit says nothing, so the newest that does counts.
        assert_eq!(versions["b.yaml"], Some(state("u-b", 8)));
        assert_eq!(versions["d.yaml"], Some(state("u-d", 11)));
        // c: no commit says.
        assert_eq!(versions["c.yaml"], None);
        assert!(!versions.contains_key("x.yaml"));
    }
}
