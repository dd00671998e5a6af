//! Soak testing of the replica simulator: runs many seeds and stops at the first failure with its
//! replay command.
//! `cargo run --release -p raft-sim --bin replica-soak -- --seeds 1000000 [--first 0] [--nodes 3|5|both]`

use std::time::Instant;

fn main() {
    let mut seeds: u64 = 10_000;
    let mut first: u64 = 0;
    let mut sizes = vec![3, 5];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&arg));
        match arg.as_str() {
            "--seeds" => seeds = value.parse().unwrap_or_else(|_| usage(&arg)),
            "--first" => first = value.parse().unwrap_or_else(|_| usage(&arg)),
            "--nodes" => {
                sizes = match value.as_str() {
                    "both" => vec![3, 5],
                    n => vec![n.parse().unwrap_or_else(|_| usage(&arg))],
                }
            }
            _ => usage(&arg),
        }
    }
    let started = Instant::now();
    let (mut runs, mut simulated_ms, mut transfers) = (0u64, 0u64, 0u64);
    let mut run_us: Vec<u64> = Vec::new();
    for seed in first..first + seeds {
        for &nodes in &sizes {
            let run_started = Instant::now();
            let outcome = raft_sim::replica::run_seed(seed, nodes);
            run_us.push(run_started.elapsed().as_micros() as u64);
            match outcome {
                Ok(stats) => {
                    runs += 1;
                    simulated_ms += stats.steps_ms;
                    transfers += stats.audit.transfers_acked;
                }
                Err(failure) => {
                    eprintln!("FAILED {failure}");
                    std::process::exit(1);
                }
            }
        }
        if (seed - first + 1).is_multiple_of(1_000) {
            eprintln!("{} seeds ok, {:.1} runs/s", seed - first + 1, runs as f64 / started.elapsed().as_secs_f64());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    run_us.sort_unstable();
    let at = |q: f64| run_us[((run_us.len() as f64 * q) as usize).min(run_us.len() - 1)] as f64 / 1000.0;
    println!(
        "{seeds} seeds x {sizes:?} nodes ok: {runs} runs in {seconds:.1}s ({:.1} runs/s), {:.0} simulated s, \
         {transfers} transfers acknowledged; ms per run: p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        runs as f64 / seconds,
        simulated_ms as f64 / 1000.0,
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

fn usage(arg: &str) -> ! {
    eprintln!("bad argument {arg}; usage: replica-soak [--seeds N] [--first N] [--nodes 3|5|both]");
    std::process::exit(2);
}
