//! The model: Kubernetes Services and EndpointSlices in, the [`DesiredTable`] out.
//!
//! Pure: no I/O, no clock, no logging. The caller (the manifest source, the object store) logs
//! the [`Problem`]s. The semantics are kube-proxy's (kubernetes `pkg/proxy`:
//! `servicechangetracker.go`/`serviceport.go`, `endpointslicecache.go`, `topology.go` and the
//! iptables proxier's REJECT/DROP choice), as of Kubernetes 1.37:
//!
//! * **Frontends**: one per (cluster IP, ServicePort) and one per (external IP, ServicePort).
//!   The cluster IPs are `spec.clusterIPs` (both families; falls back to `spec.clusterIP`); the
//!   external IPs are `spec.externalIPs` (any number, either family; an invalid one is a
//!   warning and is skipped, the rest of the service is unaffected). Types ClusterIP, NodePort
//!   and LoadBalancer all get these frontends (node ports and load balancer IPs are not
//!   handled here). Protocols TCP and UDP (absent = TCP); SCTP ports are skipped with a
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
//!   "has no local endpoints" DROP). External IP frontends always use the Cluster endpoints:
//!   the agent only sees traffic that originates on this node, and kube-proxy sends locally
//!   originated traffic to an external IP to the Cluster endpoints whatever the traffic
//!   policies ("subject to neither form of traffic policy").
//! * **Session affinity** ClientIP: `sessionAffinityConfig.clientIP.timeoutSeconds`, default
//!   10800 s (valid: 1..=86400).
//! * **Validation**: an invalid object yields a [`Problem`] and contributes nothing; everything
//!   else is unaffected. Two services claiming the same frontend: the one that comes first in
//!   the input keeps it, the later one is rejected as a whole.
//! * Everything is a pure function of the current objects: a changed Service (affinity, type,
//!   labels, ports, IP families) is simply rebuilt ([`build_service`]).
//! * Not implemented (no effect): node ports, load balancer IPs, externalTrafficPolicy (no
//!   effect on locally originated traffic, see above), SCTP.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::table::{DesiredTable, Frontend, NoEndpoints, Protocol, ServiceEntry, ServiceRef};

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
}

impl NodeInfo {
    pub fn new(name: impl Into<String>, zone: Option<String>) -> Self {
        NodeInfo {
            name: name.into(),
            zone: zone.filter(|z| !z.is_empty()),
        }
    }
}

/// The kinds of object the model (and its sources) read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    /// Only for this node's zone label (manifest source); cluster-scoped (namespace "").
    Node,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
        })
    }
}

/// Names one object: kind, namespace, name. Displays as `Service demo/web` (a cluster-scoped
/// object, with an empty namespace, as `Node n1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The reference of a Service (missing namespace = "default", missing name = "").
    pub fn of_service(svc: &Service) -> Self {
        let (ns, name) = ns_name(&svc.metadata);
        ObjectRef::new(ObjectKind::Service, ns, name)
    }

    /// The reference of an EndpointSlice (missing namespace = "default", missing name = "").
    pub fn of_slice(slice: &EndpointSlice) -> Self {
        let (ns, name) = ns_name(&slice.metadata);
        ObjectRef::new(ObjectKind::EndpointSlice, ns, name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// How bad a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Worth a warning; the object is still used (SCTP port skipped, slice without service).
    Warning,
    /// The object was rejected: it contributes nothing to the table.
    Error,
}

/// What is wrong with an object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("invalid cluster IP {0:?}")]
    InvalidClusterIp(String),
    #[error("clusterIPs {0:?}: at most one IPv4 and one IPv6 address are allowed")]
    TooManyClusterIps(Vec<String>),
    #[error("invalid external IP {0:?}: skipped")]
    InvalidExternalIp(String),
    #[error("unknown service type {0:?}")]
    UnknownServiceType(String),
    #[error("port {port_name:?}: port {port} is outside 1..=65535")]
    InvalidPort { port_name: String, port: i32 },
    #[error("port {port_name:?}: targetPort {target_port} is outside 1..=65535")]
    InvalidTargetPort { port_name: String, target_port: i32 },
    #[error("port {port_name:?}: invalid protocol {protocol:?} (expected TCP, UDP or SCTP)")]
    InvalidProtocol { port_name: String, protocol: String },
    #[error("port {port_name:?} ({port}/SCTP): SCTP is not supported, port skipped")]
    UnsupportedSctp { port_name: String, port: u16 },
    #[error("port {port}/{protocol} is defined twice")]
    DuplicatePort { port: u16, protocol: Protocol },
    #[error("invalid sessionAffinity {0:?} (expected None or ClientIP)")]
    InvalidSessionAffinity(String),
    #[error("sessionAffinityConfig.clientIP.timeoutSeconds {0} is outside 1..=86400")]
    InvalidAffinityTimeout(i32),
    #[error("invalid internalTrafficPolicy {0:?} (expected Cluster or Local)")]
    InvalidInternalTrafficPolicy(String),
    #[error("frontend {frontend} is already owned by Service {owner}")]
    DuplicateFrontend {
        frontend: Frontend,
        /// `namespace/name` of the service that keeps the frontend.
        owner: String,
    },
    #[error("label {LABEL_SERVICE_NAME} is missing")]
    MissingServiceNameLabel,
    #[error("invalid addressType {0:?} (expected IPv4, IPv6 or FQDN)")]
    InvalidAddressType(String),
    #[error("endpoint address {address:?} is not an {family} address")]
    InvalidEndpointAddress {
        address: String,
        family: &'static str,
    },
    #[error("no Service {namespace}/{name} (yet?): slice unused")]
    UnknownService { namespace: String, name: String },
}

impl ProblemKind {
    pub fn severity(&self) -> Severity {
        match self {
            ProblemKind::UnsupportedSctp { .. }
            | ProblemKind::UnknownService { .. }
            | ProblemKind::InvalidExternalIp(_) => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

/// One problem with one object. Displays as `Service demo/web: invalid cluster IP "10.1"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {kind}")]
pub struct Problem {
    pub object: ObjectRef,
    pub kind: ProblemKind,
}

impl Problem {
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }
}

/// The model's result: the table, and what was wrong with the input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOutput {
    pub table: DesiredTable,
    pub problems: Vec<Problem>,
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
    let (valid, problems) = validate_service(svc);
    let Some(valid) = valid else {
        return ServiceBuild {
            entries: Vec::new(),
            problems,
            ignored: true,
        };
    };
    if problems.iter().any(|p| p.severity() == Severity::Error) {
        return ServiceBuild {
            entries: Vec::new(),
            problems,
            ignored: false,
        };
    }
    let group = service_slices(&valid, slices);
    let entries = valid
        .frontends()
        .map(|(frontend, port, kind)| {
            let analysis = analyze(&valid, port, kind, frontend.vip, &group, node);
            let mut entry = analysis.entry(&valid, port);
            entry.external = kind == FrontendKind::ExternalIp;
            (frontend, entry)
        })
        .collect();
    ServiceBuild {
        entries,
        problems,
        ignored: false,
    }
}

/// The valid slices of `svc` among `slices`, sorted by name (a deterministic merge order
/// whatever the input order; stable: equal names keep their order).
fn service_slices<'a>(svc: &ValidService<'_>, slices: &[&'a EndpointSlice]) -> Vec<ValidSlice<'a>> {
    let mut group: Vec<ValidSlice<'a>> = slices
        .iter()
        .filter(|s| !not_ours(&s.metadata))
        .filter_map(|s| validate_slice(s).ok().flatten())
        .filter(|s| s.namespace == svc.namespace && s.service == svc.name)
        .collect();
    group.sort_by(|a, b| a.name.cmp(b.name));
    group
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
    let mut problems = Vec::new();

    // Every named service, accepted or not: a slice for one of them is not "unknown".
    let known_services: HashSet<(&str, &str)> = services
        .iter()
        .map(|s| ns_name(&s.metadata))
        .filter(|(_, name)| !name.is_empty())
        .collect();

    // Slices: validate, group by service.
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    let mut slice_problem_list = Vec::new();
    for slice in slices {
        let object = ObjectRef::of_slice(slice);
        let kinds = slice_problems(slice);
        if !kinds.is_empty() {
            slice_problem_list.extend(kinds.into_iter().map(|kind| Problem {
                object: object.clone(),
                kind,
            }));
            continue;
        }
        let Some(key) = slice_service(slice) else {
            continue;
        };
        if slice.address_type == "FQDN" {
            continue;
        }
        if !known_services.contains(&(key.0.as_str(), key.1.as_str())) {
            slice_problem_list.push(Problem {
                object,
                kind: ProblemKind::UnknownService {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                },
            });
        }
        by_service.entry(key).or_default().push(slice);
    }

    // Services: build each, then claim frontends in input order.
    let mut claimed: HashMap<Frontend, String> = HashMap::new();
    let mut table = DesiredTable::default();
    for svc in services {
        let object = ObjectRef::of_service(svc);
        let (ns, name) = ns_name(&svc.metadata);
        let group = by_service
            .get(&(ns.to_owned(), name.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let built = build_service(svc, group, node);
        let accepted = built.accepted();
        problems.extend(built.problems.into_iter().map(|kind| Problem {
            object: object.clone(),
            kind,
        }));
        if !accepted {
            continue;
        }
        let conflicts: Vec<ProblemKind> = built
            .entries
            .iter()
            .filter_map(|(fe, _)| {
                claimed.get(fe).map(|owner| ProblemKind::DuplicateFrontend {
                    frontend: *fe,
                    owner: owner.clone(),
                })
            })
            .collect();
        if !conflicts.is_empty() {
            problems.extend(conflicts.into_iter().map(|kind| Problem {
                object: object.clone(),
                kind,
            }));
            continue;
        }
        let owner = format!("{ns}/{name}");
        for (fe, entry) in built.entries {
            claimed.insert(fe, owner.clone());
            table.services.insert(fe, entry);
        }
    }
    problems.extend(slice_problem_list);

    ModelOutput { table, problems }
}

/// The metadata namespace (default "default") and name (default "").
fn ns_name(meta: &ObjectMeta) -> (&str, &str) {
    let ns = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    (ns, meta.name.as_deref().unwrap_or(""))
}

/// Labelled for another proxy, or headless: excluded by kube-proxy's label selector.
fn not_ours(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetPort<'a> {
    Number(u16),
    Name(&'a str),
}

#[derive(Debug)]
struct ValidPort<'a> {
    name: &'a str,
    port: u16,
    protocol: Protocol,
    target: TargetPort<'a>,
}

/// Where a frontend's VIP comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    /// `spec.clusterIP(s)`.
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "cluster IP",
            FrontendKind::ExternalIp => "external IP",
        })
    }
}

