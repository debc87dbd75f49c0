//! `kubescribe check`: parity with the live webhook on every recorded request, golden
//! outputs (text, JSON, JUnit) for a directory of manifests against a small repository,
//! and the exit codes of the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::gitops::{overlaid_with_json_patch, real_repository, seeded_files, OVERLAID};
use common::{fixtures, warnings, TestServer};
use kubescribe::check::{self, CheckArgs, CheckOperation, OutputFormat};
use serde_json::Value;

fn args() -> CheckArgs {
    CheckArgs {
        files: Vec::new(),
        kustomize: Vec::new(),
        review: Vec::new(),
        user: "alice".to_owned(),
        groups: vec!["system:authenticated".to_owned()],
        operation: CheckOperation::Create,
        config: None,
        repo: None,
        output: OutputFormat::Text,
        api_resources: None,
    }
}

fn check_dir() -> PathBuf {
    // Relative, so the sources in the goldens do not depend on where the tree is.
    PathBuf::from("tests/fixtures/check")
}

/// Compares with (or, with UPDATE_GOLDEN=1, rewrites) tests/golden/check/<name>.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/check")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_review_agrees_with_the_live_webhook_on_every_fixture() {
    let server = TestServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for fixture in fixtures() {
        // Every recorded request, mutating ones included, asked of /validate.
        let (status, live) = server
            .connect()
            .await
            .review("/validate", common::body(&fixture.review))
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", fixture.file);
        // The fixture files wrap the review with the path it was sent to.
        let review = dir.path().join(&fixture.file);
        std::fs::write(&review, serde_json::to_vec(&fixture.review).unwrap()).unwrap();
        let mut args = args();
        args.review = vec![review];
        let report = check::run(&args, &mut std::io::empty()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let offline = &report.results[0];
        let response = &live["response"];
        assert_eq!(
            offline.allowed,
            response["allowed"] == true,
            "{}: allowed",
            fixture.file
        );
        assert_eq!(
            offline.message.as_deref(),
            response["status"]["message"].as_str(),
            "{}: message",
            fixture.file
        );
        assert_eq!(
            offline.warnings,
            warnings(&live),
            "{}: warnings",
            fixture.file
        );
        compared += 1;
    }
    assert!(compared >= 40, "every fixture was compared: {compared}");
    server.server.shutdown().await.unwrap();
}

/// A bare repository holding tests/fixtures/check/repo as its one commit.
fn small_repo(dir: &Path) -> PathBuf {
    let work = dir.join("work");
    let copy = |from: &Path, to: &Path| {
        let status = Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy(&check_dir().join("repo"), &work);
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(args)
            .current_dir(&work)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@x",
        "commit",
        "-qm",
        "recorded",
    ]);
    let bare = dir.join("repo.git");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&bare)
        .status()
        .unwrap();
    assert!(status.success());
    bare
}

fn golden_report(dir: &Path) -> check::Report {
    let mut args = args();
    args.files = vec![check_dir().join("manifests")];
    args.config = Some(check_dir().join("config.yaml"));
    args.repo = Some(small_repo(dir));
    check::run(&args, &mut std::io::empty()).unwrap()
}

#[test]
fn a_directory_of_manifests_gives_the_golden_text_json_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let report = golden_report(dir.path());

    // What the goldens must show, asserted here too so a regenerated golden cannot
    // quietly accept a wrong verdict.
    let by_name = |name: &str| {
        report
            .results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no result for {name}"))
    };
    assert!(!by_name("web").allowed, "Flux-managed: denied");
    assert!(by_name("web")
        .message
        .as_deref()
        .unwrap()
        .contains("Flux Kustomization flux-system/apps"));
    assert!(!by_name("oversized").allowed, "oversized: denied");
    assert!(!by_name("db-password").allowed, "secrets: deny");
    assert!(by_name("reader").allowed, "List item");
    assert!(by_name("team-b").allowed, "List item");
    let settings = by_name("settings");
    assert!(settings.allowed);
    let diff = settings.diff.as_deref().unwrap();
    assert!(
        diff.contains("-  color: red") && diff.contains("+  color: blue"),
        "{diff}"
    );
    assert!(by_name("fresh")
        .diff
        .as_deref()
        .unwrap()
        .contains("--- /dev/null"));
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].source.ends_with("broken.yaml:6"),
        "{:?}",
        report.errors
    );
    assert_eq!(report.exit_code(), 2);

    golden("text.txt", &check::render_text(&report));
    golden("report.json", &check::render_json(&report));
    golden("junit.xml", &check::render_junit(&report));
}

