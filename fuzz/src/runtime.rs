//! A fresh single-threaded tokio runtime per input, with the clock paused.
//!
//! Paused time makes every run deterministic (no sockets, only in-memory
//! pipes) and turns timeouts into instant, reproducible events: a task that
//! would hang forever is caught by a virtual-time deadline instead of a
//! libFuzzer timeout.

use std::future::Future;
use std::time::Duration;

/// Runs `work` to completion on a new paused-clock runtime.
pub(crate) fn block_on<F: Future>(work: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime always builds");
    runtime.block_on(work)
}

/// Awaits `work`, panicking if it is not done within `limit` of virtual
/// time: under a paused clock that means it would never finish.
pub(crate) async fn within<F: Future>(limit: Duration, what: &str, work: F) -> F::Output {
    match tokio::time::timeout(limit, work).await {
        Ok(output) => output,
        Err(_) => panic!("stuck: {what} not done within {limit:?} of virtual time"),
    }
}
