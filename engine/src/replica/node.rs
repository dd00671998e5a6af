//! A cluster node: the replica shards of the partitions this node holds, the peer transport and the
//! peer listener. Client calls are split by partition and handed to the shard that owns the partition;
//! the shard serves them, or forwards them to the partition's leader and relays the answer.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};
use net::protocol::{AccountRead, Consistency, ReadLevel, Request, TransferLookup};
use net::types::{partition_of, Account, CreateAccount, Transfer, TransferId};
use serde::{Deserialize, Serialize};

use crate::cluster_config::ClusterConfig;
use crate::config::{NodeConfig, BATCH_ITEMS_MAX};
use crate::error::EngineError;
use crate::join::BatchReply;
use crate::node::{
    admit_transfer_lookup, blocking, new_id_hash_key, parse_manifest, split_by_partition, DataDirLock, LookupGather,
    LookupReply, PartsGather, MANIFEST_FILE,
};
use crate::replica::shard::{ClientCommand, GroupStatus, ReplicaShard, StatusReply, TransfersReply};
use crate::replica::transport::{Dispatch, PeerInput, PeerListener, Transport};
use crate::replica::wire::PeerItem;

/// Name of the file that fixes a cluster node's data directory identity.
pub const CLUSTER_MANIFEST_FILE: &str = "cluster-node.toml";
/// Version of the replicated data directory layout (manifest, shard folders, shared log, snapshots).
/// Format 2 had one log per partition (`partition-NNNNN/` with `raft-hard-state` and `raft-snapshot`
/// side files); it is refused, never reinterpreted.
pub const CLUSTER_DATA_FORMAT_VERSION: u32 = 3;
const CLUSTER_FORMAT_PER_PARTITION_LOGS: i64 = 2;
/// Peer items waiting for one shard thread; a full queue blocks the connection that delivers them.
pub const SHARD_PEER_QUEUE_DEPTH_MAX: usize = 65_536;

/// What a cluster node's data directory was created with; reopening with anything else is refused,
/// since replay re-decides every logged transfer with these settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterManifest {
    pub format_version: u32,
    pub cluster_id: String,
    pub node_id: u64,
    pub partitions: u32,
    /// Replica shards, each with one log for its partitions (`partition % shards`): fixed at creation,
    /// since a partition's records live in its shard's log.
    pub shards: u32,
    pub replication_factor: u32,
    pub idempotency_window_ms: u64,
    pub idempotency_ids_max: usize,
    /// Random key of this node's transfer-id hash (hex); replicas need not share it: no outcome
    /// depends on it.
    pub id_hash_key: String,
}

impl ClusterManifest {
    pub fn id_hash_key(&self) -> Option<u64> {
        u64::from_str_radix(&self.id_hash_key, 16).ok()
    }

    /// Creates or checks the manifest; returns the directory's id-hash key.
    fn create_or_check(config: &NodeConfig, cluster: &ClusterConfig, node_id: u64) -> Result<u64, EngineError> {
        let mut wanted = ClusterManifest {
            format_version: CLUSTER_DATA_FORMAT_VERSION,
            cluster_id: format!("{:x}", config.cluster_id),
            node_id,
            partitions: cluster.partitions,
            shards: config.shards.min(cluster.partitions),
            replication_factor: cluster.replication_factor,
            idempotency_window_ms: config.idempotency_window_ms,
            idempotency_ids_max: config.idempotency_ids_max,
            id_hash_key: String::new(),
        };
        let dir = &config.data_dir;
        let error = |why: String| EngineError::Manifest { path: dir.display().to_string(), why };
        fs::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
        if dir.join(MANIFEST_FILE).exists() {
            return Err(error("this is a single-node data directory; a cluster node needs its own".into()));
        }
        let path = dir.join(CLUSTER_MANIFEST_FILE);
        if path.exists() {
            let text = fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
            let found: ClusterManifest = parse_cluster_manifest(&text).map_err(error)?;
            let key = found
                .id_hash_key()
                .ok_or_else(|| error(format!("id_hash_key {:?} is not a hex u64", found.id_hash_key)))?;
            wanted.id_hash_key = found.id_hash_key.clone();
            if found != wanted {
                return Err(error(format!(
                    "created as {found:?}; refusing to open it as {wanted:?} (a data directory keeps its node id, \
                     cluster, partitions and idempotency bounds)"
                )));
            }
            return Ok(key);
        }
        if let Some(name) = per_partition_layout(dir).map_err(|e| error(e.to_string()))? {
            return Err(error(format!(
                "{name} is a partition folder of cluster data format {CLUSTER_FORMAT_PER_PARTITION_LOGS} (one log per \
                 partition) without a manifest; this build reads format {CLUSTER_DATA_FORMAT_VERSION} only. Nothing was \
                 changed; start a new data directory"
            )));
        }
        let key = new_id_hash_key().map_err(|e| error(format!("cannot draw a random id-hash key: {e}")))?;
        wanted.id_hash_key = format!("{key:x}");
        let text = toml::to_string(&wanted).map_err(|e| error(e.to_string()))?;
        let temporary = path.with_extension("toml.tmp");
        fs::write(&temporary, text).map_err(|e| error(e.to_string()))?;
        fs::File::open(&temporary).and_then(|f| f.sync_all()).map_err(|e| error(e.to_string()))?;
        fs::rename(&temporary, &path).map_err(|e| error(e.to_string()))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| error(e.to_string()))?;
        Ok(key)
    }

    pub fn read(data_dir: &Path) -> Result<Option<ClusterManifest>, EngineError> {
        let path = data_dir.join(CLUSTER_MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let error = |why: String| EngineError::Manifest { path: path.display().to_string(), why };
        let text = fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
        parse_cluster_manifest(&text).map(Some).map_err(error)
    }
}

