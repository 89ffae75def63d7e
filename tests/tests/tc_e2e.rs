//! End to end, per packet: a client netns whose processes are in no cgroup with programs, a
//! node netns running the agent with `--tc-iface cip* --socket-lb=false`, backends in pod
//! netns behind the node. Every VIP packet is translated by the TC program on the node's
//! veths (forward DNAT on the client's veth, reverse NAT on the pods' veths) and routed by
//! the node; nothing else knows the VIPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::node::{
    CLIENT_IFACE, DATA_PORT, ECHO_PORT, HTTP_PORT, NodeFixture, NodeTopology, TCP_PORT, UDP_PORT,
    client_ip, pod_iface, pod_ip,
};
use clusterip_tests::process::{
    Listen, NsClient, Reply, assert_all_from, assert_spread_via, start_backend, tally,
};
use clusterip_tests::{require_env, require_root};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
/// An error must come back well before the client's 3 s timeout.
const IMMEDIATE_MS: f64 = 500.0;
const MB20: u64 = 20 * 1024 * 1024;

fn vip(v6: bool) -> &'static str {
    if v6 { VIP6 } else { VIP4 }
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Service `name` on `cluster_ip` with every port of the standard backends:
/// 80 -> HTTP, 8080 -> greeting, 53/UDP -> UDP, 90 -> echo, 91 -> data.
fn service(name: &str, cluster_ip: &str) -> Service {
    Service::new(name, cluster_ip)
        .port(tcp("http", 80, HTTP_PORT))
        .port(tcp("greet", 8080, TCP_PORT))
        .port(udp("dns", 53, UDP_PORT))
        .port(tcp("echo", 90, ECHO_PORT))
        .port(tcp("data", 91, DATA_PORT))
}

/// Writes `web` (VIP4) and `web6` (VIP6) with the given pods as ready endpoints.
fn write_web(fx: &NodeFixture, pods: &[usize]) {
    let mut objects = Vec::new();
    for (name, v6) in [("web", false), ("web6", true)] {
        let svc = service(name, vip(v6));
        let slice = svc.slice("a").ready(pods.iter().map(|&i| pod_ip(i, v6)));
        objects.push(svc.to_value());
        objects.push(slice.to_value());
    }
    fx.manifests.write("web.yaml", &objects).unwrap();
}

/// 3 pods with standard backends, `web`/`web6` over all of them, the agent running.
fn web(env: clusterip_tests::Env) -> NodeFixture {
    let mut fx = NodeFixture::new(env, 3).unwrap();
    fx.standard_backends().unwrap();
    write_web(&fx, &[0, 1, 2]);
    fx.start_agent(&[]).unwrap();
    fx
}

/// The socket hooks are off: the agent attached nothing to its cgroup.
fn assert_no_socket_programs(fx: &NodeFixture) {
    let progs = clusterip_tests::fixture::cgroup_progs(fx.cgroup.path()).unwrap();
    assert!(
        progs.is_empty(),
        "--socket-lb=false, yet programs on the cgroup: {progs:?}"
    );
}

/// TCP to `ip`:80 and connected UDP to `ip`:53 both fail with ECONNREFUSED at once.
fn assert_refused_at_once(fx: &NodeFixture, ip: &str) {
    for (mode, port) in [("tcp", 80), ("udp-connected", 53)] {
        let r = fx.client().run_mode(mode, at(ip, port), 1, 3000).unwrap();
        assert_eq!(r[0].errno, Some(libc::ECONNREFUSED), "{mode} {ip}: {r:?}");
        assert!(r[0].elapsed_ms < IMMEDIATE_MS, "{mode} {ip}: slow: {r:?}");
    }
}

fn assert_all_ok(replies: &[Reply]) {
    for r in replies {
        assert!(r.is_ok(), "a request failed: {r:?}\nall: {replies:#?}");
    }
}

