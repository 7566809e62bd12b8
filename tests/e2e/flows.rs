//! Flow records, `meshctl`, the admin API and metrics, against real agents
//! carrying real traffic: every field checked against what the apps did.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::{
    capture::netns::in_netns,
    flows::{
        FlowRecord,
        record::{Direction, Hook, Path, State},
    },
    policy::Decision,
};
use nodemesh_tests::{
    ClusterSpec, Host,
    mesh::{Agent, MeshConfig},
    process::status_kib,
};

use crate::support::{
    MIB, Meshed, connect, connect_paused, eventually, finished, serve, shop_pair, traffic_tool,
    trial,
};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("flows::records_match_what_the_apps_did", records_are_exact),
        trial(
            "flows::follow_streams_and_every_filter_narrows",
            follow_and_filters,
        ),
        trial(
            "flows::metrics_parse_and_byte_counters_match",
            metrics_match,
        ),
        trial(
            "flows::the_closed_flow_ring_stays_bounded",
            ring_stays_bounded,
        ),
        trial(
            "flows::meshctl_says_what_to_do_when_the_agent_is_down",
            stopped_agent,
        ),
    ]
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const VIP: [u8; 4] = [10, 96, 0, 10];

/// n1: `a` (shop, sa frontend), `l` (legacy, not enrolled), `b2` (shop, sa
/// payments); n2: `b` (shop, sa payments). Service shop/payments at
/// 10.96.0.10:80 → 8080 of `b` and `b2`. A DENY policy refuses l → 9090.
fn shop() -> anyhow::Result<Meshed> {
    let cluster = ClusterSpec::cross_node_pair()
        .pod("l", "n1")
        .pod("b2", "n1")
        .build()?;
    let l_ip = cluster.pod("l").ipv4;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .namespace("legacy", false)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .pod(cluster.pod("b2"), "shop")
        .pod(cluster.pod("l"), "legacy")
        .service_account("a", "frontend")
        .service_account("b", "payments")
        .service_account("b2", "payments")
        .pod_label("b", "app", "payments")
        .pod_label("b2", "app", "payments")
        .service(
            "shop",
            "payments",
            IpAddr::from(VIP),
            (80, 8080),
            "payments",
        );
    let meshed = Meshed::start(cluster, config, 3600)?;
    meshed.write_config(
        "policies.yaml",
        &format!(
            "apiVersion: nodemesh.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata:\n  name: no-legacy-9090\n  namespace: shop\n\
             spec:\n  action: DENY\n  rules:\n  - from:\n      ipBlocks: [\"{l_ip}/32\"]\n\
             \x20   to:\n      ports: [9090]\n"
        ),
    )?;
    // The policy is in force once `why` says so.
    let n2 = meshed.agent("n2");
    let target = SocketAddr::new(meshed.cluster.pod("b").ipv4.into(), 9090).to_string();
    eventually("the DENY policy loaded", || {
        Ok(n2.meshctl(&["why", "legacy/l", &target])?.contains("DENY"))
    })?;
    Ok(meshed)
}

fn addr(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::new(host.ipv4.into(), port)
}

/// The last record on `agent` that satisfies `wanted` (waiting for it).
fn record(
    agent: &Agent,
    what: &str,
    wanted: impl Fn(&FlowRecord) -> bool,
) -> anyhow::Result<FlowRecord> {
    let mut found = None;
    eventually(what, || {
        found = agent
            .flow_records(&[])?
            .into_iter()
            .rev()
            .find(|r| wanted(r));
        Ok(found.is_some())
    })?;
    found.context("checked above")
}

