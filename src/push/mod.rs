//! Takes a branch's local commits to its git remote: one pusher per branch.
//!
//! Invariants:
//! - One push in flight per branch. It carries every commit made so far; commits
//!   made while it runs ride on the next one (group commit at the remote).
//! - The writer appends each durable commit to the [`Outbox`]; the pusher removes
//!   commits only once the remote has accepted them, and only then tells their
//!   waiters. After a restart, the local commits past `refs/remotes/origin/<branch>`
//!   are the outbox again.
//! - Never a force push. When the remote moved, the pusher fetches and asks the
//!   writer to replay the outbox's file changes onto the new tip (same authors and
//!   messages), so history stays linear.
//! - A failing remote is retried with capped exponential backoff while commits keep
//!   being made locally; waiters are not answered until their commit is pushed, so
//!   their admission answer times out into a denial.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gix::hash::ObjectId;
use tokio::sync::{oneshot, Notify};

mod http;
mod remote;

pub use remote::{tracking_ref, PushError, Remote};

use http::{Attempt, SmartHttp};

use crate::metrics::{Metrics, PushFailureLabels, RepositoryLabels};
use crate::store::Replayer;

/// The answer to a `wait: push` waiter: the commit as the remote has it (its id
/// changes if it was replayed onto newer remote commits); `None` when the change
/// made no commit and the branch has none yet (a delete of a file never recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub commit: Option<ObjectId>,
}

pub(crate) type PushWaiter = oneshot::Sender<Pushed>;

/// Commits the remote does not have yet, oldest first, with who waits for them.
/// Shared by the writer (which appends and, when replaying, renames) and the pusher
/// (which removes what the remote accepted).
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    /// The writer appended commits.
    more: Notify,
}

#[derive(Default)]
struct OutboxInner {
    unpushed: VecDeque<Unpushed>,
    /// The last push failure, for denial messages; cleared by a success.
    last_error: Option<PushError>,
}

pub(crate) struct Unpushed {
    pub commit: ObjectId,
    pub waiters: Vec<PushWaiter>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("unpushed", &self.len())
            .finish()
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds durable commits, oldest first. `tip_waiters` wait for whatever the branch
    /// holds now (a change that made no commit): they are answered with the newest
    /// unpushed commit, or at once when everything is pushed.
    pub(crate) fn append(
        &self,
        commits: Vec<Unpushed>,
        tip_waiters: Vec<PushWaiter>,
        tip: Option<ObjectId>,
    ) {
        let mut inner = self.lock();
        inner.unpushed.extend(commits);
        match inner.unpushed.back_mut() {
            Some(last) => last.waiters.extend(tip_waiters),
            None => {
                for waiter in tip_waiters {
                    let _ = waiter.send(Pushed { commit: tip });
                }
            }
        }
        drop(inner);
        self.more.notify_one();
    }

    /// The commits to replay, oldest first; the writer gives them back renamed
    /// through [`Outbox::replace`].
    pub(crate) fn take(&self) -> Vec<Unpushed> {
        self.lock().unpushed.drain(..).collect()
    }

    /// Puts back replayed commits. Waiters of a commit that became empty (the remote
    /// already had that content) ride on the previous one, or hear at once that
    /// `onto` has it.
    pub(crate) fn replace(
        &self,
        replayed: Vec<(Option<ObjectId>, Vec<PushWaiter>)>,
        onto: Option<ObjectId>,
    ) {
        let mut inner = self.lock();
        let mut fresh: VecDeque<Unpushed> = VecDeque::new();
        for (commit, waiters) in replayed {
            match (commit, fresh.back_mut()) {
                (Some(commit), _) => fresh.push_back(Unpushed { commit, waiters }),
                (None, Some(previous)) => previous.waiters.extend(waiters),
                (None, None) => {
                    for waiter in waiters {
                        let _ = waiter.send(Pushed { commit: onto });
                    }
                }
            }
        }
        // Commits the writer made while replaying are already in `inner`.
        fresh.extend(inner.unpushed.drain(..));
        inner.unpushed = fresh;
    }

    pub fn len(&self) -> usize {
        self.lock().unpushed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the last push failed, if it did.
    pub fn last_error(&self) -> Option<PushError> {
        self.lock().last_error.clone()
    }

    fn newest(&self) -> Option<ObjectId> {
        self.lock().unpushed.back().map(|u| u.commit)
    }

    /// The remote accepted `pushed`: it and everything before it are done.
    fn pushed(&self, pushed: ObjectId) -> usize {
        let mut inner = self.lock();
        inner.last_error = None;
        let Some(index) = inner.unpushed.iter().position(|u| u.commit == pushed) else {
            return inner.unpushed.len();
        };
        for done in inner.unpushed.drain(..=index) {
            for waiter in done.waiters {
                let _ = waiter.send(Pushed {
                    commit: Some(done.commit),
                });
            }
        }
        inner.unpushed.len()
    }

    fn failed(&self, error: PushError) {
        self.lock().last_error = Some(error);
    }
}

/// What the admission handlers need to know about a branch's pusher.
#[derive(Clone)]
pub struct PushHandle {
    pub remote: String,
    pub branch: String,
    pub outbox: Arc<Outbox>,
}

/// The pusher task of one branch.
pub struct Pusher {
    name: String,
    remote: Remote,
    /// Pushes to an http(s) remote in process; `None` when `git push` does.
    builtin: Option<SmartHttp>,
    outbox: Arc<Outbox>,
    store: Replayer,
    metrics: Arc<Metrics>,
    stop: Arc<Notify>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);

impl Pusher {
    pub fn new(
        name: String,
        remote: Remote,
        outbox: Arc<Outbox>,
        store: Replayer,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            name,
            builtin: SmartHttp::for_remote(&remote),
            remote,
            outbox,
            store,
            metrics,
            stop: Arc::new(Notify::new()),
        }
    }

