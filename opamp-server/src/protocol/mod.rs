//! The server side of OpAMP as a pure state machine.
//!
//! [`ServerCore`] holds no connections, no store, no locks and no clock: the
//! caller hands it what it knows about one agent (its [`AgentSession`] on
//! this instance, the stored [`AgentRecord`] when asked for, the state of a
//! competing connection) together with one `AgentToServer` and the current
//! time, and gets back an [`Exchange`]: the reply, the session to keep, the
//! record to save (only when something worth saving changed), the events to
//! emit and what to do with the connections involved. The
//! [`Registry`](crate::Registry) is the shell around it that does the I/O;
//! tests and fuzz targets drive the core directly with explicit instants.
//!
//! A step may need more than the caller passed: [`Step::NeedRecord`] asks
//! for the stored record (a bare heartbeat never does), [`Step::NeedProbe`]
//! asks whether another connection claiming the same uid is still alive.
//! The caller gets it and steps again with the same input.

mod guard;
mod status;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentIdentification, AgentToServer, AgentToServerFlags, InstanceUid,
    ServerToAgent, ServerToAgentFlags,
};

use crate::events::{AgentEvent, StatusChanges};
use crate::messages;
use crate::record::{AgentRecord, ConnectionSummary};

use crate::vocab::{DisconnectReason, TransportKind};
pub use guard::{ReconnectGuard, ReconnectHistory};
use status::{FullState, merge_status, needs_full_state, wants_component_list};

/// What to do when an instance uid that is live on one connection shows up
/// on another (UID-09, UID-10).
///
/// Whatever the policy, two cases are not duplicates: a message whose
/// `sequence_num` continues exactly where the live connection left off is
/// the same agent reconnecting before the server noticed the old connection
/// died, and an old connection that proves dead when probed (a black-holed
/// WebSocket, a NAT that dropped its state) is replaced as well. Either way
/// the new connection keeps the uid and the old one is closed
/// ([`DisconnectReason::Replaced`]). Only two connections that are both
/// alive are duplicates.
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

/// The core's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoreSettings {
    /// What to do with duplicate uids.
    pub duplicate_policy: DuplicateUidPolicy,
    /// Keep records: sequence checks, merged status, desired state. Off, the
    /// core only tracks who is connected.
    pub track_state: bool,
    /// Limits reconnect loops; `None` turns the guard off.
    pub reconnect_guard: Option<ReconnectGuard>,
    /// A connection that carried a message this recently is alive without
    /// probing it.
    pub recent_traffic: Duration,
}

impl Default for CoreSettings {
    fn default() -> Self {
        Self {
            duplicate_policy: DuplicateUidPolicy::default(),
            track_state: true,
            reconnect_guard: Some(ReconnectGuard::default()),
            recent_traffic: Duration::from_secs(5),
        }
    }
}

/// A connection as the core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionRef {
    /// Unique per connection (or plain-HTTP session) on this instance.
    pub id: u64,
    /// Its transport.
    pub transport: TransportKind,
    /// The peer's address, if known.
    pub peer: Option<SocketAddr>,
}

impl ConnectionRef {
    /// A connection with an id and a transport.
    pub fn new(id: u64, transport: TransportKind, peer: Option<SocketAddr>) -> Self {
        Self {
            id,
            transport,
            peer,
        }
    }
}

/// One message to process.
#[non_exhaustive]
pub struct Inbound<'a> {
    /// The uid the message carries (already parsed).
    pub uid: InstanceUid,
    /// The message.
    pub message: &'a AgentToServer,
    /// The connection it arrived on.
    pub connection: ConnectionRef,
    /// Monotonic now, for liveness and the reconnect guard.
    pub now: Instant,
    /// Wall-clock now, for records.
    pub wall: SystemTime,
    /// Makes a new uid when one must be assigned (UID-05, UID-09).
    pub new_uid: &'a (dyn Fn() -> InstanceUid + Send + Sync),
}

impl<'a> Inbound<'a> {
    /// A message with its uid, connection and the current time.
    pub fn new(
        uid: InstanceUid,
        message: &'a AgentToServer,
        connection: ConnectionRef,
        now: Instant,
        wall: SystemTime,
        new_uid: &'a (dyn Fn() -> InstanceUid + Send + Sync),
    ) -> Self {
        Self {
            uid,
            message,
            connection,
            now,
            wall,
            new_uid,
        }
    }
}

