//! Own telemetry (CS-43..46): when the server offers an `own_metrics`,
//! `own_traces` or `own_logs` destination, the agent exports that signal
//! there over OTLP/HTTP (protobuf) with the OpenTelemetry SDK, every
//! `--own-metrics-interval`:
//! - **metrics**: the agent's process metrics and its own counters;
//! - **traces**: a span per remote config apply, restart, executable update
//!   and package install or removal, with an error status when it failed;
//! - **logs**: the agent's own log events (its `tracing` events at the
//!   level `RUST_LOG` lets through, including the supervised child's output
//!   lines), bridged by [`LogBridge`].
//!
//! Each signal is handled on its own: a new offer with another destination
//! re-targets that export (the old exporter is flushed and shut down); an
//! offer with an empty `destination_endpoint` stops it; an offer without
//! that signal leaves it as it is (CS-04, CS-41).
//!
//! The SDK's readers and batch processors run on their own threads and
//! drive the exporters with a plain executor, so the HTTP client here hands
//! each request to the agent's tokio runtime and waits for the task.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opamp_client::proto::{AnyValue as ProtoValue, TelemetryConnectionSettings};
use opamp_transport::ClientTlsConfig;
use opentelemetry::KeyValue;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{
    LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{BatchLogProcessor, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest OTLP response body read (they are tiny).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The instrumentation scope of everything the agent exports about itself.
const SCOPE: &str = "opamp-rs-example-agent";

/// The provider of a batched export (traces or logs) to `target`, flushed
/// every `interval`: the SDK has the same steps for both signals on types
/// that share no trait (the exporter, its batch processor and its config,
/// the provider and the method that adds the processor). Evaluates to the
/// exporter's build result.
macro_rules! batch_provider {
    (
        $target:expr, $resource:expr, $interval:expr,
        $exporter:ident, $processor:ident, $config:ty, $provider:ident::$add_processor:ident
    ) => {
        $target
            .configure($exporter::builder().with_http())
            .build()
            .map(|exporter| {
                let config = <$config>::default().with_scheduled_delay($interval).build();
                let processor = $processor::builder(exporter)
                    .with_batch_config(config)
                    .build();
                $provider::builder()
                    .with_resource($resource)
                    .$add_processor(processor)
                    .build()
            })
    };
}

/// Counters about the agent's own work, exported next to the process metrics.
#[derive(Debug, Default)]
pub(crate) struct AgentStats {
    /// Remote configs applied.
    pub(crate) configs_applied: AtomicU64,
    /// Restarts of the simulated work or the supervised child.
    pub(crate) restarts: AtomicU64,
}

/// One of the three own-telemetry signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TelemetryKind {
    Metrics,
    Traces,
    Logs,
}

impl TelemetryKind {
    pub(crate) const ALL: [Self; 3] = [Self::Metrics, Self::Traces, Self::Logs];

    /// The health component reporting this export.
    pub(crate) fn component(self) -> &'static str {
        match self {
            Self::Metrics => "own-metrics",
            Self::Traces => "own-traces",
            Self::Logs => "own-logs",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The logger the [`LogBridge`] writes to while own logs are exported.
/// One per process: only one agent of a process exports own telemetry.
static LOG_SINK: RwLock<Option<SdkLogger>> = RwLock::new(None);

thread_local! {
    /// Set while the bridge emits, so that events raised by exporting (the
    /// HTTP stack, the SDK) do not feed back into the export.
    static IN_BRIDGE: Cell<bool> = const { Cell::new(false) };
}

/// A `tracing` layer that turns the agent's log events into OpenTelemetry
/// log records while the server has an `own_logs` destination; a no-op
/// otherwise. The binary installs it next to its stderr output.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogBridge;

/// Whether events of `target` are exported: not those of the export's own
/// machinery (this module, the SDK, the HTTP stack), which would feed back.
fn exported_target(target: &str) -> bool {
    const SKIPPED: [&str; 4] = ["opentelemetry", "hyper", "h2", "tokio"];
    target != module_path!() && !SKIPPED.iter().any(|skipped| target.starts_with(skipped))
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogBridge {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let metadata = event.metadata();
        if !exported_target(metadata.target()) || IN_BRIDGE.with(Cell::get) {
            return;
        }
        let sink = LOG_SINK
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(logger) = sink.as_ref() else { return };
        IN_BRIDGE.with(|flag| flag.set(true));
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let mut record = logger.create_log_record();
        let (number, text) = severity(metadata.level());
        record.set_severity_number(number);
        record.set_severity_text(text);
        record.set_target(metadata.target().to_owned());
        record.set_timestamp(SystemTime::now());
        record.set_observed_timestamp(SystemTime::now());
        record.set_body(AnyValue::from(fields.message));
        for (key, value) in fields.attributes {
            record.add_attribute(key, AnyValue::from(value));
        }
        logger.emit(record);
        IN_BRIDGE.with(|flag| flag.set(false));
    }
}

fn severity(level: &tracing::Level) -> (Severity, &'static str) {
    match *level {
        tracing::Level::ERROR => (Severity::Error, "ERROR"),
        tracing::Level::WARN => (Severity::Warn, "WARN"),
        tracing::Level::INFO => (Severity::Info, "INFO"),
        tracing::Level::DEBUG => (Severity::Debug, "DEBUG"),
        tracing::Level::TRACE => (Severity::Trace, "TRACE"),
    }
}

/// The message and the other fields of an event, as text.
#[derive(Default)]
struct FieldCollector {
    message: String,
    attributes: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for FieldCollector {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.attributes.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.attributes.push((field.name(), format!("{value:?}")));
        }
    }
}

/// A span of the agent's own traces; a no-op while traces are not
/// exported. Ends when dropped.
pub(crate) struct OwnSpan(Option<opentelemetry_sdk::trace::Span>);

impl std::fmt::Debug for OwnSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnSpan").field(&self.0.is_some()).finish()
    }
}

