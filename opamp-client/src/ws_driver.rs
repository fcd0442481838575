//! The WebSocket driver: connects with the settings the core says, pumps
//! messages between the socket and the core, reconnects as the core says.

use opamp_proto::AgentToServer;
use opamp_proto::ServerToAgent;
use opamp_transport::ClientOptions;
use opamp_transport::ws::client::WsClientConnection;
use opamp_transport::ws::{WsError, WsReceiver, WsSender};

use crate::driver::{DriverContext, Endpoint, sleep_until};
use crate::shared::{Notice, now};

/// WebSocket needs nothing built from its options ahead of connecting.
fn nothing_to_build(_: &ClientOptions) -> Result<(), String> {
    Ok(())
}

pub(crate) async fn run(mut ctx: DriverContext, options: ClientOptions) {
    let mut endpoint = Endpoint::new(options, ());
    loop {
        ctx.pump(&mut endpoint, nothing_to_build);
        if ctx.is_stopped() {
            break;
        }
        let wants_connect = ctx.shared.core().wants_connect(now());
        if !wants_connect {
            let deadline = ctx.shared.core().poll_timeout();
            tokio::select! {
                _ = sleep_until(deadline) => ctx.shared.core().handle_timeout(now()),
                _ = ctx.shared.wake.notified() => {}
                _ = ctx.outbox.flush_one(), if ctx.outbox.has_backlog() => {}
            }
            continue;
        }
        let Some(attempt) = ctx
            .unless_stopped(WsClientConnection::connect(endpoint.options()))
            .await
        else {
            break;
        };
        match attempt {
            Ok(connection) => {
                ctx.shared.core().handle_connected(now());
                ctx.outbox.push(Notice::Connected);
                serve(&mut ctx, &mut endpoint, connection).await;
            }
            // CS-06 step 9: the core goes back to the previous settings.
            Err(error) if endpoint.is_candidate() => ctx.shared.core().handle_candidate_failed(
                now(),
                format!("could not connect with the new settings: {error}"),
            ),
            Err(error) => {
                tracing::debug!(%error, "OpAMP WebSocket connect failed");
                // CONN-04, WS-24: a 429/503 refusal may say when to retry.
                ctx.shared
                    .core()
                    .handle_connect_failed(now(), error.retry_after());
                ctx.outbox.push(Notice::ConnectFailed(Box::new(error)));
            }
        }
    }
    ctx.pump(&mut endpoint, nothing_to_build);
    ctx.outbox.drain(ctx.shutdown_timeout).await;
}

/// Sends what the core has to send. `false` if the connection broke.
async fn transmit(ctx: &mut DriverContext, sender: &WsSender<AgentToServer>) -> bool {
    loop {
        let message = ctx.shared.core().poll_transmit(now());
        let Some(message) = message else { return true };
        let had_custom = message.custom_message.is_some();
        let sent = tokio::time::timeout(ctx.request_timeout, sender.send(&message)).await;
        if had_custom {
            ctx.shared.custom_sent.notify_waiters();
        }
        match sent {
            Ok(Ok(())) => {}
            // Not sent, but the connection is fine (the core checks sizes
            // first, so this is only a different limit).
            Ok(Err(WsError::OutgoingTooLarge { size, limit })) => {
                tracing::warn!(size, limit, "outgoing OpAMP message too large; dropped");
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "OpAMP WebSocket send failed");
                return false;
            }
            Err(_) => {
                tracing::debug!("OpAMP WebSocket send timed out");
                return false;
            }
        }
    }
}

/// Runs one connection until it ends.
async fn serve(
    ctx: &mut DriverContext,
    endpoint: &mut Endpoint<()>,
    connection: WsClientConnection,
) {
    connection.set_close_timeout(ctx.shutdown_timeout);
    let (sender, mut receiver) = connection.split();
    loop {
        if !transmit(ctx, &sender).await {
            break;
        }
        ctx.pump(endpoint, nothing_to_build);
        if ctx.shared.core().wants_close() {
            close(sender, receiver).await;
            ctx.shared.core().handle_disconnected(now());
            return;
        }
        let deadline = ctx.shared.core().poll_timeout();
        tokio::select! {
            received = receiver.recv(), if !ctx.outbox.is_congested() => match received {
                Ok(Some(message)) => ctx.shared.core().handle_message(message, now()),
                Ok(None) => {
                    tracing::debug!(close = ?receiver.peer_close(), "server closed the OpAMP WebSocket");
                    break;
                }
                // A malformed message is dropped; the connection goes on.
                Err(WsError::Frame(error)) => tracing::warn!(%error, "malformed OpAMP message ignored"),
                Err(error) => {
                    tracing::debug!(%error, "OpAMP WebSocket connection lost");
                    break;
                }
            },
            _ = sleep_until(deadline) => ctx.shared.core().handle_timeout(now()),
            _ = ctx.shared.wake.notified() => {}
            _ = ctx.outbox.flush_one(), if ctx.outbox.has_backlog() => {}
        }
    }
    ctx.shared.core().handle_disconnected(now());
}

/// WS-17: the Close frame and the closing handshake, bounded by the close
/// timeout.
async fn close(sender: WsSender<AgentToServer>, receiver: WsReceiver<ServerToAgent>) {
    match WsClientConnection::reunite(sender, receiver) {
        Ok(connection) => {
            if let Err(error) = connection.close().await {
                tracing::debug!(%error, "OpAMP WebSocket close did not complete cleanly");
            }
        }
        Err(_) => tracing::debug!("could not reunite WebSocket halves; dropping the connection"),
    }
}
