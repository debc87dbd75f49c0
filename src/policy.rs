//! Decides, for one attempted write, whether it is recorded and what the answer waits for.
//!
//! Everything here is a pure function of the write and the configuration: no I/O, no
//! clock, no async. The server and the offline check call the same [`decide`], so they
//! can never disagree. A dry run is decided exactly like a real write; the caller
//! turns a `Record` into a "would record" warning instead of a commit.

use kube_core::admission::Operation;
use kube_core::{GroupVersionKind, GroupVersionResource};
use serde_json::Value;

use crate::config::{Config, GuardRails, IgnoreConfig, RailMode, Rule, SecretMode, Then, Wait};

/// One attempted write, as the apiserver described it to us.
#[derive(Debug, Clone)]
pub struct Write {
    pub uid: String,
    pub operation: Operation,
    /// The kind of `object`: for a scale write this is `autoscaling/v1 Scale`.
    pub kind: GroupVersionKind,
    /// The resource written: for a scale write this is the parent (`deployments`).
    pub resource: GroupVersionResource,
    pub sub_resource: Option<String>,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Empty on a `generateName` create seen by a mutating webhook.
    pub name: String,
    pub user: String,
    pub groups: Vec<String>,
    /// Modifications will not be persisted: never write anything for it.
    pub dry_run: bool,
    /// The new object as the JSON the apiserver sent, less `status` and
    /// `metadata.managedFields` (never recorded); `None` for DELETE.
    pub object: Option<Value>,
    /// The previous object as raw JSON; only for UPDATE and DELETE.
    pub old_object: Option<Value>,
    /// The cluster's state as a list or watch showed it to the reconciler, not a
    /// request: who wrote it is unknown, so only the object can tell (see
    /// [`crate::intent`]).
    pub from_cluster: bool,
}

impl Write {
    /// The object as it is after the write: `oldObject` for a DELETE.
    pub(crate) fn live_object(&self) -> Option<&Value> {
        match self.operation {
            Operation::Delete => self.old_object.as_ref(),
            _ => self.object.as_ref(),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Record the write in target `target` (an index into [`Config::targets`]); the
    /// answer waits for `wait`, then does `then`.
    Record {
        rule: String,
        wait: Wait,
        then: Then,
        target: usize,
        record: crate::config::Record,
    },
    /// Let the write through without recording it.
    Skip(SkipReason),
}

/// Why a write is not recorded. These are expected, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    Connect,
    Subresource(String),
    Noise(String),
    IgnoredUser(String),
    IgnoredGroup(String),
    ControllerOwned {
        kind: String,
        name: String,
    },
    SecretOmitted,
    /// The control plane's own object, not a person's (see [`crate::intent`]).
    ControlPlane(String),
    NoRule,
}

impl SkipReason {
    /// A short label for logs and metrics; never contains object names.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::Connect => "connect",
            SkipReason::Subresource(_) => "subresource",
            SkipReason::Noise(_) => "noise",
            SkipReason::IgnoredUser(_) => "ignored_user",
            SkipReason::IgnoredGroup(_) => "ignored_group",
            SkipReason::ControllerOwned { .. } => "controller_owned",
            SkipReason::SecretOmitted => "secret_omitted",
            SkipReason::ControlPlane(_) => "control_plane",
            SkipReason::NoRule => "no_rule",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Connect => write!(f, "CONNECT is not a write"),
            SkipReason::Subresource(s) => write!(f, "subresource {s} is not recorded"),
            SkipReason::Noise(r) => write!(f, "{r} are ignored as noise"),
            SkipReason::IgnoredUser(u) => write!(f, "user {u} is ignored"),
            SkipReason::IgnoredGroup(g) => write!(f, "group {g} is ignored"),
            SkipReason::ControllerOwned { kind, name } => {
                write!(
                    f,
                    "owned by controller {kind}/{name}, which is recorded instead"
                )
            }
            SkipReason::SecretOmitted => {
                write!(f, "Secrets are not recorded (secrets: omit; set secrets: sops to record them encrypted, or redact to record their keys only)")
            }
            SkipReason::ControlPlane(why) => write!(
                f,
                "the control plane's own object, not a person's: {why} (see ignore.controlPlane)"
            ),
            SkipReason::NoRule => write!(f, "no rule records it"),
        }
    }
}

