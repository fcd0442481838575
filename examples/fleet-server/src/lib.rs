//! The example fleet server: web page, JSON API and embedded store around
//! `opamp-server`.

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
mod view;

use std::sync::Arc;

pub use callbacks::FleetCallbacks;
pub use certs::{ClientCa, ClientCaError};
pub use cli::{ServerArgs, StoreKind, run};
pub use fleet::FleetOptions;
pub use store::{FleetStore, FleetStoreError};

use opamp_server::Registry;

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
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(follower) = follower
            && let Err(error) = follower.await
        {
            tracing::warn!(%error, "fleet event follower failed");
        }
    }
}
