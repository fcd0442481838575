//! Shared helpers for the agent tests: an in-test OpAMP server, the agent
//! binary as a child process, and waits on registry state (bounded by a
//! generous timeout, woken by registry events, never by fixed sleeps).
#![allow(dead_code, unreachable_pub)]

pub mod child;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use opamp_proto::{
    AgentConfigMap, AgentConfigObject, AgentToServer, ConnectionSettingsOffers,
    ConnectionSettingsStatuses, CustomMessage, InstanceUid,
};
use opamp_server::{
    AgentEvent, AgentRecord, Callbacks, ConnectDecision, ConnectRequest, Connection, OpampServer,
    Refusal, Registry, RemoteConfigState, ServerTlsConfig, TransportKind,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// Upper bound for anything a test waits for; reached only when broken.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Records custom messages and certificate requests (CSR PEM, or `None`
/// for a first message without one) agents send.
pub struct Recorder {
    custom: mpsc::UnboundedSender<(InstanceUid, CustomMessage)>,
    csr: mpsc::UnboundedSender<(InstanceUid, Option<Bytes>)>,
    token: Option<String>,
    refused: mpsc::UnboundedSender<String>,
    goodbyes: mpsc::UnboundedSender<InstanceUid>,
}

impl Callbacks for Recorder {
    /// With a token configured, refuses requests without
    /// `Authorization: Bearer <token>` (401) and reports each refusal.
    async fn on_connecting(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        let Some(token) = &self.token else {
            return ConnectDecision::Accept;
        };
        let sent = request
            .parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        if sent == Some(format!("Bearer {token}").as_str()) {
            ConnectDecision::Accept
        } else {
            let _ = self.refused.send(format!("{sent:?}"));
            ConnectDecision::Refuse(Refusal::unauthorized(None))
        }
    }

    async fn on_message(
        &self,
        _connection: &Connection,
        message: &AgentToServer,
    ) -> Option<opamp_proto::ServerToAgent> {
        let Ok(uid) = message.uid() else { return None };
        if message.agent_disconnect.is_some() {
            let _ = self.goodbyes.send(uid);
        }
        if let Some(custom) = &message.custom_message {
            let _ = self.custom.send((uid, custom.clone()));
        }
        let csr = message
            .connection_settings_request
            .as_ref()
            .and_then(|request| request.opamp.as_ref())
            .and_then(|opamp| opamp.certificate_request.as_ref())
            .map(|request| request.csr.clone());
        if csr.is_some() || message.sequence_num == 0 {
            let _ = self.csr.send((uid, csr));
        }
        None
    }
}

/// An OpAMP server on 127.0.0.1:0 with its registry.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    pub events: broadcast::Receiver<AgentEvent>,
    pub custom: mpsc::UnboundedReceiver<(InstanceUid, CustomMessage)>,
    pub csr: mpsc::UnboundedReceiver<(InstanceUid, Option<Bytes>)>,
    /// The `Authorization` values of refused requests.
    pub refused: mpsc::UnboundedReceiver<String>,
    /// Agents that sent `agent_disconnect`, in order.
    pub goodbyes: mpsc::UnboundedReceiver<InstanceUid>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// Offers `config` to agent `uid` and waits for its final status.
    pub async fn push_config(&self, uid: InstanceUid, config: AgentConfigMap) -> RemoteConfigState {
        let offer = self.registry.set_remote_config(uid, config).await.unwrap();
        self.config_outcome(uid, &offer.hash).await
    }

    /// The final status (APPLIED or FAILED) of the config offered with `hash`.
    pub async fn config_outcome(&self, uid: InstanceUid, hash: &[u8]) -> RemoteConfigState {
        tokio::time::timeout(PATIENCE, self.registry.wait_for_remote_config(uid, hash))
            .await
            .expect("no final remote config status")
            .unwrap()
    }

    /// A server that requires a bearer token and/or serves TLS.
    pub async fn start_with(token: Option<&str>, tls: Option<ServerTlsConfig>) -> Self {
        let (custom_tx, custom) = mpsc::unbounded_channel();
        let (csr_tx, csr) = mpsc::unbounded_channel();
        let (refused_tx, refused) = mpsc::unbounded_channel();
        let (goodbyes_tx, goodbyes) = mpsc::unbounded_channel();
        let mut builder = OpampServer::builder();
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        let server = builder
            .capabilities(
                opamp_server::DEFAULT_CAPABILITIES
                    | opamp_proto::ServerCapabilities::ACCEPTS_CONNECTION_SETTINGS_REQUEST,
            )
            .callbacks(Recorder {
                custom: custom_tx,
                csr: csr_tx,
                token: token.map(str::to_owned),
                refused: refused_tx,
                goodbyes: goodbyes_tx,
            })
            .build();
        let registry = server.registry().clone();
        let events = registry.subscribe();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = server.serve(listener).await;
        });
        Self {
            addr,
            registry,
            events,
            custom,
            csr,
            refused,
            goodbyes,
            task,
        }
    }

    pub fn endpoint(&self, scheme: &str) -> String {
        format!("{scheme}://{}/v1/opamp", self.addr)
    }

    /// Starts the agent against this server over WebSocket, with its state
    /// and its log (`agent.log`) in `dir`, `extra` flags added.
    pub fn start_agent(&self, dir: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start(&self.endpoint("ws"), dir, "agent.log", extra)
    }

    /// Like [`start_agent`](Self::start_agent), supervising `script` (see
    /// [`AgentProcess::supervising`]).
    pub fn start_supervisor(&self, dir: &Path, options: &[&str], script: &Path) -> AgentProcess {
        AgentProcess::supervising(&self.endpoint("ws"), dir, "agent.log", options, script)
    }

    /// Waits for the next agent to say goodbye (`agent_disconnect`).
    pub async fn next_goodbye(&mut self) -> InstanceUid {
        tokio::time::timeout(PATIENCE, self.goodbyes.recv())
            .await
            .expect("no agent_disconnect")
            .unwrap()
    }

    /// Waits for the next agent to connect; returns its uid and transport.
    pub async fn next_connected(&mut self) -> (InstanceUid, TransportKind) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self.events.recv().await {
                    Ok(AgentEvent::Connected { uid, transport }) => return (uid, transport),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("registry closed"),
                }
            }
        })
        .await
        .expect("no agent connected")
    }

    /// Waits until agent `uid`'s record satisfies `check`, re-checking on
    /// every registry event.
    /// Offers `settings` to `uid` and waits until the agent reports them
    /// APPLIED (CS-42); returns that record.
    pub async fn offer_settings(
        &mut self,
        uid: InstanceUid,
        what: &str,
        settings: ConnectionSettingsOffers,
    ) -> AgentRecord {
        let offered = self
            .registry
            .offer_connection_settings(uid, settings)
            .await
            .unwrap();
        self.wait_for(uid, what, |record| settings_applied(record, &offered.hash))
            .await
    }

    pub async fn wait_for(
        &mut self,
        uid: InstanceUid,
        what: &str,
        mut check: impl FnMut(&AgentRecord) -> bool,
    ) -> AgentRecord {
        let registry = self.registry.clone();
        let events = &mut self.events;
        let outcome = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(record) = registry.agent(uid).await.unwrap()
                    && check(&record)
                {
                    return record;
                }
                match events.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("registry closed"),
                }
            }
        })
        .await;
        match outcome {
            Ok(record) => record,
            Err(_) => {
                let record = self.registry.agent(uid).await.unwrap();
                panic!("timed out waiting for {what}; last record: {record:#?}")
            }
        }
    }

    /// Waits for the agent's connection (or HTTP session) to end.
    pub async fn wait_disconnected(&mut self, uid: InstanceUid) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self.events.recv().await {
                    Ok(AgentEvent::Disconnected { uid: gone, .. }) if gone == uid => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("registry closed"),
                }
            }
        })
        .await
        .expect("agent did not disconnect");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent binary running as a child process; its log goes to a file
