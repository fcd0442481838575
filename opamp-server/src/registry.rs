//! The agent registry: protocol bookkeeping per instance uid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentIdentification, AgentRemoteConfig, AgentToServer,
    CommandType, ConnectionSettingsOffers, CustomMessage, InstanceUid, PackagesAvailable,
    ServerToAgent, ServerToAgentCommand, ServerToAgentFlags, config_hash, message_hash,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::bus::{BusInbox, LocalBus, MessageBus};
use crate::callbacks::DisconnectReason;
use crate::connection::{Connection, ConnectionConfig, Delivery, PeerInfo, TransportKind};
use crate::error::{BusError, SendError, StoreError};
use crate::events::{AgentEvent, StatusChanges};
use crate::messages::{self, Requirement};
use crate::record::{AgentRecord, ConnectionSummary, RemoteConfigState};
use crate::store::{AgentStore, MemoryStore};

/// Default silence after which a plain-HTTP agent is stale: three missed
/// polls at the default 30 s interval (HTTP-13).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(90);

const STRIPES: usize = 64;

/// What to do when an instance uid that is live on one connection shows up
/// on another (UID-09, UID-10).
///
/// Whatever the policy, a message whose `sequence_num` continues exactly
/// where the live connection left off is taken as the same agent
/// reconnecting before the server noticed the old connection died: the new
/// connection takes over and the old one is closed
/// ([`DisconnectReason::Replaced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DuplicateUidPolicy {
    /// Give the newcomer a fresh UUIDv7 through
    /// `agent_identification.new_instance_uid` (UID-09). Its message is
    /// recorded under the new uid.
    #[default]
    AssignNewUid,
    /// Answer the newcomer with a `BAD_REQUEST` error and close its
    /// connection (UID-10). Once a duplicate was refused, a continuing
    /// `sequence_num` no longer replaces the live connection (the refused
    /// client's next number may continue it by chance); the agent gets its
    /// uid back when the live connection ends.
    Refuse,
}

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
/// State lives in an [`AgentStore`] ([`MemoryStore`] by default) and
/// messages for agents connected to other instances travel over a
/// [`MessageBus`] ([`LocalBus`] by default).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

/// Builds a [`Registry`].
#[must_use]
pub struct RegistryBuilder {
    store: Arc<dyn AgentStore>,
    bus: Arc<dyn MessageBus>,
    settings: RegistrySettings,
}

#[derive(Debug, Clone)]
struct RegistrySettings {
    duplicate_policy: DuplicateUidPolicy,
    stale_after: Duration,
    event_capacity: usize,
    track_state: bool,
    reconnect_guard: Option<ReconnectGuard>,
}

/// Limits how often one agent may start a new connection (or plain-HTTP
/// session), so an agent stuck in a reconnect loop costs little: past the
/// limit its connections are answered with `UNAVAILABLE` and a
/// `retry_info` hint (WS-22; `503` with `Retry-After` over plain HTTP),
/// the hint doubling with each repeated offence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectGuard {
    /// New connections allowed per agent within `window`.
    pub limit: u32,
    /// The window the limit applies to.
    pub window: Duration,
    /// The first backoff hint; it doubles with each offence.
    pub first_backoff: Duration,
    /// The largest backoff hint.
    pub max_backoff: Duration,
}

impl Default for ReconnectGuard {
    /// 20 connections a minute; hints from 5 s up to 5 min.
    fn default() -> Self {
        Self {
            limit: 20,
            window: Duration::from_secs(60),
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl ReconnectGuard {
    /// A guard allowing `limit` new connections per agent within `window`,
    /// with the default backoff hints.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            ..Self::default()
        }
    }

    /// Sets the first and the largest backoff hint.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max.max(first);
        self
    }
}

/// Recent connection starts of one agent, for the [`ReconnectGuard`].
#[derive(Debug, Clone, Copy)]
struct ReconnectHistory {
    window_start: Instant,
    count: u32,
    /// Offences in a row; resets after a quiet window.
    strikes: u32,
    blocked_until: Option<Instant>,
}

impl ReconnectHistory {
    /// Counts a connection start at `now`; `Some(wait)` refuses it.
    fn admit(&mut self, guard: &ReconnectGuard, now: Instant) -> Option<Duration> {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Some(until - now);
            }
            self.blocked_until = None;
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= guard.window {
            if elapsed >= guard.window * 2 {
                self.strikes = 0;
            }
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count <= guard.limit {
            return None;
        }
        self.strikes = self.strikes.saturating_add(1);
        let factor = 1u32 << self.strikes.saturating_sub(1).min(16);
        let wait = guard
            .first_backoff
            .saturating_mul(factor)
            .min(guard.max_backoff);
        self.blocked_until = Some(now + wait);
        // The next window starts after the wait.
        self.window_start = now + wait;
        self.count = 0;
        Some(wait)
    }

