//! What people declared in an existing GitOps repository: every Kubernetes object its
//! files render, by (group, kind, namespace, name), with the file and document that
//! declare it, so an admitted write can become an edit of that document rather than a
//! second copy elsewhere (issue 15). [`edit`] changes one of those documents in place.
//!
//! It follows kustomize the way `kubectl kustomize` does for plain resources:
//! `resources:` (and `bases:`, `components:`) lists, `namespace:` set by a
//! kustomization (the outermost wins), `namePrefix`/`nameSuffix` (they accumulate),
//! bases shared by overlays, a Namespace object renamed by `namespace:`. A Flux
//! Kustomization of a Git source in the repository sets its `path`'s namespace with
//! `targetNamespace` and adds its `namePrefix`/`nameSuffix` (and, with no
//! `kustomization.yaml` there, renders every manifest under it, as Flux generates
//! one); an Argo CD Application gives its `path` (its subdirectories only with
//! `directory.recurse`) a namespace for documents without one; a configured mapping
//! from directory to namespace does the same for the rest. A kind the built-in list
//! does not know (one from a CRD) is also found as cluster-scoped, since only the
//! cluster knows its scope.
//!
//! A Flux GitRepository the tree declares with another URL or branch, or an Argo CD
//! Application of another `repoURL` or `targetRevision`, is another tree's. Not
//! followed yet: `kind: List` documents, `components` (taken as bases), Argo CD
//! multi-source Applications. [`Index::update`]
//! keeps it up to date from the paths a commit changed; the store calls it each time
//! the branch moves (see `store::in_place`).
//!
//! Invariants: patches, transformer configurations and generator inputs are never
//! objects; neither is anything in a Helm chart (a directory with `Chart.yaml`), nor a
//! file in a directory a kustomization governs that it does not list. A document
//! whose namespace nothing sets could be any namespace's: a lookup in a namespace
//! finds it only as ambiguous, never as a match, and so does an object two documents
//! declare. Lookups are O(1).

pub mod edit;
mod kustomize;
pub mod overlay;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

pub(crate) use kustomize::Kustomization;

/// Whether a file name is one kustomize reads as a directory's kustomization.
/// The names kustomize reads a kustomization from, in the order it tries them.
pub(crate) const KUSTOMIZATION_FILES: &[&str] = &kustomize::FILE_NAMES;

pub(crate) fn kustomization_file(name: &str) -> bool {
    kustomize::FILE_NAMES.contains(&name)
}

/// The files of a tree as the index reads them: every path, and a file's contents
/// only when asked, so a store can read them from git on demand.
pub trait Files {
    /// The paths from `start` on, in order.
    fn paths_from<'s>(&'s self, start: &str) -> Box<dyn Iterator<Item = &'s str> + 's>;
    fn contains(&self, path: &str) -> bool;
    fn read(&self, path: &str) -> Option<Cow<'_, [u8]>>;
}

impl Files for BTreeMap<String, Vec<u8>> {
    fn paths_from<'s>(&'s self, start: &str) -> Box<dyn Iterator<Item = &'s str> + 's> {
        Box::new(self.range(start.to_owned()..).map(|(p, _)| p.as_str()))
    }
    fn contains(&self, path: &str) -> bool {
        self.contains_key(path)
    }
    fn read(&self, path: &str) -> Option<Cow<'_, [u8]>> {
        self.get(path).map(|b| Cow::Borrowed(b.as_slice()))
    }
}

/// An object as the cluster names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub group: String,
    pub kind: String,
    /// `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
}

impl Key {
    pub fn new(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Key {
        Key {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

/// What the store needs to make a write an edit of the document that declares its
/// object: which object, and the change. The store looks the object up again when it
/// commits, so a document that moved meanwhile is still found.
#[derive(Debug, Clone, PartialEq)]
pub struct InPlace {
    pub key: Key,
    /// The change between the object before and after the write ([`edit::diff`]);
    /// empty for a delete.
    pub ops: Vec<edit::Op>,
    /// The object before the write, sanitised; `Null` for a create, a delete or a
    /// scale. Edits by position in a list need the document's list to be its.
    pub old: Value,
    /// The object after the write, sanitised; `Null` for a delete or a scale.
    pub new: Value,
    /// Where the path template puts the object: where it goes if no document declares
    /// it any more by the time it is committed.
    pub canonical: String,
    /// A new object placed beside its namespace's others (`change.path`), rather
    /// than an edit of a declared one.
    pub new_file: Option<Home>,
    /// The name the declaring document gives the object, when admission found one.
    pub written_name: Option<String>,
}

/// Where an object is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub path: String,
    /// The document's position in its file, from 0.
    pub document: usize,
    /// The kustomization directories that render it, outermost first.
    pub through: Vec<String>,
    /// Those of them (or the Flux Kustomization's file) that change it beyond names,
    /// namespaces and labels (patches, `images`, `replicas`, `postBuild`…): what the
    /// cluster has is not this document alone.
    pub transformed_by: Vec<String>,
    /// Rendered with a name prefix or suffix: the file's name for it is not its own.
    pub affixed: bool,
    /// The name the document itself gives (`metadata.name` as written, before any
    /// prefix, suffix or rename): how the document is found in its file.
    pub written_name: String,
    pub namespace_from: NamespaceFrom,
    /// The document renders this object along more than one chain of
    /// kustomizations (two clusters' overlays of one base): `through` is the first
    /// one's, and `transformed_by` has every chain's.
    pub several_routes: bool,
    /// Rendered for this cluster (always, without `cluster`): reached from this
    /// cluster's entry points. Only these are found by a lookup.
    pub ours: bool,
    /// This cluster's document is also rendered for another cluster: an edit of it
    /// changes that cluster too.
    pub elsewhere: bool,
}

/// What gave a declared object its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceFrom {
    /// Cluster-scoped: none.
    Cluster,
    /// The document's own `metadata.namespace`.
    Document,
    /// The `namespace:` of the kustomization in this directory.
    Kustomization(String),
    /// The `targetNamespace` of the Flux Kustomization `namespace/name`.
    Flux(String),
    /// The `destination.namespace` of the Argo CD Application `namespace/name`.
    ArgoCd(String),
    /// The configured mapping of this directory.
    Mapping(String),
    /// Nothing: it could be any namespace.
    Unknown,
}

/// Where new objects of a namespace go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The directory for the new file.
    pub dir: String,
    /// The directory of the kustomization that must list the file in `resources:`
    /// for it to be rendered; `None` when the directory is rendered whole.
    pub kustomization: Option<String>,
}

/// The answer to "which document declares this object?".
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a Declared),
    /// More than one document could be it: never edit one by guess.
    Ambiguous(Vec<&'a Declared>),
    Missing,
}

/// What the repository itself does not say.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Directory (a repository path, no trailing slash) → the namespace of the
    /// documents under it that nothing else gives one; the longest match wins.
    pub directories: Vec<(String, String)>,
    /// The directory of this cluster's entry point (`clusters/prod`, where `flux
    /// bootstrap --path` points): only what the Flux Kustomizations and Argo CD
    /// Applications in it reach is this cluster's. `None`: the whole repository.
    pub cluster: Option<String>,
    /// The branch indexed, and the remote's URL (as [`same_repository`] compares
    /// them): a Flux GitRepository or an Argo CD Application that names another
    /// repository or branch is not this tree.
    pub branch: Option<String>,
    pub remote: Option<String>,
}

/// The objects of one tree.
#[derive(Debug, Default)]
pub struct Index {
    objects: HashMap<Key, Vec<Declared>>,
    /// Namespaced documents no namespace was found for, by (group, kind, name).
    unplaced: HashMap<(String, String, String), Vec<Declared>>,
    /// Documents of kinds whose scope only the cluster knows (not built in), by
    /// (group, kind, name), wherever they were indexed: one may be cluster-scoped.
    unknown_scope: HashMap<(String, String, String), Vec<Declared>>,
    /// What kustomize's generators make (`configMapGenerator`, `secretGenerator`), by
    /// (kind, namespace, name without the content hash): the kustomization file
    /// that generates each. Never a document to edit. Only a build changes it.
    generated: HashMap<(String, Option<String>, String), String>,
    /// How many distinct objects each (path, document) declares (a base shared by
    /// overlays that give it different namespaces or names declares one per such
    /// overlay).
    declarations: HashMap<String, HashMap<usize, usize>>,
    /// Where each file's entries are, so an update drops and recounts one file's
    /// without going through the rest.
    by_file: HashMap<String, HashSet<Slot>>,
    /// What an update needs to re-read one file without walking the tree again.
    upkeep: Upkeep,
}

/// One entry list of the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Object(Key),
    Unplaced((String, String, String)),
    UnknownScope((String, String, String)),
}

