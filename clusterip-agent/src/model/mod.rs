//! The model: Kubernetes Services and EndpointSlices in, the [`DesiredTable`] out.
//!
//! Pure: no I/O, no clock, no logging. The caller (the manifest source, the object store) logs
//! the [`Problem`]s. The semantics are kube-proxy's (kubernetes `pkg/proxy`:
//! `servicechangetracker.go`/`serviceport.go`, `endpointslicecache.go`, `topology.go` and the
//! iptables proxier's REJECT/DROP choice), as of Kubernetes 1.37:
//!
//! * **Frontends** ([`FrontendKind`]): one per (cluster IP, ServicePort), per (external IP,
//!   ServicePort), per (load-balancer IP, ServicePort) and per (node-port address, ServicePort
//!   with a `nodePort`). The cluster IPs are `spec.clusterIPs` (both families; falls back to
//!   `spec.clusterIP`). The other addresses count only in the families the service has a
//!   cluster IP of (kube-proxy's proxier of a family skips a service without a cluster IP of
//!   its family): the external IPs are `spec.externalIPs` (an invalid one is a warning and is
//!   skipped); the load-balancer IPs `status.loadBalancer.ingress[].ip` of VIP-mode ingresses
//!   (no `ipMode`, or `VIP`; `Proxy` is left to the load balancer, KEP-1860; hostname-only
//!   ingresses are ignored); the node-port addresses are [`NodeInfo::node_port_addresses`]
//!   (`--nodeport-addresses`, [`select_node_port_addresses`]). Like kube-proxy, node ports and
//!   load-balancer IPs follow the fields, not `spec.type` (the API server clears node ports
//!   when a service becomes ClusterIP, and allocates none with
//!   `allocateLoadBalancerNodePorts: false` unless they are set explicitly). A frontend that a
//!   service would get twice (an external IP that is a node address, port = node port) is
//!   kept the first time. Protocols TCP and UDP (absent = TCP); SCTP ports are skipped with a
//!   warning.
//! * **Ignored silently**: type ExternalName, headless services (`clusterIP: None`), services
//!   without a cluster IP, and services labelled `service.kubernetes.io/service-proxy-name`
//!   (they belong to another proxy) or `service.kubernetes.io/headless` (kube-proxy's label
//!   selector excludes both). EndpointSlices carrying one of these two labels are ignored too
//!   (kube-proxy applies the same selector to them).
//! * **Endpoints**: the EndpointSlices labelled `kubernetes.io/service-name: <service>` in the
//!   service's namespace, IPv4 slices for IPv4 VIPs and IPv6 slices for IPv6 VIPs (FQDN slices
//!   are ignored). Several slices are merged; only `addresses[0]` of an endpoint is used; an
//!   endpoint that appears in several slices (same IP and port) is used once, preferring a
//!   copy on this node (as kube-proxy does). See [`build_table`] for how the backend port is
//!   found.
//! * **Conditions** (nil ready = true, nil serving = true, nil terminating = false, as the API
//!   documents and kube-proxy implements). The *Cluster* endpoints are the ready ones (subject
//!   to topology, below); if there is none, every endpoint that is serving *and* terminating
//!   (topology ignored). The *Local* endpoints are computed separately over this node's
//!   endpoints only: the ready local ones, else the serving-and-terminating local ones.
//! * **Topology** (`CategorizeEndpoints`/`topologyModeFromHints`): kube-proxy looks only at the
//!   EndpointSlice hints, never at the Service's `trafficDistribution` or
//!   `service.kubernetes.io/topology-mode` (legacy `topology-aware-hints`): those tell the
//!   EndpointSlice controller to write the hints (PreferClose / PreferSameZone / the annotation
//!   `Auto`: `hints.forZones`; PreferSameNode: `hints.forNodes` *and* `hints.forZones`). Over the
//!   ready endpoints of a frontend: if every one has a node hint and at least one is hinted for
//!   this node, only the ready endpoints hinted for this node are used (PreferSameNode); else,
//!   if every one has a zone hint and at least one is hinted for this node's zone (which must be
//!   known), only those hinted for this zone (PreferSameZone); else all ready endpoints.
//!   Topology applies to the Cluster endpoints only.
//! * **Traffic policy**: a cluster IP frontend of an `internalTrafficPolicy: Local` service uses
//!   the Local endpoints. No local endpoint while the service has usable endpoints elsewhere →
//!   no backends and [`NoEndpoints::Drop`]; no usable endpoint anywhere →
//!   [`NoEndpoints::Reject`] (the iptables proxier's "has no endpoints" REJECT wins over its
//!   "has no local endpoints" DROP). External frontends (external, load-balancer and node-port
//!   addresses) use the Cluster endpoints for traffic from this node, its pods and its host
//!   (`ServiceEntry::backends`): kube-proxy sends locally originated traffic to them to the
//!   Cluster endpoints whatever the traffic policies ("subject to neither form of traffic
//!   policy", the short-circuit). Traffic from outside the node follows
//!   `externalTrafficPolicy` where kube-proxy's `ExternalPolicyLocal` applies it (type NodePort
//!   or LoadBalancer, or ClusterIP with external IPs): Local puts the Local endpoints in
//!   `ServiceEntry::external_local` (none: such traffic is dropped while the service has
//!   endpoints elsewhere); Cluster leaves it None (the same backends, source NAT for remote
//!   ones in the datapath).
//! * **Source ranges**: `spec.loadBalancerSourceRanges` (trimmed, masked to their prefix) on
//!   load-balancer frontends only, each with the ranges of its family (kube-proxy: "nodeports
//!   are not subject to loadBalancerSourceRanges"). An invalid range rejects the service
//!   (kube-proxy would skip it, which can leave no range, i.e. every source allowed).
//! * **Health checks** ([`HealthCheck`]): a LoadBalancer service with
//!   `externalTrafficPolicy: Local` and a `spec.healthCheckNodePort` reports the distinct
//!   addresses of its ready endpoints on this node (`LocalReadyEndpoints`).
//! * **Session affinity** ClientIP: `sessionAffinityConfig.clientIP.timeoutSeconds`, default
//!   10800 s (valid: 1..=86400).
//! * **Validation**: an invalid object yields a [`Problem`] and contributes nothing; everything
//!   else is unaffected. Problems of the new fields name them (`spec.ports[1].nodePort`,
//!   `spec.loadBalancerSourceRanges[0]`, `status.loadBalancer.ingress[2].ip`,
//!   `spec.healthCheckNodePort`). Two services claiming the same frontend, or the same node
//!   port (port and protocol, whatever the node's addresses): the one that comes first in
//!   the input keeps it, the later one is rejected as a whole.
//! * Everything is a pure function of the current objects: a changed Service (affinity, type,
//!   labels, ports, IP families) is simply rebuilt ([`build_service`]).
//! * Not implemented (no effect): SCTP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

