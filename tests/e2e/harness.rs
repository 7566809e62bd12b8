//! The harness keeps its promises: processes land where they should, the
//! cluster has no way out, and the leak check catches a skipped teardown.
use std::{os::unix::fs::MetadataExt as _, process::Command};

use anyhow::ensure;
use libtest_mimic::Trial;
use mesh_agent::capture::cgroup::cgroup2_mount;
use nodemesh_tests::{ClusterSpec, cluster::ip, leaks};

use crate::support::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "harness::spawned_process_is_in_pod_netns_and_cgroup",
            spawned_process_is_in_pod_netns_and_cgroup,
        ),
        trial(
            "harness::cluster_has_no_route_out",
            cluster_has_no_route_out,
        ),
        trial(
            "harness::leak_check_detects_skipped_teardown",
            leak_check_detects_skipped_teardown,
        ),
    ]
}

fn spawned_process_is_in_pod_netns_and_cgroup() -> anyhow::Result<()> {
    let cluster = ClusterSpec::new().node("n1").pod("a", "n1").build()?;
    let a = cluster.pod("a");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    let child = cluster.spawn(a, sleeper)?;

    let proc_netns = std::fs::metadata(format!("/proc/{}/ns/net", child.pid()))?.ino();
    let pod_netns = std::fs::metadata(a.netns_path())?.ino();
    ensure!(
        proc_netns == pod_netns,
        "process is not in pod a's network namespace"
    );

    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.pid()))?;
    let want = a.cgroup.strip_prefix(cgroup2_mount()?)?;
    let line = cgroup
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_default();
    ensure!(
        line == format!("0::/{}", want.display()),
        "process cgroup is {line:?}, expected /{}",
        want.display()
    );
    Ok(())
}

fn cluster_has_no_route_out() -> anyhow::Result<()> {
    let cluster = ClusterSpec::new()
        .node("n1")
        .node("n2")
        .pod("a", "n1")
        .build()?;
    // A route lookup sends nothing. 192.0.2.1 (TEST-NET-1) stands for "any
    // outside address": nodes, the end of every pod's default route, must
    // have no route to it.
    for node in ["n1", "n2"] {
        let ns = &cluster.node(node).netns;
        let lookup = ip(&["-n", ns, "route", "get", "192.0.2.1"]);
        ensure!(lookup.is_err(), "node {node} has a route out: {lookup:?}");
        let lookup6 = ip(&["-n", ns, "-6", "route", "get", "2001:db8::1"]);
        ensure!(
            lookup6.is_err(),
            "node {node} has an IPv6 route out: {lookup6:?}"
        );
    }
    // And no interface leads to the machine's own namespace: every link in
    // every namespace is ours (loopback, eth0, bridges, node/pod veth ports).
    for ns in leaks::find(cluster.prefix())?.namespaces {
        let out = Command::new("ip")
            .args(["-n", &ns, "-o", "link", "show"])
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            let name = name.split('@').next().unwrap_or_default();
            let ours = matches!(name, "lo" | "eth0" | "br0")
                || (name.len() > 1 && name[1..].chars().all(|c| c.is_ascii_digit()));
            ensure!(ours, "unexpected interface {name:?} in {ns}");
        }
    }
    Ok(())
}

fn leak_check_detects_skipped_teardown() -> anyhow::Result<()> {
    let cluster = ClusterSpec::new().node("n1").pod("a", "n1").build()?;
    let prefix = cluster.prefix().to_owned();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    std::mem::forget(cluster.spawn(cluster.pod("a"), sleeper)?);
    // Deliberately skip teardown.
    std::mem::forget(cluster);

    let left = leaks::find(&prefix)?;
    let found = (left.namespaces.len(), left.cgroups.len());
    // Clean up before asserting, so a failure here cannot leak either.
    leaks::sweep(&left)?;
    ensure!(
        found == (3, 1),
        "expected 3 namespaces (underlay, node, pod) and 1 cgroup tree, found {left}"
    );
    let after = leaks::find(&prefix)?;
    ensure!(after.is_empty(), "sweep left {after}");
    Ok(())
}
