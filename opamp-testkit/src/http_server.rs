//! A bare hyper HTTP/1.1 server on an ephemeral loopback port, plain or
//! TLS, serving a test's handler (with upgrades).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A response with a complete body.
pub type FullResponse = Response<Full<Bytes>>;
/// What a [`Handler`] returns.
pub type BoxResponse = Pin<Box<dyn Future<Output = FullResponse> + Send>>;
/// A request handler for [`serve_http`].
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxResponse + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = FullResponse> + Send + 'static,
{
    Arc::new(move |request| Box::pin(f(request)))
}

/// An empty response with `status` and `headers`.
pub fn status_response(status: StatusCode, headers: &[(header::HeaderName, &str)]) -> FullResponse {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    for (name, value) in headers {
        response
            .headers_mut()
            .append(name.clone(), value.parse().expect("a header value"));
    }
    response
}

/// A running [`serve_http`] server; its accept loop stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// `scheme://addr` + `path` as a URL.
    pub fn url(&self, scheme: &str, path: &str) -> url::Url {
        url::Url::parse(&format!("{scheme}://{}{path}", self.addr)).expect("a URL")
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on `127.0.0.1:0` over HTTP/1.1 with upgrades, over TLS
/// when `tls` is given. A failed TLS handshake (say, a refused client
/// certificate) just drops the connection, like a real server.
pub async fn serve_http(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
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
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => {
                        let _ = http
                            .serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades()
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = http
                            .serve_connection(TokioIo::new(tls), service)
                            .with_upgrades()
                            .await;
                    }
                }
            });
        }
    });
    HttpServer {
        addr,
        connections,
        task,
    }
}

/// The whole body of `response`, read to its end.
pub async fn body_bytes<B>(response: Response<B>) -> Bytes
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes()
}
