//! Scale mode: `--count N` runs N agents in one process, each with its own
//! UUIDv7 instance uid (UID-04) kept in its own state directory.

mod agent_support;

use std::collections::BTreeSet;

use agent_support::{AgentProcess, TestServer, state_dir};
use opamp_proto::{AgentCapabilities, InstanceUid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_runs_distinct_agents_in_one_process() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir(dir.path());
    let endpoint = server.endpoint("http");
    let agent = AgentProcess::start(
        &endpoint,
        dir.path(),
        "agent.log",
        &["--heartbeat", "1s", "--count", "3"],
    );
    let mut uids = BTreeSet::new();
    while uids.len() < 3 {
        let (uid, _) = server.next_connected().await;
        assert_eq!(uid.to_uuid().get_version_num(), 7);
        uids.insert(uid);
    }
    let saved: BTreeSet<InstanceUid> = (0..3)
        .map(|index| {
            std::fs::read_to_string(state.join(format!("agent-{index}")).join("instance_uid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(saved, uids);

    // They share one process, so only one reports its own metrics.
    let mut own_metrics = 0;
    for uid in &uids {
        let record = server
            .wait_for(*uid, "capabilities", |record| {
                record.status.description.is_some()
            })
            .await;
        if record
            .status
            .capabilities
            .contains(AgentCapabilities::REPORTS_OWN_METRICS)
        {
            own_metrics += 1;
        }
    }
    assert_eq!(own_metrics, 1);
    assert!(agent.terminate().await.success());
}