#[derive(Debug)]
struct ValidService<'a> {
    namespace: &'a str,
    name: &'a str,
    vips: Vec<IpAddr>,
    /// Valid, deduplicated, none equal to a cluster IP.
    external_ips: Vec<IpAddr>,
    ports: Vec<ValidPort<'a>>,
    affinity_timeout_s: Option<u32>,
    local: bool,
}

impl<'a> ValidService<'a> {
    fn frontends(&self) -> impl Iterator<Item = (Frontend, &ValidPort<'a>, FrontendKind)> + '_ {
        let vips = self
            .vips
            .iter()
            .map(|&v| (v, FrontendKind::ClusterIp))
            .chain(
                self.external_ips
                    .iter()
                    .map(|&v| (v, FrontendKind::ExternalIp)),
            );
        vips.flat_map(move |(vip, kind)| {
            self.ports.iter().map(move |p| {
                (
                    Frontend {
                        vip,
                        port: p.port,
                        protocol: p.protocol,
                    },
                    p,
                    kind,
                )
            })
        })
    }
}

fn parse_protocol(
    port_name: &str,
    protocol: Option<&str>,
) -> Result<Option<Protocol>, ProblemKind> {
    match protocol {
        None | Some("TCP") => Ok(Some(Protocol::Tcp)),
        Some("UDP") => Ok(Some(Protocol::Udp)),
        Some("SCTP") => Ok(None),
        Some(other) => Err(ProblemKind::InvalidProtocol {
            port_name: port_name.to_owned(),
            protocol: other.to_owned(),
        }),
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Returns the service if the model uses it (None: ignored) and its problems; the service must
/// not be used if any problem is an error.
fn validate_service(svc: &Service) -> (Option<ValidService<'_>>, Vec<ProblemKind>) {
    let mut problems = Vec::new();
    let (namespace, name) = ns_name(&svc.metadata);
    let Some(spec) = svc.spec.as_ref() else {
        return (None, problems);
    };
    if not_ours(&svc.metadata) {
        return (None, problems);
    }
    match spec.type_.as_deref() {
        None | Some("ClusterIP") | Some("NodePort") | Some("LoadBalancer") => {}
        Some("ExternalName") => return (None, problems),
        Some(other) => problems.push(ProblemKind::UnknownServiceType(other.to_owned())),
    }

    let ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    match ips.first() {
        None | Some(&"None") | Some(&"") => return (None, problems),
        Some(_) => {}
    }
    if name.is_empty() {
        problems.push(ProblemKind::MissingName);
    }
    let mut vips = Vec::new();
    for ip in &ips {
        match ip.parse::<IpAddr>() {
            Ok(addr) => vips.push(addr),
            Err(_) => problems.push(ProblemKind::InvalidClusterIp((*ip).to_owned())),
        }
    }
    if vips.len() > 2 || (vips.len() == 2 && vips[0].is_ipv4() == vips[1].is_ipv4()) {
        problems.push(ProblemKind::TooManyClusterIps(
            ips.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }

    let mut external_ips: Vec<IpAddr> = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        match ip.parse::<IpAddr>() {
            Ok(addr) => {
                if !vips.contains(&addr) && !external_ips.contains(&addr) {
                    external_ips.push(addr);
                }
            }
            Err(_) => problems.push(ProblemKind::InvalidExternalIp(ip.clone())),
        }
    }

    let mut ports: Vec<ValidPort<'_>> = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let port_name = sp.name.as_deref().unwrap_or("");
        let Some(port) = port_number(sp.port) else {
            problems.push(ProblemKind::InvalidPort {
                port_name: port_name.to_owned(),
                port: sp.port,
            });
            continue;
        };
        let protocol = match parse_protocol(port_name, sp.protocol.as_deref()) {
            Ok(Some(p)) => p,
            Ok(None) => {
                problems.push(ProblemKind::UnsupportedSctp {
                    port_name: port_name.to_owned(),
                    port,
                });
                continue;
            }
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let target = match &sp.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match port_number(*n) {
                Some(t) => TargetPort::Number(t),
                None => {
                    problems.push(ProblemKind::InvalidTargetPort {
                        port_name: port_name.to_owned(),
                        target_port: *n,
                    });
                    continue;
                }
            },
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(t) if t != 0 => TargetPort::Number(t),
                _ => TargetPort::Name(s.as_str()),
            },
        };
        if ports
            .iter()
            .any(|p| p.port == port && p.protocol == protocol)
        {
            problems.push(ProblemKind::DuplicatePort { port, protocol });
            continue;
        }
        ports.push(ValidPort {
            name: port_name,
            port,
            protocol,
            target,
        });
    }

    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => Some(t),
                    _ => {
                        problems.push(ProblemKind::InvalidAffinityTimeout(t));
                        None
                    }
                },
            }
        }
        Some(other) => {
            problems.push(ProblemKind::InvalidSessionAffinity(other.to_owned()));
            None
        }
    };

    let local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(ProblemKind::InvalidInternalTrafficPolicy(other.to_owned()));
            false
        }
    };

    (
        Some(ValidService {
            namespace,
            name,
            vips,
            external_ips,
            ports,
            affinity_timeout_s,
            local,
        }),
        problems,
    )
}

#[derive(Debug)]
struct ValidSlicePort<'a> {
    name: &'a str,
    port: Option<u16>,
    /// None: SCTP (valid, matches no frontend).
    protocol: Option<Protocol>,
}

#[derive(Debug)]
struct ValidEndpoint<'a> {
    ip: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<&'a str>,
    zone: Option<&'a str>,
    zone_hints: BTreeSet<&'a str>,
    node_hints: BTreeSet<&'a str>,
}

impl ValidEndpoint<'_> {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    fn is_local(&self, node: &NodeInfo) -> bool {
        !node.name.is_empty() && self.node_name == Some(node.name.as_str())
    }
}

#[derive(Debug)]
struct ValidSlice<'a> {
    namespace: &'a str,
    name: &'a str,
    service: &'a str,
    ipv6: bool,
    ports: Vec<ValidSlicePort<'a>>,
    endpoints: Vec<ValidEndpoint<'a>>,
}

