//! The example fleet server (`opamp-fleet-server`), built in this package
//! so that the Collector interop tests and the fleet tests can start it as a
//! process (`CARGO_BIN_EXE_fleet-server`): same flags, same behaviour.

use clap::Parser;
use opamp_fleet_server::{ServerArgs, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(ServerArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
