//! The webhook's answer to a write, as far as it can be known without the store.
//!
//! The server and `kubescribe check` both call [`evaluate`]: policy, guard rails and
//! planning the file are the same code, so the offline check gives the verdict, the
//! message and the warnings the live webhook gives. What only the store can say
//! (`recorded <sha>`, `pushed <sha> ...`, a denial because the commit or push failed)
//! is added by the server after this; a dry run never gets that far.
//!
//! Pure: no I/O, no clock, no async.

use crate::config::{RailMode, Then, Wait};
use crate::manifest::{self, Change, Layout, Placement};
use crate::metrics::DecisionLabel;
use crate::policy::{self, Decision, Finding, Policy, SkipReason, Write};

/// What to answer, and what (if anything) to record first.
#[derive(Debug)]
pub struct Verdict {
    pub allowed: bool,
    /// The denial's message.
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub label: DecisionLabel,
    /// The rule that matched, if one did.
    pub rule: Option<String>,
    /// The file the write is (or would be) recorded in, and the target (index into
    /// [`crate::config::Config::targets`]) it is recorded to.
    pub path: Option<String>,
    pub target: Option<usize>,
    pub findings: Vec<Finding>,
    /// Present when the write is to be recorded before answering (not a dry run).
    pub record: Option<Recording>,
}

/// A write to hand to the store.
#[derive(Debug)]
pub struct Recording {
    pub change: Change,
    pub wait: Wait,
    pub then: Then,
    /// Index into [`crate::config::Config::targets`].
    pub target: usize,
    pub require_recording: RailMode,
    /// `confirmed`: only noted now, committed once the watch shows it.
    pub record: crate::config::Record,
    /// Proposed in a pull request instead of committed to the branch (the rule's
    /// `review`).
    pub review: bool,
}

/// The text of a denial for the first enforced finding.
fn denial(finding: &Finding) -> String {
    format!("kubescribe: {}: {}", finding.rail, finding.message)
}

