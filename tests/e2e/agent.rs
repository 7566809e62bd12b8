//! Capture through real agents: two nodes, an agent on each, pods in an
//! enrolled namespace (`shop`) and an unenrolled one (`legacy`).
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use nodemesh_tests::{
    Cluster, ClusterSpec, Host,
    mesh::{Agent, DATAPLANE, MeshConfig, workspace_binary, write_atomically},
};

use crate::support::{
    MIB, assert_intact, connect, connect_parallel, connect_paused, finished, next_done, serve,
    trial,
};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "agent::outbound_cross_node_64mib_ipv4_ipv6_and_v4_mapped",
            outbound_cross_node,
        ),
        trial(
            "agent::inbound_from_unenrolled_client_keeps_client_ip",
            inbound_from_unenrolled,
        ),
        trial(
            "agent::unenrolled_loopback_and_agent_traffic_untouched",
            untouched,
        ),
        trial(
            "agent::enrolment_follows_yaml_at_runtime",
            enrolment_follows_yaml,
        ),
        trial(
            "agent::killed_agent_fails_closed_and_restart_adopts",
            fail_closed_and_restart,
        ),
        trial(
            "agent::two_hundred_concurrent_connections_intact",
            two_hundred_concurrent,
        ),
        trial(
            "agent::bad_objects_reported_valid_pods_served",
            bad_objects_reported,
        ),
        trial(
            "agent::unenrolment_keeps_open_connections",
            unenrolment_keeps_open_connections,
        ),
        trial(
            "agent::pod_outside_capture_cgroup_reported_loudly",
            misplaced_pod_reported,
        ),
    ]
}

/// a, c on n1; b, d on n2. a, b in `shop` (enrolled); c, d in `legacy`.
struct Mesh {
    cluster: Cluster,
    config: MeshConfig,
    config_dir: PathBuf,
    agents: Vec<Agent>,
}

impl Mesh {
    fn start() -> anyhow::Result<Self> {
        let cluster = ClusterSpec::new()
            .node("n1")
            .node("n2")
            .pod("a", "n1")
            .pod("c", "n1")
            .pod("b", "n2")
            .pod("d", "n2")
            .build()?;
        let config = MeshConfig::new()
            .namespace("shop", true)
            .namespace("legacy", false)
            .pod(cluster.pod("a"), "shop")
            .pod(cluster.pod("b"), "shop")
            .pod(cluster.pod("c"), "legacy")
            .pod(cluster.pod("d"), "legacy");
        let config_dir = cluster.scratch_dir("config")?;
        config.write(&cluster, &config_dir)?;
        let mut mesh = Self {
            cluster,
            config,
            config_dir,
            agents: Vec::new(),
        };
        for node in ["n1", "n2"] {
            let agent = Agent::start(&mesh.cluster, node, &mesh.config_dir)?;
            mesh.agents.push(agent);
        }
        Ok(mesh)
    }

    fn pod(&self, name: &str) -> &Host {
        self.cluster.pod(name)
    }

