//! Client-side measurements (`--opamp-clients`, `--clients-cmd`): what
//! an OpAMP *client* costs at fleet size, measured in the process that runs
//! the clients.
//!
//! - `--opamp-clients`: every agent is a real [`OpampClient`] (WebSocket or
//!   plain HTTP by the URL's scheme) in this process.
//! - `--clients-cmd CMD`: another process runs the clients (the example
//!   agent's `--count N`); it is started with `sh -c "exec CMD"` and its
//!   established TCP connections to the server's port are counted from
//!   `/proc`.
//!
//! Either way the report is one JSON line with a `clients` object: RSS per
//! idle client over the baseline, CPU time per heartbeat in the steady
//! window, and the connect rate. `interop/cmd/goclients` writes the same
//! object for opamp-go's client.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opamp_client::{AgentCapabilities, AgentDescription, Callbacks, OpampClient, TransportError};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::time::Instant;

use super::agent::agent_uid;
use super::args::{AgentTransport, LoadArgs};
use super::histogram::LatencyHistogram;
use super::procfs::ProcSample;
use super::report::{errors_json, latency_json, mib, round2};
use super::server::{ServerProcess, spawn_shell};
use super::{resolve, run_header, self_sample, server_sample, unix_millis};

/// Connection counts shared by every in-process client's callbacks.
struct ClientCounters {
    connected: AtomicUsize,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    connect_latency: LatencyHistogram,
}

/// Callbacks of one in-process client: count connects, nothing else.
struct Counting {
    counters: Arc<ClientCounters>,
    started: Instant,
    connected: AtomicBool,
}

