//! `clusterip-agent dump`: what the datapath holds, read back from the pinned maps.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use aya::maps::{HashMap, MapData};
use clusterip_common::{
    CT_DIR_FORWARD, CT_FLAG_CLOSING, CT_FLAG_HAIRPIN, DatapathConfigValue, SVC_FLAG_AFFINITY,
    SVC_FLAG_DROP, SVC_FLAG_EXTERNAL, SVC_FLAG_NODE_ADDR, map_names,
};
use serde::Serialize;

use crate::datapath::maps::{
    CtKey, Installed, InstalledFrontend, MapsError, PacketMaps, PinnedMapInfo, PinnedMaps,
};
use crate::datapath::sizing::Mib;
use crate::model::table::Protocol;

/// One frontend as `dump --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DumpEntry {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// "cluster-ip" (this node only), "external" (an external or load-balancer IP) or
    /// "node-port" (an address of this node): what the frontend's flags say.
    #[serde(default)]
    pub kind: String,
    /// "ip:port", IPv6 as "[ip]:port", in slot order.
    pub backends: Vec<String>,
    /// Those of `backends` that run on this node.
    #[serde(default)]
    pub local_backends: Vec<String>,
    /// `externalTrafficPolicy: Local`: the backends traffic from outside the node gets (this
    /// node's), in slot order; None: it gets `backends`.
    #[serde(default)]
    pub external_local: Option<Vec<String>>,
    /// `loadBalancerSourceRanges` the datapath holds for this frontend; empty: any source.
    #[serde(default)]
    pub source_ranges: Vec<String>,
    pub affinity_timeout_s: Option<u32>,
    /// What happens without backends: "reject" or "drop".
    pub no_endpoints: String,
    pub svc_id: u32,
    /// Packets the per-packet datapath forwarded for this frontend (sum over CPUs, both
    /// directions); 0 without the per-packet maps.
    #[serde(default)]
    pub packets: u64,
    /// Bytes of those packets.
    #[serde(default)]
    pub bytes: u64,
}

/// Reads the pinned maps under `bpffs`.
pub fn read(bpffs: &Path) -> Result<Vec<DumpEntry>, MapsError> {
    let maps = PinnedMaps::open(bpffs)?;
    let mut out = entries(&maps.read_installed()?);
    if let Some(p) = &maps.packet {
        for e in &mut out {
            let st = p.stats_of(e.svc_id)?;
            e.packets = st.packets;
            e.bytes = st.bytes;
        }
    }
    Ok(out)
}

pub fn entries(installed: &Installed) -> Vec<DumpEntry> {
    let names = |f: &InstalledFrontend, only_local: bool| -> Vec<String> {
        f.slots
            .iter()
            .filter_map(|id| match installed.backends.get(id) {
                Some(b) if only_local && !b.addr.local => None,
                Some(b) => Some(b.addr.to_string()),
                None if only_local => None,
                None => Some(format!("<missing backend {id}>")),
            })
            .collect()
    };
    installed
        .frontends
        .iter()
        .map(|(fe, f)| DumpEntry {
            vip: fe.vip,
            port: fe.port,
            protocol: fe.protocol.to_string(),
            kind: kind_of(f.flags).to_string(),
            backends: names(f, false),
            local_backends: names(f, true),
            external_local: installed
                .external_local
                .get(fe)
                .map(|local| names(local, false)),
            source_ranges: installed
                .source_ranges
                .get(&f.svc_id)
                .map(|r| r.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            affinity_timeout_s: (f.flags & SVC_FLAG_AFFINITY != 0).then_some(f.affinity_timeout_s),
            no_endpoints: if f.flags & SVC_FLAG_DROP != 0 {
                "drop"
            } else {
                "reject"
            }
            .to_string(),
            svc_id: f.svc_id,
            packets: 0,
            bytes: 0,
        })
        .collect()
}

/// The kind of frontend its flags say.
fn kind_of(flags: u16) -> &'static str {
    if flags & SVC_FLAG_NODE_ADDR != 0 {
        "node-port"
    } else if flags & SVC_FLAG_EXTERNAL != 0 {
        "external"
    } else {
        "cluster-ip"
    }
}

/// Conntrack size and timeouts, as pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConntrackConfig {
    /// Capacity of CIP_CT4 / CIP_CT6.
    pub max_entries_v4: u32,
    pub max_entries_v6: u32,
    pub tcp_timeout_s: u32,
    pub tcp_closing_timeout_s: u32,
    pub udp_timeout_s: u32,
}

