//! The rules of node ports, load-balancer IPs and externalTrafficPolicy, case by case
//! (kube-proxy: `serviceport.go`, `topology.go`, `nftables/proxier.go`,
//! `endpointschangetracker.go`, `pkg/api/v1/service/util.go`).

use std::net::IpAddr;

use super::table::test_support::{backend, entry, fe, table};
use super::table::{Backend, NoEndpoints, Protocol, ServiceEntry};
use super::tests::parse_objects as parse;
use super::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Node "node-a" with node-port addresses 192.168.1.10, 10.0.9.1 and fd00:1::10.
fn node() -> NodeInfo {
    NodeInfo::new("node-a", None).with_node_port_addresses(addrs(&[
        "192.168.1.10",
        "10.0.9.1",
        "fd00:1::10",
    ]))
}

fn addrs(a: &[&str]) -> Vec<IpAddr> {
    a.iter().map(|s| s.parse().unwrap()).collect()
}

fn build(yaml: &str) -> ModelOutput {
    build_on(yaml, &node())
}

fn build_on(yaml: &str, node: &NodeInfo) -> ModelOutput {
    let (services, slices) = parse(yaml);
    build_table(&services, &slices, node)
}

fn with(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

fn kind(mut e: ServiceEntry, k: FrontendKind) -> ServiceEntry {
    e.kind = k;
    e
}

fn problem(name: &str, p: ProblemKind) -> Problem {
    Problem {
        object: ObjectRef::new(ObjectKind::Service, "default", name),
        kind: p,
    }
}

/// The frontends of the table, as text, with their kind.
fn frontends(out: &ModelOutput) -> Vec<String> {
    out.table
        .services
        .iter()
        .map(|(f, e)| format!("{f} {:?}", e.kind))
        .collect()
}

const NP: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: np}
spec:
  type: NodePort
  clusterIP: 10.96.0.40
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
  - {name: none, port: 81, targetPort: 8081}
"#;

const NP_SLICE: &str = r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: np-1, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}, {name: none, port: 8081}]
endpoints:
- {addresses: [10.1.0.1], nodeName: node-a}
- {addresses: [10.1.0.2], nodeName: node-b}
"#;

#[test]
fn node_ports_on_each_node_address_of_the_services_family_tcp_and_udp() {
    let out = build(&with(&[NP, NP_SLICE]));
    assert_eq!(out.problems, vec![]);
    let both = ["10.1.0.1:8080*", "10.1.0.2:8080"];
    let dns = ["10.1.0.1:5353*", "10.1.0.2:5353"];
    let mut want = vec![
        (
            fe("10.96.0.40", 80, Protocol::Tcp),
            entry("default", "np", "http", &both),
        ),
        (
            fe("10.96.0.40", 53, Protocol::Udp),
            entry("default", "np", "dns", &dns),
        ),
        (
            fe("10.96.0.40", 81, Protocol::Tcp),
            entry(
                "default",
                "np",
                "none",
                &["10.1.0.1:8081*", "10.1.0.2:8081"],
            ),
        ),
    ];
    // IPv4 service: the IPv4 node addresses only; the port without nodePort has none.
    for a in ["192.168.1.10", "10.0.9.1"] {
        want.push((
            fe(a, 30080, Protocol::Tcp),
            kind(
                entry("default", "np", "http", &both),
                FrontendKind::NodePort,
            ),
        ));
        want.push((
            fe(a, 30053, Protocol::Udp),
            kind(entry("default", "np", "dns", &dns), FrontendKind::NodePort),
        ));
    }
    assert_eq!(out.table, table(want));
    // The backends say which endpoint is on this node.
    let e = &out.table.services[&fe("10.0.9.1", 30080, Protocol::Tcp)];
    assert_eq!(
        e.backends.iter().map(|b| b.local).collect::<Vec<_>>(),
        vec![true, false]
    );

    // Without node-port addresses: only the cluster IP frontends.
    let out = build_on(&with(&[NP, NP_SLICE]), &NodeInfo::new("node-a", None));
    assert_eq!(out.table.services.len(), 3);
}

