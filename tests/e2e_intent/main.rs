//! Intent, not implementation: after a kubectl session by two people on a cluster
//! whose kube-controller-manager runs every controller, git holds exactly what the
//! people wrote, as the cluster keeps it, with the reconciler on and off: no
//! bootstrap policy, no `kube-system`, no `default` ServiceAccount or
//! `kube-root-ca.crt` nobody touched, and nothing of a namespace or a CRD a person
//! deleted. A control plane of its own, so its fresh state is known, in a test binary
//! of its own, so it never competes with other planes for the machine's two cores.

#[path = "../common/mod.rs"]
#[allow(unused)]
mod common;
#[path = "../envtest/mod.rs"]
#[allow(unused)]
mod envtest;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use envtest::plane::{Options, RBAC};
use envtest::{assert_git_matches_cluster, ControlPlane, Kubescribe, Obj, ADMIN, ALICE, BOB};

/// Polls `check` every 100 ms for up to `limit`: kubescribe and the controllers work
/// in the background, with nothing outside them to await.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const RECORD_ALL: &str = "rules:\n- name: all\n  namespaces: [\"*\"]\n  wait: commit\n";

fn files(scribe: &Kubescribe) -> BTreeSet<String> {
    scribe
        .git(&["ls-tree", "-r", "--name-only", "main"])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn namespace(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/metadata.name: {name}\n"
    )
}

fn deployment(ns: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.25\n"
    )
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.intent.example.com\nspec:\n  group: intent.example.com\n  scope: Namespaced\n  names:\n    plural: widgets\n    singular: widget\n    kind: Widget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n";

