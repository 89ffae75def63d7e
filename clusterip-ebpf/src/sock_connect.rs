//! connect(2) on TCP and UDP sockets: a VIP:port destination becomes one of its backends.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    lb::{self, Hook},
    verdict,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_connect4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    verdict(try_connect6(&ctx))
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    lb::forward4(ctx, Hook::Connect)
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    lb::forward6(ctx, Hook::Connect)
}
