//! Inbound plaintext: a connection to an enrolled pod from outside the mesh,
//! steered by sk_lookup to the agent's listener in that pod's namespace.
//! Accepted only in PERMISSIVE mode and when policy allows; then delivered
//! to the app.
//!
//! The accepted socket's local address is the original destination (the
//! pod's address and the app's port). Delivery connects to it from the
//! client's own address (see `capture::inpod`), so the app sees its real
//! peer, as it would without the mesh. The tunnelled path ([`super::hbone`])
//! shares everything here after its TLS layer.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;

use super::{
    PodContext,
    admission::{Arrival, Refused, Registration, admit},
    connect,
    flow::Flow,
    relay::{Stream, relay},
    reset, socket_in_pod,
};
use crate::{
    capture::inpod::delivery_socket,
    flows::record::{Direction, Hook, State},
    policy::Verdict,
    state::Snapshot,
};

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let Ok(orig) = client.local_addr() else {
        return;
    };
    let loaded = pod.mesh.snapshot();
    let snapshot = &loaded.snapshot;
    let mut flow = Flow::new(
        &pod,
        snapshot,
        Direction::Inbound,
        Some(Hook::SkLookup),
        peer,
        orig,
    );
    let arrival = Arrival {
        source: None,
        source_ip: peer.ip().to_canonical(),
        destination_ip: orig.ip().to_canonical(),
        port: orig.port(),
    };
    match admit_and_deliver(&pod, snapshot, &mut flow, arrival, orig).await {
        Ok((app, registration)) => carry(client, app, registration, flow).await,
        Err(not) => {
            reset(client);
            flow.failed(not.state, not.why);
        }
    }
}

/// Why an arrival was not delivered.
pub(super) struct Undelivered {
    pub state: State,
    pub why: String,
    /// The verdict, when policy denied it (for the tunnel to report).
    pub denied: Option<Verdict>,
}

impl Undelivered {
    fn new(state: State, why: String) -> Self {
        Self {
            state,
            why,
            denied: None,
        }
    }
}

/// The first half of both inbound paths: judges the arrival, then connects
/// to the app from the client's address. The connection is registered, so
/// a config change that refuses it later cuts it.
pub(super) async fn admit_and_deliver(
    pod: &Arc<PodContext>,
    snapshot: &Snapshot,
    flow: &mut Flow,
    arrival: Arrival,
    app: SocketAddr,
) -> Result<(TcpStream, Registration), Undelivered> {
    let admitted = admit(snapshot, &pod.pod, &arrival);
    let verdict = match admitted {
        Ok(verdict) => verdict,
        Err(Refused::Denied(verdict)) => {
            flow.set_verdict(&verdict);
            return Err(Undelivered {
                state: State::Denied,
                why: verdict.to_string(),
                denied: Some(verdict),
            });
        }
        Err(other) => return Err(Undelivered::new(State::Refused, other.to_string())),
    };
    flow.set_verdict(&verdict);
    let registration = pod.mesh.live.register(&pod.pod, arrival.clone());
    match deliver(pod, arrival.source_ip, app).await {
        Ok(stream) => Ok((stream, registration)),
        Err(e) => Err(Undelivered::new(
            State::Error,
            format!("delivery to the app failed: {e}"),
        )),
    }
}

/// The second half: relays until either side ends or the connection is
/// revoked, then records the flow.
pub(super) async fn carry<C: Stream>(
    client: C,
    app: TcpStream,
    mut registration: Registration,
    mut flow: Flow,
) {
    let progress = flow.relaying();
    let mut revoked_by = None;
    let relayed = relay(
        client,
        app,
        async {
            revoked_by = Some(registration.revoked().await);
        },
        progress,
    )
    .await;
    flow.relayed(relayed, revoked_by);
}

/// Connects to the app from the client's address. While the handshake runs,
/// the socket's source endpoint is registered so sk_lookup lets its SYN
/// reach the app instead of steering it back to the agent.
async fn deliver(
    pod: &PodContext,
    client_ip: IpAddr,
    app: SocketAddr,
) -> std::io::Result<TcpStream> {
    // A port still in TIME_WAIT with this very app can be refused at
    // connect (younger than a second): take another one.
    let mut attempts = 3;
    loop {
        match deliver_once(pod, client_ip, app).await {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && attempts > 1 => {
                attempts -= 1;
            }
            done => return done,
        }
    }
}

async fn deliver_once(
    pod: &PodContext,
    client_ip: IpAddr,
    app: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = socket_in_pod(pod, move || delivery_socket(client_ip, app)).await?;
    let source = socket.local_addr()?;
    let register = |begin: bool| -> std::io::Result<()> {
        let mut capture = pod
            .capture
            .lock()
            .map_err(|_| std::io::Error::other("capture state poisoned"))?;
        let done = if begin {
            capture.begin_delivery(source)
        } else {
            capture.end_delivery(source)
        };
        done.map_err(std::io::Error::other)
    };
    register(true)?;
    let connected = connect(socket, app).await;
    register(false)?;
    connected
}
