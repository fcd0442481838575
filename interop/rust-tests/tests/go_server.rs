//! Our client (`OpampClient`) → opamp-go server (`goserver`).
//!
//! Scenarios 6–8 of issue 6, the client's side of scenarios 3 and 4, and a
//! WebSocket reconnect; each over WebSocket and plain HTTP unless the name
//! says otherwise. See `interop/MATRIX.md`.

use std::time::Duration;

use opamp_client::proto::{
    CommandType, ComponentHealth, CustomMessage, ServerCapabilities, ServerErrorResponseType,
    ServerToAgentFlags, config_hash,
};
use opamp_interop_tests::{
    ClientEvent, GoProcess, GoPrograms, INTEROP_CAPABILITY, OurAgent, TestPki, Transport,
    agent_capabilities, hex, next_client_event, over_both_transports, with_go,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Our client's heartbeat (and HTTP polling) interval where the scenario
/// does not care: short, so HTTP polls pick up queued offers quickly.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// Long enough that no heartbeat or poll happens during a test on its own.
const NEVER: Duration = Duration::from_secs(3600);

fn url(listening: &Value, transport: Transport) -> String {
    let key = match transport {
        Transport::WebSocket => "ws_url",
        Transport::Http => "http_url",
    };
    listening[key]
        .as_str()
        .unwrap_or_else(|| panic!("goserver announced no {key}: {listening}"))
        .to_owned()
}

async fn goserver(go: &GoPrograms, args: &[&str]) -> (GoProcess, Value) {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    GoProcess::goserver(go, &args).await
}

/// Matches goserver's `message` events from `uid`.
fn message_from<'a>(
    uid: &'a str,
    mut matches: impl FnMut(&Value) -> bool + 'a,
) -> impl FnMut(&Value) -> bool + 'a {
    move |event| event["event"] == "message" && event["uid"] == uid && matches(event)
}

/// Starts goserver and our agent; returns them once goserver has seen the
/// agent's first message (also returned).
async fn connect(
    go: &GoPrograms,
    transport: Transport,
    heartbeat: Duration,
) -> (GoProcess, OurAgent, String, Value) {
    let (mut server, listening) = goserver(go, &[]).await;
    let agent = OurAgent::new(&url(&listening, transport), heartbeat);
    agent.start().await;
    let uid = agent.client.instance_uid().to_string();
    let first = server.wait_message("first message", &uid, |_| true).await;
    (server, agent, uid, first)
}

/// Has goserver offer `uid` a remote config of one file with `body`;
/// returns the config hash.
async fn offer_remote_config(server: &mut GoProcess, uid: &str, body: &str) -> String {
    let offer = json!({"cmd": "offer_remote_config", "to": uid, "body": body});
    server.command_str(offer, "hash").await
}

fn poke(agent: &OurAgent, status: &str) {
    agent.client.set_health(ComponentHealth {
        healthy: true,
        status: status.into(),
        ..Default::default()
    });
}

// ---------------------------------------------------------------- scenario 6

/// STS-01, CAP-01/07, CUS-01: the first message carries the full state as
/// opamp-go decodes it; opamp-go's server capabilities and custom
/// capabilities reach us.
async fn full_state(go: &GoPrograms, transport: Transport) {
    let (_server, mut agent, uid, first) = connect(go, transport, HEARTBEAT).await;

    assert_eq!(first["seq"], 0, "{first}");
    assert_eq!(
        first["transport"],
        match transport {
            Transport::WebSocket => "ws",
            Transport::Http => "http",
        }
    );
    assert_eq!(
        first["capabilities"],
        agent_capabilities().bits(),
        "{first}"
    );
    let identifying = &first["description"]["identifying"];
    assert_eq!(
        identifying["service.name"],
        OurAgent::SERVICE_NAME,
        "{first}"
    );
    assert_eq!(
        first["description"]["non_identifying"]["os.type"], "linux",
        "{first}"
    );
    assert_eq!(first["health"]["healthy"], true, "{first}");
    assert_eq!(first["health"]["status"], "running", "{first}");
    assert_eq!(
        first["effective_config"]["files"]["agent.yaml"]["body"], "receivers: {}\n",
        "{first}"
    );
    assert_eq!(
        first["custom_capabilities"],
        json!([INTEROP_CAPABILITY]),
        "{first}"
    );
    assert!(
        first["remote_config_status"].is_object(),
        "RCFG-06: UNSET status expected: {first}"
    );

    let announced = next_client_event!(
        agent,
        "server custom capabilities",
        ClientEvent::ServerCustomCapabilities
    );
    assert_eq!(announced.capabilities, [INTEROP_CAPABILITY]);
    // goserver announces 63 = AcceptsStatus ..= OffersConnectionSettings.
    let server_caps = agent
        .client
        .server_capabilities()
        .expect("known after the first reply");
    assert!(
        server_caps.contains(
            ServerCapabilities::OFFERS_REMOTE_CONFIG | ServerCapabilities::OFFERS_PACKAGES
        )
    );
    assert_eq!(agent.client.instance_uid().to_string(), uid);
}

