//! Builds the pack a push sends: the objects of the commits between the remote's tip
//! and ours, read back from the local repository.
//!
//! It runs on a thread of its own (a gix repository is not `Send` here), with its
//! own read-only handle on the repository, so building a pack never waits for the
//! writer's batch, nor the writer for a pack. The writer only adds objects, so a
//! reader sees every object of a commit once the branch names it.
//!
//! Invariants: only a linear run of commits on top of `base` is packed (what the
//! writer makes); anything else, a merge, a `base` that is not an ancestor, or more
//! than [`MAX_COMMITS`] commits or [`MAX_BYTES`] of objects, is left to the `git`
//! CLI. The pack holds each commit, then every tree and blob it adds to its parent's
//! tree; a changed tree whose earlier version is in the pack too is stored as an
//! offset delta of it ([`super::delta`]; the push requires the server's
//! `ofs-delta`), everything else whole. Objects the remote may already have are
//! harmless. Commits are
//! taken oldest first, so every tree already in the pack has everything below it
//! either in the pack or on the remote: that is what lets a tree met again (a later
//! commit going back to an earlier state) be skipped whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gix::hash::ObjectId;
use gix::objs::Kind;
use gix::odb::memory::Storage;
use tokio::sync::oneshot;

/// More commits than this in one push go through `git push`, which streams its
/// pack instead of building it in memory.
pub(crate) const MAX_COMMITS: usize = 5_000;

/// More object bytes than this go through `git push` too: the builtin transport
/// holds the whole pack in memory.
pub(crate) const MAX_BYTES: usize = 16 << 20;

/// After packing this many bytes, the pack thread opens the repository again.
const REOPEN_AFTER_BYTES: usize = 8 << 20;

/// What [`Outgoing::build`] found.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// The pack to send.
    Pack { bytes: Vec<u8>, commits: usize },
    /// `base` is not below `tip` on a linear history (the remote moved, or history
    /// here has a merge).
    NotOnTop,
    /// More than [`MAX_COMMITS`] commits or [`MAX_BYTES`] of objects.
    TooLarge,
}

struct Request {
    base: Option<ObjectId>,
    tip: ObjectId,
    reply: oneshot::Sender<Result<Outgoing, String>>,
}

/// The pack-building thread of one local repository; it stops when this is dropped.
pub(crate) struct PackSource {
    requests: std::sync::mpsc::Sender<Request>,
}

impl PackSource {
    pub(crate) fn start(git_dir: &Path) -> std::io::Result<Self> {
        let (requests, receiver) = std::sync::mpsc::channel::<Request>();
        let git_dir: PathBuf = git_dir.to_owned();
        std::thread::Builder::new()
            .name("kubescribe-pack".to_owned())
            .spawn(move || {
                let mut repo = None;
                // gix keeps every pack it read from mapped, and the pages it read
                // resident, as long as the handle lives: start a fresh one now and
                // then, as the writer does.
                let mut packed_since_open = 0;
                for request in receiver {
                    let result = open(&git_dir, &mut repo)
                        .and_then(|repo| build(repo, request.base, request.tip))
                        .map_err(|e| e.to_string());
                    if let Ok(Outgoing::Pack { bytes, .. }) = &result {
                        packed_since_open += bytes.len();
                    }
                    if packed_since_open >= REOPEN_AFTER_BYTES {
                        repo = None;
                        packed_since_open = 0;
                    }
                    let _ = request.reply.send(result);
                }
            })?;
        Ok(Self { requests })
    }

    /// The pack taking the remote from `base` (`None`: the branch does not exist
    /// there) to `tip`.
    pub(crate) async fn build(
        &self,
        base: Option<ObjectId>,
        tip: ObjectId,
    ) -> Result<Outgoing, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { base, tip, reply })
            .map_err(|_| "the pack thread stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the pack thread stopped".to_owned())?
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn open<'a>(
    git_dir: &Path,
    repo: &'a mut Option<gix::Repository>,
) -> Result<&'a gix::Repository, BoxError> {
    if repo.is_none() {
        // As many packs as the writer allows for (one per batch until a fold).
        let options = gix::open::Options::isolated().object_store_slots(
            gix::odb::store::init::Slots::AsNeededByDiskState {
                multiplier: 2.0,
                minimum: 1024,
            },
        );
        let mut opened = gix::open_opts(git_dir, options)?;
        opened.object_cache_size_if_unset(4 * 1024 * 1024);
        *repo = Some(opened);
    }
    Ok(repo.as_ref().expect("opened above"))
}

