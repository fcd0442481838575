//! TLS and mutual TLS with `serve`: the client certificate reaches the
//! callbacks and the connection handle.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opamp_proto::{AgentToServer, Message, ServerToAgent};
use opamp_server::{ConnectDecision, OpampServer, Refusal};
use opamp_testkit::*;
use opamp_transport::{ClientAuth, ClientTlsConfig, SystemRoots};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

async fn tls_connect(
    addr: SocketAddr,
    client: ClientTlsConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(client.build().unwrap());
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// POSTs `message` on a fresh TLS connection made with `client`.
async fn tls_post(
    addr: SocketAddr,
    client: ClientTlsConfig,
    message: &AgentToServer,
) -> std::io::Result<Response<Incoming>> {
    let stream = tls_connect(addr, client).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    let request = Request::post("/v1/opamp")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .unwrap();
    sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)
}

fn client_tls(pki: &TestPki, with_identity: bool) -> ClientTlsConfig {
    let config = if with_identity {
        pki.client_tls_with_certificate()
    } else {
        pki.client_tls()
    };
    config.with_system_roots(SystemRoots::None)
}

#[tokio::test]
async fn mtls_client_certificate_reaches_callbacks_and_connection() {
    let pki = TestPki::generate();
    let client_der = CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap();
    let (recorder, _seen) = ServerRecorder::new();
    // Authenticate by certificate: no client certificate, no service (CONN-06).
    let recorder = recorder.on_connecting(|request| match &request.peer.certificates {
        Some(chain) if !chain.is_empty() => ConnectDecision::Accept,
        _ => ConnectDecision::Refuse(Refusal::unauthorized(None)),
    });
    let tls = pki
        .server_tls()
        .with_client_ca_pem(pki.ca_pem.clone(), ClientAuth::Optional);
    let server = OpampServer::builder().callbacks(recorder).tls(tls).build();
    let running = RunningServer::start(server).await;
    let agent = uid(1);

    // Plain HTTP over TLS with a client certificate.
    let message = report(agent, 0);
    let response = tls_post(running.addr, client_tls(&pki, true), &message)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        ServerToAgent::decode(body).unwrap().instance_uid,
        agent.to_bytes()
    );

    let peer = running.server.callbacks().peers.lock().unwrap()[0].clone();
    assert!(peer.addr.is_some());
    assert_eq!(
        peer.certificates.as_deref(),
        Some(&[client_der.clone()][..])
    );
    let session = running.registry().connection(agent).unwrap();
    assert_eq!(session.peer_certificates(), Some(&[client_der.clone()][..]));

    // A WebSocket over TLS, same certificate.
    let stream = tls_connect(running.addr, client_tls(&pki, true))
        .await
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/v1/opamp", running.addr.port()),
        stream,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let other = uid(2);
    futures_util::SinkExt::send(&mut ws, frame(&report(other, 0)))
        .await
        .unwrap();
    let reply = ws_recv_tls(&mut ws).await;
    assert_eq!(reply.instance_uid, other.to_bytes());
    let connection = running.registry().connection(other).unwrap();
    assert_eq!(connection.peer_certificates(), Some(&[client_der][..]));

    // Without a client certificate the TLS handshake succeeds (optional) but
    // the application refuses.
    let response = tls_post(running.addr, client_tls(&pki, false), &message)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    drop(ws);
    running.stop().await;
}

async fn ws_recv_tls(
    ws: &mut tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
) -> ServerToAgent {
    use futures_util::StreamExt;
    loop {
        match ws.next().await.expect("open").expect("frame") {
            tokio_tungstenite::tungstenite::Message::Binary(data) => {
                return opamp_transport::decode_frame(
                    data,
                    usize::MAX,
                    opamp_transport::HeaderlessFrames::Reject,
                )
                .unwrap();
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn required_client_certificates_are_enforced_by_tls() {
    let pki = TestPki::generate();
    let tls = pki
        .server_tls()
        .with_client_ca_pem(pki.ca_pem.clone(), ClientAuth::Required);
    let running = RunningServer::start(OpampServer::builder().tls(tls).build()).await;

    // TLS 1.3 reports a missing client certificate after the handshake, on
    // first use; either way no OpAMP exchange happens.
    let outcome = tls_post(running.addr, client_tls(&pki, false), &report(uid(3), 0)).await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(running.registry().agent(uid(3)).await.unwrap().is_none());

    // With the certificate it works.
    let message = report(uid(3), 0);
    let response = tls_post(running.addr, client_tls(&pki, true), &message)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    running.stop().await;
}

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

#[test]
fn server_registry_and_connection_are_send_sync_clone() {
    assert_send_sync_clone::<OpampServer<ServerRecorder>>();
    assert_send_sync_clone::<opamp_server::Registry>();
    assert_send_sync_clone::<opamp_server::Connection>();
}
