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
    ] {
        assert!(
            files.lines().any(|f| f == expected),
            "{expected} in\n{files}"
        );
    }
    // The recorded ClusterRoles are the API server's bootstrap policy
    // (`kubernetes.io/bootstrapping: rbac-defaults`): the control plane's, not a
    // person's, so never in git.
    assert!(
        !files.contains("clusterroles/"),
        "the bootstrap policy is not recorded:\n{files}"
    );
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
    stop(reconciler, writer).await;
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
    until_ready(&server).await;
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
    let (reconciler, repo, writer, _) =
        reconciler_with(client, dir, config, Default::default(), |_| {});
    (reconciler, repo, writer)
}

/// [`reconciler`] with fault points and the store's settings as `tweak` leaves
/// them, and its metrics.
fn reconciler_with(
    client: kube::Client,
    dir: &std::path::Path,
    config: &str,
    faults: kubescribe::fault::Faults,
    tweak: impl FnOnce(&mut kubescribe::store::StoreSettings),
) -> (
    reconcile::Reconciler,
    std::path::PathBuf,
    kubescribe::store::WriterThread,
    std::sync::Arc<kubescribe::metrics::Metrics>,
) {
    let config = Config {
        data_dir: dir.join("data"),
        faults,
        ..Config::from_yaml(config).unwrap()
    };
    let target = &config.targets()[0];
    let layout = kubescribe::manifest::Layout::new(
        &target.repository.root,
        &target.repository.path_template,
    )
    .unwrap();
    let metrics = std::sync::Arc::new(kubescribe::metrics::Metrics::new());
    let mut settings = kubescribe::store::StoreSettings::from_config(&config, target);
    tweak(&mut settings);
    let (handle, writer) = kubescribe::store::StoreHandle::open(settings, metrics.clone()).unwrap();
    let reconciler = reconcile::Reconciler::new(
        client,
        Policy::new(&config),
        vec![(layout, handle)],
        metrics.clone(),
        2,
    );
    (reconciler, target.path.clone(), writer, metrics)
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

    stop(reconciler, writer).await;
    common::git(&repo, &["fsck", "--strict"]);
}

