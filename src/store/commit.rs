//! Tree edits and commit objects: a batch's changes become blobs, trees and one commit
//! each, in memory, without moving the branch.

use std::borrow::Cow;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use gix::bstr::BString;
use gix::hash::ObjectId;
use gix::objs::tree::EntryKind;

use super::in_place::Staged;
use super::*;
use crate::manifest::{self, Action, Change};

/// Writes a blob into the batch's objects and puts it at `path`; false when the file
/// already has exactly these bytes.
pub(super) fn put_blob(
    repo: &gix::Repository,
    editor: &mut gix::objs::tree::Editor<'_>,
    path: &str,
    bytes: &[u8],
    current: Option<ObjectId>,
) -> Result<bool, StoreError> {
    let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
        reason: e.to_string(),
    };
    let id = gix::objs::compute_hash(repo.object_hash(), gix::objs::Kind::Blob, bytes)
        .map_err(|e| write_error(&e))?;
    if current == Some(id) {
        return Ok(false);
    }
    gix::objs::Write::write_buf_with_known_id(&repo.objects, gix::objs::Kind::Blob, bytes, id)
        .map_err(|e| write_error(&e))?;
    editor
        .upsert(path.split('/'), EntryKind::Blob, id)
        .map_err(|e| write_error(&e))?;
    Ok(true)
}

pub(super) fn lookup(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &str,
) -> Result<Option<ObjectId>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(lookup_entry(repo, tree, path)?
        .filter(|(kind, _)| *kind != EntryKind::Link)
        .map(|(_, id)| id))
}

/// The files of one tree, each directory decoded once: a bundle of thousands of
/// changes (a reconcile snapshot's) looks up every one of its files, and a
/// directory of thousands of entries decoded once per file made a snapshot
/// quadratic in the size of its directories.
pub(super) struct TreeFiles<'r> {
    repo: &'r gix::Repository,
    tree: ObjectId,
    /// Each directory read so far, by path (`""` is the root): its entries, or
    /// `None` when it is not a directory of the tree.
    dirs: std::collections::HashMap<String, Option<Entries>>,
}

/// A directory's entries by name.
type Entries = std::collections::HashMap<BString, (EntryKind, ObjectId)>;

impl<'r> TreeFiles<'r> {
    pub(super) fn new(repo: &'r gix::Repository, tree: ObjectId) -> Self {
        Self {
            repo,
            tree,
            dirs: std::collections::HashMap::new(),
        }
    }

    /// The blob at `path`, as [`lookup`] finds it.
    pub(super) fn lookup(
        &mut self,
        path: &str,
    ) -> Result<Option<ObjectId>, Box<dyn std::error::Error + Send + Sync>> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok(self
            .entries(dir)?
            .and_then(|entries| entries.get(name.as_bytes()))
            .filter(|(kind, _)| {
                !matches!(kind, EntryKind::Link | EntryKind::Tree | EntryKind::Commit)
            })
            .map(|(_, id)| *id))
    }

    fn entries(
        &mut self,
        dir: &str,
    ) -> Result<Option<&Entries>, Box<dyn std::error::Error + Send + Sync>> {
        if !self.dirs.contains_key(dir) {
            let id = if dir.is_empty() {
                Some(self.tree).filter(|t| !t.is_empty_tree())
            } else {
                let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir));
                self.entries(parent)?
                    .and_then(|entries| entries.get(name.as_bytes()))
                    .filter(|(kind, _)| *kind == EntryKind::Tree)
                    .map(|(_, id)| *id)
            };
            let entries = match id {
                Some(id) => {
                    let tree = self.repo.find_tree(id)?;
                    let mut entries = std::collections::HashMap::new();
                    for entry in tree.iter() {
                        let entry = entry?;
                        entries.insert(
                            entry.filename().to_owned(),
                            (entry.mode().kind(), entry.object_id()),
                        );
                    }
                    Some(entries)
                }
                None => None,
            };
            self.dirs.insert(dir.to_owned(), entries);
        }
        Ok(self.dirs.get(dir).and_then(Option::as_ref))
    }
}

/// The file at `path` of `tree`, with its kind (a plain, executable or link blob).
pub(super) fn lookup_entry(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &str,
) -> Result<Option<(EntryKind, ObjectId)>, Box<dyn std::error::Error + Send + Sync>> {
    if tree.is_empty_tree() {
        return Ok(None);
    }
    let mut tree = repo.find_tree(tree)?;
    let entry = tree.peel_to_entry_by_path(Path::new(path))?;
    Ok(entry
        .filter(|e| e.mode().is_blob() || e.mode().is_link())
        .map(|e| (e.mode().kind(), e.object_id())))
}

