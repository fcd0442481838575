//! Hostile offers from the server side, against the real `opamp-client`
//! over TLS: connection settings carrying a certificate whose PEM is
//! garbage, or a key that does not belong to the certificate. The agent
//! refuses them (FAILED, CS-06/CS-08), stays on its working settings, and
//! a second agent on the same server is never disturbed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use opamp_client::{AgentCapabilities, AgentDescription, OpampClient};
use opamp_proto::{
    ConnectionSettingsOffers, ConnectionSettingsStatuses, InstanceUid, OpAmpConnectionSettings,
    TlsCertificate,
};
use opamp_server::{AgentEvent, OpampServer, Registry};
use opamp_testkit::{RunningServer, TestPki, within};
use opamp_transport::SystemRoots;
use tokio::sync::{broadcast, mpsc};

async fn start(pki: &TestPki) -> RunningServer {
    RunningServer::start(OpampServer::builder().tls(pki.server_tls()).build()).await
}

/// What the agent was told about offered OpAMP settings.
struct Outcomes {
    seen: mpsc::UnboundedSender<Result<(), String>>,
}

impl opamp_client::Callbacks for Outcomes {
    fn on_opamp_connection_settings_outcome(
        &self,
        _settings: &OpAmpConnectionSettings,
        outcome: Result<(), &str>,
    ) {
        let _ = self.seen.send(outcome.map_err(str::to_owned));
    }
}

fn agent(
    addr: SocketAddr,
    pki: &TestPki,
    uid: InstanceUid,
) -> (OpampClient, mpsc::UnboundedReceiver<Result<(), String>>) {
    let (seen, outcomes) = mpsc::unbounded_channel();
    let tls = pki.client_tls().with_system_roots(SystemRoots::None);
    let client = OpampClient::builder(format!("wss://localhost:{}/v1/opamp", addr.port()))
        .instance_uid(uid)
        .tls(tls)
        .agent_description(AgentDescription::for_service("io.example.agent", "1.0"))
        .capabilities(
            AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
                | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS,
        )
        .callbacks(Outcomes { seen })
        .build()
        .unwrap();
    (client, outcomes)
}

async fn connected(events: &mut broadcast::Receiver<AgentEvent>, wanted: InstanceUid) {
    within("the agent to connect", async {
        loop {
            if let AgentEvent::Connected { uid, .. } = events.recv().await.unwrap()
                && uid == wanted
            {
                return;
            }
        }
    })
    .await;
}

/// Waits until the registry holds this connection-settings status.
async fn settings_status(registry: &Registry, uid: InstanceUid, hash: &[u8]) -> (i32, String) {
    within("the connection settings status", async {
        loop {
            let record = registry.agent(uid).await.unwrap();
            if let Some(status) = record.and_then(|record| record.status.connection_settings_status)
                && status.last_connection_settings_hash == hash
                && status.status != ConnectionSettingsStatuses::Applying as i32
            {
                return (status.status, status.error_message);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn offer(hash: &'static [u8], cert: String, key: String) -> ConnectionSettingsOffers {
    ConnectionSettingsOffers {
        hash: Bytes::from_static(hash),
        opamp: Some(OpAmpConnectionSettings {
            certificate: Some(TlsCertificate {
                cert: Bytes::from(cert),
                private_key: Bytes::from(key),
                ca_cert: Bytes::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CS-06, CS-08, CS-25: a certificate offer whose PEM is garbage, and one
/// whose key does not match its certificate, are reported FAILED with a
/// reason; the agent goes on over its previous settings, and another agent
/// on the same server never notices.
#[tokio::test]
async fn certificate_offers_with_bad_pem_are_refused() {
    let pki = TestPki::generate();
    let running = start(&pki).await;
    let registry = running.registry().clone();
    let mut events = registry.subscribe();

    let healthy_uid = InstanceUid::from_array([0xe7; 16]);
    let (healthy, _) = agent(running.addr, &pki, healthy_uid);
    healthy.start().await.unwrap();
    connected(&mut events, healthy_uid).await;

    let target_uid = InstanceUid::from_array([0x31; 16]);
    let (target, mut outcomes) = agent(running.addr, &pki, target_uid);
    target.start().await.unwrap();
    connected(&mut events, target_uid).await;

    let garbage = offer(
        b"bad-pem",
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n"
            .to_owned(),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
    );
    let mismatched = offer(
        b"mismatched-key",
        pki.client_cert_pem.clone(),
        pki.rogue_client_key_pem.clone(),
    );
    let cases = [
        (&b"bad-pem"[..], garbage, "pem"),
        (&b"mismatched-key"[..], mismatched, "key"),
    ];
    for (hash, settings, cause) in cases {
        registry
            .offer_connection_settings(target_uid, settings)
            .await
            .expect("the agent accepts connection settings");
        let (status, error) = settings_status(&registry, target_uid, hash).await;
        assert_eq!(
            status,
            ConnectionSettingsStatuses::Failed as i32,
            "{}",
            String::from_utf8_lossy(hash)
        );
        assert!(
            error.to_lowercase().contains(cause),
            "FAILED carries the reason: {error}"
        );
        let outcome = within("the outcome callback", outcomes.recv())
            .await
            .unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
        // Back on the working settings.
        within("the agent to be connected", async {
            while registry.connection(target_uid).is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    // The healthy agent never lost its connection.
    while let Ok(event) = events.try_recv() {
        if let AgentEvent::Disconnected { uid, .. } = event {
            assert_ne!(uid, healthy_uid, "the healthy agent was disconnected");
        }
    }
    assert!(registry.connection(healthy_uid).is_some());
    within("stop", target.stop()).await;
    within("stop", healthy.stop()).await;
    running.stop().await;
}
