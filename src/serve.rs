//! `kubescribe serve`: wires TLS, the store and the router into a running server.
//!
//! Start-up order is what `/readyz` promises: the certificate is loaded and the
//! repository open before the first connection is accepted. Shutdown stops accepting,
//! lets open requests finish, then waits for the writers to commit their queues and
//! the pushers to try a last push, so a change that was acknowledged before SIGTERM
//! is not dropped (what a pusher could not push is pushed at the next start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use crate::admission::{routes, AppState, TargetState};
use crate::config::Config;
use crate::manifest::Layout;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::push::{Pusher, PusherTask, Remote};
use crate::store::{StoreError, StoreHandle, StoreSettings, WriterThread};
use crate::tls::{self, TlsError};

/// Starting the server failed; the message names the part and the cause follows.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS setup failed")]
    Tls(#[from] TlsError),
    #[error("the git store could not start")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot authenticate callers")]
    Caller(#[from] crate::caller::CallerError),
}

/// A running webhook server.
pub struct Server {
    addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    writers: Vec<WriterThread>,
    pushers: Vec<PusherTask>,
    /// The reviewers' trackers (see [`crate::review`]).
    reviews: Vec<tokio::task::JoinHandle<()>>,
    reconcilers: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// The plain-HTTP listener of `server.metricsListen`.
    probes: Option<tokio::task::JoinHandle<()>>,
    /// The dev CA, when the server made or used one.
    pub dev_ca: Option<PathBuf>,
}

impl Server {
    /// Loads TLS, opens the repository and starts listening.
    pub async fn start(config: &Config) -> Result<Self, ServeError> {
        let (cert, key, dev_ca) = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone(), None),
            _ => {
                let (paths, created) = tls::ensure_dev_certificates(
                    &config.server.dev_cert_dir,
                    &tls::default_dev_names(),
                )?;
                tracing::info!(
                    ca = %paths.ca_cert.display(),
                    created,
                    "serving with a dev certificate; trust this CA (caBundle, curl --cacert)"
                );
                (paths.cert, paths.key, Some(paths.ca_cert))
            }
        };
        check_callers_are_authenticated(config)?;
        let metrics = Arc::new(Metrics::new());
        let callers = Arc::new(crate::caller::CallerPolicy::load(
            &config.server.client_auth,
            metrics.clone(),
        )?);
        let certs = tls::CertStore::load(&cert, &key)?;
        let tls_config = tls::server_config_with_clients(
            certs.clone(),
            callers
                .client_ca()
                .map(|ca| ca as Arc<dyn rustls::server::danger::ClientCertVerifier>),
        )?;
        if !config.server.cert_reload_interval.is_zero() {
            certs.watch(config.server.cert_reload_interval, metrics.clone());
            callers.watch(config.server.cert_reload_interval);
        }
        let mut targets = Vec::new();
        let mut writers = Vec::new();
        let mut pushers = Vec::new();
        let mut clean_control_plane = Vec::new();
        let mut remotes = Vec::new();
        // `secrets: sops`: kubescribe's identity, loaded once; a missing or broken
        // one stops the start, since no Secret may then be recorded.
        let keys = if config.uses_sops() {
            let keys = crate::secrets::Keys::load(&config.sops, false)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            tracing::info!(recipient = ?keys.recipient(), "secrets: sops: Secrets are encrypted for .sops.yaml's recipients (or sops.recipients) and this one of kubescribe's own");
            Some(Arc::new(keys))
        } else {
            None
        };
        for target in config.targets() {
            let layout = Layout::new(&target.repository.root, &target.repository.path_template)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            // A repository that cannot be made yet is the writer's to report (and to
            // try again): /readyz fails with the reason, the server runs.
            if let Err(error) =
                crate::store::init_repository(&target.path, &target.repository.branch)
            {
                tracing::warn!(repository = %target.name, %error, "cannot create the repository yet");
            }
            let remote = target.repository.remote.clone().map(|remote| Remote {
                config: remote,
                branch: target.repository.branch.clone(),
                git_dir: target.path.clone(),
            });
            // Whether the remote (if any) is known to hold nothing yet.
            let mut remote_empty = true;
            if let Some(remote) = &remote {
                // Start from what the remote has; when it cannot be reached, commit
                // locally and replay onto it once it can.
                match remote.fetch().await {
                    Ok(tip) => {
                        remote_empty = tip.is_none();
                        tracing::info!(repository = %target.name, remote = %remote.display_url(), branch = %remote.branch, tip = ?tip, "fetched the remote branch")
                    }
                    Err(error) => {
                        remote_empty = false;
                        tracing::warn!(repository = %target.name, %error, advice = error.advice(), "cannot fetch the remote branch at start; committing locally until it can be reached")
                    }
                }
            }
            let remote_url = target.repository.remote.as_ref().map(|r| r.url.as_str());
            let branch = &target.repository.branch;
            crate::store::note_started_empty(&target.path, branch, remote_url, remote_empty);
            clean_control_plane.push(
                config
                    .reconcile
                    .remove_control_plane_files
                    .unwrap_or_else(|| {
                        crate::store::started_empty(&target.path, branch, remote_url)
                    }),
            );
            remotes.push(remote.clone());
            let mut settings = StoreSettings::from_config(config, &target);
            settings.sealer = keys
                .clone()
                .map(|keys| Arc::new(crate::secrets::Sealer::new(keys)));
            let outbox = settings.outbox.clone();
            let (store, writer) = StoreHandle::open(settings, metrics.clone())?;
            writers.push(writer);
            let push = match (remote, outbox) {
                (Some(remote), Some(outbox)) => {
                    let pusher = Pusher::new(
                        target.name.clone(),
                        remote,
                        outbox,
                        store.replayer(),
                        metrics.clone(),
                    )
                    .with_faults(&config.faults);
                    let handle = pusher.handle();
                    pushers.push(pusher.spawn());
                    Some(handle)
                }
                _ => None,
            };
            targets.push(TargetState {
                repo: Config::repository_label(&target),
                layout,
                store,
                push,
            });
        }

        let (reviews, review_tasks) = start_reviews(config, &targets, &remotes, &metrics)?;
        let metrics_handle = metrics.clone();
        let state = Arc::new(AppState {
            reviews,
            policy: Policy::new(config),
            confirmations: config.reconcile.enabled.then(|| {
                Arc::new(crate::reconcile::Confirmations::new(
                    config.reconcile.confirm_window,
                    metrics.clone(),
                ))
            }),
            annotate: config.annotate,
            targets,
            metrics,
            ready: AtomicBool::new(false),
            max_body_bytes: config.server.max_body_bytes,
            default_timeout: config.server.default_timeout,
            deadline_margin: config.server.deadline_margin,
        });

        let listen = config.server.listen;
        let bind_error = |source| ServeError::Bind {
            addr: listen,
            source,
        };
        let listener = std::net::TcpListener::bind(listen).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let mut server = axum_server::from_tcp(listener)
            .map_err(bind_error)?
            .acceptor(crate::caller::PeerAcceptor::new(
                tls_config,
                config.server.handshake_timeout,
                config.server.header_read_timeout,
                config.server.max_connections,
                metrics_handle.clone(),
            ));
        server
            .http_builder()
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(config.server.header_read_timeout);
        // What an HTTP/2 client may send before kubescribe reads it: per connection,
        // since a request waiting for an in-flight slot has not read its body yet
        // (hyper's default is 1 MiB per stream and connection).
        // A waiting stream fills at most its own window, so the connection's window
        // leaves room for every other stream: one waiting for a slot never stalls
        // the admitted ones beside it on the same connection.
        server
            .http_builder()
            .http2()
            .max_concurrent_streams(H2_STREAMS)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_STREAM_WINDOW * (H2_STREAMS + 1))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .timer(hyper_util::rt::TokioTimer::new());
        let handle = axum_server::Handle::new();
        let metrics_listen = config.server.metrics_listen;
        let router = routes(
            state.clone(),
            callers.authenticates().then_some(callers),
            metrics_listen.is_none(),
            crate::limits::InFlight::new(
                config.server.max_in_flight,
                config.server.max_in_flight_bytes,
                config.server.max_body_bytes,
                config.server.default_timeout,
                config.server.deadline_margin,
                metrics_handle.clone(),
            ),
            config.server.request_timeout,
        );
        let task = tokio::spawn(
            server
                .handle(handle.clone())
                .serve(router.into_make_service()),
        );
        let probes_task = match metrics_listen {
            Some(listen) => {
                let bind_error = |source| ServeError::Bind {
                    addr: listen,
                    source,
                };
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(bind_error)?;
                tracing::info!(addr = %listener.local_addr().map_err(bind_error)?, "serving /metrics, /healthz and /readyz over plain HTTP");
                let router = crate::admission::probes(state.clone());
                Some(tokio::spawn(async move {
                    if let Err(error) = axum::serve(listener, router).await {
                        tracing::error!(%error, "the metrics listener stopped");
                    }
                }))
            }
            None => None,
        };
        // The reconciler's tasks hold store handles: shutdown aborts them before it
        // waits for the writers.
        let reconcilers: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        if config.reconcile.enabled {
            // Ready once git holds the cluster's state: the snapshot runs first, then
            // one watch per resource keeps following it.
            let reconcile = config.reconcile.clone();
            let state = state.clone();
            let tasks = reconcilers.clone();
            let run = tokio::spawn(async move {
                let started = std::time::Instant::now();
                let client = match crate::reconcile::client(reconcile.kubeconfig.as_deref()).await {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::error!(%error, "cannot reach the Kubernetes API; /readyz stays not ready until a restart succeeds");
                        if let Some(confirmations) = &state.confirmations {
                            confirmations.close();
                        }
                        return;
                    }
                };
                let mut reconciler = crate::reconcile::Reconciler::new(
                    client,
                    state.policy.clone(),
                    state
                        .targets
                        .iter()
                        .map(|t| (t.layout.clone(), t.store.clone()))
                        .collect(),
                    state.metrics.clone(),
                    reconcile.page_size,
                )
                .with_watch_timeout(reconcile.watch_timeout)
                .with_control_plane_cleanup(clean_control_plane);
                if let Some(confirmations) = &state.confirmations {
                    reconciler = reconciler.with_confirmations(confirmations.clone());
                }
                let reconciler = Arc::new(reconciler);
                // A repository that cannot be opened yet is tried again by its
                // writer: the snapshot waits for it rather than fail for good.
                let mut waited = false;
                while state.targets.iter().any(|t| t.store.not_open().is_some()) {
                    if !waited {
                        tracing::warn!("the initial snapshot waits until every repository opens");
                        waited = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                match reconciler.snapshot().await {
                    Ok(report) => {
                        tracing::info!(
                            resources = report.resources,
                            objects = report.objects,
                            recorded = report.recorded,
                            commits = report.commits,
                            pruned = report.pruned,
                            forbidden = ?report.forbidden,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "initial snapshot done; ready"
                        );
                        state.ready.store(true, Ordering::Release);
                        drop(state);
                        reconciler
                            .run(report, reconcile.discovery_interval, tasks)
                            .await;
                    }
                    Err(error) => {
                        // Not ready: the apiserver keeps using the webhook's
                        // failurePolicy; a restart retries.
                        tracing::error!(%error, "initial snapshot failed; /readyz stays not ready until a restart succeeds");
                        if let Some(confirmations) = &state.confirmations {
                            confirmations.close();
                        }
                    }
                }
            });
            reconcilers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(run);
        } else {
            state.ready.store(true, Ordering::Release);
        }
        drop(state);
        tracing::info!(%addr, "kubescribe is serving");
        Ok(Self {
            addr,
            handle,
            task,
            writers,
            pushers,
            reviews: review_tasks,
            reconcilers,
            probes: probes_task,
            dev_ca,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until SIGTERM or ctrl-c, then shuts down gracefully.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }

    /// Stops accepting, lets open requests finish, and waits for the writer's queue.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(Duration::from_secs(10)));
        let served = match self.task.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Some(probes) = self.probes {
            probes.abort();
        }
        // The reconciler's tasks hold store handles; they stop here, so the writers
        // can finish their queues and stop.
        // (Again until none is left: the snapshot task may start the watches while
        // it is being stopped.)
        loop {
            let tasks =
                std::mem::take(&mut *self.reconcilers.lock().unwrap_or_else(|e| e.into_inner()));
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                task.abort();
                let _ = task.await;
            }
        }
        // The trackers hold store handles too.
        for task in self.reviews {
            task.abort();
            let _ = task.await;
        }
        let writers = self.writers;
        let _ = tokio::task::spawn_blocking(move || {
            for writer in writers {
                writer.join();
            }
        })
        .await;
        for pusher in self.pushers {
            pusher.stop().await;
        }
        tracing::info!("stopped");
        served
    }
}

