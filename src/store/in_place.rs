//! The writer's side of editing a repository in place (issue 15): the index of what
//! the branch declares, kept in step with every tree the branch moves to (our commits
//! and the remote's, after a replay), and the staging of a change as an edit of the
//! document that declares its object.
//!
//! Invariants: the index always describes `Writer::tree` once a batch is durable (it
//! is brought up to date in the same step that moves the branch), and lookups beside
//! the writer see either the old or the new index, never a half-built one. A change is
//! staged where the index says at commit time, not where it was at admission; a
//! document that is not the object any more (a delete earlier in the batch shifted the
//! file's documents) is refused, never edited by guess.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use gix::hash::ObjectId;
use gix::objs::tree::EntryKind;
use serde_json::Value;

use super::commit::{lookup, put_blob};
use super::replay::diff_trees;
use super::{Outcome, StoreError, Writer};
use crate::declared::{edit, Files, InPlace, Index, Key, Lookup, Settings};
use crate::manifest::{Action, Change};

/// The index of a branch edited in place, shared between the writer (which keeps it
/// up to date) and the request path (which looks objects up in it).
#[derive(Clone)]
pub struct SharedIndex {
    pub settings: Settings,
    pub config: crate::config::InPlaceConfig,
    pub index: Arc<RwLock<Index>>,
    /// The files of the tree the index describes, for the request path to read an
    /// overlay's files with (`overlay: patch`).
    pub tree: Arc<RwLock<TreeFiles>>,
}

/// A branch's files by path, and where to read them from.
#[derive(Default)]
pub struct TreeFiles {
    git_dir: Option<std::path::PathBuf>,
    entries: BTreeMap<String, ObjectId>,
}

impl TreeFiles {
    /// A reader of the tree's files, which opens the repository the first time it
    /// reads (a handle of this gix build stays on one thread).
    pub fn reader(&self) -> impl Fn(&str) -> Option<Vec<u8>> + '_ {
        let repo: std::cell::OnceCell<Option<gix::Repository>> = std::cell::OnceCell::new();
        move |path: &str| {
            let id = self.entries.get(path)?;
            let repo = repo
                .get_or_init(|| {
                    let dir = self.git_dir.as_ref()?;
                    super::open::open_repository(dir)
                        .inspect_err(|error| {
                            tracing::warn!(%error, "cannot open the repository to read an overlay's files; the store routes the edit when it commits")
                        })
                        .ok()
                })
                .as_ref()?;
            Some(repo.find_blob(*id).ok()?.detach().data)
        }
    }
}

impl std::fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIndex").finish_non_exhaustive()
    }
}

impl SharedIndex {
    /// The index for `repository`, edited in place as its `inPlace` says.
    pub fn new(repository: &crate::config::RepositoryConfig) -> Self {
        let config = &repository.in_place;
        Self {
            settings: Settings {
                directories: config
                    .namespaces
                    .iter()
                    .map(|(dir, namespace)| (dir.clone(), namespace.clone()))
                    .collect(),
                cluster: config
                    .cluster
                    .as_deref()
                    .map(|dir| dir.trim_matches('/').to_owned())
                    .filter(|dir| !dir.is_empty()),
                branch: Some(repository.branch.clone()),
                remote: repository
                    .remote
                    .as_ref()
                    .map(|remote| crate::declared::repository_url(&remote.url)),
            },
            config: config.clone(),
            index: Arc::default(),
            tree: Arc::default(),
        }
    }
}

/// The files of a git tree, read on demand.
struct GitFiles<'r> {
    repo: &'r gix::Repository,
    entries: &'r BTreeMap<String, ObjectId>,
}

impl Files for GitFiles<'_> {
    fn paths_from<'s>(&'s self, start: &str) -> Box<dyn Iterator<Item = &'s str> + 's> {
        Box::new(
            self.entries
                .range(start.to_owned()..)
                .map(|(p, _)| p.as_str()),
        )
    }
    fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }
    fn read(&self, path: &str) -> Option<Cow<'_, [u8]>> {
        let id = self.entries.get(path)?;
        match self.repo.find_blob(*id) {
            Ok(blob) => Some(Cow::Owned(blob.detach().data)),
            Err(error) => {
                tracing::warn!(path, %error, "cannot read a file of the branch for its index");
                None
            }
        }
    }
}

