//! Throttling storms against 50 real agents (25 WebSocket, 25 plain HTTP):
//! a server that refuses every connection with 503 and `Retry-After`
//! (WS-24, HTTP-21), and one that answers every message with UNAVAILABLE and
//! `retry_info` (WS-22, WS-23). No agent comes back before the server said
//! it may (CONN-04, HTTP-22), and every agent is back once the storm ends.
//!
//! Paused time: the agents' clocks are the server's, so the spacing of each
//! agent's attempts is exact, not a wall-clock estimate.

mod fault_support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fault_support::{mixed_fleet, start_all};
use opamp_client::{AgentCapabilities, AgentDescription, OpampClient};
use opamp_proto::{AgentToServer, InstanceUid, ServerToAgent};
use opamp_server::{
    Callbacks, ConnectDecision, ConnectRequest, Connection, OpampServer, Refusal, TransportKind,
    unavailable_response,
};
use opamp_testkit::{RunningServer, count_reaches, header_number, until_all, within_for};
use tokio::sync::watch;
use tokio::time::Instant;

const WEBSOCKET_AGENTS: usize = 25;
const AGENTS: usize = 50;
/// What the server asks for; well above the agents' own first backoff
/// windows (1 s, 2 s, 4 s), so an agent that ignored it would show.
const RETRY_AFTER: Duration = Duration::from_secs(20);
/// The storm lasts until every agent was turned away this often.
const REFUSALS: usize = 3;
const AGENT_HEADER: &str = "x-storm-agent";
const BOUND: Duration = Duration::from_secs(3600);

/// Starts every agent against `serving`; returns when that began, and the
/// agents.
async fn start_agents<C: Callbacks>(
    serving: &RunningServer<C>,
) -> (Instant, Vec<(InstanceUid, OpampClient)>) {
    let storm_started = Instant::now();
    let agents = agents(|scheme| serving.endpoint(scheme));
    start_all(&agents).await;
    (storm_started, agents)
}

fn agents(serving_endpoint: impl Fn(&str) -> String) -> Vec<(InstanceUid, OpampClient)> {
    mixed_fleet(AGENTS, WEBSOCKET_AGENTS, |index, scheme, uid| {
        OpampClient::builder(serving_endpoint(scheme))
            .instance_uid(uid)
            .agent_description(AgentDescription::for_service("io.example.storm", "1.0"))
            .capabilities(AgentCapabilities::REPORTS_HEARTBEAT)
            // Polling and heartbeats far more often than the server
            // allows retries: they must not count as permission.
            .heartbeat_interval(Duration::from_secs(1))
            .polling_interval(Duration::from_secs(1))
            .header(
                http::HeaderName::from_static(AGENT_HEADER),
                http::HeaderValue::from(index),
            )
            .build()
            .expect("valid client settings")
    })
}

/// Per-agent arrival times during the storm, and the count of agents that
/// were turned away `REFUSALS` times.
struct StormLog<K> {
    storming: AtomicBool,
    turned_away: Mutex<HashMap<K, Vec<Instant>>>,
    enough: watch::Sender<usize>,
    /// First arrival of each agent after the storm.
    back: Mutex<HashMap<K, Instant>>,
    returned: watch::Sender<usize>,
}

impl<K: std::hash::Hash + Eq + Copy> StormLog<K> {
    fn new() -> Self {
        Self {
            storming: AtomicBool::new(true),
            turned_away: Mutex::new(HashMap::new()),
            enough: watch::Sender::new(0),
            back: Mutex::new(HashMap::new()),
            returned: watch::Sender::new(0),
        }
    }

    /// Records an arrival; `true` if it falls in the storm.
    fn arrive(&self, key: K) -> bool {
        let now = Instant::now();
        if !self.storming.load(Ordering::SeqCst) {
            let mut back = self.back.lock().unwrap();
            if let std::collections::hash_map::Entry::Vacant(entry) = back.entry(key) {
                entry.insert(now);
                self.returned.send_modify(|count| *count += 1);
            }
            return false;
        }
        let mut turned_away = self.turned_away.lock().unwrap();
        let times = turned_away.entry(key).or_default();
        times.push(now);
        if times.len() == REFUSALS {
            self.enough.send_modify(|count| *count += 1);
        }
        true
    }

    /// Ends the storm once every agent was turned away `REFUSALS` times.
    async fn end_when_everyone_waited(&self) -> Instant {
        let mut enough = self.enough.subscribe();
        count_reaches(BOUND, "every agent is turned away", &mut enough, AGENTS).await;
        self.storming.store(false, Ordering::SeqCst);
        Instant::now()
    }

