//! The server core driven directly: no runtime, no sockets, explicit time.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentDisconnect, AgentRemoteConfig, AgentToServer,
    AgentToServerFlags, ComponentHealth, InstanceUid, ServerErrorResponseType, ServerToAgentFlags,
    config_hash,
};

use super::*;
use crate::record::AgentRecord;
use crate::test_messages::{compressed, full, uid, with_caps};

fn ws(id: u64) -> ConnectionRef {
    ConnectionRef::new(id, TransportKind::WebSocket, None)
}

fn http(id: u64) -> ConnectionRef {
    ConnectionRef::new(id, TransportKind::PlainHttp, None)
}

/// A minimal synchronous shell: what the registry does, without I/O.
struct World {
    core: ServerCore,
    start: Instant,
    wall: SystemTime,
    live: HashMap<InstanceUid, (ConnectionRef, AgentSession)>,
    records: HashMap<InstanceUid, AgentRecord>,
    reconnects: HashMap<InstanceUid, ReconnectHistory>,
    /// Connections that answer a probe.
    alive: HashMap<u64, bool>,
    next_uid: std::sync::atomic::AtomicU8,
    /// What the core asked for, in order.
    asked: Vec<&'static str>,
    loads: usize,
    saves: usize,
}

impl World {
    fn new(settings: CoreSettings) -> Self {
        Self {
            core: ServerCore::new(settings),
            start: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            live: HashMap::new(),
            records: HashMap::new(),
            reconnects: HashMap::new(),
            alive: HashMap::new(),
            next_uid: std::sync::atomic::AtomicU8::new(200),
            asked: Vec::new(),
            loads: 0,
            saves: 0,
        }
    }

    fn default_settings() -> Self {
        Self::new(CoreSettings {
            reconnect_guard: None,
            ..CoreSettings::default()
        })
    }

    /// Default settings and `agent`, whose full first report came on
    /// `ws(1)` one second after the start.
    fn with_agent(agent: InstanceUid) -> (Self, InstanceUid) {
        let mut world = Self::default_settings();
        world.send(ws(1), &full(agent, 0), S);
        (world, agent)
    }

