//! Per-packet translation shared by `tc_ingress` and `xdp_ingress`.
//!
//! Handled: Ethernet + IPv4 (no options, not a fragment) or IPv6 (no extension headers), then
//! TCP or UDP, and (TC only) ICMP/ICMPv6 errors quoting such a packet. Anything else, or
//! anything truncated, is left exactly as it is.
//!
//! - forward (client -> VIP:port): conntrack hit (fresh, backend still there) or a new choice
//!   ([`crate::select::choose`]) recorded as a forward and a reply entry; destination rewritten
//!   to the backend, and the source to the VIP when the client is its own backend (hairpin).
//! - reply (backend -> client, TC only): source rewritten back to VIP:port (and destination
//!   back to the client when hairpinned).
//! - ICMP errors (TC only) about a translated flow are rewritten so the client's stack matches
//!   them to its socket (inner destination and outer source become VIP:port).
//! - a VIP without usable endpoints, or a port it does not define: [`Verdict::Reject`] (the
//!   caller answers) or [`Verdict::DROP`] (SVC_FLAG_DROP).
//!
//! On the node's external interfaces (`EXT`, `tc_nodeport`) the same code serves traffic from
//! outside the node to node ports, load-balancer IPs and external IPs (frontends with
//! SVC_FLAG_EXTERNAL), as kube-proxy does:
//! - `externalTrafficPolicy: Local` (SVC_FLAG_EXT_LOCAL): the frontend's scope-1 entry, this
//!   node's endpoints only (none: dropped); the client's address is kept;
//! - `Cluster`: any endpoint; to a backend on another node the source becomes this node's
//!   address and a port of [`clusterip_common::SNAT_PORT_SPANS`] (unique per backend through
//!   the reply conntrack entry), and the packet leaves by a FIB lookup and redirect
//!   ([`Verdict::Route`]: the stack would drop a packet that arrives with its own address as
//!   source), as do the replies translated back to the client;
//! - `loadBalancerSourceRanges` (SVC_FLAG_SOURCE_RANGE): other sources are dropped;
//! - replies of every flow the datapath translated come back through here (also ClusterIP
//!   flows of pods whose backend is on another node); replies from a local backend to an
//!   outside client are translated at egress ([`egress`]), after the stack has routed them.
//!   Conntrack entries of these flows carry CT_FLAG_NODEPORT, and the pod-side program leaves
//!   their replies alone (translated there, they would enter the stack with the node's own
//!   address as source).

use aya_log_ebpf::debug;
use clusterip_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_HAIRPIN, CT_FLAG_NODEPORT, CT_FLAG_SNAT,
    MAX_SVC_ID, SCOPE_DEFAULT, SVC_FLAG_AFFINITY, SVC_FLAG_DROP, SVC_FLAG_OPEN, ServiceValue,
};

use crate::ct::{self, Addr, Ct, Tuple};
use crate::maps::CIP_STATS;
use crate::pkt::{
    ETH_LEN, ETH_P_IP, ETH_P_IPV6, F_MARK_MANGLED_0, F_PSEUDO_HDR, IP4_LEN, IP6_LEN, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use crate::select;

/// What the entry point does with the packet: a kind, and for `Route` the family, for
/// `Reject` the family and whether TCP. A plain integer rather than an enum with fields: the
/// unused fields of an enum variant are undefined, and LLVM reads them anyway when it packs the
/// value into a register, which the verifier refuses when the register holds a pointer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verdict(u32);

/// What a [`Verdict`] says to do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Untouched.
    Pass,
    /// Rewritten; let it go on.
    Translated,
    /// Drop silently.
    Drop,
    /// Rewritten with the node's own address as source: send it by a FIB lookup and redirect.
    Route,
    /// Answer with a TCP RST / ICMP port unreachable.
    Reject,
}

impl Verdict {
    pub const PASS: Verdict = Verdict(0);
    pub const TRANSLATED: Verdict = Verdict(1);
    pub const DROP: Verdict = Verdict(2);
    const ROUTE: u32 = 3;
    const REJECT: u32 = 4;
    const V6: u32 = 1 << 8;
    const TCP: u32 = 1 << 9;

