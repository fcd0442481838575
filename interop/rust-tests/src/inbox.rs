//! Waiting for one specific thing among many, with a failure deadline.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long any single wait may take before the test fails. It is a failure
/// deadline, never a synchronisation delay: waits return as soon as what
/// they wait for arrives. Generous, for a busy 2-core machine.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Items arriving from somewhere (a Go program's stdout, our server's
/// callbacks, our client's callbacks), consumed by predicates.
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
    /// A new inbox and the sender that feeds it.
    pub fn new(label: impl Into<String>) -> (mpsc::UnboundedSender<T>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = Self {
            label: label.into(),
            rx,
            backlog: VecDeque::new(),
        };
        (tx, inbox)
    }

    /// The earliest unconsumed item matching `matches`; fails the test after
    /// [`EVENT_TIMEOUT`] or when the source is gone.
    pub async fn wait_for(&mut self, what: &str, matches: impl FnMut(&T) -> bool) -> T {
        match self
            .wait_until(what, matches, Instant::now() + EVENT_TIMEOUT)
            .await
        {
            Some(item) => item,
            None => panic!(
                "{}: nothing matching {what:?} within {EVENT_TIMEOUT:?}; last unmatched items: {:#?}",
                self.label,
                self.tail()
            ),
        }
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
