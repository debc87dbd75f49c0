//! SOPS files, written natively: a Secret's `data` and `stringData` values
//! encrypted as `sops` and Flux's kustomize-controller expect, everything else
//! readable.
//!
//! The format, as SOPS writes and checks it:
//! - one random 32-byte data key per file, wrapped for each age recipient (an
//!   armored age file in `sops.age[].enc`);
//! - each value under a key matching `encrypted_regex` (`^(data|stringData)$`)
//!   becomes `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str]`: AES-256-GCM with a
//!   32-byte IV, and as additional data the value's key path joined with `:` plus a
//!   trailing `:` (`data:password:`); an empty value stays empty;
//! - the MAC is SHA-512 over every leaf value of the document in the order the file
//!   lists them (plaintext, encrypted or not), as upper-case hex, encrypted with the
//!   data key and the `lastmodified` time (RFC 3339, UTC) as additional data;
//! - `lastmodified`, `mac`, `encrypted_regex` and `version` sit beside the keys.
//!
//! Invariants: no plaintext value leaves this module except inside the MAC's
//! input; an update that changes nothing gives back the previous file unchanged,
//! and one that changes a value re-encrypts that value only (the data key and the
//! other values' ciphertexts are kept when kubescribe's own identity can read the
//! previous file).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::SystemTime;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::AesGcm;
use base64::Engine as _;
use serde_json::Value;

/// The SOPS version written into files; the format of 3.7 and later.
pub const SOPS_VERSION: &str = "3.11.0";
/// What is encrypted: every value under `data` and `stringData`.
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";

/// AES-256-GCM with SOPS's 32-byte nonces.
type Cipher = AesGcm<Aes256, U32>;

/// Why a Secret could not be written as SOPS, or a SOPS file not read. The texts
/// never hold a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SopsError {
    #[error("no age recipient to encrypt to")]
    NoRecipients,
    #[error("{path} is not a string; Secret values are strings")]
    NotAString { path: String },
    #[error("encrypting failed: {0}")]
    Encrypt(String),
    #[error("the previous file is not a SOPS file kubescribe can read: {0}")]
    Unreadable(String),
}

/// A Secret written as SOPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// The file.
    pub text: String,
    /// The key paths (`data.password`) whose values changed, were added or went,
    /// against the previous file; every one for a new file. Never values.
    pub changed: Vec<String>,
}

/// What kubescribe could read of a previous file: its data key, the age
/// recipients it was wrapped for, and each encrypted value's plaintext and
/// ciphertext by key path.
struct Previous {
    text: String,
    key: [u8; 32],
    recipients: Vec<String>,
    age: Value,
    values: BTreeMap<String, (String, String)>,
    plain: Value,
}

