//! walletd's configuration file. Flags override it; with neither, a single node runs on loopback with
//! a local data directory.
//!
//! ```toml
//! listen = "127.0.0.1:7400"
//! http_listen = "127.0.0.1:8400"  # the HTTP/JSON API and /metrics
//!
//! [engine]                 # every field of engine::NodeConfig, all optional
//! data_dir = "data"
//! partitions = 64
//! shards = 2
//!
//! [[ledgers]]              # ledgers beyond ISO 4217
//! name = "POINTS"
//! number = 100001
//! minor_units = 0
//! ```

use std::net::SocketAddr;
use std::path::Path;

use engine::NodeConfig;
use net::currency::CurrencyRegistry;
use serde::{Deserialize, Serialize};

/// Where walletd listens when nothing says otherwise: loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7400";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSpec {
    pub name: String,
    pub number: u32,
    pub minor_units: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletdConfig {
    pub listen: SocketAddr,
    /// Where the HTTP edge listens; `None`: 127.0.0.1:8400 (single node) or the cluster file's.
    pub http_listen: Option<SocketAddr>,
    pub engine: NodeConfig,
    pub ledgers: Vec<LedgerSpec>,
}

impl Default for WalletdConfig {
    fn default() -> Self {
        WalletdConfig {
            listen: LISTEN_DEFAULT.parse().expect("the default listen address parses"),
            http_listen: None,
            engine: NodeConfig::default(),
            ledgers: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("{path}: ledger {name}: {why}")]
    Ledger { path: String, name: String, why: String },
}

impl WalletdConfig {
    pub fn load(path: &Path) -> Result<WalletdConfig, ConfigFileError> {
        let path_text = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigFileError::Read { path: path_text.clone(), source })?;
        let config: WalletdConfig =
            toml::from_str(&text).map_err(|source| ConfigFileError::Parse { path: path_text.clone(), source })?;
        config.currencies().map_err(|(name, why)| ConfigFileError::Ledger { path: path_text, name, why })?;
        Ok(config)
    }

    /// ISO 4217 plus the configured ledgers; `Err((name, why))` on a clash or a bad spec.
    pub fn currencies(&self) -> Result<CurrencyRegistry, (String, String)> {
        let mut registry = CurrencyRegistry::with_iso_4217();
        for ledger in &self.ledgers {
            registry
                .register(&ledger.name, ledger.number, ledger.minor_units)
                .map_err(|e| (ledger.name.clone(), e.to_string()))?;
        }
        Ok(registry)
    }
}

/// Parses a u128 given in decimal or as 0x-prefixed hex (cluster ids, transfer ids).
pub fn parse_u128(text: &str) -> Result<u128, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a cluster id (decimal or 0x hex); 0 is reserved.
pub fn parse_cluster_id(text: &str) -> Result<u128, String> {
    match parse_u128(text) {
        Ok(0) => Err("cluster id 0 is reserved".into()),
        Ok(id) => Ok(id),
        Err(e) => Err(format!("invalid cluster id {e}")),
    }
}
