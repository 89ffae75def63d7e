//! Immediate answers for a VIP without usable endpoints (TC only): the client's packet is
//! turned into a TCP RST or an ICMP/ICMPv6 port unreachable addressed back to it, and the
//! caller redirects it out of the interface it came in on. Like Linux's `tcp_v4_send_reset` /
//! `icmp_send`: source = the VIP the client addressed, destination = the client, MACs swapped.
//!
//! The new packet is built whole on the stack (54..110 bytes), its checksums computed here,
//! the skb resized with `bpf_skb_change_tail` and overwritten with one `bpf_skb_store_bytes`.

use crate::pkt::{
    ETH_LEN, F_RECOMPUTE_CSUM, IP4_LEN, IP6_LEN, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Packet,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcPkt, fold,
};
use core::mem::{MaybeUninit, size_of};

const TCP_LEN: usize = 20;
/// ICMP header + quoted IP header + 8 bytes of its payload.
const ICMP4_LEN: usize = 8 + IP4_LEN + 8;
const ICMP6_LEN: usize = 8 + IP6_LEN + 8;

const RST4: usize = ETH_LEN + IP4_LEN + TCP_LEN;
const RST6: usize = ETH_LEN + IP6_LEN + TCP_LEN;
const UNREACH4: usize = ETH_LEN + IP4_LEN + ICMP4_LEN;
const UNREACH6: usize = ETH_LEN + IP6_LEN + ICMP6_LEN;

/// One's complement sum of `b[from..to]` as big-endian 16-bit words (`to - from` even).
/// An answer buffer, 8-byte aligned (so its size is a multiple of 8), zeroed word by word
/// with volatile stores. A plain `[0u8; N]` makes LLVM call `memset`, a BPF subprogram of its
/// own that adds a frame to the call chain, which kernels before 6.6 count (rounded up to 32
/// bytes) against the 512-byte stack.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

impl<const N: usize> Aligned<N> {
    #[inline(always)]
    fn zero(buf: &mut MaybeUninit<Self>) -> &mut [u8; N] {
        let words = size_of::<Self>() / 8;
        let p = buf.as_mut_ptr().cast::<u64>();
        let mut i = 0;
        while i < words {
            // SAFETY: i < size/8 words inside the 8-aligned buffer.
            unsafe { p.add(i).write_volatile(0) };
            i += 1;
        }
        // SAFETY: every byte was just written.
        unsafe { &mut (*buf.as_mut_ptr()).0 }
    }
}

#[inline(always)]
fn sum(b: &[u8], from: usize, to: usize) -> u32 {
    let mut s = 0u32;
    let mut i = from;
    while i + 1 < to {
        s += (u32::from(b[i]) << 8) | u32::from(b[i + 1]);
        i += 2;
    }
    s
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    let x = v.to_be_bytes();
    b[at] = x[0];
    b[at + 1] = x[1];
}

#[inline(always)]
fn put32(b: &mut [u8], at: usize, v: u32) {
    let x = v.to_be_bytes();
    b[at] = x[0];
    b[at + 1] = x[1];
    b[at + 2] = x[2];
    b[at + 3] = x[3];
}

/// Ethernet header with the MACs swapped; keeps the ethertype.
#[inline(always)]
fn eth(p: &TcPkt, b: &mut [u8]) -> Option<()> {
    let hdr: [u8; ETH_LEN] = p.load(0)?;
    let mut i = 0;
    while i < 6 {
        b[i] = hdr[6 + i];
        b[6 + i] = hdr[i];
        i += 1;
    }
    b[12] = hdr[12];
    b[13] = hdr[13];
    Some(())
}

