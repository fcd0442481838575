//! Certificate rotation with the CSR flow (CS-28..31, CS-36): the agent
//! sends a CSR naming its instance uid, the server signs it and offers the
//! certificate without a private key, the agent completes it with the key
//! it kept, connects with it, saves it, and does not ask again after a
//! restart.

mod agent_support;

use agent_support::{
    AgentProcess, PATIENCE, TestServer, component_health, settings_applied, state_dir,
};
use opamp_proto::{ConnectionSettingsOffers, OpAmpConnectionSettings, TlsCertificate};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    PublicKeyData, SanType,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_flow_issues_a_certificate_that_is_kept() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = server.endpoint("ws");
    let agent = AgentProcess::start(&endpoint, dir.path(), "agent-1.log", &["--csr"]);
    let (uid, csr) = tokio::time::timeout(PATIENCE, server.csr.recv())
        .await
        .unwrap()
        .unwrap();
    let csr = csr.expect("the first message carries a CSR");

    // CS-36: the CSR names the agent's instance uid.
    let request =
        CertificateSigningRequestParams::from_pem(std::str::from_utf8(&csr).unwrap()).unwrap();
    let wanted_san = format!("urn:uuid:{uid}");
    assert!(
        request.params.subject_alt_names.iter().any(|san| matches!(
            san,
            SanType::URI(uri) if uri.as_str() == wanted_san
        )),
        "{:?}",
        request.params.subject_alt_names
    );

    // CS-30/31: sign it; offer the certificate without a private key.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
    let cert = request.signed_by(&issuer).unwrap();
    let offer = ConnectionSettingsOffers {
        opamp: Some(OpAmpConnectionSettings {
            destination_endpoint: endpoint.clone(),
            certificate: Some(TlsCertificate {
                cert: cert.pem().into_bytes().into(),
                private_key: Default::default(),
                ca_cert: ca.pem().into_bytes().into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let offered = server
        .registry
        .offer_connection_settings(uid, offer)
        .await
        .unwrap();
    // CS-08: APPLIED once the agent connected with the new settings, and
    // the health says the certificate is saved.
    server
        .wait_for(uid, "the certificate applied and saved", |record| {
            let applied = settings_applied(record, &offered.hash);
            let saved = component_health(record, "client-certificate").is_some_and(|component| {
                component.status == "rotated certificate in use and saved"
            });
            applied && saved
        })
        .await;
    let tls = state_dir(dir.path()).join("tls");
    assert_eq!(
        std::fs::read_to_string(tls.join("client.crt")).unwrap(),
        cert.pem()
    );
    let key = KeyPair::from_pem(&std::fs::read_to_string(tls.join("client.key")).unwrap()).unwrap();
    assert_eq!(
        key.der_bytes(),
        request.public_key.der_bytes(),
        "the saved key is the CSR's"
    );
    assert!(!tls.join("csr.key").exists());
    assert!(agent.terminate().await.success());

    // Restarted: the saved certificate is used, no new CSR is sent.
    let agent = AgentProcess::start(&endpoint, dir.path(), "agent-2.log", &["--csr"]);
    let (again, csr) = tokio::time::timeout(PATIENCE, server.csr.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, uid);
    assert!(csr.is_none(), "a second CSR was sent");
    server
        .wait_for(uid, "the saved certificate reported", |record| {
            component_health(record, "client-certificate")
                .is_some_and(|component| component.status == "saved rotated certificate in use")
        })
        .await;
    assert!(agent.terminate().await.success());
}
