//! Which of the node's addresses node ports are served on (`--nodeport-addresses`), and which
//! address is the node's own for source NAT. Pure: the agent reads the network namespace's
//! addresses and the Node object, this decides.
//!
//! kube-proxy's semantics (`pkg/proxy/util/nodeport_addresses.go`, `cmd/kube-proxy/app/
//! server.go`, the nftables proxier), per IP family:
//!
//! * the flag's CIDRs of a family select the addresses of that family they contain; a family
//!   without any CIDR (the flag unset, or only CIDRs of the other family) matches every
//!   address of that family, as does a zero CIDR (`0.0.0.0/0`, `::/0`);
//! * `primary` (alone) stands for the Node's primary IPs as /32 and /128
//!   ([`NodeAddresses::host_ips`]: the first InternalIP, else ExternalIP, and the first of
//!   the other family): a family the Node has no IP of matches every address, as in
//!   kube-proxy, which also matches everything while the Node is not known yet;
//! * loopback addresses never carry node ports (the nftables proxier skips them, with an
//!   error, and its match-all rule excludes `127.0.0.0/8` and `::1`).
//!
//! One departure: a family that matches everything leaves out IPv6 link-local addresses
//! (`fe80::/10`). kube-proxy's match-all rule (`fib daddr type local`) accepts them, but a
//! link-local address is only unique with its interface, which a frontend does not carry,
//! and every pod's veth has one on the node side: they would multiply the frontends by the
//! pods on the node. A CIDR that contains them selects them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

/// The Node object's addresses, as far as node ports and source NAT need them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct NodeAddresses {
    /// `status.addresses` of type InternalIP, valid ones, in order.
    pub internal: Vec<IpAddr>,
    /// `status.addresses` of type ExternalIP, valid ones, in order.
    pub external: Vec<IpAddr>,
}

impl NodeAddresses {
    pub fn of(node: &Node) -> Self {
        let mut out = NodeAddresses::default();
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addresses.into_iter().flatten() {
            let Ok(ip) = a.address.trim().parse::<IpAddr>() else {
                continue;
            };
            match a.type_.as_str() {
                "InternalIP" => out.internal.push(ip),
                "ExternalIP" => out.external.push(ip),
                _ => {}
            }
        }
        out
    }

    /// The Node's primary IPs as kube-proxy takes them (`GetNodeHostIPs`): InternalIPs first,
    /// then ExternalIPs; the first of them, and the first of the other family if any.
    pub fn host_ips(&self) -> Vec<IpAddr> {
        let mut all = self.internal.iter().chain(self.external.iter());
        let Some(&first) = all.next() else {
            return Vec::new();
        };
        let mut out = vec![first];
        out.extend(all.find(|ip| ip.is_ipv4() != first.is_ipv4()).copied());
        out
    }
}

/// What is wrong with `--nodeport-addresses`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodePortAddressesError {
    #[error("{0:?} is not a CIDR (e.g. 192.168.0.0/16, fd00::/64) nor \"primary\"")]
    InvalidCidr(String),
    #[error("\"primary\" cannot be combined with CIDRs")]
    PrimaryWithCidrs,
}

