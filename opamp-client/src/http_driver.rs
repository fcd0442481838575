//! The plain-HTTP driver: one request at a time (HTTP-10), as the core
//! schedules them.

use opamp_proto::{AgentToServer, InstanceUid};
use opamp_transport::http::client::{HttpError, HttpPoster};

use crate::driver::{DriverContext, Notice, SwitchRequest, apply_opamp_settings, now, sleep_until};
use crate::protocol::SendFailure;

pub(crate) async fn run(mut ctx: DriverContext) {
    let mut poster = match HttpPoster::new(ctx.options.clone()) {
        Ok(poster) => poster.with_gzip_requests(ctx.compression),
        Err(error) => {
            // Only a TLS configuration error gets here: nothing to retry.
            tracing::error!(%error, "cannot create the OpAMP HTTP client");
            ctx.outbox.push(Notice::ConnectFailed(Box::new(error)));
            ctx.inner.core().stop(now());
            ctx.outbox.drain(ctx.shutdown_timeout).await;
            return;
        }
    };
    // Whether the last exchange succeeded, to report (re)connects once.
    let mut healthy = false;
    loop {
        ctx.forward_events();
        if ctx.is_stopped() {
            break;
        }
        let message = ctx.inner.core().poll_transmit(now());
        if let Some(message) = message {
            let ok = exchange(&mut ctx, &poster, &message).await;
            if ok && !healthy {
                ctx.outbox.push(Notice::Connected);
            }
            healthy = ok;
            continue;
        }
        let deadline = ctx.inner.core().poll_timeout();
        tokio::select! {
            _ = sleep_until(deadline) => ctx.inner.core().handle_timeout(now()),
            _ = ctx.inner.wake.notified() => {}
            _ = ctx.outbox.flush_one(), if ctx.outbox.has_backlog() => {}
            Some(request) = ctx.switches.recv() => {
                if let Some(new_poster) = switch(&mut ctx, &poster, request).await {
                    poster = new_poster;
                    healthy = true;
                }
            }
        }
    }
    ctx.forward_events();
    ctx.outbox.drain(ctx.shutdown_timeout).await;
}

/// One request/response; feeds the outcome to the core. `true` on success.
async fn exchange(ctx: &mut DriverContext, poster: &HttpPoster, message: &AgentToServer) -> bool {
    if message.custom_message.is_some() {
        ctx.inner.custom_sent.notify_waiters();
    }
    // The core only sends valid 16-byte uids.
    let uid = InstanceUid::try_from(&message.instance_uid)
        .unwrap_or_else(|_| ctx.inner.core().instance_uid());
    let bound = if message.agent_disconnect.is_some() {
        ctx.shutdown_timeout.min(ctx.options.request_timeout)
    } else {
        ctx.options.request_timeout
    };
    let result = match tokio::time::timeout(bound, poster.exchange(uid, message)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout(bound)),
    };
    match result {
        Ok(reply) => {
            ctx.inner.core().handle_message(reply, now());
            true
        }
        Err(error) => {
            // Transport errors, timeouts, 5xx, 429/503: retried with the
            // content kept (ERR-06, HTTP-21). 413 and other refusals are
            // not retried (HTTP-17).
            let failure = if error.is_retryable() {
                SendFailure::Retryable {
                    retry_after: error.retry_after(),
                }
            } else {
                SendFailure::Rejected
            };
            tracing::debug!(%error, ?failure, "OpAMP HTTP request failed");
            ctx.inner.core().handle_send_failed(now(), failure);
            ctx.outbox.push(Notice::ConnectFailed(Box::new(error)));
            false
        }
    }
}

/// CS-05 over plain HTTP: say goodbye to the old server (HTTP-24), then
/// send the full state to the new one; only its answer makes the switch.
async fn switch(
    ctx: &mut DriverContext,
    old: &HttpPoster,
    request: SwitchRequest,
) -> Option<HttpPoster> {
    let options =
        match apply_opamp_settings(&ctx.options, &request.settings, ctx.allow_insecure_offers) {
            Ok(options) => options,
            Err(error) => {
                ctx.report_switch(request, Err(error));
                return None;
            }
        };
    let new = match HttpPoster::new(options.clone()) {
        Ok(poster) => poster.with_gzip_requests(ctx.compression),
        Err(error) => {
            ctx.report_switch(request, Err(error.to_string()));
            return None;
        }
    };
    ctx.inner.core().begin_reconnect(now());
    let goodbye = ctx.inner.core().poll_transmit(now());
    if let Some(goodbye) = goodbye {
        exchange(ctx, old, &goodbye).await;
    }
    ctx.inner.core().report_full_state();
    let first = ctx.inner.core().poll_transmit(now());
    let Some(first) = first else {
        ctx.report_switch(request, Err("the client is stopping".into()));
        return None;
    };
    if exchange(ctx, &new, &first).await {
        ctx.options = options;
        ctx.report_switch(request, Ok(()));
        Some(new)
    } else {
        // The old server saw our goodbye: it gets the full state again.
        ctx.inner.core().report_full_state();
        ctx.report_switch(
            request,
            Err("could not reach the server with the new settings".into()),
        );
        None
    }
}