    #[inline(always)]
    pub const fn route(v6: bool) -> Verdict {
        Verdict(Self::ROUTE | if v6 { Self::V6 } else { 0 })
    }

    #[inline(always)]
    pub const fn reject(v6: bool, tcp: bool) -> Verdict {
        Verdict(Self::REJECT | if v6 { Self::V6 } else { 0 } | if tcp { Self::TCP } else { 0 })
    }

    #[inline(always)]
    pub fn kind(self) -> Kind {
        match self.0 & 0xff {
            1 => Kind::Translated,
            2 => Kind::Drop,
            Self::ROUTE => Kind::Route,
            Self::REJECT => Kind::Reject,
            _ => Kind::Pass,
        }
    }

    /// IPv6 (Route, Reject).
    #[inline(always)]
    pub fn v6(self) -> bool {
        self.0 & Self::V6 != 0
    }

    /// TCP (Reject).
    #[inline(always)]
    pub fn tcp(self) -> bool {
        self.0 & Self::TCP != 0
    }

    /// A scalar for crossing a BPF subprogram boundary.
    #[inline(always)]
    pub fn encode(self) -> u32 {
        self.0
    }

    #[inline(always)]
    pub fn decode(code: u32) -> Verdict {
        Verdict(code)
    }
}

/// Which program runs the code: XDP only does the forward translation.
pub const AT_TC: bool = false;
pub const AT_XDP: bool = true;

/// Length of a plain IP header (IPv4 without options, IPv6 without extension headers).
#[inline(always)]
const fn ip_len(v6: bool) -> usize {
    if v6 { IP6_LEN } else { IP4_LEN }
}

/// Offset of the source address in an IP header.
#[inline(always)]
const fn ip_saddr(v6: bool) -> usize {
    if v6 { 8 } else { 12 }
}

/// Offset of the destination address in an IP header.
#[inline(always)]
const fn ip_daddr(v6: bool) -> usize {
    if v6 { 24 } else { 16 }
}

/// Offsets in the packet (outer headers).
#[inline(always)]
const fn l4_off(v6: bool) -> usize {
    ETH_LEN + ip_len(v6)
}

#[inline(always)]
const fn saddr_off(v6: bool) -> usize {
    ETH_LEN + ip_saddr(v6)
}

#[inline(always)]
const fn daddr_off(v6: bool) -> usize {
    ETH_LEN + ip_daddr(v6)
}

/// IPv4 header checksum offset.
const IP4_CSUM: usize = ETH_LEN + 10;

/// Entry of the pod-side programs.
#[inline(always)]
pub fn process<P: Packet, const XDP: bool>(p: &P) -> Verdict {
    let Some(ethertype) = p.load::<u16>(12) else {
        return Verdict::PASS;
    };
    match u16::from_be(ethertype) {
        ETH_P_IP => process_ip::<P, false, XDP>(p).unwrap_or(Verdict::PASS),
        ETH_P_IPV6 => process_ip::<P, true, XDP>(p).unwrap_or(Verdict::PASS),
        _ => Verdict::PASS,
    }
}

/// The tuple and TCP flags of a TCP or UDP packet with a plain IP header; None otherwise.
#[inline(always)]
pub(crate) fn parse_l4<P: Packet, const V6: bool>(p: &P) -> Option<(Tuple, u8)> {
    let (saddr, daddr, proto) = parse_l3::<P, V6>(p, ETH_LEN)?;
    let l4 = l4_off(V6);
    let flags = if proto == PROTO_TCP {
        // The whole fixed header must be there (checksum at +16, flags at +13).
        let _: u32 = p.load(l4 + 16)?;
        p.load::<u8>(l4 + 13)?
    } else if proto == PROTO_UDP {
        let _: u16 = p.load(l4 + 6)?;
        0
    } else {
        return None;
    };
    Some((
        Tuple {
            saddr,
            daddr,
            sport: p.load(l4)?,
            dport: p.load(l4 + 2)?,
            proto,
        },
        flags,
    ))
}

/// Reads an address of the family at `off`.
#[inline(always)]
fn load_addr<P: Packet, const V6: bool>(p: &P, off: usize) -> Option<Addr> {
    if V6 {
        p.load::<[u32; 4]>(off)
    } else {
        Some([p.load::<u32>(off)?, 0, 0, 0])
    }
}

