//! Waiting with a failure deadline: a safety net against hangs, never a
//! synchronisation delay or a timing assertion.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long any single wait may take before the test fails. Generous, for a
/// busy 2-core machine: waits return as soon as what they wait for happens.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How often [`eventually`] re-checks its condition.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Awaits `work`, failing the test with `what` if it takes longer than
/// [`TIMEOUT`].
pub async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    within_for(TIMEOUT, what, work).await
}

/// Awaits `work`, failing the test with `what` if it takes longer than
/// `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, work).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Waits until the value watched by `counter` reaches `at_least`; fails the
/// test with `what` after `limit`, or when the sender is gone.
pub async fn count_reaches<T: PartialOrd>(
    limit: Duration,
    what: &str,
    counter: &mut watch::Receiver<T>,
    at_least: T,
) {
    within_for(limit, what, counter.wait_for(|count| *count >= at_least))
        .await
        .unwrap_or_else(|_| panic!("the counter for {what} was dropped"));
}

/// Re-checks `condition` every few milliseconds until it holds; fails the
/// test with `what` after [`TIMEOUT`]. For state that announces no event
/// (a file appearing, a row in a database); prefer an event where one exists.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
    .await;
}

/// Items arriving from somewhere (a program's output, callbacks), consumed
/// by predicates.
///
/// Every wait returns the earliest not yet returned item that matches;
/// items skipped on the way are kept for later waits, so the order in which
/// a test waits does not have to match the order in which things happen.
#[derive(Debug)]
pub struct Inbox<T> {
    label: String,
    rx: mpsc::UnboundedReceiver<T>,
    backlog: VecDeque<T>,
}

impl<T: Debug> Inbox<T> {
    /// A new inbox, named `label` in failure messages, and the sender that
    /// feeds it.
    pub fn new(label: impl Into<String>) -> (mpsc::UnboundedSender<T>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Self::from_receiver(label, rx))
    }

    /// An inbox reading from an existing channel.
    pub fn from_receiver(label: impl Into<String>, rx: mpsc::UnboundedReceiver<T>) -> Self {
        Self {
            label: label.into(),
            rx,
            backlog: VecDeque::new(),
        }
    }

    /// The earliest unconsumed item matching `matches`; fails the test after
    /// [`TIMEOUT`] or when the source is gone.
    pub async fn wait_for(&mut self, what: &str, matches: impl FnMut(&T) -> bool) -> T {
        match self
            .wait_until(what, matches, Instant::now() + TIMEOUT)
            .await
        {
            Some(item) => item,
            None => panic!(
                "{}: nothing matching {what:?} within {TIMEOUT:?}; last unmatched items: {:#?}",
                self.label,
                self.tail()
            ),
        }
    }

    /// The next item, whatever it is; fails the test after [`TIMEOUT`].
    pub async fn next(&mut self) -> T {
        self.wait_for("any item", |_| true).await
    }

    /// Like [`wait_for`](Self::wait_for) with a custom deadline; `None` when
    /// the deadline passes first.
    pub async fn wait_until(
        &mut self,
        what: &str,
        mut matches: impl FnMut(&T) -> bool,
        deadline: Instant,
    ) -> Option<T> {
        if let Some(position) = self.backlog.iter().position(&mut matches) {
            return self.backlog.remove(position);
        }
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) if matches(&item) => return Some(item),
                Ok(Some(item)) => self.backlog.push_back(item),
                Ok(None) => panic!(
                    "{}: the source ended while waiting for {what:?}; last unmatched items: {:#?}",
                    self.label,
                    self.tail()
                ),
                Err(_) => return None,
            }
        }
    }

    /// Everything received so far that no wait consumed, without waiting.
    pub fn drain(&mut self) -> Vec<T> {
        while let Ok(item) = self.rx.try_recv() {
            self.backlog.push_back(item);
        }
        self.backlog.drain(..).collect()
    }

    fn tail(&self) -> Vec<&T> {
        let skip = self.backlog.len().saturating_sub(12);
        self.backlog.iter().skip(skip).collect()
    }
}
