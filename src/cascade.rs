//! What a person's delete takes with it. Deleting a Namespace deletes every object in
//! it, and deleting a CustomResourceDefinition deletes every custom resource of it;
//! the cluster does that through its own controllers, whose writes kubescribe never
//! records. So the person's delete is where those files go: one commit, authored by
//! that person, removes the object's file and every file of the objects it takes.
//!
//! Invariants: only files the layout places for those objects are selected (a
//! README beside them, or a file of another namespace, stays); where a path alone
//! cannot tell (a shortened file name, a template without `{namespace}`), the file's
//! own `metadata.namespace` or `apiVersion` and `kind` decide, and a file that cannot
//! be read as a manifest is kept. Only admitted deletes cascade: the reconciler
//! removes files one object at a time as it sees them go, so a late event never
//! takes files written since.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gix::hash::ObjectId;
use kube_core::admission::Operation;
use serde_json::Value;

use crate::manifest::{Filter, Layout, Select};
use crate::policy::Write;

/// The objects a delete takes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every object in this namespace.
    Namespace(String),
    /// Every custom resource of a CustomResourceDefinition.
    Resource {
        group: String,
        /// The plural, as paths spell it.
        resource: String,
        /// `Widget`, when the definition said.
        kind: Option<String>,
    },
}

/// A delete's scope, with the layout that says where those objects' files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cascade {
    pub scope: Scope,
    pub layout: Layout,
}

impl Scope {
    /// The scope of `write` if it is a delete that takes other objects with it.
    pub fn of(write: &Write) -> Option<Scope> {
        if write.operation != Operation::Delete || write.sub_resource.is_some() {
            return None;
        }
        Self::of_object(
            &write.resource.group,
            &write.resource.resource,
            &write.name,
            write.old_object.as_ref(),
        )
    }

    /// What deleting the object `name` of `resource` in `group` would take with it.
    fn of_object(group: &str, resource: &str, name: &str, object: Option<&Value>) -> Option<Scope> {
        match (group, resource) {
            ("", "namespaces") if !name.is_empty() => Some(Scope::Namespace(name.to_owned())),
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let spec = object.and_then(|o| o.get("spec"));
                let text = |pointer: &str| {
                    spec.and_then(|s| s.pointer(pointer))
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                };
                // A definition's name is `<plural>.<group>`, enforced by the apiserver.
                let (plural, group) = name.split_once('.')?;
                Some(Scope::Resource {
                    group: text("/group").unwrap_or_else(|| group.to_owned()),
                    resource: text("/names/plural").unwrap_or_else(|| plural.to_owned()),
                    kind: text("/names/kind"),
                })
            }
            _ => None,
        }
    }

    /// `namespace scratch`, `widgets.example.com`: for messages.
    pub fn describe(&self) -> String {
        match self {
            Scope::Namespace(namespace) => format!("namespace {namespace}"),
            Scope::Resource {
                group, resource, ..
            } => format!("{resource}.{group}"),
        }
    }

    /// What its objects are: `objects in namespace scratch`, `widgets.example.com
    /// custom resources`.
    pub fn objects(&self) -> String {
        match self {
            Scope::Namespace(namespace) => format!("objects in namespace {namespace}"),
            Scope::Resource { .. } => format!("{} custom resources", self.describe()),
        }
    }

    fn filter(&self) -> Filter<'_> {
        match self {
            Scope::Namespace(namespace) => Filter {
                namespace: Some(namespace),
                ..Filter::default()
            },
            Scope::Resource {
                group, resource, ..
            } => Filter {
                group: Some(group),
                resource: Some(resource),
                ..Filter::default()
            },
        }
    }

    /// Whether a manifest holds one of its objects, by what the file says.
    fn holds(&self, manifest: &[u8]) -> bool {
        let Ok(object) = serde_yaml_ng::from_slice::<Value>(manifest) else {
            return false;
        };
        match self {
            Scope::Namespace(namespace) => {
                object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    == Some(namespace.as_str())
            }
            Scope::Resource { group, kind, .. } => {
                let api_group = object
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .and_then(|v| v.rsplit_once('/'))
                    .map(|(g, _)| g);
                let same_kind = match kind {
                    Some(kind) => object.get("kind").and_then(Value::as_str) == Some(kind),
                    None => true,
                };
                api_group == Some(group.as_str()) && same_kind
            }
        }
    }
}