#[test]
fn the_junit_output_reads_back_with_a_junit_parser() {
    let dir = tempfile::tempdir().unwrap();
    let report = golden_report(dir.path());
    let xml = check::render_junit(&report);
    let suites =
        junit_parser::from_reader(std::io::Cursor::new(xml.as_bytes())).expect("valid JUnit XML");
    let suite = &suites.suites[0];
    assert_eq!(
        suite.cases.len(),
        report.results.len() + report.errors.len()
    );
    let failures = suite.cases.iter().filter(|c| c.status.is_failure()).count();
    let errors = suite.cases.iter().filter(|c| c.status.is_error()).count();
    assert_eq!(failures, 3, "Flux-managed, oversized, Secret");
    assert_eq!(errors, 1, "the broken file");
    assert_eq!(suite.failures, 3);
    let web = suite
        .cases
        .iter()
        .find(|c| c.name.contains("Deployment team-a/web"))
        .unwrap();
    assert!(web
        .status
        .failure_as_ref()
        .message
        .contains("gitopsManaged"));
}

fn kubescribe(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_are_zero_allowed_one_denied_two_bad_input() {
    let config = check_dir().join("config.yaml");
    let config = config.to_str().unwrap();
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: team-a\ndata:\n  k: v\n";
    let (code, out, _) = kubescribe(&["check", "-f", "-", "--config", config], configmap);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ALLOW ConfigMap team-a/a: records team-a/core/configmaps/a.yaml"),
        "{out}"
    );

    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: team-a\n";
    let (code, out, _) = kubescribe(
        &["check", "-f", "-", "--config", config, "-o", "json"],
        secret,
    );
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(report["allowed"], false);
    assert_eq!(report["results"][0]["findings"][0]["rail"], "secrets");

    let (code, out, _) = kubescribe(&["check", "-f", "-"], "kind: [\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("ERROR -:") && out.contains("invalid YAML"),
        "{out}"
    );

    let (code, _, err) = kubescribe(&["check"], "");
    assert_eq!(code, 2);
    assert!(err.contains("nothing to check"), "{err}");

    let (code, _, err) = kubescribe(&["check", "--operation", "patch", "-f", "-"], "");
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("patch"), "{err}");
}

#[test]
fn delete_and_update_are_checked_as_asked() {
    let mut args = args();
    args.files = vec![check_dir().join("manifests/configmaps.yaml")];
    args.operation = CheckOperation::Delete;
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    assert!(report.results.iter().all(|r| r.operation == "delete"));
    assert_eq!(
        report.results[0].path.as_deref(),
        Some("team-a/core/configmaps/settings.yaml")
    );
}

#[test]
fn deleting_a_namespace_shows_the_files_that_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("namespace.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n",
    )
    .unwrap();
    let mut args = args();
    args.files = vec![manifest];
    args.config = Some(check_dir().join("config.yaml"));
    args.operation = CheckOperation::Delete;
    let without_repo = check::run(&args, &mut std::io::empty()).unwrap();
    assert_eq!(
        without_repo.results[0].warnings,
        ["kubescribe: also removes the files of the objects in namespace team-a from git"]
    );
    args.repo = Some(small_repo(dir.path()));
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &report.results[0];
    assert!(result.allowed);
    assert_eq!(
        result.warnings,
        ["kubescribe: also removes 1 file of the objects in namespace team-a from git: team-a/core/configmaps/settings.yaml"]
    );
    let diff = result.diff.as_deref().unwrap();
    assert!(
        diff.contains("--- a/team-a/core/configmaps/settings.yaml\n+++ /dev/null")
            && diff.contains("-  color: red"),
        "{diff}"
    );
}

#[test]
fn a_real_repository_is_checked_without_reading_charts_or_kustomizations_as_objects() {
    let mut args = args();
    args.files = vec![real_repository("stefanprodan__podinfo")];
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    assert!(
        report.errors.is_empty(),
        "no chart template or kustomization is an input error: {:#?}",
        report.errors
    );
    let skipped: Vec<&str> = report.skipped.iter().map(|s| s.message.as_str()).collect();
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.source.ends_with("charts/podinfo") && s.message.contains("helm template")),
        "{skipped:?}"
    );
    assert!(
        report.skipped.iter().any(
            |s| s.source.ends_with("deploy/overlays/dev/kustomization.yaml")
                && s.message.contains("kubescribe check -k")
        ),
        "{skipped:?}"
    );
    assert!(
        report.results.iter().all(|r| !r.name.is_empty()),
        "no object named \"\""
    );
    let text = check::render_text(&report);
    assert!(
        text.contains("SKIP  ") && text.contains(" skipped\n"),
        "{text}"
    );
}

