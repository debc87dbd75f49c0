//! GitOps repositories as people keep them, for the in-place tests: a bare
//! repository whose `main` is one maintainer's commit of a fixture repository
//! (tests/fixtures/repos/) or of a few files, and the lines a commit changed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A real public repository from tests/fixtures/repos/ (see its SOURCE.md).
pub fn real_repository(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/repos")
        .join(name)
}

/// `dir/repo.git`, a bare repository whose `main` is one commit, by its
/// maintainer, of the work tree `fill` writes into the directory it is given.
pub fn seeded_in(dir: &Path, fill: impl FnOnce(&Path)) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    fill(&work);
    let run = |args: &[&str], cwd: &Path| {
        let out = Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "Maintainer")
            .env("GIT_AUTHOR_EMAIL", "maintainer@example.com")
            .env("GIT_COMMITTER_NAME", "Maintainer")
            .env("GIT_COMMITTER_EMAIL", "maintainer@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    run(&["init", "-q", "-b", "main"], &work);
    run(&["add", "-A"], &work);
    run(
        &[
            "commit",
            "-q",
            "-m",
            "the repository as its maintainers keep it",
        ],
        &work,
    );
    let repo = dir.join("repo.git");
    run(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            repo.to_str().unwrap(),
        ],
        dir,
    );
    repo
}

/// [`seeded_in`] a new temporary directory, with the fixture repository `name`.
pub fn seeded_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = seeded_in(dir.path(), |work| copy_tree(&real_repository(name), work));
    (dir, repo)
}

/// [`seeded_in`] a new temporary directory, with `files` (path, text).
pub fn seeded_files(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = seeded_in(dir.path(), |work| {
        for (path, text) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    });
    (dir, repo)
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What the commit `rev` changed: the files it touched, and the lines it took
/// out and put in (`git diff -U0`, without the file headers).
pub struct Change {
    pub files: Vec<String>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

pub fn change_of(repo: &Path, rev: &str) -> Change {
    let parent = format!("{rev}~1");
    let files = super::git(repo, &["diff", "--name-only", &parent, rev]);
    let diff = super::git(repo, &["diff", "-U0", &parent, rev]);
    let mut change = Change {
        files: files.lines().map(str::to_owned).collect(),
        removed: Vec::new(),
        added: Vec::new(),
    };
    for line in diff.lines() {
        if line.starts_with("---") || line.starts_with("+++") {
            continue;
        }
        if let Some(line) = line.strip_prefix('-') {
            change.removed.push(line.to_owned());
        } else if let Some(line) = line.strip_prefix('+') {
            change.added.push(line.to_owned());
        }
    }
    change
}

/// The branch `main` of `repo` checked out into `into`.
pub fn checkout(repo: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .arg("--work-tree")
        .arg(into)
        .args(["checkout", "-f", "main", "--", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A base and the one overlay that renders it, which sets the image's tag, the
/// replicas and the memory limit, the way teams keep per-environment values.
pub const OVERLAID: &[(&str, &str)] = &[
    (
        "base/kustomization.yaml",
        "resources:\n  - deployment.yaml\n",
    ),
    (
        "base/deployment.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
        env:
        - name: MODE
          value: fast
",
    ),
    (
        "overlays/prod/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: prod
resources:
  - ../../base
images:
  - name: registry.example/web
    newTag: \"1.2\" # the release
replicas:
  - name: web
    count: 3
patches:
  - path: resources.yaml
",
    ),
    (
        "overlays/prod/resources.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
      - name: web
        resources:
          limits:
            memory: 256Mi # prod sizing
",
    ),
];

/// [`OVERLAID`] whose overlay also sets the replicas with an inline JSON 6902
/// patch: a field kubescribe cannot trace to a file it edits.
pub fn overlaid_with_json_patch() -> Vec<(&'static str, &'static str)> {
    let mut files = OVERLAID.to_vec();
    files[2].1 = "namespace: prod
resources:
  - ../../base
patches:
  - path: resources.yaml
  - target:
      kind: Deployment
      name: web
    patch: |-
      - op: replace
        path: /spec/replicas
        value: 2
";
    files
}
