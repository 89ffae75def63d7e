//! connect(2) on TCP and UDP sockets: a VIP:port destination becomes one of its backends.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    lb::{self, Hook},
    verdict,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    verdict(lb::forward4(&ctx, Hook::Connect))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    verdict(lb::forward6(&ctx, Hook::Connect))
}
