//! `nodemesh-bench` (run it with `cargo xtask bench`): every scenario twice
//! in the same run — direct (pods not enrolled) and through the mesh
//! (enrolled: capture + HBONE mTLS) — interleaved, on the simulated
//! cluster, with the same load generator (`mesh-traffic`). The waypoint
//! scenarios run three ways instead: direct, through nginx (the reverse
//! proxy to beat) and through the waypoint (`mesh-http` as client and
//! backend). Reports absolute figures and ratios as markdown tables, as
//! JSON with a chart of the ratios beside it (SVG), and as a line of history.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use nodemesh_tests::{
    Cluster, ClusterSpec, Host, PodChild,
    cluster::set_suite_prefix,
    mesh::{Agent, MeshConfig, Pki, workspace_binary},
    process::status_kib,
};
use serde_json::{Value, json};

#[path = "nodemesh-bench/chart.rs"]
mod chart;

#[derive(Parser)]
#[command(about = "Measure nodemesh against direct connections, side by side (root)")]
struct Cli {
    /// Every scenario briefly, once (a smoke run: the figures are noisy).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (repeatable); see --list.
    #[arg(long)]
    scenario: Vec<String>,
    /// Print the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Write every figure, the ratios, the commit and the machine here, and
    /// a chart of the ratios beside it (the same name, ending `.svg`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Append one JSON line to this file: commit, date, the machine and
    /// every scenario's ratios (`cargo xtask bench` passes
    /// `bench-history.jsonl` on full runs).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Repetitions of each scenario (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
}

/// (name, what it measures).
const SCENARIOS: &[(&str, &str)] = &[
    ("throughput-1", "cross-node bulk transfer, 1 stream"),
    ("throughput-8", "cross-node bulk transfer, 8 streams"),
    (
        "throughput-8-pairs",
        "cross-node bulk transfer, 8 streams: 4 each between two pairs of pods of other identities",
    ),
    (
        "latency-1",
        "cross-node 1 KiB request/response, 1 persistent connection",
    ),
    (
        "latency-32",
        "cross-node 1 KiB request/response, 32 persistent connections",
    ),
    ("churn", "cross-node connect, 100-byte exchange, close"),
    ("same-node-throughput", "same-node bulk transfer, 1 stream"),
    (
        "same-node-latency",
        "same-node 1 KiB request/response, 1 connection",
    ),
    (
        "footprint",
        "agent RSS at rest with 100 enrolled pods, and with 1000 open connections",
    ),
    (
        "waypoint-http1",
        "HTTP/1.1 GETs over 16 keep-alive connections: direct, nginx, waypoint",
    ),
    (
        "waypoint-h2",
        "HTTP/2 (prior knowledge) GETs over 16 connections: direct, nginx, waypoint",
    ),
];

/// The scenarios that run on [`WaypointLab`].
fn is_waypoint(scenario: &str) -> bool {
    scenario.starts_with("waypoint-")
}

/// Load sizes: full and quick.
struct Load {
    bulk_seconds: f64,
    rr_requests: u32,
    rr32_requests: u32,
    churn: u32,
    pods: u32,
    held: u32,
    http_requests: u32,
}

const FULL: Load = Load {
    bulk_seconds: 5.0,
    rr_requests: 10_000,
    rr32_requests: 1_000,
    churn: 2_000,
    pods: 1_000,
    held: 10_000,
    http_requests: 20_000,
};
const QUICK: Load = Load {
    bulk_seconds: 1.0,
    rr_requests: 500,
    rr32_requests: 50,
    churn: 200,
    pods: 10,
    held: 100,
    http_requests: 2_000,
};

/// One way of running a scenario. Direct and Mesh are the pairs of [`Lab`];
/// Direct, Mesh, Nginx and Waypoint the paths of [`WaypointLab`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Mesh,
    Nginx,
    Waypoint,
}

impl Mode {
    /// Its key in the report.
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Mesh => "mesh",
            Mode::Nginx => "nginx",
            Mode::Waypoint => "waypoint",
        }
    }
}

/// How a scenario is compared: its modes in the order each repetition runs
/// them, and its ratios as (report key, numerator, denominator). Statics,
/// so the report can group scenarios by identity.
struct Comparison {
    modes: &'static [Mode],
    ratios: &'static [(&'static str, Mode, Mode)],
}

static MESH_VS_DIRECT: Comparison = Comparison {
    modes: &[Mode::Direct, Mode::Mesh],
    ratios: &[("ratio", Mode::Mesh, Mode::Direct)],
};
static WAYPOINT_VS_NGINX: Comparison = Comparison {
    modes: &[Mode::Direct, Mode::Mesh, Mode::Nginx, Mode::Waypoint],
    ratios: &[
        ("ratio", Mode::Waypoint, Mode::Direct),
        ("ratio_nginx", Mode::Waypoint, Mode::Nginx),
    ],
};

fn comparison(scenario: &str) -> &'static Comparison {
    if is_waypoint(scenario) {
        &WAYPOINT_VS_NGINX
    } else {
        &MESH_VS_DIRECT
    }
}

