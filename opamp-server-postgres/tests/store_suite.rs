//! One behavioural suite for every `AgentStore`: the in-memory store and
//! `PgStore` pass the same functions. Then what only a store shared by
//! several instances must do: compare-and-set with merge, fencing of stale
//! owners, filter columns, idempotent migrations.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_proto::{
    AgentConfigMap, AgentDescription, AgentRemoteConfig, ComponentHealth, InstanceUid,
    PackagesAvailable, RemoteConfigStatus, RemoteConfigStatuses,
};
use std::sync::Arc;

use opamp_server::{
    AgentRecord, AgentStore, Delivery, MemoryStore, OpampServer, Registry, RemoteConfigState,
    StoreError, TransportKind,
};
use opamp_server_postgres::{PgStore, SaveConflict};
use opamp_testkit::uid;
use support::{
    agent_row, backend, body_of, config_map, eventually, fresh_database, report, sql, text,
    ws_exchange, ws_recv,
};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn config(hash: u8) -> AgentRemoteConfig {
    AgentRemoteConfig {
        config: Some(AgentConfigMap::default()),
        config_hash: vec![hash].into(),
    }
}

/// A record with something in every part the stores keep.
/// The desired remote config `store` holds for `uid`.
async fn desired_config(store: &PgStore, uid: InstanceUid) -> Option<AgentRemoteConfig> {
    let record = store.load(uid).await.unwrap().expect("the agent is stored");
    record.desired.remote_config
}

/// Sets the desired remote config `config(n)` through `here` (a load, the
/// change, a save) and checks that `there` reads it.
async fn set_config_seen_elsewhere(here: &PgStore, there: &PgStore, uid: InstanceUid, n: u8) {
    let mut record = here.load(uid).await.unwrap().expect("the agent is stored");
    record.desired.remote_config = Some(config(n));
    here.save(record).await.unwrap();
    assert_eq!(desired_config(there, uid).await, Some(config(n)));
}

/// Record `n`, saved through `a` and read again by `a` (as when it starts
/// processing a report); then `b` sets the desired remote config
/// `config(changed)`. Returns the uid and a's copy from before b's change.
async fn read_then_changed_elsewhere(
    a: &PgStore,
    b: &PgStore,
    n: u8,
    changed: u8,
) -> (InstanceUid, AgentRecord) {
    let uid = save_new(a, n).await.uid;
    let earlier = a.load(uid).await.unwrap().unwrap();
    let mut desired = b.load(uid).await.unwrap().unwrap();
    desired.desired.remote_config = Some(config(changed));
    b.save(desired).await.unwrap();
    (uid, earlier)
}

