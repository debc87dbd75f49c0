//! A write planned as an edit of the document that declares its object, in a
//! repository edited in place (issue 15): the path and the answer the webhook can give
//! before the store commits, and the [`InPlace`] the store edits with.
//!
//! Invariants: an object is edited where it is declared only when exactly one
//! document declares it; a create of an object the branch already declares records
//! nothing (git has it); a file the path template itself placed is written the
//! canonical way, as before; a Secret is edited in place only as a SOPS file kubescribe
//! can read (`secrets: sops`), written whole.

use serde_json::Value;

use super::{sanitize, Action, Change, RepoPath};
use crate::config::{InPlaceConfig, NewObjects, Overlay};
use crate::declared::overlay::{self, ReadFile};
use crate::declared::{edit, InPlace, Index, Key, Lookup};
use crate::policy::Write;

/// Where a write goes in a repository edited in place.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// No document declares it elsewhere: where the path template says.
    Canonical,
    /// In the document that declares it: `change.path` is that file now.
    InPlace,
    /// A create of an object the branch already declares in this file: git has it.
    Declared(String),
    /// Not recorded, and why.
    Refused(String),
    /// Refused, whatever the rule waits for: a Secret with no recipient to encrypt
    /// it for (`sops.withoutRecipients: deny`).
    Denied(String),
    /// Admitted and not recorded, with a warning (`sops.withoutRecipients: omit`).
    Omitted(String),
}

/// Why an object is never written as a plain file, if Helm renders it: Flux's
/// HelmRelease, an Argo CD Application of a chart, or `helm install`. Then the person
/// changes the values, and the answer says where.
fn rendered_by_helm(index: &Index, write: &Write) -> Option<String> {
    let object = write.object.as_ref().or(write.old_object.as_ref())?;
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    // JSON pointers write `/` in a key as `~1`.
    if let (Some(name), Some(namespace)) = (
        text("/metadata/labels/helm.toolkit.fluxcd.io~1name"),
        text("/metadata/labels/helm.toolkit.fluxcd.io~1namespace"),
    ) {
        let release = Key::new(
            "helm.toolkit.fluxcd.io",
            "HelmRelease",
            Some(namespace),
            name,
        );
        // Overlays for several clusters render one base: name the file once.
        let mut files: Vec<&str> = match index.lookup(&release) {
            Lookup::Found(declared) => vec![declared.path.as_str()],
            Lookup::Ambiguous(candidates) => candidates.iter().map(|d| d.path.as_str()).collect(),
            Lookup::Missing => Vec::new(),
        };
        files.sort_unstable();
        files.dedup();
        let place = if files.is_empty() {
            String::new()
        } else {
            format!(" ({})", files.join(", "))
        };
        return Some(format!(
            "is rendered by the HelmRelease {namespace}/{name}{place}: change its values there"
        ));
    }
    let chart = text("/metadata/labels/helm.sh~1chart");
    let application = text("/metadata/annotations/argocd.argoproj.io~1tracking-id")
        .map(|id| id.split(':').next().unwrap_or(id))
        .or_else(|| text("/metadata/labels/argocd.argoproj.io~1instance"));
    if let (Some(chart), Some(application)) = (chart, application) {
        return Some(format!(
            "is rendered from the Helm chart {chart} by the Argo CD Application {application}: change the Application's Helm values"
        ));
    }
    if let Some(release) = text("/metadata/annotations/meta.helm.sh~1release-name") {
        return Some(format!(
            "is rendered by the Helm release {release}: change its values (helm upgrade, or where the release is declared)"
        ));
    }
    // Argo CD before 3.0 tracks what it applies by this label alone.
    if let (Some(chart), Some(instance)) =
        (chart, text("/metadata/labels/app.kubernetes.io~1instance"))
    {
        return Some(format!(
            "is rendered from the Helm chart {chart} (release or Argo CD Application {instance}): change the chart's values where they are declared"
        ));
    }
    None
}

