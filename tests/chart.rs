//! The Helm chart, rendered with the real helm (v4, installed by
//! scripts/install-helm.sh): every object parsed and its important fields asserted,
//! `helm lint` clean, a bad values file refused with a readable message, and the
//! webhooks equal to what `kubescribe webhook-config` prints for the same config.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::helm::{chart, helm};
use serde_json::Value;

/// `helm template ks --namespace git-record` with these arguments.
fn render(args: &[&str]) -> Vec<Value> {
    common::helm::render("ks", "git-record", args)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds
}

const RULES: &str = r#"config={"annotate":true,"rules":[{"name":"prod","namespaces":["prod"],"wait":"commit"},{"name":"apps","groups":["apps"],"resources":["deployments"]}]}"#;

#[test]
fn defaults_render_a_locked_down_deployment_and_cert_manager_webhooks() {
    // (kube-node-lease carries only node heartbeats: never sent.)
    let objects = render(&[]);
    assert_eq!(
        kinds(&objects),
        [
            "Certificate",
            "Certificate",
            "ConfigMap",
            "Deployment",
            "Issuer",
            "Issuer",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ValidatingWebhookConfiguration"
        ]
    );
    let deployment = find(&objects, "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["requests"]["memory"].is_string());

    let webhooks = find(&objects, "ValidatingWebhookConfiguration").unwrap();
    assert_eq!(
        webhooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "git-record/ks-kubescribe-serving"
    );
    let hook = &webhooks["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "NoneOnDryRun");
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["git-record", "kube-node-lease", "kube-system"])
    );
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "cert-manager injects it"
    );

    // The serving certificate is for the Service the webhooks call.
    let serving = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["spec"]["isCA"] != true)
        .unwrap();
    assert_eq!(
        serving["spec"]["dnsNames"][0],
        "ks-kubescribe.git-record.svc"
    );
}

#[test]
fn rules_that_wait_fail_closed_on_their_own_entries() {
    let objects = render(&["--set-json", RULES]);
    let hooks = find(&objects, "ValidatingWebhookConfiguration").unwrap()["webhooks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0]["failurePolicy"], "Fail");
    assert_eq!(hooks[1]["failurePolicy"], "Ignore");
    let mutating = find(&objects, "MutatingWebhookConfiguration").unwrap();
    assert_eq!(mutating["webhooks"][0]["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        hooks[0]["rules"][0]["scope"], "Namespaced",
        "prod never gets cluster-scoped writes"
    );

    // An empty list is not "unset" for the chart either: no rules, no entries.
    let objects = render(&["--set-json", r#"config={"rules":[]}"#]);
    let hooks = &find(&objects, "ValidatingWebhookConfiguration").unwrap()["webhooks"];
    assert!(
        hooks.is_null() || hooks.as_array().is_some_and(Vec::is_empty),
        "{hooks}"
    );
}

#[test]
fn without_cert_manager_the_chart_takes_a_secret_and_a_ca_bundle() {
    let objects = render(&[
        "--set",
        "certManager.enabled=false",
        "--set",
        "tls.existingSecret=kubescribe-tls",
        "--set",
        "tls.caBundle=Q0E=",
    ]);
    assert!(find(&objects, "Certificate").is_none());
    assert!(find(&objects, "Issuer").is_none());
    let webhooks = find(&objects, "ValidatingWebhookConfiguration").unwrap();
    assert!(webhooks["metadata"].get("annotations").is_none());
    assert_eq!(webhooks["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=");
    let volumes = &find(&objects, "Deployment").unwrap()["spec"]["template"]["spec"]["volumes"];
    assert!(volumes
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"] == "kubescribe-tls"));
}

#[test]
fn service_monitor_network_policy_and_git_credentials_are_opt_in() {
    let objects = render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "git.existingSecret=git-creds",
    ]);
    let pvc = find(&objects, "PersistentVolumeClaim").unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let monitor = find(&objects, "ServiceMonitor").unwrap();
    assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "https");
    assert!(find(&objects, "NetworkPolicy").is_some());
    let pod = &find(&objects, "Deployment").unwrap()["spec"]["template"]["spec"];
    let git = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "git")
        .unwrap();
    assert_eq!(git["secret"]["secretName"], "git-creds");
    assert_eq!(git["secret"]["defaultMode"], 0o400);
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["persistentVolumeClaim"]["claimName"] == "ks-kubescribe"));
}

