//! `overlay: patch`: for an object a kustomization (or a Flux Kustomization)
//! changes on its way to the cluster, which file owns each changed field. A field an
//! overlay sets is edited where the overlay sets it: its `images:` entry, its
//! `replicas:` entry, or the strategic-merge patch file that sets it; any other field
//! is edited in the base document.
//!
//! Invariants: nothing is edited by guess. A field set by something kubescribe cannot
//! edit honestly (an inline patch, a JSON 6902 patch, a patch that selects by
//! labels, a transformer, a component, a replacement, a Flux `${variable}`) refuses
//! the write and names the file to change; so does a base field when the base
//! document renders other objects too (other overlays would change with it), and a
//! document several overlays render as one object (which one this cluster applies is
//! not in the repository). The last transform applied owns a field: overlays are
//! searched from the outermost in, and within one, `images` and `replicas` before
//! patches, as kustomize applies them.

use serde_json::Value;

use super::edit::{field, Op, Step};
use super::{kustomize, Declared, Key};

/// How the routing reads a file of the tree it routes in: `None` when it is not
/// there (or is a directory).
pub type ReadFile<'a> = dyn Fn(&str) -> Option<Vec<u8>> + 'a;

/// An edit of one document of one file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEdit {
    pub path: String,
    pub document: usize,
    pub ops: Vec<Op>,
    /// The object before and after the write, for [`super::edit::update`]'s checks
    /// (`Null` for a kustomization's own entries).
    pub old: Value,
    pub new: Value,
}

/// Where a write's changes go.
#[derive(Debug, Default, PartialEq)]
pub struct Routed {
    /// The changes for the base document, the one that declares the object.
    pub base: Vec<Op>,
    /// The changes for the overlays' patches and kustomizations, one per document.
    pub elsewhere: Vec<FileEdit>,
}

/// What an overlay's transform does to one changed field.
enum Claim {
    /// Nothing: the field is the base's, as far as this transform goes.
    No,
    /// It sets the field; these edits of its file change it.
    Edit(FileEdit),
    /// It sets the field in a way kubescribe does not edit: why.
    Refuse(String),
}

/// One place that transforms the object: a kustomization, or a Flux Kustomization
/// document.
struct Source {
    /// The file that says it (kustomization.yaml, or the Flux Kustomization's).
    file: String,
    document: usize,
    /// The directory its relative paths start from.
    dir: String,
    /// Where its `images`, `patches`… are: the document, or its `spec` for Flux.
    body: Value,
    /// Steps from the document to `body` (`spec` for Flux).
    prefix: Vec<Step>,
    flux: bool,
    /// Its entry in `Declared::transformed_by`.
    place: String,
}

/// A write being routed: the object, its declaration, and what the routing reads.
pub struct Routing<'a> {
    pub read: &'a ReadFile<'a>,
    pub key: &'a Key,
    pub declared: &'a Declared,
    /// How many objects the base document renders.
    pub shared: usize,
    /// The other objects the same transforming kustomizations render: an
    /// `images:` entry or a targeted patch they share is not this object's alone.
    pub siblings: &'a [(Key, Declared)],
    /// The base document, as parsed.
    pub base: &'a Value,
    /// The object before and after the write.
    pub old: &'a Value,
    pub new: &'a Value,
}

