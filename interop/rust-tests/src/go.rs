//! Building and running the opamp-go programs `goagent` and `goserver`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use opamp_testkit::{Inbox, TIMEOUT, skip_or_fail};

use crate::fleet::spawn_piped;

/// Paths of the built Go programs.
#[derive(Debug, Clone)]
pub struct GoPrograms {
    /// `goagent`: an OpAMP agent on opamp-go's client.
    pub agent: PathBuf,
    /// `goserver`: an OpAMP server on opamp-go's server.
    pub server: PathBuf,
}

/// Builds `goagent` and `goserver` once per test process (with
/// `interop/build.sh`) and returns their paths.
///
/// `None` means "skip this test": Go is missing or the build failed (for
/// example because the Go module proxy cannot be reached), and a notice was
/// printed. When the environment variable `CI` is set (and not `false` or
/// `0`) the same situation panics instead, with the reason: CI must never
/// skip the interop tests silently.
///
/// The programs are built into a scratch directory next to the test
/// binaries and then renamed into `<target>/<profile>/opamp-interop-go/`:
/// a rename replaces a file atomically, so test processes running at the
/// same time never see a half-written program.
pub fn go_programs() -> Option<&'static GoPrograms> {
    static PROGRAMS: OnceLock<Result<GoPrograms, String>> = OnceLock::new();
    match PROGRAMS.get_or_init(build) {
        Ok(programs) => Some(programs),
        Err(reason) => skip_or_fail("the opamp-go interop tests", reason),
    }
}

fn output_dir() -> PathBuf {
    // Test binaries live in <target>/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("opamp-interop-go")))
        .unwrap_or_else(|| std::env::temp_dir().join("opamp-interop-go"))
}

fn build() -> Result<GoPrograms, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build.sh");
    let out = output_dir();
    std::fs::create_dir_all(&out)
        .map_err(|error| format!("creating {}: {error}", out.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&out)
        .map_err(|error| format!("creating a build directory in {}: {error}", out.display()))?;
    run_build_script(&script, Some(scratch.path()), "Go 1.24")?;
    let place = |name: &str| -> Result<PathBuf, String> {
        let target = out.join(name);
        std::fs::rename(scratch.path().join(name), &target)
            .map_err(|error| format!("installing {name} into {}: {error}", out.display()))?;
        Ok(target)
    };
    Ok(GoPrograms {
        agent: place("goagent")?,
        server: place("goserver")?,
    })
}

/// One running Go program: commands go to its stdin, events (one JSON
/// object per line) come from its stdout.
///
/// Killed when dropped. If the test is failing at that point, everything
/// the program printed (stdout and stderr) is written to the test's output.
#[derive(Debug)]
pub struct GoProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Inbox<Value>,
    output: Arc<Mutex<Vec<String>>>,
    next_id: u64,
}

