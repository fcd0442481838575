//! The agent registry: the shell around the protocol core. It serialises
//! messages per agent, loads the stored record when the core asks for it,
//! steps the [`ServerCore`], saves what the core says changed, emits the
//! events and delivers to connections. Both transports go through one
//! function, [`Registry::exchange`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opamp_proto::{
    AgentConfigMap, AgentRemoteConfig, AgentToServer, CommandType, ConnectionSettingsOffers,
    CustomMessage, InstanceUid, PackagesAvailable, ServerToAgent, ServerToAgentCommand,
    ServerToAgentFlags, config_hash, message_hash,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::bus::{BusInbox, LocalBus, LocalDelivery, MessageBus};
use crate::callbacks::DisconnectReason;
use crate::connection::{Connection, ConnectionConfig, Delivery, PeerInfo, TransportKind};
use crate::error::{BusError, SendError, StoreError};
use crate::events::{AgentEvent, StatusChanges};
use crate::messages;
use crate::protocol::{
    AgentSession, ConnectionRef, CoreSettings, Disposition, DuplicateUidPolicy, Exchange, Holder,
    Inbound, Liveness, Offered, ReconnectGuard, ReconnectHistory, ServerCore, Step, Stored,
};
use crate::record::{AgentRecord, RemoteConfigState};
use crate::store::{AgentStore, MemoryStore};

/// Default silence after which a plain-HTTP agent whose polling interval is
/// not known yet is stale (HTTP-13); also the longest stale timeout.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(90);

/// Default shortest stale timeout of a plain-HTTP agent.
pub const DEFAULT_STALE_FLOOR: Duration = Duration::from_secs(3);

/// How many of its polling intervals a plain-HTTP agent may miss before it
/// is stale.
const STALE_POLLS: u32 = 3;

/// Default time an old WebSocket has to answer a ping before a newcomer
/// with the same uid replaces it.
pub const DEFAULT_PROBE_DEADLINE: Duration = Duration::from_secs(2);

const STRIPES: usize = 64;

/// The agent registry: keeps the merged status of every agent, detects
/// sequence gaps and duplicates, tracks desired state, and delivers
/// messages to agents wherever they are connected.
///
/// A [`OpampServer`](crate::OpampServer) feeds it every message; the
/// application reads it ([`agents`](Self::agents), [`agent`](Self::agent),
/// [`subscribe`](Self::subscribe)) and acts through it
/// ([`send`](Self::send), [`set_remote_config`](Self::set_remote_config),
/// ...). Cheap to clone.
///
/// The protocol decisions are made by the pure [`ServerCore`]; the registry
/// does the I/O around it. State lives in an [`AgentStore`] ([`MemoryStore`]
/// by default) and messages for agents connected to other instances travel
/// over a [`MessageBus`] ([`LocalBus`] by default). In memory it keeps one
/// small [`AgentSession`] per connected agent.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

/// Builds a [`Registry`].
#[must_use]
pub struct RegistryBuilder {
    store: Arc<dyn AgentStore>,
    bus: Arc<dyn MessageBus>,
    core: CoreSettings,
    settings: RegistrySettings,
}

#[derive(Debug, Clone)]
struct RegistrySettings {
    stale_after: Duration,
    stale_floor: Duration,
    event_capacity: usize,
    probe_deadline: Duration,
}

pub(crate) struct RegistryInner {
    core: ServerCore,
    store: Arc<dyn AgentStore>,
    bus: Arc<dyn MessageBus>,
    settings: RegistrySettings,
    live: Mutex<HashMap<InstanceUid, Live>>,
    /// Sessions of agents whose connection just closed with bookkeeping the
    /// store has not seen, until [`connection_closed`](Self::connection_closed)
    /// saves it.
    parked: Mutex<HashMap<InstanceUid, AgentSession>>,
    events: broadcast::Sender<AgentEvent>,
    /// Serialise read-modify-write of one agent's record.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Connection starts per agent, for the reconnect guard; entries of
    /// quiet agents are swept out.
    reconnects: Mutex<ReconnectBook>,
}

/// An agent connected to this instance: its connection and its session.
struct Live {
    connection: Connection,
    session: AgentSession,
}

#[derive(Default)]
struct ReconnectBook {
    agents: HashMap<InstanceUid, ReconnectHistory>,
    last_sweep: Option<std::time::Instant>,
}

/// What the registry made of one message.
#[derive(Debug)]
pub(crate) struct Received {
    /// The uid the agent goes by from now on (a new one when reassigned).
    pub(crate) uid: InstanceUid,
    /// The registry's reply; `instance_uid` is the one received (UID-06,
    /// AMB-15).
    pub(crate) response: ServerToAgent,
    pub(crate) disposition: Disposition,
    /// Plain HTTP: the session that holds the agent now, when it is not the
    /// one the message arrived on (a second agent on a shared uid, UID-09).
    pub(crate) moved_to: Option<Connection>,
}

