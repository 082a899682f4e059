//! Bounded waiting helpers: poll until a condition holds, or bound a future by a timeout.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;

/// Poll interval used by [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `f` every 20 ms until it returns `Ok`, or fails with the last error after `timeout`.
///
/// Each individual call is itself bounded by the remaining time, so a hanging `f` cannot hang the test.
pub async fn eventually<F, Fut, T>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = match tokio::time::timeout(remaining, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("attempt did not finish in time"),
        };
        if tokio::time::Instant::now() + POLL_INTERVAL >= deadline {
            return Err(err.context(format!("condition not met within {timeout:?} ({attempts} attempts)")));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `fut`, failing with a descriptive error if it takes longer than `timeout`.
pub async fn within<T>(timeout: Duration, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("timed out after {timeout:?}"))
}
