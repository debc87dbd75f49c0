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

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gix::bstr::BString;
use gix::hash::ObjectId;
use gix::objs::tree::EntryKind;
use gix::refs::transaction::PreviousValue;
use tokio::sync::{mpsc, oneshot};

mod outgoing;
mod pack;
mod recovery;

pub(crate) use outgoing::{Outgoing, PackSource};

use crate::config::{CommitterConfig, Config, Target};
use crate::error_chain;
use crate::manifest::{self, Action, Change};
use crate::metrics::Metrics;
use crate::push::{tracking_ref, Outbox, PushWaiter, Unpushed};

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
}

/// Many file changes made as one commit, authored by the committer identity.
struct Bundle {
    changes: Vec<Change>,
    message: String,
}

/// A recorded change whose write was denied after all (its push did not land in
/// time): the file goes back to what it was before, unless a newer change replaced
/// it meanwhile.
#[derive(Clone)]
struct Revert {
    commit: ObjectId,
    reason: String,
}

/// A revert the writer owes: committed before any later commit is given to the
/// outbox, retried like a failed batch until it is.
struct PendingRevert {
    /// The denied change, without its body (the revert restores the file before it).
    change: Change,
    revert: Revert,
    /// The outbox hold to lift once the revert is appended.
    ticket: Option<u64>,
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
    pub pushed: oneshot::Receiver<crate::push::Pushed>,
    /// Names this waiter to [`crate::push::Outbox::deny`].
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
    /// Run a geometric `git repack` after this many new packs (one per batch); 0
    /// turns it off.
    pub repack_after_packs: u64,
    /// Where durable commits go for the pusher, when the branch has a remote.
    pub outbox: Option<Arc<Outbox>>,
    /// Held before a batch is made durable, in tests.
    pub before_durable: Option<crate::fault::Gate>,
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
            repack_after_packs: 32,
            outbox: target
                .repository
                .remote
                .as_ref()
                .map(|_| Arc::new(Outbox::default())),
            before_durable: config.faults.before_durable.clone(),
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
    pub fn revert(&self, change: Change, commit: ObjectId, reason: String, ticket: Option<u64>) {
        let path = change.path.clone();
        let control = Control::Revert(Box::new(PendingRevert {
            change: change.without_body(),
            revert: Revert { commit, reason },
            ticket,
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

struct Writer {
    repo: gix::Repository,
    settings: StoreSettings,
    branch_ref: gix::refs::FullName,
    tip: Option<ObjectId>,
    tree: ObjectId,
    rx: mpsc::Receiver<Job>,
    control: mpsc::UnboundedReceiver<Control>,
    metrics: Arc<Metrics>,
    /// `wait: none` changes whose batch failed, oldest first. They are retried in
    /// batches of their own, so a change that keeps failing never takes new ones down
    /// with it.
    retry: Vec<Job>,
    retry_at: Instant,
    backoff: Duration,
    /// A moving average of how long a batch takes, to skip waiters who would hear
    /// too late.
    batch_cost: Duration,
    packs_written: u64,
    repack: Option<std::process::Child>,
    /// Shared with [`StoreHandle::unavailable`].
    failing: Arc<std::sync::Mutex<Option<String>>>,
    /// Reverts of denied writes not committed yet (their commit failed); retried
    /// with `retry_at`. While there are any, new commits wait in `withheld`.
    reverts: Vec<PendingRevert>,
    /// Commits made while a revert is pending, oldest first: the outbox gets them
    /// together with the revert, so no push carries a denied change without it.
    withheld: Vec<Unpushed>,
}

/// What [`Writer::open_repository`] opened.
struct Opened {
    repo: gix::Repository,
    branch_ref: gix::refs::FullName,
    tip: Option<ObjectId>,
    tree: ObjectId,
}

/// How long the writer waits before trying again to open a repository it could not
/// open, at first and at most.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Niceness of the writer thread and of `git repack`, relative to the request path.
const WRITER_NICENESS: i32 = 19;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Opens the repository with object writes kept in memory until the batch is packed.
fn open_repository(path: &Path) -> Result<gix::Repository, String> {
    // Every batch adds a pack until the next repack folds them together, so allow for
    // more packs than gix assumes by default.
    let options = gix::open::Options::isolated().object_store_slots(
        gix::odb::store::init::Slots::AsNeededByDiskState {
            multiplier: 2.0,
            minimum: 1024,
        },
    );
    let repo = gix::open_opts(path, options).map_err(|e| error_chain(&e))?;
    if !repo.is_bare() {
        return Err("it is not a bare repository".to_owned());
    }
    let mut repo = repo.with_object_memory();
    repo.object_cache_size_if_unset(8 * 1024 * 1024);
    Ok(repo)
}

/// The commit and tree the branch names, or none for an unborn branch.
fn read_tip(
    repo: &gix::Repository,
    branch: &gix::refs::FullName,
) -> Result<(Option<ObjectId>, ObjectId), String> {
    match repo
        .try_find_reference(branch.as_ref())
        .map_err(|e| error_chain(&e))?
    {
        Some(mut reference) => {
            let commit = reference.peel_to_commit().map_err(|e| {
                format!(
                    "{} does not name a commit: {}",
                    branch.as_bstr(),
                    error_chain(&e)
                )
            })?;
            let tree = commit.tree_id().map_err(|e| error_chain(&e))?.detach();
            Ok((Some(commit.id), tree))
        }
        None => Ok((None, ObjectId::empty_tree(repo.object_hash()))),
    }
}

impl Writer {
    /// Opens (creating it if need be) the repository: everything at start that can
    /// fail. Nothing is taken from the queues yet.
    fn open_repository(settings: &StoreSettings, metrics: &Metrics) -> Result<Opened, StoreError> {
        let path = settings.path.clone();
        let open_error = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        init_repository(&path, &settings.branch)?;
        let recovered = recovery::recover(&path);
        if !recovered.is_empty() {
            tracing::warn!(
                path = %path.display(),
                ref_locks = ?recovered.ref_locks,
                keeps = ?recovered.keeps,
                packs_without_index = ?recovered.broken_packs,
                temporaries = ?recovered.temporaries,
                "removed what an earlier run left behind when it stopped abruptly"
            );
            for (leftover, count) in recovered.counts() {
                metrics.store_recovered(leftover, count as u64);
            }
        }
        let repo = open_repository(&path).map_err(open_error)?;
        let branch_ref = gix::refs::FullName::try_from(format!("refs/heads/{}", settings.branch))
            .map_err(|e| open_error(e.to_string()))?;
        let (mut tip, mut tree) = read_tip(&repo, &branch_ref).map_err(open_error)?;
        if let Some(outbox) = &settings.outbox {
            if tip.is_none() {
                // A fresh local repository starts from what the remote has (fetched
                // before the writer starts), like a clone.
                let tracking = gix::refs::FullName::try_from(tracking_ref(&settings.branch))
                    .map_err(|e| open_error(e.to_string()))?;
                let (remote_tip, remote_tree) = read_tip(&repo, &tracking).map_err(open_error)?;
                if let Some(commit) = remote_tip {
                    repo.reference(
                        branch_ref.as_ref(),
                        commit,
                        PreviousValue::MustNotExist,
                        "kubescribe: start from the remote",
                    )
                    .map_err(|e| open_error(error_chain(&e)))?;
                    (tip, tree) = (Some(commit), remote_tree);
                }
            }
            let unpushed = unpushed_commits(&path, &settings.branch).map_err(open_error)?;
            if !unpushed.is_empty() {
                tracing::info!(repository = %settings.name, commits = unpushed.len(), "unpushed commits from an earlier run; pushing them");
            }
            let commits = unpushed
                .into_iter()
                .map(|commit| Unpushed {
                    commit,
                    waiters: Vec::new(),
                })
                .collect();
            outbox.append(commits, Vec::new(), tip);
        }
        tracing::info!(path = %path.display(), branch = %settings.branch, tip = ?tip, "repository open");
        Ok(Opened {
            repo,
            branch_ref,
            tip,
            tree,
        })
    }

    fn new(
        settings: StoreSettings,
        opened: Opened,
        rx: mpsc::Receiver<Job>,
        control: mpsc::UnboundedReceiver<Control>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Opened {
            repo,
            branch_ref,
            tip,
            tree,
        } = opened;
        Self {
            repo,
            settings,
            branch_ref,
            tip,
            tree,
            rx,
            control,
            metrics,
            retry: Vec::new(),
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
            batch_cost: Duration::ZERO,
            packs_written: 0,
            repack: None,
            failing: Arc::default(),
            reverts: Vec::new(),
            withheld: Vec::new(),
        }
    }

    async fn run(mut self) {
        loop {
            while let Ok(control) = self.control.try_recv() {
                self.handle(control);
            }
            if !self.reverts.is_empty() && Instant::now() >= self.retry_at {
                self.settle_reverts();
            }
            if !self.retry.is_empty() && Instant::now() >= self.retry_at {
                let retry = std::mem::take(&mut self.retry);
                self.commit_batch(retry, true);
                continue;
            }
            let retry_at =
                (!self.retry.is_empty() || !self.reverts.is_empty()).then_some(self.retry_at);
            let next = tokio::select! {
                biased;
                Some(control) = self.control.recv() => {
                    self.handle(control);
                    continue;
                }
                job = self.rx.recv() => job,
                () = sleep_until_some(retry_at) => continue,
            };
            let Some(first) = next else { break };
            let mut batch = vec![first];
            while batch.len() < self.settings.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // Nobody waits for these: gather more for a while, so a steady trickle of
            // writes makes a few large batches instead of one pack per write. A waiting
            // change ends the gathering at once, `wait: push` included: committing it
            // while a push is in flight means the next push can start the moment this
            // one ends (gathering until then measured slower: docs/performance.md).
            let linger_until = Instant::now() + self.settings.linger;
            let mut anyone_waits = batch.iter().any(|j| j.waiter.is_some());
            while batch.len() < self.settings.max_batch && !anyone_waits {
                match tokio::time::timeout_at(linger_until.into(), self.rx.recv()).await {
                    Ok(Some(job)) => {
                        anyone_waits = job.waiter.is_some();
                        batch.push(job);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            self.metrics.queue_depth.dec_by(batch.len() as i64);
            self.commit_batch(batch, false);
            self.maintain();
        }
        if !self.retry.is_empty() {
            // One last try before exit, without waiting out the backoff.
            let retry = std::mem::take(&mut self.retry);
            self.commit_batch(retry, true);
        }
        if !self.reverts.is_empty() && !self.settle_reverts() {
            tracing::error!(
                reverts = self.reverts.len(),
                withheld = self.withheld.len(),
                "shutting down with denied writes not reverted; their commits stay local and unpushed, and are pushed after the next start unless reverted by hand"
            );
        }
        if let Some(mut child) = self.repack.take() {
            let _ = child.wait();
        }
        if !self.retry.is_empty() {
            tracing::error!(
                lost = self.retry.len(),
                "shutting down with admitted changes that could not be committed; they are only in the cluster now"
            );
        }
    }

    fn handle(&mut self, control: Control) {
        match control {
            Control::Replay { onto, reply } => {
                let result = self.replay(onto);
                if let Err(error) = &result {
                    self.count_error(error.label(), 1);
                }
                let _ = reply.send(result);
            }
            Control::Pushed { commit } => {
                let tracking = tracking_ref(&self.settings.branch);
                if let Err(e) = self.repo.reference(
                    tracking.as_str(),
                    commit,
                    PreviousValue::Any,
                    "kubescribe: pushed",
                ) {
                    tracing::warn!(error = %error_chain(&e), "pushed, but cannot record it in the tracking ref; a restart pushes again (a no-op)");
                }
            }
            Control::Revert(revert) => {
                self.reverts.push(*revert);
                self.settle_reverts();
            }
        }
    }

    /// Commits the pending reverts as one batch, then gives the outbox what was
    /// withheld and the reverts, lifting their holds. False when it failed (retried
    /// at `retry_at`, like a failed batch).
    fn settle_reverts(&mut self) -> bool {
        if self.reverts.is_empty() {
            return true;
        }
        let jobs: Vec<Job> = self
            .reverts
            .iter()
            .map(|pending| Job {
                change: pending.change.clone(),
                waiter: None,
                push_waiter: None,
                revert: Some(pending.revert.clone()),
                bundle: None,
                _queued_bytes: None,
            })
            .collect();
        self.repo.objects.reset_object_memory();
        let result = self.apply(&jobs).and_then(|(outcomes, tip, tree)| {
            self.make_durable(tip, tree)?;
            Ok(outcomes)
        });
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(error) => {
                self.repo.objects.reset_object_memory();
                self.count_error(error.label(), 1);
                tracing::error!(%error, reverts = self.reverts.len(), retry_in_ms = self.backoff.as_millis() as u64, "cannot revert denied writes yet; nothing is pushed until they are");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return false;
            }
        };
        let pending = std::mem::take(&mut self.reverts);
        let mut tickets = Vec::new();
        let mut commits = std::mem::take(&mut self.withheld);
        for (pending, outcome) in pending.into_iter().zip(outcomes) {
            tickets.extend(pending.ticket);
            self.metrics.denied_reverted.inc();
            match outcome {
                Outcome::Committed { commit } => {
                    self.metrics.commits.inc();
                    tracing::warn!(path = %pending.change.path, denied = %pending.revert.commit, revert = %commit, reason = %pending.revert.reason, "reverted a denied write");
                    commits.push(Unpushed {
                        commit,
                        waiters: Vec::new(),
                    });
                }
                _ => {
                    tracing::info!(path = %pending.change.path, denied = %pending.revert.commit, "a denied write was already replaced by a newer change; nothing to revert");
                }
            }
        }
        if let Some(outbox) = &self.settings.outbox {
            outbox.append_reverts(commits, &tickets);
            self.count_unpushed(outbox);
        }
        true
    }

    fn count_unpushed(&self, outbox: &Outbox) {
        self.metrics
            .unpushed
            .get_or_create(&crate::metrics::RepositoryLabels {
                repository: self.settings.name.clone(),
            })
            .set(outbox.len() as i64);
    }

    /// Gives durable commits to the outbox, or keeps them back while a revert is
    /// pending (they reach the outbox with it).
    fn publish(&mut self, commits: Vec<Unpushed>, tip_waiters: Vec<PushWaiter>) {
        let Some(outbox) = self.settings.outbox.clone() else {
            return;
        };
        if self.reverts.is_empty() {
            outbox.append(commits, tip_waiters, self.tip);
            self.count_unpushed(&outbox);
            return;
        }
        self.withheld.extend(commits);
        match self.withheld.last_mut() {
            Some(last) => last.waiters.extend(tip_waiters),
            None => outbox.append(Vec::new(), tip_waiters, self.tip),
        }
    }

    fn count_error(&self, reason: &'static str, by: u64) {
        self.metrics
            .store_errors
            .get_or_create(&crate::metrics::ErrorLabels { reason })
            .inc_by(by);
    }

    fn commit_batch(&mut self, batch: Vec<Job>, is_retry: bool) {
        // A waiter who would hear after its deadline has been denied already, or will
        // be: committing its change would record a write that never happened.
        let cutoff = Instant::now() + self.batch_cost * 2;
        // Claiming is the last check: once claimed, the caller waits for the outcome.
        let (jobs, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| {
            job.waiter
                .as_ref()
                .is_none_or(|w| w.deadline > cutoff && !w.reply.is_closed() && w.claim.take())
        });
        if !expired.is_empty() {
            self.count_error("expired", expired.len() as u64);
        }
        for job in expired {
            if let Some(waiter) = job.waiter {
                let _ = waiter.reply.send(Err(StoreError::Expired));
            }
        }
        if jobs.is_empty() {
            return;
        }
        self.metrics.batch_size.observe(jobs.len() as f64);
        // Objects left in memory by a failed batch must not end up in this one's pack.
        self.repo.objects.reset_object_memory();

        let started = Instant::now();
        let applied = match self.apply(&jobs) {
            // A concurrent repack may have moved objects out of a pack gix still
            // had open; a fresh view of the packs settles that.
            Err(StoreError::Write { reason })
                if self.repack.is_some() || self.packs_written == 0 =>
            {
                tracing::debug!(%reason, "retrying a batch on a reopened repository");
                self.reopen();
                self.apply(&jobs)
            }
            other => other,
        };
        let result = applied.and_then(|(outcomes, tip, tree)| {
            if let Some(gate) = &self.settings.before_durable {
                gate.pass();
            }
            self.make_durable(tip, tree)?;
            Ok(outcomes)
        });
        let elapsed = started.elapsed();
        self.batch_cost = (self.batch_cost * 4 + elapsed) / 5;
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = result
            .as_ref()
            .err()
            .map(|e| format!("{e}; {}", e.advice()));
        match result {
            Ok(outcomes) => {
                let commits = outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Committed { .. }))
                    .count();
                self.metrics.commits.inc_by(commits as u64);
                if is_retry {
                    self.backoff = MIN_BACKOFF;
                    tracing::info!(changes = jobs.len(), commits, "retried changes committed");
                } else if !self.retry.is_empty() {
                    // A newer write to the same file supersedes a change still waiting
                    // for its retry; replaying the old one later would undo it.
                    let paths: std::collections::HashSet<&str> = jobs
                        .iter()
                        .flat_map(|j| match &j.bundle {
                            Some(bundle) => bundle.changes.iter().collect::<Vec<_>>(),
                            None => vec![&j.change],
                        })
                        .map(|change| change.path.as_str())
                        .collect();
                    self.retry
                        .retain(|j| !paths.contains(j.change.path.as_str()));
                }
                tracing::debug!(
                    changes = jobs.len(),
                    commits,
                    elapsed_us = elapsed.as_micros() as u64,
                    "batch durable"
                );
                // Answer first: a caller who stopped listening (it was told "denied"
                // at its deadline while the batch ran) must not keep its commit, so
                // its revert is owed before anything of this batch is pushed.
                let mut commits = Vec::new();
                let mut tip_waiters = Vec::new();
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let denied = match job.waiter {
                        Some(waiter) => waiter.reply.send(Ok(outcome.clone())).is_err(),
                        None => false,
                    };
                    match outcome {
                        Outcome::Committed { commit } if denied && job.bundle.is_none() => {
                            self.count_error("late", 1);
                            self.reverts.push(PendingRevert {
                                change: job.change.without_body(),
                                revert: Revert {
                                    commit,
                                    reason: "The write was denied because this commit was not durable before the apiserver's deadline.".to_owned(),
                                },
                                ticket: None,
                            });
                            commits.push(Unpushed {
                                commit,
                                waiters: Vec::new(),
                            });
                        }
                        Outcome::Committed { commit } => commits.push(Unpushed {
                            commit,
                            waiters: job.push_waiter.into_iter().collect(),
                        }),
                        Outcome::Unchanged => tip_waiters.extend(job.push_waiter),
                        Outcome::ParentMissing => {}
                    }
                }
                self.publish(commits, tip_waiters);
                self.settle_reverts();
            }
            Err(error) => {
                self.count_error(error.label(), 1);
                if matches!(error, StoreError::Branch { .. }) {
                    // Someone else moved the branch: continue from where it is now.
                    self.reload_tip();
                }
                let mut kept = 0;
                for job in jobs {
                    match job.waiter {
                        Some(waiter) => {
                            let _ = waiter.reply.send(Err(error.clone()));
                        }
                        None => {
                            kept += 1;
                            // The retry list has its own limit (queueCapacity);
                            // keeping the queue's bytes would starve new writes
                            // for as long as the disk fails.
                            let mut job = job;
                            job._queued_bytes = None;
                            self.retry.push(job);
                        }
                    }
                }
                let overflow = self
                    .retry
                    .len()
                    .saturating_sub(self.settings.queue_capacity);
                if overflow > 0 {
                    self.retry.drain(..overflow);
                    self.count_error("retry_overflow", overflow as u64);
                    tracing::error!(dropped = overflow, "too many changes waiting for a retry; the oldest are dropped and only in the cluster now");
                }
                self.metrics.retry_depth.set(self.retry.len() as i64);
                tracing::error!(%error, retrying = kept, retry_in_ms = self.backoff.as_millis() as u64, "batch not committed");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return;
            }
        }
        self.metrics.retry_depth.set(self.retry.len() as i64);
    }

    fn reload_tip(&mut self) {
        match read_tip(&self.repo, &self.branch_ref) {
            Ok((tip, tree)) => {
                tracing::warn!(tip = ?tip, "branch moved by another process; continuing from its new tip");
                self.tip = tip;
                self.tree = tree;
            }
            Err(e) => tracing::error!(error = %e, "cannot read the branch after a failed update"),
        }
    }

    /// Writes objects and commits for every job, without moving the branch.
    fn apply(
        &self,
        jobs: &[Job],
    ) -> Result<(Vec<Outcome>, Option<ObjectId>, ObjectId), StoreError> {
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let repo = &self.repo;
        // gix's high-level editor checks that every entry of every tree it writes
        // exists, across every pack: that is O(entries × packs) per commit. Our entries
        // are blobs and trees we just wrote or read, so the plain editor does.
        let root: gix::objs::Tree = if self.tree.is_empty_tree() {
            gix::objs::Tree::empty()
        } else {
            repo.find_tree(self.tree)
                .and_then(|t| t.decode().map(Into::into))
                .map_err(|e| write_error(&e))?
        };
        let objects = &repo.objects;
        let mut editor = gix::objs::tree::Editor::new(root, objects, repo.object_hash());
        let mut write_tree = |tree: &gix::objs::Tree| gix::objs::Write::write(objects, tree);
        let mut tip = self.tip;
        let mut tree = self.tree;
        let mut outcomes = Vec::with_capacity(jobs.len());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);

        let us = || {
            signature(
                &self.settings.committer.name,
                &self.settings.committer.email,
                now,
            )
        };

        for job in jobs {
            // Stage the job's edits in the editor; then either commit them, with this
            // author and message, or answer without a commit.
            let mut files = 0;
            let staged = if let Some(bundle) = &job.bundle {
                for change in &bundle.changes {
                    let path = change.path.as_str();
                    let current = lookup(repo, tree, path).map_err(|e| write_error(&e))?;
                    match &change.action {
                        Action::Put(bytes) => {
                            files += u64::from(put_blob(repo, &mut editor, path, bytes, current)?);
                        }
                        Action::Remove if current.is_some() => {
                            editor
                                .remove(path.split('/'))
                                .map_err(|e| write_error(&e))?;
                            files += 1;
                        }
                        Action::Remove | Action::SetReplicas(_) => {}
                    }
                }
                Ok((us(), bundle.message.clone()))
            } else {
                let change = &job.change;
                let path = change.path.as_str();
                let current = lookup(repo, tree, path).map_err(|e| write_error(&e))?;
                if let Some(revert) = &job.revert {
                    let (wrote, before) =
                        revert_edit(repo, revert.commit, path).map_err(|e| write_error(&e))?;
                    if current == wrote {
                        match before {
                            Some(id) => editor.upsert(path.split('/'), EntryKind::Blob, id),
                            None => editor.remove(path.split('/')),
                        }
                        .map_err(|e| write_error(&e))?;
                        Ok((us(), revert_message(change, revert)))
                    } else {
                        // A newer change to this file replaced the denied one.
                        Err(Outcome::Unchanged)
                    }
                } else {
                    self.stage(change, current, &mut editor)?
                        .map(|(api_version, kind, body)| {
                            let author = signature(
                                &change.user,
                                &author_email(&change.user, &self.settings.email_domain),
                                now,
                            );
                            (author, commit_message(change, &api_version, &kind, &body))
                        })
                }
            };
            let (author, message) = match staged {
                Ok(commit) => commit,
                Err(outcome) => {
                    outcomes.push(outcome);
                    continue;
                }
            };
            let new_tree = editor.write(&mut write_tree).map_err(|e| write_error(&e))?;
            if new_tree == tree {
                outcomes.push(Outcome::Unchanged);
                continue;
            }
            let commit = gix::objs::Commit {
                tree: new_tree,
                parents: tip.into_iter().collect(),
                author,
                committer: us(),
                encoding: None,
                message: message.into(),
                extra_headers: Vec::new(),
            };
            let id = gix::objs::Write::write(objects, &commit).map_err(|e| write_error(&e))?;
            tip = Some(id);
            tree = new_tree;
            // Bundles are the reconciler's commits.
            self.metrics.reconcile.files_written.inc_by(files);
            outcomes.push(Outcome::Committed { commit: id });
        }
        Ok((outcomes, tip, tree))
    }

    /// Stages one admitted change; `Ok(Ok((apiVersion, kind, body)))` for its commit
    /// message, or `Ok(Err(outcome))` when it makes no commit.
    #[allow(clippy::type_complexity)]
    fn stage(
        &self,
        change: &Change,
        current: Option<ObjectId>,
        editor: &mut gix::objs::tree::Editor<'_>,
    ) -> Result<Result<(String, String, String), Outcome>, StoreError> {
        let path = change.path.as_str();
        let mut api_version = change.api_version.clone();
        let mut kind = change.kind.clone();
        let mut body = String::new();
        let bytes = match &change.action {
            Action::Put(bytes) => Cow::Borrowed(bytes.as_slice()),
            Action::Remove => {
                if current.is_none() {
                    return Ok(Err(Outcome::Unchanged));
                }
                editor
                    .remove(path.split('/'))
                    .map_err(|e| StoreError::Write {
                        reason: e.to_string(),
                    })?;
                return Ok(Ok((api_version, kind, body)));
            }
            Action::SetReplicas(replicas) => {
                let Some(id) = current else {
                    return Ok(Err(Outcome::ParentMissing));
                };
                let blob = self.repo.find_blob(id).map_err(|e| StoreError::Write {
                    reason: e.to_string(),
                })?;
                let Some(rescaled) = manifest::set_replicas(&blob.data, *replicas) else {
                    tracing::warn!(
                        path,
                        "recorded file is not a YAML object; scale write not applied"
                    );
                    return Ok(Err(Outcome::ParentMissing));
                };
                let old = rescaled
                    .previous
                    .map_or_else(|| "unset".to_owned(), |v| v.to_string());
                body = format!("Scaled spec.replicas from {old} to {replicas}.\n\n");
                api_version = rescaled.api_version.unwrap_or(api_version);
                kind = rescaled.kind.unwrap_or(kind);
                Cow::Owned(rescaled.bytes)
            }
        };
        if !put_blob(&self.repo, editor, path, &bytes, current)? {
            return Ok(Err(Outcome::Unchanged));
        }
        Ok(Ok((api_version, kind, body)))
    }

    /// Writes the batch's objects as one pack, flushes it, moves the branch to `tip`
    /// by compare-and-swap, and flushes the branch. Once the branch moved, `tip` and
    /// `tree` are ours, even if the last flush fails.
    fn make_durable(&mut self, tip: Option<ObjectId>, tree: ObjectId) -> Result<(), StoreError> {
        let objects = self.repo.objects.reset_object_memory().unwrap_or_default();
        let Some(tip) = tip.filter(|tip| Some(*tip) != self.tip) else {
            return Ok(());
        };
        let sync_error = |e: std::io::Error| StoreError::Sync {
            reason: e.to_string(),
        };
        // A replay onto the remote's tip with nothing of ours left writes no objects.
        let written = if objects.is_empty() {
            None
        } else {
            let written = pack::write(
                &self.repo.git_dir().join("objects"),
                &objects,
                self.repo.object_hash(),
            )
            .map_err(|e| StoreError::Write {
                reason: e.to_string(),
            })?;
            self.packs_written += 1;
            written.sync().map_err(sync_error)?;
            Some(written)
        };
        let previous = match self.tip {
            Some(old) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(old)),
            None => PreviousValue::MustNotExist,
        };
        let moved = self
            .repo
            .reference(
                self.branch_ref.as_ref(),
                tip,
                previous,
                "kubescribe: record",
            )
            .map_err(|e| StoreError::Branch {
                branch: self.settings.branch.clone(),
                reason: error_chain(&e),
            });
        // Named by the branch or not, the pack needs no protection any more.
        if let Some(Err(e)) = written.map(|w| w.release()) {
            tracing::warn!(error = %e, "cannot remove a pack's .keep file; git repack will skip that pack");
        }
        moved?;
        self.tip = Some(tip);
        self.tree = tree;
        let ref_file = self
            .repo
            .git_dir()
            .join(self.branch_ref.as_bstr().to_string());
        File::open(&ref_file)
            .and_then(|f| f.sync_all())
            .and_then(|()| File::open(ref_file.parent().unwrap_or(&self.settings.path))?.sync_all())
            .map_err(sync_error)
    }

    /// Folds the per-batch packs together now and then with a geometric `git repack`
    /// in the background. That is safe next to the writer: it rewrites only whole
    /// packs, and a pack no branch names yet keeps its `.keep` until it is named.
    /// When it ends, the repository is reopened so gix sees exactly the packs on disk.
    fn maintain(&mut self) {
        if let Some(child) = &mut self.repack {
            match child.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) if !status.success() => {
                    tracing::warn!(%status, "git repack failed; packs accumulate until the next try");
                }
                Ok(Some(_)) => tracing::debug!("repacked"),
                Err(e) => tracing::warn!(error = %e, "cannot wait for git repack"),
            }
            self.repack = None;
            self.reopen();
        }
        if self.settings.repack_after_packs == 0
            || self.packs_written < self.settings.repack_after_packs
        {
            return;
        }
        self.packs_written = 0;
        let mut repack = std::process::Command::new("nice");
        repack
            .args(["-n", "19", "git", "--git-dir"])
            .arg(&self.settings.path)
            .args(["repack", "-d", "-q", "--geometric=2"])
            .stdin(std::process::Stdio::null());
        // A repack never outlives this writer: SIGTERM (git then removes its
        // temporary packs) when the writer's thread ends, however the process ends.
        // SAFETY: prctl is async-signal-safe and allocates nothing.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            repack.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        match repack.spawn() {
            Ok(child) => self.repack = Some(child),
            Err(e) => {
                tracing::warn!(error = %e, "cannot run git repack; packs accumulate until the next try")
            }
        }
    }

    /// Replays the outbox's commits onto `onto`, the remote's tip: each commit's file
    /// changes are applied again, with its author and message, and the branch moves
    /// to the result. Commits whose changes the remote already has disappear.
    fn replay(&mut self, onto: Option<ObjectId>) -> Result<(), StoreError> {
        let Some(outbox) = self.settings.outbox.clone() else {
            return Ok(());
        };
        // Withheld commits sit on the branch after the outbox's: replaying only the
        // outbox would drop them. Settle the reverts first (that empties `withheld`).
        if !self.settle_reverts() {
            return Err(StoreError::Write {
                reason: "denied writes are waiting for their revert; replaying after that"
                    .to_owned(),
            });
        }
        // The fetch added a pack gix has not seen yet.
        self.reopen();
        self.repo.objects.reset_object_memory();
        let pending = outbox.take();
        let commits: Vec<ObjectId> = pending.iter().map(|u| u.commit).collect();
        let result = self
            .rebuild(&commits, onto)
            .and_then(|(renamed, tip, tree)| {
                let tip = tip.or(self.tip);
                self.make_durable(tip, tree)?;
                Ok(renamed)
            });
        match result {
            Ok(renamed) => {
                let replayed = renamed
                    .into_iter()
                    .zip(pending)
                    .map(|(commit, u)| (commit, u.waiters))
                    .collect();
                outbox.replace(replayed, onto);
                tracing::info!(repository = %self.settings.name, onto = ?onto, commits = commits.len(), tip = ?self.tip, "replayed local commits onto the remote's branch");
                Ok(())
            }
            Err(error) => {
                self.repo.objects.reset_object_memory();
                let unchanged = pending
                    .into_iter()
                    .map(|u| (Some(u.commit), u.waiters))
                    .collect();
                outbox.replace(unchanged, onto);
                Err(error)
            }
        }
    }

    /// New commits on `onto` with the changes of `commits`; for each, its new id, or
    /// `None` when it changed nothing there.
    #[allow(clippy::type_complexity)]
    fn rebuild(
        &self,
        commits: &[ObjectId],
        onto: Option<ObjectId>,
    ) -> Result<(Vec<Option<ObjectId>>, Option<ObjectId>, ObjectId), StoreError> {
        let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
            reason: e.to_string(),
        };
        let repo = &self.repo;
        let empty = ObjectId::empty_tree(repo.object_hash());
        let tree_of = |commit: ObjectId| -> Result<ObjectId, StoreError> {
            repo.find_commit(commit)
                .map_err(|e| write_error(&e))?
                .tree_id()
                .map(|id| id.detach())
                .map_err(|e| write_error(&e))
        };
        let mut tip = onto;
        let mut tree = match onto {
            Some(commit) => tree_of(commit)?,
            None => empty,
        };
        let root: gix::objs::Tree = if tree.is_empty_tree() {
            gix::objs::Tree::empty()
        } else {
            repo.find_tree(tree)
                .and_then(|t| t.decode().map(Into::into))
                .map_err(|e| write_error(&e))?
        };
        let objects = &repo.objects;
        let mut editor = gix::objs::tree::Editor::new(root, objects, repo.object_hash());
        let mut write_tree = |tree: &gix::objs::Tree| gix::objs::Write::write(objects, tree);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut renamed = Vec::with_capacity(commits.len());
        for &id in commits {
            let found = repo.find_commit(id).map_err(|e| write_error(&e))?;
            let decoded = found.decode().map_err(|e| write_error(&e))?;
            let parent_tree = match decoded.parents().next() {
                Some(parent) => tree_of(parent)?,
                None => empty,
            };
            let original = gix::objs::Commit::try_from(decoded).map_err(|e| write_error(&e))?;
            let mut changes = Vec::new();
            diff_trees(repo, parent_tree, original.tree, "", &mut changes)
                .map_err(|e| write_error(&e))?;
            for (path, entry) in changes {
                match entry {
                    Some((kind, blob)) => editor.upsert(path.split('/'), kind, blob),
                    None => editor.remove(path.split('/')),
                }
                .map_err(|e| write_error(&e))?;
            }
            let new_tree = editor.write(&mut write_tree).map_err(|e| write_error(&e))?;
            if new_tree == tree {
                renamed.push(None);
                continue;
            }
            let commit = gix::objs::Commit {
                tree: new_tree,
                parents: tip.into_iter().collect(),
                committer: signature(
                    &self.settings.committer.name,
                    &self.settings.committer.email,
                    now,
                ),
                extra_headers: Vec::new(),
                ..original
            };
            let new_id = gix::objs::Write::write(objects, &commit).map_err(|e| write_error(&e))?;
            tip = Some(new_id);
            tree = new_tree;
            renamed.push(Some(new_id));
        }
        Ok((renamed, tip, tree))
    }

    fn reopen(&mut self) {
        match open_repository(&self.settings.path) {
            Ok(repo) => self.repo = repo,
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the repository; keeping the old handle")
            }
        }
    }
}

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

