//! One task per WebSocket: reads, replies, idles out, closes.

use std::future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use opamp_proto::{AgentCapabilities, AgentToServer, ServerToAgent};
use opamp_transport::FrameError;
use opamp_transport::ws::server::{PendingWsConnection, WsServerConfig};
use opamp_transport::ws::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, WsConnection, WsError, WsReceiver, WsSender,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::callbacks::{AgentMessageError, Callbacks, DisconnectReason};
use crate::connection::{Connection, PeerInfo};
use crate::error::SendError;
use crate::messages;
use crate::protocol::Disposition;
use crate::shared::{AdmissionGuard, ResponseBody, ServerInner};

/// Close code 1008, policy violation: duplicate uid refused, agent not reading.
const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// RFC 6455 (IANA registry): the server asks the client to try again later.
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Validates the upgrade request and spawns the connection's task; returns
/// the 101 response (or the handshake error).
pub(crate) fn accept<C: Callbacks, B>(
    server: Arc<ServerInner<C>>,
    mut request: Request<B>,
    peer: PeerInfo,
    admission: AdmissionGuard,
) -> Response<ResponseBody> {
    let settings = &server.settings;
    let config = WsServerConfig::default()
        .with_max_message_size(settings.max_message_size)
        .with_close_timeout(settings.close_timeout);
    let (response, pending) = match opamp_transport::ws::server::accept_upgrade::<B, ResponseBody>(
        &mut request,
        config,
    ) {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::debug!(%error, peer = ?peer.addr, "bad WebSocket upgrade");
            return error.to_response();
        }
    };
    let (connection, outbox) =
        Connection::websocket(peer, std::sync::Arc::clone(&server.connection_config));
    tokio::spawn(drive(server, connection, pending, outbox, admission));
    response
}

