//! PostgreSQL backend for [`opamp_server`]: several server instances share
//! one fleet.
//!
//! TODO guide
#![forbid(unsafe_code)]

mod backend;
mod bus;
mod error;
mod listener;
mod migrate;
mod store;

pub use backend::{DEFAULT_LEASE, DEFAULT_PENDING_TTL, PgBackend, PgBackendBuilder};
pub use bus::PgBus;
pub use error::{PgError, SaveConflict};
pub use store::PgStore;
pub use tokio_postgres::Config;
