//! Log append throughput: one batch record per write + fdatasync ("sync"), and pipelined group
//! commit where appends continue while a sync is in flight ("pipelined").
//!
//! cargo run --release -p wal --example append_bench -- [dir] [seconds_per_run] [runs]
//! Run it on the real disk (default dir: /root/.cache/wal-bench), not tmpfs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wal::{Wal, WalError, WalOptions};

const TRANSFER_BYTES: usize = 104;
const BATCH_HEADER_BYTES: usize = 32;
const BATCH_TRANSFERS: [usize; 4] = [1, 64, 1024, 8190];
/// Keeps disk use bounded: old segments go once durable.
const REMOVE_PREFIX_EVERY_BATCHES: u64 = 256;

struct Figures {
    batches_per_second: f64,
    syncs_per_second: f64,
}

fn main() -> Result<(), WalError> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| "/root/.cache/wal-bench".into()));
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let duration = Duration::from_secs_f64(seconds);
    std::fs::create_dir_all(&root).map_err(|e| io_error(&root, e))?;
    println!("dir {} | {runs} runs x {seconds} s, median", root.display());
    println!("mode       transfers/batch  batch_bytes    batches/s      syncs/s    transfers/s      MB/s");
    for pipelined in [false, true] {
        for transfers in BATCH_TRANSFERS {
            let payload = vec![0xABu8; BATCH_HEADER_BYTES + TRANSFER_BYTES * transfers];
            let mut results = Vec::new();
            for _ in 0..runs {
                let dir = tempfile::tempdir_in(&root).map_err(|e| io_error(&root, e))?;
                let figures = if pipelined {
                    run_pipelined(dir.path(), &payload, duration)?
                } else {
                    run_sync(dir.path(), &payload, duration)?
                };
                results.push(figures);
            }
            results.sort_by(|a, b| a.batches_per_second.total_cmp(&b.batches_per_second));
            let median = &results[results.len() / 2];
            let batch_bytes = payload.len() + wal::RECORD_HEADER_BYTES;
            println!(
                "{:<10} {transfers:>15} {batch_bytes:>12} {:>12.0} {:>12.0} {:>14.0} {:>9.1}",
                if pipelined { "pipelined" } else { "sync" },
                median.batches_per_second,
                median.syncs_per_second,
                median.batches_per_second * transfers as f64,
                median.batches_per_second * batch_bytes as f64 / 1e6,
            );
        }
    }
    Ok(())
}

/// One batch, one write + fdatasync, wait, repeat: the latency-bound floor.
fn run_sync(dir: &Path, payload: &[u8], duration: Duration) -> Result<Figures, WalError> {
    let (mut wal, _) = Wal::open(dir, WalOptions::default())?;
    let started = Instant::now();
    let mut batches = 0u64;
    while started.elapsed() < duration {
        wal.append(wal.last_index() + 1, 1, 0, payload)?;
        wal.wait()?;
        batches += 1;
        if batches.is_multiple_of(REMOVE_PREFIX_EVERY_BATCHES) {
            wal.remove_prefix(wal.durable_index())?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_second = batches as f64 / seconds;
    Ok(Figures { batches_per_second: per_second, syncs_per_second: per_second })
}

/// Appends keep coming while a sync is in flight; each completed sync carries everything
/// appended meanwhile. Counts only durable batches.
fn run_pipelined(dir: &Path, payload: &[u8], duration: Duration) -> Result<Figures, WalError> {
    let (mut wal, _) = Wal::open(dir, WalOptions::default())?;
    let started = Instant::now();
    let (mut syncs, mut durable, mut appended) = (0u64, 0u64, 0u64);
    while started.elapsed() < duration {
        match wal.append(wal.last_index() + 1, 1, 0, payload) {
            Ok(()) => appended += 1,
            Err(WalError::PendingFull { .. }) => std::hint::spin_loop(),
            Err(error) => return Err(error),
        }
        let now_durable = wal.poll()?;
        if now_durable > durable {
            syncs += 1;
            durable = now_durable;
        }
        if appended.is_multiple_of(REMOVE_PREFIX_EVERY_BATCHES) {
            wal.remove_prefix(durable)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Figures { batches_per_second: durable as f64 / seconds, syncs_per_second: syncs as f64 / seconds })
}

fn io_error(path: &Path, source: std::io::Error) -> WalError {
    WalError::Io { operation: "bench setup", path: path.to_path_buf(), source }
}
