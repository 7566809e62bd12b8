//! One request to one backend Service, with the route's resilience: a
//! per-attempt timeout (`backendRequest`), an overall one (`request`), and
//! retries (GEP-1731: attempts, backoff, retryable codes) bounded by a
//! budget per backend, so that in an outage retries add at most a fifth to
//! the load instead of multiplying it.
//!
//! Only requests without a body are retried: a streamed body is never held
//! back to be replayed (nothing is buffered whole).
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use http::{Request, Response, StatusCode, request::Parts};
use hyper::body::Incoming;

use super::{
    FastMap, Waypoint,
    body::{self, Body},
    route::{Retry, Timeouts},
    upstream::{Endpoint, UpstreamError},
};

/// Retries allowed per window: this share of the window's requests...
const BUDGET_RATIO: f64 = 0.2;
/// ... plus this many, so a quiet backend can still be retried.
const BUDGET_MIN_RETRIES: u64 = 10;
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// What a forwarded request came back with.
pub struct Forwarded<'a> {
    pub response: Response<Incoming>,
    pub endpoint: &'a Endpoint,
    pub retries: u32,
}

/// Why the waypoint answers a request itself.
#[derive(Debug)]
pub struct Local {
    pub status: StatusCode,
    pub reason: String,
    pub retries: u32,
    /// Boxed: most local answers have none, and the type stays small.
    pub endpoint: Option<Box<Endpoint>>,
}

/// Retry budgets by backend Service.
#[derive(Default)]
pub struct Budgets(Mutex<FastMap<String, Window>>);

struct Window {
    started: Instant,
    requests: u64,
    retries: u64,
}

impl Budgets {
    fn request(&self, backend: &str) {
        self.with(backend, |w| w.requests += 1);
    }

    /// Takes one retry from `backend`'s budget, if any is left.
    fn try_retry(&self, backend: &str) -> bool {
        self.with(backend, |w| {
            let allowed = (w.requests as f64 * BUDGET_RATIO) as u64 + BUDGET_MIN_RETRIES;
            let ok = w.retries < allowed;
            if ok {
                w.retries += 1;
            }
            ok
        })
    }

    fn with<T>(&self, backend: &str, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut all = self.0.lock().expect("retry budgets");
        let now = Instant::now();
        let fresh = Window {
            started: now,
            requests: 0,
            retries: 0,
        };
        // Looked up before inserting: the key is copied only the first time.
        if !all.contains_key(backend) {
            all.insert(backend.to_owned(), fresh);
        }
        let w = all.get_mut(backend).expect("inserted above");
        if now.duration_since(w.started) > BUDGET_WINDOW {
            *w = Window {
                started: now,
                requests: 0,
                retries: 0,
            };
        }
        f(w)
    }
}

/// Sends the request (`parts` + `body`) to one of `endpoints`, retrying as
/// `retry` allows when the request has no body (`replayable`).
#[expect(clippy::too_many_arguments, reason = "one request's whole context")]
pub async fn send<'a>(
    wp: &Waypoint,
    backend: &str,
    endpoints: &'a [Endpoint],
    parts: Parts,
    body: Body,
    replayable: bool,
    timeouts: &Timeouts,
    retry: Option<&Retry>,
) -> Result<Forwarded<'a>, Local> {
    let started = Instant::now();
    let budgets = &wp.upstream.budgets;
    budgets.request(backend);
    let http2 = parts.version == http::Version::HTTP_2;
    let attempts = if replayable {
        1 + retry.map_or(0, |r| r.attempts)
    } else {
        1
    };
    let mut body = Some(body);
    let mut parts = Some(parts);
    let mut retries = 0;
    loop {
        let (endpoint, in_flight) = wp.upstream.choose(endpoints);
        let attempt_body = body.take().unwrap_or_else(body::empty);
        // The last possible attempt takes the head; earlier ones send a copy.
        let head = match parts.take() {
            Some(head) if retries + 1 < attempts => {
                let copy = clone_parts(&head);
                parts = Some(head);
                copy
            }
            Some(head) => head,
            None => unreachable!("a head is kept until the last attempt"),
        };
        let request = Request::from_parts(head, attempt_body);
        let left = timeouts
            .request
            .map(|t| t.saturating_sub(started.elapsed()));
        let limit = match (left, timeouts.backend_request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sent = wp.upstream.send(wp, endpoint, request, http2);
        let outcome = match limit {
            Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
            None => Some(sent.await),
        };
        drop(in_flight);
        let request_timed_out = timeouts.request.is_some_and(|t| started.elapsed() >= t);
        let failure = match outcome {
            Some(Ok(response)) => {
                let status = response.status();
                wp.upstream.outcome(endpoint, status.is_server_error());
                let retryable = retry.is_some_and(|r| r.codes.contains(&status.as_u16()));
                if !retryable {
                    return Ok(Forwarded {
                        response,
                        endpoint,
                        retries,
                    });
                }
                Attempt::Status(response)
            }
            Some(Err(e)) => {
                wp.upstream.outcome(endpoint, true);
                Attempt::Failed(e)
            }
            None => Attempt::TimedOut,
        };
        let more = retries + 1 < attempts && !request_timed_out && {
            let ok = budgets.try_retry(backend);
            if !ok {
                tracing::warn!(
                    waypoint = %wp.me, backend,
                    "retry budget exhausted: not retrying (retries are capped at {}% of \
                     requests plus {BUDGET_MIN_RETRIES} per {}s)",
                    (BUDGET_RATIO * 100.0) as u32, BUDGET_WINDOW.as_secs()
                );
            }
            ok
        };
        if !more {
            return match failure {
                Attempt::Status(response) => Ok(Forwarded {
                    response,
                    endpoint,
                    retries,
                }),
                Attempt::Failed(e) => Err(Local {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: format!("no response from the backend: {e}"),
                    retries,
                    endpoint: Some(Box::new(endpoint.clone())),
                }),
                Attempt::TimedOut if request_timed_out => Err(Local {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    reason: "request timeout (the route's timeouts.request) expired".into(),
                    retries,
                    endpoint: Some(Box::new(endpoint.clone())),
                }),
                Attempt::TimedOut => Err(Local {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    reason: "backend request timeout (the route's timeouts.backendRequest) \
                             expired"
                        .into(),
                    retries,
                    endpoint: Some(Box::new(endpoint.clone())),
                }),
            };
        }
        retries += 1;
        let backoff = retry.map_or(Duration::ZERO, |r| {
            r.backoff.saturating_mul(1 << (retries - 1).min(4))
        });
        tokio::time::sleep(backoff).await;
    }
}

enum Attempt {
    Status(Response<Incoming>),
    Failed(UpstreamError),
    TimedOut,
}

fn clone_parts(parts: &Parts) -> Parts {
    copy_head(&parts.method, &parts.uri, parts.version, &parts.headers)
}

/// A new request head equal to the given one (a retry's, a mirror's):
/// `Parts` cannot be cloned, its extensions being opaque.
pub fn copy_head(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Parts {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(uri.clone())
        .version(version);
    if let Some(h) = builder.headers_mut() {
        *h = headers.clone();
    }
    builder
        .body(())
        .expect("the head of a valid request makes a valid request")
        .into_parts()
        .0
}
