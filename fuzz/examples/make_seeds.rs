//! Writes the seed corpora under `fuzz/corpus/<target>/` from real protocol
//! messages (a full agent status, heartbeats, offers, error responses) built
//! with `opamp-proto`'s types; the first three are the benchmark messages of
//! `opamp-benches`. Run from the repository root:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//! ```

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use opamp_benches::messages;
use opamp_proto::{
    AgentCapabilities, AgentDisconnect, AgentIdentification, AgentRemoteConfig, AgentToServer,
    ConnectionSettingsOffers, Message, OpAmpConnectionSettings, RetryInfo, ServerErrorResponse,
    ServerErrorResponseType, ServerToAgent, ServerToAgentFlags, server_error_response,
};
use opamp_testkit::config_map;

use opamp_transport::encode_frame;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    ws_frame(&root.join("ws_frame"));
    http_body(&root.join("http_body"));
    server_connection(&root.join("server_connection"));
    client_core(&root.join("client_core"));
    package_syncer(&root.join("package_syncer"));
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("create corpus directory");
    std::fs::write(dir.join(name), data).expect("write seed");
}

fn frame<M: Message>(message: &M) -> Vec<u8> {
    encode_frame(message, usize::MAX)
        .expect("no limit")
        .to_vec()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// A length-prefixed item, as several targets read them.
fn item(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("seed item under 32 KiB");
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn uid(byte: u8) -> Bytes {
    Bytes::from(vec![byte; 16])
}

fn agent(uid_bytes: Bytes, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid_bytes,
        sequence_num,
        ..messages::heartbeat()
    }
}

fn small_server_messages() -> Vec<(&'static str, ServerToAgent)> {
    let config = config_map("log_level: debug\n");
    vec![
        (
            "remote-config",
            ServerToAgent {
                instance_uid: uid(0x42),
                remote_config: Some(AgentRemoteConfig {
                    config_hash: opamp_proto::config_hash(&config),
                    config: Some(config),
                }),
                ..Default::default()
            },
        ),
        (
            "new-uid",
            ServerToAgent {
                agent_identification: Some(AgentIdentification {
                    new_instance_uid: uid(0x43),
                }),
                ..Default::default()
            },
        ),
        (
            "new-uid-15-bytes",
            ServerToAgent {
                agent_identification: Some(AgentIdentification {
                    new_instance_uid: Bytes::from(vec![0x44; 15]),
                }),
                ..Default::default()
            },
        ),
        (
            "report-full-state",
            ServerToAgent {
                flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
                capabilities: 0x7f,
                ..Default::default()
            },
        ),
        (
            "heartbeat-offer",
            ServerToAgent {
                connection_settings: Some(ConnectionSettingsOffers {
                    hash: Bytes::from_static(b"settings-1"),
                    opamp: Some(OpAmpConnectionSettings {
                        heartbeat_interval_seconds: 10,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "unavailable",
            ServerToAgent {
                error_response: Some(ServerErrorResponse {
                    r#type: ServerErrorResponseType::Unavailable as i32,
                    error_message: "busy".into(),
                    details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                        retry_after_nanoseconds: 5_000_000_000,
                    })),
                }),
                ..Default::default()
            },
        ),
    ]
}

fn ws_frame(dir: &Path) {
    write(dir, "heartbeat", &frame(&messages::heartbeat()));
    write(dir, "full-status", &frame(&messages::full_status()));
    write(
        dir,
        "packages-available",
        &frame(&messages::packages_available()),
    );
    write(
        dir,
        "headerless-heartbeat",
        &messages::heartbeat().encode_to_vec(),
    );
    write(dir, "empty-message", &[0x00]);
    write(dir, "overlong-header", &[0x80, 0x00, 0x08, 0x01]);
    write(dir, "non-zero-header", &[0x01, 0x08, 0x01]);
    for (name, message) in small_server_messages() {
        write(dir, name, &frame(&message));
    }
}

fn http_body(dir: &Path) {
    let heartbeat = messages::heartbeat().encode_to_vec();
    let full = messages::full_status().encode_to_vec();
    let with = |control: u8, body: &[u8]| {
        let mut out = vec![control];
        out.extend_from_slice(body);
        out
    };
    write(dir, "plain-heartbeat", &with(0x00, &heartbeat));
    write(dir, "plain-full-status", &with(0x00, &full));
    write(dir, "gzip-full-status", &with(0x03, &full));
    write(dir, "gzip-full-status-chunked", &with(0x33, &full));
    write(dir, "raw-gzip-heartbeat", &with(0x01, &gzip(&heartbeat)));
    write(dir, "gzip-bomb", &with(0x01, &gzip(&vec![0u8; 1 << 20])));
    write(dir, "truncated", &with(0x00, &full[..full.len() / 2]));
}

fn server_connection(dir: &Path) {
    let a = uid(0x0a);
    let mut first = agent(a.clone(), 0);
    first.agent_description = messages::full_status().agent_description;
    let mut disconnect = agent(a.clone(), 6);
    disconnect.agent_disconnect = Some(AgentDisconnect {});
    let mut uid_15 = agent(Bytes::from(vec![0x0b; 15]), 0);
    uid_15.capabilities = AgentCapabilities::REPORTS_STATUS.bits();
    let mut uid_17 = agent(Bytes::from(vec![0x0c; 17]), 0);
    uid_17.capabilities = AgentCapabilities::REPORTS_STATUS.bits();
    let sequence = [
        first,
        agent(a.clone(), 1),
        agent(a.clone(), 5), // a gap
        agent(a.clone(), 2), // going backwards
        uid_15,
        uid_17,
        agent(Bytes::new(), 0),
        agent(uid(0x0d), 0),
        disconnect,
    ];
    // WebSocket: framed messages, a malformed frame and a text frame.
    let mut ws = vec![0x00];
    for message in &sequence {
        ws.extend(item(&frame(message)));
    }
    ws.extend(item(&[0x05, 0x0a, 0x00]));
    write(dir, "ws-session", &ws);
    let mut text = vec![0x00];
    text.extend(item(&frame(&sequence[0])));
    text.extend((0x8000u16 | 5).to_le_bytes());
    text.extend_from_slice(b"hello");
    write(dir, "ws-text-frame", &text);
    // The same agent twice, refused the second time (UID-10).
    let mut duplicate = vec![0x02];
    duplicate.extend(item(&frame(&sequence[0])));
    duplicate.extend(item(&frame(&agent(a.clone(), 0))));
    write(dir, "ws-duplicate-refused", &duplicate);
    // Plain HTTP: raw bodies, plain and gzipped.
    for (name, control) in [("http-session", 0x01), ("http-gzip-session", 0x05)] {
        let mut http = vec![control];
        for message in &sequence {
            http.extend(item(&message.encode_to_vec()));
        }
        http.extend(item(&[0x0a, 0x7f, 0x01]));
        http.extend(item(&[]));
        write(dir, name, &http);
    }
}

fn client_core(dir: &Path) {
    for (name, control) in [("websocket", 0xfe_u8), ("http", 0xff)] {
        let mut ops = vec![control];
        for (_, message) in small_server_messages() {
            ops.push(2); // time passes
            ops.push(8);
            ops.push(0); // receive
            ops.extend(item(&message.encode_to_vec()));
        }
        ops.extend([3, 1, 2, 40, 4, 7, 5, 2, 0, 1, 2, 6, 7, 2, 200]);
        write(dir, name, &ops);
    }
    settings_switches(dir);
}

/// CS-06: an offer of OpAMP settings that is accepted and verified, one
/// whose candidate fails (after op 7 with 2 toggles failing candidates),
/// and one that is refused (op 7 with 1).
fn settings_switches(dir: &Path) {
    let offer = |hash: &'static [u8], endpoint: &str| {
        ServerToAgent {
            connection_settings: Some(ConnectionSettingsOffers {
                hash: Bytes::from_static(hash),
                opamp: Some(OpAmpConnectionSettings {
                    destination_endpoint: endpoint.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let tick = [2, 1];
    let receive = |ops: &mut Vec<u8>, message: &[u8]| {
        ops.push(0);
        ops.extend(item(message));
    };
    // WebSocket with AcceptsOpAMPConnectionSettings and
    // ReportsConnectionSettingsStatus: each step's drain connects, says
    // goodbye, tries the candidate.
    let mut ws = vec![0x20];
    ws.extend(tick);
    receive(&mut ws, &offer(b"h1", "wss://a.example.com/v1/opamp"));
    ws.extend(tick.repeat(3));
    ws.extend([7, 2]);
    receive(&mut ws, &offer(b"h2", "wss://b.example.com/v1/opamp"));
    ws.extend(tick.repeat(3));
    ws.extend([7, 1]);
    receive(&mut ws, &offer(b"h3", "wss://c.example.com/v1/opamp"));
    ws.extend(tick.repeat(2));
    write(dir, "websocket-settings-switch", &ws);
    // Plain HTTP: every received message answers the request in flight. An
    // offer, then empty replies to the two requests that follow it.
    let http_offer = |ops: &mut Vec<u8>, hash: &'static [u8], endpoint: &str| {
        receive(ops, &offer(hash, endpoint));
        ops.extend(tick);
        receive(ops, &[]);
        receive(ops, &[]);
        ops.extend(tick);
    };
    let mut http = vec![0x21];
    http.extend(tick);
    http_offer(&mut http, b"h1", "https://a.example.com/v1/opamp");
    http.extend([7, 2]);
    http_offer(&mut http, b"h2", "https://b.example.com/v1/opamp");
    http.extend([3, 1]);
    http.extend(tick.repeat(2));
    receive(&mut http, &[]);
    write(dir, "http-settings-switch", &http);
}

fn package_syncer(dir: &Path) {
    let offer = messages::packages_available()
        .packages_available
        .expect("the message offers packages")
        .encode_to_vec();
    let mut raw = vec![0x01];
    raw.extend(item(&offer));
    raw.extend(item(&offer));
    write(dir, "raw-offer", &raw);
    raw[0] = 0x03;
    write(dir, "raw-offer-signatures-ignored", &raw);
    // Structured offers: any bytes parse; these are fixed pseudo-random ones.
    let mut state = 0x2545_f491_u32;
    for (index, len) in [64usize, 256, 1024].into_iter().enumerate() {
        let mut data = vec![if index == 2 { 0x02 } else { 0x00 }];
        data.extend((0..len).map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        }));
        write(dir, &format!("structured-{len}"), &data);
    }
}