#[test]
fn node_ports_per_family_for_ipv6_and_dual_stack_services() {
    let svc = |ips: &str| {
        format!(
            "kind: Service\napiVersion: v1\nmetadata: {{name: s}}\nspec: {{type: NodePort, \
             clusterIPs: {ips}, ports: [{{port: 80, nodePort: 30080}}]}}\n"
        )
    };
    let out = build(&svc("[\"fd00::40\"]"));
    assert_eq!(
        frontends(&out),
        vec![
            "[fd00::40]:80/TCP ClusterIp",
            "[fd00:1::10]:30080/TCP NodePort"
        ]
    );
    let out = build(&svc("[10.96.0.40, \"fd00::40\"]"));
    assert_eq!(
        frontends(&out),
        vec![
            "10.0.9.1:30080/TCP NodePort",
            "10.96.0.40:80/TCP ClusterIp",
            "192.168.1.10:30080/TCP NodePort",
            "[fd00::40]:80/TCP ClusterIp",
            "[fd00:1::10]:30080/TCP NodePort",
        ]
    );
}

#[test]
fn node_ports_follow_the_node_port_fields_whatever_the_type() {
    // kube-proxy programs `nodePort != 0`: with allocateLoadBalancerNodePorts false the API
    // server allocates none, but node ports set explicitly are served.
    let out = build(
        r#"
kind: Service
apiVersion: v1
metadata: {name: lb}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 10.96.0.41
  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30081}]
"#,
    );
    assert_eq!(out.problems, vec![]);
    assert_eq!(
        frontends(&out),
        vec![
            "10.0.9.1:30081/TCP NodePort",
            "10.96.0.41:80/TCP ClusterIp",
            "10.96.0.41:81/TCP ClusterIp",
            "192.168.1.10:30081/TCP NodePort",
        ]
    );
    // nodePort 0 is none.
    let out = build(
        "kind: Service\napiVersion: v1\nmetadata: {name: z}\nspec: {type: NodePort, clusterIP: \
         10.96.0.42, ports: [{port: 80, nodePort: 0}]}\n",
    );
    assert_eq!(frontends(&out), vec!["10.96.0.42:80/TCP ClusterIp"]);
}

const LB: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.0.50]
  loadBalancerSourceRanges: [" 203.0.113.7/24 ", "198.51.100.0/24", "2001:db8::/32", "198.51.100.0/24"]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress:
    - {ip: 192.0.2.50}
    - {ip: 192.0.2.51, ipMode: VIP}
    - {ip: 192.0.2.52, ipMode: Proxy}
    - {hostname: lb.example.com}
    - {ip: "2001:db8::50"}
"#;

const LB_SLICE: &str = r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: lb-1, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.1.0.1], nodeName: node-a}
- {addresses: [10.1.0.2], nodeName: node-b}
"#;

#[test]
fn load_balancer_ips_vip_mode_of_the_family_with_source_ranges() {
    let out = build(&with(&[LB, LB_SLICE]));
    assert_eq!(out.problems, vec![]);
    // ipMode Proxy and hostname-only ingresses are left to the load balancer; the IPv6
    // ingress of an IPv4 service gets nothing (kube-proxy's per-family proxier).
    assert_eq!(
        frontends(&out),
        vec![
            "10.0.9.1:30080/TCP NodePort",
            "10.96.0.50:80/TCP ClusterIp",
            "192.0.2.50:80/TCP LoadBalancer",
            "192.0.2.51:80/TCP LoadBalancer",
            "192.168.1.10:30080/TCP NodePort",
        ]
    );
    let both = ["10.1.0.1:8080*", "10.1.0.2:8080"];
    let mut lb = kind(
        entry("default", "lb", "http", &both),
        FrontendKind::LoadBalancer,
    );
    // The ranges of the frontend's family, trimmed, masked, sorted, without duplicates.
    lb.source_ranges = vec![
        "198.51.100.0/24".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
    ]
    .into();
    assert_eq!(out.table.services[&fe("192.0.2.50", 80, Protocol::Tcp)], lb);
    // Node ports and cluster IPs are not subject to the source ranges (kube-proxy: "nodeports
    // are not subject to loadBalancerSourceRanges").
    for f in [
        fe("10.0.9.1", 30080, Protocol::Tcp),
        fe("10.96.0.50", 80, Protocol::Tcp),
    ] {
        assert!(out.table.services[&f].source_ranges.is_empty(), "{f}");
    }
}

