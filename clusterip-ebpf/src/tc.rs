//! `tc_ingress`: per-packet ClusterIP translation at TC ingress of pod-facing interfaces.
//! Both directions (forward to a backend, reply back to VIP:port), ICMP errors about
//! translated flows, and immediate RST / ICMP port unreachable for VIPs without endpoints
//! (redirected back out of the interface it came in on). See [`crate::nat`].
//!
//! `tc_egress`, on the egress of the same interfaces, translates the ICMP errors the node
//! itself generates about translated flows (fragmentation needed, packet too big), which leave
//! towards the client without passing any ingress.
//!
//! `tc_nodeport` and `tc_nodeport_egress`, on the node's external interfaces: traffic from
//! outside the node to node ports, load-balancer IPs and external IPs, and its replies (see
//! [`crate::nat`]'s module docs); what they send with the node's own address as source leaves
//! by a FIB lookup and a redirect ([`route`]).

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;

use crate::{
    fib::{self, FIB_NO_NEIGH, FIB_SUCCESS, FibParams},
    nat::{self, AT_TC, Kind, Verdict},
    nodeport,
    pkt::{ETH_LEN, Packet, TcPkt},
    reject,
};

/// Untouched packets go on to the next program (TCX_NEXT / TC_ACT_UNSPEC).
const TC_ACT_UNSPEC: i32 = -1;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    action(&ctx, Verdict::decode(tc_main(&ctx)))
}

/// A BPF subprogram of its own (not inlined): both entry points call it, and inlined twice
/// its frame would exceed the 512-byte stack. Returns the verdict as a scalar (an enum would
/// come back through a pointer into the caller's stack, which the verifier refuses); the
/// entry point acts on it, so that the answer and routing subprograms are not called from
/// this large frame (the verifier adds up the frames of a call chain).
#[inline(never)]
fn tc_main(ctx: &TcContext) -> u32 {
    nat::process::<_, AT_TC>(&TcPkt(ctx)).encode()
}

/// What a verdict means at TC.
#[inline(always)]
fn action(ctx: &TcContext, verdict: Verdict) -> i32 {
    match verdict.kind() {
        Kind::Pass => TC_ACT_UNSPEC,
        Kind::Translated => TC_ACT_OK,
        Kind::Route => route(ctx, verdict.v6()),
        Kind::Drop => TC_ACT_SHOT,
        Kind::Reject => answer(ctx, verdict.v6(), verdict.tcp()),
    }
}

/// Turns the packet into its RST / ICMP unreachable and sends it back where it came from. A
/// subprogram of its own: the answer is built on the stack.
#[inline(never)]
fn answer(ctx: &TcContext, v6: bool, tcp: bool) -> i32 {
    let p = TcPkt(ctx);
    if reject::build(&p, v6, tcp).is_none() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT (or TC_ACT_SHOT on a bad flag).
    unsafe { bpf_redirect(p.ifindex(), 0) as i32 }
}

/// Whether the packet is ICMP or ICMPv6 (Ethernet, plain IP header).
#[inline(always)]
fn is_icmp(p: &TcPkt<'_>) -> bool {
    match p.load::<u16>(12).map(u16::from_be) {
        Some(0x0800) => p.load::<u8>(14 + 9) == Some(1),
        Some(0x86dd) => p.load::<u8>(14 + 6) == Some(58),
        _ => false,
    }
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let p = TcPkt(&ctx);
    // Only ICMP errors; the shared path is the same as at ingress (which sends ICMP straight
    // to the ICMP-error translation).
    if !is_icmp(&p) {
        return TC_ACT_UNSPEC;
    }
    // ICMP is never rejected: this only ever translates or passes.
    action(&ctx, Verdict::decode(tc_main(&ctx)))
}

/// The floor of cost measurements: a classifier that only returns. Never attached by the
/// agent; `tests/tests/packet_cost.rs` runs it next to the real programs.
#[classifier]
pub fn tc_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_nodeport(ctx: TcContext) -> i32 {
    action(&ctx, nodeport::ingress(&TcPkt(&ctx)))
}

#[classifier]
pub fn tc_nodeport_egress(ctx: TcContext) -> i32 {
    let p = TcPkt(&ctx);
    match nodeport::egress(&p).kind() {
        Kind::Pass => TC_ACT_UNSPEC,
        // Already routed by the stack: whatever was rewritten goes on.
        Kind::Translated | Kind::Route | Kind::Reject => TC_ACT_OK,
        Kind::Drop => TC_ACT_SHOT,
    }
}

/// Sends a packet the datapath gave the node's own address as source (source-NATed to a
/// remote backend, or a reply on its way back to an outside client) straight to its next hop:
/// a FIB lookup for its (new) addresses, the next hop's MAC addresses written, and a redirect
/// to the egress of the interface found; when the neighbour is not resolved yet,
/// `bpf_redirect_neigh` resolves it. The stack's input path would drop such a packet as a
/// martian (a source address of its own arriving from outside).
#[inline(never)]
fn route(ctx: &TcContext, v6: bool) -> i32 {
    let p = &TcPkt(ctx);
    let mut fib = fib::zeroed();
    let filled = if v6 {
        fill6(p, &mut fib)
    } else {
        fill4(p, &mut fib)
    };
    if filled.is_none() {
        return TC_ACT_SHOT;
    }
    fib.ifindex = p.ifindex();
    // `tot_len` stays 0: the kernel then checks the skb against the egress MTU as the stack
    // does (a GSO packet is segmented later). Given the IP total length instead it compares
    // that, and every coalesced TCP segment from a TSO sender fails as FRAG_NEEDED.
    // SAFETY: the context is the program's skb; `fib` is a live, correctly sized struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        FIB_SUCCESS => {
            let (dmac, smac) = fib::macs(&fib);
            if p.store(0, &dmac).is_none() || p.store(6, &smac).is_none() {
                return TC_ACT_SHOT;
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(fib.ifindex, 0) as i32 }
        }
        FIB_NO_NEIGH => {
            // SAFETY: plain helper call; no next-hop parameters: the kernel uses the route's.
            unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
        }
        other => {
            debug!(ctx, "clusterip: fib lookup failed ({}): drop", other);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn fill4(p: &TcPkt<'_>, fib: &mut FibParams) -> Option<()> {
    fib.family = fib::AF_INET;
    fib.l4_protocol = p.load::<u8>(ETH_LEN + 9)?;
    fib.sport = p.load::<u16>(ETH_LEN + 20)?;
    fib.dport = p.load::<u16>(ETH_LEN + 22)?;
    fib.__bindgen_anon_2.tos = p.load::<u8>(ETH_LEN + 1)?;
    fib.__bindgen_anon_3.ipv4_src = p.load::<u32>(ETH_LEN + 12)?;
    fib.__bindgen_anon_4.ipv4_dst = p.load::<u32>(ETH_LEN + 16)?;
    Some(())
}

#[inline(always)]
fn fill6(p: &TcPkt<'_>, fib: &mut FibParams) -> Option<()> {
    fib.family = fib::AF_INET6;
    fib.l4_protocol = p.load::<u8>(ETH_LEN + 6)?;
    fib.sport = p.load::<u16>(ETH_LEN + 40)?;
    fib.dport = p.load::<u16>(ETH_LEN + 42)?;
    fib.__bindgen_anon_3.ipv6_src = p.load::<[u32; 4]>(ETH_LEN + 8)?;
    fib.__bindgen_anon_4.ipv6_dst = p.load::<[u32; 4]>(ETH_LEN + 24)?;
    Some(())
}
