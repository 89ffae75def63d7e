//! Rule generators for the kube-proxy baselines of the benchmarks and the coexistence test:
//! services written the way kube-proxy's iptables mode (`pkg/proxy/iptables/proxier.go`) and
//! nftables mode (`pkg/proxy/nftables/proxier.go`) write them, for `iptables-restore` and
//! `nft -f`, and what `kube-proxy --cleanup` does to remove them. Written from the documented
//! rule layout, not copied; only what ClusterIP and NodePort services
//! (`externalTrafficPolicy: Cluster`) with ready endpoints need (no load balancers, external
//! IPs, session affinity or local-traffic policies).
//!
//! - [`iptables`]: tables `filter` and `nat` (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-SVC-*,
//!   KUBE-EXT-*, KUBE-SEP-*, KUBE-MARK-MASQ, KUBE-POSTROUTING), full and partial syncs, cleanup.
//! - [`nftables`]: `table ip kube-proxy` (service-ips and service-nodeports verdict maps,
//!   nodeport-ips, per-service, external and endpoint chains, masquerading), one-service
//!   updates, cleanup.

pub mod iptables;
pub mod nftables;

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

pub use iptables::{
    IPTABLES_FILTER_CHAINS, iptables_cleanup, iptables_full, iptables_partial, stale_sep_chains,
};
pub use nftables::{NFT_TABLE, nft_cleanup, nft_full, nft_update};

/// The pod network (kube-proxy's `--cluster-cidr`): traffic from outside it gets masqueraded.
pub const CLUSTER_CIDR: &str = "10.224.0.0/12";
/// The service network (the ServiceCIDR kube-proxy's nftables mode drops unallocated IPs of).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
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
    /// `nodePort` of a NodePort (or LoadBalancer) service with `externalTrafficPolicy:
    /// Cluster`; None for a ClusterIP service.
    pub node_port: Option<u16>,
    /// Ready endpoints `(pod IP, target port)`.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl SvcPort {
    /// A ClusterIP service port (no node port).
    pub fn new(
        name: &str,
        port_name: &str,
        vip: Ipv4Addr,
        port: u16,
        proto: Proto,
        endpoints: Vec<(Ipv4Addr, u16)>,
    ) -> Self {
        Self {
            name: name.into(),
            port_name: port_name.into(),
            vip,
            port,
            proto,
            node_port: None,
            endpoints,
        }
    }

    /// The same with a node port.
    pub fn with_node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }

    /// `default/name:port` as kube-proxy's comments spell it.
    fn spn(&self) -> String {
        format!("default/{}:{}", self.name, self.port_name)
    }

    /// The hash kube-proxy puts in the service's chain names (base32 of a SHA-256 of the
    /// service port name and protocol there; any stable hash does here).
    fn hash(&self) -> String {
        hash16(&(self.spn(), self.proto.name()))
    }

    /// `KUBE-SVC-` + 16 characters derived from the service port name and protocol.
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", self.hash())
    }

    /// `KUBE-EXT-` + the same 16 characters: where external traffic (node ports) goes.
    pub fn ext_chain(&self) -> String {
        format!("KUBE-EXT-{}", self.hash())
    }

    /// `KUBE-SEP-` + 16 characters derived from the service port and the endpoint.
    pub fn sep_chain(&self, ep: (Ipv4Addr, u16)) -> String {
        format!("KUBE-SEP-{}", hash16(&(self.spn(), self.proto.name(), ep)))
    }

    /// `default/name/proto/port`, the readable part of nftables chain names.
    fn nft_base(&self) -> String {
        format!(
            "default/{}/{}/{}",
            self.name,
            self.proto.name(),
            self.port_name
        )
    }

    /// nftables chain names: `service-<hash8>-default/name/proto/port`.
    pub fn nft_svc_chain(&self) -> String {
        format!("service-{}-{}", &self.hash()[..8], self.nft_base())
    }

    /// `external-<hash8>-default/name/proto/port`: where node-port traffic goes.
    pub fn nft_ext_chain(&self) -> String {
        format!("external-{}-{}", &self.hash()[..8], self.nft_base())
    }

    pub fn nft_ep_chain(&self, ep: (Ipv4Addr, u16)) -> String {
        format!(
            "endpoint-{}-{}__{}/{}",
            &hash16(&(self.spn(), self.proto.name(), ep))[..8],
            self.nft_base(),
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

/// kube-proxy's Service YAML protocol spelling.
pub fn proto_upper(p: Proto) -> &'static str {
    p.upper()
}

#[cfg(test)]
pub(crate) fn test_svc(i: u8, eps: &[u8]) -> SvcPort {
    SvcPort::new(
        &format!("s{i}"),
        "http",
        Ipv4Addr::new(10, 96, 0, i),
        80,
        Proto::Tcp,
        eps.iter()
            .map(|&e| (Ipv4Addr::new(10, 225, 0, e), 8080))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_stable_and_distinct() {
        let a = test_svc(1, &[1]);
        let b = test_svc(2, &[1]);
        assert_eq!(a.svc_chain(), test_svc(1, &[]).svc_chain());
        assert_ne!(a.svc_chain(), b.svc_chain());
        assert_eq!(a.svc_chain().len(), "KUBE-SVC-".len() + 16);
        assert_eq!(a.ext_chain()[9..], a.svc_chain()[9..]);
        assert!(
            a.svc_chain().len() <= 28,
            "iptables chain names are at most 28 chars"
        );
        assert!(a.nft_ext_chain().starts_with("external-"));
        assert!(a.nft_ext_chain().ends_with("-default/s1/tcp/http"));
    }
}
