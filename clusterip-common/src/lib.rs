//! Map keys and values shared by the clusterip eBPF programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding fields (always zero), so the kernel, the
//! eBPF programs and the agent agree byte for byte and `bpftool map dump` shows named fields
//! (the programs declare their maps with BTF). Sizes are asserted at compile time.
//!
//! Byte order: addresses and ports are stored in **network byte order**, exactly as the kernel
//! hands them to cgroup sock_addr programs (`user_ip4`, `user_ip6`, the low 16 bits of
//! `user_port`). The constructors below take host values and do the conversion, so the agent
//! never has to think about it; the eBPF side copies the context fields as they are.
//!
//! # The service table (Cilium's layout)
//! One hash map per family keyed by (VIP, port, protocol, slot):
//! - slot 0 is the *frontend*: [`ServiceValue::count`] backends, flags, affinity timeout and the
//!   service id;
//! - slots 1..=count each hold one backend id, resolved through the backends map.
//! - an entry with port 0 and protocol 0 ([`SVC_FLAG_WILDCARD`]) marks an address as a VIP, so
//!   a connection to a port the service does not define is refused rather than sent on. Every
//!   frontend's VIP has one (written before its frontends, removed after them), so the
//!   datapath looks it up first: anything that is not a VIP costs one lookup.
//!
//! Writers follow the order backends, slots, frontend (count), then trim stale slots and
//! backends, so a reader that saw any count only ever reads slots that exist.
#![no_std]

use core::net::{Ipv4Addr, Ipv6Addr};

/// IPPROTO_TCP.
pub const PROTO_TCP: u8 = 6;
/// IPPROTO_UDP.
pub const PROTO_UDP: u8 = 17;

/// The service has ClientIP session affinity; `affinity_timeout_s` is valid.
pub const SVC_FLAG_AFFINITY: u16 = 1 << 0;
/// With no backends, drop (internalTrafficPolicy: Local without local endpoints) instead of
/// rejecting. At socket level the connect fails with EHOSTUNREACH rather than ECONNREFUSED.
pub const SVC_FLAG_DROP: u16 = 1 << 1;
/// The (addr, port 0, proto 0, slot 0) entry that marks an address as a service VIP.
pub const SVC_FLAG_WILDCARD: u16 = 1 << 2;
/// On a wildcard entry: the address is only an external IP (`spec.externalIPs`), often a real
/// address of a node, so a port without a frontend passes untouched instead of being refused.
pub const SVC_FLAG_OPEN: u16 = 1 << 3;
/// On a frontend: reachable from outside the node (external IP, node port, load-balancer
/// IP). The per-packet program on the node's external interfaces serves only these.
pub const SVC_FLAG_EXTERNAL: u16 = 1 << 4;
/// On a scope-0 frontend (`externalTrafficPolicy: Local`): traffic from outside the node uses
/// the frontend of scope [`SCOPE_EXTERNAL`] (this node's endpoints only); traffic from this
/// node (socket hooks, pod interfaces) uses scope 0 (every endpoint, kube-proxy's
/// short-circuit).
pub const SVC_FLAG_EXT_LOCAL: u16 = 1 << 5;
/// On a frontend: only sources in its `loadBalancerSourceRanges` (`CIP_SRCRANGE4/6`) may use it
/// from outside; others are dropped.
pub const SVC_FLAG_SOURCE_RANGE: u16 = 1 << 6;
/// On a frontend: its address is this node's own (a node port). Traffic from outside to a
/// remote backend is source-NATed to it; otherwise to the node address in `CIP_CONFIG`.
pub const SVC_FLAG_NODE_ADDR: u16 = 1 << 7;

/// Service key scopes: every frontend has scope 0; a frontend with [`SVC_FLAG_EXT_LOCAL`] has a
/// second one of scope 1 (its own service id, count and slots) for traffic from outside.
pub const SCOPE_DEFAULT: u8 = 0;
pub const SCOPE_EXTERNAL: u8 = 1;

/// Backend flag: the endpoint runs on this node. Traffic from outside to a remote backend is
/// source-NATed to the node's address so that the replies come back through this node.
pub const BE_FLAG_LOCAL: u8 = 1 << 0;

