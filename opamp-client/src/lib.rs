//! The agent side of OpenTelemetry's **Open Agent Management Protocol**
//! (OpAMP), over WebSocket and plain HTTP.
//!
//! An agent (or a supervisor) builds an [`OpampClient`], sets its initial
//! state, starts it, and from then on reports state changes through setters
//! while the server's requests arrive through [`Callbacks`]:
//!
//! ```no_run
//! use opamp_client::{AgentCapabilities, AgentDescription, Callbacks, MessageData, OpampClient};
//! use opamp_client::proto::{RemoteConfigStatus, RemoteConfigStatuses};
//!
//! struct Agent;
//!
//! impl Callbacks for Agent {
//!     fn on_message(&self, client: &OpampClient, data: &MessageData) {
//!         let Some(offer) = &data.remote_config else { return };
//!         // ... validate and apply `offer.config` here (RCFG-15) ...
//!         client.set_remote_config_status(RemoteConfigStatus {
//!             last_remote_config_hash: offer.config_hash.clone(),
//!             status: RemoteConfigStatuses::Applied as i32,
//!             error_message: String::new(),
//!         });
//!     }
//! }
//!
//! # async fn run() -> Result<(), opamp_client::ClientError> {
//! let client = OpampClient::builder("wss://opamp.example.com/v1/opamp")
//!     .agent_description(AgentDescription::for_service("io.example.agent", "1.0.0"))
//!     .capabilities(
//!         AgentCapabilities::ACCEPTS_REMOTE_CONFIG
//!             | AgentCapabilities::REPORTS_REMOTE_CONFIG
//!             | AgentCapabilities::REPORTS_HEARTBEAT,
//!     )
//!     .callbacks(Agent)
//!     .build()?;
//! client.start().await?;
//! // ... run the agent; report changes with client.set_health(..) etc. ...
//! client.stop().await; // sends agent_disconnect, then closes
//! # Ok(()) }
//! ```
//!
//! # Shape
//!
//! - [`ClientCore`] is the whole protocol as a sans-IO state machine: no
//!   sockets, no clock. It takes received messages, the current time and
//!   setter calls, and yields messages to send ([`ClientCore::poll_transmit`]),
//!   [`Event`]s for the agent and the next instant it needs
//!   ([`ClientCore::poll_timeout`]). It is public for embedders with their
//!   own transport.
//! - [`OpampClient`] drives one core with a tokio task per transport: the
//!   endpoint scheme picks WebSocket (`ws`, `wss`) or plain HTTP (`http`,
//!   `https`). Callbacks run on their own queue, so a slow callback never
//!   stalls heartbeats (see [`Callbacks`]).
//! - Packages ([`PackageSyncer`], [`PackageStore`], [`PackageVerifier`]) run
//!   in the background when a [`ClientBuilder::package_store`] is given.
//!
//! # Protocol behaviour
//!
//! - **Start** checks that an agent description is set and that the
//!   capabilities match what was provided (health, available components,
//!   package store); `ReportsStatus` is always set (CAP-03).
//! - **Messages**: the first carries the full state (STS-01); every message
//!   carries the instance uid, capabilities and a `sequence_num` one higher
//!   than the last (SEQ-01, CAP-01); later ones carry only what changed
//!   (SEQ-02..04). `ReportFullState` resends everything (SEQ-06);
//!   available components go as a hash unless the server sets
//!   `ReportAvailableComponents` (AC-03, AC-04). Changes made between two
//!   messages are coalesced (ERR-06).
//! - **Instance uid**: given, or a fresh UUIDv7. A server-assigned
//!   `new_instance_uid` of exactly 16 bytes is used from then on and handed
//!   to [`Callbacks::on_new_instance_uid`]; any other length is ignored
//!   (UID-03, UID-08).
//! - **Heartbeats** (with `ReportsHeartbeat`): every 30 s by default,
//!   counted from the last message sent (HB-06); a server-offered
//!   `heartbeat_interval_seconds` wins (HB-03). A server-sent **0 disables
//!   heartbeats over WebSocket**, and is **ignored over plain HTTP**, which
//!   must keep polling (AMB-01). Over HTTP the polling interval is the
//!   offered heartbeat interval, else the configured polling interval
//!   (HTTP-13, HTTP-14).
//! - **WebSocket**: one immediate reconnect after a lost connection, then
//!   backoff with jitter (WS-19); `Retry-After` on 429/503 upgrade refusals
//!   (WS-24); `error_response` UNAVAILABLE → goodbye, close, wait
//!   `retry_info` (or backoff), reconnect with the full state (WS-23); stop →
//!   `agent_disconnect`, Close frame, bounded wait (WS-17).
//! - **Plain HTTP**: one request in flight (HTTP-10); pending changes go
//!   right after the previous response (HTTP-11), minimal polls otherwise
//!   (HTTP-12); transport errors, 5xx, 429 and 503 are retried with backoff
//!   (and `Retry-After`) **keeping the unsent content**, merged into the
//!   next message; 413 is not retried (HTTP-17); stop sends
//!   `agent_disconnect` (HTTP-24).
//! - **Errors**: BAD_REQUEST and UNKNOWN go to
//!   [`Callbacks::on_error_response`] and are not retried (ERR-03).
//! - **Capabilities gate what is received** (CAP-06): remote config, each
//!   class of connection settings (CS-01), packages, the restart command
//!   (whose message is otherwise ignored, CMD-03) and custom messages of
//!   undeclared capabilities (CUS-04).
//! - **Connection settings**: an offer whose hash equals the last processed
//!   one is skipped; with `ReportsConnectionSettingsStatus` the client
//!   reports APPLYING, then APPLIED or FAILED (CS-07, CS-08). New OpAMP
//!   settings are verified by connecting with them first; on failure the
//!   client goes back to the old ones (CS-05, CS-06). Every step of that
//!   flow is the core's decision: it tells the driver which settings to
//!   connect with ([`SettingsCommand`]), and a candidate saved before a
//!   crash can be tried again with [`ClientCore::resume_candidate`].
//! - **Custom messages**: one pending at a time
//!   ([`ClientError::CustomMessagePending`]), only for declared capabilities.
#![forbid(unsafe_code)]

