//! Test support for the plain-HTTP tests: handlers for opamp-testkit's
//! `serve_http`.
//!
//! Included with `#[path = "common/http.rs"] mod http_support;` so it does
//! not depend on the WebSocket tests' `common/mod.rs`.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_transport::http::server::{RequestKind, classify, read_agent_message, response_for};
use tokio::sync::mpsc;

pub use opamp_testkit::Handler;

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

/// A reply naming the request: its uid, and its sequence number as the
/// capabilities.
pub fn echo(message: &AgentToServer) -> ServerToAgent {
    ServerToAgent {
        instance_uid: message.instance_uid.clone(),
        capabilities: message.sequence_num,
        ..Default::default()
    }
}
