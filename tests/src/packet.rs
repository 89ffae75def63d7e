//! Harness for the packet tests: `tc_ingress` and `xdp_ingress` run under BPF_PROG_TEST_RUN
//! (no interfaces, no traffic), maps filled directly, packets built and parsed with
//! etherparse, checksums verified by recomputing them.
//!
//! [`Datapath::load`] loads the eBPF object embedded in `clusterip-agent`
//! (built by its build script) with its maps pinned in a fresh directory
//! `/sys/fs/bpf/cip-pkt-<pid>x<n>`, removed again in `Drop`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use clusterip_common::{
    Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, DatapathConfigValue, MAGLEV_TABLE_SIZE,
    MaglevValue, SVC_FLAG_WILDCARD, Service4Key, Service6Key, ServiceValue, SourceRange4,
    SourceRange6, SvcStats, map_names,
};
use etherparse::{Ipv4Header, Ipv6Header, PacketBuilder, TcpHeader, UdpHeader};

pub const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Whether BPF_PROG_TEST_RUN refuses `pkt` for an skb program by itself (EINVAL): it needs
/// the whole fixed IPv4/IPv6 header of an IP ethertype (XDP runs take anything from 14 bytes).
pub fn skb_test_run_refuses(pkt: &[u8]) -> bool {
    match pkt.get(12..14) {
        Some([0x08, 0x00]) => pkt.len() < 34,
        Some([0x86, 0xdd]) => pkt.len() < 54,
        _ => pkt.len() < 14,
    }
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Whether a packet test can run here (mounting bpffs if needed), or why not.
fn check() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if clusterip_agent::EBPF_OBJECT.is_empty() {
        return Err(
            "clusterip-agent was built without the eBPF object (run `cargo xtask setup`, then build again)".into(),
        );
    }
    crate::env::ensure_bpffs()
}

/// One loaded object with its two per-packet programs and its maps in a private pin dir.
pub struct Datapath {
    pub ebpf: Ebpf,
    pins: PathBuf,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pins);
    }
}

/// Output of one test run.
#[derive(Debug, Clone)]
pub struct Run {
    pub ret: u32,
    pub out: Vec<u8>,
    /// The kernel's own time for the run (BPF_PROG_TEST_RUN's `duration`), in ns.
    pub ns: u64,
}