/// Writes `plain` (a sanitised Secret, as JSON) as a SOPS file for `recipients`.
/// With `previous` (the file as it is now) and an `identity` among its
/// recipients, unchanged values keep their ciphertexts and the data key is kept;
/// a file whose plaintext and recipients are unchanged comes back as it was.
pub fn encrypt(
    plain: &Value,
    recipients: &[age::x25519::Recipient],
    identity: Option<&age::x25519::Identity>,
    previous: Option<&str>,
    now: SystemTime,
) -> Result<Encrypted, SopsError> {
    if recipients.is_empty() {
        return Err(SopsError::NoRecipients);
    }
    let previous = match (previous, identity) {
        (Some(text), Some(identity)) => match read(text, identity) {
            Ok(previous) => Some(previous),
            Err(e) => {
                tracing::debug!(error = %e, "the previous SOPS file cannot be read back; writing it anew");
                None
            }
        },
        _ => None,
    };
    let mut wanted: Vec<String> = recipients.iter().map(ToString::to_string).collect();
    wanted.sort();
    if let Some(previous) = &previous {
        if previous.plain == *plain && previous.recipients == wanted {
            return Ok(Encrypted {
                text: previous.text.clone(),
                changed: Vec::new(),
            });
        }
    }
    let key = match &previous {
        Some(previous) => previous.key,
        None => {
            let mut key = [0u8; 32];
            random(&mut key)?;
            key
        }
    };
    let age = match &previous {
        // Same recipients: the same wrapped key (no churn).
        Some(previous) if previous.recipients == wanted => previous.age.clone(),
        _ => wrap(&key, recipients)?,
    };
    let mut changed = Vec::new();
    let mut encrypted = plain.clone();
    encrypt_values(
        &mut encrypted,
        &mut Vec::new(),
        &key,
        previous.as_ref().map(|p| &p.values),
        &mut changed,
    )?;
    if let Some(previous) = &previous {
        // Keys that went.
        let now: std::collections::BTreeSet<&String> = changed.iter().collect();
        let mut gone: Vec<String> = previous
            .values
            .keys()
            .filter(|path| !now.contains(path) && !has_path(plain, path))
            .cloned()
            .collect();
        changed.append(&mut gone);
    }
    changed.sort();
    changed.dedup();
    let lastmodified = rfc3339(now);
    let mac = mac(plain)?;
    let mac = seal(&key, mac.as_bytes(), lastmodified.as_bytes())?;
    let object = encrypted
        .as_object_mut()
        .ok_or_else(|| SopsError::Encrypt("a Secret is an object".to_owned()))?;
    object.insert(
        "sops".to_owned(),
        serde_json::json!({
            "age": age,
            "lastmodified": lastmodified,
            "mac": mac,
            "encrypted_regex": ENCRYPTED_REGEX,
            "version": SOPS_VERSION,
        }),
    );
    Ok(Encrypted {
        text: crate::yaml::render(&encrypted),
        changed,
    })
}

fn has_path(value: &Value, path: &str) -> bool {
    let mut at = value;
    for part in path.split('.') {
        match at.get(part) {
            Some(next) => at = next,
            None => return false,
        }
    }
    true
}

fn is_encrypted(path: &[String]) -> bool {
    path.iter().any(|key| key == "data" || key == "stringData")
}

fn encrypt_values(
    value: &mut Value,
    path: &mut Vec<String>,
    key: &[u8; 32],
    previous: Option<&BTreeMap<String, (String, String)>>,
    changed: &mut Vec<String>,
) -> Result<(), SopsError> {
    match value {
        Value::Object(map) => {
            for (name, child) in map.iter_mut() {
                path.push(name.clone());
                encrypt_values(child, path, key, previous, changed)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                encrypt_values(item, path, key, previous, changed)?;
            }
            Ok(())
        }
        leaf if is_encrypted(path) => {
            let dotted = path.join(".");
            let Value::String(plaintext) = leaf else {
                return Err(SopsError::NotAString { path: dotted });
            };
            let kept = previous
                .and_then(|p| p.get(&dotted))
                .filter(|(before, _)| before == plaintext)
                .map(|(_, enc)| enc.clone());
            let enc = match kept {
                Some(enc) => enc,
                None => {
                    changed.push(dotted);
                    if plaintext.is_empty() {
                        String::new()
                    } else {
                        let aad = format!("{}:", path.join(":"));
                        seal(key, plaintext.as_bytes(), aad.as_bytes())?
                    }
                }
            };
            *leaf = Value::String(enc);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn random(buf: &mut [u8]) -> Result<(), SopsError> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| SopsError::Encrypt("no randomness from the system".to_owned()))
}

/// `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str]` of `plaintext`.
fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<String, SopsError> {
    let mut iv = [0u8; 32];
    random(&mut iv)?;
    let cipher = Cipher::new_from_slice(key).map_err(|e| SopsError::Encrypt(e.to_string()))?;
    let sealed = cipher
        .encrypt(
            aes_gcm::Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|e| SopsError::Encrypt(e.to_string()))?;
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        b64.encode(data),
        b64.encode(iv),
        b64.encode(tag)
    ))
}

