//! Confirmations: admission sees attempts, so every change it recorded waits here
//! until the watch shows the cluster persisted it. A change is confirmed when the
//! watch (or a list) shows the object as recorded; an earlier change to the same
//! file is then superseded. One that is still unconfirmed when its window ends is
//! read back from the cluster: if the cluster does not have it, it was a phantom
//! (another webhook or a quota denied it, it conflicted, the apiserver timed out),
//! and the reconciler commits the cluster's object back.
//!
//! A change of a `record: confirmed` rule was only noted, not committed: the event
//! that confirms it is what gets committed, authored by the admission's user, so a
//! review the cluster never persisted (forged, or denied after us) never reaches git.
//!
//! Invariants: while a file has unconfirmed changes, the reconciler writes nothing
//! to it from the watch or a list (an event may predate the admitted write), so a
//! recorded change is never overwritten by an older state; the read back settles
//! it. Only content hashes are kept, never whole files, so memory is bounded by the
//! number of changes in one window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::manifest::{Action, Change};
use crate::metrics::Metrics;

/// What the file should look like once the change is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// The blob id of the recorded bytes.
    Put(gix::ObjectId),
    /// A hash of the Secret's plaintext (its file's ciphertexts differ each time).
    Sealed(gix::ObjectId),
    Remove,
    Replicas(i64),
}

impl Expect {
    fn of(action: &Action) -> Self {
        match action {
            Action::Put(bytes) => Expect::Put(blob_id(bytes)),
            Action::Seal(sealed) => Expect::Sealed(blob_id(sealed.plain().to_string().as_bytes())),
            // The reconciler confirms the object's own file; its cascade went with it.
            Action::Remove | Action::Cascade(_) => Expect::Remove,
            Action::SetReplicas(n) => Expect::Replicas(*n),
        }
    }

    /// Whether the cluster's object, rendered as the reconciler would write it,
    /// shows this change.
    fn shown_by(&self, seen: &Action) -> bool {
        match (self, seen) {
            (Expect::Put(id), Action::Put(bytes)) => *id == blob_id(bytes),
            (Expect::Sealed(id), Action::Seal(sealed)) => {
                *id == blob_id(sealed.plain().to_string().as_bytes())
            }
            (Expect::Remove, Action::Remove | Action::Cascade(_)) => true,
            (Expect::Replicas(n), Action::Put(bytes)) => {
                serde_yaml_ng::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|v| v.pointer("/spec/replicas").and_then(|r| r.as_i64()))
                    == Some(*n)
            }
            _ => false,
        }
    }
}

fn blob_id(bytes: &[u8]) -> gix::ObjectId {
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, bytes)
        .unwrap_or_else(|_| gix::ObjectId::null(gix::hash::Kind::Sha1))
}

/// One admitted change waiting for its confirmation.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The recorded change, without its bytes.
    pub change: Change,
    /// API group and plural of the object the file holds (the parent, for a scale).
    pub group: String,
    pub resource: String,
    expect: Expect,
    due: Instant,
    /// Read backs that failed so far.
    attempts: u32,
    /// Only noted (`record: confirmed`): commit it, by its user, once confirmed.
    pub noted: Option<Instant>,
}

/// What the reconciler may do with what the watch or a list shows of a file.
#[derive(Debug)]
pub enum Observed {
    /// Write it as the cluster's state: no admitted change waits for the file.
    Write,
    /// Leave the file alone: an admitted change to it is not confirmed yet.
    Hold,
    /// Commit `change`: what the cluster shows, authored by the user of the noted
    /// change it confirms (`note`, to put back if the commit fails); `since` is
    /// when admission noted it.
    Record {
        change: Box<Change>,
        note: Box<Pending>,
        since: Instant,
    },
}

/// At most this many changes wait for one file (the oldest are superseded), and
/// this many in all (more are not noted): a caller that floods reviews cannot grow
/// memory without bound.
const MAX_PER_FILE: usize = 64;
const MAX_PENDING: usize = 100_000;

impl Pending {
    /// Whether `seen` (the cluster's object as the reconciler renders it, or
    /// `Remove` when it is gone) shows this change.
    pub fn shown_by(&self, seen: &Action) -> bool {
        self.expect.shown_by(seen)
    }

    /// Whether the state the cluster shows can be this change's result: the same
    /// object (uid), and a state after the one the write started from. A review
    /// that names another object, or an older state, cannot claim it.
    fn consistent_with(&self, seen: &Change) -> bool {
        match (&self.change.version, &seen.version) {
            (Some(write), Some(state)) => {
                write.uid == state.uid
                    && match (write.after, state.after) {
                        (Some(base), Some(now)) => now > base,
                        _ => true,
                    }
            }
            _ => true,
        }
    }
}

