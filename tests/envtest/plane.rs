//! A real control plane on loopback: etcd and kube-apiserver (and, when a test asks,
//! kube-controller-manager), found the envtest way and started on free ports.
//!
//! Binaries: `$KUBEBUILDER_ASSETS` first (controller-runtime's convention, so
//! `setup-envtest use` runs the suite against any version), else the cache that
//! `scripts/install-envtest.sh` fills from Debian's `kubernetes` source package.
//! A missing binary fails the test and says how to get it.
//!
//! Identities come from a static token file: a person (`alice`, and `bob`), a CI
//! service account, a GitOps controller's service account, an admin
//! (`system:masters`) and the controller manager. All but the controller manager are
//! bound to `cluster-admin`, so what they may do never gets in a test's way; who they
//! are is what kubescribe records.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::{self, Proc};

/// How long etcd and kube-apiserver get to serve. A loaded 2-core machine starts the
/// apiserver in 5–15 s; its post-start hooks (bootstrap RBAC) come last.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A user of the test cluster: how kubescribe will see it, and its token.
#[derive(Debug, Clone, Copy)]
pub struct User {
    /// The kubeconfig context and the short name tests use.
    pub context: &'static str,
    pub username: &'static str,
    pub groups: &'static [&'static str],
    token: &'static str,
}

pub const ADMIN: User = User {
    context: "admin",
    username: "kubescribe-e2e-admin",
    groups: &["system:masters"],
    token: "e2e-admin-token",
};
/// A person, as an OIDC login would name them.
pub const ALICE: User = User {
    context: "alice",
    username: "alice@example.com",
    groups: &["developers"],
    token: "e2e-alice-token",
};
pub const BOB: User = User {
    context: "bob",
    username: "bob",
    groups: &["developers"],
    token: "e2e-bob-token",
};
/// A CI pipeline's service account (a token for the same name the apiserver gives
/// a real service account token).
pub const CI: User = User {
    context: "ci",
    username: "system:serviceaccount:ci:deployer",
    groups: &["system:serviceaccounts", "system:serviceaccounts:ci"],
    token: "e2e-ci-token",
};
/// Flux's kustomize-controller, which kubescribe ignores by default.
pub const GITOPS: User = User {
    context: "gitops",
    username: "system:serviceaccount:flux-system:kustomize-controller",
    groups: &[
        "system:serviceaccounts",
        "system:serviceaccounts:flux-system",
    ],
    token: "e2e-gitops-token",
};
pub const CONTROLLER_MANAGER: User = User {
    context: "controller-manager",
    username: "system:kube-controller-manager",
    groups: &[],
    token: "e2e-kcm-token",
};

pub const USERS: [User; 6] = [ADMIN, ALICE, BOB, CI, GITOPS, CONTROLLER_MANAGER];

/// The binaries, located once.
pub struct Assets {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Assets {
    pub fn find() -> Self {
        let mut dirs = Vec::new();
        if let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(assets));
        }
        dirs.push(cache_dir());
        let assets = Self {
            etcd: PathBuf::new(),
            kube_apiserver: PathBuf::new(),
            kubectl: PathBuf::new(),
            dirs,
        };
        Self {
            etcd: assets.binary("etcd"),
            kube_apiserver: assets.binary("kube-apiserver"),
            kubectl: assets.binary("kubectl"),
            ..assets
        }
    }

    /// `name` from the first directory that has it; a panic that says how to get it.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{name} not found in {}. Run scripts/install-envtest.sh (as root; `make test` \
                     does) to build it from Debian's kubernetes source package, or set \
                     KUBEBUILDER_ASSETS to a directory holding etcd, kube-apiserver and kubectl \
                     (for example `setup-envtest use -p path`).",
                    self.dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )
            })
    }
}

/// Where `scripts/install-envtest.sh` puts the binaries.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBESCRIBE_ENVTEST_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    cache.join("kubescribe/envtest/1.20.2")
}

/// Settings a test binary may change for its control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--etcd-compaction-interval`: short, so a watch's resourceVersion expires.
    pub compaction_interval: Duration,
    /// `--watch-cache`: off, watches are served by etcd itself, so a watch resumed
    /// from a compacted resourceVersion gets 410 Gone (the cache would hide it).
    pub watch_cache: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            compaction_interval: Duration::from_secs(300),
            watch_cache: true,
        }
    }
}

/// etcd and kube-apiserver, running.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub assets: Assets,
    /// `https://127.0.0.1:<port>`
    pub url: String,
    /// The CA that signed the apiserver's serving certificate.
    pub ca: PathBuf,
    /// One context per [`User`], named by its `context`; `admin` is current.
    pub kubeconfig: PathBuf,
    /// The service-account signing key, for kube-controller-manager.
    pub sa_key: PathBuf,
    /// The CA of the client certificate the apiserver presents to webhooks (its
    /// AdmissionConfiguration kubeconfig), for `server.clientAuth.caFile`; the
    /// certificate's name is `kube-apiserver`.
    pub webhook_client_ca: PathBuf,
    /// That pair, and a second pair signed by the same CA, named `kube-apiserver`
    /// too, that a forger could hold: tests present them with curl.
    pub webhook_client_cert: PathBuf,
    pub webhook_client_key: PathBuf,
    /// A file holding the bearer token the apiserver also sends to every webhook,
    /// for `server.clientAuth.tokenFile`.
    pub webhook_token_file: PathBuf,
    etcd: Proc,
    apiserver: Proc,
}