    fn expired(&self, guard: &ReconnectGuard, now: Instant) -> bool {
        self.blocked_until.is_none_or(|until| until <= now)
            && now.saturating_duration_since(self.window_start) >= guard.window * 2
    }
}

pub(crate) struct RegistryInner {
    store: Arc<dyn AgentStore>,
    bus: Arc<dyn MessageBus>,
    settings: RegistrySettings,
    live: Mutex<HashMap<InstanceUid, LiveEntry>>,
    /// Unsaved bookkeeping of agents whose connection just closed, until
    /// [`connection_closed`](Self::connection_closed) saves it.
    parked: Mutex<HashMap<InstanceUid, HotState>>,
    events: broadcast::Sender<AgentEvent>,
    /// Serialise read-modify-write of one agent's record.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Connection starts per agent, for the reconnect guard; entries of
    /// quiet agents are swept out.
    reconnects: Mutex<ReconnectBook>,
}

#[derive(Default)]
struct ReconnectBook {
    agents: HashMap<InstanceUid, ReconnectHistory>,
    last_sweep: Option<Instant>,
}

/// An agent connected to this instance.
struct LiveEntry {
    connection: Connection,
    /// Hashes offered on this connection, so an agent that does not (yet)
    /// echo a hash is not sent the same offer with every message.
    offered: Offered,
    /// A `ReportFullState` for an agent with no known description was
    /// already sent on this connection.
    asked_for_description: bool,
    /// A duplicate of this uid was refused (UID-10) while this connection
    /// held it. The refused client reconnects with its next
    /// `sequence_num`, which may continue this agent's numbering by chance,
    /// so a continuation no longer proves a reconnect of this agent.
    duplicate_refused: bool,
    /// The per-message bookkeeping of the agent's record, kept here while the
    /// agent is connected so a bare heartbeat skips the store. `None` until a
    /// message has gone through the store, and again whenever the record may
    /// hold something this does not reflect (a pending `ReportFullState`, a
    /// new desired state, a removal, a failing store).
    hot: Option<HotState>,
}

/// What a bare heartbeat reads and writes in an agent's record.
#[derive(Debug, Clone, Copy)]
struct HotState {
    last_sequence_num: u64,
    last_seen: SystemTime,
    capabilities: AgentCapabilities,
    has_description: bool,
    /// `last_sequence_num` / `last_seen` changed since the record was saved.
    unsaved: bool,
}

impl HotState {
    fn of(record: &AgentRecord) -> Option<Self> {
        if record.awaiting_full_state {
            return None;
        }
        Some(Self {
            last_sequence_num: record.last_sequence_num?,
            last_seen: record.last_seen,
            capabilities: record.status.capabilities,
            has_description: record.status.description.is_some(),
            unsaved: false,
        })
    }

    /// Copies the newer bookkeeping into a record read from the store.
    fn apply(&self, record: &mut AgentRecord) {
        record.last_sequence_num = Some(self.last_sequence_num);
        record.last_seen = self.last_seen;
    }

    /// Whether handling `message` through the store would change nothing but
    /// `last_sequence_num` and `last_seen` and reply with nothing but the uid:
    /// same capabilities, no status sub-message (SEQ-02: omitted means
    /// unchanged), no uid request or disconnect, `sequence_num` in order
    /// (SEQ-05) and no description to ask for.
    fn covers(&self, message: &AgentToServer, asked_for_description: bool) -> bool {
        let sequence = message.sequence_num;
        let last = self.last_sequence_num;
        message.typed_capabilities() == self.capabilities
            && (sequence == last.wrapping_add(1) || sequence == last)
            && (self.has_description || asked_for_description)
            && message.agent_description.is_none()
            && message.health.is_none()
            && message.effective_config.is_none()
            && message.remote_config_status.is_none()
            && message.package_statuses.is_none()
            && message.custom_capabilities.is_none()
            && message.available_components.is_none()
            && message.connection_settings_status.is_none()
            && message.agent_disconnect.is_none()
            && !message
                .typed_flags()
                .contains(opamp_proto::AgentToServerFlags::REQUEST_INSTANCE_UID)
    }
}