fn records_are_exact() -> anyhow::Result<()> {
    let meshed = shop()?;
    let cluster = &meshed.cluster;
    let [a, b, b2, l] = ["a", "b", "b2", "l"].map(|p| cluster.pod(p).clone());
    let (n1, n2) = (meshed.agent("n1"), meshed.agent("n2"));
    let _servers = [
        serve(cluster, &b, "0.0.0.0:8080", 5000, 1)?,
        serve(cluster, &b2, "0.0.0.0:8080", 5000, 1)?,
        serve(cluster, &b, "0.0.0.0:9090", 5000, 1)?,
    ];

    // Enrolled → enrolled across nodes, by pod address.
    let sent = connect(cluster, &a, addr(&b, 8080), 3000, 2)?;
    ensure!(sent.received == 5000, "{sent:?}");
    let out = record(n1, "a's outbound flow", |r| {
        r.direction == Direction::Outbound && r.destination.addr() == addr(&b, 8080)
    })?;
    ensure!(
        out.source.pod.as_deref() == Some("shop/a")
            && out.source.ip == IpAddr::from(a.ipv4)
            && out.source.port == sent.local.port()
            && out.source.identity.as_deref() == Some(FRONTEND)
            && out.destination.pod.as_deref() == Some("shop/b")
            && out.destination.identity.as_deref() == Some(PAYMENTS)
            && out.hook == Some(Hook::Connect4)
            && out.path == Path::Tunnel
            && out
                .tls
                .as_ref()
                .is_some_and(|t| &*t.peer_identity == PAYMENTS && &*t.version == "TLSv1.3")
            && out.service.is_none()
            && out.bytes_sent == 3000
            && out.bytes_received == 5000
            && out.state == State::Closed
            && out.end.as_deref() == Some("closed")
            && &*out.node == "n1"
            && out.duration_ms().is_some(),
        "{out:#?}"
    );
    let inbound = record(n2, "b's inbound flow", |r| {
        r.direction == Direction::Inbound && r.destination.addr() == addr(&b, 8080)
    })?;
    ensure!(
        inbound.source.pod.as_deref() == Some("shop/a")
            && inbound.source.identity.as_deref() == Some(FRONTEND)
            && inbound.destination.identity.as_deref() == Some(PAYMENTS)
            && inbound.hook.is_none()
            && inbound.path == Path::Tunnel
            && inbound
                .verdict
                .as_ref()
                .is_some_and(|v| v.decision == Decision::Allow
                    && &*v.reason == "allowed: no ALLOW policy selects the pod")
            && inbound.bytes_sent == 3000
            && inbound.bytes_received == 5000,
        "{inbound:#?}"
    );

    // Through the Service address: round robin over b and b2.
    let vip = SocketAddr::from((VIP, 80));
    let mut endpoints = Vec::new();
    for seed in [3, 4] {
        connect(cluster, &a, vip, 100, seed)?;
        let r = record(n1, "a VIP flow", |r| {
            r.destination.addr() == vip && r.source.port != 0 && !endpoints.contains(&r.endpoint)
        })?;
        ensure!(
            r.service.as_deref() == Some("shop/payments")
                && r.bytes_sent == 100
                && r.bytes_received == 5000,
            "{r:#?}"
        );
        endpoints.push(r.endpoint);
    }
    endpoints.sort();
    let mut want = vec![Some(addr(&b2, 8080)), Some(addr(&b, 8080))];
    want.sort();
    ensure!(
        endpoints == want,
        "the Service's endpoints were {endpoints:?}"
    );
    let same = record(n1, "the same-node endpoint's flow", |r| {
        r.endpoint == Some(addr(&b2, 8080))
    })?;
    ensure!(same.path == Path::SameNode, "{same:#?}");

    // An open flow shows the bytes moved so far.
    let mut long = connect_paused(cluster, &a, addr(&b, 8080), 2 * MIB, MIB, 3000)?;
    let open = record(n1, "the paused connection's open flow at 1 MiB", |r| {
        r.state == State::Open && r.destination.addr() == addr(&b, 8080) && r.bytes_sent == MIB
    })?;
    ensure!(
        open.end_unix_ms.is_none() && open.duration_ms().is_none(),
        "{open:#?}"
    );
    finished(&mut long)?.context("the paused connection")?;

    // Plaintext from outside the mesh, allowed, then denied by the rule.
    connect(cluster, &l, addr(&b, 8080), 700, 5)?;
    let plain = record(n2, "l's plaintext flow", |r| {
        r.source.pod.as_deref() == Some("legacy/l") && r.destination.port == 8080
    })?;
    ensure!(
        plain.hook == Some(Hook::SkLookup)
            && plain.path == Path::Passthrough
            && plain.source.identity.is_none()
            && plain.tls.is_none()
            && plain.bytes_sent == 700
            && plain.bytes_received == 5000,
        "{plain:#?}"
    );
    ensure!(
        connect(cluster, &l, addr(&b, 9090), 10, 6).is_err(),
        "l → 9090 got through"
    );
    let denied = record(n2, "l's denied flow", |r| {
        r.source.pod.as_deref() == Some("legacy/l") && r.destination.port == 9090
    })?;
    ensure!(
        denied.state == State::Denied
            && denied
                .verdict
                .as_ref()
                .is_some_and(|v| v.decision == Decision::Deny
                    && v.policy.as_deref() == Some("shop/no-legacy-9090")
                    && v.rule == Some(0))
            && denied.bytes_sent == 0,
        "{denied:#?}"
    );
    Ok(())
}

