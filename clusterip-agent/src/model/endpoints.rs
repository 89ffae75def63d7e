//! Which endpoints a frontend uses: kube-proxy's slice merge, conditions, traffic policy and
//! topology (`endpointslicecache.go`, `topology.go`).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::object::Key;
use super::table::{Backend, FrontendKind, NoEndpoints, ServiceEntry, ServiceRef};
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
    /// Traffic policy Local (internal, or external for traffic from outside the node) and the
    /// endpoint is on another node (or on none).
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
            NotUsed::OtherNode => f.write_str("not on this node (traffic policy Local)"),
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
    /// A backend of traffic from this node.
    pub(super) used: bool,
    pub(super) reason: Option<NotUsed>,
    /// A backend of traffic from outside the node (external kinds only; see
    /// [`Analysis::external_policy`]).
    pub(super) external_used: bool,
    pub(super) external_reason: Option<NotUsed>,
}

/// Every endpoint of a frontend, which ones are used and why.
#[derive(Debug)]
pub(super) struct Analysis<'s, 'a> {
    pub(super) kind: FrontendKind,
    pub(super) vip: IpAddr,
    pub(super) records: Vec<Record<'s, 'a>>,
    /// The endpoints traffic from this node gets: Local only for a cluster IP of an
    /// `internalTrafficPolicy: Local` service.
    pub(super) policy: TrafficPolicy,
    pub(super) topology: Topology,
    pub(super) topology_reason: String,
    /// The backends are serving-and-terminating endpoints (no ready one was usable).
    pub(super) fallback: bool,
    pub(super) backends: Vec<Backend>,
    pub(super) no_endpoints: NoEndpoints,
    /// External kinds: the endpoints traffic from outside the node gets (Local:
    /// `externalTrafficPolicy: Local`). None for cluster IPs.
    pub(super) external_policy: Option<TrafficPolicy>,
    /// With `external_policy` Local: the local endpoints are serving-and-terminating ones.
    pub(super) external_fallback: bool,
    /// With `external_policy` Local: the local endpoints, sorted.
    pub(super) external_local: Option<Vec<Backend>>,
}

impl Analysis<'_, '_> {
    /// The table entry; `key` names the service (shared with the object it was built from).
    pub(super) fn entry(
        &self,
        key: &Key,
        svc: &ValidService<'_>,
        port: &ValidPort<'_>,
    ) -> ServiceEntry {
        // kube-proxy firewalls only load-balancer IPs (node ports are "not subject to
        // loadBalancerSourceRanges, and we can't change that"), each with the ranges of its
        // own family.
        let source_ranges = if self.kind == FrontendKind::LoadBalancer {
            svc.source_ranges
                .iter()
                .filter(|n| n.addr().is_ipv4() == self.vip.is_ipv4())
                .copied()
                .collect()
        } else {
            Box::new([]) as Box<[ipnet::IpNet]>
        };
        ServiceEntry {
            service: ServiceRef {
                key: key.clone(),
                port_name: port.name.into(),
            },
            backends: self.backends.clone().into(),
            affinity_timeout_s: svc.affinity_timeout_s,
            no_endpoints: self.no_endpoints,
            kind: self.kind,
            external_local: self.external_local.clone().map(Into::into),
            source_ranges,
        }
    }

