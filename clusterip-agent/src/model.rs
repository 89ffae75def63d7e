//! The model: Kubernetes Services and EndpointSlices in, the [`DesiredTable`] out.
//!
//! Pure: no I/O, no clock, no logging. The caller (the manifest source today, a kube-rs watcher
//! later) logs the [`Problem`]s. The semantics are kube-proxy's (kubernetes `pkg/proxy`:
//! `servicechangetracker.go`/`serviceport.go`, `endpointslicecache.go`, `topology.go` and the
//! iptables proxier's REJECT/DROP choice):
//!
//! * **Frontends**: one per (cluster IP, ServicePort). The cluster IPs are `spec.clusterIPs`
//!   (both families; falls back to `spec.clusterIP`). Types ClusterIP, NodePort and LoadBalancer
//!   all get their cluster IP frontends (node ports and load balancer IPs are not handled here).
//!   Protocols TCP and UDP (absent = TCP); SCTP ports are skipped with a warning.
//! * **Ignored silently**: type ExternalName, headless services (`clusterIP: None`), services
//!   without a cluster IP, and services labelled `service.kubernetes.io/service-proxy-name`
//!   (they belong to another proxy).
//! * **Endpoints**: the EndpointSlices labelled `kubernetes.io/service-name: <service>` in the
//!   service's namespace, IPv4 slices for IPv4 VIPs and IPv6 slices for IPv6 VIPs (FQDN slices
//!   are ignored). Several slices are merged; only `addresses[0]` of an endpoint is used; an
//!   endpoint that appears in several slices (same IP and port) is used once, preferring a
//!   copy on this node (as kube-proxy does). See [`build_table`] for how the backend port is
//!   found.
//! * **Conditions** (nil ready = true, nil serving = true, nil terminating = false, as the API
//!   documents and kube-proxy implements): ready endpoints are used; if there is none, the
//!   endpoints that are serving *and* terminating; never the others.
//! * **internalTrafficPolicy: Local**: the same rule applied to the endpoints on `node_name`
//!   (ready local ones, else serving-and-terminating local ones). No local endpoint while the
//!   service has usable endpoints elsewhere → no backends and [`NoEndpoints::Drop`]; no usable
//!   endpoint anywhere → [`NoEndpoints::Reject`] (the iptables proxier's "has no endpoints"
//!   REJECT wins over its "has no local endpoints" DROP).
//! * **Session affinity** ClientIP: `sessionAffinityConfig.clientIP.timeoutSeconds`, default
//!   10800 s (valid: 1..=86400).
//! * **Validation**: an invalid object yields a [`Problem`] and contributes nothing; everything
//!   else is unaffected. Two services claiming the same frontend: the one that comes first in
//!   the input keeps it, the later one is rejected as a whole.
//! * Not implemented (no effect): topology hints / trafficDistribution (the agent does not know
//!   its zone), externalIPs, node ports, load balancer IPs, externalTrafficPolicy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::table::{DesiredTable, Frontend, NoEndpoints, Protocol, ServiceEntry, ServiceRef};

/// Label joining an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Services with this label (any value) are handled by another proxy and ignored.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// ClientIP affinity timeout when the service does not set one (kube-proxy's default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// Largest valid ClientIP affinity timeout (API validation).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86400;
/// Namespace of an object without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of object the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
        })
    }
}

/// Names one object: kind, namespace, name. Displays as `Service demo/web`.
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
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
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
            ProblemKind::UnsupportedSctp { .. } | ProblemKind::UnknownService { .. } => {
                Severity::Warning
            }
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