/// Splits `ops` between the base document and the overlays in
/// `declared.transformed_by`.
pub fn route(w: &Routing<'_>, ops: &[Op]) -> Result<Routed, String> {
    let (read, key, declared, shared, base) = (w.read, w.key, w.declared, w.shared, w.base);
    let object = object_ref(key);
    if declared.several_routes {
        return Err(format!(
            "{object} is rendered from {} by several overlays ({}), and which one this cluster applies is not in the repository: change it in git, or set inPlace.overlay: base to edit {} for all of them",
            declared.path,
            declared.transformed_by.join(", "),
            declared.path,
        ));
    }
    let sources = declared
        .transformed_by
        .iter()
        .map(|place| source(read, place, declared))
        .collect::<Result<Vec<_>, _>>()?;
    let names = [key.name.as_str(), declared.written_name.as_str()];
    // Flux's postBuild fills `${variables}` in after every overlay.
    let substituted = sources
        .iter()
        .any(|s| s.flux && s.body.get("postBuild").is_some_and(|v| !v.is_null()));
    let mut routed = Routed::default();
    for op in ops {
        let path = op_path(op);
        let mut owned = false;
        for source in &sources {
            match claim(w, source, &names, op, substituted) {
                Claim::No => continue,
                Claim::Refuse(why) => {
                    return Err(format!(
                        "{object}: {why} sets {field}; kubescribe edits only what it can trace: change it there",
                        field = field(path),
                    ))
                }
                Claim::Edit(edit) => {
                    add(&mut routed.elsewhere, edit);
                    owned = true;
                    // A removed field goes from every place that sets it, or the
                    // next one in would bring it back.
                    if matches!(op, Op::Set(..)) {
                        break;
                    }
                }
            }
        }
        if owned && matches!(op, Op::Set(..)) {
            continue;
        }
        if flux_variable(&sources, base, path) {
            return Err(format!(
                "{object}: {field} in {} is a Flux variable that postBuild substitutes; change the value where the variable is set",
                declared.path,
                field = field(path),
            ));
        }
        if (shared > 1 || declared.elsewhere)
            && (matches!(op, Op::Set(..)) || at(base, path).is_some())
        {
            let others = if declared.elsewhere {
                "is rendered elsewhere in the repository too (for another cluster, or by an overlay this cluster does not apply), which".to_owned()
            } else {
                format!("renders {shared} objects, which")
            };
            return Err(format!(
                "{object}: {field} is not set by an overlay, and {} {others} would all change: change it in git, or set it in this overlay's patch",
                declared.path,
                field = field(path),
            ));
        }
        routed.base.push(op.clone());
    }
    Ok(routed)
}

/// Why a delete of `key` (rendered from `declared`) is the person's to make in git,
/// if it is: kustomize fails on a patch, or a `replicas:` entry, whose object is gone.
pub fn delete_refusal(read: &ReadFile<'_>, key: &Key, declared: &Declared) -> Option<String> {
    let patched = patched_by(read, key, declared);
    (!patched.is_empty()).then(|| {
        format!(
            "{} is patched by {}, and kustomize fails on a patch whose object is gone: delete it in git",
            key.namespace
                .as_ref()
                .map_or_else(|| key.name.clone(), |ns| format!("{ns}/{}", key.name)),
            patched.join(", ")
        )
    })
}

/// The files of patches that select `key` (rendered from `declared`).
fn patched_by(read: &ReadFile<'_>, key: &Key, declared: &Declared) -> Vec<String> {
    let names = [key.name.as_str(), declared.written_name.as_str()];
    let mut files = Vec::new();
    for place in &declared.transformed_by {
        let Ok(source) = source(read, place, declared) else {
            continue;
        };
        // A patch without a target, and a `replicas:` entry, that finds no object
        // fails the build; a target that selects nothing does not.
        let patched = patches(read, &source).into_iter().any(|patch| {
            patch.target.is_none() && patch.documents.iter().any(|doc| names_it(doc, key, &names))
        }) || replicas_entry(&source, key, &names).is_some();
        if patched {
            files.push(source.file.clone());
        }
    }
    files
}

fn object_ref(key: &Key) -> String {
    match &key.namespace {
        Some(namespace) => format!("{} {namespace}/{}", key.kind, key.name),
        None => format!("{} {}", key.kind, key.name),
    }
}

fn op_path(op: &Op) -> &[Step] {
    match op {
        Op::Set(path, _) | Op::Remove(path) => path,
    }
}

/// Adds `edit` to the edit of its document, if there is one already.
fn add(edits: &mut Vec<FileEdit>, edit: FileEdit) {
    match edits
        .iter_mut()
        .find(|e| e.path == edit.path && e.document == edit.document)
    {
        Some(known) => known.ops.extend(edit.ops),
        None => edits.push(edit),
    }
}

/// The value at `path` in `value`.
fn at<'v>(value: &'v Value, path: &[Step]) -> Option<&'v Value> {
    path.iter()
        .try_fold(value, |here, step| match (step, here) {
            (Step::Key(key), Value::Object(map)) => map.get(key),
            (Step::Index(i), Value::Array(items)) => items.get(*i),
            (Step::Named(name), Value::Array(items)) => items
                .iter()
                .find(|item| item.get("name").and_then(Value::as_str) == Some(name)),
            _ => None,
        })
}

