//! Where an object's file lives in the repository.
//!
//! Invariant: every path this module returns is relative, made of non-empty
//! components that are not `.`, `..` or `.git`, and starts with the configured root.
//! Names come from the apiserver, but we check them anyway: a path that would escape
//! the root is an error, never a file somewhere else.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("path template {template:?}: {reason}")]
    Template { template: String, reason: String },
    #[error("repository root {root:?}: {reason}")]
    Root { root: String, reason: String },
    #[error("cannot place {what} {value:?} in the repository: {reason}")]
    Unsafe {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Namespace,
    Group,
    Resource,
    Name,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(Field),
}

/// A parsed `repository.root` plus `repository.pathTemplate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: Vec<String>,
    segments: Vec<Vec<Piece>>,
}

/// What a path is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coordinates<'a> {
    pub namespace: Option<&'a str>,
    pub group: &'a str,
    pub resource: &'a str,
    pub name: &'a str,
}

impl Layout {
    pub fn new(root: &str, template: &str) -> Result<Self, LayoutError> {
        let root_error = |reason: &str| LayoutError::Root {
            root: root.to_owned(),
            reason: reason.to_owned(),
        };
        let mut root_parts = Vec::new();
        for part in root.split('/').filter(|p| !p.is_empty()) {
            check_component(part).map_err(root_error)?;
            // Placed names are shortened to fit; the root is the operator's, so
            // it is refused instead (found by `make fuzz`).
            if part.len() > 255 {
                return Err(root_error(
                    "a path component longer than 255 bytes cannot be checked out",
                ));
            }
            root_parts.push(part.to_owned());
        }

        let template_error = |reason: String| LayoutError::Template {
            template: template.to_owned(),
            reason,
        };
        let mut segments = Vec::new();
        let mut has_name = false;
        for segment in template.split('/') {
            if segment.is_empty() {
                return Err(template_error(
                    "empty path component (leading, trailing or double slash)".to_owned(),
                ));
            }
            let mut pieces = Vec::new();
            let mut rest = segment;
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix('{') {
                    let end = after
                        .find('}')
                        .ok_or_else(|| template_error("unclosed '{'".to_owned()))?;
                    let field = match &after[..end] {
                        "namespace" => Field::Namespace,
                        "group" => Field::Group,
                        "resource" => Field::Resource,
                        "name" => Field::Name,
                        other => {
                            return Err(template_error(format!(
                                "unknown placeholder {{{other}}}; use {{namespace}}, {{group}}, {{resource}} or {{name}}"
                            )))
                        }
                    };
                    has_name |= field == Field::Name;
                    pieces.push(Piece::Field(field));
                    rest = &after[end + 1..];
                } else {
                    let end = rest.find('{').unwrap_or(rest.len());
                    let literal = &rest[..end];
                    if literal.contains(['}', '\\', '\0', '~']) {
                        return Err(template_error(format!("bad characters in {literal:?}")));
                    }
                    // A shortened component keeps its last literal (`.yaml`) beside
                    // a hash; a literal this long would leave no room.
                    if literal.len() > MAX_LITERAL {
                        return Err(template_error(format!(
                            "{literal:?} is longer than {MAX_LITERAL} bytes; path components must fit in {MAX_COMPONENT}"
                        )));
                    }
                    pieces.push(Piece::Literal(literal.to_owned()));
                    rest = &rest[end..];
                }
            }
            if let [Piece::Literal(only)] = pieces.as_slice() {
                check_component(only).map_err(|r| template_error(r.to_owned()))?;
            }
            segments.push(pieces);
        }
        if !has_name {
            return Err(template_error(
                "must contain {name}, or every object would share one file".to_owned(),
            ));
        }
        Ok(Self {
            root: root_parts,
            segments,
        })
    }

    /// The root every path starts with: `""`, or `clusters/prod/` (with the slash).
    pub fn root(&self) -> String {
        self.root.iter().map(|part| format!("{part}/")).collect()
    }

    /// The repository path of the object at `at`.
    pub(crate) fn place(&self, at: Coordinates<'_>) -> Result<RepoPath, LayoutError> {
        let mut path = String::with_capacity(96);
        for part in &self.root {
            path.push_str(part);
            path.push('/');
        }
        for (i, segment) in self.segments.iter().enumerate() {
            let start = path.len();
            for piece in segment {
                let (what, value) = match piece {
                    Piece::Literal(text) => {
                        path.push_str(text);
                        continue;
                    }
                    Piece::Field(Field::Namespace) => {
                        ("namespace", at.namespace.unwrap_or("_cluster"))
                    }
                    Piece::Field(Field::Group) => (
                        "group",
                        if at.group.is_empty() {
                            "core"
                        } else {
                            at.group
                        },
                    ),
                    Piece::Field(Field::Resource) => ("resource", at.resource),
                    Piece::Field(Field::Name) => ("name", at.name),
                };
                if value.contains(['/', '\\', '\0']) {
                    return Err(LayoutError::Unsafe {
                        what,
                        value: value.to_owned(),
                        reason: "it contains a path separator",
                    });
                }
                path.push_str(value);
            }
            check_component(&path[start..]).map_err(|reason| LayoutError::Unsafe {
                what: "path component",
                value: path[start..].to_owned(),
                reason,
            })?;
            // A component with a `~` is always written hashed, so a name can
            // never spell another object's shortened file name (`<cut>~<hash>`).
            if path.len() - start > MAX_COMPONENT || path[start..].contains('~') {
                let suffix = match segment.last() {
                    Some(Piece::Literal(text)) => text.len(),
                    _ => 0,
                };
                let short = shorten(&path[start..], suffix);
                path.truncate(start);
                path.push_str(&short);
            }
            if i + 1 < self.segments.len() {
                path.push('/');
            }
        }
        Ok(RepoPath(path))
    }
}

