//! In-place edits of the documents people maintain (issue 15), on the real GitOps
//! repositories in tests/fixtures/repos/ as their authors wrote them: an edit changes
//! the lines of the changed fields and nothing else, comments and the other documents
//! of a file stay byte for byte, and random edits of every document parse back to
//! exactly the intended object.

use std::path::Path;

use kubescribe::declared::edit::{self, Edited, Op};
use serde::Deserialize;
use serde_json::{json, Value};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/repos")
            .join(path),
    )
    .unwrap()
}

fn documents(bytes: &[u8]) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_slice(bytes)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// Edits document `document` of `file` so it becomes what `change` makes of it.
fn edit(file: &[u8], document: usize, change: impl FnOnce(&mut Value)) -> (Vec<u8>, Value) {
    let old = documents(file)[document].clone();
    let mut new = old.clone();
    change(&mut new);
    let ops = edit::diff(&old, &new);
    let Edited { bytes, rewritten } = edit::update(file, document, &ops, &old, &new).unwrap();
    assert!(!rewritten, "edited in place");
    let bytes = bytes.unwrap();
    assert_eq!(documents(&bytes)[document], new, "the edit parses back");
    (bytes, new)
}

/// The lines `before` has and `after` has not, and the other way round.
fn changed_lines(before: &[u8], after: &[u8]) -> (Vec<String>, Vec<String>) {
    let before = std::str::from_utf8(before).unwrap();
    let after = std::str::from_utf8(after).unwrap();
    let diff = similar::TextDiff::from_lines(before, after);
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Delete => removed.push(change.value().to_owned()),
            similar::ChangeTag::Insert => added.push(change.value().to_owned()),
            similar::ChangeTag::Equal => {}
        }
    }
    (removed, added)
}

const BACKEND: &str = "stefanprodan__podinfo/deploy/bases/backend/deployment.yaml";

#[test]
fn an_image_change_is_one_line() {
    let file = fixture(BACKEND);
    let (after, _) = edit(&file, 0, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] =
            json!("ghcr.io/stefanprodan/podinfo:6.15.0");
    });
    let (removed, added) = changed_lines(&file, &after);
    assert_eq!(
        removed,
        ["        image: ghcr.io/stefanprodan/podinfo:6.14.1\n"]
    );
    assert_eq!(
        added,
        ["        image: ghcr.io/stefanprodan/podinfo:6.15.0\n"]
    );
}

#[test]
fn a_quoted_value_keeps_its_quotes() {
    let file = fixture(BACKEND);
    let text = std::str::from_utf8(&file).unwrap();
    assert!(text.contains("prometheus.io/scrape: \"true\""));
    let (after, _) = edit(&file, 0, |d| {
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = json!("9898");
    });
    let (removed, added) = changed_lines(&file, &after);
    assert_eq!(removed, ["        prometheus.io/port: \"9797\"\n"]);
    assert_eq!(added, ["        prometheus.io/port: \"9898\"\n"]);
}

#[test]
fn a_new_env_var_is_added_by_name_and_the_others_stay() {
    let file = fixture(BACKEND);
    let (after, _) = edit(&file, 0, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "LOG_FORMAT", "value": "json"}));
    });
    let (removed, added) = changed_lines(&file, &after);
    assert!(removed.is_empty(), "nothing removed: {removed:?}");
    assert_eq!(added.len(), 2, "two lines added: {added:?}");
    assert!(added[0].contains("name: LOG_FORMAT"), "{added:?}");
    assert!(added[1].contains("value: json"), "{added:?}");
}

#[test]
fn replicas_labels_and_a_removed_field_touch_only_their_lines() {
    let file = fixture(BACKEND);
    let (after, _) = edit(&file, 0, |d| {
        d["spec"]["minReadySeconds"] = json!(10);
        d["metadata"]["labels"] = json!({"team": "payments"});
        d["spec"]
            .as_object_mut()
            .unwrap()
            .remove("revisionHistoryLimit");
    });
    let (removed, added) = changed_lines(&file, &after);
    assert_eq!(
        removed,
        ["  minReadySeconds: 3\n", "  revisionHistoryLimit: 5\n"]
    );
    assert_eq!(
        added,
        [
            "  labels:\n",
            "    team: payments\n",
            "  minReadySeconds: 10\n"
        ]
    );
}

