//! Deterministic tests of the registry's bookkeeping, without any network.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentDisconnect, AgentToServer,
    AgentToServerFlags, AvailableComponents, ComponentDetails, ComponentHealth,
    ConnectionSettingsOffers, CustomCapabilities, CustomMessage, InstanceUid,
    OpAmpConnectionSettings, PackageStatuses, PackagesAvailable, RemoteConfigStatus,
    RemoteConfigStatuses, ServerToAgent, ServerToAgentFlags, TelemetryConnectionSettings,
};
use tokio::sync::mpsc;

use super::*;
use crate::error::BusError;
use crate::store::BoxFuture;
use crate::test_messages::{CAPS, compressed, description, full, uid, with_caps};

fn config() -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig::default())
}

type Outbox = mpsc::Receiver<Box<ServerToAgent>>;

fn websocket() -> (Connection, Outbox) {
    Connection::websocket(PeerInfo::default(), config())
}

/// A new WebSocket to `registry` on which the agent sent `report`: the
/// connection, its outbox and the registry's answer.
async fn connect(registry: &Registry, report: &AgentToServer) -> (Connection, Outbox, Received) {
    let (conn, outbox) = websocket();
    let agent = InstanceUid::try_from(&report.instance_uid).unwrap();
    let received = registry.receive(&conn, report, agent).await;
    (conn, outbox, received)
}

/// Whether the answer to `report`, received on `conn`, asks for the full state.
async fn asks(registry: &Registry, conn: &Connection, report: &AgentToServer) -> bool {
    let agent = InstanceUid::try_from(&report.instance_uid).unwrap();
    asks_full_state(&registry.receive(conn, report, agent).await)
}

/// Offers the remote config `body` to `agent`, which accepts it.
async fn offer_yaml(registry: &Registry, agent: InstanceUid, body: &str) -> Offer {
    registry.set_remote_config(agent, yaml(body)).await.unwrap()
}

fn asks_full_state(received: &Received) -> bool {
    ServerToAgentFlags::from_bits_retain(received.response.flags)
        .contains(ServerToAgentFlags::REPORT_FULL_STATE)
}

/// Where the desired remote config of `agent`, which is known, stands.
async fn config_state(registry: &Registry, agent: InstanceUid) -> Option<RemoteConfigState> {
    let record = registry.agent(agent).await.unwrap().unwrap();
    record.remote_config_state()
}

/// The agent closed `conn` normally.
async fn closed_by_agent(registry: &Registry, conn: &Connection) {
    registry
        .connection_closed(conn, &DisconnectReason::ClosedByAgent { code: None })
        .await;
}

/// After `quiet` more on the paused clock no plain-HTTP session is stale
/// yet; one second later exactly `expected` is.
async fn stale_a_second_after(
    registry: &Registry,
    quiet: Duration,
    expected: &Connection,
    why: &str,
) {
    tokio::time::advance(quiet).await;
    assert!(
        registry.stale_sessions(Instant::now()).is_empty(),
        "not stale yet: {why}"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        registry.stale_sessions(Instant::now()),
        vec![expected.clone()],
        "stale a second later: {why}"
    );
}

fn next_frame(outbox: &mut Outbox) -> ServerToAgent {
    *outbox.try_recv().expect("a message was queued")
}

#[tokio::test]
async fn seq_05_a_gap_asks_for_full_state_once() {
    let registry = Registry::new();
    let (conn, _outbox) = websocket();
    let agent = uid(1);
    assert!(!asks(&registry, &conn, &full(agent, 0)).await);
    assert!(!asks(&registry, &conn, &compressed(agent, 1)).await);
    // Message 2 went missing.
    let after_gap = registry.receive(&conn, &compressed(agent, 3), agent).await;
    assert!(asks_full_state(&after_gap), "SEQ-05: gap 1 -> 3");
    // The answer is the new baseline, even if its number is odd again.
    assert!(!asks(&registry, &conn, &full(agent, 10)).await);
    assert!(!asks(&registry, &conn, &compressed(agent, 11)).await);
}

#[tokio::test]
async fn seq_05_no_loop_for_repeated_numbers_or_restarts_at_zero() {
    let registry = Registry::new();
    let (conn, _outbox) = websocket();
    let agent = uid(2);
    // A peer that always sends 0 (AMB-05) or resends (ERR-04): only the
    // very first message, which does not describe the agent, asks.
    let first = registry.receive(&conn, &compressed(agent, 0), agent).await;
    assert!(
        asks_full_state(&first),
        "nothing is known about this agent yet"
    );
    for _ in 0..5 {
        assert!(!asks(&registry, &conn, &compressed(agent, 0)).await);
    }
    // An agent process restarting at 0 sends its full first report: no ask.
    assert!(!asks(&registry, &conn, &full(agent, 1)).await);
    assert!(!asks(&registry, &conn, &full(agent, 0)).await);
}

#[tokio::test]
async fn seq_07_reconnect_without_server_state_asks_once() {
    // The server restarted (empty store); the agent reconnects with a
    // compressed report continuing its numbering (SEQ-07).
    let registry = Registry::new();
    let (conn, _outbox) = websocket();
    let agent = uid(3);
    assert!(asks(&registry, &conn, &compressed(agent, 57)).await);
    // An agent that ignores the request is not asked again and again.
    assert!(!asks(&registry, &conn, &compressed(agent, 58)).await);
    assert!(!asks(&registry, &conn, &compressed(agent, 59)).await);
    // When it finally sends its description, all is well.
    assert!(!asks(&registry, &conn, &full(agent, 60)).await);
    let record = registry.agent(agent).await.unwrap().unwrap();
    assert_eq!(record.status.description, Some(description()));
}

