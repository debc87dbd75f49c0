//! End-to-end scenarios against a real kube-apiserver (tests/envtest): kubectl as
//! several users, the real `kubescribe serve` registered through its own rendered
//! webhook configurations, and git compared with the live objects after each
//! scenario. One control plane serves every test here; each test has its own
//! namespace, kubescribe and webhook configurations.

#[path = "../common/mod.rs"]
#[allow(unused)]
mod common;
#[path = "../envtest/mod.rs"]
mod envtest;

mod callers;
mod chart;
mod crd;
mod in_place;
mod kubectl;
mod review;
mod secrets;
mod wait;
