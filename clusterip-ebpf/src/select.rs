//! Backend choice for the per-packet programs (TC and XDP share it).
//!
//! Same tables and semantics as the socket path in [`crate::lb`] (frontend in slot 0,
//! wildcard entry, "backend id exists" = still a backend of the service, ClientIP affinity),
//! but the client is identified by its source address and, instead of a random slot, the flow's
//! 5-tuple hash indexes the service's Maglev table: every packet of a flow maps to the same
//! backend even without its conntrack entry, and removing one of N backends moves only the
//! flows that were on it.

use clusterip_common::{
    AFFINITY_CLIENT_IPV4, AFFINITY_CLIENT_IPV6, AffinityKey, AffinityValue, MAGLEV_TABLE_SIZE,
    SVC_FLAG_AFFINITY, Service4Key, Service6Key, ServiceValue, SourceRange4, SourceRange6,
};

use crate::ct::{Addr, Tuple};
use crate::lb::{Family, V4, V6 as Fam6};
use crate::maps::{CIP_AFFINITY, CIP_MAGLEV, CIP_SRCRANGE4, CIP_SRCRANGE6};
use aya_ebpf::maps::lpm_trie::Key;

const NS_PER_SEC: u64 = 1_000_000_000;
const ANY: u64 = 0;

/// A chosen backend.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Chosen {
    pub id: u32,
    pub addr: Addr,
    pub port: u16,
    /// BE_FLAG_*.
    pub flags: u8,
}

// Keys are built from a zeroed value and then filled in: a literal `_pad: [0; 3]` makes LLVM
// emit a call to `memset`, a BPF subprogram of its own, and that third frame on the call
// chain is what kernels before 6.6 (every frame rounded up to 32 bytes) refuse.

#[inline(always)]
fn svc_key4(addr: u32, port: u16, proto: u8, slot: u16, scope: u8) -> Service4Key {
    // SAFETY: plain integers and padding; all zeros is a valid key.
    let mut k: Service4Key = unsafe { core::mem::zeroed() };
    k.addr = addr;
    k.port = port;
    k.slot = slot;
    k.proto = proto;
    k.scope = scope;
    k
}

#[inline(always)]
fn svc_key6(addr: Addr, port: u16, proto: u8, slot: u16, scope: u8) -> Service6Key {
    // SAFETY: as above.
    let mut k: Service6Key = unsafe { core::mem::zeroed() };
    k.addr = addr;
    k.port = port;
    k.slot = slot;
    k.proto = proto;
    k.scope = scope;
    k
}

/// The frontend (slot 0) of `addr:port/proto` in `scope`, if it is a service.
#[inline(always)]
pub fn frontend<const V6: bool>(
    addr: &Addr,
    port: u16,
    proto: u8,
    scope: u8,
) -> Option<ServiceValue> {
    if V6 {
        Fam6::service(&svc_key6(*addr, port, proto, 0, scope))
    } else {
        V4::service(&svc_key4(addr[0], port, proto, 0, scope))
    }
}

/// Whether `client` is in one of the `loadBalancerSourceRanges` of service `svc_id`.
#[inline(always)]
pub fn source_allowed<const V6: bool>(client: &Addr, svc_id: u32) -> bool {
    let svc_id_be = svc_id.to_be();
    if V6 {
        let key = Key::new(
            160,
            SourceRange6 {
                svc_id_be,
                addr: *client,
            },
        );
        CIP_SRCRANGE6.get(&key).is_some()
    } else {
        let key = Key::new(
            64,
            SourceRange4 {
                svc_id_be,
                addr: client[0],
            },
        );
        CIP_SRCRANGE4.get(&key).is_some()
    }
}

/// The flags of `addr`'s wildcard entry; None when it is not a VIP.
#[inline(always)]
pub fn vip_flags<const V6: bool>(addr: &Addr) -> Option<u16> {
    frontend::<V6>(addr, 0, 0, 0).map(|w| w.flags)
}

/// The backend with id `id`, if it (still) exists.
#[inline(always)]
pub fn backend<const V6: bool>(id: u32) -> Option<Chosen> {
    if V6 {
        let b = Fam6::backend(id)?;
        Some(Chosen {
            id,
            addr: b.addr,
            port: b.port,
            flags: b.flags,
        })
    } else {
        let b = V4::backend(id)?;
        Some(Chosen {
            id,
            addr: [b.addr, 0, 0, 0],
            port: b.port,
            flags: b.flags,
        })
    }
}

