//! The transfer-id table: which transfer ids a partition has decided, within a window stated in time.
//!
//! A transfer id is the client's idempotency key. For every decided id the table keeps a fingerprint of
//! the transfer's other fields, the outcome and the seq of the event that recorded it, so a retry gets
//! the original answer and a reuse with different fields is caught.
//!
//! **The window is time.** An id whose own time ([`transfer_id_timestamp_ms`]) is more than
//! `idempotency_window_ms` before the timestamp of the event that would record it is *expired*: it is
//! refused `IdExpired` whether or not the table still holds it, and an id younger than that is never
//! refused for age. The verdict depends only on the id and the event's timestamp (in the log), so
//! replay and every replica agree, and the table may forget an expired id at any moment without
//! changing any answer. Since an accepted id is at most `TRANSFER_ID_FUTURE_MS_MAX` ahead of its
//! event, everything the table must remember is the ids decided within the window.
//!
//! **Two tiers.** The newest ids live in memory (a FIFO ring and an open-addressing index, at most
//! `idempotency_ids_max` of them plus the runs being built). When the ring reaches that capacity, its
//! oldest quarter is *sealed* into a run (`id_index::ColdRun`): a deterministic point in arrival order,
//! so every replica seals the same runs. A builder thread turns the run into a hash table with a
//! filter and, on a node with a data directory, writes and maps it; only then do its entries leave the
//! ring, so every lookup over ring ∪ runs is exact whatever the builder's timing. A new id is checked
//! against a run only if its time lies in the run's id-time range (time-ordered ids are newer than
//! nearly everything on disk) and the run's filter does not rule it out. A run is dropped once every
//! id in it has expired.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use net::types::{transfer_id_timestamp_ms, ResultCode, Transfer, TransferId};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_128;

use crate::block_ring::{BlockRing, BLOCK_ITEMS};
use crate::fast_hash::keyed_hash_u128;
use crate::id_index::{ColdRun, RUNS_UNBUILT_MAX};

pub(crate) const NANOS_PER_MILLI: u64 = 1_000_000;
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

/// Index lines touched ahead of removing a released run's entries (see `release_ready`).
const RELEASE_WARM_AHEAD: usize = 16;
/// Seals of a ring of `ids_max` entries take this fraction of it at a time.
const RUN_FRACTION_DENOMINATOR: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IdRestoreError {
    #[error("transfer id {id:#x} is persisted twice")]
    DuplicateId { id: TransferId },
    #[error("id entries share seq {seq}")]
    DuplicateSeq { seq: u64 },
    #[error("id entry seq {seq} was recorded at {recorded_ns} ns, before an earlier seq's {previous_ns} ns")]
    RecordedOutOfOrder { seq: u64, recorded_ns: u64, previous_ns: u64 },
    #[error("transfer id 0 is reserved and never recorded")]
    ReservedId,
    #[error("id runs overlap or reach past the in-memory entries (run {first_arrival}..{end_arrival}, memory from {head_arrival})")]
    RunsOutOfPlace { first_arrival: u64, end_arrival: u64, head_arrival: u64 },
    #[error("in-memory id entries start at arrival {head_arrival}, which is not a run boundary")]
    HeadNotAtBoundary { head_arrival: u64 },
}

/// A table's content for a snapshot or checkpoint restore: the runs that left memory (oldest first),
/// and the in-memory entries, which are arrivals `head_arrival..` in order.
#[derive(Clone, Debug, Default)]
pub struct IdImage {
    pub cold: Vec<ColdImage>,
    pub head_arrival: u64,
    pub hot: Vec<IdEntry>,
}

/// One run of an [`IdImage`]: a run as it is (mapped from its file, or shared with a live table), or
/// its entries (decoded from a snapshot; built again on restore).
#[derive(Clone, Debug)]
pub enum ColdImage {
    Run(Arc<ColdRun>),
    Entries { first_arrival: u64, entries: Vec<IdEntry> },
}

impl ColdImage {
    pub fn first_arrival(&self) -> u64 {
        match self {
            ColdImage::Run(run) => run.first_arrival,
            ColdImage::Entries { first_arrival, .. } => *first_arrival,
        }
    }

    pub fn end_arrival(&self) -> u64 {
        match self {
            ColdImage::Run(run) => run.end_arrival,
            ColdImage::Entries { first_arrival, entries } => first_arrival + entries.len() as u64,
        }
    }

    /// The run's entries in arrival (= seq) order; reads a whole run.
    pub fn entries(&self) -> Vec<IdEntry> {
        match self {
            ColdImage::Run(run) => {
                let mut entries = Vec::new();
                run.for_each(|e| entries.push(e));
                entries.sort_unstable_by_key(|e| e.seq);
                entries
            }
            ColdImage::Entries { entries, .. } => entries.clone(),
        }
    }
}

