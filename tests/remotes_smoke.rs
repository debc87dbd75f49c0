//! The loopback git servers of `common::remotes` work with the git CLI: a push lands
//! in the served repository, fails while the server is stopped, and works again after
//! a restart on the same port. Wrong credentials and host keys are refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::remotes::{
    git_command, output_within, GitDaemon, Served, SmartHttp, Sshd, DEFAULT_BRANCH,
};

const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A scratch working repository to commit and push from.
struct Scratch {
    dir: tempfile::TempDir,
    commits: u32,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let scratch = Self { dir, commits: 0 };
        scratch.git(&["init", "--quiet", "--initial-branch=main"]);
        scratch
    }

    fn git(&self, args: &[&str]) -> String {
        let mut cmd = git_command();
        cmd.arg("-C").arg(self.dir.path()).args(args);
        let output = output_within(&mut cmd, PUSH_TIMEOUT);
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Adds a commit and returns its id.
    fn commit(&mut self) -> String {
        self.commits += 1;
        let file = format!("file-{}.yaml", self.commits);
        std::fs::write(
            self.dir.path().join(&file),
            format!("n: {}\n", self.commits),
        )
        .unwrap();
        self.git(&["add", &file]);
        self.git(&[
            "-c",
            "user.name=Smoke Test",
            "-c",
            "user.email=smoke@example.invalid",
            "commit",
            "--quiet",
            "-m",
            &format!("commit {}", self.commits),
        ]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `git push <url> HEAD:refs/heads/main` with extra `-c` config and environment.
    fn push(&self, url: &str, config: &[String], env: &[(&str, String)]) -> Output {
        let mut cmd: Command = git_command();
        cmd.arg("-C").arg(self.dir.path());
        for c in config {
            cmd.arg("-c").arg(c);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .args(["push", "--porcelain", url])
            .arg(format!("HEAD:refs/heads/{DEFAULT_BRANCH}"));
        output_within(&mut cmd, PUSH_TIMEOUT)
    }
}

fn served_head(repo: &Path) -> String {
    common::git(
        repo,
        &["rev-parse", &format!("refs/heads/{DEFAULT_BRANCH}")],
    )
    .trim()
    .to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_pushed(output: &Output, what: &str, server: &impl Remote) {
    assert!(
        output.status.success(),
        "{what}: push failed: {}\nserver log:\n{}",
        stderr(output),
        server.log()
    );
}

fn assert_refused(output: &Output, what: &str, expected: &[&str]) {
    assert!(!output.status.success(), "{what}: push unexpectedly worked");
    let err = stderr(output);
    assert!(
        expected.iter().any(|e| err.contains(e)),
        "{what}: expected one of {expected:?} in: {err}"
    );
}

/// What the shared part of the tests needs from a server: its URL, and what every
/// server has ([`Served`]: repository, log, stop, restart).
trait Remote: std::ops::DerefMut<Target = Served> {
    fn url(&self) -> String;
}

macro_rules! remote {
    ($($server:ty),*) => {$(
        impl Remote for $server {
            fn url(&self) -> String { <$server>::url(self) }
        }
    )*};
}
remote!(GitDaemon, SmartHttp, Sshd);

/// Push, outage, restart: the part every server shares. `push` pushes the scratch
/// repository's HEAD to the server with whatever credentials it needs.
fn push_stop_restart(
    server: &mut impl Remote,
    scratch: &mut Scratch,
    push: impl Fn(&Scratch, &str) -> Output,
) {
    let (url, repo) = (server.url(), server.repo());
    let first = scratch.commit();
    assert_pushed(&push(scratch, &url), "first push", server);
    assert_eq!(served_head(&repo), first, "served repo has the first push");

    server.stop();
    let second = scratch.commit();
    let output = push(scratch, &url);
    assert!(
        !output.status.success(),
        "push to stopped {url} unexpectedly worked"
    );
    assert_eq!(
        served_head(&repo),
        first,
        "nothing arrived during the outage"
    );

    server.restart();
    assert_eq!(server.url(), url, "same URL after restart");
    assert_pushed(&push(scratch, &url), "push after restart", server);
    assert_eq!(
        served_head(&repo),
        second,
        "served repo has the retried push"
    );

    let third = scratch.commit();
    assert_pushed(&push(scratch, &url), "another push after restart", server);
    assert_eq!(served_head(&repo), third);
}

#[test]
fn git_daemon_push_outage_restart() {
    let mut server = GitDaemon::start();
    let url = server.url();
    assert!(
        url.starts_with("git://127.0.0.1:") && url.ends_with("/repo.git"),
        "{url}"
    );
    let mut scratch = Scratch::new();
    push_stop_restart(&mut server, &mut scratch, |s, url| s.push(url, &[], &[]));
}

#[test]
fn smart_http_push_outage_restart() {
    let mut server = SmartHttp::start();
    let url = server.url();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/git/repo.git"),
        "{url}"
    );

    // Credentials are required, and checked.
    let mut scratch = Scratch::new();
    scratch.commit();
    let no_credentials = scratch.push(&url, &[], &[]);
    assert_refused(
        &no_credentials,
        "no credentials",
        &["could not read Username", "Authentication failed"],
    );
    let wrong = format!(
        "http://{}:wrong@{}",
        SmartHttp::username(),
        &url["http://".len()..]
    );
    assert_refused(
        &scratch.push(&wrong, &[], &[]),
        "wrong password",
        &["Authentication failed"],
    );
    // GIT_ASKPASS is one way to pass them.
    let askpass = [("GIT_ASKPASS", server.askpass().display().to_string())];
    assert_pushed(&scratch.push(&url, &[], &askpass), "askpass", &server);

    // http.extraHeader another: the rest of the test uses that.
    let header = [format!(
        "http.extraHeader={}",
        SmartHttp::authorization_header()
    )];
    push_stop_restart(&mut server, &mut scratch, |s, url| {
        s.push(url, &header, &[])
    });
}

#[test]
fn smart_https_push_outage_restart() {
    let mut server = SmartHttp::start_tls();
    let url = server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let header = format!("http.extraHeader={}", SmartHttp::authorization_header());

    let mut scratch = Scratch::new();
    scratch.commit();
    let untrusted = scratch.push(&url, std::slice::from_ref(&header), &[]);
    assert_refused(&untrusted, "CA not trusted", &["certificate", "SSL"]);

    let config = [
        format!("http.sslCAInfo={}", server.ca_file().display()),
        header,
    ];
    push_stop_restart(&mut server, &mut scratch, |s, url| {
        s.push(url, &config, &[])
    });
}

#[test]
fn sshd_push_outage_restart() {
    let mut server = Sshd::start();
    let url = server.url();
    let expected_prefix = format!("ssh://{}@127.0.0.1:{}/", server.user(), server.port());
    assert!(
        url.starts_with(&expected_prefix) && url.ends_with("/repo.git"),
        "{url}"
    );
    let known_hosts = std::fs::read_to_string(server.known_hosts_file()).unwrap();
    assert!(
        known_hosts.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", server.port())),
        "{known_hosts}"
    );

    let mut scratch = Scratch::new();
    scratch.commit();
    let ssh = |identity: &Path, known_hosts: &Path| {
        [("GIT_SSH_COMMAND", Sshd::ssh_command(identity, known_hosts))]
    };
    let impostor = scratch.push(
        &url,
        &[],
        &ssh(&server.identity_file(), &server.wrong_known_hosts_file()),
    );
    assert_refused(
        &impostor,
        "wrong host key",
        &["Host key verification failed"],
    );
    let stranger = scratch.push(
        &url,
        &[],
        &ssh(&server.other_identity_file(), &server.known_hosts_file()),
    );
    assert_refused(&stranger, "unauthorized key", &["Permission denied"]);
    // The authorized key gets git-shell, not a shell.
    let mut shell = Command::new("ssh");
    shell
        .args([
            "-F",
            "/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .arg("-i")
        .arg(server.identity_file())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            server.known_hosts_file().display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-p",
            &server.port().to_string(),
        ])
        .arg(format!("{}@127.0.0.1", server.user()))
        .arg("id");
    let shell = output_within(&mut shell, PUSH_TIMEOUT);
    assert!(!shell.status.success(), "a shell command ran over ssh");
    assert!(
        stderr(&shell).contains("unrecognized command"),
        "git-shell refuses other commands: {}",
        stderr(&shell)
    );

    let env = ssh(&server.identity_file(), &server.known_hosts_file());
    push_stop_restart(&mut server, &mut scratch, |s, url| s.push(url, &[], &env));
}
