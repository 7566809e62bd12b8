//! Where a captured outbound connection goes, decided from the config
//! alone: the Service its address belongs to, that Service's waypoint or
//! endpoints, and for each place it may be sent whether it travels over
//! HBONE (and as whom the far end must prove itself) or as plain TCP.
//!
//! No I/O and no round robin here, so [`super::outbound`] and `meshctl why`
//! call the very same [`plan`]: the data path picks one [`Hop`], `why`
//! judges every one of them.
use std::net::{IpAddr, SocketAddr};

use mesh_common::ports;

use crate::{
    flows::record::Path,
    identity::SpiffeId,
    state::{PodInfo, ServiceInfo, Snapshot, WaypointRef, keys::USE_WAYPOINT_LABEL},
};

/// The decision for one original destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `namespace/name` when the address is a Service's cluster IP.
    pub service: Option<String>,
    /// The waypoint that Service's traffic must go through.
    pub waypoint: Option<WaypointRef>,
    /// Where the connection may be sent (round robin when several), or why
    /// it cannot be sent anywhere.
    pub hops: Result<Vec<Hop>, NoHop>,
}

/// One place the connection may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// `namespace/name` of the pod behind `target` (the waypoint's pod for
    /// a waypoint hop).
    pub pod: Option<String>,
    /// The address the application's bytes are for: the endpoint (a
    /// Service's target port on a pod), the address itself, or — through a
    /// waypoint — the Service address, as the CONNECT authority.
    pub target: SocketAddr,
    pub carry: Carry,
}

/// How the bytes travel to a [`Hop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carry {
    /// An HBONE stream through port 15008 at `hbone`, whose server must
    /// prove `peer`.
    Hbone {
        hbone: SocketAddr,
        peer: SpiffeId,
        path: Path,
    },
    /// Plain TCP: the destination is not an enrolled pod, or the agent has
    /// no CA (then nobody has an identity).
    Plaintext,
    /// The destination is in the mesh but has no valid identity: sending it
    /// plaintext would bypass mTLS, so the connection is refused.
    NoIdentity(String),
}

/// Why a Service address leads nowhere. The messages go into flow records
/// and `meshctl why` as they are, so they say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoHop {
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("service {service} has no endpoints (no ready pod matches its selector)")]
    NoEndpoints { service: String },
    #[error(
        "waypoint {waypoint}: the agent runs without --ca, and a waypoint is reached only over \
         mTLS; refusing rather than bypassing it"
    )]
    WaypointWithoutCa { waypoint: WaypointRef },
    #[error(
        "waypoint {waypoint} (label {USE_WAYPOINT_LABEL} of the Service or its namespace) has no \
         ready pod with an IPv{family} address: deploy it, or remove the label; the connection \
         is refused rather than sent around the waypoint"
    )]
    WaypointHasNoPod { waypoint: WaypointRef, family: u8 },
}

/// Plans a connection captured on `node` to `orig` (canonical address).
/// `trust_domain` is the mesh's when the agent has a CA (and so tunnels).
pub fn plan(snapshot: &Snapshot, node: &str, orig: SocketAddr, trust_domain: Option<&str>) -> Plan {
    let Some(svc) = snapshot.service_by_ip(orig.ip()) else {
        return Plan {
            service: None,
            waypoint: None,
            hops: Ok(vec![direct(snapshot, node, orig, trust_domain)]),
        };
    };
    let service = format!("{}/{}", svc.namespace, svc.name);
    let waypoint = snapshot.waypoint_for(svc);
    let hops = match &waypoint {
        Some(w) => via_waypoint(snapshot, w, orig, trust_domain),
        // A Service without a selector has its endpoints written by hand
        // (EndpointSlices, often outside the cluster): not the mesh's to
        // balance. Its own address is dialled, and kube-proxy sends it on.
        None if svc.selector.is_empty() => Ok(vec![direct(snapshot, node, orig, trust_domain)]),
        None => endpoints(snapshot, svc, &service, orig).map(|targets| {
            targets
                .into_iter()
                .map(|target| direct(snapshot, node, target, trust_domain))
                .collect()
        }),
    };
    Plan {
        service: Some(service),
        waypoint,
        hops,
    }
}