impl PartialEq for IdImage {
    fn eq(&self, other: &Self) -> bool {
        let runs = |image: &IdImage| -> Vec<(u64, Vec<IdEntry>)> {
            image.cold.iter().map(|run| (run.first_arrival(), run.entries())).collect()
        };
        self.head_arrival == other.head_arrival && self.hot == other.hot && runs(self) == runs(other)
    }
}

impl Eq for IdImage {}

/// Arrival numbers around a drain (see [`IdTable::drain_inserted`]): the drained entries are arrivals
/// `first_drained..next_arrival`; memory holds `head_arrival..next_arrival`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainedIds {
    pub first_drained: u64,
    pub head_arrival: u64,
    pub next_arrival: u64,
}

/// Where a table's runs go once built: written under a directory, or kept in memory (a node without a
/// data directory for them, an audit replay).
#[derive(Clone, Debug, Default)]
pub enum RunHome {
    /// Kept in memory, built at the seal by whoever sealed (an audit replay, the simulator).
    #[default]
    Memory,
    /// Kept in memory, built by the runtime's builder thread (a cluster replica): sealed runs wait in
    /// [`IdTable::take_sealed`] like those of a directory, so the round does not pay for the build.
    Deferred,
    Directory(Arc<PathBuf>),
}

/// Two-tier table of decided ids; see the module documentation.
#[derive(Clone, Debug)]
pub struct IdTable {
    partition: u32,
    window_ms: u64,
    ids_max: usize,
    run_ids: usize,
    key: u64,
    home: RunHome,
    /// Arrival order, which is also seq order and recorded_ns order.
    entries: BlockRing<IdEntry>,
    /// id -> arrival number; the entry is `entries[arrival - head_arrival]`.
    index: IdIndex,
    /// Arrival number of `entries[0]`.
    head_arrival: u64,
    /// The next seal starts here; arrivals `head_arrival..sealed_end` are in `pending` runs.
    sealed_end: u64,
    /// Sealed runs whose entries are still in the ring (not yet built, or not yet written).
    pending: VecDeque<Arc<ColdRun>>,
    /// Sealed runs not yet handed to a builder (see [`IdTable::take_sealed`]).
    unsent: Vec<Arc<ColdRun>>,
    /// Runs that left the ring, oldest first.
    cold: Vec<Arc<ColdRun>>,
    /// Largest id time in `cold` (0 when empty): a newer id skips the cold tier.
    cold_max_id_ms: u64,
    /// Entries with an arrival number >= this were inserted since the last drain.
    drained_arrival: u64,
    /// Wrapping sum of `entry_digest` over the unsealed entries (arrivals `sealed_end..`), kept as
    /// entries come and seals take them, so `digest` (every status request) costs O(1), not a walk of
    /// up to `idempotency_ids_max` entries on the shard's round (250 ms for 64 full partitions).
    unsealed_sum: u128,
    /// Shared with every copy of this table (see [`RunShelf`]).
    shelf: Arc<Mutex<RunShelf>>,
}

/// The runs a table and its copies sealed last. A cluster leader's speculative state is a copy of its
/// committed state and seals the same arrivals with the same entries a little earlier: the committed
/// state then takes that run instead of sealing, building and holding a second one (a leader built
/// every run twice, and its builder fell so far behind that the round built runs itself). A run is
/// taken only for the same arrivals and the same sum of entry digests, so a copy that diverged (a
/// speculative state whose entries were cut from the log) never lends its run. Holds `Weak`s: a run
/// lives as long as a table holds it.
#[derive(Debug, Default)]
struct RunShelf {
    runs: VecDeque<ShelvedRun>,
}

#[derive(Debug)]
struct ShelvedRun {
    first_arrival: u64,
    end_arrival: u64,
    digest_sum: u128,
    run: Weak<ColdRun>,
}

/// Runs kept on a shelf: a copy lags its original by far fewer seals than this.
const RUN_SHELF_MAX: usize = 8;

impl RunShelf {
    fn take(&mut self, first_arrival: u64, end_arrival: u64, digest_sum: u128) -> Option<Arc<ColdRun>> {
        self.runs.retain(|shelved| shelved.run.strong_count() > 0);
        self.runs
            .iter()
            .find(|s| s.first_arrival == first_arrival && s.end_arrival == end_arrival && s.digest_sum == digest_sum)
            .and_then(|shelved| shelved.run.upgrade())
    }

