//! `wss://` with rustls over 127.0.0.1: custom roots, mutual TLS accepted
//! and refused, insecure mode, and TLS through a CONNECT proxy.
#![cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]

mod common;

use bytes::Bytes;
use common::opamp_ws_handler;
use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_testkit::{HttpServer, TestPki, serve_http};
use opamp_transport::ws::client::WsClientConnection;
use opamp_transport::ws::server::{WsServerConfig, WsServerConnection};
use opamp_transport::{
    ClientAuth, ClientOptions, ClientTlsConfig, ConnectError, ProxyConfig, ServerTlsConfig,
    SystemRoots, TlsError, TlsVersion,
};
use tokio::sync::mpsc;

fn trusting(pki: &TestPki) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .with_root_ca_pem(pki.ca_pem.clone())
        .with_system_roots(SystemRoots::None)
}

type Accepted = mpsc::UnboundedReceiver<(String, WsServerConnection)>;

async fn tls_server(server_tls: ServerTlsConfig) -> (HttpServer, Accepted) {
    let (handler, accepted) = opamp_ws_handler(WsServerConfig::default());
    let server = serve_http(handler, Some(server_tls.build().unwrap())).await;
    (server, accepted)
}

/// Connects with `options` and checks one message each way with the
/// connection the server accepted; returns both ends.
async fn connect_and_roundtrip(
    options: &ClientOptions,
    accepted: &mut Accepted,
) -> (WsClientConnection, WsServerConnection) {
    let mut client = WsClientConnection::connect(options).await.unwrap();
    let (_, mut server_side) = accepted.recv().await.unwrap();
    let hello = AgentToServer {
        instance_uid: Bytes::from_static(&[2; 16]),
        sequence_num: 1,
        ..Default::default()
    };
    client.send(&hello).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(hello));
    let reply = ServerToAgent {
        flags: 1,
        ..Default::default()
    };
    server_side.send(&reply).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Some(reply));
    (client, server_side)
}

/// How connecting to `server` over `wss://` with `tls` fails.
async fn connect_error(server: &HttpServer, tls: ClientTlsConfig) -> ConnectError {
    let options = ClientOptions::new(server.url("wss", "/")).with_tls(tls);
    WsClientConnection::connect(&options).await.unwrap_err()
}

#[tokio::test]
async fn conn_01_wss_with_a_custom_root_ca() {
    let pki = TestPki::generate();
    let (server, mut accepted) = tls_server(pki.server_tls()).await;
    // Both an IP-address and a DNS name in the certificate are checked.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("wss://{host}:{}/v1/opamp", server.addr.port())
            .parse()
            .unwrap();
        let options = ClientOptions::new(url).with_tls(trusting(&pki));
        let (client, mut server_side) = connect_and_roundtrip(&options, &mut accepted).await;
        // Clean close over TLS: the server must be reading to answer.
        let server_end = tokio::spawn(async move { server_side.recv().await.map(|m| m.is_none()) });
        client.close().await.unwrap();
        assert!(
            server_end.await.unwrap().unwrap(),
            "server saw the end of the stream"
        );
    }
}

#[tokio::test]
async fn https_endpoint_is_upgraded_as_wss() {
    let pki = TestPki::generate();
    let (server, mut accepted) = tls_server(pki.server_tls()).await;
    let options = ClientOptions::new(server.url("https", "/v1/opamp")).with_tls(trusting(&pki));
    connect_and_roundtrip(&options, &mut accepted).await;
}

#[tokio::test]
async fn untrusted_server_certificate_is_a_tls_handshake_error() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let (server, _accepted) = tls_server(pki.server_tls()).await;
    let error = connect_error(&server, trusting(&other)).await;
    assert!(matches!(error, ConnectError::TlsHandshake(_)), "{error:?}");
}