/// How the tree was walked: enough to re-read a changed manifest the way the walk
/// read it. A change to anything that shapes the walk (a kustomization, a chart, a
/// patch or generator input, a Flux Kustomization or Argo CD Application) rebuilds.
#[derive(Debug, Default)]
struct Upkeep {
    /// Every context each manifest was read with.
    contexts: HashMap<String, Vec<Context>>,
    /// Plain directories rendered whole (Flux's generated kustomization), with the
    /// context they were rendered with: a file added under one is read with it.
    walks: Vec<(String, Context)>,
    kustomizations: HashSet<String>,
    charts: HashSet<String>,
    not_objects: HashSet<String>,
    /// Files that hold a Flux Kustomization or an Argo CD Application.
    tools: HashSet<String>,
    /// Directories a GitOps tool points at that the tree does not have (yet): a
    /// file added under one is read with the tool's context only after a build.
    missing_roots: HashSet<String>,
}

impl Index {
    /// Indexes `files` (repository path → contents, the whole tree).
    pub fn build(files: &dyn Files, settings: &Settings) -> Index {
        let mut builder = Builder::new(files, settings);
        builder.run();
        builder.index
    }

    /// The document that declares `key`.
    pub fn lookup(&self, key: &Key) -> Lookup<'_> {
        let loose = (key.group.clone(), key.kind.clone(), key.name.clone());
        // Another cluster's documents are not this cluster's objects.
        fn ours(entries: Option<&Vec<Declared>>) -> Vec<&Declared> {
            entries.into_iter().flatten().filter(|d| d.ours).collect()
        }
        if key.namespace.is_some() {
            // A document no namespace was found for could be this one as well.
            // (Without allocating, for the one answer most lookups get.)
            fn all(entries: Option<&Vec<Declared>>) -> impl Iterator<Item = &Declared> {
                entries.into_iter().flatten().filter(|d| d.ours)
            }
            let mut exact = all(self.objects.get(key));
            let mut unplaced = all(self.unplaced.get(&loose));
            return match (exact.next(), exact.next(), unplaced.next()) {
                (Some(one), None, None) => Lookup::Found(one),
                (None, _, None) => Lookup::Missing,
                _ => Lookup::Ambiguous(
                    all(self.objects.get(key))
                        .chain(all(self.unplaced.get(&loose)))
                        .collect(),
                ),
            };
        }
        let exact = ours(self.objects.get(key));
        let unplaced = ours(self.unplaced.get(&loose));
        let (exact, unplaced) = (exact.as_slice(), unplaced.as_slice());
        // Cluster-scoped as the cluster says: a document of a kind whose scope only
        // the cluster knows (a ClusterIssuer) was indexed in whatever namespace its
        // kustomization or own metadata named, which the apiserver drops.
        let unknown = ours(self.unknown_scope.get(&loose));
        let mut candidates: Vec<&Declared> = exact.iter().chain(unplaced).copied().collect();
        for declared in unknown {
            if !candidates
                .iter()
                .any(|c| c.path == declared.path && c.document == declared.document)
            {
                candidates.push(declared);
            }
        }
        match candidates.as_slice() {
            [] => Lookup::Missing,
            [one] => Lookup::Found(one),
            _ => Lookup::Ambiguous(candidates),
        }
    }

    /// Brings the index up to date with `files` (the whole tree after a commit),
    /// where only `changed` paths (added, modified or removed) differ from the tree
    /// it was built of. A manifest's change re-reads that file alone; a change to
    /// what shapes the walk (see [`Upkeep`]) builds the index again.
    pub fn update(&mut self, files: &dyn Files, changed: &[String], settings: &Settings) {
        if self.needs_rebuild(files, changed) {
            *self = Index::build(files, settings);
            return;
        }
        let mut builder = Builder::resume(std::mem::take(self), files, settings);
        for path in changed {
            builder.forget(path);
        }
        for path in changed {
            if !files.contains(path) {
                continue;
            }
            for context in builder.contexts_for(path) {
                builder.visit_file(path, &context);
            }
        }
        for path in changed {
            builder.count_file(path);
        }
        *self = builder.index;
    }

    /// Whether `changed` paths change what shapes the walk (a kustomization, a chart,
    /// a patch or generator input, a GitOps tool's entry point), so that
    /// [`Index::update`] builds the index again rather than re-reading them.
    pub fn needs_rebuild(&self, files: &dyn Files, changed: &[String]) -> bool {
        let upkeep = &self.upkeep;
        changed.iter().any(|path| {
            let (_, name) = split(path);
            kustomize::FILE_NAMES.contains(&name)
                || name == "Chart.yaml"
                || upkeep.tools.contains(path)
                || upkeep.not_objects.contains(path)
                || upkeep
                    .missing_roots
                    .iter()
                    .any(|dir| dir.is_empty() || path.starts_with(&format!("{dir}/")))
                || files.read(path).is_some_and(|bytes| declares_tool(&bytes))
        })
    }

    /// How many objects the document at `path`, `document` declares.
    pub fn declarations(&self, path: &str, document: usize) -> usize {
        self.declarations
            .get(path)
            .and_then(|documents| documents.get(&document))
            .copied()
            .unwrap_or(0)
    }

    /// How many objects are indexed (each overlay's copy of a base counts).
    pub fn len(&self) -> usize {
        self.objects.values().map(Vec::len).sum::<usize>()
            + self.unplaced.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every indexed object, for tests and diagnostics.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.objects.keys()
    }

    /// Where a person would put a new object of `namespace`: the directory of the
    /// kustomization that sets that namespace (the one rendering most of its objects),
    /// else the directory holding most of the namespace's documents; `None` when the
    /// repository has no object in it. O(objects): asked only for a create.
    pub fn home(&self, namespace: &str) -> Option<Home> {
        let mut setting: BTreeMap<&str, usize> = BTreeMap::new();
        let mut holding: BTreeMap<(&str, Option<&str>), usize> = BTreeMap::new();
        for (key, entries) in &self.objects {
            if key.namespace.as_deref() != Some(namespace) {
                continue;
            }
            for declared in entries {
                // A file beside a renamed or shared document would be renamed or
                // shared too, and never found under the new object's name.
                if !declared.ours
                    || declared.elsewhere
                    || declared.affixed
                    || self.declarations(&declared.path, declared.document) > 1
                {
                    continue;
                }
                match &declared.namespace_from {
                    NamespaceFrom::Kustomization(dir) => *setting.entry(dir).or_default() += 1,
                    _ => {
                        let (dir, _) = split(&declared.path);
                        let lists = declared.through.last().map(String::as_str);
                        *holding.entry((dir, lists)).or_default() += 1;
                    }
                }
            }
        }
        // The most objects wins; among equals, the first by name, so the answer
        // does not change from run to run.
        fn most<K: Ord + Copy>(counts: &BTreeMap<K, usize>) -> Option<K> {
            counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(k, _)| *k)
        }
        if let Some(dir) = most(&setting) {
            return Some(Home {
                dir: dir.to_owned(),
                kustomization: Some(dir.to_owned()),
            });
        }
        most(&holding).map(|(dir, lists)| Home {
            dir: dir.to_owned(),
            kustomization: lists.map(str::to_owned),
        })
    }

    /// The files that declare objects matching `select` (by key), sorted, each once.
    /// O(objects): asked only for a namespace's or a definition's delete.
    pub fn files_declaring(&self, select: impl Fn(&Key, &Declared) -> bool) -> Vec<&str> {
        let mut files: Vec<&str> = self
            .objects
            .iter()
            .flat_map(|(key, entries)| entries.iter().map(move |d| (key, d)))
            .filter(|(key, d)| d.ours && select(key, d))
            .map(|(_, d)| d.path.as_str())
            .collect();
        files.sort_unstable();
        files.dedup();
        files
    }

    /// The other objects rendered through any of the kustomizations that
    /// transform `declared` (which the object `key` is).
    pub fn rendered_with(&self, key: &Key, declared: &Declared) -> Vec<(Key, Declared)> {
        self.objects
            .iter()
            .filter(|(other, _)| *other != key)
            .flat_map(|(other, entries)| entries.iter().map(move |d| (other, d)))
            .filter(|(_, d)| {
                d.transformed_by
                    .iter()
                    .any(|t| declared.transformed_by.contains(t))
            })
            .map(|(other, d)| (other.clone(), d.clone()))
            .collect()
    }

    /// The kustomization file whose generator makes `key` (a ConfigMap or Secret
    /// named `<name>-<hash>`, or just `<name>` without the hash).
    pub fn generated_by(&self, key: &Key) -> Option<&str> {
        if !key.group.is_empty() {
            return None;
        }
        // kustomize appends `-` and a 10-character hash of the content.
        let unhashed = key
            .name
            .rsplit_once('-')
            .filter(|(_, hash)| hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric()))
            .map(|(name, _)| name);
        [Some(key.name.as_str()), unhashed]
            .into_iter()
            .flatten()
            .flat_map(|name| {
                [key.namespace.clone(), None]
                    .into_iter()
                    .map(move |ns| (key.kind.clone(), ns, name.to_owned()))
            })
            .find_map(|slot| self.generated.get(&slot))
            .map(String::as_str)
    }
}

