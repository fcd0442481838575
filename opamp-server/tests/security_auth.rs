//! Bearer-token authentication end to end with real agents (CONN-05,
//! CONN-06, SEC-01): a server whose `on_connecting` checks `Authorization`
//! answers a bad token with 401 before reading anything, over WebSocket and
//! plain HTTP; the agents back off instead of hammering it, and get in as
//! soon as their header hook supplies the right token.
//!
//! The raw 401 response (status, `WWW-Authenticate`) is checked in
//! `plain_http.rs` (`conn_06_on_connecting_refuses_with_401_and_429`).

mod fault_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fault_support::{mixed_fleet, start_all};
use opamp_client::{
    AgentCapabilities, AgentDescription, ExponentialBackoff, OpampClient, RetryPolicy,
    TransportError,
};
use opamp_proto::{AgentToServer, InstanceUid, ServerToAgent};
use opamp_server::{Callbacks, ConnectDecision, ConnectRequest, Connection, OpampServer, Refusal};
use opamp_testkit::{RunningServer, count_reaches, header_number, until_all, within_for};
use opamp_transport::ConnectError;
use opamp_transport::http::client::HttpError;
use tokio::sync::watch;
use tokio::time::Instant;

const AGENT_HEADER: &str = "x-auth-agent";
const GOOD_TOKEN: &str = "Bearer good-token";
const WEBSOCKET_AGENTS: usize = 2;
const AGENTS: usize = 4;
const REFUSALS: usize = 4;
const BOUND: Duration = Duration::from_secs(3600);

/// Lets in requests carrying the right token; notes every attempt.
#[derive(Default)]
struct TokenCheck {
    attempts: Mutex<HashMap<usize, Vec<(Instant, bool)>>>,
    messages: AtomicUsize,
}

impl Callbacks for TokenCheck {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let agent = header_number::<usize>(&request.parts.headers, AGENT_HEADER)
            .expect("every agent names itself");
        let authorized = request.parts.headers.get(http::header::AUTHORIZATION)
            == Some(&http::HeaderValue::from_static(GOOD_TOKEN));
        self.attempts
            .lock()
            .unwrap()
            .entry(agent)
            .or_default()
            .push((Instant::now(), authorized));
        if authorized {
            ConnectDecision::Accept
        } else {
            ConnectDecision::Refuse(Refusal::unauthorized(Some(http::HeaderValue::from_static(
                "Bearer realm=\"opamp\"",
            ))))
        }
    }

    async fn on_message(
        &self,
        _connection: &Connection,
        _message: &AgentToServer,
    ) -> Option<ServerToAgent> {
        self.messages.fetch_add(1, Ordering::SeqCst);
        None
    }
}

/// Counts 401 refusals as the agent sees them; anything else is a failure
/// of the test.
struct Refusals {
    unauthorized: watch::Sender<usize>,
    other: Arc<Mutex<Vec<String>>>,
}

impl opamp_client::Callbacks for Refusals {
    fn on_connect_failed(&self, error: &TransportError) {
        let websocket = matches!(
            error.downcast_ref::<ConnectError>(),
            Some(ConnectError::Unauthorized { .. })
        );
        let http = matches!(
            error.downcast_ref::<HttpError>(),
            Some(HttpError::Unauthorized { challenge: Some(_) })
        );
        if websocket || http {
            self.unauthorized.send_modify(|count| *count += 1);
        } else {
            self.other.lock().unwrap().push(error.to_string());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn conn_06_bad_tokens_get_401_until_the_header_hook_has_a_good_one() {
    let serving = RunningServer::start(
        OpampServer::builder()
            .callbacks(TokenCheck::default())
            .build(),
    )
    .await;
    let token = Arc::new(Mutex::new(http::HeaderValue::from_static(
        "Bearer stale-token",
    )));
    let other_failures = Arc::new(Mutex::new(Vec::new()));
    let mut refusals = Vec::new();
    let agents: Vec<(InstanceUid, OpampClient)> =
        mixed_fleet(AGENTS, WEBSOCKET_AGENTS, |index, scheme, uid| {
            let (unauthorized, seen) = watch::channel(0);
            refusals.push(seen);
            let token = Arc::clone(&token);
            OpampClient::builder(serving.endpoint(scheme))
                .instance_uid(uid)
                .agent_description(AgentDescription::for_service("io.example.auth", "1.0"))
                .capabilities(AgentCapabilities::REPORTS_HEARTBEAT)
                .header(
                    http::HeaderName::from_static(AGENT_HEADER),
                    http::HeaderValue::from(index),
                )
                // A fresh token on every attempt, as a credential helper
                // would provide.
                .header_hook(move |headers| {
                    headers.insert(http::header::AUTHORIZATION, token.lock().unwrap().clone());
                })
                // Windows 1 s, 2 s, 4 s, ...; always half of the window.
                .retry_policy(Arc::new(|| {
                    Box::new(ExponentialBackoff::new().with_jitter_source(|| 0.5))
                        as Box<dyn RetryPolicy>
                }))
                .callbacks(Refusals {
                    unauthorized,
                    other: Arc::clone(&other_failures),
                })
                .build()
                .expect("valid client settings")
        });
    start_all(&agents).await;
    for seen in &mut refusals {
        count_reaches(BOUND, "an agent is refused repeatedly", seen, REFUSALS).await;
    }
    let check = serving.server.callbacks();
    assert_eq!(
        check.messages.load(Ordering::SeqCst),
        0,
        "nothing was read from a refused agent"
    );
    assert!(serving.server.registry().agents().await.unwrap().is_empty());
    // Backoff, not hammering: the gaps between refused attempts grow with
    // the retry policy (0.5 s, 1 s, 2 s, ...).
    {
        let attempts = check.attempts.lock().unwrap();
        assert_eq!(attempts.len(), AGENTS);
        for (agent, attempts) in attempts.iter() {
            let refused: Vec<Instant> = attempts
                .iter()
                .filter(|(_, authorized)| !authorized)
                .map(|(at, _)| *at)
                .collect();
            for (n, pair) in refused.windows(2).enumerate() {
                let least = Duration::from_millis(500) * 2u32.pow(n as u32);
                assert!(
                    pair[1] - pair[0] >= least,
                    "agent {agent}: attempt {} came {:?} after the previous one, expected {least:?}",
                    n + 2,
                    pair[1] - pair[0]
                );
            }
        }
    }

    // The credential is renewed: the next attempt of each agent gets in.
    *token.lock().unwrap() = http::HeaderValue::from_static(GOOD_TOKEN);
    let uids: Vec<InstanceUid> = agents.iter().map(|(uid, _)| *uid).collect();
    within_for(
        BOUND,
        "every agent gets in with the new token",
        until_all(serving.server.registry(), uids, |record| {
            record.is_connected() && record.status.description.is_some()
        }),
    )
    .await;
    assert!(
        other_failures.lock().unwrap().is_empty(),
        "failures other than 401: {:?}",
        other_failures.lock().unwrap()
    );

    for (_, client) in &agents {
        client.stop().await;
    }
    serving.stop().await;
}
