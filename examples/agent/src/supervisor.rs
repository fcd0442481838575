//! Supervisor mode: runs the real agent as a child process and manages it.
//!
//! One task (the "actor") owns the child. It starts it with the config file
//! path in place of `{config}` and in `OPAMP_CONFIG_FILE`, restarts it on
//! request (restart command), restarts it with exponential backoff when it
//! exits on its own, swaps in a new executable on a top-level package
//! update with a probation period and rollback, and stops it on shutdown:
//! the signal the supervisor got (SIGTERM or SIGINT) to its process group,
//! SIGKILL after `--stop-timeout`. Every change is published as a
//! [`ChildStatus`] on a watch channel, from which the agent builds its
//! health report.
//!
//! **Health.** With `--health-url` (an HTTP GET that must answer 2xx, such
//! as a Collector's `health_check` extension) or `--health-command` (exit
//! status 0), the child is healthy while the check passes; it is probed
//! every `--health-interval`. The check should answer for the child itself
//! (its own endpoint): one that passes before the new child has read its
//! config would let a bad config through. A child failing its check later
//! is reported unhealthy, not restarted. Without either check, the child
//! counts as healthy once it has been running for `--ready-after`: a plain
//! process gives no better signal, so a child that dies later is caught by
//! its exit instead.
//!
//! **A new remote config** goes through these steps:
//! 1. With `--validate-command`, the config is staged in
//!    `STATE/config-candidate/` and the command runs on it (`{config}` is
//!    the staged main file). If it fails, the config is FAILED with the
//!    command's output and the running child is not touched.
//! 2. The files are written to `STATE/config/` and the child restarted.
//! 3. As soon as the child is healthy on it (see above) the config is
//!    APPLIED; it becomes the last good config.
//! 4. If the child exits first, or is not healthy within `--apply-timeout`,
//!    the config is FAILED, with the last lines of the child's stderr, and
//!    the last config under which the child was healthy is written back and
//!    the child restarted on it. A shutdown in the middle writes it back too,
//!    without the restart, so the next start runs it.
//!
//! **An empty remote config** (no files, or only empty ones) changes
//! nothing: the child keeps running on the config it has and the offer is
//! reported APPLIED. Unlike the Collector's `opampsupervisor`, which stops
//! the Collector until a non-empty config arrives, this supervisor treats
//! "the server has no config for me" as "keep what works".
//!
//! **At start** the child runs at once, without waiting for the server:
//! on the last config written to `STATE/config/` (kept across restarts),
//! or, when there is none yet, on `--fallback-config`, or else on an empty
//! file. A remote config replaces it as soon as the server sends one.
//!
//! **Error messages** (FAILED statuses and the child's `last_error`) end
//! with the last lines the child wrote to stderr.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use opamp_client::proto::{AgentConfigMap, KeyValue};
use opamp_client::{ComponentHealth, InstanceUid};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::state::{StateDir, primary_config_file_in, write_atomically, write_config_in};
use super::telemetry::{OwnSpan, OwnTelemetry};

/// First restart delay after a crash; doubled per further quick crash.
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// Quick crashes in a row from which the child counts as crash-looping.
const CRASH_LOOP_AFTER: u32 = 2;
/// Lines of the child's stderr (and of a validation command's output) kept
/// for error messages.
const TAIL_LINES: usize = 20;
/// Longest line kept in such a tail.
const TAIL_LINE_CHARS: usize = 512;
/// How long to wait for the rest of a dead child's stderr: its own children
/// may hold the pipe open.
const STDERR_DRAIN: Duration = Duration::from_secs(2);
/// Bound on one health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the supervisor tells whether the child is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealthCheck {
    /// GET this `http://` URL; 2xx is healthy.
    Url(http::Uri),
    /// Run this command (program and arguments); exit status 0 is healthy.
    Command(Vec<String>),
}

/// How to run and manage the child.
#[derive(Debug, Clone)]
pub(crate) struct SupervisorOptions {
    /// The command's program, as given on the command line.
    pub(crate) program: PathBuf,
    /// Its arguments; `{config}` is replaced by the config file path.
    pub(crate) args: Vec<String>,
    /// The agent's state directory (config files, executables).
    pub(crate) state: StateDir,
    /// Passed to the child as `OPAMP_INSTANCE_UID`.
    pub(crate) instance_uid: InstanceUid,
    /// SIGTERM → SIGKILL grace period.
    pub(crate) stop_timeout: Duration,
    /// Exits sooner than this after start count as crashes.
    pub(crate) min_uptime: Duration,
    /// Cap on the restart backoff.
    pub(crate) max_backoff: Duration,
    /// How long a new executable must stay up.
    pub(crate) update_probation: Duration,
    /// The config run while `config/` has none.
    pub(crate) fallback_config: Option<PathBuf>,
    /// Checks a new config before the child is restarted on it; `{config}`
    /// in an argument is the staged main config file.
    pub(crate) validate_command: Option<Vec<String>>,
    /// How health is probed; without one, "running for `ready_after`".
    pub(crate) health_check: Option<HealthCheck>,
    /// Time between health probes.
    pub(crate) health_interval: Duration,
    /// Without a health check: running this long counts as healthy.
    pub(crate) ready_after: Duration,
    /// How long a new config may take to become healthy; also bounds the
    /// validation command.
    pub(crate) apply_timeout: Duration,
    /// Own traces: spans for config applies, restarts and updates.
    pub(crate) telemetry: Option<Arc<OwnTelemetry>>,
}

