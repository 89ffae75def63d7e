//! The manifest source: files, change detection, last good state, events.

use super::test_support::{TempDir, node, rss_kib, scale_yaml, slice, svc};
use super::*;
use crate::model::table::Protocol;

use crate::model::table::test_support::{entry, fe, table};

fn source(path: &Path) -> ManifestSource {
    ManifestSource::new(path.to_owned(), "node-a".into())
}

fn has_problem(src: &ManifestSource, severity: Severity, parts: &[&str]) -> bool {
    src.problems()
        .iter()
        .any(|p| p.severity == severity && parts.iter().all(|s| p.message.contains(s)))
}

#[test]
fn first_poll_returns_empty_table_then_none() {
    let dir = TempDir::new();
    let mut src = source(&dir.0);
    assert_eq!(src.poll(), Some(DesiredTable::default()));
    assert_eq!(src.poll(), None);
    // A missing path is an empty table too.
    let mut missing = source(&dir.0.join("nope"));
    assert_eq!(missing.poll(), Some(DesiredTable::default()));
    assert!(has_problem(&missing, Severity::Warning, &["nope"]));
}

#[test]
fn multi_document_file_with_default_namespace() {
    let dir = TempDir::new();
    let file = dir.write(
        "all.yaml",
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.5.1, ports: [{name: http, port: 80}]}
---
# an empty document
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
data: {a: b}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
"#,
    );
    let mut src = source(&file);
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.5.1", 80, Protocol::Tcp),
            entry("default", "web", "http", &["10.0.0.1:8080"])
        )]))
    );
    assert_eq!(src.problems(), &[]);
}

#[test]
fn kubectl_list_output() {
    let dir = TempDir::new();
    dir.write(
        "list.yaml",
        r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    resourceVersion: "123"
    uid: 5b1f7c1e-0000-4000-8000-000000000001
  spec:
    clusterIP: 10.96.5.2
    clusterIPs: [10.96.5.2]
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: http}
    selector: {app: web}
    sessionAffinity: None
    type: ClusterIP
  status: {loadBalancer: {}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  endpoints:
  - addresses: [10.0.0.7]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-a
    targetRef: {kind: Pod, name: web-0, namespace: shop}
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: shop
  ports:
  - {name: http, port: 8080, protocol: TCP}
- apiVersion: v1
  kind: Endpoints
  metadata: {name: web, namespace: shop}
kind: List
metadata: {resourceVersion: ""}
"#,
    );
    let mut src = source(&dir.0);
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.5.2", 80, Protocol::Tcp),
            entry("shop", "web", "http", &["10.0.0.7:8080*"])
        )]))
    );
    assert_eq!(src.problems(), &[]);
}

#[test]
fn directory_reads_manifest_files_only() {
    let dir = TempDir::new();
    dir.write("a.yaml", &svc("a", "10.96.6.1"));
    dir.write("b.yml", &slice("a-1", "a", &["10.0.0.1"]));
    dir.write(
        "c.json",
        r#"{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "c", "namespace": "t"},
                "spec": {"clusterIP": "10.96.6.3", "ports": [{"port": 80}]}}"#,
    );
    dir.write("d.txt", &svc("d", "10.96.6.4"));
    dir.write(".e.yaml", &svc("e", "10.96.6.5"));
    fs::create_dir(dir.0.join("sub.yaml")).unwrap();
    fs::write(dir.0.join("sub.yaml/f.yaml"), svc("f", "10.96.6.6")).unwrap();
    let mut src = source(&dir.0);
    assert_eq!(
        src.poll(),
        Some(table(vec![
            (
                fe("10.96.6.1", 80, Protocol::Tcp),
                entry("t", "a", "", &["10.0.0.1:8080"])
            ),
            (fe("10.96.6.3", 80, Protocol::Tcp), entry("t", "c", "", &[])),
        ]))
    );
}

