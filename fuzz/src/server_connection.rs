//! An `OpampServer` fed an arbitrary sequence of WebSocket frames (through a
//! real hyper connection and WebSocket handshake over an in-memory pipe) or
//! plain-HTTP bodies (through its `tower::Service`), next to a healthy
//! agent that must keep working.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opamp_proto::{AgentCapabilities, AgentToServer, InstanceUid, Message, ServerToAgent};
use opamp_server::{DuplicateUidPolicy, OpampServer, Registry};
use opamp_transport::{HeaderlessFrames, decode_frame, encode_frame};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::runtime::{self, within};

/// The server's message size limit: small, so oversize frames are reachable.
const MAX_MESSAGE: usize = 64 * 1024;
/// Virtual-time bound for anything that must finish.
const PATIENCE: Duration = Duration::from_secs(120);
/// The healthy agent's uid; inputs that contain it are allowed to interfere
/// with it (same uid), so the healthy check is skipped for them.
const HEALTHY: [u8; 16] = [0xe7; 16];

type Ws = WebSocketStream<tokio::io::DuplexStream>;

/// Input: one control byte, then frames, each a little-endian `u16` length
/// (bit 15 set: send as a text frame; WebSocket only) and that many bytes.
///
/// Control bits: `0x01` plain HTTP instead of WebSocket; `0x02` refuse
/// duplicate uids (UID-10) instead of reassigning them; `0x04` gzip the HTTP
/// bodies.
pub fn server_connection(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let frames = split_frames(rest);
    let healthy_checked = !contains(data, &HEALTHY);
    let policy = if control & 0x02 != 0 {
        DuplicateUidPolicy::Refuse
    } else {
        DuplicateUidPolicy::AssignNewUid
    };
    let server = OpampServer::builder()
        .registry(Registry::builder().duplicate_policy(policy).build())
        .max_message_size(MAX_MESSAGE)
        .build();
    runtime::block_on(async {
        if control & 0x01 != 0 {
            http_session(&server, &frames, control & 0x04 != 0, healthy_checked).await;
        } else {
            websocket_session(&server, &frames, healthy_checked).await;
        }
    });
}

struct Frame<'a> {
    text: bool,
    bytes: &'a [u8],
}

fn split_frames(mut rest: &[u8]) -> Vec<Frame<'_>> {
    let mut frames = Vec::new();
    while let [low, high, tail @ ..] = rest {
        let header = u16::from_le_bytes([*low, *high]);
        let len = usize::from(header & 0x7fff).min(tail.len());
        frames.push(Frame {
            text: header & 0x8000 != 0,
            bytes: &tail[..len],
        });
        rest = &tail[len..];
    }
    frames
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn healthy_message(sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::from_static(&HEALTHY),
        sequence_num,
        capabilities: (AgentCapabilities::REPORTS_STATUS | AgentCapabilities::REPORTS_HEARTBEAT)
            .bits(),
        agent_description: (sequence_num == 0)
            .then(|| opamp_proto::AgentDescription::for_service("io.example.healthy", "1.0")),
        ..Default::default()
    }
}

