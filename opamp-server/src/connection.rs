//! The handle to one agent connection, shared by the server, the registry
//! and the application.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opamp_proto::{
    AgentCapabilities, CustomCapabilities, InstanceUid, Message, ServerCapabilities, ServerToAgent,
};
use opamp_transport::ws::{WsActivity, WsSender};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, mpsc};

use crate::error::SendError;
use crate::messages;

pub use crate::vocab::TransportKind;

/// Who is on the other end of a request: socket address and, over TLS with
/// client authentication, the client's certificate chain (leaf first).
///
/// [`serve`](crate::OpampServer::serve) inserts it into every request's
/// extensions. When the server is mounted in another stack (axum, a custom
/// hyper loop), insert it yourself to make the address and certificates
/// visible to [`Callbacks::on_connecting`](crate::Callbacks::on_connecting)
/// and on [`Connection`]; without it both are unknown.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The peer's socket address.
    pub addr: Option<SocketAddr>,
    /// The client certificate chain presented over mutual TLS.
    pub certificates: Option<Arc<[CertificateDer<'static>]>>,
}

/// What happened to a message handed to a connection or the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Queued on the WebSocket writer of this instance.
    Sent,
    /// Kept for the agent's next plain-HTTP poll (HTTP-15).
    QueuedForPoll,
    /// Handed to the [`MessageBus`](crate::MessageBus) for the instance that
    /// holds the agent's connection.
    Forwarded,
}

/// Server-wide values every connection needs when it sends.
#[derive(Debug)]
pub(crate) struct ConnectionConfig {
    pub(crate) capabilities: ServerCapabilities,
    pub(crate) custom_capabilities: Option<CustomCapabilities>,
    pub(crate) max_message_size: usize,
    pub(crate) send_queue_capacity: usize,
    /// Where a plain-HTTP session announces that it was disconnected, so the
    /// server can end it (registry, callbacks) right away.
    pub(crate) http_closed: Option<mpsc::UnboundedSender<Connection>>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            capabilities: ServerCapabilities::ACCEPTS_STATUS,
            custom_capabilities: None,
            max_message_size: opamp_transport::DEFAULT_MAX_MESSAGE_SIZE,
            send_queue_capacity: 16,
            http_closed: None,
        }
    }
}

/// A handle to one agent connection: a WebSocket, or the plain-HTTP session
/// of one agent (its polls, from the first until `agent_disconnect`, going
/// stale, or [`disconnect`](Self::disconnect)).
///
/// Cheap to clone; clones compare equal and hash alike, so it works as a map
/// key. [`send`](Self::send) pushes a `ServerToAgent` at once over a
/// WebSocket and keeps it for the next poll over plain HTTP (HTTP-15), where
/// later sends merge into the pending message (ERR-06).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    kind: TransportKind,
    peer: PeerInfo,
    config: Arc<ConnectionConfig>,
    link: Link,
    first_reply_sent: AtomicBool,
    closing: AtomicBool,
    close_reason: Mutex<Option<crate::DisconnectReason>>,
    /// Wakes the connection's driver when `disconnect` is called.
    wake: Notify,
    agents: Mutex<Vec<AgentSlot>>,
    /// Serialises callbacks for this connection (plain-HTTP sessions can see
    /// concurrent requests).
    callback_order: tokio::sync::Mutex<()>,
    /// WebSocket: pings the peer and sees what it answers, while the
    /// connection runs (dropped at the end so the socket can go).
    liveness: Mutex<Option<(WsSender<ServerToAgent>, WsActivity)>>,
}

enum Link {
    WebSocket {
        queue: mpsc::Sender<Box<ServerToAgent>>,
    },
    PlainHttp {
        pending: Mutex<Option<Box<ServerToAgent>>>,
    },
}

/// What the connection knows about one agent it carries.
#[derive(Debug, Clone)]
struct AgentSlot {
    uid: InstanceUid,
    capabilities: AgentCapabilities,
    custom: Option<CustomCapabilities>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    /// A WebSocket connection and the receiving end of its outgoing queue,
    /// which the connection's writer drains. Messages are boxed so that the
    /// queue's preallocated slots stay small.
    pub(crate) fn websocket(
        peer: PeerInfo,
        config: Arc<ConnectionConfig>,
    ) -> (Self, mpsc::Receiver<Box<ServerToAgent>>) {
        let (queue, outgoing) = mpsc::channel(config.send_queue_capacity.max(1));
        (
            Self::new(
                TransportKind::WebSocket,
                peer,
                config,
                Link::WebSocket { queue },
            ),
            outgoing,
        )
    }

    /// Plain HTTP: a new session with the same peer and settings, for a
    /// second agent that turned out to share this session's uid.
    pub(crate) fn sibling_session(&self) -> Self {
        Self::plain_http(self.inner.peer.clone(), Arc::clone(&self.inner.config))
    }

    /// A plain-HTTP session.
    pub(crate) fn plain_http(peer: PeerInfo, config: Arc<ConnectionConfig>) -> Self {
        let link = Link::PlainHttp {
            pending: Mutex::new(None),
        };
        Self::new(TransportKind::PlainHttp, peer, config, link)
    }

