//! Our client as an agent: applies remote configs, records every callback.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opamp_client::proto::{
    AgentConfigMap, AgentConfigObject, AgentRemoteConfig, CustomCapabilities, CustomMessage,
    EffectiveConfig, OpAmpConnectionSettings, RemoteConfigStatus, RemoteConfigStatuses,
    ServerErrorResponse, ServerToAgentCommand,
};
use opamp_client::{
    AgentCapabilities, AgentDescription, Callbacks, ClientBuilder, ComponentHealth, InstanceUid,
    MemoryPackageStore, MessageData, OpampClient, PackageEvent, TransportError,
};

use opamp_testkit::Inbox;

/// The custom capability both sides announce (goagent's and goserver's
/// default).
pub const INTEROP_CAPABILITY: &str = "io.opamp-rs.interop";

/// A remote config file containing this is reported FAILED (as goagent does).
pub const FAIL_MARKER: &str = "FAIL_ME";

/// Something our client told the agent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// `on_connect`.
    Connected,
    /// `on_connect_failed`, with the error's text.
    ConnectFailed(String),
    /// A remote config arrived (already applied or failed by the recorder).
    RemoteConfig(AgentRemoteConfig),
    /// A custom message arrived.
    CustomMessage(CustomMessage),
    /// The server's custom capabilities arrived.
    ServerCustomCapabilities(CustomCapabilities),
    /// `on_error_response`.
    ErrorResponse(ServerErrorResponse),
    /// `on_command`.
    Command(ServerToAgentCommand),
    /// `on_new_instance_uid`.
    NewInstanceUid(InstanceUid),
    /// New OpAMP connection settings were offered.
    OpampSettings(Box<OpAmpConnectionSettings>),
    /// The outcome of verifying offered OpAMP settings.
    OpampSettingsOutcome(Result<(), String>),
    /// A package was installed.
    PackageInstalled {
        /// Package name.
        name: String,
        /// Its version.
        version: String,
    },
    /// A package failed.
    PackageFailed {
        /// Package name.
        name: String,
        /// The error's text.
        error: String,
    },
    /// A package was removed.
    PackageRemoved(String),
}

/// Our client's callbacks for the interop tests: a remote config is applied
/// as the new effective config and reported APPLIED, or FAILED when a file
/// contains [`FAIL_MARKER`]; everything is recorded as a [`ClientEvent`].
pub struct AgentRecorder {
    events: tokio::sync::mpsc::UnboundedSender<ClientEvent>,
    effective: Mutex<AgentConfigMap>,
}

impl std::fmt::Debug for AgentRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRecorder").finish_non_exhaustive()
    }
}

impl AgentRecorder {
    fn record(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// The current effective config (a poisoned lock is taken over).
    fn config(&self) -> MutexGuard<'_, AgentConfigMap> {
        self.effective
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn effective(&self) -> EffectiveConfig {
        EffectiveConfig {
            config_map: Some(self.config().clone()),
        }
    }
}

impl Callbacks for AgentRecorder {
    fn on_connect(&self) {
        self.record(ClientEvent::Connected);
    }

    fn on_connect_failed(&self, error: &TransportError) {
        self.record(ClientEvent::ConnectFailed(error.to_string()));
    }

    fn on_error_response(&self, error: &ServerErrorResponse) {
        self.record(ClientEvent::ErrorResponse(error.clone()));
    }

    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        if let Some(offer) = &data.remote_config {
            let config = offer.config.clone().unwrap_or_default();
            let failed = config.config_map.values().any(|file| {
                file.body
                    .windows(FAIL_MARKER.len())
                    .any(|w| w == FAIL_MARKER.as_bytes())
            });
            let status = if failed {
                RemoteConfigStatus {
                    last_remote_config_hash: offer.config_hash.clone(),
                    status: RemoteConfigStatuses::Failed as i32,
                    error_message: format!("a file contains {FAIL_MARKER}"),
                }
            } else {
                *self.config() = config;
                client.set_effective_config(self.effective());
                RemoteConfigStatus {
                    last_remote_config_hash: offer.config_hash.clone(),
                    status: RemoteConfigStatuses::Applied as i32,
                    error_message: String::new(),
                }
            };
            client.set_remote_config_status(status);
            self.record(ClientEvent::RemoteConfig(offer.clone()));
        }
        if let Some(capabilities) = &data.custom_capabilities {
            self.record(ClientEvent::ServerCustomCapabilities(capabilities.clone()));
        }
        if let Some(message) = &data.custom_message {
            self.record(ClientEvent::CustomMessage(message.clone()));
        }
    }