over_both_transports!(full_state(go):
    fn s6_full_state_to_go_server_ws,
    fn s6_full_state_to_go_server_http);

/// RCFG-05/06: opamp-go's offer arrives with the hash our `config_hash`
/// computes; we apply it and report APPLIED with that hash and the new
/// effective config. Offered again, the applied config is not handed to the
/// agent a second time.
async fn remote_config_applied(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid, _) = connect(go, transport, HEARTBEAT).await;

    let offer = json!({"cmd": "offer_remote_config", "to": uid, "name": "collector.yaml",
        "body": "exporters: {debug: {}}\n", "content_type": "text/yaml"});
    let hash = server.command_str(offer.clone(), "hash").await;

    let received = next_client_event!(agent, "remote config", ClientEvent::RemoteConfig);
    assert_eq!(hex(&received.config_hash), hash);
    let config = received.config.as_ref().expect("config map");
    assert_eq!(
        hex(&config_hash(config)),
        hash,
        "opamp-go and opamp-proto hash configs alike"
    );

    let applied = server
        .wait_message("APPLIED", &uid, |m| {
            m["remote_config_status"]["status"] == "APPLIED"
        })
        .await;
    assert_eq!(
        applied["remote_config_status"]["hash"],
        hash.as_str(),
        "{applied}"
    );
    // The new effective config comes with the status or right after it.
    let effective = if applied["effective_config"].is_object() {
        applied
    } else {
        server
            .wait_message("new effective config", &uid, |m| {
                m["effective_config"].is_object()
            })
            .await
    };
    assert_eq!(
        effective["effective_config"]["hash"],
        hash.as_str(),
        "{effective}"
    );

    // The same offer again: delivered, but not applied again. A different
    // offer after it is the next one the agent sees.
    server.command(offer).await;
    server
        .wait_for("the repeated offer on the wire", |e| {
            e["event"] == "sent" && e["remote_config"]["hash"] == hash.as_str()
        })
        .await;
    let other = offer_remote_config(&mut server, &uid, "exporters: {otlp: {}}\n").await;
    let next = next_client_event!(agent, "next remote config", ClientEvent::RemoteConfig);
    assert_eq!(
        hex(&next.config_hash),
        other,
        "the applied config was handed over again"
    );
}

over_both_transports!(remote_config_applied(go):
    fn s6_remote_config_applied_and_acknowledged_ws,
    fn s6_remote_config_applied_and_acknowledged_http);

