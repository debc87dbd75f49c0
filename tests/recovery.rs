//! Crash recovery at start: the leftovers a kill at the wrong instant leaves in the
//! repository (a branch lock, kubescribe's `.keep` files, a pack without its index,
//! temporary files) are removed before the writer opens it, so the next write is
//! recorded instead of failing until someone cleans up by hand.

mod common;

use common::{fixture, recorded_sha, TestServer};

const CONFIG: &str = "rules:\n- name: all\n  wait: commit\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_removes_what_a_crash_left_and_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!("dataDir: {}\n{CONFIG}", data.display());
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), &config).await;
    let first = server.send(&fixture("009")).await;
    let first = recorded_sha(&first).expect("recorded");
    let repo = server.repo.clone();
    server.server.shutdown().await.unwrap();

    // What a SIGKILL during a batch leaves: the branch's lock (mid ref update), a
    // .keep and a pack with no index (mid pack write), our temporary files and git's.
    let pack_dir = repo.join("objects/pack");
    let pack = std::fs::read_dir(&pack_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .expect("the first batch's pack");
    let keep = pack.with_extension("keep");
    std::fs::write(&keep, "kubescribe: not yet named by a branch\n").unwrap();
    std::fs::write(repo.join("refs/heads/main.lock"), "").unwrap();
    let orphan = pack_dir.join("pack-0123456789abcdef0123456789abcdef01234567.pack");
    std::fs::write(&orphan, b"PACK\0\0\0\x02").unwrap();
    let temp = pack_dir.join("pack-feed.idx.tmp");
    std::fs::write(&temp, "").unwrap();

    let server = TestServer::start_in(tempfile::tempdir().unwrap(), &config).await;
    let second = server.send(&fixture("017")).await;
    assert!(
        recorded_sha(&second).is_some(),
        "the write after the restart is recorded, not failed by the stale lock: {second}"
    );
    for gone in [repo.join("refs/heads/main.lock"), keep, orphan, temp] {
        assert!(!gone.exists(), "{} is removed", gone.display());
    }
    assert!(pack.exists(), "the pack the branch names stays");
    for (leftover, count) in [
        ("ref_lock", 1.0),
        ("keep", 1.0),
        ("pack_without_index", 1.0),
        ("temporary", 1.0),
    ] {
        let sample = format!("kubescribe_store_recovered_total{{leftover=\"{leftover}\"}} ");
        assert_eq!(common::metric(&server, &sample).await, count, "{sample}");
    }
    let log = server.git(&["log", "--format=%H", "main"]);
    assert!(
        log.contains(&first[..12]) || log.lines().any(|l| l.starts_with(&first)),
        "{log}"
    );
    assert_eq!(
        log.lines().count(),
        2,
        "both writes are on the branch:\n{log}"
    );
    let fsck = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&repo)
        .args(["fsck", "--strict", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "git fsck: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// A repository that cannot be opened (here: its parent is a file, as when a volume
/// is not what it should be) does not stop the server: /readyz fails with the
/// reason, waiting writes are denied with it, and once the cause is gone the writer
/// opens the repository by itself and commits what it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_cannot_be_opened_fails_readyz_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("volume");
    std::fs::write(&blocker, "not a directory").unwrap();
    let repo = blocker.join("repo.git");
    let config = format!(
        "repository:\n  path: {}\nrules:\n- name: held\n  namespaces: [team-a-0]\n  wait: commit\n- name: rest\n",
        repo.display()
    );
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), &config).await;
    let template = fixture("009").review;
    let review = |n| kubescribe::load::spread_review(&template, n, 10);

    let (status, body) = server.get("/readyz").await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("cannot open the repository") && body.contains("no restart needed"),
        "{body}"
    );

    // Waiting: denied with the reason. Not waiting: admitted, and kept.
    let answer = send(&server, &review(0)).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("cannot open the repository"), "{message}");
    let answer = send(&server, &review(1)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    std::fs::remove_file(&blocker).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // /readyz is polled, as the kubelet does: the retry has no event to wait for.
    while server.get("/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < until, "never ready again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let answer = send(&server, &review(10)).await;
    assert!(recorded_sha(&answer).is_some(), "{answer}");
    let files = common::git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    let kept = format!(
        "team-a-1/core/configmaps/{}.yaml",
        review(1)["request"]["name"].as_str().unwrap()
    );
    assert!(
        files.contains(&kept),
        "the admitted write was kept: {files}"
    );
    server.server.shutdown().await.unwrap();
}

async fn send(server: &TestServer, review: &serde_json::Value) -> serde_json::Value {
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=3s", common::body(review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    answer
}