#[test]
fn load_balancer_ips_of_an_ipv6_service_get_the_ipv6_ranges() {
    let yaml = LB.replace("clusterIPs: [10.96.0.50]", "clusterIPs: [\"fd00::50\"]");
    let out = build(&yaml);
    assert_eq!(out.problems, vec![]);
    let lb = &out.table.services[&fe("2001:db8::50", 80, Protocol::Tcp)];
    assert_eq!(lb.kind, FrontendKind::LoadBalancer);
    assert_eq!(
        lb.source_ranges.to_vec(),
        vec!["2001:db8::/32".parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(
        !out.table
            .services
            .contains_key(&fe("192.0.2.50", 80, Protocol::Tcp))
    );
}

const LOCAL_LB: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: loc}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  clusterIP: 10.96.0.60
  externalIPs: [192.0.2.99]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30060}, {name: alt, port: 81, targetPort: 8081, nodePort: 30061}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.60}]}}
"#;

fn loc_slice(endpoints: &str) -> String {
    format!(
        "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {{name: loc-1, labels: \
         {{kubernetes.io/service-name: loc}}}}\naddressType: IPv4\nports: [{{name: http, port: \
         8080}}, {{name: alt, port: 8081}}]\nendpoints:\n{endpoints}"
    )
}

#[test]
fn external_traffic_policy_local_keeps_cluster_backends_for_this_node_and_local_ones_outside() {
    let yaml = with(&[
        LOCAL_LB,
        &loc_slice(
            r#"
- {addresses: [10.1.0.1], nodeName: node-a}
- {addresses: [10.1.0.2], nodeName: node-b}
- {addresses: [10.1.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
"#,
        ),
    ]);
    let out = build(&yaml);
    assert_eq!(out.problems, vec![]);
    let cluster = ["10.1.0.1:8080*", "10.1.0.2:8080"];
    for (f, k) in [
        (
            fe("192.0.2.60", 80, Protocol::Tcp),
            FrontendKind::LoadBalancer,
        ),
        (
            fe("192.0.2.99", 80, Protocol::Tcp),
            FrontendKind::ExternalIp,
        ),
        (
            fe("192.168.1.10", 30060, Protocol::Tcp),
            FrontendKind::NodePort,
        ),
    ] {
        let e = &out.table.services[&f];
        assert_eq!(e.kind, k, "{f}");
        // Traffic from this node: the Cluster endpoints (kube-proxy's short-circuit).
        assert_eq!(
            e.backends.to_vec(),
            cluster.iter().map(|b| backend(b)).collect::<Vec<_>>(),
            "{f}"
        );
        // From outside: this node's ready endpoints.
        assert_eq!(
            e.external_local.as_deref(),
            Some(&[backend("10.1.0.1:8080*")][..]),
            "{f}"
        );
        assert_eq!(e.no_endpoints, NoEndpoints::Reject);
    }
    // The cluster IP is not external: no external view.
    assert_eq!(
        out.table.services[&fe("10.96.0.60", 80, Protocol::Tcp)].external_local,
        None
    );
    // The health check: one ready local endpoint (10.1.0.1, counted once over both ports).
    assert_eq!(
        out.health_checks.get("default/loc"),
        Some(&HealthCheck {
            port: 32000,
            local_endpoints: 1
        })
    );

    // On node-b: its own endpoint from outside.
    let b = NodeInfo {
        name: "node-b".into(),
        ..node()
    };
    let out = build_on(&yaml, &b);
    let e = &out.table.services[&fe("192.0.2.60", 80, Protocol::Tcp)];
    assert_eq!(
        e.external_local.as_deref(),
        Some(&[backend("10.1.0.2:8080*")][..])
    );
    assert_eq!(out.health_checks["default/loc"].local_endpoints, 1);
}

#[test]
fn external_traffic_policy_local_falls_back_to_local_terminating_and_drops_without_any() {
    // Only a serving-and-terminating endpoint here: used from outside (the local fallback),
    // but the health check counts ready ones only, so load balancers drain the node.
    let yaml = with(&[
        LOCAL_LB,
        &loc_slice(
            r#"
- {addresses: [10.1.0.2], nodeName: node-b}
- {addresses: [10.1.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
"#,
        ),
    ]);
    let out = build(&yaml);
    let e = &out.table.services[&fe("10.0.9.1", 30060, Protocol::Tcp)];
    assert_eq!(e.backends.to_vec(), vec![backend("10.1.0.2:8080")]);
    assert_eq!(
        e.external_local.as_deref(),
        Some(&[backend("10.1.0.3:8080*")][..])
    );
    assert_eq!(out.health_checks["default/loc"].local_endpoints, 0);

    // Nothing here: outside traffic dropped (Some(empty)), this node's own traffic still
    // reaches node-b.
    let yaml = with(&[
        LOCAL_LB,
        &loc_slice("- {addresses: [10.1.0.2], nodeName: node-b}\n"),
    ]);
    let out = build(&yaml);
    let e = &out.table.services[&fe("192.0.2.60", 80, Protocol::Tcp)];
    assert_eq!(e.backends.to_vec(), vec![backend("10.1.0.2:8080")]);
    assert_eq!(e.external_local.as_deref(), Some(&[][..]));

    // No endpoint anywhere: refused, from anywhere.
    let out = build(LOCAL_LB);
    let e = &out.table.services[&fe("192.0.2.60", 80, Protocol::Tcp)];
    assert!(e.backends.is_empty());
    assert_eq!(e.external_local.as_deref(), Some(&[][..]));
    assert_eq!(e.no_endpoints, NoEndpoints::Reject);
    assert_eq!(out.health_checks["default/loc"].local_endpoints, 0);
}

#[test]
fn external_traffic_policy_needs_an_externally_accessible_service() {
    // ClusterIP with external IPs is externally accessible: Local applies to them.
    let out = build(
        r#"
kind: Service
apiVersion: v1
metadata: {name: e}
spec: {clusterIP: 10.96.0.70, externalIPs: [192.0.2.70], externalTrafficPolicy: Local, ports: [{port: 80}]}
"#,
    );
    assert_eq!(out.problems, vec![]);
    assert_eq!(
        out.table.services[&fe("192.0.2.70", 80, Protocol::Tcp)].external_local,
        Some(Box::default())
    );
    // Cluster policy: no external view, and no health check even with a port.
    let out = build(&LOCAL_LB.replace(
        "externalTrafficPolicy: Local",
        "externalTrafficPolicy: Cluster",
    ));
    assert_eq!(out.problems, vec![]);
    assert!(
        out.table
            .services
            .values()
            .all(|e| e.external_local.is_none())
    );
    assert!(out.health_checks.is_empty());
    // NodePort with Local: the external view, but a health check only for LoadBalancer.
    let out = build(&LOCAL_LB.replace("type: LoadBalancer", "type: NodePort"));
    assert!(
        out.table.services[&fe("10.0.9.1", 30060, Protocol::Tcp)]
            .external_local
            .is_some()
    );
    assert!(out.health_checks.is_empty());
    // LoadBalancer Local without healthCheckNodePort: kube-proxy serves none.
    let out = build(&LOCAL_LB.replace("healthCheckNodePort: 32000", ""));
    assert!(out.health_checks.is_empty());
}

#[test]
fn topology_applies_to_the_cluster_set_of_external_frontends_not_to_the_local_one() {
    let yaml = with(&[
        LOCAL_LB,
        &loc_slice(
            r#"
- {addresses: [10.1.0.1], nodeName: node-a, hints: {forZones: [{name: z2}]}}
- {addresses: [10.1.0.2], nodeName: node-b, hints: {forZones: [{name: z1}]}}
"#,
        ),
    ]);
    let n = NodeInfo {
        zone: Some("z1".into()),
        ..node()
    };
    let out = build_on(&yaml, &n);
    let e = &out.table.services[&fe("192.0.2.60", 80, Protocol::Tcp)];
    assert_eq!(e.backends.to_vec(), vec![backend("10.1.0.2:8080")]);
    assert_eq!(
        e.external_local.as_deref(),
        Some(&[backend("10.1.0.1:8080*")][..])
    );
}

#[test]
fn internal_traffic_policy_applies_to_cluster_ips_only() {
    let yaml = with(&[
        &NP.replace(
            "type: NodePort",
            "type: NodePort\n  internalTrafficPolicy: Local",
        ),
        NP_SLICE,
    ]);
    let out = build(&yaml);
    assert_eq!(
        out.table.services[&fe("10.96.0.40", 80, Protocol::Tcp)]
            .backends
            .to_vec(),
        vec![backend("10.1.0.1:8080*")]
    );
    assert_eq!(
        out.table.services[&fe("10.0.9.1", 30080, Protocol::Tcp)]
            .backends
            .to_vec(),
        vec![backend("10.1.0.1:8080*"), backend("10.1.0.2:8080")]
    );
}

#[test]
fn session_affinity_carries_to_every_frontend_kind() {
    let yaml = LB.replace("type: LoadBalancer", "type: LoadBalancer\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}");
    let out = build(&yaml);
    assert_eq!(out.problems, vec![]);
    assert!(
        out.table
            .services
            .values()
            .all(|e| e.affinity_timeout_s == Some(60))
    );
}

#[test]
fn the_health_check_counts_distinct_ready_local_addresses_of_the_primary_family() {
    let yaml = with(&[
        &LOCAL_LB.replace(
            "clusterIP: 10.96.0.60",
            "clusterIPs: [10.96.0.60, \"fd00::60\"]",
        ),
        r#"
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: loc-1, labels: {kubernetes.io/service-name: loc}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.1.0.1], nodeName: node-a}
- {addresses: [10.1.0.4], nodeName: node-a}
- {addresses: [10.1.0.5], nodeName: node-a, conditions: {ready: false}}
- {addresses: [10.1.0.2], nodeName: node-b}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: loc-2, labels: {kubernetes.io/service-name: loc}}
addressType: IPv4
ports: [{name: alt, port: 8081}]
endpoints:
- {addresses: [10.1.0.1], nodeName: node-a}
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: loc-6, labels: {kubernetes.io/service-name: loc}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ["fd00::1"], nodeName: node-a}
"#,
    ]);
    let out = build(&yaml);
    assert_eq!(out.problems, vec![]);
    assert_eq!(out.health_checks["default/loc"].local_endpoints, 2);
}

