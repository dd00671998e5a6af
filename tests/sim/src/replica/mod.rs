//! The whole cluster of replica cores in one thread: N nodes (3 or 5) each running the engine's real
//! sans-IO replica core (`engine::replica::core`, with the real `PartitionState`, Raft groups,
//! forwarding, reads, rejoin and rebalancing) over simulated disks, a faulty network that carries
//! every item through the real node-to-node codec, and drifting clocks, all from one seed. The
//! auditor (`auditor`) plays the clients and checks every answer and every applied entry.
//!
//! Faults: dropped, delayed, duplicated and reordered peer items; network partitions; crashes that
//! lose every write not yet reported durable (the oldest may leave a torn prefix of its entries);
//! restarts, some after the node lost its whole data directory (started with `rejoin`); clock drift
//! (each node's clock runs at its own rate) and wall clocks that step back by up to 2 s on restart;
//! leadership transfers to random replicas. A crashed node's peers are told its link went down (a
//! killed process's sockets close), and a forwarded request for a node that is down is refused at
//! once, as the real transport does; a cut link loses items silently, like an isolated host.
//!
//! After faults stop and everything is answered, each seed runs one failover episode: transfers of
//! one partition go to its followers (which forward them to the leader), then the leader crashes, is
//! cut off, or hands leadership to another replica, while more transfers arrive. Every transfer a
//! surviving replica took must be answered with its outcome (an error answer is a failure) within
//! `FAILOVER_ANSWER_MS_MAX` of the new leader's election (or of its sending, if later), in simulated
//! time; only a request whose client deadline passed before that may be answered with the deadline's
//! error instead (two survivors can split their votes for longer than a client waits).

pub mod auditor;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use engine::cluster_config::{ClusterConfig, ReplicationConfig};
use engine::partition::PartitionConfig;
use engine::replica::core::{
    initial_conf_state, Command, Compaction, CoreOptions, GroupInit, Handles, Now, Output, Persist, PlantedBugs,
    ReplicaCore, Restore,
};
use engine::replica::wire::{decode_items, encode_items, PeerItem};
use net::types::ACCOUNT_FLAG_EXTERNAL;

use crate::checker::Violation;
use crate::rng::Rng;
use auditor::{AuditStats, Auditor, Op, WindowView};
use store::SimStore;

/// The simulator's answer handles: the auditor's request numbers.
pub struct SimHandles;

impl Handles for SimHandles {
    type Items = u64;
    type Lookup = u64;
    type Transfers = u64;
}

type Core = ReplicaCore<SimStore, SimHandles>;

/// Wall clock of every node at simulated time 0 (ms since the epoch, late 2023).
const WALL_EPOCH_MS: u64 = 1_700_000_000_000;
/// After faults stop, Raft's timing assumptions hold again: small delays, prompt disks.
const LIVENESS_DELAY_MS_MAX: u64 = 3;
const LIVENESS_WRITE_COMPLETE_PER_MILLE_MIN: u32 = 600;
const CLOCK_STEP_BACK_MS_MAX: u64 = 2_000;
/// A new node's wall clock starts this far past `WALL_EPOCH_MS`, plus up to `WALL_SPREAD_MS_MAX`: far
/// enough that step-backs on restart never take it below the epoch.
const WALL_START_MS: u64 = CLOCK_STEP_BACK_MS_MAX * 8;
const WALL_SPREAD_MS_MAX: u64 = 2_000;
/// Share of seeds whose nodes start with the clients' clock (no spread) and run a short window, so
/// that late retries of early ids meet `id_expired` within a run of seconds.
const TIGHT_CLOCKS_PER_MILLE: u32 = 300;
/// The clients' wall clock at simulated time 0: the nodes' earliest start, so a node's clock runs up to
/// `WALL_SPREAD_MS_MAX` (plus drift) ahead of the clients', or behind them after it steps back. Transfer
/// ids carry this clock, and the window is judged against the nodes' clocks (event timestamps).
pub(crate) const CLIENT_WALL_EPOCH_MS: u64 = WALL_EPOCH_MS + WALL_START_MS;
const IDEMPOTENCY_IDS_MAX: usize = 1_024;
/// The failover episode: transfers for the partition start this long before the fault, go on this
/// long after it (one every `EPISODE_LOAD_EVERY_MS`), and a new leader must be elected within
/// `EPISODE_ELECTION_MS_MAX` of the fault.
const EPISODE_LEAD_IN_MS: u64 = 20;
const EPISODE_LOAD_MS: u64 = 120;
const EPISODE_LOAD_EVERY_MS: u64 = 3;
const EPISODE_ELECTION_MS_MAX: u64 = 3_000;
/// Every transfer a surviving replica of the partition took during the episode is answered within
/// this many simulated ms of the new leader's election (or of its sending, if later): a heartbeat
/// (20 ms) to learn the leader, then a forward, a commit and an apply. Without the re-route, a
/// request forwarded to a dead or cut-off leader waits out `forward_timeout_ms` (600 ms here).
const FAILOVER_ANSWER_MS_MAX: u64 = 150;

/// The fault of a seed's failover episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failover {
    Crash,
    Isolate,
    Transfer,
}

