//! A server crash under a fleet of 1000 real agents (800 WebSocket, 200
//! plain HTTP): every agent comes back to the restarted server on the same
//! port, spread out by backoff jitter (WS-19, CONN-03), the fresh registry
//! rebuilds every agent's full state (SEQ-05, SEQ-06), and no remote-config
//! acknowledgement is lost (RCFG-06..08), including those made while the
//! server was down (ERR-06).
//!
//! Runs on real time (the server has its own runtime so it can die like a
//! process); every wait is on an event or a count, bounded by a generous
//! timeout. The only timing assertion is the jitter spread: how many agents
//! come back within one tenth of the backoff window, which a slower (busier)
//! server only lowers.

mod fault_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fault_support::{
    CrashableServer, config, config_agent, ensure_open_files, mixed_scheme, quantile, start_all,
};
use opamp_client::{ExponentialBackoff, OpampClient, RetryPolicy, TransportError};
use opamp_proto::{InstanceUid, RemoteConfigStatus, RemoteConfigStatuses};
use opamp_server::{
    AgentRecord, Callbacks, ConnectDecision, ConnectRequest, OpampServer, Registry,
};
use opamp_testkit::{count_reaches, header_number, until_all, within_for};
use tokio::sync::watch;
use tokio::time::Instant;

const WEBSOCKET_AGENTS: usize = 800;
const HTTP_AGENTS: usize = 200;
const AGENTS: usize = WEBSOCKET_AGENTS + HTTP_AGENTS;
/// Backoff: windows of 100 ms doubling up to 4 s, full jitter. The top
/// window is wide enough that 1000 jittered agents arrive more slowly than a
/// debug-build server on two cores accepts them, so a herd would show.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Failed attempts each agent makes before the server comes back: the sixth
/// failure draws from the 3.2 s window, so every agent is deep in backoff.
const FAILURES_BEFORE_RESTART: u32 = 6;
/// Generous bound on each phase (CI target for the whole test: 60 s).
const PHASE: Duration = Duration::from_secs(120);

/// Shared by the test and every agent's callbacks.
struct Fleet {
    /// During the outage, failed attempts per agent.
    failures: Vec<AtomicU32>,
    outage: AtomicBool,
    /// Agents that reached `FAILURES_BEFORE_RESTART` during the outage.
    ready: watch::Sender<usize>,
    /// Once set, every agent applies what it is offered at once.
    ack_all: AtomicBool,
}

struct Agent {
    index: usize,
    /// Agents of the "slow" group only report APPLYING before the crash.
    slow: bool,
    fleet: Arc<Fleet>,
}

impl opamp_client::Callbacks for Agent {
    fn on_message(&self, client: &OpampClient, data: &opamp_client::MessageData) {
        let Some(offer) = &data.remote_config else {
            return;
        };
        let applied = !self.slow || self.fleet.ack_all.load(Ordering::SeqCst);
        let status = if applied {
            RemoteConfigStatuses::Applied
        } else {
            RemoteConfigStatuses::Applying
        };
        client.set_remote_config_status(RemoteConfigStatus {
            last_remote_config_hash: offer.config_hash.clone(),
            status: status as i32,
            error_message: String::new(),
        });
    }

    fn on_connect_failed(&self, _error: &TransportError) {
        if !self.fleet.outage.load(Ordering::SeqCst) {
            return;
        }
        let failures = self.fleet.failures[self.index].fetch_add(1, Ordering::SeqCst) + 1;
        if failures == FAILURES_BEFORE_RESTART {
            self.fleet.ready.send_modify(|ready| *ready += 1);
        }
    }
}

/// Names the agent on every connect and request, so the server can tell
/// attempts apart before any message is read.
const AGENT_HEADER: &str = "x-fleet-agent";

/// Server callbacks that note when each agent's first connection attempt
/// (WebSocket upgrade or plain-HTTP request) arrived, as early as the
/// server sees it: a count of arrivals, not of how fast they are served.
#[derive(Default)]
struct ReconnectClock {
    first_attempt: Mutex<HashMap<usize, Instant>>,
}

impl Callbacks for ReconnectClock {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let now = Instant::now();
        let agent = header_number(&request.parts.headers, AGENT_HEADER);
        if let Some(agent) = agent {
            self.first_attempt
                .lock()
                .unwrap()
                .entry(agent)
                .or_insert(now);
        }
        ConnectDecision::Accept
    }
}

fn server() -> OpampServer<ReconnectClock> {
    // Enough event room that waiting on 1000 agents rarely has to rescan.
    let registry = Registry::builder().event_capacity(16 * 1024).build();
    OpampServer::builder()
        .registry(registry)
        .callbacks(ReconnectClock::default())
        .build()
}

