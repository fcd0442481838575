//! The fleet server as a process, with real agents (opamp-client), one
//! over WebSocket and one over plain HTTP: push a config, see APPLIED with
//! the right hash and the new effective config, restart the server and find
//! the agents and their history again in the redb store.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use opamp_client::proto::{
    AgentConfigMap, EffectiveConfig, RemoteConfigStatus, RemoteConfigStatuses,
};
use opamp_client::{AgentCapabilities, AgentDescription, Callbacks, MessageData, OpampClient};
use serde_json::Value;

mod fleet_support;

use fleet_support::{get, push_config, send, start_agent_process, start_fleet_server};

/// Re-checks `check` after every event of the page's event stream.
async fn until<F, Fut>(web: SocketAddr, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let request = Request::get("/api/events")
        .header(header::HOST, web.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let mut stream = send(web, request).await.into_body();
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if check().await {
                return;
            }
            stream
                .frame()
                .await
                .expect("event stream open")
                .expect("frame");
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// Applies every remote config and reports it as the effective config.
struct ApplyingAgent {
    effective: Arc<Mutex<AgentConfigMap>>,
}

impl Callbacks for ApplyingAgent {
    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        let Some(offer) = &data.remote_config else {
            return;
        };
        let config = offer.config.clone().unwrap_or_default();
        *self.effective.lock().unwrap() = config.clone();
        client.set_effective_config(EffectiveConfig {
            config_map: Some(config),
        });
        client.set_remote_config_status(RemoteConfigStatus {
            last_remote_config_hash: offer.config_hash.clone(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        });
    }
}

async fn start_agent(endpoint: String, service: &str) -> OpampClient {
    let client = OpampClient::builder(endpoint)
        .agent_description(AgentDescription::for_service(service, "1.0.0"))
        .capabilities(
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
                | AgentCapabilities::REPORTS_HEARTBEAT,
        )
        // Plain HTTP picks up pushed configs on its next poll (HTTP-15).
        .polling_interval(Duration::from_millis(200))
        .callbacks(ApplyingAgent {
            effective: Arc::default(),
        })
        .build()
        .expect("client builds");
    client.set_effective_config(EffectiveConfig {
        config_map: Some(AgentConfigMap::default()),
    });
    client.start().await.expect("client starts");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcfg_configs_apply_over_both_transports_and_survive_a_restart() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = start_fleet_server(&[], &[], data.path()).await;
    let ws_agent = start_agent(format!("ws://{}/v1/opamp", server.opamp), "ws-agent").await;
    let http_agent = start_agent(format!("http://{}/v1/opamp", server.opamp), "http-agent").await;
    let uids = [ws_agent.instance_uid(), http_agent.instance_uid()];
    let web = server.web;

    until(web, "both agents connected", || async {
        let agents = get(web, "/api/agents").await;
        agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["connected"] == true)
            .count()
            == 2
    })
    .await;
    let agents = get(web, "/api/agents").await;
    let transport = |uid: String| {
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["instance_uid"] == uid)
            .unwrap()["transport"]
            .clone()
    };
    assert_eq!(transport(uids[0].to_string()), "websocket");
    assert_eq!(transport(uids[1].to_string()), "http");

    let mut hashes = Vec::new();
    for (index, uid) in uids.iter().enumerate() {
        let body = format!("exporters:\n  debug: {{}}\n# agent {index}\n");
        let hash = push_config(web, uid, &body).await;
        hashes.push((hash, body));
    }

    for (uid, (hash, body)) in uids.iter().zip(&hashes) {
        let path = format!("/api/agents/{uid}");
        until(web, "APPLIED in the history", || async {
            get(web, &path).await["config_history"][0]["outcome"] == "APPLIED"
        })
        .await;
        let detail = get(web, &path).await;
        assert_eq!(detail["remote_config_status"]["status"], "APPLIED");
        assert_eq!(&detail["remote_config_status"]["config_hash"], hash);
        assert_eq!(&detail["desired_config"]["config_hash"], hash);
        assert_eq!(&detail["effective_config"]["hash"], hash);
        assert_eq!(
            &detail["effective_config"]["bodies"]["collector.yaml"]["body"],
            body
        );
    }

    ws_agent.stop().await;
    http_agent.stop().await;
    server.stop().await;

    // Same data directory: the agents and their history are still there.
    let server = start_fleet_server(&[], &[], data.path()).await;
    let web = server.web;
    let agents = get(web, "/api/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 2);
    for (uid, (hash, body)) in uids.iter().zip(&hashes) {
        let detail = get(web, &format!("/api/agents/{uid}")).await;
        assert_eq!(detail["connected"], false);
        assert_eq!(&detail["desired_config"]["config_hash"], hash);
        assert_eq!(detail["desired_config"]["state"], "APPLIED");
        assert_eq!(
            &detail["effective_config"]["bodies"]["collector.yaml"]["body"],
            body
        );
        let history = detail["config_history"].as_array().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(&history[0]["config_hash"], hash);
        assert_eq!(history[0]["outcome"], "APPLIED");
        let events = detail["events"].as_array().unwrap();
        assert!(
            events.iter().any(|e| e["kind"] == "connected"),
            "{events:?}"
        );
    }
    server.stop().await;
}

/// Issue 7's end-to-end case with both binaries as processes: one agent over
/// WebSocket, one over plain HTTP; a config pushed through the API is written
/// by each agent and reported APPLIED with the right hash and as its
/// effective config; after a server restart the agents come back with their
/// history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcfg_agent_processes_apply_configs_and_return_after_a_server_restart() {
    let data = tempfile::tempdir().expect("temp dir");
    let agent_state = tempfile::tempdir().expect("temp dir");
    let server = start_fleet_server(&[], &[], data.path()).await;
    let web = server.web;
    let endpoints = [
        (
            format!("ws://{}/v1/opamp", server.opamp),
            "proc-ws",
            "websocket",
        ),
        (
            format!("http://{}/v1/opamp", server.opamp),
            "proc-http",
            "http",
        ),
    ];
    let mut agents = Vec::new();
    for (endpoint, service, _) in &endpoints {
        agents.push(start_agent_process(
            endpoint.clone(),
            service,
            &agent_state.path().join(service),
        ));
    }

    // Find each agent's uid by its service name once both are connected.
    let find = |list: &Value, service: &str| -> Option<(String, Value)> {
        list.as_array()?.iter().find_map(|a| {
            (a["description"]["identifying"]["service.name"] == service && a["connected"] == true)
                .then(|| {
                    (
                        a["instance_uid"].as_str().unwrap_or_default().to_owned(),
                        a["transport"].clone(),
                    )
                })
        })
    };
    until(web, "both agent processes connected", || async {
        let list = get(web, "/api/agents").await;
        endpoints
            .iter()
            .all(|(_, service, _)| find(&list, service).is_some())
    })
    .await;
    let list = get(web, "/api/agents").await;
    let mut uids = Vec::new();
    for (_, service, transport) in &endpoints {
        let (uid, seen_transport) = find(&list, service).expect("connected");
        assert_eq!(seen_transport, *transport);
        uids.push(uid);
    }

    let mut pushed = Vec::new();
    for uid in &uids {
        let body = format!("receivers:\n  otlp: {{}}\n# for {uid}\n");
        pushed.push((push_config(web, uid, &body).await, body));
    }
    for (uid, (hash, body)) in uids.iter().zip(&pushed) {
        let path = format!("/api/agents/{uid}");
        until(web, "APPLIED with the new effective config", || async {
            let detail = get(web, &path).await;
            detail["remote_config_status"]["status"] == "APPLIED"
                && detail["remote_config_status"]["config_hash"] == *hash
                && detail["effective_config"]["bodies"]["collector.yaml"]["body"] == *body
        })
        .await;
    }

    // Restart the server on the same data. It comes back on a new port, so
    // the agents are restarted too, from the same state directories (same
    // uids); their history is still there.
    for mut agent in agents.drain(..) {
        let _ = agent.start_kill();
        let _ = agent.wait().await;
    }
    server.stop().await;
    let server = start_fleet_server(&[], &[], data.path()).await;
    let web = server.web;
    for (_, service, _) in &endpoints {
        let endpoint = if service.ends_with("ws") {
            format!("ws://{}/v1/opamp", server.opamp)
        } else {
            format!("http://{}/v1/opamp", server.opamp)
        };
        agents.push(start_agent_process(
            endpoint,
            service,
            &agent_state.path().join(service),
        ));
    }
    until(web, "the same agents reconnected", || async {
        let list = get(web, "/api/agents").await;
        uids.iter().all(|uid| {
            list.as_array().is_some_and(|all| {
                all.iter()
                    .any(|a| a["instance_uid"] == *uid && a["connected"] == true)
            })
        })
    })
    .await;
    for (uid, (hash, _)) in uids.iter().zip(&pushed) {
        let detail = get(web, &format!("/api/agents/{uid}")).await;
        assert_eq!(&detail["desired_config"]["config_hash"], hash);
        let history = detail["config_history"].as_array().expect("history");
        assert!(
            history
                .iter()
                .any(|h| h["config_hash"] == *hash && h["outcome"] == "APPLIED"),
            "{history:?}"
        );
    }
    server.stop().await;
}
