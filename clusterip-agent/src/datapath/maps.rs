//! The pinned maps, opened by path, and what they hold read back into Rust values.
//!
//! Both the syncer (which adopts what a previous agent left) and `dump` (which shows what the
//! datapath really holds) go through [`PinnedMaps::read_installed`]: the maps are the truth,
//! never the agent's memory.

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use clusterip_common::{
    AffinityKey, AffinityValue, BE_FLAG_LOCAL, Backend4, Backend6, CT_DIR_REPLY, CT_FLAG_HAIRPIN,
    Ct4Key, Ct4Value, Ct6Key, Ct6Value, DatapathConfigValue, MaglevValue, SCOPE_DEFAULT,
    SCOPE_EXTERNAL, SVC_FLAG_WILDCARD, Service4Key, Service6Key, ServiceValue, SockFlowKey,
    SockFlowValue, SourceRange4, SourceRange6, SvcStats, ip4_from_net, ip4_to_net, ip6_from_net,
    ip6_to_net, map_names, port_from_net,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::table::{Backend, Frontend, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "cannot open pinned map {path}: {source} (is the agent running or has it run with this --bpffs? \
         `clusterip-agent run` creates the pins)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("map {name}: {op}: {source}")]
    Op {
        name: &'static str,
        op: String,
        #[source]
        source: MapError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A backend as the maps hold it (22 bytes: the syncer mirrors every one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: Backend,
    pub protocol: Protocol,
}

/// One frontend as installed: its slot-0 value and the backend ids of slots 1..=count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledFrontend {
    pub svc_id: u32,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    /// Backend id per slot, slot 1 first. A slot missing from the map reads as 0.
    pub slots: Vec<u32>,
}

/// Everything the service and backend maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Scope-0 frontends: every frontend, as traffic from this node (and from outside, unless
    /// it has `SVC_FLAG_EXT_LOCAL`) sees it.
    pub frontends: BTreeMap<Frontend, InstalledFrontend>,
    /// Scope-1 frontends: the outside view of `externalTrafficPolicy: Local` frontends (this
    /// node's endpoints only), with their own service ids, slots and backend ids.
    pub external_local: BTreeMap<Frontend, InstalledFrontend>,
    /// VIPs with a wildcard entry, and its flags.
    pub wildcards: BTreeMap<IpAddr, u16>,
    /// By backend id. Hashed, not ordered: nothing walks it in order, and 100,000 entries
    /// take about 3.5 MB this way against about 8 MB in a BTreeMap.
    pub backends: StdHashMap<u32, BackendAddr>,
    /// Slot entries (slot >= 1) that belong to no frontend or lie beyond its count:
    /// (frontend, scope, slot).
    pub stray_slots: Vec<(Frontend, u8, u16)>,
    /// `loadBalancerSourceRanges` in `CIP_SRCRANGE4/6`, by the service id of the (scope-0)
    /// frontend they belong to (empty without the per-packet maps).
    pub source_ranges: BTreeMap<u32, BTreeSet<IpNet>>,
    /// svc_id -> fingerprint ([`maglev_fingerprint`]) of its Maglev table, for every
    /// table in `CIP_MAGLEV` (empty without the per-packet maps).
    pub maglev: BTreeMap<u32, u64>,
}

type Svc4 = HashMap<MapData, Service4Key, ServiceValue>;
type Svc6 = HashMap<MapData, Service6Key, ServiceValue>;

/// Handles on the pinned maps in one bpffs directory.
pub struct PinnedMaps {
    pub svc4: Svc4,
    pub svc6: Svc6,
    pub be4: HashMap<MapData, u32, Backend4>,
    pub be6: HashMap<MapData, u32, Backend6>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub sockflow: HashMap<MapData, SockFlowKey, SockFlowValue>,
    /// The per-packet (TC/XDP) datapath's maps; None when the eBPF object that created the
    /// pins has none (an older object).
    pub packet: Option<PacketMaps>,
}

/// The maps of the per-packet datapath that the agent writes or cleans.
pub struct PacketMaps {
    pub maglev: HashMap<MapData, u32, MaglevValue>,
    pub ct4: HashMap<MapData, Ct4Key, Ct4Value>,
    pub ct6: HashMap<MapData, Ct6Key, Ct6Value>,
    pub stats: PerCpuArray<MapData, SvcStats>,
    pub ranges4: LpmTrie<MapData, SourceRange4, u8>,
    pub ranges6: LpmTrie<MapData, SourceRange6, u8>,
}

impl PacketMaps {
    /// Opens the per-packet maps pinned in `dir`; `Ok(None)` when `CIP_MAGLEV` is not pinned.
    pub fn open(dir: &Path) -> Result<Option<Self>, MapsError> {
        if !dir.join(map_names::MAGLEV).exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            maglev: open(dir, map_names::MAGLEV)?,
            ct4: open(dir, map_names::CONNTRACK_V4)?,
            ct6: open(dir, map_names::CONNTRACK_V6)?,
            stats: open_map(dir, map_names::STATS)?,
            ranges4: open_map(dir, map_names::SOURCE_RANGES_V4)?,
            ranges6: open_map(dir, map_names::SOURCE_RANGES_V6)?,
        }))
    }

    /// Adds (`insert`) or removes one source range of the frontend with service id `svc_id`.
    pub fn set_source_range(
        &mut self,
        svc_id: u32,
        range: IpNet,
        insert: bool,
    ) -> Result<(), MapsError> {
        let op = || {
            format!(
                "{} {range} of service id {svc_id}",
                if insert { "add" } else { "delete" }
            )
        };
        let r = match range {
            IpNet::V4(n) => {
                let key = range4_key(svc_id, n);
                let r = if insert {
                    self.ranges4.insert(&key, &1, 0)
                } else {
                    self.ranges4.remove(&key)
                };
                r.map_err(|e| (e, map_names::SOURCE_RANGES_V4))
            }
            IpNet::V6(n) => {
                let key = range6_key(svc_id, n);
                let r = if insert {
                    self.ranges6.insert(&key, &1, 0)
                } else {
                    self.ranges6.remove(&key)
                };
                r.map_err(|e| (e, map_names::SOURCE_RANGES_V6))
            }
        };
        match r {
            Ok(()) => Ok(()),
            // Deleting what is not there is done already.
            Err((e, _)) if !insert && is_missing(&e) => Ok(()),
            Err((e, name)) => Err(op_err(name, op())(e)),
        }
    }

    /// Every source range in the tries, by service id.
    fn read_source_ranges(&self) -> Result<BTreeMap<u32, BTreeSet<IpNet>>, MapsError> {
        let mut out: BTreeMap<u32, BTreeSet<IpNet>> = BTreeMap::new();
        for key in self.ranges4.keys() {
            let key = key.map_err(op_err(map_names::SOURCE_RANGES_V4, "iterate"))?;
            let d = key.data();
            let len = key.prefix_len().saturating_sub(32).min(32) as u8;
            if let Ok(n) = Ipv4Net::new(ip4_from_net(d.addr), len) {
                out.entry(u32::from_be(d.svc_id_be))
                    .or_default()
                    .insert(IpNet::V4(n));
            }
        }
        for key in self.ranges6.keys() {
            let key = key.map_err(op_err(map_names::SOURCE_RANGES_V6, "iterate"))?;
            let d = key.data();
            let len = key.prefix_len().saturating_sub(32).min(128) as u8;
            if let Ok(n) = Ipv6Net::new(ip6_from_net(d.addr), len) {
                out.entry(u32::from_be(d.svc_id_be))
                    .or_default()
                    .insert(IpNet::V6(n));
            }
        }
        Ok(out)
    }

    /// Sum over CPUs of the counters of `svc_id` (zero when out of range).
    pub fn stats_of(&self, svc_id: u32) -> Result<SvcStats, MapsError> {
        if svc_id >= self.stats.len() {
            return Ok(SvcStats::default());
        }
        let values = self
            .stats
            .get(&svc_id, 0)
            .map_err(op_err(map_names::STATS, format!("read {svc_id}")))?;
        Ok(values.iter().fold(SvcStats::default(), |acc, v| SvcStats {
            packets: acc.packets.wrapping_add(v.packets),
            bytes: acc.bytes.wrapping_add(v.bytes),
        }))
    }

    /// Sets the counters of `svc_id` to zero on every CPU (a newly allocated id).
    pub fn zero_stats(&mut self, svc_id: u32) -> Result<(), MapsError> {
        if svc_id >= self.stats.len() {
            return Ok(());
        }
        let op = || format!("zero {svc_id}");
        let n = aya::util::nr_cpus()
            .map_err(|(_, e)| op_err(map_names::STATS, op())(MapError::from(e)))?;
        let zeros = PerCpuValues::try_from(vec![SvcStats::default(); n.get() as usize])
            .map_err(|e| op_err(map_names::STATS, op())(MapError::from(e)))?;
        self.stats
            .set(svc_id, zeros, 0)
            .map_err(op_err(map_names::STATS, op()))
    }
}