/// The transform `place` names: a kustomization's directory, or the file of a Flux
/// Kustomization (whose `path` holds `base`).
fn source(read: &ReadFile<'_>, place: &str, declared: &Declared) -> Result<Source, String> {
    let base = declared.path.as_str();
    if let Some(bytes) = read(place) {
        // A Flux Kustomization's file: the document whose `path` the base is under.
        let documents = super::documents(&bytes);
        let flux: Vec<(usize, &Value)> = documents
            .iter()
            .enumerate()
            .filter(|(_, doc)| {
                doc.get("kind").and_then(Value::as_str) == Some("Kustomization")
                    && doc
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.starts_with("kustomize.toolkit.fluxcd.io/"))
            })
            .collect();
        let by_path: Vec<(usize, &Value)> = flux
            .iter()
            .copied()
            .filter(|(_, doc)| {
                doc.pointer("/spec/path")
                    .and_then(Value::as_str)
                    .and_then(|p| kustomize::join("", p))
                    .is_some_and(|dir| {
                        // Its path is the first kustomization of the chain (within
                        // an ExternalArtifact, the end of it), or holds the
                        // document when it has none.
                        declared
                            .through
                            .first()
                            .is_some_and(|t| *t == dir || t.ends_with(&format!("/{dir}")))
                            || (declared.through.is_empty()
                                && (dir.is_empty() || base.starts_with(&format!("{dir}/"))))
                    })
            })
            .collect();
        // Else the file's only one that transforms.
        let transforming: Vec<(usize, &Value)> = flux
            .iter()
            .copied()
            .filter(|(_, doc)| {
                ["patches", "images", "components", "postBuild"]
                    .iter()
                    .any(|k| {
                        doc.pointer(&format!("/spec/{k}"))
                            .is_some_and(|v| !v.is_null())
                    })
            })
            .collect();
        let chosen = match (by_path.as_slice(), transforming.as_slice()) {
            ([one], _) | ([], [one]) => Some(*one),
            _ => None,
        };
        return match chosen {
            Some((document, doc)) => Ok(Source {
                file: place.to_owned(),
                document,
                dir: String::new(),
                body: doc.get("spec").cloned().unwrap_or(Value::Null),
                prefix: vec![Step::Key("spec".to_owned())],
                flux: true,
                place: place.to_owned(),
            }),
            _ => Err(format!(
                "cannot tell which Flux Kustomization of {place} renders {base}: change it in git"
            )),
        };
    }
    for name in kustomize::FILE_NAMES {
        let file = if place.is_empty() {
            name.to_owned()
        } else {
            format!("{place}/{name}")
        };
        if let Some(bytes) = read(&file) {
            let body = super::documents(&bytes)
                .into_iter()
                .next()
                .unwrap_or(Value::Null);
            return Ok(Source {
                file,
                document: 0,
                dir: place.to_owned(),
                body,
                prefix: Vec::new(),
                flux: false,
                place: place.to_owned(),
            });
        }
    }
    Err(format!(
        "the kustomization of {place} is not on the branch any more"
    ))
}

