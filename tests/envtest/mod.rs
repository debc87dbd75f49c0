//! End-to-end tests against a real control plane: etcd and kube-apiserver (and
//! kube-controller-manager when a test asks) on loopback, the real `kubescribe serve`
//! binary registered through the webhook configurations `kubescribe webhook-config`
//! renders, kubectl run as several users, and every scenario checked by one fidelity
//! helper that compares git with the live objects.
//!
//! See docs/development.md ("Testing") for how the binaries are found and how to run
//! the suite against another Kubernetes version.

#![allow(
    dead_code,
    reason = "each end-to-end test binary uses a different part of this module"
)]

pub mod fidelity;
pub mod plane;
pub mod process;
pub mod scribe;

pub use fidelity::{assert_git_matches_cluster, Obj};
#[allow(unused_imports, reason = "each test binary uses some")]
pub use plane::{ControlPlane, ADMIN, ALICE, BOB, CI, GITOPS};
pub use scribe::{forged_review, Kubescribe};