/// The transformations a resource is reached with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Context {
    /// Set by an outer kustomization or a Flux `targetNamespace`: wins over all.
    namespace: Option<(String, NamespaceFrom)>,
    /// An Argo CD destination: for documents without a namespace.
    fallback: Option<(String, NamespaceFrom)>,
    prefix: String,
    suffix: String,
    through: Vec<String>,
    transformed_by: Vec<String>,
    /// A plain directory renders only its own files (an Argo CD directory app
    /// without `recurse`), not its subdirectories'.
    flat: bool,
    /// Reached from this cluster's entry points (see [`Settings::cluster`]).
    ours: bool,
}

impl Context {
    /// A root of this cluster's.
    fn ours() -> Context {
        Context {
            ours: true,
            ..Context::default()
        }
    }
}

/// How deep kustomizations may nest before a chain is taken for a cycle.
const MAX_DEPTH: usize = 32;

/// How many directories one build visits at most: overlays over shared bases visit a
/// base once per overlay, which real trees keep small; a tree built to multiply
/// visits stops here.
const MAX_VISITS: usize = 1_000_000;

struct Builder<'a> {
    files: &'a dyn Files,
    settings: &'a Settings,
    kustomizations: HashMap<String, Kustomization>,
    /// Directories of Helm charts: nothing under them is a manifest.
    charts: HashSet<String>,
    /// Directory visits left before a pathological tree is taken for a loop.
    budget: usize,
    not_objects: HashSet<String>,
    documents: HashMap<String, Vec<Value>>,
    reached: HashSet<String>,
    index: Index,
}

impl<'a> Builder<'a> {
    fn new(files: &'a dyn Files, settings: &'a Settings) -> Self {
        let mut charts = HashSet::new();
        let mut kustomizations = HashMap::new();
        for path in files.paths_from("") {
            let (dir, name) = split(path);
            if name == "Chart.yaml" {
                charts.insert(dir.to_owned());
            }
            let rank = kustomize::FILE_NAMES.iter().position(|n| *n == name);
            if let Some(rank) = rank {
                // The first of kustomize's names wins when a directory has several.
                let better = kustomize::FILE_NAMES[..rank]
                    .iter()
                    .all(|n| !files.contains(&joined(dir, n)));
                let bytes = files.read(path).unwrap_or_default();
                if better {
                    let k = Kustomization::parse(dir, &bytes).unwrap_or_else(|| {
                        // It still governs its directory: kustomize renders nothing
                        // from it, so its patches must not become objects.
                        tracing::warn!(path = %path, "a kustomization that is not a YAML mapping; nothing it governs is indexed");
                        Kustomization::default()
                    });
                    kustomizations.insert(dir.to_owned(), k);
                }
            }
        }
        kustomizations.retain(|dir, _| !in_chart(dir, &charts));
        let not_objects = kustomizations
            .values()
            .flat_map(|k| k.not_objects.iter().cloned())
            .collect();
        Self {
            files,
            settings,
            kustomizations,
            charts,
            budget: MAX_VISITS,
            not_objects,
            documents: HashMap::new(),
            reached: HashSet::new(),
            index: Index::default(),
        }
    }

    /// A builder that continues `index` (for [`Index::update`]).
    fn resume(index: Index, files: &'a dyn Files, settings: &'a Settings) -> Self {
        Self {
            files,
            settings,
            // Only which directories have one matters from here.
            kustomizations: index
                .upkeep
                .kustomizations
                .iter()
                .map(|dir| (dir.clone(), Kustomization::default()))
                .collect(),
            charts: index.upkeep.charts.clone(),
            budget: MAX_VISITS,
            not_objects: index.upkeep.not_objects.clone(),
            documents: HashMap::new(),
            reached: HashSet::new(),
            index,
        }
    }

    /// Drops everything `path` declared.
    fn forget(&mut self, path: &str) {
        let keep = |declared: &Declared| declared.path != path;
        let index = &mut self.index;
        for slot in index.by_file.remove(path).unwrap_or_default() {
            match slot {
                Slot::Object(key) => {
                    if let Some(entries) = index.objects.get_mut(&key) {
                        entries.retain(keep);
                        if entries.is_empty() {
                            index.objects.remove(&key);
                        }
                    }
                }
                Slot::Unplaced(loose) | Slot::UnknownScope(loose) => {
                    for map in [&mut index.unplaced, &mut index.unknown_scope] {
                        if let Some(entries) = map.get_mut(&loose) {
                            entries.retain(keep);
                            if entries.is_empty() {
                                map.remove(&loose);
                            }
                        }
                    }
                }
            }
        }
        index.declarations.remove(path);
    }

    /// The contexts a manifest at `path` is read with: those it was read with, else
    /// those of a plain directory rendered whole above it, else (no kustomization
    /// governs it) as it is.
    fn contexts_for(&self, path: &str) -> Vec<Context> {
        if let Some(contexts) = self.index.upkeep.contexts.get(path) {
            return contexts.clone();
        }
        if !self.is_manifest(path) || self.not_objects.contains(path) {
            return Vec::new();
        }
        let (parent, _) = split(path);
        let walked: Vec<Context> = self
            .index
            .upkeep
            .walks
            .iter()
            .filter(|(dir, context)| {
                let under = dir.is_empty() || path.starts_with(&format!("{dir}/"));
                under
                    && (!context.flat || parent == dir)
                    && self.nearest_kustomization(parent, dir).is_none()
            })
            .map(|(_, context)| context.clone())
            .collect();
        if !walked.is_empty() {
            return walked;
        }
        if self.governed(path) {
            Vec::new()
        } else {
            vec![self.outside()]
        }
    }

    fn count_declarations(&mut self) {
        let paths: Vec<String> = self.index.by_file.keys().cloned().collect();
        for path in paths {
            self.count_file(&path);
        }
    }

    /// How many objects each document of `path` declares, from its own entries.
    fn count_file(&mut self, path: &str) {
        let index = &mut self.index;
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for slot in index.by_file.get(path).into_iter().flatten() {
            let entries = match slot {
                Slot::Object(key) => index.objects.get(key),
                Slot::Unplaced(loose) => index.unplaced.get(loose),
                // The same documents as in the other two.
                Slot::UnknownScope(_) => None,
            };
            for declared in entries.into_iter().flatten().filter(|d| d.path == path) {
                *counts.entry(declared.document).or_default() += 1;
            }
        }
        if counts.is_empty() {
            index.declarations.remove(path);
        } else {
            index.declarations.insert(path.to_owned(), counts);
        }
    }

    /// The context of what no GitOps entry point reaches: this cluster's unless a
    /// cluster is named.
    fn outside(&self) -> Context {
        Context {
            ours: self.settings.cluster.is_none(),
            ..Context::default()
        }
    }

