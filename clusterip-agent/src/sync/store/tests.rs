//! The store: incremental rebuilds, relists, conflicts, and the store fed by the manifest
//! source (what the agent runs with `--manifests`).

use super::*;
use crate::model::table::Protocol;
use crate::source::manifests::ManifestSource;
use crate::source::manifests::test_support::{
    TempDir, node as node_yaml, rss_kib, scale_yaml, slice as slice_yaml, svc as svc_yaml,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn svc(ns: &str, name: &str, ip: &str, port: u16) -> Service {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: http, port: {port}, targetPort: 8080}}]}}"
    ))
    .unwrap()
}

/// A LoadBalancer service with `externalTrafficPolicy: Local`, a node port and a health
/// check node port.
fn lb_svc(ns: &str, name: &str, ip: &str, node_port: u16, hc: u16) -> Service {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: {hc}, \
         clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]}}"
    ))
    .unwrap()
}

/// Endpoints `ip` or `ip@node`.
fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| match ip.split_once('@') {
            Some((ip, node)) => {
                format!("{{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}")
            }
            None => format!("{{addresses: [{ip}], conditions: {{ready: true}}}}"),
        })
        .collect();
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints: [{}]",
        eps.join(", ")
    ))
    .unwrap()
}

fn fe(ip: &str, port: u16) -> Frontend {
    Frontend {
        vip: ip.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
    }
}

fn backends(store: &Store, f: Frontend) -> Vec<String> {
    store.table().services[&f]
        .backends
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn svc_applied(svc: Service) -> SourceEvent {
    SourceEvent::ServiceApplied(Arc::new(ServiceObject::new(&svc)))
}

fn slice_applied(slice: EndpointSlice) -> SourceEvent {
    SourceEvent::SliceApplied(Arc::new(SliceObject::new(&slice)))
}

/// A complete list of services, as a source reports it.
fn list_services(s: &mut Store, at: Instant, all: Vec<Service>) {
    s.handle(at, SourceEvent::Listing(ObjectKind::Service));
    for svc in all {
        s.handle(at, svc_applied(svc));
    }
    s.handle(at, SourceEvent::Listed(ObjectKind::Service));
}

/// A complete list of slices, as a source reports it.
fn list_slices(s: &mut Store, at: Instant, all: Vec<EndpointSlice>) {
    s.handle(at, SourceEvent::Listing(ObjectKind::EndpointSlice));
    for slice in all {
        s.handle(at, slice_applied(slice));
    }
    s.handle(at, SourceEvent::Listed(ObjectKind::EndpointSlice));
}

fn node() -> NodeInfo {
    NodeInfo::new("node-a", None)
}

#[test]
fn only_changed_services_are_rebuilt_and_touched() {
    let now = Instant::now();
    let mut s = Store::new(node());
    let services: Vec<Service> = (1..=50)
        .map(|i| svc("ns", &format!("s{i}"), &format!("10.96.0.{i}"), 80))
        .collect();
    let slices: Vec<EndpointSlice> = (1..=50)
        .map(|i| {
            slice(
                "ns",
                &format!("s{i}-a"),
                &format!("s{i}"),
                &[&format!("10.1.0.{i}")],
            )
        })
        .collect();
    list_services(&mut s, now, services.clone());
    assert!(!s.initialized());
    list_slices(&mut s, now, slices.clone());
    assert!(s.initialized());
    let c = s.compute();
    assert_eq!(c.touched.len(), 50);
    assert_eq!(c.since, Some(now));

    // One endpoint change: one service rebuilt, one frontend touched.
    let later = now + std::time::Duration::from_millis(5);
    s.handle(
        later,
        slice_applied(slice("ns", "s7-a", "s7", &["10.1.0.7", "10.1.1.7"])),
    );
    let c = s.compute();
    assert_eq!(c.services_rebuilt, 1);
    assert_eq!(
        c.touched.into_iter().collect::<Vec<_>>(),
        vec![fe("10.96.0.7", 80)]
    );
    assert_eq!(c.since, Some(later));
    assert_eq!(
        backends(&s, fe("10.96.0.7", 80)),
        ["10.1.0.7:8080", "10.1.1.7:8080"]
    );

    // A relist with the same objects changes nothing: nothing is rewritten.
    list_services(&mut s, later, services.clone());
    let c = s.compute();
    assert!(c.touched.is_empty());
    assert_eq!(s.table().services.len(), 50);

    // Nothing dirty: compute is a no-op.
    let c = s.compute();
    assert_eq!((c.services_rebuilt, c.since), (0, None));
}

#[test]
fn relist_removes_only_what_is_gone() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(
        &mut s,
        now,
        vec![
            svc("ns", "a", "10.96.0.1", 80),
            svc("ns", "b", "10.96.0.2", 80),
        ],
    );
    list_slices(
        &mut s,
        now,
        vec![
            slice("ns", "a-1", "a", &["10.1.0.1"]),
            slice("ns", "b-1", "b", &["10.1.0.2"]),
        ],
    );
    s.compute();
    // The relist after a watch outage: b and its slice are gone, a's slice changed.
    list_services(&mut s, now, vec![svc("ns", "a", "10.96.0.1", 80)]);
    list_slices(&mut s, now, vec![slice("ns", "a-1", "a", &["10.1.0.9"])]);
    let c = s.compute();
    assert_eq!(
        c.touched.into_iter().collect::<Vec<_>>(),
        vec![fe("10.96.0.1", 80), fe("10.96.0.2", 80)]
    );
    assert_eq!(backends(&s, fe("10.96.0.1", 80)), ["10.1.0.9:8080"]);
    assert!(!s.table().services.contains_key(&fe("10.96.0.2", 80)));
}

