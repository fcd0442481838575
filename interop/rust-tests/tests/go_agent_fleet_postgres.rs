//! opamp-go agents (`goagent`) on two fleet server instances that share one
//! PostgreSQL database (issue 13): a config pushed through the instance the
//! agent is not connected to reaches it, is APPLIED, and both instances show
//! it; over WebSocket and over plain HTTP.
//!
//! Needs Go and PostgreSQL (`OPAMP_TEST_DATABASE_URL`, or a throw-away
//! cluster started with `.ci/postgres.sh`); skips with a notice without
//! either, and fails when `CI=true`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use opamp_interop_tests::{EVENT_TIMEOUT, GoProcess, go_programs, http_request};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The test server's URL, or `None` after a notice (outside CI).
fn database_url() -> Option<String> {
    if let Ok(url) = std::env::var("OPAMP_TEST_DATABASE_URL") {
        return Some(url);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/postgres.sh");
    let dir = format!("/tmp/opamp-pg-test-{}-goagent-fleet", std::process::id());
    let output = std::process::Command::new("bash")
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
        "notice: skipping the opamp-go fleet test on PostgreSQL: no OPAMP_TEST_DATABASE_URL and no cluster could be started ({})",
        failure.trim()
    );
    None
}

struct Instance {
    child: Child,
    opamp: SocketAddr,
    web: SocketAddr,
    _data: tempfile::TempDir,
}

fn address_after(line: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = line.split(&format!("{scheme}://")).nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// A `fleet-server` process on `database` named `name`. The database is the
/// test server's own: agents have fresh uids and instance names carry the
/// test's process id, so runs do not meet.
async fn start_instance(database: &str, name: &str) -> Instance {
    let data = tempfile::tempdir().expect("data directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0"])
        .args(["--instance-name", name, "--data-dir"])
        .arg(data.path())
        .env("OPAMP_SERVER_STORE", database)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("fleet-server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut opamp, mut web) = (None, None);
    let announced = tokio::time::timeout(EVENT_TIMEOUT, async {
        while opamp.is_none() || web.is_none() {
            let Ok(Some(line)) = lines.next_line().await else {
                return;
            };
            if line.starts_with("OpAMP endpoint") {
                opamp = address_after(&line, "ws");
            } else if line.starts_with("Web page") {
                web = address_after(&line, "http");
            }
        }
    })
    .await;
    assert!(announced.is_ok(), "instance {name} did not announce itself");
    Instance {
        child,
        opamp: opamp.expect("opamp address"),
        web: web.expect("web address"),
        _data: data,
    }
}

impl Instance {
    async fn try_agent(&self, uid: &str) -> Option<Value> {
        let (status, body) = http_request(
            self.web,
            "GET",
            &format!("/api/agents/{uid}"),
            "application/json",
            b"",
        )
        .await
        .expect("API answers");
        match status {
            200 => Some(serde_json::from_slice(&body).expect("JSON")),
            404 => None,
            _ => panic!("GET {uid}: {status} {}", String::from_utf8_lossy(&body)),
        }
    }

    async fn agent(&self, uid: &str) -> Value {
        self.try_agent(uid).await.expect("a known agent")
    }

    /// Waits until this instance lists `uid` as connected (to any instance).
    async fn wait_connected(&self, uid: &str) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while self
            .try_agent(uid)
            .await
            .is_none_or(|agent| agent["connected"] != true)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{uid} never shown connected on {}",
                self.web
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pushes a one-file config through this instance; returns its hash.
    async fn push(&self, uid: &str, body: &str) -> String {
        let (status, reply) = http_request(
            self.web,
            "PUT",
            &format!("/api/agents/{uid}/config?file=config.yaml"),
            "text/yaml",
            body.as_bytes(),
        )
        .await
        .expect("API answers");
        let reply: Value = serde_json::from_slice(&reply).expect("JSON");
        assert_eq!(status, 202, "{reply}");
        reply["config_hash"].as_str().expect("a hash").to_owned()
    }

    async fn wait_applied(&self, uid: &str, hash: &str) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let agent = self.agent(uid).await;
            if agent["remote_config_status"]["status"] == "APPLIED"
                && agent["remote_config_status"]["config_hash"] == hash
                && agent["config_history"][0]["outcome"] == "APPLIED"
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{uid}: not APPLIED on {}: {agent}",
                self.web
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
        let exit = tokio::time::timeout(EVENT_TIMEOUT, self.child.wait())
            .await
            .expect("stops after SIGTERM")
            .expect("wait");
        assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agents_get_configs_pushed_through_the_other_instance() {
    let Some(go) = go_programs() else { return };
    let Some(database) = database_url() else {
        return;
    };
    let pid = std::process::id();
    let a = start_instance(&database, &format!("go-a-{pid}")).await;
    let b = start_instance(&database, &format!("go-b-{pid}")).await;

    for (transport, held_by, pushed_through) in [("ws", &a, &b), ("http", &b, &a)] {
        let url = format!("{transport}://{}/v1/opamp", held_by.opamp);
        let mut agent = GoProcess::goagent(
            go,
            &[
                "--endpoint".to_owned(),
                url,
                "--heartbeat".to_owned(),
                "300ms".to_owned(),
            ],
        );
        let started = agent.wait_event("started").await;
        let uid = started["uid"].as_str().expect("a uid").to_owned();
        agent.wait_event("connected").await;
        pushed_through.wait_connected(&uid).await;

        let hash = pushed_through
            .push(&uid, &format!("receivers: {{}}\n# {transport}\n"))
            .await;
        let reported = agent
            .wait_for("APPLIED reported by goagent", |event| {
                event["event"] == "remote_config_status"
                    && event["status"] == "APPLIED"
                    && event["hash"] == hash.as_str()
            })
            .await;
        assert!(reported["error"].as_str().unwrap_or("").is_empty());
        held_by.wait_applied(&uid, &hash).await;
        pushed_through.wait_applied(&uid, &hash).await;
        let detail = pushed_through.agent(&uid).await;
        assert_eq!(
            detail["effective_config"]["hash"],
            hash.as_str(),
            "{transport}"
        );
        agent.stop().await;
    }
    a.stop().await;
    b.stop().await;
}
