//! The fleet: the registry plus what this server adds on top (config
//! precedence, history, events, live updates for the page).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt as _;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentDescription, AgentToServer, ConnectionSettingsOffers,
    CustomMessage, Header, Headers, InstanceUid, OpAmpConnectionSettings, PackageAvailable,
    PackagesAvailable, TelemetryConnectionSettings, TlsCertificate, config_hash,
};
use opamp_server::{
    AgentEvent as RegistryEvent, AgentRecord, Connection, DisconnectReason, Registry, SendError,
    StatusChanges, TransportKind,
};
use tokio::sync::broadcast;

use super::agent_query::{AgentPage, AgentQuery};
use super::certs::ClientCa;
use super::error::ApiError;
use super::lock;
use super::store::{
    AgentEvent, ConfigSource, FleetStore, Group, HistoryEntry, Settlement, unix_ms,
};
use super::store_pg::FleetChange;
use super::view::{self, AgentDetail, AgentSummary, LiveFacts};

/// How many tasks handle registry events (each agent's in order).
const EVENT_HANDLERS: usize = 16;
/// Events waiting per handler before the follower waits for it.
const EVENT_QUEUE: usize = 256;

/// How many agents a fleet-wide config change offers to at once.
const APPLY_CONCURRENCY: usize = 256;

/// Settings of the fleet logic that come from the command line.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// OTLP/HTTP base URL offered to agents for their own telemetry
    /// (`/v1/metrics`, `/v1/traces`, `/v1/logs` are appended).
    pub otlp_endpoint: Option<String>,
    /// Directory whose files can be offered as packages.
    pub packages_dir: PathBuf,
    /// Base URL agents download package files from (`{base}/packages/{file}`).
    pub download_base_url: String,
    /// The OpAMP URL agents are told to use in connection settings offers,
    /// for WebSocket and for plain HTTP agents.
    pub websocket_endpoint: String,
    /// See [`websocket_endpoint`](Self::websocket_endpoint).
    pub http_endpoint: String,
    /// Bearer token agents must send; also put into OpAMP settings offers so
    /// agents keep sending it.
    pub agent_token: Option<String>,
    /// The CA that signs client certificates, for certificate rotation.
    pub client_ca: Option<ClientCa>,
}

/// What the page hears about over `GET /api/events`.
#[derive(Debug, Clone)]
pub(crate) enum UiEvent {
    Agent(Box<AgentSummary>),
    Removed(InstanceUid),
    Config,
    Resync,
}

