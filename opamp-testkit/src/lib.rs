//! The test kit shared by opamp-rs's test suites (integration tests, the
//! interop tests, benches' tests and the fuzz replay). Not published.
//!
//! # Guide
//!
//! Add it as a dev-dependency (`opamp-testkit.workspace = true`) and import
//! what a test needs from the crate root:
//!
//! ```no_run
//! use opamp_server::OpampServer;
//! use opamp_testkit::{RunningServer, report, uid, ws_connect, ws_exchange};
//!
//! # async fn example() {
//! let running = RunningServer::start(OpampServer::builder().build()).await;
//! let mut ws = ws_connect(running.addr).await;
//! let answer = ws_exchange(&mut ws, &report(uid(1), 0)).await;
//! assert_eq!(answer.instance_uid, uid(1).to_bytes());
//! running.stop().await;
//! # }
//! ```
//!
//! What is here:
//!
//! - **Waiting** without sleeping: [`within`] (a future, with a generous
//!   failure deadline [`TIMEOUT`] and a message saying what was awaited),
//!   [`eventually`] (a polled condition), [`Inbox`] (the earliest item
//!   matching a predicate, keeping the others for later waits).
//! - **Certificates**: [`TestPki`] makes a CA, a server certificate for
//!   `localhost`/`127.0.0.1`, a client certificate and a rogue one, and
//!   turns them into opamp's TLS settings or rustls configs.
//! - **Servers**: [`RunningServer`] serves an [`opamp_server::OpampServer`]
//!   on an ephemeral loopback port (WebSocket and plain HTTP), with
//!   [`until_all`] / [`until_agent`] to wait on its registry;
//!   [`serve_http`] serves a bare hyper handler (plain or TLS) for
//!   transport- and client-level tests.
//! - **Raw agents** for hostile and edge cases: [`ws_connect`], [`frame`],
//!   [`ws_send`], [`ws_next`], [`ws_close_code`] speak WebSocket frames by
//!   hand; [`post`], [`http_request`], [`http_exchange`] speak plain HTTP.
//! - **Recorders**: [`ServerRecorder`] (server callbacks, events as
//!   [`ServerEvent`]) and [`ClientRecorder`] (client callbacks, events as
//!   [`ClientEvent`]); [`quick_retry`] for clients that retry on real time;
//!   [`report_applied`] for agents that take every remote config.
//! - **Messages**: [`uid`], [`report`], [`heartbeat`], [`ack`],
//!   [`config_map`], [`offer_config`], [`body_of`]; [`big_config`] and
//!   [`push_until_refused`] for agents that do not read.
//! - **External tools**: [`go`], [`postgres_url`] (and, with the
//!   `postgres` feature, `fresh_database`), [`chromium`]; each skips
//!   with a notice locally and panics when `CI=true` ([`running_in_ci`],
//!   [`skip_or_fail`] for other tools).
//! - **Child processes**: [`ChildProcess`] captures output line by line,
//!   waits for a line, is killed on drop and dumps its output when the test
//!   fails; [`wait_for_port`], [`free_port`].
//!
//! Waits on sockets and channels ([`ws_next`], [`next_server_event`],
//! [`http_request`]) have no deadline of their own, so they work under
//! tokio's paused clock, where a deadline would race the server's own
//! timers; wrap them in [`within`] on real time.
//!
//! Only for integration tests: a crate's own `#[cfg(test)]` unit tests
//! must not use it (they would see two copies of that crate's types).

mod client_recorder;
mod downloader;
mod gates;
mod http_server;
mod messages;
mod pki;
mod process;
mod push;
mod raw_agent;
mod server;
mod server_recorder;
mod timeout;

pub use client_recorder::{
    ClientEvent, ClientRecorder, QuickRetry, expect_client_event, quick_retry, report_applied,
};
pub use downloader::{FakeDownloader, Reply, Step};
pub use gates::{
    chromium, go, on_path, postgres_url, running_in_ci, skip_or_fail, start_postgres_cluster,
    with_database,
};
#[cfg(feature = "postgres")]
pub use gates::{fresh_database, fresh_database_url};
pub use http_server::{
    BoxResponse, FullResponse, Handler, HttpServer, body_bytes, handler, serve_http,
    status_response,
};
pub use messages::{
    CAPS, ack, body_of, config_file, config_map, heartbeat, offer_config, remote_config, report,
    uid,
};
pub use pki::{PkiFiles, TestPki};
pub use process::{ChildProcess, OutputLine, Stream, dump_output, free_port, wait_for_port};
pub use push::{big_config, push_until_refused};
pub use raw_agent::{
    FromServer, Ws, frame, framed, header_number, http_exchange, http_request, http_url, post,
    ws_close_code, ws_connect, ws_connect_url, ws_exchange, ws_next, ws_recv, ws_send, ws_url,
};
pub use server::{RunningServer, until_agent, until_all};
pub use server_recorder::{ServerEvent, ServerRecorder, next_server_event};
pub use timeout::{Inbox, TIMEOUT, count_reaches, eventually, within, within_for};
