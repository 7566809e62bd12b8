//! Outbound: a connection an enrolled app made, redirected by connect4/6 to
//! the agent's listener in the app's own namespace.
//!
//! The original destination comes from the kernel (`ORIG_DST_BY_TUPLE`,
//! written by sockops before the handshake completed), never from a guess.
//! The upstream connection leaves from the pod's namespace with the pod's
//! address and the agent mark, so it is not captured again.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use mesh_common::TupleKey;
use tokio::net::TcpStream;

use super::{Direction, PodContext, connect, log_flow, relay::relay, reset, socket_in_pod};
use crate::capture::{inpod::upstream_socket, object::ip_key};

pub async fn handle(pod: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let Ok(local) = client.local_addr() else {
        return;
    };
    let key = TupleKey {
        netns: pod.netns_cookie,
        src: ip_key(peer.ip()),
        dst: ip_key(local.ip()),
        src_port: peer.port(),
        dst_port: local.port(),
        _pad: 0,
    };
    let found = pod
        .capture
        .lock()
        .map_err(|_| "capture state poisoned".to_owned())
        .and_then(|mut c| c.take_original_destination(&key).map_err(|e| e.to_string()));
    let orig = match found {
        Ok(Some(orig)) => orig.socket_addr(),
        Ok(None) => {
            tracing::warn!(
                pod = %pod.pod, src = %peer,
                "captured connection has no recorded original destination (sockops not attached \
                 to this pod's cgroup?); resetting it rather than guessing"
            );
            return reset(client);
        }
        Err(e) => {
            tracing::error!(pod = %pod.pod, src = %peer, error = %e, "reading original destination");
            return reset(client);
        }
    };
    let upstream = match socket_in_pod(&pod, move || upstream_socket(orig)).await {
        Ok(socket) => connect(socket, orig).await,
        Err(e) => Err(e),
    };
    let outcome = match upstream {
        Ok(upstream) => Ok(relay(client, upstream).await),
        Err(e) => {
            reset(client);
            Err(format!("upstream connect failed: {e}"))
        }
    };
    log_flow(Direction::Outbound, &pod, peer, orig, started, outcome);
}
