//! kube-proxy's iptables mode, as `iptables-restore --noflush` input.
//!
//! ```text
//! nat:
//! PREROUTING/OUTPUT -> KUBE-SERVICES: one rule per service port
//!     -d VIP/32 -p tcp --dport P -j KUBE-SVC-<hash>
//!   last: -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
//! KUBE-NODEPORTS: one rule per node port: -p tcp --dport NP -j KUBE-EXT-<hash>
//! KUBE-EXT-<hash>: -j KUBE-MARK-MASQ (externalTrafficPolicy Cluster), -j KUBE-SVC-<hash>
//! KUBE-SVC-<hash>: -d VIP ! -s CLUSTER_CIDR -j KUBE-MARK-MASQ, then one rule per endpoint
//!     -m statistic --mode random --probability 1/(n-i) -j KUBE-SEP-<hash>   (last: no match)
//! KUBE-SEP-<hash>: -s POD/32 -j KUBE-MARK-MASQ (hairpin), -p tcp -j DNAT --to-destination
//! POSTROUTING -> KUBE-POSTROUTING: masquerade what KUBE-MARK-MASQ marked (0x4000).
//! filter: KUBE-FORWARD (what conntrack finds INVALID dropped, as kube-proxy does unless
//! `--conntrack-tcp-be-liberal`; marked and established accepted), and the (here empty)
//! KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS, KUBE-PROXY-FIREWALL.
//! ```
//! A partial sync (what kube-proxy does when only some services changed) rewrites the
//! top-level chains (KUBE-SERVICES and KUBE-NODEPORTS whole) and only the changed services'
//! chains, with `--noflush`, and deletes the chains that went away.

use std::fmt::Write as _;

use super::{CLUSTER_CIDR, MASQ_MARK, SvcPort};

/// kube-proxy's own filter-table chains.
pub const IPTABLES_FILTER_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
];