/// IPv4 header (no options) from `src` to `dst` (as in memory) with `payload` bytes.
#[inline(always)]
fn ip4(b: &mut [u8], proto: u8, payload: usize, src: [u8; 4], dst: [u8; 4]) {
    let o = ETH_LEN;
    b[o] = 0x45;
    b[o + 1] = 0;
    put16(b, o + 2, (IP4_LEN + payload) as u16);
    put16(b, o + 4, 0);
    put16(b, o + 6, 0x4000); // DF
    b[o + 8] = 64;
    b[o + 9] = proto;
    put16(b, o + 10, 0);
    b[o + 12..o + 16].copy_from_slice(&src);
    b[o + 16..o + 20].copy_from_slice(&dst);
    let c = !fold(sum(b, o, o + IP4_LEN));
    put16(b, o + 10, c);
}

/// IPv6 header from `src` to `dst` with `payload` bytes.
#[inline(always)]
fn ip6(b: &mut [u8], nexthdr: u8, payload: usize, src: [u8; 16], dst: [u8; 16]) {
    let o = ETH_LEN;
    put32(b, o, 0x6000_0000);
    put16(b, o + 4, payload as u16);
    b[o + 6] = nexthdr;
    b[o + 7] = 64;
    b[o + 8..o + 24].copy_from_slice(&src);
    b[o + 24..o + 40].copy_from_slice(&dst);
}

/// The L4 checksum with the pseudo header of the IP header already in `b`.
#[inline(always)]
fn l4_csum(b: &[u8], v6: bool, proto: u8, l4: usize, len: usize) -> u16 {
    let addrs = if v6 {
        sum(b, ETH_LEN + 8, ETH_LEN + 40)
    } else {
        sum(b, ETH_LEN + 12, ETH_LEN + 20)
    };
    let s = addrs + u32::from(proto) + len as u32 + sum(b, l4, l4 + len);
    !fold(s)
}

/// `(seq, ack, flags)` of the RST answering a segment, as Linux's tcp_v4_send_reset does.
#[inline(always)]
fn rst_numbers(p: &TcPkt, l4: usize, l3_payload: usize) -> Option<(u32, u32, u8)> {
    let seq = u32::from_be(p.load::<u32>(l4 + 4)?);
    let ack = u32::from_be(p.load::<u32>(l4 + 8)?);
    let doff = usize::from(p.load::<u8>(l4 + 12)? >> 4) * 4;
    let flags: u8 = p.load(l4 + 13)?;
    if flags & TCP_RST != 0 || doff < TCP_LEN || l3_payload < doff {
        // Never answer a RST; malformed segments get nothing.
        return None;
    }
    if flags & TCP_ACK != 0 {
        Some((ack, 0, TCP_RST))
    } else {
        let mut len = (l3_payload - doff) as u32;
        if flags & TCP_SYN != 0 {
            len += 1;
        }
        if flags & TCP_FIN != 0 {
            len += 1;
        }
        Some((0, seq.wrapping_add(len), TCP_RST | TCP_ACK))
    }
}

#[inline(always)]
fn tcp(b: &mut [u8], l4: usize, sport: [u8; 2], dport: [u8; 2], n: (u32, u32, u8)) {
    b[l4] = sport[0];
    b[l4 + 1] = sport[1];
    b[l4 + 2] = dport[0];
    b[l4 + 3] = dport[1];
    put32(b, l4 + 4, n.0);
    put32(b, l4 + 8, n.1);
    b[l4 + 12] = 5 << 4;
    b[l4 + 13] = n.2;
    put16(b, l4 + 14, 0);
    put16(b, l4 + 16, 0);
    put16(b, l4 + 18, 0);
}

/// Turns the packet into its answer. `None`: could not (the caller drops it).
#[inline(always)]
pub fn build(p: &TcPkt, v6: bool, is_tcp: bool) -> Option<()> {
    match (v6, is_tcp) {
        (false, true) => rst4(p),
        (true, true) => rst6(p),
        (false, false) => unreach4(p),
        (true, false) => unreach6(p),
    }
}

#[inline(always)]
fn finish<const N: usize>(p: &TcPkt, b: &[u8; N]) -> Option<()> {
    p.0.change_tail(N as u32, 0).ok()?;
    p.0.store(0, b, F_RECOMPUTE_CSUM).ok()
}

