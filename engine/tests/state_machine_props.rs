//! Property tests of the partition state machine: random command batches against invariants, an
//! independent model of balances and decided ids, replay, replicas and checkpoint/restore.

use std::collections::HashMap;

use engine::event::{Event, EventBatchView, EventBody, EventBuffer, EventKind, EVENT_BATCH_HEADER_BYTES};
use engine::idempotency::IdEntry;
use engine::partition::{DirtyRow, PartitionConfig, PartitionRows, PartitionState};
use engine::past::Until;
use net::types::{
    transfer_id_from_parts, Account, CreateAccount, ItemResult, ResultCode, Transfer, TransferId,
    ACCOUNT_FLAG_EXTERNAL, TRANSFER_ID_FUTURE_MS_MAX,
};
use proptest::prelude::*;

const LEDGERS: [u32; 2] = [840, 978];
const ACCOUNT_IDS_MAX: u64 = 10;
const MS: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Command {
    Create(Vec<CreateAccount>),
    Transfer(Vec<Transfer>),
    /// Resend transfers sent earlier, verbatim (picked by index into everything sent so far).
    Retry(Vec<prop::sample::Index>),
}

#[derive(Clone, Debug)]
struct Step {
    /// Signed clock step in ms before this batch: mostly forward, sometimes back.
    clock_step_ms: i64,
    command: Command,
    checkpoint_after: bool,
    /// After the checkpoint (if any): throw the live state away and carry on from the last checkpoint's
    /// rows plus the log after it, as a restarted node does.
    restart_after: bool,
}

fn create_account() -> impl Strategy<Value = CreateAccount> {
    (
        0..=ACCOUNT_IDS_MAX + 1,
        prop_oneof![8 => Just(0u32), 3 => Just(ACCOUNT_FLAG_EXTERNAL), 1 => Just(2u32)],
        prop_oneof![10 => prop::sample::select(LEDGERS.to_vec()), 1 => Just(0u32)],
        0..2u128,
    )
        .prop_map(|(id, flags, ledger, user_data)| CreateAccount { id, ledger, flags, user_data })
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => 1..1_000u64,
        2 => Just(0u64),
        2 => (i64::MAX as u64 / 2)..=(i64::MAX as u64),
        1 => (i64::MAX as u64 + 1)..=u64::MAX,
    ]
}

/// A transfer id as (lag behind the clock in ms, entropy), resolved against the clock when run: small
/// entropy makes retries and conflicts common, lag makes some ids older than the window, and a
/// negative lag around `TRANSFER_ID_FUTURE_MS_MAX` makes some ids too far ahead of the clock.
fn transfer() -> impl Strategy<Value = (i64, u128, Transfer)> {
    let ahead = TRANSFER_ID_FUTURE_MS_MAX as i64;
    (
        prop_oneof![6 => 0..20i64, 1 => 20..200i64, 1 => -(ahead + 60)..-(ahead - 60)],
        prop_oneof![20 => 1..6u128, 1 => Just(0u128)],
        1..=ACCOUNT_IDS_MAX + 1,
        1..=ACCOUNT_IDS_MAX + 1,
        amount(),
        prop_oneof![10 => prop::sample::select(LEDGERS.to_vec()), 1 => Just(1u32)],
        prop_oneof![20 => Just(0u32), 1 => Just(1u32)],
    )
        .prop_map(|(lag_ms, entropy, debit, credit, amount, ledger, flags)| {
            let transfer = Transfer {
                id: 0,
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                ledger,
                flags,
                user_data: 0,
            };
            (lag_ms, entropy, transfer)
        })
}

fn step() -> impl Strategy<Value = Step> {
    let command = prop_oneof![
        1 => prop::collection::vec(create_account(), 1..8).prop_map(Command::Create),
        4 => prop::collection::vec(transfer(), 1..24).prop_map(|items| Command::Transfer(
            // Lag and entropy are folded into the id later; stash them in the id field for now.
            items.into_iter().map(|(lag_ms, entropy, t)| Transfer { id: ((lag_ms as u64 as u128) << 64) | entropy, ..t }).collect()
        )),
        1 => prop::collection::vec(any::<prop::sample::Index>(), 1..8).prop_map(Command::Retry),
    ];
    (prop_oneof![8 => 0..30i64, 1 => -50..0i64], command, prop::bool::weighted(0.2), prop::bool::weighted(0.1))
        .prop_map(|(clock_step_ms, command, checkpoint_after, restart_after)| Step {
            clock_step_ms,
            command,
            checkpoint_after,
            restart_after,
        })
}

