//! A fake supervised agent for the supervisor tests: a bash script that
//! connects back to the test over TCP when it starts, tells its pid and its
//! config, says which stop signal it got, and stays up until it is stopped
//! or the test closes the connection. A config starting with `crash`
//! makes it write a few lines to stderr and exit with status 2 before it
//! connects.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::PATIENCE;

/// The stderr lines a child writes before crashing on a `crash` config.
pub const CRASH_LINES: [&str; 3] = [
    "loading the config",
    "error: pipeline \"traces\" has no receivers",
    "fatal: cannot start with this config",
];

/// Where a supervised child lives: a temporary directory for the agent and
/// its scripts, and the listener the child reports to (on `port`).
pub struct ChildHome {
    pub dir: tempfile::TempDir,
    pub reports: TcpListener,
    pub port: u16,
}

impl ChildHome {
    pub async fn new() -> Self {
        let reports = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = reports.local_addr().unwrap().port();
        Self {
            dir: tempfile::tempdir().unwrap(),
            reports,
            port,
        }
    }
}

/// Writes the script to `dir/name` and returns its path; it reports to
/// `port`.
pub fn write_child(dir: &Path, name: &str, port: u16) -> PathBuf {
    let [first, second, third] = CRASH_LINES;
    let script = format!(
        r#"#!/bin/bash
if grep -q '^crash' "$1"; then
  echo '{first}' >&2
  echo '{second}' >&2
  echo '{third}' >&2
  exit 2
fi
exec 3<>/dev/tcp/127.0.0.1/{port}
# The background reader must not outlive the script, or it would keep the
# connection open: the stop signal may reach it while it is being forked,
# before it drops the trap it inherits, so it is killed explicitly.
stop() {{ echo "signal $1" >&3; kill $(jobs -p) 2>/dev/null; exit 0; }}
trap 'stop TERM' TERM
trap 'stop INT' INT
# Reads in the background: a trapped signal ends `wait` at once, while it
# would wait for a foreground `read` to finish. Started before the report,
# so that it exists when the test reacts to the report.
read -r -u 3 _ &
reader=$!
printf '%s %s\n' "$$" "$(tr '\n' ' ' < "$1")" >&3
wait "$reader"
"#
    );
    let path = dir.join(name);
    write_executable(&path, &script);
    path
}

/// Writes an executable script.
pub fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Accepts the next child's connection and reads the line it reports
/// first; the connection stays open until the child exits.
pub async fn accept_report(reports: &TcpListener) -> (BufReader<TcpStream>, String) {
    let (stream, _) = tokio::time::timeout(PATIENCE, reports.accept())
        .await
        .expect("no child started")
        .unwrap();
    let mut connection = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, connection.read_line(&mut line))
        .await
        .expect("the child did not report")
        .unwrap();
    (connection, line)
}

/// One start of the child, as it reported itself.
pub struct ChildStart {
    pub pid: String,
    /// Its config file's lines, joined by spaces.
    pub config: String,
    /// Open until the child exits; dropping it makes the child exit.
    connection: BufReader<TcpStream>,
}

/// Waits for the next child to start and report.
pub async fn next_child(reports: &TcpListener) -> ChildStart {
    let (connection, line) = accept_report(reports).await;
    let (pid, config) = line.trim_end().split_once(' ').unwrap_or((line.trim(), ""));
    ChildStart {
        pid: pid.to_owned(),
        config: config.trim().to_owned(),
        connection,
    }
}

impl ChildStart {
    /// Waits until the child exits; returns what it said before (such as
    /// `signal TERM`), one line per entry.
    pub async fn exited(mut self) -> Vec<String> {
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PATIENCE, self.connection.read_line(&mut line))
                .await
                .expect("child still running")
                .unwrap();
            if read == 0 {
                return said;
            }
            said.push(line.trim_end().to_owned());
        }
    }
}
