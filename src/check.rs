//! `kubescribe check`: what the webhook would answer for manifests or raw
//! AdmissionReviews, offline, for CI.
//!
//! Invariant: the verdict comes from [`crate::verdict::evaluate`], the function the
//! server calls, with the server's config file; there is no second implementation.
//! What is specific to here is only turning files into writes (a manifest becomes the
//! CREATE, UPDATE or DELETE a person with `--as` would send) and printing the results.
//! A file that cannot be read or parsed is an input error (exit 2), named with its
//! line, and never stops the other files from being checked.

use std::path::{Path, PathBuf};

use kube_core::admission::Operation;
use kube_core::{GroupVersionKind, GroupVersionResource};
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::manifest::{self, Action, Layout, Placement};
use crate::policy::{Policy, Write};
use crate::verdict::{self, Verdict};

/// The operation a manifest is checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOperation {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Junit,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Manifests: a file, a directory (read recursively: *.yaml, *.yml, *.json) or
    /// `-` for standard input. Multi-document YAML, JSON and `List` kinds.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Kustomizations: what each directory renders (`kubectl kustomize DIR`, or the
    /// command in $KUBESCRIBE_KUSTOMIZE followed by DIR), checked as `kubectl apply
    /// -k DIR` would send it.
    #[arg(short = 'k', long = "kustomize")]
    pub kustomize: Vec<PathBuf>,
    /// Raw AdmissionReview files to evaluate as the webhook would, as they are.
    #[arg(long)]
    pub review: Vec<PathBuf>,
    /// The user making the writes.
    #[arg(long = "as", default_value = "kubescribe-check")]
    pub user: String,
    /// A group of that user; repeat for more.
    #[arg(long = "as-group")]
    pub groups: Vec<String>,
    #[arg(long, value_enum, default_value_t = CheckOperation::Create)]
    pub operation: CheckOperation,
    /// The server's config file.
    #[arg(long, env = "KUBESCRIBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A checkout or bare repository of the recorded files: show the diff each write
    /// would commit.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The output of `kubectl api-resources -o wide` for the cluster: the resource
    /// and scope of kinds no CRD in the input describes.
    #[arg(long = "api-resources")]
    pub api_resources: Option<PathBuf>,
}

/// Why the check could not run at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("nothing to check: give -f FILE|DIR|-, -k DIR or --review FILE")]
    NoInput,
    #[error("invalid layout in the config: {0}")]
    Layout(String),
    #[error("cannot open the repository {path}: {reason}")]
    Repo { path: PathBuf, reason: String },
}

/// One checked object (or review).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// `file:line` of the document (or the review file).
    pub source: String,
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub operation: String,
    pub allowed: bool,
    pub message: Option<String>,
    pub warnings: Vec<String>,
    /// queued (would be recorded), proposed (would be proposed in a pull request),
    /// skipped, dry_run, denied, unrecorded.
    pub decision: String,
    pub rule: Option<String>,
    /// The file in the repository the write is recorded in.
    pub path: Option<String>,
    pub findings: Vec<FindingOut>,
    /// The unified diff the commit would make (with `--repo`); empty when unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The JSON Patch `/mutate` would return (with `annotate: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingOut {
    pub rail: String,
    pub mode: String,
    pub message: String,
}

/// A file or document that could not be checked.
#[derive(Debug, Clone, Serialize)]
pub struct InputError {
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every write allowed and every input read.
    pub allowed: bool,
    pub results: Vec<CheckResult>,
    pub errors: Vec<InputError>,
    /// Inputs that are not manifests (Helm charts, kustomizations), with how to
    /// check what they render.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<InputError>,
}

impl Report {
    /// 0 when everything is allowed, 1 when a write is denied, 2 for bad input.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if self.results.iter().any(|r| !r.allowed) {
            1
        } else {
            0
        }
    }
}

