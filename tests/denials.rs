//! A write the caller was told was denied never stays in git and never reaches the
//! remote's branch on its own. The disk and the remote are made slow with fault
//! gates (`kubescribe::fault`) the tests hold and open, never with sleeps: each
//! test knows exactly where the writer or the pusher is when the deadline passes.

mod common;

use std::path::{Path, PathBuf};

use common::{allowed, body, git, message, TestServer};
use kubescribe::fault::{Faults, Gate};
use kubescribe::load::unique_review;
use serde_json::Value;

/// The n-th ConfigMap create and the file it is recorded in.
fn write(n: usize) -> (Value, String) {
    let review = unique_review(&common::fixture("009").review, n);
    let request = &review["request"];
    let path = format!(
        "{}/core/configmaps/{}.yaml",
        request["namespace"].as_str().unwrap(),
        request["name"].as_str().unwrap()
    );
    (review, path)
}

async fn send(server: &TestServer, review: &Value, timeout: &str) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review(&format!("/validate?timeout={timeout}"), body(review))
        .await
        .expect("answered");
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Every file the branch's tip has.
fn files(repo: &Path, branch: &str) -> Vec<String> {
    git(repo, &["ls-tree", "-r", "--name-only", branch])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A bare remote that logs every value its `main` takes (bare repositories keep no
/// reflog by default).
fn logged_remote(dir: &Path) -> PathBuf {
    let path = dir.join("remote.git");
    git(
        Path::new("."),
        &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()],
    );
    git(&path, &["config", "core.logAllRefUpdates", "always"]);
    path
}

/// Every commit the remote's `main` ever pointed at, newest first.
fn remote_tips(remote: &Path) -> Vec<String> {
    git(
        remote,
        &["reflog", "show", "--format=%H", "refs/heads/main"],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// A server whose every rule waits for the push to `remote`, with `faults`.
async fn pushing_server(remote: &Path, faults: Faults) -> TestServer {
    TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        &format!(
            "repository:\n  remote:\n    url: file://{}\nrules:\n- name: all\n  wait: push\n",
            remote.display()
        ),
        faults,
    )
    .await
}

fn gated(before_durable: Option<&Gate>, after_push: Option<&Gate>) -> Faults {
    Faults {
        before_durable: before_durable.cloned(),
        after_push: after_push.cloned(),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lands_after_the_deadline_is_reverted() {
    let disk = Gate::closed();
    let server = TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        "rules:\n- name: all\n  wait: commit\n",
        gated(Some(&disk), None),
    )
    .await;
    let (late, late_path) = write(1);
    let answer = {
        let request = send(&server, &late, "1s");
        tokio::pin!(request);
        // The writer has the change and is making it durable; the disk stalls.
        tokio::select! {
            () = disk.arrivals(1) => {}
            answer = &mut request => panic!("answered before the writer took it: {answer}"),
        }
        request.await
    };
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(
        text.contains("if it lands, kubescribe reverts it before it is pushed"),
        "{text}"
    );

    disk.open();
    // The writer answers in order: by the time this write is recorded, the late one
    // has landed and been reverted.
    let (next, next_path) = write(2);
    let answer = send(&server, &next, "10s").await;
    assert!(allowed(&answer), "{answer}");
    let tip = files(&server.repo, "main");
    assert!(!tip.contains(&late_path), "{tip:?}");
    assert!(tip.contains(&next_path), "{tip:?}");
    let history = git(&server.repo, &["log", "--format=%s", "main"]);
    assert!(
        history.lines().any(|s| s.starts_with("revert create")),
        "{history}"
    );
    assert_eq!(
        common::metric(&server, "kubescribe_denied_reverted_total").await,
        1.0
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_abandoned_before_the_writer_took_it_is_never_committed() {
    let disk = Gate::closed();
    let server = TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        "rules:\n- name: all\n  wait: commit\n",
        gated(Some(&disk), None),
    )
    .await;
    // The first write holds the writer at the disk...
    let (first, first_path) = write(1);
    let mut first = Box::pin({
        let server = &server;
        async move { send(server, &first, "10s").await }
    });
    tokio::select! {
        () = disk.arrivals(1) => {}
        answer = &mut first => panic!("answered before the writer took it: {answer}"),
    }
    // ...so the second waits in the queue until its deadline, and is abandoned.
    let (second, second_path) = write(2);
    let answer = send(&server, &second, "1s").await;
    assert!(!allowed(&answer), "{answer}");
    assert!(
        message(&answer).contains("not made before the apiserver's deadline"),
        "{answer}"
    );
    disk.open();
    let answer = (&mut first).await;
    drop(first);
    assert!(allowed(&answer), "{answer}");
    let (third, _) = write(3);
    assert!(allowed(&send(&server, &third, "10s").await));

    let everything = git(&server.repo, &["log", "--all", "--name-only", "--format="]);
    assert!(everything.contains(&first_path), "{everything}");
    assert!(
        !everything.contains(&second_path),
        "an abandoned change is never committed: {everything}"
    );
    assert_eq!(
        common::metric(&server, "kubescribe_denied_reverted_total").await,
        0.0
    );
    server.server.shutdown().await.unwrap();
}

/// The remote took the push, and its answer came after the deadline: the denial
/// says the change may reach the remote, and its revert follows it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_remote_accepts_after_the_deadline_is_followed_by_its_revert() {
    let dir = tempfile::tempdir().unwrap();
    let remote = logged_remote(dir.path());
    let answer_from_remote = Gate::closed();
    let server = pushing_server(&remote, gated(None, Some(&answer_from_remote))).await;
    let (late, late_path) = write(1);
    let answer = send(&server, &late, "1s").await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(text.contains("may still reach"), "{text}");
    // Only a push the remote accepted reaches the gate.
    answer_from_remote.arrivals(1).await;
    assert!(
        files(&remote, "main").contains(&late_path),
        "the remote took it"
    );

    answer_from_remote.open();
    let (next, next_path) = write(2);
    let answer = send(&server, &next, "10s").await;
    assert!(allowed(&answer), "{answer}");
    let tip = files(&remote, "main");
    assert!(!tip.contains(&late_path), "{tip:?}");
    assert!(tip.contains(&next_path), "{tip:?}");
    server.server.shutdown().await.unwrap();
    git(&remote, &["fsck", "--strict"]);
}

/// A denied commit behind the push in flight is held back: the remote's branch
/// never points at a tree that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_commit_behind_the_push_in_flight_never_reaches_the_remote() {
    let dir = tempfile::tempdir().unwrap();
    let remote = logged_remote(dir.path());
    let answer_from_remote = Gate::closed();
    let revert = Gate::closed();
    let server = pushing_server(
        &remote,
        Faults {
            after_push: Some(answer_from_remote.clone()),
            before_revert: Some(revert.clone()),
            ..Faults::default()
        },
    )
    .await;
    // The first write's push is in flight (the remote has it; its answer is held).
    let (first, first_path) = write(1);
    let mut first = Box::pin({
        let server = &server;
        async move { send(server, &first, "10s").await }
    });
    tokio::select! {
        () = answer_from_remote.arrivals(1) => {}
        answer = &mut first => panic!("answered before the push: {answer}"),
    }
    // The second is committed behind it and denied at its deadline.
    let (second, second_path) = write(2);
    let answer = send(&server, &second, "1s").await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(text.contains("It will not reach the remote"), "{text}");

    // The writer is about to revert it, and is held there: the pusher, told of the
    // first push, finds only a held commit behind it, and pushes nothing more.
    revert.arrivals(1).await;
    // The denial was noted on disk before it was answered.
    let notes = server.repo.join("kubescribe/denied");
    let noted: Vec<_> = std::fs::read_dir(&notes).unwrap().collect();
    assert_eq!(noted.len(), 1, "{noted:?}");
    answer_from_remote.open();
    let answer = (&mut first).await;
    drop(first);
    assert!(allowed(&answer), "{answer}");
    let tip = files(&remote, "main");
    assert!(tip.contains(&first_path), "{tip:?}");
    revert.open();
    let (third, third_path) = write(3);
    assert!(allowed(&send(&server, &third, "10s").await));
    let tip = files(&remote, "main");
    assert!(
        tip.contains(&first_path) && tip.contains(&third_path),
        "{tip:?}"
    );
    let tips = remote_tips(&remote);
    assert!(tips.len() >= 2, "{tips:?}");
    for commit in tips {
        let tree = files(&remote, &commit);
        assert!(
            !tree.contains(&second_path),
            "the remote's main was once {commit}, with the denied change: {tree:?}"
        );
    }
    assert!(
        std::fs::read_dir(&notes).unwrap().next().is_none(),
        "the note goes once the revert is durable"
    );
    // Its commit and revert did go, together.
    let history = git(&remote, &["log", "--format=%s", "main"]);
    assert!(
        history.lines().any(|s| s.starts_with("revert create")),
        "{history}"
    );
    server.server.shutdown().await.unwrap();
    git(&remote, &["fsck", "--strict"]);
}

/// A denied write's commit is not reverted under a later write that was admitted
/// with the same content (it found the file as it wanted, so it made no commit of
/// its own): reverting would leave git without what the cluster has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_commit_is_kept_when_a_later_admitted_write_has_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let remote = logged_remote(dir.path());
    let answer_from_remote = Gate::closed();
    let server = pushing_server(&remote, gated(None, Some(&answer_from_remote))).await;
    let (late, path) = write(1);
    let mut again = late.clone();
    again["request"]["uid"] = Value::String("00000000-0000-4000-8000-00000000a9a1".into());
    let mut late_answer = Box::pin({
        let server = &server;
        async move { send(server, &late, "1s").await }
    });
    tokio::select! {
        () = answer_from_remote.arrivals(1) => {}
        answer = &mut late_answer => panic!("answered before the push: {answer}"),
    }
    // The same write again, while the first one's push has not answered: the file is
    // already as it wants, so it waits for that push.
    let mut again_answer = Box::pin({
        let server = &server;
        async move { send(server, &again, "10s").await }
    });
    let denied = tokio::select! {
        answer = &mut late_answer => answer,
        answer = &mut again_answer => panic!("answered before the push: {answer}"),
    };
    drop(late_answer);
    assert!(!allowed(&denied), "{denied}");
    answer_from_remote.open();
    let answer = (&mut again_answer).await;
    drop(again_answer);
    assert!(allowed(&answer), "{answer}");

    let (next, _) = write(2);
    assert!(allowed(&send(&server, &next, "10s").await));
    assert!(
        files(&remote, "main").contains(&path),
        "the admitted content stays"
    );
    let history = git(&remote, &["log", "--format=%s", "main"]);
    assert!(
        !history.lines().any(|s| s.starts_with("revert")),
        "{history}"
    );
    server.server.shutdown().await.unwrap();
}

/// A denial is noted on disk before it is answered, so a crash before the revert
/// does not let the denied commit be pushed on its own at the next start. Here the
/// note is the one a crashed run would have left (its format is documented in
/// docs/operations.md), next to the commit it names, not pushed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_noted_before_a_crash_is_reverted_before_the_next_push() {
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote.git");
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "dataDir: {}\nrepository:\n  remote:\n    url: file://{}\nrules:\n- name: all\n  wait: commit\n",
        data.path().join("data").display(),
        remote.display()
    );
    // The remote is not there yet: the commit stays local.
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), &config).await;
    let (denied, denied_path) = write(1);
    let answer = send(&server, &denied, "10s").await;
    let sha = common::recorded_sha(&answer).expect("recorded");
    let commit = git(&server.repo, &["rev-parse", &sha]);
    let repo = server.repo.clone();
    server.server.shutdown().await.unwrap();

    let notes = repo.join("kubescribe/denied");
    std::fs::create_dir_all(&notes).unwrap();
    let request = &denied["request"];
    let note = serde_json::json!({
        "commit": commit.trim(),
        "path": denied_path,
        "verb": "create",
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "namespace": request["namespace"],
        "name": request["name"],
        "user": "alice",
        "uid": request["uid"],
        "reason": "The write was denied because its commit did not reach the remote before the apiserver's deadline.",
    });
    std::fs::write(
        notes.join(format!("{}.json", commit.trim())),
        note.to_string(),
    )
    .unwrap();

    logged_remote(dir.path());
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), &config).await;
    let (next, next_path) = write(2);
    assert!(allowed(&send(&server, &next, "10s").await));
    server.server.shutdown().await.unwrap();
    let tip = files(&remote, "main");
    assert!(
        tip.contains(&next_path) && !tip.contains(&denied_path),
        "{tip:?}"
    );
    for commit in remote_tips(&remote) {
        assert!(
            !files(&remote, &commit).contains(&denied_path),
            "the remote's main was once {commit}, with the denied change"
        );
    }
    assert!(
        std::fs::read_dir(&notes).unwrap().next().is_none(),
        "the note goes once the revert is durable"
    );
}
