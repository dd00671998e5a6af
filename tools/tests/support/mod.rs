//! Test support shared by the integration tests: a fault-injecting TCP proxy and a local cluster
//! of real walletd processes. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod fingerprint;
pub mod log_lines;
pub mod proxy;