/// Waits for `/readyz` to answer 200 (the initial snapshot is done); 503 before.
async fn until_ready(server: &common::TestServer) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, _) = server.get("/readyz").await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 503, "not ready yet is 503");
        assert!(std::time::Instant::now() < until, "never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until the server's metric `sample` reaches `at_least` (the reconciler works
/// in the background: there is no event to await from outside).
async fn until_metric(server: &common::TestServer, sample: &str, at_least: f64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while common::sample_of(server, sample).await.0.unwrap_or(0.0) < at_least {
        assert!(
            std::time::Instant::now() < until,
            "{sample} never reached {at_least}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

use common::apiserver::{ApiServer, ScenarioHandle};

const CONFIGMAPS: &str = "/api/v1/configmaps";
const APP_CONFIG: &str = "/api/v1/namespaces/team-a/configmaps/app-config";

/// The object of an admission fixture, as the API would serve it at `rv`.
fn admitted_object(prefix: &str, rv: &str) -> serde_json::Value {
    let mut object = common::fixture(prefix).review["request"]["object"].clone();
    object["metadata"]["resourceVersion"] = rv.into();
    object
}

/// Sends a watch event of ConfigMap `name` (the recorded c1, renamed) with
/// `data: {count}`, at `rv`.
fn send(scenario: &ScenarioHandle, kind: &str, name: &str, count: &str, rv: u64) {
    let data = serde_json::json!({ "count": count });
    scenario.event(
        CONFIGMAPS,
        kind,
        &configmap("c1", name, data, &rv.to_string()),
    );
}

/// A recorded ConfigMap (c1 or c2 of team-a), renamed, with `data` and at `rv`.
fn configmap(recorded: &str, name: &str, data: serde_json::Value, rv: &str) -> serde_json::Value {
    let list = common::apiserver::recorded_json("list_configmaps_all.json");
    let mut object = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["metadata"]["name"] == recorded)
        .unwrap()
        .clone();
    object["apiVersion"] = "v1".into();
    object["kind"] = "ConfigMap".into();
    object["metadata"]["name"] = name.into();
    object["metadata"]["resourceVersion"] = rv.into();
    object["metadata"]["uid"] = format!("uid-{name}").into();
    object["data"] = data;
    object
}

/// A server recording ConfigMaps (plus `rules` extras) with the reconciler on
/// against `api`, once ready.
async fn reconciling_server(api: &ApiServer, rule: &str, reconcile: &str) -> common::TestServer {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let server = common::TestServer::start_in(
        dir,
        &format!(
            "rules:\n- name: configmaps\n  groups: [\"\"]\n  resources: [configmaps]\n  wait: commit\n{rule}reconcile:\n  enabled: true\n  kubeconfig: {}\n  pageSize: 2\n{reconcile}",
            kubeconfig.display()
        ),
    )
    .await;
    until_ready(&server).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_change_the_cluster_never_persisted_is_reverted_to_the_cluster_object() {
    let scenario = ScenarioHandle::default();
    scenario.list(CONFIGMAPS, "500", &[admitted_object("009", "500")]);
    // Nothing to read back yet: a change the watch does not confirm would be a phantom.
    scenario.object(APP_CONFIG, None);
    let api = ApiServer::scenario(scenario.clone()).await;
    let server = reconciling_server(&api, "", "  confirmWindow: 2s\n").await;
    let file = "main:team-a/core/configmaps/app-config.yaml";
    assert!(server.git(&["show", file]).contains("LOG_LEVEL: info"));

    // alice labels it; the watch shows the label: confirmed, no reconcile commit.
    server.send(&common::fixture("017")).await;
    let labelled = admitted_object("017", "501");
    scenario.event(CONFIGMAPS, "MODIFIED", &labelled);
    until_metric(&server, "kubescribe_reconcile_confirmed_total ", 1.0).await;
    assert_eq!(
        common::metric(&server, "kubescribe_reconcile_pending_confirmations ").await,
        0.0
    );

    // alice sets LOG_LEVEL=debug: admitted and recorded, but another webhook denies
    // it, so the cluster keeps the labelled object, which the watch shows again.
    let debug = common::fixture("019");
    let uid = debug.review["request"]["uid"].as_str().unwrap().to_owned();
    server.send(&debug).await;
    assert!(server.git(&["show", file]).contains("LOG_LEVEL: debug"));
    let persisted = admitted_object("017", "502");
    scenario.object(APP_CONFIG, Some(&persisted));
    scenario.event(CONFIGMAPS, "MODIFIED", &persisted);

    until_metric(&server, "kubescribe_reconcile_phantoms_total ", 1.0).await;
    let log = server.git(&["log", "--format=%an|%s", "main"]);
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(
        subjects[..3],
        [
            "kubescribe|reconcile: revert update v1 ConfigMap team-a/app-config, which never landed",
            "alice|update v1 ConfigMap team-a/app-config",
            "alice|update v1 ConfigMap team-a/app-config",
        ],
        "{log}"
    );
    let message = server.git(&["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains(&format!("Reverts-Admission-Uid: {uid}")),
        "{message}"
    );
    let now = server.git(&["show", file]);
    assert!(
        now.contains("LOG_LEVEL: info") && now.contains("tier: backend"),
        "{now}"
    );
    assert_eq!(
        common::metric(&server, "kubescribe_reconcile_phantoms_total ").await,
        1.0,
        "the confirmed label was no phantom"
    );
    server.server.shutdown().await.unwrap();
}

/// Stops the reconciler (dropping the last handle on it), then waits for its writer
/// to finish every commit.
async fn stop<R>(reconciler: R, writer: kubescribe::store::WriterThread) {
    drop(reconciler);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
}

/// A reconciler of an empty scenario's ConfigMaps whose writer is held before each
/// batch is durable until the gate opens.
async fn slow_disk() -> (Following, kubescribe::fault::Gate) {
    let slow_disk = kubescribe::fault::Gate::closed();
    let faults = kubescribe::fault::Faults {
        before_durable: Some(slow_disk.clone()),
        ..Default::default()
    };
    (Following::start(&[], faults, |_| {}).await, slow_disk)
}

/// A reconciler of the ConfigMaps `listed` at resourceVersion 500, its store's
/// settings changed by `tweak`.
struct Following {
    scenario: ScenarioHandle,
    _api: ApiServer,
    _dir: tempfile::TempDir,
    configmaps: reconcile::Recorded,
    reconciler: reconcile::Reconciler,
    repo: std::path::PathBuf,
    writer: kubescribe::store::WriterThread,
    metrics: std::sync::Arc<kubescribe::metrics::Metrics>,
}

impl Following {
    async fn start(
        listed: &[serde_json::Value],
        faults: kubescribe::fault::Faults,
        tweak: impl FnOnce(&mut kubescribe::store::StoreSettings),
    ) -> Self {
        let scenario = ScenarioHandle::default();
        scenario.list(CONFIGMAPS, "500", listed);
        let api = ApiServer::scenario(scenario.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let client = reconcile::client(Some(&api.kubeconfig(dir.path())))
            .await
            .unwrap();
        let configmaps = configmaps(&client).await;
        let (reconciler, repo, writer, metrics) =
            reconciler_with(client, dir.path(), "", faults, tweak);
        Self {
            scenario,
            _api: api,
            _dir: dir,
            configmaps,
            reconciler,
            repo,
            writer,
            metrics,
        }
    }
}

/// Under churn the watch is read while a commit is being made, and what comes
/// meanwhile goes into the next commit together. A file changed again meanwhile
/// starts another commit, so every state the watch showed is some commit's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_come_while_a_commit_is_made_go_into_the_next_one_together() {
    let (
        Following {
            scenario,
            _api,
            _dir,
            configmaps,
            reconciler,
            repo,
            writer,
            metrics,
        },
        slow_disk,
    ) = slow_disk().await;
    // The first commit is held until everything after it has been read.
    send(&scenario, "ADDED", "c0", "0", 501);
    for (i, rv) in (1..=5).zip(502..) {
        let name = format!("c{i}");
        send(&scenario, "ADDED", &name, "1", rv);
    }
    send(&scenario, "MODIFIED", "c1", "2", 507);
    send(&scenario, "ADDED", "c6", "1", 508);

    let reconciler = std::sync::Arc::new(reconciler);
    let following = tokio::spawn({
        let reconciler = reconciler.clone();
        async move {
            let mut known = vec![std::collections::HashSet::new()];
            reconciler.follow(&configmaps, "500", 30, &mut known).await
        }
    });
    slow_disk.arrivals(1).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the 7 changes after the first wait",
        || metrics.reconcile.watch_waiting.get() == 7,
    )
    .await;
    slow_disk.open();
    let followed = following.await.unwrap().unwrap();
    assert_eq!(followed.written, 8, "{followed:?}");
    assert_eq!(followed.resource_version, "508");
    assert_eq!(metrics.reconcile.watch_waiting.get(), 0);
    assert_eq!(metrics.reconcile.watch_commits.get(), 3);
    assert_eq!(metrics.reconcile.watch_changes.get(), 8);

    let log = common::git(
        &repo,
        &["log", "--reverse", "--format=%s", "--name-status", "main"],
    );
    let log: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    let file = |name: &str| format!("team-a/core/configmaps/{name}.yaml");
    assert_eq!(
        log,
        [
            "reconcile: create v1 ConfigMap team-a/c0".to_owned(),
            format!("A\t{}", file("c0")),
            "reconcile: 5 changes of configmaps from the watch".to_owned(),
            format!("A\t{}", file("c1")),
            format!("A\t{}", file("c2")),
            format!("A\t{}", file("c3")),
            format!("A\t{}", file("c4")),
            format!("A\t{}", file("c5")),
            // c1 again: the next commit, so its first state stays in history.
            "reconcile: 2 changes of configmaps from the watch".to_owned(),
            format!("M\t{}", file("c1")),
            format!("A\t{}", file("c6")),
        ]
    );
    let n_of = |rev: &str| {
        let text = common::git(&repo, &["show", &format!("{rev}:{}", file("c1"))]);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("count: "))
            .unwrap_or_else(|| panic!("no count in {text}"));
        line.trim()
            .trim_start_matches("count: ")
            .trim_matches(['\'', '"'])
            .to_owned()
    };
    assert_eq!(n_of("main~"), "1");
    assert_eq!(n_of("main"), "2");
    // Each file of a commit of many says where its state stands, for replays.
    let message = common::git(&repo, &["log", "-1", "--format=%B", "main~"]);
    assert!(
        message.contains("create v1 ConfigMap team-a/c3\n"),
        "{message}"
    );
    assert!(message.contains("Resource-Version: 506\n"), "{message}");
    for (i, rv) in (1..=5).zip(502..) {
        let trailer = format!("Object-Version-Of: {} uid-c{i} ", file(&format!("c{i}")));
        let line = message.lines().find(|l| l.starts_with(&trailer));
        assert!(
            line.is_some_and(|l| l.ends_with(&format!(" state:{rv}"))),
            "{trailer}…state:{rv} in\n{message}"
        );
    }

    stop(reconciler, writer).await;
    common::git(&repo, &["fsck", "--strict"]);
}

/// A change the watch showed that waits for its commit is left out when an admitted
/// change to its file starts waiting for confirmation meanwhile: git never goes back
/// to the older state over what admission recorded since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_watch_change_never_lands_over_a_newer_admitted_one() {
    let (
        Following {
            scenario,
            _api,
            _dir,
            configmaps,
            reconciler,
            repo,
            writer,
            metrics,
        },
        slow_disk,
    ) = slow_disk().await;
    let confirmations = std::sync::Arc::new(reconcile::Confirmations::new(
        std::time::Duration::from_secs(60),
        metrics.clone(),
    ));
    let reconciler = std::sync::Arc::new(reconciler.with_confirmations(confirmations.clone()));
    send(&scenario, "ADDED", "c0", "0", 501);
    send(&scenario, "ADDED", "c1", "1", 502);
    let following = tokio::spawn({
        let reconciler = reconciler.clone();
        async move {
            let mut known = vec![std::collections::HashSet::new()];
            reconciler.follow(&configmaps, "500", 30, &mut known).await
        }
    });
    // c0's commit is held; c1 waits behind it. Then admission records c1 anew.
    slow_disk.arrivals(1).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "c1 waits for its commit",
        || metrics.reconcile.watch_waiting.get() == 1,
    )
    .await;
    let admitted = kubescribe::policy::Write {
        uid: "admitted".into(),
        operation: kube_core::admission::Operation::Update,
        kind: kube_core::GroupVersionKind::gvk("", "v1", "ConfigMap"),
        resource: kube_core::GroupVersionResource::gvr("", "v1", "configmaps"),
        sub_resource: None,
        namespace: Some("team-a".into()),
        name: "c1".into(),
        user: "alice".into(),
        groups: Vec::new(),
        dry_run: false,
        object: Some(configmap(
            "c1",
            "c1",
            serde_json::json!({ "count": "9" }),
            "503",
        )),
        old_object: None,
        from_cluster: false,
    };
    let layout =
        kubescribe::manifest::Layout::new("", "{namespace}/{group}/{resource}/{name}.yaml")
            .unwrap();
    let admitted =
        kubescribe::manifest::plan(&admitted, &layout, kubescribe::config::SecretMode::Omit)
            .unwrap();
    assert_eq!(admitted.path.as_str(), "team-a/core/configmaps/c1.yaml");
    confirmations.expect(0, &admitted, "", "configmaps", false);
    slow_disk.open();
    let followed = following.await.unwrap().unwrap();
    assert_eq!(followed.written, 1, "{followed:?}");
    assert_eq!(followed.held, 1, "{followed:?}");
    let files = common::git(
        &repo,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            "main",
            "team-a/core/configmaps",
        ],
    );
    assert_eq!(files.trim(), "team-a/core/configmaps/c0.yaml");
    stop(reconciler, writer).await;
    common::git(&repo, &["fsck", "--strict"]);
}