#[test]
fn every_namespaced_object_names_the_release_namespace() {
    // `helm template | kubectl apply -f -` (and GitOps tools that render charts)
    // put an object without a namespace wherever the client points; the Service
    // the webhooks call must be in the release's namespace.
    let objects = render(&[
        "--set",
        "persistence.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set-json",
        r#"config={"reconcile":{"enabled":true},"rules":[{"name":"all"}]}"#,
    ]);
    let cluster_scoped = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ];
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let namespace = &object["metadata"]["namespace"];
        if cluster_scoped.contains(&kind) {
            assert!(namespace.is_null(), "{kind} is cluster-scoped: {object}");
        } else {
            assert_eq!(
                namespace, "git-record",
                "{kind} {}",
                object["metadata"]["name"]
            );
        }
    }
}

#[test]
fn helm_lint_is_clean_and_a_bad_values_file_is_refused_readably() {
    let lint = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "replicaCount: two\npersistance:\n  enabled: true\n").unwrap();
    let output = Command::new(helm())
        .args(["template", "ks"])
        .arg(chart())
        .arg("-f")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("/replicaCount") && err.contains("want integer"),
        "{err}"
    );
    assert!(err.contains("'persistance' not allowed"), "{err}");
}

#[test]
fn the_charts_webhooks_equal_webhook_config_for_the_same_config() {
    for match_conditions in [true, false] {
        webhooks_agree(match_conditions);
    }
}