pub(crate) struct Fleet {
    pub(crate) registry: Registry,
    pub(crate) store: FleetStore,
    pub(crate) options: FleetOptions,
    /// `sequence_num` of each agent's latest message (the registry keeps it
    /// private).
    sequence: Mutex<HashMap<InstanceUid, u64>>,
    /// Agents whose config was resolved since they connected.
    resolved: Mutex<HashSet<InstanceUid>>,
    ui: broadcast::Sender<UiEvent>,
    /// Flips to true when the server shuts down, ending open event streams.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Fleet {
    pub(crate) fn new(registry: Registry, store: FleetStore, options: FleetOptions) -> Arc<Self> {
        let (ui, _) = broadcast::channel(512);
        Arc::new(Self {
            registry,
            store,
            options,
            sequence: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashSet::new()),
            ui,
            shutdown: tokio::sync::watch::Sender::new(false),
        })
    }

    pub(crate) fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Ends the page's event streams so that graceful shutdown can finish.
    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn subscribe_ui(&self) -> broadcast::Receiver<UiEvent> {
        self.ui.subscribe()
    }

    fn notify(&self, event: UiEvent) {
        // No subscriber is fine: nobody has the page open.
        let _ = self.ui.send(event);
    }

    // ---- views ----

    async fn live_facts(&self, record: &AgentRecord, source: Option<ConfigSource>) -> LiveFacts {
        let uid = record.uid;
        let mut transport = self
            .registry
            .connection(uid)
            .map(|connection| connection.transport());
        // With a shared store another instance may hold the connection: its
        // record says which transport, the owner's lease that it is alive.
        if transport.is_none()
            && let Some(connection) = &record.connection
        {
            match self.store.held_elsewhere(uid).await {
                Ok(true) => transport = Some(connection.transport),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, %uid, "cannot tell who holds the agent"),
            }
        }
        LiveFacts {
            transport,
            sequence_num: lock(&self.sequence).get(&uid).copied(),
            source,
        }
    }

    async fn source_of(&self, record: &AgentRecord) -> Option<ConfigSource> {
        let desired = record.desired.remote_config.as_ref()?;
        let hash = hex::encode(&desired.config_hash);
        match self.store.history(record.uid).await {
            Ok(history) => history
                .into_iter()
                .find(|e| e.config_hash == hash)
                .map(|e| e.source),
            Err(error) => {
                tracing::warn!(%error, "cannot read config history");
                None
            }
        }
    }

    async fn summary_of(&self, record: &AgentRecord) -> AgentSummary {
        let source = self.source_of(record).await;
        view::summary(record, &self.live_facts(record, source).await, false)
    }

    pub(crate) async fn list(&self) -> Result<Vec<AgentSummary>, ApiError> {
        let mut records = self.registry.agents().await?;
        records.sort_by_key(|record| record.uid);
        let mut summaries = Vec::with_capacity(records.len());
        for record in &records {
            summaries.push(self.summary_of(record).await);
        }
        Ok(summaries)
    }

    /// One page of agents matching `query` (see [`AgentQuery`]): filtered,
    /// counted and paged by the store; only the page becomes summaries.
    pub(crate) async fn page(
        &self,
        query: AgentQuery,
    ) -> Result<(Vec<AgentSummary>, AgentPage), ApiError> {
        let connected = self
            .registry
            .connected()
            .into_iter()
            .filter(|uid| self.registry.connection(*uid).is_some())
            .collect();
        let mut page = self.store.query_agents(query, connected).await?;
        // The page's agents are read concurrently (each is a store read or
        // two); join_all keeps their order.
        let summaries =
            futures_util::future::join_all(std::mem::take(&mut page.records).into_iter().map(
                |stored| async move {
                    // The registry adds what a live session has not saved
                    // yet (last seen, sequence number).
                    let record = self.registry.agent(stored.uid).await?.unwrap_or(stored);
                    Ok::<_, opamp_server::StoreError>(self.summary_of(&record).await)
                },
            ))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        Ok((summaries, page))
    }

    pub(crate) async fn record(&self, uid: InstanceUid) -> Result<AgentRecord, ApiError> {
        self.registry
            .agent(uid)
            .await?
            .ok_or(ApiError::UnknownAgent(uid))
    }

    /// The agent's record, if it declared it accepts `capability`.
    async fn record_accepting(
        &self,
        uid: InstanceUid,
        capability: AgentCapabilities,
    ) -> Result<AgentRecord, ApiError> {
        let record = self.record(uid).await?;
        require(&record, capability)?;
        Ok(record)
    }

    pub(crate) async fn detail(&self, uid: InstanceUid) -> Result<AgentDetail, ApiError> {
        let record = self.record(uid).await?;
        let history = self.store.history(uid).await?;
        let events = self.store.events(uid).await?;
        let source = record.desired.remote_config.as_ref().and_then(|desired| {
            let hash = hex::encode(&desired.config_hash);
            history
                .iter()
                .find(|e| e.config_hash == hash)
                .map(|e| e.source.clone())
        });
        Ok(view::detail(
            &record,
            &self.live_facts(&record, source).await,
            history,
            events,
        ))
    }

    async fn publish(&self, uid: InstanceUid) {
        match self.registry.agent(uid).await {
            Ok(Some(record)) => {
                let summary = self.summary_of(&record).await;
                self.notify(UiEvent::Agent(Box::new(summary)));
            }
            Ok(None) => self.notify(UiEvent::Removed(uid)),
            Err(error) => tracing::warn!(%error, %uid, "cannot load agent for the page"),
        }
    }

    /// Records what was done to `uid` in its events and updates its page.
    async fn announce(&self, uid: InstanceUid, kind: &str, message: String) {
        self.log_event(uid, kind, message).await;
        self.publish(uid).await;
    }

    async fn log_event(&self, uid: InstanceUid, kind: &str, message: String) {
        let event = AgentEvent::new(kind, message, unix_ms(SystemTime::now()));
        if let Err(error) = self.store.push_event(uid, event).await {
            tracing::warn!(%error, %uid, "cannot record agent event");
        }
    }

    // ---- config precedence ----

    /// The config agent `record` should run: its own, else the first
    /// matching group by name, else the default.
    async fn resolve(
        &self,
        record: &AgentRecord,
    ) -> Result<Option<(ConfigSource, AgentConfigMap)>, ApiError> {
        if let Some(config) = self.store.agent_config(record.uid).await? {
            return Ok(Some((ConfigSource::Agent, config)));
        }
        if let Some(found) = group_config(record, &self.store.groups().await?) {
            return Ok(Some(found));
        }
        Ok(self
            .store
            .default_config()
            .await?
            .map(|config| (ConfigSource::Default, config)))
    }

    /// Offers agent `uid` the config it should run, if it differs from what
    /// is already desired. Returns the hash of the config it should run and
    /// the offer made, if one was made.
    pub(crate) async fn apply_config(
        &self,
        uid: InstanceUid,
    ) -> Result<(Option<Bytes>, Option<opamp_server::Offer>), ApiError> {
        let record = self.record(uid).await?;
        let Some((source, config)) = self.resolve(&record).await? else {
            return Ok((None, None));
        };
        self.offer_config(&record, source, config, true).await
    }

    /// Offers `config` (resolved from `source`) to the agent of `record`
    /// unless it is already desired; `publish` tells the page about the
    /// agent (a fleet-wide change tells it once instead).
    async fn offer_config(
        &self,
        record: &AgentRecord,
        source: ConfigSource,
        config: AgentConfigMap,
        publish: bool,
    ) -> Result<(Option<Bytes>, Option<opamp_server::Offer>), ApiError> {
        let uid = record.uid;
        let hash = config_hash(&config);
        if !record
            .status
            .capabilities
            .contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
        {
            return Ok((Some(hash), None));
        }
        let current = record
            .desired
            .remote_config
            .as_ref()
            .map(|desired| &desired.config_hash);
        if current == Some(&hash) {
            return Ok((Some(hash), None));
        }
        let files = config.config_map.keys().cloned().collect();
        let offer = self.registry.set_remote_config(uid, config).await?;
        let now = unix_ms(SystemTime::now());
        let entry = HistoryEntry {
            config_hash: hex::encode(&hash),
            source: source.clone(),
            files,
            offered_at_ms: now,
            outcome: "PENDING".into(),
            error_message: String::new(),
            updated_at_ms: now,
        };
        self.store.push_history(uid, entry).await?;
        let from = match &source {
            ConfigSource::Agent => "its own config".to_owned(),
            ConfigSource::Group(name) => format!("group {name}"),
            ConfigSource::Default => "the default config".to_owned(),
        };
        self.log_event(
            uid,
            "config",
            format!("offered {} from {from}", short(&hash)),
        )
        .await;
        // The remote-config status may already match (an agent that kept it).
        self.settle(uid).await;
        if publish {
            self.publish(uid).await;
        }
        Ok((Some(hash), Some(offer)))
    }

    /// Re-resolves every known agent, after a default or group change.
    /// Groups, the default and who has a config of their own are read once;
    /// the offers go out many at a time, so their store writes share
    /// commits and no agent waits for the one before it.
    pub(crate) async fn apply_all(&self) -> Result<(), ApiError> {
        let groups = self.store.groups().await?;
        let default = self.store.default_config().await?;
        // A fleet-wide change does not touch agents with their own config.
        let own = self.store.agents_with_config().await?;
        let records = self.registry.agents().await?;
        let mut offers = futures_util::stream::iter(
            records
                .into_iter()
                .filter(|record| !own.contains(&record.uid)),
        )
        .map(|record| {
            let resolved = group_config(&record, &groups).or_else(|| {
                default
                    .clone()
                    .map(|config| (ConfigSource::Default, config))
            });
            async move {
                match resolved {
                    Some((source, config)) => self
                        .offer_config(&record, source, config, false)
                        .await
                        .map(drop),
                    None => Ok(()),
                }
            }
        })
        .buffer_unordered(APPLY_CONCURRENCY);
        let mut failure = None;
        while let Some(result) = offers.next().await {
            match result {
                Ok(()) => {}
                // An agent removed meanwhile, or not accepting: nothing to do.
                Err(ApiError::UnknownAgent(_) | ApiError::NotAccepted(_)) => {}
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        drop(offers);
        // One reload of the page instead of an update per agent.
        self.notify(UiEvent::Resync);
        self.notify(UiEvent::Config);
        failure.map_or(Ok(()), Err)
    }

    pub(crate) async fn set_agent_config(
        &self,
        uid: InstanceUid,
        config: Option<AgentConfigMap>,
    ) -> Result<Option<Bytes>, ApiError> {
        let record = self.record(uid).await?;
        if config.is_some() {
            require(&record, AgentCapabilities::ACCEPTS_REMOTE_CONFIG)?;
        }
        self.store.set_agent_config(uid, config).await?;
        let (hash, _) = self.apply_config(uid).await?;
        Ok(hash)
    }

    pub(crate) async fn set_default_config(
        &self,
        config: Option<AgentConfigMap>,
    ) -> Result<(), ApiError> {
        self.store.set_default_config(config).await?;
        self.apply_all().await
    }

    pub(crate) async fn put_group(&self, name: String, group: Group) -> Result<(), ApiError> {
        self.store.put_group(name, group).await?;
        self.apply_all().await
    }

    pub(crate) async fn remove_group(&self, name: String) -> Result<bool, ApiError> {
        let existed = self.store.remove_group(name).await?;
        self.apply_all().await?;
        Ok(existed)
    }

    pub(crate) async fn groups_with_counts(
        &self,
    ) -> Result<BTreeMap<String, (Group, usize)>, ApiError> {
        let groups = self.store.groups().await?;
        let records = self.registry.agents().await?;
        Ok(groups
            .into_iter()
            .map(|(name, group)| {
                let count = records
                    .iter()
                    .filter_map(|record| record.status.description.as_ref())
                    .filter(|description| selector_matches(&group.selector, description))
                    .count();
                (name, (group, count))
            })
            .collect())
    }

    /// Records the outcome the agent reports for the desired config.
    async fn settle(&self, uid: InstanceUid) {
        let Ok(Some(record)) = self.registry.agent(uid).await else {
            return;
        };
        let Some(status) = &record.status.remote_config_status else {
            return;
        };
        let outcome = view::remote_config_status_name(status.status());
        if outcome == "UNSET" {
            return;
        }
        let hash = hex::encode(&status.last_remote_config_hash);
        let settled = self
            .store
            .settle_history(
                uid,
                Settlement {
                    config_hash: hash.clone(),
                    outcome: outcome.to_owned(),
                    error_message: status.error_message.clone(),
                },
                unix_ms(SystemTime::now()),
            )
            .await;
        match settled {
            Ok(Some(_)) => {
                let mut message = format!("{outcome} {}", &hash[..hash.len().min(12)]);
                if !status.error_message.is_empty() {
                    message.push_str(": ");
                    message.push_str(&status.error_message);
                }
                self.log_event(uid, "config", message).await;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, %uid, "cannot update config history"),
        }
    }

    /// Forgets an agent that is not connected: record, configs, history, events.
    pub(crate) async fn forget(&self, uid: InstanceUid) -> Result<(), ApiError> {
        self.record(uid).await?;
        if self.registry.connection(uid).is_some() || self.store.held_elsewhere(uid).await? {
            return Err(ApiError::Connected(uid));
        }
        self.store.forget_agent(uid).await?;
        // Emits Removed, which updates the page.
        self.registry.remove(uid).await?;
        lock(&self.sequence).remove(&uid);
        Ok(())
    }

    // ---- offers and commands ----

    pub(crate) async fn restart(&self, uid: InstanceUid) -> Result<(), ApiError> {
        self.record_accepting(uid, AgentCapabilities::ACCEPTS_RESTART_COMMAND)
            .await?;
        self.registry.restart(uid).await?;
        self.announce(uid, "command", "restart requested".into())
            .await;
        Ok(())
    }

    pub(crate) async fn custom_message(
        &self,
        uid: InstanceUid,
        message: CustomMessage,
    ) -> Result<(), ApiError> {
        let record = self.record(uid).await?;
        let announced = record
            .status
            .custom_capabilities
            .as_ref()
            .is_some_and(|custom| custom.capabilities.contains(&message.capability));
        if !announced {
            return Err(ApiError::CustomCapabilityNotAnnounced(message.capability));
        }
        let summary = format!("sent {} / {}", message.capability, message.r#type);
        self.registry.send_custom_message(uid, message).await?;
        self.announce(uid, "custom", summary).await;
        Ok(())
    }

    /// Adds `package` under `name` to the agent's package offer.
    pub(crate) async fn offer_package(
        &self,
        uid: InstanceUid,
        name: String,
        package: PackageAvailable,
    ) -> Result<Bytes, ApiError> {
        let record = self
            .record_accepting(uid, AgentCapabilities::ACCEPTS_PACKAGES)
            .await?;
        let mut packages = record.desired.packages.clone().unwrap_or_default();
        let version = package.version.clone();
        packages.packages.insert(name.clone(), package);
        // The registry fills in the aggregate hash of the new set (PKG-12).
        packages.all_packages_hash = Bytes::new();
        let offer = self.registry.offer_packages(uid, packages).await?;
        self.announce(uid, "package", format!("offered {name} {version}"))
            .await;
        Ok(offer.hash)
    }

    /// Removes a package from the agent's offer (the agent then removes it).
    pub(crate) async fn withdraw_package(
        &self,
        uid: InstanceUid,
        name: &str,
    ) -> Result<(), ApiError> {
        let record = self
            .record_accepting(uid, AgentCapabilities::ACCEPTS_PACKAGES)
            .await?;
        let mut packages: PackagesAvailable = record.desired.packages.clone().unwrap_or_default();
        if packages.packages.remove(name).is_none() {
            return Err(ApiError::NotFound(format!(
                "no package {name:?} is offered to {uid}"
            )));
        }
        packages.all_packages_hash = Bytes::new();
        self.registry.offer_packages(uid, packages).await?;
        self.announce(uid, "package", format!("withdrew {name}"))
            .await;
        Ok(())
    }

    /// Offers a heartbeat interval (in OpAMP connection settings).
    pub(crate) async fn set_heartbeat(
        &self,
        uid: InstanceUid,
        seconds: u64,
    ) -> Result<(), ApiError> {
        let record = self
            .record_accepting(uid, AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS)
            .await?;
        let mut opamp = self.opamp_settings(&record);
        opamp.heartbeat_interval_seconds = seconds;
        self.offer_settings(&record, Some(opamp)).await?;
        self.announce(
            uid,
            "settings",
            format!("offered heartbeat every {seconds}s"),
        )
        .await;
        Ok(())
    }

    /// Issues a new client certificate and offers it.
    pub(crate) async fn rotate_certificate(&self, uid: InstanceUid) -> Result<(), ApiError> {
        let record = self.record(uid).await?;
        let ca = self
            .options
            .client_ca
            .as_ref()
            .ok_or(ApiError::NoClientCa)?;
        require(
            &record,
            AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS,
        )?;
        let issued = ca
            .issue(uid)
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        let mut opamp = self.opamp_settings(&record);
        opamp.certificate = Some(TlsCertificate {
            cert: issued.cert_pem.into(),
            private_key: issued.key_pem.into(),
            ca_cert: ca.cert_pem().to_owned().into(),
        });
        self.offer_settings(&record, Some(opamp)).await?;
        self.announce(uid, "settings", "offered a new client certificate".into())
            .await;
        Ok(())
    }

    /// The OpAMP settings offered so far, or fresh ones pointing at this
    /// server for the agent's transport (CS-13: the endpoint is required).
    fn opamp_settings(&self, record: &AgentRecord) -> OpAmpConnectionSettings {
        if let Some(existing) = record
            .desired
            .connection_settings
            .as_ref()
            .and_then(|settings| settings.opamp.clone())
        {
            return existing;
        }
        let transport = self
            .registry
            .connection(record.uid)
            .map(|connection| connection.transport())
            .or_else(|| record.connection.as_ref().map(|summary| summary.transport));
        let destination_endpoint = match transport {
            Some(TransportKind::PlainHttp) => self.options.http_endpoint.clone(),
            _ => self.options.websocket_endpoint.clone(),
        };
        let headers = self.options.agent_token.as_ref().map(|token| Headers {
            headers: vec![Header {
                key: "Authorization".into(),
                value: format!("Bearer {token}"),
            }],
        });
        // An agent without a certificate in the offer stops presenting one
        // (CS-16), so an agent on mutual TLS needs one in every offer.
        let on_mutual_tls = self
            .registry
            .connection(record.uid)
            .is_some_and(|connection| {
                connection
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty())
            });
        let certificate = match (&self.options.client_ca, on_mutual_tls) {
            (Some(ca), true) => match ca.issue(record.uid) {
                Ok(issued) => Some(TlsCertificate {
                    cert: issued.cert_pem.into(),
                    private_key: issued.key_pem.into(),
                    ca_cert: ca.cert_pem().to_owned().into(),
                }),
                Err(error) => {
                    tracing::warn!(%error, "cannot issue a client certificate");
                    None
                }
            },
            _ => None,
        };
        OpAmpConnectionSettings {
            destination_endpoint,
            headers,
            certificate,
            heartbeat_interval_seconds: 30,
            ..Default::default()
        }
    }

    /// Offers the agent's connection settings: `opamp` when given, plus own
    /// telemetry destinations when configured.
    async fn offer_settings(
        &self,
        record: &AgentRecord,
        opamp: Option<OpAmpConnectionSettings>,
    ) -> Result<(), ApiError> {
        let mut settings = self.telemetry_settings(record.status.capabilities);
        settings.opamp = opamp;
        if settings == ConnectionSettingsOffers::default() {
            return Ok(());
        }
        self.registry
            .offer_connection_settings(record.uid, settings)
            .await?;
        Ok(())
    }

    fn telemetry_settings(&self, capabilities: AgentCapabilities) -> ConnectionSettingsOffers {
        let mut settings = ConnectionSettingsOffers::default();
        let Some(base) = &self.options.otlp_endpoint else {
            return settings;
        };
        let base = base.trim_end_matches('/');
        let destination = |path: &str| TelemetryConnectionSettings {
            destination_endpoint: format!("{base}{path}"),
            ..Default::default()
        };
        if capabilities.contains(AgentCapabilities::REPORTS_OWN_METRICS) {
            settings.own_metrics = Some(destination("/v1/metrics"));
        }
        if capabilities.contains(AgentCapabilities::REPORTS_OWN_TRACES) {
            settings.own_traces = Some(destination("/v1/traces"));
        }
        if capabilities.contains(AgentCapabilities::REPORTS_OWN_LOGS) {
            settings.own_logs = Some(destination("/v1/logs"));
        }
        settings
    }

    /// Offers own-telemetry destinations to an agent that has none yet
    /// (CS-39), keeping any OpAMP settings already offered.
    async fn ensure_telemetry(&self, record: &AgentRecord) -> Result<(), ApiError> {
        let wanted = self.telemetry_settings(record.status.capabilities);
        if wanted == ConnectionSettingsOffers::default() {
            return Ok(());
        }
        let current = record
            .desired
            .connection_settings
            .clone()
            .unwrap_or_default();
        let same = current.own_metrics == wanted.own_metrics
            && current.own_traces == wanted.own_traces
            && current.own_logs == wanted.own_logs;
        if same {
            return Ok(());
        }
        self.offer_settings(record, current.opamp).await
    }

    // ---- agent traffic ----

    /// Called for every agent message, after the registry merged it.
    /// Returns extra content for the reply.
    pub(crate) async fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> Option<opamp_proto::ServerToAgent> {
        let Ok(uid) = message.uid() else { return None };
        lock(&self.sequence).insert(uid, message.sequence_num);
        let first = lock(&self.resolved).insert(uid);
        if !first && message.agent_description.is_none() {
            return None;
        }
        // New, reconnecting or re-described agents get their config without a click.
        let offer = match self.apply_config(uid).await {
            Ok((_, offer)) => offer,
            Err(ApiError::UnknownAgent(_)) => None,
            Err(error) => {
                tracing::warn!(%error, %uid, "cannot resolve the agent's config");
                None
            }
        };
        if let Ok(record) = self.record(uid).await
            && let Err(error) = self.ensure_telemetry(&record).await
        {
            tracing::warn!(%error, %uid, "cannot offer own-telemetry settings");
        }
        // A plain-HTTP agent would otherwise wait a whole poll for it.
        let queued = offer
            .is_some_and(|offer| offer.delivery == Some(opamp_server::Delivery::QueuedForPoll));
        if queued && connection.transport() == TransportKind::PlainHttp {
            let record = self.record(uid).await.ok()?;
            return Some(opamp_proto::ServerToAgent {
                remote_config: record.desired.remote_config,
                ..Default::default()
            });
        }
        None
    }

    /// Follows registry events: history outcomes, agent events, page updates.
    ///
    /// Subscribes before it returns the future, so an agent that arrives
    /// before the spawned task first runs is not missed.
    pub(crate) fn follow(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let events = self.registry.subscribe();
        let shutdown = self.shutdown_signal();
        let changes = self.store.subscribe_changes();
        self.follow_from(events, shutdown, changes)
    }

    async fn follow_from(
        self: Arc<Self>,
        mut events: broadcast::Receiver<RegistryEvent>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        mut changes: Option<broadcast::Receiver<FleetChange>>,
    ) {
        // Each agent's events are handled in order, different agents' side
        // by side: a fleet-wide push brings thousands at once, and handling
        // them one after the other would fall behind the registry.
        let (handlers, tasks): (Vec<_>, Vec<_>) = (0..EVENT_HANDLERS)
            .map(|_| {
                let (sender, mut queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
                let fleet = Arc::clone(&self);
                let task = tokio::spawn(async move {
                    while let Some(event) = queue.recv().await {
                        fleet.handle(event).await;
                    }
                });
                (sender, task)
            })
            .unzip();
        self.dispatch(&handlers, &mut events, &mut shutdown, &mut changes)
            .await;
        // The handlers finish what is queued and end; waiting for them means
        // nothing holds the store once the follower is done, so a stopped
        // fleet's store file can be opened again at once.
        drop(handlers);
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "fleet event handler failed");
            }
        }
    }

    /// Hands registry events to their agent's handler until shutdown or
    /// until the registry's event stream ends.
    async fn dispatch(
        &self,
        handlers: &[tokio::sync::mpsc::Sender<RegistryEvent>],
        events: &mut broadcast::Receiver<RegistryEvent>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        changes: &mut Option<broadcast::Receiver<FleetChange>>,
    ) {
        loop {
            let next = tokio::select! {
                next = events.recv() => next,
                change = async {
                    match changes.as_mut() {
                        Some(changes) => changes.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match change {
                        Ok(FleetChange::Agent(uid)) => self.publish(uid).await,
                        Ok(FleetChange::Config) => self.notify(UiEvent::Config),
                        Ok(FleetChange::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            self.notify(UiEvent::Resync);
                        }
                        Err(broadcast::error::RecvError::Closed) => *changes = None,
                    }
                    continue;
                }
                () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => return,
            };
            let event = match next {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "page updates lagged; asking pages to reload");
                    self.notify(UiEvent::Resync);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let handler = &handlers[handler_of(event.uid(), handlers.len())];
            if handler.send(event).await.is_err() {
                return;
            }
        }
    }

    async fn handle(&self, event: RegistryEvent) {
        let uid = event.uid();
        match event {
            RegistryEvent::Connected { uid, transport } => {
                let name = view::transport_name(transport);
                self.log_event(uid, "connected", format!("over {name}"))
                    .await;
            }
            RegistryEvent::Disconnected { uid, reason } => {
                lock(&self.resolved).remove(&uid);
                self.log_event(uid, "disconnected", disconnect_text(&reason))
                    .await;
            }
            RegistryEvent::StatusChanged { uid, changes } => {
                if changes.contains(StatusChanges::REMOTE_CONFIG_STATUS) {
                    self.settle(uid).await;
                }
                if changes.contains(StatusChanges::HEALTH)
                    && let Ok(Some(record)) = self.registry.agent(uid).await
                    && let Some(health) = &record.status.health
                {
                    let text = if health.healthy {
                        "healthy"
                    } else {
                        "unhealthy"
                    };
                    let detail = if health.last_error.is_empty() {
                        health.status.clone()
                    } else {
                        health.last_error.clone()
                    };
                    self.log_event(uid, "health", format!("{text} {detail}").trim().to_owned())
                        .await;
                }
                if changes.contains(StatusChanges::PACKAGE_STATUSES) {
                    self.log_package_statuses(uid).await;
                }
            }
            RegistryEvent::UidReassigned { old, new } => {
                self.log_event(new, "identity", format!("was {old}, told to use {new}"))
                    .await;
            }
            RegistryEvent::Throttled { uid, retry_after } => {
                self.log_event(
                    uid,
                    "throttled",
                    format!(
                        "reconnecting too often; told to wait {}",
                        humantime::format_duration(retry_after)
                    ),
                )
                .await;
            }
            RegistryEvent::Removed { uid } => {
                lock(&self.sequence).remove(&uid);
                self.notify(UiEvent::Removed(uid));
                return;
            }
            other => {
                tracing::debug!(?other, "unhandled registry event");
            }
        }
        self.publish(uid).await;
    }

    async fn log_package_statuses(&self, uid: InstanceUid) {
        let Ok(Some(record)) = self.registry.agent(uid).await else {
            return;
        };
        let Some(statuses) = &record.status.package_statuses else {
            return;
        };
        let text: Vec<String> = statuses
            .packages
            .iter()
            .map(|(name, status)| {
                let state = status
                    .status()
                    .as_str_name()
                    .trim_start_matches("PackageStatusEnum_");
                match &status.download_details {
                    Some(details) => format!("{name} {state} {:.0}%", details.download_percent),
                    None => format!("{name} {state}"),
                }
            })
            .collect();
        if !text.is_empty() {
            self.log_event(uid, "package", text.join(", ")).await;
        }
    }
}