/// Harness self-test, no agent: the node routes between the client and the pods (v4, v6,
/// TCP, UDP; the backend sees the client's address), and a VIP is unreachable (the node has
/// no route), so every VIP test below depends on the programs' translation.
#[test]
fn node_topology_routes_and_vips_go_nowhere_without_agent() {
    let env = require_root!();
    let topo = NodeTopology::new(2).unwrap();
    let mut listen = Listen::default();
    for v6 in [false, true] {
        listen.tcp.push(SocketAddr::new(pod_ip(1, v6), TCP_PORT));
        listen.udp.push(SocketAddr::new(pod_ip(1, v6), UDP_PORT));
    }
    let _be = start_backend(
        std::path::Path::new(env.bins.backend),
        &topo.pods[1],
        "be-1",
        &listen,
    )
    .unwrap();
    let client = NsClient {
        bin: std::path::Path::new(env.bins.client),
        netns: &topo.client,
        cgroup: None,
    };
    for v6 in [false, true] {
        let addr = SocketAddr::new(pod_ip(1, v6), TCP_PORT);
        let replies = client.tcp(addr, 3).unwrap();
        assert_eq!(tally(&replies).get("be-1"), Some(&3), "{replies:?}");
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()));
            assert_eq!(r.seen_client(), Some(client_ip(v6).to_string().as_str()));
        }
        let addr = SocketAddr::new(pod_ip(1, v6), UDP_PORT);
        let replies = client.udp_unconnected(addr, 2).unwrap();
        assert_eq!(tally(&replies).get("be-1"), Some(&2), "{replies:?}");
        // Without the programs the VIP is not reachable at all.
        let r = client.run_mode("tcp", at(vip(v6), 80), 1, 1000).unwrap();
        assert!(r[0].error.is_some(), "VIP reachable without agent: {r:?}");
        assert_ne!(r[0].errno, Some(libc::ECONNREFUSED), "{r:?}");
        eprintln!("VIP without agent: {r:?}");
    }
}

/// HTTP GETs from the client netns to VIP:80, v4 and v6: every response is 200, the
/// client's getpeername() is VIP:80 although no socket program runs (the replies really are
/// reverse-NATed), every backend sees the client's own address, and the requests are spread
/// over all three backends (each new connection is a new 5-tuple: all 60 missing one backend
/// has probability 3 * (2/3)^60 < 1e-10).
#[test]
fn http_through_vip_v4_and_v6() {
    let env = require_env!();
    let fx = web(env);
    assert_no_socket_programs(&fx);
    for v6 in [false, true] {
        let addr = at(vip(v6), 80);
        let replies = fx.client().http(addr, 60).unwrap();
        for r in &replies {
            assert_eq!(r.status, Some(200), "{r:?}");
        }
        assert_spread_via(
            &replies,
            &addr.to_string(),
            &client_ip(v6).to_string(),
            &["be-0", "be-1", "be-2"],
        );
    }
}

/// UDP to VIP:53, v4 and v6. 30 unconnected sockets, 3 datagrams each: every recvfrom()
/// reports VIP:53, the backend saw the client's address, each socket (one 5-tuple) stays on
/// one backend, and the sockets are spread over more than one backend. A connected socket:
/// getpeername() and recvfrom() say VIP:53 and every datagram is answered.
#[test]
fn udp_through_vip_v4_and_v6() {
    let env = require_env!();
    let fx = web(env);
    for v6 in [false, true] {
        let addr = at(vip(v6), 53);
        let mut multi = fx.client().multi(false, addr, 30).unwrap();
        let mut first: Vec<String> = Vec::new();
        for round in 0..3 {
            let replies = multi.round().unwrap();
            assert_all_ok(&replies);
            let backends: Vec<String> = replies
                .iter()
                .map(|r| r.backend().unwrap().to_owned())
                .collect();
            for r in &replies {
                assert_eq!(r.from, Some(addr.to_string()), "recvfrom: {r:?}");
                assert_eq!(r.seen_client(), Some(client_ip(v6).to_string().as_str()));
            }
            if round == 0 {
                first = backends;
            } else {
                assert_eq!(backends, first, "{addr}: flows changed backend");
            }
        }
        let used: BTreeSet<&String> = first.iter().collect();
        assert!(used.len() > 1, "{addr}: 30 flows all on {used:?}");

        let replies = fx.client().udp_connected(addr, 5).unwrap();
        assert_eq!(tally(&replies).len(), 1, "{replies:?}");
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()), "getpeername: {r:?}");
            assert_eq!(r.from, Some(addr.to_string()), "recvfrom: {r:?}");
            assert!(
                r.reply.as_deref().is_some_and(|s| s.ends_with(" ping")),
                "{r:?}"
            );
        }
    }
}

