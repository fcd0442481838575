//! Own traces and logs (CS-43, CS-45, CS-46): after the server offers
//! `own_traces` and `own_logs` destinations, an OTLP/HTTP receiver in the
//! test gets the supervisor's spans (config applies, validation, restarts,
//! with an error status when they failed) and its log records, with the
//! agent's identity in the resource; an empty destination stops an export.

mod agent_support;

use std::sync::{Arc, Mutex};

use agent_support::child::{ChildHome, next_child, write_child, write_executable};
use agent_support::{PATIENCE, TestServer, component_health, config};
use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, ConnectionSettingsOffers, Header, Headers, InstanceUid, Message,
    TelemetryConnectionSettings,
};
use opamp_server::{AgentRecord, RemoteConfigState};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::sync::mpsc;

/// A span or a log record as the receiver saw it, flattened.
#[derive(Debug, Clone)]
enum Item {
    Span {
        name: String,
        error: Option<String>,
        instance: Option<String>,
        token: Option<String>,
    },
    Log {
        body: String,
        severity: i32,
        instance: Option<String>,
        /// The event's fields, as text.
        attributes: Vec<(String, String)>,
    },
}

fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

fn instance_id(resource: Option<&Resource>) -> Option<String> {
    resource?
        .attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == "service.instance.id")
        .and_then(|kv| text(kv.value.as_ref()))
}

/// An OTLP/HTTP receiver for `/v1/traces` and `/v1/logs`.
struct Receiver {
    addr: std::net::SocketAddr,
    items: mpsc::UnboundedReceiver<Item>,
    /// Everything received so far.
    seen: Vec<Item>,
    /// Export requests per path, to see that an export stopped.
    requests: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, items) = mpsc::unbounded_channel();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let (addr, task) = agent_support::serve_http(move |request| {
            let path = request.uri().path().to_owned();
            let token = request
                .headers()
                .get("x-otlp-token")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            seen.lock().unwrap().push(path.clone());
            match path.as_str() {
                "/v1/traces" => {
                    answer_export::<_, ExportTraceServiceResponse>(request.body(), |export| {
                        send_spans(export, &token, &tx)
                    })
                }
                "/v1/logs" => {
                    answer_export::<_, ExportLogsServiceResponse>(request.body(), |export| {
                        send_logs(export, &tx)
                    })
                }
                _ => bad_request(),
            }
        })
        .await;
        Self {
            addr,
            items,
            seen: Vec::new(),
            requests,
            _task: task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for an item matching `wanted`, among all received so far
    /// and those still to come.
    async fn wait_for(&mut self, what: &str, mut wanted: impl FnMut(&Item) -> bool) -> Item {
        if let Some(item) = self.seen.iter().find(|item| wanted(item)) {
            return item.clone();
        }
        let items = &mut self.items;
        let seen = &mut self.seen;
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                let item = items.recv().await.expect("receiver closed");
                seen.push(item.clone());
                if wanted(&item) {
                    return item;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {what} arrived; received: {:#?}", self.seen))
    }

    fn requests_to(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| *seen == path)
            .count()
    }
}

/// Answers an OTLP export: decodes the request as `R` and hands it to
/// `received`, then replies with an empty `A`; 400 if it does not decode.
fn answer_export<R: Message + Default, A: Message + Default>(
    body: &Bytes,
    received: impl FnOnce(R),
) -> http::Response<Bytes> {
    let Ok(export) = R::decode(body.clone()) else {
        return bad_request();
    };
    received(export);
    http::Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Bytes::from(A::default().encode_to_vec()))
        .unwrap()
}

/// Sends each span of `export` (which came with `token`) as an item.
fn send_spans(
    export: ExportTraceServiceRequest,
    token: &Option<String>,
    tx: &mpsc::UnboundedSender<Item>,
) {
    for spans in export.resource_spans {
        let instance = instance_id(spans.resource.as_ref());
        for span in spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            let error = span
                .status
                .filter(|status| status.code == StatusCode::Error as i32)
                .map(|status| status.message);
            let _ = tx.send(Item::Span {
                name: span.name,
                error,
                instance: instance.clone(),
                token: token.clone(),
            });
        }
    }
}

/// Sends each log record of `export` as an item.
fn send_logs(export: ExportLogsServiceRequest, tx: &mpsc::UnboundedSender<Item>) {
    for logs in export.resource_logs {
        let instance = instance_id(logs.resource.as_ref());
        for record in logs
            .scope_logs
            .into_iter()
            .flat_map(|scope| scope.log_records)
        {
            let _ = tx.send(Item::Log {
                body: text(record.body.as_ref()).unwrap_or_default(),
                severity: record.severity_number,
                instance: instance.clone(),
                attributes: record
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref()).unwrap_or_default()))
                    .collect(),
            });
        }
    }
}

fn bad_request() -> http::Response<Bytes> {
    http::Response::builder()
        .status(400)
        .body(Bytes::new())
        .unwrap()
}

fn destination(endpoint: String) -> Option<TelemetryConnectionSettings> {
    Some(TelemetryConnectionSettings {
        destination_endpoint: endpoint,
        headers: Some(Headers {
            headers: vec![Header {
                key: "x-otlp-token".into(),
                value: "secret".into(),
            }],
        }),
        ..Default::default()
    })
}

async fn offer(server: &mut TestServer, uid: InstanceUid, settings: ConnectionSettingsOffers) {
    server
        .offer_settings(uid, "the telemetry offer APPLIED", settings)
        .await;
}

