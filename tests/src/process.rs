//! Processes inside pods: started in the pod's network namespace *and* its
//! cgroup (as a container runtime would place them, so cgroup-attached
//! capture sees them), with bounded waits and kill-on-drop.
use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cluster::Host;

/// Starts `cmd` in `host`'s network namespace and cgroup.
pub fn spawn_in(host: &Host, mut cmd: Command) -> anyhow::Result<PodChild> {
    let netns =
        File::open(host.netns_path()).with_context(|| format!("opening netns of {}", host.name))?;
    let procs_path = host.cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?;
    let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook runs in the forked child before exec and only makes
    // two async-signal-safe system calls on descriptors that stay open until
    // `spawn` returns (`netns` and `procs` outlive it).
    unsafe {
        cmd.pre_exec(move || {
            // Join the cgroup first ("0" means the writing process itself),
            // then the network namespace.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let label = format!("{:?} in {}", cmd.get_program(), host.name);
    let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
    drop((netns, procs));
    Ok(PodChild::new(child, label))
}

/// Starts `cmd` where the test runs (for tools that enter a namespace
/// themselves, like `ip netns exec`), with the same bounded waits and
/// kill-on-drop as pod processes.
pub fn spawn_here(mut cmd: Command) -> anyhow::Result<PodChild> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let label = format!("{:?}", cmd.get_program());
    let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
    Ok(PodChild::new(child, label))
}

/// A process started in a pod. Its stdout is read line by line; its stderr
/// is collected for error messages. Dropping it kills it.
pub struct PodChild {
    child: Child,
    label: String,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl PodChild {
    fn new(mut child: Child, label: String) -> Self {
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock()
                    .expect("stderr buffer")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            label,
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// Waits (bounded) until a line of stderr satisfies `wanted`; returns it.
    pub fn wait_stderr_line(
        &self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| wanted(l)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no {what} within {timeout:?}; stderr:\n{}",
                    self.label,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next line of stdout, waiting at most `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => bail!(
                "{}: no output line within {timeout:?}; stderr: {}",
                self.label,
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!(
                "{}: stdout closed (exit: {:?}); stderr: {}",
                self.label,
                self.child.try_wait().ok().flatten(),
                self.stderr()
            ),
        }
    }

    /// Waits for exit (bounded); returns status and the rest of stdout.
    pub fn wait_output(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    bail!(
                        "{}: still running after {timeout:?}; killed. stderr: {}",
                        self.label,
                        self.stderr()
                    );
                }
            }
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, out));
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "{}: closed stdout but did not exit within {timeout:?}",
                    self.label
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for exit (bounded) and fails unless it exited 0; returns stdout.
    pub fn wait_success(mut self, timeout: Duration) -> anyhow::Result<String> {
        let (status, out) = self.wait_output(timeout)?;
        if !status.success() {
            bail!(
                "{}: {status}; stdout: {out}; stderr: {}",
                self.label,
                self.stderr()
            );
        }
        Ok(out)
    }

    /// Interrupts the process (SIGINT: tools flush and summarise) and waits
    /// for it to exit; returns its stderr.
    pub fn interrupt(mut self, timeout: Duration) -> anyhow::Result<String> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        self.wait_output(timeout)?;
        Ok(self.stderr())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A figure of `/proc/<pid>/status` in KiB (`VmRSS`, `RssAnon`, …).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .with_context(|| format!("{field} of process {pid}"))
}