/// Writes a blob into the batch's objects and puts it at `path`; false when the file
/// already has exactly these bytes.
fn put_blob(
    repo: &gix::Repository,
    editor: &mut gix::objs::tree::Editor<'_>,
    path: &str,
    bytes: &[u8],
    current: Option<ObjectId>,
) -> Result<bool, StoreError> {
    let write_error = |e: &dyn std::fmt::Display| StoreError::Write {
        reason: e.to_string(),
    };
    let id = gix::objs::compute_hash(repo.object_hash(), gix::objs::Kind::Blob, bytes)
        .map_err(|e| write_error(&e))?;
    if current == Some(id) {
        return Ok(false);
    }
    gix::objs::Write::write_buf_with_known_id(&repo.objects, gix::objs::Kind::Blob, bytes, id)
        .map_err(|e| write_error(&e))?;
    editor
        .upsert(path.split('/'), EntryKind::Blob, id)
        .map_err(|e| write_error(&e))?;
    Ok(true)
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
    let repo = gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| read_error(&e))?;
    let Some(mut reference) = repo
        .try_find_reference(format!("refs/heads/{branch}").as_str())
        .map_err(|e| read_error(&e))?
    else {
        return Ok(());
    };
    let tree = reference
        .peel_to_commit()
        .and_then(|c| c.tree())
        .map_err(|e| read_error(&e))?;
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

