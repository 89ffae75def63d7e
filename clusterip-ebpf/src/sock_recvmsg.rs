//! recvmsg(2)/recvfrom(2) on UDP sockets: a datagram from a backend the socket sent to through
//! a VIP is reported as coming from that VIP:port.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::lb;

/// Never fails the syscall: at most the reported address changes.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    lb::reverse4(&ctx);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    lb::reverse6(&ctx);
    1
}
