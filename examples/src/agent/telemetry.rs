//! Own telemetry (CS-43..46): when the server offers an `own_metrics`
//! destination, the agent exports its own process metrics there over
//! OTLP/HTTP (protobuf) with the OpenTelemetry SDK, every
//! `--own-metrics-interval`.
//!
//! A new offer with another destination re-targets the export (the old
//! exporter is flushed and shut down); an offer with an empty
//! `destination_endpoint` stops it; no `own_metrics` in an offer leaves it
//! as it is (CS-04, CS-41).
//!
//! The SDK's periodic reader runs on its own thread and drives the exporter
//! with a plain executor, so the HTTP client here hands each request to the
//! agent's tokio runtime and waits for the task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opamp_client::proto::TelemetryConnectionSettings;
use opamp_transport::ClientTlsConfig;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest OTLP response body read (they are tiny).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Counters about the agent's own work, exported next to the process metrics.
#[derive(Debug, Default)]
pub(crate) struct AgentStats {
    /// Remote configs applied.
    pub(crate) configs_applied: AtomicU64,
    /// Restarts of the simulated work or the supervised child.
    pub(crate) restarts: AtomicU64,
}

/// The own-metrics exporter of one agent.
pub(crate) struct OwnTelemetry {
    runtime: tokio::runtime::Handle,
    resource: Vec<KeyValue>,
    interval: Duration,
    insecure: bool,
    stats: Arc<AgentStats>,
    active: Mutex<Option<Active>>,
}

struct Active {
    destination: String,
    offer: TelemetryConnectionSettings,
    provider: SdkMeterProvider,
}

impl std::fmt::Debug for OwnTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnTelemetry")
            .field("interval", &self.interval)
            .field("destination", &self.destination())
            .finish_non_exhaustive()
    }
}

impl OwnTelemetry {
    /// `resource` holds the agent's identifying attributes (CS-46).
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        resource: Vec<(String, String)>,
        interval: Duration,
        insecure: bool,
        stats: Arc<AgentStats>,
    ) -> Self {
        Self {
            runtime,
            resource: resource
                .into_iter()
                .map(|(key, value)| KeyValue::new(key, value))
                .collect(),
            interval,
            insecure,
            stats,
            active: Mutex::new(None),
        }
    }

    /// Where metrics go now, if anywhere.
    pub(crate) fn destination(&self) -> Option<String> {
        self.lock()
            .as_ref()
            .map(|active| active.destination.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies an `own_metrics` offer. Blocks while an old exporter flushes:
    /// call it from a blocking context.
    pub(crate) fn apply(&self, offer: &TelemetryConnectionSettings) -> Result<(), String> {
        let mut active = self.lock();
        if active
            .as_ref()
            .is_some_and(|current| current.offer == *offer)
        {
            return Ok(());
        }
        if offer.destination_endpoint.is_empty() {
            if let Some(old) = active.take() {
                tracing::info!(destination = %old.destination, "own metrics stopped");
                shutdown(old.provider);
            }
            return Ok(());
        }
        let provider = self.build(offer)?;
        if let Some(old) = active.take() {
            shutdown(old.provider);
        }
        tracing::info!(destination = %offer.destination_endpoint, interval = ?self.interval, "exporting own metrics");
        *active = Some(Active {
            destination: offer.destination_endpoint.clone(),
            offer: offer.clone(),
            provider,
        });
        Ok(())
    }

    /// Flushes and stops the export. Blocks: call it from a blocking context.
    pub(crate) fn stop(&self) {
        if let Some(old) = self.lock().take() {
            shutdown(old.provider);
        }
    }

    fn build(&self, offer: &TelemetryConnectionSettings) -> Result<SdkMeterProvider, String> {
        let endpoint: http::Uri = offer
            .destination_endpoint
            .parse()
            .map_err(|error| format!("invalid own_metrics endpoint: {error}"))?;
        let tls = match endpoint.scheme_str() {
            Some("http") => None,
            Some("https") => Some(self.tls_for(offer)?),
            _ => return Err("own_metrics endpoint must be http:// or https://".into()),
        };
        let headers: HashMap<String, String> = offer
            .headers
            .iter()
            .flat_map(|headers| &headers.headers)
            .map(|header| (header.key.clone(), header.value.clone()))
            .collect();
        let client = OtlpHttpClient {
            runtime: self.runtime.clone(),
            tls,
        };
        let exporter = MetricExporter::builder()
            .with_http()
            .with_endpoint(offer.destination_endpoint.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers)
            .with_http_client(client)
            .build()
            .map_err(|error| format!("cannot build the OTLP exporter: {error}"))?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(self.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(
                Resource::builder_empty()
                    .with_attributes(self.resource.clone())
                    .build(),
            )
            .with_reader(reader)
            .build();
        register_instruments(&provider, Arc::clone(&self.stats));
        Ok(provider)
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
            .map_err(|error| format!("own_metrics TLS settings: {error}"))
    }
}

fn shutdown(provider: SdkMeterProvider) {
    if let Err(error) = provider.shutdown() {
        tracing::debug!(%error, "own metrics exporter shut down with an error");
    }
}

/// Process metrics after the OpenTelemetry semantic conventions (CS-44),
/// plus the agent's own counters.
fn register_instruments(provider: &SdkMeterProvider, stats: Arc<AgentStats>) {
    let meter = provider.meter("opamp-rs-example-agent");
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
    meter
        .i64_observable_up_down_counter("process.memory.usage")
        .with_unit("By")
        .with_description("Resident memory of the agent process")
        .with_callback(|observer| {
            if let Some(bytes) = proc_status_kib("VmRSS:") {
                observer.observe(bytes.saturating_mul(1024), &[]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter("process.memory.virtual")
        .with_unit("By")
        .with_description("Virtual memory of the agent process")
        .with_callback(|observer| {
            if let Some(bytes) = proc_status_kib("VmSize:") {
                observer.observe(bytes.saturating_mul(1024), &[]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter("process.thread.count")
        .with_unit("{thread}")
        .with_description("Threads of the agent process")
        .with_callback(|observer| {
            if let Some(threads) = proc_status_kib("Threads:") {
                observer.observe(threads, &[]);
            }
        })
        .build();
    meter
        .f64_observable_gauge("process.uptime")
        .with_unit("s")
        .with_description("Seconds since the export started")
        .with_callback(move |observer| observer.observe(started.elapsed().as_secs_f64(), &[]))
        .build();
    let restarts = Arc::clone(&stats);
    meter
        .u64_observable_counter("opamp.agent.restarts")
        .with_unit("{restart}")
        .with_description("Restarts of the agent's work (simulated or supervised)")
        .with_callback(move |observer| {
            observer.observe(restarts.restarts.load(Ordering::Relaxed), &[]);
        })
        .build();
    meter
        .u64_observable_counter("opamp.agent.remote_config.applied")
        .with_unit("{config}")
        .with_description("Remote configs applied")
        .with_callback(move |observer| {
            observer.observe(stats.configs_applied.load(Ordering::Relaxed), &[]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_fields_are_read() {
        if cfg!(target_os = "linux") {
            assert!(proc_status_kib("VmRSS:").is_some_and(|kib| kib > 0));
            assert!(proc_status_kib("Threads:").is_some_and(|threads| threads >= 1));
        }
        assert_eq!(proc_status_kib("NoSuchField:"), None);
    }
}
