//! Crash recovery at start: what a kill at any instant can leave in the repository,
//! cleaned before the writer opens it.
//!
//! kubescribe is the only writer of its repository, and nothing of an earlier run
//! (its writer and its fold of packs, its `git repack`, its pushes) is running when a
//! new writer starts, so every lock file is stale and every half-written pack is
//! garbage:
//! - `*.lock` files under `refs/`, and `packed-refs.lock` / `HEAD.lock` /
//!   `config.lock`: left by a kill during a ref update, they would fail every later
//!   batch ("another process moved or locked the branch");
//! - `.keep` files that kubescribe wrote (their content says so) for a batch's pack:
//!   they protect a pack from a concurrent fold until the branch names it; at start
//!   there is no concurrent fold, and a pack the branch never named holds only
//!   objects nothing refers to, which the next fold may take in harmlessly;
//! - packs without their index (a kill between the two renames), indexes without
//!   their pack, and the temporary files of our pack writer, of our fold and of
//!   git's (`*.tmp`, `tmp_*`, `.tmp-*`).
//!
//! Acknowledged writes are never touched: a commit the branch names has its pack and
//! index complete (both are renamed into place and fsynced before the ref moves).

use std::path::{Path, PathBuf};

/// The marker our `.keep` files start with ([`super::pack`]).
const KEEP_MARKER: &[u8] = b"kubescribe:";

/// What one recovery removed, by kind, for the log and the metric.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Recovered {
    pub ref_locks: Vec<PathBuf>,
    pub keeps: Vec<PathBuf>,
    pub broken_packs: Vec<PathBuf>,
    pub temporaries: Vec<PathBuf>,
}

impl Recovered {
    pub fn is_empty(&self) -> bool {
        self.ref_locks.is_empty()
            && self.keeps.is_empty()
            && self.broken_packs.is_empty()
            && self.temporaries.is_empty()
    }

    /// `(kind, count)` for `kubescribe_store_recovered_total{leftover}`.
    pub fn counts(&self) -> [(&'static str, usize); 4] {
        [
            ("ref_lock", self.ref_locks.len()),
            ("keep", self.keeps.len()),
            ("pack_without_index", self.broken_packs.len()),
            ("temporary", self.temporaries.len()),
        ]
    }
}

/// Removes what a crash left in the bare repository at `git_dir`. Files that cannot
/// be removed are logged and left; the writer then reports the error it meets.
pub(super) fn recover(git_dir: &Path) -> Recovered {
    let mut recovered = Recovered::default();
    for name in [
        "packed-refs.lock",
        "HEAD.lock",
        "config.lock",
        "shallow.lock",
    ] {
        let path = git_dir.join(name);
        if path.is_file() && remove(&path) {
            recovered.ref_locks.push(path);
        }
    }
    let mut dirs = vec![git_dir.join("refs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "lock") && remove(&path) {
                recovered.ref_locks.push(path);
            }
        }
    }

    let packs = git_dir.join("objects").join("pack");
    let Ok(entries) = std::fs::read_dir(&packs) else {
        return recovered;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let has = |name: &str| names.iter().any(|n| n == name);
    for name in &names {
        let path = packs.join(name);
        // Ours (`*.tmp`, the fold's `tmp_fold_*`) and git's (`tmp_pack_*`,
        // `tmp_idx_*`, `tmp_rev_*`, ... and repack's `.tmp-<pid>-*`): nothing of an
        // earlier run is still writing.
        if name.ends_with(".tmp") || name.starts_with("tmp_") || name.starts_with(".tmp-") {
            if remove(&path) {
                recovered.temporaries.push(path);
            }
        } else if let Some(base) = name.strip_suffix(".pack") {
            if !has(&format!("{base}.idx")) && remove(&path) {
                recovered.broken_packs.push(path);
            }
        } else if let Some(base) = name.strip_suffix(".idx") {
            if !has(&format!("{base}.pack")) && remove(&path) {
                recovered.broken_packs.push(path);
            }
        } else if name.ends_with(".keep") {
            // Empty: one an earlier version created and was killed before it
            // wrote the marker into.
            let ours = std::fs::read(&path)
                .is_ok_and(|text| text.is_empty() || text.starts_with(KEEP_MARKER));
            if ours && remove(&path) {
                recovered.keeps.push(path);
            }
        }
    }
    recovered
}

fn remove(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot remove a file a crash left in the repository; remove it by hand");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_removed_and_everything_else_kept() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path();
        let pack = git.join("objects/pack");
        std::fs::create_dir_all(&pack).unwrap();
        std::fs::create_dir_all(git.join("refs/heads/team")).unwrap();
        let write = |p: &Path, text: &str| std::fs::write(p, text).unwrap();
        write(&git.join("refs/heads/main"), "0000\n");
        write(&git.join("refs/heads/main.lock"), "");
        write(&git.join("refs/heads/team/a.lock"), "");
        write(&git.join("packed-refs.lock"), "");
        write(&pack.join("pack-a.pack"), "");
        write(&pack.join("pack-a.idx"), "");
        write(
            &pack.join("pack-a.keep"),
            "kubescribe: not yet named by a branch\n",
        );
        write(&pack.join("pack-b.pack"), ""); // no index: a kill between the renames
        write(
            &pack.join("pack-b.keep"),
            "kubescribe: not yet named by a branch\n",
        );
        write(&pack.join("pack-c.idx"), ""); // no pack
        write(&pack.join("pack-d.pack"), "");
        write(&pack.join("pack-d.idx"), "");
        write(&pack.join("pack-d.keep"), "someone else's reason\n");
        write(&pack.join("pack-e.pack.tmp"), "");
        write(&pack.join("tmp_pack_XYZ"), "");

        let recovered = recover(git);
        assert_eq!(recovered.ref_locks.len(), 3, "{recovered:?}");
        assert_eq!(recovered.keeps.len(), 2, "{recovered:?}");
        assert_eq!(recovered.broken_packs.len(), 2, "{recovered:?}");
        assert_eq!(recovered.temporaries.len(), 2, "{recovered:?}");
        let mut left: Vec<String> = std::fs::read_dir(&pack)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "pack-a.idx",
                "pack-a.pack",
                "pack-d.idx",
                "pack-d.keep",
                "pack-d.pack"
            ]
        );
        assert!(git.join("refs/heads/main").exists());
        assert!(!git.join("refs/heads/main.lock").exists());
        assert!(recover(git).is_empty(), "a second run finds nothing");
    }
}