/// HB-03, HTTP-14, CS-05..08: our client is configured with a one-hour
/// heartbeat; opamp-go offers 1 s in the OpAMP connection settings. The
/// client verifies the settings by reconnecting, reports APPLIED, and from
/// then on heartbeats (polls) keep arriving, at most about one per second.
async fn heartbeat_from_connection_settings(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid, _) = connect(go, transport, NEVER).await;

    // Every heartbeat counted below is sent after this instant.
    let offered_at = Instant::now();
    let hash = server
        .command_str(
            json!({"cmd": "offer_connection_settings", "to": uid, "heartbeat_interval_seconds": 1}),
            "hash",
        )
        .await;
    if transport == Transport::Http {
        // Queued until the agent's next request; the agent polls once an hour.
        poke(&agent, "poke");
    }
    let settings = next_client_event!(agent, "OpAMP settings offer", ClientEvent::OpampSettings);
    assert_eq!(settings.heartbeat_interval_seconds, 1);
    let outcome = agent
        .wait_for("settings verified", |e| {
            matches!(e, ClientEvent::OpampSettingsOutcome(_))
        })
        .await;
    assert!(
        matches!(outcome, ClientEvent::OpampSettingsOutcome(Ok(()))),
        "{outcome:?}"
    );
    let applied = |event: &Value| {
        event["event"] == "message"
            && event["uid"] == uid.as_str()
            && event["connection_settings_status"]["status"] == "APPLIED"
            && event["connection_settings_status"]["hash"] == hash.as_str()
    };

    // Without the offer nothing would arrive for an hour. Events come in
    // order, so only messages after the APPLIED report are counted.
    const HEARTBEATS: usize = 3;
    let from_agent = |event: &Value| event["event"] == "message" && event["uid"] == uid.as_str();
    let mut heartbeats = AfterMarker::new(applied, from_agent);
    server
        .wait_for("heartbeats after APPLIED", |event| {
            heartbeats.observe(event) && heartbeats.count() == HEARTBEATS
        })
        .await;
    // The last heartbeat was consumed above; the others are still queued.
    let mut later = AfterMarker::new(applied, from_agent);
    let sent = 1 + server
        .drain()
        .iter()
        .filter(|event| later.observe(event))
        .count();
    // Measured after everything counted had arrived. An upper bound only (a
    // busy machine sends fewer, never more): about one per second since
    // the offer, plus a status report and a rounding margin.
    let window = offered_at.elapsed();
    let allowed = window.as_secs() as usize + 2;
    assert!(
        (HEARTBEATS..=allowed).contains(&sent),
        "{sent} messages after APPLIED within {window:?}: the 1 s interval is not honoured"
    );
}

/// Follows an event stream in order: after the first event matching the
/// marker, counts the events matching `counts`.
struct AfterMarker<M, C> {
    is_marker: M,
    counts: C,
    seen: bool,
    after: usize,
}

impl<M: FnMut(&Value) -> bool, C: FnMut(&Value) -> bool> AfterMarker<M, C> {
    fn new(is_marker: M, counts: C) -> Self {
        Self {
            is_marker,
            counts,
            seen: false,
            after: 0,
        }
    }

    /// Whether `event` is a counted event after the marker.
    fn observe(&mut self, event: &Value) -> bool {
        if !self.seen {
            self.seen = (self.is_marker)(event);
            return false;
        }
        let counted = (self.counts)(event);
        self.after += usize::from(counted);
        counted
    }

    fn count(&self) -> usize {
        self.after
    }
}

over_both_transports!(heartbeat_from_connection_settings(go):
    fn s6_heartbeat_interval_from_connection_settings_ws,
    fn s6_heartbeat_interval_from_connection_settings_http);