    /// The backends as socket addresses (for `explain`).
    pub(super) fn backend_addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.socket_addr()).collect()
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
        external_reason: Some(reason.clone()),
        reason: Some(reason),
        external_used: false,
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
                    let dup = NotUsed::DuplicateOf {
                        slice: slice.name.to_owned(),
                    };
                    records[prev].external_reason = Some(dup.clone());
                    records[prev].reason = Some(dup);
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
                external_reason: reason.clone(),
                reason,
                external_used: false,
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

    // kube-proxy's CategorizeEndpoints computes both sets; which one a frontend uses is the
    // traffic policy's business.
    // Cluster: the ready endpoints (topology applied), else every serving-and-terminating one
    // (topology ignored: it would have been off had there been ready ones).
    let (mode, why) = topology_mode(candidates.iter().map(|&i| records[i].ep), node);
    let mut in_cluster = vec![false; records.len()];
    for &i in &candidates {
        let ep = records[i].ep;
        in_cluster[i] = ep.ready && available_for_topology(ep, mode, node);
    }
    let cluster_fallback = !in_cluster.iter().any(|&u| u);
    if cluster_fallback {
        for &i in &candidates {
            in_cluster[i] = records[i].ep.serving_terminating();
        }
    }
    let cluster_fallback = cluster_fallback && in_cluster.iter().any(|&u| u);
    let cluster_reason = |ep: &ValidEndpoint<'_>| {
        if ep.ready {
            NotUsed::HintMismatch
        } else if ep.terminating {
            NotUsed::Terminating
        } else {
            NotUsed::NotReady
        }
    };
    // Local: this node's ready endpoints, else its serving-and-terminating ones; no topology.
    let local_ready = candidates
        .iter()
        .any(|&i| records[i].ep.is_local(node) && records[i].ep.ready);
    let mut in_local = vec![false; records.len()];
    for &i in &candidates {
        let ep = records[i].ep;
        in_local[i] = ep.is_local(node)
            && if local_ready {
                ep.ready
            } else {
                ep.serving_terminating()
            };
    }
    let local_fallback = !local_ready && in_local.iter().any(|&u| u);
    let local_reason = |ep: &ValidEndpoint<'_>| {
        if !ep.is_local(node) {
            NotUsed::OtherNode
        } else if ep.terminating {
            NotUsed::Terminating
        } else {
            NotUsed::NotReady
        }
    };

    // Traffic from this node: a cluster IP follows internalTrafficPolicy; an external
    // frontend the Cluster endpoints whatever the policies (kube-proxy's short-circuit of
    // pod and host traffic: "subject to neither form of traffic policy").
    let policy = if kind == FrontendKind::ClusterIp && svc.local {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    };
    // Traffic from outside the node: externalTrafficPolicy.
    let external_policy = kind.external().then_some(if svc.external_local {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    });
    let pick = |p: TrafficPolicy, r: &Record<'_, '_>, i: usize| match p {
        TrafficPolicy::Cluster if in_cluster[i] => (true, None),
        TrafficPolicy::Cluster => (false, Some(cluster_reason(r.ep))),
        TrafficPolicy::Local if in_local[i] => (true, None),
        TrafficPolicy::Local => (false, Some(local_reason(r.ep))),
    };
    for &i in &candidates {
        let (used, reason) = pick(policy, &records[i], i);
        let (external_used, external_reason) =
            pick(external_policy.unwrap_or(policy), &records[i], i);
        let r = &mut records[i];
        (r.used, r.reason) = (used, reason);
        (r.external_used, r.external_reason) = (external_used, external_reason);
    }
    let (topology, topology_reason, fallback) = match policy {
        TrafficPolicy::Cluster => (mode, why, cluster_fallback),
        TrafficPolicy::Local => (
            Topology::Off,
            "not used with internalTrafficPolicy Local".to_owned(),
            local_fallback,
        ),
    };
    let set = |chosen: &dyn Fn(&Record<'_, '_>) -> bool| -> Vec<Backend> {
        let mut out: Vec<Backend> = records
            .iter()
            .filter(|r| chosen(r))
            .filter_map(|r| {
                r.port.map(|p| Backend {
                    ip: r.ep.ip,
                    port: p,
                    local: r.ep.is_local(node),
                })
            })
            .collect();
        out.sort();
        out
    };
    let backends = set(&|r| r.used);
    let external_local =
        (external_policy == Some(TrafficPolicy::Local)).then(|| set(&|r| r.external_used));
    let no_endpoints = if policy == TrafficPolicy::Local && backends.is_empty() && has_any {
        NoEndpoints::Drop
    } else {
        NoEndpoints::Reject
    };
    Analysis {
        kind,
        vip,
        records,
        policy,
        topology,
        topology_reason,
        fallback,
        backends,
        no_endpoints,
        external_policy,
        external_fallback: external_policy == Some(TrafficPolicy::Local) && local_fallback,
        external_local,
    }
}
