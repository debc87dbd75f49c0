//! `kubescribe webhook-config` and `kubescribe certs`, run as the real binary.

use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

fn kubescribe(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn webhook_config_follows_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "annotate: true\nrules:\n- name: prod\n  namespaces: [prod]\n  wait: commit\n- name: apps\n  groups: [apps]\n  resources: [deployments]\n",
    )
    .unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (code, out, err) = kubescribe(&[
        "webhook-config",
        "--config",
        config.to_str().unwrap(),
        "--ca-bundle",
        ca.to_str().unwrap(),
        "--namespace",
        "git-record",
    ]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<Value> = out
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str(doc).expect("each document is YAML"))
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["kind"], "ValidatingWebhookConfiguration");
    assert_eq!(docs[1]["kind"], "MutatingWebhookConfiguration");
    let hooks = docs[0]["webhooks"].as_array().unwrap();
    assert_eq!(
        hooks[0]["failurePolicy"], "Fail",
        "prod waits for its commit"
    );
    assert_eq!(hooks[1]["failurePolicy"], "Ignore");
    assert_eq!(
        hooks[1]["rules"][0]["resources"],
        serde_json::json!(["deployments", "deployments/scale"])
    );
    assert_eq!(
        hooks[0]["clientConfig"]["service"]["namespace"],
        "git-record"
    );
    let bundle = hooks[0]["clientConfig"]["caBundle"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
        std::fs::read(&ca).unwrap()
    );
    let not_in = &hooks[1]["namespaceSelector"]["matchExpressions"][0]["values"];
    // The prod rule takes every write in prod, so the apps rule never gets prod.
    assert_eq!(
        *not_in,
        serde_json::json!(["git-record", "kube-node-lease", "kube-system", "prod"])
    );
    assert_eq!(
        hooks[0]["rules"][0]["scope"], "Namespaced",
        "prod is namespaced"
    );
    assert_eq!(hooks[1]["rules"][0]["scope"], "*");
    for hook in hooks {
        assert_eq!(hook["sideEffects"], "NoneOnDryRun");
    }
}

#[test]
fn certs_writes_a_pair_prints_the_ca_bundle_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let out_arg = out.to_str().unwrap();
    let (code, stdout, err) = kubescribe(&["certs", "--out", out_arg, "--ip", "127.0.0.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("kubescribe.kubescribe.svc"), "{err}");
    let ca = std::fs::read(out.join("ca.crt")).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(stdout.trim())
            .unwrap(),
        ca
    );
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "tls.key"] {
        let mode = std::fs::metadata(out.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // The pair is usable for serving.
    kubescribe::tls::CertStore::load(&out.join("tls.crt"), &out.join("tls.key")).unwrap();

    let (code, _, err) = kubescribe(&["certs", "--out", out_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = kubescribe(&["certs", "--out", out_arg, "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(out.join("ca.crt")).unwrap(), ca, "replaced");
}
