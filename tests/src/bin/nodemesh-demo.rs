//! `nodemesh-demo` (run it with `cargo xtask demo`): a meshed two-node
//! cluster on this machine — real namespaces, real eBPF capture, a real CA,
//! real agents, real apps and clients — a summary of what happened read from
//! the agents' flow records, then live commands to try. Everything it makes
//! is removed when it ends, on Ctrl-C, or on an error half-way.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use mesh_agent::flows::{
    FlowRecord,
    record::{Direction, Path, State},
    render,
};
use nodemesh_tests::{
    Cluster, ClusterSpec, Host, PodChild,
    cluster::set_suite_prefix,
    eventually,
    mesh::{Agent, MeshConfig, Pki, workspace_binary},
};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Run nodemesh on a simulated two-node cluster on this machine (root)")]
struct Cli {
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

const CART_VIP: [u8; 4] = [10, 96, 0, 20];
const WAYPOINT_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Requests of the canary run, and the connections to cart in all (two
/// curls, the load's two, the refused DELETE).
const CANARY_REQUESTS: usize = 200;
const CART_CONNECTIONS: usize = 5;

const CART_NO_DELETE: &str = "apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: cart-no-delete
  namespace: shop
spec:
  targetRefs:
  - kind: Service
    name: cart
  action: DENY
  rules:
  - to:
      methods: [DELETE]
";

const CANARY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: cart-canary
  namespace: shop
spec:
  parentRefs:
  - group: \"\"
    kind: Service
    name: cart
  rules:
  - backendRefs:
    - name: cart-v1
      port: 80
      weight: 90
    - name: cart-v2
      port: 80
      weight: 10
";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// One traffic pair, as the flow records tell it.
#[derive(Debug, Serialize)]
struct Pair {
    from: String,
    to: String,
    connections: usize,
    /// Every connection was taken by a capture hook.
    captured: bool,
    /// Every connection crossed in mutual TLS (HBONE).
    encrypted: bool,
    /// `allowed` or `denied` (by the destination's policy).
    verdict: String,
    /// The deciding policy and rule, or the reason.
    rule: String,
    bytes_sent: u64,
    bytes_received: u64,
    /// The verified SPIFFE IDs of both ends, as the records have them
    /// (`-` for a plaintext end).
    source_identity: String,
    destination_identity: String,
}

/// What the waypoint did with the cart Service's HTTP requests.
#[derive(Debug, Serialize)]
struct Waypointed {
    /// Requests per backend pod under the canary route.
    canary: BTreeMap<String, usize>,
    /// The request L7 policy refused: what, the status, the deciding rule.
    denied_request: String,
    denied_status: u16,
    denied_rule: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    pairs: Vec<Pair>,
    waypoint: Waypointed,
    /// Copy-paste commands printed for the user, by purpose.
    commands: BTreeMap<String, String>,
    /// The agents' admin sockets, by node.
    agents: BTreeMap<String, PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("everything the demo created has been removed");
            std::process::ExitCode::FAILURE
        }
    }
}

fn step(n: u8, what: &str) -> Instant {
    println!("[{n}/8] {what}");
    Instant::now()
}

