//! Keeping a short-lived certificate fresh: obtained, then renewed at half
//! its remaining lifetime (so it never expires under a live connection),
//! failures retried with capped backoff. Pod certificates and a node's own
//! credentials follow the same rhythm.
use std::{
    future::Future,
    time::{Duration, SystemTime},
};

/// Retry delays after a failure: quick at first, then capped.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Calls `fetch` until it succeeds; each failure goes to `failed` with the
/// delay before the next try.
pub async fn until_obtained<T, E, Fut>(
    mut fetch: impl FnMut() -> Fut,
    mut failed: impl FnMut(E, Duration),
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = RETRY_FIRST;
    loop {
        match fetch().await {
            Ok(obtained) => return obtained,
            Err(e) => {
                failed(e, retry);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Renews forever: waits half of what remains until `valid_until`, then
/// obtains a new one ([`until_obtained`]) and hands it to `store`.
pub async fn keep_renewed<T, E, Fut>(
    mut valid_until: Option<SystemTime>,
    mut fetch: impl FnMut() -> Fut,
    not_after: impl Fn(&T) -> SystemTime,
    mut store: impl FnMut(T),
    mut failed: impl FnMut(E, Duration),
) where
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        if let Some(until) = valid_until {
            let remaining = until.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(remaining / 2).await;
        }
        let obtained = until_obtained(&mut fetch, &mut failed).await;
        valid_until = Some(not_after(&obtained));
        store(obtained);
    }
}