impl OwnSpan {
    /// Starts a span named `name` if `telemetry` exports traces now.
    pub(crate) fn start(telemetry: Option<&OwnTelemetry>, name: &'static str) -> Self {
        Self(telemetry.and_then(|telemetry| {
            let tracer = telemetry
                .tracer
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tracer.as_ref().map(|tracer| tracer.start(name))
        }))
    }

    /// Adds an attribute.
    pub(crate) fn attribute(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with `message`.
    pub(crate) fn fail(&mut self, message: &str) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(message.to_owned()));
        }
    }
}

/// An exporter's provider, one per signal.
enum Provider {
    Metrics(SdkMeterProvider),
    Traces(SdkTracerProvider),
    Logs(SdkLoggerProvider),
}

impl Provider {
    /// Flushes and stops. Blocks.
    fn shutdown(self) {
        let result = match self {
            Self::Metrics(provider) => provider.shutdown(),
            Self::Traces(provider) => provider.shutdown(),
            Self::Logs(provider) => provider.shutdown(),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "own telemetry exporter shut down with an error");
        }
    }
}

/// The own-telemetry exporters of one agent.
pub(crate) struct OwnTelemetry {
    runtime: tokio::runtime::Handle,
    resource: Vec<KeyValue>,
    interval: Duration,
    insecure: bool,
    stats: Arc<AgentStats>,
    /// Indexed by [`TelemetryKind::index`].
    active: Mutex<[Option<Active>; 3]>,
    tracer: RwLock<Option<SdkTracer>>,
}

struct Active {
    destination: String,
    offer: TelemetryConnectionSettings,
    provider: Provider,
}

impl std::fmt::Debug for OwnTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnTelemetry")
            .field("interval", &self.interval)
            .field("metrics", &self.destination(TelemetryKind::Metrics))
            .field("traces", &self.destination(TelemetryKind::Traces))
            .field("logs", &self.destination(TelemetryKind::Logs))
            .finish_non_exhaustive()
    }
}

