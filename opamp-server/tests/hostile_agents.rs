//! Hostile agents against a running server. Every case runs next to a
//! healthy WebSocket agent that must keep getting answers before, during
//! and after the attack; the hostile side gets a typed reply, a close code
//! or an HTTP status, and the server never panics or hangs.
//!
//! Timing: tests that wait on server timeouts run on tokio's paused clock;
//! the others only use a generous hang guard, never a wall-clock assert.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use opamp_proto::{
    AgentDescription, AgentToServer, InstanceUid, Message, ServerErrorResponseType, ServerToAgent,
    ServerToAgentFlags,
};
use opamp_server::{OpampServer, SendError};
use opamp_testkit::{
    CAPS, RunningServer, Ws, big_config, frame, framed, http_request, post, push_until_refused,
    uid, within, ws_close_code, ws_connect, ws_recv,
};
use opamp_transport::encode_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// An agent message with the kit's capabilities and any uid bytes (hostile
/// cases send uids of the wrong length); the first one carries a
/// description.
fn message(uid: &[u8], sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::copy_from_slice(uid),
        sequence_num,
        capabilities: CAPS.bits(),
        agent_description: (sequence_num == 0)
            .then(|| AgentDescription::for_service("io.example.agent", "1.0")),
        ..Default::default()
    }
}

/// A WebSocket message from the server, with a hang guard.
async fn reply(ws: &mut Ws) -> ServerToAgent {
    within("a message from the server", ws_recv(ws)).await
}

/// The close code the server sends next, with a hang guard.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    within("the server's Close", ws_close_code(ws)).await
}

/// POSTs `request` and returns the status and body.
async fn post_raw(addr: SocketAddr, request: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let response = within("HTTP response", http_request(addr, request)).await;
    (response.status(), response.into_body())
}

fn assert_bad_request(reply: &ServerToAgent, case: &str) {
    let error = reply
        .error_response
        .as_ref()
        .unwrap_or_else(|| panic!("{case}: no error_response in {reply:?}"));
    assert_eq!(
        error.r#type(),
        ServerErrorResponseType::BadRequest,
        "{case}"
    );
}

/// A well-behaved WebSocket agent.
struct Healthy {
    ws: Ws,
    uid: InstanceUid,
    sequence_num: u64,
}

impl Healthy {
    async fn connect(addr: SocketAddr) -> Self {
        let mut healthy = Self {
            ws: ws_connect(addr).await,
            uid: uid(0xe7),
            sequence_num: 0,
        };
        healthy.exchange().await;
        healthy
    }

    /// Sends the next message and checks the answer is a normal one.
    async fn exchange(&mut self) {
        let sent = message(&self.uid.to_bytes(), self.sequence_num);
        self.sequence_num += 1;
        self.ws.send(frame(&sent)).await.expect("healthy send");
        let answer = reply(&mut self.ws).await;
        assert_eq!(answer.instance_uid, self.uid.to_bytes(), "UID-06");
        assert!(answer.error_response.is_none(), "{answer:?}");
    }

    async fn leave(mut self) {
        self.exchange().await;
        let _ = self.ws.close(None).await;
    }
}

/// A server next to a healthy agent: every case attacks while it is
/// served.
async fn start(server: OpampServer) -> (RunningServer, Healthy) {
    let running = RunningServer::start(server).await;
    let healthy = Healthy::connect(running.addr).await;
    (running, healthy)
}

/// The healthy agent is still served; then everything shuts down.
async fn finish(healthy: Healthy, running: RunningServer) {
    healthy.leave().await;
    within("server shutdown", running.stop()).await;
}

/// A hostile WebSocket agent that first says hello as `agent`.
async fn hostile_hello(addr: SocketAddr, agent: &[u8]) -> Ws {
    let mut hostile = ws_connect(addr).await;
    hostile.send(frame(&message(agent, 0))).await.unwrap();
    reply(&mut hostile).await;
    hostile
}

/// Whether the registry knows `agent`.
async fn knows(running: &RunningServer, agent: InstanceUid) -> bool {
    running.registry().agent(agent).await.unwrap().is_some()
}

