//! Kubernetes mode on the node: the agent fed by the API server (here
//! `nodemesh-apiserver`) finds its pods without the local-mode annotations —
//! new ones through the real CNI chain (Debian's bridge + host-local, then
//! `nodemesh-cni`), running ones by a `/proc` scan — and holds new pods
//! until they are enrolled.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use libtest_mimic::Trial;
use nodemesh_tests::{
    Cluster, ClusterSpec, Host,
    mesh::{Agent, ApiServer, MeshConfig, Pki, mesh_agent_cli},
};
use serde_json::Value;

use crate::support::{Meshed, Source, connect, eventually, serve, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "kubernetes::cni_holds_a_new_pod_until_enrolled_and_del_unenrols",
            cni_gates_new_pods,
        ),
        trial(
            "kubernetes::pods_running_before_the_agent_are_found_pinned_or_in_proc",
            scan_finds_running_pods,
        ),
        trial(
            "kubernetes::a_surge_agent_takes_over_and_the_old_one_changes_nothing",
            surge_agent_takes_over,
        ),
        trial(
            "kubernetes::a_waypoint_in_its_own_pod_is_its_pod_by_its_token_alone",
            waypoint_in_its_pod,
        ),
    ]
}

/// Where Debian's containernetworking-plugins puts the plugins.
const CNI_PLUGINS: &str = "/usr/lib/cni";

/// The runtime's side of CNI for one sandbox: runs a plugin list (ADD in
/// order, DEL in reverse), passing each plugin the previous one's result,
/// as containerd's libcni does.
struct Runtime<'a> {
    cluster: &'a Cluster,
    node: &'a Host,
    sandbox: &'a Host,
    plugins: Vec<Value>,
    /// `CNI_PATH`: the installer's bin directory, then Debian's plugins.
    search: String,
    dir: PathBuf,
}

impl<'a> Runtime<'a> {
    fn new(meshed: &'a Meshed, sandbox: &'a Host, socket: &Path) -> anyhow::Result<Self> {
        for plugin in ["bridge", "host-local"] {
            let path = Path::new(CNI_PLUGINS).join(plugin);
            ensure!(
                path.is_file(),
                "{} is missing: `cargo xtask setup` installs Debian's containernetworking-plugins",
                path.display()
            );
        }
        let cluster = &meshed.cluster;
        let node = cluster.node_of(sandbox);
        let dir = cluster.scratch_dir("cni")?;
        let i = node.node;
        // The node's own bridge and subnet (the harness's pods use .11 and
        // up), so the new pod is routed like every other.
        let bridge = serde_json::json!({
            "type": "bridge", "bridge": "br0", "isGateway": false, "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": format!("10.{i}.0.0/24"),
                    "rangeStart": format!("10.{i}.0.200"),
                    "rangeEnd": format!("10.{i}.0.220"),
                    "gateway": format!("10.{i}.0.1"),
                }]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("ipam"),
            },
        });
        // The node's network configuration as its network plugin wrote it;
        // the installer adds nodemesh-cni, and the runtime runs what the
        // file then says.
        let (conf_dir, bin_dir) = (dir.join("net.d"), dir.join("bin"));
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::create_dir_all(&bin_dir)?;
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": "nmt", "plugins": [bridge]});
        let conflist = conf_dir.join("10-nmt.conflist");
        std::fs::write(&conflist, list.to_string())?;
        mesh_agent_cli(&[
            "cni",
            "install",
            "--cni-bin-dir",
            &bin_dir.display().to_string(),
            "--cni-conf-dir",
            &conf_dir.display().to_string(),
            "--socket",
            &socket.display().to_string(),
            "--exclude-namespace",
            "kube-system",
        ])?;
        let installed: Value = serde_json::from_str(&std::fs::read_to_string(&conflist)?)?;
        let plugins = installed["plugins"]
            .as_array()
            .context("the installed conflist has no plugins")?
            .clone();
        ensure!(
            plugins.len() == 2 && plugins[1]["type"] == "nodemesh-cni",
            "the installer did not append nodemesh-cni: {installed}"
        );
        Ok(Self {
            cluster,
            node,
            sandbox,
            plugins,
            search: format!("{}:{CNI_PLUGINS}", bin_dir.display()),
            dir,
        })
    }

    /// ADD through the whole list: the final result, or the failing
    /// plugin's error object.
    fn add(&self) -> anyhow::Result<Result<Value, Value>> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            match self.invoke("ADD", plugin, prev.as_ref())? {
                Ok(result) => prev = Some(result),
                Err(error) => return Ok(Err(error)),
            }
        }
        prev.context("an empty plugin list").map(Ok)
    }

    /// DEL through the list in reverse; every plugin must succeed.
    fn del(&self) -> anyhow::Result<()> {
        for plugin in self.plugins.iter().rev() {
            if let Err(error) = self.invoke("DEL", plugin, None)? {
                bail!("DEL failed in {}: {error}", plugin["type"]);
            }
        }
        Ok(())
    }

    fn invoke(
        &self,
        command: &str,
        plugin: &Value,
        prev: Option<&Value>,
    ) -> anyhow::Result<Result<Value, Value>> {
        let kind = plugin["type"].as_str().context("plugin without type")?;
        let mut conf = plugin.clone();
        conf["cniVersion"] = "1.0.0".into();
        conf["name"] = "nmt".into();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let stdin = self.dir.join(format!("{command}-{kind}.json"));
        std::fs::write(&stdin, conf.to_string())?;
        let binary = self
            .search
            .split(':')
            .map(|dir| Path::new(dir).join(kind))
            .find(|p| p.is_file())
            .with_context(|| format!("plugin {kind} not in CNI_PATH {}", self.search))?;
        // The runtime runs plugins in the node's network namespace.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"exec "$0" < "$1"; "#])
            .arg(&binary)
            .arg(&stdin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{}", self.sandbox.name))
            .env("CNI_NETNS", self.sandbox.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.search)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={}",
                    self.sandbox.name
                ),
            );
        let mut process = self.cluster.spawn(self.node, cmd)?;
        let (status, out) = process.wait_output(Duration::from_secs(60))?;
        let body: Value = if out.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out)
                .with_context(|| format!("{kind} {command} printed {out:?}"))?
        };
        Ok(if status.success() {
            Ok(body)
        } else {
            Err(body)
        })
    }
}

