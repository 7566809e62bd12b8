//! The record of one captured connection: who, where, how it travelled,
//! what policy said, and how it ended. Logged when the connection ends
//! (target `nodemesh::flow`, one line per flow, so it can be filtered and
//! parsed).
use std::{net::SocketAddr, time::Instant};

use super::relay::{End, Relayed};
use crate::policy::{Decision, Verdict};

/// Which way a captured connection goes, relative to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// How the bytes travelled between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Plain TCP: the destination is outside the mesh, or the source is
    /// (inbound plaintext, accepted in PERMISSIVE mode).
    Plaintext,
    /// HTTP/2 CONNECT over mutual TLS.
    Hbone,
}

/// How a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Bytes were relayed (see `end` for how the relay finished).
    Closed,
    /// Refused before policy: peer authentication, a bad request, a failed
    /// handshake.
    Refused,
    /// Denied by an authorization policy.
    Denied,
    /// The mesh could not carry it (upstream or tunnel failure).
    Error,
}

/// A flow being handled; [`Flow::finish`] logs it.
pub struct Flow {
    pub direction: Direction,
    pub pod: String,
    pub src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub path: Path,
    /// The source workload's SPIFFE ID, when it has one.
    pub source_identity: Option<String>,
    /// The far end's verified SPIFFE ID (outbound: the server; inbound: the
    /// client), when the path is HBONE.
    pub peer_identity: Option<String>,
    pub verdict: Option<Verdict>,
    started: Instant,
}

impl Flow {
    pub fn new(direction: Direction, pod: &str, src: SocketAddr, orig_dst: SocketAddr) -> Self {
        Self {
            direction,
            pod: pod.to_owned(),
            src,
            orig_dst,
            path: Path::Plaintext,
            source_identity: None,
            peer_identity: None,
            verdict: None,
            started: Instant::now(),
        }
    }

    /// Logs a flow that relayed bytes.
    pub fn relayed(self, relayed: Relayed, revoked_by: Option<String>) {
        self.log(State::Closed, Some(relayed), revoked_by);
    }

    /// Logs a flow that never relayed: `state` and why.
    pub fn failed(self, state: State, error: impl Into<String>) {
        self.log(state, None, Some(error.into()));
    }

    fn log(self, state: State, relayed: Option<Relayed>, error: Option<String>) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let decision = self.verdict.as_ref().map(|v| match v.decision {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        });
        let verdict = self.verdict.as_ref().map(ToString::to_string);
        let dry_run = self
            .verdict
            .as_ref()
            .filter(|v| !v.dry_run.is_empty())
            .map(|v| serde_json::to_string(&v.dry_run).unwrap_or_default());
        let end = relayed.map(|r| match r.end {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::ServerReset => "server_reset",
            End::Revoked => "revoked",
        });
        let state_name = match state {
            State::Closed => "closed",
            State::Refused => "refused",
            State::Denied => "denied",
            State::Error => "error",
        };
        let path = match self.path {
            Path::Plaintext => "plaintext",
            Path::Hbone => "hbone",
        };
        let direction = match self.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        };
        macro_rules! record {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    target: "nodemesh::flow",
                    direction,
                    pod = %self.pod,
                    src = %self.src,
                    orig_dst = %self.orig_dst,
                    path,
                    source_identity = self.source_identity.as_deref(),
                    peer_identity = self.peer_identity.as_deref(),
                    decision,
                    verdict = verdict.as_deref(),
                    dry_run = dry_run.as_deref(),
                    state = state_name,
                    sent = relayed.map(|r| r.sent),
                    received = relayed.map(|r| r.received),
                    end,
                    error = error.as_deref(),
                    duration_ms,
                    $message
                )
            };
        }
        match state {
            State::Closed => record!(info, "flow closed"),
            State::Refused | State::Denied => record!(info, "flow refused"),
            State::Error => record!(warn, "flow failed"),
        }
    }
}
