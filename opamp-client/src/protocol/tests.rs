//! Deterministic tests of the protocol core. Time is explicit: every
//! `Instant` is `t0` plus a chosen offset. Rule IDs from the spec
//! checklist are in the test names.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentDescription, AgentIdentification,
    AgentRemoteConfig, AgentToServer, AgentToServerFlags, AvailableComponents, CertificateRequest,
    CommandType, ComponentDetails, ComponentHealth, ConnectionSettingsOffers,
    ConnectionSettingsRequest, ConnectionSettingsStatus, ConnectionSettingsStatuses,
    CustomCapabilities, CustomMessage, EffectiveConfig, InstanceUid, KeyValue,
    OpAmpConnectionSettings, OpAmpConnectionSettingsRequest, OtherConnectionSettings,
    PackageStatuses, PackagesAvailable, RemoteConfigStatus, RemoteConfigStatuses, RetryInfo,
    ServerCapabilities, ServerErrorResponse, ServerErrorResponseType, ServerToAgent,
    ServerToAgentCommand, ServerToAgentFlags, TelemetryConnectionSettings, TlsCertificate,
    server_error_response,
};
use opamp_transport::ExponentialBackoff;

use super::*;

const SEC: Duration = Duration::from_secs(1);

/// Backoff without randomness: 1 s, 2 s, 4 s, ... (top of each window);
/// server hints are used exactly (the default policy spreads them a little,
/// which opamp-transport tests; here we test that the core honours them).
fn backoff() -> Box<dyn RetryPolicy> {
    Box::new(ExactHints(
        ExponentialBackoff::new().with_jitter_source(|| 1.0),
    ))
}

struct ExactHints(ExponentialBackoff);

impl RetryPolicy for ExactHints {
    fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let computed = self.0.next_delay(hint);
        hint.unwrap_or(computed)
    }

    fn reset(&mut self) {
        self.0.reset();
    }
}

fn description() -> AgentDescription {
    AgentDescription::for_service("io.example.agent", "1.0.0")
}

fn uid() -> InstanceUid {
    InstanceUid::from([7; 16])
}

fn new_core(transport: TransportKind, caps: AgentCapabilities) -> ClientCore {
    let mut config = CoreConfig::new(transport, uid());
    config.packages_supported = caps.contains(AgentCapabilities::ACCEPTS_PACKAGES);
    let mut core = ClientCore::new(config, backoff());
    core.set_capabilities(caps);
    core.set_agent_description(description());
    if caps.contains(AgentCapabilities::REPORTS_HEALTH) {
        core.set_health(health(true));
    }
    if caps.contains(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS) {
        core.set_available_components(components());
    }
    core
}

/// A started WebSocket core, connected at `t0`, first message drained.
fn ws_connected(caps: AgentCapabilities, t0: Instant) -> (ClientCore, AgentToServer) {
    let mut core = new_core(TransportKind::WebSocket, caps);
    core.start(t0).unwrap();
    assert!(core.wants_connect(t0));
    core.handle_connected(t0);
    let first = core.poll_transmit(t0).expect("first message");
    assert!(core.poll_transmit(t0).is_none());
    (core, first)
}

/// A started HTTP core whose first request was answered at `t0`.
fn http_started(caps: AgentCapabilities, t0: Instant) -> (ClientCore, AgentToServer) {
    let mut core = new_core(TransportKind::PlainHttp, caps);
    core.start(t0).unwrap();
    let first = core.poll_transmit(t0).expect("first message");
    core.handle_message(reply(), t0);
    (core, first)
}

fn reply() -> ServerToAgent {
    ServerToAgent {
        instance_uid: uid().to_bytes(),
        ..Default::default()
    }
}

fn health(healthy: bool) -> ComponentHealth {
    ComponentHealth {
        healthy,
        status: if healthy { "ok" } else { "degraded" }.into(),
        attributes: vec![KeyValue::new("pipeline", "metrics")],
        ..Default::default()
    }
}

fn components() -> AvailableComponents {
    AvailableComponents {
        hash: Bytes::from_static(b"components-v1"),
        components: BTreeMap::from([(
            "receivers".to_owned(),
            ComponentDetails {
                metadata: vec![KeyValue::new("name", "otlp")],
                ..Default::default()
            },
        )]),
    }
}

fn config_map(body: &'static str) -> AgentConfigMap {
    AgentConfigMap {
        config_map: BTreeMap::from([(
            String::new(),
            AgentConfigObject {
                body: Bytes::from_static(body.as_bytes()),
                content_type: "text/yaml".into(),
                ..Default::default()
            },
        )]),
    }
}

fn events(core: &mut ClientCore) -> Vec<Event> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

/// The single event the core produced.
fn one_event(core: &mut ClientCore) -> Event {
    let mut all = events(core);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn is_minimal(message: &AgentToServer) -> bool {
    let stripped = AgentToServer {
        instance_uid: message.instance_uid.clone(),
        sequence_num: message.sequence_num,
        capabilities: message.capabilities,
        ..Default::default()
    };
    *message == stripped
}

fn unavailable(retry_after: Option<Duration>) -> ServerToAgent {
    ServerToAgent {
        error_response: Some(ServerErrorResponse {
            r#type: ServerErrorResponseType::Unavailable as i32,
            error_message: "overloaded".into(),
            details: retry_after.map(|d| {
                server_error_response::Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: d.as_nanos() as u64,
                })
            }),
        }),
        ..reply()
    }
}

// ------------------------------------------------------------ start validation

#[test]
fn start_requires_agent_description() {
    let mut core = ClientCore::new(CoreConfig::new(TransportKind::PlainHttp, uid()), backoff());
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::MissingAgentDescription)
    ));
}

#[test]
fn start_requires_health_when_reports_health() {
    let mut core = new_core(TransportKind::PlainHttp, AgentCapabilities::empty());
    core.set_capabilities(AgentCapabilities::REPORTS_HEALTH);
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::MissingHealth)
    ));
    core.set_health(health(true));
    core.start(Instant::now()).unwrap();
}

#[test]
fn start_requires_components_when_reports_available_components() {
    let mut core = new_core(TransportKind::PlainHttp, AgentCapabilities::empty());
    core.set_capabilities(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS);
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::MissingAvailableComponents)
    ));
}

#[test]
fn start_requires_package_capabilities_to_match_the_store() {
    // AcceptsPackages without a package store.
    let mut core = ClientCore::new(CoreConfig::new(TransportKind::PlainHttp, uid()), backoff());
    core.set_agent_description(description());
    core.set_capabilities(AgentCapabilities::ACCEPTS_PACKAGES);
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::PackagesMismatch)
    ));

    // A package store without AcceptsPackages.
    let mut config = CoreConfig::new(TransportKind::PlainHttp, uid());
    config.packages_supported = true;
    let mut core = ClientCore::new(config, backoff());
    core.set_agent_description(description());
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::PackagesMismatch)
    ));

    // ReportsPackageStatuses with nothing to report.
    let mut core = new_core(
        TransportKind::PlainHttp,
        AgentCapabilities::REPORTS_PACKAGE_STATUSES,
    );
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::PackagesMismatch)
    ));
    core.set_package_statuses(PackageStatuses::default());
    core.start(Instant::now()).unwrap();
}

#[test]
fn start_rejects_nil_uid_and_double_start() {
    let mut core = ClientCore::new(
        CoreConfig::new(TransportKind::PlainHttp, InstanceUid::from([0; 16])),
        backoff(),
    );
    core.set_agent_description(description());
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::NilInstanceUid)
    ));

    let mut core = new_core(TransportKind::PlainHttp, AgentCapabilities::empty());
    core.start(Instant::now()).unwrap();
    assert!(matches!(
        core.start(Instant::now()),
        Err(ClientError::AlreadyStarted)
    ));
}

#[test]
fn cap_03_reports_status_is_always_set() {
    let mut core = new_core(
        TransportKind::PlainHttp,
        AgentCapabilities::ACCEPTS_REMOTE_CONFIG,
    );
    core.set_capabilities(AgentCapabilities::empty());
    assert_eq!(core.capabilities(), AgentCapabilities::REPORTS_STATUS);
    core.start(Instant::now()).unwrap();
    let first = core.poll_transmit(Instant::now()).unwrap();
    assert_eq!(first.capabilities, AgentCapabilities::REPORTS_STATUS.bits());
}

// ------------------------------------------------------------ status reporting

fn all_reports() -> AgentCapabilities {
    AgentCapabilities::REPORTS_HEALTH
        | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
        | AgentCapabilities::REPORTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS
        | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS
}

