//! The WebSocket driver: connects, pumps messages between the socket and
//! the core, reconnects as the core says.

use opamp_proto::AgentToServer;
use opamp_proto::ServerToAgent;
use opamp_transport::ws::client::WsClientConnection;
use opamp_transport::ws::{WsError, WsReceiver, WsSender};

use crate::driver::{DriverContext, Notice, SwitchRequest, apply_opamp_settings, now, sleep_until};

pub(crate) async fn run(mut ctx: DriverContext) {
    let mut pending_switch: Option<SwitchRequest> = None;
    loop {
        ctx.forward_events();
        if ctx.is_stopped() {
            break;
        }
        if let Some(request) = pending_switch.take() {
            if let Some(connection) = try_switch(&mut ctx, request).await {
                pending_switch = serve(&mut ctx, connection).await;
            }
            continue;
        }
        let wants_connect = ctx.inner.core().wants_connect(now());
        if !wants_connect {
            let deadline = ctx.inner.core().poll_timeout();
            tokio::select! {
                _ = sleep_until(deadline) => ctx.inner.core().handle_timeout(now()),
                _ = ctx.inner.wake.notified() => {}
                _ = ctx.outbox.flush_one(), if ctx.outbox.has_backlog() => {}
                Some(request) = ctx.switches.recv() => pending_switch = Some(request),
            }
            continue;
        }
        let Some(attempt) = ctx
            .unless_stopped(WsClientConnection::connect(&ctx.options))
            .await
        else {
            break;
        };
        match attempt {
            Ok(connection) => {
                ctx.inner.core().handle_connected(now());
                ctx.outbox.push(Notice::Connected);
                pending_switch = serve(&mut ctx, connection).await;
            }
            Err(error) => {
                tracing::debug!(%error, "OpAMP WebSocket connect failed");
                // CONN-04, WS-24: a 429/503 refusal may say when to retry.
                ctx.inner
                    .core()
                    .handle_connect_failed(now(), error.retry_after());
                ctx.outbox.push(Notice::ConnectFailed(Box::new(error)));
            }
        }
    }
    ctx.forward_events();
    ctx.outbox.drain(ctx.shutdown_timeout).await;
}

/// CS-05: connects with the new settings; on success they replace the old
/// ones, otherwise the old ones stay and the caller reconnects with them.
async fn try_switch(ctx: &mut DriverContext, request: SwitchRequest) -> Option<WsClientConnection> {
    let options =
        match apply_opamp_settings(&ctx.options, &request.settings, ctx.allow_insecure_offers) {
            Ok(options) => options,
            Err(error) => {
                ctx.report_switch(request, Err(error));
                return None;
            }
        };
    let attempt = ctx
        .unless_stopped(WsClientConnection::connect(&options))
        .await?;
    match attempt {
        Ok(connection) => {
            ctx.options = options;
            let mut core = ctx.inner.core();
            core.handle_connected(now());
            // A new server has never seen this agent.
            core.report_full_state();
            drop(core);
            ctx.report_switch(request, Ok(()));
            ctx.outbox.push(Notice::Connected);
            Some(connection)
        }
        Err(error) => {
            ctx.report_switch(
                request,
                Err(format!("could not connect with the new settings: {error}")),
            );
            None
        }
    }
}

/// Sends what the core has to send. `false` if the connection broke.
async fn transmit(ctx: &mut DriverContext, sender: &WsSender<AgentToServer>) -> bool {
    loop {
        let message = ctx.inner.core().poll_transmit(now());
        let Some(message) = message else { return true };
        let had_custom = message.custom_message.is_some();
        let sent = tokio::time::timeout(ctx.options.request_timeout, sender.send(&message)).await;
        if had_custom {
            ctx.inner.custom_sent.notify_waiters();
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
async fn serve(ctx: &mut DriverContext, connection: WsClientConnection) -> Option<SwitchRequest> {
    connection.set_close_timeout(ctx.shutdown_timeout);
    let (sender, mut receiver) = connection.split();
    let mut switch: Option<SwitchRequest> = None;
    loop {
        if !transmit(ctx, &sender).await {
            break;
        }
        ctx.forward_events();
        if ctx.inner.core().wants_close() {
            close(sender, receiver).await;
            ctx.inner.core().handle_disconnected(now());
            return switch;
        }
        let deadline = ctx.inner.core().poll_timeout();
        tokio::select! {
            received = receiver.recv(), if !ctx.outbox.is_congested() => match received {
                Ok(Some(message)) => ctx.inner.core().handle_message(message, now()),
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
            _ = sleep_until(deadline) => ctx.inner.core().handle_timeout(now()),
            _ = ctx.inner.wake.notified() => {}
            _ = ctx.outbox.flush_one(), if ctx.outbox.has_backlog() => {}
            Some(request) = ctx.switches.recv(), if switch.is_none() => {
                // WS-21: goodbye and close first, then connect anew.
                ctx.inner.core().begin_reconnect(now());
                switch = Some(request);
            }
        }
    }
    // A switch asked for before the loss still happens (CS-05).
    ctx.inner.core().handle_disconnected(now());
    switch
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
