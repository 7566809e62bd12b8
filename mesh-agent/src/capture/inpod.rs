//! The agent's sockets inside an enrolled pod's network namespace (ztunnel's
//! in-pod model): where captured connections arrive, and the plumbing that
//! lets inbound delivery keep the client's address.
//!
//! | listener | bound to | fed by |
//! |---|---|---|
//! | outbound | `127.0.0.1:15001`, `[::1]:15001` | connect4/6 rewrites |
//! | inbound  | `127.0.0.1:15006`, `[::1]:15006` | sk_lookup assigns SYNs for the pod's addresses |
//! | HBONE    | `0.0.0.0:15008`, `[::]:15008` | tunnels from other pods' agents (not steered) |
//!
//! Inbound delivery connects to the app from the *client's* address
//! (`IP_TRANSPARENT`, marked [`DELIVERY_MARK`]). The app's replies to that
//! address would be routed out of the pod, so the namespace gets a policy
//! route sending packets with that mark to local delivery,
//! `tcp_fwmark_accept` makes the app's accepted socket inherit the mark of
//! the SYN that created it, and `fwmark_reflect` gives the kernel's own
//! answers (a closed port's RST) the mark of what they answer. Istio's
//! in-pod mode uses the same pattern.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use mesh_common::{AGENT_MARK, DELIVERY_MARK, ports};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{
    netns::socket_netns_cookie,
    rtnetlink::{self, Family},
};

/// Routing table (and rule priority) that loops marked replies back locally.
const DELIVERY_TABLE: u32 = 1539;
const LISTEN_BACKLOG: i32 = 1024;

/// Listening sockets opened inside one pod. IPv6 ones are absent when the
/// pod has no IPv6 loopback.
pub struct PodListeners {
    pub netns_cookie: u64,
    pub outbound: Vec<std::net::TcpListener>,
    pub inbound_v4: std::net::TcpListener,
    pub inbound_v6: Option<std::net::TcpListener>,
    /// Empty when the agent runs without identities.
    pub hbone: Vec<std::net::TcpListener>,
}

/// Opens the listeners (HBONE ones when `hbone`). Must run inside the pod's
/// namespace.
pub fn open_listeners(hbone: bool) -> io::Result<PodListeners> {
    let out_v4 = listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ports::OUTBOUND))?;
    let inbound_v4 = listen(SocketAddr::new(
        Ipv4Addr::LOCALHOST.into(),
        ports::INBOUND_PLAINTEXT,
    ))?;
    let netns_cookie = socket_netns_cookie(&inbound_v4).map_err(io::Error::other)?;
    let mut outbound = vec![out_v4];
    let mut inbound_v6 = None;
    match listen(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), ports::OUTBOUND)) {
        Ok(l) => {
            outbound.push(l);
            inbound_v6 = Some(listen(SocketAddr::new(
                Ipv6Addr::LOCALHOST.into(),
                ports::INBOUND_PLAINTEXT,
            ))?);
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            tracing::info!("pod has no IPv6 loopback; capturing IPv4 only");
        }
        Err(e) => return Err(e),
    }
    let tunnels = if hbone {
        hbone_listeners(inbound_v6.is_some())?
    } else {
        Vec::new()
    };
    Ok(PodListeners {
        netns_cookie,
        outbound,
        inbound_v4,
        inbound_v6,
        hbone: tunnels,
    })
}

/// The HBONE listeners (port 15008, IPv4 and, with `v6`, IPv6). Must run
/// inside the pod's namespace.
pub fn hbone_listeners(v6: bool) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = vec![listen(SocketAddr::new(
        Ipv4Addr::UNSPECIFIED.into(),
        ports::HBONE,
    ))?];
    if v6 {
        listeners.push(listen(SocketAddr::new(
            Ipv6Addr::UNSPECIFIED.into(),
            ports::HBONE,
        ))?);
    }
    Ok(listeners)
}

/// A non-blocking TCP socket for `addr`'s family: one `socket(2)`, no
/// `fcntl`s after it (connections are made at churn rates).
fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
}

fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = tcp_socket(addr)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // A new agent (a rolling update's surge pod) opens its listeners beside
    // the old agent's, which keeps serving until it stops: the kernel spreads
    // new connections over both meanwhile. Only root's sockets can join.
    socket.set_reuse_port(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A socket for the agent's upstream connection out of the pod: carries the
/// pod's address and the agent mark (so capture never takes it).
/// Must run inside the pod's namespace.
pub fn upstream_socket(dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = tcp_socket(dst)?;
    socket.set_mark(AGENT_MARK)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// A socket for delivering an inbound connection to the app from the
/// client's own address. Must run inside the pod's namespace.
pub fn delivery_socket(client: IpAddr, app: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = tcp_socket(app)?;
    match client {
        IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    socket.set_mark(DELIVERY_MARK)?;
    socket.set_tcp_nodelay(true)?;
    // The agent closes first, so delivery sockets end in TIME_WAIT, each
    // holding its port for a minute; without reuse, a busy pod runs out of
    // ports to bind (see `prepare_delivery_routing` for the other half).
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(SocketAddr::new(client, 0)))?;
    Ok(socket.into())
}

/// Installs the delivery plumbing described in the module docs. Idempotent.
/// Must run inside the pod's namespace. `proc` is a procfs whose `sys/net`
/// is writable: in a container that is not privileged `/proc/sys` is
/// read-only, so the DaemonSet mounts the host's `/proc/sys/net` writable
/// under `--host-proc` (a `net` sysctl applies to the network namespace of
/// the thread that opens it, whichever procfs it is opened through).
pub fn prepare_delivery_routing(proc: &Path) -> io::Result<()> {
    let net = proc.join("sys/net");
    let set = |name: &str| {
        let path = net.join(name);
        std::fs::write(&path, "1")
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
    };
    set("ipv4/tcp_fwmark_accept")?;
    // A closed port's RST has no socket to inherit a mark from: reflecting
    // the SYN's mark routes it back to the delivering agent as well, which
    // then sees "refused" at once instead of its connect timing out while
    // the RST, addressed to the client, leaves the pod.
    set("ipv4/fwmark_reflect")?;
    set("ipv6/fwmark_reflect")?;
    // A delivery socket may bind a port whose previous connection to the
    // same app is still in TIME_WAIT; let connect() take it over once it is
    // a second old (TCP timestamps make that safe) instead of failing. It
    // also covers the app's own outgoing connections, where `1` is the usual
    // production setting anyway.
    set("ipv4/tcp_tw_reuse")?;
    // The loopback interface is always index 1 in a network namespace.
    const LOOPBACK: u32 = 1;
    for family in [Family::V4, Family::V6] {
        let what =
            |e: io::Error| io::Error::new(e.kind(), format!("{family:?} delivery routing: {e}"));
        rtnetlink::fwmark_rule(family, DELIVERY_MARK, DELIVERY_TABLE, DELIVERY_TABLE)
            .map_err(what)?;
        rtnetlink::local_default_route(family, LOOPBACK, DELIVERY_TABLE).map_err(what)?;
    }
    Ok(())
}