#[test]
fn sts_01_first_message_carries_full_state() {
    let t0 = Instant::now();
    let mut core = new_core(TransportKind::WebSocket, all_reports());
    core.set_effective_config(EffectiveConfig {
        config_map: Some(config_map("a: 1")),
    });
    core.set_custom_capabilities(CustomCapabilities {
        capabilities: vec!["io.example.cap".into()],
    });
    core.set_connection_settings_status(ConnectionSettingsStatus {
        last_connection_settings_hash: Bytes::from_static(b"cs"),
        status: ConnectionSettingsStatuses::Applied as i32,
        error_message: String::new(),
    });
    core.set_flags(AgentToServerFlags::REQUEST_INSTANCE_UID);
    core.start(t0).unwrap();
    // Nothing goes out before the connection exists.
    assert!(core.poll_transmit(t0).is_none());
    core.handle_connected(t0);
    let first = core.poll_transmit(t0).unwrap();
    assert_eq!(first.instance_uid, uid().to_bytes());
    assert_eq!(first.sequence_num, 0);
    assert_eq!(first.agent_description, Some(description()));
    assert_eq!(first.health, Some(health(true)));
    assert!(first.effective_config.is_some());
    // RCFG-06: without a saved status, UNSET is reported.
    assert_eq!(
        first.remote_config_status,
        Some(RemoteConfigStatus::default())
    );
    assert!(first.custom_capabilities.is_some());
    assert!(first.connection_settings_status.is_some());
    assert_eq!(first.flags, AgentToServerFlags::REQUEST_INSTANCE_UID.bits());
    // AC-03: the first report of components is the hash alone.
    let sent = first.available_components.unwrap();
    assert_eq!(sent.hash, components().hash);
    assert!(sent.components.is_empty());
}

#[test]
fn seq_01_cap_01_sequence_increments_and_capabilities_always_set() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::REPORTS_HEALTH | AgentCapabilities::REPORTS_HEARTBEAT;
    let (mut core, first) = ws_connected(caps, t0);
    assert_eq!(first.sequence_num, 0);
    let mut expected = 1;
    for step in 1..=5u32 {
        core.set_health(health(step % 2 == 0));
        let message = core.poll_transmit(t0 + SEC * step).unwrap();
        assert_eq!(message.sequence_num, expected);
        assert_eq!(
            message.capabilities,
            (caps | AgentCapabilities::REPORTS_STATUS).bits()
        );
        expected += 1;
    }
    // Heartbeats count too.
    let heartbeat = core.poll_transmit(t0 + SEC * 100).unwrap();
    assert_eq!(heartbeat.sequence_num, expected);
}

#[test]
fn seq_02_seq_04_unchanged_fields_are_omitted() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(all_reports(), t0);
    core.set_health(health(false));
    let message = core.poll_transmit(t0).unwrap();
    assert_eq!(message.health, Some(health(false)));
    assert!(message.agent_description.is_none());
    assert!(message.remote_config_status.is_none());
    assert!(message.available_components.is_none());
    assert!(message.connection_settings_status.is_none());
    assert!(message.effective_config.is_none());
}

#[test]
fn msg_04_setting_an_unchanged_value_sends_nothing() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(all_reports(), t0);
    core.set_agent_description(description());
    core.set_health(health(true));
    assert!(core.poll_transmit(t0).is_none());
    // An empty reply from the server does not trigger a report either.
    core.handle_message(reply(), t0);
    assert!(core.poll_transmit(t0).is_none());
}

#[test]
fn seq_03_hlt_07_changed_health_is_sent_whole() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEALTH, t0);
    let mut tree = health(true);
    tree.component_health_map
        .insert("exporter".into(), health(true));
    core.set_health(tree.clone());
    core.poll_transmit(t0).unwrap();
    // Only a nested component changes; the whole tree is sent.
    tree.component_health_map
        .insert("exporter".into(), health(false));
    core.set_health(tree.clone());
    let message = core.poll_transmit(t0).unwrap();
    assert_eq!(message.health, Some(tree));
}

#[test]
fn ecfg_03_effective_config_reported_on_change_only() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG, t0);
    let config = EffectiveConfig {
        config_map: Some(config_map("a: 2")),
    };
    core.set_effective_config(config.clone());
    assert_eq!(
        core.poll_transmit(t0).unwrap().effective_config,
        Some(config.clone())
    );
    core.set_effective_config(config);
    assert!(core.poll_transmit(t0).is_none());
}

#[test]
fn reports_are_gated_by_capabilities() {
    let t0 = Instant::now();
    let (mut core, first) = ws_connected(AgentCapabilities::empty(), t0);
    assert!(first.remote_config_status.is_none());
    assert!(first.health.is_none());
    core.set_health(health(false));
    core.set_effective_config(EffectiveConfig {
        config_map: Some(config_map("x")),
    });
    // Stored but not reportable: nothing meaningful goes out.
    let message = core.poll_transmit(t0);
    assert!(message.as_ref().is_none_or(is_minimal), "{message:?}");
}

#[test]
fn cap_04_capability_change_is_sent_with_newly_enabled_reports() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.set_health(health(false));
    assert!(core.poll_transmit(t0).is_none_or(|m| m.health.is_none()));
    core.set_capabilities(AgentCapabilities::REPORTS_HEALTH);
    let message = core.poll_transmit(t0).unwrap();
    assert!(
        AgentCapabilities::from_bits_retain(message.capabilities)
            .contains(AgentCapabilities::REPORTS_HEALTH)
    );
    assert_eq!(message.health, Some(health(false)));
}

#[test]
fn seq_06_report_full_state_resends_everything() {
    let t0 = Instant::now();
    let mut core = new_core(TransportKind::WebSocket, all_reports());
    core.set_effective_config(EffectiveConfig {
        config_map: Some(config_map("a")),
    });
    core.set_custom_capabilities(CustomCapabilities {
        capabilities: vec!["io.example.cap".into()],
    });
    core.set_connection_settings_status(ConnectionSettingsStatus::default());
    core.start(t0).unwrap();
    core.handle_connected(t0);
    core.poll_transmit(t0).unwrap();
    core.handle_message(
        ServerToAgent {
            flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
            ..reply()
        },
        t0,
    );
    let full = core.poll_transmit(t0).unwrap();
    assert!(full.agent_description.is_some());
    assert!(full.health.is_some());
    assert!(full.effective_config.is_some());
    assert!(full.remote_config_status.is_some());
    assert!(full.custom_capabilities.is_some());
    assert!(full.available_components.is_some());
    assert!(full.connection_settings_status.is_some());
    // AMB-16: full state still sends only the components hash.
    assert!(full.available_components.unwrap().components.is_empty());
}

#[test]
fn ac_04_report_available_components_sends_the_full_list_once() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS, t0);
    core.handle_message(
        ServerToAgent {
            flags: ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS.bits(),
            ..reply()
        },
        t0,
    );
    let full = core.poll_transmit(t0).unwrap();
    assert_eq!(full.available_components, Some(components()));
    // AC-05: later changes go out as a hash again.
    let mut changed = components();
    changed.hash = Bytes::from_static(b"components-v2");
    changed
        .components
        .insert("exporters".into(), ComponentDetails::default());
    core.set_available_components(changed);
    let next = core
        .poll_transmit(t0)
        .unwrap()
        .available_components
        .unwrap();
    assert_eq!(next.hash, Bytes::from_static(b"components-v2"));
    assert!(next.components.is_empty());
}

// ------------------------------------------------------------ instance uid

#[test]
fn uid_05_uid_08_new_instance_uid_is_used_and_reported() {
    let t0 = Instant::now();
    let mut core = new_core(TransportKind::WebSocket, AgentCapabilities::empty());
    core.set_flags(AgentToServerFlags::REQUEST_INSTANCE_UID);
    core.start(t0).unwrap();
    core.handle_connected(t0);
    let first = core.poll_transmit(t0).unwrap();
    assert_eq!(first.flags, AgentToServerFlags::REQUEST_INSTANCE_UID.bits());

    let new_uid = InstanceUid::from([9; 16]);
    core.handle_message(
        ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: new_uid.to_bytes(),
            }),
            ..reply()
        },
        t0,
    );
    assert_eq!(events(&mut core), vec![Event::NewInstanceUid(new_uid)]);
    assert_eq!(core.instance_uid(), new_uid);
    core.handle_message(
        ServerToAgent {
            flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
            ..reply()
        },
        t0,
    );
    let next = core.poll_transmit(t0).unwrap();
    assert_eq!(next.instance_uid, new_uid.to_bytes());
    // The request was satisfied: the flag is no longer set.
    assert_eq!(next.flags, 0);
}

