//! What the WebSocket and plain-HTTP drivers share: the hand-off to the
//! callback task, and carrying out the core's connection settings commands.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opamp_transport::ClientOptions;
use tokio::sync::mpsc;

use crate::endpoint::{apply_opamp_settings, endpoint_for_log};
use crate::protocol::SettingsCommand;
use crate::shared::{Notice, Shared, now};

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Most notices held back while the callback queue is full; past this the
/// driver stops reading from the server until callbacks catch up.
const MAX_BACKLOG: usize = 64;

/// The driver's side of the callback queue. Never blocks the driver: when
/// the queue is full, notices wait here and reading pauses.
pub(crate) struct Outbox {
    tx: mpsc::Sender<Notice>,
    backlog: VecDeque<Notice>,
}

impl Outbox {
    pub(crate) fn new(tx: mpsc::Sender<Notice>) -> Self {
        Self {
            tx,
            backlog: VecDeque::new(),
        }
    }

    pub(crate) fn push(&mut self, notice: Notice) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(notice);
            return;
        }
        match self.tx.try_send(notice) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(notice)) => self.backlog.push_back(notice),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Whether reading from the server should pause.
    pub(crate) fn is_congested(&self) -> bool {
        self.backlog.len() >= MAX_BACKLOG
    }

    /// Moves one held-back notice into the queue once there is room.
    pub(crate) async fn flush_one(&mut self) {
        let Ok(permit) = self.tx.reserve().await else {
            self.backlog.clear();
            return;
        };
        if let Some(notice) = self.backlog.pop_front() {
            permit.send(notice);
        }
    }

    /// Delivers everything held back, waiting at most `bound`.
    pub(crate) async fn drain(&mut self, bound: Duration) {
        let all = async {
            while self.has_backlog() {
                self.flush_one().await;
            }
        };
        let _ = tokio::time::timeout(bound, all).await;
    }
}

/// The connection settings a driver connects with: the current ones and,
/// while offered ones are verified, the candidate (CS-06). `T` is what the
/// driver builds from options once (an HTTP client; nothing for WebSocket).
pub(crate) struct Endpoint<T> {
    current: (ClientOptions, T),
    candidate: Option<(ClientOptions, T)>,
}

impl<T> Endpoint<T> {
    pub(crate) fn new(options: ClientOptions, built: T) -> Self {
        Self {
            current: (options, built),
            candidate: None,
        }
    }

    /// The options for the next connection or request: the candidate's
    /// while there is one.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.in_use().0
    }

    /// What was built from [`options`](Self::options).
    pub(crate) fn built(&self) -> &T {
        &self.in_use().1
    }

    pub(crate) fn is_candidate(&self) -> bool {
        self.candidate.is_some()
    }

    fn in_use(&self) -> &(ClientOptions, T) {
        self.candidate.as_ref().unwrap_or(&self.current)
    }
}

/// State both drivers carry.
pub(crate) struct DriverContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) outbox: Outbox,
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) compression: bool,
    pub(crate) allow_insecure_offers: bool,
}

impl DriverContext {
    /// Carries out the core's connection settings commands on `endpoint`
    /// (building with `build`), then moves the core's events to the callback
    /// queue. Offered settings that make no usable options are reported to
    /// the core as a failed candidate.
    pub(crate) fn pump<T>(
        &mut self,
        endpoint: &mut Endpoint<T>,
        build: impl Fn(&ClientOptions) -> Result<T, String>,
    ) {
        loop {
            let command = self.shared.core().poll_settings_command();
            let Some(command) = command else { break };
            match command {
                SettingsCommand::TryCandidate(settings) => {
                    let candidate = apply_opamp_settings(
                        &endpoint.current.0,
                        &settings,
                        self.allow_insecure_offers,
                    )
                    .and_then(|options| {
                        let built = build(&options)?;
                        Ok((options, built))
                    });
                    match candidate {
                        Ok(candidate) => endpoint.candidate = Some(candidate),
                        Err(error) => self.shared.core().handle_candidate_failed(now(), error),
                    }
                }
                SettingsCommand::KeepCandidate => {
                    if let Some(candidate) = endpoint.candidate.take() {
                        endpoint.current = candidate;
                        tracing::info!(endpoint = %endpoint_for_log(&endpoint.current.0), "switched to new OpAMP connection settings");
                    }
                }
                SettingsCommand::DropCandidate => endpoint.candidate = None,
            }
        }
        loop {
            let event = self.shared.core().poll_event();
            match event {
                Some(event) => self.outbox.push(Notice::Core(Box::new(event))),
                None => break,
            }
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.shared.core().is_stopped()
    }

    /// Runs `work` until it finishes or the client is stopped; `None` means
    /// stopped.
    pub(crate) async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                _ = self.shared.wake.notified() => {
                    if self.is_stopped() {
                        return None;
                    }
                }
            }
        }
    }
}