/// Ok(None): a valid slice the model does not use (FQDN).
fn validate_slice(slice: &EndpointSlice) -> Result<Option<ValidSlice<'_>>, Vec<ProblemKind>> {
    let mut problems = Vec::new();
    let (namespace, name) = ns_name(&slice.metadata);
    if name.is_empty() {
        problems.push(ProblemKind::MissingName);
    }
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    if service.is_none() {
        problems.push(ProblemKind::MissingServiceNameLabel);
    }
    let (ipv6, family) = match slice.address_type.as_str() {
        "IPv4" => (false, "IPv4"),
        "IPv6" => (true, "IPv6"),
        "FQDN" if problems.is_empty() => return Ok(None),
        "FQDN" => return Err(problems),
        other => {
            problems.push(ProblemKind::InvalidAddressType(other.to_owned()));
            return Err(problems);
        }
    };

    let mut ports = Vec::new();
    for ep in slice.ports.iter().flatten() {
        let port_name = ep.name.as_deref().unwrap_or("");
        let port = match ep.port {
            None => None,
            Some(n) => match port_number(n) {
                Some(p) => Some(p),
                None => {
                    problems.push(ProblemKind::InvalidPort {
                        port_name: port_name.to_owned(),
                        port: n,
                    });
                    continue;
                }
            },
        };
        match parse_protocol(port_name, ep.protocol.as_deref()) {
            Ok(protocol) => ports.push(ValidSlicePort {
                name: port_name,
                port,
                protocol,
            }),
            Err(e) => problems.push(e),
        }
    }

    let mut endpoints = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let mut first = None;
        for address in &ep.addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv6() == ipv6 => {
                    first.get_or_insert(ip);
                }
                _ => problems.push(ProblemKind::InvalidEndpointAddress {
                    address: address.clone(),
                    family,
                }),
            }
        }
        // Only addresses[0] is used; an endpoint without addresses is ignored (kube-proxy).
        let Some(ip) = first else { continue };
        let cond = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        endpoints.push(ValidEndpoint {
            ip,
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.as_deref(),
            zone: ep.zone.as_deref(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.as_str())
                .collect(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.as_str())
                .collect(),
        });
    }

    match service {
        Some(service) if problems.is_empty() => Ok(Some(ValidSlice {
            namespace,
            name,
            service,
            ipv6,
            ports,
            endpoints,
        })),
        _ => Err(problems),
    }
}

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
struct Record<'s, 'a> {
    slice: &'s str,
    ep: &'s ValidEndpoint<'a>,
    /// The backend port; None when the slice has none for this service port.
    port: Option<u16>,
    used: bool,
    reason: Option<NotUsed>,
}

/// Every endpoint of a frontend, which ones are used and why.
#[derive(Debug)]
struct Analysis<'s, 'a> {
    records: Vec<Record<'s, 'a>>,
    policy: TrafficPolicy,
    topology: Topology,
    topology_reason: String,
    /// The backends are serving-and-terminating endpoints (no ready one was usable).
    fallback: bool,
    backends: Vec<SocketAddr>,
    no_endpoints: NoEndpoints,
}

impl Analysis<'_, '_> {
    fn entry(&self, svc: &ValidService<'_>, port: &ValidPort<'_>) -> ServiceEntry {
        ServiceEntry {
            service: ServiceRef {
                namespace: svc.namespace.to_owned(),
                name: svc.name.to_owned(),
                port_name: port.name.to_owned(),
            },
            backends: self.backends.clone(),
            affinity_timeout_s: svc.affinity_timeout_s,
            no_endpoints: self.no_endpoints,
            external: false,
        }
    }
}

/// kube-proxy's `topologyModeFromHints`, over a frontend's (deduplicated) endpoints.
fn topology_mode<'e, 'a: 'e>(
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

fn available_for_topology(ep: &ValidEndpoint<'_>, topology: Topology, node: &NodeInfo) -> bool {
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
fn analyze<'s, 'a>(
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
    pub used: bool,
    /// Why not, when not used.
    pub reason: Option<NotUsed>,
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
    pub backends: Vec<SocketAddr>,
    pub no_endpoints: Option<NoEndpoints>,
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
    let Some((_, port, kind)) = valid.frontends().find(|(fe, _, _)| fe == frontend) else {
        ex.rule = "the service has no such frontend".into();
        return ex;
    };
    let group = service_slices(&valid, slices);
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
    ex.backends = a.backends.clone();
    ex.rule = rule_text(&a, kind, node);
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
        })
        .collect();
    ex
}

fn rule_text(a: &Analysis<'_, '_>, kind: FrontendKind, node: &NodeInfo) -> String {
    let mut rule = match (kind, a.policy) {
        (FrontendKind::ExternalIp, _) => "external IP: traffic from this node uses the Cluster \
                                          endpoints whatever the traffic policies"
            .to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
        use serde::Deserialize;
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("Service") => services.push(serde_yaml::from_value(value).unwrap()),
                Some("EndpointSlice") => slices.push(serde_yaml::from_value(value).unwrap()),
                None => {}
                Some(other) => panic!("unexpected kind {other}"),
            }
        }
        (services, slices)
    }

    fn build(yaml: &str) -> ModelOutput {
        build_node(yaml, "node-a")
    }

    fn build_node(yaml: &str, node: &str) -> ModelOutput {
        build_at(yaml, node, None)
    }

    fn build_at(yaml: &str, node: &str, zone: Option<&str>) -> ModelOutput {
        let (services, slices) = parse_objects(yaml);
        build_table(
            &services,
            &slices,
            &NodeInfo::new(node, zone.map(str::to_owned)),
        )
    }

    use crate::table::test_support::{entry, fe, table};

    fn problem(kind: ObjectKind, ns: &str, name: &str, p: ProblemKind) -> Problem {
        Problem {
            object: ObjectRef::new(kind, ns, name),
            kind: p,
        }
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
"#;

    const WEB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.0.0.2]
- addresses: [10.0.0.1]
  conditions: {ready: true}
"#;

    fn with(parts: &[&str]) -> String {
        parts.join("\n---\n")
    }

    #[test]
    fn basic_service_with_slice() {
        let out = build(&with(&[WEB, WEB_SLICE]));
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.10", 80, Protocol::Tcp),
                entry("demo", "web", "http", &["10.0.0.1:8080", "10.0.0.2:8080"]),
            )])
        );
    }

    #[test]
    fn dual_stack_cluster_ips_each_port() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: ds, namespace: ns1}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00::20"]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: a, port: 80, targetPort: 8080}
  - {name: b, port: 53, protocol: UDP, targetPort: 5353}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: ds-v4, namespace: ns1, labels: {kubernetes.io/service-name: ds}}
addressType: IPv4
ports:
- {name: a, port: 8080, protocol: TCP}
- {name: b, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.0.0.1]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: ds-v6, namespace: ns1, labels: {kubernetes.io/service-name: ds}}
addressType: IPv6
ports:
- {name: a, port: 8080, protocol: TCP}
- {name: b, port: 5353, protocol: UDP}
endpoints:
- addresses: ["fd00::1"]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![
                (
                    fe("10.96.0.20", 80, Protocol::Tcp),
                    entry("ns1", "ds", "a", &["10.0.0.1:8080"])
                ),
                (
                    fe("10.96.0.20", 53, Protocol::Udp),
                    entry("ns1", "ds", "b", &["10.0.0.1:5353"])
                ),
                (
                    fe("fd00::20", 80, Protocol::Tcp),
                    entry("ns1", "ds", "a", &["[fd00::1]:8080"])
                ),
                (
                    fe("fd00::20", 53, Protocol::Udp),
                    entry("ns1", "ds", "b", &["[fd00::1]:5353"])
                ),
            ])
        );
    }

    #[test]
    fn cluster_ip_fallback_when_cluster_ips_absent_and_ipv6_only() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: six}
spec:
  clusterIP: "fd00::30"
  ports: [{port: 443}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("fd00::30", 443, Protocol::Tcp),
                entry("default", "six", "", &[])
            )])
        );
    }

    #[test]
    fn nodeport_and_loadbalancer_get_cluster_ip_frontends() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: np}
spec: {type: NodePort, clusterIP: 10.96.0.40, ports: [{port: 80, nodePort: 30080}]}
---
kind: Service
apiVersion: v1
metadata: {name: lb}
spec: {type: LoadBalancer, clusterIP: 10.96.0.41, ports: [{port: 80, nodePort: 30081}]}
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![
                (
                    fe("10.96.0.40", 80, Protocol::Tcp),
                    entry("default", "np", "", &[])
                ),
                (
                    fe("10.96.0.41", 80, Protocol::Tcp),
                    entry("default", "lb", "", &[])
                ),
            ])
        );
    }

    #[test]
    fn sctp_port_skipped_with_warning() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: mixed, namespace: x}
spec:
  clusterIP: 10.96.0.50
  ports:
  - {name: s, port: 9999, protocol: SCTP}
  - {name: t, port: 80}
"#,
        );
        assert_eq!(
            out.problems,
            vec![problem(
                ObjectKind::Service,
                "x",
                "mixed",
                ProblemKind::UnsupportedSctp {
                    port_name: "s".into(),
                    port: 9999
                }
            )]
        );
        assert_eq!(out.problems[0].severity(), Severity::Warning);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.50", 80, Protocol::Tcp),
                entry("x", "mixed", "t", &[])
            )])
        );
    }

    #[test]
    fn ignored_services_are_silent() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com, ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: headless2}
