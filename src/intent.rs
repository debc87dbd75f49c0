//! Written by a person, or by the control plane? One answer for admission, the
//! snapshot, the watch, `kubescribe check` and prune (they all ask through
//! [`crate::policy::decide`]), from what the object itself says, since the
//! reconciler cannot see who wrote it:
//! - its namespace is one of the control plane's (`ignore.namespaces`:
//!   `kube-system`, `kube-public`, `kube-node-lease`);
//! - it carries the API server's bootstrap label (`kubernetes.io/bootstrapping:
//!   rbac-defaults`);
//! - it is one of the objects every namespace gets (the `default` ServiceAccount, the
//!   `kube-root-ca.crt` ConfigMap), and no person's field manager touched it (in an
//!   admission request, its user, already checked, is a person: theirs);
//! - every field manager in its `managedFields` is the control plane's
//!   (`ignore.managers`).
//!
//! Invariant: an object a person wrote to (a field manager that is not the control
//! plane's, such as `kubectl-edit` adding `imagePullSecrets` to a `default`
//! ServiceAccount) is never called the control plane's, except in the control
//! plane's namespaces. Fields a controller fills in inside a person's object are the
//! sanitiser's job (`manifest::sanitize`).

use serde_json::Value;

use crate::config::IgnoreConfig;

