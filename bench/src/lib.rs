//! `bench`: `walletbench`, the wallet engine's load generator and its HDR latency reports.
//!
//! It drives one node or a cluster through `net`'s blocking client, one thread per connection with
//! up to `--inflight` batches pipelined, either open loop on a timetable (`--rate`; each batch's latency
//! is measured from its *scheduled* send time, so a stalled server is charged for every batch it held
//! back: coordinated omission corrected) or closed loop. It creates and funds its own accounts (each
//! run in its own id range, with one external funding account per partition so nothing crosses
//! partitions), picks debit accounts uniformly or by Zipf, and credits inside the debit's partition
//! unless told otherwise. It keeps per-account net balance changes of every acknowledged transfer so
//! that `--verify` can prove money was conserved. Outputs: a progress line per second, then a results
//! directory with `report.txt`, `summary.json`, `latency.hgrm` (HdrHistogram's text format),
//! `latency.svg` and `throughput.svg`. Invariants: every loop is bounded in count and time; transfer
//! ids are unique per run (time-ordered, with run entropy, connection and counter); the hot path
//! allocates nothing per transfer. It depends on `net` only, never on the engine.
//!
//! Modules: [`config`] (knobs and limits), [`cli`] (flags), [`run`] (one run end to end), [`worker`]
//! (a connection's load loop and the transfer generator), [`accounts`] (layout, setup, lookups),
//! [`zipf`] and [`rng`] (sampling), [`stats`] (aggregation and progress), [`hgrm`], [`svg`] and
//! [`report`] (output files), [`verify`] (conservation check), [`null_server`] (acknowledge-only
//! server for measuring the generator itself).

pub mod accounts;
pub mod cli;
pub mod config;
pub mod hgrm;
pub mod null_server;
pub mod report;
pub mod rng;
pub mod run;
pub mod stages;
pub mod stats;
pub mod svg;
pub mod verify;
pub mod worker;
pub mod zipf;
