//! The waypoint role: an L7 proxy for the Services (or namespaces) labelled
//! `nodemesh.io/use-waypoint`. It terminates HBONE with its own identity,
//! speaks HTTP/1.1 and HTTP/2 to the client, routes each request by the
//! Gateway API routes attached to the Service, and forwards it over its own
//! HBONE stream to the chosen endpoint.
//!
//! A request's path through the folder, top to bottom:
//! - the data plane's workers ([`crate::proxy::workers`]): one
//!   single-threaded runtime per thread, each serving whole HBONE
//!   connections;
//! - [`site`]: the HBONE CONNECTs it accepts (only for Services it serves);
//! - [`serve`]: HTTP/1.1 or HTTP/2 on each CONNECT stream, one L7 record
//!   per request;
//! - [`route`]: HTTPRoute and GRPCRoute compilation (problems per field),
//!   matching with the specifications' precedence, filters, weighted
//!   backends;
//! - [`limits`]: TrafficPolicy rate limits and faults (limit → abort → delay);
//! - [`forward`]: timeouts, retries within a budget, then
//! - [`upstream`]: endpoint choice (power of two choices, outlier ejection)
//!   and pooled HTTP connections over HBONE to the endpoints.
pub mod forward;
pub mod limits;
pub mod route;
pub mod serve;
pub mod site;
pub mod upstream;

mod body;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::task::JoinHandle;

use crate::{
    capture::{
        inpod::hbone_listeners,
        netns::{NetnsError, NetnsWorker},
    },
    flows::record::{Direction, Path},
    proxy::{
        flow::{Flow, Owner},
        hbone::accept_loop,
        mesh::Mesh,
    },
    state::{Loaded, PodInfo, Snapshot, WaypointRef, keys::WAYPOINT_POD_LABEL},
    tunnel::{server::Peer, tls::server_config_resolving},
};

#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error(
        "waypoint {me}: no pod labelled {WAYPOINT_POD_LABEL}={name} in namespace {namespace} is \
         placed on node {node} in the config; declare the waypoint's pod (its network namespace \
         is where the waypoint listens)",
        name = me.name, namespace = me.namespace
    )]
    NoPod { me: WaypointRef, node: String },
    #[error(
        "waypoint {me}: several of its pods run on node {node} ({pods}): say which one this is \
         with --pod (on Kubernetes, the pod's name from the downward API)"
    )]
    WhichPod {
        me: WaypointRef,
        node: String,
        pods: String,
    },
    #[error(
        "waypoint {me}: a waypoint needs workload identities: run it with --ca and \
         --credentials (on Kubernetes, --ca-token-file)"
    )]
    NoIdentity { me: WaypointRef },
    #[error("waypoint {me}: pod {pod}: {source}")]
    Netns {
        me: WaypointRef,
        pod: String,
        #[source]
        source: NetnsError,
    },
    #[error("waypoint {me}: pod {pod}: opening port 15008: {source}")]
    Listen {
        me: WaypointRef,
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waypoint {me}: HBONE TLS configuration: {source}")]
    Tls {
        me: WaypointRef,
        #[source]
        source: rustls::Error,
    },
}

/// The maps looked up per request: keyed by names and addresses from the
/// model, hashed with a fast keyed hasher instead of SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A started waypoint; dropping it stops accepting and serving.
pub struct Serving {
    pub waypoint: Arc<Waypoint>,
    _accept: Vec<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a backend has no endpoints to send to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("names no Service")]
    NoService,
    #[error("{0}")]
    NoEndpoint(String),
}

