//! How large each map is: sized to what the agent runs, and the per-flow and per-socket state
//! maps to the node's memory, as Cilium does (`--bpf-map-dynamic-size-ratio`).
//!
//! Kernel memory is what matters: since Linux 5.11 it is charged to the agent's memory cgroup
//! (the pod's limit). Two kinds of map cost differently:
//! - hash maps without preallocation (services, backends, Maglev tables) cost 16 bytes per
//!   bucket up front (`max_entries` rounded up to a power of two) and an element per entry in
//!   use, so their capacity is a fixed, modest price;
//! - LRU maps (conntrack, socket reverse NAT, affinity, UDP socket flows) are always
//!   preallocated: every entry costs its element and bucket from the start. These get a share of
//!   the node's memory ([`DEFAULT_RATIO`] of it, at most [`MAX_BUDGET`]), only when the path that
//!   uses them is on; otherwise [`UNUSED_ENTRIES`].
//!
//! Pure: the caller reads the node's memory and the flags.

use std::fmt;

use clusterip_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value,
    MAX_SOURCE_RANGES, MAX_SVC_ID, MaglevValue, Service4Key, Service6Key, ServiceValue,
    SockFlowKey, SockFlowValue, SockRevNat4Key, SockRevNat4Value, SockRevNat6Key, SockRevNat6Value,
    SvcStats, map_names,
};
use serde::Serialize;

/// Share of the node's memory for the LRU maps (Cilium's default is 0.0025 for its larger set
/// of maps: conntrack, NAT, neighbours, socket reverse NAT).
pub const DEFAULT_RATIO: f64 = 0.002;
/// Cap on that share, whatever the node's memory: it bounds what the DaemonSet's memory limit
/// must hold.
pub const MAX_BUDGET: u64 = 64 << 20;
/// Entries of a map whose path is off (LRU maps cannot be empty; one page of state or so).
pub const UNUSED_ENTRIES: u32 = 64;

/// Default capacity of the service maps (frontends, wildcards and backend slots, per family):
/// 10,000 services of 10 endpoints take about 120,000. Cilium's `bpf-lb-map-max` is 65,536.
pub const DEFAULT_SERVICE_ENTRIES: u32 = 131_072;
/// Default capacity of the backend maps (per family).
pub const DEFAULT_BACKEND_ENTRIES: u32 = 131_072;
/// Default number of Maglev tables (one per frontend of the per-packet path, 4 KiB each).
pub const DEFAULT_MAGLEV_ENTRIES: u32 = 16_384;

/// How a map's memory follows its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Alloc {
    /// Every entry allocated at creation (LRU hash maps).
    Prealloc,
    /// Buckets at creation, elements as entries are added (hash maps with BPF_F_NO_PREALLOC).
    OnDemand,
    /// An array: every entry at creation (per CPU for per-CPU arrays).
    Array { per_cpu: bool },
}

/// Who decides a map's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// A share of the node's memory.
    Memory,
    /// A flag, or its default.
    Flag,
    /// The map's path is off: the smallest size.
    Unused,
    /// Fixed by the datapath's contract.
    Fixed,
}

/// One map's size and what it costs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapSize {
    pub name: &'static str,
    pub entries: u32,
    pub basis: Basis,
    pub alloc: Alloc,
    /// Bytes one element takes in the kernel (htab element header, key and value rounded
    /// to 8 bytes); per CPU for per-CPU arrays.
    pub element_bytes: u64,
    /// Kernel memory at creation (what `bytes_memlock` reports for an empty map).
    pub fixed_bytes: u64,
}

impl MapSize {
    /// Kernel memory with `used` entries in it.
    pub fn bytes_with(&self, used: u64, cpus: u64) -> u64 {
        match self.alloc {
            Alloc::Prealloc | Alloc::Array { .. } => self.fixed_bytes,
            Alloc::OnDemand => self.fixed_bytes + used * self.element_bytes,
        }
        .max(if let Alloc::Array { per_cpu: true } = self.alloc {
            u64::from(self.entries) * self.element_bytes * cpus
        } else {
            0
        })
    }
}

