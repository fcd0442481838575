//! Times `GET /api/agents` at fleet size: seeds agents (15,000 by default)
//! into an in-memory fleet store, serves the JSON API on loopback and
//! requests pages over HTTP, printing the median and 95th percentile per
//! request for each kind of page.
//!
//! ```text
//! cargo run --release -p opamp-fleet-server --example fleet_page_time -- [agents] [requests]
//! ```

#[path = "../tests/fleet_seed/mod.rs"]
mod fleet_seed;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opamp_fleet_server::{FleetOptions, FleetServer, FleetStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let agents: u32 = args.next().map_or(Ok(15_000), |a| a.parse())?;
    let requests: usize = args.next().map_or(Ok(50), |a| a.parse())?;

    let store = FleetStore::in_memory()?;
    let seeding = Instant::now();
    fleet_seed::seed_fleet(&store, agents).await;
    println!("seeded {agents} agents in {:.1?}", seeding.elapsed());
    let fleet = FleetServer::new(store, FleetOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = fleet.api_router();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let response = client.get(url.parse()?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                return Err(format!("{path}: {status}").into());
            }
            Ok::<_, Box<dyn std::error::Error>>(body)
        }
    };
    let first: serde_json::Value =
        serde_json::from_slice(&get("/api/agents?limit=100".into()).await?)?;
    let cursor = first["next"].as_str().unwrap_or_default().to_owned();
    let cases = [
        ("first page, limit=100", "/api/agents?limit=100".to_owned()),
        (
            "next page (cursor)",
            format!("/api/agents?limit=100&cursor={cursor}"),
        ),
        (
            "health=unhealthy",
            "/api/agents?limit=100&health=unhealthy".into(),
        ),
        (
            "q=host-0424 (text search)",
            "/api/agents?limit=100&q=host-0424".into(),
        ),
        (
            "attribute=service.name=checkout",
            "/api/agents?limit=100&attribute=service.name%3Dcheckout".into(),
        ),
        ("limit=1000", "/api/agents?limit=1000".into()),
        ("legacy array (every agent)", "/api/agents".into()),
    ];
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "request", "median", "p95", "bytes"
    );
    for (name, path) in cases {
        // Legacy: the whole fleet per request, so fewer rounds.
        let rounds = if path == "/api/agents" {
            requests.min(5)
        } else {
            requests
        };
        get(path.clone()).await?;
        let mut times = Vec::with_capacity(rounds);
        let mut bytes = 0;
        for _ in 0..rounds {
            let started = Instant::now();
            bytes = get(path.clone()).await?.len();
            times.push(started.elapsed());
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name:<34} {:>10} {:>10} {bytes:>10}",
            millis(at(0.5)),
            millis(at(0.95))
        );
    }
    fleet.stop().await;
    Ok(())
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
