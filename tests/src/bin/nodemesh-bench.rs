//! `nodemesh-bench` (run it with `cargo xtask bench`): every scenario twice
//! in the same run — direct (pods not enrolled) and through the mesh
//! (enrolled: capture + HBONE mTLS) — interleaved, on the simulated
//! cluster, with the same load generator (`mesh-traffic`). Reports absolute
//! figures and mesh/direct ratios as a markdown table and as JSON.
use std::{
    collections::BTreeMap,
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
    /// Write every figure, the ratios, the commit and the machine here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Repetitions of each scenario (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
}

/// (name, what it measures).
const SCENARIOS: &[(&str, &str)] = &[
    ("throughput-1", "cross-node bulk transfer, 1 stream"),
    ("throughput-8", "cross-node bulk transfer, 8 streams"),
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
];

/// Load sizes: full and quick.
struct Load {
    bulk_seconds: f64,
    rr_requests: u32,
    rr32_requests: u32,
    churn: u32,
    pods: u32,
    held: u32,
}

const FULL: Load = Load {
    bulk_seconds: 5.0,
    rr_requests: 10_000,
    rr32_requests: 1_000,
    churn: 2_000,
    pods: 100,
    held: 1_000,
};
const QUICK: Load = Load {
    bulk_seconds: 1.0,
    rr_requests: 500,
    rr32_requests: 50,
    churn: 200,
    pods: 10,
    held: 100,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Mesh,
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
    let selected: Vec<&str> = SCENARIOS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| cli.scenario.is_empty() || cli.scenario.iter().any(|s| s == n))
        .collect();
    let load = if cli.quick { &QUICK } else { &FULL };
    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 3 });

    let mut samples: BTreeMap<&str, [Vec<Value>; 2]> = BTreeMap::new();
    let traffic_scenarios: Vec<&str> = selected
        .iter()
        .copied()
        .filter(|s| *s != "footprint")
        .collect();
    if !traffic_scenarios.is_empty() {
        let lab = Lab::start()?;
        for rep in 1..=reps {
            for scenario in &traffic_scenarios {
                for mode in [Mode::Direct, Mode::Mesh] {
                    eprintln!(
                        "rep {rep}/{reps} {scenario} {}",
                        if mode == Mode::Direct {
                            "direct"
                        } else {
                            "mesh"
                        }
                    );
                    let figures = lab.measure(scenario, mode, load)?;
                    samples.entry(scenario).or_default()[mode as usize].push(figures);
                }
            }
        }
    }
    let mut results: BTreeMap<String, Value> = samples
        .into_iter()
        .map(|(name, [direct, mesh])| {
            let (direct, mesh) = (median(&direct), median(&mesh));
            let ratio = ratios(&direct, &mesh);
            (
                name.to_owned(),
                json!({"direct": direct, "mesh": mesh, "ratio": ratio}),
            )
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
        "machine": machine(),
        "quick": cli.quick,
        "reps": reps,
        "scenarios": results,
    });
    print!("{}", markdown(&report));
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
    }
    Ok(())
}

/// The cluster every traffic scenario runs on: n1 holds a, a2 (enrolled) and
/// c, c2 (not); n2 holds b (enrolled) and d (not). Direct pairs are c → d
/// and c → c2, mesh pairs a → b and a → a2: the same paths between the
/// same nodes.
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
            .pod("c", "n1")
            .pod("c2", "n1")
            .pod("d", "n2")
            .build()?;
        let config_dir = cluster.scratch_dir("config")?;
        let mut config = MeshConfig::new()
            .namespace("shop", true)
            .namespace("legacy", false);
        for (pod, ns) in [
            ("a", "shop"),
            ("a2", "shop"),
            ("b", "shop"),
            ("c", "legacy"),
            ("c2", "legacy"),
            ("d", "legacy"),
        ] {
            config = config.pod(cluster.pod(pod), ns);
        }
        config.write(&cluster, &config_dir)?;
        let mut pki = Pki::init(&cluster, &["n1", "n2"])?;
        pki.serve(&cluster, &config_dir, 3600)?;
        let agents = ["n1", "n2"]
            .iter()
            .map(|n| Agent::start_meshed(&cluster, n, &config_dir, &pki))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let traffic = workspace_binary("mesh-traffic")?;
        let mut servers = Vec::new();
        for pod in ["b", "d", "a2", "c2"] {
            for args in [
                vec![
                    "sink".to_owned(),
                    "--listen".into(),
                    format!("0.0.0.0:{SINK}"),
                ],
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
            ] {
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

    /// (client, server) for a scenario in a mode.
    fn pair(&self, same_node: bool, mode: Mode) -> (&Host, &Host) {
        let (from, to) = match (same_node, mode) {
            (false, Mode::Direct) => ("c", "d"),
            (false, Mode::Mesh) => ("a", "b"),
            (true, Mode::Direct) => ("c", "c2"),
            (true, Mode::Mesh) => ("a", "a2"),
        };
        (self.cluster.pod(from), self.cluster.pod(to))
    }

    /// CPU seconds both agents have used so far.
    fn agent_cpu(&self) -> anyhow::Result<f64> {
        self.agents
            .iter()
            .map(|a| cpu_seconds(a.process.pid()))
            .sum()
    }

    fn measure(&self, scenario: &str, mode: Mode, load: &Load) -> anyhow::Result<Value> {
        let same_node = scenario.starts_with("same-node");
        let (from, to) = self.pair(same_node, mode);
        let at = |port| SocketAddr::new(to.ipv4.into(), port).to_string();
        let seconds = load.bulk_seconds.to_string();
        let args: Vec<String> = match scenario {
            "throughput-1" | "same-node-throughput" => {
                vec![
                    "bulk".into(),
                    "--to".into(),
                    at(SINK),
                    "--seconds".into(),
                    seconds,
                ]
            }
            "throughput-8" => vec![
                "bulk".into(),
                "--to".into(),
                at(SINK),
                "--streams".into(),
                "8".into(),
                "--seconds".into(),
                seconds,
            ],
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
        };
        let cpu_before = self.agent_cpu()?;
        let mut cmd = Command::new(&self.traffic);
        cmd.args(&args);
        let out = self.cluster.run(from, cmd, Duration::from_secs(600))?;
        let cpu = self.agent_cpu()? - cpu_before;
        let raw: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("mesh-traffic {args:?} printed {out:?}"))?;
        let mut figures = serde_json::Map::new();
        let pick = |keys: &[&str], figures: &mut serde_json::Map<String, Value>| {
            for k in keys {
                figures.insert((*k).to_owned(), raw[*k].clone());
            }
        };
        if scenario.contains("throughput") {
            pick(&["mib_per_s"], &mut figures);
            if mode == Mode::Mesh {
                let gb = raw["bytes"].as_f64().unwrap_or(0.0) / 1e9;
                figures.insert(
                    "agent_cpu_s_per_gb".into(),
                    json!(cpu / gb.max(f64::EPSILON)),
                );
            }
        } else if scenario.contains("latency") {
            pick(
                &["p50_us", "p90_us", "p99_us", "p999_us", "rps"],
                &mut figures,
            );
            if mode == Mode::Mesh {
                let thousands = raw["requests"].as_f64().unwrap_or(0.0) / 1000.0;
                figures.insert(
                    "agent_cpu_s_per_1000_requests".into(),
                    json!(cpu / thousands.max(f64::EPSILON)),
                );
            }
        } else {
            pick(&["per_second", "p50_us", "p99_us"], &mut figures);
        }
        Ok(Value::Object(figures))
    }
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

/// Resident memory in MiB: all of it, and the anonymous part (the agent's
/// own allocations; the rest is the mapped binary, shared and reclaimable).
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    Ok((
        status_kib(pid, "VmRSS")? as f64 / 1024.0,
        status_kib(pid, "RssAnon")? as f64 / 1024.0,
    ))
}

