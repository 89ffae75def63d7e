//! Validation: a Service or EndpointSlice in, the parts the model uses (or its problems) out.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::table::{Frontend, FrontendKind, Protocol};
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TargetPort<'a> {
    Number(u16),
    Name(&'a str),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ValidPort<'a> {
    /// Its index in `spec.ports` (problems name the field by it).
    pub(super) index: u32,
    pub(super) name: &'a str,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
    pub(super) target: TargetPort<'a>,
    /// `nodePort`; None when absent or 0 (kube-proxy: no node port).
    pub(super) node_port: Option<u16>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ValidService<'a> {
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) vips: Vec<IpAddr>,
    /// Valid, deduplicated, none equal to a cluster IP, each of a family the service has a
    /// cluster IP of (kube-proxy's proxier of a family skips a service without a cluster IP
    /// of that family, external IPs and all).
    pub(super) external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of the VIP-mode ingresses (no `ipMode`, or `VIP`),
    /// same rules as `external_ips`.
    pub(super) lb_ips: Vec<IpAddr>,
    pub(super) ports: Vec<ValidPort<'a>>,
    pub(super) affinity_timeout_s: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub(super) local: bool,
    /// `externalTrafficPolicy: Local` on an externally accessible service (kube-proxy's
    /// `ExternalPolicyLocal`: type NodePort or LoadBalancer, or ClusterIP with external IPs).
    pub(super) external_local: bool,
    /// `spec.loadBalancerSourceRanges`, trimmed, masked to their prefix, sorted, without
    /// duplicates, both families.
    pub(super) source_ranges: Vec<IpNet>,
    /// `spec.healthCheckNodePort` of a LoadBalancer service with `externalTrafficPolicy:
    /// Local` (kube-proxy's `NeedsHealthCheck`); None otherwise, or when 0.
    pub(super) health_check_node_port: Option<u16>,
}

impl<'a> ValidService<'a> {
    /// The frontends, in this order: cluster IPs, external IPs, load-balancer IPs (each × the
    /// ports), then each of `node_addresses` of a family the service has a cluster IP of × the
    /// ports with a node port. A frontend that comes again (an external IP that is also a
    /// node address, with a node port equal to the port) is kept only the first time.
    pub(super) fn frontends(
        &self,
        node_addresses: &[IpAddr],
    ) -> Vec<(Frontend, &ValidPort<'a>, FrontendKind)> {
        let on_address = |vip: IpAddr, kind: FrontendKind| {
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
        };
        let node_ports = node_addresses
            .iter()
            .filter(|a| self.has_family(**a))
            .flat_map(|&address| {
                self.ports.iter().filter_map(move |p| {
                    let node_port = p.node_port?;
                    Some((
                        Frontend {
                            vip: address,
                            port: node_port,
                            protocol: p.protocol,
                        },
                        p,
                        FrontendKind::NodePort,
                    ))
                })
            });
        let mut seen = HashSet::new();
        self.vips
            .iter()
            .flat_map(|&v| on_address(v, FrontendKind::ClusterIp))
            .chain(
                self.external_ips
                    .iter()
                    .flat_map(|&v| on_address(v, FrontendKind::ExternalIp)),
            )
            .chain(
                self.lb_ips
                    .iter()
                    .flat_map(|&v| on_address(v, FrontendKind::LoadBalancer)),
            )
            .chain(node_ports)
            .filter(|(fe, _, _)| seen.insert(*fe))
            .collect()
    }

    /// Whether the service has a cluster IP of `addr`'s family.
    pub(super) fn has_family(&self, addr: IpAddr) -> bool {
        self.vips.iter().any(|v| v.is_ipv4() == addr.is_ipv4())
    }
}

