//! `walletd`: one wallet node serving the binary protocol, and the HTTP/JSON API with `/metrics` on
//! a second loopback port (`wallet-http`).
//!
//! With no arguments it runs a single node on 127.0.0.1:7400 (HTTP on 127.0.0.1:8400) with its data
//! in `./data`. It logs to stderr (`engine::logging`: UTC timestamp, level and node id on every line;
//! `--log-format json` for one JSON object per line): one line per start, recovery, HTTP edge
//! (`HTTP API on ADDR`), readiness (`listening on ADDR`) and stop, and whatever the node reports
//! while it runs. SIGINT/SIGTERM finish in-flight batches and stop
//! cleanly, and SIGKILL is safe at any moment (the event log is the truth; restart replays it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use engine::logging::LogFormat;
use engine::Node;
use net::server::{Server, ServerConfig};
use tools::config::{parse_cluster_id, WalletdConfig};
use tools::handler::{NodeHandler, SINGLE_NODE_ID};
use tools::signals;

#[derive(Parser, Debug)]
#[command(name = "walletd", version, about = "Wallet engine node: serves the binary protocol on loopback by default")]
struct Args {
    /// TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (event logs, state stores).
    #[arg(long, help = default_help("Data directory (event logs, state stores)", defaults().data_dir.display()))]
    data_dir: Option<PathBuf>,
    /// Address to serve clients on.
    #[arg(long, help = default_help("Address to serve clients on", tools::config::LISTEN_DEFAULT))]
    listen: Option<std::net::SocketAddr>,
    /// Address to serve the HTTP/JSON API, /metrics and /openapi.json on. Default: 127.0.0.1:8400 for a
    /// single node; a cluster node takes its `http_address` from the cluster file (else any free port).
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// Partitions, fixed when the data directory is created.
    #[arg(long, help = default_help("Partitions, fixed when the data directory is created", defaults().partitions))]
    partitions: Option<u32>,
    /// Shard threads, fixed when the data directory is created.
    #[arg(long, help = default_help("Shard threads, fixed when the data directory is created", defaults().shards))]
    shards: Option<u32>,
    /// Cluster id (decimal or 0x hex); clients must present it in every frame.
    #[arg(long, value_parser = parse_cluster_id,
          help = default_help("Cluster id (decimal or 0x hex); clients must present it in every frame", defaults().cluster_id))]
    cluster_id: Option<u128>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Run as one node of a replicated cluster described by this TOML file (see ARCHITECTURE.md).
    #[arg(long, requires = "node_id")]
    cluster_config: Option<PathBuf>,
    /// This node's id in the cluster configuration.
    #[arg(long, requires = "cluster_config")]
    node_id: Option<u64>,
    /// Dial peer ID at ADDR instead of its configured peer address (e.g. through a proxy). Repeatable.
    #[arg(long = "peer", value_name = "ID=ADDR", value_parser = parse_peer_override)]
    peers: Vec<(u64, std::net::SocketAddr)>,
    /// This cluster node lost its data directory and comes back under its old id: each empty
    /// partition replica waits for every other replica's term and commit index before taking part,
    /// and votes only once it holds what they had committed. Not for a new cluster's first start.
    #[arg(long, requires = "cluster_config")]
    rejoin: bool,
    /// Log line format on stderr: `text` (one line per record) or `json` (one object per line). Every
    /// line carries a UTC RFC 3339 timestamp, a level and the node id.
    #[arg(long, value_name = "text|json", default_value = "text")]
    log_format: LogFormat,
}

/// The defaults a new single node gets: `--help` states these values, never a copy of them.
fn defaults() -> engine::config::NodeConfig {
    engine::config::NodeConfig::default()
}

fn default_help(text: &str, value: impl std::fmt::Display) -> String {
    format!("{text}. Default: {value}")
}

fn parse_peer_override(text: &str) -> Result<(u64, std::net::SocketAddr), String> {
    let (id, address) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected ID=HOST:PORT"))?;
    let id = id.parse().map_err(|e| format!("{text:?}: node id: {e}"))?;
    let address = address.parse().map_err(|e| format!("{text:?}: address: {e}"))?;
    Ok((id, address))
}

