//! One connection's load loop: generate batches, send them on a timetable (open loop) or as answers
//! come (closed loop), keep up to `inflight` batches in flight, and report every answered batch.
//!
//! Latency is measured from the batch's *scheduled* send time in open loop, so a server that stalls
//! is charged for every batch it kept the generator from sending (coordinated omission corrected).
//! The worker keeps, per account, the net balance change of every transfer the server answered `ok`:
//! that is what `--verify` compares the server's balances against. Nothing on the hot path allocates:
//! batch buffers are reused, and a whole batch costs one channel message to the aggregator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use net::client::{Client, ClientConfig, ClientError, RETRY_BACKOFF_MS, RETRY_BACKOFF_MS_MAX};
use net::protocol::{ErrorCode, Request, Response};
use net::types::{transfer_id_from_parts, ItemResult, ResultCode, Transfer};
use thiserror::Error;

use crate::accounts::AccountLayout;
use crate::config::Distribution;
use crate::rng::{share_threshold, SplitMix64};
use crate::zipf::ZipfSampler;

/// Normal transfers move 1..=this many minor units.
pub const TRANSFER_AMOUNT_MINOR_MAX: u64 = 100;
/// Number of result codes the protocol defines (array size for per-code counters).
pub const RESULT_CODES: usize = ResultCode::ALL.len();
/// Connection losses one worker recovers from (by resending its in-flight batches with the same ids)
/// before it gives up.
pub const RECONNECTS_MAX: u32 = 8;
/// Times one batch is resent after a retryable Error answer (busy, not leader, unavailable).
pub const BATCH_RETRIES_MAX: u32 = 8;
/// Bits of a transfer id's 80 entropy bits: run entropy, worker index, per-worker counter. The counter
/// cannot wrap within a bounded run (2^40 transfers per connection).
const ID_COUNTER_BITS: u32 = 40;
const ID_WORKER_BITS: u32 = 8;
/// Tries to find a credit account in another partition for a cross-partition transfer.
const CROSS_PARTITION_TRIES_MAX: u32 = 16;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("server refused a batch: {code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("answer for unknown request id {0}")]
    UnknownRequest(u64),
    #[error("unexpected answer to a transfer batch: {0}")]
    Unexpected(String),
    #[error("answer has {got} results for {sent} transfers")]
    ResultCount { sent: usize, got: usize },
    #[error("result index {index} out of a batch of {sent}")]
    ResultIndex { index: u32, sent: usize },
    #[error("gave up after {0} connection losses")]
    TooManyReconnects(u32),
}

/// What workers share about the accounts and the transfer mix.
#[derive(Clone, Debug)]
pub struct Workload {
    pub layout: AccountLayout,
    pub ledger: u32,
    pub distribution: Distribution,
    pub cross_partition_share: f64,
    pub fail_share: f64,
    /// More than any account can hold, so these transfers must fail with `insufficient_funds`.
    pub fail_amount_minor: u64,
}

/// One answered batch, as the aggregator sees it.
#[derive(Clone, Debug)]
pub struct BatchOutcome {
    /// When the answer arrived, since the run's start.
    pub answered_at: Duration,
    /// From the scheduled send time (open loop) or the actual send time (closed loop).
    pub latency_us: u64,
    pub transfers: u32,
    /// Scheduled after the warmup: counts in the report's statistics.
    pub measured: bool,
    pub codes: [u32; RESULT_CODES],
    pub expected_failures: u32,
    pub expected_failures_insufficient: u32,
    /// Deliberate overdrafts the server accepted: a server bug (or the null server).
    pub expected_failures_accepted: u32,
    /// A batch-level Error answer (the batch was resent).
    pub batch_error: Option<ErrorCode>,
}

/// Generates transfers: debit by the chosen distribution, credit in the debit's partition (or, for
/// the cross-partition share, in another one), amounts small except for the deliberate failures.
pub struct TransferGenerator<'a> {
    workload: &'a Workload,
    rng: SplitMix64,
    zipf: Option<ZipfSampler>,
    cross_threshold: u64,
    fail_threshold: u64,
    id_prefix: u128,
    counter: u64,
}

