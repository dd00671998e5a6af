//! A replica shard: the thread shell around the sans-IO replica core (`replica::core`). The core
//! decides everything; the shell owns what touches the world: the client and peer channels, the clock
//! (it reads it once per input and decides when a Raft tick is due), the transport, each partition's
//! `WalStorage` (it writes every `Persist` the core hands out, synchronously, and reports it durable),
//! and the log (the core's log lines go to the `log` facade at the level the core gave them).
//!
//! One round of the loop:
//! 1. step every peer item that arrived (Raft messages, forwarded requests and their replies);
//! 2. unless some led partition already has `uncommitted_entries_max` entries in flight, take client
//!    commands (up to `round_items_max` items): the core decides them against a led partition's
//!    speculative state, forwards them to another node's leader, or parks them while there is none;
//! 3. propose each led partition's events as one log entry, tick Raft when due, and let the core drive
//!    every group's Ready;
//! 4. carry out the core's outputs in order: messages to the transport (so AppendEntries leave before
//!    the local write), writes to the log (fdatasync, then `persisted`, which releases what waited on
//!    them: acknowledgements, applies, answers), answers to the clients, log lines; repeat until the
//!    core has nothing more to say.
//!
//! Nothing is answered as done before its entry is committed and applied. A storage failure stops the
//! shard (fail-stop), like the single-node shard.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use net::protocol::Consistency;
use net::types::{Account, CreateAccount, Transfer};
use wal::WalOptions;

use crate::cluster_config::{ClusterConfig, ReplicationConfig};
use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::join::BatchPart;
use crate::metrics;
use crate::raft_storage::WalStorage;
pub use crate::replica::core::GroupStatus;
use crate::replica::core::{
    initial_conf_state, Command, CoreOptions, GroupInit, Handles, Now, Output, PlantedBugs, RejoinMarker, ReplicaCore,
    ReplicaStorage,
};
use crate::replica::transport::Transport;
use crate::replica::wire::PeerItem;
use crate::shard::{clock_ns, partition_config, DoneReply, RECORD_PAYLOAD_BYTES_MAX};

/// Lookup answers: (slot in the caller's result, account if found).
pub type LookupReply = Box<dyn FnOnce(Result<Vec<(u32, Option<Account>)>, EngineError>) + Send>;
pub type StatusReply = Box<dyn FnOnce(Vec<GroupStatus>) + Send>;
pub type HistoryReply = Box<dyn FnOnce(Result<crate::history::HistoryPage, EngineError>) + Send>;

/// Commands from this node's clients.
pub enum ClientCommand {
    Transfers {
        partition: u32,
        items: Vec<Transfer>,
        part: BatchPart,
    },
    CreateAccounts {
        partition: u32,
        items: Vec<CreateAccount>,
        part: BatchPart,
    },
    Lookup {
        partition: u32,
        consistency: Consistency,
        ids: Vec<(u32, u64)>,
        reply: LookupReply,
    },
    /// One page of an account's history from this replica's committed state (`from_seq` inclusive,
    /// `u64::MAX` = newest).
    History {
        partition: u32,
        account_id: u64,
        from_seq: u64,
        limit: usize,
        reply: HistoryReply,
    },
    Status {
        reply: StatusReply,
    },
    Shutdown {
        reply: DoneReply,
    },
}

/// Directory of one partition's Raft log, hard state and snapshot file.
pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join(format!("partition-{partition:05}"))
}

/// Log options of a replicated partition: a record is an entry kind byte plus an event batch.
pub fn replica_wal_options(config: &NodeConfig) -> WalOptions {
    WalOptions {
        segment_bytes: config.wal_segment_bytes,
        payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX + 64,
        ..WalOptions::default()
    }
}

/// The shell's answer handles: a batch part, or a lookup's slots in the caller's result and its reply.
pub struct ShellHandles;

impl Handles for ShellHandles {
    type Items = BatchPart;
    type Lookup = (Vec<u32>, LookupReply);
}

pub struct ReplicaShard {
    /// This shard's number on its node (the `shard` label of its metrics).
    id: u32,
    core: ReplicaCore<WalStorage, ShellHandles>,
    replication: ReplicationConfig,
    round_items_max: usize,
    transport: Arc<Transport>,
    /// The monotonic clock's origin: the core sees milliseconds since it.
    started: Instant,
    last_tick: Instant,
}

/// Ticks one loop iteration may catch up after a stall (more would only fire elections at once).
const TICKS_PER_ROUND_MAX: u32 = 3;

