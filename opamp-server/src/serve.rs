//! Running the server on its own listener: hyper-util's auto builder with
//! upgrades, optional TLS, header read timeout and graceful shutdown.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::callbacks::Callbacks;
use crate::connection::PeerInfo;
use crate::error::ServeError;
use crate::server::OpampServer;
use crate::shared::{ResponseBody, plain_status};

/// The hyper service for one accepted connection: knows its peer, answers
/// 404 off the endpoint path.
struct PeerService<C> {
    server: OpampServer<C>,
    peer: PeerInfo,
    /// Set once a request head has been parsed on this connection.
    head_seen: Arc<AtomicBool>,
}

impl<C: Callbacks> hyper::service::Service<Request<Incoming>> for PeerService<C> {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.head_seen.store(true, Ordering::Release);
        if request.uri().path() != self.server.inner.settings.path {
            return Box::pin(async { Ok(plain_status(StatusCode::NOT_FOUND)) });
        }
        request.extensions_mut().insert(self.peer.clone());
        let server = self.server.clone();
        Box::pin(async move { Ok(server.handle(request).await) })
    }
}

impl<C: Callbacks> OpampServer<C> {
    /// Serves the endpoint on `listener` until the process ends. See
    /// [`serve_with_shutdown`](Self::serve_with_shutdown).
    pub async fn serve(self, listener: TcpListener) -> Result<(), ServeError> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves the endpoint on `listener` (HTTP/1.1 with WebSocket upgrades,
    /// HTTP/2 for plain HTTP; TLS when configured) until `signal` resolves,
    /// then shuts down gracefully: stops accepting, closes every WebSocket
    /// with 1001 and waits for in-flight plain-HTTP requests, within the
    /// shutdown timeout.
    ///
    /// Every request gets a [`PeerInfo`] with the peer address and, over
    /// mutual TLS, the client certificate chain. A request head must arrive
    /// within the header read timeout (slowloris protection); requests off
    /// the endpoint path get 404.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let settings = &self.inner.settings;
        let tls = match &settings.tls {
            Some(tls) => Some(TlsAcceptor::from(tls.build()?)),
            None => None,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let header_read_timeout = settings.header_read_timeout;
        tracing::info!(address = ?listener.local_addr().ok(), tls = tls.is_some(), "OpAMP server listening");

        let mut signal = pin!(signal);
        loop {
            let (stream, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off a
                        // little instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut signal => break,
            };
            let server = self.clone();
            let builder = Arc::clone(&builder);
            let tls = tls.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut peer = PeerInfo {
                    addr: Some(addr),
                    certificates: None,
                };
                match tls {
                    None => {
                        serve_stream(stream, server, peer, &builder, watcher, header_read_timeout)
                            .await
                    }
                    Some(acceptor) => {
                        let Some(stream) = handshake(acceptor, stream, header_read_timeout).await
                        else {
                            return;
                        };
                        peer.certificates = client_certificates(&stream);
                        serve_stream(stream, server, peer, &builder, watcher, header_read_timeout)
                            .await;
                    }
                }
            });
        }
        drop(listener);
        tracing::info!("OpAMP server shutting down");
        let shutdown_timeout = self.inner.settings.shutdown_timeout;
        let drained = tokio::time::timeout(shutdown_timeout, async {
            let (closed, ()) = tokio::join!(self.shutdown(), graceful.shutdown());
            closed
        })
        .await;
        if !matches!(drained, Ok(true)) {
            tracing::warn!(
                ?shutdown_timeout,
                "shutdown timeout passed with connections still open"
            );
        }
        Ok(())
    }
}

/// Serves one accepted stream (plain TCP or after the TLS handshake) until it
/// ends or the graceful shutdown takes it.
async fn serve_stream<C, S>(
    stream: S,
    server: OpampServer<C>,
    peer: PeerInfo,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    header_read_timeout: Duration,
) where
    C: Callbacks,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head_seen = Arc::new(AtomicBool::new(false));
    let service = PeerService {
        server,
        peer,
        head_seen: head_seen.clone(),
    };
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    let served = watcher.watch(connection);
    first_head_within(header_read_timeout, &head_seen, served).await;
}

/// Runs a connection, closing it if no request head arrived within
/// `timeout`. hyper's own header read timeout covers every later request,
/// but not the protocol detection the auto builder does first, which a
/// client sending nothing (or half an HTTP/2 preface) would stall forever.
async fn first_head_within<E: std::fmt::Display>(
    timeout: Duration,
    head_seen: &AtomicBool,
    served: impl Future<Output = Result<(), E>>,
) {
    let mut served = pin!(served);
    let result = tokio::select! {
        result = &mut served => result,
        () = tokio::time::sleep(timeout) => {
            if !head_seen.load(Ordering::Acquire) {
                tracing::debug!(?timeout, "no request head in time: closing the connection");
                return;
            }
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

fn client_certificates<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &tokio_rustls::server::TlsStream<S>,
) -> Option<Arc<[CertificateDer<'static>]>> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .map(|chain| chain.iter().map(|cert| cert.clone().into_owned()).collect())
}