impl Callbacks for Counting {
    fn on_connect(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            let counters = &self.counters;
            counters.connected.fetch_add(1, Ordering::Relaxed);
            counters.connects.fetch_add(1, Ordering::Relaxed);
            // Timed from the client's start (a reconnect's time includes
            // the earlier connection's life; the ramp only sees first ones).
            counters.connect_latency.record(self.started.elapsed());
        }
    }

    fn on_connect_failed(&self, _error: &TransportError) {
        self.counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        if self.connected.swap(false, Ordering::Relaxed) {
            self.counters.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whichever process runs the clients.
enum Runner {
    InProcess {
        clients: Vec<OpampClient>,
        counters: Arc<ClientCounters>,
    },
    External {
        child: Child,
        pid: u32,
        port: u16,
    },
}

impl Runner {
    fn pid(&self) -> Option<u32> {
        match self {
            Self::InProcess { .. } => Some(std::process::id()),
            Self::External { pid, .. } => Some(*pid),
        }
    }

    fn connected(&self) -> usize {
        match self {
            Self::InProcess { counters, .. } => counters.connected.load(Ordering::Relaxed),
            Self::External { pid, port, .. } => established_to(*pid, *port),
        }
    }

    fn sample(&self) -> Option<ProcSample> {
        self.pid().and_then(ProcSample::read)
    }
}

/// The capabilities every measured client announces, the same set as
/// `interop/cmd/goclients`.
fn capabilities() -> AgentCapabilities {
    AgentCapabilities::REPORTS_STATUS
        | AgentCapabilities::REPORTS_HEARTBEAT
        | AgentCapabilities::REPORTS_HEALTH
}

/// Runs the client measurement and returns its report.
pub(crate) async fn run(args: &LoadArgs, open_files: usize) -> Result<Value, String> {
    let transport = args.transport()?;
    if args.heartbeat.is_zero() {
        return Err("client measurements need a heartbeat interval above 0".into());
    }
    let target = resolve(&args.url).await?;
    let mut server = ServerProcess::start_if_given(args, target).await?;
    let run_millis = unix_millis();
    let started = Instant::now();
    let (mut runner, baseline) = match &args.clients_cmd {
        Some(command) => {
            let child = spawn_shell(command, Stdio::null(), Stdio::null())?;
            let pid = child.id().ok_or("the client process exited at once")?;
            let runner = Runner::External {
                child,
                pid,
                port: target.port(),
            };
            // Baseline: the process as its first connection is made (its
            // runtime and shared setup are up by then).
            let deadline = started + args.ramp_timeout;
            while runner.connected() == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let baseline = runner.sample();
            (runner, baseline)
        }
        None => {
            let baseline = self_sample();
            let counters = Arc::new(ClientCounters {
                connected: AtomicUsize::new(0),
                connects: AtomicU64::new(0),
                connect_failures: AtomicU64::new(0),
                connect_latency: LatencyHistogram::new(),
            });
            let mut clients = Vec::with_capacity(args.agents);
            for index in 0..args.agents {
                let due = started + Duration::from_secs_f64(index as f64 / args.ramp_rate);
                tokio::time::sleep_until(due).await;
                let client = build_client(args, transport, run_millis, index, &counters)?;
                client
                    .start()
                    .await
                    .map_err(|error| format!("starting client {index}: {error}"))?;
                clients.push(client);
            }
            (Runner::InProcess { clients, counters }, baseline)
        }
    };

    // ---- ramp: until every client is connected ----
    let deadline = Instant::now() + args.ramp_timeout;
    while runner.connected() < args.agents && Instant::now() < deadline {
        if let Runner::External { child, .. } = &mut runner {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the client process exited: {status}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected_after = started.elapsed();
    let connected = runner.connected();
    let (connect, errors) = match &runner {
        Runner::InProcess { counters, .. } => {
            let mut errors = std::collections::BTreeMap::new();
            let failures = counters.connect_failures.load(Ordering::Relaxed);
            if failures > 0 {
                errors.insert("connect_failed", failures);
            }
            (
                latency_json(&counters.connect_latency.take()),
                errors_json(&errors),
            )
        }
        Runner::External { .. } => (Value::Null, json!({})),
    };

    // ---- idle memory ----
    tokio::time::sleep(args.settle).await;
    let idle = runner.sample();
    let idle_connected = runner.connected();
    let server_idle = server_sample(server.as_ref(), args.server_pid, &args.also_server_pids);

    // ---- steady window: CPU per heartbeat ----
    let before = runner.sample();
    tokio::time::sleep(args.duration).await;
    let after = runner.sample();
    let steady_connected = runner.connected();
    let clients = clients_json(&ClientMeasures {
        heartbeat: args.heartbeat,
        connected,
        connected_after,
        baseline,
        idle,
        idle_connected,
        before,
        after,
        steady_connected,
    });

    // ---- stop ----
    match runner {
        Runner::InProcess { clients, .. } => {
            let stops = futures_util::future::join_all(clients.iter().map(OpampClient::stop));
            if tokio::time::timeout(Duration::from_secs(30), stops)
                .await
                .is_err()
            {
                eprintln!("loadgen: some clients did not stop within 30 s");
            }
        }
        Runner::External { mut child, pid, .. } => {
            stop_child(&mut child, pid).await;
        }
    }
    if let Some(server) = &mut server {
        server.stop(Duration::from_secs(10)).await;
    }

    let implementation = if args.clients_cmd.is_some() {
        "command"
    } else {
        "opamp-client"
    };
    let mut report = run_header(args, transport, open_files);
    let Value::Object(rest) = json!({
        "client_impl": implementation,
        "ramp": {
            "connected": connected,
            "seconds": round2(connected_after.as_secs_f64()),
            "connect": connect,
            "errors": errors,
        },
        "clients": clients,
        "steady": {
            "server_rss_mib": server_idle.map(|sample| mib(sample.rss_bytes)),
        },
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    report.extend(rest);
    Ok(Value::Object(report))
}

fn build_client(
    args: &LoadArgs,
    transport: AgentTransport,
    run_millis: u64,
    index: usize,
    counters: &Arc<ClientCounters>,
) -> Result<OpampClient, String> {
    let mut builder = OpampClient::builder(args.url.as_str())
        .instance_uid(agent_uid(run_millis, index))
        .agent_description(AgentDescription::for_service("loadgen-client", "1.0.0"))
        .capabilities(capabilities())
        .heartbeat_interval(args.heartbeat)
        .connect_timeout(args.connect_timeout)
        .request_timeout(args.reply_timeout)
        .callbacks(Counting {
            counters: Arc::clone(counters),
            started: Instant::now(),
            connected: AtomicBool::new(false),
        });
    if transport == AgentTransport::Http {
        builder = builder.polling_interval(args.heartbeat);
    }
    let client = builder
        .build()
        .map_err(|error| format!("building client {index}: {error}"))?;
    client.set_health(opamp_client::ComponentHealth {
        healthy: true,
        status: "running".into(),
        ..Default::default()
    });
    Ok(client)
}

/// SIGTERM (the example agent says goodbye on it), then SIGKILL after 30 s.
async fn stop_child(child: &mut Child, pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// What [`clients_json`] reports from.
struct ClientMeasures {
    heartbeat: Duration,
    connected: usize,
    connected_after: Duration,
    baseline: Option<ProcSample>,
    idle: Option<ProcSample>,
    idle_connected: usize,
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    steady_connected: usize,
}

/// The `clients` object: RSS per idle client over the baseline, CPU per
/// heartbeat (process CPU time in the window ÷ the heartbeats due in it),
/// connect rate.
fn clients_json(measures: &ClientMeasures) -> Value {
    let baseline = measures.baseline.map(|sample| sample.rss_bytes);
    let idle = measures.idle.map(|sample| sample.rss_bytes);
    let kib_per_client = match (baseline, idle) {
        (Some(base), Some(idle)) if measures.idle_connected > 0 => Some(round2(
            idle.saturating_sub(base) as f64 / 1024.0 / measures.idle_connected as f64,
        )),
        _ => None,
    };
    let (cpu_us_per_heartbeat, cpu_percent, heartbeats) = match (measures.before, measures.after) {
        (Some(before), Some(after)) => {
            let window = after.at.saturating_duration_since(before.at);
            let heartbeats = measures.steady_connected as f64 * window.as_secs_f64()
                / measures.heartbeat.as_secs_f64();
            let cpu = after.cpu.saturating_sub(before.cpu);
            (
                (heartbeats >= 1.0).then(|| round2(cpu.as_secs_f64() * 1e6 / heartbeats)),
                Some(round2(after.cpu_percent_since(&before))),
                Some(heartbeats.round()),
            )
        }
        _ => (None, None, None),
    };
    let seconds = measures.connected_after.as_secs_f64();
    json!({
        "connected": measures.idle_connected,
        "baseline_mib": baseline.map(mib),
        "idle_rss_mib": idle.map(mib),
        "kib_per_client": kib_per_client,
        "total_kib_per_client": idle
            .filter(|_| measures.idle_connected > 0)
            .map(|idle| round2(idle as f64 / 1024.0 / measures.idle_connected as f64)),
        "threads": measures.idle.map(|sample| sample.threads),
        "connects_per_s": (seconds > 0.0).then(|| round2(measures.connected as f64 / seconds)),
        "heartbeats": heartbeats,
        "cpu_percent": cpu_percent,
        "cpu_us_per_heartbeat": cpu_us_per_heartbeat,
    })
}

/// Established TCP connections of process `pid` to remote port `port`: the
/// process's socket inodes matched against `/proc/<pid>/net/tcp{,6}`.
fn established_to(pid: u32, port: u16) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<u64> = entries
        .filter_map(|entry| {
            let link = std::fs::read_link(entry.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .map(|text| count_established(&text, port, &inodes))
        .sum()
}

/// Rows of a `/proc/net/tcp` table in state ESTABLISHED (`01`) to remote
/// `port` whose inode is one of `inodes`.
fn count_established(table: &str, port: u16, inodes: &HashSet<u64>) -> usize {
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[2].ends_with(&port)
                && fields[3] == "01"
                && fields[9]
                    .parse::<u64>()
                    .is_ok_and(|inode| inodes.contains(&inode))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rss_mib: u64, cpu_ms: u64, at: std::time::Instant) -> ProcSample {
        ProcSample {
            at,
            rss_bytes: rss_mib * 1024 * 1024,
            cpu: Duration::from_millis(cpu_ms),
            threads: 3,
        }
    }

    #[test]
    fn per_client_memory_and_cpu_per_heartbeat() {
        let start = std::time::Instant::now();
        let measures = ClientMeasures {
            heartbeat: Duration::from_secs(10),
            connected: 1000,
            connected_after: Duration::from_secs(2),
            baseline: Some(sample(10, 0, start)),
            // 1000 clients: +20 MiB → 20.48 KiB each.
            idle: Some(sample(30, 0, start)),
            idle_connected: 1000,
            before: Some(sample(30, 1000, start)),
            // 20 s window, 1000 clients, 10 s heartbeat: 2000 heartbeats
            // for 500 ms of CPU → 250 µs each.
            after: Some(sample(30, 1500, start + Duration::from_secs(20))),
            steady_connected: 1000,
        };
        let clients = clients_json(&measures);
        assert_eq!(clients["kib_per_client"], 20.48);
        assert_eq!(clients["total_kib_per_client"], 30.72);
        assert_eq!(clients["connects_per_s"], 500.0);
        assert_eq!(clients["heartbeats"], 2000.0);
        assert_eq!(clients["cpu_us_per_heartbeat"], 250.0);
        assert_eq!(clients["cpu_percent"], 2.5);
    }

    #[test]
    fn nothing_connected_gives_no_ratios() {
        let start = std::time::Instant::now();
        let clients = clients_json(&ClientMeasures {
            heartbeat: Duration::from_secs(10),
            connected: 0,
            connected_after: Duration::from_secs(2),
            baseline: Some(sample(10, 0, start)),
            idle: Some(sample(10, 0, start)),
            idle_connected: 0,
            before: Some(sample(10, 0, start)),
            after: Some(sample(10, 0, start + Duration::from_secs(1))),
            steady_connected: 0,
        });
        assert!(clients["kib_per_client"].is_null());
        assert!(clients["cpu_us_per_heartbeat"].is_null());
    }

    #[test]
    fn established_rows_are_matched_by_port_state_and_inode() {
        // Port 4320 = 0x10E0. Rows: ours established, ours listening,
        // someone else's established, ours to another port.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:9C40 0100007F:10E0 01 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 20 4 30 10 -1\n\
            1: 0100007F:10E0 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 112 1 0 20 4 30 10 -1\n\
            2: 0100007F:9C41 0100007F:10E0 01 00000000:00000000 00:00000000 00000000  1000        0 999 1 0 20 4 30 10 -1\n\
            3: 0100007F:9C42 0100007F:10E1 01 00000000:00000000 00:00000000 00000000  1000        0 113 1 0 20 4 30 10 -1\n";
        let ours: HashSet<u64> = [111, 112, 113].into_iter().collect();
        assert_eq!(count_established(table, 4320, &ours), 1);
    }

    #[tokio::test]
    async fn own_connections_are_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(established_to(std::process::id(), port), 0);
        let _a = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _b = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // Both client ends are established once connect returned.
        assert_eq!(established_to(std::process::id(), port), 2);
    }
}
