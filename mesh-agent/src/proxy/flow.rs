//! A connection's flow record while the proxy handles it: filled in as the
//! handler learns things, shown as open while bytes move, and finished
//! exactly once — into the flow store (whose subscribers derive the metrics)
//! and the log (target `nodemesh::flow`, one line per flow).
use std::{net::SocketAddr, sync::Arc};

use super::{PodContext, relay::Relayed};
use crate::{
    flows::{
        FlowRecord, FlowStore, Progress,
        record::{Direction, Endpoint, FlowVerdict, Hook, Path, State, Tls, unix_ms_now},
    },
    policy::Verdict,
    state::Snapshot,
};

/// Who records a flow: the pod it belongs to, and where records go.
pub struct Owner<'a> {
    /// `namespace/name`.
    pub pod: &'a str,
    pub ips: &'a [std::net::IpAddr],
    pub store: &'a Arc<FlowStore>,
}

pub struct Flow {
    pub record: FlowRecord,
    store: Arc<FlowStore>,
}

impl Flow {
    /// A flow of `pod` (its source when outbound, its destination when
    /// inbound); the other end's pod is looked up by address in `snapshot`,
    /// the config the connection is handled under.
    pub fn new(
        pod: &PodContext,
        snapshot: &Snapshot,
        direction: Direction,
        hook: Option<Hook>,
        src: SocketAddr,
        orig_dst: SocketAddr,
    ) -> Self {
        Self::of(&pod.owner(), snapshot, direction, hook, src, orig_dst)
    }

    /// As [`Flow::new`], for any owner of flows (a pod, a waypoint).
    pub fn of(
        owner: &Owner<'_>,
        snapshot: &Snapshot,
        direction: Direction,
        hook: Option<Hook>,
        src: SocketAddr,
        orig_dst: SocketAddr,
    ) -> Self {
        let known = |addr: SocketAddr| {
            let mut end = Endpoint::new(addr);
            end.pod = snapshot.pod_by_ip(addr.ip()).map(|p| p.key().into());
            end
        };
        let (mut source, mut destination) = (known(src), known(orig_dst));
        match direction {
            Direction::Outbound => {
                source.pod = Some(owner.pod[..].into());
                // The app reached the agent's loopback listener, so the
                // kernel gave it a loopback source; name the pod's address
                // its connection would have left with.
                if let Some(ip) = owner
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == orig_dst.ip().to_canonical().is_ipv4())
                    .filter(|_| src.ip().is_loopback())
                {
                    source.ip = *ip;
                }
            }
            Direction::Inbound => destination.pod = Some(owner.pod[..].into()),
        }
        let store = Arc::clone(owner.store);
        Self {
            record: FlowRecord {
                id: store.next_id(),
                node: store.node().into(),
                start_unix_ms: unix_ms_now(),
                end_unix_ms: None,
                direction,
                hook,
                path: Path::Passthrough,
                source,
                destination,
                service: None,
                endpoint: None,
                tls: None,
                verdict: None,
                bytes_sent: 0,
                bytes_received: 0,
                state: State::Open,
                end: None,
                error: None,
                waypoint: None,
                http: None,
                parent: None,
            },
            store,
        }
    }

    /// A new flow shaped as `template` (ends, path, TLS, parent), with its
    /// own id and start: a waypoint's request records, which would
    /// otherwise look up and format the same ends again per request.
    pub fn like(template: &FlowRecord, store: &Arc<FlowStore>) -> Self {
        let mut record = template.clone();
        record.id = store.next_id();
        record.start_unix_ms = unix_ms_now();
        Self {
            record,
            store: Arc::clone(store),
        }
    }

    /// Marks the flow tunnelled (HBONE) along `path`.
    pub fn tunnelled(&mut self, path: Path, peer_identity: &str, version: &str) {
        self.record.path = path;
        self.record.tls = Some(Tls {
            peer_identity: peer_identity.into(),
            version: version.into(),
        });
    }

    pub fn set_verdict(&mut self, verdict: &Verdict) {
        self.record.verdict = Some(FlowVerdict::from(verdict));
    }

    /// Bytes start to move: the flow is listed as open (with the bytes
    /// moved so far) and counted. The relay counts into what this returns.
    pub fn relaying(&mut self) -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        self.store.open(self.record.clone(), Arc::clone(&progress));
        progress
    }

    /// Ends a flow that relayed bytes.
    pub fn relayed(mut self, relayed: Relayed, revoked_by: Option<String>) {
        self.record.bytes_sent = relayed.sent;
        self.record.bytes_received = relayed.received;
        self.record.end = Some(relayed.end.as_str().to_owned());
        self.finish(State::Closed, revoked_by);
    }

    /// Ends a flow that never relayed: `state` and why.
    pub fn failed(self, state: State, error: impl Into<String>) {
        self.finish(state, Some(error.into()));
    }

    /// Ends a flow whose byte counts the caller set itself (an HTTP
    /// request at a waypoint).
    pub fn ended(self, state: State, error: Option<String>) {
        self.finish(state, error);
    }

    fn finish(mut self, state: State, error: Option<String>) {
        self.record.state = state;
        self.record.error = error;
        self.record.end_unix_ms = Some(unix_ms_now());
        log(&self.record);
        self.store.close(self.record);
    }
}

fn log(r: &FlowRecord) {
    let verdict = r.verdict.as_ref();
    let decision = verdict.map(|v| match v.decision {
        crate::policy::Decision::Allow => "allow",
        crate::policy::Decision::Deny => "deny",
    });
    let dry_run = verdict
        .filter(|v| !v.dry_run.is_empty())
        .map(|v| serde_json::to_string(&v.dry_run).unwrap_or_default());
    let (owner, peer_identity, source_identity) = match r.direction {
        Direction::Outbound => (&r.source, &r.destination.identity, &r.source.identity),
        Direction::Inbound => (&r.destination, &r.source.identity, &r.source.identity),
    };
    let relayed = r.end.is_some();
    let http = r.http.as_ref();
    macro_rules! record {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                target: "nodemesh::flow",
                id = r.id,
                direction = r.direction.as_str(),
                pod = owner.pod.as_deref().unwrap_or("-"),
                src = %r.source.addr(),
                orig_dst = %r.destination.addr(),
                path = r.path.as_str(),
                hook = r.hook.map(Hook::as_str),
                source_identity = source_identity.as_deref(),
                peer_identity = peer_identity.as_deref(),
                decision,
                verdict = verdict.map(|v| &*v.reason),
                dry_run = dry_run.as_deref(),
                state = r.state.as_str(),
                sent = relayed.then_some(r.bytes_sent),
                received = relayed.then_some(r.bytes_received),
                end = r.end.as_deref(),
                error = r.error.as_deref(),
                method = http.map(|h| &*h.method),
                authority = http.map(|h| &*h.authority),
                http_path = http.map(|h| h.path.as_str()),
                status = http.map(|h| h.status),
                route = http.and_then(|h| h.route.as_deref()),
                reason = http.and_then(|h| h.reason.as_deref()),
                duration_ms = r.duration_ms(),
                $message
            )
        };
    }
    match r.state {
        // An answered HTTP request is an access-log line: off by default
        // (as Envoy's), since at waypoint rates writing it costs more CPU
        // than routing the request; it is still recorded and counted.
        State::Open | State::Closed if r.http.is_some() => record!(debug, "request answered"),
        State::Open | State::Closed => record!(info, "flow closed"),
        State::Refused | State::Denied => record!(info, "flow refused"),
        State::Error => record!(warn, "flow failed"),
    }
}