/// Kinds of client identity in [`AffinityKey`].
pub const AFFINITY_CLIENT_NETNS: u8 = 0;
pub const AFFINITY_CLIENT_IPV4: u8 = 4;
pub const AFFINITY_CLIENT_IPV6: u8 = 6;

/// Map names: the eBPF object defines maps with these names, pinned by name in the agent's
/// bpffs directory. Kept here so userspace opens exactly what the programs use.
pub mod map_names {
    pub const SERVICES_V4: &str = "CIP_SVC4";
    pub const SERVICES_V6: &str = "CIP_SVC6";
    pub const BACKENDS_V4: &str = "CIP_BE4";
    pub const BACKENDS_V6: &str = "CIP_BE6";
    pub const SOCK_REVNAT_V4: &str = "CIP_RNAT4";
    pub const SOCK_REVNAT_V6: &str = "CIP_RNAT6";
    pub const AFFINITY: &str = "CIP_AFFINITY";
    pub const SOCK_FLOWS: &str = "CIP_SOCKFLOW";
    /// Per-packet datapath (TC/XDP).
    pub const MAGLEV: &str = "CIP_MAGLEV";
    pub const CONNTRACK_V4: &str = "CIP_CT4";
    pub const CONNTRACK_V6: &str = "CIP_CT6";
    pub const STATS: &str = "CIP_STATS";
    pub const CONFIG: &str = "CIP_CONFIG";
    /// `loadBalancerSourceRanges` (LPM tries).
    pub const SOURCE_RANGES_V4: &str = "CIP_SRCRANGE4";
    pub const SOURCE_RANGES_V6: &str = "CIP_SRCRANGE6";
    /// All maps the agent owns, in the order `dump` and `cleanup` walk them.
    pub const ALL: [&str; 15] = [
        SERVICES_V4,
        SERVICES_V6,
        BACKENDS_V4,
        BACKENDS_V6,
        SOCK_REVNAT_V4,
        SOCK_REVNAT_V6,
        AFFINITY,
        SOCK_FLOWS,
        MAGLEV,
        CONNTRACK_V4,
        CONNTRACK_V6,
        STATS,
        CONFIG,
        SOURCE_RANGES_V4,
        SOURCE_RANGES_V6,
    ];
}

/// Map capacities. The service and backend maps are not preallocated, so their memory follows
/// what is in them: 10,000 services of 10 endpoints take about 120,000 service entries
/// (wildcard, frontend and slots) and 100,000 backends.
pub const MAX_SERVICE_ENTRIES: u32 = 524_288;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_SOCK_REVNAT: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 65_536;
pub const MAX_SOCK_FLOWS: u32 = 65_536;

pub const MAX_MAGLEV_SERVICES: u32 = 65_536;
/// Default conntrack capacity per family (the agent may set another at load time).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 262_144;
/// Size of the statistics array: indexed by svc_id, so service ids stay below this.
pub const MAX_SVC_ID: u32 = 65_536;
/// Default capacity of each source-range trie (prefixes of all services together).
pub const MAX_SOURCE_RANGES: u32 = 16_384;

/// Source ports the per-packet path gives connections it source-NATs to the node's address
/// (traffic from outside to a remote backend): two spans around Linux's default ephemeral
/// range (32768-60999, the node's own connections, which the datapath does not see) and the
/// NodePort range (30000-32767). A port is unique per backend address and port, and a closed
/// flow keeps it for the closing timeout: 33,512 ports per backend, at 10 s, sustain over
/// 3,000 new connections per second to each backend (the lower span alone, 4,536, did not
/// sustain 500).
pub const SNAT_PORT_SPANS: [(u16, u16); 2] = [(1_024, 29_999), (61_000, 65_535)];
/// How many ports [`SNAT_PORT_SPANS`] hold.
pub const SNAT_PORTS: u32 = (SNAT_PORT_SPANS[0].1 - SNAT_PORT_SPANS[0].0) as u32
    + 1
    + (SNAT_PORT_SPANS[1].1 - SNAT_PORT_SPANS[1].0) as u32
    + 1;