mod endpoints;
mod explain;
#[cfg(test)]
mod external_tests;
mod nodeport;
mod object;
mod problem;
pub mod table;
#[cfg(test)]
mod tests;
mod validate;

pub use endpoints::{NotUsed, Topology, TrafficPolicy};
pub use explain::{ExplainedEndpoint, Explanation, FrontendStatus, explain};
pub use nodeport::{
    NodeAddresses, NodePortAddresses, NodePortAddressesError, select_node_port_addresses,
    snat_addresses,
};
pub use object::{Key, ServiceObject, SliceObject};
pub use problem::{ObjectKind, ObjectRef, Problem, ProblemKind, Severity};
pub use table::FrontendKind;

use endpoints::analyze;
use table::{DesiredTable, Frontend, Protocol, ServiceEntry};
use validate::{ValidService, ValidSlice, validate_slice};

/// Label joining an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Services (and slices) with this label (any value) are handled by another proxy and ignored.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Services (and slices) with this label (any value) are headless and ignored, as kube-proxy's
/// label selector does.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The Node label naming its zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Service annotation asking the EndpointSlice controller for zone hints (informational here).
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// Deprecated name of [`ANNOTATION_TOPOLOGY_MODE`] (informational here).
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// ClientIP affinity timeout when the service does not set one (kube-proxy's default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// Largest valid ClientIP affinity timeout (API validation).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86400;
/// Namespace of an object without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// This node, as the model needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct NodeInfo {
    /// Selects the endpoints of `internalTrafficPolicy: Local` services and `forNodes` hints.
    pub name: String,
    /// The node's `topology.kubernetes.io/zone` label; selects `forZones` hints.
    pub zone: Option<String>,
    /// The addresses node ports are served on, both families, sorted, without duplicates:
    /// selected by the agent ([`select_node_port_addresses`]).
    pub node_port_addresses: Vec<IpAddr>,
}