/// A plain-HTTP message after the session lookup.
pub(crate) struct HttpReceived {
    pub(crate) connection: Connection,
    pub(crate) new_session: bool,
    pub(crate) received: Received,
}

/// The result of an offer kept as desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Offer {
    /// The hash identifying the offer (`config_hash`, `all_packages_hash`,
    /// `ConnectionSettingsOffers.hash`).
    pub hash: Bytes,
    /// How it went out now; `None` when the agent is not connected (it gets
    /// the offer with its next message) or already reports this hash.
    pub delivery: Option<Delivery>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("connected", &lock(&self.inner.live).len())
            .field("settings", &self.inner.settings)
            .field("core", self.inner.core.settings())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("settings", &self.settings)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl RegistryBuilder {
    opamp_transport::builder_setters! {
        /// Stores records in `store` instead of memory. Bare heartbeats of
        /// connected agents do not reach the store; see [`AgentStore`] for when
        /// their bookkeeping is saved.
        pub fn store(store: impl AgentStore) => store = Arc::new(store);

        /// Forwards to other instances through `bus`.
        pub fn bus(bus: impl MessageBus) => bus = Arc::new(bus);

        /// What to do with duplicate instance uids (default
        /// [`DuplicateUidPolicy::AssignNewUid`]).
        pub fn duplicate_policy(policy: DuplicateUidPolicy) => core.duplicate_policy = policy;
    }

    /// The longest silence after which a plain-HTTP agent's session ends as
    /// [`DisconnectReason::Stale`], and the timeout used until its polling
    /// interval is known (default [`DEFAULT_STALE_AFTER`]). Once the agent
    /// has polled twice, its timeout is three of its polling intervals,
    /// within [`stale_floor`](Self::stale_floor) and this.
    pub fn stale_after(mut self, silence: Duration) -> Self {
        self.settings.stale_after = silence;
        self.settings.stale_floor = self.settings.stale_floor.min(silence);
        self
    }

    /// The shortest stale timeout of a plain-HTTP agent (default
    /// [`DEFAULT_STALE_FLOOR`]).
    pub fn stale_floor(mut self, silence: Duration) -> Self {
        self.settings.stale_floor = silence.min(self.settings.stale_after);
        self
    }

    opamp_transport::builder_setters! {
        /// How long an old WebSocket holding a uid has to answer a ping when a
        /// newcomer claims the same uid (default [`DEFAULT_PROBE_DEADLINE`]). A
        /// connection that carried a message within the last few seconds is
        /// taken as alive without a ping. A dead one is replaced and the
        /// newcomer keeps the uid; only two live connections are duplicates.
        pub fn probe_deadline(deadline: Duration) => settings.probe_deadline = deadline;

        /// How many events a slow subscriber may fall behind before it misses
        /// some (default 1024).
        pub fn event_capacity(capacity: usize) => settings.event_capacity = capacity.max(1);

        /// Limits how often one agent may connect anew (default
        /// [`ReconnectGuard::default`]); `None` turns the guard off.
        pub fn reconnect_guard(guard: Option<ReconnectGuard>) => core.reconnect_guard = guard;

        /// Turns status tracking off: no store, no sequence checks, no desired
        /// state; only connection tracking, duplicates and delivery remain.
        /// On by default.
        pub fn track_state(track: bool) => core.track_state = track;
    }

    /// Builds the registry.
    pub fn build(self) -> Registry {
        let (events, _) = broadcast::channel(self.settings.event_capacity);
        let inner = Arc::new(RegistryInner {
            core: ServerCore::new(self.core),
            store: self.store,
            bus: self.bus,
            settings: self.settings,
            live: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            events,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            reconnects: Mutex::new(ReconnectBook::default()),
        });
        let delivery: Arc<dyn LocalDelivery> = inner.clone();
        inner.bus.attach(BusInbox {
            registry: Arc::downgrade(&delivery),
        });
        Registry { inner }
    }
}