/// Agent memory: at rest with `load.pods` enrolled pods, then while
/// `load.held` connections are open through it (mesh only: there is no
/// agent on the direct path).
fn footprint(load: &Load) -> anyhow::Result<Value> {
    let names: Vec<String> = (0..load.pods).map(|i| format!("p{i:03}")).collect();
    let mut spec = ClusterSpec::new().node("n1");
    for name in &names {
        spec = spec.pod(name, "n1");
    }
    let cluster = spec.build()?;
    let config_dir = cluster.scratch_dir("config")?;
    let mut config = MeshConfig::new().namespace("shop", true);
    for name in &names {
        config = config.pod(cluster.pod(name), "shop");
    }
    config.write(&cluster, &config_dir)?;
    let mut pki = Pki::init(&cluster, &["n1"])?;
    pki.serve(&cluster, &config_dir, 3600)?;
    let agent = Agent::start_meshed(&cluster, "n1", &config_dir, &pki)?;
    std::thread::sleep(Duration::from_secs(2));
    let at_rest = memory(agent.process.pid())?;
    let traffic = workspace_binary("mesh-traffic")?;
    let server_pod = cluster.pod(&names[1]);
    let mut serve = Command::new(&traffic);
    serve.args(["sink", "--listen", &format!("0.0.0.0:{SINK}")]);
    let mut server = cluster.spawn(server_pod, serve)?;
    server.next_line(Duration::from_secs(10))?;
    let mut hold = Command::new(&traffic);
    hold.args([
        "hold",
        "--to",
        &SocketAddr::new(server_pod.ipv4.into(), SINK).to_string(),
    ])
    .args(["--count", &load.held.to_string(), "--seconds", "60"]);
    let mut holder = cluster.spawn(cluster.pod(&names[0]), hold)?;
    let line = holder.next_line(Duration::from_secs(120))?;
    if !line.contains("held") {
        bail!("holding connections failed: {line}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let with_connections = memory(agent.process.pid())?;
    Ok(json!({
        "direct": Value::Null,
        "mesh": {
            "pods": load.pods,
            "rss_mib_at_rest": at_rest.0,
            "anon_mib_at_rest": at_rest.1,
            "open_connections": load.held,
            "rss_mib_with_connections": with_connections.0,
            "anon_mib_with_connections": with_connections.1,
        },
        "ratio": Value::Null,
    }))
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

/// mesh / direct for every figure both have.
fn ratios(direct: &Value, mesh: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Value::Object(d) = direct {
        for (key, dv) in d {
            if let (Some(dv), Some(mv)) = (dv.as_f64(), mesh[key].as_f64())
                && dv > 0.0
            {
                out.insert(key.clone(), json!(mv / dv));
            }
        }
    }
    Value::Object(out)
}

fn markdown(report: &Value) -> String {
    let mut out = format!(
        "\n## nodemesh bench{} — commit {}, {} cores, kernel {}\n\n| scenario | figure | direct | mesh | mesh/direct |\n|---|---|---:|---:|---:|\n",
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
        Some(x) => format!("{x:.2}"),
    };
    if let Some(scenarios) = report["scenarios"].as_object() {
        for (name, s) in scenarios {
            let keys: Vec<&String> = s["mesh"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            for key in keys {
                out.push_str(&format!(
                    "| {name} | {key} | {} | {} | {} |\n",
                    num(&s["direct"][key]),
                    num(&s["mesh"][key]),
                    num(&s["ratio"][key]),
                ));
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
