//! `mesh-http`: the HTTP side of the test traffic, for the waypoint's
//! scenarios. `serve` is a backend speaking HTTP/1.1 and HTTP/2 (detected
//! per connection) that says who it is and what it saw, and serves the
//! tonic Greeter ([`nodemesh_tests::greeter`]); `load` sends requests and
//! prints one JSON summary line (statuses, backends, samples, latency
//! percentiles and requests/s, which the benchmark reads); `grpc-call`
//! makes one Greeter call with tonic and prints its outcome.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{
    BodyExt as _, Empty, Full,
    combinators::{BoxBody, UnsyncBoxBody},
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodemesh_tests::greeter;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type Body = BoxBody<Bytes, hyper::Error>;
/// What `serve` answers with: its own bodies or the Greeter's.
type ServedBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(about = "HTTP test traffic: a self-describing backend and a load client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP/1.1 and HTTP/2 (prior knowledge). Every response carries
    /// `x-backend: <name>`; the body is JSON with the method, path, host and
    /// request headers seen. Paths: `/status/<code>`, `/delay/<ms>`,
    /// `/sink` (reads the body, answers its length and SHA-256),
    /// `/grpc` (answers a gRPC-framed message with trailers, `grpc-status`
    /// from the request header `x-grpc-status`, default 0),
    /// `/nodemesh.test.Greeter/*` (the tonic Greeter); a request with
    /// `Upgrade` gets `101` and then an echo of the raw bytes.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        /// Answer every request with this status instead (a broken replica).
        #[arg(long)]
        status: Option<u16>,
        /// Answer every n-th request 503 (a flaky replica).
        #[arg(long)]
        fail_every: Option<u64>,
    },
    /// Send `--count` requests over `--connections` keep-alive connections
    /// and print a summary line.
    Load {
        /// Where to connect (e.g. a Service address).
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "cart.shop")]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// `name: value`; may repeat.
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        connections: u64,
        /// HTTP/2 with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        h2: bool,
        /// Send this many bytes of body (streamed, generated).
        #[arg(long, default_value_t = 0)]
        body_bytes: u64,
        /// Speak gRPC framing (content-type application/grpc, te: trailers).
        #[arg(long)]
        grpc: bool,
    },
    /// Ask for an upgrade, then send `--message` and expect it echoed.
    Upgrade {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "cart.shop")]
        host: String,
        #[arg(long, default_value = "hello through the waypoint")]
        message: String,
    },
    /// One call to the Greeter with tonic; prints the code, message,
    /// replies and metadata as JSON.
    GrpcCall {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "cart.shop")]
        host: String,
        #[arg(long, default_value = greeter::SERVICE)]
        service: String,
        /// `Hello` (unary) or `Count` (server streaming).
        #[arg(long, default_value = "Hello")]
        method: String,
        #[arg(long, default_value = "client")]
        name: String,
        /// Replies Count streams.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Ask the server to end with NOT_FOUND and this message.
        #[arg(long, default_value = "")]
        fail: String,
    },
    /// Send raw bytes (a hand-made request) and print what comes back.
    Raw {
        #[arg(long)]
        to: SocketAddr,
        /// The request, with `\r\n` written as `\r\n` escapes.
        #[arg(long)]
        request: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                listen,
                name,
                status,
                fail_every,
            } => serve(listen, name, status, fail_every).await,
            Command::Load {
                to,
                host,
                path,
                method,
                header,
                count,
                connections,
                h2,
                body_bytes,
                grpc,
            } => {
                let spec = Arc::new(LoadSpec {
                    host,
                    path,
                    method,
                    headers: header,
                    h2,
                    body_bytes,
                    grpc,
                });
                load(to, spec, count, connections).await
            }
            Command::Upgrade { to, host, message } => upgrade(to, &host, &message).await,
            Command::Raw { to, request } => raw(to, &request).await,
            Command::GrpcCall {
                to,
                host,
                service,
                method,
                name,
                count,
                fail,
            } => {
                let request = greeter::HelloRequest { name, count, fail };
                let outcome = greeter::call(to, &host, &service, &method, request).await?;
                println!("{outcome}");
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
        std::process::exit(1);
    }
}