#[inline(always)]
fn rst4(p: &TcPkt) -> Option<()> {
    let l4 = ETH_LEN + IP4_LEN;
    let tot = usize::from(u16::from_be(p.load::<u16>(ETH_LEN + 2)?));
    let n = rst_numbers(p, l4, tot.checked_sub(IP4_LEN)?)?;
    let src: [u8; 4] = p.load(ETH_LEN + 12)?;
    let dst: [u8; 4] = p.load(ETH_LEN + 16)?;
    let ports: [u8; 4] = p.load(l4)?;
    let mut buf = MaybeUninit::<Aligned<RST4>>::uninit();
    let b = Aligned::zero(&mut buf);
    eth(p, b)?;
    ip4(b, PROTO_TCP, TCP_LEN, dst, src);
    tcp(b, l4, [ports[2], ports[3]], [ports[0], ports[1]], n);
    let c = l4_csum(b, false, PROTO_TCP, l4, TCP_LEN);
    put16(b, l4 + 16, c);
    finish(p, b)
}

#[inline(always)]
fn rst6(p: &TcPkt) -> Option<()> {
    let l4 = ETH_LEN + IP6_LEN;
    let plen = usize::from(u16::from_be(p.load::<u16>(ETH_LEN + 4)?));
    let n = rst_numbers(p, l4, plen)?;
    let src: [u8; 16] = p.load(ETH_LEN + 8)?;
    let dst: [u8; 16] = p.load(ETH_LEN + 24)?;
    let ports: [u8; 4] = p.load(l4)?;
    let mut buf = MaybeUninit::<Aligned<RST6>>::uninit();
    let b = Aligned::zero(&mut buf);
    eth(p, b)?;
    ip6(b, PROTO_TCP, TCP_LEN, dst, src);
    tcp(b, l4, [ports[2], ports[3]], [ports[0], ports[1]], n);
    let c = l4_csum(b, true, PROTO_TCP, l4, TCP_LEN);
    put16(b, l4 + 16, c);
    finish(p, b)
}

#[inline(always)]
fn unreach4(p: &TcPkt) -> Option<()> {
    let l4 = ETH_LEN + IP4_LEN;
    let quote: [u8; IP4_LEN + 8] = p.load(ETH_LEN)?;
    let mut buf = MaybeUninit::<Aligned<UNREACH4>>::uninit();
    let b = Aligned::zero(&mut buf);
    eth(p, b)?;
    let src = [quote[12], quote[13], quote[14], quote[15]];
    let dst = [quote[16], quote[17], quote[18], quote[19]];
    ip4(b, PROTO_ICMP, ICMP4_LEN, dst, src);
    b[l4] = 3; // destination unreachable
    b[l4 + 1] = 3; // port unreachable
    b[l4 + 8..l4 + ICMP4_LEN].copy_from_slice(&quote);
    let c = !fold(sum(b, l4, l4 + ICMP4_LEN));
    put16(b, l4 + 2, c);
    finish(p, b)
}

#[inline(always)]
fn unreach6(p: &TcPkt) -> Option<()> {
    let l4 = ETH_LEN + IP6_LEN;
    let quote: [u8; IP6_LEN + 8] = p.load(ETH_LEN)?;
    let mut buf = MaybeUninit::<Aligned<UNREACH6>>::uninit();
    let b = Aligned::zero(&mut buf);
    eth(p, b)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&quote[8..24]);
    dst.copy_from_slice(&quote[24..40]);
    ip6(b, PROTO_ICMPV6, ICMP6_LEN, dst, src);
    b[l4] = 1; // destination unreachable
    b[l4 + 1] = 4; // port unreachable
    b[l4 + 8..l4 + ICMP6_LEN].copy_from_slice(&quote);
    let c = l4_csum(b, true, PROTO_ICMPV6, l4, ICMP6_LEN);
    put16(b, l4 + 2, c);
    finish(p, b)
}
