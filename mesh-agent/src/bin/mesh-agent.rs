//! `mesh-agent`: the per-node nodemesh agent.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use mesh_agent::{
    admin::{
        api::{self, Admin},
        metrics::{self, Metrics},
        status::Status,
    },
    capture::{
        Capture, cgroup, events, kernel,
        object::{self, Attached},
    },
    flows::{FlowStore, FlowSubscriber},
    identity::{
        self,
        store::{CertSource, CertStore},
    },
    node::{cni, discover::Places, enrol::Enrolment, owner::Ownership, pods::NodePods},
    proxy::{
        mesh::{Mesh, MeshIdentity},
        workers::{self, Workers},
    },
    state::{self, WaypointRef, cluster::Scope},
    tunnel::pool::Spread,
};

const DEFAULT_BPFFS_DIR: &str = object::DEFAULT_DIR;
const DEFAULT_RUN_DIR: &str = "/run/nodemesh";

/// The nodemesh node agent: captures enrolled pods' TCP with eBPF and hands
/// it to the mesh.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  \
      mesh-agent check\n  \
      mesh-agent run --config-dir /etc/nodemesh/local --node node-1 \\\n      \
          --pods-cgroup /sys/fs/cgroup/kubepods.slice\n  \
      mesh-agent ca init --dir /var/lib/nodemesh/ca --trust-domain cluster.local\n  \
      mesh-agent uninstall      # detach every capture program from this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this machine can run the agent: kernel version, cgroup v2,
    /// bpffs, capabilities, and every capture program through the kernel
    /// verifier (attaches nothing). The same checks as `meshctl check`.
    Check {
        /// Where the agent will pin its programs; they are loaded into a
        /// scratch directory on the same bpffs, removed afterwards.
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
    /// Run the node agent in local mode: cluster objects come from YAML files
    /// in a directory, re-read when they change.
    Run(RunArgs),
    /// Run an L7 waypoint in local mode, inside its pod's network namespace
    /// (the pod labelled gateway.networking.k8s.io/gateway-name=<name>): it
    /// routes HTTP/1.1, HTTP/2 and gRPC for the Services that use it, by
    /// their HTTPRoutes.
    Waypoint(WaypointArgs),
    /// The mesh CA: create its root (the key never leaves --dir).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Put the nodemesh-cni plugin on this node (Kubernetes), or take it off.
    #[command(subcommand)]
    Cni(CniCommand),
    /// Remove the mesh from this node: detach every capture program and
    /// delete the pinned maps. Enrolled pods go back to direct connections.
    Uninstall {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
    /// Print the CustomResourceDefinitions of nodemesh's kinds
    /// (AuthorizationPolicy, PeerAuthentication, TrafficPolicy in
    /// nodemesh.io/v1alpha1) as one multi-document YAML, generated from the
    /// types the agent parses them with. deploy/crds.yaml is this output:
    /// `mesh-agent crds > deploy/crds.yaml`, or `mesh-agent crds | kubectl
    /// apply -f -`.
    Crds,
}

#[derive(Subcommand)]
enum CniCommand {
    /// Copy the nodemesh-cni binary into --cni-bin-dir and add its entry at
    /// the end of the node's primary network configuration (the first
    /// *.conflist or *.conf in --cni-conf-dir). Idempotent. From then on the
    /// runtime holds each new pod of an enrolled namespace until the agent
    /// has enrolled it, and fails the sandbox (it is retried) while no agent
    /// answers.
    #[command(after_help = "Example (the DaemonSet's installer container):\n  \
      mesh-agent cni install --cni-bin-dir /host/opt/cni/bin \\\n      \
          --cni-conf-dir /host/etc/cni/net.d --exclude-namespace kube-system --watch")]
    Install {
        /// Where the runtime finds CNI plugins (the host's /opt/cni/bin).
        #[arg(long)]
        cni_bin_dir: PathBuf,
        /// The runtime's network configurations (the host's /etc/cni/net.d).
        #[arg(long)]
        cni_conf_dir: PathBuf,
        /// The agent's CNI socket, as the plugin (run on the host) sees it.
        #[arg(long, default_value = cni::plugin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Pods of this namespace are never held back (repeatable): the
        /// cluster's own system pods must start even while no agent runs.
        #[arg(long = "exclude-namespace", value_name = "NAMESPACE")]
        exclude_namespaces: Vec<String>,
        /// The plugin binary to install [default: nodemesh-cni beside this
        /// executable].
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Keep running and put the entry back whenever the node's network
        /// plugin rewrites its configuration. The plugin stays installed
        /// when this stops, so across an upgrade new pods wait for the new
        /// agent instead of starting uncaptured.
        #[arg(long)]
        watch: bool,
    },
    /// Remove the plugin's entry and binary: new pods start without waiting
    /// for the agent (and, with no agent, uncaptured).
    Uninstall {
        #[arg(long)]
        cni_bin_dir: PathBuf,
        #[arg(long)]
        cni_conf_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new root key (mode 0600) and certificate in --dir. Refuses to
    /// overwrite an existing root.
    Init {
        #[arg(long, default_value_os_t = identity::ca::default_dir())]
        dir: PathBuf,
        /// The trust domain in every workload's SPIFFE ID.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue a node agent's credentials (node.key 0600, node.crt, bundle.crt)
    /// into --out, as spiffe://<td>/ns/nodemesh-system/sa/node-<node>.
    IssueNode {
        #[arg(long, default_value_os_t = identity::ca::default_dir())]
        dir: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask the CA for a pod's certificate with this node's credentials (what
    /// the agent does for each pod); writes <out>/<pod name>.key (0600) and .crt.
    Request {
        /// The CA's address (its --listen), host:port.
        #[arg(long)]
        ca: identity::signing::CaAddr,
        /// Directory written by `ca issue-node`.
        #[arg(long)]
        credentials: PathBuf,
        /// The pod, as namespace/name.
        #[arg(long)]
        pod: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve certificate requests from node agents over mTLS. A node may only
    /// obtain identities of pods that the model (--config-dir or
    /// --kubernetes) places on it. With --kubernetes, node agents may also
    /// obtain their own credentials with a service-account token (checked
    /// by a TokenReview), and nodemesh.io objects get a status condition
    /// Accepted (False, with the field at fault, when invalid).
    Serve {
        #[arg(long, default_value_os_t = identity::ca::default_dir())]
        dir: PathBuf,
        /// The CA's view of which pod runs where.
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, default_value = "127.0.0.1:15012")]
        listen: std::net::SocketAddr,
        /// Lifetime of issued workload and node certificates, in seconds.
        #[arg(long, default_value_t = identity::ca::DEFAULT_LIFETIME.as_secs())]
        lifetime_secs: u64,
        /// With --kubernetes: the only user whose tokens get node
        /// credentials (the agent DaemonSet's service account).
        #[arg(long, default_value = identity::signing::token_review::AGENT_SERVICE_ACCOUNT)]
        agent_service_account: String,
        /// With --kubernetes: the audience agents' tokens must be minted for.
        #[arg(long, default_value = identity::signing::token_review::AUDIENCE)]
        token_audience: String,
    },
}

/// What every role of the agent that serves the mesh needs: the model, the
/// node, identities, flow records and the admin API.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("node_auth").args(["credentials", "ca_token_file"])))]
struct MeshArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// This node's name; only pods whose spec.nodeName matches are served.
    #[arg(long)]
    node: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The mesh CA's address, host:port (a DNS name is resolved at each
    /// connection): pods get workload certificates from it (renewed at
    /// half-life). Needs exactly one of --credentials and --ca-token-file.
    #[arg(long, requires = "node_auth")]
    ca: Option<identity::signing::CaAddr>,
    /// This node's credentials (`mesh-agent ca issue-node --out`).
    #[arg(long, requires = "ca")]
    credentials: Option<PathBuf>,
    /// Kubernetes: a projected service-account token (audience
    /// nodemesh-ca), re-read at each use; the CA checks it with a
    /// TokenReview and issues this node's credentials (a waypoint: its own
    /// pod's certificate), renewed at half-life. The agent waits for them at
    /// start.
    #[arg(long, requires = "ca")]
    ca_token_file: Option<PathBuf>,
    /// With --ca-token-file: the CA's root certificate, which proves the CA
    /// to an agent that has no credentials yet (the ConfigMap
    /// nodemesh-ca-root, mounted into the agent).
    #[arg(long, requires = "ca_token_file", default_value = identity::signing::bootstrap::DEFAULT_CA_ROOT)]
    ca_root: PathBuf,
    /// Closed flow records kept for `meshctl flows` (a ring: the oldest go
    /// first). Memory is bounded by this, about 1 KiB per record.
    #[arg(long, default_value_t = mesh_agent::flows::store::DEFAULT_CAPACITY)]
    flow_capacity: usize,
    /// Also serve the admin API on this TCP address (keep it on localhost:
    /// it has no authentication). It is always on `<run-dir>/admin.sock`.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Data-plane threads, each a single-threaded event loop serving whole
    /// connections with its own pooled tunnels (as Envoy's
    /// `--concurrency`) [default: the CPUs this process may use].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
}

/// Where the model (namespaces, pods, services, policies, routes) comes
/// from: exactly one of --config-dir and --kubernetes.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["config_dir", "kubernetes"])))]
struct SourceArgs {
    /// Local mode: a directory of Kubernetes-style YAML (Namespace, Pod,
    /// Service, policies, HTTPRoute), re-read when it changes; each Pod names
    /// its network namespace and cgroup in the annotations
    /// `nodemesh.io/netns` and `nodemesh.io/cgroup`.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    config_dir: Option<PathBuf>,
    /// How often --config-dir is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    reload_interval_ms: u64,
    /// Kubernetes mode: watch the API server (the pod's service account when
    /// run in the cluster, else --kubeconfig, $KUBECONFIG or
    /// ~/.kube/config). The agent starts serving once everything is listed,
    /// and keeps its last good model while the API server is unreachable.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig for --kubernetes outside the cluster.
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
}

impl SourceArgs {
    /// Opens the model's source; on the API server, watching the pods
    /// `scope` says.
    async fn open(&self, scope: Scope) -> anyhow::Result<state::source::Opened> {
        let source = match &self.config_dir {
            Some(path) => state::source::Source::Dir {
                path: path.clone(),
                interval: Duration::from_millis(self.reload_interval_ms),
            },
            None => state::source::Source::Cluster {
                kubeconfig: self.kubeconfig.clone(),
                scope,
            },
        };
        Ok(state::source::open(source).await?)
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The cgroup v2 directory that contains every pod on this node (e.g. the
    /// kubelet's kubepods slice). Outbound capture attaches here, never to
    /// the machine's root cgroup.
    #[arg(long)]
    pods_cgroup: PathBuf,
    /// bpffs directory owning this agent's pinned programs, maps and links.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Directory for the agent's status file (status.json) and admin socket.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Where Prometheus scrapes `/metrics`.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_listen: std::net::SocketAddr,
    /// Readiness for the kubelet: `GET /healthz/ready` answers 200 once the
    /// capture programs are attached, the CNI socket (`<run-dir>/cni.sock`)
    /// is up and the pods already on the node are enrolled; 503 before.
    #[arg(long, default_value = "0.0.0.0:15021")]
    ready_listen: std::net::SocketAddr,
    /// Where the container runtime pins pods' network namespaces
    /// (containerd, CRI-O): pods that were running before the agent (or
    /// before the CNI plugin) are found there by their addresses.
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// The host's /proc, searched after --netns-dir for pods whose runtime
    /// pins nothing (only pods whose processes run as root: others'
    /// namespaces need CAP_SYS_PTRACE), and through which the agent sets
    /// each pod's network sysctls. In a container, mount the host's /proc
    /// read-only (e.g. at /host/proc) and its /proc/sys/net writable at
    /// <host-proc>/sys/net; no hostPID needed.
    #[arg(long, default_value = "/proc")]
    host_proc: PathBuf,
    #[command(flatten)]
    tunnels: TunnelArgs,
}

/// How pods' outbound HBONE connections are pooled.
#[derive(clap::Args)]
struct TunnelArgs {
    /// Application connections one pooled HBONE connection carries before
    /// another is dialled to the same destination for the same pod
    /// identity (as ztunnel's default, 100). Each data-plane thread keeps
    /// its own pool, so busy streams are already spread over cores; more
    /// connections per thread mean less batching per syscall.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    tunnel_streams_per_connection: u32,
    /// At most this many pooled HBONE connections per (pod identity,
    /// destination); past that, the least busy takes new streams.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    tunnel_connections_per_destination: u32,
}

impl TunnelArgs {
    fn spread(&self) -> Spread {
        Spread {
            streams_per_connection: self.tunnel_streams_per_connection as usize,
            connections_per_key: self.tunnel_connections_per_destination as usize,
        }
    }
}

#[derive(clap::Args)]
struct WaypointArgs {
    /// The waypoint's name: Services (or namespaces) labelled
    /// `nodemesh.io/use-waypoint=<name>` send their traffic through it.
    #[arg(long)]
    name: String,
    /// The waypoint's namespace (a Service's label names a waypoint of its
    /// own namespace unless `nodemesh.io/use-waypoint-namespace` says another).
    #[arg(long)]
    namespace: String,
    #[command(flatten)]
    mesh: MeshArgs,
    /// The name of the waypoint's own pod, when several of its pods may run
    /// on one node (on Kubernetes: `$(POD_NAME)` from the downward API). By
    /// default, the one pod of this waypoint on --node.
    #[arg(long)]
    pod: Option<String>,
    /// Directory for its status file and admin socket
    /// [default: /run/nodemesh/waypoint-<namespace>-<name>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Also serve `/metrics` on this TCP address (it is always on the admin
    /// socket).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Errors print as their chain of causes, never as a backtrace (which
/// `RUST_BACKTRACE` would add to a returned `anyhow::Error`): they are
/// messages for the operator, not crash reports.
fn main() -> std::process::ExitCode {
    // The Kubernetes client builds its TLS from rustls' process-wide
    // provider: make it ring, the mesh's own, so that a dependency enabling
    // a second provider cannot make that choice ambiguous (a panic).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run_command(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    let format = match &cli.command {
        Command::Run(args) => args.mesh.log_format,
        Command::Waypoint(args) => args.mesh.log_format,
        _ => LogFormat::Text,
    };
    init_logging(format);
    match cli.command {
        Command::Check { bpffs_dir } => check(&bpffs_dir),
        Command::Run(args) => runtime()?.block_on(run(args)),
        // Requests are served by the waypoint's own worker threads; this
        // one accepts, watches the config, renews certificates and answers
        // the admin socket.
        Command::Waypoint(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(waypoint(args)),
        Command::Ca(CaCommand::Init { dir, trust_domain }) => {
            let ca = identity::ca::MeshCa::init(&dir, &trust_domain)?;
            println!(
                "created the mesh CA for trust domain {} in {} (root key: {}, mode 0600)",
                ca.trust_domain(),
                dir.display(),
                dir.join(identity::ca::ROOT_KEY).display()
            );
            Ok(())
        }
        Command::Ca(CaCommand::IssueNode { dir, node, out }) => {
            let ca = identity::ca::MeshCa::load(&dir)?;
            let id = identity::signing::credentials::issue(&ca, &node, &out)?;
            println!("issued {id} into {}", out.display());
            Ok(())
        }
        Command::Ca(CaCommand::Request {
            ca,
            credentials,
            pod,
            out,
        }) => runtime()?.block_on(request_pod_certificate(ca, &credentials, &pod, &out)),
        Command::Ca(CaCommand::Serve {
            dir,
            source,
            listen,
            lifetime_secs,
            agent_service_account,
            token_audience,
        }) => runtime()?.block_on(serve_ca(
            dir,
            &source,
            listen,
            Duration::from_secs(lifetime_secs),
            (&token_audience, &agent_service_account),
        )),
        Command::Cni(command) => cni_command(command),
        Command::Crds => {
            print!("{}", mesh_agent::crd::yaml()?);
            Ok(())
        }
        Command::Uninstall { bpffs_dir } => {
            object::uninstall(&bpffs_dir)?;
            println!("removed {}: capture programs detached", bpffs_dir.display());
            Ok(())
        }
    }
}

/// The data-plane runtime (multi-threaded: proxying runs on every core).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(bpffs_dir: &Path) -> anyhow::Result<()> {
    use mesh_agent::admin::check::{Report, preflight};
    use std::io::IsTerminal as _;
    let report = Report::new(preflight::run(bpffs_dir));
    print!("{}", report.table(std::io::stdout().is_terminal()));
    if !report.ok {
        bail!("this machine cannot run mesh-agent yet: do what each FAIL line says, then re-run");
    }
    println!("ok: this machine can run mesh-agent");
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    kernel::check()?;
    raise_open_files_limit();
    check_pods_cgroup(&args.pods_cgroup)?;
    let mut capture = Capture::open(&args.bpffs_dir)?;
    match capture.attach_cgroup(&args.pods_cgroup)? {
        Attached::Created => {
            tracing::info!(cgroup = %args.pods_cgroup.display(), "outbound capture attached")
        }
        Attached::Adopted => tracing::info!(
            cgroup = %args.pods_cgroup.display(),
            "adopted capture programs pinned by a previous run"
        ),
    }
    events::spawn_reader(capture.take_events()?).context("reading capture events")?;
    events::spawn_log_reader(capture.take_logger()?).context("reading eBPF logs")?;
    let capture = Arc::new(Mutex::new(capture));
    let Served {
        mut config,
        watcher: _watcher,
        mesh,
        admin,
        socket,
        client,
    } = serve(
        &args.mesh,
        &args.run_dir,
        Some(args.metrics_listen),
        Role::Node,
        args.tunnels.spread(),
    )
    .await?;
    let enrolment = Enrolment::new(
        Arc::clone(&capture),
        Arc::clone(&mesh),
        &args.pods_cgroup,
        &args.host_proc,
    );
    let mut pods = NodePods::new(
        &args.mesh.node,
        enrolment,
        Places {
            netns_dir: args.netns_dir.clone(),
            proc_root: args.host_proc.clone(),
            cgroup_mount: cgroup::cgroup2_mount()?,
            pods_cgroup: args.pods_cgroup.clone(),
        },
        Ownership::claim(&args.run_dir)
            .with_context(|| format!("claiming the node in {}", args.run_dir.display()))?,
    );
    let (cni_events, mut cni_requests) = tokio::sync::mpsc::channel(64);
    let cni_socket = args.run_dir.join(cni::protocol::SOCKET_NAME);
    let site = cni::server::Site {
        node: args.mesh.node.clone(),
        host_proc: args.host_proc.clone(),
    };
    let _cni = cni::server::serve(&cni_socket, site, config.clone(), cni_events)
        .with_context(|| format!("serving the CNI socket {}", cni_socket.display()))?;
    api::serve_tcp(
        Arc::clone(&admin),
        args.ready_listen,
        api::Exposure::Readiness,
    )
    .await
    .with_context(|| format!("--ready-listen {}", args.ready_listen))?;
    let mut config_errors = reconcile(&args, &mut pods, &admin, &capture, &mut config).await?;
    admin
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(node = %args.mesh.node, admin = %socket.display(), cni = %cni_socket.display(), "ready");
    if let Some(client) = client {
        mesh_agent::node::taint::spawn_removal(client, args.mesh.node.clone());
    }
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            changed = config.changed() => {
                changed.context("the config watcher stopped")?;
                config_errors = reconcile(&args, &mut pods, &admin, &capture, &mut config).await?;
            }
            Some(event) = cni_requests.recv() => {
                let loaded = Arc::clone(&config.borrow());
                let (errors, answer) = pods.handle(event, &loaded.snapshot).await;
                for error in errors {
                    tracing::error!("{error}");
                }
                after_enrolment(&admin.mesh, &pods, &loaded);
                // The plugin's caller may look at once: the status shows the
                // outcome before the plugin hears it.
                write_status(&args, &pods, &admin, &capture, &config_errors)?;
                answer.send();
            }
            _ = status_tick.tick() => {
                if pods.superseded() {
                    // The owner writes the status. This agent stays ready:
                    // the rollout that started the new one must go on and
                    // stop this one.
                    continue;
                }
                // An unlocated pod may be found at any time, and a failed
                // enrolment may succeed now.
                if pods.retry_due() {
                    let loaded = Arc::clone(&config.borrow());
                    for error in pods.reconcile(&loaded.snapshot).await {
                        tracing::error!("{error}");
                    }
                    after_enrolment(&admin.mesh, &pods, &loaded);
                }
                write_status(&args, &pods, &admin, &capture, &config_errors)?;
            }
            _ = shutdown_signal() => {
                tracing::info!(
                    "stopping; capture stays pinned, so enrolled pods' new connections are \
                     refused until an agent runs again (`mesh-agent uninstall` removes the mesh)"
                );
                return Ok(());
            }
        }
    }
}

/// The model, flow records, metrics and admin API a role serves with.
struct Served {
    config: tokio::sync::watch::Receiver<Arc<state::Loaded>>,
    watcher: tokio::task::JoinHandle<()>,
    mesh: Arc<Mesh>,
    admin: Arc<Admin>,
    socket: PathBuf,
    /// The API server's client, in Kubernetes mode.
    client: Option<kube::Client>,
}

/// Which role [`serve`] serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A node agent: with a CA, it watches only its own node's pods on the
    /// API server (the CA tells it about the others).
    Node,
    /// A waypoint: in its own pod on Kubernetes, with that pod's identity.
    Waypoint,
}

async fn serve(
    args: &MeshArgs,
    run_dir: &Path,
    metrics_listen: Option<std::net::SocketAddr>,
    role: Role,
    spread: Spread,
) -> anyhow::Result<Served> {
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let identity = mesh_identity(args, role).await?;
    let scope = match &identity {
        Some(identity) if role == Role::Node && args.source.kubernetes => Scope::Node {
            node: args.node.clone(),
            others: identity::signing::directory::follow(identity.certs.source()),
        },
        None if role == Role::Node && args.source.kubernetes => {
            tracing::warn!(
                "no --ca: watching every pod of the cluster (with a CA, only this node's, and \
                 the others come from the CA's workload directory)"
            );
            Scope::Cluster
        }
        _ => Scope::Cluster,
    };
    let state::source::Opened {
        config,
        task: watcher,
        cluster,
        client,
    } = args.source.open(scope).await?;
    let metrics = Arc::new(Metrics::new());
    let flows = FlowStore::new(&args.node, args.flow_capacity)
        .with_subscriber(Arc::clone(&metrics) as Arc<dyn FlowSubscriber>);
    let count = args
        .workers
        .map_or_else(workers::default_count, usize::from);
    let name = match role {
        Role::Node => "dataplane",
        Role::Waypoint => "waypoint",
    };
    let workers = Workers::spawn(count, name)
        .with_context(|| format!("starting {count} data-plane threads (--workers)"))?;
    let mesh = Arc::new(Mesh::new(config.clone(), identity, flows, spread, workers));
    let admin = Arc::new(Admin::new(Arc::clone(&mesh), metrics, cluster));
    let socket = run_dir.join(api::SOCKET_NAME);
    api::serve_unix(Arc::clone(&admin), &socket)
        .with_context(|| format!("serving the admin API on {}", socket.display()))?;
    if let Some(addr) = args.admin_listen {
        api::serve_tcp(Arc::clone(&admin), addr, api::Exposure::Admin)
            .await
            .with_context(|| format!("--admin-listen {addr}"))?;
    }
    if let Some(addr) = metrics_listen {
        api::serve_tcp(Arc::clone(&admin), addr, api::Exposure::Metrics)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
    }
    Ok(Served {
        config,
        watcher,
        mesh,
        admin,
        socket,
        client,
    })
}

async fn waypoint(args: WaypointArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    let me = WaypointRef {
        namespace: args.namespace.clone(),
        name: args.name.clone(),
    };
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        Path::new(DEFAULT_RUN_DIR).join(format!("waypoint-{}-{}", me.namespace, me.name))
    });
    let Served {
        mut config,
        watcher: _watcher,
        mesh,
        admin,
        socket,
        ..
    } = serve(
        &args.mesh,
        &run_dir,
        args.metrics_listen,
        Role::Waypoint,
        // Its workers keep a pool each: spread already.
        Spread::ONE,
    )
    .await?;
    let serving = mesh_agent::waypoint::start(
        me.clone(),
        (&args.mesh.node, args.pod.as_deref()),
        Arc::clone(&mesh),
    )
    .await?;
    let workers = mesh.workers.count();
    let wp = &serving.waypoint;
    admin
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(waypoint = %me, pod = %wp.pod, workers, admin = %socket.display(), "waypoint ready");
    // Compiled once per config, not per status write: every route's
    // regexes and every TrafficPolicy.
    let problems = |loaded: &state::Loaded| {
        let mut errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        errors.extend(wp.route_problems(loaded));
        errors
    };
    let mut config_errors = problems(&mesh.snapshot());
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            changed = config.changed() => {
                changed.context("the config watcher stopped")?;
                let loaded = Arc::clone(&config.borrow_and_update());
                config_errors = problems(&loaded);
            }
            _ = status_tick.tick() => {
                let status = Status {
                    node: args.mesh.node.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    pods: Vec::new(),
                    unlocated: Vec::new(),
                    counters: Vec::new(),
                    config_errors: config_errors.clone(),
                    certs: mesh.identity.as_ref().map(|i| i.certs.status()).unwrap_or_default(),
                    tunnel: mesh.tunnel_status(wp.upstream.pooled_tunnels()),
                    api_server: admin.source_status(),
                    ca: mesh.identity.as_ref().map(|i| i.certs.ca_status()),
                };
                status.write(&run_dir)?;
                refresh_metrics(&admin, &status);
                *admin.status.lock().expect("status") = Some(status);
            }
            _ = shutdown_signal() => {
                tracing::info!(waypoint = %me, "stopping");
                return Ok(());
            }
        }
    }
}