#[test]
fn a_frontend_twice_in_one_service_is_kept_once() {
    // An external IP that is also a node address, with port = nodePort.
    let out = build(
        r#"
kind: Service
apiVersion: v1
metadata: {name: d}
spec: {type: NodePort, clusterIP: 10.96.0.80, externalIPs: [10.0.9.1], ports: [{port: 30080, nodePort: 30080}]}
"#,
    );
    assert_eq!(out.problems, vec![]);
    assert_eq!(
        frontends(&out),
        vec![
            "10.0.9.1:30080/TCP ExternalIp",
            "10.96.0.80:30080/TCP ClusterIp",
            "192.168.1.10:30080/TCP NodePort",
        ]
    );
}

#[test]
fn a_node_port_used_by_two_services_first_wins_whatever_the_addresses() {
    let a = "kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {type: NodePort, \
             clusterIP: 10.96.1.1, ports: [{port: 80, nodePort: 30080}]}\n";
    let b = "kind: Service\napiVersion: v1\nmetadata: {name: b}\nspec: {type: NodePort, \
             clusterIP: 10.96.1.2, ports: [{port: 80, protocol: UDP, nodePort: 30080}, {port: \
             81, nodePort: 30080}]}\n";
    let want = vec![problem(
        "b",
        ProblemKind::DuplicateNodePort {
            field: "spec.ports[1].nodePort".into(),
            node_port: 30080,
            protocol: Protocol::Tcp,
            owner: "Service default/a".into(),
        },
    )];
    for node in [node(), NodeInfo::new("node-a", None)] {
        let out = build_on(&with(&[a, b]), &node);
        assert_eq!(out.problems, want);
        // b contributes nothing, not even its cluster IP; a is untouched.
        assert!(out.table.services.values().all(|e| e.service.name() == "a"));
    }
    assert_eq!(
        want[0].to_string(),
        "Service default/b: spec.ports[1].nodePort 30080/TCP is already used by Service default/a"
    );
}

