//! `tc_ingress` under BPF_PROG_TEST_RUN: forward translation (IPv4/IPv6 × TCP/UDP, first and
//! later packets), replies, hairpin, ICMP errors, no-endpoint answers, conntrack behaviour,
//! Maglev consistency, and packets that must pass byte-identical. Every rewritten packet is
//! parsed again and all its checksums recomputed (see `clusterip_tests::packet::parse`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clusterip_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, SVC_FLAG_AFFINITY, SVC_FLAG_DROP, ip4_to_net,
};
use clusterip_tests::packet::*;
use clusterip_tests::require_datapath;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

struct Fam {
    vip: IpAddr,
    client: IpAddr,
    backends: Vec<IpAddr>,
    other: IpAddr,
}

fn fam4() -> Fam {
    Fam {
        vip: v4("10.96.0.10"),
        client: v4("10.244.0.5"),
        backends: vec![v4("10.244.1.1"), v4("10.244.1.2"), v4("10.244.1.3")],
        other: v4("10.244.7.7"),
    }
}

fn fam6() -> Fam {
    Fam {
        vip: v6("fd00:96::10"),
        client: v6("fd00:244::5"),
        backends: vec![
            v6("fd00:244:1::1"),
            v6("fd00:244:1::2"),
            v6("fd00:244:1::3"),
        ],
        other: v6("fd00:244:7::7"),
    }
}

/// A service on `f.vip:svc_port/proto` with `f.backends` on `be_port`.
fn service(f: &Fam, svc_port: u16, proto: u8, svc_id: u32, be_port: u16) -> Svc {
    let bes: Vec<(IpAddr, u16)> = f.backends.iter().map(|a| (*a, be_port)).collect();
    Svc::new(f.vip, svc_port, proto, svc_id, &bes)
}

fn first(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    if proto == PROTO_TCP {
        tcp(src, sport, dst, dport, Tcp::syn(), b"")
    } else {
        udp(src, sport, dst, dport, b"first datagram")
    }
}

fn later(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    if proto == PROTO_TCP {
        tcp(
            src,
            sport,
            dst,
            dport,
            Tcp::ack(),
            b"GET / HTTP/1.1\r\n\r\n",
        )
    } else {
        udp(src, sport, dst, dport, b"second datagram, longer")
    }
}

/// Forward + later packet + reply for one family and protocol.
fn forward_later_reply(f: Fam, proto: u8) {
    let mut dp = require_datapath!();
    let svc = service(&f, 80, proto, 7, 8080);
    dp.add_service(&svc);

    let pkt = first(proto, f.client, 40000, f.vip, 80);
    let r = dp.tc(&pkt);
    assert_eq!(r.ret, TC_ACT_OK, "first packet translated");
    let p = parse(&r.out);
    assert!(f.backends.contains(&p.dst), "dst {} is a backend", p.dst);
    assert_eq!(p.dport, 8080);
    assert_eq!((p.src, p.sport), (f.client, 40000), "source untouched");
    assert_eq!(r.out.len(), pkt.len());
    let backend = p.dst;

    for i in 0..5 {
        let pkt = later(proto, f.client, 40000, f.vip, 80);
        let r = dp.tc(&pkt);
        assert_eq!(r.ret, TC_ACT_OK);
        let p = parse(&r.out);
        assert_eq!(
            (p.dst, p.dport),
            (backend, 8080),
            "later packet {i}: same backend"
        );
        assert_eq!(
            &r.out[p.l4 + if proto == PROTO_TCP { 20 } else { 8 }..],
            &pkt[p.l4 + if proto == PROTO_TCP { 20 } else { 8 }..],
            "payload untouched"
        );
    }

    if f.vip.is_ipv4() {
        let ct = dp.ct4();
        let IpAddr::V4(c) = f.client else {
            unreachable!()
        };
        let IpAddr::V4(v) = f.vip else { unreachable!() };
        let IpAddr::V4(b) = backend else {
            unreachable!()
        };
        let fwd = ct
            .get(&(
                ip4_to_net(c),
                ip4_to_net(v),
                40000u16.to_be(),
                80u16.to_be(),
                proto,
                CT_DIR_FORWARD,
            ))
            .expect("forward CT entry");
        assert_eq!(fwd.addr, ip4_to_net(b));
        assert_eq!(fwd.port, 8080u16.to_be());
        let rev = ct
            .get(&(
                ip4_to_net(b),
                ip4_to_net(c),
                8080u16.to_be(),
                40000u16.to_be(),
                proto,
                CT_DIR_REPLY,
            ))
            .expect("reply CT entry");
        assert_eq!((rev.addr, rev.port), (ip4_to_net(v), 80u16.to_be()));
    }

    // The backend answers; the client must see VIP:80.
    let reply = if proto == PROTO_TCP {
        tcp(
            backend,
            8080,
            f.client,
            40000,
            Tcp {
                syn: true,
                ack: Some(1001),
                seq: 77,
                ..Default::default()
            },
            b"",
        )
    } else {
        udp(backend, 8080, f.client, 40000, b"answer")
    };
    let r = dp.tc(&reply);
    assert_eq!(r.ret, TC_ACT_OK, "reply translated");
    let p = parse(&r.out);
    assert_eq!((p.src, p.sport), (f.vip, 80), "reply source is VIP:port");
    assert_eq!(
        (p.dst, p.dport),
        (f.client, 40000),
        "reply destination untouched"
    );

    let st = dp.stats(7);
    assert_eq!(st.packets, 7, "1 first + 5 later + 1 reply counted");
    assert!(st.bytes > 7 * 54);
}