/// What `source` does to the field `op` changes.
fn claim(w: &Routing<'_>, source: &Source, names: &[&str], op: &Op, substituted: bool) -> Claim {
    let (read, key, old, new, base) = (w.read, w.key, w.old, w.new, w.base);
    let path = op_path(op);
    let body = &source.body;
    let present = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    for (what, unknown) in [
        ("components", true),
        ("replacements", true),
        ("vars", true),
        ("transformers", !source.flux),
    ] {
        if present(what) && unknown && !only_metadata_transformers(read, source, what, path) {
            return Claim::Refuse(format!("the {what} of {}", source.file));
        }
    }
    // kustomize applies `images` and `replicas` after the patches: they win.
    if let Some(claim) = image_entry(w, source, op, substituted) {
        return claim;
    }
    if let [Step::Key(spec), Step::Key(replicas)] = path {
        if spec == "spec" && replicas == "replicas" {
            if let Some(i) = replicas_entry(source, key, names) {
                return match op {
                    Op::Set(_, count) => Claim::Edit(own_edit(
                        source,
                        vec![Op::Set(steps(&["replicas"], i, &["count"]), count.clone())],
                    )),
                    Op::Remove(_) => Claim::Refuse(format!("the replicas of {}", source.file)),
                };
            }
        }
    }
    // The last patch applied wins: searched from it back.
    for patch in patches(read, source).into_iter().rev() {
        if let Some(target) = &patch.target {
            match targets(target, key, names) {
                Some(false) => continue,
                Some(true) => {
                    let also = w.siblings.iter().find(|(other, declared)| {
                        declared.transformed_by.contains(&source.place)
                            && targets(
                                target,
                                other,
                                &[other.name.as_str(), &declared.written_name],
                            ) != Some(false)
                    });
                    if let Some((other, _)) = also {
                        if patch.touches(path) {
                            return Claim::Refuse(format!(
                                "a patch in {} that applies to {} too",
                                patch.told_in,
                                object_ref(other)
                            ));
                        }
                    }
                }
                None => {
                    if patch.touches(path) {
                        return Claim::Refuse(format!(
                            "a patch in {} whose target kubescribe cannot match (by labels, annotations, a namespace or a version)",
                            source.file
                        ));
                    }
                    continue;
                }
            }
        }
        if patch.json6902 {
            let pointer = pointer_of(path, old);
            let sets = patch.documents.iter().flat_map(as_ops).any(|other| {
                let n = pointer.len().min(other.len());
                pointer[..n]
                    .iter()
                    .zip(&other[..n])
                    .all(|(a, b)| a == b || b == "-")
            });
            if sets {
                return Claim::Refuse(format!("a JSON patch in {}", patch.told_in));
            }
            continue;
        }
        for (document, doc) in patch.documents.iter().enumerate().rev() {
            if patch.target.is_none() && !names_it(doc, key, names) {
                continue;
            }
            let reached = reach(doc, path);
            let owns = match reached {
                Reach::Sets => true,
                Reach::Inside => {
                    return Claim::Refuse(format!("a patch in {}", patch.told_in));
                }
                // An element the patch adds (a sidecar) is the patch's, all of it.
                Reach::No => added_element(doc, base, path),
            };
            if !owns {
                continue;
            }
            let Some(file) = &patch.file else {
                return Claim::Refuse(format!("an inline patch in {}", source.file));
            };
            if substituted && variable(at(doc, path)) {
                return Claim::Refuse(format!("a Flux variable (postBuild) in {}", patch.told_in));
            }
            return Claim::Edit(FileEdit {
                path: file.clone(),
                document,
                ops: vec![op.clone()],
                old: old.clone(),
                new: new.clone(),
            });
        }
    }
    Claim::No
}

/// The `replicas:` entry of `source` for the object, if it has one; kustomize
/// applies them to these kinds only.
fn replicas_entry(source: &Source, key: &Key, names: &[&str]) -> Option<usize> {
    if source.flux
        || !matches!(
            key.kind.as_str(),
            "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController"
        )
    {
        return None;
    }
    source
        .body
        .get("replicas")?
        .as_array()?
        .iter()
        .position(|e| {
            e.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(&n))
        })
}

