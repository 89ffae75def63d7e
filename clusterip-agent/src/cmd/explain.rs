//! `clusterip-agent explain VIP:PORT[/PROTOCOL]`: why a frontend has the backends it has.
//!
//! Reads the objects (from `--manifests`, else one list of each kind from the Kubernetes API,
//! [`crate::source::kube::list_once`]), finds the Service owning the frontend (as the model
//! decides: the first service claiming it), and prints [`crate::model::explain`]'s verdict on
//! each of its endpoints, then what the pinned maps hold for the frontend now (or that there
//! are no pins).
//!
//! An address that no Service names (as cluster, external or load-balancer IP) is taken for
//! one of this node's addresses, so `explain NODEIP:NODEPORT` finds the service of that node
//! port; for external frontends (node ports, load-balancer and external IPs) it tells what a
//! client outside the node gets and what one on the node (a pod, the host) gets.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use crate::cli::ExplainArgs;
use crate::cmd::dump::DumpEntry;
use crate::model::table::{Frontend, NoEndpoints, Protocol};
use crate::model::{self, Explanation, FrontendStatus, NodeInfo};
use crate::source::{Objects, manifests};

/// What is wrong with a `VIP:PORT[/PROTOCOL]` argument.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrontendParseError {
    #[error("empty frontend (expected VIP:PORT[/PROTOCOL])")]
    Empty,
    #[error("unknown protocol {0:?} (expected TCP or UDP)")]
    UnknownProtocol(String),
    #[error("SCTP is not supported")]
    Sctp,
    #[error("missing :PORT after the address {0:?}")]
    MissingPort(String),
    #[error("IPv6 address {0:?} must be in brackets: [{0}]:PORT")]
    UnbracketedIpv6(String),
    #[error("missing ']' after the IPv6 address in {0:?}")]
    UnclosedBracket(String),
    #[error("only IPv6 addresses go in brackets, not {0:?}")]
    BracketedIpv4(String),
    #[error("invalid IP address {0:?}")]
    InvalidIp(String),
    #[error("invalid port {0:?} (expected 1..=65535)")]
    InvalidPort(String),
}

/// Parses `VIP:PORT[/PROTOCOL]`: `10.96.0.10:80`, `10.96.0.10:53/UDP`, `[fd00::10]:443/tcp`.
/// The protocol is case-insensitive and defaults to TCP.
pub fn parse_frontend(s: &str) -> Result<Frontend, FrontendParseError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(FrontendParseError::Empty);
    }
    let (addr_port, protocol) = match s.rsplit_once('/') {
        None => (s, Protocol::Tcp),
        Some((a, p)) => {
            let protocol = match p.to_ascii_uppercase().as_str() {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => return Err(FrontendParseError::Sctp),
                _ => return Err(FrontendParseError::UnknownProtocol(p.to_owned())),
            };
            (a, protocol)
        }
    };
    let (ip_text, port_text) = if let Some(rest) = addr_port.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err(FrontendParseError::UnclosedBracket(addr_port.to_owned()));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(FrontendParseError::MissingPort(format!("[{ip}]")));
        };
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => return Err(FrontendParseError::BracketedIpv4(ip.to_owned())),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => return Err(FrontendParseError::InvalidIp(ip.to_owned())),
        }
        (ip, port)
    } else {
        match addr_port.rsplit_once(':') {
            None => {
                if addr_port.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
                    return Err(FrontendParseError::UnbracketedIpv6(addr_port.to_owned()));
                }
                return Err(FrontendParseError::MissingPort(addr_port.to_owned()));
            }
            Some((ip, _)) if ip.contains(':') => {
                return Err(FrontendParseError::UnbracketedIpv6(addr_port.to_owned()));
            }
            Some((ip, port)) => (ip, port),
        }
    };
    let vip: IpAddr = ip_text
        .parse()
        .map_err(|_| FrontendParseError::InvalidIp(ip_text.to_owned()))?;
    let port = match port_text.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(FrontendParseError::InvalidPort(port_text.to_owned())),
    };
    Ok(Frontend {
        vip,
        port,
        protocol,
    })
}

