//! Running nodemesh on a simulated cluster: the local-mode YAML that
//! describes the cluster's pods, and real `mesh-agent` processes on nodes.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{Cluster, Host, PodChild};

/// The local-mode objects of a test: namespaces (with labels) and pods placed
/// on the cluster's hosts. `write` renders them as YAML into a directory.
#[derive(Default)]
pub struct MeshConfig {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<(Host, String, BTreeMap<String, String>)>,
    /// Pods written as the API server has them: no `nodemesh.io/netns` and
    /// `nodemesh.io/cgroup` annotations (the node agent finds those).
    unannotated: Vec<String>,
    /// Pods scheduled but without an address yet (their sandbox's CNI
    /// plugins have not run): `(namespace, name, node)`.
    pending: Vec<(String, String, String)>,
    service_accounts: BTreeMap<String, String>,
    /// (namespace, name, cluster IP, port, target port, selector app label)
    services: Vec<(String, String, std::net::IpAddr, u16, u16, String)>,
    /// Labels by Service `namespace/name`.
    service_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Selector labels beside `app`, by Service `namespace/name`.
    service_selectors: BTreeMap<String, BTreeMap<String, String>>,
}

pub const DATAPLANE: &str = "nodemesh.io/dataplane";

impl MeshConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a namespace; `enrolled` labels it `nodemesh.io/dataplane=enabled`.
    pub fn namespace(mut self, name: &str, enrolled: bool) -> Self {
        let mut labels = BTreeMap::new();
        if enrolled {
            labels.insert(DATAPLANE.to_owned(), "enabled".to_owned());
        }
        self.namespaces.insert(name.to_owned(), labels);
        self
    }

    /// Declares the cluster pod `host` as a Pod in `namespace`.
    pub fn pod(mut self, host: &Host, namespace: &str) -> Self {
        self.pods
            .push((host.clone(), namespace.to_owned(), BTreeMap::new()));
        self
    }

    /// Leaves out an already declared pod's netns and cgroup annotations,
    /// as on Kubernetes, where the node agent finds the pod itself.
    pub fn unannotated(mut self, pod: &str) -> Self {
        self.unannotated.push(pod.to_owned());
        self
    }

    /// Declares pod `name` in `namespace`, scheduled on `node` but not
    /// started: no address, no annotations (what the API server holds
    /// while the runtime sets up the sandbox).
    pub fn pending_pod(mut self, name: &str, namespace: &str, node: &str) -> Self {
        self.pending
            .push((namespace.to_owned(), name.to_owned(), node.to_owned()));
        self
    }

    /// Adds a label to an already declared pod.
    pub fn pod_label(mut self, pod: &str, key: &str, value: &str) -> Self {
        for (host, _, labels) in &mut self.pods {
            if host.name == pod {
                labels.insert(key.to_owned(), value.to_owned());
            }
        }
        self
    }

    /// Gives an already declared pod a service account (default: `default`).
    pub fn service_account(mut self, pod: &str, account: &str) -> Self {
        self.service_accounts
            .insert(pod.to_owned(), account.to_owned());
        self
    }

    /// Declares a Service `namespace/name` at `cluster_ip:port`, sending to
    /// `target_port` of the pods labelled `app: <app>`.
    pub fn service(
        mut self,
        namespace: &str,
        name: &str,
        cluster_ip: std::net::IpAddr,
        (port, target_port): (u16, u16),
        app: &str,
    ) -> Self {
        self.services.push((
            namespace.to_owned(),
            name.to_owned(),
            cluster_ip,
            port,
            target_port,
            app.to_owned(),
        ));
        self
    }

    /// Adds a label to a Service `namespace/name`.
    pub fn service_label(mut self, service: &str, key: &str, value: &str) -> Self {
        self.service_labels
            .entry(service.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a selector label (beside `app`) to a Service `namespace/name`.
    pub fn service_selector(mut self, service: &str, key: &str, value: &str) -> Self {
        self.service_selectors
            .entry(service.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a label to a namespace already declared.
    pub fn namespace_label(mut self, namespace: &str, key: &str, value: &str) -> Self {
        if let Some(labels) = self.namespaces.get_mut(namespace) {
            labels.insert(key.to_owned(), value.to_owned());
        }
        self
    }

    /// Writes `namespaces.yaml`, `pods.yaml` and `services.yaml` into `dir` (atomically each,
    /// so an agent never reads half a file).
    pub fn write(&self, cluster: &Cluster, dir: &Path) -> anyhow::Result<()> {
        let mut ns = String::new();
        for (name, labels) in &self.namespaces {
            writeln!(
                ns,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}"
            )?;
            write_labels(&mut ns, labels)?;
        }
        let mut pods = String::new();
        for (host, namespace, labels) in &self.pods {
            let node = cluster.node_of(host);
            writeln!(
                pods,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}",
                name = host.name
            )?;
            write_labels(&mut pods, labels)?;
            let account = self
                .service_accounts
                .get(&host.name)
                .map_or("default", String::as_str);
            if !self.unannotated.contains(&host.name) {
                writeln!(
                    pods,
                    "  annotations:\n    nodemesh.io/netns: {netns}\n    nodemesh.io/cgroup: {cgroup}",
                    netns = host.netns_path().display(),
                    cgroup = host.cgroup.display(),
                )?;
            }
            writeln!(
                pods,
                "spec:\n  nodeName: {node}\n  serviceAccountName: {account}\n  containers:\n  - name: app\n    image: app\n\
                 status:\n  podIP: {v4}\n  podIPs:\n  - ip: {v4}\n  - ip: {v6}\n  \
                 conditions:\n  - type: Ready\n    status: \"True\"",
                node = node.name,
                v4 = host.ipv4,
                v6 = host.ipv6,
            )?;
        }
        for (namespace, name, node) in &self.pending {
            writeln!(
                pods,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
                 spec:\n  nodeName: {node}\n  containers:\n  - name: app\n    image: app\n\
                 status:\n  phase: Pending"
            )?;
        }
        let mut services = String::new();
        for (namespace, name, ip, port, target, app) in &self.services {
            writeln!(
                services,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}"
            )?;
            if let Some(labels) = self.service_labels.get(&format!("{namespace}/{name}")) {
                write_labels(&mut services, labels)?;
            }
            writeln!(
                services,
                "spec:\n  clusterIP: {ip}\n  selector:\n    app: {app}"
            )?;
            for (k, v) in self
                .service_selectors
                .get(&format!("{namespace}/{name}"))
                .into_iter()
                .flatten()
            {
                writeln!(services, "    {k}: {v:?}")?;
            }
            writeln!(
                services,
                "  ports:\n  - port: {port}\n    targetPort: {target}"
            )?;
        }
        write_atomically(&dir.join("namespaces.yaml"), &ns)?;
        write_atomically(&dir.join("services.yaml"), &services)?;
        write_atomically(&dir.join("pods.yaml"), &pods)
    }
}