/// Independent model: balances from the results the state machine reported, and every decided id.
#[derive(Default)]
struct Model {
    balances: HashMap<u64, i64>,
    external: HashMap<u64, bool>,
    decided: HashMap<TransferId, (Transfer, ResultCode, u64)>,
    replayed: usize,
}

struct Run {
    state: PartitionState,
    log: Vec<Vec<u8>>,
    /// Rows accumulated from every drain, like the store, and how many log batches they cover.
    checkpoint: PartitionRows,
    checkpoint_log_len: usize,
}

fn config(window_ms: u64, ids_max: usize) -> PartitionConfig {
    PartitionConfig {
        partition: 0,
        partitions: 1,
        idempotency_window_ms: window_ms,
        idempotency_ids_max: ids_max,
        id_hash_key: 0x1d,
    }
}

/// Accumulates a drain like the store does. The ids that left memory live in runs, which a store-less
/// test keeps by taking them from the live table's image (the runs are immutable and shared).
fn drain_into(state: &mut PartitionState, rows: &mut PartitionRows) {
    let mut accounts: Vec<Account> = Vec::new();
    let mut inserted: Vec<IdEntry> = Vec::new();
    let mark = state.drain_dirty(|row| match row {
        DirtyRow::Account(account) => accounts.push(*account),
        DirtyRow::IdInserted(entry) => inserted.push(*entry),
    });
    for entry in &inserted {
        assert!(rows.ids.hot.iter().all(|e| e.id != entry.id), "an inserted id is new to the store");
    }
    // Like the store's chunks: entries inserted and moved to runs between two drains were never
    // drained; the in-memory rows then start afresh at the first drained arrival.
    let rows_end = rows.ids.head_arrival + rows.ids.hot.len() as u64;
    if mark.ids.first_drained > rows_end {
        assert_eq!(mark.ids.first_drained, mark.ids.head_arrival, "a gap only ever lies below the head");
        rows.ids.hot.clear();
        rows.ids.head_arrival = mark.ids.first_drained;
    } else {
        assert_eq!(mark.ids.first_drained, rows_end, "drains continue where the last one ended");
    }
    rows.ids.hot.extend(inserted);
    let head = mark.ids.head_arrival;
    let drop = (head.saturating_sub(rows.ids.head_arrival) as usize).min(rows.ids.hot.len());
    rows.ids.hot.drain(..drop);
    rows.ids.head_arrival = head;
    assert_eq!(head + rows.ids.hot.len() as u64, mark.ids.next_arrival, "the chunks hold every in-memory id");
    rows.ids.cold = state.export_rows().ids.cold;
    for account in accounts {
        rows.accounts.retain(|a| a.id != account.id);
        rows.accounts.push(account);
    }
    rows.last_seq = mark.last_seq;
    rows.last_timestamp_ns = mark.last_timestamp_ns;
}

fn check_invariants(state: &PartitionState) {
    for (ledger, sum) in state.ledger_sums() {
        assert_eq!(sum, 0, "ledger {ledger} does not sum to zero");
    }
    state.for_each_account(|a| assert!(a.is_external() || a.balance >= 0, "ordinary account {} is negative", a.id));
}

