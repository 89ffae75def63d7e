//! The multi-node lab (`clusterip_tests::lab`) proven with what works today: two nodes on one
//! L2 network, each with two pods and its own agent, and an external client.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use clusterip_tests::agent::DumpEntry;
use clusterip_tests::fixture::cgroup_progs;
use clusterip_tests::lab::{
    BRIDGE, EXT_IFACE, Lab, POD_IFACE_GLOB, backend_name, external_ip, node_ip, node_name, pod_ip,
    root_interfaces,
};
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::node::{TCP_PORT, UDP_PORT, tcx_ingress};
use clusterip_tests::process::{Listen, Reply, assert_all_from, assert_spread_via, tally};
use clusterip_tests::{Env, require_env, require_root};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
/// Connections per spread check: 4 backends, each missing from 60 uniform picks with
/// probability (3/4)^60, all four present but with probability 4 * (3/4)^60 < 2e-7.
const SPREAD: u32 = 60;

fn vip(v6: bool) -> SocketAddr {
    SocketAddr::new(if v6 { VIP6 } else { VIP4 }.parse().unwrap(), 80)
}

/// Every backend of the lab: n1p0, n1p1, n2p0, n2p1.
fn all_backends(lab: &Lab) -> Vec<String> {
    let mut all = Vec::new();
    for n in lab.node_numbers() {
        all.extend((0..lab.node(n).pods.len()).map(|p| backend_name(n, p)));
    }
    all
}

/// Backend names of node `n`'s pods.
fn backends_of(lab: &Lab, n: usize) -> Vec<String> {
    (0..lab.node(n).pods.len())
        .map(|p| backend_name(n, p))
        .collect()
}

/// `web` (VIP4) and `web6` (VIP6), port 80 -> the greeting and 53/UDP -> UDP, with every pod
/// of every node as a ready endpoint carrying its node's `nodeName`; Local if `local`.
fn write_web(lab: &Lab, local: bool) {
    let mut objects = Vec::new();
    for (name, v6) in [("web", false), ("web6", true)] {
        let mut svc = Service::new(name, vip(v6).ip())
            .port(tcp("greet", 80, TCP_PORT))
            .port(udp("dns", 53, UDP_PORT));
        if local {
            svc = svc.internal_traffic_local();
        }
        let mut slice = svc.slice("a");
        for n in lab.node_numbers() {
            let pods = 0..lab.node(n).pods.len();
            slice = slice.ready_on(&node_name(n), pods.map(|p| pod_ip(n, p, v6)));
        }
        objects.push(svc.to_value());
        objects.push(slice.to_value());
    }
    lab.manifests.write("web.yaml", &objects).unwrap();
}

/// Two nodes of two pods, standard backends in every pod, `web`/`web6`, both agents synced.
fn web_lab(env: Env, local: bool) -> Lab {
    let mut lab = Lab::new(env, 2, 2).unwrap();
    lab.standard_backends().unwrap();
    write_web(&lab, local);
    lab.start_agents(&[]).unwrap();
    lab
}

fn assert_unreachable_at_once(r: &Reply, what: &str) {
    assert_eq!(r.errno, Some(libc::ENETUNREACH), "{what}: {r:?}");
    assert!(r.elapsed_ms < 500.0, "{what}: not at once: {r:?}");
}

