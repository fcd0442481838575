//! `ClientCore`, the sans-IO client state machine, fed arbitrary
//! `ServerToAgent` messages interleaved with clock advances, connection
//! events, HTTP failures and setter calls, the way a driver would; offered
//! connection settings are accepted or refused, and the candidate settings
//! the core asks for reach their server or not.

use std::time::{Duration, Instant};

use bytes::Bytes;
use opamp_client::{
    ClientCore, CoreConfig, Event, ProtocolError, SendFailure, SettingsCommand, SettingsOutcome,
    TransportKind,
};
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentToServer, ComponentHealth, InstanceUid, Message,
    RemoteConfigStatus, RemoteConfigStatuses, ServerToAgent,
};
use opamp_transport::ExponentialBackoff;

/// More messages than this at one instant means a send loop.
const MAX_BURST: usize = 8;
/// More events than this after one input means an event loop.
const MAX_EVENTS: usize = 64;

/// Input: a control byte (bit 0: plain HTTP; the other bits: which optional
/// capabilities the agent has), then operations, each an opcode byte and
/// its operands; a `ServerToAgent` operand is a little-endian `u16` length
/// and that many protobuf bytes.
pub fn client_core(data: &[u8]) {
    let Some((&control, ops)) = data.split_first() else {
        return;
    };
    let mut harness = Harness::new(control);
    let mut input = Input(ops);
    while let Some(op) = input.byte() {
        harness.step(op, &mut input);
        harness.drain();
    }
    // However the conversation went, an orderly stop ends the core.
    harness.core.stop(harness.now);
    for _ in 0..4 {
        harness.drain();
        harness.answer_http(None);
        if harness.core.wants_close() {
            harness.core.handle_disconnected(harness.now);
            harness.connected = false;
        }
    }
    assert!(
        harness.core.is_stopped(),
        "stop did not finish: {:?}",
        harness.core
    );
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn bytes(&mut self) -> &[u8] {
        let low = self.byte().unwrap_or(0);
        let high = self.byte().unwrap_or(0);
        let len = usize::from(u16::from_le_bytes([low, high])).min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        taken
    }
}

struct Harness {
    core: ClientCore,
    transport: TransportKind,
    now: Instant,
    /// WebSocket: the driver's connection is up.
    connected: bool,
    /// HTTP: a request is on the wire, awaiting its answer.
    in_flight: bool,
    last_sequence_num: Option<u64>,
    /// HTTP: the last request failed and its content was merged back; the
    /// core reuses its sequence number, since the server never took it.
    may_repeat: bool,
    /// The core asked to try candidate settings and has not yet said to
    /// keep or drop them.
    trying_candidate: bool,
    /// Offered OpAMP settings are refused rather than accepted.
    refuse_offers: bool,
    /// Candidate settings turn out unusable.
    candidates_fail: bool,
}

