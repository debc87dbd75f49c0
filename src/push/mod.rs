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

/// Told once the remote has a commit. The ticket names the waiter in
/// [`Outbox::deny`], whatever the commit is renamed to by a replay.
pub(crate) struct PushWaiter {
    pub ticket: u64,
    pub tx: oneshot::Sender<Pushed>,
}

impl PushWaiter {
    /// A waiter with a ticket no other waiter of this process has.
    pub(crate) fn new() -> (Self, oneshot::Receiver<Pushed>) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let (tx, rx) = oneshot::channel();
        let ticket = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (Self { ticket, tx }, rx)
    }

    fn send(self, pushed: Pushed) {
        let _ = self.tx.send(pushed);
    }
}

/// Where a denied write's commit stands; see [`Outbox::deny`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Not pushed, and no push will carry it before its revert: it never reaches the
    /// remote's tip.
    Withheld { commit: ObjectId },
    /// The push in flight carries it: the remote may take it; its revert follows.
    InFlight { commit: ObjectId },
    /// Nothing of this waiter's is unpushed (it was pushed meanwhile).
    Gone,
}

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
    /// The commit the push in flight carries the branch to.
    in_flight: Option<ObjectId>,
    /// Tickets of denied writes whose revert is not appended yet: no push goes past
    /// the commit that carries one.
    holds: std::collections::HashSet<u64>,
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
                    waiter.send(Pushed { commit: tip });
                }
            }
        }
        drop(inner);
        self.more.notify_one();
    }

    /// Adds the commits that revert denied writes (none when a newer change had
    /// replaced them already) and lifts those writes' holds, in one step.
    pub(crate) fn append_reverts(&self, commits: Vec<Unpushed>, released: &[u64]) {
        let mut inner = self.lock();
        inner.unpushed.extend(commits);
        for ticket in released {
            inner.holds.remove(ticket);
        }
        drop(inner);
        self.more.notify_one();
    }

    /// The write of `ticket`'s waiter was denied: hold its commit back until
    /// [`Outbox::append_reverts`] releases it, and say whether a push already carries it.
    pub fn deny(&self, ticket: u64) -> Denial {
        let mut inner = self.lock();
        let Some(index) = inner
            .unpushed
            .iter()
            .position(|u| u.waiters.iter().any(|w| w.ticket == ticket))
        else {
            return Denial::Gone;
        };
        let commit = inner.unpushed[index].commit;
        inner.holds.insert(ticket);
        let in_flight = inner
            .in_flight
            .and_then(|target| inner.unpushed.iter().position(|u| u.commit == target));
        match in_flight {
            Some(carried) if carried >= index => Denial::InFlight { commit },
            _ => Denial::Withheld { commit },
        }
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
                        waiter.send(Pushed { commit: onto });
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

    /// The newest commit a push may carry the branch to (everything before the first
    /// held commit), noted as in flight; `None` when there is nothing to push.
    fn start_push(&self) -> Option<ObjectId> {
        let mut inner = self.lock();
        let held = inner
            .unpushed
            .iter()
            .position(|u| u.waiters.iter().any(|w| inner.holds.contains(&w.ticket)));
        let pushable = held.unwrap_or(inner.unpushed.len());
        let target = pushable
            .checked_sub(1)
            .map(|last| inner.unpushed[last].commit);
        inner.in_flight = target;
        target
    }

    /// The remote accepted `pushed`: it and everything before it are done.
    fn pushed(&self, pushed: ObjectId) -> usize {
        let mut inner = self.lock();
        inner.last_error = None;
        inner.in_flight = None;
        let Some(index) = inner.unpushed.iter().position(|u| u.commit == pushed) else {
            return inner.unpushed.len();
        };
        for done in inner.unpushed.drain(..=index) {
            for waiter in done.waiters {
                waiter.send(Pushed {
                    commit: Some(done.commit),
                });
            }
        }
        inner.unpushed.len()
    }

    fn failed(&self, error: PushError) {
        let mut inner = self.lock();
        inner.last_error = Some(error);
        inner.in_flight = None;
    }

    /// The push in flight ended without an answer worth keeping (a conflict).
    fn landed_nothing(&self) {
        self.lock().in_flight = None;
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
    /// Held after the remote accepted a push, in tests.
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
            after_push: None,
        }
    }

    /// Holds the pusher at `after_push` (see [`crate::fault::Faults`]).
    pub fn with_faults(mut self, after_push: Option<crate::fault::Gate>) -> Self {
        self.after_push = after_push;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    /// An outbox with commits 1..=n, each with one waiter; returns their tickets.
    fn outbox(n: u8) -> (Outbox, Vec<(u64, oneshot::Receiver<Pushed>)>) {
        let outbox = Outbox::default();
        let mut waiters = Vec::new();
        let commits = (1..=n)
            .map(|i| {
                let (waiter, rx) = PushWaiter::new();
                waiters.push((waiter.ticket, rx));
                Unpushed {
                    commit: id(i),
                    waiters: vec![waiter],
                }
            })
            .collect();
        outbox.append(commits, Vec::new(), None);
        (outbox, waiters)
    }

    #[test]
    fn a_denied_commit_no_push_carries_is_held_until_its_revert() {
        let (outbox, waiters) = outbox(3);
        let ticket = waiters[1].0;
        assert_eq!(outbox.deny(ticket), Denial::Withheld { commit: id(2) });
        assert_eq!(
            outbox.start_push(),
            Some(id(1)),
            "a push stops before the held commit"
        );
        assert_eq!(outbox.pushed(id(1)), 2);
        assert_eq!(
            outbox.start_push(),
            None,
            "nothing pushable until the revert"
        );
        outbox.append_reverts(
            vec![Unpushed {
                commit: id(9),
                waiters: Vec::new(),
            }],
            &[ticket],
        );
        assert_eq!(
            outbox.start_push(),
            Some(id(9)),
            "the revert goes with the denied commit"
        );
    }

    #[test]
    fn a_denied_commit_the_push_in_flight_carries_is_reported_in_flight() {
        let (outbox, waiters) = outbox(3);
        assert_eq!(outbox.start_push(), Some(id(3)));
        assert_eq!(
            outbox.deny(waiters[1].0),
            Denial::InFlight { commit: id(2) }
        );
        // That push fails: the next one stops before the held commit.
        outbox.failed(PushError::Other {
            remote: "r".into(),
            detail: "d".into(),
        });
        assert_eq!(outbox.start_push(), Some(id(1)));
    }

    #[test]
    fn a_commit_after_the_push_in_flight_is_withheld() {
        let (outbox, waiters) = outbox(2);
        assert_eq!(outbox.start_push(), Some(id(2)));
        outbox.append(
            vec![Unpushed {
                commit: id(3),
                waiters: Vec::new(),
            }],
            Vec::new(),
            None,
        );
        let (waiter, _rx) = PushWaiter::new();
        let ticket = waiter.ticket;
        outbox.append(Vec::new(), vec![waiter], None);
        assert_eq!(outbox.deny(ticket), Denial::Withheld { commit: id(3) });
        assert_eq!(
            outbox.deny(waiters[0].0),
            Denial::InFlight { commit: id(1) }
        );
        assert_eq!(outbox.pushed(id(2)), 1);
        assert_eq!(outbox.deny(waiters[0].0), Denial::Gone);
    }

    #[test]
    fn holds_follow_a_replay_that_renames_commits() {
        let (outbox, waiters) = outbox(2);
        assert_eq!(
            outbox.deny(waiters[1].0),
            Denial::Withheld { commit: id(2) }
        );
        let taken = outbox.take();
        let renamed = taken
            .into_iter()
            .zip([id(7), id(8)])
            .map(|(u, new)| (Some(new), u.waiters))
            .collect();
        outbox.replace(renamed, None);
        assert_eq!(outbox.start_push(), Some(id(7)));
        assert_eq!(
            outbox.deny(waiters[1].0),
            Denial::Withheld { commit: id(8) }
        );
    }
}
