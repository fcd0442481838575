//! A Collector (v0.149.0) with the OpAMP extension and no supervisor,
//! against the example fleet server run as a process (issue 15). The
//! extension only reports (description, health, effective config, available
//! components) and, behind a feature gate, accepts the restart command.
//! Scenarios are listed in `interop/MATRIX.md`.

use std::time::Duration;

use opamp_interop_tests::{
    CollectorProcess, FleetServerProcess, REMOTE_RESTARTS_GATE, TIMEOUT,
    assert_available_component, assert_capabilities, assert_description, collector_programs,
    connected_events_after, effective_body, free_port, has_capability, otlp_pipeline_config,
    otlp_receiver_answers, wait_otlp_receiver,
};
use serde_json::{Value, json};

const FLEET_SERVER: &str = env!("CARGO_BIN_EXE_fleet-server");

/// Plain HTTP: the extension polls at the configured `polling_interval`
/// (1 s here); a generous bound for a busy machine.
const HTTP_PATIENCE: Duration = Duration::from_secs(90);

/// A Collector config: the OpAMP extension (WebSocket or plain HTTP, by the
/// endpoint's scheme) plus an OTLP receiver on `port` feeding the debug
/// exporter.
fn collector_config(endpoint: &str, uid: &str, port: u16, accepts_restart: bool) -> String {
    let server = if endpoint.starts_with("ws") {
        format!("      ws:\n        endpoint: {endpoint}\n")
    } else {
        format!("      http:\n        endpoint: {endpoint}\n        polling_interval: 1s\n")
    };
    format!(
        "extensions:\n  opamp:\n    instance_uid: {uid}\n    server:\n{server}    capabilities:\n      \
         reports_effective_config: true\n      reports_health: true\n      \
         reports_available_components: true\n      accepts_restart_command: {accepts_restart}\n    \
         agent_description:\n      non_identifying_attributes:\n        opamp-rs.test: extension\n\
         {pipeline}  extensions: [opamp]\n",
        pipeline = otlp_pipeline_config(port),
    )
}

/// What the extension reports once connected: identity, capabilities,
/// health (with the pipeline's components), effective config and available
/// components.
async fn check_registration(
    server: &FleetServerProcess,
    uid: &str,
    port: u16,
    patience: Duration,
) -> Value {
    let agent = server
        .wait_registered(uid, patience, |agent| {
            effective_body(agent).contains(&format!("127.0.0.1:{port}"))
        })
        .await;
    assert_description(
        &agent,
        &[
            ("identifying", "service.instance.id", json!(uid)),
            // The Collector's build name and version.
            ("identifying", "service.name", json!("otelcol-opamp")),
            (
                "identifying",
                "service.version",
                json!(opamp_interop_tests::COLLECTOR_VERSION),
            ),
            ("non_identifying", "opamp-rs.test", json!("extension")),
        ],
    );
    assert_capabilities(
        &agent,
        &[
            "ReportsStatus",
            "ReportsEffectiveConfig",
            "ReportsHealth",
            "ReportsAvailableComponents",
        ],
    );
    // The extension alone takes no remote config and no connection settings.
    assert!(!has_capability(&agent, "AcceptsRemoteConfig"));
    assert!(!has_capability(&agent, "AcceptsOpAMPConnectionSettings"));
    assert_available_component(&agent, "receivers", "otlp");
    assert!(otlp_receiver_answers(port).await, "OTLP receiver on {port}");
    agent
}

async fn registers(transport: &str) {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = FleetServerProcess::start(FLEET_SERVER.as_ref(), &[]).await;
    let (endpoint, patience) = match transport {
        "websocket" => (server.ws_url(), TIMEOUT),
        _ => (server.http_url(), HTTP_PATIENCE),
    };
    let uid = uuid::Uuid::now_v7().to_string();
    let port = free_port();
    let collector = CollectorProcess::start(
        programs,
        &collector_config(&endpoint, &uid, port, false),
        &[],
    );
    let agent = check_registration(&server, &uid, port, patience).await;
    assert_eq!(agent["transport"], transport);
    // Health lists the Collector's components (component status reporting).
    let health = agent["health"].to_string();
    assert!(health.contains("receiver:otlp"), "health: {health}");

    // The server refuses what the extension did not declare.
    for (method, action, content_type, body) in [
        ("PUT", "config", "text/yaml", "receivers: {}\n"),
        ("POST", "restart", "application/json", "{}"),
    ] {
        let path = format!("/api/agents/{uid}/{action}");
        let refused = server.expect(409, method, &path, content_type, body).await;
        assert_eq!(
            refused["error"], "capability_not_declared",
            "{method} {path}"
        );
    }

    collector.interrupt().await;
    if transport == "websocket" {
        // The extension says goodbye when the Collector shuts down.
        server
            .wait_agent(&uid, "disconnected", |agent| agent["connected"] == false)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_registers_ws() {
    registers("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_registers_http() {
    registers("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_restart_with_feature_gate_ws() {
    let Some(programs) = collector_programs() else {
        return;
    };
    let server = FleetServerProcess::start(FLEET_SERVER.as_ref(), &[]).await;
    let uid = uuid::Uuid::now_v7().to_string();
    let port = free_port();
    let gate = format!("--feature-gates={REMOTE_RESTARTS_GATE}");
    let collector = CollectorProcess::start(
        programs,
        &collector_config(&server.ws_url(), &uid, port, true),
        &[&gate],
    );
    let agent = check_registration(&server, &uid, port, TIMEOUT).await;
    assert!(
        has_capability(&agent, "AcceptsRestartCommand"),
        "{}",
        agent["capabilities"]
    );
    let since = agent["events"][0]["at"].as_str().unwrap_or("").to_owned();

    // The extension answers the restart command with SIGHUP to its own
    // process: the Collector reloads its config, which restarts the
    // extension, so the server sees a new connection and fresh reports.
    server.agent_action(&uid, "restart").await;
    server
        .wait_agent(&uid, "a new connection after the restart", |agent| {
            agent["connected"] == true
                && agent["health"]["healthy"] == true
                && connected_events_after(agent, &since) >= 1
        })
        .await;
    wait_otlp_receiver(port, "OTLP receiver back after the reload").await;

    collector.interrupt().await;
    server
        .wait_agent(&uid, "disconnected", |agent| agent["connected"] == false)
        .await;
}
