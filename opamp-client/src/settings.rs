//! Configuring a client: [`OpampClient::builder`] and [`ClientBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opamp_proto::{
    AgentCapabilities, AgentDescription, ConnectionSettingsStatus, InstanceUid, RemoteConfigStatus,
};
use opamp_transport::{
    ClientOptions, ClientTlsConfig, ExponentialBackoff, HeaderHook, ProxyConfig, RetryPolicyFactory,
};
use url::Url;

use crate::client::{Callbacks, NoCallbacks, OpampClient, StartParts};
use crate::endpoint::transport_for;
use crate::error::ClientError;
use crate::packages::{PackageStore, PackageVerifier};
use crate::protocol::{ClientCore, CoreConfig, DEFAULT_HEARTBEAT_INTERVAL, TransportKind};

/// Default bound on the goodbye exchange when stopping (WS-17, HTTP-24).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl OpampClient {
    /// Starts configuring a client for `endpoint`; see [`ClientBuilder`].
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }
}

/// Configures an [`OpampClient`].
///
/// The endpoint's scheme picks the transport: `ws://` or `wss://` for
/// WebSocket, `http://` or `https://` for plain HTTP.
///
/// ```
/// use std::time::Duration;
/// use opamp_client::{AgentCapabilities, AgentDescription, OpampClient};
///
/// let client = OpampClient::builder("wss://opamp.example.com/v1/opamp")
///     .agent_description(AgentDescription::for_service("io.example.agent", "1.0.0"))
///     .capabilities(AgentCapabilities::ACCEPTS_REMOTE_CONFIG | AgentCapabilities::REPORTS_REMOTE_CONFIG)
///     .heartbeat_interval(Duration::from_secs(60))
///     .build()?;
/// # let _ = client;
/// # Ok::<(), opamp_client::ClientError>(())
/// ```
pub struct ClientBuilder {
    pub(crate) endpoint: String,
    pub(crate) headers: HeaderMap,
    pub(crate) header_hook: Option<HeaderHook>,
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) proxy: Option<ProxyConfig>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) instance_uid: Option<InstanceUid>,
    pub(crate) capabilities: AgentCapabilities,
    pub(crate) description: Option<AgentDescription>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) polling_interval: Option<Duration>,
    pub(crate) compression: bool,
    pub(crate) max_message_size: usize,
    pub(crate) retry_policy: RetryPolicyFactory,
    pub(crate) remote_config_status: Option<RemoteConfigStatus>,
    pub(crate) connection_settings_status: Option<ConnectionSettingsStatus>,
    pub(crate) callbacks: Arc<dyn Callbacks>,
    pub(crate) package_store: Option<Arc<dyn PackageStore>>,
    pub(crate) package_verifier: Option<Arc<dyn PackageVerifier>>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) allow_insecure_offers: bool,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may hold credentials: names only.
        f.debug_struct("ClientBuilder")
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("capabilities", &self.capabilities)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("polling_interval", &self.polling_interval)
            .field("compression", &self.compression)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: HeaderMap::new(),
            header_hook: None,
            tls: None,
            proxy: None,
            connect_timeout: None,
            request_timeout: None,
            instance_uid: None,
            capabilities: AgentCapabilities::REPORTS_STATUS,
            description: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            polling_interval: None,
            compression: false,
            max_message_size: opamp_transport::DEFAULT_MAX_MESSAGE_SIZE,
            retry_policy: ExponentialBackoff::default_factory(),
            remote_config_status: None,
            connection_settings_status: None,
            callbacks: Arc::new(NoCallbacks),
            package_store: None,
            package_verifier: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            allow_insecure_offers: false,
        }
    }

    /// Adds a header sent with every connect or request (e.g.
    /// `Authorization`, CONN-05).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Adds headers sent with every connect or request.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }

    opamp_transport::builder_setters! {
        /// A hook that edits the headers right before each connect or request,
        /// e.g. to insert a fresh token.
        pub fn header_hook(hook: impl Fn(&mut HeaderMap) + Send + Sync + 'static)
            => header_hook = Some(Arc::new(hook));

        /// TLS settings for `wss://` and `https://`.
        pub fn tls(tls: ClientTlsConfig) => tls = Some(tls);

        /// Connects through an HTTP `CONNECT` proxy.
        pub fn proxy(proxy: ProxyConfig) => proxy = Some(proxy);

        /// Bound on opening one connection (default 30 s).
        pub fn connect_timeout(timeout: Duration) => connect_timeout = Some(timeout);

        /// Bound on one plain-HTTP exchange (default 60 s).
        pub fn request_timeout(timeout: Duration) => request_timeout = Some(timeout);

        /// The agent's instance uid, e.g. one persisted earlier (UID-02).
        /// Default: a fresh UUIDv7 (UID-04).
        pub fn instance_uid(uid: InstanceUid) => instance_uid = Some(uid);

        /// The agent's capabilities; `ReportsStatus` is always added (CAP-03).
        pub fn capabilities(capabilities: AgentCapabilities) => capabilities = capabilities;

        /// The agent description (required, here or with
        /// [`OpampClient::set_agent_description`] before start).
        pub fn agent_description(description: AgentDescription) => description = Some(description);

        /// The heartbeat interval while the server offers none (default 30 s,
        /// HB-10). `Duration::ZERO` disables WebSocket heartbeats. Heartbeats are
        /// sent only with `ReportsHeartbeat`; the server's
        /// `heartbeat_interval_seconds` wins (HB-03), and a server-sent 0
        /// disables them over WebSocket (AMB-01).
        pub fn heartbeat_interval(interval: Duration) => heartbeat_interval = interval;

        /// The plain-HTTP polling interval while the server offers no heartbeat
        /// interval (default: the heartbeat interval, or 30 s if that is zero;
        /// HTTP-13). A server-offered non-zero heartbeat interval replaces it
        /// (HTTP-14).
        pub fn polling_interval(interval: Duration) => polling_interval = Some(interval);

        /// Gzips plain-HTTP request bodies (HTTP-05). Responses are always
        /// accepted gzipped. WebSocket messages are sent uncompressed.
        pub fn compression(enabled: bool) => compression = enabled;

        /// Size limit for one message in either direction (default 64 MiB,
        /// WS-08, HTTP-16).
        pub fn max_message_size(bytes: usize) => max_message_size = bytes;

        /// How long to wait between failed attempts (default
        /// [`ExponentialBackoff`]: full jitter, 1 s doubling to 60 s). A fresh
        /// policy is made per client.
        pub fn retry_policy(factory: RetryPolicyFactory) => retry_policy = factory;

        /// The remote config status saved at the end of the previous run, so an
        /// already applied config is reported and not applied again.
        pub fn remote_config_status(status: RemoteConfigStatus)
            => remote_config_status = Some(status);

        /// The connection settings status saved at the end of the previous run;
        /// an offer with the same hash is not processed again.
        pub fn connection_settings_status(status: ConnectionSettingsStatus)
            => connection_settings_status = Some(status);

        /// The callbacks (default: [`NoCallbacks`]).
        pub fn callbacks(callbacks: impl Callbacks) => callbacks = Arc::new(callbacks);

        /// Enables packages (PKG-*): offers are installed into `store`. Requires
        /// `AcceptsPackages` (and usually `ReportsPackageStatuses`).
        pub fn package_store(store: Arc<dyn PackageStore>) => package_store = Some(store);

        /// Checks package signatures (PKG-09, SEC-09). Default: unsigned packages
        /// are accepted and signed ones refused, so a signature is never
        /// silently ignored.
        pub fn package_verifier(verifier: Arc<dyn PackageVerifier>)
            => package_verifier = Some(verifier);

        /// Bound on stopping: sending `agent_disconnect` and closing (default
        /// 5 s).
        pub fn shutdown_timeout(timeout: Duration) => shutdown_timeout = timeout;

        /// Whether OpAMP connection settings offered with
        /// `tls.insecure_skip_verify = true` may be used (default: no, such
        /// offers fail; SEC-13).
        pub fn allow_insecure_skip_verify_offers(allow: bool) => allow_insecure_offers = allow;
    }

    /// Checks the endpoint and builds the client (not started yet).
    pub fn build(self) -> Result<OpampClient, ClientError> {
        let endpoint = Url::parse(&self.endpoint)
            .map_err(|error| ClientError::InvalidEndpoint(error.to_string()))?;
        let transport = transport_for(&endpoint)?;
        if endpoint.host().is_none() {
            return Err(ClientError::InvalidEndpoint("the URL has no host".into()));
        }
        let mut options = ClientOptions::new(endpoint)
            .with_headers(self.headers.clone())
            .with_max_message_size(self.max_message_size);
        if let Some(hook) = &self.header_hook {
            let hook = Arc::clone(hook);
            options = options.with_header_hook(move |headers| hook(headers));
        }
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some(proxy) = &self.proxy {
            options = options.with_proxy(proxy.clone());
        }
        if let Some(timeout) = self.connect_timeout {
            options = options.with_connect_timeout(timeout);
        }
        if let Some(timeout) = self.request_timeout {
            options = options.with_request_timeout(timeout);
        }
        Ok(self.into_client(options, transport))
    }

    fn into_client(self, options: ClientOptions, transport: TransportKind) -> OpampClient {
        let uid = self.instance_uid.unwrap_or_else(InstanceUid::new_v7);
        let mut config = CoreConfig::new(transport, uid);
        config.heartbeat_interval = self.heartbeat_interval;
        config.polling_interval = self.polling_interval.unwrap_or(self.heartbeat_interval);
        config.max_message_size = self.max_message_size;
        config.packages_supported = self.package_store.is_some();
        config.reply_timeout = options.request_timeout;
        let mut core = ClientCore::new(config, (self.retry_policy)());
        core.set_capabilities(self.capabilities);
        if let Some(description) = self.description {
            core.set_agent_description(description);
        }
        if let Some(status) = self.remote_config_status {
            core.set_remote_config_status(status);
        }
        if let Some(status) = self.connection_settings_status {
            core.set_connection_settings_status(status);
        }
        let parts = StartParts {
            options,
            compression: self.compression,
            package_store: self.package_store,
            package_verifier: self.package_verifier,
            allow_insecure_offers: self.allow_insecure_offers,
        };
        OpampClient::new(
            core,
            transport,
            self.callbacks,
            parts,
            self.shutdown_timeout,
        )
    }
}
