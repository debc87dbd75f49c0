//! In-place edits of a document a person maintains: an admitted UPDATE becomes the
//! change between the object before and after it ([`diff`]), applied to that document
//! with a lossless YAML editor ([`update`]); a DELETE takes the document out of its
//! file ([`remove`]).
//!
//! Only what changed is touched: comments, key order, indentation, the quoting of a
//! replaced string (where the new value allows it), the other documents of the file
//! and its line endings stay byte for byte. The edit is expressed against the object
//! the cluster holds, so what kustomize adds when it renders (a namespace, name
//! affixes, common labels) is in both sides and never becomes an edit.
//!
//! Invariant: an edit is checked before it is returned. The edited document must
//! parse to exactly the document with the change applied, and every other document to
//! what it was; where the editor cannot do that, the document is written whole in the
//! canonical form ([`Edited::rewritten`]), never wrongly.

use std::str::FromStr;

use serde_json::{Map, Value};
use yaml_edit::{Document, Mapping, ScalarStyle, ScalarValue, Sequence, YamlFile};

/// One step of a path into an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    /// The element of a list whose `name` is this (containers, env, ports,
    /// volumes…): found by name, wherever the document has it.
    Named(String),
}

/// One change to an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Sets the value at the path, creating the mappings on the way; a [`Step::Named`]
    /// element that is not there is appended to its list.
    Set(Vec<Step>, Value),
    /// Removes the value at the path, if it is there.
    Remove(Vec<Step>),
}

/// Why a document could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the file is not UTF-8")]
    NotUtf8,
    #[error("the file has no document {document}")]
    NoDocument { document: usize },
    #[error("the file does not parse as YAML: {reason}")]
    Parse { reason: String },
    #[error("document {document} is not a mapping")]
    NotAnObject { document: usize },
    #[error("document {} has another list at {path} than the object (an overlay or a controller changed it), so an edit by position there could change the wrong element", .document + 1)]
    Diverged { document: usize, path: String },
}

/// A path as people read it: `spec.template.spec.containers[web].args[2]`.
pub fn field(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Step::Index(at) => text.push_str(&format!("[{at}]")),
            Step::Named(name) => text.push_str(&format!("[{name}]")),
        }
    }
    text
}

/// An edited file.
#[derive(Debug, PartialEq)]
pub struct Edited {
    /// The file's new contents; `None` when the file goes (its last document went).
    pub bytes: Option<Vec<u8>>,
    /// The document was written whole in the canonical form: the editor could not
    /// change it in place (its comments and layout are gone).
    pub rewritten: bool,
}

/// The changes that turn `old` into `new`, each as deep as it can be: a changed
/// image is one [`Op::Set`] of that string, not of the pod template.
pub fn diff(old: &Value, new: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    diff_into(old, new, &mut Vec::new(), &mut ops);
    ops
}

fn diff_into(old: &Value, new: &Value, path: &mut Vec<Step>, ops: &mut Vec<Op>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            for (key, value) in old {
                path.push(Step::Key(key.clone()));
                match new.get(key) {
                    Some(now) => diff_into(value, now, path, ops),
                    None => ops.push(Op::Remove(path.clone())),
                }
                path.pop();
            }
            for (key, value) in new {
                if !old.contains_key(key) {
                    path.push(Step::Key(key.clone()));
                    ops.push(Op::Set(path.clone(), value.clone()));
                    path.pop();
                }
            }
        }
        (Value::Array(old_items), Value::Array(new_items)) => {
            if let (Some(old_names), Some(new_names)) = (names(old_items), names(new_items)) {
                // Elements kept stay in their order, new ones come last: then each
                // element is changed where the document has it, by name.
                let kept: Vec<&str> = old_names
                    .iter()
                    .copied()
                    .filter(|n| new_names.contains(n))
                    .collect();
                let appended = new_names.iter().all(|n| {
                    old_names.contains(n)
                        || new_names
                            .iter()
                            .position(|m| m == n)
                            .is_some_and(|at| at >= kept.len())
                });
                if new_names[..kept.len().min(new_names.len())] == kept[..] && appended {
                    for (name, item) in old_names.iter().zip(old_items) {
                        path.push(Step::Named((*name).to_owned()));
                        match new_names.iter().position(|n| n == name) {
                            Some(at) => diff_into(item, &new_items[at], path, ops),
                            None => ops.push(Op::Remove(path.clone())),
                        }
                        path.pop();
                    }
                    for (name, item) in new_names.iter().zip(new_items).skip(kept.len()) {
                        path.push(Step::Named((*name).to_owned()));
                        ops.push(Op::Set(path.clone(), item.clone()));
                        path.pop();
                    }
                    return;
                }
            } else if old_items.len() == new_items.len() {
                for (at, (was, now)) in old_items.iter().zip(new_items).enumerate() {
                    path.push(Step::Index(at));
                    diff_into(was, now, path, ops);
                    path.pop();
                }
                return;
            } else if new_items.starts_with(old_items) {
                // Appended: each new element goes after the last.
                for (at, item) in new_items.iter().enumerate().skip(old_items.len()) {
                    path.push(Step::Index(at));
                    ops.push(Op::Set(path.clone(), item.clone()));
                    path.pop();
                }
                return;
            } else if let Some(gone) = removed(old_items, new_items) {
                // Taken out: from the last, so the earlier positions still hold.
                for at in gone.into_iter().rev() {
                    path.push(Step::Index(at));
                    ops.push(Op::Remove(path.clone()));
                    path.pop();
                }
                return;
            }
            ops.push(Op::Set(path.clone(), new.clone()));
        }
        _ => ops.push(Op::Set(path.clone(), new.clone())),
    }
}

