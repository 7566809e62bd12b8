//! The HBONE tunnel through real agents with identities from a real CA:
//! bytes intact and encrypted on the node-to-node link, client addresses
//! preserved, one pooled tunnel for many connections, rotation under load.
use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use nodemesh_tests::{ClusterSpec, mesh::MeshConfig, traffic::marker};

use crate::support::{
    MIB, Meshed, Source, assert_all_intact, assert_intact, connect, connect_parallel,
    connect_paused, finished, next_done, serve, trial, tunnel_counter,
};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "tunnel::cross_node_64mib_encrypted_on_the_wire_with_client_ip",
            cross_node_encrypted,
        ),
        trial(
            "tunnel::hundred_concurrent_connections_share_the_pooled_tunnels_and_same_node",
            hundred_connections_one_tunnel,
        ),
        trial(
            "tunnel::eight_busy_streams_spread_over_pooled_connections_64mib_both_ways",
            busy_streams_spread,
        ),
        trial(
            "tunnel::rotation_during_a_long_transfer",
            rotation_during_long_transfer,
        ),
        trial(
            "tunnel::a_closed_port_is_refused_at_once_same_node_cross_node_and_ipv6",
            closed_port_refused,
        ),
    ]
}

/// The identity every pod of `shop` gets with the default service account.
pub const SHOP_DEFAULT: &str = "spiffe://cluster.local/ns/shop/sa/default";

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// How often `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// The frames crossing the node-to-node link while `traffic` runs.
fn record_link(
    meshed: &Meshed,
    name: &str,
    traffic: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let pcap = meshed.cluster.scratch_dir("pcap")?.join(name);
    let recorder = meshed.cluster.record_underlay(&pcap)?;
    traffic()?;
    // Let the last frames (the closing handshakes) reach the recorder.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let summary = recorder.interrupt(std::time::Duration::from_secs(10))?;
    let count = |what: &str| {
        summary
            .lines()
            .find_map(|l| l.strip_suffix(what)?.trim().parse::<u64>().ok())
    };
    ensure!(
        count("packets dropped by kernel") == Some(0)
            && count("packets captured") == count("packets received by filter"),
        "the recording lost packets, so it proves nothing: {summary}"
    );
    Ok(std::fs::read(&pcap)?)
}