/// What the cluster shows of a Namespace or a CustomResourceDefinition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Live,
    /// Being deleted (`deletionTimestamp`).
    Terminating,
    Deleted,
}

#[derive(Debug, Clone, Copy)]
enum Going {
    /// A person's delete was recorded; the cluster has not shown it yet.
    Admitted(Instant),
    Terminating,
    /// Gone; events other watches still deliver may predate that, until then.
    Deleted(Instant),
}

/// The scopes being deleted, for the reconciler: while a namespace (or a
/// definition) goes, the cluster still shows its objects, and events from before
/// the delete still arrive on their own watches. Written back, they would undo the
/// cascade, so the reconciler writes none of them until the scope is live again.
///
/// A person's delete counts from when admission records it, for `window` unless the
/// cluster shows it terminating; a deleted scope counts for `window` more, for events
/// still on their way. Seen live again (recreated), it no longer counts.
#[derive(Debug, Default)]
pub struct Leaving(std::sync::Mutex<HashMap<Key, Going>>);

/// A namespace (`("", name)`) or a resource (`(group, plural)`).
pub type Key = (String, String);

fn key(scope: &Scope) -> Key {
    match scope {
        Scope::Namespace(namespace) => (String::new(), namespace.clone()),
        Scope::Resource {
            group, resource, ..
        } => (group.clone(), resource.clone()),
    }
}

impl Leaving {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Going>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admission recorded a person's delete of `scope`.
    pub fn admitted(&self, scope: &Scope, window: Duration) {
        let mut leaving = self.lock();
        let entry = leaving
            .entry(key(scope))
            .or_insert(Going::Admitted(Instant::now() + window));
        if let Going::Admitted(until) = entry {
            *until = Instant::now() + window;
        }
    }

    /// A person's delete of `scope` never landed (a phantom): it does not count.
    pub fn cancel(&self, scope: &Scope) {
        self.lock().remove(&key(scope));
    }

    /// The reconciler saw the object that defines a scope (a Namespace, a CRD) so.
    pub fn seen(
        &self,
        group: &str,
        resource: &str,
        name: &str,
        object: Option<&Value>,
        seen: Seen,
        window: Duration,
    ) {
        let Some(scope) = Scope::of_object(group, resource, name, object) else {
            return;
        };
        let mut leaving = self.lock();
        let key = key(&scope);
        match seen {
            Seen::Terminating => {
                leaving.insert(key, Going::Terminating);
            }
            Seen::Deleted => {
                leaving.insert(key, Going::Deleted(Instant::now() + window));
            }
            // A live state from before an admitted delete may still arrive.
            Seen::Live => {
                if !matches!(leaving.get(&key), Some(Going::Admitted(_))) {
                    leaving.remove(&key);
                }
            }
        }
    }

    /// A full list of Namespaces (`namespaces`) or of CRDs showed exactly the scopes
    /// `listed` ([`Leaving::key_of`] of each object): a scope held that it no longer
    /// has is gone (its DELETED event was missed, the watch expired).
    pub fn relisted(
        &self,
        namespaces: bool,
        listed: &std::collections::HashSet<Key>,
        window: Duration,
    ) {
        let mut leaving = self.lock();
        for (key, going) in leaving.iter_mut() {
            let of_this_list = key.0.is_empty() == namespaces;
            if of_this_list && !listed.contains(key) && !matches!(going, Going::Deleted(_)) {
                *going = Going::Deleted(Instant::now() + window);
            }
        }
    }

    /// The scope an object of `resource` in `group` defines (a Namespace, a CRD).
    pub fn key_of(group: &str, resource: &str, name: &str, object: Option<&Value>) -> Option<Key> {
        Scope::of_object(group, resource, name, object).map(|scope| key(&scope))
    }

    /// Whether an object in `namespace` of `resource` in `group` belongs to a scope
    /// being deleted.
    pub fn holds(&self, namespace: Option<&str>, group: &str, resource: &str) -> bool {
        let mut leaving = self.lock();
        if leaving.is_empty() {
            return false;
        }
        let now = Instant::now();
        leaving.retain(|_, going| match going {
            Going::Admitted(until) | Going::Deleted(until) => *until > now,
            Going::Terminating => true,
        });
        namespace.is_some_and(|ns| leaving.contains_key(&(String::new(), ns.to_owned())))
            || (!group.is_empty() && leaving.contains_key(&(group.to_owned(), resource.to_owned())))
    }
}