fn follow_and_filters() -> anyhow::Result<()> {
    let meshed = shop()?;
    let cluster = &meshed.cluster;
    let [a, b, l] = ["a", "b", "l"].map(|p| cluster.pod(p).clone());
    let n2 = meshed.agent("n2");
    let _servers = [
        serve(cluster, &b, "0.0.0.0:8080", 10, 1)?,
        serve(cluster, &b, "0.0.0.0:7777", 10, 1)?,
    ];

    // --follow: a flow shows up within a second of its end.
    let mut cmd = std::process::Command::new(nodemesh_tests::mesh::workspace_binary("meshctl")?);
    cmd.arg("--agent").arg(n2.admin_socket()).args([
        "flows", "--follow", "-o", "jsonl", "--last", "0", "--port", "7777",
    ]);
    let mut follower = nodemesh_tests::process::spawn_here(cmd)?;
    std::thread::sleep(Duration::from_millis(300));
    connect(cluster, &a, addr(&b, 7777), 10, 2)?;
    let ended = Instant::now();
    let line = follower.next_line(Duration::from_secs(5))?;
    let delay = ended.elapsed();
    let streamed: FlowRecord = serde_json::from_str(&line)?;
    ensure!(
        streamed.destination.port == 7777 && streamed.source.pod.as_deref() == Some("shop/a"),
        "{streamed:#?}"
    );
    ensure!(
        delay < Duration::from_secs(1),
        "the flow was streamed {delay:?} after it ended"
    );
    drop(follower);

    // A mixed history, then each filter against the same predicate by hand.
    connect(cluster, &a, addr(&b, 8080), 10, 3)?;
    connect(cluster, &l, addr(&b, 8080), 10, 4)?;
    let _ = connect(cluster, &l, addr(&b, 9090), 10, 5);
    eventually("four flows on n2", || Ok(n2.flow_records(&[])?.len() >= 4))?;
    let all = n2.flow_records(&[])?;
    let a_ip = a.ipv4.to_string();
    type Keep<'a> = Box<dyn Fn(&FlowRecord) -> bool + 'a>;
    let cases: Vec<(Vec<&str>, Keep<'_>)> = vec![
        (
            vec!["--namespace", "legacy"],
            Box::new(|r| r.source.pod.as_deref() == Some("legacy/l")),
        ),
        (
            vec!["--pod", "a"],
            Box::new(|r| r.source.pod.as_deref() == Some("shop/a")),
        ),
        (
            vec!["--from", "legacy/l"],
            Box::new(|r| r.source.pod.as_deref() == Some("legacy/l")),
        ),
        (
            vec!["--from", &a_ip],
            Box::new(|r| r.source.ip.to_string() == a_ip),
        ),
        (
            vec!["--identity", "sa/frontend"],
            Box::new(|r| r.source.identity.as_deref() == Some(FRONTEND)),
        ),
        (
            vec!["--port", "8080"],
            Box::new(|r| r.destination.port == 8080),
        ),
        (
            vec!["--verdict", "denied"],
            Box::new(|r| r.state == State::Denied),
        ),
        (
            vec!["--not", "--from-namespace", "shop"],
            Box::new(|r| r.source.pod.as_deref() != Some("shop/a")),
        ),
        (vec!["--since", "1h"], Box::new(|_| true)),
    ];
    for (args, keep) in cases {
        let got: Vec<u64> = n2.flow_records(&args)?.iter().map(|r| r.id).collect();
        let want: Vec<u64> = all.iter().filter(|r| keep(r)).map(|r| r.id).collect();
        let narrows = !want.is_empty() && want.len() < all.len();
        ensure!(
            narrows || args[0] == "--since",
            "{args:?} is not a narrowing case here"
        );
        ensure!(
            got == want,
            "meshctl flows {args:?} gave {got:?}, expected {want:?}"
        );
    }
    let last: Vec<u64> = n2
        .flow_records(&["--last", "2"])?
        .iter()
        .map(|r| r.id)
        .collect();
    let newest: Vec<u64> = all.iter().rev().take(2).rev().map(|r| r.id).collect();
    ensure!(
        last == newest,
        "--last 2 gave {last:?}, expected {newest:?}"
    );

    // The table: one header plus a row per flow, denied ones say so.
    let table = n2.meshctl(&["flows"])?;
    ensure!(
        table.lines().count() == all.len() + 1
            && table.starts_with("TIME")
            && table.contains("denied (shop/no-legacy-9090#0)"),
        "{table}"
    );
    for view in ["workloads", "services", "policies", "certs", "status"] {
        let json: serde_json::Value = serde_json::from_str(&n2.meshctl(&[view, "-o", "json"])?)?;
        ensure!(!json.is_null(), "meshctl {view} -o json is empty");
    }
    // Only enrolled pods have an identity (the unenrolled `l` has none).
    let workloads: serde_json::Value =
        serde_json::from_str(&n2.meshctl(&["workloads", "-o", "json"])?)?;
    let identity_of = |pod: &str| {
        workloads
            .as_array()
            .and_then(|all| all.iter().find(|w| w["pod"] == pod))
            .map(|w| w["identity"].clone())
    };
    ensure!(
        identity_of("legacy/l") == Some(serde_json::Value::Null)
            && identity_of("shop/a") == Some(FRONTEND.into()),
        "workloads: {workloads:#}"
    );
    let services = n2.meshctl(&["services"])?;
    ensure!(
        services.contains("shop/payments") && services.contains("80→8080"),
        "{services}"
    );
    Ok(())
}

