//! A server whose branch starts as a real GitOps repository (tests/fixtures/repos/,
//! stefanprodan/podinfo as its author keeps it) with `inPlace` on: admitted writes
//! become edits of the documents people maintain, in their files, by the person who
//! wrote; `git diff` shows only the changed fields; a delete takes the document, the
//! file and its kustomization entry; `kubectl kustomize` renders exactly the change;
//! no object is ever written a second time at the canonical path; and what cannot be
//! edited honestly (an object an overlay patches, one the branch already declares) is
//! answered, not guessed.

mod common;

use std::path::Path;

use common::gitops::{change_of, checkout, seeded_fixture};
use common::{allowed, body, git, message, warnings, TestServer};
use serde::Deserialize;
use serde_json::{json, Value};

const PODINFO: &str = "stefanprodan__podinfo";
const FLUX_HELM: &str = "fluxcd__flux2-kustomize-helm-example";

fn config(repo: &Path, overlay: &str) -> String {
    format!(
        "repository:\n  path: {}\n  inPlace:\n    enabled: true\n    overlay: {overlay}\n    namespaces:\n      kustomize: podinfo\nrules:\n- name: all\n  namespaces: [\"*\"]\n  wait: commit\n",
        repo.display()
    )
}

/// The first document of `path` on `main`, parsed.
fn document(repo: &Path, path: &str) -> Value {
    let text = git(repo, &["show", &format!("main:{path}")]);
    let first = serde_yaml_ng::Deserializer::from_str(&text).next().unwrap();
    Value::deserialize(first).unwrap()
}

/// What the apiserver holds for a document: its namespace, server fields and a
/// default the person never wrote.
fn live(mut object: Value, namespace: &str, n: u32) -> Value {
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(format!("0000000{n}-1111-4000-8000-000000000000"));
    object["metadata"]["resourceVersion"] = json!(format!("{}", 100 + n));
    object["metadata"]["creationTimestamp"] = json!("2026-12-07T05:00:00Z");
    object["metadata"]["generation"] = json!(3);
    object["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Update"}]);
    object["status"] = json!({"observedGeneration": 3});
    if let Some(containers) = object
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for container in containers {
            container["terminationMessagePath"] = json!("/dev/termination-log");
        }
    }
    object
}

/// An AdmissionReview by alice.
fn review(
    n: u32,
    operation: &str,
    (group, version, kind, resource): (&str, &str, &str, &str),
    namespace: &str,
    name: &str,
    (old, new): (Option<Value>, Option<Value>),
    sub_resource: Option<&str>,
) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{n:012}"),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "subResource": sub_resource,
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["devs", "system:authenticated"]},
            "object": new,
            "oldObject": old,
            "dryRun": false,
            "options": {},
        }
    })
}

const DEPLOYMENT: (&str, &str, &str, &str) = ("apps", "v1", "Deployment", "deployments");
const SERVICE: (&str, &str, &str, &str) = ("", "v1", "Service", "services");
const HPA: (&str, &str, &str, &str) = (
    "autoscaling",
    "v2",
    "HorizontalPodAutoscaler",
    "horizontalpodautoscalers",
);
const CONFIGMAP: (&str, &str, &str, &str) = ("", "v1", "ConfigMap", "configmaps");

async fn send(server: &TestServer, review: &Value) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=10s", body(review))
        .await
        .expect("answered");
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The files the last commit touched, and the lines it took out and put in.
fn last_diff(repo: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let change = change_of(repo, "main");
    (change.files, change.removed, change.added)
}

