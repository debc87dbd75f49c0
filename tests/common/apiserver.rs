//! A replay Kubernetes API server on 127.0.0.1: it answers the discovery and list
//! requests recorded from a real kube-apiserver v1.19 (tests/fixtures/api/k8s-1.19,
//! copied from the shared fixtures), byte for byte. Group versions that were not
//! recorded answer an empty resource list, as a group with nothing in it would, and
//! lists that were not recorded answer an empty list.
//!
//! [`ApiServer::scenario`] adds scenarios built from the recordings: lists the test
//! sets (a list answers the last one set), watch events the test feeds while the
//! watch is open, objects to read back, and API groups added while running (a CRD).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};

/// What a scenario serves on top of the recordings.
#[derive(Default)]
pub struct Scenario {
    /// List bodies by path: a list answers the last one set.
    lists: HashMap<String, String>,
    /// Watch events (one JSON line each) by path, sent to whichever watch is open.
    events: HashMap<String, VecDeque<String>>,
    /// Objects for GET by path; `None` answers 404.
    objects: HashMap<String, Option<String>>,
    /// Extra group versions: (group, version, APIResourceList JSON).
    groups: Vec<(String, String, String)>,
}

/// The test's side of a scenario.
#[derive(Clone, Default)]
pub struct ScenarioHandle(Arc<Mutex<Scenario>>);

