//! `kubescribe webhook-config`: the ValidatingWebhookConfiguration and
//! MutatingWebhookConfiguration for a config file, so what the apiserver sends and
//! what kubescribe records can never disagree.
//!
//! Invariants: one webhook entry per rule, selecting that rule's groups, resources
//! (plus `<resource>/scale`, since a scale write edits the parent's file) and
//! namespaces; kube-system and kubescribe's own namespace are never sent. A rule that
//! does not wait gets `failurePolicy: Ignore` (kubescribe being down never blocks the
//! cluster); only rules that wait for a commit or a push get `Fail`. Every entry is
//! `sideEffects: NoneOnDryRun` with `admissionReviewVersions: [v1]`. An entry for
//! every resource (`resources: ["*"]`) carries a `matchConditions` entry that keeps
//! [`NEVER_SENT`] away from it: review resources (a TokenReview caught by a `Fail`
//! entry would stop authentication while kubescribe is down), leases and events.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::config::{Config, Rule, Wait};

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookConfigArgs {
    /// The server's config file.
    #[arg(long, env = "KUBESCRIBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Namespace kubescribe runs in (never sent to the webhook).
    #[arg(long, default_value = "kubescribe")]
    pub namespace: String,
    /// The Service in front of kubescribe.
    #[arg(long, default_value = "kubescribe")]
    pub service: String,
    #[arg(long, default_value_t = 443)]
    pub port: u16,
    /// Call kubescribe at this base URL instead of through the Service.
    #[arg(long, conflicts_with = "service")]
    pub url: Option<String>,
    /// The CA (PEM) that signed kubescribe's serving certificate, for `caBundle`.
    /// Leave it out when cert-manager injects it.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Name of both configurations.
    #[arg(long, default_value = "kubescribe")]
    pub name: String,
    /// Annotations for both configurations, as KEY=VALUE (for example
    /// cert-manager.io/inject-ca-from=kubescribe/kubescribe-serving).
    #[arg(long = "annotation")]
    pub annotations: Vec<String>,
    /// More namespaces never sent to kubescribe; repeat for more.
    #[arg(long = "exclude-namespace")]
    pub exclude_namespaces: Vec<String>,
    /// Keep review resources, leases and events away from wildcard entries with
    /// `matchConditions` (Kubernetes 1.28 and later; `false` for older clusters,
    /// whose wildcard `Fail` entries then also catch TokenReviews).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub match_conditions: bool,
}

/// `group/resource` of what wildcard entries never send (core group: `/events`):
/// resources no write persists (reviews), and the cluster's heartbeat and chatter.
pub const NEVER_SENT: &[&str] = &[
    "/events",
    "events.k8s.io/events",
    "coordination.k8s.io/leases",
    "authentication.k8s.io/tokenreviews",
    "authentication.k8s.io/selfsubjectreviews",
    "authorization.k8s.io/subjectaccessreviews",
    "authorization.k8s.io/selfsubjectaccessreviews",
    "authorization.k8s.io/selfsubjectrulesreviews",
    "authorization.k8s.io/localsubjectaccessreviews",
];

/// The `matchConditions` of a wildcard entry: everything but [`NEVER_SENT`].
fn match_conditions() -> Value {
    let list = NEVER_SENT
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ");
    json!([{
        "name": "not-reviews-leases-events",
        "expression": format!("!(request.resource.group + '/' + request.resource.resource in [{list}])"),
    }])
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot read the CA bundle {path}: {source}")]
    CaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--annotation {0:?} is not KEY=VALUE")]
    Annotation(String),
}

