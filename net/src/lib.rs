//! The cache-manager HTTP service as a library: the binary (`main.rs`) parses the
//! configuration and calls [`server::run`]; the fuzz targets reach the pure request
//! decoders, [`framing`] and [`body`], and the snapshot reader, [`snapshot`]; the load
//! generator (`bench-harness`) runs its threads on the service's executors, [`runtime`].

mod api;
pub mod body;
mod build_info;
mod coherence;
pub mod config;
mod core;
mod exchange;
pub mod framing;
mod history;
mod http;
mod messages;
pub mod open_files;
mod origin;
mod owner;
mod render;
mod routes;
pub mod runtime;
pub mod server;
pub mod snapshot;
mod stats;
mod stored;
mod tiers;
mod warm;
mod writes;
