//! The desired datapath table: what the model computes from Kubernetes objects and what the
//! syncer writes to the maps. Pure data, no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use clusterip_common::{SVC_FLAG_OPEN, SVC_FLAG_WILDCARD};
use serde::Serialize;

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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    /// The ServicePort's name ("" when the port is unnamed).
    pub port_name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// The desired state of one frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    pub service: ServiceRef,
    /// Backends (pod IP, target port), sorted and without duplicates; same family as the VIP.
    pub backends: Vec<SocketAddr>,
    /// ClientIP session affinity timeout; None without affinity.
    pub affinity_timeout_s: Option<u32>,
    /// Only meaningful when `backends` is empty.
    pub no_endpoints: NoEndpoints,
    /// The frontend is an external IP (`spec.externalIPs`), not a cluster IP: other ports on
    /// it are not refused (it is often a real address of a node).
    pub external: bool,
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
            if !e.external {
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
            if !e.external {
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

    /// An entry without affinity that rejects when it has no backends.
    pub fn entry(ns: &str, name: &str, port_name: &str, backends: &[&str]) -> ServiceEntry {
        ServiceEntry {
            service: ServiceRef {
                namespace: ns.into(),
                name: name.into(),
                port_name: port_name.into(),
            },
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            affinity_timeout_s: None,
            no_endpoints: NoEndpoints::Reject,
            external: false,
        }
    }

    pub fn table(entries: Vec<(Frontend, ServiceEntry)>) -> DesiredTable {
        DesiredTable {
            services: entries.into_iter().collect(),
        }
    }
}