/// The compiled policy: the rules and ignore lists of a [`Config`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// Each rule with the index of the target it records to.
    rules: Vec<(Rule, usize)>,
    ignore: IgnoreConfig,
    noise: Vec<(String, String)>,
    pub secrets: SecretMode,
    pub guard_rails: GuardRails,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        let targets = config.targets();
        let noise = config
            .ignore
            .resources
            .iter()
            .map(|entry| match entry.split_once('.') {
                Some((resource, group)) => (group.to_owned(), resource.to_owned()),
                None => (String::new(), entry.clone()),
            })
            .collect();
        Self {
            rules: config
                .rules
                .iter()
                .map(|rule| {
                    let target = rule
                        .repository
                        .as_ref()
                        .and_then(|name| targets.iter().position(|t| &t.name == name))
                        .unwrap_or(0);
                    (rule.clone(), target)
                })
                .collect(),
            ignore: config.ignore.clone(),
            noise,
            secrets: config.secrets,
            guard_rails: config.guard_rails.clone(),
        }
    }
}

impl Policy {
    /// Whether some write to `resource` in `group` can be recorded: it is not noise,
    /// not a Secret under `omit` or `deny`, and a rule selects it. Namespaces, users
    /// and owners decide per object.
    pub fn records_resource(&self, group: &str, resource: &str) -> bool {
        if self.noise.iter().any(|(g, r)| g == group && r == resource) {
            return false;
        }
        let secret = group.is_empty() && resource == "secrets";
        let any = |list: &[String], value: &str| list.iter().any(|p| p == "*" || p == value);
        self.rules.iter().any(|(rule, _)| {
            any(&rule.groups, group)
                && any(&rule.resources, resource)
                && (!secret || self.secrets_of(rule).records())
        })
    }

    /// How the rule named `rule` treats Secrets: its own `secrets`, else the
    /// top-level one.
    pub fn secret_mode(&self, rule: &str) -> SecretMode {
        self.rules
            .iter()
            .find(|(r, _)| r.name == rule)
            .map_or(self.secrets, |(r, _)| self.secrets_of(r))
    }

    fn secrets_of(&self, rule: &Rule) -> SecretMode {
        rule.secrets.unwrap_or(self.secrets)
    }

    /// How a write to a Secret is treated: as the first rule matching it says, else
    /// as the top-level `secrets` says.
    fn secret_mode_for(&self, write: &Write) -> SecretMode {
        self.rules
            .iter()
            .find(|(rule, _)| matches(rule, write))
            .map_or(self.secrets, |(rule, _)| self.secrets_of(rule))
    }

    /// Whether rule `rule` proposes its writes in pull requests.
    pub fn reviews(&self, rule: &str) -> bool {
        self.rules
            .iter()
            .any(|(r, _)| r.name == rule && r.review.is_some())
    }

    /// Whether some rule says `prune: always`.
    pub fn prunes(&self) -> bool {
        self.rules
            .iter()
            .any(|(r, _)| r.prune == crate::config::Prune::Always)
    }

    /// The prune policy of the rule named `rule` (`never` for a name no rule has).
    pub fn prune(&self, rule: &str) -> crate::config::Prune {
        self.rules
            .iter()
            .find(|(r, _)| r.name == rule)
            .map_or(crate::config::Prune::Never, |(r, _)| r.prune)
    }
}

