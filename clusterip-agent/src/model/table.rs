//! The desired datapath table: what the model computes from Kubernetes objects and what the
//! syncer writes to the maps. Pure data, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use clusterip_common::{SVC_FLAG_OPEN, SVC_FLAG_WILDCARD};
use serde::Serialize;

use super::object::Key;

/// L4 protocol of a service port. SCTP ports are skipped by the model (not supported yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IPPROTO_* number as stored in the maps.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => clusterip_common::PROTO_TCP,
            Protocol::Udp => clusterip_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            clusterip_common::PROTO_TCP => Some(Protocol::Tcp),
            clusterip_common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A service frontend: one cluster IP, one service port, one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.vip, self.port),
            self.protocol
        )
    }
}

/// What happens to traffic for a frontend that has no usable backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoEndpoints {
    /// Reject (ECONNREFUSED / ICMP port unreachable / TCP RST), as kube-proxy's REJECT.
    #[default]
    Reject,
    /// Drop, as kube-proxy does for internalTrafficPolicy: Local with no local endpoints.
    Drop,
}

/// Which Service (and which of its ports) a frontend comes from; for logs, dump and explain.
/// The service is named by its [`Key`], the allocation the store and the objects share.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub key: Key,
    /// The ServicePort's name ("" when the port is unnamed).
    pub port_name: Box<str>,
}

impl ServiceRef {
    pub fn new(namespace: &str, name: &str, port_name: &str) -> Self {
        ServiceRef {
            key: Key::new(namespace, name),
            port_name: port_name.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        self.key.namespace()
    }

    pub fn name(&self) -> &str {
        self.key.name()
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}", self.key)
        } else {
            write!(f, "{}:{}", self.key, self.port_name)
        }
    }
}

impl Serialize for ServiceRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ServiceRef", 3)?;
        st.serialize_field("namespace", self.namespace())?;
        st.serialize_field("name", self.name())?;
        st.serialize_field("port_name", &*self.port_name)?;
        st.end()
    }
}

/// One backend of a frontend: a pod IP, the port on it, and whether it runs on this node.
/// 22 bytes, where a `SocketAddr` takes 32 (room for the IPv6 flow label and scope id that no
/// map holds): 100,000 backends cost 2.2 MB in the table instead of 3.2. Ordered as
/// `SocketAddr` orders (family, address, port) and displayed the same way (`10.0.0.1:80`,
/// `[fd00::1]:80`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node (its `nodeName` is this node's). Traffic from outside
    /// the node to a backend elsewhere is source-NATed to the node's address.
    pub local: bool,
}

impl Backend {
    /// A backend on another node (or on no node known).
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Backend {
            ip,
            port,
            local: false,
        }
    }

    /// A backend on this node.
    pub fn local(ip: IpAddr, port: u16) -> Self {
        Backend {
            ip,
            port,
            local: true,
        }
    }

    pub fn socket_addr(self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl From<SocketAddr> for Backend {
    fn from(a: SocketAddr) -> Self {
        Backend::new(a.ip(), a.port())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.socket_addr(), f)
    }
}

impl Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.socket_addr().serialize(s)
    }
}

/// Where a frontend's address comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    /// `spec.clusterIP(s)`.
    #[default]
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `spec.ports[].nodePort` on one of this node's addresses.
    NodePort,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl FrontendKind {
    /// Reached from outside the node too (all but cluster IPs): served by the external
    /// interfaces' program, and other ports of the address are not refused (it is often a
    /// real address of a node, or a load balancer's).
    pub fn external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "cluster IP",
            FrontendKind::ExternalIp => "external IP",
            FrontendKind::NodePort => "node port",
            FrontendKind::LoadBalancer => "load-balancer IP",
        })
    }
}