/// The `CIP_SRCRANGE4` key of `range` for service id `svc_id`: the id's 32 bits, then the
/// range's prefix.
pub fn range4_key(svc_id: u32, range: Ipv4Net) -> LpmKey<SourceRange4> {
    let data = SourceRange4 {
        svc_id_be: svc_id.to_be(),
        addr: ip4_to_net(range.network()),
    };
    LpmKey::new(32 + u32::from(range.prefix_len()), data)
}

/// [`range4_key`] for `CIP_SRCRANGE6`.
pub fn range6_key(svc_id: u32, range: Ipv6Net) -> LpmKey<SourceRange6> {
    let data = SourceRange6 {
        svc_id_be: svc_id.to_be(),
        addr: ip6_to_net(range.network()),
    };
    LpmKey::new(32 + u32::from(range.prefix_len()), data)
}

/// A conntrack key of either family (`Ct4Key`, `Ct6Key`) with its value type, so that code
/// walking `CIP_CT4` and `CIP_CT6` is written once.
pub trait CtKey: aya::Pod {
    type Value: aya::Pod;
    /// The map's name, for errors.
    const MAP: &'static str;
    /// The entry in host form.
    fn view(&self, v: &Self::Value) -> CtView;
    /// The key of the reply entry that goes with the forward entry (`self`, `v`): the packet
    /// as the backend sends it, to the client (or, hairpinned, to the rewritten source).
    fn reply_key(&self, v: &Self::Value) -> Self;
}

