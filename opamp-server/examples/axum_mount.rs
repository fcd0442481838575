//! The OpAMP server mounted in an axum application, next to routes of its
//! own: `/v1/opamp` for agents (WebSocket and plain HTTP on one path),
//! `/healthz`, and `/agents`, a plain-text list of the agents the registry
//! knows.
//!
//! ```sh
//! cargo run -p opamp-server --example axum_mount                # 127.0.0.1:4320
//! cargo run -p opamp-client --example minimal_agent             # in another terminal
//! curl http://127.0.0.1:4320/agents
//! ```
//!
//! Ctrl-C stops axum first, then closes the agents' WebSockets (1001).

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use opamp_proto::semconv;
use opamp_server::{OpampServer, PeerInfo, Registry};

/// Lets OpAMP callbacks and `Connection::peer_addr` see the agent's address.
async fn peer_info(
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(PeerInfo {
        addr: Some(addr),
        certificates: None,
    });
    next.run(request).await
}

/// One line per agent: uid, service name, whether it is connected.
async fn agents(State(registry): State<Registry>) -> String {
    let Ok(records) = registry.agents().await else {
        return "the agent store is unavailable\n".to_owned();
    };
    let mut text = String::new();
    for record in records {
        let service = record
            .status
            .description
            .iter()
            .flat_map(|description| &description.identifying_attributes)
            .find(|attribute| attribute.key == semconv::SERVICE_NAME)
            .and_then(|attribute| attribute.value.as_ref())
            .map(|value| value.to_display_string())
            .unwrap_or_default();
        let state = match &record.connection {
            Some(connection) => format!("connected over {:?}", connection.transport),
            None => "disconnected".to_owned(),
        };
        let _ = writeln!(text, "{} {service} {state}", record.uid);
    }
    text
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = OpampServer::builder().build();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/agents", get(agents))
        .with_state(server.registry().clone())
        .route_service("/v1/opamp", server.clone())
        .layer(middleware::from_fn(peer_info));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:4320").await?;
    println!("serving http://127.0.0.1:4320: /v1/opamp, /healthz, /agents; Ctrl-C to stop");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // axum does not know about upgraded connections: close them here.
    server.shutdown().await;
    println!("stopped");
    Ok(())
}
