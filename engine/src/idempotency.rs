//! The transfer-id table: which transfer ids a partition has decided, with bounded memory.
//!
//! A transfer id is the client's idempotency key. For every decided id the table keeps a fingerprint of
//! the transfer's other fields, the outcome and the seq of the event that recorded it, so a retry gets
//! the original answer and a reuse with different fields is caught.
//!
//! Memory is bounded twice: entries recorded more than `idempotency_window_ms` before the entry being
//! inserted are evicted, and when `idempotency_ids_max` entries are held the oldest is evicted to make
//! room. Eviction is FIFO in arrival (= seq) order and happens only inside [`IdTable::insert`], driven
//! by the timestamp of the event being recorded — never by a wall clock — so a follower replaying the
//! log evicts exactly what the leader evicted. An idle partition therefore keeps old entries until its
//! next insert; that is harmless, since they still answer retries correctly.
//!
//! Forgetting is made safe by the *watermark*: the largest id-timestamp
//! ([`transfer_id_timestamp_ms`]) of any evicted id. An id that is not in the table but whose timestamp
//! is at or below the watermark might be a late retry of a forgotten transfer, so it is refused
//! (`IdExpired`) rather than risk applying it twice.
//!
//! **Small ids.** Clients are expected to use time-ordered ids (top 48 bits = ms since the Unix epoch,
//! see `net::types::transfer_id_from_parts`). Ids whose timestamp bits are 0 (e.g. 1, 2, 3, ...) work
//! only until the partition's first eviction: from then on the watermark is >= 0 and every such id not
//! still in the table is `IdExpired`.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use net::types::{transfer_id_timestamp_ms, ResultCode, Transfer, TransferId};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_128;

use crate::fast_hash::FastBuildHasher;

pub(crate) const NANOS_PER_MILLI: u64 = 1_000_000;
/// The entry ring reserves room for at most this many entries up front and grows (amortised) up to
/// `idempotency_ids_max` beyond it, so a partition configured with a large bound does not commit all of
/// its 64 bytes per id at creation. The index (16 bytes per id) is allocated whole up front.
pub const ID_TABLE_PREALLOCATED_IDS_MAX: usize = 1 << 16;
/// Bytes of the transfer fields that go into the fingerprint.
const FINGERPRINT_INPUT_BYTES: usize = 48;

/// One decided transfer id, as kept in memory and as persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdEntry {
    pub id: TransferId,
    /// [`transfer_fingerprint`] of the transfer that decided this id.
    pub fingerprint: u128,
    pub code: ResultCode,
    /// Seq of the event that recorded the outcome.
    pub seq: u64,
    /// Leader timestamp of that event.
    pub recorded_ns: u64,
}

/// xxh3-128 of every transfer field except the id: debit, credit, amount, ledger, flags, user_data.
pub fn transfer_fingerprint(transfer: &Transfer) -> u128 {
    let mut input = [0u8; FINGERPRINT_INPUT_BYTES];
    input[0..8].copy_from_slice(&transfer.debit_account_id.to_le_bytes());
    input[8..16].copy_from_slice(&transfer.credit_account_id.to_le_bytes());
    input[16..24].copy_from_slice(&transfer.amount.to_le_bytes());
    input[24..28].copy_from_slice(&transfer.ledger.to_le_bytes());
    input[28..32].copy_from_slice(&transfer.flags.to_le_bytes());
    input[32..48].copy_from_slice(&transfer.user_data.to_le_bytes());
    xxh3_128(&input)
}

