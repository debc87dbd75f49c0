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
    /// The identity's recipient.
    own: Option<String>,
    /// For a branch without `.sops.yaml`.
    fallback: Vec<age::x25519::Recipient>,
    without: WithoutRecipients,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("recipient", &self.own)
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
            own: identity.as_ref().map(|i| i.to_public().to_string()),
            identity,
            fallback,
            without: config.without_recipients,
        })
    }

    /// kubescribe's own recipient (public key), to list in `.sops.yaml`.
    pub fn recipient(&self) -> Option<String> {
        self.own.clone()
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
enum Seen {
    /// Not known: the branch was not read yet, or could not be. Nothing is
    /// encrypted meanwhile (a guess could leave a recipient out).
    Unknown(String),
    /// The branch has no `.sops.yaml`: the configured recipients.
    Absent,
    /// `.sops.yaml` at this blob, parsed, or why it cannot be.
    Rules {
        blob: gix::hash::ObjectId,
        rules: Result<Arc<rules::CreationRules>, String>,
    },
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
            seen: RwLock::new(Seen::Unknown(
                "kubescribe has not read the branch yet".to_owned(),
            )),
        }
    }

    /// Follows the branch's `.sops.yaml`: `blob` is its blob id in the tree the
    /// branch is at now (`Ok(None)`: there is none; `Err`: the tree could not be
    /// read), and `read` gives a blob's bytes. Parsed again only when it changed;
    /// a blob that could not be read is tried again at the next call.
    pub fn follow(
        &self,
        blob: Result<Option<gix::hash::ObjectId>, String>,
        read: impl FnOnce(gix::hash::ObjectId) -> Result<Vec<u8>, String>,
    ) {
        let next = match blob {
            Err(error) => Seen::Unknown(format!("the branch cannot be read ({error})")),
            Ok(None) => Seen::Absent,
            Ok(Some(id)) => {
                if let Seen::Rules { blob, .. } =
                    &*self.seen.read().unwrap_or_else(|e| e.into_inner())
                {
                    if *blob == id {
                        return;
                    }
                }
                match read(id) {
                    Ok(text) => Seen::Rules {
                        blob: id,
                        rules: rules::CreationRules::parse(&text).map(Arc::new),
                    },
                    Err(error) => Seen::Unknown(format!("its .sops.yaml cannot be read ({error})")),
                }
            }
        };
        match &next {
            Seen::Unknown(why) => {
                tracing::warn!(why = %why, "Secrets are not recorded until the branch's .sops.yaml can be read")
            }
            Seen::Rules {
                rules: Err(error), ..
            } => {
                tracing::warn!(%error, "the branch's .sops.yaml is not valid; Secrets are not recorded until it is fixed")
            }
            _ => {}
        }
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// The age recipients of the file at `path`: the branch's `.sops.yaml`'s, or
    /// without one the configured ones. Never empty, and never only kubescribe's
    /// own (the GitOps tool could not read the file).
    pub fn recipients(&self, path: &str) -> Result<Vec<age::x25519::Recipient>, SealError> {
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        let mut recipients = match &*seen {
            Seen::Rules {
                rules: Ok(rules), ..
            } => rules
                .recipients(path)
                .map_err(|e| SealError::NoRecipients(e.to_string()))?
                .to_vec(),
            Seen::Rules {
                rules: Err(error), ..
            } => {
                return Err(SealError::NoRecipients(format!(
                    "the repository's .sops.yaml is not valid ({error}): fix it"
                )))
            }
            Seen::Unknown(why) => {
                return Err(SealError::NoRecipients(format!(
                    "{why}; retry once kubescribe is ready"
                )))
            }
            Seen::Absent => self.keys.fallback.clone(),
        };
        if let Some(own) = &self.keys.own {
            recipients.retain(|r| r.to_string() != *own);
        }
        if recipients.is_empty() {
            return Err(SealError::NoRecipients(format!(
                "no age recipient besides kubescribe's own to encrypt {path} for: add a .sops.yaml with a creation rule for it to the repository, or set sops.recipients, with the age recipient of your GitOps tool"
            )));
        }
        Ok(recipients)
    }

    /// The plaintext document of a SOPS file kubescribe's identity can read.
    pub fn open(&self, file: &str) -> Result<Value, String> {
        let identity = self
            .keys
            .identity
            .as_ref()
            .ok_or_else(|| "kubescribe has no identity (sops.identityFile)".to_owned())?;
        sops::decrypt(file, identity).map_err(|e| e.to_string())
    }

    /// kubescribe's own recipient, added to every file.
    pub fn own_recipient(&self) -> Option<String> {
        self.keys.recipient()
    }

    /// Whether the branch's `.sops.yaml` is not known (not read yet, or it could
    /// not be read): nothing is encrypted until it is.
    pub fn is_unknown(&self) -> bool {
        matches!(
            *self.seen.read().unwrap_or_else(|e| e.into_inner()),
            Seen::Unknown(_)
        )
    }

    /// Whether kubescribe's identity is loaded, so a previous file is read back
    /// (and only the values that change are named).
    pub fn reads_back(&self) -> bool {
        self.keys.identity.is_some()
    }

    /// What happens to a Secret without recipients.
    pub fn without_recipients(&self) -> WithoutRecipients {
        self.keys.without
    }

    /// A new state of the Secret that the SOPS file `file` at `path` declares (a
    /// person's file, in a repository edited in place): the file's document as it
    /// decrypts, with the values `written` has (each kept under `data` or
    /// `stringData`, wherever the file had it) and the labels, annotations, type
    /// and `immutable` the write changed (`old` to `new`, both without values);
    /// everything else as the file has it. Encrypted for `path`'s recipients.
    /// `Err` says why it cannot be written, and what to do: a file in plain text,
    /// or one kubescribe's identity cannot read, is never written.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_declared(
        &self,
        file: &str,
        written: &Value,
        before: Option<&Value>,
        old: &Value,
        new: &Value,
        path: &str,
        object: &str,
        now: SystemTime,
    ) -> Result<sops::Encrypted, String> {
        // Not serde's message: it can quote the text, which may be a value.
        let parsed: Value = serde_yaml_ng::from_str(file).map_err(|_| {
            format!("{path}, which declares {object}, is not YAML kubescribe can read")
        })?;
        let Some(keys) = parsed.get("sops") else {
            return Err(format!(
                "{path} declares {object} in plain text, and kubescribe never writes a Secret's values in plain text: encrypt that file with sops (encrypted_regex ^(data|stringData)$), or change it in git"
            ));
        };
        // kubescribe writes age only: the file's other holders would lose it.
        if ["pgp", "kms", "gcp_kms", "azure_kv", "hc_vault"]
            .iter()
            .any(|k| {
                keys.get(*k)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            })
        {
            return Err(format!(
                "{path} declares {object} in a SOPS file also encrypted for PGP, KMS or Vault keys, which kubescribe cannot encrypt for: change it in git"
            ));
        }
        let current = self.open(file).map_err(|e| match self.keys.recipient() {
            Some(recipient) => format!(
                "{path} declares {object} in a SOPS file kubescribe cannot read ({e}): add kubescribe's recipient {recipient} to the file's recipients (in .sops.yaml, then `sops updatekeys {path}`), or change it in git"
            ),
            None => format!("{path} declares {object} in a SOPS file, and kubescribe's identity (sops.identityFile) is not readable here"),
        })?;
        let plain = reshape(current, written, before, old, new)
            .map_err(|e| format!("{path} declares {object}, but {e}: change it in git"))?;
        self.seal(&plain, path, Some(file), now)
            .map_err(|e| format!("{object}: {e}"))
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

/// The Secret document `file` with what the write changed (see
/// [`Sealer::seal_declared`]): each value that differs between `before` (the
/// values before the write; `None`: every value counts as changed) and `written`,
/// each label and annotation that differs between `old` and `new`, and `type` and
/// `immutable`. A value the file holds for something else to fill in (a Flux
/// `${VAR}`) is never written over.
fn reshape(
    mut file: Value,
    written: &Value,
    before: Option<&Value>,
    old: &Value,
    new: &Value,
) -> Result<Value, String> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    // The apiserver keeps every value in `data`, base64.
    let values = |doc: Option<&Value>| -> serde_json::Map<String, Value> {
        let mut all = doc
            .and_then(|d| d.get("data"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(text) = doc
            .and_then(|d| d.get("stringData"))
            .and_then(Value::as_object)
        {
            for (key, value) in text {
                if let Some(value) = value.as_str() {
                    all.insert(key.clone(), Value::String(engine.encode(value)));
                }
            }
        }
        all
    };
    let (was, now) = (values(before), values(Some(written)));
    let Some(doc) = file.as_object_mut() else {
        return Ok(file);
    };
    let mut keys: Vec<&String> = was.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if before.is_some() && was.get(key) == now.get(key) {
            continue;
        }
        let section = |doc: &serde_json::Map<String, Value>, name: &str| {
            doc.get(name)
                .and_then(|s| s.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (as_data, as_text) = (section(doc, "data"), section(doc, "stringData"));
        if as_text.iter().chain(&as_data).any(|v| v.contains("${")) {
            return Err(format!(
                "its {key} holds a variable for the GitOps tool to fill in (${{…}}); kubescribe does not write over it"
            ));
        }
        for name in ["data", "stringData"] {
            if let Some(Value::Object(map)) = doc.get_mut(name) {
                map.remove(key);
            }
        }
        let Some(value) = now.get(key) else { continue };
        let text = as_text
            .is_some()
            .then(|| value.as_str())
            .flatten()
            .and_then(|v| engine.decode(v).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let (name, value) = match text {
            Some(text) => ("stringData", Value::String(text)),
            None => ("data", value.clone()),
        };
        doc.entry(name)
            .or_insert_with(|| Value::Object(serde_json::Map::new()))
            .as_object_mut()
            .ok_or_else(|| format!("its {name} is not a mapping"))?
            .insert(key.clone(), value);
    }
    for name in ["data", "stringData"] {
        if doc
            .get(name)
            .and_then(Value::as_object)
            .is_some_and(|m| m.is_empty())
        {
            doc.remove(name);
        }
    }
    for field in ["labels", "annotations"] {
        let map_of = |doc: &Value| {
            doc.pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (was, now) = (map_of(old), map_of(new));
        let mut keys: Vec<&String> = was.keys().chain(now.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys.into_iter().filter(|k| was.get(*k) != now.get(*k)) {
            let metadata = doc
                .entry("metadata")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            let Some(metadata) = metadata.as_object_mut() else {
                continue;
            };
            let map = metadata
                .entry(field)
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(map) = map.as_object_mut() {
                match now.get(key) {
                    Some(value) => map.insert(key.clone(), value.clone()),
                    None => map.remove(key),
                };
            }
            if metadata
                .get(field)
                .and_then(Value::as_object)
                .is_some_and(|m| m.is_empty())
            {
                metadata.remove(field);
            }
        }
    }
    for field in ["type", "immutable"] {
        if old.get(field) != new.get(field) {
            match new.get(field) {
                Some(value) => doc.insert(field.to_owned(), value.clone()),
                None => doc.remove(field),
            };
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(recipients: &[&str]) -> Arc<Keys> {
        let identity = age::x25519::Identity::generate();
        Arc::new(Keys {
            own: Some(identity.to_public().to_string()),
            identity: Some(identity),
            fallback: recipients.iter().map(|r| r.parse().unwrap()).collect(),
            without: WithoutRecipients::Deny,
        })
    }

    const FLUX: &str = "age1helqcqsh9464r8chnwc2fzj8uv7vr5ntnsft0tn45v2xtz0hpfwq98cmsg";

    #[test]
    fn a_declared_secret_keeps_its_shape_and_takes_only_what_the_write_changed() {
        use serde_json::json;
        let file = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "labels": {"app": "db", "kept": "as-is"}},
            "type": "Opaque",
            "stringData": {"url": "postgres://old", "gone": "x", "host": "${DB_HOST}"},
            "data": {"blob": "AAE=", "patched": "b2xk"},
        });
        // The live Secret, before and after: every value in data (the apiserver
        // merges stringData). `patched` differs from the file (an overlay set it)
        // but the write did not change it; `host` is Flux's to fill in.
        let before = json!({"data": {
            "url": "cG9zdGdyZXM6Ly9vbGQ=", "gone": "eA==", "blob": "AAE=",
            "patched": "b3ZlcmxhaWQ=", "host": "ZGIubG9jYWw=",
        }});
        let written = json!({"data": {
            "url": "cG9zdGdyZXM6Ly9uZXc=", "blob": "AAI=", "new": "bmV3",
            "patched": "b3ZlcmxhaWQ=", "host": "ZGIubG9jYWw=",
        }});
        let old = json!({"metadata": {"name": "db", "namespace": "a", "labels": {"app": "db", "common": "x"}}, "type": "Opaque"});
        let mut new = old.clone();
        new["metadata"]["labels"]["tier"] = json!("data");
        let shaped = reshape(file.clone(), &written, Some(&before), &old, &new).unwrap();
        assert_eq!(
            shaped,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                // No namespace added (its kustomization gives it), no `common`
                // label (an overlay's): only the label the write added.
                "metadata": {"name": "db", "labels": {"app": "db", "kept": "as-is", "tier": "data"}},
                "type": "Opaque",
                "stringData": {"url": "postgres://new", "host": "${DB_HOST}"},
                "data": {"blob": "AAI=", "patched": "b2xk", "new": "bmV3"},
            })
        );
        // A write to the value Flux fills in is refused.
        let mut over = written.clone();
        over["data"]["host"] = json!("b3RoZXI=");
        let error = reshape(file, &over, Some(&before), &old, &old).unwrap_err();
        assert!(error.contains("host") && error.contains("${"), "{error}");
    }

    #[test]
    fn sops_yaml_wins_over_the_configured_recipients_and_is_followed() {
        let flux = keys(&[FLUX]);
        let own = flux.recipient().unwrap();
        let sealer = Sealer::new(flux);
        // Before the branch is read: nothing, not a guess.
        let error = sealer.recipients("a/s.yaml").unwrap_err();
        assert!(error.to_string().contains("not read the branch"), "{error}");
        sealer.follow(Ok(None), |_| unreachable!());
        assert_eq!(sealer.recipients("a/s.yaml").unwrap().len(), 1);
        let id = gix::hash::ObjectId::null(gix::hash::Kind::Sha1);
        // A .sops.yaml that covers other paths only: nothing for this one.
        sealer.follow(Ok(Some(id)), |_| {
            Ok(format!("creation_rules:\n  - path_regex: ^b/\n    age: {FLUX}\n  - path_regex: ^c/\n    age: {own}\n").into_bytes())
        });
        let error = sealer.recipients("a/s.yaml").unwrap_err();
        assert!(error.to_string().contains("no creation rule"), "{error}");
        assert_eq!(sealer.recipients("b/s.yaml").unwrap().len(), 1);
        // kubescribe's own recipient alone is no recipient: Flux could not read it.
        let error = sealer.recipients("c/s.yaml").unwrap_err();
        assert!(
            error.to_string().contains("besides kubescribe's own"),
            "{error}"
        );
        // A broken one refuses every path, with the reason.
        let other = gix::hash::ObjectId::empty_blob(gix::hash::Kind::Sha1);
        sealer.follow(Ok(Some(other)), |_| Ok(b"creation_rules: [".to_vec()));
        let error = sealer.recipients("b/s.yaml").unwrap_err();
        assert!(error.to_string().contains("not valid"), "{error}");
        // One that cannot be read is read again at the next call.
        sealer.follow(Ok(Some(id)), |_| Err("disk".to_owned()));
        assert!(sealer.recipients("b/s.yaml").is_err());
        sealer.follow(Ok(Some(id)), |_| {
            Ok(format!("creation_rules:\n  - age: {FLUX}\n").into_bytes())
        });
        assert_eq!(sealer.recipients("b/s.yaml").unwrap().len(), 1);
        // Gone again: the configured recipients.
        sealer.follow(Ok(None), |_| unreachable!());
        assert_eq!(sealer.recipients("a/s.yaml").unwrap().len(), 1);
        let none = Sealer::new(keys(&[]));
        none.follow(Ok(None), |_| unreachable!());
        let error = none.recipients("a/s.yaml").unwrap_err();
        assert!(error.to_string().contains("sops.recipients"), "{error}");
    }
}