    /// One message on `connection` at `at` after the start.
    fn send(
        &mut self,
        connection: ConnectionRef,
        message: &AgentToServer,
        at: Duration,
    ) -> Exchange {
        let received = InstanceUid::try_from(&message.instance_uid).expect("valid uid");
        let counter = &self.next_uid;
        let new_uid = move || uid(counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let now = self.start + at;
        let inbound = Inbound::new(received, message, connection, now, self.wall + at, &new_uid);
        let mut holder = match self.live.get(&received) {
            None => Holder::Nobody,
            Some((holding, session)) if holding.id == connection.id => {
                Holder::This(session.clone())
            }
            Some((holding, session)) => Holder::Other {
                connection: *holding,
                session: session.clone(),
                alive: Liveness::Unknown,
            },
        };
        let mut history = (!matches!(holder, Holder::This(_))).then(|| {
            self.reconnects
                .get(&received)
                .copied()
                .unwrap_or_else(|| ReconnectHistory::new(now))
        });
        let mut stored = Stored::NotLoaded;
        let exchange = loop {
            match self.core.step(&inbound, &holder, stored, history.as_mut()) {
                Step::Done(exchange) => break *exchange,
                Step::NeedRecord => {
                    self.asked.push("record");
                    self.loads += 1;
                    stored = match self.records.get(&received) {
                        Some(record) => Stored::Found(record.clone()),
                        None => Stored::Missing,
                    };
                }
                Step::NeedProbe { connection } => {
                    self.asked.push("probe");
                    stored = Stored::NotLoaded;
                    let answer = self.alive.get(&connection).copied().unwrap_or(false);
                    if let Holder::Other { alive, .. } = &mut holder {
                        *alive = if answer {
                            Liveness::Alive
                        } else {
                            Liveness::Dead
                        };
                    }
                }
            }
        };
        if let Some(history) = history {
            self.reconnects.insert(received, history);
        }
        if let Some(old) = exchange.replaced {
            self.live.retain(|_, (holding, _)| holding.id != old);
        }
        if exchange.refused_duplicate {
            if let Some((_, session)) = self.live.get_mut(&received) {
                session.mark_duplicate_refused();
            }
        }
        if let Some(released) = exchange.release {
            self.live.remove(&released);
        }
        for record in &exchange.save {
            self.saves += 1;
            self.records.insert(record.uid, record.clone());
        }
        if exchange.disposition == Disposition::Continue {
            if let Some(session) = &exchange.session {
                self.live
                    .insert(exchange.uid, (connection, session.clone()));
            }
        }
        exchange
    }

    /// Whether the reply to [`send`](Self::send) asks for the full state.
    fn asks(&mut self, connection: ConnectionRef, message: &AgentToServer, at: Duration) -> bool {
        asks_full_state(&self.send(connection, message, at))
    }

    fn close(&mut self, connection: ConnectionRef) {
        self.live
            .retain(|_, (holding, _)| holding.id != connection.id);
    }
}

fn asks_full_state(exchange: &Exchange) -> bool {
    ServerToAgentFlags::from_bits_retain(exchange.reply.flags)
        .contains(ServerToAgentFlags::REPORT_FULL_STATE)
}

const S: Duration = Duration::from_secs(1);

#[test]
fn seq_02_bare_heartbeats_never_ask_for_the_record() {
    let (mut world, agent) = World::with_agent(uid(1));
    assert_eq!((world.loads, world.saves), (1, 1));
    for n in 1..=50 {
        let exchange = world.send(ws(1), &compressed(agent, n), S * (n as u32 + 1));
        assert_eq!(exchange.reply.flags, 0);
        assert_eq!(exchange.reply.instance_uid, agent.to_bytes(), "UID-06");
        assert!(exchange.save.is_empty() && exchange.events.is_empty());
    }
    assert_eq!(
        (world.loads, world.saves),
        (1, 1),
        "50 heartbeats, no store"
    );
    let session = &world.live[&agent].1;
    assert_eq!(session.last_sequence_num(), Some(50));
    assert!(session.unsaved());
}

#[test]
fn seq_05_a_gap_asks_for_full_state_once_and_the_answer_is_the_baseline() {
    let mut world = World::default_settings();
    let agent = uid(2);
    assert!(!world.asks(ws(1), &full(agent, 0), S));
    assert!(!world.asks(ws(1), &compressed(agent, 1), 2 * S));
    assert!(world.asks(ws(1), &compressed(agent, 3), 3 * S));
    // Whatever number the full report carries, it is the new baseline.
    assert!(!world.asks(ws(1), &full(agent, 17), 4 * S));
    assert!(!world.asks(ws(1), &compressed(agent, 18), 5 * S));
    // Repeats (ERR-04) and a restart at 0 with a description are not gaps.
    assert!(!world.asks(ws(1), &compressed(agent, 18), 6 * S));
    assert!(!world.asks(ws(1), &full(agent, 0), 7 * S));
}

#[test]
fn seq_07_an_agent_unknown_to_the_server_is_asked_once_per_connection() {
    let mut world = World::default_settings();
    let agent = uid(3);
    assert!(world.asks(ws(1), &compressed(agent, 5), S));
    // It ignores the flag; it is not asked again on this connection (no loop).
    for n in 6..10 {
        assert!(!world.asks(ws(1), &compressed(agent, n), S * n as u32));
    }
    world.close(ws(1));
    assert!(world.asks(ws(2), &compressed(agent, 10), 20 * S));
}

#[test]
fn uid_05_a_requested_uid_is_assigned_and_the_reply_carries_the_old_one() {
    let mut world = World::default_settings();
    let agent = uid(4);
    let mut first = full(agent, 0);
    first.flags = AgentToServerFlags::REQUEST_INSTANCE_UID.bits();
    let exchange = world.send(ws(1), &first, S);
    let assigned = InstanceUid::try_from(
        &exchange
            .reply
            .agent_identification
            .as_ref()
            .expect("UID-05")
            .new_instance_uid,
    )
    .unwrap();
    assert_ne!(assigned, agent);
    assert_eq!(exchange.uid, assigned);
    assert_eq!(exchange.reply.instance_uid, agent.to_bytes(), "UID-06");
    assert!(world.records.contains_key(&assigned));
    assert!(world.live.contains_key(&assigned) && !world.live.contains_key(&agent));
    assert!(exchange.events.contains(&AgentEvent::UidReassigned {
        old: agent,
        new: assigned
    }));
    // From then on the agent goes by the new uid.
    let next = world.send(ws(1), &compressed(assigned, 1), 2 * S);
    assert_eq!(next.reply.instance_uid, assigned.to_bytes());
    assert!(!asks_full_state(&next));
}

#[test]
fn uid_09_the_same_agent_continuing_its_sequence_takes_over() {
    let (mut world, agent) = World::with_agent(uid(5));
    world.send(ws(1), &compressed(agent, 1), 2 * S);
    // The old connection still looks live, but number 2 continues it.
    let exchange = world.send(ws(2), &compressed(agent, 2), 3 * S);
    assert_eq!(exchange.replaced, Some(1));
    assert_eq!(exchange.uid, agent);
    assert!(exchange.events.contains(&AgentEvent::Disconnected {
        uid: agent,
        reason: DisconnectReason::Replaced
    }));
    assert!(!world.asked.contains(&"probe"));
}

#[test]
fn uid_09_two_live_connections_are_duplicates_and_the_newcomer_gets_a_new_uid() {
    let (mut world, agent) = World::with_agent(uid(6));
    world.alive.insert(1, true);
    // Quiet for a while, so the core asks for a probe; it answers.
    let exchange = world.send(ws(2), &full(agent, 0), 60 * S);
    assert_eq!(
        world
            .asked
            .iter()
            .filter(|asked| **asked == "probe")
            .count(),
        1
    );
    assert_ne!(exchange.uid, agent, "a new uid for the newcomer");
    assert!(exchange.reply.agent_identification.is_some());
    assert_eq!(exchange.replaced, None);
    assert_eq!(world.live[&agent].0.id, 1, "the first keeps its uid");
}

#[test]
fn uid_09_recent_traffic_is_proof_of_life_without_a_probe() {
    let (mut world, agent) = World::with_agent(uid(7));
    let exchange = world.send(ws(2), &full(agent, 0), 2 * S);
    assert!(!world.asked.contains(&"probe"));
    assert_ne!(exchange.uid, agent);
}

/// The agent's old WebSocket went into a black hole; it comes back on a new
/// one. The old connection does not answer the probe, so it is replaced and
/// the agent keeps its uid and its history.
#[test]
fn uid_09_a_dead_old_connection_is_replaced_and_the_agent_keeps_its_uid() {
    let (mut world, agent) = World::with_agent(uid(8));
    world.send(ws(1), &compressed(agent, 1), 2 * S);
    // Messages 2..=5 were lost in the hole; the client reconnects after its
    // reply timeout and sends its full state.
    let exchange = world.send(ws(2), &full(agent, 6), 70 * S);
    assert!(world.asked.contains(&"probe"));
    assert_eq!(exchange.uid, agent, "same uid");
    assert!(exchange.reply.agent_identification.is_none());
    assert_eq!(exchange.replaced, Some(1));
    assert_eq!(world.live[&agent].0.id, 2);
    let record = &world.records[&agent];
    assert_eq!(record.first_seen, world.wall + S, "history kept");
}

#[test]
fn uid_10_refuse_policy_refuses_a_live_duplicate_and_remembers_it() {
    let mut world = World::new(CoreSettings {
        duplicate_policy: DuplicateUidPolicy::Refuse,
        reconnect_guard: None,
        ..CoreSettings::default()
    });
    let agent = uid(9);
    world.send(ws(1), &full(agent, 0), S);
    let refused = world.send(ws(2), &full(agent, 0), 2 * S);
    assert_eq!(refused.disposition, Disposition::Refused);
    assert_eq!(
        refused.reply.error_response.as_ref().unwrap().r#type(),
        ServerErrorResponseType::BadRequest
    );
    // The refused client's next number happens to continue the live one:
    // no longer taken as proof of a reconnect.
    let again = world.send(ws(3), &compressed(agent, 1), 3 * S);
    assert_eq!(again.disposition, Disposition::Refused);
}

#[test]
fn msg_07_agent_disconnect_ends_the_session() {
    let (mut world, agent) = World::with_agent(uid(10));
    let mut goodbye = compressed(agent, 1);
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    let exchange = world.send(ws(1), &goodbye, 2 * S);
    assert_eq!(exchange.disposition, Disposition::Disconnected);
    assert_eq!(exchange.release, Some(agent));
    assert!(exchange.session.is_none());
    assert!(world.records[&agent].connection.is_none());
    assert!(exchange.events.contains(&AgentEvent::Disconnected {
        uid: agent,
        reason: DisconnectReason::AgentDisconnect
    }));
}

#[test]
fn rcfg_02_rcfg_08_desired_config_is_gated_and_offered_once_per_connection() {
    let mut world = World::default_settings();
    let agent = uid(11);
    let no_config = with_caps(full(agent, 0), AgentCapabilities::REPORTS_STATUS);
    world.send(ws(1), &no_config, S);
    let config = AgentConfigMap::default();
    let hash = config_hash(&config);
    world.records.get_mut(&agent).unwrap().desired.remote_config = Some(AgentRemoteConfig {
        config: Some(config),
        config_hash: hash.clone(),
    });
    world.live.get_mut(&agent).unwrap().1.invalidate();
    let next = with_caps(compressed(agent, 1), AgentCapabilities::REPORTS_STATUS);
    assert!(
        world
            .send(ws(1), &next, 2 * S)
            .reply
            .remote_config
            .is_none(),
        "RCFG-02"
    );
    // It announces AcceptsRemoteConfig: offered once on this connection.
    let offered = world.send(ws(1), &compressed(agent, 2), 3 * S);
    assert_eq!(offered.reply.remote_config.unwrap().config_hash, hash);
    let mut health = compressed(agent, 3);
    health.health = Some(ComponentHealth::default());
    assert!(
        world
            .send(ws(1), &health, 4 * S)
            .reply
            .remote_config
            .is_none()
    );
    // A new connection offers it again until the agent reports the hash.
    world.close(ws(1));
    assert!(
        world
            .send(ws(2), &full(agent, 0), 5 * S)
            .reply
            .remote_config
            .is_some()
    );
}

#[test]
fn http_13_the_polling_interval_is_observed_per_agent() {
    let mut world = World::default_settings();
    let agent = uid(12);
    world.send(http(1), &full(agent, 0), S);
    for n in 1..=10u32 {
        world.send(http(1), &compressed(agent, u64::from(n)), S + S * n);
    }
    let interval = world.live[&agent].1.poll_interval().expect("observed");
    assert_eq!(interval, S, "a 1 s poller");
    // WebSocket agents have no polling interval.
    world.send(ws(2), &full(uid(13), 0), S);
    assert_eq!(world.live[&uid(13)].1.poll_interval(), None);
}

#[test]
fn ws_22_the_reconnect_guard_refuses_a_loop_without_touching_the_record() {
    let mut world = World::new(CoreSettings {
        reconnect_guard: Some(ReconnectGuard::new(2, 60 * S)),
        ..CoreSettings::default()
    });
    let agent = uid(14);
    for n in 0..2u64 {
        let exchange = world.send(ws(10 + n), &full(agent, 0), S);
        assert_eq!(exchange.disposition, Disposition::Continue);
        world.close(ws(10 + n));
    }
    let saves = world.saves;
    let refused = world.send(ws(20), &full(agent, 0), 2 * S);
    assert!(matches!(refused.disposition, Disposition::Throttled(_)));
    assert_eq!(world.saves, saves);
    assert!(!world.live.contains_key(&agent));
}

#[test]
fn untracked_core_never_asks_for_the_record() {
    let mut world = World::new(CoreSettings {
        track_state: false,
        reconnect_guard: None,
        ..CoreSettings::default()
    });
    let agent = uid(15);
    world.send(ws(1), &compressed(agent, 4), S);
    world.send(ws(1), &compressed(agent, 9), 2 * S);
    assert_eq!(world.loads, 0);
    assert!(world.records.is_empty());
    assert!(world.live.contains_key(&agent));
}

fn described(uid: InstanceUid, sequence_num: u64, host: &str) -> AgentToServer {
    let mut message = full(uid, sequence_num);
    let description = message.agent_description.as_mut().unwrap();
    description
        .identifying_attributes
        .push(opamp_proto::KeyValue::new("host.name", host));
    message
}

/// UID-09 over plain HTTP: two agents (a cloned VM, a copied state
/// directory) poll with the same uid. Their sequence numbers diverge and
/// they describe different hosts: the second gets a uid of its own, the
/// first keeps its session and record.
#[test]
fn uid_09_two_http_agents_sharing_a_uid_are_told_apart() {
    let mut world = World::default_settings();
    let agent = uid(30);
    world.send(http(1), &described(agent, 0, "alpha"), S);
    for n in 1..=3 {
        world.send(http(1), &compressed(agent, n), S * (n as u32 + 1));
    }
    // The clone starts at 0 with its own description.
    let clone = world.send(http(1), &described(agent, 0, "beta"), 10 * S);
    assert!(clone.detached);
    assert_ne!(clone.uid, agent);
    assert!(clone.reply.agent_identification.is_some());
    let host = |uid: InstanceUid| {
        world.records[&uid]
            .status
            .description
            .as_ref()
            .unwrap()
            .identifying_attributes
            .iter()
            .find(|attribute| attribute.key == "host.name")
            .cloned()
    };
    assert_eq!(
        host(agent),
        Some(opamp_proto::KeyValue::new("host.name", "alpha"))
    );
    assert_eq!(
        host(clone.uid),
        Some(opamp_proto::KeyValue::new("host.name", "beta"))
    );
    // The first agent carries on undisturbed.
    let next = world.send(http(1), &compressed(agent, 4), 11 * S);
    assert!(!next.detached && next.reply.agent_identification.is_none());
}

/// Not duplicates: the same agent restarting (0 again, same identity) or
/// upgraded (a new `service.version`), and any agent whose numbers follow.
#[test]
fn uid_09_a_restarted_or_upgraded_http_agent_is_not_a_duplicate() {
    let mut world = World::default_settings();
    let agent = uid(31);
    world.send(http(1), &described(agent, 0, "alpha"), S);
    world.send(http(1), &compressed(agent, 1), 2 * S);
    let restarted = world.send(http(1), &described(agent, 0, "alpha"), 3 * S);
    assert!(!restarted.detached && restarted.uid == agent);
    let mut upgraded = described(agent, 0, "alpha");
    for attribute in &mut upgraded
        .agent_description
        .as_mut()
        .unwrap()
        .identifying_attributes
    {
        if attribute.key == "service.version" {
            *attribute = opamp_proto::KeyValue::new("service.version", "2.0");
        }
    }
    let upgraded = world.send(http(1), &upgraded, 4 * S);
    assert!(!upgraded.detached && upgraded.uid == agent);
    let renamed_in_order = world.send(http(1), &described(agent, 1, "gamma"), 5 * S);
    assert!(
        !renamed_in_order.detached,
        "numbers follow: the same agent, renamed"
    );
}
