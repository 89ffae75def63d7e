//! The node's external interfaces (`tc_nodeport` at ingress, `tc_nodeport_egress` at
//! egress): traffic from outside the node to node ports, load-balancer IPs and external IPs
//! (frontends with SVC_FLAG_EXTERNAL), as kube-proxy serves it, and its replies. Cilium's
//! `lib/nodeport.h` does the same job.
//!
//! - `externalTrafficPolicy: Local` (SVC_FLAG_EXT_LOCAL): the frontend's scope-1 entry, this
//!   node's endpoints only (none: dropped); the client's address is kept.
//! - `Cluster`: any endpoint. To a backend on another node the source becomes this node's
//!   address and a random port of [`clusterip_common::SNAT_PORT_SPANS`], unique per backend
//!   through the reply conntrack entry (created only when absent or expired; another port
//!   tried if taken), and the packet leaves by a FIB lookup and redirect
//!   ([`Verdict::Route`]): the stack would drop a packet that
//!   arrives with its own address as source. The replies come back here, addressed to the
//!   node, and go back to the client the same way.
//! - `loadBalancerSourceRanges` (SVC_FLAG_SOURCE_RANGE): other sources are dropped.
//! - Replies of any flow the datapath translated that arrive here are translated (also pod-side
//!   ClusterIP flows whose backend is on another node). Replies from a local backend to an
//!   outside client are translated at egress, after the stack has routed them. Entries made
//!   here carry CT_FLAG_NODEPORT, and the pod-side program leaves their replies alone.
//! - Ports a frontend address does not define pass untouched: they are the node's own.
//!
//! The work is split into BPF subprograms called one after the other from a small frame, with
//! the state between them in a per-CPU scratch map: the verifier adds up the stack frames of
//! a call chain against 512 bytes, and one frame holding it all does not fit.

use aya_log_ebpf::debug;
use clusterip_common::{
    BE_FLAG_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_NODEPORT, CT_FLAG_SNAT, SCOPE_DEFAULT,
    SCOPE_EXTERNAL, SNAT_PORTS, SVC_FLAG_AFFINITY, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL,
    SVC_FLAG_NODE_ADDR, SVC_FLAG_SOURCE_RANGE,
};

use aya_ebpf::helpers::{bpf_fib_lookup, bpf_get_prandom_u32};

use crate::ct::{self, Ct, Tuple};
use crate::fib;
use crate::maps::{CIP_SCRATCH, Scratch};
use crate::nat::{self, Verdict};
use crate::pkt::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, PROTO_ICMP, PROTO_ICMPV6, Packet};
use crate::select;

/// Tries at a free source port for a source-NATed flow before the packet is dropped (the
/// client's retransmission tries again).
const SNAT_TRIES: u32 = 16;

/// Stage results besides a [`Verdict`] code.
const NO_REPLY: u32 = u32::MAX;
const NEW_FLOW: u32 = u32::MAX - 1;
const KEPT_FLOW: u32 = u32::MAX - 2;

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    let s = CIP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value, valid for the whole run; a program run is never
    // interleaved with another on the same CPU.
    Some(unsafe { &mut *s })
}

/// Ingress of an external interface (TC: everything).
#[inline(always)]
pub fn ingress<P: Packet>(p: &P) -> Verdict {
    by_family::<P, false>(p)
}

/// Ingress of an external interface at XDP: only the forward path of source-NATed flows
/// whose next hop the FIB knows, translated here and sent on by the entry point
/// ([`Verdict::Route`], with the next hop in the scratch space). Everything else passes,
/// untranslated, to `tc_nodeport` (which finds the flow this path may have recorded).
#[inline(always)]
pub fn xdp_forward<P: Packet>(p: &P) -> Verdict {
    by_family::<P, true>(p)
}

#[inline(always)]
fn by_family<P: Packet, const XDP: bool>(p: &P) -> Verdict {
    let Some(ethertype) = p.load::<u16>(12) else {
        return Verdict::PASS;
    };
    let code = match u16::from_be(ethertype) {
        ETH_P_IP => family::<P, false, XDP>(p),
        ETH_P_IPV6 => family::<P, true, XDP>(p),
        _ => return Verdict::PASS,
    };
    Verdict::decode(code)
}

