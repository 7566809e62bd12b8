//! `meshctl`: the nodemesh command-line interface. Talks to the local
//! agent's admin API (its unix socket by default).
use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use http_body_util::BodyExt as _;
use mesh_agent::{
    admin::{
        api::{PolicyView, ServiceView, WorkloadView},
        check::{Report, post_install, preflight},
        client::{Agent, DEFAULT_AGENT},
        status::Status,
        why::Why,
    },
    capture::object,
    flows::{
        Filter, FlowRecord,
        filter::Criterion,
        record::unix_ms_now,
        render::{self, Layout, table},
    },
    identity::store::CertStatus,
};

/// Inspect a nodemesh data plane: every redirected flow, workloads,
/// services, policies, certificates, what the mesh would do with a
/// connection, and whether a node can run it or runs it well.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The agent to ask: its admin socket (`<run-dir>/admin.sock`) or a
    /// `host:port` given to its `--admin-listen`. `check --post-install`
    /// takes one per node: repeat it.
    #[arg(long, global = true, default_value = DEFAULT_AGENT, action = clap::ArgAction::Append)]
    agent: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show flows: what the mesh did with each captured connection, and why.
    /// Filters combine with AND; `--not` negates the filter after it.
    #[command(after_help = "Examples:\n  \
        meshctl flows                                   # recent and open flows, as a table\n  \
        meshctl flows --follow -o jsonl                 # stream flows as they end\n  \
        meshctl flows --namespace shop --verdict denied --since 10m\n  \
        meshctl flows --from-pod frontend --to-port 8080 --last 20 -o wide\n  \
        meshctl flows --to-namespace shop --not --from-namespace shop")]
    Flows(Box<FlowsArgs>),
    /// List pods the agent knows: node, addresses, identity, enrolment.
    #[command(after_help = "Example:\n  meshctl workloads -o json")]
    Workloads(OutputArg),
    /// List services: addresses, ports, and the pods they select.
    #[command(after_help = "Example:\n  meshctl services")]
    Services(OutputArg),
    /// List authorization policies (with their rules) and peer authentication.
    #[command(after_help = "Example:\n  meshctl policies -o json")]
    Policies(OutputArg),
    /// List this node's pod certificates: identity, serial, expiry.
    #[command(
        after_help = "Example:\n  meshctl certs   # EXPIRES IN shows when renewal is due (half-life)"
    )]
    Certs(OutputArg),
    /// Show the agent: version, capture state of every enrolled pod,
    /// counters, tunnel activity. Exits 1 when a pod is not fully captured.
    #[command(after_help = "Examples:\n  \
        meshctl status\n  \
        meshctl --agent /tmp/demo/run-n1/admin.sock status -o json")]
    Status(OutputArg),
    /// Dry run: what would happen if SRC connected to DST:PORT? Enrolment,
    /// identities, peer authentication, every policy considered, and the
    /// decision — from the agent's current state, without sending a packet.
    #[command(after_help = "Examples:\n  \
        meshctl why shop/frontend 10.2.0.12:8080\n  \
        meshctl why legacy-client 10.2.0.12:8080 -o json")]
    Why {
        /// The source pod: `namespace/name`, a unique name, or its IP.
        source: String,
        /// The destination `ip:port`.
        destination: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pre-flight: can this node run the agent? The kernel's version, cgroup
    /// v2, bpffs, this process's capabilities, and every capture program
    /// through the kernel's verifier (run it as the agent will run: root, or
    /// with its capabilities). With --post-install: does the installed mesh
    /// work on each node whose agent --agent names? One line per check;
    /// exits 1 when any fails.
    #[command(after_help = "Examples:\n  \
        meshctl check                    # before installing: can this node run the agent?\n  \
        meshctl check --post-install     # after: the agent on this node\n  \
        meshctl check --post-install --agent /tmp/demo/run-n1/admin.sock --agent /tmp/demo/run-n2/admin.sock\n  \
        meshctl check --post-install --agent 127.0.0.1:15000 --agent 127.0.0.1:15100 -o json \
        # two agents' --admin-listen, e.g. through kubectl port-forward")]
    Check(CheckArgs),
    /// Print meshctl's version.
    Version,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Check the installed mesh instead, through each agent's admin API
    /// (--agent, once per node): the agent is ready, its model source is
    /// connected, the CA issues its pods' certificates, capture is in place
    /// for every enrolled pod, and a kernel hook captured at least one real
    /// connection on the node.
    #[arg(long)]
    post_install: bool,
    /// Pre-flight: where the agent will pin its programs (its --bpffs-dir).
    /// They are loaded into a scratch directory on the same bpffs, removed
    /// afterwards: a running agent's pins are left alone.
    #[arg(long, default_value = object::DEFAULT_DIR, conflicts_with = "post_install")]
    bpffs_dir: std::path::PathBuf,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(clap::Args)]