#[test]
fn ipv4_tcp_forward_later_reply() {
    forward_later_reply(fam4(), PROTO_TCP);
}
#[test]
fn ipv4_udp_forward_later_reply() {
    forward_later_reply(fam4(), PROTO_UDP);
}
#[test]
fn ipv6_tcp_forward_later_reply() {
    forward_later_reply(fam6(), PROTO_TCP);
}
#[test]
fn ipv6_udp_forward_later_reply() {
    forward_later_reply(fam6(), PROTO_UDP);
}

#[test]
fn ipv4_udp_without_checksum_stays_without() {
    let mut dp = require_datapath!();
    let f = fam4();
    dp.add_service(&service(&f, 53, PROTO_UDP, 3, 5353));
    let mut pkt = udp(f.client, 40000, f.vip, 53, b"no checksum");
    pkt[40] = 0;
    pkt[41] = 0;
    let r = dp.tc(&pkt);
    assert_eq!(r.ret, TC_ACT_OK);
    let p = parse(&r.out);
    assert_eq!(p.dport, 5353);
    assert_eq!(&r.out[40..42], &[0, 0], "UDP checksum 0 stays 0");
}

fn hairpin(f: Fam, proto: u8) {
    let mut dp = require_datapath!();
    // The client is the service's only backend.
    let svc = Svc::new(f.vip, 80, proto, 9, &[(f.client, 8080)]);
    dp.add_service(&svc);
    let r = dp.tc(&first(proto, f.client, 40001, f.vip, 80));
    assert_eq!(r.ret, TC_ACT_OK);
    let p = parse(&r.out);
    assert_eq!(
        (p.dst, p.dport),
        (f.client, 8080),
        "to the backend (itself)"
    );
    assert_eq!(
        (p.src, p.sport),
        (f.vip, 40001),
        "source masqueraded to the VIP"
    );

    // The backend answers the VIP; the client sees VIP:80 -> itself.
    let reply = if proto == PROTO_TCP {
        tcp(
            f.client,
            8080,
            f.vip,
            40001,
            Tcp {
                syn: true,
                ack: Some(1001),
                seq: 9,
                ..Default::default()
            },
            b"",
        )
    } else {
        udp(f.client, 8080, f.vip, 40001, b"answer")
    };
    let r = dp.tc(&reply);
    assert_eq!(r.ret, TC_ACT_OK);
    let p = parse(&r.out);
    assert_eq!((p.src, p.sport), (f.vip, 80));
    assert_eq!((p.dst, p.dport), (f.client, 40001));

    // Later client packet: same double rewrite from conntrack.
    let r = dp.tc(&later(proto, f.client, 40001, f.vip, 80));
    let p = parse(&r.out);
    assert_eq!((p.src, p.dst, p.dport), (f.vip, f.client, 8080));
}

