//! Notes of denied writes whose commit is owed a revert, kept on disk until the
//! revert is durable, so a crash between a denial and its revert cannot let the
//! denied commit be pushed on its own after the restart.
//!
//! Invariants: a note is written (and fsync'ed) before the caller hears "denied";
//! it is removed only after the revert commit is durable; at start, every note
//! becomes a pending revert, and the unpushed commits wait for it before any push.
//! A note names the commit as first made: a replay since then renames it, and the
//! revert then compares the file's content (`revert_edit`), as it always does.

use std::path::{Path, PathBuf};

use gix::hash::ObjectId;
use serde_json::{json, Value};

use super::{PendingRevert, Revert};
use crate::manifest::{Action, Change, RepoPath, Verb};

/// The directory of the notes, inside the bare repository (git ignores it).
fn dir(git_dir: &Path) -> PathBuf {
    git_dir.join("kubescribe").join("denied")
}

/// Writes the note of `commit`'s denial, durably. Returns its path.
pub(super) fn write(
    git_dir: &Path,
    change: &Change,
    commit: ObjectId,
    reason: &str,
) -> std::io::Result<PathBuf> {
    let dir = dir(git_dir);
    std::fs::create_dir_all(&dir)?;
    let note = json!({
        "commit": commit.to_string(),
        "path": change.path.as_str(),
        "verb": change.verb.as_str(),
        "apiVersion": change.api_version,
        "kind": change.kind,
        "namespace": change.namespace,
        "name": change.name,
        "user": change.user,
        "uid": change.uid,
        "reason": reason,
    });
    let path = dir.join(format!("{commit}.json"));
    let temporary = dir.join(format!("{commit}.json.tmp"));
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(note.to_string().as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(path)
}

/// Every note left by an earlier run, as the reverts it owes.
pub(super) fn read(git_dir: &Path) -> Vec<PendingRevert> {
    let Ok(entries) = std::fs::read_dir(dir(git_dir)) else {
        return Vec::new();
    };
    let mut owed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            // A note whose write did not finish: its caller was not answered yet.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|note| parse(&note, path.clone()))
        {
            Some(pending) => owed.push(pending),
            None => {
                tracing::error!(note = %path.display(), "cannot read the note of a denied write; its commit may be pushed unreverted")
            }
        }
    }
    owed
}

fn parse(note: &Value, file: PathBuf) -> Option<PendingRevert> {
    let text = |key: &str| note.get(key).and_then(Value::as_str).map(str::to_owned);
    let verb = match note.get("verb")?.as_str()? {
        "create" => Verb::Create,
        "update" => Verb::Update,
        _ => Verb::Delete,
    };
    let change = Change {
        path: RepoPath::from_note(text("path")?)?,
        action: Action::Remove,
        verb,
        api_version: text("apiVersion")?,
        kind: text("kind")?,
        namespace: text("namespace"),
        name: text("name")?,
        user: text("user")?,
        groups: Vec::new(),
        uid: text("uid")?,
        version: None,
        in_place: None,
    };
    Some(PendingRevert {
        change,
        revert: Revert {
            commit: ObjectId::from_hex(text("commit")?.as_bytes()).ok()?,
            reason: text("reason")?,
            after: None,
        },
        ticket: None,
        at: None,
        note: Some(file),
    })
}

/// Removes a note once its revert is durable.
pub(super) fn settled(note: &Path) {
    if let Err(error) = std::fs::remove_file(note) {
        tracing::warn!(note = %note.display(), %error, "cannot remove the note of a reverted write; the next start reverts nothing twice (the file no longer matches)");
    }
}