/// The index of `tree`, with every blob read as the walk needs it (for `kubescribe
/// check --repo`).
pub(crate) fn index_of(
    repo: &gix::Repository,
    tree: ObjectId,
    settings: &Settings,
) -> Result<Index, StoreError> {
    let entries = blobs(repo, tree)?;
    Ok(Index::build(
        &GitFiles {
            repo,
            entries: &entries,
        },
        settings,
    ))
}

/// Every file of `tree`, by path.
fn blobs(repo: &gix::Repository, tree: ObjectId) -> Result<BTreeMap<String, ObjectId>, StoreError> {
    let mut changes = Vec::new();
    diff_trees(
        repo,
        ObjectId::empty_tree(repo.object_hash()),
        tree,
        "",
        &mut changes,
    )
    .map_err(|e| StoreError::Write {
        reason: format!("cannot list the branch to index it: {e}"),
    })?;
    Ok(changes
        .into_iter()
        .filter_map(|(path, entry)| match entry {
            Some((EntryKind::Blob | EntryKind::BlobExecutable, id)) => Some((path, id)),
            _ => None,
        })
        .collect())
}

/// The writer's side of the tree the index describes: its files' blob ids live in
/// `shared.tree`, which only the writer changes.
pub(super) struct DeclaredTree {
    shared: SharedIndex,
}

impl DeclaredTree {
    /// Indexes `tree` into `shared`.
    pub(super) fn build(
        repo: &gix::Repository,
        tree: ObjectId,
        shared: SharedIndex,
    ) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let entries = blobs(repo, tree)?;
        let index = Index::build(
            &GitFiles {
                repo,
                entries: &entries,
            },
            &shared.settings,
        );
        tracing::info!(
            files = entries.len(),
            objects = index.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "indexed what the branch declares"
        );
        {
            // Both at once, in the request path's order (index, then tree): it never
            // reads one tree's files with another tree's index.
            let mut held = shared.index.write().unwrap_or_else(|e| e.into_inner());
            let mut tree = shared.tree.write().unwrap_or_else(|e| e.into_inner());
            *held = index;
            *tree = TreeFiles {
                git_dir: Some(repo.git_dir().to_owned()),
                entries,
            };
        }
        Ok(Self { shared })
    }

    /// Brings the index from `old` to `new`, re-reading only the files that differ.
    pub(super) fn advance(&mut self, repo: &gix::Repository, old: ObjectId, new: ObjectId) {
        if old == new {
            return;
        }
        let mut changes = Vec::new();
        if let Err(error) = diff_trees(repo, old, new, "", &mut changes) {
            tracing::error!(%error, "cannot compare the branch's trees; indexing it again");
            if let Ok(again) = Self::build(repo, new, self.shared.clone()) {
                *self = again;
            }
            return;
        }
        let changed: Vec<String> = changes.iter().map(|(path, _)| path.clone()).collect();
        let apply = |entries: &mut BTreeMap<String, ObjectId>| {
            for (path, entry) in &changes {
                match entry {
                    Some((EntryKind::Blob | EntryKind::BlobExecutable, id)) => {
                        entries.insert(path.clone(), *id);
                    }
                    _ => {
                        entries.remove(path);
                    }
                }
            }
        };
        // What the changed paths hold now: all the check below reads.
        let mut now = BTreeMap::new();
        apply(&mut now);
        let lock = &self.shared.index;
        let rebuild = lock
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .needs_rebuild(
                &GitFiles {
                    repo,
                    entries: &now,
                },
                &changed,
            );
        // The index and the files it describes change together, under the index's
        // lock and then the tree's (the request path's order), so admission never
        // routes an edit with one tree's index and another's files.
        if rebuild {
            // Built beside the pair the request path reads, then swapped in: a whole
            // build takes long enough to stall admission behind the lock.
            let mut entries = self
                .shared
                .tree
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .entries
                .clone();
            apply(&mut entries);
            let rebuilt = Index::build(
                &GitFiles {
                    repo,
                    entries: &entries,
                },
                &self.shared.settings,
            );
            let old = {
                let mut index = lock.write().unwrap_or_else(|e| e.into_inner());
                let mut tree = self.shared.tree.write().unwrap_or_else(|e| e.into_inner());
                (
                    std::mem::replace(&mut *index, rebuilt),
                    std::mem::replace(&mut tree.entries, entries),
                )
            };
            // Freed after the locks are released.
            drop(old);
        } else {
            // One file's entries: microseconds.
            let mut index = lock.write().unwrap_or_else(|e| e.into_inner());
            let mut tree = self.shared.tree.write().unwrap_or_else(|e| e.into_inner());
            apply(&mut tree.entries);
            index.update(
                &GitFiles {
                    repo,
                    entries: &tree.entries,
                },
                &changed,
                &self.shared.settings,
            );
        }
    }
}

