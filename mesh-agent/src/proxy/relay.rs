//! The one bidirectional copy every hop uses.
//!
//! Each direction is copied on its own: when one side finishes sending (EOF),
//! its FIN is passed on with `shutdown(Write)` and the other direction keeps
//! flowing, so half-closed protocols work. When one side resets (or a write
//! fails), the other side is reset too (`SO_LINGER 0` then close) instead of
//! being shown a clean FIN: a truncated stream is never passed off as a
//! complete one. Back-pressure is natural: nothing is read until the previous
//! chunk is written.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::flows::Progress;

const BUF: usize = 64 * 1024;

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

/// A byte stream the relay can carry: a TCP socket or a tunnel stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Makes the coming close abortive, so the peer sees a reset rather
    /// than a clean end.
    fn prepare_reset(&self);
}

impl Stream for TcpStream {
    fn prepare_reset(&self) {
        let _ = SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}

/// Copies between `client` and `server` until both directions are done, or
/// until `stop` completes (then both sides are reset), counting into
/// `progress` as it goes.
pub async fn relay<C: Stream, S: Stream>(
    client: C,
    server: S,
    stop: impl std::future::Future<Output = ()>,
    progress: Arc<Progress>,
) -> Relayed {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    // Counted as they are written, so a failed or revoked connection still
    // reports what it moved.
    let end = {
        let up = copy(&mut client_r, &mut server_w, &progress.sent);
        let down = copy(&mut server_r, &mut client_w, &progress.received);
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
    };
    if end != End::Closed {
        // Pass the failure on as a reset to whichever side is still there.
        client_r.unsplit(client_w).prepare_reset();
        server_r.unsplit(server_w).prepare_reset();
    }
    Relayed {
        sent: progress.sent.load(Ordering::Relaxed),
        received: progress.received.load(Ordering::Relaxed),
        end,
    }
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

async fn copy<R, W>(from: &mut R, to: &mut W, total: &AtomicU64) -> Result<(), CopyError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(CopyError { on_read: true }),
        };
        to.write_all(&buf[..n])
            .await
            .map_err(|_| CopyError { on_read: false })?;
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
    to.shutdown()
        .await
        .map_err(|_| CopyError { on_read: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

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
