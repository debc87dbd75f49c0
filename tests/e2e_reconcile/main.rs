//! End-to-end scenarios that need a control plane of their own: the reconciler
//! against a real list and watch (watches of 2 s, an apiserver without a watch cache
//! and an etcd that compacts every 3 s, so a resumed watch meets 410 Gone), and
//! kube-controller-manager's controllers writing beside kubescribe.

#[path = "../common/mod.rs"]
#[allow(unused)]
mod common;
#[path = "../envtest/mod.rs"]
mod envtest;

use std::time::{Duration, Instant};

use envtest::plane::Options;
use envtest::{assert_git_matches_cluster, ControlPlane, Kubescribe, Obj, ADMIN, ALICE, GITOPS};

fn plane() -> &'static ControlPlane {
    ControlPlane::shared_with(Options {
        compaction_interval: Duration::from_secs(3),
        watch_cache: false,
    })
}

/// Records writes in `namespace` without waiting (so kubescribe being down never
/// blocks them) and reconciles from the cluster as the admin.
fn reconcile_config(plane: &ControlPlane, dir: &std::path::Path, namespace: &str) -> String {
    let kubeconfig = dir.join("reconciler.kubeconfig");
    plane.kubeconfig_for(ADMIN, &kubeconfig);
    format!(
        "reconcile:\n  enabled: true\n  kubeconfig: {}\n  discoveryInterval: 5s\n  watchTimeout: 2s\nrules:\n- name: e2e\n  namespaces: [{namespace}]\n  prune: always\n",
        kubeconfig.display()
    )
}