/// `(saddr, daddr, protocol)` of a plain IP header (IPv4 without options and not a fragment,
/// IPv6 without extension headers) at `l3`; None for anything else.
#[inline(always)]
pub(crate) fn parse_l3<P: Packet, const V6: bool>(p: &P, l3: usize) -> Option<(Addr, Addr, u8)> {
    let proto: u8 = if V6 {
        let ver: u8 = p.load(l3)?;
        if ver >> 4 != 6 {
            return None;
        }
        p.load(l3 + 6)?
    } else {
        let vihl: u8 = p.load(l3)?;
        if vihl != 0x45 {
            // Not IPv4, or IPv4 with options: left alone.
            return None;
        }
        let frag: u16 = p.load(l3 + 6)?;
        if u16::from_be(frag) & 0x3fff != 0 {
            // MF set or a non-zero offset: a fragment (no ports to translate by).
            return None;
        }
        p.load(l3 + 9)?
    };
    Some((
        load_addr::<P, V6>(p, l3 + ip_saddr(V6))?,
        load_addr::<P, V6>(p, l3 + ip_daddr(V6))?,
        proto,
    ))
}

#[inline(always)]
fn process_ip<P: Packet, const V6: bool, const XDP: bool>(p: &P) -> Option<Verdict> {
    let (saddr, daddr, proto) = parse_l3::<P, V6>(p, ETH_LEN)?;
    let icmp = if V6 { PROTO_ICMPV6 } else { PROTO_ICMP };
    if proto == icmp {
        if XDP {
            return None;
        }
        return icmp_error::<P, V6, false>(p, &saddr, &daddr);
    }
    let (t, flags) = parse_l4::<P, V6>(p)?;
    if !XDP && let Some((e, slot)) = ct::lookup::<V6>(&t, CT_DIR_REPLY) {
        if e.flags & CT_FLAG_NODEPORT != 0 {
            // The external side translates these (see the module docs).
            return None;
        }
        return Some(reverse::<P, V6>(p, &t, flags, &e, slot));
    }
    // Most packets are not for a VIP: one lookup (the VIP's wildcard entry) says so. The
    // agent writes a VIP's wildcard before its frontends and removes it after them.
    let vip = select::vip_flags::<V6>(&t.daddr)?;
    let Some(fe) = select::frontend::<V6>(&t.daddr, t.dport, t.proto, SCOPE_DEFAULT) else {
        if vip & SVC_FLAG_OPEN != 0 {
            // An external IP or node address: other ports are the address's own.
            return None;
        }
        debug!(
            p,
            "clusterip: port {} not defined on VIP: reject",
            u16::from_be(t.dport)
        );
        return Some(Verdict::reject(V6, proto == PROTO_TCP));
    };
    Some(forward::<P, V6>(p, &t, flags, &fe))
}

/// The L4 checksum's offset and `csum_l4` flags for `proto`.
#[inline(always)]
fn l4_csum<const V6: bool>(proto: u8) -> (usize, u64) {
    let l4 = l4_off(V6);
    if proto == PROTO_TCP {
        (l4 + 16, 0)
    } else {
        (l4 + 6, F_MARK_MANGLED_0)
    }
}

/// Rewrites the address at `off` from `old` to `new`, updating the IPv4 header checksum at
/// `l3_csum` and the checksum at `l4.0` (with flags `l4.1`; F_PSEUDO_HDR when the address is
/// part of that checksum's pseudo header).
#[inline(always)]
fn set_addr<P: Packet, const V6: bool>(
    p: &P,
    off: usize,
    old: &Addr,
    new: &Addr,
    l3_csum: Option<usize>,
    l4: Option<(usize, u64)>,
) -> Option<()> {
    let n = if V6 { 4 } else { 1 };
    for i in 0..n {
        if old[i] != new[i] {
            p.store(off + 4 * i, &new[i])?;
            if let Some(c) = l3_csum {
                p.csum_l3(c, old[i], new[i], 4)?;
            }
            if let Some((c, fl)) = l4 {
                p.csum_l4(c, old[i], new[i], fl | 4)?;
            }
        }
    }
    Some(())
}

