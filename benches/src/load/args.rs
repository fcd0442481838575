//! Command-line flags of `loadgen`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use url::Url;

/// Flags of the OpAMP load generator. Every flag can also be set with the
/// environment variable named in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "OpAMP load generator: many simulated agents against one server"
)]
pub struct LoadArgs {
    /// OpAMP endpoint: ws:// for WebSocket agents, http:// for plain-HTTP
    /// (polling) agents.
    #[arg(
        long,
        env = "LOADGEN_URL",
        default_value = "ws://127.0.0.1:4320/v1/opamp"
    )]
    pub url: Url,

    /// More OpAMP endpoints (WebSocket only): agents are spread round robin
    /// over --url and these, as a load balancer would over several server
    /// instances. --server-cmd starts and --storm kills only --url's server.
    #[arg(long = "also-url", env = "LOADGEN_ALSO_URLS", value_delimiter = ',')]
    pub also_urls: Vec<Url>,

    /// Pids of the servers behind --also-url: RSS and CPU are then the sum
    /// over all servers.
    #[arg(
        long = "also-server-pid",
        env = "LOADGEN_ALSO_SERVER_PIDS",
        value_delimiter = ','
    )]
    pub also_server_pids: Vec<u32>,

    /// Number of simulated agents.
    #[arg(long, env = "LOADGEN_AGENTS", default_value_t = 1000)]
    pub agents: usize,

    /// How many new agents start per second.
    #[arg(long, env = "LOADGEN_RAMP_RATE", default_value_t = 1000.0)]
    pub ramp_rate: f64,

    /// Heartbeat interval (WebSocket) or polling interval (HTTP). `0` is a
    /// closed loop: each agent sends its next message as soon as the reply
    /// to the previous one arrives (throughput mode).
    #[arg(long, env = "LOADGEN_HEARTBEAT", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Wait after the ramp before the steady-state window starts.
    #[arg(long, env = "LOADGEN_SETTLE", default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Length of the steady-state window (message rate, heartbeat latency,
    /// server CPU).
    #[arg(long, env = "LOADGEN_DURATION", default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How to push a config to every agent after the steady window:
    /// `none`; `api=<base url>` (example server: one
    /// `PUT <base>/api/agents/{uid}/config` per agent); `api-default=<base
    /// url>` (one `PUT <base>/api/config/default` for the whole fleet);
    /// `stdin` (one `offer_remote_config` JSON command to all, written to the
    /// stdin of the server started with --server-cmd: goserver,
    /// goloadserver, loadserver).
    #[arg(long, env = "LOADGEN_PUSH", default_value = "none")]
    pub push: PushMode,

    /// Size of the pushed config body, bytes.
    #[arg(long, env = "LOADGEN_CONFIG_SIZE", default_value_t = 1024)]
    pub config_size: usize,

    /// Give up waiting for APPLIED from every agent after this long.
    #[arg(long, env = "LOADGEN_PUSH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub push_timeout: Duration,

    /// Concurrent requests for `--push api=...`.
    #[arg(long, env = "LOADGEN_PUSH_CONCURRENCY", default_value_t = 32)]
    pub push_concurrency: usize,

    /// Start the server with this shell command (run as `sh -c "exec CMD"`,
    /// so its pid is the server's) and stop it at the end. Needed for
    /// `--push stdin` and `--storm`; gives `--server-pid` automatically.
    #[arg(long, env = "LOADGEN_SERVER_CMD")]
    pub server_cmd: Option<String>,

    /// Pid of the server process, for RSS and CPU from /proc.
    #[arg(long, env = "LOADGEN_SERVER_PID")]
    pub server_pid: Option<u32>,

    /// How long to wait for a started server to accept connections.
    #[arg(long, env = "LOADGEN_SERVER_READY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub server_ready_timeout: Duration,

    /// After the steady window (and the push), kill the server (SIGKILL),
    /// restart it with --server-cmd and time how long until every agent is
    /// connected again. Agents reconnect with opamp-transport's
    /// ExponentialBackoff (full jitter, 1 s doubling up to 60 s).
    #[arg(long, env = "LOADGEN_STORM", requires = "server_cmd")]
    pub storm: bool,

    /// How long the server stays down in the storm.
    #[arg(long, env = "LOADGEN_STORM_DOWN", default_value = "2s", value_parser = parse_duration)]
    pub storm_down: Duration,

    /// Give up waiting for every agent to come back after this long.
    #[arg(long, env = "LOADGEN_STORM_TIMEOUT", default_value = "180s", value_parser = parse_duration)]
    pub storm_timeout: Duration,

    /// Local source addresses for agent connections, round robin, e.g.
    /// `127.0.0.2-127.0.0.9` or `127.0.0.2,127.0.0.3`: each source address
    /// gives about 28 000 ephemeral ports towards one server port, so use
    /// several beyond that. WebSocket only (the socket is bound before
    /// connecting, and the handshake done here).
    #[arg(long, env = "LOADGEN_SOURCE_ADDRS", value_parser = parse_source_addrs)]
    pub source_addrs: Option<SourceAddrs>,

    /// Connected-agent counts at which the server's RSS and CPU are sampled.
    #[arg(
        long,
        env = "LOADGEN_SAMPLE_AT",
        value_delimiter = ',',
        default_value = "1000,5000,10000,15000"
    )]
    pub sample_at: Vec<usize>,

    /// A message without a reply after this long counts as a
    /// `reply_timeout` error (closed-loop agents then send the next one).
    #[arg(long, env = "LOADGEN_REPLY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub reply_timeout: Duration,

    /// Bound for one connect (TCP + WebSocket upgrade).
    #[arg(long, env = "LOADGEN_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Give up waiting for the ramp to connect every agent after this long
    /// (measured from the last agent's start).
    #[arg(long, env = "LOADGEN_RAMP_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ramp_timeout: Duration,

    /// HTTP agents share one connection pool instead of one keep-alive
    /// connection each.
    #[arg(long, env = "LOADGEN_HTTP_SHARED_POOL")]
    pub http_shared_pool: bool,

    /// Name of this run in the report (e.g. `opamp-rs` or `opamp-go`).
    #[arg(long, env = "LOADGEN_LABEL", default_value = "run")]
    pub label: String,

    /// Scenario name in the report: runs with the same scenario are
    /// compared side by side by --compare.
    #[arg(long, env = "LOADGEN_SCENARIO", default_value = "default")]
    pub scenario: String,

    /// Print a comparison (markdown) of the JSON lines in this file, written
    /// by --json-out, and exit without running anything.
    #[arg(long)]
    pub compare: Option<PathBuf>,

    /// With --compare: the label every other run is divided by.
    #[arg(long, default_value = "opamp-go")]
    pub baseline: String,

    /// Also append the JSON report line to this file.
    #[arg(long, env = "LOADGEN_JSON_OUT")]
    pub json_out: Option<PathBuf>,

    /// Worker threads of the load generator's runtime (default: all cores).
    #[arg(long, env = "LOADGEN_THREADS")]
    pub threads: Option<usize>,

    /// Client measurement: every agent is a real `opamp-client`
    /// `OpampClient` in this process (WebSocket or plain HTTP by --url's
    /// scheme). Reports the clients' RSS per idle client, CPU time per
    /// heartbeat and connect rate instead of the server-side phases.
    #[arg(long, env = "LOADGEN_OPAMP_CLIENTS", conflicts_with = "clients_cmd")]
    pub opamp_clients: bool,

    /// Client measurement of another process that runs --agents clients
    /// against --url (e.g. the example agent with `--count N`), started as
    /// `sh -c "exec CMD"`; its established connections to the server's port
    /// are counted from /proc.
    #[arg(long, env = "LOADGEN_CLIENTS_CMD")]
    pub clients_cmd: Option<String>,
}