/// Sleeps until `at`, or forever without one.
/// Tries to open the repository again and again, with a growing pause, and answers
/// what arrives meanwhile: a waiting change is denied with the reason, a change
/// nobody waits for (already admitted) is kept for the writer's retry list, up to
/// `store.queueCapacity`. `None` when the queue closed first (shutdown).
async fn wait_for_repository(
    settings: &StoreSettings,
    metrics: &Metrics,
    mut error: StoreError,
    (rx, control): (
        &mut mpsc::Receiver<Job>,
        &mut mpsc::UnboundedReceiver<Control>,
    ),
    not_open: &std::sync::Mutex<Option<String>>,
) -> Option<(Opened, Vec<Job>)> {
    let mut pause = REOPEN_FIRST;
    let mut kept: Vec<Job> = Vec::new();
    loop {
        let message = format!("{error}; {}", error.advice());
        metrics
            .store_errors
            .get_or_create(&crate::metrics::ErrorLabels { reason: "open" })
            .inc();
        tracing::error!(path = %settings.path.display(), error = %message, retry_in_ms = pause.as_millis() as u64, "cannot open the repository; /readyz fails and waiting writes are denied until it can be");
        *not_open.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                job = rx.recv() => {
                    let Some(mut job) = job else {
                        if !kept.is_empty() {
                            tracing::error!(lost = kept.len(), "shutting down with admitted changes that could not be committed; they are only in the cluster now");
                        }
                        return None;
                    };
                    metrics.queue_depth.dec();
                    match job.waiter.take() {
                        Some(waiter) => {
                            let _ = waiter.reply.send(Err(error.clone()));
                        }
                        None if kept.len() < settings.queue_capacity => {
                            job._queued_bytes = None;
                            kept.push(job);
                        }
                        None => {
                            metrics
                                .store_errors
                                .get_or_create(&crate::metrics::ErrorLabels { reason: "retry_overflow" })
                                .inc();
                        }
                    }
                }
                Some(control) = control.recv() => match control {
                    Control::Replay { reply, .. } => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    // Nothing was pushed from a repository that is not open, and a
                    // revert is owed only for a commit made here.
                    Control::Pushed { .. } | Control::Revert(_) => {}
                },
                () = tokio::time::sleep_until(until) => break,
            }
        }
        match Writer::open_repository(settings, metrics) {
            Ok(opened) => {
                *not_open.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(path = %settings.path.display(), kept = kept.len(), "the repository opens now; ready");
                return Some((opened, kept));
            }
            Err(again) => error = again,
        }
        pause = (pause * 2).min(REOPEN_MAX);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The local commits past the remote-tracking ref, oldest first (all of them when
/// the remote was never reached).
fn unpushed_commits(git_dir: &Path, branch: &str) -> Result<Vec<ObjectId>, String> {
    let local = format!("refs/heads/{branch}");
    let tracking = tracking_ref(branch);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(git_dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))
    };
    let has = |name: &str| -> Result<bool, String> {
        Ok(git(&["rev-parse", "--verify", "--quiet", name])?
            .status
            .success())
    };
    if !has(&local)? {
        return Ok(Vec::new());
    }
    let range = if has(&tracking)? {
        format!("{tracking}..{local}")
    } else {
        local
    };
    let output = git(&["rev-list", "--reverse", "--first-parent", &range])?;
    if !output.status.success() {
        return Err(format!(
            "git rev-list {range} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            line.parse::<ObjectId>()
                .map_err(|e| format!("git rev-list printed {line:?}: {e}"))
        })
        .collect()
}