/// A conntrack entry of either family, addresses and ports in host form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtView {
    /// The key's source and destination (forward: client and VIP:port).
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The value's `addr:port` (forward: the backend; reply: the VIP:port).
    pub nat: SocketAddr,
    pub proto: u8,
    pub dir: u8,
    pub flags: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    pub last_seen_ns: u64,
}

impl CtKey for Ct4Key {
    type Value = Ct4Value;
    const MAP: &'static str = map_names::CONNTRACK_V4;

    fn view(&self, v: &Ct4Value) -> CtView {
        let sa = |a, port| SocketAddr::new(IpAddr::V4(ip4_from_net(a)), port_from_net(port));
        CtView {
            src: sa(self.saddr, self.sport),
            dst: sa(self.daddr, self.dport),
            nat: sa(v.addr, v.port),
            proto: self.proto,
            dir: self.dir,
            flags: v.flags,
            svc_id: v.svc_id,
            backend_id: v.backend_id,
            last_seen_ns: v.last_seen_ns,
        }
    }

    fn reply_key(&self, v: &Ct4Value) -> Self {
        Ct4Key {
            saddr: v.addr,
            daddr: if v.flags & CT_FLAG_HAIRPIN != 0 {
                v.nat_addr
            } else {
                self.saddr
            },
            sport: v.port,
            dport: self.sport,
            proto: self.proto,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        }
    }
}

impl CtKey for Ct6Key {
    type Value = Ct6Value;
    const MAP: &'static str = map_names::CONNTRACK_V6;

