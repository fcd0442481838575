//! opamp-go agent (`goagent`) → our server (`OpampServer`, `Registry`).
//!
//! Scenarios 1–5 and 8 of issue 6, plus duplicate uids, packages and
//! connection settings offered by our registry; each over WebSocket and
//! plain HTTP unless the name says otherwise. See `interop/MATRIX.md`.

use std::time::Duration;

use bytes::Bytes;
use opamp_interop_tests::{
    GoProcess, GoPrograms, INTEROP_CAPABILITY, OurServer, Refuse, StaticFile, TIMEOUT, TestPki,
    Transport, hex, over_both_transports, with_go,
};
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentToServer, ConnectionSettingsOffers,
    ConnectionSettingsStatuses, CustomMessage, DownloadableFile, InstanceUid,
    OpAmpConnectionSettings, PackageAvailable, PackageStatusEnum, PackageType, PackagesAvailable,
    ServerToAgentFlags,
};
use opamp_server::{AgentEvent, AgentRecord, Delivery, DisconnectReason, Offer, RemoteConfigState};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// goagent's heartbeat (and, over HTTP, polling) interval: short, so polls
/// deliver pushes quickly.
const HEARTBEAT: &str = "300ms";

fn args(url: &str, extra: &[&str]) -> Vec<String> {
    let mut all = vec!["--endpoint", url, "--heartbeat", HEARTBEAT];
    all.extend_from_slice(extra);
    all.into_iter().map(str::to_owned).collect()
}

/// Starts goagent against `server` and returns it with its instance uid.
async fn start_agent(
    go: &GoPrograms,
    server: &OurServer,
    transport: Transport,
    extra: &[&str],
) -> (GoProcess, InstanceUid) {
    let mut agent = GoProcess::goagent(go, &args(&server.url(transport), extra));
    let started = agent.wait_event("started").await;
    let uid = started["uid"]
        .as_str()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("goagent started without a uid: {started}"));
    (agent, uid)
}

/// Starts our server and a goagent on `transport` (with `extra` flags) and
/// waits until the registry holds the agent's full state.
async fn with_full_state(
    go: &GoPrograms,
    transport: Transport,
    extra: &[&str],
) -> (OurServer, GoProcess, InstanceUid) {
    let mut server = OurServer::start().await;
    let (agent, uid) = start_agent(go, &server, transport, extra).await;
    server.wait_record("full state", uid, has_full_state).await;
    (server, agent, uid)
}

/// Waits until `uid` reports APPLIED or FAILED for the config `hash`.
async fn config_outcome(server: &OurServer, uid: InstanceUid, hash: &Bytes) -> RemoteConfigState {
    tokio::time::timeout(TIMEOUT, server.registry().wait_for_remote_config(uid, hash))
        .await
        .expect("APPLIED or FAILED in time")
        .expect("agent known")
}

/// Offers `config` to `uid` through the registry.
async fn offer_config(server: &OurServer, uid: InstanceUid, config: AgentConfigMap) -> Offer {
    server
        .registry()
        .set_remote_config(uid, config)
        .await
        .expect("agent accepts remote config")
}

/// goagent's `server_message` event carrying `offer`.
async fn offer_on_wire(agent: &mut GoProcess, offer: &Offer) -> Value {
    let hash = hex(&offer.hash);
    agent
        .wait_for("the offer on the wire", |e| {
            e["event"] == "server_message" && e["remote_config"]["hash"] == hash
        })
        .await
}

/// The uid our registry gives the agent that connected as `uid`.
async fn reassigned_uid(server: &mut OurServer, uid: InstanceUid) -> InstanceUid {
    let reassigned = server
        .events
        .wait_for(
            "uid reassignment",
            |e| matches!(e, AgentEvent::UidReassigned { old, .. } if *old == uid),
        )
        .await;
    let AgentEvent::UidReassigned { new, .. } = reassigned else {
        unreachable!()
    };
    new
}

fn has_full_state(record: &AgentRecord) -> bool {
    let status = &record.status;
    status.description.is_some() && status.health.is_some() && status.effective_config.is_some()
}

fn is_full_state(message: &AgentToServer) -> bool {
    message.agent_description.is_some()
        && message.health.is_some()
        && message.effective_config.is_some()
}

/// A tap event (`server_message`) carrying ReportFullState.
fn asks_full_state(event: &Value) -> bool {
    event["event"] == "server_message"
        && event["flags"].as_u64().unwrap_or(0) & ServerToAgentFlags::REPORT_FULL_STATE.bits() != 0
}