/// `kubectl edit` as bob, whose editor adds `imagePullSecrets` to the object.
fn kubectl_edit(plane: &ControlPlane, dir: &Path, args: &[&str]) {
    let editor = dir.join("add-pull-secret.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nf=\"$1\"\n{ printf 'imagePullSecrets:\\n- name: registry\\n'; cat \"$f\"; } > \"$f.new\" && mv \"$f.new\" \"$f\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(&plane.assets.kubectl)
        .arg(format!("--kubeconfig={}", plane.kubeconfig.display()))
        .args(["--context", BOB.context, "edit"])
        .args(args)
        .env("KUBE_EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl edit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gone(plane: &ControlPlane, args: &[&str]) -> bool {
    !plane.kubectl(ADMIN, args, None).status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_holds_only_what_people_wrote_with_the_reconciler_on_and_off() {
    let plane: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start(Options::default())));
    let _kcm = plane.start_controller_manager();
    // A fresh cluster: nothing a person wrote (the harness's own binding goes until
    // both kubescribes run; the admin writes it again, recorded as theirs).
    plane.kubectl_ok(
        ADMIN,
        &["delete", "clusterrolebinding", "e2e-everyone-is-admin"],
        None,
    );
    let kubeconfig = plane.dir.join("intent-reconciler.kubeconfig");
    plane.kubeconfig_for(ADMIN, &kubeconfig);
    let on = Kubescribe::start(
        plane,
        "intent-on",
        &format!(
            "reconcile:\n  enabled: true\n  kubeconfig: {}\n  discoveryInterval: 2s\n  watchTimeout: 5s\n  confirmWindow: 3s\n{RECORD_ALL}",
            kubeconfig.display()
        ),
    );
    assert_eq!(
        on.commit_count(),
        0,
        "the snapshot of a fresh cluster commits nothing; it wrote:\n{}",
        on.git(&["log", "--stat", "main"])
    );
    let off = Kubescribe::start(plane, "intent-off", RECORD_ALL);
    plane.kubectl_ok(ADMIN, &["apply", "-f", "-"], Some(RBAC));
    // The authorizer learns of the binding from a watch.
    eventually(Duration::from_secs(30), "alice may write again", || {
        plane
            .kubectl(ALICE, &["auth", "can-i", "create", "namespaces"], None)
            .status
            .success()
    });
    let scribes = [&on, &off];

    // The session.
    plane.kubectl_ok(ALICE, &["apply", "-f", "-"], Some(&namespace("shop")));
    for scribe in scribes {
        scribe.await_webhook("shop");
    }
    plane.kubectl_ok(
        ALICE,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "shop",
            "--from-literal=color=red",
        ],
        None,
    );
    plane.kubectl_ok(ALICE, &["apply", "-f", "-"], Some(&deployment("shop")));
    plane.kubectl_ok(
        BOB,
        &[
            "patch",
            "configmap",
            "settings",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            r#"{"data":{"color":"blue"}}"#,
        ],
        None,
    );
    plane.kubectl_ok(
        BOB,
        &["scale", "deployment", "web", "-n", "shop", "--replicas=3"],
        None,
    );

    plane.kubectl_ok(ALICE, &["apply", "-f", "-"], Some(&namespace("scratch")));
    plane.kubectl_ok(
        ALICE,
        &[
            "create",
            "configmap",
            "notes",
            "-n",
            "scratch",
            "--from-literal=a=1",
        ],
        None,
    );
    plane.kubectl_ok(
        ALICE,
        &["create", "serviceaccount", "worker", "-n", "scratch"],
        None,
    );
    plane.kubectl_ok(ALICE, &["apply", "-f", "-"], Some(&deployment("scratch")));
    eventually(
        Duration::from_secs(60),
        "the controllers filled scratch",
        || {
            plane
                .kubectl(
                    ADMIN,
                    &["get", "serviceaccount", "default", "-n", "scratch"],
                    None,
                )
                .status
                .success()
                && plane
                    .kubectl(
                        ADMIN,
                        &["get", "configmap", "kube-root-ca.crt", "-n", "scratch"],
                        None,
                    )
                    .status
                    .success()
                && plane
                    .kubectl(
                        ADMIN,
                        &["get", "replicaset", "-n", "scratch", "-o", "name"],
                        None,
                    )
                    .stdout
                    .starts_with(b"replicaset")
        },
    );
    plane.kubectl_ok(
        ALICE,
        &[
            "delete",
            "namespace",
            "scratch",
            "--wait=true",
            "--timeout=120s",
        ],
        None,
    );

    plane.kubectl_ok(ALICE, &["apply", "-f", "-"], Some(CRD));
    plane.kubectl_ok(
        ADMIN,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.intent.example.com",
            "--timeout=60s",
        ],
        None,
    );
    plane.kubectl_ok(
        ALICE,
        &["apply", "-f", "-"],
        Some("apiVersion: intent.example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: shop\nspec:\n  size: 1\n"),
    );
    plane.kubectl_ok(
        ALICE,
        &[
            "delete",
            "crd",
            "widgets.intent.example.com",
            "--wait=true",
            "--timeout=120s",
        ],
        None,
    );

    // A person's edit of an object every namespace gets is theirs.
    kubectl_edit(
        plane,
        &plane.dir,
        &["serviceaccount", "default", "-n", "shop"],
    );

    eventually(
        Duration::from_secs(60),
        "scratch and the CRD are gone",
        || {
            gone(plane, &["get", "namespace", "scratch"])
                && gone(plane, &["get", "crd", "widgets.intent.example.com"])
        },
    );

    let people_wrote: BTreeSet<String> = [
        Obj::cluster("v1", "namespaces", "shop"),
        Obj::namespaced("v1", "configmaps", "shop", "settings"),
        Obj::namespaced("apps/v1", "deployments", "shop", "web"),
        Obj::namespaced("v1", "serviceaccounts", "shop", "default"),
        Obj::cluster(
            "rbac.authorization.k8s.io/v1",
            "clusterrolebindings",
            "e2e-everyone-is-admin",
        ),
    ]
    .iter()
    .map(Obj::path)
    .collect();
    let client = plane.client(ADMIN).await;
    for (scribe, mode) in [(&on, "on"), (&off, "off")] {
        // The reconciler works in the background; its last word may come later.
        let settled = || files(scribe) == people_wrote;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !settled() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let found = files(scribe);
        let nobody_wrote: Vec<&String> = found.difference(&people_wrote).collect();
        eprintln!(
            "reconciler {mode}: {} files in git, {} that no person wrote",
            found.len(),
            nobody_wrote.len()
        );
        assert!(
            nobody_wrote.is_empty(),
            "reconciler {mode}: files no person wrote: {nobody_wrote:#?}"
        );
        assert_eq!(
            found,
            people_wrote,
            "reconciler {mode}: history:\n{}",
            scribe.git(&["log", "--format=%an %s", "--name-status", "main"])
        );
        assert_git_matches_cluster(
            &scribe.repo,
            "main",
            &client,
            &[
                Obj::cluster("v1", "namespaces", "shop"),
                Obj::namespaced("v1", "configmaps", "shop", "settings"),
                Obj::namespaced("apps/v1", "deployments", "shop", "web"),
                Obj::namespaced("v1", "serviceaccounts", "shop", "default"),
                Obj::namespaced("v1", "configmaps", "scratch", "notes"),
                Obj::namespaced("apps/v1", "deployments", "scratch", "web"),
                Obj::namespaced("v1", "serviceaccounts", "scratch", "worker"),
                Obj::namespaced("intent.example.com/v1", "widgets", "shop", "w1"),
            ],
        )
        .await;
        // The edit is bob's, with only what he wrote: no generated token.
        let sa = scribe
            .file("shop/core/serviceaccounts/default.yaml")
            .unwrap();
        assert!(sa.contains("imagePullSecrets:\n- name: registry"), "{sa}");
        assert!(!sa.contains("default-token"), "{sa}");
        // The namespace's files went in alice's delete, which says how many.
        let delete = scribe.git(&[
            "log",
            "--format=%an|%B",
            "-1",
            "--grep=^delete v1 Namespace scratch",
            "main",
        ]);
        assert!(
            delete.starts_with("alice@example.com|delete v1 Namespace scratch")
                && delete.contains("Also removes 3 files of the objects in namespace scratch"),
            "reconciler {mode}: {delete}"
        );
        let crd = scribe.git(&[
            "log",
            "--format=%an|%B",
            "-1",
            "--grep=^delete apiextensions.k8s.io/v1 CustomResourceDefinition",
            "main",
        ]);
        assert!(
            crd.starts_with("alice@example.com|")
                && crd.contains(
                    "Also removes 1 file of the widgets.intent.example.com custom resources"
                ),
            "reconciler {mode}: {crd}"
        );
        // Every change to scratch's files was a person's: the reconciler never wrote
        // one back while the namespace was going.
        let scratch = scribe.git(&["log", "--format=%an", "main", "--", "scratch/"]);
        assert!(
            scratch.lines().all(|a| a == "alice@example.com"),
            "reconciler {mode}: {scratch}"
        );
    }

    // A namespace delete another webhook refuses never lands: with the reconciler,
    // the files the recorded delete took come back.
    plane.kubectl_ok(
        ALICE,
        &["apply", "-f", "-"],
        Some(&format!(
            "{}    kustomize.toolkit.fluxcd.io/name: apps\n",
            namespace("guarded")
        )),
    );
    plane.kubectl_ok(
        ALICE,
        &[
            "create",
            "configmap",
            "kept",
            "-n",
            "guarded",
            "--from-literal=a=1",
        ],
        None,
    );
    let denier = Kubescribe::start(
        plane,
        "intent-denier",
        "guardRails:\n  gitopsManaged:\n    mode: enforce\nrules:\n- name: deny\n  namespaces: [\"*\"]\n",
    );
    denier.await_webhook("guarded");
    let out = plane.kubectl(
        ALICE,
        &["delete", "namespace", "guarded", "--wait=false"],
        None,
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("gitopsManaged"),
        "the other webhook refuses it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guarded = [
        Obj::cluster("v1", "namespaces", "guarded"),
        Obj::namespaced("v1", "configmaps", "guarded", "kept"),
    ];
    eventually(
        Duration::from_secs(60),
        "the phantom delete is undone",
        || {
            let now = files(&on);
            guarded.iter().all(|o| now.contains(&o.path()))
        },
    );
    let log = on.git(&["log", "--format=%an|%s", "main"]);
    assert!(
        log.contains("alice@example.com|delete v1 Namespace guarded")
            && log.contains("kubescribe|reconcile: revert delete v1 Namespace guarded"),
        "recorded, then reverted:\n{log}"
    );
    assert_git_matches_cluster(&on.repo, "main", &client, &guarded).await;
}
