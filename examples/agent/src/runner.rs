//! One agent: an [`OpampClient`] wired to the agent's state directory, its
//! work (simulated, or a supervised child), packages, certificates and own
//! telemetry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use http::{HeaderValue, header::AUTHORIZATION};
use nix::sys::signal::Signal;
use opamp_client::proto::{
    AgentConfigMap, AgentRemoteConfig, AvailableComponents, CommandType, ComponentDetails,
    ConnectionSettingsOffers, CustomCapabilities, CustomMessage, EffectiveConfig, KeyValue,
    OpAmpConnectionSettings, RemoteConfigStatus, RemoteConfigStatuses, ServerErrorResponse,
    ServerToAgentCommand, message_hash, semconv,
};
use opamp_client::{
    AgentCapabilities, AgentDescription, Callbacks, ClientError, ComponentHealth, FsPackageStore,
    InstanceUid, MessageData, OpampClient, PackageEvent, PackageStore, SettingsOutcome,
    TransportError,
};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::AgentError;
use super::cli::AgentArgs;
use super::packages::{Ed25519Verifier, SupervisedStore};
use super::state::{StateDir, is_empty_config, validate};
use super::supervisor::{
    ChildStatus, HealthCheck, Supervisor, SupervisorOptions, split_command, unix_nanos,
};
use super::telemetry::{AgentStats, OwnSpan, OwnTelemetry, TelemetryKind};
use super::tls::{Credentials, client_tls};

/// The custom capability whose messages the agent sends straight back.
pub(crate) const ECHO_CAPABILITY: &str = "io.opamp-rs.echo";

/// Health status of the client certificate after a rotation was saved.
pub(crate) const ROTATED_CERTIFICATE: &str = "rotated certificate in use and saved";
/// Health status of a certificate saved by an earlier run.
pub(crate) const SAVED_CERTIFICATE: &str = "saved rotated certificate in use";
/// Health status while a CSR waits for its certificate.
pub(crate) const CSR_PENDING: &str = "CSR sent; waiting for a certificate";

/// How one agent of the process is set up.
#[derive(Debug, Clone)]
pub(crate) struct AgentSetup {
    pub(crate) args: Arc<AgentArgs>,
    pub(crate) state_dir: PathBuf,
    /// Whether this agent exports own telemetry (the first of a scale run).
    pub(crate) own_telemetry: bool,
}

/// A running agent.
pub(crate) struct Agent {
    client: OpampClient,
    shared: Arc<Shared>,
    follower: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("uid", &self.client.instance_uid())
            .finish_non_exhaustive()
    }
}

enum Work {
    /// Pretends to run a pipeline; restart restarts it.
    Simulated,
    /// Runs and manages a child process.
    Supervised(Supervisor),
}

/// What the health report is built from.
#[derive(Debug, Clone)]
struct HealthState {
    work_started: SystemTime,
    restarts: u64,
    config_error: Option<String>,
    /// Own-telemetry offers that failed, by health component name.
    telemetry_errors: BTreeMap<&'static str, String>,
    /// Where the client certificate stands, when one is involved.
    certificate: Option<String>,
    child: Option<ChildStatus>,
}

struct Shared {
    args: Arc<AgentArgs>,
    state: StateDir,
    runtime: Handle,
    client: OnceLock<OpampClient>,
    work: Work,
    store: FsPackageStore,
    credentials: Credentials,
    telemetry: Option<Arc<OwnTelemetry>>,
    stats: Arc<AgentStats>,
    health: Mutex<HealthState>,
    started: SystemTime,
}