fn result_ip(result: &Value) -> anyhow::Result<IpAddr> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no address in the CNI result {result}"))?;
    Ok(cidr.split('/').next().unwrap_or_default().parse()?)
}

/// Node agent readiness as the kubelet probes it.
fn ready(cluster: &Cluster, node: &Host) -> anyhow::Result<bool> {
    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
    ])
    .arg(format!("http://{}:15021/healthz/ready", node.ipv4));
    let code = cluster
        .spawn(node, curl)?
        .wait_output(Duration::from_secs(10))?
        .1;
    Ok(code.trim() == "200")
}

fn cni_gates_new_pods() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair()
        .sandbox("fresh", "n1")
        .build()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .pending_pod("fresh", "shop", "n1");
    let mut meshed = Meshed::start_on(Source::ApiServer, cluster, config, 3600)?;
    let n1 = meshed.cluster.node("n1").clone();
    ensure!(ready(&meshed.cluster, &n1)?, "agent n1 not ready on :15021");
    let fresh = meshed.cluster.pod("fresh").clone();
    let socket = meshed.agent("n1").run_dir.join("cni.sock");
    let b = meshed.cluster.pod("b").clone();
    let _server = serve(&meshed.cluster, &b, "0.0.0.0:8080", 4096, 7)?;

    // The agent is down: the sandbox must not start. The runtime then
    // cleans up with DEL, which succeeds without the agent.
    drop(meshed.take_agent("n1"));
    {
        let runtime = Runtime::new(&meshed, &fresh, &socket)?;
        let refused = runtime.add()?;
        let Err(error) = refused else {
            bail!("ADD succeeded with no agent on the node: {refused:?}");
        };
        ensure!(error["code"] == 11, "not 'try again later': {error}");
        let details = error["details"].as_str().unwrap_or_default();
        ensure!(
            details.contains("shop/fresh") && details.contains("not answering"),
            "{error}"
        );
        runtime.del()?;
    }

    let agent = Agent::start_meshed(&meshed.cluster, "n1", &meshed.config_dir, &meshed.pki)?;
    meshed.agents.push(agent);
    let agent = meshed.agent("n1");
    ensure!(
        !agent.enrolled_pods()?.contains(&"shop/fresh".to_owned()),
        "enrolled before its sandbox was set up"
    );
    let status = agent.status()?;
    ensure!(
        status["unlocated"] == serde_json::json!(["shop/fresh"]),
        "the pending pod should be reported as not located: {status}"
    );

    let runtime = Runtime::new(&meshed, &fresh, &socket)?;
    let result = runtime
        .add()?
        .map_err(|e| anyhow::anyhow!("ADD refused with the agent up: {e}"))?;
    // Enrolled before ADD returned: no waiting for the status file here.
    let pods = agent.meshctl(&["status", "-o", "json"])?;
    let pods: Value = serde_json::from_str(&pods)?;
    let entry = pods["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pod"] == "shop/fresh").cloned())
        .with_context(|| format!("shop/fresh not enrolled when ADD returned: {pods}"))?;
    ensure!(entry["inbound"]["attached"] == true, "{entry}");
    ensure!(
        entry["problems"].as_array().is_some_and(Vec::is_empty),
        "{entry}"
    );
    let ip = result_ip(&result)?;
    agent.wait_status("a certificate for shop/fresh", |s| {
        s["certs"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["pod"] == "shop/fresh"))
    })?;

    // Its first connection is captured and crosses the mesh with its identity.
    let to = SocketAddr::new(IpAddr::from(b.ipv4), 8080);
    let client = connect(&meshed.cluster, &fresh, to, 64 * 1024, 3)?;
    ensure!(client.received == 4096, "{client:?}");
    let flow = agent.wait_flow("from shop/fresh", |f| {
        f.pod == "shop/fresh" && f.direction == "outbound" && f.state == "closed"
    })?;
    ensure!(flow.path == "tunnel", "{flow:?}");
    ensure!(
        flow.src.starts_with(&ip.to_string()),
        "source {} is not the CNI address {ip}",
        flow.src
    );
    ensure!(
        flow.source_identity.as_deref() == Some("spiffe://cluster.local/ns/shop/sa/default"),
        "{flow:?}"
    );
    let inbound = meshed.agent("n2").wait_flow("into b from fresh", |f| {
        f.direction == "inbound" && f.src.starts_with(&ip.to_string())
    })?;
    ensure!(
        inbound.peer_identity.as_deref() == Some("spiffe://cluster.local/ns/shop/sa/default"),
        "{inbound:?}"
    );

    // DEL unenrols.
    runtime.del()?;
    eventually("shop/fresh unenrolled after DEL", || {
        Ok(!agent.enrolled_pods()?.contains(&"shop/fresh".to_owned()))
    })?;
    Ok(())
}

