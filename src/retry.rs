//! Retrying transient failures: capped exponential backoff with full jitter, bounded by a
//! number of attempts (`WALE_RETRIES`) and by a wall-clock deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::config::RetryPolicy;

/// What the retry loop needs to know about an error.
pub trait Retryable: std::fmt::Display {
    /// Whether another attempt may succeed.
    fn is_retryable(&self) -> bool;

    /// Whether the store could not be reached at all (see
    /// [`RetryPolicy::unreachable_limit`]).
    fn is_unreachable(&self) -> bool {
        false
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's attempts or
/// deadline run out; the last error is returned. Each retry is logged at debug level
/// (`-v`): the caller reports the failure that ends the command, in one line.
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
    let mut budget = Backoff::new(policy);
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if !err.is_retryable() {
            return Err(err);
        }
        let Some(delay) = budget.next_delay() else {
            return Err(err);
        };
        if err.is_unreachable()
            && policy
                .unreachable_limit
                .is_some_and(|limit| budget.elapsed() + delay > limit)
        {
            tracing::debug!(
                "{what}: giving up after {} attempts in {:.1}s: the store cannot be reached",
                budget.failures(),
                budget.elapsed().as_secs_f64()
            );
            return Err(err);
        }
        tracing::debug!(
            "{what}: attempt {} of {} failed, retrying in {:.1}s: {err}",
            budget.failures(),
            policy.max_attempts,
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

/// The retry budget of one operation under a policy: how long to wait after each failure,
/// until the attempts or the deadline run out. Shared by async callers
/// ([`with_retries`]) and blocking ones (a body resumed by range), so both back off alike.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    started: Instant,
}

impl Backoff {
    /// A fresh budget, starting now.
    pub fn new(policy: &RetryPolicy) -> Backoff {
        Backoff {
            policy: *policy,
            failures: 0,
            started: Instant::now(),
        }
    }

    /// Counts a failure; the pause before the next attempt, or `None` when the attempts
    /// or the deadline are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= self.policy.max_attempts {
            return None;
        }
        let delay = backoff(&self.policy, self.failures);
        (self.started.elapsed() + delay <= self.policy.deadline).then_some(delay)
    }

    /// Time since the budget started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Progress was made: the budget starts afresh.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.started = Instant::now();
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
            unreachable_limit: None,
        }
    }

    /// An error that says the store cannot be reached.
    #[derive(Debug)]
    struct Refused;
    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "connection refused")
        }
    }
    impl Retryable for Refused {
        fn is_retryable(&self) -> bool {
            true
        }
        fn is_unreachable(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_ends_interactive_retries_early_only() {
        let patient = RetryPolicy {
            max_delay: Duration::from_millis(20),
            ..fast(30)
        };
        let interactive = RetryPolicy {
            unreachable_limit: Some(Duration::from_millis(50)),
            ..patient
        };
        let count = |policy: RetryPolicy| async move {
            let calls = Cell::new(0);
            let out: Result<(), Refused> = with_retries(&policy, "t", || {
                calls.set(calls.get() + 1);
                async { Err(Refused) }
            })
            .await;
            assert!(out.is_err());
            calls.get()
        };
        assert_eq!(count(patient).await, 30, "wal-fetch keeps its whole policy");
        let interactive_calls = count(interactive).await;
        assert!(
            (2..30).contains(&interactive_calls),
            "interactive commands give up after the limit: {interactive_calls} calls"
        );
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
        // Pauses of 10-20 ms within a 100 ms deadline: between 5 and 11 attempts, far
        // below the attempt limit, so only the deadline can have stopped it.
        let mut policy = fast(1000);
        policy.base_delay = Duration::from_millis(20);
        policy.max_delay = Duration::from_millis(20);
        policy.deadline = Duration::from_millis(100);
        let calls = Cell::new(0);
        let started = Instant::now();
        let _: Result<(), E> = with_retries(&policy, "t", || {
            calls.set(calls.get() + 1);
            async { Err(E(true)) }
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!((5..=11).contains(&calls.get()), "{} attempts", calls.get());
    }

    #[test]
    fn a_budget_resets_after_progress() {
        let mut budget = Backoff::new(&fast(3));
        assert!(budget.next_delay().is_some());
        assert!(budget.next_delay().is_some());
        assert_eq!(budget.next_delay(), None);
        budget.reset();
        assert_eq!(budget.failures(), 0);
        assert!(budget.next_delay().is_some());
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