/// Polls `check` every 100 ms for up to `limit`: the reconciler works in the
/// background, with nothing outside it to await.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ok(plane: &ControlPlane, user: envtest::plane::User, args: &[&str]) {
    plane.kubectl_ok(user, args, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_records_what_the_cluster_has_and_catches_up_after_a_restart() {
    let plane = plane();
    let ns = plane.namespace("snap");
    let n = ns.as_str();
    ok(
        plane,
        ALICE,
        &[
            "create",
            "configmap",
            "before",
            "-n",
            n,
            "--from-literal=v=1",
        ],
    );
    ok(
        plane,
        ALICE,
        &[
            "create",
            "configmap",
            "doomed",
            "-n",
            n,
            "--from-literal=v=1",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut scribe = Kubescribe::start(plane, "snap", &reconcile_config(plane, dir.path(), n));
    let before = Obj::namespaced("v1", "configmaps", n, "before");
    let doomed = Obj::namespaced("v1", "configmaps", n, "doomed");
    // /readyz waits for the snapshot: the objects made before kubescribe are there.
    assert!(scribe.file(&before.path()).is_some(), "{}", scribe.log());
    assert!(scribe.file(&doomed.path()).is_some());
    scribe.await_webhook(n);

    scribe.stop();
    // failurePolicy Ignore: these writes go through while kubescribe is down.
    ok(
        plane,
        ALICE,
        &[
            "create",
            "configmap",
            "while-down",
            "-n",
            n,
            "--from-literal=v=1",
        ],
    );
    ok(
        plane,
        envtest::BOB,
        &[
            "patch",
            "configmap",
            "before",
            "-n",
            n,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"v":"2"}}"#,
        ],
    );
    ok(plane, ALICE, &["delete", "configmap", "doomed", "-n", n]);
    scribe.restart();
    let while_down = Obj::namespaced("v1", "configmaps", n, "while-down");
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[before, doomed, while_down]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_losing_or_reordering_a_change() {
    let plane = plane();
    let ns = plane.namespace("expire");
    let n = ns.as_str();
    let dir = tempfile::tempdir().unwrap();
    let scribe = Kubescribe::start(plane, "expire", &reconcile_config(plane, dir.path(), n));
    scribe.await_webhook(n);
    let counter = Obj::namespaced("v1", "configmaps", n, "counter");
    // The GitOps controller is an ignored user: admission skips its writes, so only
    // the reconciler's watch can bring them to git.
    ok(
        plane,
        GITOPS,
        &[
            "create",
            "configmap",
            "counter",
            "-n",
            n,
            "--from-literal=count=0",
        ],
    );
    eventually(
        Duration::from_secs(60),
        "the watch records the counter",
        || scribe.file(&counter.path()).is_some(),
    );
    let commits = || scribe.git(&["rev-list", "--count", "main", "--", &counter.path()]);
    let recorded = commits();
    // Configmaps stay quiet while other writes move etcd's revision on, until a
    // resumed configmaps watch has met a compacted resourceVersion (watches end every
    // 2 s, etcd compacts every 3 s).
    let side = plane.namespace("churn");
    plane.kubectl_ok(
        ADMIN,
        &["create", "-f", "-"],
        Some(&format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: churn\n  namespace: {side}\nspec:\n  holderIdentity: e2e\n")),
    );
    let until = Instant::now() + Duration::from_secs(90);
    let mut churn = 0;
    while !scribe
        .full_log()
        .contains("watch expired (410); relisting resource=configmaps")
    {
        assert!(
            Instant::now() < until,
            "no configmaps watch expired within 90 s:\n{}",
            scribe.log()
        );
        churn += 1;
        ok(
            plane,
            ADMIN,
            &[
                "annotate",
                "lease",
                "churn",
                "-n",
                &side,
                "--overwrite",
                &format!("n={churn}"),
            ],
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The relist found nothing new: no commit.
    assert_eq!(
        commits(),
        recorded,
        "the relist recorded an unchanged object again"
    );
    let mut n_set = 0;
    for _ in 0..3 {
        n_set += 1;
        ok(
            plane,
            GITOPS,
            &[
                "patch",
                "configmap",
                "counter",
                "-n",
                n,
                "--type",
                "merge",
                "-p",
                &format!(r#"{{"data":{{"count":"{n_set}"}}}}"#),
            ],
        );
    }
    eventually(Duration::from_secs(60), "git has the last value", || {
        scribe
            .file(&counter.path())
            .is_some_and(|f| count_in(&f) == n_set)
    });
    // History never goes back: each commit of the file holds a later value than the
    // one before (a replayed or duplicated event would write an older one again).
    let revs = scribe.git(&["rev-list", "--reverse", "main", "--", &counter.path()]);
    let mut seen = Vec::new();
    for rev in revs.lines() {
        let text = envtest::scribe::file_at(&scribe.repo, rev, &counter.path()).unwrap();
        seen.push(count_in(&text));
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "values in commit order: {seen:?}"
    );
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[counter]).await;
}

/// Many changes behind admission's back at once (one `kubectl apply` of a List, by
/// the ignored GitOps user): the watch records them all, in commits that may group
/// them, and each file's history holds every state the cluster had, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_from_the_watch_is_recorded_whole_and_in_order() {
    let plane = plane();
    let ns = plane.namespace("burst");
    let n = ns.as_str();
    let dir = tempfile::tempdir().unwrap();
    let scribe = Kubescribe::start(plane, "burst", &reconcile_config(plane, dir.path(), n));
    scribe.await_webhook(n);
    const OBJECTS: usize = 30;
    let list = |count: u32| {
        let items: Vec<String> = (0..OBJECTS)
            .map(|i| format!("- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: burst-{i}\n    namespace: {n}\n  data:\n    count: \"{count}\"\n"))
            .collect();
        format!("apiVersion: v1\nkind: List\nitems:\n{}", items.concat())
    };
    plane.kubectl_ok(GITOPS, &["apply", "-f", "-"], Some(&list(1)));
    plane.kubectl_ok(GITOPS, &["apply", "-f", "-"], Some(&list(2)));
    let names: Vec<String> = (0..OBJECTS).map(|i| format!("burst-{i}")).collect();
    let objects: Vec<Obj> = names
        .iter()
        .map(|name| Obj::namespaced("v1", "configmaps", n, name))
        .collect();
    eventually(
        Duration::from_secs(60),
        "git has every second state",
        || {
            objects
                .iter()
                .all(|o| scribe.file(&o.path()).is_some_and(|f| count_in(&f) == 2))
        },
    );
    for object in &objects {
        let revs = scribe.git(&["rev-list", "--reverse", "main", "--", &object.path()]);
        let seen: Vec<u32> = revs
            .lines()
            .map(|rev| {
                count_in(&envtest::scribe::file_at(&scribe.repo, rev, &object.path()).unwrap())
            })
            .collect();
        assert_eq!(
            seen,
            [1, 2],
            "{}: the states in commit order",
            object.path()
        );
    }
    // Every one of those commits is the watch's.
    let subjects = scribe.git(&["log", "--format=%s", "main", "--", &format!("{n}/")]);
    assert!(
        subjects.lines().all(|s| s.starts_with("reconcile: ")),
        "{subjects}"
    );
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &objects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_manager_writes_are_not_recorded_as_people_s() {
    let plane = plane();
    let _kcm = plane.start_controller_manager();
    let ns = plane.namespace("kcm");
    let n = ns.as_str();
    let scribe = Kubescribe::start(
        plane,
        "kcm",
        &format!("rules:\n- name: e2e\n  namespaces: [{n}]\n  wait: commit\n"),
    );
    scribe.await_webhook(n);
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {n}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.25\n"
    );
    plane.kubectl_ok(ALICE, &["apply", "-f", "-"], Some(&deployment));
    // The controllers act: a ReplicaSet for the Deployment, the namespace's default
    // ServiceAccount and kube-root-ca.crt.
    eventually(
        Duration::from_secs(60),
        "the controllers made their objects",
        || {
            plane
                .kubectl(ADMIN, &["get", "replicaset", "-n", n, "-o", "name"], None)
                .stdout
                .starts_with(b"replicaset")
                && plane
                    .kubectl(ADMIN, &["get", "serviceaccount", "default", "-n", n], None)
                    .status
                    .success()
                && plane
                    .kubectl(
                        ADMIN,
                        &["get", "configmap", "kube-root-ca.crt", "-n", n],
                        None,
                    )
                    .status
                    .success()
        },
    );
    let files = scribe.git(&["ls-tree", "-r", "--name-only", "main"]);
    let web = Obj::namespaced("apps/v1", "deployments", n, "web");
    assert_eq!(
        files.trim(),
        web.path(),
        "only the person's write is in git"
    );
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[web]).await;

    // Foreground deletion: the DELETE marks the Deployment, the garbage collector
    // removes the ReplicaSet, then the finalizer, then the object. The file goes with
    // the person's DELETE and never comes back.
    plane.kubectl_ok(
        ALICE,
        &[
            "delete",
            "deployment",
            "web",
            "-n",
            n,
            "--cascade=foreground",
            "--wait=true",
        ],
        None,
    );
    eventually(
        Duration::from_secs(60),
        "the Deployment and its ReplicaSet are gone",
        || {
            plane
                .kubectl(
                    ADMIN,
                    &["get", "deployment,replicaset", "-n", n, "-o", "name"],
                    None,
                )
                .stdout
                .is_empty()
        },
    );
    let log = scribe.git(&["log", "-1", "--format=%an %s", "main"]);
    assert!(
        log.starts_with("alice@example.com delete apps/v1 Deployment"),
        "{log}"
    );
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[web]).await;
}

/// `data.count` of a recorded ConfigMap.
fn count_in(yaml: &str) -> u32 {
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("the file is YAML");
    value["data"]["count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no data.count in\n{yaml}"))
}

/// A second webhook that refuses direct writes to objects Flux manages: another
/// kubescribe, with no say in what the first records, and the `gitopsManaged` guard
/// rail enforced. The apiserver calls validating webhooks in parallel, so the
/// recording kubescribe admits (and records) what this one refuses.
fn start_denier(plane: &'static ControlPlane, name: &str, namespace: &str) -> Kubescribe {
    let denier = Kubescribe::start(
        plane,
        name,
        &format!(
            "guardRails:\n  gitopsManaged:\n    mode: enforce\nrules:\n- name: deny\n  namespaces: [{namespace}]\n"
        ),
    );
    denier.await_webhook(namespace);
    denier
}

fn managed_configmap(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    kustomize.toolkit.fluxcd.io/name: apps\ndata:\n  k: v\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_another_webhook_denies_is_reverted_by_the_reconciler() {
    let plane = plane();
    let ns = plane.namespace("phantom");
    let n = ns.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = reconcile_config(plane, dir.path(), n).replace(
        "  discoveryInterval: 5s\n",
        "  discoveryInterval: 5s\n  confirmWindow: 2s\n",
    );
    let scribe = Kubescribe::start(plane, "phantom", &config);
    scribe.await_webhook(n);
    let _denier = start_denier(plane, "phantom-denier", n);

    let out = plane.kubectl(
        ALICE,
        &["create", "-f", "-"],
        Some(&managed_configmap(n, "phantom")),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("gitopsManaged"),
        "the second webhook refuses it: {said}"
    );
    plane.kubectl_ok(
        ALICE,
        &["create", "configmap", "real", "-n", n, "--from-literal=k=v"],
        None,
    );
    let phantom = Obj::namespaced("v1", "configmaps", n, "phantom");
    let real = Obj::namespaced("v1", "configmaps", n, "real");
    // The recording kubescribe admitted it; the read back after confirmWindow finds
    // no such object and takes the file out again.
    eventually(Duration::from_secs(60), "the phantom is reverted", || {
        scribe.commit_count() > 0
            && scribe
                .git(&["log", "--format=%B", "main"])
                .contains("Kubescribe-Reconcile: phantom")
    });
    let history = scribe.git(&["log", "--format=%an %s", "main", "--", &phantom.path()]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with("alice@example.com create")),
        "it was recorded first:\n{history}"
    );
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[phantom, real]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_reconciler_a_phantom_stays_until_the_object_is_written_again() {
    let plane = plane();
    let ns = plane.namespace("phantom-off");
    let n = ns.as_str();
    let scribe = Kubescribe::start(
        plane,
        "phantom-off",
        &format!("rules:\n- name: e2e\n  namespaces: [{n}]\n  wait: commit\n"),
    );
    scribe.await_webhook(n);
    let denier = start_denier(plane, "phantom-off-denier", n);

    let out = plane.kubectl(
        ALICE,
        &["create", "-f", "-"],
        Some(&managed_configmap(n, "phantom")),
    );
    assert!(!out.status.success(), "the second webhook refuses it");
    let phantom = Obj::namespaced("v1", "configmaps", n, "phantom");
    // docs/architecture.md: "without it, it stays in git until the object is written
    // again".
    assert!(
        scribe.file(&phantom.path()).is_some(),
        "the refused write is in git"
    );
    let client = plane.client(ADMIN).await;
    assert!(envtest::fidelity::live(&client, &phantom, "v1")
        .await
        .is_none());

    drop(denier);
    plane.kubectl_ok(
        ALICE,
        &[
            "create",
            "configmap",
            "phantom",
            "-n",
            n,
            "--from-literal=k=w",
        ],
        None,
    );
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[phantom]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_a_non_preferred_version_is_confirmed_without_a_second_commit() {
    let plane = plane();
    let ns = plane.namespace("versions");
    let n = ns.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = reconcile_config(plane, dir.path(), n).replace(
        "  discoveryInterval: 5s\n",
        "  discoveryInterval: 5s\n  confirmWindow: 2s\n",
    );
    let scribe = Kubescribe::start(
        plane,
        "versions",
        &config.replace("prune: always\n", "prune: always\n  wait: commit\n"),
    );
    scribe.await_webhook(n);
    // autoscaling/v2beta2 is served, autoscaling/v1 is the preferred version the
    // reconciler watches.
    let hpa = format!(
        "apiVersion: autoscaling/v2beta2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\n  namespace: {n}\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: web\n  minReplicas: 1\n  maxReplicas: 4\n  metrics:\n  - type: Resource\n    resource:\n      name: cpu\n      target:\n        type: Utilization\n        averageUtilization: 70\n"
    );
    plane.kubectl_ok(ALICE, &["create", "-f", "-"], Some(&hpa));
    plane.kubectl_ok(ALICE, &["create", "configmap", "marker", "-n", n], None);
    let hpa_obj = Obj::namespaced("autoscaling/v2beta2", "horizontalpodautoscalers", n, "web");
    let path = hpa_obj.path();
    // The watch (in autoscaling/v1) confirms both writes; a commit the confirmation
    // queued is in before the next waited-for write's commit (one writer, in order).
    eventually(Duration::from_secs(60), "both writes are confirmed", || {
        scribe
            .metric("kubescribe_reconcile_confirmed_total ")
            .unwrap_or(0.0)
            >= 2.0
    });
    plane.kubectl_ok(ALICE, &["create", "configmap", "after", "-n", n], None);
    let history = scribe.git(&["log", "--format=%an %s", "main", "--", &path]);
    let text = scribe.file(&path).unwrap();
    assert_eq!(
        history.lines().count(),
        1,
        "{history}\n{text}\n{}",
        scribe.log()
    );
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[hpa_obj]).await;
}

/// `record: confirmed`, for clusters whose apiserver cannot authenticate to the
/// webhook: admission only notes who made which change, and the commit, authored by
/// that user, is made when the watch shows the object so. A review sent straight to
/// the port (no caller authentication here, as on a managed cluster) is answered,
/// but since the cluster never has its object, nothing reaches git.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_rules_record_what_the_cluster_shows_by_its_user_and_never_a_forgery() {
    let plane = plane();
    let ns = plane.namespace("confirmed");
    let n = ns.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = reconcile_config(plane, dir.path(), n)
        .replace(
            "  discoveryInterval: 5s\n",
            "  discoveryInterval: 5s\n  confirmWindow: 2s\n",
        )
        .replace("prune: always\n", "prune: always\n  record: confirmed\n");
    let config = format!("server:\n  clientAuth:\n    allowUnauthenticated: false\n{config}");
    let scribe = Kubescribe::start(plane, "confirmed", &config);
    scribe.await_webhook(n);

    plane.kubectl_ok(
        ALICE,
        &["create", "configmap", "real", "-n", n, "--from-literal=k=v"],
        None,
    );
    let forged = envtest::forged_review(n, "forged");
    let (code, answer) = scribe.post_review(&forged, &[]);
    assert_eq!(code, Some(200), "{answer}");
    assert!(answer.contains("\"allowed\":true"), "{answer}");

    let real = Obj::namespaced("v1", "configmaps", n, "real");
    eventually(
        Duration::from_secs(60),
        "alice's create is recorded",
        || scribe.file(&real.path()).is_some(),
    );
    let history = scribe.git(&["log", "--format=%an|%s", "main", "--", &real.path()]);
    assert!(
        history
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("alice@example.com|create v1 ConfigMap")),
        "authored by the admission's user: {history}"
    );
    // The forged review's note expires unconfirmed (the cluster has no such object).
    eventually(Duration::from_secs(60), "the forged note expires", || {
        scribe
            .metric("kubescribe_reconcile_phantoms_total ")
            .unwrap_or(0.0)
            >= 1.0
    });
    let forged_path = Obj::namespaced("v1", "configmaps", n, "forged").path();
    let everything = scribe.git(&["log", "--all", "--name-only", "--format="]);
    assert!(!everything.contains(&forged_path), "{everything}");
    let count = scribe
        .metric("kubescribe_reconcile_noted_latency_seconds_count ")
        .unwrap_or(0.0);
    let sum = scribe
        .metric("kubescribe_reconcile_noted_latency_seconds_sum ")
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{}", scribe.log());
    // For docs/performance.md: admission's note to the durable commit.
    eprintln!(
        "record: confirmed: {count} commits, mean {:.1} ms from admission",
        sum / count * 1000.0
    );
    let client = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[real]).await;
}