#[test]
fn uid_03_uid_07_new_instance_uid_of_wrong_length_is_ignored_with_an_error() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    for len in [0usize, 15, 17, 36] {
        core.handle_message(
            ServerToAgent {
                agent_identification: Some(AgentIdentification {
                    new_instance_uid: Bytes::from(vec![1; len]),
                }),
                ..reply()
            },
            t0,
        );
        assert_eq!(
            events(&mut core),
            vec![Event::ProtocolError(ProtocolError::InvalidNewInstanceUid {
                len
            })]
        );
        assert_eq!(core.instance_uid(), uid());
    }
}

// ------------------------------------------------------------ heartbeat

#[test]
fn hb_09_hb_10_default_heartbeat_every_30_s_from_last_message() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEARTBEAT, t0);
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 30));
    assert!(core.poll_transmit(t0 + SEC * 29).is_none());
    let beat = core.poll_transmit(t0 + SEC * 30).unwrap();
    // HB-05: a heartbeat carries the instance uid (and nothing else to report).
    assert!(is_minimal(&beat));
    assert_eq!(beat.instance_uid, uid().to_bytes());
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 60));
}

#[test]
fn hb_06_any_message_resets_the_heartbeat_timer() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(
        AgentCapabilities::REPORTS_HEARTBEAT | AgentCapabilities::REPORTS_HEALTH,
        t0,
    );
    core.set_health(health(false));
    core.poll_transmit(t0 + SEC * 20).unwrap();
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 50));
    assert!(core.poll_transmit(t0 + SEC * 30).is_none());
    assert!(core.poll_transmit(t0 + SEC * 50).is_some());
}

/// An offer of OpAMP connection settings with only a heartbeat interval.
fn heartbeat_offer(seconds: u64) -> ServerToAgent {
    offer_message(ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings {
            heartbeat_interval_seconds: seconds,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[test]
fn hb_03_server_offered_interval_wins() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEARTBEAT, t0);
    core.handle_message(heartbeat_offer(5), t0);
    assert_eq!(core.heartbeat_interval(), Some(SEC * 5));
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 5));
    assert!(core.poll_transmit(t0 + SEC * 5).is_some());
}

#[test]
fn hb_04_amb_01_offered_zero_disables_websocket_heartbeats() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEARTBEAT, t0);
    core.handle_message(heartbeat_offer(0), t0);
    assert_eq!(core.heartbeat_interval(), None);
    assert_eq!(core.poll_timeout(), None);
    assert!(core.poll_transmit(t0 + SEC * 3600).is_none());
}

#[test]
fn hb_11_no_heartbeats_without_the_capability() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    // The first message was answered, so no reply deadline is pending.
    core.handle_message(reply(), t0);
    assert_eq!(core.poll_timeout(), None);
    assert!(core.poll_transmit(t0 + SEC * 3600).is_none());
}

#[test]
fn configured_heartbeat_zero_disables_heartbeats() {
    let t0 = Instant::now();
    let mut config = CoreConfig::new(TransportKind::WebSocket, uid());
    config.heartbeat_interval = Duration::ZERO;
    let mut core = ClientCore::new(config, backoff());
    core.set_agent_description(description());
    core.set_capabilities(AgentCapabilities::REPORTS_HEARTBEAT);
    core.start(t0).unwrap();
    core.handle_connected(t0);
    core.poll_transmit(t0).unwrap();
    core.handle_message(reply(), t0);
    assert_eq!(core.poll_timeout(), None);
}

// ------------------------------------------------------------ plain HTTP

#[test]
fn http_12_http_13_polls_every_30_s_with_a_minimal_message() {
    let t0 = Instant::now();
    let (mut core, first) = http_started(AgentCapabilities::empty(), t0);
    assert!(first.agent_description.is_some());
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 30));
    assert!(core.poll_transmit(t0 + SEC * 29).is_none());
    let poll = core.poll_transmit(t0 + SEC * 30).unwrap();
    assert!(is_minimal(&poll));
    // AMB-02: the poll carries uid, sequence number and capabilities.
    assert_eq!(poll.sequence_num, 1);
    assert_eq!(poll.capabilities, AgentCapabilities::REPORTS_STATUS.bits());
}

#[test]
fn http_10_one_request_in_flight() {
    let t0 = Instant::now();
    let mut core = new_core(TransportKind::PlainHttp, AgentCapabilities::REPORTS_HEALTH);
    core.start(t0).unwrap();
    core.poll_transmit(t0).unwrap();
    core.set_health(health(false));
    assert!(core.poll_transmit(t0).is_none());
    assert!(core.poll_transmit(t0 + SEC * 100).is_none());
    assert_eq!(core.poll_timeout(), None);
    // HTTP-11: the pending change goes right after the response.
    core.handle_message(reply(), t0 + SEC);
    assert_eq!(core.poll_timeout(), Some(t0));
    let next = core.poll_transmit(t0 + SEC).unwrap();
    assert_eq!(next.health, Some(health(false)));
}

#[test]
fn http_14_hb_07_offered_heartbeat_is_the_polling_interval() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(AgentCapabilities::REPORTS_HEARTBEAT, t0);
    core.poll_transmit(t0 + SEC * 30).unwrap();
    core.handle_message(heartbeat_offer(10), t0 + SEC * 30);
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 40));
    core.poll_transmit(t0 + SEC * 40).unwrap();
    // AMB-01: an offered 0 is not applied over HTTP; polling continues.
    core.handle_message(heartbeat_offer(0), t0 + SEC * 40);
    assert_eq!(core.heartbeat_interval(), Some(SEC * 10));
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 50));
}

#[test]
fn http_polling_interval_is_configurable() {
    let t0 = Instant::now();
    let mut config = CoreConfig::new(TransportKind::PlainHttp, uid());
    config.polling_interval = SEC * 7;
    let mut core = ClientCore::new(config, backoff());
    core.set_agent_description(description());
    core.start(t0).unwrap();
    core.poll_transmit(t0).unwrap();
    core.handle_message(reply(), t0);
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 7));
}

#[test]
fn err_06_failed_request_keeps_its_content_pending() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::REPORTS_HEALTH | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG;
    let (mut core, _) = http_started(caps, t0);
    core.set_health(health(false));
    let lost = core.poll_transmit(t0).unwrap();
    assert_eq!(lost.health, Some(health(false)));
    core.handle_send_failed(t0, SendFailure::Retryable { retry_after: None });
    // A change made meanwhile is merged with the unsent one.
    core.set_effective_config(EffectiveConfig {
        config_map: Some(config_map("b")),
    });
    // CONN-03: backoff (1 s with this policy) before the next attempt.
    assert_eq!(core.poll_timeout(), Some(t0 + SEC));
    assert!(core.poll_transmit(t0).is_none());
    let retried = core.poll_transmit(t0 + SEC).unwrap();
    assert_eq!(retried.health, Some(health(false)));
    assert!(retried.effective_config.is_some());
    // The server never saw the lost number, so it is reused: no gap.
    assert_eq!(retried.sequence_num, lost.sequence_num);
}

#[test]
fn http_21_retry_after_delays_the_next_request() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(AgentCapabilities::empty(), t0);
    core.poll_transmit(t0 + SEC * 30).unwrap();
    core.handle_send_failed(
        t0 + SEC * 30,
        SendFailure::Retryable {
            retry_after: Some(SEC * 120),
        },
    );
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 150));
    assert!(core.poll_transmit(t0 + SEC * 149).is_none());
    assert!(core.poll_transmit(t0 + SEC * 150).is_some());
}

#[test]
fn http_17_rejected_request_is_not_resent() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(AgentCapabilities::REPORTS_HEALTH, t0);
    core.set_health(health(false));
    core.poll_transmit(t0).unwrap();
    core.handle_send_failed(t0, SendFailure::Rejected);
    // The next message is an ordinary poll, not a resend.
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 30));
    let next = core.poll_transmit(t0 + SEC * 30).unwrap();
    assert!(is_minimal(&next));
}

#[test]
fn first_http_request_failing_resends_full_state() {
    let t0 = Instant::now();
    let mut core = new_core(TransportKind::PlainHttp, AgentCapabilities::REPORTS_HEALTH);
    core.start(t0).unwrap();
    let first = core.poll_transmit(t0).unwrap();
    core.handle_send_failed(t0, SendFailure::Retryable { retry_after: None });
    let again = core.poll_transmit(t0 + SEC).unwrap();
    assert_eq!(again, first);
}

// ------------------------------------------------------------ error responses

