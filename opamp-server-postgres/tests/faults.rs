//! Faults: the database restarts while two server instances serve agents.
//!
//! The test owns a throw-away cluster (`support::Cluster`) so that it can
//! stop and start it. Instance `a` reaches the database through a TCP
//! proxy the test can hold closed, which makes "a's listener is not
//! connected while the push is written" certain instead of a race with its
//! reconnect backoff.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opamp_proto::{AgentDescription, AgentToServer, InstanceUid, ServerToAgentFlags};
use opamp_server::{Delivery, Registry};
use opamp_server_postgres::{Config, PgBackend};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A TCP proxy in front of the database. While closed, it cuts every
/// connection through it and refuses new ones at once (they connect and are
/// dropped), like a network partition the instance notices.
struct Gate {
    port: u16,
    open: watch::Sender<bool>,
}

impl Gate {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let gate = open.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut open = gate.subscribe();
                if !*open.borrow_and_update() {
                    continue; // dropped: connection closed
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

struct Instance {
    backend: PgBackend,
    registry: Registry,
    addr: SocketAddr,
}

async fn instance(config: &Config, name: &str) -> Instance {
    let backend = PgBackend::builder(config.clone(), name)
        .pool_size(3)
        // Longer than the outage: the instances stay owners throughout.
        .lease(Duration::from_secs(120))
        .connect()
        .await
        .expect("backend connects");
    let (registry, addr) = serve_backend(&backend).await;
    Instance {
        backend,
        registry,
        addr,
    }
}

/// A WebSocket agent that heartbeats every 50 ms on its own, answers
/// `ReportFullState` with a full report, and records what it receives.
struct Agent {
    uid: InstanceUid,
    /// Messages received from the server.
    received: Arc<AtomicU64>,
    /// Remote config bodies received.
    configs: Arc<Mutex<Vec<String>>>,
    /// The service version it reports; changing it makes the next message
    /// a full report (a status change).
    version: Arc<Mutex<String>>,
    changed: Arc<AtomicBool>,
}

impl Agent {
    async fn connect(instance: &Instance, uid: InstanceUid) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/opamp", instance.addr))
            .await
            .expect("WebSocket upgrade");
        let (mut sink, mut stream) = ws.split();
        let received = Arc::new(AtomicU64::new(0));
        let configs = Arc::new(Mutex::new(Vec::new()));
        let version = Arc::new(Mutex::new("1.0".to_owned()));
        // The first message is a full report.
        let full_state = Arc::new(AtomicBool::new(true));
        let changed = Arc::new(AtomicBool::new(false));
        {
            let (received, configs, full_state) =
                (received.clone(), configs.clone(), full_state.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let WsMessage::Binary(data) = message else {
                        continue;
                    };
                    let message: opamp_proto::ServerToAgent = opamp_transport::decode_frame(
                        data,
                        usize::MAX,
                        opamp_transport::HeaderlessFrames::Reject,
                    )
                    .expect("valid frame");
                    if ServerToAgentFlags::from_bits_retain(message.flags)
                        .contains(ServerToAgentFlags::REPORT_FULL_STATE)
                    {
                        full_state.store(true, Ordering::SeqCst);
                    }
                    if message.remote_config.is_some() {
                        configs.lock().unwrap().push(body_of(&message));
                    }
                    received.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        {
            let (version, changed) = (version.clone(), changed.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(50));
                for sequence_num in 0.. {
                    ticks.tick().await;
                    let full = full_state.swap(false, Ordering::SeqCst)
                        | changed.swap(false, Ordering::SeqCst);
                    let message = if full {
                        let version = version.lock().unwrap().clone();
                        AgentToServer {
                            agent_description: Some(AgentDescription::for_service(
                                "io.example.fault",
                                version,
                            )),
                            ..heartbeat(uid, sequence_num)
                        }
                    } else {
                        heartbeat(uid, sequence_num)
                    };
                    let frame = opamp_transport::encode_frame(&message, usize::MAX).unwrap();
                    if sink.send(WsMessage::Binary(frame)).await.is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            uid,
            received,
            configs,
            version,
            changed,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn got_config(&self, body: &str) -> bool {
        self.configs.lock().unwrap().iter().any(|got| got == body)
    }

    fn report_version(&self, version: &str) {
        *self.version.lock().unwrap() = version.to_owned();
        self.changed.store(true, Ordering::SeqCst);
    }
}

/// Waits until every agent has received `more` messages beyond `since`.
async fn all_answered(what: &str, agents: &[Agent], since: &[u64], more: u64) {
    eventually(what, || async {
        agents
            .iter()
            .zip(since)
            .all(|(agent, since)| agent.received() >= since + more)
    })
    .await;
}

fn counts(agents: &[Agent]) -> Vec<u64> {
    agents.iter().map(Agent::received).collect()
}

async fn scalar(config: &Config, query: &str) -> i64 {
    sql(config)
        .await
        .query_one(query, &[])
        .await
        .unwrap()
        .get(0)
}

async fn service_version(config: &Config, uid: InstanceUid) -> Option<String> {
    let query = "SELECT service_version FROM opamp_agents WHERE uid = $1";
    let rows = agent_rows(config, query, uid).await;
    rows.first().and_then(|row| row.get(0))
}

async fn on_cluster(cluster: &Arc<Cluster>, up: bool) {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || if up { cluster.up() } else { cluster.down() })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarts_under_load() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let cluster = Arc::new(cluster);
    let direct = cluster.config();
    let gate = Gate::start(cluster.port).await;
    let via_gate: Config = cluster
        .url
        .replace(&format!(":{}/", cluster.port), &format!(":{}/", gate.port))
        .parse()
        .unwrap();

    let a = instance(&via_gate, "a").await;
    let b = instance(&direct, "b").await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for n in 0..8u8 {
        on_a.push(Agent::connect(&a, InstanceUid::from_array([0xa0 + n; 16])).await);
        on_b.push(Agent::connect(&b, InstanceUid::from_array([0xb0 + n; 16])).await);
    }
    eventually("all 16 agents stored and claimed", || async {
        scalar(&direct, "SELECT count(*) FROM opamp_agents").await == 16
            && scalar(
                &direct,
                "SELECT count(*) FROM opamp_agent_owner WHERE instance IS NOT NULL",
            )
            .await
                == 16
    })
    .await;

    // ---- the database goes down ----
    on_cluster(&cluster, false).await;
    // a is also cut off from the database until the end of the test's
    // second phase, whenever the database returns.
    gate.set_open(false);
    on_a[0].report_version("2.0");
    on_b[0].report_version("2.0");
    let before = (counts(&on_a), counts(&on_b));
    all_answered(
        "a's agents answered while the database is down",
        &on_a,
        &before.0,
        10,
    )
    .await;
    all_answered(
        "b's agents answered while the database is down",
        &on_b,
        &before.1,
        10,
    )
    .await;
    // Desired state cannot be written meanwhile: an error, not a hang.
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        b.registry
            .set_remote_config(on_a[2].uid, config_map("during: outage\n")),
    )
    .await
    .expect("set_remote_config returns while the database is down");
    assert!(refused.is_err(), "{refused:?}");

    // ---- the database returns; a's listener stays disconnected ----
    on_cluster(&cluster, true).await;
    let mut attempts = 0;
    let offer = loop {
        attempts += 1;
        match b
            .registry
            .set_remote_config(on_a[2].uid, config_map("after: restart\n"))
            .await
        {
            Ok(offer) => break offer,
            Err(error) => {
                assert!(
                    attempts < 600,
                    "b never wrote to the database again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(offer.delivery, Some(Delivery::Forwarded));
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opamp-listener:a'"
        )
        .await,
        0,
        "a's listener is not connected: the NOTIFY for the push is lost"
    );
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM opamp_outbox WHERE instance = 'a'"
        )
        .await,
        1
    );
    // b's saves work again: the status change made during the outage lands.
    eventually(
        "b's agent's status change is saved after the restart",
        || async { service_version(&direct, on_b[0].uid).await.as_deref() == Some("2.0") },
    )
    .await;
    let before = counts(&on_a);
    all_answered(
        "a's agents answered while a cannot reach the database",
        &on_a,
        &before,
        10,
    )
    .await;

    // ---- a reaches the database again ----
    gate.set_open(true);
    // The agent's session is intact (it reported nothing new), so nothing
    // but the outbox brings it the push: no store read re-offers it.
    eventually("a's listener catches up from the outbox", || async {
        on_a[2].got_config("after: restart\n")
            && scalar(&direct, "SELECT count(*) FROM opamp_outbox").await == 0
    })
    .await;
    assert!(!on_a[2].got_config("during: outage\n"));
    eventually(
        "a's agent's status change is saved after the restart",
        || async { service_version(&direct, on_a[0].uid).await.as_deref() == Some("2.0") },
    )
    .await;

    // Live routing works both ways again (listeners and pools recovered).
    set_config_forwarded(&b.registry, on_a[1].uid, "live: b-to-a\n").await;
    set_config_forwarded(&a.registry, on_b[1].uid, "live: a-to-b\n").await;
    eventually("b's push reaches a's agent", || async {
        on_a[1].got_config("live: b-to-a\n")
    })
    .await;
    eventually("a's push reaches b's agent", || async {
        on_b[1].got_config("live: a-to-b\n")
    })
    .await;
    let before = (counts(&on_a), counts(&on_b));
    all_answered("a's agents still answered", &on_a, &before.0, 3).await;
    all_answered("b's agents still answered", &on_b, &before.1, 3).await;
    // Every agent is still connected and owned where it was.
    assert_eq!(
        scalar(
            &direct,
            "SELECT count(*) FROM opamp_agent_owner WHERE instance IS NOT NULL"
        )
        .await,
        16
    );
    a.backend.shutdown().await.unwrap();
    b.backend.shutdown().await.unwrap();
}
