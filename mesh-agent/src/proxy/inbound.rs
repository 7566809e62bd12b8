//! Inbound: a connection to an enrolled pod, steered by sk_lookup to the
//! agent's listener in that pod's namespace.
//!
//! The accepted socket's local address is the original destination (the
//! pod's address and the app's port). Delivery connects to it from the
//! client's own address (see `capture::inpod`), so the app sees its real
//! peer, as it would without the mesh.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use tokio::net::TcpStream;

use super::{Direction, PodContext, connect, log_flow, relay::relay, reset, socket_in_pod};
use crate::capture::inpod::delivery_socket;

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let Ok(orig) = client.local_addr() else {
        return;
    };
    let client_ip = peer.ip().to_canonical();
    let outcome = match deliver(&pod, client_ip, orig).await {
        Ok(app) => Ok(relay(client, app).await),
        Err(e) => {
            reset(client);
            Err(format!("delivery to the app failed: {e}"))
        }
    };
    log_flow(Direction::Inbound, &pod, peer, orig, started, outcome);
}

/// Connects to the app from the client's address. While the handshake runs,
/// the socket's source endpoint is registered so sk_lookup lets its SYN
/// reach the app instead of steering it back to the agent.
async fn deliver(
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