/// What the sizes are computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct SizingInput {
    /// `MemTotal` of the node, bytes.
    pub node_memory: u64,
    /// Possible CPUs (per-CPU maps).
    pub cpus: u32,
    pub ratio: f64,
    pub socket_lb: bool,
    pub per_packet: bool,
    /// `--ct-max`: conntrack entries per family, instead of the memory share.
    pub ct_max: Option<u32>,
    /// `--sock-revnat-max`: socket reverse-NAT entries per family, instead of the share.
    pub sock_revnat_max: Option<u32>,
    pub service_entries: u32,
    pub backend_entries: u32,
    pub maglev_entries: u32,
}

impl SizingInput {
    /// The defaults for a node with this much memory and these paths on.
    pub fn defaults(node_memory: u64, cpus: u32, socket_lb: bool, per_packet: bool) -> Self {
        Self {
            node_memory,
            cpus,
            ratio: DEFAULT_RATIO,
            socket_lb,
            per_packet,
            ct_max: None,
            sock_revnat_max: None,
            service_entries: DEFAULT_SERVICE_ENTRIES,
            backend_entries: DEFAULT_BACKEND_ENTRIES,
            maglev_entries: DEFAULT_MAGLEV_ENTRIES,
        }
    }
}

/// Every sized map of the datapath.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sizing {
    pub node_memory: u64,
    pub ratio: f64,
    /// The LRU maps' memory budget: `node_memory × ratio`, at most [`MAX_BUDGET`].
    pub budget: u64,
    pub maps: Vec<MapSize>,
}

/// A memory-sized LRU map: its share of the budget, and its bounds.
struct Share {
    name: &'static str,
    /// Fraction of the budget.
    weight: f64,
    min: u32,
    max: u32,
}

/// Conntrack takes most of the budget when the per-packet path is on (two entries per flow);
/// the socket maps a seventh.
const SHARES: [Share; 6] = [
    Share {
        name: map_names::CONNTRACK_V4,
        weight: 0.34,
        min: 16_384,
        max: 262_144,
    },
    Share {
        name: map_names::CONNTRACK_V6,
        weight: 0.51,
        min: 16_384,
        max: 262_144,
    },
    Share {
        name: map_names::SOCK_REVNAT_V4,
        weight: 0.0675,
        min: 4_096,
        max: 262_144,
    },
    Share {
        name: map_names::SOCK_REVNAT_V6,
        weight: 0.045,
        min: 4_096,
        max: 131_072,
    },
    Share {
        name: map_names::AFFINITY,
        weight: 0.01875,
        min: 4_096,
        max: 65_536,
    },
    Share {
        name: map_names::SOCK_FLOWS,
        weight: 0.01875,
        min: 4_096,
        max: 65_536,
    },
];

/// Size of the kernel's `struct htab_elem` before the key (6.x, x86_64): the hash node or
/// free-list link, the LRU node, the hash.
const HTAB_ELEM_HEADER: u64 = 48;
/// `struct bucket`: list head and spinlock.
const BUCKET_BYTES: u64 = 16;

fn round8(n: usize) -> u64 {
    (n as u64).div_ceil(8) * 8
}

fn htab_element<K, V>() -> u64 {
    HTAB_ELEM_HEADER + round8(size_of::<K>()) + round8(size_of::<V>())
}

fn lru(name: &'static str, entries: u32, basis: Basis, element: u64) -> MapSize {
    let buckets = u64::from(entries).next_power_of_two();
    MapSize {
        name,
        entries,
        basis,
        alloc: Alloc::Prealloc,
        element_bytes: element,
        fixed_bytes: u64::from(entries) * element + buckets * BUCKET_BYTES,
    }
}

fn on_demand(name: &'static str, entries: u32, basis: Basis, element: u64) -> MapSize {
    MapSize {
        name,
        entries,
        basis,
        alloc: Alloc::OnDemand,
        element_bytes: element,
        fixed_bytes: u64::from(entries).next_power_of_two() * BUCKET_BYTES,
    }
}

/// The largest power of two at most `n` (0 for 0).
fn pow2_floor(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 << (63 - n.leading_zeros())
    }
}

