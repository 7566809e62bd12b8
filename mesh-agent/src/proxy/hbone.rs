//! Inbound tunnel: HBONE connections to an enrolled pod's port 15008,
//! terminated by the agent inside that pod's namespace.
//!
//! The TLS server presents the pod's own certificate (renewals reach new
//! handshakes through a resolver) and requires a client certificate of this
//! mesh. Each CONNECT must target this pod: one of its addresses, an app
//! port, never the agent's own ports, so the agent is never an open relay.
//! Then the same admission and delivery as plaintext inbound, with the
//! verified identity, and the source address of the tunnel (the source
//! pod's IP) as the app's peer.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use http::StatusCode;
use mesh_common::ports;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};

use super::{
    PodContext,
    admission::Arrival,
    flow::Flow,
    flow::Owner,
    inbound::{admit_and_deliver, carry},
    mesh::{Mesh, MeshIdentity},
    reported,
};
use crate::{
    flows::record::{Direction, Path, State},
    state::{Snapshot, keys::WAYPOINT_POD_LABEL},
    tunnel::{
        client::version_name,
        server::{Handler, Peer, Refusal, Session, serve},
        tls::{accept, server_config_resolving},
    },
};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts HBONE connections for `pod` until the task is aborted.
pub fn listen(
    listener: TcpListener,
    pod: Arc<PodContext>,
    identity: &MeshIdentity,
) -> Result<tokio::task::JoinHandle<()>, rustls::Error> {
    let tls = server_config_resolving(identity.certs.resolver(&pod.pod), &identity.bundle)?;
    Ok(accept_loop(listener, tls, Arc::new(PodHandler(pod))))
}

/// Whoever terminates HBONE (a pod's agent side, a waypoint): the CONNECT
/// handler plus what the accept loop needs for its counters and records.
pub trait Site: Handler {
    /// For log lines: the pod (or waypoint) served.
    fn name(&self) -> &str;
    fn mesh(&self) -> &Mesh;
    /// Who records this site's flows.
    fn owner(&self) -> Owner<'_>;
    /// The path its arrivals are recorded with.
    fn path(&self) -> Path;

    /// Records an HBONE connection refused as a whole (before any CONNECT).
    fn connection_refused(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        identity: Option<String>,
        why: String,
    ) {
        let snapshot = &self.mesh().snapshot().snapshot;
        let mut flow = Flow::of(
            &self.owner(),
            snapshot,
            Direction::Inbound,
            None,
            peer,
            local,
        );
        flow.record.path = self.path();
        flow.record.source.identity = identity.map(Into::into);
        flow.failed(State::Refused, why);
    }

    /// Logs a request refused before [`Handler::open`] and returns the
    /// site's HBONE address, for the record.
    fn log_rejected(&self, peer: &Peer, request: &str, refusal: &Refusal) -> SocketAddr {
        tracing::warn!(
            site = %self.name(),
            peer = %peer.identity,
            request,
            "HBONE request refused: {}",
            refusal.reason
        );
        let ip = self.owner().ips.first().copied();
        SocketAddr::new(ip.unwrap_or([0, 0, 0, 0].into()), ports::HBONE)
    }
}

/// Accepts HBONE connections for `site` until the task is aborted, each
/// served on the mesh's workers, in turn.
pub fn accept_loop<S: Site>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    site: Arc<S>,
) -> tokio::task::JoinHandle<()> {
    let (workers, name) = (Arc::clone(&site.mesh().workers), site.name().to_owned());
    workers.accept(listener, name, move |tcp, peer| {
        connection(tcp, peer, Arc::clone(&tls), Arc::clone(&site))
    })
}