#[test]
fn change_detection() {
    let dir = TempDir::new();
    dir.write("a.yaml", &svc("a", "10.96.7.1"));
    let mut src = source(&dir.0);
    assert!(src.poll().is_some());
    assert_eq!(src.poll(), None);
    assert_eq!(src.poll(), None);
    // Same size, different content, immediately: detected.
    dir.write("a.yaml", &svc("a", "10.96.7.2"));
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.7.2", 80, Protocol::Tcp),
            entry("t", "a", "", &[])
        )]))
    );
    assert_eq!(src.poll(), None);
    // A change that does not change the table: None.
    dir.write("a.yaml", &format!("# comment\n{}", svc("a", "10.96.7.2")));
    assert_eq!(src.poll(), None);
    // A new file.
    dir.write("b.yaml", &slice("a-1", "a", &["10.0.0.1"]));
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.7.2", 80, Protocol::Tcp),
            entry("t", "a", "", &["10.0.0.1:8080"])
        )]))
    );
}

#[test]
fn syntax_error_keeps_last_good() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            svc("a", "10.96.8.1"),
            slice("a-1", "a", &["10.0.0.1"])
        ),
    );
    dir.write("b.yaml", &svc("b", "10.96.8.2"));
    let mut src = source(&dir.0);
    let good = src.poll().unwrap();
    assert_eq!(good.services.len(), 2);

    // a.yaml broken (and its slice changed); b.yaml changed: b's change applies, a's
    // objects keep their last good state.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}\nspec: [unclosed\n",
            svc("a", "10.96.8.1"),
            slice("a-1", "a", &["10.0.0.9"])
        ),
    );
    dir.write("b.yaml", &svc("b", "10.96.8.3"));
    assert_eq!(
        src.poll(),
        Some(table(vec![
            (
                fe("10.96.8.1", 80, Protocol::Tcp),
                entry("t", "a", "", &["10.0.0.1:8080"])
            ),
            (fe("10.96.8.3", 80, Protocol::Tcp), entry("t", "b", "", &[])),
        ]))
    );
    assert!(has_problem(&src, Severity::Error, &["a.yaml", "line"]));
    assert_eq!(src.poll(), None);

    // Fixed: applied.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            svc("a", "10.96.8.1"),
            slice("a-1", "a", &["10.0.0.9"])
        ),
    );
    assert_eq!(
        src.poll().unwrap().services[&fe("10.96.8.1", 80, Protocol::Tcp)],
        entry("t", "a", "", &["10.0.0.9:8080"])
    );
    assert_eq!(src.problems(), &[]);
}

#[test]
fn new_file_with_syntax_error_contributes_nothing() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a\n",
    );
    dir.write("b.yaml", &svc("b", "10.96.8.5"));
    let mut src = source(&dir.0);
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.8.5", 80, Protocol::Tcp),
            entry("t", "b", "", &[])
        )]))
    );
    assert!(has_problem(&src, Severity::Error, &["a.yaml", "line 3"]));
}

#[test]
fn object_that_does_not_deserialize_keeps_last_good() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!("{}---\n{}", svc("a", "10.96.9.1"), svc("b", "10.96.9.2")),
    );
    let mut src = source(&dir.0);
    assert_eq!(src.poll().unwrap().services.len(), 2);
    // a: port is not a number (deserialization fails); b changed legitimately.
    dir.write(
        "a.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: t}}\n\
                 spec: {{clusterIP: 10.96.9.7, ports: [{{port: eighty}}]}}\n---\n{}",
            svc("b", "10.96.9.3")
        ),
    );
    assert_eq!(
        src.poll(),
        Some(table(vec![
            (fe("10.96.9.1", 80, Protocol::Tcp), entry("t", "a", "", &[])),
            (fe("10.96.9.3", 80, Protocol::Tcp), entry("t", "b", "", &[])),
        ]))
    );
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml", "Service t/a", "last good"]
    ));
}

