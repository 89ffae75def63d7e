//! Why a frontend has the backends it has: every endpoint, used or not, and the rule that
//! applied. Pure, like the rest of the model; the `explain` command prints it.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use super::endpoints::*;
use super::table::{Frontend, NoEndpoints};
use super::validate::*;
use super::*;

/// Whether the explained frontend is in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendStatus {
    /// The service has this frontend (unless another service owns it first).
    Active,
    /// The service is not this proxy's (ExternalName, headless, no cluster IP, other proxy).
    ServiceIgnored,
    /// The service has an error and contributes nothing.
    ServiceRejected,
    /// The service is accepted but has no such frontend (IP, port or protocol).
    NoSuchFrontend,
}

/// One endpoint in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExplainedEndpoint {
    pub slice: String,
    pub address: IpAddr,
    /// The backend port; None when its slice has none for this service port.
    pub port: Option<u16>,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
    /// A backend of traffic from this node.
    pub used: bool,
    /// Why not, when not used.
    pub reason: Option<NotUsed>,
    /// External kinds: a backend of traffic from outside the node.
    pub external_used: Option<bool>,
    /// Why not, when not used from outside.
    pub external_reason: Option<NotUsed>,
}

/// Why a frontend has the backends it has (`clusterip-agent explain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub frontend: Frontend,
    /// `namespace/name`.
    pub service: String,
    pub status: FrontendStatus,
    /// The ServicePort's name, when the frontend exists.
    pub port_name: Option<String>,
    pub kind: Option<FrontendKind>,
    pub node: NodeInfo,
    pub policy: Option<TrafficPolicy>,
    pub topology: Option<Topology>,
    pub topology_reason: Option<String>,
    /// The backends are serving-and-terminating endpoints because no ready one was usable.
    pub terminating_fallback: bool,
    /// The rule that decided, in words.
    pub rule: String,
    /// `spec.trafficDistribution` (kube-proxy does not read it: it asks the EndpointSlice
    /// controller for the hints).
    pub traffic_distribution: Option<String>,
    /// The `service.kubernetes.io/topology-mode` (or legacy `topology-aware-hints`)
    /// annotation (same remark).
    pub topology_annotation: Option<String>,
    pub endpoints: Vec<ExplainedEndpoint>,
    /// What traffic from this node (pods, host processes) gets.
    pub backends: Vec<SocketAddr>,
    pub no_endpoints: Option<NoEndpoints>,
    /// External kinds (node port, load-balancer IP, external IP): the policy traffic from
    /// outside the node follows (`externalTrafficPolicy`).
    pub external_policy: Option<TrafficPolicy>,
    /// External kinds: what traffic from outside the node gets (empty with the Local policy
    /// and no endpoint here: dropped).
    pub external_backends: Option<Vec<SocketAddr>>,
    /// External kinds: the rule for traffic from outside the node, in words.
    pub external_rule: Option<String>,
    /// Load-balancer IPs: the sources allowed from outside the node (empty: all).
    pub source_ranges: Vec<ipnet::IpNet>,
    pub affinity_timeout_s: Option<u32>,
    /// Problems of the service and of its slices.
    pub problems: Vec<String>,
}

/// Explains one frontend of `svc`: every endpoint of its `slices` (those of other services are
/// skipped), used or not and why, and the rule that applied. Does not know about other
/// services (a duplicate frontend owned by another service is not detected here).
pub fn explain(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    frontend: &Frontend,
) -> Explanation {
    let (ns, name) = ns_name(&svc.metadata);
    let spec = svc.spec.as_ref();
    let annotations = svc.metadata.annotations.as_ref();
    let mut ex = Explanation {
        frontend: *frontend,
        service: format!("{ns}/{name}"),
        status: FrontendStatus::NoSuchFrontend,
        port_name: None,
        kind: None,
        node: node.clone(),
        policy: None,
        topology: None,
        topology_reason: None,
        terminating_fallback: false,
        rule: String::new(),
        traffic_distribution: spec.and_then(|s| s.traffic_distribution.clone()),
        topology_annotation: annotations.and_then(|a| {
            a.get(ANNOTATION_TOPOLOGY_MODE)
                .or_else(|| a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS))
                .cloned()
        }),
        endpoints: Vec::new(),
        backends: Vec::new(),
        no_endpoints: None,
        external_policy: None,
        external_backends: None,
        external_rule: None,
        source_ranges: Vec::new(),
        affinity_timeout_s: None,
        problems: Vec::new(),
    };
    let (valid, problems) = validate_service(svc);
    ex.problems = problems
        .iter()
        .map(|p| format!("{}: {p}", ObjectRef::of_service(svc)))
        .collect();
    for slice in slices {
        if slice_service(slice).is_some_and(|(n, s)| n == ns && s == name) {
            ex.problems.extend(
                slice_problems(slice)
                    .iter()
                    .map(|p| format!("{}: {p}; slice unused", ObjectRef::of_slice(slice))),
            );
        }
    }
    let Some(valid) = valid else {
        ex.status = FrontendStatus::ServiceIgnored;
        ex.rule = "the service is not for this proxy (ExternalName, headless, no cluster IP, or \
                   labelled for another proxy)"
            .into();
        return ex;
    };
    if problems.iter().any(|p| p.severity() == Severity::Error) {
        ex.status = FrontendStatus::ServiceRejected;
        ex.rule = "the service has an error and contributes nothing".into();
        return ex;
    }
    let Some((_, port, kind)) = valid
        .frontends(&node.node_port_addresses)
        .into_iter()
        .find(|(fe, _, _)| fe == frontend)
    else {
        ex.rule = "the service has no such frontend".into();
        return ex;
    };
    let group = typed_service_slices(&valid, slices);
    let a = analyze(&valid, port, kind, frontend.vip, &group, node);

    ex.status = FrontendStatus::Active;
    ex.port_name = Some(port.name.to_owned());
    ex.kind = Some(kind);
    ex.policy = Some(a.policy);
    ex.topology = Some(a.topology);
    ex.topology_reason = Some(a.topology_reason.clone());
    ex.terminating_fallback = a.fallback;
    ex.affinity_timeout_s = valid.affinity_timeout_s;
    ex.no_endpoints = Some(a.no_endpoints);
    ex.backends = a.backend_addrs();
    ex.rule = rule_text(&a, kind, node);
    let entry = a.entry(&Key::new(ns, name), &valid, port);
    ex.source_ranges = entry.source_ranges.to_vec();
    if let Some(policy) = a.external_policy {
        ex.external_policy = Some(policy);
        let outside = match &entry.external_local {
            Some(local) => local.iter().map(|b| b.socket_addr()).collect(),
            None => ex.backends.clone(),
        };
        ex.external_rule = Some(external_rule_text(&a, policy, &outside, &ex.source_ranges));
        ex.external_backends = Some(outside);
    }
    ex.endpoints = a
        .records
        .iter()
        .map(|r| ExplainedEndpoint {
            slice: r.slice.to_owned(),
            address: r.ep.ip,
            port: r.port,
            node: r.ep.node_name.map(str::to_owned),
            zone: r.ep.zone.map(str::to_owned),
            ready: r.ep.ready,
            serving: r.ep.serving,
            terminating: r.ep.terminating,
            zone_hints: r.ep.zone_hints.iter().map(|s| (*s).to_owned()).collect(),
            node_hints: r.ep.node_hints.iter().map(|s| (*s).to_owned()).collect(),
            used: r.used,
            reason: r.reason.clone(),
            external_used: a.external_policy.map(|_| r.external_used),
            external_reason: a.external_policy.and_then(|_| r.external_reason.clone()),
        })
        .collect();
    ex
}