fn done(started: Instant, detail: &str) {
    println!(
        "      ✓ {detail} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    nodemesh_tests::require_root()?;
    set_suite_prefix("nmdemo")?;
    for signal in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(request_stop),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no other handler for these signals exists.
        unsafe { nix::sys::signal::sigaction(signal, &action) }
            .context("installing the Ctrl-C handler")?;
    }
    println!("nodemesh demo: a two-node cluster on this machine, meshed\n");

    let t = step(
        1,
        "building the cluster: 2 nodes, 6 pods (network namespaces, veths, bridges, cgroups)",
    );
    let cluster = ClusterSpec::new()
        .node("n1")
        .node("n2")
        .pod("frontend", "n1")
        .pod("waypoint", "n1")
        .pod("cart-1", "n1")
        .pod("client", "n1")
        .pod("cart-2", "n2")
        .pod("payments", "n2")
        .build()?;
    let pods = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n} {}", cluster.pod(n).ipv4))
            .collect::<Vec<_>>()
            .join(", ")
    };
    done(
        t,
        &format!(
            "n1: {}; n2: {}",
            pods(&["frontend", "waypoint", "cart-1", "client"]),
            pods(&["cart-2", "payments"])
        ),
    );

    let config_dir = cluster.scratch_dir("config")?;
    let cart_vip = IpAddr::from(CART_VIP);
    MeshConfig::new()
        .namespace("shop", true)
        .namespace("legacy", false)
        .pod(cluster.pod("frontend"), "shop")
        .pod(cluster.pod("cart-1"), "shop")
        .pod(cluster.pod("cart-2"), "shop")
        .pod(cluster.pod("payments"), "shop")
        .pod(cluster.pod("client"), "legacy")
        .pod(cluster.pod("waypoint"), "shop")
        .service_account("waypoint", "waypoint")
        .pod_label("waypoint", WAYPOINT_LABEL, "waypoint")
        .service_account("frontend", "frontend")
        .service_account("cart-1", "cart")
        .service_account("cart-2", "cart")
        .service_account("payments", "payments")
        .pod_label("cart-1", "app", "cart")
        .pod_label("cart-2", "app", "cart")
        .pod_label("cart-1", "version", "v1")
        .pod_label("cart-2", "version", "v2")
        .pod_label("payments", "app", "payments")
        .service("shop", "cart", cart_vip, (80, 8080), "cart")
        .service_label("shop/cart", "nodemesh.io/use-waypoint", "waypoint")
        .service(
            "shop",
            "cart-v1",
            [10, 96, 0, 21].into(),
            (80, 8080),
            "cart",
        )
        .service_selector("shop/cart-v1", "version", "v1")
        .service(
            "shop",
            "cart-v2",
            [10, 96, 0, 22].into(),
            (80, 8080),
            "cart",
        )
        .service_selector("shop/cart-v2", "version", "v2")
        .write(&cluster, &config_dir)?;

    let t = step(2, "starting the mesh CA (root key stays in its directory)");
    let mut pki = Pki::init(&cluster, &["n1", "n2"])?;
    pki.serve(&cluster, &config_dir, 3600)?;
    done(
        t,
        &format!(
            "trust domain cluster.local, serving node agents on {}",
            pki.ca_addr
        ),
    );

    let t = step(
        3,
        "starting one agent per node (eBPF capture, in-pod listeners, HBONE)",
    );
    let mut agents = Vec::new();
    for node in ["n1", "n2"] {
        agents.push(Agent::start_meshed(&cluster, node, &config_dir, &pki)?);
    }
    done(
        t,
        "namespace shop enrolled (frontend, cart-1, cart-2, payments); legacy/client is not",
    );

    let t = step(
        4,
        "starting the waypoint shop/waypoint in front of the Service shop/cart",
    );
    let waypoint = Agent::start_waypoint(&cluster, "n1", &config_dir, &pki, ("shop", "waypoint"))?;
    done(
        t,
        "L7 for shop/cart (label nodemesh.io/use-waypoint=waypoint), identity \
         spiffe://cluster.local/ns/shop/sa/waypoint",
    );

    let t = step(
        5,
        "applying policy: only shop/frontend may call payments (L4); no DELETE on cart (L7); \
         a 90/10 canary of cart (HTTPRoute)",
    );
    let policy_file = config_dir.join("policies.yaml");
    let policy = format!(
        "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  \
         name: payments-from-frontend\n  namespace: shop\nspec:\n  selector:\n    matchLabels:\n      \
         app: payments\n  action: ALLOW\n  rules:\n  - from:\n      identities: [\"{FRONTEND}\"]\n\
         ---\n{CART_NO_DELETE}"
    );
    nodemesh_tests::mesh::write_atomically(&policy_file, &policy)?;
    let route_file = config_dir.join("routes.yaml");
    nodemesh_tests::mesh::write_atomically(&route_file, CANARY)?;
    let payments = SocketAddr::new(cluster.pod("payments").ipv4.into(), 9000);
    eventually("the policy loaded", || {
        Ok(agents[1]
            .meshctl(&["why", "shop/cart-1", &payments.to_string()])?
            .contains("DENY"))
    })?;
    done(
        t,
        &format!(
            "AuthorizationPolicies shop/payments-from-frontend and shop/cart-no-delete in {}, \
             HTTPRoute shop/cart-canary in {}",
            policy_file.display(),
            route_file.display()
        ),
    );

    let t = step(
        6,
        "starting apps: HTTP on cart-1, cart-2 (Service shop/cart); TCP echo on payments",
    );
    let traffic = workspace_binary("mesh-traffic")?;
    let mut apps: Vec<PodChild> = Vec::new();
    for cart in ["cart-1", "cart-2"] {
        let mut cmd = Command::new(&traffic);
        cmd.args(["http", "--listen", "0.0.0.0:8080", "--name", cart]);
        apps.push(started(cluster.spawn(cluster.pod(cart), cmd)?)?);
    }
    let mut echo = Command::new(&traffic);
    echo.args(["echo", "--listen", "0.0.0.0:9000"]);
    apps.push(started(cluster.spawn(cluster.pod("payments"), echo)?)?);
    done(
        t,
        &format!("Service shop/cart at {cart_vip}:80 → :8080 of cart-1 and cart-2"),
    );

    let t = step(7, "sending traffic");
    let cart = SocketAddr::new(cart_vip, 80);
    let cart_2 = SocketAddr::new(cluster.pod("cart-2").ipv4.into(), 8080);
    for _ in 0..2 {
        let answer = curl(
            &cluster,
            cluster.pod("frontend"),
            &format!("http://{cart}/"),
        )?;
        println!("      frontend → cart (Service): {}", answer.trim());
    }
    let load = run_tool(
        &cluster,
        cluster.pod("frontend"),
        &workspace_binary("mesh-http")?,
        &[
            "load",
            "--to",
            &cart.to_string(),
            "--count",
            &CANARY_REQUESTS.to_string(),
            "--connections",
            "2",
        ],
    )?;
    let load: serde_json::Value = serde_json::from_str(load.trim())?;
    println!(
        "      frontend → cart (Service, canary): {CANARY_REQUESTS} requests, by backend {}",
        load["backends"]
    );
    let mut delete = Command::new("curl");
    delete.args([
        "-s",
        "--max-time",
        "5",
        "-X",
        "DELETE",
        &format!("http://{cart}/cart/items"),
    ]);
    let refused = cluster.run(cluster.pod("frontend"), delete, Duration::from_secs(10))?;
    println!("      frontend → DELETE cart: {}", refused.trim());
    let rr = run_tool(
        &cluster,
        cluster.pod("frontend"),
        &traffic,
        &["rr", "--to", &payments.to_string(), "--requests", "20"],
    )?;
    let rr: serde_json::Value = serde_json::from_str(rr.trim())?;
    println!(
        "      frontend → payments: 20 requests of 1 KiB answered, p50 {} µs",
        rr["p50_us"]
    );
    let denied = run_tool(
        &cluster,
        cluster.pod("cart-1"),
        &traffic,
        &["rr", "--to", &payments.to_string(), "--requests", "1"],
    );
    println!(
        "      cart-1 → payments: {}",
        match denied {
            Ok(_) => "answered (unexpected: the policy should deny it)".to_owned(),
            Err(_) => "refused, as the policy says".to_owned(),
        }
    );
    let legacy = curl(
        &cluster,
        cluster.pod("client"),
        &format!("http://{cart_2}/"),
    )?;
    println!(
        "      legacy/client → cart-2 (plaintext): {}",
        legacy.trim()
    );
    done(
        t,
        &format!(
            "{CART_CONNECTIONS} connections to cart, {CANARY_REQUESTS} + 3 requests, 3 others"
        ),
    );

    let t = step(8, "reading the agents' and the waypoint's flow records");
    let mut records: Vec<FlowRecord> = Vec::new();
    let mut requests: Vec<FlowRecord> = Vec::new();
    eventually("every flow recorded", || {
        records.clear();
        for agent in agents.iter().chain([&waypoint]) {
            records.extend(agent.flow_records(&[])?);
        }
        (requests, records) = records.drain(..).partition(|r| r.http.is_some());
        Ok(records
            .iter()
            .filter(|r| r.direction == Direction::Inbound)
            .count()
            >= 3 + CART_CONNECTIONS
            && requests.len() >= CANARY_REQUESTS + 3)
    })?;
    let waypointed = waypointed(&requests)?;
    let pairs = vec![
        pair(&records, "shop/frontend", "shop/cart (Service)", |r| {
            r.service.as_deref() == Some("shop/cart")
        }),
        pair(&records, "shop/frontend", "shop/payments", |r| {
            r.source.pod.as_deref() == Some("shop/frontend") && r.destination.addr() == payments
        }),
        pair(&records, "shop/cart-1", "shop/payments", |r| {
            r.source.pod.as_deref() == Some("shop/cart-1") && r.destination.addr() == payments
        }),
        pair(&records, "legacy/client", "shop/cart-2", |r| {
            r.source.pod.as_deref() == Some("legacy/client") && r.destination.addr() == cart_2
        }),
    ];
    done(
        t,
        &format!(
            "{} flow records, {} request records",
            records.len(),
            requests.len()
        ),
    );
    print_summary(&pairs);
    println!(
        "\n  waypoint: canary shop/cart-canary sent {} ; {} → {} ({})",
        waypointed
            .canary
            .iter()
            .map(|(pod, n)| format!("{n} to {pod}"))
            .collect::<Vec<_>>()
            .join(", "),
        waypointed.denied_request,
        waypointed.denied_status,
        waypointed.denied_rule
    );

    println!("\nmeshctl flows on n2 (what the destination side saw):\n");
    print!("{}", agents[1].meshctl(&["flows", "--last", "12"])?);
    println!("\nmeshctl flows on the waypoint (requests that were not 200):\n");
    print!(
        "{}",
        waypoint.meshctl(&[
            "flows",
            "--not",
            "--http-status",
            "200",
            "--method",
            "DELETE"
        ])?
    );

    let mut sockets: BTreeMap<String, PathBuf> = agents
        .iter()
        .map(|a| (a.node.clone(), a.admin_socket()))
        .collect();
    sockets.insert("waypoint".to_owned(), waypoint.admin_socket());
    let meshctl = workspace_binary("meshctl")?;
    let frontend = cluster.pod("frontend");
    let mut commands = BTreeMap::new();
    commands.insert(
        "follow".to_owned(),
        format!(
            "{} --agent {} flows --follow",
            meshctl.display(),
            sockets["n2"].display()
        ),
    );
    commands.insert(
        "curl".to_owned(),
        format!(
            "sh -c 'echo $$ > {procs} && exec ip netns exec {netns} curl -s http://{cart}/'",
            procs = frontend.cgroup.join("cgroup.procs").display(),
            netns = frontend.netns
        ),
    );
    commands.insert(
        "why".to_owned(),
        format!(
            "{} --agent {} why shop/cart-1 {payments}",
            meshctl.display(),
            sockets["n2"].display()
        ),
    );
    commands.insert(
        "policy".to_owned(),
        format!("${{EDITOR:-vi}} {}", policy_file.display()),
    );
    commands.insert(
        "requests".to_owned(),
        format!(
            "{} --agent {} flows --method GET --last 20",
            meshctl.display(),
            sockets["waypoint"].display()
        ),
    );
    commands.insert(
        "route".to_owned(),
        format!("${{EDITOR:-vi}} {}", route_file.display()),
    );
    let summary = Summary {
        pairs,
        waypoint: waypointed,
        commands: commands.clone(),
        agents: sockets,
    };
    if let Some(path) = &cli.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("--summary-json {}", path.display()))?;
    }

    println!(
        "\nThe cluster stays up{}. In another terminal (as root), try:\n",
        cli.duration
            .map(|d| format!(" for {d} s"))
            .unwrap_or_else(|| " until Ctrl-C".into())
    );
    println!(
        "  # every flow as it ends, on node n2\n  $ {}\n",
        commands["follow"]
    );
    println!(
        "  # curl from inside the frontend pod, placed as a container runtime would (its cgroup and its network namespace)\n  $ {}\n",
        commands["curl"]
    );
    println!(
        "  # why is cart-1 refused by payments?\n  $ {}\n",
        commands["why"]
    );
    println!(
        "  # change the policy (e.g. add spiffe://cluster.local/ns/shop/sa/cart to identities) and run `why` again\n  $ {}\n",
        commands["policy"]
    );
    println!(
        "  # every HTTP request the waypoint routed, with its route and backend\n  $ {}\n",
        commands["requests"]
    );
    println!(
        "  # change the canary weights (e.g. 50/50) and watch the split follow\n  $ {}\n",
        commands["route"]
    );
    println!("demo is up");

    let deadline = cli
        .duration
        .map(|d| Instant::now() + Duration::from_secs(d));
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nstopping: removing the agents, the CA, the pods and nodes");
    drop(apps);
    drop(waypoint);
    drop(agents);
    drop(pki);
    drop(cluster);
    println!("done: nothing is left behind");
    Ok(())
}

