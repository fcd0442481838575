//! The server under test, when loadgen starts it itself (`--server-cmd`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::args::LoadArgs;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// JSON events kept from the server's stdout; everything else is read and
/// dropped so the server never blocks on a full pipe.
const KEPT_EVENTS: [&str; 4] = ["ack", "error", "fatal", "listening"];

/// A server process started with `sh -c "exec CMD"` (so the pid is the
/// server's own), killed when dropped.
pub(crate) struct ServerProcess {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    next_id: u64,
}

/// Starts `sh -c "exec COMMAND"` (so the pid is the command's own) with
/// `stdin` and `stdout` as given and stderr inherited, killed when dropped.
pub(crate) fn spawn_shell(command: &str, stdin: Stdio, stdout: Stdio) -> Result<Child, String> {
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("starting {command:?}: {error}"))
}

impl ServerProcess {
    /// The server of `--server-cmd`, started and listening on `target`;
    /// `None` without the flag.
    pub(crate) async fn start_if_given(
        args: &LoadArgs,
        target: SocketAddr,
    ) -> Result<Option<Self>, String> {
        let Some(command) = &args.server_cmd else {
            return Ok(None);
        };
        let mut server = Self::spawn(command)?;
        server.wait_ready(target, args.server_ready_timeout).await?;
        Ok(Some(server))
    }

    pub(crate) fn spawn(command: &str) -> Result<Self, String> {
        let mut child = spawn_shell(command, Stdio::piped(), Stdio::piped())?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stdin = child.stdin.take();
        let (sender, events) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(event) = kept_event(&line) else {
                    continue;
                };
                // A full channel means nobody is listening: drop the event.
                let _ = sender.try_send(event);
            }
        });
        Ok(Self {
            command: command.to_owned(),
            child,
            stdin,
            events,
            next_id: 0,
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until `address` accepts TCP connections.
    pub(crate) async fn wait_ready(
        &mut self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{:?} exited early: {status}", self.command));
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{address} not accepting after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one JSON command line (the interop servers' protocol) and waits
    /// for its `ack` or `error`.
    pub(crate) async fn command(
        &mut self,
        mut command: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = format!("loadgen-{}", self.next_id);
        command["id"] = Value::String(id.clone());
        let stdin = self.stdin.as_mut().ok_or("server stdin is closed")?;
        let mut line = command.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|error| format!("writing to server stdin: {error}"))?;
        stdin.flush().await.map_err(|error| error.to_string())?;
        let deadline = Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| format!("no answer to {id} within {timeout:?}"))?
                .ok_or("server stdout closed")?;
            if event.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                continue;
            }
            return match event.get("event").and_then(Value::as_str) {
                Some("ack") => Ok(event),
                _ => Err(format!("server refused the command: {event}")),
            };
        }
    }

    /// SIGKILL and reap: a crash, as far as agents can tell.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the same command again.
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        *self = Self::spawn(&self.command)?;
        Ok(())
    }

    /// Asks the server to stop (stdin closed, SIGTERM), then kills it if it
    /// is still running after `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        self.stdin = None;
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

/// Parses a stdout line as a JSON event worth keeping.
fn kept_event(line: &str) -> Option<Value> {
    if !line.starts_with('{') {
        return None;
    }
    let event: Value = serde_json::from_str(line).ok()?;
    let name = event.get("event")?.as_str()?;
    KEPT_EVENTS.contains(&name).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_protocol_answers_are_kept() {
        assert!(kept_event(r#"{"event":"ack","id":"loadgen-1","hash":"ab"}"#).is_some());
        assert!(kept_event(r#"{"event":"message","uid":"x"}"#).is_none());
        assert!(kept_event("OpAMP endpoint: ws://127.0.0.1:4320/v1/opamp").is_none());
        assert!(kept_event("{broken").is_none());
    }

    #[tokio::test]
    async fn commands_are_answered_by_id() {
        // A stand-in server: acks the command it reads, after an unrelated line.
        let command = r#"sh -c "read line; echo '{\"event\":\"message\"}'; echo '{\"event\":\"ack\",\"id\":\"loadgen-1\"}'; read rest""#;
        let mut server = ServerProcess::spawn(command).unwrap();
        let ack = server
            .command(
                serde_json::json!({"cmd": "offer_remote_config"}),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(ack["event"], "ack");
        server.stop(Duration::from_secs(5)).await;
    }
}