/// Rewrites the port at `off`, updating the checksum at `l4.0` (flags `l4.1`).
#[inline(always)]
fn set_port<P: Packet>(p: &P, off: usize, old: u16, new: u16, l4: (usize, u64)) -> Option<()> {
    if old != new {
        p.store(off, &new)?;
        p.csum_l4(l4.0, u32::from(old), u32::from(new), l4.1 | 2)?;
    }
    Some(())
}

#[inline(always)]
pub(crate) fn count(svc_id: u32, bytes: u32) {
    if svc_id >= MAX_SVC_ID {
        return;
    }
    if let Some(s) = CIP_STATS.get_ptr_mut(svc_id) {
        // SAFETY: this CPU's slot of a valid map value; no one else writes it concurrently.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub(crate) fn reject(fe: &ServiceValue, v6: bool, proto: u8) -> Verdict {
    if fe.flags & SVC_FLAG_DROP != 0 {
        Verdict::DROP
    } else {
        Verdict::reject(v6, proto == PROTO_TCP)
    }
}

/// CT_FLAG_CLOSING if the segment ends its connection (FIN or RST), else 0.
#[inline(always)]
pub(crate) fn closing(tcp_flags: u8) -> u16 {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_FLAG_CLOSING
    } else {
        0
    }
}

/// Rewrites the service side of a TCP/UDP packet of a tracked flow: forward (`REPLY` false),
/// the destination VIP:port becomes the backend `e.addr:e.port`; reply, the backend source
/// becomes the VIP:port `e.addr:e.port` again. A hairpinned flow also has its other address
/// replaced by `e.nat_addr`, a source-NATed one its other address and port by
/// `e.nat_addr:e.nat_port`. `None`: a helper failed, possibly half-way.
#[inline(always)]
pub(crate) fn rewrite<P: Packet, const V6: bool, const REPLY: bool>(
    p: &P,
    t: &Tuple,
    e: &Ct,
) -> Option<()> {
    // (offset, current value) of the service side's address and port, and of the other address.
    let (svc, other) = if REPLY {
        ((saddr_off(V6), &t.saddr), (daddr_off(V6), &t.daddr))
    } else {
        ((daddr_off(V6), &t.daddr), (saddr_off(V6), &t.saddr))
    };
    let port = if REPLY {
        (l4_off(V6), t.sport)
    } else {
        (l4_off(V6) + 2, t.dport)
    };
    let l4c = l4_csum::<V6>(t.proto);
    let l3c = if V6 { None } else { Some(IP4_CSUM) };
    let pseudo = Some((l4c.0, l4c.1 | F_PSEUDO_HDR));
    set_addr::<P, V6>(p, svc.0, svc.1, &e.addr, l3c, pseudo)?;
    set_port(p, port.0, port.1, e.port, l4c)?;
    if e.flags & (CT_FLAG_HAIRPIN | CT_FLAG_SNAT) != 0 {
        set_addr::<P, V6>(p, other.0, other.1, &e.nat_addr, l3c, pseudo)?;
    }
    if e.flags & CT_FLAG_SNAT != 0 {
        // The client side's port: forward, the source port; reply, the destination port.
        let other_port = if REPLY {
            (l4_off(V6) + 2, t.dport)
        } else {
            (l4_off(V6), t.sport)
        };
        set_port(p, other_port.0, other_port.1, e.nat_port, l4c)?;
    }
    Some(())
}

/// The forward conntrack entry of `t`, if any, and whether its flow goes on with it: fresh,
/// of service `svc_id`, its backend still there, and not a new SYN on a closed flow. A flow
/// that goes on has the entry refreshed (and marked closing by a FIN or RST). Shared by the
/// pod side and the external side ([`crate::nodeport`]).
#[inline(always)]
pub(crate) fn forward_entry<const V6: bool>(
    t: &Tuple,
    tcp_flags: u8,
    svc_id: u32,
    now: u64,
) -> Option<(Ct, bool)> {
    let (e, slot) = ct::lookup::<V6>(t, CT_DIR_FORWARD)?;
    let cfg = ct::config();
    let fresh = now.wrapping_sub(e.last_seen_ns) < ct::timeout_ns(&cfg, t.proto, e.flags);
    let syn_only = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let reopened = syn_only && e.flags & CT_FLAG_CLOSING != 0;
    let goes_on =
        fresh && !reopened && e.svc_id == svc_id && select::backend::<V6>(e.backend_id).is_some();
    if goes_on {
        ct::touch(slot, now, closing(tcp_flags));
    }
    Some((e, goes_on))
}

