//! `PgBus` between two server instances in one process: two registries,
//! two backends on one database, real WebSocket agents.
//!
//! The registry claims an agent for its instance when the agent's
//! connection starts (`MessageBus::agent_connected`); tests that play a
//! second instance without a registry claim through its bus directly.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use opamp_proto::{InstanceUid, Message, ServerToAgent};
use opamp_server::{AgentEvent, MessageBus, Registry, TransportKind};
use opamp_server_postgres::{Config, PgBus};
use support::*;

/// One server instance: backend, registry and a listening OpAMP endpoint.
struct Instance {
    bus: PgBus,
    registry: Registry,
    addr: SocketAddr,
}

async fn instance(config: &Config, name: &str) -> Instance {
    let backend = backend(config, name).await;
    let (registry, addr) = serve_backend(&backend).await;
    let bus = backend.bus();
    Instance {
        bus,
        registry,
        addr,
    }
}

/// Connects an agent to `instance` and reports; the registry claims it there
/// (`MessageBus::agent_connected`).
async fn connect_agent(instance: &Instance, uid: InstanceUid) -> (Ws, i64) {
    let mut events = instance.registry.subscribe();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", instance.addr))
        .await
        .expect("WebSocket upgrade");
    let reply = ws_exchange(&mut ws, &report(uid, 0)).await;
    assert_eq!(reply.instance_uid, uid.to_bytes());
    loop {
        if let AgentEvent::Connected {
            uid: connected,
            transport,
        } = events.recv().await.unwrap()
        {
            if connected == uid {
                let _ = transport;
                let epoch = instance.bus.epoch(uid).expect("claimed by the registry");
                return (ws, epoch);
            }
        }
    }
}

/// A push as another instance would have written it, without the NOTIFY.
async fn insert_row(config: &Config, uid: InstanceUid, to: &str, epoch: i64, body: &str) -> i64 {
    let message = ServerToAgent {
        instance_uid: uid.to_bytes(),
        remote_config: Some(opamp_proto::AgentRemoteConfig {
            config: Some(config_map(body)),
            config_hash: vec![0xee].into(),
        }),
        ..Default::default()
    };
    sql(config)
        .await
        .query_one(
            "INSERT INTO opamp_outbox (uid, instance, epoch, any_instance, message)
             VALUES ($1, $2, $3, false, $4) RETURNING id",
            &[&uid.to_uuid(), &to, &epoch, &message.encode_to_vec()],
        )
        .await
        .unwrap()
        .get(0)
}

async fn outbox_rows(config: &Config) -> i64 {
    sql(config)
        .await
        .query_one("SELECT count(*) FROM opamp_outbox", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn forward_reaches_the_owning_instance_and_heartbeats_write_nothing() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = instance(&config, "a").await;
    let b = instance(&config, "b").await;
    let agent = InstanceUid::from_array([1; 16]);
    let (mut ws, _epoch) = connect_agent(&a, agent).await;

    // Desired state set through b travels to a's WebSocket at once.
    set_config_forwarded(&b.registry, agent, "from: b\n").await;
    let pushed = ws_recv(&mut ws).await;
    assert_eq!(body_of(&pushed), "from: b\n");
    assert_eq!(pushed.instance_uid, agent.to_bytes());
    assert_eq!(outbox_rows(&config).await, 0, "delivered rows are deleted");

    // Bare heartbeats to a leave the row alone.
    let version = || async {
        let query = "SELECT version FROM opamp_agents WHERE uid = $1";
        agent_row(&config, query, agent).await.get::<_, i64>(0)
    };
    let before = version().await;
    for sequence_num in 1..=3 {
        let reply = ws_exchange(&mut ws, &heartbeat(agent, sequence_num)).await;
        assert_eq!(reply.instance_uid, agent.to_bytes());
    }
    let after = version().await;
    assert_eq!(before, after, "bare heartbeats write nothing");
}

#[tokio::test]
async fn without_a_live_owner_there_is_no_route() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = backend(&config, "a").await;
    let b = backend(&config, "b").await;
    let agent = InstanceUid::from_array([2; 16]);
    let bus_b = b.bus();
    let error = bus_b
        .forward(agent, ServerToAgent::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, opamp_server::BusError::NoRoute(uid) if uid == agent),
        "{error}"
    );

    let epoch = a
        .bus()
        .claim(agent, TransportKind::WebSocket)
        .await
        .unwrap();
    bus_b
        .forward(agent, ServerToAgent::default())
        .await
        .unwrap();
    assert!(a.bus().release(agent, epoch).await.unwrap());
    assert!(matches!(
        bus_b.forward(agent, ServerToAgent::default()).await,
        Err(opamp_server::BusError::NoRoute(_))
    ));

    // An owner whose lease ran out (its instance died) holds nothing.
    a.bus()
        .claim(agent, TransportKind::WebSocket)
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    let update = "UPDATE opamp_agent_owner SET instance = 'a' WHERE uid = $1";
    agent_rows(&config, update, agent).await;
    assert!(matches!(
        bus_b.forward(agent, ServerToAgent::default()).await,
        Err(opamp_server::BusError::NoRoute(_))
    ));
}

