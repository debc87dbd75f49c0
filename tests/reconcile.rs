//! The reconciler's client and discovery against a replay of a real kube-apiserver
//! (no cluster on these machines): see tests/common/apiserver.rs.

mod common;

use kubescribe::config::Config;
use kubescribe::policy::Policy;
use kubescribe::reconcile;

async fn discovered(config: &str) -> Vec<String> {
    let api = common::apiserver::ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reconcile::client(Some(&api.kubeconfig(dir.path())))
        .await
        .unwrap();
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
    let api = common::apiserver::ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reconcile::client(Some(&api.kubeconfig(dir.path())))
        .await
        .unwrap();
    let policy = Policy::new(&Config::default());
    let configmaps = reconcile::recorded_resources(&client, &policy)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.group.is_empty() && r.resource == "configmaps")
        .unwrap();
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
