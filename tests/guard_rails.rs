//! Guard rails in the live webhook, over real TLS: enforce denies, audit warns, a dry
//! run gets the same verdict, and `requireRecording` denies writes the repository
//! cannot take.

mod common;

use common::{body, warnings, TestServer};
use serde_json::Value;

/// Fixture 009 (alice creates ConfigMap team-a/app-config) with Flux's labels on it.
fn flux_managed(dry_run: bool) -> Value {
    let mut review = common::fixture("009").review;
    let labels = serde_json::json!({
        "kustomize.toolkit.fluxcd.io/name": "apps",
        "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
    });
    review["request"]["object"]["metadata"]["labels"] = labels;
    review["request"]["dryRun"] = Value::Bool(dry_run);
    review
}

async fn send(server: &TestServer, review: &Value) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=5s", body(review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    answer
}

fn files(server: &TestServer) -> String {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&server.repo)
        .args(["ls-tree", "-r", "--name-only", "main"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_to_a_flux_managed_object_is_denied_and_its_dry_run_too() {
    let server = TestServer::start(
        "guardRails:\n  gitopsManaged:\n    mode: enforce\nrules:\n- name: all\n  wait: commit\n",
    )
    .await;
    for dry_run in [true, false] {
        let answer = send(&server, &flux_managed(dry_run)).await;
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("the Flux Kustomization flux-system/apps"),
            "{message}"
        );
    }
    assert!(
        files(&server).is_empty(),
        "a denied write is never recorded"
    );

    // Flux itself may write it.
    let mut review = flux_managed(false);
    review["request"]["userInfo"]["username"] =
        Value::String("system:serviceaccount:flux-system:kustomize-controller".to_owned());
    let answer = send(&server, &review).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_allows_records_and_warns() {
    let server = TestServer::start(
        "guardRails:\n  gitopsManaged:\n    mode: audit\nrules:\n- name: all\n  wait: commit\n",
    )
    .await;
    let answer = send(&server, &flux_managed(false)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let warnings = warnings(&answer);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("kubescribe: audit: gitopsManaged: ")),
        "{warnings:?}"
    );
    assert!(files(&server).contains("team-a/core/configmaps/app-config.yaml"));
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_recording_denies_writes_the_repository_cannot_take() {
    let server = TestServer::start(
        "guardRails:\n  requireRecording:\n    mode: enforce\nrules:\n- name: all\n  wait: none\n",
    )
    .await;
    let template = common::fixture("009").review;
    // Healthy: admitted at once, recorded in the background.
    let answer = send(&server, &kubescribe::load::unique_review(&template, 1)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // Another process holds the branch lock: the next batch fails...
    let lock = server.repo.join("refs/heads/main.lock");
    std::fs::write(&lock, "").unwrap();
    let answer = send(&server, &kubescribe::load::unique_review(&template, 2)).await;
    assert_eq!(
        answer["response"]["allowed"], true,
        "not known to fail yet: {answer}"
    );
    // The writer's next batch fails on the lock (awaited on the metric, not timed).
    let failed = "kubescribe_store_errors_total{reason=\"branch\"}";
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::sample_of(&server, failed).await.0.unwrap_or(0.0) < 1.0 {
        assert!(
            std::time::Instant::now() < until,
            "the batch never failed on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let denied = send(&server, &kubescribe::load::unique_review(&template, 3)).await;
    assert_eq!(denied["response"]["allowed"], false, "{denied}");
    // ...and from then on writes wait for their commit, and are denied.
    let message = denied["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("requireRecording"), "{message}");
    assert!(message.contains("locked the branch"), "{message}");

    // The lock is gone: the next write is recorded before it is admitted.
    std::fs::remove_file(&lock).unwrap();
    let answer = send(&server, &kubescribe::load::unique_review(&template, 999)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(files(&server).contains("app-config-999.yaml"));
    server.server.shutdown().await.unwrap();
}