/// The positions of `old` that `new` lacks, when `new` is `old` with only those
/// elements taken out.
fn removed(old: &[Value], new: &[Value]) -> Option<Vec<usize>> {
    let mut gone = Vec::new();
    let mut kept = new.iter().peekable();
    for (at, item) in old.iter().enumerate() {
        if kept.peek() == Some(&item) {
            kept.next();
        } else {
            gone.push(at);
        }
    }
    (kept.next().is_none() && !gone.is_empty()).then_some(gone)
}

/// The `name`s of a list whose elements are all mappings with a distinct string
/// `name`; `None` for any other list.
fn names(items: &[Value]) -> Option<Vec<&str>> {
    if items.is_empty() {
        return None;
    }
    let names: Vec<&str> = items
        .iter()
        .map(|item| item.get("name").and_then(Value::as_str))
        .collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

/// The value at `path` in `value`.
fn at<'v>(value: &'v Value, path: &[Step]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, step| match step {
        Step::Key(key) => value.as_object()?.get(key),
        Step::Index(at) => value.as_array()?.get(*at),
        Step::Named(name) => value
            .as_array()?
            .iter()
            .find(|item| item.get("name").and_then(Value::as_str) == Some(name)),
    })
}

/// How an op lands in a particular document: the document may lack part of the path
/// (an element the object got elsewhere, a list of another length), and then the
/// nearest part it has is set to what the new object holds there.
#[derive(Debug, Clone, PartialEq)]
enum Placed {
    Set(Vec<Step>, Value),
    Remove(Vec<Step>),
    /// Append to the list at the path.
    Append(Vec<Step>, Value),
    Nothing,
}

/// Where `op` lands in `document`, or the path where the document's list is not
/// the one the object had (`old`): an overlay patch or an injected element made them
/// differ, and an edit by position there would change the wrong element.
fn place(document: &Value, op: &Op, old: &Value, new: &Value) -> Result<Placed, Vec<Step>> {
    let (path, value) = match op {
        Op::Set(path, value) => (path, Some(value)),
        Op::Remove(path) => (path, None),
    };
    let mut here = document;
    for (depth, step) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let next = match (step, here) {
            (Step::Key(key), Value::Object(map)) => map.get(key),
            (Step::Index(at), Value::Array(items)) => {
                // Positions are the object's: the document's list must be it.
                let matches = old.is_null()
                    || self::at(old, &path[..depth]).is_some_and(|list| within(here, list));
                if !matches {
                    return Err(path[..depth].to_vec());
                }
                items.get(*at)
            }
            (Step::Named(name), Value::Array(items)) => items
                .iter()
                .find(|item| item.get("name").and_then(Value::as_str) == Some(name)),
            // The document has something else here than the object had.
            _ => return Err(path[..depth].to_vec()),
        };
        match next {
            Some(next) => here = next,
            None if value.is_none() => return Ok(Placed::Nothing),
            None => {
                let value = value.expect("a set").clone();
                return match step {
                    // Mappings on the way are created.
                    Step::Key(_) => {
                        let nested =
                            path[depth + 1..]
                                .iter()
                                .rev()
                                .try_fold(value, |v, s| match s {
                                    Step::Key(k) => {
                                        Some(Value::Object(Map::from_iter([(k.clone(), v)])))
                                    }
                                    _ => None,
                                });
                        match nested {
                            Some(nested) => Ok(Placed::Set(path[..=depth].to_vec(), nested)),
                            None => Ok(match at(new, &path[..=depth]) {
                                Some(value) => Placed::Set(path[..=depth].to_vec(), value.clone()),
                                None => Placed::Nothing,
                            }),
                        }
                    }
                    Step::Named(_) if last => Ok(Placed::Append(path[..depth].to_vec(), value)),
                    // One past the end: appended.
                    Step::Index(at) if last && here.as_array().is_some_and(|a| a.len() == *at) => {
                        Ok(Placed::Append(path[..depth].to_vec(), value))
                    }
                    // An element the document does not have (one an overlay or a
                    // controller added): not this document's to change.
                    _ => Err(path[..=depth].to_vec()),
                };
            }
        }
    }
    // A whole list set anew: what the document has there must be the object's list,
    // or an overlay's elements would be written into it.
    if let (Some(_), Value::Array(_)) = (value, here) {
        let matches = old.is_null() || self::at(old, path).is_some_and(|list| within(here, list));
        if !matches {
            return Err(path.clone());
        }
    }
    Ok(match value {
        Some(value) => Placed::Set(path.clone(), value.clone()),
        None => Placed::Remove(path.clone()),
    })
}