impl Harness {
    fn new(control: u8) -> Self {
        let transport = if control & 1 == 0 {
            TransportKind::WebSocket
        } else {
            TransportKind::PlainHttp
        };
        let optional = [
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG,
            AgentCapabilities::REPORTS_REMOTE_CONFIG,
            AgentCapabilities::REPORTS_HEARTBEAT,
            AgentCapabilities::ACCEPTS_RESTART_COMMAND,
            AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
                | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS,
            AgentCapabilities::REPORTS_OWN_METRICS
                | AgentCapabilities::ACCEPTS_OTHER_CONNECTION_SETTINGS,
            AgentCapabilities::REPORTS_HEALTH,
        ];
        let mut capabilities = AgentCapabilities::REPORTS_STATUS;
        for (bit, capability) in optional.into_iter().enumerate() {
            if control & (2 << bit) != 0 {
                capabilities |= capability;
            }
        }
        let uid = InstanceUid::from_array([0x42; 16]);
        let mut config = CoreConfig::new(transport, uid);
        config.max_message_size = 1 << 20;
        let mut seed = 0x9e37_79b9_u32;
        let backoff = ExponentialBackoff::new().with_jitter_source(move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            f64::from(seed >> 8) / f64::from(1u32 << 24)
        });
        let mut core = ClientCore::new(config, Box::new(backoff));
        core.set_capabilities(capabilities);
        core.set_agent_description(AgentDescription::for_service("io.example.fuzz", "1.0"));
        core.set_health(ComponentHealth {
            healthy: true,
            ..Default::default()
        });
        let now = Instant::now();
        core.start(now).expect("a complete configuration starts");
        Self {
            core,
            transport,
            now,
            connected: false,
            in_flight: false,
            last_sequence_num: None,
            may_repeat: false,
            trying_candidate: false,
            refuse_offers: false,
            candidates_fail: false,
        }
    }

    fn step(&mut self, op: u8, input: &mut Input<'_>) {
        match op % 8 {
            // A message from the server, if the transport can deliver one.
            0 | 1 => {
                let bytes = input.bytes();
                let Ok(message) = ServerToAgent::decode(bytes) else {
                    return;
                };
                self.receive(message);
            }
            // Time passes.
            2 => {
                let seconds = u64::from(input.byte().unwrap_or(1));
                self.now += Duration::from_millis(seconds * 250);
                self.core.handle_timeout(self.now);
            }
            // The connection breaks / an HTTP request fails.
            3 => {
                let detail = input.byte().unwrap_or(0);
                match self.transport {
                    TransportKind::WebSocket if self.connected => {
                        self.core.handle_disconnected(self.now);
                        self.connected = false;
                    }
                    TransportKind::WebSocket => {
                        let hint =
                            (detail & 1 != 0).then(|| Duration::from_secs(u64::from(detail)));
                        self.core.handle_connect_failed(self.now, hint);
                    }
                    _ => {
                        let failure = if detail & 1 == 0 {
                            SendFailure::Rejected
                        } else {
                            SendFailure::Retryable {
                                retry_after: (detail & 2 != 0)
                                    .then(|| Duration::from_secs(u64::from(detail >> 2))),
                            }
                        };
                        if self.in_flight {
                            self.may_repeat = matches!(failure, SendFailure::Retryable { .. });
                            self.core.handle_send_failed(self.now, failure);
                            self.in_flight = false;
                        }
                    }
                }
            }
            // The agent reports changes.
            4 => {
                let value = input.byte().unwrap_or(0);
                self.core.set_health(ComponentHealth {
                    healthy: value & 1 == 0,
                    status: format!("status-{value}"),
                    ..Default::default()
                });
            }
            5 => {
                let hash = input.bytes().to_vec();
                let status = match hash.first().copied().unwrap_or(0) % 3 {
                    0 => RemoteConfigStatuses::Applying,
                    1 => RemoteConfigStatuses::Applied,
                    _ => RemoteConfigStatuses::Failed,
                };
                self.core.set_remote_config_status(RemoteConfigStatus {
                    last_remote_config_hash: Bytes::from(hash),
                    status: status as i32,
                    error_message: String::new(),
                });
            }
            6 => self.core.report_full_state(),
            _ => match input.byte().unwrap_or(0) % 3 {
                // A deliberate reconnect.
                0 => self.core.begin_reconnect(self.now),
                1 => self.refuse_offers = !self.refuse_offers,
                _ => self.candidates_fail = !self.candidates_fail,
            },
        }
    }

    fn receive(&mut self, message: ServerToAgent) {
        let deliverable = match self.transport {
            TransportKind::WebSocket => self.connected,
            _ => self.in_flight,
        };
        if !deliverable {
            return;
        }
        let offered_uid = message
            .agent_identification
            .as_ref()
            .map(|identification| identification.new_instance_uid.clone());
        if self.transport == TransportKind::PlainHttp && message.error_response.is_some() {
            // An UNAVAILABLE answer puts the request back, like a failure.
            self.may_repeat = true;
        }
        self.in_flight = false;
        self.core.handle_message(message, self.now);
        // UID-03/UID-08: only a 16-byte uid is ever adopted.
        if let Some(offered) = offered_uid
            && offered.len() != 16
        {
            assert_ne!(self.core.instance_uid().to_bytes(), offered);
        }
    }

    /// HTTP: answers the request on the wire with an empty acknowledgement.
    fn answer_http(&mut self, message: Option<ServerToAgent>) {
        if self.transport == TransportKind::PlainHttp && self.in_flight {
            self.in_flight = false;
            self.core
                .handle_message(message.unwrap_or_default(), self.now);
        }
    }

    /// Does what a driver does at `now`: connect if asked, send what is due,
    /// close if asked, hand out events.
    fn drain(&mut self) {
        self.carry_out_commands();
        if self.transport == TransportKind::WebSocket
            && !self.connected
            && self.core.wants_connect(self.now)
        {
            self.core.handle_connected(self.now);
            self.connected = true;
        }
        if let Some(at) = self.core.poll_timeout() {
            // A wake-up far in the future is fine; the call must not panic.
            let _ = at;
        }
        let mut sent = 0;
        loop {
            let can_send = match self.transport {
                TransportKind::WebSocket => self.connected,
                _ => !self.in_flight,
            };
            if !can_send {
                break;
            }
            let Some(message) = self.core.poll_transmit(self.now) else {
                break;
            };
            self.check_sent(&message);
            sent += 1;
            assert!(
                sent <= MAX_BURST,
                "send loop: {sent} messages at one instant"
            );
            if self.transport == TransportKind::PlainHttp {
                self.in_flight = true;
            }
        }
        if self.core.wants_close() {
            self.core.handle_disconnected(self.now);
            self.connected = false;
            self.in_flight = false;
        }
        let mut events = 0;
        while let Some(event) = self.core.poll_event() {
            events += 1;
            assert!(events <= MAX_EVENTS, "event loop");
            match event {
                Event::NewInstanceUid(uid) => {
                    assert_eq!(uid, self.core.instance_uid(), "UID-08: adopted at once");
                }
                Event::ProtocolError(ProtocolError::InvalidNewInstanceUid { len }) => {
                    assert_ne!(len, 16);
                }
                Event::OpampConnectionSettings { hash, settings } => {
                    if self.refuse_offers {
                        self.core
                            .refuse_opamp_connection_settings(&hash, "fuzz: refused".into());
                    } else {
                        self.core
                            .accept_opamp_connection_settings(&hash, *settings, self.now);
                    }
                }
                Event::OtherConnectionSettings { hash, .. } => {
                    let outcome = if self.refuse_offers {
                        SettingsOutcome::Failed("fuzz: refused".into())
                    } else {
                        SettingsOutcome::Applied
                    };
                    self.core.handle_other_settings_outcome(&hash, outcome);
                }
                _ => {}
            }
        }
    }

    /// Carries out the core's connection settings commands, checking that
    /// a candidate is tried, then kept or dropped, one at a time (CS-06).
    fn carry_out_commands(&mut self) {
        while let Some(command) = self.core.poll_settings_command() {
            match command {
                SettingsCommand::TryCandidate(_) => {
                    assert!(!self.trying_candidate, "CS-06: two candidates at once");
                    self.trying_candidate = true;
                    if self.candidates_fail {
                        self.core
                            .handle_candidate_failed(self.now, "fuzz: unusable".into());
                    }
                }
                SettingsCommand::KeepCandidate | SettingsCommand::DropCandidate => {
                    assert!(
                        self.trying_candidate,
                        "CS-06: {command:?} without a candidate"
                    );
                    self.trying_candidate = false;
                    if matches!(command, SettingsCommand::DropCandidate) {
                        // The message the candidate never took goes to the
                        // old server with its number, which that server has
                        // not seen (SEQ-01 holds per server).
                        self.may_repeat = true;
                    }
                }
                _ => {}
            }
        }
    }

    fn check_sent(&mut self, message: &AgentToServer) {
        // UID-03, CAP-01, SEQ-01.
        assert_eq!(message.instance_uid.len(), 16);
        assert_eq!(message.instance_uid, self.core.instance_uid().to_bytes());
        assert_eq!(message.capabilities, self.core.capabilities().bits());
        if let Some(last) = self.last_sequence_num {
            let next = last.wrapping_add(1);
            let repeated = std::mem::take(&mut self.may_repeat) && message.sequence_num == last;
            assert!(
                message.sequence_num == next || repeated,
                "SEQ-01: {} after {last}",
                message.sequence_num
            );
        }
        self.last_sequence_num = Some(message.sequence_num);
        assert!(message.encoded_len() <= 1 << 20);
    }
}