/// Starts waypoint `me` on `node`, served by the mesh's workers: finds its
/// pod in the config (`own_pod` names it when several run on the node),
/// opens port 15008 in the pod's network namespace and serves HBONE there
/// with the pod's certificate.
pub async fn start(
    me: WaypointRef,
    (node, own_pod): (&str, Option<&str>),
    mesh: Arc<Mesh>,
) -> Result<Serving, WaypointError> {
    let loaded = mesh.snapshot();
    let mine: Vec<&PodInfo> = loaded
        .snapshot
        .waypoint_pods(&me)
        .filter(|p| p.node == node && own_pod.is_none_or(|name| p.name == name))
        .collect();
    let pod = match mine.as_slice() {
        [pod] => (*pod).clone(),
        [] => {
            return Err(WaypointError::NoPod {
                me,
                node: node.to_owned(),
            });
        }
        several => {
            let pods: Vec<String> = several.iter().map(|p| p.key()).collect();
            return Err(WaypointError::WhichPod {
                me,
                node: node.to_owned(),
                pods: pods.join(", "),
            });
        }
    };
    let Some(identity) = mesh.identity.as_ref() else {
        return Err(WaypointError::NoIdentity { me });
    };
    let key = pod.key();
    let netns_err = |me: &WaypointRef, source| WaypointError::Netns {
        me: me.clone(),
        pod: key.clone(),
        source,
    };
    // On Kubernetes the waypoint runs in its pod (the API server's pod
    // names no namespace file); locally it enters the one its pod names.
    let worker = if pod.netns.as_os_str().is_empty() {
        NetnsWorker::own()
    } else {
        NetnsWorker::open(&pod.netns)
    }
    .map_err(|e| netns_err(&me, e))?;
    let v6 = pod.ips.iter().any(IpAddr::is_ipv6);
    let listen_err = |me: &WaypointRef, source| WaypointError::Listen {
        me: me.clone(),
        pod: key.clone(),
        source,
    };
    let listeners = worker
        .run(move || hbone_listeners(v6))
        .await
        .map_err(|e| netns_err(&me, e))?
        .map_err(|e| listen_err(&me, e))?;
    identity.certs.reconcile(std::slice::from_ref(&key));
    let tls = server_config_resolving(identity.certs.resolver(&key), &identity.bundle).map_err(
        |source| WaypointError::Tls {
            me: me.clone(),
            source,
        },
    )?;
    let wp = Arc::new(Waypoint::new(
        me.clone(),
        key.clone(),
        pod.ips.clone(),
        worker,
        Arc::clone(&mesh),
    ));
    let site = Arc::new(site::Site(Arc::clone(&wp)));
    let mut accept = Vec::new();
    for listener in listeners {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| listen_err(&me, e))?;
        accept.push(AbortOnDrop(accept_loop(
            listener,
            Arc::clone(&tls),
            Arc::clone(&site),
        )));
    }
    Ok(Serving {
        waypoint: wp,
        _accept: accept,
    })
}

/// Everything a waypoint's connections share.
pub struct Waypoint {
    pub me: WaypointRef,
    /// Its pod, `namespace/name`: the identity it proves is this pod's.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    /// Makes sockets inside the waypoint pod's network namespace.
    pub worker: NetnsWorker,
    pub mesh: Arc<Mesh>,
    pub upstream: upstream::Upstreams,
    cache: Mutex<ConfigCache>,
    /// TrafficPolicies compiled for the config they came from; rebuilt (with
    /// the buckets of unchanged policies kept) when the config changes.
    limits: std::sync::RwLock<(Option<Arc<Loaded>>, limits::Limits)>,
}

/// What the waypoint derives from one config, computed on first use: route
/// tables per Service port, endpoints per backend Service port.
#[derive(Default)]
struct ConfigCache {
    config: Option<Arc<Loaded>>,
    /// By `namespace/name`, then port. Nested so that a lookup borrows its
    /// key instead of allocating one per request.
    tables: FastMap<String, Vec<(u16, Arc<route::RouteTable>)>>,
    /// By namespace, name, then (port, IPv4?).
    endpoints: FastMap<String, FastMap<String, Vec<EndpointsEntry>>>,
}

type EndpointsEntry = ((u16, bool), Arc<[upstream::Endpoint]>);

/// The value kept for `part` in a small list.
fn part_of<'a, P: PartialEq, V>(list: Option<&'a Vec<(P, V)>>, part: &P) -> Option<&'a V> {
    list?.iter().find(|(p, _)| p == part).map(|(_, v)| v)
}

impl ConfigCache {
    /// The cache for `config`, emptied if it was another config's.
    fn of(&mut self, config: &Arc<Loaded>) -> &mut Self {
        if !self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, config)) {
            *self = ConfigCache {
                config: Some(Arc::clone(config)),
                ..ConfigCache::default()
            };
        }
        self
    }
}

impl Waypoint {
    pub fn new(
        me: WaypointRef,
        pod: String,
        ips: Vec<IpAddr>,
        worker: NetnsWorker,
        mesh: Arc<Mesh>,
    ) -> Self {
        Self {
            me,
            pod,
            ips,
            worker,
            upstream: upstream::Upstreams::new(&mesh),
            mesh,
            cache: Mutex::default(),
            limits: std::sync::RwLock::default(),
        }
    }

    /// The flow record of something `peer` sent to `target` through this
    /// waypoint: the destination is the Service address asked for, not the
    /// waypoint's pod.
    pub fn arrival(&self, snapshot: &Snapshot, peer: &Peer, target: SocketAddr) -> Flow {
        let mut flow = Flow::of(
            &self.owner(),
            snapshot,
            Direction::Inbound,
            None,
            peer.addr,
            target,
        );
        let identity = peer.identity.to_string();
        flow.tunnelled(Path::Waypoint, &identity, peer.tls_version);
        flow.record.source.identity = Some(identity.into());
        flow.record.destination.pod = None;
        flow.record.waypoint = Some(self.me.to_string().into());
        flow
    }

