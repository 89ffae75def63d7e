//! `tc_nodeport` / `tc_nodeport_egress` under BPF_PROG_TEST_RUN: traffic from outside the node
//! to node ports, load-balancer and external IPs. Every case in IPv4 and IPv6; every rewritten
//! packet parsed again with all its checksums recomputed.
//!
//! The runs happen inside a network namespace of the test's own with an "external" dummy
//! interface, addresses, a route to the other node's pods and static neighbours, so the
//! programs' FIB lookups are deterministic: a source-NATed packet must come back redirected
//! (TC_ACT_REDIRECT) with the next hop's MAC addresses written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clusterip_common::{
    BE_FLAG_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_FLAG_NODEPORT, CT_FLAG_SNAT, SCOPE_EXTERNAL,
    SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_NODE_ADDR, SVC_FLAG_OPEN,
    SVC_FLAG_SOURCE_RANGE, SVC_FLAG_WILDCARD, ServiceValue, is_snat_port,
};
use clusterip_tests::netns::Netns;
use clusterip_tests::packet::*;
use clusterip_tests::require_datapath;

/// This node's MAC on the external interface, the other node's and the client's.
const NODE_MAC: &str = "02:00:00:00:01:01";
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const CLIENT_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x64];

struct Fam {
    /// This node's external address.
    node: IpAddr,
    /// The other node (next hop to its pods).
    peer: IpAddr,
    /// A client outside the cluster, on the nodes' network.
    client: IpAddr,
    /// A pod on this node and one on the other node.
    local_pod: IpAddr,
    remote_pod: IpAddr,
    /// A load-balancer IP routed to this node.
    lb: IpAddr,
    /// The cluster IP of the same service.
    cluster_ip: IpAddr,
}

fn fam(v6: bool) -> Fam {
    let a = |s4: &str, s6: &str| -> IpAddr {
        if v6 {
            IpAddr::V6(s6.parse::<Ipv6Addr>().unwrap())
        } else {
            IpAddr::V4(s4.parse::<Ipv4Addr>().unwrap())
        }
    };
    Fam {
        node: a("10.100.0.1", "fd00:100::1"),
        peer: a("10.100.0.2", "fd00:100::2"),
        client: a("10.100.0.100", "fd00:100::64"),
        local_pod: a("10.201.1.5", "fd00:201:1::5"),
        remote_pod: a("10.201.2.5", "fd00:201:2::5"),
        lb: a("192.0.2.10", "2001:db8::10"),
        cluster_ip: a("10.96.0.10", "fd00:96::10"),
    }
}

/// The test's network namespace: `ext0` (a veth whose peer stays in the namespace) with both
/// node addresses, forwarding on,
/// routes to the other node's pods via the peer, and permanent neighbour entries for the peer
/// and the client. Returns it and `ext0`'s ifindex.
fn node_netns() -> (Netns, u32) {
    let ns = Netns::new("cipnp").expect("netns");
    for args in [
        &[
            "link", "add", "ext0", "address", NODE_MAC, "type", "veth", "peer", "name", "wire",
        ][..],
        &["link", "set", "lo", "up"],
        &["link", "set", "wire", "up"],
        &["link", "set", "ext0", "up"],
        &["addr", "add", "10.100.0.1/24", "dev", "ext0"],
        &["addr", "add", "fd00:100::1/64", "dev", "ext0", "nodad"],
        &[
            "route",
            "add",
            "10.201.2.0/24",
            "via",
            "10.100.0.2",
            "dev",
            "ext0",
        ],
        &[
            "route",
            "add",
            "fd00:201:2::/64",
            "via",
            "fd00:100::2",
            "dev",
            "ext0",
        ],
    ] {
        ns.ip(args).expect("ip");
    }
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for (addr, m) in [
        ("10.100.0.2", PEER_MAC),
        ("fd00:100::2", PEER_MAC),
        ("10.100.0.100", CLIENT_NEIGH_MAC),
        ("fd00:100::64", CLIENT_NEIGH_MAC),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac(m),
            "dev",
            "ext0",
            "nud",
            "permanent",
        ])
        .expect("neigh");
    }
    for key in [
        "net.ipv4.conf.all.forwarding",
        "net.ipv4.conf.ext0.forwarding",
        "net.ipv6.conf.all.forwarding",
    ] {
        clusterip_tests::node::sysctl(&ns, key, "1").expect("sysctl");
    }
    // `ip -o link show`: "<ifindex>: ext0@wire: ..." (nsenter keeps the host's /sys).
    let line = clusterip_tests::node::output_in(&ns, "ip", &["-o", "link", "show", "ext0"])
        .expect("ip link show");
    let idx = line.split(':').next().unwrap_or_default().trim();
    (ns, idx.parse().expect("an ifindex"))
}