type Key = (usize, String);

/// What a noted change's commit does once the cluster shows `seen`: when it shows the
/// person's delete, the objects the delete takes with it go in the same commit (see
/// [`crate::cascade`]).
pub(super) fn with_cascade(noted: &Action, seen: Action) -> Action {
    match (noted, seen) {
        (Action::Cascade(cascade), Action::Remove) => Action::Cascade(cascade.clone()),
        (_, seen) => seen,
    }
}

/// Read backs of one change before it is given up.
const MAX_ATTEMPTS: u32 = 5;

/// Admitted changes not yet confirmed, by target and file, oldest first.
pub struct Confirmations {
    pending: Mutex<HashMap<Key, VecDeque<Pending>>>,
    /// Set when the reconciler could not start: nothing would ever confirm or read
    /// back a change, so none is kept.
    closed: std::sync::atomic::AtomicBool,
    pub window: Duration,
    metrics: Arc<Metrics>,
    /// Namespaces and definitions being deleted (see [`crate::cascade::Leaving`]).
    pub leaving: crate::cascade::Leaving,
}

impl Confirmations {
    pub fn new(window: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            window,
            metrics,
            leaving: crate::cascade::Leaving::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Pending>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a change admission recorded (and allowed) to `target`, for `group` and
    /// `resource` (the parent's, for a scale write); `noted`: only noted, to be
    /// committed once confirmed (`record: confirmed`).
    pub fn expect(&self, target: usize, change: &Change, group: &str, resource: &str, noted: bool) {
        if let Action::Cascade(cascade) = &change.action {
            self.leaving.admitted(&cascade.scope, self.window);
        }
        let expect = Expect::of(&change.action);
        // Only the hash of the content is kept, not the content.
        let change = change.without_body();
        let key = (target, change.path.as_str().to_owned());
        let pending = Pending {
            change,
            group: group.to_owned(),
            resource: resource.to_owned(),
            expect,
            due: Instant::now() + self.window,
            attempts: 0,
            noted: noted.then(Instant::now),
        };
        let mut all = self.lock();
        // Checked under the lock, so a change is never kept after `close`.
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if all.len() >= MAX_PENDING && !all.contains_key(&key) {
            tracing::warn!(path = %pending.change.path, "too many admitted changes wait for confirmation; this one is not noted");
            return;
        }
        let queue = all.entry(key).or_default();
        if queue.len() >= MAX_PER_FILE {
            queue.pop_front();
            self.metrics.reconcile.pending.dec();
        }
        queue.push_back(pending);
        self.metrics.reconcile.pending.inc();
    }

    /// Forgets the change of admission `uid` to `path` of `target`: its write was
    /// denied, or could not be recorded, so there is nothing to confirm.
    pub fn withdraw(&self, target: usize, path: &str, uid: &str) {
        let mut all = self.lock();
        let key = (target, path.to_owned());
        let Some(queue) = all.get_mut(&key) else {
            return;
        };
        let before = queue.len();
        queue.retain(|p| p.change.uid != uid);
        self.metrics
            .reconcile
            .pending
            .dec_by((before - queue.len()) as i64);
        if queue.is_empty() {
            all.remove(&key);
        }
    }

    /// Stops keeping changes (the reconciler is not running) and drops those kept.
    pub fn close(&self) {
        let mut all = self.lock();
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let dropped: usize = all.drain().map(|(_, queue)| queue.len()).sum();
        self.metrics.reconcile.pending.dec_by(dropped as i64);
    }

    /// The watch or a list shows `path` of `target` as `seen`. Confirms the change
    /// that shows (and supersedes every earlier one). The reconciler may write
    /// `seen` only when no change to the file is left unconfirmed, and commits it
    /// as a noted change's own when that is the one it confirms.
    pub fn observe(&self, target: usize, seen: &Change) -> Observed {
        let mut pending = self.lock();
        let key = (target, seen.path.as_str().to_owned());
        let Some(queue) = pending.get_mut(&key) else {
            return Observed::Write;
        };
        let mut confirmed = None;
        if let Some(i) = queue
            .iter()
            .position(|p| p.expect.shown_by(&seen.action) && p.consistent_with(seen))
        {
            confirmed = queue.drain(..=i).next_back();
            self.metrics.reconcile.confirmed.inc();
            self.metrics.reconcile.pending.dec_by(i as i64 + 1);
        }
        let empty = queue.is_empty();
        if empty {
            pending.remove(&key);
        }
        match confirmed.and_then(|p| p.noted.map(|since| (p, since))) {
            // The event that shows a noted change is that change: committed even
            // with later changes still waiting (they are confirmed in their turn).
            // Everything but who made it comes from the cluster, never the review.
            Some((p, since)) => Observed::Record {
                change: Box::new(Change {
                    user: p.change.user.clone(),
                    groups: p.change.groups.clone(),
                    uid: p.change.uid.clone(),
                    action: with_cascade(&p.change.action, seen.action.clone()),
                    ..seen.clone()
                }),
                note: Box::new(p),
                since,
            },
            None if empty => Observed::Write,
            None => Observed::Hold,
        }
    }

    /// Puts back a change [`Self::take_due`] handed out whose read back failed, to be
    /// due again `after` from now, before any later change to its file. After
    /// [`MAX_ATTEMPTS`] it is given up, so a read back that keeps failing (no `get`
    /// permission) does not hold its file forever.
    pub fn retry(&self, target: usize, mut pending: Pending, after: Duration) {
        pending.attempts += 1;
        if pending.attempts >= MAX_ATTEMPTS {
            tracing::error!(uid = %pending.change.uid, path = %pending.change.path, "cannot check whether an admitted change landed; giving up on it");
            return;
        }
        pending.due = Instant::now() + after;
        let key = (target, pending.change.path.as_str().to_owned());
        let mut all = self.lock();
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        all.entry(key).or_default().push_front(pending);
        self.metrics.reconcile.pending.inc();
    }

    /// Whether `path` of `target` has a change waiting for confirmation.
    pub fn is_pending(&self, target: usize, path: &str) -> bool {
        self.lock().contains_key(&(target, path.to_owned()))
    }

    /// Takes every change whose window has ended. A change with a later one to the
    /// same file is superseded (the later one is checked in its turn) and dropped;
    /// the rest are returned with their target, for a read back.
    pub fn take_due(&self, now: Instant) -> Vec<(usize, Pending)> {
        let mut pending = self.lock();
        let mut due = Vec::new();
        let mut taken = 0;
        pending.retain(|(target, _), queue| {
            let mut last = None;
            while queue.front().is_some_and(|p| p.due <= now) {
                last = queue.pop_front();
                taken += 1;
            }
            match last {
                Some(last) if queue.is_empty() => {
                    due.push((*target, last));
                    false
                }
                _ => !queue.is_empty(),
            }
        });
        self.metrics.reconcile.pending.dec_by(taken);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(observed: Observed) -> bool {
        matches!(observed, Observed::Write)
    }

    fn change(action: Action) -> Change {
        let write = crate::policy::Write {
            uid: "u1".into(),
            operation: kube_core::admission::Operation::Create,
            kind: kube_core::GroupVersionKind::gvk("", "v1", "ConfigMap"),
            resource: kube_core::GroupVersionResource::gvr("", "v1", "configmaps"),
            sub_resource: None,
            namespace: Some("team-a".into()),
            name: "c".into(),
            user: "alice".into(),
            groups: Vec::new(),
            dry_run: false,
            object: Some(
                serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"team-a"},"data":{"a":"1"}}),
            ),
            old_object: None,
            from_cluster: false,
        };
        let layout = crate::manifest::Layout::new("", "{namespace}/{group}/{resource}/{name}.yaml")
            .expect("default layout");
        let mut change = crate::manifest::plan(&write, &layout, crate::config::SecretMode::Omit)
            .expect("a plan");
        change.action = action;
        change
    }

    #[test]
    fn the_change_that_shows_confirms_itself_and_supersedes_earlier_ones() {
        let c = Confirmations::new(Duration::from_secs(60), Arc::new(Metrics::new()));
        let one = change(Action::Put(b"one".to_vec()));
        let two = change(Action::Put(b"two".to_vec()));
        let path = one.path.as_str().to_owned();
        c.expect(0, &one, "", "configmaps", false);
        c.expect(0, &two, "", "configmaps", false);
        // An older state, or one of another target: held, nothing confirmed.
        assert!(!writes(
            c.observe(0, &change(Action::Put(b"zero".to_vec())))
        ));
        assert!(writes(c.observe(1, &change(Action::Put(b"zero".to_vec())))));
        assert!(!writes(c.observe(0, &change(Action::Put(b"one".to_vec())))));
        assert!(c.is_pending(0, &path));
        assert!(writes(c.observe(0, &change(Action::Put(b"two".to_vec())))));
        assert!(!c.is_pending(0, &path));
        assert!(c
            .take_due(Instant::now() + Duration::from_secs(61))
            .is_empty());
    }

    #[test]
    fn only_the_last_unconfirmed_change_of_a_file_is_read_back() {
        let c = Confirmations::new(Duration::from_secs(1), Arc::new(Metrics::new()));
        let one = change(Action::Put(b"one".to_vec()));
        let gone = change(Action::Remove);
        c.expect(0, &one, "", "configmaps", false);
        c.expect(0, &gone, "", "configmaps", false);
        assert!(c.take_due(Instant::now()).is_empty(), "not due yet");
        let due = c.take_due(Instant::now() + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        assert!(due[0].1.shown_by(&Action::Remove));
        assert!(!due[0].1.shown_by(&Action::Put(b"one".to_vec())));
    }

    #[test]
    fn a_scale_is_shown_by_the_replicas_of_the_parent() {
        let expect = Expect::of(&Action::SetReplicas(3));
        assert!(expect.shown_by(&Action::Put(b"spec:\n  replicas: 3\n".to_vec())));
        assert!(!expect.shown_by(&Action::Put(b"spec:\n  replicas: 2\n".to_vec())));
    }

    #[test]
    fn a_closed_registry_keeps_nothing() {
        let c = Confirmations::new(Duration::from_secs(1), Arc::new(Metrics::new()));
        let one = change(Action::Put(b"one".to_vec()));
        c.expect(0, &one, "", "configmaps", false);
        c.close();
        assert!(!c.is_pending(0, one.path.as_str()));
        c.expect(0, &one, "", "configmaps", false);
        assert!(!c.is_pending(0, one.path.as_str()));
    }

    #[test]
    fn a_withdrawn_change_is_not_waited_for() {
        let c = Confirmations::new(Duration::from_secs(1), Arc::new(Metrics::new()));
        let one = change(Action::Put(b"one".to_vec()));
        c.expect(0, &one, "", "configmaps", false);
        c.withdraw(0, one.path.as_str(), "another uid");
        assert!(c.is_pending(0, one.path.as_str()));
        c.withdraw(0, one.path.as_str(), &one.uid);
        assert!(!c.is_pending(0, one.path.as_str()));
        assert!(writes(c.observe(0, &change(Action::Remove))));
    }

    #[test]
    fn a_noted_change_is_recorded_by_the_event_that_shows_it() {
        let c = Confirmations::new(Duration::from_secs(60), Arc::new(Metrics::new()));
        let noted = change(Action::Put(b"one".to_vec()));
        let later = change(Action::Put(b"two".to_vec()));
        let path = noted.path.as_str().to_owned();
        c.expect(0, &noted, "", "configmaps", true);
        c.expect(0, &later, "", "configmaps", false);
        assert!(matches!(
            c.observe(0, &change(Action::Put(b"zero".to_vec()))),
            Observed::Hold
        ));
        match c.observe(0, &change(Action::Put(b"one".to_vec()))) {
            Observed::Record { change, .. } => {
                assert_eq!(change.user, noted.user);
                assert_eq!(
                    change.action,
                    Action::Put(b"one".to_vec()),
                    "the bytes seen"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(c.is_pending(0, &path), "the later change still waits");
        assert!(writes(c.observe(0, &change(Action::Put(b"two".to_vec())))));

        // A note is confirmed only by its own object, in a state after its base.
        let version = |uid: &str, after, state| {
            Some(crate::manifest::ObjectVersion {
                uid: uid.into(),
                created: "2026-12-01T10:00:00Z".into(),
                after: Some(after),
                state,
            })
        };
        let mut noted = change(Action::Put(b"three".to_vec()));
        noted.version = version("u1", 10, false);
        c.expect(0, &noted, "", "configmaps", true);
        let mut seen = change(Action::Put(b"three".to_vec()));
        for (uid, rv) in [("u2", 11), ("u1", 10)] {
            seen.version = version(uid, rv, true);
            assert!(
                matches!(c.observe(0, &seen), Observed::Hold),
                "{uid} at {rv} cannot confirm it"
            );
        }
        seen.version = version("u1", 11, true);
        seen.kind = "FromTheCluster".into();
        match c.observe(0, &seen) {
            Observed::Record { change, .. } => {
                assert_eq!(
                    change.kind, "FromTheCluster",
                    "the cluster's, not the review's"
                );
                assert_eq!(change.user, noted.user);
            }
            other => panic!("{other:?}"),
        }
    }
}
