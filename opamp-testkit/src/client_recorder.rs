//! Client callbacks that record what the client reports, and a quick retry
//! policy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opamp_client::{
    Callbacks, MessageData, OpampClient, PackageEvent, RetryPolicy, RetryPolicyFactory,
    SettingsOutcome, TransportError,
};
use opamp_proto::{
    ConnectionSettingsOffers, InstanceUid, OpAmpConnectionSettings, RemoteConfigStatus,
    RemoteConfigStatuses, ServerErrorResponse, ServerToAgentCommand,
};
use tokio::sync::mpsc;

use crate::timeout::within;

/// One callback the client made. Boxing the big variants would only make
/// matching in tests noisier.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ClientEvent {
    /// `on_connect`.
    Connect,
    /// `on_connect_failed`, with the error as text.
    ConnectFailed(String),
    /// `on_error_response`.
    ErrorResponse(ServerErrorResponse),
    /// `on_message`.
    Message(MessageData),
    /// `on_opamp_connection_settings_outcome`.
    OpampOutcome(OpAmpConnectionSettings, Result<(), String>),
    /// `on_other_connection_settings` (answered `Applied`).
    Other(ConnectionSettingsOffers),
    /// `on_command`.
    Command(ServerToAgentCommand),
    /// `on_new_instance_uid`.
    NewUid(InstanceUid),
    /// `on_package_event`, debug-formatted.
    Package(String),
}

type MessageHook = dyn Fn(&OpampClient, &MessageData) + Send + Sync;

/// Client [`Callbacks`] that forward everything to a channel. `on_message`
/// can run a hook first, and can be made to block until released (to show
/// a slow callback stalls nothing).
pub struct ClientRecorder {
    /// Where the events go.
    pub seen: mpsc::UnboundedSender<ClientEvent>,
    /// When set, the next `on_message` blocks until this receives (or its
    /// sender is dropped).
    pub gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Runs in `on_message` before the event is sent.
    pub on_message: Box<MessageHook>,
}

impl std::fmt::Debug for ClientRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRecorder").finish_non_exhaustive()
    }
}

impl ClientRecorder {
    /// The recorder and the receiving end of its events.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ClientEvent>) {
        let (seen, rx) = mpsc::unbounded_channel();
        (
            Self {
                seen,
                gate: Mutex::new(None),
                on_message: Box::new(|_, _| {}),
            },
            rx,
        )
    }
}

impl Callbacks for ClientRecorder {
    fn on_connect(&self) {
        let _ = self.seen.send(ClientEvent::Connect);
    }
    fn on_connect_failed(&self, error: &TransportError) {
        let _ = self
            .seen
            .send(ClientEvent::ConnectFailed(error.to_string()));
    }
    fn on_error_response(&self, error: &ServerErrorResponse) {
        let _ = self.seen.send(ClientEvent::ErrorResponse(error.clone()));
    }
    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            // Blocks this callback until the test releases it.
            let _ = gate.recv();
        }
        (self.on_message)(client, data);
        let _ = self.seen.send(ClientEvent::Message(data.clone()));
    }
    fn on_opamp_connection_settings_outcome(
        &self,
        settings: &OpAmpConnectionSettings,
        outcome: Result<(), &str>,
    ) {
        let _ = self.seen.send(ClientEvent::OpampOutcome(
            settings.clone(),
            outcome.map_err(str::to_owned),
        ));
    }
    fn on_other_connection_settings(&self, offers: &ConnectionSettingsOffers) -> SettingsOutcome {
        let _ = self.seen.send(ClientEvent::Other(offers.clone()));
        SettingsOutcome::Applied
    }
    fn on_command(&self, command: &ServerToAgentCommand) {
        let _ = self.seen.send(ClientEvent::Command(*command));
    }
    fn on_new_instance_uid(&self, uid: InstanceUid) {
        let _ = self.seen.send(ClientEvent::NewUid(uid));
    }
    fn on_package_event(&self, event: &PackageEvent) {
        let _ = self.seen.send(ClientEvent::Package(format!("{event:?}")));
    }
}

/// Reports the remote config offered in `data`, if any, as APPLIED (what
/// an agent that takes every config does in `on_message`) and returns its
/// hash.
pub fn report_applied(client: &OpampClient, data: &MessageData) -> Option<bytes::Bytes> {
    let offer = data.remote_config.as_ref()?;
    client.set_remote_config_status(RemoteConfigStatus {
        last_remote_config_hash: offer.config_hash.clone(),
        status: RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    Some(offer.config_hash.clone())
}

/// Waits for a client event matching `wanted`, skipping others; fails the
/// test after the kit's timeout.
pub async fn expect_client_event(
    rx: &mut mpsc::UnboundedReceiver<ClientEvent>,
    mut wanted: impl FnMut(&ClientEvent) -> bool,
) -> ClientEvent {
    within("a client callback", async {
        loop {
            let seen = rx.recv().await.expect("callbacks gone");
            if wanted(&seen) {
                return seen;
            }
        }
    })
    .await
}

/// A retry policy with short fixed waits (server hints still win, up to
/// a second), so retries happen quickly on real time; records the hints it
/// was given.
#[derive(Debug)]
pub struct QuickRetry {
    /// Every hint `next_delay` got, in order.
    pub hints: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl RetryPolicy for QuickRetry {
    fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        self.hints.lock().unwrap().push(hint);
        hint.unwrap_or(Duration::from_millis(20))
            .min(Duration::from_secs(1))
    }
    fn reset(&mut self) {}
}

/// A factory of [`QuickRetry`] policies sharing one hint log.
pub fn quick_retry() -> (RetryPolicyFactory, Arc<Mutex<Vec<Option<Duration>>>>) {
    let hints = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&hints);
    (
        Arc::new(move || {
            Box::new(QuickRetry {
                hints: Arc::clone(&shared),
            }) as Box<dyn RetryPolicy>
        }),
        hints,
    )
}