    fn put(&mut self, digest_sum: u128, run: &Arc<ColdRun>) {
        if self.runs.len() == RUN_SHELF_MAX {
            self.runs.pop_front();
        }
        let (first_arrival, end_arrival) = (run.first_arrival, run.end_arrival);
        self.runs.push_back(ShelvedRun { first_arrival, end_arrival, digest_sum, run: Arc::downgrade(run) });
    }
}

impl IdTable {
    /// `hash_key`: the data directory's random key (see `fast_hash::keyed_hash_u128`).
    pub fn new(partition: u32, idempotency_window_ms: u64, idempotency_ids_max: usize, hash_key: u64) -> Self {
        assert!(idempotency_window_ms > 0, "an idempotency window of 0 ms remembers nothing");
        assert!(idempotency_ids_max >= RUN_FRACTION_DENOMINATOR, "the id table holds at least a few ids");
        let run_ids = idempotency_ids_max / RUN_FRACTION_DENOMINATOR;
        let ring_max = idempotency_ids_max + RUNS_UNBUILT_MAX * run_ids;
        IdTable {
            partition,
            window_ms: idempotency_window_ms,
            ids_max: idempotency_ids_max,
            run_ids,
            key: hash_key,
            home: RunHome::Memory,
            // A seal releases a run's worth of blocks at once and the ring refills them: keep that many
            // for reuse (within the ring's budget), so a full table allocates nothing in steady state.
            entries: BlockRing::new(run_ids.div_ceil(BLOCK_ITEMS) + 1),
            index: IdIndex::new(ring_max, hash_key),
            head_arrival: 0,
            sealed_end: 0,
            pending: VecDeque::new(),
            unsent: Vec::new(),
            cold: Vec::new(),
            cold_max_id_ms: 0,
            drained_arrival: 0,
            unsealed_sum: 0,
            shelf: Arc::default(),
        }
    }

    /// Where runs sealed from now on are written (the runtime sets it once, before the first insert).
    pub fn set_home(&mut self, home: RunHome) {
        self.home = home;
    }