/// Fault and workload knobs; probabilities are per mille per simulated millisecond.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub partitions: u32,
    /// Length of the faulty phase, in simulated milliseconds.
    pub steps_ms: u64,
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    pub delay_ms_max: u64,
    pub partition_per_mille: u32,
    pub heal_per_mille: u32,
    pub crash_per_mille: u32,
    pub restart_per_mille: u32,
    /// A restart comes back with an empty data directory and `rejoin` (one node at a time).
    pub wipe_per_mille: u32,
    pub torn_write_per_mille: u32,
    pub write_complete_per_mille: u32,
    /// Each node's clock runs at 1 ± this many parts per million.
    pub clock_drift_ppm_max: u64,
    /// A new node's wall clock starts up to this far ahead of the clients' (at most `WALL_SPREAD_MS_MAX`).
    pub clock_spread_ms_max: u64,
    /// A restarted node's wall clock steps back by up to `CLOCK_STEP_BACK_MS_MAX`.
    pub clock_reset_per_mille: u32,
    pub transfer_leader_per_mille: u32,
    pub client_per_mille: u32,
    pub snapshot_interval_entries: u64,
    /// The partitions' transfer-id window, judged in time against the nodes' clocks: longer than the
    /// clocks' disagreement plus a marker's delivery (so honest first attempts are never refused for
    /// age), shorter than a run with its liveness phase (so late retries of early ids meet `id_expired`).
    pub idempotency_window_ms: u64,
    /// After faults stop, everything must be answered and every replica agree within this bound.
    pub liveness_ms_max: u64,
    pub planted: PlantedBugs,
}

impl Options {
    /// Swarm testing: each seed draws its own fault mix.
    pub fn for_seed(seed: u64, nodes: usize) -> Options {
        let mut rng = Rng::new(seed ^ 0x0C0E_5EED_FA17);
        let slow_network = rng.chance(200);
        let mut options = Options {
            nodes,
            partitions: if nodes == 3 { 2 } else { 3 },
            steps_ms: 1_300 + rng.below(1_000),
            drop_per_mille: rng.below(150) as u32,
            duplicate_per_mille: rng.below(50) as u32,
            delay_ms_max: 1 + rng.below(if slow_network { 60 } else { 8 }),
            partition_per_mille: rng.below(6) as u32,
            heal_per_mille: 2 + rng.below(20) as u32,
            crash_per_mille: rng.below(4) as u32,
            restart_per_mille: 5 + rng.below(40) as u32,
            wipe_per_mille: if rng.chance(400) { 200 + rng.below(500) as u32 } else { 0 },
            torn_write_per_mille: 500,
            write_complete_per_mille: 200 + rng.below(800) as u32,
            clock_drift_ppm_max: rng.below(50_000),
            clock_spread_ms_max: WALL_SPREAD_MS_MAX,
            clock_reset_per_mille: rng.below(500) as u32,
            transfer_leader_per_mille: rng.below(3) as u32,
            client_per_mille: 100 + rng.below(500) as u32,
            snapshot_interval_entries: 8 + rng.below(56),
            idempotency_window_ms: 4_000 + rng.below(3_000),
            liveness_ms_max: 6_000,
            planted: PlantedBugs::default(),
        };
        // Drawn last so the other draws of a seed stay as they were.
        if rng.chance(TIGHT_CLOCKS_PER_MILLE) {
            options.clock_spread_ms_max = 0;
            options.clock_drift_ppm_max = options.clock_drift_ppm_max.min(20_000);
            options.idempotency_window_ms = 1_500 + rng.below(1_000);
        }
        assert!(
            options.idempotency_window_ms > options.clock_spread_ms_max + 1_000,
            "the window must outlast the clocks' disagreement, or honest first attempts expire"
        );
        options
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps_ms: u64,
    pub crashes: u64,
    pub wipes: u64,
    pub restarts: u64,
    pub items_sent: u64,
    pub leader_changes: u64,
    pub failovers: u64,
    pub snapshots_installed: u64,
    /// Snapshot chunks sent, chunks the network lost, and snapshots assembled from their chunks.
    pub snapshot_chunks: u64,
    pub snapshot_chunks_lost: u64,
    pub snapshots_assembled: u64,
    /// Received snapshots whose state was rebuilt off the round (then handed to Raft), and those of
    /// them rebuilt while their group's compaction was still out (the core holds the install back).
    pub restores: u64,
    pub restores_beside_a_compaction: u64,
    /// Compaction images made durable while the node ran, and ones a crash left written.
    pub compactions: u64,
    pub compactions_at_crash: u64,
    pub transfers_asked: u64,
    pub log_lines: u64,
    pub audit: AuditStats,
}

struct Node {
    id: u64,
    core: Option<Core>,
    /// The durable stores while the node is down.
    disk: Option<Vec<(u32, SimStore)>>,
    /// Writes handed out and not yet durable, oldest first.
    writes: VecDeque<Persist>,
    /// Compactions handed out and not yet durable (the shell's snapshot thread), oldest first.
    compactions: VecDeque<Compaction>,
    /// Received snapshots whose state the snapshot thread rebuilds (memory only: a crash loses them).
    restores: VecDeque<Restore>,
    /// Clock rate in parts per million of simulated time.
    rate_ppm: u64,
    mono_offset_ms: u64,
    wall_offset_ms: u64,
    /// How far this node's wall clock was stepped back, in total.
    wall_back_ms: u64,
    /// The wall clock's nanoseconds within its millisecond (drawn at each boot: real clocks have
    /// nanosecond resolution, so two boots never start forwarded-request ids at the same value).
    wall_sub_ms_ns: u64,
    next_tick_ms: u64,
    boots: u64,
    /// Per partition, the applied index last checked (digests are compared when it moves).
    checked_applied: BTreeMap<u32, u64>,
    leader_of: BTreeSet<u32>,
}

impl Node {
    fn mono_ms(&self, now_ms: u64) -> u64 {
        self.mono_offset_ms + now_ms * self.rate_ppm / 1_000_000
    }