impl<'a> TransferGenerator<'a> {
    pub fn new(workload: &'a Workload, seed: u64, run_entropy: u32, worker_index: usize) -> TransferGenerator<'a> {
        assert!(worker_index < 1 << ID_WORKER_BITS, "connections are bounded by CONNECTIONS_MAX = 256");
        let zipf = match workload.distribution {
            Distribution::Uniform => None,
            Distribution::Zipf { skew } => Some(
                ZipfSampler::new(workload.layout.accounts.len() as u64, skew)
                    .expect("config validation checked the skew and the account count"),
            ),
        };
        TransferGenerator {
            workload,
            rng: SplitMix64::new(seed),
            zipf,
            cross_threshold: share_threshold(workload.cross_partition_share),
            fail_threshold: share_threshold(workload.fail_share),
            id_prefix: ((run_entropy as u128) << (ID_WORKER_BITS + ID_COUNTER_BITS))
                | ((worker_index as u128) << ID_COUNTER_BITS),
            counter: 0,
        }
    }

    /// Replaces the contents of `transfers` and `pairs` (account indices) with `count` new transfers.
    pub fn fill(&mut self, transfers: &mut Vec<Transfer>, pairs: &mut Vec<(u32, u32)>, count: usize, now_ms: u64) {
        transfers.clear();
        pairs.clear();
        let accounts = &self.workload.layout.accounts;
        for _ in 0..count {
            let debit = self.debit_index();
            let credit = self.credit_index(debit);
            let amount = if self.rng.next_u64() < self.fail_threshold {
                self.workload.fail_amount_minor
            } else {
                1 + self.rng.below(TRANSFER_AMOUNT_MINOR_MAX)
            };
            assert!(self.counter < 1 << ID_COUNTER_BITS, "a bounded run never exhausts the id counter");
            let id = transfer_id_from_parts(now_ms, self.id_prefix | self.counter as u128);
            self.counter += 1;
            transfers.push(Transfer {
                id,
                debit_account_id: accounts[debit as usize],
                credit_account_id: accounts[credit as usize],
                amount,
                ledger: self.workload.ledger,
                flags: 0,
                user_data: 0,
            });
            pairs.push((debit, credit));
        }
    }

    fn debit_index(&mut self) -> u32 {
        match &self.zipf {
            Some(zipf) => (zipf.sample(&mut self.rng) - 1) as u32,
            None => self.rng.below(self.workload.layout.accounts.len() as u64) as u32,
        }
    }

    fn credit_index(&mut self, debit: u32) -> u32 {
        let layout = &self.workload.layout;
        let partition = layout.partition_of_account[debit as usize];
        if self.cross_threshold > 0 && self.rng.next_u64() < self.cross_threshold && layout.partitions > 1 {
            for _ in 0..CROSS_PARTITION_TRIES_MAX {
                let candidate = self.rng.below(layout.accounts.len() as u64) as u32;
                if layout.partition_of_account[candidate as usize] != partition {
                    return candidate;
                }
            }
        }
        let group = &layout.groups[partition as usize];
        let pick = self.rng.below(group.len() as u64) as usize;
        if group[pick] != debit {
            group[pick]
        } else {
            group[(pick + 1) % group.len()]
        }
    }
}

/// When and how much one worker sends.
#[derive(Clone, Debug)]
pub struct WorkerPlan {
    pub index: usize,
    pub client_config: ClientConfig,
    /// The run's time origin; the worker connects, then waits for it.
    pub start: Instant,
    /// Batches scheduled from here on are measured (the warmup ends).
    pub measure_from: Instant,
    /// No batch is scheduled at or after this instant.
    pub generate_until: Instant,
    /// Open loop: time between this worker's batches, first one at `first_due`. `None`: closed loop.
    pub interval: Option<Duration>,
    pub first_due: Instant,
    pub transfers_quota: u64,
    pub batch_size: usize,
    pub inflight: usize,
    pub seed: u64,
    pub run_entropy: u32,
    /// Batches scheduled before this instant are sampled (one per second) and resent at the end.
    pub retry_sample_until: Option<Instant>,
}

/// The end-of-run check that early transfers are still answered as replays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryCheck {
    /// Transfers resent at the end.
    pub transfers: u64,
    /// Answered as replays with the original code and seq.
    pub replayed_as_original: u64,
    /// Anything else (not replayed, another code or seq, `id_expired`).
    pub mismatched: u64,
}