/// Decides what happens to `write`. The first matching skip reason wins, then the
/// first matching rule.
pub fn decide(write: &Write, policy: &Policy) -> Decision {
    if write.operation == Operation::Connect {
        return Decision::Skip(SkipReason::Connect);
    }
    if let Some(sub) = &write.sub_resource {
        if sub != "scale" {
            return Decision::Skip(SkipReason::Subresource(sub.clone()));
        }
    }
    let group = &write.resource.group;
    let resource = &write.resource.resource;
    if policy
        .noise
        .iter()
        .any(|(g, r)| g == group && r == resource)
    {
        return Decision::Skip(SkipReason::Noise(resource.clone()));
    }
    if policy.ignore.users.iter().any(|p| glob(p, &write.user)) {
        return Decision::Skip(SkipReason::IgnoredUser(write.user.clone()));
    }
    if let Some(g) = write
        .groups
        .iter()
        .find(|g| policy.ignore.groups.iter().any(|p| glob(p, g)))
    {
        return Decision::Skip(SkipReason::IgnoredGroup(g.clone()));
    }
    if policy.ignore.controller_owned {
        if let Some(owner) = controller_owner(write.live_object()) {
            return Decision::Skip(owner);
        }
    }
    if let Some(why) = crate::intent::control_plane(
        write.live_object(),
        group,
        resource,
        write.namespace.as_deref().filter(|ns| !ns.is_empty()),
        write.from_cluster,
        &policy.ignore,
    ) {
        return Decision::Skip(SkipReason::ControlPlane(why));
    }
    if group.is_empty() && resource == "secrets" && !policy.secret_mode_for(write).records() {
        return Decision::Skip(SkipReason::SecretOmitted);
    }
    match policy.rules.iter().find(|(rule, _)| matches(rule, write)) {
        Some((rule, target)) => Decision::Record {
            rule: rule.name.clone(),
            wait: rule.wait,
            then: rule.then,
            target: *target,
            record: rule.record,
        },
        None => Decision::Skip(SkipReason::NoRule),
    }
}

/// What a guard rail found about a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The guard rail's name in the config (`gitopsManaged`, ...).
    pub rail: &'static str,
    /// `Audit` or `Enforce`; never `Off`.
    pub mode: RailMode,
    pub message: String,
}

/// The guard rails' findings for `write`, in config order. They apply to every write
/// a person or a non-GitOps controller makes; CONNECT, status-like subresources and
/// ignored users and groups are exempt, like they are from recording.
pub fn guard(write: &Write, decision: &Decision, policy: &Policy) -> Vec<Finding> {
    if let Decision::Skip(
        SkipReason::Connect
        | SkipReason::IgnoredUser(_)
        | SkipReason::IgnoredGroup(_)
        | SkipReason::Subresource(_),
    ) = decision
    {
        return Vec::new();
    }
    let rails = &policy.guard_rails;
    let mut findings = Vec::new();
    let gitops = &rails.gitops_managed;
    if gitops.mode != RailMode::Off {
        let allowed = gitops.allow_users.iter().any(|p| glob(p, &write.user))
            || write
                .groups
                .iter()
                .any(|g| gitops.allow_groups.iter().any(|p| glob(p, g)));
        // The object as it is now decides who manages it: a write cannot take an
        // object away from its GitOps tool by dropping the labels.
        let current = write.old_object.as_ref().or(write.object.as_ref());
        if let (false, Some(source)) = (allowed, current.and_then(gitops_source)) {
            findings.push(Finding {
                rail: "gitopsManaged",
                mode: gitops.mode,
                message: format!(
                    "{} is managed by {source}: change it in git, where that source reads it, not in the cluster",
                    object_name(write)
                ),
            });
        }
    }
    let max = &rails.max_object_bytes;
    // A DELETE makes nothing bigger: an object already over the limit can go.
    if max.mode != RailMode::Off && write.operation != Operation::Delete {
        let size = write.live_object().map_or(0, serialized_len);
        if size > max.limit {
            findings.push(Finding {
                rail: "maxObjectBytes",
                mode: max.mode,
                message: format!(
                    "{} is {size} bytes, more than maxObjectBytes ({}): split it, or move bulk data out of the object",
                    object_name(write),
                    max.limit
                ),
            });
        }
    }
    if write.resource.group.is_empty()
        && write.resource.resource == "secrets"
        && policy.secret_mode_for(write) == SecretMode::Deny
    {
        findings.push(Finding {
            rail: "secrets",
            mode: RailMode::Enforce,
            message: format!(
                "{} is a Secret, and Secret writes are refused (secrets: deny): keep Secrets encrypted in git (SOPS, sealed secrets) and let GitOps apply them",
                object_name(write)
            ),
        });
    }
    findings
}