fn cross_node_encrypted() -> anyhow::Result<()> {
    // a → b is meshed; c → d, the same path between the same nodes, is not.
    let cluster = ClusterSpec::cross_node_pair()
        .pod("c", "n1")
        .pod("d", "n2")
        .build()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .namespace("legacy", false)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .pod(cluster.pod("c"), "legacy")
        .pod(cluster.pod("d"), "legacy");
    let meshed = Meshed::start(cluster, config, 3600)?;
    let cluster = &meshed.cluster;
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|p| cluster.pod(p).clone());
    let (client_seed, server_seed) = (5, 11);
    let markers = [marker(client_seed, 32), marker(server_seed, 32)];
    let mut servers = Vec::new();
    for host in [&b, &d] {
        servers.push(serve(cluster, host, "0.0.0.0:8080", MIB, server_seed)?);
    }

    let plain = record_link(&meshed, "plain.pcap", || {
        connect(cluster, &c, addr(d.ipv4, 8080), MIB, client_seed).map(drop)
    })?;
    for (direction, m) in ["client→server", "server→client"].iter().zip(&markers) {
        ensure!(
            occurrences(&plain, m) >= 1,
            "control: the unmeshed {direction} marker is not on the wire, so the recording \
             cannot prove anything"
        );
    }
    let meshed_wire = record_link(&meshed, "mesh.pcap", || {
        connect(cluster, &a, addr(b.ipv4, 8080), MIB, client_seed).map(drop)
    })?;
    ensure!(
        meshed_wire.len() > 2 * MIB as usize,
        "the meshed exchange (2 MiB) is not on the recording: {} bytes",
        meshed_wire.len()
    );
    for (direction, m) in ["client→server", "server→client"].iter().zip(&markers) {
        ensure!(
            occurrences(&meshed_wire, m) == 0,
            "the {direction} plaintext marker crossed the link through the mesh"
        );
    }

    // 64 MiB both ways, intact, and the app sees the client pod's address.
    let mut bulk_mesh = serve(cluster, &b, "0.0.0.0:8081", 64 * MIB, 13)?;
    let mut bulk_direct = serve(cluster, &d, "0.0.0.0:8081", 64 * MIB, 13)?;
    let started = Instant::now();
    let client = connect(cluster, &a, addr(b.ipv4, 8081), 64 * MIB, 17)?;
    let mesh_time = started.elapsed();
    let server = next_done(&mut bulk_mesh)?;
    assert_intact(&client, &server)?;
    ensure!(
        server.peer.ip() == IpAddr::from(a.ipv4),
        "the app saw {} as its peer, not the client pod {}",
        server.peer,
        a.ipv4
    );
    let started = Instant::now();
    let direct = connect(cluster, &c, addr(d.ipv4, 8081), 64 * MIB, 17)?;
    let direct_time = started.elapsed();
    assert_intact(&direct, &next_done(&mut bulk_direct)?)?;
    let rate = |t: std::time::Duration| 128.0 / t.as_secs_f64();
    eprintln!(
        "    128 MiB exchanged cross-node: direct {:.0} MiB/s, mesh {:.0} MiB/s (debug build)",
        rate(direct_time),
        rate(mesh_time)
    );

    let target = addr(b.ipv4, 8081).to_string();
    let inbound = meshed.agent("n2").wait_flow("the bulk inbound flow", |f| {
        f.direction == "inbound" && f.orig_dst == target
    })?;
    ensure!(
        inbound.path == "tunnel"
            && inbound.peer_identity.as_deref() == Some(SHOP_DEFAULT)
            && inbound.decision.as_deref() == Some("allow")
            && inbound.sent == 64 * MIB
            && inbound.received == 64 * MIB
            && inbound.end.as_deref() == Some("closed"),
        "{inbound:?}"
    );
    let outbound = meshed
        .agent("n1")
        .wait_flow("the bulk outbound flow", |f| {
            f.direction == "outbound" && f.orig_dst == target
        })?;
    ensure!(
        outbound.path == "tunnel"
            && outbound.source_identity.as_deref() == Some(SHOP_DEFAULT)
            && outbound.peer_identity.as_deref() == Some(SHOP_DEFAULT)
            && outbound.sent == 64 * MIB
            && outbound.received == 64 * MIB,
        "{outbound:?}"
    );
    let direct_target = addr(d.ipv4, 8081).to_string();
    ensure!(
        !meshed
            .agent("n1")
            .flows()
            .iter()
            .any(|f| f.orig_dst == direct_target),
        "the unenrolled pod's connection was captured"
    );
    Ok(())
}

fn hundred_connections_one_tunnel() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().pod("a2", "n1").build()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("a2"), "shop")
        .pod(cluster.pod("b"), "shop")
        .service_account("b", "payments");
    let meshed = Meshed::start(cluster, config, 3600)?;
    let cluster = &meshed.cluster;
    let [a, a2, b] = ["a", "a2", "b"].map(|p| cluster.pod(p).clone());
    let (n1, n2) = (meshed.agent("n1"), meshed.agent("n2"));
    let mut server = serve(cluster, &b, "0.0.0.0:8080", 64 * 1024, 3)?;

    let results = connect_parallel(cluster, &a, addr(b.ipv4, 8080), 64 * 1024, 4, 100)?;
    assert_all_intact(&mut server, results, 100)?;
    let (dialled, accepted) = (
        handshakes(n1, "handshakes_dialled")?,
        handshakes(n2, "handshakes_accepted")?,
    );
    let bound = POOL_PER_DESTINATION * workers(n1)?;
    ensure!(
        dialled == accepted && dialled <= bound,
        "100 concurrent connections took {dialled} TLS handshakes on n1 and {accepted} on n2, \
         not at most the pool's {bound}"
    );

    // Same node: a2 → a never leaves n1, and still carries identities.
    let mut local = serve(cluster, &a, "0.0.0.0:9000", 4096, 8)?;
    let client = connect(cluster, &a2, addr(a.ipv4, 9000), 4096, 9)?;
    assert_intact(&client, &next_done(&mut local)?)?;
    let target = addr(a.ipv4, 9000).to_string();
    let flow = n1.wait_flow("the same-node inbound flow", |f| {
        f.direction == "inbound" && f.orig_dst == target
    })?;
    ensure!(
        flow.path == "same_node"
            && flow.peer_identity.as_deref() == Some(SHOP_DEFAULT)
            && flow.src.starts_with(&a2.ipv4.to_string()),
        "{flow:?}"
    );
    Ok(())
}

