//! Which endpoints a frontend uses: kube-proxy's slice merge, conditions, traffic policy and
//! topology (`endpointslicecache.go`, `topology.go`).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::object::Key;
use super::table::{Backend, NoEndpoints, ServiceEntry, ServiceRef};
use super::validate::*;
use super::*;

/// Which endpoints a frontend uses (kube-proxy's Cluster and Local endpoint sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// The topology rule kube-proxy applies to a frontend's Cluster endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Topology {
    /// No topology: every ready endpoint.
    Off,
    /// Only the ready endpoints whose `hints.forZones` name this node's zone.
    PreferSameZone,
    /// Only the ready endpoints whose `hints.forNodes` name this node.
    PreferSameNode,
}

/// Why an endpoint is not a backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotUsed {
    /// Not ready, and not (serving and terminating).
    NotReady,
    /// Terminating: not serving, or serving but not needed because ready endpoints exist.
    Terminating,
    /// internalTrafficPolicy Local and the endpoint is on another node (or on none).
    OtherNode,
    /// Topology: its hints do not name this node / zone while others' do.
    HintMismatch,
    /// Its slice has no port for this service port.
    PortNameNotFound,
    /// Its slice is of the other address family than the VIP.
    WrongFamily,
    /// The same address and port is already an endpoint, from this slice.
    DuplicateOf { slice: String },
}

impl fmt::Display for NotUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotUsed::NotReady => f.write_str("not ready"),
            NotUsed::Terminating => {
                f.write_str("terminating (not serving, or ready endpoints exist)")
            }
            NotUsed::OtherNode => f.write_str("not on this node (internalTrafficPolicy Local)"),
            NotUsed::HintMismatch => f.write_str("topology hints are for another zone/node"),
            NotUsed::PortNameNotFound => f.write_str("its slice has no port for this service port"),
            NotUsed::WrongFamily => f.write_str("other address family than the VIP"),
            NotUsed::DuplicateOf { slice } => write!(f, "duplicate of the copy in slice {slice}"),
        }
    }
}

/// One endpoint as seen by one frontend.
#[derive(Debug)]
pub(super) struct Record<'s, 'a> {
    pub(super) slice: &'s str,
    pub(super) ep: &'s ValidEndpoint<'a>,
    /// The backend port; None when the slice has none for this service port.
    pub(super) port: Option<u16>,
    pub(super) used: bool,
    pub(super) reason: Option<NotUsed>,
}

/// Every endpoint of a frontend, which ones are used and why.
#[derive(Debug)]
pub(super) struct Analysis<'s, 'a> {
    pub(super) records: Vec<Record<'s, 'a>>,
    pub(super) policy: TrafficPolicy,
    pub(super) topology: Topology,
    pub(super) topology_reason: String,
    /// The backends are serving-and-terminating endpoints (no ready one was usable).
    pub(super) fallback: bool,
    pub(super) backends: Vec<SocketAddr>,
    pub(super) no_endpoints: NoEndpoints,
}

impl Analysis<'_, '_> {
    /// The table entry; `key` names the service (shared with the object it was built from).
    pub(super) fn entry(
        &self,
        key: &Key,
        svc: &ValidService<'_>,
        port: &ValidPort<'_>,
    ) -> ServiceEntry {
        ServiceEntry {
            service: ServiceRef {
                key: key.clone(),
                port_name: port.name.into(),
            },
            backends: self.backends.iter().map(|&b| Backend::from(b)).collect(),
            affinity_timeout_s: svc.affinity_timeout_s,
            no_endpoints: self.no_endpoints,
            kind: FrontendKind::ClusterIp,
            external_local: None,
            source_ranges: Box::new([]),
        }
    }
}

