//! clusterip: Kubernetes ClusterIP services at socket level.
//!
//! cgroup v2 `sock_addr` programs translate a service VIP:port to one of its backends where
//! the socket names its peer (connect, sendmsg) and translate the backend back to the VIP
//! where the peer is reported to the application (recvmsg, getpeername). No packet is ever
//! rewritten: the socket is connected straight to the backend.
//!
//! Layout (as in Cilium's bpf_sock.c, split by attach point):
//! - `maps`: every map (the contract lives in `clusterip_common`);
//! - `ctx`: field access to `bpf_sock_addr` in the shapes the verifier accepts;
//! - `lb`: the shared lookup (frontend, wildcard, backend choice, affinity, reverse NAT);
//! - `sock_connect`, `sock_sendmsg`, `sock_recvmsg`, `sock_getpeername`: the entry points
//!   (`connect4`, `connect6`, `sendmsg4`, ...), thin wrappers over `lb`.
//!
//! Logs (aya-log) are `debug!` only; the loader sets `AYA_LOG_LEVEL` before load, and with
//! debug off the verifier drops the logging code as dead.
#![no_std]
#![no_main]

mod ct;
mod ctx;
mod fib;
mod lb;
mod maps;
mod nat;
mod nodeport;
mod pkt;
mod reject;
mod select;
mod sock_connect;
mod sock_getpeername;
mod sock_recvmsg;
mod sock_sendmsg;
mod tc;
mod xdp;

/// Maps a forward hook's result to its return value: `Ok` lets the syscall go on (1),
/// `Err(errno)` fails it with errno.
#[inline(always)]
fn verdict(result: Result<(), i32>) -> i32 {
    match result {
        Ok(()) => 1,
        Err(errno) => {
            ctx::set_errno(errno);
            0
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