    fn view(&self, v: &Ct6Value) -> CtView {
        let sa = |a, port| SocketAddr::new(IpAddr::V6(ip6_from_net(a)), port_from_net(port));
        CtView {
            src: sa(self.saddr, self.sport),
            dst: sa(self.daddr, self.dport),
            nat: sa(v.addr, v.port),
            proto: self.proto,
            dir: self.dir,
            flags: v.flags,
            svc_id: v.svc_id,
            backend_id: v.backend_id,
            last_seen_ns: v.last_seen_ns,
        }
    }

    fn reply_key(&self, v: &Ct6Value) -> Self {
        Ct6Key {
            saddr: v.addr,
            daddr: if v.flags & CT_FLAG_HAIRPIN != 0 {
                v.nat_addr
            } else {
                self.saddr
            },
            sport: v.port,
            dport: self.sport,
            proto: self.proto,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        }
    }
}

/// The max_entries of the map pinned at `dir/name`; None when nothing is pinned there.
pub fn pinned_max_entries(dir: &Path, name: &'static str) -> Result<Option<u32>, MapsError> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let open_err = |source| MapsError::Open {
        path: path.clone(),
        source,
    };
    let info = aya::maps::MapInfo::from_pin(&path).map_err(open_err)?;
    Ok(Some(info.max_entries()))
}

/// Reads `CIP_CONFIG[0]`; None when the map is not pinned.
pub fn read_config(dir: &Path) -> Result<Option<DatapathConfigValue>, MapsError> {
    if !dir.join(map_names::CONFIG).exists() {
        return Ok(None);
    }
    let config: Array<MapData, DatapathConfigValue> = open_map(dir, map_names::CONFIG)?;
    let v = config
        .get(&0, 0)
        .map_err(op_err(map_names::CONFIG, "read 0"))?;
    Ok(Some(v))
}

/// Writes `CIP_CONFIG[0]`; false when the map is not pinned (an object without it).
pub fn write_config(dir: &Path, v: &DatapathConfigValue) -> Result<bool, MapsError> {
    if !dir.join(map_names::CONFIG).exists() {
        return Ok(false);
    }
    let mut config: Array<MapData, DatapathConfigValue> = open_map(dir, map_names::CONFIG)?;
    config
        .set(0, v, 0)
        .map_err(op_err(map_names::CONFIG, "write 0"))?;
    Ok(true)
}

/// Whether a failed delete failed because the key was not there.
pub(crate) fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Opens a pinned map as any typed aya map.
fn open_map<T>(dir: &Path, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let open_err = |source| MapsError::Open {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_err)?;
    let map = Map::from_map_data(data).map_err(open_err)?;
    T::try_from(map).map_err(open_err)
}

/// Opens the hash map pinned at `dir/name`.
pub(crate) fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapsError> {
    open_map(dir, name)
}

pub(crate) fn op_err(
    name: &'static str,
    op: impl Into<String>,
) -> impl FnOnce(MapError) -> MapsError {
    let op = op.into();
    move |source| MapsError::Op { name, op, source }
}

