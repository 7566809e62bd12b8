//! The one bidirectional copy every hop uses.
//!
//! Each direction is copied on its own: when one side finishes sending (EOF),
//! its FIN is passed on with `shutdown(Write)` and the other direction keeps
//! flowing, so half-closed protocols work. When one side resets (or a write
//! fails), the other side is reset too (`SO_LINGER 0` then close) instead of
//! being shown a clean FIN: a truncated stream is never passed off as a
//! complete one. Back-pressure is natural: nothing is read until the previous
//! chunk is written.
//!
//! Bytes move as owned chunks ([`Bytes`]): what is read from a socket is
//! handed to HTTP/2 as is, and what HTTP/2 received is written to the socket
//! from its own buffer, so the only copies left are the kernel's and TLS's.
//! Between two sockets (plain TCP hops) they do not leave the kernel at all
//! ([`splice`]).
mod splice;
use std::{
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use tokio::{
    io::AsyncWriteExt as _,
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

use crate::flows::Progress;

/// A socket's first reads are this small (a request/response exchange
/// rarely needs more)...
const FIRST_READ: usize = 4 << 10;
/// ...and each read that fills its buffer doubles the next one, up to this
/// (a bulk flow; an HTTP/2 frame of the tunnel is as large).
const MAX_READ: usize = 256 << 10;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Both sides closed cleanly.
    Closed,
    /// The client side reset or failed; the server side was reset.
    ClientReset,
    /// The server side reset or failed; the client side was reset.
    ServerReset,
    /// The agent cut it (policy no longer allows it); both sides were reset.
    Revoked,
}

impl End {
    /// As flow records name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::ClientReset => "client_reset",
            Self::ServerReset => "server_reset",
            Self::Revoked => "revoked",
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Client → server.
    pub sent: u64,
    /// Server → client.
    pub received: u64,
    pub end: End,
}

/// A byte stream the relay can carry: a TCP socket or a tunnel stream,
/// split into halves that read and write owned chunks.
pub trait Stream: Send {
    type Reader<'a>: Reader
    where
        Self: 'a;
    type Writer<'a>: Writer
    where
        Self: 'a;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// The socket, when it is one (two sockets are relayed with `splice`).
    fn socket(&self) -> Option<&TcpStream> {
        None
    }

    /// Makes the coming close abortive, so the peer sees a reset rather
    /// than a clean end.
    fn prepare_reset(&self);
}

/// The reading half of a [`Stream`].
pub trait Reader: Send {
    /// The next bytes, or `None` once the peer has finished sending.
    fn read(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
}

/// The writing half of a [`Stream`].
pub trait Writer: Send {
    /// Writes all of `chunk`.
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Passes the end of the stream on (FIN, END_STREAM).
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Stream for TcpStream {
    type Reader<'a> = SocketReader<'a>;
    type Writer<'a> = WriteHalf<'a>;

    fn halves(&mut self) -> (SocketReader<'_>, WriteHalf<'_>) {
        let (read, write) = self.split();
        (
            SocketReader {
                half: read,
                buf: BytesMut::new(),
                size: FIRST_READ,
            },
            write,
        )
    }

    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn prepare_reset(&self) {
        let _ = SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}

/// Reads a socket into one buffer whose filled part is split off as each
/// chunk; once the chunks are gone (written on), the space is reused.
pub struct SocketReader<'a> {
    half: ReadHalf<'a>,
    buf: BytesMut,
    /// The next read's size: grows while reads fill it.
    size: usize,
}

impl Reader for SocketReader<'_> {
    async fn read(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            // Nothing is reserved before there is something to read: an
            // idle connection holds no more than what its last read left.
            self.half.readable().await?;
            self.buf.reserve(self.size);
            match self.half.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    if n >= self.size {
                        self.size = (self.size * 2).min(MAX_READ);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Writer for WriteHalf<'_> {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write_all(&chunk).await
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.shutdown().await
    }
}

/// Copies between `client` and `server` until both directions are done, or
/// until `stop` completes (then both sides are reset), counting into
/// `progress` as it goes.
pub async fn relay<C: Stream, S: Stream>(
    mut client: C,
    mut server: S,
    stop: impl std::future::Future<Output = ()>,
    progress: Arc<Progress>,
) -> Relayed {
    // Counted as they are written, so a failed or revoked connection still
    // reports what it moved.
    let (sent, received) = (&progress.sent, &progress.received);
    let sockets = client.socket().zip(server.socket());
    // Without pipes (out of descriptors) two sockets are copied like any.
    let end = match sockets
        .and_then(|s| Some((s, splice::Pipe::new().ok()?, splice::Pipe::new().ok()?)))
    {
        Some(((c, s), up, down)) => {
            let up = splice::copy(c, s, &up, sent);
            let down = splice::copy(s, c, &down, received);
            both_ways(up, down, stop).await
        }
        None => {
            let (mut client_r, mut client_w) = client.halves();
            let (mut server_r, mut server_w) = server.halves();
            let up = copy(&mut client_r, &mut server_w, sent);
            let down = copy(&mut server_r, &mut client_w, received);
            both_ways(up, down, stop).await
        }
    };
    if end != End::Closed {
        // Pass the failure on as a reset to whichever side is still there.
        client.prepare_reset();
        server.prepare_reset();
    }
    Relayed {
        sent: progress.sent.load(Ordering::Relaxed),
        received: progress.received.load(Ordering::Relaxed),
        end,
    }
}

/// Runs both directions until both are done, one fails or `stop` completes.
async fn both_ways(
    up: impl Future<Output = Result<(), CopyError>>,
    down: impl Future<Output = Result<(), CopyError>>,
    stop: impl Future<Output = ()>,
) -> End {
    tokio::pin!(up, down, stop);
    let (mut up_done, mut down_done) = (false, false);
    let mut failed = None;
    while failed.is_none() && !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => failed = Some(e.blame_for(End::ClientReset, End::ServerReset)),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => failed = Some(e.blame_for(End::ServerReset, End::ClientReset)),
            },
            () = &mut stop => failed = Some(End::Revoked),
        }
    }
    failed.unwrap_or(End::Closed)
}