/// The plaintext of an `ENC[…]` value.
fn open(key: &[u8; 32], enc: &str, aad: &[u8]) -> Result<String, SopsError> {
    let unreadable = |why: &str| SopsError::Unreadable(why.to_owned());
    let inner = enc
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| unreadable("a value is not ENC[AES256_GCM,…]"))?;
    let mut parts = BTreeMap::new();
    for part in inner.split(',') {
        if let Some((name, value)) = part.split_once(':') {
            parts.insert(name, value);
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let field = |name: &str| -> Result<Vec<u8>, SopsError> {
        b64.decode(
            parts
                .get(name)
                .ok_or_else(|| unreadable("a field is missing"))?,
        )
        .map_err(|_| unreadable("a field is not base64"))
    };
    if parts.get("type") != Some(&"str") {
        return Err(unreadable("only string values are read back"));
    }
    let (data, iv, tag) = (field("data")?, field("iv")?, field("tag")?);
    if iv.len() != 32 || tag.len() != 16 {
        return Err(unreadable("an IV or tag has the wrong length"));
    }
    let mut sealed = data;
    sealed.extend_from_slice(&tag);
    let cipher = Cipher::new_from_slice(key).map_err(|e| SopsError::Unreadable(e.to_string()))?;
    let plain = cipher
        .decrypt(
            aes_gcm::Nonce::<U32>::from_slice(&iv),
            Payload { msg: &sealed, aad },
        )
        .map_err(|_| unreadable("a value does not decrypt with the data key"))?;
    String::from_utf8(plain).map_err(|_| unreadable("a value is not UTF-8"))
}

/// The data key wrapped for every recipient, as SOPS lists it.
fn wrap(key: &[u8; 32], recipients: &[age::x25519::Recipient]) -> Result<Value, SopsError> {
    let mut entries = Vec::new();
    for recipient in recipients {
        let encrypt_error = |e: &dyn std::fmt::Display| SopsError::Encrypt(format!("age: {e}"));
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                .map_err(|e| encrypt_error(&e))?;
        let mut out = Vec::new();
        let armor =
            age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
                .map_err(|e| encrypt_error(&e))?;
        let mut writer = encryptor
            .wrap_output(armor)
            .map_err(|e| encrypt_error(&e))?;
        writer.write_all(key).map_err(|e| encrypt_error(&e))?;
        writer
            .finish()
            .and_then(|armor| armor.finish())
            .map_err(|e| encrypt_error(&e))?;
        let enc = String::from_utf8(out).map_err(|e| encrypt_error(&e))?;
        entries.push(serde_json::json!({
            "recipient": recipient.to_string(),
            "enc": enc,
        }));
    }
    Ok(Value::Array(entries))
}

/// Reads a SOPS file with `identity`: the data key, and every encrypted value.
fn read(text: &str, identity: &age::x25519::Identity) -> Result<Previous, SopsError> {
    let unreadable = |why: String| SopsError::Unreadable(why);
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| unreadable(format!("not YAML: {e}")))?;
    let mut json: Value =
        serde_json::to_value(&yaml).map_err(|e| unreadable(format!("not JSON-like: {e}")))?;
    let sops = json
        .as_object_mut()
        .and_then(|o| o.remove("sops"))
        .ok_or_else(|| unreadable("no `sops` section".to_owned()))?;
    let age = sops["age"].clone();
    let mut key = None;
    let mut recipients = Vec::new();
    for entry in age.as_array().into_iter().flatten() {
        if let Some(recipient) = entry["recipient"].as_str() {
            recipients.push(recipient.to_owned());
        }
        if key.is_some() {
            continue;
        }
        let Some(enc) = entry["enc"].as_str() else {
            continue;
        };
        let Ok(decryptor) = age::Decryptor::new(age::armor::ArmoredReader::new(enc.as_bytes()))
        else {
            continue;
        };
        let Ok(mut reader) = decryptor.decrypt(std::iter::once(identity as &dyn age::Identity))
        else {
            continue;
        };
        let mut unwrapped = Vec::new();
        if reader.read_to_end(&mut unwrapped).is_ok() {
            if let Ok(unwrapped) = <[u8; 32]>::try_from(unwrapped.as_slice()) {
                key = Some(unwrapped);
            }
        }
    }
    recipients.sort();
    let key = key.ok_or_else(|| {
        unreadable("kubescribe's identity is not among its recipients".to_owned())
    })?;
    let mut values = BTreeMap::new();
    let mut plain = json.clone();
    decrypt_values(&mut plain, &mut Vec::new(), &key, &mut values)?;
    // The MAC proves nobody changed a value or the layout behind our back.
    let lastmodified = sops["lastmodified"]
        .as_str()
        .ok_or_else(|| unreadable("no lastmodified".to_owned()))?;
    let stored = open(
        &key,
        sops["mac"].as_str().unwrap_or_default(),
        lastmodified.as_bytes(),
    )?;
    if stored != mac(&plain)? {
        return Err(unreadable("its MAC does not match its values".to_owned()));
    }
    Ok(Previous {
        text: text.to_owned(),
        key,
        recipients,
        age,
        values,
        plain,
    })
}

