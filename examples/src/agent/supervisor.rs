//! Supervisor mode: runs the real agent as a child process and manages it.
//!
//! One task (the "actor") owns the child. It starts it with the config file
//! path in place of `{config}` and in `OPAMP_CONFIG_FILE`, restarts it on
//! request (new config, restart command), restarts it with exponential
//! backoff when it exits on its own, swaps in a new executable on a
//! top-level package update with a probation period and rollback, and stops
//! it on shutdown: SIGTERM to its process group, SIGKILL after a timeout.
//! Every change is published as a [`ChildStatus`] on a watch channel, from
//! which the agent builds its health report.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use opamp_client::proto::KeyValue;
use opamp_client::{ComponentHealth, InstanceUid};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::state::{StateDir, write_atomically};

/// First restart delay after a crash; doubled per further quick crash.
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// Quick crashes in a row from which the child counts as crash-looping.
const CRASH_LOOP_AFTER: u32 = 2;

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
    /// The last problem: an unexpected exit (with the last stderr line) or
    /// a failed start or update.
    pub(crate) last_error: Option<String>,
    /// Crashing repeatedly right after starting; restarts are backing off.
    pub(crate) crash_looping: bool,
    /// The config file the child was started with.
    pub(crate) config_file: Option<PathBuf>,
}

impl ChildStatus {
    pub(crate) fn healthy(&self) -> bool {
        matches!(self.state, ChildState::Running { .. }) && !self.crash_looping
    }

    /// The child as a component of the agent's health tree.
    pub(crate) fn health(&self) -> ComponentHealth {
        let status = match &self.state {
            ChildState::Running { .. } if self.crash_looping => {
                "running (after a crash loop)".to_owned()
            }
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
    Update {
        program: PathBuf,
        done: oneshot::Sender<Result<(), String>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A handle to the supervisor task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<ChildStatus>,
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
            config_file: None,
        };
        let (status_tx, status) = watch::channel(initial);
        let (requests, requests_rx) = mpsc::channel(16);
        let actor = Actor {
            options,
            program,
            status: status_tx,
            child: None,
            quick_failures: 0,
            restart_at: None,
        };
        tokio::spawn(actor.run(requests_rx));
        Self { requests, status }
    }

    /// Follows the child's status.
    pub(crate) fn status(&self) -> watch::Receiver<ChildStatus> {
        self.status.clone()
    }

    /// Stops the child and starts it again (new config, restart command).
    /// Fails if the child could not be started; the supervisor then keeps
    /// retrying with backoff.
    pub(crate) async fn restart(&self, reason: &str) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.ask(Request::Restart {
            reason: reason.to_owned(),
            done,
        })
        .await?;
        result
            .await
            .map_err(|_| "the supervisor stopped".to_owned())?
    }

    /// Replaces the executable with `program` (already verified): stops the
    /// child, starts `program`, and keeps it only if it stays up for the
    /// probation period; otherwise the previous executable is started again
    /// and the error says why.
    pub(crate) async fn update(&self, program: PathBuf) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.ask(Request::Update { program, done }).await?;
        result
            .await
            .map_err(|_| "the supervisor stopped".to_owned())?
    }

    /// Stops the child (SIGTERM, then SIGKILL after the stop timeout) and
    /// the supervisor.
    pub(crate) async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.ask(Request::Shutdown { done }).await.is_ok() {
            let _ = stopped.await;
        }
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

struct Running {
    child: Child,
    pid: u32,
    since: Instant,
    stderr_tail: Arc<Mutex<Option<String>>>,
}

