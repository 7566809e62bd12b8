//! The agent's data path for captured connections: [`outbound`] takes what
//! connect4/6 redirected, [`inbound`] what sk_lookup steered, and both move
//! bytes with the one [`relay`].
pub mod inbound;
pub mod outbound;
pub mod relay;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::capture::{Capture, netns::NetnsWorker};

/// How long the agent waits for an upstream or delivery connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection handler knows about the pod it serves.
pub struct PodContext {
    /// `namespace/name`.
    pub pod: String,
    pub netns_cookie: u64,
    /// Creates sockets inside the pod's namespace.
    pub worker: NetnsWorker,
    pub capture: Arc<Mutex<Capture>>,
}

/// Which way a captured connection goes, relative to the pod.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// Accepts on `listener` forever, handling each connection on its own task.
/// Aborting the returned task closes the listener; connections already
/// accepted carry on.
pub fn serve<F, Fut>(
    listener: TcpListener,
    pod: Arc<PodContext>,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<PodContext>, TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(Arc::clone(&pod), stream, peer));
                }
                Err(e) => {
                    tracing::warn!(pod = %pod.pod, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// Makes a socket with `make` inside the pod's namespace.
async fn socket_in_pod<M>(pod: &PodContext, make: M) -> std::io::Result<TcpSocket>
where
    M: FnOnce() -> std::io::Result<std::net::TcpStream> + Send + 'static,
{
    let std_socket = pod
        .worker
        .run(make)
        .await
        .map_err(std::io::Error::other)??;
    Ok(TcpSocket::from_std_stream(std_socket))
}

/// Connects, bounded by [`CONNECT_TIMEOUT`].
async fn connect(socket: TcpSocket, dst: SocketAddr) -> std::io::Result<TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )
        })?
}

/// Closes a client connection with a reset: the app sees the failure at once.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// The record of one relayed connection, logged when it ends (target
/// `nodemesh::flow`, so it can be filtered and parsed).
fn log_flow(
    direction: Direction,
    pod: &PodContext,
    src: SocketAddr,
    orig_dst: SocketAddr,
    started: Instant,
    outcome: Result<relay::Relayed, String>,
) {
    let duration_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(r) => tracing::info!(
            target: "nodemesh::flow",
            direction = ?direction,
            pod = %pod.pod,
            src = %src,
            orig_dst = %orig_dst,
            sent = r.sent,
            received = r.received,
            end = ?r.end,
            duration_ms,
            "flow closed"
        ),
        Err(error) => tracing::warn!(
            target: "nodemesh::flow",
            direction = ?direction,
            pod = %pod.pod,
            src = %src,
            orig_dst = %orig_dst,
            error = %error,
            duration_ms,
            "flow failed"
        ),
    }
}
