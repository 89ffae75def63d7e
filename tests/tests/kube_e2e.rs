//! The agent as kube-proxy's replacement, end to end: it reads Services, EndpointSlices and
//! its Node from a (fake, in-process) Kubernetes API server through a kubeconfig, and real
//! connections go where the API says. Traffic keeps flowing through endpoint churn and
//! through watch outages and relists; readiness, metrics and the semantics kube-proxy users
//! rely on (topology hints, terminating endpoints, external IPs, live changes) are checked on
//! the maps and with real sockets; so is kube-proxy's proxy health check, which fails while
//! the Node is being deleted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clusterip_tests::agent::{Agent, DumpEntry};
use clusterip_tests::fakeapi::{FakeApi, Kind};
use clusterip_tests::fixture::{Fixture, TCP_PORT, UDP_PORT};
use clusterip_tests::manifests::{Endpoint, Service, tcp, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::tally;
use clusterip_tests::require_env;
use serde_json::{Value, json};

/// A [`Fixture`] whose agent reads a [`FakeApi`]. The API server outlives the agent.
struct KubeFx {
    fx: Fixture,
    api: FakeApi,
    kubeconfig: std::path::PathBuf,
}

impl KubeFx {
    fn new(env: clusterip_tests::env::Env, pods: usize) -> Self {
        let fx = Fixture::new(env, pods).unwrap();
        let api = FakeApi::start();
        let kubeconfig = api.write_kubeconfig(fx.manifests.root());
        Self {
            fx,
            api,
            kubeconfig,
        }
    }

    /// Applies a Service / EndpointSlice / Node given as JSON.
    fn apply(&self, v: Value) {
        match v["kind"].as_str() {
            Some("Service") => {
                let o: k8s_openapi::api::core::v1::Service = serde_json::from_value(v).unwrap();
                self.api.apply(&o);
            }
            Some("EndpointSlice") => {
                let o: k8s_openapi::api::discovery::v1::EndpointSlice =
                    serde_json::from_value(v).unwrap();
                self.api.apply(&o);
            }
            Some("Node") => {
                let o: k8s_openapi::api::core::v1::Node = serde_json::from_value(v).unwrap();
                self.api.apply(&o);
            }
            other => panic!("cannot apply kind {other:?}"),
        }
    }

    /// Starts the agent on the API and waits for its first sync.
    fn start_agent(&mut self, extra: &[&str]) -> &mut Agent {
        let agent = Agent::start_kube(
            &self.fx.env.agent_bin,
            &self.kubeconfig,
            self.fx.cgroup.path(),
            self.fx.pins.path(),
            None,
            extra,
        )
        .unwrap();
        let agent = self.fx.agent.insert(agent);
        agent.wait_synced(Duration::from_secs(20)).unwrap();
        agent
    }

    fn agent(&mut self) -> &mut Agent {
        self.fx.agent()
    }

    /// Applies `objects`, then waits for the agent to log a sync that changed something.
    fn apply_and_sync(&mut self, objects: Vec<Value>) {
        let mark = self.agent().log_len();
        for o in objects {
            self.apply(o);
        }
        self.agent()
            .wait_line_since(mark, &["synced", "full=false"], Duration::from_secs(5))
            .unwrap();
    }

    fn entry(&self, vip: &str, port: u16, proto: &str) -> Option<DumpEntry> {
        self.fx
            .dump()
            .unwrap()
            .into_iter()
            .find(|e| e.vip == vip && e.port == port && e.protocol == proto)
    }
}

fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
}

/// GET `path` on `addr`: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http_get_head(addr, path);
    (code, body)
}

/// GET `path` on `addr`: (status code, head, body).
fn http_get_head(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (code, head.to_string(), body.to_string())
}