#[inline(never)]
fn family<P: Packet, const V6: bool, const XDP: bool>(p: &P) -> u32 {
    let Some((_, _, proto)) = nat::parse_l3::<P, V6>(p, ETH_LEN) else {
        return 0;
    };
    if proto == if V6 { PROTO_ICMPV6 } else { PROTO_ICMP } {
        return if XDP { 0 } else { icmp::<P, V6>(p) };
    }
    let Some((t, flags)) = nat::parse_l4::<P, V6>(p) else {
        return 0;
    };
    let Some(s) = scratch() else {
        return 0;
    };
    s.t = t;
    s.tcp_flags = flags;
    if !XDP {
        let code = reply::<P, V6>(p);
        if code != NO_REPLY {
            return code;
        }
    }
    match pick::<P, V6>(p) {
        NEW_FLOW => {
            if new_flow::<P, V6>(p) == 0 {
                return Verdict::DROP.encode();
            }
        }
        KEPT_FLOW => {}
        // XDP leaves drops, rejects and the rest to TC, which decides the same again.
        _ if XDP => return 0,
        verdict => return verdict,
    }
    if XDP && next_hop::<P, V6>(p) == 0 {
        return 0;
    }
    apply::<P, V6>(p)
}

/// XDP, before rewriting: whether the flow in `s.e` is source-NATed and the FIB knows the
/// next hop towards its backend (neighbour resolved); if so the egress interface and MACs
/// are in the scratch space (1). Otherwise (0) the packet passes to TC untranslated: a local
/// backend is reached through the stack, and `bpf_redirect_neigh` (TC only) resolves a
/// neighbour.
#[inline(never)]
fn next_hop<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some(s) = scratch() else {
        return 0;
    };
    if s.e.flags & CT_FLAG_SNAT == 0 {
        return 0;
    }
    let mut params = fib::zeroed();
    fib::set_addrs(&mut params, V6, &s.e.nat_addr, &s.e.addr);
    params.l4_protocol = s.t.proto;
    params.sport = s.e.nat_port;
    params.dport = s.e.port;
    params.__bindgen_anon_1.tot_len = (p.len() - ETH_LEN as u32) as u16;
    params.ifindex = p.ifindex();
    // SAFETY: the context is the program's; `params` is a live, correctly sized struct.
    let rc = unsafe {
        bpf_fib_lookup(
            p.as_ptr(),
            &mut params,
            core::mem::size_of::<fib::FibParams>() as i32,
            0,
        )
    };
    if rc != fib::FIB_SUCCESS {
        return 0;
    }
    (s.fib_dmac, s.fib_smac) = fib::macs(&params);
    s.fib_ifindex = params.ifindex;
    1
}

/// A reply of a translated flow: translated back. [`NO_REPLY`] when it is none.
#[inline(never)]
fn reply<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some(s) = scratch() else {
        return NO_REPLY;
    };
    match ct::lookup::<V6>(&s.t, CT_DIR_REPLY) {
        // A local backend's reply that reaches an external interface (a backend this node
        // reaches through one): translated at egress, once the stack has routed it. Translated
        // here, its source would be the node's own address, which the stack drops on input.
        Some((e, _)) if e.flags & (CT_FLAG_NODEPORT | CT_FLAG_SNAT) == CT_FLAG_NODEPORT => {
            Verdict::PASS.encode()
        }
        Some((e, slot)) => nat::reverse::<P, V6>(p, &s.t, s.tcp_flags, &e, slot).encode(),
        None => NO_REPLY,
    }
}