/// One HBONE connection: handshake, then its streams until the peer closes.
pub async fn connection<S: Site>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    site: Arc<S>,
) {
    let mesh = site.mesh();
    let Some(identity) = mesh.identity.as_ref() else {
        return;
    };
    let counters = &mesh.tunnels;
    let local = tcp.local_addr().unwrap_or(peer_addr);
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        accept(tcp, peer_addr, tls, &identity.bundle),
    )
    .await
    .unwrap_or_else(|_| {
        Err(crate::tunnel::TunnelError::Handshake {
            peer: peer_addr,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
        })
    });
    let (stream, id) = match handshake {
        Ok(accepted) => accepted,
        Err(e) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(site = %site.name(), peer = %peer_addr, "HBONE connection refused: {e}");
            site.connection_refused(
                peer_addr,
                local,
                None,
                format!("mTLS handshake failed: {e}"),
            );
            return;
        }
    };
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let peer = Peer {
        identity: id,
        addr: peer_addr,
        tls_version: version_name(stream.get_ref().1.protocol_version()),
    };
    let identity = peer.identity.to_string();
    match serve(stream, peer, Arc::clone(&site)).await {
        Ok(()) => {}
        Err(e) if e.peer_went_away() => {
            tracing::debug!(site = %site.name(), peer = %peer_addr, %identity, "HBONE peer went away: {e}");
        }
        Err(e) => {
            tracing::warn!(site = %site.name(), peer = %peer_addr, %identity, "HBONE connection failed: {e}");
            let why = format!("not a valid HTTP/2 peer: {e}");
            site.connection_refused(peer_addr, local, Some(identity), why);
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
}

struct PodHandler(Arc<PodContext>);

impl PodHandler {
    fn flow(&self, snapshot: &Snapshot, peer: &Peer, target: SocketAddr) -> Flow {
        let pod = &self.0;
        let mut flow = Flow::new(pod, snapshot, Direction::Inbound, None, peer.addr, target);
        let identity = peer.identity.to_string();
        let from = snapshot.pod_by_ip(peer.addr.ip());
        let path = match from {
            Some(p) if p.labels.contains_key(WAYPOINT_POD_LABEL) => Path::Waypoint,
            Some(p) if p.node == pod.mesh.flows.node() => Path::SameNode,
            _ => Path::Tunnel,
        };
        flow.tunnelled(path, &identity, peer.tls_version);
        flow.record.source.identity = Some(identity.into());
        if let Some(me) = snapshot.pod(&pod.pod)
            && let Some(identity) = &pod.mesh.identity
        {
            flow.record.destination.identity = me
                .identity(identity.bundle.trust_domain())
                .ok()
                .map(|id| id.to_string().into());
        }
        flow
    }

    /// This pod, an app port: anything else is not ours to serve.
    fn serves(&self, target: SocketAddr) -> bool {
        self.0.ips.contains(&target.ip().to_canonical())
            && ![ports::OUTBOUND, ports::INBOUND_PLAINTEXT, ports::HBONE].contains(&target.port())
    }
}

impl Site for PodHandler {
    fn name(&self) -> &str {
        &self.0.pod
    }

    fn mesh(&self) -> &Mesh {
        &self.0.mesh
    }

    fn owner(&self) -> Owner<'_> {
        self.0.owner()
    }

    fn path(&self) -> Path {
        Path::Tunnel
    }
}

impl Handler for PodHandler {
    async fn open(
        &self,
        peer: Peer,
        target: SocketAddr,
        service: Option<String>,
    ) -> Result<Session, Refusal> {
        let pod = &self.0;
        let loaded = pod.mesh.snapshot();
        let snapshot = &loaded.snapshot;
        let mut flow = self.flow(snapshot, &peer, target);
        // The source's claim, kept only if this config agrees.
        flow.record.service = service
            .filter(|s| snapshot.service_selects(s, &pod.pod, target.port()))
            .map(Into::into);
        if !self.serves(target) {
            let why = format!(
                "CONNECT target {target} is not a workload port of {} on this node (no open relay)",
                pod.pod
            );
            tracing::warn!(pod = %pod.pod, peer = %peer.identity, "HBONE CONNECT refused: {why}");
            flow.failed(State::Refused, why.clone());
            return Err(Refusal::new(StatusCode::BAD_REQUEST, why));
        }
        let arrival = Arrival {
            source: Some(peer.identity.clone()),
            source_ip: peer.addr.ip().to_canonical(),
            destination_ip: target.ip().to_canonical(),
            port: target.port(),
        };
        match admit_and_deliver(pod, snapshot, &mut flow, arrival, target).await {
            Ok((app, registration)) => Ok(Box::new(move |tunnel| {
                Box::pin(async move {
                    match tunnel {
                        Ok(tunnel) => carry(tunnel, app, registration, flow).await,
                        Err(e) => flow.failed(State::Error, format!("tunnel stream: {e}")),
                    }
                })
            })),
            Err(not) => {
                let status = match not.state {
                    State::Denied | State::Refused => StatusCode::UNAUTHORIZED,
                    State::Error | State::Closed | State::Open => StatusCode::SERVICE_UNAVAILABLE,
                };
                flow.failed(not.state, not.why.clone());
                let refusal = Refusal::new(status, not.why);
                // The source records the same deciding rule as this side.
                Err(match not.denied.as_ref().and_then(reported::encode) {
                    Some(verdict) => refusal.with_verdict(verdict),
                    None => refusal,
                })
            }
        }
    }

    fn rejected(&self, peer: &Peer, request: &str, refusal: &Refusal) {
        let local = self.log_rejected(peer, request, refusal);
        self.flow(&self.0.mesh.snapshot().snapshot, peer, local)
            .failed(State::Refused, refusal.reason.clone());
    }
}
