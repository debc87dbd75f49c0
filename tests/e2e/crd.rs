//! Custom resources: CRDs created while kubescribe runs are recorded with no restart
//! (the rules name groups, not a list of known resources), a namespaced and a
//! cluster-scoped one, and a status write never reaches kubescribe.

use crate::envtest::{assert_git_matches_cluster, ControlPlane, Kubescribe, Obj, ADMIN, ALICE};

const GROUP: &str = "e2e.kubescribe.io";

fn crd(plural: &str, kind: &str, scope: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{GROUP}
spec:
  group: {GROUP}
  scope: {scope}
  names:
    plural: {plural}
    singular: {singular}
    kind: {kind}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {{}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size:
                type: integer
              color:
                type: string
                default: grey
          status:
            type: object
            properties:
              ready:
                type: boolean
"#,
        singular = kind.to_lowercase()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_of_crds_created_while_running_are_recorded() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("crd");
    let config = format!(
        "rules:\n- name: crds\n  groups: [{GROUP}]\n  namespaces: [\"*\"]\n  wait: commit\n"
    );
    let scribe = Kubescribe::start(plane, "crd", &config);
    let rendered = std::fs::read_to_string(scribe.dir.join("webhooks.yaml")).unwrap();
    assert!(
        !rendered.contains("/status"),
        "no webhook entry asks for status writes:\n{rendered}"
    );

    plane.kubectl_ok(
        ADMIN,
        &["apply", "-f", "-"],
        Some(&crd("widgets", "Widget", "Namespaced")),
    );
    plane.kubectl_ok(
        ADMIN,
        &["apply", "-f", "-"],
        Some(&crd("gadgets", "Gadget", "Cluster")),
    );
    for plural in ["widgets", "gadgets"] {
        plane.kubectl_ok(
            ADMIN,
            &[
                "wait",
                "--for=condition=established",
                "--timeout=60s",
                &format!("crd/{plural}.{GROUP}"),
            ],
            None,
        );
    }
    let widget = format!("apiVersion: {GROUP}/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: {ns}\nspec:\n  size: 3\n");
    scribe.await_webhook_with(&["create", "--dry-run=server", "-f", "-"], Some(&widget));

    let out = scribe.kubectl(ALICE, &["create", "-f", "-"], Some(&widget));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scribe.log()
    );
    let out = scribe.kubectl(
        ALICE,
        &["create", "-f", "-"],
        Some(&format!(
            "apiVersion: {GROUP}/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  size: 7\n"
        )),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scribe.log()
    );
    let version = format!("{GROUP}/v1");
    let w1 = Obj::namespaced(&version, "widgets", &ns, "w1");
    let g1 = Obj::cluster(&version, "gadgets", "g1");
    let text = scribe
        .file(&w1.path())
        .expect("the namespaced custom resource's file");
    assert!(
        text.contains("color: grey"),
        "the schema's default is what the cluster persisted: {text}"
    );
    assert!(
        scribe.file(&g1.path()).is_some(),
        "the cluster-scoped custom resource's file"
    );

    // A status write goes to /status, which no entry selects: no call, no commit.
    let before = scribe.commit_count();
    let client = plane.client(ALICE).await;
    let request = axum::http::Request::patch(format!(
        "/apis/{GROUP}/v1/namespaces/{ns}/widgets/w1/status"
    ))
    .header("Content-Type", "application/merge-patch+json")
    .body(br#"{"status":{"ready":true}}"#.to_vec())
    .unwrap();
    let patched: serde_json::Value = client.request(request).await.expect("status patch");
    assert_eq!(patched["status"]["ready"], true);
    assert_eq!(
        scribe.commit_count(),
        before,
        "a status write makes no commit"
    );
    let log = scribe.full_log();
    assert!(
        log.contains("name=w1 operation=Create"),
        "kubescribe logs each review:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("name=w1 operation=Update")),
        "kubescribe was not called for the status write:\n{log}"
    );

    let admin = plane.client(ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &admin, &[w1, g1]).await;
}
