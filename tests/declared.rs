//! The index of what people declared, on real GitOps repositories as their authors
//! wrote them (tests/fixtures/repos/, copied from ../shared/fixtures/repos/ with
//! their SOURCE.md): kustomize overlays over shared bases, Flux Kustomizations with
//! their paths, patches and Helm charts that are not objects.

use std::collections::BTreeMap;
use std::path::Path;

use kubescribe::declared::{Declared, Index, Key, Lookup, NamespaceFrom, Settings};

/// Every file of a fixture repository, by its path inside it.
fn repository(name: &str) -> BTreeMap<String, Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/repos")
        .join(name);
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let relative = path.strip_prefix(&root).unwrap().to_str().unwrap();
                files.insert(relative.to_owned(), std::fs::read(&path).unwrap());
            }
        }
    }
    assert!(files.len() > 10, "{name} has its files");
    files
}

fn key(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Key {
    Key::new(group, kind, namespace, name)
}

fn found<'a>(index: &'a Index, k: &Key) -> &'a Declared {
    match index.lookup(k) {
        Lookup::Found(declared) => declared,
        other => panic!("{k:?}: {other:?}"),
    }
}

#[test]
fn podinfo_s_overlays_declare_each_base_once_per_environment() {
    let index = Index::build(&repository("stefanprodan__podinfo"), &Settings::default());
    for env in ["dev", "staging", "production"] {
        let backend = found(&index, &key("apps", "Deployment", Some(env), "backend"));
        assert_eq!(backend.path, "deploy/bases/backend/deployment.yaml");
        assert_eq!(
            backend.through,
            [
                format!("deploy/overlays/{env}"),
                "deploy/bases/backend".to_owned()
            ]
        );
        assert_eq!(
            backend.namespace_from,
            NamespaceFrom::Kustomization(format!("deploy/overlays/{env}"))
        );
        found(&index, &key("", "Namespace", None, env));
    }
    // One document, three objects: editing it in place changes every environment.
    assert_eq!(
        index.declarations("deploy/bases/backend/deployment.yaml", 0),
        3
    );
    // `kustomize/` sets no namespace: its Deployment could be any namespace's.
    assert!(matches!(
        index.lookup(&key("apps", "Deployment", Some("default"), "podinfo")),
        Lookup::Ambiguous(_)
    ));
    // The Helm chart's templates are not manifests.
    assert!(
        index.keys().all(|k| !k.name.contains("{{")),
        "no template was read as an object"
    );
}

#[test]
fn flux_example_keeps_patches_out_and_names_its_cluster_objects() {
    let index = Index::build(
        &repository("fluxcd__flux2-kustomize-helm-example"),
        &Settings::default(),
    );
    let release = found(
        &index,
        &key(
            "helm.toolkit.fluxcd.io",
            "HelmRelease",
            Some("podinfo"),
            "podinfo",
        ),
    );
    assert_eq!(release.path, "apps/base/podinfo/release.yaml");
    // Staging and production both render the base, as the same object (one name,
    // one namespace): one declaration.
    assert_eq!(index.declarations("apps/base/podinfo/release.yaml", 0), 1);
    assert_eq!(release.through[0], "apps/production");
    // The overlays' values are patches, not a second HelmRelease.
    assert_eq!(index.declarations("apps/staging/podinfo-values.yaml", 0), 0);
    // A kind the built-in list does not know, with no namespace: cluster-scoped.
    let issuer = found(
        &index,
        &key("cert-manager.io", "ClusterIssuer", None, "letsencrypt"),
    );
    assert_eq!(issuer.path, "infrastructure/configs/cluster-issuers.yaml");
    // Each cluster's directory declares its own Flux Kustomization `apps`: which one
    // this cluster applies, the repository alone does not say.
    match index.lookup(&key(
        "kustomize.toolkit.fluxcd.io",
        "Kustomization",
        Some("flux-system"),
        "apps",
    )) {
        Lookup::Ambiguous(both) => {
            let mut paths: Vec<&str> = both.iter().map(|d| d.path.as_str()).collect();
            paths.sort();
            assert_eq!(
                paths,
                [
                    "clusters/production/apps.yaml",
                    "clusters/staging/apps.yaml"
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn multi_tenancy_tenants_come_from_their_base_through_each_cluster() {
    let index = Index::build(
        &repository("fluxcd__flux2-multi-tenancy"),
        &Settings::default(),
    );
    let binding = found(
        &index,
        &key(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            Some("apps"),
            "gotk-reconciler",
        ),
    );
    assert_eq!(binding.path, "tenants/base/dev-team/rbac.yaml");
    assert_eq!(binding.document, 2);
    assert_eq!(index.declarations("tenants/base/dev-team/rbac.yaml", 2), 1);
    // The per-cluster patches are not objects.
    assert_eq!(
        index.declarations("tenants/staging/dev-team-patch.yaml", 0),
        0
    );
    found(&index, &key("", "Namespace", None, "apps"));
}
