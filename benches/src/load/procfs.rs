//! Server (and self) resource use from `/proc/<pid>/status` and
//! `/proc/<pid>/stat`.

use std::time::{Duration, Instant};

/// One reading of a process's memory and CPU time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    pub(crate) at: Instant,
    /// Resident set size, bytes.
    pub(crate) rss_bytes: u64,
    /// User + system CPU time so far.
    pub(crate) cpu: Duration,
    pub(crate) threads: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/{status,stat}`; `None` if the process is gone.
    pub(crate) fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (rss_kib, threads) = parse_status(&status)?;
        let ticks = parse_stat_cpu_ticks(&stat)?;
        Some(Self {
            at: Instant::now(),
            rss_bytes: rss_kib * 1024,
            cpu: ticks_to_duration(ticks, rustix::param::clock_ticks_per_second()),
            threads,
        })
    }

    /// Average CPU use between `earlier` and `self`, in percent of one core.
    pub(crate) fn cpu_percent_since(&self, earlier: &Self) -> f64 {
        let wall = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let cpu = self.cpu.saturating_sub(earlier.cpu).as_secs_f64();
        100.0 * cpu / wall
    }
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// `VmRSS` (KiB) and `Threads` from `/proc/<pid>/status`.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("VmRSS")?, field("Threads").unwrap_or(0)))
}

/// `utime + stime` (clock ticks) from `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may itself hold spaces and parentheses,
/// so fields are counted after the last `)`.
fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first one after the name; utime is field 14,
    // stime field 15.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tserver\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        VmPeak:\t  912340 kB\nVmSize:\t  912340 kB\nVmHWM:\t  130000 kB\nVmRSS:\t  123456 kB\n\
        RssAnon:\t  100000 kB\nThreads:\t3\nSigQ:\t0/94646\n";

    // A command name with a space and a parenthesis, as a process may set.
    const STAT: &str = "4242 (my (server) x) S 1 4242 4242 0 -1 4194560 2045 0 0 0 \
        250 75 0 0 20 0 3 0 123456 934232064 30864 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn status_gives_rss_and_threads() {
        assert_eq!(parse_status(STATUS), Some((123_456, 3)));
        assert_eq!(parse_status("Name:\tx\nVmRSS:\tnope kB\n"), None);
        // A kernel thread has no VmRSS line.
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn stat_gives_user_plus_system_ticks() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(325));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn ticks_convert_with_the_clock_rate() {
        assert_eq!(ticks_to_duration(325, 100), Duration::from_millis(3250));
        assert_eq!(ticks_to_duration(3, 1000), Duration::from_millis(3));
        assert_eq!(ticks_to_duration(7, 0), Duration::from_secs(7));
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let start = Instant::now();
        let earlier = ProcSample {
            at: start,
            rss_bytes: 0,
            cpu: Duration::from_secs(1),
            threads: 1,
        };
        let later = ProcSample {
            at: start + Duration::from_secs(4),
            cpu: Duration::from_secs(3),
            ..earlier
        };
        assert!((later.cpu_percent_since(&earlier) - 50.0).abs() < 1e-9);
        assert_eq!(earlier.cpu_percent_since(&earlier), 0.0);
    }

    #[test]
    fn own_process_can_be_read() {
        let sample = ProcSample::read(std::process::id()).expect("/proc/self");
        assert!(sample.rss_bytes > 0);
        assert!(sample.threads >= 1);
    }
}
