//! The public handle: setters, start and stop, and the callback queue.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentToServerFlags, AvailableComponents, ComponentHealth,
    ConnectionSettingsRequest, ConnectionSettingsStatus, ConnectionSettingsStatuses,
    CustomCapabilities, CustomMessage, EffectiveConfig, InstanceUid, PackageStatuses,
    RemoteConfigStatus, ServerCapabilities,
};
use opamp_transport::ClientOptions;
use opamp_transport::http::client::HttpPoster;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::callbacks::{Callbacks, SettingsOutcome};
use crate::driver::{self, DriverContext, Notice, Outbox, SwitchRequest};
use crate::error::ClientError;
use crate::packages::{PackageStore, PackageSyncer, PackageVerifier};
use crate::protocol::{ClientCore, CoreConfig, Event, TransportKind};
use crate::settings::ClientBuilder;

/// How many notices may wait for the callback queue before the driver stops
/// reading from the network (heartbeats go on).
const CALLBACK_QUEUE: usize = 64;

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
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    core: Mutex<ClientCore>,
    /// Wakes the driver after a setter or stop.
    pub(crate) wake: Notify,
    /// Signalled whenever a custom message was handed to the transport.
    pub(crate) custom_sent: Notify,
    transport: TransportKind,
    callbacks: Arc<dyn Callbacks>,
    start_parts: Mutex<Option<StartParts>>,
    driver: Mutex<Option<JoinHandle<()>>>,
    shutdown_timeout: Duration,
}

struct StartParts {
    options: ClientOptions,
    compression: bool,
    package_store: Option<Arc<dyn PackageStore>>,
    package_verifier: Option<Arc<dyn PackageVerifier>>,
    allow_insecure_offers: bool,
}

impl Inner {
    pub(crate) fn core(&self) -> MutexGuard<'_, ClientCore> {
        // A panic while holding the lock cannot leave the core half-updated
        // in a way that matters more than stopping would: keep going.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for OpampClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpampClient")
            .field("transport", &self.inner.transport)
            .field("core", &*self.inner.core())
            .finish()
    }
}

impl OpampClient {
    /// Starts configuring a client for `endpoint`; see [`ClientBuilder`].
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    pub(crate) fn from_builder(
        builder: ClientBuilder,
        options: ClientOptions,
        transport: TransportKind,
    ) -> Self {
        let uid = builder.instance_uid.unwrap_or_else(InstanceUid::new_v7);
        let mut config = CoreConfig::new(transport, uid);
        config.heartbeat_interval = builder.heartbeat_interval;
        config.polling_interval = builder
            .polling_interval
            .unwrap_or(builder.heartbeat_interval);
        config.max_message_size = builder.max_message_size;
        config.packages_supported = builder.package_store.is_some();
        config.reply_timeout = options.request_timeout;
        let mut core = ClientCore::new(config, (builder.retry_policy)());
        core.set_capabilities(builder.capabilities);
        if let Some(description) = builder.description {
            core.set_agent_description(description);
        }
        if let Some(status) = builder.remote_config_status {
            core.set_remote_config_status(status);
        }
        if let Some(status) = builder.connection_settings_status {
            core.set_connection_settings_status(status);
        }
        Self {
            inner: Arc::new(Inner {
                core: Mutex::new(core),
                wake: Notify::new(),
                custom_sent: Notify::new(),
                transport,
                callbacks: builder.callbacks,
                start_parts: Mutex::new(Some(StartParts {
                    options,
                    compression: builder.compression,
                    package_store: builder.package_store,
                    package_verifier: builder.package_verifier,
                    allow_insecure_offers: builder.allow_insecure_offers,
                })),
                driver: Mutex::new(None),
                shutdown_timeout: builder.shutdown_timeout,
            }),
        }
    }

    fn update<R>(&self, change: impl FnOnce(&mut ClientCore) -> R) -> R {
        let result = change(&mut self.inner.core());
        self.inner.wake.notify_one();
        result
    }

