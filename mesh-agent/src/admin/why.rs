//! `meshctl why SRC DST:PORT`: what would happen if a pod connected there,
//! answered from the agent's current state without sending a packet. The
//! decision comes from the same [`admit`] the data path calls, so the answer
//! and the reality cannot drift apart.
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{self, api::Action, eval::Connection as PolicyConnection, peer_auth::ModeSource},
    proxy::admission::{Arrival, Refused, admit},
    state::{PodInfo, Snapshot},
};

/// One end, as the mesh sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Side {
    pub pod: Option<String>,
    pub ip: IpAddr,
    pub enrolled: bool,
    pub identity: Option<String>,
}

/// A policy that selects the destination, and how it judged this connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyCheck {
    pub policy: String,
    pub action: Action,
    pub dry_run: bool,
    /// The first rule that matched, if any.
    pub matched_rule: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Why {
    pub source: Side,
    pub destination: Side,
    pub port: u16,
    /// `tunnel`, `same_node` or `passthrough`.
    pub path: String,
    /// STRICT or PERMISSIVE, and which object decided (enrolled destinations).
    pub peer_authentication: Option<String>,
    pub policies: Vec<PolicyCheck>,
    /// `allow`, `deny` or `refused`.
    pub decision: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WhyError {
    #[error(
        "source {0:?} is neither a pod (namespace/name or a unique name) nor an IP address of one"
    )]
    UnknownSource(String),
    #[error("source {0:?} names several pods; use namespace/name")]
    AmbiguousSource(String),
    #[error("destination {0:?} is not ip:port (e.g. 10.2.0.11:8080 or [fd00::1]:80)")]
    BadDestination(String),
}

/// Answers for a connection from `source` to `destination` (`ip:port`);
/// `tunnels` says whether enrolled pods talk over HBONE (the agent has a CA).
pub fn why(
    snapshot: &Snapshot,
    source: &str,
    destination: &str,
    trust_domain: Option<&str>,
) -> Result<Why, WhyError> {
    let src = find_source(snapshot, source)?;
    let dst: SocketAddr = destination
        .parse()
        .map_err(|_| WhyError::BadDestination(destination.to_owned()))?;
    let dst_pod = snapshot.pod_by_ip(dst.ip());
    let side = |pod: Option<&PodInfo>, ip: IpAddr| Side {
        pod: pod.map(PodInfo::key),
        ip: ip.to_canonical(),
        enrolled: pod.is_some_and(|p| snapshot.enrolled(p)),
        identity: pod
            .zip(trust_domain)
            .and_then(|(p, td)| p.identity(td).ok())
            .map(|id| id.to_string()),
    };
    let source_ip = src.ips.first().copied().unwrap_or(dst.ip());
    let source_side = side(Some(src), source_ip);
    let dest_side = side(dst_pod, dst.ip());
    let tunnelled = source_side.enrolled && dest_side.enrolled && trust_domain.is_some();
    let path = if !tunnelled {
        "passthrough"
    } else if dst_pod.is_some_and(|d| d.node == src.node) {
        "same_node"
    } else {
        "tunnel"
    };
    let mut answer = Why {
        source: source_side.clone(),
        destination: dest_side.clone(),
        port: dst.port(),
        path: path.to_owned(),
        peer_authentication: None,
        policies: Vec::new(),
        decision: "allow".to_owned(),
        reason: String::new(),
    };
    let Some(dest) = dst_pod.filter(|_| dest_side.enrolled) else {
        answer.reason = "the destination is not an enrolled pod: the mesh passes the connection \
                         through without policy"
            .to_owned();
        return Ok(answer);
    };
    let source_id = source_side
        .identity
        .as_deref()
        .filter(|_| tunnelled)
        .and_then(|id| crate::identity::SpiffeId::parse(id).ok());
    let (mode, mode_source) = snapshot.peer_auth_mode(dest);
    answer.peer_authentication = Some(format!(
        "{} ({})",
        match mode {
            policy::api::Mode::Strict => "STRICT",
            policy::api::Mode::Permissive => "PERMISSIVE",
        },
        match mode_source {
            ModeSource::Namespace(p) => format!("PeerAuthentication {p}"),
            ModeSource::MeshWide(p) => format!("mesh-wide PeerAuthentication {p}"),
            ModeSource::Default => "default".to_owned(),
        }
    ));
    let conn = PolicyConnection {
        source: source_id.as_ref(),
        source_ip,
        port: dst.port(),
        request: None,
    };
    answer.policies = snapshot
        .policies_for(dest)
        .into_iter()
        .map(|p| PolicyCheck {
            policy: p.id(),
            action: p.action,
            dry_run: p.dry_run,
            matched_rule: p.rules.iter().position(|r| r.matches(&conn)),
        })
        .collect();
    let arrival = Arrival {
        source: source_id,
        source_ip,
        port: dst.port(),
    };
    match admit(snapshot, &dest.key(), &arrival) {
        Ok(verdict) => answer.reason = verdict.to_string(),
        Err(refused) => {
            answer.decision = match refused {
                Refused::Denied(_) => "deny",
                Refused::Strict { .. } | Refused::UnknownPod => "refused",
            }
            .to_owned();
            answer.reason = refused.to_string();
        }
    }
    Ok(answer)
}

fn find_source<'a>(snapshot: &'a Snapshot, source: &str) -> Result<&'a PodInfo, WhyError> {
    if let Ok(ip) = source.parse::<IpAddr>() {
        return snapshot
            .pod_by_ip(ip)
            .ok_or_else(|| WhyError::UnknownSource(source.to_owned()));
    }
    if source.contains('/') {
        return snapshot
            .pod(source)
            .ok_or_else(|| WhyError::UnknownSource(source.to_owned()));
    }
    let mut named = snapshot.pods.iter().filter(|p| p.name == source);
    match (named.next(), named.next()) {
        (Some(p), None) => Ok(p),
        (Some(_), Some(_)) => Err(WhyError::AmbiguousSource(source.to_owned())),
        (None, _) => Err(WhyError::UnknownSource(source.to_owned())),
    }
}
