//! Examples built on the opamp-rs crates.
//!
//! Two binaries:
//! - `server`: a small fleet manager. OpAMP (WebSocket and plain HTTP) on
//!   `0.0.0.0:4320/v1/opamp`, a live web page and a JSON API on
//!   `127.0.0.1:4321`, state in an embedded redb store (`--data-dir`) or, for
//!   several instances sharing one fleet, PostgreSQL (`--store
//!   postgres://...`, see `docs/postgres.md`), TLS and
//!   mutual TLS, a bearer token for agents, remote config per agent, per group
//!   of agents and by default, packages, restart, custom messages, heartbeat
//!   offers, certificate rotation and own-telemetry offers. The JSON API is
//!   documented in `examples/API.md`.
//! - `agent`: an agent (or, with `--supervise -- CMD ARGS...`, a supervisor
//!   of a real process) built on `opamp-client`, with persistent identity,
//!   config files on disk, packages with secure auto-update, certificate
//!   requests and own metrics over OTLP/HTTP; `--count N` runs N of them.
//!
//! The server is also a library, so it can be embedded or tested in process:
//! [`FleetServer`] joins an `opamp-server` endpoint to the store and the web
//! API.
//!
//! ```
//! use opamp_examples::{FleetOptions, FleetServer, FleetStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fleet = FleetServer::new(FleetStore::in_memory()?, FleetOptions::default());
//! // The OpAMP endpoint: a tower Service for both transports.
//! let opamp = fleet.opamp_builder().build();
//! // The page and the JSON API, next to it in one axum app.
//! let app = fleet.api_router().route_service("/v1/opamp", opamp.clone());
//! assert!(fleet.registry().agents().await?.is_empty());
//! # drop(app);
//! fleet.stop().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod server;

pub use server::{
    ClientCa, ClientCaError, FleetCallbacks, FleetOptions, FleetServer, FleetStore,
    FleetStoreError, ServerArgs, StoreKind, run as run_server,
};
