//! The server side of OpenTelemetry's **Open Agent Management Protocol**
//! (OpAMP): one endpoint for WebSocket and plain-HTTP agents, an agent
//! registry that does the protocol bookkeeping, and push to any agent.
//!
//! A fleet server that pushes a configuration to every agent that connects:
//!
//! ```no_run
//! use opamp_proto::{AgentConfigMap, AgentConfigObject, AgentToServer, ServerToAgent};
//! use opamp_server::{AgentEvent, Callbacks, Connection, DEFAULT_PORT, OpampServer};
//!
//! struct Fleet;
//!
//! impl Callbacks for Fleet {
//!     async fn on_message(&self, connection: &Connection, message: &AgentToServer) -> Option<ServerToAgent> {
//!         println!("{:?} says: sequence {}", connection.agents(), message.sequence_num);
//!         None // the registry's own reply (plus an acknowledgement) is enough
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let server = OpampServer::new(Fleet);
//!     let registry = server.registry().clone();
//!     let mut events = registry.subscribe();
//!     tokio::spawn(async move {
//!         while let Ok(event) = events.recv().await {
//!             let AgentEvent::Connected { uid, .. } = event else { continue };
//!             let mut config = AgentConfigMap::default();
//!             let object = AgentConfigObject {
//!                 body: "log_level: debug\n".into(),
//!                 content_type: "text/yaml".into(),
//!                 ..Default::default()
//!             };
//!             config.config_map.insert("agent.yaml".into(), object);
//!             // Refused unless the agent accepts remote config (RCFG-02).
//!             match registry.set_remote_config(uid, config).await {
//!                 Ok(offer) => println!("{uid}: config {:x?} offered", &offer.hash[..4]),
//!                 Err(error) => println!("{uid}: {error}"),
//!             }
//!         }
//!     });
//!     let listener = tokio::net::TcpListener::bind(("0.0.0.0", DEFAULT_PORT)).await?;
//!     server.serve(listener).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Serving
//!
//! [`OpampServer`] is a `tower::Service<http::Request<B>>` with
//! `Error = Infallible` and a cheap `Clone`. Requests are told apart by
//! their head (WS-16, HTTP-04): `Content-Type: application/x-protobuf` is a
//! plain-HTTP exchange, a WebSocket upgrade opens a WebSocket, anything else
//! gets 400, 405 or 415. Mount it in axum next to other routes:
//!
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use axum::extract::{ConnectInfo, Request};
//! use axum::middleware::{self, Next};
//! use axum::{Router, routing::get};
//! use opamp_server::{OpampServer, PeerInfo};
//!
//! /// Optional: lets callbacks and `Connection::peer_addr` see the peer.
//! async fn peer_info(ConnectInfo(addr): ConnectInfo<SocketAddr>, mut request: Request, next: Next) -> axum::response::Response {
//!     request.extensions_mut().insert(PeerInfo { addr: Some(addr), certificates: None });
//!     next.run(request).await
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = OpampServer::builder().build();
//! let app = Router::new()
//!     .route("/healthz", get(|| async { "ok" }))
//!     .route_service("/v1/opamp", server.clone())
//!     .layer(middleware::from_fn(peer_info));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:4320").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! server.shutdown().await; // Close (1001) to every WebSocket
//! # Ok(()) }
//! ```
//!
//! Or run it alone with [`OpampServer::serve`] /
//! [`serve_with_shutdown`](OpampServer::serve_with_shutdown): hyper-util's
//! auto builder with upgrades, default path `/v1/opamp` (GEN-03), TLS and
//! mutual TLS via [`ServerTlsConfig`] (the client certificate chain reaches
//! callbacks in [`PeerInfo`]), a header read timeout against slowloris
//! clients, and graceful shutdown: Close 1001 to every WebSocket, in-flight
//! plain-HTTP requests drained. Listen on [`DEFAULT_PORT`] (4320, GEN-04).
//!
//! # What the server does for you
//!
//! - Every message gets a reply (STS-04) carrying the agent's
//!   `instance_uid` (UID-06); the first reply on a connection carries the
//!   server capabilities and custom capabilities (CAP-07, CUS-01).
//! - The [`Registry`] keeps each agent's merged full status from compressed
//!   reports (SEQ-02), asks for `ReportFullState` after a `sequence_num` gap
//!   or a reconnect the server has no state for (SEQ-05), without looping on
//!   agents that start at 0 or repeat numbers; detects duplicate instance
//!   uids and assigns a new one or refuses (UID-09/10,
//!   [`DuplicateUidPolicy`]) — but first pings an old WebSocket that has
//!   gone quiet, and lets an agent whose old connection is dead keep its
//!   uid; assigns uids on request (UID-05); forgets agents on
//!   `agent_disconnect` (MSG-07) and plain-HTTP agents that stop polling
//!   for a few of their own polling intervals
//!   ([`RegistryBuilder::stale_after`], [`RegistryBuilder::stale_floor`]);
//!   slows down agents that reconnect in a loop ([`ReconnectGuard`]); and
//!   publishes [`AgentEvent`]s.
//! - Connection settings reach an agent that cannot report their status
//!   (no `ReportsConnectionSettingsStatus`, like the Collector's supervisor)
//!   once: its reconnect with the new settings completes the offer (CS-06).
//! - WebSocket keepalive pings ([`Keepalive`]) close links that went dead
//!   without a FIN.
//! - Desired state ([`Registry::set_remote_config`],
//!   [`offer_packages`](Registry::offer_packages),
//!   [`offer_connection_settings`](Registry::offer_connection_settings)) is
//!   hashed, pushed at once over WebSocket, sent with the next poll over
//!   plain HTTP (HTTP-15), re-offered until the agent echoes the hash
//!   (RCFG-08, PKG-14, CS-11) and tracked to APPLIED or FAILED
//!   ([`Registry::wait_for_remote_config`]). Every offer, restart and
//!   custom message is refused with [`SendError::NotAccepted`] unless the
//!   agent announced the capability (RCFG-02, CAP-09); offers in callback
//!   replies are stripped instead.
//! - Throttling: reply with [`unavailable_response`] (WS-22) or refuse
//!   connections in [`Callbacks::on_connecting`] with
//!   [`Refusal::service_unavailable`] / [`Refusal::too_many_requests`]
//!   (WS-24, HTTP-21).
//!
//! # The core and the shell
//!
//! The protocol decisions live in [`ServerCore`], a pure state machine in
//! the style of quinn-proto: no tokio, no clock reads, no store, no locks.
//! It takes one message with what the instance knows (the agent's
//! [`AgentSession`], the stored [`AgentRecord`] when it asks for it, the
//! state of a rival connection) and explicit instants, and returns an
//! [`Exchange`]: the reply, the session, the records to save, the events
//! and the [`Disposition`] of the connection. The [`Registry`] is the
//! shell: it serialises messages per agent, loads only when the core asks
//! ([`Step::NeedRecord`]; bare heartbeats never do), pings a rival
//! connection when asked ([`Step::NeedProbe`]), saves only what the core
//! says changed, emits, and delivers. WebSocket and plain HTTP go through
//! the same exchange. Custom transports and tests can drive the core
//! directly:
//!
//! ```
//! use std::time::{Instant, SystemTime};
//! use opamp_proto::{AgentToServer, InstanceUid};
//! use opamp_server::{ConnectionRef, Holder, Inbound, ServerCore, Step, Stored, TransportKind};
//!
//! let core = ServerCore::default();
//! let uid = InstanceUid::from_array([7; 16]);
//! let message = AgentToServer { instance_uid: uid.to_bytes(), ..Default::default() };
//! let connection = ConnectionRef::new(1, TransportKind::WebSocket, None);
//! let inbound = Inbound::new(uid, &message, connection, Instant::now(), SystemTime::now(), &InstanceUid::new_v7);
//! // A newcomer: the core wants the stored record first.
//! assert!(matches!(core.step(&inbound, &Holder::Nobody, Stored::NotLoaded, None), Step::NeedRecord));
//! let Step::Done(exchange) = core.step(&inbound, &Holder::Nobody, Stored::Missing, None) else { panic!() };
//! assert_eq!(exchange.reply.instance_uid, uid.to_bytes()); // UID-06
//! assert_eq!(exchange.save.len(), 1); // a new record to store
//! ```
//!
//! # Limits
//!
//! Message size both ways, measured after decompression (WebSocket close
//! 1009, HTTP 413; WS-09, HTTP-17); connection count (503 with
//! `Retry-After`); WebSocket idle timeout (a multiple of the heartbeat
//! interval); header and body read timeouts; a bounded send queue per
//! WebSocket (an agent that does not read is disconnected,
//! [`SendError::QueueFull`]). Per-connection memory stays small: a 4 KiB
//! read buffer, boxed queued messages, no per-connection big allocations.
//!
//! # More than one instance
//!
//! The registry keeps records behind [`AgentStore`] ([`MemoryStore`] by
//! default) and reaches agents connected to other instances through
//! [`MessageBus`] ([`LocalBus`] by default); the registry tells the bus
//! when an agent's connection starts and ends on this instance
//! ([`MessageBus::agent_connected`]) and asks it for pushes other instances
//! left for a polling plain-HTTP agent ([`MessageBus::take_pending`]). The
//! `opamp-server-postgres` crate implements both on PostgreSQL.
#![forbid(unsafe_code)]

