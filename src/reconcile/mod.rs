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
    #[error("cannot write the snapshot: {0}")]
    Store(String),
    /// 410 Gone: the watch's resourceVersion is too old; list again.
    #[error("the watch of {resource} expired (410 Gone): relist")]
    Expired { resource: String },
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
    let mut pager = Pager::new(client, resource, namespace, limit);
    let mut listed = Listed {
        objects: 0,
        pages: 0,
        resource_version: None,
    };
    while let Some(page) = pager.next().await? {
        listed.pages += 1;
        listed.objects += page.len();
        on_page(page);
    }
    listed.resource_version = pager.resource_version;
    Ok(listed)
}

/// What a snapshot did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    pub resources: usize,
    pub objects: usize,
    /// Objects the rules record (the others are noise, controller-owned, ...).
    pub recorded: usize,
    pub commits: usize,
    /// Each listed resource with its list's resourceVersion, where its watch starts.
    pub watch_from: Vec<(Recorded, String)>,
}

/// Who the snapshot's writes are attributed to when the policy decides on them.
const RECONCILE_USER: &str = "system:kubescribe:reconcile";

/// Lists every recorded resource, a page at a time, and writes each object's file as
/// admission would have, one commit per page and repository, authored by kubescribe
/// itself. Files already equal make no commit. `layouts` and `stores` are in
/// [`crate::config::Config::targets`] order.
pub async fn snapshot(
    client: &kube::Client,
    policy: &Policy,
    layouts: &[crate::manifest::Layout],
    stores: &[crate::store::StoreHandle],
    page_size: u32,
) -> Result<SnapshotReport, ReconcileError> {
    let mut report = SnapshotReport::default();
    for resource in recorded_resources(client, policy).await? {
        let version = snapshot_resource(
            client,
            policy,
            layouts,
            stores,
            &resource,
            page_size,
            &mut report,
        )
        .await?;
        report.resources += 1;
        report.watch_from.push((resource, version));
    }
    Ok(report)
}

