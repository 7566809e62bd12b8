//! The L7 waypoint on the simulated cluster: real agents, a real waypoint
//! process, real HTTP/1.1, HTTP/2 and gRPC traffic (hand-framed, and tonic
//! on both ends) from enrolled pods, checked by what the backends saw and by
//! every flow record.
use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::flows::{FlowRecord, record::Path, record::State};
use nodemesh_tests::{
    ClusterSpec, PodChild,
    mesh::{Agent, MeshConfig},
    process::status_kib,
};
use serde_json::Value;

use crate::support::{MIB, Meshed, WAIT, eventually, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "waypoint::http1_http2_and_grpc_across_nodes_with_a_canary_split",
            canary_split,
        ),
        trial(
            "waypoint::matches_precedence_filters_and_unroutable_requests",
            matches_and_filters,
        ),
        trial(
            "waypoint::retries_within_a_budget_timeouts_and_ejection",
            resilience,
        ),
        trial(
            "waypoint::fails_loudly_refuses_smuggling_streams_uploads_and_upgrades",
            edges,
        ),
        trial(
            "waypoint::l7_policy_denies_by_method_path_and_header_for_the_mtls_identity",
            l7_policy,
        ),
        trial(
            "waypoint::rate_limits_answer_429_and_faults_abort_and_delay",
            limits_and_faults,
        ),
        trial(
            "waypoint::grpcroute_splits_tonic_calls_by_method_and_keeps_statuses",
            grpc_routes,
        ),
    ]
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const WAYPOINT: &str = "spiffe://cluster.local/ns/shop/sa/wp";
const CART: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 20)),
    80,
);
const USE_WAYPOINT: &str = "nodemesh.io/use-waypoint";

/// A meshed shop with a waypoint `shop/wp` (pod `wp` on n1) in front of
/// the Service `shop/cart` (10.96.0.20:80); `backends` are (pod, app label,
/// `mesh-http serve` flags) on n2, each also behind a Service named after
/// its app label (10.96.0.21, .22, …).
struct Shop {
    /// Kept for their lifetime: dropping one stops it.
    _backends: Vec<PodChild>,
    waypoint: Option<Agent>,
    meshed: Meshed,
}

impl Shop {
    fn start(backends: &[(&str, &str, &[&str])]) -> anyhow::Result<Self> {
        let mut spec = ClusterSpec::new()
            .node("n1")
            .node("n2")
            .pod("client", "n1")
            .pod("wp", "n1");
        for (pod, _, _) in backends {
            spec = spec.pod(pod, "n2");
        }
        let cluster = spec.build()?;
        let mut config = MeshConfig::new()
            .namespace("shop", true)
            .pod(cluster.pod("client"), "shop")
            .service_account("client", "frontend")
            .pod(cluster.pod("wp"), "shop")
            .service_account("wp", "wp")
            .pod_label("wp", "gateway.networking.k8s.io/gateway-name", "wp")
            .service("shop", "cart", CART.ip(), (80, 8080), backends[0].1)
            .service_label("shop/cart", USE_WAYPOINT, "wp")
            .service(
                "shop",
                "ghost",
                [10, 96, 0, 30].into(),
                (80, 8080),
                backends[0].1,
            )
            .service_label("shop/ghost", USE_WAYPOINT, "ghost");
        let mut apps: Vec<&str> = Vec::new();
        for (pod, app, _) in backends {
            config = config
                .pod(cluster.pod(pod), "shop")
                .pod_label(pod, "app", app);
            if !apps.contains(app) {
                let ip = [10, 96, 0, 21 + apps.len() as u8];
                config = config.service("shop", app, ip.into(), (80, 8080), app);
                apps.push(app);
            }
        }
        let meshed = Meshed::start(cluster, config, 3600)?;
        let mut started = Vec::new();
        for (pod, _, flags) in backends {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-http"));
            cmd.args(["serve", "--listen", "0.0.0.0:8080", "--name", pod])
                .args(*flags);
            let mut server = meshed.cluster.spawn(meshed.cluster.pod(pod), cmd)?;
            let line = server.next_line(Duration::from_secs(10))?;
            ensure!(line.contains("listening"), "backend {pod}: {line}");
            started.push(server);
        }
        let waypoint = Agent::start_waypoint(
            &meshed.cluster,
            "n1",
            &meshed.config_dir,
            &meshed.pki,
            ("shop", "wp"),
        )?;
        Ok(Self {
            _backends: started,
            waypoint: Some(waypoint),
            meshed,
        })
    }

    fn waypoint(&self) -> &Agent {
        self.waypoint.as_ref().expect("the waypoint runs")
    }

    /// `mesh-http load` from the client pod; its summary.
    fn load(&self, args: &[&str]) -> anyhow::Result<Value> {
        self.mesh_http("load", args)
    }