/// Why an object is the control plane's, not a person's; `None` when a person wrote
/// it (or may have). `namespace` is the write's namespace; `from_cluster`: the object
/// is the cluster's state (a list or watch), not a request whose user, a person's
/// (`ignore.users` already passed), wrote it.
pub fn control_plane(
    object: Option<&Value>,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    from_cluster: bool,
    ignore: &IgnoreConfig,
) -> Option<String> {
    if !ignore.control_plane {
        return None;
    }
    if let Some(namespace) = namespace.filter(|ns| ignore.namespaces.iter().any(|n| n == ns)) {
        return Some(format!("namespace {namespace} is the control plane's"));
    }
    let object = object?;
    let meta = object.get("metadata")?;
    let label = |key| {
        meta.get("labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
    };
    if label("kubernetes.io/bootstrapping") == Some("rbac-defaults") {
        return Some("it is the API server's bootstrap policy".to_owned());
    }
    // Per admission request: no allocation unless the answer is "control plane".
    let managers = || {
        meta.get("managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("manager").and_then(Value::as_str))
    };
    let control = |manager: &str| {
        ignore
            .managers
            .iter()
            .any(|p| crate::policy::glob(p, manager))
    };
    let a_person_wrote = managers().any(|m| !control(m));
    if a_person_wrote {
        return None;
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let every_namespace_gets = group.is_empty()
        && ((resource == "serviceaccounts" && name == "default")
            || (resource == "configmaps" && name == "kube-root-ca.crt"));
    // A request's user, a person's, decides for it (and its object comes without
    // field managers); the cluster's own copy, some of which carry no managers at
    // all (kube-controller-manager's on 1.20), is the control plane's.
    if every_namespace_gets && from_cluster {
        return Some(format!("every namespace gets {resource}/{name}"));
    }
    if managers().next().is_some() {
        let mut names: Vec<&str> = managers().collect();
        names.sort_unstable();
        names.dedup();
        return Some(format!(
            "only the control plane wrote it (field managers: {})",
            names.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn managed(managers: &[&str]) -> Value {
        Value::Array(
            managers
                .iter()
                .map(|m| json!({"manager": m, "operation": "Update"}))
                .collect(),
        )
    }

    fn object(name: &str, labels: Value, managers: &[&str]) -> Value {
        json!({"metadata": {"name": name, "labels": labels, "managedFields": managed(managers)}})
    }

    #[test]
    fn control_plane_objects_and_people_s_are_told_apart() {
        let ignore = IgnoreConfig::default();
        let none = json!({});
        let cases: [(&str, &str, Option<&str>, Value, bool); 12] = [
            // The control plane's namespaces, whoever writes.
            (
                "",
                "configmaps",
                Some("kube-system"),
                object("x", none.clone(), &["kubectl-create"]),
                true,
            ),
            (
                "",
                "configmaps",
                Some("kube-public"),
                object("cluster-info", none.clone(), &["kube-apiserver"]),
                true,
            ),
            // The bootstrap policy.
            (
                "rbac.authorization.k8s.io",
                "clusterroles",
                None,
                object(
                    "edit",
                    json!({"kubernetes.io/bootstrapping": "rbac-defaults"}),
                    &["kube-apiserver"],
                ),
                true,
            ),
            // What every namespace gets...
            (
                "",
                "serviceaccounts",
                Some("team-a"),
                object("default", none.clone(), &["kube-controller-manager"]),
                true,
            ),
            (
                "",
                "configmaps",
                Some("team-a"),
                object(
                    "kube-root-ca.crt",
                    none.clone(),
                    &["kube-controller-manager"],
                ),
                true,
            ),
            // ...unless a person wrote to it: `kubectl edit` adding imagePullSecrets.
            (
                "",
                "serviceaccounts",
                Some("team-a"),
                object(
                    "default",
                    none.clone(),
                    &["kube-controller-manager", "kubectl-edit"],
                ),
                false,
            ),
            // Written only by controllers: the APF configuration, system PriorityClasses.
            (
                "flowcontrol.apiserver.k8s.io",
                "flowschemas",
                None,
                object(
                    "system-leader-election",
                    none.clone(),
                    &["api-priority-and-fairness-config-producer-v1"],
                ),
                true,
            ),
            (
                "scheduling.k8s.io",
                "priorityclasses",
                None,
                object("system-node-critical", none.clone(), &["kube-apiserver"]),
                true,
            ),
            // A person's objects.
            (
                "apps",
                "deployments",
                Some("team-a"),
                object(
                    "web",
                    none.clone(),
                    &["kubectl-client-side-apply", "kube-controller-manager"],
                ),
                false,
            ),
            (
                "",
                "serviceaccounts",
                Some("team-a"),
                object("ci", none.clone(), &["kubectl-create"]),
                false,
            ),
            // No managedFields: not judged by them...
            (
                "",
                "configmaps",
                Some("team-a"),
                json!({"metadata": {"name": "app"}}),
                false,
            ),
            // ...but what every namespace gets is the control plane's all the same
            // (kube-controller-manager's carry no managers on 1.20).
            (
                "",
                "serviceaccounts",
                Some("team-a"),
                json!({"metadata": {"name": "default"}}),
                true,
            ),
        ];
        for (group, resource, namespace, object, expected) in cases {
            let found = control_plane(Some(&object), group, resource, namespace, true, &ignore);
            assert_eq!(found.is_some(), expected, "{resource} {object}: {found:?}");
        }
        // A request's user is a person's (ignored users never get here): their write
        // to the `default` ServiceAccount is theirs; the control plane's namespaces
        // and bootstrap policy stay the control plane's whoever writes.
        let request: [(&str, &str, Option<&str>, Value, bool); 3] = [
            (
                "",
                "serviceaccounts",
                Some("team-a"),
                json!({"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "r"}]}),
                false,
            ),
            (
                "",
                "configmaps",
                Some("kube-system"),
                json!({"metadata": {"name": "x"}}),
                true,
            ),
            (
                "rbac.authorization.k8s.io",
                "clusterroles",
                None,
                json!({"metadata": {"name": "edit", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}}),
                true,
            ),
        ];
        for (group, resource, namespace, object, expected) in request {
            let found = control_plane(Some(&object), group, resource, namespace, false, &ignore);
            assert_eq!(found.is_some(), expected, "{resource} {object}: {found:?}");
        }
        let everything = IgnoreConfig {
            control_plane: false,
            ..IgnoreConfig::default()
        };
        assert!(control_plane(
            None,
            "",
            "configmaps",
            Some("kube-system"),
            true,
            &everything
        )
        .is_none());
    }
}