fn write_error(error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Write {
        reason: error.to_string(),
    }
}

/// A change not recorded, and why.
fn refused(reason: String) -> Result<Staged, StoreError> {
    Ok(Staged::Done(Err(Outcome::Refused { reason })))
}

/// How a change with [`InPlace`] was staged.
pub(super) enum Staged {
    /// Edited (or refused, or unchanged): the commit's `(apiVersion, kind, body)`, or
    /// the outcome without one.
    Done(Result<(String, String, String), Outcome>),
    /// No document declares the object any more: written where the path template
    /// says, like any other change.
    Canonical,
}

/// Where an object is declared: the file, the name its document gives it, and the
/// kustomization that lists the file.
#[derive(Debug, Clone)]
pub(super) struct Whereabouts {
    path: String,
    written_name: String,
    listed_in: Option<String>,
    /// With `overlay: patch`, for an object overlays transform: its declaration,
    /// and how many objects its document renders.
    overlaid: Option<Overlaid>,
}

/// An object overlays transform: its declaration, how many objects its document
/// renders, and the other objects the same overlays render.
#[derive(Debug, Clone)]
pub(super) struct Overlaid {
    declared: crate::declared::Declared,
    shared: usize,
    siblings: Vec<(Key, crate::declared::Declared)>,
}

/// Where this batch has put objects so far (`None`: it deleted them), which the
/// index (of the branch before the batch) does not know yet.
pub(super) type Placed = HashMap<Key, Option<Whereabouts>>;

impl Writer {
    /// Where `key` is declared now: in a file this batch put it in, else where the
    /// index says. `Err` with the refusal when more than one document could be it.
    fn whereabouts(&self, key: &Key, placed: &Placed) -> Result<Option<Whereabouts>, String> {
        if let Some(found) = placed.get(key) {
            return Ok(found.clone());
        }
        let Some(declared) = &self.declared else {
            return Ok(None);
        };
        let index = declared
            .shared
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match index.lookup(key) {
            Lookup::Missing => Ok(None),
            Lookup::Found(d) => Ok(Some(Whereabouts {
                path: d.path.clone(),
                written_name: d.written_name.clone(),
                listed_in: d.through.last().cloned(),
                overlaid: (declared.shared.config.overlay == crate::config::Overlay::Patch
                    && !d.transformed_by.is_empty())
                .then(|| Overlaid {
                    declared: d.clone(),
                    shared: index.declarations(&d.path, d.document),
                    siblings: index.rendered_with(key, d),
                }),
            })),
            Lookup::Ambiguous(candidates) => {
                let places: Vec<String> = candidates.iter().map(|d| d.path.clone()).collect();
                Err(format!(
                    "{} {}/{} could be any of these documents now: {}; kubescribe never edits one by guess",
                    key.kind,
                    key.namespace.as_deref().unwrap_or_default(),
                    key.name,
                    places.join(", ")
                ))
            }
        }
    }

