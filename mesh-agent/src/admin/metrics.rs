//! Prometheus metrics (`/metrics` on port 15020), with the
//! `prometheus-client` crate. TCP metrics carry Istio's names and labels so
//! existing dashboards map over; every label is bounded by the number of
//! workloads and policies, never by connections.
//!
//! As in Istio, `istio_tcp_received_bytes_total` counts bytes from the
//! client to the server (the request side) and `istio_tcp_sent_bytes_total`
//! bytes from the server back to the client.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, atomic::Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

use crate::flows::{
    FlowRecord, FlowSubscriber,
    record::{Direction, Endpoint, HttpRecord, Path, State},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_service: String,
    connection_security_policy: &'static str,
}

/// Istio's request labels (bounded: workloads, services, status codes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_service: String,
    request_protocol: &'static str,
    response_code: u16,
    grpc_response_status: String,
}

/// A request's labels borrowed from its record: looking its metrics up by
/// this allocates nothing (owned labels were 8 strings per request, the
/// largest allocation source on the waypoint's path).
#[derive(Hash, PartialEq)]
struct RequestKey<'a> {
    source_workload: &'a str,
    source_workload_namespace: &'a str,
    source_principal: &'a str,
    destination_workload: &'a str,
    destination_workload_namespace: &'a str,
    destination_service: &'a str,
    request_protocol: &'static str,
    response_code: u16,
    grpc_response_status: &'a str,
}

impl RequestKey<'_> {
    fn owned(&self) -> RequestLabels {
        RequestLabels {
            reporter: "waypoint",
            source_workload: self.source_workload.to_owned(),
            source_workload_namespace: self.source_workload_namespace.to_owned(),
            source_principal: self.source_principal.to_owned(),
            destination_workload: self.destination_workload.to_owned(),
            destination_workload_namespace: self.destination_workload_namespace.to_owned(),
            destination_service: self.destination_service.to_owned(),
            request_protocol: self.request_protocol,
            response_code: self.response_code,
            grpc_response_status: self.grpc_response_status.to_owned(),
        }
    }

    fn hash64(&self) -> u64 {
        // Per request: a fast hasher (collisions are told apart by the
        // labels themselves).
        std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), self)
    }
}

impl RequestLabels {
    fn key(&self) -> RequestKey<'_> {
        RequestKey {
            source_workload: &self.source_workload,
            source_workload_namespace: &self.source_workload_namespace,
            source_principal: &self.source_principal,
            destination_workload: &self.destination_workload,
            destination_workload_namespace: &self.destination_workload_namespace,
            destination_service: &self.destination_service,
            request_protocol: self.request_protocol,
            response_code: self.response_code,
            grpc_response_status: &self.grpc_response_status,
        }
    }
}

/// The request counter and histogram of each label set seen, by the hash
/// of its [`RequestKey`] (collisions share a bucket).
type RequestHandles =
    HashMap<u64, Vec<(RequestLabels, Counter, Histogram)>, foldhash::fast::RandomState>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    pod: String,
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaptureLabels {
    hook: String,
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    request_handles: Mutex<RequestHandles>,
    denials: Family<PolicyLabels, Counter>,
    flows: Family<StateLabels, Counter>,
    handshakes: Family<RoleLabels, Counter>,
    pooled: Gauge,
    flow_records: Family<StateLabels, Gauge>,
    cert_expiry: Family<CertLabels, Gauge>,
    capture: Family<CaptureLabels, Counter>,
}