fn kubectl_kustomize(dir: &Path) -> Vec<Value> {
    let kubectl = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/kubectl");
    assert!(
        kubectl.exists(),
        "{} is missing: `make deps` (scripts/install-helm.sh) installs it",
        kubectl.display()
    );
    let out = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {out:?}",
        dir.display()
    );
    let mut objects: Vec<Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    objects.sort_by_key(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]));
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_become_minimal_edits_of_the_documents_people_keep() {
    let (dir, repo) = seeded_fixture(PODINFO);
    let server = TestServer::start_in(dir, &config(&repo, "deny")).await;
    let commits = |repo: &Path| {
        git(repo, &["rev-list", "--count", "main"])
            .trim()
            .to_owned()
    };

    // An image change: one line of deploy/webapp/backend/deployment.yaml.
    let path = "deploy/webapp/backend/deployment.yaml";
    let declared = document(&repo, path);
    let old = live(declared.clone(), "webapp", 1);
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("ghcr.io/stefanprodan/podinfo:6.15.0");
    new["metadata"]["resourceVersion"] = json!("201");
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "webapp",
            "backend",
            (Some(old), Some(new.clone())),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    assert!(
        warnings(&answer)
            .iter()
            .any(|w| w.starts_with("recorded ") && w.ends_with(path)),
        "{answer}"
    );
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert_eq!(
        removed,
        ["        image: ghcr.io/stefanprodan/podinfo:6.14.1"]
    );
    assert_eq!(
        added,
        ["        image: ghcr.io/stefanprodan/podinfo:6.15.0"]
    );
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%an <%ae>|%s", "main"]).trim(),
        "alice <alice@kubernetes.local>|update apps/v1 Deployment webapp/backend"
    );

    // A new env var on the same object: two lines added, by name, nothing else.
    let old = new.clone();
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "LOG_FORMAT", "value": "json"}));
    let answer = send(
        &server,
        &review(
            2,
            "UPDATE",
            DEPLOYMENT,
            "webapp",
            "backend",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(
        added,
        ["        - name: LOG_FORMAT", "          value: json"]
    );

    // A label on the Service: its lines only, in its own file.
    let path = "deploy/webapp/backend/service.yaml";
    let old = live(document(&repo, path), "webapp", 3);
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({"team": "payments"});
    let answer = send(
        &server,
        &review(
            3,
            "UPDATE",
            SERVICE,
            "webapp",
            "backend",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(added, ["  labels:", "    team: payments"]);

    // A scale write: spec.replicas in the frontend's document.
    let path = "deploy/webapp/frontend/deployment.yaml";
    let scale = |replicas: i64| {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
               "metadata": {"name": "frontend", "namespace": "webapp"},
               "spec": {"replicas": replicas}})
    };
    let answer = send(
        &server,
        &json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "00000000-0000-4000-8000-000000000004",
                "kind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "subResource": "scale",
                "name": "frontend",
                "namespace": "webapp",
                "operation": "UPDATE",
                "userInfo": {"username": "alice", "groups": ["devs"]},
                "object": scale(4),
                "oldObject": scale(1),
                "dryRun": false,
                "options": {},
            }
        }),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, _, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert_eq!(added, ["  replicas: 4"]);

    // A delete: the file goes (it held only this object); nothing lists it.
    let path = "deploy/webapp/backend/hpa.yaml";
    let old = live(document(&repo, path), "webapp", 5);
    let answer = send(
        &server,
        &review(
            5,
            "DELETE",
            HPA,
            "webapp",
            "backend",
            (Some(old), None),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, _, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert!(added.is_empty());

    // A delete in a kustomization: the file and its `resources:` entry go, and
    // `kubectl kustomize` renders everything else as before.
    let before_dir = server.dir.path().join("before");
    checkout(&repo, &before_dir);
    let before = kubectl_kustomize(&before_dir.join("kustomize"));
    let path = "kustomize/hpa.yaml";
    let old = live(document(&repo, path), "podinfo", 6);
    let answer = send(
        &server,
        &review(
            6,
            "DELETE",
            HPA,
            "podinfo",
            "podinfo",
            (Some(old), None),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(
        files,
        ["kustomize/hpa.yaml", "kustomize/kustomization.yaml"]
    );
    assert!(removed.contains(&"  - hpa.yaml".to_owned()), "{removed:?}");
    assert!(added.is_empty(), "{added:?}");
    let after_dir = server.dir.path().join("after");
    checkout(&repo, &after_dir);
    let after = kubectl_kustomize(&after_dir.join("kustomize"));
    let expected: Vec<Value> = before
        .into_iter()
        .filter(|o| o["kind"] != "HorizontalPodAutoscaler")
        .collect();
    assert_eq!(
        after, expected,
        "only the HPA is gone from what kustomize renders"
    );

    // A create of an object the branch already declares: git has it, no commit.
    let count = commits(&repo);
    let object = live(
        document(&repo, "deploy/webapp/backend/service.yaml"),
        "webapp",
        7,
    );
    let answer = send(
        &server,
        &review(
            7,
            "CREATE",
            SERVICE,
            "webapp",
            "backend",
            (None, Some(object)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    assert!(
        warnings(&answer)
            .iter()
            .any(|w| w.contains("already declared in deploy/webapp/backend/service.yaml")),
        "{answer}"
    );
    assert_eq!(commits(&repo), count);

    // An object an overlay transforms: not edited by guess; the answer says where.
    let old = live(
        document(&repo, "deploy/bases/backend/deployment.yaml"),
        "dev",
        8,
    );
    let mut new = old.clone();
    new["spec"]["minReadySeconds"] = json!(9);
    let answer = send(
        &server,
        &review(
            8,
            "UPDATE",
            DEPLOYMENT,
            "dev",
            "backend",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("deploy/bases/backend/deployment.yaml")
            && text.contains("deploy/overlays/dev"),
        "{text}"
    );
    assert_eq!(commits(&repo), count);

    // A ConfigMap kustomize generates: the answer names the generator's file.
    let generated = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "redis-config-bd2fcfgt6k", "namespace": "dev", "uid": "u10",
                     "resourceVersion": "10", "creationTimestamp": "2026-12-07T05:00:00Z"},
        "data": {"redis.conf": "maxmemory 64mb\n"}});
    let mut changed = generated.clone();
    changed["data"]["redis.conf"] = json!("maxmemory 128mb\n");
    let answer = send(
        &server,
        &review(
            10,
            "UPDATE",
            CONFIGMAP,
            "dev",
            "redis-config-bd2fcfgt6k",
            (Some(generated), Some(changed)),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    assert!(
        message(&answer).contains("configMapGenerator of deploy/bases/cache/kustomization.yaml"),
        "{answer}"
    );
    assert_eq!(commits(&repo), count);

    // A new object goes beside the other objects of its namespace.
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "flags", "namespace": "webapp", "uid": "u9", "resourceVersion": "9",
                     "creationTimestamp": "2026-12-07T05:00:00Z"},
        "data": {"beta": "on"}});
    let answer = send(
        &server,
        &review(
            9,
            "CREATE",
            CONFIGMAP,
            "webapp",
            "flags",
            (None, Some(object)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, _, _) = last_diff(&repo);
    // deploy/webapp/common holds four of the namespace's objects, more than any other.
    assert_eq!(files, ["deploy/webapp/common/flags-configmap.yaml"]);

    // In a kustomization's directory, it is also listed in its resources, so
    // `kubectl kustomize` renders it with the rest.
    let before = after;
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "flags", "namespace": "podinfo", "uid": "u11", "resourceVersion": "11",
                     "creationTimestamp": "2026-12-07T05:00:00Z"},
        "data": {"beta": "on"}});
    let answer = send(
        &server,
        &review(
            11,
            "CREATE",
            CONFIGMAP,
            "podinfo",
            "flags",
            (None, Some(object)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(
        files,
        [
            "kustomize/flags-configmap.yaml",
            "kustomize/kustomization.yaml"
        ]
    );
    assert!(removed.is_empty(), "{removed:?}");
    assert!(
        added.contains(&"  - flags-configmap.yaml".to_owned()),
        "{added:?}"
    );
    let again = server.dir.path().join("again");
    checkout(&repo, &again);
    let rendered = kubectl_kustomize(&again.join("kustomize"));
    let new: Vec<&Value> = rendered.iter().filter(|o| !before.contains(o)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["metadata"]["name"], "flags");
    assert_eq!(new[0]["data"]["beta"], "on");
    assert_eq!(rendered.len(), before.len() + 1);

    // Nothing the branch declared was written a second time.
    let tree = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    for canonical in [
        "webapp/apps/deployments/backend.yaml",
        "webapp/apps/deployments/frontend.yaml",
        "webapp/core/services/backend.yaml",
    ] {
        assert!(!tree.lines().any(|l| l == canonical), "{canonical} written");
    }
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overlay_base_the_shared_document_is_edited() {
    let (dir, repo) = seeded_fixture(PODINFO);
    let server = TestServer::start_in(dir, &config(&repo, "base")).await;
    let path = "deploy/bases/backend/deployment.yaml";
    let old = live(document(&repo, path), "dev", 1);
    let mut new = old.clone();
    new["spec"]["minReadySeconds"] = json!(9);
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "dev",
            "backend",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert_eq!(removed, ["  minReadySeconds: 3"]);
    assert_eq!(added, ["  minReadySeconds: 9"]);
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_a_helm_release_renders_are_never_written_as_files() {
    let (dir, repo) = seeded_fixture(FLUX_HELM);
    let server = TestServer::start_in(dir, &config(&repo, "deny")).await;
    let count = git(&repo, &["rev-list", "--count", "main"]);
    let rendered = |image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "podinfo", "namespace": "podinfo", "uid": "u1",
                "resourceVersion": "5", "creationTimestamp": "2026-12-07T05:00:00Z",
                "labels": {"helm.toolkit.fluxcd.io/name": "podinfo",
                           "helm.toolkit.fluxcd.io/namespace": "podinfo",
                           "app.kubernetes.io/managed-by": "Helm"}},
            "spec": {"template": {"spec": {"containers": [{"name": "podinfo", "image": image}]}}}})
    };
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "podinfo",
            "podinfo",
            (
                Some(rendered("podinfo:6.0.0")),
                Some(rendered("podinfo:6.1.0")),
            ),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("HelmRelease podinfo/podinfo (apps/base/podinfo/release.yaml)")
            && text.contains("change its values there"),
        "{text}"
    );
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]), count);
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_release_s_values_change_in_its_document_of_a_multi_document_file() {
    let (dir, repo) = seeded_fixture(FLUX_HELM);
    let server = TestServer::start_in(dir, &config(&repo, "deny")).await;
    let before_dir = server.dir.path().join("before");
    checkout(&repo, &before_dir);
    let entry = "infrastructure/controllers";
    let before = kubectl_kustomize(&before_dir.join(entry));
    let path = "infrastructure/controllers/cert-manager.yaml";
    let text = git(&repo, &["show", &format!("main:{path}")]);
    let documents: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(documents[2]["kind"], "HelmRelease");

    // `kubectl edit helmrelease cert-manager`: keep the CRDs, two replicas.
    let old = live(documents[2].clone(), "cert-manager", 1);
    let mut new = old.clone();
    new["spec"]["values"]["crds"]["keep"] = json!(true);
    new["spec"]["values"]["replicaCount"] = json!(2);
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            (
                "helm.toolkit.fluxcd.io",
                "v2",
                "HelmRelease",
                "helmreleases",
            ),
            "cert-manager",
            "cert-manager",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert_eq!(removed, ["      keep: false"]);
    assert_eq!(added, ["      keep: true", "    replicaCount: 2"]);

    // The OCIRepository's quoted version stays quoted.
    let old = live(documents[1].clone(), "cert-manager", 2);
    let mut new = old.clone();
    new["spec"]["ref"]["semver"] = json!("1.16.x");
    let answer = send(
        &server,
        &review(
            2,
            "UPDATE",
            (
                "source.toolkit.fluxcd.io",
                "v1",
                "OCIRepository",
                "ocirepositories",
            ),
            "cert-manager",
            "cert-manager",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (_, removed, added) = last_diff(&repo);
    assert_eq!(removed, ["    semver: \"1.x\""]);
    assert_eq!(added, ["    semver: \"1.16.x\""]);

    // What kustomize renders differs by exactly those three fields.
    let after_dir = server.dir.path().join("after");
    checkout(&repo, &after_dir);
    let after = kubectl_kustomize(&after_dir.join(entry));
    let mut expected = before.clone();
    for object in &mut expected {
        match object["kind"].as_str() {
            Some("HelmRelease") if object["metadata"]["name"] == "cert-manager" => {
                object["spec"]["values"]["crds"]["keep"] = json!(true);
                object["spec"]["values"]["replicaCount"] = json!(2);
            }
            Some("OCIRepository") if object["metadata"]["name"] == "cert-manager" => {
                object["spec"]["ref"]["semver"] = json!("1.16.x");
            }
            _ => {}
        }
    }
    assert_eq!(after, expected);
    // Every comment and the other documents are as they were.
    let edited = git(&repo, &["show", &format!("main:{path}")]);
    assert!(edited.starts_with(&text[..text.find("kind: OCIRepository").unwrap()]));
    server.server.shutdown().await.unwrap();
}

/// What a write of `object` plans to (its path where the path template says), as
/// the reconciler hands the store its changes.
fn planned(
    operation: &str,
    (group, version, kind, resource): (&str, &str, &str, &str),
    old: Option<Value>,
    object: Option<Value>,
) -> kubescribe::manifest::Change {
    let live = object.as_ref().or(old.as_ref()).unwrap();
    let write = kubescribe::policy::Write {
        uid: "u".into(),
        operation: match operation {
            "CREATE" => kube_core::admission::Operation::Create,
            "UPDATE" => kube_core::admission::Operation::Update,
            _ => kube_core::admission::Operation::Delete,
        },
        kind: kube_core::GroupVersionKind::gvk(group, version, kind),
        resource: kube_core::GroupVersionResource::gvr(group, version, resource),
        sub_resource: None,
        namespace: live["metadata"]["namespace"].as_str().map(str::to_owned),
        name: live["metadata"]["name"].as_str().unwrap().to_owned(),
        user: "alice".into(),
        groups: Vec::new(),
        dry_run: false,
        object,
        old_object: old,
        from_cluster: true,
    };
    let layout =
        kubescribe::manifest::Layout::new("", "{namespace}/{group}/{resource}/{name}.yaml")
            .unwrap();
    kubescribe::manifest::plan(&write, &layout, kubescribe::config::SecretMode::Redact).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_never_writes_a_declared_object_twice_and_follows_commits_it_did_not_make() {
    let (dir, repo) = seeded_fixture(PODINFO);
    let config = kubescribe::config::Config {
        data_dir: dir.path().join("data"),
        ..kubescribe::config::Config::from_yaml(&config(&repo, "deny")).unwrap()
    };
    let target = &config.targets()[0];
    let (store, writer) = kubescribe::store::StoreHandle::open(
        kubescribe::store::StoreSettings::from_config(&config, target),
        std::sync::Arc::new(kubescribe::metrics::Metrics::new()),
    )
    .unwrap();
    let deadline = || std::time::Instant::now() + std::time::Duration::from_secs(10);
    let tree = |repo: &Path| git(repo, &["ls-tree", "-r", "--name-only", "main"]);

    // The reconciler's snapshot: a declared Service and an undeclared ConfigMap,
    // both where the path template says. Only the ConfigMap is written.
    let service = live(
        document(&repo, "deploy/webapp/backend/service.yaml"),
        "webapp",
        1,
    );
    let configmap = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "seen", "namespace": "webapp"}, "data": {"a": "b"}});
    let outcome = store
        .commit_bundle(
            vec![
                planned("CREATE", SERVICE, None, Some(service.clone())),
                planned("CREATE", CONFIGMAP, None, Some(configmap)),
            ],
            "reconcile: snapshot".into(),
            deadline(),
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, kubescribe::store::Outcome::Committed { .. }),
        "{outcome:?}"
    );
    let files = tree(&repo);
    assert!(
        files
            .lines()
            .any(|l| l == "webapp/core/configmaps/seen.yaml"),
        "{files}"
    );
    assert!(
        !files
            .lines()
            .any(|l| l == "webapp/core/services/backend.yaml"),
        "{files}"
    );

    // Someone else moves the Service into a file of its own name, behind kubescribe's
    // back: the index follows the branch, and the next edit lands in the new file.
    let work = dir.path().join("elsewhere");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&work)
            .env("GIT_AUTHOR_NAME", "Maintainer")
            .env("GIT_AUTHOR_EMAIL", "maintainer@example.com")
            .env("GIT_COMMITTER_NAME", "Maintainer")
            .env("GIT_COMMITTER_EMAIL", "maintainer@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    std::fs::create_dir_all(&work).unwrap();
    run(&["clone", "-q", repo.to_str().unwrap(), "."]);
    run(&[
        "mv",
        "deploy/webapp/backend/service.yaml",
        "deploy/webapp/backend/backend-svc.yaml",
    ]);
    run(&["commit", "-q", "-m", "rename"]);
    run(&["push", "-q", "origin", "main"]);
    let mut changed = service.clone();
    changed["metadata"]["labels"] = json!({"moved": "yes"});
    let mut change = planned(
        "UPDATE",
        SERVICE,
        Some(service.clone()),
        Some(changed.clone()),
    );
    let mut in_place = change.clone();
    {
        let shared = store.declared().unwrap();
        let index = shared.index.read().unwrap();
        let write = kubescribe::policy::Write {
            uid: "u2".into(),
            operation: kube_core::admission::Operation::Update,
            kind: kube_core::GroupVersionKind::gvk("", "v1", "Service"),
            resource: kube_core::GroupVersionResource::gvr("", "v1", "services"),
            sub_resource: None,
            namespace: Some("webapp".into()),
            name: "backend".into(),
            user: "alice".into(),
            groups: Vec::new(),
            dry_run: false,
            object: Some(changed),
            old_object: Some(service),
            from_cluster: false,
        };
        let placement = kubescribe::manifest::plan_in_place(
            &index,
            &shared.config,
            &mut in_place,
            &write,
            None,
        );
        assert_eq!(placement, kubescribe::manifest::Placement::InPlace);
    }
    change.in_place = in_place.in_place;
    // The first batch after the move may fail its compare-and-swap (the branch moved);
    // the writer then continues from the new tip.
    if store
        .commit_change(change.clone(), deadline())
        .await
        .is_err()
    {
        store.commit_change(change, deadline()).await.unwrap();
    }
    let (files, _, added) = last_diff(&repo);
    assert_eq!(files, ["deploy/webapp/backend/backend-svc.yaml"]);
    assert_eq!(added, ["  labels:", "    moved: 'yes'"]);
    drop(store);
    writer.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_git_declares_is_not_recorded_as_if_it_were_gone() {
    let (dir, repo) = seeded_fixture(PODINFO);
    let server = TestServer::start_in(dir, &config(&repo, "deny")).await;
    let count = git(&repo, &["rev-list", "--count", "main"]);
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "webapp", "uid": "u1", "resourceVersion": "3",
                     "creationTimestamp": "2026-12-07T05:00:00Z"}});
    let mut review = review(
        1,
        "DELETE",
        ("", "v1", "Namespace", "namespaces"),
        "webapp",
        "webapp",
        (Some(namespace), None),
        None,
    );
    review["request"]["namespace"] = json!("webapp");
    let answer = send(&server, &review).await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("Namespace webapp and what it takes with it are declared in git")
            && text.contains("deploy/webapp/backend/deployment.yaml")
            && text.contains("delete them in git"),
        "{text}"
    );
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]), count);
    server.server.shutdown().await.unwrap();
}

