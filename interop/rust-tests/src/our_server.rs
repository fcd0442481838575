//! Our server on 127.0.0.1 port 0, recording what it sees, for opamp-go
//! agents to talk to.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opamp_proto::{AgentToServer, InstanceUid};
use opamp_server::{
    AgentEvent, AgentRecord, AgentStore, BoxFuture, Callbacks, ConnectDecision, ConnectRequest,
    Connection, MemoryStore, OpampServer, Refusal, Registry, ServerTlsConfig, StoreError,
    TransportKind,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use opamp_testkit::{Inbox, TIMEOUT};

/// The transport a scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket (`ws://`, `wss://`).
    WebSocket,
    /// Plain HTTP polling (`http://`, `https://`).
    Http,
}

impl Transport {
    /// The URL scheme, with or without TLS.
    pub fn scheme(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Self::WebSocket, false) => "ws",
            (Self::WebSocket, true) => "wss",
            (Self::Http, false) => "http",
            (Self::Http, true) => "https",
        }
    }

    /// Our server's name for it.
    pub fn kind(self) -> TransportKind {
        match self {
            Self::WebSocket => TransportKind::WebSocket,
            Self::Http => TransportKind::PlainHttp,
        }
    }
}

/// A scripted refusal for the next connection attempt (WebSocket upgrade or
/// plain-HTTP request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// `401 Unauthorized` (CONN-06).
    Unauthorized,
    /// `503 Service Unavailable` with `Retry-After` (WS-24, HTTP-21).
    Unavailable {
        /// The `Retry-After` delay (whole seconds on the wire).
        retry_after: Duration,
    },
}

/// One call of `on_connecting`.
#[derive(Debug, Clone)]
pub struct ConnectAttempt {
    /// When our server saw the request head.
    pub at: Instant,
    /// What the request asked for.
    pub transport: TransportKind,
    /// The refusal it got, if any.
    pub refused: Option<Refuse>,
    /// Its `Content-Encoding` header.
    pub content_encoding: Option<String>,
    /// Its `Accept-Encoding` header.
    pub accept_encoding: Option<String>,
}

/// A message our server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The connection's transport.
    pub transport: TransportKind,
    /// The message as decoded.
    pub message: AgentToServer,
}

/// Our server's callbacks: record every connection attempt and message,
/// refuse attempts as scripted.
#[derive(Debug)]
pub struct ServerRecorder {
    refusals: Mutex<VecDeque<Refuse>>,
    attempts: mpsc::UnboundedSender<ConnectAttempt>,
    messages: mpsc::UnboundedSender<Received>,
}

impl Callbacks for ServerRecorder {
    fn on_connecting(
        &self,
        request: &ConnectRequest<'_>,
    ) -> impl Future<Output = ConnectDecision> + Send {
        let refused = lock(&self.refusals).pop_front();
        let header = |name: http::HeaderName| {
            request
                .parts
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        let _ = self.attempts.send(ConnectAttempt {
            at: Instant::now(),
            transport: request.transport,
            refused,
            content_encoding: header(http::header::CONTENT_ENCODING),
            accept_encoding: header(http::header::ACCEPT_ENCODING),
        });
        async move {
            match refused {
                None => ConnectDecision::Accept,
                Some(Refuse::Unauthorized) => ConnectDecision::Refuse(Refusal::unauthorized(None)),
                Some(Refuse::Unavailable { retry_after }) => {
                    ConnectDecision::Refuse(Refusal::service_unavailable(Some(retry_after)))
                }
            }
        }
    }

    fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> impl Future<Output = Option<opamp_proto::ServerToAgent>> + Send {
        let _ = self.messages.send(Received {
            transport: connection.transport(),
            message: message.clone(),
        });
        async { None }
    }
}

/// An [`AgentStore`] that can lose an agent's record on purpose, to
/// simulate a server that lost its state.
///
/// [`lose`](Self::lose) marks a uid; the next `load` of it deletes the
/// record and answers "unknown". The registry loads and saves one agent's
/// record under a per-agent lock, so a message being processed while `lose`
/// is called cannot bring the record back: the loss applies to the next
/// message (or disconnect) processed. Calls of [`Registry::agent`] load too,
/// so do not call it for the uid between `lose` and the agent's next
/// message.
#[derive(Debug, Clone, Default)]
pub struct LosableStore {
    records: Arc<MemoryStore>,
    to_lose: Arc<Mutex<HashSet<InstanceUid>>>,
}

impl LosableStore {
    /// Loses the record of `uid` at its next load.
    pub fn lose(&self, uid: InstanceUid) {
        lock(&self.to_lose).insert(uid);
    }
}

impl AgentStore for LosableStore {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        Box::pin(async move {
            if lock(&self.to_lose).remove(&uid) {
                self.records.remove(uid).await?;
                return Ok(None);
            }
            self.records.load(uid).await
        })
    }

    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.records.save(record)
    }

    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        self.records.remove(uid)
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        self.records.list()
    }
}

