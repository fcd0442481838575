//! The plain-HTTP driver: one request at a time (HTTP-10), as the core
//! schedules them, with the settings the core says.

use opamp_proto::{AgentToServer, InstanceUid};
use opamp_transport::ClientOptions;
use opamp_transport::http::client::{HttpError, HttpPoster};

use crate::driver::{DriverContext, Endpoint, sleep_until};
use crate::protocol::SendFailure;
use crate::shared::{Notice, now};

pub(crate) async fn run(mut ctx: DriverContext, options: ClientOptions) {
    let compression = ctx.compression;
    let build = move |options: &ClientOptions| {
        HttpPoster::new(options.clone()).map(|poster| poster.with_gzip_requests(compression))
    };
    let poster = match build(&options) {
        Ok(poster) => poster,
        Err(error) => {
            // Only a TLS configuration error gets here: nothing to retry.
            tracing::error!(%error, "cannot create the OpAMP HTTP client");
            ctx.outbox.push(Notice::ConnectFailed(Box::new(error)));
            ctx.shared.core().stop(now());
            ctx.outbox.drain(ctx.shutdown_timeout).await;
            return;
        }
    };
    let build = |options: &ClientOptions| build(options).map_err(|error| error.to_string());
    let mut endpoint = Endpoint::new(options, poster);
    // Whether the last exchange succeeded, to report (re)connects once.
    let mut healthy = false;
    loop {
        ctx.pump(&mut endpoint, build);
        if ctx.is_stopped() {
            break;
        }
        let message = ctx.shared.core().poll_transmit(now());
        if let Some(message) = message {
            let ok = exchange(&mut ctx, endpoint.built(), &message).await;
            if ok && !healthy {
                ctx.outbox.push(Notice::Connected);
            }
            healthy = ok;
            continue;
        }
        let deadline = ctx.shared.core().poll_timeout();
        tokio::select! {
            _ = sleep_until(deadline) => ctx.shared.core().handle_timeout(now()),
            _ = ctx.shared.wake.notified() => {}
            _ = ctx.outbox.flush_one(), if ctx.outbox.has_backlog() => {}
        }
    }
    ctx.pump(&mut endpoint, build);
    ctx.outbox.drain(ctx.shutdown_timeout).await;
}

/// One request/response; feeds the outcome to the core. `true` on success.
async fn exchange(ctx: &mut DriverContext, poster: &HttpPoster, message: &AgentToServer) -> bool {
    if message.custom_message.is_some() {
        ctx.shared.custom_sent.notify_waiters();
    }
    // The core only sends valid 16-byte uids.
    let uid = InstanceUid::try_from(&message.instance_uid)
        .unwrap_or_else(|_| ctx.shared.core().instance_uid());
    let bound = if message.agent_disconnect.is_some() {
        ctx.shutdown_timeout.min(ctx.request_timeout)
    } else {
        ctx.request_timeout
    };
    let result = match tokio::time::timeout(bound, poster.exchange(uid, message)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout(bound)),
    };
    match result {
        Ok(reply) => {
            ctx.shared.core().handle_message(reply, now());
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
            ctx.shared.core().handle_send_failed(now(), failure);
            ctx.outbox.push(Notice::ConnectFailed(Box::new(error)));
            false
        }
    }
}
