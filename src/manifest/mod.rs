//! Turns an admitted write into the change a person would keep in git.
//!
//! It sanitises with a deny-list: status, server-set metadata, server-assigned spec
//! fields and tool annotations go; every other field stays, so nothing a user wrote
//! (an `immutable` flag, a StorageClass's `provisioner`) is ever silently dropped. It
//! renders byte-stable YAML ([`crate::yaml`]) and places the file ([`layout`]). It never
//! touches the repository: a [`Change`] says what to do, and the store does it.
//! Secrets never leave this module in plaintext.

mod in_place;
mod layout;

use kube_core::admission::Operation;
use serde_json::{Map, Value};

pub use in_place::{plan_in_place, Placement};
pub(crate) use layout::{Coordinates, Filter, Select};
pub use layout::{Layout, LayoutError, RepoPath};

use crate::config::SecretMode;
use crate::policy::Write;
use crate::yaml;

/// The value every Secret value is replaced with in `redact` mode. It is not valid
/// base64, so a redacted Secret can never be applied over the real one by accident.
pub const REDACTED: &str = "<redacted>";

/// Annotation and label keys kubescribe itself may stamp on objects; never recorded.
pub const OWN_PREFIX: &str = "kubescribe.io/";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the request carries no object to record")]
    NoObject,
    #[error("the object is not a JSON object")]
    NotAnObject,
    #[error("the object has no name")]
    NoName,
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// A sanitised Secret with its plaintext values, to be encrypted by the store, and
/// the values it had before the write (an update's), so a file a person keeps is
/// changed only where the write changed it. Its `Debug` shows the key paths only.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Value, Option<Value>);

impl Sealed {
    pub fn plain(&self) -> &Value {
        &self.0
    }

    /// The object before the write, as far as its values go (`data` and
    /// `stringData`); `None` for a create.
    pub fn before(&self) -> Option<&Value> {
        self.1.as_ref()
    }

