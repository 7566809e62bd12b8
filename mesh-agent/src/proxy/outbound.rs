//! Outbound: a connection an enrolled app made, redirected by connect4/6 to
//! the agent's listener in the app's own namespace.
//!
//! The original destination comes from the kernel (`ORIG_DST_BY_TUPLE`,
//! written by sockops before the handshake completed), never from a guess.
//! Where it goes is [`super::plan`]'s decision (the one `meshctl why`
//! shows): to an enrolled pod (on any node, this one included) through
//! HBONE as the app's workload; to a Service that uses a waypoint, through
//! HBONE to that waypoint (never around it); to anything else, as plain
//! TCP. Either way it leaves from the pod's namespace with the pod's
//! address and the agent mark, so it is not captured again.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use mesh_common::TupleKey;
use tokio::net::TcpStream;

use super::{
    PodContext, connect, dial_hbone,
    flow::Flow,
    mesh::MeshIdentity,
    plan::{Carry, plan},
    relay::relay,
    reported, reset, socket_in_pod,
};
use crate::{
    capture::{inpod::upstream_socket, object::ip_key},
    flows::record::{Direction, Hook, Path, State},
    identity::SpiffeId,
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
    let identity = pod.mesh.identity.as_ref();
    let trust_domain = identity.map(|i| i.bundle.trust_domain());
    let plan = plan(snapshot, pod.mesh.flows.node(), orig, trust_domain);
    flow.record.service = plan.service.map(Into::into);
    if let Some(waypoint) = &plan.waypoint {
        flow.record.waypoint = Some(waypoint.to_string().into());
        flow.record.path = Path::Waypoint;
    }
    let hops = match plan.hops {
        Ok(hops) => hops,
        Err(why) => {
            reset(client);
            return flow.failed(State::Error, why.to_string());
        }
    };
    // A lone choice leaves the round robin where it is.
    let hop = match hops.as_slice() {
        [only] => only,
        several => &several[pod.mesh.next_endpoint() % several.len()],
    };
    if flow.record.service.is_some() {
        flow.record.endpoint = Some(match &hop.carry {
            Carry::Hbone {
                hbone,
                path: Path::Waypoint,
                ..
            } => *hbone,
            _ => hop.target,
        });
        if plan.waypoint.is_none() {
            flow.record.destination.pod = hop.pod.as_deref().map(Into::into);
        }
    }
    match (&hop.carry, identity) {
        (Carry::Plaintext, _) => plaintext(&pod, client, hop.target, flow).await,
        (Carry::NoIdentity(why), _) => {
            reset(client);
            flow.failed(State::Error, why.clone());
        }
        (
            &Carry::Hbone {
                hbone,
                ref peer,
                path,
            },
            Some(identity),
        ) => {
            flow.record.destination.identity = Some(peer.to_string().into());
            let tunnel = open_tunnel(
                &pod,
                identity,
                peer.clone(),
                hbone,
                hop.target,
                &mut flow,
                path,
            )
            .await
            .map_err(|(state, why)| match &plan.waypoint {
                Some(w) => (state, format!("waypoint {w}: {why}")),
                None => (state, why),
            });
            carry(client, tunnel, flow).await;
        }
        (Carry::Hbone { .. }, None) => {
            unreachable!("a plan tunnels only with the trust domain of the agent's identity")
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
    flow.record.source.identity = Some(cert.identity.to_string().into());
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
        .tunnels()
        .get(&key, dial)
        .await
        .map_err(|e| (State::Error, format!("tunnel to {hbone}: {e}")))?;
    flow.tunnelled(path, &dest_identity.to_string(), conn.tls_version());
    let service = flow.record.service.clone();
    conn.connect(authority, service.as_deref())
        .await
        .map_err(|e| match &e {
            TunnelError::Refused {
                status: 401,
                reported,
                ..
            } => match reported::decode(reported.as_deref(), &dest_identity) {
                Some(verdict) => {
                    flow.set_verdict(&verdict);
                    (
                        State::Denied,
                        format!("{verdict}, at the destination ({e})"),
                    )
                }
                None => (
                    State::Denied,
                    format!("{e}: denied by the destination (rule not reported)"),
                ),
            },
            TunnelError::Refused { status: 400, .. } => (State::Refused, e.to_string()),
            _ => (State::Error, e.to_string()),
        })
}