    pub fn handle(&self) -> PushHandle {
        PushHandle {
            remote: self.remote.display_url(),
            branch: self.remote.branch.clone(),
            outbox: self.outbox.clone(),
        }
    }

    /// Runs until `stop` is notified; then tries one last push of what is left.
    pub fn spawn(self) -> PusherTask {
        let stop = self.stop.clone();
        PusherTask {
            stop,
            task: tokio::spawn(self.run()),
        }
    }

    fn labels(&self) -> RepositoryLabels {
        RepositoryLabels {
            repository: self.name.clone(),
        }
    }

    fn count_failure(&self, error: &PushError) {
        self.metrics
            .push_failures
            .get_or_create(&PushFailureLabels {
                repository: self.name.clone(),
                reason: error.label(),
            })
            .inc();
    }

    /// Pushes `target` in process when the remote allows, else with `git push`.
    async fn push(&mut self, target: ObjectId) -> Result<(), PushError> {
        if let Some(builtin) = &mut self.builtin {
            match builtin.push(target).await {
                Attempt::Done(result) => return result,
                Attempt::UseGit(why) => {
                    tracing::debug!(repository = %self.name, why, "pushing with git instead");
                }
            }
        }
        let result = self.remote.push(target).await;
        if result.is_ok() {
            if let Some(builtin) = &mut self.builtin {
                builtin.remote_has(Some(target));
            }
        }
        result
    }

    async fn run(mut self) {
        self.metrics.pushed(&self.name);
        let mut backoff = MIN_BACKOFF;
        let mut conflicts = 0u32;
        let mut stopping = false;
        // Its own handle, so the wake-up below does not borrow `self`.
        let outbox = self.outbox.clone();
        loop {
            let more = outbox.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            let Some(target) = self.outbox.newest() else {
                if stopping {
                    return;
                }
                tokio::select! {
                    () = more => continue,
                    () = self.stop.notified() => return,
                }
            };
            let started = Instant::now();
            let result = self.push(target).await;
            match result {
                Ok(()) => {
                    self.metrics
                        .push_duration
                        .get_or_create(&self.labels())
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.pushed(&self.name);
                    // Waiters first; the writer records the remote's new tip (in
                    // process, no git child on the way to the next push).
                    let left = self.outbox.pushed(target);
                    self.store.pushed(target);
                    self.metrics
                        .unpushed
                        .get_or_create(&self.labels())
                        .set(left as i64);
                    tracing::debug!(repository = %self.name, commit = %target, left, "pushed");
                    backoff = MIN_BACKOFF;
                    conflicts = 0;
                }
                Err(PushError::Conflict { .. }) => {
                    self.count_failure(&PushError::Conflict {
                        remote: String::new(),
                    });
                    conflicts += 1;
                    tracing::info!(repository = %self.name, "the remote branch moved; replaying our commits onto it");
                    if let Err(error) = self.replay().await {
                        tracing::warn!(repository = %self.name, %error, "cannot replay onto the remote's branch; retrying");
                        self.outbox.failed(error);
                        stopping |= self.pause(backoff).await;
                        backoff = (backoff * 2).min(self.remote.config.max_backoff);
                    } else if conflicts > 2 {
                        // Another writer pushes as fast as we do: step aside a little,
                        // differently each time, so one of us wins.
                        let jitter = Duration::from_millis(
                            u64::from(std::process::id() % 7 + 1) * 10 * u64::from(conflicts),
                        );
                        stopping |= self.pause(jitter.min(Duration::from_secs(2))).await;
                    }
                }
                Err(error) => {
                    self.count_failure(&error);
                    tracing::warn!(repository = %self.name, %error, retry_in_ms = backoff.as_millis() as u64, advice = error.advice(), "push failed");
                    self.outbox.failed(error);
                    self.metrics
                        .unpushed
                        .get_or_create(&self.labels())
                        .set(self.outbox.len() as i64);
                    if stopping {
                        return;
                    }
                    stopping |= self.pause(backoff).await;
                    backoff = (backoff * 2).min(self.remote.config.max_backoff);
                }
            }
        }
    }

    /// Waits `pause`, or less if asked to stop; says whether it was.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = self.stop.notified() => true,
        }
    }

    async fn replay(&mut self) -> Result<(), PushError> {
        let onto = self.remote.fetch().await?;
        if let Some(builtin) = &mut self.builtin {
            builtin.remote_has(onto);
        }
        self.store.replay(onto).await.map_err(|e| PushError::Other {
            remote: self.remote.display_url(),
            detail: format!("replaying local commits failed: {e}"),
        })
    }
}

/// A running pusher; see [`Pusher::spawn`].
pub struct PusherTask {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl PusherTask {
    /// Asks the pusher to stop after one last attempt, and waits for it.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}