#[test]
fn bad_node_ports_source_ranges_ingress_ips_and_health_check_ports_name_the_field() {
    let cases: Vec<(String, ProblemKind)> = vec![
        (
            NP.replace("nodePort: 30053", "nodePort: 70000"),
            ProblemKind::InvalidNodePort {
                field: "spec.ports[1].nodePort".into(),
                node_port: 70000,
            },
        ),
        (
            NP.replace("nodePort: 30080", "nodePort: -1"),
            ProblemKind::InvalidNodePort {
                field: "spec.ports[0].nodePort".into(),
                node_port: -1,
            },
        ),
        (
            NP.replace(
                "nodePort: 30053",
                "nodePort: 30053}\n  - {name: again, port: 54, protocol: UDP, nodePort: 30053",
            ),
            ProblemKind::DuplicateNodePort {
                field: "spec.ports[2].nodePort".into(),
                node_port: 30053,
                protocol: Protocol::Udp,
                owner: "spec.ports[1] of the same Service".into(),
            },
        ),
        (
            LB.replace(
                "\"198.51.100.0/24\", \"2001",
                "\"198.51.100.300/24\", \"2001",
            ),
            ProblemKind::InvalidSourceRange {
                field: "spec.loadBalancerSourceRanges[1]".into(),
                value: "198.51.100.300/24".into(),
            },
        ),
        (
            LB.replace("ip: 192.0.2.51,", "ip: lb.example.com,"),
            ProblemKind::InvalidLoadBalancerIp {
                field: "status.loadBalancer.ingress[1].ip".into(),
                value: "lb.example.com".into(),
            },
        ),
        (
            LOCAL_LB.replace("healthCheckNodePort: 32000", "healthCheckNodePort: 65536"),
            ProblemKind::InvalidHealthCheckNodePort(65536),
        ),
        (
            LOCAL_LB.replace(
                "externalTrafficPolicy: Local",
                "externalTrafficPolicy: Global",
            ),
            ProblemKind::InvalidExternalTrafficPolicy("Global".into()),
        ),
    ];
    let other = "kind: Service\napiVersion: v1\nmetadata: {name: other}\nspec: {clusterIP: \
                 10.96.9.9, ports: [{port: 80}]}\n";
    for (yaml, want) in cases {
        let out = build(&with(&[&yaml, other]));
        assert_eq!(out.problems.len(), 1, "{yaml}: {:?}", out.problems);
        assert_eq!(out.problems[0].kind, want, "{yaml}");
        assert_eq!(out.problems[0].severity(), Severity::Error);
        // Rejected as a whole; the other service is undisturbed.
        assert_eq!(
            frontends(&out),
            vec!["10.96.9.9:80/TCP ClusterIp"],
            "{yaml}"
        );
    }
    // A proxy-mode ingress is not looked at, even with a bad IP.
    let out = build(&LB.replace("ip: 192.0.2.52,", "ip: bogus,"));
    assert_eq!(out.problems, vec![]);
}

