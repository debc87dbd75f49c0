//! Talking to a git remote with the `git` command (gix cannot push yet).
//!
//! Invariants: credentials are read from their files at every call (a rotated
//! Secret is used without a restart) and reach git only through its environment,
//! never its command line, so `ps` cannot show them; git never prompts and never
//! reads the user's or the system's git config; an ssh host key must be in the
//! configured known_hosts. Error texts are classified into [`PushError`] and have any
//! password stripped from URLs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use gix::hash::ObjectId;

use crate::config::{redact_url, RemoteConfig};
use crate::outbox::tracking_ref;

/// Why a push or fetch failed. The texts name the remote (without credentials) and
/// [`PushError::advice`] says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("authentication to {remote} failed: {detail}")]
    Auth { remote: String, detail: String },
    #[error("the ssh host key of {remote} is not the one in known_hosts: {detail}")]
    HostKey { remote: String, detail: String },
    #[error("{remote} is unreachable: {detail}")]
    Unreachable { remote: String, detail: String },
    #[error("{remote} rejected the push: {detail}")]
    Rejected { remote: String, detail: String },
    /// The remote branch has commits we do not have; fetch and replay.
    #[error("{remote} has newer commits on the branch")]
    Conflict { remote: String },
    #[error("talking to {remote} took longer than {timeout:?}")]
    Timeout { remote: String, timeout: Duration },
    #[error("cannot read the git credentials: {detail}")]
    Credentials { detail: String },
    #[error("git failed for {remote}: {detail}")]
    Other { remote: String, detail: String },
}

impl PushError {
    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            PushError::Auth { .. } => "auth",
            PushError::HostKey { .. } => "host_key",
            PushError::Unreachable { .. } => "unreachable",
            PushError::Rejected { .. } => "rejected",
            PushError::Conflict { .. } => "conflict",
            PushError::Timeout { .. } => "timeout",
            PushError::Credentials { .. } => "credentials",
            PushError::Other { .. } => "other",
        }
    }

    pub fn advice(&self) -> &'static str {
        match self {
            PushError::Auth { .. } => "check the git credentials Secret (key, token or password) and that it may push to the branch",
            PushError::HostKey { .. } => "check knownHostsFile: it must list the git server's current host key (ssh-keyscan shows it)",
            PushError::Unreachable { .. } | PushError::Timeout { .. } => "check that the git server is up and reachable from kubescribe; commits are kept and pushed when it is back",
            PushError::Rejected { .. } => "check the branch's protection rules and server-side hooks",
            PushError::Conflict { .. } => "kubescribe replays its commits on the remote's new tip and pushes again",
            PushError::Credentials { .. } => "check that the credentials Secret is mounted where the config says",
            PushError::Other { .. } => "see kubescribe's logs",
        }
    }
}

/// One remote branch and the local bare repository that feeds it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub config: RemoteConfig,
    pub branch: String,
    /// The local bare repository.
    pub git_dir: PathBuf,
}

impl Remote {
    pub fn display_url(&self) -> String {
        redact_url(&self.config.url)
    }

    /// `git push` of exactly `commit` to the remote branch. Never forced.
    pub async fn push(&self, commit: ObjectId) -> Result<(), PushError> {
        let refspec = format!("{commit}:refs/heads/{}", self.branch);
        let output = self
            .run(&[
                "push",
                "--porcelain",
                "--quiet",
                "--",
                &self.config.url,
                &refspec,
            ])
            .await?;
        if output.success {
            return Ok(());
        }
        Err(self.classify(&output, true))
    }

    /// Pushes `commit` to branch `branch` (a review branch), which the remote must
    /// have at `expect` (`None`: must not have at all): a compare-and-swap, so a
    /// branch someone else made or moved is never overwritten. `options` go to the
    /// server as push options (`git push -o`). A stale `expect` is a
    /// [`PushError::Conflict`].
    pub async fn push_branch(
        &self,
        commit: ObjectId,
        branch: &str,
        expect: Option<ObjectId>,
        options: &[String],
    ) -> Result<(), PushError> {
        let lease = format!(
            "--force-with-lease=refs/heads/{branch}:{}",
            expect.map(|e| e.to_string()).unwrap_or_default()
        );
        let refspec = format!("{commit}:refs/heads/{branch}");
        let mut args = vec!["push", "--porcelain", "--quiet", lease.as_str()];
        for option in options {
            args.extend(["-o", option.as_str()]);
        }
        args.extend(["--", &self.config.url, &refspec]);
        let output = self.run(&args).await?;
        if output.success {
            return Ok(());
        }
        Err(self.classify(&output, true))
    }