/// What the pinned maps hold for the frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DatapathState {
    /// No pinned maps under the bpffs directory (the agent has not run with it).
    NotPinned { bpffs: String },
    /// The maps exist but have no entry for this frontend.
    Absent,
    /// The entry, and whether it matches what the model computes now.
    Present { entry: DumpEntry, in_sync: bool },
    /// The maps could not be read.
    Error { error: String },
}

/// Everything `explain` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub frontend: Frontend,
    /// `namespace/name` of the service owning the frontend, if any.
    pub owner: Option<String>,
    /// The owner's explanation first, then every other service naming the VIP (rejected,
    /// ignored, losing a duplicate, or without that port).
    pub explanations: Vec<Explanation>,
    /// Problems the model reports for these services (duplicates included).
    pub problems: Vec<String>,
    pub datapath: DatapathState,
}

/// Whether a Service names `ip` as a cluster, external or load-balancer IP.
fn named_by_a_service(objects: &Objects, ip: IpAddr) -> bool {
    objects.services.iter().any(|s| {
        let parse = |a: &str| a.trim().parse::<IpAddr>().ok();
        let spec = s.spec.as_ref();
        let cluster = spec
            .and_then(|sp| sp.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(spec.and_then(|sp| sp.cluster_ip.as_deref()));
        let external = spec
            .and_then(|sp| sp.external_ips.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str);
        let lb = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref());
        cluster
            .chain(external)
            .chain(lb)
            .any(|a| parse(a) == Some(ip))
    })
}

/// `node`, with the frontend's address as a node-port address when no Service names it.
pub fn node_for(objects: &Objects, node: NodeInfo, frontend: &Frontend) -> NodeInfo {
    if named_by_a_service(objects, frontend.vip) {
        node
    } else {
        node.with_node_port_addresses([frontend.vip])
    }
}

/// Builds the report's model part (no datapath yet: `Absent`).
pub fn report(objects: &Objects, node: &NodeInfo, frontend: &Frontend) -> Report {
    let out = model::build_table(&objects.services, &objects.slices, node);
    let node_port = node.node_port_addresses.contains(&frontend.vip);
    let owner = out.table.services.get(frontend).map(|e| {
        (
            e.service.namespace().to_owned(),
            e.service.name().to_owned(),
        )
    });

    let slices_of = |ns: &str, name: &str| -> Vec<&EndpointSlice> {
        objects
            .slices
            .iter()
            .filter(|s| model::slice_service(s).is_some_and(|(n, s)| n == ns && s == name))
            .collect()
    };
    let ns_name = |svc: &k8s_openapi::api::core::v1::Service| {
        let r = model::ObjectRef::of_service(svc);
        (r.namespace, r.name)
    };

    let mut explanations = Vec::new();
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    let mut candidates: Vec<&k8s_openapi::api::core::v1::Service> = Vec::new();
    if let Some((ns, name)) = &owner {
        candidates.extend(
            objects
                .services
                .iter()
                .filter(|s| ns_name(s) == (ns.clone(), name.clone()))
                .take(1),
        );
    }
    candidates.extend(objects.services.iter().filter(|s| {
        let spec = s.spec.as_ref();
        let names_vip = |ips: Option<&Vec<String>>| {
            ips.into_iter()
                .flatten()
                .any(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| ip == frontend.vip))
        };
        let lb_ips: Vec<String> = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect();
        spec.is_some_and(|sp| {
            names_vip(sp.cluster_ips.as_ref())
                || sp
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .is_some_and(|ip| ip == frontend.vip)
                || names_vip(sp.external_ips.as_ref())
                || names_vip(Some(&lb_ips))
                || (node_port
                    && sp
                        .ports
                        .iter()
                        .flatten()
                        .any(|p| p.node_port == Some(i32::from(frontend.port))))
        })
    }));
    for svc in candidates {
        let (ns, name) = ns_name(svc);
        if !names.insert((ns.clone(), name.clone())) {
            continue;
        }
        let slices = slices_of(&ns, &name);
        explanations.push(model::explain(svc, &slices, node, frontend));
    }
    let problems = out
        .problems
        .iter()
        .filter(|p| names.contains(&(p.object.namespace.clone(), p.object.name.clone())))
        .map(|p| p.to_string())
        .collect();
    Report {
        frontend: *frontend,
        owner: owner.map(|(ns, name)| format!("{ns}/{name}")),
        explanations,
        problems,
        datapath: DatapathState::Absent,
    }
}