/// The writer opens its repository again after enough new packs (8 MiB in a
/// cluster; here after every one): a snapshot and the watch's commits after it
/// lose nothing, and the branch stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_on_whole_when_the_writer_opens_its_repository_again_after_each_pack() {
    let data = |n: &str| serde_json::json!({ "count": n });
    let listed: Vec<serde_json::Value> = (0..6)
        .map(|i| configmap("c1", &format!("c{i}"), data("0"), "500"))
        .collect();
    let Following {
        scenario,
        configmaps,
        reconciler,
        repo,
        writer,
        metrics,
        _api,
        _dir,
    } = Following::start(&listed, Default::default(), |settings| {
        settings.reopen_after_pack_bytes = 1
    })
    .await;
    let report = reconciler.snapshot().await.unwrap();
    assert!(report.commits >= 1, "{report:?}");
    let after_snapshot = metrics.store_reopens.get();
    assert!(after_snapshot >= 1, "reopened after the snapshot's pack");

    for (i, rv) in (0..3).zip(501..) {
        let name = format!("c{i}");
        send(&scenario, "MODIFIED", &name, "1", rv);
    }
    send(&scenario, "DELETED", "c3", "0", 504);
    send(&scenario, "ADDED", "c9", "1", 505);
    let mut known = vec![std::collections::HashSet::new()];
    let followed = reconciler
        .follow(&configmaps, "500", 30, &mut known)
        .await
        .unwrap();
    assert_eq!(followed.written, 5, "{followed:?}");
    let commits = metrics.reconcile.watch_commits.get();
    assert!(
        metrics.store_reopens.get() >= after_snapshot + commits,
        "one reopen per pack: {} after {commits} watch commits",
        metrics.store_reopens.get()
    );

    let files = common::git(
        &repo,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            "main",
            "team-a/core/configmaps",
        ],
    );
    let file = |name: &str| format!("team-a/core/configmaps/{name}.yaml");
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["c0", "c1", "c2", "c4", "c5", "c9"].map(file)
    );
    for (name, count) in [("c0", "1"), ("c2", "1"), ("c4", "0"), ("c9", "1")] {
        let text = common::git(&repo, &["show", &format!("main:{}", file(name))]);
        assert!(
            text.contains(&format!("count: '{count}'"))
                || text.contains(&format!("count: \"{count}\"")),
            "{name}: {text}"
        );
    }
    stop(reconciler, writer).await;
    common::git(&repo, &["fsck", "--strict"]);
}