/// The desired state of one frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    pub service: ServiceRef,
    /// Backends (pod IP, target port), sorted and without duplicates; same family as the VIP.
    /// What traffic from this node gets, and traffic from outside too unless
    /// `external_local` says otherwise.
    pub backends: Box<[Backend]>,
    /// ClientIP session affinity timeout; None without affinity.
    pub affinity_timeout_s: Option<u32>,
    /// Only meaningful when `backends` is empty.
    pub no_endpoints: NoEndpoints,
    pub kind: FrontendKind,
    /// `externalTrafficPolicy: Local` (external kinds only): the backends traffic from outside
    /// the node gets, this node's endpoints (ready, else serving and terminating), sorted;
    /// without any such traffic is dropped. None: `Cluster`, outside traffic uses `backends`.
    pub external_local: Option<Box<[Backend]>>,
    /// `spec.loadBalancerSourceRanges` (load-balancer frontends only): the sources allowed
    /// from outside the node, sorted; empty: all.
    pub source_ranges: Box<[ipnet::IpNet]>,
}

impl ServiceEntry {
    /// [`FrontendKind::external`].
    pub fn external(&self) -> bool {
        self.kind.external()
    }
}

/// The whole desired table. BTreeMap: deterministic order for diffs, dumps and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredTable {
    pub services: BTreeMap<Frontend, ServiceEntry>,
}

impl DesiredTable {
    /// The wildcard entry each address with a frontend needs: `SVC_FLAG_WILDCARD`, plus
    /// `SVC_FLAG_OPEN` when the address is only an external IP (other ports on a cluster IP
    /// are refused; on an external IP they pass).
    pub fn wildcards(&self) -> BTreeMap<IpAddr, u16> {
        let mut out: BTreeMap<IpAddr, u16> = BTreeMap::new();
        for (fe, e) in &self.services {
            let flags = out
                .entry(fe.vip)
                .or_insert(SVC_FLAG_WILDCARD | SVC_FLAG_OPEN);
            if !e.external() {
                *flags &= !SVC_FLAG_OPEN;
            }
        }
        out
    }

    /// [`DesiredTable::wildcards`] for one address; None when it has no frontend.
    pub fn wildcard(&self, vip: IpAddr) -> Option<u16> {
        let from = Frontend {
            vip,
            port: 0,
            protocol: Protocol::Tcp,
        };
        let mut flags = None;
        for (_, e) in self
            .services
            .range(from..)
            .take_while(|(fe, _)| fe.vip == vip)
        {
            let f = flags.get_or_insert(SVC_FLAG_WILDCARD | SVC_FLAG_OPEN);
            if !e.external() {
                *f &= !SVC_FLAG_OPEN;
            }
        }
        flags
    }
}

/// Builders for tests of the modules that produce or consume tables.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn fe(vip: &str, port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            vip: vip.parse().unwrap(),
            port,
            protocol,
        }
    }

    /// A backend from `IP:PORT`, on this node when followed by `*`.
    pub fn backend(b: &str) -> Backend {
        match b.strip_suffix('*') {
            Some(addr) => {
                let a: SocketAddr = addr.parse().unwrap();
                Backend::local(a.ip(), a.port())
            }
            None => b.parse::<SocketAddr>().unwrap().into(),
        }
    }

    /// An entry without affinity that rejects when it has no backends; backends as
    /// [`backend`] reads them.
    pub fn entry(ns: &str, name: &str, port_name: &str, backends: &[&str]) -> ServiceEntry {
        ServiceEntry {
            service: ServiceRef::new(ns, name, port_name),
            backends: backends.iter().map(|b| backend(b)).collect(),
            affinity_timeout_s: None,
            no_endpoints: NoEndpoints::Reject,
            kind: FrontendKind::ClusterIp,
            external_local: None,
            source_ranges: Box::new([]),
        }
    }

    pub fn table(entries: Vec<(Frontend, ServiceEntry)>) -> DesiredTable {
        DesiredTable {
            services: entries.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_takes_20_bytes_and_orders_as_a_socket_address() {
        assert_eq!(std::mem::size_of::<Backend>(), 20);
        let addrs: Vec<SocketAddr> = ["10.0.0.2:80", "10.0.0.1:90", "10.0.0.1:80", "[fd00::1]:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut sorted = addrs.clone();
        sorted.sort();
        let mut backends: Vec<Backend> = addrs.into_iter().map(Backend::from).collect();
        backends.sort();
        assert_eq!(
            backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            sorted.iter().map(|a| a.to_string()).collect::<Vec<_>>()
        );
    }
}