impl ControlPlane {
    /// The control plane every test of this binary shares (each test works in its
    /// own namespace). Started at first use; killed when the test binary exits.
    pub fn shared() -> &'static ControlPlane {
        Self::shared_with(Options::default())
    }

    /// [`Self::shared`], started with `options` if this is the first use.
    pub fn shared_with(options: Options) -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| ControlPlane::start(options))
    }

    pub fn start(options: Options) -> Self {
        let assets = Assets::find();
        let dir = process::work_dir("plane");
        let pki = dir.join("pki");
        make_pki(&pki);
        let admission = write_admission_config(&dir);
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            USERS
                .iter()
                .enumerate()
                .map(|(n, u)| {
                    format!(
                        "{},{},uid-{n},\"{}\"\n",
                        u.token,
                        u.username,
                        u.groups.join(",")
                    )
                })
                .collect::<String>(),
        )
        .unwrap();

        let etcd_port = process::free_port();
        let peer_port = process::free_port();
        // etcd fsyncs every write; on tmpfs that costs nothing and the data is
        // thrown away anyway.
        let etcd_data = process::memory_dir(&format!("etcd-{etcd_port}")).join("data");
        let mut etcd_cmd = Command::new(&assets.etcd);
        etcd_cmd
            .arg("--name=envtest")
            .arg(format!("--data-dir={}", etcd_data.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=envtest=http://127.0.0.1:{peer_port}"
            ))
            .arg("--log-level=warn");
        let mut etcd = Proc::spawn("etcd", etcd_cmd, &process::create_log(&dir, "etcd.log"));
        process::wait_ready(&mut etcd, START_TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
        });

        let port = process::free_port();
        let url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(&assets.kube_apiserver);
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg("--insecure-port=0")
            .arg(format!(
                "--tls-cert-file={}",
                pki.join("apiserver.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join("apiserver.key").display()
            ))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg("--allow-privileged=true")
            .arg(format!(
                "--admission-control-config-file={}",
                admission.config.display()
            ))
            .arg(format!(
                "--etcd-compaction-interval={}s",
                options.compaction_interval.as_secs().max(1)
            ))
            .arg(format!("--watch-cache={}", options.watch_cache))
            .arg("--v=1");
        let mut apiserver = Proc::spawn(
            "kube-apiserver",
            cmd,
            &process::create_log(&dir, "kube-apiserver.log"),
        );
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, &pki.join("ca.crt"));
        // Ready is /readyz answering ok to the admin: every post-start hook, the
        // bootstrap RBAC policy among them, has run.
        let kubectl = assets.kubectl.clone();
        process::wait_ready(&mut apiserver, START_TIMEOUT, || {
            Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "--raw", "/readyz"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"))
        });
        let plane = Self {
            dir,
            url,
            ca: pki.join("ca.crt"),
            kubeconfig,
            sa_key: pki.join("sa.key"),
            webhook_client_ca: admission.client_ca,
            webhook_client_cert: admission.client_cert,
            webhook_client_key: admission.client_key,
            webhook_token_file: admission.token_file,
            assets,
            etcd,
            apiserver,
        };
        plane.kubectl_ok(ADMIN, &["apply", "-f", "-"], Some(RBAC));
        plane
    }
}

/// Everyone but the controller manager (which has its own bootstrap roles) may do
/// anything: the tests are about who writes, not what they may write.
pub const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: e2e-everyone-is-admin
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: developers
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:serviceaccount:ci:deployer
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:serviceaccount:flux-system:kustomize-controller
"#;

impl ControlPlane {
    /// Runs the apiserver's kubectl as `user` (its kubeconfig context).
    pub fn kubectl(&self, user: User, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        kubectl_at(&self.assets.kubectl, &self.kubeconfig, user, args, stdin)
    }