#[derive(Default)]
struct Offered {
    remote_config: Option<Bytes>,
    packages: Option<Bytes>,
    connection_settings: Option<Bytes>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Carry on.
    Continue,
    /// The agent sent `agent_disconnect`; it is no longer associated with the
    /// connection (MSG-07).
    Disconnected,
    /// The uid is live elsewhere and the policy refuses duplicates: reply,
    /// then close the connection.
    Refused,
    /// The agent connects too often ([`ReconnectGuard`]): reply (an
    /// `UNAVAILABLE` error with `retry_info`), then close the connection.
    Throttled(Duration),
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

enum Claim {
    /// The uid is already live on this connection.
    Continuing,
    /// Nobody holds the uid.
    New,
    /// Another live connection holds it and this is the same agent.
    Replace(Connection),
    /// Another live connection holds it and this is someone else.
    Duplicate,
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
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl RegistryBuilder {
    /// Stores records in `store` instead of memory. Bare heartbeats of
    /// connected agents do not reach the store; see [`AgentStore`] for when
    /// their bookkeeping is saved.
    pub fn store(mut self, store: impl AgentStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Forwards to other instances through `bus`.
    pub fn bus(mut self, bus: impl MessageBus) -> Self {
        self.bus = Arc::new(bus);
        self
    }

    /// What to do with duplicate instance uids (default
    /// [`DuplicateUidPolicy::AssignNewUid`]).
    pub fn duplicate_policy(mut self, policy: DuplicateUidPolicy) -> Self {
        self.settings.duplicate_policy = policy;
        self
    }

    /// Silence after which a plain-HTTP agent's session ends as
    /// [`DisconnectReason::Stale`] (default [`DEFAULT_STALE_AFTER`]). Set it
    /// above the agents' polling interval.
    pub fn stale_after(mut self, silence: Duration) -> Self {
        self.settings.stale_after = silence;
        self
    }

    /// How many events a slow subscriber may fall behind before it misses
    /// some (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.settings.event_capacity = capacity.max(1);
        self
    }

    /// Limits how often one agent may connect anew (default
    /// [`ReconnectGuard::default`]); `None` turns the guard off.
    pub fn reconnect_guard(mut self, guard: Option<ReconnectGuard>) -> Self {
        self.settings.reconnect_guard = guard;
        self
    }

    /// Turns status tracking off: no store, no sequence checks, no desired
    /// state; only connection tracking, duplicates and delivery remain.
    /// On by default.
    pub fn track_state(mut self, track: bool) -> Self {
        self.settings.track_state = track;
        self
    }

    /// Builds the registry.
    pub fn build(self) -> Registry {
        let (events, _) = broadcast::channel(self.settings.event_capacity);
        let inner = Arc::new(RegistryInner {
            store: self.store,
            bus: self.bus,
            settings: self.settings,
            live: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            events,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            reconnects: Mutex::new(ReconnectBook::default()),
        });
        inner.bus.attach(BusInbox {
            registry: Arc::downgrade(&inner),
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
            settings: RegistrySettings {
                duplicate_policy: DuplicateUidPolicy::default(),
                stale_after: DEFAULT_STALE_AFTER,
                event_capacity: 1024,
                track_state: true,
                reconnect_guard: Some(ReconnectGuard::default()),
            },
        }
    }

    /// Every known agent. `last_seen` of agents connected here is current
    /// even when the store has not been told yet.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut records = self.inner.store.list().await?;
        for record in &mut records {
            if let Some(hot) = self.inner.hot(record.uid) {
                hot.apply(record);
            }
        }
        Ok(records)
    }

    /// One agent's record, with a current `last_seen` if it is connected
    /// here.
    pub async fn agent(&self, uid: InstanceUid) -> Result<Option<AgentRecord>, StoreError> {
        let mut record = self.inner.store.load(uid).await?;
        if let (Some(record), Some(hot)) = (record.as_mut(), self.inner.hot(uid)) {
            hot.apply(record);
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
        if self.inner.settings.track_state {
            let record = self
                .inner
                .store
                .load(uid)
                .await?
                .ok_or(SendError::UnknownAgent(uid))?;
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
        let hash = config_hash(&config);
        let offer = AgentRemoteConfig {
            config: Some(config),
            config_hash: hash.clone(),
        };
        self.offer_desired(uid, hash, Desired::RemoteConfig(offer))
            .await
    }

    /// Offers packages (PKG-01). An empty `all_packages_hash` is filled with
    /// a hash of the whole offer (PKG-12). Kept as desired state like
    /// [`set_remote_config`](Self::set_remote_config), compared with the
    /// agent's `server_provided_all_packages_hash` (PKG-14).
    pub async fn offer_packages(
        &self,
        uid: InstanceUid,
        mut packages: PackagesAvailable,
    ) -> Result<Offer, SendError> {
        if packages.all_packages_hash.is_empty() {
            packages.all_packages_hash = message_hash(&packages);
        }
        let hash = packages.all_packages_hash.clone();
        self.offer_desired(uid, hash, Desired::Packages(packages))
            .await
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
        mut settings: ConnectionSettingsOffers,
    ) -> Result<Offer, SendError> {
        if settings.hash.is_empty() {
            settings.hash = message_hash(&settings);
        }
        let hash = settings.hash.clone();
        self.offer_desired(uid, hash, Desired::ConnectionSettings(Box::new(settings)))
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
            let record = self
                .inner
                .store
                .load(uid)
                .await?
                .ok_or(SendError::UnknownAgent(uid))?;
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
        self.inner.drop_hot(uid);
        self.inner.emit(AgentEvent::Removed { uid });
        Ok(())
    }

    async fn offer_desired(
        &self,
        uid: InstanceUid,
        hash: Bytes,
        desired: Desired,
    ) -> Result<Offer, SendError> {
        let inner = &self.inner;
        let push = {
            let _turn = inner.stripe(uid).lock().await;
            let mut record = inner
                .store
                .load(uid)
                .await?
                .ok_or(SendError::UnknownAgent(uid))?;
            if let Some(hot) = inner.hot(uid) {
                hot.apply(&mut record);
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
            inner.drop_hot(uid);
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
                        *desired.offered_slot(&mut entry.offered) = Some(hash.clone());
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
        self.inner.receive(connection, message, uid).await
    }

    /// Processes a plain-HTTP message: finds or starts the agent's session.
    pub(crate) async fn receive_http(
        &self,
        config: &Arc<ConnectionConfig>,
        peer: &PeerInfo,
        message: &AgentToServer,
        uid: InstanceUid,
    ) -> HttpReceived {
        let now = Instant::now();
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
        connection.touch(now);
        let received = self.inner.receive(&connection, message, uid).await;
        HttpReceived {
            connection,
            new_session,
            received,
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

    /// Plain-HTTP sessions silent for longer than the stale timeout.
    pub(crate) fn stale_sessions(&self, now: Instant) -> Vec<Connection> {
        let stale_after = self.inner.settings.stale_after;
        lock(&self.inner.live)
            .values()
            .map(|entry| &entry.connection)
            .filter(|connection| {
                connection
                    .last_seen()
                    .is_some_and(|seen| now.duration_since(seen) >= stale_after)
            })
            .cloned()
            .collect()
    }

    /// The stale timeout.
    pub(crate) fn stale_after(&self) -> Duration {
        self.inner.settings.stale_after
    }
}

/// One kind of desired state.
enum Desired {
    RemoteConfig(AgentRemoteConfig),
    Packages(PackagesAvailable),
    ConnectionSettings(Box<ConnectionSettingsOffers>),
}

impl Desired {
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
    match messages::unmet_requirement(
        status.capabilities,
        status.custom_capabilities.as_ref(),
        message,
    ) {
        None => Ok(()),
        Some(Requirement::Capability(capability)) => Err(SendError::NotAccepted {
            uid: record.uid,
            capability,
        }),
        Some(Requirement::CustomCapability(capability)) => {
            Err(SendError::CustomCapabilityNotAnnounced {
                uid: record.uid,
                capability,
            })
        }
    }
}

impl RegistryInner {
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

    async fn receive(
        &self,
        connection: &Connection,
        message: &AgentToServer,
        uid: InstanceUid,
    ) -> Received {
        let _turn = self.stripe(uid).lock().await;
        let track = self.settings.track_state;
        if track && self.heartbeat(connection, message, uid).await {
            connection.note_agent(uid, message.typed_capabilities(), None);
            return Received {
                uid,
                response: ServerToAgent {
                    instance_uid: message.instance_uid.clone(),
                    ..Default::default()
                },
                disposition: Disposition::Continue,
            };
        }
        if let Some(wait) = self.admit_connection(uid, connection) {
            tracing::warn!(%uid, connection = connection.id(), ?wait, "agent reconnects too often; asked to wait");
            self.emit(AgentEvent::Throttled {
                uid,
                retry_after: wait,
            });
            let mut reply = messages::unavailable_response(Some(wait));
            if let Some(error) = reply.error_response.as_mut() {
                error.error_message = "reconnecting too often, retry later".into();
            }
            reply.instance_uid = message.instance_uid.clone();
            return Received {
                uid,
                response: reply,
                disposition: Disposition::Throttled(wait),
            };
        }
        let mut store_failed = false;
        let record = if track {
            match self.store.load(uid).await {
                Ok(mut record) => {
                    // The live entry's bookkeeping is newer than the store's.
                    if let (Some(record), Some(hot)) = (record.as_mut(), self.hot(uid)) {
                        hot.apply(record);
                    }
                    record
                }
                Err(error) => {
                    tracing::error!(%uid, %error, "agent store load failed");
                    store_failed = true;
                    None
                }
            }
        } else {
            None
        };
        let claim = self.claim(uid, connection, message, record.as_ref());
        let mut key = uid;
        let mut record = record;
        let mut response = ServerToAgent {
            instance_uid: message.instance_uid.clone(),
            ..Default::default()
        };
        let mut new_session = false;
        match claim {
            Claim::Continuing => {}
            Claim::New => new_session = true,
            Claim::Replace(old) => {
                tracing::info!(%uid, old = old.id(), new = connection.id(), "agent reconnected; closing its old connection");
                self.forget_live(uid, &old);
                old.forget_agent(uid);
                self.emit(AgentEvent::Disconnected {
                    uid,
                    reason: DisconnectReason::Replaced,
                });
                if old.agents().is_empty() {
                    old.close_for(DisconnectReason::Replaced);
                }
                new_session = true;
            }
            Claim::Duplicate => match self.settings.duplicate_policy {
                DuplicateUidPolicy::Refuse => {
                    tracing::warn!(%uid, connection = connection.id(), "duplicate instance uid refused (UID-10)");
                    if let Some(entry) = lock(&self.live).get_mut(&uid) {
                        entry.duplicate_refused = true;
                    }
                    let mut refusal = messages::bad_request_response(
                        "instance_uid is in use by another connection",
                    );
                    refusal.instance_uid = message.instance_uid.clone();
                    return Received {
                        uid,
                        response: refusal,
                        disposition: Disposition::Refused,
                    };
                }
                DuplicateUidPolicy::AssignNewUid => {
                    key = InstanceUid::new_v7();
                    tracing::warn!(%uid, new = %key, "duplicate instance uid: assigning a new one (UID-09)");
                    record = None;
                    new_session = true;
                }
            },
        }
        if key == uid
            && message
                .typed_flags()
                .contains(opamp_proto::AgentToServerFlags::REQUEST_INSTANCE_UID)
        {
            // UID-05: the agent asks for a server-generated uid.
            key = InstanceUid::new_v7();
            if let Some(old) = record.take().filter(|_| self.has_unsaved(uid)) {
                if let Err(error) = self.store.save(old).await {
                    tracing::error!(%uid, %error, "agent store save failed");
                }
            }
            self.forget_live(uid, connection);
            connection.forget_agent(uid);
            new_session = true;
        }
        if key != uid {
            response.agent_identification = Some(AgentIdentification {
                new_instance_uid: key.to_bytes(),
            });
        }

        let capabilities = message.typed_capabilities();
        connection.note_agent(key, capabilities, message.custom_capabilities.as_ref());
        let disconnecting = message.agent_disconnect.is_some();
        let now = SystemTime::now();
        let mut asked_for_description = false;
        if new_session && !disconnecting {
            lock(&self.live).insert(
                key,
                LiveEntry {
                    connection: connection.clone(),
                    offered: Offered::default(),
                    asked_for_description: false,
                    duplicate_refused: false,
                    hot: None,
                },
            );
        } else if let Some(entry) = lock(&self.live).get(&key) {
            asked_for_description = entry.asked_for_description;
        }

        let mut changes = StatusChanges::empty();
        if track && !store_failed {
            let mut record = record.unwrap_or_else(|| AgentRecord::new(key, now));
            let full_state = needs_full_state(&mut record, message, asked_for_description);
            if full_state.requested() {
                response.flags |= ServerToAgentFlags::REPORT_FULL_STATE.bits();
                record.awaiting_full_state = true;
                tracing::debug!(uid = %key, ?full_state, "asking for full state (SEQ-05)");
                if full_state == FullState::NoDescription {
                    if let Some(entry) = lock(&self.live).get_mut(&key) {
                        entry.asked_for_description = true;
                    }
                }
            }
            changes = merge_status(&mut record, message);
            if wants_component_list(&mut record) {
                response.flags |= ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS.bits();
            }
            record.last_sequence_num = Some(message.sequence_num);
            record.last_seen = now;
            if disconnecting {
                record.connection = None;
            } else if new_session || record.connection.is_none() {
                record.connection = Some(ConnectionSummary {
                    transport: connection.transport(),
                    peer: connection.peer_addr(),
                    since: now,
                });
            }
            if !disconnecting {
                self.add_offers(key, &mut record, &mut response);
            }
            let hot = HotState::of(&record);
            if let Err(error) = self.store.save(record).await {
                tracing::error!(uid = %key, %error, "agent store save failed");
                store_failed = true;
            } else if !disconnecting {
                self.set_hot(key, connection, hot);
            }
        }
        if store_failed {
            self.set_hot(key, connection, None);
            // The next message brings everything again, once the store works.
            response.flags |= ServerToAgentFlags::REPORT_FULL_STATE.bits();
        }

        if key != uid {
            self.emit(AgentEvent::UidReassigned { old: uid, new: key });
        }
        if new_session && !disconnecting {
            self.emit(AgentEvent::Connected {
                uid: key,
                transport: connection.transport(),
            });
        }
        if !changes.is_empty() {
            self.emit(AgentEvent::StatusChanged { uid: key, changes });
        }
        let disposition = if disconnecting {
            self.forget_live(key, connection);
            connection.forget_agent(key);
            self.emit(AgentEvent::Disconnected {
                uid: key,
                reason: DisconnectReason::AgentDisconnect,
            });
            Disposition::Disconnected
        } else {
            Disposition::Continue
        };
        Received {
            uid: key,
            response,
            disposition,
        }
    }

    /// Applies the reconnect guard when `message` would start a new
    /// connection or session for `uid`; `Some(wait)` refuses it.
    fn admit_connection(&self, uid: InstanceUid, connection: &Connection) -> Option<Duration> {
        let guard = self.settings.reconnect_guard?;
        let continuing = lock(&self.live)
            .get(&uid)
            .is_some_and(|entry| entry.connection == *connection);
        if continuing {
            return None;
        }
        let now = Instant::now();
        let mut book = lock(&self.reconnects);
        let sweep_due = book
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= guard.window);
        if sweep_due {
            book.agents
                .retain(|_, history| !history.expired(&guard, now));
            book.last_sweep = Some(now);
        }
        book.agents
            .entry(uid)
            .or_insert(ReconnectHistory {
                window_start: now,
                count: 0,
                strikes: 0,
                blocked_until: None,
            })
            .admit(&guard, now)
    }

    /// Decides who owns `uid` now (UID-09/10).
    fn claim(
        &self,
        uid: InstanceUid,
        connection: &Connection,
        message: &AgentToServer,
        record: Option<&AgentRecord>,
    ) -> Claim {
        let live = lock(&self.live);
        let Some(entry) = live.get(&uid) else {
            return Claim::New;
        };
        if entry.connection == *connection {
            return Claim::Continuing;
        }
        if entry.connection.is_closed() {
            return Claim::New;
        }
        let continues = !entry.duplicate_refused
            && record
                .and_then(|record| record.last_sequence_num)
                .is_some_and(|last| message.sequence_num == last.wrapping_add(1));
        if continues {
            Claim::Replace(entry.connection.clone())
        } else {
            Claim::Duplicate
        }
    }

    /// Handles a bare heartbeat of an agent live on `connection` without
    /// reading or writing its record, when [`HotState::covers`] it: only the
    /// live entry's bookkeeping changes. Returns false when the message
    /// needs the record. Call with the agent's stripe held.
    async fn heartbeat(
        &self,
        connection: &Connection,
        message: &AgentToServer,
        uid: InstanceUid,
    ) -> bool {
        if !self.with_hot(uid, connection, |hot, asked| hot.covers(message, asked)) {
            return false;
        }
        // A record lost behind our back means asking for full state (SEQ-07).
        if !matches!(self.store.contains(uid).await, Ok(true)) {
            return false;
        }
        self.with_hot(uid, connection, |hot, _| {
            hot.last_sequence_num = message.sequence_num;
            hot.last_seen = SystemTime::now();
            hot.unsaved = true;
            true
        })
    }

    /// Runs `f` on the live bookkeeping of `uid` if `connection` holds the
    /// uid and the bookkeeping is there; false otherwise.
    fn with_hot(
        &self,
        uid: InstanceUid,
        connection: &Connection,
        f: impl FnOnce(&mut HotState, bool) -> bool,
    ) -> bool {
        let mut live = lock(&self.live);
        let Some(entry) = live.get_mut(&uid) else {
            return false;
        };
        if entry.connection != *connection {
            return false;
        }
        let asked_for_description = entry.asked_for_description;
        entry
            .hot
            .as_mut()
            .is_some_and(|hot| f(hot, asked_for_description))
    }

    /// The live bookkeeping of `uid`, whichever connection holds it, or
    /// the unsaved one of its just closed connection.
    fn hot(&self, uid: InstanceUid) -> Option<HotState> {
        let live = lock(&self.live).get(&uid).and_then(|entry| entry.hot);
        live.or_else(|| lock(&self.parked).get(&uid).copied())
    }

    /// Whether `uid`'s live bookkeeping is newer than its stored record.
    fn has_unsaved(&self, uid: InstanceUid) -> bool {
        self.hot(uid).is_some_and(|hot| hot.unsaved)
    }

    /// Replaces the live bookkeeping of `uid` if `connection` holds it.
    fn set_hot(&self, uid: InstanceUid, connection: &Connection, hot: Option<HotState>) {
        if let Some(entry) = lock(&self.live).get_mut(&uid) {
            if entry.connection == *connection {
                entry.hot = hot;
            }
        }
    }

    /// Drops the live bookkeeping of `uid` (after it was saved, or with the
    /// record) so its next message goes through the store.
    fn drop_hot(&self, uid: InstanceUid) {
        if let Some(entry) = lock(&self.live).get_mut(&uid) {
            entry.hot = None;
        }
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

    /// Whether `uid` is live on a WebSocket of this instance.
    fn holds_websocket(&self, uid: InstanceUid) -> bool {
        lock(&self.live).get(&uid).is_some_and(|entry| {
            entry.connection.transport() == TransportKind::WebSocket
                && !entry.connection.is_closed()
        })
    }

    /// Adds the desired state the agent does not have yet (RCFG-08, PKG-14,
    /// CS-11), each gated by its capability (RCFG-02, PKG-01, CS-01), and
    /// each at most once per connection per hash. Connection settings go to
    /// an agent that cannot report their status only once in all.
    fn add_offers(&self, uid: InstanceUid, record: &mut AgentRecord, response: &mut ServerToAgent) {
        let mut live = lock(&self.live);
        let Some(entry) = live.get_mut(&uid) else {
            return;
        };
        let capabilities = record.status.capabilities;
        let desired = &record.desired;
        let status = &record.status;
        if let Some(offer) = &desired.remote_config {
            let reported = status
                .remote_config_status
                .as_ref()
                .map(|s| &s.last_remote_config_hash);
            if capabilities.contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
                && reported != Some(&offer.config_hash)
                && entry.offered.remote_config.as_ref() != Some(&offer.config_hash)
            {
                response.remote_config = Some(offer.clone());
                entry.offered.remote_config = Some(offer.config_hash.clone());
            }
        }
        if let Some(offer) = &desired.packages {
            let reported = status
                .package_statuses
                .as_ref()
                .map(|s| &s.server_provided_all_packages_hash);
            if capabilities.contains(AgentCapabilities::ACCEPTS_PACKAGES)
                && reported != Some(&offer.all_packages_hash)
                && entry.offered.packages.as_ref() != Some(&offer.all_packages_hash)
            {
                response.packages_available = Some(offer.clone());
                entry.offered.packages = Some(offer.all_packages_hash.clone());
            }
        }
        let mut sent_settings = None;
        if let Some(offer) = &desired.connection_settings {
            let reported = record.connection_settings_hash_in_effect();
            if reported != Some(&offer.hash)
                && entry.offered.connection_settings.as_ref() != Some(&offer.hash)
            {
                let mut candidate = ServerToAgent {
                    connection_settings: Some(offer.clone()),
                    ..Default::default()
                };
                messages::strip_unaccepted(capabilities, None, &mut candidate);
                if candidate.connection_settings.is_some() {
                    response.connection_settings = candidate.connection_settings;
                    entry.offered.connection_settings = Some(offer.hash.clone());
                    sent_settings = Some(offer.hash.clone());
                }
            }
        }
        drop(live);
        if let Some(hash) = sent_settings {
            record.note_connection_settings_sent(&hash);
        }
    }

    async fn connection_closed(&self, connection: &Connection, reason: &DisconnectReason) {
        let uids: Vec<InstanceUid> = {
            let mut live = lock(&self.live);
            let uids: Vec<_> = live
                .iter()
                .filter(|(_, entry)| entry.connection == *connection)
                .map(|(uid, _)| *uid)
                .collect();
            let mut parked = lock(&self.parked);
            for uid in &uids {
                let unsaved = live.remove(uid).and_then(|entry| entry.hot);
                if let Some(hot) = unsaved.filter(|hot| hot.unsaved) {
                    // A reconnect before it is saved below still sees it.
                    parked.insert(*uid, hot);
                }
            }
            uids
        };
        for uid in uids {
            if self.settings.track_state {
                let _turn = self.stripe(uid).lock().await;
                let hot = lock(&self.parked).remove(&uid);
                // The agent may already be back on another connection.
                let reconnected = lock(&self.live).contains_key(&uid);
                match self.store.load(uid).await {
                    Ok(Some(_)) if reconnected => {}
                    Ok(Some(mut record)) => {
                        record.connection = None;
                        // Saves the bookkeeping heartbeats kept in memory,
                        // unless a later message saved newer.
                        if let Some(hot) = hot.filter(|hot| hot.last_seen >= record.last_seen) {
                            hot.apply(&mut record);
                        }
                        if let Err(error) = self.store.save(record).await {
                            tracing::error!(%uid, %error, "agent store save failed");
                        }
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!(%uid, %error, "agent store load failed"),
                }
            }
            self.emit(AgentEvent::Disconnected {
                uid,
                reason: reason.clone(),
            });
        }
    }
}

/// Why a `ReportFullState` is needed, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FullState {
    NotNeeded,
    /// `sequence_num` did not follow the previous one (SEQ-05).
    Gap,
    /// The server knows nothing about the agent and the message does not
    /// describe it: a reconnect after the server lost its state.
    NoDescription,
}

impl FullState {
    fn requested(self) -> bool {
        self != Self::NotNeeded
    }
}

/// The sequence rules, tuned not to loop:
/// - after a `ReportFullState`, the next message is the new baseline and is
///   not checked (an agent that ignores the flag is asked once per gap);
/// - a repeated number is a resend (ERR-04), not a gap;
/// - number 0 with a description is a freshly started agent sending its
///   full first report;
/// - the "no description" request is made once per connection, so agents
///   that never send a description are not asked forever.
fn needs_full_state(
    record: &mut AgentRecord,
    message: &AgentToServer,
    asked_for_description: bool,
) -> FullState {
    if record.awaiting_full_state {
        record.awaiting_full_state = false;
        return FullState::NotNeeded;
    }
    let sequence = message.sequence_num;
    if let Some(last) = record.last_sequence_num {
        let in_order = sequence == last.wrapping_add(1) || sequence == last;
        let fresh_start = sequence == 0 && message.agent_description.is_some();
        if !in_order && !fresh_start {
            return FullState::Gap;
        }
    }
    if record.status.description.is_none()
        && message.agent_description.is_none()
        && !asked_for_description
    {
        return FullState::NoDescription;
    }
    FullState::NotNeeded
}

/// Lays the sub-messages present in `message` over the stored status
/// (SEQ-02/03: omitted means unchanged) and says what changed.
fn merge_status(record: &mut AgentRecord, message: &AgentToServer) -> StatusChanges {
    let status = &mut record.status;
    let mut changes = StatusChanges::empty();
    let capabilities = message.typed_capabilities();
    if status.capabilities != capabilities {
        status.capabilities = capabilities;
        changes |= StatusChanges::CAPABILITIES;
    }
    fn update<T: Clone + PartialEq>(
        slot: &mut Option<T>,
        incoming: &Option<T>,
        flag: StatusChanges,
        changes: &mut StatusChanges,
    ) {
        if let Some(value) = incoming {
            if slot.as_ref() != Some(value) {
                *slot = Some(value.clone());
                *changes |= flag;
            }
        }
    }
    update(
        &mut status.description,
        &message.agent_description,
        StatusChanges::DESCRIPTION,
        &mut changes,
    );
    update(
        &mut status.health,
        &message.health,
        StatusChanges::HEALTH,
        &mut changes,
    );
    update(
        &mut status.effective_config,
        &message.effective_config,
        StatusChanges::EFFECTIVE_CONFIG,
        &mut changes,
    );
    update(
        &mut status.remote_config_status,
        &message.remote_config_status,
        StatusChanges::REMOTE_CONFIG_STATUS,
        &mut changes,
    );
    update(
        &mut status.package_statuses,
        &message.package_statuses,
        StatusChanges::PACKAGE_STATUSES,
        &mut changes,
    );
    update(
        &mut status.custom_capabilities,
        &message.custom_capabilities,
        StatusChanges::CUSTOM_CAPABILITIES,
        &mut changes,
    );
    update(
        &mut status.connection_settings_status,
        &message.connection_settings_status,
        StatusChanges::CONNECTION_SETTINGS_STATUS,
        &mut changes,
    );
    if let Some(incoming) = &message.available_components {
        let known = status.available_components.as_ref();
        // A hash-only report of the same set keeps the list we have (AC-04/05).
        let same_set_hash_only = incoming.components.is_empty()
            && known.is_some_and(|known| known.hash == incoming.hash);
        if !same_set_hash_only && known != Some(incoming) {
            status.available_components = Some(incoming.clone());
            changes |= StatusChanges::AVAILABLE_COMPONENTS;
        }
    }
    changes
}

/// Whether to set `ReportAvailableComponents`: the agent reports components,
/// sent a hash we have no list for, and we have not asked for that hash yet
/// (AC-04).
fn wants_component_list(record: &mut AgentRecord) -> bool {
    let status = &record.status;
    if !status
        .capabilities
        .contains(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS)
    {
        return false;
    }
    let Some(components) = &status.available_components else {
        return false;
    };
    if components.hash.is_empty()
        || !components.components.is_empty()
        || record.requested_components_hash.as_ref() == Some(&components.hash)
    {
        return false;
    }
    record.requested_components_hash = Some(components.hash.clone());
    true
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