/// A cluster that measures scenarios in its modes.
trait Measure {
    fn measure(&self, scenario: &str, mode: Mode, load: &Load) -> anyhow::Result<Value>;
}

/// Figures by scenario, then by mode, one per repetition.
type Samples = BTreeMap<&'static str, BTreeMap<&'static str, Vec<Value>>>;

/// Runs every scenario of `scenarios` in each of its modes, `reps` times,
/// interleaved (so machine drift hits every mode alike).
fn sample(
    lab: &impl Measure,
    scenarios: &[&'static str],
    reps: u32,
    load: &Load,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    for rep in 1..=reps {
        for &scenario in scenarios {
            for &mode in comparison(scenario).modes {
                eprintln!("rep {rep}/{reps} {scenario} {}", mode.name());
                let figures = lab.measure(scenario, mode, load)?;
                samples
                    .entry(scenario)
                    .or_default()
                    .entry(mode.name())
                    .or_default()
                    .push(figures);
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.list {
        for (name, what) in SCENARIOS {
            println!("{name:<22} {what}");
        }
        return Ok(());
    }
    for s in &cli.scenario {
        if !SCENARIOS.iter().any(|(n, _)| n == s) {
            bail!("--scenario {s}: unknown; --list shows the scenarios");
        }
    }
    nodemesh_tests::require_root()?;
    set_suite_prefix("nmbench")?;
    let selected: Vec<&'static str> = SCENARIOS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| cli.scenario.is_empty() || cli.scenario.iter().any(|s| s == n))
        .collect();
    let load = if cli.quick { &QUICK } else { &FULL };
    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 3 });
    let date = utc_now();

    let mut samples = Samples::new();
    // One cluster at a time: an idle one would still take its share of the
    // two cores.
    let (waypoint_scenarios, traffic_scenarios): (Vec<&str>, Vec<&str>) = selected
        .iter()
        .copied()
        .filter(|s| *s != "footprint")
        .partition(|s| is_waypoint(s));
    if !traffic_scenarios.is_empty() {
        sample(&Lab::start()?, &traffic_scenarios, reps, load, &mut samples)?;
    }
    if !waypoint_scenarios.is_empty() {
        sample(
            &WaypointLab::start()?,
            &waypoint_scenarios,
            reps,
            load,
            &mut samples,
        )?;
    }
    let mut results: BTreeMap<String, Value> = samples
        .into_iter()
        .map(|(name, by_mode)| {
            let c = comparison(name);
            let mut result = serde_json::Map::new();
            for mode in c.modes {
                let figures = by_mode.get(mode.name()).map_or(&[][..], Vec::as_slice);
                result.insert(mode.name().to_owned(), median(figures));
            }
            if std::ptr::eq(c, &WAYPOINT_VS_NGINX) {
                added_latency(&mut result);
            }
            for (key, numerator, denominator) in c.ratios {
                let ratio = ratios(&result[denominator.name()], &result[numerator.name()]);
                result.insert((*key).to_owned(), ratio);
            }
            (name.to_owned(), Value::Object(result))
        })
        .collect();
    if selected.contains(&"footprint") {
        eprintln!(
            "footprint: {} enrolled pods, {} open connections",
            load.pods, load.held
        );
        results.insert("footprint".into(), footprint(load)?);
    }
    let report = json!({
        "commit": git_commit(),
        "date": date,
        "machine": machine(),
        "quick": cli.quick,
        "reps": reps,
        "scenarios": results,
    });
    print!("{}", markdown(&report));
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
        let chart = path.with_extension("svg");
        let order: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        std::fs::write(&chart, chart::svg(&report, &order))
            .with_context(|| format!("writing the chart {}", chart.display()))?;
        eprintln!("wrote {} and {}", path.display(), chart.display());
    }
    if let Some(path) = &cli.history {
        let line = serde_json::to_string(&history(&report))?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .with_context(|| format!("--history {}", path.display()))?;
        eprintln!("appended this run to {}", path.display());
    }
    Ok(())
}

/// The run in one line for the history file: what ran where, and every
/// scenario's ratios (its `ratio*` keys), or its mesh figures where it has no
/// direct side to compare with (footprint).
fn history(report: &Value) -> Value {
    let scenarios: serde_json::Map<String, Value> = report["scenarios"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| {
            let mut kept: serde_json::Map<String, Value> = s
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(key, v)| key.starts_with("ratio") && !v.is_null())
                .map(|(key, v)| (key.clone(), v.clone()))
                .collect();
            if kept.is_empty() {
                kept.insert("mesh".into(), s["mesh"].clone());
            }
            (name.clone(), Value::Object(kept))
        })
        .collect();
    json!({
        "commit": report["commit"],
        "date": report["date"],
        "quick": report["quick"],
        "reps": report["reps"],
        "machine": {
            "cores": report["machine"]["cores"],
            "kernel": report["machine"]["kernel"],
        },
        "scenarios": scenarios,
    })
}

