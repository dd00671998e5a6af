//! A local cluster of real walletd processes on loopback, for replication tests that need real
//! crashes (SIGKILL), clean stops (SIGTERM), restarts, wiped disks and network partitions.
//!
//! Layout of the cluster directory: `cluster.toml`, one data dir `node-N/` and one log
//! `node-N.log` per node (its log, stderr, with stdout too; appended across restarts). With `proxied`, every
//! ordered pair of nodes (i -> j) talks through its own [`FaultProxy`], so a test can cut any
//! node off from the others while clients still reach it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use net::client::{Client, ClientConfig, ClientError};
use net::protocol::NodeStatus;

use super::proxy::FaultProxy;

/// Cluster id written to the config and used by every client.
pub const CLUSTER_ID: u128 = 1;
/// Longest a node may take from spawn to its "listening" line.
const START_TIMEOUT_MS: u64 = 30_000;
/// Longest a node may take to exit after SIGTERM before it is killed.
const TERMINATE_TIMEOUT_MS: u64 = 20_000;
const POLL_INTERVAL_MS: u64 = 20;
/// Log lines shown when a node fails to start or stops unexpectedly.
const FAILURE_LOG_LINES: usize = 40;
/// What walletd's readiness record says, in either log format.
const LISTENING_PREFIX: &str = "listening on ";
/// Set to keep the cluster directory (and its logs) after the test.
const KEEP_ENV: &str = "WALLET_KEEP_CLUSTER";

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub partitions: u32,
    pub replication_factor: u32,
    /// Route every node-to-node connection through a [`FaultProxy`] (needed by `isolate`).
    pub proxied: bool,
    /// Appended to every node's command line.
    pub extra_args: Vec<String>,
    /// Fields of the cluster file's `[replication]` table, e.g. `snapshot_interval_entries = 16`.
    pub replication: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            nodes: 3,
            partitions: 3,
            replication_factor: 3,
            proxied: false,
            extra_args: Vec::new(),
            replication: Vec::new(),
        }
    }
}

struct Node {
    client_address: SocketAddr,
    peer_address: SocketAddr,
    /// The node's HTTP/JSON API and /metrics (the cluster file's `http_address`).
    http_address: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    /// Behind a mutex so `is_running(&self)` can reap a node that exited on its own while the
    /// cluster is shared by reference across test threads.
    child: Mutex<Option<Child>>,
}

/// The proxy carrying node `from`'s outbound connections to node `to`.
struct PeerLink {
    from: u64,
    to: u64,
    proxy: FaultProxy,
}

pub struct LocalCluster {
    nodes: BTreeMap<u64, Node>,
    links: Vec<PeerLink>,
    config_path: PathBuf,
    root: PathBuf,
    /// `None` when the directory is kept for inspection. `Drop` kills the nodes before it goes.
    dir: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Writes the config, starts every node and waits until each one serves clients. Nodes are
    /// all spawned before any is waited for: a node may need its peers before it listens.
    pub fn start(options: ClusterOptions) -> LocalCluster {
        assert!(options.nodes >= 1, "a cluster needs a node");
        assert!(options.partitions >= 1, "a cluster needs a partition");
        let dir = tempfile::Builder::new().prefix("wallet-cluster-").tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let dir = if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("cluster: keeping {}", root.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };

        let ids: Vec<u64> = (1..=options.nodes as u64).collect();
        let ports = free_loopback_addresses(3 * options.nodes);
        let (client_addresses, rest) = ports.split_at(options.nodes);
        let (peer_addresses, http_addresses) = rest.split_at(options.nodes);
        let config_path = root.join("cluster.toml");
        std::fs::write(&config_path, config_text(&options, &ids, client_addresses, peer_addresses, http_addresses))
            .expect("write cluster config");

        let mut links = Vec::new();
        if options.proxied {
            for &from in &ids {
                for &to in &ids {
                    if from != to {
                        let proxy = FaultProxy::start(peer_addresses[to as usize - 1]).expect("proxy starts");
                        links.push(PeerLink { from, to, proxy });
                    }
                }
            }
        }

        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let index = id as usize - 1;
            let data_dir = root.join(format!("node-{id}"));
            let mut args = vec![
                "--cluster-config".to_string(),
                path_text(&config_path),
                "--node-id".to_string(),
                id.to_string(),
                "--data-dir".to_string(),
                path_text(&data_dir),
                "--no-pin".to_string(),
            ];
            for link in links.iter().filter(|link| link.from == id) {
                args.push("--peer".to_string());
                args.push(format!("{}={}", link.to, link.proxy.address()));
            }
            args.extend(options.extra_args.iter().cloned());
            let node = Node {
                client_address: client_addresses[index],
                peer_address: peer_addresses[index],
                http_address: http_addresses[index],
                data_dir,
                log_path: root.join(format!("node-{id}.log")),
                args,
                child: Mutex::new(None),
            };
            nodes.insert(id, node);
        }