/// The value of a metric line `name` (with labels, exact) in a /metrics body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn traffic_follows_the_api_and_readyz_waits_for_the_first_sync() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 3);
    k.fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.1.10").port(tcp("http", 80, TCP_PORT));
    // The API server is down when the agent starts: it must not become ready, nor touch the
    // maps, until it has listed everything.
    k.api.set_down(true);
    k.apply(svc.to_value());
    k.apply(svc.slice("a").ready([pod_ip(0, false)]).to_value());
    let agent = Agent::start_kube(
        &k.fx.env.agent_bin,
        &k.kubeconfig,
        k.fx.cgroup.path(),
        k.fx.pins.path(),
        None,
        &[],
    )
    .unwrap();
    let agent = k.fx.agent.insert(agent);
    let metrics = agent.metrics_addr(Duration::from_secs(10)).unwrap();
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    // The pins exist once the datapath is loaded (which takes a while on a busy machine);
    // from then on, nothing may be written without the lists.
    agent
        .wait_line_since(0, &["datapath loaded"], Duration::from_secs(20))
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let (code, body) = http_get(metrics, "/readyz");
    assert_eq!(code, 503, "ready before the initial lists: {body}");
    assert!(k.fx.dump().unwrap().is_empty());

    k.api.set_down(false);
    k.agent().wait_synced(Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(metrics, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "not ready after the first sync");
        std::thread::sleep(Duration::from_millis(50));
    }
    let vip: SocketAddr = "10.96.1.10:80".parse().unwrap();
    assert_eq!(
        tally(&k.fx.client().tcp(vip, 6).unwrap())
            .keys()
            .collect::<Vec<_>>(),
        ["be-0"]
    );

    // An endpoint change through the API moves traffic.
    k.apply_and_sync(vec![
        svc.slice("a")
            .ready([pod_ip(1, false), pod_ip(2, false)])
            .to_value(),
    ]);
    let seen = tally(&k.fx.client().tcp(vip, 30).unwrap());
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["be-1", "be-2"],
        "{seen:?}"
    );

    let (_, body) = http_get(metrics, "/metrics");
    assert!(
        metric(
            &body,
            "clusterip_network_programming_duration_seconds_count"
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "clusterip_programmed_services"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "clusterip_programmed_endpoints"),
        Some(2.0),
        "{body}"
    );

    // Deleting the service through the API removes the frontend.
    let mark = k.agent().log_len();
    k.api.delete(Kind::Service, "default", "web");
    k.agent()
        .wait_line_since(mark, &["synced", "removed=1"], Duration::from_secs(5))
        .unwrap();
    assert!(k.fx.dump().unwrap().is_empty());
}

/// Endpoints churn through the API while clients connect continuously: no connect fails, and
/// once a backend's removal is programmed no connection reaches it.
#[test]
fn endpoint_churn_under_continuous_connects() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 3);
    k.fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.1.20").port(tcp("http", 80, TCP_PORT));
    let sets: [&[usize]; 4] = [&[0, 1], &[2], &[0, 1, 2], &[1]];
    let slice_of = |set: &[usize]| {
        svc.slice("a")
            .ready(set.iter().map(|i| pod_ip(*i, false)))
            .to_value()
    };
    k.apply(svc.to_value());
    k.apply(slice_of(sets[0]));
    k.start_agent(&[]);
    let mark = k.agent().log_len();
    let vip: SocketAddr = "10.96.1.20:80".parse().unwrap();

    let done = AtomicBool::new(false);
    let mut replies = Vec::new();
    std::thread::scope(|s| {
        let done = &done;
        let k = &k;
        s.spawn(move || {
            let mut n = 0usize;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                k.apply(slice_of(sets[n % sets.len()]));
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        let client = k.fx.client();
        let clients: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    let mut r = Vec::new();
                    while !done.load(Ordering::SeqCst) {
                        r.extend(client.tcp(vip, 300).unwrap());
                    }
                    r
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(6));
        done.store(true, Ordering::SeqCst);
        for c in clients {
            replies.extend(c.join().unwrap());
        }
    });
    let updates = k.agent().lines()[mark..]
        .iter()
        .filter(|l| l.contains("synced") && l.contains("updated=1"))
        .count();
    let failures: Vec<_> = replies.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} connects failed during {updates} updates: {:?}",
        failures.len(),
        replies.len(),
        failures.first()
    );
    assert!(updates >= 40, "only {updates} updates were applied");

    // Remove be-2 for good: once the sync is logged, nothing reaches it. (Through {0} first:
    // the churn may have ended on {0, 1}, and an unchanged slice is no change to sync.)
    k.apply_and_sync(vec![slice_of(&[0])]);
    k.apply_and_sync(vec![slice_of(&[0, 1])]);
    let after = tally(&k.fx.client().tcp(vip, 200).unwrap());
    assert!(!after.contains_key("be-2"), "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 200, "{after:?}");
    eprintln!("{} connects across {updates} updates", replies.len());
}

