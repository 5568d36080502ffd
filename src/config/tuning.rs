//! Tuning from the environment: retry limits and prefetch settings.

use std::time::Duration;

use super::{Env, Error};

/// Prefetch settings from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchSettings {
    /// `WALE_PREFETCH_DIR`: the prefetch area, instead of `<pg_wal>/.wal-e/prefetch`
    /// (outside `pg_wal` is better for `pg_rewind`; same file system as `pg_wal`).
    pub dir: Option<String>,
    /// `WALE_PREFETCH_IDLE_SECONDS`: the prefetcher exits after this long without a
    /// request (default 60).
    pub idle: Duration,
    /// `WALE_PREFETCH_MAX_BYTES`: the most decompressed bytes the prefetch area may hold
    /// (default 1 GiB); caps `--prefetch` for large segments.
    pub max_bytes: u64,
}

/// Limits on retrying transient storage failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, first included (`WALE_RETRIES`, default 100 as in WAL-E).
    pub max_attempts: u32,
    /// Wall-clock budget for all attempts (`WALE_RETRY_DEADLINE` seconds, default 600), so a
    /// `restore_command` never hangs for WAL-E's 2.7 hours.
    pub deadline: Duration,
    /// First backoff; doubles per failure, with jitter.
    pub base_delay: Duration,
    /// Cap on one backoff.
    pub max_delay: Duration,
    /// How long to keep trying a store that cannot be reached at all (connection refused,
    /// unknown host). `None` (wal-fetch, the prefetcher) uses the whole policy: a standby
    /// should ride out a store's restart. Interactive commands set a few seconds
    /// ([`RetryPolicy::interactive`]): a person is waiting, and a typo in the endpoint
    /// should not cost them ten minutes.
    pub unreachable_limit: Option<Duration>,
}

impl RetryPolicy {
    /// How long an interactive command keeps trying a store it cannot reach.
    pub const INTERACTIVE_UNREACHABLE_LIMIT: Duration = Duration::from_secs(5);

    /// The policy for a command a person runs and waits for.
    pub fn interactive(self) -> RetryPolicy {
        RetryPolicy {
            unreachable_limit: Some(Self::INTERACTIVE_UNREACHABLE_LIMIT),
            ..self
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 100,
            deadline: Duration::from_secs(600),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            unreachable_limit: None,
        }
    }
}

pub(super) fn retry_policy(env: &Env) -> Result<RetryPolicy, Error> {
    let mut policy = RetryPolicy::default();
    if let Some(value) = env.non_empty("WALE_RETRIES") {
        policy.max_attempts = match value.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(Error::BadValue {
                    name: "WALE_RETRIES",
                    value: value.to_string(),
                    reason: "expected a whole number of attempts, at least 1",
                });
            }
        };
    }
    if let Some(value) = env.non_empty("WALE_RETRY_DEADLINE") {
        let seconds = value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| Error::BadValue {
                name: "WALE_RETRY_DEADLINE",
                value: value.to_string(),
                reason: "expected a number of seconds",
            })?;
        policy.deadline = Duration::from_secs_f64(seconds);
    }
    Ok(policy)
}

pub(super) fn prefetch_settings(env: &Env) -> Result<PrefetchSettings, Error> {
    let idle = match env.non_empty("WALE_PREFETCH_IDLE_SECONDS") {
        None => Duration::from_secs(60),
        Some(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Error::BadValue {
                name: "WALE_PREFETCH_IDLE_SECONDS",
                value: value.to_string(),
                reason: "expected a number of seconds",
            })?,
    };
    let max_bytes = match env.non_empty("WALE_PREFETCH_MAX_BYTES") {
        None => 1 << 30,
        Some(value) => value.trim().parse::<u64>().map_err(|_| Error::BadValue {
            name: "WALE_PREFETCH_MAX_BYTES",
            value: value.to_string(),
            reason: "expected a number of bytes",
        })?,
    };
    Ok(PrefetchSettings {
        dir: env.non_empty("WALE_PREFETCH_DIR").map(str::to_string),
        idle,
        max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::{Config, GlobalFlags};

    #[test]
    fn retries_come_from_wale_retries() {
        let mut pairs = s3_env();
        pairs.push(("WALE_RETRIES", "3"));
        pairs.push(("WALE_RETRY_DEADLINE", "1.5"));
        let c = Config::resolve(&GlobalFlags::default(), &env(&pairs)).unwrap();
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.deadline, Duration::from_millis(1500));
        pairs.push(("WALE_RETRIES", "0"));
        let mut bad = s3_env();
        bad.push(("WALE_RETRIES", "0"));
        assert!(Config::resolve(&GlobalFlags::default(), &env(&bad)).is_err());
    }

    #[test]
    fn prefetch_settings_come_from_the_environment() {
        let c = Config::resolve(&GlobalFlags::default(), &env(&s3_env())).unwrap();
        assert_eq!(c.prefetch.idle, Duration::from_secs(60));
        assert_eq!(c.prefetch.max_bytes, 1 << 30);
        let mut pairs = s3_env();
        pairs.extend([
            ("WALE_PREFETCH_DIR", "/srv/prefetch"),
            ("WALE_PREFETCH_IDLE_SECONDS", "2.5"),
            ("WALE_PREFETCH_MAX_BYTES", "67108864"),
        ]);
        let c = Config::resolve(&GlobalFlags::default(), &env(&pairs)).unwrap();
        assert_eq!(c.prefetch.dir.as_deref(), Some("/srv/prefetch"));
        assert_eq!(c.prefetch.idle, Duration::from_millis(2500));
        assert_eq!(c.prefetch.max_bytes, 64 << 20);
        pairs.push(("WALE_PREFETCH_MAX_BYTES", "lots"));
        assert!(Config::resolve(&GlobalFlags::default(), &env(&pairs)).is_err());
    }
}
