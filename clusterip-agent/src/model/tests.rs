//! The model's rules, case by case.

use super::endpoints::NotUsed;
use super::table::{NoEndpoints, Protocol, ServiceEntry};
use super::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub(super) fn parse_objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for value in serde_saphyr::from_multiple_with_options::<serde_json::Value>(
        yaml,
        serde_saphyr::options! { strict_booleans: true },
    )
    .unwrap()
    {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => services.push(serde_json::from_value(value).unwrap()),
            Some("EndpointSlice") => slices.push(serde_json::from_value(value).unwrap()),
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

use crate::model::table::test_support::{entry, fe, table};

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
            entry("default", "c", "", &["10.0.0.1:80*"])
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
            entry("default", "c", "", &["10.0.0.1:80*", "10.0.0.2:80*"])
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
    e.kind = FrontendKind::ExternalIp;
    e
}

/// kube-proxy's proxier of a family skips a service without a cluster IP of that family: an
/// external IP of the other family gets no frontend.
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
        ])
    );
    // Dual-stack: each family's external IPs.
    let out = build(&with(&[r#"
kind: Service
apiVersion: v1
metadata: {name: e, namespace: n}
spec:
  clusterIPs: [10.96.7.1, "fd00::7:1"]
  externalIPs: [192.0.2.10, "2001:db8::10"]
  ports: [{name: http, port: 80, targetPort: 8080}]
"#]));
    assert_eq!(out.problems, vec![]);
    let frontends: Vec<String> = out.table.services.keys().map(|f| f.to_string()).collect();
    assert_eq!(
        frontends,
        vec![
            "10.96.7.1:80/TCP",
            "192.0.2.10:80/TCP",
            "[2001:db8::10]:80/TCP",
            "[fd00::7:1]:80/TCP"
        ]
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
                &format!("{{clusterIP: \"fd00::9:1\", clusterIPs: [\"fd00::9:1\"], ports: [{b}]}}"),
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
    serde_saphyr::from_str(yaml).unwrap()
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
            health_check: None,
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
    let backends: Vec<std::net::SocketAddr> = built.entries[0]
        .1
        .backends
        .iter()
        .map(|b| b.socket_addr())
        .collect();
    assert_eq!(backends, ex.backends);

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
