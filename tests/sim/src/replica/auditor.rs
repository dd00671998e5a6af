//! The auditor plays the clients and keeps the model every answer is checked against.
//!
//! It sends transfers, account creations and lookups at every consistency level to random nodes,
//! retries lost requests (the node crashed) and retryable errors with the same ids, and checks:
//! - the committed log is one log: every replica applies the same entry at each index;
//! - every event in it is consistent: sequences contiguous, a transfer posted at most once, the
//!   balances it records are the model's, no ordinary account negative, every ledger sums to zero;
//! - every answered item matches the committed log: the event at the answered seq is that item's, with
//!   the answered code (so an acknowledged transfer is applied, exactly once, and a rejected one is not);
//! - an answer comes only from the node asked, and only once;
//! - reads: every account returned is a state the model passed through; a `linearizable` read reflects
//!   every write acknowledged before it was sent, an `at_least(seq)` read every acknowledged write up to
//!   `seq`;
//! - transfer lookups (always linearizable): every transfer found is the committed log's event at the
//!   answered seq with the answered code (and, when the fields are given, the logged fields); a transfer
//!   whose outcome was acknowledged before the lookup was sent, and that is surely inside the window, is
//!   found with that outcome and seq; an id never sent is never found;
//! - after faults stop: every request is answered, and a fresh transfer per partition succeeds.

use std::collections::{BTreeMap, HashMap, HashSet};