impl Agent {
    /// Sets up the agent from its state directory and starts its client.
    pub(crate) async fn start(setup: AgentSetup) -> Result<Self, AgentError> {
        let args = setup.args;
        let state_error = |error: std::io::Error| AgentError::State {
            path: setup.state_dir.clone(),
            source: error,
        };
        let state = StateDir::open(&setup.state_dir).map_err(state_error)?;
        let uid = state.instance_uid().map_err(state_error)?;
        let credentials = Credentials::new(state.tls_dir());
        let tls = client_tls(&args, &credentials).map_err(AgentError::Tls)?;
        let runtime = Handle::current();
        let stats = Arc::new(AgentStats::default());

        // Everything that can fail on bad flags is checked before a
        // supervised child is started.
        let authorization = match &args.bearer_token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| AgentError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let verifier = args
            .package_key
            .as_deref()
            .map(Ed25519Verifier::from_flag)
            .transpose()
            .map_err(AgentError::PackageKey)?;
        let store = FsPackageStore::open(state.packages_dir())
            .await
            .map_err(|error| AgentError::Packages(error.to_string()))?;
        let description = describe(&args, uid);
        let telemetry = setup.own_telemetry.then(|| {
            Arc::new(OwnTelemetry::new(
                runtime.clone(),
                &description.identifying_attributes,
                args.own_metrics_interval,
                args.insecure,
                Arc::clone(&stats),
            ))
        });
        let (work, package_store): (Work, Arc<dyn PackageStore>) = if args.supervise {
            let (program, command_args) =
                args.command.split_first().ok_or(AgentError::NoCommand)?;
            let supervisor = Supervisor::start(SupervisorOptions {
                program: PathBuf::from(program),
                args: command_args.to_vec(),
                state: state.clone(),
                instance_uid: uid,
                stop_timeout: args.stop_timeout,
                min_uptime: args.min_uptime,
                max_backoff: args.max_backoff,
                update_probation: args.update_probation,
                fallback_config: args.fallback_config.clone(),
                validate_command: supervisor_command(
                    "--validate-command",
                    args.validate_command.as_deref(),
                )?,
                health_check: health_check(&args)?,
                health_interval: args.health_interval,
                ready_after: args.ready_after,
                apply_timeout: args.apply_timeout,
                telemetry: telemetry.clone(),
            });
            let wrapped = SupervisedStore::new(
                store.clone(),
                supervisor.clone(),
                state.supervised_dir().join("bin"),
            );
            (Work::Supervised(supervisor), Arc::new(wrapped))
        } else {
            (Work::Simulated, Arc::new(store.clone()))
        };

        let shared = Arc::new(Shared {
            args: Arc::clone(&args),
            state: state.clone(),
            runtime,
            client: OnceLock::new(),
            work,
            store,
            credentials,
            telemetry,
            stats,
            health: Mutex::new(HealthState {
                work_started: SystemTime::now(),
                restarts: 0,
                config_error: None,
                telemetry_errors: BTreeMap::new(),
                certificate: None,
                child: None,
            }),
            started: SystemTime::now(),
        });

        let mut capabilities = AgentCapabilities::ACCEPTS_REMOTE_CONFIG
            | AgentCapabilities::REPORTS_REMOTE_CONFIG
            | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
            | AgentCapabilities::REPORTS_HEALTH
            | AgentCapabilities::REPORTS_HEARTBEAT
            | AgentCapabilities::ACCEPTS_PACKAGES
            | AgentCapabilities::REPORTS_PACKAGE_STATUSES
            | AgentCapabilities::ACCEPTS_RESTART_COMMAND
            | AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
            | AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS
            | AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS;
        if shared.telemetry.is_some() {
            capabilities |= AgentCapabilities::REPORTS_OWN_METRICS
                | AgentCapabilities::REPORTS_OWN_TRACES
                | AgentCapabilities::REPORTS_OWN_LOGS;
        }
        let mut builder = OpampClient::builder(args.endpoint.clone())
            .instance_uid(uid)
            .agent_description(description)
            .capabilities(capabilities)
            .heartbeat_interval(args.heartbeat)
            .tls(tls)
            .package_store(package_store)
            .callbacks(AgentCallbacks(Arc::clone(&shared)));
        if let Some(status) = state.remote_config_status() {
            builder = builder.remote_config_status(status);
        }
        if let Some(token) = authorization {
            builder = builder.header(AUTHORIZATION, token);
        }
        if let Some(verifier) = verifier {
            builder = builder.package_verifier(Arc::new(verifier));
        }
        let client = match builder.build() {
            Ok(client) => client,
            Err(error) => {
                shared.stop_work().await;
                return Err(AgentError::Client(error));
            }
        };
        let _ = shared.client.set(client.clone());

        if let Work::Supervised(supervisor) = &shared.work {
            let initial = supervisor.status().borrow().clone();
            shared.lock_health().child = Some(initial);
        }
        client.set_health(shared.health());
        client.set_custom_capabilities(CustomCapabilities {
            capabilities: vec![ECHO_CAPABILITY.to_owned()],
        });
        client.set_available_components(shared.available_components(&[]));
        if args.client_cert.is_none() && shared.credentials.saved_identity().is_some() {
            shared.lock_health().certificate = Some(SAVED_CERTIFICATE.to_owned());
            client.set_health(shared.health());
        } else if args.csr && args.client_cert.is_none() {
            shared.request_certificate(uid);
        }
        if let Err(error) = client.start().await {
            shared.stop_work().await;
            return Err(AgentError::Client(error));
        }
        tracing::info!(%uid, endpoint = %args.endpoint, state = %state.root().display(), "agent started");

        let follower = match &shared.work {
            Work::Supervised(supervisor) => {
                let mut status = supervisor.status();
                let shared = Arc::clone(&shared);
                Some(tokio::spawn(async move {
                    while status.changed().await.is_ok() {
                        let child = status.borrow_and_update().clone();
                        shared
                            .stats
                            .restarts
                            .store(child.restarts, Ordering::Relaxed);
                        shared.lock_health().child = Some(child);
                        shared.report_health();
                    }
                }))
            }
            Work::Simulated => None,
        };
        shared.refresh_available_components();
        Ok(Self {
            client,
            shared,
            follower,
        })
    }