/// Decides what the webhook answers for `write`; `layout` gives a target's layout by
/// its index in [`crate::config::Config::targets`].
pub fn evaluate<'a>(
    write: &Write,
    policy: &Policy,
    layout: impl Fn(usize) -> &'a Layout,
    place: impl Fn(usize, &mut Change, &Write) -> Placement,
) -> Verdict {
    let decision = policy::decide(write, policy);
    let findings = policy::guard(write, &decision, policy);
    let rule = match &decision {
        Decision::Record { rule, .. } => Some(rule.clone()),
        Decision::Skip(_) => None,
    };
    let mut verdict = Verdict {
        allowed: true,
        message: None,
        warnings: Vec::new(),
        label: DecisionLabel::Skipped,
        rule,
        path: None,
        target: None,
        findings: Vec::new(),
        record: None,
    };
    for finding in &findings {
        if finding.mode == RailMode::Audit {
            verdict.warnings.push(format!(
                "kubescribe: audit: {}: {}",
                finding.rail, finding.message
            ));
        }
    }
    if let Some(enforced) = findings.iter().find(|f| f.mode == RailMode::Enforce) {
        verdict.allowed = false;
        verdict.message = Some(denial(enforced));
        verdict.label = if write.dry_run {
            DecisionLabel::DryRun
        } else {
            DecisionLabel::Denied
        };
        verdict.findings = findings;
        return verdict;
    }
    verdict.findings = findings;

    let review = verdict
        .rule
        .as_deref()
        .is_some_and(|rule| policy.reviews(rule));
    let (wait, then, target, record) = match decision {
        Decision::Skip(reason) => {
            if write.dry_run {
                verdict
                    .warnings
                    .push(format!("kubescribe: dry run: would not record: {reason}"));
                verdict.label = DecisionLabel::DryRun;
            } else if reason == SkipReason::SecretOmitted {
                verdict.warnings.push(format!("kubescribe: {reason}"));
            }
            return verdict;
        }
        Decision::Record {
            wait,
            then,
            target,
            record,
            ..
        } => (wait, then, target, record),
    };
    let require_recording = policy.guard_rails.require_recording.mode;

    let secrets = policy.secret_mode(verdict.rule.as_deref().unwrap_or_default());
    let planned = manifest::plan(write, layout(target), secrets).map(|mut change| {
        // A person's delete of a namespace or a definition takes the files of its
        // objects with it (the controllers' deletes that follow are not recorded).
        if let (Some(scope), manifest::Action::Remove) =
            (crate::cascade::Scope::of(write), &change.action)
        {
            change.action = manifest::Action::Cascade(Box::new(crate::cascade::Cascade {
                scope,
                layout: layout(target).clone(),
            }));
        }
        change
    });
    let cannot = |verdict: &mut Verdict, reason: String| {
        let message =
            format!("kubescribe must record this write before it is applied, but cannot: {reason}");
        match (wait, require_recording) {
            (Wait::None, RailMode::Off | RailMode::Audit) => {
                verdict
                    .warnings
                    .push(format!("kubescribe: not recorded: {reason}"));
                verdict.label = DecisionLabel::Unrecorded;
            }
            _ => {
                verdict.allowed = false;
                verdict.message = Some(message);
                verdict.label = DecisionLabel::Denied;
            }
        }
    };
    let mut change = match planned {
        Ok(change) => change,
        Err(error) => {
            cannot(&mut verdict, error.to_string());
            return verdict;
        }
    };
    // In a repository edited in place, the object's own document, if it has one.
    let placement = match place(target, &mut change, write) {
        // A rule whose writes change the cluster only through git, or that must
        // record every write, never lets one through unrecorded.
        Placement::Omitted(reason)
            if then == Then::Deny || require_recording == RailMode::Enforce =>
        {
            Placement::Denied(reason)
        }
        placement => placement,
    };
    match placement {
        Placement::Canonical | Placement::InPlace => {}
        Placement::Declared(path) => {
            verdict.path = Some(path.clone());
            verdict.target = Some(target);
            let object = change.object_ref();
            if then == Then::Deny {
                verdict.allowed = false;
                verdict.message = Some(format!(
                    "kubescribe: {kind} {object} is already declared in {path}; this cluster changes only through GitOps, which applies it from there",
                    kind = change.kind
                ));
                verdict.label = if write.dry_run {
                    DecisionLabel::DryRun
                } else {
                    DecisionLabel::Denied
                };
                return verdict;
            }
            verdict.warnings.push(format!(
                "kubescribe: {kind} {object} is already declared in {path}: nothing to record; change that file to change it in git",
                kind = change.kind
            ));
            if write.dry_run {
                verdict.label = DecisionLabel::DryRun;
                return verdict;
            }
            // Still handed to the store, which records it only if a delete
            // admitted before it took the document out by then.
        }
        Placement::Denied(reason) => {
            verdict.allowed = false;
            verdict.message = Some(format!("kubescribe: {reason}"));
            verdict.label = if write.dry_run {
                DecisionLabel::DryRun
            } else {
                DecisionLabel::Denied
            };
            return verdict;
        }
        Placement::Omitted(reason) => {
            verdict.warnings.push(if write.dry_run {
                format!("kubescribe: dry run: would not record: {reason}")
            } else {
                format!("kubescribe: not recorded: {reason}")
            });
            verdict.label = if write.dry_run {
                DecisionLabel::DryRun
            } else {
                DecisionLabel::Unrecorded
            };
            return verdict;
        }
        Placement::Refused(reason) => {
            if write.dry_run {
                verdict
                    .warnings
                    .push(format!("kubescribe: dry run: would not record: {reason}"));
                verdict.label = DecisionLabel::DryRun;
            } else {
                cannot(&mut verdict, reason);
            }
            return verdict;
        }
    }
    let path = change.path.to_string();
    verdict.path = Some(path.clone());
    verdict.target = Some(target);

    let cascade = match &change.action {
        manifest::Action::Cascade(cascade) => {
            format!(" and remove the files of the {}", cascade.scope.objects())
        }
        _ => String::new(),
    };
    if write.dry_run {
        verdict.label = DecisionLabel::DryRun;
        if review {
            verdict.allowed = false;
            verdict.message = Some(format!(
                "kubescribe: dry run: would propose {path}{cascade} in a pull request; this cluster changes only through GitOps, so the write itself would be refused, and applied once the pull request is merged"
            ));
        } else if then == Then::Deny {
            verdict.allowed = false;
            verdict.message = Some(format!(
                "kubescribe: dry run: would record {path}{cascade} and push it; this cluster changes only through GitOps, so the write itself would be refused"
            ));
        } else if record == crate::config::Record::Confirmed {
            verdict.warnings.push(format!(
                "kubescribe: dry run: would record {path} once the cluster shows the change"
            ));
        } else {
            verdict
                .warnings
                .push(format!("kubescribe: dry run: would record {path}{cascade}"));
        }
        return verdict;
    }
    verdict.label = match record {
        crate::config::Record::Confirmed => DecisionLabel::Noted,
        crate::config::Record::Immediate => DecisionLabel::Queued,
    };
    verdict.record = Some(Recording {
        change,
        wait,
        then,
        target,
        require_recording,
        record,
        review,
    });
    verdict
}