/// Whether a document's value is the object's: everything the document says is
/// there (the object adds its defaults), and lists hold the same elements in order.
fn within(document: &Value, object: &Value) -> bool {
    match (document, object) {
        (Value::Object(mine), Value::Object(theirs)) => mine
            .iter()
            .all(|(key, value)| theirs.get(key).is_some_and(|other| within(value, other))),
        (Value::Array(mine), Value::Array(theirs)) => {
            mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| within(a, b))
        }
        (a, b) => a == b,
    }
}

/// Applies a placed op to the document's value: what the edited text must parse to.
fn apply_value(document: &mut Value, placed: &Placed) {
    let (path, last) = match placed {
        Placed::Nothing => return,
        Placed::Set(path, _) | Placed::Remove(path) | Placed::Append(path, _)
            if path.is_empty() =>
        {
            if let Placed::Set(_, value) = placed {
                *document = value.clone();
            }
            return;
        }
        Placed::Set(path, _) | Placed::Remove(path) => (&path[..path.len() - 1], path.last()),
        Placed::Append(path, _) => (&path[..], None),
    };
    let Some(parent) = at_mut(document, path) else {
        return;
    };
    match (placed, last, parent) {
        (Placed::Append(_, value), None, Value::Array(items)) => items.push(value.clone()),
        (Placed::Set(_, value), Some(Step::Key(key)), Value::Object(map)) => {
            map.insert(key.clone(), value.clone());
        }
        (Placed::Remove(_), Some(Step::Key(key)), Value::Object(map)) => {
            map.remove(key);
        }
        (placed, Some(step), Value::Array(items)) => {
            let Some(index) = index_of(items, step) else {
                return;
            };
            match placed {
                Placed::Set(_, value) => items[index] = value.clone(),
                _ => {
                    items.remove(index);
                }
            }
        }
        _ => {}
    }
}

fn index_of(items: &[Value], step: &Step) -> Option<usize> {
    match step {
        Step::Index(at) => (*at < items.len()).then_some(*at),
        Step::Named(name) => items
            .iter()
            .position(|item| item.get("name").and_then(Value::as_str) == Some(name)),
        Step::Key(_) => None,
    }
}

fn at_mut<'v>(value: &'v mut Value, path: &[Step]) -> Option<&'v mut Value> {
    path.iter()
        .try_fold(value, |value, step| match (step, value) {
            (Step::Key(key), Value::Object(map)) => map.get_mut(key),
            (step, Value::Array(items)) => {
                let index = index_of(items, step)?;
                items.get_mut(index)
            }
            _ => None,
        })
}

/// Where a document sits in its file, and how the file ends its lines.
struct Located<'f> {
    text: &'f str,
    start: usize,
    end: usize,
    crlf: bool,
    documents: Vec<Value>,
}

fn locate(file: &[u8], document: usize) -> Result<Located<'_>, EditError> {
    let text = std::str::from_utf8(file).map_err(|_| EditError::NotUtf8)?;
    // A document that is YAML but not JSON (a custom tag) is `Null` here and left
    // as it is; only a syntax error makes the file uneditable.
    let documents = super::documents(text.as_bytes());
    let crlf = is_crlf(text);
    // A second document marker means a document the parser could not read: the
    // editor must see the file's real documents.
    let markers = text
        .lines()
        .skip(1)
        .filter(|line| *line == "---" || line.starts_with("--- ") || line.starts_with("---\r"))
        .count();
    if documents.len() == 1 && document == 0 && markers == 0 {
        // Most files hold one document: it is the whole file.
        return Ok(Located {
            text,
            start: 0,
            end: text.len(),
            crlf,
            documents,
        });
    }
    let parsed = YamlFile::from_str(text).map_err(|e| EditError::Parse {
        reason: e.to_string(),
    })?;
    let ranges: Vec<_> = parsed.documents().map(|d| d.byte_range()).collect();
    // The editor and the parser the index reads with must agree on what the
    // documents are, or the edit would land in the wrong one.
    if ranges.len() != documents.len() {
        return Err(EditError::Parse {
            reason: format!(
                "{} documents for the editor, {} for the parser",
                ranges.len(),
                documents.len()
            ),
        });
    }
    let range = ranges
        .get(document)
        .ok_or(EditError::NoDocument { document })?;
    Ok(Located {
        text,
        start: range.start as usize,
        end: range.end as usize,
        crlf,
        documents,
    })
}