/// `GET /metrics` from inside `node`'s namespace.
fn scrape(node: &Host) -> anyhow::Result<String> {
    let mut stream = in_netns(&node.netns_path(), || {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 15020)),
            Duration::from_secs(5),
        )
    })??;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_owned())
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("the exposition parses")?;
    Ok(scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum())
}

fn metrics_match() -> anyhow::Result<()> {
    let meshed = shop()?;
    let cluster = &meshed.cluster;
    let [a, b] = ["a", "b"].map(|p| cluster.pod(p).clone());
    let _server = serve(cluster, &b, "0.0.0.0:8080", 4000, 1)?;
    for seed in 0..3 {
        connect(cluster, &a, addr(&b, 8080), 1000 + seed, seed)?;
    }
    let value = metric;
    let labels = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("destination_workload", "b"),
        ("source_principal", FRONTEND),
        ("connection_security_policy", "mutual_tls"),
    ];
    let n2 = cluster.node("n2").clone();
    let mut text = String::new();
    eventually("the three connections in n2's metrics", || {
        text = scrape(&n2)?;
        Ok(value(&text, "istio_tcp_connections_closed_total", &labels)? == 3.0)
    })?;
    ensure!(
        value(&text, "istio_tcp_received_bytes_total", &labels)? == 3003.0
            && value(&text, "istio_tcp_sent_bytes_total", &labels)? == 12000.0
            && value(&text, "istio_tcp_connections_opened_total", &labels)? == 3.0,
        "byte counters do not match what the apps moved:\n{text}"
    );
    eventually("handshakes and certificate expiry reported", || {
        text = scrape(&n2)?;
        Ok(value(
            &text,
            "nodemesh_tls_handshakes_total",
            &[("role", "accepted")],
        )? >= 1.0
            && value(
                &text,
                "nodemesh_certificate_expiry_timestamp_seconds",
                &[("pod", "shop/b")],
            )? > 0.0)
    })?;
    ensure!(text.contains("nodemesh_build_info{version="), "{text}");

    // Through the Service, the destination side names it too (the source
    // tells it; the destination's own config confirms it), whichever
    // endpoint each connection went to.
    let b2 = cluster.pod("b2").clone();
    let _server2 = serve(cluster, &b2, "0.0.0.0:8080", 4000, 1)?;
    for seed in 0..4 {
        connect(
            cluster,
            &a,
            SocketAddr::new(IpAddr::from(VIP), 80),
            100,
            seed,
        )?;
    }
    let by_service = [
        ("reporter", "destination"),
        ("destination_service", "shop/payments"),
    ];
    let nodes = [cluster.node("n1").clone(), n2];
    eventually(
        "the four Service connections named at their destinations",
        || {
            let mut total = 0.0;
            for node in &nodes {
                total += value(
                    &scrape(node)?,
                    "istio_tcp_connections_closed_total",
                    &by_service,
                )?;
            }
            Ok(total == 4.0)
        },
    )?;
    Ok(())
}