/// The files of `tree` that hold the objects of `cascade`'s scope, in path order, with
/// their blobs.
pub(crate) fn files(
    repo: &gix::Repository,
    tree: ObjectId,
    cascade: &Cascade,
) -> Result<Vec<(String, ObjectId)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut found = Vec::new();
    if tree.is_empty_tree() {
        return Ok(found);
    }
    let layout = &cascade.layout;
    let filter = cascade.scope.filter();
    // Down the root first: nothing outside it is the layout's.
    let mut at = tree;
    for part in layout.root_components() {
        let decoded = repo.find_tree(at)?;
        let entry = decoded
            .decode()?
            .entries
            .iter()
            .find(|e| e.filename == part.as_str() && e.mode.is_tree())
            .map(|e| e.oid.to_owned());
        match entry {
            Some(id) => at = id,
            None => return Ok(found),
        }
    }
    let mut prefix = layout.root();
    walk(
        repo,
        at,
        0,
        &mut prefix,
        layout.unplaced(&filter),
        cascade,
        &filter,
        &mut found,
    )?;
    found.sort();
    Ok(found)
}

#[allow(clippy::too_many_arguments)]
fn walk(
    repo: &gix::Repository,
    tree: ObjectId,
    depth: usize,
    prefix: &mut String,
    so_far: Select,
    cascade: &Cascade,
    filter: &Filter<'_>,
    found: &mut Vec<(String, ObjectId)>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let layout = &cascade.layout;
    let last = depth + 1 == layout.depth();
    let entries: Vec<_> = {
        let found_tree = repo.find_tree(tree)?;
        let decoded = found_tree.decode()?;
        decoded
            .entries
            .iter()
            // A name that is not UTF-8 is nothing `place` wrote.
            .filter_map(|e| {
                let name = std::str::from_utf8(e.filename).ok()?;
                Some((name.to_owned(), e.mode, e.oid.to_owned()))
            })
            .collect()
    };
    for (name, mode, id) in entries {
        let select = so_far.and(layout.select(depth, &name, filter));
        if select == Select::No || mode.is_tree() == last || mode.is_commit() {
            continue;
        }
        let len = prefix.len();
        prefix.push_str(&name);
        if last {
            let ours = select == Select::Yes || {
                let blob = repo.find_blob(id)?;
                cascade.scope.holds(&blob.data)
            };
            if ours {
                found.push((prefix.clone(), id));
            }
        } else {
            prefix.push('/');
            walk(repo, id, depth + 1, prefix, select, cascade, filter, found)?;
        }
        prefix.truncate(len);
    }
    Ok(())
}