/// See opamp-transport's `hostile_codec.rs`: an agent description whose one
/// attribute is an `AnyValue` array nested `depth` times, written
/// outside-in without recursion.
fn nested_any_value_report(uid: &[u8; 16], depth: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, value: usize) {
        prost::encoding::encode_varint(value as u64, out);
    }
    fn len(value: usize) -> usize {
        prost::encoding::encoded_len_varint(value as u64)
    }
    const INNER: [u8; 3] = [0x0a, 0x01, b'x'];
    let mut any = vec![INNER.len()];
    let mut array = vec![0];
    for level in 1..=depth {
        let array_len = 1 + len(any[level - 1]) + any[level - 1];
        array.push(array_len);
        any.push(1 + len(array_len) + array_len);
    }
    let key_value = 4 + len(any[depth]) + any[depth];
    let description = 1 + len(key_value) + key_value;
    let mut out = vec![0x0a, 0x10];
    out.extend_from_slice(uid);
    out.push(0x1a);
    varint(&mut out, description);
    out.push(0x0a);
    varint(&mut out, key_value);
    out.extend_from_slice(&[0x0a, 0x01, b'k', 0x12]);
    varint(&mut out, any[depth]);
    for level in (1..=depth).rev() {
        out.push(0x2a);
        varint(&mut out, array[level]);
        out.push(0x0a);
        varint(&mut out, any[level - 1]);
    }
    out.extend_from_slice(&INNER);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

// ------------------------------------------------------------ malformed data

/// ERR-02: protobuf nested 100 000 levels deep hits prost's recursion limit
/// (100) and is answered BAD_REQUEST; the connection and the server live.
#[tokio::test]
async fn err_02_deeply_nested_any_value_over_websocket_gets_bad_request() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let agent = [0x21; 16];
    let mut hostile = hostile_hello(running.addr, &agent).await;

    hostile
        .send(framed(&nested_any_value_report(&agent, 100_000)))
        .await
        .unwrap();
    let answer = reply(&mut hostile).await;
    assert_bad_request(&answer, "deep nesting");
    assert!(
        answer
            .error_response
            .unwrap()
            .error_message
            .contains("recursion limit")
    );
    healthy.exchange().await;
    // Still connected, still the same agent.
    hostile.send(frame(&message(&agent, 1))).await.unwrap();
    let answer = reply(&mut hostile).await;
    assert!(answer.error_response.is_none());
    assert_eq!(&answer.instance_uid[..], &agent[..]);
    drop(hostile);
    finish(healthy, running).await;
}

/// HTTP-04, ERR-02: the same body over plain HTTP is a 400.
#[tokio::test]
async fn deeply_nested_any_value_over_http_is_400() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let request = post(running.addr)
        .body(Full::new(Bytes::from(nested_any_value_report(
            &[0x22; 16],
            100_000,
        ))))
        .unwrap();
    let (status, _) = post_raw(running.addr, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    healthy.exchange().await;
    assert!(!knows(&running, uid(0x22)).await);
    finish(healthy, running).await;
}

/// WS-04, ERR-02: bad headers (non-zero, overlong, unterminated varints) and
/// bad protobuf (truncated, lying lengths, wrong wire types) each get a
/// BAD_REQUEST and the connection carries on.
#[tokio::test]
async fn ws_04_err_02_malformed_frames_each_get_bad_request() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let agent = [0x23; 16];
    let mut hostile = hostile_hello(running.addr, &agent).await;

    let full = encode_frame(&message(&agent, 1), usize::MAX).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("non-zero header", [&[0x01][..], &full[1..]].concat()),
        (
            "overlong zero header",
            [&[0x80, 0x00][..], &full[1..]].concat(),
        ),
        (
            "ten-byte overlong zero header",
            [&[0x80; 9][..], &[0x00], &full[1..]].concat(),
        ),
        ("eleven-byte varint header", vec![0x80; 11]),
        ("unterminated header", vec![0x81]),
        ("empty frame", vec![]),
        ("truncated protobuf", full[..full.len() - 4].to_vec()),
        (
            "length-lying protobuf",
            vec![0x00, 0x0a, 0xe8, 0x07, 0x01, 0x02],
        ),
        ("bytes field as varint", vec![0x00, 0x08, 0x01]),
        ("varint field as bytes", vec![0x00, 0x12, 0x01, 0x07]),
        ("wire type 7", vec![0x00, 0x0f, 0x00]),
    ];
    for (case, bytes) in cases {
        hostile
            .send(WsMessage::Binary(Bytes::from(bytes)))
            .await
            .unwrap();
        assert_bad_request(&reply(&mut hostile).await, case);
        healthy.exchange().await;
    }
    hostile.send(frame(&message(&agent, 1))).await.unwrap();
    assert!(reply(&mut hostile).await.error_response.is_none());
    drop(hostile);
    finish(healthy, running).await;
}