/// What a worker hands back when it ends.
#[derive(Debug)]
pub struct WorkerReport {
    /// Net balance change per run account from the transfers answered `ok`.
    pub deltas: Vec<i64>,
    pub transfers_sent: u64,
    pub error: Option<WorkerError>,
    pub retry_check: RetryCheck,
}

struct Slot {
    request: Request,
    pairs: Vec<(u32, u32)>,
    scheduled: Instant,
    request_id: u64,
    retries: u32,
}

impl Slot {
    fn transfers(&self) -> &[Transfer] {
        match &self.request {
            Request::CreateTransfers(transfers) => transfers,
            _ => unreachable!("slots only ever hold transfer batches"),
        }
    }

    fn transfers_mut(&mut self) -> &mut Vec<Transfer> {
        match &mut self.request {
            Request::CreateTransfers(transfers) => transfers,
            _ => unreachable!("slots only ever hold transfer batches"),
        }
    }
}

struct Worker<'a> {
    plan: &'a WorkerPlan,
    workload: &'a Workload,
    generator: TransferGenerator<'a>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    busy: Vec<usize>,
    deltas: Vec<i64>,
    transfers_sent: u64,
    reconnects: u32,
    outcomes: &'a Sender<BatchOutcome>,
    /// Sampled early batches with their answers (results by item index), for the retry check.
    retry_samples: Vec<(Vec<Transfer>, Vec<ItemResult>)>,
    retry_sampled_second: Option<u64>,
    retry_check: RetryCheck,
}

/// Runs one connection's load until its quota or time is used up, or `stop` is raised (by another
/// worker's failure). Raises `stop` itself when it fails.
pub fn run_worker(
    plan: &WorkerPlan,
    workload: &Workload,
    outcomes: &Sender<BatchOutcome>,
    stop: &AtomicBool,
) -> WorkerReport {
    let slots = (0..plan.inflight)
        .map(|_| Slot {
            request: Request::CreateTransfers(Vec::with_capacity(plan.batch_size)),
            pairs: Vec::with_capacity(plan.batch_size),
            scheduled: plan.start,
            request_id: 0,
            retries: 0,
        })
        .collect();
    let mut worker = Worker {
        plan,
        workload,
        generator: TransferGenerator::new(workload, plan.seed, plan.run_entropy, plan.index),
        slots,
        free: (0..plan.inflight).rev().collect(),
        busy: Vec::with_capacity(plan.inflight),
        deltas: vec![0; workload.layout.accounts.len()],
        transfers_sent: 0,
        reconnects: 0,
        outcomes,
        retry_samples: Vec::new(),
        retry_sampled_second: None,
        retry_check: RetryCheck::default(),
    };
    let error = worker.drive(stop).err();
    if error.is_some() {
        stop.store(true, Ordering::Relaxed);
    }
    WorkerReport {
        deltas: worker.deltas,
        transfers_sent: worker.transfers_sent,
        error,
        retry_check: worker.retry_check,
    }
}

