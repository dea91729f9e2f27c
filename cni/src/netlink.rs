//! A small synchronous route-netlink client: the few requests pod networking needs (links,
//! addresses, routes), each acknowledged by the kernel. Synchronous on purpose: a request
//! takes microseconds, and a pod's own namespace is reached from a short-lived thread that
//! has entered it (a netlink socket talks to the namespace it was created in).
//!
//! # Why not `rtnetlink`
//!
//! The design card names `rtnetlink`; berth already builds on the crates under it, from the
//! same rust-netlink project (`netlink-packet-core`, `netlink-packet-route`, `netlink-sys`,
//! the same versions rtnetlink 0.24 uses). What rtnetlink adds is an async handle over them,
//! and that is no help where the work is:
//!
//! - **No namespace switching.** Its connection opens its socket in the namespace of the
//!   thread that creates it, inside a tokio runtime. A pod's side would still need a thread
//!   that has entered the pod's namespace, plus a runtime built inside that thread for a
//!   request that takes microseconds. Its own `NetworkNamespace::add` forks from the caller
//!   (unfit for a multi-threaded daemon) and hard-codes `/run/netns`; berth makes pod
//!   namespaces itself.
//! - **One request, both ends.** Creating the veth with its peer already in the pod's
//!   namespace (one request, nothing to clean up on the host if the move fails) needs the
//!   peer message built by hand there too.
//! - **Cost.** It would bring tokio and a second `nix` (0.31) into this crate, which is
//!   `forbid(unsafe_code)` and runtime-free today.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A link as the kernel lists it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or other controller) the link is enslaved to.
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// One route-netlink socket, bound to the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn nl_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("netlink: {e}"))
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks make the kernel explain refusals; best effort on old kernels.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Receives the answers to request `seq`, calling `each` on every message, until the
    /// ack (or the end of a dump).
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut off = 0;
            while off < buf.len() {
                let len = NetlinkBuffer::new_checked(&buf[off..])
                    .map_err(nl_err)?
                    .length() as usize;
                if len == 0 || off + len > buf.len() {
                    return Err(nl_err("truncated message from the kernel"));
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
                    .map_err(nl_err)?;
                off += len;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => each(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request and waits for the kernel's ack.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |_| {})
    }

    fn link_from(m: LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            controller: None,
            kind: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mtu: None,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Controller(c) => l.controller = Some(c),
                LinkAttribute::Mtu(v) => l.mtu = Some(v),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let seq = self.send(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        self.receive(seq, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                out.push(Self::link_from(l));
            }
        })?;
        Ok(out)
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let seq = self.send(RouteNetlinkMessage::GetLink(m), NLM_F_ACK)?;
        let mut found = None;
        match self.receive(seq, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                found = Some(Self::link_from(l));
            }
        }) {
            Ok(()) => Ok(found),
            Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge, up, with the given MTU.
    pub fn add_bridge(&mut self, name: &str, mtu: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets a link up (and its MTU, when given).
    pub fn set_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Creates a veth pair in one request: `host` up on bridge `controller`, and `peer`
    /// (down) placed straight into the namespace open at `peer_netns`.
    pub fn add_veth(
        &mut self,
        host: &str,
        controller: u32,
        peer: &str,
        peer_netns: &File,
        mtu: u32,
    ) -> io::Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_owned()));
        p.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.to_owned()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::Controller(controller));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes a link by name; a missing link is not an error.
    pub fn del_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(()),
            r => r,
        }
    }

    /// Adds (or keeps) an address on a link. IPv6 addresses skip duplicate detection: the
    /// address comes from berth's IPAM, and DAD would keep it unusable for a second.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(ip);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv6() {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Adds the default route of `gateway`'s family via `gateway` on link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(gateway);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(route_address(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// Runs `f` on a fresh thread that has entered the network namespace bind-mounted at
/// `netns`. The thread ends with `f`, so no other work ever runs in that namespace by
/// accident.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::Builder::new()
        .name("berth-netns".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace worker panicked"))?
}