#[test]
fn explain_says_what_outside_and_inside_clients_get() {
    let (services, slices) = parse(&with(&[
        LOCAL_LB
            .replace(
                "spec:\n",
                "spec:\n  loadBalancerSourceRanges: [203.0.113.0/24]\n",
            )
            .as_str(),
        &loc_slice(
            r#"
- {addresses: [10.1.0.1], nodeName: node-a}
- {addresses: [10.1.0.2], nodeName: node-b}
"#,
        ),
    ]));
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    let n = node();
    let ex = explain(
        &services[0],
        &refs,
        &n,
        &fe("192.168.1.10", 30060, Protocol::Tcp),
    );
    assert_eq!(ex.status, FrontendStatus::Active);
    assert_eq!(ex.kind, Some(FrontendKind::NodePort));
    assert_eq!(ex.policy, Some(TrafficPolicy::Cluster));
    assert_eq!(ex.external_policy, Some(TrafficPolicy::Local));
    assert_eq!(
        ex.backends,
        vec![
            "10.1.0.1:8080".parse().unwrap(),
            "10.1.0.2:8080".parse().unwrap()
        ]
    );
    assert_eq!(
        ex.external_backends,
        Some(vec!["10.1.0.1:8080".parse().unwrap()])
    );
    let verdicts: Vec<(bool, Option<bool>, Option<endpoints::NotUsed>)> = ex
        .endpoints
        .iter()
        .map(|e| (e.used, e.external_used, e.external_reason.clone()))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            (true, Some(true), None),
            (true, Some(false), Some(endpoints::NotUsed::OtherNode)),
        ]
    );
    assert!(
        ex.rule.contains("node port: traffic from this node"),
        "{}",
        ex.rule
    );
    let rule = ex.external_rule.as_deref().unwrap_or_default();
    assert!(rule.contains("externalTrafficPolicy Local"), "{rule}");
    // Node ports are not subject to source ranges; the load-balancer IP is.
    assert!(ex.source_ranges.is_empty());
    let ex = explain(
        &services[0],
        &refs,
        &n,
        &fe("192.0.2.60", 80, Protocol::Tcp),
    );
    assert_eq!(ex.kind, Some(FrontendKind::LoadBalancer));
    assert_eq!(
        ex.source_ranges,
        vec!["203.0.113.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    let rule = ex.external_rule.as_deref().unwrap_or_default();
    assert!(rule.contains("only from 203.0.113.0/24"), "{rule}");
    // The cluster IP: no external view.
    let ex = explain(
        &services[0],
        &refs,
        &n,
        &fe("10.96.0.60", 80, Protocol::Tcp),
    );
    assert_eq!(ex.external_policy, None);
    assert!(ex.endpoints.iter().all(|e| e.external_used.is_none()));
    // The explanation agrees with the table.
    let out = build_table(&services, &slices, &n);
    let want: Vec<std::net::SocketAddr> = out.table.services
        [&fe("192.168.1.10", 30060, Protocol::Tcp)]
        .external_local
        .iter()
        .flatten()
        .map(|b: &Backend| b.socket_addr())
        .collect();
    assert_eq!(want, vec!["10.1.0.1:8080".parse().unwrap()]);
}