#[test]
fn object_the_model_rejects_keeps_last_good_or_is_absent() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            svc("a", "10.96.10.1"),
            slice("a-1", "a", &["10.0.0.1"])
        ),
    );
    let mut src = source(&dir.0);
    assert!(src.poll().is_some());
    // Invalid cluster IP for a, an IPv6 address in an IPv4 slice, and a new invalid service.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}",
            svc("a", "10.96.10.999"),
            slice("a-1", "a", &["\"fd00::1\""]),
            svc("new", "not-an-ip")
        ),
    );
    assert_eq!(
        src.poll(),
        None,
        "everything bad: the table stays as it was"
    );
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml", "Service t/a", "10.96.10.999", "last good"]
    ));
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml", "EndpointSlice t/a-1", "fd00::1", "last good"]
    ));
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml", "Service t/new", "not-an-ip", "ignored"]
    ));
    // The problems are logged per change, not per poll: an idle poll keeps them listed
    // but does not rebuild.
    assert_eq!(src.poll(), None);
    assert_eq!(src.problems().len(), 3);
}

#[test]
fn removing_a_file_or_an_object_removes_its_objects() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!("{}---\n{}", svc("a", "10.96.11.1"), svc("b", "10.96.11.2")),
    );
    dir.write("c.yaml", &svc("c", "10.96.11.3"));
    let mut src = source(&dir.0);
    assert_eq!(src.poll().unwrap().services.len(), 3);
    dir.write("a.yaml", &svc("a", "10.96.11.1"));
    assert_eq!(
        src.poll(),
        Some(table(vec![
            (
                fe("10.96.11.1", 80, Protocol::Tcp),
                entry("t", "a", "", &[])
            ),
            (
                fe("10.96.11.3", 80, Protocol::Tcp),
                entry("t", "c", "", &[])
            ),
        ]))
    );
    dir.remove("c.yaml");
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.11.1", 80, Protocol::Tcp),
            entry("t", "a", "", &[])
        )]))
    );
    assert_eq!(src.problems(), &[]);
    // A removed object has no last good version any more.
    dir.write("a.yaml", &svc("a", "bad-ip"));
    assert_eq!(src.poll(), None);
    dir.write("a.yaml", "");
    assert_eq!(src.poll(), Some(DesiredTable::default()));
    dir.write("a.yaml", &svc("a", "bad-ip"));
    assert_eq!(src.poll(), None);
    assert!(has_problem(
        &src,
        Severity::Error,
        &["Service t/a", "ignored"]
    ));
}

#[test]
fn same_object_in_two_files_first_wins() {
    let dir = TempDir::new();
    dir.write("1.yaml", &svc("a", "10.96.12.1"));
    dir.write("2.yaml", &svc("a", "10.96.12.2"));
    let mut src = source(&dir.0);
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.12.1", 80, Protocol::Tcp),
            entry("t", "a", "", &[])
        )]))
    );
    assert!(has_problem(
        &src,
        Severity::Error,
        &["2.yaml", "Service t/a", "1.yaml"]
    ));
}

#[test]
fn established_vip_owner_wins_duplicate() {
    let dir = TempDir::new();
    // b.yaml comes after a.yaml, but once b owns 10.96.13.2, a cannot take it.
    dir.write("a.yaml", &svc("a", "10.96.13.1"));
    dir.write("b.yaml", &svc("b", "10.96.13.2"));
    let mut src = source(&dir.0);
    assert_eq!(src.poll().unwrap().services.len(), 2);
    dir.write("a.yaml", &svc("a", "10.96.13.2"));
    assert_eq!(src.poll(), None, "a keeps its last good version");
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml", "Service t/a", "owned by Service t/b", "last good"]
    ));
    // A new service claiming the VIP is ignored.
    dir.write("0.yaml", &svc("z", "10.96.13.2"));
    assert_eq!(src.poll(), None);
    assert!(has_problem(
        &src,
        Severity::Error,
        &["0.yaml", "Service t/z", "ignored"]
    ));
    // b gives the VIP up: a's pending version now applies (z is new and comes later).
    dir.write("b.yaml", &svc("b", "10.96.13.3"));
    let t = src.poll().unwrap();
    assert_eq!(
        t.services
            .values()
            .map(|e| e.service.name())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert_eq!(
        t.services[&fe("10.96.13.2", 80, Protocol::Tcp)]
            .service
            .name(),
        "a"
    );
}