/// Watches cut, history compacted (410 Gone, relist) and the server briefly away, under
/// traffic: no connect fails, no frontend is ever removed, and changes made during the outage
/// arrive after the relist.
#[test]
fn watch_cut_and_relist_under_traffic() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 3);
    k.fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.1.30").port(tcp("http", 80, TCP_PORT));
    let other = Service::new("other", "10.96.1.31").port(tcp("http", 80, TCP_PORT));
    k.apply(svc.to_value());
    k.apply(svc.slice("a").ready([pod_ip(0, false)]).to_value());
    k.apply(other.to_value());
    k.apply(other.slice("a").ready([pod_ip(1, false)]).to_value());
    k.start_agent(&[]);
    let mark = k.agent().log_len();
    let vip: SocketAddr = "10.96.1.30:80".parse().unwrap();
    let metrics = k.agent().metrics_addr(Duration::from_secs(5)).unwrap();

    let done = AtomicBool::new(false);
    let mut replies = Vec::new();
    std::thread::scope(|s| {
        let done = &done;
        let client = k.fx.client();
        let c = s.spawn(move || {
            let mut r = Vec::new();
            while !done.load(Ordering::SeqCst) {
                r.extend(client.tcp(vip, 100).unwrap());
            }
            r
        });
        for round in 0..3 {
            k.api.compact();
            k.api.drop_watches();
            std::thread::sleep(Duration::from_millis(300));
            if round == 1 {
                // Away for a while; a change happens meanwhile.
                k.api.set_down(true);
                k.api.drop_watches();
                k.apply(
                    svc.slice("a")
                        .ready([pod_ip(0, false), pod_ip(2, false)])
                        .to_value(),
                );
                std::thread::sleep(Duration::from_millis(1500));
                k.api.set_down(false);
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        done.store(true, Ordering::SeqCst);
        replies = c.join().unwrap();
    });
    let failures: Vec<_> = replies.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} connects failed: {:?}",
        failures.len(),
        replies.len(),
        failures.first()
    );
    let lines = k.agent().lines();
    let removals: Vec<&String> = lines[mark..]
        .iter()
        .filter(|l| l.contains("synced") && !l.contains("removed=0") && l.contains("removed="))
        .collect();
    assert!(
        removals.is_empty(),
        "frontends removed during the outage: {removals:?}"
    );
    // The change made while the server was away arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = k.entry("10.96.1.30", 80, "TCP").unwrap();
        if e.backends.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relist did not bring the change: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(k.entry("10.96.1.31", 80, "TCP").is_some());
    let (_, body) = http_get(metrics, "/metrics");
    let restarts: f64 = ["services", "endpointslices"]
        .iter()
        .filter_map(|r| {
            metric(
                &body,
                &format!("clusterip_watch_restarts_total{{resource=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(restarts >= 2.0, "watch restarts not counted: {body}");
}

/// A connected UDP client whose backend leaves the EndpointSlice gets its socket destroyed,
/// reconnects through the VIP and reaches a live backend.
#[test]
fn connected_udp_client_reaches_the_new_backend() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 2);
    k.fx.standard_backends(2).unwrap();
    let svc = Service::new("dns", "10.96.1.53").port(udp("dns", 53, UDP_PORT));
    k.apply(svc.to_value());
    k.apply(svc.slice("a").ready([pod_ip(0, false)]).to_value());
    k.start_agent(&[]);
    let vip: SocketAddr = "10.96.1.53:53".parse().unwrap();
    let mut socks = k.fx.client().ns().udp_connected_multi(vip, 3).unwrap();
    let before = socks.round().unwrap();
    assert!(
        before.iter().all(|r| r.backend() == Some("be-0")),
        "{before:?}"
    );

    let mark = k.agent().log_len();
    k.apply(svc.slice("a").ready([pod_ip(1, false)]).to_value());
    k.agent()
        .wait_line_since(
            mark,
            &["destroyed UDP sockets of removed backends"],
            Duration::from_secs(5),
        )
        .unwrap();
    let after = socks.round().unwrap();
    assert!(
        after.iter().all(|r| !r.is_ok()),
        "old sockets still work: {after:?}"
    );
    // The client reconnects (a new connect through the VIP) and reaches the new backend.
    let again = k.fx.client().udp_connected(vip, 5).unwrap();
    assert!(
        again.iter().all(|r| r.backend() == Some("be-1")),
        "{again:?}"
    );
}

/// Zone hints: with the Node in zone-a, only the endpoints hinted for zone-a are used; when
/// the node moves to a zone no endpoint is hinted for, every endpoint is.
#[test]
fn topology_hints_follow_the_node_zone() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 3);
    k.fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.1.40").port(tcp("http", 80, TCP_PORT));
    let mut s = svc.to_value();
    s["spec"]["trafficDistribution"] = json!("PreferClose");
    k.apply(s);
    let mut slice = svc.slice("a").ready([]).to_value();
    slice["endpoints"] = json!([
        {"addresses": [pod_ip(0, false).to_string()], "conditions": {"ready": true},
         "zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
        {"addresses": [pod_ip(1, false).to_string()], "conditions": {"ready": true},
         "zone": "zone-b", "hints": {"forZones": [{"name": "zone-b"}]}},
        {"addresses": [pod_ip(2, false).to_string()], "conditions": {"ready": true},
         "zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
    ]);
    k.apply(slice);
    k.apply(node("node-a", "zone-a"));
    k.start_agent(&[]);
    let vip: SocketAddr = "10.96.1.40:80".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while k.entry("10.96.1.40", 80, "TCP").unwrap().backends.len() != 2 {
        assert!(Instant::now() < deadline, "zone hints not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = tally(&k.fx.client().tcp(vip, 30).unwrap());
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["be-0", "be-2"],
        "{seen:?}"
    );

    // `explain` through the same API says which endpoints are used and why not, and that the
    // maps agree.
    let out = std::process::Command::new(&k.fx.env.agent_bin)
        .args([
            "explain",
            "10.96.1.40:80",
            "--json",
            "--node-name",
            "node-a",
        ])
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .arg("--bpffs")
        .arg(k.fx.pins.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["owner"], "default/web", "{report}");
    let eps = report["explanations"][0]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    let used: Vec<(String, bool)> = eps
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["used"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        used,
        [
            (pod_ip(0, false).to_string(), true),
            (pod_ip(1, false).to_string(), false),
            (pod_ip(2, false).to_string(), true)
        ],
        "{report}"
    );
    assert!(!eps[1]["reason"].is_null(), "{report}");
    assert!(
        report["datapath"]
            .to_string()
            .contains(&pod_ip(0, false).to_string()),
        "the maps' state is missing: {report}"
    );

    // The node's zone changes to one no endpoint is hinted for: all endpoints.
    k.apply_and_sync(vec![node("node-a", "zone-c")]);
    assert_eq!(k.entry("10.96.1.40", 80, "TCP").unwrap().backends.len(), 3);
}

/// Terminating endpoints: used (serving ones) only when no endpoint is ready; Local traffic
/// policy falls back separately, over this node's endpoints.
#[test]
fn terminating_fallback_per_traffic_policy() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 3);
    k.fx.standard_backends(3).unwrap();
    let cluster = Service::new("c", "10.96.1.50").port(tcp("http", 80, TCP_PORT));
    let local = Service::new("l", "10.96.1.51")
        .port(tcp("http", 80, TCP_PORT))
        .internal_traffic_local();
    let eps = |svc: &Service| {
        svc.slice("a")
            .endpoint(Endpoint::ready(pod_ip(0, false)).on_node("node-b"))
            .endpoint(
                Endpoint::ready(pod_ip(1, false))
                    .on_node("node-a")
                    .conditions(false, true, true),
            )
            .endpoint(
                Endpoint::ready(pod_ip(2, false))
                    .on_node("node-a")
                    .conditions(false, false, true),
            )
            .to_value()
    };
    for svc in [&cluster, &local] {
        k.apply(svc.to_value());
        k.apply(eps(svc));
    }
    k.start_agent(&[]);
    let c = k.entry("10.96.1.50", 80, "TCP").unwrap();
    let l = k.entry("10.96.1.51", 80, "TCP").unwrap();
    // Cluster: a ready endpoint exists (on node-b), so terminating ones are not used.
    assert_eq!(c.backends, [format!("{}:{TCP_PORT}", pod_ip(0, false))]);
    // Local: no ready endpoint on node-a; its serving-and-terminating one is used.
    assert_eq!(l.backends, [format!("{}:{TCP_PORT}", pod_ip(1, false))]);
    let seen = tally(
        &k.fx
            .client()
            .tcp("10.96.1.51:80".parse().unwrap(), 5)
            .unwrap(),
    );
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["be-1"]);
}