/// Parses a cluster manifest, refusing the per-partition-log format by name.
fn parse_cluster_manifest(text: &str) -> Result<ClusterManifest, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    if table.get("format_version").and_then(|v| v.as_integer()) == Some(CLUSTER_FORMAT_PER_PARTITION_LOGS) {
        return Err(format!(
            "cluster data format {CLUSTER_FORMAT_PER_PARTITION_LOGS} (one Raft log per partition in partition-NNNNN \
             folders, with raft-hard-state and raft-snapshot side files) was written by an earlier walletd; this build \
             reads cluster data format {CLUSTER_DATA_FORMAT_VERSION} only (one log per replica shard). Nothing was \
             changed; start a new data directory (a node of a running cluster can rejoin with --rejoin on an empty one)"
        ));
    }
    parse_manifest(text, CLUSTER_DATA_FORMAT_VERSION)
}

/// The name of a partition folder of the per-partition-log format in `dir`, if any.
fn per_partition_layout(dir: &Path) -> std::io::Result<Option<String>> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.strip_prefix("partition-").is_some_and(|digits| digits.len() == 5) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// How a cluster node is opened beyond its configuration.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Replaces the address this node dials to reach a peer (a fault-injecting proxy, in tests).
    pub peer_overrides: HashMap<u64, SocketAddr>,
    /// This node lost its data directory and comes back under its old id: every partition replica that
    /// starts empty first asks every other replica for its term and commit index, and joins Raft only
    /// with all answers in hand (see `ReplicaShard`). Never set it for the first start of a new cluster.
    pub rejoin: bool,
}

pub struct ClusterNode {
    node_id: u64,
    config: NodeConfig,
    cluster: ClusterConfig,
    _lock: DataDirLock,
    clients: Vec<Sender<ClientCommand>>,
    threads: Vec<JoinHandle<()>>,
    transport: Arc<Transport>,
    listener: Option<PeerListener>,
}