/// Opens a WebSocket to `server` over an in-memory pipe served by hyper.
async fn connect(server: &OpampServer) -> Ws {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let service = server.clone();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            tower_service::Service::call(&mut service.clone(), request)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .with_upgrades()
            .await;
    });
    let (ws, response) = within(
        PATIENCE,
        "WebSocket handshake",
        client_async("ws://opamp.test/v1/opamp", client_io),
    )
    .await
    .expect("the upgrade succeeds");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn websocket_session(server: &OpampServer, frames: &[Frame<'_>], healthy_checked: bool) {
    let mut healthy = connect(server).await;
    exchange_healthy(&mut healthy, 0).await;

    let hostile = connect(server).await;
    let (mut sink, mut stream) = hostile.split();
    // Read everything the server says, concurrently, as a real agent would.
    let reader = tokio::spawn(async move {
        let mut replies = Vec::new();
        while let Some(Ok(message)) = stream.next().await {
            if let WsMessage::Binary(data) = message {
                let reply: ServerToAgent = decode_frame(data, usize::MAX, HeaderlessFrames::Reject)
                    .expect("the server only sends valid frames");
                replies.push(reply);
            }
        }
        replies
    });

    // UID-06: every reply carries a uid the agent sent (or none, for frames
    // that did not decode before any uid was known).
    let mut sent_uids = HashSet::from([Bytes::new()]);
    for frame in frames {
        let message = if frame.text {
            WsMessage::Text(String::from_utf8_lossy(frame.bytes).into_owned().into())
        } else {
            if let Ok(decoded) = decode_frame::<AgentToServer>(
                Bytes::copy_from_slice(frame.bytes),
                MAX_MESSAGE,
                HeaderlessFrames::Reject,
            ) {
                sent_uids.insert(decoded.instance_uid);
            }
            WsMessage::Binary(Bytes::copy_from_slice(frame.bytes))
        };
        if sink.send(message).await.is_err() {
            break; // the server closed the connection, as it may
        }
    }

    // Other agents are unaffected, while the hostile connection is open.
    if healthy_checked {
        exchange_healthy(&mut healthy, 1).await;
    }

    let _ = sink.close().await;
    let replies = within(PATIENCE, "hostile connection closing", reader)
        .await
        .expect("reader task");
    // A uid the server assigned (UID-05/09) is the agent's from then on:
    // a reply to a frame that carried no readable uid may carry it.
    let assigned: HashSet<Bytes> = replies
        .iter()
        .filter_map(|reply| reply.agent_identification.as_ref())
        .map(|identification| identification.new_instance_uid.clone())
        .collect();
    for reply in &replies {
        assert!(
            sent_uids.contains(&reply.instance_uid) || assigned.contains(&reply.instance_uid),
            "reply for a uid neither sent nor assigned: {:?}",
            reply.instance_uid
        );
    }
    let _ = healthy.close(None).await;
    while healthy.next().await.is_some() {}
    drop(healthy);
    settle(server).await;
    assert!(
        server.registry().connected().is_empty(),
        "agents left behind: {:?}",
        server.registry().connected()
    );
}

async fn exchange_healthy(ws: &mut Ws, sequence_num: u64) {
    let frame = encode_frame(&healthy_message(sequence_num), usize::MAX).expect("no limit");
    ws.send(WsMessage::Binary(frame))
        .await
        .expect("healthy agent can send");
    let reply = within(PATIENCE, "reply to the healthy agent", async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    break decode_frame::<ServerToAgent>(
                        data,
                        usize::MAX,
                        HeaderlessFrames::Reject,
                    )
                    .expect("valid frame");
                }
                Some(Ok(_)) => continue,
                other => panic!("healthy agent lost its connection: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&reply.instance_uid[..], &HEALTHY[..]);
    assert!(reply.error_response.is_none(), "{reply:?}");
}

/// Waits until the server has no live connection or request left.
async fn settle(server: &OpampServer) {
    within(PATIENCE, "server connections ending", async {
        while server.active_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Registry bookkeeping runs right after the connection's place is freed.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

async fn post(server: &OpampServer, body: Bytes, gzipped: bool) -> (StatusCode, Bytes) {
    let mut request = Request::post("http://opamp.test/v1/opamp")
        .header(header::CONTENT_TYPE, "application/x-protobuf");
    if gzipped {
        request = request.header(header::CONTENT_ENCODING, "gzip");
    }
    let request = request.body(Full::new(body)).expect("valid request");
    let call = tower_service::Service::call(&mut server.clone(), request);
    let response = within(PATIENCE, "plain-HTTP response", call)
        .await
        .expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("infallible")
        .to_bytes();
    (status, body)
}

async fn http_session(
    server: &OpampServer,
    frames: &[Frame<'_>],
    gzipped: bool,
    healthy_checked: bool,
) {
    let (status, _) = post(server, healthy_message(0).encode_to_vec().into(), false).await;
    assert_eq!(status, StatusCode::OK);
    for frame in frames {
        let body = if gzipped {
            gzip(frame.bytes)
        } else {
            Bytes::copy_from_slice(frame.bytes)
        };
        let (status, reply) = post(server, body, gzipped).await;
        match status.as_u16() {
            200 => {
                let reply = ServerToAgent::decode(reply).expect("200 carries a ServerToAgent");
                let request =
                    AgentToServer::decode(frame.bytes).expect("a 200 means the request decoded");
                assert_eq!(reply.instance_uid, request.instance_uid, "UID-06");
            }
            400 | 413 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    if healthy_checked {
        let (status, reply) = post(server, healthy_message(1).encode_to_vec().into(), false).await;
        assert_eq!(status, StatusCode::OK);
        let reply = ServerToAgent::decode(reply).expect("ServerToAgent");
        assert_eq!(&reply.instance_uid[..], &HEALTHY[..]);
    }
    settle(server).await;
    // Plain-HTTP sessions end once silent for the stale timeout.
    tokio::time::sleep(opamp_server::DEFAULT_STALE_AFTER * 3).await;
    let left: Vec<InstanceUid> = server.registry().connected();
    assert!(left.is_empty(), "sessions never ended: {left:?}");
}

fn gzip(data: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to a Vec");
    Bytes::from(encoder.finish().expect("writing to a Vec"))
}