/// A failed copy, knowing whether reading (source side) or writing
/// (destination side) failed.
struct CopyError {
    on_read: bool,
}

impl CopyError {
    fn blame_for(&self, reader_side: End, writer_side: End) -> End {
        if self.on_read {
            reader_side
        } else {
            writer_side
        }
    }
}

async fn copy<R: Reader, W: Writer>(
    from: &mut R,
    to: &mut W,
    total: &AtomicU64,
) -> Result<(), CopyError> {
    let written = |_| CopyError { on_read: false };
    while let Some(chunk) = from.read().await.map_err(|_| CopyError { on_read: true })? {
        let n = chunk.len() as u64;
        to.write(chunk).await.map_err(written)?;
        total.fetch_add(n, Ordering::Relaxed);
    }
    to.finish().await.map_err(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn half_close_passes_through_and_the_other_direction_keeps_flowing() {
        let (mut app, agent_client) = pair().await;
        let (agent_server, mut upstream) = pair().await;
        let relay = tokio::spawn(relay(
            agent_client,
            agent_server,
            std::future::pending(),
            Arc::default(),
        ));

        app.write_all(b"request").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "upstream sees the bytes, then EOF");

        // After the client's half-close the reply still flows back.
        upstream.write_all(b"reply after half-close").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply after half-close");

        let done = relay.await.unwrap();
        assert_eq!((done.sent, done.received, done.end), (7, 22, End::Closed));
    }

    /// Bytes no two positions of which (in 251-byte periods) are alike.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[tokio::test]
    async fn sockets_spliced_both_ways_at_once_arrive_intact() {
        let (app, agent_client) = pair().await;
        let (agent_server, upstream) = pair().await;
        assert!(
            agent_client.socket().is_some(),
            "two sockets take the splice path"
        );
        let relay = tokio::spawn(relay(
            agent_client,
            agent_server,
            std::future::pending(),
            Arc::default(),
        ));
        const LEN: usize = 8 << 20;
        let (up, down) = (pattern(LEN, 0x5a), pattern(LEN, 0xa5));
        let ends = |mut stream: TcpStream, out: Vec<u8>| async move {
            let (mut r, mut w) = stream.split();
            let write = async {
                w.write_all(&out).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let read = r.read_to_end(&mut got);
            let (_, read) = tokio::join!(write, read);
            read.unwrap();
            got
        };
        let (at_app, at_upstream) =
            tokio::join!(ends(app, up.clone()), ends(upstream, down.clone()));
        assert!(
            at_upstream == up && at_app == down,
            "corrupted in the splice"
        );
        let done = relay.await.unwrap();
        assert_eq!(
            (done.sent, done.received, done.end),
            (LEN as u64, LEN as u64, End::Closed)
        );
    }

    #[tokio::test]
    async fn a_reset_is_passed_on_as_a_reset() {
        let (app, agent_client) = pair().await;
        let (agent_server, mut upstream) = pair().await;
        let relay = tokio::spawn(relay(
            agent_client,
            agent_server,
            std::future::pending(),
            Arc::default(),
        ));

        SockRef::from(&app)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(app);
        let mut buf = [0u8; 16];
        let err = upstream
            .read(&mut buf)
            .await
            .expect_err("upstream must see a reset, not EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(relay.await.unwrap().end, End::ClientReset);
    }

    #[tokio::test]
    async fn stopping_resets_both_sides_and_keeps_the_counts() {
        let (mut app, agent_client) = pair().await;
        let (agent_server, mut upstream) = pair().await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(relay(
            agent_client,
            agent_server,
            async {
                let _ = stopped.await;
            },
            Arc::default(),
        ));
        app.write_all(b"before").await.unwrap();
        let mut got = [0u8; 6];
        upstream.read_exact(&mut got).await.unwrap();
        stop.send(()).unwrap();
        let done = relay.await.unwrap();
        assert_eq!((done.sent, done.end), (6, End::Revoked));
        let mut buf = [0u8; 1];
        for side in [&mut app, &mut upstream] {
            let err = side.read(&mut buf).await.expect_err("a reset, not EOF");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        }
    }
}
