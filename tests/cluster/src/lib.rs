//! Cross-crate test support: workloads and checkers shared by the multi-process tests in `tests/`.
//!
//! Every check ends in the invariant the whole system exists for: money is never created or lost.

pub mod crash_workload {
    //! A workload whose every transfer must succeed, in any order: accounts start with far more than
    //! the sum of all amounts they could ever send, so final balances depend only on WHICH transfers
    //! were applied, never on their order. That lets a checker compute the exact expected state.

    use engine::NodeConfig;
    use net::types::{transfer_id_from_parts, CreateAccount, Transfer, ACCOUNT_FLAG_EXTERNAL};

    pub const LEDGER: u32 = 840;
    pub const EXTERNAL_ACCOUNT: u64 = 1_000_000;
    pub const INITIAL_BALANCE: u64 = 1_000_000_000_000;
    pub const BATCH_TRANSFERS: u64 = 512;
    /// Names the id timestamp a parent test hands its child processes, so both make the same ids.
    pub const ID_TIMESTAMP_ENV: &str = "WALLET_TEST_ID_TIMESTAMP_MS";

    /// Id timestamp for every workload transfer: fixed per test run (taken from the clock once, or
    /// from the parent through [`ID_TIMESTAMP_ENV`]), so ids are reproducible across the parent and its
    /// children and stay well inside the 24 h idempotency window while the test runs.
    pub fn id_timestamp_ms() -> u64 {
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *BASE.get_or_init(|| {
            std::env::var(ID_TIMESTAMP_ENV)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| engine::shard::clock_ns() / 1_000_000)
        })
    }

    pub fn node_config(data_dir: &str) -> NodeConfig {
        NodeConfig {
            partitions: 1,
            shards: 1,
            pin_cores: false,
            checkpoint_interval_ms: 200,
            // Far below what the test sends, so most ids live in id-index run files when the child is
            // SIGKILLed: every retry must still be recognised after the restart.
            idempotency_ids_max: 4096,
            // Small segments, so the test crosses segment boundaries many times.
            wal_segment_bytes: 8 << 20,
            ..NodeConfig::with_data_dir(data_dir)
        }
    }

    pub fn accounts(count: u64) -> Vec<CreateAccount> {
        let mut accounts: Vec<CreateAccount> =
            (1..=count).map(|id| CreateAccount { id, ledger: LEDGER, flags: 0, user_data: 0 }).collect();
        accounts.push(CreateAccount {
            id: EXTERNAL_ACCOUNT,
            ledger: LEDGER,
            flags: ACCOUNT_FLAG_EXTERNAL,
            user_data: 0,
        });
        accounts
    }

    pub fn funding(count: u64) -> Vec<Transfer> {
        (1..=count)
            .map(|id| Transfer {
                id: transfer_id_from_parts(id_timestamp_ms(), (1 << 64) | id as u128),
                debit_account_id: EXTERNAL_ACCOUNT,
                credit_account_id: id,
                amount: INITIAL_BALANCE,
                ledger: LEDGER,
                flags: 0,
                user_data: 0,
            })
            .collect()
    }

    /// Transfer number `n` (n ≥ 1): deterministic accounts and amount.
    pub fn transfer(n: u64, accounts: u64) -> Transfer {
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let debit = 1 + mixed % accounts;
        let offset = 1 + (mixed >> 32) % (accounts - 1);
        let credit = 1 + (debit - 1 + offset) % accounts;
        assert_ne!(debit, credit);
        Transfer {
            id: transfer_id_from_parts(id_timestamp_ms(), n as u128),
            debit_account_id: debit,
            credit_account_id: credit,
            amount: 1 + (mixed >> 16) % 1000,
            ledger: LEDGER,
            flags: 0,
            user_data: n as u128,
        }
    }
}
