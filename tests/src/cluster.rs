//! Building and tearing down a simulated cluster (see the crate docs for the
//! topology).
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mesh_agent::capture::{cgroup::cgroup2_mount, netns};

use crate::process::{self, PodChild};

static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Prefix of everything this process creates; [`crate::leaks`] looks for
/// it. Tests get `nmt-<pid>-`; a program may choose its own first.
pub fn suite_prefix() -> String {
    PREFIX
        .get_or_init(|| format!("nmt-{}-", std::process::id()))
        .clone()
}

/// Names this process's resources `<name>-<pid>-…` instead of `nmt-<pid>-…`;
/// only before the first cluster is built.
pub fn set_suite_prefix(name: &str) -> anyhow::Result<()> {
    PREFIX
        .set(format!("{name}-{}-", std::process::id()))
        .map_err(|_| anyhow::anyhow!("the name prefix is already in use"))
}

/// Pods one node can hold: its bridge takes at most 1024 ports (the
/// kernel's `BR_MAX_PORTS`).
pub const MAX_PODS_PER_NODE: usize = 1000;

/// What to build: nodes, and pods placed on them.
#[derive(Default, Clone)]
pub struct ClusterSpec {
    nodes: Vec<String>,
    pods: Vec<(String, String)>,
    sandboxes: Vec<(String, String)>,
}

impl ClusterSpec {
    pub fn new() -> Self {
        Self::default()
    }

    /// The smallest cross-node cluster: nodes `n1`, `n2`; pod `a` on `n1`,
    /// pod `b` on `n2`.
    pub fn cross_node_pair() -> Self {
        Self::new()
            .node("n1")
            .node("n2")
            .pod("a", "n1")
            .pod("b", "n2")
    }

    /// Adds a node; node `i` (from 1, in order) gets pod subnet `10.i.0.0/16`.
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_owned());
        self
    }

    /// Adds a pod on `node`; pods get `10.i.0.11`, `10.i.0.12`, … `10.i.0.250`
    /// of their node's subnet, then `10.i.1.11`… (up to [`MAX_PODS_PER_NODE`]).
    pub fn pod(mut self, name: &str, node: &str) -> Self {
        self.pods.push((name.to_owned(), node.to_owned()));
        self
    }

    /// Adds a pod sandbox on `node` as a container runtime makes it before
    /// running the CNI plugins: a network namespace and a cgroup, with no
    /// interface and no address (its `ipv4`/`ipv6` stay unspecified).
    pub fn sandbox(mut self, name: &str, node: &str) -> Self {
        self.sandboxes.push((name.to_owned(), node.to_owned()));
        self
    }

    /// Creates everything. On error, whatever was created is removed again.
    pub fn build(self) -> anyhow::Result<Cluster> {
        crate::require_root()?;
        if self.nodes.is_empty() || self.nodes.len() > 250 {
            bail!("a cluster needs 1 to 250 nodes, got {}", self.nodes.len());
        }
        let mut cluster = Cluster::empty()?;
        cluster.make_underlay()?;
        for (i, name) in self.nodes.iter().enumerate() {
            cluster.make_node(name, i as u8 + 1)?;
        }
        cluster.route_between_nodes()?;
        for (pod, node) in &self.pods {
            cluster.make_pod(pod, node)?;
        }
        for (pod, node) in &self.sandboxes {
            cluster.make_sandbox(pod, node)?;
        }
        Ok(cluster)
    }
}

/// A node or a pod: one network namespace with its addresses and cgroup.
#[derive(Debug, Clone)]
pub struct Host {
    /// Name given in the spec (`"a"`, `"n1"`).
    pub name: String,
    /// Name under /run/netns.
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The cgroup v2 directory processes spawned here join.
    pub cgroup: PathBuf,
    /// Index of the node this host is (nodes) or runs on (pods).
    pub node: u8,
}

