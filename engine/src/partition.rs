//! The deterministic partition state machine: accounts, balances and the transfer-id table of one
//! partition, changed only by commands (leader) or by the events those commands produced (replay).
//!
//! Pure: no clock, file, socket, thread or randomness. The leader's clock comes in as `now_ns`; every
//! output (events, results, digest) is a function of the inputs alone. Map iteration order never reaches
//! an output: accounts live in a `Vec` in creation order and the digest is order-independent.
//!
//! Two paths change state and must agree exactly:
//! - [`PartitionState::execute_transfers`] / [`PartitionState::execute_create_accounts`] (leader):
//!   validate each command, apply it, append its event.
//! - [`PartitionState::apply_batch`] (follower, restart, audit replay): apply logged events. It trusts
//!   the outcome in each event but re-derives every balance and asserts it matches what the event says:
//!   a mismatch means the replicas diverged, and the process stops rather than serve wrong money.
//!
//! # Transfer validation order (the first failing rule decides)
//! 1. unknown flag bits -> `InvalidFlags`
//! 2. id 0 -> `ReservedId`
//! 3. id time more than `idempotency_window_ms` before the event's timestamp -> `IdExpired` (whether
//!    or not the table still holds it: the verdict depends on the id and the event alone)
//! 4. id in the id table: same fingerprint -> the original code and seq with `RESULT_FLAG_REPLAYED`, no
//!    event, nothing changes; different fingerprint -> `ExistsWithDifferentFields`; otherwise id time
//!    more than `TRANSFER_ID_FUTURE_MS_MAX` after the event's timestamp -> `IdFromFuture`
//! 5. debit == credit -> `SameAccount`
//! 6. amount 0 -> `ZeroAmount`
//! 7. amount > i64::MAX -> `Overflow`
//! 8. debit or credit account owned by another partition -> `CrossPartitionUnsupported`
//! 9. debit account missing -> `DebitAccountNotFound`; 10. credit missing -> `CreditAccountNotFound`
//! 11. transfer ledger differs from either account's ledger -> `LedgerMismatch`
//! 12. debit not external and balance < amount -> `InsufficientFunds`
//! 13. debit - amount or credit + amount leaves i64 -> `Overflow`
//! 14. otherwise posted: `Ok`.
//!
//! Every outcome but the replayed one is logged (`TransferPosted` or `TransferRejected`). Outcomes of
//! rules 5-14 are recorded in the id table, so a retry answers the same outcome. Rules 1-4 are *not*
//! recorded: 1-2 judge a malformed command before its id is considered, 3 must leave the original
//! entry untouched, and 3 refuses an id that the table may no longer hold (it is older than the
//! window), as 4 does an id too far ahead. A client that fixes a malformed transfer may therefore reuse
//! its id.
//!
//! # Account validation order
//! id 0 or u64::MAX -> `ReservedId`; unknown flags -> `InvalidFlags`; ledger 0 -> `InvalidLedger`;
//! (an account of another partition is a routing bug: assert); existing with identical fields ->
//! `Exists`; existing with different fields -> `ExistsWithDifferentFields`; otherwise created.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use net::types::{
    partition_of, transfer_id_timestamp_ms, Account, AccountId, CreateAccount, HistoryEntry, HistoryKind, ItemResult,
    ResultCode, Transfer, TransferId, ACCOUNT_FLAGS_KNOWN, RESULT_FLAG_REPLAYED, TRANSFER_FLAGS_KNOWN,
    TRANSFER_ID_FUTURE_MS_MAX,
};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_128;

use crate::event::{Event, EventBatchView, EventBody, EventBuffer, FUTURE_ID_RULE_FORMAT_VERSION};
use crate::fast_hash::FastBuildHasher;
use crate::id_index::ColdRun;
use crate::idempotency::{
    transfer_fingerprint, DrainedIds, IdEntry, IdImage, IdRestoreError, IdTable, RunHome, NANOS_PER_MILLI,
};

