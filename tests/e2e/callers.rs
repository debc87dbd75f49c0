//! Only the apiserver can make kubescribe write: the apiserver presents the client
//! certificate (or token) of its AdmissionConfiguration, and a forged review sent
//! straight to the port, without it, with a certificate of another CA, with a name
//! not allowed or a wrong token, is refused and leaves no commit.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::envtest::plane::ControlPlane;
use crate::envtest::{assert_git_matches_cluster, Kubescribe, Obj, ADMIN, ALICE};

/// A real apiserver review (a ConfigMap create, from the recordings), moved into
/// `namespace` so kubescribe's rule would record it.
fn forged_review(namespace: &str, name: &str) -> String {
    let mut review = crate::common::fixture("009").review;
    review["request"]["namespace"] = Value::from(namespace);
    review["request"]["name"] = Value::from(name);
    review["request"]["object"]["metadata"]["namespace"] = Value::from(namespace);
    review["request"]["object"]["metadata"]["name"] = Value::from(name);
    review["request"]["userInfo"]["username"] = Value::from("mallory");
    review.to_string()
}

/// What curl got from POSTing `body` to `/validate`: the HTTP status (None when no
/// answer came, as after a refused handshake) and the body.
fn post(scribe: &Kubescribe, body: &str, extra: &[&str]) -> (Option<u16>, String) {
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("review.json");
    std::fs::write(&body_file, body).unwrap();
    let answer = dir.path().join("answer");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-o"])
        .arg(&answer)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(scribe.serving_ca())
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body_file.display()))
        .args(extra)
        .arg(format!("{}/validate?timeout=10s", scribe.url()))
        .output()
        .expect("curl runs");
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let text = std::fs::read_to_string(&answer).unwrap_or_default();
    ((code != 0).then_some(code), text)
}

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
        post(&scribe, &forged, &["--http1.1"]),
        "neither a client certificate nor a bearer token",
    );
    assert_refused(
        "no certificate, HTTP/2",
        post(&scribe, &forged, &["--http2"]),
        "neither a client certificate",
    );
    assert_refused(
        "a token but no certificate",
        post(
            &scribe,
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
    let (code, body) = post(
        &scribe,
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
    let (code, body) = post(
        &scribe,
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
    let (code, body) = post(
        &scribe,
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
    assert_refused("no token", post(&scribe, &forged, &[]), "neither");
    assert_refused(
        "a wrong token",
        post(
            &scribe,
            &forged,
            &["-H", "Authorization: Bearer e2e-webhook-caller-tokem"],
        ),
        "does not match",
    );
    // Without caFile no certificate is asked for, so presenting one proves nothing.
    assert_refused(
        "a certificate where a token is wanted",
        post(
            &scribe,
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