/// The annotations `/mutate` stamps on a recorded object (with `annotate: true`).
pub const GIT_PATH_ANNOTATION: &str = "kubescribe.io/git-path";
pub const GIT_REPO_ANNOTATION: &str = "kubescribe.io/git-repo";

/// The JSON Patch that stamps `path` and `repo` on the write's object, or `None` when
/// there is nothing to do: the object already carries both (so a reinvocation
/// changes nothing), it is a DELETE, or it has no name yet (a `generateName` create:
/// the path is not known at mutation time).
pub fn annotation_patch(write: &Write, path: &str, repo: &str) -> Option<serde_json::Value> {
    use serde_json::{json, Value};
    // A Scale (or other subresource) object is not the object the file holds.
    if write.name.is_empty() || write.sub_resource.is_some() {
        return None;
    }
    let object = write.object.as_ref()?;
    let wanted = [(GIT_PATH_ANNOTATION, path), (GIT_REPO_ANNOTATION, repo)];
    let annotations = object.get("metadata").and_then(|m| m.get("annotations"));
    let mut ops = Vec::new();
    match annotations.and_then(Value::as_object) {
        None => {
            object.get("metadata").filter(|m| m.is_object())?;
            let value: serde_json::Map<String, Value> = wanted
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect();
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": value}));
        }
        Some(existing) => {
            for (key, value) in wanted {
                if existing.get(key).and_then(Value::as_str) != Some(value) {
                    // RFC 6901: `/` in a key is written `~1`.
                    let pointer = format!(
                        "/metadata/annotations/{}",
                        key.replace('~', "~0").replace('/', "~1")
                    );
                    ops.push(json!({"op": "add", "path": pointer, "value": value}));
                }
            }
        }
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::{GroupVersionKind, GroupVersionResource};

    fn configmap() -> Write {
        Write {
            uid: "u".into(),
            operation: kube_core::admission::Operation::Create,
            kind: GroupVersionKind::gvk("", "v1", "ConfigMap"),
            resource: GroupVersionResource::gvr("", "v1", "configmaps"),
            sub_resource: None,
            namespace: Some("a".into()),
            name: "c".into(),
            user: "alice".into(),
            groups: Vec::new(),
            dry_run: false,
            object: Some(
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "a"}}),
            ),
            old_object: None,
            from_cluster: false,
        }
    }

    #[test]
    fn an_omitted_write_is_refused_where_the_cluster_must_not_change_outside_git() {
        let layouts = [Layout::new("", "{namespace}/{group}/{resource}/{name}.yaml").unwrap()];
        let omitted =
            |_: usize, _: &mut Change, _: &Write| Placement::Omitted("no recipient".into());
        let verdict_of = |yaml: &str| {
            let policy = Policy::new(&crate::config::Config::from_yaml(yaml).unwrap());
            evaluate(&configmap(), &policy, |i| &layouts[i], omitted)
        };
        let admitted = verdict_of("rules:\n- name: r\n");
        assert!(
            admitted.allowed && admitted.record.is_none(),
            "{admitted:?}"
        );
        assert_eq!(admitted.label, DecisionLabel::Unrecorded);
        assert!(admitted
            .warnings
            .iter()
            .any(|w| w.contains("not recorded: no recipient")));
        for yaml in [
            "repository:\n  remote:\n    url: file:///r\nrules:\n- name: r\n  wait: push\n  then: deny\n",
            "guardRails:\n  requireRecording:\n    mode: enforce\nrules:\n- name: r\n",
        ] {
            let refused = verdict_of(yaml);
            assert!(!refused.allowed, "{yaml}: {refused:?}");
            assert_eq!(refused.message.as_deref(), Some("kubescribe: no recipient"));
        }
    }
}