fn scan_finds_running_pods() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().build()?;
    // Both pods have been running since before the agents, and the API
    // server knows their addresses, but no annotation says where they are.
    // a's runtime pins its namespace (as containerd does); b's pins nothing,
    // and its server is the process that holds its namespace.
    let pins = cluster.scratch_dir("netns-pins")?;
    std::os::unix::fs::symlink(cluster.pod("a").netns_path(), pins.join("cni-a"))?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
        .unannotated("a")
        .unannotated("b");
    let b = cluster.pod("b").clone();
    let server = serve(&cluster, &b, "0.0.0.0:8080", 1000, 2)?;
    let meshed = Meshed::start_on(Source::ApiServer, cluster, config, 3600)?;
    for (node, pod, netns) in [
        ("n1", "shop/a", pins.join("cni-a").display().to_string()),
        ("n2", "shop/b", "/ns/net".to_owned()),
    ] {
        let agent = meshed.agent(node);
        ensure!(
            agent.enrolled_pods()? == [pod],
            "{node}: {:?}; log: {}",
            agent.enrolled_pods()?,
            agent.process.stderr()
        );
        let log = agent.process.stderr();
        let found = log
            .lines()
            .find(|l| l.contains("found by the pod scan"))
            .with_context(|| format!("{node} logged no scan: {log}"))?;
        ensure!(found.contains(&netns), "{node}: {found}");
    }
    let a = meshed.cluster.pod("a").clone();
    let to = SocketAddr::new(IpAddr::from(b.ipv4), 8080);
    let client = connect(&meshed.cluster, &a, to, 10_000, 5)?;
    ensure!(client.received == 1000, "{client:?}");
    let flow = meshed.agent("n1").wait_flow("from shop/a", |f| {
        f.pod == "shop/a" && f.direction == "outbound" && f.state == "closed"
    })?;
    ensure!(
        flow.path == "tunnel" && flow.peer_identity.is_some(),
        "{flow:?}"
    );
    drop(server);
    Ok(())
}