/// Now, UTC, to the second: `2026-12-07T09:00:00Z`.
fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// The cluster every traffic scenario runs on: n1 holds a, a2, e (enrolled)
/// and c, c2, g (not); n2 holds b, f (enrolled) and d, h (not). Direct pairs
/// are c → d, g → h and c → c2, mesh pairs a → b, e → f and a → a2: the
/// same paths between the same nodes. e and f have service accounts of their
/// own, so e → f is a second pair of identities beside a → b (its own HBONE
/// connection between the nodes).
struct Lab {
    agents: Vec<Agent>,
    _servers: Vec<PodChild>,
    _pki: Pki,
    cluster: Cluster,
    traffic: PathBuf,
}

const SINK: u16 = 7000;
const ECHO: u16 = 7001;
const CHURN: u16 = 7002;

impl Lab {
    fn start() -> anyhow::Result<Self> {
        let cluster = ClusterSpec::cross_node_pair()
            .pod("a2", "n1")
            .pod("e", "n1")
            .pod("c", "n1")
            .pod("c2", "n1")
            .pod("g", "n1")
            .pod("d", "n2")
            .pod("f", "n2")
            .pod("h", "n2")
            .build()?;
        let mut config = MeshConfig::new()
            .namespace("shop", true)
            .namespace("legacy", false);
        for (pod, ns) in [
            ("a", "shop"),
            ("a2", "shop"),
            ("b", "shop"),
            ("e", "shop"),
            ("f", "shop"),
            ("c", "legacy"),
            ("c2", "legacy"),
            ("d", "legacy"),
            ("g", "legacy"),
            ("h", "legacy"),
        ] {
            config = config.pod(cluster.pod(pod), ns);
        }
        config = config
            .service_account("e", "loader")
            .service_account("f", "archive");
        let (_, pki, agents) = start_mesh(&cluster, &config, &["n1", "n2"])?;
        let traffic = workspace_binary("mesh-traffic")?;
        let sink = || {
            vec![
                "sink".to_owned(),
                "--listen".into(),
                format!("0.0.0.0:{SINK}"),
            ]
        };
        let every = || {
            vec![
                sink(),
                vec![
                    "echo".to_owned(),
                    "--listen".into(),
                    format!("0.0.0.0:{ECHO}"),
                ],
                vec![
                    "serve".to_owned(),
                    "--listen".into(),
                    format!("0.0.0.0:{CHURN}"),
                    "--reply-bytes".into(),
                    "100".into(),
                ],
            ]
        };
        let mut servers = Vec::new();
        // The second pairs' servers only take bulk transfers.
        for (pod, serve) in [
            ("b", every()),
            ("d", every()),
            ("a2", every()),
            ("c2", every()),
            ("f", vec![sink()]),
            ("h", vec![sink()]),
        ] {
            for args in serve {
                let mut cmd = Command::new(&traffic);
                cmd.args(args);
                let mut child = cluster.spawn(cluster.pod(pod), cmd)?;
                child.next_line(Duration::from_secs(10))?;
                servers.push(child);
            }
        }
        Ok(Self {
            agents,
            _servers: servers,
            _pki: pki,
            cluster,
            traffic,
        })
    }

    /// The (client, server) pairs of a scenario in a mode: one, or two for
    /// `throughput-8-pairs`.
    fn pairs(&self, scenario: &str, mode: Mode) -> Vec<(&Host, &Host)> {
        let names: &[(&str, &str)] = match (scenario, mode) {
            ("throughput-8-pairs", Mode::Direct) => &[("c", "d"), ("g", "h")],
            ("throughput-8-pairs", Mode::Mesh) => &[("a", "b"), ("e", "f")],
            (s, Mode::Direct) if s.starts_with("same-node") => &[("c", "c2")],
            (s, Mode::Mesh) if s.starts_with("same-node") => &[("a", "a2")],
            (_, Mode::Direct) => &[("c", "d")],
            (_, Mode::Mesh) => &[("a", "b")],
            (_, Mode::Nginx | Mode::Waypoint) => {
                unreachable!("the waypoint scenarios run on their own cluster")
            }
        };
        names
            .iter()
            .map(|(from, to)| (self.cluster.pod(from), self.cluster.pod(to)))
            .collect()
    }

    /// CPU seconds both agents have used so far.
    fn agent_cpu(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(self.agents.iter().map(|a| a.process.pid()))
    }

    /// `mesh-traffic`'s arguments for `scenario` against the server `to`;
    /// `pairs` pairs share the scenario's streams.
    fn args(scenario: &str, to: &Host, pairs: usize, load: &Load) -> anyhow::Result<Vec<String>> {
        let at = |port| SocketAddr::new(to.ipv4.into(), port).to_string();
        let bulk = |streams: usize| {
            vec![
                "bulk".into(),
                "--to".into(),
                at(SINK),
                "--streams".into(),
                (streams / pairs).to_string(),
                "--seconds".into(),
                load.bulk_seconds.to_string(),
            ]
        };
        Ok(match scenario {
            "throughput-1" | "same-node-throughput" => bulk(1),
            "throughput-8" | "throughput-8-pairs" => bulk(8),
            "latency-1" | "same-node-latency" => vec![
                "rr".into(),
                "--to".into(),
                at(ECHO),
                "--requests".into(),
                load.rr_requests.to_string(),
            ],
            "latency-32" => vec![
                "rr".into(),
                "--to".into(),
                at(ECHO),
                "--connections".into(),
                "32".into(),
                "--requests".into(),
                load.rr32_requests.to_string(),
            ],
            "churn" => vec![
                "churn".into(),
                "--to".into(),
                at(CHURN),
                "--count".into(),
                load.churn.to_string(),
            ],
            other => bail!("no scenario {other}"),
        })
    }
}