impl Registry {
    /// A registry with the in-memory store and no other instances.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder to choose store, bus and policies.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            store: Arc::new(MemoryStore::new()),
            bus: Arc::new(LocalBus),
            core: CoreSettings::default(),
            settings: RegistrySettings {
                stale_after: DEFAULT_STALE_AFTER,
                stale_floor: DEFAULT_STALE_FLOOR,
                event_capacity: 1024,
                probe_deadline: DEFAULT_PROBE_DEADLINE,
            },
        }
    }

    /// Every known agent. `last_seen` of agents connected here is current
    /// even when the store has not been told yet.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut records = self.inner.store.list().await?;
        for record in &mut records {
            if let Some(session) = self.inner.session(record.uid) {
                session.apply_to(record);
            }
        }
        Ok(records)
    }

    /// One agent's record, with a current `last_seen` if it is connected
    /// here.
    pub async fn agent(&self, uid: InstanceUid) -> Result<Option<AgentRecord>, StoreError> {
        let mut record = self.inner.store.load(uid).await?;
        if let (Some(record), Some(session)) = (record.as_mut(), self.inner.session(uid)) {
            session.apply_to(record);
        }
        Ok(record)
    }

    /// The agent's connection, if it is connected to this instance.
    pub fn connection(&self, uid: InstanceUid) -> Option<Connection> {
        lock(&self.inner.live)
            .get(&uid)
            .map(|entry| entry.connection.clone())
            .filter(|connection| !connection.is_closed())
    }

    /// Instance uids of the agents connected to this instance.
    pub fn connected(&self) -> Vec<InstanceUid> {
        lock(&self.inner.live).keys().copied().collect()
    }

    /// Change events, from now on. A subscriber that falls more than the
    /// event capacity behind gets [`broadcast::error::RecvError::Lagged`]
    /// and should re-read [`agents`](Self::agents).
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.inner.events.subscribe()
    }

    /// Sends `message` to agent `uid`: over its WebSocket now, at its next
    /// poll over plain HTTP (HTTP-15), or through the [`MessageBus`] when it
    /// is connected to another instance. `instance_uid` is set to `uid`.
    ///
    /// Offers the agent has not announced it accepts are refused with
    /// [`SendError::NotAccepted`] (CAP-09, RCFG-02).
    pub async fn send(
        &self,
        uid: InstanceUid,
        mut message: ServerToAgent,
    ) -> Result<Delivery, SendError> {
        message.instance_uid = uid.to_bytes();
        if let Some(result) = self.inner.deliver_locally(uid, message.clone()) {
            return result;
        }
        if self.inner.core.settings().track_state {
            let record = self.inner.load_known(uid).await?;
            check_requirement(&record, &message)?;
        }
        self.inner.forward(uid, message).await
    }

    /// Sets the remote configuration agent `uid` should run (RCFG-03) and
    /// offers it now if the agent is connected; otherwise it goes out with
    /// the agent's next message. The registry keeps offering it until the
    /// agent echoes its hash (RCFG-07/08); follow progress with
    /// [`AgentRecord::remote_config_state`] or
    /// [`wait_for_remote_config`](Self::wait_for_remote_config).
    ///
    /// Refused with [`SendError::NotAccepted`] unless the agent announced
    /// `AcceptsRemoteConfig` (RCFG-02).
    pub async fn set_remote_config(
        &self,
        uid: InstanceUid,
        config: AgentConfigMap,
    ) -> Result<Offer, SendError> {
        let offer = AgentRemoteConfig {
            config_hash: config_hash(&config),
            config: Some(config),
        };
        self.offer_desired(uid, Desired::RemoteConfig(offer)).await
    }

    /// Offers packages (PKG-01). An empty `all_packages_hash` is filled with
    /// a hash of the whole offer (PKG-12). Kept as desired state like
    /// [`set_remote_config`](Self::set_remote_config), compared with the
    /// agent's `server_provided_all_packages_hash` (PKG-14).
    pub async fn offer_packages(
        &self,
        uid: InstanceUid,
        packages: PackagesAvailable,
    ) -> Result<Offer, SendError> {
        self.offer_desired(uid, Desired::Packages(packages)).await
    }

    /// Offers connection settings. Each class needs its capability (CS-01).
    /// An empty `hash` is filled with a hash of the whole offer (CS-03).
    /// Kept as desired state, compared with the agent's
    /// `last_connection_settings_hash` (CS-10/11) and offered again on each
    /// new connection until the agent reports it.
    ///
    /// An agent without `ReportsConnectionSettingsStatus` never reports the
    /// hash, and typically applies OpAMP settings by reconnecting (the
    /// Collector's supervisor does): for it the offer is complete once
    /// delivered (CS-06, the reconnect is the confirmation) and is not sent
    /// again on the connection that follows.
    pub async fn offer_connection_settings(
        &self,
        uid: InstanceUid,
        settings: ConnectionSettingsOffers,
    ) -> Result<Offer, SendError> {
        self.offer_desired(uid, Desired::ConnectionSettings(Box::new(settings)))
            .await
    }

    /// Asks the agent to restart (CMD-01); needs `AcceptsRestartCommand`.
    pub async fn restart(&self, uid: InstanceUid) -> Result<Delivery, SendError> {
        let command = ServerToAgentCommand {
            r#type: CommandType::Restart as i32,
        };
        self.send(
            uid,
            ServerToAgent {
                command: Some(command),
                ..Default::default()
            },
        )
        .await
    }

    /// Sends a custom message; the agent must have announced its capability
    /// (CUS-04).
    pub async fn send_custom_message(
        &self,
        uid: InstanceUid,
        message: CustomMessage,
    ) -> Result<Delivery, SendError> {
        self.send(
            uid,
            ServerToAgent {
                custom_message: Some(message),
                ..Default::default()
            },
        )
        .await
    }

    /// Waits until agent `uid` reports the remote config with `hash` as
    /// applied or failed (RCFG-06/07), and returns that state
    /// ([`RemoteConfigState::Applied`] or [`RemoteConfigState::Failed`]).
    /// Wrap it in a timeout: an agent may never answer.
    pub async fn wait_for_remote_config(
        &self,
        uid: InstanceUid,
        hash: &[u8],
    ) -> Result<RemoteConfigState, SendError> {
        let mut events = self.subscribe();
        loop {
            let record = self.inner.load_known(uid).await?;
            if let Some(status) = &record.status.remote_config_status {
                if status.last_remote_config_hash == hash {
                    match status.status() {
                        opamp_proto::RemoteConfigStatuses::Applied => {
                            return Ok(RemoteConfigState::Applied);
                        }
                        opamp_proto::RemoteConfigStatuses::Failed => {
                            return Ok(RemoteConfigState::Failed {
                                message: status.error_message.clone(),
                            });
                        }
                        _ => {}
                    }
                }
            }
            loop {
                match events.recv().await {
                    Ok(AgentEvent::StatusChanged {
                        uid: changed,
                        changes,
                    }) if changed == uid
                        && changes.contains(StatusChanges::REMOTE_CONFIG_STATUS) =>
                    {
                        break;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Err(SendError::Closed),
                }
            }
        }
    }

    /// Deletes an agent's record (its connection, if any, stays open).
    pub async fn remove(&self, uid: InstanceUid) -> Result<(), StoreError> {
        let _turn = self.inner.stripe(uid).lock().await;
        self.inner.store.remove(uid).await?;
        // A later message starts a new record, as for an unknown agent.
        self.inner.invalidate(uid);
        self.inner.emit(AgentEvent::Removed { uid });
        Ok(())
    }

    async fn offer_desired(
        &self,
        uid: InstanceUid,
        mut desired: Desired,
    ) -> Result<Offer, SendError> {
        let hash = desired.hash();
        let inner = &self.inner;
        let push = {
            let _turn = inner.stripe(uid).lock().await;
            let mut record = inner.load_known(uid).await?;
            if let Some(session) = inner.session(uid) {
                session.apply_to(&mut record);
            }
            let push = desired.to_message(uid);
            check_requirement(&record, &push)?;
            let already_there = desired.reported_hash(&record) == Some(&hash);
            desired.store_in(&mut record);
            if !already_there
                && matches!(desired, Desired::ConnectionSettings(_))
                && inner.holds_websocket(uid)
            {
                // Goes out below; an agent that cannot report the outcome
                // is done with it once delivered.
                record.note_connection_settings_sent(&hash);
            }
            inner.store.save(record).await?;
            // The agent's next message offers the new desired state (RCFG-08).
            inner.invalidate(uid);
            (!already_there).then_some(push)
        };
        let Some(push) = push else {
            return Ok(Offer {
                hash,
                delivery: None,
            });
        };
        let local = {
            let mut live = lock(&inner.live);
            live.get_mut(&uid)
                .filter(|entry| !entry.connection.is_closed())
                .map(|entry| {
                    let transport = entry.connection.transport();
                    if transport == TransportKind::WebSocket {
                        *desired.offered_slot(entry.session.offered_mut()) = Some(hash.clone());
                    }
                    (entry.connection.clone(), transport)
                })
        };
        let delivery = match local {
            // The next poll's bookkeeping includes it (HTTP-15).
            Some((_, TransportKind::PlainHttp)) => Some(Delivery::QueuedForPoll),
            Some((connection, _)) => Some(connection.deliver(push)?),
            None => match inner.forward(uid, push).await {
                Ok(delivery) => Some(delivery),
                Err(SendError::NotConnected(_)) => None,
                Err(other) => return Err(other),
            },
        };
        Ok(Offer { hash, delivery })
    }

    /// Processes a message that arrived on `connection` (WebSocket).
    pub(crate) async fn receive(
        &self,
        connection: &Connection,
        message: &AgentToServer,
        uid: InstanceUid,
    ) -> Received {
        self.inner.exchange(connection, message, uid).await
    }

    /// Processes a plain-HTTP message: finds or starts the agent's session.
    pub(crate) async fn receive_http(
        &self,
        config: &Arc<ConnectionConfig>,
        peer: &PeerInfo,
        message: &AgentToServer,
        uid: InstanceUid,
    ) -> HttpReceived {
        let existing = {
            let live = lock(&self.inner.live);
            live.get(&uid)
                .map(|entry| entry.connection.clone())
                .filter(|c| c.transport() == TransportKind::PlainHttp && !c.is_closed())
        };
        let (connection, new_session) = match existing {
            Some(connection) => (connection, false),
            None => (
                Connection::plain_http(peer.clone(), Arc::clone(config)),
                true,
            ),
        };
        let mut received = self.inner.exchange(&connection, message, uid).await;
        match received.moved_to.take() {
            Some(own) => HttpReceived {
                connection: own,
                new_session: true,
                received,
            },
            None => HttpReceived {
                connection,
                new_session,
                received,
            },
        }
    }

    /// Forgets every agent of a closed connection (MSG-07) and records why.
    pub(crate) async fn connection_closed(
        &self,
        connection: &Connection,
        reason: &DisconnectReason,
    ) {
        self.inner.connection_closed(connection, reason).await;
    }

    /// Messages other instances left for a plain-HTTP agent, through the
    /// [`MessageBus`].
    pub(crate) async fn take_forwarded(&self, uid: InstanceUid) -> Vec<ServerToAgent> {
        self.inner.bus.take_pending(uid).await
    }

    /// Plain-HTTP sessions silent for longer than their stale timeout: a
    /// few of the agent's own polling intervals, within the floor and the
    /// ceiling (HTTP-13).
    pub(crate) fn stale_sessions(&self, now: Instant) -> Vec<Connection> {
        let now = now.into_std();
        let settings = &self.inner.settings;
        lock(&self.inner.live)
            .values()
            .filter(|entry| entry.connection.transport() == TransportKind::PlainHttp)
            .filter(|entry| {
                let limit =
                    entry
                        .session
                        .poll_interval()
                        .map_or(settings.stale_after, |interval| {
                            (interval * STALE_POLLS)
                                .clamp(settings.stale_floor, settings.stale_after)
                        });
                now.saturating_duration_since(entry.session.last_heard()) >= limit
            })
            .map(|entry| entry.connection.clone())
            .collect()
    }

    /// How often to look for stale plain-HTTP sessions.
    pub(crate) fn stale_sweep_interval(&self) -> Duration {
        (self.inner.settings.stale_floor / 3).max(Duration::from_millis(10))
    }
}