/// No agent: a pod on node-1 reaches a pod on node-2 by pod IP and back, IPv4 and IPv6, TCP
/// and UDP, through the nodes' routes over the shared network; each backend sees the other
/// pod's own address (routed, no NAT). A node reaches the other node's pods too.
#[test]
fn lab_pod_to_pod_across_nodes() {
    let env = require_root!();
    let mut lab = Lab::new(env, 2, 1).unwrap();
    lab.standard_backends().unwrap();
    for (from, to) in [(1, 2), (2, 1)] {
        for v6 in [false, true] {
            let client = lab.pod_client(from, 0).without_cgroup();
            let me = pod_ip(from, 0, v6).to_string();
            let addr = SocketAddr::new(pod_ip(to, 0, v6), TCP_PORT);
            let replies = client.tcp(addr, 3).unwrap();
            assert_all_from(&replies, &backend_name(to, 0), 3);
            for r in &replies {
                assert_eq!(r.peer, Some(addr.to_string()), "{r:?}");
                assert_eq!(r.seen_client(), Some(me.as_str()), "{r:?}");
            }
            let addr = SocketAddr::new(pod_ip(to, 0, v6), UDP_PORT);
            let replies = client.udp_unconnected(addr, 2).unwrap();
            assert_all_from(&replies, &backend_name(to, 0), 2);
            assert!(
                replies.iter().all(|r| r.from == Some(addr.to_string())),
                "{replies:?}"
            );
            // From the node itself: its source is its external address.
            let addr = SocketAddr::new(pod_ip(to, 0, v6), TCP_PORT);
            let replies = lab.node_client(from).without_cgroup().tcp(addr, 1).unwrap();
            assert_all_from(&replies, &backend_name(to, 0), 1);
            assert_eq!(
                replies[0].seen_client(),
                Some(node_ip(from, v6).to_string().as_str()),
                "{replies:?}"
            );
        }
    }
}

/// Two agents on one kernel, each in its node's netns with its own pins, cgroup, TC links and
/// `--node-name`: from a pod of either node (in that node's cgroup) connections to the VIP
/// reach the backends of both nodes (v4 and v6), with the VIP as peer and the pod's own
/// address seen by the backend; both dumps show the same frontends; each cgroup holds its own
/// agent's eight socket programs and each node's pod veths their own TC program.
#[test]
fn lab_two_agents_serve_cluster_ip_on_each_node() {
    let env = require_env!();
    let lab = web_lab(env, false);
    let all = all_backends(&lab);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    for n in lab.node_numbers() {
        for v6 in [false, true] {
            let replies = lab.pod_client(n, 0).tcp(vip(v6), SPREAD).unwrap();
            assert_spread_via(
                &replies,
                &vip(v6).to_string(),
                &pod_ip(n, 0, v6).to_string(),
                &all,
            );
        }
        // UDP through the socket hooks too: recvfrom() reports the VIP.
        let dns = SocketAddr::new(vip(false).ip(), 53);
        let replies = lab.pod_client(n, 1).udp_unconnected(dns, 3).unwrap();
        assert_eq!(tally(&replies).values().sum::<usize>(), 3, "{replies:?}");
        assert!(
            replies.iter().all(|r| r.from == Some(dns.to_string())),
            "{replies:?}"
        );
    }

    let (d1, d2) = (lab.dump(1).unwrap(), lab.dump(2).unwrap());
    assert_eq!(d1, d2, "both nodes program the same frontends");
    let ips = |v6: bool| -> Vec<String> {
        let mut s: Vec<String> = lab
            .node_numbers()
            .flat_map(|n| (0..2).map(move |p| SocketAddr::new(pod_ip(n, p, v6), TCP_PORT)))
            .map(|a| a.to_string())
            .collect();
        s.sort();
        s
    };
    let web = DumpEntry {
        backends: ips(false),
        ..DumpEntry::new(VIP4, 80, "TCP", &[], None)
    };
    assert!(d1.contains(&web), "{web:?} in {d1:#?}");
    let web6 = DumpEntry {
        backends: ips(true),
        ..DumpEntry::new(VIP6, 80, "TCP", &[], None)
    };
    assert!(d1.contains(&web6), "{web6:?} in {d1:#?}");

    // Own cgroups: eight socket programs on each, none shared.
    let progs: Vec<BTreeSet<u32>> = lab
        .node_numbers()
        .map(|n| {
            cgroup_progs(lab.node(n).cgroup.path())
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect()
        })
        .collect();
    for (n, ids) in lab.node_numbers().zip(&progs) {
        assert_eq!(ids.len(), 8, "{}: {ids:?}", node_name(n));
    }
    assert!(progs[0].is_disjoint(&progs[1]), "{progs:?}");
    // Own interfaces: each node's pod veths carry that node's TC program, ext0 none.
    let tc: Vec<Vec<u32>> = lab
        .node_numbers()
        .map(|n| {
            let node = lab.node(n);
            assert_eq!(
                tcx_ingress(&node.netns, EXT_IFACE).unwrap(),
                Vec::<u32>::new(),
                "{}",
                node.name
            );
            let ids: BTreeSet<Vec<u32>> = node
                .pod_ifaces()
                .iter()
                .map(|i| tcx_ingress(&node.netns, i).unwrap())
                .collect();
            assert_eq!(ids.len(), 1, "one program on every pod veth: {ids:?}");
            ids.into_iter().next().unwrap()
        })
        .collect();
    assert_ne!(tc[0], tc[1], "{tc:?}");
}