impl Datapath {
    /// Loads the object, or skips (prints `SKIP <test>: ...`, returns None) when it cannot run
    /// here; with `CLUSTERIP_E2E_REQUIRED=1` a missing prerequisite panics.
    pub fn load(test: &str) -> Option<Datapath> {
        crate::env::decide(test, check())?;
        let pins = PathBuf::from(format!("{}/cip-pkt-{}", crate::env::BPFFS, crate::uniq()));
        std::fs::create_dir(&pins).expect("create pin dir");
        let off: u8 = 0;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins)
            .override_global("AYA_LOG_LEVEL", &off, true)
            .load(clusterip_agent::EBPF_OBJECT);
        let mut dp = Datapath {
            ebpf: match ebpf {
                Ok(e) => e,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&pins);
                    panic!("loading the eBPF object: {e:?}");
                }
            },
            pins,
        };
        {
            let p: &mut SchedClassifier = dp
                .ebpf
                .program_mut("tc_ingress")
                .expect("tc_ingress in the object")
                .try_into()
                .expect("tc_ingress is a classifier");
            if let Err(e) = p.load() {
                panic!("tc_ingress rejected: {e:?}");
            }
        }
        for name in ["tc_nodeport", "tc_nodeport_egress", "tc_egress", "tc_floor"] {
            let p: &mut SchedClassifier = dp
                .ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} in the object"))
                .try_into()
                .expect("a classifier");
            if let Err(e) = p.load() {
                panic!("{name} rejected: {e:?}");
            }
        }
        for name in ["xdp_ingress", "xdp_nodeport", "xdp_floor"] {
            let p: &mut Xdp = dp
                .ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} in the object"))
                .try_into()
                .expect("an XDP program");
            if let Err(e) = p.load() {
                panic!("{name} rejected: {e:?}");
            }
        }
        Some(dp)
    }

    fn run(&self, prog: &str, pkt: &[u8]) -> Run {
        self.try_run(prog, pkt)
            .unwrap_or_else(|e| panic!("test_run {prog} on {} bytes: {e}", pkt.len()))
    }

    /// Runs `pkt`; Err when the kernel refuses the input itself (BPF_PROG_TEST_RUN checks
    /// that an skb's IPv4/IPv6 header is there before running the program).
    pub fn try_run(&self, prog: &str, pkt: &[u8]) -> Result<Run, String> {
        self.try_run_on(prog, pkt, None)
    }

    /// Runs `pkt` through `prog` as if it arrived on (or left by) interface `ifindex` of the
    /// calling thread's network namespace (`__sk_buff.ifindex` in the test-run context): the
    /// programs' FIB lookups then see that namespace's routes.
    pub fn run_on(&self, prog: &str, pkt: &[u8], ifindex: u32) -> Run {
        self.try_run_on(prog, pkt, Some(ifindex))
            .unwrap_or_else(|e| panic!("test_run {prog} on {} bytes: {e}", pkt.len()))
    }

    fn try_run_on(&self, prog: &str, pkt: &[u8], ifindex: Option<u32>) -> Result<Run, String> {
        let mut out = vec![0u8; 4096];
        let tc = prog.starts_with("tc_");
        let mut ctx = [0u8; 192];
        let ctx_len = if tc {
            // struct __sk_buff: ifindex at offset 40, 192 bytes in all; every other field
            // the kernel accepts from a test run is left 0.
            if let Some(i) = ifindex {
                ctx[40..44].copy_from_slice(&i.to_ne_bytes());
            }
            192
        } else {
            // struct xdp_md: data 0, data_end = the packet's length (the kernel insists),
            // ingress_ifindex at offset 12; 24 bytes.
            let len = u32::try_from(pkt.len()).unwrap_or(u32::MAX);
            ctx[4..8].copy_from_slice(&len.to_ne_bytes());
            if let Some(i) = ifindex {
                ctx[12..16].copy_from_slice(&i.to_ne_bytes());
            }
            24
        };
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: ifindex.map(|_| &ctx[..ctx_len]),
            ..Default::default()
        };
        let program = self.ebpf.program(prog).expect("program");
        let r = if tc {
            let p: &SchedClassifier = program.try_into().expect("classifier");
            p.test_run(opts)
        } else {
            let p: &Xdp = program.try_into().expect("xdp");
            p.test_run(opts)
        };
        let r = r.map_err(|e| format!("{e:?}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            ret: r.return_value,
            out,
            ns: u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// Runs `pkt` through `prog` (a TC or XDP program of the object) `runs` times, one
    /// BPF_PROG_TEST_RUN each (so each run starts from `pkt`, as a real packet would), and
    /// returns the kernel's duration of each, in ns.
    pub fn durations(&self, prog: &str, pkt: &[u8], runs: usize) -> Vec<u64> {
        (0..runs).map(|_| self.run(prog, pkt).ns).collect()
    }

    /// Runs `pkt` through `tc_ingress`.
    pub fn tc(&self, pkt: &[u8]) -> Run {
        self.run("tc_ingress", pkt)
    }

    /// Runs `pkt` through `xdp_ingress`.
    pub fn xdp(&self, pkt: &[u8]) -> Run {
        self.run("xdp_ingress", pkt)
    }

    /// Both, for callers that only care about "changed or not": (tc, xdp).
    pub fn both(&self, pkt: &[u8]) -> (Run, Run) {
        (self.tc(pkt), self.xdp(pkt))
    }

    /// Writes a service (frontend, slots, backends, wildcard and, if `maglev`, its table).
    /// Backend ids are `svc_id * 1000 + i + 1`. Returns the ids.
    pub fn add_service(&mut self, svc: &Svc) -> Vec<u32> {
        let ids: Vec<u32> = (0..svc.backends.len())
            .map(|i| svc.svc_id * 1000 + i as u32 + 1)
            .collect();
        let front = ServiceValue {
            backend_id: 0,
            count: svc.backends.len() as u16,
            flags: svc.flags,
            svc_id: svc.svc_id,
            affinity_timeout_s: svc.affinity_timeout_s,
        };
        let wildcard = ServiceValue {
            flags: SVC_FLAG_WILDCARD,
            ..Default::default()
        };
        // The same for both families: only the types, the map names and the address variant
        // differ.
        macro_rules! write_family {
            ($vip:expr, $Ip:ident, $Backend:ty, $Key:ty, $be_map:expr, $svc_map:expr) => {{
                let vip = $vip;
                let mut be: HashMap<_, u32, $Backend> =
                    HashMap::try_from(self.ebpf.map_mut($be_map).unwrap()).unwrap();
                for (i, (id, (addr, port))) in ids.iter().zip(&svc.backends).enumerate() {
                    let IpAddr::$Ip(a) = addr else {
                        panic!("backend {addr} of another family than the VIP {vip}")
                    };
                    let mut b = <$Backend>::new(*a, *port, svc.proto);
                    b.flags = svc.backend_flags.get(i).copied().unwrap_or(0);
                    be.insert(id, &b, 0).unwrap();
                }
                let mut s: HashMap<_, $Key, ServiceValue> =
                    HashMap::try_from(self.ebpf.map_mut($svc_map).unwrap()).unwrap();
                for (i, id) in ids.iter().enumerate() {
                    let v = ServiceValue {
                        backend_id: *id,
                        svc_id: svc.svc_id,
                        ..Default::default()
                    };
                    let key = <$Key>::scoped(vip, svc.port, svc.proto, i as u16 + 1, svc.scope);
                    s.insert(&key, &v, 0).unwrap();
                }
                s.insert(
                    &<$Key>::scoped(vip, svc.port, svc.proto, 0, svc.scope),
                    &front,
                    0,
                )
                .unwrap();
                s.insert(&<$Key>::wildcard(vip), &wildcard, 0).unwrap();
            }};
        }
        match svc.vip {
            IpAddr::V4(vip) => write_family!(
                vip,
                V4,
                Backend4,
                Service4Key,
                map_names::BACKENDS_V4,
                map_names::SERVICES_V4
            ),
            IpAddr::V6(vip) => write_family!(
                vip,
                V6,
                Backend6,
                Service6Key,
                map_names::BACKENDS_V6,
                map_names::SERVICES_V6
            ),
        }
        if svc.maglev && !svc.backends.is_empty() {
            self.set_maglev(svc.svc_id, &svc.backends, &ids);
        }
        ids
    }

    /// Writes the Maglev table of `svc_id` for these backends, populated with the agent's
    /// `clusterip_agent::sync::maglev` (backends named `ip:port`, as the agent does).
    pub fn set_maglev(&mut self, svc_id: u32, backends: &[(IpAddr, u16)], ids: &[u32]) {
        let names: Vec<String> = backends
            .iter()
            .map(|(a, p)| SocketAddrName(*a, *p).to_string())
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let table = clusterip_agent::sync::maglev::populate(&refs);
        assert_eq!(table.len(), MAGLEV_TABLE_SIZE);
        let mut v = MaglevValue {
            backend_ids: [0; MAGLEV_TABLE_SIZE],
            _pad: 0,
        };
        for (slot, idx) in v.backend_ids.iter_mut().zip(table) {
            *slot = ids[idx];
        }
        let mut m: HashMap<_, u32, MaglevValue> =
            HashMap::try_from(self.ebpf.map_mut(map_names::MAGLEV).unwrap()).unwrap();
        m.insert(&svc_id, &v, 0).unwrap();
    }

    /// Removes backend `id` of an IPv4/IPv6 service everywhere the agent would: its slot (the
    /// last slot moves into the hole), the count, the backend entry. Callers rebuild Maglev.
    pub fn remove_backend(&mut self, svc: &Svc, ids: &[u32], gone: usize) {
        let remaining: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, id)| *id)
            .collect();
        let front = ServiceValue {
            backend_id: 0,
            count: remaining.len() as u16,
            flags: svc.flags,
            svc_id: svc.svc_id,
            affinity_timeout_s: svc.affinity_timeout_s,
        };
        let IpAddr::V4(vip) = svc.vip else {
            panic!("remove_backend: IPv4 only")
        };
        let mut s: HashMap<_, Service4Key, ServiceValue> =
            HashMap::try_from(self.ebpf.map_mut(map_names::SERVICES_V4).unwrap()).unwrap();
        for (i, id) in remaining.iter().enumerate() {
            let v = ServiceValue {
                backend_id: *id,
                svc_id: svc.svc_id,
                ..Default::default()
            };
            s.insert(
                &Service4Key::new(vip, svc.port, svc.proto, i as u16 + 1),
                &v,
                0,
            )
            .unwrap();
        }
        s.insert(&Service4Key::new(vip, svc.port, svc.proto, 0), &front, 0)
            .unwrap();
        let _ = s.remove(&Service4Key::new(
            vip,
            svc.port,
            svc.proto,
            ids.len() as u16,
        ));
        let mut be: HashMap<_, u32, Backend4> =
            HashMap::try_from(self.ebpf.map_mut(map_names::BACKENDS_V4).unwrap()).unwrap();
        be.remove(&ids[gone]).unwrap();
    }

    /// Writes `addr`'s wildcard entry as `w` (e.g. with SVC_FLAG_OPEN: a node address whose
    /// other ports are its own).
    pub fn set_wildcard(&mut self, addr: IpAddr, w: &ServiceValue) {
        match addr {
            IpAddr::V4(a) => {
                let mut s: HashMap<_, Service4Key, ServiceValue> =
                    HashMap::try_from(self.ebpf.map_mut(map_names::SERVICES_V4).unwrap()).unwrap();
                s.insert(&Service4Key::wildcard(a), w, 0).unwrap();
            }
            IpAddr::V6(a) => {
                let mut s: HashMap<_, Service6Key, ServiceValue> =
                    HashMap::try_from(self.ebpf.map_mut(map_names::SERVICES_V6).unwrap()).unwrap();
                s.insert(&Service6Key::wildcard(a), w, 0).unwrap();
            }
        }
    }

    /// Sets the node addresses traffic from outside is source-NATed to (`CIP_CONFIG`).
    pub fn set_snat(&mut self, v4: Option<std::net::Ipv4Addr>, v6: Option<Ipv6Addr>) {
        let mut m: aya::maps::Array<_, DatapathConfigValue> =
            aya::maps::Array::try_from(self.ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
        let mut c = DatapathConfigValue::DEFAULT;
        c.snat4 = v4.map_or(0, clusterip_common::ip4_to_net);
        c.snat6 = v6.map_or([0; 4], clusterip_common::ip6_to_net);
        m.set(0, &c, 0).unwrap();
    }

    /// Adds `addr/prefix` to the `loadBalancerSourceRanges` of service `svc_id`.
    pub fn add_source_range(&mut self, svc_id: u32, addr: IpAddr, prefix: u32) {
        use aya::maps::lpm_trie::{Key, LpmTrie};
        match addr {
            IpAddr::V4(a) => {
                let mut m: LpmTrie<_, SourceRange4, u8> =
                    LpmTrie::try_from(self.ebpf.map_mut(map_names::SOURCE_RANGES_V4).unwrap())
                        .unwrap();
                let data = SourceRange4 {
                    svc_id_be: svc_id.to_be(),
                    addr: clusterip_common::ip4_to_net(a),
                };
                m.insert(&Key::new(32 + prefix, data), &1, 0).unwrap();
            }
            IpAddr::V6(a) => {
                let mut m: LpmTrie<_, SourceRange6, u8> =
                    LpmTrie::try_from(self.ebpf.map_mut(map_names::SOURCE_RANGES_V6).unwrap())
                        .unwrap();
                let data = SourceRange6 {
                    svc_id_be: svc_id.to_be(),
                    addr: clusterip_common::ip6_to_net(a),
                };
                m.insert(&Key::new(32 + prefix, data), &1, 0).unwrap();
            }
        }
    }

    /// Empties both conntrack maps.
    pub fn clear_ct(&mut self) {
        let mut m4: HashMap<_, Ct4Key, Ct4Value> =
            HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK_V4).unwrap()).unwrap();
        let keys: Vec<Ct4Key> = m4.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m4.remove(&k);
        }
        let mut m6: HashMap<_, Ct6Key, Ct6Value> =
            HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK_V6).unwrap()).unwrap();
        let keys: Vec<Ct6Key> = m6.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m6.remove(&k);
        }
    }

    /// Number of IPv4 conntrack entries.
    pub fn ct4(&self) -> BTreeMap<(u32, u32, u16, u16, u8, u8), Ct4Value> {
        let m: HashMap<&MapData, Ct4Key, Ct4Value> =
            HashMap::try_from(self.ebpf.map(map_names::CONNTRACK_V4).unwrap()).unwrap();
        m.iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.saddr, k.daddr, k.sport, k.dport, k.proto, k.dir), v))
            .collect()
    }

    /// Sum over CPUs of the counters of `svc_id`.
    pub fn stats(&self, svc_id: u32) -> SvcStats {
        let m: PerCpuArray<&MapData, SvcStats> =
            PerCpuArray::try_from(self.ebpf.map(map_names::STATS).unwrap()).unwrap();
        let vals = m.get(&svc_id, 0).unwrap();
        let mut s = SvcStats::default();
        for v in vals.iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
        }
        s
    }
}

