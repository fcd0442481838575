//! The public handle, [`OpampClient`], and the [`Callbacks`] it calls: the
//! two belong together (a callback gets the handle, the handle holds the
//! callbacks). Building is in `settings`, starting and stopping in
//! `lifecycle`, the callback task in `callbacks`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentToServerFlags, AvailableComponents, ComponentHealth,
    ConnectionSettingsOffers, ConnectionSettingsRequest, ConnectionSettingsStatus,
    CustomCapabilities, CustomMessage, EffectiveConfig, InstanceUid, OpAmpConnectionSettings,
    PackageStatuses, RemoteConfigStatus, ServerCapabilities, ServerErrorResponse,
    ServerToAgentCommand,
};
use opamp_transport::ClientOptions;
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::packages::{PackageEvent, PackageStore, PackageVerifier};
use crate::protocol::{ClientCore, MessageData, ProtocolError, SettingsOutcome, TransportKind};
use crate::shared::{Shared, TransportError};

/// Writes [`OpampClient`] methods that pass a value to the
/// [`ClientCore`] setter of the same name.
macro_rules! core_setters {
    ($(
        $(#[$attr:meta])*
        pub fn $name:ident($arg:ident: $ty:ty);
    )*) => {
        $(
            $(#[$attr])*
            pub fn $name(&self, $arg: $ty) {
                self.inner.shared.update(|core| core.$name($arg));
            }
        )*
    };
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
pub struct NoCallbacks;

impl Callbacks for NoCallbacks {}

/// The old name of [`NoCallbacks`], which the server crate uses too.
#[deprecated(
    since = "0.1.0",
    note = "renamed to `NoCallbacks`, the name both sides use"
)]
pub type NoopCallbacks = NoCallbacks;

/// A cloneable, `Send + Sync` handle to one OpAMP client.
///
/// Build it with [`OpampClient::builder`], set the initial state, then
/// [`start`](Self::start) it inside a tokio runtime. Setters may be called
/// before and after start, from any thread; changes made between two
/// messages are coalesced into one (ERR-06). Call [`stop`](Self::stop) to
/// say goodbye to the server (`agent_disconnect`); dropping the handles does
/// not stop a started client.
#[derive(Clone)]
pub struct OpampClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) transport: TransportKind,
    pub(crate) callbacks: Arc<dyn Callbacks>,
    /// Taken by a successful start.
    pub(crate) start_parts: Mutex<Option<StartParts>>,
    pub(crate) driver: Mutex<Option<JoinHandle<()>>>,
    pub(crate) shutdown_timeout: Duration,
}

/// What only starting needs.
pub(crate) struct StartParts {
    pub(crate) options: ClientOptions,
    pub(crate) compression: bool,
    pub(crate) package_store: Option<Arc<dyn PackageStore>>,
    pub(crate) package_verifier: Option<Arc<dyn PackageVerifier>>,
    pub(crate) allow_insecure_offers: bool,
}

impl fmt::Debug for OpampClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpampClient")
            .field("transport", &self.inner.transport)
            .field("core", &*self.inner.shared.core())
            .finish()
    }
}

impl OpampClient {
    /// A client around a configured core, not started yet.
    pub(crate) fn new(
        core: ClientCore,
        transport: TransportKind,
        callbacks: Arc<dyn Callbacks>,
        parts: StartParts,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(core)),
                transport,
                callbacks,
                start_parts: Mutex::new(Some(parts)),
                driver: Mutex::new(None),
                shutdown_timeout,
            }),
        }
    }

    /// The transport picked by the endpoint scheme.
    pub fn transport(&self) -> TransportKind {
        self.inner.transport
    }

    /// The instance uid in use (it changes when the server assigns one).
    pub fn instance_uid(&self) -> InstanceUid {
        self.inner.shared.core().instance_uid()
    }

    /// The server's capabilities, once known.
    pub fn server_capabilities(&self) -> Option<ServerCapabilities> {
        self.inner.shared.core().server_capabilities()
    }

    core_setters! {
        /// Sets the agent description (DESC-*).
        pub fn set_agent_description(description: AgentDescription);

        /// Sets the health tree (HLT-*); reported when it changed.
        pub fn set_health(health: ComponentHealth);

        /// Sets the effective configuration (ECFG-*); reported when it changed.
        pub fn set_effective_config(config: EffectiveConfig);

        /// Reports the remote config status: APPLYING, APPLIED or FAILED with the
        /// offered hash (RCFG-06, RCFG-09). Persist the last one and pass it to
        /// [`ClientBuilder::remote_config_status`](crate::ClientBuilder::remote_config_status) on the next start.
        pub fn set_remote_config_status(status: RemoteConfigStatus);

        /// Sets the package statuses (PKG-16). With a package store configured,
        /// the package syncer sets them itself.
        pub fn set_package_statuses(statuses: PackageStatuses);

        /// Sets the agent's custom capabilities (CUS-01, CUS-02).
        pub fn set_custom_capabilities(capabilities: CustomCapabilities);

        /// Sets the available components (AC-*).
        pub fn set_available_components(components: AvailableComponents);

        /// Sets `AgentToServer.flags`, e.g. `RequestInstanceUid` (UID-05).
        pub fn set_flags(flags: AgentToServerFlags);

        /// Changes the capabilities (CAP-04); `ReportsStatus` is always kept.
        pub fn set_capabilities(capabilities: AgentCapabilities);

        /// Reports the connection settings status, e.g. the outcome of settings
        /// applied in the background (CS-08). Persist the last one and pass it
        /// to [`ClientBuilder::connection_settings_status`](crate::ClientBuilder::connection_settings_status) on the next start.
        pub fn set_connection_settings_status(status: ConnectionSettingsStatus);
    }

    /// Asks [`Callbacks::effective_config`] for the effective configuration
    /// and reports it if it changed.
    pub fn update_effective_config(&self) {
        if let Some(config) = self.inner.callbacks.effective_config() {
            self.set_effective_config(config);
        }
    }

    /// Asks the server for connection settings, e.g. a client certificate
    /// for a CSR (CS-28). The answer arrives as an OpAMP connection settings
    /// offer.
    pub fn request_connection_settings(
        &self,
        request: ConnectionSettingsRequest,
    ) -> Result<(), ClientError> {
        self.inner
            .shared
            .update(|core| core.request_connection_settings(request))
    }

    /// Queues a custom message (CUS-05). At most one can be pending: until
    /// it was sent, another is refused with
    /// [`ClientError::CustomMessagePending`]; wait with
    /// [`custom_message_sent`](Self::custom_message_sent). Its capability
    /// must be one of the agent's custom capabilities.
    pub fn send_custom_message(&self, message: CustomMessage) -> Result<(), ClientError> {
        self.inner
            .shared
            .update(|core| core.send_custom_message(message))
    }

    /// Waits until no custom message is pending.
    pub async fn custom_message_sent(&self) {
        loop {
            let notified = self.inner.shared.custom_sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.inner.shared.core().custom_message_pending() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the client has stopped (after [`stop`](Self::stop)).
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.core().is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn client_is_a_cloneable_send_sync_handle() {
        assert_send_sync_clone::<OpampClient>();
    }
}
