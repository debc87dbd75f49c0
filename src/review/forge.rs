//! The forges' pull request APIs: GitHub (and GitHub Enterprise Server), Gitea
//! (and Forgejo), GitLab merge requests. Only what a review needs: open one, find
//! the one of a branch, and read its state with a conditional request.
//!
//! Invariants: the token is read from its file at every call (a rotated Secret is
//! used at once) and only ever goes into the `Authorization` (or `PRIVATE-TOKEN`)
//! header, never into a log, a message or an error; every failure is classified
//! into an [`ApiError`] that says what to do; after a rate limit, no call is made
//! until the forge's `Retry-After` has passed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::config::{Forge, ReviewConfig};

/// Why a forge API call failed; [`ApiError::advice`] says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{forge} refused kubescribe's token ({status}): {detail}")]
    Auth {
        forge: String,
        status: u16,
        detail: String,
    },
    #[error("{forge} has no project {project} (404), or the token cannot see it")]
    NotFound { forge: String, project: String },
    #[error("{forge} rate-limits kubescribe for {}s more", retry_after.as_secs())]
    RateLimited {
        forge: String,
        retry_after: Duration,
    },
    #[error("{forge} is unavailable: {detail}")]
    Unavailable { forge: String, detail: String },
    #[error("{forge} refused the request ({status}): {detail}")]
    Refused {
        forge: String,
        status: u16,
        detail: String,
    },
    #[error("cannot read the forge token: {detail}")]
    Credentials { detail: String },
    #[error("{forge} answered something kubescribe cannot read: {detail}")]
    Invalid { forge: String, detail: String },
}

impl ApiError {
    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Auth { .. } => "auth",
            ApiError::NotFound { .. } => "not_found",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Refused { .. } => "refused",
            ApiError::Credentials { .. } => "credentials",
            ApiError::Invalid { .. } => "invalid",
        }
    }

    pub fn advice(&self) -> &'static str {
        match self {
            ApiError::Auth { .. } => "check the review's tokenFile: the token must be valid and allowed to open pull requests (GitHub: pull requests read and write; Gitea: write:repository; GitLab: api)",
            ApiError::NotFound { .. } => "check the review's `project` and `api`, and that the token's user or app can see the repository",
            ApiError::RateLimited { .. } => "wait and retry the write; kubescribe makes no API call until the forge's Retry-After has passed",
            ApiError::Unavailable { .. } => "check that the forge is up and reachable from kubescribe, then retry the write",
            ApiError::Refused { .. } => "see the forge's reason above; retry the write once it is fixed",
            ApiError::Credentials { .. } => "check that the token Secret is mounted where the review's tokenFile says",
            ApiError::Invalid { .. } => "check that the review's `api` is the forge's API root (GitHub: https://api.github.com; Gitea: .../api/v1; GitLab: .../api/v4)",
        }
    }
}

/// A pull request (or merge request) as far as a review cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// GitHub's and Gitea's `number`, GitLab's `iid`.
    pub number: u64,
    pub url: String,
    pub state: State,
    /// The commit the forge has as the branch's head, when it says.
    pub head: Option<gix::hash::ObjectId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Open; `conflicting` when the forge says it cannot merge cleanly.
    Open {
        conflicting: bool,
    },
    Merged,
    /// Closed without merging.
    Closed,
}

/// What a conditional read found.
#[derive(Debug)]
pub enum Read {
    Changed(PullRequest, Option<String>),
    /// `304 Not Modified`: as the last read said.
    Unchanged,
    /// Deleted from the forge (a 404 while the project is visible).
    Gone,
}

/// One forge project's API.
pub struct ForgeApi {
    forge: Forge,
    api: String,
    project: String,
    token_file: std::path::PathBuf,
    timeout: Duration,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// No call before this instant (a rate limit's `Retry-After`).
    resting: Arc<Mutex<Option<Instant>>>,
}

const USER_AGENT: &str = concat!("kubescribe/", env!("CARGO_PKG_VERSION"));
/// The longest answer read.
const MAX_ANSWER: usize = 8 << 20;
/// A rate limit without `Retry-After` (GitHub's secondary limits say "wait a
/// minute").
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How many pages of 50 of a Gitea project's pull requests are searched for a
/// branch's, where Gitea cannot look one up by branch.
const GITEA_PAGES: usize = 20;