/// cert-manager's ClusterIssuer `letsencrypt`, checked as the cluster-scoped object it
/// is, with no word of a guess.
fn assert_cluster_scoped_issuer(issuer: &check::CheckResult) {
    assert_eq!(issuer.namespace, None);
    assert_eq!(
        issuer.path.as_deref(),
        Some("_cluster/cert-manager.io/clusterissuers/letsencrypt.yaml")
    );
    assert!(issuer
        .warnings
        .iter()
        .all(|w| !w.contains("not a built-in kind")));
}

#[test]
fn a_kind_s_scope_comes_from_its_crd_in_the_input_or_is_said_to_be_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata:\n  name: letsencrypt\nspec: {}\n";
    std::fs::write(dir.path().join("issuer.yaml"), issuer).unwrap();
    let mut args = args();
    args.files = vec![dir.path().join("issuer.yaml")];
    let guessed = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &guessed.results[0];
    assert_eq!(result.namespace.as_deref(), Some("default"));
    assert!(
        result.warnings.iter().any(|w| w
            .contains("ClusterIssuer of cert-manager.io is not a built-in kind")
            && w.contains("add its CRD")),
        "{:?}",
        result.warnings
    );

    std::fs::write(
        dir.path().join("crd.yaml"),
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: clusterissuers.cert-manager.io\nspec:\n  group: cert-manager.io\n  scope: Cluster\n  names:\n    kind: ClusterIssuer\n    plural: clusterissuers\n  versions: []\n",
    )
    .unwrap();
    args.files = vec![dir.path().to_owned()];
    let known = check::run(&args, &mut std::io::empty()).unwrap();
    let issuer = known
        .results
        .iter()
        .find(|r| r.kind == "ClusterIssuer")
        .unwrap();
    assert_cluster_scoped_issuer(issuer);
}

#[test]
fn kubectl_api_resources_gives_the_scope_and_resource_of_a_kind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("issuer.yaml"),
        "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata:\n  name: letsencrypt\n---\napiVersion: example.com/v1\nkind: Octopus\nmetadata:\n  name: paul\n",
    )
    .unwrap();
    // As `kubectl api-resources -o wide` prints it: SHORTNAMES is often empty.
    std::fs::write(
        dir.path().join("api-resources.txt"),
        "NAME              SHORTNAMES   APIVERSION           NAMESPACED   KIND            VERBS\nbindings                       v1                   true         Binding         create\nclusterissuers                 cert-manager.io/v1   false        ClusterIssuer   delete,get,list\noctopi            oc           example.com/v1       true         Octopus         get,list\n",
    )
    .unwrap();
    let mut args = args();
    args.files = vec![dir.path().join("issuer.yaml")];
    args.api_resources = Some(dir.path().join("api-resources.txt"));
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let issuer = &report.results[0];
    assert_cluster_scoped_issuer(issuer);
    // Its resource is the cluster's plural, not an English guess.
    assert_eq!(
        report.results[1].path.as_deref(),
        Some("default/example.com/octopi/paul.yaml")
    );
}

/// podinfo as its maintainers keep it, checked out and committed in `dir`, and a
/// config recording everything with `inPlace` on.
fn podinfo_checkout(dir: &Path) -> (PathBuf, PathBuf) {
    let work = dir.join("podinfo");
    let status = Command::new("cp")
        .arg("-r")
        .arg(real_repository("stefanprodan__podinfo"))
        .arg(&work)
        .status()
        .unwrap();
    assert!(status.success());
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=M",
            "-c",
            "user.email=m@example.com",
            "commit",
            "-q",
            "-m",
            "as kept",
        ],
    ] {
        let status = Command::new("git")
            .args(args)
            .current_dir(&work)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "repository:\n  inPlace:\n    enabled: true\nrules:\n- name: all\n  namespaces: [\"*\"]\n",
    )
    .unwrap();
    (work, config)
}

