//! Bodies that stream through the waypoint: counted as they pass (nothing
//! is buffered whole), and a response body that closes its request's record
//! when the last byte (or trailer) has gone to the client, or the client
//! went away.
use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::body::{Body as _, Frame, SizeHint};

use crate::{
    flows::{Progress, record::State},
    policy::Decision,
    proxy::flow::Flow,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the waypoint sends, whatever made it.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Counts the data bytes of a request body (client → backend) into
/// `progress.sent` ([`recorded`] counts the response's).
pub fn counted<B>(inner: B, progress: Arc<Progress>) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // One box, around the counter: boxing `inner` too cost an allocation
    // per request.
    Counted { inner, progress }.boxed()
}

struct Counted<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.progress
                .sent
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body sent to the client, whoever made it (backend or
/// waypoint), counted as it goes; its end (or drop) ends the request's flow
/// record with the bytes both ways.
pub fn recorded(inner: Body, flow: Flow, progress: Arc<Progress>) -> Body {
    Recorded {
        inner,
        done: Some((flow, progress)),
    }
    .boxed()
}

struct Recorded {
    inner: Body,
    done: Option<(Flow, Arc<Progress>)>,
}

impl Recorded {
    fn finish(&mut self, error: Option<String>) {
        let Some((mut flow, progress)) = self.done.take() else {
            return;
        };
        flow.record.bytes_sent = progress.sent.load(Ordering::Relaxed);
        flow.record.bytes_received = progress.received.load(Ordering::Relaxed);
        let denied = flow
            .record
            .verdict
            .as_ref()
            .is_some_and(|v| v.decision == Decision::Deny);
        let state = match (&error, denied) {
            (Some(_), _) => State::Error,
            (None, true) => State::Denied,
            (None, false) => State::Closed,
        };
        flow.ended(state, error);
    }
}

impl hyper::body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((_, progress))) = (frame.data_ref(), self.done.as_ref()) {
                    progress
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = trailers.get("grpc-status")
                    && let Some((flow, _)) = self.done.as_mut()
                    && let Some(http) = flow.record.http.as_mut()
                {
                    http.grpc_status = status.to_str().ok().map(str::to_owned);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("response body from the backend failed: {e}");
                self.finish(Some(why));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        if self.inner.is_end_stream() {
            self.finish(None);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if self.done.is_some() && !self.inner.is_end_stream() {
            self.finish(Some(
                "the client went away before the response ended".into(),
            ));
        } else {
            self.finish(None);
        }
    }
}
