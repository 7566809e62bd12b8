//! The data plane's threads: one single-threaded runtime per worker, each
//! serving whole connections. A connection's tasks (its relay, the HBONE
//! connection it rides on, the streams of an HBONE connection it accepted)
//! then live on one thread: on a shared multi-threaded runtime every h2
//! frame woke a task on the other core, and those wakeups (futex, context
//! switch) cost more than the proxying (perf: the waypoint went from 0.07 to
//! 0.04 CPU-seconds per 1000 requests). Accepting stays on the main
//! runtime, which hands connections out in turn ([`Workers::accept`]);
//! whatever a worker keeps for reuse (pooled tunnels) is kept per worker
//! ([`PerWorker`]).
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

type Job = Box<dyn FnOnce() + Send>;

/// The workers; dropping this stops them (with their connections).
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

thread_local! {
    /// The worker this thread runs; 0 elsewhere.
    static LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One `T` per worker: what a worker keeps for reuse (pooled connections),
/// since a connection is driven by the worker that opened it and another
/// worker's requests would wake it on every frame.
pub struct PerWorker<T>(Vec<T>);

impl<T> PerWorker<T> {
    pub fn new(workers: &Workers, make: impl FnMut() -> T) -> Self {
        Self(std::iter::repeat_with(make).take(workers.count()).collect())
    }

    /// The calling worker's (the first one's, off the workers).
    pub fn mine(&self) -> &T {
        &self.0[LANE.with(std::cell::Cell::get) % self.0.len()]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

/// How many workers a data plane runs by default: one per CPU it may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Workers {
    /// Starts `count` worker threads (at least one), named `<name>-<index>`.
    pub fn spawn(count: usize, name: &str) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    LANE.with(|lane| lane.set(index));
                    runtime.block_on(serve(rx));
                })?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> usize {
        self.queues.len()
    }

    /// Accepts on `listener` until the returned task is aborted (which
    /// closes the listener; accepted connections carry on), each connection
    /// served by `handle` on the next worker in turn. `owner` names the
    /// listener in log lines.
    pub fn accept<F, Fut>(
        self: &Arc<Self>,
        listener: TcpListener,
        owner: String,
        handle: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let workers = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        workers.dispatch(tcp, peer, handle.clone());
                    }
                    Err(e) => {
                        tracing::warn!(%owner, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }

    /// Runs `serve` on `tcp` on the next worker in turn.
    fn dispatch<F, Fut>(&self, tcp: TcpStream, peer: SocketAddr, serve: F)
    where
        F: FnOnce(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Deregistered from the accepting runtime's reactor here, registered
        // with the worker's there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "handing a connection to a worker");
                return;
            }
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        // A worker whose thread has ended drops the connection: the peer
        // sees it closed.
        let _ = self.queues[index].send(Box::new(move || match TcpStream::from_std(tcp) {
            Ok(tcp) => {
                tokio::spawn(serve(tcp, peer));
            }
            Err(e) => tracing::warn!(%peer, error = %e, "registering a connection"),
        }));
    }
}

/// How often each worker's timer wheel is made to wake, so that it always
/// plans to wake within this long (see [`serve`]).
const NEAR_WAKE: Duration = Duration::from_secs(1);

/// One worker: runs the jobs it is handed until [`Workers`] is dropped.
async fn serve(mut jobs: mpsc::UnboundedReceiver<Job>) {
    // tokio's timer wheel wakes its driver (a write to its eventfd, then an
    // epoll_wait that returns at once) whenever a timer is set to fire
    // before the driver's planned wake-up, even from the driver's own
    // thread; with no timer pending that is every timer, and per-request
    // and per-connection timeouts set one each. A timer that always fires
    // within NEAR_WAKE keeps the planned wake-up near, so those (seconds
    // away) are never the earliest: one wake-up a second instead of two
    // syscalls a timeout.
    tokio::spawn(async {
        let mut near = tokio::time::interval(NEAR_WAKE);
        loop {
            near.tick().await;
        }
    });
    while let Some(job) = jobs.recv().await {
        job();
    }
}
