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
use opamp_proto::{AgentConfigMap, ComponentHealth, InstanceUid};
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

    /// Starts the agent against the test server with `extra` flags;
    /// returns it, its first child and its uid.
    async fn start(&mut self, extra: &[&str]) -> (AgentProcess, ChildStart, InstanceUid) {
        let endpoint = self.server.endpoint("ws");
        let agent = self.agent(&endpoint, extra, "agent.log");
        let child = next_child(&self.reports).await;
        let (uid, _) = self.server.next_connected().await;
        (agent, child, uid)
    }

    /// Starts the agent with the child's health being whether the file
    /// `healthy` exists, so the test decides when a child is healthy and a
    /// crash is caught by the exit alone, whatever the timing. Writes the
    /// file once the agent is connected and waits for the first child to
    /// be healthy; returns the agent, that child, its uid and the file.
    async fn start_with_marker_health(
        &mut self,
    ) -> (AgentProcess, ChildStart, InstanceUid, PathBuf) {
        let marker = self.path("healthy");
        let check = marker_check(self.dir.path(), &marker);
        let (agent, first, uid) = self
            .start(&["--health-command", &check, "--apply-timeout", "10m"])
            .await;
        std::fs::write(&marker, "").unwrap();
        self.healthy_child(uid, &first).await;
        (agent, first, uid, marker)
    }

    /// Starts the agent with the server unreachable; returns the config its
    /// child started with, once both are stopped.
    async fn offline_config(&self, flags: &[&str], log: &str) -> String {
        let agent = self.agent(&unreachable_endpoint().await, flags, log);
        let child = next_child(&self.reports).await;
        let config = child.config.clone();
        stop(agent, child).await;
        config
    }

    /// Offers a config with `body` (one line) without waiting for its
    /// outcome: the `running` child exits and a new one starts on that
    /// config. Returns the offer's hash and the new child.
    async fn offer(
        &mut self,
        uid: InstanceUid,
        running: ChildStart,
        body: &str,
    ) -> (Bytes, ChildStart) {
        let offer = self
            .server
            .registry
            .set_remote_config(uid, config("", body))
            .await
            .unwrap();
        let next = next_child(&self.reports).await;
        assert_eq!(next.config, body.trim_end());
        running.exited().await;
        (offer.hash, next)
    }

    /// Like [`offer`](Self::offer), and the config must be APPLIED.
    async fn apply(&mut self, uid: InstanceUid, running: ChildStart, body: &str) -> ChildStart {
        let (hash, next) = self.offer(uid, running, body).await;
        let state = self.server.config_outcome(uid, &hash).await;
        assert_eq!(state, RemoteConfigState::Applied, "{body:?}");
        next
    }

    /// Pushes a config with `body` that must FAIL; returns the message.
    async fn fail(&mut self, uid: InstanceUid, body: &str) -> String {
        let state = self.server.push_config(uid, config("", body)).await;
        let RemoteConfigState::Failed { message } = state else {
            panic!("expected FAILED for {body:?}, got {state:?}");
        };
        message
    }

    /// Pushes a config with `body` the child crashes on: it must FAIL, the
    /// `running` child exits and a new one starts on the config it rolls
    /// back to. Returns the failure message and the new child.
    async fn roll_back(
        &mut self,
        uid: InstanceUid,
        running: ChildStart,
        body: &str,
    ) -> (String, ChildStart) {
        let message = self.fail(uid, body).await;
        running.exited().await;
        (message, next_child(&self.reports).await)
    }

    /// Waits until the child's health, as reported for `child` (its pid),
    /// satisfies `check` with the record; returns that record.
    async fn wait_child(
        &mut self,
        uid: InstanceUid,
        what: &str,
        child: &ChildStart,
        check: impl Fn(&AgentRecord, &ComponentHealth) -> bool,
    ) -> AgentRecord {
        let pid = child.pid.clone();
        self.server
            .wait_for(uid, what, |record| {
                child_health(record).is_some_and(|health| {
                    attribute(health, "process.pid").as_deref() == Some(&pid)
                        && check(record, health)
                })
            })
            .await
    }

    async fn healthy_child(&mut self, uid: InstanceUid, child: &ChildStart) -> AgentRecord {
        self.wait_child(uid, "the child healthy", child, |_, health| health.healthy)
            .await
    }

    /// Waits until `child` is healthy; returns its restart count then.
    async fn healthy_restart_count(&mut self, uid: InstanceUid, child: &ChildStart) -> String {
        let record = self.healthy_child(uid, child).await;
        attribute(child_health(&record).unwrap(), "restart_count").unwrap()
    }
}

