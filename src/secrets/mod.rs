//! Secrets in git (issue 17): a Secret recorded encrypted with SOPS and age, so
//! that the GitOps tool (Flux's kustomize-controller) decrypts it and git never
//! holds a plaintext value.
//!
//! [`sops`] writes and reads the files. Invariant: nothing here logs, returns in an
//! error or puts in a file any plaintext value.

pub mod sops;
