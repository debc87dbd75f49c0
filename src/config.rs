//! The configuration: one YAML file, with flags and environment variables on top.
//!
//! Every field has a default, so an empty file (or no file) is a working
//! configuration: listen on 127.0.0.1:8443, a dev certificate under `./certs/dev`, and a
//! bare repository at `./data/repo.git` on branch `main`, recording every write that is
//! not noise. Unknown keys are rejected so a typo never silently changes what is
//! recorded. docs/configuration.md documents every field; keep the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Reading the configuration failed. Fix the file and restart; nothing is retried.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    /// Where kubescribe keeps its state; the repository is `<dataDir>/repo.git`.
    pub data_dir: PathBuf,
    /// The default repository: rules without `repository:` record here.
    pub repository: RepositoryConfig,
    /// More repositories (or branches) that rules can send writes to by name. Each
    /// gets its own local repository, writer and pusher.
    pub repositories: std::collections::BTreeMap<String, RepositoryConfig>,
    pub author: AuthorConfig,
    pub committer: CommitterConfig,
    pub store: StoreConfig,
    pub reconcile: ReconcileConfig,
    pub secrets: SecretMode,
    /// How Secrets are encrypted under `secrets: sops`.
    pub sops: SopsConfig,
    pub ignore: IgnoreConfig,
    pub guard_rails: GuardRails,
    /// `/mutate` stamps recorded objects with `kubescribe.io/git-path` and
    /// `kubescribe.io/git-repo` (never recorded in git themselves).
    pub annotate: bool,
    pub rules: Vec<Rule>,
    /// Fault points for tests; never read from a file.
    #[serde(skip)]
    #[doc(hidden)]
    pub faults: crate::fault::Faults,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            data_dir: PathBuf::from("data"),
            repository: RepositoryConfig::default(),
            repositories: std::collections::BTreeMap::new(),
            author: AuthorConfig::default(),
            committer: CommitterConfig::default(),
            store: StoreConfig::default(),
            reconcile: ReconcileConfig::default(),
            secrets: SecretMode::Omit,
            sops: SopsConfig::default(),
            ignore: IgnoreConfig::default(),
            guard_rails: GuardRails::default(),
            annotate: false,
            rules: vec![Rule::default()],
            faults: crate::fault::Faults::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest accepted request body. kube-apiserver sends up to about 3 MiB per
    /// object and an UPDATE carries two of them.
    pub max_body_bytes: usize,
    /// Serving certificate and key (PEM). When both are unset a dev CA and certificate
    /// are created under `devCertDir`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub dev_cert_dir: PathBuf,
    /// Used when the apiserver sends no `?timeout=` (its own default is 10s).
    #[serde(with = "duration_str")]
    pub default_timeout: std::time::Duration,
    /// Kept free at the end of the apiserver's deadline so our answer arrives in time.
    #[serde(with = "duration_str")]
    pub deadline_margin: std::time::Duration,
    /// How often the certificate and key files are checked for a rotated pair.
    #[serde(with = "duration_str")]
    pub cert_reload_interval: std::time::Duration,
    /// Who may call `/validate` and `/mutate` (docs/security.md).
    pub client_auth: ClientAuthConfig,
    /// How long a client has for the TLS handshake.
    #[serde(with = "duration_str")]
    pub handshake_timeout: std::time::Duration,
    /// HTTP/1.1: how long a client has to send a request's headers.
    #[serde(with = "duration_str")]
    pub header_read_timeout: std::time::Duration,
    /// How long a request's body may take to arrive once its headers are in.
    #[serde(with = "duration_str")]
    pub request_timeout: std::time::Duration,
    /// Open client connections; more are closed before their handshake.
    pub max_connections: usize,
    /// `/validate` and `/mutate` requests handled at once; more wait, then 503.
    pub max_in_flight: usize,
    /// The memory those requests may take together, estimated as 16 times each
    /// body's length; more wait, then 503.
    pub max_in_flight_bytes: usize,
    /// Serve `/metrics` (and `/healthz`, `/readyz`) over plain HTTP on this address
    /// instead of on the webhook's port.
    pub metrics_listen: Option<SocketAddr>,
}

/// How callers of the recording endpoints prove they are the apiserver: a client
/// certificate signed by `caFile`, or the bearer token in `tokenFile`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CAs that sign the apiserver's client certificate.
    pub ca_file: Option<PathBuf>,
    /// Accepted certificate names (CN or DNS SAN); empty: any certificate the CA signed.
    pub allowed_names: Vec<String>,
    /// A file holding the bearer token the apiserver sends.
    pub token_file: Option<PathBuf>,
    /// Serve a configuration that can change the cluster through git (a remote, or a
    /// `then: deny` rule) without authenticating callers. Logged at every start.
    pub allow_unauthenticated: bool,
}

