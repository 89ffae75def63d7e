//! recvmsg(2)/recvfrom(2) on UDP sockets: a datagram from a backend the socket sent to through
//! a VIP is reported as coming from that VIP:port.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{lb, verdict};

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    verdict(try_recvmsg4(&ctx))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    verdict(try_recvmsg6(&ctx))
}

#[inline(always)]
fn try_recvmsg4(ctx: &SockAddrContext) -> Result<i32, i32> {
    lb::reverse4(ctx)
}

#[inline(always)]
fn try_recvmsg6(ctx: &SockAddrContext) -> Result<i32, i32> {
    lb::reverse6(ctx)
}