fn webhooks_agree(match_conditions: bool) {
    let objects = render(&[
        "--set-json",
        RULES,
        "--set",
        &format!("webhook.matchConditions={match_conditions}"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let values: Value = serde_json::from_str(RULES.trim_start_matches("config=")).unwrap();
    std::fs::write(&config, serde_json::to_string(&values).unwrap()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .args(["webhook-config", "--config"])
        .arg(&config)
        .args(["--namespace", "git-record", "--service", "ks-kubescribe"])
        .arg(format!("--match-conditions={match_conditions}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let printed: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let chart = &find(&objects, kind).unwrap()["webhooks"];
        let cli = &find(&printed, kind).unwrap()["webhooks"];
        assert_eq!(chart, cli, "{kind}");
        let conditions = cli
            .as_array()
            .unwrap()
            .iter()
            .filter(|hook| hook.get("matchConditions").is_some())
            .count();
        assert_eq!(conditions > 0, match_conditions, "{kind}: {cli}");
    }
}

#[test]
fn the_reconciler_gets_a_token_and_a_read_only_cluster_role_only_when_enabled() {
    let off = render(&[]);
    assert!(find(&off, "ClusterRole").is_none());
    let pod = &find(&off, "Deployment").unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);

    let on = render(&[
        "--set",
        "config.reconcile.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    ]);
    let pod = &find(&on, "Deployment").unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        find(&on, "ServiceAccount").unwrap()["automountServiceAccountToken"],
        true
    );
    let role = find(&on, "ClusterRole").unwrap();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(
            rule["verbs"],
            serde_json::json!(["get", "list", "watch"]),
            "read only: {rule}"
        );
    }
    let binding = find(&on, "ClusterRoleBinding").unwrap();
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
    // The NetworkPolicy lets it reach the apiserver.
    let egress =
        serde_json::to_string(&find(&on, "NetworkPolicy").unwrap()["spec"]["egress"]).unwrap();
    assert!(egress.contains("6443"), "{egress}");

    // Narrowed by the operator.
    let narrow = render(&[
        "--set",
        "config.reconcile.enabled=true",
        "--set-json",
        r#"reconcile.rbac.rules=[{"apiGroups":["apps"],"resources":["deployments"],"verbs":["get","list","watch"]}]"#,
    ]);
    let role = find(&narrow, "ClusterRole").unwrap();
    assert_eq!(role["rules"][0]["apiGroups"], serde_json::json!(["apps"]));
}

#[test]
fn client_auth_values_become_server_client_auth_and_the_files_it_reads() {
    let remote = r#"config={"repository":{"remote":{"url":"https://git.example.com/ops.git"}},"rules":[{"name":"all"}]}"#;
    let config_of = |objects: &[Value]| -> kubescribe::config::Config {
        let text = find(objects, "ConfigMap").unwrap()["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .to_owned();
        kubescribe::config::Config::from_yaml(&text).expect("kubescribe reads the chart's config")
    };

    // cert-manager makes the apiserver's client certificate; kubescribe verifies it
    // with the CA in the serving Secret.
    let objects = render(&["--set", "clientAuth.certificate=true", "--set-json", remote]);
    let client = objects
        .iter()
        .find(|o| {
            o["kind"] == "Certificate" && o["metadata"]["name"] == "ks-kubescribe-apiserver-client"
        })
        .expect("the client Certificate");
    assert_eq!(client["spec"]["commonName"], "kube-apiserver");
    assert_eq!(
        client["spec"]["usages"],
        serde_json::json!(["digital signature", "client auth"])
    );
    assert_eq!(client["spec"]["issuerRef"]["name"], "ks-kubescribe-ca");
    let auth = config_of(&objects).server.client_auth;
    assert_eq!(
        auth.ca_file.unwrap(),
        PathBuf::from("/etc/kubescribe/tls/ca.crt")
    );
    assert_eq!(auth.allowed_names, vec!["kube-apiserver"]);

    // A token from a Secret, mounted read-only.
    let objects = render(&[
        "--set",
        "clientAuth.tokenSecret=apiserver-token",
        "--set-json",
        remote,
    ]);
    let auth = config_of(&objects).server.client_auth;
    assert_eq!(
        auth.token_file.unwrap(),
        PathBuf::from("/etc/kubescribe/caller/token")
    );
    let pod = &find(&objects, "Deployment").unwrap()["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "caller")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "apiserver-token");
    assert_eq!(volume["secret"]["defaultMode"], 0o400);

    // Managed clusters: explicit.
    let objects = render(&[
        "--set",
        "clientAuth.allowUnauthenticated=true",
        "--set-json",
        remote,
    ]);
    assert!(config_of(&objects).server.client_auth.allow_unauthenticated);
    // Nothing asked: nothing added; keys `config.server.clientAuth` sets win, the
    // chart's fill in the rest.
    let objects = render(&["--set-json", remote]);
    assert!(!config_of(&objects).server.client_auth.authenticates());
    let objects = render(&[
        "--set",
        "clientAuth.certificate=true",
        "--set-json",
        r#"config={"server":{"clientAuth":{"tokenFile":"/own/token"}},"rules":[{"name":"all"}]}"#,
    ]);
    let auth = config_of(&objects).server.client_auth;
    assert_eq!(auth.token_file.unwrap(), PathBuf::from("/own/token"));
    assert_eq!(
        auth.ca_file.unwrap(),
        PathBuf::from("/etc/kubescribe/tls/ca.crt")
    );
    let objects = render(&[
        "--set",
        "clientAuth.certificate=true",
        "--set-json",
        r#"config={"server":{"clientAuth":{"allowedNames":["apiserver-a"]}},"rules":[{"name":"all"}]}"#,
    ]);
    let auth = config_of(&objects).server.client_auth;
    assert_eq!(auth.allowed_names, vec!["apiserver-a"]);
    assert!(auth.ca_file.is_some());

    // The client certificate needs cert-manager's CA.
    let output = Command::new(helm())
        .args(["template", "ks", "--namespace", "git-record"])
        .arg(chart())
        .args([
            "--set",
            "clientAuth.certificate=true",
            "--set",
            "certManager.enabled=false",
        ])
        .args([
            "--set",
            "tls.existingSecret=s",
            "--set",
            "tls.caBundle=Q0E=",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("clientAuth.certificate needs certManager.enabled"));
    let output = Command::new(helm())
        .args(["template", "ks", "--namespace", "git-record"])
        .arg(chart())
        .args([
            "--set",
            "clientAuth.certificate=true",
            "--set-json",
            "clientAuth.allowedNames=[]",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs clientAuth.allowedNames"));
}

#[test]
fn match_conditions_follow_the_clusters_version_unless_chosen() {
    let conditions = |args: &[&str]| {
        let objects = render(args);
        let hooks = &find(&objects, "ValidatingWebhookConfiguration").unwrap()["webhooks"];
        hooks
            .as_array()
            .unwrap()
            .iter()
            .any(|hook| hook.get("matchConditions").is_some())
    };
    assert!(conditions(&["--kube-version", "1.28.0"]));
    assert!(conditions(&["--kube-version", "1.31.2"]));
    assert!(!conditions(&["--kube-version", "1.27.9"]));
    assert!(conditions(&[
        "--kube-version",
        "1.27.9",
        "--set",
        "webhook.matchConditions=true"
    ]));
    assert!(!conditions(&[
        "--kube-version",
        "1.31.2",
        "--set",
        "webhook.matchConditions=false"
    ]));
}

/// What `helm template` says, on success or failure.
fn render_result(args: &[&str]) -> Result<Vec<Value>, String> {
    let output = Command::new(common::helm::helm())
        .args(["template", "ks", "--namespace", "git-record"])
        .arg(common::helm::chart())
        .args(args)
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).unwrap();
    Ok(serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect())
}

const REMOTE: &str = "config.repository.remote.url=https://git.example.com/state.git";

#[test]
fn history_is_kept_by_default_and_upgrades_roll_when_the_remote_keeps_it() {
    let strategy =
        |objects: &[Value]| find(objects, "Deployment").unwrap()["spec"]["strategy"].clone();
    // No remote: the repository is the history, on a volume; one pod at a time.
    let local = render(&[]);
    assert!(find(&local, "PersistentVolumeClaim").is_some());
    assert_eq!(strategy(&local)["type"], "Recreate");

    // Every repository pushes and nothing waits for a local commit only: the
    // remote keeps the history, and the new pod is ready before the old one stops.
    let pushed = render(&[
        "--set",
        REMOTE,
        "--set-json",
        r#"config.rules=[{"name":"all","wait":"push"}]"#,
    ]);
    assert!(find(&pushed, "PersistentVolumeClaim").is_none());
    assert_eq!(strategy(&pushed)["type"], "RollingUpdate");
    assert_eq!(strategy(&pushed)["rollingUpdate"]["maxUnavailable"], 0);
    let volumes = &find(&pushed, "Deployment").unwrap()["spec"]["template"]["spec"]["volumes"];
    assert!(volumes
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "data" && v["emptyDir"].is_object()));

    // A wait: commit answer promises a local commit: kept on a volume even then.
    let committed = render(&[
        "--set",
        REMOTE,
        "--set-json",
        r#"config.rules=[{"name":"all","wait":"commit"}]"#,
    ]);
    assert!(find(&committed, "PersistentVolumeClaim").is_some());
    // A second repository without a remote needs the volume too.
    let mixed = render(&[
        "--set",
        REMOTE,
        "--set-json",
        r#"config.repositories={"audit":{"branch":"audit"}}"#,
    ]);
    assert!(find(&mixed, "PersistentVolumeClaim").is_some());

    let refused = render_result(&["--set", "persistence.enabled=false"]).unwrap_err();
    assert!(
        refused.contains("every pod replacement loses its history"),
        "{refused}"
    );
    let refused = render_result(&["--set", "replicaCount=2"]).unwrap_err();
    assert!(
        refused.contains("needs a remote on every repository"),
        "{refused}"
    );
    let two = render(&[
        "--set",
        REMOTE,
        "--set",
        "persistence.enabled=false",
        "--set",
        "replicaCount=2",
    ]);
    assert_eq!(find(&two, "Deployment").unwrap()["spec"]["replicas"], 2);

    // Several replicas that keep a volume each: a StatefulSet, one pod replaced at a
    // time, so a `Fail` entry always has a pod to call, `wait: commit` included.
    let sts = render(&[
        "--set",
        REMOTE,
        "--set-json",
        r#"config.rules=[{"name":"all","wait":"commit"}]"#,
        "--set",
        "replicaCount=2",
    ]);
    assert!(find(&sts, "Deployment").is_none());
    assert!(
        find(&sts, "PersistentVolumeClaim").is_none(),
        "one per pod instead"
    );
    let set = find(&sts, "StatefulSet").unwrap();
    assert_eq!(set["spec"]["replicas"], 2);
    assert_eq!(set["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let pod = &set["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(!volumes.iter().any(|v| v["name"] == "data"), "{volumes:?}");
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "data"), "{mounts:?}");
}

/// A rule's `review` passes the chart's schema and gets a holding entry like any
/// `wait: push` rule; a forge the schema does not know is refused at render time.
#[test]
fn a_review_rule_renders_and_an_unknown_forge_is_refused() {
    let review = |forge: &str| {
        format!(
            r#"config={{"repository":{{"remote":{{"url":"https://git.example.com/apps.git"}}}},"rules":[{{"name":"apps","wait":"push","then":"deny","review":{{"forge":"{forge}","api":"https://api.github.com","project":"acme/apps","tokenFile":"/etc/kubescribe/git/forge-token","group":"session"}}}}]}}"#
        )
    };
    let objects = render(&["--set-json", &review("github")]);
    let hooks = &find(&objects, "ValidatingWebhookConfiguration").unwrap()["webhooks"];
    assert_eq!(hooks[0]["failurePolicy"], "Fail", "{hooks}");
    let config = find(&objects, "ConfigMap").unwrap()["data"].to_string();
    assert!(config.contains("forge-token"), "{config}");
    let refused = render_result(&["--set-json", &review("bitbucket")]).unwrap_err();
    assert!(refused.contains("forge"), "{refused}");
}