    fn run(&mut self) {
        let manifests: Vec<String> = self
            .files
            .paths_from("")
            .filter(|p| self.is_manifest(p))
            .map(str::to_owned)
            .collect();
        let artifacts = self.artifacts(&manifests);
        // The GitOps tools' own entry points first: they set namespaces.
        match self.settings.cluster.clone() {
            None => {
                for (dir, context) in self.tool_roots(&manifests, &artifacts, true) {
                    self.visit_dir(&dir, &context);
                }
            }
            Some(cluster) => {
                // `./clusters/prod`, as `flux bootstrap --path` is often written.
                let cluster = kustomize::join("", &cluster).unwrap_or(cluster);
                if !self.has_dir(&cluster) {
                    tracing::warn!(
                        cluster,
                        "inPlace.cluster is not a directory of the branch: no object is this cluster's, so none is edited in place"
                    );
                }
                // This cluster's: the entry points in its directory, those in what
                // they reach (an app of apps, a Kustomization of Kustomizations), and
                // the directory itself.
                let prefix = format!("{cluster}/");
                let mut used: HashSet<String> = HashSet::new();
                loop {
                    let upkeep = &self.index.upkeep;
                    let next: Vec<String> = manifests
                        .iter()
                        .filter(|p| !used.contains(*p))
                        .filter(|p| {
                            p.starts_with(&prefix)
                                || upkeep
                                    .contexts
                                    .get(*p)
                                    .is_some_and(|cs| cs.iter().any(|c| c.ours))
                        })
                        .cloned()
                        .collect();
                    if next.is_empty() {
                        break;
                    }
                    used.extend(next.iter().cloned());
                    for (dir, context) in self.tool_roots(&next, &artifacts, true) {
                        self.visit_dir(&dir, &context);
                    }
                    if !self.reached.contains(&cluster) && self.has_dir(&cluster) {
                        self.visit_dir(&cluster, &Context::ours());
                    }
                }
                // Then the rest of the repository, as elsewhere's, so a document
                // this cluster shares with others is known to be shared.
                let rest: Vec<String> = manifests
                    .iter()
                    .filter(|p| !used.contains(*p))
                    .cloned()
                    .collect();
                for (dir, context) in self.tool_roots(&rest, &artifacts, false) {
                    self.visit_dir(&dir, &context);
                }
            }
        }
        // Then every kustomization no other one lists.
        let listed: HashSet<String> = self
            .kustomizations
            .values()
            .flat_map(|k| k.resources.iter().cloned())
            .collect();
        let mut roots: Vec<String> = self
            .kustomizations
            .keys()
            .filter(|dir| !listed.contains(*dir))
            .cloned()
            .collect();
        roots.sort();
        for dir in roots {
            if !self.reached.contains(&dir) {
                self.visit_dir(&dir, &self.outside());
            }
        }
        // Kustomizations that only list each other (a cycle) have no root: each is
        // one, once.
        let mut unreached: Vec<String> = self
            .kustomizations
            .keys()
            .filter(|dir| !self.reached.contains(*dir))
            .cloned()
            .collect();
        unreached.sort();
        for dir in unreached {
            if !self.reached.contains(&dir) {
                self.visit_dir(&dir, &self.outside());
            }
        }
        // Then manifests no kustomization governs (applied as they are).
        let loose: Vec<String> = self
            .files
            .paths_from("")
            .filter(|path| self.is_manifest(path) && !self.not_objects.contains(*path))
            .filter(|path| !self.reached.contains(*path) && !self.governed(path))
            .map(str::to_owned)
            .collect();
        for path in loose {
            self.visit_file(&path, &self.outside());
        }
        self.count_declarations();
        self.index.upkeep.kustomizations = self.kustomizations.keys().cloned().collect();
        self.index.upkeep.charts = self.charts.clone();
        self.index.upkeep.not_objects = self.not_objects.clone();
    }

    /// What Flux's ArtifactGenerators in `paths` copy out of this repository: by
    /// artifact name, the generator's file and each copy's repository directory
    /// and its directory in the artifact (`@monorepo/apps/base/**` to
    /// `@artifact/base/`: `apps/base`, `base`).
    fn artifacts(&mut self, paths: &[String]) -> Artifacts {
        let mut artifacts = Artifacts::default();
        // Flux's Git sources first: a generator's or a Kustomization's source is
        // this repository unless the repository's own GitRepository says otherwise.
        for path in paths {
            for document in self.of_kinds(path, &[("source.toolkit.fluxcd.io", "GitRepository")]) {
                if group_kind(&document).is_some_and(|(group, kind)| {
                    group == "source.toolkit.fluxcd.io" && kind == "GitRepository"
                }) {
                    let text = |p: &str| document.pointer(p).and_then(Value::as_str);
                    let ours =
                        same_repository(self.settings, text("/spec/url"), text("/spec/ref/branch"));
                    artifacts.git.insert(
                        (
                            text("/metadata/namespace")
                                .unwrap_or("flux-system")
                                .to_owned(),
                            text("/metadata/name").unwrap_or_default().to_owned(),
                        ),
                        ours,
                    );
                }
            }
        }
        for path in paths {
            for document in self.of_kinds(
                path,
                &[("source.extensions.fluxcd.io", "ArtifactGenerator")],
            ) {
                if group_kind(&document).is_none_or(|(group, kind)| {
                    group != "source.extensions.fluxcd.io" || kind != "ArtifactGenerator"
                }) {
                    continue;
                }
                let namespace = document
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("flux-system");
                self.index.upkeep.tools.insert(path.clone());
                // Aliases of Git sources: this repository (as with Kustomizations).
                let git: Vec<&str> = document
                    .pointer("/spec/sources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|s| s.get("kind").and_then(Value::as_str) == Some("GitRepository"))
                    .filter(|s| {
                        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
                        let ns = s
                            .get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or(namespace);
                        artifacts.is_ours(ns, name)
                    })
                    .filter_map(|s| s.get("alias").and_then(Value::as_str))
                    .collect();
                for artifact in document
                    .pointer("/spec/artifacts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(name) = artifact.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    for copy in artifact
                        .get("copy")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let text = |k: &str| copy.get(k).and_then(Value::as_str);
                        let (Some(from), Some(to)) = (text("from"), text("to")) else {
                            continue;
                        };
                        // A whole directory (`/**`) of a Git source; a pattern of
                        // single files is not a directory to render.
                        let Some((alias, from)) = from
                            .strip_prefix('@')
                            .and_then(|f| f.strip_suffix("/**"))
                            .and_then(|f| f.split_once('/').or(Some((f, ""))))
                        else {
                            continue;
                        };
                        let to = if to == "@artifact" {
                            Some("")
                        } else {
                            to.strip_prefix("@artifact/")
                        };
                        let (Some(to), Some(from)) = (
                            to.and_then(|to| kustomize::join("", to)),
                            kustomize::join("", from),
                        ) else {
                            continue;
                        };
                        if git.contains(&alias) && !from.contains(['*', '?', '[']) {
                            artifacts.copies.entry(name.to_owned()).or_default().push(
                                ArtifactCopy {
                                    generator: path.clone(),
                                    from,
                                    to,
                                },
                            );
                        }
                    }
                }
            }
        }
        artifacts
    }