/// Whether `bytes` is UTF-8 YAML whose every document parses.
pub fn parses(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| parse_all(text).is_ok())
}

fn parse_all(text: &str) -> Result<Vec<Value>, EditError> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| {
            Value::deserialize(d).map_err(|e| EditError::Parse {
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Applies `ops` (from [`diff`] of the object before and after: `old` and `new`) to
/// document `document` of `file`.
pub fn update(
    file: &[u8],
    document: usize,
    ops: &[Op],
    old: &Value,
    new: &Value,
) -> Result<Edited, EditError> {
    let located = locate(file, document)?;
    let before = &located.documents[document];
    if !before.is_object() {
        return Err(EditError::NotAnObject { document });
    }
    let placed: Vec<Placed> = ops
        .iter()
        .map(|op| place(before, op, old, new))
        .collect::<Result<_, _>>()
        .map_err(|path| EditError::Diverged {
            document,
            path: field(&path),
        })?;
    let mut expected = before.clone();
    for op in &placed {
        apply_value(&mut expected, op);
    }
    if &expected == before {
        return Ok(Edited {
            bytes: Some(file.to_vec()),
            rewritten: false,
        });
    }
    let slice = &located.text[located.start..located.end];
    let (text, rewritten) = match edit_text(slice, &placed)
        .filter(|text| splice_checks(&located, document, text, &expected))
    {
        Some(text) => (text, false),
        None => {
            let text = canonical(slice, located.crlf, &expected);
            if !splice_checks(&located, document, &text, &expected) {
                return Err(EditError::Parse {
                    reason: "the edited file does not parse back to the change".to_owned(),
                });
            }
            (text, true)
        }
    };
    let mut bytes = String::with_capacity(located.text.len() + text.len());
    bytes.push_str(&located.text[..located.start]);
    bytes.push_str(&text);
    bytes.push_str(&located.text[located.end..]);
    Ok(Edited {
        bytes: Some(bytes.into_bytes()),
        rewritten,
    })
}

/// Takes document `document` out of `file`; the file goes with its last document.
pub fn remove(file: &[u8], document: usize) -> Result<Edited, EditError> {
    let located = locate(file, document)?;
    let rest: Vec<&Value> = located
        .documents
        .iter()
        .enumerate()
        .filter(|(at, d)| *at != document && !d.is_null())
        .map(|(_, d)| d)
        .collect();
    // A document that is YAML but not JSON reads as nothing: the text says whether
    // anything but this document is left.
    let others = [&located.text[..located.start], &located.text[located.end..]];
    let content = others.iter().flat_map(|t| t.lines()).any(|line| {
        let line = line.trim();
        !(line.is_empty() || line.starts_with('#') || line.starts_with("---") || line == "...")
    });
    if rest.is_empty() && !content {
        return Ok(Edited {
            bytes: None,
            rewritten: false,
        });
    }
    let mut text = String::with_capacity(located.text.len());
    text.push_str(&located.text[..located.start]);
    let after = &located.text[located.end..];
    if located.start == 0 {
        // The first document goes: the next one's `---` would open an empty one.
        let marker = if located.crlf { "---\r\n" } else { "---\n" };
        text.push_str(after.strip_prefix(marker).unwrap_or(after));
    } else {
        text.push_str(after);
    }
    let left: Vec<Value> = super::documents(text.as_bytes())
        .into_iter()
        .filter(|d| !d.is_null())
        .collect();
    if left.iter().collect::<Vec<_>>() != rest {
        return Err(EditError::Parse {
            reason: "the file without the document does not parse to the others".to_owned(),
        });
    }
    Ok(Edited {
        bytes: Some(text.into_bytes()),
        rewritten: false,
    })
}

/// The change from `base` to `changed` of a file of documents, redone on `current`
/// document by document, as an edit: each document `changed` changed is found in
/// `current` by its kind and name and gets the same edit ([`update`]); one it removed
/// is removed. A person's edits elsewhere in `current`, the same document's other
/// lines included, stay. `None` when a document is not found or cannot be edited in
/// place, or `changed` added one.
pub fn redo(current: &[u8], base: &[u8], changed: &[u8]) -> Option<Vec<u8>> {
    type Identity = (String, String, Option<String>, String);
    let identity = |d: &Value| -> Option<Identity> {
        let api_version = d.get("apiVersion")?.as_str()?;
        let group = api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_owned();
        let text = |p: &str| d.pointer(p).and_then(Value::as_str).map(str::to_owned);
        Some((
            group,
            text("/kind")?,
            text("/metadata/namespace"),
            text("/metadata/name")?,
        ))
    };
    let before: Vec<(Identity, Value)> = super::documents(base)
        .into_iter()
        .filter_map(|d| Some((identity(&d)?, d)))
        .collect();
    let after: Vec<(Identity, Value)> = super::documents(changed)
        .into_iter()
        .filter_map(|d| Some((identity(&d)?, d)))
        .collect();
    if after
        .iter()
        .any(|(id, _)| !before.iter().any(|(b, _)| b == id))
    {
        return None;
    }
    let mut text = current.to_vec();
    let mut redone = false;
    for (id, was) in &before {
        let now = after.iter().find(|(a, _)| a == id).map(|(_, d)| d);
        if now == Some(was) {
            continue;
        }
        let (group, kind, namespace, name) = id;
        let key = super::Key::new(group, kind, namespace.as_deref(), name);
        let at = super::find_document(&super::documents(&text), &key, name)?;
        let edited = match now {
            Some(now) => update(&text, at, &diff(was, now), was, now).ok()?,
            None => remove(&text, at).ok()?,
        };
        if edited.rewritten {
            return None;
        }
        text = edited.bytes?;
        redone = true;
    }
    redone.then_some(text)
}

/// The change from `base` to `changed` of a kustomization's `resources:` (in `dir`),
/// made to `current` entry by entry, by the files they name: what was added is added
/// unless `current` lists it already, what was removed is removed where `current`
/// still lists it. The rest of `current` (a person's own entries and edits) stays.
/// `None` when a side is not a kustomization this can read, or anything else changed.
pub fn relist(current: &[u8], dir: &str, base: &[u8], changed: &[u8]) -> Option<Vec<u8>> {
    let files = |bytes: &[u8]| -> Option<(Value, Vec<String>)> {
        let mut value: Value = serde_yaml_ng::from_slice(bytes).ok()?;
        let entries = match value.get("resources") {
            None | Some(Value::Null) => Vec::new(),
            Some(list) => list
                .as_array()?
                .iter()
                .map(|e| e.as_str().and_then(|e| super::kustomize::join(dir, e)))
                .collect::<Option<_>>()?,
        };
        value.as_object_mut()?.remove("resources");
        Some((value, entries))
    };
    let (base_rest, before) = files(base)?;
    let (changed_rest, after) = files(changed)?;
    // Only a change of its resources is redone this way.
    if base_rest != changed_rest {
        return None;
    }
    let mut text = current.to_vec();
    for file in before.iter().filter(|f| !after.contains(f)) {
        if let Some(edited) = unlist(&text, dir, file) {
            text = edited;
        }
    }
    for file in after.iter().filter(|f| !before.contains(f)) {
        let (_, listed) = files(&text)?;
        if !listed.contains(file) {
            text = enlist(&text, dir, file)?;
        }
    }
    Some(text)
}

/// `kustomization` (the file in `dir`) with `file` added at the end of its
/// `resources:`, as a path relative to `dir`; `None` when it cannot be edited.
pub fn enlist(kustomization: &[u8], dir: &str, file: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(kustomization).ok()?;
    let before: Value = serde_yaml_ng::from_str(text).ok()?;
    before.as_object()?;
    let entry = relative(dir, file);
    let open = Lossless::open(text)?;
    let root = open.document.as_mapping()?;
    let quote = open.quote;
    let mut expected = before.clone();
    match root.get_sequence("resources") {
        Some(resources) => {
            push(&resources, &Value::String(entry.clone()), quote);
            expected["resources"]
                .as_array_mut()?
                .push(Value::String(entry));
        }
        None => {
            if before.get("resources").is_some_and(|r| !r.is_null()) {
                return None;
            }
            set_in(
                &root,
                "resources",
                &Value::Array(vec![Value::String(entry.clone())]),
                quote,
            );
            expected["resources"] = Value::Array(vec![Value::String(entry)]);
        }
    }
    let edited = open.text();
    let after: Value = serde_yaml_ng::from_str(&edited).ok()?;
    if after != expected {
        return None;
    }
    Some(edited.into_bytes())
}

/// `file` as kustomize names it from `dir`: `web.yaml`, `apps/web.yaml`, `../web.yaml`.
fn relative(dir: &str, file: &str) -> String {
    let dir: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    let file: Vec<&str> = file.split('/').collect();
    let common = dir.iter().zip(&file).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; dir.len() - common];
    parts.extend(&file[common..]);
    parts.join("/")
}

/// `kustomization` (the file in `dir`) without the entry of its `resources:` that
/// names `file`; `None` when it lists no such entry or cannot be edited.
pub fn unlist(kustomization: &[u8], dir: &str, file: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(kustomization).ok()?;
    let before: Value = serde_yaml_ng::from_str(text).ok()?;
    let entries = before.get("resources")?.as_array()?;
    let at = entries.iter().position(|entry| {
        entry
            .as_str()
            .and_then(|entry| super::kustomize::join(dir, entry))
            .is_some_and(|path| path == file)
    })?;
    let open = Lossless::open(text)?;
    open.document
        .as_mapping()?
        .get_sequence("resources")?
        .remove(at)?;
    let edited = open.text();
    let mut expected = before.clone();
    expected["resources"].as_array_mut()?.remove(at);
    let after: Value = serde_yaml_ng::from_str(&edited).ok()?;
    // The last entry gone, `resources:` may read as nothing: kustomize takes that as
    // an empty list too.
    let empty = expected["resources"].as_array().is_some_and(Vec::is_empty)
        && after.get("resources").is_some_and(Value::is_null);
    if after != expected && !empty {
        return None;
    }
    Some(edited.into_bytes())
}

/// Whether the file with `text` in place of the document parses to `expected` there
/// and to what it was everywhere else.
fn splice_checks(located: &Located<'_>, document: usize, text: &str, expected: &Value) -> bool {
    let mut file = String::with_capacity(located.text.len() + text.len());
    file.push_str(&located.text[..located.start]);
    file.push_str(text);
    file.push_str(&located.text[located.end..]);
    let parsed = super::documents(file.as_bytes());
    parsed.len() == located.documents.len()
        && parsed.iter().enumerate().all(|(at, value)| {
            if at == document {
                value == expected
            } else {
                *value == located.documents[at]
            }
        })
}

/// The document written whole: its `---` marker kept, its line endings the file's.
fn canonical(slice: &str, crlf: bool, expected: &Value) -> String {
    let mut text = String::new();
    if slice.starts_with("---") {
        text.push_str("---\n");
    }
    text.push_str(&crate::yaml::render(expected));
    if crlf {
        text = text.replace('\n', "\r\n");
    }
    text
}

/// Whether a file ends every line with CRLF.
fn is_crlf(text: &str) -> bool {
    text.contains("\r\n") && !text.replace("\r\n", "").contains('\n')
}

/// One document open in the editor, as LF text, to be given back with the file's
/// line endings.
struct Lossless {
    document: Document,
    crlf: bool,
    quote: Quote,
}

impl Lossless {
    /// `None` when the editor cannot give the text back as it read it: it would
    /// change more than the change.
    fn open(text: &str) -> Option<Lossless> {
        let crlf = is_crlf(text);
        let lf = if crlf {
            text.replace("\r\n", "\n")
        } else {
            text.to_owned()
        };
        let document = Document::from_str(&lf).ok()?;
        if document.to_string() != lf {
            return None;
        }
        Some(Lossless {
            quote: Quote::of(&lf),
            document,
            crlf,
        })
    }

    fn text(&self) -> String {
        let text = self.document.to_string();
        if self.crlf {
            text.replace('\n', "\r\n")
        } else {
            text
        }
    }
}

/// The document's text with the ops applied by the editor; `None` when the editor
/// cannot read it back unchanged or cannot make a change.
fn edit_text(slice: &str, placed: &[Placed]) -> Option<String> {
    let open = Lossless::open(slice)?;
    let root = open.document.as_mapping()?;
    for op in placed {
        apply_yaml(&root, op, open.quote)?;
    }
    Some(open.text())
}

/// A node of the document being edited.
enum Node {
    Mapping(Mapping),
    Sequence(Sequence),
}

fn child(node: &Node, step: &Step) -> Option<yaml_edit::YamlNode> {
    match (node, step) {
        (Node::Mapping(map), Step::Key(key)) if has_other_key(map, key) => None,
        (Node::Mapping(map), Step::Key(key)) => map.get(key.as_str()),
        (Node::Sequence(seq), Step::Index(at)) => seq.get(*at),
        (Node::Sequence(seq), Step::Named(name)) => seq.values().find(|item| {
            item.as_mapping()
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_scalar().map(|s| s.as_string()))
                .as_deref()
                == Some(name.as_str())
        }),
        _ => None,
    }
}

fn position(seq: &Sequence, step: &Step) -> Option<usize> {
    match step {
        Step::Index(at) => (*at < seq.len()).then_some(*at),
        Step::Named(name) => seq.values().position(|item| {
            item.as_mapping()
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_scalar().map(|s| s.as_string()))
                .as_deref()
                == Some(name.as_str())
        }),
        Step::Key(_) => None,
    }
}

