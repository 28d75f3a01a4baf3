//! When to retry a GitHub call, decided from the response alone (a pure function, tested without a
//! network).
//!
//! Retried: 5xx, 429, and the 403 that GitHub uses for rate limits (it carries `retry-after`, or
//! `x-ratelimit-remaining: 0` with `x-ratelimit-reset`), plus transport errors. Every other 4xx is the
//! caller's mistake and retrying cannot fix it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each later one.
    pub base_delay: Duration,
    /// No wait exceeds this, whatever GitHub asks for: a request that would have to wait longer
    /// fails after its attempts and the caller's own retry (a redelivery, the next update) takes over.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// The response is final (success, or an error retrying cannot fix).
    Done,
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Worth retrying, but the attempts are used up.
    GiveUp,
}

impl RetryPolicy {
    /// Decides after `attempt` (1-based) got `status` with `headers`; `now` is passed in for
    /// `x-ratelimit-reset`, an absolute epoch time.
    pub fn decide(
        &self,
        attempt: u32,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> RetryDecision {
        let server_wait = server_requested_wait(headers, now);
        let retryable = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && server_wait.is_some());
        if !retryable {
            return RetryDecision::Done;
        }
        self.next(attempt, server_wait)
    }

    /// Decides after a transport error (connection refused or reset, timeout).
    pub fn decide_transport_error(&self, attempt: u32) -> RetryDecision {
        self.next(attempt, None)
    }

    fn next(&self, attempt: u32, server_wait: Option<Duration>) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let backoff = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        // GitHub's own figure wins when it asks for longer than our backoff.
        let wait = server_wait.map_or(backoff, |w| w.max(backoff));
        RetryDecision::RetryAfter(wait.min(self.max_delay))
    }
}

/// `retry-after` (seconds) or, when the limit is exhausted, the time until `x-ratelimit-reset`.
fn server_requested_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())
    {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        // A reset already past still means "limited": retry after the minimum backoff.
        return Some(Duration::from_secs(reset.saturating_sub(now)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const NOW_SECS: u64 = 1_700_000_000;
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    #[test]
    fn success_and_plain_client_errors_are_final() {
        let p = policy();
        for status in [200, 201, 204, 400, 401, 404, 422] {
            let s = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                p.decide(1, s, &HeaderMap::new(), now()),
                RetryDecision::Done,
                "{status}"
            );
        }
        // A 403 without rate-limit headers is a permission problem.
        assert_eq!(
            p.decide(1, StatusCode::FORBIDDEN, &HeaderMap::new(), now()),
            RetryDecision::Done
        );
        // Remaining > 0 with a reset header is an ordinary 403 too.
        let h = headers(&[
            ("x-ratelimit-remaining", "12"),
            ("x-ratelimit-reset", "1700000100"),
        ]);
        assert_eq!(
            p.decide(1, StatusCode::FORBIDDEN, &h, now()),
            RetryDecision::Done
        );
    }

    #[test]
    fn server_errors_back_off_exponentially_then_give_up() {
        let p = policy();
        let h = HeaderMap::new();
        assert_eq!(
            p.decide(1, StatusCode::BAD_GATEWAY, &h, now()),
            RetryDecision::RetryAfter(Duration::from_millis(100))
        );
        assert_eq!(
            p.decide(2, StatusCode::SERVICE_UNAVAILABLE, &h, now()),
            RetryDecision::RetryAfter(Duration::from_millis(200))
        );
        assert_eq!(
            p.decide(3, StatusCode::INTERNAL_SERVER_ERROR, &h, now()),
            RetryDecision::RetryAfter(Duration::from_millis(400))
        );
        assert_eq!(
            p.decide(4, StatusCode::BAD_GATEWAY, &h, now()),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn secondary_rate_limit_honours_retry_after() {
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            policy().decide(1, StatusCode::FORBIDDEN, &h, now()),
            RetryDecision::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            policy().decide(1, StatusCode::TOO_MANY_REQUESTS, &h, now()),
            RetryDecision::RetryAfter(Duration::from_secs(7))
        );
    }

    #[test]
    fn primary_rate_limit_waits_until_reset_capped() {
        let reset = (NOW_SECS + 12).to_string();
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
        ]);
        assert_eq!(
            policy().decide(1, StatusCode::FORBIDDEN, &h, now()),
            RetryDecision::RetryAfter(Duration::from_secs(12))
        );
        let far = (NOW_SECS + 3600).to_string();
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &far)]);
        assert_eq!(
            policy().decide(1, StatusCode::FORBIDDEN, &h, now()),
            RetryDecision::RetryAfter(Duration::from_secs(30))
        );
        // A reset in the past still retries, after the plain backoff.
        let past = (NOW_SECS - 5).to_string();
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &past)]);
        assert_eq!(
            policy().decide(1, StatusCode::FORBIDDEN, &h, now()),
            RetryDecision::RetryAfter(Duration::from_millis(100))
        );
    }

    #[test]
    fn transport_errors_retry() {
        assert_eq!(
            policy().decide_transport_error(1),
            RetryDecision::RetryAfter(Duration::from_millis(100))
        );
        assert_eq!(policy().decide_transport_error(4), RetryDecision::GiveUp);
    }
}
