//! Access to the `bpf_sock_addr` context.
//!
//! The verifier only accepts full 4-byte stores to `user_ip4`, `user_ip6[i]` and `user_port`
//! (and 4-byte loads of `family`/`protocol`), so every access goes through a volatile u32
//! read or write of exactly one field: the compiler can neither split nor merge them.
//! Addresses and the port stay in network order, exactly as in the maps.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};

pub const PROTO_TCP: u32 = clusterip_common::PROTO_TCP as u32;
pub const PROTO_UDP: u32 = clusterip_common::PROTO_UDP as u32;

/// The first three words of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), network order.
pub const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

#[inline(always)]
pub fn protocol(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).protocol)) }
}

#[inline(always)]
pub fn ip4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: as above; user_ip4 is readable in every *4 hook.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_ip4)) }
}

#[inline(always)]
pub fn set_ip4(ctx: &SockAddrContext, addr: u32) {
    // SAFETY: as above; user_ip4 is writable in every *4 hook we attach.
    unsafe { write_volatile(addr_of_mut!((*ctx.sock_addr).user_ip4), addr) }
}

#[inline(always)]
pub fn ip6(ctx: &SockAddrContext) -> [u32; 4] {
    // SAFETY: as above; user_ip6 is readable word by word in every *6 hook.
    unsafe {
        let p = addr_of!((*ctx.sock_addr).user_ip6);
        [
            read_volatile(addr_of!((*p)[0])),
            read_volatile(addr_of!((*p)[1])),
            read_volatile(addr_of!((*p)[2])),
            read_volatile(addr_of!((*p)[3])),
        ]
    }
}

#[inline(always)]
pub fn set_ip6(ctx: &SockAddrContext, addr: [u32; 4]) {
    // SAFETY: as above; user_ip6 is writable word by word in every *6 hook we attach.
    unsafe {
        let p = addr_of_mut!((*ctx.sock_addr).user_ip6);
        write_volatile(addr_of_mut!((*p)[0]), addr[0]);
        write_volatile(addr_of_mut!((*p)[1]), addr[1]);
        write_volatile(addr_of_mut!((*p)[2]), addr[2]);
        write_volatile(addr_of_mut!((*p)[3]), addr[3]);
    }
}

/// Only the last word of an IPv4-mapped address changes.
#[inline(always)]
pub fn set_ip6_word3(ctx: &SockAddrContext, word: u32) {
    // SAFETY: as in set_ip6.
    unsafe {
        let p = addr_of_mut!((*ctx.sock_addr).user_ip6);
        write_volatile(addr_of_mut!((*p)[3]), word);
    }
}

/// The port, network order (the low 16 bits of `user_port`).
#[inline(always)]
pub fn port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: as above.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_port)) as u16 }
}

#[inline(always)]
pub fn set_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: as above.
    unsafe { write_volatile(addr_of_mut!((*ctx.sock_addr).user_port), u32::from(port)) }
}

#[inline(always)]
pub fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
pub fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes the program's context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// Whether the kernel has `bpf_set_retval` (5.18+). A constant in `.rodata` that the agent
/// sets at load time from its probe (`EbpfLoader::override_global`); aya freezes `.rodata`, so
/// the verifier knows the value and never visits the branch not taken: on a kernel without the
/// helper the call is dead code and removed before the helper is looked up ("unknown func"
/// would otherwise reject the program). Without it, a refused connect() fails with EPERM.
#[unsafe(no_mangle)]
static HAVE_SET_RETVAL: u8 = 1;

/// Makes the syscall fail with `errno` once the program returns 0 (with `bpf_set_retval`);
/// on kernels without the helper it fails with EPERM.
#[inline(always)]
pub fn set_errno(errno: i32) {
    // SAFETY: a plain read of a static; volatile so the compiler keeps the load that the
    // loader's value decides.
    let have = unsafe { read_volatile(addr_of!(HAVE_SET_RETVAL)) };
    if have != 0 {
        // SAFETY: plain helper call; it only fails for values outside [-4095, 0].
        let _ = unsafe { bpf_set_retval(-errno) };
    }
}

#[inline(always)]
pub fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == V4_MAPPED_PREFIX[0]
        && addr[1] == V4_MAPPED_PREFIX[1]
        && addr[2] == V4_MAPPED_PREFIX[2]
}
