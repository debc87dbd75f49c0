//! Real git servers on loopback, for push tests: `git daemon` (git://), `git
//! http-backend` under lighttpd with basic auth (http://, optionally https://), and
//! sshd with git-shell as the forced command (ssh://). Each one serves a single bare
//! repository `repo.git` from its own temp dir, on a free 127.0.0.1 port, and can be
//! stopped and restarted on the same port to simulate an outage.
//!
//! Needs the tools `scripts/install-deps.sh` installs (git, lighttpd,
//! lighttpd-mod-openssl, openssh-server, openssh-client, openssl).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server gets to accept connections (or to stop accepting them). Generous:
/// a loaded 2-core machine can be slow to fork sshd or lighttpd.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// The name of the served bare repository inside each server's root.
pub const REPO_NAME: &str = "repo.git";

/// The branch `HEAD` of the served repository points at.
pub const DEFAULT_BRANCH: &str = "main";

// ---------------------------------------------------------------------------------
// git daemon
// ---------------------------------------------------------------------------------

/// `git daemon` with receive-pack enabled and no authentication at all.
pub struct GitDaemon {
    served: Served,
}

impl GitDaemon {
    pub fn start() -> Self {
        let daemon = git_exec_path().join("git-daemon");
        if !daemon.is_file() {
            panic!(
                "git-daemon not found at {}: run scripts/install-deps.sh",
                daemon.display()
            );
        }
        let dir = temp_dir("kubescribe-git-daemon");
        init_bare(dir.path());
        let root = dir.path().to_owned();
        let log = root.join("git-daemon.log");
        let process = start_on_free_port("git daemon", |port| {
            let (daemon, root) = (daemon.clone(), root.clone());
            Process::new(
                "git daemon",
                port,
                log.clone(),
                // The dashed binary, not `git daemon`: the `git` wrapper runs it as a
                // child that would survive a SIGKILL of the wrapper, still listening.
                move || {
                    let mut cmd = Command::new(&daemon);
                    cmd.arg("--reuseaddr")
                        .arg("--listen=127.0.0.1")
                        .arg(format!("--port={port}"))
                        .arg(format!("--base-path={}", root.display()))
                        .arg("--export-all")
                        .arg("--enable=receive-pack")
                        .arg("--informative-errors")
                        .arg("--verbose")
                        .arg(&root)
                        .current_dir(&root);
                    cmd
                },
                move |port| git_daemon_answers(port, &format!("/{REPO_NAME}")),
            )
        });
        Self {
            served: Served { process, dir },
        }
    }

    /// `git://127.0.0.1:<port>/repo.git`
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/{REPO_NAME}", self.process.port)
    }
}

/// Speaks just enough git protocol v0 to see `path` advertised: a request for
/// upload-pack, the ref advertisement up to its flush packet, then a flush of our own
/// so upload-pack ends without complaint.
fn git_daemon_answers(port: u16, path: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = connect(port)?;
        let request = format!("git-upload-pack {path}\0host=127.0.0.1:{port}\0");
        write!(stream, "{:04x}{request}", request.len() + 4)?;
        let mut seen_line = false;
        loop {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len)?;
            let Some(len) = std::str::from_utf8(&len)
                .ok()
                .and_then(|len| usize::from_str_radix(len, 16).ok())
            else {
                return Ok(false);
            };
            if len == 0 {
                break;
            }
            if len < 4 {
                return Ok(false);
            }
            let mut line = vec![0u8; len - 4];
            stream.read_exact(&mut line)?;
            if line.starts_with(b"ERR ") {
                return Ok(false);
            }
            seen_line = true;
        }
        stream.write_all(b"0000")?;
        Ok(seen_line)
    };
    attempt().unwrap_or(false)
}

// ---------------------------------------------------------------------------------
// Smart HTTP: lighttpd + git http-backend
// ---------------------------------------------------------------------------------