    /// The directories the Flux Kustomizations and Argo CD Applications in `paths`
    /// point at, with the namespace each gives; `ours` for this cluster's.
    fn tool_roots(
        &mut self,
        paths: &[String],
        artifacts: &Artifacts,
        ours: bool,
    ) -> Vec<(String, Context)> {
        let mut roots = Vec::new();
        for path in paths {
            for document in self.of_kinds(
                path,
                &[
                    ("kustomize.toolkit.fluxcd.io", "Kustomization"),
                    ("argoproj.io", "Application"),
                ],
            ) {
                let Some((group, kind)) = group_kind(&document) else {
                    continue;
                };
                let meta = |key: &str| {
                    document
                        .pointer(&format!("/metadata/{key}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let spec = |pointer: &str| {
                    document
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                };
                let who = format!("{}/{}", meta("namespace"), meta("name"));
                if is_tool(&group, &kind) {
                    self.index.upkeep.tools.insert(path.to_owned());
                }
                let (dir, mut context) = match (group.as_str(), kind.as_str()) {
                    ("kustomize.toolkit.fluxcd.io", "Kustomization") => {
                        // Only a Git source can be this repository, or an artifact
                        // Flux's ArtifactGenerator copies out of it; an OCI artifact
                        // has its own tree.
                        let within = spec("/spec/path").and_then(|p| kustomize::join("", &p));
                        let source = (
                            spec("/spec/sourceRef/namespace").unwrap_or_else(|| meta("namespace")),
                            spec("/spec/sourceRef/name").unwrap_or_default(),
                        );
                        let dir = match spec("/spec/sourceRef/kind").as_deref() {
                            None | Some("GitRepository")
                                if artifacts.is_ours(&source.0, &source.1) =>
                            {
                                within
                            }
                            None | Some("GitRepository") => None,
                            Some("ExternalArtifact") => within.and_then(|within| {
                                let name = spec("/spec/sourceRef/name")?;
                                // Clusters reuse artifact names: the generator
                                // nearest this file first.
                                let mut copies: Vec<&ArtifactCopy> =
                                    artifacts.copies.get(&name)?.iter().collect();
                                copies.sort_by_key(|c| {
                                    std::cmp::Reverse(common_dirs(&c.generator, path))
                                });
                                copies
                                    .into_iter()
                                    .filter_map(|c| unpack(&c.from, &c.to, &within))
                                    .find(|dir| self.has_dir(dir))
                            }),
                            Some(_) => None,
                        };
                        let Some(dir) = dir else {
                            continue;
                        };
                        let namespace = spec("/spec/targetNamespace")
                            .map(|ns| (ns, NamespaceFrom::Flux(who.clone())));
                        // Flux's own patches, images, components and variable
                        // substitution change what the files say on the way.
                        let transforms = ["patches", "images", "components", "postBuild"]
                            .iter()
                            .any(|key| {
                                document
                                    .pointer(&format!("/spec/{key}"))
                                    .is_some_and(|v| !v.is_null())
                            });
                        (
                            dir,
                            Context {
                                namespace,
                                prefix: spec("/spec/namePrefix").unwrap_or_default(),
                                suffix: spec("/spec/nameSuffix").unwrap_or_default(),
                                transformed_by: if transforms {
                                    vec![path.to_owned()]
                                } else {
                                    Vec::new()
                                },
                                ..Context::default()
                            },
                        )
                    }
                    ("argoproj.io", "Application") => {
                        // Another repository's path, or another branch's, is not
                        // this tree's.
                        let revision = spec("/spec/source/targetRevision").filter(|r| r != "HEAD");
                        if !same_repository(
                            self.settings,
                            spec("/spec/source/repoURL").as_deref(),
                            revision.as_deref(),
                        ) {
                            continue;
                        }
                        let Some(dir) =
                            spec("/spec/source/path").and_then(|p| kustomize::join("", &p))
                        else {
                            continue;
                        };
                        let fallback = spec("/spec/destination/namespace")
                            .map(|ns| (ns, NamespaceFrom::ArgoCd(who.clone())));
                        // A directory app reads subdirectories only when told to.
                        let recurse = document
                            .pointer("/spec/source/directory/recurse")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        (
                            dir,
                            Context {
                                fallback,
                                flat: !recurse,
                                ..Context::default()
                            },
                        )
                    }
                    _ => continue,
                };
                context.ours = ours;
                if self.has_dir(&dir) {
                    roots.push((dir, context));
                } else {
                    self.index.upkeep.missing_roots.insert(dir);
                }
            }
        }
        roots
    }

    /// A directory as a resource: its kustomization, or (none there) every manifest
    /// under it, as Flux generates one, a nested kustomization as one resource.
    fn visit_dir(&mut self, dir: &str, context: &Context) {
        if context.through.len() >= MAX_DEPTH || context.through.iter().any(|d| d == dir) {
            tracing::warn!(
                dir,
                "kustomizations list each other in a cycle; not followed"
            );
            return;
        }
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        if self.budget == 0 {
            tracing::warn!(dir, "kustomizations list each other too many times over; the index stops following them");
        }
        self.reached.insert(dir.to_owned());
        if let Some(k) = self.kustomizations.get(dir).cloned() {
            let mut inner = context.clone();
            inner.flat = false;
            if inner.namespace.is_none() {
                inner.namespace = k
                    .namespace
                    .clone()
                    .map(|ns| (ns, NamespaceFrom::Kustomization(dir.to_owned())));
            }
            // An outer prefix goes in front of an inner one, an outer suffix after.
            inner.prefix = format!("{}{}", context.prefix, k.name_prefix);
            inner.suffix = format!("{}{}", k.name_suffix, context.suffix);
            inner.through.push(dir.to_owned());
            if k.transforms {
                inner.transformed_by.push(dir.to_owned());
            }
            for (kind, name) in &k.generated {
                let namespace = inner.namespace.as_ref().map(|(ns, _)| ns.clone());
                let file = self
                    .kustomization_path(dir)
                    .unwrap_or_else(|| joined(dir, kustomize::FILE_NAMES[0]));
                self.index.generated.insert(
                    (
                        kind.clone(),
                        namespace,
                        format!("{}{name}{}", inner.prefix, inner.suffix),
                    ),
                    file,
                );
            }
            for resource in &k.resources {
                if self.files.contains(resource) {
                    self.visit_file(resource, &inner);
                } else if self.has_dir(resource) {
                    self.visit_dir(resource, &inner);
                }
            }
            return;
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let under: Vec<String> = self
            .files
            .paths_from(&prefix)
            .take_while(|p| p.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        self.index
            .upkeep
            .walks
            .push((dir.to_owned(), context.clone()));
        let mut nested = std::collections::BTreeSet::new();
        for path in under {
            let (parent, _) = split(&path);
            if context.flat && parent != dir {
                continue;
            }
            if let Some(k_dir) = self.nearest_kustomization(parent, dir) {
                nested.insert(k_dir);
                continue;
            }
            if self.is_manifest(&path) && !self.not_objects.contains(&path) {
                self.visit_file(&path, context);
            }
        }
        for k_dir in nested {
            self.visit_dir(&k_dir, context);
        }
    }

    /// The outermost directory from below `top` down to `dir` that has a
    /// kustomization.
    fn nearest_kustomization(&self, dir: &str, top: &str) -> Option<String> {
        let mut at = dir.to_owned();
        let mut found = None;
        while at.len() > top.len() {
            if self.kustomizations.contains_key(&at) {
                found = Some(at.clone());
            }
            at = split(&at).0.to_owned();
        }
        found
    }

    fn visit_file(&mut self, path: &str, context: &Context) {
        if !self.is_manifest(path) {
            return;
        }
        self.reached.insert(path.to_owned());
        let contexts = self
            .index
            .upkeep
            .contexts
            .entry(path.to_owned())
            .or_default();
        if !contexts.contains(context) {
            contexts.push(context.clone());
        }
        let documents = self.parsed(path).to_vec();
        for (position, document) in documents.iter().enumerate() {
            let Some((group, kind)) = group_kind(document) else {
                continue;
            };
            let Some(name) = document
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            let (_, namespaced) = crate::kinds::resource_of(&group, &kind);
            let own = document
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .map(|ns| (ns.to_owned(), NamespaceFrom::Document));
            let (namespace, namespace_from) = if !namespaced {
                (None, NamespaceFrom::Cluster)
            } else {
                match context
                    .namespace
                    .clone()
                    .or(own)
                    .or_else(|| context.fallback.clone())
                    .or_else(|| self.mapped(path))
                {
                    Some((ns, from)) => (Some(ns), from),
                    None => (None, NamespaceFrom::Unknown),
                }
            };
            let written_name = name.to_owned();
            let name = if group.is_empty() && kind == "Namespace" {
                // kustomize's `namespace:` (and Flux's `targetNamespace`) rename a
                // Namespace object to it; prefixes leave it alone (kustomize 3.8).
                context
                    .namespace
                    .as_ref()
                    .map_or_else(|| name.to_owned(), |(ns, _)| ns.clone())
            } else if kind == "CustomResourceDefinition" || kind == "APIService" {
                // Their names are `<plural>.<group>` and `<version>.<group>`.
                name.to_owned()
            } else {
                format!("{}{name}{}", context.prefix, context.suffix)
            };
            let declared = Declared {
                path: path.to_owned(),
                document: position,
                through: context.through.clone(),
                transformed_by: context.transformed_by.clone(),
                affixed: !context.prefix.is_empty() || !context.suffix.is_empty(),
                written_name,
                namespace_from: namespace_from.clone(),
                several_routes: false,
                ours: context.ours,
                elsewhere: false,
            };
            // Only the cluster knows the scope of a kind from a CRD: keep it findable
            // as cluster-scoped too.
            if crate::kinds::custom_group(&group) {
                let loose = (group.clone(), kind.clone(), name.clone());
                self.declare(path, Slot::UnknownScope(loose), declared.clone());
            }
            let slot = if namespace_from == NamespaceFrom::Unknown {
                Slot::Unplaced((group, kind, name))
            } else {
                Slot::Object(Key {
                    group,
                    kind,
                    namespace,
                    name,
                })
            };
            self.declare(path, slot, declared);
        }
    }

    /// Adds `declared` to the entries of `slot` (once per document: the same
    /// document reached twice the same way declares it once), and notes where
    /// `path`'s entries are.
    fn declare(&mut self, path: &str, slot: Slot, declared: Declared) {
        let index = &mut self.index;
        let entries = match &slot {
            Slot::Object(key) => index.objects.entry(key.clone()).or_default(),
            Slot::Unplaced(loose) => index.unplaced.entry(loose.clone()).or_default(),
            Slot::UnknownScope(loose) => index.unknown_scope.entry(loose.clone()).or_default(),
        };
        match entries
            .iter_mut()
            .find(|d| d.path == declared.path && d.document == declared.document)
        {
            None => entries.push(declared),
            // Another cluster's rendering of this cluster's document, or the other
            // way round: this cluster's is the one to edit, and it is shared.
            Some(known) if known.ours != declared.ours => {
                if declared.ours {
                    let mut declared = declared;
                    declared.elsewhere = true;
                    *known = declared;
                } else {
                    known.elsewhere = true;
                }
            }
            // Reached again another way: what that way transforms counts too.
            Some(known)
                if known.through != declared.through
                    || known.transformed_by != declared.transformed_by =>
            {
                known.several_routes = true;
                for dir in declared.transformed_by {
                    if !known.transformed_by.contains(&dir) {
                        known.transformed_by.push(dir);
                    }
                }
            }
            Some(_) => {}
        }
        index
            .by_file
            .entry(path.to_owned())
            .or_default()
            .insert(slot);
    }

    /// The configured namespace of the directory holding `path`.
    fn mapped(&self, path: &str) -> Option<(String, NamespaceFrom)> {
        self.settings
            .directories
            .iter()
            .filter(|(dir, _)| dir.is_empty() || path.starts_with(&format!("{dir}/")))
            .max_by_key(|(dir, _)| dir.len())
            .map(|(dir, ns)| (ns.clone(), NamespaceFrom::Mapping(dir.clone())))
    }

    /// Whether a kustomization in the file's directory or above it decides whether
    /// it is rendered.
    fn governed(&self, path: &str) -> bool {
        let mut dir = split(path).0;
        loop {
            if self.kustomizations.contains_key(dir) {
                return true;
            }
            if dir.is_empty() {
                return false;
            }
            dir = split(dir).0;
        }
    }

    /// A YAML file that is not a kustomization and not in a Helm chart. (Whether a
    /// patch or generator input counts is the caller's: listed as a resource, it is
    /// one.)
    fn is_manifest(&self, path: &str) -> bool {
        let (dir, name) = split(path);
        (name.ends_with(".yaml") || name.ends_with(".yml"))
            && !kustomize::FILE_NAMES.contains(&name)
            && !in_chart(dir, &self.charts)
    }

    /// The kustomization file of `dir`, by kustomize's order of names.
    fn kustomization_path(&self, dir: &str) -> Option<String> {
        kustomize::FILE_NAMES
            .iter()
            .map(|name| joined(dir, name))
            .find(|path| self.files.contains(path))
    }

    fn has_dir(&self, dir: &str) -> bool {
        if dir.is_empty() {
            return self.files.paths_from("").next().is_some();
        }
        let prefix = format!("{dir}/");
        self.files
            .paths_from(&prefix)
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    }

    /// The documents of a manifest file, parsed once.
    /// The documents of `path` of these (group, kind)s, copied; the others are
    /// left where they are.
    fn of_kinds(&mut self, path: &str, kinds: &[(&str, &str)]) -> Vec<Value> {
        self.parsed(path)
            .iter()
            .filter(|d| {
                group_kind(d).is_some_and(|(group, kind)| {
                    kinds.iter().any(|(g, k)| *g == group && *k == kind)
                })
            })
            .cloned()
            .collect()
    }

    fn parsed(&mut self, path: &str) -> &[Value] {
        if !self.documents.contains_key(path) {
            let documents = self
                .files
                .read(path)
                .map(|bytes| documents(&bytes))
                .unwrap_or_default();
            self.documents.insert(path.to_owned(), documents);
        }
        &self.documents[path]
    }
}

/// Every document of a YAML file, `Null` for an empty one or one that is not JSON
/// (so positions stay those of the file). A file with a syntax error yields the
/// documents before it: the parser cannot tell where the next one starts (and its
/// iterator would repeat the error for ever).
pub(crate) fn documents(bytes: &[u8]) -> Vec<Value> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    let mut last_error = None;
    for document in serde_yaml_ng::Deserializer::from_slice(bytes) {
        match Value::deserialize(document) {
            Ok(value) => {
                last_error = None;
                documents.push(value);
            }
            Err(error) => {
                // A document that is YAML but not JSON (a custom tag) is skipped; a
                // syntax error comes back for ever, and ends the file.
                let text = error.to_string();
                if last_error.as_ref() == Some(&text) {
                    documents.pop();
                    tracing::debug!(%error, "a manifest that is not YAML; its later documents are not indexed");
                    break;
                }
                last_error = Some(text);
                documents.push(Value::Null);
            }
        }
    }
    documents
}

/// Whether a kind is a GitOps tool's entry point the index follows.
fn is_tool(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        ("kustomize.toolkit.fluxcd.io", "Kustomization")
            | ("argoproj.io", "Application")
            | ("source.extensions.fluxcd.io", "ArtifactGenerator")
    )
}

/// One copy of an ArtifactGenerator's artifact (see [`Builder::artifacts`]).
struct ArtifactCopy {
    /// The file of the generator.
    generator: String,
    from: String,
    to: String,
}

/// Flux's sources in the repository: the ArtifactGenerators' copies by artifact
/// name, and whether each GitRepository (by namespace and name) is this tree.
#[derive(Default)]
struct Artifacts {
    copies: HashMap<String, Vec<ArtifactCopy>>,
    git: HashMap<(String, String), bool>,
}

impl Artifacts {
    /// A GitRepository the repository does not declare is taken as this one
    /// (`flux bootstrap` makes `flux-system` outside it).
    fn is_ours(&self, namespace: &str, name: &str) -> bool {
        self.git
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or(true)
    }
}

/// Whether a source's URL and branch (or revision) can be this tree: each is
/// compared only when both sides are known.
fn same_repository(settings: &Settings, url: Option<&str>, branch: Option<&str>) -> bool {
    let url_matches = match (url, &settings.remote) {
        (Some(url), Some(remote)) => repository_url(url) == *remote,
        _ => true,
    };
    let branch_matches = match (branch, &settings.branch) {
        (Some(branch), Some(ours)) => branch == ours,
        _ => true,
    };
    url_matches && branch_matches
}

/// A repository URL as a comparable `host/path`: without scheme, user, `.git`,
/// or trailing `/`, an scp-like `git@host:org/repo` as `host/org/repo`.
pub fn repository_url(url: &str) -> String {
    let url = url.trim();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let rest = if url.contains("://") {
        rest.to_owned()
    } else {
        rest.replacen(':', "/", 1)
    };
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.to_ascii_lowercase()),
        None => rest.to_ascii_lowercase(),
    }
}