/// `--nodeport-addresses`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePortAddresses {
    /// Unset: every address (but loopback and IPv6 link-local).
    #[default]
    All,
    /// `primary`: the Node's primary IPs.
    Primary,
    /// These CIDRs (masked to their prefix).
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// Parses the flag's values: each may be a comma-separated list; empty items are
    /// skipped, and no item at all is [`NodePortAddresses::All`].
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, NodePortAddressesError> {
        let items: Vec<&str> = values
            .iter()
            .flat_map(|v| v.as_ref().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.contains(&"primary") {
            return if items.len() == 1 {
                Ok(NodePortAddresses::Primary)
            } else {
                Err(NodePortAddressesError::PrimaryWithCidrs)
            };
        }
        if items.is_empty() {
            return Ok(NodePortAddresses::All);
        }
        items
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| NodePortAddressesError::InvalidCidr((*s).to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(NodePortAddresses::Cidrs)
    }

    /// The CIDRs in force for `family_v4`'s family, given the Node: empty means every
    /// address of the family.
    fn cidrs(&self, node: &NodeAddresses, family_v4: bool) -> Vec<IpNet> {
        let of_family = |n: &IpNet| n.addr().is_ipv4() == family_v4;
        let cidrs: Vec<IpNet> = match self {
            NodePortAddresses::All => Vec::new(),
            NodePortAddresses::Primary => node
                .host_ips()
                .into_iter()
                .filter(|ip| !ip.is_loopback())
                .map(IpNet::from)
                .collect(),
            NodePortAddresses::Cidrs(c) => c.clone(),
        };
        let cidrs: Vec<IpNet> = cidrs.into_iter().filter(of_family).collect();
        if cidrs.iter().any(|n| n.prefix_len() == 0) {
            return Vec::new();
        }
        cidrs
    }

    /// Whether both families match every address (the health check servers then listen on
    /// the wildcard address, as kube-proxy's do).
    pub fn matches_all(&self, node: &NodeAddresses) -> bool {
        self.cidrs(node, true).is_empty() && self.cidrs(node, false).is_empty()
    }
}

/// The addresses node ports are served on: those of `netns` (the agent's network namespace)
/// that `flag` selects, given the Node's addresses; sorted, without duplicates.
pub fn select_node_port_addresses(
    flag: &NodePortAddresses,
    netns: &[IpAddr],
    node: &NodeAddresses,
) -> Vec<IpAddr> {
    let v4 = flag.cidrs(node, true);
    let v6 = flag.cidrs(node, false);
    let mut out: Vec<IpAddr> = netns
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| {
            let cidrs = if ip.is_ipv4() { &v4 } else { &v6 };
            if cidrs.is_empty() {
                !is_ipv6_link_local(ip)
            } else {
                cidrs.iter().any(|n| n.contains(ip))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The node's own address of each family, the source of the packets that load-balancer,
/// external IP and node-port traffic to another node's backend is translated to: the Node's
/// first InternalIP of the family, else the first node-port address of the family.
pub fn snat_addresses(
    node: &NodeAddresses,
    node_port_addresses: &[IpAddr],
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = |ip: &IpAddr| match ip {
        IpAddr::V4(a) if !a.is_loopback() => Some(*a),
        _ => None,
    };
    let v6 = |ip: &IpAddr| match ip {
        IpAddr::V6(a) if !a.is_loopback() => Some(*a),
        _ => None,
    };
    (
        node.internal
            .iter()
            .find_map(v4)
            .or_else(|| node_port_addresses.iter().find_map(v4)),
        node.internal
            .iter()
            .find_map(v6)
            .or_else(|| node_port_addresses.iter().find_map(v6)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    const NETNS: &[&str] = &[
        "127.0.0.1",
        "::1",
        "192.168.1.10",
        "10.0.0.5",
        "169.254.20.10",
        "fe80::1",
        "2001:db8::10",
        "fd00::5",
    ];

    fn node(internal: &[&str], external: &[&str]) -> NodeAddresses {
        NodeAddresses {
            internal: ips(internal),
            external: ips(external),
        }
    }

    #[test]
    fn parses_the_flag_as_kube_proxy_validates_it() {
        assert_eq!(
            NodePortAddresses::parse::<&str>(&[]),
            Ok(NodePortAddresses::All)
        );
        assert_eq!(NodePortAddresses::parse(&[" "]), Ok(NodePortAddresses::All));
        assert_eq!(
            NodePortAddresses::parse(&["primary"]),
            Ok(NodePortAddresses::Primary)
        );
        // Repeated or comma-separated; masked to the prefix.
        assert_eq!(
            NodePortAddresses::parse(&["192.168.1.7/24,fd00::/64", "10.0.0.0/8"]),
            Ok(NodePortAddresses::Cidrs(vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ]))
        );
        assert_eq!(
            NodePortAddresses::parse(&["primary", "10.0.0.0/8"]),
            Err(NodePortAddressesError::PrimaryWithCidrs)
        );
        assert_eq!(
            NodePortAddresses::parse(&["10.0.0.1"]),
            Err(NodePortAddressesError::InvalidCidr("10.0.0.1".into()))
        );
        assert_eq!(
            NodePortAddresses::parse(&["prim"]),
            Err(NodePortAddressesError::InvalidCidr("prim".into()))
        );
    }

    #[test]
    fn unset_selects_every_address_but_loopback_and_ipv6_link_local() {
        let sel = select_node_port_addresses(&NodePortAddresses::All, &ips(NETNS), &node(&[], &[]));
        assert_eq!(
            sel,
            ips(&[
                "10.0.0.5",
                "169.254.20.10",
                "192.168.1.10",
                "2001:db8::10",
                "fd00::5"
            ])
        );
        assert!(NodePortAddresses::All.matches_all(&node(&[], &[])));
    }

    #[test]
    fn cidrs_select_per_family_and_a_family_without_one_matches_all() {
        let flag = NodePortAddresses::parse(&["192.168.0.0/16"]).unwrap();
        let sel = select_node_port_addresses(&flag, &ips(NETNS), &node(&[], &[]));
        // IPv4 restricted, IPv6 unrestricted (kube-proxy adds ::/0 for a family without CIDRs).
        assert_eq!(sel, ips(&["192.168.1.10", "2001:db8::10", "fd00::5"]));
        assert!(!flag.matches_all(&node(&[], &[])));

        let flag = NodePortAddresses::parse(&["192.168.0.0/16", "fd00::/8"]).unwrap();
        let sel = select_node_port_addresses(&flag, &ips(NETNS), &node(&[], &[]));
        assert_eq!(sel, ips(&["192.168.1.10", "fd00::5"]));

        // A CIDR that contains link-local or loopback addresses: link-local yes, loopback no.
        let flag = NodePortAddresses::parse(&["fe80::/10", "127.0.0.0/8"]).unwrap();
        let sel = select_node_port_addresses(&flag, &ips(NETNS), &node(&[], &[]));
        assert_eq!(sel, ips(&["fe80::1"]));

        // A zero CIDR matches everything of its family.
        let flag = NodePortAddresses::parse(&["0.0.0.0/0", "10.0.0.0/8", "::/0"]).unwrap();
        assert!(flag.matches_all(&node(&[], &[])));
        assert_eq!(
            select_node_port_addresses(&flag, &ips(NETNS), &node(&[], &[])),
            select_node_port_addresses(&NodePortAddresses::All, &ips(NETNS), &node(&[], &[]))
        );
    }

    #[test]
    fn primary_is_the_nodes_host_ips() {
        let flag = NodePortAddresses::Primary;
        // InternalIPs first, then ExternalIPs; one per family.
        let n = node(&["192.168.1.10", "10.0.0.5"], &["2001:db8::10"]);
        assert_eq!(n.host_ips(), ips(&["192.168.1.10", "2001:db8::10"]));
        assert_eq!(
            select_node_port_addresses(&flag, &ips(NETNS), &n),
            ips(&["192.168.1.10", "2001:db8::10"])
        );
        // A single-stack Node: the other family matches all, as in kube-proxy.
        let n = node(&["192.168.1.10"], &[]);
        assert_eq!(
            select_node_port_addresses(&flag, &ips(NETNS), &n),
            ips(&["192.168.1.10", "2001:db8::10", "fd00::5"])
        );
        // The Node's IP that is not in the network namespace: nothing of that family.
        let n = node(&["192.168.9.9"], &["2001:db8::10"]);
        assert_eq!(
            select_node_port_addresses(&flag, &ips(NETNS), &n),
            ips(&["2001:db8::10"])
        );
        // Node unknown yet: everything.
        assert!(flag.matches_all(&NodeAddresses::default()));
    }

    #[test]
    fn node_addresses_of_a_node_object() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalIP", "address": "192.168.1.10"},
                {"type": "InternalIP", "address": "bogus"},
                {"type": "InternalIP", "address": "fd00::5"},
            ]}
        }))
        .unwrap();
        assert_eq!(
            NodeAddresses::of(&n),
            node(&["192.168.1.10", "fd00::5"], &["203.0.113.5"])
        );
    }

    #[test]
    fn snat_is_the_internal_ip_else_the_first_node_port_address() {
        let selected = ips(&["10.0.0.5", "192.168.1.10", "fd00::5"]);
        assert_eq!(
            snat_addresses(&node(&["192.168.1.10"], &["203.0.113.5"]), &selected),
            (
                Some("192.168.1.10".parse().unwrap()),
                Some("fd00::5".parse().unwrap())
            )
        );
        assert_eq!(
            snat_addresses(&node(&[], &[]), &selected),
            (
                Some("10.0.0.5".parse().unwrap()),
                Some("fd00::5".parse().unwrap())
            )
        );
        assert_eq!(snat_addresses(&node(&[], &[]), &[]), (None, None));
    }
}