#[test]
fn comments_and_the_other_documents_stay_byte_for_byte() {
    // A file of several documents with comments between them.
    let path = "fluxcd__flux2-kustomize-helm-example/infrastructure/controllers/cert-manager.yaml";
    let file = fixture(path);
    let docs = documents(&file);
    assert!(docs.len() >= 3, "{path} has several documents");
    let comments: Vec<&str> = std::str::from_utf8(&file)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    let last = docs.len() - 1;
    let (after, _) = edit(&file, last, |d| {
        d["metadata"]["labels"] = json!({"edited": "yes"});
    });
    let text = std::str::from_utf8(&after).unwrap();
    for comment in &comments {
        assert!(text.contains(comment), "{comment:?} kept");
    }
    let (removed, added) = changed_lines(&file, &after);
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(added, ["  labels:\n", "    edited: 'yes'\n"]);
    for (at, doc) in documents(&after).iter().enumerate().take(last) {
        assert_eq!(doc, &docs[at]);
    }
}

#[test]
fn crlf_files_keep_their_line_endings() {
    let file = fixture(BACKEND);
    let crlf = String::from_utf8(file)
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    let (after, _) = edit(&crlf, 0, |d| {
        d["spec"]["minReadySeconds"] = json!(7);
        d["metadata"]["annotations"] = json!({"a": "b"});
    });
    let text = String::from_utf8(after).unwrap();
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "every line ends in CRLF"
    );
    assert!(text.contains("  minReadySeconds: 7\r\n"));
}

#[test]
fn a_delete_takes_out_the_document_and_the_file_with_its_last() {
    let path = "fluxcd__flux2-kustomize-helm-example/infrastructure/controllers/cert-manager.yaml";
    let file = fixture(path);
    let docs = documents(&file);
    for document in 0..docs.len() {
        let Edited { bytes, rewritten } = edit::remove(&file, document).unwrap();
        assert!(!rewritten);
        let left = documents(&bytes.unwrap());
        let mut expected = docs.clone();
        expected.remove(document);
        let left: Vec<Value> = left.into_iter().filter(|d| !d.is_null()).collect();
        assert_eq!(left, expected, "document {document} removed");
    }
    let single = fixture(BACKEND);
    assert_eq!(
        edit::remove(&single, 0).unwrap().bytes,
        None,
        "the file goes"
    );
    assert!(edit::remove(&single, 1).is_err(), "no such document");
}

#[test]
fn an_unchanged_object_leaves_the_file_as_it_is() {
    let file = fixture(BACKEND);
    let old = documents(&file)[0].clone();
    let Edited { bytes, .. } = edit::update(&file, 0, &edit::diff(&old, &old), &old, &old).unwrap();
    assert_eq!(bytes.unwrap(), file);
}

#[test]
fn the_diff_names_list_elements_by_name() {
    let old = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]});
    let new = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]});
    let ops = edit::diff(&old, &new);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(matches!(&ops[0], Op::Set(path, v) if path.len() == 3 && v == "3"));
    // The document has the elements in another order: each is found by name.
    let file =
        b"env:\n- name: B # second in the cluster\n  value: \"2\"\n- name: A\n  value: \"1\"\n";
    let Edited { bytes, .. } = edit::update(file, 0, &ops, &old, &new).unwrap();
    let text = String::from_utf8(bytes.unwrap()).unwrap();
    assert_eq!(
        text,
        "env:\n- name: B # second in the cluster\n  value: \"3\"\n- name: A\n  value: \"1\"\n- name: C\n  value: \"4\"\n"
    );
}

