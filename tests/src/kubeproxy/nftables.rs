//! kube-proxy's nftables mode (`table ip kube-proxy`), as `nft -f` input.
//!
//! Base chains (filter ones at priority dstnat-10, before DNAT), the jumps its
//! `nftablesJumpChains` lists, and for dispatch:
//! ```text
//! services: ip daddr . meta l4proto . th dport vmap @service-ips          (cluster IPs)
//!           ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
//! service-ips:       VIP . tcp . P : goto service-<hash>-default/name/tcp/port
//! service-nodeports: tcp . NP      : goto external-<hash>-default/name/tcp/port
//! external-..: jump mark-for-masquerade (externalTrafficPolicy Cluster); goto service-..
//! service-..:  ip daddr VIP tcp dport P ip saddr != CLUSTER_CIDR jump mark-for-masquerade;
//!              numgen random mod N vmap { 0 : goto endpoint-.., ... }
//! endpoint-..: ip saddr POD jump mark-for-masquerade; meta l4proto tcp dnat to POD:PORT
//! nat-postrouting -> masquerading: what mark-for-masquerade marked is masqueraded
//! ```
//! `nodeport-ips` holds the node's addresses (kube-proxy's nftables mode defaults
//! `--nodeport-addresses` to the node's primary IPs). Unlike the iptables mode (KUBE-FORWARD),
//! the nftables mode drops nothing conntrack finds invalid (its alpha did, with
//! `--conntrack-tcp-be-liberal` to turn it off; the proxier since has no such rule).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{CLUSTER_CIDR, MASQ_MARK, SERVICE_CIDR, SvcPort};

/// The name of kube-proxy's nftables table (family ip).
pub const NFT_TABLE: &str = "kube-proxy";

/// Base chains: (name, type, hook, priority).
const BASE_CHAINS: [(&str, &str, &str, &str); 8] = [
    ("filter-prerouting", "filter", "prerouting", "-110"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
];

/// Jumps from the base chains: (target, base chain, match).
const JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new",
    ),
];

/// `nft -f` input creating `table ip kube-proxy` with all of `services` from empty, in one
/// transaction; `nodeport_ips` are the addresses node ports are served on.
pub fn nft_full(services: &[SvcPort], nodeport_ips: &[Ipv4Addr]) -> String {
    let t = NFT_TABLE;
    let mut out = String::with_capacity(services.len() * 2600 + 8192);
    let _ = writeln!(
        out,
        "add table ip {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (name, ty, hook, prio) in BASE_CHAINS {
        let _ = writeln!(
            out,
            "add chain ip {t} {name} {{ type {ty} hook {hook} priority {prio} ; }}"
        );
    }
    for c in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
    ] {
        let _ = writeln!(out, "add chain ip {t} {c}");
    }
    for (target, base, matcher) in JUMPS {
        let m = if matcher.is_empty() {
            String::new()
        } else {
            format!("{matcher} ")
        };
        let _ = writeln!(out, "add rule ip {t} {base} {m}jump {target}");
    }
    let _ = writeln!(
        out,
        "add rule ip {t} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add rule ip {t} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule ip {t} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule ip {t} masquerading masquerade fully-random\n\
         add set ip {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add rule ip {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject \
         traffic to invalid ports of ClusterIPs\"\n\
         add rule ip {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop \
         traffic to unallocated ClusterIPs\"\n\
         add set ip {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort \
         traffic\" ; }}\n\
         add map ip {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : \
         verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; \
         }}\n\
         add map ip {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add chain ip {t} reject-chain {{ comment \"helper for @no-endpoint-services / \
         @no-endpoint-nodeports\" ; }}\n\
         add rule ip {t} reject-chain reject\n\
         add rule ip {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap \
         @no-endpoint-services\n\
         add rule ip {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th \
         dport vmap @no-endpoint-nodeports\n\
         add map ip {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict \
         ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n\
         add rule ip {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"NodePort traffic\" ; }}\n\
         add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap \
         @service-nodeports"
    );
    for ip in nodeport_ips {
        let _ = writeln!(out, "add element ip {t} nodeport-ips {{ {ip} }}");
    }
    for s in services {
        nft_service(&mut out, s);
    }
    out
}

/// The chains, rules and map elements of one service port.
fn nft_service(out: &mut String, s: &SvcPort) {
    let t = NFT_TABLE;
    let svc = s.nft_svc_chain();
    let p = s.proto.name();
    let _ = writeln!(
        out,
        "add chain ip {t} {svc}\n\
         add rule ip {t} {svc} ip daddr {} {p} dport {} ip saddr != {CLUSTER_CIDR} jump \
         mark-for-masquerade",
        s.vip, s.port
    );
    endpoint_chains(out, s, &[]);
    service_vmap(out, s);
    let _ = writeln!(
        out,
        "add element ip {t} cluster-ips {{ {} }}\n\
         add element ip {t} service-ips {{ {} . {p} . {} : goto {svc} }}",
        s.vip, s.vip, s.port
    );
    if let Some(np) = s.node_port {
        let ext = s.nft_ext_chain();
        let _ = writeln!(
            out,
            "add chain ip {t} {ext}\n\
             add rule ip {t} {ext} jump mark-for-masquerade\n\
             add rule ip {t} {ext} goto {svc}\n\
             add element ip {t} service-nodeports {{ {p} . {np} : goto {ext} }}"
        );
    }
}

