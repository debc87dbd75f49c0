//! Secrets in git (issue 17): a Secret recorded encrypted with SOPS and age, so
//! that the GitOps tool (Flux's kustomize-controller) decrypts it and git never
//! holds a plaintext value.
//!
//! [`sops`] writes and reads the files, [`rules`] reads a repository's
//! `.sops.yaml`, and a [`Sealer`] (one per repository and branch) puts them
//! together: it knows kubescribe's own identity, the configured recipients, and the
//! branch's `.sops.yaml` as of the tree the store last moved the branch to.
//!
//! Invariants: nothing here logs, returns in an error or puts in a file any
//! plaintext value; a file is encrypted for the recipients the branch's
//! `.sops.yaml` names (or, without one, the configured ones), never for fewer.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde_json::Value;

use crate::config::{SopsConfig, WithoutRecipients};

pub mod rules;
pub mod sops;

pub use rules::SOPS_YAML;

/// kubescribe's keys for `secrets: sops`, from [`SopsConfig`].
pub struct Keys {
    /// kubescribe's own identity: listed among every file's recipients, so an
    /// unchanged value can keep its ciphertext. `None` only for `kubescribe
    /// check`, which may run without it.
    identity: Option<age::x25519::Identity>,
    /// For a branch without `.sops.yaml`.
    fallback: Vec<age::x25519::Recipient>,
    without: WithoutRecipients,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("recipient", &self.recipient())
            .field("fallback", &self.fallback.len())
            .finish_non_exhaustive()
    }
}

/// Why kubescribe's keys cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read sops.identityFile {path}: {reason}; make one with `age-keygen -o {path}` (mounted from a Kubernetes Secret), see docs/secrets.md")]
    Identity { path: String, reason: String },
    #[error("sops.recipients: {0:?} is not an age recipient (age1...)")]
    Recipient(String),
}

