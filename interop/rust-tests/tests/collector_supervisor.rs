//! The OpenTelemetry Collector's `opampsupervisor` (v0.149.0, running a
//! minimal Collector with the OpAMP extension) against the example fleet
//! server run as a process, driven through the server's JSON API (issue 15).
//! Scenarios are listed in `interop/MATRIX.md`.
//!
//! The supervisor is started with a fixed `instance_id`, `validate_config`
//! on, `config_apply_timeout` 5 s and the Collector's own metrics off (no
//! 127.0.0.1:8888, so the tests run side by side).

use std::time::Duration;

use opamp_interop_tests::{
    CollectorPrograms, FleetServerProcess, OtlpSink, SupervisorProcess, SupervisorSettings,
    TIMEOUT, TestPki, assert_available_component, assert_capabilities, assert_description,
    collector_programs, connected_events_after, effective_body, free_port, has_capability,
    latest_event_time, otlp_pipeline_config, otlp_receiver_answers, wait_otlp_receiver,
};
use serde_json::{Value, json};
use tokio::time::Instant;

const FLEET_SERVER: &str = env!("CARGO_BIN_EXE_fleet-server");

/// Plain HTTP: the supervisor's opamp-go client polls every 30 s (the
/// supervisor has no setting for it), so anything the server pushes waits
/// up to one poll.
const HTTP_PATIENCE: Duration = Duration::from_secs(120);

/// A config the Collector rejects: its receiver type does not exist.
const UNKNOWN_RECEIVER_CONFIG: &str = "receivers:\n  nosuchreceiver: {}\nexporters:\n  debug: {}\n\
    service:\n  pipelines:\n    traces:\n      receivers: [nosuchreceiver]\n      exporters: [debug]\n";

async fn fleet(args: &[String]) -> FleetServerProcess {
    FleetServerProcess::start(FLEET_SERVER.as_ref(), args).await
}

/// Puts `body` as the agent's own config (file `collector.yaml`); returns
/// the config hash the server computed.
async fn push_config(server: &FleetServerProcess, uid: &str, body: &str) -> String {
    server.put_config(uid, "collector.yaml", body).await
}

/// Waits until the agent reports `status` for `hash` (RCFG status as the
/// server recorded it) and returns the agent.
async fn wait_config_status(
    server: &FleetServerProcess,
    uid: &str,
    hash: &str,
    status: &str,
    patience: Duration,
) -> Value {
    server
        .wait_agent_within(uid, &format!("{status} for {hash}"), patience, |agent| {
            agent["remote_config_status"]["config_hash"] == hash
                && agent["remote_config_status"]["status"] == status
        })
        .await
}

/// Registration as the supervisor reports it: identity, description,
/// capabilities, health, the Collector's effective config and its available
/// components.
async fn check_registration(
    server: &FleetServerProcess,
    settings: &SupervisorSettings,
    patience: Duration,
) -> Value {
    let uid = &settings.instance_uid;
    let agent = server
        .wait_registered(uid, patience, |agent| !agent["effective_config"].is_null())
        .await;
    // The supervisor reports its instance_id as service.instance.id and
    // merges the Collector's own description (service.version, host).
    assert_description(
        &agent,
        &[
            ("identifying", "service.instance.id", json!(uid)),
            (
                "identifying",
                "service.name",
                json!("opamp-rs-interop-collector"),
            ),
            (
                "non_identifying",
                "opamp-rs.test",
                json!(settings.test_name),
            ),
        ],
    );
    assert_capabilities(
        &agent,
        &[
            "ReportsStatus",
            "AcceptsRemoteConfig",
            "ReportsRemoteConfig",
            "ReportsEffectiveConfig",
            "ReportsHealth",
            "ReportsOwnLogs",
            "ReportsAvailableComponents",
            "AcceptsRestartCommand",
            "AcceptsOpAMPConnectionSettings",
            "ReportsHeartbeat",
        ],
    );
    // Declared by the supervisor, not the Collector: it does not report the
    // status of connection settings offers.
    assert!(!has_capability(&agent, "ReportsConnectionSettingsStatus"));
    // The effective config is the Collector's own (the supervisor adds the
    // OpAMP extension that talks back to it).
    let effective = effective_body(&agent);
    assert!(effective.contains("opamp"), "effective config: {effective}");
    assert_available_component(&agent, "receivers", "otlp");
    assert_available_component(&agent, "exporters", "debug");
    agent
}

/// Starts the supervisor with `settings` and waits for its registration
/// ([`check_registration`]); returns it with the agent's uid and record.
async fn start_registered(
    programs: &CollectorPrograms,
    server: &FleetServerProcess,
    settings: &SupervisorSettings,
    patience: Duration,
) -> (SupervisorProcess, String, Value) {
    let supervisor = SupervisorProcess::start(programs, settings);
    let agent = check_registration(server, settings, patience).await;
    (supervisor, settings.instance_uid.clone(), agent)
}