/// Reads the conntrack size and timeouts; None without the per-packet maps.
pub fn read_config(bpffs: &Path) -> Result<Option<ConntrackConfig>, MapsError> {
    let v4 = crate::datapath::maps::pinned_max_entries(bpffs, map_names::CONNTRACK_V4)?;
    let v6 = crate::datapath::maps::pinned_max_entries(bpffs, map_names::CONNTRACK_V6)?;
    let cfg = crate::datapath::maps::read_config(bpffs)?;
    Ok(match (v4, v6, cfg) {
        (Some(v4), Some(v6), Some(c)) => Some(config_of(v4, v6, &c)),
        _ => None,
    })
}

fn config_of(v4: u32, v6: u32, c: &DatapathConfigValue) -> ConntrackConfig {
    ConntrackConfig {
        max_entries_v4: v4,
        max_entries_v6: v6,
        tcp_timeout_s: c.ct_tcp_timeout_s,
        tcp_closing_timeout_s: c.ct_tcp_closing_timeout_s,
        udp_timeout_s: c.ct_udp_timeout_s,
    }
}

/// One conntrack flow (its forward entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CtFlow {
    /// "ip:port" of the client ("[ip]:port" for IPv6).
    pub client: String,
    /// The service VIP:port the client sent to.
    pub vip: String,
    /// The backend the flow goes to.
    pub backend: String,
    pub protocol: String,
    /// Seconds since the flow's last packet.
    pub age_s: u64,
    /// "hairpin", "closing".
    pub flags: Vec<String>,
    pub svc_id: u32,
    pub backend_id: u32,
}

/// `dump --conntrack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConntrackDump {
    pub config: Option<ConntrackConfig>,
    /// Entries in the maps (forward and reply) per family.
    pub entries_v4: usize,
    pub entries_v6: usize,
    pub flows: Vec<CtFlow>,
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn flags_of(flags: u16) -> Vec<String> {
    let mut out = Vec::new();
    if flags & CT_FLAG_HAIRPIN != 0 {
        out.push("hairpin".to_string());
    }
    if flags & CT_FLAG_CLOSING != 0 {
        out.push("closing".to_string());
    }
    out
}

fn proto_name(p: u8) -> String {
    match Protocol::from_number(p) {
        Some(p) => p.to_string(),
        None => p.to_string(),
    }
}

/// Reads the conntrack maps under `bpffs`.
pub fn read_conntrack(bpffs: &Path) -> Result<ConntrackDump, MapsError> {
    let config = read_config(bpffs)?;
    let Some(p) = PacketMaps::open(bpffs)? else {
        return Ok(ConntrackDump {
            config,
            entries_v4: 0,
            entries_v6: 0,
            flows: Vec::new(),
        });
    };
    let now = monotonic_now_ns();
    let mut flows = Vec::new();
    let n4 = collect_flows(&p.ct4, now, &mut flows);
    let n6 = collect_flows(&p.ct6, now, &mut flows);
    flows.sort_by(|a, b| (a.svc_id, &a.client).cmp(&(b.svc_id, &b.client)));
    Ok(ConntrackDump {
        config,
        entries_v4: n4,
        entries_v6: n6,
        flows,
    })
}

/// Appends the forward entries of one family's conntrack map to `flows` as of `now` (ns);
/// returns how many entries (forward and reply) the map holds.
fn collect_flows<K: CtKey>(
    map: &HashMap<MapData, K, K::Value>,
    now: u64,
    flows: &mut Vec<CtFlow>,
) -> usize {
    let mut n = 0;
    // LRU entries can vanish while we walk: skip them.
    for (k, v) in map.iter().flatten() {
        n += 1;
        let e = k.view(&v);
        if e.dir != CT_DIR_FORWARD {
            continue;
        }
        flows.push(CtFlow {
            client: e.src.to_string(),
            vip: e.dst.to_string(),
            backend: e.nat.to_string(),
            protocol: proto_name(e.proto),
            age_s: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            flags: flags_of(e.flags),
            svc_id: e.svc_id,
            backend_id: e.backend_id,
        });
    }
    n
}

fn print_config(out: &mut impl Write, c: &Option<ConntrackConfig>) -> std::io::Result<()> {
    match c {
        Some(c) => writeln!(
            out,
            "conntrack: max {} (v4) / {} (v6) entries; timeouts tcp={}s tcp-closing={}s udp={}s",
            c.max_entries_v4,
            c.max_entries_v6,
            c.tcp_timeout_s,
            c.tcp_closing_timeout_s,
            c.udp_timeout_s
        ),
        None => writeln!(out, "conntrack: none (no per-packet datapath maps)"),
    }
}