impl Measure for Lab {
    fn measure(&self, scenario: &str, mode: Mode, load: &Load) -> anyhow::Result<Value> {
        let pairs = self.pairs(scenario, mode);
        let cpu_before = self.agent_cpu()?;
        // Every pair's client at once, then each one's summary.
        let mut clients = Vec::new();
        for (from, to) in &pairs {
            let args = Self::args(scenario, to, pairs.len(), load)?;
            let mut cmd = Command::new(&self.traffic);
            cmd.args(&args);
            clients.push((self.cluster.spawn(from, cmd)?, args));
        }
        let mut raws = Vec::new();
        for (client, args) in clients {
            let out = client.wait_success(Duration::from_secs(600))?;
            raws.push(
                serde_json::from_str::<Value>(out.trim())
                    .with_context(|| format!("mesh-traffic {args:?} printed {out:?}"))?,
            );
        }
        let cpu = self.agent_cpu()? - cpu_before;
        // Agent CPU seconds per `unit` of what the clients count by `key`.
        let total = |key: &str| raws.iter().filter_map(|r| r[key].as_f64()).sum::<f64>();
        let cpu_per = |key: &str, unit: f64| json!(cpu / (total(key) / unit).max(f64::EPSILON));
        let mut figures = serde_json::Map::new();
        let mut pick = |keys: &[&str]| {
            for k in keys {
                figures.insert((*k).to_owned(), raws[0][*k].clone());
            }
        };
        let agent_cpu = if scenario.contains("throughput") {
            // Pairs run side by side: their rates add up.
            figures.insert("mib_per_s".into(), json!(total("mib_per_s")));
            ("agent_cpu_s_per_gb", cpu_per("bytes", 1e9))
        } else if scenario.contains("latency") {
            pick(&["p50_us", "p90_us", "p99_us", "p999_us", "rps"]);
            ("agent_cpu_s_per_1000_requests", cpu_per("requests", 1000.0))
        } else {
            pick(&[
                "per_second",
                "p50_us",
                "p99_us",
                "connect_to_first_byte_p50_us",
                "connect_to_first_byte_p99_us",
            ]);
            ("agent_cpu_s_per_1000_connections", cpu_per("count", 1000.0))
        };
        if mode == Mode::Mesh {
            figures.insert(agent_cpu.0.into(), agent_cpu.1);
        }
        Ok(Value::Object(figures))
    }
}

/// The cluster of the waypoint scenarios. On n1: the enrolled client `a`,
/// the waypoint's pod `wp`, and, not enrolled, the client `c` and the pod
/// `proxy` running nginx; on n2 the `mesh-http` backends `b` (enrolled, the
/// Service `shop/cart`, which uses the waypoint) and `d` (not). The three
/// paths cross the same nodes, each proxy on the client's node:
/// - direct: c → d;
/// - nginx: c → proxy → d, plain HTTP both legs;
/// - mesh: a → (node agent, HBONE, node agent) b, by the pod's address;
/// - waypoint: a → (node agent, HBONE) wp → (HBONE, node agent) b.
struct WaypointLab {
    waypoint: Agent,
    agents: Vec<Agent>,
    nginx: PodChild,
    _backends: Vec<PodChild>,
    _pki: Pki,
    cluster: Cluster,
    http: PathBuf,
}

const CART: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 20)),
    80,
);
/// The backends' port, and nginx's HTTP/1.1 one.
const HTTP: u16 = 8080;
/// nginx's prior-knowledge HTTP/2 port (an `http2` listener without TLS
/// speaks nothing else).
const NGINX_H2: u16 = 8081;
/// Keep-alive connections of the load.
const HTTP_CONNECTIONS: u32 = 16;

