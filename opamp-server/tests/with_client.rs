//! The real `opamp-client` against the server, over both transports.

use bytes::Bytes;
use opamp_client::{AgentCapabilities, AgentDescription, OpampClient};
use opamp_proto::{InstanceUid, ServerErrorResponse, ServerToAgentCommand};
use opamp_server::{
    AgentEvent, DEFAULT_CAPABILITIES, DisconnectReason, OpampServer, Registry, RemoteConfigState,
    TransportKind,
};
use opamp_testkit::{RunningServer, ServerEvent, config_map, next_server_event, report_applied};
use tokio::sync::{broadcast, mpsc};

/// What the agent saw.
#[derive(Debug, Clone, PartialEq)]
enum AgentSeen {
    Config(Bytes),
    Command,
    NewUid(InstanceUid),
    Error(String),
}

/// Applies every remote config it is offered and reports what happens.
struct Agent {
    seen: mpsc::UnboundedSender<AgentSeen>,
}

impl opamp_client::Callbacks for Agent {
    fn on_message(&self, client: &OpampClient, data: &opamp_client::MessageData) {
        if let Some(hash) = report_applied(client, data) {
            let _ = self.seen.send(AgentSeen::Config(hash));
        }
    }

    fn on_command(&self, _command: &ServerToAgentCommand) {
        let _ = self.seen.send(AgentSeen::Command);
    }

    fn on_new_instance_uid(&self, uid: InstanceUid) {
        let _ = self.seen.send(AgentSeen::NewUid(uid));
    }

    fn on_error_response(&self, error: &ServerErrorResponse) {
        let _ = self
            .seen
            .send(AgentSeen::Error(error.error_message.clone()));
    }
}

fn agent(endpoint: String, uid: InstanceUid) -> (OpampClient, mpsc::UnboundedReceiver<AgentSeen>) {
    let (seen, events) = mpsc::unbounded_channel();
    let client = OpampClient::builder(endpoint)
        .instance_uid(uid)
        .agent_description(AgentDescription::for_service("io.example.agent", "1.0.0"))
        .capabilities(
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_REMOTE_CONFIG
                | AgentCapabilities::ACCEPTS_RESTART_COMMAND
                | AgentCapabilities::REPORTS_HEARTBEAT,
        )
        .callbacks(Agent { seen })
        .build()
        .expect("valid client settings");
    (client, events)
}

async fn connected(events: &mut broadcast::Receiver<AgentEvent>) -> InstanceUid {
    loop {
        if let AgentEvent::Connected { uid, .. } = events.recv().await.unwrap() {
            return uid;
        }
    }
}

/// A server with every default, its registry and a subscription to the
/// registry's events.
async fn server() -> (RunningServer, Registry, broadcast::Receiver<AgentEvent>) {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let registry = running.registry().clone();
    let events = registry.subscribe();
    (running, registry, events)
}

