//! Pushing to real git remotes on 127.0.0.1: `file://`, `git daemon`, smart HTTP
//! (`git http-backend` behind lighttpd, basic auth) and sshd with git-shell. Every
//! test reads the remote with the `git` CLI.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::remotes::{GitDaemon, SmartHttp, Sshd};
use common::{allowed, body, fixtures, git, message, warnings, TestServer};
use serde_json::Value;

/// A config whose default repository pushes to `remote` (YAML lines of the remote
/// section, already indented by four spaces) and whose rules wait for the push.
fn push_config(remote: &str) -> String {
    format!("repository:\n  remote:\n{remote}rules:\n- name: all\n  wait: push\n")
}

/// The `pushed <sha> to <remote> <branch>` warning's sha.
fn pushed_sha(answer: &Value) -> Option<String> {
    warnings(answer).iter().find_map(|w| {
        w.strip_prefix("pushed ")
            .map(|rest| rest.split(' ').next().unwrap_or_default().to_owned())
    })
}

/// Sends every `/validate` fixture in order; returns the answers.
async fn replay_validate(server: &TestServer) -> Vec<(String, Value)> {
    let mut answers = Vec::new();
    for fixture in fixtures()
        .into_iter()
        .filter(|f| f.path.starts_with("/validate"))
    {
        let answer = server.send(&fixture).await;
        answers.push((fixture.file.clone(), answer));
    }
    answers
}

/// Replays the fixtures against a server pushing to `remote_repo`, and checks the
/// remote ends up with exactly the local history.
async fn replay_arrives(config: &str, remote_repo: &Path) {
    let server = TestServer::start(config).await;
    let answers = replay_validate(&server).await;
    let mut pushed = 0;
    for (file, answer) in &answers {
        if let Some(sha) = pushed_sha(answer) {
            pushed += 1;
            // The warning names a commit the remote has.
            git(
                remote_repo,
                &["cat-file", "-e", &format!("{sha}^{{commit}}")],
            );
        }
        assert!(
            allowed(answer) || file.contains("dry") || !message(answer).contains("push"),
            "{file}: {answer}"
        );
    }
    assert!(
        pushed >= 10,
        "most fixtures are recorded and pushed: {pushed}"
    );
    // Each write a push answered is timed in its three stages (a write answered
    // without a push, everything being pushed already, is not).
    let mut counts = Vec::new();
    for stage in ["commit", "queued", "pushing"] {
        let sample = format!(
            "kubescribe_push_wait_seconds_count{{repository=\"default\",stage=\"{stage}\"}}"
        );
        counts.push(common::metric(&server, &sample).await);
    }
    assert!(
        counts.iter().all(|c| *c == counts[0]) && counts[0] >= 10.0 && counts[0] <= pushed as f64,
        "stage counts {counts:?} for {pushed} pushed answers"
    );
    let local = server.git(&["rev-parse", "main"]);
    assert_eq!(git(remote_repo, &["rev-parse", "main"]), local);
    let authors = git(remote_repo, &["log", "--format=%an", "main"]);
    let authors: std::collections::BTreeSet<&str> = authors.lines().collect();
    assert_eq!(
        authors,
        ["admin", "alice"].into_iter().collect(),
        "commits keep the Kubernetes users as authors"
    );
    assert!(git(remote_repo, &["rev-list", "--merges", "main"]).is_empty());
    server.server.shutdown().await.unwrap();
    git(remote_repo, &["fsck", "--strict"]);
}