impl OwnTelemetry {
    /// The exports' resource is the agent's `identifying` attributes
    /// (CS-46), their values as text.
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        identifying: &[opamp_client::proto::KeyValue],
        interval: Duration,
        insecure: bool,
        stats: Arc<AgentStats>,
    ) -> Self {
        Self {
            runtime,
            resource: identifying
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().map(ProtoValue::to_display_string);
                    KeyValue::new(kv.key.clone(), value.unwrap_or_default())
                })
                .collect(),
            interval,
            insecure,
            stats,
            active: Mutex::new([None, None, None]),
            tracer: RwLock::new(None),
        }
    }

    /// Where `kind` goes now, if anywhere.
    pub(crate) fn destination(&self, kind: TelemetryKind) -> Option<String> {
        self.lock()[kind.index()]
            .as_ref()
            .map(|active| active.destination.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Active>; 3]> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies an offer for `kind`. Blocks while an old exporter flushes:
    /// call it from a blocking context.
    pub(crate) fn apply(
        &self,
        kind: TelemetryKind,
        offer: &TelemetryConnectionSettings,
    ) -> Result<(), String> {
        let mut active = self.lock();
        let slot = &mut active[kind.index()];
        if slot.as_ref().is_some_and(|current| current.offer == *offer) {
            return Ok(());
        }
        if offer.destination_endpoint.is_empty() {
            if let Some(old) = slot.take() {
                tracing::info!(destination = %old.destination, ?kind, "own telemetry stopped");
                self.unhook(kind);
                old.provider.shutdown();
            }
            return Ok(());
        }
        let provider = self.build(kind, offer)?;
        if let Some(old) = slot.take() {
            self.unhook(kind);
            old.provider.shutdown();
        }
        self.hook(&provider);
        tracing::info!(destination = %offer.destination_endpoint, ?kind, interval = ?self.interval, "exporting own telemetry");
        *slot = Some(Active {
            destination: offer.destination_endpoint.clone(),
            offer: offer.clone(),
            provider,
        });
        Ok(())
    }

    /// Flushes and stops every export. Blocks: call it from a blocking
    /// context.
    pub(crate) fn stop(&self) {
        let mut active = self.lock();
        for kind in TelemetryKind::ALL {
            if let Some(old) = active[kind.index()].take() {
                self.unhook(kind);
                old.provider.shutdown();
            }
        }
    }

    /// Makes a new traces or logs provider the one spans and log records
    /// go to.
    fn hook(&self, provider: &Provider) {
        match provider {
            Provider::Metrics(_) => {}
            Provider::Traces(provider) => {
                *self
                    .tracer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(provider.tracer(SCOPE));
            }
            Provider::Logs(provider) => {
                *LOG_SINK
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(provider.logger(SCOPE));
            }
        }
    }

    fn unhook(&self, kind: TelemetryKind) {
        match kind {
            TelemetryKind::Metrics => {}
            TelemetryKind::Traces => {
                self.tracer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
            }
            TelemetryKind::Logs => {
                LOG_SINK
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
            }
        }
    }

    fn build(
        &self,
        kind: TelemetryKind,
        offer: &TelemetryConnectionSettings,
    ) -> Result<Provider, String> {
        let name = kind.component();
        let endpoint: http::Uri = offer
            .destination_endpoint
            .parse()
            .map_err(|error| format!("invalid {name} endpoint: {error}"))?;
        let tls = match endpoint.scheme_str() {
            Some("http") => None,
            Some("https") => Some(self.tls_for(offer)?),
            _ => return Err(format!("the {name} endpoint must be http:// or https://")),
        };
        let headers: HashMap<String, String> = offer
            .headers
            .iter()
            .flat_map(|headers| &headers.headers)
            .map(|header| (header.key.clone(), header.value.clone()))
            .collect();
        let target = OtlpTarget {
            endpoint: offer.destination_endpoint.clone(),
            headers,
            client: OtlpHttpClient {
                runtime: self.runtime.clone(),
                tls,
            },
        };
        let resource = Resource::builder_empty()
            .with_attributes(self.resource.clone())
            .build();
        let built = |error: opentelemetry_otlp::ExporterBuildError| {
            format!("cannot build the OTLP exporter: {error}")
        };
        Ok(match kind {
            TelemetryKind::Metrics => {
                let exporter = target
                    .configure(MetricExporter::builder().with_http())
                    .build()
                    .map_err(built)?;
                let reader = PeriodicReader::builder(exporter)
                    .with_interval(self.interval)
                    .build();
                let provider = SdkMeterProvider::builder()
                    .with_resource(resource)
                    .with_reader(reader)
                    .build();
                register_instruments(&provider, Arc::clone(&self.stats));
                Provider::Metrics(provider)
            }
            TelemetryKind::Traces => Provider::Traces(
                batch_provider!(
                    target,
                    resource,
                    self.interval,
                    SpanExporter,
                    BatchSpanProcessor,
                    opentelemetry_sdk::trace::BatchConfigBuilder,
                    SdkTracerProvider::with_span_processor
                )
                .map_err(built)?,
            ),
            TelemetryKind::Logs => Provider::Logs(
                batch_provider!(
                    target,
                    resource,
                    self.interval,
                    LogExporter,
                    BatchLogProcessor,
                    opentelemetry_sdk::logs::BatchConfigBuilder,
                    SdkLoggerProvider::with_log_processor
                )
                .map_err(built)?,
            ),
        })
    }

    fn tls_for(
        &self,
        offer: &TelemetryConnectionSettings,
    ) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
        let mut tls = ClientTlsConfig::new().with_insecure_skip_verify(self.insecure);
        if let Some(settings) = &offer.tls
            && !settings.ca_pem_contents.is_empty()
        {
            tls = tls.with_root_ca_pem(settings.ca_pem_contents.as_bytes().to_vec());
        }
        if let Some(certificate) = &offer.certificate
            && !certificate.cert.is_empty()
        {
            tls = tls.with_client_identity_pem(
                certificate.cert.to_vec(),
                certificate.private_key.to_vec(),
            );
        }
        tls.build()
            .map_err(|error| format!("own telemetry TLS settings: {error}"))
    }
}