impl PinnedMaps {
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            svc4: open(dir, map_names::SERVICES_V4)?,
            svc6: open(dir, map_names::SERVICES_V6)?,
            be4: open(dir, map_names::BACKENDS_V4)?,
            be6: open(dir, map_names::BACKENDS_V6)?,
            affinity: open(dir, map_names::AFFINITY)?,
            sockflow: open(dir, map_names::SOCK_FLOWS)?,
            packet: PacketMaps::open(dir)?,
        })
    }

    /// Reads the service and backend maps.
    pub fn read_installed(&self) -> Result<Installed, MapsError> {
        let mut out = Installed::default();
        // (frontend, scope, slot) -> backend id, for slots >= 1.
        let mut slots: BTreeMap<(Frontend, u8, u16), u32> = BTreeMap::new();
        let mut visit =
            |vip: IpAddr, port: u16, proto: u8, slot: u16, scope: u8, v: ServiceValue| {
                if slot == 0 && scope == SCOPE_DEFAULT && v.flags & SVC_FLAG_WILDCARD != 0 {
                    out.wildcards.insert(vip, v.flags);
                    return;
                }
                let Some(protocol) = Protocol::from_number(proto) else {
                    return;
                };
                let fe = Frontend {
                    vip,
                    port: port_from_net(port),
                    protocol,
                };
                let frontends = match scope {
                    SCOPE_DEFAULT => &mut out.frontends,
                    SCOPE_EXTERNAL => &mut out.external_local,
                    _ => return,
                };
                if slot == 0 {
                    frontends.insert(
                        fe,
                        InstalledFrontend {
                            svc_id: v.svc_id,
                            flags: v.flags,
                            affinity_timeout_s: v.affinity_timeout_s,
                            slots: vec![0; usize::from(v.count)],
                        },
                    );
                } else {
                    slots.insert((fe, scope, slot), v.backend_id);
                }
            };
        for item in self.svc4.iter() {
            let (k, v) = item.map_err(op_err(map_names::SERVICES_V4, "iterate"))?;
            visit(
                IpAddr::V4(ip4_from_net(k.addr)),
                k.port,
                k.proto,
                k.slot,
                k.scope,
                v,
            );
        }
        for item in self.svc6.iter() {
            let (k, v) = item.map_err(op_err(map_names::SERVICES_V6, "iterate"))?;
            visit(
                IpAddr::V6(ip6_from_net(k.addr)),
                k.port,
                k.proto,
                k.slot,
                k.scope,
                v,
            );
        }
        for ((fe, scope, slot), id) in slots {
            let frontends = if scope == SCOPE_DEFAULT {
                &mut out.frontends
            } else {
                &mut out.external_local
            };
            match frontends.get_mut(&fe) {
                Some(f) if usize::from(slot) <= f.slots.len() => {
                    f.slots[usize::from(slot) - 1] = id
                }
                _ => out.stray_slots.push((fe, scope, slot)),
            }
        }
        for item in self.be4.iter() {
            let (id, b) = item.map_err(op_err(map_names::BACKENDS_V4, "iterate"))?;
            if let Some(protocol) = Protocol::from_number(b.proto) {
                let addr = backend(IpAddr::V4(ip4_from_net(b.addr)), b.port, b.flags);
                out.backends.insert(id, BackendAddr { addr, protocol });
            }
        }
        for item in self.be6.iter() {
            let (id, b) = item.map_err(op_err(map_names::BACKENDS_V6, "iterate"))?;
            if let Some(protocol) = Protocol::from_number(b.proto) {
                let addr = backend(IpAddr::V6(ip6_from_net(b.addr)), b.port, b.flags);
                out.backends.insert(id, BackendAddr { addr, protocol });
            }
        }
        if let Some(p) = &self.packet {
            for item in p.maglev.iter() {
                let (svc_id, table) = item.map_err(op_err(map_names::MAGLEV, "iterate"))?;
                out.maglev
                    .insert(svc_id, maglev_fingerprint(&table.backend_ids));
            }
            out.source_ranges = p.read_source_ranges()?;
        }
        Ok(out)
    }
}

/// A backend as a map holds it (port in network order, `BE_FLAG_*`).
fn backend(ip: IpAddr, port_net: u16, flags: u8) -> Backend {
    let port = port_from_net(port_net);
    if flags & BE_FLAG_LOCAL != 0 {
        Backend::local(ip, port)
    } else {
        Backend::new(ip, port)
    }
}

/// One pinned map as the kernel describes it, for `dump --maps`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PinnedMapInfo {
    pub name: String,
    /// The kernel's map type number (`enum bpf_map_type`).
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Kernel memory the map takes (`memlock` in its fdinfo, what bpftool shows as
    /// `bytes_memlock`; charged to the creator's memory cgroup).
    pub bytes_memlock: u64,
}

