//! The server: a `tower::Service` for the OpAMP endpoint.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::Body;
use opamp_proto::{CustomCapabilities, ServerCapabilities, ServerToAgent};
use opamp_transport::ServerTlsConfig;
use opamp_transport::http::server::RequestKind;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::callbacks::{
    AgentMessageError, Callbacks, ConnectDecision, ConnectRequest, DisconnectReason, NoCallbacks,
};
use crate::connection::{Connection, ConnectionConfig, PeerInfo, TransportKind};
use crate::messages;
use crate::protocol::Disposition;
use crate::registry::Registry;
use crate::shared::{Admission, ServerInner, Settings, lock, plain_status};
pub use crate::shared::{Keepalive, ResponseBody};

/// The default OpAMP endpoint path (GEN-03).
pub const DEFAULT_PATH: &str = "/v1/opamp";

/// The default OpAMP port (GEN-04).
pub const DEFAULT_PORT: u16 = 4320;

/// Capabilities announced by default: everything the registry implements.
pub const DEFAULT_CAPABILITIES: ServerCapabilities = ServerCapabilities::ACCEPTS_STATUS
    .union(ServerCapabilities::OFFERS_REMOTE_CONFIG)
    .union(ServerCapabilities::ACCEPTS_EFFECTIVE_CONFIG)
    .union(ServerCapabilities::OFFERS_PACKAGES)
    .union(ServerCapabilities::ACCEPTS_PACKAGES_STATUS)
    .union(ServerCapabilities::OFFERS_CONNECTION_SETTINGS);

/// An OpAMP server: one endpoint for WebSocket and plain-HTTP agents
/// (WS-16, HTTP-04), with the [`Registry`] doing the protocol bookkeeping
/// and [`Callbacks`] for the application.
///
/// It is a `tower::Service<http::Request<B>>` (`Error = Infallible`, cheap
/// to clone), so it mounts in axum with `route_service("/v1/opamp", server)`
/// or any hyper stack that serves connections with upgrades enabled. Or run
/// it on its own with [`serve`](Self::serve).
///
/// Requests are classified by their head: `Content-Type:
/// application/x-protobuf` is a plain-HTTP exchange, a WebSocket upgrade
/// opens a WebSocket, anything else gets 400, 405 or 415.
pub struct OpampServer<C = NoCallbacks> {
    pub(crate) inner: Arc<ServerInner<C>>,
}

impl<C> Clone for OpampServer<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> fmt::Debug for OpampServer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpampServer")
            .field("settings", &self.inner.settings)
            .field("active", &*self.inner.admission.active.borrow())
            .finish_non_exhaustive()
    }
}

/// Builds an [`OpampServer`].
#[must_use]
pub struct ServerBuilder<C = NoCallbacks> {
    callbacks: C,
    registry: Option<Registry>,
    capabilities: ServerCapabilities,
    custom_capabilities: Vec<String>,
    send_queue_capacity: usize,
    settings: Settings,
}

impl<C> fmt::Debug for ServerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("capabilities", &self.capabilities)
            .field("custom_capabilities", &self.custom_capabilities)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder<NoCallbacks> {
    fn default() -> Self {
        Self {
            callbacks: NoCallbacks,
            registry: None,
            capabilities: DEFAULT_CAPABILITIES,
            custom_capabilities: Vec::new(),
            send_queue_capacity: 16,
            settings: Settings {
                path: DEFAULT_PATH.to_owned(),
                max_message_size: opamp_transport::DEFAULT_MAX_MESSAGE_SIZE,
                max_connections: 20_000,
                busy_retry_after: Duration::from_secs(30),
                heartbeat_interval: Duration::from_secs(30),
                idle_timeout_heartbeats: 3,
                keepalive: Some(Keepalive::default()),
                header_read_timeout: Duration::from_secs(10),
                body_read_timeout: Duration::from_secs(30),
                close_timeout: opamp_transport::ws::DEFAULT_CLOSE_TIMEOUT,
                shutdown_timeout: Duration::from_secs(10),
                tls: None,
            },
        }
    }
}

impl<C: Callbacks> ServerBuilder<C> {
    /// The application's callbacks (default: none).
    pub fn callbacks<D: Callbacks>(self, callbacks: D) -> ServerBuilder<D> {
        ServerBuilder {
            callbacks,
            registry: self.registry,
            capabilities: self.capabilities,
            custom_capabilities: self.custom_capabilities,
            send_queue_capacity: self.send_queue_capacity,
            settings: self.settings,
        }
    }

