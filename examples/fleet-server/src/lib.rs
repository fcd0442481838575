//! An example OpAMP fleet server built on `opamp-server`: a small fleet
//! manager you can run (`cargo run --release -p opamp-fleet-server`) or
//! embed.
//!
//! What the binary offers: OpAMP over WebSocket and plain HTTP on
//! `0.0.0.0:4320/v1/opamp`, a live web page and a JSON API on
//! `127.0.0.1:4321` (documented in `API.md` next to this crate), state in an
//! embedded redb store (`--data-dir`), in memory (`--store memory`) or, for
//! several instances sharing one fleet, in PostgreSQL (`--store
//! postgres://...`, see `docs/postgres.md`). Also TLS and mutual TLS, a
//! bearer token for agents, remote config per agent, per group of agents
//! and by default, packages, restart, custom messages, heartbeat offers,
//! certificate rotation and own-telemetry offers. `--help` lists every flag.
//!
//! As a library, [`FleetServer`] joins an `opamp-server` endpoint to the
//! store ([`FleetStore`]) and the web API, so it can be embedded or tested
//! in process; [`run`] with [`ServerArgs`] is the server, and
//! [`main_with_log_filter`] the whole binary.
//!
//! ```
//! use opamp_fleet_server::{FleetOptions, FleetServer, FleetStore};
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

mod agent_query;
mod api;
mod assets;
mod callbacks;
mod certs;
mod cli;
mod demo;
mod error;
mod fleet;
mod store;
mod store_pg;
mod store_worker;
mod view;

use std::sync::Arc;

pub use callbacks::FleetCallbacks;
pub use certs::{ClientCa, ClientCaError};
pub use cli::{ServerArgs, StoreKind, main_with_log_filter, run};
pub use fleet::FleetOptions;
pub use store::{FleetStore, FleetStoreError};

use opamp_server::Registry;

/// Locks `mutex`, poisoned or not: what it guards stays usable after a
/// panic elsewhere.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fleet server's logic, shared by the OpAMP callbacks and the web API.
/// Cheap to clone.
#[derive(Clone)]
pub struct FleetServer {
    fleet: Arc<fleet::Fleet>,
    follower: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for FleetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetServer").finish_non_exhaustive()
    }
}

impl FleetServer {
    /// Builds the fleet over `store` (which also backs the registry, and on
    /// PostgreSQL its message bus) and starts following registry events.
    /// Call inside a Tokio runtime.
    pub fn new(store: FleetStore, options: FleetOptions) -> Self {
        let registry = match store.pg_backend() {
            Some(backend) => Registry::builder()
                .store(backend.store())
                .bus(backend.bus())
                .build(),
            None => Registry::builder().store(store.clone()).build(),
        };
        let fleet = fleet::Fleet::new(registry, store, options);
        let follower = tokio::spawn(Arc::clone(&fleet).follow());
        Self {
            fleet,
            follower: Arc::new(std::sync::Mutex::new(Some(follower))),
        }
    }

    /// The agent registry, to mount in an `opamp_server` server.
    pub fn registry(&self) -> &Registry {
        &self.fleet.registry
    }

    /// The callbacks to give the `opamp_server` server.
    pub fn callbacks(&self) -> FleetCallbacks {
        FleetCallbacks {
            fleet: Arc::clone(&self.fleet),
        }
    }

    /// An OpAMP server builder wired to this fleet's registry and callbacks;
    /// add TLS or limits, then build and serve it (or mount it in axum).
    pub fn opamp_builder(&self) -> opamp_server::ServerBuilder<FleetCallbacks> {
        opamp_server::OpampServer::builder()
            .registry(self.fleet.registry.clone())
            .callbacks(self.callbacks())
    }

    /// The page and the JSON API (`/`, `/assets/*`, `/api/*`).
    pub fn api_router(&self) -> axum::Router {
        api::router(Arc::clone(&self.fleet))
    }

    /// Package downloads (`/packages/{file}`) from the packages directory.
    pub fn downloads_router(&self) -> axum::Router {
        api::downloads_router(&self.fleet.options.packages_dir)
    }

    /// Ends the page's live event streams (so graceful shutdown can finish)
    /// and stops following registry events.
    pub async fn stop(&self) {
        self.fleet.stop();
        let follower = lock(&self.follower).take();
        if let Some(follower) = follower
            && let Err(error) = follower.await
        {
            tracing::warn!(%error, "fleet event follower failed");
        }
    }
}
