//! Test support: a PostgreSQL to test against, and a fresh database per test.
//!
//! `OPAMP_TEST_DATABASE_URL` names a server to use (`.ci/run` starts one).
//! Without it, the first test starts a throw-away cluster with
//! `.ci/postgres.sh`, stopped when the test process exits. When neither
//! works, tests skip with a notice, or fail when `CI=true`.
#![allow(dead_code, unreachable_pub)]

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentDescription, AgentToServer,
    InstanceUid, ServerToAgent,
};
use opamp_server_postgres::{Config, PgBackend};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

static SERVER: OnceLock<Option<String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

fn server_url() -> Option<String> {
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("OPAMP_TEST_DATABASE_URL") {
                return Some(url);
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/postgres.sh");
            let dir = format!(
                "/tmp/opamp-pg-test-{}-{}",
                std::process::id(),
                env!("CARGO_CRATE_NAME")
            );
            let output = Command::new("bash")
                .arg(script)
                .arg("start")
                .arg(&dir)
                .arg(std::process::id().to_string())
                .output();
            let failure = match output {
                Ok(output) if output.status.success() => {
                    let stdout = String::from_utf8_lossy(&output.stdout);
                    if let Some(url) = stdout
                        .lines()
                        .find_map(|line| line.strip_prefix("OPAMP_TEST_DATABASE_URL="))
                    {
                        return Some(url.to_owned());
                    }
                    format!("postgres.sh printed no URL: {stdout}")
                }
                Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                Err(error) => error.to_string(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true and no PostgreSQL could be started: {failure}");
            }
            eprintln!(
                "notice: skipping PostgreSQL tests: no OPAMP_TEST_DATABASE_URL and no cluster could be started ({})",
                failure.trim()
            );
            None
        })
        .clone()
}

/// Connection settings for a new, empty database of its own, or `None`
/// (after a notice) when no PostgreSQL is available.
pub async fn fresh_database() -> Option<Config> {
    let url = server_url()?;
    let admin: Config = url.parse().expect("OPAMP_TEST_DATABASE_URL parses");
    let (client, connection) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    let driver = tokio::spawn(connection);
    let name = format!(
        "opamp_test_{}_{}_{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = driver.await;
    let mut config = admin;
    config.dbname(&name);
    Some(config)
}

/// A backend for instance `name` on `config`, with a small pool.
pub async fn backend(config: &Config, name: &str) -> PgBackend {
    PgBackend::builder(config.clone(), name)
        .pool_size(3)
        .lease(Duration::from_secs(30))
        .connect()
        .await
        .expect("backend connects")
}

/// Runs one query on a connection of its own.
pub async fn sql(config: &Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Waits up to 30 s for `condition`.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- a raw WebSocket agent ----

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const CAPS: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEARTBEAT);

pub fn report(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: CAPS.bits(),
        agent_description: Some(AgentDescription::for_service("io.example.test", "1.0")),
        ..Default::default()
    }
}

pub fn heartbeat(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: CAPS.bits(),
        ..Default::default()
    }
}

pub async fn ws_send(ws: &mut Ws, message: &AgentToServer) {
    let frame = opamp_transport::encode_frame(message, usize::MAX).unwrap();
    ws.send(WsMessage::Binary(frame)).await.expect("send");
}

pub async fn ws_recv(ws: &mut Ws) -> ServerToAgent {
    let next = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    return opamp_transport::decode_frame(
                        data,
                        usize::MAX,
                        opamp_transport::HeaderlessFrames::Reject,
                    )
                    .expect("valid frame");
                }
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    });
    next.await.expect("a message from the server within 30 s")
}

pub fn config_map(body: &str) -> AgentConfigMap {
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        "agent.yaml".into(),
        AgentConfigObject {
            body: body.as_bytes().to_vec().into(),
            content_type: "text/yaml".into(),
            role: String::new(),
        },
    );
    config
}

pub fn body_of(message: &ServerToAgent) -> String {
    let config = message.remote_config.as_ref().expect("a remote config");
    let file = &config.config.as_ref().unwrap().config_map["agent.yaml"];
    String::from_utf8(file.body.to_vec()).unwrap()
}

// ---- a cluster of the test's own, to stop and start ----

/// A throw-away PostgreSQL cluster owned by one test, which may stop and
/// start it (`.ci/postgres.sh start|down|up|stop`; as root it runs as the
/// user `opamp-pg`). Deleted when dropped, or when the test process exits.
pub struct Cluster {
    dir: String,
    /// `postgresql://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    pub port: u16,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/postgres.sh");

impl Cluster {
    /// Starts a cluster, or returns `None` after a notice when PostgreSQL
    /// cannot be started here (a failure under `CI=true`).
    pub fn start() -> Option<Self> {
        let dir = format!(
            "/tmp/opamp-pg-own-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let output = Command::new("bash")
            .arg(SCRIPT)
            .args(["start", &dir])
            .arg(std::process::id().to_string())
            .output();
        let failure = match output {
            Ok(output) if output.status.success() => {
                let stdout = String::from_utf8_lossy(&output.stdout);
                if let Some(url) = stdout
                    .lines()
                    .find_map(|line| line.strip_prefix("OPAMP_TEST_DATABASE_URL="))
                {
                    let port = url
                        .rsplit(':')
                        .next()
                        .and_then(|tail| tail.split('/').next())
                        .and_then(|port| port.parse().ok())
                        .expect("a port in the URL");
                    return Some(Self {
                        dir,
                        url: url.to_owned(),
                        port,
                    });
                }
                format!("postgres.sh printed no URL: {stdout}")
            }
            Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
            Err(error) => error.to_string(),
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and no PostgreSQL cluster could be started: {failure}");
        }
        eprintln!(
            "notice: skipping a PostgreSQL fault test: no cluster of its own could be started ({})",
            failure.trim()
        );
        None
    }

    pub fn config(&self) -> Config {
        self.url.parse().expect("the cluster URL parses")
    }

    fn run(&self, action: &str) {
        let output = Command::new("bash")
            .arg(SCRIPT)
            .args([action, &self.dir])
            .output()
            .expect("run postgres.sh");
        assert!(
            output.status.success(),
            "postgres.sh {action} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the server (fast shutdown: every connection is closed).
    pub fn down(&self) {
        self.run("down");
    }

    /// Starts it again on the same port, with the same data.
    pub fn up(&self) {
        self.run("up");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["stop", &self.dir])
            .output();
    }
}
