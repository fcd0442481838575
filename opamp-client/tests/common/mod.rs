//! A scripted OpAMP server on 127.0.0.1:0 for the integration tests, built
//! from hyper and opamp-transport's server helpers, plus callbacks that
//! record what the client reports.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::large_enum_variant,
    clippy::type_complexity
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opamp_client::{
    Callbacks, MessageData, OpampClient, PackageEvent, RetryPolicy, RetryPolicyFactory,
    SettingsOutcome, TransportError,
};
use opamp_proto::{
    AgentToServer, ConnectionSettingsOffers, InstanceUid, OpAmpConnectionSettings,
    ServerErrorResponse, ServerToAgent, ServerToAgentCommand,
};
use opamp_transport::ws::CloseInfo;
use opamp_transport::ws::server::{WsServerConfig, accept_upgrade, is_websocket_upgrade};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Fails the test instead of hanging it if an expected event never comes.
/// Generous on purpose: it is a safety net, not a timing assertion.
pub async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("expected event did not happen")
}

/// What the script answers to one AgentToServer.
pub enum Reply {
    /// Answer with this message.
    Message(ServerToAgent),
    /// Answer nothing (WebSocket) / an empty ServerToAgent (HTTP).
    Nothing,
    /// HTTP: answer with this status and optional Retry-After seconds.
    Status(StatusCode, Option<u64>),
    /// WebSocket: drop the TCP connection without a closing handshake.
    Drop,
}

type Script = Box<dyn FnMut(usize, &AgentToServer) -> Reply + Send>;

/// One message the server received.
#[derive(Debug)]
pub struct Received {
    /// WebSocket connection number (from 1), or HTTP request number.
    pub conn: usize,
    pub message: AgentToServer,
    pub headers: HeaderMap,
}

struct State {
    script: Mutex<Script>,
    connections: AtomicUsize,
    /// Upgrades still to refuse with 503, and the Retry-After to send.
    refuse: Mutex<(usize, Option<u64>)>,
    received: mpsc::UnboundedSender<Received>,
    closed: mpsc::UnboundedSender<(usize, Option<CloseInfo>)>,
    pushers: Mutex<HashMap<usize, mpsc::UnboundedSender<ServerToAgent>>>,
    files: Mutex<HashMap<String, Bytes>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Received>,
    pub closed: mpsc::UnboundedReceiver<(usize, Option<CloseInfo>)>,
    state: Arc<State>,
}

/// An empty answer that only echoes the uid.
pub fn ack(message: &AgentToServer) -> ServerToAgent {
    ServerToAgent {
        instance_uid: message.instance_uid.clone(),
        ..Default::default()
    }
}

impl TestServer {
    pub async fn start(
        script: impl FnMut(usize, &AgentToServer) -> Reply + Send + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (received_tx, received) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            script: Mutex::new(Box::new(script)),
            connections: AtomicUsize::new(0),
            refuse: Mutex::new((0, None)),
            received: received_tx,
            closed: closed_tx,
            pushers: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
        });
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            closed,
            state,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/opamp", self.addr)
    }

    /// Refuses the next `count` WebSocket upgrades with 503.
    pub fn refuse_upgrades(&self, count: usize, retry_after: Option<u64>) {
        *self.state.refuse.lock().unwrap() = (count, retry_after);
    }

    /// Serves `body` at `path` for GET (package downloads).
    pub fn serve_file(&self, path: &str, body: Bytes) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_owned(), body);
    }

    /// Sends an unsolicited message on WebSocket connection `conn`.
    pub fn push(&self, conn: usize, message: ServerToAgent) {
        let pushers = self.state.pushers.lock().unwrap();
        pushers[&conn].send(message).unwrap();
    }

    /// The next message the server received.
    pub async fn next(&mut self) -> Received {
        within(self.received.recv()).await.expect("server gone")
    }

    /// Skips received messages until one matches.
    pub async fn next_matching(&mut self, mut wanted: impl FnMut(&Received) -> bool) -> Received {
        loop {
            let received = self.next().await;
            if wanted(&received) {
                return received;
            }
        }
    }
}

async fn handle(
    state: Arc<State>,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == http::Method::GET && !is_websocket_upgrade(request.headers()) {
        let file = state
            .files
            .lock()
            .unwrap()
            .get(request.uri().path())
            .cloned();
        return Ok(match file {
            Some(body) => Response::new(Full::new(body)),
            None => status(StatusCode::NOT_FOUND, None),
        });
    }
    if is_websocket_upgrade(request.headers()) {
        {
            let mut refuse = state.refuse.lock().unwrap();
            if refuse.0 > 0 {
                refuse.0 -= 1;
                return Ok(status(StatusCode::SERVICE_UNAVAILABLE, refuse.1));
            }
        }
        let headers = request.headers().clone();
        return Ok(
            match accept_upgrade(&mut request, WsServerConfig::default()) {
                Ok((response, pending)) => {
                    let conn = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::spawn(serve_ws(state, conn, headers, pending));
                    response
                }
                Err(error) => error.to_response(),
            },
        );
    }
    let conn = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = request.into_parts();
    let message = match opamp_transport::http::server::read_agent_message(
        body,
        &parts.headers,
        64 << 20,
        Duration::from_secs(10),
    )
    .await
    {
        Ok(message) => message,
        Err(error) => return Ok(error.to_response()),
    };
    let reply = (state.script.lock().unwrap())(conn, &message);
    let _ = state.received.send(Received {
        conn,
        message: message.clone(),
        headers: parts.headers.clone(),
    });
    Ok(match reply {
        Reply::Message(answer) => {
            opamp_transport::http::server::response_for(&answer, &parts.headers, 64 << 20).unwrap()
        }
        Reply::Nothing | Reply::Drop => {
            opamp_transport::http::server::response_for(&ack(&message), &parts.headers, 64 << 20)
                .unwrap()
        }
        Reply::Status(code, retry_after) => status(code, retry_after),
    })
}

