//! Commits changes to a bare git repository: one writer, one commit per change, one
//! durability point per batch.
//!
//! Invariants:
//! - Exactly one writer thread owns the repository and the branch. It commits with the
//!   tip it last wrote as parent and moves the branch with compare-and-swap, so a
//!   second writer becomes an error, never a lost update. History stays linear.
//! - A waiter hears "committed" only after the batch's objects (one pack, see
//!   [`pack`]) and then the branch ref were fsync'ed: objects first, so a crash can
//!   never leave the branch naming an object that is not there. One such durability
//!   point covers a whole batch (group commit).
//! - A change that leaves its file byte-identical makes no commit.
//! - A change the webhook already let through (`wait: none`) is not dropped on an
//!   error: it is retried with backoff, in batches of its own, until it commits or a
//!   newer write to the same file supersedes it (bounded by `store.queueCapacity`).
//!   A change someone waits for is answered with the error instead, so that write is
//!   denied and not recorded.
//!
//! The writer never decides what to record; it only applies [`Change`]s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::hash::ObjectId;
use tokio::sync::{mpsc, oneshot};

mod commit;
mod compact;
mod delta;
mod denials;
mod in_place;
mod merge;
mod open;
mod outgoing;
mod pack;
mod recovery;
mod replay;
mod revert;
mod review;
mod sealed;
mod writer;

pub use review::Proposed;
pub(crate) use sealed::follow as follow_sops;

pub(crate) use outgoing::{Outgoing, PackSource};

use self::{commit::*, open::*, revert::*, writer::*};

use crate::config::{CommitterConfig, Config, Target};
use crate::error_chain;
use crate::manifest::Change;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, PushWaiter};
pub(crate) use in_place::index_of;
pub use in_place::SharedIndex;

/// Why a change could not be committed. Every variant is worth retrying once the
/// cause (disk, lock, load) is gone; [`StoreError::advice`] says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the repository at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("writing git objects failed: {reason}")]
    Write { reason: String },
    #[error("moving branch {branch} failed: {reason}")]
    Branch { branch: String, reason: String },
    #[error("syncing the repository to disk failed: {reason}")]
    Sync { reason: String },
    #[error("the commit was not made before the apiserver's deadline")]
    Expired,
    #[error("the commit was still being written to disk at the apiserver's deadline; if it lands, kubescribe reverts it before it is pushed")]
    Late,
    #[error("the change queue is full")]
    QueueFull,
    #[error("kubescribe is shutting down")]
    Closed,
}

impl StoreError {
    /// What the person whose write was denied (or the operator) should do.
    pub fn advice(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => {
                "check that kubescribe's data volume is mounted and writable, then wait: kubescribe opens it by itself"
            }
            StoreError::Write { .. } | StoreError::Sync { .. } => {
                "check free space and permissions of kubescribe's data volume, then retry the write"
            }
            StoreError::Branch { .. } => {
                "another process moved or locked the branch (look for a stale *.lock file in the repository and remove it); kubescribe continues from the branch as it is, so retry the write"
            }
            StoreError::Expired | StoreError::QueueFull => {
                "kubescribe is overloaded or its disk is slow; retry the write, and check kubescribe's logs and metrics"
            }
            StoreError::Late => {
                "kubescribe's disk is slow (see kubescribe_batch_duration_seconds); retry the write, and check the data volume"
            }
            StoreError::Closed => "retry the write once kubescribe is back",
        }
    }

    fn label(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::Write { .. } => "write",
            StoreError::Branch { .. } => "branch",
            StoreError::Sync { .. } => "sync",
            StoreError::Expired => "expired",
            StoreError::Late => "late",
            StoreError::QueueFull => "queue_full",
            StoreError::Closed => "closed",
        }
    }
}

/// What happened to one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, and durable on disk.
    Committed { commit: ObjectId },
    /// The file already had these bytes (or was already gone): no commit.
    Unchanged,
    /// A scale write whose parent object has no file yet: nothing to edit.
    ParentMissing,
    /// Not recorded, and why: an edit in place that cannot be made as asked (see
    /// [`crate::manifest::plan_in_place`]).
    Refused { reason: String },
}

struct Waiter {
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
    deadline: Instant,
    claim: Claim,
}

/// Decides, once, between the writer and a waiting caller, whether the caller's
/// change is committed: the writer claims it when it takes it into a batch, the
/// caller abandons it at its deadline. Whoever is first wins, so a change whose
/// caller gave up is never committed, and a caller whose change is being committed
/// waits for the outcome (a little past its deadline, see the handler).
#[derive(Clone, Default)]
pub struct Claim(Arc<std::sync::atomic::AtomicU8>);

