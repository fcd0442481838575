//! Test support for the interop tests: opamp-go (issue 6) and the
//! OpenTelemetry Collector (issue 15).
//!
//! The tests in `tests/` run opamp-rs against the Go programs in `interop/`
//! (`goagent` on opamp-go's client, `goserver` on opamp-go's server, both
//! driven by JSON lines; see `interop/README.md`):
//!
//! - `tests/go_agent.rs`: opamp-go agent → our [`opamp_server::OpampServer`];
//! - `tests/go_server.rs`: our [`opamp_client::OpampClient`] → opamp-go server;
//! - `tests/collector_supervisor.rs`, `tests/collector_extension.rs`: the
//!   Collector's `opampsupervisor` and OpAMP extension → the example fleet
//!   server (`opamp-fleet-server`, run as the `fleet-server` process), driven
//!   through its JSON API;
//! - `tests/fleet_server_process.rs`, `tests/fleet_postgres.rs`: our two
//!   example products together, the fleet server and the example agent
//!   (`opamp-agent`, run as the `example-agent` process), with a redb store
//!   and with several server instances on one PostgreSQL. They need no Go;
//!   the PostgreSQL one skips without PostgreSQL (fails under `CI`).
//!
//! This crate holds what both need: building the Go programs once per test
//! process ([`go_programs`]), running them ([`GoProcess`]), waiting for
//! events with a generous deadline ([`Inbox`]), our server and client wired
//! to record what they see ([`OurServer`], [`OurAgent`]) and throwaway
//! certificates ([`TestPki`], from opamp-testkit) and a one-file HTTP server for packages
//! ([`StaticFile`]). For the Collector: building the supervisor and a
//! minimal Collector ([`collector_programs`], `interop/build-collector.sh`),
//! running them ([`SupervisorProcess`], [`CollectorProcess`]), the fleet
//! server process ([`FleetServerProcess`]) and an OTLP/HTTP receiver
//! ([`OtlpSink`]). For the fleet on PostgreSQL: a test database server
//! ([`opamp_testkit::postgres_url`]). Which test covers which scenario is listed in
//! `interop/MATRIX.md`.
//!
//! Without Go (or without the Go module proxy) every Go or Collector test
//! prints a notice and passes, unless `CI` is set: then it fails and says why.
#![forbid(unsafe_code)]

mod collector;
mod file_server;
mod fleet;
mod go;
mod otlp_sink;
mod our_agent;
mod our_server;

pub use collector::{
    COLLECTOR_VERSION, CollectorProcess, CollectorPrograms, NO_OWN_METRICS, REMOTE_RESTARTS_GATE,
    SupervisorProcess, SupervisorSettings, collector_programs, otlp_pipeline_config,
    otlp_receiver_answers, wait_otlp_receiver,
};

pub use file_server::StaticFile;
pub use fleet::{
    FleetServerProcess, assert_available_component, assert_capabilities, assert_description,
    connected_events_after, effective_body, has_capability, http_request, latest_event_time,
};
pub use go::{GoProcess, GoPrograms, go_programs};
pub use otlp_sink::{OtlpRequest, OtlpSink};
pub use our_agent::{
    AgentRecorder, ClientEvent, FAIL_MARKER, INTEROP_CAPABILITY, OurAgent, agent_capabilities,
};
pub use our_server::{ConnectAttempt, LosableStore, OurServer, Refuse, ServerRecorder, Transport};
// Shared with the other suites.
pub use opamp_testkit::{Inbox, PkiFiles, TIMEOUT, TestPki, free_port};

/// Two tests of one scenario: `fn $ws` runs `$scenario` over WebSocket,
/// `fn $http` over plain HTTP. The names are written out in full, so
/// `CONFORMANCE.md` can cite them.
///
/// With `$scenario(go): ...` the scenario also takes the opamp-go programs
/// (`&GoPrograms`); both tests skip as [`go_programs`] says when they are
/// missing.
#[macro_export]
macro_rules! over_both_transports {
    ($scenario:ident(go): fn $ws:ident, fn $http:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $ws() {
            if let Some(go) = $crate::go_programs() {
                $scenario(go, $crate::Transport::WebSocket).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $http() {
            if let Some(go) = $crate::go_programs() {
                $scenario(go, $crate::Transport::Http).await;
            }
        }
    };
    ($scenario:ident: fn $ws:ident, fn $http:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $ws() {
            $scenario($crate::Transport::WebSocket).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $http() {
            $scenario($crate::Transport::Http).await;
        }
    };
}

/// One test that needs the opamp-go programs: `fn $name` runs
/// `$scenario(go)` (`go: &GoPrograms`), or skips as [`go_programs`] says
/// when they are missing. The name is written out in full, so
/// `CONFORMANCE.md` can cite it.
#[macro_export]
macro_rules! with_go {
    ($scenario:ident: fn $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if let Some(go) = $crate::go_programs() {
                $scenario(go).await;
            }
        }
    };
}

/// Waits for `$agent`'s ([`OurAgent`]) earliest unconsumed callback event
/// of one kind and returns what it carries: `next_client_event!(agent,
/// "remote config", ClientEvent::RemoteConfig)` returns the
/// `AgentRemoteConfig` (cloned); with `pattern => value`, the value the
/// pattern's bindings (references into the event) give.
#[macro_export]
macro_rules! next_client_event {
    ($agent:expr, $what:expr, $variant:path) => {
        $crate::next_client_event!($agent, $what, $variant(value) => value.clone())
    };
    ($agent:expr, $what:expr, $pattern:pat => $value:expr) => {
        $agent
            .wait_map($what, |event| match event {
                $pattern => Some($value),
                _ => None,
            })
            .await
    };
}

/// Lower-case hex of `bytes`, the way the Go programs print hashes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}