#[test]
fn ipv4_tcp_hairpin() {
    hairpin(fam4(), PROTO_TCP);
}
#[test]
fn ipv4_udp_hairpin() {
    hairpin(fam4(), PROTO_UDP);
}
#[test]
fn ipv6_tcp_hairpin() {
    hairpin(fam6(), PROTO_TCP);
}
#[test]
fn ipv6_udp_hairpin() {
    hairpin(fam6(), PROTO_UDP);
}

/// The packet as the backend received it, without its Ethernet header (what an ICMP error
/// quotes), cut to IP header + 8 bytes or left whole.
fn quote(pkt_out: &[u8], short: bool) -> Vec<u8> {
    let ip = &pkt_out[14..];
    let hdr = if pkt_out[12] == 0x08 { 20 } else { 40 };
    if short {
        ip[..hdr + 8].to_vec()
    } else {
        ip.to_vec()
    }
}

fn icmp_error_case(f: Fam, proto: u8, ty: u8, code: u8, rest: [u8; 4], from_backend: bool) {
    let mut dp = require_datapath!();
    dp.add_service(&service(&f, 80, proto, 11, 8080));
    let fwd = dp.tc(&later(proto, f.client, 40002, f.vip, 80));
    assert_eq!(fwd.ret, TC_ACT_OK);
    let seen = parse(&fwd.out);
    let backend = seen.dst;
    let src = if from_backend { backend } else { f.other };
    for short in [true, false] {
        let err = icmp_error(src, f.client, ty, code, rest, &quote(&fwd.out, short));
        let r = dp.tc(&err);
        assert_eq!(r.ret, TC_ACT_OK, "ICMP error translated");
        let p = parse(&r.out); // checks the ICMP checksum and the quoted IPv4 header checksum
        assert_eq!(p.sport, u16::from(ty));
        assert_eq!(p.dport, u16::from(code));
        assert_eq!(p.dst, f.client);
        let want_src = if from_backend { f.vip } else { f.other };
        assert_eq!(p.src, want_src, "outer source");
        assert_eq!(
            quoted_tuple(&p),
            (f.client, 40002, f.vip, 80),
            "quoted packet is the client's, to VIP:port"
        );
        assert_eq!(
            &r.out[p.l4 + 4..p.l4 + 8],
            &rest,
            "ICMP bytes 5..8 (MTU) kept"
        );
    }
}

#[test]
fn ipv4_udp_port_unreachable_from_backend() {
    icmp_error_case(fam4(), PROTO_UDP, 3, 3, [0; 4], true);
}
#[test]
fn ipv4_tcp_frag_needed_from_router() {
    icmp_error_case(fam4(), PROTO_TCP, 3, 4, [0, 0, 0x05, 0x78], false);
}
#[test]
fn ipv4_tcp_frag_needed_from_backend() {
    icmp_error_case(fam4(), PROTO_TCP, 3, 4, [0, 0, 0x05, 0x78], true);
}
#[test]
fn ipv6_udp_port_unreachable_from_backend() {
    icmp_error_case(fam6(), PROTO_UDP, 1, 4, [0; 4], true);
}
#[test]
fn ipv6_tcp_packet_too_big_from_router() {
    icmp_error_case(fam6(), PROTO_TCP, 2, 0, 1280u32.to_be_bytes(), false);
}
#[test]
fn ipv6_tcp_packet_too_big_from_backend() {
    icmp_error_case(fam6(), PROTO_TCP, 2, 0, 1280u32.to_be_bytes(), true);
}

#[test]
fn icmp_error_about_unknown_flow_passes() {
    let mut dp = require_datapath!();
    let f = fam4();
    dp.add_service(&service(&f, 80, PROTO_UDP, 12, 8080));
    let inner = udp(f.client, 40003, f.backends[0], 8080, b"x");
    let err = icmp_error(f.backends[0], f.client, 3, 3, [0; 4], &quote(&inner, true));
    let r = dp.tc(&err);
    assert_eq!(r.ret, TC_ACT_UNSPEC);
    assert_eq!(r.out, err);
}

