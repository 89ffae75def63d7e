//! getpeername(2): a socket connected to a backend through a VIP reports the VIP:port.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::lb;

/// Never fails the syscall: at most the reported address changes.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    lb::reverse4(&ctx);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    lb::reverse6(&ctx);
    1
}