fn object_name(write: &Write) -> String {
    match &write.namespace {
        Some(ns) => format!("{} {ns}/{}", write.kind.kind, write.name),
        None => format!("{} {}", write.kind.kind, write.name),
    }
}

/// The length of `value` as compact JSON, counted without building it.
fn serialized_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

/// Which GitOps tool manages `object`, as a person would name it, from the labels and
/// annotations Flux and Argo CD put on what they apply.
fn gitops_source(object: &Value) -> Option<String> {
    let meta = object.get("metadata")?;
    let label = |key: &str| meta.get("labels")?.get(key)?.as_str();
    let annotation = |key: &str| meta.get("annotations")?.get(key)?.as_str();
    if let Some(name) = label("kustomize.toolkit.fluxcd.io/name") {
        let ns = label("kustomize.toolkit.fluxcd.io/namespace").unwrap_or("flux-system");
        return Some(format!("the Flux Kustomization {ns}/{name}"));
    }
    if let Some(name) = label("helm.toolkit.fluxcd.io/name") {
        let ns = label("helm.toolkit.fluxcd.io/namespace").unwrap_or("flux-system");
        return Some(format!("the Flux HelmRelease {ns}/{name}"));
    }
    if let Some(app) = label("argocd.argoproj.io/instance") {
        return Some(format!("the Argo CD Application {app}"));
    }
    if let Some(id) = annotation("argocd.argoproj.io/tracking-id") {
        let app = id.split(':').next().unwrap_or(id);
        return Some(format!("the Argo CD Application {app}"));
    }
    None
}

fn controller_owner(object: Option<&Value>) -> Option<SkipReason> {
    let owners = object?
        .get("metadata")?
        .get("ownerReferences")?
        .as_array()?;
    owners
        .iter()
        .find(|o| o.get("controller") == Some(&Value::Bool(true)))
        .map(|o| SkipReason::ControllerOwned {
            kind: o
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            name: o
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
        })
}

fn matches(rule: &Rule, write: &Write) -> bool {
    let any = |list: &[String], value: &str| list.iter().any(|p| p == "*" || p == value);
    let resource = &write.resource.resource;
    let resource_ok = any(&rule.resources, resource)
        || write
            .sub_resource
            .as_ref()
            .is_some_and(|sub| any(&rule.resources, &format!("{resource}/{sub}")));
    let namespace_ok = match &write.namespace {
        Some(ns) => any(&rule.namespaces, ns) && !rule.exclude_namespaces.contains(ns),
        None => rule.namespaces.iter().any(|p| p == "*"),
    };
    any(&rule.groups, &write.resource.group) && resource_ok && namespace_ok
}