impl ClientAuthConfig {
    pub fn authenticates(&self) -> bool {
        self.ca_file.is_some() || self.token_file.is_some()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            max_body_bytes: 8 * 1024 * 1024,
            tls_cert: None,
            tls_key: None,
            dev_cert_dir: PathBuf::from("certs/dev"),
            default_timeout: std::time::Duration::from_secs(10),
            deadline_margin: std::time::Duration::from_millis(500),
            cert_reload_interval: std::time::Duration::from_secs(10),
            client_auth: ClientAuthConfig::default(),
            handshake_timeout: std::time::Duration::from_secs(10),
            header_read_timeout: std::time::Duration::from_secs(10),
            // The apiserver waits at most 30 s for a webhook.
            request_timeout: std::time::Duration::from_secs(30),
            // The apiserver multiplexes its calls over a few HTTP/2 connections.
            max_connections: 1024,
            max_in_flight: 64,
            // Half the chart's 256 Mi limit: one maximum-size (8 MiB) body at a
            // time, hundreds of ordinary ones. docs/performance.md has the figures.
            max_in_flight_bytes: 128 << 20,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// Local bare repository; defaults to `<dataDir>/repo.git` for the default
    /// repository and `<dataDir>/<name>.git` for a named one.
    pub path: Option<PathBuf>,
    pub branch: String,
    /// Directory inside the repository under which every file is placed.
    pub root: String,
    /// Placeholders: `{namespace}` (`_cluster` when cluster-scoped), `{group}` (`core`
    /// for the core group), `{resource}`, `{name}`.
    pub path_template: String,
    /// Where the branch is pushed. Without it, commits stay in the local repository.
    pub remote: Option<RemoteConfig>,
    /// Objects the branch already declares are edited where they are declared.
    pub in_place: InPlaceConfig,
}

/// Editing an existing GitOps repository in place (issue 15): an object the branch
/// already declares (in `apps/web/deployment.yaml`, through kustomizations, Flux
/// Kustomizations or Argo CD Applications) is edited in that document; anything else
/// goes where `pathTemplate` says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InPlaceConfig {
    /// Off by default: the canonical layout stays the default for an empty
    /// repository and for capture-only use.
    pub enabled: bool,
    /// Directory of the repository (no trailing slash) → the namespace of the
    /// documents under it that nothing else gives one; the longest match wins.
    pub namespaces: BTreeMap<String, String>,
    /// What to do with an object a kustomization changes on its way to the cluster
    /// (patches, `images`, `replicas`), or whose document several overlays share.
    pub overlay: Overlay,
    /// Where a new object no document declares goes.
    pub new_objects: NewObjects,
    /// The directory of this cluster's entry point in a repository of several
    /// clusters (`clusters/prod`): only what the Flux Kustomizations and Argo CD
    /// Applications in it reach is this cluster's.
    pub cluster: Option<String>,
}

/// See [`InPlaceConfig::new_objects`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NewObjects {
    /// Beside the other objects of its namespace ([`crate::declared::Index::home`]),
    /// named `<name>-<kind>.yaml`, and listed in that directory's kustomization; where
    /// the path template says when the namespace has no object in the repository yet
    /// (and for cluster-scoped objects).
    #[default]
    Namespace,
    /// Where the path template says.
    PathTemplate,
}

/// See [`InPlaceConfig::overlay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Overlay {
    /// Not recorded; the answer names the kustomizations to change instead.
    #[default]
    Deny,
    /// The base document is edited, for every overlay that renders it.
    Base,
    /// A field an overlay sets is edited there (its `images` or `replicas` entry, or
    /// the patch file that sets it); any other field in the base document, when that
    /// document renders this object alone ([`crate::declared::overlay`]).
    Patch,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        Self {
            path: None,
            branch: "main".to_owned(),
            root: String::new(),
            path_template: "{namespace}/{group}/{resource}/{name}.yaml".to_owned(),
            remote: None,
            in_place: InPlaceConfig::default(),
        }
    }
}

/// A git remote and how to authenticate to it. Credentials are read from files (a
/// mounted Secret) at every push and fetch, so a rotated Secret is used without a
/// restart, and they never appear on a command line or in a log.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// `ssh://git@host/org/repo.git`, `git@host:org/repo.git`, `https://host/repo.git`,
    /// `http://`, `git://` or `file:///path/repo.git`. Never put a password in it.
    pub url: String,
    /// ssh: the private key.
    pub ssh_key_file: Option<PathBuf>,
    /// ssh: the host keys to trust (required for ssh; an unknown host key fails).
    pub known_hosts_file: Option<PathBuf>,
    /// https: the user name for basic auth (default `kubescribe`, which GitHub,
    /// GitLab and Gitea accept with a token).
    pub username: Option<String>,
    pub username_file: Option<PathBuf>,
    /// https: the password or access token.
    pub password_file: Option<PathBuf>,
    /// https: the same as `passwordFile`, for a token.
    pub token_file: Option<PathBuf>,
    /// https: CA bundle (PEM) to verify the server with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Longest a single push or fetch may take.
    #[serde(with = "duration_str")]
    pub timeout: std::time::Duration,
    /// Longest pause between retries of a failing push.
    #[serde(with = "duration_str")]
    pub max_backoff: std::time::Duration,
    /// How an http(s) remote is pushed to: `builtin` (kubescribe speaks git's smart
    /// HTTP protocol itself, on one kept-alive connection) or `git` (the `git` CLI,
    /// as for ssh, git:// and file:// remotes).
    pub transport: Transport,
}

/// See [`RemoteConfig::transport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Transport {
    #[default]
    Builtin,
    Git,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            ssh_key_file: None,
            known_hosts_file: None,
            username: None,
            username_file: None,
            password_file: None,
            token_file: None,
            ca_file: None,
            timeout: std::time::Duration::from_secs(30),
            max_backoff: std::time::Duration::from_secs(30),
            transport: Transport::Builtin,
        }
    }
}

impl RemoteConfig {
    /// Whether git reaches this URL over ssh (so known_hosts applies).
    pub fn is_ssh(&self) -> bool {
        let url = self.url.as_str();
        if url.starts_with("ssh://") || url.starts_with("git+ssh://") {
            return true;
        }
        // scp-like `user@host:path`: a colon before any slash, and no scheme.
        !url.contains("://")
            && url
                .find(':')
                .is_some_and(|colon| !url[..colon].contains('/'))
    }

    /// The URL with any user info's password removed, for messages and logs.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// The user info of `scheme://user@host/...`, if any.
fn url_user(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..authority_end].rfind('@').map(|at| &rest[..at])
}

/// Drops a password from `scheme://user:password@host/...`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthorConfig {
    /// Authors are `<username> <<username>@<emailDomain>>`; a username that already is
    /// an e-mail address is used as it is.
    pub email_domain: String,
}