/// Whether a connection is alive, as far as the caller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// Not probed: the core decides from recent traffic, or asks for a probe.
    Unknown,
    /// It answered a probe.
    Alive,
    /// It did not answer a probe, or is closed.
    Dead,
}

/// What this instance knows about the uid's connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Holder {
    /// No live connection here holds the uid.
    Nobody,
    /// The connection the message arrived on holds it.
    This(AgentSession),
    /// Another live connection holds it.
    Other {
        /// That connection.
        connection: ConnectionRef,
        /// The agent's session on it.
        session: AgentSession,
        /// Whether it is alive.
        alive: Liveness,
    },
}

/// The stored record, as far as the caller has it.
#[derive(Debug)]
#[non_exhaustive]
// Built once per status-changing message and moved straight into the step:
// boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Stored {
    /// Not read yet.
    NotLoaded,
    /// Read: there is none.
    Missing,
    /// Read.
    Found(AgentRecord),
    /// The store failed.
    Failed,
}

/// What one agent looks like on one connection of this instance: the only
/// per-agent state kept in memory between messages. Small on purpose (no
/// copy of the status): the record in the store holds the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSession {
    /// `sequence_num` of the last message.
    last_sequence_num: Option<u64>,
    /// Capabilities of the last message.
    capabilities: AgentCapabilities,
    /// The record holds a description.
    has_description: bool,
    /// A `ReportFullState` for a missing description was already sent on
    /// this connection.
    asked_for_description: bool,
    /// A duplicate of this uid was refused while this connection held it.
    duplicate_refused: bool,
    /// Hashes offered on this connection (offers go out once per connection
    /// until the agent reports them).
    offered: Offered,
    /// The stored record reflects everything but `last_sequence_num` and
    /// `last_seen`, so a bare heartbeat may skip the store.
    in_sync: bool,
    /// `last_sequence_num` / `last_seen` changed since the record was saved.
    unsaved: bool,
    /// Wall clock of the last message.
    last_seen: SystemTime,
    /// Monotonic clock of the last message.
    last_heard: Instant,
    /// Plain HTTP: the observed time between polls, smoothed.
    poll_interval: Option<Duration>,
}

/// Hashes offered on one connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Offered {
    pub(crate) remote_config: Option<Bytes>,
    pub(crate) packages: Option<Bytes>,
    pub(crate) connection_settings: Option<Bytes>,
}

impl AgentSession {
    fn new(now: Instant, wall: SystemTime) -> Self {
        Self {
            last_sequence_num: None,
            capabilities: AgentCapabilities::empty(),
            has_description: false,
            asked_for_description: false,
            duplicate_refused: false,
            offered: Offered::default(),
            in_sync: false,
            unsaved: false,
            last_seen: wall,
            last_heard: now,
            poll_interval: None,
        }
    }

    /// When the last message arrived (monotonic).
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// When the last message arrived (wall clock).
    pub fn last_seen(&self) -> SystemTime {
        self.last_seen
    }

    /// `sequence_num` of the last message.
    pub fn last_sequence_num(&self) -> Option<u64> {
        self.last_sequence_num
    }

    /// Capabilities of the last message.
    pub fn capabilities(&self) -> AgentCapabilities {
        self.capabilities
    }

    /// Plain HTTP: the smoothed time between the agent's polls, once two
    /// polls were seen.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    /// Whether a duplicate of this uid was refused while this session held it.
    pub fn duplicate_refused(&self) -> bool {
        self.duplicate_refused
    }