impl NodeInfo {
    pub fn new(name: impl Into<String>, zone: Option<String>) -> Self {
        NodeInfo {
            name: name.into(),
            zone: zone.filter(|z| !z.is_empty()),
            node_port_addresses: Vec::new(),
        }
    }

    /// With these node-port addresses (sorted and deduplicated here).
    pub fn with_node_port_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut addresses: Vec<IpAddr> = addresses.into_iter().collect();
        addresses.sort();
        addresses.dedup();
        self.node_port_addresses = addresses;
        self
    }
}

/// What a service's health check node port reports on this node (kube-proxy's
/// `HealthCheckNodePorts` and `LocalReadyEndpoints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// The distinct addresses of the service's ready endpoints on this node, whatever their
    /// ports; serving-but-terminating ones do not count (a node left with only those fails
    /// the check and is drained). Counted in the service's primary family (its first cluster
    /// IP's): kube-proxy counts per family, and a dual-stack pod is one endpoint.
    pub local_endpoints: usize,
}

/// The model's result: the table, the health checks, and what was wrong with the input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOutput {
    pub table: DesiredTable,
    pub problems: Vec<Problem>,
    /// The health check of each accepted service that has one ([`ServiceBuild::health_check`]).
    pub health_checks: BTreeMap<Key, HealthCheck>,
}

/// What one Service contributes, on its own (see [`build_service`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceBuild {
    /// Its frontends, in cluster IP order then external IP order, each in port order. Empty
    /// when the service is ignored or rejected.
    pub entries: Vec<(Frontend, ServiceEntry)>,
    /// What is wrong with it (warnings and errors). With an [`Severity::Error`] the service is
    /// rejected and `entries` is empty.
    pub problems: Vec<ProblemKind>,
    /// Not for this proxy: ExternalName, headless (`clusterIP: None` or the
    /// `service.kubernetes.io/headless` label), no cluster IP, or another proxy's
    /// (`service.kubernetes.io/service-proxy-name`).
    pub ignored: bool,
    /// A LoadBalancer service with `externalTrafficPolicy: Local` and a
    /// `spec.healthCheckNodePort`: what its health check server answers on this node.
    pub health_check: Option<HealthCheck>,
}

impl ServiceBuild {
    /// True if the service contributes its frontends (not ignored, no error).
    pub fn accepted(&self) -> bool {
        !self.ignored
            && !self
                .problems
                .iter()
                .any(|p| p.severity() == Severity::Error)
    }
}

/// The (namespace, service name) an EndpointSlice belongs to, from its
/// `kubernetes.io/service-name` label. None when unlabelled, or when the slice is not this
/// proxy's (labelled `service.kubernetes.io/service-proxy-name` or
/// `service.kubernetes.io/headless`, which kube-proxy's selector excludes).
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let labels = slice.metadata.labels.as_ref()?;
    if not_ours(&slice.metadata) {
        return None;
    }
    let service = labels.get(LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
    let (ns, _) = ns_name(&slice.metadata);
    Some((ns.to_owned(), service.clone()))
}

/// What is wrong with an EndpointSlice on its own (a slice with an error contributes nothing).
/// Empty for a slice that is not this proxy's. Does not check that its Service exists.
pub fn slice_problems(slice: &EndpointSlice) -> Vec<ProblemKind> {
    if not_ours(&slice.metadata) {
        return Vec::new();
    }
    match validate_slice(slice) {
        Ok(_) => Vec::new(),
        Err(kinds) => kinds,
    }
}

/// Computes what one Service contributes: its frontends with their backends from `slices`, and
/// its problems. `slices` should be the service's (see [`slice_service`]); others, invalid ones
/// and ones that are not this proxy's are skipped (their problems are [`slice_problems`]'s).
/// No check against other services (duplicate frontends: [`build_table`] or the caller).
pub fn build_service(svc: &Service, slices: &[&EndpointSlice], node: &NodeInfo) -> ServiceBuild {
    let slices: Vec<SliceObject> = slices.iter().map(|s| SliceObject::new(s)).collect();
    let refs: Vec<&SliceObject> = slices.iter().collect();
    build(&ServiceObject::new(svc), &refs, node)
}