/// that is printed if the test fails.
pub struct AgentProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts the agent against `endpoint` with its state in
    /// [`state_dir`]`(dir)` and its log in `dir/log`, `extra` flags added.
    pub fn start(endpoint: &str, dir: &Path, log: &str, extra: &[&str]) -> Self {
        let state = state_dir(dir);
        let mut args = vec![
            "--endpoint",
            endpoint,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args, &dir.join(log))
    }

    /// Like [`start`](Self::start), supervising `script`, which gets the
    /// config file's path as its argument; `options` come before
    /// `--supervise`.
    pub fn supervising(
        endpoint: &str,
        dir: &Path,
        log: &str,
        options: &[&str],
        script: &Path,
    ) -> Self {
        let mut args = options.to_vec();
        args.extend(["--supervise", "--", script.to_str().unwrap(), "{config}"]);
        Self::start(endpoint, dir, log, &args)
    }

    /// Starts the agent binary with exactly `args`.
    pub fn spawn(args: &[&str], log: &Path) -> Self {
        let log_file = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opamp-agent"))
            .args(args)
            .env("RUST_LOG", "info,opamp_client=debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub async fn terminate(self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM).await
    }

    /// Sends `signal`, then waits for the process to exit.
    pub async fn signal(mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let pid = self.child.id().expect("agent already reaped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            signal,
        )
        .unwrap();
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("agent did not exit after {signal}"))
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Whether `record` reports the connection settings offer `hash` APPLIED.
pub fn settings_applied(record: &AgentRecord, hash: &[u8]) -> bool {
    record
        .status
        .connection_settings_status
        .as_ref()
        .is_some_and(|status| {
            status.last_connection_settings_hash == hash
                && status.status() == ConnectionSettingsStatuses::Applied
        })
}

/// The agent's state directory under a test's directory `dir`, as
/// [`AgentProcess::start`] sets it.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// A config map with one file.
pub fn config(name: &str, body: &str) -> AgentConfigMap {
    let mut map = AgentConfigMap::default();
    map.config_map.insert(
        name.to_owned(),
        AgentConfigObject {
            body: Bytes::copy_from_slice(body.as_bytes()),
            content_type: "text/yaml".into(),
            ..Default::default()
        },
    );
    map
}

/// The body of `name` in the agent's reported effective config.
pub fn effective_body(record: &AgentRecord, name: &str) -> Option<Bytes> {
    record
        .status
        .effective_config
        .as_ref()?
        .config_map
        .as_ref()?
        .config_map
        .get(name)
        .map(|file| file.body.clone())
}

/// A string attribute of a health component.
/// The health the supervisor reports for its child `program` (the file
/// name of the executable).
pub fn process_health<'a>(
    record: &'a AgentRecord,
    program: &str,
) -> Option<&'a opamp_proto::ComponentHealth> {
    component_health(record, &format!("process/{program}"))
}

/// The health of the agent's component `name`, if it reports one.
pub fn component_health<'a>(
    record: &'a AgentRecord,
    name: &str,
) -> Option<&'a opamp_proto::ComponentHealth> {
    record
        .status
        .health
        .as_ref()?
        .component_health_map
        .get(name)
}

/// Fails the test, showing `text`, unless `text` contains `part`.
#[track_caller]
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "expected {part:?} in: {text}");
}

pub fn attribute(health: &opamp_proto::ComponentHealth, key: &str) -> Option<String> {
    health
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(|value| value.to_display_string())
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 answering every request with
/// `handler` (package downloads, an OTLP receiver).
pub async fn serve_http<F>(handler: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(http::Request<Bytes>) -> http::Response<Bytes> + Send + Sync + 'static,
{
    use http_body_util::{BodyExt, Full};
    let handler = std::sync::Arc::new(handler);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = std::sync::Arc::clone(&handler);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let handler = std::sync::Arc::clone(&handler);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let response = handler(http::Request::from_parts(parts, body));
                            Ok::<_, hyper::Error>(response.map(Full::new))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}