/// internalTrafficPolicy: Local, one slice naming endpoints of both nodes: each agent
/// programs only its own node's endpoints (`--node-name` against `nodeName`), and pods and the
/// node itself reach only those.
#[test]
fn lab_internal_traffic_policy_local_per_node() {
    let env = require_env!();
    let lab = web_lab(env, true);
    for n in lab.node_numbers() {
        let mine = backends_of(&lab, n);
        let mine: Vec<&str> = mine.iter().map(String::as_str).collect();
        for v6 in [false, true] {
            // Two local backends: both answer 30 connections but with probability 2^-29.
            let replies = lab.pod_client(n, 0).tcp(vip(v6), 30).unwrap();
            assert_spread_via(
                &replies,
                &vip(v6).to_string(),
                &pod_ip(n, 0, v6).to_string(),
                &mine,
            );
            let replies = lab.node_client(n).tcp(vip(v6), 20).unwrap();
            let from: Vec<String> = tally(&replies).into_keys().collect();
            assert!(from.iter().all(|b| mine.contains(&b.as_str())), "{from:?}");
        }
        let dump = lab.dump(n).unwrap();
        let web = dump
            .iter()
            .find(|e| e.vip == VIP4 && e.port == 80)
            .unwrap_or_else(|| panic!("no {VIP4}:80 in {dump:#?}"));
        let want: Vec<String> = (0..2)
            .map(|p| SocketAddr::new(pod_ip(n, p, false), TCP_PORT).to_string())
            .collect();
        assert_eq!(web.backends, want, "{}", node_name(n));
    }
}

/// The external client reaches a node's own address (a host-network server on node-1's
/// external IPs) and an address routed via a node with [`Lab::route_via`] (a stand-in for a
/// load-balancer IP, here local to node-2), but not a pod IP: it has no route to the pod
/// CIDRs, so connecting fails at once with ENETUNREACH, while the agents run.
#[test]
fn lab_external_client_reaches_nodes_not_pods() {
    let env = require_env!();
    let mut lab = Lab::new(env, 2, 1).unwrap();
    lab.standard_backends().unwrap();
    write_web(&lab, false);
    let lb: [IpAddr; 2] = [
        "10.250.0.1".parse().unwrap(),
        "fd00:250::1".parse().unwrap(),
    ];
    for (n, ips) in [
        (1, vec![node_ip(1, false), node_ip(1, true)]),
        (2, lb.to_vec()),
    ] {
        let listen = Listen {
            tcp: ips
                .iter()
                .map(|&ip| SocketAddr::new(ip, TCP_PORT))
                .collect(),
            ..Listen::default()
        };
        if n == 2 {
            for ip in &lb {
                let node = &lab.node(2).netns;
                let prefix = if ip.is_ipv6() { "128" } else { "32" };
                node.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", "lo"])
                    .unwrap();
                lab.route_via(*ip, 2).unwrap();
            }
        }
        lab.node_backend(n, &node_name(n), &listen).unwrap();
    }
    lab.start_agents(&[]).unwrap();

    let client = lab.external_client();
    for v6 in [false, true] {
        let me = external_ip(v6).to_string();
        for (addr, node) in [
            (SocketAddr::new(node_ip(1, v6), TCP_PORT), "node-1"),
            (SocketAddr::new(lb[usize::from(v6)], TCP_PORT), "node-2"),
        ] {
            let replies = client.tcp(addr, 2).unwrap();
            assert_all_from(&replies, node, 2);
            assert_eq!(replies[0].seen_client(), Some(me.as_str()), "{replies:?}");
        }
        for n in lab.node_numbers() {
            let pod = SocketAddr::new(pod_ip(n, 0, v6), TCP_PORT);
            let r = client.run_mode("tcp", pod, 1, 2000).unwrap();
            assert_unreachable_at_once(&r[0], &format!("external -> {pod}"));
            // Nor through a VIP: the external client has no route there either.
            let r = client.run_mode("tcp", vip(v6), 1, 2000).unwrap();
            assert_unreachable_at_once(&r[0], &format!("external -> {}", vip(v6)));
        }
    }
}