/// Murmur3 (32-bit) over the 5-tuple: deterministic, so all packets of a flow hash alike.
#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub fn flow_hash<const V6: bool>(t: &Tuple) -> u32 {
    let mut h = 0x5bd1_e995u32;
    h = mix(h, t.saddr[0]);
    h = mix(h, t.daddr[0]);
    if V6 {
        h = mix(h, t.saddr[1]);
        h = mix(h, t.saddr[2]);
        h = mix(h, t.saddr[3]);
        h = mix(h, t.daddr[1]);
        h = mix(h, t.daddr[2]);
        h = mix(h, t.daddr[3]);
    }
    h = mix(h, (u32::from(t.sport) << 16) | u32::from(t.dport));
    h = mix(h, u32::from(t.proto));
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
fn affinity_key<const V6: bool>(client: &Addr, svc_id: u32) -> AffinityKey {
    // SAFETY: plain integers and padding; all zeros is a valid key (see `svc_key4`).
    let mut k: AffinityKey = unsafe { core::mem::zeroed() };
    k.client = if V6 { *client } else { [client[0], 0, 0, 0] };
    k.svc_id = svc_id;
    k.kind = if V6 {
        AFFINITY_CLIENT_IPV6
    } else {
        AFFINITY_CLIENT_IPV4
    };
    k
}

/// Records that `client` uses backend `id` of the service now.
#[inline(always)]
pub fn write_affinity<const V6: bool>(client: &Addr, svc_id: u32, id: u32, now: u64) {
    let value = AffinityValue {
        last_used_ns: now,
        backend_id: id,
        _pad: 0,
    };
    // An LRU insert only fails without memory; the flow still works.
    let _ = CIP_AFFINITY.insert(&affinity_key::<V6>(client, svc_id), &value, ANY);
}

/// Chooses a backend for a new flow `t` to frontend `fe` of `scope` (count > 0): ClientIP
/// affinity if fresh and its backend still exists, else the Maglev entry of the flow hash, else
/// (no table yet, or it names a backend already gone) slot `1 + hash % count`. `None`: no
/// usable backend.
#[inline(always)]
pub fn choose<const V6: bool>(t: &Tuple, fe: &ServiceValue, scope: u8, now: u64) -> Option<Chosen> {
    if fe.flags & SVC_FLAG_AFFINITY != 0 {
        let akey = affinity_key::<V6>(&t.saddr, fe.svc_id);
        if let Some(p) = CIP_AFFINITY.get_ptr(&akey) {
            // SAFETY: valid map value pointer; copied out right away.
            let prev = unsafe { *p };
            let timeout = u64::from(fe.affinity_timeout_s) * NS_PER_SEC;
            if now.wrapping_sub(prev.last_used_ns) < timeout
                && let Some(b) = backend::<V6>(prev.backend_id)
            {
                return Some(b);
            }
        }
    }
    let hash = flow_hash::<V6>(t);
    if let Some(table) = CIP_MAGLEV.get_ptr(&fe.svc_id) {
        // Lemire's range reduction: < MAGLEV_TABLE_SIZE by construction, a bound the verifier
        // can follow (it does not track `%`). The 4 KiB value is read through the pointer.
        let idx = ((u64::from(hash) * MAGLEV_TABLE_SIZE as u64) >> 32) as usize;
        if idx < MAGLEV_TABLE_SIZE {
            // SAFETY: valid map value pointer, idx in bounds.
            let id = unsafe { (*table).backend_ids[idx] };
            if id != 0
                && let Some(b) = backend::<V6>(id)
            {
                return Some(b);
            }
        }
    }
    let slot = (1 + hash.checked_rem(u32::from(fe.count))?) as u16;
    let sv = if V6 {
        Fam6::service(&svc_key6(t.daddr, t.dport, t.proto, slot, scope))?
    } else {
        V4::service(&svc_key4(t.daddr[0], t.dport, t.proto, slot, scope))?
    };
    backend::<V6>(sv.backend_id)
}
