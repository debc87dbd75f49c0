//! What the queue to the writer, and the requests in flight, may hold: bounded in
//! bytes (`store.queueBytes`, `server.maxInFlightBytes`), and given back when a
//! change moves to the retry list. The writer is held or made to fail with fault
//! points (`kubescribe::fault`), never with sleeps.

mod common;

use std::time::Duration;

use common::{body, TestServer};
use kubescribe::fault::{Faults, Gate, Switch};
use serde_json::Value;

/// The n-th ConfigMap create in `namespace`, and its file.
fn write(n: usize, namespace: &str) -> (Value, String) {
    let mut review = kubescribe::load::unique_review(&common::fixture("009").review, n);
    let request = &mut review["request"];
    request["namespace"] = Value::String(namespace.into());
    request["object"]["metadata"]["namespace"] = Value::String(namespace.into());
    let path = format!(
        "{namespace}/core/configmaps/{}.yaml",
        request["name"].as_str().unwrap()
    );
    (review, path)
}

async fn send(server: &TestServer, review: &Value, timeout: &str) -> (u16, Value) {
    let (status, answer) = server
        .connect()
        .await
        .review(&format!("/validate?timeout={timeout}"), body(review))
        .await
        .expect("answered");
    (status.as_u16(), answer)
}

fn full(answer: &Value) -> bool {
    answer["response"]["warnings"]
        .to_string()
        .contains("the change queue is full")
}

/// `wait: none` everywhere but the `sync` namespace, whose `wait: commit` write is
/// answered once everything queued before it is committed.
const RULES: &str = "rules:\n- name: sync\n  namespaces: [sync]\n  wait: commit\n- name: rest\n";

/// The files of `main`; nothing before its first commit.
fn files(server: &TestServer) -> String {
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&server.repo)
        .args(["ls-tree", "-r", "--name-only", "main"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_holds_at_most_queue_bytes_of_files() {
    let disk = Gate::closed();
    let server = TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        // 16 KiB: sixteen small files (each counts at least 1 KiB).
        &format!("store:\n  queueBytes: 16384\n{RULES}"),
        Faults {
            before_durable: Some(disk.clone()),
            ..Faults::default()
        },
    )
    .await;
    let (first, first_path) = write(0, "team-a");
    let (_, answer) = send(&server, &first, "10s").await;
    assert!(!full(&answer), "{answer}");
    disk.arrivals(1).await;
    // The writer is held with its batch: what comes now waits in the queue.
    let mut queued = vec![first_path];
    let mut refused = Vec::new();
    for n in 1..40 {
        let (review, path) = write(n, "team-a");
        let (status, answer) = send(&server, &review, "10s").await;
        assert_eq!(status, 200);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        if full(&answer) {
            refused.push(path);
        } else {
            queued.push(path);
        }
    }
    assert!(
        (15..=17).contains(&queued.len()) && !refused.is_empty(),
        "queued {} refused {}",
        queued.len(),
        refused.len()
    );
    disk.open();
    let (sync, _) = write(100, "sync");
    assert_eq!(
        send(&server, &sync, "10s").await.1["response"]["allowed"],
        true
    );
    let files = files(&server);
    for path in &queued {
        assert!(files.contains(path), "{path} was queued");
    }
    for path in &refused {
        assert!(!files.contains(path), "{path} was refused");
    }
    // Room again once the writer is through.
    let (later, _) = write(200, "team-a");
    assert!(!full(&send(&server, &later, "10s").await.1));
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_moved_to_the_retry_list_give_their_queue_bytes_back() {
    let failing = Switch::default();
    failing.set(true);
    let server = TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        &format!("store:\n  queueBytes: 16384\n{RULES}"),
        Faults {
            failing_disk: Some(failing.clone()),
            ..Faults::default()
        },
    )
    .await;
    let mut paths = Vec::new();
    // Ten, then ten more once the first ten failed into the retry list: twenty in
    // all, more than the queue's sixteen, none refused.
    for round in 0..2 {
        for n in 0..10 {
            let (review, path) = write(round * 10 + n, "team-a");
            let (_, answer) = send(&server, &review, "10s").await;
            assert!(!full(&answer), "{answer}");
            paths.push(path);
        }
        let expected = (round + 1) * 10;
        wait_for_retry_depth(&server, expected as f64).await;
    }
    failing.set(false);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    // The retry list is retried on its own backoff: poll git for the outcome.
    while !paths.iter().all(|p| files(&server).contains(p)) {
        assert!(std::time::Instant::now() < until, "{}", files(&server));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.server.shutdown().await.unwrap();
}

/// Polls `kubescribe_store_retry_depth` until it reaches `depth`: the writer fails
/// its batch on its own schedule.
async fn wait_for_retry_depth(server: &TestServer, depth: f64) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (value, text) = common::sample_of(server, "kubescribe_store_retry_depth").await;
        if value.is_some_and(|v| v >= depth) {
            return;
        }
        assert!(std::time::Instant::now() < until, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_hold_at_most_max_in_flight_bytes() {
    let disk = Gate::closed();
    let server = TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        // Each review (~1 KiB) is charged 16 times its length: one fits in 30 KiB.
        "server:\n  maxBodyBytes: 30720\n  maxInFlightBytes: 30720\nrules:\n- name: all\n  wait: commit\n",
        Faults {
            before_durable: Some(disk.clone()),
            ..Faults::default()
        },
    )
    .await;
    let (first, _) = write(1, "team-a");
    let mut first = Box::pin({
        let server = &server;
        async move { send(server, &first, "10s").await }
    });
    tokio::select! {
        () = disk.arrivals(1) => {}
        answer = &mut first => panic!("answered before the writer took it: {answer:?}"),
    }
    let (second, _) = write(2, "team-a");
    let (status, answer) = send(&server, &second, "2s").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("maxInFlightBytes")),
        "{answer}"
    );
    disk.open();
    let (status, answer) = (&mut first).await;
    drop(first);
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(
        common::metric(
            &server,
            "kubescribe_overload_refused_total{reason=\"in_flight\"}"
        )
        .await,
        1.0
    );
    server.server.shutdown().await.unwrap();
}
