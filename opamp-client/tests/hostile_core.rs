//! A hostile server's messages fed straight to the sans-IO `ClientCore`:
//! bad uid offers and absurd intervals and delays are handled (ignored,
//! reported, capped), never a panic.

use std::time::{Duration, Instant};

use bytes::Bytes;
use opamp_client::{ClientCore, CoreConfig, Event, ProtocolError, TransportKind};
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentIdentification, ConnectionSettingsOffers,
    InstanceUid, OpAmpConnectionSettings, RetryInfo, ServerErrorResponse, ServerErrorResponseType,
    ServerToAgent, server_error_response,
};
use opamp_transport::ExponentialBackoff;

fn started(transport: TransportKind, now: Instant) -> ClientCore {
    let config = CoreConfig::new(transport, InstanceUid::from_array([0x51; 16]));
    let backoff = ExponentialBackoff::new().with_jitter_source(|| 0.5);
    let mut core = ClientCore::new(config, Box::new(backoff));
    core.set_capabilities(AgentCapabilities::REPORTS_HEARTBEAT);
    core.set_agent_description(AgentDescription::for_service("io.example.agent", "1.0"));
    core.start(now).unwrap();
    if transport == TransportKind::WebSocket {
        assert!(core.wants_connect(now));
        core.handle_connected(now);
    }
    assert!(core.poll_transmit(now).is_some(), "first status report");
    core
}

fn events(core: &mut ClientCore) -> Vec<Event> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

/// UID-03, UID-07, UID-08: a `new_instance_uid` of 0, 15 or 17 bytes is
/// ignored and reported; only 16 bytes are adopted.
#[test]
fn uid_03_new_instance_uid_of_0_15_17_bytes_is_ignored() {
    for transport in [TransportKind::WebSocket, TransportKind::PlainHttp] {
        let now = Instant::now();
        let mut core = started(transport, now);
        let original = core.instance_uid();
        for (round, len) in [0usize, 15, 17].into_iter().enumerate() {
            core.handle_message(
                ServerToAgent {
                    instance_uid: original.to_bytes(),
                    agent_identification: Some(AgentIdentification {
                        new_instance_uid: Bytes::from(vec![0x99; len]),
                    }),
                    ..Default::default()
                },
                now,
            );
            assert_eq!(
                events(&mut core),
                [Event::ProtocolError(ProtocolError::InvalidNewInstanceUid {
                    len
                })]
            );
            assert_eq!(core.instance_uid(), original);
            // HTTP: the next poll goes out under the old uid.
            if transport == TransportKind::PlainHttp {
                let later = now + Duration::from_secs(3600) * (round as u32 + 1);
                let poll = core.poll_transmit(later).expect("a poll is due");
                assert_eq!(poll.instance_uid, original.to_bytes());
            }
        }
    }
}

fn heartbeat_offer(seconds: u64) -> ServerToAgent {
    ServerToAgent {
        connection_settings: Some(ConnectionSettingsOffers {
            hash: Bytes::copy_from_slice(&seconds.to_le_bytes()),
            opamp: Some(OpAmpConnectionSettings {
                heartbeat_interval_seconds: seconds,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// HB-03: a server offering an absurd heartbeat interval (up to
/// `u64::MAX` seconds, far past what `Instant` can hold) must not crash the
/// agent: the next wake-up stays computable, heartbeats may be rare, and
/// real changes still go out at once.
#[test]
fn hb_03_absurd_heartbeat_interval_offer_does_not_panic() {
    for transport in [TransportKind::WebSocket, TransportKind::PlainHttp] {
        for seconds in [u64::MAX, u64::MAX / 2, 1 << 40] {
            let now = Instant::now();
            let mut core = started(transport, now);
            if transport == TransportKind::PlainHttp {
                core.handle_message(ServerToAgent::default(), now);
            }
            core.handle_message(heartbeat_offer(seconds), now);
            let _ = core.poll_timeout();
            let later = now + Duration::from_secs(3600);
            core.handle_timeout(later);
            let _ = core.poll_transmit(later);
            let _ = core.poll_timeout();
            if transport == TransportKind::PlainHttp {
                // Answer whatever poll went out, so the next can go.
                core.handle_message(ServerToAgent::default(), later);
            }
            // The core is not wedged: a full report goes out when asked.
            core.report_full_state();
            let report = core.poll_transmit(later);
            assert!(
                report.is_some_and(|report| report.agent_description.is_some()),
                "{transport:?} {seconds}"
            );
        }
    }
}

/// WS-23, CONN-04: an UNAVAILABLE answer asking for `u64::MAX` nanoseconds
/// (584 years) is capped by the retry policy (one hour by default): the
/// agent does not go silent forever and nothing overflows.
#[test]
fn ws_23_absurd_retry_info_is_capped() {
    let now = Instant::now();
    let mut core = started(TransportKind::WebSocket, now);
    core.handle_message(
        ServerToAgent {
            error_response: Some(ServerErrorResponse {
                r#type: ServerErrorResponseType::Unavailable as i32,
                error_message: "go away".into(),
                details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: u64::MAX,
                })),
            }),
            ..Default::default()
        },
        now,
    );
    // WS-23: goodbye, close, then wait.
    let goodbye = core.poll_transmit(now).expect("agent_disconnect");
    assert!(goodbye.agent_disconnect.is_some());
    assert!(core.wants_close());
    core.handle_disconnected(now);
    let reconnect_at = core.poll_timeout().expect("a reconnect is planned");
    assert!(reconnect_at > now);
    assert!(
        reconnect_at <= now + Duration::from_secs(3600),
        "capped at one hour"
    );
    assert!(!core.wants_connect(now + Duration::from_secs(1)));
    assert!(core.wants_connect(now + Duration::from_secs(3600)));
}
