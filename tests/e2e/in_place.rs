//! `repository.inPlace` under the real apiserver: the branch starts as
//! stefanprodan/podinfo as its author keeps it, kubectl applies its `kustomize/`
//! documents as a GitOps tool would, and what people then do with kubectl becomes
//! edits of those documents: `kubectl set image` is one changed line, a new object
//! gets its own file and kustomization entry, a delete takes the file and the entry,
//! nothing is ever written a second time at the path template's place, and the
//! edited files applied again change nothing in the cluster.

use std::path::Path;

use crate::common::gitops::{change_of, checkout, seeded_fixture, Change};
use crate::envtest::scribe::{file_at, git};
use crate::envtest::{ControlPlane, Kubescribe, ALICE};
use serde_json::Value;

/// kubectl as alice; fails the test if kubectl does.
fn ok(scribe: &Kubescribe, args: &[&str]) -> String {
    crate::kubectl::ok(scribe, ALICE, args, None)
}

fn commits(repo: &Path) -> usize {
    git(repo, &["rev-list", "--count", "main"])
        .trim()
        .parse()
        .unwrap()
}

/// The last commit's change, after checking that it is alice's and the only new
/// one since `before` commits.
fn alice_s_commit(repo: &Path, before: usize) -> Change {
    assert_eq!(commits(repo), before + 1, "one commit for the write");
    assert_eq!(
        git(repo, &["log", "-1", "--format=%an", "main"]).trim(),
        "alice@example.com",
        "authored by the user who ran kubectl"
    );
    change_of(repo, "main")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_writes_become_edits_of_the_files_a_team_keeps() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("in-place");
    let (dir, repo) = seeded_fixture("stefanprodan__podinfo");
    let config = format!(
        "repository:\n  path: {}\n  inPlace:\n    enabled: true\n    namespaces:\n      kustomize: {ns}\nrules:\n- name: e2e\n  namespaces: [{ns}]\n  wait: commit\n",
        repo.display()
    );
    let scribe = Kubescribe::start(plane, "in-place", &config);
    scribe.await_webhook(&ns);
    let fixture = crate::common::gitops::real_repository("stefanprodan__podinfo");

    // What the GitOps tool applies from the branch is already declared there:
    // admitted, and no commit. (The HPA is autoscaling/v2, which this 1.20
    // apiserver does not serve.)
    for file in ["deployment.yaml", "service.yaml"] {
        let path = fixture.join("kustomize").join(file);
        let said = ok(&scribe, &["apply", "-n", &ns, "-f", path.to_str().unwrap()]);
        assert!(
            said.contains(&format!("is already declared in kustomize/{file}")),
            "kubectl shows where the object is declared: {said}"
        );
    }
    assert_eq!(commits(&repo), 1, "applying the branch records nothing");

    // An image change is the one line that holds the image.
    let before = commits(&repo);
    ok(
        &scribe,
        &[
            "set",
            "image",
            "-n",
            &ns,
            "deployment/podinfo",
            "podinfod=ghcr.io/stefanprodan/podinfo:6.15.0",
        ],
    );
    let change = alice_s_commit(&repo, before);
    assert_eq!(change.files, ["kustomize/deployment.yaml"]);
    assert_eq!(
        change.removed,
        ["        image: ghcr.io/stefanprodan/podinfo:6.14.1"]
    );
    assert_eq!(
        change.added,
        ["        image: ghcr.io/stefanprodan/podinfo:6.15.0"]
    );

    // A new environment variable is two lines in the container's `env`, after
    // the one the author wrote.
    let before = commits(&repo);
    ok(
        &scribe,
        &[
            "set",
            "env",
            "-n",
            &ns,
            "deployment/podinfo",
            "PODINFO_UI_MESSAGE=from kubectl",
        ],
    );
    let change = alice_s_commit(&repo, before);
    assert_eq!(change.files, ["kustomize/deployment.yaml"]);
    assert!(change.removed.is_empty(), "{:?}", change.removed);
    assert_eq!(
        change.added,
        [
            "        - name: PODINFO_UI_MESSAGE",
            "          value: from kubectl"
        ]
    );

    // A scale through the subresource sets spec.replicas in the document,
    // which the author left to the HPA's minimum: one added line.
    let before = commits(&repo);
    ok(
        &scribe,
        &["scale", "-n", &ns, "deployment/podinfo", "--replicas=3"],
    );
    let change = alice_s_commit(&repo, before);
    assert_eq!(change.files, ["kustomize/deployment.yaml"]);
    assert_eq!(change.added, ["  replicas: 3"]);
    assert!(change.removed.is_empty(), "{:?}", change.removed);

    // A new object goes beside the namespace's other objects and into the
    // kustomization's resources, so the GitOps tool picks it up.
    let before = commits(&repo);
    ok(
        &scribe,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            &ns,
            "--from-literal=color=blue",
        ],
    );
    let change = alice_s_commit(&repo, before);
    assert_eq!(
        change.files,
        [
            "kustomize/kustomization.yaml",
            "kustomize/settings-configmap.yaml"
        ]
    );
    let kustomization = file_at(&repo, "main", "kustomize/kustomization.yaml").unwrap();
    assert!(
        kustomization.ends_with("  - service.yaml\n  - settings-configmap.yaml\n"),
        "{kustomization}"
    );

    // A delete takes the document; it was the file's only one, so the file and
    // its kustomization entry go too.
    let before = commits(&repo);
    ok(&scribe, &["delete", "-n", &ns, "service/podinfo"]);
    let change = alice_s_commit(&repo, before);
    assert_eq!(
        change.files,
        ["kustomize/kustomization.yaml", "kustomize/service.yaml"]
    );
    assert!(file_at(&repo, "main", "kustomize/service.yaml").is_none());
    assert!(!file_at(&repo, "main", "kustomize/kustomization.yaml")
        .unwrap()
        .contains("service.yaml"));

    // Nothing went where the path template would have put it.
    let tracked = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        !tracked
            .lines()
            .any(|path| path.starts_with(&format!("{ns}/"))),
        "no object written a second time: {tracked}"
    );

    // Every field the edited documents declare has the cluster's value, so the
    // GitOps tool applying them again changes nothing.
    let work = dir.path().join("after");
    checkout(&repo, &work);
    for (file, object) in [
        ("deployment.yaml", "deployment/podinfo"),
        ("settings-configmap.yaml", "configmap/settings"),
    ] {
        let text = std::fs::read_to_string(work.join("kustomize").join(file)).unwrap();
        let declared: Value = serde_yaml_ng::from_str(&text).unwrap();
        let live: Value = serde_json::from_str(&plane.kubectl_ok(
            ALICE,
            &["get", "-n", &ns, object, "-o", "json"],
            None,
        ))
        .unwrap();
        if let Some(path) = differs(&declared, &live, String::new()) {
            panic!(
                "kustomize/{file} says {path} is {}, the cluster {}:\n{text}",
                pointer(&declared, &path),
                pointer(&live, &path)
            );
        }
    }
}

/// The first path at which `declared` says something `live` does not hold: a
/// mapping's keys must all be there, a list must match element by element.
fn differs(declared: &Value, live: &Value, at: String) -> Option<String> {
    match (declared, live) {
        (Value::Object(declared), Value::Object(live)) => {
            declared.iter().find_map(|(key, value)| {
                let at = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match live.get(key) {
                    Some(live) => differs(value, live, at),
                    None => Some(at),
                }
            })
        }
        (Value::Array(declared), Value::Array(live)) if declared.len() == live.len() => declared
            .iter()
            .zip(live)
            .enumerate()
            .find_map(|(i, (declared, live))| differs(declared, live, format!("{at}/{i}"))),
        // The apiserver writes quantities its canonical way ("2000m" is "2").
        (Value::String(declared), Value::String(live))
            if quantity(declared).is_some() && quantity(declared) == quantity(live) =>
        {
            None
        }
        _ => (declared != live).then_some(at),
    }
}

/// A resource quantity's value (`500m`, `2`, `64Mi`), if the text is one.
fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

fn pointer(value: &Value, path: &str) -> String {
    value
        .pointer(path)
        .map_or("absent".to_owned(), Value::to_string)
}