/// Waits (bounded) until a started server reports that it listens.
fn started(mut child: PodChild) -> anyhow::Result<PodChild> {
    child.next_line(Duration::from_secs(10))?;
    Ok(child)
}

fn curl(cluster: &Cluster, pod: &Host, url: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", url]);
    cluster.run(pod, cmd, Duration::from_secs(10))
}

fn run_tool(
    cluster: &Cluster,
    pod: &Host,
    tool: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut cmd = Command::new(tool);
    cmd.args(args);
    cluster.run(pod, cmd, Duration::from_secs(30))
}

/// Summarises one pair from the destination side's records (verdict) and
/// the source side's (capture, bytes).
fn pair(
    records: &[FlowRecord],
    from: &str,
    to: &str,
    matches: impl Fn(&FlowRecord) -> bool,
) -> Pair {
    let inbound: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| {
            r.direction == Direction::Inbound && (matches(r) || inbound_of(records, r, &matches))
        })
        .collect();
    let outbound: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| r.direction == Direction::Outbound && matches(r))
        .collect();
    let both: Vec<&&FlowRecord> = inbound.iter().chain(&outbound).collect();
    let denied = inbound.iter().any(|r| r.state == State::Denied);
    let decider = inbound.iter().find_map(|r| r.verdict.as_ref());
    let measured = if outbound.is_empty() {
        &inbound
    } else {
        &outbound
    };
    Pair {
        from: from.to_owned(),
        to: to.to_owned(),
        connections: inbound.len().max(outbound.len()),
        captured: !both.is_empty()
            && both
                .iter()
                .all(|r| r.hook.is_some() || r.path != Path::Passthrough),
        encrypted: !both.is_empty() && both.iter().all(|r| r.path != Path::Passthrough),
        verdict: if denied { "denied" } else { "allowed" }.to_owned(),
        rule: decider.map_or_else(
            || "no policy".to_owned(),
            |v| match (&v.policy, v.rule) {
                (Some(p), Some(rule)) => format!("{p} rule {rule}"),
                _ => v.reason.to_string(),
            },
        ),
        bytes_sent: measured.iter().map(|r| r.bytes_sent).sum(),
        bytes_received: measured.iter().map(|r| r.bytes_received).sum(),
        source_identity: inbound
            .iter()
            .chain(&outbound)
            .find_map(|r| r.source.identity.as_deref().map(str::to_owned))
            .unwrap_or_else(|| "-".into()),
        destination_identity: outbound
            .iter()
            .find_map(|r| r.tls.as_ref().map(|t| t.peer_identity.to_string()))
            .or_else(|| {
                inbound
                    .iter()
                    .find_map(|r| r.destination.identity.as_deref().map(str::to_owned))
            })
            .unwrap_or_else(|| "-".into()),
    }
}