/// `git http-backend` as a CGI under lighttpd, every URL behind HTTP basic auth
/// ([`SmartHttp::username`] / [`SmartHttp::password`]). Plain HTTP from
/// [`SmartHttp::start`], HTTPS with a throwaway CA from [`SmartHttp::start_tls`].
pub struct SmartHttp {
    served: Served,
    tls: bool,
}

impl SmartHttp {
    const USERNAME: &'static str = "kube";
    const PASSWORD: &'static str = "s3cret-token";
    /// base64("kube:s3cret-token")
    const BASIC: &'static str = "a3ViZTpzM2NyZXQtdG9rZW4=";

    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Same server over HTTPS; the certificate (for `127.0.0.1`, signed by a CA made
    /// for this server alone) is trusted through [`SmartHttp::ca_file`].
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let lighttpd = find_tool("lighttpd");
        let backend = git_exec_path().join("git-http-backend");
        if !backend.is_file() {
            panic!(
                "git-http-backend not found at {}: run scripts/install-deps.sh",
                backend.display()
            );
        }
        if tls && !Path::new("/usr/lib/lighttpd/mod_openssl.so").exists() {
            panic!("lighttpd mod_openssl not found: run scripts/install-deps.sh");
        }
        let dir = temp_dir("kubescribe-smart-http");
        let root = dir.path().to_owned();
        let repo = init_bare(&root);
        git_ok(Command::new("git").arg("--git-dir").arg(&repo).args([
            "config",
            "http.receivepack",
            "true",
        ]));
        for sub in ["htdocs", "uploads"] {
            fs::create_dir(root.join(sub)).expect("lighttpd dirs in the temp dir");
        }
        fs::write(
            root.join("users"),
            format!("{}:{}\n", Self::USERNAME, Self::PASSWORD),
        )
        .expect("lighttpd user file");
        if tls {
            make_tls_files(&root);
        }
        // The CGI is a wrapper that notes each request before running the backend:
        // lighttpd's own access log is flushed only every few seconds.
        let backend = {
            let wrapper = root.join("cgi").join("git-http-backend");
            fs::create_dir(root.join("cgi")).expect("cgi dir in the temp dir");
            fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh
printf '%s %s?%s %s\\n' \"$REQUEST_METHOD\" \"$PATH_INFO\" \"$QUERY_STRING\" \"$HTTP_USER_AGENT\" >>'{}'\nexec '{}'\n",
                    root.join("requests.log").display(),
                    backend.display()
                ),
            )
            .expect("CGI wrapper");
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
            wrapper
        };
        let name = if tls { "lighttpd (https)" } else { "lighttpd" };
        let log = root.join("lighttpd.log");
        let process = start_on_free_port(name, |port| {
            let config = root.join("lighttpd.conf");
            fs::write(&config, lighttpd_config(&root, &backend, port, tls))
                .expect("lighttpd config");
            let lighttpd = lighttpd.clone();
            let ready: Box<dyn Fn(u16) -> bool> = if tls {
                let ca = root.join("ca.pem");
                Box::new(move |port| {
                    connect(port).is_ok()
                        && ls_remote_ok(
                            &format!("https://127.0.0.1:{port}/git/{REPO_NAME}"),
                            &[
                                format!("http.sslCAInfo={}", ca.display()),
                                format!("http.extraHeader={}", Self::authorization_header()),
                            ],
                        )
                })
            } else {
                Box::new(http_backend_answers)
            };
            Process::new(
                name,
                port,
                log.clone(),
                move || {
                    let mut cmd = Command::new(&lighttpd);
                    cmd.arg("-D").arg("-f").arg(&config);
                    cmd
                },
                ready,
            )
        });
        Self {
            served: Served { process, dir },
            tls,
        }
    }

    /// The requests that reached `git http-backend` so far, each as method, path,
    /// query and the client's User-Agent (`POST /repo.git/git-receive-pack? git/2.0
    /// (kubescribe/0.1.0)`), for telling which requests a push made, and who made
    /// them.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.served.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `http://127.0.0.1:<port>/git/repo.git` (or `https://` from `start_tls`); no
    /// credentials in it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/git/{REPO_NAME}", self.process.port)
    }

    pub fn username() -> &'static str {
        Self::USERNAME
    }

    pub fn password() -> &'static str {
        Self::PASSWORD
    }

    /// `Authorization: Basic <base64(user:password)>`, for
    /// `git -c http.extraHeader=<this>`.
    pub fn authorization_header() -> String {
        format!("Authorization: Basic {}", Self::BASIC)
    }

    /// A script for `GIT_ASKPASS` that answers git's `Username for ...` and
    /// `Password for ...` prompts with the right credentials.
    pub fn askpass(&self) -> PathBuf {
        let script = self.dir.path().join("askpass.sh");
        if !script.exists() {
            let body = format!(
                "#!/bin/sh\ncase \"$1\" in\n  Username*) echo '{}' ;;\n  *) echo '{}' ;;\nesac\n",
                Self::USERNAME,
                Self::PASSWORD
            );
            write_executable(&script, &body);
        }
        script
    }

    /// The PEM CA certificate that signed the server's certificate (`start_tls` only).
    pub fn ca_file(&self) -> PathBuf {
        assert!(
            self.tls,
            "ca_file() is only there for SmartHttp::start_tls()"
        );
        self.dir.path().join("ca.pem")
    }
}

