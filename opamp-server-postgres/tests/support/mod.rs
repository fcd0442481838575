//! Test support: a fresh database per test (opamp-testkit finds or starts
//! the PostgreSQL server: `OPAMP_TEST_DATABASE_URL`, else `.ci/postgres.sh`;
//! without either, tests skip with a notice, or fail when `CI=true`), a
//! backend on it, and the kit's raw agent.
// Each test binary uses a different part of it.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::time::Duration;

use opamp_proto::ServerToAgent;
use opamp_server_postgres::{Config, PgBackend};
pub use opamp_testkit::{
    CAPS, Ws, body_of, config_map, eventually, heartbeat, report, within, ws_send,
};

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

/// Runs one query on a connection of its own.
pub async fn sql(config: &Config) -> tokio_postgres::Client {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
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