pub(super) fn signature(name: &str, email: &str, seconds: i64) -> gix::actor::Signature {
    gix::actor::Signature {
        name: BString::from(one_line(name).replace(['<', '>'], "")),
        email: BString::from(email.replace(['<', '>', '\n', ' '], "")),
        time: gix::date::Time { seconds, offset: 0 },
    }
}

pub(super) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// How many removed files a cascade's commit message names (the count is always there).
const CASCADE_LISTED: usize = 500;

/// `update apps/v1 Deployment team-a/web`, a body, and the trailers.
pub(super) fn commit_message(change: &Change, api_version: &str, kind: &str, body: &str) -> String {
    format!(
        "{verb} {api_version} {kind} {object}\n\n{body}Kubernetes-User: {user}\nKubernetes-Groups: {groups}\nAdmission-Uid: {uid}\n{version}",
        verb = change.verb.as_str(),
        // Every field of the subject comes from the request: one line each, so none
        // can add a line (or a trailer) to the message.
        api_version = one_line(api_version),
        kind = one_line(kind),
        object = one_line(&change.object_ref()),
        user = one_line(&change.user),
        groups = one_line(&change.groups.join(", ")),
        uid = one_line(&change.uid),
        version = change.version.as_ref().map_or_else(String::new, |v| {
            crate::manifest::ObjectVersion {
                uid: one_line(&v.uid),
                created: one_line(&v.created),
                ..v.clone()
            }
            .trailers()
        }),
    )
}

impl Writer {
    /// Writes objects and commits for every job, without moving the branch.
    pub(super) fn apply(
        &self,
        jobs: &[Job],
    ) -> Result<(Vec<Outcome>, Option<ObjectId>, ObjectId), StoreError> {
        self.apply_on(jobs, self.tip, self.tree)
    }

    /// [`Self::apply`] on top of commit `tip` with tree `tree` (a review branch's).
    pub(super) fn apply_on(
        &self,
        jobs: &[Job],
        tip: Option<ObjectId>,
        tree: ObjectId,
    ) -> Result<(Vec<Outcome>, Option<ObjectId>, ObjectId), StoreError> {
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let repo = &self.repo;
        // gix's high-level editor checks that every entry of every tree it writes
        // exists, across every pack: that is O(entries × packs) per commit. Our entries
        // are blobs and trees we just wrote or read, so the plain editor does.
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
        let (mut tip, mut tree) = (tip, tree);
        let mut outcomes = Vec::with_capacity(jobs.len());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);

        let us = || {
            signature(
                &self.settings.committer.name,
                &self.settings.committer.email,
                now,
            )
        };

