//! Bad input and broken storage: every case gets a clear answer, nothing panics, and
//! nothing the webhook acknowledged is lost.

mod common;

use bytes::Bytes;
use common::{body, fixture, recorded_sha, warnings, TestServer};
use hyper::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_requests_get_their_status_and_a_readable_message() {
    let server = TestServer::start("").await;
    let review = body(&fixture("009").review);
    let mut v1beta1 = fixture("009").review;
    v1beta1["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut no_uid = fixture("009").review;
    no_uid["request"]["uid"] = "".into();
    let json = Some("application/json");

    let cases: Vec<(&str, Option<&str>, Bytes, u16, &str)> = vec![
        ("not JSON", json, Bytes::from_static(b"{\"kind\": Admission"), 400, "not valid JSON"),
        ("empty body", json, Bytes::new(), 400, "not valid JSON"),
        ("wrong content type", Some("text/plain"), review.clone(), 415, "Content-Type must be application/json"),
        ("no content type", None, review.clone(), 415, "Content-Type must be application/json"),
        ("yaml content type", Some("application/yaml"), review.clone(), 415, "application/yaml"),
        ("JSON that is not a review", json, Bytes::from_static(b"{\"hello\": \"world\"}"), 400, "expected an admission.k8s.io/v1 AdmissionReview"),
        ("a JSON array", json, Bytes::from_static(b"[1, 2]"), 400, "expected an admission.k8s.io/v1 AdmissionReview"),
        ("v1beta1 review", json, body(&v1beta1), 400, "admission.k8s.io/v1beta1"),
        ("review without request", json, Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#), 400, "without a request"),
        ("request missing fields", json, Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#), 400, "invalid AdmissionReview"),
        ("request without uid", json, body(&no_uid), 400, "no uid"),
    ];
    let mut connection = server.connect().await;
    for endpoint in ["/validate?timeout=10s", "/mutate?timeout=10s"] {
        for (name, content_type, payload, status, message) in &cases {
            let (got, answer) = connection
                .send(Method::POST, endpoint, *content_type, payload.clone())
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.as_u16(), *status, "{endpoint} {name}");
            let answer: Value = serde_json::from_slice(&answer)
                .unwrap_or_else(|_| panic!("{endpoint} {name}: body is not JSON"));
            assert_eq!(answer["status"], *status, "{endpoint} {name}");
            let text = answer["message"].as_str().unwrap_or_default();
            assert!(
                text.contains(message),
                "{endpoint} {name}: {text:?} lacks {message:?}"
            );
        }
    }
    // Still healthy, and the refusals were counted.
    let (status, _) = connection
        .send(Method::GET, "/healthz", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = connection
        .send(Method::GET, "/readyz", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = connection
        .send(Method::GET, "/metrics", None, Bytes::new())
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("kubescribe_http_rejections_total{status=\"415\"} 6"),
        "{metrics}"
    );
    assert!(
        server.git(&["rev-list", "--all"]).is_empty(),
        "nothing was recorded"
    );
    server.server.shutdown().await.unwrap();
}

/// Too large, checked on the router itself (`oneshot`, as production builds it): over
/// a socket the server's early close races the client's upload of the rest of the
/// body, so whether a client sees the 413 or a reset depends on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_with_a_message() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let config = kubescribe::config::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let metrics = std::sync::Arc::new(kubescribe::metrics::Metrics::new());
    let (store, writer) = kubescribe::store::StoreHandle::open(
        kubescribe::store::StoreSettings::from_config(&config, &config.targets()[0]),
        metrics.clone(),
    )
    .unwrap();
    let state = std::sync::Arc::new(kubescribe::admission::AppState {
        policy: kubescribe::policy::Policy::new(&config),
        confirmations: None,
        annotate: false,
        targets: vec![kubescribe::admission::TargetState {
            repo: "repo".to_owned(),
            layout: kubescribe::manifest::Layout::new("", &config.repository.path_template)
                .unwrap(),
            store,
            push: None,
        }],
        reviews: Vec::new(),
        metrics: metrics.clone(),
        ready: true.into(),
        max_body_bytes: config.server.max_body_bytes,
        default_timeout: config.server.default_timeout,
        deadline_margin: config.server.deadline_margin,
    });
    let app = kubescribe::admission::app(state);
    for endpoint in ["/validate", "/mutate"] {
        let request = axum::http::Request::post(endpoint)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(vec![b' '; 9 * 1024 * 1024]))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 413, "{endpoint}");
        let answer: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(answer["status"], 413);
        assert_eq!(answer["message"], "request body is larger than 8388608 bytes; raise server.maxBodyBytes if the apiserver really sends objects this large");
    }
    let exposition = metrics.encode();
    assert!(
        exposition.contains("kubescribe_http_rejections_total{status=\"413\"} 2"),
        "{exposition}"
    );
    drop(app);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mib_objects_are_accepted_and_recorded_whole() {
    let server = TestServer::start("rules:\n- name: all\n  wait: commit\n").await;
    let big = "x".repeat(3 * 1024 * 1024);
    let mut create = fixture("009").review;
    create["request"]["object"]["data"]["BIG"] = big.clone().into();
    let mut update = fixture("019").review;
    update["request"]["object"]["data"]["BIG"] = format!("{big}y").into();
    update["request"]["oldObject"]["data"]["BIG"] = big.clone().into();
    let mut connection = server.connect().await;
    for review in [create, update] {
        let payload = body(&review);
        assert!(payload.len() > 3 * 1024 * 1024);
        let (status, answer) = connection
            .review("/validate?timeout=10s", payload)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(recorded_sha(&answer).is_some(), "{:?}", warnings(&answer));
    }
    let file = server.git(&["show", "main:team-a/core/configmaps/app-config.yaml"]);
    assert!(file.contains(&format!("BIG: {big}y\n")));
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_recorded_like_any_object() {
    let server = TestServer::start("rules:\n- name: all\n  wait: commit\n").await;
    let mut review = fixture("055").review;
    let request = &mut review["request"];
    request["kind"] = json!({"group": "zoo.example.com", "version": "v1alpha1", "kind": "Gizmo"});
    request["resource"] =
        json!({"group": "zoo.example.com", "version": "v1alpha1", "resource": "gizmos"});
    request["name"] = "g1".into();
    request["object"] = json!({
        "apiVersion": "zoo.example.com/v1alpha1", "kind": "Gizmo",
        "metadata": {"name": "g1", "namespace": "team-a", "uid": "u", "resourceVersion": "7"},
        "spec": {"legs": 4, "colour": "on"},
        "status": {"phase": "Ready"}
    });
    let (status, answer) = server
        .connect()
        .await
        .review("/validate", body(&review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let sha = recorded_sha(&answer).expect("recorded");
    assert_eq!(
        server.git(&["show", &format!("{sha}:team-a/zoo.example.com/gizmos/g1.yaml")]),
        "apiVersion: zoo.example.com/v1alpha1\nkind: Gizmo\nmetadata:\n  name: g1\n  namespace: team-a\nspec:\n  colour: 'on'\n  legs: 4\n"
    );
    assert!(server
        .git(&["log", "-1", "--format=%s", &sha])
        .starts_with("create zoo.example.com/v1alpha1 Gizmo team-a/g1"));
    server.server.shutdown().await.unwrap();
}

/// Team-a waits for the commit; everything else is recorded without waiting.
const SPLIT_WAITS: &str =
    "rules:\n- name: team-a\n  namespaces: [team-a]\n  wait: commit\n- name: rest\n";

/// `review` moved to namespace team-b, whose rule does not wait.
fn in_team_b(mut review: Value) -> Value {
    review["request"]["namespace"] = "team-b".into();
    for field in ["object", "oldObject"] {
        if review["request"][field].is_object() {
            review["request"][field]["metadata"]["namespace"] = "team-b".into();
        }
    }
    review
}

/// Waits (bounded) until `path` exists at the branch tip: the retry committed it.
async fn eventually_committed(server: &TestServer, path: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if server
            .git(&["ls-tree", "-r", "--name-only", "main"])
            .lines()
            .any(|l| l == path)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} was never committed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_branch_denies_waiting_writes_and_keeps_acknowledged_ones() {
    let server = TestServer::start(SPLIT_WAITS).await;
    let mut connection = server.connect().await;
    let create = fixture("009");
    let answer = server.send(&create).await;
    assert!(recorded_sha(&answer).is_some());

    // Another process holds the branch lock.
    let lock = server.repo.join("refs/heads/main.lock");
    std::fs::write(&lock, "").unwrap();
    let update = fixture("017");
    let (status, answer) = connection
        .review(&update.path, body(&update.review))
        .await
        .unwrap();
    assert_eq!(status, 200, "a denial is an answer, not an HTTP error");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["uid"], update.review["request"]["uid"]);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("moving branch main failed"), "{message}");
    assert!(
        message.contains("another process moved or locked the branch"),
        "{message}"
    );

    // A write that does not wait is admitted now and committed once the lock is gone.
    let other = in_team_b(fixture("009").review);
    let (_, answer) = connection.review("/validate", body(&other)).await.unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    std::fs::remove_file(&lock).unwrap();
    eventually_committed(&server, "team-b/core/configmaps/app-config.yaml").await;

    let answer = server.send(&update).await;
    assert!(
        recorded_sha(&answer).is_some(),
        "the retried write is recorded: {answer}"
    );
    assert!(server
        .git(&["show", "main:team-a/core/configmaps/app-config.yaml"])
        .contains("tier: backend"));
    server.server.shutdown().await.unwrap();
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8) is installed");
        assert!(
            output.status.success(),
            "this test simulates a full disk with a 4 MiB tmpfs and needs root (CAP_SYS_ADMIN) to mount it: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self(dir.to_owned())
    }

    /// Fills the disk to the last byte.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let small = [0u8; 512];
        while file.write_all(&small).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_denies_waiting_writes_and_keeps_acknowledged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"));
    let config = format!("dataDir: {}\n{SPLIT_WAITS}", disk.0.display());
    let server = TestServer::start_in(dir, &config).await;
    let mut connection = server.connect().await;
    let create = fixture("009");
    let answer = server.send(&create).await;
    assert!(recorded_sha(&answer).is_some());

    let filler = disk.fill();
    let update = fixture("017");
    let (status, answer) = connection
        .review(&update.path, body(&update.review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("writing git objects failed"), "{message}");
    assert!(message.contains("check free space"), "{message}");

    let other = in_team_b(fixture("009").review);
    let (_, answer) = connection.review("/validate", body(&other)).await.unwrap();
    assert_eq!(
        answer["response"]["allowed"], true,
        "a write that does not wait is admitted"
    );

    std::fs::remove_file(filler).unwrap();
    eventually_committed(&server, "team-b/core/configmaps/app-config.yaml").await;
    let repo = server.repo.clone();
    server.server.shutdown().await.unwrap();
    common::git(&repo, &["fsck", "--strict"]);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_moved_by_another_process_is_continued_not_fought() {
    let server = TestServer::start("rules:\n- name: all\n  wait: commit\n").await;
    let create = fixture("009");
    let answer = server.send(&create).await;
    let ours = recorded_sha(&answer).unwrap();

    // Someone commits to the branch behind kubescribe's back.
    let tree = server.git(&["rev-parse", "main^{tree}"]);
    let theirs = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&server.repo)
        .args([
            "-c",
            "user.name=op",
            "-c",
            "user.email=op@example.com",
            "commit-tree",
            tree.trim(),
            "-p",
            "main",
            "-m",
            "manual fix",
        ])
        .output()
        .unwrap();
    assert!(theirs.status.success());
    let theirs = String::from_utf8(theirs.stdout).unwrap();
    server.git(&["update-ref", "refs/heads/main", theirs.trim()]);

    // The first write after that finds the branch moved and is denied, with advice.
    let update = fixture("017");
    let answer = server.send(&update).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(answer["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("another process moved or locked the branch"));
    // The retry builds on the other commit instead of failing forever.
    let answer = server.send(&update).await;
    let sha = recorded_sha(&answer).expect("recorded on the moved branch");
    let parent = server.git(&["rev-parse", &format!("{sha}^")]);
    assert_eq!(parent.trim(), theirs.trim());
    assert!(server.git(&["rev-list", "main"]).contains(&ours));
    server.server.shutdown().await.unwrap();
}

/// POSTs `payload` (a file) to `url` with curl over `version`; the status curl read
/// (None when the answer did not arrive) and the body.
fn curl_post(
    ca: &std::path::Path,
    url: &str,
    version: &str,
    content_type: &str,
    payload: &std::path::Path,
) -> (Option<u16>, String) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("answer");
    let run = std::process::Command::new("curl")
        .args(["-s", "--max-time", "30", version, "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Content-Type: {content_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", payload.display()))
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_code}", url])
        .output()
        .expect("curl runs (scripts/install-deps.sh installs it)");
    let code: u16 = String::from_utf8_lossy(&run.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (run.status.success().then_some(code), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_arrives_over_http2_and_http1() {
    // The apiserver speaks HTTP/2 to a webhook that offers it. An answer sent while
    // the body is still arriving used to be followed by RST_STREAM, which curl
    // reported as a framing error in 8 of 10 tries for a 413.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "right\n").unwrap();
    let open = TestServer::start("").await;
    let authenticated = TestServer::start(&format!(
        "server:\n  clientAuth:\n    tokenFile: {}\n",
        token.display()
    ))
    .await;
    let review = dir.path().join("review.json");
    std::fs::write(&review, serde_json::to_vec(&fixture("009").review).unwrap()).unwrap();
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 9 * 1024 * 1024]).unwrap();
    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "{\"kind\": Admission").unwrap();
    let cases = [
        (&open, "application/json", &huge, 413, "larger than"),
        (&open, "text/plain", &huge, 413, "larger than"),
        (
            &open,
            "text/plain",
            &review,
            415,
            "Content-Type must be application/json",
        ),
        (&open, "application/json", &not_json, 400, "not valid JSON"),
        (
            &authenticated,
            "application/json",
            &review,
            401,
            "only from the apiserver",
        ),
        // A caller that proves nothing is refused before its body counts: 401 even
        // for an oversized one, and it arrives over HTTP/2 too.
        (
            &authenticated,
            "application/json",
            &huge,
            401,
            "only from the apiserver",
        ),
    ];
    for (server, content_type, payload, status, message) in cases {
        let ca = server.server.dev_ca.clone().unwrap();
        let url = format!(
            "https://{}/validate?timeout=10s",
            server.server.local_addr()
        );
        for version in ["--http2", "--http1.1"] {
            for attempt in 0..5 {
                let (got, text) = curl_post(&ca, &url, version, content_type, payload);
                let what = format!("{content_type} {} {version} #{attempt}", payload.display());
                assert_eq!(got, Some(status), "{what}: the answer arrives: {text}");
                let answer: Value =
                    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
                assert_eq!(answer["status"], status, "{what}");
                assert!(
                    answer["message"].as_str().unwrap().contains(message),
                    "{what}: {text}"
                );
            }
        }
    }
    // The server answered the oversized bodies and still serves.
    let (status, _) = open.get("/healthz").await;
    assert_eq!(status, 200);
}
