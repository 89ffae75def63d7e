//! Fuzz-style robustness of every per-packet program (`tc_ingress`, `xdp_ingress` and the
//! external interfaces' `tc_nodeport`, `tc_nodeport_egress`, `xdp_nodeport`): 100,000+ random
//! and mutated packets (seeded, reproducible) through each. The frontends include cluster
//! IPs, node ports on a node address (remote and local backends, `externalTrafficPolicy:
//! Local`) and a load-balancer IP with source ranges. Whatever a packet is, if its destination
//! as read from the original bytes is not a frontend address (or cannot be read at all), the
//! programs must return it byte-identical with a pass verdict. Clean packets to a frontend
//! address mixed in must come out with valid checksums.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clusterip_common::{
    BE_FLAG_LOCAL, SCOPE_EXTERNAL, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_NODE_ADDR,
    SVC_FLAG_OPEN, SVC_FLAG_SOURCE_RANGE, SVC_FLAG_WILDCARD, ServiceValue,
};
use clusterip_tests::packet::*;
use clusterip_tests::require_datapath;

const PACKETS: usize = 100_000;
const PROGRAMS: [&str; 5] = [
    "tc_ingress",
    "xdp_ingress",
    "tc_nodeport",
    "tc_nodeport_egress",
    "xdp_nodeport",
];
const SEED: u64 = 0x005e_edc1;

/// The destination address as the original bytes say, if they are IPv4/IPv6 far enough.
fn original_dst(p: &[u8]) -> Option<IpAddr> {
    match p.get(12..14)? {
        [0x08, 0x00] => {
            let d: [u8; 4] = p.get(30..34)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(d)))
        }
        [0x86, 0xdd] => {
            let d: [u8; 16] = p.get(38..54)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(d)))
        }
        _ => None,
    }
}

