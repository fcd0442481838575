//! The example fleet server: `cargo run --release -p opamp-fleet-server`.
//!
//! OpAMP endpoint on 0.0.0.0:4320/v1/opamp (WebSocket and plain HTTP), web
//! page and JSON API on http://127.0.0.1:4321/. `--help` lists every flag.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    opamp_fleet_server::main_with_log_filter("info").await
}
