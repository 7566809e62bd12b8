//! Pod network namespaces: running code inside one, and naming one by its
//! kernel cookie (the key capture programs use for enrolment).
use std::{
    fs::File,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt as _,
    },
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, mpsc::TryRecvError},
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
    #[error("starting the threads that work in pods' network namespaces: {0}")]
    Thread(#[source] std::io::Error),
    #[error("work in network namespace {0} panicked")]
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

/// Threads that create sockets inside pods' namespaces, shared by every pod
/// of the process: sockets keep their namespace for life, so only their
/// creation (a few microseconds) needs a thread there. Two let one pod's
/// slow job (opening its listeners at enrolment) leave another's connects
/// unblocked.
pub const NETNS_THREADS: usize = 2;

/// A network namespace, held open, and its identity.
#[derive(Debug)]
struct Namespace {
    file: File,
    /// `(st_dev, st_ino)` of the namespace file: equal for two handles on
    /// the same namespace. A thread inside a namespace keeps it alive, so
    /// the key of the one a thread is in is never reused while it is there.
    key: (u64, u64),
    path: PathBuf,
}

impl Namespace {
    fn open(path: &Path) -> Result<Self, NetnsError> {
        let open_err = |source| NetnsError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        Ok(Self {
            file,
            key: (meta.dev(), meta.ino()),
            path: path.to_owned(),
        })
    }

    /// Moves the calling thread into this namespace.
    fn enter(&self) -> Result<(), NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })
    }
}

/// A job for the pool: told whether its namespace could be entered.
struct Job {
    netns: Arc<Namespace>,
    work: Box<dyn FnOnce(Result<(), NetnsError>) + Send>,
}

/// The process's namespace threads, started on first use.
fn pool() -> Result<&'static std::sync::mpsc::Sender<Job>, NetnsError> {
    static POOL: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    static STARTING: Mutex<()> = Mutex::new(());
    if let Some(jobs) = POOL.get() {
        return Ok(jobs);
    }
    // One caller starts the threads; another that came meanwhile finds them.
    let _starting = STARTING.lock().expect("netns pool start lock");
    if let Some(jobs) = POOL.get() {
        return Ok(jobs);
    }
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..NETNS_THREADS {
        let home = Namespace::open(Path::new("/proc/thread-self/ns/net"))?;
        let queue = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!("netns-{i}"))
            .spawn(move || serve(&queue, &home))
            .map_err(NetnsError::Thread)?;
    }
    Ok(POOL.get_or_init(|| jobs))
}

/// One pool thread: runs jobs, entering each one's namespace unless it is
/// already there (a burst of connects from one pod enters it once), and
/// goes back `home` whenever the queue is empty, so that it never keeps a
/// deleted pod's namespace (and the links in it) alive.
fn serve(queue: &Mutex<std::sync::mpsc::Receiver<Job>>, home: &Namespace) {
    let mut here = home.key;
    loop {
        // The next job at once, if one is queued. A lock held elsewhere is
        // another thread waiting for jobs (the queue is empty), and waiting
        // for that lock here would keep this thread in the last pod's
        // namespace until a job comes.
        let next = match queue.try_lock() {
            Ok(queue) => queue.try_recv(),
            Err(_) => Err(TryRecvError::Empty),
        };
        let job = match next {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                if here != home.key && home.enter().is_ok() {
                    here = home.key;
                }
                match queue.lock().expect("netns queue lock").recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        let entered = if job.netns.key == here {
            Ok(())
        } else {
            job.netns.enter().inspect(|()| here = job.netns.key)
        };
        // A panicking job drops its reply (its caller sees `Panicked`); the
        // thread carries on with the others' jobs.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| (job.work)(entered)));
    }
}

/// One pod's network namespace, held open, in which the agent creates its
/// sockets for that pod (listeners, upstream and delivery sockets) so they
/// carry the pod's addresses. The work runs on a few threads shared by all
/// pods ([`NETNS_THREADS`]), each entering the namespace a job names; sockets
/// keep their namespace for life, so only creation needs the thread.
pub struct NetnsWorker {
    netns: Arc<Namespace>,
}

impl NetnsWorker {
    /// The namespace at `path` (entering it takes CAP_SYS_ADMIN; a path that
    /// is not a network namespace fails at the first [`NetnsWorker::run`]).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        Ok(Self {
            netns: Arc::new(Namespace::open(path)?),
        })
    }

    /// The process's own namespace: for a process that runs in its pod (a
    /// waypoint on Kubernetes). The pool's threads start there, so its jobs
    /// never need to enter it (nor the privilege to).
    pub fn own() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/self/ns/net"))
    }

    /// Runs `f` inside the namespace and waits for its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            netns: Arc::clone(&self.netns),
            work: Box::new(move |entered: Result<(), NetnsError>| {
                let _ = tx.send(entered.map(|()| f()));
            }),
        };
        let panicked = || NetnsError::Panicked(self.netns.path.clone());
        pool()?.send(job).map_err(|_| panicked())?;
        rx.await.map_err(|_| panicked())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cookie of the namespace a job runs in.
    async fn cookie_in(worker: &NetnsWorker) -> Result<u64, NetnsError> {
        worker
            .run(|| {
                let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(NetnsError::Socket)?;
                socket_netns_cookie(&probe)
            })
            .await?
    }

    #[tokio::test]
    async fn own_namespace_jobs_make_sockets_where_the_process_is() {
        let here = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let worker = NetnsWorker::own().unwrap();
        for _ in 0..2 * NETNS_THREADS {
            assert_eq!(
                cookie_in(&worker).await.unwrap(),
                socket_netns_cookie(&here).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn a_missing_namespace_is_named_in_the_error() {
        let Err(err) = NetnsWorker::open(Path::new("/nonexistent/netns")) else {
            panic!("opened a namespace that does not exist");
        };
        assert!(
            matches!(&err, NetnsError::Open { path, .. } if path == Path::new("/nonexistent/netns"))
        );
    }

    #[tokio::test]
    async fn a_file_that_is_no_namespace_fails_to_enter_and_the_pool_carries_on() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let not_netns = NetnsWorker::open(file.path()).unwrap();
        let err = cookie_in(&not_netns).await.unwrap_err();
        assert!(
            matches!(&err, NetnsError::Enter { path, .. } if path == file.path()),
            "{err}"
        );
        assert!(err.to_string().contains(&file.path().display().to_string()));
        let own = NetnsWorker::own().unwrap();
        for _ in 0..2 * NETNS_THREADS {
            cookie_in(&own).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_panicking_job_is_reported_and_the_pool_carries_on() {
        let own = NetnsWorker::own().unwrap();
        for _ in 0..2 * NETNS_THREADS {
            let err = own
                .run(|| -> u32 { panic!("job fails") })
                .await
                .unwrap_err();
            assert!(
                matches!(&err, NetnsError::Panicked(path) if path == Path::new("/proc/self/ns/net")),
                "{err}"
            );
        }
        assert_eq!(own.run(|| 7).await.unwrap(), 7);
    }
}