#[tokio::test]
async fn seq_02_compressed_reports_keep_omitted_parts() {
    let registry = Registry::new();
    let mut events = registry.subscribe();
    let agent = uid(4);
    let (conn, _outbox, _) = connect(&registry, &full(agent, 0)).await;
    let mut unhealthy = compressed(agent, 1);
    unhealthy.health = Some(ComponentHealth {
        healthy: false,
        last_error: "oops".into(),
        ..Default::default()
    });
    registry.receive(&conn, &unhealthy, agent).await;

    let record = registry.agent(agent).await.unwrap().unwrap();
    assert_eq!(
        record.status.description,
        Some(description()),
        "omitted = unchanged"
    );
    assert_eq!(
        record.status.health.as_ref().map(|h| h.healthy),
        Some(false)
    );
    assert_eq!(record.status.capabilities, CAPS);
    assert!(record.is_connected());

    assert_eq!(
        events.try_recv().unwrap(),
        AgentEvent::Connected {
            uid: agent,
            transport: TransportKind::WebSocket
        }
    );
    assert!(matches!(
        events.try_recv().unwrap(),
        AgentEvent::StatusChanged { changes, .. }
            if changes.contains(StatusChanges::DESCRIPTION | StatusChanges::HEALTH | StatusChanges::CAPABILITIES)
    ));
    assert_eq!(
        events.try_recv().unwrap(),
        AgentEvent::StatusChanged {
            uid: agent,
            changes: StatusChanges::HEALTH
        }
    );
    // A heartbeat changes nothing and says nothing.
    registry.receive(&conn, &compressed(agent, 2), agent).await;
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn uid_06_reply_carries_the_received_uid() {
    let registry = Registry::new();
    let agent = uid(5);
    let (_conn, _outbox, received) = connect(&registry, &full(agent, 0)).await;
    assert_eq!(received.response.instance_uid, agent.to_bytes());
    assert_eq!(received.disposition, Disposition::Continue);
}

#[tokio::test]
async fn uid_09_duplicate_uid_gets_a_new_uid() {
    let registry = Registry::new();
    let mut events = registry.subscribe();
    let (first, _outbox_a) = websocket();
    let (second, _outbox_b) = websocket();
    let agent = uid(6);
    registry.receive(&first, &full(agent, 0), agent).await;
    registry.receive(&first, &compressed(agent, 1), agent).await;
    // A clone with its own numbering appears on another connection.
    let received = registry.receive(&second, &full(agent, 0), agent).await;
    let new_uid = InstanceUid::try_from(
        &received
            .response
            .agent_identification
            .as_ref()
            .expect("UID-09: new uid offered")
            .new_instance_uid,
    )
    .unwrap();
    assert_ne!(new_uid, agent);
    assert_eq!(new_uid.to_uuid().get_version_num(), 7, "UID-07: a UUIDv7");
    assert_eq!(
        received.response.instance_uid,
        agent.to_bytes(),
        "AMB-15: reply under the uid received"
    );
    assert_eq!(received.uid, new_uid);
    assert_eq!(
        registry.connection(agent),
        Some(first.clone()),
        "the original keeps its uid"
    );
    assert_eq!(registry.connection(new_uid), Some(second.clone()));
    assert!(!first.is_closed());
    // The clone's report was recorded under its new uid.
    let record = registry.agent(new_uid).await.unwrap().unwrap();
    assert_eq!(record.status.description, Some(description()));
    let reassigned = std::iter::from_fn(|| events.try_recv().ok()).any(|event| {
        event
            == AgentEvent::UidReassigned {
                old: agent,
                new: new_uid,
            }
    });
    assert!(reassigned);
}

#[tokio::test]
async fn uid_10_refuse_policy_rejects_the_duplicate() {
    let registry = Registry::builder()
        .duplicate_policy(DuplicateUidPolicy::Refuse)
        .build();
    let (first, _outbox_a) = websocket();
    let (second, _outbox_b) = websocket();
    let agent = uid(7);
    registry.receive(&first, &full(agent, 0), agent).await;
    let received = registry.receive(&second, &full(agent, 40), agent).await;
    assert_eq!(received.disposition, Disposition::Refused);
    let error = received.response.error_response.expect("an error reply");
    assert_eq!(
        error.r#type(),
        opamp_proto::ServerErrorResponseType::BadRequest
    );
    assert_eq!(received.response.instance_uid, agent.to_bytes());
    assert_eq!(registry.connection(agent), Some(first));
}

#[tokio::test]
async fn uid_09_sequence_continuation_is_a_reconnect_not_a_duplicate() {
    let registry = Registry::new();
    let mut events = registry.subscribe();
    let (old, _outbox_a) = websocket();
    let (new, _outbox_b) = websocket();
    let agent = uid(8);
    registry.receive(&old, &full(agent, 0), agent).await;
    registry.receive(&old, &compressed(agent, 1), agent).await;
    // The old TCP connection is half-open; the agent is already back.
    let received = registry.receive(&new, &compressed(agent, 2), agent).await;
    assert!(received.response.agent_identification.is_none());
    assert!(
        !asks_full_state(&received),
        "SEQ-07: the server kept its state"
    );
    assert!(old.is_closed(), "the stale connection is closed");
    assert_eq!(old.take_close_reason(), Some(DisconnectReason::Replaced));
    assert_eq!(registry.connection(agent), Some(new.clone()));
    // Its closing does not mark the agent disconnected.
    registry
        .connection_closed(&old, &DisconnectReason::Replaced)
        .await;
    assert!(registry.agent(agent).await.unwrap().unwrap().is_connected());
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let disconnects = seen
        .iter()
        .filter(|e| matches!(e, AgentEvent::Disconnected { .. }))
        .count();
    assert_eq!(disconnects, 1, "{seen:?}");
}

#[tokio::test]
async fn uid_05_requested_uid_is_assigned() {
    let registry = Registry::new();
    let (conn, _outbox) = websocket();
    let temporary = uid(9);
    let mut first = full(temporary, 0);
    first.flags = AgentToServerFlags::REQUEST_INSTANCE_UID.bits();
    let received = registry.receive(&conn, &first, temporary).await;
    let assigned = InstanceUid::try_from(
        &received
            .response
            .agent_identification
            .expect("UID-05")
            .new_instance_uid,
    )
    .unwrap();
    assert_ne!(assigned, temporary);
    assert_eq!(conn.agents(), vec![assigned]);
    assert!(registry.agent(temporary).await.unwrap().is_none());
    // The agent continues under its new uid without being asked for anything.
    let next = registry
        .receive(&conn, &compressed(assigned, 1), assigned)
        .await;
    assert!(!asks_full_state(&next));
    assert!(next.response.agent_identification.is_none());
}

#[tokio::test]
async fn msg_07_agent_disconnect_forgets_the_association() {
    let registry = Registry::new();
    let mut events = registry.subscribe();
    let agent = uid(10);
    let (conn, _outbox, _) = connect(&registry, &full(agent, 0)).await;
    let mut goodbye = compressed(agent, 1);
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    let received = registry.receive(&conn, &goodbye, agent).await;
    assert_eq!(received.disposition, Disposition::Disconnected);
    assert_eq!(registry.connection(agent), None);
    assert!(conn.agents().is_empty());
    assert!(!registry.agent(agent).await.unwrap().unwrap().is_connected());
    let last = std::iter::from_fn(|| events.try_recv().ok()).last();
    assert_eq!(
        last,
        Some(AgentEvent::Disconnected {
            uid: agent,
            reason: DisconnectReason::AgentDisconnect
        })
    );
}

fn yaml(body: &str) -> AgentConfigMap {
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        String::new(),
        AgentConfigObject {
            body: Bytes::from(body.to_owned()),
            content_type: "text/yaml".into(),
            ..Default::default()
        },
    );
    config
}

