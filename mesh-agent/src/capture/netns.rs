//! Pod network namespaces: running code inside one, and naming one by its
//! kernel cookie (the key capture programs use for enrolment).
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// `SO_NETNS_COOKIE` (Linux 5.14+); not yet exported by the libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("reading SO_NETNS_COOKIE (needs Linux 5.14+): {0}")]
    Cookie(#[source] std::io::Error),
    #[error("creating a probe socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the thread working in network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`.
///
/// A dedicated thread keeps the caller's (and tokio's) threads in their own
/// namespace; sockets created by `f` stay in the pod's namespace for life.
pub fn in_netns<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Enter {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(path.to_owned()))?
    })
}

/// The cookie of the network namespace a socket lives in.
pub fn socket_netns_cookie(socket: &impl AsRawFd) -> Result<u64, NetnsError> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given, and
    // the fd is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(NetnsError::Cookie(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// The cookie of the network namespace at `path`.
pub fn netns_cookie(path: &Path) -> Result<u64, NetnsError> {
    in_netns(path, || {
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(NetnsError::Socket)?;
        socket_netns_cookie(&probe)
    })?
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that lives inside one pod's network namespace and creates the
/// agent's sockets there (listeners, upstream and delivery sockets), so they
/// carry the pod's addresses. Sockets keep their namespace for life; only
/// creation needs the thread. The thread ends when the worker is dropped.
pub struct NetnsWorker {
    jobs: std::sync::mpsc::Sender<Job>,
    path: PathBuf,
}

impl NetnsWorker {
    /// A worker inside the namespace at `path` (entering it takes
    /// CAP_SYS_ADMIN).
    pub fn spawn(path: &Path) -> Result<Self, NetnsError> {
        let ns = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let owned = path.to_owned();
        Self::start(path, move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: owned,
                source,
            })
        })
    }

    /// A worker in the process's own namespace: for a process that runs in
    /// its pod (a waypoint on Kubernetes), which has nothing to enter.
    pub fn own() -> Result<Self, NetnsError> {
        Self::start(Path::new("/proc/self/ns/net"), || Ok(()))
    }

    fn start(
        path: &Path,
        enter: impl FnOnce() -> Result<(), NetnsError> + Send + 'static,
    ) -> Result<Self, NetnsError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn(move || {
                let entered = enter();
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in queue {
                        job();
                    }
                }
            })
            .map_err(NetnsError::Socket)?;
        ready
            .recv()
            .map_err(|_| NetnsError::Panicked(path.to_owned()))??;
        Ok(Self {
            jobs,
            path: path.to_owned(),
        })
    }

    /// Runs `f` inside the namespace and waits for its result (async).
    pub async fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |out| {
            let _ = tx.send(out);
        })?;
        rx.await
            .map_err(|_| NetnsError::Panicked(self.path.clone()))
    }

    /// Runs `f` inside the namespace, blocking the caller until it is done.
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(f, move |out| {
            let _ = tx.send(out);
        })?;
        rx.recv()
            .map_err(|_| NetnsError::Panicked(self.path.clone()))
    }

    fn submit<T, F, R>(&self, f: F, reply: R) -> Result<(), NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        R: FnOnce(T) + Send + 'static,
    {
        self.jobs
            .send(Box::new(move || reply(f())))
            .map_err(|_| NetnsError::Panicked(self.path.clone()))
    }
}