#[test]
fn random_and_mutated_packets_never_change_non_vip_traffic() {
    let mut dp = require_datapath!();
    let vip4: IpAddr = "10.96.0.30".parse().unwrap();
    let vip6: IpAddr = "fd00:96::30".parse().unwrap();
    let be4: Vec<(IpAddr, u16)> = (1..=4)
        .map(|i| (format!("10.244.3.{i}").parse().unwrap(), 8080))
        .collect();
    let be6: Vec<(IpAddr, u16)> = (1..=4)
        .map(|i| (format!("fd00:244:3::{i}").parse().unwrap(), 8080))
        .collect();
    dp.add_service(&Svc::new(vip4, 80, PROTO_TCP, 1, &be4));
    dp.add_service(&Svc::new(vip4, 53, PROTO_UDP, 2, &be4));
    dp.add_service(&Svc::new(vip6, 80, PROTO_TCP, 3, &be6));
    dp.add_service(&Svc::new(vip6, 53, PROTO_UDP, 4, &be6));
    dp.add_service(&Svc::new(vip4, 81, PROTO_TCP, 5, &[]));
    // The external frontends: node ports on the node's address, a load-balancer IP.
    let node4: IpAddr = "10.100.0.1".parse().unwrap();
    let node6: IpAddr = "fd00:100::1".parse().unwrap();
    let lb4: IpAddr = "192.0.2.10".parse().unwrap();
    let lb6: IpAddr = "2001:db8::10".parse().unwrap();
    let mut svc_id = 6;
    for (node, lb, be) in [(node4, lb4, &be4), (node6, lb6, &be6)] {
        for (port, proto) in [(80, PROTO_TCP), (53, PROTO_UDP)] {
            // Cluster policy, remote and local backends.
            let mut np = Svc::new(node, port, proto, svc_id, be);
            np.flags = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_ADDR;
            np.backend_flags = vec![0, BE_FLAG_LOCAL, 0, BE_FLAG_LOCAL];
            dp.add_service(&np);
            // The load-balancer IP: Local policy, one local endpoint; a source range.
            let mut l = Svc::new(lb, port, proto, svc_id + 1, be);
            l.flags = SVC_FLAG_EXTERNAL | SVC_FLAG_EXT_LOCAL | SVC_FLAG_SOURCE_RANGE;
            dp.add_service(&l);
            let mut local = Svc::new(lb, port, proto, svc_id + 2, &be[1..2]);
            local.flags = SVC_FLAG_EXTERNAL;
            local.backend_flags = vec![BE_FLAG_LOCAL];
            local.scope = SCOPE_EXTERNAL;
            dp.add_service(&local);
            let (net, len) = if node.is_ipv6() {
                ("fd00:c::".parse().unwrap(), 80)
            } else {
                ("192.168.0.0".parse().unwrap(), 17)
            };
            dp.add_source_range(svc_id + 1, net, len);
            svc_id += 3;
        }
        let open = ServiceValue {
            flags: SVC_FLAG_WILDCARD | SVC_FLAG_OPEN,
            ..Default::default()
        };
        dp.set_wildcard(node, &open);
        dp.set_wildcard(lb, &open);
    }
    let vips: BTreeSet<IpAddr> = [vip4, vip6, node4, node6, lb4, lb6].into();

    let mut rng = Rng::new(SEED);
    let (mut runs, mut changed_vip, mut refused, mut clean_checked) =
        (0usize, 0usize, 0usize, 0usize);
    let started = std::time::Instant::now();
    for i in 0..PACKETS {
        let v6 = rng.below(2) == 1;
        // Clients in 192.168/16 and fd00:c::/64, never a backend: a mutated packet cannot
        // become a reply of a tracked flow.
        let client: IpAddr = if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0xc,
                0,
                0,
                0,
                0,
                0,
                rng.below(0xffff) as u16 + 1,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 168, rng.byte(), rng.byte().max(1)))
        };
        let dst: IpAddr = match rng.below(5) {
            0 if v6 => "fd00:96::31".parse().unwrap(),
            0 => "10.96.0.31".parse().unwrap(),
            1 if v6 => node6,
            1 => node4,
            2 if v6 => lb6,
            2 => lb4,
            _ if v6 => vip6,
            _ => vip4,
        };
        let proto_tcp = rng.below(2) == 0;
        let dport = [80u16, 53, 81, 443][rng.below(4) as usize];
        let sport = rng.below(60000) as u16 + 1024;
        let payload: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
        let base = if proto_tcp {
            let t = if rng.below(2) == 0 {
                Tcp::syn()
            } else {
                Tcp::ack()
            };
            tcp(client, sport, dst, dport, t, &payload)
        } else {
            udp(client, sport, dst, dport, &payload)
        };
        let kind = i % 5;
        let mut pkt = base.clone();
        match kind {
            0 => {
                // clean packet
            }
            1 => {
                // 1..4 random bytes replaced anywhere
                for _ in 0..=rng.below(4) {
                    let at = rng.below(pkt.len() as u64) as usize;
                    pkt[at] = rng.byte();
                }
            }
            2 => {
                // truncated
                let len = 14 + rng.below((pkt.len() - 14) as u64) as usize;
                pkt.truncate(len);
            }
            3 => {
                // random protocol / ethertype / lengths in the headers
                match rng.below(4) {
                    0 => {
                        let et = rng.next_u64() as u16;
                        pkt[12..14].copy_from_slice(&et.to_be_bytes());
                    }
                    1 => {
                        let at = if v6 { 20 } else { 23 };
                        pkt[at] = rng.byte();
                    }
                    2 => {
                        let at = if v6 { 18 } else { 16 };
                        pkt[at] = rng.byte();
                        pkt[at + 1] = rng.byte();
                    }
                    _ => {
                        pkt[14] = rng.byte();
                    }
                }
            }
            _ => {
                // pure noise with an IP-ish ethertype
                let len = 14 + rng.below(120) as usize;
                pkt = (0..len).map(|_| rng.byte()).collect();
                let et: u16 = [0x0800, 0x86dd, 0x0806, 0x8100][rng.below(4) as usize];
                pkt[12..14].copy_from_slice(&et.to_be_bytes());
            }
        }
        let is_vip = original_dst(&pkt).is_some_and(|d| vips.contains(&d));
        for prog in PROGRAMS {
            let tc = prog.starts_with("tc_");
            let r = match dp.try_run(prog, &pkt) {
                Ok(r) => r,
                Err(e) => {
                    assert!(
                        tc && skb_test_run_refuses(&pkt),
                        "packet {i}: {prog} test run failed: {e} ({} bytes)",
                        pkt.len()
                    );
                    refused += 1;
                    continue;
                }
            };
            runs += 1;
            if !is_vip {
                let pass = if tc { TC_ACT_UNSPEC } else { XDP_PASS };
                assert_eq!(
                    r.ret, pass,
                    "packet {i} (kind {kind}) {prog}: verdict for non-VIP {pkt:02x?}"
                );
                assert_eq!(
                    r.out, pkt,
                    "packet {i} (kind {kind}) {prog}: non-VIP packet changed"
                );
            } else if r.out != pkt {
                changed_vip += 1;
                if kind == 0 {
                    // A clean packet to a VIP: translated or answered, with valid checksums.
                    parse(&r.out);
                    clean_checked += 1;
                }
            }
        }
    }
    println!(
        "fuzz: {PACKETS} packets, {runs} program runs ({refused} inputs refused by the kernel's \
         test-run checks), {changed_vip} VIP packets rewritten ({clean_checked} clean ones \
         re-checked), {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(runs >= PROGRAMS.len() * PACKETS - refused);
    assert!(changed_vip > PACKETS / 10, "VIP packets were translated");
}
