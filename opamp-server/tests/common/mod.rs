//! Shared helpers: a server on 127.0.0.1:0, raw WebSocket and HTTP clients,
//! and callbacks that record what they see.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentToServer, InstanceUid, Message, ServerToAgent,
};
use opamp_server::{
    AgentMessageError, Callbacks, ConnectDecision, ConnectRequest, Connection, DisconnectReason,
    OpampServer, PeerInfo, ServeError, TransportKind,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server running `serve_with_shutdown` on an ephemeral port.
pub struct Running<C: Callbacks> {
    pub addr: SocketAddr,
    pub server: OpampServer<C>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl<C: Callbacks> Running<C> {
    pub async fn start(server: OpampServer<C>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve_with_shutdown(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            server,
            stop: Some(stop),
            task,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.addr)
    }

    /// Triggers graceful shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for `serve` to return.
    pub async fn stop(mut self) {
        self.begin_stop();
        self.task.await.unwrap().unwrap();
    }

    pub async fn join(self) {
        self.task.await.unwrap().unwrap();
    }
}

pub fn uid(n: u8) -> InstanceUid {
    InstanceUid::from_array([n; 16])
}

pub const CAPS: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEARTBEAT);

/// A full status report.
pub fn report(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: CAPS.bits(),
        agent_description: Some(AgentDescription::for_service("io.example.test", "1.0")),
        ..Default::default()
    }
}

/// A heartbeat / poll.
pub fn heartbeat(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: CAPS.bits(),
        ..Default::default()
    }
}

pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let (ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/opamp"))
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

pub fn frame(message: &AgentToServer) -> WsMessage {
    WsMessage::Binary(opamp_transport::encode_frame(message, usize::MAX).unwrap())
}

pub async fn ws_send(ws: &mut Ws, message: &AgentToServer) {
    ws.send(frame(message)).await.expect("send");
}

/// What the server sent next: a message or a Close.
#[derive(Debug)]
pub enum FromServer {
    Message(Box<ServerToAgent>),
    Close(Option<CloseFrame>),
    /// The stream ended (or failed) without a Close frame.
    End,
}

pub async fn ws_next(ws: &mut Ws) -> FromServer {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(data))) => {
                let message = opamp_transport::decode_frame(
                    data,
                    usize::MAX,
                    opamp_transport::HeaderlessFrames::Reject,
                )
                .expect("valid ServerToAgent frame");
                return FromServer::Message(Box::new(message));
            }
            Some(Ok(WsMessage::Close(frame))) => return FromServer::Close(frame),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return FromServer::End,
        }
    }
}

pub async fn ws_recv(ws: &mut Ws) -> ServerToAgent {
    match ws_next(ws).await {
        FromServer::Message(message) => *message,
        other => panic!("expected a ServerToAgent, got {other:?}"),
    }
}

/// Reads until the server's Close frame, completes the closing handshake,
/// and returns the code.
pub async fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws_next(ws).await {
            FromServer::Message(_) => continue,
            FromServer::Close(frame) => {
                // Keep polling so the Close reply goes out and the stream ends.
                while ws.next().await.is_some() {}
                return frame.map(|frame| frame.code.into());
            }
            FromServer::End => return None,
        }
    }
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn http_request(addr: SocketAddr, request: Request<Full<Bytes>>) -> Response<Bytes> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, body)
}

pub fn post(addr: SocketAddr, message: &AgentToServer) -> http::request::Builder {
    let _ = message;
    Request::post(format!("http://{addr}/v1/opamp"))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
}

/// POSTs one AgentToServer and decodes the reply (status must be 200).
pub async fn http_exchange(addr: SocketAddr, message: &AgentToServer) -> ServerToAgent {
    let request = post(addr, message)
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .unwrap();
    let response = http_request(addr, request).await;
    assert_eq!(
        response.status(),
        http::StatusCode::OK,
        "{:?}",
        response.body()
    );
    assert_eq!(
        response.headers()[http::header::CONTENT_TYPE],
        "application/x-protobuf"
    );
    ServerToAgent::decode(response.into_body()).expect("ServerToAgent body")
}

/// Everything the callbacks saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Connecting(TransportKind),
    Connected(u64),
    Message(u64, u64),
    Disconnected(u64, DisconnectReason),
    ReadError(String),
}

type ConnectingHook = dyn Fn(&ConnectRequest<'_>) -> ConnectDecision + Send + Sync;
type ReplyHook = dyn Fn(&AgentToServer) -> Option<ServerToAgent> + Send + Sync;

/// Callbacks that report to a channel and can be told how to answer.
pub struct Recorder {
    events: mpsc::UnboundedSender<Seen>,
    connecting: Box<ConnectingHook>,
    reply: Box<ReplyHook>,
    /// When set, `on_message` waits for a permit first.
    gate: Option<Arc<Semaphore>>,
    pub connections: Mutex<Vec<Connection>>,
    pub peers: Mutex<Vec<PeerInfo>>,
}

impl Recorder {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Seen>) {
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

    pub fn on_connecting(
        mut self,
        hook: impl Fn(&ConnectRequest<'_>) -> ConnectDecision + Send + Sync + 'static,
    ) -> Self {
        self.connecting = Box::new(hook);
        self
    }

    pub fn reply_with(
        mut self,
        hook: impl Fn(&AgentToServer) -> Option<ServerToAgent> + Send + Sync + 'static,
    ) -> Self {
        self.reply = Box::new(hook);
        self
    }

    pub fn gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }
}

impl Callbacks for Recorder {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let _ = self.events.send(Seen::Connecting(request.transport));
        self.peers.lock().unwrap().push(request.peer.clone());
        (self.connecting)(request)
    }

    fn on_connected(&self, connection: &Connection) {
        self.connections.lock().unwrap().push(connection.clone());
        let _ = self.events.send(Seen::Connected(connection.id()));
    }

    async fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> Option<ServerToAgent> {
        let _ = self
            .events
            .send(Seen::Message(connection.id(), message.sequence_num));
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        (self.reply)(message)
    }

    fn on_disconnected(&self, connection: &Connection, reason: &DisconnectReason) {
        let _ = self
            .events
            .send(Seen::Disconnected(connection.id(), reason.clone()));
    }

    fn on_read_error(
        &self,
        _peer: &PeerInfo,
        _connection: Option<&Connection>,
        error: &AgentMessageError,
    ) {
        let _ = self.events.send(Seen::ReadError(error.to_string()));
    }
}

/// The next event that is not `Connecting`.
pub async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    loop {
        match seen.recv().await.expect("callbacks alive") {
            Seen::Connecting(_) => continue,
            other => return other,
        }
    }
}