/// kube-proxy's `topologyModeFromHints`, over a frontend's (deduplicated) endpoints.
pub(super) fn topology_mode<'e, 'a: 'e>(
    endpoints: impl Iterator<Item = &'e ValidEndpoint<'a>>,
    node: &NodeInfo,
) -> (Topology, String) {
    let ready: Vec<&ValidEndpoint<'_>> = endpoints.filter(|e| e.ready).collect();
    if ready.is_empty() {
        return (
            Topology::Off,
            "no ready endpoint: no hints to consider".into(),
        );
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    let for_node = !node.name.is_empty()
        && ready
            .iter()
            .any(|e| e.node_hints.contains(node.name.as_str()));
    if all_node_hints && for_node {
        return (
            Topology::PreferSameNode,
            format!(
                "every ready endpoint has a node hint and some are for node {:?}",
                node.name
            ),
        );
    }
    let node_note = if all_node_hints {
        format!("no node hint is for node {:?}; ", node.name)
    } else if ready.iter().any(|e| !e.node_hints.is_empty()) {
        "not every ready endpoint has a node hint; ".to_owned()
    } else {
        String::new()
    };
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    if !all_zone_hints {
        let what = if ready.iter().any(|e| !e.zone_hints.is_empty()) {
            "not every ready endpoint has a zone hint"
        } else {
            "no topology hints"
        };
        return (
            Topology::Off,
            format!("{node_note}{what}: all ready endpoints"),
        );
    }
    match node.zone.as_deref() {
        None => (
            Topology::Off,
            format!(
                "{node_note}zone hints present but this node's zone is unknown (no \
                 {LABEL_TOPOLOGY_ZONE} label): all ready endpoints"
            ),
        ),
        Some(zone) if ready.iter().any(|e| e.zone_hints.contains(zone)) => (
            Topology::PreferSameZone,
            format!(
                "{node_note}every ready endpoint has a zone hint and some are for zone {zone:?}"
            ),
        ),
        Some(zone) => (
            Topology::Off,
            format!("{node_note}no zone hint is for zone {zone:?}: all ready endpoints"),
        ),
    }
}

pub(super) fn available_for_topology(
    ep: &ValidEndpoint<'_>,
    topology: Topology,
    node: &NodeInfo,
) -> bool {
    match topology {
        Topology::Off => true,
        Topology::PreferSameNode => ep.node_hints.contains(node.name.as_str()),
        Topology::PreferSameZone => node
            .zone
            .as_deref()
            .is_some_and(|z| ep.zone_hints.contains(z)),
    }
}

/// Every endpoint of one frontend of an accepted service, and the choice among them
/// (kube-proxy's `endpointslicecache.go` merge and `CategorizeEndpoints`).
pub(super) fn analyze<'s, 'a>(
    svc: &ValidService<'_>,
    port: &ValidPort<'_>,
    kind: FrontendKind,
    vip: IpAddr,
    group: &'s [ValidSlice<'a>],
    node: &NodeInfo,
) -> Analysis<'s, 'a> {
    let matches =
        |p: &ValidSlicePort<'_>, name: &str| p.name == name && p.protocol == Some(port.protocol);
    let by_name = group
        .iter()
        .any(|s| s.ports.iter().any(|p| matches(p, port.name)));

    let mut records: Vec<Record<'s, 'a>> = Vec::new();
    let mut winner: HashMap<SocketAddr, usize> = HashMap::new();
    let excluded = |slice: &'s str, ep: &'s ValidEndpoint<'a>, reason: NotUsed| Record {
        slice,
        ep,
        port: None,
        used: false,
        reason: Some(reason),
    };
    for slice in group {
        if slice.ipv6 != vip.is_ipv6() {
            records.extend(
                slice
                    .endpoints
                    .iter()
                    .map(|ep| excluded(slice.name, ep, NotUsed::WrongFamily)),
            );
            continue;
        }
        let backend_port = if by_name {
            slice
                .ports
                .iter()
                .find(|p| matches(p, port.name))
                .and_then(|p| p.port)
        } else {
            match port.target {
                TargetPort::Number(n) => Some(n),
                TargetPort::Name(target) => slice
                    .ports
                    .iter()
                    .find(|p| matches(p, target))
                    .and_then(|p| p.port),
            }
        };
        let Some(backend_port) = backend_port else {
            records.extend(
                slice
                    .endpoints
                    .iter()
                    .map(|ep| excluded(slice.name, ep, NotUsed::PortNameNotFound)),
            );
            continue;
        };
        for ep in &slice.endpoints {
            let addr = SocketAddr::new(ep.ip, backend_port);
            let index = records.len();
            let mut reason = None;
            // kube-proxy: the first copy wins, unless a later one is local.
            match winner.get(&addr).copied() {
                None => {
                    winner.insert(addr, index);
                }
                Some(prev) if ep.is_local(node) => {
                    records[prev].reason = Some(NotUsed::DuplicateOf {
                        slice: slice.name.to_owned(),
                    });
                    winner.insert(addr, index);
                }
                Some(prev) => {
                    reason = Some(NotUsed::DuplicateOf {
                        slice: records[prev].slice.to_owned(),
                    });
                }
            }
            records.push(Record {
                slice: slice.name,
                ep,
                port: Some(backend_port),
                used: false,
                reason,
            });
        }
    }

    // The candidates: deduplicated endpoints with a backend port.
    let candidates: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].reason.is_none())
        .collect();
    let has_any = candidates
        .iter()
        .any(|&i| records[i].ep.ready || records[i].ep.serving_terminating());
    let policy = if kind == FrontendKind::ClusterIp && svc.local {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    };

    let (topology, topology_reason, fallback);
    match policy {
        TrafficPolicy::Cluster => {
            let (mode, why) = topology_mode(candidates.iter().map(|&i| records[i].ep), node);
            topology = mode;
            topology_reason = why;
            let mut any = false;
            for &i in &candidates {
                let ep = records[i].ep;
                if ep.ready && available_for_topology(ep, mode, node) {
                    records[i].used = true;
                    any = true;
                }
            }
            // No ready endpoint anywhere (topology would have been off otherwise): the
            // serving-and-terminating ones, topology ignored.
            let mut used_fallback = false;
            if !any {
                for &i in &candidates {
                    if records[i].ep.serving_terminating() {
                        records[i].used = true;
                        used_fallback = true;
                    }
                }
            }
            fallback = used_fallback;
            for &i in &candidates {
                let r = &mut records[i];
                if !r.used {
                    r.reason = Some(if r.ep.ready {
                        NotUsed::HintMismatch
                    } else if r.ep.terminating {
                        NotUsed::Terminating
                    } else {
                        NotUsed::NotReady
                    });
                }
            }
        }
        TrafficPolicy::Local => {
            topology = Topology::Off;
            topology_reason = "not used with internalTrafficPolicy Local".to_owned();
            let local_ready = candidates
                .iter()
                .any(|&i| records[i].ep.is_local(node) && records[i].ep.ready);
            let mut used_fallback = false;
            for &i in &candidates {
                let r = &mut records[i];
                if !r.ep.is_local(node) {
                    r.reason = Some(NotUsed::OtherNode);
                } else if local_ready && r.ep.ready {
                    r.used = true;
                } else if !local_ready && r.ep.serving_terminating() {
                    r.used = true;
                    used_fallback = true;
                } else if r.ep.terminating {
                    r.reason = Some(NotUsed::Terminating);
                } else {
                    r.reason = Some(NotUsed::NotReady);
                }
            }
            fallback = used_fallback;
        }
    }

    let mut backends: Vec<SocketAddr> = records
        .iter()
        .filter(|r| r.used)
        .filter_map(|r| r.port.map(|p| SocketAddr::new(r.ep.ip, p)))
        .collect();
    backends.sort();
    let no_endpoints = if policy == TrafficPolicy::Local && backends.is_empty() && has_any {
        NoEndpoints::Drop
    } else {
        NoEndpoints::Reject
    };
    Analysis {
        records,
        policy,
        topology,
        topology_reason,
        fallback,
        backends,
        no_endpoints,
    }
}