/// How many leading directories two paths share.
fn common_dirs(a: &str, b: &str) -> usize {
    let (a, _) = split(a);
    let (b, _) = split(b);
    a.split('/')
        .zip(b.split('/'))
        .take_while(|(x, y)| x == y && !x.is_empty())
        .count()
}

/// The repository directory of `path` in an artifact that has the repository's
/// directory `from` copied to its directory `to`.
fn unpack(from: &str, to: &str, path: &str) -> Option<String> {
    let rest = if to.is_empty() {
        path
    } else if path == to {
        ""
    } else {
        path.strip_prefix(to)?.strip_prefix('/')?
    };
    kustomize::join(from, rest)
}

/// Whether a file holds a GitOps tool's entry point (see [`is_tool`]).
fn declares_tool(bytes: &[u8]) -> bool {
    documents(bytes)
        .iter()
        .filter_map(group_kind)
        .any(|(group, kind)| is_tool(&group, &kind))
}

/// Which of a file's `documents` declares `key`, found by what it says rather than
/// by its position (a delete earlier in a batch shifts the documents after it): the
/// one of that group and kind whose own name is `written_name`; among several, the
/// one that names the object's namespace. `None` when no single document is it.
pub fn find_document(documents: &[Value], key: &Key, written_name: &str) -> Option<usize> {
    let candidates: Vec<usize> = documents
        .iter()
        .enumerate()
        .filter(|(_, d)| group_kind(d).is_some_and(|(g, k)| g == key.group && k == key.kind))
        .filter(|(_, d)| d.pointer("/metadata/name").and_then(Value::as_str) == Some(written_name))
        .map(|(at, _)| at)
        .collect();
    match candidates.as_slice() {
        [one] => Some(*one),
        [] => None,
        several => {
            let named: Vec<usize> = several
                .iter()
                .copied()
                .filter(|at| {
                    documents[*at]
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        == key.namespace.as_deref()
                })
                .collect();
            (named.len() == 1).then(|| named[0])
        }
    }
}

/// A document's API group and kind.
fn group_kind(document: &Value) -> Option<(String, String)> {
    let api_version = document.get("apiVersion")?.as_str()?;
    let kind = document.get("kind")?.as_str()?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    Some((group.to_owned(), kind.to_owned()))
}

