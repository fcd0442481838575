//! A scripted OpAMP server on 127.0.0.1:0 for the integration tests, built
//! from hyper and opamp-transport's server helpers (the recording
//! callbacks come from opamp-testkit).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::large_enum_variant,
    clippy::type_complexity
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use opamp_client::{AgentCapabilities, AgentDescription, OpampClient};
use opamp_proto::{
    AgentToServer, ConnectionSettingsOffers, ConnectionSettingsStatus, ConnectionSettingsStatuses,
    OpAmpConnectionSettings, ServerToAgent,
};
use opamp_testkit::{
    ClientEvent, ClientRecorder, FullResponse, HttpServer, ack, handler, quick_retry, serve_http,
    within,
};
use opamp_transport::ws::CloseInfo;
use opamp_transport::ws::server::{WsServerConfig, accept_upgrade, is_websocket_upgrade};
use tokio::sync::mpsc;

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
    /// Accepts connections until the test server is dropped.
    _server: HttpServer,
}

impl TestServer {
    pub async fn start(
        script: impl FnMut(usize, &AgentToServer) -> Reply + Send + 'static,
    ) -> Self {
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
        let handler_state = Arc::clone(&state);
        let server = serve_http(
            handler(move |request| handle(Arc::clone(&handler_state), request)),
            None,
        )
        .await;
        Self {
            addr: server.addr,
            received,
            closed,
            state,
            _server: server,
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
        within("a message at the server", self.received.recv())
            .await
            .expect("server gone")
    }

    /// Skips received messages until the agent's goodbye
    /// (`agent_disconnect`).
    pub async fn next_goodbye(&mut self) -> Received {
        self.next_matching(|r| r.message.agent_disconnect.is_some())
            .await
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

async fn handle(state: Arc<State>, mut request: Request<Incoming>) -> FullResponse {
    if request.method() == http::Method::GET && !is_websocket_upgrade(request.headers()) {
        let file = state
            .files
            .lock()
            .unwrap()
            .get(request.uri().path())
            .cloned();
        return match file {
            Some(body) => Response::new(Full::new(body)),
            None => status(StatusCode::NOT_FOUND, None),
        };
    }
    if is_websocket_upgrade(request.headers()) {
        {
            let mut refuse = state.refuse.lock().unwrap();
            if refuse.0 > 0 {
                refuse.0 -= 1;
                return status(StatusCode::SERVICE_UNAVAILABLE, refuse.1);
            }
        }
        let headers = request.headers().clone();
        return match accept_upgrade(&mut request, WsServerConfig::default()) {
            Ok((response, pending)) => {
                let conn = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve_ws(state, conn, headers, pending));
                response
            }
            Err(error) => error.to_response(),
        };
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
        Err(error) => return error.to_response(),
    };
    let reply = (state.script.lock().unwrap())(conn, &message);
    let _ = state.received.send(Received {
        conn,
        message: message.clone(),
        headers: parts.headers.clone(),
    });
    match reply {
        Reply::Message(answer) => {
            opamp_transport::http::server::response_for(&answer, &parts.headers, 64 << 20).unwrap()
        }
        Reply::Nothing | Reply::Drop => {
            opamp_transport::http::server::response_for(&ack(&message), &parts.headers, 64 << 20)
                .unwrap()
        }
        Reply::Status(code, retry_after) => status(code, retry_after),
    }
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

/// An offer of new OpAMP connection settings: `endpoint`, under `hash`.
pub fn opamp_offer(endpoint: String, hash: &'static [u8]) -> ServerToAgent {
    ServerToAgent {
        connection_settings: Some(ConnectionSettingsOffers {
            hash: Bytes::from_static(hash),
            opamp: Some(OpAmpConnectionSettings {
                destination_endpoint: endpoint,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What an agent needs to take (and report on) connection settings offers.
pub fn caps_for_switch() -> AgentCapabilities {
    AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS
}

/// A started client for `url` that takes connection settings offers
/// ([`caps_for_switch`]), and the events it records.
pub async fn switching_client(url: String) -> (OpampClient, mpsc::UnboundedReceiver<ClientEvent>) {
    let (recorder, seen) = ClientRecorder::new();
    let client = client_with(url, caps_for_switch(), recorder);
    client.start().await.unwrap();
    (client, seen)
}

/// A client for `url` with [`description`], `capabilities` and `callbacks`.
pub fn client_with(
    url: String,
    capabilities: AgentCapabilities,
    callbacks: impl opamp_client::Callbacks,
) -> OpampClient {
    OpampClient::builder(url)
        .agent_description(description())
        .capabilities(capabilities)
        .callbacks(callbacks)
        .build()
        .unwrap()
}

/// The connection settings status of the first message reporting `status`:
/// `first` if it does, else the next such message `server` receives.
pub async fn settings_status(
    server: &mut TestServer,
    first: AgentToServer,
    status: ConnectionSettingsStatuses,
) -> ConnectionSettingsStatus {
    let reports = |message: &AgentToServer| {
        message
            .connection_settings_status
            .as_ref()
            .is_some_and(|reported| reported.status == status as i32)
    };
    let message = if reports(&first) {
        first
    } else {
        server.next_matching(|r| reports(&r.message)).await.message
    };
    message.connection_settings_status.expect("a status")
}

/// The agent description the client tests report.
pub fn description() -> AgentDescription {
    AgentDescription::for_service("io.example.agent", "1.0.0")
}

/// The retry hints a [`quick_retry`] policy was given.
pub type RetryHints = Arc<Mutex<Vec<Option<Duration>>>>;

/// A client for `url` with [`description`], `capabilities` (the builder's
/// default when `None`), the quick retry policy and a recorder; with the
/// retry hints and the recorded events.
pub fn retrying_client(
    url: String,
    capabilities: Option<AgentCapabilities>,
) -> (
    OpampClient,
    RetryHints,
    mpsc::UnboundedReceiver<ClientEvent>,
) {
    let (retry, hints) = quick_retry();
    let (recorder, seen) = ClientRecorder::new();
    let mut builder = OpampClient::builder(url).agent_description(description());
    if let Some(capabilities) = capabilities {
        builder = builder.capabilities(capabilities);
    }
    let client = builder
        .retry_policy(retry)
        .callbacks(recorder)
        .build()
        .expect("client builds");
    (client, hints, seen)
}
