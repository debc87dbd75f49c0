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

/// A key path: `["data", "tls.crt"]` (keys may hold dots).
type KeyPath = Vec<String>;

/// What kubescribe could read of a previous file.
struct Previous {
    text: String,
    key: [u8; 32],
    /// Whether kubescribe made this data key for this file (its tag says so):
    /// only then are the key and the ciphertexts built on. A key someone else put
    /// there may be one they know.
    ours: bool,
    /// The age recipients the key is wrapped for, sorted, and the entries as they
    /// are.
    recipients: Vec<String>,
    age: Vec<Value>,
    /// Each encrypted value's plaintext and ciphertext.
    values: BTreeMap<KeyPath, (String, String)>,
    plain: Value,
}

/// Writes `plain` (a sanitised Secret, as JSON) as a SOPS file for `recipients`
/// (and `identity`'s own recipient, added when missing, so kubescribe can read the
/// file back). `context` names the file (its path in the repository): the data
/// key's tag binds it, so a key cannot be moved from one file to another.
///
/// With `previous` (the file as it is now) that kubescribe wrote: unchanged values
/// keep their ciphertexts and the data key is kept; a file whose plaintext and
/// recipients are unchanged comes back as it was. A recipient removed, or a key
/// kubescribe did not make, gets a new data key and every value encrypted afresh.
pub fn encrypt(
    plain: &Value,
    recipients: &[age::x25519::Recipient],
    identity: Option<&age::x25519::Identity>,
    previous: Option<&str>,
    context: &str,
    now: SystemTime,
) -> Result<Encrypted, SopsError> {
    let mut recipients = recipients.to_vec();
    if let Some(identity) = identity {
        let own = identity.to_public();
        if !recipients.iter().any(|r| r.to_string() == own.to_string()) {
            recipients.push(own);
        }
    }
    if recipients.is_empty() {
        return Err(SopsError::NoRecipients);
    }
    let previous = match (previous, identity) {
        (Some(text), Some(identity)) => match read(text, identity, context) {
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
    wanted.dedup();
    if let Some(previous) = previous.as_ref().filter(|p| p.ours) {
        if previous.plain == *plain && previous.recipients == wanted {
            return Ok(Encrypted {
                text: previous.text.clone(),
                changed: Vec::new(),
            });
        }
    }
    // Kept only while every holder of the key is still a recipient.
    let kept = previous
        .as_ref()
        .filter(|p| p.ours && p.recipients.iter().all(|r| wanted.contains(r)));
    let key = match kept {
        Some(previous) => previous.key,
        None => {
            let mut key = [0u8; 32];
            random(&mut key)?;
            key
        }
    };
    let age = match kept {
        Some(previous) => {
            // The entries as they are (no churn), and the new recipients'.
            let mut age = previous.age.clone();
            let new: Vec<age::x25519::Recipient> = recipients
                .iter()
                .filter(|r| !previous.recipients.contains(&r.to_string()))
                .cloned()
                .collect();
            age.extend(wrap(&key, &new)?);
            age
        }
        None => wrap(&key, &recipients)?,
    };
    let mut changed = Vec::new();
    let mut seen = Vec::new();
    let mut encrypted = plain.clone();
    encrypt_values(
        &mut encrypted,
        &mut Vec::new(),
        &key,
        Values {
            before: previous.as_ref().map(|p| &p.values),
            reuse: kept.is_some(),
        },
        &mut changed,
        &mut seen,
    )?;
    if let Some(previous) = &previous {
        changed.extend(
            previous
                .values
                .keys()
                .filter(|path| !seen.contains(path))
                .cloned(),
        );
    }
    let mut changed: Vec<String> = changed.iter().map(|path| path.join(".")).collect();
    changed.sort();
    changed.dedup();
    let lastmodified = rfc3339(now);
    let mac = mac(&ordered(plain)?)?;
    let mac = seal(&key, mac.as_bytes(), lastmodified.as_bytes())?;
    let mut sops = serde_json::json!({
        "age": age,
        "lastmodified": lastmodified,
        "mac": mac,
        "encrypted_regex": ENCRYPTED_REGEX,
        "version": SOPS_VERSION,
    });
    if let Some(identity) = identity {
        sops[KEY_TAG] = Value::String(key_tag(identity, context, &key, &age));
    }
    let object = encrypted
        .as_object_mut()
        .ok_or_else(|| SopsError::Encrypt("a Secret is an object".to_owned()))?;
    object.insert("sops".to_owned(), sops);
    Ok(Encrypted {
        text: unquote_encrypted(&crate::yaml::render(&encrypted)),
        changed,
    })
}

/// The plaintext document of a SOPS file `identity` is a recipient of, its MAC
/// checked, without its `sops` section: what `sops --decrypt` prints.
pub fn decrypt(text: &str, identity: &age::x25519::Identity) -> Result<Value, SopsError> {
    Ok(read(text, identity, "")?.plain)
}

/// The age recipients a SOPS file's data key is wrapped for, sorted; none for a
/// text that is not one.
pub fn recipients_of(text: &str) -> Vec<String> {
    let Ok(yaml) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return Vec::new();
    };
    let mut recipients: Vec<String> = yaml["sops"]["age"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["recipient"].as_str().map(str::to_owned))
        .collect();
    recipients.sort();
    recipients.dedup();
    recipients
}

/// Where kubescribe keeps the tag of its data key; `sops` and Flux ignore it.
const KEY_TAG: &str = "kubescribe_key_tag";

/// HMAC-SHA256, under a key only kubescribe's identity gives, of the file's name,
/// its data key and its wrapped keys: proof that kubescribe made this key for this
/// file and wrapped it for exactly these recipients.
fn key_tag(
    identity: &age::x25519::Identity,
    context: &str,
    key: &[u8; 32],
    age: &[Value],
) -> String {
    use age::secrecy::ExposeSecret as _;
    let secret = identity.to_string();
    let derived = ring::digest::digest(
        &ring::digest::SHA256,
        format!("kubescribe sops key tag v1\0{}", secret.expose_secret()).as_bytes(),
    );
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref());
    let mut context_ = ring::hmac::Context::with_key(&hmac);
    context_.update(context.as_bytes());
    context_.update(b"\0");
    context_.update(key);
    for entry in age {
        for field in ["recipient", "enc"] {
            context_.update(b"\0");
            context_.update(entry[field].as_str().unwrap_or_default().as_bytes());
        }
    }
    context_
        .sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `key: 'ENC[…]'` as `key: ENC[…]`, as `sops` writes it (and as tools that look
/// for `mac: ENC[` expect). An `ENC[…]` value is base64, `,`, `:`, `=`, `[` and
/// `]` only, which YAML reads back the same plain.
fn unquote_encrypted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        match body.split_once(": 'ENC[AES256_GCM,") {
            Some((key, rest)) if rest.ends_with("]'") && rest.matches('\'').count() == 1 => {
                out.push_str(key);
                out.push_str(": ENC[AES256_GCM,");
                out.push_str(&rest[..rest.len() - 1]);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

fn is_encrypted(path: &[String]) -> bool {
    path.iter().any(|key| key == "data" || key == "stringData")
}

/// The previous file's values: compared always, their ciphertexts reused only
/// under the same, trusted key.
#[derive(Clone, Copy)]
struct Values<'a> {
    before: Option<&'a BTreeMap<KeyPath, (String, String)>>,
    reuse: bool,
}

fn encrypt_values(
    value: &mut Value,
    path: &mut KeyPath,
    key: &[u8; 32],
    values: Values<'_>,
    changed: &mut Vec<KeyPath>,
    seen: &mut Vec<KeyPath>,
) -> Result<(), SopsError> {
    match value {
        Value::Object(map) => {
            for (name, child) in map.iter_mut() {
                path.push(name.clone());
                encrypt_values(child, path, key, values, changed, seen)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                encrypt_values(item, path, key, values, changed, seen)?;
            }
            Ok(())
        }
        // SOPS leaves a null as it is, outside the MAC.
        Value::Null => Ok(()),
        leaf if is_encrypted(path) => {
            let Value::String(plaintext) = leaf else {
                return Err(SopsError::NotAString {
                    path: path.join("."),
                });
            };
            seen.push(path.clone());
            let before = values.before.and_then(|b| b.get(path.as_slice()));
            if before.is_none_or(|(was, _)| was != plaintext) {
                changed.push(path.clone());
            }
            let kept = before
                .filter(|(was, _)| values.reuse && was == plaintext)
                .map(|(_, enc)| enc.clone());
            let enc = match kept {
                Some(enc) => enc,
                None if plaintext.is_empty() => String::new(),
                None => {
                    let aad = format!("{}:", path.join(":"));
                    seal(key, plaintext.as_bytes(), aad.as_bytes())?
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
fn wrap(key: &[u8; 32], recipients: &[age::x25519::Recipient]) -> Result<Vec<Value>, SopsError> {
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
    Ok(entries)
}

/// Reads a SOPS file with `identity`: the data key, every encrypted value, and
/// whether kubescribe made the key for this file (`context`).
fn read(
    text: &str,
    identity: &age::x25519::Identity,
    context: &str,
) -> Result<Previous, SopsError> {
    let unreadable = |why: String| SopsError::Unreadable(why);
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| unreadable(format!("not YAML: {e}")))?;
    let sops = yaml
        .as_mapping_mut()
        // Shifted out, not swapped: the MAC is over the others in their order.
        .and_then(|m| m.shift_remove("sops"))
        .ok_or_else(|| unreadable("no `sops` section".to_owned()))?;
    let sops: Value =
        serde_json::to_value(&sops).map_err(|e| unreadable(format!("its `sops` section: {e}")))?;
    let age: Vec<Value> = sops["age"].as_array().cloned().unwrap_or_default();
    let mut key = None;
    let mut recipients = Vec::new();
    for entry in &age {
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
    recipients.dedup();
    let key = key.ok_or_else(|| {
        unreadable("kubescribe's identity is not among its recipients".to_owned())
    })?;
    let mut values = BTreeMap::new();
    decrypt_values(&mut yaml, &mut Vec::new(), &key, &mut values)?;
    // The MAC, in the file's own order, proves nobody changed a value or the
    // layout without the key.
    let lastmodified = sops["lastmodified"]
        .as_str()
        .ok_or_else(|| unreadable("no lastmodified".to_owned()))?;
    let stored = open(
        &key,
        sops["mac"].as_str().unwrap_or_default(),
        lastmodified.as_bytes(),
    )?;
    if stored != mac(&yaml)? {
        return Err(unreadable("its MAC does not match its values".to_owned()));
    }
    let ours = sops[KEY_TAG].as_str().is_some_and(|tag| {
        let expected = key_tag(identity, context, &key, &age);
        use subtle::ConstantTimeEq as _;
        bool::from(tag.as_bytes().ct_eq(expected.as_bytes()))
    });
    let plain =
        serde_json::to_value(&yaml).map_err(|e| unreadable(format!("not JSON-like: {e}")))?;
    Ok(Previous {
        text: text.to_owned(),
        key,
        ours,
        recipients,
        age,
        values,
        plain,
    })
}

fn decrypt_values(
    value: &mut serde_yaml_ng::Value,
    path: &mut KeyPath,
    key: &[u8; 32],
    out: &mut BTreeMap<KeyPath, (String, String)>,
) -> Result<(), SopsError> {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Mapping(map) => {
            for (name, child) in map.iter_mut() {
                path.push(name.as_str().unwrap_or_default().to_owned());
                decrypt_values(child, path, key, out)?;
                path.pop();
            }
            Ok(())
        }
        Y::Sequence(items) => {
            for item in items {
                decrypt_values(item, path, key, out)?;
            }
            Ok(())
        }
        Y::String(enc) if is_encrypted(path) => {
            let plain = if enc.is_empty() {
                String::new()
            } else {
                open(key, enc, format!("{}:", path.join(":")).as_bytes())?
            };
            out.insert(path.clone(), (plain.clone(), enc.clone()));
            *value = Y::String(plain);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `plain` in the order the rendered file lists it.
fn ordered(plain: &Value) -> Result<serde_yaml_ng::Value, SopsError> {
    serde_yaml_ng::from_str(&crate::yaml::render(plain))
        // serde's message can quote the text it could not read: a value.
        .map_err(|_| {
            SopsError::Encrypt("the rendered Secret does not read back as YAML".to_owned())
        })
}

/// SHA-512 over every leaf value of `document` in its order, as upper-case hex.
fn mac(document: &serde_yaml_ng::Value) -> Result<String, SopsError> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA512);
    leaves(document, &mut |bytes| digest.update(bytes))?;
    let sum = digest.finish();
    Ok(sum
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>())
}

/// Calls `each` with every leaf's bytes as SOPS turns them into bytes: strings as
/// they are, integers in decimal, booleans `True`/`False` (a Secret holds no
/// floats, whose Go formatting this does not copy).
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
        assert_eq!(rfc3339(at), "2026-12-07T13:30:45Z");
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
