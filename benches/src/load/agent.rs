//! One simulated agent: a single task with a few hundred bytes of state.
//!
//! It sends its full status when it connects, then heartbeats (WebSocket) or
//! polls (HTTP) at the interval, answers `ReportFullState` with a full
//! status, and answers a new remote config offer at once with
//! `RemoteConfigStatus` APPLIED, the offered hash, and the offered config as
//! its effective config. Lost connections are retried with
//! opamp-transport's [`ExponentialBackoff`] (full jitter).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentDescription, AgentToServer, ComponentHealth,
    EffectiveConfig, InstanceUid, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerToAgent, ServerToAgentFlags,
};
use opamp_transport::http::client::{HttpError, HttpPoster};
use opamp_transport::{ExponentialBackoff, RetryPolicy as _};
use tokio::sync::watch;
use tokio::time::Instant;

use super::stats::Stats;
use super::ws::{WsConnector, WsLink, connect_error_kind, io_error_kind};

/// What simulated agents announce.
pub(crate) fn capabilities() -> AgentCapabilities {
    AgentCapabilities::REPORTS_STATUS
        | AgentCapabilities::ACCEPTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
        | AgentCapabilities::REPORTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_HEALTH
        | AgentCapabilities::REPORTS_HEARTBEAT
}

/// Instance uid of agent `index` in a run started at `run_millis` (Unix
/// milliseconds): UUIDv7 layout, the run's time in the timestamp, the index
/// in the last 48 bits, so uids are unique per run and stable across
/// reconnects.
pub(crate) fn agent_uid(run_millis: u64, index: usize) -> InstanceUid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&run_millis.to_be_bytes()[2..]);
    bytes[6] = 0x70; // version 7
    bytes[8] = 0x80; // RFC 4122 variant
    bytes[10..].copy_from_slice(&(index as u64).to_be_bytes()[2..]);
    InstanceUid::from_array(bytes)
}

/// The effective config an agent starts with.
const INITIAL_CONFIG: &str = "receivers:\n  otlp: {}\nexporters:\n  debug: {}\n";

/// Settings every agent shares.
pub(crate) struct AgentSetup {
    pub(crate) stats: Arc<Stats>,
    pub(crate) heartbeat: Duration,
    pub(crate) reply_timeout: Duration,
    pub(crate) run_millis: u64,
    pub(crate) stop: watch::Receiver<bool>,
}

/// What the agent sent and is waiting to hear back about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    FullStatus,
    Heartbeat,
    Applied,
}

/// What the agent must send next, besides heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Nothing,
    FullStatus,
    Applied,
}

/// The protocol state of one agent, independent of the transport.
struct AgentState {
    index: usize,
    uid: InstanceUid,
    sequence: u64,
    /// The remote config applied last (hash and files), kept to report it.
    applied: Option<(Bytes, AgentConfigMap)>,
}

impl AgentState {
    fn new(index: usize, uid: InstanceUid) -> Self {
        Self {
            index,
            uid,
            sequence: 0,
            applied: None,
        }
    }

    fn base(&mut self) -> AgentToServer {
        let message = AgentToServer {
            instance_uid: self.uid.to_bytes(),
            sequence_num: self.sequence,
            capabilities: capabilities().bits(),
            ..Default::default()
        };
        self.sequence += 1;
        message
    }

    fn heartbeat(&mut self) -> AgentToServer {
        self.base()
    }

    fn full_status(&mut self) -> AgentToServer {
        let uid = self.uid.to_string();
        let mut message = self.base();
        message.agent_description = Some(AgentDescription {
            identifying_attributes: vec![
                KeyValue::new("service.name", "loadgen-agent"),
                KeyValue::new("service.version", "1.0.0"),
                KeyValue::new("service.instance.id", uid.as_str()),
            ],
            non_identifying_attributes: vec![
                KeyValue::new("os.type", "linux"),
                KeyValue::new("host.name", "loadgen"),
            ],
        });
        message.health = Some(ComponentHealth {
            healthy: true,
            status: "running".into(),
            ..Default::default()
        });
        self.add_config_report(&mut message);
        message
    }

    fn applied_status(&mut self) -> AgentToServer {
        let mut message = self.base();
        self.add_config_report(&mut message);
        message
    }