    opamp_transport::builder_setters! {
        /// Uses this registry (to choose its store, bus and policies, or to
        /// share it); by default the server makes one with
        /// [`Registry::new`].
        pub fn registry(registry: Registry) => registry = Some(registry);

        /// Capabilities announced in the first reply on every connection
        /// (CAP-07). `AcceptsStatus` is always added (CAP-08). Default
        /// [`DEFAULT_CAPABILITIES`].
        pub fn capabilities(capabilities: ServerCapabilities) =>
            capabilities = capabilities | ServerCapabilities::ACCEPTS_STATUS;
    }

    /// Custom capabilities the server supports (CUS-01, CUS-03: reverse
    /// FQDN names), announced in the first reply on every connection.
    pub fn custom_capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.custom_capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    opamp_transport::builder_setters! {
        /// Largest message accepted or sent, measured after decompression
        /// (WS-08..11, HTTP-16..19). Default 64 MiB.
        pub fn max_message_size(bytes: usize) => settings.max_message_size = bytes;

        /// Most WebSocket connections plus in-flight plain-HTTP requests at
        /// once; beyond it requests get 503 with `Retry-After`. Default 20 000.
        pub fn max_connections(max: usize) => settings.max_connections = max;

        /// The `Retry-After` sent when the connection limit is reached or the
        /// server is shutting down. Default 30 s.
        pub fn busy_retry_after(delay: Duration) => settings.busy_retry_after = delay;

        /// The heartbeat interval agents are expected to use (default 30 s,
        /// HB-08), the unit of the idle timeout.
        pub fn heartbeat_interval(interval: Duration) => settings.heartbeat_interval = interval;

        /// A WebSocket is closed ([`DisconnectReason::IdleTimeout`]) after this
        /// many heartbeat intervals without a message, counted before the first
        /// message and for agents that announce `ReportsHeartbeat` (HB-11:
        /// others need not send anything). 0 turns it off. Default 3.
        pub fn idle_timeout_heartbeats(heartbeats: u32) => settings.idle_timeout_heartbeats = heartbeats;

        /// WebSocket keepalive pings (default [`Keepalive::default`]); `None`
        /// turns them off.
        pub fn keepalive(keepalive: Option<Keepalive>) => settings.keepalive = keepalive;

        /// Messages queued per WebSocket before the agent counts as not reading
        /// and is disconnected. Default 16.
        pub fn send_queue_capacity(capacity: usize) => send_queue_capacity = capacity.max(1);

        /// [`serve`](OpampServer::serve): time allowed for a request head (and
        /// the TLS handshake) to arrive, against slowloris clients. Default 10 s.
        pub fn header_read_timeout(timeout: Duration) => settings.header_read_timeout = timeout;

        /// Time allowed for a plain-HTTP request body. Default 30 s.
        pub fn body_read_timeout(timeout: Duration) => settings.body_read_timeout = timeout;

        /// Bound for a WebSocket closing handshake. Default 5 s.
        pub fn close_timeout(timeout: Duration) => settings.close_timeout = timeout;

        /// Bound for graceful shutdown (closing WebSockets, draining plain-HTTP
        /// requests). Default 10 s.
        pub fn shutdown_timeout(timeout: Duration) => settings.shutdown_timeout = timeout;

        /// [`serve`](OpampServer::serve): the path of the endpoint (default
        /// [`DEFAULT_PATH`], GEN-03); other paths get 404.
        pub fn path(path: impl Into<String>) => settings.path = path.into();

        /// [`serve`](OpampServer::serve): TLS, optionally requiring client
        /// certificates (mutual TLS; the chain reaches callbacks through
        /// [`PeerInfo`]).
        pub fn tls(tls: ServerTlsConfig) => settings.tls = Some(tls);
    }

