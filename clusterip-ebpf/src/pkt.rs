//! Bounds-checked packet access for the per-packet programs, one shape for TC and XDP.
//!
//! The translation code ([`crate::nat`]) reads and writes headers at fixed offsets through
//! [`Packet`]; every access is checked and fails with `None` (the caller then leaves the packet
//! alone). TC goes through the skb helpers (`bpf_skb_load_bytes`/`store_bytes`, which also
//! work on non-linear skbs, and `bpf_l3/l4_csum_replace`, which keep `CHECKSUM_PARTIAL` and
//! `CHECKSUM_COMPLETE` skbs right); XDP uses direct packet access and updates checksums
//! incrementally in code (RFC 1624), as it has no checksum helpers.
//!
//! Offsets are constants per header layout (IPv4 without options, IPv6 without extension
//! headers), so the verifier sees `data + constant` everywhere.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    programs::{TcContext, XdpContext},
};

/// `bpf_l4_csum_replace` flags.
pub const F_PSEUDO_HDR: u64 = 16;
pub const F_MARK_MANGLED_0: u64 = 32;
/// `bpf_skb_store_bytes`: keep `skb->csum` (CHECKSUM_COMPLETE) in step.
pub const F_RECOMPUTE_CSUM: u64 = 1;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IP4_LEN: usize = 20;
pub const IP6_LEN: usize = 40;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_TCP: u8 = clusterip_common::PROTO_TCP;
pub const PROTO_UDP: u8 = clusterip_common::PROTO_UDP;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A packet the translation code can read and rewrite.
pub trait Packet: EbpfContext {
    /// The interface the packet came in on.
    fn ifindex(&self) -> u32;
    /// Whole packet length in bytes (from the Ethernet header).
    fn len(&self) -> u32;
    /// Reads a `T` (unaligned, as in memory) at `off`.
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    /// Writes `v` at `off`, without touching any checksum.
    fn store<T: Copy>(&self, off: usize, v: &T) -> Option<()>;
    /// Incremental update of the 16-bit IP-header-style checksum at `off` for a change of a
    /// `size`-byte (2 or 4) field from `from` to `to` (values as in memory).
    fn csum_l3(&self, off: usize, from: u32, to: u32, size: u64) -> Option<()>;
    /// Same for an L4 checksum; `flags` = size | F_PSEUDO_HDR (the field is in the pseudo
    /// header) | F_MARK_MANGLED_0 (UDP: 0 means "no checksum", keep it, never produce it).
    fn csum_l4(&self, off: usize, from: u32, to: u32, flags: u64) -> Option<()>;
}

/// One's complement sum of the 16-bit halves of `v` (size 2: low half only).
#[inline(always)]
fn words(v: u32, size: u64) -> u32 {
    if size == 2 {
        v & 0xffff
    } else {
        (v & 0xffff) + (v >> 16)
    }
}

#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), on values as they are in memory (the one's
/// complement sum does not care about byte order as long as all words are read the same way).
#[inline(always)]
pub fn csum_replace(check: u16, from: u32, to: u32, size: u64) -> u16 {
    let not_from = if size == 2 { !from & 0xffff } else { !from };
    let s = u32::from(!check) + words(not_from, size) + words(to, size);
    !fold(s)
}

/// The TC view. Reads are direct from the linear part of the skb (fresh `data`/`data_end`
/// each time, so no pointer outlives a helper that moves them), with `bpf_skb_load_bytes` for
/// what lies beyond it; a helper call per field cost about as much as the rest of a pass
/// through `tc_ingress` (`tests/tests/packet_cost.rs`). Writes and checksums use the skb
/// helpers, which keep the skb's checksum state right.
pub struct TcPkt<'a>(pub &'a TcContext);

impl EbpfContext for TcPkt<'_> {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.0.as_ptr()
    }
}

impl Packet for TcPkt<'_> {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context is a valid __sk_buff for the whole run; ifindex is readable.
        unsafe { (*(self.0.as_ptr() as *const __sk_buff)).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let start = self.0.data() + off;
        if start + size_of::<T>() <= self.0.data_end() {
            // SAFETY: bounds checked against data_end just above; packet data is readable.
            return Some(unsafe { (start as *const T).read_unaligned() });
        }
        self.0.load::<T>(off).ok()
    }
    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Option<()> {
        self.0.store(off, v, 0).ok()
    }
    #[inline(always)]
    fn csum_l3(&self, off: usize, from: u32, to: u32, size: u64) -> Option<()> {
        self.0
            .l3_csum_replace(off, u64::from(from), u64::from(to), size)
            .ok()
    }
    #[inline(always)]
    fn csum_l4(&self, off: usize, from: u32, to: u32, flags: u64) -> Option<()> {
        self.0
            .l4_csum_replace(off, u64::from(from), u64::from(to), flags)
            .ok()
    }
}

/// The XDP view: direct packet access, checksums computed here.
pub struct XdpPkt<'a>(pub &'a XdpContext);

impl EbpfContext for XdpPkt<'_> {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.0.as_ptr()
    }
}

impl XdpPkt<'_> {
    #[inline(always)]
    fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let start = self.0.data() + off;
        if start + size_of::<T>() > self.0.data_end() {
            return None;
        }
        Some(start as *mut T)
    }
}

impl Packet for XdpPkt<'_> {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let p = self.ptr::<T>(off)?;
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { p.read_unaligned() })
    }
    #[inline(always)]
    fn store<T: Copy>(&self, off: usize, v: &T) -> Option<()> {
        let p = self.ptr::<T>(off)?;
        // SAFETY: as above; XDP packet data is writable.
        unsafe { p.write_unaligned(*v) };
        Some(())
    }
    #[inline(always)]
    fn csum_l3(&self, off: usize, from: u32, to: u32, size: u64) -> Option<()> {
        let check: u16 = self.load(off)?;
        self.store(off, &csum_replace(check, from, to, size))
    }
    #[inline(always)]
    fn csum_l4(&self, off: usize, from: u32, to: u32, flags: u64) -> Option<()> {
        let check: u16 = self.load(off)?;
        let mangled0 = flags & F_MARK_MANGLED_0 != 0;
        if mangled0 && check == 0 {
            return Some(());
        }
        let mut new = csum_replace(check, from, to, flags & 0xf);
        if mangled0 && new == 0 {
            new = 0xffff;
        }
        self.store(off, &new)
    }
}
