//! A supervised child that crashes right after starting is restarted with
//! backoff and reported unhealthy (crash loop, with its exit status and its
//! last stderr line); a new config restarts it at once and, once it starts
//! fine again, it is healthy.

mod agent_support;

use agent_support::child::{ChildHome, accept_report, write_executable};
use agent_support::{TestServer, assert_contains, attribute, config, process_health};
use opamp_server::AgentRecord;
use tokio::io::BufReader;
use tokio::net::TcpListener;

fn child(record: &AgentRecord) -> Option<&opamp_proto::ComponentHealth> {
    process_health(record, "crashy.sh")
}

/// Accepts the next child start and returns its pid.
async fn next_start(reports: &TcpListener) -> (String, BufReader<tokio::net::TcpStream>) {
    let (reader, line) = accept_report(reports).await;
    let pid = line.trim().strip_prefix("up ").unwrap().to_owned();
    (pid, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_child_backs_off_and_is_reported_unhealthy() {
    let mut server = TestServer::start().await;
    let ChildHome { dir, reports, port } = ChildHome::new().await;
    let script = dir.path().join("crashy.sh");
    // It crashes while the marker exists, unless its config says "fixed",
    // and exits (status 0) when the test closes its connection.
    let marker = dir.path().join("crash");
    write_executable(
        &script,
        &format!(
            r#"#!/bin/bash
if [ -e '{marker}' ] && ! grep -q fixed "$1"; then echo "boom: cannot start" >&2; exit 1; fi
exec 3<>/dev/tcp/127.0.0.1/{port}
printf 'up %s\n' "$$" >&3
read -r -u 3 _
"#,
            marker = marker.display()
        ),
    );
    let agent = server.start_supervisor(
        dir.path(),
        &[
            "--heartbeat",
            "1s",
            "--min-uptime",
            "60s",
            "--max-backoff",
            "1s",
            "--ready-after",
            "1s",
        ],
        &script,
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
    assert_contains(&health.last_error, "exit status: 1");
    assert_contains(&health.last_error, "boom: cannot start");
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