    /// Whether the sequence bookkeeping is newer than the stored record.
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }

    /// Copies the session's newer bookkeeping into a record read from the
    /// store.
    pub fn apply_to(&self, record: &mut AgentRecord) {
        if self.unsaved && self.last_seen >= record.last_seen {
            if let Some(sequence) = self.last_sequence_num {
                record.last_sequence_num = Some(sequence);
            }
            record.last_seen = self.last_seen;
        }
    }

    /// Whether the stored record matches the session (a bare heartbeat may
    /// then skip the store).
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// The record no longer matches (a new desired state, a removal): the
    /// next message goes through the store.
    pub fn invalidate(&mut self) {
        self.in_sync = false;
    }

    /// Marks the bookkeeping saved.
    pub fn mark_saved(&mut self) {
        self.unsaved = false;
    }

    pub(crate) fn mark_duplicate_refused(&mut self) {
        self.duplicate_refused = true;
    }

    pub(crate) fn offered_mut(&mut self) -> &mut Offered {
        &mut self.offered
    }

    /// Records a message's arrival: time, and for plain HTTP the polling
    /// interval (an exponentially smoothed average, so one late poll does
    /// not halve the stale timeout).
    fn heard(&mut self, now: Instant, wall: SystemTime, transport: TransportKind) {
        if transport == TransportKind::PlainHttp {
            let gap = now.saturating_duration_since(self.last_heard);
            if !gap.is_zero() {
                self.poll_interval = Some(match self.poll_interval {
                    None => gap,
                    Some(previous) => (previous * 3 + gap) / 4,
                });
            }
        }
        self.last_heard = now;
        self.last_seen = wall;
    }

    /// Whether `message` changes nothing but `last_sequence_num` and
    /// `last_seen` and needs nothing but an empty reply: same capabilities,
    /// no status sub-message (SEQ-02: omitted means unchanged), no uid
    /// request or disconnect, `sequence_num` in order (SEQ-05), nothing to
    /// ask for.
    fn covers(&self, message: &AgentToServer) -> bool {
        let sequence = message.sequence_num;
        self.in_sync
            && self
                .last_sequence_num
                .is_some_and(|last| sequence == last.wrapping_add(1) || sequence == last)
            && message.typed_capabilities() == self.capabilities
            && (self.has_description || self.asked_for_description)
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
                .contains(AgentToServerFlags::REQUEST_INSTANCE_UID)
    }
}

/// What the core needs before it can finish a step.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// Done.
    Done(Box<Exchange>),
    /// Step again with the stored record ([`Stored`]).
    NeedRecord,
    /// Another connection holds the uid and has been quiet: find out whether
    /// it is alive (a WebSocket ping with a short deadline) and step again
    /// with [`Holder::Other`]'s `alive` set.
    NeedProbe {
        /// The connection to probe.
        connection: u64,
    },
}

/// What to do after one message.
#[derive(Debug)]
#[non_exhaustive]
pub struct Exchange {
    /// The uid the agent goes by from now on (a new one when reassigned).
    pub uid: InstanceUid,
    /// The reply; `instance_uid` is the one received (UID-06).
    pub reply: ServerToAgent,
    /// The agent's session on this connection from now on (under
    /// [`uid`](Self::uid)); `None`: this connection holds no session for it.
    pub session: Option<AgentSession>,
    /// The received uid no longer belongs to this connection (it was
    /// replaced by a new one).
    pub release: Option<InstanceUid>,
    /// Another connection held the uid and loses it (the same agent
    /// reconnected, or the old connection proved dead): close it if it
    /// carries no other agent.
    pub replaced: Option<u64>,
    /// A duplicate was refused: mark the holder's session
    /// ([`AgentSession::duplicate_refused`]).
    pub refused_duplicate: bool,
    /// Plain HTTP: the message came from a second agent using the uid of
    /// the session it arrived on (UID-09); its new uid needs a session of
    /// its own, and the existing session stays with the first agent.
    pub detached: bool,
    /// Records to save, in order.
    pub save: Vec<AgentRecord>,
    /// Events to emit, in order.
    pub events: Vec<AgentEvent>,
    /// What happens to the connection.
    pub disposition: Disposition,
}

impl Exchange {
    /// Nothing but `reply` to the agent `uid`; the connection carries on.
    fn reply(uid: InstanceUid, reply: ServerToAgent) -> Self {
        Self {
            uid,
            reply,
            session: None,
            release: None,
            replaced: None,
            refused_duplicate: false,
            detached: false,
            save: Vec::new(),
            events: Vec::new(),
            disposition: Disposition::Continue,
        }
    }
}

/// What happens to the connection a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// Carry on.
    Continue,
    /// The agent sent `agent_disconnect`; it is no longer associated with the
    /// connection (MSG-07).
    Disconnected,
    /// The uid is live elsewhere and the policy refuses duplicates: reply,
    /// then close the connection.
    Refused,
    /// The agent connects too often ([`ReconnectGuard`]): reply (an
    /// `UNAVAILABLE` error with `retry_info`), then close the connection;
    /// over plain HTTP answer `503` with `Retry-After`.
    Throttled(Duration),
}

enum Claim {
    Continuing(AgentSession),
    New,
    /// Another connection held the uid; the newcomer takes it over.
    Replace(u64),
    Duplicate,
}

/// The server side of the protocol for one instance. Cheap to clone; holds
/// only settings.
#[derive(Debug, Clone, Default)]
pub struct ServerCore {
    settings: CoreSettings,
}

