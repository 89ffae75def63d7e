//! Services and EndpointSlices as the model reads them, checked once and kept compactly.
//!
//! A source turns each object into a [`ServiceObject`] or [`SliceObject`] as soon as it has
//! it: the checks run then ([`validate_service`], [`validate_slice`]), their verdict and
//! problems are kept, and of a usable object only what [`super::build`] reads: addresses
//! parsed, conditions as bits, each endpoint's node, zone and hints shared between the
//! endpoints of a slice that have the same ones. 10,000 Services with a slice of 10
//! endpoints each take 11 MB this way in the store, indexes included, against 17 MB as the
//! compact JSON it kept before and 50-60 MB as k8s-openapi objects (`store::tests::scale`).
//! The borrowed views ([`ServiceObject::valid`], [`SliceObject::valid`]) are exactly what the
//! checks return for the original object (the randomized tests below hold them to it), so
//! the model decides the same from either.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::problem::{ObjectKind, ObjectRef, ProblemKind, Severity};
use super::table::{Frontend, Protocol};
use super::validate::{
    TargetPort, ValidEndpoint, ValidPort, ValidService, ValidSlice, ValidSlicePort,
    validate_service, validate_slice,
};
use super::{LABEL_SERVICE_NAME, not_ours, ns_name};

/// `namespace/name` of an object, in one shared allocation: the store names an object in
/// several maps, and a table entry names its Service, all through clones of this.
#[derive(Clone)]
pub struct Key(Arc<str>);

impl Key {
    /// Neither part may contain a `/` in Kubernetes; the namespace is the part before the
    /// first one.
    pub fn new(namespace: &str, name: &str) -> Self {
        Key(Arc::from(format!("{namespace}/{name}")))
    }

    /// The key of an object's metadata (namespace "default" when unset, name "" when
    /// missing), as the model names it.
    pub fn of(meta: &ObjectMeta) -> Self {
        let (namespace, name) = ns_name(meta);
        Key::new(namespace, name)
    }

    pub fn namespace(&self) -> &str {
        self.split().0
    }