fn config_status(hash: &Bytes, status: RemoteConfigStatuses) -> RemoteConfigStatus {
    RemoteConfigStatus {
        last_remote_config_hash: hash.clone(),
        status: status as i32,
        error_message: String::new(),
    }
}

#[tokio::test]
async fn rcfg_02_config_only_for_agents_that_accept_it() {
    let registry = Registry::new();
    let (conn, _outbox) = websocket();
    let agent = uid(11);
    let unknown = registry.set_remote_config(agent, yaml("a: 1")).await;
    assert!(matches!(unknown, Err(SendError::UnknownAgent(u)) if u == agent));

    let report = with_caps(full(agent, 0), AgentCapabilities::REPORTS_STATUS);
    registry.receive(&conn, &report, agent).await;
    let refused = registry.set_remote_config(agent, yaml("a: 1")).await;
    assert!(matches!(
        refused,
        Err(SendError::NotAccepted { capability, .. }) if capability == AgentCapabilities::ACCEPTS_REMOTE_CONFIG
    ));
    assert!(
        registry
            .agent(agent)
            .await
            .unwrap()
            .unwrap()
            .desired
            .remote_config
            .is_none()
    );
}

#[tokio::test]
async fn rcfg_08_config_is_pushed_tracked_and_not_resent_on_the_same_connection() {
    let registry = Registry::new();
    let agent = uid(12);
    let (conn, mut outbox, _) = connect(&registry, &full(agent, 0)).await;

    let offer = offer_yaml(&registry, agent, "a: 1").await;
    assert_eq!(offer.hash, opamp_proto::config_hash(&yaml("a: 1")));
    assert_eq!(offer.delivery, Some(Delivery::Sent));
    let pushed = next_frame(&mut outbox);
    assert_eq!(pushed.instance_uid, agent.to_bytes(), "UID-06");
    let remote = pushed.remote_config.expect("RCFG-03: pushed at once");
    assert_eq!(remote.config_hash, offer.hash, "RCFG-04: hash always set");
    let state = config_state(&registry, agent).await;
    assert_eq!(state, Some(RemoteConfigState::Pending));

    // A heartbeat sent before the agent saw the offer does not repeat it.
    let heartbeat = registry.receive(&conn, &compressed(agent, 1), agent).await;
    assert!(heartbeat.response.remote_config.is_none());

    let waiter = {
        let registry = registry.clone();
        let hash = offer.hash.clone();
        tokio::spawn(async move { registry.wait_for_remote_config(agent, &hash).await })
    };
    let mut applying = compressed(agent, 2);
    applying.remote_config_status =
        Some(config_status(&offer.hash, RemoteConfigStatuses::Applying));
    registry.receive(&conn, &applying, agent).await;
    let state = config_state(&registry, agent).await;
    assert_eq!(state, Some(RemoteConfigState::Applying));

    let mut applied = compressed(agent, 3);
    applied.remote_config_status = Some(config_status(&offer.hash, RemoteConfigStatuses::Applied));
    registry.receive(&conn, &applied, agent).await;
    assert_eq!(waiter.await.unwrap().unwrap(), RemoteConfigState::Applied);

    // Setting the same config again sends nothing: the agent has it.
    let again = offer_yaml(&registry, agent, "a: 1").await;
    assert_eq!(again.delivery, None);
    assert!(outbox.try_recv().is_err());
}

#[tokio::test]
async fn rcfg_08_mismatching_hash_is_offered_again_on_a_new_connection() {
    let registry = Registry::new();
    let agent = uid(13);
    let (first, _outbox_a, _) = connect(&registry, &full(agent, 0)).await;
    let offer = offer_yaml(&registry, agent, "b: 2").await;
    closed_by_agent(&registry, &first).await;

    // Offline agents keep their desired config: it goes with the next message.
    let (second, _outbox_b) = websocket();
    let mut report = full(agent, 0);
    report.remote_config_status = Some(config_status(
        &Bytes::from_static(b"old"),
        RemoteConfigStatuses::Applied,
    ));
    let received = registry.receive(&second, &report, agent).await;
    assert_eq!(
        received.response.remote_config.map(|r| r.config_hash),
        Some(offer.hash.clone())
    );
}

