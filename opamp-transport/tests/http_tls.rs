//! Plain HTTP over TLS against a real hyper server with rcgen certificates:
//! the poster uses the same TLS options as the WebSocket client.

#[path = "common/http.rs"]
mod http_support;

use std::sync::Arc;

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use http_support::{echo, opamp_handler};
use opamp_proto::{AgentToServer, InstanceUid};
use opamp_testkit::{Handler, HttpServer, TestPki, serve_http};
use opamp_transport::http::client::{HttpError, HttpPoster};
use opamp_transport::{ClientAuth, ClientOptions, ClientTlsConfig, ConnectError, SystemRoots};

fn uid() -> InstanceUid {
    InstanceUid::from_array([9; 16])
}

fn message() -> AgentToServer {
    AgentToServer {
        instance_uid: uid().to_bytes(),
        sequence_num: 5,
        ..Default::default()
    }
}

fn trusting(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .with_root_ca_pem(ca_pem.as_bytes().to_vec())
        .with_system_roots(SystemRoots::None)
}

/// A poster for `server`'s OpAMP endpoint over HTTPS with `tls`.
fn https_poster(server: &HttpServer, tls: ClientTlsConfig) -> HttpPoster {
    HttpPoster::new(ClientOptions::new(server.url("https", "/v1/opamp")).with_tls(tls)).unwrap()
}

/// How one exchange with `server`, trusting `ca_pem`, fails.
async fn exchange_error(server: &HttpServer, ca_pem: &str) -> HttpError {
    https_poster(server, trusting(ca_pem))
        .exchange(uid(), &message())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn https_exchange_with_custom_root_ca() {
    let pki = TestPki::generate();
    let tls = pki.server_tls().build().unwrap();
    let (handler, mut seen) = opamp_handler(1 << 20, echo);
    let server = serve_http(handler, Some(tls)).await;

    for host in ["localhost", "127.0.0.1"] {
        let url =
            url::Url::parse(&format!("https://{host}:{}/v1/opamp", server.addr.port())).unwrap();
        let options = ClientOptions::new(url).with_tls(trusting(&pki.ca_pem));
        let poster = HttpPoster::new(options).unwrap();
        let reply = poster.exchange(uid(), &message()).await.unwrap();
        assert_eq!(reply.capabilities, 5);
        assert_eq!(seen.recv().await.unwrap().message, message());
    }
}

#[tokio::test]
async fn https_with_untrusted_certificate_fails_the_handshake() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let tls = pki.server_tls().build().unwrap();
    let (handler, _seen) = opamp_handler(1 << 20, echo);
    let server = serve_http(handler, Some(tls)).await;
    let error = exchange_error(&server, &other.ca_pem).await;
    assert!(
        matches!(error, HttpError::Connect(ConnectError::TlsHandshake(_))),
        "{error:?}"
    );
}

/// Mutual TLS: a client with a certificate from the client CA is accepted;
/// one without is refused during the handshake.
#[tokio::test]
async fn mutual_tls_accepted_and_refused() {
    let pki = TestPki::generate();
    let tls = pki
        .server_tls()
        .with_client_ca_pem(pki.ca_pem.clone(), ClientAuth::Required)
        .build()
        .unwrap();
    let (handler, mut seen) = opamp_handler(1 << 20, echo);
    let server = serve_http(handler, Some(tls)).await;

    let with_identity = trusting(&pki.ca_pem)
        .with_client_identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone());
    let poster = https_poster(&server, with_identity);
    assert_eq!(
        poster
            .exchange(uid(), &message())
            .await
            .unwrap()
            .capabilities,
        5
    );
    assert_eq!(seen.recv().await.unwrap().message, message());

    let error = exchange_error(&server, &pki.ca_pem).await;
    // With TLS 1.3 the client learns of the refusal after its handshake
    // completes, when the server's alert arrives with the first read.
    assert!(
        matches!(
            error,
            HttpError::Connect(ConnectError::TlsHandshake(_)) | HttpError::Transport(_)
        ),
        "{error:?}"
    );
    assert!(seen.try_recv().is_err());
}

/// A redirect from HTTPS to plain HTTP is refused, so headers (tokens) never
/// travel in clear text.
#[tokio::test]
async fn https_to_http_redirect_is_refused() {
    let pki = TestPki::generate();
    let tls = pki.server_tls().build().unwrap();
    let handler: Handler = Arc::new(|_request| {
        Box::pin(async {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            response.headers_mut().insert(
                LOCATION,
                HeaderValue::from_static("http://127.0.0.1:9/v1/opamp"),
            );
            response
        })
    });
    let server = serve_http(handler, Some(tls)).await;
    let error = exchange_error(&server, &pki.ca_pem).await;
    assert!(
        matches!(error, HttpError::Connect(ConnectError::InsecureRedirect(_))),
        "{error:?}"
    );
}

/// A broken TLS setting is reported when the poster is built, not on the
/// first request.
#[test]
fn bad_tls_settings_fail_at_construction() {
    let url = url::Url::parse("https://127.0.0.1:1/v1/opamp").unwrap();
    let tls = ClientTlsConfig::new()
        .with_root_ca_pem(
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
        )
        .with_system_roots(SystemRoots::None);
    let error = HttpPoster::new(ClientOptions::new(url).with_tls(tls)).unwrap_err();
    assert!(matches!(error, ConnectError::Tls(_)), "{error:?}");
}