impl ReplicaShard {
    /// Opens (creating if new) the groups of `partitions`, restoring each from its snapshot file; Raft
    /// then re-applies the committed log after it. With `rejoin` (this node lost its data), a group
    /// that starts empty first asks every other replica for its term and commit index.
    pub fn open(
        id: u32,
        node_id: u64,
        config: &NodeConfig,
        cluster: &ClusterConfig,
        partitions: &[u32],
        transport: Arc<Transport>,
        rejoin: bool,
    ) -> Result<ReplicaShard, EngineError> {
        let mut groups = Vec::new();
        for &partition in partitions {
            let dir = partition_dir(&config.data_dir, partition);
            let in_partition = |e: &dyn std::fmt::Display| EngineError::Log(format!("partition {partition}: {e}"));
            let mut storage = WalStorage::open(&dir, replica_wal_options(config)).map_err(|e| in_partition(&e))?;
            storage.bootstrap(initial_conf_state(cluster, partition)).map_err(|e| in_partition(&e))?;
            let raft_seed = node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ partition as u64 ^ clock_ns();
            let config = partition_config(config, partition);
            groups.push(GroupInit { partition, storage, config, rejoin, raft_seed });
        }
        let started = Instant::now();
        let options = CoreOptions {
            shard: id,
            node_id,
            cluster: cluster.clone(),
            first_request_id: clock_ns(),
            record_applied: false,
            planted: PlantedBugs::default(),
        };
        let core = ReplicaCore::open(options, groups, Now { mono_ms: 0, wall_ns: clock_ns() })?;
        Ok(ReplicaShard {
            id,
            core,
            replication: cluster.replication.clone(),
            round_items_max: config.round_items_max,
            transport,
            started,
            last_tick: started,
        })
    }

    fn now(&self) -> Now {
        Now { mono_ms: self.started.elapsed().as_millis() as u64, wall_ns: clock_ns() }
    }

    /// Runs the shard until shutdown. `peers` carries `(sending node, item)` from the transport.
    pub fn run(mut self, peers: Receiver<(u64, PeerItem)>, clients: Receiver<ClientCommand>) {
        let tick = Duration::from_millis(self.replication.tick_interval_ms);
        self.carry_out();
        let client_depth = metrics::queue_depth_gauge(self.id, "client");
        let peer_depth = metrics::queue_depth_gauge(self.id, "peer");
        loop {
            let accepting = self.core.accepting_clients();
            let wait = tick.saturating_sub(self.last_tick.elapsed());
            let mut select = Select::new();
            let peer_index = select.recv(&peers);
            let client_index = accepting.then(|| select.recv(&clients));
            // Which queue woke us does not matter: both are drained below.
            let _ = (peer_index, client_index, select.ready_timeout(wait));
            let round_started = Instant::now();
            client_depth.set(clients.len() as i64);
            peer_depth.set(peers.len() as i64);
            // Peers first and entirely: they are what lets the cluster make progress.
            let now = self.now();
            while let Ok((from, item)) = peers.try_recv() {
                self.core.on_peer(now, from, item);
            }
            let mut shutdown = None;
            if self.core.accepting_clients() {
                let now = self.now();
                let mut items = 0usize;
                while items < self.round_items_max {
                    match clients.try_recv() {
                        Ok(ClientCommand::Shutdown { reply }) => {
                            shutdown = Some(reply);
                            break;
                        }
                        Ok(command) => items += self.on_client(now, command),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return self.close(None),
                    }
                }
            }
            self.core.propose_all();
            self.tick_if_due(tick);
            self.core.end_round(self.now());
            self.carry_out();
            metrics::observe_round(round_started.elapsed());
            if let Some(reply) = shutdown {
                return self.close(Some(reply));
            }
        }
    }

    /// Returns the number of items the command carried.
    fn on_client(&mut self, now: Now, command: ClientCommand) -> usize {
        let command = match command {
            ClientCommand::Status { reply } => {
                reply(self.core.status());
                return 0;
            }
            ClientCommand::History { partition, account_id, from_seq, limit, reply } => {
                reply(self.core.history(partition, account_id, from_seq, limit));
                return 1;
            }
            ClientCommand::Shutdown { .. } => unreachable!("handled by the loop"),
            ClientCommand::Transfers { partition, items, part } => Command::Transfers { partition, items, to: part },
            ClientCommand::CreateAccounts { partition, items, part } => {
                Command::CreateAccounts { partition, items, to: part }
            }
            ClientCommand::Lookup { partition, consistency, ids, reply } => {
                let (slots, ids): (Vec<u32>, Vec<u64>) = ids.into_iter().unzip();
                Command::Lookup { partition, consistency, ids, to: (slots, reply) }
            }
        };
        self.core.on_client(now, command)
    }

    fn tick_if_due(&mut self, tick: Duration) {
        let mut ticks = 0;
        while self.last_tick.elapsed() >= tick && ticks < TICKS_PER_ROUND_MAX {
            self.last_tick += tick;
            ticks += 1;
            self.core.tick(self.now());
        }
        if self.last_tick.elapsed() >= tick {
            self.last_tick = Instant::now();
        }
    }