fn lighttpd_config(root: &Path, backend: &Path, port: u16, tls: bool) -> String {
    let root = root.display();
    let backend = backend.display();
    let tls = if tls {
        format!(
            "server.modules += ( \"mod_openssl\" )\n\
             ssl.engine = \"enable\"\n\
             ssl.pemfile = \"{root}/server.pem\"\n\
             ssl.privkey = \"{root}/server.key\"\n"
        )
    } else {
        String::new()
    };
    // The error log stays on stderr, which goes to the log file, as does the CGI's.
    format!(
        r#"server.document-root = "{root}/htdocs"
server.bind = "127.0.0.1"
server.port = {port}
server.upload-dirs = ( "{root}/uploads" )
server.modules = ( "mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi" )
{tls}
auth.backend = "plain"
auth.backend.plain.userfile = "{root}/users"
auth.require = ( "" => ( "method" => "basic", "realm" => "kubescribe-test", "require" => "valid-user" ) )

alias.url = ( "/git/" => "{backend}/" )
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ( "" => "" )
  setenv.set-environment = ( "GIT_PROJECT_ROOT" => "{root}", "GIT_HTTP_EXPORT_ALL" => "1" )
}}
"#
    )
}

/// An authenticated GET of the upload-pack advertisement: proves lighttpd, the auth
/// module and the CGI all work.
fn http_backend_answers(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = connect(port)?;
        write!(
            stream,
            "GET /git/{REPO_NAME}/info/refs?service=git-upload-pack HTTP/1.0\r\n\
             Host: 127.0.0.1:{port}\r\n{}\r\n\r\n",
            SmartHttp::authorization_header()
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let answer = String::from_utf8_lossy(&answer);
        Ok(answer.starts_with("HTTP/1.")
            && answer.lines().next().is_some_and(|l| l.contains(" 200 "))
            && answer.contains("application/x-git-upload-pack-advertisement"))
    };
    attempt().unwrap_or(false)
}

/// A CA and a leaf for `IP:127.0.0.1` signed by it (webpki-based clients refuse a
/// self-signed leaf as its own trust anchor, so no `req -x509` shortcut).
fn make_tls_files(root: &Path) {
    let openssl = find_tool("openssl");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&openssl);
        cmd.args(args).current_dir(root);
        run_ok(&mut cmd, "openssl");
    };
    fs::write(
        root.join("leaf.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1\n",
    )
    .expect("openssl extensions file");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "7",
        "-subj",
        "/CN=kubescribe test remote CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "7",
        "-extfile",
        "leaf.ext",
        "-out",
        "server.pem",
    ]);
}