/// [`build_service`] of checked objects: what the store and the manifest source call.
pub fn build(svc: &ServiceObject, slices: &[&SliceObject], node: &NodeInfo) -> ServiceBuild {
    let problems = svc.problems().to_vec();
    let Some(valid) = svc.valid() else {
        return ServiceBuild {
            entries: Vec::new(),
            problems,
            ignored: svc.ignored(),
            health_check: None,
        };
    };
    let group = service_slices(&valid, slices.iter().filter_map(|s| s.valid()));
    let entries = valid
        .frontends(&node.node_port_addresses)
        .into_iter()
        .map(|(frontend, port, kind)| {
            let analysis = analyze(&valid, port, kind, frontend.vip, &group, node);
            (frontend, analysis.entry(svc.key(), &valid, port))
        })
        .collect();
    let health_check = valid.health_check_node_port.map(|port| HealthCheck {
        port,
        local_endpoints: local_ready_endpoints(&valid, &group, node),
    });
    ServiceBuild {
        entries,
        problems,
        ignored: false,
        health_check,
    }
}

/// kube-proxy's `LocalReadyEndpoints` for one service: the distinct addresses of the ready
/// endpoints on this node in the service's slices of its primary family.
fn local_ready_endpoints(
    svc: &ValidService<'_>,
    group: &[ValidSlice<'_>],
    node: &NodeInfo,
) -> usize {
    let ipv6 = svc.vips.first().is_some_and(IpAddr::is_ipv6);
    group
        .iter()
        .filter(|s| s.ipv6 == ipv6)
        .flat_map(|s| s.endpoints.iter())
        .filter(|ep| ep.ready && ep.is_local(node))
        .map(|ep| ep.ip)
        .collect::<HashSet<IpAddr>>()
        .len()
}

/// The valid slices of `svc` among `slices`, sorted by name (a deterministic merge order
/// whatever the input order; stable: equal names keep their order).
fn service_slices<'a>(
    svc: &ValidService<'_>,
    slices: impl Iterator<Item = ValidSlice<'a>>,
) -> Vec<ValidSlice<'a>> {
    let mut group: Vec<ValidSlice<'a>> = slices
        .filter(|s| s.namespace == svc.namespace && s.service == svc.name)
        .collect();
    group.sort_by(|a, b| a.name.cmp(b.name));
    group
}

/// The valid slices of `svc` among typed `slices` (for [`explain`]).
fn typed_service_slices<'a>(
    svc: &ValidService<'_>,
    slices: &[&'a EndpointSlice],
) -> Vec<ValidSlice<'a>> {
    let valid = slices
        .iter()
        .filter(|s| !not_ours(&s.metadata))
        .filter_map(|s| validate_slice(s).ok().flatten());
    service_slices(svc, valid)
}

/// Computes the desired table for this node from all Services and EndpointSlices.
///
/// `services` order matters only for duplicate frontends: the service that comes first keeps a
/// frontend, later ones claiming it are rejected (callers put established services first).
/// `node` selects the endpoints of `internalTrafficPolicy: Local` services and the topology
/// hints.
///
/// # Backend port
/// As kube-proxy: for a ServicePort, the backend port in a slice is the port of the slice's
/// EndpointPort with the same name (unnamed: `""` and absent match each other) and the same
/// protocol; the EndpointSlice controller has already resolved the targetPort into it.
///
/// Fallback, for hand-written slices: when *no* slice of the service (of either family) has
/// a port with that name and protocol, the ServicePort's `targetPort` decides: a name selects
/// the slice port with that name (and protocol) in each slice; a number (also a string of
/// digits), or no targetPort (= the service port), is used as the backend port for every
/// endpoint of every slice, even of a slice that lists no ports.
///
/// A slice port with no port number contributes no backends.
pub fn build_table(services: &[Service], slices: &[EndpointSlice], node: &NodeInfo) -> ModelOutput {
    let services: Vec<ServiceObject> = services.iter().map(ServiceObject::new).collect();
    let slices: Vec<SliceObject> = slices.iter().map(SliceObject::new).collect();
    build_table_of(services.iter(), slices.iter(), node)
}