/// The frontend and backend of a packet to an external frontend: [`KEPT_FLOW`] (the flow's
/// entry is in `s.e`), [`NEW_FLOW`] (the backend is in `s.b`), or a verdict.
#[inline(never)]
fn pick<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some(s) = scratch() else {
        return 0;
    };
    let t = &s.t;
    if select::vip_flags::<V6>(&t.daddr).is_none() {
        return 0;
    }
    let Some(fe) = select::frontend::<V6>(&t.daddr, t.dport, t.proto, SCOPE_DEFAULT) else {
        // Not a port of a frontend: the address's own (the node's, or the load balancer's).
        return 0;
    };
    if fe.flags & SVC_FLAG_EXTERNAL == 0 {
        // A cluster IP reached from outside: not served there.
        return 0;
    }
    if fe.flags & SVC_FLAG_SOURCE_RANGE != 0 && !select::source_allowed::<V6>(&t.saddr, fe.svc_id) {
        debug!(
            p,
            "clusterip: svc {} source not in its ranges: drop", fe.svc_id
        );
        return Verdict::DROP.encode();
    }
    let (fe, scope) = if fe.flags & SVC_FLAG_EXT_LOCAL != 0 {
        match select::frontend::<V6>(&t.daddr, t.dport, t.proto, SCOPE_EXTERNAL) {
            Some(local) => (local, SCOPE_EXTERNAL),
            None => return Verdict::DROP.encode(),
        }
    } else {
        (fe, SCOPE_DEFAULT)
    };
    s.fe = fe;
    if fe.count == 0 {
        debug!(p, "clusterip: svc {} has no endpoints", fe.svc_id);
        if scope == SCOPE_EXTERNAL {
            // No local endpoint for an `externalTrafficPolicy: Local` service: kube-proxy
            // drops (the load balancer's health check steers clients to other nodes).
            return Verdict::DROP.encode();
        }
        return nat::reject(&fe, V6, t.proto).encode();
    }
    let now = ct::now_ns();
    s.old_nat_port = 0;
    if let Some((e, goes_on)) = nat::forward_entry::<V6>(t, s.tcp_flags, fe.svc_id, now) {
        if goes_on {
            s.e = e;
            return KEPT_FLOW;
        }
        if e.flags & CT_FLAG_SNAT != 0 {
            s.old_nat_port = e.nat_port;
        }
    }
    let Some(b) = select::choose::<V6>(t, &fe, scope, now) else {
        debug!(p, "clusterip: svc {} no usable backend", fe.svc_id);
        return nat::reject(&fe, V6, t.proto).encode();
    };
    if fe.flags & SVC_FLAG_AFFINITY != 0 {
        select::write_affinity::<V6>(&t.saddr, fe.svc_id, b.id, now);
    }
    s.b = b;
    NEW_FLOW
}

/// Records the new flow of `s.t` to `s.b`: to a local backend the client's address is kept;
/// to a remote one the source becomes the node's address and a free port. On success (1)
/// `s.e` is the forward entry; 0: no node address to use, or no free port.
#[inline(never)]
fn new_flow<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some(s) = scratch() else {
        return 0;
    };
    let now = ct::now_ns();
    let closing = nat::closing(s.tcp_flags);
    s.e = Ct {
        addr: s.b.addr,
        nat_addr: [0; 4],
        port: s.b.port,
        nat_port: 0,
        flags: closing | CT_FLAG_NODEPORT,
        svc_id: s.fe.svc_id,
        backend_id: s.b.id,
        last_seen_ns: now,
    };
    s.rev = Ct {
        addr: s.t.daddr,
        nat_addr: [0; 4],
        port: s.t.dport,
        nat_port: 0,
        flags: closing | CT_FLAG_NODEPORT,
        svc_id: s.fe.svc_id,
        backend_id: s.b.id,
        last_seen_ns: now,
    };
    s.rev_t = Tuple {
        saddr: s.b.addr,
        daddr: s.t.saddr,
        sport: s.b.port,
        dport: s.t.sport,
        proto: s.t.proto,
    };
    if s.b.flags & BE_FLAG_LOCAL != 0 {
        // LRU inserts only fail without memory; the flow still maps the same way through
        // Maglev, so go on.
        let _ = ct::insert::<V6>(&s.rev_t, CT_DIR_REPLY, &s.rev);
        let _ = ct::insert::<V6>(&s.t, CT_DIR_FORWARD, &s.e);
        return 1;
    }
    let cfg = ct::config();
    let snat = if s.fe.flags & SVC_FLAG_NODE_ADDR != 0 {
        s.t.daddr
    } else if V6 {
        cfg.snat6
    } else {
        [cfg.snat4, 0, 0, 0]
    };
    if snat == [0; 4] {
        debug!(
            p,
            "clusterip: svc {} no node address to SNAT to", s.fe.svc_id
        );
        return 0;
    }
    s.e.flags |= CT_FLAG_SNAT;
    s.e.nat_addr = snat;
    s.rev.flags |= CT_FLAG_SNAT;
    s.rev.nat_addr = s.t.saddr;
    s.rev.nat_port = s.t.sport;
    s.rev_t.daddr = snat;
    // The port of the client tuple's earlier flow first (see `Scratch::old_nat_port`), then
    // random tries, as Cilium's SNAT does: stepping from a hash would make taken ports
    // cluster and every later flow landing in a cluster walk it.
    for n in 0..SNAT_TRIES {
        s.rev_t.dport = if n == 0 && s.old_nat_port != 0 {
            s.old_nat_port
        } else {
            // SAFETY: plain helper call.
            let i = unsafe { bpf_get_prandom_u32() } % SNAT_PORTS;
            clusterip_common::snat_port(i).to_be()
        };
        let taken = match ct::lookup::<V6>(&s.rev_t, CT_DIR_REPLY) {
            // An expired flow's port is free again, and so is the port of this client
            // tuple's own earlier flow: overwrite the entry.
            Some((old, _)) => {
                let own = old.nat_addr == s.t.saddr && old.nat_port == s.t.sport;
                (!own
                    && now.wrapping_sub(old.last_seen_ns)
                        < ct::timeout_ns(&cfg, s.t.proto, old.flags))
                    || ct::insert::<V6>(&s.rev_t, CT_DIR_REPLY, &s.rev).is_err()
            }
            // Create-only: another CPU may have taken the port since the lookup.
            None => ct::insert_new::<V6>(&s.rev_t, CT_DIR_REPLY, &s.rev).is_err(),
        };
        if !taken {
            s.e.nat_port = s.rev_t.dport;
            let _ = ct::insert::<V6>(&s.t, CT_DIR_FORWARD, &s.e);
            return 1;
        }
    }
    debug!(p, "clusterip: svc {} no free SNAT port", s.fe.svc_id);
    0
}