// ---------------------------------------------------------------------------------
// sshd + git-shell
// ---------------------------------------------------------------------------------

/// sshd on loopback accepting exactly one key ([`Sshd::identity_file`]), whose
/// sessions can only run `git-shell` (so only git-upload-pack / git-receive-pack).
pub struct Sshd {
    served: Served,
    user: String,
}

impl Sshd {
    pub fn start() -> Self {
        let sshd = find_tool("sshd");
        let keygen = find_tool("ssh-keygen");
        find_tool("ssh");
        let git_shell = find_git_shell();
        let user = current_user();
        if user == "root" {
            // sshd refuses to start without its privilege separation dir, which only
            // the (never started) system service would create.
            if let Err(err) = fs::create_dir_all("/run/sshd") {
                panic!("cannot create /run/sshd for sshd: {err}");
            }
        }
        let dir = temp_dir("kubescribe-sshd");
        let root = dir.path().to_owned();
        init_bare(&root);
        for (key, comment) in [
            ("host_key", "kubescribe test sshd host key"),
            ("client_key", "kubescribe test client"),
            ("other_client_key", "kubescribe test unauthorized client"),
            ("wrong_host_key", "kubescribe test impostor host key"),
        ] {
            let mut cmd = Command::new(&keygen);
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(root.join(key));
            run_ok(&mut cmd, "ssh-keygen");
        }
        let client_pub = read_public_key(&root.join("client_key.pub"));
        fs::write(
            root.join("authorized_keys"),
            format!(
                "command=\"{} -c \\\"$SSH_ORIGINAL_COMMAND\\\"\",no-port-forwarding,\
                 no-X11-forwarding,no-agent-forwarding,no-pty {client_pub}\n",
                git_shell.display()
            ),
        )
        .expect("authorized_keys");
        let log = root.join("sshd.log");
        let process = start_on_free_port("sshd", |port| {
            let config = root.join("sshd_config");
            fs::write(&config, sshd_config(&root, port, &user)).expect("sshd_config");
            for (file, key) in [
                ("known_hosts", "host_key.pub"),
                ("wrong_known_hosts", "wrong_host_key.pub"),
            ] {
                let key = read_public_key(&root.join(key));
                fs::write(root.join(file), format!("[127.0.0.1]:{port} {key}\n"))
                    .expect("known_hosts");
            }
            let sshd = sshd.clone();
            Process::new(
                "sshd",
                port,
                log.clone(),
                move || {
                    // -D: stay in the foreground so killing the child stops it; -e: log
                    // to stderr, i.e. the log file. sshd wants an absolute path.
                    let mut cmd = Command::new(&sshd);
                    cmd.arg("-D").arg("-e").arg("-f").arg(&config);
                    cmd
                },
                ssh_banner_answers,
            )
        });
        Self {
            served: Served { process, dir },
            user,
        }
    }

    /// `ssh://<user>@127.0.0.1:<port>/<absolute path>/repo.git`
    pub fn url(&self) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.process.port,
            self.repo().display()
        )
    }

    /// The account sessions log in as: the user running the tests.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client private key sshd accepts.
    pub fn identity_file(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A client private key sshd does not accept.
    pub fn other_identity_file(&self) -> PathBuf {
        self.dir.path().join("other_client_key")
    }

    /// `[127.0.0.1]:<port> ssh-ed25519 AAAA...` with the server's real host key.
    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `[127.0.0.1]:<port> ssh-ed25519 AAAA...` with some other key.
    pub fn wrong_known_hosts_file(&self) -> PathBuf {
        self.dir.path().join("wrong_known_hosts")
    }

    /// A `GIT_SSH_COMMAND` using the authorized key and the right known_hosts.
    pub fn git_ssh_command(&self) -> String {
        Self::ssh_command(&self.identity_file(), &self.known_hosts_file())
    }

    /// A `GIT_SSH_COMMAND` that uses only `identity` and only `known_hosts`, checks the
    /// host key strictly and never prompts (no ~/.ssh/config, agent or system files).
    pub fn ssh_command(identity: &Path, known_hosts: &Path) -> String {
        format!(
            "ssh -F /dev/null -i '{}' -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=20",
            identity.display(),
            known_hosts.display()
        )
    }
}