#[tokio::test]
async fn rcfg_failed_status_is_reported() {
    let registry = Registry::new();
    let agent = uid(14);
    let (conn, _outbox, _) = connect(&registry, &full(agent, 0)).await;
    let offer = offer_yaml(&registry, agent, "bad").await;
    let mut failed = compressed(agent, 1);
    let mut status = config_status(&offer.hash, RemoteConfigStatuses::Failed);
    status.error_message = "parse error".into();
    failed.remote_config_status = Some(status);
    registry.receive(&conn, &failed, agent).await;
    let outcome = registry
        .wait_for_remote_config(agent, &offer.hash)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RemoteConfigState::Failed {
            message: "parse error".into()
        }
    );
}

#[tokio::test]
async fn http_15_config_waits_for_the_next_poll() {
    let registry = Registry::new();
    let config = config();
    let peer = PeerInfo::default();
    let agent = uid(15);
    let first = registry
        .receive_http(&config, &peer, &full(agent, 0), agent)
        .await;
    assert!(first.new_session);
    assert_eq!(first.connection.transport(), TransportKind::PlainHttp);

    let offer = offer_yaml(&registry, agent, "c: 3").await;
    assert_eq!(offer.delivery, Some(Delivery::QueuedForPoll));
    let poll = registry
        .receive_http(&config, &peer, &compressed(agent, 1), agent)
        .await;
    assert!(!poll.new_session, "the session spans polls");
    assert_eq!(poll.connection, first.connection);
    assert_eq!(
        poll.received.response.remote_config.map(|r| r.config_hash),
        Some(offer.hash)
    );
    let quiet = registry
        .receive_http(&config, &peer, &compressed(agent, 2), agent)
        .await;
    assert!(quiet.received.response.remote_config.is_none());

    // Raw pushes queue on the session and merge (ERR-06).
    let delivery = registry
        .send(
            agent,
            ServerToAgent {
                flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(delivery, Delivery::QueuedForPoll);
    let pending = first
        .connection
        .take_pending()
        .expect("queued for the next poll");
    assert_eq!(pending.instance_uid, agent.to_bytes());
}

#[tokio::test(start_paused = true)]
async fn http_25_silent_http_agents_go_stale() {
    let registry = Registry::builder()
        .stale_after(Duration::from_secs(60))
        .build();
    let config = config();
    let agent = uid(16);
    let session = registry
        .receive_http(&config, &PeerInfo::default(), &full(agent, 0), agent)
        .await;
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(registry.stale_sessions(Instant::now()).is_empty());
    registry
        .receive_http(&config, &PeerInfo::default(), &compressed(agent, 1), agent)
        .await;
    stale_a_second_after(
        &registry,
        Duration::from_secs(59),
        &session.connection,
        "the poll reset the clock",
    )
    .await;

    registry
        .connection_closed(&session.connection, &DisconnectReason::Stale)
        .await;
    assert!(!registry.agent(agent).await.unwrap().unwrap().is_connected());
    assert!(registry.connected().is_empty());
}

#[tokio::test]
async fn pkg_01_cs_01_cmd_01_cus_04_offers_are_gated() {
    let registry = Registry::new();
    let agent = uid(17);
    let (conn, mut outbox, _) = connect(&registry, &full(agent, 0)).await;

    let packages = registry
        .offer_packages(agent, PackagesAvailable::default())
        .await;
    assert!(
        matches!(packages, Err(SendError::NotAccepted { capability, .. }) if capability == AgentCapabilities::ACCEPTS_PACKAGES)
    );
    let restart = registry.restart(agent).await;
    assert!(
        matches!(restart, Err(SendError::NotAccepted { capability, .. }) if capability == AgentCapabilities::ACCEPTS_RESTART_COMMAND)
    );
    let settings = ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings::default()),
        ..Default::default()
    };
    let refused = registry.offer_connection_settings(agent, settings).await;
    assert!(
        matches!(refused, Err(SendError::NotAccepted { capability, .. }) if capability == AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS)
    );
    let custom = CustomMessage {
        capability: "io.example.ping".into(),
        r#type: "ping".into(),
        data: Bytes::new(),
    };
    let refused = registry.send_custom_message(agent, custom.clone()).await;
    assert!(matches!(
        refused,
        Err(SendError::CustomCapabilityNotAnnounced { .. })
    ));
    // Also through the raw connection handle.
    let raw = conn.send(ServerToAgent {
        remote_config: None,
        command: Some(Default::default()),
        ..Default::default()
    });
    assert!(matches!(raw, Err(SendError::NotAccepted { .. })));
    assert!(outbox.try_recv().is_err(), "nothing refused went out");

    // Once announced, the same offers go through.
    let mut more = compressed(agent, 1);
    more.capabilities = (CAPS
        | AgentCapabilities::ACCEPTS_PACKAGES
        | AgentCapabilities::ACCEPTS_RESTART_COMMAND
        | AgentCapabilities::REPORTS_OWN_METRICS)
        .bits();
    more.custom_capabilities = Some(CustomCapabilities {
        capabilities: vec!["io.example.ping".into()],
    });
    registry.receive(&conn, &more, agent).await;
    let offer = registry
        .offer_packages(agent, PackagesAvailable::default())
        .await
        .unwrap();
    assert!(
        !offer.hash.is_empty(),
        "PKG-12: all_packages_hash filled in"
    );
    assert_eq!(
        next_frame(&mut outbox)
            .packages_available
            .unwrap()
            .all_packages_hash,
        offer.hash
    );
    assert_eq!(registry.restart(agent).await.unwrap(), Delivery::Sent);
    let command = next_frame(&mut outbox);
    assert!(command.command.is_some());
    assert!(command.packages_available.is_none(), "CMD-02: alone");
    assert_eq!(
        registry.send_custom_message(agent, custom).await.unwrap(),
        Delivery::Sent
    );
    assert!(next_frame(&mut outbox).custom_message.is_some());
    let metrics = ConnectionSettingsOffers {
        own_metrics: Some(TelemetryConnectionSettings::default()),
        ..Default::default()
    };
    let offer = registry
        .offer_connection_settings(agent, metrics)
        .await
        .unwrap();
    let sent = next_frame(&mut outbox).connection_settings.unwrap();
    assert_eq!(sent.hash, offer.hash, "CS-03: hash filled in");
}