    fn now(&self, now_ms: u64) -> Now {
        let mono_ms = self.mono_ms(now_ms);
        let elapsed_ms = mono_ms - self.mono_offset_ms;
        let wall_ms = (WALL_EPOCH_MS + self.wall_offset_ms + elapsed_ms).saturating_sub(self.wall_back_ms);
        Now { mono_ms, wall_ns: wall_ms * 1_000_000 + self.wall_sub_ms_ns }
    }
}

struct InFlight {
    deliver_at_ms: u64,
    from: u64,
    to: u64,
    /// The item as the real node-to-node codec encodes it.
    bytes: Vec<u8>,
    /// A chunk of a snapshot (counted when the network loses it).
    chunk: bool,
}

pub struct Sim {
    options: Options,
    seed: u64,
    rng: Rng,
    now_ms: u64,
    cluster: ClusterConfig,
    nodes: Vec<Node>,
    network: Vec<InFlight>,
    /// Pairs (a, b), a < b, that cannot talk.
    cut: BTreeSet<(u64, u64)>,
    faults: bool,
    auditor: Auditor,
    /// (partition, applied index) -> digest of the committed state there.
    digests: BTreeMap<(u32, u64), u128>,
    stats: Stats,
    verbose: bool,
}

impl Sim {
    pub fn new(seed: u64, options: Options) -> Sim {
        let mut rng = Rng::new(seed);
        let mut cluster = ClusterConfig::local(0x5151, options.nodes, options.partitions, 3, 7401, 7501);
        cluster.idempotency_window_ms = options.idempotency_window_ms;
        // The smallest bound a node accepts: count evictions happen too.
        cluster.idempotency_ids_max = IDEMPOTENCY_IDS_MAX;
        cluster.replication = ReplicationConfig {
            tick_interval_ms: 10,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            snapshot_interval_entries: options.snapshot_interval_entries,
            uncommitted_entries_max: 64,
            forward_timeout_ms: 600,
            read_wait_timeout_ms: 400,
            // The simulator's images are 3-35 KB: chunks of 2 KiB, four in flight, make most snapshots
            // travel as several chunks, some of them lost, duplicated and reordered, and still reach
            // a follower within a few round trips. (With 256-byte chunks and three in flight, a new
            // leader whose quorum needed a 33 KB snapshot first took 44 round trips to commit, and
            // seed 300724's failover episode missed its bound.)
            snapshot_chunk_bytes: 2048,
            snapshot_chunks_in_flight: 4,
            ..ReplicationConfig::default()
        };
        let nodes = (1..=options.nodes as u64)
            .map(|id| {
                let drift = options.clock_drift_ppm_max;
                let rate_ppm = 1_000_000 - drift + rng.below(2 * drift + 1);
                Node {
                    id,
                    core: None,
                    disk: Some(fresh_disk(&cluster, id)),
                    writes: VecDeque::new(),
                    compactions: VecDeque::new(),
                    restores: VecDeque::new(),
                    rate_ppm,
                    mono_offset_ms: rng.below(1_000_000),
                    wall_offset_ms: WALL_START_MS + rng.below(options.clock_spread_ms_max + 1),
                    wall_back_ms: 0,
                    wall_sub_ms_ns: rng.below(1_000_000),
                    next_tick_ms: 0,
                    boots: 0,
                    checked_applied: BTreeMap::new(),
                    leader_of: BTreeSet::new(),
                }
            })
            .collect();
        let verbose = std::env::var_os("REPLICA_SIM_VERBOSE").is_some();
        let auditor = Auditor::new(
            options.partitions,
            WindowView {
                idempotency_window_ms: options.idempotency_window_ms,
                clock_spread_ms_max: options.clock_spread_ms_max,
                clock_drift_ppm_max: options.clock_drift_ppm_max,
            },
        );
        let mut sim = Sim {
            options,
            seed,
            rng,
            now_ms: 0,
            cluster,
            nodes,
            network: Vec::new(),
            cut: BTreeSet::new(),
            faults: true,
            auditor,
            digests: BTreeMap::new(),
            stats: Stats::default(),
            verbose,
        };
        for index in 0..sim.nodes.len() {
            sim.boot(index, false).expect("a new node opens");
        }
        sim
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let planted = if self.options.planted == PlantedBugs::default() {
            String::new()
        } else {
            format!(" REPLICA_SIM_PLANTED='{:?}'", self.options.planted)
        };
        format!(
            "REPLICA_SIM_SEED={} REPLICA_SIM_NODES={}{planted} cargo test --release -p raft-sim --test replica_seeds -- replay_seed --nocapture",
            self.seed, self.options.nodes
        )
    }

