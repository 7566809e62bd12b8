//! One HBONE stream as a byte stream: the application bytes of a CONNECT,
//! read and written through HTTP/2 flow control.
//!
//! Endings are carried faithfully (RFC 9113 §8.5): a half-close is
//! END_STREAM, and a reset is RST_STREAM(CONNECT_ERROR) — never a clean end.
//! Any reset the peer sends (also CANCEL, which is what dropping an
//! unfinished stream sends) reads as `ConnectionReset`.
use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::relay::Stream;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet read.
    pending: Bytes,
    /// Where small writes are copied: each is split off and handed to h2,
    /// and once h2 has sent it the buffer is reused, so a stream of
    /// requests and responses does not allocate per write.
    small: BytesMut,
    /// Set by `prepare_reset`: the drop resets the stream.
    reset: AtomicBool,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            small: BytesMut::new(),
            reset: AtomicBool::new(false),
        }
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    match e.reason() {
        Some(_) if e.is_reset() || e.is_go_away() => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ if e.is_io() => e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O")),
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Give the window back as soon as the bytes are ours.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                // END_STREAM: the peer half-closed.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Writes up to this size (request and response heads, small bodies) go
/// through [`H2Stream::small`]; larger ones (bulk transfers) get a buffer
/// of their own, so an idle stream holds at most this much.
const SMALL_WRITE: usize = 1024;

impl H2Stream {
    /// `data` as an owned chunk for h2.
    fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.len() > SMALL_WRITE {
            return Bytes::copy_from_slice(data);
        }
        // Reclaims the buffer when h2 has dropped every chunk split off it.
        self.small.reserve(SMALL_WRITE);
        self.small.extend_from_slice(data);
        self.small.split().freeze()
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            // A reset from the peer ends writing at once.
            if let Poll::Ready(reason) = self.send.poll_reset(cx) {
                let reason = reason.map_err(h2_error)?;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("the tunnel stream was reset ({reason})"),
                )));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    let chunk = self.copy(&buf[..n]);
                    self.send.send_data(chunk, false).map_err(h2_error)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the tunnel stream is closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_error))
    }
}

impl Stream for H2Stream {
    fn prepare_reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            self.send.send_reset(Reason::CONNECT_ERROR);
        }
    }
}