    /// `mesh-http grpc-call` (tonic) to the cart Service from the client
    /// pod; its outcome.
    fn grpc(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--to", "10.96.0.20:80"];
        all.extend_from_slice(args);
        self.mesh_http("grpc-call", &all)
    }

    /// `mesh-http <command>` from the client pod; the JSON line it prints.
    fn mesh_http(&self, command: &str, args: &[&str]) -> anyhow::Result<Value> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-http"));
        cmd.arg(command).args(args);
        let (_, out) = self
            .meshed
            .cluster
            .spawn(self.meshed.cluster.pod("client"), cmd)?
            .wait_output(WAIT)?;
        serde_json::from_str(out.trim())
            .with_context(|| format!("mesh-http {command} {args:?}: {out}"))
    }

    /// One request to the cart Service; (status, backend, sample).
    fn get(&self, path: &str, extra: &[&str]) -> anyhow::Result<(u64, String, Value)> {
        let mut args = vec!["--to", "10.96.0.20:80", "--path", path];
        args.extend_from_slice(extra);
        let summary = self.load(&args)?;
        let sample = summary["samples"][0].clone();
        ensure!(!sample.is_null(), "no response for {path}: {summary}");
        let backend = sample["headers"]["x-backend"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        Ok((sample["status"].as_u64().unwrap_or(0), backend, sample))
    }

    fn routes(&self, yaml: &str) -> anyhow::Result<()> {
        self.meshed.write_config("routes.yaml", yaml)
    }

    /// The waypoint's records of HTTP requests.
    fn requests(&self) -> anyhow::Result<Vec<FlowRecord>> {
        Ok(self
            .waypoint()
            .flow_records(&[])?
            .into_iter()
            .filter(|r| r.http.is_some())
            .collect())
    }
}

fn count(summary: &Value, section: &str, key: &str) -> u64 {
    summary[section][key].as_u64().unwrap_or(0)
}

const SPLIT: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: cart-split
  namespace: shop
spec:
  parentRefs:
  - kind: Service
    group: \"\"
    name: cart
    port: 80
  rules:
  - backendRefs:
    - name: cart-v1
      port: 80
      weight: 90
    - name: cart-v2
      port: 80
      weight: 10
";

fn canary_split() -> anyhow::Result<()> {
    let shop = Shop::start(&[("v1", "cart-v1", &[]), ("v2", "cart-v2", &[])])?;

    // No route attached: the waypoint sends everything to the Service.
    let plain = shop.load(&["--to", "10.96.0.20:80", "--count", "20"])?;
    ensure!(
        count(&plain, "statuses", "200") == 20 && count(&plain, "backends", "v1") == 20,
        "without routes every request goes to the Service's own pods: {plain}"
    );

    shop.routes(SPLIT)?;
    eventually("the split reaches v2", || {
        Ok(count(
            &shop.load(&["--to", "10.96.0.20:80", "--count", "40"])?,
            "backends",
            "v2",
        ) > 0)
    })?;
    let split = shop.load(&[
        "--to",
        "10.96.0.20:80",
        "--count",
        "2000",
        "--connections",
        "4",
    ])?;
    let (v1, v2) = (
        count(&split, "backends", "v1"),
        count(&split, "backends", "v2"),
    );
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; ±4.5 σ.
    ensure!(
        count(&split, "statuses", "200") == 2000 && v1 + v2 == 2000 && (140..=260).contains(&v2),
        "a 90/10 split over 2000 requests gave v1 {v1}, v2 {v2}: {split}"
    );

    let h2 = shop.load(&[
        "--to",
        "10.96.0.20:80",
        "--count",
        "200",
        "--connections",
        "2",
        "--h2",
    ])?;
    ensure!(
        count(&h2, "statuses", "200") == 200,
        "HTTP/2 with prior knowledge through the waypoint: {h2}"
    );
    let seen: Value = serde_json::from_str(h2["samples"][0]["body"].as_str().unwrap_or("{}"))?;
    ensure!(
        seen["version"] == "HTTP/2.0",
        "the backend got HTTP/2: {seen}"
    );

    let grpc = shop.load(&[
        "--to",
        "10.96.0.20:80",
        "--h2",
        "--grpc",
        "--path",
        "/grpc",
        "--method",
        "POST",
        "--header",
        "x-grpc-status: 7",
    ])?;
    let trailers = &grpc["samples"][0]["trailers"];
    ensure!(
        trailers["grpc-status"] == "7" && trailers["grpc-message"] == "from-backend",
        "gRPC trailers cross the waypoint intact: {grpc}"
    );

    // The records: one per request, joined to its stream's L4 flow.
    let requests = shop.requests()?;
    let http2 = requests
        .iter()
        .filter(|r| r.http.as_ref().is_some_and(|h| &*h.protocol == "HTTP/2"))
        .count();
    ensure!(http2 >= 201, "HTTP/2 request records: {http2}");
    let grpc_record = requests
        .iter()
        .find(|r| {
            r.http
                .as_ref()
                .is_some_and(|h| h.grpc_status.as_deref() == Some("7"))
        })
        .context("a record with grpc-status 7")?;
    let http = grpc_record.http.as_ref().context("checked")?;
    ensure!(
        http.route.as_deref() == Some("shop/cart-split#0")
            && http.status == 200
            && &*http.method == "POST"
            && grpc_record.source.identity.as_deref() == Some(CLIENT)
            && grpc_record.service.as_deref() == Some("shop/cart")
            && grpc_record.path == Path::Waypoint
            && grpc_record.parent.is_some(),
        "{grpc_record:#?}"
    );
    let parents = shop.waypoint().flow_records(&[])?;
    ensure!(
        parents
            .iter()
            .any(|r| Some(r.id) == grpc_record.parent && r.http.is_none()),
        "the request's L4 flow is recorded"
    );

    // The source agent tunnelled to the waypoint; the destination agent saw
    // the waypoint's identity.
    let outbound = shop.meshed.agent("n1").flow_records(&[])?;
    let to_waypoint = outbound
        .iter()
        .find(|r| r.service.as_deref() == Some("shop/cart"))
        .context("a source record for the cart Service")?;
    ensure!(
        to_waypoint.path == Path::Waypoint
            && to_waypoint.waypoint.as_deref() == Some("shop/wp")
            && to_waypoint
                .tls
                .as_ref()
                .is_some_and(|t| &*t.peer_identity == WAYPOINT),
        "{to_waypoint:#?}"
    );
    let inbound = shop.meshed.agent("n2").flow_records(&[])?;
    ensure!(
        // Admitted and relaying: the waypoint's pooled connections to a
        // backend may stay open, so the record may still be open.
        inbound.iter().any(|r| r.path == Path::Waypoint
            && r.source.identity.as_deref() == Some(WAYPOINT)
            && matches!(r.state, State::Open | State::Closed)),
        "the destination agent records the waypoint as the source: {inbound:#?}"
    );

    // meshctl's HTTP filters.
    let only = shop.waypoint().flow_records(&[
        "--http-status",
        "200",
        "--method",
        "POST",
        "--path",
        "/grpc",
    ])?;
    ensure!(
        !only.is_empty()
            && only.iter().all(|r| r
                .http
                .as_ref()
                .is_some_and(|h| &*h.method == "POST" && h.path.starts_with("/grpc"))),
        "meshctl flows --method/--path/--http-status narrow to requests: {only:#?}"
    );
    Ok(())
}

