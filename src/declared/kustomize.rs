//! What a `kustomization.yaml` says about the objects it renders, as far as the index
//! needs it: which files and directories are resources, the namespace and name
//! affixes it sets, and which files are patches or generator inputs (never objects).

use serde_json::Value;

/// The file names kustomize reads as a directory's kustomization, in its order.
pub(crate) const FILE_NAMES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// One kustomization file, read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Kustomization {
    /// Repository paths (files or directories) of `resources`, `bases` and
    /// `components`, in order; remote ones are left out.
    pub resources: Vec<String>,
    pub namespace: Option<String>,
    pub name_prefix: String,
    pub name_suffix: String,
    /// Files that are patches or transformer configurations, not objects.
    pub not_objects: Vec<String>,
    /// Names of the objects its generators make (`configMapGenerator`,
    /// `secretGenerator`), with their kind.
    pub generated: Vec<(String, String)>,
    /// It changes what it renders beyond names, namespaces and labels: patches,
    /// `images`, `replicas`, replacements, transformers or components.
    pub transforms: bool,
}

impl Kustomization {
    /// Reads the kustomization at `dir` (a repository directory, `""` for the root);
    /// `None` when the text is not a YAML mapping.
    pub(crate) fn parse(dir: &str, text: &[u8]) -> Option<Kustomization> {
        let value: Value = serde_yaml_ng::from_slice(text).ok()?;
        let value = value.as_object()?;
        let strings = |key: &str| -> Vec<&str> {
            value
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect()
        };
        let local = |entry: &str| -> Option<String> {
            // Remote bases (`github.com/...`, `https://...`, `git@...`) are not in
            // this repository.
            if entry.contains("://")
                || entry.starts_with("git@")
                || entry.starts_with("github.com/")
            {
                return None;
            }
            join(dir, entry)
        };
        let mut resources: Vec<String> = Vec::new();
        for key in ["resources", "bases", "components"] {
            for resource in strings(key).into_iter().filter_map(local) {
                // `../base` and `../base/` are one resource (kustomize refuses the
                // second); listed twice, it would be walked twice.
                if !resources.contains(&resource) {
                    resources.push(resource);
                }
            }
        }
        let mut not_objects: Vec<String> = Vec::new();
        for key in [
            "patchesStrategicMerge",
            "transformers",
            "generators",
            "validators",
            "configurations",
            "crds",
        ] {
            not_objects.extend(strings(key).into_iter().filter_map(local));
        }
        for key in ["patches", "patchesJson6902"] {
            for patch in value
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(path) = patch.get("path").and_then(Value::as_str).and_then(local) {
                    not_objects.push(path);
                }
            }
        }
        let mut generated = Vec::new();
        for (key, kind) in [
            ("configMapGenerator", "ConfigMap"),
            ("secretGenerator", "Secret"),
        ] {
            for generator in value
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = generator.get("name").and_then(Value::as_str) {
                    generated.push((kind.to_owned(), name.to_owned()));
                }
                // Their inputs (`files:`, `envs:`) are not manifests either.
                for inputs in ["files", "envs"] {
                    for entry in generator
                        .get(inputs)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(file) = entry.as_str() {
                            // `key=path` names the key the file's content goes to.
                            let file = file.split_once('=').map_or(file, |(_, path)| path);
                            not_objects.extend(local(file));
                        }
                    }
                }
            }
        }
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let transforms = [
            "patches",
            "patchesStrategicMerge",
            "patchesJson6902",
            "images",
            "replicas",
            "replacements",
            "vars",
            "transformers",
            "components",
        ]
        .iter()
        .any(|key| value.get(*key).is_some_and(|v| !v.is_null()));
        Some(Kustomization {
            transforms,
            resources,
            namespace: text("namespace").filter(|ns| !ns.is_empty()),
            name_prefix: text("namePrefix").unwrap_or_default(),
            name_suffix: text("nameSuffix").unwrap_or_default(),
            not_objects,
            generated,
        })
    }
}

/// `dir` joined with the relative `path`, normalised (`.` and `..` resolved); `None`
/// when it leaves the repository.
pub(crate) fn join(dir: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_repository_only() {
        assert_eq!(
            join("deploy/overlays/dev", "../../bases/backend").as_deref(),
            Some("deploy/bases/backend")
        );
        assert_eq!(join("", "./apps/staging").as_deref(), Some("apps/staging"));
        assert_eq!(join("a", "../../x"), None);
    }

    #[test]
    fn a_kustomization_says_its_resources_affixes_and_what_is_not_an_object() {
        let text = br#"
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: dev
namePrefix: dev-
resources:
  - ../../bases/backend
  - namespace.yaml
  - https://github.com/example/remote//base
patches:
  - path: podinfo-values.yaml
    target:
      kind: HelmRelease
  - patch: |-
      - op: replace
transformers:
  - labels.yaml
configMapGenerator:
  - name: redis-config
    files:
      - redis.conf=scripts/redis.conf
"#;
        let k = Kustomization::parse("deploy/overlays/dev", text).unwrap();
        assert_eq!(
            k.resources,
            ["deploy/bases/backend", "deploy/overlays/dev/namespace.yaml"]
        );
        assert_eq!(k.namespace.as_deref(), Some("dev"));
        assert_eq!(k.name_prefix, "dev-");
        assert_eq!(
            k.not_objects,
            [
                "deploy/overlays/dev/labels.yaml",
                "deploy/overlays/dev/podinfo-values.yaml",
                "deploy/overlays/dev/scripts/redis.conf"
            ]
        );
        assert_eq!(
            k.generated,
            [("ConfigMap".to_owned(), "redis-config".to_owned())]
        );
    }
}