impl ServerCore {
    /// A core with `settings`.
    pub fn new(settings: CoreSettings) -> Self {
        Self { settings }
    }

    /// The settings.
    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// Processes one message.
    ///
    /// `holder` is what this instance knows about the uid's connection,
    /// `stored` the agent's record if the caller has it, `reconnects` the
    /// agent's [`ReconnectHistory`] (needed only when the message starts a
    /// new connection; pass the same one to the repeated step). Side effects
    /// on `reconnects` happen only when the step is [`Step::Done`].
    pub fn step(
        &self,
        inbound: &Inbound<'_>,
        holder: &Holder,
        stored: Stored,
        reconnects: Option<&mut ReconnectHistory>,
    ) -> Step {
        let message = inbound.message;
        let track = self.settings.track_state;
        // The hot path: a bare heartbeat touches the session only.
        if let Holder::This(session) = holder {
            if track && session.covers(message) {
                let mut session = session.clone();
                session.last_sequence_num = Some(message.sequence_num);
                session.heard(inbound.now, inbound.wall, inbound.connection.transport);
                session.unsaved = true;
                let mut exchange = Exchange::reply(inbound.uid, reply_to(message));
                exchange.session = Some(session);
                return Step::Done(Box::new(exchange));
            }
        }
        if let Holder::Other {
            connection,
            session,
            alive: Liveness::Unknown,
        } = holder
        {
            let continues = self.continues(session, message);
            let quiet = inbound.now.saturating_duration_since(session.last_heard)
                >= self.settings.recent_traffic;
            if !continues && quiet && connection.transport == TransportKind::WebSocket {
                return Step::NeedProbe {
                    connection: connection.id,
                };
            }
        }
        if track && matches!(stored, Stored::NotLoaded) {
            return Step::NeedRecord;
        }
        Step::Done(Box::new(
            self.full_step(inbound, holder, stored, reconnects),
        ))
    }

    fn continues(&self, session: &AgentSession, message: &AgentToServer) -> bool {
        !session.duplicate_refused
            && session
                .last_sequence_num
                .is_some_and(|last| message.sequence_num == last.wrapping_add(1))
    }

    /// Who owns `uid` now (UID-09/10).
    fn claim(&self, inbound: &Inbound<'_>, holder: &Holder) -> Claim {
        match holder {
            Holder::Nobody => Claim::New,
            Holder::This(session) => Claim::Continuing(session.clone()),
            Holder::Other {
                connection,
                session,
                alive,
            } => {
                if self.continues(session, inbound.message) {
                    return Claim::Replace(connection.id);
                }
                let alive = match alive {
                    Liveness::Alive => true,
                    Liveness::Dead => false,
                    // Not probed: recent traffic is proof of life; a quiet
                    // plain-HTTP session is past its best.
                    Liveness::Unknown => {
                        inbound.now.saturating_duration_since(session.last_heard)
                            < self.settings.recent_traffic
                    }
                };
                if alive {
                    Claim::Duplicate
                } else {
                    Claim::Replace(connection.id)
                }
            }
        }
    }

