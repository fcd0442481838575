//! Retry delays: exponential backoff with full jitter, overridable by server
//! hints (CONN-03, CONN-04, WS-19, WS-23, HTTP-21).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opamp_proto::{ServerErrorResponseType, ServerToAgent, server_error_response};

/// Decides how long to wait before the next connection or request attempt.
///
/// A client keeps one policy per retry sequence: it calls
/// [`next_delay`](Self::next_delay) after each failed attempt and
/// [`reset`](Self::reset) after a success. The first attempt after an
/// unexpected disconnect is made at once (WS-19), without asking the policy.
///
/// Implement it to plug in your own schedule; [`ExponentialBackoff`] is the
/// default.
pub trait RetryPolicy: Send + Sync {
    /// The delay before the next attempt. `hint` is the server's own request,
    /// from a `Retry-After` header (HTTP-21, WS-24) or from
    /// `ServerErrorResponse.retry_info` (WS-23, see [`retry_info_hint`]); a
    /// policy should honour it.
    fn next_delay(&mut self, hint: Option<Duration>) -> Duration;

    /// Called after a successful attempt: the next failure starts a fresh
    /// sequence.
    fn reset(&mut self);
}

/// Makes a fresh [`RetryPolicy`], so each connection (or each client) gets
/// its own state.
pub type RetryPolicyFactory = Arc<dyn Fn() -> Box<dyn RetryPolicy> + Send + Sync>;

/// How much later than a server hint an attempt may be, as a fraction of
/// the hint.
const HINT_SPREAD: f64 = 0.1;

/// The jitter source: returns a fraction in `[0, 1)`.
type JitterSource = Box<dyn FnMut() -> f64 + Send + Sync>;

/// Exponential backoff with full jitter.
///
/// The n-th delay (counting from 0) is drawn uniformly from
/// `[0, min(max, initial × multiplierⁿ))`. Full jitter spreads a fleet of
/// agents that lost the same server over the whole window, instead of having
/// them return in waves.
///
/// A server hint replaces the computed delay for that attempt (the server knows
/// its load better than we do), capped at [`max_hint`](Self::with_max_hint)
/// so a broken or hostile server cannot park the agent for days. The wait is
/// never shorter than the hint, and up to a tenth longer (jittered), so a
/// fleet refused at one moment does not come back at one moment. The sequence
/// still advances, so once hints stop the delays carry on growing.
///
/// Defaults: initial 1 s, multiplier 2, max 60 s, max hint 1 hour. opamp-go
/// uses 0.5 s × 1.5 up to 60 s with ±50 % jitter; with full jitter the mean
/// wait at the cap is 30 s, the spec's recommended minimum retry interval for
/// throttled clients (HTTP-22).
///
/// ```
/// use std::time::Duration;
/// use opamp_transport::{ExponentialBackoff, RetryPolicy};
///
/// // A jitter source that always returns the top of the window.
/// let mut backoff = ExponentialBackoff::new().with_jitter_source(|| 1.0);
/// assert_eq!(backoff.next_delay(None), Duration::from_secs(1));
/// assert_eq!(backoff.next_delay(None), Duration::from_secs(2));
/// // A hint of 7 s: at least 7 s, at most a tenth more.
/// assert_eq!(backoff.next_delay(Some(Duration::from_secs(7))), Duration::from_millis(7700));
/// backoff.reset();
/// assert_eq!(backoff.next_delay(None), Duration::from_secs(1));
/// ```
pub struct ExponentialBackoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    max_hint: Duration,
    attempt: u32,
    jitter: JitterSource,
}

impl ExponentialBackoff {
    /// Default first window: 1 s.
    pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
    /// Default growth factor per attempt: 2.
    pub const DEFAULT_MULTIPLIER: f64 = 2.0;
    /// Default largest window: 60 s.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(60);
    /// Default cap on server hints: 1 hour.
    pub const DEFAULT_MAX_HINT: Duration = Duration::from_secs(3600);