/// 20 MiB each way through VIP:91, v4 and v6: the backend checks every uploaded byte
/// against the expected stream, the client every downloaded byte.
#[test]
fn transfer_20mb_each_way_is_byte_identical() {
    let env = require_env!();
    let fx = web(env);
    for v6 in [false, true] {
        let addr = at(vip(v6), 91);
        let up = fx.client().transfer(true, addr, MB20, 11).unwrap();
        assert!(up.is_ok(), "upload: {up:?}");
        assert_eq!(up.peer, Some(addr.to_string()), "{up:?}");
        let verdict = up.reply.as_deref().unwrap_or_default();
        assert!(
            verdict.ends_with(&format!(" received={MB20} mismatch=none")),
            "upload {addr}: backend says {verdict:?}"
        );
        assert_eq!(up.seen_client(), Some(client_ip(v6).to_string().as_str()));
        eprintln!("upload {addr}: {:.0} ms", up.elapsed_ms);

        let down = fx.client().transfer(false, addr, MB20, 12).unwrap();
        assert!(down.is_ok(), "download: {down:?}");
        assert_eq!(down.peer, Some(addr.to_string()), "{down:?}");
        assert_eq!(down.bytes, Some(MB20), "download {addr}: {down:?}");
        assert_eq!(down.mismatch, None, "download {addr}: {down:?}");
        eprintln!("download {addr}: {:.0} ms", down.elapsed_ms);
    }
}