/// The writer folds its packs together in the background as it goes (here after
/// every pack): nothing is lost, the folded pack stores each changed file as a delta
/// of its version from an earlier commit's pack, and fsck finds the history whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_folded_while_the_writer_commits_lose_nothing_and_keep_files_as_deltas() {
    // Large enough that a one-value change is worth a delta.
    let data = |n: &str| {
        let mut data = serde_json::json!({ "count": n });
        for key in 0..40 {
            data[format!("key-{key}")] = format!("the value of key {key}, which stays").into();
        }
        data
    };
    let listed: Vec<serde_json::Value> = (0..6)
        .map(|n| configmap("c1", &format!("c{n}"), data("0"), "500"))
        .collect();
    let following = Following::start(&listed, Default::default(), |settings| {
        settings.fold_after_packs = 1
    })
    .await;
    let reconciler = following.reconciler;
    reconciler.snapshot().await.unwrap();
    let mut known = vec![std::collections::HashSet::new()];
    let mut version = 500;
    for round in 1..=8 {
        version += 1;
        let name = format!("c{}", round % 6);
        let mut object = configmap("c1", &name, data(&round.to_string()), &version.to_string());
        object["metadata"]["uid"] = format!("uid-{name}").into();
        following.scenario.event(CONFIGMAPS, "MODIFIED", &object);
        let followed = reconciler
            .follow(
                &following.configmaps,
                &(version - 1).to_string(),
                30,
                &mut known,
            )
            .await
            .unwrap();
        assert_eq!(followed.written, 1, "round {round}: {followed:?}");
    }
    stop(reconciler, following.writer).await;
    let repo = following.repo;
    let exposition = following.metrics.encode();
    let folded = exposition
        .lines()
        .find_map(|l| l.strip_prefix("kubescribe_store_folds_total{result=\"folded\"} "))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(folded >= 1.0, "{exposition}");
    assert!(!exposition.contains("result=\"failed\""), "{exposition}");

    let commits = common::git(&repo, &["rev-list", "--count", "main"]);
    let commits: usize = commits.trim().parse().unwrap();
    let pack_dir = repo.join("objects/pack");
    let indexes: Vec<std::path::PathBuf> = std::fs::read_dir(&pack_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    assert!(
        indexes.len() < commits,
        "{} packs for {commits} commits",
        indexes.len()
    );
    let blob_deltas: usize = indexes
        .iter()
        .map(|index| {
            common::git(&repo, &["verify-pack", "-v", index.to_str().unwrap()])
                .lines()
                .filter(|l| l.contains(" blob ") && l.split_whitespace().count() == 7)
                .count()
        })
        .sum();
    assert!(
        blob_deltas > 0,
        "a file changed by one commit per pack is a delta of its earlier version only after a fold"
    );
    for (i, count) in [(0, "6"), (1, "7"), (2, "8"), (3, "3"), (4, "4"), (5, "5")] {
        let text = common::git(
            &repo,
            &["show", &format!("main:team-a/core/configmaps/c{i}.yaml")],
        );
        assert!(
            text.contains(&format!("count: '{count}'"))
                || text.contains(&format!("count: \"{count}\"")),
            "c{i}: {text}"
        );
    }
    common::git(&repo, &["fsck", "--full", "--strict"]);
}