    /// Every agent waited at least `RETRY_AFTER` between two attempts during
    /// the storm and after its last one, and made no more attempts than the
    /// storm's length allows.
    fn assert_everyone_waited(&self, storm_started: Instant, storm_ended: Instant) {
        let turned_away = self.turned_away.lock().unwrap();
        let back = self.back.lock().unwrap();
        assert_eq!(turned_away.len(), AGENTS);
        let storm = storm_ended - storm_started;
        let allowed = (storm.as_nanos() / RETRY_AFTER.as_nanos()) as usize + 1;
        for (agent, times) in turned_away.iter() {
            assert!(
                times.len() <= allowed,
                "{} attempts in a {storm:?} storm, at most {allowed} allowed",
                times.len()
            );
            for pair in times.windows(2) {
                assert!(
                    pair[1] - pair[0] >= RETRY_AFTER,
                    "retried after {:?}, asked for {RETRY_AFTER:?}",
                    pair[1] - pair[0]
                );
            }
            let last = *times.last().unwrap();
            let returned = back[agent];
            assert!(
                returned - last >= RETRY_AFTER,
                "came back {:?} after its last refusal",
                returned - last
            );
        }
    }
}

/// Refuses every connection and request with 503 while the storm lasts.
struct Refusing {
    log: StormLog<usize>,
}

impl Callbacks for Refusing {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let agent = header_number::<usize>(&request.parts.headers, AGENT_HEADER)
            .expect("every agent names itself");
        if self.log.arrive(agent) {
            ConnectDecision::Refuse(Refusal::service_unavailable(Some(RETRY_AFTER)))
        } else {
            ConnectDecision::Accept
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ws_24_http_21_conn_04_a_503_storm_is_waited_out() {
    let serving = RunningServer::start(
        OpampServer::builder()
            .callbacks(Refusing {
                log: StormLog::new(),
            })
            .build(),
    )
    .await;
    let (storm_started, agents) = start_agents(&serving).await;
    let log = &serving.server.callbacks().log;
    let storm_ended = log.end_when_everyone_waited().await;

    let registry = serving.server.registry();
    let uids: Vec<InstanceUid> = agents.iter().map(|(uid, _)| *uid).collect();
    within_for(
        BOUND,
        "every agent is back",
        until_all(registry, uids, |record| {
            record.is_connected() && record.status.description.is_some()
        }),
    )
    .await;
    log.assert_everyone_waited(storm_started, storm_ended);
    assert_eq!(log.back.lock().unwrap().len(), AGENTS);

    for (_, client) in &agents {
        client.stop().await;
    }
    serving.stop().await;
}

/// Answers every message with UNAVAILABLE while the storm lasts, and notes
/// whether each WebSocket connection opened with the full state.
struct Unavailable {
    log: StormLog<InstanceUid>,
    /// WebSocket connection id → whether its first message described the
    /// agent.
    first_messages: Mutex<HashMap<u64, bool>>,
}

impl Callbacks for Unavailable {
    async fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> Option<ServerToAgent> {
        if connection.transport() == TransportKind::WebSocket {
            self.first_messages
                .lock()
                .unwrap()
                .entry(connection.id())
                .or_insert(message.agent_description.is_some());
        }
        // The goodbye that follows an UNAVAILABLE (WS-23) is not a retry.
        if message.agent_disconnect.is_some() {
            return None;
        }
        let uid = InstanceUid::try_from(&message.instance_uid).expect("valid uid");
        self.log
            .arrive(uid)
            .then(|| unavailable_response(Some(RETRY_AFTER)))
    }
}

#[tokio::test(start_paused = true)]
async fn ws_22_ws_23_an_unavailable_storm_is_waited_out() {
    let serving = RunningServer::start(
        OpampServer::builder()
            .callbacks(Unavailable {
                log: StormLog::new(),
                first_messages: Mutex::new(HashMap::new()),
            })
            .build(),
    )
    .await;
    let (storm_started, agents) = start_agents(&serving).await;
    let callbacks = serving.server.callbacks();
    let storm_ended = callbacks.log.end_when_everyone_waited().await;

    let registry = serving.server.registry();
    let uids: Vec<InstanceUid> = agents.iter().map(|(uid, _)| *uid).collect();
    // Back means: a message answered normally, on a live connection.
    let mut returned = callbacks.log.returned.subscribe();
    within_for(BOUND, "every agent is back", async {
        returned.wait_for(|count| *count == AGENTS).await.unwrap();
        until_all(registry, uids, |record| record.is_connected()).await;
    })
    .await;
    callbacks
        .log
        .assert_everyone_waited(storm_started, storm_ended);

    // WS-23: each reconnect after UNAVAILABLE starts with the full state.
    let first_messages = callbacks.first_messages.lock().unwrap().clone();
    assert!(
        first_messages.len() >= WEBSOCKET_AGENTS * REFUSALS,
        "{} WebSocket connections",
        first_messages.len()
    );
    assert!(
        first_messages.values().all(|described| *described),
        "a WebSocket connection opened without the agent description"
    );

    for (_, client) in &agents {
        client.stop().await;
    }
    serving.stop().await;
}
