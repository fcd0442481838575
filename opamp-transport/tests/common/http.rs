//! Test support for the plain-HTTP tests: a real hyper server on
//! 127.0.0.1:0 (optionally TLS) and rcgen certificates.
//!
//! Included with `#[path = "common/http.rs"] mod http_support;` so it does
//! not depend on the WebSocket tests' `common/mod.rs`.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_transport::http::server::{RequestKind, classify, read_agent_message, response_for};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub type BoxResponse = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxResponse + Send + Sync>;

/// A running test server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Number of TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub fn url(&self, scheme: &str, path: &str) -> url::Url {
        url::Url::parse(&format!("{scheme}://{}{path}", self.addr)).unwrap()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on 127.0.0.1:0 over HTTP/1.1, with TLS when `tls` is
/// given.
pub async fn serve(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        connections,
        task,
    }
}

/// What the OpAMP test server saw for one request.
#[derive(Debug)]
pub struct Seen {
    pub headers: HeaderMap,
    pub message: AgentToServer,
}

/// A handler doing what an OpAMP server does with the helpers: classify,
/// read with `limit`, reply with `reply(message)`. Each decoded request is
/// reported on the returned channel; failures are answered with their status.
pub fn opamp_handler(
    limit: usize,
    reply: impl Fn(&AgentToServer) -> ServerToAgent + Send + Sync + 'static,
) -> (Handler, mpsc::UnboundedReceiver<Seen>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let reply = Arc::new(reply);
    let handler: Handler = Arc::new(move |request: Request<Incoming>| {
        let sender = sender.clone();
        let reply = Arc::clone(&reply);
        Box::pin(async move {
            if let RequestKind::Reject(rejection) = classify(&request) {
                return rejection.to_response();
            }
            let (parts, body) = request.into_parts();
            match read_agent_message(body, &parts.headers, limit, Duration::from_secs(30)).await {
                Ok(message) => {
                    let answer = reply(&message);
                    let _ = sender.send(Seen {
                        headers: parts.headers.clone(),
                        message,
                    });
                    response_for(&answer, &parts.headers, limit)
                        .unwrap_or_else(|too_large| too_large.to_response())
                }
                Err(error) => error.to_response(),
            }
        })
    });
    (handler, receiver)
}

/// A handler that answers every request with a clone of `response`.
pub fn fixed_response(make: impl Fn() -> Response<Full<Bytes>> + Send + Sync + 'static) -> Handler {
    let make = Arc::new(make);
    Arc::new(move |_request| {
        let make = Arc::clone(&make);
        Box::pin(async move { make() })
    })
}

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client
/// certificate for mutual TLS, all PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

pub fn test_pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "opamp-http test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["agent.test".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}
