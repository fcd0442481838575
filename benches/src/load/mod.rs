//! `loadgen`: many simulated OpAMP agents against one server.
//!
//! A run has phases: ramp (agents start at `--ramp-rate`, pausing at each
//! `--sample-at` count to let the server settle and sample its RSS), a
//! steady window (message rate, round trips, server CPU), an optional
//! config push (time to APPLIED per agent), an optional reconnect storm
//! (kill and restart the server, time until every agent is back), then a
//! report as a table and one JSON line.

mod agent;
mod args;
mod clients;
mod histogram;
mod procfs;
mod push;
mod report;
mod server;
mod stats;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_transport::ClientOptions;
use opamp_transport::http::client::HttpPoster;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use args::{LoadArgs, PushMode, SourceAddrs};

use agent::{AgentSetup, run_http_agent, run_ws_agent};
use args::AgentTransport;
use procfs::ProcSample;
use report::{errors_json, latency_json, mib, millis, round2};
use server::ServerProcess;
use stats::Stats;
use ws::WsConnector;

/// A multi-threaded tokio runtime with everything enabled and `threads`
/// worker threads (at least one; default: one per core).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder.enable_all().build()
}

/// Runs `loadgen` with parsed flags: the whole run, or `--compare`.
pub fn run_loadgen(args: LoadArgs) -> ExitCode {
    if let Some(path) = &args.compare {
        return match std::fs::read_to_string(path) {
            Ok(lines) => {
                println!("{}", report::compare(&lines, &args.baseline));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("loadgen: reading {}: {error}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    let open_files = raise_open_files_limit();
    if args.agents + 64 > open_files {
        eprintln!(
            "loadgen: warning: {} agents need more than the {open_files} open files this \
             process may have; expect too_many_open_files errors",
            args.agents
        );
    }
    let runtime = match runtime(args.threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let measure_clients = args.opamp_clients || args.clients_cmd.is_some();
    let outcome = runtime.block_on(async {
        if measure_clients {
            clients::run(&args, open_files).await
        } else {
            run(args.clone(), open_files).await
        }
    });
    match outcome {
        Ok(report) => {
            print!("{}", report::table(&report));
            let line = report.to_string();
            println!("{line}");
            if let Some(path) = &args.json_out {
                if let Err(error) = append_line(path, &line) {
                    eprintln!("loadgen: writing {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")
}

/// Raises the soft open-files limit to the hard one; returns the soft limit
/// in force afterwards.
fn raise_open_files_limit() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            eprintln!("loadgen: cannot raise the open-files limit: {error}");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    current.map_or(usize::MAX, |value| {
        usize::try_from(value).unwrap_or(usize::MAX)
    })
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

async fn resolve(url: &url::Url) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or("--url has no host")?;
    let port = url.port_or_known_default().ok_or("--url has no port")?;
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("resolving {host}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// Starts agents of the chosen transport.
enum Spawner {
    /// One connector per endpoint; agent `i` uses `i % len`.
    WebSocket(Vec<Arc<WsConnector>>),
    Http(Box<HttpSpawner>),
}

/// Plain-HTTP agents: one poster (own connection) each, or a shared one.
struct HttpSpawner {
    options: ClientOptions,
    shared: Option<HttpPoster>,
}

impl Spawner {
    async fn new(args: &LoadArgs, transport: AgentTransport) -> Result<Self, String> {
        Ok(match transport {
            AgentTransport::WebSocket => {
                let mut connectors = Vec::new();
                for url in std::iter::once(&args.url).chain(&args.also_urls) {
                    let connector = match &args.source_addrs {
                        Some(sources) => {
                            WsConnector::bound(url.clone(), sources.0.clone(), args.connect_timeout)
                                .await?
                        }
                        None => WsConnector::transport(url.clone(), args.connect_timeout),
                    };
                    connectors.push(Arc::new(connector));
                }
                Self::WebSocket(connectors)
            }
            AgentTransport::Http => {
                if !args.also_urls.is_empty() {
                    return Err("--also-url works with WebSocket agents only".into());
                }
                if args.source_addrs.is_some() {
                    return Err("--source-addrs works with WebSocket agents only".into());
                }
                let options = ClientOptions::new(args.url.clone())
                    .with_connect_timeout(args.connect_timeout)
                    .with_request_timeout(args.reply_timeout);
                let shared = if args.http_shared_pool {
                    Some(HttpPoster::new(options.clone()).map_err(|error| error.to_string())?)
                } else {
                    None
                };
                Self::Http(Box::new(HttpSpawner { options, shared }))
            }
        })
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        setup: &Arc<AgentSetup>,
        index: usize,
    ) -> Result<(), String> {
        let setup = Arc::clone(setup);
        match self {
            Self::WebSocket(connectors) => {
                let connector = &connectors[index % connectors.len()];
                tasks.spawn(run_ws_agent(setup, Arc::clone(connector), index));
            }
            Self::Http(http) => {
                let poster = match &http.shared {
                    Some(poster) => poster.clone(),
                    None => {
                        HttpPoster::new(http.options.clone()).map_err(|error| error.to_string())?
                    }
                };
                tasks.spawn(run_http_agent(setup, poster, index));
            }
        }
        Ok(())
    }
}

/// Waits until `count` agents are connected, or `timeout`.
async fn wait_connected(stats: &Stats, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while stats.connected() < count {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// RSS and CPU of the server, wherever its pid comes from, plus those of
/// the servers behind --also-url (`also`).
fn server_sample(
    server: Option<&ServerProcess>,
    pid: Option<u32>,
    also: &[u32],
) -> Option<ProcSample> {
    let first = server
        .and_then(ServerProcess::pid)
        .or(pid)
        .and_then(ProcSample::read)?;
    also.iter().try_fold(first, |sum, pid| {
        let other = ProcSample::read(*pid)?;
        Some(ProcSample {
            at: sum.at.max(other.at),
            rss_bytes: sum.rss_bytes + other.rss_bytes,
            cpu: sum.cpu + other.cpu,
            threads: sum.threads + other.threads,
        })
    })
}

fn self_sample() -> Option<ProcSample> {
    ProcSample::read(std::process::id())
}

async fn run(args: LoadArgs, open_files: usize) -> Result<Value, String> {
    let transport = args.transport()?;
    if args.ramp_rate <= 0.0 {
        return Err("--ramp-rate must be positive".into());
    }
    let target = resolve(&args.url).await?;
    let mut server = ServerProcess::start_if_given(&args, target).await?;
    if args.push == PushMode::ServerStdin && server.is_none() {
        return Err("--push stdin needs --server-cmd".into());
    }
    let run_millis = unix_millis();
    let stats = Arc::new(Stats::new(args.agents));
    let (stop_sender, stop) = watch::channel(false);
    let setup = Arc::new(AgentSetup {
        stats: Arc::clone(&stats),
        heartbeat: args.heartbeat,
        reply_timeout: args.reply_timeout,
        run_millis,
        stop,
    });
    let spawner = Spawner::new(&args, transport).await?;

    // ---- ramp, pausing at each sample point ----
    let baseline = server_sample(server.as_ref(), args.server_pid, &args.also_server_pids);
    let mut milestones: Vec<usize> = args
        .sample_at
        .iter()
        .copied()
        .filter(|count| *count > 0 && *count < args.agents)
        .chain(std::iter::once(args.agents))
        .collect();
    milestones.sort_unstable();
    milestones.dedup();
    let mut milestones = milestones.into_iter().peekable();
    let mut memory_samples = Vec::new();
    let mut tasks = JoinSet::new();
    let ramp_started = Instant::now();
    let mut schedule_start = ramp_started;
    let mut paused = Duration::ZERO;
    let mut ramp_complete = true;
    for index in 0..args.agents {
        let due = schedule_start + Duration::from_secs_f64(index as f64 / args.ramp_rate);
        tokio::time::sleep_until(due).await;
        spawner.spawn(&mut tasks, &setup, index)?;
        let started = index + 1;
        if milestones.peek() == Some(&started) {
            milestones.next();
            let pause_started = Instant::now();
            if !wait_connected(&stats, started, args.ramp_timeout).await {
                ramp_complete = false;
            }
            let connected_after = pause_started.elapsed();
            tokio::time::sleep(args.settle).await;
            let server = server_sample(server.as_ref(), args.server_pid, &args.also_server_pids);
            let own = self_sample();
            memory_samples.push((started, stats.connected(), server, own));
            // Time spent settling is not ramp time; connecting is.
            paused += pause_started.elapsed().saturating_sub(connected_after);
            schedule_start =
                Instant::now() - Duration::from_secs_f64(started as f64 / args.ramp_rate);
        }
    }
    let ramp_seconds = ramp_started.elapsed().saturating_sub(paused);
    let ramp = json!({
        "connected": stats.connected(),
        "complete": ramp_complete,
        "seconds": round2(ramp_seconds.as_secs_f64()),
        "connect": latency_json(&stats.connect_latency.take()),
        "errors": errors_json(&stats.take_errors()),
    });
    let memory = memory_json(baseline.as_ref(), &memory_samples);

    // ---- steady state ----
    stats.heartbeat_latency.take();
    let sent_before = stats.sent.load(Ordering::Relaxed);
    let received_before = stats.received.load(Ordering::Relaxed);
    let server_before = server_sample(server.as_ref(), args.server_pid, &args.also_server_pids);
    let own_before = self_sample();
    let window_started = Instant::now();
    tokio::time::sleep(args.duration).await;
    let window = window_started.elapsed().as_secs_f64();
    let sent = stats.sent.load(Ordering::Relaxed) - sent_before;
    let received = stats.received.load(Ordering::Relaxed) - received_before;
    let server_after = server_sample(server.as_ref(), args.server_pid, &args.also_server_pids);
    let own_after = self_sample();
    let server_cpu = match (&server_before, &server_after) {
        (Some(before), Some(after)) => Some(after.cpu.saturating_sub(before.cpu)),
        _ => None,
    };
    let steady = json!({
        "seconds": round2(window),
        "connected": stats.connected(),
        "sent_per_s": round2(sent as f64 / window),
        "received_per_s": round2(received as f64 / window),
        "messages_per_s": round2((sent + received) as f64 / window),
        "round_trip": latency_json(&stats.heartbeat_latency.take()),
        "server_cpu_percent": match (&server_before, &server_after) {
            (Some(before), Some(after)) => Some(round2(after.cpu_percent_since(before))),
            _ => None,
        },
        "server_cpu_us_per_message": server_cpu
            .filter(|_| sent > 0)
            .map(|cpu| round2(cpu.as_secs_f64() * 1e6 / sent as f64)),
        "server_rss_mib": server_after.map(|sample| mib(sample.rss_bytes)),
        "server_threads": server_after.map(|sample| sample.threads),
        "loadgen_cpu_percent": match (&own_before, &own_after) {
            (Some(before), Some(after)) => Some(round2(after.cpu_percent_since(before))),
            _ => None,
        },
        "errors": errors_json(&stats.take_errors()),
    });

    // ---- config push ----
    let push = if args.push == PushMode::None {
        Value::Null
    } else {
        push_phase(&args, &stats, server.as_mut(), run_millis).await?
    };

    // ---- reconnect storm ----
    let storm = match (&mut server, args.storm) {
        (Some(server), true) => storm_phase(&args, &stats, server, target).await?,
        _ => Value::Null,
    };

    // ---- stop ----
    stop_sender.send_replace(true);
    let stopping = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    if let Some(server) = &mut server {
        server.stop(Duration::from_secs(10)).await;
    }

    let mut report = run_header(&args, transport, open_files);
    report.extend([
        ("ramp".to_owned(), ramp),
        ("memory".to_owned(), memory),
        ("steady".to_owned(), steady),
        ("push".to_owned(), push),
        ("storm".to_owned(), storm),
    ]);
    Ok(Value::Object(report))
}

/// The fields every JSON line starts with: what was run, against what, when.
fn run_header(
    args: &LoadArgs,
    transport: AgentTransport,
    open_files: usize,
) -> serde_json::Map<String, Value> {
    let Value::Object(header) = json!({
        "loadgen": 1,
        "label": args.label,
        "scenario": args.scenario,
        "transport": transport.name(),
        "url": args.url.as_str(),
        "agents": args.agents,
        "heartbeat_s": args.heartbeat.as_secs_f64(),
        "ramp_rate": args.ramp_rate,
        "open_files_limit": open_files,
        "unix_time": unix_millis() / 1000,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    header
}

type MemorySample = (usize, usize, Option<ProcSample>, Option<ProcSample>);

/// RSS at each sample point, per agent over the baseline, the slope between
/// the first and last points, and the 100k extrapolation from it.
fn memory_json(baseline: Option<&ProcSample>, samples: &[MemorySample]) -> Value {
    let base = baseline.map(|sample| sample.rss_bytes);
    let kib_per_agent = |rss: u64, connected: usize| {
        base.filter(|_| connected > 0)
            .map(|base| round2(rss.saturating_sub(base) as f64 / 1024.0 / connected as f64))
    };
    let rows: Vec<Value> = samples
        .iter()
        .map(|(started, connected, server, own)| {
            json!({
                "started": started,
                "connected": connected,
                "server_rss_mib": server.map(|sample| mib(sample.rss_bytes)),
                "server_kib_per_agent": server.and_then(|sample| kib_per_agent(sample.rss_bytes, *connected)),
                "loadgen_rss_mib": own.map(|sample| mib(sample.rss_bytes)),
            })
        })
        .collect();
    let points: Vec<(usize, u64)> = samples
        .iter()
        .filter_map(|(_, connected, server, _)| Some((*connected, server.as_ref()?.rss_bytes)))
        .collect();
    let slope = match (points.first(), points.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            Some((last.1 as f64 - first.1 as f64) / 1024.0 / (last.0 - first.0) as f64)
        }
        _ => None,
    };
    let final_kib = points
        .last()
        .and_then(|(connected, rss)| kib_per_agent(*rss, *connected));
    let extrapolated = match (points.last(), slope) {
        (Some((connected, rss)), Some(slope)) => Some(mib((*rss as f64
            + slope * 1024.0 * (100_000f64 - *connected as f64))
            .max(0.0) as u64)),
        _ => None,
    };
    json!({
        "baseline_mib": base.map(mib),
        "samples": rows,
        "slope_kib_per_agent": slope.map(round2),
        "final_kib_per_agent": final_kib,
        "extrapolated_100k_mib": extrapolated,
    })
}

async fn push_phase(
    args: &LoadArgs,
    stats: &Arc<Stats>,
    server: Option<&mut ServerProcess>,
    run_millis: u64,
) -> Result<Value, String> {
    stats.applied.store(0, Ordering::Relaxed);
    stats.push_latency.take();
    let targets = stats.connected();
    let body = push::config_body(args.config_size);
    let started = Instant::now();
    let mut request_failures = 0;
    let mode = match &args.push {
        PushMode::None => return Ok(Value::Null),
        PushMode::ServerStdin => {
            let server = server.ok_or("--push stdin needs --server-cmd")?;
            push::push_stdin(server, stats, args.agents, &body).await?;
            "stdin".to_owned()
        }
        PushMode::ApiDefault(base) => {
            push::push_api_default(base, stats, args.agents, &body).await?;
            format!("api-default={base}")
        }
        PushMode::ApiPerAgent(base) => {
            request_failures = push::push_api_per_agent(
                base,
                Arc::clone(stats),
                args.agents,
                run_millis,
                &body,
                args.push_concurrency,
            )
            .await?;
            format!("api={base}")
        }
    };
    let requests_done = started.elapsed();
    let deadline = started + args.push_timeout;
    let mut all_applied = None;
    while Instant::now() < deadline {
        if stats.applied.load(Ordering::Relaxed) >= targets {
            all_applied = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(json!({
        "mode": mode,
        "config_bytes": body.len(),
        "targets": targets,
        "applied": stats.applied.load(Ordering::Relaxed),
        "requests_s": round2(requests_done.as_secs_f64()),
        "request_failures": request_failures,
        "all_applied_s": all_applied.map(|took| (took.as_secs_f64() * 1000.0).round() / 1000.0),
        "latency": latency_json(&stats.push_latency.take()),
        "errors": errors_json(&stats.take_errors()),
    }))
}

async fn storm_phase(
    args: &LoadArgs,
    stats: &Stats,
    server: &mut ServerProcess,
    target: SocketAddr,
) -> Result<Value, String> {
    let before = stats.connected();
    stats.reconnect_latency.take();
    let killed = Instant::now();
    server.kill().await;
    tokio::time::sleep(args.storm_down).await;
    // Timed from the restart itself: agents may connect before the
    // readiness probe below does.
    let ready = Instant::now();
    stats.mark_storm_restart(ready.into_std());
    server.restart()?;
    server.wait_ready(target, args.server_ready_timeout).await?;
    let back = wait_connected(stats, before, args.storm_timeout).await;
    let all_back = back.then(|| ready.elapsed());
    // Let the last full-status reports land before sampling.
    tokio::time::sleep(args.settle).await;
    let after = server_sample(Some(server), None, &[]);
    Ok(json!({
        "before": before,
        "back": stats.connected(),
        "down_s": round2(ready.duration_since(killed).as_secs_f64()),
        "all_back_after_restart_s": all_back.map(|took| round2(took.as_secs_f64())),
        "all_back_after_kill_s": all_back.map(|took| round2((took + ready.duration_since(killed)).as_secs_f64())),
        "reconnect": latency_json(&stats.reconnect_latency.take()),
        "server_rss_mib_after": after.map(|sample| mib(sample.rss_bytes)),
        "errors": errors_json(&stats.take_errors()),
        "connect_p99_ms": stats.connect_latency.take().percentile(99.0).map(millis),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rss_mib: u64) -> ProcSample {
        ProcSample {
            at: std::time::Instant::now(),
            rss_bytes: rss_mib * 1024 * 1024,
            cpu: Duration::ZERO,
            threads: 1,
        }
    }

    #[test]
    fn memory_slope_and_extrapolation() {
        let baseline = sample(10);
        // 1000 agents: +10 MiB; 5000 agents: +50 MiB → 10 KiB per agent.
        let samples = vec![
            (1000, 1000, Some(sample(20)), None),
            (5000, 5000, Some(sample(60)), None),
        ];
        let memory = memory_json(Some(&baseline), &samples);
        assert_eq!(memory["baseline_mib"], 10.0);
        assert_eq!(memory["slope_kib_per_agent"], 10.24);
        assert_eq!(memory["final_kib_per_agent"], 10.24);
        assert_eq!(memory["samples"][0]["server_kib_per_agent"], 10.24);
        // 60 MiB + 95 000 × 10 KiB.
        let expected = 60.0 + 95_000.0 * 10.24 / 1024.0;
        let extrapolated = memory["extrapolated_100k_mib"].as_f64().unwrap();
        assert!((extrapolated - expected).abs() < 0.01, "{extrapolated}");
    }

    #[test]
    fn memory_without_a_server_pid_is_empty_not_wrong() {
        let memory = memory_json(None, &[(10, 10, None, None)]);
        assert!(memory["baseline_mib"].is_null());
        assert!(memory["slope_kib_per_agent"].is_null());
        assert!(memory["samples"][0]["server_rss_mib"].is_null());
    }

    #[test]
    fn open_files_limit_is_at_the_hard_limit_after_raising() {
        let soft = raise_open_files_limit();
        match rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
            Some(hard) => assert_eq!(soft as u64, hard),
            None => assert_eq!(soft, usize::MAX),
        }
    }
}
