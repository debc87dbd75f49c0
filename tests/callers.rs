//! Secure by default: a configuration whose commits can reach the cluster through a
//! GitOps tool (a remote; every `then: deny` rule has one) does not start without a way to
//! authenticate callers, unless the risk is accepted in writing; and `/metrics` can
//! move to a plain-HTTP address of its own.

mod common;

use std::io::{Read, Write};
use std::process::Command;

fn serve(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kubescribe.yaml");
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KUBESCRIBE_LOG_FORMAT", "text")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A configuration it accepts keeps serving: stop it once it says so.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > until {
            child.kill().unwrap();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_remote_or_then_deny_without_caller_authentication_is_refused_at_start() {
    for (config, why) in [
        (
            "repository:\n  remote:\n    url: https://git.example.com/ops/cluster.git\n",
            "repository default pushes to https://git.example.com/ops/cluster.git",
        ),
        (
            "repository:\n  remote:\n    url: file:///srv/gitops.git\nrules:\n- name: gitops\n  wait: push\n  then: deny\n",
            "pushes to file:///srv/gitops.git",
        ),
    ] {
        let out = serve(config);
        assert_eq!(out.status.code(), Some(2), "{config}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            stderr.contains("server.clientAuth.caFile")
                && stderr.contains("server.clientAuth.tokenFile")
                && stderr.contains("allowUnauthenticated"),
            "the message says how to fix it: {stderr}"
        );
    }
}

#[test]
fn allowed_names_need_a_client_ca() {
    let out = serve("server:\n  clientAuth:\n    allowedNames: [kube-apiserver]\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("allowedNames needs server.clientAuth.caFile"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unauthenticated_is_explicit_and_metrics_can_move_to_their_own_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = common::TestServer::start(&format!(
        "server:\n  metricsListen: 127.0.0.1:{port}\n  clientAuth:\n    allowUnauthenticated: true\nrepository:\n  remote:\n    url: file:///nonexistent/remote.git\n"
    ))
    .await;
    let (status, _) = server.get("/metrics").await;
    assert_eq!(status, 404, "/metrics is no longer on the webhook's port");
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 200);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("# TYPE kubescribe_commits counter\n"),
        "{answer}"
    );
}

/// Runs `openssl s_client` against `port` with one HTTP/1.1 request on stdin; its
/// whole output (session details and the answer).
fn s_client(port: u16, ca: &std::path::Path, args: &[&str], request: &str) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_3",
            "-ign_eof",
            "-CAfile",
        ])
        .arg(ca)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_on_every_connection_and_compared_as_http_says() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let made = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .args(["certs", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(made.status.success());
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let server = common::TestServer::start(&format!(
        "server:\n  clientAuth:\n    caFile: {}\n    allowedNames: [KUBE-APISERVER]\n    tokenFile: {}\n",
        pki.join("ca.crt").display(),
        token.display()
    ))
    .await;
    let port = server.server.local_addr().port();
    let ca = server.server.dev_ca.clone().unwrap();
    let empty_post = |extra: &str| {
        format!("POST /validate HTTP/1.1\r\nHost: kubescribe\r\nContent-Type: application/json\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n")
    };
    let cert = pki.join("client.crt");
    let key = pki.join("client.key");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let sessions = dir.path().join("session.pem");
    let session = sessions.to_str().unwrap();

    // The certificate passes (names compare without case); the request then reaches
    // the handler, which finds no review in an empty body: 400, not 401.
    let first = s_client(
        port,
        &ca,
        &["-cert", cert, "-key", key, "-sess_out", session],
        &empty_post(""),
    );
    assert!(first.contains("HTTP/1.1 400"), "{first}");
    // No session to resume: a resumed session would carry the first handshake's
    // certificate, not checked again (against a rotated CA, or past its expiry).
    // So either no ticket was issued, or offering it without the certificate
    // proves nothing.
    if sessions.exists() {
        let second = s_client(port, &ca, &["-sess_in", session], &empty_post(""));
        assert!(
            !second.contains("Reused,"),
            "a session was resumed:\n{second}"
        );
        assert!(second.contains("HTTP/1.1 401"), "{second}");
    }
    // The bearer scheme's name is case-insensitive; the token is not.
    let lower = s_client(
        port,
        &ca,
        &[],
        &empty_post("authorization: bearer s3cret\r\n"),
    );
    assert!(lower.contains("HTTP/1.1 400"), "{lower}");
    let wrong = s_client(
        port,
        &ca,
        &[],
        &empty_post("Authorization: Bearer S3CRET\r\n"),
    );
    assert!(wrong.contains("HTTP/1.1 401"), "{wrong}");
    // Only the exact routes exist; variants are not a way round the check.
    for path in ["//validate", "/validate/", "/VALIDATE", "/%76alidate"] {
        let answer = s_client(
            port,
            &ca,
            &[],
            &empty_post("").replacen("/validate", path, 1),
        );
        assert!(answer.contains("HTTP/1.1 404"), "{path}: {answer}");
    }
    // The probes need nothing.
    let probe = s_client(
        port,
        &ca,
        &[],
        "GET /healthz HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
    );
    assert!(probe.contains("HTTP/1.1 200"), "{probe}");
}