/// Connects, receives a pushed config, reports it applied, restarts on
/// command and says goodbye, over the given transport.
async fn full_round_trip(scheme: &str, transport: TransportKind) {
    let (running, mut seen) = RunningServer::recorded().await;
    let registry = running.registry().clone();
    let mut events = registry.subscribe();
    let uid = InstanceUid::new_v7();
    let (client, mut agent_seen) = agent(format!("{scheme}://{}/v1/opamp", running.addr), uid);
    client.start().await.expect("client starts");

    assert_eq!(connected(&mut events).await, uid);
    let record = registry.agent(uid).await.unwrap().unwrap();
    assert!(
        record.status.description.is_some(),
        "STS-01: full first report"
    );
    assert!(
        record
            .status
            .capabilities
            .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    );
    assert_eq!(
        record.connection.as_ref().map(|c| c.transport),
        Some(transport)
    );

    let offer = registry
        .set_remote_config(uid, config_map("level: info\n"))
        .await
        .unwrap();
    assert_eq!(
        agent_seen.recv().await,
        Some(AgentSeen::Config(offer.hash.clone()))
    );
    let state = registry
        .wait_for_remote_config(uid, &offer.hash)
        .await
        .unwrap();
    assert_eq!(
        state,
        RemoteConfigState::Applied,
        "RCFG-06: the hash came back"
    );
    assert_eq!(
        client.server_capabilities(),
        Some(DEFAULT_CAPABILITIES),
        "CAP-07"
    );

    registry.restart(uid).await.unwrap();
    assert_eq!(agent_seen.recv().await, Some(AgentSeen::Command), "CMD-01");

    client.stop().await;
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!("connected first")
    };
    let reason = loop {
        match next_server_event(&mut seen).await {
            ServerEvent::Message(other, _) => assert_eq!(other, id),
            ServerEvent::Disconnected(other, reason) => {
                assert_eq!(other, id);
                break reason;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    match transport {
        TransportKind::PlainHttp => {
            assert_eq!(reason, DisconnectReason::AgentDisconnect, "HTTP-24")
        }
        _ => assert!(
            matches!(reason, DisconnectReason::ClosedByAgent { .. }),
            "WS-17: {reason:?}"
        ),
    }
    assert!(
        !registry.agent(uid).await.unwrap().unwrap().is_connected(),
        "MSG-07"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rcfg_websocket_round_trip_with_the_real_client() {
    full_round_trip("ws", TransportKind::WebSocket).await;
}

#[tokio::test(start_paused = true)]
async fn http_15_plain_http_round_trip_with_the_real_client() {
    full_round_trip("http", TransportKind::PlainHttp).await;
}

#[tokio::test(start_paused = true)]
async fn seq_05_seq_06_lost_server_state_is_rebuilt_from_a_full_report() {
    let (running, registry, mut events) = server().await;
    let uid = InstanceUid::new_v7();
    let (client, _agent_seen) = agent(format!("ws://{}/v1/opamp", running.addr), uid);
    client.start().await.unwrap();
    connected(&mut events).await;

    // The server loses what it knew; the agent's next heartbeat is compressed.
    registry.remove(uid).await.unwrap();
    while events.recv().await.unwrap() != (AgentEvent::Removed { uid }) {}
    // The heartbeat re-creates a record without a description; the server
    // asks for the full state (SEQ-05) and the agent sends it (SEQ-06).
    loop {
        let event = events.recv().await.unwrap();
        if let AgentEvent::StatusChanged {
            uid: changed,
            changes,
        } = event
        {
            assert_eq!(changed, uid);
            if changes.contains(opamp_server::StatusChanges::DESCRIPTION) {
                break;
            }
        }
    }
    let record = registry.agent(uid).await.unwrap().unwrap();
    assert!(record.status.description.is_some());
    assert!(record.is_connected());
    client.stop().await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn uid_08_uid_09_duplicate_agents_are_told_a_new_uid() {
    let (running, registry, mut events) = server().await;
    let uid = InstanceUid::new_v7();
    let endpoint = format!("ws://{}/v1/opamp", running.addr);
    let (first, _first_seen) = agent(endpoint.clone(), uid);
    first.start().await.unwrap();
    assert_eq!(connected(&mut events).await, uid);

    // A cloned VM: same uid, its own process.
    let (clone, mut clone_seen) = agent(endpoint, uid);
    clone.start().await.unwrap();
    let new_uid = loop {
        if let Some(AgentSeen::NewUid(new_uid)) = clone_seen.recv().await {
            break new_uid;
        }
    };
    assert_ne!(new_uid, uid);
    assert_eq!(clone.instance_uid(), new_uid, "UID-08: used from now on");
    assert!(first.instance_uid() == uid);
    // Both stay connected, each under its own uid.
    let mut connected_now = registry.connected();
    connected_now.sort();
    let mut expected = vec![uid, new_uid];
    expected.sort();
    assert_eq!(connected_now, expected);
    first.stop().await;
    clone.stop().await;
    running.stop().await;
}
