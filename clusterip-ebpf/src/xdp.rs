//! `xdp_ingress`: the forward translation of [`crate::nat`] at XDP (client -> VIP:port to a
//! backend, with conntrack and Maglev). Replies and ICMP errors are left to `tc_ingress`
//! (XDP_PASS). A VIP without usable endpoints is passed on too, so TC answers it with a RST or
//! ICMP error; SVC_FLAG_DROP services are dropped here.
//!
//! `xdp_nodeport`: on the node's external interfaces, the forward path of flows from outside
//! to a backend on another node ([`crate::nodeport::xdp_forward`]): translated (DNAT and
//! SNAT) and sent straight back out (XDP_TX) or to the egress interface the FIB names
//! (redirect), never entering the stack. Everything else passes to `tc_nodeport`.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, macros::xdp, programs::XdpContext};

use crate::{
    maps::CIP_SCRATCH,
    nat::{self, AT_XDP, Kind},
    nodeport,
    pkt::{Packet, XdpPkt},
};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    match nat::process::<_, AT_XDP>(&XdpPkt(&ctx)).kind() {
        Kind::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The floor of cost measurements: an XDP program that only passes. Never attached by the
/// agent; `tests/tests/packet_cost.rs` runs it next to the real programs.
#[xdp]
pub fn xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_nodeport(ctx: XdpContext) -> u32 {
    let p = XdpPkt(&ctx);
    match nodeport::xdp_forward(&p).kind() {
        Kind::Route => send(&p),
        Kind::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Sends a translated packet to the next hop [`nodeport::xdp_forward`] found: its MACs
/// written, out of the interface it came in on (XDP_TX) or redirected to another.
#[inline(always)]
fn send(p: &XdpPkt<'_>) -> u32 {
    let Some(s) = CIP_SCRATCH.get_ptr(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: this CPU's scratch value, just written by the same run.
    let s = unsafe { &*s };
    if p.store(0, &s.fib_dmac).is_none() || p.store(6, &s.fib_smac).is_none() {
        return xdp_action::XDP_DROP;
    }
    if s.fib_ifindex == p.ifindex() {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call; returns XDP_REDIRECT, or XDP_ABORTED on a bad interface.
    unsafe { bpf_redirect(s.fib_ifindex, 0) as u32 }
}