struct OutputArg {
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FlowOutput {
    Table,
    Wide,
    Json,
    Jsonl,
}

#[derive(clap::Args)]
struct FlowsArgs {
    /// Either end in this namespace.
    #[arg(long)]
    namespace: Vec<String>,
    /// Either end is this pod (`name` or `namespace/name`).
    #[arg(long)]
    pod: Vec<String>,
    /// The source: a pod (`name`, `namespace/name`) or an IP address.
    #[arg(long)]
    from: Vec<String>,
    /// The destination: a pod or an IP address.
    #[arg(long)]
    to: Vec<String>,
    /// Either end has this identity (a SPIFFE ID, or its tail like `sa/cart`).
    #[arg(long)]
    identity: Vec<String>,
    /// The original destination port.
    #[arg(long, alias = "to-port")]
    port: Vec<u16>,
    /// allowed, denied, refused or error.
    #[arg(long)]
    verdict: Vec<String>,
    /// The source is in this namespace.
    #[arg(long)]
    from_namespace: Vec<String>,
    /// The destination is in this namespace.
    #[arg(long)]
    to_namespace: Vec<String>,
    /// The source is this pod.
    #[arg(long)]
    from_pod: Vec<String>,
    /// The destination is this pod.
    #[arg(long)]
    to_pod: Vec<String>,
    /// The source has this address.
    #[arg(long)]
    from_ip: Vec<std::net::IpAddr>,
    /// The original destination has this address.
    #[arg(long)]
    to_ip: Vec<std::net::IpAddr>,
    /// The source has this identity.
    #[arg(long)]
    from_identity: Vec<String>,
    /// The destination has this identity.
    #[arg(long)]
    to_identity: Vec<String>,
    /// HTTP requests (recorded by waypoints) answered with this status, or
    /// a class: `404`, `5xx`.
    #[arg(long)]
    http_status: Vec<String>,
    /// HTTP requests with this method: `GET`, `POST`, …
    #[arg(long)]
    method: Vec<String>,
    /// HTTP requests whose path starts with this: `/api/`.
    #[arg(long)]
    path: Vec<String>,
    /// Captured by this kernel hook: `connect4`, `connect6`, `sk_lookup`, or
    /// `any` (flows that arrived through the tunnel have none).
    #[arg(long)]
    hook: Vec<String>,
    /// Negate the filter that follows (e.g. `--not --namespace kube-system`).
    #[arg(long, action = clap::ArgAction::Count)]
    not: u8,
    /// Only flows that started within this long ago: `30s`, `5m`, `2h`.
    #[arg(long, value_parser = parse_age)]
    since: Option<u64>,
    /// Only the newest N flows.
    #[arg(long)]
    last: Option<usize>,
    /// Keep printing flows as they end, until interrupted.
    #[arg(short, long)]
    follow: bool,
    #[arg(short, long, value_enum, default_value_t = FlowOutput::Table)]
    output: FlowOutput,
}

fn parse_age(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(text.trim_end_matches(|c: char| c.is_alphabetic()).len());
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an age like 30s, 5m or 2h"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unit {other:?}: use ms, s, m, h or d")),
    };
    Ok(n * ms)
}