impl WaypointLab {
    fn start() -> anyhow::Result<Self> {
        let cluster = ClusterSpec::cross_node_pair()
            .pod("wp", "n1")
            .pod("c", "n1")
            .pod("proxy", "n1")
            .pod("d", "n2")
            .build()?;
        let mut config = MeshConfig::new()
            .namespace("shop", true)
            .namespace("legacy", false)
            .pod(cluster.pod("a"), "shop")
            .pod(cluster.pod("wp"), "shop")
            .service_account("wp", "wp")
            .pod_label("wp", "gateway.networking.k8s.io/gateway-name", "wp")
            .pod(cluster.pod("b"), "shop")
            .pod_label("b", "app", "cart")
            .service("shop", "cart", CART.ip(), (CART.port(), HTTP), "cart")
            .service_label("shop/cart", "nodemesh.io/use-waypoint", "wp");
        for pod in ["c", "proxy", "d"] {
            config = config.pod(cluster.pod(pod), "legacy");
        }
        let (config_dir, pki, agents) = start_mesh(&cluster, &config, &["n1", "n2"])?;
        // One worker, as nginx runs here, so CPU per request compares like with
        // like: with one per core, the load's HBONE connections (one per
        // data-plane thread of n1's agent) are shared out over the workers,
        // each batching fewer streams per syscall.
        let mut args = pki.agent_args("n1");
        args.extend(["--workers".to_owned(), "1".to_owned()]);
        let host = (cluster.node("n1"), "n1");
        let waypoint = Agent::spawn_waypoint(&cluster, host, &config_dir, &args, ("shop", "wp"))?;
        waypoint.wait_waypoint_ready()?;
        let http = workspace_binary("mesh-http")?;
        let mut backends = Vec::new();
        for pod in ["b", "d"] {
            let mut cmd = Command::new(&http);
            cmd.args(["serve", "--listen", &format!("0.0.0.0:{HTTP}")])
                .args(["--name", pod]);
            let mut backend = cluster.spawn(cluster.pod(pod), cmd)?;
            let line = backend.next_line(Duration::from_secs(10))?;
            anyhow::ensure!(line.contains("listening"), "backend {pod}: {line}");
            backends.push(backend);
        }
        let nginx = start_nginx(
            &cluster,
            SocketAddr::new(cluster.pod("d").ipv4.into(), HTTP),
        )?;
        let lab = Self {
            waypoint,
            agents,
            nginx,
            _backends: backends,
            _pki: pki,
            cluster,
            http,
        };
        // Every path answers before anything is measured (and the
        // waypoint's pools are warm).
        for h2 in [false, true] {
            for mode in WAYPOINT_VS_NGINX.modes {
                lab.load(*mode, h2, 2 * u64::from(HTTP_CONNECTIONS))?;
            }
        }
        Ok(lab)
    }

    /// `mesh-http load` of `count` GETs on `mode`'s path; its summary, once
    /// every request was answered 200.
    fn load(&self, mode: Mode, h2: bool, count: u64) -> anyhow::Result<Value> {
        let (from, to) = match mode {
            Mode::Direct => (
                "c",
                SocketAddr::new(self.cluster.pod("d").ipv4.into(), HTTP),
            ),
            Mode::Nginx => {
                let port = if h2 { NGINX_H2 } else { HTTP };
                (
                    "c",
                    SocketAddr::new(self.cluster.pod("proxy").ipv4.into(), port),
                )
            }
            Mode::Waypoint => ("a", CART),
            // The pod's own address: no Service, so no waypoint.
            Mode::Mesh => (
                "a",
                SocketAddr::new(self.cluster.pod("b").ipv4.into(), HTTP),
            ),
        };
        let mut cmd = Command::new(&self.http);
        cmd.args([
            "load",
            "--to",
            &to.to_string(),
            "--count",
            &count.to_string(),
        ])
        .args(["--connections", &HTTP_CONNECTIONS.to_string()]);
        if h2 {
            cmd.arg("--h2");
        }
        let out = self
            .cluster
            .run(self.cluster.pod(from), cmd, Duration::from_secs(600))?;
        let summary: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("mesh-http load to {to} printed {out:?}"))?;
        let ok = summary["statuses"]["200"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            ok == count,
            "{} path{}: {ok} of {count} requests answered 200: {summary}",
            mode.name(),
            if h2 { " (h2)" } else { "" },
        );
        Ok(summary)
    }

    /// The proxy's processes on `mode`'s path (none on the direct one).
    fn proxy_pids(&self, mode: Mode) -> anyhow::Result<Vec<u32>> {
        Ok(match mode {
            Mode::Nginx => {
                let master = self.nginx.pid();
                let mut pids = vec![master];
                pids.extend(children(master)?);
                pids
            }
            Mode::Waypoint => vec![self.waypoint.process.pid()],
            Mode::Direct | Mode::Mesh => Vec::new(),
        })
    }
}

impl Measure for WaypointLab {
    fn measure(&self, scenario: &str, mode: Mode, load: &Load) -> anyhow::Result<Value> {
        let h2 = scenario == "waypoint-h2";
        let proxy = self.proxy_pids(mode)?;
        let agents: Vec<u32> = self.agents.iter().map(|a| a.process.pid()).collect();
        let (proxy_before, agents_before) = (
            cpu_seconds_of(proxy.iter().copied())?,
            cpu_seconds_of(agents.iter().copied())?,
        );
        let summary = self.load(mode, h2, load.http_requests.into())?;
        let thousands = f64::from(load.http_requests) / 1000.0;
        let mut figures = serde_json::Map::new();
        for key in ["requests_per_second", "p50_us", "p99_us"] {
            figures.insert(key.to_owned(), summary[key].clone());
        }
        if matches!(mode, Mode::Nginx | Mode::Waypoint) {
            let proxy_cpu = cpu_seconds_of(proxy.iter().copied())? - proxy_before;
            figures.insert(
                "proxy_cpu_s_per_1000_requests".into(),
                json!(proxy_cpu / thousands),
            );
            // After the load; nginx's master and worker together.
            let (mut rss, mut anon) = (0.0, 0.0);
            for pid in proxy {
                let (r, a) = memory(pid)?;
                (rss, anon) = (rss + r, anon + a);
            }
            figures.insert("proxy_rss_mib".into(), json!(rss));
            figures.insert("proxy_anon_mib".into(), json!(anon));
        }
        if mode == Mode::Waypoint {
            let agent_cpu = cpu_seconds_of(agents)? - agents_before;
            figures.insert(
                "agent_cpu_s_per_1000_requests".into(),
                json!(agent_cpu / thousands),
            );
        }
        Ok(Value::Object(figures))
    }
}