/// TLS on accepted connections, with `TCP_NODELAY`: an answer split over TLS records
/// must not sit behind Nagle's algorithm waiting for a delayed ACK (a 40 ms stall).
pub fn tls_acceptor(
    config: std::sync::Arc<rustls::ServerConfig>,
) -> axum_server::tls_rustls::RustlsAcceptor<axum_server::accept::NoDelayAcceptor> {
    axum_server::tls_rustls::RustlsAcceptor::new(RustlsConfig::from_config(config))
        .acceptor(axum_server::accept::NoDelayAcceptor::new())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// HTTP/2: the streams one connection may have open, and the flow-control window
/// of each (what a client may send before kubescribe reads it).
///
/// Under the memory bench's load a window took about 100 ms to come back, so the
/// size trades large-body speed for memory: 64 KiB took 15 s for one 8 MiB body,
/// 256 KiB about 4 s, hyper's default 1 MiB under 1 s but a peak over the chart's
/// limit (docs/performance.md). Ordinary bodies fit one window.
const H2_STREAMS: u32 = 16;
const H2_STREAM_WINDOW: u32 = 256 * 1024;

/// A configuration whose commits can change the cluster must know its callers:
/// commits that leave the machine for a remote (every `then: deny` rule has one) are
/// what a GitOps tool applies, with its own, usually cluster-admin, rights, so anyone
/// who can reach the port could otherwise change the cluster under any name.
/// A reviewer for every rule with `review`, each following its open reviews in a
/// task of its own.
#[allow(clippy::type_complexity)]
fn start_reviews(
    config: &Config,
    targets: &[TargetState],
    remotes: &[Option<Remote>],
    metrics: &Arc<Metrics>,
) -> Result<
    (
        Vec<Arc<crate::review::Reviewer>>,
        Vec<tokio::task::JoinHandle<()>>,
    ),
    ServeError,
> {
    let names: Vec<String> = config.targets().into_iter().map(|t| t.name).collect();
    let (mut reviewers, mut tasks) = (Vec::new(), Vec::new());
    for rule in &config.rules {
        let Some(review) = &rule.review else {
            continue;
        };
        let name = rule
            .repository
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_REPOSITORY);
        let index = names.iter().position(|n| n == name).unwrap_or(0);
        // The config requires `wait: push`, so the repository has a remote.
        let Some(remote) = remotes[index].clone() else {
            return Err(ServeError::Config(format!(
                "rule {:?}: review needs a remote on its repository",
                rule.name
            )));
        };
        let reviewer = crate::review::Reviewer::new(
            rule.name.clone(),
            review.clone(),
            remote,
            targets[index].store.clone(),
            metrics.clone(),
        )
        .map_err(|e| ServeError::Config(format!("rule {:?}: review: {e}", rule.name)))?;
        let reviewer = Arc::new(reviewer);
        tasks.push(reviewer.clone().spawn());
        reviewers.push(reviewer);
    }
    Ok((reviewers, tasks))
}