/// A small deterministic generator: the same edits every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every path to a value in `value`, parents first.
fn paths(value: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                at.push(json!(key));
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                at.push(json!(index));
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'v>(value: &'v mut Value, path: &[Value]) -> &'v mut Value {
    path.iter().fold(value, |v, step| match step {
        Value::String(key) => &mut v[key.as_str()],
        Value::Number(n) => &mut v[n.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Values that are easy to get wrong in YAML.
fn tricky(rng: &mut Rng) -> Value {
    let choices = [
        json!("yes"),
        json!("on"),
        json!("123"),
        json!("1.5"),
        json!("null"),
        json!("~"),
        json!(""),
        json!("a: b"),
        json!("#not a comment"),
        json!("it's"),
        json!("say \"hi\""),
        json!("two\nlines\n"),
        json!("  leading space"),
        json!("tab\there"),
        json!("ünïcödé"),
        json!("- dash"),
        json!("--port=80"),
        json!("1:20"),
        json!("0x1F"),
        json!("Yes"),
        json!("OFF"),
        json!("-1"),
        json!(".5"),
        json!("+1"),
        json!("-"),
        json!("a:b"),
        json!("url:http://x"),
        json!("%percent"),
        json!(",comma"),
        json!("*star"),
        json!("@at"),
        json!(42),
        json!(-7),
        json!(2.5),
        json!(true),
        json!(null),
        json!({}),
        json!([]),
        json!({"nested": {"deeper": ["x", 1, false]}}),
        json!([{"name": "n1", "value": "v"}, {"name": "n2"}]),
        json!(["a", "b"]),
    ];
    choices[rng.below(choices.len())].clone()
}

/// One random change of `doc`.
fn mutate(doc: &mut Value, rng: &mut Rng) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = all[rng.below(all.len())].clone();
    let target = get_mut(doc, &path);
    match (rng.below(4), target) {
        (0, Value::Object(map)) => {
            map.insert(format!("added{}", rng.below(100)), tricky(rng));
        }
        (1, Value::Object(map)) if !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
            map.remove(&key);
        }
        (2, Value::Array(items)) => {
            if items.iter().all(|i| i.get("name").is_some()) && !items.is_empty() {
                items.push(json!({"name": format!("new{}", rng.below(1000)), "value": "x"}));
            } else if !items.is_empty() {
                let at = rng.below(items.len());
                items.remove(at);
            } else {
                items.push(tricky(rng));
            }
        }
        (_, target) if !path.is_empty() => *target = tricky(rng),
        _ => {}
    }
}

/// Every YAML file of the fixture repositories that holds Kubernetes objects.
fn manifests() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repos");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // Helm templates are not YAML until rendered.
                if !path.ends_with("templates") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let bytes = std::fs::read(&path).unwrap();
                let parsed: Result<Vec<Value>, _> = serde_yaml_ng::Deserializer::from_slice(&bytes)
                    .map(Value::deserialize)
                    .collect();
                if parsed.is_ok_and(|docs| docs.iter().any(|d| d.get("kind").is_some())) {
                    let name = path.strip_prefix(&root).unwrap().display().to_string();
                    out.push((name, bytes));
                }
            }
        }
    }
    out.sort();
    assert!(out.len() > 50, "the fixtures have their manifests");
    out
}

#[test]
fn random_edits_of_every_document_parse_back_exactly_and_leave_the_rest() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut edits = 0;
    let mut rewritten = Vec::new();
    for (name, file) in manifests() {
        let docs = documents(&file);
        for (document, old) in docs.iter().enumerate() {
            if !old.is_object() {
                continue;
            }
            for round in 0..8 {
                let mut new = old.clone();
                for _ in 0..=rng.below(3) {
                    mutate(&mut new, &mut rng);
                }
                let ops = edit::diff(old, &new);
                let result = edit::update(&file, document, &ops, old, &new)
                    .unwrap_or_else(|e| panic!("{name} #{document} round {round}: {e}"));
                let bytes = result.bytes.unwrap();
                let after = documents(&bytes);
                assert_eq!(after.len(), docs.len(), "{name}: the documents stay");
                for (at, doc) in after.iter().enumerate() {
                    let expected = if at == document { &new } else { &docs[at] };
                    assert_eq!(
                        doc, expected,
                        "{name} #{at} after editing #{document}: {ops:?}"
                    );
                }
                if result.rewritten {
                    rewritten.push(format!("{name} #{document}: {ops:?}"));
                }
                // The lines before the document are the file's own.
                let text = std::str::from_utf8(&file).unwrap();
                let edited = std::str::from_utf8(&bytes).unwrap();
                let common = text
                    .lines()
                    .zip(edited.lines())
                    .take_while(|(a, b)| a == b)
                    .count();
                assert!(common > 0 || document == 0 || text.lines().next().is_none());
                edits += 1;
            }
        }
    }
    eprintln!("{edits} edits tried");
    assert!(edits > 400, "{edits} edits tried");
    assert!(
        rewritten.is_empty(),
        "{} of {edits} edits could not be made in place:\n{}",
        rewritten.len(),
        rewritten.join("\n")
    );
}

