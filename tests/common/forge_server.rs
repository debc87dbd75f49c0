//! A loopback forge for the review tests (issue 16): it serves the operations of
//! one forge's published API description (see [`super::forge`]), checks every
//! request against it (method and path template, query parameters, body, the
//! forge's authentication headers) and keeps pull requests in memory, answering
//! with the forge's own examples (GitHub, GitLab) or a body its schema accepts
//! (Gitea publishes no examples) and checking each answer against the published
//! schema too. A test can make the next calls of an operation fail, merge or
//! close a pull request, or mark it conflicting.
//!
//! Whatever the description does not allow is recorded in `problems`; a test
//! asserts there are none.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::forge::{operations, Operation};

/// One request the forge saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub operation: String,
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub status: u16,
}

/// A pull request as the loopback forge keeps it.
#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    /// `open`, `closed` or `merged`.
    pub state: String,
    pub head_sha: Option<String>,
    pub conflicting: bool,
}

/// A canned answer for the next call of an operation.
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    problems: Vec<String>,
    pulls: Vec<Pull>,
    canned: Vec<(String, VecDeque<Canned>)>,
    token: String,
}

pub struct ForgeServer {
    pub forge: String,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where each forge's API lives under the server's root.
fn base_path(forge: &str) -> &'static str {
    match forge {
        "gitea" => "/api/v1",
        _ => "",
    }
}

pub const PROJECT: &str = "team/apps";

impl ForgeServer {
    /// Serves `forge`'s operations on 127.0.0.1, accepting `token`.
    pub async fn start(forge: &str, token: &str) -> Self {
        let ops: Arc<Vec<Operation>> = Arc::new(operations(forge));
        assert!(!ops.is_empty(), "no operations for {forge}");
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forge_name = forge.to_owned();
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let ops = ops.clone();
                let state = handler_state.clone();
                let forge = forge_name.clone();
                async move { serve(&forge, &ops, &state, addr, method, uri, headers, body) }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            forge: forge.to_owned(),
            addr,
            state,
            task,
        }
    }

    /// The API root kubescribe is configured with.
    pub fn api(&self) -> String {
        let root = format!("http://{}", self.addr);
        match self.forge.as_str() {
            "gitea" => format!("{root}/api/v1"),
            "gitlab" => format!("{root}/api/v4"),
            _ => root,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The calls of operation `id`.
    pub fn calls(&self, id: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.operation == id)
            .collect()
    }

    pub fn problems(&self) -> Vec<String> {
        self.state.lock().unwrap().problems.clone()
    }

    pub fn pulls(&self) -> Vec<Pull> {
        self.state.lock().unwrap().pulls.clone()
    }

    /// Accept only `token` from now on (a rotated credential).
    pub fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = token.to_owned();
    }

    /// Answers the next call of operation `id` with `canned` instead.
    pub fn fail_next(&self, id: &str, canned: Canned) {
        let mut state = self.state.lock().unwrap();
        match state.canned.iter_mut().find(|(op, _)| op == id) {
            Some((_, queue)) => queue.push_back(canned),
            None => state.canned.push((id.to_owned(), VecDeque::from([canned]))),
        }
    }

    /// A pre-receive hook for a git repository served over smart HTTP that logs
    /// every push's options to `log` (`GIT_PUSH_OPTION_COUNT` and each
    /// `GIT_PUSH_OPTION_<n>`, one per line) and tells this forge, which opens the
    /// merge request they ask for, as GitLab does.
    pub fn push_hook(&self, log: &Path) -> String {
        format!(
            r#"#!/bin/bash
log='{log}'
while read -r old new ref; do
  echo "ref $ref" >>"$log"
  echo "count ${{GIT_PUSH_OPTION_COUNT:-0}}" >>"$log"
  body="$ref"
  for ((i = 0; i < ${{GIT_PUSH_OPTION_COUNT:-0}}; i++)); do
    name="GIT_PUSH_OPTION_$i"
    echo "option ${{!name}}" >>"$log"
    body="$body"$'
'"${{!name}}"
  done
  exec 3<>/dev/tcp/127.0.0.1/{port}
  printf 'POST /_test/push HTTP/1.1
Host: forge
Content-Length: %d
Connection: close

%s' "${{#body}}" "$body" >&3
  cat <&3 >/dev/null
  exec 3<&-
done
"#,
            log = log.display(),
            port = self.addr.port(),
        )
    }

    /// Opens a pull request from `head` into `base`, as a person (or an earlier
    /// request) would have.
    pub fn open_pull(&self, head: &str, base: &str) -> u64 {
        let mut state = self.state.lock().unwrap();
        let number = state.pulls.len() as u64 + 1;
        state.pulls.push(Pull {
            number,
            head: head.to_owned(),
            base: base.to_owned(),
            title: "opened before".to_owned(),
            body: String::new(),
            state: "open".to_owned(),
            head_sha: None,
            conflicting: false,
        });
        number
    }

    /// Marks pull request `number` merged with its branch at `head_sha`.
    pub fn merge(&self, number: u64, head_sha: &str) {
        self.edit(number, |pull| {
            pull.state = "merged".to_owned();
            pull.head_sha = Some(head_sha.to_owned());
        });
    }

    pub fn close(&self, number: u64) {
        self.edit(number, |pull| pull.state = "closed".to_owned());
    }

    pub fn conflict(&self, number: u64) {
        self.edit(number, |pull| pull.conflicting = true);
    }

    fn edit(&self, number: u64, edit: impl FnOnce(&mut Pull)) {
        let mut state = self.state.lock().unwrap();
        let pull = state
            .pulls
            .iter_mut()
            .find(|p| p.number == number)
            .expect("no such pull request");
        edit(pull);
    }
}

