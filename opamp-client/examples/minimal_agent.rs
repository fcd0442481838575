//! A minimal OpAMP agent: connects, reports its description and health,
//! accepts remote configuration and reports it applied, sends heartbeats,
//! and says goodbye on Ctrl-C.
//!
//! ```sh
//! cargo run -p opamp-server --example minimal_server           # in one terminal
//! cargo run -p opamp-client --example minimal_agent            # in another
//! cargo run -p opamp-client --example minimal_agent -- http://127.0.0.1:4320/v1/opamp
//! ```
//!
//! The endpoint scheme picks the transport: `ws://`/`wss://` for WebSocket,
//! `http://`/`https://` for plain HTTP with polling.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use opamp_client::proto::{
    AgentConfigMap, EffectiveConfig, RemoteConfigStatus, RemoteConfigStatuses, semconv,
};
use opamp_client::{
    AgentCapabilities, AgentDescription, Callbacks, ComponentHealth, InstanceUid, MessageData,
    OpampClient, TransportError,
};

/// The agent's state, as seen by the client's callbacks.
#[derive(Default)]
struct Agent {
    /// The configuration the agent runs with.
    config: Mutex<AgentConfigMap>,
}

impl Callbacks for Agent {
    fn on_connect(&self) {
        println!("connected");
    }

    fn on_connect_failed(&self, error: &TransportError) {
        println!("cannot reach the server ({error}); retrying");
    }

    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        let Some(offer) = &data.remote_config else {
            return;
        };
        let config = offer.config.clone().unwrap_or_default();
        for (name, file) in &config.config_map {
            let body = String::from_utf8_lossy(&file.body);
            println!("remote config file {name:?}:\n{body}");
        }
        // A real agent validates the offer against local rules first.
        *self.config.lock().unwrap() = config;
        client.set_remote_config_status(RemoteConfigStatus {
            last_remote_config_hash: offer.config_hash.clone(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        });
        // Ask for `effective_config` again: it changed.
        client.update_effective_config();
    }

    fn effective_config(&self) -> Option<EffectiveConfig> {
        Some(EffectiveConfig {
            config_map: Some(self.config.lock().unwrap().clone()),
        })
    }

    fn on_new_instance_uid(&self, uid: InstanceUid) {
        // A real agent saves it so the next run keeps the same uid.
        println!("the server assigned the instance uid {uid}");
    }
}

fn now_unix_nanos() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:4320/v1/opamp".to_owned());
    let uid = InstanceUid::new_v7();
    let description = AgentDescription::for_service("io.example.minimal-agent", "0.1.0")
        .with_identifying(semconv::SERVICE_INSTANCE_ID, uid.to_string())
        .with_non_identifying(semconv::OS_TYPE, std::env::consts::OS);
    let started = now_unix_nanos();
    let health = ComponentHealth {
        healthy: true,
        start_time_unix_nano: started,
        status: "running".into(),
        status_time_unix_nano: started,
        ..Default::default()
    };

    let client = OpampClient::builder(endpoint.as_str())
        .instance_uid(uid)
        .agent_description(description)
        .capabilities(
            AgentCapabilities::ACCEPTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_REMOTE_CONFIG
                | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
                | AgentCapabilities::REPORTS_HEALTH
                | AgentCapabilities::REPORTS_HEARTBEAT,
        )
        .callbacks(Agent::default())
        .build()?;
    client.set_health(health);
    client.start().await?;
    println!("agent {uid} talking to {endpoint}; Ctrl-C to stop");

    tokio::signal::ctrl_c().await?;
    // Sends `agent_disconnect`, then closes the connection.
    client.stop().await;
    println!("stopped");
    Ok(())
}
