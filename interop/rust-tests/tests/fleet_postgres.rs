//! Issue 13: the fleet server as three processes on one PostgreSQL
//! database. Desired state set through any instance reaches the agent on
//! whichever instance holds it; every instance's API and event stream show
//! the whole fleet; a plain-HTTP agent whose polls alternate between
//! instances gets its queued offer once; an instance killed with SIGKILL
//! loses nothing: its agent reconnects (through a round-robin TCP balancer)
//! to another instance with the same uid and gets what was pushed.
//!
//! Needs PostgreSQL: `OPAMP_TEST_DATABASE_URL`, or a throw-away cluster
//! started with `.ci/postgres.sh`; skips with a notice without either, and
//! fails when `CI=true`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opamp_client::proto::{
    AgentConfigMap, EffectiveConfig, RemoteConfigStatus, RemoteConfigStatuses,
};
use opamp_client::{AgentCapabilities, AgentDescription, Callbacks, MessageData, OpampClient};
use opamp_proto::{AgentToServer, InstanceUid, ServerToAgent, ServerToAgentFlags};
use prost::Message;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

mod fleet_support;

use fleet_support::{call, get, push_config, send, start_agent_process, start_fleet_server};
use opamp_testkit::{body_bytes, fresh_database_url, with_database};

// ---- a database ----

// ---- a round-robin TCP balancer ----

/// Forwards each accepted connection to the next backend in turn, skipping
/// backends that refuse; records which backend each connection went to.
struct Balancer {
    address: SocketAddr,
    chosen: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let chosen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&chosen);
        let task = tokio::spawn(async move {
            let mut next = 0;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut outbound = None;
                for _ in 0..backends.len() {
                    let index = next % backends.len();
                    next += 1;
                    if let Ok(stream) = TcpStream::connect(backends[index]).await {
                        outbound = Some((index, stream));
                        break;
                    }
                }
                let Some((index, mut outbound)) = outbound else {
                    continue;
                };
                log.lock().unwrap().push(index);
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Self {
            address,
            chosen,
            task,
        }
    }

    fn connections(&self) -> Vec<usize> {
        self.chosen.lock().unwrap().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it holds (60 s at most).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True once `web` shows `uid`'s latest offer with `hash` as APPLIED.
async fn applied(web: SocketAddr, uid: InstanceUid, hash: &str) -> bool {
    let detail = get(web, &format!("/api/agents/{uid}")).await;
    detail["config_history"][0]["config_hash"] == hash
        && detail["config_history"][0]["outcome"] == "APPLIED"
        && detail["remote_config_status"]["status"] == "APPLIED"
        && detail["remote_config_status"]["config_hash"] == hash
}

/// Reads `web`'s event stream until an `agent` event for `uid` satisfies
/// `wanted`.
async fn wait_for_page_event(
    stream: &mut Incoming,
    uid: InstanceUid,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) {
    let uid = uid.to_string();
    let mut buffer = String::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let frame = stream
                .frame()
                .await
                .expect("event stream open")
                .expect("frame");
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let is_agent = event.lines().any(|line| line == "event: agent");
                let data = event.lines().find_map(|line| line.strip_prefix("data: "));
                if let (true, Some(data)) = (is_agent, data)
                    && let Ok(summary) = serde_json::from_str::<Value>(data)
                    && summary["instance_uid"] == uid
                    && wanted(&summary)
                {
                    return;
                }
            }
        }
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for a page event: {what}");
}

