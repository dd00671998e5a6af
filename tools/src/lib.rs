//! `tools`: the `walletd` server and the `walletctl` operator CLI, and what they share.
//!
//! - [`config`]: walletd's TOML configuration (listen address, engine settings, custom ledgers).
//! - [`handler`]: the bridge from the protocol server to the engine: it never blocks the event loop
//!   beyond a bounded queue hand-off, and answers every request exactly once.
//! - [`cluster_handler`]: the same bridge for a node of a replicated cluster.
//! - [`signals`]: SIGINT/SIGTERM turned into an orderly shutdown.
//! - [`output`]: amounts, times and results as people read them, and as JSON for scripts.
//! - [`wal_dump`]: a stopped node's event log, record by record.

pub mod cluster_handler;
pub mod config;
pub mod handler;
pub mod output;
pub mod signals;
pub mod wal_dump;
