//! One flow record. Field names are part of the admin API: add fields,
//! never rename or remove them.
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::policy::{Decision, Verdict, eval::Reason};

/// Which way a captured connection goes, relative to the pod that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// How the bytes travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// HBONE (mTLS + HTTP/2 CONNECT) to another node.
    Tunnel,
    /// HBONE between two pods of the same node.
    SameNode,
    /// Plain TCP: one end is outside the mesh (or the agent has no CA).
    Passthrough,
    /// HBONE to (or, at the waypoint, from) an L7 waypoint.
    Waypoint,
}

/// The kernel hook that captured the connection (none for tunnelled
/// arrivals: port 15008 is not steered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Connect4,
    Connect6,
    SkLookup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Being relayed now.
    Open,
    /// Relayed to its end (see `end`).
    Closed,
    /// Refused before policy: peer authentication, a bad request, a failed
    /// handshake.
    Refused,
    /// Denied by an authorization policy.
    Denied,
    /// The mesh could not carry it (upstream, delivery or tunnel failure).
    Error,
}

/// The snake_case names the record serializes its enums to, for log lines
/// and tables (a unit test holds them equal to serde's).
macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }
    };
}

names!(Direction { Outbound => "outbound", Inbound => "inbound" });
names!(Path {
    Tunnel => "tunnel",
    SameNode => "same_node",
    Passthrough => "passthrough",
    Waypoint => "waypoint",
});
names!(Hook { Connect4 => "connect4", Connect6 => "connect6", SkLookup => "sk_lookup" });
names!(State {
    Open => "open",
    Closed => "closed",
    Refused => "refused",
    Denied => "denied",
    Error => "error",
});

/// Text a record shares with others: a waypoint's records of one stream's
/// requests, and the flow they arrived on, name the same ends, identities
/// and Service; cloning a record then counts references instead of
/// copying a dozen strings per request.
pub type Text = std::sync::Arc<str>;

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `namespace/name`, when the address is a known pod.
    pub pod: Option<Text>,
    pub ip: IpAddr,
    pub port: u16,
    /// Its SPIFFE ID, when it proved one (or, for a destination, the one
    /// the tunnel insisted on).
    pub identity: Option<Text>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            pod: None,
            ip: addr.ip().to_canonical(),
            port: addr.port(),
            identity: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The namespace part of `pod`.
    pub fn namespace(&self) -> Option<&str> {
        self.pod.as_deref()?.split_once('/').map(|(ns, _)| ns)
    }
}

/// The mutual TLS of a tunnelled flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// The far end's verified SPIFFE ID.
    pub peer_identity: Text,
    /// e.g. `TLSv1.3`.
    pub version: Text,
}

/// The policy decision, with the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowVerdict {
    pub decision: Decision,
    /// `namespace/name` of the deciding policy, when one decided.
    pub policy: Option<Text>,
    pub rule: Option<usize>,
    /// The decision in words.
    pub reason: Text,
    /// What dry-run policies would have done.
    pub dry_run: Vec<crate::policy::eval::DryRun>,
}

impl From<&Verdict> for FlowVerdict {
    fn from(v: &Verdict) -> Self {
        let (policy, rule) = match &v.reason {
            Reason::AllowedBy { policy, rule } | Reason::DeniedBy { policy, rule } => {
                (Some(Text::from(policy.as_str())), Some(*rule))
            }
            Reason::NoAllowPolicy | Reason::NoAllowRuleMatched { .. } => (None, None),
        };
        Self {
            decision: v.decision,
            policy,
            rule,
            reason: v.to_string().into(),
            dry_run: v.dry_run.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Unique per agent run, increasing.
    pub id: u64,
    /// The node whose agent recorded it.
    pub node: Text,
    pub start_unix_ms: u64,
    pub end_unix_ms: Option<u64>,
    pub direction: Direction,
    pub hook: Option<Hook>,
    pub path: Path,
    pub source: Endpoint,
    /// The original destination (what the app connected to).
    pub destination: Endpoint,
    /// `namespace/name` when the original destination was a Service address.
    pub service: Option<Text>,
    /// The endpoint chosen for a Service address.
    pub endpoint: Option<SocketAddr>,
    pub tls: Option<Tls>,
    pub verdict: Option<FlowVerdict>,
    /// Bytes from the source to the destination.
    pub bytes_sent: u64,
    /// Bytes from the destination back to the source.
    pub bytes_received: u64,
    pub state: State,
    /// How a relayed flow ended: `closed`, `client_reset`, `server_reset`,
    /// `revoked`.
    pub end: Option<String>,
    /// Why it was refused, denied, failed or revoked.
    pub error: Option<String>,
    /// `namespace/name` of the waypoint the flow was sent through (or, when
    /// it failed for that reason, the one that was missing).
    #[serde(default)]
    pub waypoint: Option<Text>,
    /// For one HTTP request at a waypoint: what it asked and got. Its L4
    /// flow is `parent`.
    #[serde(default)]
    pub http: Option<HttpRecord>,
    /// The id of the L4 flow (same agent or waypoint) a request arrived on.
    #[serde(default)]
    pub parent: Option<u64>,
}

/// One HTTP request through a waypoint, and the decisions taken for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRecord {
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: Text,
    pub method: Text,
    pub authority: Text,
    /// The path as asked, query included.
    pub path: String,
    /// `namespace/name` and rule index of the route that matched.
    pub route: Option<Text>,
    /// `namespace/name` of the backend Service chosen.
    pub backend: Option<Text>,
    /// The status the client got (the waypoint's own, e.g. 404, or the
    /// backend's).
    pub status: u16,
    /// Attempts beyond the first.
    pub retries: u32,
    /// `grpc-status` of a gRPC response, from headers or trailers.
    pub grpc_status: Option<String>,
    /// Why the waypoint answered itself or failed (no route, no backend,
    /// timeout, …).
    pub reason: Option<String>,
}

impl FlowRecord {
    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.end_unix_ms?.saturating_sub(self.start_unix_ms))
    }
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_names() {
        let serialized = |v: serde_json::Value| v.as_str().unwrap().to_owned();
        for d in [Direction::Outbound, Direction::Inbound] {
            assert_eq!(serialized(serde_json::to_value(d).unwrap()), d.as_str());
        }
        for p in [
            Path::Tunnel,
            Path::SameNode,
            Path::Passthrough,
            Path::Waypoint,
        ] {
            assert_eq!(serialized(serde_json::to_value(p).unwrap()), p.as_str());
        }
        for h in [Hook::Connect4, Hook::Connect6, Hook::SkLookup] {
            assert_eq!(serialized(serde_json::to_value(h).unwrap()), h.as_str());
        }
        for s in [
            State::Open,
            State::Closed,
            State::Refused,
            State::Denied,
            State::Error,
        ] {
            assert_eq!(serialized(serde_json::to_value(s).unwrap()), s.as_str());
        }
    }
}
