//! `meshctl why SRC DST:PORT`: what would happen if a pod connected there,
//! answered from the agent's current state without sending a packet.
//!
//! Nothing here decides on its own: where a captured connection goes comes
//! from the data path's [`plan`] (Service → endpoints → waypoint, HBONE or
//! plain TCP), and each endpoint's verdict from the destination's
//! [`admit`], so the answer and the reality cannot drift apart. What is
//! left is the one case the data path never sees: a source outside the
//! mesh, whose connections are not captured at all.
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    flows::record::Path,
    identity::SpiffeId,
    policy::{
        api::{Action, Mode},
        eval::Connection as PolicyConnection,
    },
    proxy::{
        admission::{Arrival, Refused, admit},
        plan::{Carry, Hop, plan},
    },
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

/// What happens to the connection at one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// `tunnel`, `same_node`, `waypoint` or `passthrough` (`depends` when
    /// a Service's endpoints differ).
    pub path: String,
    /// STRICT or PERMISSIVE, and which object decided (enrolled destinations).
    pub peer_authentication: Option<String>,
    pub policies: Vec<PolicyCheck>,
    /// `allow`, `deny`, `refused` (peer authentication), `error` (the mesh
    /// cannot send it anywhere), `unreachable` (not captured, and nothing
    /// answers the address), `waypoint` (the waypoint decides per request),
    /// or `depends` (a Service whose endpoints are judged differently).
    pub decision: String,
    pub reason: String,
}

/// One endpoint a Service address may be sent to, and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointWhy {
    pub destination: Side,
    pub port: u16,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Why {
    pub source: Side,
    /// The address asked about (a Service's cluster IP stays that).
    pub destination: Side,
    pub port: u16,
    /// Whether capture takes the source's connections (it is enrolled).
    #[serde(default)]
    pub captured: bool,
    /// `namespace/name` when the destination is a Service's cluster IP.
    #[serde(default)]
    pub service: Option<String>,
    /// `namespace/name` of the waypoint that Service's traffic goes through.
    #[serde(default)]
    pub waypoint: Option<String>,
    /// For a Service, summed up over `endpoints`.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// For a Service: every place a connection may be sent (one per
    /// connection, round robin), each judged.
    #[serde(default)]
    pub endpoints: Vec<EndpointWhy>,
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
/// `trust_domain` is the mesh's when the agent has a CA (pods then talk
/// over HBONE).
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
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let captured = snapshot.enrolled(src);
    let judge = Judge {
        snapshot,
        source: src,
        trust_domain,
    };
    let mut answer = Why {
        source: judge.side(Some(src), judge.source_ip(dst.ip())),
        destination: judge.side(snapshot.pod_by_ip(dst.ip()), dst.ip()),
        port: dst.port(),
        captured,
        service: None,
        waypoint: None,
        outcome: Outcome::plain("allow", String::new()),
        endpoints: Vec::new(),
    };
    if !captured {
        answer.service = snapshot
            .service_by_ip(dst.ip())
            .map(|s| format!("{}/{}", s.namespace, s.name));
        answer.outcome = judge.uncaptured(dst, answer.service.as_deref());
        return Ok(answer);
    }
    let plan = plan(snapshot, &src.node, dst, trust_domain);
    answer.waypoint = plan.waypoint.as_ref().map(ToString::to_string);
    let hops = match plan.hops {
        Ok(hops) => hops,
        Err(why) => {
            let mut outcome = Outcome::plain("error", why.to_string());
            if plan.waypoint.is_some() {
                outcome.path = Path::Waypoint.as_str().to_owned();
            }
            answer.service = plan.service;
            answer.outcome = outcome;
            return Ok(answer);
        }
    };
    let Some(service) = plan.service else {
        // Not a Service: the plan's one hop is the address itself.
        answer.outcome = hops
            .first()
            .map(|hop| judge.hop(hop, answer.waypoint.as_deref()))
            .expect("a plan for an address has one hop");
        return Ok(answer);
    };
    answer.endpoints = hops
        .iter()
        .map(|hop| EndpointWhy {
            destination: judge.side(
                hop.pod.as_deref().and_then(|p| snapshot.pod(p)),
                hop.target.ip(),
            ),
            port: hop.target.port(),
            outcome: judge.hop(hop, answer.waypoint.as_deref()),
        })
        .collect();
    answer.outcome = summary(&service, &answer.endpoints);
    answer.service = Some(service);
    Ok(answer)
}

/// The answer for a Service as a whole: the endpoints' common path and
/// decision (else `depends`), and each endpoint's reason.
fn summary(service: &str, endpoints: &[EndpointWhy]) -> Outcome {
    let common = |field: fn(&Outcome) -> &String| {
        let first = field(&endpoints.first()?.outcome);
        endpoints
            .iter()
            .all(|e| field(&e.outcome) == first)
            .then(|| first.clone())
    };
    let each: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let at = SocketAddr::new(e.destination.ip, e.port);
            match &e.destination.pod {
                Some(pod) => format!("{pod} ({at}): {}", e.outcome.reason),
                None => format!("{at}: {}", e.outcome.reason),
            }
        })
        .collect();
    let (peer_authentication, policies) = match endpoints {
        [only] => (
            only.outcome.peer_authentication.clone(),
            only.outcome.policies.clone(),
        ),
        _ => (None, Vec::new()),
    };
    Outcome {
        path: common(|o| &o.path).unwrap_or_else(|| "depends".to_owned()),
        peer_authentication,
        policies,
        decision: common(|o| &o.decision).unwrap_or_else(|| "depends".to_owned()),
        reason: format!(
            "Service {service} has {} endpoint(s), one picked per connection (round robin): {}",
            endpoints.len(),
            each.join("; ")
        ),
    }
}

