//! FIB lookups (`bpf_fib_lookup`) shared by TC and XDP: what they answer and the parameters
//! of a packet about to leave with the node's own address as source.

pub use aya_ebpf::bindings::bpf_fib_lookup as FibParams;

/// `enum bpf_fib_lookup_ret`.
pub const FIB_SUCCESS: i64 = 0;
pub const FIB_NO_NEIGH: i64 = 7;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// The parameters all zero (a plain C struct of integers: its documented initial state).
#[inline(always)]
pub fn zeroed() -> FibParams {
    // SAFETY: see above.
    unsafe { core::mem::zeroed() }
}

/// Sets the addresses of `fib` (network order; IPv4 in `[0]`).
#[inline(always)]
pub fn set_addrs(fib: &mut FibParams, v6: bool, src: &[u32; 4], dst: &[u32; 4]) {
    if v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = dst[0];
    }
}

/// The next hop's and the egress interface's MAC addresses after a successful lookup.
#[inline(always)]
pub fn macs(fib: &FibParams) -> ([u8; 6], [u8; 6]) {
    // SAFETY: union access; after a successful lookup the MACs are set.
    unsafe {
        (
            fib.__bindgen_anon_6.__bindgen_anon_2.dmac,
            fib.__bindgen_anon_6.__bindgen_anon_2.smac,
        )
    }
}
