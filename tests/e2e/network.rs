//! The simulated network itself: pods on different nodes reach each other
//! over the underlay, with nothing lost or altered.
use std::net::{IpAddr, SocketAddr};

use libtest_mimic::Trial;
use nodemesh_tests::ClusterSpec;

use crate::support::{MIB, assert_intact, connect, next_done, serve, trial};

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "network::cross_node_64mib_both_ways_ipv4_and_ipv6",
        cross_node_64mib_both_ways,
    )]
}

fn cross_node_64mib_both_ways() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().build()?;
    let (a, b) = (cluster.pod("a"), cluster.pod("b"));
    let mut server = serve(&cluster, b, "[::]:7000", 64 * MIB, 2)?;

    for server_ip in [IpAddr::V4(b.ipv4), IpAddr::V6(b.ipv6)] {
        let to = SocketAddr::new(server_ip, 7000);
        let client = connect(&cluster, a, to, 64 * MIB, 1)?;
        let seen = next_done(&mut server)?;
        assert_intact(&client, &seen)?;
        anyhow::ensure!(
            client.sent == 64 * MIB && client.received == 64 * MIB,
            "sizes: {client:?}"
        );
        anyhow::ensure!(
            client.peer == to,
            "client's peer is {}, expected {to}",
            client.peer
        );
        let client_ip = if server_ip.is_ipv4() {
            IpAddr::V4(a.ipv4)
        } else {
            IpAddr::V6(a.ipv6)
        };
        anyhow::ensure!(
            seen.peer.ip().to_canonical() == client_ip,
            "server saw peer {}, expected pod a's {client_ip} (routed, not NATed)",
            seen.peer
        );
    }
    Ok(())
}