/// A deletion read from the watch but not committed yet when the watch expires is
/// not forgotten: its file goes back among the live ones, so the relist sweeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_waiting_for_its_commit_when_the_watch_expires_is_swept_by_the_relist() {
    let (
        Following {
            scenario,
            _api,
            _dir,
            configmaps,
            reconciler,
            repo,
            writer,
            metrics,
        },
        slow_disk,
    ) = slow_disk().await;
    send(&scenario, "ADDED", "c0", "1", 501);
    send(&scenario, "DELETED", "c9", "1", 502);
    let expired = serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410});
    scenario.event(CONFIGMAPS, "ERROR", &expired);
    let c9 = "team-a/core/configmaps/c9.yaml".to_owned();
    let mut known = vec![std::collections::HashSet::from([c9.clone()])];
    // c0's commit is held; c9's deletion waits behind it when the 410 comes.
    let ended = reconciler.follow(&configmaps, "500", 30, &mut known).await;
    assert!(
        matches!(ended, Err(reconcile::ReconcileError::Expired { .. })),
        "{ended:?}"
    );
    assert!(known[0].contains(&c9), "{known:?}");
    assert!(
        known[0].contains("team-a/core/configmaps/c0.yaml"),
        "{known:?}"
    );
    assert_eq!(metrics.reconcile.watch_waiting.get(), 0);
    slow_disk.open();
    stop(reconciler, writer).await;
    common::git(&repo, &["fsck", "--strict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_in_the_middle_of_a_watch_relists_losing_nothing_and_writing_nothing_twice() {
    let scenario = ScenarioHandle::default();
    let c1 = configmap("c1", "c1", serde_json::json!({"a": "1"}), "500");
    let c2 = configmap("c2", "c2", serde_json::json!({"b": "2"}), "500");
    scenario.list(CONFIGMAPS, "500", &[c1.clone(), c2]);
    let api = ApiServer::scenario(scenario.clone()).await;
    let server = reconciling_server(&api, "", "").await;

    // Created while admission was not looking: the watch brings it.
    let c3 = configmap("c1", "c3", serde_json::json!({"c": "3"}), "501");
    scenario.event(CONFIGMAPS, "ADDED", &c3);
    let c3_path = "team-a/core/configmaps/c3.yaml";
    common::eventually(std::time::Duration::from_secs(20), "c3 is written", || {
        server
            .git(&["ls-tree", "-r", "--name-only", "main"])
            .contains(c3_path)
    })
    .await;

    // Then the watch expires. Meanwhile c1 changed, c4 was created and c2 deleted.
    let c1_changed = configmap("c1", "c1", serde_json::json!({"a": "9"}), "590");
    let c4 = configmap("c2", "c4", serde_json::json!({"d": "4"}), "595");
    scenario.list(CONFIGMAPS, "600", &[c1_changed, c3, c4]);
    let expired: serde_json::Value = serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 501 (590)","reason":"Expired","code":410});
    scenario.event(CONFIGMAPS, "ERROR", &expired);
    until_metric(
        &server,
        "kubescribe_reconcile_watch_restarts_total{reason=\"expired\"} ",
        1.0,
    )
    .await;
    common::eventually(std::time::Duration::from_secs(20), "c2 is removed", || {
        !server
            .git(&["ls-tree", "-r", "--name-only", "main"])
            .contains("c2.yaml")
    })
    .await;

    let files = server.git(&["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [
            "team-a/core/configmaps/c1.yaml",
            "team-a/core/configmaps/c3.yaml",
            "team-a/core/configmaps/c4.yaml",
        ]
    );
    assert!(server
        .git(&["show", "main:team-a/core/configmaps/c1.yaml"])
        .contains("a: '9'"));
    // c3 came once, from the watch; the relist wrote only what changed.
    let c3_commits = server.git(&["log", "--format=%s", "main", "--", c3_path]);
    assert_eq!(c3_commits.lines().count(), 1, "{c3_commits}");
    let log = server.git(&["log", "--reverse", "--format=%s", "--name-status", "main"]);
    let log: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        log,
        [
            "reconcile: snapshot of configmaps (2 objects)",
            "A\tteam-a/core/configmaps/c1.yaml",
            "A\tteam-a/core/configmaps/c2.yaml",
            "reconcile: create v1 ConfigMap team-a/c3",
            "A\tteam-a/core/configmaps/c3.yaml",
            // The relist's one page: c3 is listed, and unchanged.
            "reconcile: snapshot of configmaps (3 objects)",
            "M\tteam-a/core/configmaps/c1.yaml",
            "A\tteam-a/core/configmaps/c4.yaml",
            "reconcile: remove 1 files with no live object",
            "D\tteam-a/core/configmaps/c2.yaml",
        ]
    );
    let repo = server.repo.clone();
    server.server.shutdown().await.unwrap();
    common::git(&repo, &["fsck", "--strict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_added_while_running_is_listed_and_watched() {
    let scenario = ScenarioHandle::default();
    scenario.list(CONFIGMAPS, "500", &[]);
    let api = ApiServer::scenario(scenario.clone()).await;
    let server = reconciling_server(
        &api,
        "- name: gadgets\n  groups: [example.org]\n  resources: [gadgets]\n",
        "  discoveryInterval: 200ms\n",
    )
    .await;
    assert_eq!(
        common::metric(&server, "kubescribe_reconcile_resources ").await,
        1.0
    );

    // A CRD for example.org gadgets is created, with one gadget (built from the
    // recorded Widget).
    let widgets = common::apiserver::recorded_json("list_widgets_all.json");
    let gadget = |name: &str| {
        let mut object = widgets["items"][0].clone();
        object["apiVersion"] = "example.org/v1".into();
        object["kind"] = "Gadget".into();
        object["metadata"]["name"] = name.into();
        object["metadata"]["annotations"] = serde_json::json!({});
        object
    };
    scenario.list("/apis/example.org/v1/gadgets", "700", &[gadget("g1")]);
    scenario.group(
        "example.org",
        "v1",
        serde_json::json!([{
            "name": "gadgets", "singularName": "gadget", "namespaced": true, "kind": "Gadget",
            "verbs": ["delete","deletecollection","get","list","patch","create","update","watch"],
        }]),
    );
    until_metric(&server, "kubescribe_reconcile_resources ", 2.0).await;
    common::eventually(std::time::Duration::from_secs(20), "g1 is written", || {
        server
            .git(&["ls-tree", "-r", "--name-only", "main"])
            .contains("team-a/example.org/gadgets/g1.yaml")
    })
    .await;
    assert_eq!(
        server.git(&["log", "-1", "--format=%an|%s", "main"]).trim(),
        "kubescribe|reconcile: snapshot of gadgets (1 objects)"
    );

    // And it is watched from then on.
    scenario.event("/apis/example.org/v1/gadgets", "ADDED", &gadget("g2"));
    common::eventually(std::time::Duration::from_secs(20), "g2 is written", || {
        server
            .git(&["ls-tree", "-r", "--name-only", "main"])
            .contains("team-a/example.org/gadgets/g2.yaml")
    })
    .await;
    server.server.shutdown().await.unwrap();
}

/// A repository that drifted from the replayed cluster: c1 has old data, `gone` has
/// no live object, and two files are not kubescribe's to remove (a README, and a
/// kind nothing lists).
fn stale_repository(repo: &std::path::Path) {
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=human",
                "-c",
                "user.email=human@example.com",
            ])
            .args(args)
            .current_dir(work.path())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    run(&["init", "-q", "-b", "main", "."]);
    let put = |path: &str, text: &str| {
        let path = work.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let cm = |name: &str, data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: team-a\ndata:\n  {data}\n")
    };
    put("team-a/core/configmaps/c1.yaml", &cm("c1", "a: old"));
    put("team-a/core/configmaps/gone.yaml", &cm("gone", "x: y"));
    put("README.md", "# cluster state\n");
    put(
        "team-a/example.net/things/t.yaml",
        "apiVersion: example.net/v1\nkind: Thing\nmetadata:\n  name: t\n  namespace: team-a\n",
    );
    run(&["add", "."]);
    run(&["commit", "-q", "-m", "hand-written state"]);
    push_to_bare(work.path(), repo);
}