#[test]
fn ws_23_unavailable_disconnects_waits_retry_info_and_reconnects() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEALTH, t0);
    core.handle_message(unavailable(Some(SEC * 42)), t0);
    assert!(matches!(
        events(&mut core).as_slice(),
        [Event::ErrorResponse(_)]
    ));
    // WS-21: a deliberate reconnect first says goodbye.
    let goodbye = core.poll_transmit(t0).unwrap();
    assert!(goodbye.agent_disconnect.is_some());
    assert!(core.wants_close());
    core.handle_disconnected(t0);
    assert!(!core.wants_connect(t0 + SEC * 41));
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 42));
    assert!(core.wants_connect(t0 + SEC * 42));
    core.handle_connected(t0 + SEC * 42);
    // The server may have lost what we sent: full state again.
    let resumed = core.poll_transmit(t0 + SEC * 42).unwrap();
    assert!(resumed.agent_description.is_some());
    assert!(resumed.health.is_some());
}

#[test]
fn ws_23_unavailable_without_retry_info_uses_backoff() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_message(unavailable(None), t0);
    core.poll_transmit(t0).unwrap();
    core.handle_disconnected(t0);
    assert_eq!(core.poll_timeout(), Some(t0 + SEC));
}

#[test]
fn err_03_bad_request_and_unknown_only_report() {
    let t0 = Instant::now();
    for kind in [
        ServerErrorResponseType::BadRequest,
        ServerErrorResponseType::Unknown,
    ] {
        let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
        let error = ServerErrorResponse {
            r#type: kind as i32,
            error_message: "no".into(),
            details: None,
        };
        core.handle_message(
            ServerToAgent {
                error_response: Some(error.clone()),
                ..reply()
            },
            t0,
        );
        assert_eq!(events(&mut core), vec![Event::ErrorResponse(error)]);
        assert!(!core.wants_close());
        assert!(core.poll_transmit(t0).is_none(), "nothing is resent");
    }
    // Over HTTP the message is not resent either.
    let (mut core, _) = http_started(AgentCapabilities::REPORTS_HEALTH, t0);
    core.set_health(health(false));
    core.poll_transmit(t0).unwrap();
    let error = ServerErrorResponse {
        r#type: ServerErrorResponseType::BadRequest as i32,
        ..Default::default()
    };
    core.handle_message(
        ServerToAgent {
            error_response: Some(error),
            ..reply()
        },
        t0,
    );
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 30));
    assert!(is_minimal(&core.poll_transmit(t0 + SEC * 30).unwrap()));
}

#[test]
fn err_04_http_unavailable_waits_and_resends_the_content() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(AgentCapabilities::REPORTS_HEALTH, t0);
    core.set_health(health(false));
    core.poll_transmit(t0).unwrap();
    core.handle_message(unavailable(Some(SEC * 9)), t0);
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 9));
    assert!(core.poll_transmit(t0 + SEC * 8).is_none());
    assert_eq!(
        core.poll_transmit(t0 + SEC * 9).unwrap().health,
        Some(health(false))
    );
}

// ------------------------------------------------------------ WebSocket link

#[test]
fn ws_19_conn_03_immediate_reconnect_once_then_backoff() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_disconnected(t0);
    assert!(core.wants_connect(t0), "first reconnect is immediate");
    core.handle_connect_failed(t0, None);
    assert!(!core.wants_connect(t0));
    // Backoff grows: 1 s, 2 s (top of the window with this jitter source).
    assert_eq!(core.poll_timeout(), Some(t0 + SEC));
    core.handle_connect_failed(t0 + SEC, None);
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 3));
    // WS-24: a 503 with Retry-After is honoured.
    core.handle_connect_failed(t0 + SEC * 3, Some(SEC * 100));
    assert_eq!(core.poll_timeout(), Some(t0 + SEC * 103));
}

#[test]
fn ws_19_flapping_connection_backs_off() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_disconnected(t0);
    core.handle_connected(t0);
    // Connected but the server never answered before dropping again.
    core.handle_disconnected(t0);
    assert!(!core.wants_connect(t0));
    // A message from the server proves the link healthy again.
    core.handle_connected(t0 + SEC);
    core.handle_message(reply(), t0 + SEC);
    core.handle_disconnected(t0 + SEC);
    assert!(core.wants_connect(t0 + SEC));
}

#[test]
fn seq_07_reconnect_does_not_resend_full_state() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEALTH, t0);
    core.handle_disconnected(t0);
    core.set_health(health(false));
    core.handle_connected(t0);
    let message = core.poll_transmit(t0).unwrap();
    assert!(message.agent_description.is_none());
    assert_eq!(message.health, Some(health(false)));
}

#[test]
fn conn_02_sts_01_a_status_report_follows_every_connect() {
    let t0 = Instant::now();
    let (mut core, first) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_disconnected(t0);
    core.handle_connected(t0);
    // Nothing changed, yet the new connection starts with a report, which
    // also lets the server spot a sequence gap (SEQ-05).
    let report = core.poll_transmit(t0).expect("report after reconnect");
    assert!(is_minimal(&report));
    assert_eq!(report.sequence_num, first.sequence_num + 1);
    assert!(core.poll_transmit(t0).is_none());
}

#[test]
fn ws_17_msg_06_stop_sends_agent_disconnect_last() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEALTH, t0);
    core.set_health(health(false));
    core.stop(t0);
    let last = core.poll_transmit(t0).unwrap();
    assert!(last.agent_disconnect.is_some());
    assert_eq!(
        last.health,
        Some(health(false)),
        "pending changes go with it"
    );
    assert!(core.poll_transmit(t0).is_none());
    assert!(core.wants_close());
    // Messages arriving while closing are not acted on.
    core.handle_message(
        ServerToAgent {
            flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
            ..reply()
        },
        t0,
    );
    assert!(core.poll_transmit(t0).is_none());
    core.handle_disconnected(t0);
    assert!(core.is_stopped());
    assert!(!core.wants_connect(t0 + SEC * 3600));
}

#[test]
fn stop_while_disconnected_stops_at_once() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_disconnected(t0);
    core.stop(t0);
    assert!(core.is_stopped());
    assert!(core.poll_transmit(t0).is_none());
}

#[test]
fn http_24_stop_sends_agent_disconnect_after_the_request_in_flight() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(AgentCapabilities::empty(), t0);
    core.poll_transmit(t0 + SEC * 30).unwrap();
    core.stop(t0 + SEC * 30);
    assert!(
        core.poll_transmit(t0 + SEC * 30).is_none(),
        "HTTP-10 still holds"
    );
    core.handle_message(reply(), t0 + SEC * 31);
    let last = core.poll_transmit(t0 + SEC * 31).unwrap();
    assert!(last.agent_disconnect.is_some());
    assert!(!core.is_stopped());
    core.handle_message(reply(), t0 + SEC * 31);
    assert!(core.is_stopped());
}

#[test]
fn http_24_goodbye_is_not_retried() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(AgentCapabilities::empty(), t0);
    core.stop(t0);
    assert!(core.poll_transmit(t0).unwrap().agent_disconnect.is_some());
    core.handle_send_failed(t0, SendFailure::Retryable { retry_after: None });
    assert!(core.is_stopped());
}

#[test]
fn ws_12_http_20_oversized_outgoing_message_is_dropped() {
    let t0 = Instant::now();
    let mut config = CoreConfig::new(TransportKind::WebSocket, uid());
    config.max_message_size = 200;
    let mut core = ClientCore::new(config, backoff());
    core.set_agent_description(description());
    core.set_capabilities(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG);
    core.start(t0).unwrap();
    core.handle_connected(t0);
    core.poll_transmit(t0).unwrap();
    core.set_effective_config(EffectiveConfig {
        config_map: Some(config_map(include_str!("tests.rs"))),
    });
    assert!(core.poll_transmit(t0).is_none());
    assert!(matches!(
        events(&mut core).as_slice(),
        [Event::ProtocolError(ProtocolError::OutgoingTooLarge {
            limit: 200,
            ..
        })]
    ));
    // The sequence number was not used up.
    core.set_health(health(true));
    core.set_capabilities(
        AgentCapabilities::REPORTS_EFFECTIVE_CONFIG | AgentCapabilities::REPORTS_HEARTBEAT,
    );
    assert_eq!(core.poll_transmit(t0).unwrap().sequence_num, 1);
}

// ------------------------------------------------------------ remote config

fn remote_config(hash: &'static [u8]) -> ServerToAgent {
    ServerToAgent {
        remote_config: Some(AgentRemoteConfig {
            config: Some(config_map("receivers: {}")),
            config_hash: Bytes::from_static(hash),
        }),
        ..reply()
    }
}

#[test]
fn rcfg_01_cap_06_remote_config_needs_accepts_remote_config() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_message(remote_config(b"h"), t0);
    assert!(events(&mut core).is_empty());
}