    pub fn name(&self) -> &str {
        self.split().1
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many holders share this allocation (the store drops interned keys nobody else
    /// holds).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    fn split(&self) -> (&str, &str) {
        self.0.split_once('/').unwrap_or(("", &self.0))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (*self.0).hash(h);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self.0).cmp(&*other.0)
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A Service, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceObject {
    key: Key,
    /// What the checks found (warnings, and errors when rejected).
    problems: Box<[ProblemKind]>,
    state: ServiceState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ServiceState {
    /// Not this proxy's: ExternalName, headless, no cluster IP, another proxy's.
    Ignored,
    /// An error: it contributes nothing.
    Rejected,
    Accepted(Box<ServiceSpec>),
}

/// What the model reads of an accepted Service ([`ValidService`], owned).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceSpec {
    vips: Box<[IpAddr]>,
    external_ips: Box<[IpAddr]>,
    lb_ips: Box<[IpAddr]>,
    ports: Box<[PortSpec]>,
    affinity_timeout_s: Option<u32>,
    local: bool,
    external_local: bool,
    source_ranges: Box<[IpNet]>,
    health_check_node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortSpec {
    index: u32,
    name: Box<str>,
    port: u16,
    protocol: Protocol,
    target: Target,
    node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Number(u16),
    Name(Box<str>),
}

impl ServiceObject {
    pub fn new(svc: &Service) -> Self {
        let (namespace, name) = ns_name(&svc.metadata);
        let key = Key::new(namespace, name);
        let (valid, problems) = validate_service(svc);
        let rejected = problems.iter().any(|p| p.severity() == Severity::Error);
        let state = match valid {
            None => ServiceState::Ignored,
            Some(_) if rejected => ServiceState::Rejected,
            Some(v) => ServiceState::Accepted(Box::new(ServiceSpec {
                vips: v.vips.into(),
                external_ips: v.external_ips.into(),
                lb_ips: v.lb_ips.into(),
                ports: v
                    .ports
                    .iter()
                    .map(|p| PortSpec {
                        index: p.index,
                        name: p.name.into(),
                        port: p.port,
                        protocol: p.protocol,
                        target: match p.target {
                            TargetPort::Number(n) => Target::Number(n),
                            TargetPort::Name(n) => Target::Name(n.into()),
                        },
                        node_port: p.node_port,
                    })
                    .collect(),
                affinity_timeout_s: v.affinity_timeout_s,
                local: v.local,
                external_local: v.external_local,
                source_ranges: v.source_ranges.into(),
                health_check_node_port: v.health_check_node_port,
            })),
        };
        ServiceObject {
            key,
            problems: problems.into(),
            state,
        }
    }

    /// `namespace/name` (namespace "default" when unset, name "" when missing).
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::Service, self.key.namespace(), self.key.name())
    }

    pub fn problems(&self) -> &[ProblemKind] {
        &self.problems
    }

    /// Not this proxy's (see [`super::ServiceBuild::ignored`]).
    pub fn ignored(&self) -> bool {
        self.state == ServiceState::Ignored
    }

    /// The parts the model reads, as [`validate_service`] returns them; None unless
    /// accepted.
    pub(super) fn valid(&self) -> Option<ValidService<'_>> {
        let ServiceState::Accepted(spec) = &self.state else {
            return None;
        };
        Some(ValidService {
            namespace: self.key.namespace(),
            name: self.key.name(),
            vips: spec.vips.to_vec(),
            external_ips: spec.external_ips.to_vec(),
            lb_ips: spec.lb_ips.to_vec(),
            ports: spec
                .ports
                .iter()
                .map(|p| ValidPort {
                    index: p.index,
                    name: &p.name,
                    port: p.port,
                    protocol: p.protocol,
                    target: match &p.target {
                        Target::Number(n) => TargetPort::Number(*n),
                        Target::Name(n) => TargetPort::Name(n),
                    },
                    node_port: p.node_port,
                })
                .collect(),
            affinity_timeout_s: spec.affinity_timeout_s,
            local: spec.local,
            external_local: spec.external_local,
            source_ranges: spec.source_ranges.to_vec(),
            health_check_node_port: spec.health_check_node_port,
        })
    }

    /// The cluster IPs of an accepted service (for tests and reports).
    pub fn cluster_ips(&self) -> &[IpAddr] {
        match &self.state {
            ServiceState::Accepted(spec) => &spec.vips,
            _ => &[],
        }
    }

    fn spec(&self) -> Option<&ServiceSpec> {
        match &self.state {
            ServiceState::Accepted(spec) => Some(spec),
            _ => None,
        }
    }

    /// The frontends of an accepted service's cluster, external and load-balancer IPs (none
    /// otherwise), in the order [`super::build`] gives them: they do not depend on slices nor
    /// on the node. Its node ports are [`ServiceObject::node_ports`].
    pub fn frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        let mut seen = std::collections::HashSet::new();
        self.spec()
            .into_iter()
            .flat_map(|spec| {
                spec.vips
                    .iter()
                    .chain(spec.external_ips.iter())
                    .chain(spec.lb_ips.iter())
                    .flat_map(|&vip| {
                        spec.ports.iter().map(move |p| Frontend {
                            vip,
                            port: p.port,
                            protocol: p.protocol,
                        })
                    })
            })
            .filter(move |fe| seen.insert(*fe))
    }

    /// The node ports an accepted service claims on every node address (none otherwise):
    /// `(index in spec.ports, node port, protocol)`. Which addresses they are on is the
    /// node's business ([`super::NodeInfo::node_port_addresses`]); two services claiming
    /// one conflict whatever the addresses.
    pub fn node_ports(&self) -> impl Iterator<Item = (u32, u16, Protocol)> + '_ {
        self.spec().into_iter().flat_map(|spec| {
            spec.ports
                .iter()
                .filter_map(|p| Some((p.index, p.node_port?, p.protocol)))
        })
    }
}