#[test]
fn a_kustomization_lists_and_unlists_files_in_its_own_style() {
    let file = b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n# the app\nresources:\n  - ./hpa.yaml\n  - deployment.yaml\n";
    let added = edit::enlist(file, "apps/web", "apps/web/flags-configmap.yaml").unwrap();
    assert_eq!(
        String::from_utf8(added.clone()).unwrap(),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n# the app\nresources:\n  - ./hpa.yaml\n  - deployment.yaml\n  - flags-configmap.yaml\n"
    );
    // `./hpa.yaml` names apps/web/hpa.yaml as well.
    let removed = edit::unlist(&added, "apps/web", "apps/web/hpa.yaml").unwrap();
    assert_eq!(
        String::from_utf8(removed).unwrap(),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n# the app\nresources:\n  - deployment.yaml\n  - flags-configmap.yaml\n"
    );
    assert_eq!(edit::unlist(file, "apps/web", "apps/web/other.yaml"), None);
    // A file outside the directory is named the way kustomize reaches it.
    let up = edit::enlist(file, "apps/web/overlay", "apps/web/new.yaml").unwrap();
    assert!(String::from_utf8(up)
        .unwrap()
        .ends_with("  - ../new.yaml\n"));
    // No `resources:` yet: one is added.
    let bare = edit::enlist(b"kind: Kustomization\nnamespace: a\n", "", "x.yaml").unwrap();
    let parsed: Value = serde_yaml_ng::from_slice(&bare).unwrap();
    assert_eq!(parsed["resources"], json!(["x.yaml"]));
    assert!(String::from_utf8(bare)
        .unwrap()
        .starts_with("kind: Kustomization\nnamespace: a\n"));
}

#[test]
fn a_key_that_is_not_a_string_is_never_written_twice() {
    // ingress-nginx's tcp-services: port numbers as keys.
    let file = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tcp-services\ndata:\n  9000: \"default/svc:8080\"\n";
    let old = documents(file)[0].clone();
    let mut new = old.clone();
    new["data"]["9000"] = json!("default/svc:9090");
    let edited = edit::update(file, 0, &edit::diff(&old, &new), &old, &new).unwrap();
    let text = String::from_utf8(edited.bytes.unwrap()).unwrap();
    assert_eq!(text.matches("9000").count(), 1, "{text}");
    assert_eq!(documents(text.as_bytes())[0], new);
}

#[test]
fn strings_yaml_1_1_reads_as_something_else_are_quoted() {
    let file = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  answer: maybe\n";
    let old = documents(file)[0].clone();
    let mut new = old.clone();
    for (key, value) in [
        ("answer", "y"),
        ("n", "N"),
        ("time", "1:20"),
        ("day", "2001-12-14"),
    ] {
        new["data"][key] = json!(value);
    }
    let edited = edit::update(file, 0, &edit::diff(&old, &new), &old, &new).unwrap();
    assert!(!edited.rewritten);
    let text = String::from_utf8(edited.bytes.unwrap()).unwrap();
    for line in [
        "  answer: 'y'\n",
        "  'n': 'N'\n",
        "  time: '1:20'\n",
        "  day: '2001-12-14'\n",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
}

#[test]
fn a_list_an_overlay_changed_is_never_edited_by_position() {
    // The document's args, and the object's: an overlay patch put `--x` first.
    let file = b"kind: Deployment\nmetadata:\n  name: web\nspec:\n  args:\n  - --a\n  - --b\n";
    let old = json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"args": ["--x", "--a", "--b"]}});
    for args in [
        json!(["--x", "--b"]),
        json!(["--x", "--A", "--b"]),
        json!(["--x", "--a", "--c"]),
    ] {
        let mut new = old.clone();
        new["spec"]["args"] = args;
        let error = edit::update(file, 0, &edit::diff(&old, &new), &old, &new).unwrap_err();
        assert!(
            error.to_string().contains("another list at spec.args"),
            "{error}"
        );
    }
    // Where the lists agree (defaults aside), positions are the document's.
    let old = json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"args": ["--a", "--b"]}});
    let mut new = old.clone();
    new["spec"]["args"][1] = json!("--c");
    let edited = edit::update(file, 0, &edit::diff(&old, &new), &old, &new).unwrap();
    assert!(String::from_utf8(edited.bytes.unwrap())
        .unwrap()
        .ends_with("  - --a\n  - --c\n"));
}

