//! The OpAMP server callbacks of the fleet server.

use std::sync::Arc;

use axum::http::HeaderValue;
use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_server::{Callbacks, ConnectDecision, ConnectRequest, Connection, Refusal};

use super::fleet::Fleet;

/// Authenticates agents with the bearer token, and hands every agent message
/// to the fleet (config precedence, own-telemetry offers).
#[derive(Clone)]
pub struct FleetCallbacks {
    pub(crate) fleet: Arc<Fleet>,
}

impl std::fmt::Debug for FleetCallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCallbacks").finish_non_exhaustive()
    }
}

/// Compares without an early exit, so the time taken does not reveal how
/// much of the token was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(!byte));
    }
    difference == 0
}

impl Callbacks for FleetCallbacks {
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let Some(token) = &self.fleet.options.agent_token else {
            return ConnectDecision::Accept;
        };
        let presented = request
            .parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if same_secret(presented.as_bytes(), token.as_bytes()) {
            ConnectDecision::Accept
        } else {
            tracing::info!(peer = ?request.peer.addr, "refused an agent without the right bearer token");
            // CONN-06: 401 tells the agent to fix its credentials.
            ConnectDecision::Refuse(Refusal::unauthorized(Some(HeaderValue::from_static(
                "Bearer realm=\"opamp\"",
            ))))
        }
    }

    async fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> Option<ServerToAgent> {
        self.fleet.on_message(connection, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"token", b"token"));
        assert!(!same_secret(b"toke", b"token"));
        assert!(!same_secret(b"tokenx", b"token"));
        assert!(!same_secret(b"tokem", b"token"));
        assert!(!same_secret(b"", b"token"));
    }
}