impl Claim {
    const WAITING: u8 = 0;
    const CLAIMED: u8 = 1;
    const ABANDONED: u8 = 2;

    fn switch(&self, to: u8) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(Self::WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The writer takes the change; false when its caller gave up on it.
    fn take(&self) -> bool {
        self.switch(Self::CLAIMED)
    }

    /// The caller gives up on its change; false when the writer is committing it.
    pub fn abandon(&self) -> bool {
        self.switch(Self::ABANDONED)
    }
}

struct Job {
    change: Change,
    /// `None` when the admission answer did not wait (`wait: none`).
    waiter: Option<Waiter>,
    /// Told once the remote has the commit (`wait: push`).
    push_waiter: Option<PushWaiter>,
    /// Undo this commit's change to `change.path` instead of applying `change`.
    revert: Option<Revert>,
    /// Apply all of these in one commit by kubescribe instead (a reconcile batch);
    /// `change` is then the first of them.
    bundle: Option<Bundle>,
    /// This change's share of `store.queueBytes`, given back once it is committed
    /// (or dropped).
    _queued_bytes: Option<tokio::sync::OwnedSemaphorePermit>,
    /// One more trailer line for the commit message (a review commit's
    /// `Kubescribe-Review`).
    trailer: Option<String>,
}

/// Many file changes made as one commit, authored by the committer identity.
struct Bundle {
    changes: Vec<Change>,
    message: String,
}

/// Work for the writer that is not a change.
enum Control {
    /// Replay the outbox's commits onto `onto` (the remote's tip, fetched; `None`
    /// for an empty remote) and move the branch there.
    Replay {
        onto: Option<ObjectId>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The remote accepted `commit`: point the tracking ref at it.
    Pushed { commit: ObjectId },
    /// A write denied after its commit was made (its push did not land in time).
    Revert(Box<PendingRevert>),
    /// Commit a change on a review branch (see [`review`]).
    Propose(Box<review::ReviewJob>),
    /// Move a review branch from `from` to `to` (delete it with `None`).
    MoveReview {
        branch: String,
        from: ObjectId,
        to: Option<ObjectId>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The sending side: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Job>,
    /// `store.queueBytes` in KiB: the file bytes the queue may hold.
    queue_bytes: Arc<tokio::sync::Semaphore>,
    queue_units: usize,
    control: mpsc::UnboundedSender<Control>,
    metrics: Arc<Metrics>,
    /// Why the last batch failed, until one succeeds.
    failing: Arc<std::sync::Mutex<Option<String>>>,
    /// Why the repository cannot be opened, until it can.
    not_open: Arc<std::sync::Mutex<Option<String>>>,
    /// The repository's path and branch, for readers beside the writer.
    location: Arc<(PathBuf, String)>,
    /// The e-mail of kubescribe's committer identity: the author of the commits it
    /// makes on its own (the reconciler's).
    committer_email: Arc<str>,
    /// What the branch declares, when it is edited in place.
    declared: Option<SharedIndex>,
    /// Encrypts Secrets, following the branch's `.sops.yaml`.
    sealer: Option<Arc<crate::secrets::Sealer>>,
}

/// The receivers for one waiting change; see [`StoreHandle::submit`].
pub struct Receipt {
    pub committed: oneshot::Receiver<Result<Outcome, StoreError>>,
    pub claim: Claim,
    /// Present when asked for: answered once the remote has the commit.
    pub pushed: Option<PushReceipt>,
}

/// The receiving side of a `wait: push` waiter.
pub struct PushReceipt {
    pub pushed: oneshot::Receiver<crate::outbox::Pushed>,
    /// Names this waiter to [`crate::outbox::Outbox::deny`].
    pub ticket: u64,
}

/// Waits for the writer thread to finish its queue; see [`StoreHandle::open`].
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Blocks until every queued change has been committed (or reported lost).
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// Settings the writer needs, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The repository's name in the config, for logs.
    pub name: String,
    pub path: PathBuf,
    pub branch: String,
    pub email_domain: String,
    pub committer: CommitterConfig,
    pub queue_capacity: usize,
    /// The file bytes queued changes may hold together.
    pub queue_bytes: usize,
    pub max_batch: usize,
    /// How long the writer gathers changes nobody waits for before committing them.
    pub linger: Duration,
    /// Fold the packs together in the background after this many new packs (one
    /// per batch; see `store::compact`); 0 turns it off.
    pub fold_after_packs: u64,
    /// Open the repository again once this many bytes of packs were written since
    /// it was last opened: gix keeps every pack it opened mapped, and the pages it
    /// read stay in RSS until then. 0 turns it off.
    pub reopen_after_pack_bytes: u64,
    /// Where durable commits go for the pusher, when the branch has a remote.
    pub outbox: Option<Arc<Outbox>>,
    /// Held before a batch is made durable, in tests.
    pub before_durable: Option<crate::fault::Gate>,
    /// Held before the reverts of denied writes are committed, in tests.
    pub before_revert: Option<crate::fault::Gate>,
    /// Fails making batches durable while on, in tests.
    pub failing_disk: Option<crate::fault::Switch>,
    /// The index of what the branch declares, when it is edited in place.
    pub in_place: Option<SharedIndex>,
    /// Encrypts Secrets (`secrets: sops`); set by the caller, which loads the keys.
    pub sealer: Option<Arc<crate::secrets::Sealer>>,
}

impl StoreSettings {
    pub fn from_config(config: &Config, target: &Target) -> Self {
        Self {
            name: target.name.clone(),
            path: target.path.clone(),
            branch: target.repository.branch.clone(),
            email_domain: config.author.email_domain.clone(),
            committer: config.committer.clone(),
            queue_capacity: config.store.queue_capacity,
            queue_bytes: config.store.queue_bytes,
            max_batch: config.store.max_batch,
            linger: config.store.linger,
            fold_after_packs: 32,
            reopen_after_pack_bytes: 8 << 20,
            outbox: target
                .repository
                .remote
                .as_ref()
                .map(|_| Arc::new(Outbox::default())),
            before_durable: config.faults.before_durable.clone(),
            before_revert: config.faults.before_revert.clone(),
            failing_disk: config.faults.failing_disk.clone(),
            in_place: target
                .repository
                .in_place
                .enabled
                .then(|| SharedIndex::new(&target.repository)),
            sealer: None,
        }
    }
}

impl StoreHandle {
    /// Opens (or creates) the bare repository and starts the writer thread. The writer
    /// stops once every handle is dropped and the queue is drained.
    pub fn open(
        settings: StoreSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, WriterThread), StoreError> {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let queue_units = settings.queue_bytes.div_ceil(1024).clamp(
            1,
            tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
        );
        let location = Arc::new((settings.path.clone(), settings.branch.clone()));
        let committer_email: Arc<str> = settings.committer.email.as_str().into();
        let declared = settings.in_place.clone();
        let sealer = settings.sealer.clone();
        let (control, control_rx) = mpsc::unbounded_channel();
        let failing = Arc::new(std::sync::Mutex::new(None));
        let writer_failing = failing.clone();
        let not_open = Arc::new(std::sync::Mutex::new(None));
        let writer_not_open = not_open.clone();
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let thread_metrics = metrics.clone();
        // gix's Repository is not Send without its `parallel` feature, so the writer
        // opens it on its own thread and only the result crosses back.
        let thread = std::thread::Builder::new()
            .name("kubescribe-store".to_owned())
            .spawn(move || {
                // Answers come first: under CPU pressure the batch waits a little,
                // not the admission requests (a `wait: commit` answer waits anyway).
                if let Err(e) = rustix::process::setpriority_process(
                    Some(rustix::thread::gettid()),
                    WRITER_NICENESS,
                ) {
                    tracing::debug!(error = %e, "cannot lower the writer thread's priority");
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a current-thread runtime with only a timer always builds");
                let (mut rx, mut control_rx) = (rx, control_rx);
                // The first attempt decides nothing: a repository that cannot be
                // opened yet (a volume not mounted, a full disk) is tried again, and
                // meanwhile /readyz says why.
                let first = Writer::open_repository(&settings, &thread_metrics);
                if let (Ok(opened), Some(sealer)) = (&first, &settings.sealer) {
                    // Before start returns: admission asks it for recipients.
                    sealed::follow(sealer, &opened.repo, opened.tree);
                }
                if let Err(error) = &first {
                    // Before start returns: /readyz must never pass meanwhile.
                    *writer_not_open.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("{error}; {}", error.advice()));
                }
                let _ = opened_tx.send(());
                let (opened, retry) = match first {
                    Ok(opened) => (opened, Vec::new()),
                    Err(error) => {
                        let waited = runtime.block_on(wait_for_repository(
                            &settings,
                            &thread_metrics,
                            error,
                            (&mut rx, &mut control_rx),
                            &writer_not_open,
                        ));
                        match waited {
                            Some(opened) => opened,
                            None => return,
                        }
                    }
                };
                let mut writer = Writer::new(settings, opened, rx, control_rx, thread_metrics);
                writer.failing = writer_failing;
                writer.retry = retry;
                writer.follow_sops();
                runtime.block_on(writer.run());
            })
            .map_err(|e| StoreError::Open {
                path: PathBuf::new(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        match opened_rx.recv() {
            Ok(()) => Ok((
                Self {
                    tx,
                    queue_units,
                    queue_bytes: Arc::new(tokio::sync::Semaphore::new(queue_units)),
                    control,
                    metrics,
                    failing,
                    not_open,
                    location,
                    committer_email,
                    declared,
                    sealer,
                },
                WriterThread(thread),
            )),
            Err(_) => Err(StoreError::Open {
                path: PathBuf::new(),
                reason: "the writer thread stopped while opening".to_owned(),
            }),
        }
    }

    /// Queues `change` and, for a waiter, returns the receivers of its outcome (and
    /// of its push, with `push`). Waits for room in the queue until `deadline`.
    pub async fn submit(
        &self,
        change: Change,
        wait_until: Option<Instant>,
        push: bool,
        deadline: Instant,
    ) -> Result<Option<Receipt>, StoreError> {
        let mut job = Job {
            change,
            waiter: None,
            push_waiter: None,
            revert: None,
            bundle: None,
            _queued_bytes: None,
            trailer: None,
        };
        let receipt = wait_until.map(|deadline| {
            let (reply, committed) = oneshot::channel();
            let claim = Claim::default();
            job.waiter = Some(Waiter {
                reply,
                deadline,
                claim: claim.clone(),
            });
            let pushed = push.then(|| {
                let (waiter, pushed) = PushWaiter::new();
                let ticket = waiter.ticket;
                job.push_waiter = Some(waiter);
                PushReceipt { pushed, ticket }
            });
            Receipt {
                committed,
                claim,
                pushed,
            }
        });
        let waits = job.waiter.is_some();
        // Room in bytes first (a change of a few MiB weighs as much as thousands of
        // ordinary ones), then a place in the queue; both like the count did before:
        // at once for an answer that does not wait, until the deadline otherwise.
        let units = match &job.change.action {
            crate::manifest::Action::Put(bytes) => bytes.len().div_ceil(1024),
            crate::manifest::Action::Seal(sealed) => {
                sealed.plain().to_string().len().div_ceil(1024)
            }
            _ => 1,
        }
        .clamp(1, self.queue_units) as u32;
        let bytes = match self.queue_bytes.clone().try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(StoreError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) if !waits => {
                return Err(StoreError::QueueFull)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout_at(
                    deadline.into(),
                    self.queue_bytes.clone().acquire_many_owned(units),
                )
                .await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(StoreError::Closed),
                    Err(_) => return Err(StoreError::QueueFull),
                }
            }
        };
        job._queued_bytes = Some(bytes);
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(StoreError::Closed),
            // An answer that does not wait must not wait for room either.
            Err(mpsc::error::TrySendError::Full(())) if !waits => {
                return Err(StoreError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                match tokio::time::timeout_at(deadline.into(), self.tx.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(StoreError::Closed),
                    Err(_) => return Err(StoreError::QueueFull),
                }
            }
        };
        self.metrics.queue_depth.inc();
        permit.send(job);
        Ok(receipt)
    }

    /// Undoes `commit`'s change to `change.path`: its write was denied after it was
    /// committed. With `ticket`, the outbox holds that waiter's commit back until
    /// the revert is appended. Nobody waits for it; it never waits for room (the
    /// control channel is unbounded: a revert must not be lost to a full queue).
    ///
    /// The revert is noted on disk first (one small fsync'ed file, on this rare
    /// path), so it survives a crash before the writer commits it.
    pub fn revert(&self, change: Change, commit: ObjectId, reason: String, ticket: Option<u64>) {
        let path = change.path.clone();
        let note = match denials::write(&self.location.0, &change, commit, &reason) {
            Ok(note) => Some(note),
            Err(error) => {
                tracing::error!(%path, %commit, %error, "cannot note a denied write on disk; its revert is only in memory until the writer commits it");
                None
            }
        };
        let control = Control::Revert(Box::new(PendingRevert {
            change: change.without_body(),
            revert: Revert {
                commit,
                reason,
                after: None,
            },
            ticket,
            at: None,
            note,
        }));
        if self.control.send(control).is_err() {
            tracing::error!(%path, %commit, "kubescribe is stopping and cannot revert a denied write; git keeps a change the cluster does not have until the next write of this object");
        }
    }

    /// Why the repository cannot take changes right now (its last batch failed), or
    /// `None` when it can.
    pub fn unavailable(&self) -> Option<String> {
        self.not_open().or_else(|| {
            self.failing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Why the repository cannot be opened (with what to do), or `None` once it is
    /// open. `/readyz` fails while it is `Some`.
    pub fn not_open(&self) -> Option<String> {
        self.not_open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Commits one change, authored by its user like an admitted one, and waits for
    /// it until `deadline` (the reconciler's commit of a `record: confirmed` change).
    pub async fn commit_change(
        &self,
        change: Change,
        deadline: Instant,
    ) -> Result<Outcome, StoreError> {
        let receipt = self
            .submit(change, Some(deadline), false, deadline)
            .await?
            .ok_or(StoreError::Closed)?;
        let Receipt {
            mut committed,
            claim,
            ..
        } = receipt;
        match tokio::time::timeout_at(deadline.into(), &mut committed).await {
            Ok(outcome) => outcome.unwrap_or(Err(StoreError::Closed)),
            Err(_) if claim.abandon() => Err(StoreError::Expired),
            Err(_) => committed.await.unwrap_or(Err(StoreError::Closed)),
        }
    }

    /// Commits `changes` (Put and Remove; scale edits are not for bundles) as one
    /// commit with `message`, authored by kubescribe, and waits for it until
    /// `deadline`. `Unchanged` when git already had every file as given.
    pub async fn commit_bundle(
        &self,
        changes: Vec<Change>,
        message: String,
        deadline: Instant,
    ) -> Result<Outcome, StoreError> {
        let Some(first) = changes.first().cloned() else {
            return Ok(Outcome::Unchanged);
        };
        let (reply, mut committed) = oneshot::channel();
        let claim = Claim::default();
        let job = Job {
            change: first,
            waiter: Some(Waiter {
                reply,
                deadline,
                claim: claim.clone(),
            }),
            push_waiter: None,
            revert: None,
            bundle: Some(Bundle { changes, message }),
            _queued_bytes: None,
            trailer: None,
        };
        let permit = tokio::time::timeout_at(deadline.into(), self.tx.reserve())
            .await
            .map_err(|_| StoreError::QueueFull)?
            .map_err(|_| StoreError::Closed)?;
        self.metrics.queue_depth.inc();
        permit.send(job);
        match tokio::time::timeout_at(deadline.into(), &mut committed).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) if claim.abandon() => Err(StoreError::Expired),
            // Being committed: nobody outside waits on the reconciler's deadline, so
            // hear how it ends rather than guess.
            Err(_) => committed.await.unwrap_or(Err(StoreError::Closed)),
        }
    }

    /// Calls `each` with every file under `under` on the branch as it is now (see
    /// [`for_each_file`]); blocking, so call it from a blocking thread.
    pub fn for_each_file(
        &self,
        under: &str,
        each: impl FnMut(&str, &[u8]),
    ) -> Result<(), StoreError> {
        for_each_file(&self.location.0, &self.location.1, under, each)
    }

    /// The index of what the branch declares, when it is edited in place.
    pub fn declared(&self) -> Option<&SharedIndex> {
        self.declared.as_ref()
    }

    /// What encrypts the branch's Secrets (`secrets: sops`). While it does not
    /// know the branch's `.sops.yaml` (the writer could not read it), it reads the
    /// branch itself first: a workload of Secrets alone never moves the branch,
    /// which is when the writer reads it again.
    pub fn sealer(&self) -> Option<&crate::secrets::Sealer> {
        let sealer = self.sealer.as_deref()?;
        if sealer.is_unknown() {
            match branch_tree(&self.location.0, &self.location.1) {
                Ok(Some((repo, _, tree))) => sealed::follow(sealer, &repo, tree),
                Ok(None) => sealer.follow(Ok(None), |_| Err(String::new())),
                Err(error) => tracing::debug!(%error, "cannot read the branch for its .sops.yaml"),
            }
        }
        Some(sealer)
    }

    /// The files on the branch as it is now that `cascade` would remove besides the
    /// object's own (see [`crate::cascade`]); blocking, so call it from a blocking
    /// thread.
    pub fn cascade_files(
        &self,
        cascade: &crate::cascade::Cascade,
        own: &str,
    ) -> Result<Vec<String>, StoreError> {
        let Some((repo, _, tree)) = branch_tree(&self.location.0, &self.location.1)? else {
            return Ok(Vec::new());
        };
        let files = crate::cascade::files(&repo, tree, cascade).map_err(|e| StoreError::Open {
            path: self.location.0.clone(),
            reason: e.to_string(),
        })?;
        Ok(files
            .into_iter()
            .map(|(file, _)| file)
            .filter(|file| file != own)
            .collect())
    }

    /// Of `paths`, those on the branch now whose last change kubescribe made on its own
    /// (a commit it authored: the reconciler's, never a person's recorded write, which
    /// kubescribe only commits). A file a person wrote, in the cluster or in git, or
    /// whose last change is more than [`HISTORY_READ_MAX`] commits back, is left out.
    /// With `walk` false, only which of `paths` are on the branch. Blocking, so call
    /// it from a blocking thread.
    pub fn written_by_kubescribe(
        &self,
        paths: &[String],
        walk: bool,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let read_error = |e: &dyn std::fmt::Display| StoreError::Open {
            path: self.location.0.clone(),
            reason: e.to_string(),
        };
        let mut ours = std::collections::HashSet::new();
        let Some((repo, tip, tree)) = branch_tree(&self.location.0, &self.location.1)? else {
            return Ok(ours);
        };
        let mut open: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for path in paths {
            if lookup(&repo, tree, path)
                .map_err(|e| read_error(&e))?
                .is_some()
            {
                open.insert(path.as_str());
            }
        }
        if !walk {
            return Ok(open.into_iter().map(str::to_owned).collect());
        }
        let mut next = Some(tip);
        let mut read = 0;
        while let Some(id) = next.filter(|_| !open.is_empty() && read < HISTORY_READ_MAX) {
            read += 1;
            let commit = repo.find_commit(id).map_err(|e| read_error(&e))?;
            let decoded = commit.decode().map_err(|e| read_error(&e))?;
            let by_us = decoded.author().map_err(|e| read_error(&e))?.email
                == self.committer_email.as_bytes();
            let parent = decoded.parents().next();
            let parent_tree = match parent {
                Some(parent) => repo
                    .find_commit(parent)
                    .and_then(|c| c.tree_id())
                    .map_err(|e| read_error(&e))?
                    .detach(),
                None => ObjectId::empty_tree(repo.object_hash()),
            };
            let mut changed = Vec::new();
            replay::diff_trees(&repo, parent_tree, decoded.tree(), "", &mut changed)
                .map_err(|e| read_error(&e))?;
            for (path, _) in changed {
                // The newest change of a file decides.
                if open.remove(path.as_str()) && by_us {
                    ours.insert(path);
                }
            }
            next = parent;
        }
        Ok(ours)
    }

    /// Commits `change` on review branch `branch` (new, from the rule's branch, or on
    /// top of it when it exists), never on the rule's branch; waits until
    /// `deadline`; `trailer` ends the commit message; `base` is the file as it was
    /// before the write (see `merge_into_session`). The outbox never sees the
    /// commit: the reviewer pushes it.
    pub async fn propose(
        &self,
        change: Change,
        branch: &str,
        trailer: &str,
        base: Option<Vec<u8>>,
        deadline: Instant,
    ) -> Result<Proposed, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Propose(Box::new(review::ReviewJob {
                change,
                branch: branch.to_owned(),
                trailer: trailer.to_owned(),
                base,
                reply,
            })))
            .map_err(|_| StoreError::Closed)?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(answer) => answer.unwrap_or(Err(StoreError::Closed)),
            Err(_) => Err(StoreError::Expired),
        }
    }