impl ForgeApi {
    pub fn new(config: &ReviewConfig) -> Result<Self, ApiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &config.ca_file {
            let credentials = |e: &dyn std::fmt::Display| ApiError::Credentials {
                detail: format!("caFile {}: {e}", path.display()),
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| credentials(&e))? {
                roots
                    .add(cert.map_err(|e| credentials(&e))?)
                    .map_err(|e| credentials(&e))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Credentials {
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Self {
            forge: config.forge,
            api: config.api.trim_end_matches('/').to_owned(),
            project: config.project.clone(),
            token_file: config.token_file.clone(),
            timeout: config.timeout,
            client,
            resting: Arc::default(),
        })
    }

    fn name(&self) -> String {
        match self.forge {
            Forge::Github => "GitHub",
            Forge::Gitea => "Gitea",
            Forge::Gitlab => "GitLab",
        }
        .to_owned()
    }

    /// The project part of every path.
    fn project_path(&self) -> String {
        match self.forge {
            Forge::Github | Forge::Gitea => format!("/repos/{}", self.project),
            // A path is URL-encoded into one segment; a numeric id is itself.
            Forge::Gitlab => format!("/projects/{}", self.project.replace('/', "%2F")),
        }
    }

    /// The GitHub owner, for `head=owner:branch`.
    fn owner(&self) -> &str {
        self.project.split('/').next().unwrap_or_default()
    }

    /// Opens a pull request from `head` into `base`, or, when the forge says one is
    /// open for that branch already, finds it.
    pub async fn open(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ApiError> {
        let (path, request) = match self.forge {
            Forge::Github | Forge::Gitea => (
                format!("{}/pulls", self.project_path()),
                json!({"title": title, "head": head, "base": base, "body": body}),
            ),
            Forge::Gitlab => (
                format!("{}/merge_requests", self.project_path()),
                json!({"source_branch": head, "target_branch": base, "title": title, "description": body}),
            ),
        };
        match self.call(Method::POST, &path, Some(&request), None).await {
            Ok((_, Some(answer), _)) => self.pull_request(&answer),
            Ok((status, None, _)) => Err(self.invalid(format!("{status} without a body"))),
            // GitHub 422 "A pull request already exists", Gitea 409, GitLab 409
            // "Another open merge request already exists for this source branch".
            Err(ApiError::Refused { status, detail, .. })
                if status == 409 || (status == 422 && detail.contains("already exists")) =>
            {
                tracing::debug!(head, "the forge has a pull request for this branch already");
                // Only an open one is this proposal's.
                self.find(head, base)
                    .await?
                    .filter(|pr| matches!(pr.state, State::Open { .. }))
                    .ok_or_else(|| ApiError::Refused {
                        forge: self.name(),
                        status,
                        detail,
                    })
            }
            Err(e) => Err(e),
        }
    }

    /// The pull request from `head` into `base`, open or not (the newest one).
    pub async fn find(&self, head: &str, base: &str) -> Result<Option<PullRequest>, ApiError> {
        let (path, list) = match self.forge {
            Forge::Github => (
                format!(
                    "{}/pulls?head={}&base={}&state=all",
                    self.project_path(),
                    form_encode(&format!("{}:{head}", self.owner())),
                    form_encode(base)
                ),
                true,
            ),
            // Gitea's router takes the rest of the path as the head branch.
            Forge::Gitea => (
                format!("{}/pulls/{}/{head}", self.project_path(), form_encode(base)),
                false,
            ),
            Forge::Gitlab => (
                format!(
                    "{}/merge_requests?source_branch={}&target_branch={}",
                    self.project_path(),
                    form_encode(head),
                    form_encode(base)
                ),
                true,
            ),
        };
        let answer = match self.call(Method::GET, &path, None, None).await {
            Ok((_, answer, _)) => answer,
            // Gitea answers 404 for "no such pull request", for a project the
            // token cannot see, and (before 1.22) for this whole endpoint: the
            // project's list of pull requests tells them apart.
            Err(ApiError::NotFound { .. }) if !list && self.visible().await? => {
                return self.gitea_search(head, base).await
            }
            Err(e) => return Err(e),
        };
        let Some(answer) = answer else {
            return Ok(None);
        };
        if !list {
            return self.pull_request(&answer).map(Some);
        }
        let items = answer
            .as_array()
            .ok_or_else(|| self.invalid("a list of pull requests is not a JSON array".into()))?;
        // Open ones first, then the newest (the highest number).
        let mut found: Vec<PullRequest> = items
            .iter()
            .map(|item| self.pull_request(item))
            .collect::<Result<_, _>>()?;
        found.sort_by_key(|pr| (matches!(pr.state, State::Open { .. }), pr.number));
        Ok(found.pop())
    }

    /// Reads pull request `number`; with the `etag` of the last read, a `304`
    /// (which costs GitHub no rate limit) is [`Read::Unchanged`].
    pub async fn read(&self, number: u64, etag: Option<&str>) -> Result<Read, ApiError> {
        let path = match self.forge {
            Forge::Github | Forge::Gitea => format!("{}/pulls/{number}", self.project_path()),
            Forge::Gitlab => format!("{}/merge_requests/{number}", self.project_path()),
        };
        let (status, answer, etag) = match self.call(Method::GET, &path, None, etag).await {
            Err(ApiError::NotFound { .. }) if self.visible().await? => return Ok(Read::Gone),
            other => other?,
        };
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Read::Unchanged);
        }
        let answer = answer.ok_or_else(|| self.invalid(format!("{status} without a body")))?;
        Ok(Read::Changed(self.pull_request(&answer)?, etag))
    }