    /// The key paths of its values (`data.password`), never the values.
    pub fn keys(&self) -> Vec<String> {
        ["data", "stringData"]
            .iter()
            .filter_map(|field| Some((field, self.0.get(*field)?.as_object()?)))
            .flat_map(|(field, map)| map.keys().map(move |key| format!("{field}.{key}")))
            .collect()
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

/// What the store does with the file at [`Change::path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes (a rendered, sanitised manifest).
    Put(Vec<u8>),
    /// Write this Secret as a SOPS file (`secrets: sops`). The store encrypts it
    /// when it commits, against the file as the branch has it then, so unchanged
    /// values keep their ciphertexts.
    Seal(Box<Sealed>),
    /// Remove the file, if it is there.
    Remove,
    /// Remove the file and the files of every object the delete takes with it (a
    /// Namespace's objects, a definition's custom resources; see [`crate::cascade`]).
    Cascade(Box<crate::cascade::Cascade>),
    /// A `scale` write: set `spec.replicas` in the parent's file, if it is there.
    SetReplicas(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

/// One file change, with everything the commit needs to say who made it and why.
#[derive(Debug, Clone)]
pub struct Change {
    pub path: RepoPath,
    pub action: Action,
    pub verb: Verb,
    /// `v1`, `apps/v1`: the object's apiVersion (for a scale write, the Scale's; the
    /// store reads the parent's from its file).
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub user: String,
    pub groups: Vec<String>,
    pub uid: String,
    /// Where this write stands in its object's history, when the request says.
    pub version: Option<ObjectVersion>,
    /// Set when the object is declared in a document a person maintains: the store
    /// edits that document instead of writing `action` (see [`plan_in_place`]).
    pub in_place: Option<Box<crate::declared::InPlace>>,
}

/// Where a write stands in its object's history: the object's incarnation (uid and
/// creation time) and, for an update or delete, the resourceVersion it started from.
/// Two records of one object made by different kubescribe replicas are ordered by it
/// (see [`ObjectVersion::newer_than`]), so the newest wins whoever pushes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub uid: String,
    /// `metadata.creationTimestamp`, RFC 3339 in UTC (seconds), as the apiserver sets it.
    pub created: String,
    /// The resourceVersion the write started from (`None` for a create), or, for a
    /// state the cluster showed (`state`), the resourceVersion of that state.
    pub after: Option<u64>,
    /// A state the cluster showed (a watch or list), not a write being admitted.
    pub state: bool,
}

impl ObjectVersion {
    /// From the object a write is about (`object` for a create, the old object
    /// otherwise); `None` when its metadata lacks a uid or a creation time.
    pub fn of(object: &Value, create: bool) -> Option<Self> {
        let meta = object.get("metadata")?;
        let text = |key: &str| {
            meta.get(key)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        Some(Self {
            uid: text("uid")?.to_owned(),
            created: text("creationTimestamp")?.to_owned(),
            after: if create {
                None
            } else {
                Some(text("resourceVersion")?.parse().ok()?)
            },
            state: false,
        })
    }

    /// The version of an object as the cluster shows it.
    pub fn of_state(object: &Value) -> Option<Self> {
        Some(Self {
            state: true,
            ..Self::of(object, false)?
        })
    }

    /// Whether this record came after `other` in the object's history; `None` when
    /// that cannot be told. Within one incarnation, the apiserver serialises writes,
    /// so a later one starts from a greater resourceVersion, and a create comes
    /// first; a write made from resourceVersion r comes after the state r it
    /// started from. A later incarnation (created later) comes after everything of
    /// an earlier one. (resourceVersions are opaque by contract; compared as
    /// numbers here, as the apiserver's etcd storage makes them.)
    pub fn newer_than(&self, other: &ObjectVersion) -> Option<bool> {
        use std::cmp::Ordering;
        if self.uid == other.uid {
            let rank = |v: &ObjectVersion| v.after.map(|after| (after, !v.state));
            return match rank(self).cmp(&rank(other)) {
                Ordering::Greater => Some(true),
                Ordering::Less => Some(false),
                Ordering::Equal => None,
            };
        }
        match self.created.cmp(&other.created) {
            Ordering::Greater => Some(true),
            Ordering::Less => Some(false),
            Ordering::Equal => None,
        }
    }

    /// The commit trailers that carry it.
    pub fn trailers(&self) -> String {
        let mut text = format!(
            "Object-Uid: {}\nObject-Created: {}\n",
            self.uid, self.created
        );
        match (self.after, self.state) {
            (Some(after), false) => text.push_str(&format!("Object-Resource-Version: {after}\n")),
            (Some(after), true) => text.push_str(&format!("Object-State-Version: {after}\n")),
            (None, _) => {}
        }
        text
    }

    /// Read back from a commit message's trailers.
    pub fn from_message(message: &str) -> Option<Self> {
        let trailer = |key: &str| {
            message
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
                .map(str::trim)
        };
        let (after, state) = match (
            trailer("Object-Resource-Version"),
            trailer("Object-State-Version"),
        ) {
            (Some(rv), None) => (Some(rv.parse().ok()?), false),
            (None, Some(rv)) => (Some(rv.parse().ok()?), true),
            (None, None) => (None, false),
            (Some(_), Some(_)) => return None,
        };
        Some(Self {
            uid: trailer("Object-Uid")?.to_owned(),
            created: trailer("Object-Created")?.to_owned(),
            after,
            state,
        })
    }

    /// The trailer that carries it for one file of a commit of many:
    /// `Object-Version-Of: <path> <uid> <created> create|after:<rv>|state:<rv>`.
    pub fn trailer_of(&self, path: &str) -> String {
        let after = match (self.after, self.state) {
            (Some(rv), false) => format!("after:{rv}"),
            (Some(rv), true) => format!("state:{rv}"),
            (None, _) => "create".to_owned(),
        };
        format!(
            "Object-Version-Of: {path} {} {} {after}\n",
            self.uid, self.created
        )
    }

    /// The version of each file a commit of many names in its [`Self::trailer_of`]
    /// trailers (read once: such a commit may name thousands).
    pub fn of_paths(message: &str) -> std::collections::HashMap<String, Self> {
        message
            .lines()
            .filter_map(|line| {
                // From the right: a path may hold spaces, a uid and a time do not.
                let mut fields = line.strip_prefix("Object-Version-Of: ")?.rsplitn(4, ' ');
                let (after, created, uid, path) = (
                    fields.next()?,
                    fields.next()?,
                    fields.next()?,
                    fields.next()?,
                );
                let (after, state) = match after.split_once(':') {
                    None if after == "create" => (None, false),
                    Some(("after", rv)) => (Some(rv.parse().ok()?), false),
                    Some(("state", rv)) => (Some(rv.parse().ok()?), true),
                    _ => return None,
                };
                let version = Self {
                    uid: uid.to_owned(),
                    created: created.to_owned(),
                    after,
                    state,
                };
                Some((path.to_owned(), version))
            })
            .collect()
    }
}

impl Change {
    /// The same change without its file's bytes (the action becomes `Remove`; a
    /// cascade, which has none, stays), for whoever keeps it only to say which change
    /// it was.
    pub fn without_body(&self) -> Change {
        Change {
            path: self.path.clone(),
            action: match &self.action {
                Action::Cascade(cascade) => Action::Cascade(cascade.clone()),
                _ => Action::Remove,
            },
            verb: self.verb,
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            user: self.user.clone(),
            groups: self.groups.clone(),
            uid: self.uid.clone(),
            version: self.version.clone(),
            // Which object it is, without the edit: a revert finds the object's
            // later changes by it.
            in_place: self.in_place.as_ref().map(|in_place| {
                Box::new(crate::declared::InPlace {
                    ops: Vec::new(),
                    old: Value::Null,
                    new: Value::Null,
                    ..(**in_place).clone()
                })
            }),
        }
    }

    /// `team-a/web`, or just `reader` for a cluster-scoped object.
    pub fn object_ref(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Plans the change for a write that policy decided to record.
pub fn plan(write: &Write, layout: &Layout, secrets: SecretMode) -> Result<Change, ManifestError> {
    let live = write.live_object();
    let name = live
        .and_then(|o| o.pointer("/metadata/name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(&write.name);
    if name.is_empty() {
        return Err(ManifestError::NoName);
    }
    let path = layout.place(layout::Coordinates {
        namespace: write.namespace.as_deref().filter(|ns| !ns.is_empty()),
        group: &write.resource.group,
        resource: &write.resource.resource,
        name,
    })?;
    let api_version = live
        .and_then(|o| o.get("apiVersion"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| write.kind.api_version());
    let kind = live
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or(&write.kind.kind)
        .to_owned();

    let (verb, action) = match write.operation {
        Operation::Delete => (Verb::Delete, Action::Remove),
        _ if write.sub_resource.as_deref() == Some("scale") => {
            let object = live.ok_or(ManifestError::NoObject)?;
            // `kubectl scale --replicas=0` sends `spec: {}`: replicas is omitempty.
            let replicas = object
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            (Verb::Update, Action::SetReplicas(replicas))
        }
        _ => {
            let object = live.ok_or(ManifestError::NoObject)?;
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                // Finalizers are being cleared on an object already deleted: the file
                // went with the DELETE and must not come back.
                (Verb::Delete, Action::Remove)
            } else {
                let verb = if write.operation == Operation::Create {
                    Verb::Create
                } else {
                    Verb::Update
                };
                let mut clean = object.clone();
                sanitize(&mut clean, &write.resource.group, &kind)?;
                if write.resource.group.is_empty() && kind == "Secret" {
                    drop_copies(&mut clean, write.old_object.as_ref());
                    if secrets == SecretMode::Sops {
                        let before = write
                            .old_object
                            .as_ref()
                            .filter(|_| verb == Verb::Update)
                            .map(|old| {
                                let values = ["data", "stringData"].map(|field| {
                                    (
                                        field.to_owned(),
                                        old.get(field).cloned().unwrap_or(Value::Null),
                                    )
                                });
                                Value::Object(values.into_iter().collect())
                            });
                        (verb, Action::Seal(Box::new(Sealed(clean, before))))
                    } else {
                        // Policy skips Secrets in `omit` and `deny` modes; whatever
                        // else reaches here is redacted.
                        debug_assert_eq!(secrets, SecretMode::Redact);
                        redact_secret(&mut clean);
                        (verb, Action::Put(yaml::render(&clean).into_bytes()))
                    }
                } else {
                    (verb, Action::Put(yaml::render(&clean).into_bytes()))
                }
            }
        }
    };

    Ok(Change {
        path,
        action,
        verb,
        api_version,
        kind,
        namespace: write.namespace.clone().filter(|ns| !ns.is_empty()),
        name: name.to_owned(),
        user: write.user.clone(),
        groups: write.groups.clone(),
        uid: write.uid.clone(),
        version: live.and_then(|o| ObjectVersion::of(o, write.operation == Operation::Create)),
        in_place: None,
    })
}

const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "generateName",
];

const TOOL_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "argocd.argoproj.io/tracking-id",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

const TOOL_LABELS: &[&str] = &[
    "kustomize.toolkit.fluxcd.io/name",
    "kustomize.toolkit.fluxcd.io/namespace",
    "helm.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/namespace",
];

/// Removes what the server or tools set, in place, keeping everything else.
pub fn sanitize(object: &mut Value, group: &str, kind: &str) -> Result<(), ManifestError> {
    let object = object.as_object_mut().ok_or(ManifestError::NotAnObject)?;
    object.remove("status");

    let pvc_bound_by_controller = object
        .get("metadata")
        .and_then(|m| {
            m.get("annotations")?
                .get("pv.kubernetes.io/bound-by-controller")
        })
        .and_then(Value::as_str)
        == Some("yes");

    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        for field in SERVER_METADATA {
            meta.remove(*field);
        }
        retain_keys(meta, "annotations", |k| {
            !TOOL_ANNOTATIONS.contains(&k) && !k.starts_with(OWN_PREFIX)
        });
        let namespace_label =
            (group.is_empty() && kind == "Namespace").then_some("kubernetes.io/metadata.name");
        retain_keys(meta, "labels", |k| {
            !TOOL_LABELS.contains(&k) && !k.starts_with(OWN_PREFIX) && Some(k) != namespace_label
        });
    }

    if let Some(spec) = object.get_mut("spec") {
        strip_template_timestamps(spec);
    }
    strip_controller_fields(object, group, kind);

    let spec = object.get_mut("spec").and_then(Value::as_object_mut);
    match (group, kind, spec) {
        ("", "Service", Some(spec)) => {
            // A headless Service's `clusterIP: None` is the user's choice; an address is not.
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            spec.remove("ipFamilies");
        }
        ("", "PersistentVolumeClaim", Some(spec)) if pvc_bound_by_controller => {
            spec.remove("volumeName");
        }
        ("", "Namespace", Some(spec)) => {
            if spec.get("finalizers") == Some(&serde_json::json!(["kubernetes"])) {
                spec.remove("finalizers");
            }
            if spec.is_empty() {
                object.remove("spec");
            }
        }
        ("batch", "Job", Some(spec)) if spec.get("manualSelector") != Some(&Value::Bool(true)) => {
            spec.remove("selector");
            if let Some(Value::Object(meta)) =
                spec.get_mut("template").and_then(|t| t.get_mut("metadata"))
            {
                retain_keys(meta, "labels", |k| {
                    !matches!(
                        k,
                        "controller-uid"
                            | "batch.kubernetes.io/controller-uid"
                            | "job-name"
                            | "batch.kubernetes.io/job-name"
                    )
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fields a controller fills in, which are never a person's intent (issue #14):
/// - a ServiceAccount's `secrets` entries that name the token Secret the token
///   controller generated for it (`<name>-token-<suffix>`); entries a person listed
///   stay;
/// - an aggregated ClusterRole's `rules`: the aggregation controller writes them
///   from the `aggregationRule`, which is the intent.
fn strip_controller_fields(object: &mut Map<String, Value>, group: &str, kind: &str) {
    match (group, kind) {
        ("", "ServiceAccount") => {
            let name = object
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let generated = format!("{name}-token-");
            if let Some(Value::Array(secrets)) = object.get_mut("secrets") {
                secrets.retain(|secret| {
                    !secret.get("name").and_then(Value::as_str).is_some_and(|n| {
                        n.starts_with(&generated)
                            && secret.as_object().is_some_and(|o| o.len() == 1)
                    })
                });
                if secrets.is_empty() {
                    object.remove("secrets");
                }
            }
        }
        ("rbac.authorization.k8s.io", "ClusterRole") if object.contains_key("aggregationRule") => {
            object.remove("rules");
        }
        _ => {}
    }
}

/// Go serialises an empty time as `creationTimestamp: null` in every embedded
/// ObjectMeta (pod templates, volume claim templates, job templates). It is never
/// intent, so it goes wherever it appears.
fn strip_template_timestamps(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                if meta.get("creationTimestamp") == Some(&Value::Null) {
                    meta.remove("creationTimestamp");
                }
            }
            map.values_mut().for_each(strip_template_timestamps);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_template_timestamps),
        _ => {}
    }
}

/// Keeps the entries of the string map `meta[field]` whose key passes `keep`, and
/// drops the map when nothing is left.
fn retain_keys(meta: &mut Map<String, Value>, field: &str, keep: impl Fn(&str) -> bool) {
    if let Some(Value::Object(map)) = meta.get_mut(field) {
        map.retain(|k, _| keep(k));
        if map.is_empty() {
            meta.remove(field);
        }
    }
}

/// Takes out of a Secret's annotations and labels every value that holds one of
/// its secret values, since the metadata stays readable in git and must not carry
/// what the data hides: a value as written, base64-decoded, JSON-escaped (also as
/// Go escapes `&`, `<` and `>`), or any line of a multi-line one; and any value
/// that is itself a copy of a Secret (JSON or YAML with `data` or `stringData`),
/// such as kapp's `kapp.k14s.io/original`. `last-applied-configuration` went with
/// the sanitiser already.
/// `previous` is the object before the write, whose values count too (an
/// annotation may still carry an old one).
pub(crate) fn drop_copies(object: &mut Value, previous: Option<&Value>) {
    use base64::Engine as _;
    // Shorter ones would match by chance (`true`, `1`, a line `}`); a copy of the
    // object holds them next to the longer ones anyway.
    const WHOLE: usize = 4;
    const LINE: usize = 8;
    let mut needles: Vec<String> = Vec::new();
    let sections = ["data", "stringData"].into_iter().flat_map(|field| {
        [Some(&*object), previous]
            .into_iter()
            .flatten()
            .map(move |o| (field, o.get(field)))
    });
    for (field, section) in sections {
        let Some(Value::Object(map)) = section else {
            continue;
        };
        for value in map.values().filter_map(Value::as_str) {
            needles.push(value.to_owned());
            let text = if field == "data" {
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
            } else {
                Some(value.to_owned())
            };
            let Some(text) = text else { continue };
            let json = serde_json::to_string(&text).unwrap_or_default();
            let json = json.trim_matches('"').to_owned();
            let go = json
                .replace('&', "\\u0026")
                .replace('<', "\\u003c")
                .replace('>', "\\u003e");
            needles.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| line.len() >= LINE)
                    .map(str::to_owned),
            );
            needles.extend([text, json, go]);
        }
    }
    needles.retain(|s| s.len() >= WHOLE);
    let copy_of_a_secret = |value: &str| {
        let parsed = serde_json::from_str::<Value>(value)
            .ok()
            .or_else(|| serde_yaml_ng::from_str::<Value>(value).ok());
        parsed
            .as_ref()
            .and_then(Value::as_object)
            .is_some_and(|m| m.contains_key("data") || m.contains_key("stringData"))
    };
    for field in ["annotations", "labels"] {
        let Some(Value::Object(map)) = object.get_mut("metadata").and_then(|m| m.get_mut(field))
        else {
            continue;
        };
        map.retain(|_, value| {
            value.as_str().is_none_or(|value| {
                !copy_of_a_secret(value) && !needles.iter().any(|s| value.contains(s.as_str()))
            })
        });
        if map.is_empty() {
            if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
                metadata.remove(field);
            }
        }
    }
}

fn redact_secret(object: &mut Value) {
    for field in ["data", "stringData"] {
        if let Some(Value::Object(map)) = object.get_mut(field) {
            for value in map.values_mut() {
                *value = Value::String(REDACTED.to_owned());
            }
        }
    }
}

/// Renders a (sanitised) object as byte-stable YAML.
pub fn render(object: &Value) -> String {
    yaml::render(object)
}

/// `placement`, unless `change` is a Secret to write as a SOPS file (there, at its
/// path) for which `sealer` knows no age recipient: then what
/// `sops.withoutRecipients` says. Without a `sealer` (`kubescribe check` without a
/// repository), `placement`.
pub fn sealable(
    placement: Placement,
    change: &Change,
    sealer: Option<&crate::secrets::Sealer>,
) -> Placement {
    let (Placement::Canonical | Placement::InPlace, Action::Seal(_), Some(sealer)) =
        (&placement, &change.action, sealer)
    else {
        return placement;
    };
    let Err(error) = sealer.recipients(change.path.as_str()) else {
        return placement;
    };
    let reason = format!(
        "Secret {} cannot be recorded encrypted: {error}",
        change.object_ref()
    );
    match sealer.without_recipients() {
        crate::config::WithoutRecipients::Deny => Placement::Denied(reason),
        crate::config::WithoutRecipients::Omit => Placement::Omitted(reason),
    }
}

/// A recorded manifest with a new `spec.replicas`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescaled {
    pub bytes: Vec<u8>,
    pub api_version: Option<String>,
    pub kind: Option<String>,
    /// `spec.replicas` before the edit, if it was set.
    pub previous: Option<Value>,
}

/// Sets `spec.replicas` in a recorded manifest and renders it again. Returns `None`
/// when the file is not a YAML object we can edit.
pub fn set_replicas(manifest: &[u8], replicas: i64) -> Option<Rescaled> {
    let mut value: Value = serde_yaml_ng::from_slice(manifest).ok()?;
    let object = value.as_object_mut()?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let spec = object
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()?;
    let previous = spec.insert("replicas".to_owned(), Value::from(replicas));
    Some(Rescaled {
        bytes: yaml::render(&value).into_bytes(),
        api_version,
        kind,
        previous,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn version(uid: &str, created: &str, after: Option<u64>) -> ObjectVersion {
        ObjectVersion {
            uid: uid.into(),
            created: created.into(),
            after,
            state: false,
        }
    }

    #[test]
    fn a_secret_s_metadata_never_carries_its_values_and_sealed_shows_only_keys() {
        use base64::Engine as _;
        let password = base64::engine::general_purpose::STANDARD.encode("hunter22");
        let mut secret = json!({
            "metadata": {
                "name": "db",
                "annotations": {
                    "kapp.k14s.io/original": format!("{{\"data\":{{\"password\":\"{password}\"}}}}"),
                    "note": "the password is hunter22",
                    "was": "it was old-one-22",
                    "escaped": "{\"stringData\":{\"key\":\"-----BEGIN KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END KEY-----\"}}",
                    "go": "url is postgres://u:pw\\u0026more@db",
                    "quoted": "{\"pw\":\"pa\\\"ss\\\"word\"}",
                    "line": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
                    "copy": "data:\n  other: x\n",
                    "team": "payments",
                },
                "labels": {"app": "db"},
            },
            "data": {"password": password, "flag": "MQ=="},
            "stringData": {
                "url": "postgres://u:pw-in-url@db/app",
                "key": "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----",
                "go": "postgres://u:pw&more@db",
                "quoted": "pa\"ss\"word",
            },
        });
        drop_copies(
            &mut secret,
            Some(
                &json!({"data": {"password": base64::engine::general_purpose::STANDARD.encode("old-one-22")}}),
            ),
        );
        assert_eq!(
            secret["metadata"],
            json!({"name": "db", "annotations": {"team": "payments"}, "labels": {"app": "db"}})
        );
        let sealed = Sealed(secret, None);
        assert_eq!(
            sealed.keys(),
            [
                "data.flag",
                "data.password",
                "stringData.go",
                "stringData.key",
                "stringData.quoted",
                "stringData.url"
            ]
        );
        let shown = format!("{sealed:?}");
        assert!(
            !shown.contains("aHVudGVy") && !shown.contains("pw-in-url"),
            "{shown}"
        );
    }

    #[test]
    fn object_versions_order_writes_of_one_object_and_its_incarnations() {
        let t1 = "2026-12-01T10:00:00Z";
        let t2 = "2026-12-01T10:00:05Z";
        let create = version("u1", t1, None);
        let update = version("u1", t1, Some(10));
        let later = version("u1", t1, Some(11));
        let reborn = version("u2", t2, None);
        assert_eq!(later.newer_than(&update), Some(true));
        assert_eq!(update.newer_than(&later), Some(false));
        assert_eq!(update.newer_than(&create), Some(true));
        assert_eq!(create.newer_than(&update), Some(false));
        assert_eq!(reborn.newer_than(&later), Some(true));
        assert_eq!(later.newer_than(&reborn), Some(false));
        assert_eq!(update.newer_than(&update.clone()), None);
        assert_eq!(version("u3", t2, None).newer_than(&reborn), None);
        // A write made from state 10 comes after that state, before state 11.
        let state = |rv| ObjectVersion {
            state: true,
            ..version("u1", t1, Some(rv))
        };
        assert_eq!(update.newer_than(&state(10)), Some(true));
        assert_eq!(state(11).newer_than(&update), Some(true));
        assert_eq!(state(10).newer_than(&state(10)), None);
        let message = format!("reconcile: x\n\n{}", state(12).trailers());
        assert_eq!(ObjectVersion::from_message(&message), Some(state(12)));
    }

    #[test]
    fn each_file_of_a_commit_of_many_has_its_own_version() {
        let state = ObjectVersion {
            state: true,
            ..version("u-1", "2026-01-01T00:00:00Z", Some(12))
        };
        let create = version("u-2", "2026-01-02T00:00:00Z", None);
        let update = version("u-3", "2026-01-03T00:00:00Z", Some(7));
        let message = format!(
            "reconcile: 3 changes\n\nKubescribe-Reconcile: watch\n{}{}{}",
            state.trailer_of("team a/x.yaml"),
            create.trailer_of("b.yaml"),
            update.trailer_of("c.yaml")
        );
        let versions = ObjectVersion::of_paths(&message);
        assert_eq!(versions.get("team a/x.yaml"), Some(&state));
        assert_eq!(versions.get("b.yaml"), Some(&create));
        assert_eq!(versions.get("c.yaml"), Some(&update));
        assert_eq!(versions.len(), 3);
        assert!(ObjectVersion::of_paths("Object-Version-Of: b.yaml u 1 after:x").is_empty());
    }

    #[test]
    fn object_versions_travel_in_trailers_and_come_from_the_write() {
        let v = version("u1", "2026-12-01T10:00:00Z", Some(42));
        let message = format!(
            "update v1 ConfigMap a/b\n\nKubernetes-User: alice\n{}",
            v.trailers()
        );
        assert_eq!(ObjectVersion::from_message(&message), Some(v));
        let create = version("u1", "2026-12-01T10:00:00Z", None);
        assert_eq!(
            ObjectVersion::from_message(&create.trailers()),
            Some(create)
        );
        assert_eq!(
            ObjectVersion::from_message("create v1 ConfigMap a/b\n"),
            None
        );
        let object = json!({"metadata": {"uid": "u1", "creationTimestamp": "2026-12-01T10:00:00Z", "resourceVersion": "42"}});
        assert_eq!(
            ObjectVersion::of(&object, false),
            Some(version("u1", "2026-12-01T10:00:00Z", Some(42)))
        );
        assert_eq!(
            ObjectVersion::of(&object, true),
            Some(version("u1", "2026-12-01T10:00:00Z", None))
        );
        assert_eq!(
            ObjectVersion::of(&json!({"metadata": {"uid": "u1"}}), true),
            None
        );
    }

    #[test]
    fn fields_controllers_fill_in_are_not_intent() {
        let cases = [
            // The token controller's Secret goes; one a person listed stays.
            (
                "",
                "ServiceAccount",
                json!({"metadata": {"name": "default"}, "secrets": [{"name": "default-token-x7k2p"}]}),
                json!({"metadata": {"name": "default"}}),
            ),
            (
                "",
                "ServiceAccount",
                json!({"metadata": {"name": "ci"}, "secrets": [{"name": "ci-token-abcde"}, {"name": "registry"}], "imagePullSecrets": [{"name": "registry"}]}),
                json!({"metadata": {"name": "ci"}, "secrets": [{"name": "registry"}], "imagePullSecrets": [{"name": "registry"}]}),
            ),
            // Another account's token is not this one's generated Secret.
            (
                "",
                "ServiceAccount",
                json!({"metadata": {"name": "ci"}, "secrets": [{"name": "deployer-token-abcde"}]}),
                json!({"metadata": {"name": "ci"}, "secrets": [{"name": "deployer-token-abcde"}]}),
            ),
            // An aggregated ClusterRole's rules are the controller's; its selector is intent.
            (
                "rbac.authorization.k8s.io",
                "ClusterRole",
                json!({"metadata": {"name": "monitoring"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}, "rules": [{"verbs": ["get"]}]}),
                json!({"metadata": {"name": "monitoring"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}}),
            ),
            // A plain ClusterRole keeps its rules.
            (
                "rbac.authorization.k8s.io",
                "ClusterRole",
                json!({"metadata": {"name": "reader"}, "rules": [{"verbs": ["get"]}]}),
                json!({"metadata": {"name": "reader"}, "rules": [{"verbs": ["get"]}]}),
            ),
        ];
        for (group, kind, mut object, expected) in cases {
            sanitize(&mut object, group, kind).unwrap();
            assert_eq!(object, expected, "{kind}");
        }
    }

    #[test]
    fn sanitize_removes_server_fields_and_keeps_the_rest() {
        let mut object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "c", "namespace": "n", "uid": "u", "resourceVersion": "1",
                "creationTimestamp": "t", "managedFields": [], "generation": 2,
                "ownerReferences": [], "finalizers": ["example.com/hold"],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "kubescribe.io/git-path": "x"},
                "labels": {"app": "c", "kustomize.toolkit.fluxcd.io/name": "apps"}
            },
            "immutable": true,
            "data": {"a": "1"},
            "status": {"x": 1}
        });
        sanitize(&mut object, "", "ConfigMap").unwrap();
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "n", "finalizers": ["example.com/hold"], "labels": {"app": "c"}},
                "immutable": true,
                "data": {"a": "1"}
            })
        );
    }

    #[test]
    fn service_addresses_go_but_headless_stays() {
        let mut service = json!({"metadata": {}, "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ipFamilies": ["IPv4"], "ports": [{"port": 80}]}});
        sanitize(&mut service, "", "Service").unwrap();
        assert_eq!(service["spec"], json!({"ports": [{"port": 80}]}));

        let mut headless = json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        sanitize(&mut headless, "", "Service").unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn null_timestamps_in_embedded_metadata_go() {
        let mut sts = json!({"spec": {"template": {"metadata": {"creationTimestamp": null, "labels": {"a": "b"}}}, "volumeClaimTemplates": [{"metadata": {"name": "d", "creationTimestamp": null}}]}});
        sanitize(&mut sts, "apps", "StatefulSet").unwrap();
        assert_eq!(
            sts,
            json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}, "volumeClaimTemplates": [{"metadata": {"name": "d"}}]}})
        );
    }

    #[test]
    fn job_generated_selector_and_labels_go() {
        let mut job = json!({"spec": {"selector": {"matchLabels": {"controller-uid": "x"}}, "template": {"metadata": {"labels": {"controller-uid": "x", "job-name": "j", "app": "a"}}}}});
        sanitize(&mut job, "batch", "Job").unwrap();
        assert_eq!(
            job,
            json!({"spec": {"template": {"metadata": {"labels": {"app": "a"}}}}})
        );
    }

    #[test]
    fn redacted_secrets_keep_keys_but_no_values() {
        let mut secret = json!({"data": {"password": "czNjcjN0"}, "stringData": {"x": "plain"}});
        redact_secret(&mut secret);
        assert_eq!(
            secret,
            json!({"data": {"password": REDACTED}, "stringData": {"x": REDACTED}})
        );
    }

    #[test]
    fn set_replicas_edits_only_replicas() {
        let before = yaml::render(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2, "template": {}}}),
        );
        let after = set_replicas(before.as_bytes(), 3).unwrap();
        assert_eq!(
            String::from_utf8(after.bytes).unwrap(),
            before.replace("replicas: 2", "replicas: 3")
        );
        assert_eq!(after.previous, Some(Value::from(2)));
        assert_eq!(after.kind.as_deref(), Some("Deployment"));
    }
}