/// The agents' default `--tunnel-connections-per-destination`.
const POOL_PER_DESTINATION: u64 = 4;
/// A `--tunnel-streams-per-connection` that eight streams exceed however
/// many data-plane threads share them out (the default is 100).
const STREAMS_PER_CONNECTION: u64 = 2;

/// The agent's data-plane threads, each with its own pool.
fn workers(agent: &nodemesh_tests::mesh::Agent) -> anyhow::Result<u64> {
    tunnel_counter(agent, "workers")
}

/// Handshakes an agent's status counts (`handshakes_dialled`, …), once the
/// first has shown (the status is refreshed every 2 s).
fn handshakes(agent: &nodemesh_tests::mesh::Agent, counter: &str) -> anyhow::Result<u64> {
    agent.wait_status(&format!("tunnel.{counter} ≥ 1"), |s| {
        s["tunnel"][counter].as_u64() >= Some(1)
    })?;
    tunnel_counter(agent, counter)
}

/// Eight long streams at once from one pod to another: more than one
/// pooled connection may carry, so they spread over several, each byte
/// intact and every record naming both identities.
fn busy_streams_spread() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().build()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .service_account("b", "payments");
    let cap = [
        "--tunnel-streams-per-connection".to_owned(),
        STREAMS_PER_CONNECTION.to_string(),
    ];
    let meshed = Meshed::start_with(Source::Dir, cluster, config, 3600, &cap)?;
    let cluster = &meshed.cluster;
    let [a, b] = ["a", "b"].map(|p| cluster.pod(p).clone());
    let (n1, n2) = (meshed.agent("n1"), meshed.agent("n2"));
    const STREAMS: u32 = 8;
    let each = 8 * MIB;
    let mut server = serve(cluster, &b, "0.0.0.0:8080", each, 5)?;
    let results = connect_parallel(cluster, &a, addr(b.ipv4, 8080), each, 6, STREAMS)?;
    assert_all_intact(&mut server, results, STREAMS as usize)?;

    // Each data-plane thread keeps its own pool: the streams are shared out
    // among them, then spread within each.
    let bound = POOL_PER_DESTINATION * workers(n1)?;
    let dialled = handshakes(n1, "handshakes_dialled")?;
    ensure!(
        (2..=bound).contains(&dialled) && handshakes(n2, "handshakes_accepted")? == dialled,
        "{STREAMS} concurrent streams at {STREAMS_PER_CONNECTION} per connection took {dialled} \
         connections, not 2 to {bound}"
    );
    let status = n1.wait_status("the pooled connections", |s| {
        s["tunnel"]["pooled_connections"].as_u64() == Some(dialled)
    })?;
    ensure!(
        status["tunnel"]["spread"]["streams_per_connection"] == STREAMS_PER_CONNECTION,
        "the status does not show the pool's policy: {}",
        status["tunnel"]
    );

    let target = addr(b.ipv4, 8080).to_string();
    let payments = "spiffe://cluster.local/ns/shop/sa/payments";
    for (agent, direction, peer) in [(n1, "outbound", payments), (n2, "inbound", SHOP_DEFAULT)] {
        let records = agent.wait_flows("every stream's record", STREAMS as usize, |f| {
            f.direction == direction && f.orig_dst == target && f.end.is_some()
        })?;
        for flow in &records {
            ensure!(
                flow.path == "tunnel"
                    && flow.peer_identity.as_deref() == Some(peer)
                    && (direction == "inbound"
                        || flow.source_identity.as_deref() == Some(SHOP_DEFAULT))
                    && flow.sent == each
                    && flow.received == each,
                "{flow:?}"
            );
        }
    }
    Ok(())
}