impl Host {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// A built cluster. Dropping it removes everything it made.
pub struct Cluster {
    prefix: String,
    cgroup_root: PathBuf,
    /// Namespaces in creation order (removed in reverse).
    namespaces: Vec<String>,
    nodes: Vec<Host>,
    pods: Vec<Host>,
    /// bpffs directories handed out by [`Cluster::bpffs_dir`].
    pins: std::sync::Mutex<Vec<PathBuf>>,
}

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

const UNDERLAY_V6: &str = "fd00:30::";

impl Cluster {
    fn empty() -> anyhow::Result<Self> {
        // Fixed width, so one cluster's prefix is never a prefix of another's.
        let prefix = format!(
            "{}c{:03}",
            suite_prefix(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup_root = cgroup2_mount()?.join(&prefix);
        for dir in ["", "nodes", "pods"] {
            std::fs::create_dir(cgroup_root.join(dir))
                .with_context(|| format!("creating cgroup {}", cgroup_root.join(dir).display()))?;
        }
        Ok(Self {
            prefix,
            cgroup_root,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            pins: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Prefix of this cluster's namespaces and cgroup root.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Root of this cluster's cgroups; pods live under `pods/`, node
    /// processes under `nodes/`.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// A bpffs directory for this cluster (e.g. one agent's pins), removed
    /// at teardown — which detaches every link pinned in it.
    pub fn bpffs_dir(&self, name: &str) -> PathBuf {
        let dir = Path::new(BPFFS).join(format!("{}-{name}", self.prefix));
        self.pins.lock().expect("pins").push(dir.clone());
        dir
    }

    /// A scratch directory on disk (config, status files), removed at teardown.
    pub fn scratch_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(&self.prefix).join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The cgroup all pods live under (the mesh's "pod slice").
    pub fn pods_cgroup(&self) -> PathBuf {
        self.cgroup_root.join("pods")
    }

    pub fn nodes(&self) -> &[Host] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> &Host {
        Self::find(&self.nodes, name, "node")
    }

    pub fn pod(&self, name: &str) -> &Host {
        Self::find(&self.pods, name, "pod")
    }

    /// The node a host is on (a node is on itself).
    pub fn node_of(&self, host: &Host) -> &Host {
        self.nodes
            .iter()
            .find(|n| n.node == host.node)
            .expect("every host belongs to a node of its cluster")
    }

    fn find<'a>(hosts: &'a [Host], name: &str, kind: &str) -> &'a Host {
        hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no {kind} named {name:?} in this cluster"))
    }

    /// Starts `cmd` inside `host`'s network namespace and cgroup.
    pub fn spawn(&self, host: &Host, cmd: Command) -> anyhow::Result<PodChild> {
        process::spawn_in(host, cmd)
    }

    /// Runs `cmd` in `host` to completion (bounded by `timeout`), failing
    /// unless it exits 0; returns its stdout.
    pub fn run(&self, host: &Host, cmd: Command, timeout: Duration) -> anyhow::Result<String> {
        self.spawn(host, cmd)?.wait_success(timeout)
    }

    /// The kernel cookie of a host's network namespace (the enrolment key).
    pub fn netns_cookie(&self, host: &Host) -> anyhow::Result<u64> {
        Ok(netns::netns_cookie(&host.netns_path())?)
    }

    fn add_netns(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}-{suffix}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip_in(&name, "link set lo up")?;
        // Duplicate address detection would leave IPv6 addresses tentative
        // for a second or two; these links are private and can't collide.
        set_sysctls(
            &name,
            &[
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        Ok(name)
    }

    /// Records every frame crossing the node-to-node link (the underlay
    /// bridge) into `pcap`, until [`PodChild::interrupt`] stops it.
    pub fn record_underlay(&self, pcap: &Path) -> anyhow::Result<crate::PodChild> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.underlay()])
            .args(["tcpdump", "-i", "br0", "-n", "-s", "0"])
            // Every frame handed over at once and written at once, with
            // 64 MiB of kernel buffer: frames are up to 64 KiB (GSO), and a
            // busy machine must not make the recorder drop any.
            .args(["-U", "--immediate-mode", "-B", "65536", "-w"])
            .arg(pcap);
        let recorder = crate::process::spawn_here(cmd)?;
        recorder.wait_stderr_line(Duration::from_secs(10), "tcpdump listening", |l| {
            l.contains("listening on")
        })?;
        Ok(recorder)
    }

    fn underlay(&self) -> String {
        format!("{}-underlay", self.prefix)
    }

    fn make_underlay(&mut self) -> anyhow::Result<()> {
        let ns = self.add_netns("underlay")?;
        ip_in(&ns, "link add br0 type bridge")?;
        ip_in(&ns, "link set br0 up")
    }

    fn make_node(&mut self, name: &str, index: u8) -> anyhow::Result<()> {
        let ns = self.add_netns(&format!("node-{name}"))?;
        let ipv4 = Ipv4Addr::new(172, 30, 0, index);
        let ipv6: Ipv6Addr = format!("{UNDERLAY_V6}{index:x}").parse()?;
        plug(&self.underlay(), &format!("n{index}"), &ns, ipv4, ipv6)?;
        // The node's bridge is its pods' gateway.
        ip_in(&ns, "link add br0 type bridge")?;
        ip_in(&ns, &format!("addr add 10.{index}.0.1/16 dev br0"))?;
        ip_in(
            &ns,
            &format!("addr add fd00:10:{index:x}::1/64 dev br0 nodad"),
        )?;
        ip_in(&ns, "link set br0 up")?;
        set_sysctls(
            &ns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;
        let cgroup = self.cgroup_root.join("nodes").join(name);
        std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        self.nodes.push(Host {
            name: name.to_owned(),
            netns: ns,
            ipv4,
            ipv6,
            cgroup,
            node: index,
        });
        Ok(())
    }

    fn route_between_nodes(&self) -> anyhow::Result<()> {
        for from in &self.nodes {
            for to in self.nodes.iter().filter(|n| n.node != from.node) {
                let j = to.node;
                ip_in(
                    &from.netns,
                    &format!("route add 10.{j}.0.0/16 via {}", to.ipv4),
                )?;
                ip_in(
                    &from.netns,
                    &format!("-6 route add fd00:10:{j:x}::/64 via {}", to.ipv6),
                )?;
            }
        }
        Ok(())
    }

    fn make_pod(&mut self, name: &str, node_name: &str) -> anyhow::Result<()> {
        let Some(node) = self.nodes.iter().find(|n| n.name == node_name).cloned() else {
            bail!("pod {name:?} is placed on node {node_name:?}, which the spec does not declare");
        };
        if self.pods.iter().any(|p| p.name == name) {
            bail!("pod name {name:?} is used twice in the spec");
        }
        let nth = self.pods.iter().filter(|p| p.node == node.node).count();
        if nth >= MAX_PODS_PER_NODE {
            bail!("too many pods on node {node_name:?} (max {MAX_PODS_PER_NODE})");
        }
        // Both < 256: nth < MAX_PODS_PER_NODE.
        let (hi, lo) = ((nth / 240) as u8, (11 + nth % 240) as u8);
        let ns = self.add_netns(&format!("pod-{name}"))?;
        let i = node.node;
        let ipv4 = Ipv4Addr::new(10, i, hi, lo);
        let ipv6: Ipv6Addr = format!("fd00:10:{i:x}::{hi:x}:{lo:x}").parse()?;
        plug(&node.netns, &format!("p{}", 11 + nth), &ns, ipv4, ipv6)?;
        ip_in(&ns, &format!("route add default via 10.{i}.0.1"))?;
        ip_in(&ns, &format!("-6 route add default via fd00:10:{i:x}::1"))?;
        let cgroup = self.pods_cgroup().join(name);
        std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        self.pods.push(Host {
            name: name.to_owned(),
            netns: ns,
            ipv4,
            ipv6,
            cgroup,
            node: i,
        });
        Ok(())
    }

    fn make_sandbox(&mut self, name: &str, node_name: &str) -> anyhow::Result<()> {
        let Some(node) = self.nodes.iter().find(|n| n.name == node_name).cloned() else {
            bail!(
                "sandbox {name:?} is placed on node {node_name:?}, which the spec does not declare"
            );
        };
        let netns = self.add_netns(&format!("pod-{name}"))?;
        let cgroup = self.pods_cgroup().join(name);
        std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        self.pods.push(Host {
            name: name.to_owned(),
            netns,
            ipv4: Ipv4Addr::UNSPECIFIED,
            ipv6: Ipv6Addr::UNSPECIFIED,
            cgroup,
            node: node.node,
        });
        Ok(())
    }

    /// Removes everything; returns what could not be removed.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        // Processes first (agents hold links and listeners), then pins, then
        // the namespaces they pointed into.
        if let Err(e) = remove_cgroup_tree(&self.cgroup_root) {
            errors.push(format!("{e:#}"));
        }
        for dir in self.pins.lock().expect("pins").drain(..) {
            if let Err(e) = remove_pins(&dir) {
                errors.push(format!("{e:#}"));
            }
        }
        let scratch = std::env::temp_dir().join(&self.prefix);
        if scratch.exists()
            && let Err(e) = std::fs::remove_dir_all(&scratch)
        {
            errors.push(format!("removing {}: {e}", scratch.display()));
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        errors
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for error in self.teardown() {
            eprintln!("cluster {} teardown: {error}", self.prefix);
        }
    }
}

const BPFFS: &str = "/sys/fs/bpf";

/// Removes a bpffs directory and everything pinned in it.
pub fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing pins {}", dir.display())),
    }
}

/// Kills every process in a cgroup subtree, then removes its directories.
pub fn remove_cgroup_tree(root: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) SIGKILLs the whole subtree atomically, so no
    // process can fork its way out of the cleanup.
    std::fs::write(root.join("cgroup.kill"), "1")
        .with_context(|| format!("killing processes of {}", root.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while populated(root)? {
        if Instant::now() > deadline {
            bail!("processes in {} survived SIGKILL for 10 s", root.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_dirs_bottom_up(root)
}

fn populated(cgroup: &Path) -> anyhow::Result<bool> {
    let events = std::fs::read_to_string(cgroup.join("cgroup.events"))
        .with_context(|| format!("reading {}/cgroup.events", cgroup.display()))?;
    Ok(events.lines().any(|l| l == "populated 1"))
}

fn remove_dirs_bottom_up(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_dirs_bottom_up(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))
}

/// Connects namespace `ns` to the bridge `br0` of `bridge_ns`: a veth whose
/// bridge end is `port` and whose other end is `ns`'s `eth0`, addressed.
fn plug(
    bridge_ns: &str,
    port: &str,
    ns: &str,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
) -> anyhow::Result<()> {
    ip_in(
        bridge_ns,
        &format!("link add {port} type veth peer name eth0 netns {ns}"),
    )?;
    ip_in(bridge_ns, &format!("link set {port} master br0 up"))?;
    ip_in(ns, &format!("addr add {ipv4}/16 dev eth0"))?;
    ip_in(ns, &format!("addr add {ipv6}/64 dev eth0 nodad"))?;
    ip_in(ns, "link set eth0 up")
}

/// Runs `ip -n NS COMMAND…` (`command` split on whitespace).
pub fn ip_in(ns: &str, command: &str) -> anyhow::Result<()> {
    let args: Vec<&str> = ["-n", ns]
        .into_iter()
        .chain(command.split_whitespace())
        .collect();
    ip(&args)
}

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed? `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes sysctls as seen from inside namespace `ns` (/proc/sys/net is per
/// network namespace of the thread that opens it).
fn set_sysctls(ns: &str, values: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = Path::new("/run/netns").join(ns);
    netns::in_netns(&path, || {
        values.iter().try_for_each(|(key, value)| {
            std::fs::write(Path::new("/proc/sys").join(key), value)
                .with_context(|| format!("setting {key}={value} in {ns}"))
        })
    })?
}
