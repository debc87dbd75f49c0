//! Reviews (issue 16): a write under a `review` rule becomes a branch on a real git
//! remote and a pull request on a loopback forge that checks every request against
//! the forge's published API description (tests/common/forge_server.rs); the write
//! is denied with the pull request's URL, and kubescribe follows the pull request
//! until it is merged or closed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::forge_server::{Canned, ForgeServer, PROJECT};
use common::{allowed, eventually, git, message, metric, sample_of, warnings, TestServer};
use serde_json::{json, Value};

const TOKEN: &str = "forge-token-1";

/// A bare remote whose `main` has one commit, as a team's repository would.
fn seeded_remote(dir: &Path) -> PathBuf {
    let remote = dir.join("remote.git");
    let init = std::process::Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&remote)
        .status()
        .unwrap();
    assert!(init.success());
    common::remotes::seed_main(&remote, dir);
    remote
}

fn review_config(remote_url: &str, forge: &ForgeServer, token_file: &Path, extra: &str) -> String {
    format!(
        "repository:\n  remote:\n    url: {remote_url}\nrules:\n- name: review\n  wait: push\n  then: deny\n  review:\n    forge: {forge}\n    api: {api}\n    project: {PROJECT}\n    tokenFile: {token}\n    pollInterval: 1s\n{extra}",
        forge = forge.forge,
        api = forge.api(),
        token = token_file.display(),
    )
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

/// What every test here starts from: a seeded `file://` remote, a loopback forge
/// and the token file it accepts.
struct Setup {
    dir: tempfile::TempDir,
    remote: PathBuf,
    forge: ForgeServer,
    token: PathBuf,
}

impl Setup {
    async fn new(forge: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let remote = seeded_remote(dir.path());
        let forge = ForgeServer::start(forge, TOKEN).await;
        let token = token_file(dir.path());
        Self {
            dir,
            remote,
            forge,
            token,
        }
    }

    /// A review rule for this remote and forge, with `extra` review settings.
    fn config(&self, extra: &str) -> String {
        review_config(
            &format!("file://{}", self.remote.display()),
            &self.forge,
            &self.token,
            extra,
        )
    }
}

fn review_of(prefix: &str) -> Value {
    common::fixture(prefix).review
}

async fn send(server: &TestServer, review: &Value) -> Value {
    let (status, answer) = server
        .connect()
        .await
        .review("/validate?timeout=10s", common::body(review))
        .await
        .unwrap();
    assert_eq!(status, 200);
    answer
}

fn branches(remote: &Path) -> Vec<String> {
    git(
        remote,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// 009 is alice's create of ConfigMap team-a/app-config, uid 7f0041ae-….
const BRANCH_009: &str = "kubescribe/alice/7f0041ae";
const FILE_009: &str = "team-a/core/configmaps/app-config.yaml";

async fn open_count(server: &TestServer) -> f64 {
    sample_of(server, "kubescribe_reviews_open{rule=\"review\"}")
        .await
        .0
        .unwrap_or(-1.0)
}

/// The whole life of a review on one forge: a dry run proposes nothing; a write is
/// denied with its pull request's URL, and its branch holds exactly the change,
/// authored by the user, on top of `main`; once merged on the forge (and in git),
/// the next poll counts it merged and deletes the branch.
async fn review_lifecycle(forge_name: &str) {
    let setup = Setup::new(forge_name).await;
    let (remote, forge) = (&setup.remote, &setup.forge);
    let server = TestServer::start(&setup.config("")).await;
    let main_before = git(remote, &["rev-parse", "main"]);

    let mut dry = review_of("009");
    dry["request"]["dryRun"] = Value::Bool(true);
    let answer = send(&server, &dry).await;
    assert!(!allowed(&answer), "{answer}");
    assert!(message(&answer).contains("would propose"), "{answer}");
    assert!(forge.seen().is_empty(), "a dry run calls no API");
    assert_eq!(branches(remote), ["main"]);

    let answer = send(&server, &review_of("009")).await;
    assert!(!allowed(&answer), "{answer}");
    let text = message(&answer);
    let url = match forge_name {
        "gitlab" => "/team/apps/-/merge_requests/1",
        _ => "/team/apps/pull/1",
    };
    assert!(text.contains(url), "{forge_name}: {text}");
    assert!(text.contains(BRANCH_009), "{text}");
    assert!(text.contains("once the pull request is merged"), "{text}");

    // The remote: main as it was, and the review branch one commit on top of it,
    // by alice, adding exactly the file.
    assert_eq!(git(remote, &["rev-parse", "main"]), main_before);
    assert_eq!(branches(remote), [BRANCH_009, "main"]);
    let range = format!("main..{BRANCH_009}");
    assert_eq!(
        git(remote, &["log", "--format=%an", &range]).trim(),
        "alice"
    );
    assert_eq!(
        git(remote, &["diff", "--name-status", "main", BRANCH_009]).trim(),
        format!("A\t{FILE_009}")
    );
    // Nothing reached the local main either: the change exists only for review.
    assert_eq!(
        server.git(&["rev-parse", "main"]).trim(),
        main_before.trim()
    );

    let creates: Vec<_> = forge
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    let body = creates[0].body.clone().unwrap();
    let (title, description) = match forge_name {
        "gitlab" => (&body["title"], &body["description"]),
        _ => (&body["title"], &body["body"]),
    };
    assert_eq!(title, "alice: create ConfigMap team-a/app-config");
    let description = description.as_str().unwrap();
    for needle in [
        "7f0041ae-9176-446b-903e-9435e310c120",
        FILE_009,
        "+++ b/team-a/core/configmaps/app-config.yaml",
        "merged into `main`",
    ] {
        assert!(description.contains(needle), "{needle}: {description}");
    }
    assert_eq!(forge.problems(), Vec::<String>::new());
    assert_eq!(open_count(&server).await, 1.0);

    // The poll reads it again with the ETag it got, and the forge says "not
    // modified".
    eventually(Duration::from_secs(20), "a conditional read", || {
        forge.seen().iter().any(|s| s.status == 304)
    })
    .await;

    // A person merges it: the remote's main moves to the branch, the forge says so.
    let tip = git(remote, &["rev-parse", BRANCH_009]).trim().to_owned();
    git(remote, &["update-ref", "refs/heads/main", &tip]);
    forge.merge(1, &tip);
    // The remote's branch goes first, then the local one.
    eventually(Duration::from_secs(20), "the merge is noticed", || {
        !branches(remote).contains(&BRANCH_009.to_owned())
            && server
                .git(&["branch", "--list", "kubescribe/*"])
                .trim()
                .is_empty()
    })
    .await;
    assert_eq!(
        metric(
            &server,
            "kubescribe_reviews_outcomes_total{rule=\"review\",outcome=\"merged\"}"
        )
        .await,
        1.0
    );
    assert_eq!(open_count(&server).await, 0.0);
    assert!(
        server
            .git(&["branch", "--list", "kubescribe/*"])
            .trim()
            .is_empty(),
        "the local review branch is gone too"
    );
    assert_eq!(forge.problems(), Vec::<String>::new());
    server.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_review_becomes_a_github_pull_request_until_merged() {
    review_lifecycle("github").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_review_becomes_a_gitea_pull_request_until_merged() {
    review_lifecycle("gitea").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_review_becomes_a_gitlab_merge_request_until_merged() {
    review_lifecycle("gitlab").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gathers_a_user_s_writes_and_others_are_warned() {
    let setup = Setup::new("github").await;
    let (remote, forge) = (&setup.remote, &setup.forge);
    let server = TestServer::start(&setup.config("    group: session\n")).await;
    // Named after the session's first write, so a branch left behind by an
    // earlier session never stands in a new one's way.
    let session = BRANCH_009;

    let first = send(&server, &review_of("009")).await;
    assert!(
        message(&first).contains("proposed this change in the pull request"),
        "{first}"
    );
    let second = send(&server, &review_of("017")).await;
    let text = message(&second);
    assert!(
        text.contains("added this change to your open pull request"),
        "{text}"
    );
    assert!(text.contains("/team/apps/pull/1"), "{text}");
    assert_eq!(forge.calls("pulls/create").len(), 1, "one pull request");
    let range = format!("main..{session}");
    assert_eq!(git(remote, &["rev-list", "--count", &range]).trim(), "2");

    // Bob changes the same object: his own pull request, and a warning naming
    // alice's.
    let mut bob = review_of("019");
    bob["request"]["userInfo"]["username"] = json!("bob");
    let answer = send(&server, &bob).await;
    assert!(message(&answer).contains("/team/apps/pull/2"), "{answer}");
    let warned = warnings(&answer);
    assert!(
        warned
            .iter()
            .any(|w| w.contains("open pull request of alice") && w.contains("/team/apps/pull/1")),
        "{warned:?}"
    );

    // Alice's pull request is closed without merging: its branch goes, and her
    // next write starts a new session.
    forge.close(1);
    eventually(Duration::from_secs(20), "the close is noticed", || {
        !branches(remote).contains(&session.to_owned())
    })
    .await;
    let mut again = review_of("009");
    again["request"]["uid"] = json!("5e551049-0000-4000-8000-000000000000");
    let again = send(&server, &again).await;
    assert!(message(&again).contains("/team/apps/pull/3"), "{again}");
    let range = "main..kubescribe/alice/5e551049";
    assert_eq!(git(remote, &["rev-list", "--count", range]).trim(), "1");
    assert_eq!(
        metric(
            &server,
            "kubescribe_reviews_outcomes_total{rule=\"review\",outcome=\"closed\"}"
        )
        .await,
        1.0
    );
    assert_eq!(forge.problems(), Vec::<String>::new());
    server.server.shutdown().await.unwrap();
}

fn canned(status: u16, headers: Vec<(&'static str, String)>, body: Value) -> Canned {
    Canned {
        status,
        headers,
        body,
    }
}

/// Every kind of API failure gets a denial that says what happened and what to
/// do, leaves no branch behind (locally or on the remote), and a rotated token is
/// used at the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_classified_and_leave_nothing_behind() {
    let setup = Setup::new("github").await;
    let (remote, forge, token) = (&setup.remote, &setup.forge, &setup.token);
    let server = TestServer::start(&setup.config("")).await;
    let nothing_left = |server: &TestServer| {
        assert_eq!(branches(remote), ["main"]);
        assert!(server
            .git(&["branch", "--list", "kubescribe/*"])
            .trim()
            .is_empty());
    };

    // A rotated token the server does not have yet: 401.
    forge.set_token("forge-token-2");
    let answer = send(&server, &review_of("009")).await;
    let text = message(&answer);
    assert!(!allowed(&answer));
    assert!(text.contains("refused kubescribe's token (401)"), "{text}");
    assert!(text.contains("check the review's tokenFile"), "{text}");
    assert!(!text.contains("forge-token"), "never the token: {text}");
    nothing_left(&server);
    // The token's Secret is not mounted.
    std::fs::remove_file(token).unwrap();
    let answer = send(&server, &review_of("009")).await;
    let text = message(&answer);
    assert!(text.contains("cannot read the forge token"), "{text}");
    assert!(
        text.contains("check that the token Secret is mounted"),
        "{text}"
    );
    nothing_left(&server);
    // Rotated in the file too: used at once.
    std::fs::write(token, "forge-token-2\n").unwrap();

    let cases = [
        (
            canned(500, vec![], json!({"message": "Server Error"})),
            "GitHub is unavailable: 500",
        ),
        (
            canned(201, vec![], json!({"message": "created"})),
            "GitHub answered something kubescribe cannot read: the pull request has no `number`",
        ),
        (
            canned(404, vec![], json!({"message": "Not Found"})),
            "has no project team/apps",
        ),
        (
            canned(
                422,
                vec![],
                json!({"message": "Validation Failed", "errors": [{"message": "base branch is protected"}]}),
            ),
            "refused the request (422): Validation Failed; base branch is protected",
        ),
        (
            canned(
                403,
                vec![("retry-after", "120".to_owned())],
                json!({"message": "You have exceeded a secondary rate limit."}),
            ),
            "rate-limits kubescribe for 120s",
        ),
    ];
    for (canned, expected) in cases {
        forge.fail_next("pulls/create", canned);
        let answer = send(&server, &review_of("009")).await;
        assert!(!allowed(&answer));
        let text = message(&answer);
        assert!(text.contains(expected), "{expected}: {text}");
        nothing_left(&server);
    }
    // While rate-limited, no call is made at all.
    let calls = forge.calls("pulls/create").len();
    let answer = send(&server, &review_of("009")).await;
    assert!(
        message(&answer).contains("rate-limits kubescribe"),
        "{answer}"
    );
    assert_eq!(forge.calls("pulls/create").len(), calls);
    nothing_left(&server);
    assert!(
        metric(
            &server,
            "kubescribe_reviews_api_errors_total{rule=\"review\",reason=\"rate_limited\"}"
        )
        .await
            >= 2.0
    );
    for reason in [
        "auth",
        "credentials",
        "unavailable",
        "invalid",
        "not_found",
        "refused",
    ] {
        let sample =
            format!("kubescribe_reviews_api_errors_total{{rule=\"review\",reason=\"{reason}\"}}");
        assert_eq!(metric(&server, &sample).await, 1.0, "{reason}");
    }
    assert_eq!(forge.problems(), Vec::<String>::new());
    server.server.shutdown().await.unwrap();
}

/// A pull request the forge already has for the branch (a retried request) is
/// found, not duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_pull_request_for_the_branch_is_found_not_duplicated() {
    for forge_name in ["github", "gitea", "gitlab"] {
        let setup = Setup::new(forge_name).await;
        let forge = &setup.forge;
        forge.open_pull(BRANCH_009, "main");
        let config = setup.config("");
        let server = TestServer::start(&config).await;
        let answer = send(&server, &review_of("009")).await;
        let text = message(&answer);
        assert!(
            text.contains("/1 ") || text.contains("/1 ("),
            "{forge_name}: {text}"
        );
        assert_eq!(forge.pulls().len(), 1, "{forge_name}");
        let statuses: Vec<u16> = forge.seen().iter().map(|s| s.status).collect();
        assert_eq!(
            statuses[0],
            if forge_name == "github" { 422 } else { 409 },
            "{forge_name}"
        );
        assert_eq!(forge.problems(), Vec::<String>::new(), "{forge_name}");
        server.server.shutdown().await.unwrap();
    }
}

/// Open reviews live in git: after a restart, even with a new local repository,
/// each review branch of the remote is looked up by its branch and followed; a
/// branch kubescribe pushed whose pull request was never opened is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reviews_survive_a_restart_and_the_loss_of_the_local_repository() {
    let setup = Setup::new("gitea").await;
    let (remote, forge) = (&setup.remote, &setup.forge);
    let state = tempfile::tempdir().unwrap();
    let config = |data: &str, poll: &str| {
        format!(
            "dataDir: {}\n{}",
            state.path().join(data).display(),
            setup.config("").replace("pollInterval: 1s", poll)
        )
    };
    let server = TestServer::start(&config("first", "pollInterval: 600s")).await;
    let answer = send(&server, &review_of("009")).await;
    assert!(message(&answer).contains("/team/apps/pull/1"), "{answer}");
    server.server.shutdown().await.unwrap();

    // An orphan: pushed an hour ago by a run that stopped before opening its
    // pull request (kubescribe's own commit of this rule's review, so it is
    // kubescribe's to delete).
    let orphan = "kubescribe/bob/0badf00d";
    let tip = git(remote, &["rev-parse", BRANCH_009]).trim().to_owned();
    let hour_ago = format!(
        "{} +0000",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600
    );
    let tree = format!("{tip}^{{tree}}");
    let old = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(remote)
        .args([
            "commit-tree",
            &tree,
            "-p",
            &tip,
            "-m",
            "update v1 ConfigMap team-a/app-config\n\nKubernetes-User: bob\nKubescribe-Review: review into main",
        ])
        .env("GIT_AUTHOR_NAME", "bob")
        .env("GIT_AUTHOR_EMAIL", "bob@example.com")
        .env("GIT_COMMITTER_NAME", "kubescribe")
        .env("GIT_COMMITTER_EMAIL", "kubescribe@localhost")
        .env("GIT_COMMITTER_DATE", &hour_ago)
        .output()
        .unwrap();
    assert!(old.status.success());
    let orphan_tip = String::from_utf8(old.stdout).unwrap().trim().to_owned();
    git(
        remote,
        &["update-ref", &format!("refs/heads/{orphan}"), &orphan_tip],
    );
    // Fresh, and so perhaps still being proposed by another process: kept.
    let fresh = "kubescribe/dave/0f0f0f0f";
    git(
        remote,
        &["update-ref", &format!("refs/heads/{fresh}"), &tip],
    );
    // A branch someone else made under the prefix, with no pull request: not
    // kubescribe's commit, so left alone.
    let main = git(remote, &["rev-parse", "main"]).trim().to_owned();
    let theirs = "kubescribe/carol/handmade";
    git(
        remote,
        &["update-ref", &format!("refs/heads/{theirs}"), &main],
    );

    // A new local repository: everything is on the remote.
    let server = TestServer::start(&config("second", "pollInterval: 1s")).await;
    eventually(Duration::from_secs(20), "the orphan is deleted", || {
        !branches(remote).contains(&orphan.to_owned())
    })
    .await;
    // Branches are looked up in order: alice's before the orphan's.
    assert_eq!(open_count(&server).await, 1.0);
    assert!(branches(remote).contains(&theirs.to_owned()));
    git(remote, &["update-ref", "refs/heads/main", &tip]);
    forge.merge(1, &tip);
    eventually(
        Duration::from_secs(20),
        "the merge is noticed after the restart",
        || branches(remote) == [theirs, fresh, "main"],
    )
    .await;
    assert_eq!(forge.problems(), Vec::<String>::new());
    server.server.shutdown().await.unwrap();
}

/// A push that fails leaves nothing: no local branch, no API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_proposes_nothing() {
    let setup = Setup::new("github").await;
    let (remote, forge) = (&setup.remote, &setup.forge);
    let server = TestServer::start(&setup.config("")).await;
    // The remote refuses everything from now on.
    let hook = remote.join("hooks").join("pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'branch creation is frozen' >&2\nexit 1\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let answer = send(&server, &review_of("009")).await;
    assert!(!allowed(&answer));
    let text = message(&answer);
    assert!(
        text.contains("pushing the review branch kubescribe/alice/7f0041ae failed"),
        "{text}"
    );
    assert!(
        text.contains("branch's protection rules and server-side hooks"),
        "{text}"
    );
    assert_eq!(branches(remote), ["main"]);
    assert!(server
        .git(&["branch", "--list", "kubescribe/*"])
        .trim()
        .is_empty());
    assert!(forge.seen().is_empty());
    // No rule takes forge webhooks here, so the path is not there at all.
    let (status, _) = server
        .connect()
        .await
        .send_with(
            axum::http::Method::POST,
            "/reviews/review",
            &[("x-hub-signature-256", "sha256=00")],
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    server.server.shutdown().await.unwrap();
}

/// In a session, a later write's object is the cluster's, which never got the
/// session's earlier writes: only its own change is merged into the session's
/// file, so nothing an earlier write proposed is undone; a change to the same
/// lines is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_merges_each_write_s_own_change_into_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let remote = seeded_remote(dir.path());
    let url = format!("file://{}", remote.display());
    let with_data = |uid: &str, a: &str, z: &str| {
        let mut review = review_of("017");
        review["request"]["uid"] = json!(uid);
        let data = json!({"A": a, "B": "x", "C": "x", "D": "x", "LOG_LEVEL": "info", "Z": z});
        review["request"]["object"]["data"] = data.clone();
        review["request"]["oldObject"]["data"] =
            json!({"A": "1", "B": "x", "C": "x", "D": "x", "LOG_LEVEL": "info", "Z": "1"});
        review
    };
    // The object as git has it on main, recorded before reviews were turned on.
    let plain = TestServer::start(&format!(
        "repository:\n  remote:\n    url: {url}\nrules:\n- name: all\n  wait: push\n"
    ))
    .await;
    let answer = send(
        &plain,
        &with_data("00000000-0000-4000-8000-000000000001", "1", "1"),
    )
    .await;
    assert!(allowed(&answer), "{answer}");
    plain.server.shutdown().await.unwrap();

    let forge = ForgeServer::start("github", TOKEN).await;
    let token = token_file(dir.path());
    let server =
        TestServer::start(&review_config(&url, &forge, &token, "    group: session\n")).await;
    let first = send(
        &server,
        &with_data("a1a1a1a1-0000-4000-8000-000000000002", "2", "1"),
    )
    .await;
    assert!(message(&first).contains("/team/apps/pull/1"), "{first}");
    let second = send(
        &server,
        &with_data("b2b2b2b2-0000-4000-8000-000000000003", "1", "2"),
    )
    .await;
    assert!(message(&second).contains("added this change"), "{second}");
    let session = "kubescribe/alice/a1a1a1a1";
    let file = git(&remote, &["show", &format!("{session}:{FILE_009}")]);
    assert!(
        file.contains("A: '2'"),
        "the first write's change stays: {file}"
    );
    assert!(file.contains("Z: '2'"), "the second's is there too: {file}");

    let third = send(
        &server,
        &with_data("c3c3c3c3-0000-4000-8000-000000000004", "3", "1"),
    )
    .await;
    let text = message(&third);
    assert!(!allowed(&third));
    assert!(text.contains("changes the same lines"), "{text}");
    assert_eq!(
        git(&remote, &["show", &format!("{session}:{FILE_009}")]),
        file,
        "refused: the session is as it was"
    );
    assert_eq!(forge.calls("pulls/create").len(), 1);
    server.server.shutdown().await.unwrap();
}

/// A forge's webhook makes kubescribe look at once, instead of at the next poll;
/// one without the right signature is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_forge_webhook_makes_the_merge_known_at_once() {
    let setup = Setup::new("github").await;
    let (remote, forge) = (&setup.remote, &setup.forge);
    let secret = setup.dir.path().join("webhook-secret");
    std::fs::write(&secret, "It's a Secret to Everybody\n").unwrap();
    let config = setup
        .config(&format!("    webhookSecretFile: {}\n", secret.display()))
        .replace("pollInterval: 1s", "pollInterval: 3600s");
    let server = TestServer::start(&config).await;
    let answer = send(&server, &review_of("009")).await;
    assert!(message(&answer).contains("/team/apps/pull/1"), "{answer}");
    let tip = git(remote, &["rev-parse", BRANCH_009]).trim().to_owned();
    git(remote, &["update-ref", "refs/heads/main", &tip]);
    forge.merge(1, &tip);

    // GitHub's documented example: this body signed with this secret.
    let body = bytes::Bytes::from_static(b"Hello, World!");
    let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let mut connection = server.connect().await;
    let (status, answer) = connection
        .send_with(
            axum::http::Method::POST,
            "/reviews/review",
            &[
                ("x-hub-signature-256", "sha256=00"),
                ("x-github-event", "pull_request"),
            ],
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(status, 401, "{answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("webhookSecretFile"));
    let (status, _) = connection
        .send_with(
            axum::http::Method::POST,
            "/reviews/nosuchrule",
            &[("x-hub-signature-256", signature)],
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(
        branches(remote).contains(&BRANCH_009.to_owned()),
        "nothing happened"
    );

    let (status, _) = connection
        .send_with(
            axum::http::Method::POST,
            "/reviews/review",
            &[
                ("x-hub-signature-256", signature),
                ("x-github-event", "pull_request"),
            ],
            body,
        )
        .await
        .unwrap();
    assert_eq!(status, 204);
    eventually(Duration::from_secs(20), "the merge is known", || {
        branches(remote) == ["main"]
    })
    .await;
    assert_eq!(
        metric(
            &server,
            "kubescribe_reviews_webhooks_total{rule=\"review\",result=\"refused\"}"
        )
        .await,
        1.0
    );
    server.server.shutdown().await.unwrap();
}

/// GitLab's push options open the merge request with the push itself: a real
/// `git http-backend` remote that advertises push options, with a pre-receive hook
/// that records `GIT_PUSH_OPTION_*` (and, as GitLab does, opens the merge request
/// they ask for); kubescribe then only reads the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_push_options_open_the_merge_request_as_documented() {
    let http = common::remotes::SmartHttp::start();
    let remote = http.repo();
    let dir = tempfile::tempdir().unwrap();
    // Seed main through the file system, as the team's repository would have it.
    common::remotes::seed_main(&remote, dir.path());
    git(&remote, &["config", "receive.advertisePushOptions", "true"]);
    let forge = ForgeServer::start("gitlab", TOKEN).await;
    let log = dir.path().join("push-options.log");
    let hook = remote.join("hooks").join("pre-receive");
    std::fs::write(&hook, forge.push_hook(&log)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let password = dir.path().join("password");
    std::fs::write(&password, common::remotes::SmartHttp::password()).unwrap();
    let token = token_file(dir.path());
    let config = review_config(
        &format!(
            "{}\n    username: {}\n    passwordFile: {}",
            http.url(),
            common::remotes::SmartHttp::username(),
            password.display()
        ),
        &forge,
        &token,
        "    openWith: pushOptions\n",
    );
    let server = TestServer::start(&config).await;
    let answer = send(&server, &review_of("009")).await;
    let text = message(&answer);
    assert!(text.contains("/team/apps/-/merge_requests/1"), "{text}");

    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged,
        format!(
            "ref refs/heads/{BRANCH_009}\ncount 4\noption merge_request.create\noption merge_request.target=main\noption merge_request.title=alice: create ConfigMap team-a/app-config\noption merge_request.remove_source_branch\n"
        )
    );
    // No merge request was created through the API; it was looked up by branch.
    assert!(forge.calls("create-merge-request").is_empty());
    let lookups = forge.calls("list-project-merge-requests");
    assert_eq!(lookups.len(), 1);
    assert!(lookups[0]
        .query
        .contains(&("source_branch".to_owned(), BRANCH_009.to_owned())));
    assert_eq!(
        forge.pulls()[0].title,
        "alice: create ConfigMap team-a/app-config"
    );
    assert_eq!(forge.problems(), Vec::<String>::new());
    server.server.shutdown().await.unwrap();
}

/// In a repository a team keeps, the review branch holds the same edit a direct
/// commit would make: one changed line of the document that declares the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_in_a_repository_people_keep_is_the_minimal_edit_of_their_file() {
    let (_fixture, remote) = common::gitops::seeded_fixture("stefanprodan__podinfo");
    let forge = ForgeServer::start("github", TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let config = review_config(&format!("file://{}", remote.display()), &forge, &token, "")
        .replace(
            "rules:\n",
            "  inPlace:\n    enabled: true\n    namespaces:\n      kustomize: podinfo\nrules:\n",
        );
    let server = TestServer::start(&config).await;

    let path = "deploy/webapp/backend/deployment.yaml";
    let text = git(&remote, &["show", &format!("main:{path}")]);
    let first = serde_yaml_ng::Deserializer::from_str(&text).next().unwrap();
    let mut old: Value = serde::Deserialize::deserialize(first).unwrap();
    old["metadata"]["namespace"] = json!("webapp");
    old["metadata"]["uid"] = json!("00000001-1111-4000-8000-000000000000");
    old["metadata"]["resourceVersion"] = json!("101");
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("ghcr.io/stefanprodan/podinfo:6.15.0");
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "1a2b3c4d-0000-4000-8000-000000000001",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": "backend",
            "namespace": "webapp",
            "operation": "UPDATE",
            "userInfo": {"username": "alice", "groups": ["devs"]},
            "object": new,
            "oldObject": old,
            "dryRun": false,
            "options": {},
        }
    });
    let answer = send(&server, &review).await;
    assert!(message(&answer).contains("/team/apps/pull/1"), "{answer}");
    let branch = "kubescribe/alice/1a2b3c4d";
    let change = common::gitops::change_of(&remote, branch);
    assert_eq!(change.files, [path]);
    assert_eq!(change.added.len(), 1, "{:?}", change.added);
    assert!(change.added[0].contains("ghcr.io/stefanprodan/podinfo:6.15.0"));
    assert_eq!(change.removed.len(), 1, "{:?}", change.removed);
    let body = forge.calls("pulls/create")[0].body.clone().unwrap();
    assert!(body["body"].as_str().unwrap().contains(path));
    assert_eq!(forge.problems(), Vec::<String>::new());
    server.server.shutdown().await.unwrap();
}