/// Both configurations as YAML documents.
pub fn render(args: &WebhookConfigArgs) -> Result<String, WebhookConfigError> {
    let config = Config::load(args.config.as_deref())?;
    let ca_bundle = match &args.ca_bundle {
        Some(path) => Some(
            std::fs::read(path)
                .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem))
                .map_err(|source| WebhookConfigError::CaBundle {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let mut annotations = serde_json::Map::new();
    for pair in &args.annotations {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| WebhookConfigError::Annotation(pair.clone()))?;
        annotations.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    let (validating, mutating) = configurations(&config, args, ca_bundle.as_deref(), annotations);
    let mut text = crate::manifest::render(&validating);
    // The mutating webhook has a job only with `annotate: true`.
    if config.annotate {
        text.push_str("---\n");
        text.push_str(&crate::manifest::render(&mutating));
    }
    Ok(text)
}

/// The two configurations as JSON values.
pub fn configurations(
    config: &Config,
    args: &WebhookConfigArgs,
    ca_bundle: Option<&str>,
    annotations: serde_json::Map<String, Value>,
) -> (Value, Value) {
    let client = |path: &str| {
        let mut client = match &args.url {
            Some(url) => json!({ "url": format!("{}{path}", url.trim_end_matches('/')) }),
            None => json!({
                "service": {
                    "namespace": args.namespace,
                    "name": args.service,
                    "path": path,
                    "port": args.port,
                }
            }),
        };
        if let Some(bundle) = ca_bundle {
            client["caBundle"] = Value::String(bundle.to_owned());
        }
        client
    };
    let metadata = |name: &str| {
        let mut meta = json!({
            "name": name,
            "labels": { "app.kubernetes.io/name": "kubescribe" },
        });
        if !annotations.is_empty() {
            meta["annotations"] = Value::Object(annotations.clone());
        }
        meta
    };
    let mut validating = Vec::new();
    let mut mutating_rules = Vec::new();
    let mut claimed: Vec<String> = Vec::new();
    for rule in &config.rules {
        let rules = webhook_rules(rule, &["CREATE", "UPDATE", "DELETE"], true);
        let selector =
            namespace_selector(rule, &args.namespace, &args.exclude_namespaces, &claimed);
        let waits = rule.wait != Wait::None;
        let wildcard = args.match_conditions && rule.resources.iter().any(|r| r == "*");
        let mut entry = json!({
            "name": format!("{}.{}.kubescribe.io", dns_label(&rule.name), if waits { "hold" } else { "record" }),
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": if waits { "Fail" } else { "Ignore" },
            "matchPolicy": "Equivalent",
            // Waiting rules may hold a write while its commit (or push) lands;
            // kubescribe answers before this, denying when it cannot make it.
            "timeoutSeconds": match rule.wait { Wait::None => 5, Wait::Commit => 10, Wait::Push => 15 },
            "clientConfig": client("/validate"),
            "rules": rules,
            "namespaceSelector": selector,
        });
        if wildcard {
            entry["matchConditions"] = match_conditions();
        }
        validating.push(entry);
        if config.annotate {
            // No `/scale`: a Scale object is never annotated.
            mutating_rules.push((
                rule,
                webhook_rules(rule, &["CREATE", "UPDATE"], false),
                namespace_selector(rule, &args.namespace, &args.exclude_namespaces, &claimed),
            ));
        }
        // Only a rule that takes every write in its namespaces hides them from the
        // rules after it; one for some resources leaves the rest to later rules.
        let every_write =
            rule.groups.iter().any(|g| g == "*") && rule.resources.iter().any(|r| r == "*");
        if every_write && !rule.namespaces.iter().any(|n| n == "*") {
            claimed.extend(rule.namespaces.iter().cloned());
        }
    }
    let mutating: Vec<Value> = mutating_rules
        .into_iter()
        .map(|(rule, rules, selector)| {
            let mut entry = json!({
                "name": format!("{}.annotate.kubescribe.io", dns_label(&rule.name)),
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                // Annotating is a convenience: never block a write over it.
                "failurePolicy": "Ignore",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 5,
                "clientConfig": client("/mutate"),
                "rules": rules,
                "namespaceSelector": selector,
            });
            if args.match_conditions && rule.resources.iter().any(|r| r == "*") {
                entry["matchConditions"] = match_conditions();
            }
            entry
        })
        .collect();
    (
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": metadata(&args.name),
            "webhooks": validating,
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": metadata(&args.name),
            "webhooks": mutating,
        }),
    )
}

/// The `rules` of a webhook entry for one kubescribe rule.
fn webhook_rules(rule: &Rule, operations: &[&str], scale: bool) -> Value {
    // A rule for some namespaces never takes a cluster-scoped write, so its entry
    // must not be called for one (a `Fail` entry would block them while down).
    let scope = if rule.namespaces.iter().any(|n| n == "*") {
        "*"
    } else {
        "Namespaced"
    };
    let mut resources: Vec<String> = Vec::new();
    for resource in &rule.resources {
        resources.push(resource.clone());
        // A scale write edits spec.replicas in the parent's file.
        if scale && !resource.contains('/') {
            resources.push(format!("{resource}/scale"));
        }
    }
    json!([{
        "apiGroups": rule.groups,
        "apiVersions": ["*"],
        "operations": operations,
        "resources": resources,
        "scope": scope,
    }])
}

/// Never kube-system or kubescribe's own namespace; a rule's namespaces, or for a
/// rule on every namespace, all but those an earlier rule names (first match wins,
/// so those never reach this rule).
fn namespace_selector(rule: &Rule, own: &str, more: &[String], claimed: &[String]) -> Value {
    let key = "kubernetes.io/metadata.name";
    // kube-node-lease: every node's heartbeat, never worth a call.
    let mut excluded: Vec<String> = vec![
        "kube-system".to_owned(),
        "kube-node-lease".to_owned(),
        own.to_owned(),
    ];
    excluded.extend(rule.exclude_namespaces.iter().cloned());
    excluded.extend(more.iter().cloned());
    let mut expressions = Vec::new();
    if rule.namespaces.iter().any(|n| n == "*") {
        excluded.extend(claimed.iter().cloned());
    } else {
        expressions.push(json!({ "key": key, "operator": "In", "values": rule.namespaces }));
    }
    excluded.sort();
    excluded.dedup();
    expressions.push(json!({ "key": key, "operator": "NotIn", "values": excluded }));
    json!({ "matchExpressions": expressions })
}