const MULTI_TENANCY: &str = "fluxcd__flux2-multi-tenancy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_base_shared_by_two_clusters_is_edited_only_when_told() {
    let object = || {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/repos")
                .join(MULTI_TENANCY)
                .join("tenants/base/dev-team/rbac.yaml"),
        )
        .unwrap();
        let account = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "ServiceAccount")
            .unwrap();
        live(account, "apps", 1)
    };
    let labelled = |old: &Value| {
        let mut new = old.clone();
        new["metadata"]["labels"]["team"] = json!("dev");
        new
    };
    const SERVICE_ACCOUNT: (&str, &str, &str, &str) =
        ("", "v1", "ServiceAccount", "serviceaccounts");

    // By default: both clusters' overlays render it, with patches: refused.
    let (dir, repo) = seeded_fixture(MULTI_TENANCY);
    let server = TestServer::start_in(dir, &config(&repo, "deny")).await;
    let old = object();
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            SERVICE_ACCOUNT,
            "apps",
            "dev-team",
            (Some(old.clone()), Some(labelled(&old))),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("tenants/base/dev-team/rbac.yaml") && text.contains("overlay: base"),
        "{text}"
    );
    server.server.shutdown().await.unwrap();

    // `overlay: base`: the base is edited, for both clusters.
    let (dir, repo) = seeded_fixture(MULTI_TENANCY);
    let server = TestServer::start_in(dir, &config(&repo, "base")).await;
    let before_dir = server.dir.path().join("before");
    checkout(&repo, &before_dir);
    let answer = send(
        &server,
        &review(
            2,
            "UPDATE",
            SERVICE_ACCOUNT,
            "apps",
            "dev-team",
            (Some(old.clone()), Some(labelled(&old))),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, ["tenants/base/dev-team/rbac.yaml"]);
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(added, ["    team: dev"]);
    let after_dir = server.dir.path().join("after");
    checkout(&repo, &after_dir);
    for cluster in ["tenants/staging", "tenants/production"] {
        let mut expected = kubectl_kustomize(&before_dir.join(cluster));
        for object in &mut expected {
            if object["kind"] == "ServiceAccount" && object["metadata"]["name"] == "dev-team" {
                object["metadata"]["labels"]["team"] = json!("dev");
            }
        }
        assert_eq!(
            kubectl_kustomize(&after_dir.join(cluster)),
            expected,
            "{cluster}"
        );
    }
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overlay_patch_each_field_is_edited_where_the_overlay_sets_it() {
    let (dir, repo) = common::gitops::seeded_files(common::gitops::OVERLAID);
    let server = TestServer::start_in(dir, &config(&repo, "patch")).await;
    let before_dir = server.dir.path().join("before");
    checkout(&repo, &before_dir);
    let rendered = kubectl_kustomize(&before_dir.join("overlays/prod"));
    let old = live(rendered[0].clone(), "prod", 1);
    assert_eq!(
        old["spec"]["template"]["spec"]["containers"][0]["image"], "registry.example/web:1.2",
        "what the cluster has is the overlay's rendering"
    );
    let mut new = old.clone();
    let container = &mut new["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!("registry.example/web:1.3");
    container["resources"]["limits"]["memory"] = json!("512Mi");
    container["env"][0]["value"] = json!("careful");
    new["spec"]["replicas"] = json!(5);
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "prod",
            "web",
            (Some(old), Some(new.clone())),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(
        files,
        [
            "base/deployment.yaml",
            "overlays/prod/kustomization.yaml",
            "overlays/prod/resources.yaml"
        ]
    );
    assert_eq!(
        removed,
        [
            "          value: fast",
            "    newTag: \"1.2\" # the release",
            "    count: 3",
            "            memory: 256Mi # prod sizing"
        ]
    );
    assert_eq!(
        added,
        [
            "          value: careful",
            "    newTag: \"1.3\" # the release",
            "    count: 5",
            "            memory: 512Mi # prod sizing"
        ]
    );
    assert!(git(&repo, &["log", "-1", "--format=%B", "main"]).contains(
        "Edits overlays/prod/kustomization.yaml (document 1), where the overlay sets what changed"
    ),);

    // kustomize renders the new object from the edited overlay and base.
    let after_dir = server.dir.path().join("after");
    checkout(&repo, &after_dir);
    let rendered = kubectl_kustomize(&after_dir.join("overlays/prod"));
    assert_eq!(rendered[0]["spec"], {
        let mut spec = new["spec"].clone();
        spec["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("terminationMessagePath");
        spec
    });
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overlay_patch_what_cannot_be_traced_is_refused_and_named() {
    // An inline JSON patch sets the replicas; the delete of a patched object would
    // leave its patch without an object, which kustomize refuses to build.
    let files = common::gitops::overlaid_with_json_patch();
    let (dir, repo) = common::gitops::seeded_files(&files);
    let server = TestServer::start_in(dir, &config(&repo, "patch")).await;
    let checkout_dir = server.dir.path().join("before");
    checkout(&repo, &checkout_dir);
    let old = live(
        kubectl_kustomize(&checkout_dir.join("overlays/prod"))[0].clone(),
        "prod",
        1,
    );
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(4);
    let commits = git(&repo, &["rev-list", "--count", "main"]);
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            DEPLOYMENT,
            "prod",
            "web",
            (Some(old.clone()), Some(new.clone())),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("a JSON patch in overlays/prod/kustomization.yaml sets spec.replicas"),
        "{text}"
    );
    // Found at admission, so `kubectl --dry-run=server` is told too (as a warning,
    // as for every dry run kubescribe would not record).
    let mut dry = review(
        9,
        "UPDATE",
        DEPLOYMENT,
        "prod",
        "web",
        (Some(old.clone()), Some(new)),
        None,
    );
    dry["request"]["dryRun"] = json!(true);
    let answer = send(&server, &dry).await;
    assert!(
        warnings(&answer)
            .iter()
            .any(|w| w.starts_with("kubescribe: dry run: would not record:")
                && w.contains(
                    "a JSON patch in overlays/prod/kustomization.yaml sets spec.replicas"
                )),
        "{answer}"
    );
    let answer = send(
        &server,
        &review(
            2,
            "DELETE",
            DEPLOYMENT,
            "prod",
            "web",
            (Some(old), None),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("is patched by overlays/prod/kustomization.yaml")
            && text.contains("delete it in git"),
        "{text}"
    );
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]), commits);
    server.server.shutdown().await.unwrap();

    // podinfo's backend base is rendered by three overlays: a field none of them
    // sets would change all three.
    let (dir, repo) = seeded_fixture(PODINFO);
    let server = TestServer::start_in(dir, &config(&repo, "patch")).await;
    let path = "deploy/bases/backend/deployment.yaml";
    let old = live(document(&repo, path), "dev", 1);
    let mut new = old.clone();
    new["spec"]["minReadySeconds"] = json!(9);
    let answer = send(
        &server,
        &review(
            3,
            "UPDATE",
            DEPLOYMENT,
            "dev",
            "backend",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains(path)
            && text.contains("spec.minReadySeconds is not set by an overlay")
            && text.contains("renders 3 objects"),
        "{text}"
    );
    // Nor is it deleted for all three.
    let answer = send(
        &server,
        &review(
            4,
            "DELETE",
            DEPLOYMENT,
            "dev",
            "backend",
            (Some(live(document(&repo, path), "dev", 1)), None),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    assert!(
        message(&answer).contains("3 objects are rendered from that document"),
        "{answer}"
    );
    assert!(git(&repo, &["show", &format!("main:{path}")]).contains("name: backend"));
    server.server.shutdown().await.unwrap();
}

const HELM_RELEASE: (&str, &str, &str, &str) = (
    "helm.toolkit.fluxcd.io",
    "v2",
    "HelmRelease",
    "helmreleases",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_cluster_named_a_write_edits_that_cluster_s_overlay_and_never_another_s() {
    // flux2-kustomize-helm-example as it is: clusters/staging's Flux Kustomization
    // renders apps/staging (through Flux's ArtifactGenerator), whose patch sets the
    // chart version and hostnames of the podinfo HelmRelease in apps/base, which
    // clusters/production renders too.
    let (dir, repo) = seeded_fixture(FLUX_HELM);
    let config = format!(
        "repository:\n  path: {}\n  inPlace:\n    enabled: true\n    overlay: patch\n    cluster: clusters/staging\nrules:\n- name: all\n  namespaces: [\"*\"]\n  wait: commit\n",
        repo.display()
    );
    let server = TestServer::start_in(dir, &config).await;
    let before_dir = server.dir.path().join("before");
    checkout(&repo, &before_dir);
    let production = kubectl_kustomize(&before_dir.join("apps/production"));
    let staging = kubectl_kustomize(&before_dir.join("apps/staging"));
    let release = staging
        .iter()
        .find(|o| o["kind"] == "HelmRelease")
        .unwrap()
        .clone();
    assert_eq!(release["spec"]["chart"]["spec"]["version"], ">=1.0.0-alpha");
    let old = live(release, "podinfo", 1);

    // A new chart version: the staging overlay's patch sets it.
    let mut new = old.clone();
    new["spec"]["chart"]["spec"]["version"] = json!(">=1.1.0");
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            HELM_RELEASE,
            "podinfo",
            "podinfo",
            (Some(old.clone()), Some(new.clone())),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, ["apps/staging/podinfo-values.yaml"]);
    assert_eq!(removed, ["      version: \">=1.0.0-alpha\""]);
    assert_eq!(added, ["      version: \">=1.1.0\""]);
    let after_dir = server.dir.path().join("after");
    checkout(&repo, &after_dir);
    let rendered = kubectl_kustomize(&after_dir.join("apps/staging"));
    let edited = rendered
        .iter()
        .find(|o| o["kind"] == "HelmRelease")
        .unwrap();
    assert_eq!(
        edited["spec"], new["spec"],
        "staging renders the new object"
    );
    assert_eq!(
        kubectl_kustomize(&after_dir.join("apps/production")),
        production,
        "production is untouched"
    );

    // The interval is the base's, which production renders too: not changed from
    // staging.
    let mut newer = new.clone();
    newer["spec"]["interval"] = json!("5m");
    let answer = send(
        &server,
        &review(
            2,
            "UPDATE",
            HELM_RELEASE,
            "podinfo",
            "podinfo",
            (Some(new), Some(newer)),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("spec.interval is not set by an overlay")
            && text.contains(
                "apps/base/podinfo/release.yaml is rendered elsewhere in the repository too"
            ),
        "{text}"
    );
    server.server.shutdown().await.unwrap();
}

/// What `kubectl kustomize` of `entry` renders differently after the last commit
/// than before it: the objects only before, and the objects only after.
fn rendered_change(repo: &Path, scratch: &Path, entry: &str) -> (Vec<Value>, Vec<Value>) {
    let render = |rev: &str| {
        let dir = scratch.join(format!("render-{}", rev.replace('~', "-")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(repo)
            .arg("--work-tree")
            .arg(&dir)
            .args(["checkout", "-f", rev, "--", "."])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        kubectl_kustomize(&dir.join(entry))
    };
    let (before, after) = (render("main~1"), render("main"));
    let only = |a: &[Value], b: &[Value]| -> Vec<Value> {
        a.iter().filter(|o| !b.contains(o)).cloned().collect()
    };
    (only(&before, &after), only(&after, &before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_writes_on_a_flux_repository_change_what_it_renders_by_exactly_the_write() {
    let (dir, repo) = seeded_fixture(FLUX_HELM);
    let server = TestServer::start_in(dir, &config(&repo, "deny")).await;
    let scratch = server.dir.path().to_owned();
    let entry = "infrastructure/controllers";
    let path = "infrastructure/controllers/cert-manager.yaml";
    let documents = |repo: &Path| -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(&git(repo, &["show", &format!("main:{path}")]))
            .map(|d| Value::deserialize(d).unwrap())
            .collect()
    };
    let comments = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let comments_before = comments(&git(&repo, &["show", &format!("main:{path}")]));
    const OCI: (&str, &str, &str, &str) = (
        "source.toolkit.fluxcd.io",
        "v1",
        "OCIRepository",
        "ocirepositories",
    );

    // A label on the HelmRelease (`kubectl label`).
    let release = documents(&repo)[2].clone();
    let old = live(release.clone(), "cert-manager", 1);
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({"team": "sre"});
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            HELM_RELEASE,
            "cert-manager",
            "cert-manager",
            (Some(old), Some(new)),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(added, ["  labels:", "    team: sre"]);
    let (gone, came) = rendered_change(&repo, &scratch, entry);
    let mut labelled = release.clone();
    labelled["metadata"]["labels"] = json!({"team": "sre"});
    assert_eq!((gone, came), (vec![release], vec![labelled]));

    // A new ConfigMap in the namespace: beside its other objects, and listed.
    let configmap = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "issuer-settings", "namespace": "cert-manager"},
        "data": {"email": "sre@example.com"},
    });
    let answer = send(
        &server,
        &review(
            2,
            "CREATE",
            CONFIGMAP,
            "cert-manager",
            "issuer-settings",
            (None, Some(live(configmap.clone(), "cert-manager", 2))),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, _, _) = last_diff(&repo);
    assert_eq!(
        files,
        [
            "infrastructure/controllers/issuer-settings-configmap.yaml",
            "infrastructure/controllers/kustomization.yaml"
        ]
    );
    let (gone, came) = rendered_change(&repo, &scratch, entry);
    assert_eq!((gone, came), (vec![], vec![configmap]));

    // A delete of the OCIRepository, the second of the file's three documents.
    let oci = documents(&repo)[1].clone();
    let answer = send(
        &server,
        &review(
            3,
            "DELETE",
            OCI,
            "cert-manager",
            "cert-manager",
            (Some(live(oci.clone(), "cert-manager", 3)), None),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, _, added) = last_diff(&repo);
    assert_eq!(files, [path]);
    assert!(added.is_empty(), "{added:?}");
    let (gone, came) = rendered_change(&repo, &scratch, entry);
    assert_eq!((gone, came), (vec![oci], vec![]));

    // Every comment of the file is still there, and nothing was written at the
    // path template's place.
    assert_eq!(
        comments(&git(&repo, &["show", &format!("main:{path}")])),
        comments_before
    );
    let tracked = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        !tracked.lines().any(|p| p.starts_with("cert-manager/")),
        "{tracked}"
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_sync_changes_in_this_cluster_s_patch_and_its_shared_base_stays() {
    // flux2-multi-tenancy: each cluster's tenants/<cluster> overlay patches the
    // dev-team tenant's Flux Kustomization (its path) over a base both render.
    let (dir, repo) = seeded_fixture(MULTI_TENANCY);
    let config = format!(
        "repository:\n  path: {}\n  inPlace:\n    enabled: true\n    overlay: patch\n    cluster: clusters/staging\nrules:\n- name: all\n  namespaces: [\"*\"]\n  wait: commit\n",
        repo.display()
    );
    let server = TestServer::start_in(dir, &config).await;
    let scratch = server.dir.path().to_owned();
    let before_dir = scratch.join("before");
    checkout(&repo, &before_dir);
    let production = kubectl_kustomize(&before_dir.join("tenants/production"));
    let sync = kubectl_kustomize(&before_dir.join("tenants/staging"))
        .into_iter()
        .find(|o| o["kind"] == "Kustomization")
        .unwrap();
    assert_eq!(sync["spec"]["path"], "./staging");
    const SYNC: (&str, &str, &str, &str) = (
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    );
    let old = live(sync.clone(), "apps", 1);
    let mut new = old.clone();
    new["spec"]["path"] = json!("./staging-v2");
    let answer = send(
        &server,
        &review(
            1,
            "UPDATE",
            SYNC,
            "apps",
            "dev-team",
            (Some(old), Some(new.clone())),
            None,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let (files, removed, added) = last_diff(&repo);
    assert_eq!(files, ["tenants/staging/dev-team-patch.yaml"]);
    assert_eq!(removed, ["  path: ./staging"]);
    assert_eq!(added, ["  path: ./staging-v2"]);
    let (gone, came) = rendered_change(&repo, &scratch, "tenants/staging");
    let mut moved = sync.clone();
    moved["spec"]["path"] = json!("./staging-v2");
    assert_eq!((gone, came), (vec![sync], vec![moved]));
    let after_dir = scratch.join("after");
    checkout(&repo, &after_dir);
    assert_eq!(
        kubectl_kustomize(&after_dir.join("tenants/production")),
        production
    );

    // Its interval is the base's, which production renders too.
    let mut newer = new.clone();
    newer["spec"]["interval"] = json!("1m");
    let answer = send(
        &server,
        &review(
            2,
            "UPDATE",
            SYNC,
            "apps",
            "dev-team",
            (Some(new), Some(newer)),
            None,
        ),
    )
    .await;
    assert!(!allowed(&answer), "{answer}");
    assert!(
        message(&answer).contains(
            "tenants/base/dev-team/sync.yaml is rendered elsewhere in the repository too"
        ),
        "{answer}"
    );
    server.server.shutdown().await.unwrap();
}
