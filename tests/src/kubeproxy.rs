//! Rule generators for the kube-proxy baselines of the `kubeproxy` benchmark: the same
//! ClusterIP services written the way kube-proxy's iptables mode
//! (`pkg/proxy/iptables/proxier.go`) and nftables mode (`pkg/proxy/nftables/proxier.go`) write
//! them, for `iptables-restore` and `nft -f`. Written from the documented rule layout, not
//! copied; only what a ClusterIP service with ready endpoints needs (no NodePorts, load
//! balancers, external IPs, or local-traffic policies).
//!
//! iptables (table nat, plus the filter chains kube-proxy always writes):
//! ```text
//! PREROUTING/OUTPUT -> KUBE-SERVICES: one rule per service port
//!     -d VIP/32 -p tcp --dport P -j KUBE-SVC-<hash>
//! KUBE-SVC-<hash>: ! -s CLUSTER_CIDR -j KUBE-MARK-MASQ, then one rule per endpoint
//!     -m statistic --mode random --probability 1/(n-i) -j KUBE-SEP-<hash>   (last: no match)
//! KUBE-SEP-<hash>: -s POD/32 -j KUBE-MARK-MASQ (hairpin), -p tcp -j DNAT --to-destination
//! POSTROUTING -> KUBE-POSTROUTING: masquerade what KUBE-MARK-MASQ marked (0x4000).
//! ```
//! A partial sync (what kube-proxy does when only some services changed) rewrites the
//! top-level chains (KUBE-SERVICES whole: every service's rule) and only the changed services'
//! chains, with `--noflush`, and deletes the chains that went away.
//!
//! nftables (`table ip kube-proxy`): a `service-ips` verdict map `VIP . proto . port : goto
//! service-<hash>-<name>`, per-service chains `numgen random mod N vmap { i : goto endpoint-.. }`
//! and per-endpoint chains with `dnat to`.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

/// The pod network (kube-proxy's `--cluster-cidr`): traffic from outside it gets masqueraded.
pub const CLUSTER_CIDR: &str = "10.224.0.0/12";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// One service port with its endpoints (kube-proxy's unit: a "service port name").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcPort {
    /// Service name (namespace "default").
    pub name: String,
    /// Port name.
    pub port_name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// Ready endpoints `(pod IP, target port)`.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl SvcPort {
    /// `default/name:port` as kube-proxy's comments spell it.
    fn spn(&self) -> String {
        format!("default/{}:{}", self.name, self.port_name)
    }

    /// `KUBE-SVC-` + 16 characters derived from the service port name and protocol
    /// (kube-proxy: base32 of a SHA-256; any stable hash does for the benchmark).
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash16(&(self.spn(), self.proto.name())))
    }

    /// `KUBE-SEP-` + 16 characters derived from the service port and the endpoint.
    pub fn sep_chain(&self, ep: (Ipv4Addr, u16)) -> String {
        format!("KUBE-SEP-{}", hash16(&(self.spn(), self.proto.name(), ep)))
    }

    /// nftables chain names: `service-<hash8>-default/name/proto/port`.
    pub fn nft_svc_chain(&self) -> String {
        format!(
            "service-{}-default/{}/{}/{}",
            &hash16(&(self.spn(), self.proto.name()))[..8],
            self.name,
            self.proto.name(),
            self.port_name
        )
    }

    pub fn nft_ep_chain(&self, ep: (Ipv4Addr, u16)) -> String {
        format!(
            "endpoint-{}-default/{}/{}/{}__{}/{}",
            &hash16(&(self.spn(), self.proto.name(), ep))[..8],
            self.name,
            self.proto.name(),
            self.port_name,
            ep.0,
            ep.1
        )
    }
}

/// 16 characters of [A-Z2-7] (base32 alphabet) from a hash of `v`.
fn hash16<T: Hash>(v: &T) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(16);
    for salt in 0u8..2 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        v.hash(&mut h);
        let mut x = h.finish();
        for _ in 0..8 {
            out.push(ALPHABET[(x & 31) as usize] as char);
            x >>= 5;
        }
    }
    out
}

