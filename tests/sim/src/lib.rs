//! Deterministic whole-cluster simulators (in the spirit of TigerBeetle's VOPR): every replica, the
//! network, the disks and the clocks run in one thread from one u64 seed. Two of them:
//!
//! - `replica`: the engine's real replica core (`engine::replica::core`, the code a cluster node runs,
//!   with the real `PartitionState`) on 3 or 5 nodes, with an auditor that plays the clients;
//! - `sim`: the `raft` crate alone on `MemStorage`, with membership changes and lease reads.
//!
//! The replica simulator:
//! - suite (600 runs + planted bugs): `cargo test --release -p raft-sim --test replica_seeds`
//! - replay: `REPLICA_SIM_SEED=<seed> REPLICA_SIM_NODES=<3|5> cargo test --release -p raft-sim --test replica_seeds -- replay_seed --nocapture`
//!   (`REPLICA_SIM_VERBOSE=1` prints the nodes' log lines)
//! - soak: `cargo run --release -p raft-sim --bin replica-soak -- --seeds 1000000 [--first N] [--nodes 3|5|both]`
//!
//! The Raft simulator: Faults: dropped, delayed, duplicated and reordered messages, partitions, crashes that
//! lose all unpersisted state, torn writes, clock jitter. Safety is checked after every step
//! (`checker`), liveness once faults stop. A failure prints the command that replays its seed.
//!
//! - suite (800 runs): `cargo test --release -p raft-sim`
//! - replay: `RAFT_SIM_SEED=<seed> RAFT_SIM_REPLICAS=<3|5> cargo test --release -p raft-sim -- replay_seed --nocapture`
//! - soak: `cargo run --release -p raft-sim --bin raft-soak -- --seeds 1000000 [--first N] [--replicas 3|5|both]`
//! - throughput: `cargo run --release -p raft-sim --bin raft-bench`

pub mod checker;
pub mod replica;
pub mod rng;
pub mod sim;

pub use sim::{Options, Sim, Stats};

/// Runs one seed with the fault mix it draws; Err holds the violation and the replay command.
pub fn run_seed(seed: u64, replicas: usize) -> Result<Stats, String> {
    Sim::new(seed, Options::for_seed(seed, replicas)).run()
}

/// Like `run_seed` with a different length of the faulty phase (long soak runs).
pub fn run_seed_steps(seed: u64, replicas: usize, steps: u64) -> Result<Stats, String> {
    let mut options = Options::for_seed(seed, replicas);
    options.steps = steps;
    Sim::new(seed, options).run()
}