pub(super) fn parse_protocol(
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

pub(super) fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Returns the service if the model uses it (None: ignored) and its problems; the service must
/// not be used if any problem is an error.
pub(super) fn validate_service(svc: &Service) -> (Option<ValidService<'_>>, Vec<ProblemKind>) {
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

    let has_family = |addr: &IpAddr| vips.iter().any(|v| v.is_ipv4() == addr.is_ipv4());
    let mut external_ips: Vec<IpAddr> = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        match ip.parse::<IpAddr>() {
            Ok(addr) => {
                if has_family(&addr) && !vips.contains(&addr) && !external_ips.contains(&addr) {
                    external_ips.push(addr);
                }
            }
            Err(_) => problems.push(ProblemKind::InvalidExternalIp(ip.clone())),
        }
    }

    // kube-proxy's newBaseServiceInfo: an ingress without an IP (hostname only) or whose
    // ipMode is not VIP (Proxy: the load balancer proxies, KEP-1860) is not programmed,
    // whatever the service's type.
    let mut lb_ips: Vec<IpAddr> = Vec::new();
    let ingresses = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingresses.into_iter().flatten().enumerate() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(addr) => {
                if has_family(&addr)
                    && !vips.contains(&addr)
                    && !external_ips.contains(&addr)
                    && !lb_ips.contains(&addr)
                {
                    lb_ips.push(addr);
                }
            }
            Err(_) => problems.push(ProblemKind::InvalidLoadBalancerIp {
                field: format!("status.loadBalancer.ingress[{i}].ip"),
                value: ip.to_owned(),
            }),
        }
    }

    // Trimmed, as kube-proxy does ("validation mistakenly allows whitespace padding"); empty
    // entries are ignored as kube-proxy ignores them. An invalid one rejects the service:
    // kube-proxy would skip it, and a list left with no valid range would open the load
    // balancer to every source.
    let mut source_ranges: Vec<IpNet> = Vec::new();
    for (i, range) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let trimmed = range.trim();
        if trimmed.is_empty() {
            continue;
        }
        match trimmed.parse::<IpNet>() {
            Ok(net) => source_ranges.push(net.trunc()),
            Err(_) => problems.push(ProblemKind::InvalidSourceRange {
                field: format!("spec.loadBalancerSourceRanges[{i}]"),
                value: range.clone(),
            }),
        }
    }
    source_ranges.sort();
    source_ranges.dedup();

    let mut ports: Vec<ValidPort<'_>> = Vec::new();
    for (index, sp) in spec.ports.iter().flatten().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
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
        // kube-proxy programs a node port whatever the type (the API server clears the node
        // ports of a service that becomes ClusterIP); 0 is none.
        let node_port = match sp.node_port {
            None | Some(0) => None,
            Some(n) => match port_number(n) {
                Some(p) => Some(p),
                None => {
                    problems.push(ProblemKind::InvalidNodePort {
                        field: format!("spec.ports[{index}].nodePort"),
                        node_port: n,
                    });
                    continue;
                }
            },
        };
        if ports
            .iter()
            .any(|p| p.port == port && p.protocol == protocol)
        {
            problems.push(ProblemKind::DuplicatePort { port, protocol });
            continue;
        }
        if let Some(np) = node_port
            && let Some(other) = ports
                .iter()
                .find(|p| p.node_port == Some(np) && p.protocol == protocol)
        {
            problems.push(ProblemKind::DuplicateNodePort {
                field: format!("spec.ports[{index}].nodePort"),
                node_port: np,
                protocol,
                owner: format!("spec.ports[{}] of the same Service", other.index),
            });
            continue;
        }
        ports.push(ValidPort {
            index,
            name: port_name,
            port,
            protocol,
            target,
            node_port,
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

    // kube-proxy's ExternallyAccessible / ExternalPolicyLocal / NeedsHealthCheck
    // (pkg/api/v1/service/util.go): the type as written (absent is ClusterIP), the external
    // IPs as listed.
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
        || (type_ == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|e| !e.is_empty()));
    let external_policy_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(ProblemKind::InvalidExternalTrafficPolicy(other.to_owned()));
            false
        }
    };
    let external_local = externally_accessible && external_policy_local;
    let health_check_node_port = if type_ == "LoadBalancer" && external_local {
        match spec.health_check_node_port {
            // kube-proxy logs "Service has no healthcheck nodeport" and serves none.
            None | Some(0) => None,
            Some(n) => match port_number(n) {
                Some(p) => Some(p),
                None => {
                    problems.push(ProblemKind::InvalidHealthCheckNodePort(n));
                    None
                }
            },
        }
    } else {
        None
    };

    (
        Some(ValidService {
            namespace,
            name,
            vips,
            external_ips,
            lb_ips,
            ports,
            affinity_timeout_s,
            local,
            external_local,
            source_ranges,
            health_check_node_port,
        }),
        problems,
    )
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ValidSlicePort<'a> {
    pub(super) name: &'a str,
    pub(super) port: Option<u16>,
    /// None: SCTP (valid, matches no frontend).
    pub(super) protocol: Option<Protocol>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ValidEndpoint<'a> {
    pub(super) ip: IpAddr,
    pub(super) ready: bool,
    pub(super) serving: bool,
    pub(super) terminating: bool,
    pub(super) node_name: Option<&'a str>,
    pub(super) zone: Option<&'a str>,
    pub(super) zone_hints: BTreeSet<&'a str>,
    pub(super) node_hints: BTreeSet<&'a str>,
}

impl ValidEndpoint<'_> {
    pub(super) fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    pub(super) fn is_local(&self, node: &NodeInfo) -> bool {
        !node.name.is_empty() && self.node_name == Some(node.name.as_str())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ValidSlice<'a> {
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) service: &'a str,
    pub(super) ipv6: bool,
    pub(super) ports: Vec<ValidSlicePort<'a>>,
    pub(super) endpoints: Vec<ValidEndpoint<'a>>,
}

/// Ok(None): a valid slice the model does not use (FQDN).
pub(super) fn validate_slice(
    slice: &EndpointSlice,
) -> Result<Option<ValidSlice<'_>>, Vec<ProblemKind>> {
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
