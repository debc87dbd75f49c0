//! Replays the real kube-apiserver requests in order against a running server over
//! TLS, then reads the repository with the `git` CLI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{body, fixtures, git, recorded_sha, warnings, TestServer};
use serde_json::Value;

const WAIT_COMMIT: &str = "rules:\n- name: all\n  wait: commit\n";

/// What each /validate fixture must do: the file it commits, or no commit.
fn expected_commits() -> BTreeMap<&'static str, Option<&'static str>> {
    let cm = |name| -> Option<&'static str> {
        Some(match name {
            "app-config" => "team-a/core/configmaps/app-config.yaml",
            "job" => "team-a/core/configmaps/job-config-jx6nd.yaml",
            "ssa" => "team-a/core/configmaps/ssa.yaml",
            "held" => "team-a/core/configmaps/held.yaml",
            _ => unreachable!(),
        })
    };
    let web = Some("team-a/apps/deployments/web.yaml");
    BTreeMap::from([
        ("009", cm("app-config")),
        ("011", web),
        ("013", web),
        ("015", web),
        ("017", cm("app-config")),
        ("019", cm("app-config")),
        ("021", cm("job")),
        ("023", None), // dry run
        ("025", cm("ssa")),
        ("027", None), // Secret, omitted by default
        ("029", cm("ssa")),
        ("031", cm("held")),
        ("033", cm("held")),
        ("035", None), // finalizers cleared after the delete: the file stays gone
        ("037", None), // the apiserver's retry of the same patch
        ("039", cm("app-config")),
        (
            "043",
            Some("_cluster/rbac.authorization.k8s.io/clusterroles/reader.yaml"),
        ),
        (
            "045",
            Some(
                "_cluster/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com.yaml",
            ),
        ),
        ("047", None), // APIService noise by system:apiserver
        ("049", None),
        ("051", None),
        ("053", None),
        ("055", Some("team-a/example.com/widgets/w1.yaml")),
        ("057", Some("team-a/example.com/widgets/w1.yaml")),
        ("059", web),
        ("061", web),
        ("063", web),
        (
            "065",
            Some("_cluster/rbac.authorization.k8s.io/clusterrolebindings/reader-b.yaml"),
        ),
        ("067", cm("app-config")),
    ])
}

fn golden_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/replay")
}