impl LoadArgs {
    pub(crate) fn transport(&self) -> Result<AgentTransport, String> {
        match self.url.scheme() {
            "ws" | "wss" => Ok(AgentTransport::WebSocket),
            "http" | "https" => Ok(AgentTransport::Http),
            other => Err(format!(
                "--url scheme {other:?}: use ws://, wss://, http:// or https://"
            )),
        }
    }
}

/// Which OpAMP transport the simulated agents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentTransport {
    WebSocket,
    Http,
}

impl AgentTransport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Http => "http",
        }
    }
}

/// How the config push reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushMode {
    /// No push.
    None,
    /// `PUT <base>/api/agents/{uid}/config?file=config.yaml` per agent.
    ApiPerAgent(Url),
    /// One `PUT <base>/api/config/default?file=config.yaml`.
    ApiDefault(Url),
    /// `{"cmd":"offer_remote_config","to":"all",...}` on the started
    /// server's stdin.
    ServerStdin,
}

impl FromStr for PushMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let base = |url: &str| {
            let url = Url::parse(url).map_err(|error| format!("push url {url:?}: {error}"))?;
            match url.scheme() {
                "http" => Ok(url),
                other => Err(format!(
                    "push url scheme {other:?}: only http:// is supported"
                )),
            }
        };
        match text {
            "none" => Ok(Self::None),
            "stdin" | "goserver-stdin" => Ok(Self::ServerStdin),
            _ => {
                if let Some(url) = text.strip_prefix("api=") {
                    Ok(Self::ApiPerAgent(base(url)?))
                } else if let Some(url) = text.strip_prefix("api-default=") {
                    Ok(Self::ApiDefault(base(url)?))
                } else {
                    Err(format!(
                        "unknown push mode {text:?}: use none, api=<base url>, \
                         api-default=<base url> or stdin"
                    ))
                }
            }
        }
    }
}

/// Local addresses agents bind before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs(pub(crate) Vec<IpAddr>);

