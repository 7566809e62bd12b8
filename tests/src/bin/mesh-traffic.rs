//! `mesh-traffic`: the test and demo traffic tool. Prints one JSON line per
//! event (see `nodemesh_tests::traffic::Event`), so tests parse what happened.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use clap::{Parser, Subcommand};
use nodemesh_tests::traffic::{Event, Pause, exchange, exchange_timed};

#[derive(Parser)]
#[command(about = "Send and check seeded traffic: a server and a client that hash every byte")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections; on each, send `--reply-bytes` and read to EOF.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        reply_bytes: u64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
    /// Measure connection churn: `--count` times in a row, connect, send 100
    /// bytes, read the reply to EOF, close; prints one JSON line with
    /// percentiles in microseconds of the whole cycle and of the time from
    /// starting `connect()` to the reply's first byte (the server must send
    /// one: `serve --reply-bytes`).
    Churn {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
    /// Accept connections and send back every byte received, until EOF
    /// (the server side of `rr`).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Accept connections and discard what they send, until EOF (the
    /// server side of `bulk`: no hashing, so it costs the machine little).
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// A minimal HTTP/1.1 server: answers every request with
    /// `hello from <--name>` and closes (the demo's web apps).
    Http {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// Bulk throughput: `--streams` connections each sending as fast as
    /// they can for `--seconds`, then half-closing; prints one JSON line
    /// with the bytes sent and the time taken (to a `serve` sink).
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        streams: u32,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Open `--count` connections and hold them idle for `--seconds`
    /// (prints `{"held": N}` once all are open).
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        seconds: u64,
    },
    /// Request/response latency: `--connections` persistent connections at
    /// once, each sending `--requests` requests of `--size` bytes and waiting
    /// for the echo before the next; prints one JSON line with requests/s
    /// and latency percentiles in microseconds (an HDR histogram).
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        connections: u32,
        #[arg(long, default_value_t = 1000)]
        requests: u32,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Connect, send `--send-bytes` and read to EOF.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 0)]
        send_bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up connecting after this many seconds.
        #[arg(long, default_value_t = 10)]
        connect_timeout: u64,
        /// Pause sending for `--pause-ms` after this many bytes (printing a
        /// `paused` event), e.g. to change the mesh under an open connection.
        #[arg(long, requires = "pause_ms")]
        pause_after: Option<u64>,
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Open this many connections at once (one report line each); the
        /// exit code is 0 only if all of them succeeded.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
    },
}

fn main() {
    let ok = match Cli::parse().command {
        Command::Serve {
            listen,
            reply_bytes,
            seed,
        } => serve(listen, reply_bytes, seed),
        Command::Churn { to, count } => churn(to, count),
        Command::Echo { listen } => echo(listen),
        Command::Sink { listen } => accept_loop(listen, |mut stream| {
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
        }),
        Command::Http { listen, name } => http(listen, name),
        Command::Bulk {
            to,
            streams,
            seconds,
        } => bulk(to, streams, Duration::from_secs_f64(seconds)),
        Command::Hold { to, count, seconds } => hold(to, count, Duration::from_secs(seconds)),
        Command::Rr {
            to,
            connections,
            requests,
            size,
        } => rr(to, connections, requests, size),
        Command::Connect {
            to,
            send_bytes,
            seed,
            connect_timeout,
            pause_after,
            pause_ms,
            parallel,
        } => {
            let timeout = Duration::from_secs(connect_timeout);
            let pause = pause_after.map(|after| Pause {
                after,
                duration: Duration::from_millis(pause_ms),
                announce: || emit(&Event::Paused),
            });
            let workers: Vec<_> = (0..parallel)
                .map(|_| std::thread::spawn(move || connect(to, send_bytes, seed, timeout, pause)))
                .collect();
            workers.into_iter().all(|w| w.join().unwrap_or(false))
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(event).expect("events serialize")
    );
    let _ = out.flush();
}

/// Binds, announces `listening`, and runs `handle` on a thread per
/// accepted connection, forever.
fn accept_loop(listen: SocketAddr, handle: impl Fn(TcpStream) + Copy + Send + 'static) -> bool {
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            emit(&Event::Error {
                error: format!("bind {listen}: {e}"),
            });
            return false;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    emit(&Event::Listening { addr });
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                std::thread::spawn(move || handle(stream));
            }
            Err(e) => emit(&Event::Error {
                error: format!("accept: {e}"),
            }),
        }
    }
    true
}

fn serve(listen: SocketAddr, reply_bytes: u64, seed: u64) -> bool {
    accept_loop(listen, move |stream| {
        report(exchange(&stream, reply_bytes, seed, None));
    })
}

fn echo(listen: SocketAddr) -> bool {
    accept_loop(listen, |mut stream| {
        if let Ok(mut reader) = stream.try_clone() {
            let _ = std::io::copy(&mut reader, &mut stream);
        }
    })
}