    /// Deletes branch `branch` on the remote if it is still at `at`; a branch that
    /// is gone already is fine.
    pub async fn delete_branch(&self, branch: &str, at: ObjectId) -> Result<(), PushError> {
        let lease = format!("--force-with-lease=refs/heads/{branch}:{at}");
        let refspec = format!(":refs/heads/{branch}");
        let output = self
            .run(&[
                "push",
                "--porcelain",
                "--quiet",
                &lease,
                "--",
                &self.config.url,
                &refspec,
            ])
            .await?;
        let text = format!("{}{}", output.stdout, output.stderr);
        if output.success || text.contains("remote ref does not exist") {
            return Ok(());
        }
        Err(self.classify(&output, true))
    }

    /// Fetches the remote branch into the tracking ref; `None` when the remote has no
    /// such branch yet (an empty remote).
    pub async fn fetch(&self) -> Result<Option<ObjectId>, PushError> {
        let tracking = tracking_ref(&self.branch);
        let refspec = format!("+refs/heads/{}:{tracking}", self.branch);
        let output = self.fetch_refspec(&refspec).await?;
        if !output.success {
            if output.stderr.contains("couldn't find remote ref") {
                return Ok(None);
            }
            return Err(self.classify(&output, false));
        }
        self.read_ref(&tracking).await
    }

    async fn read_ref(&self, name: &str) -> Result<Option<ObjectId>, PushError> {
        let output = self
            .local(&[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{name}^{{commit}}"),
            ])
            .await?;
        Ok(output
            .stdout
            .trim()
            .parse::<ObjectId>()
            .ok()
            .filter(|_| output.success))
    }

    /// The remote's branches under `prefix` (`kubescribe/`), with their tips.
    pub async fn branches_under(&self, prefix: &str) -> Result<Vec<(String, ObjectId)>, PushError> {
        let output = self
            .run(&["ls-remote", "--heads", "--", &self.config.url])
            .await?;
        if !output.success {
            return Err(self.classify(&output, false));
        }
        Ok(output
            .stdout
            .lines()
            .filter_map(|line| {
                let (id, name) = line.split_once('\t')?;
                let branch = name.strip_prefix("refs/heads/")?;
                let id = id.parse().ok().filter(|_| branch.starts_with(prefix))?;
                Some((branch.to_owned(), id))
            })
            .collect())
    }

    /// Fetches the remote's `branch` into the local branch of that name, unless
    /// the local one has commits the remote's does not (never forced).
    pub async fn fetch_branch(&self, branch: &str) -> Result<(), PushError> {
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        let output = self.fetch_refspec(&refspec).await?;
        if output.success {
            return Ok(());
        }
        Err(self.classify(&output, false))
    }