/// `a,b,c` or `first-last` (IPv4, last octets counted up), or a mix.
fn parse_source_addrs(text: &str) -> Result<SourceAddrs, String> {
    let mut addrs = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        if let Some((first, last)) = part.split_once('-') {
            let parse = |ip: &str| {
                Ipv4Addr::from_str(ip.trim()).map_err(|error| format!("{ip:?}: {error}"))
            };
            let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
            if last < first || last - first >= 4096 {
                return Err(format!("range {part:?} is empty or longer than 4096"));
            }
            addrs.extend((first..=last).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            addrs.push(IpAddr::from_str(part).map_err(|error| format!("{part:?}: {error}"))?);
        }
    }
    if addrs.is_empty() {
        return Err("no source address given".into());
    }
    Ok(SourceAddrs(addrs))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        LoadArgs::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_a_small_websocket_run() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.agents, 1000);
        assert_eq!(args.heartbeat, Duration::from_secs(30));
        assert_eq!(args.push, PushMode::None);
        assert_eq!(args.transport(), Ok(AgentTransport::WebSocket));
        assert_eq!(args.sample_at, [1000, 5000, 10_000, 15_000]);
        assert!(!args.storm);
        assert!(!args.opamp_clients);
        assert!(args.clients_cmd.is_none());
    }

    #[test]
    fn client_measurement_modes_exclude_each_other() {
        assert!(parse(&["--opamp-clients"]).unwrap().opamp_clients);
        let args = parse(&["--clients-cmd", "agent --count 5"]).unwrap();
        assert_eq!(args.clients_cmd.as_deref(), Some("agent --count 5"));
        assert!(parse(&["--opamp-clients", "--clients-cmd", "x"]).is_err());
    }

    #[test]
    fn full_command_line() {
        let args = parse(&[
            "--url",
            "http://127.0.0.1:4320/v1/opamp",
            "--agents",
            "15000",
            "--ramp-rate",
            "500",
            "--heartbeat",
            "0",
            "--duration",
            "1m",
            "--push",
            "api=http://127.0.0.1:4321",
            "--server-cmd",
            "target/release/opamp-fleet-server --store memory",
            "--storm",
            "--storm-down",
            "500ms",
            "--source-addrs",
            "127.0.0.2-127.0.0.4,127.0.0.9",
            "--sample-at",
            "10,20",
        ])
        .unwrap();
        assert_eq!(args.transport(), Ok(AgentTransport::Http));
        assert_eq!(args.agents, 15_000);
        assert_eq!(args.ramp_rate, 500.0);
        assert_eq!(args.heartbeat, Duration::ZERO);
        assert_eq!(args.duration, Duration::from_secs(60));
        assert_eq!(
            args.push,
            PushMode::ApiPerAgent(Url::parse("http://127.0.0.1:4321").unwrap())
        );
        assert!(args.storm);
        assert_eq!(args.storm_down, Duration::from_millis(500));
        let sources: Vec<String> = args
            .source_addrs
            .unwrap()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            sources,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
        );
        assert_eq!(args.sample_at, [10, 20]);
    }

    #[test]
    fn several_endpoints_and_their_pids() {
        let args = parse(&[
            "--also-url",
            "ws://127.0.0.1:2/v1/opamp,ws://127.0.0.1:3/v1/opamp",
            "--also-server-pid",
            "12,13",
        ])
        .unwrap();
        let urls: Vec<&str> = args.also_urls.iter().map(Url::as_str).collect();
        assert_eq!(
            urls,
            ["ws://127.0.0.1:2/v1/opamp", "ws://127.0.0.1:3/v1/opamp"]
        );
        assert_eq!(args.also_server_pids, [12, 13]);
        assert!(parse(&[]).unwrap().also_urls.is_empty());
    }

    #[test]
    fn storm_needs_a_server_command() {
        assert!(parse(&["--storm"]).is_err());
    }

    #[test]
    fn push_modes() {
        assert_eq!("stdin".parse::<PushMode>(), Ok(PushMode::ServerStdin));
        assert_eq!(
            "goserver-stdin".parse::<PushMode>(),
            Ok(PushMode::ServerStdin)
        );
        assert_eq!(
            "api-default=http://127.0.0.1:4321/".parse::<PushMode>(),
            Ok(PushMode::ApiDefault(
                Url::parse("http://127.0.0.1:4321/").unwrap()
            ))
        );
        assert!("api=ftp://x".parse::<PushMode>().is_err());
        assert!("api=".parse::<PushMode>().is_err());
        assert!("sometimes".parse::<PushMode>().is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--url", "ftp://h/p"]).unwrap().transport().is_err());
        assert!(parse(&["--heartbeat", "soon"]).is_err());
        assert!(parse_source_addrs("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_addrs("").is_err());
        assert!(parse_source_addrs("localhost").is_err());
        assert_eq!(
            parse_source_addrs("::1").unwrap().0,
            [IpAddr::from_str("::1").unwrap()]
        );
    }
}