#[test]
fn check_repo_shows_the_in_place_diff_of_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let (work, config) = podinfo_checkout(dir.path());
    let manifest = dir.path().join("backend.yaml");
    let text = std::fs::read_to_string(work.join("deploy/webapp/backend/deployment.yaml"))
        .unwrap()
        .replace("podinfo:6.14.1", "podinfo:6.15.0");
    std::fs::write(&manifest, text).unwrap();
    let mut args = args();
    args.config = Some(config);
    args.repo = Some(work);
    args.operation = CheckOperation::Update;
    args.files = vec![manifest];
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &report.results[0];
    assert_eq!(
        result.path.as_deref(),
        Some("deploy/webapp/backend/deployment.yaml")
    );
    let diff = result.diff.as_deref().unwrap();
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('-') || l.starts_with('+'))
                && !l.starts_with("---")
                && !l.starts_with("+++")
        })
        .collect();
    assert_eq!(
        changed,
        [
            "-        image: ghcr.io/stefanprodan/podinfo:6.14.1",
            "+        image: ghcr.io/stefanprodan/podinfo:6.15.0"
        ],
        "{diff}"
    );
}

#[test]
fn with_in_place_on_check_repo_answers_as_the_webhook_does_for_a_repository_people_keep() {
    let dir = tempfile::tempdir().unwrap();
    let (work, config) = podinfo_checkout(dir.path());
    let flags = dir.path().join("flags.yaml");
    std::fs::write(
        &flags,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: flags\n  namespace: webapp\ndata:\n  beta: \"on\"\n",
    )
    .unwrap();
    let mut args = args();
    args.config = Some(config);
    args.repo = Some(work.clone());
    args.files = vec![work.join("deploy/webapp/backend/service.yaml"), flags];
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    assert_eq!(report.results.len(), 2, "{:#?}", report.results);
    let declared = &report.results[0];
    assert!(declared.allowed);
    assert_eq!(
        declared.path.as_deref(),
        Some("deploy/webapp/backend/service.yaml")
    );
    assert!(
        declared.warnings.iter().any(|w| w.contains(
            "Service webapp/backend is already declared in deploy/webapp/backend/service.yaml"
        )),
        "{:?}",
        declared.warnings
    );
    let new = &report.results[1];
    assert_eq!(
        new.path.as_deref(),
        Some("deploy/webapp/common/flags-configmap.yaml")
    );
    let diff = new.diff.as_deref().unwrap();
    assert!(
        diff.contains("+++ b/deploy/webapp/common/flags-configmap.yaml")
            && diff.contains("+  beta: 'on'"),
        "{diff}"
    );
}

#[test]
fn a_kustomization_is_checked_as_kubectl_apply_k_would_send_it() {
    let kubectl = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/kubectl");
    assert!(
        kubectl.exists(),
        "{} is missing: `make deps` (scripts/install-helm.sh) installs it",
        kubectl.display()
    );
    let mut args = args();
    args.kustomize = vec![real_repository("stefanprodan__podinfo").join("deploy/overlays/dev")];
    // The one test here that sets it: the variable is the process's.
    std::env::set_var(
        "KUBESCRIBE_KUSTOMIZE",
        format!("{} kustomize", kubectl.display()),
    );
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.results.len() > 20, "{}", report.results.len());
    // kustomize's namespace, generators and hashes, as the apiserver would get them.
    assert!(report
        .results
        .iter()
        .filter(|r| r.kind != "Namespace")
        .all(|r| r.namespace.as_deref() == Some("dev")));
    let backend = report
        .results
        .iter()
        .find(|r| r.kind == "Deployment" && r.name == "backend")
        .unwrap();
    assert!(
        backend.source.contains("deploy/overlays/dev (kustomize):"),
        "{}",
        backend.source
    );
    assert!(report.results.iter().any(|r| r.kind == "ConfigMap"
        && r.name.starts_with("redis-config-")
        && r.name.len() == "redis-config-".len() + 10));

    // Without a renderer, the error says what to do.
    std::env::set_var("KUBESCRIBE_KUSTOMIZE", "/nonexistent/kubectl kustomize");
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    std::env::remove_var("KUBESCRIBE_KUSTOMIZE");
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].message.contains("install kubectl")
            && report.errors[0].message.contains("| kubescribe check -f -"),
        "{}",
        report.errors[0].message
    );
    assert_eq!(report.exit_code(), 2);
}