async fn drive<C: Callbacks>(
    server: Arc<ServerInner<C>>,
    connection: Connection,
    pending: PendingWsConnection,
    outbox: mpsc::Receiver<Box<ServerToAgent>>,
    admission: AdmissionGuard,
) {
    let inner = &*server;
    let mut shutdown = inner.admission.shutdown.subscribe();
    let upgraded = tokio::select! {
        upgraded = pending => upgraded,
        () = stopping(&mut shutdown) => return,
    };
    let websocket = match upgraded {
        Ok(websocket) => websocket,
        Err(error) => {
            tracing::debug!(%error, "WebSocket upgrade did not complete");
            return;
        }
    };
    let (sender, mut receiver) = websocket.split();
    let activity = sender.activity();
    connection.set_liveness(sender.clone(), activity.clone());
    let (stop_writer, writer_stop) = oneshot::channel();
    let mut writer = tokio::spawn(write_queue(sender.clone(), outbox, writer_stop));
    tracing::debug!(connection = connection.id(), peer = ?connection.peer_addr(), "WebSocket connected");
    inner.callbacks.on_connected(&connection);

    let idle_timeout = inner.settings.idle_timeout();
    // Before the first message the idle timeout always applies.
    let mut deadline = idle_timeout.map(|timeout| Instant::now() + timeout);
    let keepalive = inner.settings.keepalive;
    let mut pings = keepalive.map(|keepalive| {
        let mut pings =
            tokio::time::interval_at(Instant::now() + keepalive.interval, keepalive.interval);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings
    });
    let mut heard = (activity.frames(), Instant::now());
    let reason = loop {
        let ping_due = async {
            match pings.as_mut() {
                Some(pings) => {
                    pings.tick().await;
                }
                None => future::pending::<()>().await,
            }
        };
        let idle = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = connection.closing() => {
                break connection.take_close_reason().unwrap_or(DisconnectReason::Requested);
            }
            () = stopping(&mut shutdown) => break DisconnectReason::Shutdown,
            () = idle => break DisconnectReason::IdleTimeout,
            () = ping_due => {
                let now = Instant::now();
                let frames = activity.frames();
                if frames != heard.0 {
                    heard = (frames, now);
                }
                if let Some(keepalive) = keepalive {
                    if now.duration_since(heard.1) >= keepalive.timeout {
                        break DisconnectReason::Unresponsive;
                    }
                }
                // A peer whose TCP window is full cannot take a ping either:
                // do not wait on it here.
                let pinger = sender.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), pinger.ping()).await;
                });
            }
            received = receiver.recv() => match received {
                Ok(Some(message)) => {
                    // Any message counts as a heartbeat (HB-06); agents that do
                    // not send heartbeats are not expected to (HB-11).
                    let heartbeats =
                        message.typed_capabilities().contains(AgentCapabilities::REPORTS_HEARTBEAT);
                    deadline = idle_timeout
                        .filter(|_| heartbeats)
                        .map(|timeout| Instant::now() + timeout);
                    // Boxed so that an idle connection's task stays small.
                    let outcome = Box::pin(process(&server, &connection, message)).await;
                    if let Some(reason) = outcome {
                        break reason;
                    }
                }
                Ok(None) => {
                    break DisconnectReason::ClosedByAgent {
                        code: receiver.peer_close().map(|close| close.code),
                    };
                }
                Err(error) => {
                    if let Some(reason) = read_failed(&server, &connection, error) {
                        break reason;
                    }
                }
            },
        }
    };

    connection.clear_liveness();
    tracing::debug!(connection = connection.id(), ?reason, "WebSocket closing");
    if reason == DisconnectReason::SendQueueFull {
        writer.abort();
    } else {
        // Let replies already queued (a refusal, say) out before the Close.
        let _ = stop_writer.send(());
        if tokio::time::timeout(inner.settings.close_timeout, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    if let Some(code) = close_code(&reason) {
        // Boxed: the closing handshake's state is large and needed only once.
        Box::pin(close(sender, receiver, code, &reason)).await;
    }
    connection.close_for(reason.clone());
    let _ = connection.take_close_reason();
    // Free the connection's place before telling anyone it is gone.
    drop(admission);
    Box::pin(inner.registry.connection_closed(&connection, &reason)).await;
    inner.callbacks.on_disconnected(&connection, &reason);
}

/// Resolves once the server starts shutting down.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the server is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// The Close code to send, or `None` when the connection is already closed
/// or dead.
fn close_code(reason: &DisconnectReason) -> Option<u16> {
    match reason {
        DisconnectReason::Shutdown => Some(CLOSE_GOING_AWAY),
        DisconnectReason::Requested
        | DisconnectReason::Replaced
        | DisconnectReason::IdleTimeout
        | DisconnectReason::AgentDisconnect => Some(CLOSE_NORMAL),
        DisconnectReason::DuplicateRefused | DisconnectReason::SendQueueFull => {
            Some(CLOSE_POLICY_VIOLATION)
        }
        DisconnectReason::Throttled => Some(CLOSE_TRY_AGAIN_LATER),
        _ => None,
    }
}

fn close_text(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::Shutdown => "server shutting down",
        DisconnectReason::IdleTimeout => "idle timeout",
        DisconnectReason::Replaced => "replaced by a newer connection",
        DisconnectReason::DuplicateRefused => "instance_uid in use",
        DisconnectReason::SendQueueFull => "not reading",
        DisconnectReason::Throttled => "reconnecting too often",
        _ => "",
    }
}

/// Runs the closing handshake (WS-18), bounded by the close timeout.
async fn close(
    sender: WsSender<ServerToAgent>,
    receiver: WsReceiver<AgentToServer>,
    code: u16,
    reason: &DisconnectReason,
) {
    match WsConnection::reunite(sender, receiver) {
        Ok(websocket) => {
            if let Err(error) = websocket.close_with(code, close_text(reason)).await {
                tracing::debug!(%error, code, "WebSocket closing handshake incomplete");
            }
        }
        Err(_) => tracing::debug!("WebSocket halves do not match; dropping the socket"),
    }
}