/// A rule name as a DNS label for the webhook's name.
fn dns_label(name: &str) -> String {
    let label: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "rule".to_owned()
    } else {
        label.chars().take(40).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> WebhookConfigArgs {
        WebhookConfigArgs {
            config: None,
            namespace: "kubescribe".to_owned(),
            service: "kubescribe".to_owned(),
            port: 443,
            url: None,
            ca_bundle: None,
            name: "kubescribe".to_owned(),
            annotations: Vec::new(),
            exclude_namespaces: Vec::new(),
            match_conditions: true,
        }
    }

    /// Evaluates a wildcard entry's condition with a CEL interpreter, as the
    /// apiserver would, for a request to `group/resource`.
    fn sent(condition: &str, group: &str, resource: &str) -> bool {
        let program = cel_interpreter::Program::compile(condition).expect("valid CEL");
        let mut context = cel_interpreter::Context::default();
        context
            .add_variable(
                "request",
                json!({"resource": {"group": group, "version": "v1", "resource": resource}}),
            )
            .unwrap();
        match program.execute(&context).expect("evaluates") {
            cel_interpreter::Value::Bool(sent) => sent,
            other => panic!("not a bool: {other:?}"),
        }
    }

    #[test]
    fn wildcard_entries_never_get_reviews_leases_or_events() {
        let config = Config::from_yaml(
            "annotate: true\nrules:\n- name: prod\n  namespaces: [prod]\n  resources: [events]\n  wait: commit\n- name: rest\n  wait: commit\n",
        )
        .unwrap();
        let (validating, mutating) = configurations(&config, &args(), None, serde_json::Map::new());
        let hooks = validating["webhooks"].as_array().unwrap();
        assert!(
            hooks[0].get("matchConditions").is_none(),
            "a rule naming its resources gets exactly them"
        );
        for hook in [&hooks[1], &mutating["webhooks"][1]] {
            let condition = hook["matchConditions"][0]["expression"].as_str().unwrap();
            for never in NEVER_SENT {
                let (group, resource) = never.split_once('/').unwrap();
                assert!(!sent(condition, group, resource), "{never} is sent");
            }
            for sent_still in [
                ("", "configmaps"),
                ("", "secrets"),
                ("apps", "deployments"),
                ("events.example.com", "leases"),
                ("authentication.k8s.io", "widgets"),
            ] {
                assert!(
                    sent(condition, sent_still.0, sent_still.1),
                    "{sent_still:?}"
                );
            }
        }
        let older = WebhookConfigArgs {
            match_conditions: false,
            ..args()
        };
        let (validating, _) = configurations(&config, &older, None, serde_json::Map::new());
        assert!(validating["webhooks"][1].get("matchConditions").is_none());
    }

    #[test]
    fn waiting_rules_fail_closed_and_the_rest_fail_open() {
        let config = Config::from_yaml(
            "annotate: true\nrules:\n- name: Prod\n  namespaces: [prod]\n  resources: [deployments, configmaps]\n  wait: commit\n- name: rest\n",
        )
        .unwrap();
        let (validating, mutating) =
            configurations(&config, &args(), Some("Q0E="), serde_json::Map::new());
        let hooks = validating["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0]["name"], "prod.hold.kubescribe.io");
        assert_eq!(hooks[0]["failurePolicy"], "Fail");
        assert_eq!(hooks[1]["name"], "rest.record.kubescribe.io");
        assert_eq!(hooks[1]["failurePolicy"], "Ignore");
        assert_eq!(
            hooks[0]["rules"][0]["resources"],
            json!([
                "deployments",
                "deployments/scale",
                "configmaps",
                "configmaps/scale"
            ])
        );
        assert_eq!(hooks[1]["rules"][0]["resources"], json!(["*", "*/scale"]));
        assert_eq!(
            hooks[0]["namespaceSelector"]["matchExpressions"][0],
            json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["prod"]})
        );
        // The first rule takes only deployments and configmaps in prod, so the
        // catch-all still gets prod's other writes; neither sees kube-system.
        assert_eq!(
            hooks[1]["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-node-lease", "kube-system", "kubescribe"])
        );
        assert_eq!(hooks[0]["rules"][0]["scope"], "Namespaced");
        assert_eq!(hooks[1]["rules"][0]["scope"], "*");
        // A rule taking every write in its namespaces leaves them out of later ones.
        let config =
            Config::from_yaml("rules:\n- name: prod\n  namespaces: [prod]\n- name: rest\n")
                .unwrap();
        let (validating, _) = configurations(&config, &args(), None, serde_json::Map::new());
        assert_eq!(
            validating["webhooks"][1]["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-node-lease", "kube-system", "kubescribe", "prod"])
        );
        for hook in hooks.iter().chain(mutating["webhooks"].as_array().unwrap()) {
            assert_eq!(hook["sideEffects"], "NoneOnDryRun");
            assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
            assert_eq!(hook["clientConfig"]["caBundle"], "Q0E=");
        }
        let mutating = mutating["webhooks"].as_array().unwrap();
        assert_eq!(mutating[0]["reinvocationPolicy"], "IfNeeded");
        assert_eq!(mutating[0]["failurePolicy"], "Ignore");
        assert_eq!(mutating[0]["clientConfig"]["service"]["path"], "/mutate");
    }
}