/// Flows are pinned by conntrack; removing a backend moves only its flows. 30 UDP flows
/// (one socket each) and 30 TCP connections through the VIP; then be-2 leaves the
/// EndpointSlices (its process keeps running and answering, so only the datapath can move
/// flows away from it). Until the UDP flows of be-2 have moved (their conntrack entries are
/// cleared), and after: every flow of be-0/be-1 keeps its backend (UDP) or its connection
/// (TCP), and no new flow reaches be-2.
#[test]
fn backend_removal_moves_only_that_backends_flows() {
    let env = require_env!();
    let mut fx = web(env);
    let udp_addr = at(VIP4, 53);
    let mut udp_flows = fx.client().multi(false, udp_addr, 30).unwrap();
    let mut tcp_flows = fx.client().multi(true, at(VIP4, 90), 30).unwrap();

    let before = udp_flows.round().unwrap();
    assert_all_ok(&before);
    let before: Vec<String> = before.iter().map(|r| r.backend().unwrap().into()).collect();
    let tcp_before: Vec<String> = tcp_flows
        .first
        .iter()
        .map(|r| {
            assert!(r.is_ok(), "{:?}", tcp_flows.first);
            r.backend().unwrap().into()
        })
        .collect();
    let per_backend = |v: &[String]| {
        let mut m = BTreeMap::new();
        for b in v {
            *m.entry(b.clone()).or_insert(0) += 1;
        }
        m
    };
    eprintln!(
        "udp flows {:?}, tcp flows {:?}",
        per_backend(&before),
        per_backend(&tcp_before)
    );
    assert!(
        before.iter().any(|b| b == "be-2"),
        "no UDP flow on be-2 (p < 1e-5): {before:?}"
    );
    assert_all_ok(&tcp_flows.round().unwrap());

    let mark = fx.agent().log_len();
    write_web(&fx, &[0, 1]);
    fx.agent()
        .wait_line_since(mark, &["synced"], Duration::from_secs(5))
        .unwrap();
    let start = Instant::now();
    loop {
        let now = udp_flows.round().unwrap();
        assert_all_ok(&now);
        let mut moved = true;
        for (i, (r, was)) in now.iter().zip(&before).enumerate() {
            assert_eq!(r.from, Some(udp_addr.to_string()), "{r:?}");
            let is = r.backend().unwrap();
            if was == "be-2" {
                moved &= is != "be-2";
            } else {
                assert_eq!(is, was, "UDP flow {i} ({:?}) left {was}", r.local);
            }
        }
        let tcp = tcp_flows.round().unwrap();
        for (i, (r, was)) in tcp.iter().zip(&tcp_before).enumerate() {
            if was != "be-2" {
                assert_eq!(r.alive, Some(true), "TCP flow {i} on {was} broke: {r:?}");
            }
        }
        if moved {
            eprintln!("UDP flows of be-2 moved {:?} after sync", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "UDP flows still on the removed be-2 5 s after sync: {now:?}"
        );
    }
    let counts = tally(&fx.client().tcp(at(VIP4, 8080), 30).unwrap());
    assert!(
        !counts.contains_key("be-2"),
        "new flows reach be-2: {counts:?}"
    );
}

/// A service without endpoints: TCP connect to its VIP fails with ECONNREFUSED at once (a
/// RST from the TC program; without translation the node would answer "network
/// unreachable"), and a connected UDP socket's recv fails with ECONNREFUSED at once (ICMP
/// port unreachable), v4 and v6.
#[test]
fn no_endpoints_refused_at_once() {
    let env = require_env!();
    let mut fx = NodeFixture::new(env, 1).unwrap();
    fx.standard_backends().unwrap();
    let mut objects = Vec::new();
    for (name, ip) in [("empty", "10.96.0.20"), ("empty6", "fd00:96::20")] {
        let svc = service(name, ip);
        objects.push(svc.to_value());
        objects.push(svc.slice("a").to_value());
    }
    fx.manifests.write("empty.yaml", &objects).unwrap();
    fx.start_agent(&[]).unwrap();
    for ip in ["10.96.0.20", "fd00:96::20"] {
        assert_refused_at_once(&fx, ip);
    }
}

/// Errors a backend sends about a translated flow reach the client's socket: a service
/// whose target ports are closed on its only backend. TCP: the backend's RST is
/// reverse-NATed, connect() fails with ECONNREFUSED at once. UDP: the backend's ICMP port
/// unreachable (about client -> backend) is translated back (about client -> VIP, from the
/// VIP), so the connected socket's recv fails with ECONNREFUSED at once instead of timing out.
/// v4 and v6.
#[test]
fn errors_from_backends_reach_the_client() {
    let env = require_env!();
    let mut fx = NodeFixture::new(env, 1).unwrap();
    fx.standard_backends().unwrap();
    let mut objects = Vec::new();
    for (name, ip, v6) in [
        ("closed", "10.96.0.50", false),
        ("closed6", "fd00:96::50", true),
    ] {
        let svc = Service::new(name, ip)
            .port(tcp("http", 80, 8999))
            .port(udp("dns", 53, 5999));
        objects.push(svc.to_value());
        objects.push(svc.slice("a").ready([pod_ip(0, v6)]).to_value());
    }
    fx.manifests.write("closed.yaml", &objects).unwrap();
    fx.start_agent(&[]).unwrap();
    for ip in ["10.96.0.50", "fd00:96::50"] {
        assert_refused_at_once(&fx, ip);
    }
}

/// Path MTU discovery through the VIP: pod 0's link has MTU 1280, the client's 1500. A
/// 1400-byte UDP datagram with "don't fragment" cannot be forwarded to the pod; the node
/// answers with ICMP "fragmentation needed" / ICMPv6 "packet too big" quoting the packet as
/// it was after translation (client -> pod). Control: sent to the pod's own address, the
/// client's connected socket gets EMSGSIZE at once. Through the VIP it must too, which needs
/// the error translated back to client -> VIP. v4 and v6.
#[test]
fn fragmentation_needed_reaches_the_client_through_the_vip() {
    let env = require_env!();
    let mut fx = NodeFixture::new(env, 1).unwrap();
    fx.standard_backends().unwrap();
    fx.topo.set_pod_mtu(0, 1280).unwrap();
    write_web(&fx, &[0]);
    fx.start_agent(&[]).unwrap();
    for v6 in [false, true] {
        for addr in [SocketAddr::new(pod_ip(0, v6), UDP_PORT), at(vip(v6), 53)] {
            // Small datagrams pass.
            let ok = fx.client().udp_connected(addr, 1).unwrap();
            assert!(ok[0].is_ok(), "{addr}: {ok:?}");
            let r = fx
                .client()
                .run(&[
                    "udp-connected",
                    &addr.to_string(),
                    "--count",
                    "2",
                    "--size",
                    "1400",
                    "--timeout-ms",
                    "2000",
                ])
                .unwrap();
            assert_eq!(r[0].errno, Some(libc::EMSGSIZE), "{addr}: {r:?}");
            assert!(r[0].elapsed_ms < IMMEDIATE_MS, "{addr}: slow: {r:?}");
        }
    }
}

/// Hairpin: pod 0 reaches its own service through the VIP. With pod 0 as the only backend
/// (every connection hairpins) and with all three (some do), v4 and v6: every request is
/// answered, getpeername() is the VIP, and pod 0 answers itself. The source of a hairpinned
/// packet must be translated (a packet from the pod's own address would be a martian), so
/// what the backend saw is printed, and must not be the pod's own address.
#[test]
fn hairpin_pod_reaches_itself_through_its_service() {
    let env = require_env!();
    let mut fx = NodeFixture::new(env, 3).unwrap();
    fx.standard_backends().unwrap();
    let mut objects = Vec::new();
    for (name, ip, v6) in [
        ("self", "10.96.0.30", false),
        ("self6", "fd00:96::30", true),
    ] {
        let svc = service(name, ip);
        objects.push(svc.to_value());
        objects.push(svc.slice("a").ready([pod_ip(0, v6)]).to_value());
    }
    fx.manifests.write("self.yaml", &objects).unwrap();
    write_web(&fx, &[0, 1, 2]);
    fx.start_agent(&[]).unwrap();
    for (ip, v6) in [("10.96.0.30", false), ("fd00:96::30", true)] {
        let addr = at(ip, 8080);
        let replies = fx.pod_client(0).tcp(addr, 5).unwrap();
        assert_all_from(&replies, "be-0", 5);
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()), "{r:?}");
            assert_ne!(r.seen_client(), Some(pod_ip(0, v6).to_string().as_str()));
        }
        eprintln!("hairpin {ip}: be-0 saw {:?}", replies[0].seen_client());
        let r = fx
            .pod_client(0)
            .run_mode("udp-connected", at(ip, 53), 3, 1000)
            .unwrap();
        assert_all_from(&r, "be-0", 3);
        assert!(
            r.iter().all(|r| r.from == Some(at(ip, 53).to_string())),
            "{r:?}"
        );

        let addr = at(vip(v6), 80);
        let replies = fx.pod_client(0).http(addr, 30).unwrap();
        let counts = tally(&replies);
        assert!(
            counts.contains_key("be-0"),
            "never chose itself: {counts:?}"
        );
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()), "{r:?}");
            if r.backend() != Some("be-0") {
                // Not hairpinned: the backend sees the pod's real address.
                assert_eq!(r.seen_client(), Some(pod_ip(0, v6).to_string().as_str()));
            }
        }
    }
}

