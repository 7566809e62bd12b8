//! Capture, hook by hook: first the agent's embedded eBPF object driven
//! directly (no agent process), then real agents on a simulated cluster.
use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::ensure;
use libtest_mimic::Trial;
use mesh_agent::capture::{
    Capture,
    netns::{NETNS_THREADS, NetnsWorker, socket_netns_cookie},
    object::ip_key,
};
use mesh_common::{Counter, Hook, TupleKey, ports};
use nodemesh_tests::ClusterSpec;

use crate::support::{assert_intact, connect, next_done, serve, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "capture::kernel_connect4_captures_only_the_attached_pod",
            connect4_captures_only_the_attached_pod,
        ),
        trial(
            "capture::netns_threads_shared_by_pods_make_each_pods_sockets_in_its_namespace",
            netns_threads_shared_by_pods_make_each_pods_sockets_in_its_namespace,
        ),
    ]
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

    let mut capture = Capture::open(&cluster.bpffs_dir("capture"))?;
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

    // Pod a: captured. The connection lands on a's local 15001 listener, the
    // app still sees the address it asked for (getpeername4), and the maps
    // remember where it was really going — by the app's socket cookie and by
    // the tuple the agent's accepted socket sees (sockops hand-off).
    let from_a = connect(&cluster, a, target, 5000, 1)?;
    let at_agent = next_done(&mut agent)?;
    assert_intact(&from_a, &at_agent)?;
    ensure!(
        at_agent.local == listener.parse()?,
        "pod a's connect was not redirected to the agent's listener: {at_agent:?}"
    );
    ensure!(
        from_a.peer == target,
        "getpeername() in pod a shows {} instead of the original {target}",
        from_a.peer
    );
    let key = TupleKey {
        netns: cluster.netns_cookie(a)?,
        src: ip_key(at_agent.peer.ip()),
        dst: ip_key(at_agent.local.ip()),
        src_port: at_agent.peer.port(),
        dst_port: at_agent.local.port(),
        _pad: 0,
    };
    let handed_over = capture.take_original_destination(&key)?;
    ensure!(
        handed_over.map(|o| o.socket_addr()) == Some(target),
        "sockops hand-off by tuple gave {handed_over:?}"
    );
    // The cookie entry lives exactly as long as the app's socket: sockops
    // removes it at TCP_CLOSE, which for a passive closer comes one ACK after
    // the process has exited — so allow a bounded moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let originals = loop {
        let originals = capture.original_destinations()?;
        if originals.is_empty() || std::time::Instant::now() > deadline {
            break originals;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ensure!(
        originals.is_empty(),
        "original destinations outlived their sockets: {originals:?}"
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
    // And pod a's connection never reached the server directly.
    ensure!(
        server.next_line(Duration::from_millis(300)).is_err(),
        "the server received a connection that should have been captured"
    );
    Ok(())
}

/// The agent's few namespace threads serve every pod: jobs for several pods,
/// all in flight at once, each make their socket in their own pod's
/// namespace; and once idle the threads are back in the process's own
/// namespace, so none keeps a deleted pod's namespace alive.
fn netns_threads_shared_by_pods_make_each_pods_sockets_in_its_namespace() -> anyhow::Result<()> {
    let names = ["a", "b", "c"];
    let mut spec = ClusterSpec::new().node("n1");
    for name in names {
        spec = spec.pod(name, "n1");
    }
    let cluster = spec.build()?;
    let mut pods = Vec::new();
    for name in names {
        let pod = cluster.pod(name);
        let worker = Arc::new(NetnsWorker::open(&pod.netns_path())?);
        pods.push((name, cluster.netns_cookie(pod)?, worker));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let jobs: Vec<_> = (0..60)
            .map(|i| {
                let (name, cookie, worker) = pods[i % pods.len()].clone();
                let made = tokio::spawn(async move {
                    worker
                        .run(|| {
                            let socket = std::net::TcpListener::bind("0.0.0.0:0")?;
                            Ok::<_, anyhow::Error>(socket_netns_cookie(&socket)?)
                        })
                        .await
                });
                (name, cookie, made)
            })
            .collect();
        for (name, cookie, made) in jobs {
            let made = made.await???;
            ensure!(
                made == cookie,
                "a socket made for pod {name} is in namespace {made}, not the pod's {cookie}"
            );
        }
        anyhow::Ok(())
    })?;

    let own = std::fs::metadata("/proc/self/ns/net")?.ino();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut threads = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")? {
            let task = task?.path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if name.starts_with("netns-") {
                threads.push((
                    name.trim().to_owned(),
                    std::fs::metadata(task.join("ns/net"))?.ino(),
                ));
            }
        }
        ensure!(
            threads.len() == NETNS_THREADS,
            "{} namespace threads for {} pods, expected {NETNS_THREADS}: {threads:?}",
            threads.len(),
            names.len()
        );
        if threads.iter().all(|(_, ns)| *ns == own) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "idle namespace threads are still in a pod's namespace (ours is {own}): {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