fn status(code: StatusCode, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.into());
    }
    response
}

async fn serve_ws(
    state: Arc<State>,
    conn: usize,
    headers: HeaderMap,
    pending: opamp_transport::ws::server::PendingWsConnection,
) {
    let Ok(mut connection) = pending.await else {
        return;
    };
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    state.pushers.lock().unwrap().insert(conn, push_tx);
    loop {
        tokio::select! {
            received = connection.recv() => match received {
                Ok(Some(message)) => {
                    let reply = (state.script.lock().unwrap())(conn, &message);
                    let _ = state.received.send(Received { conn, message, headers: headers.clone() });
                    match reply {
                        Reply::Message(answer) => { let _ = connection.send(&answer).await; }
                        Reply::Nothing | Reply::Status(..) => {}
                        Reply::Drop => {
                            let _ = state.closed.send((conn, None));
                            return;
                        }
                    }
                }
                Ok(None) => {
                    let _ = state.closed.send((conn, connection.peer_close().cloned()));
                    return;
                }
                Err(error) if error.is_fatal() => {
                    let _ = state.closed.send((conn, None));
                    return;
                }
                Err(_) => {}
            },
            Some(message) = push_rx.recv() => { let _ = connection.send(&message).await; }
        }
    }
}

/// What the recording callbacks saw.
#[derive(Debug)]
pub enum Seen {
    Connect,
    ConnectFailed(String),
    ErrorResponse(ServerErrorResponse),
    Message(MessageData),
    OpampOutcome(OpAmpConnectionSettings, Result<(), String>),
    Other(ConnectionSettingsOffers),
    Command(ServerToAgentCommand),
    NewUid(InstanceUid),
    Package(String),
}

/// Callbacks that forward everything to a channel. `on_message` can be
/// made to block until released, to show a slow callback stalls nothing.
pub struct Recorder {
    pub seen: mpsc::UnboundedSender<Seen>,
    pub gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub on_message: Box<dyn Fn(&OpampClient, &MessageData) + Send + Sync>,
}

impl Recorder {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Seen>) {
        let (seen, rx) = mpsc::unbounded_channel();
        (
            Self {
                seen,
                gate: Mutex::new(None),
                on_message: Box::new(|_, _| {}),
            },
            rx,
        )
    }
}

impl Callbacks for Recorder {
    fn on_connect(&self) {
        let _ = self.seen.send(Seen::Connect);
    }
    fn on_connect_failed(&self, error: &TransportError) {
        let _ = self.seen.send(Seen::ConnectFailed(error.to_string()));
    }
    fn on_error_response(&self, error: &ServerErrorResponse) {
        let _ = self.seen.send(Seen::ErrorResponse(error.clone()));
    }
    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            // Blocks this callback until the test releases it.
            let _ = gate.recv();
        }
        (self.on_message)(client, data);
        let _ = self.seen.send(Seen::Message(data.clone()));
    }
    fn on_opamp_connection_settings_outcome(
        &self,
        settings: &OpAmpConnectionSettings,
        outcome: Result<(), &str>,
    ) {
        let _ = self.seen.send(Seen::OpampOutcome(
            settings.clone(),
            outcome.map_err(str::to_owned),
        ));
    }
    fn on_other_connection_settings(&self, offers: &ConnectionSettingsOffers) -> SettingsOutcome {
        let _ = self.seen.send(Seen::Other(offers.clone()));
        SettingsOutcome::Applied
    }
    fn on_command(&self, command: &ServerToAgentCommand) {
        let _ = self.seen.send(Seen::Command(*command));
    }
    fn on_new_instance_uid(&self, uid: InstanceUid) {
        let _ = self.seen.send(Seen::NewUid(uid));
    }
    fn on_package_event(&self, event: &PackageEvent) {
        let _ = self.seen.send(Seen::Package(format!("{event:?}")));
    }
}

/// Waits for a callback matching `wanted`, skipping others.
pub async fn expect_seen(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    mut wanted: impl FnMut(&Seen) -> bool,
) -> Seen {
    loop {
        let seen = within(rx.recv()).await.expect("callbacks gone");
        if wanted(&seen) {
            return seen;
        }
    }
}

/// A retry policy with short fixed waits (server hints still win), so
/// retries happen quickly on real time; records the hints it was given.
pub struct QuickRetry {
    pub hints: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl RetryPolicy for QuickRetry {
    fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        self.hints.lock().unwrap().push(hint);
        hint.unwrap_or(Duration::from_millis(20))
            .min(Duration::from_secs(1))
    }
    fn reset(&mut self) {}
}

pub fn quick_retry() -> (RetryPolicyFactory, Arc<Mutex<Vec<Option<Duration>>>>) {
    let hints = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&hints);
    (
        Arc::new(move || {
            Box::new(QuickRetry {
                hints: Arc::clone(&shared),
            }) as Box<dyn RetryPolicy>
        }),
        hints,
    )
}
