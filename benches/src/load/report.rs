//! The run report: a human table and one JSON line, plus a side-by-side
//! comparison of several runs' JSON lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::histogram::Snapshot;

/// Milliseconds with microsecond precision, for JSON.
pub(crate) fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn mib(bytes: u64) -> f64 {
    round2(bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// `{"count", "p50_ms", "p99_ms", "max_ms"}` of a latency snapshot.
pub(crate) fn latency_json(snapshot: &Snapshot) -> Value {
    let ms = |value: Option<Duration>| value.map(millis);
    json!({
        "count": snapshot.count(),
        "p50_ms": ms(snapshot.percentile(50.0)),
        "p99_ms": ms(snapshot.percentile(99.0)),
        "max_ms": ms(snapshot.max()),
    })
}

pub(crate) fn errors_json(errors: &BTreeMap<&'static str, u64>) -> Value {
    Value::Object(
        errors
            .iter()
            .map(|(kind, count)| ((*kind).to_owned(), json!(count)))
            .collect(),
    )
}

fn show(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(float) if number.is_f64() => format!("{float:.2}"),
            _ => number.to_string(),
        },
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// The report as a readable table.
pub(crate) fn table(report: &Value) -> String {
    let at = |pointer: &str| show(report.pointer(pointer));
    let mut out = String::new();
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<40} {value}");
    };
    row(
        "run",
        format!(
            "{} / {} ({}, {} agents, heartbeat {} s)",
            at("/label"),
            at("/scenario"),
            at("/transport"),
            at("/agents"),
            at("/heartbeat_s")
        ),
    );
    row(
        "ramp: connected / seconds",
        format!("{} / {}", at("/ramp/connected"), at("/ramp/seconds")),
    );
    row(
        "ramp: connect p50 / p99 ms",
        format!(
            "{} / {}",
            at("/ramp/connect/p50_ms"),
            at("/ramp/connect/p99_ms")
        ),
    );
    row("ramp: errors", at("/ramp/errors"));
    if report
        .get("clients")
        .is_some_and(|clients| !clients.is_null())
    {
        row(
            "clients: connected / connects per s",
            format!(
                "{} / {}",
                at("/clients/connected"),
                at("/clients/connects_per_s")
            ),
        );
        row(
            "clients: RSS MiB (baseline) / KiB per client",
            format!(
                "{} ({}) / {}",
                at("/clients/idle_rss_mib"),
                at("/clients/baseline_mib"),
                at("/clients/kib_per_client")
            ),
        );
        row(
            "clients: CPU % / µs per heartbeat",
            format!(
                "{} / {} ({} heartbeats)",
                at("/clients/cpu_percent"),
                at("/clients/cpu_us_per_heartbeat"),
                at("/clients/heartbeats")
            ),
        );
    }
    if let Some(Value::Array(samples)) = report.pointer("/memory/samples") {
        for sample in samples {
            let get = |key: &str| show(sample.get(key));
            row(
                &format!("server RSS at {} connected", get("connected")),
                format!(
                    "{} MiB ({} KiB/agent over baseline); loadgen {} MiB",
                    get("server_rss_mib"),
                    get("server_kib_per_agent"),
                    get("loadgen_rss_mib")
                ),
            );
        }
    }
    row(
        "server RSS: baseline MiB / slope KiB per agent",
        format!(
            "{} / {}",
            at("/memory/baseline_mib"),
            at("/memory/slope_kib_per_agent")
        ),
    );
    row(
        "server RSS at 100k agents (extrapolated)",
        format!("{} MiB", at("/memory/extrapolated_100k_mib")),
    );
    row(
        "steady: messages/s (sent + received)",
        format!(
            "{} ({} sent/s, {} received/s)",
            at("/steady/messages_per_s"),
            at("/steady/sent_per_s"),
            at("/steady/received_per_s")
        ),
    );
    row(
        "steady: round trip p50 / p99 ms",
        format!(
            "{} / {} ({} samples)",
            at("/steady/round_trip/p50_ms"),
            at("/steady/round_trip/p99_ms"),
            at("/steady/round_trip/count")
        ),
    );
    row(
        "steady: server CPU % / µs per agent message",
        format!(
            "{} / {}",
            at("/steady/server_cpu_percent"),
            at("/steady/server_cpu_us_per_message")
        ),
    );
    row("steady: loadgen CPU %", at("/steady/loadgen_cpu_percent"));
    row("steady: errors", at("/steady/errors"));
    if report.get("push").is_some_and(|push| !push.is_null()) {
        row(
            "push: applied / targets",
            format!("{} / {}", at("/push/applied"), at("/push/targets")),
        );
        row("push: all applied after s", at("/push/all_applied_s"));
        row(
            "push → APPLIED p50 / p99 / max ms",
            format!(
                "{} / {} / {}",
                at("/push/latency/p50_ms"),
                at("/push/latency/p99_ms"),
                at("/push/latency/max_ms")
            ),
        );
        row("push: errors", at("/push/errors"));
    }
    if report.get("storm").is_some_and(|storm| !storm.is_null()) {
        row(
            "storm: back / before",
            format!("{} / {}", at("/storm/back"), at("/storm/before")),
        );
        row(
            "storm: all back after restart s",
            at("/storm/all_back_after_restart_s"),
        );
        row(
            "storm: reconnect p50 / p99 / max ms",
            format!(
                "{} / {} / {}",
                at("/storm/reconnect/p50_ms"),
                at("/storm/reconnect/p99_ms"),
                at("/storm/reconnect/max_ms")
            ),
        );
        row("storm: errors", at("/storm/errors"));
    }
    out
}

