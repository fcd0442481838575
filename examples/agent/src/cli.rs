//! The `opamp-agent` binary's flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of the example agent. Every flag can also be set with the
/// environment variable named in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "opamp-agent",
    version,
    about = "Example OpAMP agent: simulates an agent, or supervises a real one (--supervise -- CMD ARGS...)"
)]
pub struct AgentArgs {
    /// OpAMP endpoint: ws:// or wss:// for WebSocket, http:// or https://
    /// for plain HTTP.
    #[arg(
        long,
        env = "OPAMP_AGENT_ENDPOINT",
        default_value = "ws://127.0.0.1:4320/v1/opamp"
    )]
    pub(crate) endpoint: String,

    /// Directory of the agent's state: instance uid, applied config,
    /// packages, certificates. With --count above 1, each agent uses a
    /// subdirectory `agent-N`.
    #[arg(long, env = "OPAMP_AGENT_STATE_DIR", default_value = "./agent-state")]
    pub(crate) state_dir: PathBuf,

    /// Runs this many agents in one process (scale mode), each with its own
    /// UUIDv7 instance uid and state subdirectory.
    #[arg(long, env = "OPAMP_AGENT_COUNT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) count: u32,

    /// `service.name` reported in the agent description (identifying).
    #[arg(
        long,
        env = "OPAMP_AGENT_SERVICE_NAME",
        default_value = "io.opamp-rs.example-agent"
    )]
    pub(crate) service_name: String,

    /// Extra identifying attribute `KEY=VALUE` (repeatable), e.g.
    /// `deployment.environment.name=staging`.
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) attributes: Vec<(String, String)>,

    /// Bearer token sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "OPAMP_AGENT_TOKEN", hide_env_values = true)]
    pub(crate) bearer_token: Option<String>,

    /// CA certificate (PEM) that signs the server's certificate; the system
    /// roots are used without it.
    #[arg(long, env = "OPAMP_AGENT_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// Client certificate chain (PEM) for mutual TLS. Without it, a
    /// certificate issued by the server earlier (rotation) is used if the
    /// state directory has one.
    #[arg(long, env = "OPAMP_AGENT_CLIENT_CERT", requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert.
    #[arg(long, env = "OPAMP_AGENT_CLIENT_KEY", requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,

    /// Development only: accept any server certificate.
    #[arg(long, env = "OPAMP_AGENT_INSECURE")]
    pub(crate) insecure: bool,

    /// Asks the server for a client certificate with a CSR (key generated
    /// here, never sent) when the state directory has none yet, and again
    /// after the server assigns a new instance uid.
    #[arg(long, env = "OPAMP_AGENT_CSR")]
    pub(crate) csr: bool,

    /// Heartbeat interval until the server offers one.
    #[arg(long, env = "OPAMP_AGENT_HEARTBEAT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat: Duration,

    /// Ed25519 public key (64 hex digits, or a file holding them) that
    /// package signatures must verify against. Signatures are over the
    /// file's SHA-256 digest. Without it, unsigned packages are accepted
    /// (their SHA-256 is still checked) and signed ones refused.
    #[arg(long, env = "OPAMP_AGENT_PACKAGE_KEY")]
    pub(crate) package_key: Option<String>,

    /// How often own metrics (and batches of own spans and log records) are
    /// exported once the server offers a destination.
    #[arg(long, env = "OPAMP_AGENT_OWN_METRICS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) own_metrics_interval: Duration,

    /// Supervisor mode: start the command after `--` as a child, hand it the
    /// remote config and manage it.
    #[arg(long, requires = "command")]
    pub(crate) supervise: bool,

    /// Supervisor: how long the child may take to exit after SIGTERM (or
    /// the SIGINT the agent got) before it is killed.
    #[arg(long, env = "OPAMP_AGENT_STOP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) stop_timeout: Duration,

    /// Supervisor: a child that exits sooner than this after starting counts
    /// as crashing, and restarts back off exponentially.
    #[arg(long, env = "OPAMP_AGENT_MIN_UPTIME", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) min_uptime: Duration,

    /// Supervisor: the longest wait between restarts of a crashing child.
    #[arg(long, env = "OPAMP_AGENT_MAX_BACKOFF", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) max_backoff: Duration,

    /// Supervisor: a new executable (top-level package) must stay up this
    /// long, or the previous one is restored.
    #[arg(long, env = "OPAMP_AGENT_UPDATE_PROBATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) update_probation: Duration,

    /// Supervisor: the config file the child runs while there is no remote
    /// config yet (first start, server unreachable). A config received
    /// earlier is kept in the state directory and preferred.
    #[arg(long, env = "OPAMP_AGENT_FALLBACK_CONFIG", value_name = "FILE")]
    pub(crate) fallback_config: Option<PathBuf>,

    /// Supervisor: a command that checks a new config before the child is
    /// restarted on it, e.g. `/bin/otelcol validate --config={config}`.
    /// Split at whitespace (no shell); `{config}` is the staged config file.
    /// A non-zero exit fails the config (with the command's output) and
    /// leaves the running child alone.
    #[arg(long, env = "OPAMP_AGENT_VALIDATE_COMMAND", value_name = "COMMAND")]
    pub(crate) validate_command: Option<String>,

    /// Supervisor: the child's health endpoint (`http://`, 2xx = healthy),
    /// e.g. a Collector's health_check extension `http://127.0.0.1:13133/`.
    #[arg(
        long,
        env = "OPAMP_AGENT_HEALTH_URL",
        value_name = "URL",
        conflicts_with = "health_command"
    )]
    pub(crate) health_url: Option<String>,

    /// Supervisor: a command that tells whether the child is healthy (exit
    /// status 0). Split at whitespace (no shell).
    #[arg(long, env = "OPAMP_AGENT_HEALTH_COMMAND", value_name = "COMMAND")]
    pub(crate) health_command: Option<String>,

    /// Supervisor: time between health probes (with --health-url or
    /// --health-command).
    #[arg(long, env = "OPAMP_AGENT_HEALTH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) health_interval: Duration,

    /// Supervisor, without a health check: a child still running this long
    /// after starting counts as healthy (a new config is APPLIED then).
    #[arg(long, env = "OPAMP_AGENT_READY_AFTER", default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) ready_after: Duration,

    /// Supervisor, with a health check: how long a child restarted on a new
    /// config may take to become healthy before the config is FAILED and
    /// the last good one restored. Also bounds --validate-command.
    #[arg(long, env = "OPAMP_AGENT_APPLY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) apply_timeout: Duration,

    /// The supervised command and its arguments (after `--`). `{config}` in
    /// an argument is replaced by the path of the config file.
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervise_takes_the_command_after_double_dash() {
        let args = AgentArgs::try_parse_from([
            "agent",
            "--supervise",
            "--endpoint",
            "http://127.0.0.1:1/v1/opamp",
            "--",
            "/bin/collector",
            "--config",
            "{config}",
        ])
        .unwrap();
        assert!(args.supervise);
        assert_eq!(args.command, ["/bin/collector", "--config", "{config}"]);
        assert_eq!(args.endpoint, "http://127.0.0.1:1/v1/opamp");
    }

    #[test]
    fn supervise_without_a_command_is_refused() {
        assert!(AgentArgs::try_parse_from(["agent", "--supervise"]).is_err());
        assert!(AgentArgs::try_parse_from(["agent", "--count", "0"]).is_err());
    }

    #[test]
    fn attributes_are_key_value_pairs() {
        let args =
            AgentArgs::try_parse_from(["agent", "--attribute", "a=b=c", "--attribute", "x="])
                .unwrap();
        assert_eq!(
            args.attributes,
            [("a".into(), "b=c".into()), ("x".into(), String::new())]
        );
        assert!(AgentArgs::try_parse_from(["agent", "--attribute", "novalue"]).is_err());
    }

    #[test]
    fn supervisor_checks_are_flags() {
        let args = AgentArgs::try_parse_from([
            "agent",
            "--supervise",
            "--fallback-config",
            "/etc/otelcol/fallback.yaml",
            "--validate-command",
            "/bin/otelcol validate --config={config}",
            "--health-url",
            "http://127.0.0.1:13133/",
            "--apply-timeout",
            "1m",
            "--",
            "/bin/otelcol",
        ])
        .unwrap();
        assert_eq!(
            args.validate_command.as_deref(),
            Some("/bin/otelcol validate --config={config}")
        );
        assert_eq!(args.apply_timeout, Duration::from_secs(60));
        assert_eq!(args.ready_after, Duration::from_secs(3));
        // One health check at a time.
        assert!(
            AgentArgs::try_parse_from([
                "agent",
                "--supervise",
                "--health-url",
                "http://127.0.0.1:13133/",
                "--health-command",
                "true",
                "--",
                "/bin/otelcol",
            ])
            .is_err()
        );
    }
}
