//! A full disk under a running node: the batch that cannot be made durable is answered with a typed
//! error, never as done; the shard stops (fail-stop) and refuses later work; and after the disk grows
//! and the node restarts, exactly the acknowledged transfers are there and every ledger sums to zero.
//!
//! Runs on a real tmpfs mounted for the test (needs CAP_SYS_ADMIN; CI runs as root). When not root it
//! says so and returns; as root a failed mount is a test failure, never a silent skip.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use engine::{EngineError, Node, NodeConfig};
use net::types::{transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

const SMALL_BYTES: &str = "size=20m";
const LARGE_BYTES: &str = "size=256m";
const BATCH: u64 = 2000;
/// More than the small filesystem can hold, so the disk must fill first.
const BATCHES_MAX: u64 = 400;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(target: &Path, flags: libc::c_ulong, options: &str) -> std::io::Result<()> {
        let target = CString::new(target.as_os_str().as_bytes()).unwrap();
        let options = CString::new(options).unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let result = unsafe {
            libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), flags, options.as_ptr().cast())
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: unmounting the tmpfs this test mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn config(dir: &Path) -> NodeConfig {
    NodeConfig { pin_cores: false, wal_segment_bytes: 8 << 20, ..NodeConfig::with_data_dir(dir) }
}

fn transfer(n: u64) -> Transfer {
    Transfer {
        id: transfer_id_from_parts(wallet_tests::crash_workload::id_timestamp_ms(), n as u128),
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 1,
        ledger: 840,
        flags: 0,
        user_data: 0,
    }
}

#[test]
fn a_full_disk_fails_the_batch_stops_the_shard_and_loses_no_acknowledged_transfer() {
    let root = tempfile::tempdir().unwrap();
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if let Err(error) = Tmpfs::mount(root.path(), 0, SMALL_BYTES) {
        assert!(!is_root, "running as root, yet the tmpfs did not mount: {error}");
        eprintln!("not root: cannot mount a tmpfs ({error}); this test needs CAP_SYS_ADMIN");
        return;
    }
    let _mount = Tmpfs(root.path().to_path_buf());
    let data = root.path().join("node");

    let (node, _) = Node::open(config(&data)).unwrap();
    let accounts = vec![
        CreateAccount { id: 1, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: 2, ledger: 840, flags: 0, user_data: 0 },
    ];
    assert!(node.create_accounts_blocking(accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    let mut acknowledged = 0u64;
    let mut failure = None;
    for batch in 0..BATCHES_MAX {
        let transfers: Vec<Transfer> = (batch * BATCH + 1..=(batch + 1) * BATCH).map(transfer).collect();
        match node.create_transfers_blocking(transfers) {
            Ok(results) => {
                assert!(results.iter().all(|r| r.code == ResultCode::Ok));
                acknowledged += BATCH;
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let failure = failure.expect("the small filesystem filled up");
    eprintln!("acknowledged {acknowledged} transfers before: {failure}");
    assert!(matches!(failure, EngineError::ShardFailed { .. }), "typed failure, got {failure:?}");
    assert!(acknowledged > 0, "some batches were durable before the disk filled");
    // Fail-stop: later work is refused too, reads included, rather than served from a state the log lacks.
    assert!(matches!(
        node.create_transfers_blocking(vec![transfer(u64::MAX / 2)]),
        Err(EngineError::ShardFailed { .. })
    ));
    assert!(matches!(node.lookup_accounts_blocking(vec![2]), Err(EngineError::ShardFailed { .. })));
    drop(node);

    Tmpfs::mount(root.path(), libc::MS_REMOUNT, LARGE_BYTES).expect("grow the tmpfs");
    let (node, _) = Node::open(config(&data)).expect("the node restarts once there is room");
    let balance = node.lookup_accounts_blocking(vec![2]).unwrap()[0].unwrap().balance as u64;
    // The failed batch may or may not have reached the disk whole, but never partly: a batch is one
    // record per partition (here one), and an unacknowledged one is either all there or absent.
    assert!(
        balance == acknowledged || balance == acknowledged + BATCH,
        "balance {balance}, acknowledged {acknowledged}"
    );
    let retried = node.create_transfers_blocking((1..=acknowledged.min(BATCH)).map(transfer).collect()).unwrap();
    assert!(
        retried.iter().all(|r| r.code == ResultCode::Ok && r.is_replayed()),
        "acknowledged transfers are all there"
    );
    let sums: Vec<i128> = node
        .status_blocking()
        .unwrap()
        .iter()
        .flat_map(|s| s.partitions.iter().flat_map(|p| p.ledger_sums.iter().map(|l| l.1)))
        .collect();
    assert!(sums.iter().all(|&sum| sum == 0), "ledgers sum to zero: {sums:?}");
}