/// Runs the check; `stdin` is read for `-f -`.
pub fn run(args: &CheckArgs, stdin: &mut dyn std::io::Read) -> Result<Report, CheckError> {
    if args.files.is_empty() && args.kustomize.is_empty() && args.review.is_empty() {
        return Err(CheckError::NoInput);
    }
    let config = Config::load(args.config.as_deref())?;
    let policy = Policy::new(&config);
    let layouts = config
        .targets()
        .iter()
        .map(|t| Layout::new(&t.repository.root, &t.repository.path_template))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CheckError::Layout(e.to_string()))?;
    let repos: Option<Vec<String>> = config.annotate.then(|| {
        config
            .targets()
            .iter()
            .map(Config::repository_label)
            .collect()
    });
    let repo = match &args.repo {
        Some(path) => Some(gix::open(path).map_err(|e| CheckError::Repo {
            path: path.clone(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    // With `--repo`, a repository edited in place is looked up as the webhook does:
    // the index of its HEAD, for every target that has `inPlace` on.
    let targets = config.targets();
    let indexes: Vec<Option<(crate::declared::Index, crate::config::InPlaceConfig)>> = targets
        .iter()
        .map(|target| {
            let repo = repo
                .as_ref()
                .filter(|_| target.repository.in_place.enabled)?;
            let tree = repo.head_commit().ok()?.tree_id().ok()?.detach();
            let shared = crate::store::SharedIndex::new(&target.repository);
            let index = crate::store::index_of(repo, tree, &shared.settings).ok()?;
            Some((index, target.repository.in_place.clone()))
        })
        .collect();
    // With `--repo` and `secrets: sops`, Secrets are encrypted as the webhook
    // would, for the recipients of HEAD's `.sops.yaml` (or the config's). Without
    // kubescribe's identity, every value shows as changed.
    let sealers: Vec<Option<crate::secrets::Sealer>> = targets
        .iter()
        .map(|_| {
            let repo = repo.as_ref().filter(|_| config.uses_sops())?;
            let keys = crate::secrets::Keys::load(&config.sops, true).ok()?;
            let sealer = crate::secrets::Sealer::new(std::sync::Arc::new(keys));
            // HEAD's `.sops.yaml`, read as the writer reads the branch's.
            let tree = repo
                .head_commit()
                .ok()
                .and_then(|c| c.tree_id().ok())
                .map_or_else(
                    || gix::ObjectId::empty_tree(repo.object_hash()),
                    |id| id.detach(),
                );
            crate::store::follow_sops(&sealer, repo, tree);
            Some(sealer)
        })
        .collect();
    let place = |target: usize, change: &mut manifest::Change, write: &Write| {
        let placement = match &indexes[target] {
            // The diff routes through the overlays, with the checkout's files.
            Some((index, in_place)) => {
                manifest::plan_in_place(index, in_place, change, write, None)
            }
            None => Placement::Canonical,
        };
        manifest::sealable(placement, change, sealers[target].as_ref())
    };
    let mut report = Report {
        allowed: true,
        results: Vec::new(),
        errors: Vec::new(),
        skipped: Vec::new(),
    };

    let mut documents = Vec::new();
    for dir in &args.kustomize {
        let source = format!("{} (kustomize)", dir.display());
        match render_kustomization(dir) {
            Ok(text) => parse_documents(&source, &text, &mut documents, &mut report.errors),
            Err(message) => report.errors.push(InputError { source, message }),
        }
    }
    for file in &args.files {
        if file == Path::new("-") {
            let mut text = String::new();
            match stdin.read_to_string(&mut text) {
                Ok(_) => parse_documents("-", &text, &mut documents, &mut report.errors),
                Err(e) => report.errors.push(InputError {
                    source: "-".to_owned(),
                    message: format!("cannot read standard input: {e}"),
                }),
            }
        } else {
            for path in manifest_files(file, &mut report.errors, &mut report.skipped) {
                match std::fs::read_to_string(&path) {
                    Ok(text) => parse_documents(
                        &path.display().to_string(),
                        &text,
                        &mut documents,
                        &mut report.errors,
                    ),
                    Err(e) => report.errors.push(InputError {
                        source: path.display().to_string(),
                        message: format!("cannot read: {e}"),
                    }),
                }
            }
        }
    }
    // Where a kind's resource and scope come from, first that knows: the CRDs in
    // the input, the cluster's `kubectl api-resources`, the built-in list.
    let mut scopes = match &args.api_resources {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => api_resources(&text),
            Err(e) => {
                report.errors.push(InputError {
                    source: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                });
                Scopes::new()
            }
        },
        None => Scopes::new(),
    };
    scopes.extend(crd_scopes(&documents));
    for (n, (source, object)) in documents.into_iter().enumerate() {
        if is_kustomization(&object) {
            report.skipped.push(InputError {
                source,
                message: KUSTOMIZATION_NOTE.to_owned(),
            });
            continue;
        }
        match manifest_write(&object, args, n, &scopes) {
            Ok((write, guessed)) => {
                let mut verdict = verdict::evaluate(&write, &policy, |i| &layouts[i], place);
                let diff = match (&repo, &verdict.record) {
                    (Some(repo), Some(recording)) => {
                        match diff(
                            repo,
                            &recording.change,
                            indexes[recording.target].as_ref(),
                            sealers[recording.target].as_ref(),
                        ) {
                            Ok(diff) => Some(diff),
                            Err(reason) => {
                                // The store would refuse it when it commits: the
                                // answer the real write gets, as a refusal does.
                                verdict = verdict::evaluate(
                                    &write,
                                    &policy,
                                    |i| &layouts[i],
                                    |_, _, _| Placement::Refused(reason.clone()),
                                );
                                Some(String::new())
                            }
                        }
                    }
                    _ => None,
                };
                if guessed {
                    verdict.warnings.push(format!(
                        "kubescribe check: {} of {} is not a built-in kind, and neither a CustomResourceDefinition in the input nor --api-resources gives its scope: taken as namespaced; add its CRD to the input, or pass --api-resources",
                        write.kind.kind,
                        if write.kind.group.is_empty() { "the core group" } else { &write.kind.group }
                    ));
                }
                if let Some(warning) = cascade_warning(repo.as_ref(), &verdict) {
                    verdict.warnings.push(warning);
                }
                report
                    .results
                    .push(result(source, &write, verdict, diff, repos.as_deref()));
            }
            Err(message) => report.errors.push(InputError { source, message }),
        }
    }
    for path in &args.review {
        let source = path.display().to_string();
        let parsed = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| crate::admission::decode_review(&bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(review) => {
                let verdict = verdict::evaluate(&review, &policy, |i| &layouts[i], place);
                report
                    .results
                    .push(result(source, &review, verdict, None, repos.as_deref()));
            }
            Err(message) => report.errors.push(InputError { source, message }),
        }
    }
    report.allowed = report.exit_code() == 0;
    Ok(report)
}

/// What the kustomization in `dir` renders: `kubectl kustomize DIR`, or the command in
/// `$KUBESCRIBE_KUSTOMIZE` (words split on spaces, such as `kustomize build`) with DIR.
fn render_kustomization(dir: &Path) -> Result<String, String> {
    let configured = std::env::var("KUBESCRIBE_KUSTOMIZE")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let command = configured.unwrap_or_else(|| "kubectl kustomize".to_owned());
    let mut words = command.split_whitespace();
    let program = words.next().unwrap_or("kubectl");
    let output = std::process::Command::new(program)
        .args(words)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{command}`: {e}; install kubectl (or set KUBESCRIBE_KUSTOMIZE to `kustomize build`), or render it yourself: `kubectl kustomize {} | kubescribe check -f -`",
                dir.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`{command} {}` failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout)
        .map_err(|_| format!("`{command}` printed something that is not UTF-8"))
}

/// The files under `path`: itself, or every manifest file below it, sorted.
/// How to check what a kustomization renders, for a file skipped as one.
const KUSTOMIZATION_NOTE: &str = "a kustomization, not an object: check what it renders with `kubescribe check -k <its directory>`";

/// Whether a document is a kustomization (or component) rather than an object.
fn is_kustomization(object: &Value) -> bool {
    object
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("kustomize.config.k8s.io/"))
        && object
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "Kustomization" || k == "Component")
}

/// The scope each CustomResourceDefinition of the input gives its kind:
/// (group, kind) → namespaced.
/// (group, kind) → (resource, namespaced).
type Scopes = std::collections::HashMap<(String, String), (String, bool)>;

/// The kinds of `kubectl api-resources` output (with `-o wide` or without): columns
/// found by the header's positions, since SHORTNAMES is often empty.
fn api_resources(text: &str) -> Scopes {
    let mut lines = text.lines();
    let Some(header) = lines.find(|l| l.trim_start().starts_with("NAME")) else {
        return Scopes::new();
    };
    let column = |name: &str| header.find(name);
    let (Some(name_at), Some(version_at), Some(namespaced_at), Some(kind_at)) = (
        column("NAME"),
        column("APIVERSION"),
        column("NAMESPACED"),
        column("KIND"),
    ) else {
        return Scopes::new();
    };
    let mut starts = [name_at, version_at, namespaced_at, kind_at];
    starts.sort_unstable();
    let cell = |line: &str, at: usize| -> String {
        let end = starts
            .iter()
            .copied()
            .find(|&s| s > at)
            .unwrap_or(line.len());
        line.get(at..end.min(line.len()))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    lines
        .filter_map(|line| {
            let resource = cell(line, name_at);
            let api_version = cell(line, version_at);
            let namespaced = cell(line, namespaced_at);
            let kind = cell(line, kind_at);
            if resource.is_empty() || kind.is_empty() || api_version.is_empty() {
                return None;
            }
            let group = api_version
                .rsplit_once('/')
                .map_or("", |(g, _)| g)
                .to_owned();
            Some(((group, kind), (resource, namespaced == "true")))
        })
        .collect()
}

fn crd_scopes(documents: &[(String, Value)]) -> Scopes {
    documents
        .iter()
        .filter(|(_, d)| {
            d.get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("apiextensions.k8s.io/"))
                && d.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")
        })
        .filter_map(|(_, d)| {
            let group = d.pointer("/spec/group")?.as_str()?;
            let kind = d.pointer("/spec/names/kind")?.as_str()?;
            let scope = d.pointer("/spec/scope")?.as_str()?;
            let plural = d.pointer("/spec/names/plural")?.as_str()?;
            Some((
                (group.to_owned(), kind.to_owned()),
                (plural.to_owned(), scope == "Namespaced"),
            ))
        })
        .collect()
}

fn manifest_files(
    path: &Path,
    errors: &mut Vec<InputError>,
    skipped: &mut Vec<InputError>,
) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    let mut found = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                errors.push(InputError {
                    source: dir.display().to_string(),
                    message: format!("cannot list: {e}"),
                });
                continue;
            }
        };
        // A Helm chart's templates are not manifests until Helm renders them.
        if dir.join("Chart.yaml").is_file() {
            skipped.push(InputError {
                source: dir.display().to_string(),
                message: "a Helm chart, not manifests: check what it renders with `helm template <release> <chart> | kubescribe check -f -`".to_owned(),
            });
            continue;
        }
        for entry in entries.flatten() {
            let path = entry.path();
            // Hidden directories (.git, .github) hold no manifests; symlinks to
            // directories are not followed, so a loop cannot hang the check.
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                if !hidden {
                    pending.push(path);
                }
            } else if crate::declared::kustomization_file(&entry.file_name().to_string_lossy()) {
                skipped.push(InputError {
                    source: path.display().to_string(),
                    message: KUSTOMIZATION_NOTE.to_owned(),
                });
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        errors.push(InputError {
            source: path.display().to_string(),
            message: "no *.yaml, *.yml or *.json files in this directory".to_owned(),
        });
    }
    found
}

/// Splits multi-document YAML (or JSON) into objects, each with `file:line`; `List`
/// kinds are expanded into their items.
fn parse_documents(
    name: &str,
    text: &str,
    out: &mut Vec<(String, Value)>,
    errors: &mut Vec<InputError>,
) {
    // Documents are split here, not by the parser, so each keeps its line number and
    // one broken document does not hide the others.
    let mut starts = vec![0usize];
    let mut offset = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut line_starts = Vec::with_capacity(lines.len());
    for line in &lines {
        line_starts.push(offset);
        offset += line.len();
    }
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_end();
        if i > 0 && (trimmed == "---" || trimmed.starts_with("--- ")) {
            starts.push(i);
        }
    }
    for (k, &first) in starts.iter().enumerate() {
        let last = starts.get(k + 1).copied().unwrap_or(lines.len());
        let body = &text[line_starts.get(first).copied().unwrap_or(text.len())
            ..line_starts.get(last).copied().unwrap_or(text.len())];
        let body_trimmed = body.trim_start_matches("---");
        if body_trimmed
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let source = format!("{name}:{}", first + 1);
        match serde_yaml_ng::from_str::<Value>(body) {
            Ok(Value::Null) => {}
            Ok(value) => expand(source, value, out, errors),
            Err(e) => {
                let line = e.location().map_or(first + 1, |l| first + l.line());
                errors.push(InputError {
                    source: format!("{name}:{line}"),
                    message: format!("invalid YAML: {e}"),
                });
            }
        }
    }
}

fn expand(
    source: String,
    value: Value,
    out: &mut Vec<(String, Value)>,
    errors: &mut Vec<InputError>,
) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        out.push((source, value));
        return;
    }
    if let Some(Value::Array(items)) = value.get("items") {
        for (i, item) in items.iter().enumerate() {
            if item.is_object() {
                out.push((format!("{source}[{i}]"), item.clone()));
            } else {
                errors.push(InputError {
                    source: format!("{source}[{i}]"),
                    message: "a List item is not an object".to_owned(),
                });
            }
        }
    }
}

/// The write a person would send for `object` with the given identity and operation.
/// The write a manifest is checked as, and whether its kind's scope was a guess.
fn manifest_write(
    object: &Value,
    args: &CheckArgs,
    n: usize,
    scopes: &Scopes,
) -> Result<(Write, bool), String> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("not a Kubernetes object: apiVersion is missing")?;
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("not a Kubernetes object: kind is missing")?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // A kind from a CRD: its resource and scope are the CRD's, or the cluster's,
    // when the input has them; otherwise guessed (namespaced), and said so.
    let custom = crate::kinds::custom_group(group);
    let (resource, namespaced, guessed) = match scopes.get(&(group.to_owned(), kind.to_owned())) {
        Some((resource, namespaced)) => (resource.clone(), *namespaced, false),
        None => {
            let (resource, namespaced) = crate::kinds::resource_of(group, kind);
            (resource, namespaced, custom)
        }
    };
    let namespace = namespaced.then(|| {
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned()
    });
    let mut object = object.clone();
    // The apiserver's request never carries these to kubescribe's decisions either.
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("managedFields");
        }
    }
    if let (Some(ns), Some(meta)) = (&namespace, object.get_mut("metadata")) {
        if let Some(meta) = meta.as_object_mut() {
            meta.entry("namespace")
                .or_insert_with(|| Value::String(ns.clone()));
        }
    }
    let operation = match args.operation {
        CheckOperation::Create => Operation::Create,
        CheckOperation::Update => Operation::Update,
        CheckOperation::Delete => Operation::Delete,
    };
    let (new, old) = match operation {
        Operation::Delete => (None, Some(object)),
        Operation::Update => (Some(object.clone()), Some(object)),
        _ => (Some(object), None),
    };
    let write = Write {
        uid: format!("kubescribe-check-{n}"),
        operation,
        kind: GroupVersionKind::gvk(group, version, kind),
        resource: GroupVersionResource::gvr(group, version, &resource),
        sub_resource: None,
        namespace,
        name,
        user: args.user.clone(),
        groups: args.groups.clone(),
        dry_run: false,
        object: new,
        old_object: old,
        from_cluster: false,
    };
    Ok((write, guessed))
}

/// What else a recorded delete takes out of git, as the webhook says it: with the
/// files of `repo`'s HEAD, or without a count when there is no repository to read.
fn cascade_warning(repo: Option<&gix::Repository>, verdict: &Verdict) -> Option<String> {
    let change = &verdict.record.as_ref()?.change;
    let Action::Cascade(cascade) = &change.action else {
        return None;
    };
    let files = repo.map(|repo| {
        repo.head_commit()
            .ok()
            .and_then(|c| c.tree_id().ok())
            .and_then(|tree| crate::cascade::files(repo, tree.detach(), cascade).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(file, _)| file)
            .filter(|file| file != change.path.as_str())
            .collect::<Vec<_>>()
    });
    if files.as_ref().is_some_and(Vec::is_empty) {
        return None;
    }
    Some(crate::cascade::warning(
        &cascade.scope,
        files.as_deref(),
        false,
    ))
}

/// The file as the store would edit it in place: the change is the one between the
/// object as the document declares it and the manifest (the cluster is taken to hold
/// what git declares). `None` when the document cannot be found or edited.
fn in_place_edit(
    file: &[u8],
    in_place: &crate::declared::InPlace,
    action: &Action,
    overlays: Option<&Overlays<'_>>,
    refused: &mut Option<String>,
) -> Option<(String, Vec<OtherFile>)> {
    let mut others = Vec::new();
    use crate::declared::edit;
    let documents = crate::declared::documents(file);
    let name = in_place.written_name.as_deref()?;
    let at = crate::declared::find_document(&documents, &in_place.key, name)?;
    let edited = match action {
        Action::Remove => edit::remove(file, at).ok()?,
        Action::SetReplicas(_) => {
            edit::update(file, at, &in_place.ops, &Value::Null, &Value::Null).ok()?
        }
        _ => {
            // What the document renders to, as far as this object goes: the name and
            // namespace kustomize gives it are the object's.
            let mut old = documents[at].clone();
            old["metadata"]["name"] = Value::String(in_place.key.name.clone());
            match &in_place.key.namespace {
                Some(namespace) => old["metadata"]["namespace"] = Value::String(namespace.clone()),
                None => {
                    if let Some(meta) = old["metadata"].as_object_mut() {
                        meta.remove("namespace");
                    }
                }
            }
            let mut ops = edit::diff(&old, &in_place.new);
            if let Some(overlays) = overlays {
                // As the store commits it with `overlay: patch`: what an overlay
                // sets is edited there (and what the overlay renders differently
                // from the document is set to what it already is).
                if let crate::declared::Lookup::Found(declared) =
                    overlays.index.lookup(&in_place.key)
                {
                    if !declared.transformed_by.is_empty() {
                        let siblings = overlays.index.rendered_with(&in_place.key, declared);
                        let routed = crate::declared::overlay::route(
                            &crate::declared::overlay::Routing {
                                read: &overlays.read,
                                key: &in_place.key,
                                declared,
                                shared: overlays
                                    .index
                                    .declarations(&declared.path, declared.document),
                                siblings: &siblings,
                                base: &documents[at],
                                old: &old,
                                new: &in_place.new,
                            },
                            &ops,
                        )
                        .map_err(|reason| *refused = Some(reason))
                        .ok()?;
                        for other in routed.elsewhere {
                            let before = (overlays.read)(&other.path)?;
                            let after = edit::update(
                                &before,
                                other.document,
                                &other.ops,
                                &other.old,
                                &other.new,
                            )
                            .ok()?
                            .bytes?;
                            others.push(OtherFile {
                                path: other.path,
                                before: String::from_utf8_lossy(&before).into_owned(),
                                after: String::from_utf8_lossy(&after).into_owned(),
                            });
                        }
                        ops = routed.base;
                    }
                }
            }
            edit::update(file, at, &ops, &old, &in_place.new).ok()?
        }
    };
    Some((
        String::from_utf8_lossy(&edited.bytes.unwrap_or_default()).into_owned(),
        others,
    ))
}

/// With `overlay: patch`: the index of HEAD, and its files.
struct Overlays<'a> {
    index: &'a crate::declared::Index,
    read: Box<crate::declared::overlay::ReadFile<'a>>,
}

/// Another file an in-place edit changes.
struct OtherFile {
    path: String,
    before: String,
    after: String,
}

/// The unified diff committing `change` would make against `repo`'s HEAD.
/// `Err` with the reason when the store would refuse to commit it (an overlay's
/// field it cannot trace, with `overlay: patch`).
fn diff(
    repo: &gix::Repository,
    change: &manifest::Change,
    index: Option<&(crate::declared::Index, crate::config::InPlaceConfig)>,
    sealer: Option<&crate::secrets::Sealer>,
) -> Result<String, String> {
    let path = change.path.as_str();
    let current: Option<Vec<u8>> = repo
        .head_commit()
        .ok()
        .and_then(|c| c.tree().ok())
        .and_then(|mut tree| tree.peel_to_entry_by_path(path).ok().flatten())
        .and_then(|entry| entry.object().ok().map(|o| o.data.clone()))
        .or_else(|| {
            // What HEAD records; in a checkout, a file HEAD does not have yet is
            // read from the working tree (recorded but not committed there yet).
            repo.workdir()
                .and_then(|dir| std::fs::read(dir.join(path)).ok())
        });
    let old = current
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
        .into_owned();
    let overlays = index
        .filter(|(_, config)| config.overlay == crate::config::Overlay::Patch)
        .map(|(index, _)| Overlays {
            index,
            read: Box::new(|path: &str| {
                let mut tree = repo.head_commit().ok()?.tree().ok()?;
                let entry = tree.peel_to_entry_by_path(path).ok()??;
                // A directory is not a file (a kustomization's is named by it).
                if !entry.mode().is_blob() {
                    return None;
                }
                Some(entry.object().ok()?.data.clone())
            }),
        });
    let mut changed_values = None;
    let (edited, others) = match (&change.in_place, &current, &change.action) {
        // A Secret a person's SOPS file declares: that file, written anew.
        (Some(in_place), Some(file), Action::Seal(sealed))
            if in_place.new_file.is_none() && in_place.canonical != path =>
        {
            let sealer = sealer.ok_or_else(|| {
                "secrets: sops: kubescribe check needs the config's sops settings to encrypt it"
                    .to_owned()
            })?;
            let encrypted = sealer.seal_declared(
                &String::from_utf8_lossy(file),
                sealed.plain(),
                sealed.before(),
                &in_place.old,
                &in_place.new,
                path,
                &format!("Secret {}", change.object_ref()),
                std::time::SystemTime::now(),
            )?;
            changed_values = Some(encrypted.changed);
            (Some(encrypted.text), Vec::new())
        }
        (Some(in_place), Some(file), _) if in_place.new_file.is_none() => {
            let mut refused = None;
            match in_place_edit(
                file,
                in_place,
                &change.action,
                overlays.as_ref(),
                &mut refused,
            ) {
                Some((edited, others)) => (Some(edited), others),
                None => match refused {
                    Some(reason) => return Err(reason),
                    None => (None, Vec::new()),
                },
            }
        }
        _ => (None, Vec::new()),
    };
    let in_place_here = change
        .in_place
        .as_ref()
        .is_some_and(|p| p.new_file.is_none() && p.canonical != path);
    if in_place_here && change.verb == manifest::Verb::Create {
        // Already declared: the webhook records nothing.
        return Ok(String::new());
    }
    if in_place_here && edited.is_none() {
        // The store would refuse it (the document moved, or cannot be edited by
        // position): no commit, and never a canonical rewrite of a person's file.
        return Ok(String::new());
    }
    let new = match &change.action {
        _ if edited.is_some() => edited.unwrap_or_default(),
        Action::Put(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Action::Seal(sealed) => {
            let sealer = sealer.ok_or_else(|| {
                "secrets: sops: kubescribe check needs the config's sops settings to encrypt it"
                    .to_owned()
            })?;
            let encrypted = sealer
                .seal(
                    sealed.plain(),
                    path,
                    current.is_some().then_some(old.as_str()),
                    std::time::SystemTime::now(),
                )
                .map_err(|e| e.to_string())?;
            changed_values = Some(encrypted.changed);
            encrypted.text
        }
        Action::Remove | Action::Cascade(_) => String::new(),
        Action::SetReplicas(replicas) => manifest::set_replicas(old.as_bytes(), *replicas)
            .map(|r| String::from_utf8_lossy(&r.bytes).into_owned())
            .unwrap_or_else(|| old.clone()),
    };
    let mut text = file_diff(path, current.is_some(), &old, &new);
    if let Some(changed) = changed_values.filter(|_| !text.is_empty()) {
        // Which values change, by key; the values themselves are never shown.
        let list = if changed.is_empty() {
            "none".to_owned()
        } else {
            changed.join(", ")
        };
        let unread = if sealer.is_some_and(|s| !s.reads_back()) {
            " (sops.identityFile is not readable here, so every value is listed)"
        } else {
            ""
        };
        text = format!("# {path}: values changed (encrypted with SOPS): {list}{unread}\n{text}");
    }
    for other in others {
        text.push_str(&file_diff(&other.path, true, &other.before, &other.after));
    }
    if let Action::Cascade(cascade) = &change.action {
        // What the delete takes with it, as HEAD has it.
        let head = repo.head_commit().ok().and_then(|c| c.tree_id().ok());
        let files = head
            .and_then(|tree| crate::cascade::files(repo, tree.detach(), cascade).ok())
            .unwrap_or_default();
        for (file, id) in files.into_iter().filter(|(file, _)| file != path) {
            let Ok(blob) = repo.find_blob(id) else {
                continue;
            };
            text.push_str(&file_diff(
                &file,
                true,
                &String::from_utf8_lossy(&blob.data),
                "",
            ));
        }
    }
    Ok(text)
}

/// The unified diff of one file from `old` (when it `existed`) to `new` (empty: gone).
fn file_diff(path: &str, existed: bool, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let from = if existed {
        format!("a/{path}")
    } else {
        "/dev/null".to_owned()
    };
    let to = if new.is_empty() {
        "/dev/null".to_owned()
    } else {
        format!("b/{path}")
    };
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .header(&from, &to)
        .to_string()
}

fn result(
    source: String,
    write: &Write,
    verdict: Verdict,
    diff: Option<String>,
    repos: Option<&[String]>,
) -> CheckResult {
    let mut verdict = verdict;
    if let Some(recording) = verdict
        .record
        .as_ref()
        .filter(|r| r.then == crate::config::Then::Deny)
    {
        // The webhook records and pushes first; its denial then names the pushed
        // commit (or the pull request), which only the live server knows.
        verdict.allowed = false;
        verdict.message = Some(if recording.review {
            format!(
                "kubescribe would propose {} in a pull request, then refuse the write: this cluster changes only through GitOps, which applies it once the pull request is merged",
                recording.change.path
            )
        } else {
            format!(
                "kubescribe would record {} and push it, then refuse the write: this cluster changes only through GitOps",
                recording.change.path
            )
        });
        if recording.review {
            verdict.label = crate::metrics::DecisionLabel::Proposed;
        }
    }
    let patch = match (repos, &verdict.path, verdict.target) {
        (Some(repos), Some(path), Some(target)) if verdict.allowed => {
            verdict::annotation_patch(write, path, &repos[target])
        }
        _ => None,
    };
    let operation = match write.operation {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect",
    };
    let decision = verdict.label.as_str().to_owned();
    CheckResult {
        source,
        api_version: if write.kind.group.is_empty() {
            write.kind.version.clone()
        } else {
            format!("{}/{}", write.kind.group, write.kind.version)
        },
        kind: write.kind.kind.clone(),
        namespace: write.namespace.clone(),
        name: write.name.clone(),
        operation: operation.to_owned(),
        allowed: verdict.allowed,
        message: verdict.message,
        warnings: verdict.warnings,
        decision,
        rule: verdict.rule,
        path: verdict.path,
        findings: verdict
            .findings
            .into_iter()
            .map(|f| FindingOut {
                rail: f.rail.to_owned(),
                mode: format!("{:?}", f.mode).to_ascii_lowercase(),
                message: f.message,
            })
            .collect(),
        diff,
        patch,
    }
}

/// The report as text for a CI log: one line per object, details indented under it.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in &report.results {
        let object = match &r.namespace {
            Some(ns) => format!("{} {ns}/{}", r.kind, r.name),
            None => format!("{} {}", r.kind, r.name),
        };
        let verdict = if r.allowed { "ALLOW" } else { "DENY " };
        let place = match (&r.path, r.decision.as_str()) {
            (Some(path), "queued") => format!("records {path}"),
            (Some(path), _) => path.clone(),
            (None, _) => r.decision.replace('_', " "),
        };
        let _ = writeln!(out, "{verdict} {object}: {place}  ({})", r.source);
        if let Some(message) = &r.message {
            let _ = writeln!(out, "  denied: {message}");
        }
        for warning in &r.warnings {
            let _ = writeln!(out, "  warning: {warning}");
        }
        if let Some(diff) = r.diff.as_deref().filter(|d| !d.is_empty()) {
            for line in diff.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if let Some(patch) = &r.patch {
            let _ = writeln!(out, "  /mutate patch: {patch}");
        }
    }
    for e in &report.errors {
        let _ = writeln!(out, "ERROR {}: {}", e.source, e.message);
    }
    for s in &report.skipped {
        let _ = writeln!(out, "SKIP  {}: {}", s.source, s.message);
    }
    let denied = report.results.iter().filter(|r| !r.allowed).count();
    let _ = write!(
        out,
        "{} checked, {} allowed, {denied} denied, {} input errors",
        report.results.len(),
        report.results.len() - denied,
        report.errors.len()
    );
    if !report.skipped.is_empty() {
        let _ = write!(out, ", {} skipped", report.skipped.len());
    }
    out.push('\n');
    out
}

/// The report as JSON (schema in docs/ci.md).
pub fn render_json(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(report).expect("a report always serializes");
    text.push('\n');
    text
}

/// The report as JUnit XML: one test case per object, a failure per denial, an error
/// per unreadable input.
pub fn render_junit(report: &Report) -> String {
    use std::fmt::Write as _;
    let denied = report.results.iter().filter(|r| !r.allowed).count();
    let tests = report.results.len() + report.errors.len();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"kubescribe check\" tests=\"{tests}\" failures=\"{denied}\" errors=\"{}\">",
        report.errors.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"kubescribe check\" tests=\"{tests}\" failures=\"{denied}\" errors=\"{}\" skipped=\"0\">",
        report.errors.len()
    );
    for r in &report.results {
        let object = match &r.namespace {
            Some(ns) => format!("{} {ns}/{}", r.kind, r.name),
            None => format!("{} {}", r.kind, r.name),
        };
        let file = r
            .source
            .rsplit_once(':')
            .map_or(r.source.as_str(), |(f, _)| f);
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml(file),
            xml(&format!("{} {object} ({})", r.operation, r.source))
        );
        let mut body = String::new();
        if let Some(message) = &r.message {
            let _ = writeln!(
                body,
                "      <failure type=\"denied\" message=\"{}\">{}</failure>",
                xml(message),
                xml(message)
            );
        }
        let mut details = Vec::new();
        if let Some(path) = &r.path {
            details.push(format!("path: {path}"));
        }
        details.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
        if let Some(diff) = r.diff.as_deref().filter(|d| !d.is_empty()) {
            details.push(diff.to_owned());
        }
        if let Some(patch) = &r.patch {
            details.push(format!("/mutate patch: {patch}"));
        }
        if !details.is_empty() {
            let _ = writeln!(
                body,
                "      <system-out>{}</system-out>",
                xml(&details.join("\n"))
            );
        }
        if body.is_empty() {
            out.push_str("/>\n");
        } else {
            out.push_str(">\n");
            out.push_str(&body);
            out.push_str("    </testcase>\n");
        }
    }
    for e in &report.errors {
        let file = e
            .source
            .rsplit_once(':')
            .map_or(e.source.as_str(), |(f, _)| f);
        let _ = writeln!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\">\n      <error type=\"input\" message=\"{}\">{}</error>\n    </testcase>",
            xml(file),
            xml(&e.source),
            xml(&e.message),
            xml(&e.message)
        );
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 forbids.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}