#[test]
fn owner_standing_in_with_last_good_keeps_its_vip() {
    let dir = TempDir::new();
    dir.write("0.yaml", &svc("y", "10.96.34.2"));
    dir.write("1.yaml", &svc("x", "10.96.34.1"));
    let mut src = source(&dir.0);
    assert_eq!(src.poll().unwrap().services.len(), 2);
    // x turns invalid (keeps its last good version, 10.96.34.1) while y, earlier in file
    // order, claims 10.96.34.1: x is still the established owner, y keeps its last good.
    dir.write("1.yaml", &svc("x", "bad-ip"));
    dir.write("0.yaml", &svc("y", "10.96.34.1"));
    assert_eq!(src.poll(), None);
    assert!(has_problem(
        &src,
        Severity::Error,
        &["1.yaml", "Service t/x", "bad-ip", "last good"]
    ));
    assert!(has_problem(
        &src,
        Severity::Error,
        &["0.yaml", "Service t/y", "owned by Service t/x", "last good"]
    ));
    let objects = src.poll_objects().unwrap();
    let ips: Vec<(String, String)> = objects
        .services
        .iter()
        .map(|s| (s.key().name().to_owned(), s.cluster_ips()[0].to_string()))
        .collect();
    assert_eq!(
        ips,
        // Established first.
        vec![
            ("x".to_owned(), "10.96.34.1".to_owned()),
            ("y".to_owned(), "10.96.34.2".to_owned())
        ]
    );
}

#[test]
fn slice_warning_is_not_an_error() {
    let dir = TempDir::new();
    dir.write("a.yaml", &slice("orphan-1", "orphan", &["10.0.0.1"]));
    let mut src = source(&dir.0);
    assert_eq!(src.poll(), Some(DesiredTable::default()));
    assert!(has_problem(
        &src,
        Severity::Warning,
        &["a.yaml", "orphan-1"]
    ));
    // Its service appears: the slice is used.
    dir.write("b.yaml", &svc("orphan", "10.96.14.1"));
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.14.1", 80, Protocol::Tcp),
            entry("t", "orphan", "", &["10.0.0.1:8080"])
        )]))
    );
}

#[test]
fn example_manifests() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
    let mut src = source(&path);
    let web = entry(
        "demo",
        "web",
        "http",
        &["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"],
    );
    assert_eq!(
        src.poll(),
        Some(table(vec![
            (fe("10.96.100.10", 80, Protocol::Tcp), web),
            (
                fe("10.96.100.53", 53, Protocol::Udp),
                entry(
                    "demo",
                    "dns-like",
                    "dns",
                    &["10.200.0.11:5353", "10.200.0.12:5353"]
                )
            ),
        ]))
    );
    assert_eq!(src.problems(), &[]);
}

/// Service t/h with two endpoints hinted for zones a and b.
fn hinted() -> String {
    format!(
        "{}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: h-1, namespace: t, labels: {{kubernetes.io/service-name: h}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n\
             - {{addresses: [10.0.0.1], hints: {{forZones: [{{name: a}}]}}}}\n\
             - {{addresses: [10.0.0.2], hints: {{forZones: [{{name: b}}]}}}}\n",
        svc("h", "10.96.30.1")
    )
}

fn backends(table: &DesiredTable) -> Vec<String> {
    table.services[&fe("10.96.30.1", 80, Protocol::Tcp)]
        .backends
        .iter()
        .map(|b| b.to_string())
        .collect()
}

