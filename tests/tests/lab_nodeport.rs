//! NodePort, LoadBalancer and `externalTrafficPolicy` in the multi-node lab
//! (`clusterip_tests::lab`): two nodes of two pods, one agent per node with `--nodeport-iface
//! ext0`, and an external client on the nodes' network that reaches the cluster only through
//! the nodes' addresses and the load-balancer IPs routed to a node.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clusterip_tests::agent::DumpEntry;
use clusterip_tests::lab::{EXT_IFACE, Lab, backend_name, external_ip, node_ip, node_name, pod_ip};
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::node::{DATA_PORT, TCP_PORT, UDP_PORT};
use clusterip_tests::process::{Reply, tally};
use clusterip_tests::{Env, require_env};
use serde_json::Value;

const VIP4: &str = "10.96.0.20";
const VIP6: &str = "fd00:96::20";
const NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;
const DATA_NODE_PORT: u16 = 30090;
const HEALTH_PORT: u16 = 32100;
/// `web6` takes the same ports plus this: node ports are unique across services.
const V6_OFFSET: u16 = 100;
const LB4: &str = "192.0.2.10";
const LB6: &str = "2001:db8::10";
/// Connections per spread check: 4 backends, each missing from 60 uniform picks with
/// probability (3/4)^60; all four present but with probability 4 * (3/4)^60 < 2e-7.
const SPREAD: u32 = 60;

fn cluster_ip(v6: bool) -> IpAddr {
    if v6 { VIP6 } else { VIP4 }.parse().unwrap()
}

fn lb_ip(v6: bool) -> IpAddr {
    if v6 { LB6 } else { LB4 }.parse().unwrap()
}