    /// `git fetch` of one refspec from the remote, quietly, without tags.
    async fn fetch_refspec(&self, refspec: &str) -> Result<Output, PushError> {
        self.run(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &self.config.url,
            refspec,
        ])
        .await
    }

    /// Runs git on the local repository only and returns what it printed, or why
    /// it failed.
    pub(crate) async fn read_local(&self, args: &[&str]) -> Result<String, PushError> {
        let output = self.local(args).await?;
        if output.success {
            Ok(output.stdout)
        } else {
            Err(PushError::Other {
                remote: self.display_url(),
                detail: summary(&output.stderr, &output.stdout),
            })
        }
    }

    /// Runs a git command on the local repository only (no credentials needed).
    async fn local(&self, args: &[&str]) -> Result<Output, PushError> {
        let mut command = tokio::process::Command::new("git");
        command
            .args(NO_BACKGROUND_WORK)
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(args);
        isolate(&mut command);
        self.finish(command).await
    }

    /// Runs a git command that talks to the remote, with the credentials in its
    /// environment.
    async fn run(&self, args: &[&str]) -> Result<Output, PushError> {
        let mut command = tokio::process::Command::new("git");
        command
            .args(NO_BACKGROUND_WORK)
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(args);
        isolate(&mut command);
        for (key, value) in self.credentials_env()? {
            command.env(key, value);
        }
        self.finish(command).await
    }

    async fn finish(&self, mut command: tokio::process::Command) -> Result<Output, PushError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| PushError::Other {
            remote: self.display_url(),
            detail: format!("cannot run git: {e}"),
        })?;
        match tokio::time::timeout(self.config.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(Output {
                success: output.status.success(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }),
            Ok(Err(e)) => Err(PushError::Other {
                remote: self.display_url(),
                detail: format!("waiting for git failed: {e}"),
            }),
            Err(_) => Err(PushError::Timeout {
                remote: self.display_url(),
                timeout: self.config.timeout,
            }),
        }
    }

    /// The environment that carries the credentials to git and ssh.
    fn credentials_env(&self) -> Result<Vec<(String, String)>, PushError> {
        let config = &self.config;
        let mut env = Vec::new();
        let mut git_config = Vec::new();
        if config.is_ssh() {
            let mut ssh = String::from(
                "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o IdentityAgent=none -o ConnectTimeout=10",
            );
            if let Some(key) = &config.ssh_key_file {
                std::fs::metadata(key).map_err(|e| PushError::Credentials {
                    detail: format!("{}: {e}", key.display()),
                })?;
                ssh.push_str(" -i ");
                ssh.push_str(&shell_quote(&key.to_string_lossy()));
            }
            if let Some(known_hosts) = &config.known_hosts_file {
                std::fs::metadata(known_hosts).map_err(|e| PushError::Credentials {
                    detail: format!("{}: {e}", known_hosts.display()),
                })?;
                ssh.push_str(" -o UserKnownHostsFile=");
                ssh.push_str(&shell_quote(&known_hosts.to_string_lossy()));
            }
            env.push(("GIT_SSH_COMMAND".to_owned(), ssh));
        } else {
            if let Some(authorization) = authorization(config)? {
                git_config.push((
                    "http.extraHeader".to_owned(),
                    format!("Authorization: {authorization}"),
                ));
            }
            if let Some(ca) = &config.ca_file {
                // The variable, not `http.sslCAInfo`: a GIT_SSL_CAINFO already in
                // the environment would win over the config.
                env.push(("GIT_SSL_CAINFO".to_owned(), ca.to_string_lossy().into()));
            }
        }
        env.push(("GIT_CONFIG_COUNT".to_owned(), git_config.len().to_string()));
        for (i, (key, value)) in git_config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
        }
        Ok(env)
    }

    /// Turns git's complaint into a [`PushError`].
    fn classify(&self, output: &Output, pushing: bool) -> PushError {
        let remote = self.display_url();
        let text = format!("{}\n{}", output.stdout, output.stderr);
        let detail = summary(&output.stderr, &output.stdout);
        let has = |needle: &str| text.contains(needle);
        if has("Host key verification failed")
            || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || has("host key for")
        {
            return PushError::HostKey { remote, detail };
        }
        if has("Permission denied")
            || has("Permission to")
            || has("Repository not found")
            || has("repository not found")
            || has("Authentication failed")
            || has("could not read Username")
            || has("could not read Password")
            || has("The requested URL returned error: 401")
            || has("The requested URL returned error: 403")
            || has("UNPROTECTED PRIVATE KEY FILE")
            || has("Load key")
        {
            return PushError::Auth { remote, detail };
        }
        if pushing
            && (has("[rejected]") && (has("fetch first") || has("non-fast-forward"))
                || has("(stale info)"))
        {
            return PushError::Conflict { remote };
        }
        if has("[remote rejected]") || has("[rejected]") || has("pre-receive hook declined") {
            return PushError::Rejected { remote, detail };
        }
        if has("Connection refused")
            || has("Could not resolve host")
            || has("Could not resolve hostname")
            || has("unable to connect")
            || has("Failed to connect")
            || has("Connection timed out")
            || has("Connection reset")
            || has("Connection closed")
            || has("No route to host")
            || has("does not appear to be a git repository")
            || has("Could not read from remote repository")
            || has("The requested URL returned error: 5")
            || has("unable to access")
        {
            return PushError::Unreachable { remote, detail };
        }
        PushError::Other { remote, detail }
    }
}

