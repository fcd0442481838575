//! An [`OpampServer`] serving on an ephemeral loopback port, and waits on
//! its agent registry.

use std::collections::HashSet;
use std::net::SocketAddr;

use opamp_proto::InstanceUid;
use opamp_server::{
    AgentRecord, Callbacks, NoCallbacks, OpampServer, Registry, ServeError, ServerBuilder,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::server_recorder::{ServerEvent, ServerRecorder};
use crate::timeout::within;

/// An [`OpampServer`] running `serve_with_shutdown` on `127.0.0.1:0`
/// (WebSocket and plain HTTP on `/v1/opamp`). Dropping it without
/// [`stop`](Self::stop) shuts it down without waiting.
#[derive(Debug)]
pub struct RunningServer<C: Callbacks = NoCallbacks> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server, for its registry and counters.
    pub server: OpampServer<C>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl<C: Callbacks> RunningServer<C> {
    /// Binds `127.0.0.1:0` and serves `server` in the current runtime.
    pub async fn start(server: OpampServer<C>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(server, listener)
    }

    /// Serves `server` on `listener` in the current runtime.
    pub fn serve(server: OpampServer<C>, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve_with_shutdown(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            server,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `ws://addr/v1/opamp`.
    pub fn ws_url(&self) -> String {
        crate::raw_agent::ws_url(self.addr)
    }

    /// `http://addr/v1/opamp`.
    pub fn http_url(&self) -> String {
        crate::raw_agent::http_url(self.addr)
    }

    /// `scheme://addr/v1/opamp`.
    pub fn endpoint(&self, scheme: &str) -> String {
        format!("{scheme}://{}/v1/opamp", self.addr)
    }

    /// The server's agent registry.
    pub fn registry(&self) -> &Registry {
        self.server.registry()
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down gracefully and waits until `serve` returned `Ok`.
    pub async fn stop(mut self) {
        self.begin_stop();
        self.join().await;
    }

    /// Waits until `serve` returned `Ok` (after [`begin_stop`](Self::begin_stop)).
    pub async fn join(mut self) {
        let task = self.task.take().expect("joined once");
        within("the server to shut down", task)
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
    }
}

impl RunningServer<ServerRecorder> {
    /// A default server whose callbacks are a fresh [`ServerRecorder`];
    /// returns it with the recorder's events.
    pub async fn recorded() -> (Self, mpsc::UnboundedReceiver<ServerEvent>) {
        let (recorder, events) = ServerRecorder::new();
        (Self::start(OpampServer::new(recorder)).await, events)
    }

    /// Like [`recorded`](Self::recorded), with the server's settings made
    /// by `configure`.
    pub async fn recorded_with(
        configure: impl FnOnce(ServerBuilder<ServerRecorder>) -> ServerBuilder<ServerRecorder>,
    ) -> (Self, mpsc::UnboundedReceiver<ServerEvent>) {
        let (recorder, events) = ServerRecorder::new();
        let server = configure(OpampServer::builder().callbacks(recorder)).build();
        (Self::start(server).await, events)
    }
}

impl<C: Callbacks> Drop for RunningServer<C> {
    fn drop(&mut self) {
        self.begin_stop();
    }
}

/// Waits until the record of every agent in `uids` satisfies `done`.
///
/// Event driven: each change event re-checks the agent it names; a lagged
/// subscriber rescans everything, so the answer never depends on the event
/// capacity. No deadline of its own (it is used under tokio's paused
/// clock); wrap it in [`within`] or [`within_for`](crate::within_for).
pub async fn until_all(
    registry: &Registry,
    uids: impl IntoIterator<Item = InstanceUid>,
    done: impl Fn(&AgentRecord) -> bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Subscribe before the first scan so no change falls between the two.
    let mut events = registry.subscribe();
    let mut pending: HashSet<InstanceUid> = uids.into_iter().collect();
    rescan(registry, &mut pending, &done).await;
    while !pending.is_empty() {
        match events.recv().await {
            Ok(event) => {
                let uid = event.uid();
                if pending.contains(&uid) {
                    let record = registry.agent(uid).await.expect("store works");
                    if record.as_ref().is_some_and(&done) {
                        pending.remove(&uid);
                    }
                }
            }
            Err(RecvError::Lagged(_)) => rescan(registry, &mut pending, &done).await,
            Err(RecvError::Closed) => panic!("registry events closed"),
        }
    }
}

/// Waits until the record of `uid` satisfies `done` and returns it (no
/// deadline of its own, like [`until_all`]).
pub async fn until_agent(
    registry: &Registry,
    uid: InstanceUid,
    done: impl Fn(&AgentRecord) -> bool,
) -> AgentRecord {
    until_all(registry, [uid], &done).await;
    registry
        .agent(uid)
        .await
        .expect("store works")
        .expect("the agent is known")
}

async fn rescan(
    registry: &Registry,
    pending: &mut HashSet<InstanceUid>,
    done: &impl Fn(&AgentRecord) -> bool,
) {
    for record in registry.agents().await.expect("store works") {
        if done(&record) {
            pending.remove(&record.uid);
        }
    }
}
