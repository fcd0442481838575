//! Shared pieces of the fault, load and security tests: a server that can be
//! crashed, a TCP proxy that injects faults, and panic accounting (the rest
//! comes from opamp-testkit).
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use opamp_client::{AgentCapabilities, AgentDescription, ClientBuilder, OpampClient};
use opamp_proto::{AgentConfigMap, InstanceUid};
use opamp_server::{Callbacks, OpampServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};

/// A one-file remote configuration whose body names `version`.
pub fn config(version: &str) -> AgentConfigMap {
    opamp_testkit::config_map(&format!("version: {version}\n"))
}

/// The URL scheme of agent `index` in a mixed fleet: the first
/// `websocket_agents` use WebSocket, the rest plain HTTP.
pub fn mixed_scheme(index: usize, websocket_agents: usize) -> &'static str {
    if index < websocket_agents {
        "ws"
    } else {
        "http"
    }
}

/// `count` agents with fresh uids, mixed as by [`mixed_scheme`]; `build`
/// makes the client of agent `index` from its URL scheme and uid.
pub fn mixed_fleet(
    count: usize,
    websocket_agents: usize,
    mut build: impl FnMut(usize, &str, InstanceUid) -> OpampClient,
) -> Vec<(InstanceUid, OpampClient)> {
    (0..count)
        .map(|index| {
            let uid = InstanceUid::new_v7();
            (
                uid,
                build(index, mixed_scheme(index, websocket_agents), uid),
            )
        })
        .collect()
}

/// The client of a fleet agent that takes remote configs: `uid` at
/// `endpoint`, describing itself as `service` `version`, heartbeating every
/// five seconds and polling (plain HTTP) every `polling`.
pub fn config_agent(
    endpoint: String,
    uid: InstanceUid,
    (service, version): (&str, &str),
    polling: Duration,
) -> ClientBuilder {
    OpampClient::builder(endpoint)
        .instance_uid(uid)
        .agent_description(AgentDescription::for_service(service, version))
        .capabilities(
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_HEARTBEAT,
        )
        .heartbeat_interval(Duration::from_secs(5))
        .polling_interval(polling)
}

/// Starts every agent of a fleet.
pub async fn start_all(agents: &[(InstanceUid, OpampClient)]) {
    for (_, client) in agents {
        client.start().await.unwrap();
    }
}

/// Counts panics in this test binary, on any thread (server tasks swallow
/// theirs, so a panic there would otherwise go unnoticed).
pub fn panics() -> usize {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Makes sure the process may open at least `wanted` files (sockets), by
/// raising the soft limit towards the hard one. Returns the soft limit.
pub fn ensure_open_files(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current < wanted {
        let target = limit.maximum.map_or(wanted, |max| max.min(wanted));
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            eprintln!("cannot raise the open-files limit: {error}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty());
    let last = sorted.len() - 1;
    let rank = (q * last as f64).round() as usize;
    sorted[rank.min(last)]
}

/// An [`OpampServer`] serving on its own tokio runtime and thread, like a
/// server process: [`crash`](Self::crash) drops that runtime, which drops
/// every connection task and socket at once, with no Close frame and no
/// draining, and the registry with it.
pub struct CrashableServer<C: Callbacks> {
    pub addr: SocketAddr,
    pub server: OpampServer<C>,
    kill: Option<oneshot::Sender<()>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<C: Callbacks> CrashableServer<C> {
    /// Binds `addr` (port 0 for any) with `SO_REUSEADDR`, so a restarted
    /// server gets the same port despite the crashed one's TIME_WAIT
    /// sockets, and serves once the listener is up.
    pub async fn start(server: OpampServer<C>, addr: SocketAddr) -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        let (kill, killed) = oneshot::channel::<()>();
        let (stop, stopped) = oneshot::channel::<()>();
        let (listening, is_listening) = oneshot::channel::<io::Result<()>>();
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("crashable-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("crashable-server-worker")
                    .enable_all()
                    .build()
                    .expect("server runtime");
                runtime.block_on(async move {
                    let listener = match socket.listen(4096) {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = listening.send(Err(error));
                            return;
                        }
                    };
                    let _ = listening.send(Ok(()));
                    let serve = serving.serve_with_shutdown(listener, async {
                        let _ = stopped.await;
                    });
                    // The kill sender going away (a test that failed
                    // half-way) kills too.
                    tokio::select! {
                        result = serve => result.expect("serve ends cleanly"),
                        _ = killed => {}
                    }
                });
                // Dropping the runtime drops every task it still holds:
                // connections vanish as if the process had died.
                drop(runtime);
            })?;
        is_listening
            .await
            .map_err(|_| io::Error::other("server thread died"))??;
        Ok(Self {
            addr,
            server,
            kill: Some(kill),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Kills the server abruptly and waits until all its sockets are closed.
    pub async fn crash(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.join().await;
    }

    /// Shuts down gracefully (Close 1001, drained requests).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await;
    }

    async fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join task")
                .expect("server thread did not panic");
        }
    }
}

impl<C: Callbacks> Drop for CrashableServer<C> {
    /// A test that fails half-way leaves no server running.
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards `after_bytes` bytes (both directions together), then closes
    /// both sides: a cut in the middle of whatever was in flight.
    Cut { after_bytes: usize },
    /// Forwards `after_bytes` bytes, then holds everything for `pause`
    /// before going on normally.
    Stall { after_bytes: usize, pause: Duration },
    /// Forwards in pieces of `chunk` bytes with `pause` after each.
    Trickle { chunk: usize, pause: Duration },
}

/// Counts of what the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicUsize,
    pub cuts: AtomicUsize,
}

