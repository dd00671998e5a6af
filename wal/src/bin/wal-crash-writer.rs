//! Test helper for the SIGKILL conformance test: appends forever into `dir` and prints each new
//! durable index on its own line, flushed, only after `poll`/`wait` reported it durable. The
//! parent kills it at a random moment and checks that every printed index survived.
//!
//! Usage: wal-crash-writer <dir> <seed> <segment_bytes>

use std::io::Write;
use std::path::PathBuf;
use wal::{Wal, WalOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("dir argument"));
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).expect("seed argument");
    let segment_bytes: u64 = args.next().and_then(|s| s.parse().ok()).expect("segment_bytes");
    let options = WalOptions { segment_bytes, payload_bytes_max: 4096, ..WalOptions::default() };
    let (mut wal, _) = Wal::open(&dir, options).expect("open");
    // Each run writes a higher term than any before it, so terms never drop across restarts.
    let term = wal.term_at(wal.last_index()).unwrap_or(0) + 1;
    let mut random = seed | 1;
    let mut reported = wal.durable_index();
    let stdout = std::io::stdout();
    loop {
        random = xorshift(random);
        for _ in 0..random % 64 + 1 {
            let index = wal.last_index() + 1;
            let payload = payload_for(index, term);
            wal.append(index, term, (index % 251) as u8, &payload).expect("append");
        }
        let durable = if random.is_multiple_of(5) { wal.wait() } else { wal.poll() }.expect("durable");
        if durable > reported {
            reported = durable;
            let mut out = stdout.lock();
            writeln!(out, "{durable}").expect("pipe");
            out.flush().expect("pipe");
        }
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Must match `tests/common::payload_for`, longer to fill segments faster.
fn payload_for(index: u64, term: u64) -> Vec<u8> {
    let length = (index.wrapping_mul(37) % 1000) as usize;
    (0..length).map(|i| (index.wrapping_mul(31) ^ term.wrapping_mul(7) ^ i as u64) as u8).collect()
}
