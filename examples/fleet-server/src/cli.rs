//! The `opamp-fleet-server` binary's flags and main loop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use opamp_transport::{ClientAuth, ServerTlsConfig};
use tokio::net::TcpListener;

use super::FleetServer;
use super::certs::ClientCa;
use super::demo;
use super::fleet::FleetOptions;
use super::store::FleetStore;

/// Where the fleet server keeps its state.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// A redb file in the data directory; survives restarts.
    Redb,
    /// Memory only; everything is lost on exit.
    Memory,
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL), which
    /// several server instances can share.
    Postgres(String),
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redb => f.write_str("Redb"),
            Self::Memory => f.write_str("Memory"),
            // The URL may hold a password.
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "redb" => Ok(Self::Redb),
            "memory" => Ok(Self::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                url.parse::<opamp_server_postgres::Config>()
                    .map_err(|error| format!("not a usable PostgreSQL URL: {error}"))?;
                Ok(Self::Postgres(url.to_owned()))
            }
            _ => Err("expected redb, memory or a postgres:// URL".to_owned()),
        }
    }
}

/// The default instance name: host name and OpAMP port, reduced to what
/// `opamp-server-postgres` accepts (letters, digits, `_`, `-`; at most 48).
fn default_instance_name(port: u16) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "opamp".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{host}-{port}")
}

/// Flags of the example fleet server. Every flag can also be set with the
/// environment variable named in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "opamp-fleet-server",
    version,
    about = "Example OpAMP fleet server: web page, JSON API and embedded store"
)]
pub struct ServerArgs {
    /// Address of the OpAMP endpoint (WebSocket and plain HTTP on /v1/opamp).
    #[arg(long, env = "OPAMP_SERVER_LISTEN", default_value = "0.0.0.0:4320")]
    pub listen: SocketAddr,

    /// Address of the web page and JSON API (no authentication: keep it local).
    #[arg(
        long,
        env = "OPAMP_SERVER_WEB_LISTEN",
        default_value = "127.0.0.1:4321"
    )]
    pub web_listen: SocketAddr,

    /// Certificate chain (PEM) for TLS on the OpAMP endpoint.
    #[arg(long, env = "OPAMP_SERVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for TLS on the OpAMP endpoint.
    #[arg(long, env = "OPAMP_SERVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that signed --tls-cert; the --demo agents trust
    /// it [default: --tls-cert itself, for a self-signed certificate].
    #[arg(long, env = "OPAMP_SERVER_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// CA certificate (PEM) agents' client certificates must chain to
    /// (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "OPAMP_SERVER_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// The client CA's private key (PEM): enables issuing new client
    /// certificates (POST /api/agents/{uid}/rotate-certificate).
    #[arg(long, env = "OPAMP_SERVER_CLIENT_CA_KEY", requires = "client_ca")]
    pub client_ca_key: Option<PathBuf>,

    /// With --client-ca: accept agents without a client certificate too
    /// (they can then be given one with rotate-certificate).
    #[arg(long, env = "OPAMP_SERVER_CLIENT_CERT_OPTIONAL")]
    pub client_cert_optional: bool,

    /// Bearer token agents must send (`Authorization: Bearer ...`); others get 401.
    #[arg(long, env = "OPAMP_SERVER_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// Directory of the store and of offered package files (`packages/`).
    #[arg(long, env = "OPAMP_SERVER_DATA_DIR", default_value = "./opamp-data")]
    pub data_dir: PathBuf,

    /// Where state lives: `redb` (a file in DATA_DIR), `memory`, or a
    /// PostgreSQL URL (`postgres://user:password@host/db`) that several
    /// server instances can share.
    #[arg(
        long,
        env = "OPAMP_SERVER_STORE",
        default_value = "redb",
        hide_env_values = true
    )]
    pub store: StoreKind,

    /// This instance's name among the instances sharing a PostgreSQL store
    /// (letters, digits, `_`, `-`; unique among running instances)
    /// [default: host name and OpAMP port].
    #[arg(long, env = "OPAMP_SERVER_INSTANCE_NAME")]
    pub instance_name: Option<String>,

    /// Directory of the files that can be offered as packages
    /// [default: DATA_DIR/packages].
    #[arg(long, env = "OPAMP_SERVER_PACKAGES_DIR")]
    pub packages_dir: Option<PathBuf>,

    /// Base URL agents download package files from; the web listener serves
    /// them at /packages/ [default: http://WEB_LISTEN].
    #[arg(long, env = "OPAMP_SERVER_DOWNLOAD_BASE_URL")]
    pub download_base_url: Option<String>,

    /// Host name agents use to reach the OpAMP endpoint, for connection
    /// settings offers [default: the listen address, or 127.0.0.1].
    #[arg(long, env = "OPAMP_SERVER_PUBLIC_HOST")]
    pub public_host: Option<String>,

    /// OTLP/HTTP base URL (e.g. http://127.0.0.1:4318) offered to agents for
    /// their own metrics, traces and logs.
    #[arg(long, env = "OPAMP_SERVER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Start this many simulated agents inside the server process.
    #[arg(long, env = "OPAMP_SERVER_DEMO", num_args = 0..=1, default_missing_value = "3")]
    pub demo: Option<usize>,
}