#[tokio::test]
async fn pkg_14_packages_are_offered_until_the_hash_is_echoed() {
    let registry = Registry::new();
    let config = config();
    let agent = uid(18);
    let mut first = full(agent, 0);
    first.capabilities = (CAPS | AgentCapabilities::ACCEPTS_PACKAGES).bits();
    registry
        .receive_http(&config, &PeerInfo::default(), &first, agent)
        .await;
    let offer = registry
        .offer_packages(
            agent,
            PackagesAvailable {
                all_packages_hash: Bytes::from_static(b"p1"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut poll = compressed(agent, 1);
    poll.capabilities = first.capabilities;
    let reply = registry
        .receive_http(&config, &PeerInfo::default(), &poll, agent)
        .await;
    assert_eq!(
        reply
            .received
            .response
            .packages_available
            .unwrap()
            .all_packages_hash,
        offer.hash
    );

    let mut statuses = compressed(agent, 2);
    statuses.capabilities = first.capabilities;
    statuses.package_statuses = Some(PackageStatuses {
        server_provided_all_packages_hash: offer.hash.clone(),
        ..Default::default()
    });
    let reply = registry
        .receive_http(&config, &PeerInfo::default(), &statuses, agent)
        .await;
    assert!(reply.received.response.packages_available.is_none());
}

#[tokio::test]
async fn ac_04_full_component_list_requested_once_per_hash() {
    let registry = Registry::new();
    let (conn, _outbox) = websocket();
    let agent = uid(19);
    let caps = (CAPS | AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS).bits();
    let mut first = full(agent, 0);
    first.capabilities = caps;
    first.available_components = Some(AvailableComponents {
        hash: Bytes::from_static(b"h1"),
        components: Default::default(),
    });
    let flags = |received: &Received| ServerToAgentFlags::from_bits_retain(received.response.flags);
    let received = registry.receive(&conn, &first, agent).await;
    assert!(flags(&received).contains(ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS));

    let mut hash_only = compressed(agent, 1);
    hash_only.capabilities = caps;
    hash_only.available_components = first.available_components.clone();
    let received = registry.receive(&conn, &hash_only, agent).await;
    assert!(
        !flags(&received).contains(ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS),
        "asked once"
    );

    let mut listed = compressed(agent, 2);
    listed.capabilities = caps;
    let mut components = AvailableComponents {
        hash: Bytes::from_static(b"h1"),
        components: Default::default(),
    };
    components
        .components
        .insert("otlp".into(), ComponentDetails::default());
    listed.available_components = Some(components.clone());
    registry.receive(&conn, &listed, agent).await;
    // Later hash-only reports keep the list (AC-05).
    hash_only.sequence_num = 3;
    registry.receive(&conn, &hash_only, agent).await;
    let record = registry.agent(agent).await.unwrap().unwrap();
    assert_eq!(record.status.available_components, Some(components));
}

#[tokio::test]
async fn send_to_unknown_or_offline_agents_fails_cleanly() {
    let registry = Registry::new();
    let agent = uid(20);
    let unknown = registry.send(agent, ServerToAgent::default()).await;
    assert!(matches!(unknown, Err(SendError::UnknownAgent(_))));
    let (conn, _outbox, _) = connect(&registry, &full(agent, 0)).await;
    registry
        .connection_closed(&conn, &DisconnectReason::IdleTimeout)
        .await;
    let offline = registry.send(agent, ServerToAgent::default()).await;
    assert!(matches!(offline, Err(SendError::NotConnected(_))));
}

/// A bus that records what it is asked to forward.
#[derive(Default, Clone)]
struct RecordingBus {
    forwarded: Arc<StdMutex<Vec<(InstanceUid, ServerToAgent)>>>,
    inbox: Arc<StdMutex<Option<BusInbox>>>,
}

impl MessageBus for RecordingBus {
    fn forward(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        self.forwarded.lock().unwrap().push((uid, message));
        Box::pin(async { Ok(()) })
    }

    fn attach(&self, inbox: BusInbox) {
        *self.inbox.lock().unwrap() = Some(inbox);
    }
}

#[tokio::test]
async fn messages_for_agents_on_other_instances_go_through_the_bus() {
    let store = Arc::new(MemoryStore::new());
    let bus = RecordingBus::default();
    // Two instances sharing one store.
    let here = Registry::builder()
        .store(store.clone())
        .bus(bus.clone())
        .build();
    let there_bus = RecordingBus::default();
    let there = Registry::builder()
        .store(store)
        .bus(there_bus.clone())
        .build();

    let agent = uid(21);
    let (conn, mut outbox) = websocket();
    there.receive(&conn, &full(agent, 0), agent).await;

    let offer = here.set_remote_config(agent, yaml("d: 4")).await.unwrap();
    assert_eq!(offer.delivery, Some(Delivery::Forwarded));
    let (to, message) = bus.forwarded.lock().unwrap().pop().expect("forwarded");
    assert_eq!(to, agent);

    // The other instance's bus hands it to its inbox.
    let inbox = there_bus.inbox.lock().unwrap().clone().expect("attached");
    assert_eq!(inbox.deliver(agent, message).await.unwrap(), Delivery::Sent);
    assert_eq!(
        next_frame(&mut outbox).remote_config.unwrap().config_hash,
        offer.hash
    );
    // An inbox never forwards again.
    let elsewhere = inbox.deliver(uid(99), ServerToAgent::default()).await;
    assert!(matches!(elsewhere, Err(SendError::NotConnected(_))));
}

struct BrokenStore;

impl AgentStore for BrokenStore {
    fn load(&self, _uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        Box::pin(async { Err(StoreError::backend("disk on fire")) })
    }
    fn save(&self, _record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::backend("disk on fire")) })
    }
    fn remove(&self, _uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::backend("disk on fire")) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        Box::pin(async { Err(StoreError::backend("disk on fire")) })
    }
}