fn decrypt_values(
    value: &mut Value,
    path: &mut Vec<String>,
    key: &[u8; 32],
    out: &mut BTreeMap<String, (String, String)>,
) -> Result<(), SopsError> {
    match value {
        Value::Object(map) => {
            for (name, child) in map.iter_mut() {
                path.push(name.clone());
                decrypt_values(child, path, key, out)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                decrypt_values(item, path, key, out)?;
            }
            Ok(())
        }
        Value::String(enc) if is_encrypted(path) => {
            let plain = if enc.is_empty() {
                String::new()
            } else {
                open(key, enc, format!("{}:", path.join(":")).as_bytes())?
            };
            out.insert(path.join("."), (plain.clone(), enc.clone()));
            *value = Value::String(plain);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// SHA-512 over every leaf value in the order the rendered file lists them, as
/// upper-case hex. The order is read off the rendering itself, so it is the order
/// `sops` reads.
fn mac(plain: &Value) -> Result<String, SopsError> {
    let rendered = crate::yaml::render(plain);
    let ordered: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rendered)
        .map_err(|e| SopsError::Encrypt(format!("the rendered Secret is not YAML: {e}")))?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA512);
    leaves(&ordered, &mut |bytes| digest.update(bytes))?;
    let sum = digest.finish();
    Ok(sum
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>())
}

/// Calls `each` with every leaf's bytes as SOPS turns them into bytes: strings as
/// they are, integers in decimal, floats shortest, booleans `True`/`False`.
fn leaves(value: &serde_yaml_ng::Value, each: &mut dyn FnMut(&[u8])) -> Result<(), SopsError> {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Mapping(map) => {
            for (_, child) in map {
                leaves(child, each)?;
            }
        }
        Y::Sequence(items) => {
            for item in items {
                leaves(item, each)?;
            }
        }
        Y::String(s) => each(s.as_bytes()),
        Y::Bool(b) => each(if *b { b"True" } else { b"False" }),
        Y::Number(n) => each(n.to_string().as_bytes()),
        Y::Null => {}
        Y::Tagged(tagged) => leaves(&tagged.value, each)?,
    }
    Ok(())
}

/// RFC 3339 in UTC, to the second, as SOPS writes `lastmodified`.
fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_sops_writes_them() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_650_245);
        assert_eq!(rfc3339(at), "2026-12-07T14:10:45Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_value_seals_and_opens_with_its_path_only() {
        let key = [7u8; 32];
        let enc = seal(&key, b"hunter2", b"data:password:").unwrap();
        assert!(enc.starts_with("ENC[AES256_GCM,data:") && enc.ends_with(",type:str]"));
        assert!(!enc.contains("hunter2"));
        assert_eq!(open(&key, &enc, b"data:password:").unwrap(), "hunter2");
        assert!(open(&key, &enc, b"data:other:").is_err());
    }
}