fn write_labels(out: &mut String, labels: &BTreeMap<String, String>) -> std::fmt::Result {
    if !labels.is_empty() {
        writeln!(out, "  labels:")?;
        for (k, v) in labels {
            writeln!(out, "    {k}: {v:?}")?;
        }
    }
    Ok(())
}

/// Writes a file via rename, so a reader sees the old or the new content.
pub fn write_atomically(path: &Path, content: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// A binary of the `mesh-agent` package (`mesh-agent`, `meshctl`), from the
/// target directory the tests run from (`cargo xtask test` builds them
/// first); `NODEMESH_BIN_DIR` points elsewhere.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("NODEMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        // Test executables live in <target>/<profile>/deps, binaries such as
        // the demo in <target>/<profile>: look beside this one, then above.
        None => {
            let exe = std::env::current_exe()?;
            let here = exe.parent().context("executable without a directory")?;
            let beside = here.join(name);
            if beside.is_file() {
                beside
            } else {
                here.parent()
                    .context("executable outside a target directory")?
                    .join(name)
            }
        }
    };
    anyhow::ensure!(
        path.is_file(),
        "{} not found: run `cargo build -p mesh-agent --bins` (cargo xtask test does) or set \
         NODEMESH_BIN_DIR",
        path.display()
    );
    Ok(path)
}

/// A mesh CA for a test cluster, made with the real CLI: `ca init`, node
/// credentials for every node (`ca issue-node`), and `ca serve` on node
/// `n1`'s underlay address, reachable from every node.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_addr: String,
    server: Option<PodChild>,
}