/// Plans `change` (from [`super::plan`]) as an edit of the document `index` says
/// declares its object.
/// `read` gives the branch's files, for an object overlays transform under
/// `overlay: patch`: what the store would refuse to trace is answered now (the
/// store routes it again when it commits). Without it, that is left to the store.
pub fn plan_in_place(
    index: &Index,
    config: &InPlaceConfig,
    change: &mut Change,
    write: &Write,
    read: Option<&ReadFile<'_>>,
) -> Placement {
    if let Action::Cascade(cascade) = &change.action {
        return cascade_in(index, cascade, change);
    }
    let kind = match &change.action {
        // A scale write names the Scale; the document is the parent's.
        Action::SetReplicas(_) => {
            match crate::kinds::scalable_kind(&write.resource.group, &write.resource.resource) {
                Some(kind) => kind.to_owned(),
                None => return Placement::Canonical,
            }
        }
        _ => change.kind.clone(),
    };
    let key = Key::new(
        &write.resource.group,
        &kind,
        change.namespace.as_deref(),
        &change.name,
    );
    if let Some(file) = index.generated_by(&key) {
        let generator = if kind == "Secret" {
            "secretGenerator"
        } else {
            "configMapGenerator"
        };
        return Placement::Refused(format!(
            "{kind} {} is made by the {generator} of {file}: change its literals or files there",
            change.object_ref()
        ));
    }
    let declared = match index.lookup(&key) {
        Lookup::Missing => None,
        Lookup::Found(declared) => Some(declared),
        Lookup::Ambiguous(candidates) => {
            let places: Vec<String> = candidates
                .iter()
                .map(|d| format!("{} (document {})", d.path, d.document + 1))
                .collect();
            return Placement::Refused(format!(
                "{kind} {object} could be any of {count} documents: {places}; kubescribe never edits one by guess. Remove the extra declaration, or give each document its namespace (in the document, its kustomization, or inPlace.namespaces)",
                object = change.object_ref(),
                count = places.len(),
                places = places.join(", "),
            ));
        }
    };
    if declared.is_none() {
        // A repository that keeps Helm's output as files declares it: edited there.
        if let Some(reason) = rendered_by_helm(index, write) {
            return Placement::Refused(format!("{kind} {} {reason}", change.object_ref()));
        }
    }
    if declared.is_some_and(|d| d.path == change.path.as_str()) {
        // The file the path template placed: written the canonical way, as before.
        return Placement::Canonical;
    }
    if let Some(declared) = declared {
        if let Some(refusal) = refusal(index, config, declared, &kind, change) {
            return Placement::Refused(refusal);
        }
    }
    let creates =
        matches!(change.action, Action::Put(_) | Action::Seal(_)) && write.old_object.is_none();
    let (ops, old, new) = match &change.action {
        Action::Put(_) | Action::Seal(_) if creates => (Vec::new(), Value::Null, Value::Null),
        Action::Seal(_) => {
            // A SOPS file is written whole from its decrypted document (see
            // crate::secrets::Sealer::seal_declared): no field edits, and the
            // objects before and after without their values, which never travel
            // outside the Sealed.
            let (Some(old), Some(new)) = (write.old_object.as_ref(), write.object.as_ref()) else {
                return Placement::Canonical;
            };
            let clean = |object: &Value| {
                let mut object = object.clone();
                sanitize(&mut object, &write.resource.group, &kind).ok()?;
                super::drop_copies(&mut object, Some(old));
                let map = object.as_object_mut()?;
                map.remove("data");
                map.remove("stringData");
                Some(object)
            };
            let (Some(old), Some(new)) = (clean(old), clean(new)) else {
                return Placement::Canonical;
            };
            (Vec::new(), old, new)
        }
        Action::Put(_) => {
            let (Some(old), Some(new)) = (write.old_object.as_ref(), write.object.as_ref()) else {
                return Placement::Canonical;
            };
            let clean = |object: &Value| {
                let mut object = object.clone();
                sanitize(&mut object, &write.resource.group, &kind).ok()?;
                Some(object)
            };
            let (Some(old), Some(new)) = (clean(old), clean(new)) else {
                return Placement::Canonical;
            };
            (edit::diff(&old, &new), old, new)
        }
        Action::SetReplicas(replicas) => (
            vec![edit::Op::Set(
                vec![
                    edit::Step::Key("spec".to_owned()),
                    edit::Step::Key("replicas".to_owned()),
                ],
                Value::from(*replicas),
            )],
            Value::Null,
            Value::Null,
        ),
        Action::Remove => (Vec::new(), Value::Null, Value::Null),
        Action::Cascade(_) => return Placement::Canonical,
    };
    let mut in_place = InPlace {
        key,
        ops,
        old,
        new,
        canonical: change.path.as_str().to_owned(),
        new_file: None,
        written_name: declared.map(|d| d.written_name.clone()),
    };
    let Some(declared) = declared else {
        // Not declared now; the store looks again when it commits (an object created
        // a moment ago may be in a file by then), so it carries the edit either way.
        // A new Secret gets a SOPS file of its own where the path template says.
        if creates
            && config.new_objects == NewObjects::Namespace
            && !matches!(change.action, Action::Seal(_))
        {
            if let Some((home, path)) = new_home(index, change) {
                change.path = path;
                in_place.new_file = Some(home);
                change.in_place = Some(Box::new(in_place));
                return Placement::InPlace;
            }
        }
        change.in_place = Some(Box::new(in_place));
        return Placement::Canonical;
    };
    if creates {
        // Git has it, unless a delete not committed yet takes it out first: the
        // store looks again when it commits, and writes it only then.
        // The answer names the declaring file; a write would go where the path
        // template says (`canonical`).
        if let Some(file) = RepoPath::from_note(declared.path.clone()) {
            change.path = file;
        }
        change.in_place = Some(Box::new(in_place));
        return Placement::Declared(declared.path.clone());
    }
    if let (Some(read), Overlay::Patch, false) =
        (read, config.overlay, declared.transformed_by.is_empty())
    {
        if let Some(refusal) = untraceable(index, read, declared, &in_place, change) {
            return Placement::Refused(refusal);
        }
    }
    let Some(file) = RepoPath::from_note(declared.path.clone()) else {
        return Placement::Canonical;
    };
    change.path = file;
    change.in_place = Some(Box::new(in_place));
    Placement::InPlace
}

