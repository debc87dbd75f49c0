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
use crate::manifest::{self, Change, Layout};
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
    /// The file the write is (or would be) recorded in.
    pub path: Option<String>,
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

    let (wait, then, target) = match decision {
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
            wait, then, target, ..
        } => (wait, then, target),
    };
    let require_recording = policy.guard_rails.require_recording.mode;

    let change = match manifest::plan(write, layout(target), policy.secrets) {
        Ok(change) => change,
        Err(error) => {
            let cannot = format!(
                "kubescribe must record this write before it is applied, but cannot: {error}"
            );
            match (wait, require_recording) {
                (Wait::None, RailMode::Off | RailMode::Audit) => {
                    verdict
                        .warnings
                        .push(format!("kubescribe: not recorded: {error}"));
                    verdict.label = DecisionLabel::Unrecorded;
                }
                _ => {
                    verdict.allowed = false;
                    verdict.message = Some(cannot);
                    verdict.label = DecisionLabel::Denied;
                }
            }
            return verdict;
        }
    };
    let path = change.path.to_string();
    verdict.path = Some(path.clone());

    if write.dry_run {
        verdict.label = DecisionLabel::DryRun;
        if then == Then::Deny {
            verdict.allowed = false;
            verdict.message = Some(format!(
                "kubescribe: dry run: would record {path} and push it; this cluster changes only through GitOps, so the write itself would be refused"
            ));
        } else {
            verdict
                .warnings
                .push(format!("kubescribe: dry run: would record {path}"));
        }
        return verdict;
    }
    verdict.label = DecisionLabel::Queued;
    verdict.record = Some(Recording {
        change,
        wait,
        then,
        target,
        require_recording,
    });
    verdict
}