fn config(name: &str, body: &str) -> AgentConfigMap {
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        name.into(),
        AgentConfigObject {
            body: body.to_owned().into(),
            content_type: "text/yaml".into(),
            ..Default::default()
        },
    );
    config
}

fn string_attribute(record: &AgentRecord, key: &str) -> Option<String> {
    let description = record.status.description.as_ref()?;
    description.identifying(key)?.as_str().map(str::to_owned)
}

// ---------------------------------------------------------------- scenario 1

/// STS-01, SEQ-01..03, HB-06: the first message's full state is merged into
/// the registry; heartbeats follow with consecutive sequence numbers and
/// leave the merged state alone; CAP-07/CUS-01 reach opamp-go.
async fn full_state_and_heartbeats(go: &GoPrograms, transport: Transport) {
    let mut server = OurServer::start().await;
    let (mut agent, uid) = start_agent(go, &server, transport, &[]).await;

    let first = server.wait_message("first message", uid, |_| true).await;
    assert!(
        is_full_state(&first),
        "the first message is not a full status report: {first:#?}"
    );
    let record = server.wait_record("full state", uid, has_full_state).await;
    assert_eq!(
        string_attribute(&record, "service.name").as_deref(),
        Some("goagent")
    );
    assert_eq!(
        string_attribute(&record, "service.instance.id"),
        Some(uid.to_string())
    );
    let health = record.status.health.as_ref().expect("health");
    assert!(health.healthy, "{health:?}");
    let effective = record
        .status
        .effective_config
        .as_ref()
        .and_then(|c| c.config_map.as_ref());
    let file = effective
        .and_then(|map| map.config_map.get("config.yaml"))
        .expect("config.yaml");
    assert_eq!(&file.body[..], b"receivers: {}\n");
    let wanted = AgentCapabilities::ACCEPTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
        | AgentCapabilities::REPORTS_HEARTBEAT
        | AgentCapabilities::ACCEPTS_RESTART_COMMAND;
    assert!(
        record.status.capabilities.contains(wanted),
        "{:?}",
        record.status.capabilities
    );
    let custom = record
        .status
        .custom_capabilities
        .as_ref()
        .expect("custom capabilities");
    assert!(
        custom.capabilities.iter().any(|c| c == INTEROP_CAPABILITY),
        "{custom:?}"
    );
    assert_eq!(
        record.connection.as_ref().map(|c| c.transport),
        Some(transport.kind())
    );

    let mut sequence = first.sequence_num;
    for _ in 0..3 {
        let next = sequence + 1;
        let heartbeat = server
            .wait_message("heartbeat", uid, |m| m.sequence_num == next)
            .await;
        assert!(
            heartbeat.agent_description.is_none(),
            "heartbeats carry no unchanged status"
        );
        sequence = next;
    }
    let after = server.registry().agent(uid).await.unwrap().expect("record");
    assert_eq!(
        after.status, record.status,
        "heartbeats must not change the merged state"
    );

    // CAP-07, CUS-01: the first reply tells opamp-go who we are.
    let reply = agent
        .wait_for("first reply", |e| e["event"] == "server_message")
        .await;
    assert_ne!(
        reply["capabilities"], 0,
        "first reply without server capabilities: {reply}"
    );
    assert_eq!(reply["uid"], uid.to_string(), "UID-06");
    let announced = agent.wait_event("server_custom_capabilities").await;
    assert_eq!(announced["capabilities"], json!([INTEROP_CAPABILITY]));

    if transport == Transport::WebSocket {
        // MSG-07: opamp-go says goodbye over WebSocket (over plain HTTP it
        // does not; the session ends when it goes stale).
        agent.stop().await;
        let gone = server
            .events
            .wait_for(
                "disconnect",
                |e| matches!(e, AgentEvent::Disconnected { uid: gone, .. } if *gone == uid),
            )
            .await;
        assert!(
            matches!(
                gone,
                AgentEvent::Disconnected {
                    reason: DisconnectReason::AgentDisconnect,
                    ..
                }
            ),
            "{gone:?}"
        );
    }
}

over_both_transports!(full_state_and_heartbeats(go):
    fn s1_full_state_merged_and_heartbeats_ws,
    fn s1_full_state_merged_and_heartbeats_http);

// ---------------------------------------------------------------- scenario 2

