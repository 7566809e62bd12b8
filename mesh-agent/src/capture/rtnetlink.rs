//! The two routing changes delivery needs inside a pod (a fwmark rule and a
//! local route in its own table), sent over rtnetlink from the calling
//! thread's network namespace — what `ip rule` and `ip route` would do,
//! without needing the `ip` binary (the agent's image has none).
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn netlink(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }
}

/// `ip rule add fwmark <mark> lookup <table> priority <priority>`, replacing
/// an earlier copy (rules have no "replace": delete, then add).
pub fn fwmark_rule(family: Family, mark: u32, table: u32, priority: u32) -> io::Result<()> {
    let rule = || {
        let mut rule = RuleMessage::default();
        rule.header = RuleHeader {
            family: family.netlink(),
            action: RuleAction::ToTable,
            ..RuleHeader::default()
        };
        rule.attributes = vec![
            RuleAttribute::FwMark(mark),
            RuleAttribute::Table(table),
            RuleAttribute::Priority(priority),
        ];
        rule
    };
    match request(RouteNetlinkMessage::DelRule(rule()), 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => other?,
    }
    request(
        RouteNetlinkMessage::NewRule(rule()),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// `ip route replace local <all addresses> dev <ifindex> table <table>`.
pub fn local_default_route(family: Family, ifindex: u32, table: u32) -> io::Result<()> {
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: family.netlink(),
        // Tables above 255 travel in the attribute only.
        table: RouteHeader::RT_TABLE_UNSPEC,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    route.attributes = vec![RouteAttribute::Table(table), RouteAttribute::Oif(ifindex)];
    request(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Sends one request and waits for the kernel's acknowledgement.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::other(format!("unreadable rtnetlink reply: {e}")))?;
    match reply.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}
