//! The example fleet server (`opamp-fleet-server`) as a process, driven through
//! its JSON API (see `examples/API.md`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use opamp_testkit::TIMEOUT;

/// How often [`FleetServerProcess::wait_agent`] re-reads the API.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// A running fleet server: OpAMP on one port, JSON API on another, an
/// in-memory store. Killed when dropped; if the test is failing then, its
/// log is written to the test's output.
#[derive(Debug)]
pub struct FleetServerProcess {
    child: Child,
    /// The OpAMP endpoint's address (WebSocket and plain HTTP, `/v1/opamp`).
    pub opamp: SocketAddr,
    /// The web page and JSON API's address.
    pub web: SocketAddr,
    tls: bool,
    output: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl FleetServerProcess {
    /// Starts `program` (the `fleet-server` binary) on 127.0.0.1 port 0 with
    /// an in-memory store and `args` added, and waits until it printed its
    /// addresses.
    pub async fn start(program: &Path, args: &[String]) -> Self {
        let mut with_store = vec!["--store".to_owned(), "memory".to_owned()];
        with_store.extend_from_slice(args);
        Self::launch(program, &with_store, &[], None).await
    }

    /// Starts `program` on 127.0.0.1 port 0 with `args` and the environment
    /// variables `envs` added, its data directory `data_dir` (a fresh
    /// temporary one when `None`, so a restart can reuse a directory), and
    /// waits until it printed its addresses. Without `--store` among `args`
    /// or `OPAMP_SERVER_STORE` among `envs`, the store is redb.
    pub async fn launch(
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        data_dir: Option<&Path>,
    ) -> Self {
        let data = tempfile::tempdir().expect("data directory");
        let mut command = Command::new(program);
        command
            .args(["--listen", "127.0.0.1:0", "--web-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir.unwrap_or(data.path()))
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied());
        let mut child = spawn_piped(&mut command, program, Stdio::null());
        let output = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(collect_lines(stderr, Arc::clone(&output)));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let (mut opamp, mut web, mut tls) = (None, None, false);
        let announced = tokio::time::timeout(TIMEOUT, async {
            while opamp.is_none() || web.is_none() {
                let Ok(Some(line)) = lines.next_line().await else {
                    return;
                };
                if line.starts_with("OpAMP endpoint") {
                    tls = line.contains("wss://");
                    opamp = address_after(&line, if tls { "wss" } else { "ws" });
                } else if line.starts_with("Web page") {
                    web = address_after(&line, "http");
                }
            }
        })
        .await;
        let server = Self {
            child,
            opamp: opamp.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            web: web.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            tls,
            output,
            _data: data,
        };
        assert!(
            announced.is_ok() && server.opamp.port() != 0 && server.web.port() != 0,
            "the fleet server did not announce its addresses"
        );
        server
    }

    /// Sends `signal` (a `kill` option such as `-TERM`) to the process.
    pub async fn signal(&mut self, signal: &str) {
        let pid = self.child.id().expect("the fleet server is running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Ctrl-C equivalent: SIGTERM; the server must then exit with success.
    pub async fn stop(mut self) {
        self.signal("-TERM").await;
        let exit = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the fleet server stops after SIGTERM")
            .expect("wait");
        assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    }

    /// SIGKILL: the server ends without any goodbye.
    pub async fn kill(mut self) {
        self.signal("-KILL").await;
        let _ = self.child.wait().await;
    }

    /// `ws://…/v1/opamp` (or `wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/opamp", self.opamp)
    }

    /// `http://…/v1/opamp` (or `https://` with TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/v1/opamp", self.opamp)
    }

    /// An API call; returns the status code and the JSON body (`Null` when
    /// the body is empty or not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, Value) {
        let (status, body) = http_request(self.web, method, path, content_type, body.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A GET that must answer 200.
    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, "application/json", "").await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A call that must answer `expected`; returns the JSON body.
    pub async fn expect(
        &self,
        expected: u16,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Value {
        let (status, answer) = self.call(method, path, content_type, body).await;
        assert_eq!(status, expected, "{method} {path} {body:?}: {answer}");
        answer
    }

    /// PUTs `body` (YAML) as file `file` of `uid`'s remote config through
    /// the API; returns the config hash the server computed.
    pub async fn put_config(&self, uid: &str, file: &str, body: &str) -> String {
        let path = format!("/api/agents/{uid}/config?file={file}");
        let reply = self.expect(202, "PUT", &path, "text/yaml", body).await;
        reply["config_hash"]
            .as_str()
            .expect("config_hash")
            .to_owned()
    }

    /// `POST /api/agents/{uid}/{action}` with `{}` (restart,
    /// rotate-certificate), which must be accepted (202).
    pub async fn agent_action(&self, uid: &str, action: &str) -> Value {
        let path = format!("/api/agents/{uid}/{action}");
        self.expect(202, "POST", &path, "application/json", "{}")
            .await
    }

    /// `GET /api/agents/{uid}`; `None` while the server does not know it.
    pub async fn agent(&self, uid: &str) -> Option<Value> {
        let (status, body) = self
            .call("GET", &format!("/api/agents/{uid}"), "application/json", "")
            .await;
        match status {
            200 => Some(body),
            404 => None,
            _ => panic!("GET /api/agents/{uid}: {status} {body}"),
        }
    }

    /// Re-reads `GET /api/agents/{uid}` until `check` accepts it; fails the
    /// test after `patience` with the last answer.
    pub async fn wait_agent_within(
        &self,
        uid: &str,
        what: &str,
        patience: Duration,
        mut check: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + patience;
        let mut last = None;
        loop {
            if let Some(agent) = self.agent(uid).await {
                if check(&agent) {
                    return agent;
                }
                last = Some(agent);
            }
            if Instant::now() >= deadline {
                let last = last.map(|agent| summary(&agent));
                panic!("agent {uid}: no {what} within {patience:?}; last seen: {last:#?}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits (up to `patience`) until `uid` is connected and healthy, has
    /// reported its available components, and `effective` accepts it (its
    /// effective config); returns the agent.
    pub async fn wait_registered(
        &self,
        uid: &str,
        patience: Duration,
        mut effective: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.wait_agent_within(
            uid,
            "healthy, with effective config and components",
            patience,
            |agent| {
                agent["connected"] == true
                    && agent["health"]["healthy"] == true
                    && effective(agent)
                    && !agent["available_components"].is_null()
            },
        )
        .await
    }

    /// [`wait_agent_within`](Self::wait_agent_within) with [`TIMEOUT`].
    pub async fn wait_agent(
        &self,
        uid: &str,
        what: &str,
        check: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.wait_agent_within(uid, what, TIMEOUT, check).await
    }
}

/// The parts of an agent's record worth printing when a wait fails.
fn summary(agent: &Value) -> Value {
    let mut summary = serde_json::Map::new();
    for key in [
        "connected",
        "transport",
        "capabilities",
        "health",
        "remote_config_status",
        "desired_config",
        "heartbeat_interval_seconds",
        "sequence_num",
    ] {
        summary.insert(key.to_owned(), agent[key].clone());
    }
    let events: Vec<Value> = agent["events"]
        .as_array()
        .map(|events| events.iter().take(20).cloned().collect())
        .unwrap_or_default();
    summary.insert("events (newest first)".to_owned(), Value::Array(events));
    Value::Object(summary)
}

impl Drop for FleetServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            dump("fleet server", &self.output, &[]);
        }
    }
}

fn address_after(line: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = line.split(&format!("{scheme}://")).nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// Lines of a process's output written to a failing test's output.
const MAX_DUMPED_LINES: usize = 200;

/// Writes the last lines of `output` (and of each `(name, text)` extra) to
/// stderr.
pub(crate) fn dump(name: &str, output: &Mutex<Vec<String>>, extras: &[(String, String)]) {
    let output = output
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let skip = output.len().saturating_sub(MAX_DUMPED_LINES);
    eprintln!(
        "--- {name} output ({} lines, {skip} skipped) ---\n{}\n--- end of {name} output ---",
        output.len(),
        output[skip..].join("\n")
    );
    for (extra, text) in extras {
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(MAX_DUMPED_LINES);
        eprintln!(
            "--- {extra} ({} lines, {skip} skipped) ---\n{}\n--- end of {extra} ---",
            lines.len(),
            lines[skip..].join("\n")
        );
    }
}

/// Starts `command` (running `program`) with `stdin` and stdout and stderr
/// piped, killed when dropped.
pub(crate) fn spawn_piped(command: &mut Command, program: &Path, stdin: Stdio) -> Child {
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("starting {}: {error}", program.display()))
}

/// Appends every line of `stream` to `output`.
pub(crate) async fn collect_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    output: Arc<Mutex<Vec<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(line);
    }
}

/// A one-shot HTTP/1.1 request (`Connection: close`) to a loopback server;
/// returns the status code and the body. Enough for the fleet server's API
/// and for poking a Collector's OTLP receiver; not a general client (no
/// chunked bodies).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(invalid("chunked responses are not supported here"));
    }
    Ok((status, response[split + 4..].to_vec()))
}

