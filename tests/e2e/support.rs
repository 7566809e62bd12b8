//! Small helpers shared by the end-to-end test modules.
use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use libtest_mimic::Trial;
use nodemesh_tests::{
    Cluster, Host, PodChild,
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
