//! Pushing to agents that do not read: big offers and a send loop that
//! stops at the first refusal.

use std::future::Future;

use opamp_proto::ServerToAgent;

use crate::messages::{config_file, offer_config};

/// A remote config offer of one nameless file of `bytes` bytes, for size
/// limits and filling send queues.
pub fn big_config(bytes: usize) -> ServerToAgent {
    offer_config(config_file("", "", &"x".repeat(bytes)))
}

/// Calls `send` up to `attempts` times until it fails, and returns that
/// error (`None` if every send succeeded). Between sends it yields a few
/// times, so that the connection's writer moves what it can into the
/// socket and only a queue the peer does not drain fills up.
pub async fn push_until_refused<T, E, F>(attempts: usize, mut send: impl FnMut() -> F) -> Option<E>
where
    F: Future<Output = Result<T, E>>,
{
    for _ in 0..attempts {
        if let Err(error) = send().await {
            return Some(error);
        }
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
    None
}