/// Lists and writes one resource (see [`snapshot`]); returns the list's
/// resourceVersion, where its watch starts.
pub async fn snapshot_resource(
    client: &kube::Client,
    policy: &Policy,
    layouts: &[crate::manifest::Layout],
    stores: &[crate::store::StoreHandle],
    resource: &Recorded,
    page_size: u32,
    report: &mut SnapshotReport,
) -> Result<String, ReconcileError> {
    // One page in memory at a time: each is written before the next is asked for.
    let mut pager = Pager::new(client, resource, None, page_size);
    while let Some(page) = pager.next().await? {
        report.objects += page.len();
        let mut by_target: Vec<Vec<crate::manifest::Change>> = vec![Vec::new(); stores.len()];
        for object in page {
            let write = write_for(resource, object);
            if let crate::policy::Decision::Record { target, .. } =
                crate::policy::decide(&write, policy)
            {
                match crate::manifest::plan(&write, &layouts[target], policy.secrets) {
                    Ok(change) => {
                        report.recorded += 1;
                        by_target[target].push(change);
                    }
                    Err(error) => {
                        tracing::warn!(%error, resource = %resource.resource, name = %write.name, "cannot turn a listed object into a file")
                    }
                }
            }
        }
        for (target, changes) in by_target.into_iter().enumerate() {
            if changes.is_empty() {
                continue;
            }
            let message = format!(
                "reconcile: snapshot of {} ({} objects)\n\nKubescribe-Reconcile: snapshot\n",
                resource.resource,
                changes.len()
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            match stores[target]
                .commit_bundle(changes, message, deadline)
                .await
            {
                Ok(crate::store::Outcome::Committed { .. }) => report.commits += 1,
                Ok(_) => {}
                Err(error) => {
                    return Err(ReconcileError::Store(format!(
                        "{error}; {}",
                        error.advice()
                    )))
                }
            }
        }
    }
    Ok(pager.resource_version.unwrap_or_default())
}

/// Keeps git following the cluster after the snapshot: watches every resource from
/// where its list ended, relisting one whose watch expired (410), and retrying
/// after a pause on other errors. Runs until the task is aborted.
pub async fn follow_forever(
    client: kube::Client,
    state: std::sync::Arc<crate::admission::AppState>,
    resource: Recorded,
    mut version: String,
    page_size: u32,
) {
    let layouts: Vec<crate::manifest::Layout> =
        state.targets.iter().map(|t| t.layout.clone()).collect();
    let stores: Vec<crate::store::StoreHandle> =
        state.targets.iter().map(|t| t.store.clone()).collect();
    loop {
        let started = std::time::Instant::now();
        match follow(
            &client,
            &state.policy,
            &layouts,
            &stores,
            &resource,
            &version,
            290,
        )
        .await
        {
            Ok(followed) => {
                let idle = followed.written + followed.confirmed + followed.bookmarks == 0;
                version = followed.resource_version;
                // A server that ends watches at once must not make this spin.
                if idle && started.elapsed() < std::time::Duration::from_secs(1) {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
            Err(ReconcileError::Expired { .. }) => {
                tracing::info!(resource = %resource.resource, "watch expired (410); relisting");
                let mut report = SnapshotReport::default();
                match snapshot_resource(
                    &client,
                    &state.policy,
                    &layouts,
                    &stores,
                    &resource,
                    page_size,
                    &mut report,
                )
                .await
                {
                    Ok(relisted) => version = relisted,
                    Err(error) => {
                        tracing::warn!(%error, resource = %resource.resource, "relist failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, resource = %resource.resource, "watch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    }
}

/// The write admission would have seen for a listed object.
fn write_for(resource: &Recorded, object: serde_json::Value) -> crate::policy::Write {
    use kube_core::{GroupVersionKind, GroupVersionResource};
    let meta = |key: &str| {
        object
            .pointer(&format!("/metadata/{key}"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let namespace = resource.namespaced.then(|| meta("namespace"));
    crate::policy::Write {
        uid: format!("reconcile-{}", meta("uid")),
        operation: kube_core::admission::Operation::Create,
        kind: GroupVersionKind::gvk(&resource.group, &resource.version, &resource.kind),
        resource: GroupVersionResource::gvr(&resource.group, &resource.version, &resource.resource),
        sub_resource: None,
        namespace,
        name: meta("name"),
        user: RECONCILE_USER.to_owned(),
        groups: Vec::new(),
        dry_run: false,
        object: Some(object),
        old_object: None,
    }
}

/// Pages through a list with `limit` and `continue`.
pub struct Pager<'a> {
    api: kube::Api<kube::api::DynamicObject>,
    resource: &'a Recorded,
    params: Option<kube::api::ListParams>,
    /// The list's resourceVersion so far, where a watch continues from.
    pub resource_version: Option<String>,
}

impl<'a> Pager<'a> {
    pub fn new(
        client: &kube::Client,
        resource: &'a Recorded,
        namespace: Option<&str>,
        limit: u32,
    ) -> Self {
        let ar = resource.api_resource();
        let api = match (namespace, resource.namespaced) {
            (Some(ns), true) => kube::Api::namespaced_with(client.clone(), ns, &ar),
            _ => kube::Api::all_with(client.clone(), &ar),
        };
        Self {
            api,
            resource,
            params: Some(kube::api::ListParams::default().limit(limit)),
            resource_version: None,
        }
    }

    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Page>, ReconcileError> {
        let Some(params) = self.params.take() else {
            return Ok(None);
        };
        let list = self
            .api
            .list(&params)
            .await
            .map_err(|e| ReconcileError::List {
                resource: self.resource.resource.clone(),
                reason: e.to_string(),
            })?;
        self.resource_version = list.metadata.resource_version.clone();
        if let Some(token) = list.metadata.continue_.filter(|c| !c.is_empty()) {
            self.params = Some(params.continue_token(&token));
        }
        let ar = self.resource.api_resource();
        Ok(Some(
            list.items
                .into_iter()
                .map(|mut object| {
                    // The kind is on the list, not on its items.
                    object.types = Some(kube::api::TypeMeta {
                        api_version: ar.api_version.clone(),
                        kind: ar.kind.clone(),
                    });
                    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
                })
                .collect(),
        ))
    }
}

/// What following a watch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// Changes git did not have yet, committed as `reconcile:` commits.
    pub written: usize,
    /// Changes git already had (admission recorded them): confirmed.
    pub confirmed: usize,
    pub bookmarks: usize,
    /// Where to watch from next.
    pub resource_version: String,
}

/// Watches `resource` from `resource_version` (with bookmarks) until the server ends
/// the watch, writing every change git does not have yet: objects created or changed
/// without an admission record (kubescribe was down, the webhook failed open), and
/// deletions behind its back (garbage collection). Each is its own commit, authored
/// by kubescribe, saying so. `Expired` (410 Gone) means the caller must relist.
pub async fn follow(
    client: &kube::Client,
    policy: &Policy,
    layouts: &[crate::manifest::Layout],
    stores: &[crate::store::StoreHandle],
    resource: &Recorded,
    resource_version: &str,
    timeout_seconds: u32,
) -> Result<Followed, ReconcileError> {
    use futures::TryStreamExt as _;
    use kube::api::WatchEvent;
    let ar = resource.api_resource();
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    // Bookmarks are on by default.
    let params = kube::api::WatchParams::default().timeout(timeout_seconds);
    let watch_error = |e: &dyn std::fmt::Display| ReconcileError::List {
        resource: resource.resource.clone(),
        reason: format!("watch: {e}"),
    };
    let stream = api
        .watch(&params, resource_version)
        .await
        .map_err(|e| watch_error(&e))?;
    futures::pin_mut!(stream);
    let mut followed = Followed {
        resource_version: resource_version.to_owned(),
        ..Followed::default()
    };
    while let Some(event) = stream.try_next().await.map_err(|e| watch_error(&e))? {
        use kube_core::admission::Operation;
        let (object, operation) = match event {
            WatchEvent::Added(object) => (object, Operation::Create),
            WatchEvent::Modified(object) => (object, Operation::Update),
            WatchEvent::Deleted(object) => (object, Operation::Delete),
            WatchEvent::Bookmark(bookmark) => {
                followed.bookmarks += 1;
                followed.resource_version = bookmark.metadata.resource_version;
                continue;
            }
            WatchEvent::Error(status) if status.code == 410 => {
                return Err(ReconcileError::Expired {
                    resource: resource.resource.clone(),
                });
            }
            WatchEvent::Error(status) => return Err(watch_error(&status.message)),
        };
        if let Some(version) = object.metadata.resource_version.clone() {
            followed.resource_version = version;
        }
        let mut object = object;
        object.types = Some(kube::api::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
        let json = serde_json::to_value(object).unwrap_or(serde_json::Value::Null);
        let mut write = write_for(resource, json);
        write.operation = operation.clone();
        if operation == Operation::Delete {
            write.old_object = write.object.take();
        }
        let crate::policy::Decision::Record { target, .. } = crate::policy::decide(&write, policy)
        else {
            continue;
        };
        let change = match crate::manifest::plan(&write, &layouts[target], policy.secrets) {
            Ok(change) => change,
            Err(error) => {
                tracing::warn!(%error, name = %write.name, "cannot turn a watched object into a file");
                continue;
            }
        };
        let message = format!(
            "reconcile: {verb} {api_version} {kind} {object}\n\nThe cluster has this, and git did not: admission never recorded it (kubescribe was down, the webhook failed open, or the change came from inside the cluster, such as garbage collection).\n\nKubescribe-Reconcile: watch\nResource-Version: {rv}\n",
            verb = change.verb.as_str(),
            api_version = change.api_version,
            kind = change.kind,
            object = change.object_ref(),
            rv = followed.resource_version,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        match stores[target]
            .commit_bundle(vec![change], message, deadline)
            .await
        {
            Ok(crate::store::Outcome::Committed { .. }) => followed.written += 1,
            Ok(_) => followed.confirmed += 1,
            Err(error) => {
                return Err(ReconcileError::Store(format!(
                    "{error}; {}",
                    error.advice()
                )))
            }
        }
    }
    Ok(followed)
}
