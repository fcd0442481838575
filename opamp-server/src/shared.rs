//! What the server's parts share: settings, admission, the state behind an
//! [`OpampServer`](crate::OpampServer), and the reply composition both
//! transports use. A leaf below `server` and `ws`, so neither imports the
//! other's internals.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_transport::ServerTlsConfig;
use tokio::sync::{mpsc, watch};

use crate::callbacks::{Callbacks, DisconnectReason};
use crate::connection::{Connection, ConnectionConfig};
use crate::messages;
use crate::registry::{Received, Registry};

/// The response body type of the server.
pub type ResponseBody = Full<Bytes>;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) path: String,
    pub(crate) max_message_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) busy_retry_after: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) idle_timeout_heartbeats: u32,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) tls: Option<ServerTlsConfig>,
}

/// Server-side WebSocket keepalive: a Ping every `interval`; a connection
/// from which nothing at all (no message, no Pong) arrives for `timeout` is
/// closed and its agent marked disconnected
/// ([`DisconnectReason::Unresponsive`]). Dead links behind load balancers
/// and NATs are otherwise noticed only when TCP gives up, minutes later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Time between pings.
    pub interval: Duration,
    /// Silence after which the connection is closed.
    pub timeout: Duration,
}

impl Keepalive {
    /// Pings every `interval`; closes after `timeout` of silence.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval: interval.max(Duration::from_millis(10)),
            timeout: timeout.max(interval),
        }
    }
}

impl Default for Keepalive {
    /// A ping every 30 s; 75 s of silence closes the connection.
    fn default() -> Self {
        Self::new(Duration::from_secs(30), Duration::from_secs(75))
    }
}

impl Settings {
    /// No message for this long closes a WebSocket (`None`: never).
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_heartbeats > 0).then(|| {
            self.heartbeat_interval
                .saturating_mul(self.idle_timeout_heartbeats)
        })
    }
}

pub(crate) struct ServerInner<C> {
    pub(crate) callbacks: C,
    pub(crate) registry: Registry,
    pub(crate) settings: Settings,
    pub(crate) connection_config: Arc<ConnectionConfig>,
    pub(crate) admission: Arc<Admission>,
    /// Plain-HTTP sessions that ended; drained by the background task.
    pub(crate) http_closed: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Connection>>>,
    pub(crate) background_started: AtomicBool,
}

/// Counts live WebSocket connections and in-flight plain-HTTP requests,
/// against the connection limit and for graceful shutdown.
pub(crate) struct Admission {
    pub(crate) active: watch::Sender<usize>,
    pub(crate) max: usize,
    /// Set when shutting down: new requests get 503, drivers close with 1001.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// One admitted connection or request; releases its place when dropped.
pub(crate) struct AdmissionGuard {
    admission: Arc<Admission>,
}

impl Admission {
    pub(crate) fn try_admit(self: &Arc<Self>) -> Option<AdmissionGuard> {
        let mut admitted = false;
        self.active.send_if_modified(|active| {
            admitted = *active < self.max;
            if admitted {
                *active += 1;
            }
            admitted
        });
        admitted.then(|| AdmissionGuard {
            admission: Arc::clone(self),
        })
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.admission
            .active
            .send_modify(|active| *active = active.saturating_sub(1));
    }
}

impl<C: Callbacks> ServerInner<C> {
    /// Lays the callback's reply over the registry's and makes the result
    /// valid: only accepted offers (CAP-09), the received `instance_uid`
    /// (UID-06), nothing next to an error (MSG-05).
    pub(crate) fn compose(
        &self,
        connection: &Connection,
        message: &AgentToServer,
        received: Received,
        callback_reply: Option<ServerToAgent>,
    ) -> ServerToAgent {
        let mut reply = received.response;
        if let Some(mut extra) = callback_reply {
            let (capabilities, custom) = connection.agent_capabilities(received.uid).unwrap_or((
                message.typed_capabilities(),
                message.custom_capabilities.clone(),
            ));
            messages::strip_unaccepted(capabilities, custom.as_ref(), &mut extra);
            extra.instance_uid = Bytes::new();
            messages::merge(&mut reply, extra);
        }
        reply.instance_uid = message.instance_uid.clone();
        messages::enforce_error_exclusivity(&mut reply);
        reply
    }

    /// Ends a plain-HTTP session: registry, then `on_disconnected`.
    pub(crate) async fn finish_http_session(&self, connection: &Connection) {
        let reason = connection
            .take_close_reason()
            .unwrap_or(DisconnectReason::Requested);
        let _turn = connection.callback_turn().await;
        self.registry.connection_closed(connection, &reason).await;
        self.callbacks.on_disconnected(connection, &reason);
    }
}

pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn plain_status(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