/// External IPs are served like the cluster IP; other ports on an external IP are not
/// refused by the datapath (the address may be a node's own).
#[test]
fn external_ips_are_served_like_the_cluster_ip() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 1);
    k.fx.standard_backends(1).unwrap();
    let svc = Service::new("web", "10.96.1.60").port(tcp("http", 80, TCP_PORT));
    let mut s = svc.to_value();
    s["spec"]["externalIPs"] = json!(["192.0.2.60"]);
    k.apply(s);
    k.apply(svc.slice("a").ready([pod_ip(0, false)]).to_value());
    k.start_agent(&[]);
    assert!(
        k.entry("192.0.2.60", 80, "TCP").is_some(),
        "{:?}",
        k.fx.dump()
    );
    let r =
        k.fx.client()
            .tcp("192.0.2.60:80".parse().unwrap(), 3)
            .unwrap();
    assert!(r.iter().all(|r| r.backend() == Some("be-0")), "{r:?}");
    // Another port on the cluster IP is refused; on the external IP it is left alone (no
    // route there in the client's namespace: the error is the network's, not a refusal).
    let refused =
        k.fx.client()
            .tcp("10.96.1.60:81".parse().unwrap(), 1)
            .unwrap();
    assert_eq!(refused[0].errno, Some(libc::ECONNREFUSED), "{refused:?}");
    let passed =
        k.fx.client()
            .tcp("192.0.2.60:81".parse().unwrap(), 1)
            .unwrap();
    assert_ne!(passed[0].errno, Some(libc::ECONNREFUSED), "{passed:?}");
}