use engine::error::EngineError;
use engine::event::{EventBatchView, EventBody};
use net::protocol::{Consistency, ErrorCode, TransferLookup};
use net::types::{partition_of, Account, CreateAccount, ItemResult, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use raft::{Entry, Payload};

use crate::checker::Violation;
use crate::rng::{hash_bytes, Rng};

/// The ledger every simulated account uses (USD).
pub const LEDGER: u32 = 840;
/// Accounts the auditor creates per partition at the start: two external, the rest ordinary.
const SEED_ACCOUNTS_PER_PARTITION: usize = 5;
const EXTERNAL_PER_PARTITION: usize = 2;
/// Ordinary accounts created later, at most, per partition (new ids keep the id table honest).
const EXTRA_ACCOUNTS_PER_PARTITION_MAX: usize = 6;
const RETRY_BACKOFF_MS_MAX: u64 = 30;
/// Transfer counters at or above this are never sent: a lookup of such an id must find nothing.
const NEVER_SENT_COUNTER_MIN: u64 = 1 << 60;

#[derive(Clone, Debug)]
pub enum Op {
    Transfers {
        partition: u32,
        items: Vec<Transfer>,
    },
    Accounts {
        partition: u32,
        items: Vec<CreateAccount>,
    },
    /// `required[i]`: the smallest `last_seq` the answer may show for `ids[i]` (0: none required).
    Lookup {
        partition: u32,
        consistency: Consistency,
        ids: Vec<u64>,
        required: Vec<u64>,
    },
    /// `required[i]`: the outcome (code, seq) acknowledged for `ids[i]` before the lookup was sent.
    LookupTransfers {
        partition: u32,
        ids: Vec<u128>,
        required: Vec<Option<(ResultCode, u64)>>,
    },
}

/// A request the simulator must hand to `node`'s core under `handle`.
pub struct Send {
    pub handle: u64,
    pub node: u64,
    pub op: Op,
}

struct Pending {
    node: u64,
    op: Op,
    /// Sent again with the same ids after a lost answer or a retryable error.
    attempts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decided {
    Transfer { id: u128, code: ResultCode },
    Account { id: u64, code: ResultCode },
}

/// One partition's committed history as the replicas applied it.
#[derive(Default)]
struct Model {
    /// (term, payload hash) of committed entry `i` at `log[i - 1]`.
    log: Vec<(u64, u64)>,
    /// Applied entries ahead of `log` (a replica restored from a snapshot applies from there).
    early: BTreeMap<u64, Entry>,
    events: HashMap<u64, Decided>,
    last_seq: u64,
    posted: HashMap<u128, u64>,
    balances: HashMap<u64, i64>,
    /// Per account, (seq, balance after) of every event that changed it, ascending.
    history: HashMap<u64, Vec<(u64, i64)>>,
    /// Seqs of acknowledged writes, for `at_least` reads.
    acked_seqs: Vec<u64>,
    /// The transfer each committed transfer event (posted or rejected) records, by seq.
    transfers: HashMap<u64, Transfer>,
    /// Ids of transfers whose recorded outcome was acknowledged, in acknowledgement order.
    acked_transfer_ids: Vec<u128>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditStats {
    pub requests: u64,
    pub answers: u64,
    pub retries: u64,
    pub transfers_acked: u64,
    pub transfers_posted: u64,
    pub reads_checked: u64,
    pub linearizable_reads: u64,
    pub entries_applied: u64,
    /// Items answered `id_expired`: retries of ids the partition had already forgotten.
    pub ids_expired: u64,
    /// Transfer ids looked up and checked; of those, found with their fields, found without them (the
    /// serving replica's log was compacted past the event), and required to be found.
    pub transfer_lookups_checked: u64,
    pub transfer_lookups_with_fields: u64,
    pub transfer_lookups_without_fields: u64,
    pub transfer_lookups_required: u64,
}

/// What the auditor knows of the nodes' clocks, to tell which ids are surely inside the window.
#[derive(Clone, Copy, Debug)]
pub struct WindowView {
    pub idempotency_window_ms: u64,
    /// A node's wall clock runs at most this far ahead of the clients' at start...
    pub clock_spread_ms_max: u64,
    /// ...and gains at most this many parts per million of simulated time after.
    pub clock_drift_ppm_max: u64,
}

pub struct Auditor {
    partitions: u32,
    /// Per partition, ids of accounts the auditor created or tries to; the first are external.
    accounts: Vec<Vec<u64>>,
    external: HashSet<u64>,
    next_handle: u64,
    next_account: u64,
    next_transfer: u64,
    pending: BTreeMap<u64, Pending>,
    /// (due ms, op, attempts so far), in due order of insertion.
    retries: Vec<(u64, Op, u32)>,
    models: Vec<Model>,
    /// Per account, the seqs of acknowledged writes that touched it.
    acked: HashMap<u64, Vec<u64>>,
    /// Transfers sent after faults stopped that must be acknowledged ok.
    markers: HashMap<u128, bool>,
    /// Partitions still owed a marker: it goes once their seed accounts are acknowledged.
    markers_wanted: Vec<u32>,
    /// Per partition: the seed accounts' creation was acknowledged.
    seeded: Vec<bool>,
    /// Transfers sent so far, to retry some with the same or other fields.
    sent_transfers: Vec<Transfer>,
    /// Requests whose error answers are kept (the failover episode's), with the error once answered.
    watched: HashMap<u64, Option<String>>,
    /// Acknowledged outcome (partition, code, seq) of every transfer id whose outcome the partition
    /// records in its id table (the first one acknowledged; later answers must repeat it).
    decided: HashMap<u128, (u32, ResultCode, u64)>,
    window: WindowView,
    pub stats: AuditStats,
    /// Prints every answer and retry (`REPLICA_SIM_VERBOSE`).
    verbose: bool,
}

fn transfer_id(now_ms: u64, counter: u64) -> u128 {
    // Time-ordered like `new_transfer_id`: the client's wall-clock time in ms in the top 48 bits.
    (u128::from(super::CLIENT_WALL_EPOCH_MS + now_ms) << 80) | u128::from(counter)
}

impl Auditor {
    pub fn new(partitions: u32, window: WindowView) -> Auditor {
        let mut auditor = Auditor {
            partitions,
            accounts: vec![Vec::new(); partitions as usize],
            external: HashSet::new(),
            next_handle: 1,
            next_account: 1,
            next_transfer: 1,
            pending: BTreeMap::new(),
            retries: Vec::new(),
            models: (0..partitions).map(|_| Model::default()).collect(),
            acked: HashMap::new(),
            markers: HashMap::new(),
            markers_wanted: Vec::new(),
            seeded: vec![false; partitions as usize],
            sent_transfers: Vec::new(),
            watched: HashMap::new(),
            decided: HashMap::new(),
            window,
            stats: AuditStats::default(),
            verbose: std::env::var_os("REPLICA_SIM_VERBOSE").is_some(),
        };
        for partition in 0..partitions {
            let mut items = Vec::new();
            for k in 0..SEED_ACCOUNTS_PER_PARTITION {
                let flags = if k < EXTERNAL_PER_PARTITION { ACCOUNT_FLAG_EXTERNAL } else { 0 };
                items.push(auditor.new_account(partition, flags));
            }
            auditor.retries.push((0, Op::Accounts { partition, items }, 0));
        }
        auditor
    }

    /// A fresh account id that lands in `partition`.
    fn new_account(&mut self, partition: u32, flags: u32) -> CreateAccount {
        loop {
            let id = self.next_account;
            self.next_account += 1;
            if partition_of(id, self.partitions) == partition {
                self.accounts[partition as usize].push(id);
                if flags & ACCOUNT_FLAG_EXTERNAL != 0 {
                    self.external.insert(id);
                }
                return CreateAccount { id, ledger: LEDGER, flags, user_data: u128::from(id) };
            }
        }
    }

    pub fn quiet(&self) -> bool {
        self.pending.is_empty() && self.retries.is_empty()
    }

    /// What the auditor still waits for, for a liveness report.
    pub fn describe(&self) -> String {
        format!(
            "seeded partitions {:?}, markers wanted for {:?}, markers {:?}, pending {:?}, retries {}",
            self.seeded,
            self.markers_wanted,
            self.markers,
            self.pending.values().map(|p| (p.node, p.attempts)).collect::<Vec<_>>(),
            self.retries.len()
        )
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.retries.len()
    }

    pub fn markers_acked(&self) -> bool {
        self.markers_wanted.is_empty() && self.markers.values().all(|&acked| acked)
    }

    fn send(&mut self, node: u64, op: Op, attempts: u32) -> Send {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.stats.requests += 1;
        self.pending.insert(handle, Pending { node, op: op.clone(), attempts });
        Send { handle, node, op }
    }

    /// Retries whose time has come, each to a random live node.
    pub fn due_retries(&mut self, now_ms: u64, rng: &mut Rng, live: &[u64]) -> Vec<Send> {
        if live.is_empty() {
            return Vec::new();
        }
        for partition in std::mem::take(&mut self.markers_wanted) {
            if self.seeded[partition as usize] {
                self.push_marker(now_ms, partition);
            } else {
                self.markers_wanted.push(partition);
            }
        }
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retries).into_iter().partition(|r| r.0 <= now_ms);
        self.retries = waiting;
        due.into_iter()
            .map(|(_, op, attempts)| {
                let node = live[rng.below(live.len() as u64) as usize];
                self.stats.retries += u64::from(attempts > 0);
                self.send(node, op, attempts)
            })
            .collect()
    }

    fn retry_later(&mut self, now_ms: u64, rng: &mut Rng, op: Op, attempts: u32) {
        let due = now_ms + 1 + rng.below(RETRY_BACKOFF_MS_MAX);
        self.retries.push((due, op, attempts + 1));
    }

    /// A node crashed: the answers it owed are lost; the requests go again with the same ids.
    pub fn node_crashed(&mut self, node: u64, now_ms: u64, rng: &mut Rng) {
        if self.verbose {
            let lost: Vec<&Op> = self.pending.values().filter(|p| p.node == node).map(|p| &p.op).collect();
            eprintln!("[auditor] node {node} crashed; sending again {lost:?}");
        }
        let lost: Vec<u64> = self.pending.iter().filter(|(_, p)| p.node == node).map(|(&h, _)| h).collect();
        for handle in lost {
            let pending = self.pending.remove(&handle).expect("listed just above");
            self.retry_later(now_ms, rng, pending.op, pending.attempts);
        }
    }

    /// One new random request (the workload), or None before the seed accounts are known.
    pub fn new_request(&mut self, now_ms: u64, rng: &mut Rng, live: &[u64]) -> Option<Send> {
        if live.is_empty() {
            return None;
        }
        let node = live[rng.below(live.len() as u64) as usize];
        let partition = rng.below(u64::from(self.partitions)) as u32;
        let accounts = self.accounts[partition as usize].clone();
        let pick = |rng: &mut Rng| accounts[rng.below(accounts.len() as u64) as usize];
        let roll = rng.below(100);
        let op = if roll < 55 {
            let count = 1 + rng.below(3) as usize;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let transfer = if !self.sent_transfers.is_empty() && rng.chance(80) {
                    // An earlier transfer again: the same fields must replay its outcome, other
                    // fields must be refused.
                    let mut again = self.sent_transfers[rng.below(self.sent_transfers.len() as u64) as usize];
                    if rng.chance(300) {
                        again.amount += 1;
                    }
                    if partition_of(again.debit_account_id, self.partitions) != partition {
                        continue;
                    }
                    again
                } else {
                    let counter = self.next_transfer;
                    self.next_transfer += 1;
                    let amount = if rng.chance(20) { 0 } else { 1 + rng.below(60) };
                    let transfer = Transfer {
                        id: transfer_id(now_ms, counter),
                        debit_account_id: pick(rng),
                        credit_account_id: pick(rng),
                        amount,
                        ledger: LEDGER,
                        flags: 0,
                        user_data: u128::from(counter),
                    };
                    self.sent_transfers.push(transfer);
                    transfer
                };
                if items.iter().any(|t: &Transfer| t.id == transfer.id) {
                    continue;
                }
                items.push(transfer);
            }
            if items.is_empty() {
                return None;
            }
            Op::Transfers { partition, items }
        } else if roll < 62 {
            let extra = self.accounts[partition as usize].len() - SEED_ACCOUNTS_PER_PARTITION;
            let item = if extra < EXTRA_ACCOUNTS_PER_PARTITION_MAX && rng.chance(700) {
                self.new_account(partition, 0)
            } else {
                // An existing id: identical fields answer `exists`, others `exists_with_different_fields`.
                // Only a seed account is known to exist (once seeded); an extra one may still be on its way.
                if !self.seeded[partition as usize] {
                    return None;
                }
                let id = accounts[rng.below(SEED_ACCOUNTS_PER_PARTITION as u64) as usize];
                let flags = if self.external.contains(&id) { ACCOUNT_FLAG_EXTERNAL } else { 0 };
                let user_data = if rng.chance(500) { u128::from(id) } else { 7 };
                CreateAccount { id, ledger: LEDGER, flags, user_data }
            };
            Op::Accounts { partition, items: vec![item] }
        } else if roll < 75 {
            self.transfer_lookup(now_ms, rng, partition)
        } else {
            let count = 1 + rng.below(3) as usize;
            let ids: Vec<u64> = (0..count).map(|_| pick(rng)).collect();
            let model = &self.models[partition as usize];
            let consistency = match rng.below(10) {
                0..=3 => Consistency::Linearizable,
                4..=6 if !model.acked_seqs.is_empty() => {
                    Consistency::AtLeast(model.acked_seqs[rng.below(model.acked_seqs.len() as u64) as usize])
                }
                _ => Consistency::Any,
            };
            let bound = match consistency {
                Consistency::Linearizable => u64::MAX,
                Consistency::AtLeast(seq) => seq,
                Consistency::Any => 0,
            };
            let required = ids
                .iter()
                .map(|id| {
                    self.acked.get(id).map_or(0, |seqs| seqs.iter().copied().filter(|&s| s <= bound).max().unwrap_or(0))
                })
                .collect();
            Op::Lookup { partition, consistency, ids, required }
        };
        Some(self.send(node, op, 0))
    }

    /// A lookup of transfer ids in `partition`: mostly ids whose outcome was acknowledged, some ids
    /// sent but perhaps not decided (or decided in another partition), some never sent.
    fn transfer_lookup(&mut self, now_ms: u64, rng: &mut Rng, partition: u32) -> Op {
        let count = 1 + rng.below(4) as usize;
        let acked = &self.models[partition as usize].acked_transfer_ids;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let id = match rng.below(10) {
                0 => transfer_id(now_ms, NEVER_SENT_COUNTER_MIN + rng.below(1 << 20)),
                1..=2 if !self.sent_transfers.is_empty() => {
                    self.sent_transfers[rng.below(self.sent_transfers.len() as u64) as usize].id
                }
                _ if !acked.is_empty() => {
                    // The newest half more often: those are surely inside the window.
                    let from = if rng.chance(500) { acked.len() / 2 } else { 0 };
                    acked[from + rng.below((acked.len() - from) as u64) as usize]
                }
                _ => transfer_id(now_ms, NEVER_SENT_COUNTER_MIN + rng.below(1 << 20)),
            };
            ids.push(id);
        }
        let required = ids
            .iter()
            .map(|id| self.decided.get(id).filter(|(p, _, _)| *p == partition).map(|&(_, code, seq)| (code, seq)))
            .collect();
        Op::LookupTransfers { partition, ids, required }
    }

    /// A fresh transfer of `partition` between its seed accounts, sent to `node` (the failover
    /// episode's load: it goes to followers, which forward it).
    /// Its error answer, if it gets one, is kept for [`Auditor::error_of`].
    pub fn fresh_transfer(&mut self, now_ms: u64, partition: u32, node: u64) -> Send {
        let transfer = self.external_transfer(now_ms, partition);
        self.sent_transfers.push(transfer);
        let send = self.send(node, Op::Transfers { partition, items: vec![transfer] }, 0);
        self.watched.insert(send.handle, None);
        send
    }

    /// The error a request sent by [`Auditor::fresh_transfer`] was answered with, if any.
    pub fn error_of(&self, handle: u64) -> Option<&str> {
        self.watched.get(&handle).and_then(|error| error.as_deref())
    }

    /// A fresh transfer of 1 from `partition`'s first external account to its first ordinary one.
    fn external_transfer(&mut self, now_ms: u64, partition: u32) -> Transfer {
        let accounts = &self.accounts[partition as usize];
        let counter = self.next_transfer;
        self.next_transfer += 1;
        Transfer {
            id: transfer_id(now_ms, counter),
            debit_account_id: accounts[0],
            credit_account_id: accounts[EXTERNAL_PER_PARTITION],
            amount: 1,
            ledger: LEDGER,
            flags: 0,
            user_data: 0,
        }
    }

    /// Whether request `handle` still waits for its answer.
    pub fn is_pending(&self, handle: u64) -> bool {
        self.pending.contains_key(&handle)
    }

    /// After faults stop: one fresh transfer per partition, from an external account, which must be
    /// acknowledged ok (sent once the partition's seed accounts exist).
    pub fn send_markers(&mut self) {
        self.markers_wanted = (0..self.partitions).collect();
    }

    fn push_marker(&mut self, now_ms: u64, partition: u32) {
        let transfer = self.external_transfer(now_ms, partition);
        self.markers.insert(transfer.id, false);
        self.retries.push((now_ms, Op::Transfers { partition, items: vec![transfer] }, 0));
    }

    /// Entries a replica applied (in order for that replica).
    pub fn applied(&mut self, node: u64, partition: u32, entry: Entry) -> Result<(), Violation> {
        self.stats.entries_applied += 1;
        let model = &mut self.models[partition as usize];
        let index = entry.index;
        let (term, hash) = (entry.term, payload_hash(&entry));
        if index <= model.log.len() as u64 {
            let known = model.log[index as usize - 1];
            if known != (term, hash) {
                return Err(format!(
                    "node {node} applied entry {index} of partition {partition} as (term {term}, hash {hash:#x}); \
                     another replica applied (term {}, hash {:#x})",
                    known.0, known.1
                ));
            }
            return Ok(());
        }
        if let Some(early) = model.early.get(&index) {
            if (early.term, payload_hash(early)) != (term, hash) {
                return Err(format!("node {node} applied a different entry {index} of partition {partition}"));
            }
            return Ok(());
        }
        model.early.insert(index, entry);
        self.drain_early(partition)
    }

    fn drain_early(&mut self, partition: u32) -> Result<(), Violation> {
        let model = &mut self.models[partition as usize];
        while let Some(entry) = model.early.remove(&(model.log.len() as u64 + 1)) {
            model.log.push((entry.term, payload_hash(&entry)));
            apply_to_model(model, &self.external, partition, &entry)?;
        }
        self.stats.transfers_posted = self.models.iter().map(|m| m.posted.len() as u64).sum();
        Ok(())
    }

    /// An answer to the items request `handle`, from `node`.
    pub fn items_answer(
        &mut self,
        node: u64,
        handle: u64,
        outcome: Result<Vec<ItemResult>, EngineError>,
        now_ms: u64,
        rng: &mut Rng,
    ) -> Result<(), Violation> {
        let pending = self.take_pending(node, handle, &outcome)?;
        let results = match outcome {
            Ok(results) => results,
            Err(error) => {
                if let Some(kept) = self.watched.get_mut(&handle) {
                    *kept = Some(error.to_string());
                }
                return self.failed(pending, error, now_ms, rng);
            }
        };
        let (partition, ids): (u32, Vec<(u128, Option<(u64, u64)>)>) = match &pending.op {
            Op::Transfers { partition, items } => {
                (*partition, items.iter().map(|t| (t.id, Some((t.debit_account_id, t.credit_account_id)))).collect())
            }
            Op::Accounts { partition, items } => (*partition, items.iter().map(|a| (u128::from(a.id), None)).collect()),
            Op::Lookup { .. } | Op::LookupTransfers { .. } => {
                return Err(format!("node {node} answered lookup {handle} with item results"))
            }
        };
        if results.len() != ids.len() {
            return Err(format!("node {node}: {} results for {} items (request {handle})", results.len(), ids.len()));
        }
        if let Op::Accounts { items, .. } = &pending.op {
            let seeds = &self.accounts[partition as usize][..SEED_ACCOUNTS_PER_PARTITION];
            let created = |r: &ItemResult| r.code == ResultCode::Ok || r.code == ResultCode::Exists;
            if items.len() == SEED_ACCOUNTS_PER_PARTITION
                && items.iter().zip(seeds).all(|(item, &seed)| item.id == seed)
                && results.iter().all(created)
            {
                self.seeded[partition as usize] = true;
            }
        }
        let model = &mut self.models[partition as usize];
        for (result, (id, accounts)) in results.iter().zip(&ids) {
            let expected = match accounts {
                Some(_) => Decided::Transfer { id: *id, code: result.code },
                None => Decided::Account { id: *id as u64, code: result.code },
            };
            match model.events.get(&result.seq) {
                Some(decided) if *decided == expected => {}
                found => {
                    return Err(format!(
                        "node {node} answered {expected:?} at seq {} of partition {partition} (request {handle}), \
                         but the committed log holds {found:?} there (answered before commit, or a wrong answer)",
                        result.seq
                    ))
                }
            }
            self.stats.ids_expired += u64::from(result.code == ResultCode::IdExpired);
            // The outcomes the id table records (see `TransferDecision`): a lookup must find them.
            let recorded = ![ResultCode::IdExpired, ResultCode::ExistsWithDifferentFields, ResultCode::IdFromFuture]
                .contains(&result.code);
            if accounts.is_some() && recorded {
                match self.decided.get(id) {
                    None => {
                        self.decided.insert(*id, (partition, result.code, result.seq));
                        model.acked_transfer_ids.push(*id);
                    }
                    Some(&(p, code, seq)) if (p, code, seq) != (partition, result.code, result.seq) => {
                        return Err(format!(
                            "node {node} answered transfer {id:#x} with {:?} at seq {} of partition {partition}; \
                             it was answered {code:?} at seq {seq} of partition {p} before",
                            result.code, result.seq
                        ));
                    }
                    Some(_) => {}
                }
            }
            if result.code == ResultCode::Ok {
                model.acked_seqs.push(result.seq);
                match accounts {
                    Some((debit, credit)) => {
                        self.stats.transfers_acked += 1;
                        self.acked.entry(*debit).or_default().push(result.seq);
                        self.acked.entry(*credit).or_default().push(result.seq);
                        if let Some(acked) = self.markers.get_mut(id) {
                            *acked = true;
                        }
                    }
                    None => self.acked.entry(*id as u64).or_default().push(result.seq),
                }
            } else if self.markers.contains_key(id) {
                return Err(format!("liveness marker transfer {id:#x} was refused: {:?}", result.code));
            }
        }
        Ok(())
    }

    /// An answer to the lookup `handle`, from `node`.
    pub fn lookup_answer(
        &mut self,
        node: u64,
        handle: u64,
        outcome: Result<Vec<Option<Account>>, EngineError>,
        now_ms: u64,
        rng: &mut Rng,
    ) -> Result<(), Violation> {
        let pending = self.take_pending(node, handle, &outcome)?;
        let accounts = match outcome {
            Ok(accounts) => accounts,
            Err(error) => return self.failed(pending, error, now_ms, rng),
        };
        let Op::Lookup { partition, consistency, ids, required } = &pending.op else {
            return Err(format!("node {node} answered items request {handle} with accounts"));
        };
        if accounts.len() != ids.len() {
            return Err(format!("node {node}: {} accounts for {} ids (request {handle})", accounts.len(), ids.len()));
        }
        self.stats.reads_checked += 1;
        self.stats.linearizable_reads += u64::from(*consistency == Consistency::Linearizable);
        let model = &self.models[*partition as usize];
        for ((account, &id), &required) in accounts.iter().zip(ids).zip(required) {
            let stale = |shown: u64| {
                format!(
                    "node {node}: {consistency:?} read of account {id} (request {handle}) shows seq {shown}, \
                     but a write at seq {required} was acknowledged before the read"
                )
            };
            let Some(account) = account else {
                if required > 0 {
                    return Err(stale(0));
                }
                continue;
            };
            if account.id != id {
                return Err(format!("node {node}: read of account {id} returned account {}", account.id));
            }
            if account.last_seq < required {
                return Err(stale(account.last_seq));
            }
            let history = model.history.get(&id).map(Vec::as_slice).unwrap_or_default();
            let at = history.iter().find(|(seq, _)| *seq == account.last_seq);
            if at.map(|&(_, balance)| balance) != Some(account.balance) {
                return Err(format!(
                    "node {node}: read of account {id} shows balance {} at seq {}, a state the committed log never \
                     had ({at:?})",
                    account.balance, account.last_seq
                ));
            }
        }
        Ok(())
    }

    /// An answer to the transfer lookup `handle`, from `node`.
    pub fn transfers_answer(
        &mut self,
        node: u64,
        handle: u64,
        outcome: Result<Vec<Option<TransferLookup>>, EngineError>,
        now_ms: u64,
        rng: &mut Rng,
    ) -> Result<(), Violation> {
        let pending = self.take_pending(node, handle, &outcome)?;
        let found = match outcome {
            Ok(found) => found,
            Err(error) => return self.failed(pending, error, now_ms, rng),
        };
        let Op::LookupTransfers { partition, ids, required } = &pending.op else {
            return Err(format!("node {node} answered request {handle} with transfer lookups"));
        };
        if found.len() != ids.len() {
            return Err(format!(
                "node {node}: {} transfer lookups for {} ids (request {handle})",
                found.len(),
                ids.len()
            ));
        }
        // A node's clock may run ahead of the clients' (which made the ids) by its spread plus drift:
        // an id is surely inside the window only while younger than the window less that lead.
        let lead_ms = self.window.clock_spread_ms_max + now_ms * self.window.clock_drift_ppm_max / 1_000_000 + 20;
        let model = &self.models[*partition as usize];
        for ((item, &id), required) in found.iter().zip(ids).zip(required) {
            self.stats.transfer_lookups_checked += 1;
            let counter = (id & ((1 << 80) - 1)) as u64;
            let created_ms = ((id >> 80) as u64).saturating_sub(super::CLIENT_WALL_EPOCH_MS);
            let young = now_ms.saturating_sub(created_ms) + lead_ms < self.window.idempotency_window_ms;
            let Some(item) = item else {
                if let (Some((code, seq)), true) = (required, young) {
                    return Err(format!(
                        "node {node}: lookup of transfer {id:#x} in partition {partition} (request {handle}) found \
                         nothing, but its outcome {code:?} at seq {seq} was acknowledged before the lookup was sent"
                    ));
                }
                continue;
            };
            let (code, seq, fields) = match *item {
                TransferLookup::Found { transfer, code, seq, .. } => {
                    self.stats.transfer_lookups_with_fields += 1;
                    (code, seq, Some(transfer))
                }
                TransferLookup::FoundWithoutFields { code, seq, .. } => {
                    self.stats.transfer_lookups_without_fields += 1;
                    (code, seq, None)
                }
                TransferLookup::NotFound { .. } => {
                    return Err(format!("node {node}: a partition's transfer lookup answered NotFound for {id:#x}"))
                }
            };
            if item.id() != id || counter >= NEVER_SENT_COUNTER_MIN {
                return Err(format!("node {node}: lookup of transfer {id:#x} (never sent?) found {item:?}"));
            }
            if model.events.get(&seq) != Some(&Decided::Transfer { id, code }) {
                return Err(format!(
                    "node {node}: lookup of transfer {id:#x} says {code:?} at seq {seq} of partition {partition}, but \
                     the committed log holds {:?} there",
                    model.events.get(&seq)
                ));
            }
            if let Some(transfer) = fields {
                if model.transfers.get(&seq) != Some(&transfer) {
                    return Err(format!(
                        "node {node}: lookup of transfer {id:#x} shows fields {transfer:?}; seq {seq} logged {:?}",
                        model.transfers.get(&seq)
                    ));
                }
            }
            if let Some(expected) = required {
                self.stats.transfer_lookups_required += u64::from(young);
                if *expected != (code, seq) {
                    return Err(format!(
                        "node {node}: lookup of transfer {id:#x} says {code:?} at seq {seq}; {:?} at seq {} was \
                         acknowledged",
                        expected.0, expected.1
                    ));
                }
            }
        }
        Ok(())
    }

    /// The request `node` answered with `outcome` (printed with REPLICA_SIM_VERBOSE).
    fn take_pending(&mut self, node: u64, handle: u64, outcome: &dyn std::fmt::Debug) -> Result<Pending, Violation> {
        self.stats.answers += 1;
        let Some(pending) = self.pending.remove(&handle) else {
            return Err(format!("node {node} answered request {handle}, which is not waiting for an answer"));
        };
        if pending.node != node {
            return Err(format!("node {node} answered request {handle}, which was sent to node {}", pending.node));
        }
        if self.verbose {
            eprintln!("[auditor] node {node} answers {:?} with {outcome:?}", pending.op);
        }
        Ok(pending)
    }

    fn failed(&mut self, pending: Pending, error: EngineError, now_ms: u64, rng: &mut Rng) -> Result<(), Violation> {
        if self.verbose {
            eprintln!("[auditor] {:?} failed: {error}; sent again", pending.op);
        }
        if !retryable(&error) {
            return Err(format!("node {} answered {:?} with a non-retryable error: {error}", pending.node, pending.op));
        }
        self.retry_later(now_ms, rng, pending.op, pending.attempts);
        Ok(())
    }

    /// The last committed sequence of `partition` the model knows.
    pub fn committed_seq(&self, partition: u32) -> u64 {
        self.models[partition as usize].last_seq
    }
}

