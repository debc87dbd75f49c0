//! Forge webhooks: the forge telling kubescribe that a pull request changed, so it
//! looks at the rule's open pull requests now instead of at the next poll.
//!
//! Invariant: a webhook is only ever a hint. Its payload is not read: what became
//! of a pull request is always read back from the forge's API, so a forged or
//! replayed call can at most make kubescribe poll early. Even so, a call whose
//! signature (GitHub's and Gitea's HMAC-SHA256 of the body, GitLab's secret token)
//! does not match the configured secret is refused, and no call costs more than one
//! poll: pokes while a poll is due fold into it.

use axum::http::HeaderMap;

use crate::config::Forge;

/// Whether `body` with `headers` was signed with `secret` the way `forge` signs
/// its webhooks; `Err` says what is wrong, without the secret.
pub fn verify(forge: Forge, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match forge {
        Forge::Gitlab => {
            let given = header("x-gitlab-token").ok_or("no X-Gitlab-Token header")?;
            use subtle::ConstantTimeEq as _;
            if bool::from(given.as_bytes().ct_eq(secret)) {
                Ok(())
            } else {
                Err("X-Gitlab-Token is not the webhook's secret".to_owned())
            }
        }
        Forge::Github | Forge::Gitea => {
            // GitHub: `X-Hub-Signature-256: sha256=<hex>`; Gitea sends that too,
            // and `X-Gitea-Signature: <hex>`.
            let hex = header("x-hub-signature-256")
                .and_then(|v| v.strip_prefix("sha256="))
                .or_else(|| header("x-gitea-signature"))
                .ok_or("no X-Hub-Signature-256 (or X-Gitea-Signature) header")?;
            let tag = decode_hex(hex.trim()).ok_or("the signature is not hex")?;
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            ring::hmac::verify(&key, body, &tag)
                .map_err(|_| "the signature does not match the webhook's secret".to_owned())
        }
    }
}

/// Whether `headers` carry the header `forge` signs with, before any of the body
/// is read.
pub fn signature_present(forge: Forge, headers: &HeaderMap) -> Result<(), String> {
    let names: &[&str] = match forge {
        Forge::Gitlab => &["x-gitlab-token"],
        Forge::Github | Forge::Gitea => &["x-hub-signature-256", "x-gitea-signature"],
    };
    if names.iter().any(|name| headers.contains_key(*name)) {
        Ok(())
    } else {
        Err(format!("no {} header", names.join(" or ")))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(name: &'static str, value: String) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    #[test]
    fn signatures_are_checked_as_each_forge_makes_them() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        // GitHub's documented example of X-Hub-Signature-256.
        let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let headers = signed("x-hub-signature-256", github.to_owned());
        assert_eq!(verify(Forge::Github, secret, &headers, body), Ok(()));
        assert!(verify(Forge::Github, b"other", &headers, body).is_err());
        assert!(verify(Forge::Github, secret, &headers, b"Hello, World?").is_err());
        let gitea = signed("x-gitea-signature", github["sha256=".len()..].to_owned());
        assert_eq!(verify(Forge::Gitea, secret, &gitea, body), Ok(()));
        assert!(verify(Forge::Github, secret, &HeaderMap::new(), body).is_err());
        let gitlab = signed("x-gitlab-token", "It's a Secret to Everybody".to_owned());
        assert_eq!(verify(Forge::Gitlab, secret, &gitlab, body), Ok(()));
        assert!(verify(Forge::Gitlab, b"nope", &gitlab, body).is_err());
    }
}