impl Drop for ForgeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Matches `path` against a template; Gitea's router takes the rest of the path
/// as the last parameter of `/pulls/{base}/{head}` (a branch name with `/`).
fn matches_template(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let want: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    let got: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = template.ends_with("/{head}");
    if got.len() < want.len() || (!rest && got.len() != want.len()) {
        return None;
    }
    let mut params = Vec::new();
    for (i, segment) in want.iter().enumerate() {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let value = if rest && i == want.len() - 1 {
                got[i..].join("/")
            } else {
                got[i].to_owned()
            };
            if value.is_empty() {
                return None;
            }
            params.push((name.to_owned(), value));
        } else if *segment != got[i] {
            return None;
        }
    }
    Some(params)
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(clippy::too_many_arguments)]
fn serve(
    forge: &str,
    ops: &[Operation],
    state: &Mutex<State>,
    addr: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let raw_path = uri.path().to_owned();
    if raw_path == "/_test/push" {
        // Not the API: what GitLab does on its side of a push with
        // `merge_request.create` (see [`ForgeServer::push_hook`]).
        return opened_by_push(&mut state, &body);
    }
    let query: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect();
    let Some(path) = raw_path.strip_prefix(base_path(forge)) else {
        state.problems.push(format!(
            "{method} {raw_path}: not under {}",
            base_path(forge)
        ));
        return (StatusCode::NOT_FOUND, "{}").into_response();
    };
    let found = ops.iter().find_map(|op| {
        (op.method.eq_ignore_ascii_case(method.as_str()))
            .then(|| matches_template(&op.path, path).map(|params| (op, params)))
            .flatten()
    });
    let Some((op, params)) = found else {
        state.problems.push(format!(
            "{method} {raw_path}: no operation of the description"
        ));
        return (StatusCode::NOT_FOUND, "{}").into_response();
    };
    let mut problems = Vec::new();
    for (name, value) in &query {
        if !op.query_params.contains(name) {
            problems.push(format!(
                "{}: query parameter {name:?} is not documented",
                op.id
            ));
        }
        if let Err(e) = op.check_query(name, value) {
            problems.push(format!("{}: {e}", op.id));
        }
    }
    let json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(json) => Some(json),
            Err(e) => {
                problems.push(format!("{}: the body is not JSON: {e}", op.id));
                None
            }
        }
    };
    if let Err(e) = op.check_body(json.as_ref()) {
        problems.push(format!("{}: {e}", op.id));
    }
    if json.is_some()
        && headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json")
    {
        problems.push(format!(
            "{}: a JSON body without `Content-Type: application/json`",
            op.id
        ));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header("user-agent").is_none() {
        problems.push(format!(
            "{}: no User-Agent (GitHub refuses such requests)",
            op.id
        ));
    }
    let token = state.token.clone();
    let authorized = match forge {
        "github" => {
            if header("x-github-api-version").as_deref() != Some("2022-11-28") {
                problems.push(format!("{}: no X-GitHub-Api-Version: 2022-11-28", op.id));
            }
            header("authorization") == Some(format!("Bearer {token}"))
        }
        "gitea" => header("authorization") == Some(format!("token {token}")),
        _ => header("private-token") == Some(token),
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let project_ok = match forge {
        "gitlab" => param("id") == PROJECT.replace('/', "%2F"),
        _ => format!("{}/{}", param("owner"), param("repo")) == PROJECT,
    };
    state.problems.extend(problems);
    let mut seen = Seen {
        operation: op.id.clone(),
        method: method.to_string(),
        path: raw_path.clone(),
        query: query.clone(),
        body: json.clone(),
        status: 0,
    };
    let canned = state
        .canned
        .iter_mut()
        .find(|(id, _)| *id == op.id)
        .and_then(|(_, queue)| queue.pop_front());
    let is_canned = canned.is_some();
    let (status, extra, answer) = if let Some(canned) = canned {
        (canned.status, canned.headers, Some(canned.body))
    } else if !authorized {
        (401, Vec::new(), Some(json!({"message": "Bad credentials"})))
    } else if !project_ok {
        (404, Vec::new(), Some(json!({"message": "Not Found"})))
    } else {
        let (status, answer) = answer(forge, op, &params, &query, json.as_ref(), &mut state, addr);
        (status, Vec::new(), answer)
    };
    // What the description says of this status, checked on what is sent.
    if let Some(answer) = &answer {
        // A canned answer is the test's, wrong on purpose where it is.
        if (200..300).contains(&status) && forge != "gitlab" && !is_canned {
            if let Err(e) = op.check_response(status, answer) {
                state
                    .problems
                    .push(format!("{}: our own {status} answer: {e}", op.id));
            }
        }
    }
    seen.status = status;
    state.seen.push(seen);
    let etag = answer
        .as_ref()
        .filter(|_| status == 200)
        .map(|a| format!("\"{:x}\"", fnv(a.to_string().as_bytes())));
    if let (Some(etag), Some(asked)) = (&etag, header("if-none-match")) {
        if *etag == asked {
            let last = state.seen.last_mut().unwrap();
            last.status = 304;
            return (StatusCode::NOT_MODIFIED, [("etag", etag.clone())]).into_response();
        }
    }
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        answer.map(|a| a.to_string()).unwrap_or_default(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().unwrap());
    if let Some(etag) = etag {
        headers.insert("etag", etag.parse().unwrap());
    }
    for (name, value) in extra {
        headers.insert(name, value.parse().unwrap());
    }
    response
}

/// A pushed ref and its push options, one per line, from the pre-receive hook:
/// opens the merge request the options ask for, as GitLab does.
fn opened_by_push(state: &mut State, body: &[u8]) -> Response {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines();
    let head = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("refs/heads/")
        .to_owned();
    let options: Vec<&str> = lines.collect();
    let value = |key: &str| {
        options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|o| o.strip_prefix('=')))
            .map(str::to_owned)
    };
    if options.contains(&"merge_request.create") {
        let number = state.pulls.len() as u64 + 1;
        state.pulls.push(Pull {
            number,
            head,
            base: value("merge_request.target").unwrap_or_else(|| "main".to_owned()),
            title: value("merge_request.title").unwrap_or_default(),
            body: String::new(),
            state: "open".to_owned(),
            head_sha: None,
            conflicting: false,
        });
    }
    (StatusCode::OK, "").into_response()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    })
}

