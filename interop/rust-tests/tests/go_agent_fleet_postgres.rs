//! opamp-go agents (`goagent`) on two fleet server instances that share one
//! PostgreSQL database (issue 13): a config pushed through the instance the
//! agent is not connected to reaches it, is APPLIED, and both instances show
//! it; over WebSocket and over plain HTTP.
//!
//! Needs Go and PostgreSQL (`OPAMP_TEST_DATABASE_URL`, or a throw-away
//! cluster started with `.ci/postgres.sh`); skips with a notice without
//! either, and fails when `CI=true`.

use std::net::SocketAddr;
use std::time::Duration;

use opamp_interop_tests::{GoProcess, TIMEOUT, go_programs, http_request};
use opamp_testkit::{ChildProcess, postgres_url};
use serde_json::Value;
use tokio::process::Command;

struct Instance {
    process: ChildProcess,
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleet-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0"])
        .args(["--instance-name", name, "--data-dir"])
        .arg(data.path())
        .env("OPAMP_SERVER_STORE", database)
        .env("RUST_LOG", "warn");
    let mut process = ChildProcess::spawn(format!("fleet-server {name}"), command);
    let opamp = process
        .wait_for_line("the OpAMP endpoint", |line| {
            line.starts_with("OpAMP endpoint")
        })
        .await;
    let web = process
        .wait_for_line("the web page", |line| line.starts_with("Web page"))
        .await;
    Instance {
        process,
        opamp: address_after(&opamp, "ws").expect("opamp address"),
        web: address_after(&web, "http").expect("web address"),
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
        let deadline = tokio::time::Instant::now() + TIMEOUT;
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
        let deadline = tokio::time::Instant::now() + TIMEOUT;
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
        self.process.signal("TERM").await;
        let exit = self.process.wait().await;
        assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agents_get_configs_pushed_through_the_other_instance() {
    let Some(go) = go_programs() else { return };
    let Some(database) = postgres_url() else {
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