/// An EndpointSlice, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceObject {
    key: Key,
    /// `namespace/name` of the Service it feeds ([`super::slice_service`]).
    service: Option<Key>,
    /// What the checks found ([`super::slice_problems`]); a slice with any contributes nothing.
    problems: Box<[ProblemKind]>,
    use_: SliceUse,
    ports: Box<[SlicePortSpec]>,
    endpoints: Box<[EndpointSpec]>,
    /// The node, zone and hints of the endpoints, each distinct combination once.
    topologies: Box<[TopologySpec]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SliceUse {
    /// Not this proxy's (labelled headless or for another proxy), or rejected.
    Unused,
    /// A valid FQDN slice: kube-proxy does not use those.
    Fqdn,
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SlicePortSpec {
    name: Box<str>,
    port: Option<u16>,
    protocol: Option<Protocol>,
}

/// One endpoint in 24 bytes: its first address, its conditions, and its topology by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointSpec {
    ip: IpAddr,
    conditions: u8,
    /// Index into [`SliceObject::topologies`]; [`NO_TOPOLOGY`] when it has none.
    topology: u32,
}

const READY: u8 = 1;
const SERVING: u8 = 2;
const TERMINATING: u8 = 4;
const NO_TOPOLOGY: u32 = u32::MAX;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct TopologySpec {
    node_name: Option<Box<str>>,
    zone: Option<Box<str>>,
    /// Sorted, without duplicates (as the [`BTreeSet`]s of [`ValidEndpoint`]).
    zone_hints: Box<[Box<str>]>,
    node_hints: Box<[Box<str>]>,
}

impl SliceObject {
    pub fn new(slice: &EndpointSlice) -> Self {
        let (namespace, name) = ns_name(&slice.metadata);
        let mut object = SliceObject {
            key: Key::new(namespace, name),
            service: None,
            problems: Box::default(),
            use_: SliceUse::Unused,
            ports: Box::default(),
            endpoints: Box::default(),
            topologies: Box::default(),
        };
        if not_ours(&slice.metadata) {
            return object;
        }
        object.service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .filter(|s| !s.is_empty())
            .map(|s| Key::new(namespace, s));
        let valid = match validate_slice(slice) {
            Err(problems) => {
                object.problems = problems.into();
                return object;
            }
            Ok(None) => {
                object.use_ = SliceUse::Fqdn;
                return object;
            }
            Ok(Some(v)) => v,
        };
        object.use_ = if valid.ipv6 {
            SliceUse::Ipv6
        } else {
            SliceUse::Ipv4
        };
        object.ports = valid
            .ports
            .iter()
            .map(|p| SlicePortSpec {
                name: p.name.into(),
                port: p.port,
                protocol: p.protocol,
            })
            .collect();
        let mut topologies: Vec<TopologySpec> = Vec::new();
        let mut index: HashMap<TopologySpec, u32> = HashMap::new();
        object.endpoints = valid
            .endpoints
            .iter()
            .map(|ep| {
                let topology = TopologySpec {
                    node_name: ep.node_name.map(Into::into),
                    zone: ep.zone.map(Into::into),
                    zone_hints: ep.zone_hints.iter().map(|&h| h.into()).collect(),
                    node_hints: ep.node_hints.iter().map(|&h| h.into()).collect(),
                };
                let topology = if topology == TopologySpec::default() {
                    NO_TOPOLOGY
                } else {
                    *index.entry(topology).or_insert_with_key(|t| {
                        topologies.push(t.clone());
                        // A slice's distinct topologies are fewer than its endpoints, which
                        // a Vec index bounds far below u32::MAX.
                        u32::try_from(topologies.len() - 1).unwrap_or(NO_TOPOLOGY)
                    })
                };
                EndpointSpec {
                    ip: ep.ip,
                    conditions: [
                        (ep.ready, READY),
                        (ep.serving, SERVING),
                        (ep.terminating, TERMINATING),
                    ]
                    .into_iter()
                    .filter(|(set, _)| *set)
                    .fold(0, |bits, (_, bit)| bits | bit),
                    topology,
                }
            })
            .collect();
        object.topologies = topologies.into();
        object
    }

