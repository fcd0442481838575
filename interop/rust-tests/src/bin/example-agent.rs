//! The example agent (`opamp-agent`), built in this package so that tests
//! can start it as a process next to the fleet server
//! (`CARGO_BIN_EXE_example-agent`): same flags, same behaviour, logs on
//! stderr only.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(opamp_agent::LogBridge)
        .init();
    match opamp_agent::run(opamp_agent::AgentArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