        let mut placed = super::in_place::Placed::new();
        for job in jobs {
            // Stage the job's edits in the editor; then either commit them, with this
            // author and message, or answer without a commit.
            let mut files = 0;
            let staged = if let Some(bundle) = &job.bundle {
                // Which values of which Secrets changed, for the message.
                let mut sealed_values = Vec::new();
                let mut files_of = TreeFiles::new(repo, tree);
                for change in &bundle.changes {
                    let path = change.path.as_str();
                    if let Some(declared) = self.declared_elsewhere(change) {
                        tracing::debug!(
                            path,
                            declared,
                            "declared elsewhere on the branch; not written a second time"
                        );
                        continue;
                    }
                    let current = files_of.lookup(path).map_err(|e| write_error(&e))?;
                    match &change.action {
                        Action::Put(bytes) => {
                            files += u64::from(put_blob(repo, &mut editor, path, bytes, current)?);
                        }
                        Action::Seal(sealed) => match self.seal(sealed, path, current)? {
                            Ok(file) => {
                                if put_blob(repo, &mut editor, path, &file.bytes, current)? {
                                    files += 1;
                                    sealed_values.push((path.to_owned(), file.changed));
                                }
                            }
                            Err(reason) => {
                                tracing::warn!(path, %reason, "Secret not recorded");
                            }
                        },
                        // The reconciler's changes never cascade (see crate::cascade).
                        Action::Remove | Action::Cascade(_) if current.is_some() => {
                            editor
                                .remove(path.split('/'))
                                .map_err(|e| write_error(&e))?;
                            files += 1;
                        }
                        Action::Remove | Action::Cascade(_) | Action::SetReplicas(_) => {}
                    }
                }
                Ok((
                    us(),
                    super::sealed::with_values(&bundle.message, &sealed_values),
                ))
            } else {
                let change = &job.change;
                let path = change.path.as_str();
                let current = lookup(repo, tree, path).map_err(|e| write_error(&e))?;
                if let Some(revert) = &job.revert {
                    // Every file the denied commit changed (a cascade changed many)
                    // goes back, unless a newer change replaced what it wrote.
                    let mut undone = 0;
                    // A file edited in place holds other objects too: a later change
                    // to one of them does not replace the denied change, which is
                    // taken out of the file as it is now.
                    let in_place = repo
                        .find_commit(revert.commit)
                        .ok()
                        .and_then(|c| c.message_raw().ok().map(|m| m.to_string()))
                        .is_some_and(|m| super::merge::is_in_place(&m));
                    let object = super::writer::supersedes(change);
                    for (file, wrote, before) in
                        revert_edits(repo, revert.commit).map_err(|e| write_error(&e))?
                    {
                        let kept = if in_place { &object } else { &file };
                        if revert
                            .after
                            .is_some_and(|at| self.touches.kept_after(kept, at))
                        {
                            continue;
                        }
                        let now = lookup(repo, tree, &file).map_err(|e| write_error(&e))?;
                        if now != wrote {
                            if let (true, Some(now), Some(wrote), Some((_, before))) =
                                (in_place, now, wrote, before)
                            {
                                undone += u64::from(self.revert_in(
                                    &file,
                                    now,
                                    wrote,
                                    before,
                                    &mut editor,
                                )?);
                            }
                            continue;
                        }
                        match before {
                            Some((kind, id)) => editor.upsert(file.split('/'), kind, id),
                            None => editor.remove(file.split('/')),
                        }
                        .map_err(|e| write_error(&e))?;
                        undone += 1;
                    }
                    if undone > 0 {
                        let mut message = revert_message(change, revert);
                        if in_place {
                            // A replay merges it into the remote's file like the
                            // change it reverts.
                            message.push_str(super::merge::TRAILER);
                            message.push('\n');
                        }
                        Ok((us(), message))
                    } else {
                        // A newer change to this file replaced the denied one.
                        Err(Outcome::Unchanged)
                    }
                } else {
                    let staged = match &change.in_place {
                        Some(in_place) => {
                            match self.stage_in_place(
                                change,
                                in_place,
                                tree,
                                &mut editor,
                                &mut placed,
                            )? {
                                Staged::Done(staged) => staged,
                                Staged::Canonical => {
                                    let path = in_place.canonical.as_str();
                                    let current =
                                        lookup(repo, tree, path).map_err(|e| write_error(&e))?;
                                    self.stage(change, path, tree, current, &mut editor)?
                                }
                            }
                        }
                        None => match self.declared_elsewhere(change) {
                            Some(declared) => Err(Outcome::Refused {
                                reason: format!(
                                    "{} is declared in {declared} by now; it is not written a second time",
                                    change.object_ref()
                                ),
                            }),
                            None => self.stage(change, path, tree, current, &mut editor)?,
                        },
                    };
                    staged.map(|(api_version, kind, body)| {
                        let author = signature(
                            &change.user,
                            &author_email(&change.user, &self.settings.email_domain),
                            now,
                        );
                        let mut message = commit_message(change, &api_version, &kind, &body);
                        if let Some(trailer) = &job.trailer {
                            message.push_str(&one_line(trailer));
                            message.push('\n');
                        }
                        (author, message)
                    })
                }
            };
            let (author, message) = match staged {
                Ok(commit) => commit,
                Err(outcome) => {
                    outcomes.push(outcome);
                    continue;
                }
            };
            let new_tree = editor.write(&mut write_tree).map_err(|e| write_error(&e))?;
            if new_tree == tree {
                outcomes.push(Outcome::Unchanged);
                continue;
            }
            let commit = gix::objs::Commit {
                tree: new_tree,
                parents: tip.into_iter().collect(),
                author,
                committer: us(),
                encoding: None,
                message: message.into(),
                extra_headers: Vec::new(),
            };
            let id = gix::objs::Write::write(objects, &commit).map_err(|e| write_error(&e))?;
            tip = Some(id);
            tree = new_tree;
            // Bundles are the reconciler's commits.
            self.metrics.reconcile.files_written.inc_by(files);
            outcomes.push(Outcome::Committed { commit: id });
        }
        Ok((outcomes, tip, tree))
    }

    /// Stages one admitted change; `Ok(Ok((apiVersion, kind, body)))` for its commit
    /// message, or `Ok(Err(outcome))` when it makes no commit.
    #[allow(clippy::type_complexity)]
    pub(super) fn stage(
        &self,
        change: &Change,
        path: &str,
        tree: ObjectId,
        current: Option<ObjectId>,
        editor: &mut gix::objs::tree::Editor<'_>,
    ) -> Result<Result<(String, String, String), Outcome>, StoreError> {
        let mut api_version = change.api_version.clone();
        let mut kind = change.kind.clone();
        let mut body = String::new();
        let bytes = match &change.action {
            Action::Put(bytes) => Cow::Borrowed(bytes.as_slice()),
            Action::Seal(sealed) => match self.seal(sealed, path, current)? {
                Ok(file) => {
                    body = super::sealed::body(&file.changed);
                    Cow::Owned(file.bytes)
                }
                Err(reason) => return Ok(Err(Outcome::Refused { reason })),
            },
            Action::Remove => {
                if current.is_none() {
                    return Ok(Err(Outcome::Unchanged));
                }
                editor
                    .remove(path.split('/'))
                    .map_err(|e| StoreError::Write {
                        reason: e.to_string(),
                    })?;
                return Ok(Ok((api_version, kind, body)));
            }
            Action::Cascade(cascade) => {
                let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
                    reason: e.to_string(),
                };
                let others: Vec<String> = crate::cascade::files(&self.repo, tree, cascade)
                    .map_err(|e| write_error(&e))?
                    .into_iter()
                    .map(|(file, _)| file)
                    .filter(|file| file != path)
                    .collect();
                if current.is_none() && others.is_empty() {
                    return Ok(Err(Outcome::Unchanged));
                }
                for file in std::iter::once(path)
                    .filter(|_| current.is_some())
                    .chain(others.iter().map(String::as_str))
                {
                    editor
                        .remove(file.split('/'))
                        .map_err(|e| write_error(&e))?;
                }
                if !others.is_empty() {
                    body = format!(
                        "Also removes {count} {files} of the {objects}, which go with it:\n\n{list}\n",
                        count = others.len(),
                        files = if others.len() == 1 { "file" } else { "files" },
                        objects = cascade.scope.objects(),
                        list = crate::cascade::list(&others, CASCADE_LISTED),
                    );
                }
                return Ok(Ok((api_version, kind, body)));
            }
            Action::SetReplicas(replicas) => {
                let Some(id) = current else {
                    return Ok(Err(Outcome::ParentMissing));
                };
                let blob = self.repo.find_blob(id).map_err(|e| StoreError::Write {
                    reason: e.to_string(),
                })?;
                let Some(rescaled) = manifest::set_replicas(&blob.data, *replicas) else {
                    tracing::warn!(
                        path,
                        "recorded file is not a YAML object; scale write not applied"
                    );
                    return Ok(Err(Outcome::ParentMissing));
                };
                let old = rescaled
                    .previous
                    .map_or_else(|| "unset".to_owned(), |v| v.to_string());
                body = format!("Scaled spec.replicas from {old} to {replicas}.\n\n");
                api_version = rescaled.api_version.unwrap_or(api_version);
                kind = rescaled.kind.unwrap_or(kind);
                Cow::Owned(rescaled.bytes)
            }
        };
        if !put_blob(&self.repo, editor, path, &bytes, current)? {
            return Ok(Err(Outcome::Unchanged));
        }
        Ok(Ok((api_version, kind, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_files_find_what_lookup_finds() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("top.yaml"), "1").unwrap();
        std::fs::write(dir.path().join("a/b/c.yaml"), "2").unwrap();
        std::fs::write(dir.path().join("a/d.yaml"), "3").unwrap();
        std::os::unix::fs::symlink("d.yaml", dir.path().join("a/link.yaml")).unwrap();
        git(&["add", "."]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
            "commit",
            "-qm",
            "t",
        ]);
        let repo = gix::open(dir.path()).unwrap();
        let tree = repo.head_commit().unwrap().tree_id().unwrap().detach();
        let mut files = TreeFiles::new(&repo, tree);
        for path in [
            "top.yaml",
            "a/b/c.yaml",
            "a/d.yaml",
            "a/link.yaml",
            "a/b",
            "a",
            "missing.yaml",
            "a/missing/x.yaml",
            "top.yaml/x",
        ] {
            assert_eq!(
                files.lookup(path).unwrap(),
                lookup(&repo, tree, path).unwrap(),
                "{path}"
            );
        }
        assert!(files.lookup("a/b/c.yaml").unwrap().is_some());
        let empty = ObjectId::empty_tree(repo.object_hash());
        assert_eq!(
            TreeFiles::new(&repo, empty).lookup("top.yaml").unwrap(),
            None
        );
    }
}
