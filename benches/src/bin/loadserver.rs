//! A bare OpAMP server on `opamp-server` for load comparisons: the
//! library's defaults (registry with state tracking, in-memory store), no
//! callbacks, no logging. It is the Rust counterpart of
//! `interop/cmd/goloadserver` (a bare opamp-go server) and speaks the same
//! small JSON-lines protocol, so `loadgen --push stdin` drives both:
//!
//! - stdout, first line: `{"event":"listening","port":N,"addr":"..."}`;
//! - stdin: `{"cmd":"offer_remote_config","id":"..","to":"all","name":"..",
//!   "content_type":"..","body":".."}` → `{"event":"ack","id":"..",
//!   "hash":"<hex>","targets":N}`; `{"cmd":"stop"}` or end of input stops.

use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use opamp_proto::{
    AgentConfigMap, AgentConfigObject, AgentRemoteConfig, ServerToAgent, config_hash,
};
use opamp_server::{OpampServer, Registry};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Flags of the bare load-test server.
#[derive(Debug, Parser)]
#[command(name = "loadserver", about = "Bare opamp-server for load tests")]
struct Args {
    /// Address of the OpAMP endpoint (WebSocket and plain HTTP on /v1/opamp).
    #[arg(long, default_value = "127.0.0.1:4320")]
    listen: SocketAddr,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Registry without status tracking (`track_state(false)`): no store,
    /// sequence checks or desired state; offers go out as plain messages.
    /// Closer to what the bare opamp-go server does.
    #[arg(long)]
    no_state: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match opamp_benches::runtime(args.threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadserver: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args.listen, !args.no_state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            println!("{}", json!({"event": "fatal", "error": error}));
            ExitCode::from(2)
        }
    }
}

async fn serve(listen: SocketAddr, track_state: bool) -> Result<(), String> {
    let registry = Registry::builder().track_state(track_state).build();
    let server = OpampServer::builder().registry(registry).build();
    let registry = server.registry().clone();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| format!("binding {listen}: {error}"))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    println!(
        "{}",
        json!({"event": "listening", "port": address.port(), "addr": address.to_string()})
    );
    let (stop_sender, mut stop) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.serve_with_shutdown(listener, async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(command) = serde_json::from_str::<Value>(&line) else {
            println!("{}", json!({"event": "error", "error": "not JSON"}));
            continue;
        };
        let id = command.get("id").cloned().unwrap_or(Value::Null);
        match command.get("cmd").and_then(Value::as_str) {
            Some("stop") => break,
            Some("offer_remote_config") => {
                let (hash, targets) = offer_to_all(&registry, &command, track_state).await;
                println!(
                    "{}",
                    json!({"event": "ack", "cmd": "offer_remote_config", "id": id,
                           "hash": hex(&hash), "targets": targets})
                );
            }
            other => println!(
                "{}",
                json!({"event": "error", "id": id, "error": format!("unknown command {other:?}")})
            ),
        }
    }
    stop_sender.send_replace(true);
    serving
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

/// Sets the config for every connected agent; returns its hash and how
/// many agents took it.
async fn offer_to_all(registry: &Registry, command: &Value, track_state: bool) -> (Bytes, usize) {
    let text = |key: &str, default: &str| {
        command
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        text("name", "config.yaml"),
        AgentConfigObject {
            body: Bytes::from(text("body", "")),
            content_type: text("content_type", "text/yaml"),
            ..Default::default()
        },
    );
    let hash = config_hash(&config);
    let mut targets = 0;
    for uid in registry.connected() {
        let offered = if track_state {
            registry
                .set_remote_config(uid, config.clone())
                .await
                .is_ok()
        } else {
            let offer = ServerToAgent {
                remote_config: Some(AgentRemoteConfig {
                    config: Some(config.clone()),
                    config_hash: hash.clone(),
                }),
                ..Default::default()
            };
            registry.send(uid, offer).await.is_ok()
        };
        if offered {
            targets += 1;
        }
    }
    (hash, targets)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
