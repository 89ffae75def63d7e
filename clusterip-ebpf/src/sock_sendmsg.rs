//! sendmsg(2)/sendto(2) with a destination on unconnected UDP sockets: each datagram to a
//! VIP:port goes to a backend, the same one for the socket while that backend exists.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    lb::{self, Hook},
    verdict,
};

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(lb::forward4(&ctx, Hook::Sendmsg))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(lb::forward6(&ctx, Hook::Sendmsg))
}