/// A bare repository at `repo` holding the `main` of the work tree at `work`.
fn push_to_bare(work: &std::path::Path, repo: &std::path::Path) {
    std::fs::create_dir_all(repo).unwrap();
    for args in [
        vec!["init", "-q", "--bare", "-b", "main", repo.to_str().unwrap()],
        vec![
            "-C",
            work.to_str().unwrap(),
            "push",
            "-q",
            repo.to_str().unwrap(),
            "main",
        ],
    ] {
        let status = std::process::Command::new("git")
            .args(&args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
}

async fn snapshot_into_stale_repository(
    prune: &str,
) -> (reconcile::SnapshotReport, Vec<String>, String) {
    let (_api, dir, client) = replay_client().await;
    stale_repository(&dir.path().join("data/repo.git"));
    let (reconciler, repo, writer) = reconciler(
        client,
        dir.path(),
        &format!("rules:\n- name: everything\n  prune: {prune}\n"),
    );
    let report = reconciler.snapshot().await.unwrap();
    stop(reconciler, writer).await;
    common::git(&repo, &["fsck", "--strict"]);
    let files = common::git(&repo, &["ls-tree", "-r", "--name-only", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    let c1 = common::git(&repo, &["show", "main:team-a/core/configmaps/c1.yaml"]);
    (report, files, c1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_into_a_stale_repository_fixes_drift_and_prunes_orphans_only_under_always() {
    let (report, files, c1) = snapshot_into_stale_repository("always").await;
    assert_eq!(report.pruned, 1, "{report:?}");
    assert!(c1.contains("a: '1'"), "drift fixed: {c1}");
    assert!(!files.iter().any(|f| f.ends_with("gone.yaml")), "{files:?}");
    for kept in [
        "README.md",
        "team-a/example.net/things/t.yaml",
        "team-a/core/configmaps/c2.yaml",
    ] {
        assert!(files.iter().any(|f| f == kept), "{kept} in {files:?}");
    }

    let (report, files, c1) = snapshot_into_stale_repository("never").await;
    assert_eq!(report.pruned, 0, "{report:?}");
    assert!(c1.contains("a: '1'"), "drift fixed: {c1}");
    assert!(
        files
            .iter()
            .any(|f| f == "team-a/core/configmaps/gone.yaml"),
        "kept under never: {files:?}"
    );
}

#[tokio::test]
async fn a_list_refused_by_rbac_says_which_permission_is_missing() {
    // One call: kube's tower-test mock is enough.
    use axum::http::{Request, Response};
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
    let client = kube::Client::new(mock, "default");
    let apiserver = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("a list request");
        assert_eq!(request.uri().path(), "/apis/example.com/v1/widgets");
        assert!(request
            .uri()
            .query()
            .unwrap_or_default()
            .contains("limit=500"));
        send.send_response(
            Response::builder()
                .status(403)
                .body(kube::client::Body::from(
                    br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"widgets.example.com is forbidden: User \"system:serviceaccount:kubescribe:kubescribe\" cannot list resource \"widgets\"","reason":"Forbidden","code":403}"#.to_vec(),
                ))
                .unwrap(),
        );
    });
    let widgets = reconcile::Recorded {
        group: "example.com".into(),
        version: "v1".into(),
        kind: "Widget".into(),
        resource: "widgets".into(),
        namespaced: true,
    };
    let error = reconcile::list_pages(&client, &widgets, None, 500, |_| {})
        .await
        .unwrap_err();
    apiserver.await.unwrap();
    assert!(
        matches!(error, reconcile::ReconcileError::Forbidden { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("grant get, list and watch"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_then_deny_rules_are_never_written_over_by_the_cluster() {
    // Under `then: deny` git is ahead of the cluster by design (the GitOps tool
    // applies it): the reconciler must leave those files alone.
    let (_api, dir, client) = replay_client().await;
    stale_repository(&dir.path().join("data/repo.git"));
    let (reconciler, repo, writer) = reconciler(
        client,
        dir.path(),
        "repository:\n  remote:\n    url: file:///nonexistent.git\nrules:\n- name: gitops\n  wait: push\n  then: deny\n  prune: always\n",
    );
    let report = reconciler.snapshot().await.unwrap();
    assert_eq!(
        (report.recorded, report.commits, report.pruned),
        (0, 0, 0),
        "{report:?}"
    );
    stop(reconciler, writer).await;
    let c1 = common::git(&repo, &["show", "main:team-a/core/configmaps/c1.yaml"]);
    assert!(c1.contains("a: old"), "{c1}");
    assert_eq!(
        common::git(&repo, &["rev-list", "--count", "main"]).trim(),
        "1"
    );
}

/// A repository an earlier kubescribe filled: the bootstrap ClusterRole `admin` from
/// its snapshot (authored by kubescribe), `edit` from a person's recorded write
/// (authored by alice, committed by kubescribe), `cluster-admin` committed by a
/// person, and a person's ConfigMap from the snapshot.
fn repository_with_control_plane_files(repo: &std::path::Path) {
    let work = tempfile::tempdir().unwrap();
    let run = |author: (&str, &str), committer: (&str, &str), args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .env("GIT_AUTHOR_NAME", author.0)
            .env("GIT_AUTHOR_EMAIL", author.1)
            .env("GIT_COMMITTER_NAME", committer.0)
            .env("GIT_COMMITTER_EMAIL", committer.1)
            .current_dir(work.path())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    let kubescribe = ("kubescribe", "kubescribe@localhost");
    let alice = ("alice", "alice@kubernetes.local");
    let human = ("human", "human@example.com");
    let put = |path: &str, text: &str| {
        let path = work.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let role = |name: &str| {
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\nrules: []\n")
    };
    run(kubescribe, kubescribe, &["init", "-q", "-b", "main", "."]);
    put(
        "_cluster/rbac.authorization.k8s.io/clusterroles/admin.yaml",
        &role("admin"),
    );
    put(
        "team-a/core/configmaps/c1.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: team-a\ndata:\n  a: '1'\n",
    );
    run(kubescribe, kubescribe, &["add", "."]);
    run(
        kubescribe,
        kubescribe,
        &[
            "commit",
            "-q",
            "-m",
            "reconcile: snapshot (an earlier kubescribe)",
        ],
    );
    put(
        "_cluster/rbac.authorization.k8s.io/clusterroles/edit.yaml",
        &role("edit"),
    );
    run(alice, kubescribe, &["add", "."]);
    run(
        alice,
        kubescribe,
        &[
            "commit",
            "-q",
            "-m",
            "update rbac.authorization.k8s.io/v1 ClusterRole edit",
        ],
    );
    put(
        "_cluster/rbac.authorization.k8s.io/clusterroles/cluster-admin.yaml",
        &role("cluster-admin"),
    );
    run(human, human, &["add", "."]);
    run(
        human,
        human,
        &["commit", "-q", "-m", "a person keeps cluster-admin here"],
    );
    push_to_bare(work.path(), repo);
}

async fn snapshot_with_cleanup(clean: bool) -> (reconcile::SnapshotReport, Vec<String>, String) {
    let (_api, dir, client) = replay_client().await;
    repository_with_control_plane_files(&dir.path().join("data/repo.git"));
    let (reconciler, repo, writer) = reconciler(client, dir.path(), "");
    let reconciler = reconciler.with_control_plane_cleanup(vec![clean]);
    let report = reconciler.snapshot().await.unwrap();
    stop(reconciler, writer).await;
    let files = common::git(&repo, &["ls-tree", "-r", "--name-only", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    let log = common::git(&repo, &["log", "--format=%an|%B", "main"]);
    (report, files, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_files_kubescribe_wrote_go_in_one_commit_only_when_configured() {
    let (report, files, log) = snapshot_with_cleanup(true).await;
    assert_eq!(report.control_plane_removed, 1, "{report:?}");
    assert!(
        !files.iter().any(|f| f.ends_with("clusterroles/admin.yaml")),
        "{files:?}"
    );
    for kept in [
        // A person's write, recorded: theirs.
        "_cluster/rbac.authorization.k8s.io/clusterroles/edit.yaml",
        // A person committed it to git: theirs too.
        "_cluster/rbac.authorization.k8s.io/clusterroles/cluster-admin.yaml",
        "team-a/core/configmaps/c1.yaml",
    ] {
        assert!(files.iter().any(|f| f == kept), "{kept} in {files:?}");
    }
    let cleanup = log
        .split("kubescribe|")
        .find(|c| c.starts_with("reconcile: remove 1 file of the control plane's own objects"))
        .unwrap_or_else(|| panic!("one cleanup commit by kubescribe:\n{log}"));
    assert!(
        cleanup.contains("- _cluster/rbac.authorization.k8s.io/clusterroles/admin.yaml: it is the API server's bootstrap policy\n"),
        "{cleanup}"
    );
    assert!(
        cleanup.contains("Kubescribe-Reconcile: control-plane"),
        "{cleanup}"
    );

    let (report, files, _) = snapshot_with_cleanup(false).await;
    assert_eq!(report.control_plane_removed, 0, "{report:?}");
    assert!(
        files
            .iter()
            .any(|f| f == "_cluster/rbac.authorization.k8s.io/clusterroles/admin.yaml"),
        "kept unless configured: {files:?}"
    );
}
