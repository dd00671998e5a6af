//! Test support shared by the integration tests: a fault-injecting TCP proxy and a local cluster
//! of real walletd processes, and an HTTP client for walletd's HTTP edge. Each test binary uses only
//! part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod fingerprint;
pub mod http;
pub mod log_lines;
pub mod proxy;