    fn new(kind: TransportKind, peer: PeerInfo, config: Arc<ConnectionConfig>, link: Link) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                kind,
                peer,
                config,
                link,
                first_reply_sent: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                close_reason: Mutex::new(None),
                wake: Notify::new(),
                agents: Mutex::new(Vec::new()),
                callback_order: tokio::sync::Mutex::new(()),
                liveness: Mutex::new(None),
            }),
        }
    }

    /// A process-unique number for logs.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The transport.
    pub fn transport(&self) -> TransportKind {
        self.inner.kind
    }

    /// The peer's socket address, when known (see [`PeerInfo`]).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer.addr
    }

    /// Address and TLS client certificates of the peer.
    pub(crate) fn peer(&self) -> &PeerInfo {
        &self.inner.peer
    }

    /// The client certificate chain presented over mutual TLS, if any.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.inner.peer.certificates.as_deref()
    }

    /// The instance uids of the agents seen on this connection, in order of
    /// first appearance (usually one; several when a proxy multiplexes
    /// agents on one WebSocket, UID-06).
    pub fn agents(&self) -> Vec<InstanceUid> {
        lock(&self.inner.agents)
            .iter()
            .map(|slot| slot.uid)
            .collect()
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
            || matches!(&self.inner.link, Link::WebSocket { queue } if queue.is_closed())
    }

    /// Sends `message` to the agent: at once over a WebSocket, at the next
    /// poll over plain HTTP (HTTP-15).
    ///
    /// An empty `instance_uid` is filled with the connection's (first)
    /// agent's uid (UID-06). The first message on a connection also carries
    /// the server capabilities (CAP-07). Offers the agent has not announced
    /// it accepts are refused with [`SendError::NotAccepted`] (CAP-09,
    /// RCFG-02); a `command` goes out in a message of its own (CMD-02).
    ///
    /// A WebSocket agent whose outgoing queue is full is not reading: the
    /// connection is closed and [`SendError::QueueFull`] returned, so memory
    /// stays bounded.
    pub fn send(&self, mut message: ServerToAgent) -> Result<Delivery, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.fill_uid(&mut message);
        self.check_accepted(&message)?;
        self.deliver(message)
    }

    /// Sends without the capability check: for replies that were already
    /// checked or stripped.
    pub(crate) fn deliver(&self, mut message: ServerToAgent) -> Result<Delivery, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.fill_uid(&mut message);
        match &self.inner.link {
            Link::WebSocket { queue } => {
                let (offers, command) = messages::split_command(message);
                for part in offers.into_iter().chain(command) {
                    let part = self.decorate(part);
                    self.check_size(opamp_transport::framed_len(&part))?;
                    match queue.try_send(Box::new(part)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(
                                connection = self.id(),
                                "agent is not reading: send queue full, disconnecting"
                            );
                            self.close_for(crate::DisconnectReason::SendQueueFull);
                            return Err(SendError::QueueFull);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendError::Closed),
                    }
                }
                Ok(Delivery::Sent)
            }
            Link::PlainHttp { pending, .. } => {
                self.check_size(message.encoded_len())?;
                let mut pending = lock(pending);
                match pending.as_mut() {
                    Some(queued) => messages::merge(queued, message),
                    None => *pending = Some(Box::new(message)),
                }
                Ok(Delivery::QueuedForPoll)
            }
        }
    }

    /// A message of `size` bytes over the size limit is not sent (WS-11).
    fn check_size(&self, size: usize) -> Result<(), SendError> {
        let limit = self.inner.config.max_message_size;
        if size > limit {
            tracing::warn!(size, limit, "ServerToAgent over the size limit not sent");
            return Err(SendError::TooLarge { size, limit });
        }
        Ok(())
    }

    /// Closes the connection. A WebSocket gets a Close frame (1000); a
    /// plain-HTTP session ends, and the agent's next poll starts a new one.
    /// Idempotent.
    pub fn disconnect(&self) {
        self.close_for(crate::DisconnectReason::Requested);
    }

    pub(crate) fn close_for(&self, reason: crate::DisconnectReason) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(connection = self.id(), ?reason, "closing connection");
        self.set_close_reason(reason);
        self.inner.wake.notify_one();
        if let (Link::PlainHttp { .. }, Some(closed)) =
            (&self.inner.link, &self.inner.config.http_closed)
        {
            // The receiver lives as long as the server; if it is gone the
            // session is dropped with it anyway.
            let _ = closed.send(self.clone());
        }
    }

    fn set_close_reason(&self, reason: crate::DisconnectReason) {
        *lock(&self.inner.close_reason) = Some(reason);
    }

    /// The reason recorded by the first `close_for`, taken once.
    pub(crate) fn take_close_reason(&self) -> Option<crate::DisconnectReason> {
        lock(&self.inner.close_reason).take()
    }

    /// Resolves once `disconnect` (or an internal close) was called.
    pub(crate) async fn closing(&self) {
        loop {
            let notified = self.inner.wake.notified();
            if self.inner.closing.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Finishes an outgoing message: `instance_uid` (UID-06), and the
    /// server's capabilities and custom capabilities on the first message of
    /// the connection (CAP-07, CUS-01).
    pub(crate) fn decorate(&self, mut message: ServerToAgent) -> ServerToAgent {
        self.fill_uid(&mut message);
        if !self.inner.first_reply_sent.swap(true, Ordering::AcqRel) {
            let config = &self.inner.config;
            if message.capabilities == 0 {
                message.capabilities =
                    (config.capabilities | ServerCapabilities::ACCEPTS_STATUS).bits();
            }
            if message.custom_capabilities.is_none() {
                message.custom_capabilities = config.custom_capabilities.clone();
            }
        }
        message
    }

    fn fill_uid(&self, message: &mut ServerToAgent) {
        if message.instance_uid.is_empty() {
            if let Some(slot) = lock(&self.inner.agents).first() {
                message.instance_uid = slot.uid.to_bytes();
            }
        }
    }

    fn check_accepted(&self, message: &ServerToAgent) -> Result<(), SendError> {
        let agents = lock(&self.inner.agents);
        let target = InstanceUid::try_from(&message.instance_uid).ok();
        let Some(slot) = agents.iter().find(|slot| Some(slot.uid) == target) else {
            // Nothing heard from that agent yet: nothing to check against.
            return Ok(());
        };
        messages::check_accepted(slot.uid, slot.capabilities, slot.custom.as_ref(), message)
    }

    /// Records what the agent announced in its latest message.
    pub(crate) fn note_agent(
        &self,
        uid: InstanceUid,
        capabilities: AgentCapabilities,
        custom: Option<&CustomCapabilities>,
    ) {
        let mut agents = lock(&self.inner.agents);
        match agents.iter_mut().find(|slot| slot.uid == uid) {
            Some(slot) => {
                slot.capabilities = capabilities;
                if let Some(custom) = custom {
                    slot.custom = Some(custom.clone());
                }
            }
            None => agents.push(AgentSlot {
                uid,
                capabilities,
                custom: custom.cloned(),
            }),
        }
    }

    /// Forgets an agent (agent_disconnect, a new uid, or a replacement).
    pub(crate) fn forget_agent(&self, uid: InstanceUid) {
        lock(&self.inner.agents).retain(|slot| slot.uid != uid);
    }

    /// The capabilities last announced by `uid` on this connection.
    pub(crate) fn agent_capabilities(
        &self,
        uid: InstanceUid,
    ) -> Option<(AgentCapabilities, Option<CustomCapabilities>)> {
        lock(&self.inner.agents)
            .iter()
            .find(|slot| slot.uid == uid)
            .map(|slot| (slot.capabilities, slot.custom.clone()))
    }

    /// WebSocket: lets [`probe`](Self::probe) ping the peer.
    pub(crate) fn set_liveness(&self, sender: WsSender<ServerToAgent>, activity: WsActivity) {
        *lock(&self.inner.liveness) = Some((sender, activity));
    }

    /// WebSocket: the connection is ending; nothing more to probe.
    pub(crate) fn clear_liveness(&self) {
        lock(&self.inner.liveness).take();
    }

    /// Whether the peer is alive: a WebSocket answers a ping (or sends
    /// anything) within `deadline`. Closed connections and plain-HTTP
    /// sessions, which cannot be asked, are not.
    pub(crate) async fn probe(&self, deadline: Duration) -> bool {
        if self.is_closed() {
            return false;
        }
        let Some((sender, activity)) = lock(&self.inner.liveness).clone() else {
            return false;
        };
        let seen = activity.frames();
        let asked = async {
            if sender.ping().await.is_err() {
                return false;
            }
            activity.after(seen).await;
            true
        };
        tokio::time::timeout(deadline, asked).await.unwrap_or(false)
    }

    /// Plain HTTP: the message kept for the next poll.
    pub(crate) fn take_pending(&self) -> Option<ServerToAgent> {
        match &self.inner.link {
            Link::PlainHttp { pending, .. } => lock(pending).take().map(|message| *message),
            Link::WebSocket { .. } => None,
        }
    }

    /// Plain HTTP: puts a message back for the next poll, under anything
    /// queued meanwhile.
    pub(crate) fn requeue(&self, message: ServerToAgent) {
        if let Link::PlainHttp { pending, .. } = &self.inner.link {
            let mut pending = lock(pending);
            let newer = pending.take();
            let mut merged = Box::new(message);
            if let Some(newer) = newer {
                messages::merge(&mut merged, *newer);
            }
            *pending = Some(merged);
        }
    }

    /// Holds the connection's callback order while alive.
    pub(crate) async fn callback_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.callback_order.lock().await
    }
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}

impl Eq for Connection {}

impl Hash for Connection {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.id.hash(state);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("transport", &self.inner.kind)
            .field("peer", &self.inner.peer.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}