/// PKG-01..08, PKG-16: opamp-go's package offer is downloaded from its file
/// server (with the offered download headers, without which it answers
/// 403), checked against the SHA-256 `content_hash`, installed and
/// reported Installed with the offered hash; a download whose content does
/// not match `content_hash` is refused and reported InstallFailed, and the
/// installed package stays.
async fn package_verified(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid, _) = connect(go, transport, HEARTBEAT).await;
    let content = "opamp-rs interop package\n";

    let offer = server
        .command(
            json!({"cmd": "offer_package", "to": uid, "name": "tool", "version": "1.2.3",
            "content": content, "headers": {"X-Package-Token": "interop"}}),
        )
        .await;
    let installed = next_client_event!(
        agent,
        "package installed",
        ClientEvent::PackageInstalled { name, version } => (name.clone(), version.clone())
    );
    assert_eq!(installed, ("tool".to_owned(), "1.2.3".to_owned()));
    let stored = agent.packages.content("tool").expect("installed content");
    assert_eq!(&stored[..], content.as_bytes());
    assert_eq!(
        hex(&Sha256::digest(&stored)),
        offer["content_sha256"].as_str().expect("sha256")
    );
    let download = server.wait_event("package_download").await;
    assert_eq!(download["status"], 200, "{download}");

    let reported = server
        .wait_message("Installed status", &uid, |m| {
            m["package_statuses"]["packages"]["tool"]["status"] == "Installed"
        })
        .await;
    let statuses = &reported["package_statuses"];
    assert_eq!(
        statuses["all_packages_hash"], offer["all_packages_hash"],
        "{reported}"
    );
    assert_eq!(
        statuses["packages"]["tool"]["agent_has_version"], "1.2.3",
        "{reported}"
    );
    assert_eq!(
        statuses["packages"]["tool"]["agent_has_hash"], offer["package_hash"],
        "{reported}"
    );

    // Tampered: the announced content_hash does not match the file.
    server
        .command(
            json!({"cmd": "offer_package", "to": uid, "name": "tool", "version": "2.0.0",
            "content": "tampered", "wrong_hash": true}),
        )
        .await;
    let (name, error) = next_client_event!(
        agent,
        "package refused",
        ClientEvent::PackageFailed { name, error } => (name.clone(), error.clone())
    );
    assert_eq!(name, "tool", "{error}");
    let reported = server
        .wait_message("InstallFailed status", &uid, |m| {
            m["package_statuses"]["packages"]["tool"]["status"] == "InstallFailed"
        })
        .await;
    let tool = &reported["package_statuses"]["packages"]["tool"];
    assert_ne!(
        tool["error"], "",
        "InstallFailed without an error message: {reported}"
    );
    assert_eq!(tool["server_offered_version"], "2.0.0", "{reported}");
    let kept = agent.packages.content("tool").expect("old content kept");
    assert_eq!(
        &kept[..],
        content.as_bytes(),
        "a refused download replaced the package"
    );
}

over_both_transports!(package_verified(go):
    fn s6_package_downloaded_and_sha256_verified_ws,
    fn s6_package_downloaded_and_sha256_verified_http);

/// CMD-01/03, CUS-04..06: opamp-go's restart command and custom message
/// reach us; our custom message reaches opamp-go.
async fn restart_and_custom_messages(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid, _) = connect(go, transport, HEARTBEAT).await;

    server.command(json!({"cmd": "restart", "to": uid})).await;
    let command = next_client_event!(agent, "restart command", ClientEvent::Command);
    assert_eq!(command.r#type(), CommandType::Restart);

    server
        .command(
            json!({"cmd": "custom_message", "to": uid, "type": "ping", "data": "from opamp-go"}),
        )
        .await;
    let custom = next_client_event!(agent, "custom message", ClientEvent::CustomMessage);
    assert_eq!(custom.capability, INTEROP_CAPABILITY);
    assert_eq!(custom.r#type, "ping");
    assert_eq!(&custom.data[..], b"from opamp-go");

    agent
        .client
        .send_custom_message(CustomMessage {
            capability: INTEROP_CAPABILITY.into(),
            r#type: "pong".into(),
            data: "from opamp-rs".into(),
        })
        .expect("no custom message pending");
    let pong = server
        .wait_message("custom message from us", &uid, |m| {
            m["custom_message"].is_object()
        })
        .await;
    let pong = &pong["custom_message"];
    assert_eq!(pong["capability"], INTEROP_CAPABILITY);
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["data"], "from opamp-rs");
}

over_both_transports!(restart_and_custom_messages(go):
    fn s6_restart_and_custom_messages_ws,
    fn s6_restart_and_custom_messages_http);

/// SEQ-06 (client side of scenario 3): opamp-go's ReportFullState makes us
/// resend description, health and effective config.
async fn full_state_on_request(go: &GoPrograms, transport: Transport) {
    let (mut server, _agent, uid, _) = connect(go, transport, HEARTBEAT).await;
    server
        .command(json!({"cmd": "report_full_state", "to": uid}))
        .await;
    // Events come in order: the first message after the flag went out.
    let asked = |event: &Value| {
        event["event"] == "sent"
            && event["flags"].as_u64().unwrap_or(0) & ServerToAgentFlags::REPORT_FULL_STATE.bits()
                != 0
    };
    let mut after_flag = AfterMarker::new(asked, message_from(&uid, |_| true));
    let resent = server
        .wait_for("full state resent", |event| {
            after_flag.observe(event) && event["description"].is_object()
        })
        .await;
    assert!(resent["health"].is_object(), "{resent}");
    assert!(resent["effective_config"].is_object(), "{resent}");
    assert!(resent["remote_config_status"].is_object(), "{resent}");
    assert!(resent["custom_capabilities"].is_array(), "{resent}");
}

