//! `xdp_ingress`: the forward translation of [`crate::nat`] at XDP (client -> VIP:port to a
//! backend, with conntrack and Maglev). Replies and ICMP errors are left to `tc_ingress`
//! (XDP_PASS). A VIP without usable endpoints is passed on too, so TC answers it with a RST or
//! ICMP error; SVC_FLAG_DROP services are dropped here.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::{
    nat::{self, AT_XDP, Kind},
    pkt::XdpPkt,
};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    match nat::process::<_, AT_XDP>(&XdpPkt(&ctx)).kind() {
        Kind::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}
