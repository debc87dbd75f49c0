//! kubescribe: a Kubernetes admission webhook that records every admitted write as a
//! sanitised YAML file and a git commit authored by the Kubernetes user.
//!
//! The flow is admission → policy → manifest → store; each is a module here.

pub mod admission;
pub mod check;
pub mod cli;
pub mod config;
pub mod load;
pub mod manifest;
pub mod metrics;
pub mod policy;
pub mod push;
pub mod reconcile;
pub mod serve;
pub mod store;
pub mod tls;
pub mod verdict;
pub mod webhook;