/// With `overlay: patch`, why the store would refuse the edit of an object overlays
/// transform, if it would: routed now as the store routes it when it commits.
fn untraceable(
    index: &Index,
    read: &ReadFile<'_>,
    declared: &crate::declared::Declared,
    in_place: &InPlace,
    change: &Change,
) -> Option<String> {
    if matches!(change.action, Action::Remove) {
        return overlay::delete_refusal(read, &in_place.key, declared);
    }
    let documents = crate::declared::documents(&read(&declared.path)?);
    let at = crate::declared::find_document(&documents, &in_place.key, &declared.written_name)?;
    let siblings = index.rendered_with(&in_place.key, declared);
    overlay::route(
        &overlay::Routing {
            read,
            key: &in_place.key,
            declared,
            shared: index.declarations(&declared.path, declared.document),
            siblings: &siblings,
            base: &documents[at],
            old: &in_place.old,
            new: &in_place.new,
        },
        &in_place.ops,
    )
    .err()
}

/// A person's delete of a namespace or a definition, in a repository that declares
/// the namespace or objects it takes with it: those documents would stay, and the
/// GitOps tool would create them again. Not recorded, so nothing pretends otherwise;
/// the answer names the files to change in git.
fn cascade_in(index: &Index, cascade: &crate::cascade::Cascade, change: &Change) -> Placement {
    use crate::cascade::Scope;
    // The files the path template placed go with the cascade, as always.
    let canonical = |key: &Key, path: &str| {
        let (resource, _) = crate::kinds::resource_of(&key.group, &key.kind);
        cascade
            .layout
            .place(super::Coordinates {
                namespace: key.namespace.as_deref(),
                group: &key.group,
                resource: &resource,
                name: &key.name,
            })
            .is_ok_and(|placed| placed.as_str() == path)
    };
    let files = match &cascade.scope {
        Scope::Namespace(namespace) => index.files_declaring(|key, declared| {
            let in_scope = key.namespace.as_deref() == Some(namespace.as_str())
                || (key.group.is_empty() && key.kind == "Namespace" && key.name == *namespace);
            in_scope && !canonical(key, &declared.path)
        }),
        Scope::Resource { group, kind, .. } => index.files_declaring(|key, declared| {
            let in_scope = (key.group == *group && kind.as_deref() == Some(key.kind.as_str()))
                || (key.group == "apiextensions.k8s.io"
                    && key.kind == "CustomResourceDefinition"
                    && key.name == change.name);
            in_scope && !canonical(key, &declared.path)
        }),
    };
    if files.is_empty() {
        return Placement::Canonical;
    }
    const LISTED: usize = 5;
    let more = files.len().saturating_sub(LISTED);
    Placement::Refused(format!(
        "{kind} {name} and what it takes with it are declared in git ({files}{more}); deleted only here, the GitOps tool would create them again: delete them in git",
        kind = change.kind,
        name = change.name,
        files = files[..files.len().min(LISTED)].join(", "),
        more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
    ))
}

