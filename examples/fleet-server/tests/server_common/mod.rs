//! Helpers for the fleet server tests: the whole server in process, agents
//! speaking plain HTTP to it through `tower::ServiceExt::oneshot`.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use opamp_fleet_server::{FleetOptions, FleetServer, FleetStore};
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentDescription, AgentRemoteConfig, AgentToServer,
    ComponentHealth, EffectiveConfig, InstanceUid, Message, PackagesAvailable, RemoteConfigStatus,
    RemoteConfigStatuses, ServerToAgent,
};
use opamp_testkit::body_bytes;
pub use opamp_testkit::config_file as config;
use tower::ServiceExt;

pub struct Harness {
    pub app: Router,
    pub fleet: FleetServer,
    pub dir: tempfile::TempDir,
}

pub const DOWNLOAD_BASE: &str = "http://downloads.test:4321";

pub async fn harness(tweak: impl FnOnce(&mut FleetOptions)) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = FleetOptions {
        packages_dir: dir.path().join("packages"),
        download_base_url: DOWNLOAD_BASE.into(),
        websocket_endpoint: "ws://127.0.0.1:4320/v1/opamp".into(),
        http_endpoint: "http://127.0.0.1:4320/v1/opamp".into(),
        ..Default::default()
    };
    tweak(&mut options);
    let fleet = FleetServer::new(FleetStore::in_memory().expect("memory store"), options);
    let opamp = fleet.opamp_builder().build();
    let app = fleet
        .api_router()
        .merge(fleet.downloads_router())
        .route_service("/v1/opamp", opamp);
    Harness { app, fleet, dir }
}

/// Calls `app`; returns the status and the JSON body (Null if empty, a
/// string if not JSON).
pub async fn call_app(
    app: &Router,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = body_bytes(response).await;
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    (status, json)
}

impl Harness {
    /// Calls the API; returns the status and the JSON body (Null if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        call_app(&self.app, method, path, content_type, body).await
    }

    /// A call without a body.
    pub async fn request(&self, method: Method, path: &str) -> (StatusCode, serde_json::Value) {
        self.call(method, path, None, Body::empty()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        self.request(Method::GET, path).await
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.call(method, path, Some("application/json"), body.to_string())
            .await
    }

    /// PUTs `body` as `content_type` (a config file) to `path`.
    pub async fn put(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        self.call(Method::PUT, path, Some(content_type), body).await
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post_json(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.json(Method::POST, path, body).await
    }

    /// The agent's detail (`GET /api/agents/{uid}`).
    pub async fn detail(&self, uid: InstanceUid) -> serde_json::Value {
        let (status, detail) = self.get(&agent_path(uid, "")).await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        detail
    }

    /// The agent's detail once `check` holds for it, re-read after every
    /// page event.
    pub async fn detail_when(
        &self,
        events: &mut Events,
        uid: InstanceUid,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        until(events, what, || async { check(&self.detail(uid).await) }).await;
        self.detail(uid).await
    }

    /// The agent's detail once the newest entry of its config history has
    /// `outcome`.
    pub async fn detail_with_outcome(
        &self,
        events: &mut Events,
        uid: InstanceUid,
        outcome: &str,
    ) -> serde_json::Value {
        let what = format!("{outcome} in the history");
        self.detail_when(events, uid, &what, |detail| {
            detail["config_history"][0]["outcome"] == outcome
        })
        .await
    }

    /// The server's reply to `agent`'s next heartbeat.
    pub async fn heartbeat(&self, agent: &mut TestAgent) -> ServerToAgent {
        self.poll(&agent.heartbeat()).await
    }

    /// The remote config offered in reply to `message`.
    pub async fn config_offer(&self, message: &AgentToServer) -> AgentRemoteConfig {
        let reply = self.poll(message).await;
        reply.remote_config.expect("a remote config offered")
    }

    /// The package set offered in reply to `agent`'s next heartbeat.
    pub async fn packages_offer(&self, agent: &mut TestAgent) -> PackagesAvailable {
        let reply = self.heartbeat(agent).await;
        reply.packages_available.expect("packages offered")
    }

    /// One plain-HTTP OpAMP exchange.
    pub async fn poll(&self, message: &AgentToServer) -> ServerToAgent {
        self.poll_with(message, None)
            .await
            .expect("OpAMP exchange accepted")
    }

    pub async fn poll_with(
        &self,
        message: &AgentToServer,
        authorization: Option<&str>,
    ) -> Result<ServerToAgent, StatusCode> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/opamp")
            .header(header::CONTENT_TYPE, "application/x-protobuf");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Body::from(message.encode_to_vec()))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        if response.status() != StatusCode::OK {
            return Err(response.status());
        }
        let bytes = body_bytes(response).await;
        Ok(ServerToAgent::decode(bytes).expect("ServerToAgent"))
    }

    /// The page's event stream.
    pub async fn events(&self) -> Events {
        let request = Request::get("/api/events")
            .body(Body::empty())
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }
}

