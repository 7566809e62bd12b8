//! `meshctl check`: the pre-flight passes on this machine (root, BPF) and
//! names what is missing when something is; the post-install check asks two
//! real agents and wants one real captured connection on each node.
use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::{
    admin::check::{Check, Report},
    capture::object,
};
use nodemesh_tests::{cluster::suite_prefix, mesh::workspace_binary};

use crate::support::{Meshed, connect, serve, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "check::preflight_passes_here_and_names_what_is_missing",
            preflight,
        ),
        trial(
            "check::post_install_fails_per_node_until_a_real_connection_then_passes",
            post_install,
        ),
    ]
}

/// Runs `program args…`; returns its exit code and stdout.
fn run<I, S>(mut cmd: Command, args: I) -> anyhow::Result<(i32, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = cmd.args(args).output()?;
    let code = out.status.code().context("killed by a signal")?;
    Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn meshctl() -> anyhow::Result<Command> {
    Ok(Command::new(workspace_binary("meshctl")?))
}

/// `meshctl <args…> -o json`: the exit code and the report.
fn check_json<S: AsRef<OsStr>>(cmd: Command, args: &[S]) -> anyhow::Result<(i32, Report)> {
    let mut args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    args.extend([OsStr::new("-o"), OsStr::new("json")]);
    let (code, out) = run(cmd, args)?;
    let report = serde_json::from_str(&out).with_context(|| format!("meshctl said: {out}"))?;
    Ok((code, report))
}

fn names(checks: &[&Check]) -> Vec<String> {
    checks.iter().map(|c| c.check.clone()).collect()
}

fn preflight() -> anyhow::Result<()> {
    // Only named, never created: the check loads into a scratch directory
    // beside it, whose name starts with this one (so the suite's leak check
    // would catch a leftover), and removes it.
    let name = format!("{}preflight", suite_prefix());
    let dir = Path::new("/sys/fs/bpf").join(&name);
    let args = [
        OsStr::new("check"),
        OsStr::new("--bpffs-dir"),
        dir.as_os_str(),
    ];

    let (code, report) = check_json(meshctl()?, &args)?;
    let all: Vec<&Check> = report.checks.iter().collect();
    ensure!(
        code == 0 && report.ok && all.iter().all(|c| c.ok && c.fix.is_none()),
        "the pre-flight fails on this machine (root, with BPF): {report:#?}"
    );
    ensure!(
        names(&all) == ["kernel", "cgroup v2", "bpffs", "capabilities", "eBPF"],
        "{report:#?}"
    );
    let programs = &all[4].detail;
    ensure!(
        object::program_names().all(|p| programs.contains(p))
            && programs.contains("load and pass the verifier"),
        "{programs}"
    );
    let left: Vec<_> = std::fs::read_dir("/sys/fs/bpf")?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "the pre-flight left pins behind: {left:?}");

    // Both binaries run the one pre-flight and print it alike.
    let (code, table) = run(meshctl()?, args)?;
    ensure!(code == 0 && table == report.table(false), "{table}");
    let (code, agent) = run(Command::new(workspace_binary("mesh-agent")?), args)?;
    ensure!(
        code == 0 && agent == format!("{table}ok: this machine can run mesh-agent\n"),
        "mesh-agent check printed:\n{agent}\nmeshctl check printed:\n{table}"
    );

    // An agent directory off bpffs: named, and the programs are not tried.
    let off = std::env::temp_dir().join(format!("{name}-off-bpffs"));
    let (code, report) = check_json(
        meshctl()?,
        &[OsStr::new("check"), "--bpffs-dir".as_ref(), off.as_os_str()],
    )?;
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    ensure!(
        code == 1 && names(&failed) == ["bpffs", "eBPF"],
        "{report:#?}"
    );
    ensure!(
        failed[0]
            .detail
            .contains(&format!("{}, which is not on bpffs", off.display()))
            && failed[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("--bpffs-dir under /sys/fs/bpf"))
            && failed[1].detail.starts_with("not tried"),
        "{failed:#?}"
    );

    // Without CAP_NET_ADMIN (dropped from the bounding set, so an exec'd
    // root process lacks it): that one capability is named, with its use.
    let mut without = Command::new("setpriv");
    without.args(["--bounding-set", "-net_admin", "--"]);
    without.arg(workspace_binary("meshctl")?);
    let (code, report) = check_json(without, &args)?;
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    ensure!(
        code == 1 && names(&failed) == ["capabilities"],
        "{report:#?}"
    );
    let detail = &failed[0].detail;
    ensure!(
        detail.starts_with("this process lacks CAP_NET_ADMIN (for attaching the programs")
            && !detail.contains("CAP_BPF")
            && !detail.contains("CAP_SYS_ADMIN"),
        "{detail}"
    );
    Ok(())
}

