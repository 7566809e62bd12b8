//! HTTP on one accepted CONNECT stream: HTTP/2 when the client opens with
//! the HTTP/2 preface (prior knowledge), else HTTP/1.1 with keep-alive and
//! upgrades. Each request is matched against the Service's routes, filtered,
//! sent to a weighted backend and recorded as an L7 flow joined to the
//! stream's L4 flow. Requests hyper cannot parse unambiguously (conflicting
//! lengths, oversized heads) are answered 400/431 by hyper and recorded here.
use std::{
    borrow::Cow,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, HOST, LOCATION, TE, TRANSFER_ENCODING, UPGRADE},
};
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    EndpointsError, Waypoint,
    body::{self, Body},
    forward::{self, Local},
    limits,
    route::{self, Backend, Filter, Rule, Timeouts},
    upstream::Endpoint,
};
use crate::{
    flows::{
        FlowRecord, Progress,
        record::{FlowVerdict, HttpRecord, State, Text},
    },
    policy::{
        Connection, Decision, Policy, Request as PolicyRequest, Verdict, compile::Target, evaluate,
    },
    proxy::{
        flow::Flow,
        relay::{End, Relayed},
    },
    state::{Loaded, ServiceInfo},
    tunnel::server::{Peer, Tunnel},
};

/// The largest request head accepted: HTTP/1.1 read buffer and HTTP/2
/// header list alike. Larger heads are refused (431).
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// A client that has not sent a whole request head by then is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The CONNECT a stream arrived on.
pub struct Downstream {
    pub peer: Peer,
    /// The Service address the client asked for.
    pub target: SocketAddr,
    /// `namespace/name` of that Service.
    pub service: String,
    /// What each request's record starts as: the stream's ends, joined to
    /// its L4 flow.
    request: FlowRecord,
    /// What a request takes when no route is attached: everything to the
    /// Service itself, as if there were no waypoint (but with its records
    /// and policy). Built once per stream, not per request.
    fallback: Rule,
    /// The last verdict of a request on this stream, as recorded.
    last_verdict: Mutex<Option<(Verdict, FlowVerdict)>>,
}

impl Downstream {
    /// The stream `flow` (its L4 record, named the Service here) carries.
    pub fn new(
        peer: Peer,
        target: SocketAddr,
        service: &ServiceInfo,
        flow: &mut FlowRecord,
    ) -> Self {
        let name = format!("{}/{}", service.namespace, service.name);
        flow.service = Some(name.as_str().into());
        let mut request = flow.clone();
        request.parent = Some(flow.id);
        Self {
            peer,
            target,
            service: name,
            request,
            fallback: Rule {
                name: None,
                filters: Vec::new(),
                backends: vec![Backend::new(
                    &service.namespace,
                    &service.name,
                    Some(target.port()),
                )],
                timeouts: Timeouts {
                    request: None,
                    backend_request: None,
                },
                retry: None,
            },
            last_verdict: Mutex::new(None),
        }
    }
}

