//! Only the apiserver can make kubescribe write: the apiserver presents the client
//! certificate (or token) of its AdmissionConfiguration, and a forged review sent
//! straight to the port, without it, with a certificate of another CA, with a name
//! not allowed or a wrong token, is refused and leaves no commit.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::envtest::plane::ControlPlane;
use crate::envtest::{assert_git_matches_cluster, forged_review, Kubescribe, Obj, ADMIN, ALICE};

fn assert_refused(what: &str, (code, body): (Option<u16>, String), reason: &str) {
    assert_eq!(code, Some(401), "{what}: {body}");
    let answer: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: JSON answer: {body}"));
    assert_eq!(answer["status"], 401, "{what}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("only from the apiserver") && message.contains(reason),
        "{what}: {message}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_the_apiserver_can_make_a_commit() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("mtls");
    let n = ns.as_str();
    // The harness's default: caFile is the apiserver's client CA, allowedNames
    // [kube-apiserver].
    let scribe = Kubescribe::start(
        plane,
        "mtls",
        &format!("rules:\n- name: e2e\n  namespaces: [{n}]\n  wait: commit\n"),
    );
    scribe.await_webhook(n);
    plane.kubectl_ok(
        ALICE,
        &["create", "configmap", "real", "-n", n, "--from-literal=k=v"],
        None,
    );
    let commits = scribe.commit_count();
    assert_eq!(commits, 1, "the apiserver's write is recorded");

    let forged = forged_review(n, "forged");
    assert_refused(
        "no certificate",
        scribe.post_review(&forged, &["--http1.1"]),
        "neither a client certificate nor a bearer token",
    );
    assert_refused(
        "no certificate, HTTP/2",
        scribe.post_review(&forged, &["--http2"]),
        "neither a client certificate",
    );
    assert_refused(
        "a token but no certificate",
        scribe.post_review(
            &forged,
            &["-H", "Authorization: Bearer e2e-webhook-caller-token"],
        ),
        "no client certificate, and bearer tokens are not accepted",
    );
    // A certificate of another CA ends the handshake: no HTTP answer at all.
    let other = tempfile::tempdir().unwrap();
    let made = Command::new(crate::envtest::scribe::binary())
        .args(["certs", "--out"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    let (code, body) = scribe.post_review(
        &forged,
        &[
            "--cert",
            path(&other.path().join("client.crt")),
            "--key",
            path(&other.path().join("client.key")),
        ],
    );
    assert_eq!(
        code, None,
        "a certificate of another CA is refused in the handshake: {body}"
    );

    // The apiserver's own certificate passes (curl holding it is the apiserver, as
    // far as anyone can tell): the check is the certificate, not the client.
    let (code, body) = scribe.post_review(
        &forged_review(n, "with-the-cert"),
        &[
            "--cert",
            path(&plane.webhook_client_cert),
            "--key",
            path(&plane.webhook_client_key),
        ],
    );
    assert_eq!(code, Some(200), "{body}");
    assert_eq!(scribe.commit_count(), commits + 1);

    let refused = scribe.metric("kubescribe_callers_refused_total{reason=\"no_credentials\"} ");
    assert_eq!(refused, Some(2.0), "each refusal is counted");
    let client = plane.client(ADMIN).await;
    let real = Obj::namespaced("v1", "configmaps", n, "real");
    let forged = Obj::namespaced("v1", "configmaps", n, "forged");
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[real, forged]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_name_not_allowed_is_refused_and_a_waiting_rule_fails_closed() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("names");
    let n = ns.as_str();
    let config = format!(
        "server:\n  clientAuth:\n    caFile: {}\n    allowedNames: [ci-robot]\nrules:\n- name: e2e\n  namespaces: [{n}]\n  wait: commit\n",
        plane.webhook_client_ca.display()
    );
    let scribe = Kubescribe::start(plane, "names", &config);
    let (code, body) = scribe.post_review(
        &forged_review(n, "named"),
        &[
            "--cert",
            path(&plane.webhook_client_cert),
            "--key",
            path(&plane.webhook_client_key),
        ],
    );
    assert_refused("a name not allowed", (code, body), "kube-apiserver");
    // The apiserver's calls are refused too: the waiting rule's write fails.
    let out = plane.kubectl(ALICE, &["create", "configmap", "blocked", "-n", n], None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("e2e.hold.kubescribe.io"),
        "{said}"
    );
    assert_eq!(scribe.commit_count(), 0, "nothing was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_authenticates_the_apiserver_instead() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("token");
    let n = ns.as_str();
    let config = format!(
        "server:\n  clientAuth:\n    tokenFile: {}\nrules:\n- name: e2e\n  namespaces: [{n}]\n  wait: commit\n",
        plane.webhook_token_file.display()
    );
    let scribe = Kubescribe::start(plane, "token", &config);
    scribe.await_webhook(n);
    plane.kubectl_ok(ALICE, &["create", "configmap", "real", "-n", n], None);
    assert_eq!(scribe.commit_count(), 1);
    let forged = forged_review(n, "forged");
    assert_refused("no token", scribe.post_review(&forged, &[]), "neither");
    assert_refused(
        "a wrong token",
        scribe.post_review(
            &forged,
            &["-H", "Authorization: Bearer e2e-webhook-caller-tokem"],
        ),
        "does not match",
    );
    // Without caFile no certificate is asked for, so presenting one proves nothing.
    assert_refused(
        "a certificate where a token is wanted",
        scribe.post_review(
            &forged,
            &[
                "--cert",
                path(&plane.webhook_client_cert),
                "--key",
                path(&plane.webhook_client_key),
            ],
        ),
        "neither",
    );
    assert_eq!(scribe.commit_count(), 1, "no forged review was recorded");
}
