//! Small helpers shared by the end-to-end test modules.
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use libtest_mimic::Trial;
use nodemesh_tests::{
    Cluster, Host, PodChild,
    mesh::{Agent, ApiServer, MeshConfig, Pki, write_atomically},
    traffic::{Event, Exchange},
};

/// Wraps an `anyhow` test body as a trial, printing the whole error chain.
pub fn trial(name: &str, body: fn() -> anyhow::Result<()>) -> Trial {
    Trial::test(name, move || body().map_err(|e| format!("{e:?}").into()))
}

pub const MIB: u64 = 1024 * 1024;
pub const WAIT: Duration = Duration::from_secs(60);

pub fn traffic_tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh-traffic"))
}

/// Starts `mesh-traffic serve` in `host` and waits until it listens.
pub fn serve(
    cluster: &Cluster,
    host: &Host,
    listen: &str,
    reply_bytes: u64,
    seed: u64,
) -> anyhow::Result<PodChild> {
    let mut cmd = traffic_tool();
    cmd.args(["serve", "--listen", listen])
        .args(["--reply-bytes", &reply_bytes.to_string()])
        .args(["--seed", &seed.to_string()]);
    let mut server = cluster.spawn(host, cmd)?;
    match Event::parse(&server.next_line(Duration::from_secs(10))?)? {
        Event::Listening { .. } => Ok(server),
        other => bail!("server in {} did not start: {other:?}", host.name),
    }
}

/// Runs `mesh-traffic connect` in `host` to completion.
pub fn connect(
    cluster: &Cluster,
    host: &Host,
    to: SocketAddr,
    send_bytes: u64,
    seed: u64,
) -> anyhow::Result<Exchange> {
    let mut all = connect_parallel(cluster, host, to, send_bytes, seed, 1)?;
    all.pop().context("no report from mesh-traffic")?
}

/// Runs `mesh-traffic connect --parallel n`: one result per connection, an
/// `Err` carrying the tool's error text for each that failed.
pub fn connect_parallel(
    cluster: &Cluster,
    host: &Host,
    to: SocketAddr,
    send_bytes: u64,
    seed: u64,
    n: u32,
) -> anyhow::Result<Vec<anyhow::Result<Exchange>>> {
    let mut cmd = traffic_tool();
    cmd.args(["connect", "--to", &to.to_string()])
        .args(["--send-bytes", &send_bytes.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--parallel", &n.to_string(), "--connect-timeout", "3"]);
    let out = cluster.spawn(host, cmd)?.wait_output(WAIT)?.1;
    out.lines()
        .map(|line| {
            Ok(match Event::parse(line)? {
                Event::Done(done) => Ok(done),
                Event::Error { error } => Err(anyhow::anyhow!("{error}")),
                other => Err(anyhow::anyhow!("unexpected {other:?}")),
            })
        })
        .collect()
}

/// The next finished connection a server reports.
pub fn next_done(server: &mut PodChild) -> anyhow::Result<Exchange> {
    expect_done(&server.next_line(WAIT)?)
}

fn expect_done(line: &str) -> anyhow::Result<Exchange> {
    match Event::parse(line)? {
        Event::Done(done) => Ok(done),
        other => bail!("expected a finished connection, got {other:?}"),
    }
}

/// Takes `count` finished connections from `server` and checks each one
/// matches one of `clients` byte for byte, both ways (parallel clients
/// finish in any order).
pub fn assert_all_intact(
    server: &mut PodChild,
    results: Vec<anyhow::Result<Exchange>>,
    count: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        results.len() == count,
        "{} reports of {count}",
        results.len()
    );
    let clients = results
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("a connection through the tunnel failed")?;
    for _ in 0..count {
        let server_side = next_done(server)?;
        anyhow::ensure!(
            clients
                .iter()
                .any(|c| assert_intact(c, &server_side).is_ok()),
            "a server-side exchange matches no client: {server_side:?}"
        );
    }
    Ok(())
}

/// Checks that what each side sent is exactly what the other received.
pub fn assert_intact(client: &Exchange, server: &Exchange) -> anyhow::Result<()> {
    if client.sent != server.received || client.sent_sha256 != server.received_sha256 {
        bail!(
            "client→server corrupted: sent {} bytes ({}), server got {} ({})",
            client.sent,
            client.sent_sha256,
            server.received,
            server.received_sha256
        );
    }
    if server.sent != client.received || server.sent_sha256 != client.received_sha256 {
        bail!(
            "server→client corrupted: sent {} bytes ({}), client got {} ({})",
            server.sent,
            server.sent_sha256,
            client.received,
            client.received_sha256
        );
    }
    Ok(())
}

/// A cluster with a mesh CA and an agent with identities on every node.
/// Fields drop in order: agents, then the CA, then the cluster.
pub struct Meshed {
    pub agents: Vec<Agent>,
    pub pki: Pki,
    /// Set when the agents and the CA read the model from the API server.
    pub api_server: Option<ApiServer>,
    pub config_dir: PathBuf,
    pub cluster: Cluster,
}

/// Where the agents and the CA of a [`Meshed`] read the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config directory itself (local mode).
    Dir,
    /// `nodemesh-apiserver` serving that directory (Kubernetes mode).
    ApiServer,
}

