//! `wallet-http`: walletd's HTTP/JSON edge. Every node (single or cluster) serves, on its own loopback
//! port, the seed's API (`POST /v1/wallet/transfer` with an `Idempotency-Key`, accounts, balances,
//! history pages, status, a batch endpoint), `/metrics` (Prometheus text) and `/openapi.json` (the
//! committed OpenAPI 3.1 document, `http/openapi.json`).
//!
//! It is an edge adapter, never on the shards' hot path: axum on a small tokio runtime of its own
//! threads, translating each request into a binary-protocol call through `net::client` against its own
//! node's client listener ([`link`]), exactly as any other client would. What the engine decides is
//! what the HTTP client gets; the edge holds no state of its own, so it can restart, and any node's
//! edge gives the same answer for the same key.
//!
//! Modules: [`api`] (routes and JSON), [`key`] (Idempotency-Key ⇄ transfer id), [`problem`] (RFC 9457
//! errors), [`link`] (the pool of node connections, with batching of concurrent transfers), [`scrape`]
//! (`/metrics`).

pub mod api;
pub mod key;
pub mod link;
pub mod problem;
pub mod scrape;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use net::currency::CurrencyRegistry;
use net::server::ServerStats;

use crate::api::AppState;
use crate::link::{LinkConfig, LinkWorkers, NodeLink};
use crate::scrape::Scrape;

/// Default HTTP address of a single node (the binary protocol's 7400 + 1000).
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:8400";
/// Threads of the edge's tokio runtime: JSON and HTTP framing only; the node's calls run on the link's.
pub const RUNTIME_THREADS: usize = 2;
/// How long a stopping edge waits for requests in flight before it drops them.
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;

pub struct HttpConfig {
    pub listen: SocketAddr,
    pub link: LinkConfig,
    pub currencies: CurrencyRegistry,
    /// Where the node's logs are, for `wallet_log_disk_bytes`.
    pub data_dir: Option<PathBuf>,
    /// The binary server's connection counts, for `wallet_client_connections*`.
    pub server_stats: Option<Arc<ServerStats>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("cannot start the HTTP edge: {0}")]
    Start(std::io::Error),
    #[error("the HTTP edge's thread panicked")]
    Panicked,
}

/// A running edge. Stop it with [`HttpEdge::shutdown`] before the node it talks to.
pub struct HttpEdge {
    local_address: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<Result<(), std::io::Error>>>,
    workers: Option<LinkWorkers>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/wallet/transfer", post(api::transfer))
        .route("/v1/wallet/transfers", post(api::transfer_batch))
        .route("/v1/accounts", post(api::create_account))
        .route("/v1/accounts/{id}", get(api::balance))
        .route("/v1/accounts/{id}/history", get(api::history))
        .route("/v1/status", get(api::status))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(api::BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

async fn observe(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    scrape::observe_http(&route, response.status().as_u16(), started.elapsed());
    response
}

impl HttpEdge {
    /// Binds `config.listen` (an error if taken), starts the link's workers and the runtime.
    pub fn start(config: HttpConfig) -> Result<HttpEdge, HttpError> {
        let listen = config.listen;
        let listener =
            std::net::TcpListener::bind(listen).map_err(|source| HttpError::Listen { address: listen, source })?;
        let local_address = listener.local_addr().map_err(HttpError::Start)?;
        listener.set_nonblocking(true).map_err(HttpError::Start)?;
        let (link, workers) = NodeLink::start(&config.link).map_err(HttpError::Start)?;
        let state = AppState {
            link,
            currencies: Arc::new(config.currencies),
            scrape: Arc::new(Scrape::new(config.data_dir, config.server_stats)),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("http")
            .enable_all()
            .build()
            .map_err(HttpError::Start)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("http-serve".into())
            .spawn(move || runtime.block_on(serve(listener, router(state), stopped)))
            .map_err(HttpError::Start)?;
        Ok(HttpEdge { local_address, stop, thread: Some(thread), workers: Some(workers) })
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Stops accepting, lets requests in flight finish (at most [`SHUTDOWN_DRAIN_MS`]), then closes
    /// the node connections.
    pub fn shutdown(mut self) -> Result<(), HttpError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), HttpError> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        let _ = self.stop.send(true);
        let served = thread.join().map_err(|_| HttpError::Panicked)?;
        // The router (and with it every NodeLink clone) is gone: the workers end.
        if let Some(workers) = self.workers.take() {
            workers.join();
        }
        served.map_err(HttpError::Start)
    }
}

impl Drop for HttpEdge {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut graceful = stopped.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    let mut drain = stopped;
    tokio::select! {
        served = server.into_future() => served,
        _ = async move {
            let _ = drain.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS)).await;
        } => Ok(()),
    }
}