/// Drains the connection's queue onto the socket, in order. On `stop`, sends
/// what is already queued and returns.
async fn write_queue(
    sender: WsSender<ServerToAgent>,
    mut outbox: mpsc::Receiver<Box<ServerToAgent>>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let message = tokio::select! {
            biased;
            message = outbox.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = &mut stop => {
                while let Ok(message) = outbox.try_recv() {
                    if write(&sender, &message).await.is_err() {
                        return;
                    }
                }
                return;
            }
        };
        if write(&sender, &message).await.is_err() {
            return;
        }
    }
}

async fn write(sender: &WsSender<ServerToAgent>, message: &ServerToAgent) -> Result<(), ()> {
    match sender.send(message).await {
        Ok(()) => Ok(()),
        Err(error) if error.is_fatal() => {
            tracing::debug!(%error, "WebSocket write failed");
            Err(())
        }
        // Already checked when queued; nothing else to do.
        Err(error) => {
            tracing::warn!(%error, "ServerToAgent not sent");
            Ok(())
        }
    }
}

/// Handles one message; `Some` ends the connection.
async fn process<C: Callbacks>(
    server: &ServerInner<C>,
    connection: &Connection,
    message: AgentToServer,
) -> Option<DisconnectReason> {
    let inner = server;
    let uid = match message.uid() {
        Ok(uid) => uid,
        Err(error) => {
            // ERR-02: answer, echoing what was sent, and carry on.
            let mut reply = messages::bad_request_response(error.to_string());
            reply.instance_uid = message.instance_uid.clone();
            inner.callbacks.on_read_error(
                connection.peer(),
                Some(connection),
                &AgentMessageError::InstanceUid(error),
            );
            return send(connection, reply);
        }
    };
    let received = inner.registry.receive(connection, &message, uid).await;
    match received.disposition {
        Disposition::Refused => {
            let _ = send(connection, received.response);
            return Some(DisconnectReason::DuplicateRefused);
        }
        Disposition::Throttled(_) => {
            let _ = send(connection, received.response);
            return Some(DisconnectReason::Throttled);
        }
        Disposition::Continue | Disposition::Disconnected => {}
    }
    let callback_reply = inner.callbacks.on_message(connection, &message).await;
    let reply = inner.compose(connection, &message, received, callback_reply);
    send(connection, reply)
}

fn send(connection: &Connection, reply: ServerToAgent) -> Option<DisconnectReason> {
    match connection.deliver(reply) {
        Ok(_) => None,
        Err(SendError::QueueFull) => Some(DisconnectReason::SendQueueFull),
        // Logged where it happened; the connection carries on (WS-11).
        Err(error) => {
            tracing::debug!(%error, "reply not sent");
            None
        }
    }
}

/// A receive error: malformed messages get a `BAD_REQUEST` reply and the
/// connection carries on (ERR-02); anything else ends it.
fn read_failed<C: Callbacks>(
    server: &ServerInner<C>,
    connection: &Connection,
    error: WsError,
) -> Option<DisconnectReason> {
    let callbacks = &server.callbacks;
    let peer = connection.peer();
    match error {
        WsError::Frame(error) => {
            let reply = messages::bad_request_response(error.to_string());
            callbacks.on_read_error(peer, Some(connection), &AgentMessageError::Frame(error));
            send(connection, reply)
        }
        WsError::IncomingTooLarge { size, limit } => {
            // The transport already closed with 1009 (WS-09).
            let error = AgentMessageError::Frame(FrameError::TooLarge { size, limit });
            callbacks.on_read_error(peer, Some(connection), &error);
            Some(DisconnectReason::MessageTooLarge)
        }
        WsError::TextFrame => {
            callbacks.on_read_error(peer, Some(connection), &AgentMessageError::TextFrame);
            Some(DisconnectReason::ProtocolError("text frame".into()))
        }
        WsError::Closed | WsError::ConnectionReset => {
            Some(DisconnectReason::ClosedByAgent { code: None })
        }
        WsError::Protocol(error) => Some(DisconnectReason::ProtocolError(error.to_string())),
        other => Some(DisconnectReason::Transport(other.to_string())),
    }
}