async fn open_event_stream(web: SocketAddr) -> Incoming {
    let request = Request::get("/api/events")
        .header(header::HOST, web.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = send(web, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

// ---- agents ----

/// Applies every remote config and reports it as the effective config.
struct ApplyingAgent;

impl Callbacks for ApplyingAgent {
    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        let Some(offer) = &data.remote_config else {
            return;
        };
        client.set_effective_config(EffectiveConfig {
            config_map: offer.config.clone(),
        });
        client.set_remote_config_status(RemoteConfigStatus {
            last_remote_config_hash: offer.config_hash.clone(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        });
    }
}

const HTTP_AGENT_CAPABILITIES: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEARTBEAT);

/// One plain-HTTP poll (HTTP-xx: a POST of one AgentToServer, the reply is
/// one ServerToAgent) to the OpAMP endpoint at `opamp`.
async fn poll(opamp: SocketAddr, message: &AgentToServer) -> ServerToAgent {
    let request = Request::post("/v1/opamp")
        .header(header::HOST, opamp.to_string())
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .expect("request");
    let response = send(opamp, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_bytes(response).await;
    ServerToAgent::decode(body).expect("a ServerToAgent")
}

fn http_agent_message(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: HTTP_AGENT_CAPABILITIES.bits(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_database_share_the_fleet_and_survive_a_kill() {
    let Some(database) = fresh_database_url("fleet").await else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let mut servers = Vec::new();
    for name in ["fleet-a", "fleet-b", "fleet-c"] {
        // The store through the environment, as a deployment would pass a password.
        servers.push(
            start_fleet_server(
                &["--instance-name", name],
                &[("OPAMP_SERVER_STORE", &database)],
                &data.path().join(name),
            )
            .await,
        );
    }
    let (a, b, c) = (
        (servers[0].opamp, servers[0].web),
        (servers[1].opamp, servers[1].web),
        (servers[2].opamp, servers[2].web),
    );

    // -- a WebSocket agent on A, configured through C, seen through B --
    let mut page_on_c = open_event_stream(c.1).await;
    let ws_agent = OpampClient::builder(format!("ws://{}/v1/opamp", a.0))
        .agent_description(AgentDescription::for_service("fleet-pg-ws", "1.0.0"))
        .capabilities(
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
                | AgentCapabilities::REPORTS_HEARTBEAT,
        )
        .callbacks(ApplyingAgent)
        .build()
        .expect("client builds");
    ws_agent.set_effective_config(EffectiveConfig {
        config_map: Some(AgentConfigMap::default()),
    });
    ws_agent.start().await.expect("client starts");
    let ws_uid = ws_agent.instance_uid();

    // Events reach every instance: C's page hears of an agent held by A.
    wait_for_page_event(
        &mut page_on_c,
        ws_uid,
        "the WebSocket agent on C's page",
        |s| s["connected"] == true,
    )
    .await;
    eventually("B lists the WebSocket agent as connected", || async {
        let detail = get(b.1, &format!("/api/agents/{ws_uid}")).await;
        detail["connected"] == true && detail["transport"] == "websocket"
    })
    .await;

    let hash = push_config(c.1, ws_uid, "exporters:\n  debug: {}\n# via C\n").await;
    eventually("B shows the config pushed through C as APPLIED", || {
        applied(b.1, ws_uid, &hash)
    })
    .await;
    let detail = get(b.1, &format!("/api/agents/{ws_uid}")).await;
    assert_eq!(detail["effective_config"]["hash"], hash.as_str());
    // The history and events written by A and C are the same rows for all.
    let events = detail["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["kind"] == "connected"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "config"
                && e["message"].as_str().unwrap_or("").starts_with("APPLIED")),
        "{events:?}"
    );
    wait_for_page_event(&mut page_on_c, ws_uid, "APPLIED on C's page", |s| {
        s["remote_config_status"]["status"] == "APPLIED"
    })
    .await;
    ws_agent.stop().await;
    eventually("B shows the WebSocket agent gone from A", || async {
        get(b.1, &format!("/api/agents/{ws_uid}")).await["connected"] == false
    })
    .await;

    // -- a plain-HTTP agent whose polls go to A, B, C in turn --
    let http_uid = InstanceUid::new_v7();
    let mut first = http_agent_message(http_uid, 0);
    first.agent_description = Some(AgentDescription::for_service("fleet-pg-http", "1.0.0"));
    first.remote_config_status = Some(RemoteConfigStatus::default());
    let reply = poll(a.0, &first).await;
    assert!(reply.remote_config.is_none());
    let http_hash = push_config(b.1, http_uid, "# for the polling agent\n").await;
    let order = [c.0, a.0, b.0, c.0, a.0, b.0];
    let mut offers = Vec::new();
    let mut full_state_wanted = false;
    let mut full_state_requests = 0;
    for (index, instance) in order.iter().enumerate() {
        let sequence_num = u64::try_from(index).unwrap() + 1;
        let mut message = http_agent_message(http_uid, sequence_num);
        if full_state_wanted {
            // Answer as a real agent does (asserted below not to happen).
            message.agent_description = first.agent_description.clone();
        }
        message.remote_config_status = Some(if offers.is_empty() {
            RemoteConfigStatus::default()
        } else {
            // Applied as soon as offered; the next poll says so.
            RemoteConfigStatus {
                last_remote_config_hash: hex::decode(&http_hash).unwrap().into(),
                status: RemoteConfigStatuses::Applied as i32,
                error_message: String::new(),
            }
        });
        let reply = poll(*instance, &message).await;
        assert_eq!(
            reply.instance_uid, first.instance_uid,
            "every instance answers for the same agent"
        );
        full_state_wanted = ServerToAgentFlags::from_bits_truncate(reply.flags)
            .contains(ServerToAgentFlags::REPORT_FULL_STATE);
        full_state_requests += usize::from(full_state_wanted);
        if let Some(offer) = reply.remote_config {
            offers.push((sequence_num, hex::encode(&offer.config_hash)));
        }
    }
    // One consistent state: an instance that still has a session from an
    // earlier poll claims the agent again when its save meets a newer
    // claim, instead of dropping the poll and asking for everything.
    assert_eq!(
        full_state_requests, 0,
        "plain-HTTP polls over three instances asked for the full state"
    );
    assert_eq!(
        offers,
        vec![(1, http_hash.clone())],
        "the queued offer arrives once, on the first poll after the push"
    );
    eventually("A shows the polling agent's config APPLIED", || {
        applied(a.1, http_uid, &http_hash)
    })
    .await;

    // -- SIGKILL the instance holding an agent: it moves, keeps its uid --
    let balancer = Balancer::start(vec![a.0, b.0, c.0]).await;
    let agent_state = tempfile::tempdir().expect("temp dir");
    let mut agent = start_agent_process(
        format!("ws://{}/v1/opamp", balancer.address),
        "fleet-pg-proc",
        agent_state.path(),
    );
    let find_process_agent = |list: Value| -> Option<(InstanceUid, bool)> {
        list.as_array()?.iter().find_map(|a| {
            (a["description"]["identifying"]["service.name"] == "fleet-pg-proc").then(|| {
                (
                    a["instance_uid"].as_str().unwrap().parse().unwrap(),
                    a["connected"] == true,
                )
            })
        })
    };
    eventually("the agent process is connected", || async {
        matches!(
            find_process_agent(get(c.1, "/api/agents").await),
            Some((_, true))
        )
    })
    .await;
    let (process_uid, _) = find_process_agent(get(c.1, "/api/agents").await).unwrap();
    let held_by = balancer.connections()[0];
    // A group set through C: whichever instance holds the agent offers it.
    let group = serde_json::json!({
        "selector": { "service.name": "fleet-pg-proc" },
        "config": { "files": { "collector.yaml": {
            "content_type": "text/yaml", "body": "# group, before the kill\n" } } }
    });
    let (status, reply) = call(
        c.1,
        Method::PUT,
        "/api/config/groups/proc",
        "application/json",
        &group.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["matching_agents"], 1);
    let before = reply["config_hash"].as_str().unwrap().to_owned();
    eventually("the agent applied the group's config", || {
        applied(a.1, process_uid, &before)
    })
    .await;
    let detail = get(b.1, &format!("/api/agents/{process_uid}")).await;
    assert_eq!(detail["config_history"][0]["source"]["kind"], "group");
    assert_eq!(detail["config_history"][0]["source"]["name"], "proc");
    let config_on_b = get(b.1, "/api/config").await;
    assert_eq!(
        config_on_b["groups"]["proc"]["config"]["config_hash"],
        before.as_str()
    );

    let survivor = servers[(held_by + 1) % 3].web;
    servers.remove(held_by).kill().await;
    // Pushed while the agent may still be reconnecting: kept for it.
    let after = push_config(survivor, process_uid, "# after the kill\n").await;
    eventually("the agent reconnected through the balancer", || async {
        balancer.connections().len() >= 2
    })
    .await;
    assert!(
        balancer.connections()[1..]
            .iter()
            .all(|&index| index != held_by),
        "the balancer skips the killed instance: {:?}",
        balancer.connections()
    );
    eventually(
        "the moved agent applied the config pushed after the kill",
        || applied(survivor, process_uid, &after),
    )
    .await;
    let list = get(survivor, "/api/agents").await;
    let same_service: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["description"]["identifying"]["service.name"] == "fleet-pg-proc")
        .collect();
    assert_eq!(same_service.len(), 1, "the agent kept its uid: {list}");
    for server in &servers {
        eventually("every survivor shows the same state", || {
            applied(server.web, process_uid, &after)
        })
        .await;
    }

    let _ = agent.kill().await;
    drop(balancer);
    for server in servers {
        server.stop().await;
    }
}

#[test]
fn database_urls_are_rewritten_to_the_test_database() {
    assert_eq!(
        with_database("postgresql://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgresql://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@db?sslmode=disable", "t2"),
        "postgres://u:p@db/t2?sslmode=disable"
    );
}