/// The `Authorization` header value for an http(s) remote (basic auth from the
/// credential files, read now), or `None` when no password or token is configured.
pub(crate) fn authorization(config: &RemoteConfig) -> Result<Option<String>, PushError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| PushError::Credentials {
                detail: format!("{}: {e}", path.display()),
            })
    };
    let password = match (&config.password_file, &config.token_file) {
        (Some(path), _) | (None, Some(path)) => read(path)?,
        (None, None) => return Ok(None),
    };
    let username = match (&config.username, &config.username_file) {
        (Some(name), _) => name.clone(),
        (None, Some(path)) => read(path)?,
        (None, None) => "kubescribe".to_owned(),
    };
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    Ok(Some(format!("Basic {basic}")))
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Keeps git away from the user's and the system's configuration (credential
/// helpers, insteadOf rewrites) and from any prompt.
/// No `git gc --auto` or `git maintenance` in kubescribe's repository: the writer
/// packs it itself, and a detached gc would outlive the git that started it (and
/// kubescribe, after a crash), writing packs while the next start cleans up.
const NO_BACKGROUND_WORK: [&str; 4] = ["-c", "gc.auto=0", "-c", "maintenance.auto=false"];

fn isolate(command: &mut tokio::process::Command) {
    // Never outlive kubescribe: a git left running after a crash would write into
    // the repository while the next start recovers it.
    #[cfg(target_os = "linux")]
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_SSH")
        .env_remove("GIT_SSH_COMMAND");
}

/// The lines of git's output worth showing to a person: errors and rejections,
/// without URLs' passwords, at most a few hundred bytes.
fn summary(stderr: &str, stdout: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .chain(stdout.lines().filter(|l| l.starts_with('!')))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("To ") && *l != "Done")
        .map(redact_words)
        .collect();
    let mut text = lines.join("; ");
    if text.is_empty() {
        text = "git gave no reason".to_owned();
    }
    if text.len() > 400 {
        let mut end = 400;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn redact_words(line: &str) -> String {
    line.split(' ')
        .map(|word| {
            let trimmed = word.trim_matches(['\'', '"', '(', ')']);
            if trimmed.contains("://") {
                word.replace(trimmed, &redact_url(trimmed))
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_never_show_a_password_from_a_url() {
        let text = summary(
            "fatal: unable to access 'https://bob:hunter2@git.example/repo.git/': Failed to connect",
            "",
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("bob@git.example"), "{text}");
    }

    #[test]
    fn git_complaints_are_classified_for_people_and_metrics() {
        let remote = Remote {
            config: RemoteConfig {
                url: "https://git.example/r.git".to_owned(),
                ..Default::default()
            },
            branch: "main".to_owned(),
            git_dir: PathBuf::from("/nowhere"),
        };
        let cases = [
            ("Host key verification failed.\nfatal: Could not read from remote repository.", "", "host_key"),
            ("git@127.0.0.1: Permission denied (publickey).\nfatal: Could not read from remote repository.", "", "auth"),
            ("ERROR: Permission to org/repo.git denied to deploy-key.", "", "auth"),
            ("fatal: Authentication failed for 'https://git.example/r.git/'", "", "auth"),
            ("fatal: could not read Username for 'https://git.example': terminal prompts disabled", "", "auth"),
            ("fatal: unable to access 'https://git.example/r.git/': Failed to connect to git.example port 443: Connection refused", "", "unreachable"),
            ("error: failed to push some refs", "!\trefs/heads/main:refs/heads/main\t[rejected] (fetch first)", "conflict"),
            ("error: failed to push some refs", "!\tabc:refs/heads/main\t[remote rejected] (pre-receive hook declined)", "rejected"),
            ("fatal: something new", "", "other"),
        ];
        for (stderr, stdout, label) in cases {
            let output = Output {
                success: false,
                stdout: stdout.to_owned(),
                stderr: stderr.to_owned(),
            };
            assert_eq!(remote.classify(&output, true).label(), label, "{stderr}");
        }
    }

    #[test]
    fn shell_quoting_survives_quotes_in_paths() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
