//! Mutual TLS end to end with real agents over `wss://` and `https://`: a
//! server that requires client certificates lets in agents presenting one
//! from its CA and nobody else (SEC-02, CONN-05). Agents without a
//! certificate, with one from another CA, or that do not trust the server
//! never reach the OpAMP layer, keep retrying with backoff, and do not
//! disturb the agents that got in.
//!
//! The raw-socket side of the same rules (an optional client certificate
//! checked by `on_connecting`, a required one refused by the handshake) is
//! in `tls.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opamp_client::{AgentDescription, ClientTlsConfig, OpampClient, TransportError};
use opamp_proto::InstanceUid;
use opamp_server::{ClientAuth, ConnectDecision, ConnectRequest, OpampServer, Refusal};
use opamp_testkit::{RunningServer, TestPki, count_reaches, header_number, until_all, within_for};
use opamp_transport::SystemRoots;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

const AGENT_HEADER: &str = "x-tls-agent";
const BOUND: Duration = Duration::from_secs(3600);
/// Failed attempts each refused agent makes before the test looks.
const FAILURES: usize = 3;

/// Who reached the HTTP layer (and so `on_connecting`), per agent.
#[derive(Default)]
struct Gatekeeper {
    reached: Mutex<HashMap<usize, usize>>,
}

impl opamp_server::Callbacks for Gatekeeper {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let agent = header_number::<usize>(&request.parts.headers, AGENT_HEADER)
            .expect("every agent names itself");
        *self.reached.lock().unwrap().entry(agent).or_default() += 1;
        // Defence in depth: the handshake already demands a certificate.
        match &request.peer.certificates {
            Some(chain) if !chain.is_empty() => ConnectDecision::Accept,
            _ => ConnectDecision::Refuse(Refusal::unauthorized(None)),
        }
    }
}

/// Counts failed attempts.
struct Failures {
    count: watch::Sender<usize>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl opamp_client::Callbacks for Failures {
    fn on_connect_failed(&self, error: &TransportError) {
        *self.last_error.lock().unwrap() = Some(error.to_string());
        self.count.send_modify(|count| *count += 1);
    }
}

struct Agent {
    uid: InstanceUid,
    client: OpampClient,
    failures: watch::Receiver<usize>,
    last_error: Arc<Mutex<Option<String>>>,
}

fn agent(endpoint: String, index: usize, tls: ClientTlsConfig) -> Agent {
    let (count, failures) = watch::channel(0);
    let last_error = Arc::new(Mutex::new(None));
    let uid = InstanceUid::new_v7();
    let client = OpampClient::builder(endpoint)
        .instance_uid(uid)
        .agent_description(AgentDescription::for_service("io.example.mtls", "1.0"))
        .header(
            http::HeaderName::from_static(AGENT_HEADER),
            http::HeaderValue::from(index),
        )
        .tls(tls)
        .callbacks(Failures {
            count,
            last_error: Arc::clone(&last_error),
        })
        .build()
        .expect("valid client settings");
    Agent {
        uid,
        client,
        failures,
        last_error,
    }
}

#[tokio::test(start_paused = true)]
async fn sec_02_mutual_tls_admits_only_agents_with_a_trusted_certificate() {
    let pki = TestPki::generate();
    let tls = pki
        .server_tls()
        .with_client_ca_pem(pki.ca_pem.clone(), ClientAuth::Required);
    let serving = RunningServer::start(
        OpampServer::builder()
            .callbacks(Gatekeeper::default())
            .tls(tls)
            .build(),
    )
    .await;
    let trusting = || {
        ClientTlsConfig::new()
            .with_root_ca_pem(pki.ca_pem.clone())
            .with_system_roots(SystemRoots::None)
    };
    let with_identity = || {
        trusting().with_client_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
    };
    let with_rogue_identity = || {
        trusting().with_client_identity_pem(
            pki.rogue_client_cert_pem.clone(),
            pki.rogue_client_key_pem.clone(),
        )
    };
    // Trusts another CA only, so it refuses the server's certificate.
    let distrusting = || {
        ClientTlsConfig::new()
            .with_root_ca_pem(pki.rogue_ca_pem.clone())
            .with_system_roots(SystemRoots::None)
            .with_client_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
    };
    // (scheme, TLS settings, admitted?)
    let cases = [
        ("wss", with_identity(), true),
        ("https", with_identity(), true),
        ("wss", trusting(), false),
        ("https", trusting(), false),
        ("wss", with_rogue_identity(), false),
        ("https", with_rogue_identity(), false),
        ("wss", distrusting(), false),
        ("https", distrusting(), false),
    ];
    let agents: Vec<Agent> = cases
        .iter()
        .enumerate()
        .map(|(index, (scheme, tls, _))| agent(serving.endpoint(scheme), index, tls.clone()))
        .collect();
    for agent in &agents {
        agent.client.start().await.unwrap();
    }

    let registry = serving.server.registry();
    let admitted: Vec<InstanceUid> = cases
        .iter()
        .zip(&agents)
        .filter(|((_, _, admitted), _)| *admitted)
        .map(|(_, agent)| agent.uid)
        .collect();
    within_for(
        BOUND,
        "agents with a certificate connect",
        until_all(registry, admitted.iter().copied(), |record| {
            record.is_connected() && record.status.description.is_some()
        }),
    )
    .await;
    for (index, ((_, _, admitted), agent)) in cases.iter().zip(&agents).enumerate() {
        if !admitted {
            let mut failures = agent.failures.clone();
            count_reaches(
                BOUND,
                "a refused agent keeps retrying",
                &mut failures,
                FAILURES,
            )
            .await;
            let error = agent.last_error.lock().unwrap().clone().unwrap_or_default();
            eprintln!("agent {index} refused: {error}");
        }
    }

    // The certificate the admitted agents presented reached the server.
    let client_der = CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap();
    for uid in &admitted {
        let connection = registry.connection(*uid).expect("connected");
        assert_eq!(
            connection
                .peer_certificates()
                .and_then(|chain| chain.first()),
            Some(&client_der)
        );
    }
    // The others never got past TLS: no request, no record.
    let reached = serving.server.callbacks().reached.lock().unwrap().clone();
    for (index, (_, _, admitted)) in cases.iter().enumerate() {
        assert_eq!(
            reached.contains_key(&index),
            *admitted,
            "agent {index} reached on_connecting: {reached:?}"
        );
    }
    let mut known: Vec<InstanceUid> = registry
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.uid)
        .collect();
    known.sort();
    let mut expected = admitted.clone();
    expected.sort();
    assert_eq!(known, expected);

    for agent in &agents {
        agent.client.stop().await;
    }
    serving.stop().await;
}