/// Matches `value` against `pattern`, where `*` stands for any run of characters.
pub(crate) fn glob(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn write(group: &str, resource: &str, namespace: Option<&str>, user: &str) -> Write {
        Write {
            uid: "u".into(),
            operation: Operation::Create,
            kind: GroupVersionKind::gvk(group, "v1", "Thing"),
            resource: GroupVersionResource::gvr(group, "v1", resource),
            sub_resource: None,
            namespace: namespace.map(str::to_owned),
            name: "x".into(),
            user: user.into(),
            groups: vec!["system:authenticated".into()],
            dry_run: false,
            object: Some(json!({"metadata": {"name": "x"}})),
            old_object: None,
            from_cluster: false,
        }
    }

    fn policy(yaml: &str) -> Policy {
        Policy::new(&Config::from_yaml(yaml).unwrap())
    }

    #[test]
    fn defaults_record_a_person_and_skip_the_noise() {
        let p = policy("");
        let record = Decision::Record {
            rule: "default".into(),
            wait: Wait::None,
            then: Then::Allow,
            target: 0,
            record: crate::config::Record::Immediate,
        };
        let cases = [
            (write("", "configmaps", Some("a"), "alice"), record.clone()),
            (
                write("rbac.authorization.k8s.io", "clusterroles", None, "admin"),
                record.clone(),
            ),
            (
                write("", "events", Some("a"), "alice"),
                Decision::Skip(SkipReason::Noise("events".into())),
            ),
            (
                write("coordination.k8s.io", "leases", Some("a"), "alice"),
                Decision::Skip(SkipReason::Noise("leases".into())),
            ),
            (
                write(
                    "apiregistration.k8s.io",
                    "apiservices",
                    None,
                    "system:apiserver",
                ),
                Decision::Skip(SkipReason::Noise("apiservices".into())),
            ),
            (
                write(
                    "apps",
                    "deployments",
                    Some("a"),
                    "system:serviceaccount:flux-system:kustomize-controller",
                ),
                Decision::Skip(SkipReason::IgnoredUser(
                    "system:serviceaccount:flux-system:kustomize-controller".into(),
                )),
            ),
            (
                write("", "secrets", Some("a"), "alice"),
                Decision::Skip(SkipReason::SecretOmitted),
            ),
        ];
        for (w, expected) in cases {
            assert_eq!(
                decide(&w, &p),
                expected,
                "{} {}",
                w.resource.resource,
                w.user
            );
        }
    }

    #[test]
    fn a_rule_s_secrets_mode_decides_for_the_secrets_it_matches() {
        let p = policy(
            "secrets: omit\nsops:\n  identityFile: /k\nrules:\n- name: vault\n  namespaces: [vault]\n  secrets: sops\n- name: locked\n  namespaces: [locked]\n  secrets: deny\n- name: rest\n",
        );
        let secret = |ns: &str| write("", "secrets", Some(ns), "alice");
        assert!(
            matches!(decide(&secret("vault"), &p), Decision::Record { rule, .. } if rule == "vault")
        );
        assert_eq!(p.secret_mode("vault"), SecretMode::Sops);
        assert_eq!(
            decide(&secret("a"), &p),
            Decision::Skip(SkipReason::SecretOmitted)
        );
        assert_eq!(p.secret_mode("rest"), SecretMode::Omit);
        // `deny` on a rule refuses its Secrets, and only its own.
        let locked = secret("locked");
        let findings = guard(&locked, &decide(&locked, &p), &p);
        assert!(findings.iter().any(|f| f.rail == "secrets"), "{findings:?}");
        assert!(guard(&secret("a"), &decide(&secret("a"), &p), &p).is_empty());
        // The reconciler lists Secrets: one rule records them.
        assert!(p.records_resource("", "secrets"));
        assert!(!policy("rules:\n- name: all\n").records_resource("", "secrets"));
    }

    #[test]
    fn controller_owned_objects_are_skipped() {
        let mut w = write("apps", "replicasets", Some("a"), "alice");
        w.object = Some(
            json!({"metadata": {"ownerReferences": [{"kind": "Deployment", "name": "web", "controller": true}]}}),
        );
        assert_eq!(
            decide(&w, &policy("")),
            Decision::Skip(SkipReason::ControllerOwned {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
    }

    #[test]
    fn rules_pick_namespaces_groups_and_wait() {
        let p = policy(
            "rules:\n- name: prod\n  namespaces: [prod]\n  wait: commit\n- name: apps\n  groups: [apps]\n  resources: [deployments]\n  excludeNamespaces: [scratch]\n",
        );
        let decide_for = |ns: Option<&str>, group: &str, resource: &str| {
            decide(&write(group, resource, ns, "alice"), &p)
        };
        assert_eq!(
            decide_for(Some("prod"), "", "configmaps"),
            Decision::Record {
                rule: "prod".into(),
                wait: Wait::Commit,
                then: Then::Allow,
                target: 0,
                record: crate::config::Record::Immediate,
            }
        );
        assert_eq!(
            decide_for(Some("dev"), "apps", "deployments"),
            Decision::Record {
                rule: "apps".into(),
                wait: Wait::None,
                then: Then::Allow,
                target: 0,
                record: crate::config::Record::Immediate,
            }
        );
        assert_eq!(
            decide_for(Some("scratch"), "apps", "deployments"),
            Decision::Skip(SkipReason::NoRule)
        );
        assert_eq!(
            decide_for(Some("dev"), "", "configmaps"),
            Decision::Skip(SkipReason::NoRule)
        );
        assert_eq!(
            decide_for(None, "apps", "deployments"),
            Decision::Record {
                rule: "apps".into(),
                wait: Wait::None,
                then: Then::Allow,
                target: 0,
                record: crate::config::Record::Immediate,
            }
        );
    }

    #[test]
    fn scale_is_recorded_with_its_parent_and_status_is_not() {
        let p = policy("rules:\n- name: d\n  resources: [deployments]\n");
        let mut w = write("apps", "deployments", Some("a"), "alice");
        w.sub_resource = Some("scale".into());
        assert!(matches!(decide(&w, &p), Decision::Record { .. }));
        w.sub_resource = Some("status".into());
        assert_eq!(
            decide(&w, &p),
            Decision::Skip(SkipReason::Subresource("status".into()))
        );
    }

    #[test]
    fn gitops_sources_are_named_from_flux_and_argo_cd_markers() {
        let object = |meta: Value| serde_json::json!({ "metadata": meta });
        let cases = [
            (
                serde_json::json!({"labels": {"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}}),
                Some("the Flux Kustomization flux-system/apps"),
            ),
            (
                serde_json::json!({"labels": {"helm.toolkit.fluxcd.io/name": "redis", "helm.toolkit.fluxcd.io/namespace": "data"}}),
                Some("the Flux HelmRelease data/redis"),
            ),
            (
                serde_json::json!({"labels": {"argocd.argoproj.io/instance": "guestbook"}}),
                Some("the Argo CD Application guestbook"),
            ),
            (
                serde_json::json!({"annotations": {"argocd.argoproj.io/tracking-id": "guestbook:apps/Deployment:default/web"}}),
                Some("the Argo CD Application guestbook"),
            ),
            (serde_json::json!({"labels": {"app": "web"}}), None),
        ];
        for (meta, expected) in cases {
            assert_eq!(
                gitops_source(&object(meta.clone())).as_deref(),
                expected,
                "{meta}"
            );
        }
    }

    #[test]
    fn guard_rails_spare_ignored_users_and_name_what_they_found() {
        let p = policy(
            "secrets: deny\nguardRails:\n  gitopsManaged:\n    mode: enforce\n  maxObjectBytes:\n    mode: audit\n    limit: 10\n",
        );
        let mut w = write("", "secrets", Some("a"), "alice");
        w.object = Some(
            serde_json::json!({"metadata": {"name": "s", "labels": {"argocd.argoproj.io/instance": "app"}}}),
        );
        let found = guard(&w, &decide(&w, &p), &p);
        let rails: Vec<_> = found.iter().map(|f| (f.rail, f.mode)).collect();
        assert_eq!(
            rails,
            vec![
                ("gitopsManaged", RailMode::Enforce),
                ("maxObjectBytes", RailMode::Audit),
                ("secrets", RailMode::Enforce)
            ]
        );
        let controller = write(
            "",
            "secrets",
            Some("a"),
            "system:serviceaccount:kube-system:x",
        );
        assert!(guard(&controller, &decide(&controller, &p), &p).is_empty());
    }

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob("system:node:*", "system:node:n1"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b", "ab-c"));
        assert!(!glob("system:node:*", "system:nodes"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }
}
