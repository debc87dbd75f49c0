//! Three-way merges of one file, for the files a repository edited in place shares
//! between objects and people: a replayed commit applies its change to the file as
//! the remote has it now, and the revert of a denied commit takes its change out of
//! the file as it is now, as `git rebase` and `git revert` do, with the real `git
//! merge-file`. Whole-file writes (the canonical layout) are not merged: a newer record
//! of the object replaces the older one.
//!
//! Invariant: a merge is used only when it parses as YAML; otherwise the caller does
//! what it did without one, and says so.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The trailer that marks a commit edited in place (see [`is_in_place`]).
pub(super) const TRAILER: &str = "Kubescribe-In-Place: yes";

/// Whether a commit message is of a change edited in place.
pub(super) fn is_in_place(message: &str) -> bool {
    message.lines().any(|line| line == TRAILER)
}

/// What to do where both sides changed the same lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conflicts {
    /// No merge.
    Refuse,
    /// The change being applied wins.
    Change,
}

/// `current` with the change from `base` to `changed` applied; `None` when the merge
/// conflicts (with [`Conflicts::Refuse`]) or the result is not YAML.
pub(super) fn merge(
    scratch: &Path,
    current: &[u8],
    base: &[u8],
    changed: &[u8],
    conflicts: Conflicts,
) -> Result<Option<Vec<u8>>, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = scratch.join(format!(
        "kubescribe-merge-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // Ours alone: a directory that is already there (someone else's, or a link) is
    // refused, and no other user can read or replace what is merged.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let result = (|| {
        let files = [("current", current), ("base", base), ("changed", changed)];
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes)
                .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))?;
        }
        let mut command = std::process::Command::new("git");
        command.arg("merge-file").arg("-p");
        match conflicts {
            Conflicts::Refuse => {}
            Conflicts::Change => {
                command.arg("--theirs");
            }
        }
        let output = command
            .args(["current", "base", "changed"])
            .current_dir(&dir)
            .env_remove("GIT_DIR")
            .output()
            .map_err(|e| format!("cannot run git merge-file: {e}"))?;
        match output.status.code() {
            Some(0) => {}
            // A positive code counts the conflicts.
            Some(n) if n > 0 && n < 127 => return Ok(None),
            _ => {
                return Err(format!(
                    "git merge-file failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        }
        let parses = crate::declared::edit::parses(&output.stdout);
        Ok(parses.then_some(output.stdout))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_applied_to_the_file_as_it_is_now_and_conflicts_are_resolved_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let base = b"a: 1\nb: 2\nc: 3\nd: 4\ne: 5\n";
        let changed = b"a: 1\nb: 20\nc: 3\nd: 4\ne: 5\n";
        let current = b"a: 1\nb: 2\nc: 3\nd: 4\ne: 50 # a person\n";
        let merged = merge(dir.path(), current, base, changed, Conflicts::Refuse)
            .unwrap()
            .unwrap();
        assert_eq!(merged, b"a: 1\nb: 20\nc: 3\nd: 4\ne: 50 # a person\n");
        // Both changed `b`.
        let current = b"a: 1\nb: 21\nc: 3\nd: 4\ne: 5\n";
        assert_eq!(
            merge(dir.path(), current, base, changed, Conflicts::Refuse).unwrap(),
            None
        );
        assert_eq!(
            merge(dir.path(), current, base, changed, Conflicts::Change)
                .unwrap()
                .unwrap(),
            b"a: 1\nb: 20\nc: 3\nd: 4\ne: 5\n"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "cleaned up"
        );
    }
}