/// `ip:port` / `[ip6]:port`, the agent's backend name for Maglev.
struct SocketAddrName(IpAddr, u16);

impl std::fmt::Display for SocketAddrName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.0, self.1))
    }
}

/// A service for [`Datapath::add_service`].
#[derive(Clone, Debug)]
pub struct Svc {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub svc_id: u32,
    pub backends: Vec<(IpAddr, u16)>,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    pub maglev: bool,
    /// BE_FLAG_* per backend (missing: 0).
    pub backend_flags: Vec<u8>,
    /// SCOPE_DEFAULT or SCOPE_EXTERNAL (the outside view of an `externalTrafficPolicy: Local`
    /// frontend).
    pub scope: u8,
}

impl Svc {
    pub fn new(vip: IpAddr, port: u16, proto: u8, svc_id: u32, backends: &[(IpAddr, u16)]) -> Svc {
        Svc {
            vip,
            port,
            proto,
            svc_id,
            backends: backends.to_vec(),
            flags: 0,
            affinity_timeout_s: 0,
            maglev: true,
            backend_flags: Vec::new(),
            scope: 0,
        }
    }
}

// ---------- building packets ----------

/// TCP segment options for [`tcp`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp {
    pub syn: bool,
    pub ack: Option<u32>,
    pub fin: bool,
    pub rst: bool,
    pub seq: u32,
}

