//! A repository's `.sops.yaml`: which age recipients a file at a given path is
//! encrypted for, as `sops` itself decides when it creates that file.
//!
//! SOPS takes the first creation rule whose `path_regex` matches the file's path
//! (relative to the directory of `.sops.yaml`; a rule without `path_regex` matches
//! every file). Its age recipients are its `age` (a comma-separated string or a
//! list) and those of its `key_groups`. kubescribe reads only the `.sops.yaml` at
//! the root of the branch, and only age: a rule that names only PGP or cloud KMS
//! keys gives no recipient kubescribe can encrypt for, and says so.
//!
//! Invariant: a `.sops.yaml` that cannot be read gives no recipients at all (every
//! Secret is refused with the reason), never a guess.

use serde::Deserialize;

/// The file SOPS reads its creation rules from, at the root of the repository.
pub const SOPS_YAML: &str = ".sops.yaml";

/// The creation rules of a `.sops.yaml`.
#[derive(Debug, Clone)]
pub struct CreationRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    path_regex: Option<(String, regex::Regex)>,
    age: Vec<age::x25519::Recipient>,
    /// Whether the rule names keys other than age (PGP, KMS, Vault): `sops` would
    /// encrypt for those, which kubescribe cannot.
    others: bool,
    /// Whether the rule splits the data key over several key groups (Shamir's
    /// secret sharing), which kubescribe does not do.
    split: bool,
}

/// Why a path has no recipients under a `.sops.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRecipients {
    #[error("no creation rule of .sops.yaml matches {path}: add one whose path_regex matches it, with the age recipients of your GitOps tool")]
    NoRule { path: String },
    #[error("creation rule {index} of .sops.yaml (path_regex {regex:?}) names no age recipient{others}: add `age: <recipient>` with the age recipient of your GitOps tool")]
    NoAge {
        index: usize,
        regex: String,
        others: &'static str,
    },
    #[error("creation rule {index} of .sops.yaml (path_regex {regex:?}) also names PGP, KMS or Vault keys, which kubescribe cannot encrypt for: give Secrets kubescribe writes a rule with age recipients only")]
    Others { index: usize, regex: String },
    #[error("creation rule {index} of .sops.yaml (path_regex {regex:?}) splits the data key over several key_groups, which kubescribe does not do: give Secrets kubescribe writes a rule with one group, or `age:`")]
    Split { index: usize, regex: String },
}

/// `age` as SOPS takes it: `age1…,age1…` or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum AgeKeys {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    creation_rules: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    path_regex: Option<String>,
    age: Option<AgeKeys>,
    #[serde(default)]
    key_groups: Vec<RawGroup>,
    pgp: Option<serde_yaml_ng::Value>,
    kms: Option<serde_yaml_ng::Value>,
    gcp_kms: Option<serde_yaml_ng::Value>,
    azure_keyvault: Option<serde_yaml_ng::Value>,
    hc_vault_transit_uri: Option<serde_yaml_ng::Value>,
    shamir_threshold: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct RawGroup {
    age: Option<AgeKeys>,
    pgp: Option<serde_yaml_ng::Value>,
    kms: Option<serde_yaml_ng::Value>,
    gcp_kms: Option<serde_yaml_ng::Value>,
    azure_keyvault: Option<serde_yaml_ng::Value>,
    hc_vault: Option<serde_yaml_ng::Value>,
}