#[test]
fn rcfg_06_remote_config_offered_then_status_reported_with_hash() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::ACCEPTS_REMOTE_CONFIG | AgentCapabilities::REPORTS_REMOTE_CONFIG;
    let (mut core, _) = ws_connected(caps, t0);
    core.handle_message(remote_config(b"h1"), t0);
    let [Event::Message(data)] = [one_event(&mut core)] else {
        panic!()
    };
    let offered = data.remote_config.unwrap();
    assert_eq!(offered.config_hash, Bytes::from_static(b"h1"));
    // MSG-04: processing the offer alone sends nothing.
    assert!(core.poll_transmit(t0).is_none());
    for status in [
        RemoteConfigStatuses::Applying,
        RemoteConfigStatuses::Applied,
    ] {
        let report = RemoteConfigStatus {
            last_remote_config_hash: offered.config_hash.clone(),
            status: status as i32,
            error_message: String::new(),
        };
        core.set_remote_config_status(report.clone());
        assert_eq!(
            core.poll_transmit(t0).unwrap().remote_config_status,
            Some(report)
        );
    }
    let failed = RemoteConfigStatus {
        last_remote_config_hash: Bytes::from_static(b"h2"),
        status: RemoteConfigStatuses::Failed as i32,
        error_message: "bad yaml".into(),
    };
    core.set_remote_config_status(failed.clone());
    assert_eq!(
        core.poll_transmit(t0).unwrap().remote_config_status,
        Some(failed)
    );
}

/// Two views of one configuration (spec v0.20.0: any key, "" included, in a
/// map of any size) with roles on the entries.
fn two_views_with_roles() -> AgentConfigMap {
    let object = |body: &'static str, role: &str| AgentConfigObject {
        body: Bytes::from_static(body.as_bytes()),
        content_type: "text/yaml".into(),
        role: role.into(),
    };
    AgentConfigMap {
        config_map: BTreeMap::from([
            (
                String::new(),
                object("exporters: {debug: {}}\n", "expanded"),
            ),
            (
                "collector.yaml".to_owned(),
                object("exporters: ${env:X}\n", ""),
            ),
        ]),
    }
}

#[test]
fn rcfg_ecfg_roles_and_the_empty_key_beside_others_pass_through_unchanged() {
    let t0 = Instant::now();
    let caps =
        AgentCapabilities::ACCEPTS_REMOTE_CONFIG | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG;
    let (mut core, _) = ws_connected(caps, t0);

    // Received: the offer reaches the agent with every entry and role.
    core.handle_message(
        ServerToAgent {
            remote_config: Some(AgentRemoteConfig {
                config: Some(two_views_with_roles()),
                config_hash: Bytes::from_static(b"h"),
            }),
            ..reply()
        },
        t0,
    );
    let [Event::Message(data)] = [one_event(&mut core)] else {
        panic!()
    };
    assert_eq!(
        data.remote_config.unwrap().config,
        Some(two_views_with_roles())
    );

    // Reported: the effective config goes out as given, and a change of role
    // alone is a change (ECFG-03).
    let effective = EffectiveConfig {
        config_map: Some(two_views_with_roles()),
    };
    core.set_effective_config(effective.clone());
    let sent = core.poll_transmit(t0).unwrap();
    let wire = AgentToServer::decode(Bytes::from(sent.encode_to_vec())).unwrap();
    assert_eq!(wire.effective_config, Some(effective.clone()));

    let mut new_role = effective;
    new_role
        .config_map
        .as_mut()
        .unwrap()
        .config_map
        .get_mut("collector.yaml")
        .unwrap()
        .role = "as-written".into();
    core.set_effective_config(new_role.clone());
    assert_eq!(
        core.poll_transmit(t0).unwrap().effective_config,
        Some(new_role)
    );
}

#[test]
fn rcfg_saved_status_prevents_reapplying_after_restart() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::ACCEPTS_REMOTE_CONFIG | AgentCapabilities::REPORTS_REMOTE_CONFIG;
    let mut core = new_core(TransportKind::WebSocket, caps);
    let saved = RemoteConfigStatus {
        last_remote_config_hash: Bytes::from_static(b"h1"),
        status: RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    };
    core.set_remote_config_status(saved.clone());
    core.start(t0).unwrap();
    core.handle_connected(t0);
    assert_eq!(
        core.poll_transmit(t0).unwrap().remote_config_status,
        Some(saved)
    );
    core.handle_message(remote_config(b"h1"), t0);
    assert!(events(&mut core).is_empty(), "same hash, already applied");
    core.handle_message(remote_config(b"h2"), t0);
    assert_eq!(events(&mut core).len(), 1);
}

// ------------------------------------------------------------ connection settings

fn telemetry(endpoint: &str) -> TelemetryConnectionSettings {
    TelemetryConnectionSettings {
        destination_endpoint: endpoint.into(),
        ..Default::default()
    }
}

fn full_offer(hash: &'static [u8]) -> ConnectionSettingsOffers {
    ConnectionSettingsOffers {
        hash: Bytes::from_static(hash),
        opamp: Some(OpAmpConnectionSettings {
            destination_endpoint: "wss://new.example.com/v1/opamp".into(),
            ..Default::default()
        }),
        own_metrics: Some(telemetry("https://m.example.com/v1/metrics")),
        own_traces: Some(telemetry("https://t.example.com/v1/traces")),
        own_logs: Some(telemetry("https://l.example.com/v1/logs")),
        other_connections: BTreeMap::from([("kafka".into(), OtherConnectionSettings::default())]),
    }
}

fn offer_message(offers: ConnectionSettingsOffers) -> ServerToAgent {
    ServerToAgent {
        connection_settings: Some(offers),
        ..reply()
    }
}

/// A WebSocket core with `caps`, connected at `t0`, that received
/// [`full_offer`] `h1`.
fn ws_full_offer(caps: AgentCapabilities, t0: Instant) -> ClientCore {
    let (mut core, _) = ws_connected(caps, t0);
    core.handle_message(offer_message(full_offer(b"h1")), t0);
    core
}

#[test]
fn cs_01_offers_are_filtered_by_capability() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::REPORTS_OWN_METRICS
        | AgentCapabilities::ACCEPTS_OTHER_CONNECTION_SETTINGS;
    let mut core = ws_full_offer(caps, t0);
    let [
        Event::OtherConnectionSettings {
            hash,
            offers,
            opamp_offered: false,
        },
    ] = [one_event(&mut core)]
    else {
        panic!()
    };
    assert_eq!(hash, Bytes::from_static(b"h1"));
    assert!(offers.opamp.is_none());
    assert!(offers.own_metrics.is_some());
    assert!(offers.own_traces.is_none());
    assert!(offers.own_logs.is_none());
    assert_eq!(offers.other_connections.len(), 1);

    // Only OpAMP settings accepted: just that event.
    let mut core = ws_full_offer(AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS, t0);
    let [Event::OpampConnectionSettings { settings, .. }] = [one_event(&mut core)] else {
        panic!()
    };
    assert_eq!(
        settings.destination_endpoint,
        "wss://new.example.com/v1/opamp"
    );
}

#[test]
fn cs_offer_with_unchanged_hash_is_skipped() {
    let t0 = Instant::now();
    let mut core = ws_full_offer(AgentCapabilities::REPORTS_OWN_LOGS, t0);
    assert_eq!(events(&mut core).len(), 1);
    core.handle_message(offer_message(full_offer(b"h1")), t0);
    assert!(events(&mut core).is_empty());
    core.handle_message(offer_message(full_offer(b"h2")), t0);
    assert_eq!(events(&mut core).len(), 1);
}

#[test]
fn cs_saved_status_hash_skips_the_same_offer_after_restart() {
    let t0 = Instant::now();
    let mut core = new_core(
        TransportKind::WebSocket,
        AgentCapabilities::REPORTS_OWN_LOGS,
    );
    core.set_connection_settings_status(ConnectionSettingsStatus {
        last_connection_settings_hash: Bytes::from_static(b"h1"),
        status: ConnectionSettingsStatuses::Applied as i32,
        error_message: String::new(),
    });
    core.start(t0).unwrap();
    core.handle_connected(t0);
    core.poll_transmit(t0).unwrap();
    core.handle_message(offer_message(full_offer(b"h1")), t0);
    assert!(events(&mut core).is_empty());
}

