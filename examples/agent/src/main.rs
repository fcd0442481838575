//! The example agent:
//! `cargo run --release -p opamp-agent -- --endpoint ws://127.0.0.1:4320/v1/opamp`.
//!
//! `ws://`/`wss://` endpoints use WebSocket, `http://`/`https://` plain HTTP.
//! `--count N` runs N agents in one process; `--supervise -- CMD ARGS...`
//! supervises a real agent. `--help` lists every flag.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Log events go to stderr and, once the server offers an own_logs
    // destination, to the server's OTLP endpoint too.
    opamp_agent::main_with_log_filter("info").await
}
