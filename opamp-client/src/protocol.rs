//! The sans-IO protocol core: every client-side OpAMP rule that does not
//! need a socket or a clock.
//!
//! [`ClientCore`] is fed inputs (connection events, received messages, the
//! current time, setter calls) and is polled for outputs (messages to send,
//! events for the embedder, the next instant it wants to be woken at). The
//! tokio drivers in this crate are thin loops around it; tests drive it with
//! explicit `Instant`s.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentDisconnect, AgentRemoteConfig, AgentToServer,
    AgentToServerFlags, AvailableComponents, ComponentHealth, ConnectionSettingsOffers,
    ConnectionSettingsRequest, ConnectionSettingsStatus, ConnectionSettingsStatuses,
    CustomCapabilities, CustomMessage, EffectiveConfig, InstanceUid, Message,
    OpAmpConnectionSettings, PackageStatuses, PackagesAvailable, RemoteConfigStatus,
    RemoteConfigStatuses, ServerCapabilities, ServerErrorResponse, ServerErrorResponseType,
    ServerToAgent, ServerToAgentCommand, ServerToAgentFlags, server_error_response,
};
use opamp_transport::RetryPolicy;

use crate::error::ClientError;

/// Writes [`ClientCore`] setters that hand a reported value to its tracked
/// field, which is sent when it changed.
macro_rules! report_setters {
    ($(
        $(#[$attr:meta])*
        pub fn $name:ident($arg:ident: $ty:ty) => $field:ident;
    )*) => {
        $(
            $(#[$attr])*
            pub fn $name(&mut self, $arg: $ty) {
                self.$field.set($arg);
            }
        )*
    };
}

/// Default heartbeat interval (WS-14, HB-10) and HTTP polling interval
/// (HTTP-13): 30 seconds.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

pub use opamp_transport::TransportKind;

/// Static configuration of a [`ClientCore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoreConfig {
    /// The transport the core is driven over.
    pub transport: TransportKind,
    /// The agent's instance uid at start (UID-01..04).
    pub instance_uid: InstanceUid,
    /// Heartbeat interval used while the server has not offered one
    /// (HB-10). `Duration::ZERO` disables heartbeats over WebSocket.
    /// Heartbeats are only sent with `ReportsHeartbeat` set (HB-11).
    pub heartbeat_interval: Duration,
    /// Plain-HTTP polling interval used while the server has not offered a
    /// heartbeat interval (HTTP-13, HTTP-14). Zero is treated as the default
    /// because HTTP must keep polling (HTTP-12).
    pub polling_interval: Duration,
    /// Outgoing messages larger than this (encoded, plus the WebSocket
    /// header byte) are dropped and reported (WS-12, HTTP-20).
    pub max_message_size: usize,
    /// Whether a package syncer is wired up. `AcceptsPackages` needs one.
    pub packages_supported: bool,
    /// WebSocket: how long a sent message may stay unanswered before the
    /// connection is taken for dead and replaced. The server answers every
    /// message (STS-04), so silence this long means a connection that lost
    /// its peer without a close (a "black hole", e.g. a NAT that forgot the
    /// flow), which TCP alone would notice only after many minutes.
    pub reply_timeout: Duration,
}

impl CoreConfig {
    /// A configuration with the default intervals and size limit.
    pub fn new(transport: TransportKind, instance_uid: InstanceUid) -> Self {
        Self {
            transport,
            instance_uid,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            polling_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_message_size: opamp_transport::DEFAULT_MAX_MESSAGE_SIZE,
            packages_supported: false,
            reply_timeout: opamp_transport::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Data from one `ServerToAgent` for the embedder, already filtered by the
/// agent's capabilities (CAP-06).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MessageData {
    /// A remote configuration offer (only with `AcceptsRemoteConfig`).
    pub remote_config: Option<AgentRemoteConfig>,
    /// The server's custom capabilities (CUS-01).
    pub custom_capabilities: Option<CustomCapabilities>,
    /// A custom message for a capability the agent declared (CUS-04).
    pub custom_message: Option<CustomMessage>,
}

impl MessageData {
    fn is_empty(&self) -> bool {
        self.remote_config.is_none()
            && self.custom_capabilities.is_none()
            && self.custom_message.is_none()
    }
}

/// Something the embedder has to act on, produced by [`ClientCore`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Remote config, server custom capabilities or a custom message.
    Message(MessageData),
    /// The server answered with `error_response` (ERR-01).
    ErrorResponse(ServerErrorResponse),
    /// New OpAMP connection settings were offered (only with
    /// `AcceptsOpAMPConnectionSettings`). Answer with
    /// [`ClientCore::accept_opamp_connection_settings`] (the settings to try,
    /// e.g. with a private key filled in) or
    /// [`ClientCore::refuse_opamp_connection_settings`]. Accepted settings
    /// are verified by connecting with them (CS-05): the core then asks for
    /// the switch with [`SettingsCommand`]s.
    OpampConnectionSettings {
        /// `ConnectionSettingsOffers.hash` of the offer.
        hash: Bytes,
        /// The offered settings.
        settings: Box<OpAmpConnectionSettings>,
    },
    /// Verifying accepted OpAMP settings ended (CS-06 steps 6–9): `Ok` means
    /// the client now uses them (persist them), `Err` that it went back to
    /// the previous ones. The status is already reported (CS-08).
    OpampConnectionSettingsOutcome {
        /// The settings that were tried.
        settings: Box<OpAmpConnectionSettings>,
        /// Why they were not kept, if they were not.
        result: Result<(), String>,
    },
    /// Own-telemetry or other connection settings were offered. Only the
    /// classes the agent has capabilities for are kept (CS-01); `opamp` is
    /// always `None` here.
    OtherConnectionSettings {
        /// `ConnectionSettingsOffers.hash` of the offer.
        hash: Bytes,
        /// The filtered offer.
        offers: Box<ConnectionSettingsOffers>,
        /// Whether the same offer also carries OpAMP settings (then reported
        /// as [`Event::OpampConnectionSettings`] right after this event).
        /// Hand the outcome back with
        /// [`ClientCore::handle_other_settings_outcome`].
        opamp_offered: bool,
    },
    /// Packages were offered (only with `AcceptsPackages`).
    PackagesAvailable(PackagesAvailable),
    /// A command (only with `AcceptsRestartCommand`); the rest of that
    /// message was ignored (CMD-03).
    Command(ServerToAgentCommand),
    /// The server assigned a new instance uid (UID-08); it is already in use
    /// and should be persisted.
    NewInstanceUid(InstanceUid),
    /// A protocol problem that was handled locally.
    ProtocolError(ProtocolError),
}

/// What became of an offer of own-telemetry or other connection settings
/// (CS-08, CS-42), as the agent says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsOutcome {
    /// Applied: the client reports APPLIED.
    Applied,
    /// Could not be applied: the client reports FAILED with this message.
    Failed(String),
    /// Being applied in the background: the agent reports the outcome later
    /// with `set_connection_settings_status`. The client has already
    /// reported APPLYING.
    Later,
}

/// What the driver must do with its connection settings while offered
/// OpAMP settings are verified (CS-05, CS-06). The driver decides nothing:
/// it turns the settings into its own options and connects with whatever
/// it was last told.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SettingsCommand {
    /// CS-06 step 5: make these settings (over the current ones, CS-04) the
    /// candidate and use them for the next connection (WebSocket) or
    /// request (plain HTTP). Report how that went with
    /// [`ClientCore::handle_connected`] or, if they cannot be used or
    /// reached, [`ClientCore::handle_candidate_failed`].
    TryCandidate(Box<OpAmpConnectionSettings>),
    /// CS-06 step 8: the candidate worked; it replaces the previous
    /// settings.
    KeepCandidate,
    /// CS-06 step 9: the candidate failed; forget it and go back to the
    /// previous settings.
    DropCandidate,
}