mod callbacks;
mod client;
mod driver;
mod endpoint;
mod error;
mod http_driver;
mod lifecycle;
mod packages;
mod protocol;
mod settings;
mod shared;
mod ws_driver;

#[allow(deprecated)]
pub use client::NoopCallbacks;
pub use client::{Callbacks, NoCallbacks, OpampClient};
pub use error::ClientError;
#[allow(deprecated)]
pub use packages::StoreError;
pub use packages::{
    Download, DownloadError, Downloader, FsPackageStore, IgnoreSignatures, InstalledPackage,
    MemoryPackageStore, PackageEvent, PackageInfo, PackageStore, PackageStoreError,
    PackageSyncError, PackageSyncer, PackageSyncerBuilder, PackageToVerify, PackageVerifier,
    PackageWriter, RejectSignedPackages, SignatureCheck, VerifyError,
};
pub use protocol::{
    ClientCore, CoreConfig, DEFAULT_HEARTBEAT_INTERVAL, Event, MessageData, ProtocolError,
    SendFailure, SettingsCommand, SettingsOutcome, TransportKind,
};
pub use settings::{ClientBuilder, DEFAULT_SHUTDOWN_TIMEOUT};
pub use shared::TransportError;

/// The OpAMP protocol types ([`opamp_proto`]), so agents need no direct
/// dependency.
pub use opamp_proto as proto;

// The types used most, at the root.
pub use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentToServerFlags, ComponentHealth, InstanceUid,
};
pub use opamp_transport::{
    ClientTlsConfig, ExponentialBackoff, ProxyConfig, RetryPolicy, RetryPolicyFactory,
};