fn no_endpoints(f: Fam) {
    let mut dp = require_datapath!();
    let empty = Svc::new(f.vip, 80, PROTO_TCP, 20, &[]);
    dp.add_service(&empty);
    dp.add_service(&Svc::new(f.vip, 53, PROTO_UDP, 21, &[]));

    // SYN -> RST+ACK, ack = seq + 1.
    let syn = tcp(f.client, 40004, f.vip, 80, Tcp::syn(), b"");
    let r = dp.tc(&syn);
    assert_eq!(
        r.ret, TC_ACT_REDIRECT,
        "answered out of the ingress interface"
    );
    let p = parse(&r.out);
    assert_eq!(p.proto, PROTO_TCP);
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (f.vip, 80, f.client, 40004)
    );
    assert_eq!(
        (p.src_mac, p.dst_mac),
        (HOST_MAC, CLIENT_MAC),
        "MACs swapped"
    );
    assert_eq!(p.tcp_flags(), 0x14, "RST|ACK");
    assert_eq!(p.tcp_ack(), 1001);
    assert_eq!(p.tcp_seq(), 0);
    assert_eq!(p.l4_bytes.len(), 20, "no payload");

    // A data segment with ACK -> RST with seq = its ack.
    let data = tcp(f.client, 40004, f.vip, 80, Tcp::ack(), b"hello");
    let r = dp.tc(&data);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let p = parse(&r.out);
    assert_eq!(p.tcp_flags(), 0x04, "RST");
    assert_eq!(p.tcp_seq(), 5000);

    // A port the VIP does not define.
    let r = dp.tc(&tcp(f.client, 40005, f.vip, 81, Tcp::syn(), b""));
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let p = parse(&r.out);
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (f.vip, 81, f.client, 40005)
    );

    // A RST is never answered.
    let rst = tcp(
        f.client,
        40004,
        f.vip,
        80,
        Tcp {
            rst: true,
            seq: 5,
            ..Default::default()
        },
        b"",
    );
    assert_eq!(dp.tc(&rst).ret, TC_ACT_SHOT);

    // UDP -> ICMP port unreachable quoting the datagram.
    let dgram = udp(
        f.client,
        40006,
        f.vip,
        53,
        b"query payload that is longer than 8 bytes",
    );
    let r = dp.tc(&dgram);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let p = parse(&r.out);
    assert_eq!((p.src, p.dst), (f.vip, f.client));
    if f.vip.is_ipv4() {
        assert_eq!(
            (p.proto, p.sport, p.dport),
            (1, 3, 3),
            "ICMP port unreachable"
        );
        assert_eq!(
            &p.l4_bytes[8..],
            &dgram[14..14 + 28],
            "quotes IP header + 8 bytes"
        );
    } else {
        assert_eq!(
            (p.proto, p.sport, p.dport),
            (58, 1, 4),
            "ICMPv6 port unreachable"
        );
        assert_eq!(
            &p.l4_bytes[8..],
            &dgram[14..14 + 48],
            "quotes IPv6 header + 8 bytes"
        );
    }
    assert_eq!(quoted_tuple(&p), (f.client, 40006, f.vip, 53));
}

#[test]
fn ipv4_no_endpoints_rst_and_port_unreachable() {
    no_endpoints(fam4());
}
#[test]
fn ipv6_no_endpoints_rst_and_port_unreachable() {
    no_endpoints(fam6());
}

#[test]
fn drop_flag_drops_silently() {
    let mut dp = require_datapath!();
    for f in [fam4(), fam6()] {
        let mut svc = Svc::new(f.vip, 80, PROTO_TCP, 22, &[]);
        svc.flags = SVC_FLAG_DROP;
        dp.add_service(&svc);
        let mut svc = Svc::new(f.vip, 53, PROTO_UDP, 23, &[]);
        svc.flags = SVC_FLAG_DROP;
        dp.add_service(&svc);
        assert_eq!(
            dp.tc(&tcp(f.client, 1, f.vip, 80, Tcp::syn(), b"")).ret,
            TC_ACT_SHOT
        );
        assert_eq!(dp.tc(&udp(f.client, 1, f.vip, 53, b"q")).ret, TC_ACT_SHOT);
    }
}

