//! A real child process appends in a loop and is SIGKILLed at a random moment; everything it
//! reported durable must be present and intact after reopening, run after run in one directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wal::{Wal, WalOptions};

const RUNS: u64 = 20;
const SEGMENT_BYTES: u64 = 256 * 1024;

fn payload_for(index: u64, term: u64) -> Vec<u8> {
    let length = (index.wrapping_mul(37) % 1000) as usize;
    (0..length).map(|i| (index.wrapping_mul(31) ^ term.wrapping_mul(7) ^ i as u64) as u8).collect()
}

/// Runs the child until killed; returns the highest index it reported durable.
fn run_child_and_kill(dir: &std::path::Path, seed: u64, run_ms: u64) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-writer"))
        .arg(dir)
        .arg(seed.to_string())
        .arg(SEGMENT_BYTES.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map(|line| line.expect("line").parse::<u64>().expect("index")).max().unwrap_or(0)
    });
    std::thread::sleep(Duration::from_millis(run_ms));
    child.kill().expect("SIGKILL child");
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "child died by the signal, not by a panic exit 0");
    reader.join().expect("reader thread")
}

#[test]
fn sigkilled_writer_never_loses_reported_durable_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut reported_max = 0;
    let mut truncations = 0;
    for run in 1..=RUNS {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let reported = run_child_and_kill(dir.path(), random, 30 + random % 170);
        reported_max = reported_max.max(reported);
        let options = WalOptions { segment_bytes: SEGMENT_BYTES, payload_bytes_max: 4096, ..WalOptions::default() };
        let (wal, report) = Wal::open(dir.path(), options).expect("reopen after SIGKILL");
        truncations += usize::from(report.truncated_bytes > 0);
        assert!(
            wal.last_index() >= reported_max,
            "run {run}: reported {reported_max} durable, log ends at {}",
            wal.last_index()
        );
        let mut expected = 1;
        for record in wal.reader(1).expect("reader") {
            let record = record.expect("record verifies");
            assert_eq!(record.index, expected);
            assert_eq!(record.payload, payload_for(record.index, record.term).as_slice());
            expected += 1;
        }
        assert_eq!(expected, wal.last_index() + 1);
    }
    assert!(reported_max > 1000, "children made progress: {reported_max}");
    eprintln!("{RUNS} kills, {reported_max} records, {truncations} torn tails, {:?}", started.elapsed());
}