fn disconnect_text(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::AgentDisconnect => "agent said goodbye".into(),
        DisconnectReason::ClosedByAgent { code: Some(code) } => format!("closed by agent ({code})"),
        DisconnectReason::ClosedByAgent { code: None } => "closed by agent".into(),
        DisconnectReason::Stale => "stopped polling".into(),
        DisconnectReason::Shutdown => "server shutting down".into(),
        other => format!("{other:?}"),
    }
}

fn short(hash: &[u8]) -> String {
    let text = hex::encode(hash);
    text[..text.len().min(12)].to_owned()
}

fn require(record: &AgentRecord, capability: AgentCapabilities) -> Result<(), ApiError> {
    if record.status.capabilities.contains(capability) {
        Ok(())
    } else {
        Err(ApiError::NotAccepted(capability))
    }
}

/// Which of `count` event handlers takes the events of `uid`.
fn handler_of(uid: InstanceUid, count: usize) -> usize {
    let spread = uid.as_bytes().iter().fold(0usize, |acc, byte| {
        acc.wrapping_mul(31).wrapping_add(usize::from(*byte))
    });
    spread % count.max(1)
}

/// The first group by name whose selector matches the agent.
fn group_config(
    record: &AgentRecord,
    groups: &BTreeMap<String, Group>,
) -> Option<(ConfigSource, AgentConfigMap)> {
    let description = record.status.description.as_ref()?;
    groups
        .iter()
        .find(|(_, group)| selector_matches(&group.selector, description))
        .map(|(name, group)| (ConfigSource::Group(name.clone()), group.config.clone()))
}

