//! A supervised child that crashes right after starting is restarted with
//! backoff and reported unhealthy (crash loop, with its exit status and its
//! last stderr line); a new config restarts it at once and, once it starts
//! fine again, it is healthy.

mod agent_support;

use std::os::unix::fs::PermissionsExt;

use agent_support::{AgentProcess, PATIENCE, TestServer, attribute, config};
use opamp_server::AgentRecord;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

fn child(record: &AgentRecord) -> Option<&opamp_proto::ComponentHealth> {
    record
        .status
        .health
        .as_ref()?
        .component_health_map
        .get("process/crashy.sh")
}

/// Accepts the next child start and returns its pid.
async fn next_start(reports: &TcpListener) -> (String, BufReader<tokio::net::TcpStream>) {
    let (stream, _) = tokio::time::timeout(PATIENCE, reports.accept())
        .await
        .expect("no child started")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let pid = line.trim().strip_prefix("up ").unwrap().to_owned();
    (pid, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_child_backs_off_and_is_reported_unhealthy() {
    let mut server = TestServer::start().await;
    let reports = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = reports.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("crashy.sh");
    // It crashes while the marker exists, unless its config says "fixed",
    // and exits (status 0) when the test closes its connection.
    let marker = dir.path().join("crash");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/bash
if [ -e '{marker}' ] && ! grep -q fixed "$1"; then echo "boom: cannot start" >&2; exit 1; fi
exec 3<>/dev/tcp/127.0.0.1/{port}
printf 'up %s\n' "$$" >&3
read -r -u 3 _
"#,
            marker = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let endpoint = server.endpoint("ws");
    let agent = AgentProcess::start(
        &endpoint,
        dir.path(),
        "agent.log",
        &[
            "--heartbeat",
            "1s",
            "--min-uptime",
            "60s",
            "--max-backoff",
            "1s",
            "--ready-after",
            "1s",
            "--supervise",
            "--",
            script.to_str().unwrap(),
            "{config}",
        ],
    );
    let (first_pid, first) = next_start(&reports).await;
    let (uid, _) = server.next_connected().await;
    server
        .wait_for(uid, "a healthy child", |record| {
            child(record).is_some_and(|health| {
                health.healthy && attribute(health, "process.pid").as_deref() == Some(&first_pid)
            })
        })
        .await;

    // From now on the child exits at once, again and again.
    std::fs::write(&marker, "").unwrap();
    drop(first);
    let record = server
        .wait_for(uid, "a crash loop", |record| {
            child(record)
                .is_some_and(|health| !health.healthy && health.status.starts_with("crash loop"))
        })
        .await;
    let health = child(&record).unwrap();
    assert!(
        health.last_error.contains("exit status: 1"),
        "{}",
        health.last_error
    );
    assert!(
        health.last_error.contains("boom: cannot start"),
        "{}",
        health.last_error
    );
    assert_eq!(
        attribute(health, "last_exit").as_deref(),
        Some("exit status: 1")
    );
    assert!(!record.status.health.as_ref().unwrap().healthy);

    // A config it starts fine with: restarted on it and healthy again.
    server
        .registry
        .set_remote_config(uid, config("", "mode: fixed\n"))
        .await
        .unwrap();
    let (pid, _running) = next_start(&reports).await;
    server
        .wait_for(uid, "the child healthy again", |record| {
            child(record).is_some_and(|health| {
                health.healthy
                    && health.status == "running"
                    && attribute(health, "process.pid").as_deref() == Some(&pid)
            })
        })
        .await;
    assert!(agent.terminate().await.success());
}