fn http(listen: SocketAddr, name: String) -> bool {
    let body: &'static str = Box::leak(format!("hello from {name}\n").into_boxed_str());
    let name: &'static str = Box::leak(name.into_boxed_str());
    accept_loop(listen, move |mut stream| {
        use std::io::Read as _;
        // Read the request head (a GET has no body), then answer.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             x-backend: {name}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

fn bulk(to: SocketAddr, streams: u32, duration: Duration) -> bool {
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                let chunk = vec![0x5au8; 256 * 1024];
                let mut sent = 0u64;
                while started.elapsed() < duration {
                    stream.write_all(&chunk)?;
                    sent += chunk.len() as u64;
                }
                stream.shutdown(std::net::Shutdown::Write)?;
                // Wait for the sink's EOF: every byte was received.
                let mut rest = Vec::new();
                std::io::Read::read_to_end(&mut stream, &mut rest)?;
                Ok(sent)
            })
        })
        .collect();
    let mut bytes = 0;
    for worker in workers {
        match worker
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
        {
            Ok(n) => bytes += n,
            Err(e) => {
                emit(&Event::Error {
                    error: format!("bulk to {to}: {e}"),
                });
                return false;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "seconds": seconds,
            "mib_per_s": bytes as f64 / seconds / (1024.0 * 1024.0)})
    );
    true
}

fn hold(to: SocketAddr, count: u32, duration: Duration) -> bool {
    let mut held = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(e) => {
                emit(&Event::Error {
                    error: format!("hold to {to}: {e}"),
                });
                return false;
            }
        }
    }
    println!("{}", serde_json::json!({ "held": held.len() }));
    let _ = std::io::stdout().flush();
    std::thread::sleep(duration);
    true
}

fn rr(to: SocketAddr, connections: u32, requests: u32, size: usize) -> bool {
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| std::thread::spawn(move || rr_connection(to, requests, size)))
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant figures");
    for worker in workers {
        match worker
            .join()
            .unwrap_or_else(|_| Err("worker panicked".into()))
        {
            Ok(h) => all.add(&h).expect("same bounds"),
            Err(error) => {
                emit(&Event::Error { error });
                return false;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let q = |p: f64| all.value_at_quantile(p);
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(), "seconds": seconds, "rps": all.len() as f64 / seconds,
            "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
        })
    );
    true
}

/// One persistent connection's request/response latencies, in microseconds.
fn rr_connection(
    to: SocketAddr,
    requests: u32,
    size: usize,
) -> Result<hdrhistogram::Histogram<u64>, String> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant figures");
    let request = vec![0x5au8; size];
    let mut response = vec![0u8; size];
    for _ in 0..requests {
        let sent = std::time::Instant::now();
        stream
            .write_all(&request)
            .and_then(|()| stream.read_exact(&mut response))
            .map_err(|e| format!("request to {to}: {e}"))?;
        histogram
            .record(sent.elapsed().as_micros() as u64)
            .map_err(|e| e.to_string())?;
    }
    Ok(histogram)
}

fn connect(
    to: SocketAddr,
    send_bytes: u64,
    seed: u64,
    timeout: Duration,
    pause: Option<Pause>,
) -> bool {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(stream) => report(exchange(&stream, send_bytes, seed, pause)),
        Err(e) => {
            emit(&Event::Error {
                error: format!("connect {to}: {e}"),
            });
            false
        }
    }
}

fn churn(to: SocketAddr, count: u32) -> bool {
    let started = std::time::Instant::now();
    let mut cycle = Vec::with_capacity(count as usize);
    let mut first_byte = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let started = std::time::Instant::now();
        let done = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .and_then(|stream| exchange_timed(&stream, 100, 1, None));
        match done {
            Ok((_, Some(first))) => {
                cycle.push(started.elapsed().as_secs_f64() * 1e6);
                first_byte.push((first - started).as_secs_f64() * 1e6);
            }
            Ok((_, None)) => {
                emit(&Event::Error {
                    error: format!(
                        "churn to {to}: the server sent nothing (run it with --reply-bytes)"
                    ),
                });
                return false;
            }
            Err(e) => {
                emit(&Event::Error {
                    error: format!("churn to {to}: {e}"),
                });
                return false;
            }
        }
    }
    let per_second = f64::from(count) / started.elapsed().as_secs_f64();
    let (cycle, first_byte) = (percentiles(cycle), percentiles(first_byte));
    println!(
        "{}",
        serde_json::json!({"count": count, "p50_us": cycle(0.5), "p90_us": cycle(0.9),
            "p99_us": cycle(0.99), "per_second": per_second,
            "connect_to_first_byte_p50_us": first_byte(0.5),
            "connect_to_first_byte_p99_us": first_byte(0.99)})
    );
    true
}

/// The `p` quantile (0.0–1.0) of `samples`, its rank rounded down;
/// `samples` must not be empty.
fn percentiles(mut samples: Vec<f64>) -> impl Fn(f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    move |p| samples[((samples.len() as f64 - 1.0) * p) as usize]
}

fn report(result: std::io::Result<nodemesh_tests::traffic::Exchange>) -> bool {
    match result {
        Ok(done) => {
            emit(&Event::Done(done));
            true
        }
        Err(e) => {
            emit(&Event::Error {
                error: e.to_string(),
            });
            false
        }
    }
}