/// Our [`OpampServer`] serving on 127.0.0.1 port 0, with everything it sees
/// recorded. Shuts down when dropped.
#[derive(Debug)]
pub struct OurServer {
    /// The server.
    pub server: OpampServer<ServerRecorder>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every message, as `on_message` saw it (after the registry's
    /// bookkeeping).
    pub messages: Inbox<Received>,
    /// Every connection attempt, as `on_connecting` saw it.
    pub attempts: Inbox<ConnectAttempt>,
    /// The registry's events.
    pub events: Inbox<AgentEvent>,
    /// The store, to simulate state loss.
    pub store: LosableStore,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
}

impl OurServer {
    /// Starts a plain server.
    pub async fn start() -> Self {
        Self::start_with(None, Vec::new()).await
    }

    /// Starts a server with optional TLS that refuses the first connection
    /// attempts as `refusals` says.
    pub async fn start_with(tls: Option<ServerTlsConfig>, refusals: Vec<Refuse>) -> Self {
        let (attempts_tx, attempts) = Inbox::new("our server: connection attempts");
        let (messages_tx, messages) = Inbox::new("our server: messages");
        let (events_tx, events) = Inbox::new("our server: registry events");
        let store = LosableStore::default();
        let registry = Registry::builder().store(store.clone()).build();
        let mut subscription = registry.subscribe();
        tokio::spawn(async move {
            loop {
                match subscription.recv().await {
                    Ok(event) => {
                        if events_tx.send(event).is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let recorder = ServerRecorder {
            refusals: Mutex::new(refusals.into()),
            attempts: attempts_tx,
            messages: messages_tx,
        };
        let mut builder = OpampServer::builder()
            .callbacks(recorder)
            .registry(registry)
            .custom_capabilities([crate::our_agent::INTEROP_CAPABILITY]);
        let has_tls = tls.is_some();
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        let server = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = server.clone();
        tokio::spawn(async move {
            let signal = async {
                let _ = stopped.await;
            };
            if let Err(error) = serving.serve_with_shutdown(listener, signal).await {
                panic!("our server failed: {error}");
            }
        });
        Self {
            server,
            addr,
            messages,
            attempts,
            events,
            store,
            tls: has_tls,
            stop: Some(stop),
        }
    }

    /// The endpoint URL for `transport`.
    pub fn url(&self, transport: Transport) -> String {
        format!("{}://{}/v1/opamp", transport.scheme(self.tls), self.addr)
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        self.server.registry()
    }

    /// The earliest unconsumed message from `uid` matching `matches`.
    pub async fn wait_message(
        &mut self,
        what: &str,
        uid: InstanceUid,
        mut matches: impl FnMut(&AgentToServer) -> bool,
    ) -> AgentToServer {
        let uid = uid.to_bytes();
        self.messages
            .wait_for(what, |received| {
                received.message.instance_uid == uid && matches(&received.message)
            })
            .await
            .message
    }

    /// Waits until the registry's record of `uid` satisfies `matches` and
    /// returns it. Re-checks on every registry event; fails the test after
    /// [`TIMEOUT`].
    pub async fn wait_record(
        &mut self,
        what: &str,
        uid: InstanceUid,
        mut matches: impl FnMut(&AgentRecord) -> bool,
    ) -> AgentRecord {
        let deadline = Instant::now() + TIMEOUT;
        // Subscribed before the first read, so no change can slip between.
        let mut changes = self.registry().subscribe();
        let mut last = None;
        loop {
            let record = self.registry().agent(uid).await.expect("store works");
            if let Some(record) = record {
                if matches(&record) {
                    return record;
                }
                last = Some(record);
            }
            // Any event may be the one; what matters is re-reading the record.
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => panic!("our registry is gone"),
                Err(_) => panic!(
                    "our registry: {uid} never got to {what:?} within {TIMEOUT:?}; last record: {last:#?}"
                ),
            }
        }
    }
}

impl Drop for OurServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