/// Prints the table for people: one frontend per line, its backends below.
pub fn print_text(
    out: &mut impl Write,
    entries: &[DumpEntry],
    config: &Option<ConntrackConfig>,
) -> std::io::Result<()> {
    print_config(out, config)?;
    if entries.is_empty() {
        writeln!(out, "no services")?;
    }
    for e in entries {
        let vip = SocketAddr::new(e.vip, e.port);
        let affinity = match e.affinity_timeout_s {
            Some(t) => format!(" affinity=ClientIP/{t}s"),
            None => String::new(),
        };
        let kind = match e.kind.as_str() {
            "" | "cluster-ip" => String::new(),
            k => format!(" {k}"),
        };
        let ranges = if e.source_ranges.is_empty() {
            String::new()
        } else {
            format!(" source-ranges={}", e.source_ranges.join(","))
        };
        writeln!(
            out,
            "{vip}/{}{kind} id={}{affinity}{ranges} backends={} packets={} bytes={}",
            e.protocol,
            e.svc_id,
            e.backends.len(),
            e.packets,
            e.bytes
        )?;
        if e.backends.is_empty() {
            writeln!(out, "  (no endpoints: {})", e.no_endpoints)?;
        }
        for b in &e.backends {
            let local = if e.local_backends.contains(b) {
                " (local)"
            } else {
                ""
            };
            writeln!(out, "  -> {b}{local}")?;
        }
        if let Some(local) = &e.external_local {
            writeln!(
                out,
                "  from outside (externalTrafficPolicy: Local): {}",
                if local.is_empty() {
                    "drop (no endpoint on this node)".to_string()
                } else {
                    local.join(" ")
                }
            )?;
        }
    }
    Ok(())
}

/// Prints the conntrack flows for people.
pub fn print_conntrack(out: &mut impl Write, d: &ConntrackDump) -> std::io::Result<()> {
    print_config(out, &d.config)?;
    writeln!(
        out,
        "entries: {} (v4) {} (v6); flows: {}",
        d.entries_v4,
        d.entries_v6,
        d.flows.len()
    )?;
    for f in &d.flows {
        let flags = if f.flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", f.flags.join(","))
        };
        writeln!(
            out,
            "{} {} -> {} -> {} age={}s svc={}{flags}",
            f.protocol, f.client, f.vip, f.backend, f.age_s, f.svc_id
        )?;
    }
    Ok(())
}

/// `dump --maps`: one line per pinned map.
pub fn print_maps(out: &mut impl Write, maps: &[PinnedMapInfo]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:>5} {:>6} {:>12} {:>12}",
        "map", "key", "value", "entries", "kernel mem"
    )?;
    for m in maps {
        writeln!(
            out,
            "{:<14} {:>4}B {:>5}B {:>12} {:>12}",
            m.name,
            m.key_size,
            m.value_size,
            m.max_entries,
            Mib(m.bytes_memlock).to_string()
        )?;
    }
    let total: u64 = maps.iter().map(|m| m.bytes_memlock).sum();
    writeln!(out, "{:<14} {:>44}", "total", Mib(total).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_text() {
        let d = ConntrackDump {
            config: Some(ConntrackConfig {
                max_entries_v4: 1024,
                max_entries_v6: 1024,
                tcp_timeout_s: 21600,
                tcp_closing_timeout_s: 10,
                udp_timeout_s: 30,
            }),
            entries_v4: 2,
            entries_v6: 0,
            flows: vec![CtFlow {
                client: "10.0.0.2:40000".into(),
                vip: "[fd00::1]:80".into(),
                backend: "[fd00::2]:8080".into(),
                protocol: "TCP".into(),
                age_s: 3,
                flags: vec!["hairpin".into()],
                svc_id: 7,
                backend_id: 9,
            }],
        };
        let mut out = Vec::new();
        print_conntrack(&mut out, &d).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("max 1024 (v4)"), "{text}");
        assert!(text.contains("udp=30s"), "{text}");
        assert!(
            text.contains(
                "TCP 10.0.0.2:40000 -> [fd00::1]:80 -> [fd00::2]:8080 age=3s svc=7 [hairpin]"
            ),
            "{text}"
        );
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_now_ns();
        assert!(a > 0);
        assert!(monotonic_now_ns() >= a);
    }

    #[test]
    fn conntrack_flags_are_named() {
        assert!(flags_of(0).is_empty());
        assert_eq!(flags_of(CT_FLAG_CLOSING), ["closing"]);
        assert_eq!(
            flags_of(CT_FLAG_HAIRPIN | CT_FLAG_CLOSING),
            ["hairpin", "closing"]
        );
    }
}
