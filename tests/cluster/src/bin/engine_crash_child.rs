//! Child process for the engine crash test: opens a node on a data directory and submits transfers
//! forever, printing each acknowledged batch as `ack <first transfer number> <count>` on stdout
//! (flushed), so the parent knows exactly what was acknowledged before it SIGKILLs this process.
//!
//! Usage: engine_crash_child DATA_DIR ACCOUNTS START_NUMBER
//! Transfer number n is a pure function of n (see wallet_tests::crash_workload), so the parent can
//! rebuild every transfer it may have sent.

use std::io::Write;

use engine::Node;
use wallet_tests::crash_workload;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data_dir = &args[1];
    let accounts: u64 = args[2].parse().expect("ACCOUNTS is a number");
    let mut next: u64 = args[3].parse().expect("START_NUMBER is a number");
    let (node, _) = Node::open(crash_workload::node_config(data_dir)).expect("node opens");
    let setup = node.create_accounts_blocking(crash_workload::accounts(accounts)).expect("accounts answered");
    assert!(setup.iter().all(|r| matches!(r.code, net::types::ResultCode::Ok | net::types::ResultCode::Exists)));
    let funding = node.create_transfers_blocking(crash_workload::funding(accounts)).expect("funding answered");
    assert!(funding.iter().all(|r| r.code == net::types::ResultCode::Ok), "funding: {funding:?}");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready").expect("parent reads stdout");
    stdout.flush().expect("parent reads stdout");
    loop {
        let count = crash_workload::BATCH_TRANSFERS;
        let batch: Vec<_> = (next..next + count).map(|n| crash_workload::transfer(n, accounts)).collect();
        let results = node.create_transfers_blocking(batch).expect("transfers answered");
        assert!(results.iter().all(|r| r.code == net::types::ResultCode::Ok), "workload transfers cannot fail");
        writeln!(stdout, "ack {next} {count}").expect("parent reads stdout");
        stdout.flush().expect("parent reads stdout");
        next += count;
    }
}