impl Outcome {
    /// An outcome without peer authentication or policies to show.
    fn plain(decision: &str, reason: String) -> Self {
        Self {
            path: Path::Passthrough.as_str().to_owned(),
            peer_authentication: None,
            policies: Vec::new(),
            decision: decision.to_owned(),
            reason,
        }
    }
}

/// Judges hops for one source pod.
struct Judge<'a> {
    snapshot: &'a Snapshot,
    source: &'a PodInfo,
    trust_domain: Option<&'a str>,
}

impl Judge<'_> {
    /// An end as `why` shows it; only an enrolled pod has an identity
    /// (nobody issues the others a certificate).
    fn side(&self, pod: Option<&PodInfo>, ip: IpAddr) -> Side {
        let enrolled = pod.is_some_and(|p| self.snapshot.enrolled(p));
        Side {
            pod: pod.map(PodInfo::key),
            ip: ip.to_canonical(),
            enrolled,
            identity: pod
                .filter(|_| enrolled)
                .zip(self.trust_domain)
                .and_then(|(p, td)| p.identity(td).ok())
                .map(|id| id.to_string()),
        }
    }

    /// The address the source's connection leaves with (one of the
    /// destination's family when it has one).
    fn source_ip(&self, to: IpAddr) -> IpAddr {
        let ips = &self.source.ips;
        ips.iter()
            .find(|ip| ip.is_ipv4() == to.is_ipv4())
            .or(ips.first())
            .copied()
            .unwrap_or(to)
    }

    /// An unenrolled source: nothing captures its connect, so nothing
    /// resolves a Service address for it, and its bytes travel as plain TCP.
    fn uncaptured(&self, dst: SocketAddr, service: Option<&str>) -> Outcome {
        let who = self.source.key();
        if let Some(service) = service {
            return Outcome::plain(
                "unreachable",
                format!(
                    "{who} is not in the mesh, so its connections are not captured and the mesh \
                     never resolves the cluster IP of Service {service} for it; nodemesh runs no \
                     kube-proxy, so the connect goes to {dst} itself, which no pod has, and fails \
                     (\"Network is unreachable\" without a route to it). Enrol the source's \
                     namespace (label nodemesh.io/dataplane=enabled), or connect to an endpoint"
                ),
            );
        }
        let hop = Hop {
            pod: self.snapshot.pod_by_ip(dst.ip()).map(PodInfo::key),
            target: dst,
            carry: Carry::Plaintext,
        };
        let mut outcome = self.hop(&hop, None);
        outcome.reason = format!(
            "{who} is not in the mesh: its connection is not captured and arrives as plain TCP, \
             without mTLS; {}",
            outcome.reason
        );
        outcome
    }

    /// What happens to a connection sent along `hop`.
    fn hop(&self, hop: &Hop, waypoint: Option<&str>) -> Outcome {
        let (path, tunnelled) = match &hop.carry {
            Carry::NoIdentity(why) => return Outcome::plain("error", why.clone()),
            Carry::Hbone {
                hbone,
                path: Path::Waypoint,
                ..
            } => {
                let mut outcome = Outcome::plain(
                    "waypoint",
                    format!(
                        "sent over mTLS to waypoint {} (pod {}, {hbone}); its L7 \
                         AuthorizationPolicies and routes decide per request (see the \
                         waypoint's flows), and the endpoints it picks judge the waypoint's \
                         identity at L4",
                        waypoint.unwrap_or("-"),
                        hop.pod.as_deref().unwrap_or("-"),
                    ),
                );
                outcome.path = Path::Waypoint.as_str().to_owned();
                return outcome;
            }
            Carry::Hbone { path, .. } => (*path, true),
            Carry::Plaintext => (Path::Passthrough, false),
        };
        let mut outcome = Outcome::plain("allow", String::new());
        outcome.path = path.as_str().to_owned();
        let Some(dest) = self
            .snapshot
            .pod_by_ip(hop.target.ip())
            .filter(|d| self.snapshot.enrolled(d))
        else {
            outcome.reason = "the destination is not an enrolled pod: the mesh passes the \
                              connection through without policy"
                .to_owned();
            return outcome;
        };
        let source_id: Option<SpiffeId> = self
            .trust_domain
            .filter(|_| tunnelled)
            .and_then(|td| self.source.identity(td).ok());
        let source_ip = self.source_ip(hop.target.ip());
        outcome.peer_authentication = Some(peer_authentication(self.snapshot, dest));
        let conn = PolicyConnection {
            source: source_id.as_ref(),
            source_ip,
            destination_ip: hop.target.ip(),
            port: hop.target.port(),
            request: None,
        };
        outcome.policies = self
            .snapshot
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
            destination_ip: hop.target.ip(),
            port: hop.target.port(),
        };
        match admit(self.snapshot, &dest.key(), &arrival) {
            Ok(verdict) => outcome.reason = verdict.to_string(),
            Err(refused) => {
                outcome.decision = match refused {
                    Refused::Denied(_) => "deny",
                    Refused::Strict { .. } | Refused::UnknownPod => "refused",
                }
                .to_owned();
                outcome.reason = refused.to_string();
            }
        }
        outcome
    }
}

fn peer_authentication(snapshot: &Snapshot, pod: &PodInfo) -> String {
    let (mode, source) = snapshot.peer_auth_mode(pod);
    let mode = match mode {
        Mode::Strict => "STRICT",
        Mode::Permissive => "PERMISSIVE",
    };
    format!("{mode} ({source})")
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

#[cfg(test)]
mod tests;