/// What the pinned maps under `bpffs` hold for `frontend`, compared with the owner's
/// explanation.
pub fn datapath_state(
    bpffs: &Path,
    frontend: &Frontend,
    owner: Option<&Explanation>,
) -> DatapathState {
    let pinned = [
        clusterip_common::map_names::SERVICES_V4,
        clusterip_common::map_names::SERVICES_V6,
    ]
    .iter()
    .any(|m| bpffs.join(m).exists());
    if !pinned {
        return DatapathState::NotPinned {
            bpffs: bpffs.display().to_string(),
        };
    }
    let entries = match crate::cmd::dump::read(bpffs) {
        Ok(e) => e,
        Err(e) => {
            return DatapathState::Error {
                error: format!("{e:#}"),
            };
        }
    };
    let protocol = frontend.protocol.to_string();
    let Some(entry) = entries
        .into_iter()
        .find(|e| e.vip == frontend.vip && e.port == frontend.port && e.protocol == protocol)
    else {
        return DatapathState::Absent;
    };
    let in_sync = owner.is_some_and(|ex| {
        let want: BTreeSet<String> = ex.backends.iter().map(SocketAddr::to_string).collect();
        let have: BTreeSet<String> = entry.backends.iter().cloned().collect();
        let no_endpoints = match ex.no_endpoints {
            Some(NoEndpoints::Drop) => "drop",
            _ => "reject",
        };
        want == have
            && ex.affinity_timeout_s == entry.affinity_timeout_s
            && (!have.is_empty() || entry.no_endpoints == no_endpoints)
    });
    DatapathState::Present { entry, in_sync }
}

fn node_name(args: &ExplainArgs) -> anyhow::Result<String> {
    match &args.source.node_name {
        Some(n) => Ok(n.clone()),
        None => Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the hostname (set --node-name or NODE_NAME)")?
            .trim()
            .to_owned()),
    }
}

pub fn main(args: ExplainArgs) -> anyhow::Result<()> {
    let frontend =
        parse_frontend(&args.frontend).with_context(|| format!("frontend {:?}", args.frontend))?;
    let node_name = node_name(&args)?;
    let objects = match &args.source.manifests {
        Some(path) => manifests::read_objects(path, &node_name)
            .with_context(|| format!("reading {}", path.display()))?,
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(crate::source::kube::list_once(
                args.source.kubeconfig.as_deref(),
                &node_name,
            ))
            .context("listing Services, EndpointSlices and this Node from the Kubernetes API")?
        }
    };
    let node = node_for(
        &objects,
        NodeInfo::new(node_name, objects.node_zone.clone()),
        &frontend,
    );
    let mut rep = report(&objects, &node, &frontend);
    let owner = rep.explanations.first().filter(|_| rep.owner.is_some());
    rep.datapath = datapath_state(&args.bpffs, &frontend, owner);

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rep)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &rep)?;
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Prints the report for people.
pub fn print_text(out: &mut impl Write, rep: &Report) -> std::io::Result<()> {
    writeln!(out, "frontend {}", rep.frontend)?;
    match &rep.owner {
        Some(o) => writeln!(out, "owner: Service {o}")?,
        None => writeln!(out, "owner: none (no service has this frontend)")?,
    }
    for p in &rep.problems {
        writeln!(out, "problem: {p}")?;
    }
    for ex in &rep.explanations {
        print_explanation(out, ex)?;
    }
    writeln!(out)?;
    match &rep.datapath {
        DatapathState::NotPinned { bpffs } => writeln!(
            out,
            "datapath: no pinned maps under {bpffs} (the agent has not run with this --bpffs)"
        )?,
        DatapathState::Absent => writeln!(out, "datapath: no entry for this frontend")?,
        DatapathState::Error { error } => writeln!(out, "datapath: cannot read the maps: {error}")?,
        DatapathState::Present { entry, in_sync } => {
            let affinity = match entry.affinity_timeout_s {
                Some(t) => format!(" affinity=ClientIP/{t}s"),
                None => String::new(),
            };
            writeln!(
                out,
                "datapath: id={}{affinity} backends={} ({})",
                entry.svc_id,
                entry.backends.len(),
                if *in_sync {
                    "matches the model"
                } else {
                    "DIFFERS from the model (agent not synced yet, or another source)"
                }
            )?;
            if entry.backends.is_empty() {
                writeln!(out, "  (no endpoints: {})", entry.no_endpoints)?;
            }
            for b in &entry.backends {
                writeln!(out, "  -> {b}")?;
            }
        }
    }
    Ok(())
}

