//! The reconciler's client and discovery against a replay of a real kube-apiserver
//! (no cluster on these machines): see tests/common/apiserver.rs.

mod common;

use kubescribe::config::Config;
use kubescribe::policy::Policy;
use kubescribe::reconcile;

/// A replay API server, a temp dir holding its kubeconfig, and a client for it.
async fn replay_client() -> (
    common::apiserver::ApiServer,
    tempfile::TempDir,
    kube::Client,
) {
    let api = common::apiserver::ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reconcile::client(Some(&api.kubeconfig(dir.path())))
        .await
        .unwrap();
    (api, dir, client)
}

async fn discovered(config: &str) -> Vec<String> {
    let (_api, _dir, client) = replay_client().await;
    let policy = Policy::new(&Config::from_yaml(config).unwrap());
    reconcile::recorded_resources(&client, &policy)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let scope = if r.namespaced { "ns" } else { "cluster" };
            format!(
                "{}/{}/{} {} {scope}",
                r.group, r.version, r.resource, r.kind
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_resolves_the_default_rules_to_every_recorded_resource_and_crd() {
    let found = discovered("").await;
    for expected in [
        "/v1/configmaps ConfigMap ns",
        "/v1/namespaces Namespace cluster",
        "apps/v1/deployments Deployment ns",
        "rbac.authorization.k8s.io/v1/clusterroles ClusterRole cluster",
        "example.com/v1/widgets Widget ns",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} in {found:#?}"
        );
    }
    // Noise, Secrets under `omit`, subresources and what cannot be watched are not.
    for absent in [
        "/v1/events ",
        "/v1/endpoints ",
        "/v1/secrets ",
        "deployments/scale",
        "/v1/bindings ",
    ] {
        assert!(
            !found.iter().any(|f| f.contains(absent)),
            "{absent} in {found:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_the_rules_groups_and_resources() {
    let found = discovered(
        "rules:\n- name: apps\n  groups: [apps]\n  resources: [deployments]\n- name: widgets\n  groups: [example.com]\n",
    )
    .await;
    assert_eq!(
        found,
        [
            "apps/v1/deployments Deployment ns",
            "example.com/v1/widgets Widget ns"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_read_a_page_at_a_time_with_continue_tokens() {
    let (_api, _dir, client) = replay_client().await;
    let configmaps = configmaps(&client).await;
    let mut pages = Vec::new();
    let listed = reconcile::list_pages(&client, &configmaps, Some("team-a"), 2, |page| {
        pages.push(
            page.iter()
                .map(|o| {
                    assert_eq!(o["kind"], "ConfigMap", "items carry their kind");
                    o["metadata"]["name"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>(),
        );
    })
    .await
    .unwrap();
    assert_eq!(listed.pages, 2);
    assert_eq!(listed.objects, 3);
    assert_eq!(pages[0], ["c1", "c2"]);
    assert_eq!(pages[1].len(), 1);
    assert!(listed.resource_version.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_into_an_empty_repository_writes_every_recorded_object_once() {
    let (_api, dir, client) = replay_client().await;
    let (reconciler, repo, writer) = reconciler(client, dir.path(), "");

    let report = reconciler.snapshot().await.unwrap();
    assert!(report.resources >= 5, "{report:?}");
    assert!(report.recorded >= 5, "{report:?}");
    assert_eq!(report.pruned, 0);
    let files = common::git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    for expected in [
        "team-a/core/configmaps/c1.yaml",
        "team-a/apps/deployments/web.yaml",
        "_cluster/rbac.authorization.k8s.io/clusterroles/admin.yaml",
    ] {
        assert!(
            files.lines().any(|f| f == expected),
            "{expected} in\n{files}"
        );
    }
    assert!(
        files
            .lines()
            .any(|f| f.starts_with("team-a/example.com/widgets/")),
        "{files}"
    );
    let commits = common::git(&repo, &["log", "--format=%an|%s", "main"]);
    assert!(
        commits
            .lines()
            .all(|c| c.starts_with("kubescribe|reconcile: snapshot of ")),
        "{commits}"
    );
    assert_eq!(commits.lines().count(), report.commits);
    // The files are what admission would write: sanitised, no status or managedFields.
    let c1 = common::git(&repo, &["show", "main:team-a/core/configmaps/c1.yaml"]);
    assert!(
        !c1.contains("managedFields") && !c1.contains("resourceVersion"),
        "{c1}"
    );

    // A second snapshot of the same cluster changes nothing.
    let again = reconciler.snapshot().await.unwrap();
    assert_eq!(again.commits, 0, "{again:?}");
    drop(reconciler);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
    common::git(&repo, &["fsck", "--strict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_is_ready_only_after_its_initial_snapshot() {
    let api = common::apiserver::ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let server = common::TestServer::start(&format!(
        "reconcile:\n  enabled: true\n  kubeconfig: {}\n  pageSize: 2\n",
        kubeconfig.display()
    ))
    .await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, _) = server
            .connect()
            .await
            .send(
                axum::http::Method::GET,
                "/readyz",
                None,
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "not ready yet is 503");
        assert!(std::time::Instant::now() < until, "never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Ready means the snapshot's commits are in the branch.
    let files = server.git(&["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("team-a/apps/deployments/web.yaml"),
        "{files}"
    );
    server.server.shutdown().await.unwrap();
}

/// A reconciler over a store on a fresh repository under `dir`, with `config` (YAML);
/// also the repository's path and its writer.
fn reconciler(
    client: kube::Client,
    dir: &std::path::Path,
    config: &str,
) -> (
    reconcile::Reconciler,
    std::path::PathBuf,
    kubescribe::store::WriterThread,
) {
    let config = Config {
        data_dir: dir.join("data"),
        ..Config::from_yaml(config).unwrap()
    };
    let target = &config.targets()[0];
    let layout = kubescribe::manifest::Layout::new(
        &target.repository.root,
        &target.repository.path_template,
    )
    .unwrap();
    let metrics = std::sync::Arc::new(kubescribe::metrics::Metrics::new());
    let (handle, writer) = kubescribe::store::StoreHandle::open(
        kubescribe::store::StoreSettings::from_config(&config, target),
        metrics.clone(),
    )
    .unwrap();
    let reconciler = reconcile::Reconciler::new(
        client,
        Policy::new(&config),
        vec![(layout, handle)],
        metrics,
        2,
    );
    (reconciler, target.path.clone(), writer)
}

/// The recorded resource for core ConfigMaps.
async fn configmaps(client: &kube::Client) -> reconcile::Recorded {
    reconcile::recorded_resources(client, &Policy::new(&Config::default()))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.group.is_empty() && r.resource == "configmaps")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_admission_never_saw_are_written_from_the_watch_and_410_asks_for_a_relist() {
    let (_api, dir, client) = replay_client().await;
    let configmaps = configmaps(&client).await;
    let (reconciler, repo, writer) = reconciler(client, dir.path(), "");
    let mut known = vec![std::collections::HashSet::new()];

    // The recorded watch: `watched` created (a=1), patched (a=2), labelled, deleted,
    // then two bookmarks. None of it went through admission here.
    let followed = reconciler
        .follow(&configmaps, "358", 12, &mut known)
        .await
        .unwrap();
    assert_eq!(followed.written, 4, "{followed:?}");
    assert_eq!(followed.bookmarks, 2, "{followed:?}");
    assert_ne!(followed.resource_version, "358");
    assert!(known[0].is_empty(), "created, then deleted: {known:?}");
    let log = common::git(&repo, &["log", "--reverse", "--format=%an|%s", "main"]);
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(
        subjects,
        [
            "kubescribe|reconcile: create v1 ConfigMap team-a/watched",
            "kubescribe|reconcile: update v1 ConfigMap team-a/watched",
            "kubescribe|reconcile: update v1 ConfigMap team-a/watched",
            "kubescribe|reconcile: delete v1 ConfigMap team-a/watched",
        ]
    );
    let second = common::git(
        &repo,
        &["show", "main~2:team-a/core/configmaps/watched.yaml"],
    );
    assert!(
        second.contains("a: '2'") || second.contains("a: \"2\""),
        "{second}"
    );
    // Deleted behind admission's back: the file is gone.
    assert!(common::git(&repo, &["ls-tree", "-r", "--name-only", "main"]).is_empty());

    // Too old a resourceVersion: 410 Gone, which means relist.
    let expired = reconciler
        .follow(&configmaps, "1", 12, &mut known)
        .await
        .unwrap_err();
    assert!(
        matches!(expired, reconcile::ReconcileError::Expired { .. }),
        "{expired}"
    );

    drop(reconciler);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
    common::git(&repo, &["fsck", "--strict"]);
}