/// The rules that hook kube-proxy's chains into the built-in ones (kube-proxy ensures them
/// with `iptables -C/-I` outside the restore input): `(table, builtin chain, target)`.
const JUMPS: [(&str, &str, &str, &str); 4] = [
    (
        "nat",
        "PREROUTING",
        "KUBE-SERVICES",
        "kubernetes service portals",
    ),
    (
        "nat",
        "OUTPUT",
        "KUBE-SERVICES",
        "kubernetes service portals",
    ),
    (
        "nat",
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "kubernetes postrouting rules",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-FORWARD",
        "kubernetes forwarding rules",
    ),
];

/// `iptables-restore --noflush` input for all of `services` (a full sync; also what programs
/// them from empty: the jumps from the built-in chains are included when `with_jumps`, as
/// kube-proxy's first sync adds them), deleting `deleted_chains` (chains that went away).
pub fn iptables_full(services: &[SvcPort], with_jumps: bool, deleted_chains: &[String]) -> String {
    iptables_sync(services, None, deleted_chains, with_jumps)
}

/// `iptables-restore --noflush` input for a partial sync: the top-level chains whole, the
/// chains of `services[i]` for each `i` in `changed`, and `-X` for `deleted_chains`.
pub fn iptables_partial(
    services: &[SvcPort],
    changed: &[usize],
    deleted_chains: &[String],
) -> String {
    iptables_sync(services, Some(changed), deleted_chains, false)
}

fn iptables_sync(
    services: &[SvcPort],
    changed: Option<&[usize]>,
    deleted_chains: &[String],
    with_jumps: bool,
) -> String {
    let mut out = String::with_capacity(services.len() * 1600 + 4096);
    // filter: what kube-proxy's sync always rewrites (no-endpoint rejects would go to
    // KUBE-SERVICES; every service here has endpoints, so it is empty).
    out.push_str("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark \
         {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m \
         conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    if with_jumps {
        jumps(&mut out, "filter");
    }
    out.push_str("COMMIT\n*nat\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let written = |i: usize| changed.is_none_or(|c| c.contains(&i));
    // Chain declarations (which flush them) of the chains this sync writes.
    for (i, s) in services.iter().enumerate() {
        if written(i) {
            let _ = writeln!(out, ":{} - [0:0]", s.svc_chain());
            for &ep in &s.endpoints {
                let _ = writeln!(out, ":{} - [0:0]", s.sep_chain(ep));
            }
        }
    }
    for c in deleted_chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring \
         SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    );
    for (i, s) in services.iter().enumerate() {
        let spn = s.spn();
        let p = s.proto.name();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {}/32 \
             --dport {} -j {}",
            s.vip,
            s.port,
            s.svc_chain()
        );
        if !written(i) {
            continue;
        }
        let svc = s.svc_chain();
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {}/32 --dport \
             {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            s.vip, s.port
        );
        let n = s.endpoints.len();
        for (k, &ep) in s.endpoints.iter().enumerate() {
            let sep = s.sep_chain(ep);
            let _ = write!(
                out,
                "-A {svc} -m comment --comment \"{spn} -> {}:{}\"",
                ep.0, ep.1
            );
            if k + 1 < n {
                let _ = write!(
                    out,
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - k) as f64
                );
            }
            let _ = writeln!(out, " -j {sep}");
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment {spn} -s {}/32 -j KUBE-MARK-MASQ\n\
                 -A {sep} -m comment --comment {spn} -m {p} -p {p} -j DNAT --to-destination \
                 {}:{}",
                ep.0, ep.0, ep.1
            );
        }
    }
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this \
         must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    for c in deleted_chains {
        let _ = writeln!(out, "-X {c}");
    }
    if with_jumps {
        jumps(&mut out, "nat");
    }
    out.push_str("COMMIT\n");
    out
}

fn jumps(out: &mut String, table: &str) {
    for (t, builtin, target, comment) in JUMPS {
        if t == table {
            let _ = writeln!(
                out,
                "-I {builtin} -m comment --comment \"{comment}\" -j {target}"
            );
        }
    }
}

/// The name of kube-proxy's nftables table (family ip).
pub const NFT_TABLE: &str = "kube-proxy";