/// The bound addresses, printed on stdout once the server is ready.
fn announce(opamp: SocketAddr, web: SocketAddr, tls: bool) {
    let (ws, http) = if tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    println!("OpAMP endpoint: {ws}://{opamp}/v1/opamp (plain HTTP: {http}://{opamp}/v1/opamp)");
    println!("Web page and API: http://{web}/");
}

fn connect_host(address: SocketAddr) -> IpAddr {
    if address.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        address.ip()
    }
}

/// The whole `opamp-fleet-server` binary, for its `main` and for packages
/// that build the server as a binary of their own: log events go to stderr,
/// filtered by `RUST_LOG` or else by `default_filter`; then the flags are
/// parsed and the server [`run`]s. A failure is logged and printed, and the
/// exit code says it.
pub async fn main_with_log_filter(default_filter: &str) -> std::process::ExitCode {
    use tracing_subscriber::EnvFilter;

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(ServerArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the server until Ctrl-C (or SIGTERM), then shuts down gracefully.
pub async fn run(args: ServerArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let opamp_listener = TcpListener::bind(args.listen).await?;
    let web_listener = TcpListener::bind(args.web_listen).await?;
    let opamp_address = opamp_listener.local_addr()?;
    let web_address = web_listener.local_addr()?;
    let store = match &args.store {
        StoreKind::Redb => FleetStore::open(&args.data_dir)?,
        StoreKind::Memory => FleetStore::in_memory()?,
        StoreKind::Postgres(url) => {
            let instance = args
                .instance_name
                .clone()
                .unwrap_or_else(|| default_instance_name(opamp_address.port()));
            tracing::info!(%instance, "connecting to the PostgreSQL store");
            FleetStore::postgres(url.parse()?, &instance).await?
        }
    };

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let mut config = ServerTlsConfig::new(std::fs::read(cert)?, std::fs::read(key)?);
            if let Some(ca) = &args.client_ca {
                let auth = if args.client_cert_optional {
                    ClientAuth::Optional
                } else {
                    ClientAuth::Required
                };
                config = config.with_client_ca_pem(std::fs::read(ca)?, auth);
            }
            Some(config)
        }
        _ => None,
    };
    let client_ca = match (&args.client_ca, &args.client_ca_key) {
        (Some(cert), Some(key)) => Some(ClientCa::load(cert, key)?),
        _ => None,
    };
    let host = args
        .public_host
        .clone()
        .unwrap_or_else(|| match connect_host(opamp_address) {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    let port = opamp_address.port();
    let (ws, http) = if tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let packages_dir = args
        .packages_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("packages"));
    let download_base_url = args.download_base_url.clone().unwrap_or_else(|| {
        format!(
            "http://{}:{}",
            connect_host(web_address),
            web_address.port()
        )
    });
    let options = FleetOptions {
        otlp_endpoint: args.otlp_endpoint.clone(),
        packages_dir,
        download_base_url,
        websocket_endpoint: format!("{ws}://{host}:{port}/v1/opamp"),
        http_endpoint: format!("{http}://{host}:{port}/v1/opamp"),
        agent_token: args.agent_token.clone(),
        client_ca: client_ca.clone(),
    };
    let fleet_client_ca = client_ca;
    let fleet = FleetServer::new(store.clone(), options);

    let mut builder = fleet
        .opamp_builder()
        .shutdown_timeout(Duration::from_secs(5));
    if let Some(tls) = tls.clone() {
        builder = builder.tls(tls);
    }
    let opamp = builder.build();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let opamp_task = tokio::spawn(
        opamp
            .clone()
            .serve_with_shutdown(opamp_listener, wait_stop(stop_rx.clone())),
    );
    let web = fleet.api_router().merge(fleet.downloads_router());
    let web_task = tokio::spawn(
        axum::serve(web_listener, web)
            .with_graceful_shutdown(wait_stop(stop_rx.clone()))
            .into_future(),
    );
    announce(opamp_address, web_address, tls.is_some());
    tracing::info!(%opamp_address, %web_address, "fleet server ready");

    let demo_agents = match args.demo {
        Some(count) if count > 0 => {
            let endpoint = format!("{ws}://{}:{port}/v1/opamp", connect_host(opamp_address));
            let demo_tls = demo::DemoTls {
                root_pem: match args.tls_ca.as_ref().or(args.tls_cert.as_ref()) {
                    Some(cert) => Some(std::fs::read(cert)?),
                    None => None,
                },
                client_ca: fleet_client_ca.clone(),
            };
            Some(demo::start(endpoint, count, args.agent_token.clone(), demo_tls).await?)
        }
        _ => None,
    };

    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(agents) = demo_agents {
        agents.stop().await;
    }
    fleet.stop().await;
    stop_tx.send_replace(true);
    opamp_task.await??;
    web_task.await??;
    store.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