async fn serve(
    listen: SocketAddr,
    name: String,
    status: Option<u16>,
    fail_every: Option<u64>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "{}",
        serde_json::json!({ "event": "listening", "addr": listener.local_addr()? })
    );
    let seen = Arc::new(AtomicU64::new(0));
    let name = Arc::new(name);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (name, seen) = (Arc::clone(&name), Arc::clone(&seen));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (name, seen) = (Arc::clone(&name), Arc::clone(&seen));
                async move {
                    if greeter::serves(req.uri().path()) {
                        let response = greeter::answer(&name, req).await;
                        return Ok::<Response<ServedBody>, Infallible>(
                            response.map(|b| b.map_err(Into::into).boxed_unsync()),
                        );
                    }
                    let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                    let forced =
                        status.or_else(|| fail_every.filter(|every| n % every == 0).map(|_| 503));
                    let response = answer(&name, req, forced).await;
                    Ok(response.map(|b| b.map_err(Into::into).boxed_unsync()))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

async fn answer(name: &str, mut req: Request<Incoming>, forced: Option<u16>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut headers = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_insert_with(|| String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let described = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(ToString::to_string),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut status = StatusCode::OK;
    let mut body = full(described.to_string());
    if req.headers().contains_key(header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return response;
    }
    if let Some(code) = forced {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    } else if path == "/sink" {
        let (mut bytes, mut hasher) = (0u64, <sha2::Sha256 as sha2::Digest>::new());
        let mut incoming = req.into_body();
        while let Some(Ok(frame)) = incoming.frame().await {
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
                sha2::Digest::update(&mut hasher, data);
            }
        }
        let sha = hex::encode(sha2::Digest::finalize(hasher));
        body = full(
            serde_json::json!({ "backend": name, "received": bytes, "sha256": sha }).to_string(),
        );
    } else if path == "/grpc" {
        let code = req
            .headers()
            .get("x-grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        let message = b"pong";
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from_str(&code).unwrap_or(HeaderValue::from_static("2")),
        );
        trailers.insert("grpc-message", HeaderValue::from_static("from-backend"));
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(2);
        tokio::spawn(async move {
            if tx.send_data(Bytes::from(framed)).await.is_ok() {
                let _ = tx.send_trailers(trailers).await;
            }
        });
        body = rx.boxed();
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "x-backend",
            HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("?")),
        );
        return response;
    }
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        "x-backend",
        HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("?")),
    );
    response
}

struct LoadSpec {
    host: String,
    path: String,
    method: String,
    headers: Vec<String>,
    h2: bool,
    body_bytes: u64,
    grpc: bool,
}

/// One response, as the summary keeps a few of them.
#[derive(Serialize)]
struct Sample {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
    trailers: BTreeMap<String, String>,
}

#[derive(Serialize, Default)]
struct Summary {
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    backends: BTreeMap<String, u64>,
    errors: Vec<String>,
    samples: Vec<Sample>,
    elapsed_ms: u64,
    /// Answered requests per second of the whole run (dials included).
    requests_per_second: f64,
    /// Latency of answered requests, from sending to the end of the body
    /// (a connection's dial is not part of its first request).
    p50_us: u64,
    p99_us: u64,
}

/// Request latencies in microseconds.
type Latencies = hdrhistogram::Histogram<u64>;

fn latencies() -> Latencies {
    Latencies::new(3).expect("3 significant figures")
}

async fn load(
    to: SocketAddr,
    spec: Arc<LoadSpec>,
    count: u64,
    connections: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let connections = connections.clamp(1, count.max(1));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = count / connections + u64::from(c < count % connections);
        let spec = Arc::clone(&spec);
        tasks.push(tokio::spawn(async move {
            one_connection(to, &spec, share).await
        }));
    }
    let mut summary = Summary::default();
    let mut all = latencies();
    for task in tasks {
        let (part, part_latencies) = task.await?;
        all.add(&part_latencies)?;
        summary.requests += part.requests;
        for (k, v) in part.statuses {
            *summary.statuses.entry(k).or_default() += v;
        }
        for (k, v) in part.backends {
            *summary.backends.entry(k).or_default() += v;
        }
        summary.errors.extend(part.errors);
        summary.samples.extend(part.samples);
    }
    summary.samples.truncate(5);
    let elapsed = started.elapsed();
    summary.elapsed_ms = elapsed.as_millis() as u64;
    summary.p50_us = all.value_at_quantile(0.5);
    summary.p99_us = all.value_at_quantile(0.99);
    summary.requests_per_second = all.len() as f64 / elapsed.as_secs_f64();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