/// `nft -f` input creating `table ip kube-proxy` with all of `services` from empty, in one
/// transaction.
pub fn nft_full(services: &[SvcPort]) -> String {
    let mut out = String::with_capacity(services.len() * 2400 + 4096);
    let _ = writeln!(
        out,
        "add table ip {NFT_TABLE} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain ip {NFT_TABLE} mark-for-masquerade\n\
         add rule ip {NFT_TABLE} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add chain ip {NFT_TABLE} masquerading\n\
         add rule ip {NFT_TABLE} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule ip {NFT_TABLE} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule ip {NFT_TABLE} masquerading masquerade fully-random\n\
         add map ip {NFT_TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : \
         verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add chain ip {NFT_TABLE} services\n\
         add rule ip {NFT_TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain ip {NFT_TABLE} filter-forward {{ type filter hook forward priority -110 ; }}\n\
         add rule ip {NFT_TABLE} filter-forward ct state invalid drop\n\
         add chain ip {NFT_TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add rule ip {NFT_TABLE} nat-prerouting jump services\n\
         add chain ip {NFT_TABLE} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule ip {NFT_TABLE} nat-output jump services\n\
         add chain ip {NFT_TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add rule ip {NFT_TABLE} nat-postrouting jump masquerading"
    );
    for s in services {
        nft_service(&mut out, s);
    }
    out
}

/// The chains, rules and map element of one service port.
fn nft_service(out: &mut String, s: &SvcPort) {
    let svc = s.nft_svc_chain();
    let p = s.proto.name();
    let _ = writeln!(
        out,
        "add chain ip {NFT_TABLE} {svc}\n\
         add rule ip {NFT_TABLE} {svc} ip daddr {} {p} dport {} ip saddr != {CLUSTER_CIDR} \
         jump mark-for-masquerade",
        s.vip, s.port
    );
    let mut vmap = String::new();
    for (k, &ep) in s.endpoints.iter().enumerate() {
        let epc = s.nft_ep_chain(ep);
        let _ = writeln!(
            out,
            "add chain ip {NFT_TABLE} {epc}\n\
             add rule ip {NFT_TABLE} {epc} ip saddr {} jump mark-for-masquerade\n\
             add rule ip {NFT_TABLE} {epc} meta l4proto {p} dnat to {}:{}",
            ep.0, ep.0, ep.1
        );
        if k > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{k} : goto {epc}");
    }
    if !s.endpoints.is_empty() {
        let _ = writeln!(
            out,
            "add rule ip {NFT_TABLE} {svc} numgen random mod {} vmap {{ {vmap} }}",
            s.endpoints.len()
        );
    }
    let _ = writeln!(
        out,
        "add element ip {NFT_TABLE} service-ips {{ {} . {p} . {} : goto {svc} }}",
        s.vip, s.port
    );
}

/// `nft -f` input for one service whose endpoints changed from `old` to `new` (same service
/// port), as kube-proxy's nftables sync does it in one transaction: flush the service chain
/// and rewrite it, add the new endpoint chains, delete the stale ones.
pub fn nft_update(old: &SvcPort, new: &SvcPort) -> String {
    let mut out = String::new();
    let svc = new.nft_svc_chain();
    let p = new.proto.name();
    let _ = writeln!(
        out,
        "flush chain ip {NFT_TABLE} {svc}\n\
         add rule ip {NFT_TABLE} {svc} ip daddr {} {p} dport {} ip saddr != {CLUSTER_CIDR} \
         jump mark-for-masquerade",
        new.vip, new.port
    );
    let mut vmap = String::new();
    for (k, &ep) in new.endpoints.iter().enumerate() {
        let epc = new.nft_ep_chain(ep);
        if !old.endpoints.contains(&ep) {
            let _ = writeln!(
                out,
                "add chain ip {NFT_TABLE} {epc}\n\
                 add rule ip {NFT_TABLE} {epc} ip saddr {} jump mark-for-masquerade\n\
                 add rule ip {NFT_TABLE} {epc} meta l4proto {p} dnat to {}:{}",
                ep.0, ep.0, ep.1
            );
        }
        if k > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{k} : goto {epc}");
    }
    if !new.endpoints.is_empty() {
        let _ = writeln!(
            out,
            "add rule ip {NFT_TABLE} {svc} numgen random mod {} vmap {{ {vmap} }}",
            new.endpoints.len()
        );
    }
    for &ep in &old.endpoints {
        if !new.endpoints.contains(&ep) {
            let _ = writeln!(out, "delete chain ip {NFT_TABLE} {}", old.nft_ep_chain(ep));
        }
    }
    out
}