    pub fn owner(&self) -> Owner<'_> {
        Owner {
            pod: &self.pod,
            ips: &self.ips,
            store: &self.mesh.flows,
        }
    }

    /// The routes for `service` (`namespace/name`) port `port` under
    /// `config`, compiled once per config. Problems are logged when a table
    /// is first compiled; [`Waypoint::route_problems`] lists them all.
    pub fn routes(&self, config: &Arc<Loaded>, service: &str, port: u16) -> Arc<route::RouteTable> {
        let mut cache = self.cache.lock().expect("config cache");
        let cache = cache.of(config);
        if let Some(table) = part_of(cache.tables.get(service), &port) {
            return Arc::clone(table);
        }
        let (table, problems) = self.build_routes(config, service, port);
        for p in &problems {
            tracing::warn!(
                waypoint = %self.me, route = %p.route, field = %p.field,
                "{} not accepted: {}", p.kind, p.message
            );
        }
        let table = Arc::new(table);
        cache
            .tables
            .entry(service.to_owned())
            .or_default()
            .push((port, Arc::clone(&table)));
        table
    }

    /// The endpoints of Service `namespace/name` port `port` in the address
    /// family of `v4` under `config`, resolved once per config; errors (no
    /// such Service, no endpoint) are not kept.
    pub fn endpoints(
        &self,
        config: &Arc<Loaded>,
        (namespace, name): (&str, &str),
        port: u16,
        v4: bool,
    ) -> Result<Arc<[upstream::Endpoint]>, EndpointsError> {
        {
            let mut cache = self.cache.lock().expect("config cache");
            let named = cache.of(config).endpoints.get(namespace);
            if let Some(found) = part_of(named.and_then(|n| n.get(name)), &(port, v4)) {
                return Ok(Arc::clone(found));
            }
        }
        let snapshot = &config.snapshot;
        let svc = snapshot
            .services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
            .ok_or(EndpointsError::NoService)?;
        let trust_domain = self
            .mesh
            .identity
            .as_ref()
            .map_or("cluster.local", |i| i.bundle.trust_domain());
        let found: Arc<[upstream::Endpoint]> =
            upstream::endpoints(snapshot, svc, port, v4, trust_domain)
                .map_err(EndpointsError::NoEndpoint)?
                .into();
        self.cache
            .lock()
            .expect("config cache")
            .of(config)
            .endpoints
            .entry(namespace.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
            .push(((port, v4), Arc::clone(&found)));
        Ok(found)
    }

    /// The rate limits and faults for one request of `route`'s rule
    /// `rule_name` from `source`, under `config`.
    pub fn limit(
        &self,
        config: &Arc<Loaded>,
        route: &str,
        rule_name: Option<&str>,
        source: &str,
    ) -> limits::Decision {
        let now = std::time::Instant::now();
        let rolls = (fastrand::f64(), fastrand::f64());
        {
            let current = self.limits.read().expect("limits");
            if current.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, config)) {
                return current.1.check(route, rule_name, source, now, rolls);
            }
        }
        let mut current = self.limits.write().expect("limits");
        if !current.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, config)) {
            for p in current.1.rebuild(&config.snapshot.traffic_policies) {
                tracing::warn!(waypoint = %self.me, "{p}");
            }
            current.0 = Some(Arc::clone(config));
        }
        current.1.check(route, rule_name, source, now, rolls)
    }

    /// Every problem of the routes attached to the Services this waypoint
    /// serves, as `meshctl status` shows config errors.
    pub fn route_problems(&self, config: &Loaded) -> Vec<String> {
        let mut all = Vec::new();
        for svc in config.snapshot.services_using(&self.me) {
            let name = format!("{}/{}", svc.namespace, svc.name);
            for port in &svc.ports {
                let (_, problems) = self.build_routes(config, &name, port.port);
                all.extend(problems.iter().map(ToString::to_string));
            }
        }
        let (_, problems) = limits::Limits::build(&config.snapshot.traffic_policies);
        all.extend(problems.iter().map(ToString::to_string));
        all.sort();
        all.dedup();
        all
    }

    fn build_routes(
        &self,
        config: &Loaded,
        service: &str,
        port: u16,
    ) -> (route::RouteTable, Vec<route::RouteProblem>) {
        route::RouteTable::build(
            &config.snapshot.http_routes,
            &config.snapshot.grpc_routes,
            &self.parent(service, port),
        )
    }

    fn parent(&self, service: &str, port: u16) -> route::Parent {
        let (namespace, name) = service.split_once('/').unwrap_or(("default", service));
        route::Parent {
            service_namespace: namespace.to_owned(),
            service_name: name.to_owned(),
            port,
            waypoint_namespace: self.me.namespace.clone(),
            waypoint_name: self.me.name.clone(),
        }
    }
}