    /// Builds the server.
    pub fn build(self) -> OpampServer<C> {
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let custom_capabilities =
            (!self.custom_capabilities.is_empty()).then_some(CustomCapabilities {
                capabilities: self.custom_capabilities,
            });
        let connection_config = Arc::new(ConnectionConfig {
            capabilities: self.capabilities,
            custom_capabilities,
            max_message_size: self.settings.max_message_size,
            send_queue_capacity: self.send_queue_capacity,
            http_closed: Some(closed_tx),
        });
        let admission = Arc::new(Admission {
            active: watch::Sender::new(0),
            max: self.settings.max_connections,
            shutdown: watch::Sender::new(false),
        });
        OpampServer {
            inner: Arc::new(ServerInner {
                callbacks: self.callbacks,
                registry: self.registry.unwrap_or_default(),
                settings: self.settings,
                connection_config,
                admission,
                http_closed: std::sync::Mutex::new(Some(closed_rx)),
                background_started: AtomicBool::new(false),
            }),
        }
    }
}

impl OpampServer<NoCallbacks> {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder<NoCallbacks> {
        ServerBuilder::default()
    }
}

impl<C: Callbacks> OpampServer<C> {
    /// A server with these callbacks and every default.
    pub fn new(callbacks: C) -> Self {
        OpampServer::builder().callbacks(callbacks).build()
    }

    /// The agent registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The callbacks.
    pub fn callbacks(&self) -> &C {
        &self.inner.callbacks
    }

    /// Live WebSocket connections plus in-flight plain-HTTP requests.
    pub fn active_connections(&self) -> usize {
        *self.inner.admission.active.borrow()
    }

    /// Shuts down gracefully: new requests get 503, every WebSocket is
    /// closed with 1001 (going away), plain-HTTP sessions end, and in-flight
    /// requests are waited for, all within the shutdown timeout. Returns
    /// whether everything finished in time.
    ///
    /// [`serve`](Self::serve) calls this itself; call it when the server is
    /// mounted in another stack.
    pub async fn shutdown(&self) -> bool {
        let inner = &self.inner;
        inner.admission.shutdown.send_replace(true);
        // Plain-HTTP sessions have no socket to close: end them now.
        for uid in inner.registry.connected() {
            if let Some(connection) = inner.registry.connection(uid) {
                if connection.transport() == TransportKind::PlainHttp {
                    connection.close_for(DisconnectReason::Shutdown);
                }
            }
        }
        let mut active = inner.admission.active.subscribe();
        let drained = tokio::time::timeout(inner.settings.shutdown_timeout, async {
            active.wait_for(|count| *count == 0).await.is_ok()
        })
        .await
        .unwrap_or(false);
        // Finish the sessions closed above (the background task may be gone).
        let closed = lock(&inner.http_closed).take();
        if let Some(mut closed) = closed {
            while let Ok(connection) = closed.try_recv() {
                inner.finish_http_session(&connection).await;
            }
        }
        drained
    }

    /// Handles one request; the body of the `Service` impl.
    pub(crate) async fn handle<B>(self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let inner = &self.inner;
        self.ensure_background_task();
        let kind = match opamp_transport::http::server::classify(&request) {
            RequestKind::Reject(rejection) => return rejection.to_response(),
            RequestKind::Opamp(transport) => transport,
            _ => return plain_status(StatusCode::BAD_REQUEST),
        };
        let busy_retry_after = Some(inner.settings.busy_retry_after);
        if inner.admission.is_shutting_down() {
            return opamp_transport::http::server::service_unavailable(busy_retry_after);
        }
        let Some(guard) = inner.admission.try_admit() else {
            tracing::warn!(
                limit = inner.settings.max_connections,
                "connection limit reached: 503"
            );
            return opamp_transport::http::server::service_unavailable(busy_retry_after);
        };
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_default();
        let (parts, body) = request.into_parts();
        let decision = inner
            .callbacks
            .on_connecting(&ConnectRequest {
                parts: &parts,
                peer: &peer,
                transport: kind,
            })
            .await;
        if let ConnectDecision::Refuse(refusal) = decision {
            return refusal.into_response();
        }
        match kind {
            TransportKind::WebSocket => crate::ws::accept(
                Arc::clone(&self.inner),
                Request::from_parts(parts, body),
                peer,
                guard,
            ),
            TransportKind::PlainHttp => self.handle_http(parts, body, peer).await,
        }
    }