/// client -> VIP:port, pod side.
#[inline(always)]
fn forward<P: Packet, const V6: bool>(
    p: &P,
    t: &Tuple,
    tcp_flags: u8,
    fe: &ServiceValue,
) -> Verdict {
    if fe.count == 0 {
        debug!(p, "clusterip: svc {} has no endpoints", fe.svc_id);
        return reject(fe, V6, t.proto);
    }
    let now = ct::now_ns();
    let closing = closing(tcp_flags);
    let e = match forward_entry::<V6>(t, tcp_flags, fe.svc_id, now) {
        Some((e, true)) => e,
        _ => {
            let Some(b) = select::choose::<V6>(t, fe, SCOPE_DEFAULT, now) else {
                debug!(p, "clusterip: svc {} no usable backend", fe.svc_id);
                return reject(fe, V6, t.proto);
            };
            let e = new_flow::<V6>(t, fe, &b, closing, now);
            if fe.flags & SVC_FLAG_AFFINITY != 0 {
                select::write_affinity::<V6>(&t.saddr, fe.svc_id, b.id, now);
            }
            debug!(
                p,
                "clusterip: svc {} new flow -> backend {}", fe.svc_id, b.id
            );
            e
        }
    };
    if rewrite::<P, V6, false>(p, t, &e).is_none() {
        // Offsets were checked while parsing; a failure here is a helper error. Never let a
        // half-rewritten packet go.
        return Verdict::DROP;
    }
    count(fe.svc_id, p.len());
    Verdict::TRANSLATED
}

/// Records a new pod-side flow `t` to backend `b`: the forward entry, and the reply entry the
/// backend's answers are found by. Returns the forward entry.
#[inline(always)]
fn new_flow<const V6: bool>(
    t: &Tuple,
    fe: &ServiceValue,
    b: &select::Chosen,
    closing: u16,
    now: u64,
) -> Ct {
    let hairpin = b.addr == t.saddr;
    let flags = closing | if hairpin { CT_FLAG_HAIRPIN } else { 0 };
    let fwd = Ct {
        addr: b.addr,
        nat_addr: if hairpin { t.daddr } else { [0; 4] },
        port: b.port,
        nat_port: 0,
        flags,
        svc_id: fe.svc_id,
        backend_id: b.id,
        last_seen_ns: now,
    };
    let rev_t = Tuple {
        saddr: b.addr,
        daddr: if hairpin { t.daddr } else { t.saddr },
        sport: b.port,
        dport: t.sport,
        proto: t.proto,
    };
    let rev = Ct {
        addr: t.daddr,
        nat_addr: if hairpin { t.saddr } else { [0; 4] },
        port: t.dport,
        nat_port: 0,
        flags,
        svc_id: fe.svc_id,
        backend_id: b.id,
        last_seen_ns: now,
    };
    // LRU inserts only fail without memory; the flow still maps the same way through Maglev,
    // so go on.
    let _ = ct::insert::<V6>(&rev_t, CT_DIR_REPLY, &rev);
    let _ = ct::insert::<V6>(t, CT_DIR_FORWARD, &fwd);
    fwd
}

/// backend -> client (or -> VIP when hairpinned): source back to VIP:port, and the
/// destination back to the client for a source-NATed flow ([`Verdict::Route`]).
#[inline(always)]
pub(crate) fn reverse<P: Packet, const V6: bool>(
    p: &P,
    t: &Tuple,
    tcp_flags: u8,
    e: &Ct,
    slot: ct::Slot<V6>,
) -> Verdict {
    if rewrite::<P, V6, true>(p, t, e).is_none() {
        return Verdict::DROP;
    }
    ct::touch(slot, ct::now_ns(), closing(tcp_flags));
    count(e.svc_id, p.len());
    if e.flags & CT_FLAG_SNAT != 0 {
        Verdict::route(V6)
    } else {
        Verdict::TRANSLATED
    }
}

