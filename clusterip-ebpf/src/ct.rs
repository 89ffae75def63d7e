//! Conntrack for the per-packet datapath: both families behind one shape.
//!
//! Addresses are carried as `[u32; 4]` in network order (IPv4 in word 0, the rest 0), so the
//! translation code is written once; `V6` picks the map.
//!
//! A forward entry (client -> VIP:port, dir FORWARD) names the backend; the reply entry
//! (backend -> client, or backend -> VIP when hairpinned, dir REPLY) names the VIP:port to show.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_ktime_get_ns;
use clusterip_common::{CT_FLAG_CLOSING, Ct4Key, Ct4Value, Ct6Key, Ct6Value, DatapathConfigValue};

use crate::maps::{CIP_CONFIG, CIP_CT4, CIP_CT6};
use crate::pkt::PROTO_TCP;

const NS_PER_SEC: u64 = 1_000_000_000;
const ANY: u64 = 0;
const NOEXIST: u64 = 1;

pub type Addr = [u32; 4];

/// A flow as the packet carries it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The tuple of packets going the other way.
    #[inline(always)]
    pub fn reversed(&self) -> Tuple {
        Tuple {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// A conntrack value of either family.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ct {
    pub addr: Addr,
    pub nat_addr: Addr,
    pub port: u16,
    /// With CT_FLAG_SNAT: forward, the new source port; reply, the client's port.
    pub nat_port: u16,
    pub flags: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    pub last_seen_ns: u64,
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// The agent's settings; a field it left 0 (an array entry nobody wrote reads as zeros)
/// takes the default.
#[inline(always)]
pub fn config() -> DatapathConfigValue {
    let d = DatapathConfigValue::DEFAULT;
    let Some(c) = CIP_CONFIG.get(0).copied() else {
        return d;
    };
    let or_default = |v: u32, default: u32| if v == 0 { default } else { v };
    DatapathConfigValue {
        ct_tcp_timeout_s: or_default(c.ct_tcp_timeout_s, d.ct_tcp_timeout_s),
        ct_tcp_closing_timeout_s: or_default(
            c.ct_tcp_closing_timeout_s,
            d.ct_tcp_closing_timeout_s,
        ),
        ct_udp_timeout_s: or_default(c.ct_udp_timeout_s, d.ct_udp_timeout_s),
        snat4: c.snat4,
        snat6: c.snat6,
    }
}

/// Idle timeout of an entry with `flags` for `proto`.
#[inline(always)]
pub fn timeout_ns(cfg: &DatapathConfigValue, proto: u8, flags: u16) -> u64 {
    let s = if proto == PROTO_TCP {
        if flags & CT_FLAG_CLOSING != 0 {
            cfg.ct_tcp_closing_timeout_s
        } else {
            cfg.ct_tcp_timeout_s
        }
    } else {
        cfg.ct_udp_timeout_s
    };
    u64::from(s) * NS_PER_SEC
}

#[inline(always)]
fn key4(t: &Tuple, dir: u8) -> Ct4Key {
    Ct4Key {
        saddr: t.saddr[0],
        daddr: t.daddr[0],
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn key6(t: &Tuple, dir: u8) -> Ct6Key {
    Ct6Key {
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Where a looked-up entry lives in its map, so it can be refreshed in place without a second
/// lookup. Only [`lookup`] makes one, for the map `V6` names.
#[derive(Clone, Copy)]
pub struct Slot<const V6: bool>(*mut c_void);

/// Looks up the entry of `t` in direction `dir`; copies it out.
#[inline(always)]
pub fn lookup<const V6: bool>(t: &Tuple, dir: u8) -> Option<(Ct, Slot<V6>)> {
    if V6 {
        let p = CIP_CT6.get_ptr_mut(&key6(t, dir))?;
        // SAFETY: a valid map value pointer; copied out right away.
        let v = unsafe { *p };
        Some((
            Ct {
                addr: v.addr,
                nat_addr: v.nat_addr,
                port: v.port,
                nat_port: v.nat_port,
                flags: v.flags,
                svc_id: v.svc_id,
                backend_id: v.backend_id,
                last_seen_ns: v.last_seen_ns,
            },
            Slot(p.cast()),
        ))
    } else {
        let p = CIP_CT4.get_ptr_mut(&key4(t, dir))?;
        // SAFETY: as above.
        let v = unsafe { *p };
        Some((
            Ct {
                addr: [v.addr, 0, 0, 0],
                nat_addr: [v.nat_addr, 0, 0, 0],
                port: v.port,
                flags: v.flags,
                svc_id: v.svc_id,
                backend_id: v.backend_id,
                nat_port: v.nat_port,
                last_seen_ns: v.last_seen_ns,
            },
            Slot(p.cast()),
        ))
    }
}

/// Refreshes `last_seen_ns` of a looked-up entry and ORs `set_flags` into it, in place.
#[inline(always)]
pub fn touch<const V6: bool>(slot: Slot<V6>, now: u64, set_flags: u16) {
    // SAFETY: the pointer is a map value of CIP_CT6 (V6) or CIP_CT4 from `lookup`, which
    // stays valid for the whole program run; plain field writes.
    unsafe {
        if V6 {
            let p = slot.0.cast::<Ct6Value>();
            (*p).last_seen_ns = now;
            if set_flags != 0 {
                (*p).flags |= set_flags;
            }
        } else {
            let p = slot.0.cast::<Ct4Value>();
            (*p).last_seen_ns = now;
            if set_flags != 0 {
                (*p).flags |= set_flags;
            }
        }
    }
}

/// Writes (creates or replaces) the entry of `t` in direction `dir`.
#[inline(always)]
pub fn insert<const V6: bool>(t: &Tuple, dir: u8, v: &Ct) -> Result<(), i32> {
    put::<V6>(t, dir, v, ANY)
}

/// Creates the entry of `t` in direction `dir`; `Err` when there is one already.
#[inline(always)]
pub fn insert_new<const V6: bool>(t: &Tuple, dir: u8, v: &Ct) -> Result<(), i32> {
    put::<V6>(t, dir, v, NOEXIST)
}

#[inline(always)]
fn put<const V6: bool>(t: &Tuple, dir: u8, v: &Ct, flags: u64) -> Result<(), i32> {
    if V6 {
        let value = Ct6Value {
            addr: v.addr,
            nat_addr: v.nat_addr,
            port: v.port,
            flags: v.flags,
            svc_id: v.svc_id,
            backend_id: v.backend_id,
            nat_port: v.nat_port,
            _pad: 0,
            last_seen_ns: v.last_seen_ns,
        };
        CIP_CT6.insert(&key6(t, dir), &value, flags)
    } else {
        let value = Ct4Value {
            addr: v.addr[0],
            nat_addr: v.nat_addr[0],
            port: v.port,
            flags: v.flags,
            svc_id: v.svc_id,
            backend_id: v.backend_id,
            nat_port: v.nat_port,
            _pad: 0,
            last_seen_ns: v.last_seen_ns,
        };
        CIP_CT4.insert(&key4(t, dir), &value, flags)
    }
}