#[tokio::test]
async fn a_failing_store_asks_for_full_state_so_nothing_is_lost() {
    let registry = Registry::builder().store(BrokenStore).build();
    let agent = uid(22);
    let (conn, _outbox, received) = connect(&registry, &full(agent, 0)).await;
    assert!(asks_full_state(&received));
    assert_eq!(registry.connection(agent), Some(conn), "still served");
    assert!(registry.agents().await.is_err());
}

#[tokio::test]
async fn untracked_registry_still_tracks_connections() {
    let registry = Registry::builder().track_state(false).build();
    let agent = uid(23);
    let (conn, _outbox, received) = connect(&registry, &compressed(agent, 5)).await;
    assert_eq!(received.response.flags, 0, "no sequence bookkeeping");
    assert_eq!(registry.connection(agent), Some(conn));
    assert!(registry.agent(agent).await.unwrap().is_none());
}

/// Counts the calls that reach the store.
#[derive(Clone, Default)]
struct CountingStore {
    records: Arc<MemoryStore>,
    loads: Arc<std::sync::atomic::AtomicUsize>,
    saves: Arc<std::sync::atomic::AtomicUsize>,
    checks: Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingStore {
    fn loads(&self) -> usize {
        self.loads.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn saves(&self) -> usize {
        self.saves.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn checks(&self) -> usize {
        self.checks.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// The record as the store has it, without the registry's live view.
    async fn stored(&self, uid: InstanceUid) -> AgentRecord {
        self.records.load(uid).await.unwrap().expect("stored")
    }
}

impl AgentStore for CountingStore {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.records.load(uid)
    }
    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.records.save(record)
    }
    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        self.records.remove(uid)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        self.records.list()
    }
    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.records.contains(uid)
    }
}

#[tokio::test]
async fn bare_heartbeats_skip_the_store_and_status_changes_do_not() {
    let store = CountingStore::default();
    let registry = Registry::builder().store(store.clone()).build();
    let agent = uid(24);
    let (conn, _outbox, _) = connect(&registry, &full(agent, 0)).await;
    assert_eq!((store.loads(), store.saves()), (1, 1));

    // SEQ-02: only uid, sequence_num and capabilities: nothing to store.
    for sequence in 1..=3 {
        let received = registry
            .receive(&conn, &compressed(agent, sequence), agent)
            .await;
        assert_eq!(received.response.flags, 0);
        assert_eq!(received.response.instance_uid, agent.to_bytes());
    }
    assert_eq!(
        (store.loads(), store.saves()),
        (1, 1),
        "heartbeats stay in memory"
    );
    assert_eq!(store.checks(), 3, "each checks the record still exists");
    assert_eq!(store.stored(agent).await.last_sequence_num, Some(0));
    let live_view = registry.agent(agent).await.unwrap().unwrap();
    assert_eq!(
        live_view.last_sequence_num,
        Some(3),
        "the registry shows the live value"
    );
    let listed = registry.agents().await.unwrap();
    assert_eq!(listed[0].last_sequence_num, Some(3));

    // A status change goes through the store, with the bookkeeping.
    let mut unhealthy = compressed(agent, 4);
    unhealthy.health = Some(ComponentHealth::default());
    registry.receive(&conn, &unhealthy, agent).await;
    assert_eq!(store.saves(), 2);
    assert_eq!(store.stored(agent).await.last_sequence_num, Some(4));

    // So do new capabilities, and a gap (SEQ-05), and the baseline after it.
    let mut more = compressed(agent, 5);
    more.capabilities |= AgentCapabilities::REPORTS_EFFECTIVE_CONFIG.bits();
    registry.receive(&conn, &more, agent).await;
    assert_eq!(store.saves(), 3);
    assert!(asks(&registry, &conn, &more_at(&more, 9)).await);
    assert_eq!(store.saves(), 4);
    registry.receive(&conn, &more_at(&more, 10), agent).await;
    assert_eq!(store.saves(), 5);
    registry.receive(&conn, &more_at(&more, 11), agent).await;
    assert_eq!(store.saves(), 5, "in order again: back in memory");

    // A new desired state is offered with the next heartbeat (RCFG-08)
    // over plain HTTP, so that heartbeat goes through the store.
    let (http, peer) = (config(), PeerInfo::default());
    let polled = uid(25);
    registry
        .receive_http(&http, &peer, &full(polled, 0), polled)
        .await;
    registry
        .receive_http(&http, &peer, &compressed(polled, 1), polled)
        .await;
    let saves = store.saves();
    let offer = offer_yaml(&registry, polled, "p: 1").await;
    assert_eq!(offer.delivery, Some(Delivery::QueuedForPoll));
    let poll = registry
        .receive_http(&http, &peer, &compressed(polled, 2), polled)
        .await;
    let offered = poll.received.response.remote_config.expect("offered");
    assert_eq!(offered.config_hash, offer.hash);
    assert_eq!(store.saves(), saves + 2, "the offer and the poll");

    // Disconnecting saves what was kept in memory (MSG-07).
    closed_by_agent(&registry, &conn).await;
    let stored = store.stored(agent).await;
    assert_eq!(stored.last_sequence_num, Some(11));
    assert!(stored.connection.is_none());

    // SEQ-07: a record lost behind the registry's back is noticed at the
    // next bare heartbeat (stores answer `contains` from memory).
    let (other, _outbox) = websocket();
    let lost = uid(26);
    registry.receive(&other, &full(lost, 0), lost).await;
    assert!(!asks_full_state(
        &registry.receive(&other, &compressed(lost, 1), lost).await
    ));
    store.records.remove(lost).await.unwrap();
    assert!(asks_full_state(
        &registry.receive(&other, &compressed(lost, 2), lost).await
    ));
}