/// Where the child is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChildState {
    /// Running with this pid.
    Running {
        /// The child's pid.
        pid: u32,
    },
    /// Exited (or could not start); restarts after the backoff.
    BackingOff {
        /// The delay that was chosen.
        retry_in: Duration,
    },
    /// Stopped for good (shutdown).
    Stopped,
}

/// The child as reported in the agent's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildStatus {
    /// Stable component name, from the command's file name.
    pub(crate) name: String,
    /// The executable in use (the command, or an installed update).
    pub(crate) program: PathBuf,
    pub(crate) state: ChildState,
    /// When the state last changed.
    pub(crate) since: SystemTime,
    /// When the running child started.
    pub(crate) started_at: Option<SystemTime>,
    /// Starts after the first one, for whatever reason.
    pub(crate) restarts: u64,
    /// How the last child ended ("exit status: 1", "signal: 9 (SIGKILL)").
    pub(crate) last_exit: Option<String>,
    /// The last problem: an unexpected exit (with the last stderr lines), a
    /// failed start, update or config.
    pub(crate) last_error: Option<String>,
    /// Crashing repeatedly right after starting; restarts are backing off.
    pub(crate) crash_looping: bool,
    /// The running child passed its health check (or, without one, has
    /// been running for the readiness window).
    pub(crate) ready: bool,
    /// Why the last health probe failed, while it fails.
    pub(crate) probe_error: Option<String>,
    /// The config file the child was started with.
    pub(crate) config_file: Option<PathBuf>,
}

impl ChildStatus {
    pub(crate) fn healthy(&self) -> bool {
        matches!(self.state, ChildState::Running { .. }) && self.ready && !self.crash_looping
    }

    /// The child as a component of the agent's health tree.
    pub(crate) fn health(&self) -> ComponentHealth {
        let status = match &self.state {
            ChildState::Running { .. } if self.crash_looping => {
                "running (after a crash loop)".to_owned()
            }
            ChildState::Running { .. } if !self.ready => match &self.probe_error {
                Some(error) => format!("not healthy: {error}"),
                None => "starting".to_owned(),
            },
            ChildState::Running { .. } => "running".to_owned(),
            ChildState::BackingOff { retry_in } if self.crash_looping => {
                format!("crash loop: next start in {}s", retry_in.as_secs_f64())
            }
            ChildState::BackingOff { retry_in } => {
                format!("exited: next start in {}s", retry_in.as_secs_f64())
            }
            ChildState::Stopped => "stopped".to_owned(),
        };
        let mut attributes = vec![
            KeyValue::new(
                "process.executable.path",
                self.program.display().to_string(),
            ),
            KeyValue::new(
                "restart_count",
                i64::try_from(self.restarts).unwrap_or(i64::MAX),
            ),
        ];
        if let ChildState::Running { pid } = self.state {
            attributes.push(KeyValue::new("process.pid", i64::from(pid)));
        }
        if let Some(exit) = &self.last_exit {
            attributes.push(KeyValue::new("last_exit", exit.clone()));
        }
        if let Some(config) = &self.config_file {
            attributes.push(KeyValue::new("config_file", config.display().to_string()));
        }
        ComponentHealth {
            healthy: self.healthy(),
            start_time_unix_nano: self.started_at.map(unix_nanos).unwrap_or(0),
            last_error: self.last_error.clone().unwrap_or_default(),
            status,
            status_time_unix_nano: unix_nanos(self.since),
            attributes,
            ..Default::default()
        }
    }
}

pub(crate) fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum Request {
    Restart {
        reason: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    Apply {
        config: AgentConfigMap,
        done: oneshot::Sender<Result<(), String>>,
    },
    Update {
        program: PathBuf,
        done: oneshot::Sender<Result<(), String>>,
    },
    Shutdown {
        signal: Signal,
        done: oneshot::Sender<()>,
    },
}

/// A handle to the supervisor task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<ChildStatus>,
    /// Set at shutdown, so that a config apply waiting for health gives up.
    stopping: Arc<watch::Sender<bool>>,
    fallback_config: Option<PathBuf>,
}