/// The published example of `status`, if any.
fn example(op: &Operation, status: u16) -> Option<Value> {
    op.responses
        .get(&status)
        .and_then(|(_, e)| e.first().cloned())
}

/// The pull request as `forge` shows it: the forge's own example with this one's
/// fields (GitHub, GitLab), or the fields Gitea's schema describes.
fn show(forge: &str, op: &Operation, status: u16, pull: &Pull, addr: SocketAddr) -> Value {
    let url = match forge {
        "gitlab" => format!("http://{addr}/{PROJECT}/-/merge_requests/{}", pull.number),
        _ => format!("http://{addr}/{PROJECT}/pull/{}", pull.number),
    };
    let merged = pull.state == "merged";
    match forge {
        "github" => {
            let mut shown = example(op, status)
                .or_else(|| {
                    operations("github")
                        .into_iter()
                        .find(|o| o.id == "pulls/get")
                        .and_then(|o| example(&o, 200))
                })
                .unwrap();
            // The list operation's example is a list.
            if let Some(first) = shown.as_array().and_then(|a| a.first()).cloned() {
                shown = first;
            }
            shown["number"] = json!(pull.number);
            shown["html_url"] = json!(url);
            shown["title"] = json!(pull.title);
            shown["body"] = json!(pull.body);
            shown["state"] = json!(if pull.state == "open" {
                "open"
            } else {
                "closed"
            });
            shown["head"]["ref"] = json!(pull.head);
            shown["head"]["sha"] = json!(pull.head_sha.clone().unwrap_or_default());
            shown["base"]["ref"] = json!(pull.base);
            if shown.get("merged").is_some() {
                shown["merged"] = json!(merged);
                shown["mergeable"] = if pull.conflicting {
                    json!(false)
                } else {
                    json!(true)
                };
            }
            shown["merged_at"] = if merged {
                json!("2026-12-07T12:00:00Z")
            } else {
                Value::Null
            };
            // GitHub's README: these examples' teams lack `type`.
            shown["requested_teams"] = json!([]);
            shown
        }
        "gitea" => json!({
            "number": pull.number,
            "html_url": url,
            "title": pull.title,
            "body": pull.body,
            "state": if pull.state == "open" { "open" } else { "closed" },
            "merged": merged,
            "mergeable": !pull.conflicting,
            "head": {"ref": pull.head, "sha": pull.head_sha.clone().unwrap_or_default()},
            "base": {"ref": pull.base},
        }),
        _ => {
            let mut shown = operations("gitlab")
                .into_iter()
                .find(|o| o.id == "get-single-merge-request")
                .and_then(|o| example(&o, 200))
                .unwrap();
            shown["iid"] = json!(pull.number);
            shown["web_url"] = json!(url);
            shown["title"] = json!(pull.title);
            shown["description"] = json!(pull.body);
            shown["state"] = json!(match pull.state.as_str() {
                "open" => "opened",
                other => other,
            });
            shown["source_branch"] = json!(pull.head);
            shown["target_branch"] = json!(pull.base);
            shown["sha"] = json!(pull.head_sha.clone().unwrap_or_default());
            shown["detailed_merge_status"] = json!(if pull.conflicting {
                "conflict"
            } else {
                "mergeable"
            });
            shown["has_conflicts"] = json!(pull.conflicting);
            shown
        }
    }
}