/// Which placed values a file must have to be selected (see [`Layout::select`]);
/// `None` takes any value. The name is never fixed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Filter<'a> {
    pub namespace: Option<&'a str>,
    pub group: Option<&'a str>,
    pub resource: Option<&'a str>,
}

impl Filter<'_> {
    /// The text a fixed field has in a path, as [`Layout::place`] writes it.
    fn fixed(&self, field: Field) -> Option<&str> {
        match field {
            Field::Namespace => self.namespace,
            Field::Group => self.group.map(|g| if g.is_empty() { "core" } else { g }),
            Field::Resource => self.resource,
            Field::Name => None,
        }
    }
}

/// Whether a path component (or a whole path) can be a file of the objects a
/// [`Filter`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    /// It cannot.
    No,
    /// It is, by its path alone.
    Yes,
    /// Its path fits, but does not tell (a shortened component, a fixed field next to
    /// another field, a field the template does not place): read the file to know.
    Maybe,
}

impl Select {
    /// Both this and `other`: the weaker of the two.
    pub(crate) fn and(self, other: Select) -> Select {
        match (self, other) {
            (Select::No, _) | (_, Select::No) => Select::No,
            (Select::Maybe, _) | (_, Select::Maybe) => Select::Maybe,
            _ => Select::Yes,
        }
    }
}

impl Layout {
    /// The root's directories, outermost first.
    pub(crate) fn root_components(&self) -> &[String] {
        &self.root
    }

    /// How many components a placed path has below the root.
    pub(crate) fn depth(&self) -> usize {
        self.segments.len()
    }

    /// Whether `component`, the `depth`th below the root (0-based), can be that
    /// component of a file `filter` selects. The whole path's answer is the
    /// [`Select::and`] of its components' and [`Layout::unplaced`].
    pub(crate) fn select(&self, depth: usize, component: &str, filter: &Filter<'_>) -> Select {
        let Some(segment) = self.segments.get(depth) else {
            return Select::No;
        };
        // `place` never writes one (names are DNS names); a person's file with one
        // must not put a line into a commit message.
        if component.chars().any(char::is_control) {
            return Select::No;
        }
        if component.contains('~') {
            // Shortened (see `place`): only its last literal, kept whole, is known.
            return match segment.last() {
                Some(Piece::Literal(suffix)) if !component.ends_with(suffix.as_str()) => Select::No,
                _ => Select::Maybe,
            };
        }
        let fixed = segment
            .iter()
            .filter(|p| matches!(p, Piece::Field(f) if filter.fixed(*f).is_some()))
            .count();
        if !matches_pieces(segment, component, filter) {
            return Select::No;
        }
        let fields = segment
            .iter()
            .filter(|p| matches!(p, Piece::Field(_)))
            .count();
        if fixed > 0 && fields > 1 {
            // `{namespace}-{name}.yaml`: `a-b-c.yaml` fits namespace `a` and `a-b`.
            Select::Maybe
        } else {
            Select::Yes
        }
    }

