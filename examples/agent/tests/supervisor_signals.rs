//! SIGTERM and SIGINT both stop the supervisor cleanly: the child gets the
//! same signal and exits on it (not killed), the client says goodbye with
//! `agent_disconnect` (MSG-06) and the agent exits with status 0. A child
//! that ignores the signal is killed after `--stop-timeout`.

mod agent_support;

use agent_support::child::{ChildHome, accept_report, next_child, write_child, write_executable};
use agent_support::{PATIENCE, TestServer};
use nix::sys::signal::Signal;
use tokio::io::AsyncBufReadExt;

async fn stops_cleanly_on(signal: Signal) {
    let mut server = TestServer::start().await;
    let ChildHome { dir, reports, port } = ChildHome::new().await;
    let script = write_child(dir.path(), "agent.sh", port);
    let agent = server.start_supervisor(dir.path(), &["--stop-timeout", "10m"], &script);
    let child = next_child(&reports).await;
    let (uid, _) = server.next_connected().await;
    server
        .wait_for(uid, "the first status", |record| {
            record.status.health.is_some()
        })
        .await;

    let exit = agent.signal(signal).await;
    assert!(exit.success(), "{exit}");
    // The child got the same signal and exited on it (a ten-minute stop
    // timeout rules out SIGKILL).
    let name = if signal == Signal::SIGINT {
        "INT"
    } else {
        "TERM"
    };
    assert_eq!(child.exited().await, [format!("signal {name}")]);
    assert_eq!(server.next_goodbye().await, uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_child_and_sends_agent_disconnect() {
    stops_cleanly_on(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_child_and_sends_agent_disconnect() {
    stops_cleanly_on(Signal::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_ignores_the_signal_is_killed_after_the_stop_timeout() {
    let mut server = TestServer::start().await;
    let ChildHome { dir, reports, port } = ChildHome::new().await;
    let script = dir.path().join("stubborn.sh");
    write_executable(
        &script,
        &format!(
            r#"#!/bin/bash
trap '' TERM INT
exec 3<>/dev/tcp/127.0.0.1/{port}
echo up >&3
read -r -u 3 _
"#
        ),
    );
    let agent = server.start_supervisor(dir.path(), &["--stop-timeout", "200ms"], &script);
    let (mut connection, mut line) = accept_report(&reports).await;
    assert_eq!(line, "up\n");
    let (uid, _) = server.next_connected().await;

    let exit = agent.terminate().await;
    assert!(exit.success(), "{exit}");
    line.clear();
    let read = tokio::time::timeout(PATIENCE, connection.read_line(&mut line))
        .await
        .expect("the stubborn child is still running")
        .unwrap();
    assert_eq!(read, 0, "{line:?}");
    assert_eq!(server.next_goodbye().await, uid);
    // The last report before the goodbye carried the child's end.
    let record = server
        .wait_for(uid, "the child reported stopped", |record| {
            record.status.health.as_ref().is_some_and(|health| {
                health.component_health_map["process/stubborn.sh"].status == "stopped"
            })
        })
        .await;
    let child = &record.status.health.as_ref().unwrap().component_health_map["process/stubborn.sh"];
    assert_eq!(
        agent_support::attribute(child, "last_exit").as_deref(),
        Some("signal: 9 (SIGKILL)")
    );
}