spec: {clusterIPs: [None], ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: noip}
spec: {clusterIP: "", ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: other-proxy, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec: {clusterIP: 10.96.0.60, ports: [{port: 80}]}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: headless-x, labels: {kubernetes.io/service-name: headless}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(out.table, DesiredTable::default());
    }

    #[test]
    fn slices_joined_by_label_and_namespace_family_and_merged() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: web, namespace: a}
spec: {clusterIP: 10.96.0.70, ports: [{port: 80}]}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-1, namespace: a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: "", port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.0.0.3]}, {addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-2, namespace: a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.2]}, {addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-6, namespace: a, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{port: 8080}]
endpoints: [{addresses: ["fd00::9"]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-fqdn, namespace: a, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
ports: [{port: 8080}]
endpoints: [{addresses: [example.com]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-other-ns, namespace: b, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-multi, namespace: a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.4, 10.0.0.5]}]
"#,
        );
        // The slice in namespace b has no service there: warning, unused.
        assert_eq!(
            out.problems,
            vec![problem(
                ObjectKind::EndpointSlice,
                "b",
                "web-other-ns",
                ProblemKind::UnknownService {
                    namespace: "b".into(),
                    name: "web".into()
                }
            )]
        );
        assert_eq!(out.problems[0].severity(), Severity::Warning);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.70", 80, Protocol::Tcp),
                entry(
                    "a",
                    "web",
                    "",
                    &[
                        "10.0.0.1:8080",
                        "10.0.0.2:8080",
                        "10.0.0.3:8080",
                        "10.0.0.4:8080"
                    ]
                ),
            )])
        );
    }

    #[test]
    fn backend_port_by_slice_port_name_and_protocol() {
        // The ServicePort says targetPort 9999, but the slice (controller-resolved) says 8443
        // for the port named "https": the slice wins. The UDP port named "https" does not match
        // the TCP service port.
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: s}
spec:
  clusterIP: 10.96.0.80
  ports:
  - {name: https, port: 443, targetPort: 9999}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports:
- {name: https, port: 1111, protocol: UDP}
- {name: https, port: 8443, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints: [{addresses: [10.0.0.1]}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![
                (
                    fe("10.96.0.80", 443, Protocol::Tcp),
                    entry("default", "s", "https", &["10.0.0.1:8443"])
                ),
                (
                    fe("10.96.0.80", 53, Protocol::Udp),
                    entry("default", "s", "dns", &["10.0.0.1:5353"])
                ),
            ])
        );
    }

    #[test]
    fn backend_port_fallback_for_hand_written_slices() {
        // No slice port is named like the service ports: targetPort decides.
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: s}
spec:
  clusterIP: 10.96.0.81
  ports:
  - {name: web, port: 80, targetPort: http}
  - {name: num, port: 81, targetPort: 8181}
  - {name: str-num, port: 82, targetPort: "8282"}
  - {name: none, port: 83}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints: [{addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: s-2, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.2]}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![
                (
                    fe("10.96.0.81", 80, Protocol::Tcp),
                    // s-2 has no port named http: its endpoint has no backend port.
                    entry("default", "s", "web", &["10.0.0.1:8080"])
                ),
                (
                    fe("10.96.0.81", 81, Protocol::Tcp),
                    entry("default", "s", "num", &["10.0.0.1:8181", "10.0.0.2:8181"])
                ),
                (
                    fe("10.96.0.81", 82, Protocol::Tcp),
                    entry(
                        "default",
                        "s",
                        "str-num",
                        &["10.0.0.1:8282", "10.0.0.2:8282"]
                    )
                ),
                (
                    fe("10.96.0.81", 83, Protocol::Tcp),
                    entry("default", "s", "none", &["10.0.0.1:83", "10.0.0.2:83"])
                ),
            ])
        );
    }

    #[test]
    fn slice_port_without_number_is_skipped() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: s}
spec: {clusterIP: 10.96.0.82, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: p, port: null}]
endpoints: [{addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: s-2, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints: [{addresses: [10.0.0.2]}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.82", 80, Protocol::Tcp),
                entry("default", "s", "p", &["10.0.0.2:8080"])
            )])
        );
    }

    const COND_SVC: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: c}
spec: {clusterIP: 10.96.0.90, ports: [{port: 80}]}
"#;

    fn cond_slice(endpoints: &str) -> String {
        format!(
            r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {{name: c-1, labels: {{kubernetes.io/service-name: c}}}}
addressType: IPv4
ports: [{{port: 80}}]
endpoints:
{endpoints}
"#
        )
    }

    fn backends_of(out: &ModelOutput, vip: &str, port: u16) -> Vec<String> {
        out.table.services[&fe(vip, port, Protocol::Tcp)]
            .backends
            .iter()
            .map(|b| b.to_string())
            .collect()
    }

    #[test]
    fn ready_endpoints_preferred_over_terminating() {
        let out = build(&with(&[
            COND_SVC,
            &cond_slice(
                r#"
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.2], conditions: {ready: true}}
- {addresses: [10.0.0.3], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.4], conditions: {ready: false, serving: false}}
"#,
            ),
        ]));
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.90", 80, Protocol::Tcp),
                entry("default", "c", "", &["10.0.0.1:80", "10.0.0.2:80"])
            )])
        );
    }

    #[test]
    fn serving_terminating_used_when_none_ready() {
        let out = build(&with(&[
            COND_SVC,
            &cond_slice(
                r#"
- {addresses: [10.0.0.1], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.2], conditions: {ready: false, terminating: true}}
- {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.0.0.4], conditions: {ready: false, serving: true}}
- {addresses: [10.0.0.5], conditions: {ready: false, serving: false}}
"#,
            ),
        ]));
        assert_eq!(out.problems, vec![]);
        // nil serving = true (API doc, kube-proxy): 10.0.0.2 is serving and terminating.
        assert_eq!(
            backends_of(&out, "10.96.0.90", 80),
            vec!["10.0.0.1:80", "10.0.0.2:80"]
        );
    }

    #[test]
    fn never_unusable_endpoints() {
        let out = build(&with(&[
            COND_SVC,
            &cond_slice(
                r#"
- {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.0.0.4], conditions: {ready: false, serving: true}}
- {addresses: [10.0.0.5], conditions: {ready: false, serving: false}}
"#,
            ),
        ]));
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.90", 80, Protocol::Tcp),
                entry("default", "c", "", &[])
            )])
        );
    }

    const LOCAL_SVC: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: c}
spec: {clusterIP: 10.96.0.90, internalTrafficPolicy: Local, ports: [{port: 80}]}
"#;

    #[test]
    fn internal_traffic_policy_local_uses_local_endpoints() {
        let yaml = with(&[
            LOCAL_SVC,
            &cond_slice(
                r#"
- {addresses: [10.0.0.1], nodeName: node-a}
- {addresses: [10.0.0.2], nodeName: node-b}
- {addresses: [10.0.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.4]}
"#,
            ),
        ]);
        let out = build_node(&yaml, "node-a");
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.90", 80, Protocol::Tcp),
                entry("default", "c", "", &["10.0.0.1:80"])
            )])
        );
        let out = build_node(&yaml, "node-b");
        assert_eq!(backends_of(&out, "10.96.0.90", 80), vec!["10.0.0.2:80"]);
    }

    #[test]
    fn internal_traffic_policy_local_falls_back_to_local_serving_terminating() {
        // A ready endpoint elsewhere does not stop the local fallback (kube-proxy picks among
        // the local ones).
        let out = build(&with(&[
            LOCAL_SVC,
            &cond_slice(
                r#"
- {addresses: [10.0.0.2], nodeName: node-b}
- {addresses: [10.0.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.5], nodeName: node-a, conditions: {ready: false, serving: false, terminating: true}}
"#,
            ),
        ]));
        assert_eq!(out.problems, vec![]);
        assert_eq!(backends_of(&out, "10.96.0.90", 80), vec!["10.0.0.3:80"]);
    }

    #[test]
    fn internal_traffic_policy_local_without_local_endpoints_drops() {
        let out = build(&with(&[
            LOCAL_SVC,
            &cond_slice("- {addresses: [10.0.0.2], nodeName: node-b}"),
        ]));
        assert_eq!(out.problems, vec![]);
        let mut expected = entry("default", "c", "", &[]);
        expected.no_endpoints = NoEndpoints::Drop;
        assert_eq!(
            out.table,
            table(vec![(fe("10.96.0.90", 80, Protocol::Tcp), expected)])
        );
    }

    #[test]
    fn internal_traffic_policy_local_without_any_endpoints_rejects() {
        // kube-proxy: "has no endpoints" (REJECT) takes precedence over "has no local
        // endpoints" (DROP).
        let out = build(&with(&[
            LOCAL_SVC,
            &cond_slice(
                "- {addresses: [10.0.0.2], nodeName: node-b, conditions: {ready: false, serving: false}}",
            ),
        ]));
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.90", 80, Protocol::Tcp),
                entry("default", "c", "", &[])
            )])
        );
    }

    #[test]
    fn cluster_policy_without_endpoints_rejects() {
        let out = build(COND_SVC);
        assert_eq!(
            out.table.services[&fe("10.96.0.90", 80, Protocol::Tcp)].no_endpoints,
            NoEndpoints::Reject
        );
    }

    #[test]
    fn session_affinity_client_ip() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: a}
