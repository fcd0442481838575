//! Test support: a fresh database per test (opamp-testkit finds or starts
//! the PostgreSQL server: `OPAMP_TEST_DATABASE_URL`, else `.ci/postgres.sh`;
//! without either, tests skip with a notice, or fail when `CI=true`), a
//! backend on it, and the kit's raw agent.
// Each test binary uses a different part of it.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use opamp_proto::{InstanceUid, ServerToAgent};
use opamp_server::{OpampServer, Registry};
use opamp_server_postgres::{Config, PgBackend};
pub use opamp_testkit::{
    CAPS, Ws, body_of, config_map, eventually, heartbeat, report, within, ws_send,
};
use tokio::net::TcpListener;

/// A new, empty database of its own, or `None` (after a notice; a failure
/// when `CI=true`) when no PostgreSQL is available.
pub async fn fresh_database() -> Option<Config> {
    opamp_testkit::fresh_database(env!("CARGO_CRATE_NAME")).await
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

/// Serves a registry whose store and bus are `backend`'s, once the backend
/// listens for the other instances; returns the registry and the address.
pub async fn serve_backend(backend: &PgBackend) -> (Registry, SocketAddr) {
    let registry = Registry::builder()
        .store(backend.store())
        .bus(backend.bus())
        .build();
    let server = OpampServer::builder().registry(registry.clone()).build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve_with_shutdown(listener, std::future::pending()));
    backend.listening().await;
    (registry, addr)
}

/// Sets `agent`'s remote config to `body` through `registry` (an instance
/// that does not hold the agent) and checks it was forwarded to the owner.
pub async fn set_config_forwarded(
    registry: &Registry,
    agent: opamp_proto::InstanceUid,
    body: &str,
) {
    let offer = registry
        .set_remote_config(agent, config_map(body))
        .await
        .expect("the instance writes");
    assert_eq!(offer.delivery, Some(opamp_server::Delivery::Forwarded));
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

/// The rows `query` returns with agent `uid` as `$1`, on a connection of
/// its own.
pub async fn agent_rows(
    config: &Config,
    query: &str,
    uid: InstanceUid,
) -> Vec<tokio_postgres::Row> {
    sql(config)
        .await
        .query(query, &[&uid.to_uuid()])
        .await
        .unwrap()
}

/// The one row `query` returns with agent `uid` as `$1`.
pub async fn agent_row(config: &Config, query: &str, uid: InstanceUid) -> tokio_postgres::Row {
    sql(config)
        .await
        .query_one(query, &[&uid.to_uuid()])
        .await
        .unwrap()
}

/// Column `index` of `row`, a text that may be NULL.
pub fn text(row: &tokio_postgres::Row, index: usize) -> Option<String> {
    row.get(index)
}

/// The next `ServerToAgent` on `ws`, with a hang guard.
pub async fn ws_recv(ws: &mut Ws) -> ServerToAgent {
    within("a message from the server", opamp_testkit::ws_recv(ws)).await
}

/// Sends `message` and returns the answer, with a hang guard.
pub async fn ws_exchange(ws: &mut Ws, message: &opamp_proto::AgentToServer) -> ServerToAgent {
    ws_send(ws, message).await;
    ws_recv(ws).await
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
        let failure = match opamp_testkit::start_postgres_cluster(Path::new(&dir)) {
            Ok(url) => {
                let port = url
                    .rsplit(':')
                    .next()
                    .and_then(|tail| tail.split('/').next())
                    .and_then(|port| port.parse().ok())
                    .expect("a port in the URL");
                return Some(Self { dir, url, port });
            }
            Err(failure) => failure,
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

    /// Runs `.ci/postgres.sh ACTION DIR` on this cluster.
    fn script(&self, action: &str) -> std::io::Result<Output> {
        Command::new("bash")
            .arg(SCRIPT)
            .args([action, &self.dir])
            .output()
    }

    fn run(&self, action: &str) {
        let output = self.script(action).expect("run postgres.sh");
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
        let _ = self.script("stop");
    }
}
