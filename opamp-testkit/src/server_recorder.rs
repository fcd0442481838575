//! Server callbacks that record what they see and can be told how to
//! answer.

use std::sync::{Arc, Mutex};

use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_server::{
    AgentMessageError, Callbacks, ConnectDecision, ConnectRequest, Connection, DisconnectReason,
    PeerInfo, TransportKind,
};
use tokio::sync::{Semaphore, mpsc};

/// One thing the server callbacks saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `on_connecting` for this transport.
    Connecting(TransportKind),
    /// `on_connected`: the connection id.
    Connected(u64),
    /// `on_message`: connection id and sequence number.
    Message(u64, u64),
    /// `on_disconnected`: connection id and reason.
    Disconnected(u64, DisconnectReason),
    /// `on_read_error`: the error, as text.
    ReadError(String),
}

type ConnectingHook = dyn Fn(&ConnectRequest<'_>) -> ConnectDecision + Send + Sync;
type ReplyHook = dyn Fn(&AgentToServer) -> Option<ServerToAgent> + Send + Sync;

/// [`Callbacks`] that report every call to a channel, accept every
/// connection and add nothing to replies, unless told otherwise.
pub struct ServerRecorder {
    events: mpsc::UnboundedSender<ServerEvent>,
    connecting: Box<ConnectingHook>,
    reply: Box<ReplyHook>,
    /// When set, `on_message` waits for a permit first.
    gate: Option<Arc<Semaphore>>,
    /// Every connection `on_connected` saw.
    pub connections: Mutex<Vec<Connection>>,
    /// Every peer `on_connecting` saw.
    pub peers: Mutex<Vec<PeerInfo>>,
}

impl std::fmt::Debug for ServerRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRecorder")
            .field("gated", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerRecorder {
    /// The recorder and the receiving end of its events.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ServerEvent>) {
        let (events, seen) = mpsc::unbounded_channel();
        let recorder = Self {
            events,
            connecting: Box::new(|_| ConnectDecision::Accept),
            reply: Box::new(|_| None),
            gate: None,
            connections: Mutex::new(Vec::new()),
            peers: Mutex::new(Vec::new()),
        };
        (recorder, seen)
    }

    /// Decides connection attempts with `hook`.
    pub fn on_connecting(
        mut self,
        hook: impl Fn(&ConnectRequest<'_>) -> ConnectDecision + Send + Sync + 'static,
    ) -> Self {
        self.connecting = Box::new(hook);
        self
    }

    /// Adds `hook`'s answer (if any) to each reply.
    pub fn reply_with(
        mut self,
        hook: impl Fn(&AgentToServer) -> Option<ServerToAgent> + Send + Sync + 'static,
    ) -> Self {
        self.reply = Box::new(hook);
        self
    }

    /// Makes `on_message` take a permit from `gate` first, so a test can
    /// hold the callback.
    pub fn gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }
}

impl Callbacks for ServerRecorder {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let _ = self.events.send(ServerEvent::Connecting(request.transport));
        self.peers.lock().unwrap().push(request.peer.clone());
        (self.connecting)(request)
    }

    fn on_connected(&self, connection: &Connection) {
        self.connections.lock().unwrap().push(connection.clone());
        let _ = self.events.send(ServerEvent::Connected(connection.id()));
    }

    async fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> Option<ServerToAgent> {
        let _ = self
            .events
            .send(ServerEvent::Message(connection.id(), message.sequence_num));
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        (self.reply)(message)
    }

    fn on_disconnected(&self, connection: &Connection, reason: &DisconnectReason) {
        let _ = self
            .events
            .send(ServerEvent::Disconnected(connection.id(), reason.clone()));
    }

    fn on_read_error(
        &self,
        _peer: &PeerInfo,
        _connection: Option<&Connection>,
        error: &AgentMessageError,
    ) {
        let _ = self.events.send(ServerEvent::ReadError(error.to_string()));
    }
}

/// The next event that is not `Connecting` (no deadline of its own, so it
/// works under tokio's paused clock; wrap it in [`within`](crate::within)
/// where a hang is possible).
pub async fn next_server_event(events: &mut mpsc::UnboundedReceiver<ServerEvent>) -> ServerEvent {
    loop {
        match events.recv().await.expect("callbacks alive") {
            ServerEvent::Connecting(_) => continue,
            other => return other,
        }
    }
}
