//! Seed sweeps of the simulator. A failure prints the one command that replays it.

use raft_sim::run_seed;

/// Seeds per cluster size in the default suite (kept under two minutes in release mode).
const SEEDS_PER_SIZE: u64 = 400;

fn sweep(replicas: usize, first_seed: u64) {
    let mut committed = 0;
    for seed in first_seed..first_seed + SEEDS_PER_SIZE {
        match run_seed(seed, replicas) {
            Ok(stats) => committed += stats.committed_index,
            Err(failure) => panic!("{failure}"),
        }
    }
    // Faults must not stop all progress: the workload commits in nearly every run.
    assert!(
        committed > SEEDS_PER_SIZE * 20,
        "suspiciously little progress: {committed} entries committed over all seeds"
    );
}

#[test]
fn three_replicas_survive_faults() {
    sweep(3, 1_000);
}

#[test]
fn five_replicas_survive_faults() {
    sweep(5, 2_000);
}

/// `RAFT_SIM_SEED=<seed> [RAFT_SIM_REPLICAS=3|5] cargo test --release -p raft-sim -- replay_seed --nocapture`
#[test]
fn replay_seed() {
    let Ok(seed) = std::env::var("RAFT_SIM_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("RAFT_SIM_SEED must be a u64");
    let replicas =
        std::env::var("RAFT_SIM_REPLICAS").ok().map_or(3, |r| r.parse().expect("RAFT_SIM_REPLICAS must be a number"));
    match run_seed(seed, replicas) {
        Ok(stats) => println!(
            "seed {seed}: ok, {} steps, committed {}, {} elections, {} crashes, {} snapshots, {} reads, {} transfers, {} conf changes",
            stats.steps,
            stats.committed_index,
            stats.elections,
            stats.crashes,
            stats.snapshots_sent,
            stats.reads_served,
            stats.transfers,
            stats.conf_changes
        ),
        Err(failure) => panic!("{failure}"),
    }
}

/// Exact replay is what makes a failing seed useful: two runs of a seed must match step by step.
#[test]
fn same_seed_replays_identically() {
    for seed in [7, 8, 9] {
        let a = run_seed(seed, 5).expect("seed passes");
        let b = run_seed(seed, 5).expect("seed passes");
        let summary = |s: &raft_sim::Stats| {
            (s.steps, s.committed_index, s.elections, s.crashes, s.messages, s.snapshots_sent, s.reads_served)
        };
        assert_eq!(summary(&a), summary(&b), "seed {seed} diverged between runs");
    }
}
