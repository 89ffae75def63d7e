//! Validation: a Service or EndpointSlice in, the parts the model uses (or its problems) out.

use std::collections::BTreeSet;
use std::net::IpAddr;

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
    pub(super) name: &'a str,
    pub(super) port: u16,
    pub(super) protocol: Protocol,
    pub(super) target: TargetPort<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ValidService<'a> {
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) vips: Vec<IpAddr>,
    /// Valid, deduplicated, none equal to a cluster IP.
    pub(super) external_ips: Vec<IpAddr>,
    pub(super) ports: Vec<ValidPort<'a>>,
    pub(super) affinity_timeout_s: Option<u32>,
    pub(super) local: bool,
}

impl<'a> ValidService<'a> {
    pub(super) fn frontends(
        &self,
    ) -> impl Iterator<Item = (Frontend, &ValidPort<'a>, FrontendKind)> + '_ {
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