fn ring_stays_bounded() -> anyhow::Result<()> {
    let (cluster, config_dir) = shop_pair()?;
    // Plain mode keeps this about the store, not TLS, and quick.
    let args = ["--flow-capacity".to_owned(), "500".to_owned()];
    let n1 = Agent::start_with(&cluster, "n1", &config_dir, &args)?;
    let _n2 = Agent::start_with(&cluster, "n2", &config_dir, &args)?;
    let (a, b) = (cluster.pod("a").clone(), cluster.pod("b").clone());
    let _server = serve(&cluster, &b, "0.0.0.0:8080", 100, 1)?;
    let rss = |agent: &Agent| status_kib(agent.process.pid(), "VmRSS");
    let mut churn = traffic_tool();
    let target = addr(&b, 8080).to_string();
    churn.args(["churn", "--count", "10000", "--to", &target]);
    let idle = rss(&n1)?;
    cluster.run(&a, churn, Duration::from_secs(300))?;
    eventually("10000 flows ended", || {
        Ok(n1
            .flow_records(&["--last", "1"])?
            .first()
            .is_some_and(|r| r.id >= 10_000))
    })?;
    let after = rss(&n1)?;
    let held = n1.flow_records(&[])?;
    ensure!(
        held.len() == 500,
        "the ring holds {} flows, not its 500",
        held.len()
    );
    eprintln!("    agent RSS idle {idle} KiB, after 10000 flows {after} KiB (ring of 500)");
    let n1_node = cluster.node("n1").clone();
    eventually("the ring's size in /metrics", || {
        let text = scrape(&n1_node)?;
        Ok(
            metric(&text, "nodemesh_flow_records", &[("state", "closed")])? == 500.0
                && metric(&text, "nodemesh_flow_records", &[("state", "open")])? == 0.0,
        )
    })?;
    ensure!(
        after < 64 * 1024,
        "agent RSS {after} KiB exceeds the documented 64 MiB bound"
    );
    Ok(())
}

fn stopped_agent() -> anyhow::Result<()> {
    let cluster = ClusterSpec::new().node("n1").pod("a", "n1").build()?;
    let config_dir = cluster.scratch_dir("config")?;
    MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .write(&cluster, &config_dir)?;
    let mut agent = Agent::start(&cluster, "n1", &config_dir)?;
    agent.meshctl(&["status"])?;

    // `meshctl … | head`: a reader that has gone away ends meshctl quietly
    // (SIGPIPE, as other tools), never with a panic about the failed print.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = std::process::Command::new(nodemesh_tests::mesh::workspace_binary("meshctl")?)
        .arg("--agent")
        .arg(agent.admin_socket())
        .arg("status")
        .stdout(writer)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("panicked") && stderr.trim().is_empty(),
        "meshctl writing into a closed pipe: {:?} {stderr}",
        out.status
    );
    // A user's error is its chain of causes, not a backtrace, even with
    // RUST_BACKTRACE set.
    let ca = cluster.scratch_dir("ca")?;
    let init = || {
        std::process::Command::new(nodemesh_tests::mesh::workspace_binary("mesh-agent")?)
            .args(["ca", "init", "--dir"])
            .arg(&ca)
            .env("RUST_BACKTRACE", "1")
            .output()
            .map_err(anyhow::Error::from)
    };
    ensure!(init()?.status.success(), "the first ca init");
    let again = init()?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success()
            && stderr.starts_with("error: ")
            && !stderr.contains("backtrace")
            && stderr.lines().count() == 1,
        "a refused ca init under RUST_BACKTRACE=1 printed: {stderr}"
    );
    agent.process.kill();
    let out = std::process::Command::new(nodemesh_tests::mesh::workspace_binary("meshctl")?)
        .arg("--agent")
        .arg(agent.admin_socket())
        .arg("flows")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("is mesh-agent running on this node"),
        "meshctl against a stopped agent: {:?} {stderr}",
        out.status
    );
    Ok(())
}