#[test]
fn a_new_list_element_starts_with_its_name() {
    let file = b"spec:\n  containers:\n  - name: web\n    image: web:1\n";
    let old = documents(file)[0].clone();
    let mut new = old.clone();
    new["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"image": "proxy:1", "name": "proxy"}));
    let edited = edit::update(file, 0, &edit::diff(&old, &new), &old, &new).unwrap();
    let text = String::from_utf8(edited.bytes.unwrap()).unwrap();
    let name = text.find("name: proxy").unwrap();
    let image = text.find("image: proxy:1").unwrap();
    assert!(name < image, "{text}");
}

#[test]
fn a_document_that_is_not_json_does_not_stop_an_edit_of_another() {
    let file = b"kind: Thing\nvalue: !Ref other\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n";
    let old = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let mut new = old.clone();
    new["data"]["a"] = json!("z");
    let edited = edit::update(file, 1, &edit::diff(&old, &new), &old, &new).unwrap();
    let text = String::from_utf8(edited.bytes.unwrap()).unwrap();
    assert!(
        text.starts_with("kind: Thing\nvalue: !Ref other\n---\n"),
        "{text}"
    );
    assert!(text.ends_with("  a: z\n"), "{text}");
}

#[test]
fn a_delete_or_an_edit_never_takes_documents_the_parser_could_not_read() {
    // A custom tag: YAML, not JSON. The file keeps it.
    let file = b"kind: Thing\nvalue: !Ref other\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n";
    let left = edit::remove(file, 1)
        .unwrap()
        .bytes
        .expect("the file stays");
    assert!(String::from_utf8(left).unwrap().contains("!Ref other"));
    // A later document with a syntax error: nothing is edited by guess.
    let broken = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n---\nkind: [broken\n";
    assert!(edit::remove(broken, 0).is_err());
    let old = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let mut new = old.clone();
    new["data"]["a"] = json!("z");
    assert!(edit::update(broken, 0, &edit::diff(&old, &new), &old, &new).is_err());
}

#[test]
fn a_whole_list_set_anew_is_refused_where_an_overlay_changed_it() {
    let file = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  args:\n  - a\n  - b\n";
    let old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"args": ["a", "b", "c"]}});
    let mut new = old.clone();
    new["spec"]["args"] = json!(["x", "b", "c", "d"]);
    let error = edit::update(file, 0, &edit::diff(&old, &new), &old, &new).unwrap_err();
    assert!(error.to_string().contains("spec.args"), "{error}");
}

#[test]
fn a_document_is_found_by_the_name_it_gives_not_the_name_a_prefix_makes() {
    use kubescribe::declared::{find_document, Index, Key, Lookup, Settings};
    use std::collections::BTreeMap;
    let cms = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  a: one\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config\ndata:\n  a: two\n";
    let files: BTreeMap<String, Vec<u8>> = [
        ("base/kustomization.yaml", "resources: [cms.yaml]\n"),
        ("base/cms.yaml", cms),
        (
            "prod/kustomization.yaml",
            "namespace: prod\nnamePrefix: app-\nresources: [../base]\n",
        ),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_owned(), t.as_bytes().to_vec()))
    .collect();
    let index = Index::build(&files, &Settings::default());
    // `prod/app-config` is `config` with the prefix: the second document.
    let key = Key::new("", "ConfigMap", Some("prod"), "app-config");
    let Lookup::Found(declared) = index.lookup(&key) else {
        panic!("found");
    };
    assert_eq!(
        (declared.document, declared.written_name.as_str()),
        (1, "config")
    );
    assert_eq!(
        find_document(&documents(cms.as_bytes()), &key, &declared.written_name),
        Some(1)
    );
}

#[test]
fn a_kustomization_s_resources_are_redone_entry_by_entry() {
    let base = b"resources:\n- a.yaml\n- x.yaml\n";
    // Ours: x removed, b added. A person meanwhile added y after x.
    let ours = b"resources:\n- a.yaml\n- b.yaml\n";
    let theirs = b"resources:\n- a.yaml\n- x.yaml\n- y.yaml # the person's\n";
    let merged = edit::relist(theirs, "apps", base, ours).unwrap();
    assert_eq!(
        String::from_utf8(merged).unwrap(),
        "resources:\n- a.yaml\n- y.yaml # the person's\n- b.yaml\n"
    );
}

#[test]
fn an_edit_is_redone_on_a_file_a_person_changed_next_to_it() {
    let base = b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web:1\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  a: \"1\"\n";
    let ours = String::from_utf8(base.to_vec())
        .unwrap()
        .replace("image: web:1", "image: web:2");
    // The person added a line right after the image: a line merge calls that a
    // conflict, and would drop one side.
    let theirs = String::from_utf8(base.to_vec()).unwrap().replace(
        "image: web:1\n",
        "image: web:1\n        imagePullPolicy: Always # the person's\n",
    );
    let redone = edit::redo(theirs.as_bytes(), base, ours.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(redone).unwrap(),
        theirs.replace("image: web:1", "image: web:2")
    );
    // A document the person removed is not brought back.
    let gone = String::from_utf8(base.to_vec()).unwrap();
    let gone = &gone[gone.find("---\n").unwrap() + 4..];
    assert_eq!(edit::redo(gone.as_bytes(), base, ours.as_bytes()), None);
}