impl Tcp {
    pub fn syn() -> Tcp {
        Tcp {
            syn: true,
            seq: 1000,
            ..Default::default()
        }
    }
    pub fn ack() -> Tcp {
        Tcp {
            ack: Some(5000),
            seq: 1001,
            ..Default::default()
        }
    }
}

fn ip_step(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    }
}

/// Ethernet + IP + TCP with correct checksums.
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, t: Tcp, payload: &[u8]) -> Vec<u8> {
    let mut b = ip_step(src, dst).tcp(sport, dport, t.seq, 64240);
    if t.syn {
        b = b.syn();
    }
    if let Some(a) = t.ack {
        b = b.ack(a);
    }
    if t.fin {
        b = b.fin();
    }
    if t.rst {
        b = b.rst();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// Ethernet + IP + UDP with correct checksums.
pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ip_step(src, dst)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// An ICMP(v6) error of `ty`/`code` from `src` to `dst` quoting `quoted` (an IP packet
/// without Ethernet header), `rest` = bytes 5..8 of the ICMP header.
pub fn icmp_error(
    src: IpAddr,
    dst: IpAddr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    let step = ip_step(src, dst);
    if src.is_ipv4() {
        step.icmpv4_raw(ty, code, rest)
            .write(&mut v, quoted)
            .unwrap();
    } else {
        step.icmpv6_raw(ty, code, rest)
            .write(&mut v, quoted)
            .unwrap();
    }
    v
}

// ---------- reading packets ----------

/// The headers of a packet as far as the tests look at them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// TCP/UDP ports, or (type, code) for ICMP.
    pub sport: u16,
    pub dport: u16,
    /// Offset of the L4 header and the L4 bytes (up to the IP length).
    pub l4: usize,
    pub l4_bytes: Vec<u8>,
}

impl Parsed {
    pub fn tcp_flags(&self) -> u8 {
        self.l4_bytes[13]
    }
    pub fn tcp_seq(&self) -> u32 {
        u32::from_be_bytes(self.l4_bytes[4..8].try_into().unwrap())
    }
    pub fn tcp_ack(&self) -> u32 {
        u32::from_be_bytes(self.l4_bytes[8..12].try_into().unwrap())
    }
}

/// Parses Ethernet + IPv4 (no options) / IPv6 + L4 and checks every checksum: the IPv4 header
/// checksum, TCP/UDP with etherparse's calculation, ICMP/ICMPv6 over the whole message, and the
/// quoted IPv4 header's checksum inside an ICMP error. Panics on any mismatch.
pub fn parse(pkt: &[u8]) -> Parsed {
    let ethertype = u16::from_be_bytes([pkt[12], pkt[13]]);
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&pkt[0..6]);
    src_mac.copy_from_slice(&pkt[6..12]);
    let (src, dst, proto, l4, l4_bytes, pseudo): (IpAddr, IpAddr, u8, usize, Vec<u8>, Vec<u8>) =
        match ethertype {
            0x0800 => {
                let (ip, _) = Ipv4Header::from_slice(&pkt[14..]).expect("IPv4 header");
                assert_eq!(
                    ip.header_checksum,
                    ip.calc_header_checksum(),
                    "IPv4 header checksum"
                );
                let l4 = 14 + ip.header_len();
                let end = 14 + usize::from(ip.total_len);
                assert!(end <= pkt.len(), "IPv4 total length beyond the packet");
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&ip.source);
                pseudo.extend_from_slice(&ip.destination);
                (
                    IpAddr::V4(Ipv4Addr::from(ip.source)),
                    IpAddr::V4(Ipv4Addr::from(ip.destination)),
                    ip.protocol.0,
                    l4,
                    pkt[l4..end].to_vec(),
                    pseudo,
                )
            }
            0x86dd => {
                let (ip, _) = Ipv6Header::from_slice(&pkt[14..]).expect("IPv6 header");
                let l4 = 54;
                let end = l4 + usize::from(ip.payload_length);
                assert!(end <= pkt.len(), "IPv6 payload length beyond the packet");
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&ip.source);
                pseudo.extend_from_slice(&ip.destination);
                (
                    IpAddr::V6(Ipv6Addr::from(ip.source)),
                    IpAddr::V6(Ipv6Addr::from(ip.destination)),
                    ip.next_header.0,
                    l4,
                    pkt[l4..end].to_vec(),
                    pseudo,
                )
            }
            other => panic!("not IP: ethertype {other:#x}"),
        };
    let (sport, dport) = match proto {
        PROTO_TCP => {
            let (t, payload) = TcpHeader::from_slice(&l4_bytes).expect("TCP header");
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    t.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    t.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
                }
                _ => unreachable!(),
            }
            .unwrap();
            assert_eq!(t.checksum, want, "TCP checksum");
            (t.source_port, t.destination_port)
        }
        PROTO_UDP => {
            let (u, payload) = UdpHeader::from_slice(&l4_bytes).expect("UDP header");
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    u.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    u.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
                }
                _ => unreachable!(),
            }
            .unwrap();
            if src.is_ipv4() && u.checksum == 0 {
                // IPv4 UDP without checksum stays without.
            } else {
                assert_eq!(u.checksum, want, "UDP checksum");
            }
            (u.source_port, u.destination_port)
        }
        1 => {
            assert_eq!(ones_complement(&[&l4_bytes]), 0xffff, "ICMP checksum");
            if l4_bytes.len() >= 28 && (l4_bytes[0] == 3 || l4_bytes[0] == 11) {
                let (inner, _) = Ipv4Header::from_slice(&l4_bytes[8..]).expect("quoted IPv4");
                assert_eq!(
                    inner.header_checksum,
                    inner.calc_header_checksum(),
                    "quoted IPv4 header checksum"
                );
            }
            (u16::from(l4_bytes[0]), u16::from(l4_bytes[1]))
        }
        58 => {
            let len = (l4_bytes.len() as u32).to_be_bytes();
            let nh = [0, 0, 0, 58];
            assert_eq!(
                ones_complement(&[&pseudo, &len, &nh, &l4_bytes]),
                0xffff,
                "ICMPv6 checksum"
            );
            (u16::from(l4_bytes[0]), u16::from(l4_bytes[1]))
        }
        other => panic!("unexpected protocol {other}"),
    };
    Parsed {
        src_mac,
        dst_mac,
        src,
        dst,
        proto,
        sport,
        dport,
        l4,
        l4_bytes,
    }
}

/// One's complement sum (folded, not inverted) of the concatenation of `parts`, each of even
/// length except possibly the last.
pub fn ones_complement(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += u64::from(w);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The (src, sport, dst, dport) the quoted packet of an ICMP error names.
pub fn quoted_tuple(p: &Parsed) -> (IpAddr, u16, IpAddr, u16) {
    let q = &p.l4_bytes[8..];
    if p.src.is_ipv4() {
        let s = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
        let d = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
        let sp = u16::from_be_bytes([q[20], q[21]]);
        let dp = u16::from_be_bytes([q[22], q[23]]);
        (IpAddr::V4(s), sp, IpAddr::V4(d), dp)
    } else {
        let s: [u8; 16] = q[8..24].try_into().unwrap();
        let d: [u8; 16] = q[24..40].try_into().unwrap();
        let sp = u16::from_be_bytes([q[40], q[41]]);
        let dp = u16::from_be_bytes([q[42], q[43]]);
        (
            IpAddr::V6(Ipv6Addr::from(s)),
            sp,
            IpAddr::V6(Ipv6Addr::from(d)),
            dp,
        )
    }
}

/// A small deterministic PRNG (xorshift64*) so runs are reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}