fn apply_yaml(root: &Mapping, placed: &Placed, quote: Quote) -> Option<()> {
    let (path, last) = match placed {
        Placed::Nothing => return Some(()),
        // The whole document: the canonical rewrite does it.
        Placed::Set(path, _) | Placed::Remove(path) if path.is_empty() => return None,
        Placed::Set(path, _) | Placed::Remove(path) => (&path[..path.len() - 1], path.last()),
        Placed::Append(path, _) => (&path[..], None),
    };
    let mut node = Node::Mapping(root.clone());
    for step in path {
        let next = child(&node, step)?;
        node = if let Some(map) = next.as_mapping() {
            Node::Mapping(map.clone())
        } else {
            Node::Sequence(next.as_sequence()?.clone())
        };
    }
    match (placed, last, node) {
        (Placed::Append(_, value), None, Node::Sequence(seq)) => {
            push(&seq, value, quote);
        }
        (Placed::Set(_, value), Some(Step::Key(key)), Node::Mapping(map)) => {
            if has_other_key(&map, key) {
                return None;
            }
            let current = map.get(key.as_str());
            if !set_scalar_in_style(current.as_ref(), value) {
                set_in(&map, key, value, quote);
            }
        }
        (Placed::Remove(_), Some(Step::Key(key)), Node::Mapping(map)) => {
            map.remove(key.as_str())?;
        }
        (placed, Some(step), Node::Sequence(seq)) => {
            let index = position(&seq, step)?;
            match placed {
                Placed::Set(_, value) => {
                    let current = seq.get(index);
                    if !set_scalar_in_style(current.as_ref(), value) {
                        set_item(&seq, index, value, quote);
                    }
                }
                _ => {
                    seq.remove(index)?;
                }
            }
        }
        _ => return None,
    }
    Some(())
}