fn main() -> std::process::ExitCode {
    // Die quietly when the reader goes away (`meshctl flows | head`), as
    // command-line tools do, instead of panicking on the failed print.
    // SAFETY: restoring a signal's default disposition at start-up, before
    // any other thread exists; no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime");
    match runtime.block_on(run(cli, &matches)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<std::process::ExitCode> {
    let colour = std::io::stdout().is_terminal();
    if let Command::Check(args) = &cli.command {
        return check(args, &cli.agent, matches, colour).await;
    }
    let agent = match cli.agent.as_slice() {
        [one] => Agent::parse(one),
        many => bail!(
            "--agent is given {} times: only `meshctl check --post-install` asks several agents; \
             the other commands ask one",
            many.len()
        ),
    };
    match cli.command {
        Command::Flows(args) => {
            let flow_matches = matches.subcommand_matches("flows").expect("flows");
            let filter = flow_filter(&args, flow_matches)?;
            flows(&agent, &filter, &args, colour).await?;
        }
        Command::Workloads(o) => {
            let list: Vec<WorkloadView> = agent.get_json("/workloads").await?;
            print_list(
                o.output,
                &list,
                &["POD", "NODE", "IPS", "IDENTITY", "MESH"],
                |w| {
                    vec![
                        w.pod.clone(),
                        w.node.clone(),
                        join(&w.ips),
                        w.identity.clone().unwrap_or_else(|| "-".into()),
                        if w.enrolled { "enrolled" } else { "-" }.into(),
                    ]
                },
            )?;
        }
        Command::Services(o) => {
            let list: Vec<ServiceView> = agent.get_json("/services").await?;
            print_list(
                o.output,
                &list,
                &["SERVICE", "CLUSTER-IPS", "PORTS", "ENDPOINTS"],
                |s| {
                    vec![
                        s.service.clone(),
                        join(&s.cluster_ips),
                        s.ports.join(","),
                        s.endpoints.join(","),
                    ]
                },
            )?;
        }
        Command::Policies(o) => {
            let list: Vec<PolicyView> = agent.get_json("/policies").await?;
            print_list(
                o.output,
                &list,
                &["POLICY", "KIND", "ACTION/MODE", "RULES"],
                |p| {
                    let action = match (p.action, p.mode) {
                        (Some(a), _) => format!("{a:?}").to_uppercase(),
                        (_, Some(m)) => format!("{m:?}").to_uppercase(),
                        _ => "-".into(),
                    };
                    let action = if p.dry_run {
                        format!("{action} (dry run)")
                    } else {
                        action
                    };
                    vec![
                        p.policy.clone(),
                        p.kind.clone(),
                        action,
                        if p.rules.is_empty() {
                            "-".into()
                        } else {
                            p.rules.join("; ")
                        },
                    ]
                },
            )?;
        }
        Command::Certs(o) => {
            let list: Vec<CertStatus> = agent.get_json("/certs").await?;
            let now = unix_ms_now() / 1000;
            print_list(
                o.output,
                &list,
                &["POD", "IDENTITY", "SERIAL", "EXPIRES IN", "ISSUED"],
                |c| {
                    vec![
                        c.pod.clone(),
                        c.identity.clone(),
                        c.serial.clone(),
                        render::duration(c.not_after_unix.saturating_sub(now) * 1000),
                        c.issued.to_string(),
                    ]
                },
            )?;
        }
        Command::Status(o) => {
            let status: Option<Status> = agent.get_json("/status").await?;
            let status = status.context("the agent has not written its status yet; retry")?;
            match o.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print_status(&status, colour),
            }
            let broken = status
                .pods
                .iter()
                .filter(|p| !p.problems.is_empty())
                .count();
            if broken > 0 {
                eprintln!("error: {broken} enrolled pod(s) are not fully captured (see PROBLEMS)");
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Why {
            source,
            destination,
            output,
        } => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("from", &source)
                .append_pair("to", &destination)
                .finish();
            let answer: Why = agent.get_json(&format!("/why?{query}")).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
                Output::Table => print_why(&answer),
            }
        }
        Command::Version => println!("meshctl {}", env!("CARGO_PKG_VERSION")),
        Command::Check(_) => unreachable!("handled above"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `meshctl check`: pre-flight on this machine, or post-install through
/// every agent named.
async fn check(
    args: &CheckArgs,
    agents: &[String],
    matches: &ArgMatches,
    colour: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let checks = if args.post_install {
        let agents: Vec<Agent> = agents.iter().map(|a| Agent::parse(a)).collect();
        post_install::run(&agents).await
    } else {
        if matches.value_source("agent") == Some(clap::parser::ValueSource::CommandLine) {
            bail!(
                "--agent is for `meshctl check --post-install`; the pre-flight checks the machine \
                 meshctl runs on"
            );
        }
        preflight::run(&args.bpffs_dir)
    };
    let report = Report::new(checks);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", report.table(colour)),
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// The filter the flags describe; a `--not` negates the filter flag that
/// follows it on the command line.
fn flow_filter(args: &FlowsArgs, m: &ArgMatches) -> anyhow::Result<Filter> {
    // A count flag reports an index even when absent: only ask when used.
    let nots: Vec<usize> = if args.not > 0 {
        m.indices_of("not")
            .map(Iterator::collect)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut found: Vec<(usize, Criterion)> = Vec::new();
    for (arg, key) in [
        ("namespace", "namespace"),
        ("pod", "pod"),
        ("identity", "identity"),
        ("port", "port"),
        ("verdict", "verdict"),
        ("from_namespace", "from-namespace"),
        ("to_namespace", "to-namespace"),
        ("from_pod", "from-pod"),
        ("to_pod", "to-pod"),
        ("from_ip", "from-ip"),
        ("to_ip", "to-ip"),
        ("from_identity", "from-identity"),
        ("to_identity", "to-identity"),
        ("from", "from"),
        ("to", "to"),
        ("http_status", "http-status"),
        ("method", "method"),
        ("path", "path"),
        ("hook", "hook"),
    ] {
        let (Some(indices), Some(values)) = (m.indices_of(arg), m.get_raw(arg)) else {
            continue;
        };
        for (index, value) in indices.zip(values) {
            let value = value.to_string_lossy();
            // --from/--to take a pod or an address.
            let key = match key {
                "from" | "to" if value.parse::<std::net::IpAddr>().is_ok() => format!("{key}-ip"),
                "from" | "to" => format!("{key}-pod"),
                other => other.to_owned(),
            };
            found.push((
                index,
                Criterion::parse(&key, &value).map_err(anyhow::Error::msg)?,
            ));
        }
    }
    found.sort_by_key(|(i, _)| *i);
    let mut filter = Filter {
        criteria: Vec::new(),
        last: args.last,
    };
    for (index, criterion) in found {
        // The flag's value sits at `index`; the flag itself just before it,
        // so a `--not` right before the flag is at `index - 2`.
        // (`--flag=value` puts both at one index: then it is `index - 1`.)
        let negated =
            nots.contains(&index.saturating_sub(2)) || nots.contains(&index.saturating_sub(1));
        filter.criteria.push((negated, criterion));
    }
    let used_nots = filter.criteria.iter().filter(|(n, _)| *n).count();
    if used_nots != nots.len() {
        bail!("--not must come right before the filter it negates (e.g. --not --namespace shop)");
    }
    if let Some(age) = args.since {
        filter
            .criteria
            .push((false, Criterion::Since(unix_ms_now().saturating_sub(age))));
    }
    Ok(filter)
}

async fn flows(
    agent: &Agent,
    filter: &Filter,
    args: &FlowsArgs,
    colour: bool,
) -> anyhow::Result<()> {
    let query = filter.to_query();
    if !args.follow {
        let records: Vec<FlowRecord> = agent.get_json(&format!("/flows?{query}")).await?;
        return print_flows(&records, args.output, colour, Some(Layout::Fit));
    }
    // Following: the recent ones first (unless --last 0), then live.
    if args.last != Some(0) {
        let records: Vec<FlowRecord> = agent.get_json(&format!("/flows?{query}")).await?;
        print_flows(&records, args.output, colour, Some(Layout::Stream))?;
    }
    let mut body = agent
        .get(&format!("/flows/follow?{query}"))
        .await?
        .into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the agent's flow stream broke")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let record: FlowRecord = serde_json::from_slice(&line)?;
            print_flows(&[record], args.output, colour, None)?;
        }
    }
    bail!("the agent closed the flow stream (did it stop?)")
}

/// `header`: print the table's header, in this layout; `None` for a
/// follower's further rows (always [`Layout::Stream`]).
fn print_flows(
    records: &[FlowRecord],
    output: FlowOutput,
    colour: bool,
    header: Option<Layout>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        FlowOutput::Json => writeln!(out, "{}", serde_json::to_string_pretty(records)?)?,
        FlowOutput::Jsonl => {
            for r in records {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            }
        }
        FlowOutput::Table | FlowOutput::Wide => {
            let layout = header.unwrap_or(Layout::Stream);
            let text = table(records, output == FlowOutput::Wide, colour, layout);
            let text = if header.is_some() {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |(_, rows)| rows)
            };
            write!(out, "{text}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A list as JSON, or as an aligned table of `row(item)`.
fn print_list<T: serde::Serialize>(
    output: Output,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(items)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(items.iter().map(row))
        .collect();
    let mut widths = vec![0; header.len()];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

fn print_why(w: &Why) {
    let side = |s: &mesh_agent::admin::why::Side| {
        format!(
            "{} ({}){}{}",
            s.pod.as_deref().unwrap_or("not a pod"),
            s.ip,
            if s.enrolled {
                ", enrolled"
            } else {
                ", not in the mesh"
            },
            s.identity
                .as_deref()
                .map(|i| format!(", identity {i}"))
                .unwrap_or_default()
        )
    };
    println!("source       {}", side(&w.source));
    match &w.service {
        Some(svc) => println!(
            "destination  Service {svc} ({}) port {}",
            w.destination.ip, w.port
        ),
        None => println!("destination  {} port {}", side(&w.destination), w.port),
    }
    if let Some(waypoint) = &w.waypoint {
        println!("waypoint     {waypoint}");
    }
    print_outcome(&w.outcome, "");
    for e in &w.endpoints {
        println!("endpoint     {} port {}", side(&e.destination), e.port);
        print_outcome(&e.outcome, "  ");
    }
}

/// One outcome of `meshctl why`, each line indented by `indent`.
fn print_outcome(o: &mesh_agent::admin::why::Outcome, indent: &str) {
    println!("{indent}path         {}", o.path);
    if let Some(mode) = &o.peer_authentication {
        println!("{indent}peer auth    {mode}");
    }
    for p in &o.policies {
        println!(
            "{indent}policy       {} {:?}{}: {}",
            p.policy,
            p.action,
            if p.dry_run { " (dry run)" } else { "" },
            p.matched_rule.map_or_else(
                || "no rule matches".to_owned(),
                |r| format!("rule {r} matches")
            )
        );
    }
    println!(
        "{indent}decision     {}: {}",
        o.decision.to_uppercase(),
        o.reason
    );
}

fn print_status(status: &Status, colour: bool) {
    let red = |text: &str| {
        if colour {
            format!("\x1b[31m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    println!(
        "node {}  agent {}  enrolled pods {}  certificates {}",
        status.node,
        status.version,
        status.pods.len(),
        status.certs.len()
    );
    match &status.api_server {
        None => println!("model: local config directory"),
        Some(s) if s.connected => {
            println!("model: Kubernetes API server, every watch synced");
            if !s.not_served.is_empty() {
                let missing: Vec<&str> = s.not_served.iter().map(String::as_str).collect();
                println!(
                    "  not served by this API server (CRD not installed), read as empty: {}",
                    missing.join(", ")
                );
            }
        }
        Some(s) => {
            let serving = if s.serving_last_good {
                "serving the last good model"
            } else {
                "no model yet"
            };
            println!(
                "{}",
                red(&format!(
                    "model: Kubernetes API server DISCONNECTED, {serving} ({})",
                    s.trouble().join("; ")
                ))
            );
        }
    }
    let t = &status.tunnel;
    println!(
        "tunnel: handshakes dialled {} accepted {} rejected {}; open HBONE connections {}; \
         inbound connections {}",
        t.handshakes_dialled,
        t.handshakes_accepted,
        t.handshakes_rejected,
        t.hbone_connections_open,
        t.inbound_connections_open
    );
    if let Some(spread) = t.spread {
        println!("{}", pool_line(t.pooled_connections, spread, t.workers));
    }
    println!();
    println!(
        "{:<28} {:>10} {:>10}  PROBLEMS",
        "POD", "OUTBOUND", "INBOUND"
    );
    for pod in &status.pods {
        let hook = |h: &mesh_agent::capture::proof::HookStatus| {
            if h.attached {
                h.captured.to_string()
            } else {
                "DETACHED".to_owned()
            }
        };
        let problems = if pod.problems.is_empty() {
            "-".to_owned()
        } else {
            red(&pod.problems.join("; "))
        };
        println!(
            "{:<28} {:>10} {:>10}  {problems}",
            pod.pod,
            hook(&pod.outbound),
            hook(&pod.inbound)
        );
    }
    for pod in &status.unlocated {
        println!(
            "{:<28} {:>10} {:>10}  {}",
            pod,
            "-",
            "-",
            red(
                "NOT CAPTURED: its network namespace is not known yet (waiting for the CNI \
                 plugin or the /proc scan)"
            )
        );
    }
    println!();
    println!("{:<10} {:<20} {:>10}", "HOOK", "COUNTER", "VALUE");
    for c in status.counters.iter().filter(|c| c.value > 0) {
        println!("{:<10} {:<20} {:>10}", c.hook, c.counter, c.value);
    }
    for error in &status.config_errors {
        println!("{}", red(&format!("config error: {error}")));
    }
}

/// How `meshctl status` explains the outbound pool.
fn pool_line(pooled: u64, spread: mesh_agent::tunnel::pool::Spread, workers: u64) -> String {
    let each = if spread.connections_per_key <= 1 {
        "one per destination".to_owned()
    } else {
        format!(
            "a destination gets another connection once each has {} open streams, up to {} \
             (then the least busy takes them)",
            spread.streams_per_connection, spread.connections_per_key
        )
    };
    format!(
        "pool: {pooled} outbound HBONE connections; on each of {workers} data-plane threads, {each}"
    )
}