    fn agent(&self, node: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.node == node)
            .expect("agent per node")
    }

    /// Rewrites the YAML and waits until both agents enrol exactly `expect`.
    fn reconfigure(&mut self, config: MeshConfig, expect: &[&str]) -> anyhow::Result<()> {
        self.config = config;
        self.config.write(&self.cluster, &self.config_dir)?;
        let mut want: Vec<String> = expect.iter().map(|p| format!("shop/{p}")).collect();
        want.sort();
        for agent in &self.agents {
            agent.wait_status(&format!("enrolled pods {want:?}"), |_| {
                let mut got = agent.enrolled_pods().unwrap_or_default();
                got.sort();
                let mine: Vec<String> = want
                    .iter()
                    .filter(|p| self.node_of(p) == agent.node)
                    .cloned()
                    .collect();
                got == mine
            })?;
        }
        Ok(())
    }

    fn node_of(&self, pod: &str) -> String {
        let name = pod.rsplit('/').next().unwrap_or(pod);
        self.cluster.node_of(self.cluster.pod(name)).name.clone()
    }
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn outbound_cross_node() -> anyhow::Result<()> {
    let mesh = Mesh::start()?;
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let mut server = serve(&mesh.cluster, b, "[::]:7000", 64 * MIB, 2)?;
    // IPv4, IPv6, and an IPv6 socket to a v4-mapped address (what Java,
    // Node and many proxies do): connect6 must send it to the IPv4 listener
    // and sockops must hand over a v4-mapped tuple.
    let mapped = addr(b.ipv4.to_ipv6_mapped(), 7000);
    for (round, (target, client_ip, hook)) in [
        (addr(b.ipv4, 7000), IpAddr::from(a.ipv4), "connect4"),
        (addr(b.ipv6, 7000), IpAddr::from(a.ipv6), "connect6"),
        (mapped, IpAddr::from(a.ipv4), "connect6"),
    ]
    .into_iter()
    .enumerate()
    {
        let client = connect(&mesh.cluster, a, target, 64 * MIB, 1)?;
        let seen = next_done(&mut server)?;
        assert_intact(&client, &seen)?;
        ensure!(
            client.sent == 64 * MIB && client.received == 64 * MIB,
            "{client:?}"
        );
        ensure!(
            client.peer == target,
            "getpeername() shows {} instead of {target}",
            client.peer
        );
        ensure!(
            seen.peer.ip().to_canonical() == client_ip,
            "server saw {} instead of pod a's {client_ip}",
            seen.peer
        );
        let canonical = SocketAddr::new(target.ip().to_canonical(), target.port()).to_string();
        let n1 = mesh.agent("n1");
        let port = format!(":{}", client.local.port());
        let out = n1.wait_flow("outbound record of this connection", |f| {
            f.direction == "outbound" && f.src.ends_with(&port)
        })?;
        ensure!(
            out.pod == "shop/a"
                && out.orig_dst == canonical
                && out.sent == 64 * MIB
                && out.received == 64 * MIB,
            "outbound record {out:?}, expected destination {canonical}"
        );
        n1.process
            .wait_stderr_line(Duration::from_secs(5), "the connect log", |l| {
                l.contains("mesh_programs::connect")
                    && l.contains(&format!("{hook}: captured socket"))
            })?;
        let n2 = mesh.agent("n2");
        n2.wait_flow("inbound record of this connection", |_| {
            n2.flows()
                .iter()
                .filter(|f| f.direction == "inbound")
                .count()
                == round + 1
        })?;
        let inb = n2
            .flows()
            .into_iter()
            .filter(|f| f.direction == "inbound")
            .nth(round)
            .context("inbound record")?;
        let src: SocketAddr = inb.src.parse()?;
        ensure!(
            inb.pod == "shop/b"
                && inb.orig_dst == canonical
                && src.ip().to_canonical() == client_ip
                && inb.sent == 64 * MIB,
            "inbound record {inb:?}"
        );
    }
    Ok(())
}

fn inbound_from_unenrolled() -> anyhow::Result<()> {
    let mesh = Mesh::start()?;
    let (b, c) = (mesh.pod("b"), mesh.pod("c"));
    let mut server = serve(&mesh.cluster, b, "[::]:7000", MIB, 2)?;
    let target = addr(b.ipv4, 7000);
    let client = connect(&mesh.cluster, c, target, MIB, 1)?;
    let seen = next_done(&mut server)?;
    assert_intact(&client, &seen)?;
    ensure!(
        seen.peer.ip().to_canonical() == IpAddr::from(c.ipv4),
        "server saw {}",
        seen.peer
    );
    let inb = mesh.agent("n2").wait_flow("inbound from legacy/c", |f| {
        f.direction == "inbound" && f.orig_dst == target.to_string()
    })?;
    ensure!(inb.src.starts_with(&c.ipv4.to_string()), "{inb:?}");
    // The kernel side reported it too: an aya-log record from the sk_lookup
    // program and a ring-buffer capture event with the original destination.
    let agent = &mesh.agent("n2").process;
    agent.wait_stderr_line(Duration::from_secs(5), "sk_lookup's aya-log record", |l| {
        l.contains("mesh_programs::sk_lookup") && l.contains("steered a SYN for port 7000")
    })?;
    agent.wait_stderr_line(Duration::from_secs(5), "a capture event", |l| {
        l.contains("nodemesh::capture") && l.contains(&format!("\"orig_dst\":\"{target}\""))
    })?;
    ensure!(
        mesh.agent("n1").flows().is_empty(),
        "c is not enrolled, yet n1's agent recorded {:?}",
        mesh.agent("n1").flows()
    );
    mesh.agent("n2")
        .wait_status("capture proof for shop/b's inbound", |status| {
            status["pods"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["pod"] == "shop/b"))
                .is_some_and(|b| {
                    b["inbound"]["attached"] == true
                        && b["inbound"]["captured"].as_u64() >= Some(1)
                        && b["inbound"]["last_capture_unix_ms"].as_u64().is_some()
                })
        })?;
    Ok(())
}