/// A TCP proxy in front of `upstream` that applies `plan(n)` to its n-th
/// connection (counting from 0).
pub struct FaultyProxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    /// The number of connections that finished (both sides closed).
    pub finished: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    pub async fn start(
        upstream: SocketAddr,
        plan: impl Fn(usize) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let stats = Arc::new(ProxyStats::default());
        let (finished_tx, finished) = watch::channel(0usize);
        let finished_tx = Arc::new(finished_tx);
        let task = tokio::spawn({
            let stats = Arc::clone(&stats);
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let index = stats.accepted.fetch_add(1, Ordering::SeqCst);
                    let fault = plan(index);
                    let stats = Arc::clone(&stats);
                    let finished_tx = Arc::clone(&finished_tx);
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            relay(client, server, fault, &stats).await;
                        }
                        finished_tx.send_modify(|count| *count += 1);
                    });
                }
            }
        });
        Self {
            addr,
            stats,
            finished,
            task,
        }
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Byte budget shared by both directions of one connection.
struct Budget {
    left: AtomicUsize,
}

impl Budget {
    /// Takes up to `wanted` bytes; 0 once exhausted.
    fn take(&self, wanted: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                granted = left.min(wanted);
                Some(left - granted)
            });
        granted
    }
}

async fn relay(client: TcpStream, server: TcpStream, fault: Fault, stats: &ProxyStats) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let budget = match fault {
        Fault::Cut { after_bytes } | Fault::Stall { after_bytes, .. } => after_bytes,
        Fault::Trickle { .. } => usize::MAX,
    };
    let budget = Arc::new(Budget {
        left: AtomicUsize::new(budget),
    });
    let (cut_tx, cut) = watch::channel(false);
    let cut_tx = Arc::new(cut_tx);
    let upstream = pump(
        client_read,
        server_write,
        fault,
        Arc::clone(&budget),
        Arc::clone(&cut_tx),
        cut.clone(),
    );
    let downstream = pump(server_read, client_write, fault, budget, cut_tx, cut);
    tokio::join!(upstream, downstream);
    if let Fault::Cut { .. } = fault {
        stats.cuts.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies one direction until EOF, an error, or the cut. Dropping the halves
/// at the end closes the sockets.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Fault,
    budget: Arc<Budget>,
    cut_tx: Arc<watch::Sender<bool>>,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 4096];
    let mut stalled = false;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = cut.wait_for(|cut| *cut) => return,
        };
        let Ok(count) = read else { break };
        if count == 0 {
            break;
        }
        let mut data = &buffer[..count];
        match fault {
            Fault::Cut { .. } => {
                let granted = budget.take(data.len());
                if to.write_all(&data[..granted]).await.is_err() {
                    break;
                }
                if granted < data.len() {
                    cut_tx.send_replace(true);
                    return;
                }
            }
            Fault::Stall { pause, .. } => {
                let granted = budget.take(data.len());
                if to.write_all(&data[..granted]).await.is_err() {
                    break;
                }
                data = &data[granted..];
                if !data.is_empty() && !stalled {
                    stalled = true;
                    tokio::time::sleep(pause).await;
                }
                if to.write_all(data).await.is_err() {
                    break;
                }
            }
            Fault::Trickle { chunk, pause } => {
                for piece in data.chunks(chunk.max(1)) {
                    if to.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    // Pass the half-close on so the other side sees the end of stream.
    let _ = to.shutdown().await;
}