pub(super) fn rule_text(a: &Analysis<'_, '_>, kind: FrontendKind, node: &NodeInfo) -> String {
    let mut rule = match (kind, a.policy) {
        (FrontendKind::ExternalIp | FrontendKind::NodePort | FrontendKind::LoadBalancer, _) => {
            format!(
                "{kind}: traffic from this node (pods and host) uses the Cluster endpoints \
                 whatever the traffic policies"
            )
        }
        (_, TrafficPolicy::Cluster) => "internalTrafficPolicy Cluster".to_owned(),
        (_, TrafficPolicy::Local) => format!("internalTrafficPolicy Local (node {:?})", node.name),
    };
    let choice = match (a.policy, a.fallback, a.topology) {
        (_, true, _) => "no ready endpoint: the serving and terminating ones".to_owned(),
        (TrafficPolicy::Cluster, false, Topology::Off) => "every ready endpoint".to_owned(),
        (TrafficPolicy::Cluster, false, Topology::PreferSameZone) => format!(
            "the ready endpoints hinted for zone {:?} (PreferSameZone)",
            node.zone.as_deref().unwrap_or("")
        ),
        (TrafficPolicy::Cluster, false, Topology::PreferSameNode) => format!(
            "the ready endpoints hinted for node {:?} (PreferSameNode)",
            node.name
        ),
        (TrafficPolicy::Local, false, _) => "the ready endpoints on this node".to_owned(),
    };
    rule.push_str(": ");
    rule.push_str(&choice);
    if a.backends.is_empty() {
        rule.push_str(match a.no_endpoints {
            NoEndpoints::Drop => {
                "; none on this node while other nodes have some: traffic is dropped"
            }
            NoEndpoints::Reject => "; no usable endpoint: connections are refused",
        });
    }
    rule
}

/// The rule for traffic from outside the node to an external frontend.
fn external_rule_text(
    a: &Analysis<'_, '_>,
    policy: TrafficPolicy,
    outside: &[SocketAddr],
    source_ranges: &[ipnet::IpNet],
) -> String {
    let mut rule = match policy {
        TrafficPolicy::Cluster => "externalTrafficPolicy Cluster: clients outside the node get \
                                   the same endpoints; their source is translated to the \
                                   node's address when the endpoint is on another node"
            .to_owned(),
        TrafficPolicy::Local => {
            let which = if a.external_fallback {
                "no ready endpoint here: this node's serving and terminating ones"
            } else {
                "this node's ready endpoints"
            };
            format!(
                "externalTrafficPolicy Local: clients outside the node get {which}, and keep \
                 their source address"
            )
        }
    };
    if outside.is_empty() {
        rule.push_str(match (policy, a.backends.is_empty()) {
            (TrafficPolicy::Local, false) => {
                "; none on this node while other nodes have some: traffic from outside is dropped"
            }
            _ => "; no usable endpoint: connections are refused",
        });
    }
    if !source_ranges.is_empty() {
        let ranges: Vec<String> = source_ranges.iter().map(ToString::to_string).collect();
        rule.push_str(&format!(
            "; loadBalancerSourceRanges: only from {} (others dropped)",
            ranges.join(", ")
        ));
    }
    rule
}