#[tokio::test]
async fn sec_13_insecure_skip_verify_accepts_an_untrusted_certificate() {
    let pki = TestPki::generate();
    let (server, mut accepted) = tls_server(pki.server_tls()).await;
    let tls = ClientTlsConfig::new()
        .with_system_roots(SystemRoots::None)
        .with_insecure_skip_verify(true);
    assert!(tls.insecure_skip_verify());
    let options = ClientOptions::new(server.url("wss", "/")).with_tls(tls);
    connect_and_roundtrip(&options, &mut accepted).await;
}

fn mtls_server_config(pki: &TestPki, auth: ClientAuth) -> ServerTlsConfig {
    pki.server_tls()
        .with_client_ca_pem(pki.ca_pem.clone(), auth)
}

#[tokio::test]
async fn mtls_client_certificate_accepted() {
    let pki = TestPki::generate();
    let (server, mut accepted) = tls_server(mtls_server_config(&pki, ClientAuth::Required)).await;
    let tls = trusting(&pki)
        .with_client_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone());
    let options = ClientOptions::new(server.url("wss", "/")).with_tls(tls);
    connect_and_roundtrip(&options, &mut accepted).await;
}

#[tokio::test]
async fn mtls_without_client_certificate_is_refused() {
    let pki = TestPki::generate();
    let (server, _accepted) = tls_server(mtls_server_config(&pki, ClientAuth::Required)).await;
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let tls = trusting(&pki)
            .with_min_version(version)
            .with_max_version(version);
        let error = connect_error(&server, tls).await;
        assert!(
            matches!(error, ConnectError::TlsHandshake(_)),
            "{version:?}: {error:?}"
        );
    }
}

#[tokio::test]
async fn mtls_certificate_from_an_unknown_ca_is_refused() {
    let pki = TestPki::generate();
    let (server, _accepted) = tls_server(mtls_server_config(&pki, ClientAuth::Required)).await;
    let tls = trusting(&pki).with_client_identity_pem(
        pki.rogue_client_cert_pem.clone(),
        pki.rogue_client_key_pem.clone(),
    );
    let error = connect_error(&server, tls).await;
    assert!(matches!(error, ConnectError::TlsHandshake(_)), "{error:?}");
}

#[tokio::test]
async fn optional_client_auth_accepts_clients_without_a_certificate() {
    let pki = TestPki::generate();
    let (server, mut accepted) = tls_server(mtls_server_config(&pki, ClientAuth::Optional)).await;
    let options = ClientOptions::new(server.url("wss", "/")).with_tls(trusting(&pki));
    connect_and_roundtrip(&options, &mut accepted).await;
}

#[tokio::test]
async fn wss_through_a_connect_proxy() {
    let pki = TestPki::generate();
    let (server, mut accepted) = tls_server(pki.server_tls()).await;
    let proxy = common::proxy(200).await;
    let options = ClientOptions::new(server.url("wss", "/v1/opamp"))
        .with_tls(trusting(&pki))
        .with_proxy(ProxyConfig::new(proxy.url("")));
    connect_and_roundtrip(&options, &mut accepted).await;
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].request_line,
        format!("CONNECT {} HTTP/1.1", server.addr)
    );
    assert_eq!(requests[0].header("proxy-authorization"), None);
}

#[tokio::test]
async fn bad_client_key_is_a_typed_config_error_before_any_io() {
    let pki = TestPki::generate();
    let tls = trusting(&pki)
        .with_client_identity_pem(pki.client_cert_pem.clone(), b"no key here".to_vec());
    // Port 9 (discard) is never contacted: the config fails first.
    let options = ClientOptions::new("wss://127.0.0.1:9/".parse().unwrap()).with_tls(tls);
    let error = WsClientConnection::connect(&options).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Tls(TlsError::NoPrivateKey { .. })),
        "{error:?}"
    );
}

#[test]
fn server_config_rejects_a_mismatched_key() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let error = ServerTlsConfig::new(pki.server_cert_pem, other.server_key_pem)
        .build()
        .unwrap_err();
    assert!(matches!(error, TlsError::Rustls(_)), "{error:?}");
}

#[test]
fn server_config_offers_http11_alpn() {
    let pki = TestPki::generate();
    let config = pki.server_tls().build().unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
}