/// A rolling update's surge: a new agent starts on n1 beside the old one
/// (same run directory and pins, other admin ports), takes the node over,
/// and the old one, still running, changes nothing — so a pod the new one
/// enrols keeps working when the old one goes.
fn surge_agent_takes_over() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair().pod("c", "n1").build()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop");
    let mut meshed = Meshed::start(cluster, config, 3600)?;
    let ports = [
        "--metrics-listen",
        "0.0.0.0:15120",
        "--ready-listen",
        "0.0.0.0:15121",
    ]
    .map(str::to_owned);
    let mut extra = meshed.pki.agent_args("n1");
    extra.extend(ports);
    let new = Agent::start_with(&meshed.cluster, "n1", &meshed.config_dir, &extra)?;
    let old = meshed.agent("n1");
    eventually("the old agent to see it is superseded", || {
        Ok(old
            .process
            .stderr()
            .contains("a newer agent owns this node now"))
    })?;

    // Pod c appears: only the new agent may enrol it.
    let c = meshed.cluster.pod("c").clone();
    MeshConfig::new()
        .namespace("shop", true)
        .pod(meshed.cluster.pod("a"), "shop")
        .pod(meshed.cluster.pod("b"), "shop")
        .pod(&c, "shop")
        .write(&meshed.cluster, &meshed.config_dir)?;
    new.wait_status("shop/c enrolled and certified", |s| {
        let has = |list: &str| {
            s[list]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["pod"] == "shop/c"))
        };
        has("pods") && has("certs")
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let old_log = meshed.agent("n1").process.stderr();
    ensure!(
        !old_log.contains(r#""pod":"shop/c""#),
        "the superseded agent acted on shop/c: {old_log}"
    );

    // The old agent goes: a's connections and c's inbound keep working.
    drop(meshed.take_agent("n1"));
    let b = meshed.cluster.pod("b").clone();
    let _server_c = serve(&meshed.cluster, &c, "0.0.0.0:8080", 2000, 4)?;
    let _server_b = serve(&meshed.cluster, &b, "0.0.0.0:8080", 3000, 5)?;
    let a = meshed.cluster.pod("a").clone();
    let exchange = |from: &Host, to: &Host, replies: u64| -> anyhow::Result<()> {
        let target = SocketAddr::new(IpAddr::from(to.ipv4), 8080);
        let done = connect(&meshed.cluster, from, target, 5000, 6)?;
        ensure!(
            done.received == replies,
            "{} → {} after the old agent left: {done:?}",
            from.name,
            to.name
        );
        Ok(())
    };
    for _ in 0..5 {
        exchange(&b, &c, 2000)?;
        exchange(&a, &b, 3000)?;
    }
    new.wait_flow("into c over the tunnel", |f| {
        f.pod == "shop/c" && f.direction == "inbound" && f.state == "closed"
    })?;
    Ok(())
}

const AGENT_ACCOUNT: &str = "system:serviceaccount:nodemesh-system:nodemesh-agent";

