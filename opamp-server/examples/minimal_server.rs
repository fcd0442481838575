//! A minimal OpAMP server: serves WebSocket and plain-HTTP agents on one
//! endpoint, offers every agent that connects a configuration, prints what
//! agents report, and shuts down gracefully on Ctrl-C.
//!
//! ```sh
//! cargo run -p opamp-server --example minimal_server                   # 127.0.0.1:4320
//! cargo run -p opamp-server --example minimal_server -- 0.0.0.0:4320
//! cargo run -p opamp-client --example minimal_agent                    # in another terminal
//! ```
//!
//! The endpoint is `/v1/opamp`, so agents use `ws://127.0.0.1:4320/v1/opamp`
//! or `http://127.0.0.1:4320/v1/opamp`. WebSocket agents get the offer at
//! once; plain-HTTP agents with the reply to their next poll (every 30 s by
//! default), since a server cannot push over plain HTTP.

use opamp_proto::{AgentConfigMap, AgentConfigObject, AgentToServer, ServerToAgent};
use opamp_server::{AgentEvent, Callbacks, Connection, OpampServer, Registry};

/// Sees every agent message after the registry has merged it.
struct Fleet;

impl Callbacks for Fleet {
    async fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> Option<ServerToAgent> {
        let goodbye = if message.agent_disconnect.is_some() {
            " (goodbye)"
        } else {
            ""
        };
        println!(
            "{:?} over {:?}: message {}{goodbye}",
            connection.agents(),
            connection.transport(),
            message.sequence_num
        );
        None // the registry's reply is enough; every message gets one
    }
}

/// The configuration every agent is offered.
fn config() -> AgentConfigMap {
    let file = AgentConfigObject {
        body: "log_level: debug\nexporters: [otlp]\n".into(),
        content_type: "text/yaml".into(),
        role: String::new(),
    };
    AgentConfigMap {
        config_map: [("agent.yaml".to_owned(), file)].into(),
    }
}

/// Offers the configuration to each agent that connects and reports what happens.
async fn follow(registry: Registry) {
    let mut events = registry.subscribe();
    while let Ok(event) = events.recv().await {
        match event {
            AgentEvent::Connected { uid, transport } => {
                println!("{uid} connected over {transport:?}");
                // Refused unless the agent announced AcceptsRemoteConfig.
                match registry.set_remote_config(uid, config()).await {
                    Ok(offer) => println!("{uid}: config {:02x?}… offered", &offer.hash[..4]),
                    Err(error) => println!("{uid}: no config offered: {error}"),
                }
            }
            AgentEvent::StatusChanged { uid, changes } => {
                let Ok(Some(record)) = registry.agent(uid).await else {
                    continue;
                };
                let config_status = record.status.remote_config_status.map(|s| s.status);
                println!("{uid} reported {changes:?}; remote config status {config_status:?}");
            }
            AgentEvent::Disconnected { uid, reason } => println!("{uid} left: {reason:?}"),
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4320".to_owned());
    let server = OpampServer::new(Fleet);
    tokio::spawn(follow(server.registry().clone()));
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("OpAMP server on {address}, path /v1/opamp; Ctrl-C to stop");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // On Ctrl-C: stop accepting, close WebSockets with 1001, drain HTTP requests.
    server.serve_with_shutdown(listener, ctrl_c).await?;
    println!("stopped");
    Ok(())
}
