use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// Reads a `Retry-After` header value: either delta-seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`
/// (HTTP-13, WS-24).
///
/// A date in the past means "retry now" (`Duration::ZERO`). Anything else
/// (negative numbers, garbage) is `None`: the caller falls back to its own
/// backoff rather than trusting a value it cannot read.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use opamp_transport::parse_retry_after;
///
/// let now = SystemTime::now();
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("30"), now), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurd values instead of failing: "wait a very long time".
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, now: SystemTime) -> Option<Duration> {
        parse_retry_after(&HeaderValue::from_str(text).unwrap(), now)
    }

    #[test]
    fn http_13_delta_seconds() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(parse("0", now), Some(Duration::ZERO));
        assert_eq!(parse(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse("-5", now), None);
        assert_eq!(parse("1.5", now), None);
        assert_eq!(parse("", now), None);
    }

    #[test]
    fn http_13_http_date_relative_to_now() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let at = httpdate::parse_http_date(date).unwrap();
        assert_eq!(
            parse(date, at - Duration::from_secs(90)),
            Some(Duration::from_secs(90))
        );
        // A date already past means retry at once.
        assert_eq!(
            parse(date, at + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37", at), None);
    }
}