/// [`build_table`] of checked objects.
pub fn build_table_of<'a>(
    services: impl IntoIterator<Item = &'a ServiceObject>,
    slices: impl IntoIterator<Item = &'a SliceObject>,
    node: &NodeInfo,
) -> ModelOutput {
    let services: Vec<&ServiceObject> = services.into_iter().collect();
    let mut problems = Vec::new();

    // Every named service, accepted or not: a slice for one of them is not "unknown".
    let known_services: HashSet<&Key> = services
        .iter()
        .map(|s| s.key())
        .filter(|k| !k.name().is_empty())
        .collect();

    // Slices: group the valid ones by service.
    let mut by_service: HashMap<&Key, Vec<&SliceObject>> = HashMap::new();
    let mut slice_problem_list = Vec::new();
    for slice in slices {
        if !slice.problems().is_empty() {
            let object = slice.object_ref();
            slice_problem_list.extend(slice.problems().iter().map(|kind| Problem {
                object: object.clone(),
                kind: kind.clone(),
            }));
            continue;
        }
        let Some(owner) = slice.service() else {
            continue;
        };
        if slice.is_fqdn() {
            continue;
        }
        if !known_services.contains(owner) {
            slice_problem_list.push(Problem {
                object: slice.object_ref(),
                kind: ProblemKind::UnknownService {
                    namespace: owner.namespace().to_owned(),
                    name: owner.name().to_owned(),
                },
            });
        }
        by_service.entry(owner).or_default().push(slice);
    }

    // Services: build each, then claim frontends and node ports in input order.
    let mut claimed: HashMap<Frontend, &Key> = HashMap::new();
    let mut claimed_node_ports: HashMap<(u16, Protocol), &Key> = HashMap::new();
    let mut table = DesiredTable::default();
    let mut health_checks = BTreeMap::new();
    for svc in services {
        let object = svc.object_ref();
        let group = by_service.get(svc.key()).map(Vec::as_slice).unwrap_or(&[]);
        let built = build(svc, group, node);
        let accepted = built.accepted();
        problems.extend(built.problems.into_iter().map(|kind| Problem {
            object: object.clone(),
            kind,
        }));
        if !accepted {
            continue;
        }
        let conflicts = claim_conflicts(
            svc,
            &built.entries,
            |np| claimed_node_ports.get(&np).map(|k| k.to_string()),
            |fe| claimed.get(fe).map(|k| k.to_string()),
        );
        if !conflicts.is_empty() {
            problems.extend(conflicts.into_iter().map(|kind| Problem {
                object: object.clone(),
                kind,
            }));
            continue;
        }
        for (_, node_port, protocol) in svc.node_ports() {
            claimed_node_ports.insert((node_port, protocol), svc.key());
        }
        for (fe, entry) in built.entries {
            claimed.insert(fe, svc.key());
            table.services.insert(fe, entry);
        }
        if let Some(hc) = built.health_check {
            health_checks.insert(svc.key().clone(), hc);
        }
    }
    problems.extend(slice_problem_list);

    ModelOutput {
        table,
        problems,
        health_checks,
    }
}

/// What of `svc` (built as `entries`) another service holds: its node ports (`node_port_owner`
/// names the holder of one, if any) and its frontends (`frontend_owner`), as problems naming
/// the field. A node port already reported is not reported again for each node address.
pub fn claim_conflicts(
    svc: &ServiceObject,
    entries: &[(Frontend, ServiceEntry)],
    node_port_owner: impl Fn((u16, Protocol)) -> Option<String>,
    frontend_owner: impl Fn(&Frontend) -> Option<String>,
) -> Vec<ProblemKind> {
    let mut taken: HashSet<(u16, Protocol)> = HashSet::new();
    let mut out = Vec::new();
    for (index, node_port, protocol) in svc.node_ports() {
        if let Some(owner) = node_port_owner((node_port, protocol)) {
            taken.insert((node_port, protocol));
            out.push(ProblemKind::DuplicateNodePort {
                field: format!("spec.ports[{index}].nodePort"),
                node_port,
                protocol,
                owner: format!("Service {owner}"),
            });
        }
    }
    for (fe, entry) in entries {
        if entry.kind == FrontendKind::NodePort && taken.contains(&(fe.port, fe.protocol)) {
            continue;
        }
        if let Some(owner) = frontend_owner(fe) {
            out.push(ProblemKind::DuplicateFrontend {
                frontend: *fe,
                owner,
            });
        }
    }
    out
}

/// The metadata namespace (default "default") and name (default "").
pub(super) fn ns_name(meta: &ObjectMeta) -> (&str, &str) {
    let ns = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    (ns, meta.name.as_deref().unwrap_or(""))
}

/// Labelled for another proxy, or headless: excluded by kube-proxy's label selector.
pub(super) fn not_ours(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}
