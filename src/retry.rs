//! Retrying transient failures: capped exponential backoff with full jitter, bounded by a
//! number of attempts (`WALE_RETRIES`) and by a wall-clock deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::config::RetryPolicy;

/// What the retry loop needs to know about an error.
pub trait Retryable: std::fmt::Display {
    /// Whether another attempt may succeed.
    fn is_retryable(&self) -> bool;
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's attempts or
/// deadline run out; the last error is returned. Each retry is logged as a warning.
pub async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        failures += 1;
        if !err.is_retryable() || failures >= policy.max_attempts {
            return Err(err);
        }
        let delay = backoff(policy, failures);
        if started.elapsed() + delay > policy.deadline {
            return Err(err);
        }
        tracing::warn!(
            "{what}: attempt {failures} of {} failed, retrying in {:.1}s: {err}",
            policy.max_attempts,
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

/// The pause after the `failures`-th failure: uniformly random in [d/2, d], with
/// d = base × 2^(failures-1) capped at the policy's maximum.
pub(crate) fn backoff(policy: &RetryPolicy, failures: u32) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << (failures - 1).min(20))
        .min(policy.max_delay);
    exp.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    struct E(bool);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "E({})", self.0)
        }
    }
    impl Retryable for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            deadline: Duration::from_secs(5),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = Cell::new(0);
        let out: Result<u32, E> = with_retries(&fast(5), "t", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(E(true)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(out.unwrap(), 3);
    }

    #[tokio::test]
    async fn stops_at_permanent_errors_and_at_the_attempt_limit() {
        let calls = Cell::new(0);
        let out: Result<(), E> = with_retries(&fast(5), "t", || {
            calls.set(calls.get() + 1);
            async { Err(E(false)) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.get(), 1);
        calls.set(0);
        let _: Result<(), E> = with_retries(&fast(4), "t", || {
            calls.set(calls.get() + 1);
            async { Err(E(true)) }
        })
        .await;
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test]
    async fn stops_at_the_deadline() {
        let mut policy = fast(1000);
        policy.deadline = Duration::from_millis(30);
        let started = Instant::now();
        let _: Result<(), E> = with_retries(&policy, "t", || async { Err(E(true)) }).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy::default();
        for failures in 1..40 {
            let d = backoff(&policy, failures);
            assert!(d <= policy.max_delay && d >= policy.base_delay / 2);
        }
    }
}
