//! A replay Kubernetes API server on 127.0.0.1: it answers the discovery and list
//! requests recorded from a real kube-apiserver v1.19 (tests/fixtures/api/k8s-1.19,
//! copied from the shared fixtures), byte for byte. Group versions that were not
//! recorded answer an empty resource list, as a group with nothing in it would, and
//! lists that were not recorded answer an empty list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};

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

async fn answer(request: Request<Body>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let json = |status: StatusCode, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    if query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
    {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(answer);
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