fn untouched() -> anyhow::Result<()> {
    let mesh = Mesh::start()?;
    let (a, c, d) = (mesh.pod("a"), mesh.pod("c"), mesh.pod("d"));
    // Unenrolled → unenrolled, across nodes.
    let mut server_c = serve(&mesh.cluster, c, "[::]:7000", 1000, 2)?;
    let client = connect(&mesh.cluster, d, addr(c.ipv4, 7000), 1000, 1)?;
    assert_intact(&client, &next_done(&mut server_c)?)?;
    // Loopback inside an enrolled pod.
    let mut local = serve(&mesh.cluster, a, "127.0.0.1:9000", 1000, 2)?;
    let looped = connect(&mesh.cluster, a, addr([127, 0, 0, 1], 9000), 1000, 1)?;
    assert_intact(&looped, &next_done(&mut local)?)?;
    ensure!(
        looped.peer == addr([127, 0, 0, 1], 9000),
        "loopback was redirected: {looped:?}"
    );
    // An enrolled pod's outbound connection: the agent's own upstream
    // connection must not be captured again (it would loop and never finish).
    let mut server_d = serve(&mesh.cluster, d, "[::]:7000", 1000, 2)?;
    let meshed = connect(&mesh.cluster, a, addr(d.ipv4, 7000), 1000, 1)?;
    assert_intact(&meshed, &next_done(&mut server_d)?)?;
    // The agent logs a flow when its relay ends, which can be just after the
    // client has finished: wait for it before counting.
    let target = addr(d.ipv4, 7000).to_string();
    mesh.agent("n1")
        .wait_flow("a→d", |f| f.orig_dst == target)?;
    let flows = mesh.agent("n1").flows();
    ensure!(
        flows.len() == 1 && flows[0].orig_dst == addr(d.ipv4, 7000).to_string(),
        "n1 should have recorded exactly a→d once: {flows:?}"
    );
    ensure!(
        mesh.agent("n2").flows().is_empty(),
        "n2 recorded {:?}",
        mesh.agent("n2").flows()
    );
    mesh.agent("n1")
        .wait_status("loopback counted as skipped", |status| {
            let skipped_loopback = status["counters"]
                .as_array()
                .and_then(|c| {
                    c.iter()
                        .find(|c| c["hook"] == "connect4" && c["counter"] == "skipped_loopback")
                })
                .and_then(|c| c["value"].as_u64());
            skipped_loopback >= Some(1)
        })?;
    Ok(())
}

fn enrolment_follows_yaml() -> anyhow::Result<()> {
    let mut mesh = Mesh::start()?;
    let (a, b) = (mesh.pod("a").clone(), mesh.pod("b").clone());
    let target = addr(b.ipv4, 7000);
    let mut server = serve(&mesh.cluster, &b, "[::]:7000", 1000, 2)?;
    let outbound_flows = |mesh: &Mesh| {
        mesh.agent("n1")
            .flows()
            .into_iter()
            .filter(|f| f.direction == "outbound")
            .count()
    };

    connect(&mesh.cluster, &a, target, 1000, 1)?;
    next_done(&mut server)?;
    mesh.agent("n1")
        .wait_flow("first capture", |f| f.direction == "outbound")?;

    // Namespace label removed: both pods leave the mesh; traffic goes direct.
    let off = MeshConfig::new()
        .namespace("shop", false)
        .namespace("legacy", false)
        .pod(&a, "shop")
        .pod(&b, "shop");
    mesh.reconfigure(off, &[])?;
    let direct = connect(&mesh.cluster, &a, target, 1000, 1)?;
    assert_intact(&direct, &next_done(&mut server)?)?;
    ensure!(outbound_flows(&mesh) == 1, "captured after un-enrolment");

    // Back on: captured again.
    let on = MeshConfig::new()
        .namespace("shop", true)
        .pod(&a, "shop")
        .pod(&b, "shop");
    mesh.reconfigure(on, &["a", "b"])?;
    connect(&mesh.cluster, &a, target, 1000, 1)?;
    next_done(&mut server)?;
    mesh.agent("n1")
        .wait_flow("capture after re-enrolment", |_| outbound_flows(&mesh) == 2)?;

    // The pod opt-out label takes just that pod out.
    let opt_out = MeshConfig::new()
        .namespace("shop", true)
        .pod(&a, "shop")
        .pod(&b, "shop")
        .pod_label("a", DATAPLANE, "disabled");
    mesh.reconfigure(opt_out, &["b"])?;
    connect(&mesh.cluster, &a, target, 1000, 1)?;
    next_done(&mut server)?;
    ensure!(outbound_flows(&mesh) == 2, "opted-out pod a was captured");
    Ok(())
}

