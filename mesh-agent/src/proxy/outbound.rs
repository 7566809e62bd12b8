//! Outbound: a connection an enrolled app made, redirected by connect4/6 to
//! the agent's listener in the app's own namespace.
//!
//! The original destination comes from the kernel (`ORIG_DST_BY_TUPLE`,
//! written by sockops before the handshake completed), never from a guess.
//! To an enrolled pod (on any node, this one included) it travels through
//! HBONE as the app's workload; to a Service that uses a waypoint, through
//! HBONE to that waypoint (never around it); to anything else, as plain
//! TCP. Either way
//! it leaves from the pod's namespace with the pod's address and the agent
//! mark, so it is not captured again.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use mesh_common::{TupleKey, ports};
use tokio::net::TcpStream;

use super::{
    PodContext, connect, dial_hbone, flow::Flow, mesh::MeshIdentity, relay::relay, reset,
    socket_in_pod,
};
use crate::{
    capture::{inpod::upstream_socket, object::ip_key},
    flows::record::{Direction, Hook, Path, State},
    identity::SpiffeId,
    state::{Snapshot, WaypointRef, keys::USE_WAYPOINT_LABEL},
    tunnel::{TunnelError, pool::Key},
};

/// How long a pod's first connection waits for its first certificate.
const CERT_WAIT: Duration = Duration::from_secs(5);

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let Ok(local) = client.local_addr() else {
        return;
    };
    let key = TupleKey {
        netns: pod.netns_cookie,
        src: ip_key(peer.ip()),
        dst: ip_key(local.ip()),
        src_port: peer.port(),
        dst_port: local.port(),
        _pad: 0,
    };
    let found = pod
        .capture
        .lock()
        .map_err(|_| "capture state poisoned".to_owned())
        .and_then(|mut c| c.take_original_destination(&key).map_err(|e| e.to_string()));
    let orig = match found {
        Ok(Some(orig)) => orig.socket_addr(),
        Ok(None) => {
            tracing::warn!(
                pod = %pod.pod, src = %peer,
                "captured connection has no recorded original destination (sockops not attached \
                 to this pod's cgroup?); resetting it rather than guessing"
            );
            return reset(client);
        }
        Err(e) => {
            tracing::error!(pod = %pod.pod, src = %peer, error = %e, "reading original destination");
            return reset(client);
        }
    };
    let hook = if local.is_ipv4() {
        Hook::Connect4
    } else {
        Hook::Connect6
    };
    // One view of the config for the whole decision.
    let loaded = pod.mesh.snapshot();
    let snapshot = &loaded.snapshot;
    let mut flow = Flow::new(&pod, snapshot, Direction::Outbound, Some(hook), peer, orig);
    let orig = SocketAddr::new(orig.ip().to_canonical(), orig.port());
    if let Some(svc) = snapshot.service_by_ip(orig.ip())
        && let Some(waypoint) = snapshot.waypoint_for(svc)
    {
        flow.record.service = Some(format!("{}/{}", svc.namespace, svc.name));
        flow.record.waypoint = Some(waypoint.to_string());
        return via_waypoint(&pod, client, snapshot, &waypoint, orig, flow).await;
    }
    let orig = match resolve_service(&pod, snapshot, orig, &mut flow) {
        Ok(target) => target,
        Err(why) => {
            reset(client);
            return flow.failed(State::Error, why);
        }
    };
    let tunnelled = pod.mesh.identity.as_ref().and_then(|identity| {
        let dest = snapshot.pod_by_ip(orig.ip())?;
        if !snapshot.enrolled(dest) {
            return None;
        }
        let same_node = dest.node == pod.mesh.flows.node();
        let trust_domain = identity.bundle.trust_domain();
        Some((identity, dest.identity(trust_domain), same_node))
    });
    match tunnelled {
        None => plaintext(&pod, client, orig, flow).await,
        Some((_, Err(e), _)) => {
            reset(client);
            flow.failed(State::Error, format!("destination identity: {e}"));
        }
        Some((identity, Ok(dest_identity), same_node)) => {
            flow.record.destination.identity = Some(dest_identity.to_string());
            let hbone = SocketAddr::new(orig.ip(), ports::HBONE);
            let path = if same_node {
                Path::SameNode
            } else {
                Path::Tunnel
            };
            let tunnel = open_tunnel(&pod, identity, dest_identity, hbone, orig, &mut flow, path);
            carry(client, tunnel.await, flow).await;
        }
    }
}

/// Relays `client` over an opened tunnel, or resets it with why not.
async fn carry(
    client: TcpStream,
    tunnel: Result<crate::tunnel::server::Tunnel, (State, String)>,
    mut flow: Flow,
) {
    match tunnel {
        Ok(stream) => {
            let progress = flow.relaying();
            let relayed = relay(client, stream, std::future::pending(), progress).await;
            flow.relayed(relayed, None);
        }
        Err((state, why)) => {
            reset(client);
            flow.failed(state, why);
        }
    }
}