    /// [`Select::Maybe`] when `filter` fixes a field the template never places (a
    /// layout without `{namespace}` cannot tell namespaces apart by path).
    pub(crate) fn unplaced(&self, filter: &Filter<'_>) -> Select {
        let placed = |field: Field| {
            self.segments
                .iter()
                .flatten()
                .any(|p| *p == Piece::Field(field))
        };
        let missing = [Field::Namespace, Field::Group, Field::Resource]
            .into_iter()
            .any(|f| filter.fixed(f).is_some() && !placed(f));
        if missing {
            Select::Maybe
        } else {
            Select::Yes
        }
    }
}

/// Whether `text` can be spelt by `pieces`: literals and fixed fields as written,
/// every other field one or more characters.
fn matches_pieces(pieces: &[Piece], text: &str, filter: &Filter<'_>) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    let literal = match first {
        Piece::Literal(literal) => Some(literal.as_str()),
        Piece::Field(field) => filter.fixed(*field),
    };
    match literal {
        Some(literal) => text
            .strip_prefix(literal)
            .is_some_and(|after| matches_pieces(rest, after, filter)),
        // A free field: try every length (templates have a handful of pieces).
        None => (1..=text.len())
            .filter(|&end| text.is_char_boundary(end))
            .any(|end| matches_pieces(rest, &text[end..], filter)),
    }
}

/// Most filesystems refuse longer file names; a 253-character Kubernetes name plus
/// `.yaml` is already over, and a checkout of the repository would fail on it.
const MAX_COMPONENT: usize = 255;

/// The longest literal a path template may hold in one component.
const MAX_LITERAL: usize = 64;

/// `component` cut to fit, keeping its last `suffix_len` bytes (the extension) and
/// adding a hash of the whole, so distinct long names stay distinct files.
fn shorten(component: &str, suffix_len: usize) -> String {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(component.as_bytes());
    let digest = hasher
        .try_finalize()
        // The whole SHA-1: a cut of it could be matched by a crafted name with
        // about 2^32 tries (RBAC names may hold `~`).
        .map(|id| id.to_hex().to_string())
        .unwrap_or_default();
    // A template's literals are at most MAX_LITERAL bytes (checked when the layout
    // is made), so the suffix always fits; saturating all the same.
    let suffix = &component[component.len().saturating_sub(suffix_len)..];
    let mut keep = MAX_COMPONENT
        .saturating_sub(1 + digest.len() + suffix.len())
        .min(component.len() - suffix.len());
    while !component.is_char_boundary(keep) {
        keep -= 1;
    }
    // The kept part has no `~` of its own, so the hash is always the text after
    // the last one.
    let kept = component[..keep].replace('~', "-");
    format!("{kept}~{digest}{suffix}")
}

fn check_component(part: &str) -> Result<(), &'static str> {
    // git (and the filesystems it guards against) treat these spellings as `.git`.
    let folded = part.to_ascii_lowercase();
    let folded = folded.trim_end_matches(['.', ' ']);
    if part.is_empty() {
        Err("it is empty")
    } else if part == "." || part == ".." {
        Err("it would leave its directory")
    } else if folded == ".git" || folded == "git~1" {
        Err("git refuses .git as a path component")
    } else if part.contains(['/', '\\', '\0', '\n']) {
        Err("it contains a path separator or control character")
    } else {
        Ok(())
    }
}

/// A checked, relative, `/`-separated path inside the repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoPath(String);

