//! What the client tells the embedder, and asks of it.

use futures_util::future::BoxFuture;
use opamp_proto::{
    ConnectionSettingsOffers, EffectiveConfig, InstanceUid, OpAmpConnectionSettings,
    ServerErrorResponse, ServerToAgentCommand,
};

use crate::client::OpampClient;
use crate::packages::PackageEvent;
use crate::protocol::{MessageData, ProtocolError};

/// A transport error, as handed to [`Callbacks::on_connect_failed`].
pub type TransportError = dyn std::error::Error + Send + Sync;

/// What became of an offer of own-telemetry or other connection settings
/// (CS-08, CS-42).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsOutcome {
    /// Applied: the client reports APPLIED.
    Applied,
    /// Could not be applied: the client reports FAILED with this message.
    Failed(String),
    /// Being applied in the background: the agent reports the outcome later
    /// with [`OpampClient::set_connection_settings_status`]. The client has
    /// already reported APPLYING.
    Later,
}

/// Hooks through which the client hands server requests to the agent.
/// Every method has a do-nothing default.
///
/// # Where callbacks run
///
/// Callbacks run one at a time, in the order their causes happened, on a
/// callback queue separate from the connection's I/O loop, so heartbeats,
/// polls and replies go on while a callback runs. Synchronous callbacks run
/// on tokio's blocking thread pool: they **may block** (apply a config,
/// restart a process), but a slow callback delays the callbacks queued after
/// it. [`on_opamp_connection_settings`](Self::on_opamp_connection_settings) is
/// `async` and is awaited on the queue; it must not block.
/// [`effective_config`](Self::effective_config) runs on whichever task calls
/// [`OpampClient::start`] or [`OpampClient::update_effective_config`].
/// [`on_package_event`](Self::on_package_event) runs on the package syncer's
/// task and must return quickly.
///
/// Callbacks may call the [`OpampClient`] setters; they take effect in the
/// next message.
pub trait Callbacks: Send + Sync + 'static {
    /// A connection was established (WebSocket), or a plain-HTTP request
    /// succeeded after none had or after a failure.
    fn on_connect(&self) {}

    /// A connection attempt or request failed; the client retries on its own
    /// (with backoff) unless the failure is final.
    fn on_connect_failed(&self, error: &TransportError) {
        let _ = error;
    }

    /// The server answered with `error_response` (ERR-01). UNAVAILABLE is
    /// already handled by waiting and retrying (WS-23); BAD_REQUEST and
    /// UNKNOWN are not retried (ERR-03).
    fn on_error_response(&self, error: &ServerErrorResponse) {
        let _ = error;
    }

    /// Remote config (with its hash), server custom capabilities or a custom
    /// message arrived. Report the remote config outcome with
    /// [`OpampClient::set_remote_config_status`] (APPLYING, then APPLIED or
    /// FAILED, with `last_remote_config_hash` = the offered hash). An offer
    /// whose hash the last status reports as APPLIED is not delivered again.
    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        let _ = (client, data);
    }

    /// The server offers new OpAMP connection settings (CS-02). Return the
    /// settings to try, e.g. with the private key that belongs to a
    /// certificate issued for the agent's CSR filled in, or an error to
    /// refuse them (reported FAILED). The client then verifies them by
    /// connecting (CS-05): on success it switches and reports APPLIED,
    /// otherwise it goes back to the previous settings and reports FAILED;
    /// either way [`on_opamp_connection_settings_outcome`](Self::on_opamp_connection_settings_outcome)
    /// follows. Persist the settings there once they are verified.
    ///
    /// The default accepts the offer as is.
    fn on_opamp_connection_settings<'a>(
        &'a self,
        settings: &'a OpAmpConnectionSettings,
    ) -> BoxFuture<'a, Result<OpAmpConnectionSettings, String>> {
        Box::pin(async move { Ok(settings.clone()) })
    }

    /// The result of verifying offered OpAMP settings (CS-06 steps 6–9):
    /// `Ok` means the client now uses them.
    fn on_opamp_connection_settings_outcome(
        &self,
        settings: &OpAmpConnectionSettings,
        outcome: Result<(), &str>,
    ) {
        let _ = (settings, outcome);
    }

    /// The server offers own-telemetry or other connection settings; only
    /// the classes the agent has capabilities for are present (CS-01). The
    /// default reports them applied.
    fn on_other_connection_settings(&self, offers: &ConnectionSettingsOffers) -> SettingsOutcome {
        let _ = offers;
        SettingsOutcome::Applied
    }

    /// The server sent a command (only with `AcceptsRestartCommand`; CMD-01).
    fn on_command(&self, command: &ServerToAgentCommand) {
        let _ = command;
    }

    /// The server assigned a new instance uid (UID-08). The client already
    /// uses it; persist it so the agent keeps it across restarts (UID-02).
    /// If the agent uses a CSR-issued certificate, it should repeat the CSR
    /// flow with the new uid (CS-37).
    fn on_new_instance_uid(&self, uid: InstanceUid) {
        let _ = uid;
    }

    /// Supplies the effective configuration: at start (with
    /// `ReportsEffectiveConfig`) and on
    /// [`OpampClient::update_effective_config`].
    fn effective_config(&self) -> Option<EffectiveConfig> {
        None
    }

    /// A package was installed, failed or removed by the package syncer.
    fn on_package_event(&self, event: &PackageEvent) {
        let _ = event;
    }

    /// A protocol problem the client handled on its own (a malformed uid
    /// offer, an oversized outgoing message), for logging or metrics.
    fn on_protocol_error(&self, error: &ProtocolError) {
        let _ = error;
    }
}

/// Callbacks that do nothing (and accept every offer).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopCallbacks;

impl Callbacks for NoopCallbacks {}
