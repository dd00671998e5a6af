//! `net`: the wallet's wire types, its binary protocol, the mio server that speaks it and the
//! blocking Rust client library.
//!
//! A client application depends on this crate alone: it never pulls in RocksDB, io_uring or the
//! engine. Invariants: the codec ([`protocol`]) is pure and never panics or allocates beyond a
//! checked limit on any input; every limit is a named constant enforced with a typed error or an
//! [`protocol::ErrorCode`] on the wire; a bad frame closes only the connection that sent it; every
//! request handed to the application is answered exactly once (a dropped
//! [`server::Responder`] answers `Internal`), and every client wait has a timeout.
//!
//! Modules: [`types`] (domain values and their fixed layouts), [`protocol`] (frame layout, message
//! kinds, limits, codec), [`server`] (mio event loop), [`client`] (blocking client, transfer ids),
//! [`currency`] (ISO 4217 ledgers, decimal text <-> minor units). `fuzz/` holds the decoder's
//! cargo-fuzz target (`cargo +nightly fuzz run decode_frame -- -max_total_time=60`).

pub mod client;
pub mod currency;
pub mod protocol;
pub mod routing;
pub mod server;
pub mod types;