/// The KUBE-SEP chains of `old` that `new` no longer has (for [`iptables_partial`]).
pub fn stale_sep_chains(old: &SvcPort, new: &SvcPort) -> Vec<String> {
    old.endpoints
        .iter()
        .filter(|ep| !new.endpoints.contains(ep))
        .map(|&ep| old.sep_chain(ep))
        .collect()
}

/// kube-proxy's Service YAML protocol spelling.
pub fn proto_upper(p: Proto) -> &'static str {
    p.upper()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(i: u8, eps: &[u8]) -> SvcPort {
        SvcPort {
            name: format!("s{i}"),
            port_name: "http".into(),
            vip: Ipv4Addr::new(10, 96, 0, i),
            port: 80,
            proto: Proto::Tcp,
            endpoints: eps
                .iter()
                .map(|&e| (Ipv4Addr::new(10, 225, 0, e), 8080))
                .collect(),
        }
    }

    #[test]
    fn iptables_service_chain_picks_endpoints_uniformly() {
        let s = svc(1, &[1, 2, 3, 4]);
        let text = iptables_full(std::slice::from_ref(&s), true, &[]);
        let chain = s.svc_chain();
        let probs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("KUBE-SEP-"))
            .map(|l| {
                l.split("--probability ")
                    .nth(1)
                    .map_or("last", |r| r.split(' ').next().unwrap())
            })
            .collect();
        assert_eq!(
            probs,
            ["0.2500000000", "0.3333333333", "0.5000000000", "last"]
        );
        assert!(text.contains("-j DNAT --to-destination 10.225.0.4:8080"));
        assert!(text.contains("-I PREROUTING -m comment"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn iptables_partial_rewrites_kube_services_whole_but_only_changed_chains() {
        let all = [svc(1, &[1, 2]), svc(2, &[3, 4]), svc(3, &[5])];
        let new = svc(2, &[3, 6]);
        let mut changed = all.to_vec();
        changed[1] = new.clone();
        let stale = stale_sep_chains(&all[1], &new);
        assert_eq!(
            stale,
            [all[1].sep_chain((Ipv4Addr::new(10, 225, 0, 4), 8080))]
        );
        let text = iptables_partial(&changed, &[1], &stale);
        assert_eq!(
            text.matches("-A KUBE-SERVICES -m comment --comment \"default/")
                .count(),
            3
        );
        assert!(!text.contains(&format!("-A {} ", all[0].svc_chain())));
        assert!(text.contains(&format!(":{} - [0:0]", new.svc_chain())));
        assert!(text.contains(&format!("-X {}", stale[0])));
        assert!(!text.contains("-I PREROUTING"));
    }

    #[test]
    fn nft_maps_every_service_and_updates_one() {
        let all = [svc(1, &[1, 2]), svc(2, &[3])];
        let text = nft_full(&all);
        assert!(text.contains("add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 :"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        let new = svc(1, &[2, 9]);
        let up = nft_update(&all[0], &new);
        assert!(up.starts_with("flush chain ip kube-proxy service-"));
        assert!(up.contains("dnat to 10.225.0.9:8080"));
        assert!(
            !up.contains("dnat to 10.225.0.2:8080"),
            "kept endpoint re-added: {up}"
        );
        assert!(up.contains(&format!(
            "delete chain ip kube-proxy {}",
            all[0].nft_ep_chain((Ipv4Addr::new(10, 225, 0, 1), 8080))
        )));
    }

    #[test]
    fn chain_names_are_stable_and_distinct() {
        let a = svc(1, &[1]);
        let b = svc(2, &[1]);
        assert_eq!(a.svc_chain(), svc(1, &[]).svc_chain());
        assert_ne!(a.svc_chain(), b.svc_chain());
        assert_eq!(a.svc_chain().len(), "KUBE-SVC-".len() + 16);
        assert!(
            a.svc_chain().len() <= 28,
            "iptables chain names are at most 28 chars"
        );
    }
}