fn backoff() -> opamp_client::RetryPolicyFactory {
    Arc::new(|| {
        Box::new(
            ExponentialBackoff::new()
                .with_initial(BACKOFF_INITIAL)
                .with_max(BACKOFF_MAX),
        ) as Box<dyn RetryPolicy>
    })
}

fn agent(index: usize, addr: SocketAddr, fleet: &Arc<Fleet>) -> (InstanceUid, OpampClient) {
    let uid = InstanceUid::new_v7();
    let scheme = mixed_scheme(index, WEBSOCKET_AGENTS);
    let client = config_agent(
        format!("{scheme}://{addr}/v1/opamp"),
        uid,
        ("io.example.fleet", "1.0.0"),
        Duration::from_secs(1),
    )
    .retry_policy(backoff())
    .header(
        http::HeaderName::from_static(AGENT_HEADER),
        http::HeaderValue::from(index),
    )
    .shutdown_timeout(Duration::from_secs(5))
    .callbacks(Agent {
        index,
        slow: is_slow(index),
        fleet: Arc::clone(fleet),
    })
    .build()
    .expect("valid client settings");
    (uid, client)
}

/// Every third agent acknowledges v1 only after the crash.
fn is_slow(index: usize) -> bool {
    index % 3 == 0
}

fn reports(hash: &Bytes, status: RemoteConfigStatuses) -> impl Fn(&AgentRecord) -> bool + '_ {
    move |record| {
        record
            .status
            .remote_config_status
            .as_ref()
            .is_some_and(|reported| {
                reported.last_remote_config_hash == *hash && reported.status == status as i32
            })
    }
}

#[test]
fn ws_19_seq_05_rcfg_08_server_crash_under_1000_agents() {
    // Each agent holds one socket and the server one per agent.
    let open_files = ensure_open_files(8192);
    assert!(
        open_files >= 4 * AGENTS as u64,
        "need about {} open files, the limit is {open_files}",
        4 * AGENTS
    );
    // Callbacks run on the blocking pool; bound it so 1000 agents failing
    // at once do not start hundreds of threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(crash_and_restart());
}