#[test]
fn conntrack_keeps_flow_until_closed_or_backend_gone() {
    let mut dp = require_datapath!();
    let f = fam4();
    let svc = service(&f, 80, PROTO_TCP, 30, 8080);
    let ids = dp.add_service(&svc);
    let r = dp.tc(&tcp(f.client, 40010, f.vip, 80, Tcp::syn(), b""));
    let b0 = parse(&r.out).dst;
    let i0 = f.backends.iter().position(|b| *b == b0).unwrap();
    // Point the whole Maglev table at another backend: the flow stays (conntrack).
    let j = (i0 + 1) % 3;
    let only_j: Vec<(IpAddr, u16)> = vec![(f.backends[j], 8080)];
    dp.set_maglev(30, &only_j, &[ids[j]]);
    let r = dp.tc(&tcp(f.client, 40010, f.vip, 80, Tcp::ack(), b"x"));
    assert_eq!(parse(&r.out).dst, b0, "established flow keeps its backend");
    // FIN marks it closing; a new SYN on the same tuple chooses again (-> j).
    let fin = Tcp {
        fin: true,
        ack: Some(5000),
        seq: 1002,
        ..Default::default()
    };
    let r = dp.tc(&tcp(f.client, 40010, f.vip, 80, fin, b""));
    assert_eq!(
        parse(&r.out).dst,
        b0,
        "the FIN still goes to the old backend"
    );
    let r = dp.tc(&tcp(f.client, 40010, f.vip, 80, Tcp::syn(), b""));
    assert_eq!(
        parse(&r.out).dst,
        f.backends[j],
        "SYN after FIN: new choice"
    );
    // Backend j disappears: the next packet of the flow goes elsewhere (slot fallback).
    dp.remove_backend(&svc, &ids, j);
    let r = dp.tc(&tcp(f.client, 40010, f.vip, 80, Tcp::ack(), b"y"));
    assert_eq!(r.ret, TC_ACT_OK);
    let now = parse(&r.out).dst;
    assert_ne!(now, f.backends[j], "a removed backend gets no more packets");
    assert!(f.backends.contains(&now));
}

#[test]
fn client_ip_affinity_pins_all_flows_of_a_client() {
    let mut dp = require_datapath!();
    for (f, id) in [(fam4(), 40), (fam6(), 41)] {
        let mut svc = service(&f, 80, PROTO_TCP, id, 8080);
        svc.flags = SVC_FLAG_AFFINITY;
        svc.affinity_timeout_s = 600;
        dp.add_service(&svc);
        let mut seen = std::collections::BTreeSet::new();
        for port in 41000..41064 {
            let r = dp.tc(&tcp(f.client, port, f.vip, 80, Tcp::syn(), b""));
            seen.insert(parse(&r.out).dst);
        }
        assert_eq!(
            seen.len(),
            1,
            "64 flows of one client: one backend ({seen:?})"
        );
        // Without affinity, 64 flows spread (the Maglev hash differs per flow).
        let mut spread = std::collections::BTreeSet::new();
        let other_client = if f.vip.is_ipv4() {
            v4("10.244.0.99")
        } else {
            v6("fd00:244::99")
        };
        let mut plain = service(&f, 81, PROTO_TCP, id + 100, 8080);
        plain.flags = 0;
        dp.add_service(&plain);
        for port in 41000..41064 {
            let r = dp.tc(&tcp(other_client, port, f.vip, 81, Tcp::syn(), b""));
            spread.insert(parse(&r.out).dst);
        }
        assert_eq!(spread.len(), 3, "without affinity all 3 backends get flows");
    }
}