/// The node port (or health-check node port) `port` of `web`, or its counterpart of `web6`.
fn port_of(port: u16, v6: bool) -> u16 {
    if v6 { port + V6_OFFSET } else { port }
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// What the web service looks like in one test.
#[derive(Clone, Default)]
struct Web {
    /// `externalTrafficPolicy: Local` (with the health-check node port).
    local: bool,
    /// `type: LoadBalancer` with the family's LB IP in its status.
    lb: bool,
    source_ranges: Vec<String>,
    /// The nodes whose pods are ready endpoints.
    nodes: Vec<usize>,
}

/// `web` (IPv4) and `web6` (IPv6): node ports 30080/TCP (greeting), 30053/UDP and 30090/TCP
/// (data), endpoints on the pods of `w.nodes`.
fn write_web(lab: &Lab, w: &Web) {
    let mut objects = Vec::new();
    for (name, v6) in [("web", false), ("web6", true)] {
        let mut svc = Service::new(name, cluster_ip(v6))
            .port(tcp("greet", 80, TCP_PORT).node_port(port_of(NODE_PORT, v6)))
            .port(udp("dns", 53, UDP_PORT).node_port(port_of(UDP_NODE_PORT, v6)))
            .port(tcp("data", 9000, DATA_PORT).node_port(port_of(DATA_NODE_PORT, v6)))
            .node_port();
        if w.lb {
            svc = svc.load_balancer(&[&lb_ip(v6).to_string()]);
        }
        if w.local {
            svc = svc.external_traffic_local(port_of(HEALTH_PORT, v6));
        }
        let ranges: Vec<&str> = w.source_ranges.iter().map(String::as_str).collect();
        svc = svc.source_ranges(&ranges);
        let mut slice = svc.slice("a");
        for &n in &w.nodes {
            let pods = 0..lab.node(n).pods.len();
            slice = slice.ready_on(&node_name(n), pods.map(|p| pod_ip(n, p, v6)));
        }
        objects.push(svc.to_value());
        objects.push(slice.to_value());
    }
    lab.manifests.write("web.yaml", &objects).unwrap();
}

/// Rewrites the manifests and waits until each node's datapath holds the new endpoints (its
/// own node port's backends and the LB IP's source ranges, read back with `dump`).
fn rewrite(lab: &Lab, w: &Web) {
    write_web(lab, w);
    let mut want: Vec<String> = w
        .nodes
        .iter()
        .flat_map(|&n| (0..lab.node(n).pods.len()).map(move |p| (n, p)))
        .map(|(n, p)| at(pod_ip(n, p, false), TCP_PORT).to_string())
        .collect();
    want.sort();
    let ranges: Vec<String> = w
        .source_ranges
        .iter()
        .filter(|r| !r.contains(':'))
        .cloned()
        .collect();
    for n in lab.node_numbers() {
        let vip = node_ip(n, false).to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let dump = lab.dump(n).unwrap();
            let entry = dump
                .iter()
                .find(|e| e.vip == vip && e.port == NODE_PORT && e.protocol == "TCP");
            let ranges_in = |e: &DumpEntry| e.source_ranges == ranges;
            let lb_done = !w.lb || dump.iter().filter(|e| e.vip == LB4).all(ranges_in);
            if entry.is_some_and(|e| e.backends == want) && lb_done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node-{n}: {vip}:{NODE_PORT} never got {want:?}: {entry:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Two nodes of two pods with the standard backends, `web`/`web6` as `w` says, both agents on
/// `ext0` (and `extra`) and synced.
fn lab_with(env: Env, w: &Web, extra: &[&str]) -> Lab {
    let mut lab = Lab::new(env, 2, 2).unwrap();
    lab.standard_backends().unwrap();
    write_web(&lab, w);
    let mut args = vec![
        "--nodeport-iface",
        EXT_IFACE,
        "--healthz-bind-address",
        "0.0.0.0:10256",
    ];
    args.extend_from_slice(extra);
    lab.start_agents(&args).unwrap();
    lab
}

fn backends_of(lab: &Lab, nodes: &[usize]) -> Vec<String> {
    let mut out = Vec::new();
    for &n in nodes {
        out.extend((0..lab.node(n).pods.len()).map(|p| backend_name(n, p)));
    }
    out
}

/// The node a backend name (`n<node>p<pod>`) lives on.
fn node_of(backend: &str) -> usize {
    backend
        .strip_prefix('n')
        .and_then(|b| b.split('p').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a pod backend: {backend}"))
}

/// Every reply came from one of `backends` (all of them seen), through `peer`; a backend on
/// the node the client went to (`via`) saw the client itself, one on another node saw `via`'s
/// address (source NAT).
fn assert_served(replies: &[Reply], peer: SocketAddr, via: usize, backends: &[String], v6: bool) {
    let counts = tally(replies);
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        backends.to_vec(),
        "to {peer}: {counts:?}"
    );
    let client = external_ip(v6).to_string();
    let node = node_ip(via, v6).to_string();
    for r in replies {
        assert_eq!(r.peer, Some(peer.to_string()), "{r:?}");
        let b = r.backend().unwrap_or_default();
        let want = if node_of(b) == via { &client } else { &node };
        assert_eq!(
            r.seen_client(),
            Some(want.as_str()),
            "{peer} via node-{via}: {r:?}"
        );
    }
}

/// A connection attempt that went unanswered until its timeout (a drop, not a refusal).
fn assert_dropped(lab: &Lab, addr: SocketAddr) {
    let r = lab.external_client().run_mode("tcp", addr, 1, 600).unwrap();
    assert!(
        !r[0].is_ok() && r[0].errno != Some(libc::ECONNREFUSED) && r[0].elapsed_ms >= 500.0,
        "{addr}: want no answer at all, got {r:?}"
    );
}

/// `GET /` of a service health-check port: (status, body).
fn health(lab: &Lab, addr: SocketAddr) -> (u16, Value) {
    let r = lab.external_client().http(addr, 1).unwrap();
    let status = r[0]
        .status
        .unwrap_or_else(|| panic!("health check {addr}: {r:?}"));
    let body = r[0].reply.as_deref().unwrap_or_default();
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{addr}: body {body:?}: {e}"));
    (status, body)
}

/// `externalTrafficPolicy: Cluster`: from outside, either node's node port reaches the pods
/// of both nodes, TCP and UDP, IPv4 and IPv6, with the node port as the peer; the pods on the
/// node the client went to see the client's own address, those on the other node see that
/// node's address (kube-proxy masquerades those, and only those need it).
#[test]
fn lab_node_port_cluster_policy_reaches_both_nodes() {
    let env = require_env!();
    let w = Web {
        nodes: vec![1, 2],
        ..Web::default()
    };
    let lab = lab_with(env, &w, &[]);
    let all = backends_of(&lab, &[1, 2]);
    let client = lab.external_client();
    for via in lab.node_numbers() {
        for v6 in [false, true] {
            let np = at(node_ip(via, v6), port_of(NODE_PORT, v6));
            let replies = client.tcp(np, SPREAD).unwrap();
            assert_served(&replies, np, via, &all, v6);

            let dns = at(node_ip(via, v6), port_of(UDP_NODE_PORT, v6));
            let replies = client.udp_unconnected(dns, 8).unwrap();
            assert!(replies.iter().all(Reply::is_ok), "{replies:?}");
            assert!(
                replies.iter().all(|r| r.from == Some(dns.to_string())),
                "UDP replies come from the node port: {replies:?}"
            );
        }
    }
}

/// `externalTrafficPolicy: Local` with endpoints on node-1 only: through node-1 the client
/// keeps its address and reaches node-1's pods; node-2 drops (no answer at all, so a load
/// balancer's health check steers clients away). The health-check node port answers 200 with
/// kube-proxy's body on node-1 and 503 on node-2; when the endpoints move to node-2 both flip,
/// and so does the traffic. A pod of node-2 reaching its own node's node port gets every
/// endpoint meanwhile (kube-proxy's short-circuit for traffic from inside).
#[test]
fn lab_node_port_local_policy_and_health_checks() {
    let env = require_env!();
    // The health-check node port is a LoadBalancer's (Kubernetes allocates none otherwise).
    let mut w = Web {
        local: true,
        lb: true,
        nodes: vec![1],
        ..Web::default()
    };
    let lab = lab_with(env, &w, &[]);
    for (serving, idle) in [(1, 2), (2, 1)] {
        if serving == 2 {
            w.nodes = vec![2];
            rewrite(&lab, &w);
        }
        let mine = backends_of(&lab, &[serving]);
        for v6 in [false, true] {
            let np = at(node_ip(serving, v6), port_of(NODE_PORT, v6));
            let replies = lab.external_client().tcp(np, 20).unwrap();
            let counts = tally(&replies);
            assert_eq!(
                counts.keys().cloned().collect::<Vec<_>>(),
                mine,
                "{counts:?}"
            );
            let me = external_ip(v6).to_string();
            assert!(
                replies.iter().all(|r| r.seen_client() == Some(me.as_str())),
                "the client's address is kept: {replies:?}"
            );
            assert_dropped(&lab, at(node_ip(idle, v6), port_of(NODE_PORT, v6)));
        }
        let (status, body) = health(&lab, at(node_ip(serving, false), HEALTH_PORT));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["localEndpoints"], 2, "{body}");
        assert_eq!(body["service"]["name"], "web", "{body}");
        assert_eq!(body["service"]["namespace"], "default", "{body}");
        assert_eq!(body["serviceProxyHealthy"], true, "{body}");
        let (status, body) = health(&lab, at(node_ip(idle, false), HEALTH_PORT));
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["localEndpoints"], 0, "{body}");

        // From a pod on the idle node to its own node's node port: every endpoint.
        let own = at(node_ip(idle, false), NODE_PORT);
        let replies = lab.pod_client(idle, 0).tcp(own, 10).unwrap();
        assert_eq!(
            tally(&replies).keys().cloned().collect::<Vec<_>>(),
            mine,
            "{replies:?}"
        );
    }
    // The node-level health server answers for both nodes.
    for n in lab.node_numbers() {
        for path in ["/healthz", "/livez"] {
            let r = lab
                .external_client()
                .http_get(at(node_ip(n, false), 10256), path)
                .unwrap();
            assert_eq!(r.status, Some(200), "node-{n} {path}: {r:?}");
        }
    }
}

/// `type: LoadBalancer`: the LB IP, routed to node-1 as MetalLB would, reaches the pods of
/// both nodes; `loadBalancerSourceRanges` that leave the client out drop it (and the node
/// ports stay open: kube-proxy applies the ranges to the LB IP only); ranges that include it
/// let it in again.
#[test]
fn lab_load_balancer_ips_and_source_ranges() {
    let env = require_env!();
    let mut w = Web {
        lb: true,
        nodes: vec![1, 2],
        ..Web::default()
    };
    let lab = lab_with(env, &w, &[]);
    for v6 in [false, true] {
        lab.route_via(lb_ip(v6), 1).unwrap();
    }
    let all = backends_of(&lab, &[1, 2]);
    for v6 in [false, true] {
        let lb = at(lb_ip(v6), 80);
        let replies = lab.external_client().tcp(lb, SPREAD).unwrap();
        assert_served(&replies, lb, 1, &all, v6);
    }
    w.source_ranges = vec!["10.100.0.200/32".into(), "fd00:100::c8/128".into()];
    rewrite(&lab, &w);
    for v6 in [false, true] {
        assert_dropped(&lab, at(lb_ip(v6), 80));
        let np = at(node_ip(1, v6), port_of(NODE_PORT, v6));
        let r = lab.external_client().tcp(np, 3).unwrap();
        assert!(
            r.iter().all(Reply::is_ok),
            "the node port is not ranged: {r:?}"
        );
    }
    w.source_ranges = vec!["10.100.0.0/24".into(), "fd00:100::/64".into()];
    rewrite(&lab, &w);
    for v6 in [false, true] {
        let r = lab.external_client().tcp(at(lb_ip(v6), 80), 3).unwrap();
        assert!(r.iter().all(Reply::is_ok), "in range again: {r:?}");
    }
}

/// 20 MB each way through a node port, to a pod on the node the client went to and to one on
/// the other node (source-NATed), IPv4 and IPv6: every byte arrives intact.
#[test]
fn lab_node_port_big_transfers() {
    let env = require_env!();
    const BYTES: u64 = 20 << 20;
    for via_other in [false, true] {
        let w = Web {
            nodes: vec![if via_other { 2 } else { 1 }],
            ..Web::default()
        };
        let lab = lab_with(env.clone(), &w, &[]);
        for v6 in [false, true] {
            let np = at(node_ip(1, v6), port_of(DATA_NODE_PORT, v6));
            let up = lab.external_client().transfer(true, np, BYTES, 7).unwrap();
            assert_eq!(up.peer, Some(np.to_string()), "{up:?}");
            let verdict = up.reply.as_deref().unwrap_or_default();
            assert!(
                verdict.ends_with(&format!(" received={BYTES} mismatch=none")),
                "upload {np}: the backend says {verdict:?}"
            );
            let down = lab.external_client().transfer(false, np, BYTES, 8).unwrap();
            assert!(down.is_ok(), "{down:?}");
            assert_eq!(down.peer, Some(np.to_string()), "{down:?}");
            assert_eq!((down.bytes, down.mismatch), (Some(BYTES), None), "{down:?}");
        }
    }
}

/// Backend churn under continuous connections: while the external client opens connection
/// after connection to node-1's node port, the endpoints change round after round (pods of
/// either node leave and come back; the processes keep running, as a terminating pod's do
/// for a while): not one connection fails, and every backend served some.
#[test]
fn lab_node_port_churn_without_failures() {
    let env = require_env!();
    let mut w = Web {
        nodes: vec![1, 2],
        ..Web::default()
    };
    let lab = lab_with(env, &w, &[]);
    let np = at(node_ip(1, false), NODE_PORT);
    let replies = std::thread::scope(|s| {
        let client = lab.external_client();
        let load = s.spawn(move || client.run_mode("tcp", np, 400, 2000));
        for nodes in [
            vec![1],
            vec![1, 2],
            vec![2],
            vec![1, 2],
            vec![2],
            vec![1, 2],
        ] {
            std::thread::sleep(Duration::from_millis(150));
            w.nodes = nodes;
            rewrite(&lab, &w);
        }
        load.join().expect("the client thread")
    })
    .unwrap();
    let failed: Vec<&Reply> = replies.iter().filter(|r| !r.is_ok()).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let counts = tally(&replies);
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        backends_of(&lab, &[1, 2]),
        "{counts:?}"
    );
}

/// Many short connections in a row through node-1's node port to node-2's pods: every one is
/// source-NATed to a port of its own while the closed ones still hold theirs (the closing
/// timeout), and not one fails. 6,000 is more than the upper SNAT span alone held.
#[test]
fn lab_node_port_many_short_connections_to_remote_backends() {
    let env = require_env!();
    let w = Web {
        nodes: vec![2],
        ..Web::default()
    };
    let lab = lab_with(env, &w, &[]);
    let np = at(node_ip(1, false), NODE_PORT);
    let replies = lab
        .external_client()
        .run_mode("tcp", np, 6_000, 2_000)
        .unwrap();
    let failed: Vec<&Reply> = replies.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of 6000 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        tally(&replies).keys().cloned().collect::<Vec<_>>(),
        backends_of(&lab, &[2])
    );
}