fn main() {
    let args = Args::parse();
    // A single node reports itself as node 1 (as its Status answer does).
    let node_id = args.node_id.unwrap_or(SINGLE_NODE_ID);
    if let Err(error) = engine::logging::init(node_id, args.log_format) {
        // Only a second logger in one process gets here, which walletd never installs.
        eprintln!("walletd: cannot install the logger: {error}");
        std::process::exit(1);
    }
    if let Err(message) = run(args) {
        log::error!("{message}");
        log::logger().flush();
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    if let (Some(path), Some(node_id)) = (args.cluster_config.clone(), args.node_id) {
        return run_cluster_node(args, &path, node_id);
    }
    let mut config = match &args.config {
        Some(path) => WalletdConfig::load(path).map_err(|e| e.to_string())?,
        None => WalletdConfig::default(),
    };
    if let Some(dir) = args.data_dir {
        config.engine.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(partitions) = args.partitions {
        config.engine.partitions = partitions;
    }
    if let Some(shards) = args.shards {
        config.engine.shards = shards;
    }
    if let Some(cluster_id) = args.cluster_id {
        config.engine.cluster_id = cluster_id;
    }
    if args.no_pin {
        config.engine.pin_cores = false;
    }
    // An existing data directory keeps the layout it was created with, unless flags say otherwise
    // (a mismatch is then refused by the engine with a clear message).
    if let Some(manifest) = engine::node::Manifest::read(&config.engine.data_dir).map_err(|e| e.to_string())? {
        if args.partitions.is_none() {
            config.engine.partitions = manifest.partitions;
        }
        if args.shards.is_none() {
            config.engine.shards = manifest.shards;
        }
        if let (None, Some(id)) = (args.cluster_id, manifest.cluster_id()) {
            config.engine.cluster_id = id;
        }
        config.engine.idempotency_window_ms = manifest.idempotency_window_ms;
        config.engine.idempotency_ids_max = manifest.idempotency_ids_max;
    }
    signals::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;

    let started = Instant::now();
    log::info!(
        "starting: data {} partitions {} shards {} cluster {:#x}",
        config.engine.data_dir.display(),
        config.engine.partitions,
        config.engine.shards,
        config.engine.cluster_id
    );
    let (node, recovery) = Node::open(config.engine.clone()).map_err(|e| format!("cannot open the node: {e}"))?;
    for shard in &recovery.shards {
        log::info!(
            "recovered shard {}: {} segments, log {}..={}, base at {}, checkpoint at {}, replayed {} records, truncated {} torn bytes, in {} ms",
            shard.shard,
            shard.segments,
            shard.log_first_index,
            shard.log_last_index,
            shard.base_index,
            shard.checkpoint_index,
            shard.records_replayed,
            shard.log_bytes_truncated,
            shard.elapsed.as_millis()
        );
    }
    let node = Arc::new(node);
    let handler = NodeHandler::new(node.clone());
    let http = HttpSettings {
        listen: args
            .http_listen
            .or(config.http_listen)
            .unwrap_or_else(|| wallet_http::HTTP_LISTEN_DEFAULT.parse().expect("the default HTTP address parses")),
        currencies: config.currencies().map_err(|(name, why)| format!("ledger {name}: {why}"))?,
        data_dir: config.engine.data_dir.clone(),
    };
    serve(config.listen, config.engine.cluster_id, started, node, handler, Node::shutdown, http)
}

/// What the HTTP edge needs besides the node's own address.
struct HttpSettings {
    listen: std::net::SocketAddr,
    currencies: net::currency::CurrencyRegistry,
    data_dir: PathBuf,
}

/// Starts the HTTP edge against the binary server at `node_address` (its own node).
fn start_http(
    settings: HttpSettings,
    node_address: std::net::SocketAddr,
    cluster_id: u128,
    server_stats: Arc<net::server::ServerStats>,
) -> Result<wallet_http::HttpEdge, String> {
    // A server bound to every interface is reached, by its own edge, through loopback.
    let node_address = if node_address.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), node_address.port())
    } else {
        node_address
    };
    let config = wallet_http::HttpConfig {
        listen: settings.listen,
        link: wallet_http::link::LinkConfig {
            node_address,
            cluster_id,
            connections: wallet_http::link::NODE_CONNECTIONS_DEFAULT,
            queue_depth_max: wallet_http::link::QUEUE_DEPTH_DEFAULT,
            call_timeout_ms: wallet_http::link::CALL_TIMEOUT_MS_DEFAULT,
        },
        currencies: settings.currencies,
        data_dir: Some(settings.data_dir),
        server_stats: Some(server_stats),
    };
    wallet_http::HttpEdge::start(config).map_err(|e| e.to_string())
}