/// A problem the core handled on its own and reports for visibility.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// `agent_identification.new_instance_uid` was not 16 bytes; it was
    /// ignored (UID-03, UID-07).
    #[error("server sent a new_instance_uid of {len} bytes, expected 16; ignored")]
    InvalidNewInstanceUid {
        /// The length received.
        len: usize,
    },
    /// An outgoing message exceeded the size limit and was not sent (WS-12,
    /// HTTP-20).
    #[error("outgoing message of {size} bytes exceeds the limit of {limit} bytes; dropped")]
    OutgoingTooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// How a plain-HTTP request failed, as far as the core needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFailure {
    /// A transport error, timeout, 5xx, 429 or 503: resend later, keeping
    /// the message's content pending. `retry_after` is the server's
    /// `Retry-After`, if any (HTTP-21).
    Retryable {
        /// The server's hint.
        retry_after: Option<Duration>,
    },
    /// The request must not be sent again (413 Content Too Large, HTTP-17,
    /// or another 4xx).
    Rejected,
}

/// One status sub-message with "changed since last sent" tracking
/// (status compression, SEQ-02..04).
#[derive(Debug, Clone)]
struct Tracked<T> {
    value: Option<T>,
    dirty: bool,
}

impl<T: PartialEq + Clone> Tracked<T> {
    fn empty() -> Self {
        Self {
            value: None,
            dirty: false,
        }
    }

    /// Stores `value`; marks it for sending only if it differs.
    fn set(&mut self, value: T) -> bool {
        if self.value.as_ref() == Some(&value) {
            return false;
        }
        self.value = Some(value);
        self.dirty = true;
        true
    }

    fn mark(&mut self) {
        self.dirty = self.value.is_some();
    }

    /// Marks the value for sending again if `condition` holds.
    fn mark_if(&mut self, condition: bool) {
        if condition {
            self.mark();
        }
    }

    fn take(&mut self) -> Option<T> {
        if std::mem::take(&mut self.dirty) {
            self.value.clone()
        } else {
            None
        }
    }

    /// Like [`take`](Self::take), but gives nothing unless `allowed`.
    fn take_if(&mut self, allowed: bool) -> Option<T> {
        self.take().filter(|_| allowed)
    }
}

/// Where the connection is. Plain HTTP stays `Up` (every request is its
/// own exchange) until stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not started yet.
    Idle,
    /// Not connected; connect at (or after) this instant.
    Down { connect_at: Instant },
    /// Connected (WebSocket) or ready for requests (HTTP).
    Up,
    /// Waiting for the driver to close the connection, then do `then`.
    Closing { then: AfterClose },
    /// Stopped for good.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterClose {
    Reconnect { at: Instant },
    Stop,
}

/// The OpAMP part of a connection settings offer on its way through the
/// offer flow (CS-06).
#[derive(Debug, Clone)]
struct OpampOffer {
    /// `ConnectionSettingsOffers.hash`, for the status reports.
    hash: Bytes,
    stage: OfferStage,
}

#[derive(Debug, Clone)]
enum OfferStage {
    /// Handed to the agent, which accepts or refuses it.
    WithAgent,
    /// Accepted as the candidate (step 3); the current connection is being
    /// closed (step 4).
    Disconnecting(Box<OpAmpConnectionSettings>),
    /// The driver connects (or sends) with the candidate (step 5).
    Trying(Box<OpAmpConnectionSettings>),
}

/// The OpAMP client protocol as a sans-IO state machine.
///
/// A driver loop, for either transport:
/// 1. feed inputs: [`handle_connected`](Self::handle_connected),
///    [`handle_connect_failed`](Self::handle_connect_failed),
///    [`handle_disconnected`](Self::handle_disconnected) (WebSocket),
///    [`handle_message`](Self::handle_message),
///    [`handle_send_failed`](Self::handle_send_failed) (HTTP),
///    [`handle_timeout`](Self::handle_timeout), the setters and the agent's
///    answers to connection settings offers;
/// 2. carry out every [`poll_settings_command`](Self::poll_settings_command),
///    send every message [`poll_transmit`](Self::poll_transmit) yields,
///    deliver every [`poll_event`](Self::poll_event), connect when
///    [`wants_connect`](Self::wants_connect), close when
///    [`wants_close`](Self::wants_close);
/// 3. sleep until [`poll_timeout`](Self::poll_timeout) or the next input.
///
/// ```
/// use std::time::Instant;
/// use opamp_client::{
///     AgentDescription, ClientCore, CoreConfig, ExponentialBackoff, InstanceUid, TransportKind,
/// };
///
/// let config = CoreConfig::new(TransportKind::PlainHttp, InstanceUid::new_v7());
/// let mut core = ClientCore::new(config, Box::new(ExponentialBackoff::new()));
/// core.set_agent_description(AgentDescription::for_service("io.example.agent", "1.0.0"));
/// let now = Instant::now();
/// core.start(now)?;
/// let first = core.poll_transmit(now).expect("the first report is due at once");
/// assert_eq!(first.sequence_num, 0);
/// assert!(first.agent_description.is_some());
/// // One request at a time over HTTP: nothing more until the answer.
/// assert!(core.poll_transmit(now).is_none());
/// # Ok::<(), opamp_client::ClientError>(())
/// ```
pub struct ClientCore {
    config: CoreConfig,
    /// WebSocket: when the oldest unanswered message times out.
    reply_deadline: Option<Instant>,
    uid: InstanceUid,
    capabilities: AgentCapabilities,
    capabilities_changed: bool,
    next_sequence_num: u64,

    description: Tracked<AgentDescription>,
    health: Tracked<ComponentHealth>,
    effective_config: Tracked<EffectiveConfig>,
    remote_config_status: Tracked<RemoteConfigStatus>,
    package_statuses: Tracked<PackageStatuses>,
    custom_capabilities: Tracked<CustomCapabilities>,
    available_components: Tracked<AvailableComponents>,
    connection_settings_status: Tracked<ConnectionSettingsStatus>,
    flags: Tracked<AgentToServerFlags>,

    // One-shot parts of the next message.
    connection_settings_request: Option<ConnectionSettingsRequest>,
    custom_message: Option<CustomMessage>,
    send_full_components: bool,
    disconnect_queued: bool,