/// Runs `f` on a thread inside `ns` (test runs use the calling thread's namespace).
fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this (fresh) thread only, with a namespace fd we hold.
            let rc = unsafe { libc::setns(ns.file().as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the test thread panicked")
    })
}

const NODE_PORT: u16 = 30080;
const BE_PORT: u16 = 8080;

/// A node-port frontend on this node's address with the given backends (and their flags).
fn node_port(f: &Fam, svc_id: u32, backends: &[(IpAddr, u8)]) -> Svc {
    let mut s = Svc::new(
        f.node,
        NODE_PORT,
        PROTO_TCP,
        svc_id,
        &backends
            .iter()
            .map(|(a, _)| (*a, BE_PORT))
            .collect::<Vec<_>>(),
    );
    s.backend_flags = backends.iter().map(|(_, fl)| *fl).collect();
    s.flags = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_ADDR;
    s
}

/// The node's address is a VIP only through its open wildcard: the node's own ports pass.
fn open_wildcard(dp: &mut Datapath, addr: IpAddr) {
    let w = ServiceValue {
        flags: SVC_FLAG_WILDCARD | SVC_FLAG_OPEN,
        ..Default::default()
    };
    dp.set_wildcard(addr, &w);
}

fn each_family(test: impl Fn(bool)) {
    test(false);
    test(true);
}

/// Node port to a backend on the other node: DNAT to the backend, SNAT to this node's address
/// and a port of the SNAT range, redirected to the peer's MAC; the reply from the backend
/// comes back to the node, is translated back to the client and redirected to it; later
/// packets keep the flow's port.
#[test]
fn remote_backend_is_source_natted_and_routed() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        dp.add_service(&node_port(&f, 7, &[(f.remote_pod, 0)]));
        open_wildcard(&mut dp, f.node);

        let syn = tcp(f.client, 40000, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_REDIRECT, "v6={v6}");
        let p = parse(&out.out);
        assert_eq!((p.dst, p.dport), (f.remote_pod, BE_PORT), "v6={v6}");
        assert_eq!(p.src, f.node, "source NATed to the node's address");
        assert!(
            is_snat_port(p.sport),
            "port {} outside the SNAT range",
            p.sport
        );
        assert_eq!(p.dst_mac, PEER_MAC, "next hop: the other node");
        let nport = p.sport;

        // The backend answers the node's address and port.
        let reply = tcp(
            f.remote_pod,
            BE_PORT,
            f.node,
            nport,
            Tcp::ack(),
            b"hello from the backend",
        );
        let out = inside(&ns, || dp.run_on("tc_nodeport", &reply, ext));
        assert_eq!(out.ret, TC_ACT_REDIRECT, "v6={v6}");
        let r = parse(&out.out);
        assert_eq!((r.src, r.sport), (f.node, NODE_PORT), "v6={v6}");
        assert_eq!((r.dst, r.dport), (f.client, 40000), "v6={v6}");
        assert_eq!(r.dst_mac, CLIENT_NEIGH_MAC);

        let again = tcp(f.client, 40000, f.node, NODE_PORT, Tcp::ack(), b"more");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &again, ext));
        let p = parse(&out.out);
        assert_eq!((p.src, p.sport, p.dst), (f.node, nport, f.remote_pod));
        drop(ns);
    });
}