impl Sizing {
    /// The sizes for `input`.
    pub fn compute(input: &SizingInput) -> Sizing {
        let budget = ((input.node_memory as f64 * input.ratio.max(0.0)) as u64).min(MAX_BUDGET);
        let element = |name: &str| -> u64 {
            match name {
                map_names::CONNTRACK_V4 => htab_element::<Ct4Key, Ct4Value>(),
                map_names::CONNTRACK_V6 => htab_element::<Ct6Key, Ct6Value>(),
                map_names::SOCK_REVNAT_V4 => htab_element::<SockRevNat4Key, SockRevNat4Value>(),
                map_names::SOCK_REVNAT_V6 => htab_element::<SockRevNat6Key, SockRevNat6Value>(),
                map_names::AFFINITY => htab_element::<AffinityKey, AffinityValue>(),
                _ => htab_element::<SockFlowKey, SockFlowValue>(),
            }
        };
        let mut maps = Vec::new();
        for share in &SHARES {
            let elem = element(share.name);
            let is_ct = matches!(
                share.name,
                map_names::CONNTRACK_V4 | map_names::CONNTRACK_V6
            );
            let is_revnat = matches!(
                share.name,
                map_names::SOCK_REVNAT_V4 | map_names::SOCK_REVNAT_V6
            );
            // Affinity is shared by both paths; reverse NAT and UDP flows are socket-level only.
            let used = if is_ct {
                input.per_packet
            } else if share.name == map_names::AFFINITY {
                input.socket_lb || input.per_packet
            } else {
                input.socket_lb
            };
            let explicit = if is_ct {
                input.ct_max
            } else if is_revnat {
                input.sock_revnat_max
            } else {
                None
            };
            let (entries, basis) = match (used, explicit) {
                (false, _) => (UNUSED_ENTRIES, Basis::Unused),
                (true, Some(n)) => (n, Basis::Flag),
                (true, None) => {
                    let fit =
                        pow2_floor((budget as f64 * share.weight) as u64 / (elem + BUCKET_BYTES));
                    let n = fit.clamp(u64::from(share.min), u64::from(share.max));
                    (u32::try_from(n).unwrap_or(share.max), Basis::Memory)
                }
            };
            maps.push(lru(share.name, entries, basis, elem));
        }
        maps.push(on_demand(
            map_names::SERVICES_V4,
            input.service_entries,
            Basis::Flag,
            htab_element::<Service4Key, ServiceValue>(),
        ));
        maps.push(on_demand(
            map_names::SERVICES_V6,
            input.service_entries,
            Basis::Flag,
            htab_element::<Service6Key, ServiceValue>(),
        ));
        maps.push(on_demand(
            map_names::BACKENDS_V4,
            input.backend_entries,
            Basis::Flag,
            htab_element::<u32, Backend4>(),
        ));
        maps.push(on_demand(
            map_names::BACKENDS_V6,
            input.backend_entries,
            Basis::Flag,
            htab_element::<u32, Backend6>(),
        ));
        let (maglev, basis) = if input.per_packet {
            (input.maglev_entries, Basis::Flag)
        } else {
            (1, Basis::Unused)
        };
        maps.push(on_demand(
            map_names::MAGLEV,
            maglev,
            basis,
            htab_element::<u32, MaglevValue>(),
        ));
        let (stats, basis) = if input.per_packet {
            (MAX_SVC_ID, Basis::Fixed)
        } else {
            (1, Basis::Unused)
        };
        // loadBalancerSourceRanges: tries allocate per prefix, nothing up front.
        for name in [map_names::SOURCE_RANGES_V4, map_names::SOURCE_RANGES_V6] {
            maps.push(MapSize {
                name,
                entries: MAX_SOURCE_RANGES,
                basis: Basis::Fixed,
                alloc: Alloc::OnDemand,
                element_bytes: 64,
                fixed_bytes: 0,
            });
        }
        let stat_bytes = round8(size_of::<SvcStats>());
        maps.push(MapSize {
            name: map_names::STATS,
            entries: stats,
            basis,
            alloc: Alloc::Array { per_cpu: true },
            element_bytes: stat_bytes,
            // Per entry: one value per CPU plus the pointer to them.
            fixed_bytes: u64::from(stats) * (stat_bytes * u64::from(input.cpus.max(1)) + 8),
        });
        Sizing {
            node_memory: input.node_memory,
            ratio: input.ratio,
            budget,
            maps,
        }
    }

    /// The entries of `name` (None: not a sized map).
    pub fn entries(&self, name: &str) -> Option<u32> {
        self.maps.iter().find(|m| m.name == name).map(|m| m.entries)
    }