impl Supervisor {
    /// Starts the supervisor task, which starts the child at once.
    pub(crate) fn start(options: SupervisorOptions) -> Self {
        let program = current_program(&options).unwrap_or_else(|| options.program.clone());
        let name = component_name(&options.program);
        let initial = ChildStatus {
            name,
            program: program.clone(),
            state: ChildState::Stopped,
            since: SystemTime::now(),
            started_at: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            crash_looping: false,
            ready: false,
            probe_error: None,
            config_file: None,
        };
        let (status_tx, status) = watch::channel(initial);
        let (requests, requests_rx) = mpsc::channel(16);
        let (stopping, stopping_rx) = watch::channel(false);
        let fallback_config = options.fallback_config.clone();
        let actor = Actor {
            options,
            program,
            status: status_tx,
            child: None,
            quick_failures: 0,
            restart_at: None,
            ready_at: None,
            next_probe: None,
            running_config: None,
            last_good: None,
            stopping: stopping_rx,
        };
        tokio::spawn(actor.run(requests_rx));
        Self {
            requests,
            status,
            stopping: Arc::new(stopping),
            fallback_config,
        }
    }

    /// Follows the child's status.
    pub(crate) fn status(&self) -> watch::Receiver<ChildStatus> {
        self.status.clone()
    }

    /// The fallback config file, while the child runs on it (there is no
    /// config in `config/`).
    pub(crate) fn fallback_in_use(&self, state: &StateDir) -> Option<&Path> {
        let fallback = self.fallback_config.as_deref()?;
        (!state.has_config().unwrap_or(true)).then_some(fallback)
    }

    /// Stops the child and starts it again (restart command). Fails if the
    /// child could not be started; the supervisor then keeps retrying with
    /// backoff.
    pub(crate) async fn restart(&self, reason: &str) -> Result<(), String> {
        self.request(|done| Request::Restart {
            reason: reason.to_owned(),
            done,
        })
        .await
    }

    /// Applies a (checked, non-empty) remote config: validation command,
    /// restart, wait until healthy; on failure the last good config is
    /// restored and the error says what happened (see the module docs).
    pub(crate) async fn apply(&self, config: AgentConfigMap) -> Result<(), String> {
        self.request(|done| Request::Apply { config, done }).await
    }

    /// Replaces the executable with `program` (already verified): stops the
    /// child, starts `program`, and keeps it only if it stays up for the
    /// probation period; otherwise the previous executable is started again
    /// and the error says why.
    pub(crate) async fn update(&self, program: PathBuf) -> Result<(), String> {
        self.request(|done| Request::Update { program, done }).await
    }

    /// Stops the child (`signal`, then SIGKILL after the stop timeout) and
    /// the supervisor.
    pub(crate) async fn shutdown(&self, signal: Signal) {
        self.stopping.send_replace(true);
        let (done, stopped) = oneshot::channel();
        if self.ask(Request::Shutdown { signal, done }).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Sends the request `make` builds around its answer channel and waits
    /// for the answer.
    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Request,
    ) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.ask(make(done)).await?;
        result
            .await
            .map_err(|_| "the supervisor stopped".to_owned())?
    }

    async fn ask(&self, request: Request) -> Result<(), String> {
        self.requests
            .send(request)
            .await
            .map_err(|_| "the supervisor stopped".to_owned())
    }
}

/// The component name of the child: `process/<file name of the command>`.
fn component_name(program: &Path) -> String {
    let file = program
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.display().to_string());
    format!("process/{file}")
}

/// The pointer to the executable installed by the last successful update.
fn current_pointer(state: &StateDir) -> PathBuf {
    state.supervised_dir().join("current")
}

fn current_program(options: &SupervisorOptions) -> Option<PathBuf> {
    let text = std::fs::read_to_string(current_pointer(&options.state)).ok()?;
    let path = PathBuf::from(text.trim_end_matches('\n'));
    path.is_file().then_some(path)
}

/// The delay before restarting after `quick_failures` quick crashes in a row.
pub(crate) fn backoff(quick_failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << quick_failures.min(16);
    BASE_BACKOFF.saturating_mul(factor).min(max)
}