impl Default for AuthorConfig {
    fn default() -> Self {
        Self {
            email_domain: "kubernetes.local".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CommitterConfig {
    pub name: String,
    pub email: String,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            name: "kubescribe".to_owned(),
            email: "kubescribe@localhost".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Changes waiting for the writer. When it is full, admission waits for room until
    /// its deadline.
    pub queue_capacity: usize,
    /// The file bytes the queue may hold together: a change waits for room (or,
    /// when nobody waits for it, is not queued) like for a place in the queue.
    pub queue_bytes: usize,
    /// Most changes turned into commits before one sync covers them.
    pub max_batch: usize,
    /// How long the writer gathers changes that nobody waits for (`wait: none`)
    /// before it commits them; a waiting change is committed at once.
    #[serde(with = "duration_str")]
    pub linger: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            // 16 changes of the largest object the apiserver stores (~3 MiB as YAML).
            queue_bytes: 48 << 20,
            max_batch: 1024,
            linger: std::time::Duration::from_millis(100),
        }
    }
}

/// The reconciler: at start, a snapshot of every recorded resource from the cluster
/// (docs/architecture.md). Off by default: kubescribe then needs no API access.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReconcileConfig {
    pub enabled: bool,
    /// A kubeconfig; without one, the pod's service account (or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Objects per list page (and at most per snapshot commit).
    pub page_size: u32,
    /// How long an admitted change may go without the watch confirming it was
    /// persisted before the cluster's object is read back (a phantom check).
    #[serde(with = "duration_str")]
    pub confirm_window: std::time::Duration,
    /// How often discovery runs again, to follow CRDs added or removed.
    #[serde(with = "duration_str")]
    pub discovery_interval: std::time::Duration,
    /// How long one watch request lasts (its `timeoutSeconds`) before it is resumed
    /// from its last resourceVersion.
    #[serde(with = "duration_str")]
    pub watch_timeout: std::time::Duration,
    /// At start, remove (in one commit) the files of the control plane's own objects
    /// that kubescribe wrote before (see [`crate::intent`]). Unset: only in
    /// repositories kubescribe started empty, where no GitOps tool applied such files;
    /// an older repository needs `true`, once its GitOps tool will not prune them.
    pub remove_control_plane_files: Option<bool>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            kubeconfig: None,
            page_size: 500,
            confirm_window: std::time::Duration::from_secs(60),
            discovery_interval: std::time::Duration::from_secs(60),
            // Under the apiserver's own cap (`--min-request-timeout`, 30 min, and a
            // random share more), and under the idle timeouts of most proxies.
            watch_timeout: std::time::Duration::from_secs(290),
            remove_control_plane_files: None,
        }
    }
}

/// How Secrets are treated. They are never written in plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretMode {
    /// Secret writes are not recorded at all.
    Omit,
    /// Recorded with every key kept and every value replaced by `<redacted>`.
    Redact,
    /// Secret writes are refused: Secrets belong in git encrypted (SOPS, sealed
    /// secrets), not written to the cluster directly.
    Deny,
    /// Recorded as SOPS files: every `data` and `stringData` value encrypted for
    /// age recipients (see [`SopsConfig`]), everything else readable.
    Sops,
}

impl SecretMode {
    /// Whether Secret writes are recorded (in some form) in this mode.
    pub fn records(self) -> bool {
        matches!(self, SecretMode::Redact | SecretMode::Sops)
    }
}

/// `secrets: sops`: who a Secret's file is encrypted for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SopsConfig {
    /// kubescribe's own age identity (the `AGE-SECRET-KEY-1...` line `age-keygen`
    /// writes). Its recipient is added to every file, so kubescribe can read back
    /// what it wrote and leave unchanged values as they are. Required with
    /// `secrets: sops`.
    pub identity_file: Option<PathBuf>,
    /// The age recipients (`age1...`) of files no `.sops.yaml` covers: used only when
    /// the repository has no `.sops.yaml` at its root.
    pub recipients: Vec<String>,
    /// What happens to a Secret no recipient covers (besides kubescribe's own).
    pub without_recipients: WithoutRecipients,
}

/// What happens to a Secret write whose file has no age recipient to encrypt for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WithoutRecipients {
    /// The write is refused, with a message saying what to add.
    #[default]
    Deny,
    /// The write is admitted and not recorded, with a warning.
    Omit,
}

/// Checks that can refuse a write, each `off`, `audit` (allow, with a warning) or
/// `enforce` (deny), as Kyverno's validationFailureAction.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuardRails {
    pub gitops_managed: GitopsManaged,
    pub max_object_bytes: MaxObjectBytes,
    pub require_recording: RequireRecording,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RailMode {
    #[default]
    Off,
    Audit,
    Enforce,
}

/// Direct writes to objects a GitOps tool manages (Flux labels, Argo CD's instance
/// label or tracking annotation) by anyone but the tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GitopsManaged {
    pub mode: RailMode,
    /// Users allowed to write managed objects (`*` globs): the GitOps controllers.
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
}

impl Default for GitopsManaged {
    fn default() -> Self {
        Self {
            mode: RailMode::Off,
            allow_users: [
                "system:serviceaccount:flux-system:*",
                "system:serviceaccount:argocd:*",
                "system:serviceaccount:openshift-gitops:*",
            ]
            .map(String::from)
            .to_vec(),
            allow_groups: Vec::new(),
        }
    }
}

/// Objects larger than `limit` bytes (as JSON, without status and managedFields).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MaxObjectBytes {
    pub mode: RailMode,
    pub limit: usize,
}

impl Default for MaxObjectBytes {
    fn default() -> Self {
        Self {
            mode: RailMode::Off,
            limit: 1024 * 1024,
        }
    }
}

