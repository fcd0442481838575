//! Child processes for tests: output captured line by line, waits for a
//! log line or a listening port, killed on drop (with the output dumped
//! when the test is failing).

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::timeout::{Inbox, within};

/// Lines of a failed test's program output written to the test's output.
const MAX_DUMPED_LINES: usize = 150;

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a child printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Where it came from.
    pub stream: Stream,
    /// The line, without its end.
    pub text: String,
}

/// A running child process. Its stdout and stderr are read line by line
/// into [`lines`](Self::lines) and a log; stdin is piped. Killed when
/// dropped; if the test is failing then, the last lines of its output are
/// written to the test's output.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    /// The child's stdin, until closed.
    pub stdin: Option<ChildStdin>,
    /// Every output line, for waits.
    pub lines: Inbox<OutputLine>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ChildProcess {
    /// Starts `command` (stdin, stdout and stderr piped, killed on drop),
    /// named `name` in failure messages. Must be called inside a tokio
    /// runtime.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Self {
        let name = name.into();
        let line = format!("$ {:?}", command.as_std());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name}: {error}"));
        let log = Arc::new(Mutex::new(vec![line]));
        let (tx, lines) = Inbox::new(name.clone());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(forward_lines(
            stdout,
            Stream::Stdout,
            Arc::clone(&log),
            tx.clone(),
        ));
        tokio::spawn(forward_lines(stderr, Stream::Stderr, Arc::clone(&log), tx));
        Self {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            log,
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The earliest unconsumed output line (either stream) matching
    /// `matches`; fails the test after the kit's timeout or at the end of
    /// the output.
    pub async fn wait_for_line(
        &mut self,
        what: &str,
        mut matches: impl FnMut(&str) -> bool,
    ) -> String {
        self.lines
            .wait_for(what, |line| matches(&line.text))
            .await
            .text
    }

    /// Everything it printed so far, both streams, in arrival order.
    pub fn output(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits for the process to exit on its own; fails the test after the
    /// kit's timeout.
    pub async fn wait(&mut self) -> ExitStatus {
        let name = self.name.clone();
        within(&format!("{name} to exit"), self.child.wait())
            .await
            .unwrap_or_else(|error| panic!("{name}: waiting for exit: {error}"))
    }

    /// Sends SIGINT (with the `kill` program) and waits for the exit.
    pub async fn interrupt(&mut self) -> ExitStatus {
        self.signal("INT").await;
        self.wait().await
    }

    /// Sends the signal `name` (`"TERM"`, `"HUP"`, ...) with the `kill`
    /// program.
    pub async fn signal(&mut self, name: &str) {
        let pid = self
            .child
            .id()
            .unwrap_or_else(|| panic!("{} already exited", self.name));
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("running kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Kills the process and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The underlying tokio child.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            dump_output(&self.name, &self.output());
        }
    }
}

/// Writes the command line and the last lines of `output` to stderr (the
/// test's output), framed by `name`.
pub fn dump_output(name: &str, output: &[String]) {
    let skip = output.len().saturating_sub(MAX_DUMPED_LINES);
    eprintln!(
        "--- {name} output ({} lines, {skip} skipped) ---\n{}\n--- end of {name} output ---",
        output.len(),
        output[skip..].join("\n")
    );
}

async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    source: Stream,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::UnboundedSender<OutputLine>,
) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(text)) = reader.next_line().await {
        log.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(match source {
                Stream::Stdout => text.clone(),
                Stream::Stderr => format!("stderr: {text}"),
            });
        let _ = lines.send(OutputLine {
            stream: source,
            text,
        });
    }
}

/// Waits until something accepts TCP connections on `addr`; fails the
/// test after the kit's timeout.
pub async fn wait_for_port(addr: SocketAddr) {
    within(&format!("a listener on {addr}"), async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A loopback port that was free a moment ago, for programs that cannot
/// be told to bind port 0 and report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}
