//! Agents that speak frames and requests by hand, for hostile and edge
//! cases the real client would never produce.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_proto::{AgentToServer, Message, ServerToAgent};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::timeout::within;

/// A raw WebSocket connection to a server, as tungstenite gives it.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `ws://addr/v1/opamp`.
pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/v1/opamp")
}

/// `http://addr/v1/opamp`.
pub fn http_url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/opamp")
}

/// Opens a WebSocket to `/v1/opamp` on `addr`; fails the test unless the
/// server switches protocols.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    ws_connect_url(&ws_url(addr)).await
}

/// Opens a WebSocket to `url`; fails the test unless the server switches
/// protocols.
pub async fn ws_connect_url(url: &str) -> Ws {
    let (ws, response) = within(
        "the WebSocket upgrade",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("WebSocket upgrade");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// `message` as an OpAMP WebSocket frame (zero header, then protobuf).
pub fn frame(message: &AgentToServer) -> WsMessage {
    WsMessage::Binary(opamp_transport::encode_frame(message, usize::MAX).expect("encodes"))
}

/// `body` behind the zero header, whatever it holds.
pub fn framed(body: &[u8]) -> WsMessage {
    let mut frame = Vec::with_capacity(body.len() + 1);
    frame.push(0x00);
    frame.extend_from_slice(body);
    WsMessage::Binary(Bytes::from(frame))
}

/// Sends `message` as one frame.
pub async fn ws_send(ws: &mut Ws, message: &AgentToServer) {
    ws.send(frame(message)).await.expect("send");
}

/// What the server sent next on a WebSocket.
#[derive(Debug)]
pub enum FromServer {
    /// A `ServerToAgent`.
    Message(Box<ServerToAgent>),
    /// A Close frame.
    Close(Option<CloseFrame>),
    /// The stream ended (or failed) without a Close frame.
    End,
}

impl FromServer {
    /// The close code, when this is a Close frame with one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Close(frame) => frame.as_ref().map(|frame| frame.code.into()),
            _ => None,
        }
    }
}

/// The next message, Close or end of stream (skipping pings and the like);
/// fails the test when a binary frame is not a valid `ServerToAgent`.
///
/// No deadline of its own: under tokio's paused clock a deadline would race
/// the server's own timers. Wrap it in [`within`] where a hang is possible.
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

/// The next `ServerToAgent`; fails the test on a Close or the end.
pub async fn ws_recv(ws: &mut Ws) -> ServerToAgent {
    match ws_next(ws).await {
        FromServer::Message(message) => *message,
        other => panic!("expected a ServerToAgent, got {other:?}"),
    }
}

/// Sends `message` and returns the answer.
pub async fn ws_exchange(ws: &mut Ws, message: &AgentToServer) -> ServerToAgent {
    ws_send(ws, message).await;
    ws_recv(ws).await
}

/// Reads until the server's Close frame, completes the closing handshake
/// and returns the code; `None` when the stream ended without one.
pub async fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws_next(ws).await {
            FromServer::Message(_) => continue,
            close @ FromServer::Close(_) => {
                // Keep polling so the Close reply goes out and the stream ends.
                while ws.next().await.is_some() {}
                return close.close_code();
            }
            FromServer::End => return None,
        }
    }
}

/// Sends one request on a fresh HTTP/1.1 connection and collects the
/// response body (no deadline of its own, like [`ws_next`]).
pub async fn http_request(addr: SocketAddr, request: Request<Full<Bytes>>) -> Response<Bytes> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, body)
}

/// A POST to `/v1/opamp` on `addr` with `Host` and the protobuf content
/// type; add headers and a body.
pub fn post(addr: SocketAddr) -> http::request::Builder {
    Request::post(http_url(addr))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
}

/// POSTs one `AgentToServer` and decodes the reply; fails the test unless
/// the status is 200 with the protobuf content type.
pub async fn http_exchange(addr: SocketAddr, message: &AgentToServer) -> ServerToAgent {
    let request = post(addr)
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .expect("request");
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

/// The header `name` as a number (tests name their agents with one), or
/// `None` when it is missing or not a number.
pub fn header_number<T: std::str::FromStr>(headers: &http::HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}
