//! `secrets: sops` through real kubectl writes (issue 17): after each write, the
//! real `sops` decrypts the recorded file, with the GitOps tool's key, to exactly
//! the live Secret's data; and no value is anywhere in the repository.

use base64::Engine as _;
use serde_json::Value;

use super::kubectl::ok;
use crate::common::sops::{everything_in, keygen, sops_decrypt};
use crate::envtest::{ControlPlane, Kubescribe, ALICE, BOB};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The live Secret as the admin reads it.
fn live(plane: &ControlPlane, ns: &str, name: &str) -> Value {
    let out = plane.kubectl_ok(
        crate::envtest::ADMIN,
        &["-n", ns, "get", "secret", name, "-o", "json"],
        None,
    );
    serde_json::from_str(&out).unwrap()
}

/// The recorded file of Secret `name`, decrypted by sops with `key`.
fn decrypted(
    scribe: &Kubescribe,
    keys: &std::path::Path,
    key: &std::path::Path,
    ns: &str,
    name: &str,
) -> (String, Value) {
    let file = scribe.git(&["show", &format!("main:{ns}/core/secrets/{name}.yaml")]);
    let plain = sops_decrypt(keys, &file, key).unwrap_or_else(|e| panic!("sops: {e}\n{file}"));
    (file, plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_secrets_become_sops_files_that_decrypt_to_the_live_data() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("sops");
    let n = ns.as_str();
    let keys = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(keys.path(), "flux");
    let (ours_key, _, _) = keygen(keys.path(), "kubescribe");
    let scribe = Kubescribe::start(
        plane,
        "sops",
        &format!(
            "secrets: sops\nsops:\n  identityFile: {}\n  recipients: [{flux}]\nrules:\n- name: e2e\n  namespaces: [{n}]\n  wait: commit\n",
            ours_key.display()
        ),
    );
    scribe.await_webhook(n);
    let same = |name: &str| {
        let (file, plain) = decrypted(&scribe, keys.path(), &flux_key, n, name);
        assert_eq!(plain["data"], live(plane, n, name)["data"], "{file}");
        file
    };

    // create secret generic, from literals.
    ok(
        &scribe,
        ALICE,
        &[
            "-n",
            n,
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=correct-horse",
            "--from-literal=user=app",
        ],
        None,
    );
    let first = same("db");

    // --from-file, with bytes that are no text at all.
    let blob: Vec<u8> = (0..=255u8).rev().cycle().take(700).collect();
    let file = keys.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    ok(
        &scribe,
        BOB,
        &[
            "-n",
            n,
            "create",
            "secret",
            "generic",
            "bin",
            &format!("--from-file=blob={}", file.display()),
        ],
        None,
    );
    same("bin");
    assert_eq!(
        live(plane, n, "bin")["data"]["blob"].as_str(),
        Some(b64(&blob).as_str())
    );

    // stringData: the apiserver keeps it as data, and so does the file.
    let manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\n  namespace: {n}\nstringData:\n  token: s3cr3t-token-value\n"
    );
    ok(&scribe, ALICE, &["apply", "-f", "-"], Some(&manifest));
    let token = same("token");
    assert!(
        !token.lines().any(|l| l.starts_with("stringData:")),
        "{token}"
    );
    assert!(!token.contains("last-applied-configuration"), "{token}");

    // One key changes: only its ciphertext does, and the commit says which.
    let patch = format!(
        "{{\"data\":{{\"password\":\"{}\"}}}}",
        b64(b"battery-staple")
    );
    ok(
        &scribe,
        BOB,
        &["-n", n, "patch", "secret", "db", "-p", &patch],
        None,
    );
    let second = same("db");
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(line(&first, "user"), line(&second, "user"));
    assert_ne!(line(&first, "password"), line(&second, "password"));
    let said = scribe.git(&[
        "log",
        "-1",
        "--format=%an%n%B",
        "main",
        "--",
        &format!("{n}/core/secrets/db.yaml"),
    ]);
    assert!(
        said.starts_with("bob\n")
            && said.contains("Values changed (encrypted with SOPS): data.password."),
        "{said}"
    );

    // A write that changes nothing of the Secret makes no commit.
    let before = scribe.git(&["rev-parse", "main"]);
    ok(
        &scribe,
        BOB,
        &["-n", n, "patch", "secret", "db", "-p", &patch],
        None,
    );
    assert_eq!(scribe.git(&["rev-parse", "main"]), before);

    // A delete takes the file away.
    ok(&scribe, ALICE, &["-n", n, "delete", "secret", "db"], None);
    let files = scribe.git(&["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        !files.contains("secrets/db.yaml") && files.contains("secrets/bin.yaml"),
        "{files}"
    );

    // No value, in any form, anywhere in the repository's objects or history.
    let everything = everything_in(&scribe.repo);
    for needle in [
        "correct-horse".to_owned(),
        b64(b"correct-horse"),
        "battery-staple".to_owned(),
        b64(b"battery-staple"),
        "s3cr3t-token-value".to_owned(),
        b64(b"s3cr3t-token-value"),
        b64(&blob),
    ] {
        assert!(
            !everything.contains(&needle),
            "{needle} is in the repository"
        );
    }
    // Nor in kubescribe's log.
    let log = scribe.log();
    for needle in ["correct-horse", "battery-staple", "s3cr3t-token-value"] {
        assert!(!log.contains(needle), "{needle} is in the log");
    }
}
