//! What kubectl's verbs send, recorded: every file equals the sanitised live object,
//! every commit is authored by the user who ran kubectl, and a write that changes
//! nothing makes no commit.

use crate::envtest::{assert_git_matches_cluster, ControlPlane, Kubescribe, Obj, ALICE, BOB, CI};

/// Records every write in `namespace`, each answer held until its commit is durable,
/// so a file can be read the moment kubectl returns.
fn commit_rule(namespace: &str) -> String {
    format!("rules:\n- name: e2e\n  namespaces: [{namespace}]\n  wait: commit\n")
}

/// The author of the last commit that touched `path`.
fn author_of(scribe: &Kubescribe, path: &str) -> String {
    scribe
        .git(&["log", "-1", "--format=%an", "main", "--", path])
        .trim()
        .to_owned()
}

pub(crate) fn ok(
    scribe: &Kubescribe,
    user: crate::envtest::plane::User,
    args: &[&str],
    stdin: Option<&str>,
) -> String {
    let out = scribe.kubectl(user, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}\nkubescribe log:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        scribe.log()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn deployment(ns: &str, image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  labels:
    app: web
    tier: frontend
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: {image}
        ports:
        - containerPort: 8080
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_verbs_become_commits_by_their_users() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("verbs");
    let scribe = Kubescribe::start(plane, "verbs", &commit_rule(&ns));
    scribe.await_webhook(&ns);
    let n = ns.as_str();

    // create, by a person
    let said = ok(
        &scribe,
        ALICE,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            n,
            "--from-literal=color=blue",
        ],
        None,
    );
    assert!(
        said.contains("recorded "),
        "kubectl shows kubescribe's warning: {said}"
    );
    let settings = Obj::namespaced("v1", "configmaps", n, "settings");
    assert_eq!(author_of(&scribe, &settings.path()), "alice@example.com");

    // apply, apply with a change, apply unchanged (kubectl sends nothing, no commit)
    ok(
        &scribe,
        ALICE,
        &["apply", "-f", "-"],
        Some(&deployment(n, "nginx:1.25", 2)),
    );
    let web = Obj::namespaced("apps/v1", "deployments", n, "web");
    let created = scribe.file(&web.path()).expect("the Deployment's file");
    assert!(created.contains("image: nginx:1.25"), "{created}");
    assert!(!created.contains("last-applied-configuration"), "{created}");
    ok(
        &scribe,
        BOB,
        &["apply", "-f", "-"],
        Some(&deployment(n, "nginx:1.26", 2)),
    );
    assert!(scribe
        .file(&web.path())
        .unwrap()
        .contains("image: nginx:1.26"));
    assert_eq!(author_of(&scribe, &web.path()), "bob");
    let before = scribe.commit_count();
    ok(
        &scribe,
        BOB,
        &["apply", "-f", "-"],
        Some(&deployment(n, "nginx:1.26", 2)),
    );
    assert_eq!(
        scribe.commit_count(),
        before,
        "an unchanged apply makes no commit"
    );

    // replace with the same object: an UPDATE that changes nothing, no commit
    let live = ok_stdout(
        &scribe,
        &["get", "deployment", "web", "-n", n, "-o", "yaml"],
    );
    let said = ok(&scribe, ALICE, &["replace", "-f", "-"], Some(&live));
    assert_eq!(
        scribe.commit_count(),
        before,
        "a no-op replace makes no commit"
    );
    assert!(said.contains("unchanged "), "{said}");

    // the three patch types, label, annotate
    ok(
        &scribe,
        ALICE,
        &[
            "patch",
            "deployment",
            "web",
            "-n",
            n,
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"MODE","value":"strategic"}]}]}}}}"#,
        ],
        None,
    );
    ok(
        &scribe,
        ALICE,
        &[
            "patch",
            "configmap",
            "settings",
            "-n",
            n,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"size":"large"}}"#,
        ],
        None,
    );
    ok(
        &scribe,
        ALICE,
        &[
            "patch",
            "configmap",
            "settings",
            "-n",
            n,
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/data/color","value":"green"}]"#,
        ],
        None,
    );
    ok(
        &scribe,
        BOB,
        &["label", "configmap", "settings", "-n", n, "team=payments"],
        None,
    );
    ok(
        &scribe,
        BOB,
        &["annotate", "deployment", "web", "-n", n, "owner=payments"],
        None,
    );
    let text = scribe.file(&settings.path()).unwrap();
    assert!(
        text.contains("color: green")
            && text.contains("size: large")
            && text.contains("team: payments"),
        "{text}"
    );
    assert_eq!(author_of(&scribe, &settings.path()), "bob");

    // scale (the scale subresource edits spec.replicas in the Deployment's file) and
    // set image, by CI's service account
    let said = ok(
        &scribe,
        CI,
        &["scale", "deployment", "web", "-n", n, "--replicas=5"],
        None,
    );
    assert!(said.contains("recorded "), "{said}");
    assert!(scribe.file(&web.path()).unwrap().contains("replicas: 5"));
    ok(
        &scribe,
        CI,
        &["set", "image", "deployment/web", "-n", n, "web=nginx:1.27"],
        None,
    );
    assert_eq!(
        author_of(&scribe, &web.path()),
        "system:serviceaccount:ci:deployer"
    );
    let log = scribe.git(&["log", "--format=%B", "main", "--", &web.path()]);
    assert!(log.contains("Scaled spec.replicas from 2 to 5."), "{log}");

    // a Service (server-assigned cluster IP left out), then deletes: by name, and by
    // label selector
    ok(
        &scribe,
        CI,
        &[
            "create",
            "service",
            "clusterip",
            "web",
            "-n",
            n,
            "--tcp=80:8080",
        ],
        None,
    );
    let service = Obj::namespaced("v1", "services", n, "web");
    let text = scribe.file(&service.path()).expect("the Service's file");
    assert!(!text.contains("clusterIP:"), "{text}");
    for name in ["a", "b"] {
        ok(
            &scribe,
            ALICE,
            &[
                "create",
                "configmap",
                &format!("temp-{name}"),
                "-n",
                n,
                "--from-literal=x=1",
            ],
            None,
        );
        ok(
            &scribe,
            ALICE,
            &[
                "label",
                "configmap",
                &format!("temp-{name}"),
                "-n",
                n,
                "scratch=yes",
            ],
            None,
        );
    }
    let temp_a = Obj::namespaced("v1", "configmaps", n, "temp-a");
    let temp_b = Obj::namespaced("v1", "configmaps", n, "temp-b");
    assert!(scribe.file(&temp_a.path()).is_some());
    ok(
        &scribe,
        BOB,
        &["delete", "configmap", "-n", n, "-l", "scratch=yes"],
        None,
    );
    ok(&scribe, CI, &["delete", "service", "web", "-n", n], None);
    let log = scribe.git(&["log", "-3", "--format=%an %s", "main"]);
    assert!(
        log.lines()
            .any(|l| l.starts_with("bob delete v1 ConfigMap")),
        "{log}"
    );

    // A pod's stdout is no terminal: its log has no colour codes (it had, once).
    assert!(
        !scribe.full_log().contains('\u{1b}'),
        "escape codes in the log"
    );

    let client = plane.client(crate::envtest::ADMIN).await;
    assert_git_matches_cluster(
        &scribe.repo,
        "main",
        &client,
        &[settings, web, service, temp_a, temp_b],
    )
    .await;
}

