//! The commits a branch's remote does not have yet, oldest first, with who waits for
//! each: shared by the store's writer (which appends, and renames when it replays)
//! and the pusher (which removes what the remote accepted). Its own module so that
//! neither of them depends on the other for it.
//!
//! Invariants:
//! - A commit leaves only once the remote has accepted it (or one after it), and only
//!   then are its waiters told.
//! - A commit whose write was denied after all is held: no push carries the branch to
//!   it or past it until the writer has appended the commit that reverts it, so the
//!   remote's branch never points at a tree with the denied change. When the push in
//!   flight already carries it, [`Outbox::deny`] says so.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gix::hash::ObjectId;
use tokio::sync::{oneshot, Notify};

use crate::push::PushError;

/// Where the last commit the remote is known to have is kept, in the local
/// repository: `git log origin/<branch>..<branch>` lists what is not pushed yet.
pub fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

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
    /// When its change was submitted to the writer.
    created: Instant,
    /// When its commit was durable (or, for a change that made no commit, when it
    /// joined the newest one): see [`note_durable`]. A replay keeps it.
    durable: Option<Instant>,
}

/// Notes that these waiters' commits are durable now; a waiter noted before keeps
/// its time. The writer notes them as it publishes a batch, whether the outbox takes
/// them at once or they wait behind a revert first.
pub(crate) fn note_durable<'a>(waiters: impl IntoIterator<Item = &'a mut PushWaiter>) {
    let now = Instant::now();
    for waiter in waiters {
        waiter.durable.get_or_insert(now);
    }
}

/// How long a waiter that a push answered waited, in three consecutive stages that
/// add up to its whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waited {
    /// From its change's submission until its commit was durable: room in the
    /// writer's queue, the batch ahead, its own batch.
    pub commit: Duration,
    /// Then until the push that carried it started: the push in flight, any failed
    /// attempts and their backoff, a replay, a revert it was held behind.
    pub queued: Duration,
    /// That push.
    pub pushing: Duration,
}

impl PushWaiter {
    /// A waiter with a ticket no other waiter of this process has.
    pub(crate) fn new() -> (Self, oneshot::Receiver<Pushed>) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let (tx, rx) = oneshot::channel();
        let ticket = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let waiter = Self {
            ticket,
            tx,
            created: Instant::now(),
            durable: None,
        };
        (waiter, rx)
    }

    /// False when nobody listens any more.
    pub(crate) fn send(self, pushed: Pushed) -> bool {
        self.tx.send(pushed).is_ok()
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
    /// Not handed to the outbox yet: held from the moment it is.
    NotYet,
    /// The remote accepted it after the waiter stopped listening.
    Gone,
}

/// Commits the remote does not have yet, oldest first, with who waits for them.
/// Shared by the writer (which appends and, when replaying, renames) and the pusher
/// (which removes what the remote accepted).
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    /// The writer appended commits.
    pub(crate) more: Notify,
}

#[derive(Default)]
struct OutboxInner {
    unpushed: VecDeque<Unpushed>,
    /// The last push failure, for denial messages; cleared by a success.
    last_error: Option<PushError>,
    /// The commit the push in flight carries the branch to.
    in_flight: Option<ObjectId>,
    /// When that push started.
    in_flight_since: Option<Instant>,
    /// Tickets of denied writes whose revert is not appended yet: no push goes past
    /// the commit that carries one.
    holds: std::collections::HashSet<u64>,
    /// Tickets of waiters whose commit the remote accepted when nobody listened any
    /// more (their answer had given up): [`Outbox::deny`] tells them it got there.
    unheard: std::collections::HashSet<u64>,
}