fn check_callers_are_authenticated(config: &Config) -> Result<(), ServeError> {
    let auth = &config.server.client_auth;
    let Some(why) = config.targets().iter().find_map(|t| {
        t.repository
            .remote
            .as_ref()
            .map(|r| format!("repository {} pushes to {}", t.name, r.display_url()))
    }) else {
        return Ok(());
    };
    if auth.authenticates() {
        return Ok(());
    }
    // A forged review under `record: confirmed` reaches nothing: only what the
    // cluster shows is committed (managed clusters, whose apiserver presents nothing).
    if !config.rules.is_empty()
        && config
            .rules
            .iter()
            .all(|rule| rule.record == crate::config::Record::Confirmed)
    {
        tracing::info!(%why, "callers are not authenticated; every rule uses record: confirmed, so only what the cluster persisted is recorded");
        return Ok(());
    }
    if auth.allow_unauthenticated {
        tracing::warn!(
            %why,
            "server.clientAuth.allowUnauthenticated: anyone who can reach this port can write to git under any name, and a GitOps tool may apply it; set server.clientAuth.caFile or tokenFile"
        );
        return Ok(());
    }
    Err(ServeError::Config(format!(
        "{why}, so what kubescribe records can reach the cluster through a GitOps tool, yet any caller may send it admission reviews: set server.clientAuth.caFile (the CA of the apiserver's client certificate) or server.clientAuth.tokenFile (docs/security.md); on a managed cluster whose apiserver cannot authenticate, give every rule `record: confirmed`; or, knowing the risk, server.clientAuth.allowUnauthenticated: true"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_rules_need_no_caller_authentication_even_with_a_remote() {
        let config = |record: &str| {
            Config::from_yaml(&format!(
                "reconcile:\n  enabled: true\nrepository:\n  remote:\n    url: https://git.example.com/ops/cluster.git\nrules:\n- name: a\n  record: confirmed\n- name: b\n  record: {record}\n"
            ))
            .unwrap()
        };
        assert!(check_callers_are_authenticated(&config("confirmed")).is_ok());
        let refused = check_callers_are_authenticated(&config("immediate"))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("record: confirmed"), "{refused}");
    }
}