/// A write a rule records, but which cannot be recorded right now (the repository is
/// unavailable, the queue is full, the object cannot be turned into a file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RequireRecording {
    pub mode: RailMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IgnoreConfig {
    /// Usernames never recorded; `*` matches any run of characters.
    pub users: Vec<String>,
    /// Writes by a member of one of these groups are never recorded.
    pub groups: Vec<String>,
    /// Noise: resources never recorded, as `resource` or `resource.group`.
    pub resources: Vec<String>,
    /// Skip objects that have an ownerReference with `controller: true`: their
    /// controller's object is the intent.
    pub controller_owned: bool,
    /// Skip the control plane's own objects (see [`crate::intent`]): those in
    /// `namespaces`, the bootstrap policy, what every namespace gets, and objects only
    /// `managers` wrote.
    pub control_plane: bool,
    /// The control plane's namespaces: nothing in them is recorded.
    pub namespaces: Vec<String>,
    /// Field managers (`managedFields[].manager`, `*` matches any run) that are the
    /// control plane's.
    pub managers: Vec<String>,
}

impl Default for IgnoreConfig {
    fn default() -> Self {
        Self {
            users: [
                "system:apiserver",
                "system:kube-controller-manager",
                "system:kube-scheduler",
                "system:node:*",
                "system:serviceaccount:kube-system:*",
                "system:serviceaccount:flux-system:*",
                "system:serviceaccount:argocd:*",
            ]
            .map(String::from)
            .to_vec(),
            groups: vec!["system:nodes".to_owned()],
            resources: [
                "events",
                "events.events.k8s.io",
                "leases.coordination.k8s.io",
                "endpoints",
                "endpointslices.discovery.k8s.io",
                "apiservices.apiregistration.k8s.io",
                "tokenreviews.authentication.k8s.io",
                "subjectaccessreviews.authorization.k8s.io",
                "selfsubjectaccessreviews.authorization.k8s.io",
                "selfsubjectrulesreviews.authorization.k8s.io",
                "localsubjectaccessreviews.authorization.k8s.io",
                "certificatesigningrequests.certificates.k8s.io",
                // The apiserver never calls webhooks for these (it would let a webhook
                // lock itself in), so no write to them can be a person's on record;
                // the reconciler alone would commit kubescribe's own registration.
                "validatingwebhookconfigurations.admissionregistration.k8s.io",
                "mutatingwebhookconfigurations.admissionregistration.k8s.io",
                "validatingadmissionpolicies.admissionregistration.k8s.io",
                "validatingadmissionpolicybindings.admissionregistration.k8s.io",
            ]
            .map(String::from)
            .to_vec(),
            controller_owned: true,
            control_plane: true,
            namespaces: ["kube-system", "kube-public", "kube-node-lease"]
                .map(String::from)
                .to_vec(),
            managers: [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "cloud-controller-manager",
                "api-priority-and-fairness-config-*",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Which writes are recorded, and what the admission answer waits for. The first rule
/// that matches decides; a write no rule matches is not recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Rule {
    pub name: String,
    /// API groups; `""` is the core group, `*` any.
    pub groups: Vec<String>,
    /// Resources (plural, lower case); `*` any. `deployments` also covers
    /// `deployments/scale`.
    pub resources: Vec<String>,
    /// Namespaces; `*` any, and cluster-scoped objects match only `*`.
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub wait: Wait,
    /// What happens to the write once the wait is over: `allow` (the default), or
    /// `deny`, only with `wait: push`: the change is recorded and pushed, and the
    /// write is denied, so the cluster changes only through the GitOps tool.
    pub then: Then,
    /// Name of an entry in `repositories`; the default repository when unset.
    pub repository: Option<String>,
    /// What the reconciler does with a file this rule records whose object is gone
    /// from a full list.
    pub prune: Prune,
    /// When the commit is made: at admission (`immediate`), or once the watch shows
    /// the object as admitted (`confirmed`).
    pub record: Record,
    /// Propose the rule's writes as pull requests (merge requests on GitLab) against
    /// the repository's branch instead of committing them to it. Needs `wait: push`
    /// and `then: deny`: the cluster changes once the pull request is merged.
    pub review: Option<ReviewConfig>,
    /// How this rule's Secrets are treated; the top-level `secrets` when unset.
    pub secrets: Option<SecretMode>,
}

/// A rule's reviews: where pull requests are opened and how writes are grouped.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewConfig {
    pub forge: Forge,
    /// The forge's API root: `https://api.github.com`, `https://gitea.example.com/api/v1`,
    /// `https://gitlab.example.com/api/v4`.
    pub api: String,
    /// `owner/repository` on GitHub and Gitea; the project's path (`group/project`)
    /// or numeric id on GitLab.
    pub project: String,
    /// A file holding the API token (a GitHub personal or installation token, a
    /// Gitea or GitLab access token). Read at every call, so a rotated Secret is
    /// used without a restart.
    pub token_file: PathBuf,
    /// A CA bundle to trust for the API, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The review branch's name: `{user}` (the Kubernetes user, made safe for a
    /// ref name), `{id}` (the first 8 characters of the admission uid, of the
    /// session's first write with `group: session`; required), `{branch}` (the
    /// rule's branch).
    #[serde(default = "default_review_branch")]
    pub branch: String,
    #[serde(default)]
    pub group: Grouping,
    /// How a GitLab merge request is opened: by the API, or by the push itself
    /// with git push options (`merge_request.create`).
    #[serde(default)]
    pub open_with: OpenWith,
    /// Delete the branch of a pull request closed without merging (kubescribe only
    /// ever deletes branches it created).
    #[serde(default = "default_true")]
    pub delete_closed_branches: bool,
    /// How often open reviews are looked at (with conditional requests).
    #[serde(default = "default_poll_interval", with = "duration_str")]
    pub poll_interval: std::time::Duration,
    /// The longest one API call may take.
    #[serde(default = "default_api_timeout", with = "duration_str")]
    pub timeout: std::time::Duration,
    /// A file with the secret of the forge's webhook; with it, `POST
    /// /reviews/<rule>` takes the forge's pull request events (signature checked)
    /// as a hint to poll at once.
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
}

fn default_review_branch() -> String {
    "kubescribe/{user}/{id}".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_poll_interval() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_api_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// Which forge's API a review talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Forge {
    /// GitHub and GitHub Enterprise Server.
    Github,
    /// Gitea and Forgejo.
    Gitea,
    Gitlab,
}

/// Which writes share a pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Grouping {
    /// One pull request per write.
    #[default]
    Write,
    /// One open pull request per user and rule; later writes add commits to it
    /// until it is merged or closed.
    Session,
}

/// How a merge request is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OpenWith {
    #[default]
    Api,
    /// GitLab only: `git push -o merge_request.create ...`; the API is then only
    /// read.
    PushOptions,
}

