//! opamp-go agents (`goagent`) on two fleet server instances that share one
//! PostgreSQL database (issue 13): a config pushed through the instance the
//! agent is not connected to reaches it, is APPLIED, and both instances show
//! it; over WebSocket and over plain HTTP.
//!
//! Needs Go and PostgreSQL (`OPAMP_TEST_DATABASE_URL`, or a throw-away
//! cluster started with `.ci/postgres.sh`); skips with a notice without
//! either, and fails when `CI=true`.

use std::path::Path;

use opamp_interop_tests::{FleetServerProcess, GoProcess, go_programs};
use opamp_testkit::postgres_url;

/// A `fleet-server` process on `database` named `name`. The database is the
/// test server's own: agents have fresh uids and instance names carry the
/// test's process id, so runs do not meet.
async fn start_instance(database: &str, name: &str) -> FleetServerProcess {
    FleetServerProcess::launch(
        Path::new(env!("CARGO_BIN_EXE_fleet-server")),
        &["--instance-name".to_owned(), name.to_owned()],
        &[("OPAMP_SERVER_STORE", database)],
        None,
    )
    .await
}

/// Pushes a one-file config through `instance`; returns its hash.
async fn push(instance: &FleetServerProcess, uid: &str, body: &str) -> String {
    instance.put_config(uid, "config.yaml", body).await
}

/// Waits until `instance` shows `uid`'s config `hash` as APPLIED.
async fn wait_applied(instance: &FleetServerProcess, uid: &str, hash: &str) {
    instance
        .wait_agent(uid, "the config APPLIED", |agent| {
            agent["remote_config_status"]["status"] == "APPLIED"
                && agent["remote_config_status"]["config_hash"] == hash
                && agent["config_history"][0]["outcome"] == "APPLIED"
        })
        .await;
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
        pushed_through
            .wait_agent(&uid, "connected", |agent| agent["connected"] == true)
            .await;

        let hash = push(
            pushed_through,
            &uid,
            &format!("receivers: {{}}\n# {transport}\n"),
        )
        .await;
        let reported = agent
            .wait_for("APPLIED reported by goagent", |event| {
                event["event"] == "remote_config_status"
                    && event["status"] == "APPLIED"
                    && event["hash"] == hash.as_str()
            })
            .await;
        assert!(reported["error"].as_str().unwrap_or("").is_empty());
        wait_applied(held_by, &uid, &hash).await;
        wait_applied(pushed_through, &uid, &hash).await;
        let detail = pushed_through.agent(&uid).await.expect("a known agent");
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