    /// Rebuilds a table from an image: its runs as they are, and its in-memory entries re-inserted in
    /// arrival order (sealing exactly where the live table sealed). The result holds nothing undrained
    /// but the runs that re-sealing produced (see [`IdTable::take_sealed`]).
    pub fn restore(
        partition: u32,
        idempotency_window_ms: u64,
        idempotency_ids_max: usize,
        hash_key: u64,
        home: RunHome,
        image: IdImage,
    ) -> Result<Self, IdRestoreError> {
        let mut table = IdTable::new(partition, idempotency_window_ms, idempotency_ids_max, hash_key);
        table.home = home;
        let IdImage { cold, head_arrival, mut hot } = image;
        if head_arrival % table.run_ids as u64 != 0 {
            return Err(IdRestoreError::HeadNotAtBoundary { head_arrival });
        }
        let mut previous_end = 0;
        for image in cold {
            let (first_arrival, end_arrival) = (image.first_arrival(), image.end_arrival());
            if first_arrival < previous_end || end_arrival > head_arrival || end_arrival <= first_arrival {
                return Err(IdRestoreError::RunsOutOfPlace { first_arrival, end_arrival, head_arrival });
            }
            previous_end = end_arrival;
            let run = match image {
                ColdImage::Run(run) => run,
                ColdImage::Entries { first_arrival, entries } => {
                    let run = ColdRun::seal(partition, hash_key, first_arrival, end_arrival, entries, None);
                    run.settle();
                    Arc::new(run)
                }
            };
            table.cold_max_id_ms = table.cold_max_id_ms.max(run.max_id_ms);
            table.cold.push(run);
        }
        table.head_arrival = head_arrival;
        table.sealed_end = head_arrival;
        table.drained_arrival = head_arrival;
        hot.sort_unstable_by_key(|entry| entry.seq);
        for (position, entry) in hot.iter().enumerate() {
            if entry.id == 0 {
                return Err(IdRestoreError::ReservedId);
            }
            if let Some(previous) = position.checked_sub(1).map(|p| hot[p]) {
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
            table.insert(*entry);
        }
        table.drained_arrival = table.next_arrival();
        Ok(table)
    }

    /// The decided entry of `id`, from memory or a run; exact.
    #[inline]
    pub fn get(&self, id: TransferId) -> Option<IdEntry> {
        if let Some(arrival) = self.index.find(id, self.head_arrival, |arrival| self.entry_at(arrival).id) {
            return Some(*self.entry_at(arrival));
        }
        if self.cold.is_empty() || transfer_id_timestamp_ms(id) > self.cold_max_id_ms {
            return None;
        }
        self.cold.iter().rev().find_map(|run| run.find(id))
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
        self.entries.get((arrival - self.head_arrival) as usize)
    }

    /// True when `id` is older than the window at `at_ns` (the timestamp of the event that would record
    /// it): refused whatever the table holds.
    #[inline]
    pub fn is_expired(&self, id: TransferId, at_ns: u64) -> bool {
        transfer_id_timestamp_ms(id).saturating_add(self.window_ms) < at_ns / NANOS_PER_MILLI
    }

    fn next_arrival(&self) -> u64 {
        self.head_arrival + self.entries.len() as u64
    }

    /// Records a decided id. The caller has checked that the id is absent and not expired; entries
    /// arrive in seq order with non-decreasing timestamps. Seals the ring's oldest quarter into a run
    /// when it holds `idempotency_ids_max` unsealed entries.
    #[inline]
    pub fn insert(&mut self, entry: IdEntry) {
        assert!(entry.id != 0, "transfer id 0 is never recorded");
        assert!(!self.is_expired(entry.id, entry.recorded_ns), "an expired id is refused, never recorded");
        if let Some(last) = self.entries.back() {
            assert!(entry.seq > last.seq, "id entries arrive in seq order");
            assert!(entry.recorded_ns >= last.recorded_ns, "id entries arrive in time order");
        }
        let arrival = self.next_arrival();
        self.index.insert(entry.id, arrival);
        self.entries.push_back(entry);
        self.unsealed_sum = self.unsealed_sum.wrapping_add(entry_digest(&entry));
        if (self.next_arrival() - self.sealed_end) as usize >= self.ids_max {
            self.seal(entry.recorded_ns);
        }
        if self.pending.front().is_some_and(|run| run.is_ready()) {
            self.release_ready();
        }
        assert_eq!(self.entries.len(), self.index.len());
    }

    fn seal(&mut self, now_ns: u64) {
        let first = (self.sealed_end - self.head_arrival) as usize;
        let sealed = || self.entries.iter_from(first).take(self.run_ids);
        let sealed_sum = sealed().fold(0u128, |sum, entry| sum.wrapping_add(entry_digest(entry)));
        self.unsealed_sum = self.unsealed_sum.wrapping_sub(sealed_sum);
        let dir = match &self.home {
            RunHome::Memory | RunHome::Deferred => None,
            RunHome::Directory(dir) => Some(Arc::clone(dir)),
        };
        let (first_arrival, end_arrival) = (self.sealed_end, self.sealed_end + self.run_ids as u64);
        let mut shelf = self.shelf.lock().expect("the run shelf lock is never poisoned: no panics while held");
        let run = match shelf.take(first_arrival, end_arrival, sealed_sum) {
            Some(run) => run,
            None => {
                // Copied only for a run of its own (sized once: the block iterator gives no size hint).
                let mut entries = Vec::with_capacity(self.run_ids);
                entries.extend(sealed().copied());
                assert_eq!(entries.len(), self.run_ids, "a seal takes a whole run from the ring");
                let run = Arc::new(ColdRun::seal(self.partition, self.key, first_arrival, end_arrival, entries, dir));
                shelf.put(sealed_sum, &run);
                run
            }
        };
        drop(shelf);
        self.sealed_end = end_arrival;
        self.pending.push_back(Arc::clone(&run));
        match self.home {
            // No builder serves a table without a directory (an audit replay, the simulator's
            // replicas): build here, now.
            RunHome::Memory => run.settle(),
            // A run taken from the shelf is usually built already; if not, the copy that sealed it may
            // be gone before handing it over, and handing it over twice is harmless (a built run
            // settles at once).
            RunHome::Directory(_) | RunHome::Deferred if !run.is_ready() => self.unsent.push(run),
            RunHome::Directory(_) | RunHome::Deferred => {}
        }
        // Runs whose every id has expired answer nothing any more.
        let now_ms = now_ns / NANOS_PER_MILLI;
        let window_ms = self.window_ms;
        let before = self.cold.len();
        self.cold.retain(|run| {
            let live = run.max_id_ms.saturating_add(window_ms) >= now_ms;
            if !live {
                run.mark_expired();
            }
            live
        });
        if self.cold.len() != before {
            self.cold_max_id_ms = self.cold.iter().map(|run| run.max_id_ms).max().unwrap_or(0);
        }
        // The builder is behind (or there is none, as for a replica's speculative state): settle the
        // oldest run here, so memory stays bounded whatever happens to the builder.
        while self.pending.len() > RUNS_UNBUILT_MAX {
            self.pending.front().expect("non-empty").settle();
            self.release_ready();
        }
    }

    /// Moves every ready run at the front of `pending` out of the ring into the cold tier.
    fn release_ready(&mut self) {
        while let Some(run) = self.pending.front() {
            if !run.is_ready() {
                break;
            }
            assert_eq!(run.first_arrival, self.head_arrival, "runs leave the ring in arrival order");
            let run = self.pending.pop_front().expect("non-empty");
            let mut left = (run.end_arrival - run.first_arrival) as usize;
            while left > 0 {
                // Touch the next few index lines first, so their cache misses overlap instead of each
                // removal waiting for its own (a run is 65,536 removals at the default).
                let ahead = left.min(RELEASE_WARM_AHEAD);
                self.entries.iter().take(ahead).for_each(|entry| self.index.warm(entry.id));
                for _ in 0..ahead {
                    let oldest = self.entries.pop_front().expect("a pending run's entries are in the ring");
                    self.index.remove(oldest.id, self.head_arrival);
                    self.head_arrival += 1;
                }
                left -= ahead;
            }
            self.cold_max_id_ms = self.cold_max_id_ms.max(run.max_id_ms);
            self.cold.push(run);
        }
    }

    /// Hands every run sealed since the last call to `f` (the runtime gives them to its builder).
    pub fn take_sealed(&mut self, f: impl FnMut(Arc<ColdRun>)) {
        self.unsent.drain(..).for_each(f);
    }

    /// Lets ready runs leave the ring now (the runtime calls it after each round; `insert` does too).
    pub fn release(&mut self) {
        self.release_ready();
    }

    /// Ids in memory (the ring, including runs being built).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Runs that left memory, and the ids they hold.
    pub fn cold_runs(&self) -> &[Arc<ColdRun>] {
        &self.cold
    }

    pub fn ids_max(&self) -> usize {
        self.ids_max
    }

    /// Ids sealed into one run.
    pub fn run_ids(&self) -> usize {
        self.run_ids
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Arrival number of the oldest in-memory entry: everything before it is in runs (or expired).
    pub fn head_arrival(&self) -> u64 {
        self.head_arrival
    }

    /// Every in-memory entry in arrival order.
    pub fn for_each(&self, f: impl FnMut(&IdEntry)) {
        self.entries.iter().for_each(f);
    }

    /// A full image (snapshots): the cold runs shared, the in-memory entries copied.
    pub fn export_image(&self) -> IdImage {
        IdImage {
            cold: self.cold.iter().map(|run| ColdImage::Run(Arc::clone(run))).collect(),
            head_arrival: self.head_arrival,
            hot: self.entries.iter().copied().collect(),
        }
    }

    /// How many entries the next [`IdTable::drain_inserted`] reports (to size its receiver once).
    pub fn undrained(&self) -> usize {
        (self.next_arrival() - self.first_undrained()) as usize
    }

    /// The arrival the next [`IdTable::drain_inserted`] starts at (entries before it that were never
    /// drained have left memory: they are in written runs).
    pub fn first_undrained(&self) -> u64 {
        self.drained_arrival.max(self.head_arrival)
    }

    /// Entries inserted since the previous drain and still in memory, for a checkpoint (entries that
    /// left memory since are in written runs, since a run leaves only once it is durable when the
    /// table has a directory). A checkpoint need keep only entries from `head_arrival` on.
    pub fn drain_inserted(&mut self, f: impl FnMut(&IdEntry)) -> DrainedIds {
        let first_undrained = self.drained_arrival.max(self.head_arrival);
        let skip = (first_undrained - self.head_arrival) as usize;
        // `iter_from` starts there directly (iter().skip() would walk the skipped entries).
        self.entries.iter_from(skip).for_each(f);
        self.drained_arrival = self.next_arrival();
        DrainedIds {
            first_drained: first_undrained,
            head_arrival: self.head_arrival,
            next_arrival: self.next_arrival(),
        }
    }

    /// Digest of what every replica holds alike: the unsealed entries (which ids are still in memory
    /// depends on builder timing, but the seals themselves do not), the seal point and the window.
    pub fn digest(&self) -> u128 {
        let unsealed = self.next_arrival() - self.sealed_end;
        let mut input = [0u8; 40];
        input[0..16].copy_from_slice(&self.unsealed_sum.to_le_bytes());
        input[16..24].copy_from_slice(&unsealed.to_le_bytes());
        input[24..32].copy_from_slice(&self.sealed_end.to_le_bytes());
        input[32..40].copy_from_slice(&self.window_ms.to_le_bytes());
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
    key: u64,
}

const ARRIVAL_BITS: u32 = 31;
const ARRIVAL_MASK: u64 = (1 << ARRIVAL_BITS) - 1;
/// Slots per id: at most half the table is occupied, which keeps linear probe runs short.
const ID_INDEX_SLOTS_PER_ID: usize = 2;
const ID_INDEX_SLOTS_MIN: usize = 16;
/// The smallest page the kernel maps; touching one word per page faults the whole allocation in.
const PAGE_BYTES: usize = 4096;

/// `len` zero words, every page already mapped for writing. A zeroed allocation is mapped lazily: a
/// first read maps the shared zero page and the first write to it then takes a second, copy-on-write
/// fault whose TLB flush interrupts every core running this process (the id-run builder spent most of
/// its time there). One store per page now takes one plain fault each, up front; `black_box` keeps the
/// compiler from proving the stores redundant.
pub(crate) fn zeroed_words_faulted_in(len: usize) -> Vec<u64> {
    let mut words = vec![0u64; len];
    words.iter_mut().step_by(PAGE_BYTES / 8).for_each(|word| *word = std::hint::black_box(0));
    words
}

impl IdIndex {
    fn new(ids_max: usize, key: u64) -> Self {
        assert!((ids_max as u64) < ARRIVAL_MASK, "idempotency_ids_max must stay below 2^31");
        let capacity = (ids_max * ID_INDEX_SLOTS_PER_ID).next_power_of_two().max(ID_INDEX_SLOTS_MIN);
        assert!(capacity <= 1 << 32, "slot positions come from 32 hash bits");
        // Faulted in now: the first inserts (random slots) would otherwise each take a page fault, all
        // partitions at once on a fresh node.
        let slots = zeroed_words_faulted_in(capacity);
        IdIndex { slots, mask: capacity - 1, len: 0, key }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn hash_high(&self, id: TransferId) -> u32 {
        (keyed_hash_u128(self.key, id) >> 32) as u32
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
        let hash_high = self.hash_high(id);
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
        std::hint::black_box(self.slots[self.home(self.hash_high(id))]);
    }

    /// The caller has checked that `id` is absent.
    #[inline]
    fn insert(&mut self, id: TransferId, arrival: u64) {
        assert!(self.len < self.slots.len() / ID_INDEX_SLOTS_PER_ID, "the id index is sized for ids_max");
        let hash_high = self.hash_high(id);
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
        let hash_high = self.hash_high(id);
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
    fn expiry_is_the_id_time_against_the_event_time_only() {
        let table = IdTable::new(0, 10_000, 16, 1);
        let id = transfer_id_from_parts(5_000, 1);
        assert!(!table.is_expired(id, 15_000 * MS), "exactly the window old");
        assert!(!table.is_expired(id, 15_000 * MS + MS - 1), "less than a millisecond more");
        assert!(table.is_expired(id, 15_001 * MS));
        assert!(!table.is_expired(id, 0), "an id from the future is not expired (another rule judges it)");
    }

    /// A copy that seals the same entries takes the original's run (a leader's committed state and its
    /// speculative copy held and built every run twice); a copy whose entries differ seals its own.
    #[test]
    fn a_copy_that_seals_the_same_entries_shares_the_run_and_a_diverged_one_does_not() {
        for home in [RunHome::Memory, RunHome::Deferred] {
            // 64 ids at most unsealed, runs of 16: the 64th id seals arrivals 0..16, that is seqs 1..=16,
            // of which 9..=16 differ in the diverged copy.
            let (original, entries) = filled(64, 8, home.clone());
            let mut copy = original.clone();
            let mut diverged = original.clone();
            let mut original = original;
            let next = |seq: u64, salt: u128| {
                let recorded_ns = 1_000_000 * MS + seq * MS / 10;
                entry(transfer_id_from_parts(recorded_ns / MS, seq as u128 + salt), seq, recorded_ns)
            };
            let mut sent = Vec::new();
            // The copy runs ahead (a speculative state), the original follows with the same entries.
            for seq in 9..=64 {
                copy.insert(next(seq, 0));
                diverged.insert(next(seq, 1 << 60));
            }
            for seq in 9..=64 {
                original.insert(next(seq, 0));
            }
            for table in [&mut copy, &mut diverged, &mut original] {
                table.take_sealed(|run| sent.push(run));
            }
            // Two runs handed to the builder: one sealed by the copy (the original found it on the
            // shelf, unbuilt, and handed it again: harmless), one by the diverged copy.
            for run in &sent {
                run.settle();
            }
            for table in [&mut copy, &mut diverged, &mut original] {
                table.release();
            }
            assert_eq!(original.cold_runs().len(), 1, "{home:?}: one run sealed");
            assert!(Arc::ptr_eq(&original.cold_runs()[0], &copy.cold_runs()[0]), "{home:?}: one run, shared");
            assert!(!Arc::ptr_eq(&original.cold_runs()[0], &diverged.cold_runs()[0]), "{home:?}: its own run");
            for e in &entries {
                assert_eq!(original.get(e.id), Some(*e), "{home:?}: the shared run answers the original's ids");
            }
            assert_eq!(original.get(next(12, 0).id).map(|e| e.seq), Some(12), "{home:?}");
            assert_eq!(diverged.get(next(12, 1 << 60).id).map(|e| e.seq), Some(12), "{home:?}");
            assert_eq!(original.get(next(12, 1 << 60).id), None, "{home:?}: the diverged copy's ids are its own");
            assert_eq!(original.digest(), copy.digest());
        }
    }

    /// A table driven with `n` ids one 0.1 ms apart, as a stream of ids whose times match.
    fn filled(ids_max: usize, n: u64, home: RunHome) -> (IdTable, Vec<IdEntry>) {
        let mut table = IdTable::new(3, 86_400_000, ids_max, 0xabc);
        table.set_home(home);
        let mut entries = Vec::new();
        for seq in 1..=n {
            let recorded_ns = 1_000_000 * MS + seq * MS / 10;
            let e = entry(transfer_id_from_parts(recorded_ns / MS, seq as u128), seq, recorded_ns);
            table.insert(e);
            entries.push(e);
        }
        (table, entries)
    }

    #[test]
    fn every_id_is_found_across_memory_and_runs_and_memory_stays_bounded() {
        let (table, entries) = filled(64, 5_000, RunHome::Memory);
        assert!(table.len() <= 64 + RUNS_UNBUILT_MAX * 16, "memory holds {}", table.len());
        assert_eq!(table.cold_runs().len() as u64, (5_000 - table.len() as u64) / 16);
        for e in &entries {
            assert_eq!(table.get(e.id), Some(*e));
        }
        assert_eq!(table.get(transfer_id_from_parts(1_000_100, 777_777)), None);
        assert_eq!(table.get(transfer_id_from_parts(999_000, 1)), None, "older than every run");
    }

    #[test]
    fn runs_whose_ids_all_expired_are_dropped() {
        let mut table = IdTable::new(0, 1_000, 8, 1);
        for seq in 1..=100u64 {
            table.insert(entry(transfer_id_from_parts(10_000 + seq, seq as u128), seq, (10_000 + seq) * MS));
        }
        let runs_before = table.cold_runs().len();
        assert!(runs_before > 0);
        // Much later: the next seal drops every run.
        for seq in 101..=120u64 {
            table.insert(entry(transfer_id_from_parts(50_000 + seq, seq as u128), seq, (50_000 + seq) * MS));
        }
        assert!(table.cold_runs().iter().all(|run| run.min_id_ms >= 50_000), "old runs dropped");
    }

    #[test]
    fn a_directory_table_keeps_entries_in_memory_until_their_run_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = RunHome::Directory(Arc::new(dir.path().to_path_buf()));
        let (mut table, entries) = filled(64, 64 + 15, home);
        let mut sealed = Vec::new();
        table.take_sealed(|run| sealed.push(run));
        assert_eq!(sealed.len(), 1);
        assert_eq!(table.len(), 79, "nothing leaves memory before its run is durable");
        sealed[0].settle();
        table.release();
        assert_eq!(table.len(), 63);
        assert_eq!(table.head_arrival(), 16);
        assert!(dir.path().join(crate::id_index::run_file_name(0)).exists());
        for e in &entries {
            assert_eq!(table.get(e.id), Some(*e));
        }
    }

    /// A replica's table: runs wait for the builder thread (never built by the seal itself, which would
    /// stall the round) and stay in memory, no file.
    #[test]
    fn a_deferred_table_leaves_the_build_to_its_builder() {
        let (mut table, entries) = filled(64, 64 + 15, RunHome::Deferred);
        let mut sealed = Vec::new();
        table.take_sealed(|run| sealed.push(run));
        assert_eq!(sealed.len(), 1);
        assert!(!sealed[0].is_built(), "the seal did not build the run");
        assert_eq!(table.len(), 79, "nothing leaves memory before its run is built");
        for e in &entries {
            assert_eq!(table.get(e.id), Some(*e), "exact while the run waits");
        }
        sealed[0].settle();
        assert_eq!(sealed[0].file_path(), None, "kept in memory");
        table.release();
        assert_eq!(table.len(), 63);
        for e in &entries {
            assert_eq!(table.get(e.id), Some(*e), "exact once the run left the ring");
        }
    }

    #[test]
    fn restore_from_an_image_seals_where_the_live_table_seals() {
        let (mut live, entries) = filled(32, 1_000, RunHome::Memory);
        let image = live.export_image();
        let mut restored = IdTable::restore(3, 86_400_000, 32, 0xabc, RunHome::Memory, image.clone()).expect("valid");
        assert_eq!(restored.digest(), live.digest());
        assert_eq!(restored.export_image(), image);
        for seq in 1_001..=1_500u64 {
            let recorded_ns = 1_000_000 * MS + seq * MS / 10;
            let e = entry(transfer_id_from_parts(recorded_ns / MS, seq as u128), seq, recorded_ns);
            live.insert(e);
            restored.insert(e);
            assert_eq!(restored.digest(), live.digest(), "after seq {seq}");
        }
        for e in &entries {
            assert_eq!(restored.get(e.id), Some(*e));
        }
        // A different hash key finds the same ids: keys never change an answer.
        let rekeyed = IdTable::restore(3, 86_400_000, 32, 0xdef, RunHome::Memory, live.export_image());
        let rekeyed = rekeyed.expect("valid");
        assert!(entries.iter().all(|e| rekeyed.get(e.id) == Some(*e)));
    }

    #[test]
    fn restore_rejects_inconsistent_images() {
        let a = entry(10, 1, 5);
        let b = entry(11, 2, 6);
        let image = |hot: Vec<IdEntry>| IdImage { cold: Vec::new(), head_arrival: 0, hot };
        let restore = |image| IdTable::restore(0, 1_000, 8, 1, RunHome::Memory, image);
        assert_eq!(
            restore(image(vec![a, IdEntry { seq: 2, ..a }])).unwrap_err(),
            IdRestoreError::DuplicateId { id: 10 }
        );
        assert_eq!(
            restore(image(vec![a, IdEntry { seq: 1, ..b }])).unwrap_err(),
            IdRestoreError::DuplicateSeq { seq: 1 }
        );
        assert!(matches!(
            restore(image(vec![a, IdEntry { recorded_ns: 1, ..b }])),
            Err(IdRestoreError::RecordedOutOfOrder { seq: 2, .. })
        ));
        assert_eq!(restore(image(vec![entry(0, 1, 1)])).unwrap_err(), IdRestoreError::ReservedId);
        let not_boundary = IdImage { cold: Vec::new(), head_arrival: 3, hot: vec![] };
        assert_eq!(restore(not_boundary).unwrap_err(), IdRestoreError::HeadNotAtBoundary { head_arrival: 3 });
        let run = ColdImage::Entries { first_arrival: 0, entries: vec![a, b] };
        let past_head = IdImage { cold: vec![run], head_arrival: 0, hot: vec![] };
        assert!(matches!(restore(past_head), Err(IdRestoreError::RunsOutOfPlace { .. })));
    }

    #[test]
    fn index_matches_a_model_under_churn_and_wraparound() {
        // 8 ids in memory: probe runs collide and wrap constantly, and every seal removes entries by
        // backward shift. Any misplaced slot shows up as a wrong lookup.
        let mut table = IdTable::new(0, u64::MAX / MS, 8, 99);
        let mut state: u64 = 0x1234_5678;
        let mut next_entropy = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as u128
        };
        let mut all = Vec::new();
        for seq in 1..=3_000u64 {
            let id = transfer_id_from_parts(seq, next_entropy());
            table.insert(entry(id, seq, seq));
            all.push(id);
            if seq % 97 == 0 {
                for (age, &held) in all.iter().enumerate() {
                    assert_eq!(table.get(held).map(|e| e.seq), Some(age as u64 + 1), "lookup after insert {seq}");
                }
                assert_eq!(table.unsealed_sum, recomputed_unsealed_sum(&table), "digest sum after insert {seq}");
            }
        }
    }

    /// The sum `digest` keeps, computed from scratch.
    fn recomputed_unsealed_sum(table: &IdTable) -> u128 {
        let skip = (table.sealed_end - table.head_arrival) as usize;
        table.entries.iter_from(skip).fold(0u128, |sum, entry| sum.wrapping_add(entry_digest(entry)))
    }

    /// Restoring re-inserts and re-seals: the kept sum comes out as the live table's, and both match
    /// the sum computed from scratch.
    #[test]
    fn the_kept_digest_sum_survives_seals_and_restore() {
        let (live, _) = filled(32, 1_000, RunHome::Memory);
        assert_eq!(live.unsealed_sum, recomputed_unsealed_sum(&live));
        let restored =
            IdTable::restore(3, live.window_ms, 32, live.key, RunHome::Memory, live.export_image()).expect("restore");
        assert_eq!(restored.unsealed_sum, recomputed_unsealed_sum(&restored));
        assert_eq!(restored.digest(), live.digest());
    }

    #[test]
    fn digest_sees_every_field() {
        let mut table = IdTable::new(0, 100, 10, 1);
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
            let mut other = IdTable::new(0, 100, 10, 1);
            other.insert(variant);
            assert_ne!(other.digest(), base, "{variant:?}");
        }
    }
}