/// When a rule's commit is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Record {
    /// At admission: the writer commits what the review says.
    #[default]
    Immediate,
    /// Admission only notes who made which change; the reconciler commits it,
    /// authored by that user, once its watch shows the object with exactly that
    /// content. A review the cluster never persisted (forged, or denied later)
    /// never reaches git. Needs `wait: none` and the reconciler.
    Confirmed,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            groups: vec!["*".to_owned()],
            resources: vec!["*".to_owned()],
            namespaces: vec!["*".to_owned()],
            exclude_namespaces: Vec::new(),
            wait: Wait::None,
            then: Then::Allow,
            repository: None,
            prune: Prune::Never,
            record: Record::Immediate,
            review: None,
            secrets: None,
        }
    }
}

/// Files with no live object, found after a full list (a snapshot or a relist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Prune {
    /// Keep them: the repository may hold files kubescribe did not write.
    #[default]
    Never,
    /// Remove them: the repository mirrors the cluster.
    Always,
}

/// What the admission answer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Wait {
    /// Answer at once; the change is committed in the background.
    None,
    /// Answer once the commit is durable on disk; deny if that fails in time.
    Commit,
    /// Answer once the remote accepted the commit; deny if that fails in time.
    Push,
}

/// What a rule does with the write after its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Then {
    #[default]
    Allow,
    Deny,
}

fn validate_review(rule: &Rule, review: &ReviewConfig, branch: &str) -> Result<(), String> {
    if rule.wait != Wait::Push || rule.then != Then::Deny || rule.record != Record::Immediate {
        return Err("needs `wait: push` and `then: deny`: the write is proposed, and the cluster changes once the pull request is merged".to_owned());
    }
    if review.open_with == OpenWith::PushOptions && review.forge != Forge::Gitlab {
        return Err("`openWith: pushOptions` is GitLab's; GitHub and Gitea open pull requests through the API".to_owned());
    }
    if !(review.api.starts_with("https://") || review.api.starts_with("http://")) {
        return Err(format!("api {:?} must be an http(s) URL", review.api));
    }
    let project = review.project.split('/').filter(|p| !p.is_empty()).count();
    if review.forge != Forge::Gitlab && project != 2 {
        return Err(format!(
            "project {:?} must be `owner/repository`",
            review.project
        ));
    }
    if project == 0 {
        return Err("project is empty".to_owned());
    }
    if review.poll_interval < std::time::Duration::from_secs(1) || review.timeout.is_zero() {
        return Err("pollInterval must be at least 1s and timeout more than 0".to_owned());
    }
    let sample = crate::review::branch_name(&review.branch, "user", "0a1b2c3d", branch)?;
    if sample == branch {
        return Err(format!(
            "branch {:?} is the rule's own branch; review branches need their own names",
            review.branch
        ));
    }
    if !review.branch.contains("{id}") {
        return Err(format!(
            "branch {:?} needs `{{id}}` (the admission uid of the write, or of a session's first write), so no two reviews share a branch",
            review.branch
        ));
    }
    Ok(())
}

/// The name of the default repository (the `repository` section).
pub const DEFAULT_REPOSITORY: &str = "default";

/// One repository and branch writes can be sent to, resolved from the config.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub path: PathBuf,
    pub repository: RepositoryConfig,
}

impl Config {
    /// Reads `path`, or returns the defaults when there is none, and checks it.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = Self::load_unchecked(path)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Self::load`] without the checks, for a caller that lays flags over the file
    /// first and then calls [`Self::validate`] on the result: a file may rely on a
    /// flag (`wait: push` with the remote from `--remote`).
    pub fn load_unchecked(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| match source {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Self, ConfigError> {
        // An empty file means "all defaults", which serde_yaml would call an error.
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })
    }