fn build(
    repo: &gix::Repository,
    base: Option<ObjectId>,
    tip: ObjectId,
) -> Result<Outgoing, BoxError> {
    if base.is_some_and(|base| !repo.has_object(base)) {
        return Ok(Outgoing::NotOnTop);
    }
    // Newest first: (commit, its tree, its parent's tree).
    let mut commits = Vec::new();
    let mut at = tip;
    while Some(at) != base {
        if commits.len() == MAX_COMMITS {
            return Ok(Outgoing::TooLarge);
        }
        let commit = repo.find_commit(at)?;
        let tree = commit.tree_id()?.detach();
        let mut parents = commit.parent_ids();
        let parent = parents.next().map(|p| p.detach());
        if parents.next().is_some() {
            return Ok(Outgoing::NotOnTop);
        }
        let parent_tree = match parent {
            Some(parent) => Some(repo.find_commit(parent)?.tree_id()?.detach()),
            None => None,
        };
        commits.push((at, tree, parent_tree));
        match parent {
            Some(parent) => at = parent,
            None if base.is_some() => return Ok(Outgoing::NotOnTop),
            None => break,
        }
    }
    let mut objects = Storage::default();
    let mut size = 0;
    // Oldest first: see the invariants above.
    for (commit, tree, parent_tree) in commits.iter().rev() {
        add(repo, *commit, &mut objects, &mut size)?;
        add_tree(repo, *tree, *parent_tree, &mut objects, &mut size)?;
        if size > MAX_BYTES {
            return Ok(Outgoing::TooLarge);
        }
    }
    let bytes = super::pack::bytes(&objects, repo.object_hash())?;
    Ok(Outgoing::Pack {
        bytes,
        commits: commits.len(),
    })
}

fn add(
    repo: &gix::Repository,
    id: ObjectId,
    objects: &mut Storage,
    size: &mut usize,
) -> Result<(), BoxError> {
    if !objects.contains_key(&id) {
        let object = repo.find_object(id)?.detach();
        *size += object.data.len();
        objects.insert(id, (object.kind, object.data));
    }
    Ok(())
}