/// The `i`th SNAT port (`i` below [`SNAT_PORTS`]).
#[inline(always)]
pub const fn snat_port(i: u32) -> u16 {
    let low = (SNAT_PORT_SPANS[0].1 - SNAT_PORT_SPANS[0].0) as u32 + 1;
    if i < low {
        SNAT_PORT_SPANS[0].0 + i as u16
    } else {
        SNAT_PORT_SPANS[1].0 + (i - low) as u16
    }
}

/// Whether `port` is one the datapath source-NATs to.
pub const fn is_snat_port(port: u16) -> bool {
    (port >= SNAT_PORT_SPANS[0].0 && port <= SNAT_PORT_SPANS[0].1)
        || (port >= SNAT_PORT_SPANS[1].0 && port <= SNAT_PORT_SPANS[1].1)
}

/// Maglev lookup table size per service: a prime. Each backend owns about M/N entries; adding
/// or removing one of N backends moves about 1/N of the entries (and so of new flows).
pub const MAGLEV_TABLE_SIZE: usize = 1021;

/// The largest number of backends one frontend can have (slots are u16, slot 0 is the frontend).
pub const MAX_BACKENDS_PER_SERVICE: u16 = u16::MAX - 1;

/// Host-order port to the network-order representation stored in the maps.
#[inline(always)]
pub const fn port_to_net(port: u16) -> u16 {
    port.to_be()
}

/// Network-order port from a map back to host order.
#[inline(always)]
pub const fn port_from_net(port: u16) -> u16 {
    u16::from_be(port)
}

/// An IPv4 address in the maps' representation (network order in memory).
#[inline(always)]
pub const fn ip4_to_net(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

#[inline(always)]
pub const fn ip4_from_net(addr: u32) -> Ipv4Addr {
    let b = addr.to_ne_bytes();
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// An IPv6 address in the maps' representation: four u32 words as in `bpf_sock_addr.user_ip6`.
#[inline(always)]
pub const fn ip6_to_net(addr: Ipv6Addr) -> [u32; 4] {
    let o = addr.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

#[inline(always)]
pub const fn ip6_from_net(addr: [u32; 4]) -> Ipv6Addr {
    let a = addr[0].to_ne_bytes();
    let b = addr[1].to_ne_bytes();
    let c = addr[2].to_ne_bytes();
    let d = addr[3].to_ne_bytes();
    Ipv6Addr::from_octets([
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ])
}

/// Key of `CIP_SVC4`: frontend (slot 0) or backend slot (1..=count) of an IPv4 service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service4Key {
    /// VIP, network order.
    pub addr: u32,
    /// Service port, network order; 0 in the wildcard entry.
    pub port: u16,
    /// 0 = frontend, 1..=count = backend slots.
    pub slot: u16,
    /// PROTO_TCP / PROTO_UDP; 0 in the wildcard entry.
    pub proto: u8,
    /// SCOPE_DEFAULT, or SCOPE_EXTERNAL for the outside view of an `externalTrafficPolicy:
    /// Local` frontend.
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl Service4Key {
    pub const fn new(vip: Ipv4Addr, port: u16, proto: u8, slot: u16) -> Self {
        Self::scoped(vip, port, proto, slot, SCOPE_DEFAULT)
    }
    pub const fn scoped(vip: Ipv4Addr, port: u16, proto: u8, slot: u16, scope: u8) -> Self {
        Self {
            addr: ip4_to_net(vip),
            port: port_to_net(port),
            slot,
            proto,
            scope,
            _pad: [0; 2],
        }
    }
    pub const fn wildcard(vip: Ipv4Addr) -> Self {
        Self::new(vip, 0, 0, 0)
    }
}

/// Key of `CIP_SVC6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service6Key {
    /// VIP, network order words.
    pub addr: [u32; 4],
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl Service6Key {
    pub const fn new(vip: Ipv6Addr, port: u16, proto: u8, slot: u16) -> Self {
        Self::scoped(vip, port, proto, slot, SCOPE_DEFAULT)
    }
    pub const fn scoped(vip: Ipv6Addr, port: u16, proto: u8, slot: u16, scope: u8) -> Self {
        Self {
            addr: ip6_to_net(vip),
            port: port_to_net(port),
            slot,
            proto,
            scope,
            _pad: [0; 2],
        }
    }
    pub const fn wildcard(vip: Ipv6Addr) -> Self {
        Self::new(vip, 0, 0, 0)
    }
}

/// Value of `CIP_SVC4` / `CIP_SVC6`.
///
/// In the frontend (slot 0): `count`, `flags`, `svc_id`, `affinity_timeout_s`; `backend_id` 0.
/// In slot i: `backend_id` and `svc_id`; the other fields are 0.
///
/// Backend ids are per frontend (the same pod behind two services has two ids) and are not
/// reused while LRU entries may name them, so "the id is in the backends map" means "still a
/// backend of this service": affinity and UDP flows are validated with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceValue {
    pub backend_id: u32,
    /// Number of backend slots (frontend only).
    pub count: u16,
    /// SVC_FLAG_*.
    pub flags: u16,
    /// Stable id of this frontend (VIP, port, protocol); keys affinity and reverse NAT.
    pub svc_id: u32,
    /// ClientIP affinity timeout in seconds (valid with SVC_FLAG_AFFINITY).
    pub affinity_timeout_s: u32,
}

/// Value of `CIP_BE4` (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend4 {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    /// BE_FLAG_*.
    pub flags: u8,
}

impl Backend4 {
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: ip4_to_net(addr),
            port: port_to_net(port),
            proto,
            flags: 0,
        }
    }
}