#[tokio::test]
async fn a_listener_that_was_disconnected_rereads_missed_rows() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = instance(&config, "a").await;
    let agent = InstanceUid::from_array([3; 16]);
    let (mut ws, epoch) = connect_agent(&a, agent).await;

    // A push whose NOTIFY was lost: nothing reads it while the listener stays.
    insert_row(&config, agent, "a", epoch, "missed: true\n").await;
    assert_eq!(outbox_rows(&config).await, 1);

    let killed: Vec<bool> = sql(&config)
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'opamp-listener:a' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(killed, vec![true], "a's listener connection was cut");

    // The reconnected listener re-reads the outbox and delivers.
    let pushed = ws_recv(&mut ws).await;
    assert_eq!(body_of(&pushed), "missed: true\n");
    assert_eq!(outbox_rows(&config).await, 0);
}

#[tokio::test]
async fn a_row_for_a_stale_epoch_is_never_delivered() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = instance(&config, "a").await;
    let b = instance(&config, "b").await;
    let agent = InstanceUid::from_array([4; 16]);
    let (mut ws, first) = connect_agent(&a, agent).await;

    // The agent is claimed by b (a newer epoch) while a's connection is
    // still open; a push addressed to a's old epoch then arrives at a.
    let second = b.bus.claim(agent, TransportKind::WebSocket).await.unwrap();
    assert!(second > first);
    let stale = insert_row(&config, agent, "a", first, "stale: true\n").await;
    sql(&config)
        .await
        .execute("SELECT pg_notify('opamp_a', $1)", &[&stale.to_string()])
        .await
        .unwrap();

    // a claims the agent back; a fresh push through b reaches it, and it is
    // the first thing the agent gets: the stale row was dropped.
    let third = a.bus.claim(agent, TransportKind::WebSocket).await.unwrap();
    assert!(third > second);
    set_config_forwarded(&b.registry, agent, "fresh: true\n").await;
    let pushed = ws_recv(&mut ws).await;
    assert_eq!(body_of(&pushed), "fresh: true\n");
    eventually("the outbox to empty", || async {
        outbox_rows(&config).await == 0
    })
    .await;
}

/// Two instances claiming the same agent: the newer epoch wins and the
/// connection under the older claim is closed as soon as it tries to write.
#[tokio::test]
async fn the_connection_under_an_older_claim_is_closed() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = instance(&config, "a").await;
    let b = backend(&config, "b").await;
    let agent = InstanceUid::from_array([8; 16]);
    let (mut ws, first) = connect_agent(&a, agent).await;
    let second = b
        .bus()
        .claim(agent, TransportKind::WebSocket)
        .await
        .unwrap();
    assert!(second > first);
    let mut events = a.registry.subscribe();
    // A status change on the old connection must be saved, which the newer
    // claim refuses: a closes the connection.
    let mut changed = heartbeat(agent, 1);
    changed.health = Some(opamp_proto::ComponentHealth {
        healthy: false,
        ..Default::default()
    });
    ws_send(&mut ws, &changed).await;
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("ended without a Close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a closes the older connection");
    assert_eq!(closed.map(|frame| u16::from(frame.code)), Some(1000));
    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(AgentEvent::Disconnected { uid, reason }) = events.recv().await {
                if uid == agent {
                    break reason;
                }
            }
        }
    })
    .await
    .expect("a disconnected event");
    assert_eq!(reason, opamp_server::DisconnectReason::Replaced);
    assert_eq!(b.bus().epoch(agent), Some(second), "b keeps its claim");
}