impl RepoPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A path read back from a note kubescribe wrote of a path the layout placed;
    /// still refused when it could leave the repository.
    pub(crate) fn from_note(path: String) -> Option<Self> {
        let safe = !path.is_empty()
            && !path.starts_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.eq_ignore_ascii_case(".git"));
        safe.then_some(RepoPath(path))
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "{namespace}/{group}/{resource}/{name}.yaml";

    fn at<'a>(namespace: Option<&'a str>, group: &'a str, name: &'a str) -> Coordinates<'a> {
        Coordinates {
            namespace,
            group,
            resource: "things",
            name,
        }
    }

    #[test]
    fn default_layout_places_namespaced_and_cluster_objects() {
        let layout = Layout::new("", DEFAULT).unwrap();
        assert_eq!(
            layout
                .place(at(Some("team-a"), "apps", "web"))
                .unwrap()
                .as_str(),
            "team-a/apps/things/web.yaml"
        );
        assert_eq!(
            layout.place(at(None, "", "reader")).unwrap().as_str(),
            "_cluster/core/things/reader.yaml"
        );
    }

    /// The whole path's answer, as a tree walk would combine it.
    fn select(layout: &Layout, path: &str, filter: &Filter<'_>) -> Select {
        let root = layout.root_components().len();
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != root + layout.depth() || parts[..root] != *layout.root_components() {
            return Select::No;
        }
        parts[root..]
            .iter()
            .enumerate()
            .fold(layout.unplaced(filter), |acc, (depth, part)| {
                acc.and(layout.select(depth, part, filter))
            })
    }

    #[test]
    fn filters_select_the_files_of_a_namespace_or_a_resource() {
        let scratch = Filter {
            namespace: Some("scratch"),
            ..Filter::default()
        };
        let widgets = Filter {
            group: Some("example.com"),
            resource: Some("widgets"),
            ..Filter::default()
        };
        let core_cm = Filter {
            group: Some(""),
            resource: Some("configmaps"),
            ..Filter::default()
        };
        let layout = Layout::new("clusters/prod", DEFAULT).unwrap();
        let long = layout
            .place(Coordinates {
                namespace: Some("scratch"),
                group: "",
                resource: "configmaps",
                name: &"n".repeat(253),
            })
            .unwrap();
        let table: &[(&Layout, &str, &Filter<'_>, Select)] = &[
            (
                &layout,
                "clusters/prod/scratch/apps/deployments/web.yaml",
                &scratch,
                Select::Yes,
            ),
            (
                &layout,
                "clusters/prod/scratch/core/configmaps/a.yaml",
                &scratch,
                Select::Yes,
            ),
            (
                &layout,
                "clusters/prod/scratcher/core/configmaps/a.yaml",
                &scratch,
                Select::No,
            ),
            (
                &layout,
                "clusters/prod/_cluster/core/namespaces/scratch.yaml",
                &scratch,
                Select::No,
            ),
            // Not where the layout puts a file.
            (
                &layout,
                "clusters/prod/scratch/README.md",
                &scratch,
                Select::No,
            ),
            (
                &layout,
                "clusters/prod/scratch/core/configmaps/a.json",
                &scratch,
                Select::No,
            ),
            (
                &layout,
                "clusters/dev/scratch/core/configmaps/a.yaml",
                &scratch,
                Select::No,
            ),
            (&layout, long.as_str(), &scratch, Select::Maybe),
            (&layout, long.as_str(), &widgets, Select::No),
            (
                &layout,
                "clusters/prod/a/example.com/widgets/w.yaml",
                &widgets,
                Select::Yes,
            ),
            (
                &layout,
                "clusters/prod/_cluster/example.com/widgets/w.yaml",
                &widgets,
                Select::Yes,
            ),
            (
                &layout,
                "clusters/prod/a/example.com/gadgets/w.yaml",
                &widgets,
                Select::No,
            ),
            (
                &layout,
                "clusters/prod/a/sub.example.com/widgets/w.yaml",
                &widgets,
                Select::No,
            ),
            (
                &layout,
                "clusters/prod/a/core/configmaps/w.yaml",
                &core_cm,
                Select::Yes,
            ),
            // Nothing `place` writes has a control character; such a file is kept.
            (
                &layout,
                "clusters/prod/scratch/core/configmaps/a\nReverts: x.yaml",
                &scratch,
                Select::No,
            ),
        ];
        for (layout, path, filter, want) in table {
            assert_eq!(select(layout, path, filter), *want, "{path} {filter:?}");
        }
        // A template that cannot tell by path alone says so, and never says no to a
        // file that may be one.
        let flat = Layout::new("", "{group}/{resource}/{name}.yaml").unwrap();
        assert_eq!(
            select(&flat, "core/configmaps/a.yaml", &scratch),
            Select::Maybe
        );
        let joined = Layout::new("", "{namespace}-{name}.yaml").unwrap();
        assert_eq!(select(&joined, "scratch-a.yaml", &scratch), Select::Maybe);
        assert_eq!(select(&joined, "scratch-a-b.yaml", &scratch), Select::Maybe);
        assert_eq!(select(&joined, "other-a.yaml", &scratch), Select::No);
        assert_eq!(select(&joined, "scratch.yaml", &scratch), Select::No);
    }

    #[test]
    fn root_prefixes_every_path() {
        let layout = Layout::new("/clusters/prod/", DEFAULT).unwrap();
        assert_eq!(
            layout.place(at(Some("a"), "", "x")).unwrap().as_str(),
            "clusters/prod/a/core/things/x.yaml"
        );
    }

    #[test]
    fn names_that_would_escape_the_root_are_refused() {
        let layout = Layout::new("", "{namespace}/{name}").unwrap();
        for (namespace, name) in [
            (Some(".."), "x"),
            (Some("a"), ".."),
            (Some("a"), "b/../../c"),
            (Some("a"), ".git"),
            (Some("a"), ""),
            (Some("a"), "x\\y"),
        ] {
            assert!(
                layout.place(at(namespace, "", name)).is_err(),
                "{namespace:?} {name:?}"
            );
        }
    }

    #[test]
    fn long_names_are_shortened_to_a_checkout_safe_length_and_stay_distinct() {
        let layout = Layout::new("", DEFAULT).unwrap();
        let a = "a".repeat(253);
        let b = format!("{}b", "a".repeat(252));
        let path_a = layout.place(at(Some("ns"), "", &a)).unwrap();
        let path_b = layout.place(at(Some("ns"), "", &b)).unwrap();
        let file_a = path_a.as_str().rsplit('/').next().unwrap();
        assert!(file_a.len() <= 255 && file_a.ends_with(".yaml"), "{file_a}");
        assert_ne!(path_a, path_b);
        assert_eq!(
            layout.place(at(Some("ns"), "", &a)).unwrap(),
            path_a,
            "stable"
        );
        let ok = "a".repeat(250);
        assert_eq!(
            layout.place(at(Some("ns"), "", &ok)).unwrap().as_str(),
            format!("ns/core/things/{ok}.yaml")
        );
        // A name spelling a shortened file name gets a file of its own: a `~`
        // always means "hashed", and the hash is of the whole component.
        let crafted = path_a
            .as_str()
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".yaml")
            .to_owned();
        let path_crafted = layout.place(at(Some("ns"), "", &crafted)).unwrap();
        assert_ne!(path_crafted, path_a, "{crafted}");
        assert_eq!(
            path_crafted.as_str().matches('~').count(),
            1,
            "{path_crafted:?}"
        );
        // No template can make shortening panic: long literals are refused.
        let long_suffix = format!("{{name}}{}", ".y".repeat(120));
        let err = Layout::new("", &long_suffix).unwrap_err().to_string();
        assert!(err.contains("longer than 64 bytes"), "{err}");
        let near = format!("{{name}}{}", "x".repeat(64));
        let near = Layout::new("", &near).unwrap();
        let placed = near.place(at(Some("ns"), "", &a)).unwrap();
        assert!(placed.as_str().len() <= 255, "{placed:?}");
    }

    #[test]
    fn every_spelling_of_dot_git_is_refused() {
        let layout = Layout::new("", "{name}").unwrap();
        for name in [".git", ".GIT", ".git.", ".git ", "git~1", "GIT~1"] {
            assert!(layout.place(at(None, "", name)).is_err(), "{name}");
        }
        assert!(layout.place(at(None, "", ".github")).is_ok());
    }

    #[test]
    fn bad_templates_and_roots_are_refused() {
        for template in [
            "{name",
            "{kind}/{name}",
            "a//{name}",
            "/{name}",
            "{namespace}",
            "../{name}",
            ".git/{name}",
        ] {
            assert!(Layout::new("", template).is_err(), "{template}");
        }
        assert!(Layout::new("a/../..", DEFAULT).is_err());
        // Found by `make fuzz` (the layout target): a root no checkout can hold.
        assert!(Layout::new(&"r".repeat(256), DEFAULT).is_err());
        assert!(Layout::new(&format!("a/{}", "r".repeat(255)), DEFAULT).is_ok());
    }
}