/// Brings enrolment in line with the newest config and cuts established
/// connections it no longer admits; returns the config's errors.
async fn reconcile(
    args: &RunArgs,
    pods: &mut NodePods,
    admin: &Admin,
    capture: &Mutex<Capture>,
    config: &mut tokio::sync::watch::Receiver<Arc<state::Loaded>>,
) -> anyhow::Result<Vec<String>> {
    let loaded = Arc::clone(&config.borrow_and_update());
    for error in pods.reconcile(&loaded.snapshot).await {
        tracing::error!("{error}");
    }
    after_enrolment(&admin.mesh, pods, &loaded);
    let config_errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    write_status(args, pods, admin, capture, &config_errors)?;
    Ok(config_errors)
}

/// Certificates for the pods now enrolled, and established connections
/// the model no longer admits cut.
fn after_enrolment(mesh: &Mesh, pods: &NodePods, loaded: &state::Loaded) {
    if let Some(identity) = &mesh.identity {
        identity.certs.reconcile(&pods.enrolment().pods());
    }
    mesh.live.revoke_refused(&loaded.snapshot);
}

/// Pod certificates from the CA and the trust bundle, when the agent was
/// given a CA.
async fn mesh_identity(args: &MeshArgs, role: Role) -> anyhow::Result<Option<MeshIdentity>> {
    use identity::signing::bootstrap::{NodeAuth, TokenFile, anonymous_to_ca, node_cert};
    let Some(ca) = &args.ca else {
        tracing::warn!(
            "no --ca: running without workload identities; traffic between enrolled pods is \
             relayed as plain TCP"
        );
        return Ok(None);
    };
    if let (Role::Waypoint, Some(token_file)) = (role, &args.ca_token_file) {
        // A waypoint in its own pod: that pod's token is worth that pod's
        // certificate, and nothing of a node's.
        let (root, tls) = anonymous_to_ca(&args.ca_root)?;
        let token = TokenFile(token_file.clone());
        token.read()?;
        tracing::info!(%ca, "the waypoint's certificate comes from the CA for its pod's token");
        let certs = CertStore::new(CertSource::workload(ca.clone(), token, tls));
        return Ok(Some(MeshIdentity {
            certs: Arc::new(certs),
            bundle: Arc::new(root),
        }));
    }
    let auth = match (&args.credentials, &args.ca_token_file) {
        (Some(dir), _) => NodeAuth::Credentials(dir.clone()),
        (None, Some(token_file)) => NodeAuth::Token {
            token_file: token_file.clone(),
            ca_root: args.ca_root.clone(),
        },
        (None, None) => bail!("--ca needs --credentials or --ca-token-file"),
    };
    let node = node_cert(ca, &auth).await?;
    tracing::info!(%ca, node_identity = %node.identity(), "pod certificates come from the CA");
    let bundle = Arc::new(node.bundle().clone());
    let certs = CertStore::new(CertSource::new(ca.clone(), node)?);
    Ok(Some(MeshIdentity {
        certs: Arc::new(certs),
        bundle,
    }))
}

