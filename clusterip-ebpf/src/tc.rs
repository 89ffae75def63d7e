//! `tc_ingress`: per-packet ClusterIP translation at TC ingress of pod-facing interfaces.
//! Both directions (forward to a backend, reply back to VIP:port), ICMP errors about
//! translated flows, and immediate RST / ICMP port unreachable for VIPs without endpoints
//! (redirected back out of the interface the packet came in on). See [`crate::nat`].
//!
//! `tc_egress`, on the egress of the same interfaces, translates the ICMP errors the node
//! itself generates about translated flows (fragmentation needed, packet too big), which leave
//! towards the client without passing any ingress.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};

use crate::{
    nat::{self, AT_TC, Verdict},
    pkt::{Packet, TcPkt},
    reject,
};

/// Untouched packets go on to the next program (TCX_NEXT / TC_ACT_UNSPEC).
const TC_ACT_UNSPEC: i32 = -1;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc_main(&ctx)
}

/// A BPF subprogram of its own (not inlined): both entry points call it, and inlined twice
/// its frame would exceed the 512-byte stack. Returns a plain scalar (a `Result` would come
/// back through a pointer into the caller's stack, which the verifier refuses).
#[inline(never)]
fn tc_main(ctx: &TcContext) -> i32 {
    let p = TcPkt(ctx);
    match nat::process::<_, AT_TC>(&p) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Translated => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Reject { v6, tcp } => {
            if reject::build(&p, v6, tcp).is_none() {
                return TC_ACT_SHOT;
            }
            // SAFETY: plain helper call; returns TC_ACT_REDIRECT (or TC_ACT_SHOT on a bad flag).
            unsafe { bpf_redirect(p.ifindex(), 0) as i32 }
        }
    }
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let p = TcPkt(&ctx);
    // Only ICMP errors; the shared path is the same as at ingress (which sends ICMP straight
    // to the ICMP-error translation).
    let icmp = match p.load::<u16>(12).map(u16::from_be) {
        Some(0x0800) => p.load::<u8>(14 + 9) == Some(1),
        Some(0x86dd) => p.load::<u8>(14 + 6) == Some(58),
        _ => false,
    };
    if !icmp {
        return TC_ACT_UNSPEC;
    }
    // ICMP is never rejected: this only ever translates or passes.
    tc_main(&ctx)
}