#[test]
fn slice_moving_between_services_rebuilds_both() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(
        &mut s,
        now,
        vec![
            svc("ns", "a", "10.96.0.1", 80),
            svc("ns", "b", "10.96.0.2", 80),
        ],
    );
    list_slices(&mut s, now, vec![slice("ns", "x", "a", &["10.1.0.1"])]);
    s.compute();
    s.handle(now, slice_applied(slice("ns", "x", "b", &["10.1.0.1"])));
    s.compute();
    assert!(backends(&s, fe("10.96.0.1", 80)).is_empty());
    assert_eq!(backends(&s, fe("10.96.0.2", 80)), ["10.1.0.1:8080"]);
    s.handle(
        now,
        SourceEvent::SliceDeleted(Key::of(&(slice("ns", "x", "b", &[])).metadata)),
    );
    s.compute();
    assert!(backends(&s, fe("10.96.0.2", 80)).is_empty());
}

#[test]
fn a_conflicting_service_gets_the_frontend_when_the_holder_goes() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(&mut s, now, vec![svc("ns", "a", "10.96.0.1", 80)]);
    list_slices(&mut s, now, vec![]);
    s.compute();
    s.handle(now, svc_applied(svc("ns", "b", "10.96.0.1", 80)));
    s.compute();
    assert_eq!(s.table().services[&fe("10.96.0.1", 80)].service.name(), "a");
    assert_eq!(s.problems().len(), 1, "{:?}", s.problems());
    s.handle(
        now,
        SourceEvent::ServiceDeleted(Key::of(&(svc("ns", "a", "10.96.0.1", 80)).metadata)),
    );
    let c = s.compute();
    assert_eq!(s.table().services[&fe("10.96.0.1", 80)].service.name(), "b");
    assert!(c.touched.contains(&fe("10.96.0.1", 80)));
    assert!(s.problems().is_empty(), "{:?}", s.problems());
}

