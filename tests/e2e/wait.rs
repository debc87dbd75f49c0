//! Waiting rules under the apiserver's real `failurePolicy` and `timeoutSeconds`:
//! `wait: push` to a loopback smart-HTTP remote, with the remote up and down;
//! `then: deny`; and kubescribe stopped altogether.

use crate::common::remotes::SmartHttp;
use crate::envtest::scribe::{file_at, git};
use crate::envtest::{assert_git_matches_cluster, ControlPlane, Kubescribe, Obj, ADMIN, ALICE};

/// A `wait: push` rule for `namespace`, pushing to `http` with its test credentials.
fn push_config(http: &SmartHttp, dir: &std::path::Path, namespace: &str, then: &str) -> String {
    let password = dir.join("password");
    std::fs::write(&password, format!("{}\n", SmartHttp::password())).unwrap();
    format!(
        "repository:\n  remote:\n    url: {}\n    username: {}\n    passwordFile: {}\nrules:\n- name: e2e\n  namespaces: [{namespace}]\n  wait: push\n  then: {then}\n",
        http.url(),
        SmartHttp::username(),
        password.display()
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn create_configmap(scribe: &Kubescribe, ns: &str, name: &str) -> std::process::Output {
    scribe.kubectl(
        ALICE,
        &["create", "configmap", name, "-n", ns, "--from-literal=k=v"],
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_push_admits_once_pushed_and_denies_with_its_reason_when_the_remote_is_down() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("push");
    let mut http = SmartHttp::start();
    let dir = tempfile::tempdir().unwrap();
    let scribe = Kubescribe::start(plane, "push", &push_config(&http, dir.path(), &ns, "allow"));
    scribe.await_webhook(&ns);

    let out = create_configmap(&scribe, &ns, "first");
    assert!(out.status.success(), "{}\n{}", stderr(&out), scribe.log());
    assert!(
        stderr(&out).contains("Warning: pushed "),
        "kubectl shows the push: {}",
        stderr(&out)
    );
    let first = Obj::namespaced("v1", "configmaps", &ns, "first");
    assert!(
        file_at(&http.repo(), "main", &first.path()).is_some(),
        "the remote has the file once kubectl returns"
    );

    // With the remote gone, the apiserver gets kubescribe's own denial before the
    // webhook's timeoutSeconds; after it, kubectl would see the apiserver's
    // "context deadline exceeded" instead.
    http.stop();
    let out = create_configmap(&scribe, &ns, "second");
    assert!(
        !out.status.success(),
        "a write whose push failed is refused"
    );
    let said = stderr(&out);
    assert!(
        said.contains("kubescribe could not push this change") && said.contains("Retry the write"),
        "the denial is kubescribe's, in time, and says what to do: {said}"
    );
    let second = Obj::namespaced("v1", "configmaps", &ns, "second");

    http.restart();
    let out = create_configmap(&scribe, &ns, "third");
    assert!(out.status.success(), "{}\n{}", stderr(&out), scribe.log());
    let third = Obj::namespaced("v1", "configmaps", &ns, "third");

    let client = plane.client(ADMIN).await;
    // The denied write is in neither the cluster nor git: its commit was reverted
    // before the next push, so the remote never had it either.
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[first, second, third]).await;
    assert_git_matches_cluster(&http.repo(), "main", &client, &[first, second, third]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn then_deny_records_the_change_and_refuses_the_write() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("gitops");
    let http = SmartHttp::start();
    let dir = tempfile::tempdir().unwrap();
    let scribe = Kubescribe::start(
        plane,
        "gitops",
        &push_config(&http, dir.path(), &ns, "deny"),
    );
    scribe.await_webhook(&ns);

    let out = create_configmap(&scribe, &ns, "proposed");
    assert!(!out.status.success(), "the write itself is refused");
    let said = stderr(&out);
    assert!(
        said.contains("kubescribe recorded this change in git")
            && said.contains("your GitOps tool applies it"),
        "{said}"
    );
    let get = scribe.kubectl(ADMIN, &["get", "configmap", "proposed", "-n", &ns], None);
    assert!(
        stderr(&get).contains("NotFound"),
        "the cluster does not have it: {}",
        stderr(&get)
    );
    let path = Obj::namespaced("v1", "configmaps", &ns, "proposed").path();
    let file = file_at(&http.repo(), "main", &path).expect("the remote has the change");
    assert!(file.contains("k: v"), "{file}");
    let author = git(
        &http.repo(),
        &["log", "-1", "--format=%an", "main", "--", &path],
    );
    assert_eq!(author.trim(), "alice@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kubescribe_down_recording_rules_fail_open_and_holding_rules_fail_closed() {
    let plane = ControlPlane::shared();
    let open = plane.namespace("open");
    let held = plane.namespace("held");
    let config = format!(
        "rules:\n- name: open\n  namespaces: [{open}]\n- name: held\n  namespaces: [{held}]\n  wait: commit\n"
    );
    let mut scribe = Kubescribe::start(plane, "down", &config);
    scribe.await_webhook(&open);
    scribe.await_webhook(&held);

    scribe.stop();
    let out = create_configmap(&scribe, &open, "while-down");
    assert!(
        out.status.success(),
        "failurePolicy Ignore: a wait: none rule never blocks the cluster: {}",
        stderr(&out)
    );
    let out = create_configmap(&scribe, &held, "while-down");
    assert!(
        !out.status.success(),
        "failurePolicy Fail: a waiting rule's write is refused"
    );
    let said = stderr(&out);
    assert!(
        said.contains("held.hold.kubescribe.io") && said.contains("failed calling webhook"),
        "the apiserver names the webhook it could not call: {said}"
    );

    scribe.restart();
    let out = create_configmap(&scribe, &held, "after");
    assert!(out.status.success(), "{}\n{}", stderr(&out), scribe.log());
    let client = plane.client(ADMIN).await;
    // Without the reconciler the write made while kubescribe was down is not in git
    // (docs/operations.md): the cluster has it, the branch does not.
    let missed = Obj::namespaced("v1", "configmaps", &open, "while-down");
    assert!(scribe.file(&missed.path()).is_none());
    let refused = Obj::namespaced("v1", "configmaps", &held, "while-down");
    let after = Obj::namespaced("v1", "configmaps", &held, "after");
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[refused, after]).await;
}
