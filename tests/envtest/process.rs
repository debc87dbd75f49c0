//! Child processes that can never outlive the test binary.
//!
//! Every process here (etcd, kube-apiserver, kube-controller-manager, kubescribe) is
//! spawned by one keeper thread that lives as long as the test binary, with
//! `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills the child when the thread that
//! spawned it dies, which for the keeper is when the test process exits, however it
//! exits (a panic, a failed assert, `cargo test` interrupted). A test's own processes
//! are also killed when their owner is dropped. Spawning from a test's thread would
//! not do: that thread ends with its test, and with it a control plane other tests
//! still use.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

fn keeper() -> &'static Mutex<mpsc::Sender<Request>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (send, receive) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("envtest-keeper".to_owned())
            .spawn(move || {
                for (mut command, answer) in receive {
                    let _ = answer.send(command.spawn());
                }
                // The sender lives in a static, so this is never reached; if it were,
                // parking keeps the children alive until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the envtest keeper thread");
        Mutex::new(send)
    })
}

/// A running child, killed (and reaped) when dropped.
pub struct Proc {
    pub what: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `command` with its stdout and stderr appended to `log`, through the
    /// keeper thread, with SIGKILL as its parent-death signal.
    pub fn spawn(what: &str, mut command: Command, log: &Path) -> Self {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out);
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl and getppid are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                // The keeper may have died between fork and prctl.
                if rustix::process::getppid().is_none() {
                    return Err(std::io::Error::other("parent already gone"));
                }
                Ok(())
            });
        }
        let (send, receive) = mpsc::channel();
        keeper()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((command, send))
            .expect("the keeper thread runs");
        let child = receive
            .recv()
            .expect("the keeper answers")
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self {
            what: what.to_owned(),
            log: log.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("wait for child");
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Panics with the log's tail if the process has ended.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.what,
                self.log.display(),
                log_tail(&self.log, 40)
            );
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub fn stop(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now. The caller binds it soon after; a server that
/// fails to bind is retried on another port by its starter.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `ready` until it holds, the process exits, or `limit` passes (a panic with
/// the log's tail in both failures). For a server starting up, which announces
/// readiness only by answering.
pub fn wait_ready(proc: &mut Proc, limit: Duration, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    loop {
        if ready() {
            return;
        }
        proc.assert_running();
        assert!(
            Instant::now() < until,
            "{} not ready within {limit:?}; last lines of {}:\n{}",
            proc.what,
            proc.log.display(),
            log_tail(&proc.log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh directory for one control plane or one kubescribe, under
/// `$TMPDIR/kubescribe-envtest/<pid>-<name>`.
pub fn work_dir(name: &str) -> PathBuf {
    fresh_dir(&std::env::temp_dir().join("kubescribe-envtest"), name)
}

/// A fresh directory in memory (`/dev/shm/kubescribe-envtest/<pid>-<name>`) where
/// there is a tmpfs, else [`work_dir`]: for etcd, which fsyncs every write.
pub fn memory_dir(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        fresh_dir(&shm.join("kubescribe-envtest"), name)
    } else {
        work_dir(name)
    }
}

/// `<root>/<pid>-<name>`, empty. The first call for a root removes what test
/// processes that no longer run left there: a shared control plane lives in a
/// static, which is never dropped, so its directories outlive the process (and
/// etcd's take over 100 MB each).
fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    static CLEANED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut cleaned = CLEANED.lock().unwrap_or_else(|e| e.into_inner());
    if !cleaned.iter().any(|r| r == root) {
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().unwrap_or_default();
                if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        cleaned.push(root.to_owned());
    }
    let dir = root.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the envtest work dir");
    dir
}

pub fn create_log(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    File::create(&path).expect("create log");
    path
}