#[test]
fn maglev_removing_a_backend_keeps_other_flows() {
    let mut dp = require_datapath!();
    let f = Fam {
        backends: (1..=5).map(|i| v4(&format!("10.244.1.{i}"))).collect(),
        ..fam4()
    };
    let svc = service(&f, 80, PROTO_TCP, 50, 8080);
    let ids = dp.add_service(&svc);
    let flows: Vec<(IpAddr, u16)> = (0..2000u32)
        .map(|i| {
            (
                v4(&format!(
                    "10.{}.{}.{}",
                    1 + i % 7,
                    (i / 7) % 250,
                    1 + i % 200
                )),
                10000 + (i % 50000) as u16,
            )
        })
        .collect();
    let pick = |dp: &Datapath, (c, p): &(IpAddr, u16)| {
        parse(&dp.tc(&tcp(*c, *p, f.vip, 80, Tcp::syn(), b"")).out).dst
    };
    let before: Vec<IpAddr> = flows.iter().map(|fl| pick(&dp, fl)).collect();
    let mut per = std::collections::BTreeMap::new();
    for b in &before {
        *per.entry(*b).or_insert(0) += 1;
    }
    assert_eq!(per.len(), 5);
    for (b, n) in &per {
        assert!((250..=550).contains(n), "backend {b} got {n} of 2000 flows");
    }
    // Remove backend 2 as the agent does, rebuild Maglev, forget conntrack.
    let gone = 2;
    dp.remove_backend(&svc, &ids, gone);
    let left: Vec<(IpAddr, u16)> = svc
        .backends
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, b)| *b)
        .collect();
    let left_ids: Vec<u32> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, id)| *id)
        .collect();
    dp.set_maglev(50, &left, &left_ids);
    dp.clear_ct();
    let after: Vec<IpAddr> = flows.iter().map(|fl| pick(&dp, fl)).collect();
    let (mut kept, mut total) = (0, 0);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(*a, f.backends[gone], "no flow on the removed backend");
        if *b != f.backends[gone] {
            total += 1;
            if a == b {
                kept += 1;
            }
        }
    }
    println!("maglev: {kept}/{total} flows not on the removed backend kept theirs");
    assert!(
        kept * 100 >= total * 90,
        "only {kept}/{total} kept their backend"
    );
}

/// Packets `tc_ingress` must pass byte-identical (returns TC_ACT_UNSPEC).
fn must_pass_untouched(dp: &Datapath, what: &str, pkt: &[u8]) {
    if !skb_test_run_refuses(pkt) {
        let r = dp.tc(pkt);
        assert_eq!(r.ret, TC_ACT_UNSPEC, "{what}: verdict");
        assert_eq!(r.out, pkt, "{what}: bytes changed");
    }
    let r = dp.xdp(pkt);
    assert_eq!(r.ret, XDP_PASS, "{what}: xdp verdict");
    assert_eq!(r.out, pkt, "{what}: bytes changed by xdp");
}