/// One kind of desired state.
enum Desired {
    RemoteConfig(AgentRemoteConfig),
    Packages(PackagesAvailable),
    ConnectionSettings(Box<ConnectionSettingsOffers>),
}

impl Desired {
    /// The offer's hash; an empty packages or connection settings hash is
    /// first filled with a hash of the whole offer (PKG-12, CS-03).
    fn hash(&mut self) -> Bytes {
        match self {
            Self::RemoteConfig(offer) => offer.config_hash.clone(),
            Self::Packages(offer) => {
                if offer.all_packages_hash.is_empty() {
                    offer.all_packages_hash = message_hash(offer);
                }
                offer.all_packages_hash.clone()
            }
            Self::ConnectionSettings(offer) => {
                if offer.hash.is_empty() {
                    offer.hash = message_hash(offer.as_ref());
                }
                offer.hash.clone()
            }
        }
    }

    fn to_message(&self, uid: InstanceUid) -> ServerToAgent {
        let mut message = ServerToAgent {
            instance_uid: uid.to_bytes(),
            ..Default::default()
        };
        match self {
            Self::RemoteConfig(offer) => message.remote_config = Some(offer.clone()),
            Self::Packages(offer) => message.packages_available = Some(offer.clone()),
            Self::ConnectionSettings(offer) => {
                message.connection_settings = Some(offer.as_ref().clone());
            }
        }
        message
    }

