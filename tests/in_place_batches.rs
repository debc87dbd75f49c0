//! Edits in place when several writes meet in one batch, or wait for a retry: a
//! delete that shifts a file's documents, an object created and changed before the
//! index knows its file, a failed change and a newer one to another object of the
//! same file. (Found by an independent review; each was wrong before.)

mod common;

use std::path::{Path, PathBuf};

use common::gitops::seeded_files;
use common::{allowed, body, eventually, git, TestServer};
use kubescribe::fault::{Faults, Gate, Switch};
use serde_json::{json, Value};

fn config(repo: &Path) -> String {
    format!(
        "repository:\n  path: {}\n  inPlace:\n    enabled: true\nrules:\n- name: all\n  namespaces: [\"*\"]\n  wait: none\n",
        repo.display()
    )
}

fn review(
    n: u32,
    operation: &str,
    (group, version, kind, resource): (&str, &str, &str, &str),
    name: &str,
    (old, new): (Option<Value>, Option<Value>),
) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": format!("00000000-0000-4000-8000-{n:012}"),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "name": name, "namespace": "shop", "operation": operation,
        "userInfo": {"username": "alice", "groups": ["devs"]},
        "object": new, "oldObject": old, "dryRun": false, "options": {}}})
}

const DEPLOYMENT: (&str, &str, &str, &str) = ("apps", "v1", "Deployment", "deployments");
const CONFIGMAP: (&str, &str, &str, &str) = ("", "v1", "ConfigMap", "configmaps");

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
      "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                   "resourceVersion": "5", "creationTimestamp": "2026-01-01T00:00:00Z"},
      "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
}

fn configmap(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
      "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                   "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z"},
      "data": {"a": value}})
}

const THREE: &str = "# the shop\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: old\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: old:1\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-canary\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web:2-rc\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web:1\n";

const TWO: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web:1\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n  namespace: shop\ndata:\n  a: \"1\"\n";

async fn send(server: &TestServer, review: &Value) {
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=10s", body(review))
        .await
        .expect("answered");
    assert_eq!(status, 200, "{answer}");
    assert!(allowed(&answer), "{answer}");
}

fn commits(repo: &Path) -> usize {
    git(repo, &["rev-list", "--count", "main"])
        .trim()
        .parse()
        .unwrap()
}

/// Holds the writer on a batch of its own (a ConfigMap elsewhere) at the `disk` gate,
/// so what is sent next is committed together in the next batch.
async fn hold_writer(server: &TestServer, disk: &Gate) {
    let mut hold = review(
        100,
        "CREATE",
        CONFIGMAP,
        "hold",
        (None, Some(configmap("hold", "x"))),
    );
    hold["request"]["namespace"] = json!("elsewhere");
    hold["request"]["object"]["metadata"]["namespace"] = json!("elsewhere");
    send(server, &hold).await;
    disk.arrivals(1).await;
}

/// Sends `review` with a 3 s deadline in the background: its answer, once given.
fn answer_in_3s(
    server: &std::sync::Arc<TestServer>,
    review: Value,
) -> tokio::task::JoinHandle<Value> {
    let server = server.clone();
    tokio::spawn(async move {
        let (status, answer) = server
            .connect()
            .await
            .review("/validate?timeout=3s", body(&review))
            .await
            .expect("answered");
        assert_eq!(status, 200);
        answer
    })
}

/// Sends `reviews` while the writer is held on an earlier batch, so they are
/// committed together in the next one; returns once they are.
async fn in_one_batch(server: &TestServer, repo: &Path, disk: &Gate, reviews: &[Value]) {
    let start = commits(repo);
    hold_writer(server, disk).await;
    for review in reviews {
        send(server, review).await;
    }
    disk.open();
    let wanted = start + 1 + reviews.len();
    eventually(
        std::time::Duration::from_secs(20),
        "the batch is committed",
        || commits(repo) >= wanted,
    )
    .await;
}

