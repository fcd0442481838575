//! Agents that reconnect in a loop, over a real socket: the Collector
//! supervisor's answer to connection settings, and any agent stuck retrying.

use std::time::Duration;

use opamp_proto::{
    AgentCapabilities, AgentToServer, ConnectionSettingsOffers, OpAmpConnectionSettings,
    ServerErrorResponseType, server_error_response,
};
use opamp_server::{OpampServer, ReconnectGuard, Registry};
use opamp_testkit::*;

/// What the Collector's supervisor declares about connection settings: it
/// accepts them but cannot report their status.
const SUPERVISOR_LIKE: AgentCapabilities =
    CAPS.union(AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS);

fn first_report(agent: opamp_proto::InstanceUid) -> AgentToServer {
    let mut message = report(agent, 0);
    message.capabilities = SUPERVISOR_LIKE.bits();
    message
}

/// CS-06: an agent that applies every connection-settings offer by
/// reconnecting, and never reports the offer's hash, must get the offer once.
/// Before the fix the registry re-offered it on every new connection, and
/// such an agent reconnected about 100 times a second for as long as it ran.
/// Here the agent reconnects whenever it receives settings, for at most ten
/// rounds; with the fix it stops after the first.
#[tokio::test]
async fn cs_06_supervisor_like_agent_reconnects_once_per_offer() {
    let server = OpampServer::builder()
        .registry(Registry::builder().reconnect_guard(None).build())
        .build();
    let running = RunningServer::start(server).await;
    let registry = running.registry().clone();
    let agent = uid(77);

    let mut ws = ws_connect(running.addr).await;
    ws_send(&mut ws, &first_report(agent)).await;
    assert!(ws_recv(&mut ws).await.connection_settings.is_none());
    let offer = ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings {
            destination_endpoint: running.ws_url(),
            heartbeat_interval_seconds: 5,
            ..Default::default()
        }),
        ..Default::default()
    };
    registry
        .offer_connection_settings(agent, offer)
        .await
        .expect("the agent accepts OpAMP connection settings");

    let mut reconnects = 0;
    let mut pushed = ws_recv(&mut ws).await;
    while pushed.connection_settings.is_some() && reconnects < 10 {
        // Apply by reconnecting, as the supervisor does.
        drop(ws);
        ws = ws_connect(running.addr).await;
        ws_send(&mut ws, &first_report(agent)).await;
        pushed = ws_recv(&mut ws).await;
        reconnects += 1;
    }
    assert_eq!(reconnects, 1, "one reconnect applies the offer; no loop");
    // Still connected, still answered, and no further offer on this
    // connection.
    ws_send(
        &mut ws,
        &heartbeat(agent, 1).with_capabilities(SUPERVISOR_LIKE),
    )
    .await;
    assert!(ws_recv(&mut ws).await.connection_settings.is_none());
    drop(ws);
    running.stop().await;
}

trait WithCapabilities {
    fn with_capabilities(self, capabilities: AgentCapabilities) -> Self;
}

impl WithCapabilities for AgentToServer {
    fn with_capabilities(mut self, capabilities: AgentCapabilities) -> Self {
        self.capabilities = capabilities.bits();
        self
    }
}

fn retry_after(reply: &opamp_proto::ServerToAgent) -> Duration {
    let error = reply.error_response.as_ref().expect("an error response");
    assert_eq!(error.r#type(), ServerErrorResponseType::Unavailable);
    match &error.details {
        Some(server_error_response::Details::RetryInfo(info)) => {
            Duration::from_nanos(info.retry_after_nanoseconds)
        }
        other => panic!("no retry_info: {other:?}"),
    }
}

/// WS-22 / HTTP-21: whatever makes an agent reconnect in a loop, past the
/// guard's limit its connections are answered `UNAVAILABLE` with a retry
/// hint and closed with 1013 (try again later); over plain HTTP a new
/// session gets `503` with `Retry-After`.
#[tokio::test]
async fn ws_22_http_21_agents_reconnecting_in_a_loop_are_told_to_wait() {
    let guard = ReconnectGuard::new(3, Duration::from_secs(3600))
        .backoff(Duration::from_secs(30), Duration::from_secs(60));
    let server = OpampServer::builder()
        .registry(Registry::builder().reconnect_guard(Some(guard)).build())
        .build();
    let running = RunningServer::start(server).await;
    let agent = uid(78);
    for sequence in 0..3 {
        let mut ws = ws_connect(running.addr).await;
        ws_send(&mut ws, &report(agent, sequence)).await;
        assert!(ws_recv(&mut ws).await.error_response.is_none());
    }
    let mut ws = ws_connect(running.addr).await;
    let refusal = ws_exchange(&mut ws, &report(agent, 3)).await;
    assert_eq!(refusal.instance_uid, agent.to_bytes());
    assert_eq!(retry_after(&refusal), Duration::from_secs(30));
    assert_eq!(ws_close_code(&mut ws).await, Some(1013));

    // The same agent over plain HTTP starts a new session: refused too.
    let message = report(agent, 4);
    let request = post(running.addr)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            prost::Message::encode_to_vec(&message),
        )))
        .unwrap();
    let response = http_request(running.addr, request).await;
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    let hint: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&hint), "Retry-After {hint}");
    running.stop().await;
}