/// Node port to a backend on this node: DNAT only (the backend sees the client), passed on
/// for the stack to forward; the backend's reply is translated at the interface's egress, and
/// the pod-side program leaves it alone.
#[test]
fn local_backend_keeps_the_client_address() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        dp.add_service(&node_port(&f, 8, &[(f.local_pod, BE_FLAG_LOCAL)]));
        open_wildcard(&mut dp, f.node);

        let syn = tcp(f.client, 40001, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_OK, "v6={v6}");
        let p = parse(&out.out);
        assert_eq!((p.src, p.sport), (f.client, 40001), "client address kept");
        assert_eq!((p.dst, p.dport), (f.local_pod, BE_PORT));

        let reply = tcp(f.local_pod, BE_PORT, f.client, 40001, Tcp::ack(), b"hi");
        let pod_side = dp.tc(&reply);
        assert_eq!(
            pod_side.ret, TC_ACT_UNSPEC,
            "the pod side must not translate it"
        );
        assert_eq!(pod_side.out, reply);
        // Nor the ingress of an external interface, should the backend sit behind one:
        // translated there, its source would be the node's own address, which the stack
        // drops on input. The egress translates it once the stack has routed it.
        let ext_side = inside(&ns, || dp.run_on("tc_nodeport", &reply, ext));
        assert_eq!(ext_side.ret, TC_ACT_UNSPEC, "v6={v6}");
        assert_eq!(ext_side.out, reply);
        let out = inside(&ns, || dp.run_on("tc_nodeport_egress", &reply, ext));
        assert_eq!(out.ret, TC_ACT_OK);
        let r = parse(&out.out);
        assert_eq!((r.src, r.sport), (f.node, NODE_PORT), "v6={v6}");
        assert_eq!((r.dst, r.dport), (f.client, 40001));

        let ct = if v6 { None } else { Some(dp.ct4()) };
        if let Some(ct) = ct {
            assert!(
                ct.values().all(|e| e.flags & CT_FLAG_NODEPORT != 0),
                "entries made from outside carry CT_FLAG_NODEPORT: {ct:?}"
            );
            assert!(ct.values().all(|e| e.flags & CT_FLAG_SNAT == 0));
            let dirs: Vec<u8> = ct.keys().map(|k| k.5).collect();
            assert!(dirs.contains(&CT_DIR_FORWARD) && dirs.contains(&CT_DIR_REPLY));
        }
        drop(ns);
    });
}

/// `externalTrafficPolicy: Local`: from outside only the scope-1 backends (this node's) are
/// used, whatever the scope-0 set holds; with none the packet is dropped.
#[test]
fn external_local_uses_the_nodes_own_endpoints_or_drops() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        let mut all = node_port(&f, 9, &[(f.remote_pod, 0), (f.local_pod, BE_FLAG_LOCAL)]);
        all.flags |= SVC_FLAG_EXT_LOCAL;
        dp.add_service(&all);
        let mut local = node_port(&f, 10, &[(f.local_pod, BE_FLAG_LOCAL)]);
        local.scope = SCOPE_EXTERNAL;
        dp.add_service(&local);
        open_wildcard(&mut dp, f.node);
        for sport in 41000..41040 {
            let syn = tcp(f.client, sport, f.node, NODE_PORT, Tcp::syn(), b"");
            let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
            assert_eq!(out.ret, TC_ACT_OK);
            let p = parse(&out.out);
            assert_eq!(p.dst, f.local_pod, "v6={v6}: only the local endpoint");
            assert_eq!(p.src, f.client, "client address kept");
        }
        // No local endpoint left: dropped, not rejected.
        let mut none = node_port(&f, 10, &[]);
        none.scope = SCOPE_EXTERNAL;
        dp.add_service(&none);
        dp.clear_ct();
        let syn = tcp(f.client, 42000, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_SHOT, "v6={v6}");
        drop(ns);
    });
}

/// A load-balancer IP with `loadBalancerSourceRanges`: a client in a range is served, one
/// outside is dropped; remote backends are source-NATed to the node address of `CIP_CONFIG`.
#[test]
fn source_ranges_and_lb_ips() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        let mut lb = Svc::new(f.lb, 80, PROTO_TCP, 11, &[(f.remote_pod, BE_PORT)]);
        lb.flags = SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGE;
        dp.add_service(&lb);
        open_wildcard(&mut dp, f.lb);
        let (client_net, prefix) = if v6 {
            ("fd00:100::".parse::<IpAddr>().unwrap(), 64)
        } else {
            ("10.100.0.0".parse::<IpAddr>().unwrap(), 24)
        };
        dp.add_source_range(11, client_net, prefix);
        match f.node {
            IpAddr::V4(a) => dp.set_snat(Some(a), None),
            IpAddr::V6(a) => dp.set_snat(None, Some(a)),
        }
        let syn = tcp(f.client, 43000, f.lb, 80, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_REDIRECT, "v6={v6}");
        let p = parse(&out.out);
        assert_eq!((p.src, p.dst), (f.node, f.remote_pod));

        let stranger: IpAddr = if v6 {
            "2001:db8:99::1".parse().unwrap()
        } else {
            "198.51.100.1".parse().unwrap()
        };
        let syn = tcp(stranger, 43001, f.lb, 80, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_SHOT, "v6={v6}: not in the source ranges");
        drop(ns);
    });
}

