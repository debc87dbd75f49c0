//! Reconcile: make git equal to what the cluster really persisted (issue #6).
//!
//! Built so far: the Kubernetes client (a kubeconfig, or the pod's service account)
//! and discovery, which resolves the config's rules to the concrete resources to
//! list and watch, CRDs included. The snapshot, the watch and phantom detection
//! build on these.
//!
//! Invariant: a resource is reconciled exactly when a write to it would be recorded
//! by some rule ([`crate::policy::Policy::records_resource`]), so admission and
//! reconcile never disagree on what belongs in git.

use std::path::Path;

use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};

use crate::policy::Policy;

/// Talking to the Kubernetes API failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(String),
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error("listing {resource} failed: {reason}")]
    List { resource: String, reason: String },
}

/// A client for the cluster: from `kubeconfig` when given, else inferred (the pod's
/// service account in a cluster, `$KUBECONFIG` or `~/.kube/config` outside).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ReconcileError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                ReconcileError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ReconcileError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ReconcileError::Client(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| ReconcileError::Client(e.to_string()))
}

/// One resource to list and watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural, as in the API path.
    pub resource: String,
    pub namespaced: bool,
}

impl Recorded {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: if self.group.is_empty() {
                self.version.clone()
            } else {
                format!("{}/{}", self.group, self.version)
            },
            kind: self.kind.clone(),
            plural: self.resource.clone(),
        }
    }
}

/// The resources the rules record, at each group's preferred version, sorted by
/// group and resource. Only resources that can be listed and watched count;
/// subresources never do (a scale write is recorded through its parent).
pub async fn recorded_resources(
    client: &kube::Client,
    policy: &Policy,
) -> Result<Vec<Recorded>, ReconcileError> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| ReconcileError::Discovery(e.to_string()))?;
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            if let Some(recorded) = select(&resource, &capabilities, policy) {
                found.push(recorded);
            }
        }
    }
    found.sort_by(|a, b| (&a.group, &a.resource).cmp(&(&b.group, &b.resource)));
    Ok(found)
}

fn select(resource: &ApiResource, caps: &ApiCapabilities, policy: &Policy) -> Option<Recorded> {
    if resource.plural.contains('/')
        || !caps.supports_operation(verbs::LIST)
        || !caps.supports_operation(verbs::WATCH)
        || !policy.records_resource(&resource.group, &resource.plural)
    {
        return None;
    }
    Some(Recorded {
        group: resource.group.clone(),
        version: resource.version.clone(),
        kind: resource.kind.clone(),
        resource: resource.plural.clone(),
        namespaced: caps.scope == Scope::Namespaced,
    })
}

/// One page of a list: the objects as the API sent them (JSON), in order.
pub type Page = Vec<serde_json::Value>;

/// What a paged list saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub objects: usize,
    pub pages: usize,
    /// The list's resourceVersion, where a watch continues from.
    pub resource_version: Option<String>,
}

/// Lists `resource` (in `namespace`, or everywhere) `limit` objects at a time,
/// handing each page to `on_page` before asking for the next, so memory holds one
/// page however big the cluster is.
pub async fn list_pages(
    client: &kube::Client,
    resource: &Recorded,
    namespace: Option<&str>,
    limit: u32,
    mut on_page: impl FnMut(Page),
) -> Result<Listed, ReconcileError> {
    let ar = resource.api_resource();
    let api: kube::Api<kube::api::DynamicObject> = match (namespace, resource.namespaced) {
        (Some(ns), true) => kube::Api::namespaced_with(client.clone(), ns, &ar),
        _ => kube::Api::all_with(client.clone(), &ar),
    };
    let mut params = kube::api::ListParams::default().limit(limit);
    let mut listed = Listed {
        objects: 0,
        pages: 0,
        resource_version: None,
    };
    loop {
        let list = api.list(&params).await.map_err(|e| {
            ReconcileError::Discovery(format!("listing {}: {e}", resource.resource))
        })?;
        listed.pages += 1;
        listed.objects += list.items.len();
        listed.resource_version = list.metadata.resource_version.clone();
        let page = list
            .items
            .into_iter()
            .map(|mut object| {
                // The kind is on the list, not on its items.
                object.types = Some(kube::api::TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
            })
            .collect();
        on_page(page);
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(listed),
        }
    }
}
