//! TCP and UDP through an IPv6 VIP.

use std::collections::BTreeSet;

use clusterip_tests::fixture::{Fixture, TCP_PORT, UDP_PORT};
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::{assert_spread_via, tally};
use clusterip_tests::require_env;

#[test]
fn ipv6_vip_tcp_and_udp() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let svc = Service::new("web6", "fd00:96::10")
        .port(tcp("http", 80, TCP_PORT))
        .port(udp("dns", 53, UDP_PORT));
    let slice = svc.slice("a").ready((0..3).map(|i| pod_ip(i, true)));
    fx.manifests
        .write("web6.yaml", &[svc.to_value(), slice.to_value()])
        .unwrap();
    fx.start_agent().unwrap();

    // TCP: 60 connections, all three backends (a miss has probability < 1e-10), peer is the
    // VIP, the backend sees the client's own address.
    let replies = fx
        .client()
        .tcp("[fd00:96::10]:80".parse().unwrap(), 60)
        .unwrap();
    assert_spread_via(
        &replies,
        "[fd00:96::10]:80",
        "fd00:200::1",
        &["be-0", "be-1", "be-2"],
    );

    // UDP, connected and unconnected: VIP reported, one backend per socket, balanced over
    // 20 sockets each (all on one backend: probability 3 * (1/3)^40).
    let mut used = BTreeSet::new();
    for _ in 0..20 {
        let replies = fx
            .client()
            .udp_connected("[fd00:96::10]:53".parse().unwrap(), 3)
            .unwrap();
        let counts = tally(&replies);
        assert_eq!(counts.len(), 1, "{replies:?}");
        for r in &replies {
            assert_eq!(r.peer.as_deref(), Some("[fd00:96::10]:53"), "{r:?}");
            assert_eq!(r.from.as_deref(), Some("[fd00:96::10]:53"), "{r:?}");
            assert_eq!(r.seen_client(), Some("fd00:200::1"), "{r:?}");
        }
        used.extend(counts.into_keys());
        let replies = fx
            .client()
            .udp_unconnected("[fd00:96::10]:53".parse().unwrap(), 3)
            .unwrap();
        let counts = tally(&replies);
        assert_eq!(counts.len(), 1, "{replies:?}");
        for r in &replies {
            assert_eq!(r.from.as_deref(), Some("[fd00:96::10]:53"), "{r:?}");
        }
        used.extend(counts.into_keys());
    }
    assert!(used.len() > 1, "UDP never balanced: {used:?}");
}