struct Actor {
    options: SupervisorOptions,
    program: PathBuf,
    status: watch::Sender<ChildStatus>,
    child: Option<Running>,
    quick_failures: u32,
    restart_at: Option<Instant>,
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
                    Some(Request::Update { program, done }) => {
                        let result = self.update(program).await;
                        let _ = done.send(result);
                    }
                    Some(Request::Shutdown { done }) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                exit = wait_exit(&mut self.child) => self.on_unexpected_exit(exit),
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
            }
        }
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

    /// Starts the child; on failure, schedules a retry with backoff.
    fn start_child(&mut self) -> Result<(), String> {
        match self.spawn() {
            Ok((running, config_file)) => {
                tracing::info!(pid = running.pid, program = %self.program.display(), "child started");
                let pid = running.pid;
                self.child = Some(running);
                let program = self.program.clone();
                let crash_looping = self.quick_failures >= CRASH_LOOP_AFTER;
                self.publish(|status| {
                    status.state = ChildState::Running { pid };
                    status.crash_looping = crash_looping;
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

    fn spawn(&self) -> std::io::Result<(Running, PathBuf)> {
        let state = &self.options.state;
        let config_file = state.primary_config_file()?;
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
            // supervisor, which then stops the child in order, and SIGTERM
            // reaches the child's own children too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = spawn_retrying(&mut command)?;
        let pid = child.id().unwrap_or_default();
        let stderr_tail = Arc::new(Mutex::new(None));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, pid, false, None));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(
                stderr,
                pid,
                true,
                Some(Arc::clone(&stderr_tail)),
            ));
        }
        Ok((
            Running {
                child,
                pid,
                since: Instant::now(),
                stderr_tail,
            },
            config_file,
        ))
    }

    fn schedule_restart(&mut self, error: Option<String>, exit: Option<String>) {
        let retry_in = backoff(self.quick_failures, self.options.max_backoff);
        self.restart_at = Some(Instant::now() + retry_in);
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
            if error.is_some() {
                status.last_error = error;
            }
            if exit.is_some() {
                status.last_exit = exit;
            }
        });
    }

    fn on_unexpected_exit(&mut self, exit: std::io::Result<ExitStatus>) {
        let Some(running) = self.child.take() else {
            return;
        };
        let description = describe_exit(&exit);
        let tail = running
            .stderr_tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let error = match tail {
            Some(line) => format!("exited unexpectedly ({description}): {line}"),
            None => format!("exited unexpectedly ({description})"),
        };
        tracing::warn!(pid = running.pid, "child {error}");
        if running.since.elapsed() < self.options.min_uptime {
            self.quick_failures += 1;
        } else {
            self.quick_failures = 0;
        }
        self.schedule_restart(Some(error), Some(description));
    }

    /// Stops the running child: SIGTERM to its process group, SIGKILL after
    /// the stop timeout. Returns how it ended.
    async fn stop_child(&mut self) -> Option<String> {
        let mut running = self.child.take()?;
        let group = i32::try_from(running.pid).ok().map(Pid::from_raw);
        if let Some(group) = group
            && let Err(error) = killpg(group, Signal::SIGTERM)
        {
            tracing::debug!(%error, "SIGTERM to the child's group failed");
        }
        let exit = match tokio::time::timeout(self.options.stop_timeout, running.child.wait()).await
        {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(pid = running.pid, "child ignored SIGTERM; killing it");
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

    async fn restart(&mut self, reason: &str) -> Result<(), String> {
        tracing::info!(reason, "restarting the child");
        let exit = self.stop_child().await;
        self.restart_at = None;
        self.quick_failures = 0;
        if let Some(exit) = exit {
            self.publish(|status| status.last_exit = Some(exit));
        }
        self.bump_restarts();
        self.start_child()
    }

    async fn shutdown(&mut self) {
        let exit = self.stop_child().await;
        self.restart_at = None;
        self.publish(|status| {
            status.state = ChildState::Stopped;
            status.started_at = None;
            if exit.is_some() {
                status.last_exit = exit;
            }
        });
    }

    async fn update(&mut self, candidate: PathBuf) -> Result<(), String> {
        tracing::info!(program = %candidate.display(), "trying a new executable");
        let previous = std::mem::replace(&mut self.program, candidate.clone());
        let _ = self.stop_child().await;
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
                let _ = self.stop_child().await;
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
                self.child = None;
                self.publish(|status| status.last_exit = Some(description.clone()));
                Err(format!(
                    "the new executable exited within its {}s probation ({description})",
                    probation.as_secs_f64()
                ))
            }
        }
    }
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

/// Logs the child's output line by line, keeping the last stderr line.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    pid: u32,
    is_stderr: bool,
    tail: Option<Arc<Mutex<Option<String>>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let stream = if is_stderr { "stderr" } else { "stdout" };
                tracing::info!(target: "supervised", pid, stream, "{line}");
                if let Some(tail) = &tail {
                    *tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(line.chars().take(512).collect());
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
}