const MATCHES: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: cart-matches
  namespace: shop
spec:
  parentRefs:
  - {kind: Service, group: \"\", name: cart}
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: cart-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-added, value: yes}], remove: [x-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-resp, value: set}]}
    backendRefs: [{name: cart-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/v2}}]
    backendRefs: [{name: cart-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-canary, value: \"true\"}]}]
    backendRefs: [{name: cart-v2, port: 80}]
  - matches: [{path: {type: RegularExpression, value: \"/items/[0-9]+\"}}]
    backendRefs: [{name: cart-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /form}, method: POST}]
    backendRefs: [{name: cart-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /form}}]
    backendRefs: [{name: cart-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: v, value: \"2\"}]}]
    backendRefs: [{name: cart-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /q}}]
    backendRefs: [{name: cart-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /internal}}
    backendRefs: [{name: cart-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: broken
  namespace: shop
spec:
  parentRefs: [{kind: Service, group: \"\", name: cart}]
  rules:
  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]
    backendRefs: [{name: cart-v2, port: 80}]
";

fn matches_and_filters() -> anyhow::Result<()> {
    let shop = Shop::start(&[("v1", "cart-v1", &[]), ("v2", "cart-v2", &[])])?;
    shop.routes(MATCHES)?;
    eventually(
        "the routes apply",
        || Ok(shop.get("/exact", &[])?.1 == "v2"),
    )?;
    // (path, extra load arguments, status, backend)
    let cases: &[(&str, &[&str], u64, &str)] = &[
        ("/exact", &[], 200, "v2"),
        ("/exact/more", &[], 404, "-"),
        ("/api/list", &[], 200, "v1"),
        ("/api/v2/list", &[], 200, "v2"),
        ("/apiary", &[], 404, "-"),
        ("/api/list", &["--header", "x-canary: true"], 200, "v1"),
        ("/elsewhere", &["--header", "x-canary: true"], 200, "v2"),
        ("/items/42", &[], 200, "v2"),
        ("/items/abc", &[], 404, "-"),
        ("/form", &["--method", "POST"], 200, "v2"),
        ("/form", &[], 200, "v1"),
        ("/q?v=2", &[], 200, "v2"),
        ("/q?v=3", &[], 200, "v1"),
        ("/nowhere", &[], 404, "-"),
    ];
    for (path, extra, status, backend) in cases {
        let (got_status, got_backend, sample) = shop.get(path, extra)?;
        ensure!(
            got_status == *status && got_backend == *backend,
            "{path} {extra:?}: expected {status} from {backend}, got {got_status} from \
             {got_backend}: {sample}"
        );
    }

    let (_, _, sample) = shop.get("/api/x", &["--header", "x-secret: s3cret"])?;
    let seen: Value = serde_json::from_str(sample["body"].as_str().unwrap_or("{}"))?;
    ensure!(
        seen["headers"]["x-added"] == "yes"
            && seen["headers"].get("x-secret").is_none()
            && sample["headers"]["x-resp"] == "set",
        "header filters: backend saw {seen}, client got {sample}"
    );
    let (status, _, sample) = shop.get("/old", &[])?;
    ensure!(
        status == 301 && sample["headers"]["location"] == "http://cart.shop/new",
        "redirect: {sample}"
    );
    let (_, backend, sample) = shop.get("/rewrite/deep?x=1", &[])?;
    let seen: Value = serde_json::from_str(sample["body"].as_str().unwrap_or("{}"))?;
    ensure!(
        backend == "v1" && seen["path"] == "/internal/deep?x=1",
        "rewrite: {seen}"
    );

    // The invalid route is reported with its field and does not disturb
    // the valid one.
    let status = shop
        .waypoint()
        .wait_status("the broken route reported", |s| {
            s["config_errors"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e.as_str().is_some_and(|e| {
                        e.contains("shop/broken")
                            && e.contains("spec.rules[0].matches[0].path.value")
                    })
                })
            })
        })?;
    ensure!(
        status["config_errors"]
            .as_array()
            .is_some_and(|e| e.len() == 1),
        "{status}"
    );

    // Unroutable requests are recorded with why.
    let requests = shop.requests()?;
    let nowhere = requests
        .iter()
        .find(|r| r.http.as_ref().is_some_and(|h| h.path == "/nowhere"))
        .context("a record for /nowhere")?;
    let http = nowhere.http.as_ref().context("checked")?;
    ensure!(
        http.status == 404
            && http.route.is_none()
            && http
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("no HTTPRoute rule")),
        "{nowhere:#?}"
    );
    let exact = requests
        .iter()
        .rfind(|r| {
            r.http
                .as_ref()
                .is_some_and(|h| h.path == "/exact" && h.status == 200)
        })
        .context("a record for /exact")?;
    let http = exact.http.as_ref().context("checked")?;
    ensure!(
        http.route.as_deref() == Some("shop/cart-matches#0")
            && http.backend.as_deref() == Some("shop/cart-v2")
            && exact.destination.pod.as_deref() == Some("shop/v2"),
        "{exact:#?}"
    );
    Ok(())
}

fn resilience() -> anyhow::Result<()> {
    let shop = Shop::start(&[
        ("good", "cart-good", &[]),
        ("flaky", "flaky", &["--fail-every", "4"]),
        ("broken", "broken", &["--status", "503"]),
        ("m-good", "mixed", &[]),
        ("m-bad", "mixed", &["--status", "500"]),
    ])?;
    shop.routes(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: resilience, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: \"\", name: cart}]
  rules:
  - matches: [{path: {value: /flaky}}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: flaky, port: 80}]
  - matches: [{path: {value: /broken}}]
    retry: {codes: [503], attempts: 3, backoff: 1ms}
    backendRefs: [{name: broken, port: 80}]
  - matches: [{path: {value: /delay}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: cart-good, port: 80}]
  - matches: [{path: {value: /mixed}}]
    backendRefs: [{name: mixed, port: 80}]
",
    )?;
    eventually("the routes apply", || {
        Ok(shop.get("/flaky", &[])?.1 == "flaky")
    })?;

    // A retry on 503 succeeds: every fourth answer of `flaky` is a 503
    // (within the budget: a backend failing half the time would exhaust it,
    // by design).
    let flaky = shop.load(&["--to", "10.96.0.20:80", "--path", "/flaky", "--count", "40"])?;
    ensure!(
        count(&flaky, "statuses", "200") == 40,
        "retries hide the flaky replica: {flaky}"
    );
    let retried = shop
        .requests()?
        .iter()
        .filter(|r| {
            r.http
                .as_ref()
                .is_some_and(|h| h.path == "/flaky" && h.retries > 0)
        })
        .count();
    ensure!(retried >= 8, "requests that needed a retry: {retried}");

    // A storm against a broken backend: retries stay within the budget
    // (20 % of requests + 10 per window) instead of tripling the load.
    let storm = shop.load(&[
        "--to",
        "10.96.0.20:80",
        "--path",
        "/broken",
        "--count",
        "200",
        "--connections",
        "4",
    ])?;
    ensure!(count(&storm, "statuses", "503") == 200, "{storm}");
    let retries: u32 = shop
        .requests()?
        .iter()
        .filter_map(|r| r.http.as_ref().filter(|h| h.path == "/broken"))
        .map(|h| h.retries)
        .sum();
    ensure!(
        (10..=50).contains(&retries),
        "retries during the storm: {retries} (unbounded would be 600, the budget allows 50)"
    );

    // The request timeout answers 504 without waiting for the backend.
    let started = std::time::Instant::now();
    let (status, _, sample) = shop.get("/delay/3000", &[])?;
    ensure!(
        status == 504 && started.elapsed() < Duration::from_millis(2500),
        "timeout after {:?}: {sample}",
        started.elapsed()
    );

    // An endpoint answering 500 is ejected after 5 in a row, and comes back.
    let mixed = shop.load(&["--to", "10.96.0.20:80", "--path", "/mixed", "--count", "60"])?;
    let bad = count(&mixed, "statuses", "500");
    ensure!(
        (1..=8).contains(&bad) && count(&mixed, "statuses", "200") == 60 - bad,
        "ejection keeps the failing endpoint out after a few failures: {mixed}"
    );
    std::thread::sleep(Duration::from_secs(6));
    let after = shop.load(&["--to", "10.96.0.20:80", "--path", "/mixed", "--count", "20"])?;
    ensure!(
        count(&after, "statuses", "500") >= 1,
        "the ejected endpoint gets traffic again after its ejection: {after}"
    );
    Ok(())
}

fn edges() -> anyhow::Result<()> {
    let mut shop = Shop::start(&[("v1", "cart-v1", &[])])?;

    // WebSocket-style upgrade: 101, then raw bytes both ways.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-http"));
    cmd.args(["upgrade", "--to", "10.96.0.20:80"]);
    let (_, out) = shop
        .meshed
        .cluster
        .spawn(shop.meshed.cluster.pod("client"), cmd)?
        .wait_output(WAIT)?;
    let upgraded: Value = serde_json::from_str(out.trim()).with_context(|| out.clone())?;
    ensure!(
        upgraded["echoed"] == "hello through the waypoint",
        "{upgraded}"
    );

    // Smuggling and oversized heads are refused and recorded.
    let raw = |request: &str| -> anyhow::Result<Value> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-http"));
        cmd.args(["raw", "--to", "10.96.0.20:80", "--request", request]);
        let (_, out) = shop
            .meshed
            .cluster
            .spawn(shop.meshed.cluster.pod("client"), cmd)?
            .wait_output(WAIT)?;
        serde_json::from_str(out.trim()).with_context(|| out.clone())
    };
    // Content-Length beside Transfer-Encoding: chunked is handled as RFC
    // 9112 §6.1 says (chunked wins, the connection closes after the
    // answer), so the bytes after the chunked body are never read as a
    // second request: nothing is smuggled past the waypoint.
    let smuggled = raw(
        "POST / HTTP/1.1\\r\\nHost: cart.shop\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: \
         chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: cart.shop\\r\\n\\r\\n",
    )?;
    let answer = smuggled["response"].as_str().unwrap_or_default();
    ensure!(
        answer.matches("HTTP/1.1 ").count() == 1 && answer.contains("connection: close"),
        "CL + TE: one answer, then the connection closes: {smuggled}"
    );
    let two_lengths = raw(
        "POST / HTTP/1.1\\r\\nHost: cart.shop\\r\\nContent-Length: 5\\r\\nContent-Length: 6\\r\\n\\r\\nhello",
    )?;
    ensure!(
        two_lengths["status"] == 400,
        "two Content-Lengths: {two_lengths}"
    );
    let big = format!(
        "GET / HTTP/1.1\\r\\nHost: cart.shop\\r\\nx-big: {}\\r\\n\\r\\n",
        "a".repeat(80 << 10)
    );
    let oversized = raw(&big)?;
    ensure!(
        oversized["status"] == 431,
        "oversized head: {}",
        oversized["status"]
    );
    eventually("the refusals are recorded", || {
        let refused: Vec<_> = shop
            .requests()?
            .into_iter()
            .filter(|r| r.state == State::Refused)
            .collect();
        Ok(refused.len() >= 2)
    })?;
    ensure!(
        !shop.requests()?.iter().any(|r| r
            .http
            .as_ref()
            .is_some_and(|h| h.path.starts_with("/admin"))),
        "the smuggled request never reached routing"
    );

    // A header claiming another identity changes nothing: the record (and
    // later L7 policy) use the mTLS peer.
    shop.get(
        "/",
        &[
            "--header",
            "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/shop/sa/admin",
        ],
    )?;
    ensure!(
        shop.requests()?
            .iter()
            .filter(|r| r.http.is_some() && r.state == State::Closed)
            .all(|r| r.source.identity.as_deref() == Some(CLIENT)),
        "every request is attributed to the client's mTLS identity"
    );

    // A body streams through without being held: 1 GiB up, and the
    // waypoint's peak memory (VmHWM, so a buffer freed before the check
    // still counts) grows by far less than the body.
    let before = status_kib(shop.waypoint().process.pid(), "VmRSS")?;
    let upload = shop.load(&[
        "--to",
        "10.96.0.20:80",
        "--path",
        "/sink",
        "--method",
        "POST",
        "--body-bytes",
        &(1024 * MIB).to_string(),
    ])?;
    let seen: Value = serde_json::from_str(upload["samples"][0]["body"].as_str().unwrap_or("{}"))?;
    let peak = status_kib(shop.waypoint().process.pid(), "VmHWM")?;
    ensure!(
        seen["received"] == 1024 * MIB,
        "the backend received {seen}"
    );
    ensure!(
        peak.saturating_sub(before) < 48 * 1024,
        "waypoint peak RSS grew {before} → {peak} KiB over a 1 GiB upload"
    );

    // A label naming a waypoint that does not exist fails the connection.
    let ghost = shop.load(&["--to", "10.96.0.30:80"])?;
    ensure!(
        ghost["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "a missing waypoint must not be bypassed: {ghost}"
    );
    let missing = shop
        .meshed
        .agent("n1")
        .flow_records(&[])?
        .into_iter()
        .find(|r| r.service.as_deref() == Some("shop/ghost"))
        .context("a source record for the ghost Service")?;
    ensure!(
        missing.state == State::Error
            && missing.waypoint.as_deref() == Some("shop/ghost")
            && missing
                .error
                .as_deref()
                .is_some_and(|e| e.contains("waypoint shop/ghost")),
        "{missing:#?}"
    );

    // A waypoint that is down fails connections too, naming it.
    drop(shop.waypoint.take());
    let down = shop.load(&["--to", "10.96.0.20:80"])?;
    ensure!(
        down["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    eventually("a record of the waypoint being down", || {
        Ok(shop.meshed.agent("n1").flow_records(&[])?.iter().any(|r| {
            r.state == State::Error
                && r.service.as_deref() == Some("shop/cart")
                && r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("waypoint shop/wp"))
        }))
    })?;
    Ok(())
}

const NO_ADMIN: &str = "apiVersion: nodemesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: cart}]
  action: DENY
  rules:
  - to: {methods: [DELETE]}
  - to: {paths: [\"/admin*\"]}
  - when: [{key: \"request.headers[x-debug]\", values: [\"on\"]}]
  - from: {identities: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}
    to: {paths: [\"/private*\"]}
";

fn l7_policy() -> anyhow::Result<()> {
    let shop = Shop::start(&[("v1", "cart-v1", &[])])?;
    shop.meshed.write_config("policy.yaml", NO_ADMIN)?;
    eventually("the policy applies", || {
        Ok(shop.get("/admin", &[])?.0 == 403)
    })?;
    // (path, extra arguments, status, deciding rule)
    let cases: &[(&str, &[&str], u64, Option<usize>)] = &[
        ("/cart", &["--method", "DELETE"], 403, Some(0)),
        ("/admin/users", &[], 403, Some(1)),
        ("/cart", &["--header", "x-debug: on"], 403, Some(2)),
        ("/cart", &["--header", "x-debug: off"], 200, None),
        // A header claiming another identity changes nothing.
        (
            "/private/report",
            &[
                "--header",
                "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/shop/sa/admin",
            ],
            403,
            Some(3),
        ),
        ("/cart", &[], 200, None),
    ];
    for (path, extra, status, rule) in cases {
        let (got, _, sample) = shop.get(path, extra)?;
        ensure!(
            got == *status,
            "{path} {extra:?}: expected {status}, got {got}: {sample}"
        );
        if let Some(rule) = rule {
            let body = sample["body"].as_str().unwrap_or_default();
            ensure!(
                body.contains(&format!("denied by shop/no-admin rule {rule}")),
                "{path} {extra:?}: the answer names the rule: {body}"
            );
        }
    }
    let denied: Vec<FlowRecord> = shop
        .requests()?
        .into_iter()
        .filter(|r| r.state == State::Denied)
        .collect();
    ensure!(denied.len() >= 4, "denied requests recorded: {denied:#?}");
    let private = denied
        .iter()
        .find(|r| {
            r.http
                .as_ref()
                .is_some_and(|h| h.path.starts_with("/private"))
        })
        .context("the /private denial")?;
    let verdict = private.verdict.as_ref().context("a verdict")?;
    ensure!(
        verdict.policy.as_deref() == Some("shop/no-admin")
            && verdict.rule == Some(3)
            && private.source.identity.as_deref() == Some(CLIENT)
            && private.http.as_ref().is_some_and(|h| h.status == 403),
        "{private:#?}"
    );

    // Istio-shaped request metrics, from the same records.
    let text = scrape_unix(&shop.waypoint().admin_socket())?;
    let labels = [
        ("reporter", "waypoint"),
        ("destination_service", "shop/cart"),
        ("source_principal", CLIENT),
    ];
    let forbidden = crate::flows::metric(
        &text,
        "istio_requests_total",
        &[labels[0], labels[1], labels[2], ("response_code", "403")],
    )?;
    let ok = crate::flows::metric(
        &text,
        "istio_requests_total",
        &[labels[0], labels[1], ("response_code", "200")],
    )?;
    let observed =
        crate::flows::metric(&text, "istio_request_duration_milliseconds_count", &labels)?;
    ensure!(
        forbidden >= 4.0 && ok >= 2.0 && observed >= forbidden + ok,
        "istio_requests_total 403 = {forbidden}, 200 = {ok}, durations = {observed}"
    );
    Ok(())
}

/// `GET /metrics` on an admin socket.
fn scrape_unix(socket: &std::path::Path) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_owned())
}

const LIMITS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: \"\", name: cart}]
  rules:
  - name: limited
    matches: [{path: {value: /limited}}]
    backendRefs: [{name: cart-v1, port: 80}]
  - name: aborted
    matches: [{path: {value: /aborted}}]
    backendRefs: [{name: cart-v1, port: 80}]
  - name: delayed
    matches: [{path: {value: /delayed}}]
    backendRefs: [{name: cart-v1, port: 80}]
---
apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: per-client, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart, sectionName: limited}
  rateLimit:
    perSource: {requestsPerUnit: 5, unit: Minute, burst: 5}
---
apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: abort, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart, sectionName: aborted}
  fault:
    abort: {status: 503, percent: 100}
---
apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: delay, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart, sectionName: delayed}
  fault:
    delay: {fixed: 400ms}
---
apiVersion: nodemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: broken, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: cart}
  fault:
    abort: {status: 700}
";

fn limits_and_faults() -> anyhow::Result<()> {
    let shop = Shop::start(&[("v1", "cart-v1", &[])])?;
    shop.routes(LIMITS)?;
    eventually("the route applies", || {
        Ok(shop.get("/aborted", &[])?.0 == 503)
    })?;
    let limited = shop.load(&[
        "--to",
        "10.96.0.20:80",
        "--path",
        "/limited",
        "--count",
        "10",
    ])?;
    ensure!(
        count(&limited, "statuses", "200") == 5 && count(&limited, "statuses", "429") == 5,
        "a per-source bucket of 5 answers 5 requests, then 429: {limited}"
    );
    let (status, _, sample) = shop.get("/limited", &[])?;
    let retry_after: u64 = sample["headers"]["retry-after"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .context("a retry-after header")?;
    ensure!(status == 429 && (1..=12).contains(&retry_after), "{sample}");
    let started = std::time::Instant::now();
    let (status, backend, _) = shop.get("/delayed", &[])?;
    ensure!(
        status == 200 && backend == "v1" && started.elapsed() >= Duration::from_millis(400),
        "a 400 ms delay fault: {status} after {:?}",
        started.elapsed()
    );
    let records = shop.requests()?;
    let refused = records
        .iter()
        .find(|r| r.http.as_ref().is_some_and(|h| h.status == 429))
        .context("a 429 record")?;
    ensure!(
        refused
            .http
            .as_ref()
            .and_then(|h| h.reason.as_deref())
            .is_some_and(|r| r.contains("shop/per-client")),
        "{refused:#?}"
    );
    let status = shop
        .waypoint()
        .wait_status("the invalid TrafficPolicy reported", |s| {
            s["config_errors"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e.as_str().is_some_and(|e| {
                        e.contains("shop/broken") && e.contains("spec.fault.abort.status")
                    })
                })
            })
        })?;
    ensure!(!status.is_null());
    Ok(())
}

