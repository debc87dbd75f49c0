//! The check every end-to-end scenario ends with: for each object the scenario
//! touched, the file on the branch equals the live object passed through kubescribe's
//! documented sanitiser (`manifest::sanitize`, then `manifest::render`), or the file
//! is absent when the object is gone. The object is read with the kube client after
//! the scenario, in the file's own apiVersion, and a mismatch fails with a diff.

use std::path::Path;

use serde_json::Value;

/// An object a scenario touched, as the API names it.
#[derive(Debug, Clone, Copy)]
pub struct Obj<'a> {
    /// `v1`, `apps/v1`, `example.com/v1`, ...
    pub api_version: &'a str,
    /// The plural resource, as in the URL.
    pub resource: &'a str,
    /// `None` for a cluster-scoped object.
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl<'a> Obj<'a> {
    pub fn namespaced(
        api_version: &'a str,
        resource: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> Self {
        Self {
            api_version,
            resource,
            namespace: Some(namespace),
            name,
        }
    }

    pub fn cluster(api_version: &'a str, resource: &'a str, name: &'a str) -> Self {
        Self {
            api_version,
            resource,
            namespace: None,
            name,
        }
    }

    /// The group, `""` for the core group.
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// Where the default layout puts it:
    /// `{namespace|_cluster}/{group|core}/{resource}/{name}.yaml`.
    pub fn path(&self) -> String {
        let group = match self.group() {
            "" => "core",
            g => g,
        };
        format!(
            "{}/{group}/{}/{}.yaml",
            self.namespace.unwrap_or("_cluster"),
            self.resource,
            self.name
        )
    }

    fn url(&self, api_version: &str) -> String {
        let base = if api_version.contains('/') {
            format!("/apis/{api_version}")
        } else {
            format!("/api/{api_version}")
        };
        match self.namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}/{}", self.resource, self.name),
            None => format!("{base}/{}/{}", self.resource, self.name),
        }
    }
}

/// The live object, or `None` when the apiserver says 404.
pub async fn live(client: &kube::Client, obj: &Obj<'_>, api_version: &str) -> Option<Value> {
    let request = axum::http::Request::get(obj.url(api_version))
        .body(Vec::new())
        .unwrap();
    match client.request::<Value>(request).await {
        Ok(value) => Some(value),
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(err) => panic!("cannot read {obj:?}: {err}"),
    }
}

/// What kubescribe's sanitiser makes of a live object.
pub fn sanitized(mut object: Value, group: &str) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    kubescribe::manifest::sanitize(&mut object, group, &kind).expect("the live object sanitises");
    kubescribe::manifest::render(&object)
}

/// Every object's file on `branch` of `repo` equals its sanitised live object, or is
/// absent with the object. One failure message lists every mismatch, with diffs.
pub async fn assert_git_matches_cluster(
    repo: &Path,
    branch: &str,
    client: &kube::Client,
    objects: &[Obj<'_>],
) {
    let mut failures = Vec::new();
    for obj in objects {
        let path = obj.path();
        let file = super::scribe::file_at(repo, branch, &path);
        // Read the object in the version the file records, so a conversion between
        // versions is never mistaken for a difference.
        let version = file
            .as_deref()
            .and_then(|text| serde_yaml_ng::from_str::<Value>(text).ok())
            .and_then(|v| v["apiVersion"].as_str().map(str::to_owned))
            .unwrap_or_else(|| obj.api_version.to_owned());
        let live = live(client, obj, &version).await;
        match (file, live) {
            (None, None) => {}
            (Some(_), None) => failures.push(format!(
                "{path}: the object is gone from the cluster but its file is still on {branch}"
            )),
            (None, Some(_)) => failures.push(format!(
                "{path}: the object is live but {branch} has no file for it"
            )),
            (Some(file), Some(object)) => {
                let expected = sanitized(object, obj.group());
                if expected != file {
                    let diff = similar::TextDiff::from_lines(&expected, &file)
                        .unified_diff()
                        .header("sanitised live object", "file in git")
                        .to_string();
                    failures.push(format!(
                        "{path}: the file differs from the live object:\n{diff}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "git does not match the cluster:\n{}",
        failures.join("\n")
    );
}