impl Pki {
    pub fn init(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<Self> {
        let dir = cluster.scratch_dir("pki")?;
        let pki = Self {
            ca_addr: format!("{}:15012", cluster.node("n1").ipv4),
            dir,
            server: None,
        };
        mesh_agent_cli(&["ca", "init", "--dir", &pki.path("ca")])?;
        for node in nodes {
            let (ca, out) = (pki.path("ca"), pki.path(node));
            mesh_agent_cli(&[
                "ca",
                "issue-node",
                "--dir",
                &ca,
                "--node",
                node,
                "--out",
                &out,
            ])?;
        }
        Ok(pki)
    }

    /// A path under the PKI directory (`ca`, a node's credentials, …).
    pub fn path(&self, p: &str) -> String {
        self.dir.join(p).display().to_string()
    }

    /// Starts `mesh-agent ca serve` (certificates valid `lifetime_secs`),
    /// with `config_dir` as its view of which pod runs where.
    pub fn serve(
        &mut self,
        cluster: &Cluster,
        config_dir: &Path,
        lifetime_secs: u64,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(workspace_binary("mesh-agent")?);
        cmd.args(["ca", "serve", "--dir", &self.path("ca")])
            .args(["--listen", &self.ca_addr])
            .args(["--lifetime-secs", &lifetime_secs.to_string()])
            .args(model_args(config_dir));
        let server = cluster.spawn(cluster.node("n1"), cmd)?;
        server.wait_stderr_line(Duration::from_secs(10), "the CA serving", |l| {
            l.contains("CA serving")
        })?;
        self.server = Some(server);
        Ok(())
    }

    /// `mesh-agent run` arguments that give `node`'s agent identities.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        vec![
            "--ca".to_owned(),
            self.ca_addr.clone(),
            "--credentials".to_owned(),
            self.path(node),
        ]
    }

    /// `mesh-agent run` arguments that make the agent obtain its node
    /// credentials for the token in `token_file` (Kubernetes mode).
    pub fn token_agent_args(&self, token_file: &Path) -> Vec<String> {
        vec![
            "--ca".to_owned(),
            self.ca_addr.clone(),
            "--ca-token-file".to_owned(),
            token_file.display().to_string(),
            "--ca-root".to_owned(),
            self.path(&format!("ca/{}", mesh_agent::identity::ca::ROOT_CERT)),
        ]
    }

    /// The CA process, once serving.
    pub fn server(&self) -> Option<&PodChild> {
        self.server.as_ref()
    }
}

/// Where a process started on `config_dir` reads the model: the directory
/// itself, or, when [`ApiServer::start`] serves it (its kubeconfig sits
/// beside it), the API server.
pub fn model_args(config_dir: &Path) -> Vec<std::ffi::OsString> {
    let kubeconfig = ApiServer::kubeconfig_of(config_dir);
    if kubeconfig.is_file() {
        vec![
            "--kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
        ]
    } else {
        vec!["--config-dir".into(), config_dir.into()]
    }
}

/// `nodemesh-apiserver` serving a config directory's objects through the
/// list/watch protocol on node `n1`; processes started on that directory
/// afterwards read the API server instead (see [`model_args`]).
pub struct ApiServer {
    pub process: PodChild,
    pub addr: String,
}

impl ApiServer {
    pub fn start(cluster: &Cluster, config_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_tokens(cluster, config_dir, &[])
    }