/// Replaces a quoted string with a string in the same quotes, where the new value
/// allows it; false when it does not apply (the caller sets the value plainly).
fn set_scalar_in_style(current: Option<&yaml_edit::YamlNode>, value: &Value) -> bool {
    let (Some(current), Value::String(text)) = (current, value) else {
        return false;
    };
    let Some(scalar) = current.as_scalar() else {
        return false;
    };
    let raw = scalar.value();
    if plain(text) && !raw.starts_with(['"', '\'']) && !scalar.is_block() {
        scalar.set_value(text);
        true
    } else if raw.starts_with('"') {
        // A JSON string is a YAML double-quoted scalar.
        scalar.set_value(&serde_json::to_string(text).expect("a string serialises"));
        true
    } else if raw.starts_with('\'') && !text.chars().any(char::is_control) {
        scalar.set_value(&format!("'{}'", text.replace('\'', "''")));
        true
    } else {
        false
    }
}

fn set_in(map: &Mapping, key: &str, value: &Value, quote: Quote) {
    // An existing key is set where it is; a new one is written as it must be.
    let existing = map.get(key).is_some();
    let name = || quote.key(key);
    match (build(value, quote), existing) {
        (Some(Built::Mapping(m)), true) => map.set(key, m),
        (Some(Built::Mapping(m)), false) => map.set(name(), m),
        (Some(Built::Sequence(s)), true) => map.set(key, s),
        (Some(Built::Sequence(s)), false) => map.set(name(), s),
        (None, true) => map.set(key, quote.scalar(value)),
        (None, false) => map.set(name(), quote.scalar(value)),
    }
    if build(value, quote).is_none() {
        unquote(map.get(key), value);
    }
}