/// RCFG-03..08, HTTP-15: our offer reaches opamp-go (pushed, or with the
/// next poll), opamp-go computes the same config hash, applies it, and the
/// registry sees APPLIED with that hash and the new effective config.
async fn remote_config_applied(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid) = with_full_state(go, transport, &[]).await;

    let offered = config("collector.yaml", "exporters: {debug: {}}\n");
    let offer = offer_config(&server, uid, offered.clone()).await;
    let expected_delivery = match transport {
        Transport::WebSocket => Delivery::Sent,
        Transport::Http => Delivery::QueuedForPoll,
    };
    assert_eq!(offer.delivery, Some(expected_delivery));

    let seen = agent.wait_event("remote_config").await;
    assert_eq!(seen["hash"], hex(&offer.hash), "{seen}");
    assert_eq!(
        seen["computed_hash"],
        hex(&offer.hash),
        "opamp-go hashes the config differently: {seen}"
    );

    let state = config_outcome(&server, uid, &offer.hash).await;
    assert_eq!(state, RemoteConfigState::Applied);
    let record = server
        .wait_record("offered config in effect", uid, |r| {
            r.status
                .effective_config
                .as_ref()
                .and_then(|c| c.config_map.as_ref())
                == Some(&offered)
        })
        .await;
    assert_eq!(
        record.remote_config_state(),
        Some(RemoteConfigState::Applied)
    );
}

over_both_transports!(remote_config_applied(go):
    fn s2_remote_config_applied_ws,
    fn s2_remote_config_applied_http);

/// RCFG-07: a config opamp-go cannot apply is tracked as FAILED, with its
/// error message.
async fn remote_config_failure_reported(go: &GoPrograms) {
    let (server, _agent, uid) = with_full_state(go, Transport::WebSocket, &[]).await;

    let offer = offer_config(&server, uid, config("collector.yaml", "bad: FAIL_ME\n")).await;
    let state = config_outcome(&server, uid, &offer.hash).await;
    let RemoteConfigState::Failed { message } = state else {
        panic!("want FAILED, got {state:?}");
    };
    assert!(!message.is_empty(), "FAILED without an error message");
}

with_go!(remote_config_failure_reported: fn s2_remote_config_failure_reported_ws);

// ---------------------------------------------------------------- scenario 3

/// SEQ-05/06: after our server lost the agent's state, the agent's next
/// message (a WebSocket reconnect sends no full state in opamp-go, and a
/// poll never does) makes the registry ask for ReportFullState, and
/// opamp-go resends everything.
async fn full_state_after_state_loss(go: &GoPrograms, transport: Transport) {
    let mut server = OurServer::start().await;
    let (mut agent, uid) = start_agent(go, &server, transport, &[]).await;
    let first = server.wait_message("first message", uid, |_| true).await;
    server.wait_record("full state", uid, has_full_state).await;
    agent.drain();

    server.store.lose(uid);
    if transport == Transport::WebSocket {
        // A server restart also drops the connection: opamp-go reconnects
        // and carries on with only uid, sequence number and capabilities.
        let connection = server.registry().connection(uid).expect("connected");
        connection.disconnect();
    }

    let asked = agent.wait_for("ReportFullState", asks_full_state).await;
    assert_eq!(asked["uid"], uid.to_string());
    let resent = server
        .wait_message("full state resent", uid, |m| {
            m.sequence_num > first.sequence_num && is_full_state(m)
        })
        .await;
    assert!(resent.remote_config_status.is_some() || resent.custom_capabilities.is_some());
    let record = server
        .wait_record("full state again", uid, has_full_state)
        .await;
    assert_eq!(
        string_attribute(&record, "service.name").as_deref(),
        Some("goagent")
    );
}

over_both_transports!(full_state_after_state_loss(go):
    fn s3_full_state_resent_after_state_loss_ws,
    fn s3_full_state_resent_after_state_loss_http);

// ---------------------------------------------------------------- scenario 4