    /// Gitea's pull request from `head` into `base`, read off its list (newest
    /// first, at most [`GITEA_PAGES`] pages).
    async fn gitea_search(&self, head: &str, base: &str) -> Result<Option<PullRequest>, ApiError> {
        const LIMIT: usize = 50;
        let mut found = Vec::new();
        for page in 1..=GITEA_PAGES {
            let path = format!(
                "{}/pulls?state=all&limit={LIMIT}&page={page}",
                self.project_path()
            );
            let (_, answer, _) = self.call(Method::GET, &path, None, None).await?;
            let items = answer.unwrap_or_default();
            let items = items.as_array().ok_or_else(|| {
                self.invalid("a list of pull requests is not a JSON array".into())
            })?;
            for item in items {
                if item["head"]["ref"] == head && item["base"]["ref"] == base {
                    found.push(self.pull_request(item)?);
                }
            }
            if items.len() < LIMIT {
                break;
            }
        }
        found.sort_by_key(|pr| (matches!(pr.state, State::Open { .. }), pr.number));
        Ok(found.pop())
    }

    /// Whether the project is there for this token: a 404 about one of its pull
    /// requests then means that pull request, not the project.
    async fn visible(&self) -> Result<bool, ApiError> {
        let path = match self.forge {
            Forge::Github => format!("{}/pulls?state=all&per_page=1", self.project_path()),
            Forge::Gitea => format!("{}/pulls?state=all&limit=1", self.project_path()),
            Forge::Gitlab => format!("{}/merge_requests?per_page=1", self.project_path()),
        };
        match self.call(Method::GET, &path, None, None).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn pull_request(&self, answer: &Value) -> Result<PullRequest, ApiError> {
        let missing = |field: &str| self.invalid(format!("the pull request has no `{field}`"));
        let (number, url) = match self.forge {
            Forge::Github | Forge::Gitea => ("number", "html_url"),
            Forge::Gitlab => ("iid", "web_url"),
        };
        let number = answer[number].as_u64().ok_or_else(|| missing(number))?;
        let url = answer[url].as_str().ok_or_else(|| missing(url))?.to_owned();
        let state = match self.forge {
            Forge::Github | Forge::Gitea => {
                let merged = answer["merged"].as_bool().unwrap_or(false)
                    || answer["merged_at"].as_str().is_some();
                match (answer["state"].as_str(), merged) {
                    (_, true) => State::Merged,
                    (Some("closed"), false) => State::Closed,
                    (Some("open"), false) => State::Open {
                        // null: not computed yet; only `false` is a conflict.
                        conflicting: answer["mergeable"].as_bool() == Some(false),
                    },
                    (other, _) => return Err(self.invalid(format!("unknown state {other:?}"))),
                }
            }
            // `detailed_merge_status` has many values (and gains more); only a
            // conflict matters here. `has_conflicts` is older and still sent.
            Forge::Gitlab => match answer["state"].as_str() {
                Some("merged") => State::Merged,
                Some("closed") => State::Closed,
                Some("opened" | "locked") => State::Open {
                    conflicting: answer["detailed_merge_status"].as_str() == Some("conflict")
                        || answer["has_conflicts"].as_bool() == Some(true),
                },
                other => return Err(self.invalid(format!("unknown state {other:?}"))),
            },
        };
        let head = match self.forge {
            Forge::Github | Forge::Gitea => answer["head"]["sha"].as_str(),
            Forge::Gitlab => answer["sha"].as_str(),
        }
        .and_then(|hex| gix::hash::ObjectId::from_hex(hex.as_bytes()).ok());
        Ok(PullRequest {
            number,
            url,
            state,
            head,
        })
    }

    fn invalid(&self, detail: String) -> ApiError {
        ApiError::Invalid {
            forge: self.name(),
            detail,
        }
    }

    fn token(&self) -> Result<String, ApiError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|e| ApiError::Credentials {
                detail: format!("{}: {e}", self.token_file.display()),
            })?;
        let token = token.trim();
        if token.is_empty() || token.contains(['\n', '\r']) {
            return Err(ApiError::Credentials {
                detail: format!("{} holds no token on one line", self.token_file.display()),
            });
        }
        Ok(token.to_owned())
    }

    /// One API call: the status, the JSON answer (none for 204 and 304), and the
    /// answer's `ETag`. Any status but 2xx and 304 is an [`ApiError`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<(StatusCode, Option<Value>, Option<String>), ApiError> {
        let forge = self.name();
        if let Some(until) = *self.resting.lock().unwrap_or_else(|e| e.into_inner()) {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(ApiError::RateLimited {
                    forge,
                    retry_after: left.max(Duration::from_secs(1)),
                });
            }
        }
        let token = self.token()?;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.api))
            .header(hyper::header::USER_AGENT, USER_AGENT);
        request = match self.forge {
            Forge::Github => request
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                .header(hyper::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            Forge::Gitea => request
                .header(hyper::header::AUTHORIZATION, format!("token {token}"))
                .header(hyper::header::ACCEPT, "application/json"),
            Forge::Gitlab => request
                .header("PRIVATE-TOKEN", token)
                .header(hyper::header::ACCEPT, "application/json"),
        };
        if let Some(etag) = etag {
            request = request.header(hyper::header::IF_NONE_MATCH, etag);
        }
        let bytes = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| self.invalid(format!("cannot build the request: {e}")))?;
        let unavailable = |detail: String| ApiError::Unavailable {
            forge: self.name(),
            detail,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unavailable(crate::error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ApiError>((parts, body))
        };
        let (parts, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))??;
        let status = parts.status;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            let json = if answer.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_slice(&answer)
                        .map_err(|e| self.invalid(format!("{status}: not JSON: {e}")))?,
                )
            };
            return Ok((status, json, header("etag")));
        }
        let detail = reason(&answer);
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        let exhausted = header("x-ratelimit-remaining").as_deref() == Some("0");
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (retry_after.is_some() || exhausted || detail.contains("rate limit")));
        if limited {
            let reset = header("x-ratelimit-reset")
                .and_then(|v| v.parse::<u64>().ok())
                .and_then(|at| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?
                        .as_secs();
                    Some(Duration::from_secs(at.saturating_sub(now)))
                });
            let wait = retry_after
                .map(Duration::from_secs)
                .or(reset.filter(|_| exhausted))
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .max(Duration::from_secs(1));
            *self.resting.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + wait);
            return Err(ApiError::RateLimited {
                forge,
                retry_after: wait,
            });
        }
        Err(match status.as_u16() {
            401 | 403 => ApiError::Auth {
                forge,
                status: status.as_u16(),
                detail,
            },
            404 => ApiError::NotFound {
                forge,
                project: self.project.clone(),
            },
            500.. => ApiError::Unavailable {
                forge,
                detail: format!("{status}: {detail}"),
            },
            code => ApiError::Refused {
                forge,
                status: code,
                detail,
            },
        })
    }
}