spec: {clusterIP: 10.96.1.1, sessionAffinity: ClientIP, ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: b}
spec:
  clusterIP: 10.96.1.2
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
---
kind: Service
apiVersion: v1
metadata: {name: c}
spec: {clusterIP: 10.96.1.3, sessionAffinity: None, ports: [{port: 80}]}
"#,
        );
        assert_eq!(out.problems, vec![]);
        let mut a = entry("default", "a", "", &[]);
        a.affinity_timeout_s = Some(10800);
        let mut b = entry("default", "b", "", &[]);
        b.affinity_timeout_s = Some(60);
        assert_eq!(
            out.table,
            table(vec![
                (fe("10.96.1.1", 80, Protocol::Tcp), a),
                (fe("10.96.1.2", 80, Protocol::Tcp), b),
                (
                    fe("10.96.1.3", 80, Protocol::Tcp),
                    entry("default", "c", "", &[])
                ),
            ])
        );
    }

    #[test]
    fn invalid_services_rejected_others_unaffected() {
        let good = r#"
kind: Service
apiVersion: v1
metadata: {name: good}
spec: {clusterIP: 10.96.2.1, ports: [{port: 80}]}
"#;
        let cases: &[(&str, ProblemKind)] = &[
            (
                "spec: {clusterIP: 10.96.2.300, ports: [{port: 80}]}",
                ProblemKind::InvalidClusterIp("10.96.2.300".into()),
            ),
            (
                "spec: {clusterIPs: [10.96.2.2, bogus], ports: [{port: 80}]}",
                ProblemKind::InvalidClusterIp("bogus".into()),
            ),
            (
                "spec: {clusterIPs: [10.96.2.2, 10.96.2.3], ports: [{port: 80}]}",
                ProblemKind::TooManyClusterIps(vec!["10.96.2.2".into(), "10.96.2.3".into()]),
            ),
            (
                "spec: {clusterIP: 10.96.2.2, ports: [{name: p, port: 0}]}",
                ProblemKind::InvalidPort {
                    port_name: "p".into(),
                    port: 0,
                },
            ),
            (
                "spec: {clusterIP: 10.96.2.2, ports: [{port: 65536}]}",
                ProblemKind::InvalidPort {
                    port_name: "".into(),
                    port: 65536,
                },
            ),
            (
                "spec: {clusterIP: 10.96.2.2, ports: [{port: 80, protocol: tcp}]}",
                ProblemKind::InvalidProtocol {
                    port_name: "".into(),
                    protocol: "tcp".into(),
                },
            ),
            (
                "spec: {clusterIP: 10.96.2.2, ports: [{port: 80, targetPort: 70000}]}",
                ProblemKind::InvalidTargetPort {
                    port_name: "".into(),
                    target_port: 70000,
                },
            ),
            (
                "spec: {clusterIP: 10.96.2.2, ports: [{name: a, port: 80}, {name: b, port: 80}]}",
                ProblemKind::DuplicatePort {
                    port: 80,
                    protocol: Protocol::Tcp,
                },
            ),
            (
                "spec: {clusterIP: 10.96.2.2, sessionAffinity: Sticky, ports: [{port: 80}]}",
                ProblemKind::InvalidSessionAffinity("Sticky".into()),
            ),
            (
                "spec: {clusterIP: 10.96.2.2, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
                ProblemKind::InvalidAffinityTimeout(0),
            ),
            (
                "spec: {clusterIP: 10.96.2.2, internalTrafficPolicy: Nearby, ports: [{port: 80}]}",
                ProblemKind::InvalidInternalTrafficPolicy("Nearby".into()),
            ),
            (
                "spec: {type: Magic, clusterIP: 10.96.2.2, ports: [{port: 80}]}",
                ProblemKind::UnknownServiceType("Magic".into()),
            ),
        ];
        for (spec, kind) in cases {
            let bad = format!("kind: Service\napiVersion: v1\nmetadata: {{name: bad}}\n{spec}\n");
            let out = build(&with(&[&bad, good]));
            assert_eq!(
                out.problems,
                vec![problem(ObjectKind::Service, "default", "bad", kind.clone())],
                "{spec}"
            );
            assert_eq!(out.problems[0].severity(), Severity::Error);
            assert_eq!(
                out.table,
                table(vec![(
                    fe("10.96.2.1", 80, Protocol::Tcp),
                    entry("default", "good", "", &[])
                )]),
                "{spec}"
            );
        }
    }

    #[test]
    fn invalid_slices_rejected_others_unaffected() {
        let svc = r#"
kind: Service
apiVersion: v1
metadata: {name: s}
spec: {clusterIP: 10.96.3.1, ports: [{port: 80}]}
"#;
        let good = r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: good, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
"#;
        let cases: &[(&str, ProblemKind)] = &[
            (
                "metadata: {name: bad}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.9]}]",
                ProblemKind::MissingServiceNameLabel,
            ),
            (
                "metadata: {name: bad, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [\"fd00::9\"]}]",
                ProblemKind::InvalidEndpointAddress {
                    address: "fd00::9".into(),
                    family: "IPv4",
                },
            ),
            (
                "metadata: {name: bad, labels: {kubernetes.io/service-name: s}}\naddressType: IPv6\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.9]}]",
                ProblemKind::InvalidEndpointAddress {
                    address: "10.0.0.9".into(),
                    family: "IPv6",
                },
            ),
            (
                "metadata: {name: bad, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [pod.example]}]",
                ProblemKind::InvalidEndpointAddress {
                    address: "pod.example".into(),
                    family: "IPv4",
                },
            ),
            (
                "metadata: {name: bad, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{name: x, port: 70000}]\nendpoints: [{addresses: [10.0.0.9]}]",
                ProblemKind::InvalidPort {
                    port_name: "x".into(),
                    port: 70000,
                },
            ),
            (
                "metadata: {name: bad, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{port: 8080, protocol: ICMP}]\nendpoints: [{addresses: [10.0.0.9]}]",
                ProblemKind::InvalidProtocol {
                    port_name: "".into(),
                    protocol: "ICMP".into(),
                },
            ),
            (
                "metadata: {name: bad, labels: {kubernetes.io/service-name: s}}\naddressType: IPX\nendpoints: [{addresses: [10.0.0.9]}]",
                ProblemKind::InvalidAddressType("IPX".into()),
            ),
        ];
        for (body, kind) in cases {
            let bad = format!("kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\n{body}\n");
            let out = build(&with(&[svc, good, &bad]));
            assert_eq!(
                out.problems,
                vec![problem(
                    ObjectKind::EndpointSlice,
                    "default",
                    "bad",
                    kind.clone()
                )],
                "{body}"
            );
            assert_eq!(out.problems[0].severity(), Severity::Error);
            assert_eq!(
                out.table,
                table(vec![(
                    fe("10.96.3.1", 80, Protocol::Tcp),
                    entry("default", "s", "", &["10.0.0.1:8080"])
                )]),
                "{body}"
            );
        }
    }

    #[test]
    fn slice_for_unknown_service_is_a_warning() {
        let out = build(
            r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: orphan-1, namespace: n, labels: {kubernetes.io/service-name: orphan}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
"#,
        );
        assert_eq!(
            out.problems,
            vec![problem(
                ObjectKind::EndpointSlice,
                "n",
                "orphan-1",
                ProblemKind::UnknownService {
                    namespace: "n".into(),
                    name: "orphan".into()
                }
            )]
        );
        assert_eq!(out.problems[0].severity(), Severity::Warning);
        assert_eq!(out.table, DesiredTable::default());
    }

    #[test]
    fn duplicate_frontend_first_service_wins() {
        let first = r#"
kind: Service
apiVersion: v1
metadata: {name: first, namespace: n}
spec: {clusterIP: 10.96.4.1, ports: [{name: a, port: 80}]}
"#;
        let second = r#"
kind: Service
apiVersion: v1
metadata: {name: second, namespace: n}
spec:
  clusterIP: 10.96.4.1
  ports: [{name: b, port: 80}, {name: c, port: 81}]
"#;
        let out = build(&with(&[first, second]));
        assert_eq!(
            out.problems,
            vec![problem(
                ObjectKind::Service,
                "n",
                "second",
                ProblemKind::DuplicateFrontend {
                    frontend: fe("10.96.4.1", 80, Protocol::Tcp),
                    owner: "n/first".into()
                }
            )]
        );
        assert_eq!(
            out.problems[0].to_string(),
            "Service n/second: frontend 10.96.4.1:80/TCP is already owned by Service n/first"
        );
        // The loser contributes nothing, not even its non-conflicting port 81.
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.4.1", 80, Protocol::Tcp),
                entry("n", "first", "a", &[])
            )])
        );
        // Order decides.
        let out = build(&with(&[second, first]));
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].object.name, "first");
        assert_eq!(out.table.services.len(), 2);
    }

    #[test]
    fn same_port_different_protocol_is_not_a_duplicate() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: dns}