/// WS-01: a text frame closes that connection with 1003, nobody else's.
#[tokio::test]
async fn ws_01_text_frame_closes_1003_and_others_are_unaffected() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let mut hostile = ws_connect(running.addr).await;
    hostile
        .send(WsMessage::Text("{\"instance_uid\": 1}".into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut hostile).await, Some(1003));
    healthy.exchange().await;
    drop(hostile);
    finish(healthy, running).await;
}

/// WS-07: a message split into continuation frames is reassembled and
/// answered like any other.
#[tokio::test]
async fn ws_07_fragmented_message_is_reassembled() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let mut hostile = ws_connect(running.addr).await;
    let mut report = message(&[0x24; 16], 0);
    report
        .agent_description
        .as_mut()
        .unwrap()
        .non_identifying_attributes
        .push(opamp_proto::KeyValue::new("padding", "p".repeat(3000)));
    let bytes = encode_frame(&report, usize::MAX).unwrap();
    let pieces: Vec<&[u8]> = bytes.chunks(700).collect();
    for (index, piece) in pieces.iter().enumerate() {
        let opcode = if index == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fin = index == pieces.len() - 1;
        let frame = Frame::message(Bytes::copy_from_slice(piece), opcode, fin);
        hostile.send(WsMessage::Frame(frame)).await.unwrap();
        if !fin {
            // Interleaved traffic elsewhere does not disturb the reassembly.
            healthy.exchange().await;
        }
    }
    let answer = reply(&mut hostile).await;
    assert!(answer.error_response.is_none(), "{answer:?}");
    assert_eq!(&answer.instance_uid[..], &[0x24; 16][..]);
    let record = running.registry().agent(uid(0x24)).await.unwrap();
    let description = record.expect("recorded").status.description.unwrap();
    assert_eq!(description, report.agent_description.unwrap());
    drop(hostile);
    finish(healthy, running).await;
}

/// WS-09: fragments that add up to more than the limit close with 1009,
/// though every fragment on its own is small.
#[tokio::test]
async fn ws_09_fragments_adding_up_past_the_limit_close_1009() {
    let (running, mut healthy) =
        start(OpampServer::builder().max_message_size(16 * 1024).build()).await;
    let mut hostile = ws_connect(running.addr).await;
    let mut first = vec![0x00, 0x0a, 0x10];
    first.extend_from_slice(&[0x25; 16]);
    let opening = Frame::message(Bytes::from(first), OpCode::Data(Data::Binary), false);
    hostile.send(WsMessage::Frame(opening)).await.unwrap();
    // 4 KiB continuation frames, never final: the 5th passes 16 KiB.
    for _ in 0..8 {
        let piece = Frame::message(
            Bytes::from(vec![0u8; 4096]),
            OpCode::Data(Data::Continue),
            false,
        );
        if hostile.send(WsMessage::Frame(piece)).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut hostile).await, Some(1009));
    healthy.exchange().await;
    drop(hostile);
    finish(healthy, running).await;
}