/// kube-proxy's own nat-table chains (besides the per-service ones).
const NAT_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// Prefixes of the per-service nat chains (kube-proxy's `isServiceChainName`).
const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The rules that hook kube-proxy's chains into the built-in ones (kube-proxy ensures them
/// with `iptables -C/-I` outside the restore input, its `iptablesJumpChains`):
/// `(table, built-in chain, target, comment, match before the comment)`.
const JUMPS: [(&str, &str, &str, &str, &str); 12] = [
    (
        "filter",
        "INPUT",
        "KUBE-EXTERNAL-SERVICES",
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        "kubernetes externally-visible service portals",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "INPUT",
        "KUBE-NODEPORTS",
        "kubernetes health check service ports",
        "",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-SERVICES",
        "kubernetes service portals",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-SERVICES",
        "kubernetes service portals",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-FORWARD",
        "kubernetes forwarding rules",
        "",
    ),
    (
        "filter",
        "INPUT",
        "KUBE-PROXY-FIREWALL",
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "OUTPUT",
        "KUBE-PROXY-FIREWALL",
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    (
        "filter",
        "FORWARD",
        "KUBE-PROXY-FIREWALL",
        "kubernetes load balancer firewall",
        "-m conntrack --ctstate NEW",
    ),
    (
        "nat",
        "OUTPUT",
        "KUBE-SERVICES",
        "kubernetes service portals",
        "",
    ),
    (
        "nat",
        "PREROUTING",
        "KUBE-SERVICES",
        "kubernetes service portals",
        "",
    ),
    (
        "nat",
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "kubernetes postrouting rules",
        "",
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
    let mut out = String::with_capacity(services.len() * 1800 + 4096);
    // filter: what kube-proxy's sync always rewrites (no-endpoint rejects would go to
    // KUBE-SERVICES / KUBE-EXTERNAL-SERVICES, health check ports to KUBE-NODEPORTS; every
    // service here has endpoints and policy Cluster, so they are empty).
    out.push_str("*filter\n");
    for c in IPTABLES_FILTER_CHAINS {
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
    for c in NAT_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let written = |i: usize| changed.is_none_or(|c| c.contains(&i));
    // Chain declarations (which flush them) of the chains this sync writes.
    for (i, s) in services.iter().enumerate() {
        if written(i) {
            let _ = writeln!(out, ":{} - [0:0]", s.svc_chain());
            if s.node_port.is_some() {
                let _ = writeln!(out, ":{} - [0:0]", s.ext_chain());
            }
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
        service_rules(&mut out, s, written(i));
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

/// The top-level rules of one service port (KUBE-SERVICES, KUBE-NODEPORTS) and, if
/// `chains`, its own chains' rules.
fn service_rules(out: &mut String, s: &SvcPort, chains: bool) {
    let spn = s.spn();
    let p = s.proto.name();
    let svc = s.svc_chain();
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {}/32 \
         --dport {} -j {svc}",
        s.vip, s.port
    );
    if let Some(np) = s.node_port {
        let _ = writeln!(
            out,
            "-A KUBE-NODEPORTS -m comment --comment {spn} -m {p} -p {p} --dport {np} -j {}",
            s.ext_chain()
        );
    }
    if !chains {
        return;
    }
    if s.node_port.is_some() {
        let ext = s.ext_chain();
        let _ = writeln!(
            out,
            "-A {ext} -m comment --comment \"masquerade traffic for {spn} external \
             destinations\" -j KUBE-MARK-MASQ\n-A {ext} -j {svc}"
        );
    }
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{spn} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} \
         ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
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
             -A {sep} -m comment --comment {spn} -m {p} -p {p} -j DNAT --to-destination {}:{}",
            ep.0, ep.0, ep.1
        );
    }
}

/// One jump rule's arguments: `[match] -m comment --comment "..." -j TARGET`.
fn jump_args(matcher: &str, comment: &str, target: &str) -> String {
    let m = if matcher.is_empty() {
        String::new()
    } else {
        format!("{matcher} ")
    };
    format!("{m}-m comment --comment \"{comment}\" -j {target}")
}

fn jumps(out: &mut String, table: &str) {
    for (t, builtin, target, comment, matcher) in JUMPS {
        if t == table {
            let _ = writeln!(out, "-I {builtin} {}", jump_args(matcher, comment, target));
        }
    }
}

/// The KUBE-SEP chains of `old` that `new` no longer has (for [`iptables_partial`]).
pub fn stale_sep_chains(old: &SvcPort, new: &SvcPort) -> Vec<String> {
    old.endpoints
        .iter()
        .filter(|ep| !new.endpoints.contains(ep))
        .map(|&ep| old.sep_chain(ep))
        .collect()
}

/// What `kube-proxy --cleanup` does to the iptables rules, as one `iptables-restore
/// --noflush` input, given what `iptables-save` printed (`saved`, tables nat and filter):
/// delete the jumps from the built-in chains, then flush and delete kube-proxy's chains in
/// nat (its own and every per-service chain) and filter. Rules of other owners stay.
pub fn iptables_cleanup(saved: &str) -> String {
    let mut out = String::new();
    for table in ["filter", "nat"] {
        let chains = saved_chains(saved, table);
        let ours: Vec<&str> = chains
            .iter()
            .copied()
            .filter(|c| {
                if table == "filter" {
                    IPTABLES_FILTER_CHAINS.contains(c)
                } else {
                    NAT_CHAINS.contains(c)
                        || SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p))
                }
            })
            .collect();
        let _ = writeln!(out, "*{table}");
        for c in &ours {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (t, builtin, target, comment, matcher) in JUMPS {
            // A jump that is not there would fail the whole restore: only delete those the
            // saved rules show (kube-proxy ignores "not found" the same way).
            let args = jump_args(matcher, comment, target);
            if t == table && saved_has_rule(saved, table, &format!("-A {builtin} {args}")) {
                let _ = writeln!(out, "-D {builtin} {args}");
            }
        }
        for c in &ours {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The chains `iptables-save` declared in `table` (`:NAME POLICY [counters]` lines).
fn saved_chains<'a>(saved: &'a str, table: &str) -> Vec<&'a str> {
    table_lines(saved, table)
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

fn saved_has_rule(saved: &str, table: &str, rule: &str) -> bool {
    table_lines(saved, table).any(|l| l.trim_end() == rule)
}

/// The lines of `*table` .. `COMMIT` in iptables-save output.
fn table_lines<'a>(saved: &'a str, table: &str) -> impl Iterator<Item = &'a str> {
    let head = format!("*{table}");
    saved
        .lines()
        .skip_while(move |l| l.trim_end() != head)
        .skip(1)
        .take_while(|l| l.trim_end() != "COMMIT")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::test_svc as svc;
    use super::*;

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
        assert!(text.contains(
            "-I INPUT -m comment --comment \"kubernetes health check service ports\" -j \
             KUBE-NODEPORTS"
        ));
        assert_eq!(text.matches("COMMIT").count(), 2);
        assert!(!text.contains("KUBE-EXT-"), "no node port, no EXT chain");
    }

    #[test]
    fn node_ports_go_through_the_external_chain_with_masquerade() {
        let s = svc(1, &[1, 2]).with_node_port(30080);
        let text = iptables_full(std::slice::from_ref(&s), false, &[]);
        let (ext, svc) = (s.ext_chain(), s.svc_chain());
        assert!(text.contains(&format!(
            "-A KUBE-NODEPORTS -m comment --comment default/s1:http -m tcp -p tcp --dport 30080 \
             -j {ext}"
        )));
        let ext_rules: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {ext} ")))
            .collect();
        assert_eq!(ext_rules.len(), 2, "{ext_rules:?}");
        assert!(ext_rules[0].ends_with("-j KUBE-MARK-MASQ"));
        assert!(ext_rules[1].ends_with(&format!("-j {svc}")));
        // KUBE-NODEPORTS is reached last, for local destinations only.
        let last = text
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
    }

    #[test]
    fn iptables_partial_rewrites_top_level_chains_whole_but_only_changed_chains() {
        let all = [
            svc(1, &[1, 2]).with_node_port(30001),
            svc(2, &[3, 4]),
            svc(3, &[5]),
        ];
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
        assert!(text.contains("-A KUBE-NODEPORTS -m comment --comment default/s1:http"));
        assert!(!text.contains(&format!("-A {} ", all[0].svc_chain())));
        assert!(!text.contains(&format!("-A {} ", all[0].ext_chain())));
        assert!(text.contains(&format!(":{} - [0:0]", new.svc_chain())));
        assert!(text.contains(&format!("-X {}", stale[0])));
        assert!(!text.contains("-I PREROUTING"));
    }

    #[test]
    fn cleanup_deletes_the_jumps_and_every_kube_chain_but_nothing_else() {
        let saved = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT \
                     [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:MINE - [0:0]\n\
                     -A INPUT -m comment --comment \"kubernetes health check service ports\" -j \
                     KUBE-NODEPORTS\n-A FORWARD -m comment --comment \"kubernetes forwarding \
                     rules\" -j KUBE-FORWARD\n-A FORWARD -j MINE\nCOMMIT\n*nat\n:PREROUTING \
                     ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAA - [0:0]\n:KUBE-SEP-BBBB \
                     - [0:0]\n:KUBE-EXT-AAAA - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -m comment \
                     --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n";
        let text = iptables_cleanup(saved);
        assert!(text.contains(
            "-D INPUT -m comment --comment \"kubernetes health check service ports\" -j \
             KUBE-NODEPORTS"
        ));
        assert!(text.contains("-D PREROUTING -m comment --comment \"kubernetes service portals\""));
        assert!(
            !text.contains("-D OUTPUT"),
            "only jumps that exist are deleted: {text}"
        );
        for c in [
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-SERVICES",
            "KUBE-SVC-AAAA",
            "KUBE-SEP-BBBB",
            "KUBE-EXT-AAAA",
        ] {
            assert!(text.contains(&format!("-X {c}\n")), "{c}: {text}");
        }
        assert!(!text.contains("MINE") && !text.contains("OTHER"), "{text}");
        assert_eq!(text.matches("COMMIT").count(), 2);
    }
}