/// The forge's own words from an error answer: GitHub's `message` and `errors`,
/// Gitea's `message`, GitLab's `message` (a string, a list or an object), in one
/// bounded line.
fn reason(answer: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(answer) {
        Ok(json) => {
            let mut parts = Vec::new();
            for key in ["message", "error"] {
                match &json[key] {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Null => {}
                    other => parts.push(other.to_string()),
                }
            }
            for error in json["errors"].as_array().into_iter().flatten() {
                match error {
                    Value::String(s) => parts.push(s.clone()),
                    other => {
                        if let Some(message) = other["message"].as_str() {
                            parts.push(message.to_owned());
                        }
                    }
                }
            }
            parts.join("; ")
        }
        Err(_) => String::from_utf8_lossy(answer).into_owned(),
    };
    let line = text.replace(['\n', '\r'], " ");
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// `application/x-www-form-urlencoded` for a query value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_read_in_each_forge_s_words() {
        assert_eq!(
            reason(br#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"A pull request already exists for o:b."}]}"#),
            "Validation Failed; A pull request already exists for o:b."
        );
        assert_eq!(
            reason(br#"{"message":["Another open merge request already exists for this source branch: !1"]}"#),
            r#"["Another open merge request already exists for this source branch: !1"]"#
        );
        assert_eq!(
            reason(b"<html>\nBad gateway</html>"),
            "<html> Bad gateway</html>"
        );
        assert_eq!(form_encode("o:kubescribe/alice"), "o%3Akubescribe%2Falice");
    }
}