#[test]
fn cs_07_cs_08_status_applying_then_applied_or_failed() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::REPORTS_OWN_METRICS
        | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS;
    let mut core = ws_full_offer(caps, t0);
    let (status, hash, error) = status_of(&core.poll_transmit(t0).unwrap());
    assert_eq!(status, ConnectionSettingsStatuses::Applying);
    assert_eq!(hash, Bytes::from_static(b"h1"));
    // Asynchronously, later: the embedder reports the outcome.
    let applied = ConnectionSettingsStatus {
        last_connection_settings_hash: hash,
        status: ConnectionSettingsStatuses::Applied as i32,
        error_message: error,
    };
    core.set_connection_settings_status(applied.clone());
    assert_eq!(
        core.poll_transmit(t0 + SEC)
            .unwrap()
            .connection_settings_status,
        Some(applied)
    );
}

#[test]
fn cs_offer_with_nothing_usable_reports_failed() {
    let t0 = Instant::now();
    let mut core = ws_full_offer(AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS, t0);
    assert!(events(&mut core).is_empty());
    let (status, _, error) = status_of(&core.poll_transmit(t0).unwrap());
    assert_eq!(status, ConnectionSettingsStatuses::Failed);
    assert!(!error.is_empty());
}

#[test]
fn cs_28_cs_35_csr_request_then_certificate_offer() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS;
    let (mut core, _) = ws_connected(caps, t0);
    assert!(matches!(
        core.request_connection_settings(ConnectionSettingsRequest::default()),
        Err(ClientError::EmptyConnectionSettingsRequest)
    ));
    let request = ConnectionSettingsRequest {
        opamp: Some(OpAmpConnectionSettingsRequest {
            certificate_request: Some(CertificateRequest {
                csr: Bytes::from_static(b"-----BEGIN CERTIFICATE REQUEST-----"),
            }),
        }),
    };
    core.request_connection_settings(request.clone()).unwrap();
    let sent = core.poll_transmit(t0).unwrap();
    assert_eq!(sent.connection_settings_request, Some(request.clone()));
    // Sent once only.
    core.set_capabilities(caps | AgentCapabilities::REPORTS_HEARTBEAT);
    assert!(
        core.poll_transmit(t0)
            .unwrap()
            .connection_settings_request
            .is_none()
    );

    // CS-31: the server answers with the issued certificate, no private key.
    let certificate = TlsCertificate {
        cert: Bytes::from_static(b"CERT"),
        ..Default::default()
    };
    let offer = ConnectionSettingsOffers {
        hash: Bytes::from_static(b"csr"),
        opamp: Some(OpAmpConnectionSettings {
            certificate: Some(certificate.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    core.handle_message(
        ServerToAgent {
            capabilities: ServerCapabilities::ACCEPTS_STATUS.bits(),
            ..offer_message(offer)
        },
        t0,
    );
    let [Event::OpampConnectionSettings { settings, .. }] = [one_event(&mut core)] else {
        panic!()
    };
    assert_eq!(settings.certificate, Some(certificate));
    // CAP-10: this server said it does not accept requests.
    assert!(matches!(
        core.request_connection_settings(request),
        Err(ClientError::ServerLacksCapability(_))
    ));
}

// ------------------------------------------------------------ OpAMP settings offer flow (CS-05..08)

fn switch_caps() -> AgentCapabilities {
    AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS
}

fn new_server() -> OpAmpConnectionSettings {
    OpAmpConnectionSettings {
        destination_endpoint: "wss://new.example.com/v1/opamp".into(),
        ..Default::default()
    }
}

fn opamp_offer(hash: &'static [u8]) -> ServerToAgent {
    offer_message(ConnectionSettingsOffers {
        hash: Bytes::from_static(hash),
        opamp: Some(new_server()),
        ..Default::default()
    })
}

fn commands(core: &mut ClientCore) -> Vec<SettingsCommand> {
    std::iter::from_fn(|| core.poll_settings_command()).collect()
}

fn status_of(message: &AgentToServer) -> (ConnectionSettingsStatuses, Bytes, String) {
    let status = message
        .connection_settings_status
        .clone()
        .expect("a connection settings status");
    (
        ConnectionSettingsStatuses::try_from(status.status).unwrap(),
        status.last_connection_settings_hash,
        status.error_message,
    )
}

/// A WebSocket core at `t0` that received an OpAMP offer `h1`, reported
/// APPLYING, and handed the offer to the agent.
fn ws_offered(t0: Instant) -> ClientCore {
    let (mut core, _) = ws_connected(switch_caps(), t0);
    core.handle_message(opamp_offer(b"h1"), t0);
    let Event::OpampConnectionSettings { hash, settings } = one_event(&mut core) else {
        panic!("the offer goes to the agent")
    };
    assert_eq!((hash, *settings), (Bytes::from_static(b"h1"), new_server()));
    let (status, hash, _) = status_of(&core.poll_transmit(t0).unwrap());
    assert_eq!(status, ConnectionSettingsStatuses::Applying);
    assert_eq!(hash, Bytes::from_static(b"h1"));
    core
}

/// Accepts the offer at `t1` and walks the WebSocket core through the
/// goodbye (CS-06 step 4) to the point where the driver is told to try the
/// candidate (step 5).
fn ws_switching(t0: Instant, t1: Instant) -> ClientCore {
    let mut core = ws_offered(t0);
    core.accept_opamp_connection_settings(&Bytes::from_static(b"h1"), new_server(), t1);
    // Step 4 first: goodbye on the old connection, candidate not used yet.
    assert!(commands(&mut core).is_empty());
    let goodbye = core.poll_transmit(t1).expect("goodbye");
    assert!(goodbye.agent_disconnect.is_some());
    assert!(core.wants_close());
    core.handle_disconnected(t1);
    assert_eq!(
        commands(&mut core),
        [SettingsCommand::TryCandidate(Box::new(new_server()))]
    );
    assert!(core.wants_connect(t1));
    core
}

#[test]
fn cs_07_applying_is_reported_before_the_switch_disconnects() {
    let t0 = Instant::now();
    // `ws_offered` checks APPLYING went out; the goodbye follows it and
    // does not repeat it.
    let mut core = ws_offered(t0);
    core.accept_opamp_connection_settings(&Bytes::from_static(b"h1"), new_server(), t0 + SEC);
    let goodbye = core.poll_transmit(t0 + SEC).unwrap();
    assert!(goodbye.agent_disconnect.is_some());
    assert!(goodbye.connection_settings_status.is_none());
    assert_eq!(
        core.connection_settings_status().unwrap().status,
        ConnectionSettingsStatuses::Applying as i32
    );
}

#[test]
fn cs_05_cs_08_connected_with_the_candidate_keeps_it_and_reports_applied() {
    let t0 = Instant::now();
    let t1 = t0 + SEC;
    let mut core = ws_switching(t0, t1);
    core.handle_connected(t1);
    assert_eq!(commands(&mut core), [SettingsCommand::KeepCandidate]);
    // The new server has never seen the agent: full state, with APPLIED.
    let first = core.poll_transmit(t1).unwrap();
    assert!(first.agent_description.is_some());
    let (status, hash, error) = status_of(&first);
    assert_eq!(status, ConnectionSettingsStatuses::Applied);
    assert_eq!(hash, Bytes::from_static(b"h1"));
    assert!(error.is_empty());
    assert_eq!(
        one_event(&mut core),
        Event::OpampConnectionSettingsOutcome {
            settings: Box::new(new_server()),
            result: Ok(()),
        }
    );
    // The switch is over: losing this connection is an ordinary loss.
    core.handle_disconnected(t1 + SEC);
    assert!(commands(&mut core).is_empty());
}

#[test]
fn cs_05_cs_06_cs_08_failed_candidate_rolls_back_and_reports_failed() {
    let t0 = Instant::now();
    let t1 = t0 + SEC;
    let mut core = ws_switching(t0, t1);
    core.handle_candidate_failed(t1, "connection refused".into());
    // Step 9: back to the previous settings, reconnecting at once.
    assert_eq!(commands(&mut core), [SettingsCommand::DropCandidate]);
    assert!(core.wants_connect(t1));
    assert_eq!(
        one_event(&mut core),
        Event::OpampConnectionSettingsOutcome {
            settings: Box::new(new_server()),
            result: Err("connection refused".into()),
        }
    );
    core.handle_connected(t1);
    assert!(commands(&mut core).is_empty());
    // The old server saw the goodbye: full state, with FAILED.
    let first = core.poll_transmit(t1).unwrap();
    assert!(first.agent_description.is_some());
    let (status, hash, error) = status_of(&first);
    assert_eq!(status, ConnectionSettingsStatuses::Failed);
    assert_eq!(hash, Bytes::from_static(b"h1"));
    assert_eq!(error, "connection refused");
}

#[test]
fn cs_06_connect_failure_with_the_candidate_is_no_backoff_but_a_rollback() {
    let t0 = Instant::now();
    let t1 = t0 + SEC;
    let mut core = ws_switching(t0, t1);
    core.handle_connect_failed(t1, Some(Duration::from_secs(600)));
    assert_eq!(commands(&mut core), [SettingsCommand::DropCandidate]);
    // The old settings are tried at once, not after the refusal's hint.
    assert!(core.wants_connect(t1));
    assert_eq!(
        core.connection_settings_status().unwrap().status,
        ConnectionSettingsStatuses::Failed as i32
    );
}

#[test]
fn cs_05_cs_06_cs_08_http_goodbye_to_the_old_server_then_the_candidate() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(switch_caps(), t0);
    let t1 = t0 + SEC;
    core.handle_timeout(t1);
    let poll = core.poll_transmit(t1 + 30 * SEC).unwrap();
    assert!(is_minimal(&poll));
    core.handle_message(opamp_offer(b"h1"), t1 + 30 * SEC);
    let t2 = t1 + 30 * SEC;
    assert!(matches!(
        one_event(&mut core),
        Event::OpampConnectionSettings { .. }
    ));
    core.accept_opamp_connection_settings(&Bytes::from_static(b"h1"), new_server(), t2);
    // HTTP-24: the goodbye (carrying APPLYING, CS-07) goes with the old settings.
    let goodbye = core.poll_transmit(t2).unwrap();
    assert!(goodbye.agent_disconnect.is_some());
    assert_eq!(status_of(&goodbye).0, ConnectionSettingsStatuses::Applying);
    assert!(commands(&mut core).is_empty());
    core.handle_message(reply(), t2);
    assert_eq!(
        commands(&mut core),
        [SettingsCommand::TryCandidate(Box::new(new_server()))]
    );
    // The first request with the candidate carries the full state.
    let first = core.poll_transmit(t2).unwrap();
    assert!(first.agent_description.is_some());

    // Failure: back to the old server at once, full state, FAILED.
    let mut failing = ClientCore::new(CoreConfig::new(TransportKind::PlainHttp, uid()), backoff());
    std::mem::swap(&mut failing, &mut core);
    failing.handle_send_failed(t2, SendFailure::Retryable { retry_after: None });
    assert_eq!(commands(&mut failing), [SettingsCommand::DropCandidate]);
    let retry = failing
        .poll_transmit(t2)
        .expect("no backoff after a failed candidate");
    assert!(retry.agent_description.is_some());
    assert_eq!(status_of(&retry).0, ConnectionSettingsStatuses::Failed);
    assert!(matches!(
        one_event(&mut failing),
        Event::OpampConnectionSettingsOutcome { result: Err(_), .. }
    ));
}

#[test]
fn cs_05_cs_08_http_answer_with_the_candidate_keeps_it() {
    let t0 = Instant::now();
    let (mut core, _) = http_started(switch_caps(), t0);
    let poll = core.poll_transmit(t0 + 30 * SEC).unwrap();
    assert!(is_minimal(&poll));
    let t1 = t0 + 30 * SEC;
    core.handle_message(opamp_offer(b"h1"), t1);
    events(&mut core);
    core.accept_opamp_connection_settings(&Bytes::from_static(b"h1"), new_server(), t1);
    core.poll_transmit(t1).unwrap();
    core.handle_message(reply(), t1);
    commands(&mut core);
    core.poll_transmit(t1).unwrap();
    core.handle_message(reply(), t1);
    assert_eq!(commands(&mut core), [SettingsCommand::KeepCandidate]);
    let next = core.poll_transmit(t1).unwrap();
    let (status, hash, _) = status_of(&next);
    assert_eq!(status, ConnectionSettingsStatuses::Applied);
    assert_eq!(hash, Bytes::from_static(b"h1"));
}

#[test]
fn cs_08_refused_offer_reports_failed_and_keeps_the_connection() {
    let t0 = Instant::now();
    let mut core = ws_offered(t0);
    core.refuse_opamp_connection_settings(&Bytes::from_static(b"h1"), "no key".into());
    assert!(commands(&mut core).is_empty());
    let report = core.poll_transmit(t0).unwrap();
    assert!(report.agent_disconnect.is_none());
    assert!(!core.wants_close());
    let (status, _, error) = status_of(&report);
    assert_eq!(status, ConnectionSettingsStatuses::Failed);
    assert_eq!(error, "no key");
}

#[test]
fn cs_06_answer_to_a_replaced_offer_is_ignored() {
    let t0 = Instant::now();
    let mut core = ws_offered(t0);
    core.handle_message(opamp_offer(b"h2"), t0);
    events(&mut core);
    core.accept_opamp_connection_settings(&Bytes::from_static(b"h1"), new_server(), t0);
    core.refuse_opamp_connection_settings(&Bytes::from_static(b"h1"), "late".into());
    let report = core.poll_transmit(t0).unwrap();
    assert!(report.agent_disconnect.is_none());
    let (status, hash, _) = status_of(&report);
    assert_eq!(status, ConnectionSettingsStatuses::Applying);
    assert_eq!(hash, Bytes::from_static(b"h2"));
    // The newer one goes ahead.
    core.accept_opamp_connection_settings(&Bytes::from_static(b"h2"), new_server(), t0);
    assert!(core.poll_transmit(t0).unwrap().agent_disconnect.is_some());
}

#[test]
fn cs_08_cs_42_other_part_outcome_and_the_opamp_part_share_one_status() {
    let t0 = Instant::now();
    let caps = switch_caps() | AgentCapabilities::REPORTS_OWN_METRICS;
    for (other, expected) in [
        (
            SettingsOutcome::Applied,
            ConnectionSettingsStatuses::Applied,
        ),
        (
            SettingsOutcome::Failed("bad metrics endpoint".into()),
            ConnectionSettingsStatuses::Failed,
        ),
    ] {
        let mut core = ws_full_offer(caps, t0);
        let both: [Event; 2] = events(&mut core).try_into().unwrap();
        let [
            Event::OtherConnectionSettings {
                opamp_offered: true,
                ..
            },
            Event::OpampConnectionSettings { settings, .. },
        ] = both
        else {
            panic!("other part first, then the OpAMP part")
        };
        core.poll_transmit(t0).unwrap();
        let hash = Bytes::from_static(b"h1");
        core.handle_other_settings_outcome(&hash, other.clone());
        if other == SettingsOutcome::Applied {
            // Not APPLIED yet: the OpAMP part is still to be verified.
            assert_eq!(
                core.connection_settings_status().unwrap().status,
                ConnectionSettingsStatuses::Applying as i32
            );
        }
        core.accept_opamp_connection_settings(&hash, *settings, t0);
        core.poll_transmit(t0).unwrap();
        core.handle_disconnected(t0);
        core.handle_connected(t0);
        let (status, _, _) = status_of(&core.poll_transmit(t0).unwrap());
        assert_eq!(status, expected, "other part: {other:?}");
    }
}

#[test]
fn cs_42_other_settings_alone_report_their_outcome() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::REPORTS_OWN_METRICS
        | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS;
    let mut core = ws_full_offer(caps, t0);
    events(&mut core);
    core.poll_transmit(t0).unwrap();
    core.handle_other_settings_outcome(&Bytes::from_static(b"h1"), SettingsOutcome::Later);
    assert!(core.poll_transmit(t0).is_none(), "Later: the agent reports");
    core.handle_other_settings_outcome(&Bytes::from_static(b"h1"), SettingsOutcome::Applied);
    assert_eq!(
        status_of(&core.poll_transmit(t0).unwrap()).0,
        ConnectionSettingsStatuses::Applied
    );
    // An outcome for an offer that a newer one replaced changes nothing.
    core.handle_message(offer_message(full_offer(b"h2")), t0);
    core.poll_transmit(t0).unwrap();
    core.handle_other_settings_outcome(&Bytes::from_static(b"h1"), SettingsOutcome::Applied);
    assert!(core.poll_transmit(t0).is_none());
}

#[test]
fn cs_06_after_a_crash_the_saved_candidate_is_tried_first() {
    let t0 = Instant::now();
    for connects in [true, false] {
        let mut core = new_core(TransportKind::WebSocket, switch_caps());
        core.resume_candidate(Bytes::from_static(b"h1"), new_server());
        core.start(t0).unwrap();
        assert_eq!(
            commands(&mut core),
            [SettingsCommand::TryCandidate(Box::new(new_server()))]
        );
        assert!(core.wants_connect(t0));
        let expected = if connects {
            core.handle_connected(t0);
            assert_eq!(commands(&mut core), [SettingsCommand::KeepCandidate]);
            ConnectionSettingsStatuses::Applied
        } else {
            core.handle_candidate_failed(t0, "unreachable".into());
            assert_eq!(commands(&mut core), [SettingsCommand::DropCandidate]);
            assert!(core.wants_connect(t0));
            core.handle_connected(t0);
            ConnectionSettingsStatuses::Failed
        };
        let first = core.poll_transmit(t0).unwrap();
        assert!(first.agent_description.is_some());
        let (status, hash, _) = status_of(&first);
        assert_eq!((status, hash), (expected, Bytes::from_static(b"h1")));
        // The same offer, sent again by the server, is not processed again.
        core.handle_message(opamp_offer(b"h1"), t0);
        assert!(
            !events(&mut core)
                .iter()
                .any(|event| matches!(event, Event::OpampConnectionSettings { .. }))
        );
    }
}

#[test]
fn deliberate_reconnect_sends_goodbye_then_full_state() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEALTH, t0);
    core.begin_reconnect(t0);
    assert!(core.poll_transmit(t0).unwrap().agent_disconnect.is_some());
    assert!(core.wants_close());
    core.handle_disconnected(t0);
    assert!(core.wants_connect(t0));
    core.handle_connected(t0);
    core.report_full_state();
    let first = core.poll_transmit(t0).unwrap();
    assert!(first.agent_description.is_some() && first.health.is_some());
    assert!(first.agent_disconnect.is_none());
}