/// `("a/b", "c.yaml")` for `a/b/c.yaml`; `("", "c.yaml")` at the root.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn joined(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `dir` is a Helm chart's directory or under one.
fn in_chart(dir: &str, charts: &HashSet<String>) -> bool {
    if charts.is_empty() {
        return false;
    }
    let mut at = dir;
    loop {
        if charts.contains(at) {
            return true;
        }
        if at.is_empty() {
            return false;
        }
        at = split(at).0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(p, t)| ((*p).to_owned(), t.as_bytes().to_vec()))
            .collect()
    }

    fn key(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Key {
        Key::new(group, kind, namespace, name)
    }

    fn found<'a>(index: &'a Index, k: &Key) -> &'a Declared {
        match index.lookup(k) {
            Lookup::Found(declared) => declared,
            other => panic!("{k:?}: {other:?}"),
        }
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n";

    #[test]
    fn kustomize_namespaces_and_affixes_follow_the_outermost_and_accumulate() {
        let files = tree(&[
            ("base/kustomization.yaml", "namespace: base-ns\nnamePrefix: b-\nresources:\n- deployment.yaml\n"),
            ("base/deployment.yaml", DEPLOYMENT),
            ("overlays/dev/kustomization.yaml", "namespace: dev\nnamePrefix: dev-\nnameSuffix: -x\nresources:\n- ../../base\n- ns.yaml\npatches:\n- path: patch.yaml\n"),
            ("overlays/dev/ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: dev\n"),
            ("overlays/dev/patch.yaml", DEPLOYMENT),
            ("overlays/dev/unlisted.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n"),
            ("overlays/prod/kustomization.yaml", "namespace: prod\nresources:\n- ../../base\n"),
        ]);
        let index = Index::build(&files, &Settings::default());
        let dev = found(
            &index,
            &key("apps", "Deployment", Some("dev"), "dev-b-web-x"),
        );
        assert_eq!(
            (dev.path.as_str(), dev.document),
            ("base/deployment.yaml", 0)
        );
        assert_eq!(dev.through, ["overlays/dev", "base"]);
        assert_eq!(
            dev.namespace_from,
            NamespaceFrom::Kustomization("overlays/dev".into())
        );
        found(&index, &key("apps", "Deployment", Some("prod"), "b-web"));
        // One document, two objects: an edit there changes both overlays.
        assert_eq!(index.declarations("base/deployment.yaml", 0), 2);
        // Cluster-scoped kinds get no namespace.
        found(&index, &key("", "Namespace", None, "dev"));
        // A patch, and a file the kustomization does not list, are not objects.
        assert_eq!(
            index.lookup(&key("apps", "Deployment", Some("dev"), "web")),
            Lookup::Missing
        );
        assert_eq!(
            index.lookup(&key("", "ConfigMap", Some("dev"), "stray")),
            Lookup::Missing
        );
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn flux_argo_and_mappings_place_documents_without_a_namespace() {
        let files = tree(&[
            ("clusters/prod/apps.yaml", "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n  namespace: flux-system\nspec:\n  path: ./apps\n  targetNamespace: shop\n---\napiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: tools\n  namespace: argocd\nspec:\n  source:\n    path: tools\n  destination:\n    namespace: tooling\n"),
            ("apps/web/deployment.yaml", DEPLOYMENT),
            ("tools/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: own\n"),
            ("loose/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n"),
            ("mapped/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: d\n"),
            ("charts/web/Chart.yaml", "apiVersion: v2\nname: web\n"),
            ("charts/web/templates/deployment.yaml", DEPLOYMENT),
        ]);
        let settings = Settings {
            directories: vec![("mapped".into(), "m".into())],
            ..Settings::default()
        };
        let index = Index::build(&files, &settings);
        let web = found(&index, &key("apps", "Deployment", Some("shop"), "web"));
        assert_eq!(
            web.namespace_from,
            NamespaceFrom::Flux("flux-system/apps".into())
        );
        assert_eq!(
            found(&index, &key("", "ConfigMap", Some("tooling"), "a")).namespace_from,
            NamespaceFrom::ArgoCd("argocd/tools".into())
        );
        // Argo CD does not override a namespace the document sets.
        found(&index, &key("", "ConfigMap", Some("own"), "b"));
        assert_eq!(
            found(&index, &key("", "ConfigMap", Some("m"), "d")).namespace_from,
            NamespaceFrom::Mapping("mapped".into())
        );
        // Nothing places `c`: in any namespace, it is only a guess.
        match index.lookup(&key("", "ConfigMap", Some("default"), "c")) {
            Lookup::Ambiguous(candidates) => assert_eq!(candidates[0].path, "loose/cm.yaml"),
            other => panic!("{other:?}"),
        }
        // A Helm chart's templates are not manifests.
        assert!(index
            .keys()
            .all(|k| k.name != "web" || k.namespace.as_deref() == Some("shop")));
        assert_eq!(
            index.declarations("charts/web/templates/deployment.yaml", 0),
            0
        );
    }

    #[test]
    fn an_object_two_documents_declare_is_ambiguous() {
        let files = tree(&[
            ("a/deployment.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n"),
            ("b/deployment.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n"),
        ]);
        let index = Index::build(&files, &Settings::default());
        match index.lookup(&key("apps", "Deployment", Some("shop"), "web")) {
            Lookup::Ambiguous(both) => assert_eq!(both.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_kustomize_and_flux_do_to_names_and_scopes() {
        let files = tree(&[
            // `namespace:` renames the Namespace object it lists.
            ("ns/kustomization.yaml", "namespace: foo\nresources:\n- namespace.yaml\n"),
            ("ns/namespace.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bar\n"),
            // A kind from a CRD: the kustomization's namespace is dropped by the
            // apiserver when the CRD says cluster-scoped.
            ("infra/kustomization.yaml", "namespace: cert-manager\nresources:\n- issuer.yaml\n"),
            ("infra/issuer.yaml", "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata:\n  name: letsencrypt\n"),
            // A file one kustomization patches with and another lists is an object
            // where it is listed.
            ("a/kustomization.yaml", "resources:\n- ../shared/cm.yaml\n"),
            ("b/kustomization.yaml", "resources:\n- ../a\npatches:\n- path: ../shared/cm.yaml\n"),
            ("shared/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: x\n"),
            // A kustomization that is not a mapping still governs its directory.
            ("broken/kustomization.yaml", "- not\n- a mapping\n"),
            ("broken/patch.yaml", DEPLOYMENT),
            // A Flux Kustomization of an OCI source points into another tree, and an
            // Argo CD directory app reads its subdirectories only with `recurse`.
            ("clusters/apps.yaml", "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: oci\n  namespace: flux-system\nspec:\n  sourceRef:\n    kind: OCIRepository\n    name: x\n  path: ./\n  targetNamespace: everything\n---\napiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: flat\n  namespace: argocd\nspec:\n  source:\n    path: flat\n  destination:\n    namespace: flat-ns\n"),
            ("flat/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: top\n"),
            ("flat/sub/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: deep\n"),
        ]);
        let index = Index::build(&files, &Settings::default());
        found(&index, &key("", "Namespace", None, "foo"));
        assert_eq!(
            index.lookup(&key("", "Namespace", None, "bar")),
            Lookup::Missing
        );
        assert_eq!(
            found(
                &index,
                &key("cert-manager.io", "ClusterIssuer", None, "letsencrypt")
            )
            .path,
            "infra/issuer.yaml"
        );
        found(&index, &key("", "ConfigMap", Some("x"), "shared"));
        assert_eq!(index.declarations("broken/patch.yaml", 0), 0);
        found(&index, &key("", "ConfigMap", Some("flat-ns"), "top"));
        assert!(matches!(
            index.lookup(&key("", "ConfigMap", Some("flat-ns"), "deep")),
            Lookup::Ambiguous(_)
        ));
        assert!(index
            .keys()
            .all(|k| k.namespace.as_deref() != Some("everything")));
    }

    #[test]
    fn a_document_that_is_yaml_but_not_json_keeps_the_positions_of_the_rest() {
        let files = tree(&[(
            "a/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: x\n---\n? [not, a, string]\n: key\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: x\n",
        )]);
        let index = Index::build(&files, &Settings::default());
        assert_eq!(
            found(&index, &key("", "ConfigMap", Some("x"), "b")).document,
            2
        );
    }

    #[test]
    fn a_syntax_error_ends_a_file_s_documents_and_never_the_build() {
        let files = tree(&[
            (
                "a/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: x\n---\nkey: [unclosed\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: x\n",
            ),
            // A Helm template outside a chart directory: not JSON, skipped.
            (
                "b/cm.yaml",
                "key: {{ .Values.broken }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: x\n",
            ),
        ]);
        let index = Index::build(&files, &Settings::default());
        found(&index, &key("", "ConfigMap", Some("x"), "a"));
        assert_eq!(
            index.lookup(&key("", "ConfigMap", Some("x"), "b")),
            Lookup::Missing
        );
        assert_eq!(
            found(&index, &key("", "ConfigMap", Some("x"), "c")).document,
            1
        );
        assert_eq!(index.len(), 2);
    }

    /// Everything an index answers, in a comparable form.
    fn answers(index: &Index) -> Vec<String> {
        let mut all: Vec<String> = index
            .objects
            .iter()
            .map(|(k, v)| format!("{k:?} {v:?}"))
            .chain(
                index
                    .unplaced
                    .iter()
                    .map(|(k, v)| format!("unplaced {k:?} {v:?}")),
            )
            .chain(
                index
                    .unknown_scope
                    .iter()
                    .map(|(k, v)| format!("unknown {k:?} {v:?}")),
            )
            .chain(index.declarations.iter().flat_map(|(path, documents)| {
                documents
                    .iter()
                    .map(move |(d, n)| format!("count {path} {d} {n}"))
            }))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_file_in_a_directory_a_tool_points_at_before_it_exists_is_read_with_its_context() {
        let before = tree(&[(
            "clusters/prod.yaml",
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n  namespace: flux-system\nspec:\n  path: ./apps\n  targetNamespace: apps\n",
        )]);
        let settings = Settings::default();
        let mut index = Index::build(&before, &settings);
        let mut after = before.clone();
        after.insert(
            "apps/web.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n".to_vec(),
        );
        let changed = vec!["apps/web.yaml".to_owned()];
        assert!(index.needs_rebuild(&after, &changed));
        index.update(&after, &changed, &settings);
        found(&index, &key("", "ConfigMap", Some("apps"), "web"));
    }

    #[test]
    fn an_update_answers_as_a_fresh_build_of_the_new_tree() {
        let before = tree(&[
            ("base/kustomization.yaml", "namespace: shop\nresources:\n- deployment.yaml\n"),
            ("base/deployment.yaml", DEPLOYMENT),
            ("overlays/dev/kustomization.yaml", "namespace: dev\nresources:\n- ../../base\n"),
            ("clusters/prod.yaml", "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n  namespace: flux-system\nspec:\n  path: ./apps\n  targetNamespace: apps\n"),
            ("apps/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"),
            ("loose/b.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: x\n"),
        ]);
        let settings = Settings::default();
        let mut index = Index::build(&before, &settings);
        let mut after = before.clone();
        // A base renamed, a file added where Flux renders a whole directory, one in
        // a directory a kustomization governs (not listed: not an object), a loose
        // file removed and another added.
        after.insert(
            "base/deployment.yaml".into(),
            DEPLOYMENT.replace("web", "api").into_bytes(),
        );
        after.insert(
            "apps/sub/c.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n".to_vec(),
        );
        after.insert(
            "base/stray.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n".to_vec(),
        );
        after.remove("loose/b.yaml");
        after.insert(
            "loose/d.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: d\n  namespace: x\n".to_vec(),
        );
        let changed: Vec<String> = [
            "base/deployment.yaml",
            "apps/sub/c.yaml",
            "base/stray.yaml",
            "loose/b.yaml",
            "loose/d.yaml",
        ]
        .map(String::from)
        .to_vec();
        index.update(&after, &changed, &settings);
        assert_eq!(answers(&index), answers(&Index::build(&after, &settings)));
        found(&index, &key("apps", "Deployment", Some("dev"), "api"));
        found(&index, &key("", "ConfigMap", Some("apps"), "c"));
        assert_eq!(
            index.lookup(&key("", "ConfigMap", Some("x"), "b")),
            Lookup::Missing
        );

        // A change to what shapes the walk builds again.
        let mut reshaped = after.clone();
        reshaped.insert(
            "overlays/dev/kustomization.yaml".into(),
            b"namespace: development\nresources:\n- ../../base\n".to_vec(),
        );
        index.update(
            &reshaped,
            &["overlays/dev/kustomization.yaml".to_owned()],
            &settings,
        );
        assert_eq!(
            answers(&index),
            answers(&Index::build(&reshaped, &settings))
        );
        found(
            &index,
            &key("apps", "Deployment", Some("development"), "api"),
        );
    }

    #[test]
    fn kustomizations_that_list_each_other_end() {
        let files = tree(&[
            ("a/kustomization.yaml", "resources:\n- ../b\n- cm.yaml\n"),
            (
                "a/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: x\n",
            ),
            ("b/kustomization.yaml", "resources:\n- ../a\n"),
        ]);
        let index = Index::build(&files, &Settings::default());
        found(&index, &key("", "ConfigMap", Some("x"), "a"));
    }

    #[test]
    fn a_cluster_s_objects_are_what_its_entry_points_reach_however_deep() {
        let flux = |name: &str, path: &str, source: &str| {
            format!(
                "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: {name}\n  namespace: flux-system\nspec:\n  path: {path}\n  sourceRef:\n    kind: {source}\n    name: {name}\n"
            )
        };
        let generator = "apiVersion: source.extensions.fluxcd.io/v1beta1\nkind: ArtifactGenerator\nmetadata:\n  name: g\n  namespace: flux-system\nspec:\n  sources:\n  - alias: repo\n    kind: GitRepository\n    name: flux-system\n  artifacts:\n  - name: apps\n    copy:\n    - from: \"@repo/./apps/prod/**\"\n      to: \"@artifact/prod/\"\n";
        let configmap = |name: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: web\n"
            )
        };
        let (apps, extra, staging) = (
            flux("apps", "./prod", "ExternalArtifact"),
            flux("extra", "./apps/extra", "GitRepository"),
            flux("apps", "./apps/prod", "GitRepository"),
        );
        let (web, more) = (configmap("web"), configmap("more"));
        let files = [
            ("clusters/prod/apps.yaml", apps.as_str()),
            ("clusters/prod/artifacts.yaml", generator),
            // A Kustomization of Kustomizations: what it reaches is prod's too.
            ("apps/prod/extra.yaml", extra.as_str()),
            ("apps/prod/web.yaml", web.as_str()),
            ("apps/extra/more.yaml", more.as_str()),
            ("clusters/staging/apps.yaml", staging.as_str()),
        ];
        let settings = Settings {
            cluster: Some("./clusters/prod".to_owned()),
            ..Settings::default()
        };
        let index = Index::build(&tree(&files), &settings);
        for name in ["web", "more"] {
            match index.lookup(&Key::new("", "ConfigMap", Some("web"), name)) {
                Lookup::Found(declared) => {
                    assert!(declared.ours, "{name}");
                    // staging renders apps/prod too.
                    assert_eq!(declared.elsewhere, name == "web", "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            unpack("apps/prod", "prod", "prod/sub").as_deref(),
            Some("apps/prod/sub")
        );
        assert_eq!(unpack("apps", "", "prod").as_deref(), Some("apps/prod"));
        assert_eq!(unpack("apps/prod", "prod", "production"), None);
    }

    #[test]
    fn another_repository_s_or_branch_s_paths_are_not_this_tree_s() {
        let files = [
            (
                "tenants/team.yaml",
                "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata:\n  name: team\n  namespace: team\nspec:\n  url: https://github.com/example/fleet\n  ref:\n    branch: team\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: team\n  namespace: team\nspec:\n  path: ./apps\n  targetNamespace: team\n  sourceRef:\n    kind: GitRepository\n    name: team\n",
            ),
            (
                "argo/guestbook.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: guestbook\nspec:\n  source:\n    repoURL: https://github.com/argoproj/argocd-example-apps.git\n    path: apps\n  destination:\n    namespace: guestbook\n",
            ),
            (
                "apps/web.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
            ),
        ];
        let settings = Settings {
            branch: Some("main".to_owned()),
            remote: Some(repository_url("git@GitHub.com:example/fleet.git")),
            ..Settings::default()
        };
        let index = Index::build(&tree(&files), &settings);
        // Neither the team branch's Kustomization nor the other repository's
        // Application gives this tree's apps/ a namespace.
        for namespace in ["team", "guestbook"] {
            assert_eq!(
                index.lookup(&Key::new("", "ConfigMap", Some(namespace), "web")),
                Lookup::Ambiguous(vec![found_unplaced(&index)]),
                "{namespace}"
            );
        }
        assert_eq!(
            repository_url("ssh://git@github.com/example/fleet.git/"),
            repository_url("https://github.com/example/fleet")
        );
    }

    fn found_unplaced(index: &Index) -> &Declared {
        &index.unplaced[&("".to_owned(), "ConfigMap".to_owned(), "web".to_owned())][0]
    }

    #[test]
    fn a_new_object_never_goes_into_a_base_an_overlay_renames() {
        let base = [
            (
                "base/kustomization.yaml",
                "namespace: shop\nresources: [web.yaml]\n",
            ),
            (
                "base/web.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
            ),
        ];
        let alone = Index::build(&tree(&base), &Settings::default());
        assert_eq!(
            alone.home("shop"),
            Some(Home {
                dir: "base".to_owned(),
                kustomization: Some("base".to_owned())
            })
        );
        let mut files = base.to_vec();
        files.push((
            "staging/kustomization.yaml",
            "namePrefix: staging-\nresources: [../base]\n",
        ));
        let renamed = Index::build(&tree(&files), &Settings::default());
        assert_eq!(renamed.home("shop"), None);
    }
}