#[test]
fn node_objects_give_this_nodes_zone() {
    let dir = TempDir::new();
    dir.write("svc.yaml", &hinted());
    dir.write(
        "nodes.yaml",
        &format!(
            "{}---\n{}",
            node("node-a", Some("b")),
            node("node-x", Some("a"))
        ),
    );
    let mut src = source(&dir.0);
    let table = src.poll().unwrap();
    assert_eq!(src.problems(), &[]);
    assert_eq!(backends(&table), vec!["10.0.0.2:8080"]);
    let objects = src.poll_objects().unwrap();
    assert_eq!(objects.node_zone.as_deref(), Some("b"));
    assert_eq!(objects.services.len(), 1);
    assert_eq!(objects.slices.len(), 1);
    assert_eq!(src.poll_objects(), None);

    // The node moves to zone a.
    dir.write(
        "nodes.yaml",
        &format!(
            "{}---\n{}",
            node("node-a", Some("a")),
            node("node-x", Some("a"))
        ),
    );
    assert_eq!(backends(&src.poll().unwrap()), vec!["10.0.0.1:8080"]);
    assert_eq!(src.poll_objects().unwrap().node_zone.as_deref(), Some("a"));
    // This node's Node object gone: zone unknown, hints unused.
    dir.remove("nodes.yaml");
    assert_eq!(
        backends(&src.poll().unwrap()),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(src.poll_objects().unwrap().node_zone, None);
    assert_eq!(src.poll(), None);
    assert_eq!(src.poll_objects(), None);
}

#[test]
fn poll_objects_keeps_last_good_objects() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            svc("a", "10.96.31.1"),
            slice("a-1", "a", &["10.0.0.1"])
        ),
    );
    let mut src = source(&dir.0);
    let first = src.poll_objects().unwrap();
    assert_eq!(first.services.len(), 1);
    assert_eq!(first.slices.len(), 1);
    // A syntax error: the file keeps its last good objects.
    dir.write("a.yaml", "kind: [unclosed\n");
    assert_eq!(src.poll_objects(), None);
    // A service the model rejects keeps its last good version; a new valid one is added.
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}",
            svc("a", "10.96.31.999"),
            slice("a-1", "a", &["10.0.0.1"]),
            svc("b", "10.96.31.2")
        ),
    );
    let objects = src.poll_objects().unwrap();
    let ips: Vec<Option<String>> = objects
        .services
        .iter()
        .map(|s| s.cluster_ips().first().map(ToString::to_string))
        .collect();
    assert_eq!(
        ips,
        vec![Some("10.96.31.1".to_owned()), Some("10.96.31.2".to_owned())]
    );
    // poll() still works alongside, on the same state.
    assert_eq!(src.poll().unwrap().services.len(), 2);
}

#[test]
fn read_objects_once() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}---\n{}",
            svc("a", "10.96.32.999"),
            slice("a-1", "a", &["10.0.0.1"]),
            node("node-a", Some("z1")),
            node("node-b", Some("z2"))
        ),
    );
    dir.write("b.yaml", &svc("a", "10.96.32.2"));
    // As written, rejected service included (explain tells why); first definition wins.
    let objects = read_objects(&dir.0, "node-b").unwrap();
    assert_eq!(objects.services.len(), 1);
    assert_eq!(
        objects.services[0]
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref()),
        Some("10.96.32.999")
    );
    assert_eq!(objects.slices.len(), 1);
    assert_eq!(objects.node_zone.as_deref(), Some("z2"));
    assert_eq!(read_objects(&dir.0, "node-c").unwrap().node_zone, None);

    dir.write("c.yaml", "kind: [unclosed\n");
    let err = read_objects(&dir.0, "node-a").unwrap_err().to_string();
    assert!(err.contains("c.yaml"), "{err}");
    let err = read_objects(&dir.0.join("missing"), "node-a")
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