fn print_explanation(out: &mut impl Write, ex: &Explanation) -> std::io::Result<()> {
    writeln!(out)?;
    let status = match ex.status {
        FrontendStatus::Active => "active",
        FrontendStatus::ServiceIgnored => "service ignored",
        FrontendStatus::ServiceRejected => "service rejected",
        FrontendStatus::NoSuchFrontend => "no such frontend",
    };
    let port = match &ex.port_name {
        Some(p) if !p.is_empty() => format!(" port {p:?}"),
        _ => String::new(),
    };
    let kind = ex.kind.map(|k| format!(" ({k})")).unwrap_or_default();
    writeln!(out, "Service {}{port}{kind}: {status}", ex.service)?;
    writeln!(
        out,
        "  node {:?}, zone {}",
        ex.node.name,
        ex.node.zone.as_deref().unwrap_or("unknown")
    )?;
    if ex.traffic_distribution.is_some() || ex.topology_annotation.is_some() {
        writeln!(
            out,
            "  asks: trafficDistribution={} topology annotation={} (the EndpointSlice \
             controller turns these into hints; only the hints count)",
            ex.traffic_distribution.as_deref().unwrap_or("-"),
            ex.topology_annotation.as_deref().unwrap_or("-"),
        )?;
    }
    if let (Some(t), Some(why)) = (ex.topology, &ex.topology_reason) {
        writeln!(out, "  topology: {t:?} ({why})")?;
    }
    writeln!(out, "  rule: {}", ex.rule)?;
    if let Some(t) = ex.affinity_timeout_s {
        writeln!(out, "  session affinity: ClientIP, {t}s")?;
    }
    for p in &ex.problems {
        writeln!(out, "  problem: {p}")?;
    }
    if ex.status == FrontendStatus::Active && ex.endpoints.is_empty() {
        writeln!(out, "  no endpoints")?;
    }
    for ep in &ex.endpoints {
        let addr = match ep.port {
            Some(p) => SocketAddr::new(ep.address, p).to_string(),
            None => ep.address.to_string(),
        };
        let mut hints = String::new();
        if !ep.zone_hints.is_empty() {
            hints.push_str(&format!(" forZones={}", ep.zone_hints.join(",")));
        }
        if !ep.node_hints.is_empty() {
            hints.push_str(&format!(" forNodes={}", ep.node_hints.join(",")));
        }
        let mut verdict = match &ep.reason {
            None if ep.used => "USED".to_owned(),
            None => "not used".to_owned(),
            Some(r) => format!("not used: {r}"),
        };
        if let Some(outside) = ep.external_used {
            verdict.push_str(&match (&ep.external_reason, outside) {
                (_, true) => "; from outside: USED".to_owned(),
                (Some(r), false) => format!("; from outside: not used: {r}"),
                (None, false) => "; from outside: not used".to_owned(),
            });
        }
        writeln!(
            out,
            "  {addr} slice={} node={} zone={} ready={} serving={} terminating={}{hints}: {verdict}",
            ep.slice,
            ep.node.as_deref().unwrap_or("-"),
            ep.zone.as_deref().unwrap_or("-"),
            yes_no(ep.ready),
            yes_no(ep.serving),
            yes_no(ep.terminating),
        )?;
    }
    if ex.status == FrontendStatus::Active {
        let list = |b: &[SocketAddr]| {
            b.iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &ex.external_backends {
            None => writeln!(out, "  backends: [{}]", list(&ex.backends))?,
            Some(outside) => {
                writeln!(
                    out,
                    "  backends from this node (pods, host): [{}]",
                    list(&ex.backends)
                )?;
                if let Some(rule) = &ex.external_rule {
                    writeln!(out, "  from outside: {rule}")?;
                }
                writeln!(out, "  backends from outside the node: [{}]", list(outside))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(vip: &str, port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            vip: vip.parse().unwrap(),
            port,
            protocol,
        }
    }

    #[test]
    fn parses_frontends() {
        assert_eq!(
            parse_frontend("10.96.0.10:80"),
            Ok(fe("10.96.0.10", 80, Protocol::Tcp))
        );
        assert_eq!(
            parse_frontend("10.96.0.10:53/UDP"),
            Ok(fe("10.96.0.10", 53, Protocol::Udp))
        );
        assert_eq!(
            parse_frontend(" 10.96.0.10:53/udp "),
            Ok(fe("10.96.0.10", 53, Protocol::Udp))
        );
        assert_eq!(
            parse_frontend("[fd00::10]:443/tcp"),
            Ok(fe("fd00::10", 443, Protocol::Tcp))
        );
        assert_eq!(
            parse_frontend("[fd00::10]:443"),
            Ok(fe("fd00::10", 443, Protocol::Tcp))
        );
    }

    #[test]
    fn rejects_bad_frontends_naming_the_problem() {
        use FrontendParseError as E;
        let cases: &[(&str, E)] = &[
            ("", E::Empty),
            ("10.96.0.10", E::MissingPort("10.96.0.10".into())),
            ("10.96.0.10:", E::InvalidPort("".into())),
            ("10.96.0.10:0", E::InvalidPort("0".into())),
            ("10.96.0.10:65536", E::InvalidPort("65536".into())),
            ("10.96.0.10:http", E::InvalidPort("http".into())),
            ("10.96.0.300:80", E::InvalidIp("10.96.0.300".into())),
            ("10.96.0.10:80/ICMP", E::UnknownProtocol("ICMP".into())),
            ("10.96.0.10:80/sctp", E::Sctp),
            ("fd00::10:443", E::UnbracketedIpv6("fd00::10:443".into())),
            ("fd00::10", E::UnbracketedIpv6("fd00::10".into())),
            ("[fd00::10:443", E::UnclosedBracket("[fd00::10:443".into())),
            ("[fd00::10]", E::MissingPort("[fd00::10]".into())),
            ("[fd00::10]443", E::MissingPort("[fd00::10]".into())),
            ("[10.0.0.1]:80", E::BracketedIpv4("10.0.0.1".into())),
            ("[zz::1]:80", E::InvalidIp("zz::1".into())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_frontend(input).as_ref(), Err(want), "{input:?}");
        }
        // The messages name what is wrong.
        assert_eq!(
            E::UnbracketedIpv6("fd00::10:443".into()).to_string(),
            "IPv6 address \"fd00::10:443\" must be in brackets: [fd00::10:443]:PORT"
        );
    }

    fn objects(yaml: &str) -> Objects {
        let mut o = Objects::default();
        for value in serde_saphyr::from_multiple_with_options::<serde_json::Value>(
            yaml,
            serde_saphyr::options! { strict_booleans: true },
        )
        .unwrap()
        {
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("Service") => o.services.push(serde_json::from_value(value).unwrap()),
                Some("EndpointSlice") => o.slices.push(serde_json::from_value(value).unwrap()),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        o
    }

    const OBJECTS: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, internalTrafficPolicy: Local, ports: [{name: http, port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: copy, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], nodeName: node-a}
- {addresses: [10.0.0.2], nodeName: node-b}
- {addresses: [10.0.0.3], nodeName: node-a, conditions: {ready: false}}
"#;

    #[test]
    fn report_explains_owner_and_the_losing_duplicate() {
        let o = objects(OBJECTS);
        let node = NodeInfo::new("node-a", None);
        let rep = report(&o, &node, &fe("10.96.0.10", 80, Protocol::Tcp));
        assert_eq!(rep.owner.as_deref(), Some("demo/web"));
        assert_eq!(rep.explanations.len(), 2);
        let web = &rep.explanations[0];
        assert_eq!(web.service, "demo/web");
        assert_eq!(web.status, FrontendStatus::Active);
        assert_eq!(web.backends, vec!["10.0.0.1:8080".parse().unwrap()]);
        let verdicts: Vec<(String, bool, Option<model::NotUsed>)> = web
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.used, e.reason.clone()))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("10.0.0.1".into(), true, None),
                ("10.0.0.2".into(), false, Some(model::NotUsed::OtherNode)),
                ("10.0.0.3".into(), false, Some(model::NotUsed::NotReady)),
            ]
        );
        assert_eq!(rep.explanations[1].service, "demo/copy");
        assert_eq!(
            rep.problems,
            vec![
                "Service demo/copy: frontend 10.96.0.10:80/TCP is already owned by Service \
                 demo/web"
                    .to_owned()
            ]
        );
        assert_eq!(rep.datapath, DatapathState::Absent);

        let mut text = Vec::new();
        print_text(&mut text, &rep).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("owner: Service demo/web"), "{text}");
        assert!(
            text.contains("10.0.0.2:8080 slice=web-1 node=node-b zone=- ready=yes serving=yes terminating=no: not used: not on this node"),
            "{text}"
        );
        assert!(text.contains("backends: [10.0.0.1:8080]"), "{text}");
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(
            json["explanations"][0]["endpoints"][1]["reason"],
            "other_node"
        );
        assert_eq!(json["explanations"][0]["policy"], "Local");
    }

    #[test]
    fn report_without_owner() {
        let o = objects(OBJECTS);
        let node = NodeInfo::new("node-a", None);
        let rep = report(&o, &node, &fe("10.96.0.99", 80, Protocol::Tcp));
        assert_eq!(rep.owner, None);
        assert!(rep.explanations.is_empty());
        // A port the owner does not have: the owner is explained as "no such frontend".
        let rep = report(&o, &node, &fe("10.96.0.10", 81, Protocol::Tcp));
        assert_eq!(rep.owner, None);
        assert_eq!(rep.explanations.len(), 2);
        assert_eq!(rep.explanations[0].status, FrontendStatus::NoSuchFrontend);
    }

    #[test]
    fn datapath_state_without_pins_is_not_an_error() {
        let dir = std::env::temp_dir().join(format!("clusterip-explain-{}", std::process::id()));
        let state = datapath_state(&dir, &fe("10.96.0.10", 80, Protocol::Tcp), None);
        assert_eq!(
            state,
            DatapathState::NotPinned {
                bpffs: dir.display().to_string()
            }
        );
    }

    #[test]
    fn report_of_a_node_port_tells_outside_and_inside_clients_apart() {
        let o = objects(
            r#"
kind: Service
apiVersion: v1
metadata: {name: np, namespace: demo}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, nodePort: 30080}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: np-1, namespace: demo, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], nodeName: node-a}
- {addresses: [10.0.0.2], nodeName: node-b}
"#,
        );
        let frontend = fe("192.168.1.10", 30080, Protocol::Tcp);
        let node = node_for(&o, NodeInfo::new("node-a", None), &frontend);
        assert_eq!(node.node_port_addresses, vec![frontend.vip]);
        let rep = report(&o, &node, &frontend);
        assert_eq!(rep.owner.as_deref(), Some("demo/np"));
        let ex = &rep.explanations[0];
        assert_eq!(ex.kind, Some(model::FrontendKind::NodePort));
        assert_eq!(
            ex.external_backends,
            Some(vec!["10.0.0.1:8080".parse().unwrap()])
        );
        let mut text = Vec::new();
        print_text(&mut text, &rep).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("Service demo/np port \"http\" (node port): active"),
            "{text}"
        );
        assert!(
            text.contains("backends from this node (pods, host): [10.0.0.1:8080, 10.0.0.2:8080]"),
            "{text}"
        );
        assert!(
            text.contains("backends from outside the node: [10.0.0.1:8080]"),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.2:8080 slice=np-1 node=node-b zone=- ready=yes serving=yes terminating=no: USED; from outside: not used: not on this node"),
            "{text}"
        );
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["explanations"][0]["kind"], "node_port");
        assert_eq!(json["explanations"][0]["external_policy"], "Local");
        assert_eq!(
            json["explanations"][0]["external_backends"],
            serde_json::json!(["10.0.0.1:8080"])
        );
        // A cluster IP is not taken for a node address.
        let cip = fe("10.96.0.20", 80, Protocol::Tcp);
        assert!(
            node_for(&o, NodeInfo::new("node-a", None), &cip)
                .node_port_addresses
                .is_empty()
        );
    }
}
