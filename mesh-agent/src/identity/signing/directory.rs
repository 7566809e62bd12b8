//! The workload directory over the CA's connection
//! ([`crate::state::directory`] says what it is and why): the CA streams it
//! to each node agent; the agent follows it as one more watch of its
//! Kubernetes source.
use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _, channel::mpsc};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, channel::Channel};
use kube::runtime::watcher;
use tokio::sync::watch;

use super::{DIRECTORY_PATH, SignError, client::SigningError, server::Reply};
use crate::{
    identity::store::CertSource,
    state::{
        Loaded,
        cluster::Feed,
        directory::{Line, LineError, Publisher, event},
    },
    tunnel::TunnelError,
};

/// A stream ends after this long and the agent asks again (a fresh list):
/// no stream outlives the certificate that opened it by much, and a lost
/// change (there should be none) heals.
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// A quiet stream carries a bookmark this often…
const BOOKMARK_EVERY: Duration = Duration::from_secs(20);
/// …so one silent for this long has lost its CA, and the agent reconnects.
const SILENCE: Duration = Duration::from_secs(65);
/// No directory line is anywhere near this long (a pod is a few hundred
/// bytes); a longer one is not the CA speaking.
const MAX_LINE: usize = 1 << 20;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The CA's answer to the agent of `node`: every other node's pod, then
/// their changes as the CA's model changes.
pub fn serve(node: &str, mut model: watch::Receiver<Arc<Loaded>>) -> Reply {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(16);
    let mut publisher = Publisher::new(node);
    let node = node.to_owned();
    tokio::spawn(async move {
        // Streams end spread over a minute, so that agents that connected
        // together (after a CA restart) do not all list again together.
        let ends = tokio::time::Instant::now()
            + STREAM_LIFETIME
            + Duration::from_millis(fastrand::u64(..60_000));
        let latest = Arc::clone(&model.borrow_and_update());
        let mut lines = publisher.list(&latest);
        tracing::debug!(node, pods = lines.len() - 2, "workload directory sent");
        let mut last_write = tokio::time::Instant::now();
        loop {
            if !lines.is_empty() {
                tokio::select! {
                    sent = tx.send_data(encode(&lines)) => if sent.is_err() {
                        // The agent has gone.
                        return;
                    },
                    // An agent that stops reading is not waited for
                    // beyond the stream's end.
                    () = tokio::time::sleep_until(ends) => return,
                }
                last_write = tokio::time::Instant::now();
            }
            lines = tokio::select! {
                changed = model.changed() => match changed {
                    Ok(()) => {
                        let latest = Arc::clone(&model.borrow_and_update());
                        publisher.update(&latest)
                    }
                    Err(_) => return,
                },
                // Changes that concern no other node's pod send nothing:
                // the bookmark counts from the last write.
                () = tokio::time::sleep_until(last_write + BOOKMARK_EVERY) => vec![Line::Bookmark],
                () = tokio::time::sleep_until(ends) => return,
            };
        }
    });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/jsonl"),
    );
    response
}

/// Lines as one chunk: a change of many pods is one write.
fn encode(lines: &[Line]) -> Bytes {
    let mut out = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut out, line).expect("a line serializes");
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// Why following the directory stopped (it is followed again).
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("workload directory: {0}")]
    Connect(#[from] SigningError),
    #[error("workload directory: {0}")]
    Transport(#[from] TunnelError),
    #[error("workload directory: {0}")]
    Stream(#[from] h2::Error),
    #[error("the CA refused the workload directory ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("workload directory: a line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("workload directory: no word from the CA for {}s", SILENCE.as_secs())]
    Silent,
    #[error("workload directory: the CA ended the stream as soon as it began")]
    EndedEarly,
}

/// The other nodes' pods as watch events, for as long as the returned
/// stream is read: each connection starts with a full list, and any failure
/// is reported (the source keeps its last good pods) and followed by a
/// reconnection, with backoff while the CA stays away.
pub fn follow(source: Arc<CertSource>) -> Feed {
    let (mut tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut retry = FIRST_RETRY;
        loop {
            let began = Instant::now();
            let failure = match once(&source, &mut tx).await {
                // The CA ends streams after a long while; one ended soon
                // after it began is a CA in trouble, not to be hammered.
                Ok(()) if began.elapsed() < MAX_RETRY => Some(DirectoryError::EndedEarly),
                Ok(()) => None,
                Err(Stop::ReaderGone) => return,
                Err(Stop::Failed(e)) => Some(e),
            };
            // A stream that served a while earns a prompt reconnection.
            if began.elapsed() > MAX_RETRY {
                retry = FIRST_RETRY;
            }
            if let Some(e) = failure {
                let failed = watcher::Error::WatchFailed(kube::Error::Service(Box::new(e)));
                if tx.send(Err(failed)).await.is_err() {
                    return;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    });
    rx.boxed()
}

enum Stop {
    ReaderGone,
    Failed(DirectoryError),
}

impl<E: Into<DirectoryError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

type Events = mpsc::Sender<Result<watcher::Event<kube::api::DynamicObject>, watcher::Error>>;

/// One stream, until the CA ends it (`Ok`) or it fails.
async fn once(source: &CertSource, tx: &mut Events) -> Result<(), Stop> {
    let conn = source.dial().await?;
    let request = Request::get(format!("https://nodemesh-ca.invalid{DIRECTORY_PATH}"))
        .body(())
        .expect("a valid request");
    let (status, mut body) = conn.get(request).await?;
    if status != StatusCode::OK {
        let mut all = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            all.extend_from_slice(&chunk);
        }
        let message = serde_json::from_slice::<SignError>(&all)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&all).into_owned());
        return Err(Stop::Failed(DirectoryError::Refused {
            status: status.as_u16(),
            message,
        }));
    }
    let mut pending = BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, body.data()).await {
            Err(_) => return Err(DirectoryError::Silent.into()),
            Ok(None) => return Ok(()),
            Ok(Some(chunk)) => chunk?,
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(end + 1);
            if let Some(event) = event(&line[..end])? {
                tx.send(Ok(event)).await.map_err(|_| Stop::ReaderGone)?;
            }
        }
        if pending.len() > MAX_LINE {
            return Err(DirectoryError::TooLong.into());
        }
    }
}