/// UID-05, UID-07, UID-08: opamp-go asks for a server-generated uid; our
/// registry assigns one, opamp-go adopts it, and later messages carry it
/// (and do not trigger another assignment).
async fn new_instance_uid(go: &GoPrograms, transport: Transport) {
    let mut server = OurServer::start().await;
    let (mut agent, uid) = start_agent(go, &server, transport, &["--request-uid"]).await;

    let new = reassigned_uid(&mut server, uid).await;
    assert_ne!(new, uid);

    let changed = agent.wait_event("instance_uid_changed").await;
    assert_eq!(changed["old_uid"], uid.to_string(), "{changed}");
    assert_eq!(changed["new_uid"], new.to_string(), "{changed}");

    let mut last = server
        .wait_message("message with the new uid", new, |_| true)
        .await;
    for _ in 0..2 {
        let next = last.sequence_num + 1;
        last = server
            .wait_message("later message with the new uid", new, |m| {
                m.sequence_num == next
            })
            .await;
    }
    assert!(
        server.registry().connected().contains(&new),
        "the agent is live under its new uid"
    );
    let record = server
        .wait_record("record under the new uid", new, has_full_state)
        .await;
    assert_eq!(record.uid, new);
    let again = server
        .events
        .drain()
        .into_iter()
        .filter(|e| matches!(e, AgentEvent::UidReassigned { .. }))
        .count();
    assert_eq!(
        again, 0,
        "the uid must be assigned once, not on every message"
    );
}

over_both_transports!(new_instance_uid(go):
    fn s4_new_instance_uid_adopted_ws,
    fn s4_new_instance_uid_adopted_http);

// ---------------------------------------------------------------- scenario 5