/// The last lines of a stream, bounded in count and length.
#[derive(Debug, Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: &str) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0
            .push_back(line.chars().take(TAIL_LINE_CHARS).collect());
    }

    fn lines(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

/// `message`, followed by the last lines of the child's stderr if any.
fn with_stderr(message: String, tail: &[String]) -> String {
    if tail.is_empty() {
        message
    } else {
        format!("{message}; last stderr lines:\n{}", tail.join("\n"))
    }
}

struct Running {
    child: Child,
    pid: u32,
    since: Instant,
    stderr_tail: Arc<Mutex<Tail>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Running {
    /// The last stderr lines of a child that has exited, after reading what
    /// was still in the pipe.
    async fn final_stderr(&mut self) -> Vec<String> {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
        }
        self.stderr_tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lines()
    }
}

struct Actor {
    options: SupervisorOptions,
    program: PathBuf,
    status: watch::Sender<ChildStatus>,
    child: Option<Running>,
    quick_failures: u32,
    restart_at: Option<Instant>,
    /// Without a health check: when the running child counts as healthy.
    ready_at: Option<Instant>,
    /// With a health check: when to probe next.
    next_probe: Option<Instant>,
    /// The config files the running child was started with.
    running_config: Option<AgentConfigMap>,
    /// The last config under which the child was healthy.
    last_good: Option<AgentConfigMap>,
    stopping: watch::Receiver<bool>,
}

/// Waits for the running child to exit; pending forever when there is none.
async fn wait_exit(child: &mut Option<Running>) -> std::io::Result<ExitStatus> {
    match child {
        Some(running) => running.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn describe_exit(exit: &std::io::Result<ExitStatus>) -> String {
    match exit {
        Ok(status) => status.to_string(),
        Err(error) => format!("wait failed: {error}"),
    }
}

/// What ended a wait for the restarted child to become healthy.
enum ReadyEvent {
    Exited(std::io::Result<ExitStatus>),
    Deadline,
    Probe,
    Stopping,
}

impl Actor {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let _ = self.start_child();
        loop {
            // While recovering from crashes, a child that stays up long
            // enough counts as healthy again.
            let stable_at = self
                .child
                .as_ref()
                .filter(|_| self.quick_failures > 0)
                .map(|running| running.since + self.options.min_uptime);
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Restart { reason, done }) => {
                        let result = self.restart(&reason).await;
                        let _ = done.send(result);
                    }
                    Some(Request::Apply { config, done }) => {
                        let result = self.apply(config).await;
                        let _ = done.send(result);
                    }
                    Some(Request::Update { program, done }) => {
                        let result = self.update(program).await;
                        let _ = done.send(result);
                    }
                    Some(Request::Shutdown { signal, done }) => {
                        self.shutdown(signal).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown(Signal::SIGTERM).await;
                        return;
                    }
                },
                exit = wait_exit(&mut self.child) => self.on_unexpected_exit(exit).await,
                () = sleep_until(self.restart_at) => {
                    self.restart_at = None;
                    self.bump_restarts();
                    let _ = self.start_child();
                }
                () = sleep_until(stable_at) => {
                    tracing::info!(child = %self.program.display(), "child is stable again");
                    self.quick_failures = 0;
                    self.publish(|status| status.crash_looping = false);
                }
                () = sleep_until(self.ready_at) => {
                    self.ready_at = None;
                    self.mark_ready();
                }
                () = sleep_until(self.next_probe) => {
                    let _ = self.probe().await;
                }
            }
        }
    }

    fn span(&self, name: &'static str) -> OwnSpan {
        OwnSpan::start(self.options.telemetry.as_deref(), name)
    }

    fn publish(&self, change: impl FnOnce(&mut ChildStatus)) {
        self.status.send_modify(|status| {
            change(status);
            status.since = SystemTime::now();
        });
    }

    fn bump_restarts(&self) {
        self.status.send_modify(|status| status.restarts += 1);
    }

    /// The running child is healthy: remember its config as the last good.
    fn mark_ready(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Some(config) = &self.running_config {
            self.last_good = Some(config.clone());
        }
        if !self.status.borrow().ready {
            tracing::info!(child = %self.program.display(), "child is healthy");
        }
        self.publish(|status| {
            status.ready = true;
            status.probe_error = None;
        });
    }

    /// Probes the child's health once and schedules the next probe.
    async fn probe(&mut self) -> Result<(), String> {
        let Some(check) = self.options.health_check.clone() else {
            return Ok(());
        };
        let result = probe(&check).await;
        self.next_probe = self
            .child
            .as_ref()
            .map(|_| Instant::now() + self.options.health_interval);
        match &result {
            Ok(()) => self.mark_ready(),
            Err(error) => {
                let was_ready = self.status.borrow().ready;
                if was_ready {
                    tracing::warn!(%error, "child failed its health check");
                }
                let error = error.clone();
                self.publish(|status| {
                    status.ready = false;
                    status.probe_error = Some(error);
                });
            }
        }
        result
    }

    /// Starts the child; on failure, schedules a retry with backoff.
    fn start_child(&mut self) -> Result<(), String> {
        match self.spawn() {
            Ok((running, config_file, config)) => {
                tracing::info!(pid = running.pid, program = %self.program.display(), config = %config_file.display(), "child started");
                let pid = running.pid;
                self.child = Some(running);
                self.running_config = Some(config);
                match self.options.health_check {
                    Some(_) => self.next_probe = Some(Instant::now()),
                    None => self.ready_at = Some(Instant::now() + self.options.ready_after),
                }
                let program = self.program.clone();
                let crash_looping = self.quick_failures >= CRASH_LOOP_AFTER;
                self.publish(|status| {
                    status.state = ChildState::Running { pid };
                    status.crash_looping = crash_looping;
                    status.ready = false;
                    status.probe_error = None;
                    status.program = program;
                    status.started_at = Some(SystemTime::now());
                    status.config_file = Some(config_file);
                });
                Ok(())
            }
            Err(error) => {
                let message = format!("cannot start {}: {error}", self.program.display());
                tracing::error!("{message}");
                self.quick_failures += 1;
                self.schedule_restart(Some(message.clone()), None);
                Err(message)
            }
        }
    }

    /// The config file for the next start: the main file of `config/`, or
    /// the fallback config while `config/` has none.
    fn config_file(&self) -> std::io::Result<PathBuf> {
        let state = &self.options.state;
        match &self.options.fallback_config {
            Some(fallback) if !state.has_config()? => Ok(fallback.clone()),
            _ => state.primary_config_file(),
        }
    }

    fn spawn(&self) -> std::io::Result<(Running, PathBuf, AgentConfigMap)> {
        let state = &self.options.state;
        let config_file = self.config_file()?;
        let config = state.read_config()?;
        let config_text = config_file.display().to_string();
        let mut command = Command::new(&self.program);
        command
            .args(
                self.options
                    .args
                    .iter()
                    .map(|arg| arg.replace("{config}", &config_text)),
            )
            .env("OPAMP_CONFIG_FILE", &config_file)
            .env("OPAMP_CONFIG_DIR", state.config_dir())
            .env("OPAMP_INSTANCE_UID", self.options.instance_uid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches only the
            // supervisor, which then stops the child in order, and the stop
            // signal reaches the child's own children too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = spawn_retrying(&mut command)?;
        let pid = child.id().unwrap_or_default();
        let stderr_tail = Arc::new(Mutex::new(Tail::default()));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, pid, false, None));
        }
        let stderr_reader = child.stderr.take().map(|stderr| {
            tokio::spawn(forward_lines(
                stderr,
                pid,
                true,
                Some(Arc::clone(&stderr_tail)),
            ))
        });
        Ok((
            Running {
                child,
                pid,
                since: Instant::now(),
                stderr_tail,
                stderr_reader,
            },
            config_file,
            config,
        ))
    }

    fn schedule_restart(&mut self, error: Option<String>, exit: Option<String>) {
        let retry_in = backoff(self.quick_failures, self.options.max_backoff);
        self.restart_at = Some(Instant::now() + retry_in);
        self.ready_at = None;
        self.next_probe = None;
        let crash_looping = self.quick_failures >= CRASH_LOOP_AFTER;
        if crash_looping {
            tracing::warn!(
                crashes = self.quick_failures,
                ?retry_in,
                "child is crash-looping; backing off"
            );
        }
        self.publish(|status| {
            status.state = ChildState::BackingOff { retry_in };
            status.started_at = None;
            status.crash_looping = crash_looping;
            status.ready = false;
            if error.is_some() {
                status.last_error = error;
            }
            if exit.is_some() {
                status.last_exit = exit;
            }
        });
    }

    async fn on_unexpected_exit(&mut self, exit: std::io::Result<ExitStatus>) {
        let Some(mut running) = self.child.take() else {
            return;
        };
        let description = describe_exit(&exit);
        let tail = running.final_stderr().await;
        let error = with_stderr(format!("exited unexpectedly ({description})"), &tail);
        tracing::warn!(pid = running.pid, "child {error}");
        if running.since.elapsed() < self.options.min_uptime {
            self.quick_failures += 1;
        } else {
            self.quick_failures = 0;
        }
        self.schedule_restart(Some(error), Some(description));
    }

    /// Stops the running child: `signal` to its process group, SIGKILL
    /// after the stop timeout. Returns how it ended.
    async fn stop_child(&mut self, signal: Signal) -> Option<String> {
        let mut running = self.child.take()?;
        self.ready_at = None;
        self.next_probe = None;
        let group = i32::try_from(running.pid).ok().map(Pid::from_raw);
        if let Some(group) = group
            && let Err(error) = killpg(group, signal)
        {
            tracing::debug!(%error, "{signal} to the child's group failed");
        }
        let exit = match tokio::time::timeout(self.options.stop_timeout, running.child.wait()).await
        {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(pid = running.pid, "child ignored {signal}; killing it");
                if let Some(group) = group {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                let _ = running.child.start_kill();
                running.child.wait().await
            }
        };
        let description = describe_exit(&exit);
        tracing::info!(pid = running.pid, exit = %description, "child stopped");
        Some(description)
    }

    /// Stops the child and starts it again right away.
    async fn restart_now(&mut self, reason: &str) -> Result<(), String> {
        tracing::info!(reason, "restarting the child");
        let exit = self.stop_child(Signal::SIGTERM).await;
        self.restart_at = None;
        self.quick_failures = 0;
        if let Some(exit) = exit {
            self.publish(|status| status.last_exit = Some(exit));
        }
        self.bump_restarts();
        self.start_child()
    }

    async fn restart(&mut self, reason: &str) -> Result<(), String> {
        let mut span = self.span("supervisor.restart");
        span.attribute("reason", reason.to_owned());
        let result = self.restart_now(reason).await;
        if let Err(error) = &result {
            span.fail(error);
        }
        result
    }

    async fn apply(&mut self, config: AgentConfigMap) -> Result<(), String> {
        let mut span = self.span("supervisor.apply_config");
        span.attribute("config.files", config.config_map.len() as i64);
        let result = self.apply_steps(config).await;
        if let Err(error) = &result {
            span.fail(error);
        }
        result
    }

    async fn apply_steps(&mut self, config: AgentConfigMap) -> Result<(), String> {
        if let Some(command) = self.options.validate_command.clone() {
            self.validate(&command, &config).await?;
        }
        let state = self.options.state.clone();
        let previous = state.read_config().unwrap_or_default();
        let rollback_to = self.last_good.clone().unwrap_or(previous);
        state
            .write_config(&config)
            .map_err(|error| format!("cannot write the config: {error}"))?;
        let outcome = match self.restart_now("new remote config").await {
            Ok(()) => self.wait_ready().await,
            Err(error) => Err(error),
        };
        let error = match outcome {
            Ok(()) => return Ok(()),
            Err(error) if *self.stopping.borrow() => {
                // No restart while shutting down, but the next start runs
                // the config that was known to work, not the unproven one.
                return Err(match state.write_config(&rollback_to) {
                    Ok(()) => format!("{error}; the last good config is kept for the next start"),
                    Err(write_error) => {
                        format!("{error}; cannot restore the last good config: {write_error}")
                    }
                });
            }
            Err(error) => error,
        };
        tracing::warn!(%error, "the new config failed; rolling back");
        let _ = self.stop_child(Signal::SIGTERM).await;
        let message = match state.write_config(&rollback_to) {
            Ok(()) => format!("{error}; rolled back to the last good config"),
            Err(write_error) => {
                format!("{error}; cannot restore the last good config: {write_error}")
            }
        };
        self.restart_at = None;
        self.quick_failures = 0;
        self.bump_restarts();
        let _ = self.start_child();
        self.publish(|status| status.last_error = Some(message.clone()));
        Err(message)
    }

    /// Runs the validation command on `config`, staged away from the live
    /// files.
    async fn validate(&self, template: &[String], config: &AgentConfigMap) -> Result<(), String> {
        let dir = self.options.state.candidate_dir();
        let staged = write_config_in(&dir, config)
            .and_then(|()| primary_config_file_in(&dir))
            .map_err(|error| format!("cannot stage the config for validation: {error}"))?;
        let argv = substitute(template, &staged);
        let env = [
            ("OPAMP_CONFIG_FILE", staged.as_os_str()),
            ("OPAMP_CONFIG_DIR", dir.as_os_str()),
        ];
        let mut span = self.span("supervisor.validate_config");
        match run_command(&argv, &env, self.options.apply_timeout).await {
            Ok(_) => {
                tracing::info!("the new config passed validation");
                Ok(())
            }
            Err(error) => {
                let message = format!("config validation failed: {error}");
                span.fail(&message);
                tracing::warn!("{message}");
                Err(message)
            }
        }
    }

    /// Waits until the freshly started child is healthy: its health check
    /// passes (within the apply timeout), or, without a check, it is still
    /// running after the readiness window. Fails when it exits first.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let (deadline, checked) = match self.options.health_check {
            Some(_) => (started + self.options.apply_timeout, true),
            None => (started + self.options.ready_after, false),
        };
        let mut last_probe_error = String::from("no probe answered");
        loop {
            let next_probe = self.next_probe.filter(|_| checked);
            let Some(running) = self.child.as_mut() else {
                return Err("the child is not running".into());
            };
            let stopping = &mut self.stopping;
            let event = tokio::select! {
                exit = running.child.wait() => ReadyEvent::Exited(exit),
                () = tokio::time::sleep_until(deadline) => ReadyEvent::Deadline,
                () = sleep_until(next_probe) => ReadyEvent::Probe,
                _ = stopping.wait_for(|stopping| *stopping) => ReadyEvent::Stopping,
            };
            match event {
                ReadyEvent::Exited(exit) => {
                    let Some(mut running) = self.child.take() else {
                        return Err("the child is not running".into());
                    };
                    self.ready_at = None;
                    self.next_probe = None;
                    let description = describe_exit(&exit);
                    self.publish(|status| status.last_exit = Some(description.clone()));
                    let tail = running.final_stderr().await;
                    return Err(with_stderr(
                        format!("the child exited on the new config ({description})"),
                        &tail,
                    ));
                }
                ReadyEvent::Deadline if !checked => {
                    self.ready_at = None;
                    self.mark_ready();
                    return Ok(());
                }
                ReadyEvent::Deadline => {
                    let tail = self.current_stderr();
                    return Err(with_stderr(
                        format!(
                            "the child was not healthy {}s after starting on the new config: {last_probe_error}",
                            self.options.apply_timeout.as_secs_f64()
                        ),
                        &tail,
                    ));
                }
                ReadyEvent::Probe => match self.probe().await {
                    Ok(()) => return Ok(()),
                    Err(error) => last_probe_error = error,
                },
                ReadyEvent::Stopping => return Err("the supervisor is shutting down".into()),
            }
        }
    }

    /// The stderr lines of the running child so far.
    fn current_stderr(&self) -> Vec<String> {
        self.child
            .as_ref()
            .map(|running| {
                running
                    .stderr_tail
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .lines()
            })
            .unwrap_or_default()
    }

    async fn shutdown(&mut self, signal: Signal) {
        let exit = self.stop_child(signal).await;
        self.restart_at = None;
        self.publish(|status| {
            status.state = ChildState::Stopped;
            status.started_at = None;
            status.ready = false;
            if exit.is_some() {
                status.last_exit = exit;
            }
        });
    }

    async fn update(&mut self, candidate: PathBuf) -> Result<(), String> {
        let mut span = self.span("supervisor.update_executable");
        span.attribute("process.executable.path", candidate.display().to_string());
        let result = self.update_steps(candidate).await;
        if let Err(error) = &result {
            span.fail(error);
        }
        result
    }

    async fn update_steps(&mut self, candidate: PathBuf) -> Result<(), String> {
        tracing::info!(program = %candidate.display(), "trying a new executable");
        let previous = std::mem::replace(&mut self.program, candidate.clone());
        let _ = self.stop_child(Signal::SIGTERM).await;
        self.restart_at = None;
        self.quick_failures = 0;
        self.bump_restarts();
        let outcome = match self.start_child() {
            Err(error) => Err(error),
            Ok(()) => self.probation().await,
        };
        match outcome {
            Ok(()) => {
                let pointer = current_pointer(&self.options.state);
                let text = format!("{}\n", candidate.display());
                if let Err(error) = write_atomically(&pointer, text.as_bytes()) {
                    tracing::warn!(%error, "could not record the new executable");
                }
                tracing::info!(program = %candidate.display(), "new executable stayed up; keeping it");
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(%reason, previous = %previous.display(), "rolling back");
                let _ = self.stop_child(Signal::SIGTERM).await;
                self.program = previous.clone();
                self.restart_at = None;
                self.quick_failures = 0;
                self.bump_restarts();
                let message = format!("{reason}; rolled back to {}", previous.display());
                let _ = self.start_child();
                self.publish(|status| status.last_error = Some(message.clone()));
                Err(message)
            }
        }
    }

    /// Waits for the probation period; fails if the child exits before.
    async fn probation(&mut self) -> Result<(), String> {
        let probation = self.options.update_probation;
        let Some(running) = self.child.as_mut() else {
            return Err("the new executable did not start".into());
        };
        match tokio::time::timeout(probation, running.child.wait()).await {
            Err(_) => Ok(()),
            Ok(exit) => {
                let description = describe_exit(&exit);
                let tail = match self.child.take() {
                    Some(mut running) => running.final_stderr().await,
                    None => Vec::new(),
                };
                self.ready_at = None;
                self.next_probe = None;
                self.publish(|status| status.last_exit = Some(description.clone()));
                Err(with_stderr(
                    format!(
                        "the new executable exited within its {}s probation ({description})",
                        probation.as_secs_f64()
                    ),
                    &tail,
                ))
            }
        }
    }
}