    /// Every check at start (docs/configuration.md, "Checks at start").
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "set both server.tlsCert and server.tlsKey, or neither for a dev certificate"
                    .to_owned(),
            ));
        }
        if self.store.queue_capacity == 0
            || self.store.max_batch == 0
            || self.store.queue_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "store.queueCapacity and store.maxBatch must be at least 1".to_owned(),
            ));
        }
        let server = &self.server;
        if server.max_connections == 0
            || server.max_in_flight == 0
            || server.max_in_flight_bytes < server.max_body_bytes
            || server.handshake_timeout.is_zero()
            || server.header_read_timeout.is_zero()
            || server.request_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "server.maxConnections, maxInFlight, handshakeTimeout, headerReadTimeout and requestTimeout must be more than 0, and maxInFlightBytes at least maxBodyBytes".to_owned(),
            ));
        }
        if !self.server.client_auth.allowed_names.is_empty()
            && self.server.client_auth.ca_file.is_none()
        {
            return Err(ConfigError::Invalid(
                "server.clientAuth.allowedNames needs server.clientAuth.caFile: names are checked on client certificates that CA signed".to_owned(),
            ));
        }
        let reconcile = &self.reconcile;
        if reconcile.page_size == 0
            || reconcile.confirm_window < std::time::Duration::from_millis(100)
            || reconcile.discovery_interval < std::time::Duration::from_millis(100)
            || reconcile.watch_timeout < std::time::Duration::from_secs(1)
        {
            return Err(ConfigError::Invalid(
                "reconcile.pageSize must be at least 1, reconcile.confirmWindow and reconcile.discoveryInterval at least 100ms (confirmWindow should exceed the apiserver's request timeout, 60s by default), and reconcile.watchTimeout at least 1s".to_owned(),
            ));
        }
        if self.repositories.contains_key(DEFAULT_REPOSITORY) {
            return Err(ConfigError::Invalid(format!(
                "repositories.{DEFAULT_REPOSITORY}: that name is the `repository` section; pick another"
            )));
        }
        let targets = self.targets();
        for target in &targets {
            let field = if target.name == DEFAULT_REPOSITORY {
                "repository".to_owned()
            } else {
                format!("repositories.{}", target.name)
            };
            let repo = &target.repository;
            if gix::refs::FullName::try_from(format!("refs/heads/{}", repo.branch)).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "{field}.branch {:?} is not a valid branch name",
                    repo.branch
                )));
            }
            crate::manifest::Layout::new(&repo.root, &repo.path_template)
                .map_err(|e| ConfigError::Invalid(format!("{field}: {e}")))?;
            for (dir, namespace) in &repo.in_place.namespaces {
                if dir.ends_with('/') || dir.starts_with('/') || namespace.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "{field}.inPlace.namespaces: {dir:?}: {namespace:?}: give a directory of the repository without leading or trailing `/`, and a namespace"
                    )));
                }
            }
            if let Some(remote) = &repo.remote {
                validate_remote(remote)
                    .map_err(|e| ConfigError::Invalid(format!("{field}.remote: {e}")))?;
            }
            if targets.iter().filter(|t| t.path == target.path).count() > 1 {
                return Err(ConfigError::Invalid(format!(
                    "{field}: local path {} is used by another repository; give each its own path",
                    target.path.display()
                )));
            }
        }
        self.validate_sops()?;
        let mut names = std::collections::HashSet::new();
        // Review branches by repository: their prefixes must not overlap, since a
        // rule takes the branches under its prefix for its own.
        let mut prefixes: Vec<(String, String, String)> = Vec::new();
        for rule in &self.rules {
            // Rule names become webhook names, which must differ.
            if !names.insert(rule.name.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid(format!(
                    "rule name {:?} is used twice (names are compared ignoring case); give each rule its own",
                    rule.name
                )));
            }
            let target = match &rule.repository {
                None => &targets[0],
                Some(name) => targets.iter().find(|t| &t.name == name).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "rule {:?}: repository {name:?} is not defined under `repositories`",
                        rule.name
                    ))
                })?,
            };
            if rule.then == Then::Deny && rule.wait != Wait::Push {
                return Err(ConfigError::Invalid(format!(
                    "rule {:?}: `then: deny` needs `wait: push`, so the change is in git before the write is refused",
                    rule.name
                )));
            }
            if rule.record == Record::Confirmed {
                if rule.wait != Wait::None {
                    return Err(ConfigError::Invalid(format!(
                        "rule {:?}: `record: confirmed` commits after the write is applied, so it needs `wait: none`",
                        rule.name
                    )));
                }
                if !self.reconcile.enabled {
                    return Err(ConfigError::Invalid(format!(
                        "rule {:?}: `record: confirmed` needs the reconciler (reconcile.enabled: true): its watch confirms each change",
                        rule.name
                    )));
                }
            }
            if rule.wait == Wait::Push && target.repository.remote.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "rule {:?}: `wait: push` needs a remote on repository {:?}",
                    rule.name, target.name
                )));
            }
            if let Some(review) = &rule.review {
                validate_review(rule, review, &target.repository.branch).map_err(|e| {
                    ConfigError::Invalid(format!("rule {:?}: review: {e}", rule.name))
                })?;
                let prefix = crate::review::prefix(&review.branch)
                    .unwrap_or_default()
                    .to_owned();
                if let Some((_, _, other)) = prefixes.iter().find(|(repo, other, _)| {
                    *repo == target.name
                        && (other.starts_with(&prefix) || prefix.starts_with(other.as_str()))
                }) {
                    return Err(ConfigError::Invalid(format!(
                        "rule {:?}: review branches under {prefix:?} overlap rule {other:?}'s on the same repository; give each rule's `branch` its own directory (`kubescribe/{}/{{user}}/{{id}}`)",
                        rule.name, rule.name
                    )));
                }
                if let Some(under) = targets
                    .iter()
                    .find(|t| t.repository.branch.starts_with(&prefix))
                {
                    return Err(ConfigError::Invalid(format!(
                        "rule {:?}: review branches go under {prefix:?}, where repository {:?} has its branch {:?}; kubescribe takes every branch there for a review, so give `branch` another directory",
                        rule.name, under.name, under.repository.branch
                    )));
                }
                prefixes.push((target.name.clone(), prefix, rule.name.clone()));
            }
        }
        Ok(())
    }

    /// Whether some rule writes Secrets as SOPS files.
    pub fn uses_sops(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.secrets.unwrap_or(self.secrets) == SecretMode::Sops)
    }

    fn validate_sops(&self) -> Result<(), ConfigError> {
        for recipient in &self.sops.recipients {
            if recipient.trim().parse::<age::x25519::Recipient>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "sops.recipients: {recipient:?} is not an age recipient (age1...); give the public key age-keygen prints"
                )));
            }
        }
        if self.uses_sops() && self.sops.identity_file.is_none() {
            return Err(ConfigError::Invalid(
                "secrets: sops needs sops.identityFile, kubescribe's own age identity (make one with `age-keygen -o identity.txt` and mount it from a Kubernetes Secret); see docs/secrets.md".to_owned(),
            ));
        }
        Ok(())
    }

    /// The rule named `name`'s review settings, if it has any.
    pub fn review(&self, rule: &str) -> Option<&ReviewConfig> {
        self.rules
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.review.as_ref())
    }

    /// The default repository's local path.
    pub fn repository_path(&self) -> PathBuf {
        self.repository
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("repo.git"))
    }

    /// How a target's repository is named in the `kubescribe.io/git-repo`
    /// annotation: its remote's URL (without a password), else its local path.
    pub fn repository_label(target: &Target) -> String {
        match &target.repository.remote {
            Some(remote) => remote.display_url(),
            None => target.path.display().to_string(),
        }
    }

    /// Every repository writes can go to: the default first, then the named ones.
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = vec![Target {
            name: DEFAULT_REPOSITORY.to_owned(),
            path: self.repository_path(),
            repository: self.repository.clone(),
        }];
        for (name, repository) in &self.repositories {
            targets.push(Target {
                name: name.clone(),
                path: repository
                    .path
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join(format!("{name}.git"))),
                repository: repository.clone(),
            });
        }
        targets
    }
}