// ------------------------------------------------------------ custom messages

fn with_custom_caps(caps: &[&str], t0: Instant) -> ClientCore {
    let mut core = new_core(TransportKind::WebSocket, AgentCapabilities::empty());
    core.set_custom_capabilities(CustomCapabilities {
        capabilities: caps.iter().map(|c| (*c).into()).collect(),
    });
    core.start(t0).unwrap();
    core.handle_connected(t0);
    core.poll_transmit(t0).unwrap();
    core
}

fn custom(capability: &str) -> CustomMessage {
    CustomMessage {
        capability: capability.into(),
        r#type: "ping".into(),
        data: Bytes::from_static(b"1"),
    }
}

#[test]
fn cus_one_custom_message_pending_at_a_time() {
    let t0 = Instant::now();
    let mut core = with_custom_caps(&["io.example.cap/v1"], t0);
    assert!(matches!(
        core.send_custom_message(custom("io.example.other")),
        Err(ClientError::CustomCapabilityNotDeclared(_))
    ));
    core.send_custom_message(custom("io.example.cap/v1"))
        .unwrap();
    assert!(core.custom_message_pending());
    assert!(matches!(
        core.send_custom_message(custom("io.example.cap/v1")),
        Err(ClientError::CustomMessagePending)
    ));
    assert_eq!(
        core.poll_transmit(t0).unwrap().custom_message,
        Some(custom("io.example.cap/v1"))
    );
    assert!(!core.custom_message_pending());
    core.send_custom_message(custom("io.example.cap/v1"))
        .unwrap();
}

