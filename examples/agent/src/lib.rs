//! An example OpAMP agent built on `opamp-client`: a simulated agent, a
//! fleet of them in one process (`--count N`), or a supervisor of a real
//! agent (`--supervise -- CMD ARGS...`, see `SUPERVISOR.md` next to this
//! crate).
//!
//! Run it against the example fleet server (crate `opamp-fleet-server`):
//! `cargo run --release -p opamp-agent -- --endpoint ws://127.0.0.1:4320/v1/opamp`.
//! `ws://`/`wss://` endpoints use WebSocket, `http://`/`https://` plain
//! HTTP; `--help` lists every flag. The library is the whole binary:
//! [`AgentArgs`] are its flags, [`run`] runs the agents until SIGINT or
//! SIGTERM, and [`LogBridge`] forwards log events to the server's own-logs
//! destination.
//!
//! ```no_run
//! use clap::Parser;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), opamp_agent::AgentError> {
//! let args = opamp_agent::AgentArgs::parse_from(["opamp-agent", "--count", "3"]);
//! opamp_agent::run(args).await
//! # }
//! ```
//!
//! What it does, and the choices made:
//! - **Remote config** is validated, written to `STATE/config/` (one file
//!   per config map entry; the entry named `""` is the file `_default`),
//!   then the work is reloaded, the effective config is read back from disk
//!   and reported, and the status goes APPLYING → APPLIED. A config fails
//!   (FAILED, old files kept) when a name is not a plain file name or a
//!   body contains `invalid:` — the example's stand-in for "does not
//!   parse". A supervisor also validates, waits for health and rolls back
//!   (see `supervisor.rs`).
//! - **An empty remote config** (no files, or only empty ones) changes
//!   nothing: the files on disk and the work (or child) stay as they are,
//!   the effective config keeps reporting them, and the offer is APPLIED.
//! - **Restart command**: the simulated agent restarts its simulated work
//!   (the process and its connection stay; the health's `restart_count`
//!   and start time change). A supervisor restarts its child.
//! - **Scale mode** (`--count N`, N > 1): N agents in one process, each
//!   with its own state directory `STATE/agent-N` (so uids survive
//!   restarts) and its own connection. Only the first reports own
//!   telemetry, since they all share one process.
//! - **Supervisor**: see `supervisor.rs`, `packages.rs` and
//!   `SUPERVISOR.md`.
//! - **Shutdown**: on SIGTERM or SIGINT a supervisor sends the same signal
//!   to its child and waits for it (SIGKILL after `--stop-timeout`), then
//!   the client says goodbye (`agent_disconnect`) and the process exits 0.
//! - **Own metrics, traces and logs**: see `telemetry.rs`. **Certificates**: see `tls.rs`.
#![forbid(unsafe_code)]

mod cli;
mod packages;
mod runner;
mod state;
mod supervisor;
mod telemetry;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal as StopSignal;
use tokio::signal::unix::{Signal, SignalKind, signal};

pub use cli::AgentArgs;
use runner::{Agent, AgentSetup};
pub use telemetry::LogBridge;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The TLS flags name unreadable files.
    #[error("TLS settings: {0}")]
    Tls(String),
    /// The package store could not be opened.
    #[error("package store: {0}")]
    Packages(String),
    /// `--package-key` is not a usable Ed25519 key.
    #[error("--package-key: {0}")]
    PackageKey(String),
    /// The bearer token is not a valid header value.
    #[error("the bearer token contains characters not allowed in a header")]
    BadToken,
    /// `--supervise` without a command.
    #[error("--supervise needs a command after `--`")]
    NoCommand,
    /// A supervisor flag is unusable.
    #[error("{0}")]
    SupervisorFlag(String),
    /// `--supervise` with `--count` above 1.
    #[error("--supervise runs one agent; it cannot be combined with --count")]
    SuperviseScale,
    /// The OpAMP client refused its settings.
    #[error(transparent)]
    Client(#[from] opamp_client::ClientError),
}

/// The whole `opamp-agent` binary, for its `main` and for packages that
/// build the agent as a binary of their own: log events go to stderr,
/// filtered by `RUST_LOG` or else by `default_filter`, and to the server's
/// own-logs destination once it offers one ([`LogBridge`]); then the flags
/// are parsed and the agents [`run`]. A failure is logged and printed, and
/// the exit code says it.
pub async fn main_with_log_filter(default_filter: &str) -> std::process::ExitCode {
    use clap::Parser;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(LogBridge)
        .init();
    match run(AgentArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "agent failed");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the agents until Ctrl-C or SIGTERM, then stops them in order.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    if args.supervise && args.count > 1 {
        return Err(AgentError::SuperviseScale);
    }
    let mut signals = ShutdownSignals::install();
    let args = Arc::new(args);
    let setups: Vec<AgentSetup> = if args.count == 1 {
        vec![AgentSetup {
            args: Arc::clone(&args),
            state_dir: args.state_dir.clone(),
            own_telemetry: true,
        }]
    } else {
        (0..args.count)
            .map(|index| AgentSetup {
                args: Arc::clone(&args),
                state_dir: args.state_dir.join(format!("agent-{index}")),
                own_telemetry: index == 0,
            })
            .collect()
    };
    let mut agents = Vec::with_capacity(setups.len());
    for setup in setups {
        match Agent::start(setup).await {
            Ok(agent) => agents.push(agent),
            Err(error) => {
                stop_all(agents, StopSignal::SIGTERM).await;
                return Err(error);
            }
        }
    }
    if agents.len() > 1 {
        tracing::info!(count = agents.len(), "all agents started");
    }
    let signal = signals.recv().await;
    tracing::info!(%signal, "shutting down");
    stop_all(agents, signal).await;
    Ok(())
}

async fn stop_all(agents: Vec<Agent>, signal: StopSignal) {
    futures_util::future::join_all(agents.into_iter().map(|agent| {
        let uid = agent.instance_uid();
        async move {
            agent.stop(signal).await;
            tracing::debug!(%uid, "agent stopped");
        }
    }))
    .await;
}

/// Ctrl-C and SIGTERM, listened for from the start so that a signal that
/// arrives while the agents start is not lost (nor fatal).
struct ShutdownSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl ShutdownSignals {
    fn install() -> Self {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for {name}");
                None
            }
        };
        Self {
            interrupt: listen(SignalKind::interrupt(), "Ctrl-C"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for either signal; says which.
    async fn recv(&mut self) -> StopSignal {
        async fn one(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(&mut self.interrupt) => StopSignal::SIGINT,
            () = one(&mut self.terminate) => StopSignal::SIGTERM,
        }
    }
}
