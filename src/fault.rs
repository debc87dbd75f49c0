//! Fault points for tests: places where the writer and the pusher can be held, so a
//! test can make a commit or a push finish after the apiserver's deadline without
//! sleeping. Off unless a test sets them on [`crate::config::Config::faults`]
//! (never from a configuration file): each point then costs one `Option` check.
//!
//! Invariant: a gate never changes what happens, only when. Once opened it stays
//! open, so a test that forgets to open it hangs visibly instead of passing.

use std::sync::{Arc, Condvar, Mutex};

/// The fault points a test can hold.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    /// The writer, with a batch's objects written and before they are made durable
    /// (pack flushed, branch moved): a slow disk.
    pub before_durable: Option<Gate>,
    /// The pusher, before it sends a push: a push that starts late.
    pub before_push: Option<Gate>,
    /// The pusher, after the remote accepted a push and before anyone is told: a
    /// remote that answers after the deadline.
    pub after_push: Option<Gate>,
    /// The writer, before it commits the reverts of denied writes.
    pub before_revert: Option<Gate>,
    /// While on, making a batch durable fails as a full disk would.
    pub failing_disk: Option<Switch>,
}

/// A fault that is on or off, as the test says.
#[derive(Clone, Debug, Default)]
pub struct Switch(Arc<std::sync::atomic::AtomicBool>);

impl Switch {
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A point that holds whoever reaches it until the test opens it.
#[derive(Clone, Debug)]
pub struct Gate(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    arrived: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    open: bool,
    arrivals: usize,
}

impl Gate {
    /// A gate that holds everyone until [`Gate::open`].
    pub fn closed() -> Self {
        Self(Arc::default())
    }

    /// Lets everyone through, now and later.
    pub fn open(&self) {
        self.lock().open = true;
        self.0.changed.notify_all();
    }

    /// Waits until `n` callers in all have reached the gate.
    pub async fn arrivals(&self, n: usize) {
        loop {
            let arrived = self.0.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.lock().arrivals >= n {
                return;
            }
            arrived.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks the calling thread until the gate is open.
    pub(crate) fn pass(&self) {
        let mut state = self.lock();
        state.arrivals += 1;
        self.0.arrived.notify_waiters();
        while !state.open {
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`Gate::pass`] for async code, off the runtime's threads.
    pub(crate) async fn pass_async(&self) {
        let gate = self.clone();
        let _ = tokio::task::spawn_blocking(move || gate.pass()).await;
    }
}