/// WS-09: a frame header announcing 65 MiB is refused with 1009 from the
/// header alone: the server does not wait for (or buffer) the payload.
#[tokio::test]
async fn ws_09_a_65_mib_frame_is_refused_from_its_header() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;

    let mut raw = TcpStream::connect(running.addr).await.unwrap();
    raw.write_all(
        format!(
            "GET /v1/opamp HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            running.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = within("101 response", raw.read_u8()).await.unwrap();
        head.push(byte);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    // FIN + binary, masked, 64-bit length of 65 MiB, mask key; no payload.
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(65u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.write_all(&header).await.unwrap();
    let mut close = [0u8; 4];
    within("Close frame", raw.read_exact(&mut close))
        .await
        .unwrap();
    assert_eq!(close[0], 0x88, "a Close frame: {close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);

    healthy.exchange().await;
    finish(healthy, running).await;
}

// ------------------------------------------------------------- plain HTTP

/// HTTP-17, HTTP-18: a gzip bomb (a few KiB inflating to 8 MiB) is a 413
/// once the limit is passed; nothing is recorded.
#[tokio::test]
async fn http_17_gzip_bomb_is_413() {
    let (running, mut healthy) =
        start(OpampServer::builder().max_message_size(1 << 20).build()).await;
    let mut bomb = message(&[0x26; 16], 0);
    bomb.agent_description
        .as_mut()
        .unwrap()
        .non_identifying_attributes
        .push(opamp_proto::KeyValue::new("padding", "z".repeat(8 << 20)));
    let compressed = gzip(&bomb.encode_to_vec());
    assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
    let request = post(running.addr)
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Full::new(Bytes::from(compressed)))
        .unwrap();
    let (status, _) = post_raw(running.addr, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    healthy.exchange().await;
    assert!(!knows(&running, uid(0x26)).await);
    finish(healthy, running).await;
}

/// HTTP-04, WS-16: a wrong, missing or doubled content type is a 415, a
/// wrong method a 405, an unknown content coding a 415.
#[tokio::test]
async fn http_04_wrong_or_missing_content_type_is_refused() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let addr = running.addr;
    let body = || Full::new(Bytes::from(message(&[0x27; 16], 0).encode_to_vec()));
    let base =
        || Request::post(format!("http://{addr}/v1/opamp")).header(header::HOST, addr.to_string());
    let cases = [
        (
            "json",
            base().header(header::CONTENT_TYPE, "application/json"),
            415,
        ),
        ("missing", base(), 415),
        (
            "almost",
            base().header(header::CONTENT_TYPE, "application/x-protobuffer"),
            415,
        ),
        (
            "doubled",
            base()
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .header(header::CONTENT_TYPE, "text/plain"),
            415,
        ),
        (
            "brotli",
            base()
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .header(header::CONTENT_ENCODING, "br"),
            415,
        ),
        (
            "put",
            Request::put(format!("http://{addr}/v1/opamp"))
                .header(header::HOST, addr.to_string())
                .header(header::CONTENT_TYPE, "application/x-protobuf"),
            405,
        ),
    ];
    for (case, request, expected) in cases {
        let (status, _) = post_raw(addr, request.body(body()).unwrap()).await;
        assert_eq!(status.as_u16(), expected, "{case}");
        healthy.exchange().await;
    }
    assert!(!knows(&running, uid(0x27)).await);
    finish(healthy, running).await;
}

/// A chunked body that never ends gets 408 once the body read timeout
/// passes; the healthy agent is served meanwhile.
#[tokio::test(start_paused = true)]
async fn chunked_body_that_never_ends_is_408() {
    let (running, mut healthy) = start(
        OpampServer::builder()
            .body_read_timeout(Duration::from_secs(5))
            .idle_timeout_heartbeats(0)
            .build(),
    )
    .await;
    let mut raw = TcpStream::connect(running.addr).await.unwrap();
    raw.write_all(
        format!(
            "POST /v1/opamp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
             Transfer-Encoding: chunked\r\n\r\n4\r\n\x0a\x10\x28\x28\r\n",
            running.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Other agents are served while the body hangs.
    healthy.exchange().await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(600), raw.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server must give up on the body");
    assert!(
        response.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(
        running.server.active_connections(),
        1,
        "only the healthy agent"
    );
    healthy.exchange().await;
    finish(healthy, running).await;
}

/// Slowloris: a request head trickled a byte at a time is dropped once the
/// header read timeout passes, however long the trickle would go on.
#[tokio::test(start_paused = true)]
async fn slowloris_request_head_is_dropped() {
    let (running, mut healthy) = start(
        OpampServer::builder()
            .header_read_timeout(Duration::from_secs(5))
            .idle_timeout_heartbeats(0)
            .build(),
    )
    .await;
    let raw = TcpStream::connect(running.addr).await.unwrap();
    let (mut reader, mut writer) = raw.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nX-Padding: ";
        for byte in head.iter().chain(std::iter::repeat_n(&b'a', 10_000)) {
            if writer.write_all(&[*byte]).await.is_err() {
                return true; // the server hung up
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    });
    healthy.exchange().await;
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(600), reader.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server must hang up");
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        within("trickle ends", trickle).await.unwrap(),
        "writes fail once dropped"
    );
    healthy.exchange().await;
    finish(healthy, running).await;
}

// ------------------------------------------------------------ protocol abuse

/// UID-03, ERR-02: instance uids of 0, 15 and 17 bytes are answered
/// BAD_REQUEST echoing what was sent, over both transports, and never
/// reach the registry.
#[tokio::test]
async fn uid_03_instance_uids_of_0_15_17_bytes_get_bad_request() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let mut hostile = ws_connect(running.addr).await;
    for len in [0usize, 15, 17] {
        let bad = vec![0x29; len];
        hostile.send(frame(&message(&bad, 0))).await.unwrap();
        let answer = reply(&mut hostile).await;
        assert_bad_request(&answer, &format!("{len} bytes over WebSocket"));
        assert_eq!(answer.instance_uid, Bytes::from(bad.clone()), "echoed");

        let request = post(running.addr)
            .body(Full::new(Bytes::from(message(&bad, 0).encode_to_vec())))
            .unwrap();
        let (status, body) = post_raw(running.addr, request).await;
        // An empty body is a 400; a body with a bad uid is an OpAMP error.
        if len == 0 {
            assert!(matches!(status.as_u16(), 200 | 400), "{status}");
        } else {
            assert_eq!(status, StatusCode::OK);
        }
        if status == StatusCode::OK {
            let answer = ServerToAgent::decode(body).unwrap();
            assert_bad_request(&answer, &format!("{len} bytes over HTTP"));
        }
        healthy.exchange().await;
    }
    assert_eq!(running.registry().connected(), vec![uid(0xe7)]);
    drop(hostile);
    finish(healthy, running).await;
}

/// SEQ-05: a sequence number going backwards is a gap: the server asks for
/// the full state once, takes the full report as the new baseline, and the
/// agent carries on without further requests.
#[tokio::test]
async fn seq_05_sequence_numbers_going_backwards_ask_for_full_state() {
    let (running, mut healthy) = start(OpampServer::builder().build()).await;
    let mut hostile = ws_connect(running.addr).await;
    let agent = [0x2a; 16];
    let full_state = |reply: &ServerToAgent| {
        ServerToAgentFlags::from_bits_retain(reply.flags)
            .contains(ServerToAgentFlags::REPORT_FULL_STATE)
    };
    for sequence_num in 0..=5 {
        hostile
            .send(frame(&message(&agent, sequence_num)))
            .await
            .unwrap();
        assert!(!full_state(&reply(&mut hostile).await), "{sequence_num}");
    }
    hostile.send(frame(&message(&agent, 2))).await.unwrap();
    assert!(full_state(&reply(&mut hostile).await), "backwards is a gap");
    healthy.exchange().await;
    // The full report (numbered on from the backwards value) is the new
    // baseline.
    let mut full = message(&agent, 3);
    full.agent_description = Some(AgentDescription::for_service("io.example.agent", "1.0"));
    hostile.send(frame(&full)).await.unwrap();
    assert!(!full_state(&reply(&mut hostile).await));
    hostile.send(frame(&message(&agent, 4))).await.unwrap();
    assert!(!full_state(&reply(&mut hostile).await));
    // Going back to 0 without a description is a gap again, not a restart.
    hostile
        .send(frame(&message(&agent, 1).clone()))
        .await
        .unwrap();
    assert!(full_state(&reply(&mut hostile).await));
    drop(hostile);
    finish(healthy, running).await;
}

/// A WebSocket agent that never reads fills its bounded send queue and is
/// disconnected (SendQueueFull, close 1008); memory stays bounded by the
/// queue and the healthy agent keeps its pushes and replies.
#[tokio::test]
async fn agent_that_never_reads_is_disconnected() {
    let server = OpampServer::builder()
        .send_queue_capacity(2)
        .close_timeout(Duration::from_millis(200))
        .build();
    let (running, mut healthy) = start(server).await;
    let mut hostile = ws_connect(running.addr).await;
    let agent = uid(0x2b);
    hostile
        .send(frame(&message(&agent.to_bytes(), 0)))
        .await
        .unwrap();
    reply(&mut hostile).await;
    // From here on the hostile agent reads nothing.
    let registry = running.registry();
    let push = big_config(512 * 1024);
    let outcome = push_until_refused(1000, || registry.send(agent, push.clone())).await;
    assert!(
        matches!(
            outcome,
            Some(SendError::QueueFull | SendError::NotConnected(_) | SendError::Closed)
        ),
        "{outcome:?}"
    );
    within("the hostile agent to be dropped", async {
        while registry.connection(agent).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The healthy agent still gets pushes and replies.
    registry
        .send(healthy.uid, big_config(1024))
        .await
        .expect("healthy agent reachable");
    assert!(reply(&mut healthy.ws).await.remote_config.is_some());
    healthy.exchange().await;
    drop(hostile);
    finish(healthy, running).await;
}