impl ClusterNode {
    /// Opens (creating if new) this node's replicas, connects to the peers and starts serving them.
    /// See [`OpenOptions`] for `options`.
    pub fn open(
        config: NodeConfig,
        cluster: ClusterConfig,
        node_id: u64,
        options: &OpenOptions,
    ) -> Result<ClusterNode, EngineError> {
        cluster.validate().map_err(|e| EngineError::Io(e.to_string()))?;
        let me = cluster
            .node(node_id)
            .ok_or_else(|| EngineError::Io(format!("node {node_id} is not in the cluster configuration")))?
            .clone();
        // What every replica must agree on comes from the cluster file, whatever the node's own says.
        let config = NodeConfig {
            cluster_id: cluster.cluster_id().map_err(|e| EngineError::Io(e.to_string()))?,
            partitions: cluster.partitions,
            idempotency_window_ms: cluster.idempotency_window_ms,
            idempotency_ids_max: cluster.idempotency_ids_max,
            ..config
        };
        config.validate()?;
        let id_hash_key = ClusterManifest::create_or_check(&config, &cluster, node_id)?;
        let config = NodeConfig { id_hash_key, ..config };
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let peers: Vec<(u64, SocketAddr)> = cluster
            .nodes
            .iter()
            .filter(|n| n.id != node_id)
            .map(|n| (n.id, options.peer_overrides.get(&n.id).copied().unwrap_or(n.peer_address)))
            .collect();
        let transport =
            Transport::new(node_id, config.cluster_id, cluster.agreement_digest(), &peers, &cluster.replication);
        let shards = config.shards.min(config.partitions);
        let mut local: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
        for partition in 0..config.partitions {
            if cluster.replicas(partition).contains(&node_id) {
                local[(partition % shards) as usize].push(partition);
            }
        }
        let mut opened = Vec::new();
        for (shard, partitions) in local.iter().enumerate() {
            opened.push(ReplicaShard::open(
                shard as u32,
                node_id,
                &config,
                &cluster,
                partitions,
                transport.clone(),
                options.rejoin,
            )?);
        }
        let cores = if config.pin_cores { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        let mut clients = Vec::new();
        let mut peer_queues = Vec::new();
        let mut threads = Vec::new();
        for (index, shard) in opened.into_iter().enumerate() {
            let (client_sender, client_receiver) = bounded(config.shard_queue_depth_max);
            let (peer_sender, peer_receiver) = bounded(SHARD_PEER_QUEUE_DEPTH_MAX);
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("replica-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    shard.run(peer_receiver, client_receiver)
                })
                .map_err(|e| EngineError::Io(format!("cannot start a shard thread: {e}")))?;
            clients.push(client_sender);
            peer_queues.push(peer_sender);
            threads.push(thread);
        }
        let dispatch: Dispatch = Arc::new(move |from, input: PeerInput| {
            let partition = match &input {
                PeerInput::Item(
                    PeerItem::Raft { partition, .. }
                    | PeerItem::Forward { partition, .. }
                    | PeerItem::ForwardReply { partition, .. }
                    | PeerItem::TermProbe { partition }
                    | PeerItem::TermReport { partition, .. }
                    | PeerItem::SnapshotChunk { partition, .. }
                    | PeerItem::SnapshotAck { partition, .. },
                )
                | PeerInput::NotDelivered { partition, .. } => *partition,
                PeerInput::LinkDown => {
                    // Every shard may have forwarded requests to that peer.
                    for queue in &peer_queues {
                        let _ = queue.send((from, PeerInput::LinkDown));
                    }
                    return;
                }
            };
            // A full queue blocks this connection's reader: TCP pushes back on the sender.
            let _ = peer_queues[(partition % shards) as usize].send((from, input));
        });
        let listener = PeerListener::start(me.peer_address, transport.clone(), dispatch.clone())
            .map_err(|e| EngineError::Io(format!("cannot listen for peers on {}: {e}", me.peer_address)))?;
        transport.start(dispatch).map_err(|e| EngineError::Io(format!("cannot start the peer transport: {e}")))?;
        Ok(ClusterNode { node_id, config, cluster, _lock: lock, clients, threads, transport, listener: Some(listener) })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn cluster(&self) -> &ClusterConfig {
        &self.cluster
    }

    pub fn peer_address(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(PeerListener::local_address)
    }

    fn shard_of(&self, partition: u32) -> usize {
        (partition % self.clients.len() as u32) as usize
    }

    fn send(&self, partition: u32, command: ClientCommand) {
        if let Err(error) = self.clients[self.shard_of(partition)].send(command) {
            match error.into_inner() {
                ClientCommand::Transfers { part, .. } | ClientCommand::CreateAccounts { part, .. } => {
                    part.complete(Err(EngineError::ShuttingDown))
                }
                ClientCommand::Lookup { reply, .. } => reply(Err(EngineError::ShuttingDown)),
                ClientCommand::LookupTransfers { reply, .. } => reply(Err(EngineError::ShuttingDown)),
                ClientCommand::History { reply, .. } => reply(Err(EngineError::ShuttingDown)),
                ClientCommand::Status { reply } => reply(Vec::new()),
                ClientCommand::Shutdown { reply } => reply(Err(EngineError::ShuttingDown)),
            }
        }
    }

    /// Submits transfers; `reply` gets one result per transfer, in order, once each is committed.
    pub fn create_transfers(&self, transfers: Vec<Transfer>, reply: BatchReply) -> Result<(), EngineError> {
        for (partition, items, part) in
            split_by_partition(&transfers, self.config.partitions, |t| t.debit_account_id, reply)?
        {
            self.send(partition, ClientCommand::Transfers { partition, items, part });
        }
        Ok(())
    }

    pub fn create_accounts(&self, accounts: Vec<CreateAccount>, reply: BatchReply) -> Result<(), EngineError> {
        for (partition, items, part) in split_by_partition(&accounts, self.config.partitions, |a| a.id, reply)? {
            self.send(partition, ClientCommand::CreateAccounts { partition, items, part });
        }
        Ok(())
    }

    /// Looks accounts up at `level`; each partition's part is served at its own consistency: under
    /// `AtLeast`, the highest `at_least_seq` among that partition's accounts (sequences are per
    /// partition, so one lookup can read-its-writes in several at once).
    pub fn lookup_accounts(
        &self,
        level: ReadLevel,
        reads: Vec<AccountRead>,
        reply: LookupReply,
    ) -> Result<(), EngineError> {
        if reads.len() > BATCH_ITEMS_MAX {
            return Err(EngineError::BatchTooLarge { items: reads.len(), limit: BATCH_ITEMS_MAX });
        }
        let mut per_partition: HashMap<u32, (Vec<(u32, u64)>, u64)> = HashMap::new();
        for (slot, read) in reads.iter().enumerate() {
            let (ids, at_least_seq) = per_partition.entry(partition_of(read.id, self.config.partitions)).or_default();
            ids.push((slot as u32, read.id));
            *at_least_seq = (*at_least_seq).max(read.at_least_seq);
        }
        if per_partition.is_empty() {
            reply(Ok(Vec::new()));
            return Ok(());
        }
        let gather = LookupGather::new(reads.len(), per_partition.len(), reply);
        for (partition, (ids, at_least_seq)) in per_partition {
            let gather = gather.clone();
            let reply = Box::new(move |answers| gather.deliver(answers));
            let consistency = level.for_partition(at_least_seq);
            self.send(partition, ClientCommand::Lookup { partition, consistency, ids, reply });
        }
        Ok(())
    }

    /// What became of each transfer id within the idempotency window, in the order asked (`None`: not
    /// found). An id is remembered by its debit account's partition, which the id alone does not name,
    /// so every partition is asked: one command per partition carrying every id, served linearizably by
    /// that partition's leader (here, or forwarded: the transport sends one node's share in one frame)
    /// from its committed state. Should two partitions hold the same id (see the known limit in
    /// ARCHITECTURE.md), the lower partition's answer is given, as on a single node.
    pub fn lookup_transfers(
        &self,
        ids: Vec<TransferId>,
        reply: LookupReply<TransferLookup>,
    ) -> Result<(), EngineError> {
        let Some(reply) = admit_transfer_lookup(&ids, reply)? else { return Ok(()) };
        let gather = LookupGather::new(ids.len(), self.config.partitions as usize, reply);
        for partition in 0..self.config.partitions {
            let gather = gather.clone();
            let reply: TransfersReply = Box::new(move |outcome| {
                gather.deliver_keyed(outcome.map(|found| {
                    found.into_iter().enumerate().map(|(slot, item)| (slot as u32, partition, item)).collect()
                }))
            });
            self.send(partition, ClientCommand::LookupTransfers { partition, ids: ids.clone(), reply });
        }
        Ok(())
    }

    pub fn lookup_transfers_blocking(&self, ids: Vec<TransferId>) -> Result<Vec<Option<TransferLookup>>, EngineError> {
        blocking(|reply| self.lookup_transfers(ids, reply))?
    }

    /// One page of an account's history, newest first, from the local replica of its partition.
    pub fn history(
        &self,
        account_id: u64,
        from_seq: Option<u64>,
        limit: usize,
        reply: crate::replica::shard::HistoryReply,
    ) -> Result<(), EngineError> {
        let limit = limit.clamp(1, crate::node::HISTORY_PAGE_ENTRIES_MAX);
        let partition = partition_of(account_id, self.config.partitions);
        let from_seq = from_seq.unwrap_or(u64::MAX);
        self.send(partition, ClientCommand::History { partition, account_id, from_seq, limit, reply });
        Ok(())
    }

    /// Every local replica's state, sorted by partition.
    pub fn status(&self, reply: StatusReply) -> Result<(), EngineError> {
        let gather = PartsGather::new(self.clients.len(), |g: &GroupStatus| g.partition, reply);
        for shard in &self.clients {
            let gather = gather.clone();
            let reply: StatusReply = Box::new(move |groups| gather.deliver(groups));
            shard.send(ClientCommand::Status { reply }).map_err(|_| EngineError::ShuttingDown)?;
        }
        Ok(())
    }

    pub fn status_blocking(&self) -> Result<Vec<GroupStatus>, EngineError> {
        blocking(|reply| self.status(reply))
    }

    pub fn lookup_accounts_blocking(
        &self,
        consistency: Consistency,
        ids: Vec<u64>,
    ) -> Result<Vec<Option<Account>>, EngineError> {
        let Request::LookupAccounts { consistency, reads } = Request::lookup(consistency, &ids) else {
            unreachable!("Request::lookup builds a lookup")
        };
        blocking(|reply| self.lookup_accounts(consistency, reads, reply))?
    }

    /// Stops taking peer traffic, lets every shard finish its round, and stops the threads.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        let mut first_error = None;
        for shard in 0..self.clients.len() {
            let outcome = blocking(|reply| {
                self.clients[shard].send(ClientCommand::Shutdown { reply }).map_err(|_| EngineError::ShuttingDown)
            })
            .and_then(|r| r);
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
        }
        self.clients.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                first_error.get_or_insert(EngineError::Io("a shard thread panicked".into()));
            }
        }
        if let Some(mut listener) = self.listener.take() {
            listener.shutdown();
        }
        self.transport.shutdown();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop();
        }
    }
}
