//! UDP through an IPv4 VIP, connected and unconnected sockets.

use std::collections::BTreeSet;

use clusterip_tests::fixture::{Fixture, UDP_PORT};
use clusterip_tests::manifests::{Service, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::tally;
use clusterip_tests::require_env;

/// Sockets per test; each picks one of 3 backends, so all of them picking the same one has
/// probability 3 * (1/3)^30 < 1e-13.
const SOCKETS: usize = 30;
const DATAGRAMS: u32 = 5;

fn dns(fx: &mut Fixture) {
    fx.standard_backends(3).unwrap();
    let svc = Service::new("dns", "10.96.0.10").port(udp("dns", 53, UDP_PORT));
    let slice = svc.slice("a").ready((0..3).map(|i| pod_ip(i, false)));
    fx.manifests
        .write("dns.yaml", &[svc.to_value(), slice.to_value()])
        .unwrap();
    fx.start_agent().unwrap();
}

/// SOCKETS sockets to the VIP, DATAGRAMS each: every reply arrives, recvfrom() reports
/// VIP:port (not the backend), getpeername() the VIP for a connected socket (nothing for an
/// unconnected one), the backend saw the client's address, all datagrams of one socket go to
/// one backend, and different sockets are balanced.
fn each_socket_sticks_to_one_backend(fx: &Fixture, connected: bool) {
    let vip = "10.96.0.10:53";
    let mut used = BTreeSet::new();
    for _ in 0..SOCKETS {
        let client = fx.client();
        let replies = if connected {
            client.udp_connected(vip.parse().unwrap(), DATAGRAMS)
        } else {
            client.udp_unconnected(vip.parse().unwrap(), DATAGRAMS)
        }
        .unwrap();
        let counts = tally(&replies);
        assert_eq!(counts.len(), 1, "one socket, one backend: {replies:?}");
        for r in &replies {
            let peer = connected.then_some(vip);
            assert_eq!(r.peer.as_deref(), peer, "getpeername: {r:?}");
            assert_eq!(r.from.as_deref(), Some(vip), "recvfrom address: {r:?}");
            assert_eq!(r.seen_client(), Some("10.200.0.1"), "{r:?}");
            assert!(
                r.reply.as_deref().is_some_and(|s| s.ends_with(" ping")),
                "{r:?}"
            );
        }
        used.extend(counts.into_keys());
    }
    assert!(used.len() > 1, "{SOCKETS} sockets all went to {used:?}");
}

/// connect() to the VIP: getpeername and recvfrom report VIP:port, replies arrive, all
/// datagrams of one socket go to one backend, and different sockets are balanced.
#[test]
fn udp_connected_socket_sticks_to_one_backend() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    dns(&mut fx);
    each_socket_sticks_to_one_backend(&fx, true);
}

/// sendto()/recvfrom() on a socket that was never connected: replies are reported as coming
/// from VIP:port (not the backend), and one socket's datagrams stick to one backend.
#[test]
fn udp_unconnected_replies_come_from_the_vip() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    dns(&mut fx);
    each_socket_sticks_to_one_backend(&fx, false);
}