spec:
  clusterIP: 10.96.4.2
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![
                (
                    fe("10.96.4.2", 53, Protocol::Tcp),
                    entry("default", "dns", "dns-tcp", &[])
                ),
                (
                    fe("10.96.4.2", 53, Protocol::Udp),
                    entry("default", "dns", "dns", &[])
                ),
            ])
        );
    }

    #[test]
    fn duplicate_endpoints_across_slices_deduplicated_local_copy_preferred() {
        // 10.0.0.1 is in both slices; in web-a it is not ready and not local, in web-b ready
        // and local: the local copy wins (kube-proxy), so it is a backend of the Local service.
        let out = build(&with(&[
            LOCAL_SVC,
            r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: c-a, labels: {kubernetes.io/service-name: c}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: false, serving: false}}
- {addresses: [10.0.0.2], nodeName: node-a}
"#,
            r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: c-b, labels: {kubernetes.io/service-name: c}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- {addresses: [10.0.0.1], nodeName: node-a}
- {addresses: [10.0.0.2], nodeName: node-a}
"#,
        ]));
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.0.90", 80, Protocol::Tcp),
                entry("default", "c", "", &["10.0.0.1:80", "10.0.0.2:80"])
            )])
        );
    }

    #[test]
    fn slice_order_does_not_matter() {
        let a = r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: c-a, labels: {kubernetes.io/service-name: c}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.1], conditions: {ready: false, serving: false}}]
"#;
        let b = r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: c-b, labels: {kubernetes.io/service-name: c}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
"#;
        let one = build(&with(&[COND_SVC, a, b]));
        let two = build(&with(&[COND_SVC, b, a]));
        assert_eq!(one, two);
        // c-a sorts first: its (not ready) copy of 10.0.0.1 wins.
        assert_eq!(backends_of(&one, "10.96.0.90", 80), vec!["10.0.0.2:80"]);
    }

    #[test]
    fn headless_label_is_ignored_for_services_and_slices() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: h, labels: {service.kubernetes.io/headless: ""}}
spec: {clusterIP: 10.96.5.1, ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: s}
spec: {clusterIP: 10.96.5.2, ports: [{port: 80}]}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata:
  name: s-2
  labels: {kubernetes.io/service-name: s, service.kubernetes.io/headless: ""}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.2]}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        assert_eq!(
            out.table,
            table(vec![(
                fe("10.96.5.2", 80, Protocol::Tcp),
                entry("default", "s", "", &["10.0.0.1:8080"])
            )])
        );
    }

    /// A service and one slice whose endpoints are given as YAML flow mappings.
    fn topo(spec_extra: &str, endpoints: &str) -> String {
        format!(
            r#"
kind: Service
apiVersion: v1
metadata: {{name: t, annotations: {{service.kubernetes.io/topology-mode: Auto}}}}
spec: {{clusterIP: 10.96.6.1, ports: [{{port: 80}}]{spec_extra}}}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {{name: t-1, labels: {{kubernetes.io/service-name: t}}}}
addressType: IPv4
ports: [{{port: 80}}]
endpoints:
{endpoints}
"#
        )
    }

    fn topo_backends(yaml: &str, node: &str, zone: Option<&str>) -> Vec<String> {
        let out = build_at(yaml, node, zone);
        assert_eq!(out.problems, vec![]);
        backends_of(&out, "10.96.6.1", 80)
    }

    const ZONE_HINTED: &str = r#"
- {addresses: [10.0.0.1], zone: a, hints: {forZones: [{name: a}]}}
- {addresses: [10.0.0.2], zone: b, hints: {forZones: [{name: b}]}}
- {addresses: [10.0.0.3], zone: b, hints: {forZones: [{name: a}, {name: b}]}}
- {addresses: [10.0.0.4], conditions: {ready: false}}
"#;

    #[test]
    fn zone_hints_select_this_zone_when_every_ready_endpoint_has_one() {
        // PreferClose (and PreferSameZone, and the annotation) make the controller write zone
        // hints; kube-proxy then uses the ready endpoints hinted for its zone. The not-ready
        // endpoint without a hint does not matter.
        for extra in [
            ", trafficDistribution: PreferClose",
            ", trafficDistribution: PreferSameZone",
            "",
        ] {
            let yaml = topo(extra, ZONE_HINTED);
            assert_eq!(
                topo_backends(&yaml, "n1", Some("a")),
                vec!["10.0.0.1:80", "10.0.0.3:80"],
                "{extra}"
            );
            assert_eq!(
                topo_backends(&yaml, "n1", Some("b")),
                vec!["10.0.0.2:80", "10.0.0.3:80"]
            );
        }
    }

    #[test]
    fn zone_hints_ignored_unless_complete_matching_and_zone_known() {
        let all = vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        // Zone unknown (node without the label).
        assert_eq!(topo_backends(&topo("", ZONE_HINTED), "n1", None), all);
        // No endpoint hinted for this zone.
        assert_eq!(topo_backends(&topo("", ZONE_HINTED), "n1", Some("c")), all);
        // One ready endpoint without a hint.
        let partial = r#"
- {addresses: [10.0.0.1], hints: {forZones: [{name: a}]}}
- {addresses: [10.0.0.2], hints: {forZones: [{name: b}]}}
- {addresses: [10.0.0.3]}
"#;
        assert_eq!(topo_backends(&topo("", partial), "n1", Some("a")), all);
        // An empty hints object is no hint.
        let empty = r#"
- {addresses: [10.0.0.1], hints: {forZones: [{name: a}]}}
- {addresses: [10.0.0.2], hints: {forZones: [{name: b}]}}
- {addresses: [10.0.0.3], hints: {}}
"#;
        assert_eq!(topo_backends(&topo("", empty), "n1", Some("a")), all);
    }

    const NODE_HINTED: &str = r#"
- {addresses: [10.0.0.1], nodeName: n1, hints: {forNodes: [{name: n1}], forZones: [{name: a}]}}
- {addresses: [10.0.0.2], nodeName: n2, hints: {forNodes: [{name: n2}], forZones: [{name: a}]}}
- {addresses: [10.0.0.3], nodeName: n3, hints: {forNodes: [{name: n3}], forZones: [{name: b}]}}
"#;

    #[test]
    fn node_hints_select_this_node_then_fall_back_to_zone_hints() {
        let yaml = topo(", trafficDistribution: PreferSameNode", NODE_HINTED);
        assert_eq!(topo_backends(&yaml, "n1", Some("a")), vec!["10.0.0.1:80"]);
        assert_eq!(topo_backends(&yaml, "n3", None), vec!["10.0.0.3:80"]);
        // No endpoint for node n4: zone hints decide.
        assert_eq!(
            topo_backends(&yaml, "n4", Some("a")),
            vec!["10.0.0.1:80", "10.0.0.2:80"]
        );
        // ... and without a known zone, everything.
        assert_eq!(
            topo_backends(&yaml, "n4", None),
            vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        );
        // One ready endpoint without a node hint: node hints are off, zone hints apply.
        let partial = r#"
- {addresses: [10.0.0.1], nodeName: n1, hints: {forNodes: [{name: n1}], forZones: [{name: a}]}}
- {addresses: [10.0.0.2], nodeName: n2, hints: {forZones: [{name: b}]}}
"#;
        assert_eq!(
            topo_backends(&topo("", partial), "n1", Some("b")),
            vec!["10.0.0.2:80"]
        );
    }

    #[test]
    fn topology_not_applied_to_local_policy_nor_to_terminating_fallback() {
        // internalTrafficPolicy Local: the node's endpoints, hints or not.
        let yaml = topo(", internalTrafficPolicy: Local", NODE_HINTED);
        assert_eq!(topo_backends(&yaml, "n3", Some("a")), vec!["10.0.0.3:80"]);
        // No ready endpoint: every serving-and-terminating one, whatever its hints.
        let terminating = r#"
- {addresses: [10.0.0.1], hints: {forZones: [{name: a}]}, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.2], hints: {forZones: [{name: b}]}, conditions: {ready: false, serving: true, terminating: true}}
"#;
        assert_eq!(
            topo_backends(&topo("", terminating), "n1", Some("a")),
            vec!["10.0.0.1:80", "10.0.0.2:80"]
        );
    }

    #[test]
    fn terminating_fallback_is_separate_for_cluster_and_local() {
        // Ready endpoint on node-b, only a serving-terminating one on node-a (this node).
        let endpoints = r#"
- {addresses: [10.0.0.1], nodeName: node-b}
- {addresses: [10.0.0.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], nodeName: node-a, conditions: {ready: false, serving: false, terminating: true}}
"#;
        // Cluster: a ready endpoint exists, the terminating ones are not used.
        let out = build(&with(&[COND_SVC, &cond_slice(endpoints)]));
        assert_eq!(backends_of(&out, "10.96.0.90", 80), vec!["10.0.0.1:80"]);
        // Local: no ready local endpoint, so the serving-terminating local one.
        let out = build(&with(&[LOCAL_SVC, &cond_slice(endpoints)]));
        assert_eq!(backends_of(&out, "10.96.0.90", 80), vec!["10.0.0.2:80"]);
        // Seen from node-b: its ready endpoint.
        let out = build_node(&with(&[LOCAL_SVC, &cond_slice(endpoints)]), "node-b");
        assert_eq!(backends_of(&out, "10.96.0.90", 80), vec!["10.0.0.1:80"]);
    }

    /// `e` as the entry of an external IP frontend.
    fn external(mut e: ServiceEntry) -> ServiceEntry {
        e.external = true;
        e
    }

    #[test]
    fn external_ips_get_frontends_per_family() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: e, namespace: n}