    link: Link,
    /// Full state goes into the next message (STS-01, SEQ-06).
    full_state_due: bool,
    /// Full state goes into the first message of the next connection.
    full_state_on_connect: bool,
    /// A status report is due because a connection was just made
    /// (CONN-02, STS-01), even with nothing changed.
    report_due: bool,
    offered_heartbeat: Option<Duration>,
    last_sent: Option<Instant>,
    started_at: Option<Instant>,
    /// HTTP: the request awaiting its response (HTTP-10), kept so its
    /// content can be merged back if it fails.
    in_flight: Option<AgentToServer>,
    /// HTTP: no request before this instant (backoff or Retry-After).
    not_before: Option<Instant>,
    /// Consecutive failures since the last message from the server.
    failures: u32,
    retry: Box<dyn RetryPolicy>,
    server_capabilities: Option<ServerCapabilities>,
    last_connection_settings_hash: Bytes,
    /// The OpAMP part of the last offer, until it is refused, kept or
    /// dropped.
    opamp_offer: Option<OpampOffer>,
    /// The "other" part of an offer that failed (hash, error), so that a
    /// verified OpAMP part of the same offer does not report APPLIED over it.
    other_failed: Option<(Bytes, String)>,
    commands: VecDeque<SettingsCommand>,
    events: VecDeque<Event>,
}