mod bus;
mod callbacks;
mod connection;
mod error;
mod events;
mod messages;
mod protocol;
mod record;
mod registry;
mod serve;
mod server;
mod shared;
mod store;
#[cfg(test)]
mod test_messages;
mod vocab;
mod ws;

pub use bus::{BusInbox, LocalBus, MessageBus};
pub use callbacks::{
    AgentMessageError, Callbacks, ConnectDecision, ConnectRequest, DisconnectReason, NoCallbacks,
    Refusal,
};
pub use connection::{Connection, Delivery, PeerInfo, TransportKind};
pub use error::{BusError, SendError, ServeError, StoreError};
pub use events::{AgentEvent, StatusChanges};
pub use messages::{bad_request_response, unavailable_response};
/// The protocol's message types, re-exported so that users of this crate
/// need not depend on `opamp-proto` themselves.
pub use opamp_proto as proto;
pub use opamp_transport::{ClientAuth, ServerTlsConfig};
pub use protocol::{
    AgentSession, ConnectionRef, CoreSettings, Disposition, DuplicateUidPolicy, Exchange, Holder,
    Inbound, Liveness, ReconnectGuard, ReconnectHistory, ServerCore, Step, Stored,
};
pub use record::{AgentRecord, AgentStatus, ConnectionSummary, DesiredState, RemoteConfigState};
pub use registry::{
    DEFAULT_PROBE_DEADLINE, DEFAULT_STALE_AFTER, DEFAULT_STALE_FLOOR, Offer, Registry,
    RegistryBuilder,
};
pub use server::{
    DEFAULT_CAPABILITIES, DEFAULT_PATH, DEFAULT_PORT, Keepalive, OpampServer, ResponseBody,
    ServerBuilder,
};
pub use store::{AgentStore, BoxFuture, MemoryStore};