async fn dial(to: SocketAddr, h2: bool) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(to).await?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    Ok(if h2 {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn.with_upgrades());
        Sender::H1(sender)
    })
}

fn request(spec: &LoadSpec) -> anyhow::Result<Request<Body>> {
    let uri = if spec.h2 {
        format!("http://{}{}", spec.host, spec.path)
    } else {
        spec.path.clone()
    };
    let mut builder = Request::builder().method(spec.method.as_str()).uri(uri);
    if !spec.h2 {
        builder = builder.header(header::HOST, &spec.host);
    }
    for h in &spec.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected `name: value`"))?;
        builder = builder.header(HeaderName::try_from(k.trim())?, v.trim());
    }
    let body = if spec.grpc {
        builder = builder
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers");
        let mut framed = vec![0u8, 0, 0, 0, 4];
        framed.extend_from_slice(b"ping");
        full(framed)
    } else if spec.body_bytes > 0 {
        generated(spec.body_bytes)
    } else {
        Empty::new().map_err(|e| match e {}).boxed()
    };
    Ok(builder.body(body)?)
}

/// `bytes` of a fixed pattern, streamed in 64 KiB chunks (never held whole).
fn generated(bytes: u64) -> Body {
    let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![0x5au8; 64 << 10]);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if tx.send_data(chunk.slice(..n)).await.is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    rx.boxed()
}

async fn one_connection(to: SocketAddr, spec: &LoadSpec, count: u64) -> (Summary, Latencies) {
    let mut summary = Summary::default();
    let mut answered = latencies();
    let mut sender = None;
    for _ in 0..count {
        summary.requests += 1;
        let outcome = async {
            if sender.is_none() {
                sender = Some(dial(to, spec.h2).await?);
            }
            let sent = Instant::now();
            let req = request(spec)?;
            let response = match sender.as_mut().expect("dialled above") {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let status = response.status().as_u16();
            let mut headers = BTreeMap::new();
            for (k, v) in response.headers() {
                headers.insert(
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
            }
            let mut body = Vec::new();
            let mut trailers = BTreeMap::new();
            let mut incoming = response.into_body();
            while let Some(frame) = incoming.frame().await {
                let frame = frame?;
                if let Some(t) = frame.trailers_ref() {
                    for (k, v) in t {
                        trailers.insert(
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        );
                    }
                } else if let Ok(data) = frame.into_data()
                    && body.len() < 4096
                {
                    body.extend_from_slice(&data);
                }
            }
            let latency = sent.elapsed();
            let sample = Sample {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                trailers,
            };
            anyhow::Ok((sample, latency))
        }
        .await;
        match outcome {
            Ok((sample, latency)) => {
                if let Err(e) = answered.record(latency.as_micros() as u64) {
                    summary.errors.push(format!("recording a latency: {e}"));
                }
                *summary.statuses.entry(sample.status).or_default() += 1;
                let backend = sample
                    .headers
                    .get("x-backend")
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                *summary.backends.entry(backend).or_default() += 1;
                if summary.samples.len() < 5 {
                    summary.samples.push(sample);
                }
            }
            Err(e) => {
                summary.errors.push(format!("{e:#}"));
                sender = None;
            }
        }
    }
    (summary, answered)
}

async fn upgrade(to: SocketAddr, host: &str, message: &str) -> anyhow::Result<()> {
    let Sender::H1(mut sender) = dial(to, false).await? else {
        unreachable!("dialled HTTP/1.1");
    };
    let req = Request::builder()
        .uri("/ws")
        .header(header::HOST, host)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .body(Empty::new().map_err(|e| match e {}).boxed())?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    anyhow::ensure!(
        status == 101,
        "expected 101 Switching Protocols, got {status}"
    );
    let mut io = TokioIo::new(hyper::upgrade::on(response).await?);
    io.write_all(message.as_bytes()).await?;
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut echoed)).await??;
    println!(
        "{}",
        serde_json::json!({ "status": status, "echoed": String::from_utf8_lossy(&echoed) })
    );
    Ok(())
}

async fn raw(to: SocketAddr, request: &str) -> anyhow::Result<()> {
    let mut tcp = tokio::net::TcpStream::connect(to).await?;
    tcp.write_all(request.replace("\\r\\n", "\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    println!(
        "{}",
        serde_json::json!({ "status": status, "response": text })
    );
    Ok(())
}
