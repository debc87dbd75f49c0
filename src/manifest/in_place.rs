//! A write planned as an edit of the document that declares its object, in a
//! repository edited in place (issue 15): the path and the answer the webhook can give
//! before the store commits, and the [`InPlace`] the store edits with.
//!
//! Invariants: an object is edited where it is declared only when exactly one
//! document declares it; a create of an object the branch already declares records
//! nothing (git has it); a file the path template itself placed is written the
//! canonical way, as before; Secrets are never edited in place.

use serde_json::Value;

use super::{sanitize, Action, Change, RepoPath};
use crate::config::Overlay;
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
}

/// Plans `change` (from [`super::plan`]) as an edit of the document `index` says
/// declares its object.
pub fn plan_in_place(
    index: &Index,
    overlay: Overlay,
    change: &mut Change,
    write: &Write,
) -> Placement {
    if matches!(change.action, Action::Cascade(_)) {
        return Placement::Canonical;
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
    let declared = match index.lookup(&key) {
        Lookup::Missing => return Placement::Canonical,
        Lookup::Found(declared) => declared,
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
    if declared.path == change.path.as_str() {
        return Placement::Canonical;
    }
    let path = declared.path.clone();
    if write.resource.group.is_empty() && kind == "Secret" {
        return Placement::Refused(format!(
            "Secret {object} is declared in {path}, and kubescribe does not edit Secrets in place: change that file",
            object = change.object_ref(),
        ));
    }
    let shared = index.declarations(&declared.path, declared.document);
    if overlay == Overlay::Deny && (!declared.transformed_by.is_empty() || shared > 1) {
        let mut why = Vec::new();
        if !declared.transformed_by.is_empty() {
            why.push(format!(
                "{} changes it on its way to the cluster (patches, images or replicas)",
                declared.transformed_by.join(" and ")
            ));
        }
        if shared > 1 {
            why.push(format!("{shared} objects are rendered from that document"));
        }
        return Placement::Refused(format!(
            "{kind} {object} is declared in {path}, but {why}, so an edit there is not this change alone. Change it in git, or set inPlace.overlay: base to edit {path} for every overlay",
            object = change.object_ref(),
            why = why.join(", and "),
        ));
    }
    let (ops, new) = match &change.action {
        Action::Put(_) => {
            let (Some(old), Some(new)) = (write.old_object.as_ref(), write.object.as_ref()) else {
                return Placement::Declared(path);
            };
            let clean = |object: &Value| {
                let mut object = object.clone();
                sanitize(&mut object, &write.resource.group, &kind).ok()?;
                Some(object)
            };
            let (Some(old), Some(new)) = (clean(old), clean(new)) else {
                return Placement::Canonical;
            };
            (edit::diff(&old, &new), new)
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
        ),
        Action::Remove => (Vec::new(), Value::Null),
        Action::Cascade(_) => return Placement::Canonical,
    };
    let Some(file) = RepoPath::from_note(path) else {
        return Placement::Canonical;
    };
    let canonical = std::mem::replace(&mut change.path, file);
    change.in_place = Some(Box::new(InPlace {
        key,
        ops,
        new,
        canonical: canonical.as_str().to_owned(),
    }));
    Placement::InPlace
}
