//! One HBONE stream as a byte stream: the application bytes of a CONNECT,
//! read and written through HTTP/2 flow control.
//!
//! Endings are carried faithfully (RFC 9113 §8.5): a half-close is
//! END_STREAM, and a reset is RST_STREAM(CONNECT_ERROR) — never a clean end.
//! Any reset the peer sends (also CANCEL, which is what dropping an
//! unfinished stream sends) reads as `ConnectionReset`.
//!
//! Two ways in: the relay's owned chunks ([`Stream`]), which HTTP/2 sends
//! and receives without a copy, and `AsyncRead`/`AsyncWrite` for HTTP
//! servers and clients (the waypoint's hyper).
use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::Ticket;
use crate::proxy::relay::{Reader, Stream, Writer};

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
    /// Counts the stream on its pooled connection while it lives.
    _ticket: Option<Ticket>,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            small: BytesMut::new(),
            reset: AtomicBool::new(false),
            _ticket: None,
        }
    }

    /// This stream, counted on its connection until dropped.
    pub fn counted(mut self, ticket: Ticket) -> Self {
        self._ticket = Some(ticket);
        self
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

/// The next received chunk (window given back at once: the bytes are
/// ours), or `None` at the peer's END_STREAM. An empty DATA frame is skipped, so an empty chunk never reads as the end.
fn poll_chunk(recv: &mut RecvStream, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
    loop {
        return Poll::Ready(match ready!(recv.poll_data(cx)) {
            Some(Ok(data)) if data.is_empty() => continue,
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                Ok(Some(data))
            }
            Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => Ok(None),
            Some(Err(e)) => Err(h2_error(e)),
            None => Ok(None),
        });
    }
}

/// How many of `want` bytes flow control lets `send` send now.
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    send.reserve_capacity(want);
    loop {
        // A reset from the peer ends writing at once.
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            let reason = reason.map_err(h2_error)?;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the tunnel stream was reset ({reason})"),
            )));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => return Poll::Ready(Ok(n.min(want))),
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

fn finish(send: &mut SendStream<Bytes>) -> io::Result<()> {
    send.send_data(Bytes::new(), true).map_err(h2_error)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(poll_chunk(&mut self.recv, cx))? {
                Some(data) => self.pending = data,
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
        let n = ready!(poll_send_capacity(&mut self.send, cx, buf.len()))?;
        let chunk = self.copy(&buf[..n]);
        self.send.send_data(chunk, false).map_err(h2_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(finish(&mut self.send))
    }
}

/// The receiving half, for the relay.
pub struct H2Reader<'a> {
    recv: &'a mut RecvStream,
    pending: &'a mut Bytes,
}

impl Reader for H2Reader<'_> {
    async fn read(&mut self) -> io::Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(self.pending)));
        }
        poll_fn(|cx| poll_chunk(self.recv, cx)).await
    }
}

/// The sending half, for the relay.
pub struct H2Writer<'a> {
    send: &'a mut SendStream<Bytes>,
}

impl Writer for H2Writer<'_> {
    async fn write(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            let n = poll_fn(|cx| poll_send_capacity(self.send, cx, chunk.len())).await?;
            self.send
                .send_data(chunk.split_to(n), false)
                .map_err(h2_error)?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        finish(self.send)
    }
}

impl Stream for H2Stream {
    type Reader<'a> = H2Reader<'a>;
    type Writer<'a> = H2Writer<'a>;

    fn halves(&mut self) -> (H2Reader<'_>, H2Writer<'_>) {
        (
            H2Reader {
                recv: &mut self.recv,
                pending: &mut self.pending,
            },
            H2Writer {
                send: &mut self.send,
            },
        )
    }

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