fn fail_closed_and_restart() -> anyhow::Result<()> {
    let mut mesh = Mesh::start()?;
    let (a, b) = (mesh.pod("a").clone(), mesh.pod("b").clone());
    let target = addr(b.ipv4, 7000);
    let mut server = serve(&mesh.cluster, &b, "[::]:7000", 1000, 2)?;
    connect(&mesh.cluster, &a, target, 1000, 1)?;
    next_done(&mut server)?;

    let index = mesh
        .agents
        .iter()
        .position(|g| g.node == "n1")
        .expect("n1 agent");
    let mut dead = mesh.agents.remove(index);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead.process.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    dead.process.wait_output(Duration::from_secs(10))?;
    let refused = connect(&mesh.cluster, &a, target, 1000, 1);
    let error = refused
        .err()
        .context("with its agent dead, pod a's connection went through")?;
    ensure!(
        error.to_string().contains("refused"),
        "expected a refusal, got: {error:#}"
    );
    // Inbound fails closed too: the pinned sk_lookup program fails the socket
    // lookup for enrolled pod a, so the stack refuses the SYN even though an
    // app listens on that port — nothing is delivered around the mesh.
    let mut server_a = serve(&mesh.cluster, &a, "[::]:7001", 10, 2)?;
    let c = mesh.pod("c").clone();
    let bypass = connect(&mesh.cluster, &c, addr(a.ipv4, 7001), 10, 1);
    let error = bypass
        .err()
        .context("with its agent dead, pod a accepted a connection directly")?;
    ensure!(
        error.to_string().contains("refused"),
        "expected a refused SYN, got: {error:#}"
    );
    ensure!(
        server_a.next_line(Duration::from_millis(300)).is_err(),
        "the app in pod a was reached around the dead agent"
    );

    let agent = Agent::start(&mesh.cluster, "n1", &mesh.config_dir)?;
    agent
        .process
        .wait_stderr_line(Duration::from_secs(5), "adoption log", |l| {
            l.contains("adopted capture programs")
        })?;
    mesh.agents.push(agent);
    let again = connect(&mesh.cluster, &a, target, 1000, 1)?;
    assert_intact(&again, &next_done(&mut server)?)?;
    mesh.agent("n1").wait_flow("capture after restart", |f| {
        f.orig_dst == target.to_string()
    })?;
    Ok(())
}

fn two_hundred_concurrent() -> anyhow::Result<()> {
    let mesh = Mesh::start()?;
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let server = serve(&mesh.cluster, b, "[::]:7000", 256 * 1024, 2)?;
    let results = connect_parallel(&mesh.cluster, a, addr(b.ipv4, 7000), 256 * 1024, 1, 200)?;
    ensure!(
        results.len() == 200,
        "{} reports for 200 connections",
        results.len()
    );
    let mut server = server;
    for result in results {
        let client = result?;
        ensure!(
            client.sent == 256 * 1024 && client.received == 256 * 1024,
            "{client:?}"
        );
        let seen = next_done(&mut server)?;
        // Same seeds on every connection, so every pair must match.
        assert_intact(&client, &seen)?;
    }
    mesh.agent("n1").wait_flow("200 outbound records", |_| {
        mesh.agent("n1")
            .flows()
            .iter()
            .filter(|f| f.direction == "outbound")
            .count()
            == 200
    })?;
    Ok(())
}

