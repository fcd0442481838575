//! PostgreSQL backend for [`opamp_server`]: several server instances behind
//! a load balancer share one fleet.
//!
//! It provides the two extension points of [`opamp_server::Registry`]:
//!
//! - [`PgStore`], an [`AgentStore`](opamp_server::AgentStore): one row per
//!   agent in `opamp_agents`, the record's compact encoding plus columns a
//!   fleet UI filters and sorts by (service name and version, host name, OS,
//!   transport, connected instance, last seen, remote config state, health).
//!   Writes are compare-and-set on a `version` column, with a three-way merge
//!   that never lets one writer silently drop another's desired state.
//! - [`PgBus`], a [`MessageBus`](opamp_server::MessageBus): records which
//!   instance holds each agent's connection, with an epoch that fences stale
//!   owners, and carries pushes to that instance through an outbox table and
//!   `NOTIFY`. Pushes for plain-HTTP agents wait for the next poll, wherever
//!   it lands.
//!
//! Both come from one [`PgBackend`] per server instance, which owns the
//! connection pool, applies the schema migrations at start, renews the
//! instance's lease and runs the listener.
//!
//! # Quick start
//!
//! ```no_run
//! use opamp_server::{OpampServer, Registry, DEFAULT_PORT};
//! use opamp_server_postgres::{Config, PgBackend};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let database: Config = "host=db.internal user=opamp dbname=fleet".parse()?;
//!     // Unique among running instances: a pod or host name.
//!     let backend = PgBackend::connect(database, "opamp-0").await?;
//!     let bus = backend.bus();
//!     let registry = Registry::builder()
//!         .store(backend.store())
//!         .bus(bus)
//!         .build();
//!
//!     // The registry tells the bus when an agent's connection starts and
//!     // ends here (`MessageBus::agent_connected` / `agent_disconnected`):
//!     // the bus claims the agent for this instance with a new epoch and
//!     // releases it, and plain-HTTP polls pick up pushes left elsewhere.
//!     let server = OpampServer::builder().registry(registry).build();
//!     let listener = tokio::net::TcpListener::bind(("0.0.0.0", DEFAULT_PORT)).await?;
//!     server.serve(listener).await?;
//!     backend.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! # Driver
//!
//! [`tokio_postgres`] with a [`deadpool_postgres`] pool. The bus needs a
//! long-lived connection that receives `NOTIFY` messages between queries,
//! which `tokio_postgres::Connection::poll_message` gives directly; the
//! pool keeps prepared statements per connection (`prepare_cached`), so
//! every store and bus operation is one round trip. SQL is plain text in
//! this crate: no query macros that need a live database at compile time
//! (as sqlx's do), no ORM, and the whole schema is in readable migration
//! files. Connections use TLS through rustls
//! ([`PgBackendBuilder::tls`], with `sslmode=require` in the settings to
//! insist on it), or none.
//!
//! # Schema and migrations
//!
//! The migrations in `migrations/*.sql` are embedded in the binary and
//! applied by [`PgBackendBuilder::connect`] in one transaction under an
//! advisory lock, recorded in `opamp_schema_migrations`; instances starting
//! together apply each exactly once, and an instance older than the schema
//! refuses to start ([`PgError::SchemaTooNew`]). Tables, all prefixed
//! `opamp_`:
//!
//! | table | one row per | written when |
//! |---|---|---|
//! | `opamp_agents` | agent | the registry saves a change (bare heartbeats write nothing) |
//! | `opamp_instances` | server instance | start, and once per lease third |
//! | `opamp_agent_owner` | agent | its connection starts or ends on an instance |
//! | `opamp_outbox` | push in flight | a push for an agent held elsewhere; deleted when taken |
//!
//! # Writers on several instances
//!
//! Saves are compare-and-set on `opamp_agents.version`, and a save that lost
//! merges three ways against what it loaded: reported state from the side
//! that changed it, each desired part (remote config, packages, connection
//! settings) from the side that changed it, and a
//! [`SaveConflict::DesiredStateChanged`] when both changed the same part
//! differently. An instance whose claim on the agent is older than the
//! current one cannot overwrite what the agent reported
//! ([`SaveConflict::StaleOwner`]). See [`PgStore`].
//!
//! # Instances dying, the database dying
//!
//! An instance renews its lease with one statement every third of
//! [`PgBackendBuilder::lease`]; once it has run out, pushes for its
//! WebSocket agents get no route (they reconnect elsewhere, and the new
//! instance claims them with a newer epoch). While the database is
//! unreachable, saves and forwards fail with errors the registry logs (it
//! asks agents for their full state once the store works again), the
//! listener reconnects with backoff and then re-reads everything addressed
//! to this instance, since notifications sent meanwhile are lost.
#![forbid(unsafe_code)]

mod backend;
mod bus;
mod error;
mod listener;
mod migrate;
mod shared;
mod store;
mod tls;

pub use backend::{DEFAULT_LEASE, DEFAULT_PENDING_TTL, PgBackend, PgBackendBuilder};
pub use bus::PgBus;
pub use error::{PgError, SaveConflict};
/// The protocol's message types, re-exported so that users of this crate
/// need not depend on `opamp-proto` themselves.
pub use opamp_proto as proto;
pub use store::PgStore;
/// Connection settings (`host=... user=... dbname=...` or a
/// `postgresql://` URL), re-exported from [`tokio_postgres`].
pub use tokio_postgres::Config;