/// The blobs `path` had in `commit` and in its parent.
#[allow(clippy::type_complexity)]
fn revert_edit(
    repo: &gix::Repository,
    commit: ObjectId,
    path: &str,
) -> Result<(Option<ObjectId>, Option<ObjectId>), Box<dyn std::error::Error + Send + Sync>> {
    let found = repo.find_commit(commit)?;
    let wrote = lookup(repo, found.tree_id()?.detach(), path)?;
    let before = match found.parent_ids().next() {
        Some(parent) => {
            let parent_tree = repo.find_commit(parent)?.tree_id()?.detach();
            lookup(repo, parent_tree, path)?
        }
        None => None,
    };
    Ok((wrote, before))
}

type TreeChange = (String, Option<(EntryKind, ObjectId)>);

/// The files that differ between two trees: the new entry, or `None` for a removal.
fn diff_trees(
    repo: &gix::Repository,
    old: ObjectId,
    new: ObjectId,
    prefix: &str,
    out: &mut Vec<TreeChange>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::collections::BTreeMap;
    if old == new {
        return Ok(());
    }
    let entries = |id: ObjectId| -> Result<
        BTreeMap<BString, (gix::objs::tree::EntryMode, ObjectId)>,
        Box<dyn std::error::Error + Send + Sync>,
    > {
        if id.is_empty_tree() {
            return Ok(BTreeMap::new());
        }
        let tree = repo.find_tree(id)?;
        let decoded = tree.decode()?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| (e.filename.to_owned(), (e.mode, e.oid.to_owned())))
            .collect())
    };
    let empty = ObjectId::empty_tree(repo.object_hash());
    let old_entries = entries(old)?;
    let new_entries = entries(new)?;
    let names: std::collections::BTreeSet<&BString> =
        old_entries.keys().chain(new_entries.keys()).collect();
    for name in names {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let before = old_entries.get(name).copied();
        let after = new_entries.get(name).copied();
        if before == after {
            continue;
        }
        let old_sub = before
            .filter(|(m, _)| m.is_tree())
            .map_or(empty, |(_, id)| id);
        let new_sub = after
            .filter(|(m, _)| m.is_tree())
            .map_or(empty, |(_, id)| id);
        if old_sub != new_sub {
            diff_trees(repo, old_sub, new_sub, &path, out)?;
        }
        match after {
            Some((mode, id)) if !mode.is_tree() => out.push((path, Some((mode.kind(), id)))),
            _ => {
                if before.is_some_and(|(m, _)| !m.is_tree()) {
                    out.push((path, None));
                }
            }
        }
    }
    Ok(())
}