    /// Moves local review branch `branch` from `from` to `to` (`None`: deletes
    /// it), unless something moved it meanwhile.
    pub async fn move_review(
        &self,
        branch: &str,
        from: ObjectId,
        to: Option<ObjectId>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::MoveReview {
                branch: branch.to_owned(),
                from,
                to,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// The local branches under `prefix` (`kubescribe/`), with their tips: the open
    /// reviews after a restart. Blocking, so call it from a blocking thread.
    pub fn branches_under(&self, prefix: &str) -> Result<Vec<(String, ObjectId)>, StoreError> {
        let read_error = |e: &dyn std::fmt::Display| StoreError::Open {
            path: self.location.0.clone(),
            reason: e.to_string(),
        };
        let repo = gix::open_opts(&self.location.0, gix::open::Options::isolated())
            .map_err(|e| read_error(&e))?;
        let references = repo.references().map_err(|e| read_error(&e))?;
        let mut found = Vec::new();
        let full = format!("refs/heads/{prefix}");
        for reference in references
            .prefixed(full.as_str())
            .map_err(|e| read_error(&e))?
        {
            let mut reference = reference.map_err(|e| read_error(&e))?;
            let name = reference.name().as_bstr().to_string();
            let Ok(id) = reference.peel_to_id() else {
                continue;
            };
            if let Some(branch) = name.strip_prefix("refs/heads/") {
                if branch != self.location.1 {
                    found.push((branch.to_owned(), id.detach()));
                }
            }
        }
        Ok(found)
    }

    /// The e-mail of kubescribe's own committer identity.
    pub fn committer_email(&self) -> &str {
        &self.committer_email
    }

    /// What a pusher needs to ask for replays; it does not keep the writer alive.
    pub fn replayer(&self) -> Replayer {
        Replayer {
            control: self.control.clone(),
        }
    }
}

/// Asks the writer to replay its unpushed commits (see [`crate::push`]). Holding it
/// does not keep the writer running: the writer stops once every [`StoreHandle`] is
/// gone.
pub struct Replayer {
    control: mpsc::UnboundedSender<Control>,
}

impl Replayer {
    /// Records that the remote has `commit` (and everything before it), so a restart
    /// knows what is left to push. Losing this on a crash only means pushing again,
    /// which the remote answers with "up to date".
    pub(crate) fn pushed(&self, commit: ObjectId) {
        let _ = self.control.send(Control::Pushed { commit });
    }

    pub(crate) async fn replay(&self, onto: Option<ObjectId>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Replay { onto, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The note, in kubescribe's own directory of a repository, that kubescribe found
/// its branch empty (and the remote's too) when it first started there.
const STARTED_EMPTY: &str = "kubescribe/started-empty";

/// What the note says of where the branch goes: a hash of the remote's URL and the
/// branch (never the URL itself, which may hold a user name), so a remote added or
/// changed later, which may hold anything, is not taken as started empty.
fn destination(remote: Option<&str>, branch: &str) -> String {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(remote.unwrap_or("").as_bytes());
    hasher.update(b"\n");
    hasher.update(branch.as_bytes());
    let digest = hasher
        .try_finalize()
        .map(|id| id.to_hex().to_string())
        .unwrap_or_default();
    format!("destination: {digest}\n")
}

/// Notes that the repository at `path` started empty, if its `branch` has no commit
/// and `remote_empty` (no `remote`, or one whose branch does not exist). A repository
/// that never held anything never had a GitOps tool apply an earlier kubescribe's
/// files, so cleaning it needs no one's consent (see [`started_empty`]).
pub fn note_started_empty(path: &Path, branch: &str, remote: Option<&str>, remote_empty: bool) {
    let note = path.join(STARTED_EMPTY);
    if !remote_empty || note.exists() {
        return;
    }
    match branch_tree(path, branch) {
        Ok(None) => {}
        // Has commits, or cannot be read: not known to be empty.
        _ => return,
    }
    let text = format!(
        "kubescribe started this repository empty: reconcile.removeControlPlaneFiles defaults to true here\n{}",
        destination(remote, branch)
    );
    let written = note
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&note, text));
    if let Err(error) = written {
        tracing::warn!(%error, path = %note.display(), "cannot note that the repository started empty");
    }
}

/// Whether kubescribe started the repository at `path` empty, with the same remote
/// and branch as now (see [`note_started_empty`]).
pub fn started_empty(path: &Path, branch: &str, remote: Option<&str>) -> bool {
    std::fs::read_to_string(path.join(STARTED_EMPTY))
        .is_ok_and(|text| text.contains(&destination(remote, branch)))
}

/// How many commits [`StoreHandle::written_by_kubescribe`] reads back at most.
const HISTORY_READ_MAX: usize = 100_000;

/// Creates the bare repository at `path` unless there is one, with HEAD naming
/// `branch` so `git clone` checks it out.
pub fn init_repository(path: &Path, branch: &str) -> Result<(), StoreError> {
    let open_error = |reason: String| StoreError::Open {
        path: path.to_owned(),
        reason,
    };
    let is_empty_dir = std::fs::read_dir(path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !path.exists() || is_empty_dir {
        std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
        gix::init_bare(path).map_err(|e| open_error(error_chain(&e)))?;
        std::fs::write(path.join("HEAD"), format!("ref: refs/heads/{branch}\n"))
            .map_err(|e| open_error(e.to_string()))?;
    }
    Ok(())
}

/// Calls `each` with every file under `under` (a root, `""` or ending in `/`) on
/// `branch` of the bare repository at `path`, with its bytes, one at a time. It
/// reads the branch as it is now and never writes, so it runs beside the writer.
pub fn for_each_file(
    path: &Path,
    branch: &str,
    under: &str,
    mut each: impl FnMut(&str, &[u8]),
) -> Result<(), StoreError> {
    let read_error = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let Some((repo, _, tree)) = branch_tree(path, branch)? else {
        return Ok(());
    };
    let tree = repo.find_tree(tree).map_err(|e| read_error(&e))?;
    let mut files = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut files)
        .map_err(|e| read_error(&e))?;
    for entry in files.records {
        if !entry.mode.is_blob() {
            continue;
        }
        let file = entry.filepath.to_string();
        if !file.starts_with(under) {
            continue;
        }
        let blob = repo.find_blob(entry.oid).map_err(|e| read_error(&e))?;
        each(&file, &blob.data);
    }
    Ok(())
}

/// The bare repository at `path`, and the commit and tree `branch` has now; `None`
/// before the branch's first commit.
#[allow(clippy::type_complexity)]
fn branch_tree(
    path: &Path,
    branch: &str,
) -> Result<Option<(gix::Repository, ObjectId, ObjectId)>, StoreError> {
    let read_error = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let repo = gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| read_error(&e))?;
    let Some(mut reference) = repo
        .try_find_reference(format!("refs/heads/{branch}").as_str())
        .map_err(|e| read_error(&e))?
    else {
        return Ok(None);
    };
    let (tip, tree) = {
        let commit = reference.peel_to_commit().map_err(|e| read_error(&e))?;
        let tree = commit.tree_id().map_err(|e| read_error(&e))?.detach();
        (commit.id, tree)
    };
    drop(reference);
    Ok(Some((repo, tip, tree)))
}

/// `alice@<domain>`; a username that already is an e-mail address is kept.
pub(crate) fn author_email(user: &str, domain: &str) -> String {
    let valid_email = user.split_once('@').is_some_and(|(local, host)| {
        !local.is_empty() && host.contains('.') && !user.contains([' ', '<', '>', ':', '\n'])
    });
    if valid_email {
        return user.to_owned();
    }
    let local: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let local = if local.is_empty() {
        "unknown".to_owned()
    } else {
        local
    };
    format!("{local}@{domain}")
}

#[cfg(test)]
mod tests {
    use gix::bstr::ByteSlice;

    use super::*;

    #[test]
    fn author_emails_use_the_domain_unless_the_user_is_an_address() {
        assert_eq!(author_email("alice", "k.local"), "alice@k.local");
        assert_eq!(
            author_email("colin@coder.com", "k.local"),
            "colin@coder.com"
        );
        assert_eq!(
            author_email("system:serviceaccount:ci:deployer", "k.local"),
            "system-serviceaccount-ci-deployer@k.local"
        );
        assert_eq!(author_email("", "k.local"), "unknown@k.local");
    }

    #[test]
    fn only_a_repository_started_empty_is_noted_so() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.git");
        let remote = Some("https://git.example.com/ops/cluster.git");
        init_repository(&fresh, "main").unwrap();
        note_started_empty(&fresh, "main", remote, false);
        assert!(
            !started_empty(&fresh, "main", remote),
            "the remote holds something"
        );
        note_started_empty(&fresh, "main", remote, true);
        assert!(started_empty(&fresh, "main", remote));
        // Another remote, or branch, may hold anything.
        assert!(!started_empty(&fresh, "main", None));
        assert!(!started_empty(&fresh, "prod", remote));

        let used = dir.path().join("used.git");
        init_repository(&used, "main").unwrap();
        let work = dir.path().join("work");
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@x"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        git(&["init", "-q", "-b", "main", work.to_str().unwrap()]);
        git(&[
            "-C",
            work.to_str().unwrap(),
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ]);
        git(&[
            "-C",
            work.to_str().unwrap(),
            "push",
            "-q",
            used.to_str().unwrap(),
            "main",
        ]);
        note_started_empty(&used, "main", None, true);
        assert!(!started_empty(&used, "main", None), "it has history");
    }

    #[test]
    fn signatures_cannot_break_the_commit_header() {
        let sig = signature("evil <x>\nname", "a<b>@c d", 0);
        assert_eq!(sig.name.to_str().unwrap(), "evil x name");
        assert_eq!(sig.email.to_str().unwrap(), "ab@cd");
    }
}
