//! End to end over real TCP with real `walletd` processes, driven by `walletctl` and by the Rust
//! client: accounts, funding, transfers, balances, history, idempotent retries, rejections, clean
//! stop, verify, wal dump, restart, and SIGKILL under load. Every test ends on conservation of money.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use net::client::{Client, ClientConfig, ClientError};
use net::protocol::{AccountLookup, Consistency, ErrorCode, Request, Response};
use net::types::{transfer_id_from_parts, CreateAccount, HistoryKind, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use serde_json::Value;

use support::fingerprint;

/// Longest walletd may take to start listening.
const START_TIMEOUT_MS: u64 = 30_000;

struct Walletd {
    child: Child,
    addr: SocketAddr,
    /// Every line walletd wrote (its log, on stderr), as read so far; also echoed to the test's stderr.
    log_lines: Arc<Mutex<Vec<String>>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Walletd {
    fn start(data_dir: &Path, extra: &[&str]) -> Walletd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walletd"))
            .args(["--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0", "--no-pin"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("walletd starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log_lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = std::sync::mpsc::channel();
        // walletd writes nothing on stdout; anything it did write there would be a line outside the log.
        let stdout_lines = log_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                stdout_lines.lock().unwrap().push(format!("(stdout) {line}"));
            }
        });
        let lines = log_lines.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("walletd| {line}");
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let addr = rest.split([' ', '"']).next().unwrap().to_string();
                    let _ = sender.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = receiver.recv_timeout(Duration::from_millis(START_TIMEOUT_MS)).expect("walletd reports its address");
        Walletd { child, addr: addr.parse().unwrap(), log_lines, log_reader: Some(log_reader) }
    }

    /// Every line walletd wrote, once it has exited (the reader has then seen its stderr close).
    fn log_after_exit(&mut self) -> Vec<String> {
        self.log_reader.take().expect("read once").join().expect("log reader");
        self.log_lines.lock().unwrap().clone()
    }

    fn ctl(&self, args: &[&str]) -> (i32, String) {
        walletctl(&[&["--addr", &self.addr.to_string()], args].concat())
    }

    fn client(&self) -> Client {
        Client::connect(ClientConfig::new(vec![self.addr], 1)).expect("client connects")
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn walletctl(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_walletctl")).args(args).output().expect("walletctl runs");
    (output.status.code().unwrap_or(-1), String::from_utf8(output.stdout).unwrap())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn walletctl_moves_money_and_explains_every_balance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = Walletd::start(&data, &[]);

    assert_eq!(node.ctl(&["account", "create", "--id", "1", "--ledger", "USD", "--external"]).0, 0);
    assert_eq!(node.ctl(&["account", "create", "--id", "2", "--ledger", "USD"]).0, 0);
    assert_eq!(node.ctl(&["account", "create", "--id", "3", "--ledger", "USD"]).0, 0);
    assert_eq!(node.ctl(&["account", "create", "--id", "4", "--ledger", "EUR"]).0, 0);
    let (code, out) = node.ctl(&["--json", "account", "create", "--id", "2", "--ledger", "USD"]);
    assert_eq!((code, json(&out)["result"].as_str().unwrap()), (1, "exists"));

    assert_eq!(node.ctl(&["transfer", "--from", "1", "--to", "2", "--amount", "100.00", "--ledger", "USD"]).0, 0);
    assert_eq!(node.ctl(&["transfer", "--from", "2", "--to", "3", "--amount", "30", "--ledger", "USD"]).0, 0);

    // A retry with the same id returns the original outcome and moves nothing. Ids carry their time
    // (an id older than the 24 h window would be refused `id_expired`).
    let retry_id = transfer_id_from_parts(id_timestamp_ms(), 42).to_string();
    let first = node.ctl(&[
        "--json", "transfer", "--from", "1", "--to", "3", "--amount", "5.25", "--ledger", "USD", "--id", &retry_id,
    ]);
    let again = node.ctl(&[
        "--json", "transfer", "--from", "1", "--to", "3", "--amount", "5.25", "--ledger", "USD", "--id", &retry_id,
    ]);
    assert_eq!((first.0, again.0), (0, 0));
    assert_eq!(json(&first.1)["replayed"], false);
    assert_eq!(json(&again.1)["replayed"], true);
    assert_eq!(json(&first.1)["seq"], json(&again.1)["seq"]);
    // LookupTransfers: the transfer as decided, by id.
    let shown = node.ctl(&["--json", "transfer", "show", &retry_id]);
    assert_eq!(shown.0, 0, "{}", shown.1);
    let shown = json(&shown.1);
    assert_eq!((shown["result"].as_str(), shown["seq"].clone()), (Some("ok"), json(&first.1)["seq"].clone()));
    assert_eq!(
        (shown["from"].as_u64(), shown["to"].as_u64(), shown["amount_minor"].as_str()),
        (Some(1), Some(3), Some("525"))
    );
    let text = node.ctl(&["transfer", "show", &retry_id]);
    assert!(text.0 == 0 && text.1.contains("at seq"), "{}", text.1);
    let unknown = transfer_id_from_parts(id_timestamp_ms(), 4242).to_string();
    assert_eq!(node.ctl(&["transfer", "show", &unknown]).0, 1, "an id never sent is not found");
    let conflict = node.ctl(&[
        "--json", "transfer", "--from", "1", "--to", "3", "--amount", "6", "--ledger", "USD", "--id", &retry_id,
    ]);
    assert_eq!((conflict.0, json(&conflict.1)["result"].as_str().unwrap()), (1, "exists_with_different_fields"));

    // Rejections: typed, exit code 1, nothing moves.
    let rejected = |args: &[&str]| {
        let (code, out) = node.ctl(&[&["--json", "transfer"], args].concat());
        assert_eq!(code, 1, "{out}");
        json(&out)["result"].as_str().unwrap().to_string()
    };
    assert_eq!(rejected(&["--from", "3", "--to", "2", "--amount", "1000.00", "--ledger", "USD"]), "insufficient_funds");
    assert_eq!(rejected(&["--from", "2", "--to", "4", "--amount", "1.00", "--ledger", "USD"]), "ledger_mismatch");
    assert_eq!(
        rejected(&["--from", "2", "--to", "99", "--amount", "1.00", "--ledger", "USD"]),
        "credit_account_not_found"
    );
    assert_eq!(rejected(&["--from", "2", "--to", "2", "--amount", "1.00", "--ledger", "USD"]), "same_account");
    assert_eq!(
        node.ctl(&["transfer", "--from", "2", "--to", "3", "--amount", "1.001", "--ledger", "USD"]).0,
        2,
        "3 decimals for USD"
    );
    assert_eq!(node.ctl(&["balance", "99"]).0, 1);

    let balance = |id: &str| json(&node.ctl(&["--json", "balance", id]).1)["balance"].as_str().unwrap().to_string();
    assert_eq!(balance("2"), "70.00");
    assert_eq!(balance("3"), "35.25");
    assert_eq!(balance("1"), "-105.25");

    let (code, out) = node.ctl(&["--json", "history", "2", "--limit", "1"]);
    assert_eq!(code, 0);
    let history = json(&out)["history"].as_array().unwrap().clone();
    let kinds: Vec<&str> = history.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["account_created", "transfer_posted", "transfer_posted"]);
    let after: Vec<&str> = history.iter().map(|e| e["balance_after"].as_str().unwrap()).collect();
    assert_eq!(after, ["0.00", "100.00", "70.00"], "the running balance explains the final one");
    let (code, text) = node.ctl(&["history", "2"]);
    assert!(code == 0 && text.contains("balance") && text.contains("70.00 USD"), "{text}");

    let (code, out) = node.ctl(&["--json", "status"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["partitions"], 1);

    assert!(node.terminate().success(), "SIGTERM stops walletd cleanly");
    // A torn tail, as a crash in the middle of a write leaves it: the audit tools must read past it
    // and leave it where it is (only the node's own recovery repairs a log).
    let torn_segment = plant_torn_tail(&data.join("shard-000/wal"));
    let before = fingerprint::tree_fingerprint(&data);
    let (code, out) = walletctl(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verify: OK"));
    let (code, out) = walletctl(&["wal", "dump", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("transfer_posted") && out.contains("transfer_rejected") && out.contains("insufficient_funds"),
        "{out}"
    );
    let (code, out) = walletctl(&["--json", "wal", "dump", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Past states: account 2 as it was after each event of its history, by seq and by time.
    let dir = data.to_str().unwrap();
    let state = |bounds: &[&str]| {
        let (code, out) = walletctl(&[&["--json", "state", "--data-dir", dir, "--account", "2"], bounds].concat());
        (code, json(&out))
    };
    for (entry, balance) in history.iter().zip(["0.00", "100.00", "70.00"]) {
        let seq = entry["seq"].as_u64().unwrap().to_string();
        let (code, past) = state(&["--at-seq", &seq]);
        assert_eq!((code, past["account"]["balance"].as_str()), (0, Some(balance)), "after seq {seq}: {past}");
        assert_eq!(past["seq"].as_u64().unwrap().to_string(), seq, "the state is the one right after that event");
        let time_ns = entry["timestamp_ns"].as_u64().unwrap().to_string();
        let (code, past) = state(&["--at-time", &time_ns]);
        assert_eq!((code, past["account"]["balance"].as_str()), (0, Some(balance)), "at {time_ns} ns: {past}");
    }
    let (code, newest) = state(&[]);
    assert_eq!((code, newest["account"]["balance"].as_str()), (0, Some("70.00")));
    assert_eq!(newest["seq"], newest["log_last_seq"], "no bound: the newest state the log holds");
    let created = history[0]["seq"].as_u64().unwrap();
    let (code, past) = state(&["--at-seq", &(created - 1).to_string()]);
    assert_eq!((code, &past["account"]), (1, &Value::Null), "before its creation the account did not exist: {past}");
    let (code, past) = state(&["--at-time", "1970-01-01T00:00:01Z"]);
    assert_eq!((code, past["seq"].as_u64(), past["accounts"].as_u64()), (1, Some(0), Some(0)), "{past}");
    let (code, text) = walletctl(&["state", "--data-dir", dir, "--partition", "0"]);
    assert!(code == 0 && text.contains(&format!("state after seq {}", newest["seq"])), "{text}");
    let refused = Command::new(env!("CARGO_BIN_EXE_walletctl"))
        .args(["state", "--data-dir", dir, "--partition", "7"])
        .output()
        .expect("walletctl runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("partition 7 does not exist: the node has 1 partitions"), "{stderr}");
    fingerprint::assert_unchanged(&before, &fingerprint::tree_fingerprint(&data), "verify, wal dump and state");
    assert!(has_torn_tail_marker(&torn_segment), "the audit left the torn tail in place");

    let node = Walletd::start(&data, &[]);
    assert_eq!(json(&node.ctl(&["--json", "balance", "2"]).1)["balance"], "70.00", "state survives a restart");
    assert!(!has_torn_tail_marker(&torn_segment), "the node's own recovery zeroes the torn tail");
    // While a node runs, the audit tools refuse its directory rather than read a log being written.
    let (code, out) = walletctl(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert_ne!(code, 0, "verify of a running node's directory: {out}");
    node.terminate();
}

/// Bytes a torn write leaves: non-zero garbage after the last whole record of the newest segment.
const TORN_TAIL_MARKER: &[u8] = b"\xde\xad torn write \xbe\xef";
/// How far past the last non-zero byte the garbage goes: beyond any zero run inside a record's payload.
const TORN_TAIL_GAP_BYTES: u64 = 8192;

fn newest_segment(wal_dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

fn plant_torn_tail(wal_dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let segment = newest_segment(wal_dir);
    let bytes = std::fs::read(&segment).unwrap();
    let last_non_zero = bytes.iter().rposition(|&b| b != 0).expect("the segment holds records") as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(TORN_TAIL_MARKER, last_non_zero + TORN_TAIL_GAP_BYTES).unwrap();
    segment
}

fn has_torn_tail_marker(segment: &Path) -> bool {
    let bytes = std::fs::read(segment).unwrap();
    bytes.windows(TORN_TAIL_MARKER.len()).any(|window| window == TORN_TAIL_MARKER)
}

#[test]
fn a_bad_frame_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Walletd::start(&dir.path().join("node"), &[]);
    let mut good = node.client();
    good.ping().expect("ping");
    let mut bad = TcpStream::connect(node.addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = bad.read_to_end(&mut answer);
    assert!(answer.len() >= net::protocol::HEADER_BYTES, "an error frame comes back before the close");
    assert_eq!(&answer[0..4], b"WALT");
    let kind = u16::from_le_bytes([answer[6], answer[7]]);
    assert_eq!(kind, net::protocol::kind::ERROR);
    good.ping().expect("the other connection is untouched");
    let mut wrong_cluster = Client::connect(ClientConfig::new(vec![node.addr], 7)).unwrap();
    assert!(wrong_cluster.ping().is_err(), "a wrong cluster id is refused");
    good.ping().expect("still untouched");
    node.terminate();
}

const LOAD_ACCOUNTS: u64 = 20;
const LOAD_EXTERNAL: u64 = 1000;
const LOAD_FUNDING: u64 = 1_000_000_000;
const LOAD_BATCH: u64 = 200;

/// The time in every id this test makes: now, once.
fn id_timestamp_ms() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64
    })
}

fn load_transfer(n: u64) -> Transfer {
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let debit = 1 + mixed % LOAD_ACCOUNTS;
    let credit = 1 + (debit - 1 + 1 + (mixed >> 32) % (LOAD_ACCOUNTS - 1)) % LOAD_ACCOUNTS;
    Transfer {
        id: transfer_id_from_parts(id_timestamp_ms(), (7u128 << 64) | n as u128),
        debit_account_id: debit,
        credit_account_id: credit,
        amount: 1 + mixed % 97,
        ledger: 840,
        flags: 0,
        user_data: 0,
    }
}

fn balances(client: &mut Client) -> Vec<i64> {
    let ids: Vec<u64> = (1..=LOAD_ACCOUNTS).chain([LOAD_EXTERNAL]).collect();
    client
        .lookup_accounts(Consistency::Linearizable, &ids)
        .unwrap()
        .iter()
        .map(|l| match l {
            AccountLookup::Found(a) => a.balance,
            AccountLookup::NotFound { id, .. } => panic!("account {id} lost"),
        })
        .collect()
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_transfer_and_applies_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    sigkill_under_load(&dir.path().join("node"), &[], LOAD_BATCH, |_| true);
}

/// The same with the log purged under the load: 8 MiB segments, no sealed segment kept for history,
/// a base after every checkpoint that needs one. The kill lands once a base exists and the log's first
/// segment is no longer the one at index 1, while the retention thread keeps making bases and freeing
/// segments; restart must resume from the store over the purged log, and verify from the base.
#[test]
fn sigkill_while_the_log_is_purged_loses_nothing_and_verify_replays_from_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walletd.toml");
    std::fs::write(
        &config,
        "[engine]\nwal_segment_bytes = 8388608\nlog_retention_bytes = 0\ncheckpoint_interval_ms = 20\nidempotency_ids_max = 1024\n",
    )
    .unwrap();
    let data = dir.path().join("node");
    let purged = |data: &Path| {
        let wal = data.join("shard-000/wal");
        let first_is_one = std::fs::read_dir(&wal)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy() == format!("{:020}.wal", 1))));
        let has_base = std::fs::read_dir(data.join("shard-000"))
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("base-"))));
        has_base && !first_is_one
    };
    sigkill_under_load(&data, &["--config", config.to_str().unwrap()], 4000, purged);
    let (code, out) = walletctl(&["--json", "verify", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let shard = &json(&out)["shards"][0];
    assert!(shard["base_index"].as_u64().unwrap() > 0 && shard["log_first_index"].as_u64().unwrap() > 1, "{out}");
}

/// Loads a node with batches of `batch` transfers from one client, SIGKILLs it once `kill_when(data)`
/// holds (and at least 400 ms passed), restarts it and checks that every acknowledged transfer is there,
/// none is applied twice, the unacknowledged tail applies exactly once, and `verify` is clean.
fn sigkill_under_load(data: &Path, extra: &[&str], batch: u64, kill_when: impl Fn(&Path) -> bool) {
    let node = Walletd::start(data, extra);
    let mut setup = node.client();
    let mut accounts: Vec<CreateAccount> =
        (1..=LOAD_ACCOUNTS).map(|id| CreateAccount { id, ledger: 840, flags: 0, user_data: 0 }).collect();
    accounts.push(CreateAccount { id: LOAD_EXTERNAL, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 });
    assert!(setup.create_accounts(&accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    let funding: Vec<Transfer> = (1..=LOAD_ACCOUNTS)
        .map(|id| Transfer {
            id: transfer_id_from_parts(id_timestamp_ms(), (9u128 << 64) | id as u128),
            debit_account_id: LOAD_EXTERNAL,
            credit_account_id: id,
            amount: LOAD_FUNDING,
            ledger: 840,
            flags: 0,
            user_data: 0,
        })
        .collect();
    assert!(setup.create_transfers(&funding).unwrap().iter().all(|r| r.code == ResultCode::Ok));

    // The sender records which batches were acknowledged; the batch in flight at the kill is unknown.
    let acked = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, stop, mut client) = (acked.clone(), stop.clone(), node.client());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut next = 1;
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let transfers: Vec<Transfer> = (next..next + batch).map(load_transfer).collect();
                match client.create_transfers(&transfers) {
                    Ok(results) => {
                        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
                        next += batch;
                        *acked.lock().unwrap() = next - 1;
                    }
                    Err(_) => break,
                }
            }
            next
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !kill_when(data) {
        assert!(Instant::now() < deadline, "the kill condition never held");
        std::thread::sleep(Duration::from_millis(10));
    }
    node.sigkill();
    stop.store(true, Ordering::Release);
    let sent_end = sender.join().unwrap() + batch;
    let acked_last = *acked.lock().unwrap();
    assert!(acked_last > 0, "nothing was acknowledged before the kill: the test proved nothing");

    let node = Walletd::start(data, extra);
    let mut client = node.client();
    let before = balances(&mut client);
    assert_eq!(before.iter().map(|&b| b as i128).sum::<i128>(), 0, "the ledger sums to zero after the crash");
    assert!(before[..LOAD_ACCOUNTS as usize].iter().all(|&b| b >= 0));
    // Every acknowledged transfer is there: resending it is a replay that changes nothing.
    for start in (1..=acked_last).step_by(batch as usize) {
        let transfers: Vec<Transfer> = (start..start + batch).map(load_transfer).collect();
        for result in client.create_transfers_retrying(&transfers).unwrap() {
            assert_eq!(result.code, ResultCode::Ok);
            assert!(result.is_replayed(), "an acknowledged transfer was lost");
        }
    }
    assert_eq!(before, balances(&mut client), "replays moved money");
    // Resending the unacknowledged tail applies each transfer exactly once, whatever the crash kept.
    for start in (acked_last + 1..sent_end).step_by(batch as usize) {
        let transfers: Vec<Transfer> = (start..start + batch).map(load_transfer).collect();
        assert!(client.create_transfers_retrying(&transfers).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    }
    let mut expected = vec![LOAD_FUNDING as i64; LOAD_ACCOUNTS as usize];
    expected.push(-((LOAD_FUNDING * LOAD_ACCOUNTS) as i64));
    let last = acked_last.max(sent_end - 1);
    for n in 1..=last {
        let t = load_transfer(n);
        expected[t.debit_account_id as usize - 1] -= t.amount as i64;
        expected[t.credit_account_id as usize - 1] += t.amount as i64;
    }
    assert_eq!(balances(&mut client), expected, "each transfer applied exactly once");
    assert!(node.terminate().success());
    let (code, out) = walletctl(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn walletd_stops_cleanly_while_status_requests_are_in_flight() {
    // walletd takes sole ownership of the node to shut it down; a status answer still on its way
    // through the shards must not hold a reference to it (it did, and the stop failed).
    let dir = tempfile::tempdir().unwrap();
    for round in 0..6 {
        let walletd = Walletd::start(dir.path(), &["--partitions", "4", "--shards", "2"]);
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<_> = (0..3)
            .map(|_| {
                let (stop, mut client) = (stop.clone(), walletd.client());
                std::thread::spawn(move || {
                    let mut answered = 0u64;
                    while !stop.load(Ordering::SeqCst) && client.status().is_ok() {
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let status = walletd.terminate();
        stop.store(true, Ordering::SeqCst);
        let answered: u64 = pollers.into_iter().map(|p| p.join().unwrap()).sum();
        assert!(answered > 0, "round {round}: no status was answered");
        assert!(status.success(), "round {round}: walletd stopped with {status}");
    }
}

/// `walletd --help` states the defaults a new node really gets (it once said 64 partitions and a shard
/// per core while a new node got 1 and 1), and a node started without layout flags reports them.
#[test]
fn walletd_help_states_the_defaults_a_new_node_gets() {
    let defaults = engine::config::NodeConfig::default();
    let output = Command::new(env!("CARGO_BIN_EXE_walletd")).arg("--help").output().expect("walletd --help runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // clap wraps long lines; join them back before looking for a sentence.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let states = |flag: &str, value: String| {
        let after_flag = help.split(flag).nth(1).unwrap_or_else(|| panic!("no {flag} in: {help}"));
        let description = after_flag.split(" --").next().unwrap();
        assert!(
            description.contains(&format!("Default: {value}")),
            "{flag} should state default {value}: {description}"
        );
    };
    states("--partitions <PARTITIONS>", defaults.partitions.to_string());
    states("--shards <SHARDS>", defaults.shards.to_string());
    states("--cluster-id <CLUSTER_ID>", defaults.cluster_id.to_string());
    states("--listen <LISTEN>", tools::config::LISTEN_DEFAULT.to_string());
    states("--data-dir <DATA_DIR>", defaults.data_dir.display().to_string());
    assert!(!help.contains("one per core"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let node = Walletd::start(&dir.path().join("node"), &[]);
    let (code, out) = node.ctl(&["--json", "status"]);
    assert_eq!(code, 0, "{out}");
    let status = json(&out);
    let first = &status; // a single node answers with its own object, not a list of members
    assert_eq!(first["partitions"].as_u64(), Some(u64::from(defaults.partitions)), "{out}");
    assert_eq!(first["shards"].as_u64(), Some(u64::from(defaults.shards)), "{out}");
    assert!(node.terminate().success());
}

/// Every line a single node writes, in either format, is a log record with a UTC timestamp, a level and
/// the node id (1 for a single node); the records cover start, recovery, readiness and the clean stop.
#[test]
fn every_line_walletd_writes_is_a_timestamped_record_with_level_and_node_id() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Walletd::start(dir.path(), &["--log-format", format]);
        let (code, _) = node.ctl(&["account", "create", "--id", "1", "--ledger", "USD", "--external"]);
        assert_eq!(code, 0);
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
        assert!(node.child.wait().unwrap().success());
        let lines = node.log_after_exit();
        let messages: Vec<String> =
            lines.iter().map(|line| support::log_lines::assert_record(line, format, 1)).collect();
        for expected in
            ["starting: data", "recovered shard 0", "listening on 127.0.0.1:", "stopping", "stopped cleanly"]
        {
            assert!(
                messages.iter().any(|m| m.starts_with(expected) || m.contains(expected)),
                "{format}: no {expected:?} in {lines:#?}"
            );
        }
    }
}

fn account(id: u64, flags: u32) -> CreateAccount {
    CreateAccount { id, ledger: 840, flags, user_data: 0 }
}

fn usd_transfer(debit: u64, credit: u64, amount: u64) -> Transfer {
    Transfer {
        id: net::client::new_transfer_id(),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 840,
        flags: 0,
        user_data: 0,
    }
}

/// Issue 16, items 1, 8, 9, 11 and 13: what ARCHITECTURE.md's protocol section says a client gets,
/// against a real node: the values a client needs, retry semantics, lookups of missing accounts and
/// history pages of every limit.
#[test]
fn a_real_node_answers_as_the_protocol_section_says() {
    let dir = tempfile::tempdir().unwrap();
    let node = Walletd::start(dir.path(), &[]);
    let mut client = node.client();

    // Item 11: the external flag is bit 0, no other account flag and no transfer flag exists; ids 0
    // and u64::MAX are reserved; a ledger is a non-zero u32 (ISO 4217 numeric code, USD = 840).
    let results = client
        .create_accounts(&[
            account(1, ACCOUNT_FLAG_EXTERNAL),
            account(2, 0),
            account(3, 1 << 1),
            account(0, 0),
            account(u64::MAX, 0),
            CreateAccount { ledger: 0, ..account(4, 0) },
        ])
        .unwrap();
    let codes: Vec<ResultCode> = results.iter().map(|r| r.code).collect();
    use ResultCode::*;
    assert_eq!(codes, [Ok, Ok, InvalidFlags, ReservedId, ReservedId, InvalidLedger]);
    let flagged = Transfer { flags: 1, ..usd_transfer(1, 2, 5) };
    let zero_id = Transfer { id: 0, ..usd_transfer(1, 2, 5) };
    let codes: Vec<ResultCode> = client.create_transfers(&[flagged, zero_id]).unwrap().iter().map(|r| r.code).collect();
    assert_eq!(codes, [InvalidFlags, ReservedId]);

    // Item 13: every decided item, rejections included, takes the partition's next sequence.
    let deposit = usd_transfer(1, 2, 10_000); // 100.00 USD in minor units
    let overdraft = usd_transfer(2, 1, 1_000_000);
    let results = client.create_transfers(&[deposit, overdraft, deposit]).unwrap();
    assert_eq!((results[0].code, results[0].is_replayed()), (Ok, false));
    assert_eq!((results[1].code, results[1].seq), (InsufficientFunds, results[0].seq + 1), "a rejection takes a seq");
    // A duplicate id inside one batch is a retry of the earlier item: its outcome, replayed.
    assert_eq!((results[2].code, results[2].seq, results[2].is_replayed()), (Ok, results[0].seq, true));
    let retry = client.create_transfers(&[overdraft]).unwrap()[0];
    assert_eq!((retry.code, retry.seq, retry.is_replayed()), (InsufficientFunds, results[1].seq, true));
    let changed = Transfer { amount: 7, ..deposit };
    let conflict = client.create_transfers(&[changed]).unwrap()[0];
    assert_eq!((conflict.code, conflict.is_replayed()), (ExistsWithDifferentFields, false));
    assert_eq!(conflict.seq, results[1].seq + 1, "a conflicting id is a logged rejection: a new seq");
    // Re-creating an account is not a replay: `exists`, no replayed flag, and a new seq of its own.
    let again = client.create_accounts(&[account(2, 0)]).unwrap()[0];
    assert_eq!((again.code, again.is_replayed(), again.seq), (Exists, false, conflict.seq + 1));
    let different = client.create_accounts(&[account(2, ACCOUNT_FLAG_EXTERNAL)]).unwrap()[0];
    assert_eq!(different.code, ExistsWithDifferentFields);

    // Item 8: a missing account comes back with code 14 (account_not_found) and only its id.
    let found = client.lookup_accounts(Consistency::Any, &[2, 99]).unwrap();
    assert!(matches!(found[0], AccountLookup::Found(a) if a.id == 2 && a.balance == 10_000));
    assert_eq!(found[1], AccountLookup::NotFound { id: 99, code: AccountNotFound });
    assert_eq!(AccountNotFound as u16, 14);

    // Items 1 and 9: history holds creations and postings only (kind 3 is never sent: rejected
    // attempts are not in an account's history); every limit is answered on the same connection.
    for limit in [0, 1, 8190, 8191, u32::MAX] {
        let page = client.account_history(2, 0, limit).unwrap();
        let kinds: Vec<HistoryKind> = page.entries.iter().map(|e| e.kind).collect();
        if limit == 1 {
            assert_eq!(kinds, [HistoryKind::TransferPosted]);
            assert!(page.next_from_seq.is_some());
        } else {
            assert_eq!(kinds, [HistoryKind::TransferPosted, HistoryKind::AccountCreated], "limit {limit}");
            assert_eq!(page.next_from_seq, None);
        }
        assert!(!page.account_not_found);
    }
    // from_seq: at or above the newest event starts at the newest, below the creation is empty.
    let newest = client.account_history(2, 0, 10).unwrap().entries;
    assert_eq!(client.account_history(2, u64::MAX - 1, 10).unwrap().entries, newest);
    assert_eq!(client.account_history(2, newest[0].seq + 1_000, 10).unwrap().entries, newest);
    let before_creation = client.account_history(2, newest[1].seq - 1, 10).unwrap();
    assert!(before_creation.entries.is_empty() && before_creation.next_from_seq.is_none());
    assert!(!before_creation.account_not_found);
    let missing = client.account_history(99, 0, 10).unwrap();
    assert!(missing.account_not_found && missing.entries.is_empty() && missing.next_from_seq.is_none());
    // A seq between the account's own events that is not one of them (here the refused creation of
    // account 3, right after account 2's) is refused with its own code, not `Internal`; the connection
    // stays open.
    let between = newest[1].seq + 1;
    assert!(between < newest[0].seq, "account 2's creation and its deposit are not adjacent");
    match client.account_history(2, between, 10) {
        Err(ClientError::Server { code: ErrorCode::InvalidCursor, message }) => {
            assert!(message.contains(&format!("no history event at seq {between}")), "{message}")
        }
        other => panic!("a cursor between events should be refused InvalidCursor, got {other:?}"),
    }
    client.ping().expect("nothing above closed the connection");
    node.terminate();
}

/// Issue 16, item 7: a single node agrees with a cluster on at_least: a lookup names a sequence its
/// partition has not reached, waits until a write reaches it, and is refused `Unavailable`
/// (retryable) once `read_wait_timeout_ms` passes without it.
#[test]
fn a_single_node_waits_for_at_least_seq_like_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walletd.toml");
    std::fs::write(&config, "[engine]\nread_wait_timeout_ms = 2000\n").unwrap();
    let node = Walletd::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let mut client = node.client();
    client.create_accounts(&[account(1, ACCOUNT_FLAG_EXTERNAL), account(2, 0)]).unwrap();
    let first = client.create_transfers(&[usd_transfer(1, 2, 5)]).unwrap()[0];
    let at_least = |seq| Request::lookup(Consistency::AtLeast(seq), &[2]);

    // Reached already: answered at once.
    let started = Instant::now();
    let now = client.lookup_accounts(Consistency::AtLeast(first.seq), &[2]).unwrap();
    assert!(matches!(now[0], AccountLookup::Found(a) if a.balance == 5));
    assert!(started.elapsed() < Duration::from_millis(1000));

    // One ahead: waits until another connection's transfer takes that seq, then shows it.
    let waiting = client.send(&at_least(first.seq + 1)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut writer = node.client();
    let second = writer.create_transfers(&[usd_transfer(1, 2, 7)]).unwrap()[0];
    assert_eq!(second.seq, first.seq + 1);
    let (request_id, answer) = client.recv().unwrap();
    assert_eq!(request_id, waiting);
    let Response::Accounts(found) = answer else { panic!("{answer:?}") };
    assert!(matches!(found[0], AccountLookup::Found(a) if a.balance == 12), "{found:?}");

    // Never reached: refused Unavailable after the timeout, and the connection stays usable.
    let started = Instant::now();
    let waiting = client.send(&at_least(second.seq + 100)).unwrap();
    let (request_id, answer) = client.recv().unwrap();
    assert_eq!(request_id, waiting);
    let Response::Error { code, message } = answer else { panic!("{answer:?}") };
    assert_eq!(code, net::protocol::ErrorCode::Unavailable, "{message}");
    assert!(code.is_retryable());
    assert!(message.contains("read_wait_timeout_ms"), "{message}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_millis(4000), "{waited:?}");
    client.ping().expect("the connection survives the refusal");
    node.terminate();
}

/// Issue 16, item 12: a single node's cluster id is 1 unless `--cluster-id` sets it when the data
/// directory is created; it is kept on later starts without the flag, another one is refused, and a
/// client of another cluster is answered `WrongClusterId` in a frame that carries the node's own id.
#[test]
fn the_cluster_id_is_set_at_creation_and_every_frame_must_carry_it() {
    use net::protocol::{encode_request, ErrorCode, FrameDecoder, Message};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let node = Walletd::start(&data, &["--cluster-id", "0x2a"]);
    Client::connect(ClientConfig::new(vec![node.addr], 0x2a)).unwrap().ping().expect("the node's own id");
    let mut stream = TcpStream::connect(node.addr).unwrap();
    let mut frame = Vec::new();
    encode_request(&mut frame, 1, 9, &Request::Ping).unwrap();
    stream.write_all(&frame).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let (error, _) = FrameDecoder::new(0x2a).decode(&answer).expect("the node's id").expect("a whole frame");
    assert_eq!(error.header.cluster_id, 0x2a);
    assert_eq!(error.header.request_id, 9);
    assert!(matches!(error.message, Message::Response(Response::Error { code: ErrorCode::WrongClusterId, .. })));
    assert!(node.terminate().success());

    let node = Walletd::start(&data, &[]);
    Client::connect(ClientConfig::new(vec![node.addr], 0x2a)).unwrap().ping().expect("kept without the flag");
    assert!(node.terminate().success());
    let refused = Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0", "--no-pin", "--cluster-id", "7"])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("cluster id") && log.contains("ERROR node=1"), "{log}");

    let fresh = Walletd::start(&dir.path().join("fresh"), &[]);
    Client::connect(ClientConfig::new(vec![fresh.addr], 1)).unwrap().ping().expect("1 by default");
    assert!(fresh.terminate().success());
}

/// `walletctl status --wait-for-leaders MS` gives up once MS have passed with no node answering: a
/// non-zero exit, not an endless wait and not an early one (the scripts rely on both).
#[test]
fn status_wait_for_leaders_gives_up_at_its_deadline() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap().to_string();
    drop(unused);
    let started = Instant::now();
    let (code, out) = walletctl(&["--addr", &addr, "status", "--wait-for-leaders", "600"]);
    let waited = started.elapsed();
    assert_ne!(code, 0, "no node answered, yet status succeeded: {out}");
    assert!(waited >= Duration::from_millis(600), "gave up after {waited:?}, before its deadline");
    assert!(waited < Duration::from_millis(600 + 5_000), "kept waiting {waited:?} past its deadline");
}