fn lookup(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &str,
) -> Result<Option<ObjectId>, Box<dyn std::error::Error + Send + Sync>> {
    if tree.is_empty_tree() {
        return Ok(None);
    }
    let mut tree = repo.find_tree(tree)?;
    let entry = tree.peel_to_entry_by_path(Path::new(path))?;
    Ok(entry.filter(|e| e.mode().is_blob()).map(|e| e.object_id()))
}

fn signature(name: &str, email: &str, seconds: i64) -> gix::actor::Signature {
    gix::actor::Signature {
        name: BString::from(one_line(name).replace(['<', '>'], "")),
        email: BString::from(email.replace(['<', '>', '\n', ' '], "")),
        time: gix::date::Time { seconds, offset: 0 },
    }
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

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `update apps/v1 Deployment team-a/web`, a body, and the trailers.
fn commit_message(change: &Change, api_version: &str, kind: &str, body: &str) -> String {
    format!(
        "{verb} {api_version} {kind} {object}\n\n{body}Kubernetes-User: {user}\nKubernetes-Groups: {groups}\nAdmission-Uid: {uid}\n",
        verb = change.verb.as_str(),
        object = change.object_ref(),
        user = one_line(&change.user),
        groups = one_line(&change.groups.join(", ")),
        uid = one_line(&change.uid),
    )
}

/// `revert update v1 ConfigMap team-a/web`, why, and the trailers.
fn revert_message(change: &Change, revert: &Revert) -> String {
    format!(
        "revert {verb} {api_version} {kind} {object}\n\n{reason}\n\nReverts: {commit}\nAdmission-Uid: {uid}\n",
        verb = change.verb.as_str(),
        api_version = change.api_version,
        kind = change.kind,
        object = change.object_ref(),
        reason = revert.reason,
        commit = revert.commit,
        uid = one_line(&change.uid),
    )
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
    fn signatures_cannot_break_the_commit_header() {
        let sig = signature("evil <x>\nname", "a<b>@c d", 0);
        assert_eq!(sig.name.to_str().unwrap(), "evil x name");
        assert_eq!(sig.email.to_str().unwrap(), "ab@cd");
    }
}