/// The `images:` entry that renders the image `op` changes, and its edit.
fn image_entry(w: &Routing<'_>, source: &Source, op: &Op, substituted: bool) -> Option<Claim> {
    let (old, base) = (w.old, w.base);
    let path = op_path(op);
    let [.., Step::Key(list), Step::Named(_), Step::Key(image)] = path else {
        return None;
    };
    if image != "image" || !(list == "containers" || list == "initContainers") {
        return None;
    }
    let entries = source.body.get("images")?.as_array()?;
    // kustomize matches an entry by its `name` against the image as the
    // resources it transforms have it: the base's, where the base sets it.
    let i = match at(base, path).and_then(Value::as_str) {
        Some(written) => {
            let (written, _, _) = split_image(written);
            entries
                .iter()
                .position(|e| e.get("name").and_then(Value::as_str) == Some(written))?
        }
        None => {
            let (before, _, _) = split_image(at(old, path)?.as_str()?);
            entries.iter().position(|e| {
                let name = e.get("name").and_then(Value::as_str);
                e.get("newName").and_then(Value::as_str).or(name) == Some(before)
            })?
        }
    };
    let what = || format!("the images of {}", source.file);
    let Op::Set(_, Value::String(image)) = op else {
        return Some(Claim::Refuse(what()));
    };
    let entry_name = entries[i]
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(other) = image_user(w, &source.place, entry_name) {
        return Some(Claim::Refuse(format!(
            "the images entry for {entry_name} in {}, which {other} uses too,",
            source.file
        )));
    }
    if substituted
        && ["newName", "newTag", "digest"]
            .iter()
            .any(|f| variable(entries[i].get(*f)))
    {
        return Some(Claim::Refuse(format!(
            "a Flux variable (postBuild) in the images of {}",
            source.file
        )));
    }
    let (name, tag, digest) = split_image(image);
    if tag.is_none() && digest.is_none() {
        // Without newTag the base's tag would come back; `latest` is not the same
        // thing to write.
        return Some(Claim::Refuse(format!(
            "an image without a tag, while the images of {}",
            source.file
        )));
    }
    let entry = &entries[i];
    let mut ops = Vec::new();
    let named = entry.get("newName").and_then(Value::as_str).unwrap_or(
        entry
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    if name != named {
        ops.push(Op::Set(
            steps(&["images"], i, &["newName"]),
            Value::from(name),
        ));
    }
    for (field, value) in [("newTag", tag), ("digest", digest)] {
        let at = steps(&["images"], i, &[field]);
        match value {
            Some(value) => ops.push(Op::Set(at, Value::from(value))),
            None if entry.get(field).is_some() => ops.push(Op::Remove(at)),
            None => {}
        }
    }
    Some(Claim::Edit(own_edit(source, ops)))
}

/// `registry/name:tag@digest` as (name, tag, digest).
fn split_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    // A `:` after the last `/` is a tag's; one before it is a registry's port.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(colon) => (
            &rest[..slash + colon],
            Some(&rest[slash + colon + 1..]),
            digest,
        ),
        None => (rest, None, digest),
    }
}

/// `[first..., Index(i), rest...]` under nothing.
fn steps(first: &[&str], i: usize, rest: &[&str]) -> Vec<Step> {
    first
        .iter()
        .map(|k| Step::Key((*k).to_owned()))
        .chain([Step::Index(i)])
        .chain(rest.iter().map(|k| Step::Key((*k).to_owned())))
        .collect()
}

/// An edit of the source's own document (its `images` or `replicas`).
fn own_edit(source: &Source, ops: Vec<Op>) -> FileEdit {
    FileEdit {
        path: source.file.clone(),
        document: source.document,
        ops: ops
            .into_iter()
            .map(|op| match op {
                Op::Set(path, value) => Op::Set([source.prefix.clone(), path].concat(), value),
                Op::Remove(path) => Op::Remove([source.prefix.clone(), path].concat()),
            })
            .collect(),
        old: Value::Null,
        new: Value::Null,
    }
}