/// nginx as a plain reverse proxy to `backend` in the pod `proxy`: one
/// worker, keep-alive to the backend, no access log, no limit on requests
/// per connection (the default 1000 would close the load's connections
/// mid-run, as neither the load nor the waypoint does); HTTP/1.1 on [`HTTP`],
/// prior-knowledge HTTP/2 on [`NGINX_H2`]. Its config, pid file, logs and
/// temporary files live in a scratch directory; it runs in the foreground
/// as a pod process: dropping it kills the master, and the cluster's
/// teardown (which kills its pods' cgroups) the worker.
fn start_nginx(cluster: &Cluster, backend: SocketAddr) -> anyhow::Result<PodChild> {
    let dir = cluster.scratch_dir("nginx")?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HTTP};
        listen {NGINX_H2} http2;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
    let mut cmd = Command::new(NGINX);
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"]);
    let nginx = cluster
        .spawn(cluster.pod("proxy"), cmd)
        .with_context(|| format!("{NGINX} (cargo xtask setup installs it)"))?;
    // The master writes its pid file after binding the listeners; the
    // worker comes just after.
    nodemesh_tests::eventually("nginx listening with its worker", || {
        Ok(dir.join("nginx.pid").exists() && !children(nginx.pid())?.is_empty())
    })
    .with_context(|| {
        format!(
            "nginx's error log: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        )
    })?;
    Ok(nginx)
}

const NGINX: &str = "/usr/sbin/nginx";

/// A process's children (nginx's worker under its master).
fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .split_whitespace()
        .map(|p| p.parse().with_context(|| format!("{path}: {p:?}")))
        .collect()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a /proc stat line")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

/// utime + stime of several processes together, in seconds.
fn cpu_seconds_of(pids: impl IntoIterator<Item = u32>) -> anyhow::Result<f64> {
    pids.into_iter().map(cpu_seconds).sum()
}

/// Resident memory in MiB: all of it, and the anonymous part (the agent's
/// own allocations; the rest is the mapped binary, shared and reclaimable).
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    Ok((
        status_kib(pid, "VmRSS")? as f64 / 1024.0,
        status_kib(pid, "RssAnon")? as f64 / 1024.0,
    ))
}

