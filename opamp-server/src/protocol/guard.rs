//! The reconnect guard: how often one agent may connect anew.

use std::time::{Duration, Instant};

/// Limits how often one agent may start a new connection (or plain-HTTP
/// session), so an agent stuck in a reconnect loop costs little: past the
/// limit its connections are answered with `UNAVAILABLE` and a
/// `retry_info` hint (WS-22; `503` with `Retry-After` over plain HTTP),
/// the hint doubling with each repeated offence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectGuard {
    /// New connections allowed per agent within `window`.
    pub limit: u32,
    /// The window the limit applies to.
    pub window: Duration,
    /// The first backoff hint; it doubles with each offence.
    pub first_backoff: Duration,
    /// The largest backoff hint.
    pub max_backoff: Duration,
}

impl Default for ReconnectGuard {
    /// 20 connections a minute; hints from 5 s up to 5 min.
    fn default() -> Self {
        Self {
            limit: 20,
            window: Duration::from_secs(60),
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl ReconnectGuard {
    /// A guard allowing `limit` new connections per agent within `window`,
    /// with the default backoff hints.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            ..Self::default()
        }
    }

    /// Sets the first and the largest backoff hint.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max.max(first);
        self
    }
}

/// Recent connection starts of one agent, for the [`ReconnectGuard`].
#[derive(Debug, Clone, Copy)]
pub struct ReconnectHistory {
    window_start: Instant,
    count: u32,
    /// Offences in a row; resets after a quiet window.
    strikes: u32,
    blocked_until: Option<Instant>,
}

impl ReconnectHistory {
    /// No connection seen yet; the window starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            count: 0,
            strikes: 0,
            blocked_until: None,
        }
    }

    /// Counts a connection start at `now`; `Some(wait)` refuses it with a
    /// hint to wait that long.
    pub fn admit(&mut self, guard: &ReconnectGuard, now: Instant) -> Option<Duration> {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Some(until - now);
            }
            self.blocked_until = None;
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= guard.window {
            if elapsed >= guard.window * 2 {
                self.strikes = 0;
            }
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count <= guard.limit {
            return None;
        }
        self.strikes = self.strikes.saturating_add(1);
        let factor = 1u32 << self.strikes.saturating_sub(1).min(16);
        let wait = guard
            .first_backoff
            .saturating_mul(factor)
            .min(guard.max_backoff);
        self.blocked_until = Some(now + wait);
        // The next window starts after the wait.
        self.window_start = now + wait;
        self.count = 0;
        Some(wait)
    }

    /// Whether the history no longer matters (nothing blocked, quiet for
    /// two windows) and can be dropped.
    pub fn expired(&self, guard: &ReconnectGuard, now: Instant) -> bool {
        self.blocked_until.is_none_or(|until| until <= now)
            && now.saturating_duration_since(self.window_start) >= guard.window * 2
    }
}