/// `template` with `{config}` replaced by `config` in every argument.
fn substitute(template: &[String], config: &Path) -> Vec<String> {
    let config = config.display().to_string();
    template
        .iter()
        .map(|arg| arg.replace("{config}", &config))
        .collect()
}

/// Splits a command flag into program and arguments at whitespace (no
/// shell, no quoting: point it at a script for anything fancier).
pub(crate) fn split_command(text: &str) -> Option<Vec<String>> {
    let argv: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    (!argv.is_empty()).then_some(argv)
}

/// Runs `argv` to completion within `timeout`. Ok with its output if it
/// exits with status 0; otherwise an error with the exit status and the
/// last lines of its output (stdout, then stderr).
async fn run_command(
    argv: &[String],
    env: &[(&str, &std::ffi::OsStr)],
    timeout: Duration,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child =
        spawn_retrying(&mut command).map_err(|error| format!("cannot run {program}: {error}"))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("{program}: {error}")),
        Err(_) => {
            return Err(format!(
                "{program} did not finish within {}s",
                timeout.as_secs_f64()
            ));
        }
    };
    let mut tail = Tail::default();
    for stream in [&output.stdout, &output.stderr] {
        for line in String::from_utf8_lossy(stream).lines() {
            tail.push(line);
        }
    }
    let text = tail.lines().join("\n");
    if output.status.success() {
        Ok(text)
    } else if text.is_empty() {
        Err(output.status.to_string())
    } else {
        Err(format!("{}:\n{text}", output.status))
    }
}