fn component_status(record: &AgentRecord, name: &str) -> Option<String> {
    component_health(record, name).map(|component| component.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_exports_own_spans_and_logs_where_the_server_says() {
    let mut server = TestServer::start().await;
    let mut receiver = Receiver::start().await;
    let ChildHome { dir, reports, port } = ChildHome::new().await;
    let script = write_child(dir.path(), "agent.sh", port);
    let validator = dir.path().join("validate.sh");
    write_executable(
        &validator,
        "#!/bin/bash\nif grep -q bogus \"$1\"; then echo 'bogus is not a receiver' >&2; exit 1; fi\n",
    );
    let validate = format!("{} {{config}}", validator.display());
    let agent = server.start_supervisor(
        dir.path(),
        &[
            "--own-metrics-interval",
            "200ms",
            "--ready-after",
            "500ms",
            "--validate-command",
            &validate,
        ],
        &script,
    );
    let first = next_child(&reports).await;
    let (uid, _) = server.next_connected().await;
    let record = server
        .wait_for(uid, "capabilities", |record| {
            record.status.description.is_some()
        })
        .await;
    assert!(record.status.capabilities.contains(
        AgentCapabilities::REPORTS_OWN_TRACES
            | AgentCapabilities::REPORTS_OWN_LOGS
            | AgentCapabilities::REPORTS_OWN_METRICS
    ));

    offer(
        &mut server,
        uid,
        ConnectionSettingsOffers {
            own_traces: destination(receiver.url("/v1/traces")),
            own_logs: destination(receiver.url("/v1/logs")),
            ..Default::default()
        },
    )
    .await;
    server
        .wait_for(uid, "own-traces and own-logs in the health", |record| {
            component_status(record, "own-traces")
                .is_some_and(|status| status.contains("/v1/traces"))
                && component_status(record, "own-logs")
                    .is_some_and(|status| status.contains("/v1/logs"))
        })
        .await;

    // A config that applies, one the validator rejects, a restart command.
    let applied = server
        .push_config(uid, config("", "receivers: [otlp]\n"))
        .await;
    assert_eq!(applied, RemoteConfigState::Applied);
    let second = next_child(&reports).await;
    first.exited().await;
    let failed = server
        .push_config(uid, config("", "receivers: [bogus]\n"))
        .await;
    assert!(
        matches!(failed, RemoteConfigState::Failed { .. }),
        "{failed:?}"
    );
    server.registry.restart(uid).await.unwrap();
    let third = next_child(&reports).await;
    second.exited().await;

    let uid_text = uid.to_string();
    let span = |wanted: &'static str, failed: bool| {
        let uid_text = uid_text.clone();
        move |item: &Item| {
            matches!(item, Item::Span { name, error, instance, token }
                if name == wanted
                    && error.is_some() == failed
                    && instance.as_deref() == Some(uid_text.as_str())
                    && token.as_deref() == Some("secret"))
        }
    };
    receiver
        .wait_for(
            "span of the applied config",
            span("supervisor.apply_config", false),
        )
        .await;
    receiver
        .wait_for(
            "span of the whole apply",
            span("agent.apply_remote_config", false),
        )
        .await;
    let rejected = receiver
        .wait_for(
            "failed validation span",
            span("supervisor.validate_config", true),
        )
        .await;
    let Item::Span { error, .. } = rejected else {
        unreachable!()
    };
    assert!(
        error
            .as_deref()
            .unwrap()
            .contains("bogus is not a receiver"),
        "{error:?}"
    );
    receiver
        .wait_for("failed apply span", span("agent.apply_remote_config", true))
        .await;
    receiver
        .wait_for("restart span", span("supervisor.restart", false))
        .await;

    // Log records: the agent's own events, with its identity.
    let log = receiver
        .wait_for(
            "the 'remote config applied' log record",
            |item| matches!(item, Item::Log { body, .. } if body == "remote config applied"),
        )
        .await;
    let Item::Log {
        severity, instance, ..
    } = log
    else {
        unreachable!()
    };
    assert_eq!(severity, 9, "INFO");
    assert_eq!(instance.as_deref(), Some(uid_text.as_str()));
    receiver
        .wait_for("the warning about the rejected config", |item| {
            matches!(item, Item::Log { body, severity, .. }
                if body == "remote config failed" && *severity == 13)
        })
        .await;

    // An empty destination stops the traces; logs go on.
    offer(
        &mut server,
        uid,
        ConnectionSettingsOffers {
            own_traces: destination(String::new()),
            ..Default::default()
        },
    )
    .await;
    server
        .wait_for(uid, "own-traces gone from the health", |record| {
            component_status(record, "own-traces").is_none()
                && component_status(record, "own-logs").is_some()
        })
        .await;
    let traces_before = receiver.requests_to("/v1/traces");
    server.registry.restart(uid).await.unwrap();
    let fourth = next_child(&reports).await;
    third.exited().await;
    // The new child's start is logged, but no span is sent any more.
    let pid = fourth.pid.clone();
    receiver
        .wait_for("the log record of the new child's start", |item| {
            matches!(item, Item::Log { body, attributes, .. }
                if body == "child started"
                    && attributes.iter().any(|(key, value)| key == "pid" && *value == pid))
        })
        .await;
    assert_eq!(receiver.requests_to("/v1/traces"), traces_before);
    assert!(agent.terminate().await.success());
    fourth.exited().await;
}