/// Process metrics after the OpenTelemetry semantic conventions (CS-44),
/// plus the agent's own counters.
fn register_instruments(provider: &SdkMeterProvider, stats: Arc<AgentStats>) {
    let meter = provider.meter(SCOPE);
    let started = Instant::now();
    meter
        .f64_observable_counter("process.cpu.time")
        .with_unit("s")
        .with_description("CPU seconds used by the agent process")
        .with_callback(|observer| {
            if let Ok(usage) =
                nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            {
                let seconds = |time: nix::sys::time::TimeVal| {
                    time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6
                };
                observer.observe(
                    seconds(usage.user_time()),
                    &[KeyValue::new("cpu.mode", "user")],
                );
                observer.observe(
                    seconds(usage.system_time()),
                    &[KeyValue::new("cpu.mode", "system")],
                );
            }
        })
        .build();
    proc_status_instrument(
        &meter,
        [
            "process.memory.usage",
            "By",
            "Resident memory of the agent process",
        ],
        "VmRSS:",
        1024,
    );
    proc_status_instrument(
        &meter,
        [
            "process.memory.virtual",
            "By",
            "Virtual memory of the agent process",
        ],
        "VmSize:",
        1024,
    );
    proc_status_instrument(
        &meter,
        [
            "process.thread.count",
            "{thread}",
            "Threads of the agent process",
        ],
        "Threads:",
        1,
    );
    meter
        .f64_observable_gauge("process.uptime")
        .with_unit("s")
        .with_description("Seconds since the export started")
        .with_callback(move |observer| observer.observe(started.elapsed().as_secs_f64(), &[]))
        .build();
    stats_counter(
        &meter,
        [
            "opamp.agent.restarts",
            "{restart}",
            "Restarts of the agent's work (simulated or supervised)",
        ],
        Arc::clone(&stats),
        |stats| &stats.restarts,
    );
    stats_counter(
        &meter,
        [
            "opamp.agent.remote_config.applied",
            "{config}",
            "Remote configs applied",
        ],
        stats,
        |stats| &stats.configs_applied,
    );
}