/// The error message of the agent's last remote config status ("" when
/// none).
fn config_error(agent: &Value) -> &str {
    agent["remote_config_status"]["error_message"]
        .as_str()
        .unwrap_or("")
}

/// SIGINT: the supervisor stops the Collector, says goodbye, and the server
/// shows the agent disconnected.
async fn stop_and_check_disconnected(
    server: &FleetServerProcess,
    supervisor: SupervisorProcess,
    uid: &str,
) {
    supervisor.interrupt().await;
    server
        .wait_agent(uid, "disconnected", |agent| agent["connected"] == false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_config_lifecycle_ws() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = fleet(&[]).await;
    let settings = SupervisorSettings::new(server.ws_url(), "config_lifecycle_ws");
    let (supervisor, uid, agent) = start_registered(programs, &server, &settings, TIMEOUT).await;
    assert_eq!(agent["transport"], "websocket");

    // RCFG: a valid config is APPLIED with our hash (after the supervisor's
    // config_apply_timeout), and the Collector really runs it.
    let port = free_port();
    let hash = push_config(&server, &uid, &otlp_pipeline_config(port)).await;
    let agent = wait_config_status(&server, &uid, &hash, "APPLIED", TIMEOUT).await;
    assert_eq!(agent["desired_config"]["state"], "APPLIED");
    assert_eq!(agent["desired_config"]["source"]["kind"], "agent");
    assert!(otlp_receiver_answers(port).await, "OTLP receiver on {port}");
    let agent = server
        .wait_agent(&uid, "effective config with the receiver", |agent| {
            effective_body(agent).contains(&format!("127.0.0.1:{port}"))
        })
        .await;
    assert_eq!(agent["health"]["healthy"], true);

    // Invalid YAML: FAILED with the parser's message; the Collector keeps
    // running the last good config and stays healthy.
    let bad_yaml = push_config(&server, &uid, "receivers: [unclosed\n  : :").await;
    let agent = wait_config_status(&server, &uid, &bad_yaml, "FAILED", TIMEOUT).await;
    let message = config_error(&agent);
    assert!(message.contains("yaml"), "message: {message}");
    assert_eq!(agent["desired_config"]["state"], "FAILED");
    assert_eq!(agent["desired_config"]["error_message"], json!(message));
    assert_eq!(agent["health"]["healthy"], true);
    assert!(
        otlp_receiver_answers(port).await,
        "previous config still runs"
    );

    // An unknown component: FAILED with the Collector's own validation
    // message (`otelcol validate`), previous config still running.
    let unknown = push_config(&server, &uid, UNKNOWN_RECEIVER_CONFIG).await;
    let agent = wait_config_status(&server, &uid, &unknown, "FAILED", TIMEOUT).await;
    let message = config_error(&agent);
    assert!(
        message.contains("unknown type: \"nosuchreceiver\""),
        "message: {message}"
    );
    assert_eq!(agent["health"]["healthy"], true);
    assert!(
        otlp_receiver_answers(port).await,
        "previous config still runs"
    );

    // Recovery: a good config again, on another port.
    let recovery_port = free_port();
    let recovery = push_config(&server, &uid, &otlp_pipeline_config(recovery_port)).await;
    let agent = wait_config_status(&server, &uid, &recovery, "APPLIED", TIMEOUT).await;
    assert_eq!(agent["desired_config"]["state"], "APPLIED");
    assert!(
        otlp_receiver_answers(recovery_port).await,
        "OTLP receiver on {recovery_port}"
    );

    // CMD: restart. The supervisor restarts the Collector process: health
    // goes through a new start time and back to healthy, same config.
    let started = agent["health"]["start_time"].clone();
    server.agent_action(&uid, "restart").await;
    server
        .wait_agent(&uid, "healthy with a new start time", |agent| {
            agent["health"]["healthy"] == true
                && !agent["health"]["start_time"].is_null()
                && agent["health"]["start_time"] != started
        })
        .await;
    wait_otlp_receiver(recovery_port, "OTLP receiver back after the restart").await;

    stop_and_check_disconnected(&server, supervisor, &uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_config_applied_http() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = fleet(&[]).await;
    let settings = SupervisorSettings::new(server.http_url(), "config_applied_http");
    let (supervisor, uid, agent) =
        start_registered(programs, &server, &settings, HTTP_PATIENCE).await;
    assert_eq!(agent["transport"], "http");

    let port = free_port();
    let hash = push_config(&server, &uid, &otlp_pipeline_config(port)).await;
    let agent = wait_config_status(&server, &uid, &hash, "APPLIED", HTTP_PATIENCE).await;
    assert_eq!(agent["desired_config"]["state"], "APPLIED");
    assert!(otlp_receiver_answers(port).await, "OTLP receiver on {port}");

    // Plain HTTP has no goodbye message in opamp-go; the server only sees
    // the supervisor go silent, so only the exit is checked here.
    supervisor.interrupt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_group_and_default_configs_ws() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = fleet(&[]).await;
    // The default config exists before the agent connects: a new agent gets
    // it without a click.
    let default_port = free_port();
    let default = server
        .expect(
            202,
            "PUT",
            "/api/config/default?file=collector.yaml",
            "text/yaml",
            &otlp_pipeline_config(default_port),
        )
        .await["config_hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let settings = SupervisorSettings::new(server.ws_url(), "group_and_default_ws");
    let uid = settings.instance_uid.clone();
    let supervisor = SupervisorProcess::start(programs, &settings);
    let agent = wait_config_status(&server, &uid, &default, "APPLIED", TIMEOUT).await;
    assert_eq!(agent["desired_config"]["source"]["kind"], "default");
    assert!(
        otlp_receiver_answers(default_port).await,
        "default config runs"
    );

    // A group selecting the agent by its non-identifying attribute wins over
    // the default.
    let group_port = free_port();
    let group = json!({
        "selector": {"opamp-rs.test": "group_and_default_ws"},
        "config": {"files": {"collector.yaml": {
            "content_type": "text/yaml",
            "body": otlp_pipeline_config(group_port),
        }}},
    });
    let answer = server
        .expect(
            200,
            "PUT",
            "/api/config/groups/interop",
            "application/json",
            &group.to_string(),
        )
        .await;
    assert_eq!(answer["matching_agents"], 1);
    let group_hash = answer["config_hash"].as_str().expect("hash").to_owned();
    let agent = wait_config_status(&server, &uid, &group_hash, "APPLIED", TIMEOUT).await;
    assert_eq!(agent["desired_config"]["source"]["kind"], "group");
    assert_eq!(agent["desired_config"]["source"]["name"], "interop");
    assert!(otlp_receiver_answers(group_port).await, "group config runs");

    // Without the group the default applies again. The supervisor has run
    // that exact config before; it is APPLIED again with the same hash.
    server
        .expect(
            204,
            "DELETE",
            "/api/config/groups/interop",
            "application/json",
            "",
        )
        .await;
    let agent = server
        .wait_agent(&uid, "default config APPLIED again", |agent| {
            agent["desired_config"]["source"]["kind"] == "default"
                && agent["desired_config"]["state"] == "APPLIED"
                && agent["remote_config_status"]["config_hash"] == json!(default)
        })
        .await;
    assert_eq!(agent["remote_config_status"]["status"], "APPLIED");
    wait_otlp_receiver(default_port, "default config runs again").await;

    stop_and_check_disconnected(&server, supervisor, &uid).await;
}

/// After an OpAMP connection settings offer, the supervisor applies it by
/// reconnecting. The right outcome: it reconnects a couple of times at most
/// and then stays connected. Counted from the server's event log over an
/// observation window measured while polling (one-sided: load can only
/// lower the count).
async fn assert_settles_after_offer(server: &FleetServerProcess, uid: &str, since: &str) {
    // The reconnect that applies the offer.
    server
        .wait_agent(uid, "a reconnect after the offer", |agent| {
            agent["connected"] == true && connected_events_after(agent, since) >= 1
        })
        .await;
    let window = Duration::from_secs(10);
    let start = Instant::now();
    let mut agent = server.agent(uid).await.expect("agent");
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        agent = server.agent(uid).await.expect("agent");
        // The server keeps the newest 100 events; a full page of reconnects
        // is already a failure.
        if connected_events_after(&agent, since) > 3 {
            break;
        }
    }
    let reconnects = connected_events_after(&agent, since);
    assert!(
        reconnects <= 3,
        "the agent reconnected {reconnects} times (more than 3) after one connection settings offer \
         (re-offer loop?); newest events: {:#}",
        json!(
            agent["events"]
                .as_array()
                .map(|events| &events[..events.len().min(12)])
        )
    );
    assert_eq!(agent["connected"], true, "connected after the offer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_heartbeat_offer_reconnects_once_ws() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = fleet(&[]).await;
    let settings = SupervisorSettings::new(server.ws_url(), "heartbeat_ws");
    let (supervisor, uid, agent) = start_registered(programs, &server, &settings, TIMEOUT).await;
    let since = latest_event_time(&agent);

    server
        .expect(
            202,
            "PUT",
            &format!("/api/agents/{uid}/heartbeat"),
            "application/json",
            r#"{"heartbeat_interval_seconds": 2}"#,
        )
        .await;
    assert_settles_after_offer(&server, &uid, &since).await;
    // Heartbeats arrive on the offered interval: the sequence number moves
    // on while nothing else happens.
    let agent = server.agent(&uid).await.expect("agent");
    assert_eq!(agent["heartbeat_interval_seconds"], 2);
    let sequence = agent["sequence_num"].as_u64().expect("sequence_num");
    server
        .wait_agent(&uid, "a heartbeat", |agent| {
            agent["sequence_num"]
                .as_u64()
                .is_some_and(|now| now > sequence)
        })
        .await;

    stop_and_check_disconnected(&server, supervisor, &uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_certificate_rotation_reconnects_once_wss() {
    let Some(programs) = collector_programs() else {
        return;
    };
    // One CA signs the server certificate and issues client certificates:
    // the supervisor replaces its trust with the CA that comes with the
    // offered certificate.
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("pki directory");
    let files = pki.write(dir.path());
    let path = |path: &std::path::Path| path.display().to_string();
    let server = fleet(&[
        "--tls-cert".into(),
        path(&files.cert),
        "--tls-key".into(),
        path(&files.key),
        "--client-ca".into(),
        path(&files.ca),
        "--client-ca-key".into(),
        path(&files.ca_key),
        "--client-cert-optional".into(),
    ])
    .await;
    let mut settings = SupervisorSettings::new(server.ws_url(), "certificate_wss");
    settings.ca_file = Some(files.ca.clone());
    let (supervisor, uid, agent) = start_registered(programs, &server, &settings, TIMEOUT).await;
    let since = latest_event_time(&agent);

    server.agent_action(&uid, "rotate-certificate").await;
    assert_settles_after_offer(&server, &uid, &since).await;

    stop_and_check_disconnected(&server, supervisor, &uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_own_logs_reach_otlp_endpoint_ws() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let mut sink = OtlpSink::start().await;
    let server = fleet(&["--otlp-endpoint".into(), sink.base_url()]).await;
    let settings = SupervisorSettings::new(server.ws_url(), "own_logs_ws");
    let (supervisor, uid, _) = start_registered(programs, &server, &settings, TIMEOUT).await;

    // CS-43: the supervisor declares ReportsOwnLogs; the server offers
    // <sink>/v1/logs; the supervisor writes it into the Collector's
    // telemetry config and restarts it; the Collector exports its logs there.
    let agent = server
        .wait_agent(
            &uid,
            "own logs destination in the effective config",
            |agent| effective_body(agent).contains(&format!("{}/v1/logs", sink.base_url())),
        )
        .await;
    assert_eq!(agent["health"]["healthy"], true);
    let export = sink
        .requests
        .wait_for("an OTLP logs export", |request| request.path == "/v1/logs")
        .await;
    assert_eq!(
        export.header("content-type"),
        Some("application/x-protobuf"),
        "{export:?}"
    );
    // The resource carries the supervisor's description (service.instance.id
    // = the agent's uid), visible in the uncompressed protobuf.
    if export.header("content-encoding").is_none() {
        let body = String::from_utf8_lossy(&export.body);
        assert!(body.contains(&uid), "the export names the agent's uid");
    }

    stop_and_check_disconnected(&server, supervisor, &uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_crashing_config_without_validation_ws() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = fleet(&[]).await;
    let mut settings = SupervisorSettings::new(server.ws_url(), "without_validation_ws");
    // Without validate_config the supervisor runs whatever it gets: a config
    // the Collector rejects makes it exit.
    settings.validate_config = false;
    let (supervisor, uid, _) = start_registered(programs, &server, &settings, TIMEOUT).await;

    let unknown = push_config(&server, &uid, UNKNOWN_RECEIVER_CONFIG).await;
    // FAILED as soon as the Collector exits (before config_apply_timeout),
    // with the supervisor's message (the Collector's own goes to its log
    // file), and health turns unhealthy.
    let agent = wait_config_status(&server, &uid, &unknown, "FAILED", TIMEOUT).await;
    let message = config_error(&agent);
    assert!(message.contains("exit"), "message: {message}");
    let agent = server
        .wait_agent(&uid, "unhealthy", |agent| {
            agent["health"]["healthy"] == false
        })
        .await;
    let last_error = agent["health"]["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains("exit"), "last_error: {last_error}");

    // Recovery: a good config makes it healthy again.
    let port = free_port();
    let recovery = push_config(&server, &uid, &otlp_pipeline_config(port)).await;
    wait_config_status(&server, &uid, &recovery, "APPLIED", TIMEOUT).await;
    server
        .wait_agent(&uid, "healthy again", |agent| {
            agent["health"]["healthy"] == true
        })
        .await;
    assert!(otlp_receiver_answers(port).await, "OTLP receiver on {port}");

    stop_and_check_disconnected(&server, supervisor, &uid).await;
}
