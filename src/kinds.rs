//! What kubescribe knows of Kubernetes kinds without asking a cluster: the resource
//! (plural) and scope of the built-in kinds, and which API groups are CRDs'. Used
//! where no discovery is at hand (`kubescribe check`, the index of a repository).

/// Whether a group is a CRD's (a `.` in it, not one of Kubernetes' `*.k8s.io`): only
/// the cluster knows the scope of its kinds.
pub(crate) fn custom_group(group: &str) -> bool {
    group.contains('.') && !group.ends_with(".k8s.io")
}

/// The resource (plural) of a kind and whether it is namespaced, as discovery would
/// say for the built-in kinds; other kinds are taken as namespaced with the usual
/// English plural, which is how CRDs are nearly always named.
pub(crate) fn resource_of(group: &str, kind: &str) -> (String, bool) {
    const CLUSTER_SCOPED: &[(&str, &str)] = &[
        ("", "Namespace"),
        ("", "Node"),
        ("", "PersistentVolume"),
        ("", "ComponentStatus"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("apiregistration.k8s.io", "APIService"),
        (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
        ),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
        ),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
        (
            "admissionregistration.k8s.io",
            "ValidatingAdmissionPolicyBinding",
        ),
        ("storage.k8s.io", "StorageClass"),
        ("storage.k8s.io", "CSIDriver"),
        ("storage.k8s.io", "CSINode"),
        ("storage.k8s.io", "VolumeAttachment"),
        ("scheduling.k8s.io", "PriorityClass"),
        ("node.k8s.io", "RuntimeClass"),
        ("networking.k8s.io", "IngressClass"),
        ("certificates.k8s.io", "CertificateSigningRequest"),
        ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
        ("storage.k8s.io", "VolumeAttributesClass"),
        ("networking.k8s.io", "ServiceCIDR"),
        ("networking.k8s.io", "IPAddress"),
        ("resource.k8s.io", "DeviceClass"),
        ("certificates.k8s.io", "ClusterTrustBundle"),
        ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
        (
            "admissionregistration.k8s.io",
            "MutatingAdmissionPolicyBinding",
        ),
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ];
    const IRREGULAR: &[(&str, &str)] = &[("Endpoints", "endpoints")];
    let namespaced = !CLUSTER_SCOPED
        .iter()
        .any(|(g, k)| *g == group && *k == kind);
    if let Some((_, plural)) = IRREGULAR.iter().find(|(k, _)| *k == kind) {
        return ((*plural).to_owned(), namespaced);
    }
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s')
        || lower.ends_with('x')
        || lower.ends_with("ch")
        || lower.ends_with("sh")
    {
        format!("{lower}es")
    } else if lower.ends_with('y')
        && !lower.ends_with("ay")
        && !lower.ends_with("ey")
        && !lower.ends_with("oy")
    {
        format!("{}ies", &lower[..lower.len() - 1])
    } else {
        format!("{lower}s")
    };
    (plural, namespaced)
}

/// The kind of a built-in resource with a `scale` subresource: a scale write names
/// the Scale, and the document to edit is the parent's.
pub(crate) fn scalable_kind(group: &str, resource: &str) -> Option<&'static str> {
    match (group, resource) {
        ("apps", "deployments") => Some("Deployment"),
        ("apps", "statefulsets") => Some("StatefulSet"),
        ("apps", "replicasets") => Some("ReplicaSet"),
        ("", "replicationcontrollers") => Some("ReplicationController"),
        _ => None,
    }
}