        let cluster = LocalCluster { nodes, links, config_path, root, dir };
        let log_starts: Vec<(u64, u64)> = ids.iter().map(|&id| (id, cluster.spawn(id, &[]))).collect();
        for (id, log_start) in log_starts {
            cluster.wait_listening(id, log_start);
        }
        cluster
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The cluster directory (config, data dirs, logs).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn client_address(&self, id: u64) -> SocketAddr {
        self.node(id).client_address
    }

    pub fn peer_address(&self, id: u64) -> SocketAddr {
        self.node(id).peer_address
    }

    pub fn http_address(&self, id: u64) -> SocketAddr {
        self.node(id).http_address
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// True while the node's process lives; a node that exited on its own is reaped here.
    pub fn is_running(&self, id: u64) -> bool {
        let mut child = self.node(id).child.lock().expect("no thread panics holding it");
        match child.as_mut() {
            None => false,
            Some(process) => matches!(process.try_wait(), Ok(None)),
        }
    }

    /// Crashes the node: SIGKILL, then reaps it.
    pub fn kill(&mut self, id: u64) {
        let mut process = self.take_running(id);
        let _ = process.kill();
        process.wait().expect("reap killed walletd");
    }

    /// Stops the node cleanly: SIGTERM, then waits; SIGKILL if it has not exited within
    /// `TERMINATE_TIMEOUT_MS`. Returns how it exited (a signal status means it was killed).
    pub fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut process = self.take_running(id);
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet; no memory is involved.
        unsafe { libc::kill(process.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(TERMINATE_TIMEOUT_MS);
        while Instant::now() < deadline {
            if let Some(status) = process.try_wait().expect("poll walletd") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        eprintln!("cluster: node {id} ignored SIGTERM for {TERMINATE_TIMEOUT_MS} ms; killing it");
        let _ = process.kill();
        process.wait().expect("reap killed walletd")
    }

    /// Freezes a running node (SIGSTOP): its sockets stay open and its kernel still completes new
    /// connections, but it answers nothing, like a stalled host. [`LocalCluster::resume`] thaws it.
    pub fn pause(&self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    /// Thaws a node frozen by [`LocalCluster::pause`] (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        let child = self.node(id).child.lock().expect("no thread panics holding it");
        let process = child.as_ref().unwrap_or_else(|| panic!("node {id} is not running"));
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold its handle).
        let sent = unsafe { libc::kill(process.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "signal {signal} to node {id}: {}", std::io::Error::last_os_error());
    }

    /// (Re)starts a stopped node with its original arguments and waits until it listens.
    pub fn start_node(&mut self, id: u64) {
        self.start_node_with(id, &[]);
    }

    /// (Re)starts a stopped node with its original arguments plus `extra` (e.g. `--rejoin` after a
    /// wipe) and waits until it listens.
    pub fn start_node_with(&mut self, id: u64, extra: &[&str]) {
        assert!(!self.is_running(id), "node {id} is already running");
        let log_start = self.spawn(id, extra);
        self.wait_listening(id, log_start);
    }

    /// Removes a stopped node's data dir entirely, as if its disk were replaced.
    pub fn wipe(&mut self, id: u64) {
        assert!(!self.is_running(id), "node {id} must be stopped before its data dir is wiped");
        let data_dir = &self.node(id).data_dir;
        match std::fs::remove_dir_all(data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("wipe {}: {e}", data_dir.display()),
        }
    }

    /// A client bound to one node only; it connects on first use.
    pub fn client(&self, id: u64) -> Client {
        Client::new(ClientConfig::new(vec![self.client_address(id)], CLUSTER_ID)).expect("valid client config")
    }

    /// A client that knows every running node and fails over between them.
    pub fn cluster_client(&self) -> Client {
        let addresses: Vec<SocketAddr> =
            self.node_ids().into_iter().filter(|&id| self.is_running(id)).map(|id| self.client_address(id)).collect();
        assert!(!addresses.is_empty(), "no node is running");
        Client::new(ClientConfig::new(addresses, CLUSTER_ID)).expect("valid client config")
    }

    pub fn status(&self, id: u64) -> Result<NodeStatus, ClientError> {
        self.client(id).status()
    }

    /// The last `lines` lines of the node's log (all its runs).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = match std::fs::read(&self.node(id).log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return format!("(no log: {e})"),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The proxy carrying node `from`'s connections to node `to` (panics if not proxied).
    pub fn link(&self, from: u64, to: u64) -> &FaultProxy {
        self.assert_proxied();
        let link = self.links.iter().find(|link| link.from == from && link.to == to);
        &link.unwrap_or_else(|| panic!("no link {from} -> {to}")).proxy
    }

    /// Cuts every node-to-node link from or to `id`; clients still reach it.
    pub fn isolate(&self, id: u64) {
        self.assert_proxied();
        assert!(self.nodes.contains_key(&id), "no node {id} in this cluster");
        for link in self.links.iter().filter(|link| link.from == id || link.to == id) {
            link.proxy.set_blocked(true);
        }
    }

    /// Restores every node-to-node link.
    pub fn heal(&self) {
        for link in &self.links {
            link.proxy.set_blocked(false);
        }
    }

    /// Runs walletctl with `args`; returns its exit code (-1 if killed by a signal) and stdout.
    pub fn walletctl(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_walletctl")).args(args).output().expect("walletctl runs");
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes.get(&id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn assert_proxied(&self) {
        assert!(!self.links.is_empty(), "the cluster was started without `proxied`");
    }

    /// Takes the child of a node that must be running; panics with its log if it died on its own.
    fn take_running(&mut self, id: u64) -> Child {
        let taken = self.node(id).child.lock().expect("no thread panics holding it").take();
        let Some(mut process) = taken else { panic!("node {id} is not running") };
        if let Ok(Some(status)) = process.try_wait() {
            panic!("node {id} had already exited ({status}); log tail:\n{}", self.log_tail(id, FAILURE_LOG_LINES));
        }
        process
    }

    /// Spawns the node with its log appended to; returns the log length before the spawn, so
    /// only this run's lines are searched for the listening line.
    fn spawn(&self, id: u64, extra: &[&str]) -> u64 {
        let node = self.node(id);
        let log = OpenOptions::new().create(true).append(true).open(&node.log_path).expect("open node log");
        let log_start = log.metadata().expect("node log metadata").len();
        let stderr = log.try_clone().expect("clone node log");
        let process = Command::new(env!("CARGO_BIN_EXE_walletd"))
            .args(&node.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("walletd spawns");
        *node.child.lock().expect("no thread panics holding it") = Some(process);
        log_start
    }

    /// Polls the node's log past `log_start` for the listening line; panics with the log tail if
    /// the node exits first or `START_TIMEOUT_MS` passes.
    fn wait_listening(&self, id: u64, log_start: u64) {
        let node = self.node(id);
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if listening_line_written(&node.log_path, log_start) {
                return;
            }
            if !self.is_running(id) {
                panic!("node {id} exited before listening; log tail:\n{}", self.log_tail(id, FAILURE_LOG_LINES));
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {id} did not listen within {START_TIMEOUT_MS} ms; log tail:\n{}",
                    self.log_tail(id, FAILURE_LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            let taken = match node.child.lock() {
                Ok(mut child) => child.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(mut process) = taken {
                let _ = process.kill();
                let _ = process.wait();
            }
        }
        if std::thread::panicking() && self.dir.is_some() {
            eprintln!("cluster: {} is removed; set {KEEP_ENV}=1 to keep its logs", self.root.display());
        }
    }
}

/// Distinct free loopback addresses: all are bound at once (so none repeats), then released for
/// walletd to bind. Another process could take one in between; on loopback in tests it does not.
/// `count` loopback addresses whose ports were free a moment ago.
pub fn free_loopback_addresses(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|listener| listener.local_addr().expect("bound address")).collect()
}

fn config_text(
    options: &ClusterOptions,
    ids: &[u64],
    client_addresses: &[SocketAddr],
    peer_addresses: &[SocketAddr],
    http_addresses: &[SocketAddr],
) -> String {
    let mut text = format!(
        "cluster_id = \"{CLUSTER_ID:#x}\"\npartitions = {}\nreplication_factor = {}\n",
        options.partitions, options.replication_factor
    );
    for (index, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "\n[[nodes]]\nid = {id}\naddress = \"{}\"\npeer_address = \"{}\"\nhttp_address = \"{}\"\n",
            client_addresses[index], peer_addresses[index], http_addresses[index]
        ));
    }
    if !options.replication.is_empty() {
        text.push_str("\n[replication]\n");
        for line in &options.replication {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_string()
}

/// True once a complete "listening" line sits in the log past `log_start`.
fn listening_line_written(log_path: &Path, log_start: u64) -> bool {
    let Ok(mut file) = File::open(log_path) else { return false };
    if file.seek(SeekFrom::Start(log_start)).is_err() {
        return false;
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return false;
    }
    let text = String::from_utf8_lossy(&bytes);
    // Only whole lines: the last piece may still be being written.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return false,
    };
    // `contains`: the message follows the record's timestamp, level and node id.
    complete.lines().any(|line| line.contains(LISTENING_PREFIX))
}