#[test]
fn check_repo_never_shows_a_person_s_file_rewritten_where_it_cannot_be_edited() {
    let dir = tempfile::tempdir().unwrap();
    let (work, config) = podinfo_checkout(dir.path());
    // A later document of the Service's file does not parse: the webhook would
    // not edit the file by guess.
    let file = work.join("deploy/webapp/backend/service.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}---\nkind: [broken\n")).unwrap();
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=M",
            "-c",
            "user.email=m@example.com",
            "commit",
            "-q",
            "-am",
            "broken",
        ])
        .current_dir(&work)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = dir.path().join("service.yaml");
    std::fs::write(
        &manifest,
        text.replace("name: backend\n", "name: backend\n  labels:\n    team: a\n"),
    )
    .unwrap();
    let mut args = args();
    args.config = Some(config);
    args.repo = Some(work);
    args.operation = CheckOperation::Update;
    args.files = vec![manifest];
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &report.results[0];
    assert_eq!(
        result.path.as_deref(),
        Some("deploy/webapp/backend/service.yaml")
    );
    assert_eq!(result.diff.as_deref(), Some(""), "no canonical rewrite");
}

#[test]
fn with_overlay_patch_check_repo_shows_the_edit_of_the_overlay_that_sets_the_field() {
    let (dir, _) = seeded_files(OVERLAID);
    let work = dir.path().join("work");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "repository:\n  inPlace:\n    enabled: true\n    overlay: patch\nrules:\n- name: all\n  namespaces: [\"*\"]\n",
    )
    .unwrap();
    // The overlay's rendering, with a new release.
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: prod
spec:
  replicas: 3
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
        image: registry.example/web:1.3
        env:
        - name: MODE
          value: fast
        resources:
          limits:
            memory: 256Mi
",
    )
    .unwrap();
    let mut args = args();
    args.config = Some(config);
    args.repo = Some(work);
    args.operation = CheckOperation::Update;
    args.files = vec![manifest];
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let diff = report.results[0].diff.as_deref().unwrap();
    let changed: Vec<&str> = diff.lines().filter(|l| l.starts_with(['-', '+'])).collect();
    assert_eq!(
        changed,
        [
            "--- a/overlays/prod/kustomization.yaml",
            "+++ b/overlays/prod/kustomization.yaml",
            "-    newTag: \"1.2\" # the release",
            "+    newTag: \"1.3\" # the release",
        ],
        "only the overlay's tag changes: {diff}"
    );
}

#[test]
fn with_overlay_patch_check_repo_says_what_the_store_would_refuse() {
    // An inline JSON patch sets the replicas: the store would not guess.
    let files = overlaid_with_json_patch();
    let (dir, _) = seeded_files(&files);
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "repository:\n  inPlace:\n    enabled: true\n    overlay: patch\nrules:\n- name: all\n  namespaces: [\"*\"]\n  wait: commit\n",
    )
    .unwrap();
    let manifest = dir.path().join("web.yaml");
    let base = std::fs::read_to_string(dir.path().join("work/base/deployment.yaml")).unwrap();
    std::fs::write(
        &manifest,
        base.replace("  name: web\n", "  name: web\n  namespace: prod\n")
            .replace("replicas: 1", "replicas: 4"),
    )
    .unwrap();
    let mut args = args();
    args.config = Some(config);
    args.repo = Some(dir.path().join("work"));
    args.operation = CheckOperation::Update;
    args.files = vec![manifest];
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &report.results[0];
    assert!(!result.allowed, "{result:?}");
    let message = result.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("a JSON patch in overlays/prod/kustomization.yaml sets spec.replicas"),
        "{message}"
    );
    assert_eq!(result.diff.as_deref(), Some(""));
}

/// A write under a `review` rule is checked as the webhook answers it: denied,
/// and what would be proposed in a pull request.
#[test]
fn a_review_rule_is_checked_as_a_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "repository:\n  remote:\n    url: file:///nowhere\nrules:\n- name: review\n  wait: push\n  then: deny\n  review:\n    forge: gitlab\n    api: https://gitlab.example.com/api/v4\n    project: team/apps\n    tokenFile: {}\n",
            dir.path().join("token").display()
        ),
    )
    .unwrap();
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: team-a\ndata:\n  k: v\n";
    let (code, out, err) = kubescribe(
        &[
            "check",
            "-f",
            "-",
            "--config",
            config.to_str().unwrap(),
            "-o",
            "json",
        ],
        configmap,
    );
    assert_eq!(code, 1, "denied: {out}{err}");
    let report: Value = serde_json::from_str(&out).expect("JSON output");
    let result = &report["results"][0];
    assert_eq!(result["decision"], "proposed");
    assert_eq!(result["rule"], "review");
    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains("would propose team-a/core/configmaps/a.yaml in a pull request"),
        "{message}"
    );
}