/// Agent memory (mesh only: there is no agent on the direct path). The
/// agent of node n1, which has `load.pods` pods, enrols none, a tenth, then
/// all of them as its config grows; then `load.held` connections are held
/// open from one of them to a pod on n2. Per pod and per connection are
/// slopes of anonymous memory (`RssAnon`, the agents' own allocations; the
/// rest of their RSS is the mapped binary); a connection's cost is the sum
/// of its two agents' (the outbound relay on n1, the inbound one on n2, as
/// one agent carries both for a same-node connection).
///
/// Cross-node because of file descriptors: an agent holds two sockets for
/// each same-node connection, and without CAP_SYS_RESOURCE a process cannot
/// raise its limit above the hard one it was given (20 000 on the machine
/// these figures come from).
fn footprint(load: &Load) -> anyhow::Result<Value> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // The most any process needs: n1's agent, with a socket per connection
    // and a few listeners per pod.
    let needed = u64::from(load.held) + u64::from(load.pods) * 8 + 1024;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if needed > hard {
        bail!(
            "footprint needs {needed} open files per process, the hard limit is {hard} (raise it \
             with `ulimit -Hn`, which takes CAP_SYS_RESOURCE)"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let names: Vec<String> = (0..load.pods.max(1)).map(|i| format!("p{i:04}")).collect();
    let started = std::time::Instant::now();
    let mut spec = ClusterSpec::new().node("n1").node("n2").pod("sink", "n2");
    for name in &names {
        spec = spec.pod(name, "n1");
    }
    let cluster = spec.build()?;
    let build_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "footprint: cluster of {} pods built in {build_seconds:.1} s",
        names.len() + 1
    );
    let sink = cluster.pod("sink");
    let enrolling = |count: usize| {
        let mut config = MeshConfig::new().namespace("shop", true).pod(sink, "shop");
        for name in &names[..count] {
            config = config.pod(cluster.pod(name), "shop");
        }
        config
    };
    let (config_dir, _pki, agents) = start_mesh(&cluster, &enrolling(0), &["n1", "n2"])?;
    let (near, far) = (agents[0].process.pid(), agents[1].process.pid());
    let mut steps = Vec::new();
    let mut enrol_seconds = 0.0;
    for count in [0, load.pods as usize / 10, load.pods as usize] {
        let started = std::time::Instant::now();
        enrolling(count).write(&cluster, &config_dir)?;
        // Adding 900 pods took ≈3 s here; the bound leaves room for a slower
        // machine (or a debug build).
        let deadline =
            started + Duration::from_secs(30) + Duration::from_millis(100) * count as u32;
        loop {
            let status = agents[0].status()?;
            let len = |k: &str| status[k].as_array().map_or(0, Vec::len);
            if len("pods") == count && len("certs") == count {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the agent enrolled {} of {count} pods ({} certificates) in {:.0} s",
                    len("pods"),
                    len("certs"),
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        enrol_seconds = started.elapsed().as_secs_f64();
        eprintln!("footprint: {count} pods enrolled in {enrol_seconds:.1} s");
        std::thread::sleep(Duration::from_secs(1));
        steps.push((count, memory(near)?));
    }
    let traffic = workspace_binary("mesh-traffic")?;
    let mut serve = Command::new(&traffic);
    serve.args(["sink", "--listen", &format!("0.0.0.0:{SINK}")]);
    let mut server = cluster.spawn(sink, serve)?;
    server.next_line(Duration::from_secs(10))?;
    let far_at_rest = memory(far)?;
    let fds_before = [open_sockets(near)?, open_sockets(far)?];
    let mut hold = Command::new(&traffic);
    hold.args([
        "hold",
        "--to",
        &SocketAddr::new(sink.ipv4.into(), SINK).to_string(),
    ])
    .args(["--count", &load.held.to_string(), "--seconds", "120"]);
    let mut holder = cluster.spawn(cluster.pod(&names[0]), hold)?;
    let line = holder.next_line(Duration::from_secs(120))?;
    if !line.contains("held") {
        bail!("holding connections failed: {line}");
    }
    // The client's connects complete at the agent's in-pod listener; wait
    // until both agents hold a socket for each (give or take 1%: a socket
    // counted before, such as a certificate request's, may have closed
    // since), and no more arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (pid, before) in [(near, fds_before[0]), (far, fds_before[1])] {
        let mut last = 0;
        loop {
            let now = open_sockets(pid)?;
            if now == last && now + load.held as usize / 100 >= before + load.held as usize {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "agent {pid} holds {} more sockets for {} connections after 60 s",
                    now.saturating_sub(before),
                    load.held
                );
            }
            last = now;
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let with_connections = memory(near)?;
    let far_with_connections = memory(far)?;
    let (_, no_pods) = steps[0];
    let (few, with_few) = steps[1];
    let (_, at_rest) = steps[2];
    let kib_per = |mib: f64, n: usize| {
        if n == 0 {
            Value::Null
        } else {
            json!(mib * 1024.0 / n as f64)
        }
    };
    let per_connection = with_connections.1 - at_rest.1 + far_with_connections.1 - far_at_rest.1;
    Ok(json!({
        "direct": Value::Null,
        "mesh": {
            "cluster_build_s": build_seconds,
            "enrol_s": enrol_seconds,
            "anon_mib_no_pods": no_pods.1,
            "few_pods": few,
            "anon_mib_few_pods": with_few.1,
            "anon_kib_per_pod_few": kib_per(with_few.1 - no_pods.1, few),
            "pods": load.pods,
            "rss_mib_at_rest": at_rest.0,
            "anon_mib_at_rest": at_rest.1,
            "anon_kib_per_pod": kib_per(at_rest.1 - no_pods.1, load.pods as usize),
            "open_connections": load.held,
            "rss_mib_with_connections": with_connections.0,
            "anon_mib_with_connections": with_connections.1,
            "far_anon_mib_with_connections": far_with_connections.1,
            "anon_kib_per_connection": kib_per(per_connection, load.held as usize),
        },
        "ratio": Value::Null,
    }))
}

/// How many sockets process `pid` has open.
fn open_sockets(pid: u32) -> anyhow::Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    let mut sockets = 0;
    for fd in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // An fd closed while listing is no socket of ours any more.
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        sockets += usize::from(target.to_string_lossy().starts_with("socket:"));
    }
    Ok(sockets)
}

/// Writes `config`, starts the mesh CA and an agent with identities on each
/// of `nodes`; the config directory, the CA (kept for its lifetime) and the
/// agents.
fn start_mesh(
    cluster: &Cluster,
    config: &MeshConfig,
    nodes: &[&str],
) -> anyhow::Result<(PathBuf, Pki, Vec<Agent>)> {
    let config_dir = cluster.scratch_dir("config")?;
    config.write(cluster, &config_dir)?;
    let mut pki = Pki::init(cluster, nodes)?;
    pki.serve(cluster, &config_dir, 3600)?;
    let agents = nodes
        .iter()
        .map(|n| Agent::start_meshed(cluster, n, &config_dir, &pki))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((config_dir, pki, agents))
}

/// Per-figure median over repetitions.
fn median(samples: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(Value::Object(first)) = samples.first() {
        for key in first.keys() {
            let mut values: Vec<f64> = samples.iter().filter_map(|s| s[key].as_f64()).collect();
            values.sort_by(f64::total_cmp);
            if !values.is_empty() {
                out.insert(key.clone(), json!(values[values.len() / 2]));
            }
        }
    }
    Value::Object(out)
}