/// Value of `CIP_BE6` (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    /// BE_FLAG_*.
    pub flags: u8,
}

impl Backend6 {
    pub const fn new(addr: Ipv6Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: ip6_to_net(addr),
            port: port_to_net(port),
            proto,
            flags: 0,
        }
    }
}

/// Key of `CIP_RNAT4` (LRU): which VIP a socket's traffic to/from a backend stands for.
/// Written by connect4/sendmsg4, read by recvmsg4/getpeername4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat4Key {
    /// bpf_get_socket_cookie() of the client socket.
    pub cookie: u64,
    /// Backend address and port, network order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of `CIP_RNAT4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat4Value {
    /// VIP and service port, network order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub svc_id: u32,
}

/// Key of `CIP_RNAT6` (LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat6Key {
    pub cookie: u64,
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Value of `CIP_RNAT6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat6Value {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: u16,
    pub svc_id: u32,
}

/// Key of `CIP_AFFINITY` (LRU): ClientIP session affinity, shared by all datapaths.
/// Socket-level programs identify the client by its network namespace cookie (a pod), the
/// per-packet programs by its source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// AFFINITY_CLIENT_NETNS: the netns cookie in words 0..2 (native order), rest 0.
    /// AFFINITY_CLIENT_IPV4: the address in word 0. AFFINITY_CLIENT_IPV6: all four words.
    pub client: [u32; 4],
    pub svc_id: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

impl AffinityKey {
    pub const fn netns(cookie: u64, svc_id: u32) -> Self {
        Self {
            client: [cookie as u32, (cookie >> 32) as u32, 0, 0],
            svc_id,
            kind: AFFINITY_CLIENT_NETNS,
            _pad: [0; 3],
        }
    }
}

/// Value of `CIP_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// bpf_ktime_get_ns() of the last use.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// Key of `CIP_SOCKFLOW` (LRU): the backend an unconnected UDP socket's datagrams to one
/// VIP:port go to, so they keep going to one backend while it exists (as a conntrack entry
/// does for kube-proxy).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockFlowKey {
    pub cookie: u64,
    /// VIP, network order (IPv4 in word 0).
    pub addr: [u32; 4],
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub _pad: u32,
}

/// Value of `CIP_SOCKFLOW`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockFlowValue {
    pub backend_id: u32,
    /// The slot the backend was found in (for people reading dumps).
    pub slot: u16,
    pub _pad: u16,
}

