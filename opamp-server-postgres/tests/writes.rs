//! Counting database writes on real PostgreSQL: a bare heartbeat writes
//! nothing, a status change updates exactly one row.
//!
//! Every transaction that changes a row is given a transaction id, read-only
//! ones are not; the next id to be assigned (`pg_snapshot_xmax` of the
//! current snapshot) therefore counts write transactions in the whole
//! cluster, at once and without the delay of the statistics views. The test
//! owns its cluster, so no other test's writes are counted, and turns off
//! autovacuum, whose ANALYZE would write too.

mod support;

use std::time::Duration;

use opamp_proto::{AgentDescription, AgentToServer, InstanceUid};
use opamp_server::{OpampServer, Registry};
use opamp_server_postgres::{Config, PgBackend};
use support::*;
use tokio::net::TcpListener;

/// The next transaction id PostgreSQL will hand out.
async fn next_xid(config: &Config) -> i64 {
    sql(config)
        .await
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Rows in the crate's tables last written by transaction `xid`.
async fn rows_written_by(config: &Config, xid: i64) -> i64 {
    sql(config)
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM opamp_agents WHERE xmin::text::bigint = $1)
                  + (SELECT count(*) FROM opamp_agent_owner WHERE xmin::text::bigint = $1)
                  + (SELECT count(*) FROM opamp_outbox WHERE xmin::text::bigint = $1)
                  + (SELECT count(*) FROM opamp_instances WHERE xmin::text::bigint = $1)",
            &[&xid],
        )
        .await
        .unwrap()
        .get(0)
}

async fn agent_version(config: &Config, uid: InstanceUid) -> (i64, Option<String>) {
    let query = "SELECT version, service_version FROM opamp_agents WHERE uid = $1";
    let row = agent_row(config, query, uid).await;
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_bare_heartbeat_writes_nothing_and_a_status_change_one_row() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let config = cluster.config();
    let admin = sql(&config).await;
    admin
        .batch_execute("ALTER SYSTEM SET autovacuum = off")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // A long lease: its renewal (one write per third of it) stays out of
    // the counted window.
    let backend = PgBackend::builder(config.clone(), "only")
        .pool_size(2)
        .lease(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    let registry = Registry::builder()
        .store(backend.store())
        .bus(backend.bus())
        .build();
    let server = OpampServer::builder().registry(registry).build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve_with_shutdown(listener, std::future::pending()));
    backend.listening().await;

    let uid = InstanceUid::from_array([0x5e; 16]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/opamp"))
        .await
        .unwrap();
    ws_send(&mut ws, &report(uid, 0)).await;
    ws_recv(&mut ws).await;
    eventually("the agent is stored", || async {
        let query = "SELECT 1 FROM opamp_agents WHERE uid = $1";
        !agent_rows(&config, query, uid).await.is_empty()
    })
    .await;
    // The lease renewal's first round runs right after start; wait until it
    // has (registering sets `started_at` and `lease_expires` from the same
    // `now()`, a renewal moves `lease_expires` later).
    eventually("the first lease renewal", || async {
        sql(&config)
            .await
            .query_one(
                "SELECT lease_expires > started_at + interval '3600 seconds'
                 FROM opamp_instances WHERE name = 'only'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;

    // Bare heartbeats: no write transaction at all.
    let before = next_xid(&config).await;
    let (version_before, _) = agent_version(&config, uid).await;
    for sequence_num in 1..=5 {
        ws_send(&mut ws, &heartbeat(uid, sequence_num)).await;
        let reply = ws_recv(&mut ws).await;
        assert_eq!(reply.instance_uid, uid.to_bytes());
    }
    assert_eq!(
        next_xid(&config).await - before,
        0,
        "bare heartbeats wrote to the database"
    );
    assert_eq!(agent_version(&config, uid).await.0, version_before);

    // A status change: one transaction, writing one row (the agent's).
    let before = next_xid(&config).await;
    let changed = AgentToServer {
        agent_description: Some(AgentDescription::for_service("io.example.test", "2.0")),
        ..heartbeat(uid, 6)
    };
    ws_send(&mut ws, &changed).await;
    ws_recv(&mut ws).await;
    eventually("the status change is saved", || async {
        agent_version(&config, uid).await.1.as_deref() == Some("2.0")
    })
    .await;
    let written = next_xid(&config).await - before;
    assert_eq!(written, 1, "one write transaction for a status change");
    assert_eq!(rows_written_by(&config, before).await, 1);
    assert_eq!(agent_version(&config, uid).await.0, version_before + 1);

    // And heartbeats after it write nothing again.
    let before = next_xid(&config).await;
    for sequence_num in 7..=9 {
        ws_send(&mut ws, &heartbeat(uid, sequence_num)).await;
        ws_recv(&mut ws).await;
    }
    assert_eq!(next_xid(&config).await - before, 0);
    backend.shutdown().await.unwrap();
}