    /// Stages `change` as an edit of the document that declares its object in `tree`.
    pub(super) fn stage_in_place(
        &self,
        change: &Change,
        in_place: &InPlace,
        tree: ObjectId,
        editor: &mut gix::objs::tree::Editor<'_>,
        placed: &mut Placed,
    ) -> Result<Staged, StoreError> {
        if self.declared.is_none() {
            return Ok(Staged::Canonical);
        }
        let found = match self.whereabouts(&in_place.key, placed) {
            Ok(found) => found,
            Err(reason) => return refused(reason),
        };
        if change.verb == crate::manifest::Verb::Create && found.is_some() {
            // Git has it already (declared by the time it is committed).
            return Ok(Staged::Done(Err(Outcome::Unchanged)));
        }
        if let Some(home) = &in_place.new_file {
            return self.stage_new_file(change, in_place, home, tree, editor, placed);
        }
        let Some(Whereabouts {
            path,
            written_name,
            listed_in,
            overlaid,
        }) = found
        else {
            return Ok(Staged::Canonical);
        };
        let path = path.as_str();
        let Some(current) = lookup(&self.repo, tree, path).map_err(|e| write_error(&e))? else {
            return refused(format!(
                "{path}, which declared {}, is not on the branch any more",
                change.object_ref()
            ));
        };
        let bytes = self.blob(current)?;
        // Found by what it says, not by its position: a delete earlier in this batch
        // may have shifted the file's documents.
        let documents = crate::declared::documents(&bytes);
        let Some(at) = crate::declared::find_document(&documents, &in_place.key, &written_name)
        else {
            return refused(format!(
                "no single document of {path} is {} now; kubescribe never edits one by guess: change it in git",
                change.object_ref()
            ));
        };
        let api_version = documents[at]
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = in_place.key.kind.clone();
        // A SOPS file has one MAC over all its documents: taking one out, or
        // writing one, breaks the others.
        let several = documents.iter().filter(|d| !d.is_null()).count() > 1;
        if several && documents[at].get("sops").is_some() {
            return refused(format!(
                "{} is declared in {path}, a SOPS file of several documents, which kubescribe does not edit: change it in git",
                change.object_ref()
            ));
        }
        if let Action::Seal(sealed) = &change.action {
            let object = change.object_ref();
            if overlaid.is_some() || several {
                return refused(format!(
                    "Secret {object} is declared in {path}, which {}; kubescribe writes a Secret's SOPS file whole, from one document: change it in git",
                    if overlaid.is_some() { "overlays change" } else { "holds other documents too" }
                ));
            }
            let Some(sealer) = &self.settings.sealer else {
                return refused("secrets: sops has no keys for this repository".to_owned());
            };
            let file = String::from_utf8_lossy(&bytes);
            let sealed = match sealer.seal_declared(
                &file,
                sealed.plain(),
                sealed.before(),
                &in_place.old,
                &in_place.new,
                path,
                &format!("Secret {object}"),
                std::time::SystemTime::now(),
            ) {
                Ok(sealed) => sealed,
                Err(reason) => return refused(reason),
            };
            if !put_blob(
                &self.repo,
                editor,
                path,
                sealed.text.as_bytes(),
                Some(current),
            )? {
                return Ok(Staged::Done(Err(Outcome::Unchanged)));
            }
            // No in-place trailer: the file is the Secret's alone, so a revert
            // puts the whole file back.
            let body = super::sealed::body(&sealed.changed);
            return Ok(Staged::Done(Ok((api_version, kind, body))));
        }
        let mut body = String::new();
        // With `overlay: patch`, the fields an overlay sets are edited there.
        let mut ops = Cow::Borrowed(in_place.ops.as_slice());
        // Made only once every part of the edit is known to work: a refusal
        // leaves nothing of this change staged.
        let mut others: Vec<(String, Vec<u8>, ObjectId)> = Vec::new();
        if let Some(Overlaid {
            declared,
            shared,
            siblings,
        }) = &overlaid
        {
            let read = |file: &str| self.read_file(tree, file);
            if matches!(change.action, Action::Remove) {
                if let Some(reason) =
                    crate::declared::overlay::delete_refusal(&read, &in_place.key, declared)
                {
                    return refused(reason);
                }
            } else {
                let routed = match crate::declared::overlay::route(
                    &crate::declared::overlay::Routing {
                        read: &read,
                        key: &in_place.key,
                        declared,
                        shared: *shared,
                        siblings,
                        base: &documents[at],
                        old: &in_place.old,
                        new: &in_place.new,
                    },
                    &in_place.ops,
                ) {
                    Ok(routed) => routed,
                    Err(reason) => return refused(reason),
                };
                for other in &routed.elsewhere {
                    if let Err(reason) = self.edit_other(other, tree, &mut others)? {
                        return refused(reason);
                    }
                    body.push_str(&format!(
                        "Edits {} (document {}), where the overlay sets what changed.\n\n",
                        other.path,
                        other.document + 1
                    ));
                }
                ops = Cow::Owned(routed.base);
            }
        }
        let edited = match change.action {
            Action::Remove => edit::remove(&bytes, at),
            // Every change is an overlay's.
            _ if ops.is_empty() => Ok(edit::Edited {
                bytes: Some(bytes.clone()),
                rewritten: false,
            }),
            _ => edit::update(&bytes, at, &ops, &in_place.old, &in_place.new),
        };
        let edited = match edited {
            Ok(edited) => edited,
            Err(error) => return refused(format!("cannot edit {path}: {error}")),
        };
        let mut elsewhere = false;
        for (other, new_bytes, id) in &others {
            elsewhere |= put_blob(&self.repo, editor, other, new_bytes, Some(*id))?;
        }
        match edited.bytes {
            Some(new_bytes) => {
                if !put_blob(&self.repo, editor, path, &new_bytes, Some(current))? && !elsewhere {
                    return Ok(Staged::Done(Err(Outcome::Unchanged)));
                }
                if edited.rewritten {
                    body.insert_str(0, &format!(
                        "kubescribe could not change document {} of {path} in place, so it wrote that document whole.\n\n",
                        at + 1
                    ));
                }
            }
            None => {
                editor
                    .remove(path.split('/'))
                    .map_err(|e| write_error(&e))?;
                body = format!("Removes {path}, whose only object this was.\n\n");
                // The kustomization that lists the file must not list it any more,
                // or `kustomize build` fails.
                if let Some(dir) = &listed_in {
                    if let Some(listed) = self.unlist(dir, path, tree, editor)? {
                        body.push_str(&format!("Takes it out of the resources of {listed}.\n\n"));
                    }
                }
            }
        }
        if matches!(change.action, Action::Remove) {
            // Gone, for the rest of the batch: a create after it is a new object.
            placed.insert(in_place.key.clone(), None);
        }
        body.push_str(super::merge::TRAILER);
        body.push('\n');
        Ok(Staged::Done(Ok((api_version, kind, body))))
    }