/// Value of `CIP_MAGLEV` (key: svc_id, u32): backend id per Maglev table entry. A flow's entry
/// is `hash(5-tuple) % MAGLEV_TABLE_SIZE`. Written whole by the agent (one map update, so
/// readers see the old or the new table, never a mix) before the frontend's count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevValue {
    pub backend_ids: [u32; MAGLEV_TABLE_SIZE],
    pub _pad: u32,
}

/// Conntrack entry direction.
pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

/// The flow was hairpinned (client is its own backend): its source was rewritten too.
pub const CT_FLAG_HAIRPIN: u16 = 1 << 0;
/// TCP: FIN or RST seen; the entry expires with the short (closing) timeout.
pub const CT_FLAG_CLOSING: u16 = 1 << 1;
/// The flow's source was translated too (traffic from outside to a remote backend): forward
/// packets leave from `nat_addr:nat_port`, replies to it go back to the client.
pub const CT_FLAG_SNAT: u16 = 1 << 2;
/// Made by the per-packet program on the node's external interfaces: its replies are
/// translated there (at egress for a local backend), not on the pod's interface.
pub const CT_FLAG_NODEPORT: u16 = 1 << 3;

/// Key of `CIP_CT4` (LRU). Forward entries are keyed by the packet as the client sends it
/// (client -> VIP:port); reply entries by the packet as the backend sends it (backend ->
/// client, or -> the hairpin source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// CT_DIR_FORWARD or CT_DIR_REPLY.
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Value of `CIP_CT4`.
/// Forward: `addr:port` = the backend to send to; `nat_addr` = the new source when hairpinned
/// (with `nat_port` too when CT_FLAG_SNAT).
/// Reply: `addr:port` = the VIP:port to show as source; `nat_addr` = the client to restore as
/// destination when hairpinned (with `nat_port`, the client's port, when CT_FLAG_SNAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct4Value {
    pub addr: u32,
    pub nat_addr: u32,
    pub port: u16,
    /// CT_FLAG_*.
    pub flags: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    /// With CT_FLAG_SNAT: forward, the new source port; reply, the client's port.
    pub nat_port: u16,
    pub _pad: u16,
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
}

/// Key of `CIP_CT6` (LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct6Key {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Value of `CIP_CT6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct6Value {
    pub addr: [u32; 4],
    pub nat_addr: [u32; 4],
    pub port: u16,
    pub flags: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    pub nat_port: u16,
    pub _pad: u16,
    pub last_seen_ns: u64,
}

/// Value of `CIP_STATS` (per-CPU array indexed by svc_id): packets and bytes the per-packet
/// datapath forwarded to the service (both directions).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SvcStats {
    pub packets: u64,
    pub bytes: u64,
}

/// Value of `CIP_CONFIG` (array of one, index 0): settings the agent writes at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatapathConfigValue {
    /// Idle timeout of an established TCP flow's conntrack entry.
    pub ct_tcp_timeout_s: u32,
    /// Idle timeout of a TCP flow after a FIN or RST (an unanswered SYN keeps the established
    /// timeout: SYN_SENT is not tracked).
    pub ct_tcp_closing_timeout_s: u32,
    pub ct_udp_timeout_s: u32,
    /// The node's IPv4 address that traffic from outside is source-NATed to when it goes to a
    /// remote backend through a load-balancer or external IP (a node port keeps the node
    /// address it was reached on); 0: none, such traffic is dropped.
    pub snat4: u32,
    /// The same for IPv6 (all zero: none).
    pub snat6: [u32; 4],
}

impl DatapathConfigValue {
    /// kube-proxy/Linux-like defaults: 6 h established TCP (nf_conntrack_tcp_timeout_established
    /// is 5 days; Cilium uses 6 h), 10 s closing, 30 s UDP (nf_conntrack_udp_timeout).
    pub const DEFAULT: Self = Self {
        ct_tcp_timeout_s: 21_600,
        ct_tcp_closing_timeout_s: 10,
        ct_udp_timeout_s: 30,
        snat4: 0,
        snat6: [0; 4],
    };
}