spec:
  clusterIP: 10.96.7.1
  externalIPs: [192.0.2.10, "2001:db8::10", not-an-ip, 192.0.2.10, 10.96.7.1]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: e-4, namespace: n, labels: {kubernetes.io/service-name: e}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: e-6, namespace: n, labels: {kubernetes.io/service-name: e}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["fd00::1"]}]
"#,
        );
        // The invalid one is a warning naming it; the rest of the service is unaffected.
        assert_eq!(
            out.problems,
            vec![problem(
                ObjectKind::Service,
                "n",
                "e",
                ProblemKind::InvalidExternalIp("not-an-ip".into())
            )]
        );
        assert_eq!(out.problems[0].severity(), Severity::Warning);
        assert_eq!(
            out.table,
            table(vec![
                (
                    fe("10.96.7.1", 80, Protocol::Tcp),
                    entry("n", "e", "http", &["10.0.0.1:8080"])
                ),
                (
                    fe("192.0.2.10", 80, Protocol::Tcp),
                    external(entry("n", "e", "http", &["10.0.0.1:8080"]))
                ),
                (
                    fe("2001:db8::10", 80, Protocol::Tcp),
                    external(entry("n", "e", "http", &["[fd00::1]:8080"]))
                ),
            ])
        );
    }

    #[test]
    fn external_ip_frontends_use_cluster_endpoints_even_with_local_policy() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: c}
spec:
  clusterIP: 10.96.0.90
  externalIPs: [192.0.2.90]
  internalTrafficPolicy: Local
  ports: [{port: 80}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: c-1, labels: {kubernetes.io/service-name: c}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.2], nodeName: node-b}]
"#,
        );
        assert_eq!(out.problems, vec![]);
        let mut local = entry("default", "c", "", &[]);
        local.no_endpoints = NoEndpoints::Drop;
        assert_eq!(
            out.table,
            table(vec![
                (fe("10.96.0.90", 80, Protocol::Tcp), local),
                (
                    fe("192.0.2.90", 80, Protocol::Tcp),
                    external(entry("default", "c", "", &["10.0.0.2:80"]))
                ),
            ])
        );
    }

    #[test]
    fn external_ip_claimed_by_two_services_first_wins() {
        let out = build(
            r#"
kind: Service
apiVersion: v1
metadata: {name: a}
spec: {clusterIP: 10.96.8.1, externalIPs: [192.0.2.1], ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: b}
spec: {clusterIP: 10.96.8.2, externalIPs: [192.0.2.1], ports: [{port: 80}]}
"#,
        );
        assert_eq!(
            out.problems,
            vec![problem(
                ObjectKind::Service,
                "default",
                "b",
                ProblemKind::DuplicateFrontend {
                    frontend: fe("192.0.2.1", 80, Protocol::Tcp),
                    owner: "default/a".into()
                }
            )]
        );
        assert_eq!(out.table.services.len(), 2);
    }

    #[test]
    fn live_changes_are_pure_functions_of_the_new_object() {
        let slices = r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: l-4, labels: {kubernetes.io/service-name: l}}