fn sshd_config(root: &Path, port: u16, user: &str) -> String {
    let root = root.display();
    format!(
        "Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AllowUsers {user}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PermitUserEnvironment no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 50:30:100
LogLevel VERBOSE
"
    )
}

fn ssh_banner_answers(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut line = String::new();
        BufReader::new(connect(port)?)
            .take(256)
            .read_line(&mut line)?;
        Ok(line.starts_with("SSH-2.0-"))
    };
    attempt().unwrap_or(false)
}

/// `ssh-ed25519 AAAA...` from a `.pub` file, without the comment.
fn read_public_key(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("public key");
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(key)) => format!("{kind} {key}"),
        _ => panic!("unexpected public key file {}: {text:?}", path.display()),
    }
}

fn find_git_shell() -> PathBuf {
    let beside_git = git_exec_path().join("git-shell");
    if beside_git.is_file() {
        return beside_git;
    }
    find_tool("git-shell")
}

fn current_user() -> String {
    let output = Command::new("id")
        .arg("-un")
        .output()
        .expect("`id -un` runs");
    assert!(output.status.success(), "`id -un` failed");
    String::from_utf8(output.stdout)
        .expect("user name is UTF-8")
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------
// Running the CLI tools
// ---------------------------------------------------------------------------------

/// Runs `cmd` (stdin closed) and returns its output, killing it and failing the test
/// if it takes longer than `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {cmd:?}: {err}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A `git` command that ignores the system and global configuration, never prompts
/// on a terminal, and takes no credentials, ssh command or TLS trust from the
/// environment. (`GIT_SSL_CAINFO` in particular is set on some machines and overrides
/// any `-c http.sslCAInfo=`.)
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    for var in [
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSH_VARIANT",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_NO_VERIFY",
        "GIT_SSL_CERT",
        "GIT_SSL_KEY",
        "GIT_HTTP_PROXY_AUTHMETHOD",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn ls_remote_ok(url: &str, config: &[String]) -> bool {
    let mut cmd = git_command();
    for c in config {
        cmd.arg("-c").arg(c);
    }
    cmd.arg("ls-remote").arg(url);
    output_within(&mut cmd, READY_TIMEOUT).status.success()
}

fn git_ok(cmd: &mut Command) -> String {
    run_ok(cmd, "git")
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let output = output_within(cmd, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "{what} failed: {cmd:?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `git init --bare` of `repo.git` in `root`, `HEAD` on `main`; returns its path.
fn init_bare(root: &Path) -> PathBuf {
    let repo = root.join(REPO_NAME);
    git_ok(
        git_command()
            .args(["init", "--quiet", "--bare"])
            .arg(format!("--initial-branch={DEFAULT_BRANCH}"))
            .arg(&repo),
    );
    repo
}

fn git_exec_path() -> PathBuf {
    let output = Command::new("git")
        .arg("--exec-path")
        .output()
        .unwrap_or_else(|err| panic!("git not found ({err}): run scripts/install-deps.sh"));
    assert!(output.status.success(), "git --exec-path failed");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// `name` from PATH, or from the sbin dirs a non-root PATH may lack.
fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/install-deps.sh"))
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

fn write_executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, body).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------
// One server process
// ---------------------------------------------------------------------------------

/// A foreground server process on a fixed port, with a way to (re)launch it and a
/// protocol-level probe that says when it serves.
/// What every server here has: its process on a loopback port, and a temporary
/// directory holding the served repository, its configuration and its log (the
/// daemon's output; lighttpd's error log and the CGI's stderr; sshd's VERBOSE log).
/// Each server derefs to it.
pub struct Served {
    process: Process,
    dir: TempDir,
}

impl Served {
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// The served bare repository, for `git --git-dir`.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join(REPO_NAME)
    }

    /// The server's own output, for diagnosing a failed test.
    pub fn log(&self) -> String {
        read_log(&self.process.log)
    }

    /// Kills the server; connections to its port are refused once this returns.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Stops the server if it runs, then starts it again on the same port.
    pub fn restart(&mut self) {
        self.process.restart();
    }
}

macro_rules! served {
    ($($server:ty),*) => {$(
        impl std::ops::Deref for $server {
            type Target = Served;
            fn deref(&self) -> &Served {
                &self.served
            }
        }

        impl std::ops::DerefMut for $server {
            fn deref_mut(&mut self) -> &mut Served {
                &mut self.served
            }
        }
    )*};
}

served!(GitDaemon, SmartHttp, Sshd);

struct Process {
    what: &'static str,
    port: u16,
    log: PathBuf,
    command: Box<dyn Fn() -> Command>,
    ready: Box<dyn Fn(u16) -> bool>,
    child: Option<Child>,
}

impl Process {
    fn new(
        what: &'static str,
        port: u16,
        log: PathBuf,
        command: impl Fn() -> Command + 'static,
        ready: impl Fn(u16) -> bool + 'static,
    ) -> Self {
        Self {
            what,
            port,
            log,
            command: Box::new(command),
            ready: Box::new(ready),
            child: None,
        }
    }

    /// Spawns the server and waits until the probe succeeds; an error if the process
    /// exits first (e.g. the port is taken) or the deadline passes.
    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} already runs", self.what);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log file");
        let mut cmd = (self.command)();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|err| format!("cannot run {cmd:?}: {err}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = (self.ready)(self.port);
            // Checked after the probe too: a probe answered by some other process that
            // owns the port must not count.
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before serving on 127.0.0.1:{}; log {}:\n{}",
                    self.what,
                    self.port,
                    self.log.display(),
                    read_log(&self.log)
                ));
            }
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "{} did not serve on 127.0.0.1:{} within {READY_TIMEOUT:?}; log {}:\n{}",
                    self.what,
                    self.port,
                    self.log.display(),
                    read_log(&self.log)
                ));
            }
            thread::sleep(POLL);
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("wait for server");
        if status.is_some() {
            self.child = None;
        }
        status
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and waits until its port refuses connections.
    fn stop(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        while connect(self.port).is_ok() {
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:{} still accepts connections {READY_TIMEOUT:?} after {} was killed",
                self.port,
                self.what
            );
            thread::sleep(POLL);
        }
    }

    /// Stops the server if it runs and launches it again on the same port, retrying
    /// while the port is briefly unavailable.
    fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(err) if Instant::now() >= deadline => {
                    panic!("{} could not restart: {err}", self.what)
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Builds and launches a server on a free port, trying a few ports in case another
/// process takes the chosen one between the probe bind and the server's bind.
fn start_on_free_port(what: &str, mut make: impl FnMut(u16) -> Process) -> Process {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let mut process = make(free_port());
        match process.launch() {
            Ok(()) => return process,
            Err(err) => errors.push(err),
        }
    }
    panic!("{what} did not start:\n{}", errors.join("\n---\n"));
}

/// Gives the git repository `remote` (a path or URL git can push to) a `main`
/// with one commit, a README, as a team's repository has; `scratch` holds the
/// work tree it is made in.
pub fn seed_main(remote: &Path, scratch: &Path) {
    let run = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let work = scratch.join("seed");
    run(scratch, &["init", "-q", "-b", "main", "seed"]);
    fs::write(work.join("README.md"), "# apps\n").expect("README");
    run(&work, &["add", "README.md"]);
    run(
        &work,
        &[
            "-c",
            "user.name=seed",
            "-c",
            "user.email=seed@example.com",
            "commit",
            "-q",
            "-m",
            "seed",
        ],
    );
    run(
        &work,
        &["push", "-q", remote.to_str().expect("UTF-8 path"), "main"],
    );
}