    /// [`Self::kubectl`] that must succeed; its stdout.
    pub fn kubectl_ok(&self, user: User, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(user, args, stdin);
        assert!(
            out.status.success(),
            "kubectl --context {} {} failed:\n{}",
            user.context,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kube client authenticated as `user`.
    pub async fn client(&self, user: User) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let options = kube::config::KubeConfigOptions {
            context: Some(user.context.to_owned()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .expect("the test kubeconfig loads");
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kubeconfig file of its own for `user` (current context), for a process that
    /// takes one `--kubeconfig` (kube-controller-manager, kubescribe's reconciler).
    pub fn kubeconfig_for(&self, user: User, path: &Path) {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let text = text.replace(
            "current-context: admin",
            &format!("current-context: {}", user.context),
        );
        std::fs::write(path, text).unwrap();
    }

    /// A new namespace `<prefix>-<n>`, with the `kubernetes.io/metadata.name` label
    /// that apiservers from 1.21 on set themselves and kubescribe's webhook
    /// configurations select namespaces by (1.20 does not set it).
    pub fn namespace(&self, prefix: &str) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        self.kubectl_ok(
            ADMIN,
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/metadata.name: {name}\n"
            )),
        );
        name
    }

    /// The apiserver's log, for a failed test's message.
    pub fn apiserver_log(&self) -> String {
        process::log_tail(&self.apiserver.log, 60)
    }

    pub fn etcd_log(&self) -> String {
        process::log_tail(&self.etcd.log, 20)
    }

    /// Starts kube-controller-manager against this apiserver as
    /// `system:kube-controller-manager`, each controller with its own service account
    /// (as kubeadm runs it). Stops when the returned process is dropped.
    pub fn start_controller_manager(&self) -> Proc {
        let binary = self.assets.binary("kube-controller-manager");
        let dir = self.dir.join(format!("kcm-{}", process::free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        self.kubeconfig_for(CONTROLLER_MANAGER, &kubeconfig);
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", self.ca.display()))
            .arg("--leader-elect=false")
            .arg("--port=0")
            .arg("--secure-port=0")
            .arg("--controllers=*")
            .arg("--v=1");
        let mut kcm = Proc::spawn(
            "kube-controller-manager",
            cmd,
            &process::create_log(&dir, "kube-controller-manager.log"),
        );
        // Running is: the service account controller has made `default` in
        // kube-system, which it does only once its informers have synced.
        process::wait_ready(&mut kcm, START_TIMEOUT, || {
            self.kubectl(
                ADMIN,
                &["get", "serviceaccount", "default", "-n", "kube-system"],
                None,
            )
            .status
            .success()
        });
        kcm
    }
}

fn kubectl_at(
    kubectl: &Path,
    kubeconfig: &Path,
    user: User,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(kubectl);
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--context={}", user.context))
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("kubectl ends")
}

/// A CA, the apiserver's serving pair signed by it (127.0.0.1 and the in-cluster
/// names), and an ECDSA service-account signing key.
fn make_pki(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .args([
            "certs",
            "--ip",
            "127.0.0.1",
            "--dns",
            "localhost",
            "--dns",
            "kubernetes",
        ])
        .args([
            "--dns",
            "kubernetes.default",
            "--dns",
            "kubernetes.default.svc",
        ])
        .arg("--out")
        .arg(dir)
        .output()
        .expect("kubescribe certs runs");
    assert!(
        out.status.success(),
        "kubescribe certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(dir.join("tls.crt"), dir.join("apiserver.crt")).unwrap();
    std::fs::rename(dir.join("tls.key"), dir.join("apiserver.key")).unwrap();
    let key = rcgen::KeyPair::generate().expect("generate the service-account key");
    std::fs::write(dir.join("sa.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("sa.pub"), key.public_key_pem()).unwrap();
}

fn write_kubeconfig(path: &Path, url: &str, ca: &Path) {
    let mut text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    certificate-authority: {}\n",
        ca.display()
    );
    text.push_str("users:\n");
    for user in USERS {
        text.push_str(&format!(
            "- name: {}\n  user:\n    token: {}\n",
            user.context, user.token
        ));
    }
    text.push_str("contexts:\n");
    for user in USERS {
        text.push_str(&format!(
            "- name: {0}\n  context:\n    cluster: envtest\n    user: {0}\n",
            user.context
        ));
    }
    text.push_str("current-context: admin\n");
    std::fs::write(path, text).unwrap();
}

/// The token the apiserver sends to every webhook (with its client certificate).
pub const WEBHOOK_TOKEN: &str = "e2e-webhook-caller-token";

struct AdmissionFiles {
    config: PathBuf,
    client_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    token_file: PathBuf,
}

/// An AdmissionConfiguration whose webhook kubeconfig makes the apiserver present a
/// client certificate (from `kubescribe certs`, CN `kube-apiserver`) and a bearer
/// token to every webhook, as docs/security.md tells operators to set it up.
fn write_admission_config(dir: &Path) -> AdmissionFiles {
    let pki = dir.join("webhook-client");
    let out = Command::new(env!("CARGO_BIN_EXE_kubescribe"))
        .args(["certs", "--dns", "unused.invalid", "--out"])
        .arg(&pki)
        .output()
        .expect("kubescribe certs runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = dir.join("webhook-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate: {}\n    client-key: {}\n    token: {WEBHOOK_TOKEN}\n",
            pki.join("client.crt").display(),
            pki.join("client.key").display()
        ),
    )
    .unwrap();
    let config = dir.join("admission.yaml");
    let plugin = |name: &str| {
        format!(
            "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            kubeconfig.display()
        )
    };
    std::fs::write(
        &config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
            plugin("ValidatingAdmissionWebhook"),
            plugin("MutatingAdmissionWebhook")
        ),
    )
    .unwrap();
    let token_file = dir.join("webhook-token");
    std::fs::write(&token_file, format!("{WEBHOOK_TOKEN}\n")).unwrap();
    AdmissionFiles {
        config,
        client_ca: pki.join("ca.crt"),
        client_cert: pki.join("client.crt"),
        client_key: pki.join("client.key"),
        token_file,
    }
}