fn validate_remote(remote: &RemoteConfig) -> Result<(), String> {
    if remote.url.is_empty() {
        return Err("url is empty".to_owned());
    }
    if redact_url(&remote.url) != remote.url {
        return Err(
            "the url carries a password; put it in passwordFile or tokenFile instead".to_owned(),
        );
    }
    // Over http(s) the user name goes in `username`: a token pasted there (as some
    // forges suggest) would be shown wherever the URL is, in logs, denial messages
    // and the git-repo annotation. ssh keeps its `git@` user.
    if !remote.is_ssh() && url_user(&remote.url).is_some() {
        return Err(
            "the url carries a user name; put it in username or usernameFile (a token goes in tokenFile), so the url can be shown safely".to_owned(),
        );
    }
    if remote.is_ssh() {
        if remote.known_hosts_file.is_none() {
            return Err(
                "an ssh remote needs knownHostsFile: kubescribe never trusts an unknown host key"
                    .to_owned(),
            );
        }
        if remote.ssh_key_file.is_none() {
            return Err("an ssh remote needs sshKeyFile".to_owned());
        }
    }
    if remote.password_file.is_some() && remote.token_file.is_some() {
        return Err("set passwordFile or tokenFile, not both".to_owned());
    }
    if remote.username.is_some() && remote.username_file.is_some() {
        return Err("set username or usernameFile, not both".to_owned());
    }
    if remote.timeout.is_zero() {
        return Err("timeout must be more than 0".to_owned());
    }
    if remote.max_backoff < std::time::Duration::from_millis(250) {
        return Err(
            "maxBackoff must be at least 250ms, or a failing remote is retried in a busy loop"
                .to_owned(),
        );
    }
    Ok(())
}

/// Go-style durations (`10s`, `500ms`, `1m30s`), as Kubernetes writes them.
pub(crate) mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_go_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: write it like 10s, 500ms or 1m30s"
            ))
        })
    }
}