fn payload_hash(entry: &Entry) -> u64 {
    match &entry.payload {
        Payload::Noop => 0,
        Payload::Data(bytes) => hash_bytes(1, bytes),
        Payload::ConfChange(change) => hash_bytes(2, format!("{change:?}").as_bytes()),
    }
}

/// What a client may send again with the same ids: the node did not lead, could not reach a leader in
/// time, or was stopping. Anything else is a bug in the simulated cluster.
fn retryable(error: &EngineError) -> bool {
    match error {
        EngineError::NotLeader { .. } | EngineError::ShuttingDown => true,
        // The shape check is the defence against a reply that belongs to another request.
        EngineError::Unavailable(message) => !message.contains("wrong shape"),
        EngineError::Remote { code, .. } => {
            [ErrorCode::NotLeader as u16, ErrorCode::Unavailable as u16, ErrorCode::ServerBusy as u16].contains(code)
        }
        _ => false,
    }
}

fn apply_to_model(model: &mut Model, external: &HashSet<u64>, partition: u32, entry: &Entry) -> Result<(), Violation> {
    let Payload::Data(bytes) = &entry.payload else { return Ok(()) };
    let view = EventBatchView::new(bytes)
        .map_err(|e| format!("committed entry {} of partition {partition} is not an event batch: {e}", entry.index))?;
    if view.partition() != partition {
        return Err(format!(
            "committed entry {} of partition {partition} holds partition {}",
            entry.index,
            view.partition()
        ));
    }
    for event in view.iter() {
        if event.seq != model.last_seq + 1 {
            return Err(format!(
                "partition {partition}: committed event seq {} follows {} (entry {})",
                event.seq, model.last_seq, entry.index
            ));
        }
        model.last_seq = event.seq;
        let seq = event.seq;
        let decided = match event.body {
            EventBody::AccountCreated { account } => {
                if model.balances.insert(account.id, 0).is_some() {
                    return Err(format!("partition {partition}: account {} created twice (seq {seq})", account.id));
                }
                model.history.entry(account.id).or_default().push((seq, 0));
                Decided::Account { id: account.id, code: ResultCode::Ok }
            }
            EventBody::AccountRejected { account, code } => Decided::Account { id: account.id, code },
            EventBody::TransferPosted { transfer, debit_balance_after, credit_balance_after, .. } => {
                if let Some(first) = model.posted.insert(transfer.id, seq) {
                    return Err(format!(
                        "partition {partition}: transfer {:#x} posted twice (seqs {first} and {seq})",
                        transfer.id
                    ));
                }
                let (debit, credit) = (transfer.debit_account_id, transfer.credit_account_id);
                let amount = i64::try_from(transfer.amount).map_err(|_| format!("seq {seq}: amount out of range"))?;
                let before =
                    |id: u64| model.balances.get(&id).copied().ok_or(format!("seq {seq}: account {id} missing"));
                let (debit_after, credit_after) = (before(debit)? - amount, before(credit)? + amount);
                if (debit_after, credit_after) != (debit_balance_after, credit_balance_after) {
                    return Err(format!(
                        "partition {partition}: seq {seq} records balances ({debit_balance_after}, \
                         {credit_balance_after}); the model has ({debit_after}, {credit_after})"
                    ));
                }
                for (id, after) in [(debit, debit_after), (credit, credit_after)] {
                    if after < 0 && !external.contains(&id) {
                        return Err(format!("partition {partition}: ordinary account {id} at {after} after seq {seq}"));
                    }
                    model.balances.insert(id, after);
                    model.history.entry(id).or_default().push((seq, after));
                }
                model.transfers.insert(seq, transfer);
                Decided::Transfer { id: transfer.id, code: ResultCode::Ok }
            }
            EventBody::TransferRejected { transfer, code } => {
                model.transfers.insert(seq, transfer);
                Decided::Transfer { id: transfer.id, code }
            }
        };
        model.events.insert(seq, decided);
    }
    let sum: i64 = model.balances.values().sum();
    if sum != 0 {
        return Err(format!("partition {partition}: the model's ledger sums to {sum} after entry {}", entry.index));
    }
    Ok(())
}