/// `dump --conntrack --json` shows the configured size and timeouts and, while a connection
/// through the VIP is held open, its flow (client address, VIP:port, the backend that
/// answers); the service's packet and byte counters in `dump --json` grow with the traffic.
#[test]
fn conntrack_and_counters_show_running_flows() {
    let env = require_env!();
    let mut fx = NodeFixture::new(env, 3).unwrap();
    fx.standard_backends().unwrap();
    write_web(&fx, &[0, 1, 2]);
    fx.start_agent(&[
        "--ct-max",
        "4096",
        "--ct-tcp-timeout",
        "600",
        "--ct-udp-timeout",
        "20",
    ])
    .unwrap();
    let config = fx.conntrack().unwrap().config.expect("conntrack config");
    assert_eq!(config["max_entries_v4"], 4096, "{config}");
    assert_eq!(config["max_entries_v6"], 4096, "{config}");
    assert_eq!(config["tcp_timeout_s"], 600, "{config}");
    assert_eq!(config["udp_timeout_s"], 20, "{config}");

    let counters = |fx: &NodeFixture| -> (u64, u64) {
        let dump = fx.services().unwrap();
        let e = dump
            .iter()
            .find(|e| e["vip"] == VIP4 && e["port"] == 90 && e["protocol"] == "TCP")
            .unwrap_or_else(|| panic!("no {VIP4}:90 in {dump:#?}"));
        (
            e["packets"].as_u64().unwrap_or_else(|| panic!("{e}")),
            e["bytes"].as_u64().unwrap_or_else(|| panic!("{e}")),
        )
    };
    let (p0, b0) = counters(&fx);
    let mut hold = fx.client().hold(at(VIP4, 90)).unwrap();
    let backend = hold.greeting.backend().unwrap().to_owned();
    for i in 0..20 {
        assert_eq!(hold.ping(&format!("ping-{i}")).unwrap().alive, Some(true));
    }
    let be: usize = backend.trim_start_matches("be-").parse().unwrap();
    let be_addr = SocketAddr::new(pod_ip(be, false), ECHO_PORT).to_string();
    let ct = fx.conntrack().unwrap();
    let client_prefix = format!("{}:", client_ip(false));
    let ours: Vec<_> = ct
        .flows
        .iter()
        .filter(|f| f.client.starts_with(&client_prefix) && f.vip == format!("{VIP4}:90"))
        .collect();
    assert_eq!(ours.len(), 1, "one held flow to {VIP4}:90: {ct:#?}");
    assert_eq!(ours[0].backend, be_addr, "{ct:#?}");
    assert_eq!(ours[0].protocol, "TCP", "{ct:#?}");
    let (p1, b1) = counters(&fx);
    // The handshake and 20 request/reply exchanges: at least 40 packets of >= 40 bytes.
    assert!(p1 >= p0 + 40, "packets {p0} -> {p1}");
    assert!(b1 >= b0 + 40 * 40, "bytes {b0} -> {b1}");
    eprintln!("flow: {:?}\ncounters: {p0}/{b0} -> {p1}/{b1}", ours[0]);
}