/// Polls a gauge of the server's /metrics until it reaches `value`: the writer takes
/// and fails batches on its own schedule.
async fn at_least(server: &TestServer, sample: &str, value: f64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (now, text) = common::sample_of(server, sample).await;
        if now.is_some_and(|v| v >= value) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{sample} < {value}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn show(repo: &Path, path: &str) -> String {
    git(repo, &["show", &format!("main:{path}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_earlier_in_the_batch_does_not_move_a_later_edit_to_another_document() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", THREE)]);
    let disk = Gate::closed();
    let faults = Faults {
        before_durable: Some(disk.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config(&repo), faults).await;
    in_one_batch(
        &server,
        &repo,
        &disk,
        &[
            review(
                1,
                "DELETE",
                DEPLOYMENT,
                "old",
                (Some(deployment("old", "old:1")), None),
            ),
            review(
                2,
                "UPDATE",
                DEPLOYMENT,
                "web-canary",
                (
                    Some(deployment("web-canary", "web:2-rc")),
                    Some(deployment("web-canary", "web:2")),
                ),
            ),
        ],
    )
    .await;
    let text = show(&repo, "apps/web.yaml");
    assert!(!text.contains("name: old"), "{text}");
    assert!(
        text.contains("name: web-canary\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web:2\n"),
        "{text}"
    );
    assert!(text.ends_with("name: web\n  namespace: shop\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web:1\n"), "{text}");
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_created_and_changed_in_one_batch_is_written_once() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", THREE)]);
    let disk = Gate::closed();
    let faults = Faults {
        before_durable: Some(disk.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config(&repo), faults).await;
    in_one_batch(
        &server,
        &repo,
        &disk,
        &[
            review(
                1,
                "CREATE",
                CONFIGMAP,
                "x",
                (None, Some(configmap("x", "1"))),
            ),
            review(
                2,
                "UPDATE",
                CONFIGMAP,
                "x",
                (Some(configmap("x", "1")), Some(configmap("x", "2"))),
            ),
        ],
    )
    .await;
    // Created beside the shop's other objects, and changed there, not a second time
    // where the path template says.
    let tree = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(tree.lines().any(|l| l == "apps/x-configmap.yaml"), "{tree}");
    assert!(!tree.contains("shop/core/configmaps/x.yaml"), "{tree}");
    assert!(show(&repo, "apps/x-configmap.yaml").contains("a: '2'"));
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_admitted_while_its_create_is_committed_removes_the_new_file() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", THREE)]);
    let disk = Gate::closed();
    let faults = Faults {
        before_durable: Some(disk.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config(&repo), faults).await;
    let start = commits(&repo);
    send(
        &server,
        &review(
            1,
            "CREATE",
            CONFIGMAP,
            "x",
            (None, Some(configmap("x", "1"))),
        ),
    )
    .await;
    disk.arrivals(1).await;
    send(
        &server,
        &review(
            2,
            "DELETE",
            CONFIGMAP,
            "x",
            (Some(configmap("x", "1")), None),
        ),
    )
    .await;
    disk.open();
    eventually(
        std::time::Duration::from_secs(20),
        "both are committed",
        || commits(&repo) >= start + 2,
    )
    .await;
    let tree = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(!tree.contains("x-configmap.yaml"), "{tree}");
    assert!(!tree.contains("shop/core/configmaps/x.yaml"), "{tree}");
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_waiting_for_its_retry_survives_a_newer_change_to_another_object_of_its_file() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", TWO)]);
    let failing = Switch::default();
    let faults = Faults {
        failing_disk: Some(failing.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config(&repo), faults).await;
    failing.set(true);
    send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "web",
            (
                Some(deployment("web", "web:1")),
                Some(deployment("web", "web:2")),
            ),
        ),
    )
    .await;
    // The writer fails the batch on its own schedule: wait until the change waits
    // for its retry.
    at_least(&server, "kubescribe_store_retry_depth", 1.0).await;
    failing.set(false);
    send(
        &server,
        &review(
            2,
            "UPDATE",
            CONFIGMAP,
            "web-config",
            (
                Some(configmap("web-config", "1")),
                Some(configmap("web-config", "2")),
            ),
        ),
    )
    .await;
    eventually(
        std::time::Duration::from_secs(30),
        "both are in the file",
        || {
            let text = show(&repo, "apps/web.yaml");
            text.contains("image: web:2") && text.contains("a: \"2\"")
        },
    )
    .await;
    server.server.shutdown().await.unwrap();
}

/// A bare clone of `repo` to push to, and a config with it as the remote.
fn with_remote(repo: &Path, rules: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote.git");
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo)
        .arg(&remote)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = format!(
        "repository:\n  path: {}\n  remote:\n    url: file://{}\n  inPlace:\n    enabled: true\nrules:\n{rules}",
        repo.display(),
        remote.display()
    );
    (dir, remote, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_edit_is_taken_out_of_its_file_even_after_another_object_of_the_file_changed() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", TWO)]);
    let (_remote_dir, remote, config) = with_remote(
        &repo,
        "- name: deployments\n  resources: [deployments]\n  wait: push\n- name: rest\n  wait: none\n",
    );
    let disk = Gate::closed();
    let pushed = Gate::closed();
    let faults = Faults {
        before_durable: Some(disk.clone()),
        after_push: Some(pushed.clone()),
        ..Faults::default()
    };
    let server = std::sync::Arc::new(TestServer::start_with_faults(dir, &config, faults).await);
    // The writer is held, so A and B go into one batch.
    hold_writer(&server, &disk).await;
    // A waits for its push, which the remote accepts too late for A's deadline.
    let a = answer_in_3s(
        &server,
        review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "web",
            (
                Some(deployment("web", "web:1")),
                Some(deployment("web", "web:2")),
            ),
        ),
    );
    at_least(&server, "kubescribe_store_queue_depth", 1.0).await;
    // B: another object of the same file, admitted.
    send(
        &server,
        &review(
            2,
            "UPDATE",
            CONFIGMAP,
            "web-config",
            (
                Some(configmap("web-config", "1")),
                Some(configmap("web-config", "2")),
            ),
        ),
    )
    .await;
    disk.open();
    let a = a.await.unwrap();
    assert!(!allowed(&a), "{a}");
    pushed.open();
    // A is reverted everywhere; B stays.
    eventually(
        std::time::Duration::from_secs(30),
        "the remote has B without A",
        || {
            let text = git(&remote, &["show", "main:apps/web.yaml"]);
            text.contains("image: web:1") && text.contains("a: \"2\"")
        },
    )
    .await;
    let text = show(&repo, "apps/web.yaml");
    assert!(
        text.contains("image: web:1") && text.contains("a: \"2\""),
        "{text}"
    );
    // A was committed, then reverted by a commit of its own.
    let log = git(&repo, &["log", "--format=%s", "main"]);
    assert!(
        log.contains("revert update apps/v1 Deployment shop/web"),
        "{log}"
    );
    assert!(
        log.contains("\nupdate apps/v1 Deployment shop/web\n"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_edit_keeps_what_a_person_pushed_to_another_object_of_the_file() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", TWO)]);
    let (remote_dir, remote, config) = with_remote(&repo, "- name: all\n  wait: commit\n");
    let held = Gate::closed();
    let faults = Faults {
        before_push: Some(held.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config, faults).await;
    send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "web",
            (
                Some(deployment("web", "web:1")),
                Some(deployment("web", "web:2")),
            ),
        ),
    )
    .await;
    held.arrivals(1).await;
    // Meanwhile a person changes the ConfigMap of the same file, and pushes first.
    let work = remote_dir.path().join("work");
    let run = |args: &[&str], cwd: &Path| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "Person")
            .env("GIT_AUTHOR_EMAIL", "p@example.com")
            .env("GIT_COMMITTER_NAME", "Person")
            .env("GIT_COMMITTER_EMAIL", "p@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    run(
        &[
            "clone",
            "-q",
            remote.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
        remote_dir.path(),
    );
    let file = work.join("apps/web.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "a: \"1\"\n",
        "a: \"1\"\n  b: \"person\" # added by a person\n",
    );
    std::fs::write(&file, text).unwrap();
    run(&["commit", "-q", "-am", "a person's change"], &work);
    run(&["push", "-q", "origin", "main"], &work);
    held.open();
    eventually(
        std::time::Duration::from_secs(30),
        "the remote has both",
        || {
            let text = git(&remote, &["show", "main:apps/web.yaml"]);
            text.contains("image: web:2") && text.contains("b: \"person\" # added by a person")
        },
    )
    .await;
    server.server.shutdown().await.unwrap();
}

/// A person clones the remote, runs `change` on `apps/web.yaml`, and pushes.
fn a_person_pushes(remote: &Path, scratch: &Path, change: impl FnOnce(String) -> String) {
    let work = scratch.join("person");
    let run = |args: &[&str], cwd: &Path| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "Person")
            .env("GIT_AUTHOR_EMAIL", "p@example.com")
            .env("GIT_COMMITTER_NAME", "Person")
            .env("GIT_COMMITTER_EMAIL", "p@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    run(
        &[
            "clone",
            "-q",
            remote.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
        scratch,
    );
    let file = work.join("apps/web.yaml");
    std::fs::write(&file, change(std::fs::read_to_string(&file).unwrap())).unwrap();
    run(&["commit", "-q", "-am", "a person's change"], &work);
    run(&["push", "-q", "origin", "main"], &work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_edit_and_its_revert_replayed_onto_a_person_s_push_never_reach_the_remote() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", TWO)]);
    let (remote_dir, remote, config) = with_remote(
        &repo,
        "- name: deployments\n  resources: [deployments]\n  wait: push\n- name: rest\n  wait: none\n",
    );
    let held = Gate::closed();
    let faults = Faults {
        before_push: Some(held.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config, faults).await;
    // A waits for a push that is held past its deadline: denied, and reverted.
    let review = review(
        1,
        "UPDATE",
        DEPLOYMENT,
        "web",
        (
            Some(deployment("web", "web:1")),
            Some(deployment("web", "web:2")),
        ),
    );
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=3s", body(&review))
        .await
        .expect("answered");
    assert_eq!(status, 200);
    assert!(!allowed(&answer), "{answer}");
    eventually(
        std::time::Duration::from_secs(20),
        "reverted locally",
        || git(&repo, &["log", "--format=%s", "main"]).contains("revert update"),
    )
    .await;
    // A person pushes a change to the other object of the file first.
    a_person_pushes(&remote, remote_dir.path(), |text| {
        text.replace("a: \"1\"\n", "a: \"1\"\n  b: \"person\"\n")
    });
    held.open();
    eventually(
        std::time::Duration::from_secs(30),
        "the remote has the revert",
        || git(&remote, &["log", "--format=%s", "main"]).contains("revert update"),
    )
    .await;
    let text = git(&remote, &["show", "main:apps/web.yaml"]);
    assert!(text.contains("image: web:1"), "{text}");
    assert!(text.contains("b: \"person\""), "{text}");
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_new_object_leaves_no_entry_in_its_kustomization() {
    let (dir, repo) = seeded_files(&[
        ("apps/kustomization.yaml", "resources:\n- web.yaml\n"),
        ("apps/web.yaml", TWO),
    ]);
    let (_remote_dir, remote, config) = with_remote(
        &repo,
        "- name: deployments\n  resources: [deployments]\n  wait: push\n- name: rest\n  wait: none\n",
    );
    let disk = Gate::closed();
    let pushed = Gate::closed();
    let faults = Faults {
        before_durable: Some(disk.clone()),
        after_push: Some(pushed.clone()),
        ..Faults::default()
    };
    let server = std::sync::Arc::new(TestServer::start_with_faults(dir, &config, faults).await);
    hold_writer(&server, &disk).await;
    // A: a new Deployment, denied after its commit; B: a new ConfigMap, kept. Both
    // go beside the shop's objects and into the same kustomization.
    let a = answer_in_3s(
        &server,
        review(
            1,
            "CREATE",
            DEPLOYMENT,
            "a",
            (None, Some(deployment("a", "a:1"))),
        ),
    );
    at_least(&server, "kubescribe_store_queue_depth", 1.0).await;
    send(
        &server,
        &review(
            2,
            "CREATE",
            CONFIGMAP,
            "b",
            (None, Some(configmap("b", "1"))),
        ),
    )
    .await;
    disk.open();
    let a = a.await.unwrap();
    assert!(!allowed(&a), "{a}");
    pushed.open();
    eventually(
        std::time::Duration::from_secs(30),
        "the remote has the revert",
        || git(&remote, &["log", "--format=%s", "main"]).contains("revert create"),
    )
    .await;
    for git_dir in [repo.as_path(), remote.as_path()] {
        let tree = git(git_dir, &["ls-tree", "-r", "--name-only", "main"]);
        assert!(!tree.contains("apps/a-deployment.yaml"), "{tree}");
        assert!(tree.contains("apps/b-configmap.yaml"), "{tree}");
        let listed = git(git_dir, &["show", "main:apps/kustomization.yaml"]);
        assert_eq!(listed, "resources:\n- web.yaml\n- b-configmap.yaml\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_whose_only_files_kubescribe_wrote_removes_them() {
    let (dir, repo) = seeded_files(&[("apps/web.yaml", TWO)]);
    let server = TestServer::start_in(dir, &config(&repo)).await;
    let start = commits(&repo);
    let mut create = review(
        1,
        "CREATE",
        CONFIGMAP,
        "x",
        (None, Some(configmap("x", "1"))),
    );
    create["request"]["namespace"] = json!("scratch");
    create["request"]["object"]["metadata"]["namespace"] = json!("scratch");
    send(&server, &create).await;
    eventually(std::time::Duration::from_secs(20), "created", || {
        commits(&repo) > start
    })
    .await;
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "scratch", "uid": "u1", "resourceVersion": "3",
                     "creationTimestamp": "2026-12-07T05:00:00Z"}});
    let mut delete = review(
        2,
        "DELETE",
        ("", "v1", "Namespace", "namespaces"),
        "scratch",
        (Some(namespace), None),
    );
    delete["request"]["namespace"] = json!("scratch");
    send(&server, &delete).await;
    eventually(
        std::time::Duration::from_secs(20),
        "the namespace's file goes",
        || !git(&repo, &["ls-tree", "-r", "--name-only", "main"]).contains("scratch/"),
    )
    .await;
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_deleted_and_created_again_before_the_delete_is_committed_stays_in_git() {
    // `kubectl replace --force`: a delete, then a create, of an object a person's
    // file declares.
    let (dir, repo) = seeded_files(&[("apps/web.yaml", THREE)]);
    let disk = Gate::closed();
    let faults = Faults {
        before_durable: Some(disk.clone()),
        ..Faults::default()
    };
    let server = TestServer::start_with_faults(dir, &config(&repo), faults).await;
    in_one_batch(
        &server,
        &repo,
        &disk,
        &[
            review(
                1,
                "DELETE",
                DEPLOYMENT,
                "old",
                (Some(deployment("old", "old:1")), None),
            ),
            review(
                2,
                "CREATE",
                DEPLOYMENT,
                "old",
                (None, Some(deployment("old", "old:2"))),
            ),
        ],
    )
    .await;
    let text = show(&repo, "apps/web.yaml");
    assert!(!text.contains("name: old"), "{text}");
    let again = show(&repo, "shop/apps/deployments/old.yaml");
    assert!(again.contains("image: old:2"), "{again}");
    server.server.shutdown().await.unwrap();
}