/// Whether `map` has a key that reads as `key` but is not the string `key` (`1:`,
/// `true:`): the editor looks keys up as strings, so it would add a second one.
fn has_other_key(map: &Mapping, key: &str) -> bool {
    map.get(key).is_none()
        && map
            .keys()
            .any(|k| k.as_scalar().is_some_and(|s| s.as_string() == key))
}

fn set_item(seq: &Sequence, index: usize, value: &Value, quote: Quote) {
    match build(value, quote) {
        Some(Built::Mapping(m)) => {
            seq.set(index, m);
        }
        Some(Built::Sequence(s)) => {
            seq.set(index, s);
        }
        None => {
            seq.set(index, quote.scalar(value));
            unquote(seq.get(index), value);
        }
    };
}

fn push(seq: &Sequence, value: &Value, quote: Quote) {
    match build(value, quote) {
        Some(Built::Mapping(m)) => seq.push(m),
        Some(Built::Sequence(s)) => seq.push(s),
        None => {
            seq.push(quote.scalar(value));
            unquote(seq.last(), value);
        }
    }
}

/// Writes a new string without the quotes the editor gave it, where none are needed.
fn unquote(node: Option<yaml_edit::YamlNode>, value: &Value) {
    if let (Some(scalar), Value::String(text)) = (node.as_ref().and_then(|n| n.as_scalar()), value)
    {
        if plain(text) && scalar.is_quoted() {
            scalar.set_value(text);
        }
    }
}

/// A new collection for the editor.
enum Built {
    Mapping(Mapping),
    Sequence(Sequence),
}