    async fn handle_http<B>(
        &self,
        parts: http::request::Parts,
        body: B,
        peer: PeerInfo,
    ) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let inner = &self.inner;
        let settings = &inner.settings;
        let message = match opamp_transport::http::server::read_agent_message(
            body,
            &parts.headers,
            settings.max_message_size,
            settings.body_read_timeout,
        )
        .await
        {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, peer = ?peer.addr, "bad plain-HTTP request");
                let response = error.to_response();
                inner
                    .callbacks
                    .on_read_error(&peer, None, &AgentMessageError::Http(error));
                return response;
            }
        };
        let uid = match message.uid() {
            Ok(uid) => uid,
            Err(error) => {
                let mut reply = messages::bad_request_response(error.to_string());
                reply.instance_uid = message.instance_uid.clone();
                inner
                    .callbacks
                    .on_read_error(&peer, None, &AgentMessageError::InstanceUid(error));
                return self.http_response(&reply, &parts.headers);
            }
        };
        let crate::registry::HttpReceived {
            connection,
            new_session,
            received,
        } = inner
            .registry
            .receive_http(&inner.connection_config, &peer, &message, uid)
            .await;
        match received.disposition {
            Disposition::Refused => return self.http_response(&received.response, &parts.headers),
            // HTTP-21: a plain-HTTP agent is throttled with 503 + Retry-After.
            Disposition::Throttled(wait) => {
                return opamp_transport::http::server::service_unavailable(Some(wait));
            }
            Disposition::Continue | Disposition::Disconnected => {}
        }
        let disposition = received.disposition;
        let received_uid = received.uid;
        let reply = {
            let _turn = connection.callback_turn().await;
            if new_session {
                inner.callbacks.on_connected(&connection);
            }
            let callback_reply = inner.callbacks.on_message(&connection, &message).await;
            inner.compose(&connection, &message, received, callback_reply)
        };
        // Pushes queued since the last poll go first (those other instances
        // left through the bus before those queued here); this reply lays
        // over them.
        let mut outgoing = ServerToAgent::default();
        for forwarded in inner.registry.take_forwarded(received_uid).await {
            messages::merge(&mut outgoing, forwarded);
        }
        if let Some(queued) = connection.take_pending() {
            messages::merge(&mut outgoing, queued);
        }
        messages::merge(&mut outgoing, reply);
        let outgoing = match messages::split_command(outgoing) {
            (Some(rest), Some(command)) => {
                // A command travels alone (CMD-02): it waits for a quieter poll.
                connection.requeue(command);
                rest
            }
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => ServerToAgent::default(),
        };
        let outgoing = connection.decorate(outgoing);
        if disposition == Disposition::Disconnected {
            connection.close_for(DisconnectReason::AgentDisconnect);
        }
        self.http_response(&outgoing, &parts.headers)
    }

    fn http_response(
        &self,
        message: &ServerToAgent,
        request_headers: &http::HeaderMap,
    ) -> Response<ResponseBody> {
        match opamp_transport::http::server::response_for(
            message,
            request_headers,
            self.inner.settings.max_message_size,
        ) {
            Ok(response) => response,
            Err(too_large) => {
                tracing::warn!(%too_large, "ServerToAgent over the size limit not sent (HTTP-19)");
                too_large.to_response()
            }
        }
    }

    /// Starts the task that ends plain-HTTP sessions (closed or stale).
    fn ensure_background_task(&self) {
        if self.inner.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(closed) = lock(&self.inner.http_closed).take() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let sweep_every = self.inner.registry.stale_sweep_interval();
        tokio::spawn(http_session_reaper(weak, closed, sweep_every));
    }
}

async fn http_session_reaper<C: Callbacks>(
    server: Weak<ServerInner<C>>,
    mut closed: mpsc::UnboundedReceiver<Connection>,
    sweep_every: Duration,
) {
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            connection = closed.recv() => {
                let (Some(connection), Some(server)) = (connection, server.upgrade()) else {
                    return;
                };
                server.finish_http_session(&connection).await;
            }
            _ = sweep.tick() => {
                let Some(server) = server.upgrade() else { return };
                for connection in server.registry.stale_sessions(Instant::now()) {
                    tracing::debug!(connection = connection.id(), "plain-HTTP agent went stale");
                    connection.close_for(DisconnectReason::Stale);
                }
            }
        }
    }
}

impl<C, B> tower_service::Service<Request<B>> for OpampServer<C>
where
    C: Callbacks,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.handle(request).await) })
    }
}
