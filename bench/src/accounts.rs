//! The run's accounts: which ids, in which partitions, funded from where, and their balances.
//!
//! Ids are scanned upward from a base and kept until every partition holds an equal share, so load
//! spreads evenly over partitions and every partition has at least two accounts to move money
//! between (the engine rejects cross-partition transfers until sagas land). Each partition gets its own
//! external (funding) account, found by searching upward from `EXTERNAL_ID_BASE + base`, so funding
//! never crosses partitions and a run's externals are its own: the ledger sum of a fresh run's accounts
//! plus its externals is zero.

use net::client::{Client, ClientError};
use net::protocol::{AccountLookup, Consistency, BATCH_ITEMS_MAX};
use net::types::{partition_of, AccountId, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use thiserror::Error;

/// External (funding) account ids live above every run's account range.
pub const EXTERNAL_ID_BASE: u64 = 1 << 40;
/// Ids scanned per run account before the layout gives up (a partition that never fills means the
/// partition count is absurd for the account count).
pub const LAYOUT_SCAN_IDS_PER_ACCOUNT_MAX: u64 = 8;
/// Ids scanned per partition to find its external account: a hash hits a given partition within a few
/// times `partitions` tries.
pub const EXTERNAL_SCAN_IDS_PER_PARTITION_MAX: u64 = 4_096;
/// Ids reserved for one run when the base is derived from the run's entropy (ACCOUNTS_MAX fits with
/// room for the scan's overshoot).
pub const ACCOUNT_ID_RANGE_BITS: u32 = 26;
/// Derived bases are multiples of the range below `EXTERNAL_ID_BASE`.
pub const ACCOUNT_ID_BASES: u64 = (EXTERNAL_ID_BASE >> ACCOUNT_ID_RANGE_BITS) - 1;
/// Funding per account, in minor units: large enough that hot Zipf accounts do not drain in a long run.
pub const INITIAL_BALANCE_MINOR_MAX: u64 = 1_000_000_000_000;
/// The run's whole money supply stays below this so that no credit, even of the deliberately failing
/// amount (supply + 1), can overflow an i64 balance: the failures stay `insufficient_funds`.
pub const SUPPLY_MINOR_MAX: u64 = (i64::MAX / 4) as u64;

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("the server reports {0} partitions")]
    NoPartitions(u32),
    #[error("{accounts} accounts cannot give each of {partitions} partitions the two accounts a transfer needs")]
    TooFewAccounts { accounts: u64, partitions: u32 },
    #[error("no balanced layout of {accounts} accounts within {ids_scanned} ids from {base}")]
    LayoutExhausted { accounts: u64, base: u64, ids_scanned: u64 },
    #[error("no external account id found for partition {partition}")]
    NoExternalId { partition: u32 },
    #[error("creating account {id} failed: {code:?}")]
    CreateAccount { id: AccountId, code: ResultCode },
    #[error("funding account {id} failed: {code:?}")]
    Funding { id: AccountId, code: ResultCode },
    #[error("account {0} not found on lookup")]
    NotFound(AccountId),
    #[error("answer has {got} results for {sent} items")]
    ResultCount { sent: usize, got: usize },
}

/// Account ids of a run, by index. Index `i < accounts.len()` is a run account; the externals follow.
#[derive(Clone, Debug)]
pub struct AccountLayout {
    pub partitions: u32,
    pub accounts: Vec<AccountId>,
    pub partition_of_account: Vec<u32>,
    /// Account indices per partition; every group has at least two members.
    pub groups: Vec<Vec<u32>>,
    /// External account id per partition.
    pub externals: Vec<AccountId>,
}

impl AccountLayout {
    pub fn new(base: u64, accounts: u64, partitions: u32) -> Result<AccountLayout, SetupError> {
        if partitions == 0 {
            return Err(SetupError::NoPartitions(partitions));
        }
        if accounts < 2 * partitions as u64 {
            return Err(SetupError::TooFewAccounts { accounts, partitions });
        }
        let quota = accounts.div_ceil(partitions as u64) as usize;
        let ids_scanned = accounts * LAYOUT_SCAN_IDS_PER_ACCOUNT_MAX;
        let mut layout = AccountLayout {
            partitions,
            accounts: Vec::with_capacity(accounts as usize),
            partition_of_account: Vec::with_capacity(accounts as usize),
            groups: vec![Vec::with_capacity(quota); partitions as usize],
            externals: Vec::with_capacity(partitions as usize),
        };
        for id in base..base.saturating_add(ids_scanned) {
            if layout.accounts.len() as u64 == accounts {
                break;
            }
            let partition = partition_of(id, partitions);
            let group = &mut layout.groups[partition as usize];
            if group.len() < quota {
                group.push(layout.accounts.len() as u32);
                layout.accounts.push(id);
                layout.partition_of_account.push(partition);
            }
        }
        if layout.accounts.len() as u64 != accounts || layout.accounts.last() >= Some(&EXTERNAL_ID_BASE) {
            return Err(SetupError::LayoutExhausted { accounts, base, ids_scanned });
        }
        let external_base = EXTERNAL_ID_BASE + base;
        for partition in 0..partitions {
            let scan = external_base..external_base + EXTERNAL_SCAN_IDS_PER_PARTITION_MAX * partitions as u64;
            let id = scan.into_iter().find(|id| partition_of(*id, partitions) == partition);
            layout.externals.push(id.ok_or(SetupError::NoExternalId { partition })?);
        }
        assert!(layout.groups.iter().all(|group| group.len() >= 2), "the quota gives each group two members");
        Ok(layout)
    }

