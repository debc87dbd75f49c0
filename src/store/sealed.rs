//! The writer's side of `secrets: sops`: a Secret is encrypted when it is
//! committed, against its file as the branch has it then, so an unchanged value
//! keeps its ciphertext and an unchanged Secret makes no commit; and the branch's
//! `.sops.yaml` is followed to every tree the branch moves to.
//!
//! Invariant: the plaintext is only ever in memory; what reaches a blob is the
//! [`crate::secrets::sops`] file, and what reaches a commit message is key paths.

use std::time::SystemTime;

use gix::hash::ObjectId;

use super::commit::lookup;
use super::{StoreError, Writer};
use crate::manifest::Sealed;
use crate::secrets::{Sealer, SOPS_YAML};

/// Points `sealer` at the `.sops.yaml` of `tree`.
pub(crate) fn follow(sealer: &Sealer, repo: &gix::Repository, tree: ObjectId) {
    let blob = lookup(repo, tree, SOPS_YAML).map_err(|e| e.to_string());
    sealer.follow(blob, |id| {
        repo.find_blob(id)
            .map(|blob| blob.detach().data)
            .map_err(|e| e.to_string())
    });
}

/// A sealed Secret's file, and the key paths whose values changed.
pub(super) struct SealedFile {
    pub(super) bytes: Vec<u8>,
    pub(super) changed: Vec<String>,
}

/// The commit message's account of a Secret's change: key paths, never values.
pub(super) fn body(changed: &[String]) -> String {
    if changed.is_empty() {
        "No value changed (values are encrypted with SOPS).\n\n".to_owned()
    } else {
        format!(
            "Values changed (encrypted with SOPS): {}.\n\n",
            changed.join(", ")
        )
    }
}

/// A bundle's message (the reconciler's: a subject, maybe a body, then its
/// trailers) with the values each Secret of `sealed` changed, before the trailers.
pub(super) fn with_values(message: &str, sealed: &[(String, Vec<String>)]) -> String {
    if sealed.is_empty() {
        return message.to_owned();
    }
    let mut list = String::from("Secrets, values changed (encrypted with SOPS):\n");
    for (path, changed) in sealed {
        let changed = if changed.is_empty() {
            "none".to_owned()
        } else {
            changed.join(", ")
        };
        list.push_str(&format!("- {path}: {changed}\n"));
    }
    list.push('\n');
    // The trailers are the last paragraph.
    let trimmed = message.trim_end_matches('\n');
    match trimmed.rfind("\n\n") {
        Some(at) => format!("{}\n\n{list}{}\n", &trimmed[..at], &trimmed[at + 2..]),
        None => format!("{trimmed}\n\n{list}"),
    }
}

/// A replayed file, encrypted for the tree it lands on.
pub(super) enum Resealed {
    /// Not a Secret kubescribe can read, or already for the recipients there:
    /// replayed as it is.
    Same,
    /// The Secret encrypted anew for the recipients there.
    New(Vec<u8>),
}

impl Writer {
    /// The file `blob` that one of our commits wrote at `path`, as it must be on
    /// `tree` (the remote's tip, where it is replayed): a Secret kubescribe can
    /// read whose recipients are not those `tree`'s `.sops.yaml` names (followed
    /// by the caller) is encrypted again for them, against the file `tree` has, so
    /// a recipient removed there never gets a value written here before. Any
    /// other file stays as it is, byte for byte (a revert finds what it undoes by
    /// its blob). `Err` when the Secret has no recipient there: nothing is pushed
    /// until `.sops.yaml` names one, so the write is neither lost nor pushed
    /// readable by the wrong keys.
    pub(super) fn reseal(
        &self,
        path: &str,
        blob: ObjectId,
        tree: ObjectId,
    ) -> Result<Resealed, StoreError> {
        let Some(sealer) = &self.settings.sealer else {
            return Ok(Resealed::Same);
        };
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let read = |id: ObjectId| -> Result<String, StoreError> {
            let blob = self.repo.find_blob(id).map_err(|e| write_error(&e))?;
            Ok(String::from_utf8_lossy(&blob.data).into_owned())
        };
        let text = read(blob)?;
        if !text.contains("\nsops:\n") {
            return Ok(Resealed::Same);
        }
        let Ok(plain) = sealer.open(&text) else {
            return Ok(Resealed::Same);
        };
        let cannot = |error: &dyn std::fmt::Display| {
            StoreError::Write {
            reason: format!(
                "the Secret at {path} cannot be encrypted for the remote's .sops.yaml ({error}); kubescribe pushes nothing until it can: give that path an age recipient there"
            ),
        }
        };
        let mut wanted: Vec<String> = sealer
            .recipients(path)
            .map_err(|e| cannot(&e))?
            .iter()
            .map(ToString::to_string)
            .chain(sealer.own_recipient())
            .collect();
        wanted.sort();
        wanted.dedup();
        if crate::secrets::sops::recipients_of(&text) == wanted {
            return Ok(Resealed::Same);
        }
        let theirs = match lookup(&self.repo, tree, path).map_err(|e| write_error(&e))? {
            Some(id) => Some(read(id)?),
            None => None,
        };
        let sealed = sealer
            .seal(&plain, path, theirs.as_deref(), SystemTime::now())
            .map_err(|e| cannot(&e))?;
        Ok(Resealed::New(sealed.text.into_bytes()))
    }

    /// Follows the `.sops.yaml` of the tree the branch is at.
    pub(super) fn follow_sops(&self) {
        if let Some(sealer) = &self.settings.sealer {
            follow(sealer, &self.repo, self.tree);
        }
    }

    /// `sealed` encrypted as the file at `path`, whose blob is `current`;
    /// `Ok(Err(reason))` when it cannot be recorded (no recipient for the path).
    pub(super) fn seal(
        &self,
        sealed: &Sealed,
        path: &str,
        current: Option<ObjectId>,
    ) -> Result<Result<SealedFile, String>, StoreError> {
        let Some(sealer) = &self.settings.sealer else {
            return Ok(Err(
                "secrets: sops has no keys for this repository (sops.identityFile); kubescribe writes no Secret in plaintext".to_owned(),
            ));
        };
        let previous = match current {
            Some(id) => {
                let blob = self.repo.find_blob(id).map_err(|e| StoreError::Write {
                    reason: e.to_string(),
                })?;
                Some(String::from_utf8_lossy(&blob.data).into_owned())
            }
            None => None,
        };
        Ok(
            match sealer.seal(sealed.plain(), path, previous.as_deref(), SystemTime::now()) {
                Ok(encrypted) => Ok(SealedFile {
                    bytes: encrypted.text.into_bytes(),
                    changed: encrypted.changed,
                }),
                Err(error) => Err(error.to_string()),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bundle_names_each_secret_s_changed_values_before_its_trailers() {
        let message =
            "reconcile: snapshot of secrets (2 objects)\n\nKubescribe-Reconcile: snapshot\n";
        let sealed = [
            (
                "a/core/secrets/x.yaml".to_owned(),
                vec!["data.k".to_owned()],
            ),
            ("a/core/secrets/y.yaml".to_owned(), Vec::new()),
        ];
        assert_eq!(
            super::with_values(message, &sealed),
            "reconcile: snapshot of secrets (2 objects)\n\nSecrets, values changed (encrypted with SOPS):\n- a/core/secrets/x.yaml: data.k\n- a/core/secrets/y.yaml: none\n\nKubescribe-Reconcile: snapshot\n"
        );
        assert_eq!(super::with_values(message, &[]), message);
    }
}
