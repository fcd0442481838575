//! Counters every agent task updates, and the shared run state.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::histogram::LatencyHistogram;

/// What every agent task reads and writes. One per run.
pub(crate) struct Stats {
    /// Agents connected now (WebSocket: open connection; HTTP: last poll
    /// succeeded).
    pub(crate) connected: AtomicUsize,
    /// Successful connects (HTTP: first successful poll after a failure).
    pub(crate) connects: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Agents whose APPLIED status for the pushed config was answered.
    pub(crate) applied: AtomicUsize,
    /// TCP connect + WebSocket upgrade (HTTP: first successful poll).
    pub(crate) connect_latency: LatencyHistogram,
    /// Heartbeat → reply (WebSocket) or poll → response (HTTP).
    pub(crate) heartbeat_latency: LatencyHistogram,
    /// Push start → the server's reply to the agent's APPLIED status.
    pub(crate) push_latency: LatencyHistogram,
    /// Server restart → this agent connected again (storm).
    pub(crate) reconnect_latency: LatencyHistogram,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// When the server was restarted in a storm, as nanoseconds after
    /// `epoch` plus one (0: no storm running).
    storm_restarted_at: AtomicU64,
    /// Per agent: when its push started, as nanoseconds after `epoch` plus
    /// one (0: no push yet).
    push_started_at: Box<[AtomicU64]>,
    epoch: Instant,
}

impl Stats {
    pub(crate) fn new(agents: usize) -> Self {
        Self {
            connected: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            applied: AtomicUsize::new(0),
            connect_latency: LatencyHistogram::new(),
            heartbeat_latency: LatencyHistogram::new(),
            push_latency: LatencyHistogram::new(),
            reconnect_latency: LatencyHistogram::new(),
            errors: Mutex::new(BTreeMap::new()),
            storm_restarted_at: AtomicU64::new(0),
            push_started_at: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn error(&self, kind: &'static str) {
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *errors.entry(kind).or_insert(0) += 1;
    }

    /// Errors so far, by kind, and starts counting from zero.
    pub(crate) fn take_errors(&self) -> BTreeMap<&'static str, u64> {
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        std::mem::take(&mut *errors)
    }

    pub(crate) fn on_connected(&self, took: Duration) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.connect_latency.record(took);
        if let Some(restarted) = self.load_instant(&self.storm_restarted_at) {
            self.reconnect_latency
                .record(Instant::now().saturating_duration_since(restarted));
        }
    }

    pub(crate) fn on_disconnected(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_storm_restart(&self, at: Instant) {
        self.store_instant(&self.storm_restarted_at, at);
    }

    pub(crate) fn mark_push_started(&self, agent: usize, at: Instant) {
        if let Some(slot) = self.push_started_at.get(agent) {
            self.store_instant(slot, at);
        }
    }

    pub(crate) fn push_started(&self, agent: usize) -> Option<Instant> {
        self.load_instant(self.push_started_at.get(agent)?)
    }

    fn store_instant(&self, slot: &AtomicU64, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        slot.store(nanos + 1, Ordering::Release);
    }

    fn load_instant(&self, slot: &AtomicU64) -> Option<Instant> {
        match slot.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.epoch + Duration::from_nanos(nanos - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counts_and_errors() {
        let stats = Stats::new(2);
        stats.on_connected(Duration::from_millis(1));
        stats.on_connected(Duration::from_millis(2));
        stats.on_disconnected();
        assert_eq!(stats.connected(), 1);
        assert_eq!(stats.connects.load(Ordering::Relaxed), 2);
        assert_eq!(stats.connect_latency.take().count(), 2);
        // No storm yet: nothing counts as a reconnect.
        assert_eq!(stats.reconnect_latency.take().count(), 0);

        stats.error("refused");
        stats.error("refused");
        stats.error("reset");
        let errors = stats.take_errors();
        assert_eq!(errors.get("refused"), Some(&2));
        assert_eq!(errors.get("reset"), Some(&1));
        assert!(stats.take_errors().is_empty());
    }

    #[test]
    fn push_start_times_round_trip_per_agent() {
        let stats = Stats::new(3);
        assert_eq!(stats.push_started(1), None);
        let at = Instant::now() + Duration::from_millis(5);
        stats.mark_push_started(1, at);
        let back = stats.push_started(1).unwrap();
        assert!(back.max(at) - back.min(at) < Duration::from_micros(1));
        assert_eq!(stats.push_started(0), None);
        // Out of range is ignored, not a panic.
        stats.mark_push_started(7, at);
        assert_eq!(stats.push_started(7), None);
    }

    #[test]
    fn reconnects_after_a_storm_restart_are_timed() {
        let stats = Stats::new(1);
        stats.mark_storm_restart(Instant::now());
        stats.on_connected(Duration::ZERO);
        assert_eq!(stats.reconnect_latency.take().count(), 1);
    }
}