/// Whether the `transformers` of `source` only set labels or annotations, and the
/// field is neither.
fn only_metadata_transformers(
    read: &ReadFile<'_>,
    source: &Source,
    what: &str,
    path: &[Step],
) -> bool {
    if what != "transformers" {
        return false;
    }
    let metadata = path.iter().any(|step| {
        matches!(step, Step::Key(k) if k == "labels" || k == "annotations" || k == "matchLabels")
    });
    if metadata {
        return false;
    }
    source.body["transformers"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|entry| {
            let documents = match entry.as_str() {
                Some(text) if text.contains('\n') => super::documents(text.as_bytes()),
                Some(file) => kustomize::join(&source.dir, file)
                    .and_then(|file| read(&file))
                    .map(|bytes| super::documents(&bytes))
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            !documents.is_empty()
                && documents.iter().all(|doc| {
                    matches!(
                        doc.get("kind").and_then(Value::as_str),
                        Some("LabelTransformer" | "AnnotationsTransformer")
                    )
                })
        })
}

/// One patch of a kustomization, read.
struct Patch {
    /// The file that holds it; `None` for an inline one.
    file: Option<String>,
    /// Where it is written, for a message.
    told_in: String,
    target: Option<Value>,
    json6902: bool,
    documents: Vec<Value>,
}

impl Patch {
    /// Whether one of its documents says anything at `path`.
    fn touches(&self, path: &[Step]) -> bool {
        self.documents
            .iter()
            .any(|doc| !matches!(reach(doc, path), Reach::No))
    }
}

/// Every patch `source` applies, in order.
fn patches(read: &ReadFile<'_>, source: &Source) -> Vec<Patch> {
    let mut out = Vec::new();
    let body = &source.body;
    let mut add = |entry: &Value, target: Option<Value>, json6902: bool| {
        let (file, text) = match entry {
            Value::String(text) if text.contains('\n') || source.flux => (None, Some(text.clone())),
            Value::String(file) => (kustomize::join(&source.dir, file), None),
            Value::Object(map) => match (map.get("path"), map.get("patch")) {
                (Some(Value::String(file)), _) => (kustomize::join(&source.dir, file), None),
                (_, Some(Value::String(text))) => (None, Some(text.clone())),
                _ => return,
            },
            _ => return,
        };
        let bytes = match (&file, text) {
            (Some(file), _) => read(file),
            (None, Some(text)) => Some(text.into_bytes()),
            (None, None) => None,
        };
        let Some(bytes) = bytes else { return };
        let documents = super::documents(&bytes);
        let json6902 = json6902 || documents.iter().any(Value::is_array);
        out.push(Patch {
            told_in: file.clone().unwrap_or_else(|| source.file.clone()),
            file,
            target,
            json6902,
            documents,
        });
    };
    for entry in body["patchesStrategicMerge"]
        .as_array()
        .into_iter()
        .flatten()
    {
        add(entry, None, false);
    }
    for entry in body["patches"].as_array().into_iter().flatten() {
        add(entry, entry.get("target").cloned(), false);
    }
    for entry in body["patchesJson6902"].as_array().into_iter().flatten() {
        add(entry, entry.get("target").cloned(), true);
    }
    out
}

/// Whether a patch document without a target names the object.
fn names_it(doc: &Value, key: &Key, names: &[&str]) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some(key.kind.as_str())
        && doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.contains(&n))
}

/// Whether a patch's `target` selects the object; `None` when it selects by labels
/// or annotations, which the index does not know.
fn targets(target: &Value, key: &Key, names: &[&str]) -> Option<bool> {
    let text = |k: &str| target.get(k).and_then(Value::as_str);
    // Selectors need the object's labels as the patch sees them; a namespace or a
    // version, the object's before this kustomization's own `namespace:`.
    if [
        "labelSelector",
        "annotationSelector",
        "namespace",
        "version",
    ]
    .iter()
    .any(|k| text(k).is_some())
    {
        return None;
    }
    // kustomize reads each as a regular expression of the whole value.
    let matches = |field: &str, values: &[&str]| -> Option<bool> {
        match text(field) {
            None => Some(true),
            Some(pattern) => {
                let re = regex::Regex::new(&format!("^(?:{pattern})$")).ok()?;
                Some(values.iter().any(|v| re.is_match(v)))
            }
        }
    };
    Some(
        matches("kind", &[key.kind.as_str()])?
            && matches("group", &[key.group.as_str()])?
            && matches("name", names)?,
    )
}

/// How far a patch document goes along a path.
enum Reach {
    /// It has a value at the path: it sets the field.
    Sets,
    /// It says something about the field kubescribe cannot split: a directive
    /// (`$patch`), or a value where the path goes deeper.
    Inside,
    /// It stops before the path's end.
    No,
}

fn reach(doc: &Value, path: &[Step]) -> Reach {
    let mut here = doc;
    for step in path {
        if let Value::Object(map) = here {
            if map.keys().any(|k| k.starts_with('$')) {
                return Reach::Inside;
            }
        }
        let next = match (step, here) {
            (Step::Key(key), Value::Object(map)) => map.get(key),
            // A list without merge keys is replaced whole by the patch.
            (Step::Index(_), Value::Array(_)) => return Reach::Sets,
            (Step::Named(name), Value::Array(items)) => items
                .iter()
                .find(|item| item.get("name").and_then(Value::as_str) == Some(name)),
            _ => return Reach::Inside,
        };
        match next {
            Some(next) => here = next,
            None => return Reach::No,
        }
    }
    Reach::Sets
}

