//! Drives the sans-IO server core directly: a sequence of messages from a
//! few agents over a few connections, with time moving and probes answered
//! as the input says, through a minimal synchronous shell.
//!
//! Input: chunks of `[connection, flags, advance, len, bytes...]`.
//! `connection` picks one of four connections (even: WebSocket, odd: plain
//! HTTP); `flags` bit 0 closes that connection first, bit 1 makes it answer
//! probes, bit 2 fails the next store read; `advance` moves the clock by
//! that many 100 ms steps; `bytes` is an `AgentToServer` (decoded leniently:
//! undecodable bytes become an empty message for one of four uids).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opamp_proto::{AgentToServer, InstanceUid, Message};
use opamp_server::{
    AgentRecord, AgentSession, ConnectionRef, CoreSettings, Disposition, Holder, Inbound, Liveness,
    ReconnectGuard, ReconnectHistory, ServerCore, Step, Stored, TransportKind,
};

const CONNECTIONS: u64 = 4;

/// Runs one input through the server core; panics on a broken invariant.
pub fn server_core(data: &[u8]) {
    let mut settings = CoreSettings::default();
    settings.reconnect_guard = Some(ReconnectGuard::new(5, Duration::from_secs(10)));
    let core = ServerCore::new(settings);
    let start = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut at = Duration::ZERO;
    let mut live: HashMap<InstanceUid, (ConnectionRef, AgentSession)> = HashMap::new();
    let mut records: HashMap<InstanceUid, AgentRecord> = HashMap::new();
    let mut reconnects: HashMap<InstanceUid, ReconnectHistory> = HashMap::new();
    let mut answers_probes = [false; CONNECTIONS as usize];
    let mut fail_next_read = false;
    let mut next_uid = 0x8000_u16;
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 4 && steps < 64 {
        steps += 1;
        let (connection, flags, advance, len) = (rest[0], rest[1], rest[2], usize::from(rest[3]));
        rest = &rest[4..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        let id = u64::from(connection) % CONNECTIONS;
        let transport = if id % 2 == 0 {
            TransportKind::WebSocket
        } else {
            TransportKind::PlainHttp
        };
        let this = ConnectionRef::new(id, transport, None);
        if flags & 1 != 0 {
            live.retain(|_, (holding, _)| holding.id != id);
        }
        answers_probes[id as usize] = flags & 2 != 0;
        fail_next_read |= flags & 4 != 0;
        at += Duration::from_millis(100) * u32::from(advance);

        let mut message = AgentToServer::decode(body).unwrap_or_default();
        let uid = match InstanceUid::try_from(&message.instance_uid) {
            Ok(uid) => uid,
            Err(_) => {
                let uid = InstanceUid::from_array([connection % 4; 16]);
                message.instance_uid = uid.to_bytes();
                uid
            }
        };
        let fresh = AtomicU16::new(next_uid);
        let new_uid = || {
            let value = fresh.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let mut bytes = [0u8; 16];
            bytes[..2].copy_from_slice(&value.to_be_bytes());
            bytes[15] = 0xAA;
            InstanceUid::from_array(bytes)
        };
        let now = start + at;
        let inbound = Inbound::new(uid, &message, this, now, wall + at, &new_uid);
        let mut holder = match live.get(&uid) {
            None => Holder::Nobody,
            Some((holding, session)) if holding.id == id => Holder::This(session.clone()),
            Some((holding, session)) => Holder::Other {
                connection: *holding,
                session: session.clone(),
                alive: Liveness::Unknown,
            },
        };
        let mut history = (!matches!(holder, Holder::This(_))).then(|| {
            reconnects
                .get(&uid)
                .copied()
                .unwrap_or_else(|| ReconnectHistory::new(now))
        });
        let mut stored = Stored::NotLoaded;
        let mut rounds = 0;
        let exchange = loop {
            rounds += 1;
            assert!(rounds <= 3, "the core keeps asking");
            match core.step(&inbound, &holder, stored, history.as_mut()) {
                Step::Done(exchange) => break *exchange,
                Step::NeedRecord => {
                    stored = if std::mem::take(&mut fail_next_read) {
                        Stored::Failed
                    } else {
                        records
                            .get(&uid)
                            .cloned()
                            .map_or(Stored::Missing, Stored::Found)
                    };
                }
                Step::NeedProbe { connection } => {
                    assert!(
                        matches!(holder, Holder::Other { .. }),
                        "probe without a rival"
                    );
                    let alive = answers_probes[connection as usize];
                    if let Holder::Other { alive: slot, .. } = &mut holder {
                        *slot = if alive {
                            Liveness::Alive
                        } else {
                            Liveness::Dead
                        };
                    }
                    stored = Stored::NotLoaded;
                }
                _ => unreachable!("a step the shell does not know"),
            }
        };
        next_uid = fresh.into_inner();
        // UID-06: the reply carries the uid the message carried.
        assert_eq!(exchange.reply.instance_uid, message.instance_uid, "UID-06");
        // MSG-05: an error reply carries nothing else the agent must act on.
        if exchange.reply.error_response.is_some() {
            assert!(exchange.reply.remote_config.is_none());
            assert!(exchange.save.is_empty(), "a refusal saves nothing");
            assert!(exchange.session.is_none());
        }
        if let Some(identification) = &exchange.reply.agent_identification {
            let assigned =
                InstanceUid::try_from(&identification.new_instance_uid).expect("a valid new uid");
            assert_eq!(assigned, exchange.uid);
            assert_ne!(assigned, uid);
        }
        if let Some(history) = history {
            reconnects.insert(uid, history);
        }
        if let Some(old) = exchange.replaced {
            assert_ne!(old, id, "a connection never replaces itself");
            live.retain(|_, (holding, _)| holding.id != old);
        }
        if let Some(released) = exchange.release {
            live.remove(&released);
        }
        for record in &exchange.save {
            records.insert(record.uid, record.clone());
        }
        match exchange.disposition {
            Disposition::Continue => {
                let session = exchange.session.expect("a continuing agent has a session");
                live.insert(exchange.uid, (this, session));
            }
            Disposition::Disconnected => assert!(exchange.session.is_none()),
            _ => {}
        }
        // At most one connection holds each uid, and every record is keyed
        // by its own uid.
        for (key, record) in &records {
            assert_eq!(*key, record.uid);
        }
    }
}
