//! The mutating webhook's job with `annotate: true`: a JSON Patch that stamps the git
//! path and repository, byte for byte what kube-apiserver expects, idempotent, never
//! recorded in git, and shown by `kubescribe check`.

mod common;

use base64::Engine as _;
use common::{body, TestServer};
use serde_json::Value;

async fn review(server: &TestServer, path: &str, review: &Value) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review(path, body(review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    answer
}

/// The decoded patch of a /mutate answer, as the exact bytes sent.
fn patch_bytes(answer: &Value) -> Option<String> {
    let patch = answer["response"]["patch"].as_str()?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is standard base64, as the apiserver decodes it");
    Some(String::from_utf8(bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_objects_are_stamped_once_and_the_stamp_never_reaches_git() {
    let server = TestServer::start("annotate: true\nrules:\n- name: all\n  wait: commit\n").await;
    let repo = server.repo.display().to_string();

    // A ConfigMap without annotations: one `add` of the whole map.
    let mut create = common::fixture("008").review;
    let answer = review(&server, "/mutate", &create).await;
    assert_eq!(answer["response"]["allowed"], true);
    let expected = format!(
        r#"[{{"op":"add","path":"/metadata/annotations","value":{{"kubescribe.io/git-path":"team-a/core/configmaps/app-config.yaml","kubescribe.io/git-repo":"{repo}"}}}}]"#
    );
    assert_eq!(
        patch_bytes(&answer).unwrap_or_else(|| panic!("{answer}")),
        expected
    );

    // Applied as the apiserver would, then asked again (reinvocation): no patch.
    let patch: json_patch::Patch = serde_json::from_str(&expected).unwrap();
    json_patch::patch(&mut create["request"]["object"], &patch).unwrap();
    let again = review(&server, "/mutate", &create).await;
    assert_eq!(patch_bytes(&again), None, "{again}");

    // The validating call sees the stamped object; git never does.
    let answer = review(&server, "/validate", &create).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let file = server.git(&["show", "main:team-a/core/configmaps/app-config.yaml"]);
    assert!(!file.contains("kubescribe.io"), "{file}");

    // Existing annotations get one `add` per key, with `/` escaped as `~1`.
    let answer = review(&server, "/mutate", &common::fixture("010").review).await;
    let bytes = patch_bytes(&answer).unwrap();
    assert!(
        bytes.starts_with(r#"[{"op":"add","path":"/metadata/annotations/kubescribe.io~1git-path","value":"team-a/apps/deployments/web.yaml"}"#),
        "{bytes}"
    );

    // A generateName create has no name, hence no path, at mutation time.
    let answer = review(&server, "/mutate", &common::fixture("020").review).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(patch_bytes(&answer), None, "{answer}");
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_annotate_mutate_never_patches() {
    let server = TestServer::start("").await;
    for fixture in common::fixtures() {
        let answer = review(&server, "/mutate", &fixture.review).await;
        assert_eq!(answer["response"]["allowed"], true, "{}", fixture.file);
        assert!(
            answer["response"].get("patch").is_none(),
            "{}",
            fixture.file
        );
    }
    server.server.shutdown().await.unwrap();
}

#[test]
fn check_shows_the_patch_the_webhook_would_return() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "annotate: true\nrepository:\n  path: /srv/repo.git\n",
    )
    .unwrap();
    let manifest = dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: team-a\n",
    )
    .unwrap();
    let args = kubescribe::check::CheckArgs {
        files: vec![manifest],
        kustomize: Vec::new(),
        review: Vec::new(),
        user: "alice".to_owned(),
        groups: Vec::new(),
        operation: kubescribe::check::CheckOperation::Create,
        config: Some(config),
        repo: None,
        output: kubescribe::check::OutputFormat::Json,
        api_resources: None,
    };
    let report = kubescribe::check::run(&args, &mut std::io::empty()).unwrap();
    assert_eq!(
        report.results[0].patch.as_ref().unwrap().to_string(),
        r#"[{"op":"add","path":"/metadata/annotations","value":{"kubescribe.io/git-path":"team-a/core/configmaps/a.yaml","kubescribe.io/git-repo":"/srv/repo.git"}}]"#
    );
}