/// Stops the agent (SIGTERM, clean exit), then waits for `child` to exit.
async fn stop(agent: AgentProcess, child: ChildStart) {
    assert!(agent.terminate().await.success());
    child.exited().await;
}

/// Asserts that `record` shows `running` still healthy, not restarted since
/// its restart count was `restarts`, with `body` as the effective config.
#[track_caller]
fn assert_still_running(
    record: &AgentRecord,
    running: &ChildStart,
    restarts: &str,
    body: &str,
    context: &str,
) {
    let health = child_health(record).unwrap();
    assert!(health.healthy, "{context}");
    assert_eq!(
        attribute(health, "process.pid").unwrap(),
        running.pid,
        "{context}"
    );
    assert_eq!(
        attribute(health, "restart_count").unwrap(),
        restarts,
        "{context}"
    );
    assert_eq!(
        effective_body(record, "").as_deref(),
        Some(body.as_bytes()),
        "{context}"
    );
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
fn child_health(record: &AgentRecord) -> Option<&ComponentHealth> {
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
    let config = setup.offline_config(&flags, "agent-1.log").await;
    assert_eq!(config, "mode: fallback");

    // With the server: the fallback runs and is reported as the effective
    // config until a remote config replaces it.
    let (agent, child, uid) = setup.start(&flags).await;
    assert_eq!(child.config, "mode: fallback");
    setup
        .server
        .wait_for(uid, "the fallback as effective config", |record| {
            effective_body(record, "").as_deref() == Some(b"mode: fallback\n".as_slice())
        })
        .await;
    let remote = setup.apply(uid, child, "mode: remote\n").await;
    stop(agent, remote).await;

    // Server unreachable again: the persisted remote config runs, not the
    // fallback.
    let config = setup.offline_config(&flags, "agent-3.log").await;
    assert_eq!(config, "mode: remote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_config_rolls_back_to_the_last_good_one() {
    let mut setup = Setup::new().await;
    let (agent, first, uid, marker) = setup.start_with_marker_health().await;

    // A config the child is healthy with: the last good one from now on.
    let good = setup.apply(uid, first, "mode: good\n").await;

    // A config the child dies on: FAILED, and the child runs the good
    // config again.
    std::fs::remove_file(&marker).unwrap();
    let (message, restored) = setup.roll_back(uid, good, "crash: yes\n").await;
    assert_contains(&message, "rolled back to the last good config");
    assert_contains(&message, "exit status: 2");
    assert_eq!(restored.config, "mode: good");

    // The health follows the restored child: not healthy until its check
    // passes, then healthy, with the failure kept as its last error.
    let record = setup
        .wait_child(
            uid,
            "the restored child probed unhealthy",
            &restored,
            |_, health| !health.healthy && health.status.starts_with("not healthy"),
        )
        .await;
    assert!(!record.status.health.as_ref().unwrap().healthy);
    std::fs::write(&marker, "").unwrap();
    let record = setup.healthy_child(uid, &restored).await;
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
    stop(agent, restored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_messages_carry_the_last_lines_of_the_childs_stderr() {
    let mut setup = Setup::new().await;
    let (agent, first, uid, marker) = setup.start_with_marker_health().await;

    std::fs::remove_file(&marker).unwrap();
    let (message, restored) = setup.roll_back(uid, first, "crash: now\n").await;
    // All three lines, in order, not just the last one.
    let expected = CRASH_LINES.join("\n");
    assert_contains(&message, &expected);
    assert_contains(&message, "last stderr lines");
    assert_eq!(restored.config, "");
    // The child's health carries the same context.
    std::fs::write(&marker, "").unwrap();
    let record = setup.healthy_child(uid, &restored).await;
    let health = child_health(&record).unwrap();
    assert_contains(&health.last_error, &expected);
    stop(agent, restored).await;
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
    let (agent, first, uid) = setup
        .start(&["--ready-after", "1s", "--validate-command", &validate])
        .await;
    let running = setup.apply(uid, first, "receivers: [otlp]\n").await;
    let restarts = setup.healthy_restart_count(uid, &running).await;

    // A config the validator rejects: FAILED with its output, and the
    // child was never stopped (same pid, same restart count, same config).
    let message = setup.fail(uid, "receivers: [bogus]\n").await;
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
    assert_still_running(
        &record,
        &running,
        &restarts,
        "receivers: [otlp]\n",
        "after the rejected config",
    );

    // A config it accepts goes through.
    let next = setup
        .apply(uid, running, "receivers: [otlp, zipkin]\n")
        .await;
    stop(agent, next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_remote_config_keeps_the_child_running_on_its_config() {
    let mut setup = Setup::new().await;
    let (agent, first, uid) = setup.start(&["--ready-after", "1s"]).await;
    let running = setup.apply(uid, first, "mode: kept\n").await;
    let restarts = setup.healthy_restart_count(uid, &running).await;

    // Both kinds of empty: no files at all, and a file without content.
    for (round, empty) in [AgentConfigMap::default(), config("", "")]
        .into_iter()
        .enumerate()
    {
        let state = setup.server.push_config(uid, empty).await;
        assert_eq!(state, RemoteConfigState::Applied, "round {round}");
        let record = setup.server.registry.agent(uid).await.unwrap().unwrap();
        assert_still_running(
            &record,
            &running,
            &restarts,
            "mode: kept\n",
            &format!("round {round}"),
        );
    }
    stop(agent, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_is_reported_when_the_health_endpoint_says_healthy() {
    let mut setup = Setup::new().await;
    let (healthy, health_url, _health_task) = health_endpoint("/healthz").await;
    // Neither the readiness window nor the apply timeout can produce the
    // APPLIED below: only the health endpoint can.
    let (agent, first, uid) = setup
        .start(&[
            "--health-url",
            &health_url,
            "--ready-after",
            "10m",
            "--apply-timeout",
            "10m",
        ])
        .await;
    setup.healthy_child(uid, &first).await;

    // The endpoint answers 503: the restarted child is up but not healthy,
    // and the config stays APPLYING.
    healthy.store(false, Ordering::SeqCst);
    let (hash, started) = setup.offer(uid, first, "mode: slow start\n").await;
    setup
        .wait_child(
            uid,
            "the new child unhealthy while APPLYING",
            &started,
            |record, health| {
                record.remote_config_state() == Some(RemoteConfigState::Applying)
                    && !health.healthy
                    && health.status.contains("503")
            },
        )
        .await;

    // Healthy: APPLIED follows.
    healthy.store(true, Ordering::SeqCst);
    let state = setup.server.config_outcome(uid, &hash).await;
    assert_eq!(state, RemoteConfigState::Applied);
    setup.healthy_child(uid, &started).await;

    // Later failures of the check show in the health, without a restart.
    healthy.store(false, Ordering::SeqCst);
    setup
        .wait_child(
            uid,
            "the child reported unhealthy",
            &started,
            |_, health| !health.healthy,
        )
        .await;
    stop(agent, started).await;
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
    let (agent, first, uid) = setup.start(&flags).await;
    let proven = setup.apply(uid, first, "mode: proven\n").await;

    // The next config never gets healthy; SIGTERM comes while the agent
    // waits for it (ten minutes at most), and it still stops at once.
    healthy.store(false, Ordering::SeqCst);
    let (_, unproven) = setup.offer(uid, proven, "mode: unproven\n").await;
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
    let config = setup.offline_config(&flags, "agent-2.log").await;
    assert_eq!(config, "mode: proven");
}