impl Worker<'_> {
    fn drive(&mut self, stop: &AtomicBool) -> Result<(), WorkerError> {
        let mut client = Client::connect(self.plan.client_config.clone())?;
        sleep_until(self.plan.start);
        let mut next_due = self.plan.first_due;
        // Bounded: each pass sends a batch (at most quota / 1 of them, and only before
        // generate_until), receives an answer to one sent earlier, or sleeps until the next due time
        // (which is before generate_until).
        loop {
            let now = Instant::now();
            let due = if self.plan.interval.is_some() { next_due } else { now };
            let may_generate = self.transfers_sent < self.plan.transfers_quota
                && due < self.plan.generate_until
                && !stop.load(Ordering::Relaxed);
            if may_generate && due <= now && !self.free.is_empty() {
                self.send_new_batch(&mut client, due)?;
                if let Some(interval) = self.plan.interval {
                    next_due += interval;
                }
                continue;
            }
            if !self.busy.is_empty() {
                // In open loop, wait for answers only until the next batch falls due, so sends keep
                // to the timetable instead of bunching up behind a slow answer.
                let next_send = (may_generate && self.plan.interval.is_some() && !self.free.is_empty()).then_some(due);
                self.receive_one(&mut client, next_send)?;
                continue;
            }
            if !may_generate {
                return self.resend_samples(&mut client);
            }
            std::thread::sleep(due.saturating_duration_since(now));
        }
    }

    fn send_new_batch(&mut self, client: &mut Client, scheduled: Instant) -> Result<(), WorkerError> {
        let index = self.free.pop().expect("the caller checked a free slot");
        let count = (self.plan.transfers_quota - self.transfers_sent).min(self.plan.batch_size as u64) as usize;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let slot = &mut self.slots[index];
        let mut transfers = std::mem::take(slot.transfers_mut());
        self.generator.fill(&mut transfers, &mut slot.pairs, count, now_ms);
        *slot.transfers_mut() = transfers;
        slot.scheduled = scheduled;
        slot.retries = 0;
        slot.request_id = 0;
        self.transfers_sent += count as u64;
        // Busy before the send: if the send fails the batch may still have reached the server, and
        // recovery resends it with the same ids to learn its outcome.
        self.busy.push(index);
        self.send_slot(client, index)
    }

    /// Sends (or resends, with the same transfer ids) the batch in `index`; a retryable failure goes to
    /// recovery, which learns the batch's outcome by resending it.
    fn send_slot(&mut self, client: &mut Client, index: usize) -> Result<(), WorkerError> {
        match client.send(&self.slots[index].request) {
            Ok(request_id) => {
                self.slots[index].request_id = request_id;
                Ok(())
            }
            Err(error) if error.is_retryable() => self.recover(client, error),
            Err(error) => Err(error.into()),
        }
    }

    fn receive_one(&mut self, client: &mut Client, until: Option<Instant>) -> Result<(), WorkerError> {
        let answer = match until {
            Some(deadline) => client.recv_until(deadline),
            None => client.recv().map(Some),
        };
        match answer {
            Ok(Some((request_id, response))) => self.on_answer(client, request_id, response),
            Ok(None) => Ok(()),
            Err(error) if error.is_retryable() => self.recover(client, error),
            Err(error) => Err(error.into()),
        }
    }

    fn on_answer(&mut self, client: &mut Client, request_id: u64, response: Response) -> Result<(), WorkerError> {
        let position = self
            .busy
            .iter()
            .position(|index| self.slots[*index].request_id == request_id)
            .ok_or(WorkerError::UnknownRequest(request_id))?;
        let index = self.busy[position];
        match response {
            Response::Results(results) => {
                self.busy.swap_remove(position);
                self.complete(index, &results)
            }
            Response::Error { code, .. } if code.is_retryable() && self.slots[index].retries < BATCH_RETRIES_MAX => {
                self.report_batch_error(index, code);
                let slot = &mut self.slots[index];
                slot.retries += 1;
                let backoff_ms = (RETRY_BACKOFF_MS << slot.retries.min(8)).min(RETRY_BACKOFF_MS_MAX);
                std::thread::sleep(Duration::from_millis(backoff_ms));
                self.send_slot(client, index)
            }
            Response::Error { code, message } => Err(WorkerError::Server { code, message }),
            other => Err(WorkerError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The connection failed: the outcome of every batch in flight is unknown. Resending each with the
    /// same transfer ids is safe (ids are idempotency keys) and tells the outcome, so the balance
    /// deltas stay exact.
    fn recover(&mut self, client: &mut Client, error: ClientError) -> Result<(), WorkerError> {
        self.reconnects += 1;
        if self.reconnects > RECONNECTS_MAX {
            return Err(WorkerError::TooManyReconnects(self.reconnects - 1));
        }
        let _ = error; // retryable by the caller's check; the resend below reports any lasting failure
        client.disconnect();
        let unresolved = std::mem::take(&mut self.busy);
        for index in unresolved {
            let results = client.create_transfers_retrying(self.slots[index].transfers())?;
            self.complete(index, &results)?;
        }
        Ok(())
    }

    /// Resends every sampled early batch and counts how many answers are replays of the original.
    fn resend_samples(&mut self, client: &mut Client) -> Result<(), WorkerError> {
        for (transfers, originals) in std::mem::take(&mut self.retry_samples) {
            let results = client.create_transfers_retrying(&transfers)?;
            self.retry_check.transfers += transfers.len() as u64;
            for result in &results {
                let original = originals[result.index as usize];
                if result.is_replayed() && (result.code, result.seq) == (original.code, original.seq) {
                    self.retry_check.replayed_as_original += 1;
                } else {
                    self.retry_check.mismatched += 1;
                }
            }
        }
        Ok(())
    }

    fn complete(&mut self, index: usize, results: &[ItemResult]) -> Result<(), WorkerError> {
        let slot = &self.slots[index];
        if let Some(until) = self.plan.retry_sample_until {
            let second = slot.scheduled.saturating_duration_since(self.plan.start).as_secs();
            if slot.scheduled < until && self.retry_sampled_second != Some(second) && slot.retries == 0 {
                self.retry_sampled_second = Some(second);
                let mut by_index = results.to_vec();
                by_index.sort_by_key(|result| result.index);
                self.retry_samples.push((slot.transfers().to_vec(), by_index));
            }
        }
        let transfers = slot.transfers();
        if results.len() != transfers.len() {
            return Err(WorkerError::ResultCount { sent: transfers.len(), got: results.len() });
        }
        let mut outcome = self.outcome_for(slot, transfers.len() as u32);
        for result in results {
            let item = result.index as usize;
            let transfer =
                transfers.get(item).ok_or(WorkerError::ResultIndex { index: result.index, sent: transfers.len() })?;
            outcome.codes[result.code as usize] += 1;
            if transfer.amount == self.workload.fail_amount_minor {
                outcome.expected_failures += 1;
                match result.code {
                    ResultCode::InsufficientFunds => outcome.expected_failures_insufficient += 1,
                    ResultCode::Ok => outcome.expected_failures_accepted += 1,
                    _ => {}
                }
            }
            if result.code == ResultCode::Ok {
                let (debit, credit) = slot.pairs[item];
                // Saturating: a correct server keeps every balance (and so every net change) in the i64
                // range; only a server that acknowledged the deliberately impossible amounts pushes a
                // delta past it, and verify fails on such a server regardless.
                let amount = transfer.amount as i64;
                let debit = &mut self.deltas[debit as usize];
                *debit = debit.saturating_sub(amount);
                let credit = &mut self.deltas[credit as usize];
                *credit = credit.saturating_add(amount);
            }
        }
        self.free.push(index);
        // The aggregator gone means the run is over; the deltas above still count for verify.
        let _ = self.outcomes.send(outcome);
        Ok(())
    }

    fn report_batch_error(&self, index: usize, code: ErrorCode) {
        let mut outcome = self.outcome_for(&self.slots[index], 0);
        outcome.batch_error = Some(code);
        let _ = self.outcomes.send(outcome);
    }

    fn outcome_for(&self, slot: &Slot, transfers: u32) -> BatchOutcome {
        let now = Instant::now();
        BatchOutcome {
            answered_at: now.saturating_duration_since(self.plan.start),
            latency_us: now.saturating_duration_since(slot.scheduled).as_micros() as u64,
            transfers,
            measured: slot.scheduled >= self.plan.measure_from,
            codes: [0; RESULT_CODES],
            expected_failures: 0,
            expected_failures_insufficient: 0,
            expected_failures_accepted: 0,
            batch_error: None,
        }
    }
}

fn sleep_until(instant: Instant) {
    let now = Instant::now();
    if instant > now {
        std::thread::sleep(instant - now);
    }
}
