//! Opening the repository at start: creating it, cleaning what a crash left
//! ([`super::recovery`]), reading the branch and the unpushed commits; and, when it
//! cannot be opened, trying again while answering what arrives meanwhile.

use std::path::Path;
use std::time::Duration;

use gix::hash::ObjectId;
use gix::refs::transaction::PreviousValue;
use tokio::sync::mpsc;

use super::*;
use crate::error_chain;
use crate::metrics::Metrics;
use crate::outbox::{tracking_ref, Unpushed};

/// What [`Writer::open_repository`] opened.
pub(super) struct Opened {
    pub(super) repo: gix::Repository,
    pub(super) branch_ref: gix::refs::FullName,
    pub(super) tip: Option<ObjectId>,
    pub(super) tree: ObjectId,
    /// Reverts owed from before the last stop (see [`super::denials`]).
    pub(super) reverts: Vec<PendingRevert>,
    /// The unpushed commits, while those reverts are owed.
    pub(super) withheld: Vec<Unpushed>,
    /// Held for the writer's life; see [`lock_repository`].
    pub(super) lock: std::fs::File,
    /// The index of what the branch declares, when it is edited in place.
    pub(super) declared: Option<super::in_place::DeclaredTree>,
}

/// How long a start waits for what still holds the repository's lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes `<repository>/kubescribe.lock` (flock, exclusive) for this writer's life.
/// The descriptor is inherited by every git kubescribe starts, and by theirs, so
/// the lock is held until the last of them exits, even after kubescribe is killed:
/// a new start waits for an earlier run's `git repack` or `git fetch` to finish
/// before it cleans up and writes. A second kubescribe on the same repository
/// waits too, and then reports it rather than write beside the first.
fn lock_repository(git_dir: &Path) -> Result<std::fs::File, String> {
    use rustix::fs::{flock, FlockOperation};
    let path = git_dir.join("kubescribe.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let until = Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < until => {
                if !logged {
                    tracing::warn!(lock = %path.display(), "the repository is still in use (a git an earlier run started, or another kubescribe); waiting");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(format!(
                    "{} is held by another process ({e}): another kubescribe uses this repository, or a git an earlier run started is still running; stop it, or give each kubescribe its own repository",
                    path.display()
                ))
            }
        }
    }
    // Inherited by the git children (Rust opens files close-on-exec).
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty())
        .map_err(|e| format!("cannot share {} with git: {e}", path.display()))?;
    Ok(file)
}

/// How long the writer waits before trying again to open a repository it could not
/// open, at first and at most.
pub(super) const REOPEN_FIRST: Duration = Duration::from_secs(1);
pub(super) const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Opens the repository with object writes kept in memory until the batch is packed.
pub(super) fn open_repository(path: &Path) -> Result<gix::Repository, String> {
    // Every batch adds a pack until the next fold takes them together, so allow for
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
pub(super) fn read_tip(
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

/// Tries to open the repository again and again, with a growing pause, and answers
/// what arrives meanwhile: a waiting change is denied with the reason, a change
/// nobody waits for (already admitted) is kept for the writer's retry list, up to
/// `store.queueCapacity`. `None` when the queue closed first (shutdown).
pub(super) async fn wait_for_repository(
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
                    Control::Propose(job) => {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                    Control::MoveReview { reply, .. } => {
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

/// The local commits past the remote-tracking ref, oldest first (all of them when
/// the remote was never reached).
pub(super) fn unpushed_commits(git_dir: &Path, branch: &str) -> Result<Vec<ObjectId>, String> {
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

impl Writer {
    /// Opens (creating it if need be) the repository: everything at start that can
    /// fail. Nothing is taken from the queues yet.
    pub(super) fn open_repository(
        settings: &StoreSettings,
        metrics: &Metrics,
    ) -> Result<Opened, StoreError> {
        let path = settings.path.clone();
        let open_error = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        init_repository(&path, &settings.branch)?;
        let lock = lock_repository(&path).map_err(open_error)?;
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
        let reverts = super::denials::read(&path);
        if !reverts.is_empty() {
            tracing::warn!(reverts = reverts.len(), "writes denied before the last stop are not reverted yet; reverting them before anything is pushed");
        }
        let mut withheld = Vec::new();
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
            let commits: Vec<Unpushed> = unpushed
                .into_iter()
                .map(|commit| Unpushed {
                    commit,
                    waiters: Vec::new(),
                })
                .collect();
            if reverts.is_empty() {
                outbox.append(commits, Vec::new(), tip);
            } else {
                // Denied commits among them: pushed only with their reverts.
                withheld = commits;
            }
        }
        tracing::info!(path = %path.display(), branch = %settings.branch, tip = ?tip, "repository open");
        // Before the webhook answers: a write looked up in an index not built yet
        // would be written a second time where the path template says.
        let declared = match &settings.in_place {
            Some(shared) => Some(super::in_place::DeclaredTree::build(
                &repo,
                tree,
                shared.clone(),
            )?),
            None => None,
        };
        Ok(Opened {
            declared,
            repo,
            branch_ref,
            tip,
            tree,
            reverts,
            withheld,
            lock,
        })
    }
}