/// With the agent and its programs in place, traffic from the client to a pod's own address
/// is not translated: the addressed pod answers, the peer is its address, the backend sees
/// the client, and conntrack records nothing about the client.
#[test]
fn traffic_to_pod_ips_is_untouched() {
    let env = require_env!();
    let fx = web(env);
    for v6 in [false, true] {
        let addr = SocketAddr::new(pod_ip(1, v6), HTTP_PORT);
        let replies = fx.client().http(addr, 10).unwrap();
        assert_all_from(&replies, "be-1", 10);
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()), "{r:?}");
            assert_eq!(r.seen_client(), Some(client_ip(v6).to_string().as_str()));
        }
        let addr = SocketAddr::new(pod_ip(2, v6), UDP_PORT);
        let replies = fx.client().udp_unconnected(addr, 5).unwrap();
        assert_all_from(&replies, "be-2", 5);
        assert!(
            replies.iter().all(|r| r.from == Some(addr.to_string())),
            "{replies:?}"
        );
    }
    let ct = fx.conntrack().unwrap();
    assert!(ct.flows.is_empty(), "non-VIP traffic in conntrack: {ct:#?}");
}

/// `--tc-iface cip*` also attaches to a matching interface that appears after the start: a
/// new pod's veth gets the program, and the new pod, added as the only backend of a service,
/// is reached through the VIP with replies from the VIP.
#[test]
fn glob_attaches_to_interfaces_that_appear_later() {
    let env = require_env!();
    let mut fx = web(env);
    let i = fx.topo.add_pod().unwrap();
    fx.standard_backend(i).unwrap();
    fx.wait_tc(
        &[pod_iface(i), CLIENT_IFACE.to_owned()],
        Duration::from_secs(10),
    )
    .unwrap();
    let svc = service("late", "10.96.0.40");
    fx.manifests
        .write(
            "late.yaml",
            &[
                svc.to_value(),
                svc.slice("a").ready([pod_ip(i, false)]).to_value(),
            ],
        )
        .unwrap();
    let addr = at("10.96.0.40", 80);
    let start = Instant::now();
    let replies = loop {
        let r = fx.client().run_mode("http", addr, 1, 1000).unwrap();
        if r[0].is_ok() {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{r:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(replies[0].backend(), Some(format!("be-{i}").as_str()));
    assert_eq!(replies[0].peer, Some(addr.to_string()));
}
