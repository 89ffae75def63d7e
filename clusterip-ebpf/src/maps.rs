//! Every map of the datapath. Layouts and names are the contract in `clusterip_common`.
//!
//! The maps are BTF maps pinned by name: the loader creates them under its pin directory or,
//! when a pin of that name exists, adopts it (so a restarted agent keeps the table and the
//! per-socket state). aya names a BTF map after the static's symbol, so each static's
//! identifier *is* the map name in `clusterip_common::map_names` (checked by the const block
//! below).

use crate::ct::{Ct, Tuple};
use crate::select::Chosen;
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use clusterip_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value,
    DEFAULT_CONNTRACK_ENTRIES, DatapathConfigValue, MAX_AFFINITY, MAX_BACKENDS,
    MAX_MAGLEV_SERVICES, MAX_SERVICE_ENTRIES, MAX_SOCK_FLOWS, MAX_SOCK_REVNAT, MAX_SOURCE_RANGES,
    MAX_SVC_ID, MaglevValue, Service4Key, Service6Key, ServiceValue, SockFlowKey, SockFlowValue,
    SockRevNat4Key, SockRevNat4Value, SockRevNat6Key, SockRevNat6Value, SourceRange4, SourceRange6,
    SvcStats, map_names,
};

const SVC: usize = MAX_SERVICE_ENTRIES as usize;
const BE: usize = MAX_BACKENDS as usize;
const RNAT: usize = MAX_SOCK_REVNAT as usize;
const AFF: usize = MAX_AFFINITY as usize;
const FLOWS: usize = MAX_SOCK_FLOWS as usize;
const MAGLEV: usize = MAX_MAGLEV_SERVICES as usize;
const CT: usize = DEFAULT_CONNTRACK_ENTRIES as usize;
const SVC_IDS: usize = MAX_SVC_ID as usize;
/// BPF_F_NO_PREALLOC: memory follows use. A Maglev table is 4 KiB (preallocating 65,536 of
/// them would pin 256 MiB); the service and backend maps are sized for large clusters.
const NO_PREALLOC: usize = 1;

/// IPv4 services: (VIP, port, proto, slot) -> frontend (slot 0) or backend id (slots 1..=count).
#[btf_map(pin_by_name)]
pub static CIP_SVC4: HashMap<Service4Key, ServiceValue, SVC, NO_PREALLOC> = HashMap::new();

/// IPv6 services.
#[btf_map(pin_by_name)]
pub static CIP_SVC6: HashMap<Service6Key, ServiceValue, SVC, NO_PREALLOC> = HashMap::new();

/// IPv4 backends by id.
#[btf_map(pin_by_name)]
pub static CIP_BE4: HashMap<u32, Backend4, BE, NO_PREALLOC> = HashMap::new();

/// IPv6 backends by id.
#[btf_map(pin_by_name)]
pub static CIP_BE6: HashMap<u32, Backend6, BE, NO_PREALLOC> = HashMap::new();

/// (socket cookie, backend) -> (VIP, port) for recvmsg4/getpeername4.
#[btf_map(pin_by_name)]
pub static CIP_RNAT4: LruHashMap<SockRevNat4Key, SockRevNat4Value, RNAT> = LruHashMap::new();

/// (socket cookie, backend) -> (VIP, port) for recvmsg6/getpeername6.
#[btf_map(pin_by_name)]
pub static CIP_RNAT6: LruHashMap<SockRevNat6Key, SockRevNat6Value, RNAT> = LruHashMap::new();

/// ClientIP session affinity.
#[btf_map(pin_by_name)]
pub static CIP_AFFINITY: LruHashMap<AffinityKey, AffinityValue, AFF> = LruHashMap::new();

/// The backend each unconnected UDP socket sends a VIP:port's datagrams to.
#[btf_map(pin_by_name)]
pub static CIP_SOCKFLOW: LruHashMap<SockFlowKey, SockFlowValue, FLOWS> = LruHashMap::new();

// ---- per-packet datapath (TC / XDP) ----

/// svc_id -> Maglev lookup table (backend id per entry). Written whole by the agent.
/// Not preallocated: memory is used only for services that exist.
#[btf_map(pin_by_name)]
pub static CIP_MAGLEV: HashMap<u32, MaglevValue, MAGLEV, NO_PREALLOC> = HashMap::new();