/// Memory and time of the poll_objects path at scale. Run with
/// `cargo test --release -p clusterip-agent --lib manifests::tests::scale -- --ignored --nocapture`
/// (CLUSTERIP_SCALE_SERVICES, default 10000).
#[test]
#[ignore]
fn scale_poll_objects() {
    let n: usize = std::env::var("CLUSTERIP_SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = TempDir::new();
    let yaml = scale_yaml(n, 10);
    let file = dir.write("svc.yaml", &yaml);
    let size = yaml.len();
    drop(yaml);
    let rss0 = rss_kib();
    let mut src = source(&file);
    let t = std::time::Instant::now();
    let objects = src.poll_objects().unwrap();
    let first = t.elapsed();
    assert_eq!(objects.services.len(), n);
    assert_eq!(objects.slices.len(), n);
    let rss_with = rss_kib();
    drop(objects);
    let rss_kept = rss_kib();
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    let rss_trimmed = rss_kib();
    let t = std::time::Instant::now();
    assert_eq!(src.poll_objects(), None);
    let idle = t.elapsed();
    // One endpoint changes (same size): the file is re-read.
    let yaml = scale_yaml(n, 10).replacen("100.64.0.0]", "100.99.0.0]", 1);
    fs::write(&file, &yaml).unwrap();
    drop(yaml);
    let t = std::time::Instant::now();
    let objects = src.poll_objects().unwrap();
    let change = t.elapsed();
    drop(objects);
    let rss_after = rss_kib();
    // The same change through poll_events: one event.
    assert!(src.poll_events().is_some());
    let yaml = scale_yaml(n, 10).replacen("100.64.0.0]", "100.98.0.0]", 1);
    fs::write(&file, &yaml).unwrap();
    drop(yaml);
    let t = std::time::Instant::now();
    let events = src.poll_events().unwrap();
    eprintln!(
        "scale: one change through poll_events: {:?}, {} event(s)",
        t.elapsed(),
        events.len()
    );
    assert_eq!(events.len(), 1);
    drop(events);
    eprintln!(
        "scale: {n} services ({size} bytes): first poll_objects {first:?}, idle {idle:?}, \
             one change {change:?}; RSS KiB: before {rss0}, with objects {rss_with}, \
             source only {rss_kept} (+{}), trimmed {rss_trimmed} (+{}), after change {rss_after}",
        rss_kept.saturating_sub(rss0),
        rss_trimmed.saturating_sub(rss0)
    );
}

#[test]
fn locations_count_empty_documents_and_list_items() {
    let dir = TempDir::new();
    // Document 1 is empty; the bad Service is document 2, and item 2 of the List in 3.
    dir.write(
        "a.yaml",
        "---\n# nothing here\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: t}\n\
         spec: {clusterIP: 10.96.40.1, ports: [{port: eighty}]}\n\
         ---\napiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: Service, metadata: {name: y, namespace: t}, spec: {clusterIP: 10.96.40.2, ports: [{port: 80}]}}\n\
         - {apiVersion: v1, kind: Service, metadata: {name: z, namespace: t}, spec: {clusterIP: 10.96.40.3, ports: [{port: []}]}}\n",
    );
    let mut src = source(&dir.0);
    assert_eq!(
        src.poll(),
        Some(table(vec![(
            fe("10.96.40.2", 80, Protocol::Tcp),
            entry("t", "y", "", &[])
        )]))
    );
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml (document 2): Service t/x", "\"eighty\"", "ignored"]
    ));
    assert!(has_problem(
        &src,
        Severity::Error,
        &["a.yaml (document 3, item 2): Service t/z", "ignored"]
    ));
    // A syntax error names the file and the line.
    dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: w\n   bad: indent\n",
    );
    assert_eq!(src.poll(), None);
    assert!(has_problem(
        &src,
        Severity::Error,
        &["b.yaml: ", "line 5", "keep their last good state"]
    ));
}

#[test]
fn established_node_port_owner_wins_and_the_claimant_keeps_its_last_good_version() {
    let np = |name: &str, ip: &str, node_port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec: \
             {{type: NodePort, clusterIP: {ip}, ports: [{{port: 80, nodePort: {node_port}}}]}}\n"
        )
    };
    let dir = TempDir::new();
    dir.write("a.yaml", &np("a", "10.96.14.1", 30001));
    dir.write("b.yaml", &np("b", "10.96.14.2", 30002));
    let mut src = source(&dir.0);
    assert_eq!(src.poll().unwrap().services.len(), 2);
    // a takes b's node port (the node has no node-port address here: the claim is on the
    // port, whatever the addresses).
    dir.write("a.yaml", &np("a", "10.96.14.9", 30002));
    assert_eq!(src.poll(), None, "a keeps its last good version");
    assert!(has_problem(
        &src,
        Severity::Error,
        &[
            "a.yaml",
            "Service t/a",
            "spec.ports[0].nodePort 30002/TCP is already used by Service t/b",
            "last good"
        ]
    ));
    // b lets it go: a's version applies.
    dir.write("b.yaml", &np("b", "10.96.14.2", 30003));
    let t = src.poll().unwrap();
    assert!(
        t.services
            .contains_key(&fe("10.96.14.9", 80, Protocol::Tcp))
    );
}
