//! A TCP proxy between 20 real agents (10 WebSocket, 10 plain HTTP) and the
//! server cuts connections in the middle of handshakes, headers, bodies and
//! frames, stalls them past the server's and the clients' timeouts, and
//! trickles bytes. Both sides recover: every agent ends up connected with
//! its full state and applies a pushed config (WS-19, SEQ-05, SEQ-06,
//! RCFG-08), no task panics, and every connection the server opened is
//! closed again.
//!
//! Paused time: the proxy's stalls and trickles cost no real time.

mod fault_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fault_support::{Fault, FaultyProxy, config, config_agent, mixed_fleet, panics, start_all};
use opamp_client::{AgentCapabilities, OpampClient};
use opamp_proto::{InstanceUid, RemoteConfigStatuses};
use opamp_server::{AgentRecord, Callbacks, Connection, DisconnectReason, OpampServer};
use opamp_testkit::{RunningServer, report_applied, until_all, within_for};
use tokio::sync::watch;

const WEBSOCKET_AGENTS: usize = 10;
const AGENTS: usize = 20;
/// Connections cut before the proxy turns healthy (but slow).
const CUTS: usize = 200;
const BOUND: Duration = Duration::from_secs(6 * 3600);

/// Byte counts at which connections are cut: inside the WebSocket upgrade
/// request and response, the HTTP request head and body, the response, and
/// the first and later frames.
const CUT_POINTS: [usize; 12] = [0, 3, 40, 97, 160, 233, 301, 377, 450, 611, 802, 1250];

/// The fault for the n-th connection while the proxy is faulty: mostly
/// cuts, every fifth a stall longer than the server's header read timeout
/// (10 s) and body read timeout (30 s).
fn fault(n: usize) -> Fault {
    let after_bytes = CUT_POINTS[n % CUT_POINTS.len()];
    if n % 5 == 4 {
        Fault::Stall {
            after_bytes,
            pause: Duration::from_secs(45),
        }
    } else {
        Fault::Cut { after_bytes }
    }
}

/// Counts connections the server opened and closed.
struct Sessions {
    opened: AtomicUsize,
    closed: watch::Sender<usize>,
}

impl Callbacks for Sessions {
    fn on_connected(&self, _connection: &Connection) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn on_disconnected(&self, _connection: &Connection, _reason: &DisconnectReason) {
        self.closed.send_modify(|closed| *closed += 1);
    }
}

/// Applies every remote config at once.
struct Applier;

impl opamp_client::Callbacks for Applier {
    fn on_message(&self, client: &OpampClient, data: &opamp_client::MessageData) {
        report_applied(client, data);
    }
}

#[tokio::test(start_paused = true)]
async fn cut_stalled_and_trickled_connections_recover_on_both_sides() {
    let panics_before = panics();
    let serving = RunningServer::start(
        OpampServer::builder()
            .callbacks(Sessions {
                opened: AtomicUsize::new(0),
                closed: watch::Sender::new(0),
            })
            .build(),
    )
    .await;
    let started = tokio::time::Instant::now();
    let faulty = Arc::new(AtomicBool::new(true));
    let proxy = FaultyProxy::start(serving.addr, {
        let faulty = Arc::clone(&faulty);
        move |n| {
            if faulty.load(Ordering::SeqCst) {
                fault(n)
            } else {
                Fault::Trickle {
                    chunk: 7,
                    pause: Duration::from_millis(3),
                }
            }
        }
    })
    .await;

    let agents: Vec<(InstanceUid, OpampClient)> =
        mixed_fleet(AGENTS, WEBSOCKET_AGENTS, |_, scheme, uid| {
            config_agent(
                format!("{scheme}://{}/v1/opamp", proxy.addr),
                uid,
                ("io.example.proxied", "1.0"),
                Duration::from_secs(2),
            )
            .callbacks(Applier)
            .build()
            .expect("valid client settings")
        });
    start_all(&agents).await;
    let uids: Vec<InstanceUid> = agents.iter().map(|(uid, _)| *uid).collect();

    // The faulty phase lasts until the proxy has cut CUTS connections.
    let stats = Arc::clone(&proxy.stats);
    let mut finished = proxy.finished.clone();
    within_for(BOUND, "the proxy cuts enough connections", async {
        while stats.cuts.load(Ordering::SeqCst) < CUTS {
            finished.changed().await.unwrap();
        }
    })
    .await;
    faulty.store(false, Ordering::SeqCst);
    let accepted = stats.accepted.load(Ordering::SeqCst);
    eprintln!(
        "faulty phase: {accepted} connections, {} cut, {:?} of (paused) time",
        stats.cuts.load(Ordering::SeqCst),
        started.elapsed()
    );

    // Everyone recovers: connected, full state, and a pushed config makes
    // the round trip through the (slow) proxy.
    let registry = serving.server.registry();
    let is_whole = |record: &AgentRecord| {
        record.is_connected()
            && record.status.description.is_some()
            && record
                .status
                .capabilities
                .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    };
    within_for(
        BOUND,
        "every agent is back with its full state",
        until_all(registry, uids.iter().copied(), is_whole),
    )
    .await;
    let mut hash = None;
    for uid in &uids {
        hash = Some(
            registry
                .set_remote_config(*uid, config("proxied"))
                .await
                .unwrap()
                .hash,
        );
    }
    let hash = hash.unwrap();
    within_for(
        BOUND,
        "every agent applies the config",
        until_all(registry, uids.iter().copied(), |record| {
            is_whole(record)
                && record
                    .status
                    .remote_config_status
                    .as_ref()
                    .is_some_and(|status| {
                        status.last_remote_config_hash == hash
                            && status.status == RemoteConfigStatuses::Applied as i32
                    })
        }),
    )
    .await;
    let mut connected = registry.connected();
    connected.sort();
    let mut expected = uids.clone();
    expected.sort();
    assert_eq!(connected, expected);

    // No stuck task: once the agents are gone, every connection the server
    // opened has been closed, and shutdown drains without hitting its
    // timeout.
    for (_, client) in &agents {
        within_for(BOUND, "an agent stops", client.stop()).await;
    }
    let sessions = serving.server.callbacks();
    let mut closed = sessions.closed.subscribe();
    within_for(
        BOUND,
        "every server connection closes",
        closed.wait_for(|closed| *closed == sessions.opened.load(Ordering::SeqCst)),
    )
    .await
    .unwrap();
    assert!(
        sessions.opened.load(Ordering::SeqCst) > AGENTS,
        "the faults forced reconnects"
    );
    eprintln!(
        "{} server connections, all closed; {:?} of (paused) time",
        sessions.opened.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(serving.server.shutdown().await, "shutdown drained in time");
    drop(proxy);
    serving.stop().await;
    assert_eq!(panics(), panics_before, "a task panicked");
}