/// Whether the path goes through a list element the patch has and the base does not.
fn added_element(doc: &Value, base: &Value, path: &[Step]) -> bool {
    (1..=path.len()).any(|n| {
        matches!(path[n - 1], Step::Named(_))
            && at(doc, &path[..n]).is_some()
            && at(base, &path[..n]).is_none()
    })
}

/// The path as JSON pointer segments, a named element by its position in `old`.
fn pointer_of(path: &[Step], old: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (n, step) in path.iter().enumerate() {
        out.push(match step {
            Step::Key(key) => key.clone(),
            Step::Index(i) => i.to_string(),
            Step::Named(name) => at(old, &path[..n])
                .and_then(Value::as_array)
                .and_then(|items| {
                    items
                        .iter()
                        .position(|i| i.get("name").and_then(Value::as_str) == Some(name))
                })
                .map_or_else(|| "?".to_owned(), |i| i.to_string()),
        });
    }
    out
}

/// A JSON 6902 patch's operations, each as its path's segments.
fn as_ops(doc: &Value) -> Vec<Vec<String>> {
    doc.as_array()
        .into_iter()
        .flatten()
        .filter_map(|op| op.get("path").and_then(Value::as_str))
        .map(|path| {
            path.split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect()
        })
        .collect()
}

/// Whether the base's value at `path` is a `${variable}` a Flux postBuild fills in.
fn flux_variable(sources: &[Source], base: &Value, path: &[Step]) -> bool {
    sources
        .iter()
        .any(|s| s.flux && s.body.get("postBuild").is_some_and(|v| !v.is_null()))
        && at(base, path)
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains("${"))
}

/// Whether a value is text with a `${variable}` in it.
fn variable(value: Option<&Value>) -> bool {
    value
        .and_then(Value::as_str)
        .is_some_and(|s| s.contains("${"))
}

/// The first other object rendered with this one whose document has a container
/// image named `name`.
fn image_user(w: &Routing<'_>, place: &str, name: &str) -> Option<String> {
    let mut files: std::collections::HashMap<&str, Vec<Value>> = Default::default();
    for (other, declared) in w.siblings {
        // Rendered through the kustomization whose entry it is.
        if !declared.transformed_by.iter().any(|t| t == place) {
            continue;
        }
        let documents = files.entry(declared.path.as_str()).or_insert_with(|| {
            (w.read)(&declared.path)
                .map(|b| super::documents(&b))
                .unwrap_or_default()
        });
        if documents
            .get(declared.document)
            .is_some_and(|doc| uses_image(doc, name))
        {
            return Some(object_ref(other));
        }
    }
    None
}