fn post_install() -> anyhow::Result<()> {
    let meshed = Meshed::shop_pair(3600)?;
    let cluster = &meshed.cluster;
    let sockets: Vec<PathBuf> = ["n1", "n2"]
        .iter()
        .map(|n| meshed.agent(n).admin_socket())
        .collect();
    let mut args: Vec<&OsStr> = vec!["check".as_ref(), "--post-install".as_ref()];
    for socket in &sockets {
        args.extend(["--agent".as_ref(), socket.as_os_str()]);
    }

    // Before any traffic: everything is in place but nothing was captured
    // yet, and each node is named.
    let (code, report) = check_json(meshctl()?, &args)?;
    ensure!(code == 1 && !report.ok, "{report:#?}");
    for (node, socket) in ["n1", "n2"].iter().zip(&sockets) {
        let of: Vec<&Check> = report
            .checks
            .iter()
            .filter(|c| c.node.as_deref() == Some(node))
            .collect();
        ensure!(
            names(&of) == ["agent", "model", "CA", "capture", "traffic"]
                && of.iter().all(|c| c.agent.as_deref() == socket.to_str()),
            "{report:#?}"
        );
        let failed: Vec<&&Check> = of.iter().filter(|c| !c.ok).collect();
        ensure!(
            failed.len() == 1 && failed[0].check == "traffic",
            "on {node}, only the traffic check should fail: {of:#?}"
        );
        ensure!(
            failed[0].detail.contains(&format!(
                "no connection on node {node} has been captured by a kernel hook"
            )) && failed[0].fix.as_deref()
                == Some(&*format!(
                    "send one request from an enrolled pod on {node}, then re-run."
                )),
            "{:#?}",
            failed[0]
        );
    }
    let (_, table) = run(meshctl()?, &args)?;
    for node in ["n1", "n2"] {
        ensure!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("FAIL  {node}  traffic"))),
            "{table}"
        );
    }

    // One real connection from each node's enrolled pod to the other's.
    let (a, b) = (cluster.pod("a"), cluster.pod("b"));
    let _servers = [
        serve(cluster, a, "0.0.0.0:8080", 100, 1)?,
        serve(cluster, b, "0.0.0.0:8080", 100, 1)?,
    ];
    for (from, to) in [(a, b), (b, a)] {
        let done = connect(cluster, from, SocketAddr::new(to.ipv4.into(), 8080), 100, 2)?;
        ensure!(
            done.received == 100,
            "{} → {}: {done:?}",
            from.name,
            to.name
        );
    }
    let (code, report) = check_json(meshctl()?, &args)?;
    ensure!(
        code == 0 && report.ok && report.checks.len() == 10,
        "{report:#?}"
    );
    for (node, from, to) in [("n1", "shop/a", b), ("n2", "shop/b", a)] {
        let traffic = report
            .checks
            .iter()
            .find(|c| c.node.as_deref() == Some(node) && c.check == "traffic")
            .context("no traffic check")?;
        ensure!(
            traffic
                .detail
                .starts_with(&format!("connect4 captured {from} → {}:8080,", to.ipv4)),
            "{traffic:#?}"
        );
    }
    let (code, _) = run(meshctl()?, &args)?;
    ensure!(code == 0, "the table form disagrees with the JSON one");

    // An agent that is not there is named among the ones that answer.
    let missing = cluster.scratch_dir("nothing")?.join("admin.sock");
    let mut with_missing = args.clone();
    with_missing.extend(["--agent".as_ref(), missing.as_os_str()]);
    let (code, report) = check_json(meshctl()?, &with_missing)?;
    let failed: Vec<&Check> = report.checks.iter().filter(|c| !c.ok).collect();
    ensure!(
        code == 1
            && failed.len() == 1
            && failed[0].agent.as_deref() == missing.to_str()
            && failed[0].node.is_none()
            && failed[0]
                .detail
                .contains(&format!("no agent answers at {}", missing.display())),
        "{report:#?}"
    );
    Ok(())
}
