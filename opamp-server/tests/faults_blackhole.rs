//! A WebSocket that goes silent without closing: the proxy forwards the
//! upgrade and the first exchange, then holds every byte for an hour.

mod fault_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fault_support::{Fault, FaultyProxy};
use opamp_client::{AgentCapabilities, AgentDescription, OpampClient};
use opamp_server::{AgentEvent, OpampServer};
use opamp_testkit::{RunningServer, within_for};

/// A connection that goes silent without closing (a black hole: a NAT or
/// load balancer that dropped its state, a peer that vanished) must not keep
/// an agent offline. The server notices (idle timeout); the agent should too,
/// since every message it sends is answered (STS-04), and reconnect.
///
/// The client drops a connection whose messages stay unanswered for its
/// reply timeout (the request timeout, 60 s by default); without that it
/// would stay offline until the operating system gave up on the TCP
/// connection (about 15 minutes of retransmissions on Linux; here, the
/// whole hour the proxy holds it).
#[tokio::test(start_paused = true)]
async fn err_04_an_agent_leaves_a_black_holed_websocket() {
    let serving = RunningServer::start(OpampServer::builder().build()).await;
    let proxy = FaultyProxy::start(serving.addr, |n| {
        if n == 0 {
            // The upgrade and the first exchange get through, then nothing.
            Fault::Stall {
                after_bytes: 600,
                pause: Duration::from_secs(3600),
            }
        } else {
            Fault::Trickle {
                chunk: 64 * 1024,
                pause: Duration::ZERO,
            }
        }
    })
    .await;
    let registry = serving.server.registry();
    let mut events = registry.subscribe();
    let client = OpampClient::builder(format!("ws://{}/v1/opamp", proxy.addr))
        .agent_description(AgentDescription::for_service("io.example.proxied", "1.0"))
        .capabilities(AgentCapabilities::REPORTS_HEARTBEAT)
        .heartbeat_interval(Duration::from_secs(5))
        .build()
        .expect("valid client settings");
    client.start().await.unwrap();
    let uid = client.instance_uid();
    // Connected, then connected again once the client gave up on the hole:
    // all well within the hour the black hole lasts.
    //
    // The server may still hold the dead connection when the agent comes
    // back, and with its messages lost in the hole the sequence does not
    // continue. Before treating the newcomer as a duplicate the server pings
    // the old connection; the hole swallows the ping, so the old connection
    // is replaced and the agent keeps its uid (UID-09: only two live
    // connections are duplicates).
    let mut connected_uids = Vec::new();
    within_for(Duration::from_secs(600), "the agent reconnects", async {
        while connected_uids.len() < 2 {
            match events.recv().await.unwrap() {
                AgentEvent::Connected { uid: connected, .. } => connected_uids.push(connected),
                AgentEvent::UidReassigned { old, new } => {
                    panic!("the returning agent was given a new uid: {old} -> {new}")
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(connected_uids, [uid, uid], "the agent keeps its uid");
    assert_eq!(client.instance_uid(), uid);
    assert!(proxy.stats.accepted.load(Ordering::SeqCst) >= 2);

    client.stop().await;
    drop(proxy);
    serving.stop().await;
}