#[test]
fn cus_04_only_declared_capabilities_are_received() {
    let t0 = Instant::now();
    let mut core = with_custom_caps(&["io.example.cap/v1"], t0);
    core.handle_message(
        ServerToAgent {
            custom_message: Some(custom("io.example.other")),
            ..reply()
        },
        t0,
    );
    assert!(events(&mut core).is_empty());
    let server_caps = CustomCapabilities {
        capabilities: vec!["io.example.cap/v1".into()],
    };
    core.handle_message(
        ServerToAgent {
            custom_message: Some(custom("io.example.cap/v1")),
            custom_capabilities: Some(server_caps.clone()),
            ..reply()
        },
        t0,
    );
    let [Event::Message(data)] = [one_event(&mut core)] else {
        panic!()
    };
    assert_eq!(data.custom_message, Some(custom("io.example.cap/v1")));
    assert_eq!(data.custom_capabilities, Some(server_caps));
}

#[test]
fn cus_02_cus_06_custom_capabilities_sent_only_on_change() {
    let t0 = Instant::now();
    let mut core = with_custom_caps(&["a.b/c"], t0);
    core.set_custom_capabilities(CustomCapabilities {
        capabilities: vec!["a.b/c".into()],
    });
    assert!(core.poll_transmit(t0).is_none());
    let changed = CustomCapabilities {
        capabilities: vec!["a.b/c".into(), "a.b/d".into()],
    };
    core.set_custom_capabilities(changed.clone());
    assert_eq!(
        core.poll_transmit(t0).unwrap().custom_capabilities,
        Some(changed)
    );
}

// ------------------------------------------------------------ commands & packages

fn restart_with_extras() -> ServerToAgent {
    ServerToAgent {
        command: Some(ServerToAgentCommand {
            r#type: CommandType::Restart as i32,
        }),
        remote_config: remote_config(b"h").remote_config,
        flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
        ..reply()
    }
}

#[test]
fn cmd_01_cmd_03_restart_is_gated_and_other_fields_ignored() {
    let t0 = Instant::now();
    let caps =
        AgentCapabilities::ACCEPTS_RESTART_COMMAND | AgentCapabilities::ACCEPTS_REMOTE_CONFIG;
    let (mut core, _) = ws_connected(caps, t0);
    core.handle_message(restart_with_extras(), t0);
    assert_eq!(
        events(&mut core),
        vec![Event::Command(ServerToAgentCommand {
            r#type: CommandType::Restart as i32
        })]
    );
    assert!(
        core.poll_transmit(t0).is_none(),
        "REPORT_FULL_STATE was ignored"
    );

    // Without the capability the command is dropped; the rest is processed.
    let (mut core, _) = ws_connected(AgentCapabilities::ACCEPTS_REMOTE_CONFIG, t0);
    core.handle_message(restart_with_extras(), t0);
    assert!(matches!(events(&mut core).as_slice(), [Event::Message(_)]));
}

#[test]
fn pkg_01_packages_offered_only_with_accepts_packages() {
    let t0 = Instant::now();
    let offer = PackagesAvailable {
        all_packages_hash: Bytes::from_static(b"all"),
        ..Default::default()
    };
    let message = ServerToAgent {
        packages_available: Some(offer.clone()),
        ..reply()
    };
    let (mut core, _) = ws_connected(AgentCapabilities::empty(), t0);
    core.handle_message(message.clone(), t0);
    assert!(events(&mut core).is_empty());
    let (mut core, _) = ws_connected(AgentCapabilities::ACCEPTS_PACKAGES, t0);
    core.handle_message(message, t0);
    assert_eq!(events(&mut core), vec![Event::PackagesAvailable(offer)]);
}

#[test]
fn pkg_13_package_statuses_reported_with_server_hash() {
    let t0 = Instant::now();
    let caps = AgentCapabilities::ACCEPTS_PACKAGES | AgentCapabilities::REPORTS_PACKAGE_STATUSES;
    let (mut core, _) = ws_connected(caps, t0);
    let statuses = PackageStatuses {
        server_provided_all_packages_hash: Bytes::from_static(b"all"),
        ..Default::default()
    };
    core.set_package_statuses(statuses.clone());
    assert_eq!(
        core.poll_transmit(t0).unwrap().package_statuses,
        Some(statuses)
    );
}

/// STS-04: the server answers every message. A WebSocket that stays silent
/// for the reply timeout (a "black hole": no bytes, no close) is dropped and
/// replaced, and the new connection starts with the full state.
#[test]
fn sts_04_unanswered_websocket_is_replaced_after_the_reply_timeout() {
    let t0 = Instant::now();
    let (mut core, _) = ws_connected(AgentCapabilities::REPORTS_HEARTBEAT, t0);
    let timeout = CoreConfig::new(TransportKind::WebSocket, uid()).reply_timeout;

    // Answered in time: no deadline left behind.
    core.handle_message(reply(), t0 + SEC);
    core.handle_timeout(t0 + timeout * 2);
    assert!(!core.wants_close());

    // A heartbeat that is never answered.
    let sent_at = t0 + timeout * 2;
    let heartbeat = core.poll_transmit(sent_at).expect("heartbeat due");
    assert!(heartbeat.agent_description.is_none());
    assert!(
        core.poll_timeout()
            .is_some_and(|at| at <= sent_at + timeout)
    );
    core.handle_timeout(sent_at + timeout - SEC);
    assert!(!core.wants_close(), "not before the timeout");
    core.handle_timeout(sent_at + timeout);
    assert!(core.wants_close(), "silent connection is dropped");
    assert!(
        core.poll_transmit(sent_at + timeout).is_none(),
        "no goodbye into a black hole"
    );

    let gone = sent_at + timeout + SEC;
    core.handle_disconnected(gone);
    assert!(core.wants_connect(gone), "reconnects at once");
    core.handle_connected(gone);
    let first = core
        .poll_transmit(gone)
        .expect("first message on the new connection");
    assert!(
        first.agent_description.is_some(),
        "full state after the loss"
    );
}