    /// Kernel memory of the sized maps when they are empty.
    pub fn fixed_bytes(&self) -> u64 {
        self.maps.iter().map(|m| m.fixed_bytes).sum()
    }
}

/// Bytes as MiB with one decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mib(pub u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} MiB", self.0 as f64 / f64::from(1u32 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn size(s: &Sizing, name: &str) -> u32 {
        s.entries(name).unwrap_or_else(|| panic!("{name} sized"))
    }

    #[test]
    fn element_sizes_match_the_kernel() {
        // bytes_memlock of these maps on 6.18, divided by their entries: the element plus a
        // bucket (see the bench's numbers in the README).
        assert_eq!(
            htab_element::<SockRevNat4Key, SockRevNat4Value>() + BUCKET_BYTES,
            96
        );
        assert_eq!(
            htab_element::<AffinityKey, AffinityValue>() + BUCKET_BYTES,
            104
        );
        assert_eq!(htab_element::<Ct4Key, Ct4Value>() + BUCKET_BYTES, 112);
        assert_eq!(htab_element::<Ct6Key, Ct6Value>() + BUCKET_BYTES, 160);
    }

    #[test]
    fn socket_hooks_only_leave_the_per_packet_maps_minimal() {
        let s = Sizing::compute(&SizingInput::defaults(24 * GIB, 2, true, false));
        for name in [map_names::CONNTRACK_V4, map_names::CONNTRACK_V6] {
            assert_eq!(size(&s, name), UNUSED_ENTRIES);
        }
        assert_eq!(size(&s, map_names::MAGLEV), 1);
        assert_eq!(size(&s, map_names::STATS), 1);
        // The socket maps get their share of 0.2 % of 24 GiB.
        assert_eq!(size(&s, map_names::SOCK_REVNAT_V4), 32_768);
        assert_eq!(size(&s, map_names::SOCK_REVNAT_V6), 16_384);
        assert!(
            s.fixed_bytes() <= 16 << 20,
            "socket-only maps take {}",
            Mib(s.fixed_bytes())
        );
    }

    #[test]
    fn per_packet_gets_conntrack_sized_from_memory() {
        let s = Sizing::compute(&SizingInput::defaults(24 * GIB, 2, true, true));
        assert_eq!(size(&s, map_names::CONNTRACK_V4), 131_072);
        assert_eq!(size(&s, map_names::CONNTRACK_V6), 131_072);
        assert_eq!(size(&s, map_names::STATS), MAX_SVC_ID);
        // A 2 GiB edge node gets the minimum; a large node the cap.
        let small = Sizing::compute(&SizingInput::defaults(2 * GIB, 2, true, true));
        assert_eq!(size(&small, map_names::CONNTRACK_V4), 16_384);
        assert_eq!(size(&small, map_names::SOCK_REVNAT_V4), 4_096);
        let large = Sizing::compute(&SizingInput::defaults(1024 * GIB, 64, true, true));
        assert_eq!(large.budget, MAX_BUDGET);
        let lru: u64 = large
            .maps
            .iter()
            .filter(|m| m.alloc == Alloc::Prealloc)
            .map(|m| m.fixed_bytes)
            .sum();
        assert!(lru <= MAX_BUDGET, "LRU maps take {}", Mib(lru));
    }

    #[test]
    fn flags_override_the_memory_share() {
        let mut input = SizingInput::defaults(24 * GIB, 2, true, true);
        input.ct_max = Some(1024);
        input.sock_revnat_max = Some(2048);
        let s = Sizing::compute(&input);
        assert_eq!(size(&s, map_names::CONNTRACK_V6), 1024);
        assert_eq!(size(&s, map_names::SOCK_REVNAT_V6), 2048);
        // ... but not for a path that is off.
        input.per_packet = false;
        let s = Sizing::compute(&input);
        assert_eq!(size(&s, map_names::CONNTRACK_V4), UNUSED_ENTRIES);
    }

    #[test]
    fn pow2_floor_rounds_down() {
        assert_eq!(pow2_floor(0), 0);
        assert_eq!(pow2_floor(1), 1);
        assert_eq!(pow2_floor(131_071), 65_536);
        assert_eq!(pow2_floor(131_072), 131_072);
    }
}