/// Rewrites the packet by `s.e`.
#[inline(never)]
fn apply<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some(s) = scratch() else {
        return Verdict::DROP.encode();
    };
    if nat::rewrite::<P, V6, false>(p, &s.t, &s.e).is_none() {
        // Offsets were checked while parsing; a failure here is a helper error. Never let a
        // half-rewritten packet go.
        return Verdict::DROP.encode();
    }
    nat::count(s.e.svc_id, p.len());
    debug!(
        p,
        "clusterip: svc {} from outside -> backend {}", s.e.svc_id, s.e.backend_id
    );
    if s.e.flags & CT_FLAG_SNAT != 0 {
        Verdict::route(V6).encode()
    } else {
        Verdict::TRANSLATED.encode()
    }
}

/// An ICMP error about a translated flow (see [`nat::icmp_error`]).
#[inline(never)]
fn icmp<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some((saddr, daddr, _)) = nat::parse_l3::<P, V6>(p, ETH_LEN) else {
        return 0;
    };
    nat::icmp_error::<P, V6, true>(p, &saddr, &daddr)
        .unwrap_or(Verdict::PASS)
        .encode()
}

/// Egress of an external interface: replies of a local backend to an outside client (routed
/// by the stack with the backend's address as source) get the frontend's address back, and
/// so do the node's own ICMP errors about such flows. Everything else passes.
#[inline(always)]
pub fn egress<P: Packet>(p: &P) -> Verdict {
    let Some(ethertype) = p.load::<u16>(12) else {
        return Verdict::PASS;
    };
    let (v6, proto) = match u16::from_be(ethertype) {
        ETH_P_IP => (false, p.load::<u8>(ETH_LEN + 9)),
        ETH_P_IPV6 => (true, p.load::<u8>(ETH_LEN + 6)),
        _ => return Verdict::PASS,
    };
    let code = match (v6, proto) {
        (false, Some(PROTO_ICMP)) => icmp::<P, false>(p),
        (true, Some(PROTO_ICMPV6)) => icmp::<P, true>(p),
        (false, _) => egress_reply::<P, false>(p),
        (true, _) => egress_reply::<P, true>(p),
    };
    Verdict::decode(code)
}

#[inline(never)]
fn egress_reply<P: Packet, const V6: bool>(p: &P) -> u32 {
    let Some((t, flags)) = nat::parse_l4::<P, V6>(p) else {
        return 0;
    };
    let Some((e, slot)) = ct::lookup::<V6>(&t, CT_DIR_REPLY) else {
        return 0;
    };
    if e.flags & CT_FLAG_NODEPORT == 0 || e.flags & CT_FLAG_SNAT != 0 {
        // Pod-side flows are translated on the pod's interface; source-NATed replies come in
        // addressed to the node and are translated at ingress.
        return 0;
    }
    nat::reverse::<P, V6>(p, &t, flags, &e, slot).encode()
}
