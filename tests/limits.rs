//! Bounded resources: a client cannot hold more than `maxConnections` sockets, nor
//! keep one past the handshake, header or body timeouts, and a request over
//! `maxInFlight` waits for a slot until its deadline, then is refused. Each case waits for the server's own move (a
//! closed socket, an answer), never a fixed sleep.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::TestServer;

const LIMITS: &str = "server:\n  maxInFlight: 1\n  handshakeTimeout: 1s\n  headerReadTimeout: 1s\n  requestTimeout: 3s\n";

/// An `openssl s_client` session whose stdin stays open (so the client never ends
/// the request itself), and its output lines as they come.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn open(server: &TestServer) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-ign_eof", "-connect"])
            .arg(server.server.local_addr().to_string())
            .arg("-CAfile")
            .arg(server.server.dev_ca.clone().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs (scripts/install-deps.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The first output line containing `what`; None if the server closed first.
    fn wait_for(&self, what: &str) -> Option<String> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains(what) => return Some(line),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("nothing from the server in 20 s"),
            }
        }
    }

    /// Waits until the server ends the connection (s_client exits).
    fn wait_closed(&mut self) {
        while self.wait_for("\u{0}never").is_some() {}
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a gauge of /metrics until `holds`: the server changes it on its own
/// schedule (a handshake starting, a timeout), which nothing outside can await.
/// Scraping takes a connection of its own, so it is not counted in the condition.
async fn wait_metric(server: &TestServer, sample: &str, holds: impl Fn(f64) -> bool) -> String {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        // A scrape may be refused while every slot is taken: try again.
        if let Ok(mut connection) = server.client.connect().await {
            if let Ok((_, body)) = connection
                .send(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
                .await
            {
                last = String::from_utf8_lossy(&body).into_owned();
                // The scrape's own connection is open while /metrics is computed.
                let own = if sample.starts_with("kubescribe_connections_open") {
                    1.0
                } else {
                    0.0
                };
                if common::sample_in(&last, sample).is_some_and(|v| holds(v - own)) {
                    return last;
                }
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "{sample} never held:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn post_headers(length: usize, timeout: &str) -> String {
    format!("POST /validate?timeout={timeout} HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
}

/// Reads until the peer closes (Ok(0)) or resets; panics if neither comes in 20 s.
fn assert_closed_by_server(stream: &mut TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: the server sent {n} bytes instead of closing"),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!("{what}: still open after 20 s")
        }
        Err(_) => {} // reset: closed too
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_max_connections_is_closed_before_its_handshake() {
    let server = TestServer::start(
        "server:\n  maxConnections: 2\n  handshakeTimeout: 60s\n  headerReadTimeout: 60s\n",
    )
    .await;
    // Two kept-alive connections, each proven open by an answer, take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut session = Session::open(&server);
        session.send("GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n");
        session.wait_for("HTTP/1.1 200").expect("served");
        held.push(session);
    }
    let mut third = Session::open(&server);
    third.send("GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n");
    assert!(
        third.wait_for("HTTP/1.1").is_none(),
        "a third connection is not served"
    );
    third.wait_closed();
    // One slot back: the scrape that reads the counters is served.
    drop(held.pop());
    let text = wait_metric(&server, "kubescribe_connections_open ", |v| v == 1.0).await;
    let refused = common::sample_in(
        &text,
        "kubescribe_overload_refused_total{reason=\"connections\"} ",
    );
    // At least the third connection (a scrape that came too early is one more).
    assert!(refused.is_some_and(|n| n >= 1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_slow_headers_slow_bodies_and_requests_over_max_in_flight_are_cut() {
    let server = TestServer::start(LIMITS).await;
    // A socket that never starts TLS: closed after handshakeTimeout.
    let mut idle = TcpStream::connect(server.server.local_addr()).unwrap();
    assert_closed_by_server(&mut idle, "an idle connection past handshakeTimeout");
    // A TLS session that never sends a byte: closed after headerReadTimeout (hyper
    // itself waits for the first bytes without a limit).
    let mut silent = Session::open(&server);
    silent.wait_closed();
    // Headers that never end: closed after headerReadTimeout.
    let mut slow_headers = Session::open(&server);
    slow_headers.send("POST /validate HTTP/1.1\r\nHost: k\r\n");
    slow_headers.wait_closed();

    // A body that never ends holds the one in-flight slot until requestTimeout...
    let mut slow_body = Session::open(&server);
    slow_body.send(&post_headers(100, "10s"));
    slow_body.send("{\"apiVersion\":");
    wait_metric(&server, "kubescribe_requests_in_flight ", |v| v == 1.0).await;
    // ...so a second one waits for it until its own deadline (1 s, less the
    // margin), then gets 503...
    let mut second = Session::open(&server);
    second.send(&format!("{}{{}}", post_headers(2, "1s")));
    let status = second.wait_for("HTTP/1.1").expect("an answer");
    assert!(status.contains("503"), "{status}");
    let message = second.wait_for("maxInFlight").expect("the message");
    assert!(message.contains("retry the write"), "{message}");
    // ...and the slow one gets 408 once requestTimeout (3 s) has passed.
    let status = slow_body.wait_for("HTTP/1.1").expect("an answer");
    assert!(status.contains("408"), "{status}");
    for (reason, at_least) in [("in_flight", 1.0), ("body_timeout", 1.0)] {
        let sample = format!("kubescribe_overload_refused_total{{reason=\"{reason}\"}} ");
        assert!(
            common::metric(&server, &sample).await >= at_least,
            "{sample}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_proves_nothing_never_takes_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let server = TestServer::start(&format!(
        "server:\n  maxInFlight: 1\n  requestTimeout: 5s\n  clientAuth:\n    tokenFile: {}\n",
        token.display()
    ))
    .await;
    // The apiserver (with the token) holds the one slot with a body still arriving...
    let mut holder = Session::open(&server);
    holder.send(
        "POST /validate?timeout=10s HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );
    wait_metric(&server, "kubescribe_requests_in_flight ", |v| v == 1.0).await;
    // ...and a caller without it is refused at once, not queued behind it.
    let mut outsider = Session::open(&server);
    outsider.send(&format!("{}{{}}", post_headers(2, "3s")));
    let status = outsider.wait_for("HTTP/1.1").expect("an answer");
    assert!(status.contains("401"), "{status}");
    let status = holder.wait_for("HTTP/1.1").expect("an answer");
    assert!(status.contains("408"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_for_a_slot_never_stalls_the_admitted_one_beside_it() {
    // Two 3 MB bodies on one HTTP/2 connection, one slot: the second waits for the
    // first, whose body must still get through the connection's window. With a
    // connection window no larger than a stream's, the waiting stream used it all,
    // the first stalled until the second's deadline, and the second got 503.
    let server = TestServer::start("server:\n  maxInFlight: 1\n").await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, format!("{{\"x\":\"{}\"}}", "a".repeat(3_000_000))).unwrap();
    let url = format!(
        "https://{}/validate?timeout=10s",
        server.server.local_addr()
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2",
            "--parallel",
            // Wait for the first connection so the second transfer shares it.
            "--parallel-max",
            "2",
            "--max-time",
            "30",
            "--cacert",
        ])
        .arg(server.server.dev_ca.clone().unwrap())
        .args([
            "-H",
            "Content-Type: application/json",
            "-w",
            "%{http_code}\\n",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(&url)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(&url)
        .output()
        .expect("curl runs");
    let codes = String::from_utf8_lossy(&out.stdout);
    // Not a review: 400 for both, once each has had its turn.
    assert_eq!(codes.lines().collect::<Vec<_>>(), ["400", "400"], "{codes}");
}