/// More unheard tickets than this are forgotten (their callers never asked).
const UNHEARD_MAX: usize = 1024;

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
        mut tip_waiters: Vec<PushWaiter>,
        tip: Option<ObjectId>,
    ) {
        let mut commits = commits;
        // Already noted by the writer; these are for callers that append directly.
        note_durable(
            commits
                .iter_mut()
                .flat_map(|c| c.waiters.iter_mut())
                .chain(&mut tip_waiters),
        );
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
    pub(crate) fn append_reverts(&self, mut commits: Vec<Unpushed>, released: &[u64]) {
        note_durable(commits.iter_mut().flat_map(|c| c.waiters.iter_mut()));
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
    /// The hold is placed even when the commit is not here yet (the writer has not
    /// handed it over, or is replaying): it is held from the moment it arrives.
    pub fn deny(&self, ticket: u64) -> Denial {
        let mut inner = self.lock();
        if inner.unheard.remove(&ticket) {
            return Denial::Gone;
        }
        inner.holds.insert(ticket);
        let Some(index) = inner
            .unpushed
            .iter()
            .position(|u| u.waiters.iter().any(|w| w.ticket == ticket))
        else {
            return Denial::NotYet;
        };
        let commit = inner.unpushed[index].commit;
        let in_flight = inner
            .in_flight
            .and_then(|target| inner.unpushed.iter().position(|u| u.commit == target));
        match in_flight {
            Some(carried) if carried >= index => Denial::InFlight { commit },
            _ => Denial::Withheld { commit },
        }
    }

    /// The commit `ticket`'s waiter waits for now (a replay renames commits).
    pub(crate) fn commit_of(&self, ticket: u64) -> Option<ObjectId> {
        self.lock()
            .unpushed
            .iter()
            .find(|u| u.waiters.iter().any(|w| w.ticket == ticket))
            .map(|u| u.commit)
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
    pub(crate) fn start_push(&self) -> Option<ObjectId> {
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
        inner.in_flight_since = target.map(|_| Instant::now());
        target
    }

    /// The remote accepted `pushed`: it and everything before it are done. Each
    /// waiter that heard it is then passed to `waited`, with how long it waited (not
    /// one that had stopped listening, such as a write denied at its deadline).
    pub(crate) fn pushed(&self, pushed: ObjectId, mut waited: impl FnMut(Waited)) -> usize {
        let mut inner = self.lock();
        // After the lock: every waiter appended before it is durable before `now`.
        let now = Instant::now();
        inner.last_error = None;
        inner.in_flight = None;
        let started = inner.in_flight_since.take().unwrap_or(now);
        let Some(index) = inner.unpushed.iter().position(|u| u.commit == pushed) else {
            return inner.unpushed.len();
        };
        let done: Vec<Unpushed> = inner.unpushed.drain(..=index).collect();
        let mut heard = Vec::new();
        for done in done {
            for waiter in done.waiters {
                let durable = waiter.durable.unwrap_or(now);
                // A change that made no commit can join one already in flight.
                let pushing_since = started.max(durable);
                let stages = Waited {
                    commit: durable.saturating_duration_since(waiter.created),
                    queued: pushing_since.saturating_duration_since(durable),
                    pushing: now.saturating_duration_since(pushing_since),
                };
                let ticket = waiter.ticket;
                if waiter.send(Pushed {
                    commit: Some(done.commit),
                }) {
                    heard.push(stages);
                } else {
                    if inner.unheard.len() >= UNHEARD_MAX {
                        inner.unheard.clear();
                    }
                    inner.unheard.insert(ticket);
                }
            }
        }
        let left = inner.unpushed.len();
        // Metrics after the lock, which the writer's next append waits for.
        drop(inner);
        heard.into_iter().for_each(&mut waited);
        left
    }

    pub(crate) fn failed(&self, error: PushError) {
        let mut inner = self.lock();
        inner.last_error = Some(error);
        inner.in_flight = None;
        inner.in_flight_since = None;
    }

    /// The push in flight ended without an answer worth keeping (a conflict).
    pub(crate) fn landed_nothing(&self) {
        let mut inner = self.lock();
        inner.in_flight = None;
        inner.in_flight_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    fn unpushed(commit: ObjectId, waiters: Vec<PushWaiter>) -> Unpushed {
        Unpushed { commit, waiters }
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
        assert_eq!(outbox.pushed(id(1), |_| {}), 2);
        assert_eq!(
            outbox.start_push(),
            None,
            "nothing pushable until the revert"
        );
        outbox.append_reverts(vec![unpushed(id(9), Vec::new())], &[ticket]);
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
        outbox.append(vec![unpushed(id(3), Vec::new())], Vec::new(), None);
        let (waiter, _rx) = PushWaiter::new();
        let ticket = waiter.ticket;
        outbox.append(Vec::new(), vec![waiter], None);
        assert_eq!(outbox.deny(ticket), Denial::Withheld { commit: id(3) });
        assert_eq!(
            outbox.deny(waiters[0].0),
            Denial::InFlight { commit: id(1) }
        );
        // The second waiter stops listening; its commit is pushed after all.
        let mut waiters = waiters;
        let (unheard, rx) = waiters.remove(1);
        drop(rx);
        assert_eq!(outbox.pushed(id(2), |_| {}), 1);
        assert_eq!(outbox.deny(unheard), Denial::Gone, "told it got there");
        // A deny of a commit not handed over yet holds it from the moment it is.
        let (waiter, _rx) = PushWaiter::new();
        assert_eq!(outbox.deny(waiter.ticket), Denial::NotYet);
        outbox.append_reverts(Vec::new(), &[ticket]);
        assert_eq!(outbox.start_push(), Some(id(3)));
        outbox.append(vec![unpushed(id(4), vec![waiter])], Vec::new(), None);
        assert_eq!(outbox.start_push(), Some(id(3)), "held on arrival");
    }

    #[test]
    fn a_waiter_hears_how_long_each_stage_took() {
        let secs = Duration::from_secs;
        let now = Instant::now();
        let outbox = Outbox::default();
        // Its change reached the writer 10 s ago, and its commit was durable 6 s ago
        // (as a replay would keep it).
        let (mut early, _rx) = PushWaiter::new();
        early.created = now - secs(10);
        early.durable = Some(now - secs(6));
        outbox.append(vec![unpushed(id(1), vec![early])], Vec::new(), None);
        assert_eq!(outbox.start_push(), Some(id(1)));
        outbox.lock().in_flight_since = Some(now - secs(2));
        // A change that made no commit joins the commit in flight: no queue, and only
        // the rest of that push.
        let (mut late, _rx) = PushWaiter::new();
        late.created = now - secs(3);
        outbox.append(Vec::new(), vec![late], None);

        let mut heard = Vec::new();
        assert_eq!(outbox.pushed(id(1), |w| heard.push(w)), 0);
        let about = |d: Duration, s: u64| d.abs_diff(secs(s)) < Duration::from_millis(500);
        let [early, late] = heard[..] else {
            panic!("two waiters heard, got {heard:?}")
        };
        assert!(about(early.commit, 4), "{early:?}");
        assert!(about(early.queued, 4), "{early:?}");
        assert!(about(early.pushing, 2), "{early:?}");
        assert!(about(late.commit, 3), "{late:?}");
        assert_eq!(late.queued, Duration::ZERO, "{late:?}");
        assert!(about(late.pushing, 0), "{late:?}");

        // A commit held behind a revert keeps the time it was durable, and a failed
        // push (or a conflict) forgets when it started: its queue includes both.
        let (mut held, _rx) = PushWaiter::new();
        held.created = now - secs(9);
        note_durable([&mut held]);
        held.durable = held.durable.map(|at| at - secs(7));
        outbox.append_reverts(vec![unpushed(id(2), vec![held])], &[]);
        assert_eq!(outbox.start_push(), Some(id(2)));
        outbox.failed(PushError::Other {
            remote: "r".into(),
            detail: "d".into(),
        });
        assert_eq!(outbox.lock().in_flight_since, None);
        assert_eq!(outbox.start_push(), Some(id(2)));
        outbox.landed_nothing();
        assert_eq!(outbox.lock().in_flight_since, None);
        assert_eq!(outbox.start_push(), Some(id(2)));
        let mut heard = Vec::new();
        outbox.pushed(id(2), |w| heard.push(w));
        let [held] = heard[..] else {
            panic!("one waiter heard, got {heard:?}")
        };
        assert!(about(held.commit, 2), "{held:?}");
        assert!(about(held.queued, 7), "{held:?}");
        assert!(about(held.pushing, 0), "{held:?}");

        // A waiter that stopped listening is not timed.
        let (gone, rx) = PushWaiter::new();
        drop(rx);
        outbox.append(vec![unpushed(id(3), vec![gone])], Vec::new(), None);
        assert_eq!(outbox.start_push(), Some(id(3)));
        let mut heard = 0;
        outbox.pushed(id(3), |_| heard += 1);
        assert_eq!(heard, 0);
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