    /// [`ApiServer::start`] whose TokenReviews accept `tokens`
    /// (`TOKEN=USERNAME[@NODE]`, see `nodemesh-apiserver --token`).
    pub fn start_with_tokens(
        cluster: &Cluster,
        config_dir: &Path,
        tokens: &[String],
    ) -> anyhow::Result<Self> {
        let addr = format!("{}:6443", cluster.node("n1").ipv4);
        let mut cmd = Command::new(workspace_binary("nodemesh-apiserver")?);
        cmd.arg("--config-dir")
            .arg(config_dir)
            .args(["--listen", &addr]);
        for token in tokens {
            cmd.args(["--token", token]);
        }
        let mut process = cluster.spawn(cluster.node("n1"), cmd)?;
        let line = process.next_line(Duration::from_secs(10))?;
        anyhow::ensure!(line.contains("listening"), "nodemesh-apiserver: {line}");
        let kubeconfig = Self::kubeconfig_of(config_dir);
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters: [{{name: test, cluster: {{server: \"http://{addr}\"}}}}]\n\
                 users: [{{name: test, user: {{}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n"
            ),
        )?;
        Ok(Self { process, addr })
    }

    fn kubeconfig_of(config_dir: &Path) -> PathBuf {
        config_dir.with_extension("kubeconfig")
    }

    /// Stops serving (the processes reading it lose their watches); the
    /// kubeconfig stays, so they keep trying.
    pub fn stop(&mut self) {
        self.process.kill();
    }
}

/// Runs a `mesh-agent` command to completion, failing with its stderr.
pub fn mesh_agent_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(workspace_binary("mesh-agent")?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "mesh-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running node agent.
/// A running `mesh-agent` process: a node agent, or a waypoint (which has
/// no bpffs state of its own).
pub struct Agent {
    pub node: String,
    pub process: PodChild,
    pub config_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpffs_dir: Option<PathBuf>,
}

/// One flow record (`nodemesh::flow` log line) of an agent.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowLog {
    pub message: String,
    pub direction: String,
    pub pod: String,
    pub src: String,
    pub orig_dst: String,
    /// `plaintext` or `hbone`.
    pub path: String,
    /// `closed`, `refused`, `denied` or `error`.
    pub state: String,
    #[serde(default)]
    pub source_identity: Option<String>,
    #[serde(default)]
    pub peer_identity: Option<String>,
    /// `allow` / `deny`, when policy was evaluated.
    #[serde(default)]
    pub decision: Option<String>,
    /// The verdict in words, naming the deciding policy and rule.
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub dry_run: Option<String>,
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub received: u64,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

pub const AGENT_READY: Duration = Duration::from_secs(20);

impl Agent {
    /// Starts `mesh-agent run` on `node` (in the node's namespace and
    /// cgroup) with local config in `config_dir`, and waits until it is ready.
    pub fn start(cluster: &Cluster, node: &str, config_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(cluster, node, config_dir, &[])
    }

    /// [`Agent::start`] with extra `mesh-agent run` arguments.
    pub fn start_with(
        cluster: &Cluster,
        node: &str,
        config_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let agent = Self::spawn(cluster, node, config_dir, extra)?;
        agent
            .process
            .wait_stderr_line(AGENT_READY, "ready line", |l| {
                l.contains(r#""message":"ready""#)
            })?;
        Ok(agent)
    }

    /// [`Agent::start_with`] without waiting until it is ready.
    pub fn spawn(
        cluster: &Cluster,
        node: &str,
        config_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let host = cluster.node(node);
        let run_dir = cluster.scratch_dir(&format!("run-{node}"))?;
        let bpffs_dir = cluster.bpffs_dir(&format!("agent-{node}"));
        let mut cmd = Command::new(workspace_binary("mesh-agent")?);
        cmd.args(["run", "--log-format", "json", "--node", node])
            .args(model_args(config_dir))
            .arg("--pods-cgroup")
            .arg(cluster.pods_cgroup())
            .arg("--bpffs-dir")
            .arg(&bpffs_dir)
            .arg("--run-dir")
            .arg(&run_dir)
            // Not /var/run/netns, where every test's namespaces are pinned
            // (with the same addresses): only what the test puts here.
            .arg("--netns-dir")
            .arg(cluster.scratch_dir("netns-pins")?)
            .args(["--reload-interval-ms", "100"])
            .args(extra)
            // As in the image, which holds no other program: the agent must
            // not depend on running one (it once ran `ip`).
            .env("PATH", "/nonexistent")
            .env(
                "RUST_LOG",
                std::env::var("NODEMESH_E2E_RUST_LOG").unwrap_or_else(|_| {
                    // eBPF-side logs (aya-log) and capture events are debug-level.
                    "info,mesh_programs=debug,nodemesh::capture=debug".into()
                }),
            );
        Ok(Self {
            node: node.to_owned(),
            process: cluster.spawn(host, cmd)?,
            config_dir: config_dir.to_owned(),
            run_dir,
            bpffs_dir: Some(bpffs_dir),
        })
    }

    /// Starts `mesh-agent waypoint --namespace <namespace> --name <name>` on
    /// `node` with identities from `pki`, and waits until it serves.
    pub fn start_waypoint(
        cluster: &Cluster,
        node: &str,
        config_dir: &Path,
        pki: &Pki,
        waypoint: (&str, &str),
    ) -> anyhow::Result<Self> {
        let host = cluster.node(node);
        let waypoint = Self::spawn_waypoint(
            cluster,
            (host, node),
            config_dir,
            &pki.agent_args(node),
            waypoint,
        )?;
        waypoint.wait_waypoint_ready()?;
        Ok(waypoint)
    }

    /// `mesh-agent waypoint --namespace <namespace> --name <name>` for
    /// `node`, run in `host`'s namespaces (the node's, or on Kubernetes the
    /// waypoint's own pod's) with `extra` arguments (identities), not
    /// waited for.
    pub fn spawn_waypoint(
        cluster: &Cluster,
        (host, node): (&Host, &str),
        config_dir: &Path,
        extra: &[String],
        (namespace, name): (&str, &str),
    ) -> anyhow::Result<Self> {
        let run_dir = cluster.scratch_dir(&format!("run-waypoint-{namespace}-{name}"))?;
        let mut cmd = Command::new(workspace_binary("mesh-agent")?);
        cmd.args(["waypoint", "--log-format", "json", "--node", node])
            .args(["--namespace", namespace, "--name", name])
            .args(model_args(config_dir))
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--reload-interval-ms", "100"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("NODEMESH_E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        Ok(Self {
            node: node.to_owned(),
            process: cluster.spawn(host, cmd)?,
            config_dir: config_dir.to_owned(),
            run_dir,
            bpffs_dir: None,
        })
    }

    /// Waits until a waypoint serves and has its certificate.
    pub fn wait_waypoint_ready(&self) -> anyhow::Result<()> {
        self.process
            .wait_stderr_line(AGENT_READY, "waypoint ready line", |l| {
                l.contains(r#""message":"waypoint ready""#)
            })?;
        self.wait_status("the waypoint's certificate", |s| {
            s["certs"].as_array().is_some_and(|c| !c.is_empty())
        })?;
        Ok(())
    }

    /// Starts an agent with identities from `pki` and waits until every
    /// enrolled pod of its node has a certificate.
    pub fn start_meshed(
        cluster: &Cluster,
        node: &str,
        config_dir: &Path,
        pki: &Pki,
    ) -> anyhow::Result<Self> {
        Self::start_meshed_with(cluster, node, config_dir, pki, &[])
    }

    /// [`Agent::start_meshed`] with extra `mesh-agent run` arguments.
    pub fn start_meshed_with(
        cluster: &Cluster,
        node: &str,
        config_dir: &Path,
        pki: &Pki,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut args = pki.agent_args(node);
        args.extend_from_slice(extra);
        let agent = Self::start_with(cluster, node, config_dir, &args)?;
        agent.wait_status("a certificate for every enrolled pod", |s| {
            let count = |k: &str| s[k].as_array().map_or(0, Vec::len);
            count("certs") == count("pods")
        })?;
        Ok(agent)
    }

    /// Every flow record logged so far.
    pub fn flows(&self) -> Vec<FlowLog> {
        self.process
            .stderr()
            .lines()
            .filter(|l| l.contains(r#""target":"nodemesh::flow""#))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for a flow record matching `wanted`.
    pub fn wait_flow(
        &self,
        what: &str,
        wanted: impl Fn(&FlowLog) -> bool,
    ) -> anyhow::Result<FlowLog> {
        Ok(self.wait_flows(what, 1, wanted)?.remove(0))
    }

    /// Waits (bounded) until `count` flow records match `wanted`; returns
    /// every match so far.
    pub fn wait_flows(
        &self,
        what: &str,
        count: usize,
        wanted: impl Fn(&FlowLog) -> bool,
    ) -> anyhow::Result<Vec<FlowLog>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found: Vec<FlowLog> = self.flows().into_iter().filter(|f| wanted(f)).collect();
            if found.len() >= count {
                return Ok(found);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "agent on {}: no flow record {what} within 30 s; flows: {:#?}",
                    self.node,
                    self.flows()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's status.json.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.run_dir.join("status.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Waits (bounded) until status.json satisfies `wanted`.
    pub fn wait_status(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = self.status()
                && wanted(&status)
            {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "agent on {}: status never showed {what}; last: {:?}; stderr tail: {}",
                    self.node,
                    self.status().ok(),
                    tail(&self.process.stderr(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's admin API socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.run_dir.join("admin.sock")
    }

    /// Runs `meshctl --agent <this agent> <args>`; fails with its stderr
    /// unless it exits 0; returns stdout.
    pub fn meshctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(workspace_binary("meshctl")?)
            .arg("--agent")
            .arg(self.admin_socket())
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "meshctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The agent's flow records (`meshctl flows -o json` plus `filter`).
    pub fn flow_records(
        &self,
        filter: &[&str],
    ) -> anyhow::Result<Vec<mesh_agent::flows::FlowRecord>> {
        let mut args = vec!["flows", "-o", "json"];
        args.extend_from_slice(filter);
        Ok(serde_json::from_str(&self.meshctl(&args)?)?)
    }

    /// Pods the agent reports as enrolled (`namespace/name`).
    pub fn enrolled_pods(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.status()?["pods"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .filter_map(|p| p["pod"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// `NODEMESH_E2E_AGENT_LOGS=1` prints every agent's log when it is dropped,
/// for debugging a failing scenario.
impl Drop for Agent {
    fn drop(&mut self) {
        if std::env::var_os("NODEMESH_E2E_AGENT_LOGS").is_some() {
            eprintln!("--- agent {} log ---\n{}", self.node, self.process.stderr());
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