    /// Carries out everything the core decided, in order, until it has nothing more to say: a write
    /// made durable is reported, which may release more.
    fn carry_out(&mut self) {
        loop {
            let outputs = self.core.take_outputs();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                match output {
                    Output::Send { to, item } => {
                        let forwarded = match &item {
                            PeerItem::Forward { request_id, .. } => Some(*request_id),
                            _ => None,
                        };
                        if !self.transport.send(to, item) {
                            if let Some(request_id) = forwarded {
                                self.core.forward_undeliverable(to, request_id);
                            }
                        }
                    }
                    Output::Persist(persist) => {
                        let storage =
                            self.core.storage_mut(persist.partition).expect("the core names its own partitions");
                        match persist.write_to(storage) {
                            Ok(()) => self.core.persisted(persist.partition, persist.number),
                            Err(error) => self.core.storage_failed(persist.partition, error),
                        }
                    }
                    Output::Items { to, outcome } => to.complete(outcome),
                    Output::Lookup { to: (slots, reply), outcome } => {
                        reply(outcome.map(|accounts| slots.into_iter().zip(accounts).collect()))
                    }
                    Output::Log { level, line } => log::log!(level, "{line}"),
                }
            }
        }
    }

    /// Answers everything still waiting with `ShuttingDown`, then `reply` with how the shard ends.
    fn close(mut self, reply: Option<DoneReply>) {
        // Whatever can still commit from this round does; then everything left waiting is answered.
        self.core.propose_all();
        self.core.end_round(self.now());
        self.carry_out();
        self.core.close();
        self.carry_out();
        if let Some(reply) = reply {
            reply(match self.core.failed() {
                None => Ok(()),
                Some(reason) => Err(EngineError::ShardFailed { shard: self.core.shard(), reason: reason.to_string() }),
            });
        }
    }
}

impl ReplicaStorage for WalStorage {
    fn snapshot_index(&self) -> u64 {
        WalStorage::snapshot_index(self)
    }

    fn rejoin_marker(&self) -> Result<Option<RejoinMarker>, EngineError> {
        read_rejoin_marker(self.directory())
    }

    fn set_rejoin_marker(&mut self, marker: Option<RejoinMarker>) -> Result<(), EngineError> {
        match marker {
            Some(marker) => write_rejoin_marker(self.directory(), marker),
            None => remove_rejoin_marker(self.directory()),
        }
    }
}

/// File in a partition directory while a replica rebuilt on a rejoining node does not yet take full
/// part in Raft: `awaiting-reports` until every other replica has answered, then
/// `withhold-votes-until N term T` until its commit index reaches N (T: the term it adopted, re-adopted
/// at open in case the crash came before the new term reached the hard state). It survives restarts,
/// so a crash during catch-up resumes the same rules with or without `--rejoin`.
pub const REJOIN_MARKER_FILE: &str = "rejoin-pending";

fn read_rejoin_marker(dir: &Path) -> Result<Option<RejoinMarker>, EngineError> {
    let path = dir.join(REJOIN_MARKER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::Io(format!("{}: {e}", path.display()))),
    };
    let text = text.trim();
    if text == "awaiting-reports" {
        return Ok(Some(RejoinMarker::AwaitingReports));
    }
    let parsed = text.strip_prefix("withhold-votes-until ").and_then(|rest| {
        let (index, term) = rest.split_once(" term ")?;
        Some(RejoinMarker::WithholdVotesUntil { index: index.parse().ok()?, term: term.parse().ok()? })
    });
    parsed.map(Some).ok_or_else(|| EngineError::Store(format!("{}: unreadable rejoin marker {text:?}", path.display())))
}

/// Replaces the marker atomically (temporary file, fsync, rename, directory fsync).
fn write_rejoin_marker(dir: &Path, marker: RejoinMarker) -> Result<(), EngineError> {
    let text = match marker {
        RejoinMarker::AwaitingReports => "awaiting-reports\n".to_string(),
        RejoinMarker::WithholdVotesUntil { index, term } => format!("withhold-votes-until {index} term {term}\n"),
    };
    let path = dir.join(REJOIN_MARKER_FILE);
    let temporary = dir.join(format!("{REJOIN_MARKER_FILE}.tmp"));
    let error = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    std::fs::write(&temporary, text).map_err(error)?;
    std::fs::File::open(&temporary).and_then(|f| f.sync_all()).map_err(error)?;
    std::fs::rename(&temporary, &path).map_err(error)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(error)
}

fn remove_rejoin_marker(dir: &Path) -> Result<(), EngineError> {
    let path = dir.join(REJOIN_MARKER_FILE);
    let error = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    std::fs::remove_file(&path).map_err(error)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(error)
}