over_both_transports!(full_state_on_request(go):
    fn s3_client_resends_full_state_on_request_ws,
    fn s3_client_resends_full_state_on_request_http);

/// UID-08 (client side of scenario 4): opamp-go assigns a new uid; we adopt
/// it and every later message carries it.
async fn adopts_new_instance_uid(go: &GoPrograms, transport: Transport) {
    let (mut server, mut agent, uid, _) = connect(go, transport, HEARTBEAT).await;
    let ack = server
        .command(json!({"cmd": "new_instance_uid", "to": uid}))
        .await;
    let new_uid = ack["targets"][0]["new_uid"]
        .as_str()
        .expect("new uid")
        .to_owned();

    let adopted = next_client_event!(agent, "new uid", ClientEvent::NewInstanceUid);
    assert_eq!(adopted.to_string(), new_uid);
    assert_eq!(agent.client.instance_uid(), adopted);
    let event = server.wait_event("uid_adopted").await;
    assert_eq!(event["old_uid"], uid.as_str(), "{event}");
    assert_eq!(event["new_uid"], new_uid.as_str(), "{event}");
    let first = server
        .wait_message("message with the new uid", &new_uid, |_| true)
        .await;
    let next = first["seq"].as_u64().expect("seq") + 1;
    server
        .wait_message("later message with the new uid", &new_uid, |m| {
            m["seq"] == next
        })
        .await;
}

over_both_transports!(adopts_new_instance_uid(go):
    fn s4_client_adopts_new_instance_uid_ws,
    fn s4_client_adopts_new_instance_uid_http);

// ---------------------------------------------------------------- scenario 7

