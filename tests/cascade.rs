//! A person's delete of a Namespace or a CustomResourceDefinition takes the files of
//! the objects it takes with it: in the same commit, by that person, with the count
//! and the files in the message; the answer (and a dry run's, before) says what goes;
//! and a cascade denied after its commit is reverted in full.

mod common;

use common::{allowed, body, git, message, warnings, TestServer};
use kubescribe::fault::{Faults, Gate};
use serde_json::{json, Value};

/// An AdmissionReview of `operation` by alice, for an object of `api_version`/`kind`
/// (resource `resource`) named `name` in `namespace` (`None`: cluster-scoped).
fn review(
    n: u32,
    operation: &str,
    (api_version, kind, resource): (&str, &str, &str),
    namespace: Option<&str>,
    name: &str,
    object: Value,
) -> Value {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let mut object = object;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    object["metadata"]["name"] = json!(name);
    object["metadata"]["uid"] = json!(format!("0000000{n}-1111-4000-8000-000000000000"));
    object["metadata"]["creationTimestamp"] = json!("2026-12-07T05:00:00Z");
    object["metadata"]["resourceVersion"] = json!(format!("{}", 100 + n));
    if let Some(ns) = namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    let delete = operation == "DELETE";
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{n:012}"),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": namespace.unwrap_or(if resource == "namespaces" { name } else { "" }),
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["devs", "system:authenticated"]},
            "object": if delete { Value::Null } else { object.clone() },
            "oldObject": if delete { object } else { Value::Null },
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if delete { "DeleteOptions" } else { "CreateOptions" }},
        }
    })
}

const NAMESPACE: (&str, &str, &str) = ("v1", "Namespace", "namespaces");
const CONFIGMAP: (&str, &str, &str) = ("v1", "ConfigMap", "configmaps");
const DEPLOYMENT: (&str, &str, &str) = ("apps/v1", "Deployment", "deployments");
const CRD: (&str, &str, &str) = (
    "apiextensions.k8s.io/v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
);
const WIDGET: (&str, &str, &str) = ("example.com/v1", "Widget", "widgets");
const GADGET: (&str, &str, &str) = ("example.com/v1", "Gadget", "gadgets");

async fn send(server: &TestServer, review: &Value, timeout: &str) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review(&format!("/validate?timeout={timeout}"), body(review))
        .await
        .expect("answered");
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn admit(server: &TestServer, review: &Value) -> Value {
    let answer = send(server, review, "10s").await;
    assert!(allowed(&answer), "{answer}");
    answer
}

fn files(server: &TestServer) -> Vec<String> {
    server
        .git(&["ls-tree", "-r", "--name-only", "main"])
        .lines()
        .map(str::to_owned)
        .collect()
}

const RECORD_ALL: &str = "rules:\n- name: all\n  namespaces: [\"*\"]\n  wait: commit\n";