/// The endpoints a Service address stands for: each pod its selector picks,
/// at an address of the connection's family (else its first), on the
/// port's target port.
fn endpoints(
    snapshot: &Snapshot,
    svc: &ServiceInfo,
    service: &str,
    orig: SocketAddr,
) -> Result<Vec<SocketAddr>, NoHop> {
    let port = svc
        .ports
        .iter()
        .find(|p| p.port == orig.port())
        .ok_or_else(|| NoHop::NoPort {
            service: service.to_owned(),
            port: orig.port(),
        })?;
    let targets: Vec<_> = snapshot
        .endpoints(svc)
        .filter_map(|p| {
            let ip = same_family(p, orig.ip()).or(p.ips.first())?;
            Some(SocketAddr::new(*ip, port.target_port))
        })
        .collect();
    if targets.is_empty() {
        return Err(NoHop::NoEndpoints {
            service: service.to_owned(),
        });
    }
    Ok(targets)
}

/// To an address directly: over HBONE when it is an enrolled pod and the
/// mesh has identities, else plain TCP.
fn direct(snapshot: &Snapshot, node: &str, target: SocketAddr, td: Option<&str>) -> Hop {
    let dest = snapshot.pod_by_ip(target.ip());
    let carry = match (dest.filter(|d| snapshot.enrolled(d)), td) {
        (Some(dest), Some(td)) => match dest.identity(td) {
            Ok(peer) => Carry::Hbone {
                hbone: SocketAddr::new(target.ip(), ports::HBONE),
                peer,
                path: if dest.node == node {
                    Path::SameNode
                } else {
                    Path::Tunnel
                },
            },
            Err(e) => Carry::NoIdentity(format!("destination identity: {e}")),
        },
        _ => Carry::Plaintext,
    };
    Hop {
        pod: dest.map(PodInfo::key),
        target,
        carry,
    }
}

/// To a Service's waypoint: a CONNECT to the Service address itself on a
/// waypoint pod's port 15008. No CA or no pod fails the connection: the
/// label promises L7 policy, so going around the waypoint is never an
/// option.
fn via_waypoint(
    snapshot: &Snapshot,
    waypoint: &WaypointRef,
    orig: SocketAddr,
    td: Option<&str>,
) -> Result<Vec<Hop>, NoHop> {
    let Some(td) = td else {
        return Err(NoHop::WaypointWithoutCa {
            waypoint: waypoint.clone(),
        });
    };
    let hops: Vec<_> = snapshot
        .waypoint_pods(waypoint)
        .filter(|p| p.ready)
        .filter_map(|p| {
            let ip = *same_family(p, orig.ip())?;
            let carry = match p.identity(td) {
                Ok(peer) => Carry::Hbone {
                    hbone: SocketAddr::new(ip, ports::HBONE),
                    peer,
                    path: Path::Waypoint,
                },
                Err(e) => Carry::NoIdentity(format!("waypoint {waypoint} identity: {e}")),
            };
            Some(Hop {
                pod: Some(p.key()),
                target: orig,
                carry,
            })
        })
        .collect();
    if hops.is_empty() {
        return Err(NoHop::WaypointHasNoPod {
            waypoint: waypoint.clone(),
            family: if orig.is_ipv4() { 4 } else { 6 },
        });
    }
    Ok(hops)
}

fn same_family(pod: &PodInfo, like: IpAddr) -> Option<&IpAddr> {
    pod.ips.iter().find(|ip| ip.is_ipv4() == like.is_ipv4())
}

#[cfg(test)]
pub(crate) mod tests;