addressType: IPv4
ports: [{name: a, port: 8080}, {name: b, port: 9090}]
endpoints: [{addresses: [10.0.0.1]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: l-6, labels: {kubernetes.io/service-name: l}}
addressType: IPv6
ports: [{name: a, port: 8080}, {name: b, port: 9090}]
endpoints: [{addresses: ["fd00::1"]}]
"#;
        let svc = |spec: &str, labels: &str| {
            format!("kind: Service\napiVersion: v1\nmetadata: {{name: l{labels}}}\nspec: {spec}\n")
        };
        let a = "{name: a, port: 80}";
        let b = "{name: b, port: 81}";
        let v4 = |ports: &str, extra: &str| {
            format!("{{clusterIP: 10.96.9.1, clusterIPs: [10.96.9.1], ports: [{ports}]{extra}}}")
        };
        let affinity = |s: u32| {
            let mut e = entry("default", "l", "a", &["10.0.0.1:8080"]);
            e.affinity_timeout_s = Some(s);
            e
        };
        let steps: Vec<(String, DesiredTable)> = vec![
            (
                svc(&v4(a, ""), ""),
                table(vec![(
                    fe("10.96.9.1", 80, Protocol::Tcp),
                    entry("default", "l", "a", &["10.0.0.1:8080"]),
                )]),
            ),
            // sessionAffinity None -> ClientIP -> None.
            (
                svc(&v4(a, ", sessionAffinity: ClientIP"), ""),
                table(vec![(fe("10.96.9.1", 80, Protocol::Tcp), affinity(10800))]),
            ),
            (
                svc(&v4(a, ", sessionAffinity: None"), ""),
                table(vec![(
                    fe("10.96.9.1", 80, Protocol::Tcp),
                    entry("default", "l", "a", &["10.0.0.1:8080"]),
                )]),
            ),
            // A port added, then the first removed.
            (
                svc(&v4(&format!("{a}, {b}"), ""), ""),
                table(vec![
                    (
                        fe("10.96.9.1", 80, Protocol::Tcp),
                        entry("default", "l", "a", &["10.0.0.1:8080"]),
                    ),
                    (
                        fe("10.96.9.1", 81, Protocol::Tcp),
                        entry("default", "l", "b", &["10.0.0.1:9090"]),
                    ),
                ]),
            ),
            (
                svc(&v4(b, ""), ""),
                table(vec![(
                    fe("10.96.9.1", 81, Protocol::Tcp),
                    entry("default", "l", "b", &["10.0.0.1:9090"]),
                )]),
            ),
            // Labelled for another proxy, then the label removed.
            (
                svc(
                    &v4(b, ""),
                    ", labels: {service.kubernetes.io/service-proxy-name: other}",
                ),
                DesiredTable::default(),
            ),
            (
                svc(&v4(b, ""), ", labels: {app: l}"),
                table(vec![(
                    fe("10.96.9.1", 81, Protocol::Tcp),
                    entry("default", "l", "b", &["10.0.0.1:9090"]),
                )]),
            ),
            // Families: dual-stack, then IPv6 only.
            (
                svc(
                    &format!(
                        "{{clusterIP: 10.96.9.1, clusterIPs: [10.96.9.1, \"fd00::9:1\"], ports: [{b}]}}"
                    ),
                    "",
                ),
                table(vec![
                    (
                        fe("10.96.9.1", 81, Protocol::Tcp),
                        entry("default", "l", "b", &["10.0.0.1:9090"]),
                    ),
                    (
                        fe("fd00::9:1", 81, Protocol::Tcp),
                        entry("default", "l", "b", &["[fd00::1]:9090"]),
                    ),
                ]),
            ),
            (
                svc(
                    &format!(
                        "{{clusterIP: \"fd00::9:1\", clusterIPs: [\"fd00::9:1\"], ports: [{b}]}}"
                    ),
                    "",
                ),
                table(vec![(
                    fe("fd00::9:1", 81, Protocol::Tcp),
                    entry("default", "l", "b", &["[fd00::1]:9090"]),
                )]),
            ),
            // ClusterIP -> ExternalName -> ClusterIP.
            (
                svc(
                    "{type: ExternalName, externalName: example.com, ports: [{port: 81}]}",
                    "",
                ),
                DesiredTable::default(),
            ),
            (
                svc(&v4(a, ""), ""),
                table(vec![(
                    fe("10.96.9.1", 80, Protocol::Tcp),
                    entry("default", "l", "a", &["10.0.0.1:8080"]),
                )]),
            ),
        ];
        for (service, want) in steps {
            let out = build(&with(&[&service, slices]));
            assert_eq!(out.problems, vec![], "{service}");
            assert_eq!(out.table, want, "{service}");
        }
    }

    fn one<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn incremental_api() {
        let node = NodeInfo::new("node-a", None);
        let svc: Service = one(WEB);
        let slice: EndpointSlice = one(WEB_SLICE);
        let other: EndpointSlice = one(r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: x-1, namespace: demo, labels: {kubernetes.io/service-name: x}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
"#);
        assert_eq!(
            slice_service(&slice),
            Some(("demo".to_owned(), "web".to_owned()))
        );
        assert_eq!(slice_problems(&slice), vec![]);
        // Slices of other services passed by mistake are skipped.
        let built = build_service(&svc, &[&slice, &other], &node);
        assert!(built.accepted());
        assert_eq!(
            built,
            ServiceBuild {
                entries: vec![(
                    fe("10.96.0.10", 80, Protocol::Tcp),
                    entry("demo", "web", "http", &["10.0.0.1:8080", "10.0.0.2:8080"])
                )],
                problems: vec![],
                ignored: false,
            }
        );

        let ignored: Service = one(
            "kind: Service\napiVersion: v1\nmetadata: {name: i}\nspec: {type: ExternalName, externalName: x.example}\n",
        );
        let b = build_service(&ignored, &[], &node);
        assert!(b.ignored && b.entries.is_empty() && b.problems.is_empty());

        let rejected: Service = one(
            "kind: Service\napiVersion: v1\nmetadata: {name: r}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
        );
        let b = build_service(&rejected, &[], &node);
        assert!(!b.ignored && !b.accepted() && b.entries.is_empty());
        assert_eq!(
            b.problems,
            vec![ProblemKind::InvalidClusterIp("10.96.0.300".into())]
        );

        let unlabelled: EndpointSlice = one(
            "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {name: u}\naddressType: IPv4\n",
        );
        assert_eq!(slice_service(&unlabelled), None);
        assert_eq!(
            slice_problems(&unlabelled),
            vec![ProblemKind::MissingServiceNameLabel]
        );
        let other_proxy: EndpointSlice = one(
            "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {name: o, labels: {kubernetes.io/service-name: web, service.kubernetes.io/service-proxy-name: x}}\naddressType: IPX\n",
        );
        assert_eq!(slice_service(&other_proxy), None);
        assert_eq!(slice_problems(&other_proxy), vec![]);
    }

    fn reasons(ex: &Explanation) -> Vec<(String, Option<u16>, bool, Option<NotUsed>)> {
        ex.endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.port, e.used, e.reason.clone()))
            .collect()
    }

    #[test]
    fn explain_lists_every_endpoint_with_the_reason() {
        let (services, slices) = parse_objects(
            r#"
kind: Service
apiVersion: v1
metadata: {name: x, namespace: n}
spec:
  clusterIP: 10.96.10.1
  clusterIPs: [10.96.10.1]
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: x-a, namespace: n, labels: {kubernetes.io/service-name: x}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], zone: a, hints: {forZones: [{name: a}]}}
- {addresses: [10.0.0.2], zone: b, hints: {forZones: [{name: b}]}}
- {addresses: [10.0.0.3], conditions: {ready: false}}
- {addresses: [10.0.0.4], conditions: {ready: false, serving: true, terminating: true}}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: x-b, namespace: n, labels: {kubernetes.io/service-name: x}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], zone: a, hints: {forZones: [{name: a}]}}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: x-c, namespace: n, labels: {kubernetes.io/service-name: x}}
addressType: IPv4
ports: [{name: other, port: 9999}]
endpoints: [{addresses: [10.0.0.5]}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: x-d, namespace: n, labels: {kubernetes.io/service-name: x}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["fd00::6"]}]
"#,
        );
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        let node = NodeInfo::new("node-a", Some("a".into()));
        let frontend = fe("10.96.10.1", 80, Protocol::Tcp);
        let ex = explain(&services[0], &refs, &node, &frontend);
        assert_eq!(ex.status, FrontendStatus::Active);
        assert_eq!(ex.policy, Some(TrafficPolicy::Cluster));
        assert_eq!(ex.topology, Some(Topology::PreferSameZone));
        assert_eq!(ex.traffic_distribution.as_deref(), Some("PreferClose"));
        assert!(!ex.terminating_fallback);
        assert_eq!(ex.backends, vec!["10.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            reasons(&ex),
            vec![
                ("10.0.0.1".into(), Some(8080), true, None),
                (
                    "10.0.0.2".into(),
                    Some(8080),
                    false,
                    Some(NotUsed::HintMismatch)
                ),
                (
                    "10.0.0.3".into(),
                    Some(8080),
                    false,
                    Some(NotUsed::NotReady)
                ),
                (
                    "10.0.0.4".into(),
                    Some(8080),
                    false,
                    Some(NotUsed::Terminating)
                ),
                (
                    "10.0.0.1".into(),
                    Some(8080),
                    false,
                    Some(NotUsed::DuplicateOf {
                        slice: "x-a".into()
                    })
                ),
                (
                    "10.0.0.5".into(),
                    None,
                    false,
                    Some(NotUsed::PortNameNotFound)
                ),
                ("fd00::6".into(), None, false, Some(NotUsed::WrongFamily)),
            ]
        );
        assert!(ex.rule.contains("PreferSameZone"), "{}", ex.rule);
        // The explanation agrees with the table.
        let built = build_service(&services[0], &refs, &node);
        assert_eq!(built.entries[0].1.backends, ex.backends);

        // Not a frontend of the service, and ignored / rejected services.
        let ex = explain(
            &services[0],
            &refs,
            &node,
            &fe("10.96.10.1", 81, Protocol::Tcp),
        );
        assert_eq!(ex.status, FrontendStatus::NoSuchFrontend);
        assert!(ex.endpoints.is_empty());
        let ignored: Service = one(
            "kind: Service\napiVersion: v1\nmetadata: {name: x, namespace: n}\nspec: {clusterIP: None}\n",
        );
        assert_eq!(
            explain(&ignored, &refs, &node, &frontend).status,
            FrontendStatus::ServiceIgnored
        );
        let rejected: Service = one(
            "kind: Service\napiVersion: v1\nmetadata: {name: x, namespace: n}\nspec: {clusterIP: 10.96.10.1, sessionAffinity: Sticky, ports: [{name: http, port: 80}]}\n",
        );
        let ex = explain(&rejected, &refs, &node, &frontend);
        assert_eq!(ex.status, FrontendStatus::ServiceRejected);
        assert_eq!(
            ex.problems,
            vec!["Service n/x: invalid sessionAffinity \"Sticky\" (expected None or ClientIP)"]
        );
    }

    #[test]
    fn explain_local_policy_and_fallbacks() {
        let (services, slices) = parse_objects(&with(&[
            LOCAL_SVC,
            &cond_slice(
                r#"
- {addresses: [10.0.0.1], nodeName: node-b}
- {addresses: [10.0.0.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], nodeName: node-a, conditions: {ready: false, serving: false, terminating: true}}
"#,
            ),
        ]));
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        let node = NodeInfo::new("node-a", None);
        let ex = explain(
            &services[0],
            &refs,
            &node,
            &fe("10.96.0.90", 80, Protocol::Tcp),
        );
        assert_eq!(ex.policy, Some(TrafficPolicy::Local));
        assert!(ex.terminating_fallback);
        assert_eq!(
            reasons(&ex),
            vec![
                ("10.0.0.1".into(), Some(80), false, Some(NotUsed::OtherNode)),
                ("10.0.0.2".into(), Some(80), true, None),
                (
                    "10.0.0.3".into(),
                    Some(80),
                    false,
                    Some(NotUsed::Terminating)
                ),
            ]
        );
        // From a node without endpoints: dropped.
        let ex = explain(
            &services[0],
            &refs,
            &NodeInfo::new("node-c", None),
            &fe("10.96.0.90", 80, Protocol::Tcp),
        );
        assert_eq!(ex.no_endpoints, Some(NoEndpoints::Drop));
        assert!(ex.rule.contains("dropped"), "{}", ex.rule);
    }
}
