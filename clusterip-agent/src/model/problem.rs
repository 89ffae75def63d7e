//! What can be wrong with an object, and how objects are named in reports.

use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::table::{Frontend, Protocol};
use super::{LABEL_SERVICE_NAME, ns_name};

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
    #[error("{field} {node_port} is outside 1..=65535")]
    InvalidNodePort { field: String, node_port: i32 },
    /// A node port (with its protocol) claimed twice: by two ports of one service, or by two
    /// services (the one holding it keeps it).
    #[error("{field} {node_port}/{protocol} is already used by {owner}")]
    DuplicateNodePort {
        /// `spec.ports[i].nodePort` of the claimant.
        field: String,
        node_port: u16,
        protocol: Protocol,
        /// `Service namespace/name`, or the other port of the same service.
        owner: String,
    },
    #[error("{field} {value:?} is not an IP range (CIDR)")]
    InvalidSourceRange { field: String, value: String },
    #[error("{field} {value:?} is not an IP address")]
    InvalidLoadBalancerIp { field: String, value: String },
    #[error("spec.healthCheckNodePort {0} is outside 1..=65535")]
    InvalidHealthCheckNodePort(i32),
    #[error("invalid externalTrafficPolicy {0:?} (expected Cluster or Local)")]
    InvalidExternalTrafficPolicy(String),
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