/// Adds `tree` and whatever it holds that `before` (the same place in the parent
/// commit, whose objects are all on the remote or in `objects`) does not.
fn add_tree(
    repo: &gix::Repository,
    tree: ObjectId,
    before: Option<ObjectId>,
    objects: &mut Storage,
    size: &mut usize,
) -> Result<(), BoxError> {
    if Some(tree) == before || objects.contains_key(&tree) {
        return Ok(());
    }
    let hash = repo.object_hash();
    let data = repo.find_object(tree)?.detach().data;
    let old_data = match before {
        Some(before) => Some(repo.find_object(before)?.detach().data),
        None => None,
    };
    let old: HashMap<&[u8], (gix::objs::tree::EntryMode, ObjectId)> = match &old_data {
        Some(old_data) => gix::objs::TreeRef::from_bytes(old_data, hash)?
            .entries
            .into_iter()
            .map(|e| (e.filename.as_ref(), (e.mode, e.oid.to_owned())))
            .collect(),
        None => HashMap::new(),
    };
    for entry in gix::objs::TreeRef::from_bytes(&data, hash)?.entries {
        let previous = old.get(AsRef::<[u8]>::as_ref(entry.filename));
        let id = entry.oid.to_owned();
        if previous.is_some_and(|(_, old_id)| *old_id == id) {
            continue;
        }
        if entry.mode.is_tree() {
            let previous_tree = previous
                .filter(|(mode, _)| mode.is_tree())
                .map(|(_, id)| *id);
            add_tree(repo, id, previous_tree, objects, size)?;
        } else if !entry.mode.is_commit() {
            add(repo, id, objects, size)?;
        }
    }
    *size += data.len();
    objects.insert(tree, (Kind::Tree, data));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@x")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@x")
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn commit(dir: &Path, path: &str, text: &str) -> ObjectId {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-qm", path]);
        git(dir, &["rev-parse", "HEAD"]).parse().unwrap()
    }

    /// What `receive-pack` does with a pushed pack: `index-pack` checks every
    /// entry, the branch moves to `tip`, and `fsck` finds nothing missing.
    fn receive(remote: &Path, pack: &[u8], tip: ObjectId) {
        use std::io::Write as _;
        let mut index = Command::new("git")
            .arg("--git-dir")
            .arg(remote)
            .args(["index-pack", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        index.stdin.take().unwrap().write_all(pack).unwrap();
        assert!(index.wait().unwrap().success());
        git(remote, &["update-ref", "refs/heads/main", &tip.to_string()]);
        git(remote, &["fsck", "--strict", "--no-dangling"]);
    }

    /// The real git takes the pack: `index-pack` checks every entry, and the
    /// remote's `fsck` that nothing the new commits need is missing.
    #[tokio::test]
    async fn a_pack_of_new_commits_completes_a_remote_that_has_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        commit(&work, "a/b/one.yaml", "one\n");
        let base = commit(&work, "a/c/two.yaml", "two\n");
        commit(&work, "a/b/one.yaml", "one, changed\n");
        commit(&work, "d/three.yaml", "three\n");
        let tip = commit(&work, "a/c/two.yaml", "one\n"); // a blob the base has
        let remote = dir.path().join("remote.git");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                "--no-local",
                work.to_str().unwrap(),
                remote.to_str().unwrap(),
            ],
        );
        git(
            &remote,
            &["update-ref", "refs/heads/main", &base.to_string()],
        );
        git(&remote, &["reflog", "expire", "--expire=now", "--all"]);
        git(&remote, &["gc", "-q", "--prune=now"]);
        let has_tip = Command::new("git")
            .arg("--git-dir")
            .arg(&remote)
            .args(["cat-file", "-e", &tip.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            !has_tip.success(),
            "the remote starts without the new commits"
        );

        let source = PackSource::start(&work.join(".git")).unwrap();
        let Outgoing::Pack { bytes, commits } = source.build(Some(base), tip).await.unwrap() else {
            panic!("a linear run on top of the base is packed");
        };
        assert_eq!(commits, 3);
        receive(&remote, &bytes, tip);

        // A later commit going back to an earlier tree (create, create, delete): the
        // blob of the first create is still sent.
        let again = commit(&work, "f/one.yaml", "f one\n");
        commit(&work, "f/two.yaml", "f two\n");
        std::fs::remove_file(work.join("f/two.yaml")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "remove f/two.yaml"]);
        let back: ObjectId = git(&work, &["rev-parse", "HEAD"]).parse().unwrap();
        assert_eq!(
            git(&work, &["rev-parse", "HEAD^{tree}"]),
            git(&work, &["rev-parse", &format!("{again}^{{tree}}")])
        );
        let Outgoing::Pack { bytes, commits } = source.build(Some(tip), back).await.unwrap() else {
            panic!("packed");
        };
        assert_eq!(commits, 3);
        receive(&remote, &bytes, back);
        let tip = back;

        // From nothing: the whole history.
        let Outgoing::Pack { commits, .. } = source.build(None, tip).await.unwrap() else {
            panic!("a new branch gets every commit");
        };
        assert_eq!(commits, 8);
        // A base that is not below the tip, or unknown here.
        let other = commit(&work, "e.yaml", "e\n");
        git(&work, &["reset", "-q", "--hard", &tip.to_string()]);
        assert!(matches!(
            source.build(Some(other), tip).await.unwrap(),
            Outgoing::NotOnTop
        ));
        assert!(matches!(
            source
                .build(Some(ObjectId::null(gix::hash::Kind::Sha1)), tip)
                .await
                .unwrap(),
            Outgoing::NotOnTop
        ));

        // Two commits changing a wide directory: the second one's tree goes as an
        // offset delta of the first's, which the remote's index-pack resolves.
        for i in 0..60 {
            std::fs::create_dir_all(work.join("wide")).unwrap();
            std::fs::write(work.join(format!("wide/file-{i:02}.yaml")), "x\n").unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "wide"]);
        commit(&work, "wide/file-10.yaml", "changed\n");
        let wide: ObjectId = commit(&work, "wide/file-50.yaml", "changed\n");
        let Outgoing::Pack { bytes, commits } = source.build(Some(tip), wide).await.unwrap() else {
            panic!("packed");
        };
        assert_eq!(commits, 3);
        std::fs::write(dir.path().join("wide.pack"), &bytes).unwrap();
        git(dir.path(), &["index-pack", "wide.pack"]);
        let verify = git(dir.path(), &["verify-pack", "-v", "wide.idx"]);
        assert!(
            verify
                .lines()
                .any(|l| l.contains(" tree ") && l.split_whitespace().count() == 7),
            "no tree was sent as a delta:\n{verify}"
        );
        receive(&remote, &bytes, wide);
    }
}