/// A waypoint as `deploy/examples/waypoint.yaml` runs it: inside its own pod
/// (no namespace to enter, no privilege), reading the API server, with
/// nothing but its pod's token and the CA's root. The CA gives it its pod's
/// identity for that token, and it routes a client's request to the
/// backend behind the Service; a token bound to another pod gets nothing.
fn waypoint_in_its_pod() -> anyhow::Result<()> {
    let cluster = ClusterSpec::cross_node_pair()
        .pod("wp", "n1")
        .pod("c", "n1")
        .build()?;
    let cart: SocketAddr = "10.96.0.20:80".parse()?;
    let config = MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .service_account("a", "frontend")
        .pod(cluster.pod("b"), "shop")
        .pod_label("b", "app", "cart")
        .pod(cluster.pod("c"), "shop")
        .pod(cluster.pod("wp"), "shop")
        .service_account("wp", "wp")
        .pod_label("wp", "gateway.networking.k8s.io/gateway-name", "wp")
        .unannotated("wp")
        .service("shop", "cart", cart.ip(), (80, 8080), "cart")
        .service_label("shop/cart", "nodemesh.io/use-waypoint", "wp");
    let config_dir = cluster.scratch_dir("config")?;
    config.write(&cluster, &config_dir)?;
    let wp_account = "system:serviceaccount:shop:wp";
    let _api = ApiServer::start_with_tokens(
        &cluster,
        &config_dir,
        &[
            format!("token-of-n1={AGENT_ACCOUNT}@n1"),
            format!("token-of-n2={AGENT_ACCOUNT}@n2"),
            format!("token-of-wp={wp_account}@n1/wp"),
            // The waypoint's account, but bound to another pod.
            format!("token-of-c={wp_account}@n1/c"),
        ],
    )?;
    let mut pki = Pki::init(&cluster, &[])?;
    pki.serve(&cluster, &config_dir, 3600)?;
    let token_file = |token: &str| -> anyhow::Result<PathBuf> {
        let path = cluster.scratch_dir("tokens")?.join(token);
        std::fs::write(&path, format!("{token}\n"))?;
        Ok(path)
    };
    let mut agents = Vec::new();
    for node in ["n1", "n2"] {
        let token = token_file(&format!("token-of-{node}"))?;
        let agent = Agent::start_with(&cluster, node, &config_dir, &pki.token_agent_args(&token))?;
        agent.wait_status("a certificate for every enrolled pod", |s| {
            let count = |k: &str| s[k].as_array().map_or(0, Vec::len);
            count("certs") > 0 && count("certs") == count("pods")
        })?;
        agents.push(agent);
    }
    let waypoint_args = |token: &str| -> anyhow::Result<Vec<String>> {
        let mut args = pki.token_agent_args(&token_file(token)?);
        args.extend(["--pod".to_owned(), "wp".to_owned()]);
        Ok(args)
    };

    // A token bound to pod c is refused pod wp's identity, by name.
    let impostor = Agent::spawn_waypoint(
        &cluster,
        (cluster.pod("c"), "n1"),
        &config_dir,
        &waypoint_args("token-of-c")?,
        ("shop", "wp"),
    )?;
    impostor.process.wait_stderr_line(
        Duration::from_secs(20),
        "the CA's refusal of another pod's token",
        |l| l.contains("certificate request failed") && l.contains("the token is pod shop/c's"),
    )?;
    drop(impostor);

    let waypoint = Agent::spawn_waypoint(
        &cluster,
        (cluster.pod("wp"), "n1"),
        &config_dir,
        &waypoint_args("token-of-wp")?,
        ("shop", "wp"),
    )?;
    waypoint.wait_waypoint_ready()?;
    let status = waypoint.status()?;
    ensure!(
        status["certs"][0]["pod"] == "shop/wp"
            && status["certs"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/wp",
        "the waypoint holds its pod's identity: {}",
        status["certs"]
    );

    let mut backend = Command::new(env!("CARGO_BIN_EXE_mesh-http"));
    backend.args(["serve", "--listen", "0.0.0.0:8080", "--name", "b"]);
    let mut backend = cluster.spawn(cluster.pod("b"), backend)?;
    let line = backend.next_line(Duration::from_secs(10))?;
    ensure!(line.contains("listening"), "backend: {line}");
    let mut client = Command::new(env!("CARGO_BIN_EXE_mesh-http"));
    client.args(["load", "--to", &cart.to_string(), "--path", "/"]);
    let (_, out) = cluster
        .spawn(cluster.pod("a"), client)?
        .wait_output(Duration::from_secs(30))?;
    let summary: Value = serde_json::from_str(out.trim()).with_context(|| out.clone())?;
    let sample = &summary["samples"][0];
    ensure!(
        sample["status"] == 200 && sample["headers"]["x-backend"] == "b",
        "the request went through the waypoint to b: {summary}"
    );
    let routed = waypoint
        .flow_records(&[])?
        .into_iter()
        .filter(|r| r.http.is_some())
        .any(|r| {
            r.source.identity.as_deref() == Some("spiffe://cluster.local/ns/shop/sa/frontend")
        });
    ensure!(routed, "the waypoint recorded the client's request");
    Ok(())
}