fn full_record(n: u8) -> AgentRecord {
    let mut record = AgentRecord::new(uid(n), at(0));
    record.status.description = Some(
        AgentDescription::for_service("io.example.collector", "1.2.3")
            .with_non_identifying("host.name", format!("host-{n}"))
            .with_non_identifying("os.type", "linux"),
    );
    record.status.health = Some(ComponentHealth {
        healthy: true,
        ..Default::default()
    });
    record.status.remote_config_status = Some(RemoteConfigStatus {
        last_remote_config_hash: vec![n].into(),
        status: RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    record.desired.remote_config = Some(config(n));
    record.last_seen = at(u64::from(n));
    record
}

/// [`full_record`] `n`, saved through `store` the way a registry saves a
/// new agent (a load that finds nothing, then the save).
async fn save_new<S: AgentStore + ?Sized>(store: &S, n: u8) -> AgentRecord {
    let record = full_record(n);
    store.load(record.uid).await.unwrap();
    store.save(record.clone()).await.unwrap();
    record
}

// ---- the shared suite ----

async fn unknown_agent_is_absent(store: &impl AgentStore) {
    assert_eq!(store.load(uid(200)).await.unwrap(), None);
    assert!(!store.contains(uid(200)).await.unwrap());
    assert!(store.list().await.unwrap().is_empty());
}

async fn saved_record_round_trips(store: &impl AgentStore) {
    let record = save_new(store, 1).await;
    assert_eq!(store.load(record.uid).await.unwrap(), Some(record.clone()));
    assert!(store.contains(record.uid).await.unwrap());
    assert_eq!(store.list().await.unwrap(), vec![record]);
}

async fn save_replaces(store: &impl AgentStore) {
    let mut record = save_new(store, 2).await;
    let mut loaded = store.load(record.uid).await.unwrap().unwrap();
    loaded.status.description = Some(AgentDescription::for_service("io.example.other", "2"));
    loaded.desired.remote_config = None;
    loaded.last_seen = at(100);
    store.save(loaded.clone()).await.unwrap();
    assert_eq!(store.load(record.uid).await.unwrap(), Some(loaded.clone()));
    // And once more, without changing anything.
    store.save(loaded.clone()).await.unwrap();
    record = store.load(record.uid).await.unwrap().unwrap();
    assert_eq!(record, loaded);
}

async fn remove_forgets_and_unknown_remove_is_fine(store: &impl AgentStore) {
    let record = save_new(store, 3).await;
    store.remove(record.uid).await.unwrap();
    assert_eq!(store.load(record.uid).await.unwrap(), None);
    assert!(!store.contains(record.uid).await.unwrap());
    store.remove(record.uid).await.unwrap();
    store.remove(uid(201)).await.unwrap();
    // A removed agent can come back.
    store.save(record.clone()).await.unwrap();
    assert_eq!(store.load(record.uid).await.unwrap(), Some(record));
}

async fn list_returns_every_record(store: &impl AgentStore) {
    let mut expected = Vec::new();
    for n in 10..20 {
        let record = save_new(store, n).await;
        expected.push(record);
    }
    let mut listed = store.list().await.unwrap();
    listed.sort_by_key(|record| record.uid);
    assert_eq!(listed, expected);
}

/// Serves `registry` on an ephemeral loopback port.
async fn serve(registry: Registry) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = OpampServer::builder().registry(registry).build();
    tokio::spawn(server.serve_with_shutdown(listener, std::future::pending()));
    addr
}

async fn connect(addr: std::net::SocketAddr) -> support::Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/opamp"))
        .await
        .expect("WebSocket upgrade");
    ws
}

/// Through real registries: desired state set on one instance is offered
/// by another when the agent reconnects there (RCFG-08), with the status
/// the first instance stored.
async fn desired_state_outlives_the_instance_that_set_it<S: AgentStore>(store: Arc<S>) {
    let agent = uid(50);
    let first = Registry::builder().store(Arc::clone(&store)).build();
    let mut ws = connect(serve(first.clone()).await).await;
    ws_exchange(&mut ws, &report(agent, 0)).await;
    let offer = first
        .set_remote_config(agent, config_map("kept: true\n"))
        .await
        .unwrap();
    assert_eq!(offer.delivery, Some(Delivery::Sent));
    assert_eq!(body_of(&ws_recv(&mut ws).await), "kept: true\n");
    drop(ws);

    let second = Registry::builder().store(Arc::clone(&store)).build();
    let mut ws = connect(serve(second.clone()).await).await;
    let reply = ws_exchange(&mut ws, &report(agent, 1)).await;
    assert_eq!(
        body_of(&reply),
        "kept: true\n",
        "RCFG-08: offered until echoed"
    );
    let record = second.agent(agent).await.unwrap().unwrap();
    assert_eq!(
        record.remote_config_state(),
        Some(RemoteConfigState::Pending)
    );
    assert_eq!(
        record.status.description,
        Some(AgentDescription::for_service("io.example.test", "1.0"))
    );
    assert!(
        second
            .agents()
            .await
            .unwrap()
            .iter()
            .any(|listed| listed.uid == agent)
    );
}