/// Compares `actual` with the golden file `name`; `UPDATE_GOLDEN=1` rewrites it.
fn assert_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden {}: {e}", path.display()));
    assert_eq!(actual, expected, "golden {name} differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_every_fixture_records_exactly_the_intended_commits() {
    let server = TestServer::start(WAIT_COMMIT).await;
    let mut connection = server.connect().await;
    let expected = expected_commits();
    let mut shas: BTreeMap<String, String> = BTreeMap::new();
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();

    for fixture in fixtures() {
        let (status, answer) = connection
            .review(&fixture.path, body(&fixture.review))
            .await
            .unwrap();
        let id = &fixture.file[..3];
        assert_eq!(status, 200, "{}", fixture.file);
        assert_eq!(
            answer["apiVersion"], "admission.k8s.io/v1",
            "{}",
            fixture.file
        );
        assert_eq!(answer["kind"], "AdmissionReview", "{}", fixture.file);
        assert_eq!(
            answer["response"]["uid"], fixture.review["request"]["uid"],
            "{} uid echo",
            fixture.file
        );
        assert_eq!(
            answer["response"]["allowed"], true,
            "{}: {answer}",
            fixture.file
        );
        assert!(
            answer["response"].get("patch").is_none(),
            "{} carries a patch",
            fixture.file
        );

        if fixture.path.starts_with("/mutate") {
            assert!(
                warnings(&answer).is_empty(),
                "{}: mutate must not record",
                fixture.file
            );
            continue;
        }
        let want = expected
            .get(id)
            .unwrap_or_else(|| panic!("no expectation for {}", fixture.file));
        match (want, recorded_sha(&answer)) {
            (Some(path), Some(sha)) => {
                assert!(
                    warnings(&answer)[0].ends_with(path),
                    "{}: {:?}",
                    fixture.file,
                    warnings(&answer)
                );
                shas.insert(id.to_owned(), sha);
            }
            (None, None) => {}
            (want, got) => panic!(
                "{}: expected commit {want:?}, got {got:?} ({:?})",
                fixture.file,
                warnings(&answer)
            ),
        }
        answers.insert(id.to_owned(), answer);
    }

    // One commit per recorded change, authored by the real users, committed by us.
    let commits = expected.values().filter(|p| p.is_some()).count();
    let log = server.git(&["log", "--format=%H %an <%ae> | %cn", "main"]);
    assert_eq!(log.lines().count(), commits, "{log}");
    let authors: BTreeSet<&str> = log.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(authors, BTreeSet::from(["admin", "alice"]));
    assert!(log.lines().all(|l| l.ends_with("| kubescribe")), "{log}");
    assert!(log.contains("alice <alice@kubernetes.local>"), "{log}");
    assert!(
        server
            .git(&["rev-list", "--min-parents=2", "main"])
            .is_empty(),
        "history must be linear"
    );

    // Each fixture's commit touched exactly its file.
    for (id, sha) in &shas {
        let files = server.git(&["show", "--format=", "--name-only", sha]);
        assert_eq!(
            files.trim(),
            expected[id.as_str()].unwrap(),
            "commit of {id}"
        );
    }

    // Messages and trailers.
    let message = server.git(&["log", "-1", "--format=%B", &shas["009"]]);
    let uid = fixtures()
        .into_iter()
        .find(|f| f.file.starts_with("009"))
        .unwrap()
        .review["request"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        message.trim_end(),
        format!("create v1 ConfigMap team-a/app-config\n\nKubernetes-User: alice\nKubernetes-Groups: devs, system:authenticated\nAdmission-Uid: {uid}\nObject-Uid: 205fe2cc-833f-46e4-91f3-5171553031e3\nObject-Created: 2026-11-21T19:09:35Z")
    );
    let trailers = server.git(&[
        "log",
        "-1",
        "--format=%(trailers:key=Kubernetes-User,valueonly)",
        &shas["043"],
    ]);
    assert_eq!(trailers.trim(), "admin");
    assert!(server
        .git(&["log", "-1", "--format=%s", &shas["063"]])
        .starts_with("delete apps/v1 Deployment team-a/web"));
    assert!(server
        .git(&["log", "-1", "--format=%s", &shas["043"]])
        .starts_with("create rbac.authorization.k8s.io/v1 ClusterRole reader"));

    // The scale write edited replicas in the Deployment's file, and said so.
    let web = "team-a/apps/deployments/web.yaml";
    let before = server.git(&["show", &format!("{}:{web}", shas["013"])]);
    let after = server.git(&["show", &format!("{}:{web}", shas["015"])]);
    assert!(before.contains("\n  replicas: 2\n"), "{before}");
    assert_eq!(
        after,
        before.replace("\n  replicas: 2\n", "\n  replicas: 3\n")
    );
    let scale_message = server.git(&["log", "-1", "--format=%B", &shas["015"]]);
    assert!(
        scale_message.starts_with(
            "update apps/v1 Deployment team-a/web\n\nScaled spec.replicas from 2 to 3."
        ),
        "{scale_message}"
    );

    // The dry run and the noise never reached git, but the dry run was told the path.
    assert!(warnings(&answers["023"])
        .contains(&"kubescribe: dry run: would record team-a/core/configmaps/dry.yaml".to_owned()));
    assert!(server
        .git(&[
            "log",
            "--format=%H",
            "main",
            "--",
            "team-a/core/configmaps/dry.yaml"
        ])
        .is_empty());
    assert!(server
        .git(&[
            "log",
            "--format=%H",
            "main",
            "--",
            "_cluster/apiregistration.k8s.io"
        ])
        .is_empty());
    assert!(server
        .git(&["log", "--format=%H", "main", "--", "team-a/core/secrets"])
        .is_empty());
    assert!(warnings(&answers["027"])[0].contains("secrets: omit"));

    // What is left at the tip: the generated name, and nothing that was deleted.
    let tree: BTreeSet<String> = server
        .git(&["ls-tree", "-r", "--name-only", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    let expected_tree: BTreeSet<String> = [
        "team-a/core/configmaps/job-config-jx6nd.yaml",
        "_cluster/rbac.authorization.k8s.io/clusterroles/reader.yaml",
        "_cluster/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com.yaml",
        "team-a/example.com/widgets/w1.yaml",
        "_cluster/rbac.authorization.k8s.io/clusterrolebindings/reader-b.yaml",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(tree, expected_tree);
    // Deleting the last file of a directory leaves no empty tree behind.
    assert!(!server
        .git(&["ls-tree", "-r", "-t", "--name-only", "main"])
        .contains("team-a/apps"));

    // Files equal the sanitised objects (golden files, reviewed by hand).
    for path in &expected_tree {
        assert_golden(path, &server.git(&["show", &format!("main:{path}")]));
    }
    for id in ["011", "015", "019", "061"] {
        let path = expected[id].unwrap();
        assert_golden(
            &format!("{id}/{path}"),
            &server.git(&["show", &format!("{}:{path}", shas[id])]),
        );
    }
    // No server-set field made it into any version of any file.
    let history = server.git(&["log", "-p", "main"]);
    for banned in [
        "managedFields",
        "resourceVersion",
        "creationTimestamp",
        "last-applied-configuration",
        "\n+  uid:",
        "\n+status:",
        "deployment.kubernetes.io/revision",
        "generation:",
    ] {
        assert!(!history.contains(banned), "{banned} leaked into git");
    }

    let fsck = server.git(&["fsck", "--strict", "--no-dangling"]);
    assert!(fsck.is_empty(), "git fsck: {fsck}");

    // Metrics saw it all.
    let (status, metrics) = connection
        .send(hyper::Method::GET, "/metrics", None, Default::default())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!("kubescribe_commits_total {commits}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "kubescribe_admission_requests_total{operation=\"create\",decision=\"dry_run\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubescribe_store_batch_size_count"),
        "{metrics}"
    );

    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_writes_are_all_recorded_with_linear_history() {
    let server = TestServer::start(WAIT_COMMIT).await;
    let template = common::fixture("009").review;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = server.client.clone();
        let review = kubescribe::load::unique_review(&template, i);
        tasks.push(tokio::spawn(async move {
            let mut connection = client.connect().await.unwrap();
            connection
                .review("/validate?timeout=10s", body(&review))
                .await
                .unwrap()
        }));
    }
    let mut shas = BTreeSet::new();
    for task in tasks {
        let (status, answer) = task.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        shas.insert(recorded_sha(&answer).expect("every write is recorded"));
    }
    assert_eq!(shas.len(), 200, "each write got its own commit");
    assert_eq!(server.git(&["rev-list", "--count", "main"]).trim(), "200");
    assert!(server
        .git(&["rev-list", "--min-parents=2", "main"])
        .is_empty());
    assert_eq!(
        server
            .git(&["ls-tree", "-r", "--name-only", "main"])
            .lines()
            .count(),
        200
    );
    let repo = server.repo.clone();
    server.server.shutdown().await.unwrap();
    git(&repo, &["fsck", "--strict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_without_waiting_are_committed_before_shutdown_ends() {
    let server = TestServer::start("").await;
    let template = common::fixture("011").review;
    let mut connection = server.connect().await;
    for i in 0..300 {
        let (status, answer) = connection
            .review(
                "/validate",
                body(&kubescribe::load::unique_review(&template, i)),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(
            warnings(&answer).is_empty(),
            "wait: none answers without a record warning"
        );
    }
    drop(connection);
    let repo = server.repo.clone();
    server.server.shutdown().await.unwrap();
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]).trim(), "300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_secrets_keep_their_keys_and_never_their_values() {
    let server = TestServer::start("secrets: redact\nrules:\n- name: all\n  wait: commit\n").await;
    let fixture = common::fixture("027");
    let answer = server.send(&fixture).await;
    let sha = recorded_sha(&answer).expect("recorded");
    let file = server.git(&["show", &format!("{sha}:team-a/core/secrets/db-creds.yaml")]);
    assert!(file.contains("password: '<redacted>'"), "{file}");
    let history = server.git(&["log", "-p", "main"]);
    assert!(
        !history.contains("czNjcjN0") && !history.contains("s3cr3t"),
        "secret value leaked:\n{history}"
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_continues_the_same_branch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!(
        "dataDir: {}\nrules:\n- name: all\n  wait: commit\n",
        data.display()
    );
    let first = TestServer::start(&config).await;
    let fixture = common::fixture("009");
    let answer = first.send(&fixture).await;
    let first_sha = recorded_sha(&answer).unwrap();
    first.server.shutdown().await.unwrap();

    let second = TestServer::start(&config).await;
    // The same write again is byte-identical: no new commit.
    let again = second.send(&fixture).await;
    assert_eq!(
        warnings(&again),
        vec!["unchanged team-a/core/configmaps/app-config.yaml".to_owned()]
    );
    let update = common::fixture("017");
    let answer = second.send(&update).await;
    let second_sha = recorded_sha(&answer).unwrap();
    let parent = second.git(&["rev-parse", &format!("{second_sha}^")]);
    assert!(
        parent.starts_with(&first_sha),
        "{parent} should be {first_sha}"
    );
    second.server.shutdown().await.unwrap();
}