/// IPv4 conntrack: forward (client -> VIP) and reply (backend -> client) entries.
/// The agent may change max_entries at load time.
#[btf_map(pin_by_name)]
pub static CIP_CT4: LruHashMap<Ct4Key, Ct4Value, CT> = LruHashMap::new();

/// IPv6 conntrack.
#[btf_map(pin_by_name)]
pub static CIP_CT6: LruHashMap<Ct6Key, Ct6Value, CT> = LruHashMap::new();

/// Per-CPU packet and byte counters per svc_id.
#[btf_map(pin_by_name)]
pub static CIP_STATS: PerCpuArray<SvcStats, SVC_IDS> = PerCpuArray::new();

/// Datapath settings (index 0), written by the agent at start.
#[btf_map(pin_by_name)]
pub static CIP_CONFIG: Array<DatapathConfigValue, 1> = Array::new();

const SRC_RANGES: usize = MAX_SOURCE_RANGES as usize;

/// Per-CPU scratch space of the external path (not pinned: nothing outlives a packet). A new
/// flow's conntrack entries are built here: on the stack they would not fit the 512 bytes the
/// verifier allows a call chain.
#[btf_map]
pub static CIP_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// What [`CIP_SCRATCH`] holds: the state the external path's stages hand on.
#[repr(C)]
pub struct Scratch {
    /// The packet's flow.
    pub t: Tuple,
    /// The entry to apply (kept, or the new flow's forward entry).
    pub e: Ct,
    /// A new flow's reply entry and its key.
    pub rev: Ct,
    pub rev_t: Tuple,
    /// The frontend (scope applied) and the chosen backend.
    pub fe: ServiceValue,
    pub b: Chosen,
    /// The source port an earlier flow of the same client tuple was NATed to (0: none): a
    /// reopened connection takes it again when it goes to the same backend, as netfilter
    /// reuses a TIME_WAIT tuple, so a client's port reuse never takes a second port.
    pub old_nat_port: u16,
    pub tcp_flags: u8,
    /// Where the XDP path sends a source-NATed packet: the FIB's egress interface and the
    /// next hop's MAC, and the MAC of that interface.
    pub fib_dmac: [u8; 6],
    pub fib_smac: [u8; 6],
    pub fib_ifindex: u32,
}

/// `loadBalancerSourceRanges`: (service id, IPv4 prefix) -> 1. LPM tries are never
/// preallocated.
#[btf_map(pin_by_name)]
pub static CIP_SRCRANGE4: LpmTrie<SourceRange4, u8, SRC_RANGES> = LpmTrie::new();

/// `loadBalancerSourceRanges` for IPv6.
#[btf_map(pin_by_name)]
pub static CIP_SRCRANGE6: LpmTrie<SourceRange6, u8, SRC_RANGES> = LpmTrie::new();

/// The symbol names above must be the contract's map names.
const _: () = {
    const fn eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    assert!(eq(map_names::SERVICES_V4, "CIP_SVC4"));
    assert!(eq(map_names::SERVICES_V6, "CIP_SVC6"));
    assert!(eq(map_names::BACKENDS_V4, "CIP_BE4"));
    assert!(eq(map_names::BACKENDS_V6, "CIP_BE6"));
    assert!(eq(map_names::SOCK_REVNAT_V4, "CIP_RNAT4"));
    assert!(eq(map_names::SOCK_REVNAT_V6, "CIP_RNAT6"));
    assert!(eq(map_names::AFFINITY, "CIP_AFFINITY"));
    assert!(eq(map_names::SOCK_FLOWS, "CIP_SOCKFLOW"));
    assert!(eq(map_names::MAGLEV, "CIP_MAGLEV"));
    assert!(eq(map_names::CONNTRACK_V4, "CIP_CT4"));
    assert!(eq(map_names::CONNTRACK_V6, "CIP_CT6"));
    assert!(eq(map_names::STATS, "CIP_STATS"));
    assert!(eq(map_names::CONFIG, "CIP_CONFIG"));
    assert!(eq(map_names::SOURCE_RANGES_V4, "CIP_SRCRANGE4"));
    assert!(eq(map_names::SOURCE_RANGES_V6, "CIP_SRCRANGE6"));
};
