//! Reviews under the real apiserver (issue 16): `kubectl create` under a `review`
//! rule is denied with a pull request's URL; the review branch on a real loopback
//! git remote (smart HTTP) holds exactly the change, authored by the user; the
//! loopback forge saw one valid "create pull request" call; once the pull request
//! is merged (on the forge and in git), the next poll records it as merged.

use crate::common::forge_server::{ForgeServer, PROJECT};
use crate::common::remotes::SmartHttp;
use crate::envtest::scribe::git;
use crate::envtest::{ControlPlane, Kubescribe, Obj, ALICE};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_under_review_is_denied_with_a_pull_request_applied_once_merged() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("review");
    let http = SmartHttp::start();
    let dir = tempfile::tempdir().unwrap();
    crate::common::remotes::seed_main(&http.repo(), dir.path());
    let forge = ForgeServer::start("github", "e2e-forge-token").await;
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{}\n", SmartHttp::password())).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "e2e-forge-token\n").unwrap();
    let config = format!(
        "repository:\n  remote:\n    url: {url}\n    username: {user}\n    passwordFile: {password}\nrules:\n- name: e2e\n  namespaces: [{ns}]\n  wait: push\n  then: deny\n  review:\n    forge: github\n    api: {api}\n    project: {PROJECT}\n    tokenFile: {token}\n    pollInterval: 1s\n",
        url = http.url(),
        user = SmartHttp::username(),
        password = password.display(),
        api = forge.api(),
        token = token.display(),
    );
    let scribe = Kubescribe::start(plane, "review", &config);
    scribe.await_webhook(&ns);
    let main_before = git(&http.repo(), &["rev-parse", "main"]);

    // A server-side dry run says what would be proposed, and proposes nothing.
    let out = scribe.kubectl(
        ALICE,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            &ns,
            "--from-literal=mode=fast",
            "--dry-run=server",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("would propose"), "{}", stderr(&out));
    assert!(forge.seen().is_empty(), "a dry run calls no API");

    let out = scribe.kubectl(
        ALICE,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            &ns,
            "--from-literal=mode=fast",
        ],
        None,
    );
    let said = stderr(&out);
    assert!(!out.status.success(), "denied: {said}");
    assert!(
        said.contains("/team/apps/pull/1"),
        "kubectl shows the URL: {said}\n{}",
        scribe.log()
    );
    assert!(said.contains("once the pull request is merged"), "{said}");
    // Not applied: the cluster changes only through GitOps.
    let get = scribe.kubectl(ALICE, &["get", "configmap", "settings", "-n", &ns], None);
    assert!(!get.status.success(), "the configmap was not created");

    // The review branch holds exactly the change, by alice, on top of main.
    let branches = git(
        &http.repo(),
        &[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/kubescribe/",
        ],
    );
    let branch = branches.trim();
    assert!(
        branch.starts_with("kubescribe/alice-example.com/"),
        "{branches}"
    );
    assert_eq!(
        git(&http.repo(), &["rev-parse", "main"]),
        main_before,
        "main is untouched"
    );
    let range = format!("main..{branch}");
    assert_eq!(
        git(&http.repo(), &["log", "--format=%an", &range]).trim(),
        "alice@example.com"
    );
    let path = Obj::namespaced("v1", "configmaps", &ns, "settings").path();
    assert_eq!(
        git(&http.repo(), &["diff", "--name-status", "main", branch]).trim(),
        format!("A\t{path}")
    );
    let file = git(&http.repo(), &["show", &format!("{branch}:{path}")]);
    assert!(file.contains("mode: fast"), "{file}");

    let creates = forge.calls("pulls/create");
    assert_eq!(creates.len(), 1, "one create call");
    let body = creates[0].body.clone().unwrap();
    assert_eq!(body["head"], branch);
    assert_eq!(body["base"], "main");
    assert_eq!(
        forge.problems(),
        Vec::<String>::new(),
        "every request matched GitHub's description"
    );

    // A person merges it: the forge says so, and git's main is the branch.
    let tip = git(&http.repo(), &["rev-parse", branch]).trim().to_owned();
    git(&http.repo(), &["update-ref", "refs/heads/main", &tip]);
    forge.merge(1, &tip);
    crate::common::eventually(
        std::time::Duration::from_secs(30),
        "the merge is recorded and its branch deleted",
        || {
            scribe.metric("kubescribe_reviews_outcomes_total{rule=\"e2e\",outcome=\"merged\"}")
                == Some(1.0)
                && git(&http.repo(), &["for-each-ref", "refs/heads/kubescribe/"])
                    .trim()
                    .is_empty()
        },
    )
    .await;
    assert!(
        git(&http.repo(), &["for-each-ref", "refs/heads/kubescribe/"])
            .trim()
            .is_empty(),
        "the merged branch is deleted"
    );
    assert_eq!(
        scribe.metric("kubescribe_reviews_open{rule=\"e2e\"}"),
        Some(0.0)
    );
    assert_eq!(forge.problems(), Vec::<String>::new());
}