const GREETER: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: greeter
  namespace: shop
  creationTimestamp: \"2024-01-01T00:00:00Z\"
spec:
  parentRefs: [{kind: Service, group: \"\", name: cart}]
  rules:
  - matches: [{method: {service: nodemesh.test.Greeter, method: Hello}}]
    backendRefs: [{name: cart-v1, port: 80}]
  - matches: [{method: {service: nodemesh.test.Greeter}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: greeter-rest}]}
    backendRefs: [{name: cart-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: \"\", name: cart}]
  rules:
  - matches: [{method: {service: nodemesh/test}}]
    backendRefs: [{name: cart-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: late
  namespace: shop
  creationTimestamp: \"2025-01-01T00:00:00Z\"
spec:
  parentRefs: [{kind: Service, group: \"\", name: cart}]
  rules:
  - backendRefs: [{name: cart-v2, port: 80}]
";

/// The gRPC record of `path` whose grpc-status is `status`.
fn grpc_record<'a>(
    requests: &'a [FlowRecord],
    path: &str,
    status: &str,
) -> anyhow::Result<&'a FlowRecord> {
    requests
        .iter()
        .find(|r| {
            r.http
                .as_ref()
                .is_some_and(|h| h.path == path && h.grpc_status.as_deref() == Some(status))
        })
        .with_context(|| format!("a record of {path} with grpc-status {status}: {requests:#?}"))
}

fn grpc_routes() -> anyhow::Result<()> {
    let shop = Shop::start(&[("v1", "cart-v1", &[]), ("v2", "cart-v2", &[])])?;
    shop.routes(GREETER)?;
    eventually("the GRPCRoute applies", || {
        Ok(shop.grpc(&["--method", "Count"])?["replies"][0]["backend"] == "v2")
    })?;

    // Split by method: Hello to v1, the rest of the service to v2.
    let hello = shop.grpc(&["--name", "ada"])?;
    ensure!(
        hello["code"] == 0
            && hello["replies"][0]["backend"] == "v1"
            && hello["replies"][0]["message"] == "hello ada",
        "unary Hello through the waypoint: {hello}"
    );
    let count = shop.grpc(&["--method", "Count", "--count", "3"])?;
    let replies = count["replies"].as_array().context("replies")?;
    ensure!(
        count["code"] == 0
            && replies.len() == 3
            && replies
                .iter()
                .enumerate()
                .all(|(i, r)| r["backend"] == "v2" && r["index"] == i)
            && count["metadata"]["x-route"] == "greeter-rest",
        "server streaming Count, with the rule's response header: {count}"
    );

    // Errors cross intact: in the trailers after streamed replies, and as
    // a trailers-only answer to a unary call.
    let failed = shop.grpc(&["--method", "Count", "--count", "2", "--fail", "gone away"])?;
    ensure!(
        failed["code"] == 5
            && failed["message"] == "gone away"
            && failed["replies"].as_array().is_some_and(|r| r.len() == 2)
            && failed["metadata"]["x-backend"] == "v2"
            && failed["metadata"]["x-detail"] == "from-greeter",
        "NOT_FOUND in the trailers after two replies: {failed}"
    );
    let missing = shop.grpc(&["--fail", "no such greeting"])?;
    ensure!(
        missing["code"] == 5
            && missing["message"] == "no such greeting"
            && missing["metadata"]["x-backend"] == "v1"
            && missing["metadata"]["x-detail"] == "from-greeter",
        "a trailers-only NOT_FOUND: {missing}"
    );

    // No rule takes the call: the waypoint answers UNIMPLEMENTED itself.
    let other = shop.grpc(&["--service", "nodemesh.test.Other"])?;
    ensure!(
        other["code"] == 12
            && other["message"]
                .as_str()
                .is_some_and(|m| m.contains("no GRPCRoute rule for shop/cart")),
        "an unroutable call: {other}"
    );
    // The younger HTTPRoute lost the conflict, so plain HTTP finds no rule.
    let (status, _, sample) = shop.get("/", &[])?;
    ensure!(status == 404, "plain HTTP next to a GRPCRoute: {sample}");

    // The records: method, path, route, backend and gRPC status per call.
    let requests = shop.requests()?;
    let hello = grpc_record(&requests, "/nodemesh.test.Greeter/Hello", "0")?;
    let http = hello.http.as_ref().context("checked")?;
    ensure!(
        &*http.method == "POST"
            && &*http.protocol == "HTTP/2"
            && http.status == 200
            && http.route.as_deref() == Some("shop/greeter#0")
            && http.backend.as_deref() == Some("shop/cart-v1")
            && hello.destination.pod.as_deref() == Some("shop/v1")
            && hello.source.identity.as_deref() == Some(CLIENT),
        "{hello:#?}"
    );
    let failed = grpc_record(&requests, "/nodemesh.test.Greeter/Count", "5")?;
    let http = failed.http.as_ref().context("checked")?;
    ensure!(
        http.route.as_deref() == Some("shop/greeter#1")
            && http.backend.as_deref() == Some("shop/cart-v2"),
        "{failed:#?}"
    );
    let other = grpc_record(&requests, "/nodemesh.test.Other/Hello", "12")?;
    let http = other.http.as_ref().context("checked")?;
    ensure!(
        http.route.is_none()
            && http.backend.is_none()
            && http
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("no GRPCRoute rule")),
        "{other:#?}"
    );

    // The invalid GRPCRoute and the rejected HTTPRoute are reported by
    // field; neither disturbed the valid route.
    let reported = |s: &Value, what: &str, field: &str| {
        s["config_errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e.as_str()
                    .is_some_and(|e| e.starts_with(&format!("{what} {field}: ")))
            })
        })
    };
    let status = shop
        .waypoint()
        .wait_status("the route problems reported", |s| {
            reported(
                s,
                "GRPCRoute shop/broken",
                "spec.rules[0].matches[0].method.service",
            ) && reported(s, "HTTPRoute shop/late", "spec.hostnames")
        })?;
    ensure!(
        status["config_errors"]
            .as_array()
            .is_some_and(|e| e.len() == 2),
        "{status}"
    );
    Ok(())
}