    /// `namespace/name` (namespace "default" when unset, name "" when missing).
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(
            ObjectKind::EndpointSlice,
            self.key.namespace(),
            self.key.name(),
        )
    }

    /// The Service it feeds, from its `kubernetes.io/service-name` label (in its own
    /// namespace); None when unlabelled or not this proxy's (as [`super::slice_service`]).
    pub fn service(&self) -> Option<&Key> {
        self.service.as_ref()
    }

    /// What is wrong with it on its own (as [`super::slice_problems`]).
    pub fn problems(&self) -> &[ProblemKind] {
        &self.problems
    }

    /// A valid FQDN slice (which the model does not use).
    pub fn is_fqdn(&self) -> bool {
        self.use_ == SliceUse::Fqdn
    }

    /// The parts the model reads, as [`validate_slice`] returns them; None when the slice is
    /// not used (rejected, FQDN, not this proxy's, or without a service label).
    pub(super) fn valid(&self) -> Option<ValidSlice<'_>> {
        let ipv6 = match self.use_ {
            SliceUse::Ipv4 => false,
            SliceUse::Ipv6 => true,
            SliceUse::Unused | SliceUse::Fqdn => return None,
        };
        let service = self.service.as_ref()?;
        Some(ValidSlice {
            namespace: self.key.namespace(),
            name: self.key.name(),
            service: service.name(),
            ipv6,
            ports: self
                .ports
                .iter()
                .map(|p| ValidSlicePort {
                    name: &p.name,
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|ep| {
                    let t = self.topologies.get(ep.topology as usize);
                    let names = |f: fn(&TopologySpec) -> &[Box<str>]| -> BTreeSet<&str> {
                        t.map(f).unwrap_or(&[]).iter().map(|h| &**h).collect()
                    };
                    ValidEndpoint {
                        ip: ep.ip,
                        ready: ep.conditions & READY != 0,
                        serving: ep.conditions & SERVING != 0,
                        terminating: ep.conditions & TERMINATING != 0,
                        node_name: t.and_then(|t| t.node_name.as_deref()),
                        zone: t.and_then(|t| t.zone.as_deref()),
                        zone_hints: names(|t| &t.zone_hints),
                        node_hints: names(|t| &t.node_hints),
                    }
                })
                .collect(),
        })
    }

    /// The address of each endpoint of a usable slice (for tests and reports).
    pub fn endpoint_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoints.iter().map(|ep| ep.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeInfo, build_table, explain, validate::validate_service};
    use serde_json::{Value, json};

    #[test]
    fn an_endpoint_takes_24_bytes() {
        assert_eq!(std::mem::size_of::<EndpointSpec>(), 24);
        assert_eq!(std::mem::size_of::<Key>(), 16);
    }

    #[test]
    fn keys_split_at_the_first_slash() {
        let k = Key::new("ns", "web");
        assert_eq!(
            (k.namespace(), k.name(), k.as_str()),
            ("ns", "web", "ns/web")
        );
        assert_eq!(Key::new("ns", "").name(), "");
    }

    /// xorshift: reproducible without a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        /// Absent, or one of `from` (`""` and `"!"` stand for a number and a boolean).
        fn maybe(&mut self, from: &[&str]) -> Option<Value> {
            match self.below(from.len() + 1) {
                0 => None,
                i => Some(match from[i - 1] {
                    "!" => json!(self.below(2) == 0),
                    v => json!(v),
                }),
            }
        }

        fn some_of(&mut self, from: &[&str], max: usize) -> Vec<String> {
            (0..self.below(max + 1))
                .map(|_| self.pick(from).to_owned())
                .collect()
        }
    }

    const NAMES: &[&str] = &["a", "b", "c"];
    const V4: &[&str] = &["10.96.0.1", "10.96.0.2", "10.1.0.1", "10.1.0.2", "10.1.0.3"];
    const V6: &[&str] = &["fd00::1", "fd00::2", "fd00::a:1", "fd00::a:2"];
    const BAD: &[&str] = &["10.1.0.300", "x", "", "fd00::g"];
    const NODES: &[&str] = &["node-a", "node-b", "node-c"];
    const ZONES: &[&str] = &["z1", "z2", "z3"];
    const PORT_NAMES: &[&str] = &["", "http", "dns"];

    fn address(rng: &mut Rng, sane: bool) -> String {
        match rng.below(10) {
            0 if !sane => rng.pick(BAD),
            1..=3 => rng.pick(V6),
            _ => rng.pick(V4),
        }
        .to_owned()
    }

    fn labels(rng: &mut Rng, service: Option<&str>) -> Value {
        let mut labels = serde_json::Map::new();
        if let Some(s) = service {
            labels.insert(LABEL_SERVICE_NAME.into(), json!(s));
        }
        match rng.below(12) {
            0 => {
                labels.insert(super::super::LABEL_HEADLESS.into(), json!(""));
            }
            1 => {
                labels.insert(super::super::LABEL_SERVICE_PROXY_NAME.into(), json!("x"));
            }
            _ => {}
        }
        Value::Object(labels)
    }

    /// `sane`: rarely invalid, so that most services have frontends.
    fn random_service(rng: &mut Rng, name: &str, sane: bool) -> Service {
        let ips: Vec<String> = if sane {
            // One address per family at most (two of one family is an error).
            match rng.below(3) {
                0 => vec![rng.pick(V4).to_owned()],
                1 => vec![rng.pick(V6).to_owned()],
                _ => vec![rng.pick(V4).to_owned(), rng.pick(V6).to_owned()],
            }
        } else {
            (0..rng.below(3) + usize::from(rng.below(8) != 0))
                .map(|_| address(rng, sane))
                .collect()
        };
        let ports: Vec<Value> = (0..rng.below(3) + 1)
            .map(|_| {
                let mut p = serde_json::Map::new();
                let numbers = if sane {
                    &[53, 80][..]
                } else {
                    &[53, 80, 80, 0, 70000][..]
                };
                p.insert("port".into(), json!(numbers[rng.below(numbers.len())]));
                if let Some(n) = rng.maybe(PORT_NAMES) {
                    p.insert("name".into(), n);
                }
                let protocols = if sane {
                    &["TCP", "UDP"][..]
                } else {
                    &["TCP", "UDP", "SCTP", "ICMP"][..]
                };
                if let Some(proto) = rng.maybe(protocols) {
                    p.insert("protocol".into(), proto);
                }
                let node_ports = if sane {
                    &[30080, 30053, 0][..]
                } else {
                    &[30080, 30053, 0, 70000, -1][..]
                };
                if rng.below(2) == 0 {
                    p.insert(
                        "nodePort".into(),
                        json!(node_ports[rng.below(node_ports.len())]),
                    );
                }
                match rng.below(5) {
                    0 => {}
                    1 => {
                        p.insert("targetPort".into(), json!([8080, 0, 9090][rng.below(3)]));
                    }
                    _ => {
                        p.insert(
                            "targetPort".into(),
                            json!(rng.pick(&["http", "dns", "8080", "0", "x"])),
                        );
                    }
                }
                Value::Object(p)
            })
            .collect();
        let mut spec = serde_json::Map::new();
        match rng.below(6) {
            0 if !sane => {}
            1 if !sane => {
                spec.insert(
                    "clusterIP".into(),
                    json!(rng.pick(&["None", "10.96.0.9", ""])),
                );
            }
            _ => {
                spec.insert("clusterIPs".into(), json!(ips));
            }
        }
        spec.insert("externalIPs".into(), json!(rng.some_of(V4, 2)));
        spec.insert("ports".into(), json!(ports));
        let fields = if sane {
            [
                ("type", &["ClusterIP", "NodePort", "LoadBalancer"][..]),
                ("sessionAffinity", &["None", "ClientIP"][..]),
                ("internalTrafficPolicy", &["Cluster", "Local"][..]),
                ("externalTrafficPolicy", &["Cluster", "Local"][..]),
            ]
        } else {
            [
                (
                    "type",
                    &[
                        "ClusterIP",
                        "NodePort",
                        "LoadBalancer",
                        "ExternalName",
                        "Other",
                    ][..],
                ),
                ("sessionAffinity", &["None", "ClientIP", "Sticky"][..]),
                ("internalTrafficPolicy", &["Cluster", "Local", "Other"][..]),
                ("externalTrafficPolicy", &["Cluster", "Local", "Other"][..]),
            ]
        };
        for (field, values) in fields {
            if let Some(v) = rng.maybe(values) {
                spec.insert(field.into(), v);
            }
        }
        let ranges: &[&str] = if sane {
            &[
                "203.0.113.0/24",
                "198.51.100.7/16",
                "2001:db8::/32",
                " 0.0.0.0/0 ",
            ]
        } else {
            &["203.0.113.0/24", "2001:db8::/32", "10.0.0.300/8", "x", ""]
        };
        spec.insert(
            "loadBalancerSourceRanges".into(),
            json!(rng.some_of(ranges, 2)),
        );
        if rng.below(2) == 0 {
            let ports = if sane {
                &[32000, 0][..]
            } else {
                &[32000, 0, 70000][..]
            };
            spec.insert(
                "healthCheckNodePort".into(),
                json!(ports[rng.below(ports.len())]),
            );
        }
        if rng.below(3) == 0 && !sane {
            let timeout = [0, 60, 86400, 90000][rng.below(4)];
            spec.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": timeout}}),
            );
        }
        let mut meta = json!({"namespace": rng.pick(if sane { &["ns"] } else { &["ns", "other"] }), "labels": labels(rng, None)});
        if sane || rng.below(15) != 0 {
            meta["name"] = json!(name);
        }
        let ingress: Vec<Value> = (0..rng.below(3))
            .map(|_| {
                let mut ing = serde_json::Map::new();
                let ips: &[&str] = if sane {
                    &["192.0.2.1", "192.0.2.2", "2001:db8::1", ""]
                } else {
                    &["192.0.2.1", "2001:db8::1", "not-an-ip", ""]
                };
                if let Some(ip) = rng.maybe(ips) {
                    ing.insert("ip".into(), ip);
                }
                if let Some(mode) = rng.maybe(&["VIP", "Proxy"]) {
                    ing.insert("ipMode".into(), mode);
                }
                if rng.below(3) == 0 {
                    ing.insert("hostname".into(), json!("lb.example.com"));
                }
                Value::Object(ing)
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap()
    }

    fn random_slice(rng: &mut Rng, name: &str, sane: bool) -> EndpointSlice {
        let address_type = if sane {
            rng.pick(&["IPv4", "IPv4", "IPv6"])
        } else {
            rng.pick(&["IPv4", "IPv4", "IPv6", "FQDN", "Other"])
        };
        let endpoints: Vec<Value> = (0..rng.below(5))
            .map(|_| {
                let mut ep = serde_json::Map::new();
                let addresses: Vec<String> = (0..rng.below(3) + 1)
                    .map(|_| match (sane, address_type) {
                        (true, "IPv6") => rng.pick(V6).to_owned(),
                        (true, _) => rng.pick(V4).to_owned(),
                        (false, _) => address(rng, sane),
                    })
                    .collect();
                ep.insert("addresses".into(), json!(addresses));
                let mut conditions = serde_json::Map::new();
                for c in ["ready", "serving", "terminating"] {
                    if let Some(v) = rng.maybe(&["!"]) {
                        conditions.insert(c.into(), v);
                    }
                }
                ep.insert("conditions".into(), Value::Object(conditions));
                if let Some(n) = rng.maybe(NODES) {
                    ep.insert("nodeName".into(), n);
                }
                if let Some(z) = rng.maybe(ZONES) {
                    ep.insert("zone".into(), z);
                }
                if rng.below(2) == 0 {
                    let zones: Vec<Value> = rng
                        .some_of(ZONES, 2)
                        .into_iter()
                        .map(|z| json!({"name": z}))
                        .collect();
                    let nodes: Vec<Value> = rng
                        .some_of(NODES, 2)
                        .into_iter()
                        .map(|n| json!({"name": n}))
                        .collect();
                    ep.insert(
                        "hints".into(),
                        json!({"forZones": zones, "forNodes": nodes}),
                    );
                }
                Value::Object(ep)
            })
            .collect();
        let ports: Vec<Value> = (0..rng.below(3))
            .map(|_| {
                let mut p = serde_json::Map::new();
                if let Some(n) = rng.maybe(PORT_NAMES) {
                    p.insert("name".into(), n);
                }
                if rng.below(6) != 0 {
                    let numbers = if sane {
                        &[8080, 5353, 80][..]
                    } else {
                        &[8080, 5353, 0, 80][..]
                    };
                    p.insert("port".into(), json!(numbers[rng.below(numbers.len())]));
                }
                let protocols = if sane {
                    &["TCP", "UDP"][..]
                } else {
                    &["TCP", "UDP", "SCTP", "ICMP"][..]
                };
                if let Some(proto) = rng.maybe(protocols) {
                    p.insert("protocol".into(), proto);
                }
                Value::Object(p)
            })
            .collect();
        let service = (rng.below(8) != 0).then(|| rng.pick(NAMES));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": rng.pick(if sane { &["ns"] } else { &["ns", "ns", "other"] }),
                         "labels": labels(rng, service)},
            "addressType": address_type,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// The compact objects give the model exactly what the checks give for the originals.
    #[test]
    fn compact_objects_read_as_the_originals() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for i in 0..3000 {
            let svc = random_service(&mut rng, NAMES[i % 3], i % 2 == 0);
            let object = ServiceObject::new(&svc);
            let (valid, problems) = validate_service(&svc);
            assert_eq!(object.problems(), problems.as_slice(), "{svc:?}");
            let rejected = problems.iter().any(|p| p.severity() == Severity::Error);
            let built: Vec<Frontend> = super::super::build_service(&svc, &[], &NodeInfo::default())
                .entries
                .into_iter()
                .map(|(fe, _)| fe)
                .collect();
            assert_eq!(object.frontends().collect::<Vec<_>>(), built, "{svc:?}");
            // With node-port addresses: the same, then the node ports on each address of the
            // service's families (less those already there).
            let node = NodeInfo::new("node-a", None).with_node_port_addresses(
                ["192.168.1.10", "fd00:1::10"].map(|a| a.parse::<IpAddr>().unwrap()),
            );
            let built: Vec<Frontend> = super::super::build_service(&svc, &[], &node)
                .entries
                .into_iter()
                .map(|(fe, _)| fe)
                .collect();
            let mut want: Vec<Frontend> = object.frontends().collect();
            for a in &node.node_port_addresses {
                if object
                    .cluster_ips()
                    .iter()
                    .any(|v| v.is_ipv4() == a.is_ipv4())
                {
                    for (_, port, protocol) in object.node_ports() {
                        let f = Frontend {
                            vip: *a,
                            port,
                            protocol,
                        };
                        if !want.contains(&f) {
                            want.push(f);
                        }
                    }
                }
            }
            assert_eq!(want, built, "{svc:?}");
            assert_eq!(object.ignored(), valid.is_none(), "{svc:?}");
            assert_eq!(object.valid(), valid.filter(|_| !rejected), "{svc:?}");

            let slice = random_slice(&mut rng, &format!("s{i}"), i % 2 == 0);
            let object = SliceObject::new(&slice);
            assert_eq!(
                object.problems(),
                super::super::slice_problems(&slice),
                "{slice:?}"
            );
            assert_eq!(
                object
                    .service()
                    .map(|k| (k.namespace().to_owned(), k.name().to_owned())),
                super::super::slice_service(&slice),
                "{slice:?}"
            );
            let want = if not_ours(&slice.metadata) {
                None
            } else {
                validate_slice(&slice).ok().flatten()
            };
            assert_eq!(object.valid(), want, "{slice:?}");
            assert_eq!(
                object.is_fqdn(),
                !not_ours(&slice.metadata)
                    && slice.address_type == "FQDN"
                    && object.problems().is_empty(),
                "{slice:?}"
            );
        }
    }

    /// The table (built from compact objects) and `explain` (which reads the originals)
    /// agree on every frontend's backends, whatever the objects.
    #[test]
    fn the_table_agrees_with_explain() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut frontends, mut with_backends, mut external, mut local_policy) = (0, 0, 0, 0);
        for _round in 0..1000 {
            let services: Vec<Service> = (0..3)
                .map(|i| random_service(&mut rng, NAMES[i], true))
                .collect();
            let slices: Vec<EndpointSlice> = (0..4)
                .map(|i| random_slice(&mut rng, &format!("s{i}"), true))
                .collect();
            let node = NodeInfo::new(
                rng.pick(NODES),
                rng.maybe(ZONES).and_then(|z| z.as_str().map(str::to_owned)),
            )
            .with_node_port_addresses(
                ["192.168.1.10", "fd00:1::10"].map(|a| a.parse::<IpAddr>().unwrap()),
            );
            let table = build_table(&services, &slices, &node).table;
            let refs: Vec<&EndpointSlice> = slices.iter().collect();
            for (fe, entry) in &table.services {
                let owner = services
                    .iter()
                    .find(|s| {
                        let (ns, name) = ns_name(&s.metadata);
                        (ns, name) == (entry.service.namespace(), entry.service.name())
                    })
                    .unwrap();
                let ex = explain(owner, &refs, &node, fe);
                let backends: Vec<std::net::SocketAddr> =
                    entry.backends.iter().map(|b| b.socket_addr()).collect();
                assert_eq!(ex.backends, backends, "{fe}: {services:?} {slices:?}");
                assert_eq!(ex.no_endpoints, Some(entry.no_endpoints), "{fe}");
                assert_eq!(ex.kind, Some(entry.kind), "{fe}");
                // From outside: the local set with externalTrafficPolicy Local, else the same.
                let outside: Vec<std::net::SocketAddr> = entry
                    .external_local
                    .as_deref()
                    .unwrap_or(&entry.backends)
                    .iter()
                    .map(|b| b.socket_addr())
                    .collect();
                if entry.external() {
                    assert_eq!(ex.external_backends.as_ref(), Some(&outside), "{fe}");
                    external += 1;
                    local_policy += usize::from(entry.external_local.is_some());
                } else {
                    assert_eq!(ex.external_backends, None, "{fe}");
                }
                assert_eq!(ex.source_ranges, entry.source_ranges.to_vec(), "{fe}");
                frontends += 1;
                with_backends += usize::from(!entry.backends.is_empty());
            }
        }
        assert!(
            frontends > 1000 && with_backends > 300 && external > 300 && local_policy > 100,
            "only {frontends} frontends, {with_backends} with backends, {external} external, \
             {local_policy} with externalTrafficPolicy Local: widen the generator"
        );
    }
}