fn uses_image(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, value)| {
            let containers = (key == "containers" || key == "initContainers")
                && value.as_array().is_some_and(|items| {
                    items.iter().any(|item| {
                        item.get("image")
                            .and_then(Value::as_str)
                            .is_some_and(|image| split_image(image).0 == name)
                    })
                });
            containers || uses_image(value, name)
        }),
        Value::Array(items) => items.iter().any(|item| uses_image(item, name)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_name_tag_and_digest() {
        assert_eq!(
            split_image("ghcr.io/stefanprodan/podinfo:6.14.1"),
            ("ghcr.io/stefanprodan/podinfo", Some("6.14.1"), None)
        );
        assert_eq!(
            split_image("localhost:5000/web@sha256:abc"),
            ("localhost:5000/web", None, Some("sha256:abc"))
        );
        assert_eq!(split_image("nginx"), ("nginx", None, None));
    }

    fn declared(transformed_by: &str) -> Declared {
        Declared {
            path: "base/d.yaml".to_owned(),
            document: 0,
            through: vec![transformed_by.to_owned(), "base".to_owned()],
            transformed_by: vec![transformed_by.to_owned()],
            affixed: false,
            written_name: "web".to_owned(),
            namespace_from: super::super::NamespaceFrom::Cluster,
            several_routes: false,
            ours: true,
            elsewhere: false,
        }
    }

    fn container(field: &str) -> Vec<Step> {
        ["spec", "template", "spec", "containers"]
            .iter()
            .map(|k| Step::Key((*k).to_owned()))
            .chain([Step::Named("web".to_owned()), Step::Key(field.to_owned())])
            .collect()
    }

    #[test]
    fn the_last_patch_applied_owns_a_field_and_images_match_the_base_s_name() {
        let files: std::collections::BTreeMap<&str, &str> = [
            (
                "prod/kustomization.yaml",
                "images:\n- name: other\n  newName: registry/web\n  newTag: '7'\n- name: registry/web\n  newTag: '1.2'\npatches:\n- path: a.yaml\n- path: b.yaml\n",
            ),
            ("prod/a.yaml", "kind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        workingDir: /a\n"),
            ("prod/b.yaml", "kind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        workingDir: /b\n"),
        ]
        .into_iter()
        .collect();
        let read = |path: &str| files.get(path).map(|t| t.as_bytes().to_vec());
        let key = Key::new("apps", "Deployment", Some("prod"), "web");
        let base = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "registry/web:1.0"}
        ]}}}});
        let old = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "registry/web:1.2", "workingDir": "/b"}
        ]}}}});
        let ops = [
            Op::Set(container("workingDir"), Value::from("/c")),
            Op::Set(container("image"), Value::from("registry/web:1.3")),
        ];
        let routed = route(
            &Routing {
                read: &read,
                key: &key,
                declared: &declared("prod"),
                shared: 1,
                siblings: &[],
                base: &base,
                old: &old,
                new: &Value::Null,
            },
            &ops,
        )
        .unwrap();
        assert!(routed.base.is_empty(), "{:?}", routed.base);
        let files: Vec<(&str, &[Op])> = routed
            .elsewhere
            .iter()
            .map(|e| (e.path.as_str(), e.ops.as_slice()))
            .collect();
        assert_eq!(
            files,
            [
                ("prod/b.yaml", &ops[..1]),
                (
                    "prod/kustomization.yaml",
                    &[Op::Set(
                        vec![
                            Step::Key("images".into()),
                            Step::Index(1),
                            Step::Key("newTag".into())
                        ],
                        Value::from("1.3")
                    )][..]
                ),
            ]
        );
    }

    #[test]
    fn an_images_entry_another_object_uses_is_not_this_object_s_to_change() {
        let files: std::collections::BTreeMap<&str, &str> = [
            (
                "prod/kustomization.yaml",
                "images:\n- name: registry/web\n  newTag: '1.2'\n",
            ),
            (
                "base/worker.yaml",
                "kind: Deployment\nmetadata:\n  name: worker\nspec:\n  template:\n    spec:\n      containers:\n      - name: worker\n        image: registry/web:1.0\n",
            ),
        ]
        .into_iter()
        .collect();
        let read = |path: &str| files.get(path).map(|t| t.as_bytes().to_vec());
        let key = Key::new("apps", "Deployment", Some("prod"), "web");
        let mut worker = declared("prod");
        worker.path = "base/worker.yaml".to_owned();
        worker.written_name = "worker".to_owned();
        let siblings = [(
            Key::new("apps", "Deployment", Some("prod"), "worker"),
            worker,
        )];
        let base = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "registry/web:1.0"}
        ]}}}});
        let old = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "registry/web:1.2"}
        ]}}}});
        let ops = [Op::Set(container("image"), Value::from("registry/web:1.3"))];
        let refusal = route(
            &Routing {
                read: &read,
                key: &key,
                declared: &declared("prod"),
                shared: 1,
                siblings: &siblings,
                base: &base,
                old: &old,
                new: &Value::Null,
            },
            &ops,
        )
        .unwrap_err();
        assert!(
            refusal.contains("the images entry for registry/web in prod/kustomization.yaml, which Deployment prod/worker uses too"),
            "{refusal}"
        );
    }

    #[test]
    fn fields_read_as_people_write_them() {
        assert_eq!(
            field(&[
                Step::Key("spec".into()),
                Step::Key("containers".into()),
                Step::Named("web".into()),
                Step::Key("image".into()),
            ]),
            "spec.containers[web].image"
        );
    }
}