    fn on_opamp_connection_settings<'a>(
        &'a self,
        settings: &'a OpAmpConnectionSettings,
    ) -> Pin<Box<dyn Future<Output = Result<OpAmpConnectionSettings, String>> + Send + 'a>> {
        self.record(ClientEvent::OpampSettings(Box::new(settings.clone())));
        Box::pin(async move { Ok(settings.clone()) })
    }

    fn on_opamp_connection_settings_outcome(
        &self,
        _settings: &OpAmpConnectionSettings,
        outcome: Result<(), &str>,
    ) {
        self.record(ClientEvent::OpampSettingsOutcome(
            outcome.map_err(str::to_owned),
        ));
    }

    fn on_command(&self, command: &ServerToAgentCommand) {
        self.record(ClientEvent::Command(*command));
    }

    fn on_new_instance_uid(&self, uid: InstanceUid) {
        self.record(ClientEvent::NewInstanceUid(uid));
    }

    fn effective_config(&self) -> Option<EffectiveConfig> {
        Some(self.effective())
    }

    fn on_package_event(&self, event: &PackageEvent) {
        let event = match event {
            PackageEvent::Installed(package) => ClientEvent::PackageInstalled {
                name: package.info.name.clone(),
                version: package.info.version.clone(),
            },
            PackageEvent::Failed { name, error } => ClientEvent::PackageFailed {
                name: name.clone(),
                error: error.to_string(),
            },
            PackageEvent::Removed { name } => ClientEvent::PackageRemoved(name.clone()),
            other => ClientEvent::PackageFailed {
                name: String::new(),
                error: format!("unexpected package event {other:?}"),
            },
        };
        self.record(event);
    }
}

/// The capabilities our interop agent announces: everything the scenarios
/// exercise.
pub fn agent_capabilities() -> AgentCapabilities {
    AgentCapabilities::REPORTS_STATUS
        | AgentCapabilities::ACCEPTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
        | AgentCapabilities::REPORTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_HEALTH
        | AgentCapabilities::REPORTS_HEARTBEAT
        | AgentCapabilities::ACCEPTS_RESTART_COMMAND
        | AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS
        | AgentCapabilities::ACCEPTS_PACKAGES
        | AgentCapabilities::REPORTS_PACKAGE_STATUSES
}

/// Our [`OpampClient`] set up as an interop agent, with what it saw.
#[derive(Debug)]
pub struct OurAgent {
    /// The client (not started until [`start`](Self::start)).
    pub client: OpampClient,
    /// What the callbacks saw.
    pub events: Inbox<ClientEvent>,
    /// Where packages are installed.
    pub packages: MemoryPackageStore,
}

impl OurAgent {
    /// Service name in the agent description.
    pub const SERVICE_NAME: &'static str = "opamp-rs-interop-agent";

    /// A builder for `endpoint` with the interop description, capabilities,
    /// callbacks, package store and an initial effective config; `heartbeat`
    /// is the heartbeat interval and, for plain HTTP, the polling interval.
    /// Adjust it, then call [`build`](Self::build).
    pub fn builder(
        endpoint: &str,
        heartbeat: Duration,
    ) -> (ClientBuilder, Inbox<ClientEvent>, MemoryPackageStore) {
        let (events_tx, events) = Inbox::new("our client: callbacks");
        let mut initial = AgentConfigMap::default();
        initial.config_map.insert(
            "agent.yaml".into(),
            AgentConfigObject {
                body: "receivers: {}\n".into(),
                content_type: "text/yaml".into(),
                ..Default::default()
            },
        );
        let recorder = AgentRecorder {
            events: events_tx,
            effective: Mutex::new(initial),
        };
        let packages = MemoryPackageStore::new();
        let builder = OpampClient::builder(endpoint)
            .agent_description(
                AgentDescription::for_service(Self::SERVICE_NAME, "0.1.0")
                    .with_non_identifying("os.type", "linux"),
            )
            .capabilities(agent_capabilities())
            .heartbeat_interval(heartbeat)
            .polling_interval(heartbeat)
            .callbacks(recorder)
            .package_store(Arc::new(packages.clone()));
        (builder, events, packages)
    }

    /// Builds the client and sets health and custom capabilities.
    pub fn build(
        builder: ClientBuilder,
        events: Inbox<ClientEvent>,
        packages: MemoryPackageStore,
    ) -> Self {
        let client = builder.build().expect("valid client settings");
        client.set_health(ComponentHealth {
            healthy: true,
            status: "running".into(),
            ..Default::default()
        });
        client.set_custom_capabilities(CustomCapabilities {
            capabilities: vec![INTEROP_CAPABILITY.into()],
        });
        Self {
            client,
            events,
            packages,
        }
    }

    /// The default interop agent for `endpoint`.
    pub fn new(endpoint: &str, heartbeat: Duration) -> Self {
        let (builder, events, packages) = Self::builder(endpoint, heartbeat);
        Self::build(builder, events, packages)
    }

    /// Starts the client.
    pub async fn start(&self) {
        self.client.start().await.expect("client starts");
    }

    /// The earliest unconsumed callback event matching `matches`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        matches: impl FnMut(&ClientEvent) -> bool,
    ) -> ClientEvent {
        self.events.wait_for(what, matches).await
    }

    /// The earliest unconsumed callback event that `pick` maps to a value,
    /// and that value (see [`next_client_event!`](crate::next_client_event)).
    pub async fn wait_map<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> T {
        let event = self.events.wait_for(what, |e| pick(e).is_some()).await;
        pick(&event).expect("the event matched")
    }
}