/// What each proxy adds to the path it sits on: nginx to the direct path,
/// the waypoint to the mesh path (the same client, nodes and backend, with
/// the node agents' HBONE but no waypoint). Comparing the waypoint path with
/// the direct one would charge the waypoint for the tunnel, which the
/// `mesh`-vs-`direct` scenarios measure on their own.
fn added_latency(result: &mut serde_json::Map<String, Value>) {
    for (proxy, without) in [(Mode::Nginx, Mode::Direct), (Mode::Waypoint, Mode::Mesh)] {
        for key in ["p50_us", "p99_us"] {
            let (Some(with), Some(base)) = (
                result[proxy.name()][key].as_f64(),
                result[without.name()][key].as_f64(),
            ) else {
                continue;
            };
            if let Some(figures) = result[proxy.name()].as_object_mut() {
                let added = key.replace("_us", "_added_us");
                figures.insert(added, json!((with - base).max(0.0)));
            }
        }
    }
}

/// subject / baseline (mesh / direct, waypoint / nginx) for every figure
/// both have.
fn ratios(baseline: &Value, subject: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Value::Object(b) = baseline {
        for (key, bv) in b {
            if let (Some(bv), Some(sv)) = (bv.as_f64(), subject[key].as_f64())
                && bv > 0.0
            {
                out.insert(key.clone(), json!(sv / bv));
            }
        }
    }
    Value::Object(out)
}

/// One table per kind of comparison: a column per mode, then per ratio.
fn markdown(report: &Value) -> String {
    let mut out = format!(
        "\n## nodemesh bench{} — commit {}, {} cores, kernel {}\n",
        if report["quick"] == true {
            " (quick)"
        } else {
            ""
        },
        report["commit"].as_str().unwrap_or("?"),
        report["machine"]["cores"],
        report["machine"]["kernel"].as_str().unwrap_or("?"),
    );
    let num = |v: &Value| match v.as_f64() {
        None => "–".to_owned(),
        Some(x) if x.fract() == 0.0 || x >= 100.0 => format!("{x:.0}"),
        // Small figures (CPU-seconds per 1000 requests) keep 3 significant
        // digits: 0.03 and 0.04 would hide a 30% difference.
        Some(x) if x < 0.1 => format!("{x:.4}"),
        Some(x) => format!("{x:.2}"),
    };
    let empty = serde_json::Map::new();
    let scenarios = report["scenarios"].as_object().unwrap_or(&empty);
    for c in [&MESH_VS_DIRECT, &WAYPOINT_VS_NGINX] {
        let mine: Vec<(&String, &Value)> = scenarios
            .iter()
            .filter(|(name, _)| std::ptr::eq(comparison(name), c))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut columns: Vec<(String, &str)> = c
            .modes
            .iter()
            .map(|m| (m.name().to_owned(), m.name()))
            .collect();
        columns.extend(
            c.ratios
                .iter()
                .map(|(key, n, d)| (format!("{}/{}", n.name(), d.name()), *key)),
        );
        let headings: Vec<&str> = columns.iter().map(|(h, _)| h.as_str()).collect();
        out.push_str(&format!(
            "\n| scenario | figure | {} |\n|---|---|{}\n",
            headings.join(" | "),
            "---:|".repeat(columns.len())
        ));
        for (name, s) in mine {
            // Every figure any mode has (the proxied modes have more).
            let keys: std::collections::BTreeSet<&String> = c
                .modes
                .iter()
                .filter_map(|m| s[m.name()].as_object())
                .flat_map(|figures| figures.keys())
                .collect();
            for key in keys {
                let cells: Vec<String> = columns.iter().map(|(_, k)| num(&s[*k][key])).collect();
                out.push_str(&format!("| {name} | {key} | {} |\n", cells.join(" | ")));
            }
        }
    }
    out
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn machine() -> Value {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "kernel": kernel,
        "cpu": cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_every_ratio_and_figures_without_one() {
        let report = json!({
            "commit": "abc1234", "date": "2026-12-07T09:00:00Z", "quick": false, "reps": 3,
            "machine": {"cores": 2, "kernel": "6.1", "cpu": "left out"},
            "scenarios": {
                "churn": {"direct": {"per_second": 10.0}, "mesh": {"per_second": 5.0},
                    "ratio": {"per_second": 0.5}},
                "waypoint-h2": {"ratio": {"p50_us": 3.0}, "ratio_nginx": {"p50_us": 1.5}},
                "footprint": {"direct": null, "mesh": {"pods": 100}, "ratio": null},
            },
        });
        assert_eq!(
            history(&report),
            json!({
                "commit": "abc1234", "date": "2026-12-07T09:00:00Z", "quick": false, "reps": 3,
                "machine": {"cores": 2, "kernel": "6.1"},
                "scenarios": {
                    "churn": {"ratio": {"per_second": 0.5}},
                    "waypoint-h2": {"ratio": {"p50_us": 3.0}, "ratio_nginx": {"p50_us": 1.5}},
                    "footprint": {"mesh": {"pods": 100}},
                },
            })
        );
    }
}
