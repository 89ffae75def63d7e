//! `xdp_ingress` under BPF_PROG_TEST_RUN: the forward translation (IPv4/IPv6 × TCP/UDP, first
//! and later packets) with checksums computed in code, conntrack shared with `tc_ingress` (the
//! reply path stays at TC), the same Maglev choice as TC, and what XDP leaves to TC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clusterip_common::SVC_FLAG_DROP;
use clusterip_tests::packet::*;
use clusterip_tests::require_datapath;

fn addrs(v6: bool) -> (IpAddr, IpAddr, Vec<IpAddr>) {
    if v6 {
        let p = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        (
            p("fd00:96::20"),
            p("fd00:244::5"),
            vec![p("fd00:244:2::1"), p("fd00:244:2::2"), p("fd00:244:2::3")],
        )
    } else {
        let p = |s: &str| IpAddr::V4(s.parse::<Ipv4Addr>().unwrap());
        (
            p("10.96.0.20"),
            p("10.244.0.5"),
            vec![p("10.244.2.1"), p("10.244.2.2"), p("10.244.2.3")],
        )
    }
}

fn pkt(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, n: u32) -> Vec<u8> {
    if proto == PROTO_TCP {
        let t = if n == 0 { Tcp::syn() } else { Tcp::ack() };
        tcp(src, sport, dst, dport, t, &vec![b'a'; n as usize * 10])
    } else {
        udp(src, sport, dst, dport, &vec![b'b'; 5 + n as usize * 10])
    }
}

fn xdp_forward(v6: bool, proto: u8) {
    let mut dp = require_datapath!();
    let (vip, client, bes) = addrs(v6);
    let list: Vec<(IpAddr, u16)> = bes.iter().map(|b| (*b, 9090)).collect();
    dp.add_service(&Svc::new(vip, 443, proto, 5, &list));
    let first = pkt(proto, client, 45000, vip, 443, 0);
    let r = dp.xdp(&first);
    assert_eq!(r.ret, XDP_PASS);
    let p = parse(&r.out);
    assert!(bes.contains(&p.dst));
    assert_eq!((p.dport, p.src, p.sport), (9090, client, 45000));
    let backend = p.dst;
    for n in 1..4 {
        let r = dp.xdp(&pkt(proto, client, 45000, vip, 443, n));
        let p = parse(&r.out);
        assert_eq!((p.dst, p.dport), (backend, 9090), "later packet {n}");
    }
    // A later packet of the same flow at TC goes the same way (shared conntrack).
    let r = dp.tc(&pkt(proto, client, 45000, vip, 443, 5));
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(parse(&r.out).dst, backend);
    // XDP leaves the reply alone; TC translates it with the entry XDP wrote.
    let reply = pkt(proto, backend, 9090, client, 45000, 2);
    let r = dp.xdp(&reply);
    assert_eq!(
        (r.ret, &r.out),
        (XDP_PASS, &reply),
        "reply untouched at XDP"
    );
    let r = dp.tc(&reply);
    let p = parse(&r.out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (vip, 443, client, 45000));
    // Without conntrack TC and XDP make the same (Maglev) choice for every flow.
    dp.clear_ct();
    for port in 30000..30100 {
        let x = parse(&dp.xdp(&pkt(proto, client, port, vip, 443, 0)).out).dst;
        dp.clear_ct();
        let t = parse(&dp.tc(&pkt(proto, client, port, vip, 443, 0)).out).dst;
        assert_eq!(x, t, "flow from port {port}: XDP and TC agree");
    }
    assert!(dp.stats(5).packets >= 6);
}

#[test]
fn ipv4_tcp_forward() {
    xdp_forward(false, PROTO_TCP);
}
#[test]
fn ipv4_udp_forward() {
    xdp_forward(false, PROTO_UDP);
}
#[test]
fn ipv6_tcp_forward() {
    xdp_forward(true, PROTO_TCP);
}
#[test]
fn ipv6_udp_forward() {
    xdp_forward(true, PROTO_UDP);
}

#[test]
fn hairpin_at_xdp() {
    let mut dp = require_datapath!();
    for v6 in [false, true] {
        let (vip, client, _) = addrs(v6);
        dp.add_service(&Svc::new(
            vip,
            80,
            PROTO_TCP,
            if v6 { 8 } else { 7 },
            &[(client, 8080)],
        ));
        let r = dp.xdp(&tcp(client, 40001, vip, 80, Tcp::syn(), b""));
        let p = parse(&r.out);
        assert_eq!((p.src, p.sport, p.dst, p.dport), (vip, 40001, client, 8080));
    }
}

#[test]
fn ipv4_udp_zero_checksum_at_xdp() {
    let mut dp = require_datapath!();
    let (vip, client, bes) = addrs(false);
    dp.add_service(&Svc::new(vip, 53, PROTO_UDP, 6, &[(bes[0], 5353)]));
    let mut p0 = udp(client, 1000, vip, 53, b"q");
    p0[40] = 0;
    p0[41] = 0;
    let r = dp.xdp(&p0);
    let p = parse(&r.out);
    assert_eq!((p.dst, p.dport), (bes[0], 5353));
    assert_eq!(&r.out[40..42], &[0, 0]);
}

#[test]
fn no_endpoints_left_to_tc_and_drop_flag_drops() {
    let mut dp = require_datapath!();
    for v6 in [false, true] {
        let (vip, client, _) = addrs(v6);
        dp.add_service(&Svc::new(vip, 80, PROTO_TCP, 1, &[]));
        let syn = tcp(client, 1, vip, 80, Tcp::syn(), b"");
        let r = dp.xdp(&syn);
        assert_eq!(
            (r.ret, &r.out),
            (XDP_PASS, &syn),
            "passed on for TC to answer"
        );
        assert_eq!(dp.tc(&syn).ret, TC_ACT_REDIRECT, "TC answers it");
        let undefined = tcp(client, 1, vip, 81, Tcp::syn(), b"");
        let r = dp.xdp(&undefined);
        assert_eq!((r.ret, &r.out), (XDP_PASS, &undefined));
        let mut svc = Svc::new(vip, 53, PROTO_UDP, 2, &[]);
        svc.flags = SVC_FLAG_DROP;
        dp.add_service(&svc);
        assert_eq!(dp.xdp(&udp(client, 1, vip, 53, b"q")).ret, XDP_DROP);
    }
}

#[test]
fn icmp_errors_left_to_tc() {
    let mut dp = require_datapath!();
    let (vip, client, bes) = addrs(false);
    dp.add_service(&Svc::new(vip, 53, PROTO_UDP, 3, &[(bes[0], 5353)]));
    let fwd = dp.xdp(&udp(client, 1000, vip, 53, b"q"));
    let err = icmp_error(bes[0], client, 3, 3, [0; 4], &fwd.out[14..14 + 28]);
    let r = dp.xdp(&err);
    assert_eq!((r.ret, &r.out), (XDP_PASS, &err));
    let r = dp.tc(&err);
    assert_eq!(r.ret, TC_ACT_OK);
    assert_eq!(parse(&r.out).src, vip);
}

#[test]
fn verifier_accepts_both_programs() {
    let dp = require_datapath!();
    for name in ["tc_ingress", "xdp_ingress"] {
        let info = dp.ebpf.program(name).unwrap().info().unwrap();
        let verified = info.verified_instruction_count().unwrap_or(0);
        let size = info.size_translated().unwrap_or(0) / 8;
        println!("{name}: {size} instructions, {verified} verified");
        assert!(size > 0);
    }
}