fn answer(
    forge: &str,
    op: &Operation,
    params: &[(String, String)],
    query: &[(String, String)],
    body: Option<&Value>,
    state: &mut State,
    addr: SocketAddr,
) -> (u16, Option<Value>) {
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| decode(v))
            .unwrap_or_default()
    };
    let q = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    match op.id.as_str() {
        "pulls/create" | "repoCreatePullRequest" | "create-merge-request" => {
            let body = body.cloned().unwrap_or_default();
            let field = |github: &str, gitlab: &str| {
                body[if forge == "gitlab" { gitlab } else { github }]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            let (head, base) = (
                field("head", "source_branch"),
                field("base", "target_branch"),
            );
            if head.is_empty() || base.is_empty() {
                return (422, Some(json!({"message": "head and base are required"})));
            }
            if state
                .pulls
                .iter()
                .any(|p| p.head == head && p.state == "open")
            {
                return match forge {
                    "github" => (
                        422,
                        Some(
                            json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for {}:{head}.", PROJECT.split('/').next().unwrap())}], "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "422"}),
                        ),
                    ),
                    "gitea" => (
                        409,
                        Some(json!({"message": "pull request already exists for these targets"})),
                    ),
                    _ => (
                        409,
                        Some(
                            json!({"message": ["Another open merge request already exists for this source branch: !1"]}),
                        ),
                    ),
                };
            }
            let pull = Pull {
                number: state.pulls.len() as u64 + 1,
                head,
                base,
                title: field("title", "title"),
                body: field("body", "description"),
                state: "open".to_owned(),
                head_sha: None,
                conflicting: false,
            };
            state.pulls.push(pull.clone());
            (201, Some(show(forge, op, 201, &pull, addr)))
        }
        "pulls/get" | "repoGetPullRequest" | "get-single-merge-request" => {
            let number: u64 = param(match forge {
                "gitlab" => "merge_request_iid",
                "gitea" => "index",
                _ => "pull_number",
            })
            .parse()
            .unwrap_or(0);
            match state.pulls.iter().find(|p| p.number == number) {
                Some(pull) => (200, Some(show(forge, op, 200, pull, addr))),
                None => (404, Some(json!({"message": "Not Found"}))),
            }
        }
        "repoGetPullRequestByBaseHead" => {
            let (base, head) = (param("base"), param("head"));
            match state
                .pulls
                .iter()
                .rev()
                .find(|p| p.base == base && p.head == head)
            {
                Some(pull) => (200, Some(show(forge, op, 200, pull, addr))),
                None => (404, Some(json!({"message": "Not Found"}))),
            }
        }
        "pulls/list" | "repoListPullRequests" | "list-project-merge-requests" => {
            let (head, base) = match forge {
                "github" => (
                    q("head").map(|h| h.split_once(':').map_or(h.clone(), |(_, b)| b.to_owned())),
                    q("base"),
                ),
                _ => (q("source_branch"), q("target_branch")),
            };
            let page: usize = q("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let limit = q("limit")
                .or_else(|| q("per_page"))
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            // GitHub and Gitea list open ones by default, GitLab all.
            let wanted = q("state")
                .unwrap_or_else(|| if forge == "gitlab" { "all" } else { "open" }.to_owned());
            let list: Vec<Value> = state
                .pulls
                .iter()
                .filter(|p| head.as_ref().is_none_or(|h| *h == p.head))
                .filter(|p| base.as_ref().is_none_or(|b| *b == p.base))
                .filter(|p| match (forge, wanted.as_str()) {
                    (_, "all") => true,
                    ("github" | "gitea", "closed") => p.state != "open",
                    ("github" | "gitea", _) => p.state == "open",
                    (_, "opened") => p.state == "open",
                    (_, other) => p.state == other,
                })
                .map(|p| show(forge, op, 200, p, addr))
                .skip(page.saturating_sub(1) * limit.min(1 << 20))
                .take(limit)
                .collect();
            (200, Some(Value::Array(list)))
        }
        other => (
            501,
            Some(json!({"message": format!("{other} is not served by the loopback forge")})),
        ),
    }
}
