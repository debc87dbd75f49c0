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
pub(super) fn follow(sealer: &Sealer, repo: &gix::Repository, tree: ObjectId) {
    let blob = match lookup(repo, tree, SOPS_YAML) {
        Ok(blob) => blob,
        Err(error) => {
            tracing::warn!(%error, "cannot look for the branch's .sops.yaml");
            return;
        }
    };
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

impl SealedFile {
    /// The commit message's account of the change: key paths, never values.
    pub(super) fn body(&self) -> String {
        if self.changed.is_empty() {
            "No value changed (values are encrypted with SOPS).\n\n".to_owned()
        } else {
            format!(
                "Values changed (encrypted with SOPS): {}.\n\n",
                self.changed.join(", ")
            )
        }
    }
}

impl Writer {
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