fn ok_stdout(scribe: &Kubescribe, args: &[&str]) -> String {
    let out = scribe.kubectl(crate::envtest::ADMIN, args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_is_answered_and_records_nothing() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("dry");
    let scribe = Kubescribe::start(plane, "dry", &commit_rule(&ns));
    scribe.await_webhook(&ns);
    let before = scribe.commit_count();
    let out = scribe.kubectl(
        ALICE,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&deployment(&ns, "nginx:1.25", 1)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = Obj::namespaced("apps/v1", "deployments", &ns, "web").path();
    assert!(
        stderr.contains(&format!(
            "Warning: kubescribe: dry run: would record {path}"
        )),
        "kubectl shows the dry run's verdict: {stderr}"
    );
    assert_eq!(scribe.commit_count(), before, "a dry run commits nothing");
    assert!(scribe.file(&path).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_names_are_recorded_under_the_name_the_apiserver_chose() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("gen");
    let scribe = Kubescribe::start(plane, "gen", &commit_rule(&ns));
    scribe.await_webhook(&ns);
    let out = scribe.kubectl(
        ALICE,
        &["create", "-o", "jsonpath={.metadata.name}", "-f", "-"],
        Some(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: job-config-\n  namespace: {ns}\ndata:\n  a: \"1\"\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = String::from_utf8(out.stdout).unwrap();
    assert!(
        name.starts_with("job-config-") && name.len() > "job-config-".len(),
        "{name}"
    );
    let obj = Obj::namespaced("v1", "configmaps", &ns, &name);
    let text = scribe
        .file(&obj.path())
        .expect("recorded under the generated name");
    assert!(!text.contains("generateName"), "{text}");
    let client = plane.client(crate::envtest::ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[obj]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_and_forced_replace_are_recorded_as_the_cluster_keeps_them() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("ssa");
    let n = ns.as_str();
    let scribe = Kubescribe::start(plane, "ssa", &commit_rule(n));
    scribe.await_webhook(n);

    // Server-side apply: the apiserver merges and keeps managedFields, which never
    // reach git.
    ok(
        &scribe,
        ALICE,
        &[
            "apply",
            "--server-side",
            "--field-manager=alice-cli",
            "-f",
            "-",
        ],
        Some(&deployment(n, "nginx:1.25", 1)),
    );
    let web = Obj::namespaced("apps/v1", "deployments", n, "web");
    let text = scribe.file(&web.path()).expect("the Deployment's file");
    assert!(
        !text.contains("managedFields") && !text.contains("alice-cli"),
        "{text}"
    );
    // A second manager takes over the image with force-conflicts.
    let mut image_only = deployment(n, "nginx:1.26", 1);
    image_only = image_only.replace("  replicas: 1\n", "");
    ok(
        &scribe,
        CI,
        &[
            "apply",
            "--server-side",
            "--field-manager=ci",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&image_only),
    );
    assert_eq!(
        author_of(&scribe, &web.path()),
        "system:serviceaccount:ci:deployer"
    );
    assert!(scribe
        .file(&web.path())
        .unwrap()
        .contains("image: nginx:1.26"));

    // replace --force is a delete and a create: two commits, the file back at the end.
    ok(
        &scribe,
        ALICE,
        &[
            "create",
            "configmap",
            "forced",
            "-n",
            n,
            "--from-literal=v=1",
        ],
        None,
    );
    let forced = Obj::namespaced("v1", "configmaps", n, "forced");
    let before = scribe.commit_count();
    let replacement = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: forced\n  namespace: {n}\ndata:\n  v: \"2\"\n");
    ok(
        &scribe,
        BOB,
        &["replace", "--force", "-f", "-"],
        Some(&replacement),
    );
    assert_eq!(
        scribe.commit_count(),
        before + 2,
        "{}",
        scribe.git(&["log", "-3", "--format=%an %s", "main"])
    );
    let log = scribe.git(&["log", "-2", "--format=%an %s", "main"]);
    assert!(
        log.starts_with("bob create v1 ConfigMap") && log.contains("bob delete v1 ConfigMap"),
        "{log}"
    );

    let client = plane.client(crate::envtest::ADMIN).await;
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[web, forced]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_stamps_live_objects_through_the_mutating_webhook_and_never_records_the_stamp() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("stamp");
    let n = ns.as_str();
    let scribe = Kubescribe::start(
        plane,
        "stamp",
        &format!("annotate: true\n{}", commit_rule(n)),
    );
    let rendered = std::fs::read_to_string(scribe.dir.join("webhooks.yaml")).unwrap();
    assert!(
        rendered.contains("kind: MutatingWebhookConfiguration"),
        "{rendered}"
    );
    scribe.await_webhook(n);

    ok(
        &scribe,
        ALICE,
        &[
            "create",
            "configmap",
            "stamped",
            "-n",
            n,
            "--from-literal=v=1",
        ],
        None,
    );
    let stamped = Obj::namespaced("v1", "configmaps", n, "stamped");
    let client = plane.client(crate::envtest::ADMIN).await;
    let live = crate::envtest::fidelity::live(&client, &stamped, "v1")
        .await
        .expect("created");
    let annotations = &live["metadata"]["annotations"];
    assert_eq!(
        annotations["kubescribe.io/git-path"],
        stamped.path(),
        "{live}"
    );
    assert_eq!(
        annotations["kubescribe.io/git-repo"],
        scribe.repo.display().to_string(),
        "{live}"
    );
    let text = scribe.file(&stamped.path()).unwrap();
    assert!(
        !text.contains("kubescribe.io/"),
        "the stamp never reaches git: {text}"
    );
    // An update keeps the stamp (the patch is idempotent) and changes only the data.
    ok(
        &scribe,
        BOB,
        &[
            "patch",
            "configmap",
            "stamped",
            "-n",
            n,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"v":"2"}}"#,
        ],
        None,
    );
    assert_git_matches_cluster(&scribe.repo, "main", &client, &[stamped]).await;
}