/// The endpoint chains of `s` that `existing` does not have yet.
fn endpoint_chains(out: &mut String, s: &SvcPort, existing: &[(Ipv4Addr, u16)]) {
    let t = NFT_TABLE;
    let p = s.proto.name();
    for &ep in s.endpoints.iter().filter(|ep| !existing.contains(ep)) {
        let epc = s.nft_ep_chain(ep);
        let _ = writeln!(
            out,
            "add chain ip {t} {epc}\n\
             add rule ip {t} {epc} ip saddr {} jump mark-for-masquerade\n\
             add rule ip {t} {epc} meta l4proto {p} dnat to {}:{}",
            ep.0, ep.0, ep.1
        );
    }
}

/// The service chain's `numgen random mod N vmap { i : goto endpoint-.. }` rule.
fn service_vmap(out: &mut String, s: &SvcPort) {
    if s.endpoints.is_empty() {
        return;
    }
    let mut vmap = String::new();
    for (k, &ep) in s.endpoints.iter().enumerate() {
        if k > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{k} : goto {}", s.nft_ep_chain(ep));
    }
    let _ = writeln!(
        out,
        "add rule ip {NFT_TABLE} {} numgen random mod {} vmap {{ {vmap} }}",
        s.nft_svc_chain(),
        s.endpoints.len()
    );
}

/// `nft -f` input for one service whose endpoints changed from `old` to `new` (same service
/// port), as kube-proxy's nftables sync does it in one transaction: flush the service chain
/// and rewrite it, add the new endpoint chains, delete the stale ones.
pub fn nft_update(old: &SvcPort, new: &SvcPort) -> String {
    let mut out = String::new();
    let t = NFT_TABLE;
    let svc = new.nft_svc_chain();
    let p = new.proto.name();
    let _ = writeln!(
        out,
        "flush chain ip {t} {svc}\n\
         add rule ip {t} {svc} ip daddr {} {p} dport {} ip saddr != {CLUSTER_CIDR} jump \
         mark-for-masquerade",
        new.vip, new.port
    );
    endpoint_chains(&mut out, new, &old.endpoints);
    service_vmap(&mut out, new);
    for &ep in &old.endpoints {
        if !new.endpoints.contains(&ep) {
            let _ = writeln!(out, "delete chain ip {t} {}", old.nft_ep_chain(ep));
        }
    }
    out
}

/// What `kube-proxy --cleanup` does to the nftables rules: delete its table.
pub fn nft_cleanup() -> String {
    format!("delete table ip {NFT_TABLE}\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::test_svc as svc;
    use super::*;

    #[test]
    fn nft_maps_every_service_and_updates_one() {
        let all = [svc(1, &[1, 2]), svc(2, &[3])];
        let text = nft_full(&all, &[]);
        assert!(text.contains("add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 :"));
        assert!(text.contains("add element ip kube-proxy cluster-ips { 10.96.0.2 }"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(
            !text.contains("add element ip kube-proxy service-nodeports"),
            "no node port element"
        );
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
    fn node_ports_dispatch_on_the_node_addresses_through_the_external_chain() {
        let s = svc(1, &[1]).with_node_port(30080);
        let node = Ipv4Addr::new(10, 100, 0, 1);
        let text = nft_full(std::slice::from_ref(&s), &[node]);
        let (ext, chain) = (s.nft_ext_chain(), s.nft_svc_chain());
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 10.100.0.1 }"));
        assert!(text.contains(
            "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
        ));
        assert!(text.contains(&format!(
            "add element ip kube-proxy service-nodeports {{ tcp . 30080 : goto {ext} }}"
        )));
        let rules: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("add rule ip kube-proxy {ext} ")))
            .collect();
        assert_eq!(
            rules,
            [
                format!("add rule ip kube-proxy {ext} jump mark-for-masquerade"),
                format!("add rule ip kube-proxy {ext} goto {chain}"),
            ]
        );
        // Every chain a rule jumps to is declared before it.
        let declared = |c: &str| text.find(&format!("add chain ip kube-proxy {c}"));
        for (target, base, _) in JUMPS {
            let jump = text
                .lines()
                .position(|l| {
                    l.starts_with(&format!("add rule ip kube-proxy {base} "))
                        && l.ends_with(&format!("jump {target}"))
                })
                .unwrap();
            let at: usize = text.lines().take(jump).map(|l| l.len() + 1).sum();
            assert!(declared(target).is_some_and(|d| d < at), "{target}");
        }
    }
}