impl GoProcess {
    /// Starts `program` with `args`. Must be called inside a tokio runtime.
    pub fn spawn(program: &Path, args: &[String]) -> Self {
        let name = program.file_name().map_or_else(
            || "go program".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        let mut child = spawn_piped(
            tokio::process::Command::new(program).args(args),
            program,
            Stdio::piped(),
        );
        let output = Arc::new(Mutex::new(vec![format!("$ {name} {}", args.join(" "))]));
        let (tx, events) = Inbox::new(name.clone());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(read_lines(stdout, Arc::clone(&output), Some(tx)));
        tokio::spawn(read_lines(stderr, Arc::clone(&output), None));
        Self {
            name,
            stdin: child.stdin.take(),
            child,
            events,
            output,
            next_id: 0,
        }
    }

    /// Starts `goagent` with `args`.
    pub fn goagent(programs: &GoPrograms, args: &[String]) -> Self {
        Self::spawn(&programs.agent, args)
    }

    /// Starts `goserver` on 127.0.0.1 port 0 (plus `args`) and returns it
    /// with its `listening` event (`ws_url`, `http_url`, ...).
    pub async fn goserver(programs: &GoPrograms, args: &[String]) -> (Self, Value) {
        let mut all = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
        all.extend_from_slice(args);
        let mut server = Self::spawn(&programs.server, &all);
        let listening = server.wait_event("listening").await;
        (server, listening)
    }

    /// Sends a command (`{"cmd": ...}`), gives it an id and returns its
    /// `ack`; fails the test if the program answers with `error`.
    pub async fn command(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = format!("rs-{}", self.next_id);
        command["id"] = json!(id);
        let mut line = command.to_string();
        line.push('\n');
        let stdin = self.stdin.as_mut().expect("stdin is open until stop");
        if let Err(error) = stdin.write_all(line.as_bytes()).await {
            panic!("{}: writing command {command}: {error}", self.name);
        }
        let answer = self
            .wait_for(&format!("answer to {command}"), |event| {
                matches!(event["event"].as_str(), Some("ack" | "error")) && event["id"] == json!(id)
            })
            .await;
        assert_eq!(
            answer["event"], "ack",
            "{}: command {command} failed: {answer}",
            self.name
        );
        answer
    }

    /// Sends `command` as [`command`](Self::command) does and returns the
    /// string `field` of its `ack` (an offer's `hash`, for example).
    pub async fn command_str(&mut self, command: Value, field: &str) -> String {
        let ack = self.command(command).await;
        ack[field]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no {field} in {ack}", self.name))
            .to_owned()
    }

    /// goserver: the earliest unconsumed `message` event from the agent
    /// `uid` that matches `matches`.
    pub async fn wait_message(
        &mut self,
        what: &str,
        uid: &str,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.wait_for(what, |event| {
            event["event"] == "message" && event["uid"] == uid && matches(event)
        })
        .await
    }

    /// The earliest unconsumed event matching `matches`. Fails the test on a
    /// `fatal` event, when the program exits, or after [`TIMEOUT`].
    pub async fn wait_for(&mut self, what: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
        let event = self
            .events
            .wait_for(what, |event| event["event"] == "fatal" || matches(event))
            .await;
        assert_ne!(event["event"], "fatal", "{} failed: {event}", self.name);
        event
    }

    /// The earliest unconsumed event named `name`.
    pub async fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(name, |event| event["event"] == name).await
    }

    /// Every event received so far that no wait consumed.
    pub fn drain(&mut self) -> Vec<Value> {
        self.events.drain()
    }

    /// Asks the program to stop (`{"cmd":"stop"}`, then end of input) and
    /// waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"{\"cmd\":\"stop\"}\n").await;
            drop(stdin);
        }
        match tokio::time::timeout(TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => assert!(status.success(), "{} exited with {status}", self.name),
            Ok(Err(error)) => panic!("{}: waiting for exit: {error}", self.name),
            Err(_) => panic!("{} did not stop within {TIMEOUT:?}", self.name),
        }
    }
}

/// Lines of a failed test's program output written to the test's output.
const MAX_DUMPED_LINES: usize = 150;

impl Drop for GoProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self
                .output
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // The command line, then the last lines (heartbeats add up).
            let skip = output.len().saturating_sub(MAX_DUMPED_LINES).max(1);
            eprintln!(
                "--- {} output ({} lines, {} skipped) ---\n{}\n{}\n--- end of {} output ---",
                self.name,
                output.len(),
                skip - 1,
                output[0],
                output[skip..].join("\n"),
                self.name
            );
        }
    }
}

async fn read_lines(
    stream: impl AsyncRead + Unpin,
    output: Arc<Mutex<Vec<String>>>,
    events: Option<mpsc::UnboundedSender<Value>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let event = events.as_ref().map(|_| {
            serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|_| json!({"event": "unparsable", "line": line}))
        });
        output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(if events.is_some() {
                line
            } else {
                format!("stderr: {line}")
            });
        if let (Some(tx), Some(event)) = (&events, event) {
            let _ = tx.send(event);
        }
    }
}

/// Runs a Go build script (`bash script [arg]`) and returns what it printed
/// on stdout; the error says how to fix the usual causes (no `go`, needing
/// `go_version` or newer; no module proxy).
pub(crate) fn run_build_script(
    script: &Path,
    arg: Option<&Path>,
    go_version: &str,
) -> Result<String, String> {
    let output = Command::new("bash")
        .arg(script)
        .args(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("running {}: {error}", script.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(match output.status.code() {
            Some(127) => format!("`go` is not on PATH; install {go_version} or newer"),
            _ => format!(
                "{} failed ({}); if the Go modules are not cached, is the Go module proxy \
                 reachable? It said:\n{}",
                script.display(),
                output.status,
                stderr.trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