/// Computes the desired table for this node from all Services and EndpointSlices.
///
/// `services` order matters only for duplicate frontends: the service that comes first keeps a
/// frontend, later ones claiming it are rejected (callers put established services first).
/// `node_name` selects the endpoints of `internalTrafficPolicy: Local` services.
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
pub fn build_table(services: &[Service], slices: &[EndpointSlice], node_name: &str) -> ModelOutput {
    let mut problems = Vec::new();

    // Every named service, accepted or not: a slice for one of them is not "unknown".
    let known_services: HashSet<(&str, &str)> = services
        .iter()
        .map(|s| ns_name(&s.metadata))
        .filter(|(_, name)| !name.is_empty())
        .collect();

    // Services: validate, then claim frontends in input order.
    let mut claimed: HashMap<Frontend, String> = HashMap::new();
    let mut accepted: Vec<ValidService<'_>> = Vec::new();
    for svc in services {
        let object = ObjectRef::of_service(svc);
        let (valid, kinds) = validate_service(svc);
        let rejected = kinds.iter().any(|k| k.severity() == Severity::Error);
        problems.extend(kinds.into_iter().map(|kind| Problem {
            object: object.clone(),
            kind,
        }));
        let Some(valid) = valid else { continue };
        if rejected {
            continue;
        }
        let conflicts: Vec<ProblemKind> = valid
            .frontends()
            .filter_map(|(fe, _)| {
                claimed
                    .get(&fe)
                    .map(|owner| ProblemKind::DuplicateFrontend {
                        frontend: fe,
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
        let owner = format!("{}/{}", valid.namespace, valid.name);
        for (fe, _) in valid.frontends() {
            claimed.insert(fe, owner.clone());
        }
        accepted.push(valid);
    }

    // Slices: validate, group by service.
    let mut by_service: HashMap<(&str, &str), Vec<ValidSlice<'_>>> = HashMap::new();
    for slice in slices {
        let object = ObjectRef::of_slice(slice);
        match validate_slice(slice) {
            Err(kinds) => problems.extend(kinds.into_iter().map(|kind| Problem {
                object: object.clone(),
                kind,
            })),
            Ok(None) => {}
            Ok(Some(valid)) => {
                let key = (valid.namespace, valid.service);
                if !known_services.contains(&key) {
                    problems.push(Problem {
                        object,
                        kind: ProblemKind::UnknownService {
                            namespace: key.0.to_owned(),
                            name: key.1.to_owned(),
                        },
                    });
                }
                by_service.entry(key).or_default().push(valid);
            }
        }
    }
    for group in by_service.values_mut() {
        // Deterministic merge order whatever the input order (stable: equal names keep order).
        group.sort_by(|a, b| a.name.cmp(b.name));
    }

    let mut table = DesiredTable::default();
    for svc in &accepted {
        let group = by_service
            .get(&(svc.namespace, svc.name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (frontend, port) in svc.frontends() {
            let entry = service_entry(svc, port, frontend.vip, group, node_name);
            table.services.insert(frontend, entry);
        }
    }

    ModelOutput { table, problems }
}

/// The metadata namespace (default "default") and name (default "").
fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    let ns = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    (ns, meta.name.as_deref().unwrap_or(""))
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

#[derive(Debug)]
struct ValidService<'a> {
    namespace: &'a str,
    name: &'a str,
    vips: Vec<IpAddr>,
    ports: Vec<ValidPort<'a>>,
    affinity_timeout_s: Option<u32>,
    local: bool,
}

impl<'a> ValidService<'a> {
    fn frontends(&self) -> impl Iterator<Item = (Frontend, &ValidPort<'a>)> + '_ {
        self.vips.iter().flat_map(move |&vip| {
            self.ports.iter().map(move |p| {
                (
                    Frontend {
                        vip,
                        port: p.port,
                        protocol: p.protocol,
                    },
                    p,
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

/// Returns the service if the model uses it (None: ignored or invalid) and its problems; the
/// service must not be used if any problem is an error.
fn validate_service(svc: &Service) -> (Option<ValidService<'_>>, Vec<ProblemKind>) {
    let mut problems = Vec::new();
    let (namespace, name) = ns_name(&svc.metadata);
    let proxied_elsewhere = svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME));
    let Some(spec) = svc.spec.as_ref() else {
        return (None, problems);
    };
    if proxied_elsewhere {
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
        endpoints.push(ValidEndpoint {
            ip,
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.as_deref(),
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

#[derive(Clone, Copy, Debug)]
struct EndpointState {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl EndpointState {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The entry for one frontend of an accepted service.
fn service_entry(
    svc: &ValidService<'_>,
    port: &ValidPort<'_>,
    vip: IpAddr,
    group: &[ValidSlice<'_>],
    node_name: &str,
) -> ServiceEntry {
    let matches =
        |p: &ValidSlicePort<'_>, name: &str| p.name == name && p.protocol == Some(port.protocol);
    let by_name = group
        .iter()
        .any(|s| s.ports.iter().any(|p| matches(p, port.name)));

    // (IP, port) -> state; BTreeMap: sorted and deduplicated.
    let mut endpoints: BTreeMap<SocketAddr, EndpointState> = BTreeMap::new();
    for slice in group.iter().filter(|s| s.ipv6 == vip.is_ipv6()) {
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
            continue;
        };
        for ep in &slice.endpoints {
            let local = !node_name.is_empty() && ep.node_name == Some(node_name);
            let state = EndpointState {
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                local,
            };
            let addr = SocketAddr::new(ep.ip, backend_port);
            // kube-proxy: the first copy wins, unless a later one is local.
            if local || !endpoints.contains_key(&addr) {
                endpoints.insert(addr, state);
            }
        }
    }

    let pick = |only_local: bool| -> Vec<SocketAddr> {
        let candidates = || {
            endpoints
                .iter()
                .filter(move |(_, s)| !only_local || s.local)
        };
        let ready: Vec<SocketAddr> = candidates()
            .filter(|(_, s)| s.ready)
            .map(|(a, _)| *a)
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates()
            .filter(|(_, s)| s.serving_terminating())
            .map(|(a, _)| *a)
            .collect()
    };
    let usable_anywhere = pick(false);
    let (backends, no_endpoints) = if !svc.local {
        (usable_anywhere, NoEndpoints::Reject)
    } else {
        let local = pick(true);
        if local.is_empty() && !usable_anywhere.is_empty() {
            (local, NoEndpoints::Drop)
        } else {
            (local, NoEndpoints::Reject)
        }
    };

    ServiceEntry {
        service: ServiceRef {
            namespace: svc.namespace.to_owned(),
            name: svc.name.to_owned(),
            port_name: port.name.to_owned(),
        },
        backends,
        affinity_timeout_s: svc.affinity_timeout_s,
        no_endpoints,
    }
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
        let (services, slices) = parse_objects(yaml);
        build_table(&services, &slices, node)
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
}
