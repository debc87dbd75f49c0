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
