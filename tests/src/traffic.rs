//! The traffic the tests send: seeded pseudo-random bytes, hashed on both
//! ends, so "every byte arrived intact" is checked by comparing SHA-256s.
//!
//! Client and server run the same [`exchange`]: write N bytes then half-close,
//! while reading until the peer half-closes. Both directions flow at once, so
//! the test covers full-duplex transfer and half-close propagation.
use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Instant,
};

use rand::{RngCore as _, SeedableRng as _, rngs::SmallRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

const CHUNK: usize = 64 * 1024;

/// What one side of a connection sent and received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exchange {
    pub local: SocketAddr,
    /// The peer as the socket reports it (`getpeername`).
    pub peer: SocketAddr,
    pub sent: u64,
    pub sent_sha256: String,
    pub received: u64,
    pub received_sha256: String,
}

/// One line of `mesh-traffic` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The server is accepting on `addr`.
    Listening { addr: SocketAddr },
    /// A finished connection (server: one per accepted connection; client: one).
    Done(Exchange),
    /// The client paused sending (see [`Pause`]); the connection is open.
    Paused,
    /// The connection failed; `error` says how.
    Error { error: String },
}

impl Event {
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("bad mesh-traffic line {line:?}: {e}"))
    }
}

/// A pause in sending, so a test can change the world while a connection is
/// open: after `after` bytes, `announce` is called, then the sender sleeps.
#[derive(Clone, Copy)]
pub struct Pause {
    pub after: u64,
    pub duration: std::time::Duration,
    pub announce: fn(),
}

/// The first `len` bytes a connection with `seed` sends: a plaintext
/// marker a test can look for on the wire.
pub fn marker(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; CHUNK];
    rng.fill_bytes(&mut buf);
    buf.truncate(len);
    buf
}

/// Sends `send_bytes` seeded bytes and reads until EOF, concurrently.
pub fn exchange(
    stream: &TcpStream,
    send_bytes: u64,
    seed: u64,
    pause: Option<Pause>,
) -> std::io::Result<Exchange> {
    exchange_timed(stream, send_bytes, seed, pause).map(|(done, _)| done)
}

/// [`exchange`], and when the peer's first byte was read (`None` if it
/// sent nothing): the benchmark's connect-to-first-byte time.
pub fn exchange_timed(
    stream: &TcpStream,
    send_bytes: u64,
    seed: u64,
    mut pause: Option<Pause>,
) -> std::io::Result<(Exchange, Option<Instant>)> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<(u64, String)> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = send_bytes;
        while left > 0 {
            let n = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
            rng.fill_bytes(&mut buf[..n]);
            hash.update(&buf[..n]);
            writer.write_all(&buf[..n])?;
            left -= n as u64;
            if let Some(p) = pause.take_if(|p| send_bytes - left >= p.after) {
                (p.announce)();
                std::thread::sleep(p.duration);
            }
        }
        writer.shutdown(Shutdown::Write)?;
        Ok((send_bytes, hex::encode(hash.finalize())))
    });
    let mut reader = stream;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut first_byte = None;
    let read_result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                first_byte.get_or_insert_with(Instant::now);
                hash.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let sent = sender
        .join()
        .map_err(|_| std::io::Error::other("sender thread panicked"))?;
    read_result?;
    let (sent, sent_sha256) = sent?;
    let done = Exchange {
        local,
        peer,
        sent,
        sent_sha256,
        received,
        received_sha256: hex::encode(hash.finalize()),
    };
    Ok((done, first_byte))
}