async fn crash_and_restart() {
    let started = Instant::now();
    let first = CrashableServer::start(server(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = first.addr;
    let fleet = Arc::new(Fleet {
        failures: (0..AGENTS).map(|_| AtomicU32::new(0)).collect(),
        outage: AtomicBool::new(false),
        ready: watch::Sender::new(0),
        ack_all: AtomicBool::new(false),
    });
    let agents: Vec<(InstanceUid, OpampClient)> = (0..AGENTS)
        .map(|index| agent(index, addr, &fleet))
        .collect();
    let uids: Vec<InstanceUid> = agents.iter().map(|(uid, _)| *uid).collect();
    start_all(&agents).await;

    // Everyone is known with a description, then gets config v1.
    let registry = first.server.registry().clone();
    within_for(
        PHASE,
        "all agents connect",
        until_all(&registry, uids.iter().copied(), |record| {
            record.is_connected() && record.status.description.is_some()
        }),
    )
    .await;
    eprintln!("{AGENTS} agents connected after {:?}", started.elapsed());
    let mut v1 = None;
    for uid in &uids {
        let offer = registry.set_remote_config(*uid, config("1")).await.unwrap();
        v1.get_or_insert(offer.hash);
    }
    let v1 = v1.unwrap();
    // The fast group applies v1; the slow group is still at it.
    let group = |slow: bool| {
        (0..AGENTS)
            .filter(move |index| is_slow(*index) == slow)
            .map(|index| uids[index])
    };
    let (fast_uids, slow_uids) = (group(false), group(true));
    within_for(
        PHASE,
        "fast agents apply v1, slow ones are applying",
        async {
            until_all(
                &registry,
                fast_uids,
                reports(&v1, RemoteConfigStatuses::Applied),
            )
            .await;
            until_all(
                &registry,
                slow_uids,
                reports(&v1, RemoteConfigStatuses::Applying),
            )
            .await;
        },
    )
    .await;
    eprintln!("v1 offered and acknowledged after {:?}", started.elapsed());
    drop(registry);

    // Crash: no Close frames, no draining, the registry is gone.
    fleet.outage.store(true, Ordering::SeqCst);
    within_for(PHASE, "the server dies", first.crash()).await;
    let crashed_at = Instant::now();
    // The slow group finishes applying while the server is down; those
    // acknowledgements must reach the next server.
    for (_, client) in (0..AGENTS)
        .filter(|index| is_slow(*index))
        .map(|index| &agents[index])
    {
        client.set_remote_config_status(RemoteConfigStatus {
            last_remote_config_hash: v1.clone(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        });
    }
    fleet.ack_all.store(true, Ordering::SeqCst);
    // Restart only once every agent is deep in its backoff.
    let mut ready = fleet.ready.subscribe();
    count_reaches(PHASE, "every agent fails repeatedly", &mut ready, AGENTS).await;
    let failures: Vec<u32> = fleet
        .failures
        .iter()
        .map(|f| f.load(Ordering::SeqCst))
        .collect();
    eprintln!(
        "outage of {:?}; failed attempts per agent: min {}, max {}",
        crashed_at.elapsed(),
        failures.iter().min().unwrap(),
        failures.iter().max().unwrap()
    );

    // A new server, fresh registry, same port.
    let second = CrashableServer::start(server(), addr).await.unwrap();
    let restarted_at = Instant::now();
    let registry = second.server.registry().clone();
    // Full state re-synced (the description only comes with a full report,
    // which the server asks for, SEQ-05/06), and every acknowledgement
    // arrived, the fast group's and the slow group's.
    within_for(
        PHASE,
        "all agents re-sync with the new server",
        until_all(&registry, uids.iter().copied(), |record| {
            record.is_connected()
                && record.status.description.is_some()
                && reports(&v1, RemoteConfigStatuses::Applied)(record)
        }),
    )
    .await;
    eprintln!(
        "all {AGENTS} agents re-synced {:?} after the restart",
        restarted_at.elapsed()
    );
    let mut connected = registry.connected();
    connected.sort();
    let mut expected = uids.clone();
    expected.sort();
    assert_eq!(
        connected, expected,
        "every agent is connected to the new server"
    );

    // The reconnects are spread out by jitter, not a thundering herd. The
    // WebSocket agents all lost their connection at the same instant, so
    // without jitter they would retry in lock-step; plain-HTTP agents
    // notice at their own next poll and are spread anyway.
    let first_attempts = second
        .server
        .callbacks()
        .first_attempt
        .lock()
        .unwrap()
        .clone();
    assert_eq!(
        first_attempts.len(),
        AGENTS,
        "every agent tried the new server"
    );
    let mut offsets: Vec<Duration> = first_attempts
        .iter()
        .filter(|(agent, _)| **agent < WEBSOCKET_AGENTS)
        .map(|(_, at)| at.saturating_duration_since(restarted_at))
        .collect();
    offsets.sort();
    let (p10, p50, p90) = (
        quantile(&offsets, 0.1),
        quantile(&offsets, 0.5),
        quantile(&offsets, 0.9),
    );
    let window = BACKOFF_MAX / 10;
    let peak = most_within(&offsets, window);
    eprintln!(
        "WebSocket agents' first attempts after the restart: p10 {p10:?}, p50 {p50:?}, \
         p90 {p90:?}, max {:?}; at most {peak} within {window:?}",
        offsets[offsets.len() - 1]
    );
    // With full jitter an agent waiting at restart has a remaining delay
    // whose density falls linearly over the window, so the busiest tenth of
    // the window (the first) holds about 18% of them (measured: 18-20%).
    // Agents in lock-step arrive as fast as the server takes them: 93% within
    // one tenth of the window in a control run with the jitter fixed. A busy
    // machine slows the server, which spreads arrivals further; only a stall
    // of over a second could push jittered ones past 40%.
    assert!(
        peak <= WEBSOCKET_AGENTS * 2 / 5,
        "reconnects bunched: {peak} of {WEBSOCKET_AGENTS} first attempts within {window:?} \
         (p10 {p10:?}, p90 {p90:?})"
    );
    assert!(
        p90 - p10 >= BACKOFF_MAX / 4,
        "reconnects not spread: p10 {p10:?}, p90 {p90:?}"
    );

    // A config pushed by the new server is acknowledged by everyone.
    let mut v2 = None;
    for uid in &uids {
        let offer = registry.set_remote_config(*uid, config("2")).await.unwrap();
        v2.get_or_insert(offer.hash);
    }
    let v2 = v2.unwrap();
    assert_ne!(v1, v2);
    within_for(
        PHASE,
        "all agents apply v2",
        until_all(
            &registry,
            uids.iter().copied(),
            reports(&v2, RemoteConfigStatuses::Applied),
        ),
    )
    .await;
    eprintln!("v2 applied by all after {:?}", started.elapsed());

    within_for(
        PHASE,
        "agents stop",
        futures_util::future::join_all(agents.iter().map(|(_, client)| client.stop())),
    )
    .await;
    within_for(PHASE, "the server stops", second.stop()).await;
    eprintln!("done after {:?}", started.elapsed());
}

/// The largest number of `sorted` instants that fall within one `window`.
fn most_within(sorted: &[Duration], window: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}