    /// The transport picked by the endpoint scheme.
    pub fn transport(&self) -> TransportKind {
        self.inner.transport
    }

    /// The instance uid in use (it changes when the server assigns one).
    pub fn instance_uid(&self) -> InstanceUid {
        self.inner.core().instance_uid()
    }

    /// The server's capabilities, once known.
    pub fn server_capabilities(&self) -> Option<ServerCapabilities> {
        self.inner.core().server_capabilities()
    }

    /// Sets the agent description (DESC-*).
    pub fn set_agent_description(&self, description: AgentDescription) {
        self.update(|core| core.set_agent_description(description));
    }

    /// Sets the health tree (HLT-*); reported when it changed.
    pub fn set_health(&self, health: ComponentHealth) {
        self.update(|core| core.set_health(health));
    }

    /// Sets the effective configuration (ECFG-*); reported when it changed.
    pub fn set_effective_config(&self, config: EffectiveConfig) {
        self.update(|core| core.set_effective_config(config));
    }

    /// Asks [`Callbacks::effective_config`] for the effective configuration
    /// and reports it if it changed.
    pub fn update_effective_config(&self) {
        if let Some(config) = self.inner.callbacks.effective_config() {
            self.set_effective_config(config);
        }
    }

    /// Reports the remote config status: APPLYING, APPLIED or FAILED with the
    /// offered hash (RCFG-06, RCFG-09). Persist the last one and pass it to
    /// [`ClientBuilder::remote_config_status`] on the next start.
    pub fn set_remote_config_status(&self, status: RemoteConfigStatus) {
        self.update(|core| core.set_remote_config_status(status));
    }

    /// Sets the package statuses (PKG-16). With a package store configured,
    /// the package syncer sets them itself.
    pub fn set_package_statuses(&self, statuses: PackageStatuses) {
        self.update(|core| core.set_package_statuses(statuses));
    }

    /// Sets the agent's custom capabilities (CUS-01, CUS-02).
    pub fn set_custom_capabilities(&self, capabilities: CustomCapabilities) {
        self.update(|core| core.set_custom_capabilities(capabilities));
    }

    /// Sets the available components (AC-*).
    pub fn set_available_components(&self, components: AvailableComponents) {
        self.update(|core| core.set_available_components(components));
    }

    /// Sets `AgentToServer.flags`, e.g. `RequestInstanceUid` (UID-05).
    pub fn set_flags(&self, flags: AgentToServerFlags) {
        self.update(|core| core.set_flags(flags));
    }

    /// Changes the capabilities (CAP-04); `ReportsStatus` is always kept.
    pub fn set_capabilities(&self, capabilities: AgentCapabilities) {
        self.update(|core| core.set_capabilities(capabilities));
    }

    /// Asks the server for connection settings, e.g. a client certificate
    /// for a CSR (CS-28). The answer arrives as an OpAMP connection settings
    /// offer.
    pub fn request_connection_settings(
        &self,
        request: ConnectionSettingsRequest,
    ) -> Result<(), ClientError> {
        self.update(|core| core.request_connection_settings(request))
    }

    /// Reports the connection settings status, e.g. the outcome of settings
    /// applied in the background (CS-08). Persist the last one and pass it
    /// to [`ClientBuilder::connection_settings_status`] on the next start.
    pub fn set_connection_settings_status(&self, status: ConnectionSettingsStatus) {
        self.update(|core| core.set_connection_settings_status(status));
    }

    /// Queues a custom message (CUS-05). At most one can be pending: until
    /// it was sent, another is refused with
    /// [`ClientError::CustomMessagePending`]; wait with
    /// [`custom_message_sent`](Self::custom_message_sent). Its capability
    /// must be one of the agent's custom capabilities.
    pub fn send_custom_message(&self, message: CustomMessage) -> Result<(), ClientError> {
        self.update(|core| core.send_custom_message(message))
    }