/// An instrument's name, unit and description.
type Instrument = [&'static str; 3];

/// An up-down counter of `field` in `/proc/self/status`, times `scale`.
fn proc_status_instrument(
    meter: &Meter,
    [name, unit, description]: Instrument,
    field: &'static str,
    scale: i64,
) {
    meter
        .i64_observable_up_down_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |observer| {
            if let Some(value) = proc_status_kib(field) {
                observer.observe(value.saturating_mul(scale), &[]);
            }
        })
        .build();
}

/// A counter that reads one of the agent's own `stats`.
fn stats_counter(
    meter: &Meter,
    [name, unit, description]: Instrument,
    stats: Arc<AgentStats>,
    counter: fn(&AgentStats) -> &AtomicU64,
) {
    meter
        .u64_observable_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |observer| {
            observer.observe(counter(&stats).load(Ordering::Relaxed), &[]);
        })
        .build();
}

/// A number from `/proc/self/status` (Linux); `None` elsewhere.
fn proc_status_kib(field: &str) -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// OTLP/HTTP client on hyper: one connection per export (every few
/// seconds), plain TCP or TLS with rustls.
#[derive(Clone)]
struct OtlpHttpClient {
    runtime: tokio::runtime::Handle,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for OtlpHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttpClient")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'a>>;

impl HttpClient for OtlpHttpClient {
    // The shape `#[async_trait]` gives the trait method.
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> SendFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let tls = self.tls.clone();
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(EXPORT_TIMEOUT, send(tls, request))
                .await
                .unwrap_or_else(|_| Err("OTLP export timed out".into()))
        });
        // A tokio JoinHandle can be awaited from any executor, such as the
        // SDK reader thread's.
        Box::pin(async move { task.await.map_err(|error| Box::new(error) as HttpError)? })
    }
}

async fn send(
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or("the OTLP endpoint has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the OTLP endpoint must be http:// or https://".into()),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .ok_or("the OTLP endpoint has no authority")?
        .as_str()
        .to_owned();
    let target = uri
        .path_and_query()
        .map(|path| path.as_str())
        .unwrap_or("/")
        .parse::<http::Uri>()?;

    let (mut parts, body) = request.into_parts();
    parts.uri = target;
    parts
        .headers
        .insert(http::header::HOST, http::HeaderValue::from_str(&authority)?);
    let request = Request::from_parts(parts, Full::new(body));

    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    if https {
        let config = tls.ok_or("https endpoint without TLS settings")?;
        let name = rustls_pki_types::ServerName::try_from(host)?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        exchange(stream, request).await
    } else {
        exchange(tcp, request).await
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "OTLP connection ended with an error");
        }
    });
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Where an own-telemetry exporter sends: the offered endpoint and headers,
/// and our HTTP client (which carries the offered TLS settings).
struct OtlpTarget {
    endpoint: String,
    headers: HashMap<String, String>,
    client: OtlpHttpClient,
}

impl OtlpTarget {
    /// The settings every own-telemetry exporter shares: OTLP/HTTP with
    /// protobuf bodies to this target, with the export timeout.
    fn configure<B: WithExportConfig + WithHttpConfig>(self, builder: B) -> B {
        builder
            .with_endpoint(self.endpoint)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(self.headers)
            .with_http_client(self.client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exports_own_events_are_not_exported() {
        assert!(!exported_target(module_path!().trim_end_matches("::tests")));
        assert!(!exported_target("opentelemetry_sdk::logs"));
        assert!(!exported_target("hyper_util::client"));
        assert!(exported_target("supervised"));
        assert!(exported_target("agent::agent::runner"));
    }

    #[test]
    fn proc_status_fields_are_read() {
        if cfg!(target_os = "linux") {
            assert!(proc_status_kib("VmRSS:").is_some_and(|kib| kib > 0));
            assert!(proc_status_kib("Threads:").is_some_and(|threads| threads >= 1));
        }
        assert_eq!(proc_status_kib("NoSuchField:"), None);
    }
}