    fn store_in(&self, record: &mut AgentRecord) {
        match self {
            Self::RemoteConfig(offer) => record.desired.remote_config = Some(offer.clone()),
            Self::Packages(offer) => record.desired.packages = Some(offer.clone()),
            Self::ConnectionSettings(offer) => {
                record.desired.connection_settings = Some(offer.as_ref().clone());
            }
        }
    }

    fn reported_hash<'r>(&self, record: &'r AgentRecord) -> Option<&'r Bytes> {
        let status = &record.status;
        match self {
            Self::RemoteConfig(_) => status
                .remote_config_status
                .as_ref()
                .map(|s| &s.last_remote_config_hash),
            Self::Packages(_) => status
                .package_statuses
                .as_ref()
                .map(|s| &s.server_provided_all_packages_hash),
            Self::ConnectionSettings(_) => record.connection_settings_hash_in_effect(),
        }
    }

    fn offered_slot<'o>(&self, offered: &'o mut Offered) -> &'o mut Option<Bytes> {
        match self {
            Self::RemoteConfig(_) => &mut offered.remote_config,
            Self::Packages(_) => &mut offered.packages,
            Self::ConnectionSettings(_) => &mut offered.connection_settings,
        }
    }
}

fn check_requirement(record: &AgentRecord, message: &ServerToAgent) -> Result<(), SendError> {
    let status = &record.status;
    messages::check_accepted(
        record.uid,
        status.capabilities,
        status.custom_capabilities.as_ref(),
        message,
    )
}