/// Parses a Go `time.Duration` string such as `10s`, `1.5s` or `1m30s`.
pub(crate) fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_kubernetes_writes_them() {
        let cases = [
            ("10s", Some(10_000)),
            ("500ms", Some(500)),
            ("1m30s", Some(90_000)),
            ("1.5s", Some(1_500)),
            ("0", Some(0)),
            ("", None),
            ("10", None),
            ("10x", None),
            ("s", None),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_go_duration(text).map(|d| d.as_millis() as u64),
                millis,
                "{text:?}"
            );
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = Config::from_yaml("").unwrap();
        assert_eq!(config.repository.branch, "main");
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.repository_path(), PathBuf::from("data/repo.git"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_yaml("rules:\n- name: x\n  wiat: commit\n").unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("wiat"), "{text}");
    }

    #[test]
    fn rules_parse_with_wait_modes() {
        let config = Config::from_yaml(
            "rules:\n- name: prod\n  namespaces: [prod]\n  wait: commit\n- name: rest\n",
        )
        .unwrap();
        assert_eq!(config.rules[0].wait, Wait::Commit);
        assert_eq!(config.rules[0].groups, vec!["*"]);
        assert_eq!(config.rules[1].wait, Wait::None);
    }

    #[test]
    fn record_confirmed_needs_wait_none_and_the_reconciler() {
        let error = |yaml: &str| Config::from_yaml(yaml).unwrap_err().to_string();
        assert!(error("rules:\n- name: a\n  record: confirmed\n").contains("needs the reconciler"));
        assert!(error(
            "reconcile:\n  enabled: true\nrules:\n- name: a\n  record: confirmed\n  wait: commit\n"
        )
        .contains("needs `wait: none`"));
        let ok = Config::from_yaml(
            "reconcile:\n  enabled: true\nrules:\n- name: a\n  record: confirmed\n",
        )
        .unwrap();
        assert_eq!(ok.rules[0].record, Record::Confirmed);
    }

    #[test]
    fn half_a_tls_pair_is_refused() {
        let err = Config::from_yaml("server:\n  tlsCert: /x.crt\n").unwrap_err();
        assert!(err.to_string().contains("tlsKey"), "{err}");
    }

    #[test]
    fn remote_settings_that_cannot_work_are_refused_with_the_fix() {
        let cases = [
            (
                "rules:\n- name: x\n  wait: push\n",
                "`wait: push` needs a remote",
            ),
            (
                "repository:\n  remote:\n    url: file:///r.git\nrules:\n- name: x\n  wait: commit\n  then: deny\n",
                "`then: deny` needs `wait: push`",
            ),
            (
                "repository:\n  remote:\n    url: git@github.com:org/repo.git\n    sshKeyFile: /k\n",
                "knownHostsFile",
            ),
            (
                "repository:\n  remote:\n    url: https://bob:hunter2@git.example/r.git\n",
                "passwordFile",
            ),
            (
                "repository:\n  remote:\n    url: https://ghp_hunter2@git.example/r.git\n",
                "put it in username or usernameFile",
            ),
            (
                "rules:\n- name: x\n  repository: nowhere\n",
                "\"nowhere\" is not defined",
            ),
            (
                "repositories:\n  other:\n    path: data/repo.git\n",
                "used by another repository",
            ),
            ("repositories:\n  default: {}\n", "pick another"),
            ("rules:\n- name: prod\n- name: Prod\n", "used twice"),
        ];
        for (yaml, expected) in cases {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // ssh keeps its user; a user name over https goes in `username`.
        Config::from_yaml("repository:\n  remote:\n    url: ssh://git@github.com/o/r.git\n    sshKeyFile: /k\n    knownHostsFile: /h\n").unwrap();
        Config::from_yaml(
            "repository:\n  remote:\n    url: https://git.example/r.git?x=a@b\n    username: bob\n",
        )
        .unwrap();
    }

    #[test]
    fn named_repositories_get_their_own_local_path() {
        let config = Config::from_yaml(
            "repositories:\n  staging:\n    branch: staging\n    remote:\n      url: file:///r.git\nrules:\n- name: s\n  repository: staging\n  wait: push\n",
        )
        .unwrap();
        let targets = config.targets();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].path, PathBuf::from("data/staging.git"));
        assert_eq!(targets[1].repository.branch, "staging");
    }

    #[test]
    fn ssh_urls_are_recognised_in_both_spellings() {
        let remote = |url: &str| RemoteConfig {
            url: url.to_owned(),
            ..Default::default()
        };
        assert!(remote("git@github.com:org/repo.git").is_ssh());
        assert!(remote("ssh://git@host:2222/repo.git").is_ssh());
        assert!(!remote("https://host/repo.git").is_ssh());
        assert!(!remote("file:///srv/repo.git").is_ssh());
        assert!(!remote("/srv/repo.git").is_ssh());
    }

    #[test]
    fn the_push_transport_is_builtin_unless_git_is_asked_for() {
        let remote = |extra: &str| {
            Config::from_yaml(&format!(
                "repository:\n  remote:\n    url: https://git.example/r.git\n{extra}"
            ))
        };
        let transport = |config: Config| config.repository.remote.unwrap().transport;
        assert_eq!(transport(remote("").unwrap()), Transport::Builtin);
        assert_eq!(
            transport(remote("    transport: git\n").unwrap()),
            Transport::Git
        );
        let err = remote("    transport: ftp\n").unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("builtin") && text.contains("git"), "{text}");
    }

    #[test]
    fn a_bad_branch_name_is_refused() {
        let err = Config::from_yaml("repository:\n  branch: 'a..b'\n").unwrap_err();
        assert!(err.to_string().contains("branch"), "{err}");
    }

    #[test]
    fn reconcile_intervals_of_zero_are_refused() {
        for yaml in [
            "reconcile:\n  discoveryInterval: 0s\n",
            "reconcile:\n  confirmWindow: 0s\n",
            "reconcile:\n  pageSize: 0\n",
        ] {
            let err = Config::from_yaml(yaml).unwrap_err();
            assert!(err.to_string().contains("at least"), "{yaml}: {err}");
        }
        let ok = Config::from_yaml(
            "rules:\n- name: a\n  prune: always\nreconcile:\n  confirmWindow: 90s\n",
        )
        .unwrap();
        assert_eq!(
            ok.reconcile.confirm_window,
            std::time::Duration::from_secs(90)
        );
        assert_eq!(ok.rules[0].prune, Prune::Always);
    }

    #[test]
    fn a_review_needs_a_deny_rule_a_fixed_prefix_and_its_own_branches() {
        let rule = |review: &str, wait_then: &str| {
            format!(
                "repository:\n  remote:\n    url: file:///r\nrules:\n- name: r\n{wait_then}  review:\n    forge: github\n    api: https://api.github.com\n    project: o/r\n    tokenFile: /t\n{review}"
            )
        };
        let deny = "  wait: push\n  then: deny\n";
        let error = |yaml: String| Config::from_yaml(&yaml).unwrap_err().to_string();
        assert!(Config::from_yaml(&rule("", deny)).is_ok());
        assert!(error(rule("", "  wait: push\n")).contains("needs `wait: push` and `then: deny`"));
        assert!(error(rule("    openWith: pushOptions\n", deny)).contains("GitLab's"));
        assert!(error(rule("    branch: \"{user}/{id}\"\n", deny)).contains("fixed directory"));
        assert!(error(rule("    branch: kubescribe/{user}\n", deny)).contains("needs `{id}`"));
        assert!(error(rule(
            "    branch: kubescribe/{user}\n    group: session\n",
            deny
        ))
        .contains("needs `{id}`"));
        assert!(error(rule("", deny).replace("o/r", "just-one")).contains("owner/repository"));
        let two = format!(
            "{}- name: s\n  wait: push\n  then: deny\n  review:\n    forge: gitea\n    api: https://g/api/v1\n    project: o/r\n    tokenFile: /t\n",
            rule("", deny)
        );
        assert!(error(two).contains("overlap"));
        let under = rule("", deny).replace("remote:", "branch: kubescribe/prod\n  remote:");
        assert!(error(under).contains("has its branch \"kubescribe/prod\""));
    }
}