/// A server-sent event stream.
pub struct Events {
    body: Body,
    buffer: String,
}

impl Events {
    /// The next event: its name and data.
    pub async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() && name == "message" {
                    continue; // keep-alive comment
                }
                return (name, data);
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

/// Waits until `check` holds, re-checking after every page event. The
/// timeout only turns a hang into a failure.
pub async fn until<F, Fut>(events: &mut Events, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if check().await {
                return;
            }
            events.next().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// The API path of agent `uid`, with `rest` after it.
pub fn agent_path(uid: InstanceUid, rest: &str) -> String {
    format!("/api/agents/{uid}{rest}")
}

pub fn uid(n: u8) -> InstanceUid {
    let mut bytes = [0u8; 16];
    bytes[0] = 0x01;
    bytes[15] = n;
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    InstanceUid::from_array(bytes)
}

pub const FULL_CAPABILITIES: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEALTH)
    .union(AgentCapabilities::ACCEPTS_RESTART_COMMAND)
    .union(AgentCapabilities::ACCEPTS_PACKAGES)
    .union(AgentCapabilities::REPORTS_PACKAGE_STATUSES)
    .union(AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS)
    .union(AgentCapabilities::REPORTS_HEARTBEAT);

/// A simulated plain-HTTP agent that keeps its sequence numbers straight.
pub struct TestAgent {
    pub uid: InstanceUid,
    pub capabilities: AgentCapabilities,
    pub service: String,
    pub sequence: u64,
}

impl TestAgent {
    pub fn new(uid: InstanceUid, service: &str, capabilities: AgentCapabilities) -> Self {
        Self {
            uid,
            capabilities,
            service: service.into(),
            sequence: 0,
        }
    }

    fn base(&mut self) -> AgentToServer {
        let message = AgentToServer {
            instance_uid: self.uid.to_bytes(),
            sequence_num: self.sequence,
            capabilities: self.capabilities.bits(),
            ..Default::default()
        };
        self.sequence += 1;
        message
    }

    /// The first message: the full state.
    pub fn hello(&mut self) -> AgentToServer {
        AgentToServer {
            agent_description: Some(
                AgentDescription::for_service(self.service.clone(), "2.0.0")
                    .with_non_identifying("host.name", "test-host"),
            ),
            health: Some(ComponentHealth {
                healthy: true,
                status: "running".into(),
                component_health_map: [(
                    "receiver/otlp".to_owned(),
                    ComponentHealth {
                        healthy: false,
                        last_error: "port in use".into(),
                        ..Default::default()
                    },
                )]
                .into_iter()
                .collect(),
                ..Default::default()
            }),
            effective_config: Some(EffectiveConfig {
                config_map: Some(config("agent.yaml", "text/yaml", "start: true\n")),
            }),
            ..self.base()
        }
    }

    /// A poll with nothing new (status compression).
    pub fn heartbeat(&mut self) -> AgentToServer {
        self.base()
    }

    /// Reports the outcome of a remote config, and the new effective config
    /// when applied.
    pub fn report(
        &mut self,
        hash: &Bytes,
        status: RemoteConfigStatuses,
        applied: Option<AgentConfigMap>,
    ) -> AgentToServer {
        AgentToServer {
            remote_config_status: Some(RemoteConfigStatus {
                last_remote_config_hash: hash.clone(),
                status: status as i32,
                error_message: if status == RemoteConfigStatuses::Failed {
                    "bad config".into()
                } else {
                    String::new()
                },
            }),
            effective_config: applied.map(|config| EffectiveConfig {
                config_map: Some(config),
            }),
            ..self.base()
        }
    }
}