fn bad_objects_reported() -> anyhow::Result<()> {
    let mesh = Mesh::start()?;
    let bad = "\
---
apiVersion: v1
kind: Pod
metadata:
  name: broken-ip
  namespace: shop
  annotations:
    nodemesh.io/netns: /run/netns/does-not-exist
    nodemesh.io/cgroup: /sys/fs/cgroup
spec:
  nodeName: n1
  containers: [{name: app, image: app}]
status:
  podIP: 10.1.0.300
---
apiVersion: v1
kind: Gadget
metadata:
  name: what
";
    write_atomically(&mesh.config_dir.join("zz-bad.yaml"), bad)?;
    let status = mesh.agent("n1").wait_status("config errors", |s| {
        s["config_errors"].as_array().is_some_and(|e| e.len() >= 2)
    })?;
    let errors: Vec<&str> = status["config_errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .collect();
    ensure!(
        errors.iter().any(|e| e.contains("zz-bad.yaml")
            && e.contains("broken-ip")
            && e.contains("10.1.0.300")),
        "no precise error for the bad IP: {errors:#?}"
    );
    ensure!(
        errors
            .iter()
            .any(|e| e.contains("zz-bad.yaml") && e.contains("Gadget")),
        "no error for the unknown kind: {errors:#?}"
    );
    // The valid pods are still served.
    let (a, b) = (mesh.pod("a"), mesh.pod("b"));
    let mut server = serve(&mesh.cluster, b, "[::]:7000", 1000, 2)?;
    let target = addr(b.ipv4, 7000);
    assert_intact(
        &connect(&mesh.cluster, a, target, 1000, 1)?,
        &next_done(&mut server)?,
    )?;
    mesh.agent("n1")
        .wait_flow("a still captured", |f| f.orig_dst == target.to_string())?;
    Ok(())
}

fn misplaced_pod_reported() -> anyhow::Result<()> {
    let mesh = Mesh::start()?;
    let a = mesh.pod("a");
    // Claim that pod a lives in a cgroup outside the capture cgroup (the
    // node's): its outbound traffic would bypass the mesh, and the agent must
    // say so rather than count it as meshed.
    let pods = mesh.config_dir.join("pods.yaml");
    let outside = mesh.cluster.node("n1").cgroup.display().to_string();
    let yaml = std::fs::read_to_string(&pods)?.replace(&a.cgroup.display().to_string(), &outside);
    write_atomically(&pods, &yaml)?;
    let agent = mesh.agent("n1");
    agent.wait_status("a problem for shop/a", |s| {
        s["pods"].as_array().into_iter().flatten().any(|p| {
            p["pod"] == "shop/a"
                && p["outbound"]["attached"] == false
                && p["problems"]
                    .to_string()
                    .contains("outside the capture cgroup")
        })
    })?;
    agent
        .process
        .wait_stderr_line(Duration::from_secs(5), "a warning", |l| {
            l.contains("WARN") && l.contains("capture not in place") && l.contains("shop/a")
        })?;
    let out = std::process::Command::new(workspace_binary("meshctl")?)
        .arg("--agent")
        .arg(agent.run_dir.join("admin.sock"))
        .arg("status")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "meshctl status exited 0 with a broken pod:\n{stdout}"
    );
    ensure!(
        stdout.contains("shop/a")
            && stdout.contains("DETACHED")
            && stdout.contains("outside the capture cgroup"),
        "meshctl status does not show the problem:\n{stdout}"
    );
    Ok(())
}

fn unenrolment_keeps_open_connections() -> anyhow::Result<()> {
    let mut mesh = Mesh::start()?;
    let (a, b) = (mesh.pod("a").clone(), mesh.pod("b").clone());
    let target = addr(b.ipv4, 7000);
    let mut server = serve(&mesh.cluster, &b, "[::]:7000", 4 * MIB, 2)?;
    let mut client = connect_paused(&mesh.cluster, &a, target, 4 * MIB, MIB, 2000)?;
    // Take the whole namespace out of the mesh while the connection is open.
    let off = MeshConfig::new()
        .namespace("shop", false)
        .pod(&a, "shop")
        .pod(&b, "shop");
    mesh.reconfigure(off, &[])?;
    let done = finished(&mut client)?.context("the open connection was cut by un-enrolment")?;
    assert_intact(&done, &next_done(&mut server)?)?;
    let flow = mesh
        .agent("n1")
        .wait_flow("the straddling connection", |f| {
            f.orig_dst == target.to_string()
        })?;
    ensure!(
        flow.sent == 4 * MIB && flow.received == 4 * MIB && flow.end.as_deref() == Some("closed"),
        "{flow:?}"
    );
    Ok(())
}
