//! The example agent:
//! `cargo run --release -p opamp-agent -- --endpoint ws://127.0.0.1:4320/v1/opamp`.
//!
//! `ws://`/`wss://` endpoints use WebSocket, `http://`/`https://` plain HTTP.
//! `--count N` runs N agents in one process; `--supervise -- CMD ARGS...`
//! supervises a real agent. `--help` lists every flag.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Log events go to stderr and, once the server offers an own_logs
    // destination, to the server's OTLP endpoint too.
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(opamp_agent::LogBridge)
        .init();
    let args = opamp_agent::AgentArgs::parse();
    match opamp_agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "agent failed");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
