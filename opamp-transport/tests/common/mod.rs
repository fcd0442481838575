//! Shared test support for the WebSocket and TLS tests: OpAMP and raw
//! WebSocket handlers for opamp-testkit's `serve_http`, a raw WebSocket
//! peer for sending hostile frames, and a tiny HTTP CONNECT proxy.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opamp_testkit::{Handler, handler, status_response};
use opamp_transport::ws::server::{WsServerConfig, WsServerConnection, accept_upgrade};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A handler that accepts OpAMP WebSocket upgrades (any path) and hands
/// each connection to the returned channel, along with the request path.
pub fn opamp_ws_handler(
    config: WsServerConfig,
) -> (
    Handler,
    mpsc::UnboundedReceiver<(String, WsServerConnection)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler(move |mut request: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let path = request.uri().path().to_owned();
            match accept_upgrade(&mut request, config) {
                Ok((response, pending)) => {
                    tokio::spawn(async move {
                        if let Ok(connection) = pending.await {
                            let _ = tx.send((path, connection));
                        }
                    });
                    response
                }
                Err(error) => error.to_response(),
            }
        }
    });
    (handler, rx)
}

pub type RawServerSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A handler that completes the upgrade by hand and gives the test a raw
/// tungstenite socket, so it can send frames OpAMP code never would.
pub fn raw_ws_handler() -> (Handler, mpsc::UnboundedReceiver<RawServerSocket>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler(move |mut request: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let key = request.headers()[header::SEC_WEBSOCKET_KEY]
                .as_bytes()
                .to_vec();
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let config = WebSocketConfig::default()
                    .max_message_size(None)
                    .max_frame_size(None);
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let _ = tx.send(ws);
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            status_response(
                StatusCode::SWITCHING_PROTOCOLS,
                &[
                    (header::CONNECTION, "upgrade"),
                    (header::UPGRADE, "websocket"),
                    (header::SEC_WEBSOCKET_ACCEPT, &accept),
                ],
            )
        }
    });
    (handler, rx)
}

/// A raw tungstenite client connected to `url` (ws:// only), without any
/// size limit, for sending hostile frames to the server.
pub async fn raw_ws_client(url: &url::Url) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config))
        .await
        .unwrap();
    ws
}

/// What the test proxy saw in one CONNECT request.
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
}

impl ProxiedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP CONNECT proxy: answers `answer_status`; on 200 it tunnels
/// bytes both ways. Records every CONNECT it receives.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<ProxiedRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProxy {
    pub fn url(&self, userinfo: &str) -> url::Url {
        url::Url::parse(&format!("http://{userinfo}{}", self.addr)).unwrap()
    }

    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.seen.lock().unwrap().clone()
    }
}

pub async fn proxy(answer_status: u16) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                // Read the request head byte by byte, up to the blank line.
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = client.read_u8().await else {
                        return;
                    };
                    head.push(byte);
                }
                let text = String::from_utf8(head).unwrap();
                let mut lines = text.split("\r\n");
                let request_line = lines.next().unwrap().to_owned();
                let headers = lines
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.trim().to_owned(), v.trim().to_owned())
                    })
                    .collect();
                let target = request_line.split(' ').nth(1).unwrap().to_owned();
                record.lock().unwrap().push(ProxiedRequest {
                    request_line,
                    headers,
                });
                if answer_status != 200 {
                    let _ = client
                        .write_all(
                            format!("HTTP/1.1 {answer_status} Nope\r\nContent-Length: 0\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    TestProxy { addr, seen, task }
}