/// True when every selector entry equals an identifying or non-identifying
/// attribute of the agent. An empty selector matches nothing.
pub(crate) fn selector_matches(
    selector: &BTreeMap<String, String>,
    description: &AgentDescription,
) -> bool {
    let lookup = |key: &str| {
        description
            .identifying(key)
            .or_else(|| description.non_identifying(key))
            .map(|value| value.to_display_string())
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, wanted)| lookup(key).as_deref() == Some(wanted.as_str()))
}

impl From<SendError> for ApiError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::UnknownAgent(uid) => Self::UnknownAgent(uid),
            SendError::NotAccepted { capability, .. } => Self::NotAccepted(capability),
            SendError::CustomCapabilityNotAnnounced { capability, .. } => {
                Self::CustomCapabilityNotAnnounced(capability)
            }
            SendError::NotConnected(uid) => Self::NotConnected(uid),
            other => Self::Delivery(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_all_entries_on_either_attribute_list() {
        let description = AgentDescription::for_service("checkout", "1.0")
            .with_non_identifying("deployment.environment.name", "prod");
        let selector = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(selector_matches(
            &selector(&[("service.name", "checkout")]),
            &description
        ));
        assert!(selector_matches(
            &selector(&[
                ("service.name", "checkout"),
                ("deployment.environment.name", "prod")
            ]),
            &description
        ));
        assert!(!selector_matches(
            &selector(&[
                ("service.name", "checkout"),
                ("deployment.environment.name", "dev")
            ]),
            &description
        ));
        assert!(!selector_matches(
            &selector(&[("service.name", "cart")]),
            &description
        ));
        assert!(
            !selector_matches(&selector(&[]), &description),
            "empty selects nothing"
        );
    }
}