fn more_at(message: &AgentToServer, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        sequence_num,
        ..message.clone()
    }
}

const SETTINGS_CAPS: AgentCapabilities =
    CAPS.union(AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS);

fn heartbeat_settings(seconds: u64) -> ConnectionSettingsOffers {
    ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings {
            destination_endpoint: "ws://127.0.0.1:1/v1/opamp".into(),
            heartbeat_interval_seconds: seconds,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Offers [`heartbeat_settings`] of `seconds` to `agent`, which takes them.
async fn offer_settings(registry: &Registry, agent: InstanceUid, seconds: u64) -> Offer {
    registry
        .offer_connection_settings(agent, heartbeat_settings(seconds))
        .await
        .unwrap()
}

/// An agent like the Collector's supervisor: accepts OpAMP connection
/// settings, cannot report their status, and applies every offer by
/// reconnecting. The offer is complete once delivered (CS-06: the agent
/// shows it took the settings by reconnecting with them); re-offering it on
/// the reconnect it causes would loop forever.
#[tokio::test]
async fn cs_06_settings_reach_a_non_reporting_agent_once_not_on_every_reconnect() {
    let registry = Registry::builder().reconnect_guard(None).build();
    let agent = uid(40);
    let (first, mut outbox, _) =
        connect(&registry, &with_caps(full(agent, 0), SETTINGS_CAPS)).await;
    let offer = offer_settings(&registry, agent, 7).await;
    assert!(offer.delivery.is_some(), "pushed over the live WebSocket");
    assert_eq!(
        next_frame(&mut outbox).connection_settings.unwrap().hash,
        offer.hash
    );
    // The agent applies it by reconnecting, many times over.
    let mut previous = first;
    let mut latest_outbox = outbox;
    for round in 1..=10u64 {
        closed_by_agent(&registry, &previous).await;
        let (again, outbox) = websocket();
        latest_outbox = outbox;
        let reply = registry
            .receive(&again, &with_caps(full(agent, 0), SETTINGS_CAPS), agent)
            .await;
        assert!(
            reply.response.connection_settings.is_none(),
            "round {round}: the delivered offer is not sent again"
        );
        previous = again;
    }
    let record = registry.agent(agent).await.unwrap().unwrap();
    assert_eq!(
        record.connection_settings_hash_in_effect(),
        Some(&offer.hash)
    );
    // Setting the same offer again is a no-op; a different one goes out once.
    let same = offer_settings(&registry, agent, 7).await;
    assert_eq!(same.delivery, None);
    let newer = offer_settings(&registry, agent, 9).await;
    assert!(newer.delivery.is_some());
    assert!(next_frame(&mut latest_outbox).connection_settings.is_some());
}

/// The same holds when the agent was offline when the offer was made: it
/// gets it with its next connection, and not with the one after.
#[tokio::test]
async fn cs_06_offline_non_reporting_agent_gets_the_offer_on_one_connection_only() {
    let registry = Registry::builder().reconnect_guard(None).build();
    let agent = uid(41);
    let (first, _outbox, _) = connect(&registry, &with_caps(full(agent, 0), SETTINGS_CAPS)).await;
    closed_by_agent(&registry, &first).await;
    let offer = offer_settings(&registry, agent, 11).await;
    assert_eq!(offer.delivery, None, "offline");
    let (second, _outbox, reply) =
        connect(&registry, &with_caps(full(agent, 1), SETTINGS_CAPS)).await;
    assert_eq!(reply.response.connection_settings.unwrap().hash, offer.hash);
    closed_by_agent(&registry, &second).await;
    let (_third, _outbox, reply) =
        connect(&registry, &with_caps(full(agent, 0), SETTINGS_CAPS)).await;
    assert!(reply.response.connection_settings.is_none());
}

/// An agent that reports connection-settings status keeps today's
/// behaviour: the offer goes out on each new connection until the agent
/// reports its hash (CS-10/11).
#[tokio::test]
async fn cs_11_reporting_agent_is_offered_again_until_it_reports_the_hash() {
    let registry = Registry::builder().reconnect_guard(None).build();
    let agent = uid(42);
    let caps = SETTINGS_CAPS.union(AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS);
    let (first, mut outbox, _) = connect(&registry, &with_caps(full(agent, 0), caps)).await;
    let offer = offer_settings(&registry, agent, 13).await;
    let _ = next_frame(&mut outbox);
    closed_by_agent(&registry, &first).await;
    let (second, _outbox, reply) = connect(&registry, &with_caps(full(agent, 0), caps)).await;
    assert_eq!(
        reply.response.connection_settings.unwrap().hash,
        offer.hash,
        "not reported yet: offered again"
    );
    let mut applied = with_caps(compressed(agent, 1), caps);
    applied.connection_settings_status = Some(opamp_proto::ConnectionSettingsStatus {
        last_connection_settings_hash: offer.hash.clone(),
        status: opamp_proto::ConnectionSettingsStatuses::Applied as i32,
        error_message: String::new(),
    });
    registry.receive(&second, &applied, agent).await;
    closed_by_agent(&registry, &second).await;
    let (_third, _outbox, reply) = connect(&registry, &with_caps(full(agent, 0), caps)).await;
    assert!(reply.response.connection_settings.is_none(), "reported");
}

fn retry_hint(received: &Received) -> Option<Duration> {
    let error = received.response.error_response.as_ref()?;
    assert_eq!(
        error.r#type(),
        opamp_proto::ServerErrorResponseType::Unavailable
    );
    match &error.details {
        Some(opamp_proto::server_error_response::Details::RetryInfo(info)) => {
            Some(Duration::from_nanos(info.retry_after_nanoseconds))
        }
        _ => None,
    }
}

/// Any agent stuck in a reconnect loop is slowed down: past the limit its
/// new connections are answered `UNAVAILABLE` with a retry hint (WS-22)
/// that doubles with each offence and resets after a quiet spell.
#[tokio::test(start_paused = true)]
async fn ws_22_reconnect_loop_is_throttled_with_growing_hints() {
    let guard = ReconnectGuard::new(3, Duration::from_secs(60))
        .backoff(Duration::from_secs(5), Duration::from_secs(15));
    let registry = Registry::builder().reconnect_guard(Some(guard)).build();
    let mut events = registry.subscribe();
    let agent = uid(43);
    let connect = |sequence: u64| {
        let registry = registry.clone();
        async move {
            let (conn, _outbox, received) = connect(&registry, &full(agent, sequence)).await;
            if received.disposition == Disposition::Continue {
                closed_by_agent(&registry, &conn).await;
            }
            received
        }
    };
    for n in 0..3 {
        assert_eq!(connect(n).await.disposition, Disposition::Continue);
    }
    let refused = connect(3).await;
    assert_eq!(
        refused.disposition,
        Disposition::Throttled(Duration::from_secs(5))
    );
    assert_eq!(retry_hint(&refused), Some(Duration::from_secs(5)));
    assert_eq!(refused.response.instance_uid, agent.to_bytes());
    // Coming back early is refused with what is left of the wait.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(retry_hint(&connect(4).await), Some(Duration::from_secs(3)));
    // After the wait, a fresh allowance; the next offence waits twice as long,
    // then the hint stops at the maximum.
    tokio::time::advance(Duration::from_secs(3)).await;
    for n in 5..8 {
        assert_eq!(connect(n).await.disposition, Disposition::Continue);
    }
    assert_eq!(retry_hint(&connect(8).await), Some(Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(10)).await;
    for n in 9..12 {
        assert_eq!(connect(n).await.disposition, Disposition::Continue);
    }
    assert_eq!(
        retry_hint(&connect(12).await),
        Some(Duration::from_secs(15))
    );
    // A quiet spell forgives.
    tokio::time::advance(Duration::from_secs(15 + 120)).await;
    for n in 13..16 {
        assert_eq!(connect(n).await.disposition, Disposition::Continue);
    }
    assert_eq!(retry_hint(&connect(16).await), Some(Duration::from_secs(5)));
    // The throttling is visible to the application.
    let mut throttled = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, AgentEvent::Throttled { uid, .. } if uid == agent) {
            throttled += 1;
        }
    }
    assert_eq!(throttled, 5);
    // Other agents are not affected.
    let (other, _outbox) = websocket();
    let received = registry.receive(&other, &full(uid(44), 0), uid(44)).await;
    assert_eq!(received.disposition, Disposition::Continue);
}

/// HTTP-13: the stale timeout follows each agent's own polling interval: a
/// 1 s poller that stops is stale within a few seconds, while a slow poller
/// keeps the ceiling, and an agent not yet seen polling twice gets the
/// ceiling too.
#[tokio::test(start_paused = true)]
async fn http_13_a_fast_poller_goes_stale_within_a_few_of_its_intervals() {
    let registry = Registry::builder()
        .stale_after(Duration::from_secs(90))
        .stale_floor(Duration::from_secs(3))
        .build();
    let config = config();
    let fast = uid(60);
    let slow = uid(61);
    let fast_session = registry
        .receive_http(&config, &PeerInfo::default(), &full(fast, 0), fast)
        .await;
    registry
        .receive_http(&config, &PeerInfo::default(), &full(slow, 0), slow)
        .await;
    for n in 1..=5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        registry
            .receive_http(&config, &PeerInfo::default(), &compressed(fast, n), fast)
            .await;
    }
    // The fast poller stops.
    stale_a_second_after(
        &registry,
        Duration::from_secs(2),
        &fast_session.connection,
        "three missed polls of 1 s",
    )
    .await;
    // The other agent has polled once only: the ceiling applies.
    tokio::time::advance(Duration::from_secs(80)).await;
    assert_eq!(registry.stale_sessions(Instant::now()).len(), 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(registry.stale_sessions(Instant::now()).len(), 2);
    assert!(registry.stale_sweep_interval() <= Duration::from_secs(1));
}

/// UID-09 over plain HTTP, through the registry: the second agent gets a new
/// uid and a session of its own, so pushes for the first never reach it.
#[tokio::test]
async fn uid_09_two_http_agents_sharing_a_uid_get_separate_sessions() {
    let registry = Registry::new();
    let (config, peer) = (config(), PeerInfo::default());
    let agent = uid(62);
    let with_host = |sequence: u64, host: &str| {
        let mut message = full(agent, sequence);
        message
            .agent_description
            .as_mut()
            .unwrap()
            .identifying_attributes
            .push(opamp_proto::KeyValue::new("host.name", host));
        message
    };
    let first = registry
        .receive_http(&config, &peer, &with_host(0, "alpha"), agent)
        .await;
    registry
        .receive_http(&config, &peer, &compressed(agent, 1), agent)
        .await;
    let second = registry
        .receive_http(&config, &peer, &with_host(0, "beta"), agent)
        .await;
    let new_uid = InstanceUid::try_from(
        &second
            .received
            .response
            .agent_identification
            .as_ref()
            .expect("UID-09: a new uid for the second agent")
            .new_instance_uid,
    )
    .unwrap();
    assert_eq!(second.received.uid, new_uid);
    assert!(second.new_session);
    assert_ne!(second.connection, first.connection, "a session of its own");
    assert_eq!(registry.connection(agent), Some(first.connection.clone()));
    assert_eq!(
        registry.connection(new_uid),
        Some(second.connection.clone())
    );
    // The second agent polls with its new uid from now on: its own session.
    let again = registry
        .receive_http(&config, &peer, &compressed(new_uid, 1), new_uid)
        .await;
    assert_eq!(again.connection, second.connection);
    assert!(!again.new_session);
}