    /// Waits until no custom message is pending.
    pub async fn custom_message_sent(&self) {
        loop {
            let notified = self.inner.custom_sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.inner.core().custom_message_pending() {
                return;
            }
            notified.await;
        }
    }

    /// Validates the state (description present, capabilities consistent
    /// with what was provided) and starts the client in the current tokio
    /// runtime. The first message carries the full state (STS-01).
    pub async fn start(&self) -> Result<(), ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let parts = self
            .inner
            .start_parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or(ClientError::AlreadyStarted)?;

        let syncer = match self.start_syncer(&parts).await {
            Ok(syncer) => syncer,
            Err(error) => {
                self.restore(parts);
                return Err(error);
            }
        };
        if self
            .inner
            .core()
            .capabilities()
            .contains(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG)
        {
            self.update_effective_config();
        }
        if let Err(error) = self.inner.core().start(driver::now()) {
            self.restore(parts);
            return Err(error);
        }

        let (notice_tx, notice_rx) = mpsc::channel(CALLBACK_QUEUE);
        let (switch_tx, switch_rx) = mpsc::unbounded_channel();
        runtime.spawn(dispatch(self.clone(), notice_rx, switch_tx, syncer));
        let context = DriverContext {
            inner: Arc::clone(&self.inner),
            options: parts.options,
            outbox: Outbox::new(notice_tx),
            switches: switch_rx,
            shutdown_timeout: self.inner.shutdown_timeout,
            compression: parts.compression,
            allow_insecure_offers: parts.allow_insecure_offers,
        };
        let handle = match self.inner.transport {
            TransportKind::WebSocket => runtime.spawn(crate::ws_driver::run(context)),
            TransportKind::Http => runtime.spawn(crate::http_driver::run(context)),
        };
        *self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
        Ok(())
    }

    fn restore(&self, parts: StartParts) {
        *self
            .inner
            .start_parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(parts);
    }

    async fn start_syncer(&self, parts: &StartParts) -> Result<Option<PackageSyncer>, ClientError> {
        let Some(store) = &parts.package_store else {
            return Ok(None);
        };
        // Downloads use the OpAMP connection's TLS and proxy settings; the
        // endpoint only has to be an HTTP URL for the poster to accept it.
        let mut download_options = parts.options.clone();
        let scheme = match download_options.endpoint.scheme() {
            "wss" | "https" => "https",
            _ => "http",
        };
        // Changing between these special schemes always succeeds.
        let _ = download_options.endpoint.set_scheme(scheme);
        download_options.headers.clear();
        download_options.header_hook = None;
        let downloader = HttpPoster::new(download_options)
            .map_err(|error| ClientError::InvalidEndpoint(error.to_string()))?;
        let weak = Arc::downgrade(&self.inner);
        let callbacks = Arc::clone(&self.inner.callbacks);
        let mut builder = PackageSyncer::builder(Arc::clone(store), Arc::new(downloader))
            .on_statuses(move |statuses| {
                if let Some(inner) = weak.upgrade() {
                    inner.core().set_package_statuses(statuses);
                    inner.wake.notify_one();
                }
            })
            .on_event(move |event| callbacks.on_package_event(event));
        if let Some(verifier) = &parts.package_verifier {
            builder = builder.verifier(Arc::clone(verifier));
        }
        builder
            .start()
            .await
            .map(Some)
            .map_err(ClientError::PackageStore)
    }

    /// Stops the client: the last message carries `agent_disconnect`
    /// (MSG-06), then the WebSocket is closed with a Close frame (WS-17) or
    /// the last plain-HTTP request is made (HTTP-24). Waits at most about
    /// twice the shutdown timeout. Stopping twice, or a client never started,
    /// is fine.
    pub async fn stop(&self) {
        self.update(|core| core.stop(driver::now()));
        let handle = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(mut handle) = handle {
            let bound = self.inner.shutdown_timeout.saturating_mul(2);
            if tokio::time::timeout(bound, &mut handle).await.is_err() {
                tracing::warn!("OpAMP client did not stop in time; aborting its task");
                handle.abort();
            }
        }
    }

    /// Whether the client has stopped (after [`stop`](Self::stop)).
    pub fn is_stopped(&self) -> bool {
        self.inner.core().is_stopped()
    }
}