    /// Runs the faulty phase, then the liveness phase. Err carries the violation and the replay command.
    pub fn run(mut self) -> Result<Stats, String> {
        // An assertion inside the core is a violation like any other: report it with the replay command.
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_phases())) {
            Ok(outcome) => outcome,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into());
                Err(format!("panic: {message}"))
            }
        };
        match outcome {
            Ok(()) => {
                self.stats.steps_ms = self.now_ms;
                self.stats.audit = self.auditor.stats.clone();
                Ok(self.stats)
            }
            Err(violation) => Err(format!(
                "replica sim seed {} ({} nodes) at {} ms: {violation}\nreplay: {}",
                self.seed,
                self.options.nodes,
                self.now_ms,
                self.replay_command()
            )),
        }
    }

    fn run_phases(&mut self) -> Result<(), Violation> {
        while self.now_ms < self.options.steps_ms {
            self.step()?;
        }
        self.heal_all()?;
        self.auditor.send_markers();
        self.await_quiet("faults stopped")?;
        self.failover_episode()?;
        self.await_quiet("the failover episode ended")
    }

    /// Runs until every request is answered, the markers are acknowledged and the replicas agree.
    fn await_quiet(&mut self, since: &str) -> Result<(), Violation> {
        let start = self.now_ms;
        while self.now_ms - start < self.options.liveness_ms_max {
            self.step()?;
            if self.auditor.quiet() && self.auditor.markers_acked() && self.converged() {
                return Ok(());
            }
        }
        Err(format!(
            "liveness: {} ms after {since}, {} requests still unanswered, markers acked: {}, replicas \
             converged: {}\n  auditor: {}\n{}",
            self.options.liveness_ms_max,
            self.auditor.outstanding(),
            self.auditor.markers_acked(),
            self.converged(),
            self.auditor.describe(),
            self.describe_nodes()
        ))
    }

    /// The live node other than `except` that leads `partition` in the highest term, with that term.
    fn leader_of(&self, partition: u32, except: Option<u64>) -> Option<(u64, u64)> {
        self.nodes
            .iter()
            .filter(|node| Some(node.id) != except)
            .filter_map(|node| {
                let status = node.core.as_ref()?.status().into_iter().find(|s| s.partition == partition)?;
                status.leader.then_some((node.id, status.term))
            })
            .max_by_key(|&(_, term)| term)
    }

    /// One failover under load (see the module comment); the fault is healed at the end.
    fn failover_episode(&mut self) -> Result<(), Violation> {
        let partition = self.rng.below(u64::from(self.options.partitions)) as u32;
        let mut pattern = match self.rng.below(3) {
            0 => Failover::Crash,
            1 => Failover::Isolate,
            _ => Failover::Transfer,
        };
        let start = self.now_ms;
        let (old_leader, old_term) = loop {
            if let Some(found) = self.leader_of(partition, None) {
                break found;
            }
            if self.now_ms - start > EPISODE_ELECTION_MS_MAX {
                return Err(format!("failover episode: partition {partition} has no leader to fail"));
            }
            self.step()?;
        };
        let survivors: Vec<u64> =
            self.cluster.replicas(partition).into_iter().filter(|&node| node != old_leader).collect();
        let fault_at_ms = self.now_ms + EPISODE_LEAD_IN_MS;
        let load_until_ms = fault_at_ms + EPISODE_LOAD_MS;
        let mut sent: Vec<(u64, u64, u64)> = Vec::new();
        let mut elected_at_ms: Option<u64> = None;
        // Requests answered with the error of their client's deadline (judged on their node's clock),
        // and when: an expiry before the answer was due is the only answer there can be (a run of split
        // votes between the two survivors can elect the new leader just before the deadline, or after).
        let mut expired_at_ms: BTreeMap<u64, u64> = BTreeMap::new();
        let mut errors_seen: BTreeSet<u64> = BTreeSet::new();
        loop {
            if self.now_ms == fault_at_ms {
                pattern = self.fail_leader(pattern, partition, old_leader, &survivors)?;
            }
            if self.now_ms < load_until_ms && self.now_ms % EPISODE_LOAD_EVERY_MS == 0 {
                let node = survivors[self.rng.below(survivors.len() as u64) as usize];
                if self.nodes[(node - 1) as usize].core.is_some() {
                    let send = self.auditor.fresh_transfer(self.now_ms, partition, node);
                    sent.push((send.handle, node, self.now_ms));
                    self.submit(send)?;
                }
            }
            self.step()?;
            if self.now_ms <= fault_at_ms {
                continue;
            }
            if elected_at_ms.is_none() {
                let new = self.leader_of(partition, Some(old_leader)).filter(|&(_, term)| term > old_term);
                // A transfer the target did not complete leaves the old leader leading: that is the
                // leadership the requests must find.
                let kept = pattern == Failover::Transfer
                    && self.now_ms - fault_at_ms > 2 * self.election_timeout_ms_max()
                    && self.leader_of(partition, None).is_some_and(|(node, _)| node == old_leader);
                if new.is_some() || kept {
                    elected_at_ms = Some(self.now_ms);
                }
            }
            let deadline_ms = self.cluster.replication.forward_timeout_ms;
            for &(handle, node, sent_ms) in &sent {
                if self.auditor.error_of(handle).is_none() || !errors_seen.insert(handle) {
                    continue;
                }
                // Answered in this step.
                let clock = &self.nodes[(node - 1) as usize];
                if clock.mono_ms(self.now_ms) - clock.mono_ms(sent_ms) >= deadline_ms {
                    expired_at_ms.insert(handle, self.now_ms);
                }
            }
            let Some(elected_ms) = elected_at_ms else {
                if self.now_ms - fault_at_ms > EPISODE_ELECTION_MS_MAX {
                    return Err(format!(
                        "failover episode ({pattern:?} of node {old_leader}, leader of partition {partition} in \
                         term {old_term}): no new leader within {EPISODE_ELECTION_MS_MAX} ms\n{}",
                        self.describe_nodes()
                    ));
                }
                continue;
            };
            for &(handle, node, sent_ms) in &sent {
                let due_ms = sent_ms.max(elected_ms) + FAILOVER_ANSWER_MS_MAX;
                let expired_in_time = expired_at_ms.get(&handle).is_some_and(|&at_ms| at_ms <= due_ms);
                // An error answer is no answer: the client would have to send the transfer again.
                if let Some(error) = self.auditor.error_of(handle).filter(|_| !expired_in_time) {
                    return Err(format!(
                        "failover episode ({pattern:?} of node {old_leader}, leader of partition {partition}, at \
                         {fault_at_ms} ms): transfer request {handle}, sent to node {node} at {sent_ms} ms, was \
                         answered with an error instead of its outcome: {error}"
                    ));
                }
                if self.now_ms > due_ms && self.auditor.is_pending(handle) {
                    return Err(format!(
                        "failover episode ({pattern:?} of node {old_leader}, leader of partition {partition}, at \
                         {fault_at_ms} ms; new leader elected at {elected_ms} ms): transfer request {handle}, sent \
                         to node {node} at {sent_ms} ms, still unanswered at {} ms (bound: \
                         {FAILOVER_ANSWER_MS_MAX} ms after the election)\n{}",
                        self.now_ms,
                        self.describe_nodes()
                    ));
                }
            }
            if self.now_ms >= load_until_ms && sent.iter().all(|&(handle, _, _)| !self.auditor.is_pending(handle)) {
                break;
            }
        }
        self.stats.failovers += 1;
        self.cut.clear();
        let index = (old_leader - 1) as usize;
        if self.nodes[index].core.is_none() {
            self.boot(index, false)?;
        }
        Ok(())
    }

    /// Applies the episode's fault to `leader`; a transfer Raft refuses becomes a crash. Returns the
    /// fault applied.
    fn fail_leader(
        &mut self,
        pattern: Failover,
        partition: u32,
        leader: u64,
        survivors: &[u64],
    ) -> Result<Failover, Violation> {
        let index = (leader - 1) as usize;
        match pattern {
            Failover::Crash => self.crash(index)?,
            Failover::Isolate => {
                self.cut = (1..=self.options.nodes as u64)
                    .filter(|&other| other != leader)
                    .map(|other| (other.min(leader), other.max(leader)))
                    .collect();
            }
            Failover::Transfer => {
                let to = survivors[self.rng.below(survivors.len() as u64) as usize];
                let core = self.nodes[index].core.as_mut().expect("the leader is live");
                if !core.transfer_leader(partition, to) {
                    self.crash(index)?;
                    return Ok(Failover::Crash);
                }
                self.pump(index)?;
            }
        }
        Ok(pattern)
    }

    fn election_timeout_ms_max(&self) -> u64 {
        let r = &self.cluster.replication;
        u64::from(r.election_timeout_ticks_max) * r.tick_interval_ms
    }

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match &node.core {
                None => out.push_str(&format!("  node {}: down\n", node.id)),
                Some(core) => {
                    for status in core.status() {
                        out.push_str(&format!(
                            "  node {} p{}: leader {} (leader id {}) term {} last {} commit {} applied {} seq {} \
                             writes {} rejoin {}\n",
                            node.id,
                            status.partition,
                            status.leader,
                            status.leader_id,
                            status.term,
                            status.last_index,
                            status.commit_index,
                            status.applied_index,
                            status.applied_seq,
                            node.writes.len(),
                            core.rejoin_pending()
                        ));
                    }
                }
            }
        }
        out
    }

    fn live(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.core.is_some()).map(|n| n.id).collect()
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.now_ms += 1;
        // Ticks, on each node's own clock.
        let tick_ms = self.cluster.replication.tick_interval_ms;
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let now = node.now(self.now_ms);
            let Some(core) = node.core.as_mut() else { continue };
            if now.mono_ms >= node.next_tick_ms {
                node.next_tick_ms = now.mono_ms + tick_ms;
                core.tick(now);
                self.pump(index)?;
            }
        }
        self.deliver()?;
        self.clients()?;
        // The end of each node's round: propose, drive, retry parked requests, expire waits.
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let now = node.now(self.now_ms);
            if let Some(core) = node.core.as_mut() {
                core.propose_all();
                core.end_round(now);
                self.pump(index)?;
            }
        }
        self.complete_writes()?;
        if self.faults {
            self.inject_faults()?;
        }
        self.check_nodes()
    }

    /// Carries out what node `index`'s core decided: items onto the network, writes into its disk
    /// queue, answers to the auditor; applied entries to the auditor's model first.
    fn pump(&mut self, index: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        let Some(core) = node.core.as_mut() else { return Ok(()) };
        if let Some(reason) = core.failed() {
            return Err(format!("node {}: shard failed: {reason}", node.id));
        }
        let id = node.id;
        let applied = core.take_applied();
        let outputs = core.take_outputs();
        for (partition, entry) in applied {
            self.auditor.applied(id, partition, entry)?;
        }
        let mut refused = Vec::new();
        for output in outputs {
            match output {
                Output::Send { to, item } => {
                    // The real transport refuses a forwarded request for a peer it has no connection to.
                    match item {
                        PeerItem::Forward { request_id, .. } if self.nodes[(to - 1) as usize].core.is_none() => {
                            refused.push((to, request_id))
                        }
                        item => self.send(id, to, item),
                    }
                }
                Output::Persist(persist) => {
                    // The shell's rule, asserted there too: an install never goes beside its group's
                    // compaction, whose image file it would race.
                    let node = &mut self.nodes[index];
                    if persist.snapshot.is_some() && node.compactions.iter().any(|c| c.partition == persist.partition) {
                        return Err(format!(
                            "node {id}: partition {}: a snapshot install while its compaction is out",
                            persist.partition
                        ));
                    }
                    node.writes.push_back(persist)
                }
                Output::Compact(compaction) => self.nodes[index].compactions.push_back(compaction),
                Output::Restore(restore) => self.nodes[index].restores.push_back(restore),
                Output::Items { to, outcome } => {
                    self.auditor.items_answer(id, to, outcome, self.now_ms, &mut self.rng)?;
                }
                Output::Lookup { to, outcome } => {
                    self.auditor.lookup_answer(id, to, outcome, self.now_ms, &mut self.rng)?;
                }
                Output::Transfers { to, outcome } => {
                    self.auditor.transfers_answer(id, to, outcome, self.now_ms, &mut self.rng)?;
                }
                Output::Log { line, .. } => {
                    self.stats.log_lines += 1;
                    if line.contains("installed snapshot") {
                        self.stats.snapshots_installed += 1;
                    }
                    if line.contains("'s snapshot at index") && line.contains("received node") {
                        self.stats.snapshots_assembled += 1;
                    }
                    if self.verbose {
                        eprintln!("[{} ms] {line}", self.now_ms);
                    }
                }
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        let node = &mut self.nodes[index];
        let now = node.now(self.now_ms);
        let core = node.core.as_mut().expect("it just produced outputs");
        for (to, request_id) in refused {
            core.forward_undeliverable(now, to, request_id);
        }
        self.pump(index)
    }

    fn send(&mut self, from: u64, to: u64, item: PeerItem) {
        self.stats.items_sent += 1;
        let chunk = matches!(item, PeerItem::SnapshotChunk { .. });
        self.stats.snapshot_chunks += u64::from(chunk);
        let mut bytes = Vec::new();
        encode_items(std::slice::from_ref(&item), &mut bytes);
        let copies = if self.faults && self.rng.chance(self.options.duplicate_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.options.delay_ms_max);
            self.network.push(InFlight { deliver_at_ms: self.now_ms + delay, from, to, bytes: bytes.clone(), chunk });
        }
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let now_ms = self.now_ms;
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at_ms <= now_ms {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        // Reordered among the due items.
        self.rng.shuffle(&mut due);
        for flight in due {
            if self.cut.contains(&(flight.from.min(flight.to), flight.from.max(flight.to))) {
                continue;
            }
            if self.faults && self.rng.chance(self.options.drop_per_mille) {
                self.stats.snapshot_chunks_lost += u64::from(flight.chunk);
                continue;
            }
            let target = (flight.to - 1) as usize;
            let node = &mut self.nodes[target];
            let now = node.now(now_ms);
            let Some(core) = node.core.as_mut() else { continue };
            let items = decode_items(&flight.bytes).map_err(|e| format!("the peer codec refused its own item: {e}"))?;
            for item in items {
                core.on_peer(now, flight.from, item);
            }
            self.pump(target)?;
        }
        Ok(())
    }

    fn clients(&mut self) -> Result<(), Violation> {
        let live = self.live();
        let mut sends = self.auditor.due_retries(self.now_ms, &mut self.rng, &live);
        if self.faults && self.rng.chance(self.options.client_per_mille) {
            sends.extend(self.auditor.new_request(self.now_ms, &mut self.rng, &live));
        }
        for send in sends {
            self.submit(send)?;
        }
        Ok(())
    }

    /// Hands the auditor's request to its node's core.
    fn submit(&mut self, send: auditor::Send) -> Result<(), Violation> {
        let index = (send.node - 1) as usize;
        let node = &mut self.nodes[index];
        let now = node.now(self.now_ms);
        let core = node.core.as_mut().expect("requests go to live nodes");
        let command = match send.op {
            Op::Transfers { partition, items } => {
                self.stats.transfers_asked += items.len() as u64;
                Command::Transfers { partition, items, to: send.handle }
            }
            Op::Accounts { partition, items } => Command::CreateAccounts { partition, items, to: send.handle },
            Op::Lookup { partition, consistency, ids, .. } => {
                Command::Lookup { partition, consistency, ids, to: send.handle }
            }
            Op::LookupTransfers { partition, ids, .. } => Command::LookupTransfers { partition, ids, to: send.handle },
        };
        core.on_client(now, command);
        self.pump(index)
    }

    fn complete_writes(&mut self) -> Result<(), Violation> {
        for index in 0..self.nodes.len() {
            while !self.nodes[index].writes.is_empty() && self.rng.chance(self.options.write_complete_per_mille) {
                let node = &mut self.nodes[index];
                let write = node.writes.pop_front().expect("checked non-empty");
                let core = node.core.as_mut().expect("writes exist only on live nodes");
                let storage = core.storage_mut(write.partition).expect("the core names its own partitions");
                write
                    .write_to(storage)
                    .map_err(|e| format!("node {}: simulated disk refused a write: {e}", node.id))?;
                core.persisted(write.partition, write.number);
                self.pump(index)?;
            }
            // The snapshot thread runs beside the log: its images become durable at their own pace.
            while !self.nodes[index].compactions.is_empty() && self.rng.chance(self.options.write_complete_per_mille) {
                let node = &mut self.nodes[index];
                let now = node.now(self.now_ms);
                let compaction = node.compactions.pop_front().expect("checked non-empty");
                let core = node.core.as_mut().expect("compactions exist only on live nodes");
                core.compacted(now, compaction.partition, compaction.meta.index, compaction.encode().into());
                self.stats.compactions += 1;
                self.pump(index)?;
            }
            // So does the state it rebuilds from a received snapshot.
            while !self.nodes[index].restores.is_empty() && self.rng.chance(self.options.write_complete_per_mille) {
                let node = &mut self.nodes[index];
                let now = node.now(self.now_ms);
                let restore = node.restores.pop_front().expect("checked non-empty");
                if node.compactions.iter().any(|c| c.partition == restore.partition) {
                    self.stats.restores_beside_a_compaction += 1;
                }
                let core = node.core.as_mut().expect("restores exist only on live nodes");
                core.restored(now, restore.build());
                self.stats.restores += 1;
                self.pump(index)?;
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let count = self.nodes.len() as u64;
        if self.rng.chance(self.options.partition_per_mille) {
            self.cut = self.rng.cut(count);
        }
        if self.rng.chance(self.options.heal_per_mille) {
            self.cut.clear();
        }
        if self.rng.chance(self.options.crash_per_mille) {
            let index = self.rng.below(count) as usize;
            self.crash(index)?;
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].core.is_none() && self.rng.chance(self.options.restart_per_mille) {
                let wipe = self.rng.chance(self.options.wipe_per_mille) && self.may_wipe(index);
                self.boot(index, wipe)?;
            }
        }
        if self.rng.chance(self.options.transfer_leader_per_mille) {
            let partition = self.rng.below(u64::from(self.options.partitions)) as u32;
            let replicas = self.cluster.replicas(partition);
            let to = replicas[self.rng.below(replicas.len() as u64) as usize];
            for index in 0..self.nodes.len() {
                if let Some(core) = self.nodes[index].core.as_mut() {
                    if core.transfer_leader(partition, to) {
                        self.pump(index)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A node may lose its data only while every other node holds all of its own (no rejoin under way
    /// anywhere): two lost replicas of one group can never vouch for each other, so the group would
    /// wait forever, by design.
    fn may_wipe(&self, index: usize) -> bool {
        self.nodes.iter().enumerate().all(|(i, node)| {
            let stores_clean = |stores: &Vec<(u32, SimStore)>| stores.iter().all(|(_, s)| s.marker().is_none());
            i == index
                || match (&node.core, &node.disk) {
                    (Some(core), _) => !core.rejoin_pending(),
                    (None, Some(stores)) => stores_clean(stores),
                    (None, None) => true,
                }
        }) && self.nodes[index].disk.as_ref().is_some_and(|stores| stores.iter().all(|(_, s)| s.marker().is_none()))
    }

    /// Loses every write not reported durable; the oldest may leave a torn prefix of its entries (a
    /// torn tail the real log truncates at open: the entries before the tear are whole). The other
    /// nodes are told the link to it went down.
    fn crash(&mut self, index: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        let Some(core) = node.core.take() else { return Ok(()) };
        self.stats.crashes += 1;
        let mut stores = core.into_storages();
        if let Some(write) = node.writes.pop_front() {
            if write.snapshot.is_none()
                && !write.entries.is_empty()
                && self.rng.chance(self.options.torn_write_per_mille)
            {
                let kept = 1 + self.rng.below(write.entries.len() as u64) as usize;
                let (_, store) = stores.iter_mut().find(|(p, _)| *p == write.partition).expect("the write's partition");
                raft::Storage::append(store, &write.entries[..kept])
                    .expect("a torn prefix of an in-order write appends");
            }
        }
        node.writes.clear();
        node.restores.clear();
        // A compaction image the crash found written is in the store (the next open starts from it);
        // the others are lost. An image older than a snapshot installed since is refused by the store,
        // as the shell never puts one there (it waits for the compaction before an install).
        for compaction in std::mem::take(&mut node.compactions) {
            if self.rng.chance(500) {
                let (_, store) =
                    stores.iter_mut().find(|(p, _)| *p == compaction.partition).expect("the compaction's partition");
                let (index, conf_state) = (compaction.meta.index, compaction.meta.conf_state.clone());
                match raft::Storage::create_snapshot(store, index, conf_state, compaction.encode().into()) {
                    Ok(()) => self.stats.compactions_at_crash += 1,
                    Err(raft::StorageError::SnapshotOutOfDate { .. }) => {}
                    Err(error) => {
                        return Err(format!("node {}: a written compaction does not fit the store: {error}", node.id))
                    }
                }
            }
        }
        node.disk = Some(stores);
        node.leader_of.clear();
        let id = node.id;
        self.auditor.node_crashed(id, self.now_ms, &mut self.rng);
        // A killed process's sockets close: every peer's transport sees the link end.
        for other in 0..self.nodes.len() {
            let node = &mut self.nodes[other];
            let now = node.now(self.now_ms);
            if let Some(core) = node.core.as_mut() {
                core.peer_unreachable(now, id);
                self.pump(other)?;
            }
        }
        Ok(())
    }

    /// Starts node `index` from its disk, or (with `wipe`) from nothing with `rejoin`.
    fn boot(&mut self, index: usize, wipe: bool) -> Result<(), Violation> {
        let reset = self.nodes[index].boots > 0 && self.rng.chance(self.options.clock_reset_per_mille);
        let step_back_ms = 1 + self.rng.below(CLOCK_STEP_BACK_MS_MAX);
        let sub_ms_ns = self.rng.below(1_000_000);
        let raft_seed = self.rng.next_u64();
        let node = &mut self.nodes[index];
        let Some(mut disk) = node.disk.take() else { return Ok(()) };
        if wipe {
            disk = fresh_disk(&self.cluster, node.id);
            self.stats.wipes += 1;
        }
        if node.boots > 0 {
            self.stats.restarts += 1;
        }
        if reset {
            node.wall_back_ms += step_back_ms;
        }
        node.wall_sub_ms_ns = sub_ms_ns;
        let now = node.now(self.now_ms);
        node.boots += 1;
        node.next_tick_ms = now.mono_ms;
        node.checked_applied.clear();
        let groups = disk
            .into_iter()
            .map(|(partition, storage)| GroupInit {
                partition,
                storage,
                config: partition_config(&self.cluster, partition, node.id),
                rejoin: wipe,
                raft_seed: raft_seed ^ u64::from(partition),
            })
            .collect();
        let options = CoreOptions {
            shard: 0,
            node_id: node.id,
            cluster: self.cluster.clone(),
            first_request_id: now.wall_ns,
            record_applied: true,
            id_runs: engine::idempotency::RunHome::Memory,
            planted: self.options.planted,
        };
        let core = ReplicaCore::open(options, groups, now).map_err(|e| format!("node {} cannot open: {e}", node.id))?;
        node.core = Some(core);
        self.pump(index)
    }

    fn check_nodes(&mut self) -> Result<(), Violation> {
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let Some(core) = node.core.as_ref() else { continue };
            if let Some(reason) = core.failed() {
                return Err(format!("node {}: shard failed: {reason}", node.id));
            }
            let partitions: Vec<u32> = core.partitions().collect();
            for partition in partitions {
                let state = core.committed_state(partition).expect("listed partition");
                let applied = core.applied_index(partition).expect("listed partition");
                if node.checked_applied.get(&partition) == Some(&applied) {
                    continue;
                }
                node.checked_applied.insert(partition, applied);
                let digest = state.digest();
                let known = *self.digests.entry((partition, applied)).or_insert(digest);
                if known != digest {
                    return Err(format!(
                        "node {}: partition {partition} at applied index {applied} has digest {digest:#x}; another \
                         replica had {known:#x} there",
                        node.id
                    ));
                }
                for (ledger, sum) in state.ledger_sums() {
                    if sum != 0 {
                        return Err(format!("node {}: partition {partition}: ledger {ledger} sums to {sum}", node.id));
                    }
                }
                let mut negative = None;
                state.for_each_account(|account| {
                    if account.balance < 0 && account.flags & ACCOUNT_FLAG_EXTERNAL == 0 {
                        negative = Some(account.id);
                    }
                });
                if let Some(account) = negative {
                    return Err(format!(
                        "node {}: partition {partition}: ordinary account {account} is negative",
                        node.id
                    ));
                }
            }
            let leads: BTreeSet<u32> = core.status().iter().filter(|s| s.leader).map(|s| s.partition).collect();
            self.stats.leader_changes += leads.difference(&node.leader_of).count() as u64;
            node.leader_of = leads;
        }
        Ok(())
    }

    /// Every replica of every partition is up, at the same applied index, with the same digest.
    fn converged(&self) -> bool {
        (0..self.options.partitions).all(|partition| {
            let states: Vec<(u64, u128)> = self
                .cluster
                .replicas(partition)
                .iter()
                .filter_map(|&id| {
                    let core = self.nodes[(id - 1) as usize].core.as_ref()?;
                    Some((core.applied_index(partition)?, core.committed_state(partition)?.digest()))
                })
                .collect();
            states.len() == 3 && states.windows(2).all(|w| w[0] == w[1])
        })
    }

    /// Stops faults and restores the timing Raft's liveness assumes; every node comes back.
    fn heal_all(&mut self) -> Result<(), Violation> {
        self.faults = false;
        self.options.delay_ms_max = self.options.delay_ms_max.min(LIVENESS_DELAY_MS_MAX);
        self.options.write_complete_per_mille =
            self.options.write_complete_per_mille.max(LIVENESS_WRITE_COMPLETE_PER_MILLE_MIN);
        self.cut.clear();
        for index in 0..self.nodes.len() {
            if self.nodes[index].core.is_none() {
                self.boot(index, false)?;
            }
        }
        Ok(())
    }
}

fn fresh_disk(cluster: &ClusterConfig, node: u64) -> Vec<(u32, SimStore)> {
    (0..cluster.partitions)
        .filter(|&p| cluster.replicas(p).contains(&node))
        .map(|p| (p, SimStore::new(initial_conf_state(cluster, p))))
        .collect()
}

/// Each node gets its own id-hash key, as each real data directory draws one: no verdict may depend on
/// it, and the auditor's replica digests would show one that did.
fn partition_config(cluster: &ClusterConfig, partition: u32, node_id: u64) -> PartitionConfig {
    PartitionConfig {
        partition,
        partitions: cluster.partitions,
        idempotency_window_ms: cluster.idempotency_window_ms,
        idempotency_ids_max: cluster.idempotency_ids_max,
        id_hash_key: 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(node_id + 1),
    }
}

/// Runs one seed with the fault mix it draws.
pub fn run_seed(seed: u64, nodes: usize) -> Result<Stats, String> {
    Sim::new(seed, Options::for_seed(seed, nodes)).run()
}

/// Like `run_seed` with planted bugs switched on.
pub fn run_seed_planted(seed: u64, nodes: usize, planted: PlantedBugs) -> Result<Stats, String> {
    let mut options = Options::for_seed(seed, nodes);
    options.planted = planted;
    Sim::new(seed, options).run()
}