    /// A backoff with the documented defaults and a random jitter source.
    pub fn new() -> Self {
        Self {
            initial: Self::DEFAULT_INITIAL,
            multiplier: Self::DEFAULT_MULTIPLIER,
            max: Self::DEFAULT_MAX,
            max_hint: Self::DEFAULT_MAX_HINT,
            attempt: 0,
            jitter: Box::new(rand::random::<f64>),
        }
    }

    crate::builder_setters! {
        /// Sets the first window.
        pub fn with_initial(initial: Duration) => initial = initial;

        /// Sets the largest window.
        pub fn with_max(max: Duration) => max = max;

        /// Sets the cap applied to server hints.
        pub fn with_max_hint(max_hint: Duration) => max_hint = max_hint;

        /// Replaces the random source, for deterministic tests or a seeded
        /// generator. It must return a fraction in `[0, 1)`; values outside are
        /// clamped.
        pub fn with_jitter_source(source: impl FnMut() -> f64 + Send + Sync + 'static)
            => jitter = Box::new(source);
    }

    /// Sets the growth factor. Values below 1 (or NaN) are treated as 1: the
    /// window never shrinks.
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        self
    }

    /// A factory making default backoffs, for options that take a
    /// [`RetryPolicyFactory`].
    pub fn default_factory() -> RetryPolicyFactory {
        Arc::new(|| Box::new(Self::new()))
    }

