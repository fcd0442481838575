//! The example fleet server: `cargo run --release -p opamp-fleet-server`.
//!
//! OpAMP endpoint on 0.0.0.0:4320/v1/opamp (WebSocket and plain HTTP), web
//! page and JSON API on http://127.0.0.1:4321/. `--help` lists every flag.

use clap::Parser;
use opamp_fleet_server::{ServerArgs, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = ServerArgs::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