    fn full_step(
        &self,
        inbound: &Inbound<'_>,
        holder: &Holder,
        stored: Stored,
        reconnects: Option<&mut ReconnectHistory>,
    ) -> Exchange {
        let message = inbound.message;
        let uid = inbound.uid;
        let mut exchange = Exchange::reply(uid, reply_to(message));
        let starts_connection = !matches!(holder, Holder::This(_));
        if starts_connection {
            if let (Some(guard), Some(history)) = (&self.settings.reconnect_guard, reconnects) {
                if let Some(wait) = history.admit(guard, inbound.now) {
                    let mut refusal = messages::unavailable_response(Some(wait));
                    if let Some(error) = refusal.error_response.as_mut() {
                        error.error_message = "reconnecting too often, retry later".into();
                    }
                    refusal.instance_uid = message.instance_uid.clone();
                    exchange.reply = refusal;
                    exchange.events.push(AgentEvent::Throttled {
                        uid,
                        retry_after: wait,
                    });
                    exchange.disposition = Disposition::Throttled(wait);
                    return exchange;
                }
            }
        }

        let (mut record, store_failed) = match stored {
            Stored::Found(mut record) => {
                // The live session's bookkeeping is newer than the store's.
                match holder {
                    Holder::This(session) | Holder::Other { session, .. } => {
                        session.apply_to(&mut record);
                    }
                    Holder::Nobody => {}
                }
                (Some(record), false)
            }
            Stored::Missing | Stored::NotLoaded => (None, false),
            Stored::Failed => (None, true),
        };

        let mut key = uid;
        let mut new_session = false;
        let mut session = None;
        let mut claim = self.claim(inbound, holder);
        if let Claim::Continuing(current) = &claim {
            if inbound.connection.transport == TransportKind::PlainHttp
                && shares_the_session(current, message, record.as_ref())
            {
                // UID-09 over plain HTTP: there is no connection to tell two
                // agents apart, only what they say.
                exchange.detached = true;
                claim = Claim::Duplicate;
            }
        }
        match claim {
            Claim::Continuing(current) => session = Some(current),
            Claim::New => new_session = true,
            Claim::Replace(old) => {
                exchange.replaced = Some(old);
                exchange.events.push(AgentEvent::Disconnected {
                    uid,
                    reason: DisconnectReason::Replaced,
                });
                new_session = true;
            }
            Claim::Duplicate => match self.settings.duplicate_policy {
                DuplicateUidPolicy::Refuse => {
                    let mut refusal = messages::bad_request_response(
                        "instance_uid is in use by another connection",
                    );
                    refusal.instance_uid = message.instance_uid.clone();
                    exchange.reply = refusal;
                    exchange.refused_duplicate = true;
                    exchange.disposition = Disposition::Refused;
                    return exchange;
                }
                DuplicateUidPolicy::AssignNewUid => {
                    key = (inbound.new_uid)();
                    record = None;
                    new_session = true;
                }
            },
        }
        if key == uid
            && message
                .typed_flags()
                .contains(AgentToServerFlags::REQUEST_INSTANCE_UID)
        {
            // UID-05: the agent asks for a server-generated uid. What the
            // old uid's session kept in memory is saved first.
            key = (inbound.new_uid)();
            if let Some(old) = record.take() {
                if session.as_ref().is_some_and(|session| session.unsaved) {
                    exchange.save.push(old);
                }
            }
            if session.take().is_some() {
                exchange.release = Some(uid);
            }
            new_session = true;
        }
        if key != uid {
            exchange.reply.agent_identification = Some(AgentIdentification {
                new_instance_uid: key.to_bytes(),
            });
            exchange
                .events
                .push(AgentEvent::UidReassigned { old: uid, new: key });
        }

        let disconnecting = message.agent_disconnect.is_some();
        let mut session = session.unwrap_or_else(|| AgentSession::new(inbound.now, inbound.wall));
        session.heard(inbound.now, inbound.wall, inbound.connection.transport);
        session.capabilities = message.typed_capabilities();
        session.last_sequence_num = Some(message.sequence_num);

        let mut changes = StatusChanges::empty();
        if self.settings.track_state && !store_failed {
            let mut record = record.unwrap_or_else(|| AgentRecord::new(key, inbound.wall));
            let full_state = needs_full_state(&mut record, message, session.asked_for_description);
            if full_state.requested() {
                exchange.reply.flags |= ServerToAgentFlags::REPORT_FULL_STATE.bits();
                record.awaiting_full_state = true;
                if full_state == FullState::NoDescription {
                    session.asked_for_description = true;
                }
            }
            changes = merge_status(&mut record, message);
            if wants_component_list(&mut record) {
                exchange.reply.flags |= ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS.bits();
            }
            record.last_sequence_num = Some(message.sequence_num);
            record.last_seen = inbound.wall;
            if disconnecting {
                record.connection = None;
            } else if new_session || record.connection.is_none() {
                record.connection = Some(ConnectionSummary {
                    transport: inbound.connection.transport,
                    peer: inbound.connection.peer,
                    since: inbound.wall,
                });
            }
            if !disconnecting {
                add_offers(&mut record, &mut session.offered, &mut exchange.reply);
            }
            session.has_description = record.status.description.is_some();
            session.in_sync = !record.awaiting_full_state;
            session.unsaved = false;
            exchange.save.push(record);
        } else if store_failed {
            // The next message brings everything again, once the store works.
            session.in_sync = false;
            exchange.reply.flags |= ServerToAgentFlags::REPORT_FULL_STATE.bits();
        }

        if new_session && !disconnecting {
            exchange.events.push(AgentEvent::Connected {
                uid: key,
                transport: inbound.connection.transport,
            });
        }
        if !changes.is_empty() {
            exchange
                .events
                .push(AgentEvent::StatusChanged { uid: key, changes });
        }
        exchange.uid = key;
        if disconnecting {
            exchange.events.push(AgentEvent::Disconnected {
                uid: key,
                reason: DisconnectReason::AgentDisconnect,
            });
            exchange.disposition = Disposition::Disconnected;
            if !new_session {
                exchange.release = Some(key);
            }
        } else {
            exchange.session = Some(session);
        }
        exchange
    }
}