    /// The upper bound of the current window.
    fn window(&self) -> Duration {
        let exponent = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let seconds = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ExponentialBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExponentialBackoff")
            .field("initial", &self.initial)
            .field("multiplier", &self.multiplier)
            .field("max", &self.max)
            .field("max_hint", &self.max_hint)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let window = self.window();
        self.attempt = self.attempt.saturating_add(1);
        let fraction = (self.jitter)();
        // `clamp` keeps NaN, so treat anything not in range as 0.
        let fraction = if (0.0..=1.0).contains(&fraction) {
            fraction
        } else {
            0.0
        };
        if let Some(hint) = hint {
            // Never earlier than the server asked, but spread over the next
            // tenth of it: a fleet told "come back in 20 s" at the same
            // moment must not return in one wave.
            let hint = hint.min(self.max_hint);
            let spread = hint.mul_f64(HINT_SPREAD * fraction);
            return hint.saturating_add(spread).min(self.max_hint.max(hint));
        }
        window.mul_f64(fraction)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The server's retry hint carried in a message: `retry_info` of an
/// `error_response` whose type is UNAVAILABLE (ERR-07, WS-23). Other error
/// types carry no meaningful hint.
pub fn retry_info_hint(message: &ServerToAgent) -> Option<Duration> {
    let error = message.error_response.as_ref()?;
    if error.r#type != ServerErrorResponseType::Unavailable as i32 {
        return None;
    }
    match error.details.as_ref()? {
        server_error_response::Details::RetryInfo(info) => {
            Some(Duration::from_nanos(info.retry_after_nanoseconds))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::{RetryInfo, ServerErrorResponse};
    use std::sync::Mutex;

    fn fixed(fraction: f64) -> ExponentialBackoff {
        ExponentialBackoff::new().with_jitter_source(move || fraction)
    }

    /// CONN-03: the window grows exponentially up to the cap.
    #[test]
    fn conn_03_window_grows_exponentially_and_is_capped() {
        let mut backoff = fixed(1.0);
        let delays: Vec<u64> = (0..9).map(|_| backoff.next_delay(None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    /// CONN-03: full jitter scales the window by the random fraction.
    #[test]
    fn conn_03_full_jitter_scales_the_window() {
        let fractions = Arc::new(Mutex::new(vec![0.0, 0.5, 0.25, 0.999].into_iter()));
        let source = Arc::clone(&fractions);
        let mut backoff = ExponentialBackoff::new()
            .with_initial(Duration::from_millis(100))
            .with_multiplier(3.0)
            .with_max(Duration::from_secs(10))
            .with_jitter_source(move || source.lock().unwrap().next().unwrap());
        assert_eq!(backoff.next_delay(None), Duration::ZERO);
        assert_eq!(backoff.next_delay(None), Duration::from_millis(150));
        assert_eq!(backoff.next_delay(None), Duration::from_millis(225));
        assert_eq!(
            backoff.next_delay(None),
            Duration::from_millis(2700).mul_f64(0.999)
        );
    }

    #[test]
    fn default_source_stays_inside_the_window() {
        let mut backoff = ExponentialBackoff::new();
        for attempt in 0..20u32 {
            let window = Duration::from_secs(1u64 << attempt.min(10)).min(Duration::from_secs(60));
            assert!(backoff.next_delay(None) <= window);
        }
    }

    /// CONN-04, HTTP-21, WS-23: a hint replaces the computed delay, capped.
    #[test]
    fn conn_04_server_hint_overrides_and_is_capped() {
        let mut backoff = fixed(1.0).with_max_hint(Duration::from_secs(600));
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(90))),
            Duration::from_secs(99)
        );
        assert_eq!(backoff.next_delay(Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(u64::MAX))),
            Duration::from_secs(600)
        );
        // The sequence advanced through the hinted attempts.
        assert_eq!(backoff.next_delay(None), Duration::from_secs(8));
    }

    /// HTTP-22: agents told the same Retry-After are spread after it, never
    /// before it.
    #[test]
    fn http_22_hinted_delays_are_spread_but_never_early() {
        let hint = Duration::from_secs(20);
        let earliest = fixed(0.0).next_delay(Some(hint));
        let latest = fixed(0.999).next_delay(Some(hint));
        assert_eq!(earliest, hint);
        assert!(latest > hint && latest <= hint + hint / 10, "{latest:?}");
        let mut real = ExponentialBackoff::new();
        for _ in 0..100 {
            let delay = real.next_delay(Some(hint));
            assert!(delay >= hint && delay <= hint + hint / 10, "{delay:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = fixed(1.0);
        for _ in 0..5 {
            backoff.next_delay(None);
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(None), Duration::from_secs(1));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let mut backoff = fixed(f64::NAN)
            .with_multiplier(f64::NAN)
            .with_initial(Duration::MAX)
            .with_max(Duration::from_secs(5));
        assert_eq!(backoff.next_delay(None), Duration::ZERO);
        let mut backoff = fixed(7.0).with_multiplier(0.5);
        assert_eq!(backoff.next_delay(None), Duration::ZERO);
        let mut backoff = fixed(1.0).with_multiplier(1e300);
        for _ in 0..100 {
            assert!(backoff.next_delay(None) <= ExponentialBackoff::DEFAULT_MAX);
        }
        let mut backoff = fixed(1.0);
        backoff.attempt = u32::MAX;
        assert_eq!(backoff.next_delay(None), ExponentialBackoff::DEFAULT_MAX);
    }

    #[test]
    fn factory_makes_independent_policies() {
        let factory = ExponentialBackoff::default_factory();
        let mut first = factory();
        let mut second = factory();
        first.next_delay(None);
        first.next_delay(None);
        assert!(second.next_delay(None) <= Duration::from_secs(1));
    }

    /// ERR-07, WS-23: only UNAVAILABLE carries a retry hint.
    #[test]
    fn err_07_retry_info_only_counts_for_unavailable() {
        let message = |kind: ServerErrorResponseType, nanos: Option<u64>| ServerToAgent {
            error_response: Some(ServerErrorResponse {
                r#type: kind as i32,
                error_message: String::new(),
                details: nanos.map(|n| {
                    server_error_response::Details::RetryInfo(RetryInfo {
                        retry_after_nanoseconds: n,
                    })
                }),
            }),
            ..Default::default()
        };
        assert_eq!(
            retry_info_hint(&message(
                ServerErrorResponseType::Unavailable,
                Some(2_500_000_000)
            )),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            retry_info_hint(&message(ServerErrorResponseType::Unavailable, None)),
            None
        );
        assert_eq!(
            retry_info_hint(&message(ServerErrorResponseType::BadRequest, Some(5))),
            None
        );
        assert_eq!(retry_info_hint(&ServerToAgent::default()), None);
    }
}