fn rotation_during_long_transfer() -> anyhow::Result<()> {
    // 4 s certificates: renewed every ~2 s, expired long before the end.
    let meshed = Meshed::shop_pair(4)?;
    let cluster = &meshed.cluster;
    let (a, b) = (cluster.pod("a").clone(), cluster.pod("b").clone());
    let mut server = serve(cluster, &b, "0.0.0.0:8080", 8 * MIB, 21)?;
    let mut client = connect_paused(cluster, &a, addr(b.ipv4, 8080), 8 * MIB, 2 * MIB, 7000)?;
    let issued = |node: &str, pod: &str| -> anyhow::Result<u64> {
        let status = meshed.agent(node).status()?;
        Ok(status["certs"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["pod"] == pod))
            .and_then(|c| c["issued"].as_u64())
            .unwrap_or(0))
    };
    let before = (issued("n1", "shop/a")?, issued("n2", "shop/b")?);
    let done = finished(&mut client)?.context("the transfer broke across rotation")?;
    assert_intact(&done, &next_done(&mut server)?)?;
    let after = (issued("n1", "shop/a")?, issued("n2", "shop/b")?);
    ensure!(
        after.0 >= before.0 + 2 && after.1 >= before.1 + 2,
        "certificates were not rotated during the transfer: issued {before:?} before, {after:?} after"
    );
    // New connections after the first certificates expired still work, on
    // a new tunnel: the pooled one retired with the certificate it used.
    let again = connect(cluster, &a, addr(b.ipv4, 8080), MIB, 22)?;
    assert_intact(&again, &next_done(&mut server)?)?;
    meshed.agent("n1").wait_status(
        "a second tunnel dialled with the renewed certificate",
        |s| s["tunnel"]["handshakes_dialled"].as_u64() >= Some(2),
    )?;
    Ok(())
}

/// Nothing listens on port 9 of `b` (n2) or `a2` (n1): the app's `RST` must
/// reach the delivering agent, so the client is reset as soon as the
/// destination refuses — the delivery connect must not wait for its timeout
/// because the `RST`, sent to the client's address, left the pod instead.
fn closed_port_refused() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().pod("a2", "n1").build()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("a2"), "shop")
        .pod(cluster.pod("b"), "shop");
    let meshed = Meshed::start(cluster, config, 3600)?;
    let cluster = &meshed.cluster;
    let [a, a2, b] = ["a", "a2", "b"].map(|p| cluster.pod(p).clone());
    let cases = [
        ("cross-node", addr(b.ipv4, 9), &meshed.agents[1]),
        ("same-node", addr(a2.ipv4, 9), &meshed.agents[0]),
        ("cross-node IPv6", addr(b.ipv6, 9), &meshed.agents[1]),
    ];
    for (what, to, destination) in cases {
        let outcome = connect(cluster, &a, to, 100, 3);
        ensure!(
            outcome.is_err(),
            "{what}: a connection to closed port {to} was answered: {outcome:?}"
        );
        let port = to.port().to_string();
        let ip = to.ip().to_string();
        let records = destination.flow_records(&["--to-ip", &ip, "--port", &port])?;
        let delivery = records
            .iter()
            .find(|r| r.error.is_some())
            .with_context(|| format!("{what}: no failed flow to {to}: {records:#?}"))?;
        let error = delivery.error.as_deref().unwrap_or_default();
        ensure!(
            error.contains("refused") && !error.contains("timed out"),
            "{what}: the destination must see the app's refusal, not a timeout: {error}"
        );
    }
    Ok(())
}