/// Whether a plain-HTTP message on an agent's session comes from another
/// agent using the same uid (UID-09): its `sequence_num` does not follow the
/// session's, and it describes itself with identifying attributes that
/// differ from the agent's (an agent restarting with the same identity
/// starts again at 0 with the same attributes; `service.version` may change
/// with an upgrade and is not compared).
fn shares_the_session(
    session: &AgentSession,
    message: &AgentToServer,
    record: Option<&AgentRecord>,
) -> bool {
    let Some(incoming) = &message.agent_description else {
        return false;
    };
    let Some(known) = record.and_then(|record| record.status.description.as_ref()) else {
        return false;
    };
    let in_order = session.last_sequence_num.is_some_and(|last| {
        message.sequence_num == last.wrapping_add(1) || message.sequence_num == last
    });
    if in_order {
        return false;
    }
    let identity = |attributes: &[opamp_proto::KeyValue]| {
        let mut identity: Vec<_> = attributes
            .iter()
            .filter(|attribute| attribute.key != "service.version")
            .cloned()
            .collect();
        identity.sort_by(|a, b| a.key.cmp(&b.key));
        identity
    };
    identity(&incoming.identifying_attributes) != identity(&known.identifying_attributes)
}

/// Puts `offer` into `slot` unless the agent cannot take it, already reports
/// its hash, or had it offered on this connection; notes the offer.
fn offer_once<T: Clone>(
    accepted: bool,
    reported: Option<&Bytes>,
    (hash, offered): (&Bytes, &mut Option<Bytes>),
    offer: &T,
    slot: &mut Option<T>,
) {
    if accepted && reported != Some(hash) && offered.as_ref() != Some(hash) {
        *slot = Some(offer.clone());
        *offered = Some(hash.clone());
    }
}

/// An empty reply carrying the received uid (UID-06).
fn reply_to(message: &AgentToServer) -> ServerToAgent {
    ServerToAgent {
        instance_uid: message.instance_uid.clone(),
        ..Default::default()
    }
}

/// Adds the desired state the agent does not have yet (RCFG-08, PKG-14,
/// CS-11), each gated by its capability (RCFG-02, PKG-01, CS-01), and each
/// at most once per connection per hash. Connection settings go to an agent
/// that cannot report their status only once in all (CS-06: its reconnect
/// is the confirmation).
pub(crate) fn add_offers(
    record: &mut AgentRecord,
    offered: &mut Offered,
    response: &mut ServerToAgent,
) {
    let capabilities = record.status.capabilities;
    let desired = &record.desired;
    let status = &record.status;
    if let Some(offer) = &desired.remote_config {
        offer_once(
            capabilities.contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG),
            status
                .remote_config_status
                .as_ref()
                .map(|s| &s.last_remote_config_hash),
            (&offer.config_hash, &mut offered.remote_config),
            offer,
            &mut response.remote_config,
        );
    }
    if let Some(offer) = &desired.packages {
        offer_once(
            capabilities.contains(AgentCapabilities::ACCEPTS_PACKAGES),
            status
                .package_statuses
                .as_ref()
                .map(|s| &s.server_provided_all_packages_hash),
            (&offer.all_packages_hash, &mut offered.packages),
            offer,
            &mut response.packages_available,
        );
    }
    let mut sent_settings = None;
    if let Some(offer) = &desired.connection_settings {
        let known = record.connection_settings_hash_in_effect();
        if known != Some(&offer.hash) && offered.connection_settings.as_ref() != Some(&offer.hash) {
            let mut candidate = ServerToAgent {
                connection_settings: Some(offer.clone()),
                ..Default::default()
            };
            messages::strip_unaccepted(capabilities, None, &mut candidate);
            if candidate.connection_settings.is_some() {
                response.connection_settings = candidate.connection_settings;
                offered.connection_settings = Some(offer.hash.clone());
                sent_settings = Some(offer.hash.clone());
            }
        }
    }
    if let Some(hash) = sent_settings {
        record.note_connection_settings_sent(&hash);
    }
}