/// From outside: the node's own ports, and a cluster IP, pass untouched.
#[test]
fn the_nodes_own_ports_and_cluster_ips_pass() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        dp.add_service(&node_port(&f, 12, &[(f.remote_pod, 0)]));
        open_wildcard(&mut dp, f.node);
        let cip = Svc::new(f.cluster_ip, 80, PROTO_TCP, 13, &[(f.remote_pod, BE_PORT)]);
        dp.add_service(&cip);
        for (dst, port) in [(f.node, 22), (f.node, 30081), (f.cluster_ip, 80)] {
            let syn = tcp(f.client, 44000, dst, port, Tcp::syn(), b"");
            let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
            assert_eq!(out.ret, TC_ACT_UNSPEC, "{dst}:{port} v6={v6}");
            assert_eq!(out.out, syn, "{dst}:{port} must pass byte-identical");
        }
        drop(ns);
    });
}

/// Many flows to one remote backend get distinct source ports, all in the SNAT range.
#[test]
fn snat_ports_are_unique_per_backend() {
    let mut dp = require_datapath!();
    let f = fam(false);
    let (ns, ext) = node_netns();
    dp.add_service(&node_port(&f, 14, &[(f.remote_pod, 0)]));
    open_wildcard(&mut dp, f.node);
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..300u16 {
        let client = IpAddr::V4(Ipv4Addr::new(10, 100, 0, 100 + (i % 3) as u8));
        let syn = tcp(client, 45000 + i / 3, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_REDIRECT, "flow {i}");
        let p = parse(&out.out);
        assert!(is_snat_port(p.sport));
        assert!(
            ports.insert(p.sport),
            "port {} given twice (flow {i})",
            p.sport
        );
    }
    drop(ns);
}

/// An ICMP error about a source-NATed flow (fragmentation needed, from a router between the
/// nodes, addressed to this node) goes back to the client, quoting the packet as the client
/// sent it.
#[test]
fn icmp_errors_about_snat_flows_reach_the_client() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        dp.add_service(&node_port(&f, 15, &[(f.remote_pod, 0)]));
        open_wildcard(&mut dp, f.node);
        let syn = tcp(f.client, 46000, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        let fwd = parse(&out.out);
        let nport = fwd.sport;
        // What the router quotes: the packet as it left this node (IP header on).
        let quoted = &out.out[14..];
        let router = f.peer;
        let (ty, code) = if v6 { (2, 0) } else { (3, 4) };
        let err = icmp_error(router, f.node, ty, code, [0, 0, 5, 0x78], quoted);
        let out = inside(&ns, || dp.run_on("tc_nodeport", &err, ext));
        assert_eq!(out.ret, TC_ACT_REDIRECT, "v6={v6}");
        let e = parse(&out.out);
        assert_eq!(e.dst, f.client, "v6={v6}");
        assert_eq!(e.src, router, "the router's own address stays");
        let (qs, qsport, qd, qdport) = quoted_tuple(&e);
        assert_eq!(
            (qs, qsport),
            (f.client, 46000),
            "quoted source back to the client"
        );
        assert_eq!(
            (qd, qdport),
            (f.node, NODE_PORT),
            "quoted destination: the node port"
        );
        assert_ne!(nport, 46000);
        drop(ns);
    });
}

/// A node port without endpoints answers with a RST from outside too; one with
/// `externalTrafficPolicy: Local` and no local endpoint drops (kube-proxy's choice).
#[test]
fn no_endpoints_rejects_from_outside() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        dp.add_service(&node_port(&f, 16, &[]));
        open_wildcard(&mut dp, f.node);
        let syn = tcp(f.client, 47000, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_REDIRECT, "v6={v6}: the RST goes back out");
        let r = parse(&out.out);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (f.node, NODE_PORT, f.client, 47000)
        );
        assert_ne!(r.tcp_flags() & 0x04, 0, "a RST");
        drop(ns);
    });
}