/// Live changes of a Service through the API, each checked on the maps.
#[test]
fn live_service_changes() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 2);
    k.fx.standard_backends(2).unwrap();
    let svc = Service::new("web", "10.96.1.70").port(tcp("http", 80, TCP_PORT));
    k.apply(svc.to_value());
    k.apply(svc.slice("a").ready([pod_ip(0, false)]).to_value());
    let mut v6 = svc.slice("b").ready([pod_ip(1, true)]).to_value();
    v6["addressType"] = json!("IPv6");
    k.apply(v6);
    k.start_agent(&[]);
    assert_eq!(
        k.entry("10.96.1.70", 80, "TCP").unwrap().affinity_timeout_s,
        None
    );

    // sessionAffinity None -> ClientIP -> None.
    k.apply_and_sync(vec![svc.clone().affinity(60).to_value()]);
    assert_eq!(
        k.entry("10.96.1.70", 80, "TCP").unwrap().affinity_timeout_s,
        Some(60)
    );
    k.apply_and_sync(vec![svc.to_value()]);
    assert_eq!(
        k.entry("10.96.1.70", 80, "TCP").unwrap().affinity_timeout_s,
        None
    );

    // A port added, then removed.
    let two = svc.clone().port(udp("dns", 53, UDP_PORT));
    k.apply_and_sync(vec![two.to_value()]);
    assert!(k.entry("10.96.1.70", 53, "UDP").is_some());
    k.apply_and_sync(vec![svc.to_value()]);
    assert!(k.entry("10.96.1.70", 53, "UDP").is_none());
    assert!(k.entry("10.96.1.70", 80, "TCP").is_some());

    // Dual stack: an IPv6 cluster IP added, then removed.
    let mut ds = svc.to_value();
    ds["spec"]["clusterIPs"] = json!(["10.96.1.70", "fd00:96::70"]);
    ds["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    k.apply_and_sync(vec![ds]);
    let e6 = k.entry("fd00:96::70", 80, "TCP").unwrap();
    assert_eq!(e6.backends, [format!("[{}]:{TCP_PORT}", pod_ip(1, true))]);
    k.apply_and_sync(vec![svc.to_value()]);
    assert!(k.entry("fd00:96::70", 80, "TCP").is_none());

    // The service-proxy-name label: another proxy's service. Removed, then back.
    let mut labelled = svc.to_value();
    labelled["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
    k.apply_and_sync(vec![labelled]);
    assert!(k.entry("10.96.1.70", 80, "TCP").is_none());
    k.apply_and_sync(vec![svc.to_value()]);
    assert!(k.entry("10.96.1.70", 80, "TCP").is_some());

    // ClusterIP -> ExternalName -> ClusterIP.
    let ext = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.com"}});
    k.apply_and_sync(vec![ext]);
    assert!(k.fx.dump().unwrap().is_empty());
    k.apply_and_sync(vec![svc.to_value()]);
    let r =
        k.fx.client()
            .tcp("10.96.1.70:80".parse().unwrap(), 3)
            .unwrap();
    assert!(r.iter().all(|r| r.backend() == Some("be-0")), "{r:?}");
}

/// SIGTERM (what the kubelet sends a DaemonSet pod): the agent exits 0 and leaves the
/// datapath attached, so connections through the VIP keep working while it is replaced.
#[test]
fn sigterm_exits_cleanly_and_leaves_the_datapath() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 2);
    k.fx.standard_backends(2).unwrap();
    let svc = Service::new("web", "10.96.1.80").port(tcp("http", 80, TCP_PORT));
    k.apply(svc.to_value());
    k.apply(
        svc.slice("a")
            .ready([pod_ip(0, false), pod_ip(1, false)])
            .to_value(),
    );
    k.start_agent(&[]);
    let vip: SocketAddr = "10.96.1.80:80".parse().unwrap();
    let pid = k.agent().pid().unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = k.agent().exit_status() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let r = k.fx.client().tcp(vip, 10).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    assert_eq!(k.entry("10.96.1.80", 80, "TCP").unwrap().backends.len(), 2);
}