#[tokio::test]
async fn a_newer_claim_wins() {
    let Some(config) = fresh_database().await else {
        return;
    };
    // Backends without registries: rows addressed to them stay to be seen.
    let a = backend(&config, "a").await;
    let b = backend(&config, "b").await;
    let c = backend(&config, "c").await;
    let agent = InstanceUid::from_array([5; 16]);
    let first = a
        .bus()
        .claim(agent, TransportKind::WebSocket)
        .await
        .unwrap();
    let second = b
        .bus()
        .claim(agent, TransportKind::WebSocket)
        .await
        .unwrap();
    assert_eq!(second, first + 1);

    c.bus()
        .forward(agent, ServerToAgent::default())
        .await
        .unwrap();
    let client = sql(&config).await;
    let row = client
        .query_one("SELECT instance, epoch FROM opamp_outbox", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "b");
    assert_eq!(row.get::<_, i64>(1), second);

    assert!(
        !a.bus().release(agent, first).await.unwrap(),
        "a's claim is stale"
    );
    let query = "SELECT instance, epoch FROM opamp_agent_owner WHERE uid = $1";
    let owner = agent_row(&config, query, agent).await;
    assert_eq!(text(&owner, 0).as_deref(), Some("b"));
    assert_eq!(owner.get::<_, i64>(1), second);
    assert_eq!(a.bus().epoch(agent), None);
    assert_eq!(b.bus().epoch(agent), Some(second));

    // Releasing keeps the epoch: the next claim continues from it.
    assert!(b.bus().release(agent, second).await.unwrap());
    assert_eq!(
        a.bus()
            .claim(agent, TransportKind::WebSocket)
            .await
            .unwrap(),
        second + 1
    );
}

#[tokio::test]
async fn pushes_for_plain_http_agents_wait_for_the_next_poll_wherever_it_lands() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = backend(&config, "a").await;
    let b = backend(&config, "b").await;
    let c = backend(&config, "c").await;
    let agent = InstanceUid::from_array([6; 16]);
    let marked = |n: u64| ServerToAgent {
        instance_uid: agent.to_bytes(),
        flags: n,
        ..Default::default()
    };

    // The agent polls a; c pushes; the next poll lands on b.
    a.bus()
        .claim(agent, TransportKind::PlainHttp)
        .await
        .unwrap();
    assert_eq!(
        a.bus().take_pending(agent).await.unwrap(),
        vec![],
        "nothing yet"
    );
    c.bus().forward(agent, marked(1)).await.unwrap();
    c.bus().forward(agent, marked(2)).await.unwrap();
    b.bus()
        .claim(agent, TransportKind::PlainHttp)
        .await
        .unwrap();
    assert_eq!(
        b.bus().take_pending(agent).await.unwrap(),
        vec![marked(1), marked(2)]
    );
    assert_eq!(
        b.bus().take_pending(agent).await.unwrap(),
        vec![],
        "taken once"
    );

    // A push now is signalled to b, the owner; a's older claim takes nothing.
    c.bus().forward(agent, marked(3)).await.unwrap();
    assert_eq!(a.bus().take_pending(agent).await.unwrap(), vec![]);
    // The signal reaches b asynchronously; until then b's poll finds nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut taken = Vec::new();
    while taken.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never took the push"
        );
        taken = b.bus().take_pending(agent).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(taken, vec![marked(3)]);
    assert_eq!(outbox_rows(&config).await, 0);
}

#[tokio::test]
async fn the_old_instance_closing_late_does_not_mark_a_moved_agent_disconnected() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let a = instance(&config, "a").await;
    let b = instance(&config, "b").await;
    let agent = InstanceUid::from_array([7; 16]);
    let (ws_a, first) = connect_agent(&a, agent).await;

    // The agent comes back through b before a notices its old connection died.
    let mut events_b = b.registry.subscribe();
    let (mut ws_b, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", b.addr))
        .await
        .expect("WebSocket upgrade");
    ws_exchange(&mut ws_b, &heartbeat(agent, 1)).await;
    loop {
        if let AgentEvent::Connected { uid, transport } = events_b.recv().await.unwrap() {
            if uid == agent {
                let _ = transport;
                assert!(b.bus.epoch(uid).expect("claimed by the registry") > first);
                break;
            }
        }
    }

    // Now a's connection ends: a saves "not connected", which must not stick.
    let mut events_a = a.registry.subscribe();
    drop(ws_a);
    loop {
        if let AgentEvent::Disconnected { uid, .. } = events_a.recv().await.unwrap() {
            if uid == agent {
                break;
            }
        }
    }
    let query = "SELECT transport, connected_instance FROM opamp_agents WHERE uid = $1";
    let row = agent_row(&config, query, agent).await;
    assert_eq!(text(&row, 0).as_deref(), Some("websocket"));
    assert_eq!(text(&row, 1).as_deref(), Some("b"));
    let record = b.registry.agent(agent).await.unwrap().unwrap();
    assert!(record.is_connected(), "b's view stands");
}