/// Whether the fleet API's `agent` lists the capability `name`.
pub fn has_capability(agent: &Value, name: &str) -> bool {
    agent["capabilities"]
        .as_array()
        .is_some_and(|capabilities| capabilities.iter().any(|capability| capability == name))
}

/// Asserts attributes of the fleet API's `agent` description: each of
/// `expected` is (`"identifying"` or `"non_identifying"`, key, value).
pub fn assert_description(agent: &Value, expected: &[(&str, &str, Value)]) {
    let description = &agent["description"];
    for (part, key, value) in expected {
        assert_eq!(
            &description[part][key], value,
            "{part} {key}: {description}"
        );
    }
}

/// Asserts that the fleet API's `agent` lists every capability of `names`.
pub fn assert_capabilities(agent: &Value, names: &[&str]) {
    for name in names {
        assert!(
            has_capability(agent, name),
            "{name} missing: {}",
            agent["capabilities"]
        );
    }
}

/// Asserts that the fleet API's `agent` reports the component `name` of
/// `kind` (`receivers`, `exporters`, ...) among its available components.
pub fn assert_available_component(agent: &Value, kind: &str, name: &str) {
    let components = &agent["available_components"];
    assert!(
        components[kind]["components"].get(name).is_some(),
        "{kind} {name} not available: {components}"
    );
}

/// Every file of the agent's effective config (fleet API JSON), joined.
pub fn effective_body(agent: &Value) -> String {
    agent["effective_config"]["bodies"]
        .as_object()
        .map(|files| {
            files
                .values()
                .filter_map(|file| file["body"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Connections recorded after `since` (an event's `at`). The server may
/// fold a repeated connection event into one entry with a `repeats` count
/// and the latest time; those repeats count too.
pub fn connected_events_after(agent: &Value, since: &str) -> u64 {
    agent["events"].as_array().map_or(0, |events| {
        events
            .iter()
            .filter(|event| event["kind"] == "connected")
            .filter(|event| event["at"].as_str().is_some_and(|at| at > since))
            .map(|event| 1 + event["repeats"].as_u64().unwrap_or(0))
            .sum()
    })
}

/// The newest event's timestamp (events are newest first), or "" if none.
pub fn latest_event_time(agent: &Value) -> String {
    agent["events"][0]["at"].as_str().unwrap_or("").to_owned()
}