/// Has opamp-go answer `uid`'s next message with UNAVAILABLE and a
/// `retry_info` of `retry_after`, makes the agent send one (a health change
/// to `status`), and waits for the error callback. Returns the instant
/// before the command: the error cannot have gone out earlier.
async fn answer_unavailable(
    server: &mut GoProcess,
    agent: &mut OurAgent,
    uid: &str,
    retry_after: Duration,
    status: &str,
) -> Instant {
    let asked_at = Instant::now();
    server
        .command(json!({"cmd": "unavailable", "to": uid, "message": "busy",
            "retry_after_ns": retry_after.as_nanos() as u64}))
        .await;
    poke(agent, status);
    let error = next_client_event!(agent, "UNAVAILABLE", ClientEvent::ErrorResponse);
    assert_eq!(error.r#type(), ServerErrorResponseType::Unavailable);
    asked_at
}

/// WS-23, ERR-07: opamp-go answers with UNAVAILABLE and `retry_info` of
/// 2 s; we say goodbye, close, wait at least that long, reconnect and send
/// the full state.
async fn unavailable_retry_info_waits_and_reconnects(go: &GoPrograms) {
    let (mut server, mut agent, uid, _) = connect(go, Transport::WebSocket, NEVER).await;
    server.wait_event("connected").await;
    let retry_after = Duration::from_secs(2);
    let asked_at = answer_unavailable(&mut server, &mut agent, &uid, retry_after, "poke").await;
    server
        .wait_message("goodbye", &uid, |m| m["agent_disconnect"] == true)
        .await;
    server.wait_event("disconnected").await;
    server.wait_event("connected").await;
    // A lower bound only: a busy machine makes the gap longer, never shorter.
    let waited = asked_at.elapsed();
    assert!(
        waited >= retry_after,
        "reconnected after {waited:?}, before retry_info"
    );
    let back = server
        .wait_message("full state after reconnecting", &uid, |m| {
            m["description"].is_object()
        })
        .await;
    assert!(
        back["health"].is_object() && back["effective_config"].is_object(),
        "{back}"
    );
}

with_go!(unavailable_retry_info_waits_and_reconnects: fn s7_unavailable_retry_info_waits_and_reconnects_ws);

/// ERR-04, ERR-07 over plain HTTP: UNAVAILABLE with `retry_info` of 2 s;
/// nothing is sent before that, and a health change made meanwhile (or
/// answered by the error) arrives after it.
async fn unavailable_retry_info_waits(go: &GoPrograms) {
    let (mut server, mut agent, uid, _) = connect(go, Transport::Http, HEARTBEAT).await;
    let retry_after = Duration::from_secs(2);
    let asked_at = answer_unavailable(&mut server, &mut agent, &uid, retry_after, "degraded").await;
    // Events come in order: the first message after the error went out.
    let mut answered = false;
    let back = server
        .wait_for("the first message after the error", |e| {
            if e["event"] == "sent" && e["error_response"].is_object() {
                answered = true;
            }
            answered && e["event"] == "message" && e["uid"] == uid.as_str()
        })
        .await;
    // A lower bound only: a busy machine makes the gap longer, never shorter.
    let waited = asked_at.elapsed();
    assert!(
        waited >= retry_after,
        "sent again after {waited:?}, before retry_info: {back}"
    );
    // Whether the error answered the health change or a poll just before
    // it, the change was kept for this message.
    assert_eq!(back["health"]["status"], "degraded", "{back}");
}

with_go!(unavailable_retry_info_waits: fn s7_unavailable_retry_info_waits_http);

/// WS-24, HTTP-21, CONN-04: opamp-go refuses with 503 and `Retry-After: 2`;
/// we wait at least that long before trying again. Over HTTP the refused
/// content (a health change) is kept and arrives with the retry.
async fn unavailable_503_retry_after(go: &GoPrograms, transport: Transport) {
    let retry_after = Duration::from_secs(2);
    let refuse = json!({"cmd": "refuse", "count": 1, "status": 503, "retry_after": "2"});
    match transport {
        Transport::WebSocket => {
            let (mut server, listening) = goserver(go, &[]).await;
            server.command(refuse).await;
            let mut agent = OurAgent::new(&url(&listening, transport), NEVER);
            let started_at = Instant::now();
            agent.start().await;
            let refused = server.wait_event("refused").await;
            assert_eq!(
                (refused["transport"].as_str(), refused["status"].as_u64()),
                (Some("ws"), Some(503))
            );
            let failed = agent
                .wait_for("connect failed", |e| {
                    matches!(e, ClientEvent::ConnectFailed(_))
                })
                .await;
            assert!(format!("{failed:?}").contains("503"), "{failed:?}");
            server.wait_event("connected").await;
            let waited = started_at.elapsed();
            assert!(
                waited >= retry_after,
                "reconnected after {waited:?}, before Retry-After"
            );
            let uid = agent.client.instance_uid().to_string();
            server
                .wait_message("full state", &uid, |m| m["description"].is_object())
                .await;
        }
        Transport::Http => {
            let (mut server, mut agent, uid, _) = connect(go, transport, HEARTBEAT).await;
            let asked_at = Instant::now();
            server.command(refuse).await;
            poke(&agent, "degraded");
            server.wait_event("refused").await;
            let failed = agent
                .wait_for("request failed", |e| {
                    matches!(e, ClientEvent::ConnectFailed(_))
                })
                .await;
            assert!(format!("{failed:?}").contains("503"), "{failed:?}");
            let back = server
                .wait_message("the health change after the refusal", &uid, |m| {
                    m["health"]["status"] == "degraded"
                })
                .await;
            let waited = asked_at.elapsed();
            assert!(
                waited >= retry_after,
                "retried after {waited:?}, before Retry-After: {back}"
            );
        }
    }
}

over_both_transports!(unavailable_503_retry_after(go):
    fn s7_503_retry_after_honoured_ws,
    fn s7_503_retry_after_honoured_http);

/// WS-19, SEQ-01, STS-01: opamp-go's server drops our WebSocket; we
/// reconnect at once (the first retry has no backoff) and go on with the
/// next sequence number. Heartbeats are off, so the message after the
/// reconnect is the status report every new connection starts with.
async fn reconnect_after_server_disconnect(go: &GoPrograms) {
    let (mut server, _agent, uid, first) = connect(go, Transport::WebSocket, NEVER).await;
    server.wait_event("connected").await;
    let ack = server
        .command(json!({"cmd": "disconnect", "to": uid}))
        .await;
    assert_eq!(ack["uids"], json!([uid]), "{ack}");
    server.wait_event("disconnected").await;
    server.wait_event("connected").await;
    let next = first["seq"].as_u64().expect("seq") + 1;
    let back = server
        .wait_message("first message on the new connection", &uid, |_| true)
        .await;
    assert_eq!(back["seq"], next, "{back}");
}

with_go!(reconnect_after_server_disconnect: fn ws_reconnect_after_server_disconnect_ws);

// ---------------------------------------------------------------- scenario 8

/// HTTP-05/07: we gzip request bodies (opamp-go decodes them) and accept
/// gzip with exactly `Accept-Encoding: gzip`, the only form opamp-go
/// v0.23.0 recognises, so its responses come gzipped and we decode them (a
/// large offer makes sure there is something to compress).
async fn gzip_both_directions(go: &GoPrograms) {
    let (mut server, listening) = goserver(go, &[]).await;
    let (builder, events, packages) =
        OurAgent::builder(&url(&listening, Transport::Http), HEARTBEAT);
    let mut agent = OurAgent::build(builder.compression(true), events, packages);
    agent.start().await;
    let uid = agent.client.instance_uid().to_string();

    let first = server.wait_message("first message", &uid, |_| true).await;
    assert_eq!(first["http_headers"]["Content-Encoding"], "gzip", "{first}");
    assert_eq!(first["http_headers"]["Accept-Encoding"], "gzip", "{first}");
    assert!(first["description"].is_object(), "{first}");

    let body: String = (0..64)
        .map(|i| format!("  processor_{i}: {{batch: {{}}}}\n"))
        .collect();
    let hash = offer_remote_config(&mut server, &uid, &format!("processors:\n{body}")).await;
    let received = next_client_event!(agent, "remote config", ClientEvent::RemoteConfig);
    assert_eq!(hex(&received.config_hash), hash);
    server
        .wait_message("APPLIED", &uid, |m| {
            m["remote_config_status"]["status"] == "APPLIED"
                && m["http_headers"]["Content-Encoding"] == "gzip"
        })
        .await;
}

with_go!(gzip_both_directions: fn s8_gzip_both_directions_http);

/// TLS with an rcgen certificate served by opamp-go (OpAMP endpoint and
/// package file server); we trust its CA.
async fn tls(go: &GoPrograms, transport: Transport) {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = pki.write(dir.path());
    let cert = files.cert.to_string_lossy().into_owned();
    let key = files.key.to_string_lossy().into_owned();
    let (mut server, listening) =
        goserver(go, &["--cert", &cert, "--key", &key, "--file-tls"]).await;
    assert_eq!(listening["tls"], true, "{listening}");
    assert!(
        listening["file_server_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{listening}"
    );
    let endpoint = url(&listening, transport);
    assert!(endpoint.starts_with(transport.scheme(true)), "{endpoint}");
    let (builder, events, packages) = OurAgent::builder(&endpoint, HEARTBEAT);
    let mut agent = OurAgent::build(builder.tls(pki.client_tls()), events, packages);
    agent.start().await;
    let uid = agent.client.instance_uid().to_string();
    server
        .wait_message("full state over TLS", &uid, |m| {
            m["description"].is_object()
        })
        .await;

    let hash = offer_remote_config(&mut server, &uid, "tls: true\n").await;
    agent
        .wait_for("remote config", |e| {
            matches!(e, ClientEvent::RemoteConfig(_))
        })
        .await;
    let applied = server
        .wait_message("APPLIED", &uid, |m| {
            m["remote_config_status"]["status"] == "APPLIED"
        })
        .await;
    assert_eq!(applied["remote_config_status"]["hash"], hash.as_str());

    // Package downloads use the same TLS settings (the CA we trust).
    server
        .command(json!({"cmd": "offer_package", "to": uid, "name": "tool", "version": "1.0.0", "content": "over tls"}))
        .await;
    let installed = agent
        .wait_for("package installed", |e| {
            matches!(
                e,
                ClientEvent::PackageInstalled { .. } | ClientEvent::PackageFailed { .. }
            )
        })
        .await;
    assert!(
        matches!(installed, ClientEvent::PackageInstalled { .. }),
        "{installed:?}"
    );
    assert_eq!(
        agent.packages.content("tool").as_deref(),
        Some(&b"over tls"[..])
    );
}

over_both_transports!(tls(go):
    fn s8_tls_ws,
    fn s8_tls_http);