/// `xdp_nodeport`: a new flow to a backend on the other node is translated at XDP as
/// `tc_nodeport` would translate it and sent back out of `ext0` (XDP_TX) to the peer's MAC;
/// its later packets keep the flow's port at XDP and at TC alike. What XDP leaves to TC
/// passes byte-identical: the backend's reply, a flow to a local backend (which TC then
/// translates as the flow XDP recorded), the node's own ports, and a flow whose next hop has
/// no neighbour entry yet (TC resolves it with `bpf_redirect_neigh`).
#[test]
fn xdp_forwards_remote_flows_and_leaves_the_rest_to_tc() {
    each_family(|v6| {
        let mut dp = require_datapath!();
        let f = fam(v6);
        let (ns, ext) = node_netns();
        dp.add_service(&node_port(&f, 17, &[(f.remote_pod, 0)]));
        open_wildcard(&mut dp, f.node);

        let syn = tcp(f.client, 48000, f.node, NODE_PORT, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("xdp_nodeport", &syn, ext));
        assert_eq!(out.ret, XDP_TX, "v6={v6}");
        let p = parse(&out.out);
        assert_eq!((p.dst, p.dport), (f.remote_pod, BE_PORT), "v6={v6}");
        assert_eq!(p.src, f.node, "source NATed to the node's address");
        assert!(is_snat_port(p.sport));
        assert_eq!(p.dst_mac, PEER_MAC, "next hop: the other node");
        assert_eq!(
            p.src_mac,
            [0x02, 0, 0, 0, 0x01, 0x01],
            "from ext0's own MAC"
        );
        let nport = p.sport;

        let again = tcp(f.client, 48000, f.node, NODE_PORT, Tcp::ack(), b"more");
        let x = inside(&ns, || dp.run_on("xdp_nodeport", &again, ext));
        assert_eq!(x.ret, XDP_TX);
        let t = inside(&ns, || dp.run_on("tc_nodeport", &again, ext));
        assert_eq!(t.ret, TC_ACT_REDIRECT);
        assert_eq!(x.out, t.out, "XDP and TC translate a kept flow the same");
        assert_eq!(parse(&t.out).sport, nport);

        let reply = tcp(f.remote_pod, BE_PORT, f.node, nport, Tcp::ack(), b"hi");
        let out = inside(&ns, || dp.run_on("xdp_nodeport", &reply, ext));
        assert_eq!((out.ret, &out.out), (XDP_PASS, &reply), "replies are TC's");

        let own = tcp(f.client, 48001, f.node, 22, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("xdp_nodeport", &own, ext));
        assert_eq!((out.ret, &out.out), (XDP_PASS, &own), "the node's own port");

        // A local backend: passed untranslated, then TC applies the flow XDP recorded.
        let mut local = node_port(&f, 18, &[(f.local_pod, BE_FLAG_LOCAL)]);
        local.port = NODE_PORT + 1;
        dp.add_service(&local);
        let syn = tcp(f.client, 48002, f.node, NODE_PORT + 1, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("xdp_nodeport", &syn, ext));
        assert_eq!(
            (out.ret, &out.out),
            (XDP_PASS, &syn),
            "v6={v6}: local backend"
        );
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(out.ret, TC_ACT_OK);
        let p = parse(&out.out);
        assert_eq!((p.src, p.dst), (f.client, f.local_pod));

        // A backend behind a next hop without a neighbour entry.
        let (net, via, far_pod): (&str, &str, IpAddr) = if v6 {
            (
                "fd00:201:3::/64",
                "fd00:100::3",
                "fd00:201:3::5".parse().unwrap(),
            )
        } else {
            ("10.201.3.0/24", "10.100.0.3", "10.201.3.5".parse().unwrap())
        };
        ns.ip(&["route", "add", net, "via", via, "dev", "ext0"])
            .expect("route");
        let mut far = node_port(&f, 19, &[(far_pod, 0)]);
        far.port = NODE_PORT + 2;
        dp.add_service(&far);
        let syn = tcp(f.client, 48003, f.node, NODE_PORT + 2, Tcp::syn(), b"");
        let out = inside(&ns, || dp.run_on("xdp_nodeport", &syn, ext));
        assert_eq!(
            (out.ret, &out.out),
            (XDP_PASS, &syn),
            "v6={v6}: no neighbour"
        );
        let out = inside(&ns, || dp.run_on("tc_nodeport", &syn, ext));
        assert_eq!(
            out.ret, TC_ACT_REDIRECT,
            "v6={v6}: TC resolves the neighbour"
        );
        let p = parse(&out.out);
        assert_eq!((p.src, p.dst), (f.node, far_pod));
        drop(ns);
    });
}