impl CreationRules {
    /// Reads a `.sops.yaml`; the error says what is wrong, never guesses around it.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let file: File = serde_yaml_ng::from_slice(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for (n, raw) in file.creation_rules.into_iter().enumerate() {
            let index = n + 1;
            let path_regex = match raw.path_regex {
                Some(pattern) => {
                    let regex = regex::Regex::new(&pattern).map_err(|e| {
                        format!("creation rule {index}: path_regex {pattern:?}: {e}")
                    })?;
                    Some((pattern, regex))
                }
                None => None,
            };
            // As sops: with key_groups, only the groups' keys count.
            let split = raw.key_groups.len() > 1 || raw.shamir_threshold.is_some();
            let group_others = raw.key_groups.iter().any(|g| {
                g.pgp.is_some()
                    || g.kms.is_some()
                    || g.gcp_kms.is_some()
                    || g.azure_keyvault.is_some()
                    || g.hc_vault.is_some()
            });
            let (top, others) = if raw.key_groups.is_empty() {
                let others = raw.pgp.is_some()
                    || raw.kms.is_some()
                    || raw.gcp_kms.is_some()
                    || raw.azure_keyvault.is_some()
                    || raw.hc_vault_transit_uri.is_some();
                (raw.age, others)
            } else {
                (None, group_others)
            };
            let mut age = Vec::new();
            for keys in top
                .into_iter()
                .chain(raw.key_groups.into_iter().filter_map(|g| g.age))
            {
                let keys = match keys {
                    AgeKeys::One(list) => list.split(',').map(str::to_owned).collect(),
                    AgeKeys::Many(list) => list,
                };
                for key in keys {
                    let key = key.trim();
                    if key.is_empty() {
                        continue;
                    }
                    age.push(key.parse::<age::x25519::Recipient>().map_err(|_| {
                        format!("creation rule {index}: {key:?} is not an age X25519 recipient (age1...)")
                    })?);
                }
            }
            rules.push(Rule {
                path_regex,
                age,
                others,
                split,
            });
        }
        Ok(Self { rules })
    }

    /// The age recipients of the file at `path` (relative to the repository's
    /// root), as the first matching creation rule names them.
    pub fn recipients(&self, path: &str) -> Result<&[age::x25519::Recipient], NoRecipients> {
        let (index, rule) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| {
                rule.path_regex
                    .as_ref()
                    .is_none_or(|(_, regex)| regex.is_match(path))
            })
            .ok_or_else(|| NoRecipients::NoRule {
                path: path.to_owned(),
            })?;
        let regex = || {
            rule.path_regex
                .as_ref()
                .map_or_else(|| "(any)".to_owned(), |(p, _)| p.clone())
        };
        if rule.split {
            return Err(NoRecipients::Split {
                index: index + 1,
                regex: regex(),
            });
        }
        if rule.others && !rule.age.is_empty() {
            return Err(NoRecipients::Others {
                index: index + 1,
                regex: regex(),
            });
        }
        if rule.age.is_empty() {
            return Err(NoRecipients::NoAge {
                index: index + 1,
                regex: regex(),
                others: if rule.others {
                    " (only keys kubescribe cannot encrypt for: PGP, KMS or Vault)"
                } else {
                    ""
                },
            });
        }
        Ok(&rule.age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLUX: &str = "age1helqcqsh9464r8chnwc2fzj8uv7vr5ntnsft0tn45v2xtz0hpfwq98cmsg";
    const OTHER: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    #[test]
    fn first_matching_rule_with_its_age_keys_in_every_form() {
        let text = format!(
            "creation_rules:\n  - path_regex: ^clusters/prod/.*\\.yaml$\n    encrypted_regex: ^(data|stringData)$\n    age: {FLUX}, {OTHER}\n  - path_regex: .*\\.yaml$\n    key_groups:\n      - age:\n          - {OTHER}\n  - age: [{FLUX}]\n"
        );
        let rules = CreationRules::parse(text.as_bytes()).unwrap();
        let names = |path: &str| -> Vec<String> {
            rules
                .recipients(path)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(names("clusters/prod/app/secret.yaml"), [FLUX, OTHER]);
        assert_eq!(names("clusters/dev/app/secret.yaml"), [OTHER]);
        assert_eq!(names("README.md"), [FLUX]);
    }

    #[test]
    fn key_groups_replace_the_top_level_keys_and_a_split_key_is_refused() {
        let text = format!(
            "creation_rules:\n  - path_regex: ^one/\n    age: {FLUX}\n    key_groups:\n      - age: [{OTHER}]\n  - path_regex: ^split/\n    key_groups:\n      - age: [{FLUX}]\n      - age: [{OTHER}]\n  - path_regex: ^kms/\n    key_groups:\n      - kms:\n          - arn: x\n"
        );
        let rules = CreationRules::parse(text.as_bytes()).unwrap();
        let one: Vec<String> = rules
            .recipients("one/s.yaml")
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(one, [OTHER]);
        assert!(matches!(
            rules.recipients("split/s.yaml"),
            Err(NoRecipients::Split { index: 2, .. })
        ));
        let error = rules.recipients("kms/s.yaml").unwrap_err();
        assert!(error.to_string().contains("PGP, KMS"), "{error}");
        // age beside keys kubescribe cannot encrypt for: the file would lack them.
        let both = format!("creation_rules:\n  - age: {FLUX}\n    pgp: ABCDEF\n");
        let rules = CreationRules::parse(both.as_bytes()).unwrap();
        assert!(matches!(
            rules.recipients("x.yaml"),
            Err(NoRecipients::Others { index: 1, .. })
        ));
    }

    #[test]
    fn rules_without_age_or_a_match_say_what_to_add() {
        let text = format!(
            "creation_rules:\n  - path_regex: ^pgp/\n    pgp: ABCDEF\n  - path_regex: ^apps/\n    age: {FLUX}\n"
        );
        let rules = CreationRules::parse(text.as_bytes()).unwrap();
        let error = rules.recipients("pgp/secret.yaml").unwrap_err();
        assert!(
            matches!(error, NoRecipients::NoAge { index: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("PGP"), "{error}");
        let error = rules.recipients("other/secret.yaml").unwrap_err();
        assert!(error.to_string().contains("other/secret.yaml"), "{error}");
    }

    #[test]
    fn a_broken_file_is_an_error_not_a_guess() {
        assert!(
            CreationRules::parse(b"creation_rules:\n  - path_regex: '('\n    age: x\n")
                .unwrap_err()
                .contains("path_regex")
        );
        assert!(
            CreationRules::parse(b"creation_rules:\n  - age: age1nope\n")
                .unwrap_err()
                .contains("not an age")
        );
        assert!(CreationRules::parse(b"creation_rules: 3\n").is_err());
    }
}