/// `secrets: sops` in the reconciler (issue 17): the snapshot writes a Secret made
/// before kubescribe as a SOPS file that decrypts to the live data, a second
/// snapshot of the same Secret leaves its file alone, and a change made while
/// kubescribe was down is caught up encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_writes_secrets_encrypted_and_never_churns_them() {
    use common::sops::{keygen, sops_decrypt};
    let plane = plane();
    let ns = plane.namespace("snapsops");
    let n = ns.as_str();
    ok(
        plane,
        ALICE,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "-n",
            n,
            "--from-literal=password=correct-horse",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(dir.path(), "flux");
    let (ours_key, _, _) = keygen(dir.path(), "kubescribe");
    let config = format!(
        "secrets: sops\nsops:\n  identityFile: {}\n  recipients: [{flux}]\n{}",
        ours_key.display(),
        reconcile_config(plane, dir.path(), n)
    );
    let mut scribe = Kubescribe::start(plane, "snapsops", &config);
    let path = format!("{n}/core/secrets/db.yaml");
    let live = |plane: &ControlPlane| -> serde_json::Value {
        let out = plane.kubectl_ok(ADMIN, &["-n", n, "get", "secret", "db", "-o", "json"], None);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["data"].clone()
    };
    let decrypted = |scribe: &Kubescribe| {
        let file = scribe
            .file(&path)
            .unwrap_or_else(|| panic!("{path} recorded: {}", scribe.log()));
        sops_decrypt(dir.path(), &file, &flux_key).unwrap()["data"].clone()
    };
    assert_eq!(decrypted(&scribe), live(plane));
    let commits = |scribe: &Kubescribe| scribe.git(&["rev-list", "--count", "main", "--", &path]);
    assert_eq!(commits(&scribe).trim(), "1");

    // A restart snapshots the same Secret again: its file stays as it is.
    scribe.stop();
    scribe.restart();
    assert_eq!(commits(&scribe).trim(), "1", "{}", scribe.log());

    // Changed while kubescribe is down: caught up, encrypted.
    scribe.stop();
    ok(
        plane,
        ALICE,
        &[
            "patch",
            "secret",
            "db",
            "-n",
            n,
            "-p",
            r#"{"stringData":{"password":"battery-staple"}}"#,
        ],
    );
    scribe.restart();
    assert_eq!(decrypted(&scribe), live(plane));
    assert_eq!(commits(&scribe).trim(), "2");
    // The snapshot's commit names the value that changed, never the value.
    let said = scribe.git(&["log", "-1", "--format=%B", "main", "--", &path]);
    assert!(
        said.contains(&format!(
            "Secrets, values changed (encrypted with SOPS):\n- {path}: data.password\n"
        )),
        "{said}"
    );
    let history = scribe.git(&["log", "-p", "--all"]);
    assert!(
        !history.contains("correct-horse") && !history.contains("battery-staple"),
        "{history}"
    );
}