#[test]
fn a_node_port_address_change_rebuilds_the_services_with_node_ports() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(
        &mut s,
        now,
        vec![
            svc("ns", "a", "10.96.0.1", 80),
            lb_svc("ns", "b", "10.96.0.2", 30080, 32000),
        ],
    );
    list_slices(&mut s, now, vec![]);
    s.compute();
    assert_eq!(s.table().services.len(), 2);
    let addrs: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
    assert!(s.set_node_port_addresses(now, &addrs));
    let c = s.compute();
    assert_eq!(c.services_rebuilt, 1);
    assert_eq!(
        c.touched
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["192.168.1.10:30080/TCP"]
    );
    assert_eq!(
        s.table().services[&fe("192.168.1.10", 30080)].kind,
        model::FrontendKind::NodePort
    );
    // The same again: nothing.
    assert!(!s.set_node_port_addresses(now, &addrs));
    assert_eq!(s.compute().services_rebuilt, 0);
    // Gone: the frontend goes.
    assert!(s.set_node_port_addresses(now, &[]));
    let c = s.compute();
    assert!(c.touched.contains(&fe("192.168.1.10", 30080)));
    assert_eq!(s.table().services.len(), 2);
}

#[test]
fn a_node_port_conflict_is_resolved_when_the_holder_lets_go() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(
        &mut s,
        now,
        vec![lb_svc("ns", "a", "10.96.0.1", 30080, 32000)],
    );
    list_slices(&mut s, now, vec![]);
    s.compute();
    s.handle(
        now,
        svc_applied(lb_svc("ns", "b", "10.96.0.2", 30080, 32001)),
    );
    s.compute();
    assert!(!s.table().services.contains_key(&fe("10.96.0.2", 80)));
    assert_eq!(
        s.problems()["Service ns/b"],
        vec!["spec.ports[0].nodePort 30080/TCP is already used by Service ns/a"]
    );
    // b has no health check while rejected.
    assert_eq!(
        s.health_checks()
            .keys()
            .map(Key::as_str)
            .collect::<Vec<_>>(),
        vec!["ns/a"]
    );
    // a moves to another node port: b gets in.
    s.handle(
        now,
        svc_applied(lb_svc("ns", "a", "10.96.0.1", 30081, 32000)),
    );
    let c = s.compute();
    assert!(c.touched.contains(&fe("10.96.0.2", 80)));
    assert!(c.health_checks);
    assert!(s.problems().is_empty(), "{:?}", s.problems());
    assert_eq!(s.health_checks().len(), 2);
}

#[test]
fn health_checks_follow_the_local_endpoints() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(
        &mut s,
        now,
        vec![lb_svc("ns", "a", "10.96.0.1", 30080, 32000)],
    );
    list_slices(
        &mut s,
        now,
        vec![slice("ns", "a-1", "a", &["10.1.0.2@node-b"])],
    );
    let c = s.compute();
    assert!(c.health_checks);
    let hc = |s: &Store| s.health_checks().get("ns/a").copied();
    assert_eq!(
        hc(&s),
        Some(model::HealthCheck {
            port: 32000,
            local_endpoints: 0
        })
    );
    s.handle(
        now,
        slice_applied(slice(
            "ns",
            "a-1",
            "a",
            &["10.1.0.1@node-a", "10.1.0.2@node-b"],
        )),
    );
    assert!(s.compute().health_checks);
    assert_eq!(hc(&s).map(|h| h.local_endpoints), Some(1));
    // A change that leaves the count alone does not report one.
    s.handle(
        now,
        slice_applied(slice(
            "ns",
            "a-1",
            "a",
            &["10.1.0.1@node-a", "10.1.0.3@node-b"],
        )),
    );
    assert!(!s.compute().health_checks);
    // The service goes: its health check too.
    s.handle(now, SourceEvent::ServiceDeleted(Key::new("ns", "a")));
    assert!(s.compute().health_checks);
    assert!(s.health_checks().is_empty());
}

#[test]
fn a_zone_change_rebuilds_every_service() {
    let now = Instant::now();
    let mut s = Store::new(node());
    list_services(&mut s, now, vec![svc("ns", "a", "10.96.0.1", 80)]);
    list_slices(&mut s, now, vec![]);
    s.compute();
    s.handle(
        now,
        SourceEvent::NodeUpdated {
            zone: Some("z1".into()),
            deleting: false,
            addresses: Default::default(),
        },
    );
    assert_eq!(s.node().zone.as_deref(), Some("z1"));
    assert_eq!(s.compute().services_rebuilt, 1);
    s.handle(
        now,
        SourceEvent::NodeUpdated {
            zone: Some("z1".into()),
            deleting: false,
            addresses: Default::default(),
        },
    );
    assert_eq!(s.compute().services_rebuilt, 0);
}