    /// The contents of the blob `id`.
    fn blob(&self, id: ObjectId) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .repo
            .find_blob(id)
            .map_err(|e| write_error(&e))?
            .detach()
            .data)
    }

    /// The file at `path` in `tree`, if it is there and readable.
    fn read_file(&self, tree: ObjectId, path: &str) -> Option<Vec<u8>> {
        let id = lookup(&self.repo, tree, path).ok().flatten()?;
        Some(self.repo.find_blob(id).ok()?.detach().data)
    }

    /// Adds an overlay's part of an edit to `pending` (file, new bytes, blob now),
    /// on top of an earlier part for the same file; the refusal when it cannot be
    /// made.
    fn edit_other(
        &self,
        other: &crate::declared::overlay::FileEdit,
        tree: ObjectId,
        pending: &mut Vec<(String, Vec<u8>, ObjectId)>,
    ) -> Result<Result<(), String>, StoreError> {
        let path = other.path.as_str();
        let at = match pending.iter().position(|(p, _, _)| p == path) {
            Some(at) => at,
            None => {
                let Some(current) = lookup(&self.repo, tree, path).map_err(|e| write_error(&e))?
                else {
                    return Ok(Err(format!("{path} is not on the branch any more")));
                };
                let bytes = self.blob(current)?;
                pending.push((path.to_owned(), bytes, current));
                pending.len() - 1
            }
        };
        let bytes = &mut pending[at].1;
        Ok(
            match edit::update(bytes, other.document, &other.ops, &other.old, &other.new) {
                Ok(edit::Edited {
                    bytes: Some(new_bytes),
                    ..
                }) => {
                    *bytes = new_bytes;
                    Ok(())
                }
                Ok(_) => Err(format!("an edit of {path} would empty it")),
                Err(error) => Err(format!("cannot edit {path}: {error}")),
            },
        )
    }

    /// Takes a denied commit's change (`wrote` over `before`) out of `file` as it is
    /// now (`now`), which later changes to other objects of the file made: `git
    /// revert`'s three-way merge. False, with the reason logged and counted, when the
    /// later changes touched the same lines.
    pub(super) fn revert_in(
        &self,
        file: &str,
        now: ObjectId,
        wrote: ObjectId,
        before: ObjectId,
        editor: &mut gix::objs::tree::Editor<'_>,
    ) -> Result<bool, StoreError> {
        let read = |id: ObjectId| self.blob(id);
        let (dir, name) = file.rsplit_once('/').unwrap_or(("", file));
        let (now_bytes, wrote_bytes, before_bytes) = (read(now)?, read(wrote)?, read(before)?);
        let merged = if crate::declared::kustomization_file(name) {
            // Entries by the files they name: a line merge of two appends conflicts.
            Ok(edit::relist(&now_bytes, dir, &wrote_bytes, &before_bytes))
        } else if let Some(undone) = edit::redo(&now_bytes, &wrote_bytes, &before_bytes) {
            // The inverse edit, document by document: a later change on the next
            // line stays.
            Ok(Some(undone))
        } else {
            super::merge::merge(
                &std::env::temp_dir(),
                &now_bytes,
                &wrote_bytes,
                &before_bytes,
                super::merge::Conflicts::Refuse,
            )
        };
        match merged {
            Ok(Some(merged)) => put_blob(&self.repo, editor, file, &merged, Some(now)),
            Ok(None) => {
                self.count_error("revert_conflict", 1);
                tracing::error!(file, "a denied change cannot be taken out of the file: a later change touched the same lines; take it out by hand");
                Ok(false)
            }
            Err(error) => {
                self.count_error("revert_conflict", 1);
                tracing::error!(file, %error, "a denied change cannot be taken out of the file; take it out by hand");
                Ok(false)
            }
        }
    }

    /// For a file written where the path template says: the file that already
    /// declares the object on a branch edited in place, if another does. The store
    /// never writes such an object a second time (the reconciler's snapshot and watch
    /// write where the path template says).
    pub(super) fn declared_elsewhere(&self, change: &Change) -> Option<String> {
        let declared = self.declared.as_ref()?;
        if !matches!(change.action, Action::Put(_) | Action::Seal(_)) {
            return None;
        }
        let group = change.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let key = crate::declared::Key::new(
            group,
            &change.kind,
            change.namespace.as_deref(),
            &change.name,
        );
        let index = declared
            .shared
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match index.lookup(&key) {
            Lookup::Found(d) if d.path != change.path.as_str() => Some(d.path.clone()),
            Lookup::Ambiguous(candidates) => candidates
                .iter()
                .find(|d| d.path != change.path.as_str())
                .map(|d| d.path.clone()),
            _ => None,
        }
    }

    /// Writes a new object beside its namespace's others, and lists the file in the
    /// kustomization that renders that directory.
    fn stage_new_file(
        &self,
        change: &Change,
        in_place: &InPlace,
        home: &crate::declared::Home,
        tree: ObjectId,
        editor: &mut gix::objs::tree::Editor<'_>,
        placed: &mut Placed,
    ) -> Result<Staged, StoreError> {
        let path = change.path.as_str();
        let Action::Put(bytes) = &change.action else {
            return Ok(Staged::Canonical);
        };
        if lookup(&self.repo, tree, path)
            .map_err(|e| write_error(&e))?
            .is_some()
        {
            return refused(format!("{path} exists already, and holds something else"));
        }
        let mut body = String::new();
        if let Some(dir) = &home.kustomization {
            let Some((kustomization, id)) = self.kustomization(dir, tree)? else {
                return refused(format!(
                    "the kustomization of {dir} is not on the branch any more"
                ));
            };
            let current = self.blob(id)?;
            let Some(listed) = edit::enlist(&current, dir, path) else {
                return refused(format!(
                    "cannot add {path} to the resources of {kustomization}, which is not a YAML mapping kubescribe can edit"
                ));
            };
            put_blob(&self.repo, editor, &kustomization, &listed, Some(id))?;
            body = format!("Lists it in the resources of {kustomization}.\n\n");
        }
        put_blob(&self.repo, editor, path, bytes, None)?;
        placed.insert(
            in_place.key.clone(),
            Some(Whereabouts {
                path: path.to_owned(),
                written_name: in_place.key.name.clone(),
                listed_in: home.kustomization.clone(),
                overlaid: None,
            }),
        );
        body.push_str(super::merge::TRAILER);
        body.push('\n');
        Ok(Staged::Done(Ok((
            change.api_version.clone(),
            change.kind.clone(),
            body,
        ))))
    }

    /// The kustomization file of `dir` in `tree`, by kustomize's order of names.
    fn kustomization(
        &self,
        dir: &str,
        tree: ObjectId,
    ) -> Result<Option<(String, ObjectId)>, StoreError> {
        for name in crate::declared::KUSTOMIZATION_FILES {
            let path = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            if let Some(id) = lookup(&self.repo, tree, &path).map_err(|e| StoreError::Write {
                reason: e.to_string(),
            })? {
                return Ok(Some((path, id)));
            }
        }
        Ok(None)
    }

    /// Removes `file` from the `resources:` of the kustomization in `dir`; the
    /// kustomization's path when it listed it.
    fn unlist(
        &self,
        dir: &str,
        file: &str,
        tree: ObjectId,
        editor: &mut gix::objs::tree::Editor<'_>,
    ) -> Result<Option<String>, StoreError> {
        let Some((path, id)) = self.kustomization(dir, tree)? else {
            return Ok(None);
        };
        let bytes = self.blob(id)?;
        match edit::unlist(&bytes, dir, file) {
            Some(edited) => {
                put_blob(&self.repo, editor, &path, &edited, Some(id))?;
                Ok(Some(path))
            }
            None => Ok(None),
        }
    }
}