/// Every function above, each on an empty store from `fresh`.
async fn run_suite<S, F, Fut>(mut fresh: F)
where
    S: AgentStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    unknown_agent_is_absent(&fresh().await).await;
    saved_record_round_trips(&fresh().await).await;
    save_replaces(&fresh().await).await;
    remove_forgets_and_unknown_remove_is_fine(&fresh().await).await;
    list_returns_every_record(&fresh().await).await;
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    run_suite(|| async { MemoryStore::new() }).await;
    desired_state_outlives_the_instance_that_set_it(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn pg_store_passes_the_suite() {
    if fresh_database().await.is_none() {
        return;
    }
    run_suite(|| async {
        let config = fresh_database().await.expect("database");
        backend(&config, "suite").await.store()
    })
    .await;
    let config = fresh_database().await.expect("database");
    desired_state_outlives_the_instance_that_set_it(Arc::new(
        backend(&config, "suite").await.store(),
    ))
    .await;
}

// ---- what a store shared by several instances must do ----

fn conflict(error: &StoreError) -> Option<&SaveConflict> {
    match error {
        StoreError::Backend(source) | StoreError::NotOwner(source) => {
            source.downcast_ref::<SaveConflict>()
        }
        _ => None,
    }
}

async fn two_instances() -> Option<(
    PgStore,
    PgStore,
    opamp_server_postgres::PgBackend,
    opamp_server_postgres::PgBackend,
)> {
    let config = fresh_database().await?;
    let a = backend(&config, "instance-a").await;
    let b = backend(&config, "instance-b").await;
    Some((a.store(), b.store(), a, b))
}

#[tokio::test]
async fn desired_state_set_elsewhere_survives_a_status_save() {
    let Some((a, b, _, _)) = two_instances().await else {
        return;
    };
    let record = save_new(&a, 1).await;

    // Instance a holds the agent and is processing a status report...
    let mut reported = a.load(record.uid).await.unwrap().unwrap();
    // ...while instance b sets new desired state.
    let mut desired = b.load(record.uid).await.unwrap().unwrap();
    desired.desired.remote_config = Some(config(9));
    desired.desired.packages = Some(PackagesAvailable::default());
    b.save(desired).await.unwrap();

    reported.status.health = Some(ComponentHealth {
        healthy: false,
        ..Default::default()
    });
    reported.last_seen = at(50);
    a.save(reported.clone()).await.unwrap();

    let stored = b.load(record.uid).await.unwrap().unwrap();
    assert_eq!(stored.status, reported.status, "a's report is kept");
    assert_eq!(stored.last_seen, at(50));
    assert_eq!(
        stored.desired.remote_config,
        Some(config(9)),
        "b's config is kept"
    );
    assert_eq!(stored.desired.packages, Some(PackagesAvailable::default()));
}

#[tokio::test]
async fn a_read_between_load_and_save_does_not_hide_another_writers_change() {
    let Some((a, b, _, _)) = two_instances().await else {
        return;
    };
    // a starts processing a report, b sets desired state...
    let (uid, mut reported) = read_then_changed_elsewhere(&a, &b, 6, 60).await;
    // ...someone reads the agent through a (an API call), seeing b's change...
    assert_eq!(desired_config(&a, uid).await, Some(config(60)));
    // ...and a saves the report it built from the earlier read.
    reported.last_seen = at(61);
    a.save(reported).await.unwrap();

    let stored = b.load(uid).await.unwrap().unwrap();
    assert_eq!(
        stored.desired.remote_config,
        Some(config(60)),
        "b's change survives"
    );
    assert_eq!(stored.last_seen, at(61), "a's report is kept");
}

#[tokio::test]
async fn the_same_desired_part_changed_twice_is_a_conflict_not_last_writer_wins() {
    let Some((a, b, _, _)) = two_instances().await else {
        return;
    };
    let (uid, mut from_a) = read_then_changed_elsewhere(&a, &b, 2, 20).await;
    from_a.desired.remote_config = Some(config(30));
    let error = a.save(from_a).await.unwrap_err();
    assert_eq!(
        conflict(&error),
        Some(&SaveConflict::DesiredStateChanged {
            uid,
            part: "remote_config"
        }),
        "{error}"
    );
    assert_eq!(desired_config(&a, uid).await, Some(config(20)));

    // After loading again, a's change goes through.
    set_config_seen_elsewhere(&a, &b, uid, 30).await;
}

#[tokio::test]
async fn a_stale_owner_never_overwrites_what_the_agent_reported() {
    let Some((a, b, backend_a, backend_b)) = two_instances().await else {
        return;
    };
    let record = full_record(3);
    let bus_a = backend_a.bus();
    let bus_b = backend_b.bus();
    let epoch_a = bus_a
        .claim(record.uid, TransportKind::WebSocket)
        .await
        .unwrap();
    a.load(record.uid).await.unwrap();
    a.save(record.clone()).await.unwrap();
    let mut late = a.load(record.uid).await.unwrap().unwrap();

    // The agent reconnects to b, which claims it with a newer epoch.
    let epoch_b = bus_b
        .claim(record.uid, TransportKind::WebSocket)
        .await
        .unwrap();
    assert!(epoch_b > epoch_a);
    let mut current = b.load(record.uid).await.unwrap().unwrap();
    current.last_seen = at(70);
    b.save(current.clone()).await.unwrap();

    // a's old connection closes late and a writes what it last knew.
    late.last_seen = at(60);
    let error = a.save(late).await.unwrap_err();
    assert_eq!(
        conflict(&error),
        Some(&SaveConflict::StaleOwner {
            uid: record.uid,
            epoch: epoch_a,
            current: epoch_b
        }),
        "{error}"
    );
    assert_eq!(b.load(record.uid).await.unwrap(), Some(current.clone()));
    // a's release of its old epoch does not undo b's claim.
    assert!(!bus_a.release(record.uid, epoch_a).await.unwrap());
    assert_eq!(bus_b.epoch(record.uid), Some(epoch_b));

    // Desired state may still be set from a (it is not what the agent reported).
    set_config_seen_elsewhere(&a, &b, record.uid, 77).await;
}

#[tokio::test]
async fn a_removal_elsewhere_reaches_the_contains_cache() {
    let Some((a, b, backend_a, _)) = two_instances().await else {
        return;
    };
    backend_a.listening().await;
    let record = save_new(&a, 4).await;
    assert!(a.contains(record.uid).await.unwrap());
    b.remove(record.uid).await.unwrap();
    eventually("a to see the removal", || async {
        !a.contains(record.uid).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn rows_carry_the_columns_a_fleet_ui_filters_by() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let backend = backend(&config, "columns").await;
    let store = backend.store();
    let record = save_new(&store, 5).await;
    let query = "SELECT service_name, service_version, host_name, os_type, remote_config_state,
                    healthy, transport, connected_instance, last_seen, version
             FROM opamp_agents WHERE uid = $1";
    let row = agent_row(&config, query, record.uid).await;
    assert_eq!(text(&row, 0).as_deref(), Some("io.example.collector"));
    assert_eq!(text(&row, 1).as_deref(), Some("1.2.3"));
    assert_eq!(text(&row, 2).as_deref(), Some("host-5"));
    assert_eq!(text(&row, 3).as_deref(), Some("linux"));
    assert_eq!(
        text(&row, 4).as_deref(),
        Some("applied"),
        "the status echoes the desired hash"
    );
    assert_eq!(row.get::<_, Option<bool>>(5), Some(true));
    assert_eq!(row.get::<_, Option<String>>(6), None, "not connected");
    assert_eq!(row.get::<_, Option<String>>(7), None);
    assert_eq!(row.get::<_, SystemTime>(8), at(5));
    assert_eq!(row.get::<_, i64>(9), 1);
}

#[tokio::test]
async fn migrations_apply_once_however_many_instances_start() {
    let Some(config) = fresh_database().await else {
        return;
    };
    let starts = (0..3).map(|n| {
        let config = config.clone();
        async move { backend(&config, &format!("starter-{n}")).await }
    });
    let backends = futures_util::future::join_all(starts).await;
    assert_eq!(backends.len(), 3);
    let client = sql(&config).await;
    let rows = client
        .query(
            "SELECT version, name FROM opamp_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let applied: Vec<(i32, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(applied, vec![(1, "initial".to_owned())]);
}