/// Metrics compared across runs: JSON pointer, name, and whether higher is
/// better.
const COMPARED: [(&str, &str, bool); 12] = [
    ("/steady/messages_per_s", "messages/s", true),
    ("/steady/round_trip/p50_ms", "round trip p50 ms", false),
    ("/steady/round_trip/p99_ms", "round trip p99 ms", false),
    (
        "/steady/server_cpu_us_per_message",
        "server CPU µs/message",
        false,
    ),
    ("/memory/final_kib_per_agent", "server RSS KiB/agent", false),
    ("/push/all_applied_s", "push: all APPLIED s", false),
    ("/push/latency/p99_ms", "push → APPLIED p99 ms", false),
    (
        "/storm/all_back_after_restart_s",
        "storm: all back s",
        false,
    ),
    ("/ramp/connect/p99_ms", "connect p99 ms", false),
    ("/clients/kib_per_client", "client RSS KiB/client", false),
    (
        "/clients/cpu_us_per_heartbeat",
        "client CPU µs/heartbeat",
        false,
    ),
    ("/clients/connects_per_s", "client connects/s", true),
];

/// A markdown table per scenario: each label's value and its ratio to
/// `baseline`'s. A ratio above 1 is better for throughput, below 1 for
/// costs (the metric's name says which).
pub(crate) fn compare(lines: &str, baseline: &str) -> String {
    let runs: Vec<Value> = lines
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|run| run.get("loadgen").is_some())
        .collect();
    let mut scenarios: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for run in &runs {
        let scenario = run
            .get("scenario")
            .and_then(Value::as_str)
            .unwrap_or("default");
        scenarios.entry(scenario.to_owned()).or_default().push(run);
    }
    let mut out = String::new();
    for (scenario, runs) in scenarios {
        // The last run per label wins.
        let mut by_label: BTreeMap<String, &Value> = BTreeMap::new();
        for run in runs {
            let label = run.get("label").and_then(Value::as_str).unwrap_or("run");
            by_label.insert(label.to_owned(), run);
        }
        let base = by_label.get(baseline).copied();
        let others: Vec<(&String, &&Value)> = by_label
            .iter()
            .filter(|(label, _)| label.as_str() != baseline)
            .collect();
        let _ = writeln!(out, "\n### {scenario}\n");
        let mut header = String::from("| metric |");
        let mut rule = String::from("|---|");
        for (label, _) in &others {
            let _ = write!(header, " {label} |");
            rule.push_str("---:|");
        }
        if base.is_some() {
            let _ = write!(header, " {baseline} |");
            rule.push_str("---:|");
            for (label, _) in &others {
                let _ = write!(header, " {label} ÷ {baseline} |");
                rule.push_str("---:|");
            }
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for (pointer, name, higher_is_better) in COMPARED {
            let value = |run: &Value| run.pointer(pointer).and_then(Value::as_f64);
            if others.iter().all(|(_, run)| value(run).is_none()) && base.and_then(value).is_none()
            {
                continue;
            }
            let arrow = if higher_is_better { "↑" } else { "↓" };
            let mut line = format!("| {name} {arrow} |");
            for (_, run) in &others {
                let _ = write!(line, " {} |", show(run.pointer(pointer)));
            }
            if let Some(base) = base {
                let _ = write!(line, " {} |", show(base.pointer(pointer)));
                for (_, run) in &others {
                    let ratio = match (value(run), value(base)) {
                        (Some(ours), Some(theirs)) if theirs != 0.0 => {
                            format!("{:.2}", ours / theirs)
                        }
                        _ => "-".into(),
                    };
                    let _ = write!(line, " {ratio} |");
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, scenario: &str, messages: f64, rss: f64) -> String {
        json!({
            "loadgen": 1,
            "label": label,
            "scenario": scenario,
            "steady": { "messages_per_s": messages },
            "memory": { "final_kib_per_agent": rss },
        })
        .to_string()
    }

    #[test]
    fn comparison_divides_by_the_baseline() {
        let lines = [
            run("opamp-go", "ws", 1000.0, 20.0),
            run("opamp-rs", "ws", 2500.0, 8.0),
            "not json".to_owned(),
            run("opamp-rs", "http", 10.0, 1.0),
        ]
        .join("\n");
        let table = compare(&lines, "opamp-go");
        assert!(table.contains("### ws"), "{table}");
        assert!(
            table.contains("| messages/s ↑ | 2500.00 | 1000.00 | 2.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| server RSS KiB/agent ↓ | 8.00 | 20.00 | 0.40 |"),
            "{table}"
        );
        // No baseline in the http scenario: values only.
        assert!(table.contains("### http"));
        assert!(table.contains("| messages/s ↑ | 10.00 |"), "{table}");
    }

    #[test]
    fn table_shows_missing_values_as_dashes() {
        let report = json!({"label": "x", "steady": {"messages_per_s": 12.5}});
        let text = table(&report);
        assert!(text.contains("12.50"));
        assert!(text.contains("ramp: connected / seconds"));
        assert!(text.contains("- / -"));
    }

    #[test]
    fn unit_helpers_round() {
        assert_eq!(millis(Duration::from_micros(1500)), 1.5);
        assert_eq!(mib(3 * 1024 * 1024 / 2), 1.5);
        assert_eq!(round2(1.23456), 1.23);
    }
}