/// Gauges and totals the agent reads from elsewhere, once per refresh.
pub struct Snapshot<'a> {
    pub handshakes: [(&'static str, u64); 3],
    pub pooled_connections: u64,
    /// (open, closed) flow records held.
    pub flow_records: (usize, usize),
    pub certs: &'a [crate::identity::store::CertStatus],
    pub capture: &'a [super::status::CounterValue],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            opened: Family::default(),
            closed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS_MS.iter().copied())
            }),
            request_handles: Mutex::default(),
            denials: Family::default(),
            flows: Family::default(),
            handshakes: Family::default(),
            pooled: Gauge::default(),
            flow_records: Family::default(),
            cert_expiry: Family::default(),
            capture: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections the mesh started relaying",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections the mesh finished relaying",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent from the server back to the client",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client for the server",
            m.received.clone(),
        );
        registry.register(
            "istio_requests",
            "HTTP requests through the waypoint",
            m.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "HTTP request durations at the waypoint, until the response ended",
            m.request_duration.clone(),
        );
        registry.register(
            "nodemesh_policy_denials",
            "Connections denied by authorization policy, by deciding policy",
            m.denials.clone(),
        );
        registry.register(
            "nodemesh_flows",
            "Flows ended, by final state",
            m.flows.clone(),
        );
        registry.register(
            "nodemesh_tls_handshakes",
            "HBONE TLS handshakes: dialled, accepted, rejected",
            m.handshakes.clone(),
        );
        registry.register(
            "nodemesh_tunnel_pool_connections",
            "Pooled outbound HBONE connections held",
            m.pooled.clone(),
        );
        registry.register(
            "nodemesh_flow_records",
            "Flow records held: open, and closed in the bounded ring",
            m.flow_records.clone(),
        );
        registry.register(
            "nodemesh_certificate_expiry_timestamp_seconds",
            "When each pod's current certificate expires (Unix time)",
            m.cert_expiry.clone(),
        );
        registry.register(
            "nodemesh_capture_events",
            "eBPF capture counters, by hook",
            m.capture.clone(),
        );
        registry.register(
            "nodemesh_build",
            "The agent's build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self { registry, ..m }
    }

    /// Brings gauges and copied totals up to date.
    pub fn refresh(&self, s: &Snapshot<'_>) {
        for (role, value) in s.handshakes {
            set(&self.handshakes.get_or_create(&RoleLabels { role }), value);
        }
        self.pooled.set(s.pooled_connections as i64);
        let (open, closed) = s.flow_records;
        for (state, n) in [("open", open), ("closed", closed)] {
            self.flow_records
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
        self.cert_expiry.clear();
        for c in s.certs {
            self.cert_expiry
                .get_or_create(&CertLabels {
                    pod: c.pod.clone(),
                    identity: c.identity.clone(),
                })
                .set(c.not_after_unix as i64);
        }
        for c in s.capture {
            let l = CaptureLabels {
                hook: c.hook.clone(),
                counter: c.counter.clone(),
            };
            set(&self.capture.get_or_create(&l), c.value);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Connection metrics are derived from flow records as the store sees them.
impl FlowSubscriber for Metrics {
    fn opened(&self, r: &FlowRecord) {
        self.opened.get_or_create(&labels(r)).inc();
    }

    fn ended(&self, r: &FlowRecord, was_open: bool) {
        if let Some(http) = &r.http {
            self.request_ended(r, http);
            return;
        }
        if was_open {
            let l = labels(r);
            self.closed.get_or_create(&l).inc();
            self.received.get_or_create(&l).inc_by(r.bytes_sent);
            self.sent.get_or_create(&l).inc_by(r.bytes_received);
        }
        // A flow that ended is never `open`.
        let state = r.state.as_str();
        self.flows.get_or_create(&StateLabels { state }).inc();
        if r.state == State::Denied
            && r.direction == Direction::Inbound
            && let Some(v) = &r.verdict
        {
            let policy = v
                .policy
                .clone()
                .unwrap_or_else(|| "(no ALLOW rule matched)".into());
            self.denials
                .get_or_create(&PolicyLabels {
                    policy: policy.to_string(),
                })
                .inc();
        }
    }
}

impl Metrics {
    fn request_ended(&self, r: &FlowRecord, http: &HttpRecord) {
        let key = request_key(r, http);
        let hash = key.hash64();
        let mut handles = self.request_handles.lock().expect("request metrics");
        let bucket = handles.entry(hash).or_default();
        let at = match bucket.iter().position(|(l, ..)| l.key() == key) {
            Some(at) => at,
            None => {
                let labels = key.owned();
                let counter = self.requests.get_or_create(&labels).clone();
                let histogram = self.request_duration.get_or_create(&labels).clone();
                bucket.push((labels, counter, histogram));
                bucket.len() - 1
            }
        };
        let (_, counter, histogram) = &bucket[at];
        counter.inc();
        if let Some(ms) = r.duration_ms() {
            histogram.observe(ms as f64);
        }
    }
}

/// Copies a total kept elsewhere into a counter.
fn set(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

/// Istio's buckets for request durations, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// (name, namespace) of an end's workload, `unknown` when it is none.
fn workload(e: &Endpoint) -> (&str, &str) {
    e.pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map_or(("unknown", "unknown"), |(ns, name)| (name, ns))
}

fn principal(e: &Endpoint) -> &str {
    e.identity.as_deref().unwrap_or("unknown")
}

fn request_key<'a>(r: &'a FlowRecord, http: &'a HttpRecord) -> RequestKey<'a> {
    let (source_workload, source_workload_namespace) = workload(&r.source);
    let (destination_workload, destination_workload_namespace) = workload(&r.destination);
    RequestKey {
        source_workload,
        source_workload_namespace,
        source_principal: principal(&r.source),
        destination_workload,
        destination_workload_namespace,
        destination_service: r.service.as_deref().unwrap_or("unknown"),
        request_protocol: if http.grpc_status.is_some() {
            "grpc"
        } else {
            "http"
        },
        response_code: http.status,
        grpc_response_status: http.grpc_status.as_deref().unwrap_or_default(),
    }
}

fn labels(r: &FlowRecord) -> TcpLabels {
    let (source_workload, source_workload_namespace) = workload(&r.source);
    let (destination_workload, destination_workload_namespace) = workload(&r.destination);
    TcpLabels {
        reporter: match r.direction {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        },
        source_workload: source_workload.to_owned(),
        source_workload_namespace: source_workload_namespace.to_owned(),
        source_principal: principal(&r.source).to_owned(),
        destination_workload: destination_workload.to_owned(),
        destination_workload_namespace: destination_workload_namespace.to_owned(),
        destination_principal: principal(&r.destination).to_owned(),
        destination_service: r.service.as_deref().unwrap_or("unknown").to_owned(),
        connection_security_policy: match r.path {
            Path::Tunnel | Path::SameNode | Path::Waypoint => "mutual_tls",
            Path::Passthrough => "none",
        },
    }
}
