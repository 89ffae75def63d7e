//! getpeername(2): a socket connected to a backend through a VIP reports the VIP:port.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{lb, verdict};

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    verdict(try_getpeername4(&ctx))
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    verdict(try_getpeername6(&ctx))
}

#[inline(always)]
fn try_getpeername4(ctx: &SockAddrContext) -> Result<i32, i32> {
    lb::reverse4(ctx)
}

#[inline(always)]
fn try_getpeername6(ctx: &SockAddrContext) -> Result<i32, i32> {
    lb::reverse6(ctx)
}
