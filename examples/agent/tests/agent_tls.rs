//! The agent's connection flags against a server with mutual TLS and a
//! bearer token: `--ca-file`, `--client-cert`/`--client-key` and
//! `--bearer-token` get it in over `wss://` (CONN-05, SEC-*); without the
//! token it is refused with 401 and keeps retrying.

mod agent_support;

use agent_support::{AgentProcess, PATIENCE, TestServer, config};
use opamp_server::{ClientAuth, RemoteConfigState, ServerTlsConfig, TransportKind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agent test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
    let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: issue(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: issue(vec!["agent".into()], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_bearer_token_flags() {
    let pki = pki();
    let tls = ServerTlsConfig::new(pki.server.0.clone(), pki.server.1.clone())
        .with_client_ca_pem(pki.ca_pem.clone(), ClientAuth::Required);
    let mut server = TestServer::start_with(Some("s3cret"), Some(tls)).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = write("ca.pem", &pki.ca_pem);
    let cert = write("client.pem", &pki.client.0);
    let key = write("client.key", &pki.client.1);
    let endpoint = server.endpoint("wss");
    let base = [
        "--ca-file",
        ca.as_str(),
        "--client-cert",
        cert.as_str(),
        "--client-key",
        key.as_str(),
    ];

    // Without the token: refused (and the agent keeps trying).
    let refused = AgentProcess::start(&endpoint, dir.path(), "agent-no-token.log", &base);
    let sent = tokio::time::timeout(PATIENCE, server.refused.recv())
        .await
        .expect("no refused request")
        .unwrap();
    assert_eq!(sent, "None");
    assert!(refused.terminate().await.success());

    // With it: connected over TLS, and working.
    let mut args = base.to_vec();
    args.extend(["--bearer-token", "s3cret"]);
    let agent = AgentProcess::start(&endpoint, dir.path(), "agent.log", &args);
    let (uid, transport) = server.next_connected().await;
    assert_eq!(transport, TransportKind::WebSocket);
    let outcome = server
        .push_config(uid, config("app.yaml", "tls: true\n"))
        .await;
    assert_eq!(outcome, RemoteConfigState::Applied);
    assert!(agent.terminate().await.success());
}
