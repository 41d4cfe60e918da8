//! The only sleep-and-retry in the tree: exponential backoff with full jitter, capped.
//!
//! Callers hand it an operation and a classifier; transient failures are retried (forever
//! unless `max_attempts` is set), anything else is returned at once. Cancellation ends the
//! wait immediately.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay ceiling.
    pub base: Duration,
    /// Largest delay ceiling.
    pub max: Duration,
    /// Give up after this many attempts (None = never).
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            max: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

/// Why [`RetryPolicy::run`] stopped without a result.
#[derive(Debug)]
pub enum RetryOutcome<E> {
    /// The operation failed with an error the classifier does not retry, or attempts ran out.
    Failed(E),
    /// Cancelled while waiting.
    Cancelled,
}

impl RetryPolicy {
    /// The ceiling of the delay before attempt `attempt` (1-based count of failures so far).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]` (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_micros() as u64;
        Duration::from_micros(rand::rng().random_range(0..=ceiling))
    }

    /// Sleeps the jittered delay before attempt `attempt + 1`, for loops that cannot be
    /// expressed as one operation (a reconnecting listener).
    pub async fn backoff(&self, attempt: u32) {
        tokio::time::sleep(self.delay(attempt)).await;
    }

    /// Runs `op` until it succeeds, fails with an error `retryable` refuses, or is cancelled.
    /// `on_retry(attempt, &error)` is called before each wait (for logs and metrics).
    ///
    /// # Errors
    /// [`RetryOutcome::Failed`] with the last error, or [`RetryOutcome::Cancelled`].
    pub async fn run<T, E, F, Fut>(
        &self,
        cancel: &CancellationToken,
        retryable: impl Fn(&E) -> bool,
        on_retry: impl FnMut(u32, &E),
        op: F,
    ) -> Result<T, RetryOutcome<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_waiting_at_least(cancel, retryable, |_| None, on_retry, op)
            .await
    }

    /// [`RetryPolicy::run`], where an error may name the least wait before the next attempt
    /// (`at_least`: an HTTP `Retry-After`, say); the jittered delay is raised to it.
    /// `on_retry(attempt, &error)` is called before each wait.
    ///
    /// # Errors
    /// As [`RetryPolicy::run`].
    pub async fn run_waiting_at_least<T, E, F, Fut>(
        &self,
        cancel: &CancellationToken,
        retryable: impl Fn(&E) -> bool,
        at_least: impl Fn(&E) -> Option<Duration>,
        mut on_retry: impl FnMut(u32, &E),
        mut op: F,
    ) -> Result<T, RetryOutcome<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    attempt += 1;
                    let exhausted = self.max_attempts.is_some_and(|m| attempt >= m);
                    if !retryable(&e) || exhausted {
                        return Err(RetryOutcome::Failed(e));
                    }
                    on_retry(attempt, &e);
                    let wait = self.delay(attempt).max(at_least(&e).unwrap_or_default());
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(RetryOutcome::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_exponentially_and_caps() {
        let p = RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            max_attempts: None,
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(10));
        assert_eq!(p.ceiling(2), Duration::from_millis(20));
        assert_eq!(p.ceiling(4), Duration::from_millis(80));
        assert_eq!(p.ceiling(5), Duration::from_millis(100));
        assert_eq!(p.ceiling(500), Duration::from_millis(100));
        for a in 1..10 {
            assert!(p.delay(a) <= p.ceiling(a));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_until_success_and_stops_on_permanent() {
        let p = RetryPolicy::default();
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let r: Result<u32, RetryOutcome<&str>> = p
            .run(
                &cancel,
                |e| *e == "transient",
                |_, _| {},
                || {
                    calls += 1;
                    let c = calls;
                    async move {
                        if c < 4 {
                            Err("transient")
                        } else {
                            Ok(c)
                        }
                    }
                },
            )
            .await;
        assert_eq!(r.ok(), Some(4));

        let mut calls = 0;
        let r: Result<u32, RetryOutcome<&str>> = p
            .run(
                &cancel,
                |e| *e == "transient",
                |_, _| {},
                || {
                    calls += 1;
                    async { Err("permanent") }
                },
            )
            .await;
        assert!(matches!(r, Err(RetryOutcome::Failed("permanent"))));
        assert_eq!(calls, 1);
    }
}