    fn add_config_report(&self, message: &mut AgentToServer) {
        let config = match &self.applied {
            Some((hash, config)) => {
                message.remote_config_status = Some(RemoteConfigStatus {
                    last_remote_config_hash: hash.clone(),
                    status: RemoteConfigStatuses::Applied as i32,
                    error_message: String::new(),
                });
                config.clone()
            }
            None => {
                let mut config = AgentConfigMap::default();
                config.config_map.insert(
                    "config.yaml".into(),
                    opamp_proto::AgentConfigObject {
                        body: Bytes::from_static(INITIAL_CONFIG.as_bytes()),
                        content_type: "text/yaml".into(),
                        ..Default::default()
                    },
                );
                config
            }
        };
        message.effective_config = Some(EffectiveConfig {
            config_map: Some(config),
        });
    }

    /// Reacts to a server message: what must go out next.
    fn on_message(&mut self, message: &ServerToAgent) -> Due {
        if let Some(identification) = &message.agent_identification {
            if let Ok(bytes) = <[u8; 16]>::try_from(identification.new_instance_uid.as_ref()) {
                self.uid = InstanceUid::from_array(bytes);
            }
        }
        let mut due = Due::Nothing;
        if let Some(offer) = &message.remote_config {
            let known = self
                .applied
                .as_ref()
                .is_some_and(|(hash, _)| *hash == offer.config_hash);
            if !known && !offer.config_hash.is_empty() {
                // Copies, so the received frame is not kept alive.
                let config = offer.config.clone().unwrap_or_default();
                let config = AgentConfigMap {
                    config_map: config
                        .config_map
                        .into_iter()
                        .map(|(name, mut file)| {
                            file.body = Bytes::copy_from_slice(&file.body);
                            (name, file)
                        })
                        .collect(),
                };
                self.applied = Some((Bytes::copy_from_slice(&offer.config_hash), config));
                due = Due::Applied;
            }
        }
        let flags = ServerToAgentFlags::from_bits_retain(message.flags);
        if flags.contains(ServerToAgentFlags::REPORT_FULL_STATE) {
            // The full status carries the applied config status too.
            due = Due::FullStatus;
        }
        due
    }

    fn message_for(&mut self, due: Due) -> (AgentToServer, Sent) {
        match due {
            Due::FullStatus => (self.full_status(), Sent::FullStatus),
            Due::Applied => (self.applied_status(), Sent::Applied),
            Due::Nothing => (self.heartbeat(), Sent::Heartbeat),
        }
    }
}

/// Records what a reply means for the statistics.
fn on_reply(stats: &Stats, index: usize, sent: Sent, sent_at: Instant, now: Instant) {
    match sent {
        Sent::Heartbeat => stats.heartbeat_latency.record(now - sent_at),
        Sent::FullStatus => {}
        Sent::Applied => {
            if let Some(started) = stats.push_started(index) {
                stats
                    .push_latency
                    .record(now.into_std().saturating_duration_since(started));
            }
            stats
                .applied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// First heartbeat at a random point of the interval, so agents started in
/// the same millisecond do not stay in step.
fn first_heartbeat(interval: Duration) -> Instant {
    Instant::now() + interval.mul_f64(rand::random::<f64>())
}

/// Sleeps, unless the run is stopping. Returns false when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.changed() => false,
    }
}

/// Runs a WebSocket agent until the run stops.
pub(crate) async fn run_ws_agent(
    setup: Arc<AgentSetup>,
    connector: Arc<WsConnector>,
    index: usize,
) {
    let stats = &setup.stats;
    let mut stop = setup.stop.clone();
    let mut state = AgentState::new(index, agent_uid(setup.run_millis, index));
    let mut backoff: Option<ExponentialBackoff> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let connected = tokio::select! {
            result = connector.connect(index) => result,
            _ = stop.changed() => return,
        };
        let retry_after = match connected {
            Ok(link) => {
                backoff = None;
                stats.on_connected(started.elapsed());
                let end = ws_session(&setup, &mut state, link, &mut stop).await;
                stats.on_disconnected();
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Lost(kind) => {
                        stats.error(kind);
                        None
                    }
                }
            }
            Err(failure) => {
                stats.error(failure.kind);
                failure.retry_after
            }
        };
        let delay = backoff
            .get_or_insert_with(ExponentialBackoff::new)
            .next_delay(retry_after);
        if !pause(&mut stop, delay).await {
            return;
        }
    }
}