/// Sends a connection for a Service address through the Service's waypoint:
/// a CONNECT to the Service address itself, on the waypoint's port 15008.
/// No waypoint pod, or one that does not answer, fails the connection: the
/// label promises L7 policy, so going around the waypoint is never an option.
async fn via_waypoint(
    pod: &PodContext,
    client: TcpStream,
    snapshot: &Snapshot,
    waypoint: &WaypointRef,
    orig: SocketAddr,
    mut flow: Flow,
) {
    flow.record.path = Path::Waypoint;
    let Some(identity) = pod.mesh.identity.as_ref() else {
        reset(client);
        let why = format!(
            "waypoint {waypoint}: the agent runs without --ca, and a waypoint is reached only over \
             mTLS; refusing rather than bypassing it"
        );
        return flow.failed(State::Error, why);
    };
    let chosen: Vec<_> = snapshot
        .waypoint_pods(waypoint)
        .filter_map(|p| {
            let ip = p.ips.iter().find(|ip| ip.is_ipv4() == orig.is_ipv4())?;
            Some((p, *ip))
        })
        .collect();
    if chosen.is_empty() {
        reset(client);
        let why = format!(
            "waypoint {waypoint} (label {USE_WAYPOINT_LABEL} of the Service or its namespace) has \
             no pod with an IPv{} address: deploy it, or remove the label; the connection is \
             refused rather than sent around the waypoint",
            if orig.is_ipv4() { 4 } else { 6 }
        );
        return flow.failed(State::Error, why);
    }
    let (wp_pod, ip) = chosen[pod.mesh.next_endpoint() % chosen.len()];
    let wp_identity = match wp_pod.identity(identity.bundle.trust_domain()) {
        Ok(id) => id,
        Err(e) => {
            reset(client);
            return flow.failed(State::Error, format!("waypoint {waypoint} identity: {e}"));
        }
    };
    flow.record.endpoint = Some(SocketAddr::new(ip, ports::HBONE));
    flow.record.destination.identity = Some(wp_identity.to_string());
    let hbone = SocketAddr::new(ip, ports::HBONE);
    let tunnel = open_tunnel(
        pod,
        identity,
        wp_identity,
        hbone,
        orig,
        &mut flow,
        Path::Waypoint,
    )
    .await
    .map_err(|(state, why)| (state, format!("waypoint {waypoint}: {why}")));
    carry(client, tunnel, flow).await;
}

/// The endpoint to connect to: for a Service address, one of the pods its
/// selector picks (round robin) on the port's target port, recorded in the
/// flow; any other address is itself.
fn resolve_service(
    pod: &PodContext,
    snapshot: &Snapshot,
    orig: SocketAddr,
    flow: &mut Flow,
) -> Result<SocketAddr, String> {
    let Some(svc) = snapshot.service_by_ip(orig.ip()) else {
        return Ok(orig);
    };
    let name = format!("{}/{}", svc.namespace, svc.name);
    flow.record.service = Some(name.clone());
    let port = svc
        .ports
        .iter()
        .find(|p| p.port == orig.port())
        .ok_or_else(|| format!("service {name} has no port {}", orig.port()))?;
    let endpoints: Vec<_> = snapshot
        .endpoints(svc)
        .filter_map(|p| {
            let ip = p
                .ips
                .iter()
                .find(|ip| ip.is_ipv4() == orig.is_ipv4())
                .or(p.ips.first())?;
            Some((p, SocketAddr::new(*ip, port.target_port)))
        })
        .collect();
    if endpoints.is_empty() {
        return Err(format!(
            "service {name} has no endpoints (no pod matches its selector)"
        ));
    }
    let (chosen, target) = endpoints[pod.mesh.next_endpoint() % endpoints.len()];
    flow.record.endpoint = Some(target);
    flow.record.destination.pod = Some(chosen.key());
    Ok(target)
}

/// Relays to a destination outside the mesh as plain TCP.
async fn plaintext(pod: &PodContext, client: TcpStream, orig: SocketAddr, mut flow: Flow) {
    let upstream = match socket_in_pod(pod, move || upstream_socket(orig)).await {
        Ok(socket) => connect(socket, orig).await,
        Err(e) => Err(e),
    };
    match upstream {
        Ok(upstream) => {
            let progress = flow.relaying();
            flow.relayed(
                relay(client, upstream, std::future::pending(), progress).await,
                None,
            );
        }
        Err(e) => {
            reset(client);
            flow.failed(State::Error, format!("upstream connect failed: {e}"));
        }
    }
}

/// A CONNECT stream to `authority` through `hbone` (a pod's or a
/// waypoint's port 15008), on this pod's pooled connection when there is one.
async fn open_tunnel(
    pod: &PodContext,
    identity: &MeshIdentity,
    dest_identity: SpiffeId,
    hbone: SocketAddr,
    authority: SocketAddr,
    flow: &mut Flow,
    path: Path,
) -> Result<crate::tunnel::server::Tunnel, (State, String)> {
    let Some(cert) = identity.certs.wait(&pod.pod, CERT_WAIT).await else {
        return Err((
            State::Error,
            format!(
                "{} has no workload certificate yet (is the CA reachable? see `meshctl status`)",
                pod.pod
            ),
        ));
    };
    flow.record.source.identity = Some(cert.identity.to_string());
    let key = Key {
        source: cert.identity.clone(),
        destination: hbone,
    };
    let dial = || async {
        let conn = dial_hbone(&pod.worker, &cert, identity, dest_identity.clone(), hbone).await?;
        pod.mesh
            .tunnels
            .dialled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, TunnelError>(conn)
    };
    let conn = pod
        .tunnels
        .get(&key, dial)
        .await
        .map_err(|e| (State::Error, format!("tunnel to {hbone}: {e}")))?;
    flow.tunnelled(path, &dest_identity.to_string(), conn.tls_version());
    conn.connect(authority).await.map_err(|e| match e {
        TunnelError::Refused { status: 401, .. } => (
            State::Denied,
            format!("{e} (denied by the destination's policy)"),
        ),
        TunnelError::Refused { status: 400, .. } => (State::Refused, e.to_string()),
        other => (State::Error, other.to_string()),
    })
}