impl Meshed {
    /// Writes `config`, starts the CA (certificates valid `lifetime_secs`)
    /// and the agents, and waits until every enrolled pod has a certificate.
    pub fn start(cluster: Cluster, config: MeshConfig, lifetime_secs: u64) -> anyhow::Result<Self> {
        Self::start_on(Source::Dir, cluster, config, lifetime_secs)
    }

    /// [`Meshed::start`], reading the model from `source`.
    pub fn start_on(
        source: Source,
        cluster: Cluster,
        config: MeshConfig,
        lifetime_secs: u64,
    ) -> anyhow::Result<Self> {
        Self::start_with(source, cluster, config, lifetime_secs, &[])
    }

    /// [`Meshed::start_on`], the agents run with `agent_args` besides.
    pub fn start_with(
        source: Source,
        cluster: Cluster,
        config: MeshConfig,
        lifetime_secs: u64,
        agent_args: &[String],
    ) -> anyhow::Result<Self> {
        let config_dir = cluster.scratch_dir("config")?;
        config.write(&cluster, &config_dir)?;
        let api_server = match source {
            Source::Dir => None,
            Source::ApiServer => Some(ApiServer::start(&cluster, &config_dir)?),
        };
        let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();
        let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let mut pki = Pki::init(&cluster, &node_refs)?;
        pki.serve(&cluster, &config_dir, lifetime_secs)?;
        let mut agents = Vec::new();
        for node in &nodes {
            agents.push(Agent::start_meshed_with(
                &cluster,
                node,
                &config_dir,
                &pki,
                agent_args,
            )?);
        }
        Ok(Self {
            agents,
            pki,
            api_server,
            config_dir,
            cluster,
        })
    }

    pub fn agent(&self, node: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent on {node}"))
    }

    /// Takes `node`'s agent out of the mesh's list; the caller owns it (and
    /// dropping it kills the process).
    pub fn take_agent(&mut self, node: &str) -> Agent {
        let index = self
            .agents
            .iter()
            .position(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent on {node}"));
        self.agents.remove(index)
    }

    /// Replaces (or adds) one file of the local config; agents pick it up.
    pub fn write_config(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        write_atomically(&self.config_dir.join(file), yaml)
    }
}

/// The `tunnel` section of an agent's status.
pub fn tunnel_counter(agent: &Agent, name: &str) -> anyhow::Result<u64> {
    agent.status()?["tunnel"][name]
        .as_u64()
        .with_context(|| format!("status has no tunnel.{name}"))
}

/// Starts `mesh-traffic connect` in `host` that pauses after `pause_after`
/// bytes for `pause_ms`; returns once it reports the pause (the connection
/// is then open and idle).
pub fn connect_paused(
    cluster: &Cluster,
    host: &Host,
    to: SocketAddr,
    send_bytes: u64,
    pause_after: u64,
    pause_ms: u64,
) -> anyhow::Result<PodChild> {
    let mut cmd = traffic_tool();
    cmd.args(["connect", "--to", &to.to_string()])
        .args(["--send-bytes", &send_bytes.to_string()])
        .args(["--pause-after", &pause_after.to_string()])
        .args(["--pause-ms", &pause_ms.to_string()]);
    let mut client = cluster.spawn(host, cmd)?;
    match Event::parse(&client.next_line(Duration::from_secs(10))?)? {
        Event::Paused => Ok(client),
        other => bail!("client in {} did not pause: {other:?}", host.name),
    }
}

/// The result a `mesh-traffic connect` process reports when it ends.
pub fn finished(client: &mut PodChild) -> anyhow::Result<anyhow::Result<Exchange>> {
    let (_, out) = client.wait_output(WAIT)?;
    Ok(
        match Event::parse(out.lines().next().unwrap_or_default())? {
            Event::Done(done) => Ok(done),
            Event::Error { error } => Err(anyhow::anyhow!("{error}")),
            other => Err(anyhow::anyhow!("unexpected {other:?}")),
        },
    )
}

pub use nodemesh_tests::eventually;

/// The smallest meshed layout: pods `a` (n1) and `b` (n2) in the enrolled
/// namespace `shop`, its config written; returns the cluster and the
/// config directory.
pub fn shop_pair() -> anyhow::Result<(Cluster, PathBuf)> {
    let cluster = nodemesh_tests::ClusterSpec::cross_node_pair().build()?;
    let config_dir = cluster.scratch_dir("config")?;
    shop_pair_config(&cluster).write(&cluster, &config_dir)?;
    Ok((cluster, config_dir))
}

fn shop_pair_config(cluster: &Cluster) -> MeshConfig {
    MeshConfig::new()
        .namespace("shop", true)
        .pod(cluster.pod("a"), "shop")
        .pod(cluster.pod("b"), "shop")
}

impl Meshed {
    /// [`shop_pair`]'s layout with a CA (certificates valid
    /// `lifetime_secs`) and an agent on each node.
    pub fn shop_pair(lifetime_secs: u64) -> anyhow::Result<Self> {
        let cluster = nodemesh_tests::ClusterSpec::cross_node_pair().build()?;
        let config = shop_pair_config(&cluster);
        Self::start(cluster, config, lifetime_secs)
    }
}