/// Runs a synchronous callback on the blocking pool, so it may block without
/// stalling the runtime.
async fn blocking(call: impl FnOnce() + Send + 'static) {
    if let Err(error) = tokio::task::spawn_blocking(call).await {
        tracing::error!(%error, "an OpAMP callback panicked");
    }
}

fn settings_status(
    hash: Bytes,
    status: ConnectionSettingsStatuses,
    error: String,
) -> ConnectionSettingsStatus {
    ConnectionSettingsStatus {
        last_connection_settings_hash: hash,
        status: status as i32,
        error_message: error,
    }
}

/// The callback queue: delivers notices in order, one at a time.
async fn dispatch(
    client: OpampClient,
    mut notices: mpsc::Receiver<Notice>,
    switches: mpsc::UnboundedSender<SwitchRequest>,
    syncer: Option<PackageSyncer>,
) {
    let callbacks = Arc::clone(&client.inner.callbacks);
    // The "other" half of an offer that failed, so a successful OpAMP switch
    // for the same offer does not report APPLIED over it.
    let mut failed_part: Option<(Bytes, String)> = None;
    while let Some(notice) = notices.recv().await {
        let cb = Arc::clone(&callbacks);
        match notice {
            Notice::Connected => blocking(move || cb.on_connect()).await,
            Notice::ConnectFailed(error) => blocking(move || cb.on_connect_failed(&*error)).await,
            Notice::SwitchOutcome {
                hash,
                settings,
                result,
            } => {
                let status = match (&result, &failed_part) {
                    (Err(error), _) => settings_status(
                        hash.clone(),
                        ConnectionSettingsStatuses::Failed,
                        error.clone(),
                    ),
                    (Ok(()), Some((failed, error))) if *failed == hash => settings_status(
                        hash.clone(),
                        ConnectionSettingsStatuses::Failed,
                        error.clone(),
                    ),
                    (Ok(()), _) => settings_status(
                        hash.clone(),
                        ConnectionSettingsStatuses::Applied,
                        String::new(),
                    ),
                };
                client.set_connection_settings_status(status);
                blocking(move || {
                    cb.on_opamp_connection_settings_outcome(
                        &settings,
                        result.as_ref().map(|_| ()).map_err(String::as_str),
                    )
                })
                .await;
            }
            Notice::Core(event) => match event {
                Event::Message(data) => {
                    let client = client.clone();
                    blocking(move || cb.on_message(&client, &data)).await;
                }
                Event::ErrorResponse(error) => blocking(move || cb.on_error_response(&error)).await,
                Event::OpampConnectionSettings { hash, settings } => {
                    match cb.on_opamp_connection_settings(&settings).await {
                        Ok(settings) => {
                            if switches
                                .send(SwitchRequest {
                                    hash,
                                    settings: Box::new(settings),
                                })
                                .is_err()
                            {
                                tracing::debug!("driver gone; connection settings switch dropped");
                            }
                        }
                        Err(reason) => client.set_connection_settings_status(settings_status(
                            hash,
                            ConnectionSettingsStatuses::Failed,
                            reason,
                        )),
                    }
                }
                Event::OtherConnectionSettings {
                    hash,
                    offers,
                    opamp_offered,
                } => {
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    blocking(move || {
                        let _ = done_tx.send(cb.on_other_connection_settings(&offers));
                    })
                    .await;
                    let outcome = done_rx
                        .await
                        .unwrap_or(SettingsOutcome::Failed("callback panicked".into()));
                    // Whether an OpAMP part of the same offer is coming: it
                    // then reports the final status.
                    match outcome {
                        SettingsOutcome::Applied => {
                            failed_part = None;
                            if !opamp_offered {
                                client.set_connection_settings_status(settings_status(
                                    hash,
                                    ConnectionSettingsStatuses::Applied,
                                    String::new(),
                                ));
                            }
                        }
                        SettingsOutcome::Failed(error) => {
                            failed_part = Some((hash.clone(), error.clone()));
                            client.set_connection_settings_status(settings_status(
                                hash,
                                ConnectionSettingsStatuses::Failed,
                                error,
                            ));
                        }
                        SettingsOutcome::Later => failed_part = None,
                    }
                }
                Event::PackagesAvailable(offer) => match &syncer {
                    Some(syncer) => {
                        syncer.offer(offer);
                    }
                    None => tracing::warn!("package offer without a package syncer"),
                },
                Event::Command(command) => blocking(move || cb.on_command(&command)).await,
                Event::NewInstanceUid(uid) => blocking(move || cb.on_new_instance_uid(uid)).await,
                Event::ProtocolError(error) => blocking(move || cb.on_protocol_error(&error)).await,
            },
        }
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

    #[test]
    fn builder_rejects_unusable_endpoints() {
        assert!(matches!(
            OpampClient::builder("not a url").build(),
            Err(ClientError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            OpampClient::builder("ftp://example.com/v1/opamp").build(),
            Err(ClientError::UnsupportedScheme(_))
        ));
        let ws = OpampClient::builder("wss://example.com/v1/opamp")
            .build()
            .unwrap();
        assert_eq!(ws.transport(), TransportKind::WebSocket);
        let http = OpampClient::builder("https://example.com/v1/opamp")
            .build()
            .unwrap();
        assert_eq!(http.transport(), TransportKind::Http);
    }

    /// An endpoint on a loopback port nobody listens on.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1/opamp", listener.local_addr().unwrap())
    }

    #[tokio::test]
    async fn failed_start_validation_can_be_fixed_and_retried() {
        let client = OpampClient::builder(dead_endpoint())
            .capabilities(AgentCapabilities::REPORTS_HEALTH)
            .build()
            .unwrap();
        assert!(matches!(
            client.start().await,
            Err(ClientError::MissingAgentDescription)
        ));
        client.set_agent_description(AgentDescription::for_service("io.example.agent", "1"));
        assert!(matches!(
            client.start().await,
            Err(ClientError::MissingHealth)
        ));
        client.set_health(ComponentHealth {
            healthy: true,
            ..Default::default()
        });
        client.start().await.unwrap();
        assert!(matches!(
            client.start().await,
            Err(ClientError::AlreadyStarted)
        ));
        client.stop().await;
        assert!(client.is_stopped());
    }

    #[tokio::test]
    async fn accepts_packages_needs_a_package_store() {
        let client = OpampClient::builder(dead_endpoint())
            .agent_description(AgentDescription::for_service("io.example.agent", "1"))
            .capabilities(AgentCapabilities::ACCEPTS_PACKAGES)
            .build()
            .unwrap();
        assert!(matches!(
            client.start().await,
            Err(ClientError::PackagesMismatch)
        ));
    }

    #[tokio::test]
    async fn custom_message_rules_apply_through_the_handle() {
        let client = OpampClient::builder(dead_endpoint()).build().unwrap();
        client.set_custom_capabilities(CustomCapabilities {
            capabilities: vec!["io.example.cap".into()],
        });
        let message = CustomMessage {
            capability: "io.example.cap".into(),
            ..Default::default()
        };
        client.send_custom_message(message.clone()).unwrap();
        assert!(matches!(
            client.send_custom_message(message),
            Err(ClientError::CustomMessagePending)
        ));
    }
}