/// `at_ns`: the timestamp the batch's events carry from (the first event's; later ones are at most a
/// few ns later).
fn check_transfer_results(
    model: &mut Model,
    state: &PartitionState,
    transfers: &[Transfer],
    results: &[ItemResult],
    at_ns: u64,
) {
    assert_eq!(results.len(), transfers.len());
    let window_ms = state.config().idempotency_window_ms;
    for (index, (t, r)) in transfers.iter().zip(results).enumerate() {
        assert_eq!(r.index as usize, index);
        assert!(r.seq >= 1 && r.seq <= state.last_seq());
        let id_ms = net::types::transfer_id_timestamp_ms(t.id);
        // Events of one batch are 1 ns apart at most a few thousand times: within the same ms or the next.
        let surely_inside = id_ms + window_ms >= at_ns / MS + 1;
        if r.code == ResultCode::IdExpired {
            assert!(!surely_inside, "id {:#x} refused for age inside the window", t.id);
        }
        if t.id != 0 && t.flags == 0 && surely_inside {
            if let Some((original, code, seq)) = model.decided.get(&t.id) {
                if (Transfer { id: t.id, ..*original }) == *t {
                    assert!(r.is_replayed(), "a retry inside the window must replay, got {r:?}");
                    assert_eq!((r.code, r.seq), (*code, *seq), "a retry answers the original outcome");
                } else {
                    assert_eq!(r.code, ResultCode::ExistsWithDifferentFields, "a conflict inside the window");
                }
            }
        }
        if r.is_replayed() {
            let (original, code, seq) = model.decided.get(&t.id).expect("a replayed id was decided before");
            assert_eq!(Transfer { id: t.id, ..*original }, *t, "replayed only for identical fields");
            assert_eq!((r.code, r.seq), (*code, *seq), "a retry answers the original outcome");
            model.replayed += 1;
            continue;
        }
        match r.code {
            ResultCode::InvalidFlags | ResultCode::ReservedId | ResultCode::IdExpired | ResultCode::IdFromFuture => {}
            ResultCode::ExistsWithDifferentFields => {
                let (original, _, _) = model.decided.get(&t.id).expect("conflicts with a decided id");
                assert_ne!(Transfer { id: t.id, ..*original }, *t);
            }
            code => {
                // The safety property of the id table: an id is decided at most once, ever.
                assert!(model.decided.insert(t.id, (*t, code, r.seq)).is_none(), "id {:#x} decided twice", t.id);
                if code == ResultCode::Ok {
                    let amount = t.amount as i64;
                    *model.balances.get_mut(&t.debit_account_id).expect("debit exists") -= amount;
                    *model.balances.get_mut(&t.credit_account_id).expect("credit exists") += amount;
                    assert!(model.external[&t.debit_account_id] || model.balances[&t.debit_account_id] >= 0);
                }
            }
        }
    }
}

fn run(steps: &[Step], window_ms: u64, ids_max: usize) -> (Run, Model) {
    let mut run = Run {
        state: PartitionState::new(config(window_ms, ids_max)),
        log: Vec::new(),
        checkpoint: PartitionRows::default(),
        checkpoint_log_len: 0,
    };
    let mut model = Model::default();
    let mut events = EventBuffer::new();
    let mut results = Vec::new();
    let mut now_ns: u64 = 100_000 * MS;
    let mut sent: Vec<Transfer> = Vec::new();
    for step in steps {
        now_ns = now_ns.saturating_add_signed(step.clock_step_ms * MS as i64);
        results.clear();
        match &step.command {
            Command::Create(accounts) => {
                run.state.execute_create_accounts(now_ns, accounts, &mut events, &mut results);
                for (a, r) in accounts.iter().zip(&results) {
                    if r.code == ResultCode::Ok {
                        assert!(model.balances.insert(a.id, 0).is_none(), "an account is created once");
                        model.external.insert(a.id, a.is_external());
                    }
                }
            }
            Command::Transfer(raw) => {
                let now_ms = now_ns / MS;
                let transfers: Vec<Transfer> = raw
                    .iter()
                    .map(|t| {
                        let (lag_ms, entropy) = ((t.id >> 64) as u64 as i64, t.id & u64::MAX as u128);
                        let id_ms = now_ms.saturating_add_signed(-lag_ms);
                        let id = if entropy == 0 { 0 } else { transfer_id_from_parts(id_ms, entropy) };
                        Transfer { id, ..*t }
                    })
                    .collect();
                let at_ns = now_ns.max(run.state.last_timestamp_ns() + 1);
                run.state.execute_transfers(now_ns, &transfers, &mut events, &mut results);
                check_transfer_results(&mut model, &run.state, &transfers, &results, at_ns);
                sent.extend(transfers);
            }
            Command::Retry(picks) => {
                if sent.is_empty() {
                    continue;
                }
                let transfers: Vec<Transfer> = picks.iter().map(|pick| sent[pick.index(sent.len())]).collect();
                let at_ns = now_ns.max(run.state.last_timestamp_ns() + 1);
                run.state.execute_transfers(now_ns, &transfers, &mut events, &mut results);
                check_transfer_results(&mut model, &run.state, &transfers, &results, at_ns);
            }
        }
        if !events.is_empty() {
            run.log.push(events.finish().to_vec());
        }
        events.clear();
        check_invariants(&run.state);
        for (id, balance) in &model.balances {
            assert_eq!(run.state.account(*id).map(|a| a.balance), Some(*balance), "account {id} vs the model");
        }
        if step.checkpoint_after {
            drain_into(&mut run.state, &mut run.checkpoint);
            run.checkpoint_log_len = run.log.len();
        }
        if step.restart_after {
            let config = run.state.config();
            let mut restarted = PartitionState::restore_rows(config, run.checkpoint.clone()).expect("consistent rows");
            for bytes in &run.log[run.checkpoint_log_len..] {
                restarted.apply_batch(&EventBatchView::new(bytes).expect("valid")).expect("applies after restore");
            }
            assert_eq!(restarted.digest(), run.state.digest(), "a restart resumes the same state");
            // The restarted state has nothing dirty: the checkpoint rows are its image, so re-drain
            // from it as the store would after the restart's replay.
            drain_into(&mut restarted, &mut run.checkpoint);
            run.checkpoint_log_len = run.log.len();
            run.state = restarted;
        }
    }
    (run, model)
}