/// Every map of [`map_names::ALL`] pinned in `dir`, with its size and kernel memory.
pub fn pinned_map_info(dir: &Path) -> Result<Vec<PinnedMapInfo>, MapsError> {
    let mut out = Vec::new();
    for name in map_names::ALL {
        let path = dir.join(name);
        let io = |e: std::io::Error| MapsError::Io {
            path: path.clone(),
            source: e,
        };
        let Some(fd) = super::sys::obj_get(&path).map_err(io)? else {
            continue;
        };
        let info = super::sys::map_info(std::os::fd::AsFd::as_fd(&fd)).map_err(io)?;
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .map_err(io)?;
        let bytes_memlock = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push(PinnedMapInfo {
            name: name.to_string(),
            map_type: info.type_,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            bytes_memlock,
        });
    }
    Ok(out)
}

/// A fingerprint of a Maglev table's contents, to tell whether an installed table is the wanted
/// one without keeping a copy of every table (4 KiB each). Only compared within one process.
pub fn maglev_fingerprint(ids: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterip_common::{CT_DIR_FORWARD, PROTO_UDP, ip4_to_net, port_to_net};
    use std::net::Ipv4Addr;

    fn forward(flags: u16) -> (Ct4Key, Ct4Value) {
        let ip = |d| ip4_to_net(Ipv4Addr::new(10, 0, 0, d));
        let k = Ct4Key {
            saddr: ip(1),
            daddr: ip(100),
            sport: port_to_net(40000),
            dport: port_to_net(53),
            proto: PROTO_UDP,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let v = Ct4Value {
            addr: ip(2),
            nat_addr: ip(100),
            port: port_to_net(5353),
            flags,
            svc_id: 7,
            backend_id: 9,
            nat_port: 0,
            _pad: 0,
            last_seen_ns: 42,
        };
        (k, v)
    }

    #[test]
    fn conntrack_view_is_in_host_form() {
        let (k, v) = forward(0);
        let e = k.view(&v);
        assert_eq!(e.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(e.dst, "10.0.0.100:53".parse().unwrap());
        assert_eq!(e.nat, "10.0.0.2:5353".parse().unwrap());
        assert_eq!((e.proto, e.dir), (PROTO_UDP, CT_DIR_FORWARD));
        assert_eq!((e.svc_id, e.backend_id, e.last_seen_ns), (7, 9, 42));
    }

    #[test]
    fn reply_key_answers_the_client_or_the_hairpin_source() {
        // Backend 10.0.0.2:5353 answers the client 10.0.0.1:40000.
        let (k, v) = forward(0);
        let r = k.reply_key(&v).view(&v);
        assert_eq!(r.src, "10.0.0.2:5353".parse().unwrap());
        assert_eq!(r.dst, "10.0.0.1:40000".parse().unwrap());
        assert_eq!((r.proto, r.dir), (PROTO_UDP, CT_DIR_REPLY));
        // Hairpinned, the backend answers the rewritten source (nat_addr).
        let (k, v) = forward(CT_FLAG_HAIRPIN);
        let r = k.reply_key(&v).view(&v);
        assert_eq!(r.dst, "10.0.0.100:40000".parse().unwrap());
        // Same for IPv6.
        let k6 = Ct6Key {
            saddr: clusterip_common::ip6_to_net("fd00::1".parse().unwrap()),
            daddr: clusterip_common::ip6_to_net("fd00::100".parse().unwrap()),
            sport: k.sport,
            dport: k.dport,
            proto: PROTO_UDP,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let v6 = Ct6Value {
            addr: clusterip_common::ip6_to_net("fd00::2".parse().unwrap()),
            nat_addr: k6.daddr,
            port: v.port,
            flags: 0,
            svc_id: 7,
            backend_id: 9,
            nat_port: 0,
            _pad: 0,
            last_seen_ns: 0,
        };
        let r = k6.reply_key(&v6).view(&v6);
        assert_eq!(r.src, "[fd00::2]:5353".parse().unwrap());
        assert_eq!(r.dst, "[fd00::1]:40000".parse().unwrap());
    }

    #[test]
    fn maglev_fingerprint_tells_tables_apart() {
        assert_eq!(
            maglev_fingerprint(&[1, 2, 3]),
            maglev_fingerprint(&[1, 2, 3])
        );
        assert_ne!(
            maglev_fingerprint(&[1, 2, 3]),
            maglev_fingerprint(&[1, 3, 2])
        );
    }
}