async fn request_pod_certificate(
    ca: identity::signing::CaAddr,
    credentials: &Path,
    pod: &str,
    out: &Path,
) -> anyhow::Result<()> {
    use identity::signing::{ca_identity, client::request_certificate, credentials as creds};
    let node = creds::load(credentials)?;
    let expected = ca_identity(node.identity.trust_domain())?;
    let tls = mesh_agent::tunnel::tls::client_config(&node.cert, &node.bundle, Some(expected))?;
    let addr = ca.resolve().await?;
    let conn = mesh_agent::tunnel::client::Connection::dial(addr, tls).await?;
    let key = rcgen::KeyPair::generate()?;
    let signed = request_certificate(&conn, pod, &key).await?;
    let name = pod.rsplit('/').next().unwrap_or(pod);
    creds::save_workload(out, name, &key, &signed.certificate)?;
    println!(
        "{} → {}",
        signed.identity,
        out.join(format!("{name}.crt")).display()
    );
    Ok(())
}

/// `tokens`: the audience and the user of node agents' tokens, used in
/// Kubernetes mode.
async fn serve_ca(
    dir: PathBuf,
    source: &SourceArgs,
    listen: std::net::SocketAddr,
    lifetime: Duration,
    (audience, agent_account): (&str, &str),
) -> anyhow::Result<()> {
    use identity::signing::{ca_identity, server, token_review::TokenReviewer};
    let ca = identity::ca::MeshCa::load(&dir)?;
    let bundle = ca.bundle()?;
    // The CA's own serving certificate; a restart renews it.
    let key = rcgen::KeyPair::generate()?;
    let issued = ca.issue(
        &ca_identity(ca.trust_domain())?,
        &key,
        Duration::from_secs(30 * 24 * 3600),
    )?;
    let cert = mesh_agent::tunnel::tls::WorkloadCert {
        chain: vec![issued.der],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    let state::source::Opened {
        config,
        task: _watcher,
        client,
        ..
    } = source.open(Scope::Cluster).await?;
    let tokens = client
        .as_ref()
        .map(|c| TokenReviewer::new(c.clone(), audience, agent_account));
    // Agents with a token come without a certificate.
    let tls = if tokens.is_some() {
        mesh_agent::tunnel::tls::server_config_optional_clients(&cert, &bundle)?
    } else {
        mesh_agent::tunnel::tls::server_config(&cert, &bundle)?
    };
    if let Some(client) = client {
        tokio::spawn(state::cluster::conditions::report(client));
        tracing::info!(
            audience,
            agent_account,
            "node agents' tokens are checked by TokenReview"
        );
    }
    let signer = Arc::new(server::Signer {
        lookup: server::lookup_from(config.clone(), ca.trust_domain().to_owned()),
        model: config,
        ca,
        bundle,
        lifetime,
        tokens,
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    tracing::info!(%listen, "CA serving");
    tokio::select! {
        () = server::serve(listener, tls, signer) => Ok(()),
        () = shutdown_signal() => Ok(()),
    }
}

/// Every relayed connection holds two or three descriptors (more with
/// tunnels and listeners per pod): lift the soft limit to the hard one, as
/// busy proxies do, so a node is not capped at ~300 connections by a
/// default of 1024.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("could not raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open-files limit: {e}"),
    }
}

/// Refuses a capture cgroup that would catch processes outside the mesh.
fn check_pods_cgroup(pods_cgroup: &Path) -> anyhow::Result<()> {
    let mount = cgroup::cgroup2_mount()?;
    let canonical = pods_cgroup
        .canonicalize()
        .with_context(|| format!("--pods-cgroup {}: no such directory", pods_cgroup.display()))?;
    if canonical == mount {
        bail!(
            "--pods-cgroup {} is the machine's root cgroup: capture would take every process on \
             the node. Pass the cgroup that holds only the pods (e.g. the kubepods slice).",
            pods_cgroup.display()
        );
    }
    if !canonical.starts_with(&mount) {
        bail!(
            "--pods-cgroup {} is not on the cgroup v2 mount {}",
            pods_cgroup.display(),
            mount.display()
        );
    }
    Ok(())
}

/// Writes the status document (file and admin API) and refreshes the
/// metrics that are copied from elsewhere.
fn write_status(
    args: &RunArgs,
    pods: &NodePods,
    admin: &Admin,
    capture: &Mutex<Capture>,
    config_errors: &[String],
) -> anyhow::Result<()> {
    // The run directory is the newer agent's now.
    if pods.was_superseded() {
        return Ok(());
    }
    let mesh = &admin.mesh;
    let counters = capture.lock().expect("capture lock").counters()?;
    let status = Status {
        node: args.mesh.node.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pods: pods.enrolment().status(),
        unlocated: pods.unlocated().to_vec(),
        counters: Status::counters_from(&counters),
        config_errors: config_errors.to_vec(),
        certs: mesh
            .identity
            .as_ref()
            .map(|i| i.certs.status())
            .unwrap_or_default(),
        tunnel: mesh.tunnel_status(pods.enrolment().pooled_tunnels()),
        api_server: admin.source_status(),
        ca: mesh.identity.as_ref().map(|i| i.certs.ca_status()),
    };
    status.write(&args.run_dir)?;
    refresh_metrics(admin, &status);
    *admin.status.lock().expect("status") = Some(status);
    Ok(())
}

/// Copies the gauges and totals kept elsewhere into the metrics.
fn refresh_metrics(admin: &Admin, status: &Status) {
    let t = &status.tunnel;
    admin.metrics.refresh(&metrics::Snapshot {
        handshakes: [
            ("dialled", t.handshakes_dialled),
            ("accepted", t.handshakes_accepted),
            ("rejected", t.handshakes_rejected),
        ],
        pooled_connections: t.pooled_connections,
        flow_records: admin.mesh.flows.sizes(),
        certs: &status.certs,
        capture: &status.counters,
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn cni_command(command: CniCommand) -> anyhow::Result<()> {
    use cni::install;
    match command {
        CniCommand::Install {
            cni_bin_dir,
            cni_conf_dir,
            socket,
            exclude_namespaces,
            plugin,
            watch,
        } => {
            let plugin = match plugin {
                Some(path) => path,
                None => std::env::current_exe()
                    .context("finding this executable (pass --plugin)")?
                    .with_file_name(cni::plugin::PLUGIN_TYPE),
            };
            let entry = install::Entry {
                socket,
                exclude_namespaces,
            };
            let mut binary = install::Binary::read(&plugin, &cni_bin_dir)
                .with_context(|| format!("--cni-bin-dir {}", cni_bin_dir.display()))?;
            loop {
                if binary
                    .ensure()
                    .with_context(|| format!("--cni-bin-dir {}", cni_bin_dir.display()))?
                {
                    println!(
                        "installed {}",
                        cni_bin_dir.join(cni::plugin::PLUGIN_TYPE).display()
                    );
                }
                match install::install_entry(&cni_conf_dir, &entry) {
                    Ok(Some(file)) => println!("added nodemesh-cni to {}", file.display()),
                    Ok(None) => {}
                    // The node's network plugin may not have written its
                    // configuration yet: wait for it rather than fail.
                    Err(e @ install::InstallError::NoConfig(_)) if watch => {
                        tracing::warn!("{e}; checking again in 5 s");
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("--cni-conf-dir {}", cni_conf_dir.display()));
                    }
                }
                if !watch {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        }
        CniCommand::Uninstall {
            cni_bin_dir,
            cni_conf_dir,
        } => {
            install::uninstall(&cni_conf_dir, &cni_bin_dir)?;
            println!("removed nodemesh-cni from {}", cni_conf_dir.display());
            Ok(())
        }
    }
}
