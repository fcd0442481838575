//! How the supervisor handles configs, compared with what users ask of the
//! Collector's `opampsupervisor`: a fallback config when the server is
//! unreachable at start, rollback to the last config the child was healthy
//! with, a validation command that fails a config without touching the
//! running child, an empty remote config that changes nothing, error
//! messages with the child's last stderr lines, APPLIED as soon as the
//! child is healthy on the new config (RCFG-09), and a shutdown in the
//! middle of an apply that neither hangs nor keeps the unproven config.
//!
//! The supervised child is the reporting script of `agent_support::child`.

mod agent_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_support::child::{
    CRASH_LINES, ChildHome, ChildStart, next_child, write_child, write_executable,
};
use agent_support::{
    AgentProcess, TestServer, assert_contains, attribute, config, effective_body, process_health,
};
use bytes::Bytes;
use opamp_proto::{AgentConfigMap, InstanceUid};
use opamp_server::{AgentRecord, RemoteConfigState};
use tokio::net::TcpListener;

/// A test's surroundings: the OpAMP server, the listener the child reports
/// to, and a temporary directory with the child script.
struct Setup {
    server: TestServer,
    reports: TcpListener,
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Setup {
    async fn new() -> Self {
        let server = TestServer::start().await;
        let ChildHome { dir, reports, port } = ChildHome::new().await;
        let script = write_child(dir.path(), "agent.sh", port);
        Self {
            server,
            reports,
            dir,
            script,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the agent supervising the script, with `extra` flags, against
    /// `endpoint`.
    fn agent(&self, endpoint: &str, extra: &[&str], log: &str) -> AgentProcess {
        let mut options = vec!["--heartbeat", "1s", "--health-interval", "100ms"];
        options.extend_from_slice(extra);
        AgentProcess::supervising(endpoint, self.dir.path(), log, &options, &self.script)
    }
}

/// A health endpoint for `--health-url`: `path` answers 200 while the
/// returned flag is set, 503 otherwise (and every other path 503). Returns
/// the flag, the URL and the server task.
async fn health_endpoint(
    path: &'static str,
) -> (Arc<AtomicBool>, String, tokio::task::JoinHandle<()>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let answer = Arc::clone(&healthy);
    let (addr, task) = agent_support::serve_http(move |request| {
        let status = if request.uri().path() == path && answer.load(Ordering::SeqCst) {
            200
        } else {
            503
        };
        http::Response::builder()
            .status(status)
            .body(Bytes::new())
            .unwrap()
    })
    .await;
    (healthy, format!("http://{addr}{path}"), task)
}

/// The supervised child's health component.
fn child_health(record: &AgentRecord) -> Option<&opamp_proto::ComponentHealth> {
    process_health(record, "agent.sh")
}

/// A health command that passes while `marker` exists.
fn marker_check(dir: &Path, marker: &Path) -> String {
    let check = dir.join("healthy.sh");
    write_executable(
        &check,
        &format!("#!/bin/bash\ntest -e '{}'\n", marker.display()),
    );
    check.display().to_string()
}

async fn healthy_child(
    server: &mut TestServer,
    uid: InstanceUid,
    child: &ChildStart,
) -> AgentRecord {
    let pid = child.pid.clone();
    server
        .wait_for(uid, "the child healthy", |record| {
            child_health(record).is_some_and(|health| {
                health.healthy && attribute(health, "process.pid").as_deref() == Some(&pid)
            })
        })
        .await
}

/// An address nothing listens on: the server is unreachable.
async fn unreachable_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("ws://{addr}/v1/opamp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_runs_the_fallback_config_then_the_last_persisted_one() {
    let mut setup = Setup::new().await;
    let fallback = setup.path("fallback.yaml");
    std::fs::write(&fallback, "mode: fallback\n").unwrap();
    let flags = [
        "--ready-after",
        "1s",
        "--fallback-config",
        fallback.to_str().unwrap(),
    ];

    // Server unreachable, nothing persisted: the fallback config runs.
    let unreachable = unreachable_endpoint().await;
    let agent = setup.agent(&unreachable, &flags, "agent-1.log");
    let child = next_child(&setup.reports).await;
    assert_eq!(child.config, "mode: fallback");
    assert!(agent.terminate().await.success());
    child.exited().await;

    // With the server: the fallback runs and is reported as the effective
    // config until a remote config replaces it.
    let endpoint = setup.server.endpoint("ws");
    let agent = setup.agent(&endpoint, &flags, "agent-2.log");
    let child = next_child(&setup.reports).await;
    assert_eq!(child.config, "mode: fallback");
    let (uid, _) = setup.server.next_connected().await;
    setup
        .server
        .wait_for(uid, "the fallback as effective config", |record| {
            effective_body(record, "").as_deref() == Some(b"mode: fallback\n".as_slice())
        })
        .await;
    let state = setup
        .server
        .push_config(uid, config("", "mode: remote\n"))
        .await;
    assert_eq!(state, RemoteConfigState::Applied);
    let remote = next_child(&setup.reports).await;
    assert_eq!(remote.config, "mode: remote");
    child.exited().await;
    assert!(agent.terminate().await.success());
    remote.exited().await;

    // Server unreachable again: the persisted remote config runs, not the
    // fallback.
    let agent = setup.agent(&unreachable, &flags, "agent-3.log");
    let child = next_child(&setup.reports).await;
    assert_eq!(child.config, "mode: remote");
    assert!(agent.terminate().await.success());
    child.exited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_config_rolls_back_to_the_last_good_one() {
    let mut setup = Setup::new().await;
    // Health is the marker file, so the test decides when a child is
    // healthy and a crash is caught by the exit alone, whatever the timing.
    let marker = setup.path("healthy");
    let check = marker_check(setup.dir.path(), &marker);
    let endpoint = setup.server.endpoint("ws");
    let agent = setup.agent(
        &endpoint,
        &["--health-command", &check, "--apply-timeout", "10m"],
        "agent.log",
    );
    let first = next_child(&setup.reports).await;
    let (uid, _) = setup.server.next_connected().await;
    std::fs::write(&marker, "").unwrap();
    healthy_child(&mut setup.server, uid, &first).await;

    // A config the child is healthy with: the last good one from now on.
    let state = setup
        .server
        .push_config(uid, config("", "mode: good\n"))
        .await;
    assert_eq!(state, RemoteConfigState::Applied);
    let good = next_child(&setup.reports).await;
    assert_eq!(good.config, "mode: good");
    first.exited().await;

    // A config the child dies on: FAILED, and the child runs the good
    // config again.
    std::fs::remove_file(&marker).unwrap();
    let state = setup
        .server
        .push_config(uid, config("", "crash: yes\n"))
        .await;
    let RemoteConfigState::Failed { message } = state else {
        panic!("expected FAILED, got {state:?}");
    };
    assert_contains(&message, "rolled back to the last good config");
    assert_contains(&message, "exit status: 2");
    good.exited().await;
    let restored = next_child(&setup.reports).await;
    assert_eq!(restored.config, "mode: good");

    // The health follows the restored child: not healthy until its check
    // passes, then healthy, with the failure kept as its last error.
    let pid = restored.pid.clone();
    let record = setup
        .server
        .wait_for(uid, "the restored child probed unhealthy", |record| {
            child_health(record).is_some_and(|health| {
                !health.healthy
                    && health.status.starts_with("not healthy")
                    && attribute(health, "process.pid").as_deref() == Some(&pid)
            })
        })
        .await;
    assert!(!record.status.health.as_ref().unwrap().healthy);
    std::fs::write(&marker, "").unwrap();
    let record = healthy_child(&mut setup.server, uid, &restored).await;
    let health = child_health(&record).unwrap();
    assert_contains(&health.last_error, "rolled back");
    // The effective config is the restored one; the config component keeps
    // the failure.
    assert_eq!(
        effective_body(&record, "").as_deref(),
        Some(b"mode: good\n".as_slice())
    );
    let config_health = &record.status.health.as_ref().unwrap().component_health_map["config"];
    assert!(!config_health.healthy);
    assert!(agent.terminate().await.success());
    restored.exited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_messages_carry_the_last_lines_of_the_childs_stderr() {
    let mut setup = Setup::new().await;
    let marker = setup.path("healthy");
    std::fs::write(&marker, "").unwrap();
    let check = marker_check(setup.dir.path(), &marker);
    let endpoint = setup.server.endpoint("ws");
    let agent = setup.agent(
        &endpoint,
        &["--health-command", &check, "--apply-timeout", "10m"],
        "agent.log",
    );
    let first = next_child(&setup.reports).await;
    let (uid, _) = setup.server.next_connected().await;
    healthy_child(&mut setup.server, uid, &first).await;

    std::fs::remove_file(&marker).unwrap();
    let state = setup
        .server
        .push_config(uid, config("", "crash: now\n"))
        .await;
    let RemoteConfigState::Failed { message } = state else {
        panic!("expected FAILED, got {state:?}");
    };
    // All three lines, in order, not just the last one.
    let expected = CRASH_LINES.join("\n");
    assert_contains(&message, &expected);
    assert_contains(&message, "last stderr lines");
    first.exited().await;
    let restored = next_child(&setup.reports).await;
    assert_eq!(restored.config, "");
    // The child's health carries the same context.
    std::fs::write(&marker, "").unwrap();
    let record = healthy_child(&mut setup.server, uid, &restored).await;
    let health = child_health(&record).unwrap();
    assert_contains(&health.last_error, &expected);
    assert!(agent.terminate().await.success());
    restored.exited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_validation_leaves_the_healthy_child_alone() {
    let mut setup = Setup::new().await;
    // The validator sees the staged file, both as {config} and in the
    // environment, and rejects configs that mention "bogus".
    let validator = setup.path("validate.sh");
    write_executable(
        &validator,
        r#"#!/bin/bash
[ "$2" = "$OPAMP_CONFIG_FILE" ] || { echo "not the staged file" >&2; exit 9; }
case "$2" in */config-candidate/*) ;; *) echo "not staged: $2" >&2; exit 9;; esac
if grep -q bogus "$2"; then
  echo "checking $(basename "$2")"
  echo 'error: unknown receiver type "bogus"' >&2
  exit 1
fi
"#,
    );
    let validate = format!("{} validate {{config}}", validator.display());
    let endpoint = setup.server.endpoint("ws");
    let agent = setup.agent(
        &endpoint,
        &["--ready-after", "1s", "--validate-command", &validate],
        "agent.log",
    );
    let first = next_child(&setup.reports).await;
    let (uid, _) = setup.server.next_connected().await;
    let state = setup
        .server
        .push_config(uid, config("", "receivers: [otlp]\n"))
        .await;
    assert_eq!(state, RemoteConfigState::Applied);
    let running = next_child(&setup.reports).await;
    first.exited().await;
    let record = healthy_child(&mut setup.server, uid, &running).await;
    let restarts = attribute(child_health(&record).unwrap(), "restart_count").unwrap();

    // A config the validator rejects: FAILED with its output, and the
    // child was never stopped (same pid, same restart count, same config).
    let state = setup
        .server
        .push_config(uid, config("", "receivers: [bogus]\n"))
        .await;
    let RemoteConfigState::Failed { message } = state else {
        panic!("expected FAILED, got {state:?}");
    };
    assert_contains(&message, "validation failed");
    assert_contains(&message, "exit status: 1");
    assert_contains(&message, "unknown receiver type \"bogus\"");
    assert_contains(&message, "checking _default");
    let record = setup
        .server
        .wait_for(uid, "the health after the rejected config", |record| {
            record
                .status
                .health
                .as_ref()
                .is_some_and(|health| !health.component_health_map["config"].healthy)
        })
        .await;
    let health = child_health(&record).unwrap();
    assert!(health.healthy);
    assert_eq!(attribute(health, "process.pid").unwrap(), running.pid);
    assert_eq!(attribute(health, "restart_count").unwrap(), restarts);
    assert_eq!(
        effective_body(&record, "").as_deref(),
        Some(b"receivers: [otlp]\n".as_slice())
    );

    // A config it accepts goes through.
    let state = setup
        .server
        .push_config(uid, config("", "receivers: [otlp, zipkin]\n"))
        .await;
    assert_eq!(state, RemoteConfigState::Applied);
    let next = next_child(&setup.reports).await;
    assert_eq!(next.config, "receivers: [otlp, zipkin]");
    running.exited().await;
    assert!(agent.terminate().await.success());
    next.exited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_remote_config_keeps_the_child_running_on_its_config() {
    let mut setup = Setup::new().await;
    let endpoint = setup.server.endpoint("ws");
    let agent = setup.agent(&endpoint, &["--ready-after", "1s"], "agent.log");
    let first = next_child(&setup.reports).await;
    let (uid, _) = setup.server.next_connected().await;
    let state = setup
        .server
        .push_config(uid, config("", "mode: kept\n"))
        .await;
    assert_eq!(state, RemoteConfigState::Applied);
    let running = next_child(&setup.reports).await;
    first.exited().await;
    let record = healthy_child(&mut setup.server, uid, &running).await;
    let restarts = attribute(child_health(&record).unwrap(), "restart_count").unwrap();

    // Both kinds of empty: no files at all, and a file without content.
    for (round, empty) in [AgentConfigMap::default(), config("", "")]
        .into_iter()
        .enumerate()
    {
        let state = setup.server.push_config(uid, empty).await;
        assert_eq!(state, RemoteConfigState::Applied, "round {round}");
        let record = setup.server.registry.agent(uid).await.unwrap().unwrap();
        let health = child_health(&record).unwrap();
        assert!(health.healthy);
        assert_eq!(attribute(health, "process.pid").unwrap(), running.pid);
        assert_eq!(attribute(health, "restart_count").unwrap(), restarts);
        assert_eq!(
            effective_body(&record, "").as_deref(),
            Some(b"mode: kept\n".as_slice()),
            "round {round}"
        );
    }
    assert!(agent.terminate().await.success());
    running.exited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_is_reported_when_the_health_endpoint_says_healthy() {
    let mut setup = Setup::new().await;
    let (healthy, health_url, _health_task) = health_endpoint("/healthz").await;
    let endpoint = setup.server.endpoint("ws");
    // Neither the readiness window nor the apply timeout can produce the
    // APPLIED below: only the health endpoint can.
    let agent = setup.agent(
        &endpoint,
        &[
            "--health-url",
            &health_url,
            "--ready-after",
            "10m",
            "--apply-timeout",
            "10m",
        ],
        "agent.log",
    );
    let first = next_child(&setup.reports).await;
    let (uid, _) = setup.server.next_connected().await;
    healthy_child(&mut setup.server, uid, &first).await;

    // The endpoint answers 503: the restarted child is up but not healthy,
    // and the config stays APPLYING.
    healthy.store(false, Ordering::SeqCst);
    let offer = setup
        .server
        .registry
        .set_remote_config(uid, config("", "mode: slow start\n"))
        .await
        .unwrap();
    let started = next_child(&setup.reports).await;
    first.exited().await;
    let pid = started.pid.clone();
    let record = setup
        .server
        .wait_for(uid, "the new child unhealthy while APPLYING", |record| {
            record.remote_config_state() == Some(RemoteConfigState::Applying)
                && child_health(record).is_some_and(|health| {
                    !health.healthy
                        && health.status.contains("503")
                        && attribute(health, "process.pid").as_deref() == Some(&pid)
                })
        })
        .await;
    drop(record);

    // Healthy: APPLIED follows.
    healthy.store(true, Ordering::SeqCst);
    let state = setup.server.config_outcome(uid, &offer.hash).await;
    assert_eq!(state, RemoteConfigState::Applied);
    healthy_child(&mut setup.server, uid, &started).await;

    // Later failures of the check show in the health, without a restart.
    healthy.store(false, Ordering::SeqCst);
    setup
        .server
        .wait_for(uid, "the child reported unhealthy", |record| {
            child_health(record).is_some_and(|health| {
                !health.healthy && attribute(health, "process.pid").as_deref() == Some(&pid)
            })
        })
        .await;
    assert!(agent.terminate().await.success());
    started.exited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_config_waits_for_health_keeps_the_last_good_one() {
    let mut setup = Setup::new().await;
    let (healthy, health_url, _health_task) = health_endpoint("/").await;
    let flags = [
        "--health-url",
        health_url.as_str(),
        "--apply-timeout",
        "10m",
    ];
    let endpoint = setup.server.endpoint("ws");
    let agent = setup.agent(&endpoint, &flags, "agent-1.log");
    let first = next_child(&setup.reports).await;
    let (uid, _) = setup.server.next_connected().await;
    let state = setup
        .server
        .push_config(uid, config("", "mode: proven\n"))
        .await;
    assert_eq!(state, RemoteConfigState::Applied);
    let proven = next_child(&setup.reports).await;
    first.exited().await;

    // The next config never gets healthy; SIGTERM comes while the agent
    // waits for it (ten minutes at most), and it still stops at once.
    healthy.store(false, Ordering::SeqCst);
    setup
        .server
        .registry
        .set_remote_config(uid, config("", "mode: unproven\n"))
        .await
        .unwrap();
    let unproven = next_child(&setup.reports).await;
    assert_eq!(unproven.config, "mode: unproven");
    proven.exited().await;
    setup
        .server
        .wait_for(uid, "the new config APPLYING", |record| {
            record.remote_config_state() == Some(RemoteConfigState::Applying)
        })
        .await;
    assert!(agent.terminate().await.success());
    assert_eq!(unproven.exited().await, ["signal TERM"]);

    // The next start (server unreachable) runs the proven config.
    healthy.store(true, Ordering::SeqCst);
    let agent = setup.agent(&unreachable_endpoint().await, &flags, "agent-2.log");
    let child = next_child(&setup.reports).await;
    assert_eq!(child.config, "mode: proven");
    assert!(agent.terminate().await.success());
    child.exited().await;
}
