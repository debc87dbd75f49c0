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
//! - A commit whose write was denied after all (its push did not land in time) is
//!   held: no push carries it until the writer has appended the commit that reverts
//!   it, so the remote's branch never points at a tree with the denied change. When
//!   the push in flight already carries it, [`Outbox::deny`] says so, and the revert
//!   follows it to the remote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::hash::ObjectId;
use tokio::sync::Notify;

mod http;
mod remote;

pub use remote::{PushError, Remote};

pub use crate::outbox::{tracking_ref, Denial, Outbox, Pushed};

use http::{Attempt, SmartHttp};

use crate::metrics::{Metrics, PushFailureLabels, RepositoryLabels};
use crate::store::Replayer;

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
    /// Held before a push is sent, and after the remote accepted it, in tests.
    before_push: Option<crate::fault::Gate>,
    after_push: Option<crate::fault::Gate>,
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
            before_push: None,
            after_push: None,
        }
    }

    /// Holds the pusher at the push fault points (see [`crate::fault::Faults`]).
    pub fn with_faults(mut self, faults: &crate::fault::Faults) -> Self {
        self.before_push = faults.before_push.clone();
        self.after_push = faults.after_push.clone();
        self
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
            let Some(target) = self.outbox.start_push() else {
                if stopping {
                    return;
                }
                tokio::select! {
                    () = more => continue,
                    () = self.stop.notified() => return,
                }
            };
            let started = Instant::now();
            if let Some(gate) = &self.before_push {
                gate.pass_async().await;
            }
            let result = self.push(target).await;
            if let (Ok(()), Some(gate)) = (&result, &self.after_push) {
                gate.pass_async().await;
            }
            match result {
                Ok(()) => {
                    self.metrics
                        .push_duration
                        .get_or_create(&self.labels())
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.pushed(&self.name);
                    // Waiters first; the writer records the remote's new tip (in
                    // process, no git child on the way to the next push).
                    let left = self.outbox.pushed(target, |waited| {
                        self.metrics.push_waited(&self.name, waited);
                    });
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
                    self.outbox.landed_nothing();
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