#[test]
fn a_relist_removes_nothing_until_it_is_complete() {
    let now = Instant::now();
    let mut s = Store::new(node());
    let (a, b) = (
        svc("ns", "a", "10.96.0.1", 80),
        svc("ns", "b", "10.96.0.2", 80),
    );
    list_services(&mut s, now, vec![a.clone(), b.clone()]);
    list_slices(&mut s, now, vec![]);
    assert_eq!(s.compute().touched.len(), 2);
    // A relist under way has listed only a: b is still there, nothing is rewritten.
    s.handle(now, SourceEvent::Listing(ObjectKind::Service));
    s.handle(now, svc_applied(a.clone()));
    let c = s.compute();
    assert!(c.touched.is_empty() && s.table().services.len() == 2);
    // It breaks off; the next one lists only b and completes: a is gone, b untouched.
    s.handle(now, SourceEvent::Listing(ObjectKind::Service));
    s.handle(now, svc_applied(b));
    assert_eq!(s.table().services.len(), 2);
    s.handle(now, SourceEvent::Listed(ObjectKind::Service));
    let c = s.compute();
    assert_eq!(
        c.touched.into_iter().collect::<Vec<_>>(),
        vec![fe("10.96.0.1", 80)]
    );
    assert_eq!(s.table().services.len(), 1);
}

/// Whatever the order of events (relists included), the incremental table is the one the
/// model builds from the final objects in one go.
#[test]
fn incremental_table_equals_the_full_build() {
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let now = Instant::now();
    for _round in 0..20 {
        let mut s = Store::new(node());
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        list_services(&mut s, now, vec![]);
        list_slices(&mut s, now, vec![]);
        for _ in 0..200 {
            let i = next(12);
            let name = format!("s{i}");
            match next(8) {
                0 | 1 => {
                    // Distinct VIPs and node ports (duplicates would make the winner
                    // order-dependent).
                    let vip = format!("10.96.0.{i}");
                    let v = match next(3) {
                        0 => lb_svc("ns", &name, &vip, 30000 + i as u16, 32000 + i as u16),
                        _ => svc("ns", &name, &vip, 80 + next(2) as u16),
                    };
                    services.insert(name, v.clone());
                    s.handle(now, svc_applied(v));
                }
                2 => {
                    if let Some(v) = services.remove(&name) {
                        s.handle(now, SourceEvent::ServiceDeleted(Key::of(&v.metadata)));
                    }
                }
                3 => {
                    let sname = format!("x{}", next(16));
                    let owner = format!("s{}", next(12));
                    let ips: Vec<String> = (0..next(4))
                        .map(|k| format!("10.1.{i}.{k}@node-{}", ["a", "b"][next(2) as usize]))
                        .collect();
                    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
                    let v = slice("ns", &sname, &owner, &refs);
                    slices.insert(sname, v.clone());
                    s.handle(now, slice_applied(v));
                }
                7 => {
                    let all = ["192.168.1.10", "10.0.9.1", "fd00::10"];
                    let pick: Vec<IpAddr> = all
                        .iter()
                        .filter(|_| next(2) == 0)
                        .map(|a| a.parse().unwrap())
                        .collect();
                    s.set_node_port_addresses(now, &pick);
                }
                5 => {
                    // A relist after 410 Gone, lacking one service (deleted meanwhile), after
                    // a list that broke off halfway.
                    services.remove(&name);
                    let all: Vec<Service> = services.values().cloned().collect();
                    s.handle(now, SourceEvent::Listing(ObjectKind::Service));
                    for v in all.iter().take(next(3) as usize) {
                        s.handle(now, svc_applied(v.clone()));
                    }
                    list_services(&mut s, now, all);
                }
                6 => {
                    let sname = format!("x{}", next(16));
                    slices.remove(&sname);
                    let all: Vec<EndpointSlice> = slices.values().cloned().collect();
                    s.handle(now, SourceEvent::Listing(ObjectKind::EndpointSlice));
                    for v in all.iter().take(next(3) as usize) {
                        s.handle(now, slice_applied(v.clone()));
                    }
                    list_slices(&mut s, now, all);
                }
                _ => {
                    let sname = format!("x{}", next(16));
                    if let Some(v) = slices.remove(&sname) {
                        s.handle(now, SourceEvent::SliceDeleted(Key::of(&v.metadata)));
                    }
                }
            }
            if next(4) == 0 {
                s.compute();
            }
        }
        s.compute();
        let all_services: Vec<Service> = services.values().cloned().collect();
        let all_slices: Vec<EndpointSlice> = slices.values().cloned().collect();
        let full = model::build_table(&all_services, &all_slices, s.node());
        assert_eq!(s.table(), &full.table);
        assert_eq!(s.health_checks(), &full.health_checks);
    }
}