fn recompute_ip4_csum(p: &mut [u8]) {
    let ihl = usize::from(p[14] & 0xf) * 4;
    p[24] = 0;
    p[25] = 0;
    let c = !ones_complement(&[&p[14..14 + ihl]]);
    p[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn untouched_packets() {
    let mut dp = require_datapath!();
    let (f4, f6) = (fam4(), fam6());
    dp.add_service(&service(&f4, 80, PROTO_TCP, 60, 8080));
    dp.add_service(&service(&f6, 80, PROTO_TCP, 61, 8080));
    dp.add_service(&service(&f4, 53, PROTO_UDP, 62, 5353));

    for f in [&f4, &f6] {
        must_pass_untouched(
            &dp,
            "other destination tcp",
            &tcp(f.client, 1234, f.other, 80, Tcp::syn(), b""),
        );
        must_pass_untouched(
            &dp,
            "other destination udp",
            &udp(f.client, 1234, f.other, 53, b"x"),
        );
        let mut v = Vec::new();
        let step = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC);
        match (f.client, f.vip) {
            (IpAddr::V4(c), IpAddr::V4(d)) => step
                .ipv4(c.octets(), d.octets(), 64)
                .icmpv4_echo_request(1, 1)
                .write(&mut v, b"ping")
                .unwrap(),
            (IpAddr::V6(c), IpAddr::V6(d)) => step
                .ipv6(c.octets(), d.octets(), 64)
                .icmpv6_echo_request(1, 1)
                .write(&mut v, b"ping")
                .unwrap(),
            _ => unreachable!(),
        }
        must_pass_untouched(&dp, "ICMP echo to the VIP", &v);
        // SCTP (132) to the VIP: a raw IP payload.
        let mut sctp = udp(f.client, 1234, f.vip, 80, b"sctp-ish payload");
        if f.vip.is_ipv4() {
            sctp[23] = 132;
            recompute_ip4_csum(&mut sctp);
        } else {
            sctp[20] = 132;
        }
        must_pass_untouched(&dp, "SCTP to the VIP", &sctp);
        // Truncated headers: a VIP SYN cut anywhere inside its headers.
        let syn = tcp(f.client, 1234, f.vip, 80, Tcp::syn(), b"");
        let l4 = if f.vip.is_ipv4() { 34 } else { 54 };
        for cut in 14..l4 + 20 {
            must_pass_untouched(&dp, &format!("SYN cut at {cut}"), &syn[..cut]);
        }
        let dg = udp(f.client, 1234, f.vip, 80, b"");
        for cut in 14..l4 + 8 {
            must_pass_untouched(&dp, &format!("UDP cut at {cut}"), &dg[..cut]);
        }
    }

    // IPv4 with options (NOP NOP NOP EOL): passed, not translated.
    let syn = tcp(f4.client, 1234, f4.vip, 80, Tcp::syn(), b"");
    let mut opt = syn[..34].to_vec();
    opt.extend_from_slice(&[1, 1, 1, 0]);
    opt.extend_from_slice(&syn[34..]);
    opt[14] = 0x46;
    let tot = u16::from_be_bytes([opt[16], opt[17]]) + 4;
    opt[16..18].copy_from_slice(&tot.to_be_bytes());
    recompute_ip4_csum(&mut opt);
    must_pass_untouched(&dp, "IPv4 with options", &opt);

    // Fragments: MF set, and a non-zero offset.
    let dg = udp(f4.client, 1234, f4.vip, 53, b"fragment payload....");
    let mut mf = dg.clone();
    mf[20] |= 0x20;
    recompute_ip4_csum(&mut mf);
    must_pass_untouched(&dp, "first fragment (MF)", &mf);
    let mut off = dg.clone();
    off[20] = 0;
    off[21] = 3;
    recompute_ip4_csum(&mut off);
    must_pass_untouched(&dp, "later fragment", &off);

    // IPv6 with a hop-by-hop extension header before TCP.
    let syn6 = tcp(f6.client, 1234, f6.vip, 80, Tcp::syn(), b"");
    let mut ext = syn6[..54].to_vec();
    ext[20] = 0; // next header: hop-by-hop
    let plen = u16::from_be_bytes([ext[18], ext[19]]) + 8;
    ext[18..20].copy_from_slice(&plen.to_be_bytes());
    ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    ext.extend_from_slice(&syn6[54..]);
    must_pass_untouched(&dp, "IPv6 extension header", &ext);

    // VLAN-tagged packet to the VIP.
    let mut vlan = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
        .single_vlan(etherparse::VlanId::try_new(10).unwrap())
        .ipv4([10, 244, 0, 5], [10, 96, 0, 10], 64)
        .tcp(1234, 80, 1, 100)
        .syn()
        .write(&mut vlan, b"")
        .unwrap();
    must_pass_untouched(&dp, "VLAN", &vlan);

    // ARP request for the VIP.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[10, 244, 0, 5]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 96, 0, 10]);
    must_pass_untouched(&dp, "ARP", &arp);

    // A service port on a non-VIP address stays untouched even with the same port.
    must_pass_untouched(
        &dp,
        "non-VIP port 80",
        &tcp(f4.client, 1, v4("10.96.0.11"), 80, Tcp::syn(), b""),
    );
    assert_eq!(dp.stats(60).packets, 0, "nothing counted");
}
