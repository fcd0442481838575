//! A second agent claiming the uid of a live agent (a cloned VM, or an
//! impostor; UID-09, UID-10, SEC-12), with real clients on both sides and
//! across transports, under both duplicate policies. The live agent keeps
//! its connection; the newcomer gets a new uid or is refused, and a refused
//! one cannot take the uid over by reconnecting until the live agent leaves.
//!
//! Same-transport WebSocket cases with raw frames are in `websocket.rs`
//! (`uid_09_...`, `uid_10_...`); the real-client WebSocket pair under
//! `AssignNewUid` is in `with_client.rs`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opamp_client::{
    AgentCapabilities, AgentDescription, ExponentialBackoff, OpampClient, RetryPolicy,
};
use opamp_proto::{InstanceUid, ServerErrorResponse, ServerErrorResponseType};
use opamp_server::{
    AgentEvent, Callbacks, Connection, DisconnectReason, DuplicateUidPolicy, OpampServer, Registry,
    TransportKind,
};
use opamp_testkit::{RunningServer, count_reaches, until_all, within_for};
use tokio::sync::watch;
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(3600);

/// Every connection end the server reported, with its time.
#[derive(Default)]
struct Ends {
    ends: Mutex<Vec<(Instant, u64, DisconnectReason)>>,
}

impl Callbacks for Ends {
    fn on_disconnected(&self, connection: &Connection, reason: &DisconnectReason) {
        self.ends
            .lock()
            .unwrap()
            .push((Instant::now(), connection.id(), reason.clone()));
    }
}

impl Ends {
    fn refusals(&self) -> Vec<Instant> {
        self.ends
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, reason)| *reason == DisconnectReason::DuplicateRefused)
            .map(|(at, _, _)| *at)
            .collect()
    }

    fn reasons_for(&self, id: u64) -> Vec<DisconnectReason> {
        self.ends
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, connection, _)| *connection == id)
            .map(|(_, _, reason)| reason.clone())
            .collect()
    }
}

/// What an agent heard from the server about its uid.
struct Told {
    bad_requests: watch::Sender<usize>,
    new_uid: watch::Sender<Option<InstanceUid>>,
}

impl opamp_client::Callbacks for Told {
    fn on_error_response(&self, error: &ServerErrorResponse) {
        if error.r#type() == ServerErrorResponseType::BadRequest {
            self.bad_requests.send_modify(|count| *count += 1);
        }
    }

    fn on_new_instance_uid(&self, uid: InstanceUid) {
        self.new_uid.send_replace(Some(uid));
    }
}

struct Agent {
    client: OpampClient,
    bad_requests: watch::Receiver<usize>,
    new_uid: watch::Receiver<Option<InstanceUid>>,
}

fn agent(endpoint: String, uid: InstanceUid) -> Agent {
    let (bad_requests_tx, bad_requests) = watch::channel(0);
    let (new_uid_tx, new_uid) = watch::channel(None);
    let client = OpampClient::builder(endpoint)
        .instance_uid(uid)
        .agent_description(AgentDescription::for_service("io.example.clone", "1.0"))
        .capabilities(AgentCapabilities::REPORTS_HEARTBEAT)
        .heartbeat_interval(Duration::from_secs(30))
        .polling_interval(Duration::from_secs(5))
        // Windows 1 s, 2 s, 4 s, ...; always half of the window.
        .retry_policy(Arc::new(|| {
            Box::new(ExponentialBackoff::new().with_jitter_source(|| 0.5)) as Box<dyn RetryPolicy>
        }))
        .callbacks(Told {
            bad_requests: bad_requests_tx,
            new_uid: new_uid_tx,
        })
        .build()
        .expect("valid client settings");
    Agent {
        client,
        bad_requests,
        new_uid,
    }
}

async fn serve(policy: DuplicateUidPolicy) -> RunningServer<Ends> {
    let registry = Registry::builder().duplicate_policy(policy).build();
    RunningServer::start(
        OpampServer::builder()
            .registry(registry)
            .callbacks(Ends::default())
            .build(),
    )
    .await
}

/// Starts the live agent and waits until the server holds it.
async fn live_agent(serving: &RunningServer<Ends>, scheme: &str, uid: InstanceUid) -> (Agent, u64) {
    let original = agent(serving.endpoint(scheme), uid);
    original.client.start().await.unwrap();
    within_for(
        BOUND,
        "the live agent connects",
        until_all(serving.server.registry(), [uid], |record| {
            record.is_connected() && record.status.description.is_some()
        }),
    )
    .await;
    let connection = serving.server.registry().connection(uid).expect("live");
    (original, connection.id())
}

/// Starts an agent claiming `uid` and waits until it has been refused
/// `times` times.
async fn refused_impostor(
    serving: &RunningServer<Ends>,
    scheme: &str,
    uid: InstanceUid,
    times: usize,
) -> Agent {
    let mut impostor = agent(serving.endpoint(scheme), uid);
    impostor.client.start().await.unwrap();
    count_reaches(
        BOUND,
        "the duplicate is refused again and again",
        &mut impostor.bad_requests,
        times,
    )
    .await;
    impostor
}

/// Stops the agents, then the server.
async fn stop_all(serving: RunningServer<Ends>, agents: [Agent; 2]) {
    for agent in agents {
        agent.client.stop().await;
    }
    serving.stop().await;
}