impl fmt::Debug for ClientCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCore")
            .field("transport", &self.config.transport)
            .field("uid", &self.uid)
            .field("capabilities", &self.capabilities)
            .field("next_sequence_num", &self.next_sequence_num)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl ClientCore {
    /// A core that is configured but not started. Call the setters, then
    /// [`start`](Self::start).
    pub fn new(config: CoreConfig, retry: Box<dyn RetryPolicy>) -> Self {
        let uid = config.instance_uid;
        Self {
            config,
            uid,
            capabilities: AgentCapabilities::REPORTS_STATUS,
            capabilities_changed: false,
            next_sequence_num: 0,
            description: Tracked::empty(),
            health: Tracked::empty(),
            effective_config: Tracked::empty(),
            remote_config_status: Tracked::empty(),
            package_statuses: Tracked::empty(),
            custom_capabilities: Tracked::empty(),
            available_components: Tracked::empty(),
            connection_settings_status: Tracked::empty(),
            flags: Tracked::empty(),
            connection_settings_request: None,
            custom_message: None,
            send_full_components: false,
            disconnect_queued: false,
            reply_deadline: None,
            link: Link::Idle,
            full_state_due: true,
            full_state_on_connect: false,
            report_due: false,
            offered_heartbeat: None,
            last_sent: None,
            started_at: None,
            in_flight: None,
            not_before: None,
            failures: 0,
            retry,
            server_capabilities: None,
            last_connection_settings_hash: Bytes::new(),
            opamp_offer: None,
            other_failed: None,
            commands: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---------------------------------------------------------------- setters

    /// Sets the capabilities. `ReportsStatus` is always added (CAP-03). May
    /// be called at any time (CAP-04); newly enabled reports are sent.
    pub fn set_capabilities(&mut self, capabilities: AgentCapabilities) {
        let capabilities = capabilities | AgentCapabilities::REPORTS_STATUS;
        if capabilities == self.capabilities {
            return;
        }
        let added = capabilities - self.capabilities;
        self.capabilities = capabilities;
        self.capabilities_changed = true;
        // A report that just became allowed has never been sent.
        let allowed = |report| added.contains(report);
        self.health
            .mark_if(allowed(AgentCapabilities::REPORTS_HEALTH));
        self.effective_config
            .mark_if(allowed(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG));
        self.remote_config_status
            .mark_if(allowed(AgentCapabilities::REPORTS_REMOTE_CONFIG));
        self.package_statuses
            .mark_if(allowed(AgentCapabilities::REPORTS_PACKAGE_STATUSES));
        self.available_components
            .mark_if(allowed(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS));
        self.connection_settings_status.mark_if(allowed(
            AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS,
        ));
    }

    /// The current capabilities.
    pub fn capabilities(&self) -> AgentCapabilities {
        self.capabilities
    }

    report_setters! {
        /// Sets the agent description (required before start).
        pub fn set_agent_description(description: AgentDescription) => description;

        /// Sets the health tree; reported when it changed (HLT-07).
        pub fn set_health(health: ComponentHealth) => health;

        /// Sets the effective configuration; reported when it changed (ECFG-03).
        pub fn set_effective_config(config: EffectiveConfig) => effective_config;

        /// Sets the remote config status (RCFG-06, RCFG-09). At start, pass the
        /// last saved status so an already applied config is not applied again.
        pub fn set_remote_config_status(status: RemoteConfigStatus) => remote_config_status;

        /// Sets the package statuses (PKG-16).
        pub fn set_package_statuses(statuses: PackageStatuses) => package_statuses;

        /// Sets the agent's custom capabilities; each set replaces the list
        /// (CUS-02).
        pub fn set_custom_capabilities(capabilities: CustomCapabilities) => custom_capabilities;

        /// Sets the available components. Only the hash is sent unless the
        /// server asks for the full list (AC-03, AC-04).
        pub fn set_available_components(components: AvailableComponents) => available_components;

        /// Sets `AgentToServer.flags`, e.g. `RequestInstanceUid` (UID-05).
        pub fn set_flags(flags: AgentToServerFlags) => flags;
    }

    /// The agent description, if set.
    pub fn agent_description(&self) -> Option<&AgentDescription> {
        self.description.value.as_ref()
    }

    /// The remote config status last set.
    pub fn remote_config_status(&self) -> Option<&RemoteConfigStatus> {
        self.remote_config_status.value.as_ref()
    }

    /// Sets the connection settings status (CS-08, CS-12). Its hash becomes
    /// the hash of the last processed offer, so an identical offer is not
    /// processed again. At start, pass the last saved status.
    pub fn set_connection_settings_status(&mut self, status: ConnectionSettingsStatus) {
        self.last_connection_settings_hash = status.last_connection_settings_hash.clone();
        self.connection_settings_status.set(status);
    }

    /// The connection settings status last set.
    pub fn connection_settings_status(&self) -> Option<&ConnectionSettingsStatus> {
        self.connection_settings_status.value.as_ref()
    }

    /// Asks the server for connection settings, e.g. a certificate for a CSR
    /// (CS-28). Replaces a request not sent yet.
    pub fn request_connection_settings(
        &mut self,
        request: ConnectionSettingsRequest,
    ) -> Result<(), ClientError> {
        // CS-35: without `opamp` the request gives the server nothing.
        let has_csr = request
            .opamp
            .as_ref()
            .is_some_and(|opamp| opamp.certificate_request.is_some());
        if !has_csr {
            return Err(ClientError::EmptyConnectionSettingsRequest);
        }
        // CAP-10: don't use what the server said it does not support.
        if let Some(server) = self.server_capabilities
            && !server.contains(ServerCapabilities::ACCEPTS_CONNECTION_SETTINGS_REQUEST)
        {
            return Err(ClientError::ServerLacksCapability(
                "AcceptsConnectionSettingsRequest",
            ));
        }
        self.connection_settings_request = Some(request);
        Ok(())
    }

    /// Queues a custom message (CUS-05). Only one may be pending: a second
    /// one before the first was sent is refused with
    /// [`ClientError::CustomMessagePending`]. The capability must be one of
    /// the agent's custom capabilities.
    pub fn send_custom_message(&mut self, message: CustomMessage) -> Result<(), ClientError> {
        if !self.declares_custom_capability(&message.capability) {
            return Err(ClientError::CustomCapabilityNotDeclared(message.capability));
        }
        if self.custom_message.is_some() {
            return Err(ClientError::CustomMessagePending);
        }
        self.custom_message = Some(message);
        Ok(())
    }

    /// Whether a custom message is queued and not yet handed out by
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn custom_message_pending(&self) -> bool {
        self.custom_message.is_some()
    }

    /// Sends every status sub-message again in the next message, e.g. after
    /// connecting to a different server.
    pub fn report_full_state(&mut self) {
        self.full_state_due = true;
    }

    /// The instance uid in use.
    pub fn instance_uid(&self) -> InstanceUid {
        self.uid
    }

    /// The server's capabilities, once a message carried them.
    pub fn server_capabilities(&self) -> Option<ServerCapabilities> {
        self.server_capabilities
    }

    /// The heartbeat (WebSocket) or polling (HTTP) interval in force.
    /// `None` means heartbeats are off.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        match self.config.transport {
            TransportKind::WebSocket => {
                if !self
                    .capabilities
                    .contains(AgentCapabilities::REPORTS_HEARTBEAT)
                {
                    return None;
                }
                let interval = self
                    .offered_heartbeat
                    .unwrap_or(self.config.heartbeat_interval);
                (!interval.is_zero()).then_some(interval)
            }
            // HTTP must keep polling (HTTP-12); a server interval of 0 is not
            // applied (AMB-01), see `apply_heartbeat_offer`.
            TransportKind::PlainHttp => Some(
                self.offered_heartbeat
                    .filter(|interval| !interval.is_zero())
                    .unwrap_or(if self.config.polling_interval.is_zero() {
                        DEFAULT_HEARTBEAT_INTERVAL
                    } else {
                        self.config.polling_interval
                    }),
            ),
        }
    }

    // ---------------------------------------------------------------- lifecycle

    /// Validates the state and starts. The first message, sent as soon as
    /// possible, carries the full state (STS-01).
    pub fn start(&mut self, now: Instant) -> Result<(), ClientError> {
        if self.link != Link::Idle {
            return Err(ClientError::AlreadyStarted);
        }
        if self.description.value.is_none() {
            return Err(ClientError::MissingAgentDescription);
        }
        if self.uid.is_nil() {
            return Err(ClientError::NilInstanceUid);
        }
        let caps = self.capabilities;
        if caps.contains(AgentCapabilities::REPORTS_HEALTH) && self.health.value.is_none() {
            return Err(ClientError::MissingHealth);
        }
        if caps.contains(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS)
            && self.available_components.value.is_none()
        {
            return Err(ClientError::MissingAvailableComponents);
        }
        if caps.contains(AgentCapabilities::ACCEPTS_PACKAGES) != self.config.packages_supported {
            return Err(ClientError::PackagesMismatch);
        }
        if caps.contains(AgentCapabilities::REPORTS_PACKAGE_STATUSES)
            && !caps.contains(AgentCapabilities::ACCEPTS_PACKAGES)
            && self.package_statuses.value.is_none()
        {
            return Err(ClientError::PackagesMismatch);
        }
        // Without a saved status, report UNSET: the server then knows the
        // agent has applied nothing (RCFG-06).
        if self.remote_config_status.value.is_none() {
            self.remote_config_status.set(RemoteConfigStatus::default());
        }
        self.full_state_due = true;
        self.started_at = Some(now);
        self.link = match self.config.transport {
            TransportKind::WebSocket => Link::Down { connect_at: now },
            TransportKind::PlainHttp => Link::Up,
        };
        // A candidate saved before a crash is tried first (CS-06).
        self.switch_to_candidate();
        Ok(())
    }

    /// Starts an orderly stop: the next message carries `agent_disconnect`
    /// (MSG-06, WS-17, HTTP-24); then [`is_stopped`](Self::is_stopped) or
    /// [`wants_close`](Self::wants_close) tell the driver what to do.
    /// Without a connection there is nobody to tell, so the core stops at
    /// once.
    pub fn stop(&mut self, _now: Instant) {
        match self.link {
            Link::Up => self.disconnect_queued = true,
            Link::Closing { .. } => {
                self.link = Link::Closing {
                    then: AfterClose::Stop,
                }
            }
            Link::Idle | Link::Down { .. } | Link::Stopped => self.link = Link::Stopped,
        }
    }

    /// Whether the core has stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.link == Link::Stopped
    }

    /// WebSocket: whether the driver should connect now.
    pub fn wants_connect(&self, now: Instant) -> bool {
        matches!(self.link, Link::Down { connect_at } if connect_at <= now)
    }

    /// Whether the driver should close the current connection (after sending
    /// whatever [`poll_transmit`](Self::poll_transmit) still yields) and
    /// then call [`handle_disconnected`](Self::handle_disconnected).
    pub fn wants_close(&self) -> bool {
        matches!(self.link, Link::Closing { .. }) && !self.disconnect_queued
    }

    /// Prepares a deliberate reconnect (WS-21, HTTP-24), e.g. to switch to
    /// new OpAMP connection settings: the next message carries
    /// `agent_disconnect`, then [`wants_close`](Self::wants_close) turns
    /// true. After the driver reconnected (to the new server),
    /// [`handle_connected`](Self::handle_connected) resumes.
    pub fn begin_reconnect(&mut self, now: Instant) {
        if self.link == Link::Up {
            self.disconnect_queued = true;
            self.link = Link::Closing {
                then: AfterClose::Reconnect { at: now },
            };
        }
    }

    /// WebSocket: the connection is established. The first message of the
    /// client's life carries the full state (STS-01); later reconnects only
    /// carry changes (SEQ-07) unless a full report is due.
    pub fn handle_connected(&mut self, _now: Instant) {
        if matches!(self.link, Link::Down { .. }) {
            self.link = Link::Up;
            self.reply_deadline = None;
            self.disconnect_queued = false;
            self.report_due = true;
            if std::mem::take(&mut self.full_state_on_connect) {
                self.full_state_due = true;
            }
            self.candidate_reached();
        }
    }

    /// WebSocket: a connection attempt failed. The next one waits for the
    /// retry policy, or for the server's `Retry-After` on a 429/503 refusal
    /// (CONN-03, CONN-04, WS-24).
    pub fn handle_connect_failed(&mut self, now: Instant, retry_after: Option<Duration>) {
        if matches!(self.link, Link::Stopped | Link::Idle) {
            return;
        }
        if let Link::Closing {
            then: AfterClose::Stop,
        } = self.link
        {
            self.link = Link::Stopped;
            return;
        }
        if self.trying_candidate() {
            self.candidate_failed("could not connect with the new settings".into());
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self.retry.next_delay(retry_after);
        self.link = Link::Down {
            connect_at: now + delay,
        };
    }

    /// WebSocket (or HTTP after a deliberate reconnect): the connection is
    /// gone. An unexpected loss is followed by one immediate reconnect,
    /// then backoff (WS-19).
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.disconnect_queued = false;
        self.reply_deadline = None;
        self.in_flight = None;
        self.link = match self.link {
            Link::Closing {
                then: AfterClose::Stop,
            }
            | Link::Stopped => Link::Stopped,
            Link::Closing {
                then: AfterClose::Reconnect { at },
            } => Link::Down { connect_at: at },
            Link::Idle => Link::Idle,
            Link::Down { connect_at } => Link::Down { connect_at },
            Link::Up => {
                let delay = if self.failures == 0 {
                    Duration::ZERO
                } else {
                    self.retry.next_delay(None)
                };
                self.failures = self.failures.saturating_add(1);
                Link::Down {
                    connect_at: now + delay,
                }
            }
        };
        if self.config.transport == TransportKind::PlainHttp && self.link != Link::Stopped {
            // Plain HTTP has no connection to wait for.
            self.link = Link::Up;
        }
        if self.link != Link::Stopped {
            self.switch_to_candidate();
        }
    }

    /// HTTP: the request for the last transmitted message failed. Retryable
    /// failures put its content back into the pending state, so nothing is
    /// lost, and delay the next request (HTTP-21, CONN-03).
    pub fn handle_send_failed(&mut self, now: Instant, failure: SendFailure) {
        let Some(message) = self.in_flight.take() else {
            return;
        };
        if message.agent_disconnect.is_some() {
            // The goodbye message is not retried.
            self.finish_http_close();
            return;
        }
        if self.trying_candidate() {
            // CS-06 step 9: the first request with the candidate failed;
            // its content goes to the previous server instead, at once.
            self.merge_back(message);
            self.candidate_failed("could not reach the server with the new settings".into());
            return;
        }
        match failure {
            SendFailure::Retryable { retry_after } => {
                self.merge_back(message);
                self.failures = self.failures.saturating_add(1);
                let delay = self.retry.next_delay(retry_after);
                self.not_before = Some(now + delay);
            }
            SendFailure::Rejected => {
                // Not retried (HTTP-17); the sequence number was used up.
            }
        }
    }

    /// Puts an unsent message's content back into the pending state. The
    /// current values are at least as new, so marking is enough.
    fn merge_back(&mut self, message: AgentToServer) {
        self.description
            .mark_if(message.agent_description.is_some());
        self.health.mark_if(message.health.is_some());
        self.effective_config
            .mark_if(message.effective_config.is_some());
        self.remote_config_status
            .mark_if(message.remote_config_status.is_some());
        self.package_statuses
            .mark_if(message.package_statuses.is_some());
        self.custom_capabilities
            .mark_if(message.custom_capabilities.is_some());
        if let Some(components) = &message.available_components {
            self.available_components.mark();
            if !components.components.is_empty() {
                self.send_full_components = true;
            }
        }
        self.connection_settings_status
            .mark_if(message.connection_settings_status.is_some());
        self.flags.mark_if(message.flags != 0);
        if message.capabilities != self.capabilities.bits() {
            self.capabilities_changed = true;
        }
        if self.connection_settings_request.is_none() {
            self.connection_settings_request = message.connection_settings_request;
        }
        if self.custom_message.is_none() {
            self.custom_message = message.custom_message;
        }
        // The server never saw this number: reuse it so no gap appears.
        if self.next_sequence_num == message.sequence_num.wrapping_add(1) {
            self.next_sequence_num = message.sequence_num;
        }
        if message.sequence_num == 0 {
            self.full_state_due = true;
        }
    }

    fn finish_http_close(&mut self) {
        self.disconnect_queued = false;
        self.link = match self.link {
            Link::Closing {
                then: AfterClose::Reconnect { .. },
            } => Link::Up,
            _ => Link::Stopped,
        };
        if self.link == Link::Up {
            self.switch_to_candidate();
        }
    }

    /// Processes a message from the server (MSG-02).
    pub fn handle_message(&mut self, message: ServerToAgent, now: Instant) {
        self.reply_deadline = None;
        let answered = if self.config.transport == TransportKind::PlainHttp {
            self.in_flight.take()
        } else {
            None
        };
        if answered
            .as_ref()
            .is_some_and(|sent| sent.agent_disconnect.is_some())
        {
            // The answer to the goodbye message: nothing more to do with it.
            self.finish_http_close();
            return;
        }
        if answered.is_some() {
            // HTTP: an answer to the first request with the candidate.
            self.candidate_reached();
        }
        if matches!(
            self.link,
            Link::Stopped
                | Link::Closing {
                    then: AfterClose::Stop
                }
        ) {
            return;
        }

        // CMD-03: a command is acted on alone.
        if let Some(command) = message.command {
            if self
                .capabilities
                .contains(AgentCapabilities::ACCEPTS_RESTART_COMMAND)
            {
                self.events.push_back(Event::Command(command));
                self.failures = 0;
                self.retry.reset();
                return;
            }
            tracing::debug!("ignoring command: AcceptsRestartCommand not set");
        }

        let server_caps = message.typed_capabilities();
        if !server_caps.is_empty() {
            self.server_capabilities = Some(server_caps);
        }

        if let Some(error) = message.error_response {
            self.handle_error_response(error, answered, now);
            return;
        }
        self.failures = 0;
        self.retry.reset();

        let flags = ServerToAgentFlags::from_bits_retain(message.flags);
        if flags.contains(ServerToAgentFlags::REPORT_FULL_STATE) {
            self.full_state_due = true;
        }
        if flags.contains(ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS) {
            self.send_full_components = true;
            self.available_components.mark();
        }

        if let Some(identification) = message.agent_identification {
            match InstanceUid::try_from(&identification.new_instance_uid) {
                Ok(uid) => {
                    self.uid = uid;
                    if let Some(flags) = &mut self.flags.value {
                        flags.remove(AgentToServerFlags::REQUEST_INSTANCE_UID);
                    }
                    self.events.push_back(Event::NewInstanceUid(uid));
                }
                Err(_) => {
                    let len = identification.new_instance_uid.len();
                    tracing::warn!(len, "ignoring invalid new_instance_uid");
                    self.events.push_back(Event::ProtocolError(
                        ProtocolError::InvalidNewInstanceUid { len },
                    ));
                }
            }
        }

        let mut data = MessageData::default();
        if let Some(config) = message.remote_config {
            if !self
                .capabilities
                .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
            {
                tracing::debug!("ignoring remote config: AcceptsRemoteConfig not set");
            } else if self.already_applied(&config.config_hash) {
                tracing::debug!("remote config already applied; not applying again");
            } else {
                data.remote_config = Some(config);
            }
        }

        if let Some(offers) = message.connection_settings {
            self.handle_connection_settings(offers);
        }

        if let Some(packages) = message.packages_available {
            if self
                .capabilities
                .contains(AgentCapabilities::ACCEPTS_PACKAGES)
            {
                self.events.push_back(Event::PackagesAvailable(packages));
            } else {
                tracing::debug!("ignoring packages: AcceptsPackages not set");
            }
        }

        data.custom_capabilities = message.custom_capabilities;
        if let Some(custom) = message.custom_message {
            if self.declares_custom_capability(&custom.capability) {
                data.custom_message = Some(custom);
            } else {
                tracing::debug!(capability = %custom.capability, "ignoring custom message for undeclared capability");
            }
        }
        if !data.is_empty() {
            self.events.push_back(Event::Message(data));
        }
    }

    /// Whether `capability` is one of the agent's own custom capabilities.
    fn declares_custom_capability(&self, capability: &str) -> bool {
        self.custom_capabilities
            .value
            .as_ref()
            .is_some_and(|custom| custom.capabilities.iter().any(|own| own == capability))
    }

    /// Whether a remote config with `hash` was already applied, per the last
    /// reported status (a restart must not apply it again).
    fn already_applied(&self, hash: &Bytes) -> bool {
        self.remote_config_status
            .value
            .as_ref()
            .is_some_and(|status| {
                !hash.is_empty()
                    && status.last_remote_config_hash == *hash
                    && status.status == RemoteConfigStatuses::Applied as i32
            })
    }

    fn handle_error_response(
        &mut self,
        error: ServerErrorResponse,
        answered: Option<AgentToServer>,
        now: Instant,
    ) {
        let unavailable = error.r#type == ServerErrorResponseType::Unavailable as i32;
        let hint = match (&error.details, unavailable) {
            (Some(server_error_response::Details::RetryInfo(info)), true) => {
                Some(Duration::from_nanos(info.retry_after_nanoseconds))
            }
            _ => None,
        };
        self.events.push_back(Event::ErrorResponse(error));
        if !unavailable {
            // ERR-03: a BAD_REQUEST (or UNKNOWN) message is not resent.
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self.retry.next_delay(hint);
        match self.config.transport {
            TransportKind::WebSocket => {
                // WS-23: disconnect, wait, reconnect. The server may have
                // dropped what we sent, so the next connection starts with
                // the full state.
                if self.link == Link::Up {
                    self.disconnect_queued = true;
                    self.link = Link::Closing {
                        then: AfterClose::Reconnect { at: now + delay },
                    };
                    self.full_state_on_connect = true;
                }
            }
            TransportKind::PlainHttp => {
                // ERR-04: resend later, content kept.
                if let Some(message) = answered {
                    self.merge_back(message);
                }
                self.not_before = Some(now + delay);
            }
        }
    }

    fn handle_connection_settings(&mut self, offers: ConnectionSettingsOffers) {
        // HB-03/HB-04: the interval is applied even when the rest of the
        // offer is unchanged, so a restart relearns it.
        if let Some(opamp) = &offers.opamp
            && self
                .capabilities
                .contains(AgentCapabilities::REPORTS_HEARTBEAT)
        {
            self.apply_heartbeat_offer(opamp.heartbeat_interval_seconds);
        }

        if !offers.hash.is_empty() && offers.hash == self.last_connection_settings_hash {
            tracing::debug!("connection settings unchanged (same hash); skipped");
            return;
        }
        self.last_connection_settings_hash = offers.hash.clone();

        let caps = self.capabilities;
        let opamp = offers
            .opamp
            .filter(|_| caps.contains(AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS));
        let other = ConnectionSettingsOffers {
            hash: offers.hash.clone(),
            opamp: None,
            own_metrics: offers
                .own_metrics
                .filter(|_| caps.contains(AgentCapabilities::REPORTS_OWN_METRICS)),
            own_traces: offers
                .own_traces
                .filter(|_| caps.contains(AgentCapabilities::REPORTS_OWN_TRACES)),
            own_logs: offers
                .own_logs
                .filter(|_| caps.contains(AgentCapabilities::REPORTS_OWN_LOGS)),
            other_connections: if caps
                .contains(AgentCapabilities::ACCEPTS_OTHER_CONNECTION_SETTINGS)
            {
                offers.other_connections
            } else {
                Default::default()
            },
        };
        let has_other = other.own_metrics.is_some()
            || other.own_traces.is_some()
            || other.own_logs.is_some()
            || !other.other_connections.is_empty();

        // CS-07/CS-42: tell the server the offer is being worked on, or that
        // nothing in it can be used.
        let (status, error_message) = if opamp.is_some() || has_other {
            (ConnectionSettingsStatuses::Applying, String::new())
        } else {
            (
                ConnectionSettingsStatuses::Failed,
                "the agent accepts none of the offered connection settings".to_owned(),
            )
        };
        if caps.contains(AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS) {
            self.connection_settings_status
                .set(ConnectionSettingsStatus {
                    last_connection_settings_hash: offers.hash.clone(),
                    status: status as i32,
                    error_message,
                });
        }

        if has_other {
            self.events.push_back(Event::OtherConnectionSettings {
                hash: offers.hash.clone(),
                offers: Box::new(other),
                opamp_offered: opamp.is_some(),
            });
        }
        if let Some(settings) = opamp {
            if self.trying_candidate() {
                // Only reachable by an embedder that feeds messages while a
                // candidate is being tried; one switch at a time.
                self.report_settings_status(
                    offers.hash,
                    ConnectionSettingsStatuses::Failed,
                    "another switch of connection settings is in progress".into(),
                );
                return;
            }
            // A switch not yet under way gives way to the newer offer.
            self.opamp_offer = Some(OpampOffer {
                hash: offers.hash.clone(),
                stage: OfferStage::WithAgent,
            });
            self.events.push_back(Event::OpampConnectionSettings {
                hash: offers.hash,
                settings: Box::new(settings),
            });
        }
    }

    // ------------------------------------------------ connection settings offer flow

    /// The agent accepts offered OpAMP settings (CS-06 step 3) as
    /// `settings`: the offer, or the offer completed (e.g. with the private
    /// key of a CSR-issued certificate, CS-31). `hash` is the offer's. The
    /// core says goodbye on the current connection (step 4, WS-21, HTTP-24),
    /// then asks the driver to connect with the candidate
    /// ([`SettingsCommand::TryCandidate`]). An answer to an offer that a
    /// newer one replaced is ignored.
    pub fn accept_opamp_connection_settings(
        &mut self,
        hash: &Bytes,
        settings: OpAmpConnectionSettings,
        now: Instant,
    ) {
        if !self.offer_with_agent(hash) {
            return;
        }
        let settings = Box::new(settings);
        match self.link {
            Link::Up => {
                self.begin_reconnect(now);
                self.set_offer_stage(OfferStage::Disconnecting(settings));
            }
            Link::Closing {
                then: AfterClose::Reconnect { .. },
            } => self.set_offer_stage(OfferStage::Disconnecting(settings)),
            // Between two connections: the next one uses the candidate.
            Link::Down { .. } => {
                self.set_offer_stage(OfferStage::Disconnecting(settings));
                self.switch_to_candidate();
            }
            Link::Idle
            | Link::Stopped
            | Link::Closing {
                then: AfterClose::Stop,
            } => self.opamp_offer = None,
        }
    }

    /// The agent refuses offered OpAMP settings: FAILED with `reason` is
    /// reported (CS-08) and the connection stays as it is.
    pub fn refuse_opamp_connection_settings(&mut self, hash: &Bytes, reason: String) {
        if !self.offer_with_agent(hash) {
            return;
        }
        self.opamp_offer = None;
        self.report_settings_status(hash.clone(), ConnectionSettingsStatuses::Failed, reason);
    }

    /// What the agent made of own-telemetry or other connection settings
    /// ([`Event::OtherConnectionSettings`]): APPLIED or FAILED is reported
    /// (CS-08, CS-42). When the same offer carries OpAMP settings, their
    /// verification reports the final status, FAILED if this part failed.
    /// Hand this in before answering the OpAMP part. The outcome of an offer
    /// that a newer one replaced is ignored.
    pub fn handle_other_settings_outcome(&mut self, hash: &Bytes, outcome: SettingsOutcome) {
        if *hash != self.last_connection_settings_hash {
            return;
        }
        match outcome {
            SettingsOutcome::Applied => {
                self.other_failed = None;
                let opamp_part = self
                    .opamp_offer
                    .as_ref()
                    .is_some_and(|offer| offer.hash == *hash);
                if !opamp_part {
                    self.report_settings_status(
                        hash.clone(),
                        ConnectionSettingsStatuses::Applied,
                        String::new(),
                    );
                }
            }
            SettingsOutcome::Failed(error) => {
                self.other_failed = Some((hash.clone(), error.clone()));
                self.report_settings_status(
                    hash.clone(),
                    ConnectionSettingsStatuses::Failed,
                    error,
                );
            }
            SettingsOutcome::Later => self.other_failed = None,
        }
    }

    /// The driver cannot use the candidate settings (they make no valid
    /// options) or could not connect with them (CS-06 step 9): FAILED with
    /// `reason` is reported, the driver is told to drop the candidate
    /// ([`SettingsCommand::DropCandidate`]) and the client reconnects at
    /// once with the previous settings, sending the full state.
    pub fn handle_candidate_failed(&mut self, _now: Instant, reason: String) {
        if !self.trying_candidate() {
            return;
        }
        if let Some(message) = self.in_flight.take() {
            self.merge_back(message);
        }
        self.candidate_failed(reason);
    }

    /// Before [`start`](Self::start): OpAMP settings that the agent had
    /// accepted (with the offer's `hash`) but that were not verified yet
    /// when it last ran, e.g. because it crashed mid-switch. CS-06: after a
    /// crash the client retries the candidate from step 5, so the first
    /// connection (or request) uses them; success keeps them and reports
    /// APPLIED, failure goes back to the configured settings and reports
    /// FAILED, as for a fresh offer.
    pub fn resume_candidate(&mut self, hash: Bytes, settings: OpAmpConnectionSettings) {
        if self.link != Link::Idle {
            return;
        }
        self.last_connection_settings_hash = hash.clone();
        self.opamp_offer = Some(OpampOffer {
            hash,
            stage: OfferStage::Disconnecting(Box::new(settings)),
        });
    }

    /// The next change of connection settings the driver must carry out
    /// (CS-06). Poll it before connecting or sending.
    pub fn poll_settings_command(&mut self) -> Option<SettingsCommand> {
        self.commands.pop_front()
    }

    fn offer_with_agent(&self, hash: &Bytes) -> bool {
        matches!(
            &self.opamp_offer,
            Some(OpampOffer { hash: offered, stage: OfferStage::WithAgent }) if offered == hash
        )
    }

    fn trying_candidate(&self) -> bool {
        matches!(
            self.opamp_offer,
            Some(OpampOffer {
                stage: OfferStage::Trying(_),
                ..
            })
        )
    }

    fn set_offer_stage(&mut self, stage: OfferStage) {
        if let Some(offer) = &mut self.opamp_offer {
            offer.stage = stage;
        }
    }

    /// CS-06 step 5, once the old connection is closed: the driver uses the
    /// candidate from now on. The server behind it may never have seen this
    /// agent, so the full state goes first.
    fn switch_to_candidate(&mut self) {
        let Some(offer) = &mut self.opamp_offer else {
            return;
        };
        let OfferStage::Disconnecting(settings) = &offer.stage else {
            return;
        };
        let settings = settings.clone();
        self.commands
            .push_back(SettingsCommand::TryCandidate(settings.clone()));
        offer.stage = OfferStage::Trying(settings);
        match self.config.transport {
            TransportKind::WebSocket => self.full_state_on_connect = true,
            TransportKind::PlainHttp => self.full_state_due = true,
        }
    }

    /// Takes the OpAMP offer; gives its hash and settings if its candidate
    /// was being tried (CS-06 step 5).
    fn take_tried_offer(&mut self) -> Option<(Bytes, Box<OpAmpConnectionSettings>)> {
        match self.opamp_offer.take()? {
            OpampOffer {
                hash,
                stage: OfferStage::Trying(settings),
            } => Some((hash, settings)),
            _ => None,
        }
    }

    /// CS-06 steps 6 and 8: a connection (or an answer) with the candidate.
    fn candidate_reached(&mut self) {
        if !self.trying_candidate() {
            return;
        }
        let Some((hash, settings)) = self.take_tried_offer() else {
            return;
        };
        self.commands.push_back(SettingsCommand::KeepCandidate);
        let (status, error) = match &self.other_failed {
            Some((failed, error)) if *failed == hash => {
                (ConnectionSettingsStatuses::Failed, error.clone())
            }
            _ => (ConnectionSettingsStatuses::Applied, String::new()),
        };
        self.report_settings_status(hash, status, error);
        self.events
            .push_back(Event::OpampConnectionSettingsOutcome {
                settings,
                result: Ok(()),
            });
    }

    /// CS-06 step 9: back to the previous settings, at once.
    fn candidate_failed(&mut self, reason: String) {
        let Some((hash, settings)) = self.take_tried_offer() else {
            return;
        };
        tracing::warn!(%reason, "new OpAMP connection settings failed; going back to the previous ones");
        self.commands.push_back(SettingsCommand::DropCandidate);
        self.report_settings_status(hash, ConnectionSettingsStatuses::Failed, reason.clone());
        self.events
            .push_back(Event::OpampConnectionSettingsOutcome {
                settings,
                result: Err(reason),
            });
        match self.config.transport {
            // The link is down since the attempt with the candidate: the
            // next connection, with the previous settings, is due already.
            TransportKind::WebSocket => self.full_state_on_connect = true,
            TransportKind::PlainHttp => {
                // The previous server saw the goodbye: it gets everything.
                self.full_state_due = true;
                self.not_before = None;
            }
        }
    }

    fn report_settings_status(
        &mut self,
        hash: Bytes,
        status: ConnectionSettingsStatuses,
        error_message: String,
    ) {
        self.set_connection_settings_status(ConnectionSettingsStatus {
            last_connection_settings_hash: hash,
            status: status as i32,
            error_message,
        });
    }

    /// AMB-01: an offered 0 disables WebSocket heartbeats; over HTTP it is
    /// not applied, because polling must go on (HTTP-12).
    fn apply_heartbeat_offer(&mut self, seconds: u64) {
        let interval = Duration::from_secs(seconds);
        if interval.is_zero() && self.config.transport == TransportKind::PlainHttp {
            tracing::debug!("ignoring heartbeat interval 0 over plain HTTP");
            return;
        }
        self.offered_heartbeat = Some(interval);
    }

    /// Processes timers. Calling it early or late is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.not_before
            && at <= now
        {
            self.not_before = None;
        }
        if self.link == Link::Up && self.reply_deadline.is_some_and(|deadline| deadline <= now) {
            // STS-04: every message gets an answer. None for this long: the
            // connection is dead without having closed. Drop it (no goodbye,
            // nobody would hear it) and reconnect with the full state.
            tracing::warn!(
                timeout = ?self.config.reply_timeout,
                "no reply from the OpAMP server; reconnecting"
            );
            self.reply_deadline = None;
            self.link = Link::Closing {
                then: AfterClose::Reconnect { at: now },
            };
            self.full_state_on_connect = true;
        }
    }

    /// The next instant the core wants [`handle_timeout`](Self::handle_timeout)
    /// and [`poll_transmit`](Self::poll_transmit) to be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // With something pending the answer is "now", which is never later
        // than the last send (or the start).
        let immediately = self.last_sent.or(self.started_at);
        match (self.link, self.config.transport) {
            (Link::Down { connect_at }, TransportKind::WebSocket) => Some(connect_at),
            (Link::Up, TransportKind::WebSocket) => {
                if self.has_pending() {
                    return immediately;
                }
                match (self.next_heartbeat_at(), self.reply_deadline) {
                    (Some(heartbeat), Some(deadline)) => Some(heartbeat.min(deadline)),
                    (heartbeat, deadline) => heartbeat.or(deadline),
                }
            }
            // HTTP-10: a goodbye waits for the request in flight.
            (Link::Closing { .. }, _) if self.disconnect_queued && self.in_flight.is_none() => {
                immediately
            }
            (Link::Up, TransportKind::PlainHttp) => {
                if self.in_flight.is_some() {
                    return None;
                }
                let ready_at = if self.has_pending() {
                    immediately?
                } else {
                    self.next_heartbeat_at()?
                };
                Some(match self.not_before {
                    Some(at) => at.max(ready_at),
                    None => ready_at,
                })
            }
            _ => None,
        }
    }

    /// Whether anything is waiting to be reported.
    fn has_pending(&self) -> bool {
        self.full_state_due
            || self.report_due
            || self.capabilities_changed
            || self.description.dirty
            || self.health.dirty
            || self.effective_config.dirty
            || self.remote_config_status.dirty
            || self.package_statuses.dirty
            || self.custom_capabilities.dirty
            || self.available_components.dirty
            || self.connection_settings_status.dirty
            || self.flags.dirty
            || self.connection_settings_request.is_some()
            || self.custom_message.is_some()
            || self.disconnect_queued
    }

    /// The next message to send, if one is due now: pending changes, the
    /// full state, a heartbeat (HB-06) or an HTTP poll (HTTP-12).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<AgentToServer> {
        let due = match (self.link, self.config.transport) {
            (Link::Up, TransportKind::WebSocket) => self.has_pending() || self.heartbeat_due(now),
            (Link::Closing { .. }, _) => self.disconnect_queued && self.in_flight.is_none(),
            (Link::Up, TransportKind::PlainHttp) => {
                self.in_flight.is_none()
                    && (self.disconnect_queued || self.not_before.is_none_or(|at| at <= now))
                    && (self.has_pending() || self.heartbeat_due(now))
            }
            _ => false,
        };
        if !due {
            return None;
        }
        if self.not_before.is_some_and(|at| at <= now) {
            self.not_before = None;
        }
        let message = self.build_message();

        let header = usize::from(self.config.transport == TransportKind::WebSocket);
        let size = message.encoded_len() + header;
        if size > self.config.max_message_size {
            tracing::warn!(
                size,
                limit = self.config.max_message_size,
                "outgoing message too large; dropped"
            );
            self.events
                .push_back(Event::ProtocolError(ProtocolError::OutgoingTooLarge {
                    size,
                    limit: self.config.max_message_size,
                }));
            return None;
        }

        self.next_sequence_num = self.next_sequence_num.wrapping_add(1);
        self.last_sent = Some(now);
        if self.config.transport == TransportKind::WebSocket && self.reply_deadline.is_none() {
            self.reply_deadline = now.checked_add(self.config.reply_timeout);
        }
        if message.agent_disconnect.is_some() {
            self.disconnect_queued = false;
            if self.link == Link::Up {
                self.link = Link::Closing {
                    then: AfterClose::Stop,
                };
            }
        }
        if self.config.transport == TransportKind::PlainHttp {
            self.in_flight = Some(message.clone());
        }
        Some(message)
    }

    fn heartbeat_due(&self, now: Instant) -> bool {
        match self.last_sent {
            None => true,
            Some(_) => self.next_heartbeat_at().is_some_and(|at| now >= at),
        }
    }

    /// When the next heartbeat (or poll) is due. An interval so large that
    /// the instant is not representable (a hostile or mistaken offer near
    /// `u64::MAX` seconds) means "never", not an overflow panic.
    fn next_heartbeat_at(&self) -> Option<Instant> {
        self.last_sent?.checked_add(self.heartbeat_interval()?)
    }

    /// Builds the next message: identity, sequence number and capabilities
    /// always (CAP-01, SEQ-01, AMB-02), status sub-messages when changed or
    /// when the full state is due (SEQ-03, SEQ-06).
    fn build_message(&mut self) -> AgentToServer {
        if std::mem::take(&mut self.full_state_due) {
            self.description.mark();
            self.health.mark();
            self.effective_config.mark();
            self.remote_config_status.mark();
            self.package_statuses.mark();
            self.custom_capabilities.mark();
            self.available_components.mark();
            self.connection_settings_status.mark();
            self.flags.mark();
        }
        self.capabilities_changed = false;
        self.report_due = false;
        let caps = self.capabilities;
        let gated = |cap: AgentCapabilities| caps.contains(cap);

        let mut message = AgentToServer {
            instance_uid: self.uid.to_bytes(),
            sequence_num: self.next_sequence_num,
            capabilities: caps.bits(),
            agent_description: self.description.take(),
            ..Default::default()
        };
        message.health = self
            .health
            .take_if(gated(AgentCapabilities::REPORTS_HEALTH));
        message.effective_config = self
            .effective_config
            .take_if(gated(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG));
        message.remote_config_status = self
            .remote_config_status
            .take_if(gated(AgentCapabilities::REPORTS_REMOTE_CONFIG));
        message.package_statuses = self
            .package_statuses
            .take_if(gated(AgentCapabilities::REPORTS_PACKAGE_STATUSES));
        message.custom_capabilities = self.custom_capabilities.take();
        let full_components = std::mem::take(&mut self.send_full_components);
        message.available_components = self
            .available_components
            .take_if(gated(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS))
            .map(|components| {
                if full_components {
                    components
                } else {
                    // AC-03: the hash alone, unless the server asked.
                    AvailableComponents {
                        hash: components.hash,
                        components: Default::default(),
                    }
                }
            });
        message.connection_settings_status = self
            .connection_settings_status
            .take_if(gated(AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS));
        message.flags = self.flags.take().map_or(0, |flags| flags.bits());
        message.connection_settings_request = self.connection_settings_request.take();
        message.custom_message = self.custom_message.take();
        if self.disconnect_queued {
            message.agent_disconnect = Some(AgentDisconnect {});
        }
        message
    }

    /// The next event for the embedder.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
