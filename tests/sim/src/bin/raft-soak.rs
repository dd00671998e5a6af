//! Soak testing: runs many seeds and stops at the first failure with its replay command.
//! `cargo run --release -p raft-sim --bin raft-soak -- --seeds 1000000 [--first 0] [--replicas 3|5|both] [--steps 2000]`
//! A failure with `--steps` replays only through the soak command with the same arguments.

use std::time::Instant;

fn main() {
    let mut seeds: u64 = 10_000;
    let mut first: u64 = 0;
    let mut sizes = vec![3, 5];
    let mut steps_per_run: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&arg));
        match arg.as_str() {
            "--seeds" => seeds = value.parse().unwrap_or_else(|_| usage(&arg)),
            "--first" => first = value.parse().unwrap_or_else(|_| usage(&arg)),
            "--steps" => steps_per_run = Some(value.parse().unwrap_or_else(|_| usage(&arg))),
            "--replicas" => {
                sizes = match value.as_str() {
                    "both" => vec![3, 5],
                    n => vec![n.parse().unwrap_or_else(|_| usage(&arg))],
                }
            }
            _ => usage(&arg),
        }
    }
    let started = Instant::now();
    let mut steps = 0u64;
    for seed in first..first + seeds {
        for &replicas in &sizes {
            let result = match steps_per_run {
                Some(steps) => raft_sim::run_seed_steps(seed, replicas, steps),
                None => raft_sim::run_seed(seed, replicas),
            };
            match result {
                Ok(stats) => steps += stats.steps,
                Err(failure) => {
                    eprintln!("FAILED {failure}");
                    if let Some(steps) = steps_per_run {
                        eprintln!(
                            "with --steps, replay: cargo run --release -p raft-sim --bin raft-soak -- --first {seed} --seeds 1 --replicas {replicas} --steps {steps}"
                        );
                    }
                    std::process::exit(1);
                }
            }
        }
        if (seed - first + 1).is_multiple_of(10_000) {
            eprintln!("{} seeds ok, {:.0} steps/s", seed - first + 1, rate(steps, started));
        }
    }
    println!(
        "{seeds} seeds x {sizes:?} replicas ok in {:.1}s, {steps} steps, {:.0} steps/s",
        started.elapsed().as_secs_f64(),
        rate(steps, started)
    );
}

fn rate(steps: u64, started: Instant) -> f64 {
    steps as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

fn usage(arg: &str) -> ! {
    eprintln!("bad argument {arg}; usage: raft-soak [--seeds N] [--first S] [--replicas 3|5|both] [--steps N]");
    std::process::exit(2);
}