impl ScenarioHandle {
    fn with<T>(&self, f: impl FnOnce(&mut Scenario) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// What lists of `path` answer from now on: `items` at `resource_version`.
    pub fn list(&self, path: &str, resource_version: &str, items: &[serde_json::Value]) {
        let body = serde_json::json!({
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": resource_version},
            "items": items,
        })
        .to_string();
        self.with(|s| s.lists.insert(path.to_owned(), body));
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`, `ERROR`) on `path`.
    pub fn event(&self, path: &str, kind: &str, object: &serde_json::Value) {
        let line = serde_json::json!({"type": kind, "object": object}).to_string();
        self.with(|s| s.events.entry(path.to_owned()).or_default().push_back(line));
    }

    /// Whether every event sent on `path` has been taken by a watch.
    pub fn events_delivered(&self, path: &str) -> bool {
        self.with(|s| s.events.get(path).is_none_or(VecDeque::is_empty))
    }

    /// What a GET of `path` answers: the object, or 404 for `None`.
    pub fn object(&self, path: &str, object: Option<&serde_json::Value>) {
        let body = object.map(ToString::to_string);
        self.with(|s| s.objects.insert(path.to_owned(), body));
    }

    /// Serves a new group version from now on (as a CRD's would appear).
    pub fn group(&self, group: &str, version: &str, resources: serde_json::Value) {
        let list = serde_json::json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{group}/{version}"),
            "resources": resources,
        })
        .to_string();
        self.with(|s| s.groups.push((group.to_owned(), version.to_owned(), list)));
    }
}

/// A watch body that sends `path`'s events as they are fed, and ends after a second
/// without any (as a watch's timeout would).
fn watch_body(scenario: ScenarioHandle, path: String) -> Body {
    let stream = futures::stream::unfold(
        (scenario, path, std::time::Instant::now(), false),
        |(scenario, path, idle_since, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let next = scenario.with(|s| s.events.get_mut(&path).and_then(VecDeque::pop_front));
                if let Some(line) = next {
                    // The stream ends after an error, as the apiserver's does.
                    let ended = line.contains("\"type\":\"ERROR\"");
                    let chunk = bytes::Bytes::from(format!("{line}\n"));
                    return Some((
                        Ok::<_, std::convert::Infallible>(chunk),
                        (scenario, path, std::time::Instant::now(), ended),
                    ));
                }
                if idle_since.elapsed() > std::time::Duration::from_secs(1) {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        },
    );
    Body::from_stream(stream)
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn is_watch(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
}

/// A recorded response body, parsed (to build scenarios from).
pub fn recorded_json(file: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(file)).unwrap()).unwrap()
}

fn scenario_answer(scenario: &ScenarioHandle, path: &str, query: &str) -> Option<Response<Body>> {
    if is_watch(query) {
        let watched = scenario.with(|s| s.events.contains_key(path) || s.lists.contains_key(path));
        return watched.then(|| {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(watch_body(scenario.clone(), path.to_owned()))
                .unwrap()
        });
    }
    scenario.with(|s| {
        if path == "/apis" && !s.groups.is_empty() {
            let mut apis = recorded_json("disc_apis.json");
            for (group, version, _) in &s.groups {
                let gv = serde_json::json!({"groupVersion": format!("{group}/{version}"), "version": version});
                apis["groups"].as_array_mut().unwrap().push(serde_json::json!({
                    "name": group,
                    "versions": [gv],
                    "preferredVersion": gv,
                }));
            }
            return Some(json(StatusCode::OK, apis.to_string()));
        }
        if let Some((_, _, list)) = s
            .groups
            .iter()
            .find(|(g, v, _)| path == format!("/apis/{g}/{v}"))
        {
            return Some(json(StatusCode::OK, list.clone()));
        }
        if let Some(body) = s.lists.get(path) {
            return Some(json(StatusCode::OK, body.clone()));
        }
        s.objects.get(path).map(|body| match body {
            Some(body) => json(StatusCode::OK, body.clone()),
            // As kube-apiserver says it: the details name the missing object.
            None => {
                let mut parts = path.rsplit('/');
                let (name, kind) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
                        "details": {"name": name, "kind": kind}, "code": 404,
                    })
                    .to_string(),
                )
            }
        })
    })
}

pub struct ApiServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api/k8s-1.19")
}

/// The recorded file for a request path and query, if any.
fn recorded(path: &str, query: &str) -> Option<&'static str> {
    let has = |key: &str| query.split('&').any(|p| p.starts_with(key));
    Some(match path {
        "/version" => "disc_version.json",
        "/api" => "disc_api.json",
        "/api/v1" => "disc_api_v1.json",
        "/apis" => "disc_apis.json",
        "/apis/apps/v1" => "disc_apis_apps_v1.json",
        "/apis/rbac.authorization.k8s.io/v1" => "disc_apis_rbac.authorization.k8s.io_v1.json",
        "/apis/example.com/v1" => "disc_apis_example.com_v1.json",
        "/api/v1/configmaps" => "list_configmaps_all.json",
        "/api/v1/namespaces/team-a/configmaps" if has("continue=") => {
            "list_configmaps_team-a_page2.json"
        }
        "/api/v1/namespaces/team-a/configmaps" => "list_configmaps_team-a_page1.json",
        "/apis/apps/v1/deployments" => "list_deployments_all.json",
        "/apis/example.com/v1/widgets" => "list_widgets_all.json",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles" if !has("continue=") => {
            "list_clusterroles_page1.json"
        }
        _ => return None,
    })
}

async fn answer(State(scenario): State<ScenarioHandle>, request: Request<Body>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    if let Some(response) = scenario_answer(&scenario, &path, &query) {
        return response;
    }
    if is_watch(&query) {
        if !path.ends_with("/configmaps") {
            // Nothing was recorded for other watches: an idle watch that the
            // server ends after a second, as a short timeout would.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            return json(StatusCode::OK, Vec::new());
        }
        // The recorded watch of team-a's ConfigMaps (served for the cluster-wide
        // watch too), or the recorded 410 for a resourceVersion that old.
        let file = if query.split('&').any(|p| p == "resourceVersion=1") {
            "watch_too_old.txt"
        } else {
            "watch_configmaps_team-a.txt"
        };
        let raw = std::fs::read_to_string(fixtures().join(file)).unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .or_else(|| raw.split_once("\n\n"))
            .map_or("", |(_, body)| body)
            .to_owned();
        return json(StatusCode::OK, body.into_bytes());
    }
    if let Some(file) = recorded(&path, &query) {
        return json(
            StatusCode::OK,
            std::fs::read(fixtures().join(file)).unwrap(),
        );
    }
    if let Some(group_version) = path
        .strip_prefix("/apis/")
        .filter(|gv| gv.matches('/').count() == 1)
    {
        let empty = format!(
            r#"{{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"{group_version}","resources":[]}}"#
        );
        return json(StatusCode::OK, empty.into_bytes());
    }
    // Scenario built from the recordings: lists that were not recorded (and the rest
    // of the cluster roles after the recorded first page) are empty, at the
    // recordings' resourceVersion.
    if !query.contains("watch=") {
        return json(
            StatusCode::OK,
            br#"{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"367"},"items":[]}"#
                .to_vec(),
        );
    }
    json(
        StatusCode::NOT_FOUND,
        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
            .to_vec(),
    )
}

impl ApiServer {
    pub async fn start() -> Self {
        Self::scenario(ScenarioHandle::default()).await
    }

    /// The recordings, with `scenario` served first.
    pub async fn scenario(scenario: ScenarioHandle) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(answer).with_state(scenario);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, task }
    }

    /// A kubeconfig that points at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: replay\n  cluster:\n    server: http://{}\ncontexts:\n- name: replay\n  context:\n    cluster: replay\n    user: replay\ncurrent-context: replay\nusers:\n- name: replay\n  user: {{}}\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