    /// Every id the run touches: run accounts, then externals (the index order of balance arrays).
    pub fn all_ids(&self) -> Vec<AccountId> {
        self.accounts.iter().chain(self.externals.iter()).copied().collect()
    }

    /// Funding per account so that the run's supply stays below [`SUPPLY_MINOR_MAX`].
    pub fn initial_balance_minor(&self) -> u64 {
        (SUPPLY_MINOR_MAX / self.accounts.len() as u64).min(INITIAL_BALANCE_MINOR_MAX)
    }
}

/// What setup found: whether every account and external was created by this run (then the ledger sum
/// of the run's accounts must be exactly zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupOutcome {
    pub created_fresh: bool,
}

/// Creates the externals and accounts and funds every account from its partition's external.
pub fn create_and_fund(client: &mut Client, layout: &AccountLayout, ledger: u32) -> Result<SetupOutcome, SetupError> {
    let mut created_fresh = true;
    let externals: Vec<CreateAccount> = layout
        .externals
        .iter()
        .map(|id| CreateAccount { id: *id, ledger, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 })
        .collect();
    let accounts: Vec<CreateAccount> =
        layout.accounts.iter().map(|id| CreateAccount { id: *id, ledger, flags: 0, user_data: 0 }).collect();
    for chunk in externals.chunks(BATCH_ITEMS_MAX).chain(accounts.chunks(BATCH_ITEMS_MAX)) {
        let results = client.create_accounts(chunk)?;
        check_count(chunk.len(), results.len())?;
        for result in results {
            let id = chunk[result.index as usize].id;
            match result.code {
                ResultCode::Ok => {}
                ResultCode::Exists => created_fresh = false,
                code => return Err(SetupError::CreateAccount { id, code }),
            }
        }
    }
    let amount = layout.initial_balance_minor();
    let mut funding_sequence: u64 = 0;
    let funding: Vec<Transfer> = layout
        .accounts
        .iter()
        .zip(&layout.partition_of_account)
        .map(|(id, partition)| {
            funding_sequence += 1;
            Transfer {
                id: net::client::new_transfer_id(),
                debit_account_id: layout.externals[*partition as usize],
                credit_account_id: *id,
                amount,
                ledger,
                flags: 0,
                user_data: funding_sequence as u128,
            }
        })
        .collect();
    for chunk in funding.chunks(BATCH_ITEMS_MAX) {
        let results = client.create_transfers_retrying(chunk)?;
        check_count(chunk.len(), results.len())?;
        if let Some(failed) = results.iter().find(|result| result.code != ResultCode::Ok) {
            let id = chunk[failed.index as usize].credit_account_id;
            return Err(SetupError::Funding { id, code: failed.code });
        }
    }
    Ok(SetupOutcome { created_fresh })
}

/// Balances of `ids`, in order, read with linearizable consistency in chunks of one batch.
pub fn lookup_balances(client: &mut Client, ids: &[AccountId]) -> Result<Vec<i64>, SetupError> {
    let mut balances = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH_ITEMS_MAX) {
        let found = client.lookup_accounts(Consistency::Linearizable, chunk)?;
        check_count(chunk.len(), found.len())?;
        for (id, lookup) in chunk.iter().zip(found) {
            match lookup {
                AccountLookup::Found(account) if account.id == *id => balances.push(account.balance),
                _ => return Err(SetupError::NotFound(*id)),
            }
        }
    }
    Ok(balances)
}

fn check_count(sent: usize, got: usize) -> Result<(), SetupError> {
    if sent == got {
        Ok(())
    } else {
        Err(SetupError::ResultCount { sent, got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_balanced_and_partition_local() {
        let layout = AccountLayout::new(1_000, 6_400, 64).expect("fits");
        assert_eq!(layout.accounts.len(), 6_400);
        assert!(layout.groups.iter().all(|group| group.len() == 100));
        for (index, id) in layout.accounts.iter().enumerate() {
            assert_eq!(partition_of(*id, 64), layout.partition_of_account[index]);
        }
        for (partition, external) in layout.externals.iter().enumerate() {
            assert_eq!(partition_of(*external, 64), partition as u32);
            assert!(*external >= EXTERNAL_ID_BASE);
        }
        let again = AccountLayout::new(1_000, 6_400, 64).expect("fits");
        assert_eq!(again.accounts, layout.accounts, "a reused run finds the same ids");
    }

    #[test]
    fn too_few_accounts_is_refused() {
        assert!(matches!(AccountLayout::new(1, 10, 64), Err(SetupError::TooFewAccounts { .. })));
    }
}