/// Namespace `scratch` with a ConfigMap and a Deployment in it, and namespace `keep`
/// with a ConfigMap; returns the next request number.
async fn two_namespaces(server: &TestServer) -> u32 {
    let spec = json!({"metadata": {}});
    admit(
        server,
        &review(1, "CREATE", NAMESPACE, None, "scratch", spec.clone()),
    )
    .await;
    admit(
        server,
        &review(2, "CREATE", NAMESPACE, None, "keep", spec.clone()),
    )
    .await;
    let data = json!({"metadata": {}, "data": {"a": "1"}});
    admit(
        server,
        &review(
            3,
            "CREATE",
            CONFIGMAP,
            Some("scratch"),
            "settings",
            data.clone(),
        ),
    )
    .await;
    let deployment = json!({"metadata": {}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
    admit(
        server,
        &review(4, "CREATE", DEPLOYMENT, Some("scratch"), "web", deployment),
    )
    .await;
    admit(
        server,
        &review(5, "CREATE", CONFIGMAP, Some("keep"), "settings", data),
    )
    .await;
    6
}

/// The request number after [`two_namespaces`]'.
const NEXT: u32 = 6;

/// [`two_namespaces`] recorded with `config`, then the same repository served again
/// with `faults` (gates the test holds); also the files recorded.
async fn two_namespaces_then(config: &str, faults: Faults) -> (TestServer, Vec<String>) {
    let first = TestServer::start(config).await;
    assert_eq!(two_namespaces(&first).await, NEXT);
    let recorded = files(&first);
    first.server.shutdown().await.unwrap();
    let server = TestServer::start_with_faults(first.dir, config, faults).await;
    (server, recorded)
}

/// Alice deletes namespace `scratch`, as request `n`.
fn delete_scratch(n: u32) -> Value {
    review(
        n,
        "DELETE",
        NAMESPACE,
        None,
        "scratch",
        json!({"metadata": {}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_objects_files_in_the_person_s_commit() {
    let server = TestServer::start(RECORD_ALL).await;
    let n = two_namespaces(&server).await;
    assert_eq!(files(&server).len(), 5, "{:?}", files(&server));

    // A dry run says what would go, and changes nothing.
    let mut dry = delete_scratch(n);
    dry["request"]["dryRun"] = json!(true);
    let answer = admit(&server, &dry).await;
    let said = warnings(&answer).join("\n");
    assert!(
        said.contains("would record _cluster/core/namespaces/scratch.yaml and remove the files of the objects in namespace scratch"),
        "{said}"
    );
    assert!(
        said.contains("would also remove 2 files of the objects in namespace scratch from git: scratch/apps/deployments/web.yaml, scratch/core/configmaps/settings.yaml"),
        "{said}"
    );
    assert_eq!(files(&server).len(), 5);

    let answer = admit(&server, &delete_scratch(n + 1)).await;
    let said = warnings(&answer).join("\n");
    assert!(
        said.contains("also removes 2 files of the objects in namespace scratch from git"),
        "{said}"
    );
    assert_eq!(
        files(&server),
        [
            "_cluster/core/namespaces/keep.yaml",
            "keep/core/configmaps/settings.yaml"
        ],
        "the namespace's files went, and only those"
    );
    let last = server.git(&["log", "-1", "--format=%an <%ae>%n%B", "main"]);
    assert!(
        last.starts_with("alice <alice@"),
        "authored by the person who deleted: {last}"
    );
    assert!(last.contains("delete v1 Namespace scratch"), "{last}");
    assert!(
        last.contains("Also removes 2 files of the objects in namespace scratch, which go with it:\n\n- scratch/apps/deployments/web.yaml\n- scratch/core/configmaps/settings.yaml\n"),
        "{last}"
    );
    let changed = server.git(&["show", "--name-status", "--format=", "main"]);
    assert_eq!(changed.lines().count(), 3, "one commit: {changed}");

    // The namespace controller's deletes that follow come from an ignored user;
    // a delete of a file already gone makes no commit either.
    let commits = server.git(&["rev-list", "--count", "main"]);
    let answer = admit(
        &server,
        &review(
            n + 2,
            "DELETE",
            CONFIGMAP,
            Some("scratch"),
            "settings",
            json!({"metadata": {}}),
        ),
    )
    .await;
    assert!(
        warnings(&answer).iter().any(|w| w.starts_with("unchanged")),
        "{answer}"
    );
    assert_eq!(server.git(&["rev-list", "--count", "main"]), commits);
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_definition_removes_its_custom_resources_files_everywhere() {
    let server = TestServer::start(RECORD_ALL).await;
    let crd = |plural: &str, kind: &str| json!({"metadata": {}, "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": plural, "kind": kind}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
    admit(
        &server,
        &review(
            1,
            "CREATE",
            CRD,
            None,
            "widgets.example.com",
            crd("widgets", "Widget"),
        ),
    )
    .await;
    admit(
        &server,
        &review(
            2,
            "CREATE",
            CRD,
            None,
            "gadgets.example.com",
            crd("gadgets", "Gadget"),
        ),
    )
    .await;
    let spec = json!({"metadata": {}, "spec": {"size": 1}});
    admit(
        &server,
        &review(3, "CREATE", WIDGET, Some("a"), "w1", spec.clone()),
    )
    .await;
    admit(
        &server,
        &review(4, "CREATE", WIDGET, Some("b"), "w2", spec.clone()),
    )
    .await;
    admit(&server, &review(5, "CREATE", GADGET, Some("a"), "g1", spec)).await;

    let answer = admit(
        &server,
        &review(
            6,
            "DELETE",
            CRD,
            None,
            "widgets.example.com",
            crd("widgets", "Widget"),
        ),
    )
    .await;
    let said = warnings(&answer).join("\n");
    assert!(
        said.contains("also removes 2 files of the widgets.example.com custom resources from git: a/example.com/widgets/w1.yaml, b/example.com/widgets/w2.yaml"),
        "{said}"
    );
    assert_eq!(
        files(&server),
        [
            "_cluster/apiextensions.k8s.io/customresourcedefinitions/gadgets.example.com.yaml",
            "a/example.com/gadgets/g1.yaml"
        ]
    );
    let last = server.git(&["log", "-1", "--format=%an%n%B", "main"]);
    assert!(last.starts_with("alice\n"), "{last}");
    assert!(
        last.contains("Also removes 2 files of the widgets.example.com custom resources"),
        "{last}"
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_that_cannot_tell_by_path_reads_each_file() {
    // No `{namespace}` in the template: every namespace shares the directories, so
    // the files' own metadata.namespace decides.
    let server = TestServer::start(&format!(
        "repository:\n  pathTemplate: \"{{group}}/{{resource}}/{{name}}.yaml\"\n{RECORD_ALL}"
    ))
    .await;
    let data = json!({"metadata": {}, "data": {"a": "1"}});
    admit(
        &server,
        &review(1, "CREATE", CONFIGMAP, Some("scratch"), "one", data.clone()),
    )
    .await;
    admit(
        &server,
        &review(2, "CREATE", CONFIGMAP, Some("keep"), "two", data),
    )
    .await;
    admit(&server, &delete_scratch(3)).await;
    assert_eq!(files(&server), ["core/configmaps/two.yaml"]);
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_denied_after_its_commit_is_reverted_in_full() {
    let disk = Gate::closed();
    let (server, before) = two_namespaces_then(
        RECORD_ALL,
        Faults {
            before_durable: Some(disk.clone()),
            ..Faults::default()
        },
    )
    .await;
    let n = NEXT;
    let delete = delete_scratch(n);
    let answer = {
        let request = send(&server, &delete, "1s");
        tokio::pin!(request);
        // The writer has the cascade and is making it durable; the disk stalls.
        tokio::select! {
            () = disk.arrivals(1) => {}
            answer = &mut request => panic!("answered before the writer took it: {answer}"),
        }
        request.await
    };
    assert!(!allowed(&answer), "{answer}");
    assert!(
        message(&answer).contains("kubescribe reverts it"),
        "{answer}"
    );
    disk.open();
    // Answered in order: once this write is recorded, the cascade has landed and
    // been reverted.
    let data = json!({"metadata": {}, "data": {"b": "2"}});
    admit(
        &server,
        &review(n + 1, "CREATE", CONFIGMAP, Some("keep"), "more", data),
    )
    .await;
    let mut expected = before;
    expected.push("keep/core/configmaps/more.yaml".to_owned());
    expected.sort();
    assert_eq!(files(&server), expected, "every file is back");
    let history = git(&server.repo, &["log", "--format=%s", "main"]);
    assert!(
        history
            .lines()
            .any(|s| s == "revert delete v1 Namespace scratch"),
        "{history}"
    );
    server.server.shutdown().await.unwrap();
}

/// A bare remote for `wait: push` tests.
fn bare_remote(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("remote.git");
    git(
        std::path::Path::new("."),
        &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()],
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_cascade_s_revert_leaves_out_files_a_later_admitted_delete_took() {
    let remotes = tempfile::tempdir().unwrap();
    let remote = bare_remote(remotes.path());
    let config = format!(
        "repository:\n  remote:\n    url: file://{}\nrules:\n- name: all\n  namespaces: [\"*\"]\n  wait: push\n",
        remote.display()
    );
    let answer_from_remote = Gate::closed();
    let (server, _) = two_namespaces_then(
        &config,
        Faults {
            after_push: Some(answer_from_remote.clone()),
            ..Faults::default()
        },
    )
    .await;
    let n = NEXT;
    let delete = delete_scratch(n);
    let mut late = Box::pin({
        let server = &server;
        async move { send(server, &delete, "1s").await }
    });
    tokio::select! {
        () = answer_from_remote.arrivals(1) => {}
        answer = &mut late => panic!("answered before the push: {answer}"),
    }
    // While that push has not answered, a person deletes one of the namespace's
    // objects: its file is already gone, so no commit.
    let settings = review(
        n + 1,
        "DELETE",
        CONFIGMAP,
        Some("scratch"),
        "settings",
        json!({"metadata": {}}),
    );
    let mut after = Box::pin({
        let server = &server;
        async move { send(server, &settings, "10s").await }
    });
    let denied = tokio::select! {
        answer = &mut late => answer,
        answer = &mut after => panic!("answered before the push: {answer}"),
    };
    drop(late);
    assert!(!allowed(&denied), "{denied}");
    answer_from_remote.open();
    let answer = (&mut after).await;
    drop(after);
    assert!(allowed(&answer), "{answer}");
    let data = json!({"metadata": {}, "data": {"b": "2"}});
    admit(
        &server,
        &review(n + 2, "CREATE", CONFIGMAP, Some("keep"), "more", data),
    )
    .await;
    let local = files(&server);
    assert!(
        local.contains(&"_cluster/core/namespaces/scratch.yaml".to_owned())
            && local.contains(&"scratch/apps/deployments/web.yaml".to_owned()),
        "the denied cascade is reverted: {local:?}"
    );
    assert!(
        !local.contains(&"scratch/core/configmaps/settings.yaml".to_owned()),
        "but not where a later admitted delete left the file gone: {local:?}"
    );
    server.server.shutdown().await.unwrap();
}
