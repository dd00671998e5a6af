//! `net`: the wallet's wire types and binary protocol, and the Rust client library.
//!
//! A client application depends on this crate alone: it never pulls in RocksDB, io_uring or the engine.

pub mod types;