    /// The agent's instance uid.
    pub(crate) fn instance_uid(&self) -> InstanceUid {
        self.client.instance_uid()
    }

    /// Stops the child (supervisor mode) with `signal`, says goodbye to the
    /// server (`agent_disconnect`) and stops the own-telemetry export.
    pub(crate) async fn stop(self, signal: Signal) {
        if let Work::Supervised(supervisor) = &self.shared.work {
            supervisor.shutdown(signal).await;
            // Report the stopped child with the goodbye.
            let status = supervisor.status().borrow().clone();
            self.shared.lock_health().child = Some(status);
            self.shared.report_health();
        }
        self.client.stop().await;
        if let Some(follower) = self.follower {
            follower.abort();
        }
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(telemetry) = &shared.telemetry {
                telemetry.stop();
            }
        })
        .await;
    }
}

/// The agent description: service name and version, instance id and any
/// `--attribute`s (identifying); OS, host and mode (non-identifying).
fn describe(args: &AgentArgs, uid: InstanceUid) -> AgentDescription {
    let mut description =
        AgentDescription::for_service(args.service_name.clone(), env!("CARGO_PKG_VERSION"))
            .with_identifying(semconv::SERVICE_INSTANCE_ID, uid.to_string());
    for (key, value) in &args.attributes {
        description = description.with_identifying(key.clone(), value.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    description = description
        .with_non_identifying(semconv::OS_TYPE, std::env::consts::OS)
        .with_non_identifying(semconv::HOST_ARCH, std::env::consts::ARCH)
        .with_non_identifying(
            "opamp.agent.mode",
            if args.supervise {
                "supervisor"
            } else {
                "simulated"
            },
        );
    if !host.is_empty() {
        description = description.with_non_identifying(semconv::HOST_NAME, host);
    }
    description
}

/// A `--validate-command`/`--health-command` flag as program and arguments.
fn supervisor_command(flag: &str, text: Option<&str>) -> Result<Option<Vec<String>>, AgentError> {
    match text {
        None => Ok(None),
        Some(text) => split_command(text)
            .map(Some)
            .ok_or_else(|| AgentError::SupervisorFlag(format!("{flag} is empty"))),
    }
}

/// The child's health check from `--health-url` or `--health-command`.
fn health_check(args: &AgentArgs) -> Result<Option<HealthCheck>, AgentError> {
    if let Some(url) = &args.health_url {
        let uri: http::Uri = url
            .parse()
            .map_err(|error| AgentError::SupervisorFlag(format!("--health-url: {error}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(AgentError::SupervisorFlag(
                "--health-url must be an http:// URL".into(),
            ));
        }
        return Ok(Some(HealthCheck::Url(uri)));
    }
    Ok(
        supervisor_command("--health-command", args.health_command.as_deref())?
            .map(HealthCheck::Command),
    )
}

fn component(healthy: bool, status: &str, last_error: Option<&str>) -> ComponentHealth {
    ComponentHealth {
        healthy,
        status: status.to_owned(),
        last_error: last_error.unwrap_or_default().to_owned(),
        ..Default::default()
    }
}

impl Shared {
    /// Stops the supervised child, if any.
    async fn stop_work(&self) {
        if let Work::Supervised(supervisor) = &self.work {
            supervisor.shutdown(Signal::SIGTERM).await;
        }
    }

    fn span(&self, name: &'static str) -> OwnSpan {
        OwnSpan::start(self.telemetry.as_deref(), name)
    }

    /// The effective config: the files on disk, or the fallback config
    /// while a supervised child runs on it.
    fn effective_config(&self) -> EffectiveConfig {
        if let Work::Supervised(supervisor) = &self.work
            && let Some(fallback) = supervisor.fallback_in_use(&self.state)
        {
            match std::fs::read(fallback) {
                Ok(body) => {
                    let mut config = AgentConfigMap::default();
                    config.config_map.insert(
                        String::new(),
                        opamp_client::proto::AgentConfigObject {
                            body: body.into(),
                            content_type: String::new(),
                            role: String::new(),
                        },
                    );
                    return EffectiveConfig {
                        config_map: Some(config),
                    };
                }
                Err(error) => {
                    tracing::warn!(%error, path = %fallback.display(), "cannot read the fallback config");
                }
            }
        }
        self.state.effective_config()
    }

    fn client(&self) -> Option<&OpampClient> {
        self.client.get()
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The health tree: the work (simulated pipeline or the child), the
    /// config, and own telemetry.
    fn health(&self) -> ComponentHealth {
        let state = self.lock_health().clone();
        let mut components = BTreeMap::new();
        match &state.child {
            Some(child) => {
                components.insert(child.name.clone(), child.health());
            }
            None => {
                let mut pipeline = component(true, "running", None);
                pipeline.start_time_unix_nano = unix_nanos(state.work_started);
                pipeline.attributes = vec![KeyValue::new(
                    "restart_count",
                    i64::try_from(state.restarts).unwrap_or(i64::MAX),
                )];
                components.insert("pipeline".to_owned(), pipeline);
            }
        }
        let config = match &state.config_error {
            Some(error) => component(false, "last remote config failed", Some(error)),
            None => component(true, "ok", None),
        };
        components.insert("config".to_owned(), config);
        if let Some(certificate) = &state.certificate {
            components.insert(
                "client-certificate".to_owned(),
                component(true, certificate, None),
            );
        }
        if let Some(telemetry) = &self.telemetry {
            for kind in TelemetryKind::ALL {
                let name = kind.component();
                let own = match (
                    state.telemetry_errors.get(name),
                    telemetry.destination(kind),
                ) {
                    (Some(error), _) => Some(component(false, "failed", Some(error))),
                    (None, Some(destination)) => Some(component(
                        true,
                        &format!("exporting to {destination}"),
                        None,
                    )),
                    (None, None) => None,
                };
                if let Some(own) = own {
                    components.insert(name.to_owned(), own);
                }
            }
        }
        let healthy = components.values().all(|c| c.healthy);
        ComponentHealth {
            healthy,
            start_time_unix_nano: unix_nanos(self.started),
            status: if healthy { "running" } else { "degraded" }.to_owned(),
            last_error: components
                .iter()
                .find(|(_, c)| !c.healthy)
                .map(|(name, c)| format!("{name}: {}", c.last_error))
                .unwrap_or_default(),
            component_health_map: components,
            ..Default::default()
        }
    }

    fn report_health(&self) {
        if let Some(client) = self.client() {
            client.set_health(self.health());
        }
    }

    /// What the agent can run: simulated components, or the supervised
    /// executable; plus installed packages.
    fn available_components(&self, packages: &[(String, String)]) -> AvailableComponents {
        let details = |metadata: Vec<KeyValue>| ComponentDetails {
            metadata,
            ..Default::default()
        };
        let group = |names: &[&str]| ComponentDetails {
            sub_component_map: names
                .iter()
                .map(|name| {
                    (
                        (*name).to_owned(),
                        details(vec![KeyValue::new("version", env!("CARGO_PKG_VERSION"))]),
                    )
                })
                .collect(),
            ..Default::default()
        };
        let mut components = BTreeMap::new();
        match &self.work {
            Work::Simulated => {
                components.insert("receivers".to_owned(), group(&["otlp", "hostmetrics"]));
                components.insert("processors".to_owned(), group(&["batch"]));
                components.insert("exporters".to_owned(), group(&["debug", "otlphttp"]));
            }
            Work::Supervised(supervisor) => {
                let status = supervisor.status().borrow().clone();
                components.insert(
                    status.name.clone(),
                    details(vec![KeyValue::new(
                        "process.executable.path",
                        status.program.display().to_string(),
                    )]),
                );
            }
        }
        if !packages.is_empty() {
            components.insert(
                "packages".to_owned(),
                ComponentDetails {
                    sub_component_map: packages
                        .iter()
                        .map(|(name, version)| {
                            (
                                name.clone(),
                                details(vec![KeyValue::new("version", version.clone())]),
                            )
                        })
                        .collect(),
                    ..Default::default()
                },
            );
        }
        let mut available = AvailableComponents {
            components,
            hash: Default::default(),
        };
        available.hash = message_hash(&available);
        available
    }

    /// Re-reads the installed packages and reports the components.
    fn refresh_available_components(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            let installed = match shared.store.installed().await {
                Ok(installed) => installed,
                Err(error) => {
                    tracing::warn!(%error, "cannot list installed packages");
                    return;
                }
            };
            let packages: Vec<(String, String)> = installed
                .into_iter()
                .map(|package| (package.info.name, package.info.version))
                .collect();
            if let Some(client) = shared.client() {
                client.set_available_components(shared.available_components(&packages));
            }
        });
    }

    fn request_certificate(&self, uid: InstanceUid) {
        let Some(client) = self.client() else { return };
        let outcome = self.credentials.csr_request(uid).and_then(|request| {
            client
                .request_connection_settings(request)
                .map_err(|error| format!("cannot request a certificate: {error}"))
        });
        let status = match outcome {
            Ok(()) => {
                tracing::info!("certificate requested with a CSR");
                CSR_PENDING.to_owned()
            }
            Err(error) => {
                tracing::warn!(%error, "no certificate requested");
                format!("no CSR sent: {error}")
            }
        };
        self.lock_health().certificate = Some(status);
        self.report_health();
    }

    /// Applies a remote config (RCFG-*): APPLYING, validate, write to disk,
    /// reload the work, report the effective config, then APPLIED; FAILED
    /// (with the old config kept) if any step fails.
    fn apply_remote_config(&self, client: &OpampClient, offer: &AgentRemoteConfig) {
        let hash = offer.config_hash.clone();
        let report = |status: RemoteConfigStatuses, error_message: String| {
            let status = RemoteConfigStatus {
                last_remote_config_hash: hash.clone(),
                status: status as i32,
                error_message,
            };
            if let Err(error) = self.state.save_remote_config_status(&status) {
                tracing::warn!(%error, "cannot save the remote config status");
            }
            client.set_remote_config_status(status);
        };
        report(RemoteConfigStatuses::Applying, String::new());
        let config = offer.config.clone().unwrap_or_default();
        let mut span = self.span("agent.apply_remote_config");
        span.attribute("config.hash", hex::encode(&hash));
        span.attribute("config.files", config.config_map.len() as i64);
        if is_empty_config(&config) {
            // "No config for you": keep what runs (see the module docs).
            tracing::info!(hash = %hex::encode(&hash), "empty remote config: keeping the current config");
            span.attribute("config.empty", true);
            self.lock_health().config_error = None;
            report(RemoteConfigStatuses::Applied, String::new());
            self.report_health();
            return;
        }
        let outcome = self.write_and_reload(&config);
        // A supervisor may have restored the previous files.
        client.update_effective_config();
        match outcome {
            Ok(()) => {
                self.stats.configs_applied.fetch_add(1, Ordering::Relaxed);
                self.lock_health().config_error = None;
                report(RemoteConfigStatuses::Applied, String::new());
                tracing::info!(hash = %hex::encode(&hash), files = config.config_map.len(), "remote config applied");
            }
            Err(error) => {
                tracing::warn!(%error, "remote config failed");
                span.fail(&error);
                self.lock_health().config_error = Some(error.clone());
                report(RemoteConfigStatuses::Failed, error);
            }
        }
        self.report_health();
    }

    fn write_and_reload(&self, config: &AgentConfigMap) -> Result<(), String> {
        validate(config)?;
        match &self.work {
            Work::Simulated => {
                self.state
                    .write_config(config)
                    .map_err(|error| format!("cannot write the config: {error}"))?;
                tracing::info!("simulated pipeline reloaded its config");
                Ok(())
            }
            Work::Supervised(supervisor) => self.runtime.block_on(supervisor.apply(config.clone())),
        }
    }

    fn restart(&self) {
        match &self.work {
            Work::Simulated => {
                {
                    let mut health = self.lock_health();
                    health.restarts += 1;
                    health.work_started = SystemTime::now();
                }
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::info!("simulated work restarted");
                self.report_health();
            }
            Work::Supervised(supervisor) => {
                if let Err(error) = self.runtime.block_on(supervisor.restart("restart command")) {
                    tracing::warn!(%error, "restart failed");
                }
            }
        }
    }

    /// Sends a custom message back as it came (capability
    /// [`ECHO_CAPABILITY`]), waiting for a pending one to go first.
    fn echo(&self, client: &OpampClient, message: &CustomMessage) {
        let client = client.clone();
        let reply = message.clone();
        self.runtime.spawn(async move {
            loop {
                match client.send_custom_message(reply.clone()) {
                    Ok(()) => return,
                    Err(ClientError::CustomMessagePending) => client.custom_message_sent().await,
                    Err(error) => {
                        tracing::warn!(%error, "cannot echo a custom message");
                        return;
                    }
                }
            }
        });
    }
}

/// The client's callbacks, forwarding to [`Shared`].
struct AgentCallbacks(Arc<Shared>);

impl Callbacks for AgentCallbacks {
    fn on_connect(&self) {
        tracing::info!(endpoint = %self.0.args.endpoint, "connected");
    }

    fn on_connect_failed(&self, error: &TransportError) {
        tracing::warn!(%error, "connection failed; retrying");
    }

    fn on_error_response(&self, error: &ServerErrorResponse) {
        tracing::warn!(message = %error.error_message, kind = error.r#type, "server error response");
    }

    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        if let Some(offer) = &data.remote_config {
            self.0.apply_remote_config(client, offer);
        }
        if let Some(message) = &data.custom_message {
            if message.capability == ECHO_CAPABILITY {
                self.0.echo(client, message);
            } else {
                tracing::debug!(capability = %message.capability, "custom message ignored");
            }
        }
        if let Some(capabilities) = &data.custom_capabilities {
            tracing::debug!(?capabilities.capabilities, "server custom capabilities");
        }
    }

    fn on_opamp_connection_settings<'a>(
        &'a self,
        settings: &'a OpAmpConnectionSettings,
    ) -> BoxFuture<'a, Result<OpAmpConnectionSettings, String>> {
        Box::pin(async move {
            tracing::info!(
                endpoint = %settings.destination_endpoint,
                heartbeat_seconds = settings.heartbeat_interval_seconds,
                certificate = settings.certificate.is_some(),
                "OpAMP connection settings offered"
            );
            self.0.credentials.complete_offer(settings)
        })
    }

    fn on_opamp_connection_settings_outcome(
        &self,
        settings: &OpAmpConnectionSettings,
        outcome: Result<(), &str>,
    ) {
        match outcome {
            Ok(()) => {
                tracing::info!("new OpAMP connection settings verified");
                let has_certificate = settings
                    .certificate
                    .as_ref()
                    .is_some_and(|certificate| !certificate.cert.is_empty());
                if has_certificate {
                    let status = match self.0.credentials.save_verified(settings) {
                        Ok(()) => ROTATED_CERTIFICATE.to_owned(),
                        Err(error) => {
                            tracing::warn!(%error, "cannot save the new client certificate");
                            format!("new certificate in use but not saved: {error}")
                        }
                    };
                    self.0.lock_health().certificate = Some(status);
                    self.0.report_health();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "new OpAMP connection settings failed; kept the old ones")
            }
        }
    }

    fn on_other_connection_settings(&self, offers: &ConnectionSettingsOffers) -> SettingsOutcome {
        let Some(telemetry) = &self.0.telemetry else {
            return SettingsOutcome::Applied;
        };
        let offered = [
            (TelemetryKind::Metrics, &offers.own_metrics),
            (TelemetryKind::Traces, &offers.own_traces),
            (TelemetryKind::Logs, &offers.own_logs),
        ];
        let mut errors = Vec::new();
        for (kind, offer) in offered {
            let Some(offer) = offer else { continue };
            let result = telemetry.apply(kind, offer);
            let mut health = self.0.lock_health();
            match result {
                Ok(()) => {
                    health.telemetry_errors.remove(kind.component());
                }
                Err(error) => {
                    health
                        .telemetry_errors
                        .insert(kind.component(), error.clone());
                    errors.push(format!("{}: {error}", kind.component()));
                }
            }
        }
        self.0.report_health();
        if errors.is_empty() {
            SettingsOutcome::Applied
        } else {
            SettingsOutcome::Failed(errors.join("; "))
        }
    }

    fn on_command(&self, command: &ServerToAgentCommand) {
        if command.r#type == CommandType::Restart as i32 {
            self.0.restart();
        }
    }

    fn on_new_instance_uid(&self, uid: InstanceUid) {
        tracing::info!(%uid, "server assigned a new instance uid");
        if let Err(error) = self.0.state.save_instance_uid(uid) {
            tracing::warn!(%error, "cannot save the new instance uid");
        }
        if let Some(client) = self.0.client() {
            client.set_agent_description(describe(&self.0.args, uid));
        }
        // CS-37: a certificate naming the old uid is replaced.
        if self.0.args.csr && self.0.args.client_cert.is_none() {
            self.0.request_certificate(uid);
        }
    }

    fn effective_config(&self) -> Option<EffectiveConfig> {
        Some(self.0.effective_config())
    }

    fn on_package_event(&self, event: &PackageEvent) {
        match event {
            PackageEvent::Installed(package) => {
                tracing::info!(name = %package.info.name, version = %package.info.version, "package installed");
                let mut span = self.0.span("agent.package_install");
                span.attribute("package.name", package.info.name.clone());
                span.attribute("package.version", package.info.version.clone());
            }
            PackageEvent::Failed { name, error } => {
                tracing::warn!(%name, %error, "package failed");
                let mut span = self.0.span("agent.package_install");
                span.attribute("package.name", name.clone());
                span.fail(&error.to_string());
            }
            PackageEvent::Removed { name } => {
                tracing::info!(%name, "package removed");
                let mut span = self.0.span("agent.package_remove");
                span.attribute("package.name", name.clone());
            }
            _ => {}
        }
        self.0.refresh_available_components();
    }
}