/// CMD-01/02, CUS-04..06: a restart command and a custom message reach
/// opamp-go (over HTTP both wait for the same poll: the command must still
/// travel alone and the custom message must not be lost), and opamp-go's
/// custom message reaches us.
async fn restart_and_custom_messages(go: &GoPrograms, transport: Transport) {
    let mut server = OurServer::start().await;
    let (mut agent, uid) = start_agent(go, &server, transport, &[]).await;
    server
        .wait_record("custom capabilities known", uid, |r| {
            r.status.custom_capabilities.is_some()
        })
        .await;

    let registry = server.registry().clone();
    registry.restart(uid).await.expect("restart accepted");
    let ping = CustomMessage {
        capability: INTEROP_CAPABILITY.into(),
        r#type: "ping".into(),
        data: "from opamp-rs".into(),
    };
    registry
        .send_custom_message(uid, ping)
        .await
        .expect("custom message accepted");

    let command = agent.wait_event("command").await;
    assert_eq!(command["type"], "Restart", "{command}");
    let with_command = agent
        .wait_for("the command on the wire", |e| {
            e["event"] == "server_message" && e["command"].is_string()
        })
        .await;
    assert!(
        with_command["custom_message"].is_null(),
        "CMD-02: a command travels alone: {with_command}"
    );
    let custom = agent.wait_event("custom_message").await;
    assert_eq!(custom["capability"], INTEROP_CAPABILITY);
    assert_eq!(custom["type"], "ping");
    assert_eq!(custom["data"], "from opamp-rs");

    agent
        .command(json!({"cmd": "send_custom_message", "type": "pong", "data": "from opamp-go"}))
        .await;
    let pong = server
        .wait_message("custom message from opamp-go", uid, |m| {
            m.custom_message.is_some()
        })
        .await
        .custom_message
        .expect("custom message");
    assert_eq!(pong.capability, INTEROP_CAPABILITY);
    assert_eq!(pong.r#type, "pong");
    assert_eq!(&pong.data[..], b"from opamp-go");
}

over_both_transports!(restart_and_custom_messages(go):
    fn s5_restart_and_custom_messages_ws,
    fn s5_restart_and_custom_messages_http);

/// CONN-06, WS-24, HTTP-21, CONN-04: our server answers the first attempt
/// with 401 and the second with 503 + `Retry-After: 2`; opamp-go comes back
/// no sooner than that and its full state ends up in the registry. Over
/// HTTP opamp-go drops the message refused with 401, so the registry has
/// to ask for the full state (SEQ-05).
async fn refused_then_back(go: &GoPrograms, transport: Transport) {
    let retry_after = Duration::from_secs(2);
    let mut server = OurServer::start_with(
        None,
        vec![Refuse::Unauthorized, Refuse::Unavailable { retry_after }],
    )
    .await;
    let (mut agent, uid) = start_agent(go, &server, transport, &[]).await;

    let unauthorized = agent.wait_event("http_status").await;
    assert_eq!(unauthorized["status"], 401, "{unauthorized}");
    let unavailable = agent.wait_event("http_status").await;
    assert_eq!(unavailable["status"], 503, "{unavailable}");
    assert_eq!(unavailable["retry_after"], "2", "{unavailable}");

    let first = server.attempts.wait_for("first attempt", |_| true).await;
    assert_eq!(first.refused, Some(Refuse::Unauthorized));
    let second = server.attempts.wait_for("second attempt", |_| true).await;
    assert_eq!(second.refused, Some(Refuse::Unavailable { retry_after }));
    let third = server.attempts.wait_for("third attempt", |_| true).await;
    assert_eq!(third.refused, None);
    assert_eq!(third.transport, transport.kind());
    // A lower bound only: a busy machine makes the gap longer, never shorter.
    let waited = third.at.duration_since(second.at);
    assert!(
        waited >= retry_after,
        "opamp-go came back after {waited:?}, before Retry-After"
    );

    let record = server.wait_record("full state", uid, has_full_state).await;
    assert_eq!(
        string_attribute(&record, "service.name").as_deref(),
        Some("goagent")
    );
    if transport == Transport::Http {
        agent
            .wait_for("ReportFullState after the lost message", asks_full_state)
            .await;
    }
}

over_both_transports!(refused_then_back(go):
    fn s5_refused_401_then_503_retry_after_ws,
    fn s5_refused_401_then_503_retry_after_http);

// ---------------------------------------------------------------- scenario 8

/// A config big and repetitive enough that gzip shrinks it (our server
/// compresses responses of 256 bytes and more).
fn big_config() -> AgentConfigMap {
    let body: String = (0..64)
        .map(|i| format!("  processor_{i}: {{batch: {{timeout: 1s}}}}\n"))
        .collect();
    config("collector.yaml", &format!("processors:\n{body}"))
}

/// HTTP-05/06/07: opamp-go gzips its requests (`--gzip`), our server
/// decodes them; our server gzips a large response because opamp-go
/// accepts gzip, and opamp-go decodes it.
async fn gzip_both_directions(go: &GoPrograms) {
    let mut server = OurServer::start().await;
    let (mut agent, uid) = start_agent(go, &server, Transport::Http, &["--gzip"]).await;

    let gzipped = server
        .attempts
        .wait_for("a gzipped request", |a| {
            a.content_encoding.as_deref() == Some("gzip")
        })
        .await;
    assert_eq!(gzipped.accept_encoding.as_deref(), Some("gzip"));
    server
        .wait_record("full state from gzipped requests", uid, has_full_state)
        .await;

    let offer = offer_config(&server, uid, big_config()).await;
    let on_wire = offer_on_wire(&mut agent, &offer).await;
    assert_eq!(
        on_wire["compressed"], true,
        "our response was not gzipped: {on_wire}"
    );
    let state = config_outcome(&server, uid, &offer.hash).await;
    assert_eq!(state, RemoteConfigState::Applied);
}

with_go!(gzip_both_directions: fn s8_gzip_both_directions_http);

/// WS-01: opamp-go offers permessage-deflate (`--gzip`); our server does
/// not negotiate it and the conversation goes on uncompressed.
async fn permessage_deflate_offer_declined(go: &GoPrograms) {
    let (server, mut agent, uid) = with_full_state(go, Transport::WebSocket, &["--gzip"]).await;
    let offer = offer_config(&server, uid, big_config()).await;
    let on_wire = offer_on_wire(&mut agent, &offer).await;
    assert_eq!(on_wire["compressed"], false, "{on_wire}");
    let state = config_outcome(&server, uid, &offer.hash).await;
    assert_eq!(state, RemoteConfigState::Applied);
}

with_go!(permessage_deflate_offer_declined: fn s8_permessage_deflate_offer_declined_ws);

/// TLS with an rcgen CA that opamp-go trusts (`--ca-file`): full state and
/// a remote config round trip over `wss://` and `https://`.
async fn tls(go: &GoPrograms, transport: Transport) {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = pki.write(dir.path());
    let mut server = OurServer::start_with(Some(pki.server_tls()), Vec::new()).await;
    assert!(server.url(transport).starts_with(transport.scheme(true)));
    let ca = files.ca.to_string_lossy().into_owned();
    let (_agent, uid) = start_agent(go, &server, transport, &["--ca-file", &ca]).await;
    server
        .wait_record("full state over TLS", uid, has_full_state)
        .await;

    let offer = offer_config(&server, uid, config("tls.yaml", "tls: true\n")).await;
    let state = config_outcome(&server, uid, &offer.hash).await;
    assert_eq!(state, RemoteConfigState::Applied);
}

over_both_transports!(tls(go):
    fn s8_tls_ws,
    fn s8_tls_http);

// ------------------------------------------------- beyond the list

/// UID-09: a second opamp-go agent with a uid that is live on another
/// connection gets a new uid from our registry and adopts it; the first
/// keeps its own.
async fn duplicate_uid_gets_new_uid(go: &GoPrograms) {
    let (mut server, _first, uid) = with_full_state(go, Transport::WebSocket, &[]).await;

    let uid_text = uid.to_string();
    let (mut twin, twin_uid) =
        start_agent(go, &server, Transport::WebSocket, &["--uid", &uid_text]).await;
    assert_eq!(twin_uid, uid);
    let new = reassigned_uid(&mut server, uid).await;
    let changed = twin.wait_event("instance_uid_changed").await;
    assert_eq!(changed["new_uid"], new.to_string(), "{changed}");
    server
        .wait_message("message with the new uid", new, |_| true)
        .await;
    let connected = server.registry().connected();
    assert!(
        connected.contains(&uid) && connected.contains(&new),
        "{connected:?}"
    );
}

with_go!(duplicate_uid_gets_new_uid: fn uid_duplicate_gets_new_uid_ws);

/// PKG-01..08, PKG-12, PKG-14: our registry offers a package (served by a
/// small HTTP server); opamp-go downloads it, goagent checks its SHA-256,
/// and the registry records Installed with the offered hashes.
async fn package_offered_to_go_agent(go: &GoPrograms, transport: Transport) {
    let content = Bytes::from_static(b"a package for opamp-go\n");
    let mut file = StaticFile::serve("tool.bin", content.clone()).await;
    let (mut server, mut agent, uid) = with_full_state(go, transport, &[]).await;

    let package_hash = Bytes::from(Sha256::digest(b"tool 1.2.3").to_vec());
    let mut offer = PackagesAvailable::default();
    offer.packages.insert(
        "tool".into(),
        PackageAvailable {
            r#type: PackageType::TopLevel as i32,
            version: "1.2.3".into(),
            file: Some(DownloadableFile {
                download_url: file.url.clone(),
                content_hash: Bytes::from(Sha256::digest(&content).to_vec()),
                ..Default::default()
            }),
            hash: package_hash.clone(),
        },
    );
    let offered = server
        .registry()
        .offer_packages(uid, offer)
        .await
        .expect("agent accepts packages");

    let request = file.requests.wait_for("download", |_| true).await;
    assert!(request.starts_with("GET /tool.bin "), "{request}");
    let downloaded = agent.wait_event("package_content").await;
    assert_eq!(downloaded["name"], "tool", "{downloaded}");
    assert_eq!(downloaded["verified"], true, "{downloaded}");
    let record = server
        .wait_record("package installed", uid, |r| {
            r.status
                .package_statuses
                .as_ref()
                .and_then(|s| s.packages.get("tool"))
                .is_some_and(|p| p.status() == PackageStatusEnum::Installed)
        })
        .await;
    let statuses = record.status.package_statuses.as_ref().expect("statuses");
    assert_eq!(statuses.server_provided_all_packages_hash, offered.hash);
    let tool = &statuses.packages["tool"];
    assert_eq!(tool.agent_has_hash, package_hash);
    assert_eq!(tool.agent_has_version, "1.2.3");
}

over_both_transports!(package_offered_to_go_agent(go):
    fn pkg_offered_to_go_agent_ws,
    fn pkg_offered_to_go_agent_http);

/// CS-02, CS-07..11, HB-03: our registry offers OpAMP connection settings
/// with a heartbeat interval; opamp-go takes them and reports APPLIED with
/// the offer's hash, which the registry records.
async fn connection_settings_to_go_agent(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid) = with_full_state(go, transport, &[]).await;

    let offers = ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings {
            heartbeat_interval_seconds: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let offer = server
        .registry()
        .offer_connection_settings(uid, offers)
        .await
        .expect("agent accepts OpAMP connection settings");
    let taken = agent.wait_event("opamp_connection_settings").await;
    assert_eq!(taken["heartbeat_interval_seconds"], 1, "{taken}");
    server
        .wait_record("connection settings APPLIED", uid, |r| {
            r.status
                .connection_settings_status
                .as_ref()
                .is_some_and(|s| {
                    s.last_connection_settings_hash == offer.hash
                        && s.status() == ConnectionSettingsStatuses::Applied
                })
        })
        .await;
}

over_both_transports!(connection_settings_to_go_agent(go):
    fn cs_heartbeat_offer_applied_by_go_agent_ws,
    fn cs_heartbeat_offer_applied_by_go_agent_http);