impl Keys {
    /// Reads the identity file (required unless `optional`) and the recipients.
    pub fn load(config: &SopsConfig, optional: bool) -> Result<Self, KeysError> {
        let identity = match &config.identity_file {
            Some(path) => match read_identity(path) {
                Ok(identity) => Some(identity),
                Err(error) if optional => {
                    tracing::debug!(%error, "no sops identity; values are not compared");
                    None
                }
                Err(error) => return Err(error),
            },
            None if optional => None,
            None => {
                return Err(KeysError::Identity {
                    path: "(unset)".to_owned(),
                    reason: "secrets: sops needs it".to_owned(),
                })
            }
        };
        let fallback = config
            .recipients
            .iter()
            .map(|r| {
                r.trim()
                    .parse()
                    .map_err(|_| KeysError::Recipient(r.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            identity,
            fallback,
            without: config.without_recipients,
        })
    }

    /// kubescribe's own recipient (public key), to list in `.sops.yaml`.
    pub fn recipient(&self) -> Option<String> {
        self.identity.as_ref().map(|i| i.to_public().to_string())
    }
}

fn read_identity(path: &Path) -> Result<age::x25519::Identity, KeysError> {
    let error = |reason: String| KeysError::Identity {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    // age-keygen's file: comments, then one AGE-SECRET-KEY-1… line.
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .ok_or_else(|| error("it holds no AGE-SECRET-KEY-1... line".to_owned()))?;
    line.parse()
        .map_err(|_| error("its AGE-SECRET-KEY-1... line is not a valid age identity".to_owned()))
}

/// The branch's `.sops.yaml` as the sealer last saw it.
#[derive(Default)]
struct Seen {
    /// The blob id of `.sops.yaml`, `None` when the tree has none.
    blob: Option<gix::hash::ObjectId>,
    rules: Option<Result<Arc<rules::CreationRules>, String>>,
}

/// Encrypts one branch's Secrets: [`Keys`] and the branch's `.sops.yaml`.
pub struct Sealer {
    keys: Arc<Keys>,
    seen: RwLock<Seen>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

/// Why a Secret is not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No recipient (besides kubescribe's own) for the file.
    #[error("{0}")]
    NoRecipients(String),
    #[error("cannot encrypt the Secret: {0}")]
    Sops(#[from] sops::SopsError),
}

impl Sealer {
    pub fn new(keys: Arc<Keys>) -> Self {
        Self {
            keys,
            seen: RwLock::default(),
        }
    }

    /// Follows the branch's `.sops.yaml` (its blob id in the tree the branch is at
    /// now); `read` gives a blob's bytes. Parsed again only when it changed.
    pub fn follow(
        &self,
        blob: Option<gix::hash::ObjectId>,
        read: impl FnOnce(gix::hash::ObjectId) -> Result<Vec<u8>, String>,
    ) {
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if seen.blob == blob && (blob.is_none() || seen.rules.is_some()) {
                return;
            }
        }
        let rules = blob.map(|id| {
            read(id)
                .and_then(|text| rules::CreationRules::parse(&text))
                .map(Arc::new)
        });
        if let Some(Err(error)) = &rules {
            tracing::warn!(%error, "the branch's .sops.yaml cannot be read; Secrets are not recorded until it is fixed");
        }
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = Seen { blob, rules };
    }

    /// The age recipients of the file at `path`: the branch's `.sops.yaml`'s, or
    /// without one the configured ones. Never empty.
    pub fn recipients(&self, path: &str) -> Result<Vec<age::x25519::Recipient>, SealError> {
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        let recipients = match &seen.rules {
            Some(Ok(rules)) => rules
                .recipients(path)
                .map_err(|e| SealError::NoRecipients(e.to_string()))?
                .to_vec(),
            Some(Err(error)) => {
                return Err(SealError::NoRecipients(format!(
                    "the repository's .sops.yaml cannot be read ({error}): fix it"
                )))
            }
            None => self.keys.fallback.clone(),
        };
        if recipients.is_empty() {
            return Err(SealError::NoRecipients(format!(
                "no age recipient to encrypt {path} for: add a .sops.yaml with a creation rule for it to the repository, or set sops.recipients, with the age recipient of your GitOps tool"
            )));
        }
        Ok(recipients)
    }

    /// What happens to a Secret without recipients.
    pub fn without_recipients(&self) -> WithoutRecipients {
        self.keys.without
    }

    /// `plain` (a sanitised Secret) as the SOPS file at `path`, built on
    /// `previous` (the file as it is on the branch) so that unchanged values keep
    /// their ciphertexts.
    pub fn seal(
        &self,
        plain: &Value,
        path: &str,
        previous: Option<&str>,
        now: SystemTime,
    ) -> Result<sops::Encrypted, SealError> {
        let recipients = self.recipients(path)?;
        Ok(sops::encrypt(
            plain,
            &recipients,
            self.keys.identity.as_ref(),
            previous,
            path,
            now,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(recipients: &[&str]) -> Arc<Keys> {
        Arc::new(Keys {
            identity: Some(age::x25519::Identity::generate()),
            fallback: recipients.iter().map(|r| r.parse().unwrap()).collect(),
            without: WithoutRecipients::Deny,
        })
    }

    const FLUX: &str = "age1helqcqsh9464r8chnwc2fzj8uv7vr5ntnsft0tn45v2xtz0hpfwq98cmsg";

    #[test]
    fn sops_yaml_wins_over_the_configured_recipients_and_is_followed() {
        let sealer = Sealer::new(keys(&[FLUX]));
        assert_eq!(sealer.recipients("a/s.yaml").unwrap().len(), 1);
        let id = gix::hash::ObjectId::null(gix::hash::Kind::Sha1);
        // A .sops.yaml that covers other paths only: nothing for this one.
        sealer.follow(Some(id), |_| {
            Ok(format!("creation_rules:\n  - path_regex: ^b/\n    age: {FLUX}\n").into_bytes())
        });
        let error = sealer.recipients("a/s.yaml").unwrap_err();
        assert!(error.to_string().contains("no creation rule"), "{error}");
        assert_eq!(sealer.recipients("b/s.yaml").unwrap().len(), 1);
        // A broken one refuses every path, with the reason.
        let other = gix::hash::ObjectId::empty_blob(gix::hash::Kind::Sha1);
        sealer.follow(Some(other), |_| Ok(b"creation_rules: [".to_vec()));
        let error = sealer.recipients("b/s.yaml").unwrap_err();
        assert!(error.to_string().contains("cannot be read"), "{error}");
        // Gone again: the configured recipients.
        sealer.follow(None, |_| unreachable!());
        assert_eq!(sealer.recipients("a/s.yaml").unwrap().len(), 1);
        let none = Sealer::new(keys(&[]));
        let error = none.recipients("a/s.yaml").unwrap_err();
        assert!(error.to_string().contains("sops.recipients"), "{error}");
    }
}