enum SessionEnd {
    Stopped,
    Lost(&'static str),
}

async fn ws_session(
    setup: &AgentSetup,
    state: &mut AgentState,
    mut link: WsLink,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let stats = &setup.stats;
    let closed_loop = setup.heartbeat.is_zero();
    // Every (re)connect starts with the full status: a restarted server
    // may have lost everything.
    let (message, sent) = state.message_for(Due::FullStatus);
    if let Err(kind) = link.send(&message).await {
        return SessionEnd::Lost(kind);
    }
    stats
        .sent
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The oldest message still waiting for its reply. Replies come in
    // order; a push arriving meanwhile is rare and counted as the reply.
    let mut awaiting = Some((Instant::now(), sent));
    let mut next_heartbeat = (!closed_loop).then(|| first_heartbeat(setup.heartbeat));
    loop {
        let reply_deadline = awaiting.map(|(at, _)| at + setup.reply_timeout);
        let wake = match (next_heartbeat, reply_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleeper = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut due = Due::Nothing;
        let mut send_now = false;
        tokio::select! {
            _ = stop.changed() => {
                link.close().await;
                return SessionEnd::Stopped;
            }
            received = link.recv() => match received {
                Ok(Some(message)) => {
                    stats.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let now = Instant::now();
                    if let Some((sent_at, sent)) = awaiting.take() {
                        on_reply(stats, state.index, sent, sent_at, now);
                    }
                    due = state.on_message(&message);
                    send_now = due != Due::Nothing || (closed_loop && awaiting.is_none());
                }
                Ok(None) => return SessionEnd::Lost("closed_by_server"),
                Err(failure) if failure.fatal => return SessionEnd::Lost(failure.kind),
                Err(failure) => stats.error(failure.kind),
            },
            () = sleeper => {
                let now = Instant::now();
                if reply_deadline.is_some_and(|deadline| now >= deadline) {
                    stats.error("reply_timeout");
                    awaiting = None;
                    send_now = closed_loop;
                }
                if let Some(at) = next_heartbeat {
                    if now >= at {
                        send_now = true;
                        // Skip missed beats rather than bursting.
                        let mut next = at + setup.heartbeat;
                        while next <= now {
                            next += setup.heartbeat;
                        }
                        next_heartbeat = Some(next);
                    }
                }
            }
        }
        if send_now {
            let (message, sent) = state.message_for(due);
            if let Err(kind) = link.send(&message).await {
                return SessionEnd::Lost(kind);
            }
            stats
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if awaiting.is_none() {
                awaiting = Some((Instant::now(), sent));
            }
        }
    }
}

/// Runs a plain-HTTP agent until the run stops.
pub(crate) async fn run_http_agent(setup: Arc<AgentSetup>, poster: HttpPoster, index: usize) {
    let stats = &setup.stats;
    let mut stop = setup.stop.clone();
    let mut state = AgentState::new(index, agent_uid(setup.run_millis, index));
    let mut backoff: Option<ExponentialBackoff> = None;
    let mut connected = false;
    let mut due = Due::FullStatus;
    // Polls are spread over the interval like WebSocket heartbeats.
    let mut next_poll = if setup.heartbeat.is_zero() {
        Instant::now()
    } else {
        first_heartbeat(setup.heartbeat)
    };
    let mut first = true;
    loop {
        if *stop.borrow() {
            break;
        }
        if !first && due == Due::Nothing {
            tokio::select! {
                () = tokio::time::sleep_until(next_poll) => {}
                _ = stop.changed() => break,
            }
        }
        first = false;
        let (message, sent) = state.message_for(due);
        let sent_at = Instant::now();
        next_poll = sent_at + setup.heartbeat;
        let result = tokio::select! {
            result = poster.exchange(state.uid, &message) => result,
            _ = stop.changed() => break,
        };
        stats
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(reply) => {
                stats
                    .received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let now = Instant::now();
                if !connected {
                    connected = true;
                    stats.on_connected(now - sent_at);
                }
                backoff = None;
                on_reply(stats, index, sent, sent_at, now);
                due = state.on_message(&reply);
            }
            Err(error) => {
                stats.error(http_error_kind(&error));
                if connected {
                    connected = false;
                    stats.on_disconnected();
                }
                // The server may have lost everything: start over.
                due = Due::FullStatus;
                let delay = backoff
                    .get_or_insert_with(ExponentialBackoff::new)
                    .next_delay(error.retry_after());
                if !pause(&mut stop, delay).await {
                    break;
                }
            }
        }
    }
    if connected {
        stats.on_disconnected();
    }
}

fn http_error_kind(error: &HttpError) -> &'static str {
    match error {
        HttpError::RetryLater { status, .. } if status.as_u16() == 429 => "http_429",
        HttpError::RetryLater { .. } => "http_503",
        HttpError::Unauthorized { .. } => "http_401",
        HttpError::Status { .. } => "http_status",
        HttpError::Timeout(_) => "reply_timeout",
        HttpError::Connect(error) => connect_error_kind(error),
        HttpError::Transport(error) => {
            let io = std::error::Error::source(error.as_ref())
                .and_then(|source| source.downcast_ref::<std::io::Error>());
            io.map_or("http_transport", io_error_kind)
        }
        HttpError::Decode(_) | HttpError::InvalidBody(_) => "malformed_body",
        _ => "http_other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::{AgentIdentification, config_hash};
    use opamp_testkit::{config_file, offer_config};

    fn offer(body: &str) -> ServerToAgent {
        offer_config(config_file("config.yaml", "text/yaml", body))
    }

    #[test]
    fn uids_are_version_7_unique_and_stable() {
        let a = agent_uid(1_700_000_000_000, 0);
        let b = agent_uid(1_700_000_000_000, 1);
        assert_ne!(a, b);
        assert_eq!(a, agent_uid(1_700_000_000_000, 0));
        assert_ne!(a, agent_uid(1_700_000_000_001, 0));
        assert_eq!(a.to_uuid().get_version_num(), 7);
        assert_eq!(b.as_bytes()[15], 1);
    }

    #[test]
    fn sequence_numbers_count_up_from_zero() {
        let mut state = AgentState::new(0, agent_uid(1, 0));
        assert_eq!(state.full_status().sequence_num, 0);
        assert_eq!(state.heartbeat().sequence_num, 1);
        let heartbeat = state.heartbeat();
        assert_eq!(heartbeat.sequence_num, 2);
        assert!(heartbeat.agent_description.is_none());
        assert_eq!(heartbeat.capabilities, capabilities().bits());
    }

    #[test]
    fn a_new_offer_is_applied_once_with_its_hash() {
        let mut state = AgentState::new(0, agent_uid(1, 0));
        let message = offer("a: 1\n");
        let hash = message.remote_config.as_ref().unwrap().config_hash.clone();
        assert_eq!(state.on_message(&message), Due::Applied);
        let (status, sent) = state.message_for(Due::Applied);
        assert_eq!(sent, Sent::Applied);
        let report = status.remote_config_status.unwrap();
        assert_eq!(report.status, RemoteConfigStatuses::Applied as i32);
        assert_eq!(report.last_remote_config_hash, hash);
        let effective = status.effective_config.unwrap().config_map.unwrap();
        assert_eq!(config_hash(&effective), hash);
        // The same offer again (re-offered until echoed) needs nothing.
        assert_eq!(state.on_message(&message), Due::Nothing);
        assert_eq!(state.on_message(&offer("a: 2\n")), Due::Applied);
    }

    #[test]
    fn report_full_state_gets_the_whole_status() {
        let mut state = AgentState::new(0, agent_uid(1, 0));
        state.on_message(&offer("a: 1\n"));
        let request = ServerToAgent {
            flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
            ..Default::default()
        };
        assert_eq!(state.on_message(&request), Due::FullStatus);
        let (full, sent) = state.message_for(Due::FullStatus);
        assert_eq!(sent, Sent::FullStatus);
        assert!(full.agent_description.is_some());
        assert!(full.health.is_some());
        assert_eq!(
            full.remote_config_status.unwrap().status,
            RemoteConfigStatuses::Applied as i32
        );
    }

    #[test]
    fn an_assigned_uid_is_adopted() {
        let mut state = AgentState::new(0, agent_uid(1, 0));
        let new_uid = agent_uid(2, 9);
        let message = ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: new_uid.to_bytes(),
            }),
            ..Default::default()
        };
        state.on_message(&message);
        assert_eq!(state.heartbeat().instance_uid, new_uid.to_bytes());
    }

    #[test]
    fn applied_replies_count_and_time_the_push() {
        let stats = Stats::new(1);
        let start = Instant::now();
        stats.mark_push_started(0, start.into_std());
        on_reply(
            &stats,
            0,
            Sent::Applied,
            start,
            start + Duration::from_millis(40),
        );
        assert_eq!(stats.applied.load(std::sync::atomic::Ordering::Relaxed), 1);
        let push = stats.push_latency.take();
        assert_eq!(push.count(), 1);
        let p50 = push.percentile(50.0).unwrap();
        assert!(p50 >= Duration::from_millis(38) && p50 <= Duration::from_millis(42));
        on_reply(
            &stats,
            0,
            Sent::Heartbeat,
            start,
            start + Duration::from_millis(1),
        );
        assert_eq!(stats.heartbeat_latency.take().count(), 1);
    }
}