/// kube-proxy's proxy health check (`--healthz-bind-address`, what the cloud load balancers of
/// `externalTrafficPolicy: Cluster` services probe): /healthz is 200 once the agent has
/// synced, 503 with `nodeEligible: false` while the API says the Node is being deleted (the
/// cluster autoscaler's taint, a deletionTimestamp, the Node gone) and 200 again when it no
/// longer does; /livez, which is about the datapath only, stays 200 throughout.
#[test]
fn healthz_fails_while_the_node_is_being_deleted() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 1);
    k.fx.standard_backends(1).unwrap();
    let svc = Service::new("web", "10.96.1.90").port(tcp("http", 80, TCP_PORT));
    k.apply(svc.to_value());
    k.apply(svc.slice("a").ready([pod_ip(0, false)]).to_value());
    k.apply(node("node-a", "zone-a"));
    k.start_agent(&[]);
    let addr = k.agent().healthz_addr(Duration::from_secs(5)).unwrap();

    let (code, head, body) = http_get_head(addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodeEligible"], json!(true), "{body}");
    assert_eq!(v["healthy"], json!(true), "{body}");
    // Synced: the datapath's last update is there for both families.
    for family in ["IPv4", "IPv6"] {
        assert_eq!(v["status"][family]["healthy"], json!(true), "{body}");
    }
    assert_eq!(http_get(addr, "/livez").0, 200);

    // /healthz answers `expected` (the change is applied as the watch event arrives), /livez
    // stays 200.
    let expect = |k: &mut KubeFx, expected: u16, eligible: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let (code, body) = http_get(addr, "/healthz");
            if code == expected {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz still {code}, not {expected}: {body}\n{}",
                k.agent().lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["nodeEligible"], json!(eligible), "{body}");
        // The datapath itself is fine: only the node is going away.
        assert_eq!(v["healthy"], json!(true), "{body}");
        let (code, body) = http_get(addr, "/livez");
        assert_eq!(code, 200, "{body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["nodeEligible"].is_null());
    };

    // The cluster autoscaler is about to remove the node.
    let mut tainted = node("node-a", "zone-a");
    tainted["spec"] = json!({"taints": [{"key": "ToBeDeletedByClusterAutoscaler",
                                         "value": "1700000000", "effect": "NoSchedule"}]});
    let mark = k.agent().log_len();
    k.apply(tainted);
    k.agent()
        .wait_line_since(
            mark,
            &["this node is being deleted"],
            Duration::from_secs(5),
        )
        .unwrap();
    expect(&mut k, 503, false);
    // Scale-down cancelled: the taint goes.
    let mark = k.agent().log_len();
    k.apply(node("node-a", "zone-a"));
    k.agent()
        .wait_line_since(mark, &["no longer being deleted"], Duration::from_secs(5))
        .unwrap();
    expect(&mut k, 200, true);
    // Another taint is not deletion.
    let mut other = node("node-a", "zone-a");
    other["spec"] = json!({"taints": [{"key": "example.com/maintenance", "effect": "NoSchedule"}]});
    k.apply(other);
    std::thread::sleep(Duration::from_millis(300));
    expect(&mut k, 200, true);
    // The Node is deleted: first its deletionTimestamp, then the object.
    let mut deleted = node("node-a", "zone-a");
    deleted["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    k.apply(deleted);
    expect(&mut k, 503, false);
    assert!(k.api.delete(Kind::Node, "", "node-a"));
    std::thread::sleep(Duration::from_millis(300));
    expect(&mut k, 503, false);
    // Traffic through the VIP is untouched by all this.
    let r =
        k.fx.client()
            .tcp("10.96.1.90:80".parse().unwrap(), 3)
            .unwrap();
    assert!(r.iter().all(|r| r.backend() == Some("be-0")), "{r:?}");
}

/// The IPv4 addresses of the test's network namespace (where the agent runs), but loopback:
/// what `--nodeport-addresses` leaves unset selects of IPv4.
fn netns_ipv4_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
        .expect("ip -j addr");
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip's JSON");
    let mut addrs: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(str::to_owned))
        .filter(|a| !a.starts_with("127."))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// A LoadBalancer service with `externalTrafficPolicy: Local`: its node port is programmed on