/// The collection for a JSON object or array; `None` for a scalar.
fn build(value: &Value, quote: Quote) -> Option<Built> {
    Some(match value {
        Value::Object(map) => {
            let mapping = if map.is_empty() {
                Mapping::new_flow()
            } else {
                Mapping::new()
            };
            // As people and `kubectl get -o yaml` write them: `name` (and the
            // object's header) first, then the rest in order.
            const FIRST: [&str; 5] = ["apiVersion", "kind", "metadata", "name", "namespace"];
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|key| FIRST.iter().position(|f| f == key).unwrap_or(FIRST.len()));
            for key in keys {
                set_in(&mapping, key, &map[key], quote);
            }
            Built::Mapping(mapping)
        }
        Value::Array(items) => {
            let sequence = if items.is_empty() {
                Sequence::new_flow()
            } else {
                Sequence::new()
            };
            for item in items {
                push(&sequence, item, quote);
            }
            Built::Sequence(sequence)
        }
        _ => return None,
    })
}

/// The quotes a new string that needs them gets: the ones the document already uses
/// most, so an added value looks like its neighbours.
#[derive(Debug, Clone, Copy)]
enum Quote {
    Single,
    Double,
}

impl Quote {
    fn of(text: &str) -> Quote {
        let opening = |quote: char| {
            text.lines()
                .filter(|line| {
                    let value = line
                        .split_once(": ")
                        .map(|(_, v)| v)
                        .or_else(|| line.trim_start().strip_prefix("- "));
                    value.is_some_and(|v| v.trim_start().starts_with(quote))
                })
                .count()
        };
        if opening('"') > opening('\'') {
            Quote::Double
        } else {
            Quote::Single
        }
    }

    /// `text` in the document's quotes (double where single ones cannot hold it).
    fn quoted(self, text: &str) -> ScalarValue {
        match self {
            Quote::Single if !text.chars().any(char::is_control) => {
                ScalarValue::single_quoted(text.to_owned())
            }
            _ => ScalarValue::double_quoted(text.to_owned()),
        }
    }

    /// A mapping key: plain where every reader takes it as this string.
    fn key(self, key: &str) -> ScalarValue {
        if plain(key) {
            ScalarValue::plain(key.to_owned())
        } else {
            self.quoted(key)
        }
    }

    fn scalar(self, value: &Value) -> ScalarValue {
        match value {
            Value::Null => ScalarValue::null(),
            Value::Bool(b) => ScalarValue::from(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => ScalarValue::from(i),
                (_, Some(u), _) => ScalarValue::parse(u.to_string()),
                (_, _, f) => ScalarValue::from(f.unwrap_or_default()),
            },
            Value::String(s) => {
                let scalar = ScalarValue::string(s.clone());
                match (scalar.style(), self) {
                    // The editor reads YAML 1.2, where `y`, `1:20` and dates are
                    // strings; Kubernetes' YAML 1.1 reader takes them for a boolean,
                    // a number and a timestamp.
                    (ScalarStyle::Plain, _) if !plain(s) => self.quoted(s),
                    (ScalarStyle::SingleQuoted, Quote::Double) => {
                        ScalarValue::double_quoted(s.clone())
                    }
                    _ => scalar,
                }
            }
            // Collections are built, not scalars.
            other => ScalarValue::string(other.to_string()),
        }
    }
}

/// Whether `text` reads back as this string written without quotes, by YAML 1.1
/// readers as well: the canonical emitter's rule, and command-line flags (`--port=80`,
/// `-v`) and relative paths (`../base`), which it quotes to keep its output stable but
/// a person writes plain.
fn plain(text: &str) -> bool {
    let flag = text.trim_start_matches('-');
    // A relative path (`../base`, `./web.yaml`), as kustomizations list them.
    let mut relative = text;
    while let Some(rest) = relative
        .strip_prefix("../")
        .or_else(|| relative.strip_prefix("./"))
    {
        relative = rest;
    }
    (relative.len() < text.len()
        && relative.starts_with(|c: char| c.is_ascii_alphanumeric())
        && crate::yaml::is_plain_safe(relative))
        || crate::yaml::is_plain_safe(text)
        || (flag.len() < text.len()
            && text.len() - flag.len() <= 2
            && flag.starts_with(|c: char| c.is_ascii_alphabetic())
            && crate::yaml::is_plain_safe(flag))
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn plain_strings_are_the_ones_every_reader_takes_as_strings() {
        for text in [
            "--port=80",
            "nginx:1.27",
            "a:b",
            "ghcr.io/x/y:6.1.0",
            "IfNotPresent",
            "-x",
        ] {
            assert!(plain(text), "{text} needs no quotes");
        }
        // YAML 1.1 readers (Kubernetes' own) take these as booleans, numbers or null.
        for text in [
            "yes", "Yes", "NO", "on", "Off", "y", "n", "~", "null", "1:20", "0x1F", "-1", ".5",
            "+1", "-", ":", ".inf", "-.nan", "", "a: b", "#x", "@x", "%x", ",x", "x:", "--yes",
            "---x", "- x",
        ] {
            assert!(!plain(text), "{text:?} is quoted");
        }
    }
}