impl LocalDelivery for RegistryInner {
    fn deliver_locally(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> Option<Result<Delivery, SendError>> {
        RegistryInner::deliver_locally(self, uid, message)
    }
}

impl RegistryInner {
    /// The stored record of `uid`; an agent without one is unknown.
    async fn load_known(&self, uid: InstanceUid) -> Result<AgentRecord, SendError> {
        self.store
            .load(uid)
            .await?
            .ok_or(SendError::UnknownAgent(uid))
    }

    fn stripe(&self, uid: InstanceUid) -> &tokio::sync::Mutex<()> {
        // UUIDv7 ends in random bits; any byte spreads well enough.
        &self.stripes[usize::from(uid.as_bytes()[15]) % STRIPES]
    }

    fn emit(&self, event: AgentEvent) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    /// Sends to an agent connected here; `None` if it is not.
    pub(crate) fn deliver_locally(
        &self,
        uid: InstanceUid,
        mut message: ServerToAgent,
    ) -> Option<Result<Delivery, SendError>> {
        let connection = {
            let live = lock(&self.live);
            live.get(&uid)?.connection.clone()
        };
        if connection.is_closed() {
            return None;
        }
        message.instance_uid = uid.to_bytes();
        Some(connection.send(message))
    }

    async fn forward(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> Result<Delivery, SendError> {
        match self.bus.forward(uid, message).await {
            Ok(()) => Ok(Delivery::Forwarded),
            Err(BusError::NoRoute(_)) => Err(SendError::NotConnected(uid)),
            Err(other) => Err(SendError::Bus(other)),
        }
    }

    /// The one exchange both transports use: step the core with what this
    /// instance knows, fetch what it asks for, carry out what it decides.
    async fn exchange(
        &self,
        connection: &Connection,
        message: &AgentToServer,
        uid: InstanceUid,
    ) -> Received {
        let _turn = self.stripe(uid).lock().await;
        let now = Instant::now().into_std();
        let this = ConnectionRef::new(
            connection.id(),
            connection.transport(),
            connection.peer_addr(),
        );
        let new_uid = InstanceUid::new_v7;
        let inbound = Inbound::new(uid, message, this, now, SystemTime::now(), &new_uid);
        let (mut holder, other) = self.holder(uid, connection);
        if let Holder::This(session) = &mut holder {
            // SEQ-07: a record lost behind the registry's back (deleted from
            // a shared store, say) is noticed at the next heartbeat. Stores
            // answer `contains` from memory (see `AgentStore::contains`).
            if session.in_sync()
                && self.core.settings().track_state
                && !matches!(self.store.contains(uid).await, Ok(true))
            {
                session.invalidate();
            }
        }
        let mut history = match holder {
            Holder::This(_) => None,
            _ => Some(self.reconnect_history(uid, now)),
        };
        let mut stored = Stored::NotLoaded;
        let exchange = loop {
            match self.core.step(&inbound, &holder, stored, history.as_mut()) {
                Step::Done(exchange) => break exchange,
                Step::NeedRecord => stored = self.load(uid, &holder).await,
                Step::NeedProbe { .. } => {
                    stored = Stored::NotLoaded;
                    let alive = match &other {
                        Some(old) => old.probe(self.settings.probe_deadline).await,
                        None => false,
                    };
                    if let Holder::Other { alive: slot, .. } = &mut holder {
                        *slot = if alive {
                            Liveness::Alive
                        } else {
                            Liveness::Dead
                        };
                    }
                    tracing::debug!(%uid, alive, "probed the connection holding the uid");
                }
            }
        };
        if let Some(history) = history {
            self.keep_reconnect_history(uid, history);
        }
        self.carry_out(connection, message, uid, other, *exchange)
            .await
    }

    /// What this instance knows about who holds `uid`.
    fn holder(&self, uid: InstanceUid, connection: &Connection) -> (Holder, Option<Connection>) {
        let live = lock(&self.live);
        let Some(entry) = live.get(&uid) else {
            return (Holder::Nobody, None);
        };
        if entry.connection == *connection {
            return (Holder::This(entry.session.clone()), None);
        }
        if entry.connection.is_closed() {
            return (Holder::Nobody, None);
        }
        let other = &entry.connection;
        (
            Holder::Other {
                connection: ConnectionRef::new(other.id(), other.transport(), other.peer_addr()),
                session: entry.session.clone(),
                alive: Liveness::Unknown,
            },
            Some(other.clone()),
        )
    }

    /// Reads the record for the core; the session kept in memory for an
    /// agent whose connection just closed is newer than the store.
    async fn load(&self, uid: InstanceUid, holder: &Holder) -> Stored {
        match self.store.load(uid).await {
            Ok(Some(mut record)) => {
                if matches!(holder, Holder::Nobody) {
                    if let Some(parked) = lock(&self.parked).get(&uid) {
                        parked.apply_to(&mut record);
                    }
                }
                Stored::Found(record)
            }
            Ok(None) => Stored::Missing,
            Err(error) => {
                tracing::error!(%uid, %error, "agent store load failed");
                Stored::Failed
            }
        }
    }

    async fn carry_out(
        &self,
        connection: &Connection,
        message: &AgentToServer,
        uid: InstanceUid,
        other: Option<Connection>,
        exchange: Exchange,
    ) -> Received {
        let Exchange {
            uid: key,
            mut reply,
            session,
            release,
            replaced,
            refused_duplicate,
            detached,
            save,
            events,
            disposition,
            ..
        } = exchange;
        // A second agent on a shared plain-HTTP uid gets a session of its own.
        let moved_to = (detached && disposition == Disposition::Continue)
            .then(|| connection.sibling_session());
        let connection = moved_to.as_ref().unwrap_or(connection);
        match disposition {
            Disposition::Refused => {
                tracing::warn!(%uid, connection = connection.id(), "duplicate instance uid refused (UID-10)");
            }
            Disposition::Throttled(wait) => {
                tracing::warn!(%uid, connection = connection.id(), ?wait, "agent reconnects too often; asked to wait");
            }
            _ => {}
        }
        if refused_duplicate {
            if let Some(entry) = lock(&self.live).get_mut(&uid) {
                entry.session.mark_duplicate_refused();
            }
        }
        if let (Some(old_id), Some(old)) = (replaced, other) {
            if old.id() == old_id {
                tracing::info!(%uid, old = old.id(), new = connection.id(), "agent reconnected; closing its old connection");
                self.forget_live(uid, &old);
                old.forget_agent(uid);
                if old.agents().is_empty() {
                    old.close_for(DisconnectReason::Replaced);
                }
            }
        }
        if let Some(released) = release {
            self.forget_live(released, connection);
            connection.forget_agent(released);
        }
        if key != uid {
            tracing::info!(%uid, new = %key, "agent gets a new instance uid (UID-05/09)");
        }
        let mut session = session;
        let starts = events.iter().find_map(|event| match event {
            AgentEvent::Connected { uid, transport } if *uid == key => Some(*transport),
            _ => None,
        });
        if let Some(transport) = starts {
            // Before the first save, so an ownership-fencing store knows.
            self.bus.agent_connected(key, transport).await;
        }
        for record in save {
            let saved_uid = record.uid;
            // A plain-HTTP agent's polls may reach several instances: if one
            // of the others claimed it meanwhile, this poll proves the agent
            // is talking to this instance now (a WebSocket's claim is made
            // when it connects and stands).
            let retry =
                (connection.transport() == TransportKind::PlainHttp).then(|| record.clone());
            let saved = match (self.store.save(record).await, retry) {
                (Err(StoreError::NotOwner(why)), Some(record)) => {
                    tracing::info!(uid = %saved_uid, %why, "agent polled another instance meanwhile; claiming it again");
                    self.bus
                        .agent_connected(saved_uid, TransportKind::PlainHttp)
                        .await;
                    self.store.save(record).await
                }
                (Err(StoreError::NotOwner(why)), None) => {
                    // The agent's uid is held on another instance under a
                    // newer claim (the same agent reconnected there, or a
                    // second agent with its uid): the newer claim wins and
                    // this older connection goes.
                    tracing::info!(uid = %saved_uid, %why, connection = connection.id(), "agent claimed by another instance; closing this connection");
                    connection.close_for(DisconnectReason::Replaced);
                    continue;
                }
                (other, _) => other,
            };
            if let Err(error) = saved {
                tracing::error!(uid = %saved_uid, %error, "agent store save failed");
                if saved_uid == key {
                    // The next message brings everything again, once the
                    // store works.
                    reply.flags |= ServerToAgentFlags::REPORT_FULL_STATE.bits();
                    if let Some(session) = session.as_mut() {
                        session.invalidate();
                    }
                }
            } else if saved_uid == uid {
                lock(&self.parked).remove(&uid);
            }
        }
        match disposition {
            Disposition::Continue => {
                connection.note_agent(
                    key,
                    message.typed_capabilities(),
                    message.custom_capabilities.as_ref(),
                );
                if let Some(session) = session {
                    lock(&self.live).insert(
                        key,
                        Live {
                            connection: connection.clone(),
                            session,
                        },
                    );
                }
            }
            Disposition::Disconnected => {
                self.forget_live(key, connection);
                connection.forget_agent(key);
                self.bus.agent_disconnected(key).await;
            }
            _ => {}
        }
        for event in events {
            self.emit(event);
        }
        Received {
            uid: key,
            response: reply,
            disposition,
            moved_to,
        }
    }

    /// The reconnect guard's history of `uid`, swept now and then.
    fn reconnect_history(&self, uid: InstanceUid, now: std::time::Instant) -> ReconnectHistory {
        let mut book = lock(&self.reconnects);
        if let Some(guard) = &self.core.settings().reconnect_guard {
            let sweep_due = book
                .last_sweep
                .is_none_or(|last| now.saturating_duration_since(last) >= guard.window);
            if sweep_due {
                book.agents
                    .retain(|_, history| !history.expired(guard, now));
                book.last_sweep = Some(now);
            }
        }
        book.agents
            .get(&uid)
            .copied()
            .unwrap_or_else(|| ReconnectHistory::new(now))
    }

    fn keep_reconnect_history(&self, uid: InstanceUid, history: ReconnectHistory) {
        if self.core.settings().reconnect_guard.is_some() {
            lock(&self.reconnects).agents.insert(uid, history);
        }
    }

    /// The session of `uid`, whichever connection holds it, or the unsaved
    /// one of its just closed connection.
    fn session(&self, uid: InstanceUid) -> Option<AgentSession> {
        let live = lock(&self.live)
            .get(&uid)
            .map(|entry| entry.session.clone());
        live.or_else(|| lock(&self.parked).get(&uid).cloned())
    }

    /// The record changed behind the session (new desired state, removal):
    /// the agent's next message goes through the store.
    fn invalidate(&self, uid: InstanceUid) {
        if let Some(entry) = lock(&self.live).get_mut(&uid) {
            entry.session.invalidate();
        }
    }

    /// Whether `uid` is live on a WebSocket of this instance.
    fn holds_websocket(&self, uid: InstanceUid) -> bool {
        lock(&self.live).get(&uid).is_some_and(|entry| {
            entry.connection.transport() == TransportKind::WebSocket
                && !entry.connection.is_closed()
        })
    }

    /// Removes `uid` from the live map if `connection` holds it.
    fn forget_live(&self, uid: InstanceUid, connection: &Connection) -> bool {
        let mut live = lock(&self.live);
        if live
            .get(&uid)
            .is_some_and(|entry| entry.connection == *connection)
        {
            live.remove(&uid);
            return true;
        }
        false
    }

    async fn connection_closed(&self, connection: &Connection, reason: &DisconnectReason) {
        let uids: Vec<InstanceUid> = {
            // The connection lists every uid it carried (each live entry is
            // noted on its connection first), so closing costs its own few
            // agents, not a scan of the whole fleet: a network blip that
            // drops every agent at once stays linear.
            let carried = connection.agents();
            let mut live = lock(&self.live);
            let uids: Vec<_> = carried
                .into_iter()
                .filter(|uid| {
                    live.get(uid)
                        .is_some_and(|entry| entry.connection == *connection)
                })
                .collect();
            let mut parked = lock(&self.parked);
            for uid in &uids {
                if let Some(entry) = live.remove(uid) {
                    if entry.session.unsaved() {
                        // A reconnect before it is saved below still sees it.
                        parked.insert(*uid, entry.session);
                    }
                }
            }
            uids
        };
        for uid in uids {
            if self.core.settings().track_state {
                let _turn = self.stripe(uid).lock().await;
                let parked = lock(&self.parked).remove(&uid);
                // The agent may already be back on another connection.
                let reconnected = lock(&self.live).contains_key(&uid);
                match self.store.load(uid).await {
                    Ok(Some(_)) if reconnected => {}
                    Ok(Some(mut record)) => {
                        record.connection = None;
                        // Saves the bookkeeping heartbeats kept in memory,
                        // unless a later message saved newer.
                        if let Some(session) = parked {
                            session.apply_to(&mut record);
                        }
                        match self.store.save(record).await {
                            Ok(()) => {}
                            // Another instance holds the agent by now; what
                            // this one knew is older.
                            Err(StoreError::NotOwner(why)) => {
                                tracing::info!(%uid, %why, "closing connection's save dropped: the agent moved");
                            }
                            Err(error) => {
                                tracing::error!(%uid, %error, "agent store save failed");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!(%uid, %error, "agent store load failed"),
                }
            }
            if !lock(&self.live).contains_key(&uid) {
                self.bus.agent_disconnected(uid).await;
            }
            self.emit(AgentEvent::Disconnected {
                uid,
                reason: reason.clone(),
            });
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
