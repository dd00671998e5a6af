//! Throughput of the `raft` state machine alone: a 3-replica cluster in one thread, messages
//! passed in memory, persistence instant (MemStorage), proposals batched per round.
//! Also measures simulator steps per second.
//! `cargo run --release -p raft-sim --bin raft-bench -- [--entries 2000000] [--payload-bytes 128] [--batch 256]`

use std::collections::VecDeque;
use std::time::Instant;

use raft::{ConfState, Config, MemStorage, Message, RawNode, Role, Storage};

/// Entries kept in memory behind the applied index before compacting.
const COMPACT_LAG_ENTRIES: u64 = 10_000;
const SIM_SEEDS: u64 = 200;

fn main() {
    let mut entries_total: u64 = 2_000_000;
    let mut payload_bytes: usize = 128;
    let mut batch: usize = 256;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{arg} needs a number"));
        match arg.as_str() {
            "--entries" => entries_total = value,
            "--payload-bytes" => payload_bytes = value as usize,
            "--batch" => batch = value as usize,
            _ => panic!("unknown argument {arg}"),
        }
    }
    let (seconds, committed) = cluster_throughput(entries_total, payload_bytes, batch);
    println!(
        "raft 3 replicas in memory: {committed} entries of {payload_bytes} B, batch {batch}: {:.0} entries/s ({:.1} MB/s payload), {seconds:.2}s",
        committed as f64 / seconds,
        committed as f64 * payload_bytes as f64 / seconds / 1e6
    );
    let started = Instant::now();
    let mut steps = 0;
    for seed in 0..SIM_SEEDS {
        for replicas in [3, 5] {
            steps += raft_sim::run_seed(seed, replicas).expect("seed passes").steps;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "simulator: {} runs, {steps} steps, {:.0} steps/s, {:.1} ms/run",
        SIM_SEEDS * 2,
        steps as f64 / seconds,
        seconds * 1000.0 / (SIM_SEEDS * 2) as f64
    );
}

fn cluster_throughput(entries_total: u64, payload_bytes: usize, batch: usize) -> (f64, u64) {
    let voters = [1u64, 2, 3];
    let mut nodes: Vec<RawNode<MemStorage>> = voters
        .iter()
        .map(|&id| {
            let mut config = Config::new(id);
            config.pre_vote = false;
            config.append_entries_bytes_max = 1 << 20;
            config.uncommitted_bytes_max = 256 << 20;
            let storage = MemStorage::new_with_conf(ConfState::with_voters(voters));
            RawNode::new(config, storage).expect("config")
        })
        .collect();
    nodes[0].campaign();
    let mut network: VecDeque<Message> = VecDeque::new();
    let mut applied = [0u64; 3];
    let payload = vec![0xA5u8; payload_bytes];
    let mut proposed = 0u64;
    let started = Instant::now();
    let mut first_commit_base = None;
    while applied.iter().min().copied().unwrap_or(0) < entries_total + first_commit_base.unwrap_or(0) {
        if nodes[0].status().role == Role::Leader && proposed < entries_total {
            for _ in 0..batch {
                if nodes[0].propose(payload.clone()).is_err() {
                    break;
                }
                proposed += 1;
            }
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            while node.has_ready() {
                let mut ready = node.ready();
                network.extend(ready.messages.drain(..));
                if let Some(snapshot) = ready.snapshot.take() {
                    node.storage_mut().apply_snapshot(snapshot).expect("snapshot");
                }
                node.storage_mut().append(&ready.entries).expect("append");
                if let Some(hard_state) = ready.hard_state {
                    node.storage_mut().set_hard_state(hard_state).expect("hs");
                }
                if ready.must_persist() {
                    node.on_persisted(ready.number);
                }
                if let Some(last) = ready.committed_entries.last() {
                    applied[i] = last.index;
                    node.on_applied(last.index);
                    if first_commit_base.is_none() {
                        first_commit_base = Some(last.index);
                    }
                }
            }
            if applied[i] > node.status().first_index + COMPACT_LAG_ENTRIES {
                node.compact(applied[i], Default::default()).expect("compact");
            }
        }
        while let Some(message) = network.pop_front() {
            let to = (message.to - 1) as usize;
            nodes[to].step(message);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    (seconds, applied.iter().min().copied().unwrap_or(0))
}