/// Serves `handler` on `listen` until SIGINT/SIGTERM, then stops the server and, once no request can
/// reach it any more, the node.
#[allow(clippy::too_many_arguments)]
fn serve<N, H: net::server::Handler>(
    listen: std::net::SocketAddr,
    cluster_id: u128,
    started: Instant,
    node: Arc<N>,
    handler: H,
    shutdown: impl FnOnce(N) -> Result<(), engine::EngineError>,
    http: HttpSettings,
) -> Result<(), String> {
    let server = Server::start(ServerConfig::new(listen, cluster_id), handler)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let edge = start_http(http, server.local_address(), cluster_id, server.stats())?;
    // Not "listening on": that phrase is the readiness line scripts wait for.
    log::info!("HTTP API on {}", edge.local_address());
    // The readiness line: scripts and tests wait for `listening on ADDR`.
    log::info!("listening on {} (recovered in {} ms)", server.local_address(), started.elapsed().as_millis());

    let signal = signals::wait_for_shutdown_signal().map_err(|e| format!("waiting for signals failed: {e}"))?;
    log::info!("{signal}: stopping: finishing in-flight requests");
    let stopping = Instant::now();
    // The edge first: it is a client of the server, and its requests in flight finish through it.
    if let Err(error) = edge.shutdown() {
        log::error!("http shutdown: {error}");
    }
    if let Err(error) = server.shutdown() {
        log::error!("server shutdown: {error}");
    }
    let node =
        Arc::try_unwrap(node).map_err(|_| "the node is still referenced after the server stopped".to_string())?;
    shutdown(node).map_err(|e| format!("node shutdown failed: {e}"))?;
    log::info!("stopped cleanly in {} ms", stopping.elapsed().as_millis());
    Ok(())
}

/// One node of a replicated cluster: serves clients on its configured address and peers on its peer
/// address; the data directory defaults to `./data/node-<id>`.
fn run_cluster_node(args: Args, path: &std::path::Path, node_id: u64) -> Result<(), String> {
    let cluster = engine::cluster_config::ClusterConfig::load(path).map_err(|e| e.to_string())?;
    let spec =
        cluster.node(node_id).ok_or_else(|| format!("node {node_id} is not listed in {}", path.display()))?.clone();
    let mut config = match &args.config {
        Some(path) => WalletdConfig::load(path).map_err(|e| e.to_string())?,
        None => WalletdConfig::default(),
    };
    config.engine.data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("data/node-{node_id}")));
    config.listen = args.listen.unwrap_or(spec.address);
    if let Some(shards) = args.shards {
        config.engine.shards = shards;
    }
    if args.no_pin {
        config.engine.pin_cores = false;
    }
    // Every replica must decide alike, so the idempotency bounds come from the cluster file; a node
    // file that names its own (even the default) is refused unless they agree, never silently overruled.
    if let Some(node_file) = &args.config {
        let text = std::fs::read_to_string(node_file).map_err(|e| format!("{}: {e}", node_file.display()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", node_file.display()))?;
        let engine_table = table.get("engine").and_then(|v| v.as_table());
        for (field, cluster_value) in [
            ("idempotency_window_ms", cluster.idempotency_window_ms),
            ("idempotency_ids_max", cluster.idempotency_ids_max as u64),
        ] {
            let own = engine_table.and_then(|t| t.get(field)).and_then(|v| v.as_integer());
            if let Some(own) = own.filter(|&own| own as u64 != cluster_value) {
                return Err(format!(
                    "engine.{field} = {own} in {}: in a cluster it is set once for every node, in the cluster file \
                     ({} says {cluster_value})",
                    node_file.display(),
                    path.display()
                ));
            }
        }
    }
    signals::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let started = Instant::now();
    log::info!(
        "starting node {node_id} of cluster {}: data {} partitions {} replication factor {}",
        cluster.cluster_id,
        config.engine.data_dir.display(),
        cluster.partitions,
        cluster.replication_factor
    );
    let options = engine::replica::node::OpenOptions {
        peer_overrides: args.peers.iter().copied().collect(),
        rejoin: args.rejoin,
    };
    let node = engine::replica::ClusterNode::open(config.engine.clone(), cluster, node_id, &options)
        .map_err(|e| format!("cannot open the node: {e}"))?;
    let cluster_id = node.config().cluster_id;
    log::info!("node {node_id} peers on {}", node.peer_address().map(|a| a.to_string()).unwrap_or_default());
    let node = Arc::new(node);
    let handler = tools::cluster_handler::ClusterHandler::new(node.clone());
    let http = HttpSettings {
        listen: args.http_listen.or(spec.http_address).or(config.http_listen).unwrap_or_else(|| {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0) // any free loopback port
        }),
        currencies: config.currencies().map_err(|(name, why)| format!("ledger {name}: {why}"))?,
        data_dir: config.engine.data_dir.clone(),
    };
    serve(config.listen, cluster_id, started, node, handler, engine::replica::ClusterNode::shutdown, http)
}