/// An ICMP error about a packet of a translated flow, sent by the backend side (the quoted
/// packet is client -> backend): the quoted destination becomes VIP:port again and, when the
/// backend itself sent the error, so does the outer source. For hairpinned flows the quoted
/// source and the outer destination go back to the client. Fixed: the outer IPv4 header
/// checksum, the quoted IPv4 header checksum and the ICMP checksum (for ICMPv6 including its
/// pseudo header). The quoted L4 checksum is left as it is (the quote may be truncated and no
/// stack checks it).
#[inline(always)]
pub(crate) fn icmp_error<P: Packet, const V6: bool, const EXT: bool>(
    p: &P,
    saddr: &Addr,
    daddr: &Addr,
) -> Option<Verdict> {
    let l4 = l4_off(V6);
    let ty: u8 = p.load(l4)?;
    let is_error = if V6 {
        // destination unreachable, packet too big, time exceeded
        ty == 1 || ty == 2 || ty == 3
    } else {
        // destination unreachable (incl. fragmentation needed), time exceeded
        ty == 3 || ty == 11
    };
    if !is_error {
        return None;
    }
    let inner = l4 + 8;
    let (isaddr, idaddr, iproto) = parse_l3::<P, V6>(p, inner)?;
    if iproto != PROTO_TCP && iproto != PROTO_UDP {
        return None;
    }
    let il4 = inner + ip_len(V6);
    let it = Tuple {
        saddr: isaddr,
        daddr: idaddr,
        sport: p.load(il4)?,
        dport: p.load(il4 + 2)?,
        proto: iproto,
    };
    let (e, _) = ct::lookup::<V6>(&it.reversed(), CT_DIR_REPLY)?;
    if !EXT && e.flags & CT_FLAG_NODEPORT != 0 {
        return None;
    }
    let snat = e.flags & CT_FLAG_SNAT != 0;
    // The quoted source (and, when addressed to it, the outer destination) goes back to the
    // client: the hairpin source or the source-NAT address was put there.
    let client_side = snat || e.flags & CT_FLAG_HAIRPIN != 0;
    let icmp_csum = l4 + 2;
    let inner_saddr = inner + ip_saddr(V6);
    let inner_daddr = inner + ip_daddr(V6);
    // IPv4: the quoted header's own checksum absorbs its address change, so the ICMP checksum
    // only sees the port. IPv6: no header checksum, the ICMPv6 checksum sees both.
    let (inner_l3, inner_l4) = if V6 {
        (None, Some((icmp_csum, 0)))
    } else {
        (Some(inner + 10), None)
    };
    let outer_l3 = if V6 { None } else { Some(IP4_CSUM) };
    let outer_l4 = if V6 {
        Some((icmp_csum, F_PSEUDO_HDR))
    } else {
        None
    };
    let ok = (|| {
        set_addr::<P, V6>(p, inner_daddr, &idaddr, &e.addr, inner_l3, inner_l4)?;
        set_port(p, il4 + 2, it.dport, e.port, (icmp_csum, 0))?;
        if client_side {
            set_addr::<P, V6>(p, inner_saddr, &isaddr, &e.nat_addr, inner_l3, inner_l4)?;
            if *daddr == isaddr {
                set_addr::<P, V6>(p, daddr_off(V6), daddr, &e.nat_addr, outer_l3, outer_l4)?;
            }
        }
        if snat {
            set_port(p, il4, it.sport, e.nat_port, (icmp_csum, 0))?;
        }
        if *saddr == idaddr {
            set_addr::<P, V6>(p, saddr_off(V6), saddr, &e.addr, outer_l3, outer_l4)?;
        }
        Some(())
    })();
    if ok.is_none() {
        return Some(Verdict::DROP);
    }
    debug!(p, "clusterip: icmp error for svc {} translated", e.svc_id);
    if snat {
        Some(Verdict::route(V6))
    } else {
        Some(Verdict::TRANSLATED)
    }
}