/// Regression: under `Refuse`, the refused client reconnects at once
/// (WS-19) with its next `sequence_num`, which continued the live agent's
/// numbering and used to pass for the live agent reconnecting: the two took
/// the uid from each other on every reconnect, without backoff.
#[tokio::test(start_paused = true)]
async fn uid_10_a_refused_duplicate_cannot_take_the_uid_by_reconnecting() {
    let serving = serve(DuplicateUidPolicy::Refuse).await;
    let registry = serving.server.registry();
    let uid = InstanceUid::new_v7();
    let (original, original_connection) = live_agent(&serving, "ws", uid).await;

    let impostor = refused_impostor(&serving, "ws", uid, 5).await;
    assert_eq!(
        registry.connection(uid).map(|c| c.id()),
        Some(original_connection),
        "the live agent keeps its connection"
    );
    assert!(
        serving
            .server
            .callbacks()
            .reasons_for(original_connection)
            .is_empty(),
        "the live connection was never replaced"
    );
    assert_eq!(registry.connected(), vec![uid]);
    assert_eq!(registry.agents().await.unwrap().len(), 1);
    // The refused client backs off: one immediate reconnect, then 0.5 s,
    // 1 s, 2 s.
    let refusals = serving.server.callbacks().refusals();
    let gaps: Vec<Duration> = refusals.windows(2).map(|pair| pair[1] - pair[0]).collect();
    for (gap, least) in gaps.iter().zip([0, 500, 1000, 2000]) {
        assert!(
            *gap >= Duration::from_millis(least),
            "refusals came {gaps:?} apart"
        );
    }

    // Once the live agent is gone, the uid is free for the other one.
    original.client.stop().await;
    within_for(BOUND, "the other agent takes the free uid", async {
        let mut events = registry.subscribe();
        loop {
            if registry
                .connection(uid)
                .is_some_and(|connection| connection.id() != original_connection)
            {
                break;
            }
            let _ = events.recv().await;
        }
    })
    .await;
    impostor.client.stop().await;
    serving.stop().await;
}

/// UID-09 across transports: the newcomer is told a new uid and uses it;
/// the live agent is untouched.
async fn duplicate_gets_a_new_uid(live: &str, newcomer: &str) {
    let serving = serve(DuplicateUidPolicy::AssignNewUid).await;
    let registry = serving.server.registry();
    let uid = InstanceUid::new_v7();
    let (original, original_connection) = live_agent(&serving, live, uid).await;

    let mut clone = agent(serving.endpoint(newcomer), uid);
    clone.client.start().await.unwrap();
    let new_uid = within_for(
        BOUND,
        "the newcomer is told a new uid",
        clone.new_uid.wait_for(Option::is_some),
    )
    .await
    .unwrap()
    .expect("a new uid");
    assert_ne!(new_uid, uid);
    assert_eq!(clone.client.instance_uid(), new_uid, "UID-08");
    within_for(
        BOUND,
        "both agents are known under their own uids",
        until_all(registry, [uid, new_uid], |record| {
            record.is_connected() && record.status.description.is_some()
        }),
    )
    .await;
    assert_eq!(
        registry.connection(uid).map(|c| c.id()),
        Some(original_connection)
    );
    let newcomer_transport = if newcomer == "ws" {
        TransportKind::WebSocket
    } else {
        TransportKind::PlainHttp
    };
    assert_eq!(
        registry.connection(new_uid).map(|c| c.transport()),
        Some(newcomer_transport)
    );
    assert_eq!(original.client.instance_uid(), uid);
    stop_all(serving, [original, clone]).await;
}

#[tokio::test(start_paused = true)]
async fn uid_09_a_clone_on_the_other_transport_gets_a_new_uid() {
    both_ways(duplicate_gets_a_new_uid).await;
}

/// UID-10 across transports: the newcomer is refused every time, is never
/// recorded, and the live agent keeps its connection (or session).
async fn duplicate_is_refused(live: &str, newcomer: &str) {
    let serving = serve(DuplicateUidPolicy::Refuse).await;
    let registry = serving.server.registry();
    let mut events = registry.subscribe();
    let uid = InstanceUid::new_v7();
    let (original, original_connection) = live_agent(&serving, live, uid).await;

    let impostor = refused_impostor(&serving, newcomer, uid, 4).await;
    assert_eq!(
        registry.connection(uid).map(|c| c.id()),
        Some(original_connection)
    );
    assert_eq!(registry.connected(), vec![uid]);
    assert_eq!(registry.agents().await.unwrap().len(), 1);
    assert_eq!(impostor.client.instance_uid(), uid);
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(
                event,
                AgentEvent::Disconnected {
                    reason: DisconnectReason::Replaced,
                    ..
                } | AgentEvent::UidReassigned { .. }
            ),
            "{event:?}"
        );
    }
    stop_all(serving, [original, impostor]).await;
}

#[tokio::test(start_paused = true)]
async fn uid_10_a_duplicate_on_the_other_transport_is_refused() {
    both_ways(duplicate_is_refused).await;
}

/// Runs `case` with the live agent on WebSocket and the newcomer on plain
/// HTTP, then the other way round; a failure names the case.
async fn both_ways<F>(case: fn(&'static str, &'static str) -> F)
where
    F: Future<Output = ()> + Send + 'static,
{
    for (live, newcomer) in [("ws", "http"), ("http", "ws")] {
        if let Err(failure) = tokio::spawn(case(live, newcomer)).await {
            panic!("{live} live agent, {newcomer} newcomer: {failure}");
        }
    }
}