/// How many transfers' memory is touched ahead of deciding them (see `PartitionState::warm`): enough
/// independent cache misses in flight to cover DRAM latency, few enough to stay inside the CPU's
/// out-of-order window.
const WARM_AHEAD_TRANSFERS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    pub partition: u32,
    pub partitions: u32,
    pub idempotency_window_ms: u64,
    /// Transfer ids held in memory; older ones live in the id index's runs.
    pub idempotency_ids_max: usize,
    /// The data directory's random key for hashing transfer ids (no outcome depends on it).
    pub id_hash_key: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ApplyError {
    #[error("batch is for partition {batch}, this state is partition {state}")]
    WrongPartition { batch: u32, state: u32 },
    #[error("batch starts at seq {first_seq} but the state has applied only up to {last_seq}: a gap")]
    Gap { first_seq: u64, last_seq: u64 },
    #[error("batch {first_seq}..={batch_last_seq} straddles the applied seq {last_seq}")]
    PartialOverlap { first_seq: u64, batch_last_seq: u64, last_seq: u64 },
    #[error("batch starts at timestamp {first_ns} ns, not after the state's {last_ns} ns")]
    TimestampNotIncreasing { first_ns: u64, last_ns: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RestoreError {
    #[error("account {id} is persisted twice")]
    DuplicateAccount { id: AccountId },
    #[error("account {id} belongs to partition {owner}, not {partition}")]
    ForeignAccount { id: AccountId, owner: u32, partition: u32 },
    #[error("account {id} has seq {seq}, beyond the persisted last_seq {last_seq}")]
    AccountAhead { id: AccountId, seq: u64, last_seq: u64 },
    #[error("account {id} is malformed (reserved id, unknown flags, ledger 0 or negative ordinary balance)")]
    InvalidAccount { id: AccountId },
    #[error("id entry seq {seq} is beyond the persisted last_seq {last_seq}")]
    IdEntryAhead { seq: u64, last_seq: u64 },
    #[error(transparent)]
    Ids(#[from] IdRestoreError),
}

/// One account per cache line: `Account` is 64 bytes but only 16-byte aligned, so in a plain `Vec`
/// three rows in four straddle two lines and a transfer's random row access costs two misses.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct AccountRow(Account);

/// Everything a checkpoint or snapshot persists for one partition, and what [`PartitionState::restore`]
/// rebuilds from. Order of `accounts` and `ids` does not matter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionRows {
    pub last_seq: u64,
    pub last_timestamp_ns: u64,
    pub accounts: Vec<Account>,
    pub ids: IdImage,
}

/// One row to persist at a checkpoint, reported by [`PartitionState::drain_dirty`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyRow<'a> {
    /// Upsert the account row.
    Account(&'a Account),
    /// Upsert the id entry.
    IdInserted(&'a IdEntry),
}

/// The scalar part of a checkpoint, returned by [`PartitionState::drain_dirty`] after the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointMark {
    pub last_seq: u64,
    pub last_timestamp_ns: u64,
    /// Arrival numbers of the drained id entries and of the ids still in memory (older ones are in
    /// written id-index runs).
    pub ids: DrainedIds,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct PartitionState {
    config: PartitionConfig,
    /// Creation order; `account_index` maps an id to its position. Accounts are never deleted.
    accounts: Vec<AccountRow>,
    account_index: AccountIndex,
    /// `account_dirty[i]` is set iff `i` is in `dirty_accounts` (so each is listed once).
    account_dirty: Vec<bool>,
    dirty_accounts: Vec<u32>,
    ids: IdTable,
    last_seq: u64,
    last_timestamp_ns: u64,
}

#[derive(Debug)]
enum TransferDecision {
    /// Retry of a decided id: answer the original outcome, log nothing.
    Replayed(IdEntry),
    /// Rejected before the id counts as decided (rules 1-4): logged, not recorded.
    RejectedUnrecorded(ResultCode),
    /// Rules 5-13: logged and recorded.
    Rejected { code: ResultCode, fingerprint: u128 },
    /// Rule 14: logged, applied and recorded.
    Posted { fingerprint: u128, posting: Posting },
}

/// What posting a checked transfer does to its two accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Posting {
    debit_index: u32,
    credit_index: u32,
    debit_balance_after: i64,
    credit_balance_after: i64,
    debit_prev_seq: u64,
    credit_prev_seq: u64,
}

impl PartitionState {
    pub fn new(config: PartitionConfig) -> Self {
        assert!(config.partitions > 0 && config.partition < config.partitions, "partition out of range");
        PartitionState {
            config,
            accounts: Vec::new(),
            account_index: AccountIndex::new(),
            account_dirty: Vec::new(),
            dirty_accounts: Vec::new(),
            ids: IdTable::new(
                config.partition,
                config.idempotency_window_ms,
                config.idempotency_ids_max,
                config.id_hash_key,
            ),
            last_seq: 0,
            last_timestamp_ns: 0,
        }
    }

    pub fn config(&self) -> PartitionConfig {
        self.config
    }

    pub fn partition(&self) -> u32 {
        self.config.partition
    }

    /// Where id-index runs sealed from now on are written (set once by the runtime after creating or
    /// restoring the state).
    pub fn set_id_home(&mut self, home: RunHome) {
        self.ids.set_home(home);
    }

    /// Hands id-index runs sealed since the last call to the runtime's builder, and lets the ready
    /// ones leave memory (see `IdTable`). Never changes an outcome.
    pub fn tend_id_runs(&mut self, submit: impl FnMut(Arc<ColdRun>)) {
        self.ids.take_sealed(submit);
        self.ids.release();
    }

    /// The decided entry of a transfer id, if it is within the window at `now_ns` (or the last
    /// event's time, if later) and the table holds it (memory or disk).
    pub fn transfer_entry(&self, id: TransferId, now_ns: u64) -> Option<IdEntry> {
        if self.ids.is_expired(id, now_ns.max(self.last_timestamp_ns)) {
            return None;
        }
        self.ids.get(id)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn last_timestamp_ns(&self) -> u64 {
        self.last_timestamp_ns
    }

    pub fn accounts_len(&self) -> usize {
        self.accounts.len()
    }

    pub fn ids(&self) -> &IdTable {
        &self.ids
    }

    /// Drains only the id entries inserted since the last drain ([`IdTable::drain_inserted`]); dirty
    /// accounts stay for [`PartitionState::drain_dirty`]. A shard calls it every round, so that its
    /// checkpoint moves the entries instead of copying a second's worth at once.
    pub fn drain_ids(&mut self, f: impl FnMut(&IdEntry)) -> crate::idempotency::DrainedIds {
        self.ids.drain_inserted(f)
    }

    pub fn account(&self, id: AccountId) -> Option<Account> {
        self.row_of(id).map(|row| self.accounts[row as usize].0)
    }

    /// In creation order.
    pub fn for_each_account(&self, mut f: impl FnMut(&Account)) {
        self.accounts.iter().for_each(|row| f(&row.0));
    }

    /// Per ledger, the sum of all balances, sorted by ledger. Every sum is 0 by construction.
    pub fn ledger_sums(&self) -> Vec<(u32, i128)> {
        let mut sums: BTreeMap<u32, i128> = BTreeMap::new();
        for AccountRow(account) in &self.accounts {
            *sums.entry(account.ledger).or_insert(0) += account.balance as i128;
        }
        sums.into_iter().collect()
    }

    /// Order-independent digest of the whole state: accounts, id table, last seq and timestamp.
    pub fn digest(&self) -> u128 {
        let mut accounts_sum: u128 = 0;
        for AccountRow(account) in &self.accounts {
            let mut bytes = [0u8; Account::WIRE_BYTES + 8];
            account.encode_into(&mut bytes[..Account::WIRE_BYTES]);
            bytes[Account::WIRE_BYTES..].copy_from_slice(b"account.");
            accounts_sum = accounts_sum.wrapping_add(xxh3_128(&bytes));
        }
        let mut input = [0u8; 4 + 16 + 8 + 16 + 8 + 8];
        input[0..4].copy_from_slice(&self.config.partition.to_le_bytes());
        input[4..20].copy_from_slice(&accounts_sum.to_le_bytes());
        input[20..28].copy_from_slice(&(self.accounts.len() as u64).to_le_bytes());
        input[28..44].copy_from_slice(&self.ids.digest().to_le_bytes());
        input[44..52].copy_from_slice(&self.last_seq.to_le_bytes());
        input[52..60].copy_from_slice(&self.last_timestamp_ns.to_le_bytes());
        xxh3_128(&input)
    }

    /// Leader path for transfers; see the module documentation for the validation order. Appends one
    /// event per command except replayed retries, and pushes one result per command.
    pub fn execute_transfers(
        &mut self,
        now_ns: u64,
        transfers: &[Transfer],
        events: &mut EventBuffer,
        results: &mut Vec<ItemResult>,
    ) {
        self.begin_or_continue(events);
        for (index, transfer) in transfers.iter().enumerate() {
            if index % WARM_AHEAD_TRANSFERS == 0 {
                let end = transfers.len().min(index + WARM_AHEAD_TRANSFERS);
                self.warm(transfers[index..end].iter());
            }
            // The timestamp this transfer's event will carry: replay judges the id against the same one.
            let at_ns = now_ns.max(self.last_timestamp_ns + 1);
            let result = match self.decide_transfer(transfer, at_ns, true) {
                TransferDecision::Replayed(entry) => {
                    ItemResult { index: 0, code: entry.code, flags: RESULT_FLAG_REPLAYED, seq: entry.seq }
                }
                TransferDecision::RejectedUnrecorded(code) => {
                    let seq = self.log_event(now_ns, EventBody::TransferRejected { transfer: *transfer, code }, events);
                    ItemResult { index: 0, code, flags: 0, seq }
                }
                TransferDecision::Rejected { code, fingerprint } => {
                    let seq = self.log_event(now_ns, EventBody::TransferRejected { transfer: *transfer, code }, events);
                    let recorded_ns = self.last_timestamp_ns;
                    self.ids.insert(IdEntry { id: transfer.id, fingerprint, code, seq, recorded_ns });
                    ItemResult { index: 0, code, flags: 0, seq }
                }
                TransferDecision::Posted { fingerprint, posting } => {
                    let body = posted_body(transfer, &posting);
                    let seq = self.log_event(now_ns, body, events);
                    self.post(&posting, seq);
                    let recorded_ns = self.last_timestamp_ns;
                    self.ids.insert(IdEntry { id: transfer.id, fingerprint, code: ResultCode::Ok, seq, recorded_ns });
                    ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq }
                }
            };
            results.push(ItemResult { index: index as u32, ..result });
        }
    }

    /// Leader path for account creation; see the module documentation for the validation order.
    pub fn execute_create_accounts(
        &mut self,
        now_ns: u64,
        accounts: &[CreateAccount],
        events: &mut EventBuffer,
        results: &mut Vec<ItemResult>,
    ) {
        self.begin_or_continue(events);
        for (index, account) in accounts.iter().enumerate() {
            let code = self.decide_account(account);
            let body = if code == ResultCode::Ok {
                EventBody::AccountCreated { account: *account }
            } else {
                EventBody::AccountRejected { account: *account, code }
            };
            let seq = self.log_event(now_ns, body, events);
            if code == ResultCode::Ok {
                self.create_account(account, seq);
            }
            results.push(ItemResult { index: index as u32, code, flags: 0, seq });
        }
    }

    /// Replay/follower path. Batches wholly at or below `last_seq` are skipped (replay is idempotent); a
    /// gap, a batch straddling `last_seq`, another partition's batch or a timestamp regression is an
    /// error and changes nothing. Events whose effects disagree with this state (a posted transfer whose
    /// balances differ, a created account that exists) mean divergence: assert.
    pub fn apply_batch(&mut self, batch: &EventBatchView) -> Result<(), ApplyError> {
        self.apply_batch_prefix(batch, batch.event_count())
    }

    /// [`Self::apply_batch`] of the batch's first `events` events only (all of its checks hold for the
    /// whole batch): an audit's replay that stops at a given seq or time inside a batch. The state is then
    /// what it was right after the last applied event.
    pub fn apply_batch_prefix(&mut self, batch: &EventBatchView, events: u32) -> Result<(), ApplyError> {
        assert!(events <= batch.event_count(), "prefix of {events} events of a batch of {}", batch.event_count());
        if batch.partition() != self.config.partition {
            return Err(ApplyError::WrongPartition { batch: batch.partition(), state: self.config.partition });
        }
        if batch.last_seq() <= self.last_seq {
            return Ok(());
        }
        if batch.first_seq() <= self.last_seq {
            return Err(ApplyError::PartialOverlap {
                first_seq: batch.first_seq(),
                batch_last_seq: batch.last_seq(),
                last_seq: self.last_seq,
            });
        }
        if batch.first_seq() != self.last_seq + 1 {
            return Err(ApplyError::Gap { first_seq: batch.first_seq(), last_seq: self.last_seq });
        }
        let first_ns = batch.first_timestamp_ns();
        if self.last_seq > 0 && first_ns <= self.last_timestamp_ns {
            return Err(ApplyError::TimestampNotIncreasing { first_ns, last_ns: self.last_timestamp_ns });
        }
        let mut ahead: [Option<Event>; WARM_AHEAD_TRANSFERS] = [None; WARM_AHEAD_TRANSFERS];
        for start in (0..events).step_by(WARM_AHEAD_TRANSFERS) {
            let end = events.min(start + WARM_AHEAD_TRANSFERS as u32);
            for (slot, index) in ahead.iter_mut().zip(start..end) {
                *slot = Some(batch.event(index));
            }
            let chunk = &ahead[..(end - start) as usize];
            self.warm(chunk.iter().filter_map(|event| match event.as_ref()?.body {
                EventBody::TransferPosted { ref transfer, .. } | EventBody::TransferRejected { ref transfer, .. } => {
                    Some(transfer)
                }
                _ => None,
            }));
            let judge_future_ids = batch.format_version() >= FUTURE_ID_RULE_FORMAT_VERSION;
            for event in chunk.iter().flatten() {
                self.apply_event(event, judge_future_ids);
            }
        }
        assert_eq!(self.last_seq, batch.first_seq() + u64::from(events) - 1);
        Ok(())
    }

    /// Accounts changed since the previous drain (each once), then id-table changes (see
    /// [`IdTable::drain_inserted`]), through one callback so the caller can write them all into one
    /// batch; returns the scalars to persist with them. Persisting exactly this after every drain keeps
    /// the store equal to [`PartitionState::export_rows`].
    pub fn drain_dirty(&mut self, mut row: impl FnMut(DirtyRow<'_>)) -> CheckpointMark {
        for &index in &self.dirty_accounts {
            let index = index as usize;
            assert!(self.account_dirty[index]);
            self.account_dirty[index] = false;
            row(DirtyRow::Account(&self.accounts[index].0));
        }
        self.dirty_accounts.clear();
        let ids = self.ids.drain_inserted(|entry| row(DirtyRow::IdInserted(entry)));
        CheckpointMark { last_seq: self.last_seq, last_timestamp_ns: self.last_timestamp_ns, ids }
    }

    /// A full image of the state (for snapshots and tests); allocates.
    pub fn export_rows(&self) -> PartitionRows {
        PartitionRows {
            last_seq: self.last_seq,
            last_timestamp_ns: self.last_timestamp_ns,
            accounts: self.accounts.iter().map(|row| row.0).collect(),
            ids: self.ids.export_image(),
        }
    }

    /// [`PartitionState::try_restore`] from an exported image.
    pub fn restore_rows(config: PartitionConfig, rows: PartitionRows) -> Result<Self, RestoreError> {
        let PartitionRows { last_seq, last_timestamp_ns, accounts, ids } = rows;
        PartitionState::try_restore(config, last_seq, last_timestamp_ns, accounts, ids, RunHome::Memory)
    }

    /// [`PartitionState::try_restore`] for a store that is trusted: inconsistent rows stop the process
    /// (serving from a corrupt image would be worse). Callers that can fall back to replaying the whole
    /// log use `try_restore`.
    pub fn restore(
        config: PartitionConfig,
        last_seq: u64,
        last_timestamp_ns: u64,
        accounts: Vec<Account>,
        ids: IdImage,
    ) -> Self {
        match PartitionState::try_restore(config, last_seq, last_timestamp_ns, accounts, ids, RunHome::Memory) {
            Ok(state) => state,
            Err(error) => panic!("partition {} checkpoint rows are inconsistent: {error}", config.partition),
        }
    }

    /// Rebuilds a state from persisted rows (what `drain_dirty` reported, accumulated); the result has
    /// nothing dirty. Accounts are re-ordered by (created_seq, id) so the in-memory order does not
    /// depend on the store's key order. `home`: where runs re-sealed from `ids` are written.
    pub fn try_restore(
        config: PartitionConfig,
        last_seq: u64,
        last_timestamp_ns: u64,
        mut accounts: Vec<Account>,
        ids: IdImage,
        home: RunHome,
    ) -> Result<Self, RestoreError> {
        let mut state = PartitionState::new(config);
        for entry in &ids.hot {
            if entry.seq > last_seq {
                return Err(RestoreError::IdEntryAhead { seq: entry.seq, last_seq });
            }
        }
        state.ids = IdTable::restore(
            config.partition,
            config.idempotency_window_ms,
            config.idempotency_ids_max,
            config.id_hash_key,
            home,
            ids,
        )?;
        accounts.sort_unstable_by_key(|account| (account.created_seq, account.id));
        for account in accounts {
            let id = account.id;
            let well_formed = account_id_allowed(id)
                && account.flags & !ACCOUNT_FLAGS_KNOWN == 0
                && account.ledger != 0
                && (account.is_external() || account.balance >= 0)
                && account.created_seq <= account.last_seq;
            if !well_formed {
                return Err(RestoreError::InvalidAccount { id });
            }
            let owner = partition_of(id, config.partitions);
            if owner != config.partition {
                return Err(RestoreError::ForeignAccount { id, owner, partition: config.partition });
            }
            if account.last_seq > last_seq {
                return Err(RestoreError::AccountAhead { id, seq: account.last_seq, last_seq });
            }
            if state.account(id).is_some() {
                return Err(RestoreError::DuplicateAccount { id });
            }
            state.insert_account(account);
        }
        state.dirty_accounts.clear();
        state.account_dirty.iter_mut().for_each(|dirty| *dirty = false);
        state.last_seq = last_seq;
        state.last_timestamp_ns = last_timestamp_ns;
        Ok(state)
    }

    /// Touches what deciding `transfers` will read — their id-table slots, both accounts' index slots
    /// and rows, and the id-table slots of the entries about to be evicted — in a loop of independent
    /// loads. The CPU overlaps those cache misses instead of taking them one after another inside the
    /// dependent decision logic. Reads only: the decisions themselves are unaffected.
    #[inline]
    fn warm<'t>(&self, transfers: impl Iterator<Item = &'t Transfer>) {
        // Phase 1: every index slot line, with no load depending on another, so they overlap.
        let mut probes = [(0u32, 0u64); 2 * WARM_AHEAD_TRANSFERS];
        let mut count = 0;
        for (pair, transfer) in probes.chunks_exact_mut(2).zip(transfers) {
            pair[0] = self.account_index.probe_start(transfer.debit_account_id);
            pair[1] = self.account_index.probe_start(transfer.credit_account_id);
            self.ids.warm(transfer.id);
            count += 1;
        }
        // Phase 2: the rows those slots point at (a displaced slot is left to the real lookup).
        for &(tag, slot) in &probes[..2 * count] {
            if let Some(row) = AccountIndex::row_if_tag(tag, slot) {
                if let Some(AccountRow(account)) = self.accounts.get(row as usize) {
                    std::hint::black_box(account.balance);
                }
            }
        }
    }

    fn begin_or_continue(&self, events: &mut EventBuffer) {
        if events.is_started() {
            assert_eq!(events.partition(), Some(self.config.partition), "event batch of another partition");
            assert_eq!(events.next_seq(), self.last_seq + 1, "event batch does not continue this state");
        } else {
            events.begin(self.config.partition, self.last_seq + 1);
        }
    }

    /// Appends an event stamped with the next seq and timestamp; advances both.
    fn log_event(&mut self, now_ns: u64, body: EventBody, events: &mut EventBuffer) -> u64 {
        let seq = self.last_seq + 1;
        // Strictly increasing even if the leader's clock steps back (or a new leader's clock is behind).
        let timestamp_ns = now_ns.max(self.last_timestamp_ns + 1);
        events.push(&Event { seq, timestamp_ns, body });
        self.last_seq = seq;
        self.last_timestamp_ns = timestamp_ns;
        seq
    }

    #[inline]
    /// `at_ns`: the timestamp of the event that will record the outcome, against which the id's own
    /// time is judged; `judge_future_ids` is false for batches written before that rule (format 1).
    fn decide_transfer(&self, transfer: &Transfer, at_ns: u64, judge_future_ids: bool) -> TransferDecision {
        if transfer.flags & !TRANSFER_FLAGS_KNOWN != 0 {
            return TransferDecision::RejectedUnrecorded(ResultCode::InvalidFlags);
        }
        if transfer.id == 0 {
            return TransferDecision::RejectedUnrecorded(ResultCode::ReservedId);
        }
        if self.ids.is_expired(transfer.id, at_ns) {
            return TransferDecision::RejectedUnrecorded(ResultCode::IdExpired);
        }
        let fingerprint = transfer_fingerprint(transfer);
        if let Some(entry) = self.ids.get(transfer.id) {
            return if entry.fingerprint == fingerprint {
                TransferDecision::Replayed(entry)
            } else {
                TransferDecision::RejectedUnrecorded(ResultCode::ExistsWithDifferentFields)
            };
        }
        if judge_future_ids
            && transfer_id_timestamp_ms(transfer.id)
                > (at_ns / NANOS_PER_MILLI).saturating_add(TRANSFER_ID_FUTURE_MS_MAX)
        {
            return TransferDecision::RejectedUnrecorded(ResultCode::IdFromFuture);
        }
        match self.check_posting(transfer) {
            Ok(posting) => TransferDecision::Posted { fingerprint, posting },
            Err(code) => TransferDecision::Rejected { code, fingerprint },
        }
    }

    /// Rules 5-13; on success, what posting does.
    #[inline]
    fn check_posting(&self, transfer: &Transfer) -> Result<Posting, ResultCode> {
        if transfer.debit_account_id == transfer.credit_account_id {
            return Err(ResultCode::SameAccount);
        }
        if transfer.amount == 0 {
            return Err(ResultCode::ZeroAmount);
        }
        let amount = i64::try_from(transfer.amount).map_err(|_| ResultCode::Overflow)?;
        // With one partition everything is local; skip the two hashes.
        if self.config.partitions > 1
            && (partition_of(transfer.debit_account_id, self.config.partitions) != self.config.partition
                || partition_of(transfer.credit_account_id, self.config.partitions) != self.config.partition)
        {
            return Err(ResultCode::CrossPartitionUnsupported);
        }
        let debit_index = self.row_of(transfer.debit_account_id).ok_or(ResultCode::DebitAccountNotFound)?;
        let credit_index = self.row_of(transfer.credit_account_id).ok_or(ResultCode::CreditAccountNotFound)?;
        let debit = &self.accounts[debit_index as usize].0;
        let credit = &self.accounts[credit_index as usize].0;
        if transfer.ledger != debit.ledger || transfer.ledger != credit.ledger {
            return Err(ResultCode::LedgerMismatch);
        }
        if !debit.is_external() && debit.balance < amount {
            return Err(ResultCode::InsufficientFunds);
        }
        Ok(Posting {
            debit_index,
            credit_index,
            debit_balance_after: debit.balance.checked_sub(amount).ok_or(ResultCode::Overflow)?,
            credit_balance_after: credit.balance.checked_add(amount).ok_or(ResultCode::Overflow)?,
            debit_prev_seq: debit.last_seq,
            credit_prev_seq: credit.last_seq,
        })
    }

    fn decide_account(&self, account: &CreateAccount) -> ResultCode {
        if !account_id_allowed(account.id) {
            return ResultCode::ReservedId;
        }
        if account.flags & !ACCOUNT_FLAGS_KNOWN != 0 {
            return ResultCode::InvalidFlags;
        }
        if account.ledger == 0 {
            return ResultCode::InvalidLedger;
        }
        assert_eq!(
            partition_of(account.id, self.config.partitions),
            self.config.partition,
            "account {} routed to the wrong partition",
            account.id
        );
        match self.account_ref(account.id) {
            Some(existing)
                if existing.ledger == account.ledger
                    && existing.flags == account.flags
                    && existing.user_data == account.user_data =>
            {
                ResultCode::Exists
            }
            Some(_) => ResultCode::ExistsWithDifferentFields,
            None => ResultCode::Ok,
        }
    }

    #[inline]
    fn account_ref(&self, id: AccountId) -> Option<&Account> {
        self.row_of(id).map(|row| &self.accounts[row as usize].0)
    }

    fn create_account(&mut self, account: &CreateAccount, seq: u64) {
        assert!(self.account(account.id).is_none(), "account {} created twice", account.id);
        self.insert_account(Account {
            id: account.id,
            ledger: account.ledger,
            flags: account.flags,
            user_data: account.user_data,
            balance: 0,
            created_seq: seq,
            last_seq: seq,
        });
    }

    /// The row of account `id` in `accounts`.
    #[inline]
    fn row_of(&self, id: AccountId) -> Option<u32> {
        self.account_index.find(id, |row| self.accounts[row as usize].0.id)
    }

    fn insert_account(&mut self, account: Account) {
        let index = u32::try_from(self.accounts.len()).expect("a partition holds fewer than 2^32 accounts");
        assert!(self.row_of(account.id).is_none(), "account {} inserted twice", account.id);
        self.accounts.push(AccountRow(account));
        let accounts = &self.accounts;
        self.account_index.insert(account.id, index, |row| accounts[row as usize].0.id);
        self.account_dirty.push(false);
        self.mark_dirty(index);
    }

    #[inline]
    fn mark_dirty(&mut self, index: u32) {
        let dirty = &mut self.account_dirty[index as usize];
        if !*dirty {
            *dirty = true;
            self.dirty_accounts.push(index);
        }
    }

    /// Applies a checked posting as the event at `seq`.
    #[inline]
    fn post(&mut self, posting: &Posting, seq: u64) {
        assert_ne!(posting.debit_index, posting.credit_index);
        let sides = [
            (posting.debit_index, posting.debit_balance_after, posting.debit_prev_seq),
            (posting.credit_index, posting.credit_balance_after, posting.credit_prev_seq),
        ];
        for (index, balance_after, prev_seq) in sides {
            let account = &mut self.accounts[index as usize].0;
            assert_eq!(account.last_seq, prev_seq, "the posting was checked against the current state");
            assert!(prev_seq < seq);
            account.balance = balance_after;
            account.last_seq = seq;
            assert!(account.is_external() || account.balance >= 0, "ordinary account {} went negative", account.id);
            self.mark_dirty(index);
        }
    }

    fn apply_event(&mut self, event: &Event, judge_future_ids: bool) {
        assert_eq!(event.seq, self.last_seq + 1, "validated by apply_batch and the decoder");
        assert!(self.last_seq == 0 || event.timestamp_ns > self.last_timestamp_ns);
        match event.body {
            EventBody::AccountCreated { account } => {
                assert_eq!(self.decide_account(&account), ResultCode::Ok, "replayed creation diverges");
                self.create_account(&account, event.seq);
            }
            EventBody::AccountRejected { account, code } => {
                assert_eq!(self.decide_account(&account), code, "replayed account rejection diverges");
            }
            EventBody::TransferPosted { transfer, .. } | EventBody::TransferRejected { transfer, .. } => {
                // Re-decide the transfer against this replica's state: the log must say exactly what the
                // leader decided from the same state, or the replicas have diverged.
                let decision = self.decide_transfer(&transfer, event.timestamp_ns, judge_future_ids);
                match (decision, event.body) {
                    (TransferDecision::Posted { fingerprint, posting }, logged @ EventBody::TransferPosted { .. }) => {
                        assert_eq!(
                            posted_body(&transfer, &posting),
                            logged,
                            "replayed transfer {:#x} diverges from this replica's balances",
                            transfer.id
                        );
                        self.post(&posting, event.seq);
                        self.record_id(&transfer, fingerprint, ResultCode::Ok, event);
                    }
                    (
                        TransferDecision::Rejected { code, fingerprint },
                        EventBody::TransferRejected { code: logged, .. },
                    ) if code == logged => {
                        self.record_id(&transfer, fingerprint, code, event);
                    }
                    (TransferDecision::RejectedUnrecorded(code), EventBody::TransferRejected { code: logged, .. })
                        if code == logged => {}
                    (decision, body) => {
                        panic!("replayed event {body:?} diverges from this replica's decision {decision:?}")
                    }
                }
            }
        }
        self.last_seq = event.seq;
        self.last_timestamp_ns = event.timestamp_ns;
    }

    fn record_id(&mut self, transfer: &Transfer, fingerprint: u128, code: ResultCode, event: &Event) {
        self.ids.insert(IdEntry {
            id: transfer.id,
            fingerprint,
            code,
            seq: event.seq,
            recorded_ns: event.timestamp_ns,
        });
    }
}

fn posted_body(transfer: &Transfer, posting: &Posting) -> EventBody {
    EventBody::TransferPosted {
        transfer: *transfer,
        debit_balance_after: posting.debit_balance_after,
        credit_balance_after: posting.credit_balance_after,
        debit_prev_seq: posting.debit_prev_seq,
        credit_prev_seq: posting.credit_prev_seq,
    }
}

fn account_id_allowed(id: AccountId) -> bool {
    id != 0 && id != AccountId::MAX
}

/// The per-account history rows of a batch, in event order: `AccountCreated` -> one row for the account
/// (balance 0); `TransferPosted` -> a row for the debit and one for the credit account, each with its
/// balance after; `TransferRejected` -> a row for both ids the transfer named, whether or not those
/// accounts exist (the event does not say; the store keeps such rows, and a lookup of a missing account
/// never reads them), with `balance_after` 0 because a rejection records no balance — readers take the
/// balance from the account's previous row. `AccountRejected` changes nothing and yields no row.
pub fn history_entries(batch: &EventBatchView, mut f: impl FnMut(AccountId, HistoryEntry)) {
    for event in batch.iter() {
        let entry = |kind, code, transfer, balance_after| HistoryEntry {
            seq: event.seq,
            timestamp_ns: event.timestamp_ns,
            kind,
            code,
            transfer,
            balance_after,
        };
        match event.body {
            EventBody::AccountCreated { account } => {
                f(account.id, entry(HistoryKind::AccountCreated, ResultCode::Ok, Transfer::default(), 0));
            }
            EventBody::AccountRejected { .. } => {}
            EventBody::TransferPosted { transfer, debit_balance_after, credit_balance_after, .. } => {
                let kind = HistoryKind::TransferPosted;
                f(transfer.debit_account_id, entry(kind, ResultCode::Ok, transfer, debit_balance_after));
                f(transfer.credit_account_id, entry(kind, ResultCode::Ok, transfer, credit_balance_after));
            }
            EventBody::TransferRejected { transfer, code } => {
                let kind = HistoryKind::TransferRejected;
                f(transfer.debit_account_id, entry(kind, code, transfer, 0));
                if transfer.credit_account_id != transfer.debit_account_id {
                    f(transfer.credit_account_id, entry(kind, code, transfer, 0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use net::types::{transfer_id_from_parts, ACCOUNT_FLAG_EXTERNAL};

    const USD: u32 = 840;
    const EUR: u32 = 978;
    const MS: u64 = 1_000_000;
    const EXTERNAL: u64 = 1;

    /// A partition plus its log: every non-empty batch it emitted, in order.
    struct Harness {
        state: PartitionState,
        events: EventBuffer,
        log: Vec<Vec<u8>>,
        now_ns: u64,
    }

    impl Harness {
        fn new(config: PartitionConfig) -> Self {
            Harness {
                state: PartitionState::new(config),
                events: EventBuffer::new(),
                log: Vec::new(),
                now_ns: 1_000 * MS,
            }
        }

        fn single(window_ms: u64, ids_max: usize) -> Self {
            Harness::new(PartitionConfig {
                partition: 0,
                partitions: 1,
                idempotency_window_ms: window_ms,
                idempotency_ids_max: ids_max,
                id_hash_key: 0x5eed,
            })
        }

        fn seal(&mut self) {
            if !self.events.is_empty() {
                self.log.push(self.events.finish().to_vec());
            }
            self.events.clear();
        }

        fn create(&mut self, accounts: &[CreateAccount]) -> Vec<ItemResult> {
            let mut results = Vec::new();
            self.state.execute_create_accounts(self.now_ns, accounts, &mut self.events, &mut results);
            self.seal();
            results
        }

        fn transfer(&mut self, transfers: &[Transfer]) -> Vec<ItemResult> {
            let mut results = Vec::new();
            self.state.execute_transfers(self.now_ns, transfers, &mut self.events, &mut results);
            self.seal();
            results
        }

        fn codes(&mut self, transfers: &[Transfer]) -> Vec<ResultCode> {
            self.transfer(transfers).iter().map(|r| r.code).collect()
        }

        fn balance(&self, id: u64) -> i64 {
            self.state.account(id).expect("account exists").balance
        }

        fn last_event(&self) -> Event {
            let view = EventBatchView::new(self.log.last().expect("something was logged")).expect("valid");
            view.event(view.event_count() - 1)
        }

        fn replayed(&self) -> PartitionState {
            let mut replica = PartitionState::new(self.state.config());
            for bytes in &self.log {
                replica.apply_batch(&EventBatchView::new(bytes).expect("valid")).expect("applies");
            }
            replica
        }
    }

    fn account(id: u64, ledger: u32, flags: u32) -> CreateAccount {
        CreateAccount { id, ledger, flags, user_data: id as u128 * 10 }
    }

    fn transfer(id: u128, debit: u64, credit: u64, amount: u64) -> Transfer {
        Transfer { id, debit_account_id: debit, credit_account_id: credit, amount, ledger: USD, flags: 0, user_data: 0 }
    }

    /// External account 1 and ordinary 2, 3 in USD; ordinary 4 in EUR. Account 2 holds 100.
    fn funded() -> Harness {
        let mut h = Harness::single(60_000, 1_000);
        let results = h.create(&[
            account(EXTERNAL, USD, ACCOUNT_FLAG_EXTERNAL),
            account(2, USD, 0),
            account(3, USD, 0),
            account(4, EUR, 0),
        ]);
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
        assert_eq!(h.codes(&[transfer(1_000, EXTERNAL, 2, 100)]), vec![ResultCode::Ok]);
        h
    }

    #[test]
    fn account_rules() {
        let mut h = Harness::single(1_000, 10);
        let results = h.create(&[
            account(0, USD, 0),
            account(u64::MAX, USD, 0),
            account(5, USD, 2),
            account(5, 0, 0),
            account(5, USD, 0),
            account(5, USD, 0),
            CreateAccount { user_data: 1, ..account(5, USD, 0) },
            account(5, EUR, 0),
            account(5, USD, ACCOUNT_FLAG_EXTERNAL),
        ]);
        let codes: Vec<ResultCode> = results.iter().map(|r| r.code).collect();
        use ResultCode::*;
        assert_eq!(
            codes,
            vec![
                ReservedId,
                ReservedId,
                InvalidFlags,
                InvalidLedger,
                Ok,
                Exists,
                ExistsWithDifferentFields,
                ExistsWithDifferentFields,
                ExistsWithDifferentFields
            ]
        );
        assert_eq!(results.iter().map(|r| r.index).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        assert_eq!(
            results.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=9).collect::<Vec<_>>(),
            "every command is logged"
        );
        let created = h.state.account(5).expect("created");
        assert_eq!((created.balance, created.created_seq, created.last_seq, created.user_data), (0, 5, 5, 50));
        assert_eq!(h.state.accounts_len(), 1);
        let view = EventBatchView::new(&h.log[0]).expect("valid");
        let kinds: Vec<EventKind> = view.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds.iter().filter(|&&k| k == EventKind::AccountCreated).count(), 1);
        assert_eq!(kinds.iter().filter(|&&k| k == EventKind::AccountRejected).count(), 8);
    }

    #[test]
    #[should_panic(expected = "routed to the wrong partition")]
    fn an_account_of_another_partition_is_a_routing_bug() {
        let mut h = Harness::new(PartitionConfig {
            partition: 0,
            partitions: 8,
            idempotency_window_ms: 1,
            idempotency_ids_max: 4,
            id_hash_key: 1,
        });
        let foreign = (1..).find(|&id| partition_of(id, 8) != 0).expect("some id hashes elsewhere");
        h.create(&[account(foreign, USD, 0)]);
    }

    #[test]
    fn each_transfer_rule_has_its_code() {
        use ResultCode::*;
        let mut h = funded();
        let cases = [
            (Transfer { flags: 1, ..transfer(10, 2, 3, 1) }, InvalidFlags),
            (transfer(0, 2, 3, 1), ReservedId),
            (transfer(11, 2, 2, 1), SameAccount),
            (transfer(12, 2, 3, 0), ZeroAmount),
            (transfer(13, 2, 3, i64::MAX as u64 + 1), Overflow),
            (transfer(14, 99, 3, 1), DebitAccountNotFound),
            (transfer(15, 2, 99, 1), CreditAccountNotFound),
            (transfer(16, 2, 4, 1), LedgerMismatch),
            (Transfer { ledger: EUR, ..transfer(17, 2, 3, 1) }, LedgerMismatch),
            (transfer(18, 2, 3, 101), InsufficientFunds),
            (transfer(19, 2, 3, 100), Ok),
        ];
        for (t, expected) in cases {
            let before_seq = h.state.last_seq();
            let results = h.transfer(&[t]);
            assert_eq!(results[0].code, expected, "{t:?}");
            assert_eq!(results[0].seq, before_seq + 1, "every decision is logged with the next seq");
            assert_eq!(h.last_event().code(), expected);
        }
        assert_eq!((h.balance(2), h.balance(3), h.balance(EXTERNAL)), (0, 100, -100));
        let account_3 = h.state.account(3).expect("exists");
        assert_eq!(account_3.last_seq, h.state.last_seq(), "a posting stamps both accounts");
    }

    #[test]
    fn first_failing_rule_wins() {
        use ResultCode::*;
        let mut h = funded();
        let cases = [
            (Transfer { flags: 4, ..transfer(0, 2, 2, 0) }, InvalidFlags),
            (transfer(0, 2, 2, 0), ReservedId),
            (transfer(20, 2, 2, 0), SameAccount),
            (transfer(21, 98, 99, 0), ZeroAmount),
            (transfer(22, 98, 99, u64::MAX), Overflow),
            (transfer(23, 98, 99, 1), DebitAccountNotFound),
            (Transfer { ledger: EUR, ..transfer(24, 2, 99, 1_000) }, CreditAccountNotFound),
            (Transfer { ledger: EUR, ..transfer(25, 2, 3, 1_000) }, LedgerMismatch),
        ];
        for (t, expected) in cases {
            assert_eq!(h.codes(&[t]), vec![expected], "{t:?}");
        }
    }

    #[test]
    fn cross_partition_transfers_are_refused() {
        let partitions = 4;
        let mut h = Harness::new(PartitionConfig {
            partition: 0,
            partitions,
            idempotency_window_ms: 1_000,
            idempotency_ids_max: 100,
            id_hash_key: 2,
        });
        let local: Vec<u64> = (2..).filter(|&id| partition_of(id, partitions) == 0).take(2).collect();
        let foreign = (2..).find(|&id| partition_of(id, partitions) != 0).expect("some id hashes elsewhere");
        h.create(&[account(local[0], USD, ACCOUNT_FLAG_EXTERNAL), account(local[1], USD, 0)]);
        use ResultCode::*;
        assert_eq!(
            h.codes(&[
                transfer(1, local[0], foreign, 5),
                transfer(2, foreign, local[1], 5),
                transfer(3, local[0], local[1], 5)
            ]),
            vec![CrossPartitionUnsupported, CrossPartitionUnsupported, Ok]
        );
    }

    #[test]
    fn overflow_on_either_side_is_rejected_without_change() {
        let mut h = Harness::single(60_000, 100);
        h.create(&[account(EXTERNAL, USD, ACCOUNT_FLAG_EXTERNAL), account(2, USD, 0), account(3, USD, 0)]);
        let max = i64::MAX as u64;
        assert_eq!(h.codes(&[transfer(30, EXTERNAL, 3, max), transfer(31, EXTERNAL, 2, 1)]), vec![ResultCode::Ok; 2]);
        assert_eq!((h.balance(EXTERNAL), h.balance(2), h.balance(3)), (i64::MIN, 1, i64::MAX));
        let digest = h.state.digest();
        // Debit side: the external account cannot go below i64::MIN. Credit side: 3 cannot exceed MAX.
        let debit_side = h.transfer(&[transfer(32, EXTERNAL, 2, 1)])[0];
        let credit_side = h.transfer(&[transfer(33, 2, 3, 1)])[0];
        assert_eq!((debit_side.code, credit_side.code), (ResultCode::Overflow, ResultCode::Overflow));
        assert_eq!((h.balance(EXTERNAL), h.balance(2), h.balance(3)), (i64::MIN, 1, i64::MAX));
        assert_ne!(h.state.digest(), digest, "the rejections are recorded");
        assert_eq!(h.state.ledger_sums(), vec![(USD, 0)]);
    }

    #[test]
    fn retry_with_same_fields_answers_the_original_outcome_and_changes_nothing() {
        let mut h = funded();
        let t = transfer(40, 2, 3, 30);
        let first = h.transfer(&[t])[0];
        assert_eq!(first.code, ResultCode::Ok);
        let digest = h.state.digest();
        let logged = h.log.len();
        let retry = h.transfer(&[t, t]);
        for (index, result) in retry.iter().enumerate() {
            assert_eq!(
                *result,
                ItemResult { index: index as u32, code: ResultCode::Ok, flags: RESULT_FLAG_REPLAYED, seq: first.seq }
            );
        }
        assert_eq!(h.state.digest(), digest, "a retry changes nothing");
        assert_eq!(h.log.len(), logged, "a retry logs nothing");
        assert_eq!((h.balance(2), h.balance(3)), (70, 30));
    }

    #[test]
    fn reuse_with_different_fields_is_rejected_and_keeps_the_original() {
        let mut h = funded();
        let t = transfer(41, 2, 3, 30);
        let first = h.transfer(&[t])[0];
        let conflict = h.transfer(&[Transfer { amount: 31, ..t }])[0];
        assert_eq!(conflict.code, ResultCode::ExistsWithDifferentFields);
        assert_eq!(conflict.flags, 0);
        assert_eq!(conflict.seq, first.seq + 1, "the conflict is logged");
        assert_eq!(h.last_event().kind(), EventKind::TransferRejected);
        let retry = h.transfer(&[t])[0];
        assert_eq!((retry.code, retry.seq, retry.is_replayed()), (ResultCode::Ok, first.seq, true));
        assert_eq!((h.balance(2), h.balance(3)), (70, 30));
    }

    #[test]
    fn a_rejected_id_retried_answers_the_same_rejection() {
        let mut h = funded();
        let t = transfer(42, 2, 3, 500);
        let first = h.transfer(&[t])[0];
        assert_eq!(first.code, ResultCode::InsufficientFunds);
        // Even once the funds are there, the id stays decided.
        assert_eq!(h.codes(&[transfer(43, EXTERNAL, 2, 1_000)]), vec![ResultCode::Ok]);
        let retry = h.transfer(&[t])[0];
        assert_eq!((retry.code, retry.seq, retry.is_replayed()), (ResultCode::InsufficientFunds, first.seq, true));
        assert_eq!(h.balance(3), 0);
    }

    #[test]
    fn malformed_commands_do_not_consume_their_id() {
        let mut h = funded();
        let t = transfer(44, 2, 3, 5);
        assert_eq!(h.codes(&[Transfer { flags: 8, ..t }]), vec![ResultCode::InvalidFlags]);
        assert_eq!(h.codes(&[t]), vec![ResultCode::Ok], "the fixed transfer may reuse the id");
    }

    #[test]
    fn the_window_is_time_an_id_older_than_it_is_expired_whatever_the_table_holds() {
        let mut h = funded();
        let window_ms = 60_000;
        let old = transfer(transfer_id_from_parts(1_000, 1), 2, 3, 1);
        assert_eq!(h.codes(&[old]), vec![ResultCode::Ok]);
        // The event at 61_000 ms: id time 1_000 + window 60_000 is not before it.
        h.now_ns = (1_000 + window_ms) * MS;
        assert!(h.transfer(&[old])[0].is_replayed(), "at exactly the window the retry gets its outcome");
        h.now_ns += MS;
        let balance = h.balance(3);
        assert_eq!(h.codes(&[old, old]), vec![ResultCode::IdExpired, ResultCode::IdExpired], "not recorded either");
        assert_eq!(h.codes(&[transfer(transfer_id_from_parts(999, 9), 2, 3, 1)]), vec![ResultCode::IdExpired]);
        assert_eq!(h.balance(3), balance, "an expired id is never applied");
        // An id just inside the window is new and accepted, however old it is otherwise.
        let late = transfer(transfer_id_from_parts(1_001, 2), 2, 3, 1);
        assert_eq!(h.codes(&[late]), vec![ResultCode::Ok]);
        assert_eq!(h.replayed().digest(), h.state.digest(), "replay judges by the events' timestamps");
    }

    #[test]
    fn ids_beyond_memory_move_to_runs_and_are_never_refused_for_age() {
        // 8 ids in memory; 10_000 transfers push almost all of them into id-index runs (in memory here).
        let mut h = Harness::single(86_400_000, 8);
        h.create(&[account(EXTERNAL, USD, ACCOUNT_FLAG_EXTERNAL), account(2, USD, 0)]);
        let first = transfer(transfer_id_from_parts(h.now_ns / MS, 1), EXTERNAL, 2, 1);
        let first_result = h.transfer(&[first])[0];
        let mut batch = Vec::new();
        for k in 2..10_002u64 {
            h.now_ns += MS / 4;
            batch.push(transfer(transfer_id_from_parts(h.now_ns / MS, k as u128), EXTERNAL, 2, 1));
            if batch.len() == 100 {
                assert_eq!(h.codes(&batch), vec![ResultCode::Ok; 100]);
                batch.clear();
            }
        }
        assert!(h.state.ids().len() <= 8 + 2 * 2, "memory holds at most ids_max plus the runs being built");
        assert!(!h.state.ids().cold_runs().is_empty());
        // A batch created before all of them, delayed until now: accepted (the old count bound refused it).
        let delayed = transfer(transfer_id_from_parts(1_000, 999_999), EXTERNAL, 2, 1);
        assert_eq!(h.codes(&[delayed]), vec![ResultCode::Ok]);
        // A retry of the very first id is answered from a run with its original outcome.
        let retry = h.transfer(&[first])[0];
        assert_eq!((retry.code, retry.seq, retry.is_replayed()), (ResultCode::Ok, first_result.seq, true));
        let conflict = h.transfer(&[Transfer { amount: 2, ..first }])[0];
        assert_eq!(conflict.code, ResultCode::ExistsWithDifferentFields);
        assert_eq!(h.balance(2), 10_002);
        assert_eq!(h.replayed().digest(), h.state.digest());
    }

    #[test]
    fn an_id_from_the_future_is_refused_unrecorded_until_the_clock_catches_up() {
        let mut h = funded();
        let now_ms = h.now_ns / MS;
        let at_bound = transfer(transfer_id_from_parts(now_ms + TRANSFER_ID_FUTURE_MS_MAX, 1), 2, 3, 1);
        let beyond = transfer(transfer_id_from_parts(now_ms + TRANSFER_ID_FUTURE_MS_MAX + 1, 2), 2, 3, 1);
        let far = transfer(transfer_id_from_parts(now_ms + 365 * 86_400_000, 3), 2, 3, 1);
        let (balance, ids) = (h.balance(3), h.state.ids().len());
        assert_eq!(h.codes(&[beyond, far]), vec![ResultCode::IdFromFuture, ResultCode::IdFromFuture]);
        assert_eq!((h.balance(3), h.state.ids().len()), (balance, ids), "nothing applied, nothing recorded");
        assert_eq!(h.codes(&[at_bound]), vec![ResultCode::Ok]);
        // A millisecond later `beyond` is within the bound: the refusal did not consume its id.
        h.now_ns += MS;
        assert_eq!(h.codes(&[beyond]), vec![ResultCode::Ok]);
        assert_eq!(h.balance(3), balance + 2);
        // Replay judges each id against the event's own timestamp and reaches the same state.
        assert_eq!(h.replayed().digest(), h.state.digest());
    }

    #[test]
    fn a_version_1_log_with_a_future_id_still_replays() {
        // Logs written before the id_from_future rule may hold posted transfers with ids far ahead of
        // their event: replay must accept them as decided then, not re-judge them by today's rule.
        let mut h = funded();
        let honest = transfer_id_from_parts(h.now_ns / MS, 77);
        assert_eq!(h.codes(&[transfer(honest, 2, 3, 1)]), vec![ResultCode::Ok]);
        let future = transfer_id_from_parts(h.now_ns / MS + 86_400_000, 77);
        let mut old_log = h.log.clone();
        let last = old_log.last_mut().expect("logged");
        let at = last.windows(16).position(|w| w == honest.to_le_bytes()).expect("the id is in the batch");
        last[at..at + 16].copy_from_slice(&future.to_le_bytes());
        last[4..6].copy_from_slice(&1u16.to_le_bytes());
        let mut replica = PartitionState::new(h.state.config());
        for bytes in &old_log {
            replica.apply_batch(&EventBatchView::new(bytes).expect("valid")).expect("applies");
        }
        assert_eq!(replica.account(3).expect("exists").balance, h.balance(3));
        assert!(replica.ids().get(future).is_some(), "the old decision is remembered");
        // The same bytes as a version-2 batch contradict the rule: the replica refuses to diverge.
        last_as_version_2_panics(&old_log, h.state.config());
    }

    fn last_as_version_2_panics(log: &[Vec<u8>], config: PartitionConfig) {
        let mut log = log.to_vec();
        log.last_mut().expect("logged")[4..6].copy_from_slice(&2u16.to_le_bytes());
        let outcome = std::panic::catch_unwind(move || {
            let mut replica = PartitionState::new(config);
            for bytes in &log {
                let _ = replica.apply_batch(&EventBatchView::new(bytes).expect("valid"));
            }
        });
        assert!(outcome.is_err(), "a version-2 batch with a future id posted must not replay");
    }

    #[test]
    fn timestamps_strictly_increase_even_when_the_clock_steps_back() {
        let mut h = funded();
        h.now_ns = 5_000 * MS;
        h.transfer(&[transfer(50, 2, 3, 1), transfer(51, 2, 3, 1)]);
        let first = EventBatchView::new(h.log.last().expect("logged")).expect("valid");
        assert_eq!(first.iter().map(|e| e.timestamp_ns).collect::<Vec<_>>(), vec![5_000 * MS, 5_000 * MS + 1]);
        h.now_ns = 10;
        h.transfer(&[transfer(52, 2, 3, 1), transfer(53, 2, 3, 1)]);
        let second = EventBatchView::new(h.log.last().expect("logged")).expect("valid");
        assert_eq!(second.iter().map(|e| e.timestamp_ns).collect::<Vec<_>>(), vec![5_000 * MS + 2, 5_000 * MS + 3]);
        assert_eq!(h.state.last_timestamp_ns(), 5_000 * MS + 3);
    }

    #[test]
    fn several_executes_share_one_batch() {
        let mut h = Harness::single(1_000, 10);
        let mut results = Vec::new();
        h.state.execute_create_accounts(
            h.now_ns,
            &[account(1, USD, ACCOUNT_FLAG_EXTERNAL), account(2, USD, 0)],
            &mut h.events,
            &mut results,
        );
        h.state.execute_transfers(h.now_ns, &[transfer(7, 1, 2, 9)], &mut h.events, &mut results);
        assert_eq!(results.iter().map(|r| (r.index, r.seq)).collect::<Vec<_>>(), vec![(0, 1), (1, 2), (0, 3)]);
        let view = h.events.view();
        assert_eq!((view.first_seq(), view.last_seq()), (1, 3));
        let mut replica = PartitionState::new(h.state.config());
        replica.apply_batch(&view).expect("applies");
        assert_eq!(replica.digest(), h.state.digest());
    }

    #[test]
    fn apply_batch_skips_applied_batches_and_refuses_gaps() {
        let mut h = funded();
        h.transfer(&[transfer(60, 2, 3, 1)]);
        h.transfer(&[transfer(61, 2, 3, 1)]);
        let views: Vec<EventBatchView> = h.log.iter().map(|b| EventBatchView::new(b).expect("valid")).collect();
        let mut replica = PartitionState::new(h.state.config());
        let gap = replica.apply_batch(&views[1]).unwrap_err();
        assert_eq!(gap, ApplyError::Gap { first_seq: views[1].first_seq(), last_seq: 0 });
        for view in &views {
            replica.apply_batch(view).expect("in order");
        }
        let digest = replica.digest();
        for view in &views {
            replica.apply_batch(view).expect("already applied batches are skipped");
        }
        assert_eq!(replica.digest(), digest);
        assert_eq!(replica.digest(), h.state.digest());

        let mut other = PartitionState::new(PartitionConfig { partition: 1, partitions: 2, ..h.state.config() });
        assert_eq!(other.apply_batch(&views[0]).unwrap_err(), ApplyError::WrongPartition { batch: 0, state: 1 });

        // A batch straddling the applied seq: re-encode the first two batches as one.
        let mut merged = EventBuffer::new();
        merged.begin(0, 1);
        views[0].iter().chain(views[1].iter()).for_each(|e| merged.push(&e));
        let mut partial = PartitionState::new(h.state.config());
        partial.apply_batch(&views[0]).expect("first batch");
        assert!(matches!(partial.apply_batch(&merged.view()), Err(ApplyError::PartialOverlap { .. })));
    }

    #[test]
    fn apply_batch_refuses_a_timestamp_regression_between_batches() {
        let mut h = funded();
        let mut replica = h.replayed();
        let mut late = EventBuffer::new();
        late.begin(0, h.state.last_seq() + 1);
        let body = EventBody::AccountRejected { account: account(2, USD, 0), code: ResultCode::Exists };
        late.push(&Event { seq: h.state.last_seq() + 1, timestamp_ns: h.state.last_timestamp_ns(), body });
        assert!(matches!(replica.apply_batch(&late.view()), Err(ApplyError::TimestampNotIncreasing { .. })));
        h.now_ns = 0;
        h.create(&[account(2, USD, 0)]);
        replica.apply_batch(&EventBatchView::new(h.log.last().expect("logged")).expect("valid")).expect("applies");
        assert_eq!(replica.digest(), h.state.digest());
    }

    #[test]
    #[should_panic(expected = "diverges")]
    fn a_diverging_log_stops_the_replica() {
        let h = funded();
        let mut bytes = h.log[1].clone();
        // The posted transfer's credit balance after: claim 101 instead of 100.
        let offset = crate::event::EVENT_BATCH_HEADER_BYTES + 96;
        bytes[offset] = 101;
        let mut replica = PartitionState::new(h.state.config());
        replica.apply_batch(&EventBatchView::new(&h.log[0]).expect("valid")).expect("applies");
        replica.apply_batch(&EventBatchView::new(&bytes).expect("structurally valid")).expect("panics first");
    }

    #[test]
    fn drain_dirty_lists_each_changed_account_once_and_restore_matches() {
        let mut h = funded();
        let mut rows = PartitionRows::default();
        let drain = |state: &mut PartitionState, rows: &mut PartitionRows| {
            let mut changed = Vec::new();
            let mark = state.drain_dirty(|row| match row {
                DirtyRow::Account(account) => changed.push(*account),
                DirtyRow::IdInserted(entry) => rows.ids.hot.push(*entry),
            });
            for account in &changed {
                rows.accounts.retain(|a| a.id != account.id);
                rows.accounts.push(*account);
            }
            rows.last_seq = mark.last_seq;
            rows.last_timestamp_ns = mark.last_timestamp_ns;
            assert_eq!(mark.ids.head_arrival, 0, "nothing left memory in this small test");
            changed.iter().map(|a| a.id).collect::<Vec<_>>()
        };
        assert_eq!(drain(&mut h.state, &mut rows), vec![EXTERNAL, 2, 3, 4]);
        assert_eq!(drain(&mut h.state, &mut rows), Vec::<u64>::new());
        h.transfer(&[transfer(70, 2, 3, 1), transfer(71, 3, 2, 1), transfer(72, 2, 99, 1)]);
        let mut changed = drain(&mut h.state, &mut rows);
        changed.sort_unstable();
        assert_eq!(changed, vec![2, 3]);
        let restored = PartitionState::restore_rows(h.state.config(), rows.clone()).expect("consistent rows");
        assert_eq!(restored.digest(), h.state.digest());
        let exported = PartitionState::restore_rows(h.state.config(), h.state.export_rows()).expect("consistent rows");
        assert_eq!(exported.digest(), h.state.digest());
    }

    #[test]
    fn restore_refuses_inconsistent_rows() {
        let h = funded();
        let config = h.state.config();
        let rows = h.state.export_rows();
        let mut duplicate = rows.clone();
        duplicate.accounts.push(duplicate.accounts[0]);
        assert!(matches!(PartitionState::restore_rows(config, duplicate), Err(RestoreError::DuplicateAccount { .. })));
        let mut ahead = rows.clone();
        ahead.last_seq -= 1;
        assert!(matches!(
            PartitionState::restore_rows(config, ahead),
            Err(RestoreError::AccountAhead { .. } | RestoreError::IdEntryAhead { .. })
        ));
        let mut negative = rows.clone();
        negative.accounts.iter_mut().filter(|a| a.id == 2).for_each(|a| a.balance = -1);
        assert_eq!(PartitionState::restore_rows(config, negative).unwrap_err(), RestoreError::InvalidAccount { id: 2 });
        let wide = PartitionConfig { partitions: 64, ..config };
        let foreign = (1..).find(|&id| partition_of(id, 64) != 0).expect("exists");
        let mut elsewhere = rows.clone();
        elsewhere.accounts[0].id = foreign;
        assert!(matches!(PartitionState::restore_rows(wide, elsewhere), Err(RestoreError::ForeignAccount { .. })));
    }

    #[test]
    #[should_panic(expected = "checkpoint rows are inconsistent")]
    fn trusted_restore_stops_on_inconsistent_rows() {
        let h = funded();
        let mut rows = h.state.export_rows();
        rows.accounts.push(rows.accounts[0]);
        let PartitionRows { last_seq, last_timestamp_ns, accounts, ids } = rows;
        PartitionState::restore(h.state.config(), last_seq, last_timestamp_ns, accounts, ids);
    }

    #[test]
    fn history_rows_per_touched_account() {
        let mut h = funded();
        h.transfer(&[transfer(80, 2, 3, 40), transfer(81, 2, 3, 400)]);
        let mut rows = Vec::new();
        for bytes in &h.log {
            history_entries(&EventBatchView::new(bytes).expect("valid"), |account, entry| rows.push((account, entry)));
        }
        let summary: Vec<(u64, HistoryKind, ResultCode, i64)> =
            rows.iter().map(|(a, e)| (*a, e.kind, e.code, e.balance_after)).collect();
        use HistoryKind::*;
        assert_eq!(
            summary,
            vec![
                (EXTERNAL, AccountCreated, ResultCode::Ok, 0),
                (2, AccountCreated, ResultCode::Ok, 0),
                (3, AccountCreated, ResultCode::Ok, 0),
                (4, AccountCreated, ResultCode::Ok, 0),
                (EXTERNAL, TransferPosted, ResultCode::Ok, -100),
                (2, TransferPosted, ResultCode::Ok, 100),
                (2, TransferPosted, ResultCode::Ok, 60),
                (3, TransferPosted, ResultCode::Ok, 40),
                (2, TransferRejected, ResultCode::InsufficientFunds, 0),
                (3, TransferRejected, ResultCode::InsufficientFunds, 0),
            ]
        );
        assert_eq!(rows[6].1.transfer.id, 80);
        assert_eq!(rows.iter().map(|(_, e)| e.seq).max(), Some(h.state.last_seq()));
    }

    #[test]
    fn posted_events_chain_each_accounts_history() {
        let mut h = funded();
        h.transfer(&[transfer(90, 2, 3, 10), transfer(91, 3, 2, 5), transfer(92, EXTERNAL, 3, 1)]);
        // Walk account 3's chain backwards from its head and compare with a forward scan.
        let events: Vec<Event> =
            h.log.iter().flat_map(|b| EventBatchView::new(b).expect("valid").iter().collect::<Vec<_>>()).collect();
        let touches = |e: &Event| match e.body {
            EventBody::AccountCreated { account } => account.id == 3,
            EventBody::TransferPosted { transfer, .. } => {
                transfer.debit_account_id == 3 || transfer.credit_account_id == 3
            }
            _ => false,
        };
        let forward: Vec<u64> = events.iter().filter(|e| touches(e)).map(|e| e.seq).collect();
        let mut backward = Vec::new();
        let mut seq = h.state.account(3).expect("exists").last_seq;
        while seq != 0 {
            backward.push(seq);
            let event = events[(seq - 1) as usize];
            seq = match event.body {
                EventBody::TransferPosted { transfer, debit_prev_seq, credit_prev_seq, .. } => {
                    if transfer.debit_account_id == 3 {
                        debit_prev_seq
                    } else {
                        credit_prev_seq
                    }
                }
                _ => 0,
            };
        }
        backward.reverse();
        assert_eq!(backward, forward);
        assert_eq!(forward.len(), 4);
    }

    #[test]
    fn account_index_survives_growth() {
        let mut h = Harness::single(1_000, 10);
        // Ids spread over the whole u64 range and packed together, across several index doublings.
        let ids: Vec<u64> =
            (1..=3_000u64).map(|n| if n % 2 == 0 { n } else { n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }).collect();
        for chunk in ids.chunks(700) {
            let accounts: Vec<CreateAccount> = chunk.iter().map(|&id| account(id, USD, 0)).collect();
            assert!(h.create(&accounts).iter().all(|r| r.code == ResultCode::Ok));
        }
        assert_eq!(h.state.accounts_len(), ids.len());
        for &id in &ids {
            assert_eq!(h.state.account(id).map(|a| a.id), Some(id));
        }
        for missing in [3_001u64, 3_003, 4_000, u64::MAX - 1] {
            assert!(!ids.contains(&missing) && h.state.account(missing).is_none());
        }
        assert_eq!(h.replayed().digest(), h.state.digest());
    }

    #[test]
    fn digest_changes_with_any_state() {
        let h = funded();
        let base = h.state.digest();
        let mut more = funded();
        more.transfer(&[transfer(100, 2, 3, 1)]);
        assert_ne!(more.state.digest(), base);
        let mut rejected = funded();
        rejected.transfer(&[transfer(100, 2, 3, 1_000)]);
        assert_ne!(rejected.state.digest(), base, "a recorded rejection is state too");
        assert_eq!(funded().state.digest(), base, "same inputs, same digest");
        assert_eq!(h.replayed().digest(), base);
    }
}

/// Open-addressing index from account id to its row in `PartitionState::accounts`, insert-only
/// (accounts are never deleted) and kept at most half full.
///
/// Why not `HashMap<u64, u32>`: a lookup there reads a control byte group, then a bucket, then the row
/// — three cache misses per account at 100k accounts. Here one `u64` slot holds a 32-bit hash tag and
/// the row, so a lookup reads the slot line and then the row, which the transfer needs anyway; the id
/// is confirmed against the row itself.
///
/// Slot layout: `hash_high u32 << 32 | (row + 1) u32`; 0 is an empty slot. The table doubles (a rebuild
/// from the rows) when it would pass half full: that happens on account creation, never while
/// transfers execute.
#[derive(Clone, Debug)]
struct AccountIndex {
    slots: Vec<u64>,
    mask: usize,
    len: usize,
}

const ACCOUNT_INDEX_SLOTS_MIN: usize = 1024;

impl AccountIndex {
    fn new() -> Self {
        AccountIndex { slots: vec![0; ACCOUNT_INDEX_SLOTS_MIN], mask: ACCOUNT_INDEX_SLOTS_MIN - 1, len: 0 }
    }

    #[inline]
    fn hash_high(id: AccountId) -> u32 {
        (FastBuildHasher.hash_one(id) >> 32) as u32
    }

    /// The tag of `id` and the slot its probe starts at: one load, for `PartitionState::warm`.
    #[inline]
    fn probe_start(&self, id: AccountId) -> (u32, u64) {
        let hash_high = Self::hash_high(id);
        (hash_high, self.slots[hash_high as usize & self.mask])
    }

    /// The row in `slot` if the slot carries `tag` (most likely the account probed for).
    #[inline]
    fn row_if_tag(tag: u32, slot: u64) -> Option<u32> {
        (slot != 0 && (slot >> 32) as u32 == tag).then(|| slot as u32 - 1)
    }

    #[inline]
    fn find(&self, id: AccountId, id_at: impl Fn(u32) -> AccountId) -> Option<u32> {
        let hash_high = Self::hash_high(id);
        let mut position = hash_high as usize & self.mask;
        loop {
            let slot = self.slots[position];
            if slot == 0 {
                return None;
            }
            if (slot >> 32) as u32 == hash_high {
                let row = (slot as u32) - 1;
                if id_at(row) == id {
                    return Some(row);
                }
            }
            position = (position + 1) & self.mask;
        }
    }

    /// The caller has checked that `id` is absent; `id_at` must already know `row`.
    fn insert(&mut self, id: AccountId, row: u32, id_at: impl Fn(u32) -> AccountId) {
        assert!(row < u32::MAX - 1, "row + 1 fits the slot");
        assert_eq!(row as usize, self.len, "rows are dense, in creation order");
        if (self.len + 1) * 2 > self.slots.len() {
            // Rebuild at twice the size from the rows already indexed (rows 0..len).
            let capacity = self.slots.len() * 2;
            self.slots = vec![0; capacity];
            self.mask = capacity - 1;
            let indexed = self.len as u32;
            self.len = 0;
            for existing in 0..indexed {
                self.place(id_at(existing), existing);
            }
        }
        self.place(id, row);
    }

    fn place(&mut self, id: AccountId, row: u32) {
        let hash_high = Self::hash_high(id);
        let mut position = hash_high as usize & self.mask;
        while self.slots[position] != 0 {
            position = (position + 1) & self.mask;
        }
        self.slots[position] = ((hash_high as u64) << 32) | (row as u64 + 1);
        self.len += 1;
    }
}