/// The per-packet path across nodes: a pod outside the node's cgroup (no socket hook sees
/// it) reaches the VIP's backends on both nodes, v4 and v6, with the VIP as peer and its own
/// address seen by each backend. TC on the pod veths DNATs the SYN on node-1; a backend on
/// node-2 answers to the pod's own address, so the reply comes back into node-1 through ext0,
/// and only a TC program there reverse-NATs it (with `--tc-iface pod*` alone such
/// connections time out: the pod gets a SYN-ACK from the backend's address and resets it).
#[test]
fn lab_tc_path_across_nodes_needs_tc_on_ext0() {
    let env = require_env!();
    let mut lab = Lab::new(env, 2, 2).unwrap();
    lab.standard_backends().unwrap();
    write_web(&lab, false);
    lab.start_agents(&["--tc-iface", EXT_IFACE]).unwrap();
    let all = all_backends(&lab);
    for n in lab.node_numbers() {
        for v6 in [false, true] {
            let replies = lab
                .pod_client(n, 0)
                .without_cgroup()
                .tcp(vip(v6), SPREAD)
                .unwrap();
            let counts = tally(&replies);
            assert_eq!(
                counts.keys().collect::<Vec<_>>(),
                all.iter().collect::<Vec<_>>(),
                "{counts:?}"
            );
            let me = pod_ip(n, 0, v6).to_string();
            for r in &replies {
                assert_eq!(r.peer, Some(vip(v6).to_string()), "{r:?}");
                // A connection back to the client's own pod hairpins, and a hairpinned
                // backend sees the VIP as source; every other one sees the pod.
                if r.backend() != Some(backend_name(n, 0).as_str()) {
                    assert_eq!(r.seen_client(), Some(me.as_str()), "{r:?}");
                }
            }
        }
    }
}

/// Interfaces of the root netns named as the lab names its own (there must be none).
fn lab_interfaces_in_root() -> Vec<String> {
    let pod = POD_IFACE_GLOB.trim_end_matches('*');
    root_interfaces()
        .unwrap()
        .into_iter()
        .filter(|i| i == EXT_IFACE || i == BRIDGE || i.starts_with(pod))
        .collect()
}

/// A whole lab with agents and traffic; while it runs, the root netns has none of its
/// interfaces; after the drop no netns (by name, nor by a process still inside one), pin
/// directory, cgroup, BPF link, process or manifest directory of it remains, and still no
/// interface of it in the root netns.
#[test]
fn lab_teardown_leaves_nothing() {
    let env = require_env!();
    let started = Instant::now();
    let lab = web_lab(env, false);
    let setup = started.elapsed();
    let replies = lab.pod_client(1, 0).tcp(vip(false), 4).unwrap();
    tally(&replies);
    let inv = lab.inventory().unwrap();
    assert_eq!(
        inv.netns.len(),
        2 + 2 + 4,
        "switch, external, nodes, pods: {inv:?}"
    );
    // Per node: eight cgroup links, and TC ingress and egress links on each of two pod veths.
    assert_eq!(inv.links.len(), 2 * (8 + 2 * 2), "{inv:?}");
    assert!(inv.pins.iter().all(|p| p.exists()), "{inv:?}");
    assert_eq!(lab_interfaces_in_root(), Vec::<String>::new());

    let dropping = Instant::now();
    drop(lab);
    let teardown = dropping.elapsed();
    let left = inv.leftovers(Duration::from_secs(2)).unwrap();
    assert_eq!(left, Vec::<String>::new(), "left behind by the lab");
    assert_eq!(lab_interfaces_in_root(), Vec::<String>::new());
    eprintln!("lab: setup with agents {setup:?}, teardown {teardown:?}");
}
