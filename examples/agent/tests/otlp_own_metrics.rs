//! Own telemetry (CS-43..46): after the server offers an `own_metrics`
//! destination, an OTLP/HTTP receiver in the test gets the agent's process
//! metrics with the agent's identity in the resource; a new destination
//! re-targets the export, an empty one stops it.

mod agent_support;

use std::sync::{Arc, Mutex};

use agent_support::{PATIENCE, TestServer, component_health};
use bytes::Bytes;
use opamp_proto::{
    ConnectionSettingsOffers, Header, Headers, InstanceUid, Message, TelemetryConnectionSettings,
};
use opamp_server::AgentRecord;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use tokio::sync::mpsc;

/// One export as the receiver saw it.
struct Export {
    path: String,
    token: Option<String>,
    request: ExportMetricsServiceRequest,
}

/// An OTLP/HTTP receiver: decodes each POST, counts it, hands it over.
struct Receiver {
    addr: std::net::SocketAddr,
    exports: mpsc::UnboundedReceiver<Export>,
    count: Arc<Mutex<usize>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, exports) = mpsc::unbounded_channel();
        let count = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&count);
        let (addr, task) = agent_support::serve_http(move |request| {
            let decoded = ExportMetricsServiceRequest::decode(request.body().clone());
            let Ok(decoded) = decoded else {
                return http::Response::builder()
                    .status(400)
                    .body(Bytes::new())
                    .unwrap();
            };
            *counter.lock().unwrap() += 1;
            let _ = tx.send(Export {
                path: request.uri().path().to_owned(),
                token: request
                    .headers()
                    .get("x-otlp-token")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned),
                request: decoded,
            });
            http::Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(Bytes::from(
                    ExportMetricsServiceResponse::default().encode_to_vec(),
                ))
                .unwrap()
        })
        .await;
        Self {
            addr,
            exports,
            count,
            _task: task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/metrics", self.addr)
    }

    async fn next(&mut self) -> Export {
        tokio::time::timeout(PATIENCE, self.exports.recv())
            .await
            .expect("no metrics arrived")
            .unwrap()
    }

    fn count(&self) -> usize {
        *self.count.lock().unwrap()
    }
}

fn resource_attribute(request: &ExportMetricsServiceRequest, key: &str) -> Option<String> {
    request
        .resource_metrics
        .iter()
        .filter_map(|metrics| metrics.resource.as_ref())
        .flat_map(|resource| &resource.attributes)
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(text) => Some(text.clone()),
            _ => None,
        })
}

fn metric_names(request: &ExportMetricsServiceRequest) -> Vec<String> {
    request
        .resource_metrics
        .iter()
        .flat_map(|metrics| &metrics.scope_metrics)
        .flat_map(|scope| &scope.metrics)
        .map(|metric| metric.name.clone())
        .collect()
}

async fn offer(server: &mut TestServer, uid: InstanceUid, destination: String) -> AgentRecord {
    let settings = ConnectionSettingsOffers {
        own_metrics: Some(TelemetryConnectionSettings {
            destination_endpoint: destination,
            headers: Some(Headers {
                headers: vec![Header {
                    key: "x-otlp-token".into(),
                    value: "secret".into(),
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // CS-42: the agent reports the offer APPLIED.
    server
        .offer_settings(uid, "own_metrics APPLIED", settings)
        .await
}

fn exporting_to(record: &AgentRecord) -> Option<String> {
    component_health(record, "own-metrics").map(|component| component.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_exports_own_metrics_where_the_server_says() {
    let mut server = TestServer::start().await;
    let mut first = Receiver::start().await;
    let mut second = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = server.start_agent(
        dir.path(),
        &[
            "--own-metrics-interval",
            "200ms",
            "--service-name",
            "metrics-test",
        ],
    );
    let (uid, _) = server.next_connected().await;
    let record = server
        .wait_for(uid, "capabilities", |record| {
            record.status.description.is_some()
        })
        .await;
    assert!(
        record
            .status
            .capabilities
            .contains(opamp_proto::AgentCapabilities::REPORTS_OWN_METRICS)
    );
    assert_eq!(first.count(), 0, "nothing is exported before an offer");

    offer(&mut server, uid, first.url()).await;
    let export = first.next().await;
    assert_eq!(export.path, "/v1/metrics");
    assert_eq!(
        export.token.as_deref(),
        Some("secret"),
        "CS-14: offered headers are sent"
    );
    // CS-46: identifying attributes are in the resource.
    assert_eq!(
        resource_attribute(&export.request, "service.instance.id"),
        Some(uid.to_string())
    );
    assert_eq!(
        resource_attribute(&export.request, "service.name").as_deref(),
        Some("metrics-test")
    );
    // CS-44: process metrics after the semantic conventions.
    let names = metric_names(&export.request);
    for wanted in [
        "process.cpu.time",
        "process.memory.usage",
        "process.thread.count",
    ] {
        assert!(
            names.iter().any(|name| name == wanted),
            "{wanted} missing from {names:?}"
        );
    }

    // A new destination: the old exporter is flushed and shut down before
    // the offer is reported APPLIED, and nothing more goes to it.
    let record = offer(&mut server, uid, second.url()).await;
    let sent_to_first = first.count();
    second.next().await;
    second.next().await;
    assert_eq!(
        first.count(),
        sent_to_first,
        "still exporting to the old destination"
    );
    let status = server
        .wait_for(uid, "health naming the new destination", |record| {
            exporting_to(record).is_some_and(|status| status.contains(&second.url()))
        })
        .await;
    drop((record, status));

    // An empty destination stops the export.
    offer(&mut server, uid, String::new()).await;
    server
        .wait_for(uid, "own-metrics gone from the health", |record| {
            record.status.health.is_some() && exporting_to(record).is_none()
        })
        .await;
    assert!(agent.terminate().await.success());
}