/// One health probe.
async fn probe(check: &HealthCheck) -> Result<(), String> {
    match check {
        HealthCheck::Url(url) => {
            match tokio::time::timeout(PROBE_TIMEOUT, get_status(url.clone())).await {
                Ok(Ok(status)) if status.is_success() => Ok(()),
                Ok(Ok(status)) => Err(format!("{url} answered {status}")),
                Ok(Err(error)) => Err(format!("{url}: {error}")),
                Err(_) => Err(format!("{url} did not answer within {PROBE_TIMEOUT:?}")),
            }
        }
        HealthCheck::Command(argv) => run_command(argv, &[], PROBE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|error| format!("health command failed: {error}")),
    }
}

/// GET `url` (plain `http://`) and return the status code.
async fn get_status(url: http::Uri) -> Result<http::StatusCode, String> {
    let host = url.host().ok_or("no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_u16().unwrap_or(80);
    let authority = url
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = url
        .path_and_query()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| error.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    // Read the (small) body so the connection ends cleanly.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    Ok(status)
}

/// Spawns, retrying briefly on ETXTBSY: an executable that was just written
/// may still be open for writing in a process forked at the same moment.
fn spawn_retrying(command: &mut Command) -> std::io::Result<Child> {
    let busy = nix::errno::Errno::ETXTBSY as i32;
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(busy) && attempts < 20 => {
                attempts += 1;
                std::thread::yield_now();
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// Logs the child's output line by line, keeping the last stderr lines.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    pid: u32,
    is_stderr: bool,
    tail: Option<Arc<Mutex<Tail>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let stream = if is_stderr { "stderr" } else { "stdout" };
                tracing::info!(target: "supervised", pid, stream, "{line}");
                if let Some(tail) = &tail {
                    tail.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(&line);
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "reading the child's output failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(0, max), Duration::from_secs(1));
        assert_eq!(backoff(1, max), Duration::from_secs(2));
        assert_eq!(backoff(3, max), Duration::from_secs(8));
        assert_eq!(backoff(6, max), max);
        assert_eq!(backoff(u32::MAX, max), max);
    }

    #[test]
    fn health_reports_state_restarts_and_errors() {
        let mut status = ChildStatus {
            name: "process/otelcol".into(),
            program: "/bin/otelcol".into(),
            state: ChildState::Running { pid: 42 },
            since: SystemTime::now(),
            started_at: Some(SystemTime::now()),
            restarts: 3,
            last_exit: Some("exit status: 1".into()),
            last_error: Some("exited unexpectedly".into()),
            crash_looping: false,
            ready: true,
            probe_error: None,
            config_file: Some("/state/config/_default".into()),
        };
        let health = status.health();
        assert!(health.healthy);
        assert_eq!(health.status, "running");
        assert_eq!(health.last_error, "exited unexpectedly");
        let pid = health.attributes.iter().find(|kv| kv.key == "process.pid");
        assert!(pid.is_some());

        status.state = ChildState::BackingOff {
            retry_in: Duration::from_secs(4),
        };
        status.crash_looping = true;
        let health = status.health();
        assert!(!health.healthy);
        assert_eq!(health.status, "crash loop: next start in 4s");
        assert!(!health.attributes.iter().any(|kv| kv.key == "process.pid"));
    }

    #[test]
    fn health_waits_for_readiness_and_names_the_failed_probe() {
        let mut status = ChildStatus {
            name: "process/otelcol".into(),
            program: "/bin/otelcol".into(),
            state: ChildState::Running { pid: 7 },
            since: SystemTime::now(),
            started_at: Some(SystemTime::now()),
            restarts: 0,
            last_exit: None,
            last_error: None,
            crash_looping: false,
            ready: false,
            probe_error: None,
            config_file: None,
        };
        assert!(!status.healthy());
        assert_eq!(status.health().status, "starting");
        status.probe_error = Some("http://127.0.0.1:13133/ answered 503".into());
        assert_eq!(
            status.health().status,
            "not healthy: http://127.0.0.1:13133/ answered 503"
        );
        status.ready = true;
        status.probe_error = None;
        assert!(status.health().healthy);
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines_bounded() {
        let mut tail = Tail::default();
        for line in 0..(TAIL_LINES + 5) {
            tail.push(&format!("line {line}"));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 5");
        assert_eq!(lines[TAIL_LINES - 1], format!("line {}", TAIL_LINES + 4));
        tail.push(&"x".repeat(10 * TAIL_LINE_CHARS));
        assert_eq!(tail.lines().last().unwrap().len(), TAIL_LINE_CHARS);

        assert_eq!(with_stderr("exited".into(), &[]), "exited");
        assert_eq!(
            with_stderr("exited".into(), &["a".into(), "b".into()]),
            "exited; last stderr lines:\na\nb"
        );
    }

    #[test]
    fn commands_split_at_whitespace_and_take_the_config_path() {
        let argv = split_command("  /bin/otelcol   validate --config={config} ").unwrap();
        assert_eq!(argv, ["/bin/otelcol", "validate", "--config={config}"]);
        assert_eq!(
            substitute(&argv, Path::new("/state/config-candidate/_default")),
            [
                "/bin/otelcol",
                "validate",
                "--config=/state/config-candidate/_default"
            ]
        );
        assert_eq!(split_command("   "), None);
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_output() {
        let argv = split_command("sh -c 'x'").unwrap();
        assert!(
            run_command(&argv, &[], Duration::from_secs(30))
                .await
                .is_err()
        );
        let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"]
            .map(str::to_owned)
            .to_vec();
        let error = run_command(&argv, &[], Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(error, "exit status: 3:\nout\nerr");
        let argv: Vec<String> = ["sh", "-c", "echo fine"].map(str::to_owned).to_vec();
        assert_eq!(
            run_command(&argv, &[], Duration::from_secs(30)).await,
            Ok("fine".to_owned())
        );
    }
}
