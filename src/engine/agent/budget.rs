//! What stops an agent spending: job budgets, a repository's daily cost cap, and the back-off
//! after API rate limits (which does not count as an attempt).

use crate::types::Usage;
use crate::workflow::Budget;

/// Since when a repository's daily cost cap counts: the last UTC midnight.
pub fn utc_midnight(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// Why a repository's daily cost cap stops its jobs, or None while there is room.
pub fn repo_daily_spent(repo: &str, spent: f64, cap: f64) -> Option<String> {
    (spent >= cap).then(|| {
        format!(
            "${spent:.4} spent today (UTC) by the agents of {repo}, the operator's daily cap of \
             ${cap:.2} per repository (it resets at 00:00 UTC)"
        )
    })
}

/// Why a budget stops dispatching, or None while there is room.
pub fn budget_spent(budget: &Budget, used: &Usage, elapsed: std::time::Duration) -> Option<String> {
    if let Some(max) = budget.max_cost_usd
        && used.cost_usd >= max
    {
        return Some(format!("${:.4} spent of a ${max:.2} budget", used.cost_usd));
    }
    if let Some(max) = budget.max_tokens
        && used.tokens() >= max
    {
        return Some(format!(
            "{} tokens used of a {max} token budget",
            used.tokens()
        ));
    }
    if let Some(max) = budget.max_duration
        && elapsed >= max
    {
        return Some(format!(
            "{}s of wall time used of a {}s budget",
            elapsed.as_secs(),
            max.as_secs()
        ));
    }
    None
}

/// Back-off for items whose agent hit an API rate limit or overload after the CLI's own retries:
/// exponential with full jitter, never shorter than the delay the CLI last chose (it honours the
/// API's `retry-after`), and not counted as an attempt.
#[derive(Debug, Clone, Copy)]
pub struct ApiBackoff {
    pub base: std::time::Duration,
    pub max: std::time::Duration,
    /// Back-offs per attempt before the failure counts like any other.
    pub max_retries: u32,
}

impl Default for ApiBackoff {
    fn default() -> Self {
        // PRODIGY_API_BACKOFF_MS scales the base (tests use a few milliseconds).
        let base_ms = std::env::var("PRODIGY_API_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5_000);
        ApiBackoff {
            base: std::time::Duration::from_millis(base_ms),
            max: std::time::Duration::from_millis(base_ms.saturating_mul(60)),
            max_retries: 5,
        }
    }
}

impl ApiBackoff {
    /// The wait before back-off number `n` (1-based); `hint_ms` is the CLI's last retry delay.
    pub fn delay(&self, n: u32, hint_ms: Option<u64>) -> std::time::Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max);
        // Full jitter: anywhere in [ceiling/2, ceiling], so agents that failed together spread.
        let jitter = (uuid::Uuid::now_v7().as_u128() & 0xffff) as f64 / 65535.0;
        let d = ceiling.mul_f64(0.5 + 0.5 * jitter);
        let floor = std::time::Duration::from_millis(hint_ms.unwrap_or(0)).min(self.max);
        d.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_grows_stays_capped_and_honours_the_clis_delay() {
        let b = ApiBackoff {
            base: std::time::Duration::from_millis(100),
            max: std::time::Duration::from_millis(1000),
            max_retries: 5,
        };
        for n in 1..=8 {
            let d = b.delay(n, None).as_millis();
            let ceiling = (100u128 << (n - 1)).min(1000);
            assert!(d >= ceiling / 2 && d <= ceiling, "try {n}: {d} ms");
        }
        assert!(b.delay(1, Some(700)).as_millis() >= 700);
    }
}