fn sorted_accounts(state: &PartitionState) -> Vec<Account> {
    let mut accounts = Vec::new();
    state.for_each_account(|a| accounts.push(*a));
    accounts.sort_unstable_by_key(|a| a.id);
    accounts
}

fn replay(config: PartitionConfig, log: &[Vec<u8>]) -> PartitionState {
    let mut replica = PartitionState::new(config);
    for bytes in log {
        let view = EventBatchView::new(bytes).expect("the leader encodes valid batches");
        replica.apply_batch(&view).expect("batches apply in order");
        check_invariants(&replica);
    }
    replica
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_replay_restore_and_replicas_agree(
        steps in prop::collection::vec(step(), 1..40),
        window_ms in prop_oneof![Just(20u64), Just(200u64), Just(60_000u64)],
        ids_max in prop_oneof![Just(4usize), Just(16usize), Just(10_000usize)],
    ) {
        let (mut run, _model) = run(&steps, window_ms, ids_max);
        let config = run.state.config();
        let live_digest = run.state.digest();
        let live_accounts = sorted_accounts(&run.state);

        // Replay from the log gives the live state; so does a second, independent replica.
        let replica = replay(config, &run.log);
        prop_assert_eq!(replica.digest(), live_digest);
        prop_assert_eq!(sorted_accounts(&replica), live_accounts.clone());
        prop_assert_eq!(replica.last_timestamp_ns(), run.state.last_timestamp_ns());
        let mut second = replay(config, &run.log);
        prop_assert_eq!(second.digest(), replica.digest());

        // Applying the whole log again changes nothing (already-applied batches are skipped).
        for bytes in &run.log {
            second.apply_batch(&EventBatchView::new(bytes).expect("valid")).expect("skipped");
        }
        prop_assert_eq!(second.digest(), live_digest);

        // Restore from the last checkpoint's accumulated rows, then apply the batches after it.
        let mut restored = PartitionState::restore_rows(config, run.checkpoint.clone()).expect("consistent rows");
        for bytes in &run.log[run.checkpoint_log_len..] {
            restored.apply_batch(&EventBatchView::new(bytes).expect("valid")).expect("applies after restore");
        }
        prop_assert_eq!(restored.digest(), live_digest);
        prop_assert_eq!(sorted_accounts(&restored), live_accounts);

        // A final drain brings the accumulated rows to exactly the live image.
        drain_into(&mut run.state, &mut run.checkpoint);
        let from_rows = PartitionState::restore_rows(config, run.checkpoint.clone()).expect("consistent rows");
        prop_assert_eq!(from_rows.digest(), live_digest);
    }

    /// `walletctl state`'s replay: stopping at any seq, inside a batch or at its end, or at any time,
    /// leaves each account with the balance its last event up to there says, and nothing created after.
    #[test]
    fn a_replay_stopped_at_any_seq_or_time_is_the_state_right_after_it(
        steps in prop::collection::vec(step(), 1..30),
        cut in any::<prop::sample::Index>(),
        by_time in any::<bool>(),
    ) {
        let (run, _model) = run(&steps, 60_000, 10_000);
        let events: Vec<Event> = run
            .log
            .iter()
            .flat_map(|bytes| EventBatchView::new(bytes).expect("valid").iter().collect::<Vec<_>>())
            .collect();
        prop_assume!(!events.is_empty());
        let last = events[cut.index(events.len())];
        let until = if by_time {
            Until { seq_max: u64::MAX, timestamp_ns_max: last.timestamp_ns }
        } else {
            Until { seq_max: last.seq, timestamp_ns_max: u64::MAX }
        };
        let mut past = PartitionState::new(run.state.config());
        let mut batches_fully_applied = 0;
        for bytes in &run.log {
            if !until.apply(&mut past, &EventBatchView::new(bytes).expect("valid")).expect("applies") {
                break;
            }
            batches_fully_applied += 1;
        }
        check_invariants(&past);
        // What the events up to the cut say: each account's balance after its last change.
        let mut expected: HashMap<u64, i64> = HashMap::new();
        let mut last_included = 0;
        for event in events.iter().filter(|e| until.includes(e)) {
            last_included = event.seq;
            match event.body {
                EventBody::AccountCreated { account } => { expected.insert(account.id, 0); }
                EventBody::TransferPosted { transfer, debit_balance_after, credit_balance_after, .. } => {
                    expected.insert(transfer.debit_account_id, debit_balance_after);
                    expected.insert(transfer.credit_account_id, credit_balance_after);
                }
                _ => {}
            }
        }
        prop_assert_eq!(past.last_seq(), last_included);
        let mut got: HashMap<u64, i64> = HashMap::new();
        past.for_each_account(|a| { got.insert(a.id, a.balance); });
        prop_assert_eq!(got, expected);
        // At a batch boundary it is exactly the replay of the batches before it.
        if past.last_seq() == replay(run.state.config(), &run.log[..batches_fully_applied]).last_seq() {
            prop_assert_eq!(past.digest(), replay(run.state.config(), &run.log[..batches_fully_applied]).digest());
        }
    }

    #[test]
    fn batches_round_trip_and_mutations_never_panic(
        steps in prop::collection::vec(step(), 1..6),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let (run, _) = run(&steps, 1_000, 100);
        for bytes in &run.log {
            let view = EventBatchView::new(bytes).expect("valid");
            let mut reencoded = EventBuffer::new();
            reencoded.begin(view.partition(), view.first_seq());
            view.iter().for_each(|e| reencoded.push(&e));
            prop_assert_eq!(reencoded.finish(), &bytes[..]);

            let mut garbled = bytes.clone();
            for (index, value) in &mutations {
                let at = index.index(garbled.len());
                garbled[at] ^= value | 1;
            }
            if let Ok(view) = EventBatchView::new(&garbled) {
                // Whatever still decodes is fully usable, with no panic.
                prop_assert_eq!(view.iter().count(), view.event_count() as usize);
            }
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(EventBatchView::new(truncated).is_err(), "a truncated batch never decodes");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = EventBatchView::new(&bytes);
        let mut framed = bytes.clone();
        if framed.len() >= EVENT_BATCH_HEADER_BYTES {
            // Make the header plausible so the event checks are reached too.
            framed[4..8].copy_from_slice(&[1, 0, 0, 0]);
            let count = ((framed.len() - EVENT_BATCH_HEADER_BYTES) / 120) as u32;
            framed.truncate(EVENT_BATCH_HEADER_BYTES + count as usize * 120);
            framed[8..16].copy_from_slice(&[&count.to_le_bytes()[..], &[0; 4]].concat());
            framed[24..32].fill(0);
            if let Ok(view) = EventBatchView::new(&framed) {
                prop_assert_eq!(view.iter().count(), count as usize);
            }
        }
    }
}

/// Every kind and every code a kind allows survives an encode/decode round trip.
#[test]
fn every_event_shape_round_trips() {
    let transfer = Transfer {
        id: u128::MAX,
        debit_account_id: u64::MAX - 1,
        credit_account_id: 1,
        amount: u64::MAX,
        ledger: u32::MAX,
        flags: u32::MAX,
        user_data: u128::MAX - 7,
    };
    let account = CreateAccount { id: 3, ledger: 7, flags: u32::MAX, user_data: u128::MAX };
    let mut events = Vec::new();
    let mut seq = 1_000;
    let mut push = |body: EventBody| {
        seq += 1;
        events.push(Event { seq, timestamp_ns: seq * 10, body });
    };
    push(EventBody::AccountCreated { account });
    push(EventBody::TransferPosted {
        transfer,
        debit_balance_after: i64::MIN,
        credit_balance_after: i64::MAX,
        debit_prev_seq: 1,
        credit_prev_seq: 1_000,
    });
    for code in ResultCode::ALL {
        if engine::event::code_valid_for_kind(EventKind::AccountRejected, code) {
            push(EventBody::AccountRejected { account, code });
        }
        if engine::event::code_valid_for_kind(EventKind::TransferRejected, code) {
            push(EventBody::TransferRejected { transfer, code });
        }
    }
    let mut buffer = EventBuffer::new();
    buffer.begin(u32::MAX, 1_001);
    events.iter().for_each(|e| buffer.push(e));
    let view = EventBatchView::new(buffer.finish()).expect("valid");
    assert_eq!(view.partition(), u32::MAX);
    assert_eq!(view.iter().collect::<Vec<_>>(), events);
    assert_eq!(events.len(), 2 + 5 + 13, "every rejection code of both kinds is covered");
}

/// The generators above must reach every outcome, or the properties prove less than they claim.
#[test]
fn generated_commands_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut transfer_codes: HashMap<ResultCode, usize> = HashMap::new();
    let mut account_codes: HashMap<ResultCode, usize> = HashMap::new();
    let (mut replayed, mut runs_sealed) = (0, 0);
    for case in 0..200 {
        let steps = prop::collection::vec(step(), 20..40).new_tree(&mut runner).expect("generates").current();
        let (window_ms, ids_max) = [(20, 10_000), (60_000, 4), (200, 16)][case % 3];
        let (run, model) = run(&steps, window_ms, ids_max);
        replayed += model.replayed;
        runs_sealed += !run.state.ids().cold_runs().is_empty() as usize;
        for bytes in &run.log {
            for event in EventBatchView::new(bytes).expect("valid").iter() {
                let tally = match event.kind() {
                    EventKind::AccountCreated | EventKind::AccountRejected => &mut account_codes,
                    EventKind::TransferPosted | EventKind::TransferRejected => &mut transfer_codes,
                };
                *tally.entry(event.code()).or_insert(0) += 1;
            }
        }
    }
    for code in ResultCode::ALL {
        let (is_transfer, is_account) = (
            engine::event::code_valid_for_kind(EventKind::TransferRejected, code) || code == ResultCode::Ok,
            engine::event::code_valid_for_kind(EventKind::AccountRejected, code) || code == ResultCode::Ok,
        );
        if is_transfer && code != ResultCode::CrossPartitionUnsupported {
            assert!(
                transfer_codes.get(&code).copied().unwrap_or(0) > 0,
                "no transfer ended {code:?}: {transfer_codes:?}"
            );
        }
        if is_account {
            assert!(account_codes.get(&code).copied().unwrap_or(0) > 0, "no account ended {code:?}: {account_codes:?}");
        }
    }
    assert!(runs_sealed > 50, "only {runs_sealed} runs moved ids out of memory");
    assert!(replayed > 100, "only {replayed} retries were answered from the id table");
}