fn describe(ev: &SourceEvent) -> String {
    match ev {
        SourceEvent::ServiceApplied(s) => format!("ServiceApplied {}", s.key()),
        SourceEvent::ServiceDeleted(k) => format!("ServiceDeleted {k}"),
        SourceEvent::SliceApplied(s) => format!("SliceApplied {}", s.key()),
        SourceEvent::SliceDeleted(k) => format!("SliceDeleted {k}"),
        SourceEvent::Listing(kind) => format!("Listing {kind}"),
        SourceEvent::Listed(kind) => format!("Listed {kind}"),
        SourceEvent::NodeUpdated { zone: z, .. } => format!("NodeZone {z:?}"),
        SourceEvent::WatchRestarted(r) => format!("WatchRestarted {r}"),
    }
}

/// The manifest source reports its whole set, then only what changed; the store fed with
/// those events holds the table the source computes itself.
#[test]
fn the_manifest_sources_events_keep_the_store_equal_to_its_table() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}",
            svc_yaml("a", "10.96.33.1"),
            slice_yaml("a-1", "a", &["10.0.0.1"]),
            svc_yaml("b", "10.96.33.2")
        ),
    );
    dir.write("nodes.yaml", &node_yaml("node-a", Some("z1")));
    let mut src = ManifestSource::new(dir.0.clone(), "node-a".into());
    let mut store = Store::new(NodeInfo::new("node-a", None));
    let mut feed = |events: Vec<SourceEvent>| {
        let descriptions: Vec<String> = events.iter().map(describe).collect();
        for ev in events {
            store.handle(std::time::Instant::now(), ev);
        }
        store.compute();
        (descriptions, store.table().clone())
    };

    let (events, table) = feed(src.poll_events().unwrap());
    assert_eq!(
        events,
        vec![
            "NodeZone Some(\"z1\")",
            "Listing Service",
            "ServiceApplied t/a",
            "ServiceApplied t/b",
            "Listed Service",
            "Listing EndpointSlice",
            "SliceApplied t/a-1",
            "Listed EndpointSlice",
        ]
    );
    assert_eq!(Some(table), src.poll());
    assert!(src.poll_events().is_none());

    // One endpoint changes, b is removed, c is added; a unchanged.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}",
            svc_yaml("a", "10.96.33.1"),
            slice_yaml("a-1", "a", &["10.0.0.2"]),
            svc_yaml("c", "10.96.33.3")
        ),
    );
    let (mut events, table) = feed(src.poll_events().unwrap());
    events.sort();
    assert_eq!(
        events,
        vec![
            "ServiceApplied t/c",
            "ServiceDeleted t/b",
            "SliceApplied t/a-1"
        ]
    );
    let expected = src.poll().unwrap();
    assert_eq!(table, expected);
    assert_eq!(expected.services.len(), 2);

    // A rejected change keeps the last good version: nothing to report.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}",
            svc_yaml("a", "10.96.33.999"),
            slice_yaml("a-1", "a", &["10.0.0.2"]),
            svc_yaml("c", "10.96.33.3")
        ),
    );
    assert!(src.poll_events().is_none());
    assert!(
        src.problems()
            .iter()
            .any(|p| p.message.contains("Service t/a") && p.message.contains("last good")),
        "{:?}",
        src.problems()
    );

    // The zone moves; the slice goes.
    dir.write("nodes.yaml", &node_yaml("node-a", Some("z2")));
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            svc_yaml("a", "10.96.33.1"),
            svc_yaml("c", "10.96.33.3")
        ),
    );
    let (mut events, table) = feed(src.poll_events().unwrap());
    events.sort();
    assert_eq!(events, vec!["NodeZone Some(\"z2\")", "SliceDeleted t/a-1"]);
    assert_eq!(Some(table), src.poll());
    assert!(src.poll_events().is_none());
}