/// every address of the agent's network namespace (none given: kube-proxy's default), its
/// load-balancer IP too, and its health check node port answers 200 while this node has a
/// ready endpoint and 503 when the endpoint moves to another node, as load balancers expect.
#[test]
fn node_ports_on_the_netns_addresses_and_the_health_check_follows_the_endpoints() {
    let env = require_env!();
    let mut k = KubeFx::new(env, 1);
    k.fx.standard_backends(1).unwrap();
    let hc_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let svc = Service::new("lb", "10.96.1.95").port(tcp("http", 80, TCP_PORT));
    let mut s = svc.to_value();
    s["spec"]["type"] = json!("LoadBalancer");
    s["spec"]["externalTrafficPolicy"] = json!("Local");
    s["spec"]["healthCheckNodePort"] = json!(hc_port);
    s["spec"]["ports"][0]["nodePort"] = json!(30095);
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.95"}]}});
    k.apply(s);
    let on = |node: &str| svc.slice("a").ready_on(node, [pod_ip(0, false)]).to_value();
    k.apply(on("node-a"));
    k.apply(node("node-a", "zone-a"));
    k.start_agent(&[]);

    let dump = k.fx.dump().unwrap();
    let kinds_at = |vip: &str, port: u16| dump.iter().any(|e| e.vip == vip && e.port == port);
    let addrs = netns_ipv4_addresses();
    assert!(
        !addrs.is_empty(),
        "the test's namespace has no IPv4 address but loopback"
    );
    for a in &addrs {
        assert!(kinds_at(a, 30095), "no node port on {a}: {dump:?}");
    }
    assert!(!kinds_at("127.0.0.1", 30095), "{dump:?}");
    assert!(kinds_at("192.0.2.95", 80), "{dump:?}");

    // The health check node port, on every address (the flag is unset).
    let hc: SocketAddr = format!("127.0.0.1:{hc_port}").parse().unwrap();
    let expect = |k: &mut KubeFx, code: u16, local: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (got, head, body) =
                match std::net::TcpStream::connect_timeout(&hc, Duration::from_secs(1)) {
                    Ok(_) => http_get_head(hc, "/"),
                    Err(_) => (0, String::new(), String::new()),
                };
            if got == code {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["localEndpoints"], json!(local), "{body}");
                assert_eq!(v["service"]["name"], json!("lb"), "{body}");
                assert!(
                    head.to_ascii_lowercase()
                        .contains(&format!("x-load-balancing-endpoint-weight: {local}")),
                    "{head}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health check {got}, not {code}: {body}\n{}",
                k.agent().lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    expect(&mut k, 200, 1);
    // The endpoint moves to another node: 503, load balancers drain this node.
    k.apply_and_sync(vec![on("node-b")]);
    expect(&mut k, 503, 0);
    k.apply_and_sync(vec![on("node-a")]);
    expect(&mut k, 200, 1);
    // The service stops asking for a health check: the port closes.
    let mut cluster = svc.to_value();
    cluster["spec"]["type"] = json!("LoadBalancer");
    cluster["spec"]["ports"][0]["nodePort"] = json!(30095);
    k.apply_and_sync(vec![cluster]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&hc, Duration::from_secs(1)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the health check port stays open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