/// Why the document that declares the object is not edited for this write, if it
/// is not: a Secret not written as SOPS, or (with `overlay: deny`) a document an overlay transforms or
/// several overlays share.
fn refusal(
    index: &Index,
    config: &InPlaceConfig,
    declared: &crate::declared::Declared,
    kind: &str,
    change: &Change,
) -> Option<String> {
    let path = &declared.path;
    let object = change.object_ref();
    // Under `secrets: sops`, a declared Secret's SOPS file is written anew with
    // the write's values (the store checks it is one kubescribe can read); a
    // delete takes its document out. Any other Secret write would put values in
    // a person's file unencrypted.
    if change.api_version == "v1"
        && kind == "Secret"
        && !matches!(change.action, Action::Seal(_) | Action::Remove)
    {
        return Some(format!(
            "Secret {object} is declared in {path}, and kubescribe edits a declared Secret only as a SOPS file (secrets: sops): change that file"
        ));
    }
    let shared = index.declarations(path, declared.document);
    let transformed = !declared.transformed_by.is_empty();
    // A SOPS file is written whole from what this cluster has: an overlay's
    // patch, or another cluster's or overlay's use of the same file, would be
    // written into it, whatever `overlay` says.
    if matches!(change.action, Action::Seal(_))
        && (transformed || shared > 1 || declared.elsewhere || declared.several_routes)
    {
        return Some(format!(
            "Secret {object} is declared in {path}, which overlays change or other overlays or clusters render too; kubescribe writes a Secret's SOPS file whole, from this cluster's Secret: change it in git"
        ));
    }
    let refuse = match config.overlay {
        Overlay::Deny => transformed || shared > 1 || declared.several_routes || declared.elsewhere,
        Overlay::Base => false,
        // The store finds the file that owns each field when it commits; what no
        // overlay can own is answered now.
        // A delete takes the base document, so it must be this object's alone.
        Overlay::Patch => {
            ((shared > 1 || declared.elsewhere)
                && (!transformed || matches!(change.action, Action::Remove)))
                || (transformed && declared.several_routes)
        }
    };
    if refuse {
        let mut why = Vec::new();
        if declared.several_routes && (config.overlay == Overlay::Patch || !transformed) {
            why.push(
                "several overlays render it, and which one this cluster applies is not in the repository"
                    .to_owned(),
            );
        } else if transformed {
            why.push(format!(
                "{} changes it on its way to the cluster (patches, images or replicas)",
                declared.transformed_by.join(" and ")
            ));
        }
        if shared > 1 {
            why.push(format!("{shared} objects are rendered from that document"));
        }
        if declared.elsewhere {
            why.push("that document is rendered elsewhere in the repository too (for another cluster, or by an overlay this cluster does not apply)".to_owned());
        }
        return Some(format!(
            "{kind} {object} is declared in {path}, but {why}, so an edit there is not this change alone. Change it in git, or set inPlace.overlay: base to edit {path} for every overlay",
            why = why.join(", and "),
        ));
    }
    None
}

/// Where a new object goes beside the other objects of its namespace, when the
/// repository has any: the home and the file's path.
fn new_home(index: &Index, change: &Change) -> Option<(crate::declared::Home, RepoPath)> {
    let home = change.namespace.as_deref().and_then(|ns| index.home(ns))?;
    // `web-deployment.yaml`: a name people use, and one no other kind's file takes.
    let file = format!("{}-{}.yaml", change.name, change.kind.to_ascii_lowercase());
    let path = if home.dir.is_empty() {
        file
    } else {
        format!("{}/{file}", home.dir)
    };
    // Object names are DNS names; a path too long for a checkout goes the canonical way.
    let path = RepoPath::from_note(path).filter(|p| p.as_str().len() <= 255)?;
    Some((home, path))
}