/// One id-table change reported by [`IdTable::drain_changes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdChange<'a> {
    Inserted(&'a IdEntry),
    Evicted(TransferId),
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IdRestoreError {
    #[error("{entries} persisted id entries exceed idempotency_ids_max {ids_max}")]
    TooManyEntries { entries: usize, ids_max: usize },
    #[error("transfer id {id:#x} is persisted twice")]
    DuplicateId { id: TransferId },
    #[error("id entries share seq {seq}")]
    DuplicateSeq { seq: u64 },
    #[error("id entry seq {seq} was recorded at {recorded_ns} ns, before an earlier seq's {previous_ns} ns")]
    RecordedOutOfOrder { seq: u64, recorded_ns: u64, previous_ns: u64 },
    #[error("transfer id 0 is reserved and never recorded")]
    ReservedId,
}

/// Bounded map of decided transfer ids; see the module documentation.
#[derive(Clone, Debug)]
pub struct IdTable {
    window_ns: u64,
    ids_max: usize,
    /// Arrival order, which is also seq order and recorded_ns order.
    entries: VecDeque<IdEntry>,
    /// id -> arrival number; the entry is `entries[arrival - head_arrival]`.
    index: IdIndex,
    /// Arrival number of `entries[0]`.
    head_arrival: u64,
    watermark_ms: Option<u64>,
    /// Entries with an arrival number >= this were inserted since the last drain.
    drained_arrival: u64,
    /// Ids evicted since the last drain that had been drained (persisted) before.
    evicted_undrained: Vec<TransferId>,
}

impl IdTable {
    pub fn new(idempotency_window_ms: u64, idempotency_ids_max: usize) -> Self {
        assert!(idempotency_window_ms > 0, "an idempotency window of 0 ms remembers nothing");
        assert!(idempotency_ids_max > 0, "the id table holds at least one id");
        let preallocated = idempotency_ids_max.min(ID_TABLE_PREALLOCATED_IDS_MAX);
        IdTable {
            window_ns: idempotency_window_ms.saturating_mul(NANOS_PER_MILLI),
            ids_max: idempotency_ids_max,
            entries: VecDeque::with_capacity(preallocated),
            index: IdIndex::new(idempotency_ids_max),
            head_arrival: 0,
            watermark_ms: None,
            drained_arrival: 0,
            evicted_undrained: Vec::new(),
        }
    }

    /// Rebuilds a table from persisted entries (any order: they are replayed in seq order, which is the
    /// order they were inserted in) and the persisted watermark. The result holds nothing undrained.
    pub fn restore(
        idempotency_window_ms: u64,
        idempotency_ids_max: usize,
        mut entries: Vec<IdEntry>,
        watermark_ms: Option<u64>,
    ) -> Result<Self, IdRestoreError> {
        if entries.len() > idempotency_ids_max {
            return Err(IdRestoreError::TooManyEntries { entries: entries.len(), ids_max: idempotency_ids_max });
        }
        entries.sort_unstable_by_key(|entry| entry.seq);
        let mut table = IdTable::new(idempotency_window_ms, idempotency_ids_max);
        table.watermark_ms = watermark_ms;
        for (position, entry) in entries.iter().enumerate() {
            if entry.id == 0 {
                return Err(IdRestoreError::ReservedId);
            }
            if let Some(previous) = position.checked_sub(1).map(|p| entries[p]) {
                if previous.seq == entry.seq {
                    return Err(IdRestoreError::DuplicateSeq { seq: entry.seq });
                }
                if previous.recorded_ns > entry.recorded_ns {
                    return Err(IdRestoreError::RecordedOutOfOrder {
                        seq: entry.seq,
                        recorded_ns: entry.recorded_ns,
                        previous_ns: previous.recorded_ns,
                    });
                }
            }
            if table.get(entry.id).is_some() {
                return Err(IdRestoreError::DuplicateId { id: entry.id });
            }
            table.index.insert(entry.id, position as u64);
            table.entries.push_back(*entry);
        }
        table.drained_arrival = table.entries.len() as u64;
        Ok(table)
    }

    #[inline]
    pub fn get(&self, id: TransferId) -> Option<&IdEntry> {
        let arrival = self.index.find(id, self.head_arrival, |arrival| self.entry_at(arrival).id)?;
        Some(self.entry_at(arrival))
    }

    /// Loads the index line where a lookup of `id` starts (see `PartitionState::warm`). Reads only.
    #[inline]
    pub fn warm(&self, id: TransferId) {
        self.index.warm(id);
    }

    #[inline]
    pub fn contains(&self, id: TransferId) -> bool {
        self.get(id).is_some()
    }

    fn entry_at(&self, arrival: u64) -> &IdEntry {
        &self.entries[(arrival - self.head_arrival) as usize]
    }

    /// Touches the index slots of the `inserts` oldest entries when that many inserts would evict them,
    /// so the evictions find them in cache (see `PartitionState::warm`). Reads only.
    #[inline]
    pub fn warm_evictions(&self, inserts: usize) {
        let evictions = (self.entries.len() + inserts).saturating_sub(self.ids_max);
        for entry in self.entries.iter().take(evictions) {
            self.index.warm(entry.id);
        }
    }

    /// True when `id` (which must not be in the table) is too old to tell from a forgotten transfer.
    #[inline]
    pub fn is_expired(&self, id: TransferId) -> bool {
        self.watermark_ms.is_some_and(|watermark_ms| transfer_id_timestamp_ms(id) <= watermark_ms)
    }

    /// Records a decided id: first evicts entries recorded more than the window before
    /// `entry.recorded_ns`, then the oldest if the table is full. The caller has checked that the id is
    /// absent and not expired; entries arrive in seq order with non-decreasing timestamps.
    #[inline]
    pub fn insert(&mut self, entry: IdEntry) {
        assert!(entry.id != 0, "transfer id 0 is never recorded");
        assert!(!self.is_expired(entry.id), "an expired id is refused, never recorded");
        if let Some(last) = self.entries.back() {
            assert!(entry.seq > last.seq, "id entries arrive in seq order");
            assert!(entry.recorded_ns >= last.recorded_ns, "id entries arrive in time order");
        }
        while let Some(oldest) = self.entries.front() {
            if entry.recorded_ns.saturating_sub(oldest.recorded_ns) <= self.window_ns {
                break;
            }
            self.evict_oldest();
        }
        if self.entries.len() == self.ids_max {
            self.evict_oldest();
        }
        let arrival = self.head_arrival + self.entries.len() as u64;
        assert!(self.get(entry.id).is_none(), "a recorded id is never recorded again");
        self.index.insert(entry.id, arrival);
        self.entries.push_back(entry);
        assert!(self.entries.len() <= self.ids_max);
        assert_eq!(self.entries.len(), self.index.len());
    }

    fn evict_oldest(&mut self) {
        let oldest = self.entries.pop_front().expect("callers evict only from a non-empty table");
        self.index.remove(oldest.id, self.head_arrival);
        if self.head_arrival < self.drained_arrival {
            // Persisted at an earlier checkpoint, so the store must delete it. Entries inserted and
            // evicted between two drains were never persisted and need no delete.
            self.evicted_undrained.push(oldest.id);
        }
        self.head_arrival += 1;
        let id_timestamp_ms = transfer_id_timestamp_ms(oldest.id);
        self.watermark_ms = Some(self.watermark_ms.map_or(id_timestamp_ms, |w| w.max(id_timestamp_ms)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Largest id-timestamp of any evicted id; `None` until the first eviction.
    pub fn watermark_ms(&self) -> Option<u64> {
        self.watermark_ms
    }

    pub fn ids_max(&self) -> usize {
        self.ids_max
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ns / NANOS_PER_MILLI
    }

    /// Every entry in arrival order (a full export, e.g. for a snapshot).
    pub fn for_each(&self, f: impl FnMut(&IdEntry)) {
        self.entries.iter().for_each(f);
    }

    /// Changes since the previous drain, for a checkpoint: `Inserted` for each entry added since then
    /// and still held (to upsert), `Evicted` for each previously persisted id evicted since then (to
    /// delete), evictions first. The two sets never overlap: an evicted id is at or below the watermark and can never be
    /// recorded again. Returns the watermark to persist alongside.
    ///
    /// One callback (not one per kind) so a caller can write both kinds into the same batch.
    pub fn drain_changes(&mut self, mut change: impl FnMut(IdChange<'_>)) -> Option<u64> {
        for id in self.evicted_undrained.drain(..) {
            change(IdChange::Evicted(id));
        }
        let first_undrained = self.drained_arrival.max(self.head_arrival);
        let skip = (first_undrained - self.head_arrival) as usize;
        self.entries.iter().skip(skip).for_each(|entry| change(IdChange::Inserted(entry)));
        self.drained_arrival = self.head_arrival + self.entries.len() as u64;
        self.watermark_ms
    }

    /// Order-independent digest of the entries and the watermark (arrival numbers are local bookkeeping
    /// and excluded, so a restored table digests like the live one).
    pub fn digest(&self) -> u128 {
        let mut sum: u128 = 0;
        for entry in &self.entries {
            sum = sum.wrapping_add(entry_digest(entry));
        }
        let mut input = [0u8; 41];
        input[0..16].copy_from_slice(&sum.to_le_bytes());
        input[16..24].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        input[24] = self.watermark_ms.is_some() as u8;
        input[25..33].copy_from_slice(&self.watermark_ms.unwrap_or(0).to_le_bytes());
        input[33..41].copy_from_slice(&self.window_ns.to_le_bytes());
        xxh3_128(&input)
    }
}

/// Open-addressing index from transfer id to arrival number, sized once for `idempotency_ids_max`.
///
/// Why not `HashMap<u128, u64>`: its 32-byte buckets make a 262,144-id table 16 MiB of random access,
/// and FIFO churn leaves tombstones behind. Here a slot is one `u64` and the table is at most half
/// full: the common case — a new id — costs one cache line of probing, and eviction deletes by
/// backward shift, so no tombstones build up and nothing is rehashed after creation.
///
/// Slot layout: `hash_high u32 << 32 | arrival_low31 << 1 | 1`; 0 is an empty slot. The high hash half
/// is both the tag that filters probes without touching the ring and the slot's home position, so
/// backward shift never rehashes. 31 arrival bits suffice because live arrivals span fewer than
/// `idempotency_ids_max` < 2^31 consecutive numbers.
#[derive(Clone, Debug)]
struct IdIndex {
    slots: Vec<u64>,
    mask: usize,
    len: usize,
}

const ARRIVAL_BITS: u32 = 31;
const ARRIVAL_MASK: u64 = (1 << ARRIVAL_BITS) - 1;
/// Slots per id: at most half the table is occupied, which keeps linear probe runs short.
const ID_INDEX_SLOTS_PER_ID: usize = 2;
const ID_INDEX_SLOTS_MIN: usize = 16;

impl IdIndex {
    fn new(ids_max: usize) -> Self {
        assert!((ids_max as u64) < ARRIVAL_MASK, "idempotency_ids_max must stay below 2^31");
        let capacity = (ids_max * ID_INDEX_SLOTS_PER_ID).next_power_of_two().max(ID_INDEX_SLOTS_MIN);
        assert!(capacity <= 1 << 32, "slot positions come from 32 hash bits");
        IdIndex { slots: vec![0; capacity], mask: capacity - 1, len: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn hash_high(id: TransferId) -> u32 {
        (FastBuildHasher.hash_one(id) >> 32) as u32
    }

    #[inline]
    fn home(&self, hash_high: u32) -> usize {
        hash_high as usize & self.mask
    }

    #[inline]
    fn slot_value(hash_high: u32, arrival: u64) -> u64 {
        ((hash_high as u64) << 32) | ((arrival & ARRIVAL_MASK) << 1) | 1
    }

    /// The full arrival number of an occupied slot, given that it lies in `head..head + 2^31`.
    #[inline]
    fn slot_arrival(slot: u64, head_arrival: u64) -> u64 {
        let low = (slot >> 1) & ARRIVAL_MASK;
        head_arrival + (low.wrapping_sub(head_arrival) & ARRIVAL_MASK)
    }

    /// The arrival of `id`, confirming tag matches against the ring through `id_at`.
    #[inline]
    fn find(&self, id: TransferId, head_arrival: u64, id_at: impl Fn(u64) -> TransferId) -> Option<u64> {
        let hash_high = Self::hash_high(id);
        let mut position = self.home(hash_high);
        loop {
            let slot = self.slots[position];
            if slot == 0 {
                return None;
            }
            if (slot >> 32) as u32 == hash_high {
                let arrival = Self::slot_arrival(slot, head_arrival);
                if id_at(arrival) == id {
                    return Some(arrival);
                }
            }
            position = (position + 1) & self.mask;
        }
    }

    /// Loads the cache line where `id`'s probe starts (see `PartitionState::warm`).
    #[inline]
    fn warm(&self, id: TransferId) {
        std::hint::black_box(self.slots[self.home(Self::hash_high(id))]);
    }

    /// The caller has checked that `id` is absent.
    #[inline]
    fn insert(&mut self, id: TransferId, arrival: u64) {
        assert!(self.len < self.slots.len() / ID_INDEX_SLOTS_PER_ID, "the id index is sized for ids_max");
        let hash_high = Self::hash_high(id);
        let mut position = self.home(hash_high);
        while self.slots[position] != 0 {
            position = (position + 1) & self.mask;
        }
        self.slots[position] = Self::slot_value(hash_high, arrival);
        self.len += 1;
    }

    /// Removes `id`, indexed at `arrival`, and closes the gap by backward shift.
    #[inline]
    fn remove(&mut self, id: TransferId, arrival: u64) {
        let hash_high = Self::hash_high(id);
        let wanted = Self::slot_value(hash_high, arrival);
        let mut hole = self.home(hash_high);
        loop {
            let slot = self.slots[hole];
            assert!(slot != 0, "removing an id the index does not hold");
            if slot == wanted {
                break;
            }
            hole = (hole + 1) & self.mask;
        }
        let mut next = (hole + 1) & self.mask;
        loop {
            let slot = self.slots[next];
            if slot == 0 {
                break;
            }
            // The entry at `next` may move into the hole only if the hole is on its probe path, i.e. its
            // home is not cyclically inside (hole, next]; otherwise its own lookups would miss it.
            let home = self.home((slot >> 32) as u32);
            let distance_to_next = next.wrapping_sub(home) & self.mask;
            let distance_to_hole = hole.wrapping_sub(home) & self.mask;
            if distance_to_hole < distance_to_next {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }
}

fn entry_digest(entry: &IdEntry) -> u128 {
    let mut input = [0u8; 58];
    input[0..16].copy_from_slice(&entry.id.to_le_bytes());
    input[16..32].copy_from_slice(&entry.fingerprint.to_le_bytes());
    input[32..34].copy_from_slice(&(entry.code as u16).to_le_bytes());
    input[34..42].copy_from_slice(&entry.seq.to_le_bytes());
    input[42..50].copy_from_slice(&entry.recorded_ns.to_le_bytes());
    input[50..58].copy_from_slice(b"id-entry");
    xxh3_128(&input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::types::transfer_id_from_parts;

    const MS: u64 = NANOS_PER_MILLI;

    fn entry(id: TransferId, seq: u64, recorded_ns: u64) -> IdEntry {
        IdEntry { id, fingerprint: id.wrapping_mul(31), code: ResultCode::Ok, seq, recorded_ns }
    }

    fn ids(table: &IdTable) -> Vec<TransferId> {
        let mut out = Vec::new();
        table.for_each(|entry| out.push(entry.id));
        out
    }

    #[test]
    fn fingerprint_covers_every_field_but_the_id() {
        let base =
            Transfer { id: 1, debit_account_id: 2, credit_account_id: 3, amount: 4, ledger: 5, flags: 0, user_data: 6 };
        let fingerprint = transfer_fingerprint(&base);
        assert_eq!(transfer_fingerprint(&Transfer { id: 99, ..base }), fingerprint);
        let variants = [
            Transfer { debit_account_id: 9, ..base },
            Transfer { credit_account_id: 9, ..base },
            Transfer { amount: 9, ..base },
            Transfer { ledger: 9, ..base },
            Transfer { flags: 9, ..base },
            Transfer { user_data: 9, ..base },
        ];
        for variant in variants {
            assert_ne!(transfer_fingerprint(&variant), fingerprint, "{variant:?}");
        }
    }

    #[test]
    fn evicts_by_time_window() {
        let mut table = IdTable::new(10, 100);
        let a = transfer_id_from_parts(1_000, 1);
        let b = transfer_id_from_parts(1_005, 2);
        let c = transfer_id_from_parts(1_020, 3);
        table.insert(entry(a, 1, 1_000 * MS));
        table.insert(entry(b, 2, 1_005 * MS));
        // Exactly the window later: a is still remembered.
        table.insert(entry(c, 3, 1_010 * MS));
        assert_eq!(ids(&table), vec![a, b, c]);
        assert_eq!(table.watermark_ms(), None);
        let d = transfer_id_from_parts(1_030, 4);
        table.insert(entry(d, 4, 1_010 * MS + 1));
        assert_eq!(ids(&table), vec![b, c, d], "a was recorded more than 10 ms ago");
        assert_eq!(table.watermark_ms(), Some(1_000));
        assert!(table.get(a).is_none());
        assert!(table.is_expired(a));
        assert!(table.is_expired(transfer_id_from_parts(999, 7)));
        assert!(!table.is_expired(transfer_id_from_parts(1_001, 7)));
    }

    #[test]
    fn evicts_oldest_by_count() {
        let mut table = IdTable::new(u64::MAX, 3);
        let id = |ms: u64| transfer_id_from_parts(ms, 5);
        for seq in 1..=3 {
            table.insert(entry(id(seq * 10), seq, seq));
        }
        assert_eq!(table.watermark_ms(), None);
        table.insert(entry(id(5), 4, 4));
        assert_eq!(ids(&table), vec![id(20), id(30), id(5)]);
        assert_eq!(table.watermark_ms(), Some(10));
        table.insert(entry(id(40), 5, 5));
        assert_eq!(table.watermark_ms(), Some(20));
        // id(5) is older than the watermark but still held: a retry of it is still answered.
        assert_eq!(table.get(id(5)).map(|e| e.seq), Some(4));
        table.insert(entry(id(50), 6, 6));
        assert_eq!(table.watermark_ms(), Some(30));
        table.insert(entry(id(60), 7, 7));
        assert_eq!(table.watermark_ms(), Some(30), "the watermark never moves back");
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn small_ids_work_until_the_first_eviction() {
        let mut table = IdTable::new(u64::MAX, 2);
        table.insert(entry(1, 1, 1));
        table.insert(entry(2, 2, 2));
        assert!(!table.is_expired(3));
        table.insert(entry(3, 3, 3));
        assert_eq!(table.watermark_ms(), Some(0));
        assert!(table.is_expired(1));
        assert!(table.is_expired(4), "every small id is now at or below the watermark");
    }

    #[test]
    fn drain_reports_each_change_once_and_restore_matches() {
        let mut table = IdTable::new(u64::MAX, 3);
        let id = |n: u64| transfer_id_from_parts(n, n as u128);
        table.insert(entry(id(1), 1, 1));
        table.insert(entry(id(2), 2, 2));
        let mut persisted: Vec<IdEntry> = Vec::new();
        let drain = |table: &mut IdTable, persisted: &mut Vec<IdEntry>| {
            let mut inserted = Vec::new();
            let mut evicted = Vec::new();
            let watermark = table.drain_changes(|change| match change {
                IdChange::Inserted(entry) => inserted.push(*entry),
                IdChange::Evicted(id) => evicted.push(id),
            });
            persisted.retain(|e| !evicted.contains(&e.id));
            persisted.extend(inserted.iter().copied());
            (inserted.len(), evicted, watermark)
        };
        assert_eq!(drain(&mut table, &mut persisted), (2, vec![], None));
        assert_eq!(drain(&mut table, &mut persisted), (0, vec![], None), "nothing new");
        // 3, 4, 5 arrive; 1 and 2 (persisted) and 3 (never persisted) are evicted.
        for n in 3..=6 {
            table.insert(entry(id(n), n, n));
        }
        assert_eq!(ids(&table), vec![id(4), id(5), id(6)]);
        assert_eq!(drain(&mut table, &mut persisted), (3, vec![id(1), id(2)], Some(3)));
        let restored = IdTable::restore(u64::MAX, 3, persisted.clone(), Some(3)).expect("consistent rows");
        assert_eq!(ids(&restored), ids(&table));
        assert_eq!(restored.digest(), table.digest());
        // The restored table evicts the same way the live one does.
        let mut live = table.clone();
        let mut restored = restored;
        live.insert(entry(id(7), 7, 7));
        restored.insert(entry(id(7), 7, 7));
        assert_eq!(live.digest(), restored.digest());
        assert_eq!(ids(&live), ids(&restored));
    }

    #[test]
    fn index_matches_a_model_under_fifo_churn_and_wraparound() {
        // 8 ids in 16 slots: probe runs collide and wrap around the end of the table constantly, and
        // every insert evicts by backward shift. Any misplaced slot shows up as a wrong lookup.
        let ids_max = 8;
        let mut table = IdTable::new(u64::MAX, ids_max);
        let mut model: VecDeque<TransferId> = VecDeque::new();
        let mut state: u64 = 0x1234_5678;
        let mut next_entropy = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as u128
        };
        for seq in 1..=5_000u64 {
            let id = transfer_id_from_parts(seq, next_entropy());
            table.insert(entry(id, seq, seq));
            model.push_back(id);
            if model.len() > ids_max {
                let evicted = model.pop_front().expect("non-empty");
                assert!(table.get(evicted).is_none(), "evicted id {evicted:#x} still found");
            }
            assert_eq!(table.len(), model.len());
            for (age, &held) in model.iter().enumerate() {
                let found = table.get(held).map(|e| e.seq);
                assert_eq!(found, Some(seq + 1 - (model.len() - age) as u64), "lookup after insert {seq}");
            }
        }
    }

    #[test]
    fn restore_rejects_inconsistent_rows() {
        let a = entry(10, 1, 5);
        let b = entry(11, 2, 6);
        assert_eq!(
            IdTable::restore(1, 1, vec![a, b], None).unwrap_err(),
            IdRestoreError::TooManyEntries { entries: 2, ids_max: 1 }
        );
        assert_eq!(
            IdTable::restore(1, 4, vec![a, IdEntry { seq: 2, ..a }], None).unwrap_err(),
            IdRestoreError::DuplicateId { id: 10 }
        );
        assert_eq!(
            IdTable::restore(1, 4, vec![a, IdEntry { seq: 1, ..b }], None).unwrap_err(),
            IdRestoreError::DuplicateSeq { seq: 1 }
        );
        assert!(matches!(
            IdTable::restore(1, 4, vec![a, IdEntry { recorded_ns: 1, ..b }], None),
            Err(IdRestoreError::RecordedOutOfOrder { seq: 2, .. })
        ));
        assert_eq!(IdTable::restore(1, 4, vec![entry(0, 1, 1)], None).unwrap_err(), IdRestoreError::ReservedId);
    }

    #[test]
    fn digest_sees_every_field() {
        let mut table = IdTable::new(100, 10);
        table.insert(entry(5, 1, 1));
        let base = table.digest();
        let variants = [
            IdEntry { id: 6, ..entry(5, 1, 1) },
            IdEntry { fingerprint: 1, ..entry(5, 1, 1) },
            IdEntry { code: ResultCode::Overflow, ..entry(5, 1, 1) },
            IdEntry { seq: 2, ..entry(5, 1, 1) },
            IdEntry { recorded_ns: 2, ..entry(5, 1, 1) },
        ];
        for variant in variants {
            let mut other = IdTable::new(100, 10);
            other.insert(variant);
            assert_ne!(other.digest(), base, "{variant:?}");
        }
    }
}
