//! The agent's data path for captured connections, one module per way in:
//! [`outbound`] takes what connect4/6 redirected, [`inbound`] the plaintext
//! that sk_lookup steered, [`hbone`] the mTLS tunnel on port 15008. They
//! share one [`admission`] decision, one [`relay`] and one [`flow`] record;
//! [`plan`] decides where an outbound connection goes.
pub mod admission;
pub mod flow;
pub mod hbone;
pub mod inbound;
pub mod mesh;
pub mod outbound;
pub mod plan;
pub mod relay;
pub mod reported;
pub mod workers;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::{
    capture::{Capture, inpod::upstream_socket, netns::NetnsWorker},
    identity::{SpiffeId, store::PodCert},
    proxy::workers::PerWorker,
    tunnel::{TunnelError, client::Connection, pool::Pool, tls::client_config},
};

/// How long the agent waits for an upstream or delivery connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Destinations one pod keeps a pooled tunnel to.
const POOL_PER_POD: usize = 1024;

/// What a connection handler knows about the pod it serves.
pub struct PodContext {
    /// `namespace/name`.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    pub netns_cookie: u64,
    /// Creates sockets inside the pod's namespace.
    pub worker: NetnsWorker,
    pub capture: Arc<Mutex<Capture>>,
    pub mesh: Arc<mesh::Mesh>,
    /// This pod's tunnels, by (its identity, destination): they leave from
    /// its namespace with its address, so they are never shared with
    /// another pod. One pool per worker.
    tunnels: PerWorker<Pool<Connection>>,
}

impl PodContext {
    /// This pod as the owner of its flows.
    pub fn owner(&self) -> flow::Owner<'_> {
        flow::Owner {
            pod: &self.pod,
            ips: &self.ips,
            store: &self.mesh.flows,
        }
    }

    /// This worker's pool of the pod's tunnels.
    pub fn tunnels(&self) -> &Pool<Connection> {
        self.tunnels.mine()
    }

    /// Pooled tunnels over all workers.
    pub fn pooled_tunnels(&self) -> usize {
        self.tunnels.iter().map(Pool::len).sum()
    }

    pub fn new(
        pod: String,
        ips: Vec<IpAddr>,
        netns_cookie: u64,
        worker: NetnsWorker,
        capture: Arc<Mutex<Capture>>,
        mesh: Arc<mesh::Mesh>,
    ) -> Self {
        Self {
            pod,
            ips,
            netns_cookie,
            worker,
            capture,
            tunnels: PerWorker::new(&mesh.workers, || Pool::new(POOL_PER_POD, mesh.spread)),
            mesh,
        }
    }
}

/// Accepts on `listener` until the returned task is aborted, each
/// connection handled by `handle` on the mesh's workers, in turn.
pub fn serve<F, Fut>(
    listener: TcpListener,
    pod: Arc<PodContext>,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<PodContext>, TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (workers, owner) = (Arc::clone(&pod.mesh.workers), pod.pod.clone());
    workers.accept(listener, owner, move |stream, peer| {
        handle(Arc::clone(&pod), stream, peer)
    })
}

/// Makes a socket with `make` inside the pod's namespace.
async fn socket_in_pod<M>(pod: &PodContext, make: M) -> std::io::Result<TcpSocket>
where
    M: FnOnce() -> std::io::Result<std::net::TcpStream> + Send + 'static,
{
    socket_in(&pod.worker, make).await
}

/// Makes a socket with `make` in the namespace `worker` lives in.
pub async fn socket_in<M>(worker: &NetnsWorker, make: M) -> std::io::Result<TcpSocket>
where
    M: FnOnce() -> std::io::Result<std::net::TcpStream> + Send + 'static,
{
    let std_socket = worker.run(make).await.map_err(std::io::Error::other)??;
    Ok(TcpSocket::from_std_stream(std_socket))
}

/// Dials an HBONE connection to `hbone` from `worker`'s namespace (with the
/// agent mark, so it is not captured), proving `cert` and insisting on
/// `expected`; it retires when `cert` expires.
pub async fn dial_hbone(
    worker: &NetnsWorker,
    cert: &PodCert,
    identity: &mesh::MeshIdentity,
    expected: SpiffeId,
    hbone: SocketAddr,
) -> Result<Connection, TunnelError> {
    let tls = client_config(&cert.cert, &identity.bundle, Some(expected))?;
    let connect_err = |source| TunnelError::Connect {
        addr: hbone,
        source,
    };
    let socket = socket_in(worker, move || upstream_socket(hbone))
        .await
        .map_err(connect_err)?;
    let tcp = connect(socket, hbone).await.map_err(connect_err)?;
    Ok(Connection::handshake(tcp, hbone, tls)
        .await?
        .retire_at(cert.not_after))
}

/// Connects, bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(socket: TcpSocket, dst: SocketAddr) -> std::io::Result<TcpStream> {
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
