//! What the commands that talk to a running service share: the failure of one request and
//! sending it again under the one retry policy (`projections::RetryPolicy`), honouring
//! `Retry-After`.

use std::future::Future;
use std::time::Duration;

use projections::retry::RetryOutcome;
use projections::RetryPolicy;
use tokio_util::sync::CancellationToken;

/// Why a request got no usable answer.
pub(crate) enum PostError {
    /// It may succeed when sent again (after at least `retry_after`).
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
    /// The service refused the whole request, or answered nonsense.
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for PostError {
    fn from(e: anyhow::Error) -> Self {
        PostError::Fatal(e)
    }
}

/// Whether an HTTP status asks for the request again (429, 502, 503, 504), and after how
/// long at least (`Retry-After` in seconds).
pub(crate) fn transient_status(res: &reqwest::Response) -> Option<Option<Duration>> {
    matches!(res.status().as_u16(), 429 | 502 | 503 | 504).then(|| {
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

/// Runs `post` until it answers, fails for good, or `policy`'s attempts run out;
/// `on_retry(attempt, why)` is told each transient failure before the wait.
///
/// # Errors
/// The fatal error, or the last transient one once the attempts ran out.
pub(crate) async fn send_retrying<T, F, Fut>(
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(u32, &str),
    post: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PostError>>,
{
    let sent = policy
        .run_waiting_at_least(
            &CancellationToken::new(),
            |e| matches!(e, PostError::Transient { .. }),
            |e| match e {
                PostError::Transient { retry_after, .. } => *retry_after,
                PostError::Fatal(_) => None,
            },
            |attempt, e| {
                if let PostError::Transient { why, .. } = e {
                    on_retry(attempt, why);
                }
            },
            post,
        )
        .await;
    match sent {
        Ok(answer) => Ok(answer),
        Err(RetryOutcome::Failed(PostError::Fatal(e))) => Err(e),
        Err(RetryOutcome::Failed(PostError::Transient { why, .. })) => Err(anyhow::anyhow!(
            "gave up after {} attempts: {why}",
            policy.max_attempts.unwrap_or_default()
        )),
        Err(RetryOutcome::Cancelled) => Err(anyhow::anyhow!("cancelled")),
    }
}