fn bare_remote(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("remote.git");
    let status = std::process::Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_remote_gets_every_recorded_commit() {
    let dir = tempfile::tempdir().unwrap();
    let remote = bare_remote(dir.path());
    let config = push_config(&format!("    url: file://{}\n", remote.display()));
    replay_arrives(&config, &remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_daemon_remote_gets_every_recorded_commit() {
    let daemon = GitDaemon::start();
    let config = push_config(&format!("    url: {}\n", daemon.url()));
    replay_arrives(&config, &daemon.repo()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_http_with_basic_auth_gets_every_recorded_commit_and_refuses_a_bad_password() {
    let http = SmartHttp::start();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{}\n", SmartHttp::password())).unwrap();
    let config = push_config(&format!(
        "    url: {}\n    username: {}\n    passwordFile: {}\n",
        http.url(),
        SmartHttp::username(),
        password.display()
    ));
    replay_arrives(&config, &http.repo()).await;
    // kubescribe pushed in process: one ref discovery, then each push a single
    // request on the kept-alive connection (`git push` would make two).
    let (posts, discoveries) = builtin_pushes(&http);
    assert!(posts >= 3 && discoveries < posts, "{posts} {discoveries}");

    // The Secret is rotated to a wrong password: the next write is denied, saying
    // why, and the password appears nowhere in the answer.
    std::fs::write(&password, "wrong-password\n").unwrap();
    let server = TestServer::start(&config).await;
    let review = kubescribe::load::unique_review(&common::fixture("009").review, 1);
    let answer = send_review(&server, &review, "3s").await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(text.contains("authentication"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
    assert!(!answer.to_string().contains("wrong-password"));
    server.server.shutdown().await.unwrap();
}

/// `transport: git` makes every push a `git push`, even to smart HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_git_pushes_to_smart_http_with_the_git_cli() {
    let http = SmartHttp::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, SmartHttp::password()).unwrap();
    let server = TestServer::start(&push_config(&format!(
        "    url: {}\n    username: {}\n    tokenFile: {}\n    transport: git\n",
        http.url(),
        SmartHttp::username(),
        token.display()
    )))
    .await;
    for n in 0..2 {
        let review = kubescribe::load::unique_review(&common::fixture("009").review, n);
        let answer = send_review(&server, &review, "10s").await;
        assert!(pushed_sha(&answer).is_some(), "{answer}");
    }
    server.server.shutdown().await.unwrap();
    let pushes: Vec<String> = http
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /repo.git/git-receive-pack"))
        .collect();
    assert!(pushes.len() >= 2, "{pushes:?}");
    assert!(
        pushes.iter().all(|r| !r.contains("kubescribe/")),
        "{pushes:?}"
    );
    assert_eq!(remote_files(&http.repo(), "main").len(), 2);
}

/// A refusal the builtin transport cannot explain (a hook) goes to `git push`, whose
/// answer is the one the write is denied with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_refusal_over_smart_http_is_confirmed_by_git_and_denied_as_rejected() {
    let http = SmartHttp::start();
    let hook = http.repo().join("hooks").join("pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'protected branch' >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, SmartHttp::password()).unwrap();
    let text = denial(&format!(
        "    url: {}\n    username: {}\n    tokenFile: {}\n",
        http.url(),
        SmartHttp::username(),
        token.display()
    ))
    .await;
    assert!(text.contains("rejected"), "{text}");
    let requests = http.requests();
    let posts = |ours: bool| {
        requests.iter().any(|r| {
            r.starts_with("POST /repo.git/git-receive-pack") && r.contains("kubescribe/") == ours
        })
    };
    assert!(posts(true) && posts(false), "{requests:?}");
    assert!(git(&http.repo(), &["for-each-ref"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_with_git_shell_gets_every_recorded_commit() {
    let sshd = Sshd::start();
    let config = push_config(&format!(
        "    url: {}\n    sshKeyFile: {}\n    knownHostsFile: {}\n",
        sshd.url(),
        sshd.identity_file().display(),
        sshd.known_hosts_file().display()
    ));
    replay_arrives(&config, &sshd.repo()).await;
}

/// One write against a server with `remote`; returns the denial message.
async fn denial(remote: &str) -> String {
    let server = TestServer::start(&push_config(remote)).await;
    let review = kubescribe::load::unique_review(&common::fixture("009").review, 7);
    let started = Instant::now();
    let answer = send_review(&server, &review, "3s").await;
    assert!(!allowed(&answer), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "denied within the apiserver's deadline"
    );
    server.server.shutdown().await.unwrap();
    message(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_refuses_a_wrong_host_key_and_an_unknown_client_key() {
    let sshd = Sshd::start();
    let wrong_host = denial(&format!(
        "    url: {}\n    sshKeyFile: {}\n    knownHostsFile: {}\n",
        sshd.url(),
        sshd.identity_file().display(),
        sshd.wrong_known_hosts_file().display()
    ))
    .await;
    assert!(wrong_host.contains("host key"), "{wrong_host}");
    assert!(wrong_host.contains("knownHostsFile"), "{wrong_host}");

    let bad_key = denial(&format!(
        "    url: {}\n    sshKeyFile: {}\n    knownHostsFile: {}\n",
        sshd.url(),
        sshd.other_identity_file().display(),
        sshd.known_hosts_file().display()
    ))
    .await;
    assert!(bad_key.contains("authentication"), "{bad_key}");
    assert!(
        git(&sshd.repo(), &["for-each-ref"]).is_empty(),
        "nothing arrived"
    );
}

fn remote_files(repo: &Path, branch: &str) -> Vec<String> {
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["ls-tree", "-r", "--name-only", branch])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn send_review(server: &TestServer, review: &Value, timeout: &str) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review(&format!("/validate?timeout={timeout}"), body(review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn then_deny_records_and_pushes_but_refuses_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let remote = bare_remote(dir.path());
    let config = format!(
        "repository:\n  remote:\n    url: file://{}\nrules:\n- name: gitops\n  wait: push\n  then: deny\n",
        remote.display()
    );
    let server = TestServer::start(&config).await;
    // A server-side dry run gets the verdict the real write gets, and writes nothing.
    let mut dry = common::fixture("009").review;
    dry["request"]["dryRun"] = Value::Bool(true);
    let answer = send_review(&server, &dry, "10s").await;
    assert!(!allowed(&answer), "{answer}");
    assert!(message(&answer).contains("dry run"), "{answer}");
    assert!(git(&remote, &["for-each-ref"]).is_empty());

    let answer = server.send(&common::fixture("009")).await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    assert!(text.contains("GitOps"), "{text}");
    assert!(text.contains("pushed "), "{text}");
    assert_eq!(
        remote_files(&remote, "main"),
        vec!["team-a/core/configmaps/app-config.yaml"]
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_pushing_to_one_branch_keep_every_change_in_a_linear_history() {
    let daemon = GitDaemon::start();
    let config = push_config(&format!("    url: {}\n", daemon.url()));
    two_writers_one_branch(&config, &daemon.repo()).await;
}

/// The same race over smart HTTP, where kubescribe pushes in process and learns of
/// the other writer only from the server's refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_pushing_over_builtin_smart_http_keep_every_change() {
    let http = SmartHttp::start();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, SmartHttp::password()).unwrap();
    let config = push_config(&format!(
        "    url: {}\n    username: {}\n    passwordFile: {}\n",
        http.url(),
        SmartHttp::username(),
        password.display()
    ));
    two_writers_one_branch(&config, &http.repo()).await;
    // Every push was kubescribe's own (no fall back to `git push`), and most went
    // without a ref discovery first.
    let (posts, discoveries) = builtin_pushes(&http);
    assert!(posts >= 10 && discoveries < posts, "{posts} {discoveries}");
}

/// kubescribe's pushes and ref discoveries that `http` served, once it is checked
/// that no receive-pack request came from `git push` (nothing fell back to git).
fn builtin_pushes(http: &SmartHttp) -> (usize, usize) {
    let requests = http.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.contains("receive-pack") && !r.contains("kubescribe/")),
        "no push fell back to git: {requests:?}"
    );
    let ours = |prefix: &str| {
        requests
            .iter()
            .filter(|r| r.starts_with(prefix) && r.contains("kubescribe/"))
            .count()
    };
    (
        ours("POST /repo.git/git-receive-pack"),
        ours("GET /repo.git/info/refs?service=git-receive-pack"),
    )
}

async fn two_writers_one_branch(config: &str, remote: &Path) {
    let a = TestServer::start(config).await;
    let b = TestServer::start(config).await;
    let template = common::fixture("009").review;
    // `a` pushes first, so `b`'s first push certainly meets a remote that moved.
    let first = send_review(&a, &kubescribe::load::unique_review(&template, 5000), "10s").await;
    assert!(pushed_sha(&first).is_some(), "{first}");
    let mut tasks = Vec::new();
    for (offset, server) in [(0, &a), (1000, &b)] {
        for worker in 0..4 {
            let client = server.client.clone();
            let template = template.clone();
            tasks.push(tokio::spawn(async move {
                let mut connection = client.connect().await.unwrap();
                let mut answers = Vec::new();
                for i in 0..15 {
                    let review =
                        kubescribe::load::unique_review(&template, offset + worker * 100 + i);
                    let (status, answer) = connection
                        .review("/validate?timeout=10s", body(&review))
                        .await
                        .unwrap();
                    assert_eq!(status, 200);
                    answers.push(answer);
                }
                answers
            }));
        }
    }
    for task in tasks {
        for answer in task.await.unwrap() {
            assert!(allowed(&answer), "{answer}");
            let sha = pushed_sha(&answer).expect("every write waits for its push");
            git(remote, &["merge-base", "--is-ancestor", &sha, "main"]);
        }
    }
    assert_eq!(
        remote_files(remote, "main").len(),
        121,
        "every change arrived"
    );
    assert_eq!(git(remote, &["rev-list", "--count", "main"]).trim(), "121");
    let conflicts = common::metric(
        &b,
        "kubescribe_push_failures_total{repository=\"default\",reason=\"conflict\"}",
    )
    .await;
    assert!(conflicts >= 1.0, "b replayed onto a's commits: {conflicts}");
    assert!(git(remote, &["rev-list", "--merges", "main"]).is_empty());
    assert_eq!(
        git(remote, &["log", "--format=%an", "main"])
            .lines()
            .filter(|a| *a != "alice")
            .count(),
        0,
        "replayed commits keep their author"
    );
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
    git(remote, &["fsck", "--strict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_starts_from_the_remote_history() {
    let dir = tempfile::tempdir().unwrap();
    let remote = bare_remote(dir.path());
    // Someone already committed to the remote.
    let work = dir.path().join("work");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(&work)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    std::fs::create_dir(&work).unwrap();
    run(&["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "cluster state\n").unwrap();
    run(&["add", "README.md"]);
    run(&[
        "-c",
        "user.name=op",
        "-c",
        "user.email=op@x",
        "commit",
        "-qm",
        "start",
    ]);
    run(&["push", "-q", &remote.to_string_lossy(), "main"]);
    let first = git(&remote, &["rev-parse", "main"]);

    let server = TestServer::start(&push_config(&format!(
        "    url: file://{}\n",
        remote.display()
    )))
    .await;
    let answer = server.send(&common::fixture("009")).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(
        git(&remote, &["rev-parse", "main~1"]),
        first,
        "our commit sits on the remote's history"
    );
    assert_eq!(
        remote_files(&remote, "main"),
        vec!["README.md", "team-a/core/configmaps/app-config.yaml"]
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_route_namespaces_to_their_own_branches() {
    let dir = tempfile::tempdir().unwrap();
    let remote = bare_remote(dir.path());
    let url = format!("file://{}", remote.display());
    let config = format!(
        "repository:\n  remote:\n    url: {url}\nrepositories:\n  staging:\n    branch: staging\n    remote:\n      url: {url}\nrules:\n- name: staging\n  namespaces: [team-a-0]\n  repository: staging\n  wait: push\n- name: rest\n  wait: push\n"
    );
    let server = TestServer::start(&config).await;
    let template = common::fixture("009").review;
    for i in 0..6 {
        let answer = send_review(
            &server,
            &kubescribe::load::spread_review(&template, i, 2),
            "10s",
        )
        .await;
        assert!(allowed(&answer), "{answer}");
        let branch = if i % 2 == 0 { "staging" } else { "main" };
        assert!(
            warnings(&answer)
                .iter()
                .any(|w| w.ends_with(&format!(" {branch}"))),
            "{answer}"
        );
    }
    let staging = remote_files(&remote, "staging");
    let main = remote_files(&remote, "main");
    assert_eq!(staging.len(), 3);
    assert_eq!(main.len(), 3);
    assert!(
        staging.iter().all(|p| p.starts_with("team-a-0/")),
        "{staging:?}"
    );
    assert!(main.iter().all(|p| p.starts_with("team-a-1/")), "{main:?}");
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_pushes_commits_left_unpushed() {
    let mut daemon = GitDaemon::start();
    daemon.stop();
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        "dataDir: {}\nrepository:\n  remote:\n    url: {}\n    maxBackoff: 1s\nrules:\n- name: all\n  wait: commit\n",
        state.path().join("data").display(),
        daemon.url()
    );
    let server = TestServer::start(&config).await;
    let template = common::fixture("009").review;
    for i in 0..5 {
        let answer = send_review(
            &server,
            &kubescribe::load::unique_review(&template, i),
            "10s",
        )
        .await;
        assert!(
            allowed(&answer),
            "committed locally while the remote is down: {answer}"
        );
    }
    server.server.shutdown().await.unwrap();
    assert!(git(&daemon.repo(), &["for-each-ref"]).is_empty());

    daemon.restart();
    let server = TestServer::start(&config).await;
    let remote = daemon.repo();
    common::eventually(
        Duration::from_secs(30),
        "the remote has the 5 commits",
        || remote_files(&remote, "main").len() == 5,
    )
    .await;
    assert_eq!(
        git(&remote, &["rev-parse", "main"]),
        server.git(&["rev-parse", "main"])
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_outage_under_load_loses_nothing_and_denies_waiting_writes_in_time() {
    let mut daemon = GitDaemon::start();
    let config = format!(
        "repository:\n  remote:\n    url: {}\n    maxBackoff: 2s\nrules:\n- name: held\n  namespaces: [team-a-0]\n  wait: push\n- name: rest\n  wait: none\n",
        daemon.url()
    );
    let server = TestServer::start(&config).await;
    let template = common::fixture("009").review;
    let mut acknowledged = Vec::new();
    let mut denied = Vec::new();
    let mut n = 0;
    // One write in ten goes to team-a-0, whose rule waits for the push.
    let send = |n: usize| kubescribe::load::spread_review(&template, n, 10);

    // Before the outage, both kinds of write go through.
    for _ in 0..4 {
        let answer = send_review(&server, &send(n), "10s").await;
        assert!(allowed(&answer), "{answer}");
        n += 1;
    }

    daemon.stop();
    let outage = Instant::now();
    let mut connection = server.connect().await;
    while outage.elapsed() < Duration::from_secs(60) {
        let review = send(n);
        let name = review["request"]["name"].as_str().unwrap().to_owned();
        let namespace = review["request"]["namespace"].as_str().unwrap().to_owned();
        let sent = Instant::now();
        let (status, answer) = connection
            .review("/validate?timeout=2s", body(&review))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let path = format!("{namespace}/core/configmaps/{name}.yaml");
        if namespace == "team-a-0" {
            assert!(
                !allowed(&answer),
                "a write waiting for the push is denied: {answer}"
            );
            assert!(
                sent.elapsed() < Duration::from_secs(2),
                "denied within the deadline"
            );
            assert!(message(&answer).contains("unreachable"), "{answer}");
            denied.push(path);
        } else {
            assert!(allowed(&answer), "{answer}");
            acknowledged.push(path);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        n += 1;
    }
    assert!(
        acknowledged.len() > 100,
        "load kept coming: {}",
        acknowledged.len()
    );
    assert!(!denied.is_empty());

    daemon.restart();
    let remote = daemon.repo();
    common::eventually(
        Duration::from_secs(60),
        "the backlog reaches the remote",
        || {
            let files = remote_files(&remote, "main");
            acknowledged.iter().all(|p| files.contains(p))
        },
    )
    .await;
    let files = remote_files(&remote, "main");
    for path in &denied {
        assert!(!files.contains(path), "a denied write is reverted: {path}");
    }
    let answer = send_review(&server, &send(n), "10s").await;
    assert!(
        allowed(&answer),
        "waiting writes go through again: {answer}"
    );
    server.server.shutdown().await.unwrap();
    assert!(git(&remote, &["rev-list", "--merges", "main"]).is_empty());
    git(&remote, &["fsck", "--strict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_trusts_the_configured_ca_bundle_and_only_it() {
    let https = SmartHttp::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, SmartHttp::password()).unwrap();
    let remote = |ca: &str| {
        format!(
            "    url: {}\n    username: {}\n    tokenFile: {}\n{ca}",
            https.url(),
            SmartHttp::username(),
            token.display()
        )
    };
    // Without the CA the server's certificate is not trusted: denied, not pushed.
    let untrusted = denial(&remote("")).await;
    assert!(untrusted.contains(&https.url()), "{untrusted}");
    assert!(git(&https.repo(), &["for-each-ref"]).is_empty());

    let server = TestServer::start(&push_config(&remote(&format!(
        "    caFile: {}\n",
        https.ca_file().display()
    ))))
    .await;
    let answer = server.send(&common::fixture("009")).await;
    assert!(pushed_sha(&answer).is_some(), "{answer}");
    assert_eq!(
        remote_files(&https.repo(), "main"),
        vec!["team-a/core/configmaps/app-config.yaml"]
    );
    server.server.shutdown().await.unwrap();
}

/// Two kubescribe replicas record updates of one ConfigMap: `a` commits its update
/// (made from resourceVersion `a_after`) but its push is held, `b` records its own
/// (from `b_after`) and pushes first; then `a` pushes, meets `b`'s commit, replays.
/// Returns the remote's file.
async fn race(a_after: u64, b_after: u64) -> String {
    use kubescribe::fault::{Faults, Gate};
    let dir = tempfile::tempdir().unwrap();
    let remote = bare_remote(dir.path());
    let config = format!(
        "repository:\n  remote:\n    url: file://{}\nrules:\n- name: sync\n  namespaces: [sync]\n  wait: push\n- name: rest\n  wait: commit\n",
        remote.display()
    );
    let held = Gate::closed();
    let a = TestServer::start_with_faults(
        tempfile::tempdir().unwrap(),
        &config,
        Faults {
            before_push: Some(held.clone()),
            ..Faults::default()
        },
    )
    .await;
    let b = TestServer::start(&config).await;
    let update = |n: usize, after: u64, value: &str| {
        let mut review = common::fixture("017").review;
        let request = &mut review["request"];
        request["uid"] = Value::String(format!("00000000-0000-4000-8000-{n:012}"));
        for field in ["object", "oldObject"] {
            request[field]["metadata"]["resourceVersion"] = Value::String(after.to_string());
        }
        request["object"]["data"]["LOG_LEVEL"] = Value::String(value.to_owned());
        review
    };
    // One write to the sync namespace: answered once everything before it is pushed.
    let sync = |n: usize| {
        let mut review = kubescribe::load::unique_review(&common::fixture("009").review, n);
        let request = &mut review["request"];
        request["namespace"] = Value::String("sync".into());
        request["object"]["metadata"]["namespace"] = Value::String("sync".into());
        review
    };
    let answer = send_review(&a, &update(1, a_after, "from-a"), "10s").await;
    assert!(allowed(&answer), "{answer}");
    held.arrivals(1).await;
    let answer = send_review(&b, &update(2, b_after, "from-b"), "10s").await;
    assert!(allowed(&answer), "{answer}");
    assert!(allowed(&send_review(&b, &sync(3), "10s").await));
    held.open();
    assert!(allowed(&send_review(&a, &sync(4), "10s").await));
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
    assert!(git(&remote, &["rev-list", "--merges", "main"]).is_empty());
    git(
        &remote,
        &["show", "main:team-a/core/configmaps/app-config.yaml"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_record_of_an_object_wins_whoever_pushes_last() {
    // `a` pushes last, with the older update: the remote keeps `b`'s.
    let file = race(10, 11).await;
    assert!(file.contains("from-b"), "{file}");
    // `a` pushes last, with the newer update: it replaces `b`'s.
    let file = race(12, 11).await;
    assert!(file.contains("from-a"), "{file}");
}
