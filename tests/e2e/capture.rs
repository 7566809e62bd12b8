//! The agent's embedded eBPF object in the kernel: `cgroup/connect4`
//! attached to one pod's cgroup captures that pod's connects and no one
//! else's.
use std::{net::SocketAddr, time::Duration};

use anyhow::ensure;
use libtest_mimic::Trial;
use mesh_agent::capture::Capture;
use mesh_common::{Counter, Hook, ports};
use nodemesh_tests::ClusterSpec;

use crate::support::{assert_intact, connect, next_done, serve, trial};

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "capture::connect4_captures_only_the_attached_pod",
        connect4_captures_only_the_attached_pod,
    )]
}

fn connect4_captures_only_the_attached_pod() -> anyhow::Result<()> {
    let cluster = ClusterSpec::new()
        .node("n1")
        .node("n2")
        .pod("a", "n1")
        .pod("c", "n1")
        .pod("b", "n2")
        .build()?;
    let (a, b, c) = (cluster.pod("a"), cluster.pod("b"), cluster.pod("c"));

    let mut capture = Capture::load()?;
    capture.attach_cgroup(&a.cgroup)?;
    // Both pods are enrolled, so the only difference between them is where
    // the program is attached.
    capture.enrol(cluster.netns_cookie(a)?)?;
    capture.enrol(cluster.netns_cookie(c)?)?;

    let mut server = serve(&cluster, b, "[::]:7000", 1000, 2)?;
    // Stands in for the agent's outbound listener inside pod a.
    let listener = format!("127.0.0.1:{}", ports::OUTBOUND);
    let mut agent = serve(&cluster, a, &listener, 100, 9)?;
    let target = SocketAddr::new(b.ipv4.into(), 7000);

    // Pod a: captured. The connection lands on a's local 15001 listener and
    // the map remembers where it was really going.
    let from_a = connect(&cluster, a, target, 5000, 1)?;
    ensure!(
        from_a.peer == listener.parse()?,
        "pod a's connect was not redirected: peer {}",
        from_a.peer
    );
    assert_intact(&from_a, &next_done(&mut agent)?)?;
    let originals = capture.original_destinations()?;
    ensure!(
        originals
            .iter()
            .any(|(_, o)| o.socket_addr() == target && o.hook == Hook::Connect4 as u32),
        "no original destination {target} recorded; map holds {originals:?}"
    );
    let counters = capture.counters()?;
    ensure!(
        counters.get(Hook::Connect4, Counter::Captured) == 1,
        "counters after pod a: {counters:?}"
    );

    // Pod c: same node, enrolled, but its cgroup has no program: untouched.
    let from_c = connect(&cluster, c, target, 5000, 1)?;
    ensure!(
        from_c.peer == target,
        "pod c was redirected to {}",
        from_c.peer
    );
    let seen = next_done(&mut server)?;
    assert_intact(&from_c, &seen)?;
    ensure!(
        seen.peer.ip().to_canonical() == c.ipv4,
        "server saw {} instead of pod c",
        seen.peer
    );
    ensure!(
        capture.counters()? == counters,
        "pod c's connect moved the counters: {:?}",
        capture.counters()?
    );
    ensure!(
        capture.original_destinations()?.len() == originals.len(),
        "pod c's connect added an original-destination entry"
    );
    // And pod a's connection never reached the server directly.
    ensure!(
        server.next_line(Duration::from_millis(300)).is_err(),
        "the server received a connection that should have been captured"
    );
    Ok(())
}
