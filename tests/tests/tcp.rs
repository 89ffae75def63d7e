//! TCP through an IPv4 VIP, and traffic that is not for a VIP.

use std::net::SocketAddr;

use clusterip_tests::fixture::{Fixture, TCP_PORT, UDP_PORT};
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::{assert_all_from, assert_spread_via};
use clusterip_tests::require_env;

fn web(fx: &mut Fixture) {
    fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.0.10")
        .port(tcp("http", 80, TCP_PORT))
        .port(udp("dns", 53, UDP_PORT));
    let slice = svc.slice("a").ready((0..3).map(|i| pod_ip(i, false)));
    fx.manifests
        .write("web.yaml", &[svc.to_value(), slice.to_value()])
        .unwrap();
    fx.start_agent().unwrap();
}

/// 60 connections to 10.96.0.10:80 reach all three backends (each is picked with p = 1/3, so
/// one missing has probability 3 * (2/3)^60 < 1e-10), every socket reports the VIP as its
/// peer, and every backend sees the client's real address (no SNAT).
#[test]
fn tcp_through_vip_reaches_every_backend() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    web(&mut fx);
    let replies = fx
        .client()
        .tcp("10.96.0.10:80".parse().unwrap(), 60)
        .unwrap();
    assert_spread_via(
        &replies,
        "10.96.0.10:80",
        "10.200.0.1",
        &["be-0", "be-1", "be-2"],
    );
}

/// With the agent running and the VIP configured, a connection to a pod's own address is left
/// alone: the peer is that address and that pod answers (TCP and UDP).
#[test]
fn non_vip_destination_is_untouched() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    web(&mut fx);
    let addr = SocketAddr::new(pod_ip(1, false), TCP_PORT);
    let replies = fx.client().tcp(addr, 10).unwrap();
    assert_all_from(&replies, "be-1", 10);
    for r in &replies {
        assert_eq!(r.peer, Some(addr.to_string()), "{r:?}");
        assert_eq!(r.seen_client(), Some("10.200.0.1"));
    }
    let addr = SocketAddr::new(pod_ip(2, false), UDP_PORT);
    let replies = fx.client().udp_unconnected(addr, 5).unwrap();
    assert_all_from(&replies, "be-2", 5);
    assert!(
        replies.iter().all(|r| r.from == Some(addr.to_string())),
        "{replies:?}"
    );
    let replies = fx.client().udp_connected(addr, 5).unwrap();
    assert_all_from(&replies, "be-2", 5);
    assert!(
        replies.iter().all(|r| r.peer == Some(addr.to_string())),
        "{replies:?}"
    );
}