/// Memory at scale (run by hand, `--ignored --nocapture`).
mod scale {
    use super::*;

    fn in_use() -> usize {
        // SAFETY: plain allocator statistics.
        unsafe {
            libc::malloc_trim(0);
            libc::mallinfo2().uordblks
        }
    }

    /// Memory the store keeps at 10,000 services x 10 endpoints (run by hand:
    /// `cargo test --release -p clusterip-agent --lib store::tests::scale -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn memory_at_10k() {
        let base = in_use();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..10_000usize {
            services.push(
                serde_json::from_value::<Service>(serde_json::json!({
                    "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                    "spec": {"clusterIP": format!("10.{}.{}.{}", 96 + i / 62_500, (i / 250) % 250, i % 250 + 1),
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap(),
            );
            let eps: Vec<serde_json::Value> = (0..10)
                .map(|e| serde_json::json!({"addresses": [format!("100.{}.{}.{}", 64 + i / 6000, (i / 25) % 250, (i % 25) * 10 + e)], "conditions": {"ready": true}}))
                .collect();
            slices.push(
                serde_json::from_value::<EndpointSlice>(serde_json::json!({
                    "metadata": {"name": format!("svc-{i}-a"), "namespace": "bench",
                                 "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": eps
                }))
                .unwrap(),
            );
        }
        let typed = in_use();
        let mut s = Store::new(NodeInfo::new("n", None));
        let now = Instant::now();
        list_services(&mut s, now, services);
        list_slices(&mut s, now, slices);
        let stored = in_use();
        let c = s.compute();
        let computed = in_use();
        let table_only: usize = s.table().services.len();
        eprintln!(
            "typed objects {} MB; store after handle {} MB; after compute {} MB ({} frontends, {} touched)",
            (typed - base) >> 20,
            (stored - base) >> 20,
            (computed - base) >> 20,
            table_only,
            c.touched.len()
        );
        let t = std::mem::take(&mut s.table);
        drop(t);
        eprintln!("without the table {} MB", (in_use() - base) >> 20);
    }

    /// The manifest source's objects into the store, as the agent does with `--manifests`:
    /// the source on a thread of its own, its events into the store, the objects shared by
    /// both. The time the store takes and the memory of both (`cargo test --release -p
    /// clusterip-agent --lib store::tests::scale -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn from_the_manifest_source_at_10k() {
        let n = 10_000;
        let dir = TempDir::new();
        let file = dir.write("svc.yaml", &scale_yaml(n, 10));
        let rss0 = rss_kib();
        let (source, events) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut source = ManifestSource::new(file.clone(), "node-a".into());
                let events = source.poll_events().unwrap();
                (source, events)
            })
            .join()
            .unwrap()
        });
        let t = std::time::Instant::now();
        let mut store = Store::new(NodeInfo::new("node-a", None));
        let at = std::time::Instant::now();
        for ev in events {
            store.handle(at, ev);
        }
        store.compute();
        let store_time = t.elapsed();
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
        let rss_store = rss_kib();
        eprintln!(
            "scale: store took {store_time:?}; RSS with the source and the store, trimmed: \
             {rss_store} KiB, +{} KiB ({} frontends)",
            rss_store.saturating_sub(rss0),
            store.table().services.len()
        );
        drop(store);
        drop(source);
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
        eprintln!("scale: both dropped, trimmed: {} KiB", rss_kib());
    }
}
