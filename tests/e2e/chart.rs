//! The Helm chart against a real apiserver: everything `helm template` renders is
//! accepted by `kubectl apply --dry-run=server`, and everything but the webhook
//! configurations (which would send the namespace's writes to a kubescribe that does
//! not run here) by a real apply. cert-manager's own kinds are left out: their CRDs
//! are not installed here.

use serde_json::Value;

use crate::common::helm::render;
use crate::envtest::{ControlPlane, ADMIN};

/// The apiserver's minor version.
fn server_minor(plane: &ControlPlane) -> u32 {
    let version: Value =
        serde_json::from_str(&plane.kubectl_ok(ADMIN, &["get", "--raw", "/version"], None))
            .unwrap();
    version["minor"]
        .as_str()
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .expect("the apiserver's /version has a minor")
}

/// Objects the apiserver can take: cert-manager's kinds are not installed, and an
/// apiVersion newer than the apiserver (the chart asks for Kubernetes 1.25, this
/// suite's own apiserver is 1.20) is left out only when the apiserver predates it.
fn applicable(plane: &ControlPlane, objects: Vec<Value>) -> (Vec<Value>, Vec<String>) {
    let served = plane.kubectl_ok(ADMIN, &["api-versions"], None);
    let served: Vec<&str> = served.lines().collect();
    let minor = server_minor(plane);
    let mut left_out = Vec::new();
    let mut kept = Vec::new();
    for object in objects {
        let api_version = object["apiVersion"].as_str().unwrap().to_owned();
        let kind = object["kind"].as_str().unwrap().to_owned();
        if api_version.starts_with("cert-manager.io/") {
            continue;
        }
        if !served.contains(&api_version.as_str()) {
            assert!(
                minor < 25,
                "the chart renders {api_version} {kind}, which a 1.{minor} apiserver (within the chart's kubeVersion) does not serve"
            );
            left_out.push(format!("{api_version} {kind}"));
            continue;
        }
        kept.push(object);
    }
    (kept, left_out)
}

fn apply(plane: &ControlPlane, objects: &[Value], extra: &[&str]) {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    let out = plane.kubectl(ADMIN, &args, Some(&list.to_string()));
    assert!(
        out.status.success(),
        "kubectl {} refused the chart's objects:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_webhook_configuration(object: &Value) -> bool {
    matches!(
        object["kind"].as_str(),
        Some("ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration")
    )
}

fn check_variant(plane: &ControlPlane, release: &str, args: &[&str]) {
    let namespace = plane.namespace(release);
    // This apiserver (1.20) is older than the chart's floor (1.25), so helm's own
    // version check would refuse to render for it; the chart is rendered for helm's
    // default version, with matchConditions off as `auto` does below 1.28.
    let mut args = args.to_vec();
    args.extend(["--set", "webhook.matchConditions=false"]);
    let rendered = render(release, &namespace, &args);
    assert!(rendered
        .iter()
        .any(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet"));
    let (objects, left_out) = applicable(plane, rendered);
    assert!(
        left_out.iter().all(|o| o == "policy/v1 PodDisruptionBudget"),
        "only the PodDisruptionBudget's policy/v1 (Kubernetes 1.21) is newer than this apiserver: {left_out:?}"
    );
    apply(plane, &objects, &["--dry-run=server"]);
    let real: Vec<Value> = objects
        .into_iter()
        .filter(|o| !is_webhook_configuration(o))
        .collect();
    apply(plane, &real, &[]);
    for object in &real {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&namespace);
        plane.kubectl_ok(ADMIN, &["get", kind, name, "-n", ns, "-o", "name"], None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_with_cert_manager_is_accepted_by_the_apiserver() {
    let plane = ControlPlane::shared();
    check_variant(
        plane,
        "chart-cm",
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "persistence.enabled=true",
            "--set",
            "clientAuth.certificate=true",
            // Two replicas with a volume each: the StatefulSet.
            "--set",
            "replicaCount=2",
            "--set-json",
            r#"config={"reconcile":{"enabled":true},"repository":{"remote":{"url":"https://git.example.com/state.git"}},"rules":[{"name":"prod","namespaces":["prod"],"wait":"commit"},{"name":"rest"}]}"#,
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_without_cert_manager_is_accepted_by_the_apiserver() {
    let plane = ControlPlane::shared();
    let ca = base64_of(&std::fs::read(&plane.ca).unwrap());
    check_variant(
        plane,
        "chart-plain",
        &[
            "--set",
            "certManager.enabled=false",
            "--set",
            "tls.existingSecret=kubescribe-tls",
            "--set",
            &format!("tls.caBundle={ca}"),
            "--set",
            "clientAuth.tokenSecret=apiserver-token",
        ],
    );
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