/// Serves HTTP on `tunnel` until the client is done, then ends the L4 flow.
pub async fn connection(wp: Arc<Waypoint>, tunnel: Tunnel, down: Downstream, mut flow: Flow) {
    let progress = flow.relaying();
    let io = TokioIo::new(CountedIo {
        inner: tunnel,
        progress: Arc::clone(&progress),
    });
    let down = Arc::new(down);
    let service = {
        let (wp, down) = (Arc::clone(&wp), Arc::clone(&down));
        service_fn(move |req| {
            let (wp, down) = (Arc::clone(&wp), Arc::clone(&down));
            async move { Ok::<_, Infallible>(handle(wp, down, req).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    builder.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
    let served = builder.serve_connection_with_upgrades(io, service).await;
    let end = match &served {
        Ok(()) => End::Closed,
        Err(e) => {
            malformed(&wp, &down, e.as_ref());
            End::ClientReset
        }
    };
    flow.relayed(
        Relayed {
            sent: progress.sent.load(Ordering::Relaxed),
            received: progress.received.load(Ordering::Relaxed),
            end,
        },
        None,
    );
}

/// Records what hyper refused on its own (it has already answered 400 or
/// 431 and closed the connection).
fn malformed(wp: &Waypoint, down: &Downstream, error: &(dyn std::error::Error + 'static)) {
    let Some(e) = error.downcast_ref::<hyper::Error>() else {
        tracing::debug!(waypoint = %wp.me, "client connection ended: {error}");
        return;
    };
    if !e.is_parse() && !e.is_parse_too_large() {
        tracing::debug!(waypoint = %wp.me, "client connection ended: {e}");
        return;
    }
    let status = if e.is_parse_too_large() {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    tracing::warn!(
        waypoint = %wp.me, peer = %down.peer.identity,
        "malformed HTTP request refused with {status}: {e}"
    );
    let mut flow = request_flow(wp, down, HttpRecord::default());
    if let Some(http) = flow.record.http.as_mut() {
        http.status = status.as_u16();
        http.reason = Some(format!("malformed request: {e}"));
    }
    flow.ended(State::Refused, Some(format!("malformed HTTP request: {e}")));
}

/// How records name `version`: shared, not allocated per request.
fn protocol(version: Version) -> Text {
    thread_local! {
        static NAMES: [Text; 3] = ["HTTP/2".into(), "HTTP/1.0".into(), "HTTP/1.1".into()];
    }
    let index = match version {
        Version::HTTP_2 => 0,
        Version::HTTP_10 => 1,
        _ => 2,
    };
    NAMES.with(|names| Text::clone(&names[index]))
}

/// How records name `method`: the common ones shared, not allocated per
/// request.
fn method(method: &http::Method) -> Text {
    use http::Method;
    const COMMON: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    thread_local! {
        static NAMES: [Text; 5] = COMMON.map(|m| Text::from(m.as_str()));
    }
    match COMMON.iter().position(|m| m == method) {
        Some(index) => NAMES.with(|names| Text::clone(&names[index])),
        None => method.as_str().into(),
    }
}

/// The record's form of `verdict`: a stream's requests mostly get the same
/// verdict, and formatting its reason anew cost allocations per request.
fn recorded_verdict(down: &Downstream, verdict: &Verdict) -> FlowVerdict {
    let mut last = down.last_verdict.lock().expect("verdict cache");
    if let Some((seen, recorded)) = last.as_ref()
        && seen == verdict
    {
        return recorded.clone();
    }
    let recorded = FlowVerdict::from(verdict);
    *last = Some((verdict.clone(), recorded.clone()));
    recorded
}

/// The flow record of one request, joined to its stream's L4 flow.
fn request_flow(wp: &Waypoint, down: &Downstream, http: HttpRecord) -> Flow {
    let mut flow = Flow::like(&down.request, &wp.mesh.flows);
    flow.record.http = Some(http);
    flow
}

async fn handle(
    wp: Arc<Waypoint>,
    down: Arc<Downstream>,
    req: Request<Incoming>,
) -> Response<Body> {
    let loaded = wp.mesh.snapshot();
    let progress = Arc::new(Progress::default());
    let http = HttpRecord {
        protocol: protocol(req.version()),
        method: method(req.method()),
        authority: authority(&req).unwrap_or_default(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
        ..HttpRecord::default()
    };
    let mut flow = request_flow(&wp, &down, http);
    // Boxed: its state is ~9 KB, and hyper moves this future into a task
    // per request (then moves it again as the task ends), which cost ~8% of
    // the waypoint's CPU in memmove.
    let routed = Box::pin(route_and_forward(
        &wp, &loaded, &down, req, &progress, &mut flow,
    ));
    let response = match routed.await {
        Ok(response) => response,
        Err(local) => {
            if let Some(http) = flow.record.http.as_mut() {
                http.reason = Some(local.reason.clone());
                http.retries = local.retries;
            }
            if let Some(e) = &local.endpoint {
                chosen(&mut flow, e);
            }
            tracing::debug!(waypoint = %wp.me, status = %local.status, "answered locally: {}", local.reason);
            local_response(local.status, &local.reason)
        }
    };
    if let Some(http) = flow.record.http.as_mut() {
        http.status = response.status().as_u16();
        if let Some(status) = response.headers().get("grpc-status") {
            http.grpc_status = status.to_str().ok().map(str::to_owned);
        }
    }
    let (parts, inner) = response.into_parts();
    Response::from_parts(parts, body::recorded(inner, flow, progress))
}

fn chosen(flow: &mut Flow, endpoint: &Endpoint) {
    flow.record.endpoint = Some(endpoint.addr);
    flow.record.destination.pod = Some(Text::clone(&endpoint.pod));
    flow.record.destination.identity = Some(Text::clone(&endpoint.identity_name));
}

fn local(status: StatusCode, reason: impl Into<String>) -> Local {
    Local {
        status,
        reason: reason.into(),
        retries: 0,
        endpoint: None,
    }
}

fn local_response(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response = Response::new(body::full(format!("{reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// gRPC's status code UNIMPLEMENTED.
const GRPC_UNIMPLEMENTED: u16 = 12;

/// A gRPC "trailers-only" answer: HTTP 200 whose headers carry the status
/// and its message, with no body.
fn grpc_status_response(code: u16, message: &str) -> Response<Body> {
    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(&grpc_message(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII,
/// and `%` itself (gRPC over HTTP/2, "Responses").
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The authority the client asked for: `:authority` (HTTP/2, absolute
/// URIs), else `Host`.
fn authority<B>(req: &Request<B>) -> Option<Text> {
    req.uri()
        .authority()
        .map(|a| a.as_str().into())
        .or_else(|| Some(req.headers().get(HOST)?.to_str().ok()?.into()))
}

/// The host part of an authority, lower-cased, without the port (copied
/// only when it has capitals).
fn host_of(authority: &str) -> Cow<'_, str> {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

async fn route_and_forward(
    wp: &Arc<Waypoint>,
    loaded: &Arc<Loaded>,
    down: &Downstream,
    mut req: Request<Incoming>,
    progress: &Arc<Progress>,
    flow: &mut Flow,
) -> Result<Response<Body>, Local> {
    let asked = flow
        .record
        .http
        .as_ref()
        .map_or_else(Text::default, |h| Text::clone(&h.authority));
    let host = host_of(&asked);
    let verdict = authorize(wp, loaded, down, &req, &host);
    flow.record.verdict = Some(recorded_verdict(down, &verdict));
    if verdict.decision == Decision::Deny {
        return Err(local(StatusCode::FORBIDDEN, format!("RBAC: {verdict}")));
    }
    let table = wp.routes(loaded, &down.service, down.target.port());
    let (rule, prefix) = if table.is_empty() {
        (&down.fallback, None)
    } else {
        let view = route::Request {
            method: req.method(),
            host: &host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let Some(matched) = table.decide(&view) else {
            // The Gateway API's answer to a request no route takes: 404,
            // and to a gRPC call the status UNIMPLEMENTED, which a gRPC
            // client reads as such (it would make UNIMPLEMENTED of a 404
            // too, but lose the message).
            let grpc = route::is_grpc(req.headers());
            let why = format!(
                "no {} rule for {} matches {} {}{}",
                if grpc { "GRPCRoute" } else { "HTTPRoute" },
                down.service,
                req.method(),
                asked,
                req.uri().path()
            );
            if grpc {
                let response = grpc_status_response(GRPC_UNIMPLEMENTED, &why);
                return Ok(answered(flow, (response, why)));
            }
            return Err(local(StatusCode::NOT_FOUND, why));
        };
        if let Some(http) = flow.record.http.as_mut() {
            http.route = Some(format!("{}#{}", matched.route, matched.rule_index).into());
        }
        let source = down.peer.identity.to_string();
        match wp.limit(loaded, matched.route, matched.rule.name.as_deref(), &source) {
            limits::Decision::Pass { delay: None } => {}
            limits::Decision::Pass { delay: Some(delay) } => {
                if let Some(http) = flow.record.http.as_mut() {
                    http.reason = Some(format!("fault injection: delayed {delay:?}"));
                }
                tokio::time::sleep(delay).await;
            }
            limits::Decision::Abort { status, reason } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Err(local(status, reason));
            }
            limits::Decision::Limited { retry_after, which } => {
                let why = format!("rate limited by the {which}");
                let mut response = local_response(StatusCode::TOO_MANY_REQUESTS, &why);
                response.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
                return Ok(answered(flow, (response, why)));
            }
        }
        (matched.rule, matched.matched_prefix.map(str::to_owned))
    };

    let filters = Filters {
        wp,
        loaded,
        down,
        host: &host,
        prefix: prefix.as_deref(),
    };
    let mut rewrites = Rewrites::default();
    // The rule's filters first: a redirect answers before any backend is
    // needed (a redirect rule has none).
    if let Some(answer) = filters.apply(&rule.filters, &mut req, &mut rewrites) {
        return Ok(answered(flow, answer));
    }
    let Some(backend) = rule.pick(fastrand::u64(..)) else {
        return Err(local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the matched rule has no backend to send to (no backendRefs, or every weight is 0)",
        ));
    };
    if let Some(answer) = filters.apply(&backend.filters, &mut req, &mut rewrites) {
        return Ok(answered(flow, answer));
    }

    if let Some(http) = flow.record.http.as_mut() {
        http.backend = Some(Text::clone(&backend.key));
    }
    let endpoints = backend_endpoints(wp, loaded, down, backend)?;
    let upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE);
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let replayable = hyper::body::Body::is_end_stream(req.body());
    let (mut parts, incoming) = req.into_parts();
    let authority = rewrites.host.map_or(Cow::Borrowed(&*asked), |h| {
        Cow::Owned(match down.target.port() {
            80 => h,
            port => format!("{h}:{port}"),
        })
    });
    let path_and_query = match (rewrites.path, parts.uri.query()) {
        (Some(path), Some(query)) => Some(format!("{path}?{query}")),
        (path, _) => path,
    };
    prepare_upstream(&mut parts, &authority, path_and_query.as_deref(), upgrade)
        .map_err(|why| local(StatusCode::BAD_REQUEST, why))?;
    let request_body = body::counted(incoming, Arc::clone(progress));

    if let Some(on_client) = on_client_upgrade {
        let (endpoint, _in_flight) = wp.upstream.choose(&endpoints);
        let endpoint = endpoint.clone();
        chosen(flow, &endpoint);
        let mut response = wp
            .upstream
            .send_upgrade(wp, &endpoint, Request::from_parts(parts, request_body))
            .await
            .map_err(|e| Local {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: format!("no response from the backend: {e}"),
                retries: 0,
                endpoint: Some(Box::new(endpoint.clone())),
            })?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let on_server = hyper::upgrade::on(&mut response);
            tokio::spawn(splice_upgraded(on_client, on_server, Arc::clone(progress)));
        }
        return Ok(response.map(|b| b.map_err(Into::into).boxed()));
    }

    let forwarded = forward::send(
        wp,
        &backend.key,
        &endpoints,
        parts,
        request_body,
        replayable,
        &rule.timeouts,
        rule.retry.as_ref(),
    )
    .await?;
    chosen(flow, forwarded.endpoint);
    if let Some(http) = flow.record.http.as_mut() {
        http.retries = forwarded.retries;
    }
    let mut response = forwarded.response.map(|b| b.map_err(Into::into).boxed());
    strip_hop_by_hop(response.headers_mut(), false);
    for filter in rule.filters.iter().chain(&backend.filters) {
        if let Filter::ResponseHeaders(edit) = filter {
            edit.apply(response.headers_mut());
        }
    }
    Ok(response)
}

/// Judges the request by the AuthorizationPolicies attached to its Service
/// (or to this waypoint), as the client proved itself on mTLS: never by
/// what a header claims.
fn authorize(
    wp: &Waypoint,
    loaded: &Loaded,
    down: &Downstream,
    req: &Request<Incoming>,
    host: &str,
) -> crate::policy::Verdict {
    let (namespace, service) = down
        .service
        .split_once('/')
        .unwrap_or(("default", &down.service));
    let policies: Vec<&Policy> = loaded
        .snapshot
        .policies
        .get(namespace)
        .into_iter()
        .flatten()
        .chain(
            loaded
                .snapshot
                .policies
                .get(&wp.me.namespace)
                .into_iter()
                .flatten(),
        )
        .filter(|p| {
            p.targets.iter().any(|t| match t {
                Target::Service(name) => p.namespace == namespace && name == service,
                Target::Gateway(name) => p.namespace == wp.me.namespace && *name == wp.me.name,
            })
        })
        .collect();
    let request = PolicyRequest {
        method: req.method().as_str(),
        host,
        path: req.uri().path(),
        headers: req.headers(),
    };
    evaluate(
        &policies,
        &Connection {
            source: Some(&down.peer.identity),
            source_ip: down.peer.addr.ip().to_canonical(),
            destination_ip: down.target.ip(),
            port: down.target.port(),
            request: Some(&request),
        },
    )
}

/// What a request's filters need to know of it besides the request.
struct Filters<'a> {
    wp: &'a Arc<Waypoint>,
    loaded: &'a Arc<Loaded>,
    down: &'a Downstream,
    host: &'a str,
    /// The PathPrefix the rule matched, for `ReplacePrefixMatch`.
    prefix: Option<&'a str>,
}

/// Where URLRewrite sends the request instead (`None`: unchanged).
#[derive(Default)]
struct Rewrites {
    host: Option<String>,
    path: Option<String>,
}

impl Filters<'_> {
    /// Applies `filters` to the request in order; a redirect is the answer
    /// itself (the response, and why).
    fn apply(
        &self,
        filters: &[Filter],
        req: &mut Request<Incoming>,
        rewrites: &mut Rewrites,
    ) -> Option<(Response<Body>, String)> {
        for filter in filters {
            match filter {
                Filter::Redirect(redirect) => {
                    let view = route::Request {
                        method: req.method(),
                        host: self.host,
                        path: req.uri().path(),
                        query: req.uri().query(),
                        headers: req.headers(),
                    };
                    let port = self.down.target.port();
                    let (status, location) = redirect.answer(&view, "http", port, self.prefix);
                    let mut response = local_response(status, &format!("redirect to {location}"));
                    if let Ok(value) = HeaderValue::from_str(&location) {
                        response.headers_mut().insert(LOCATION, value);
                    }
                    return Some((response, format!("redirected to {location}")));
                }
                Filter::RequestHeaders(edit) => edit.apply(req.headers_mut()),
                Filter::Rewrite(rewrite) => {
                    let (host, path) = rewrite.apply(req.uri().path(), self.prefix);
                    rewrites.host = host.or(rewrites.host.take());
                    rewrites.path = path.or(rewrites.path.take());
                }
                Filter::Mirror { backend, percent } => {
                    if fastrand::u32(..100) < *percent {
                        mirror(self.wp, self.loaded, self.down, backend, req);
                    }
                }
                Filter::ResponseHeaders(_) => {}
            }
        }
        None
    }
}

/// A response the waypoint made itself, with why in the request's record.
fn answered(flow: &mut Flow, (response, why): (Response<Body>, String)) -> Response<Body> {
    if let Some(http) = flow.record.http.as_mut() {
        http.reason = Some(why);
    }
    response
}

/// The enrolled endpoints of a rule's backend Service.
fn backend_endpoints(
    wp: &Waypoint,
    loaded: &Arc<Loaded>,
    down: &Downstream,
    backend: &Backend,
) -> Result<Arc<[Endpoint]>, Local> {
    let port = backend.port.unwrap_or(down.target.port());
    let service = (backend.namespace.as_str(), backend.name.as_str());
    wp.endpoints(loaded, service, port, down.target.is_ipv4())
        .map_err(|e| match e {
            EndpointsError::NoService => local(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "backendRef {}/{} names no Service (the route's ResolvedRefs would be False)",
                    backend.namespace, backend.name
                ),
            ),
            EndpointsError::NoEndpoint(why) => local(StatusCode::SERVICE_UNAVAILABLE, why),
        })
}

/// Sends a copy of a body-less request to the mirror backend and forgets
/// the answer (RequestMirror); the client never waits for it.
fn mirror(
    wp: &Arc<Waypoint>,
    loaded: &Arc<Loaded>,
    down: &Downstream,
    backend: &Backend,
    req: &Request<Incoming>,
) {
    if !hyper::body::Body::is_end_stream(req.body()) {
        tracing::debug!(waypoint = %wp.me, "not mirroring a request with a body (bodies are never buffered)");
        return;
    }
    let Ok(endpoints) = backend_endpoints(wp, loaded, down, backend) else {
        return;
    };
    let (endpoint, in_flight) = wp.upstream.choose(&endpoints);
    let endpoint = endpoint.clone();
    let mut parts = forward::copy_head(req.method(), req.uri(), req.version(), req.headers());
    let authority = authority(req).unwrap_or_default();
    if prepare_upstream(&mut parts, &authority, None, false).is_err() {
        return;
    }
    let wp = Arc::clone(wp);
    let http2 = parts.version == Version::HTTP_2;
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let request = Request::from_parts(parts, body::empty());
        if let Err(e) = wp.upstream.send(&wp, &endpoint, request, http2).await {
            tracing::debug!(waypoint = %wp.me, "mirrored request failed: {e}");
        }
    });
}

/// Makes the client's request fit to go upstream: origin-form URI and Host
/// for HTTP/1.1, absolute URI for HTTP/2, hop-by-hop headers removed (but
/// an upgrade's own, and `te: trailers`, which gRPC needs). `path_and_query`
/// is a rewrite's; `None` keeps the request's own. What is already right is
/// left as it is: rebuilding it cost allocations on every request.
fn prepare_upstream(
    parts: &mut http::request::Parts,
    authority: &str,
    path_and_query: Option<&str>,
    upgrade: bool,
) -> Result<(), String> {
    let bad = |e: &dyn std::fmt::Display, uri: &Uri| {
        format!(
            "cannot forward {authority}{}: {e}",
            path_and_query.unwrap_or(uri.path())
        )
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let own = || {
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
    };
    if parts.version == Version::HTTP_2 {
        let built = match path_and_query {
            Some(rewritten) => Uri::builder().path_and_query(rewritten),
            None => Uri::builder().path_and_query(own()),
        };
        parts.uri = built
            .scheme("http")
            .authority(authority)
            .build()
            .map_err(|e| bad(&e, &parts.uri))?;
        parts.headers.remove(HOST);
    } else {
        match path_and_query {
            Some(rewritten) => parts.uri = rewritten.parse().map_err(|e| bad(&e, &parts.uri))?,
            // Absolute-form from the client: origin-form upstream.
            None if parts.uri.authority().is_some() => parts.uri = Uri::from(own()),
            None => {}
        }
        // Exactly one Host, the one routes and policy judged: a second one
        // could make the backend see another host.
        let mut hosts = parts.headers.get_all(HOST).iter();
        let right = hosts.next().map(HeaderValue::as_bytes) == Some(authority.as_bytes())
            && hosts.next().is_none();
        if !right {
            let host = HeaderValue::from_str(authority).map_err(|e| bad(&e, &parts.uri))?;
            parts.headers.insert(HOST, host);
        }
    }
    Ok(())
}

/// Removes the headers that describe one hop only (RFC 9110 §7.6.1), and
/// those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !(keep_upgrade && n == "upgrade"))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    // Static names: parsing a &str into a header name on every request
    // showed in profiles.
    static ONE_HOP: [HeaderName; 4] = [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("proxy-authenticate"),
        HeaderName::from_static("trailer"),
    ];
    for name in &ONE_HOP {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    if headers
        .get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
}

/// After a `101`, the client's and the backend's connections carry raw
/// bytes to each other (WebSocket and friends).
async fn splice_upgraded(
    on_client: hyper::upgrade::OnUpgrade,
    on_server: hyper::upgrade::OnUpgrade,
    progress: Arc<Progress>,
) {
    let (client, server) = match tokio::join!(on_client, on_server) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!("upgrade did not complete: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut server = TokioIo::new(server);
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        progress.sent.fetch_add(up, Ordering::Relaxed);
        progress.received.fetch_add(down, Ordering::Relaxed);
    }
}

/// Counts the bytes of the client's stream for its L4 flow.
struct CountedIo {
    inner: Tunnel,
    progress: Arc<Progress>,
}

impl AsyncRead for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.progress.sent.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.progress
                .received
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
