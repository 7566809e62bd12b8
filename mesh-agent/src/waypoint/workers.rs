//! The waypoint's data plane: one single-threaded runtime per worker thread,
//! each serving whole HBONE connections with its own connections to the
//! endpoints. A request then never leaves the thread that read it: on a
//! shared multi-threaded runtime every h2 frame and HTTP body chunk woke a
//! task on the other core, and those wakeups (futex, context switch) cost
//! more CPU than the proxying (measured with perf under the bench's load:
//! 0.07 → 0.04 CPU-seconds per 1000 requests). Accepting stays on the main
//! runtime, which hands connections out in turn.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{net::TcpStream, sync::mpsc};

use super::{site::Site, upstream::enter_lane};
use crate::proxy::hbone::connection;

type Accepted = (std::net::TcpStream, SocketAddr);

/// The workers; dropping this stops them (with their connections).
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` worker threads (at least one) serving `site`.
    pub fn spawn(count: usize, tls: Arc<ServerConfig>, site: Arc<Site>) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tls, site) = (Arc::clone(&tls), Arc::clone(&site));
            std::thread::Builder::new()
                .name(format!("waypoint-{index}"))
                .spawn(move || {
                    enter_lane(index);
                    runtime.block_on(serve(rx, tls, site));
                })?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Hands `tcp` to the next worker in turn.
    pub fn dispatch(&self, tcp: TcpStream, peer: SocketAddr) {
        // Deregistered from the accepting runtime's reactor here, registered
        // with the worker's there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "handing an HBONE connection to a worker");
                return;
            }
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        // A worker whose thread has ended drops the connection: the peer
        // sees it closed and retries.
        let _ = self.queues[index].send((tcp, peer));
    }
}

/// How often each worker's timer wheel is made to wake, so that it always
/// plans to wake within this long (see [`serve`]).
const NEAR_WAKE: Duration = Duration::from_secs(1);

/// One worker: serves the connections it is handed until [`Workers`] is
/// dropped.
async fn serve(
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    tls: Arc<ServerConfig>,
    site: Arc<Site>,
) {
    // tokio's timer wheel wakes its driver (a write to its eventfd, then an
    // epoll_wait that returns at once) whenever a timer is set to fire
    // before the driver's planned wake-up, even from the driver's own
    // thread; with no timer pending that is every timer, and hyper sets one
    // per request (the head-read timeout). A timer that always fires within
    // NEAR_WAKE keeps the planned wake-up near, so per-request timers (30 s)
    // are never the earliest: one wake-up a second instead of two syscalls
    // a request.
    tokio::spawn(async {
        let mut near = tokio::time::interval(NEAR_WAKE);
        loop {
            near.tick().await;
        }
    });
    while let Some((tcp, peer)) = accepted.recv().await {
        match TcpStream::from_std(tcp) {
            Ok(tcp) => {
                tokio::spawn(connection(tcp, peer, Arc::clone(&tls), Arc::clone(&site)));
            }
            Err(e) => tracing::warn!(%peer, error = %e, "registering an HBONE connection"),
        }
    }
}