/// The canary split and the L7 refusal, from the waypoint's request records.
fn waypointed(requests: &[FlowRecord]) -> anyhow::Result<Waypointed> {
    let mut canary = BTreeMap::new();
    for r in requests {
        if let Some(h) = &r.http
            && h.route.as_deref() == Some("shop/cart-canary#0")
            && h.status == 200
            && let Some(pod) = &r.destination.pod
        {
            *canary.entry(pod.to_string()).or_default() += 1;
        }
    }
    let denied = requests
        .iter()
        .find(|r| r.state == State::Denied)
        .context("the waypoint recorded no denied request")?;
    let http = denied.http.as_ref().context("a request record")?;
    let verdict = denied.verdict.as_ref().context("a verdict")?;
    Ok(Waypointed {
        canary,
        denied_request: format!("{} {}", http.method, http.path),
        denied_status: http.status,
        denied_rule: match (&verdict.policy, verdict.rule) {
            (Some(p), Some(rule)) => format!("{p} rule {rule}"),
            _ => verdict.reason.to_string(),
        },
    })
}

/// An inbound record belongs to a pair when an outbound record of the pair
/// reached the same endpoint from the same pod (the inbound side sees the
/// endpoint, not the Service address).
fn inbound_of(
    records: &[FlowRecord],
    inbound: &FlowRecord,
    matches: &impl Fn(&FlowRecord) -> bool,
) -> bool {
    records.iter().any(|o| {
        o.direction == Direction::Outbound
            && matches(o)
            && o.source.pod == inbound.source.pod
            && o.endpoint == Some(inbound.destination.addr())
    })
}

fn print_summary(pairs: &[Pair]) {
    println!();
    let header = [
        "FROM",
        "TO",
        "CONNS",
        "CAPTURED",
        "mTLS",
        "VERDICT",
        "RULE",
        "SENT",
        "RECEIVED",
        "IDENTITIES (verified)",
    ];
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|p| {
            vec![
                p.from.clone(),
                p.to.clone(),
                p.connections.to_string(),
                yes(p.captured),
                yes(p.encrypted),
                p.verdict.clone(),
                p.rule.clone(),
                render::bytes(p.bytes_sent),
                render::bytes(p.bytes_received),
                format!("{} → {}", p.source_identity, p.destination_identity),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}