/// Data of a `CIP_SRCRANGE4` key (an LPM trie key is `{prefix_len, data}`): a frontend's
/// `loadBalancerSourceRanges` entry. The prefix covers the service id (32 bits, always whole)
/// and then the range's prefix, so one lookup with prefix length 64 and the client's address
/// finds whether any range of that service contains it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRange4 {
    /// The frontend's service id, big-endian (the trie compares bytes in order).
    pub svc_id_be: u32,
    pub addr: u32,
}

/// Data of a `CIP_SRCRANGE6` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRange6 {
    pub svc_id_be: u32,
    pub addr: [u32; 4],
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<MaglevValue>() == 4 * MAGLEV_TABLE_SIZE + 4);
    assert!(size_of::<Ct4Key>() == 16);
    assert!(size_of::<Ct4Value>() == 32);
    assert!(size_of::<Ct6Key>() == 40);
    assert!(size_of::<Ct6Value>() == 56);
    assert!(size_of::<SvcStats>() == 16);
    assert!(size_of::<DatapathConfigValue>() == 32);
    assert!(size_of::<SourceRange4>() == 8);
    assert!(size_of::<SourceRange6>() == 20);
    assert!(size_of::<Service4Key>() == 12);
    assert!(size_of::<Service6Key>() == 24);
    assert!(size_of::<ServiceValue>() == 16);
    assert!(size_of::<Backend4>() == 8);
    assert!(size_of::<Backend6>() == 20);
    assert!(size_of::<SockRevNat4Key>() == 16);
    assert!(size_of::<SockRevNat4Value>() == 12);
    assert!(size_of::<SockRevNat6Key>() == 32);
    assert!(size_of::<SockRevNat6Value>() == 24);
    assert!(size_of::<AffinityKey>() == 24);
    assert!(size_of::<AffinityValue>() == 16);
    assert!(size_of::<SockFlowKey>() == 32);
    assert!(size_of::<SockFlowValue>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and explicit padding fields
    // (no implicit padding, sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for Service4Key {}
    unsafe impl aya::Pod for Service6Key {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for SockRevNat4Key {}
    unsafe impl aya::Pod for SockRevNat4Value {}
    unsafe impl aya::Pod for SockRevNat6Key {}
    unsafe impl aya::Pod for SockRevNat6Value {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SockFlowKey {}
    unsafe impl aya::Pod for SockFlowValue {}
    unsafe impl aya::Pod for MaglevValue {}
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct4Value {}
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for Ct6Value {}
    unsafe impl aya::Pod for SvcStats {}
    unsafe impl aya::Pod for DatapathConfigValue {}
    unsafe impl aya::Pod for SourceRange4 {}
    unsafe impl aya::Pod for SourceRange6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_network_order() {
        let v4 = Ipv4Addr::new(10, 96, 0, 1);
        assert_eq!(ip4_to_net(v4).to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(ip4_from_net(ip4_to_net(v4)), v4);
        let v6: Ipv6Addr = "fd00:96::1".parse().unwrap();
        assert_eq!(ip6_from_net(ip6_to_net(v6)), v6);
        assert_eq!(ip6_to_net(v6)[0].to_ne_bytes(), [0xfd, 0, 0, 0x96]);
        assert_eq!(port_to_net(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_net(port_to_net(8080)), 8080);
    }

    #[test]
    fn affinity_key_holds_the_whole_cookie() {
        let k = AffinityKey::netns(0x1122_3344_5566_7788, 9);
        assert_eq!(k.client, [0x5566_7788, 0x1122_3344, 0, 0]);
    }

    #[test]
    fn snat_ports_cover_both_spans_and_nothing_else() {
        assert_eq!(snat_port(0), 1_024);
        assert_eq!(snat_port(28_975), 29_999);
        assert_eq!(snat_port(28_976), 61_000);
        assert_eq!(snat_port(SNAT_PORTS - 1), 65_535);
        assert_eq!(SNAT_PORTS, 33_512);
        assert!((0..SNAT_PORTS).all(|i| is_snat_port(snat_port(i))));
        for p in [0, 1_023, 30_000, 32_767, 32_768, 60_999] {
            assert!(!is_snat_port(p), "{p}");
        }
    }
}