/// The warning that tells the person deleting what else leaves git: with `files`
/// (the branch's, besides the object's own), how many and which; a dry run says
/// "would".
pub(crate) fn warning(scope: &Scope, files: Option<&[String]>, dry_run: bool) -> String {
    const LISTED: usize = 10;
    let what = scope.objects();
    let (removes, prefix) = if dry_run {
        ("would also remove", "kubescribe: dry run: ")
    } else {
        ("also removes", "kubescribe: ")
    };
    let Some(files) = files else {
        return format!("{prefix}{removes} the files of the {what} from git");
    };
    let mut named = files
        .iter()
        .take(LISTED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > LISTED {
        named.push_str(&format!(" and {} more", files.len() - LISTED));
    }
    let count = files.len();
    let noun = if count == 1 { "file" } else { "files" };
    format!("{prefix}{removes} {count} {noun} of the {what} from git: {named}")
}

/// Up to `max` paths, one per line (`- path`), and how many more there are.
pub(crate) fn list(paths: &[String], max: usize) -> String {
    let mut text = String::new();
    for path in paths.iter().take(max) {
        text.push_str("- ");
        text.push_str(path);
        text.push('\n');
    }
    if paths.len() > max {
        text.push_str(&format!("- and {} more\n", paths.len() - max));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::{GroupVersionKind, GroupVersionResource};
    use serde_json::json;

    fn delete(group: &str, resource: &str, name: &str, old: Option<Value>) -> Write {
        Write {
            uid: "u".into(),
            operation: Operation::Delete,
            kind: GroupVersionKind::gvk(group, "v1", "X"),
            resource: GroupVersionResource::gvr(group, "v1", resource),
            sub_resource: None,
            namespace: None,
            name: name.into(),
            user: "alice".into(),
            groups: vec![],
            dry_run: false,
            object: None,
            old_object: old,
            from_cluster: false,
        }
    }

    #[test]
    fn namespace_and_definition_deletes_have_a_scope_and_nothing_else_does() {
        assert_eq!(
            Scope::of(&delete("", "namespaces", "scratch", None)),
            Some(Scope::Namespace("scratch".into()))
        );
        let crd = json!({"spec": {"group": "example.com", "names": {"plural": "widgets", "kind": "Widget"}}});
        assert_eq!(
            Scope::of(&delete(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "widgets.example.com",
                Some(crd)
            )),
            Some(Scope::Resource {
                group: "example.com".into(),
                resource: "widgets".into(),
                kind: Some("Widget".into()),
            })
        );
        // Without the old object, the definition's name says as much.
        assert_eq!(
            Scope::of(&delete(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "widgets.example.com",
                None
            )),
            Some(Scope::Resource {
                group: "example.com".into(),
                resource: "widgets".into(),
                kind: None,
            })
        );
        assert_eq!(Scope::of(&delete("", "configmaps", "a", None)), None);
        let mut update = delete("", "namespaces", "scratch", None);
        update.operation = Operation::Update;
        assert_eq!(Scope::of(&update), None);
        let mut finalize = delete("", "namespaces", "scratch", None);
        finalize.sub_resource = Some("finalize".into());
        assert_eq!(Scope::of(&finalize), None);
    }

    #[test]
    fn file_contents_decide_when_paths_cannot() {
        let ns = Scope::Namespace("scratch".into());
        assert!(ns.holds(
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: scratch\n"
        ));
        assert!(!ns
            .holds(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: other\n"));
        assert!(!ns.holds(b"not: [yaml"));
        let widgets = Scope::Resource {
            group: "example.com".into(),
            resource: "widgets".into(),
            kind: Some("Widget".into()),
        };
        assert!(widgets.holds(b"apiVersion: example.com/v1\nkind: Widget\n"));
        assert!(!widgets.holds(b"apiVersion: example.com/v1\nkind: Gadget\n"));
        assert!(!widgets.holds(b"apiVersion: v1\nkind: Widget\n"));
    }

    #[test]
    fn a_scope_leaving_holds_its_objects_until_it_is_live_again() {
        let leaving = Leaving::default();
        let window = Duration::from_secs(60);
        let ns = Scope::Namespace("scratch".into());
        assert!(!leaving.holds(Some("scratch"), "", "configmaps"));
        leaving.admitted(&ns, window);
        assert!(leaving.holds(Some("scratch"), "apps", "deployments"));
        assert!(!leaving.holds(Some("other"), "", "configmaps"));
        // A live state from before the delete does not end it...
        leaving.seen("", "namespaces", "scratch", None, Seen::Live, window);
        assert!(leaving.holds(Some("scratch"), "", "configmaps"));
        // ...the cluster showing it terminating, then gone, keeps it...
        leaving.seen("", "namespaces", "scratch", None, Seen::Terminating, window);
        leaving.seen("", "namespaces", "scratch", None, Seen::Deleted, window);
        assert!(leaving.holds(Some("scratch"), "", "configmaps"));
        // ...and the namespace made again ends it.
        leaving.seen("", "namespaces", "scratch", None, Seen::Live, window);
        assert!(!leaving.holds(Some("scratch"), "", "configmaps"));

        // A list without a terminating namespace: it went while no watch saw it.
        leaving.seen("", "namespaces", "gone", None, Seen::Terminating, window);
        leaving.relisted(true, &std::collections::HashSet::new(), Duration::ZERO);
        assert!(!leaving.holds(Some("gone"), "", "configmaps"));

        // An admitted delete the cluster never shows counts for the window only.
        leaving.admitted(&ns, Duration::ZERO);
        assert!(!leaving.holds(Some("scratch"), "", "configmaps"));

        let crd = json!({"spec": {"group": "example.com", "names": {"plural": "widgets"}}});
        leaving.seen(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "widgets.example.com",
            Some(&crd),
            Seen::Terminating,
            window,
        );
        assert!(leaving.holds(Some("a"), "example.com", "widgets"));
        assert!(leaving.holds(None, "example.com", "widgets"));
        assert!(!leaving.holds(Some("a"), "example.com", "gadgets"));
    }

    #[test]
    fn lists_stop_at_the_limit_and_say_how_many_more() {
        let paths: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        assert_eq!(list(&paths, 10), "- p0\n- p1\n- p2\n- p3\n- p4\n");
        assert_eq!(list(&paths, 2), "- p0\n- p1\n- and 3 more\n");
    }
}
