//! Connected UDP sockets and removed backends: a socket connected through the VIP was rewritten
//! once, at connect(), to one backend. When that backend leaves the service the agent destroys
//! the socket (the application sees an error and reconnects through the VIP) instead of
//! leaving it sending into the void; sockets on the remaining backends, and sockets connected
//! to a pod IP directly, are left alone.

use std::net::SocketAddr;
use std::time::Duration;

use clusterip_tests::fixture::{Fixture, UDP_PORT};
use clusterip_tests::manifests::{Service, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::tally;
use clusterip_tests::require_env;

const EDESTADDRREQ: i32 = 89;
const ECONNABORTED: i32 = 103;

#[test]
fn connected_udp_sockets_of_a_removed_backend_are_destroyed() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let svc = Service::new("dns", "10.96.0.53").port(udp("dns", 53, UDP_PORT));
    let slice = |pods: &[usize]| {
        svc.slice("a")
            .ready(pods.iter().map(|i| pod_ip(*i, false)))
            .to_value()
    };
    fx.manifests
        .write("dns.yaml", &[svc.to_value(), slice(&[0, 1, 2])])
        .unwrap();
    fx.start_agent().unwrap();
    let vip: SocketAddr = "10.96.0.53:53".parse().unwrap();

    // 30 sockets over 3 backends: be-2 gets none with probability (2/3)^30 < 1e-5.
    let mut through_vip = fx.client().ns().udp_connected_multi(vip, 30).unwrap();
    let direct_addr = SocketAddr::new(pod_ip(2, false), UDP_PORT);
    let mut direct = fx
        .client()
        .ns()
        .udp_connected_multi(direct_addr, 1)
        .unwrap();
    let before = through_vip.round().unwrap();
    assert!(before.iter().all(|r| r.is_ok()), "{before:?}");
    assert!(
        before
            .iter()
            .all(|r| r.peer.as_deref() == Some("10.96.0.53:53")),
        "{before:?}"
    );
    let on_be2 = before
        .iter()
        .filter(|r| r.backend() == Some("be-2"))
        .count();
    assert!(on_be2 > 0, "no socket landed on be-2: {:?}", tally(&before));
    assert_eq!(direct.round().unwrap()[0].backend(), Some("be-2"));

    let mark = fx.agent().log_len();
    fx.manifests
        .write("dns.yaml", &[svc.to_value(), slice(&[0, 1])])
        .unwrap();
    fx.agent()
        .wait_line_since(
            mark,
            &["destroyed UDP sockets of removed backends"],
            Duration::from_secs(5),
        )
        .unwrap();

    let after = through_vip.round().unwrap();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b.backend() == Some("be-2") {
            assert!(
                matches!(a.errno, Some(EDESTADDRREQ | ECONNABORTED)),
                "socket {i} was on be-2 and should have been destroyed: {a:?}"
            );
        } else {
            assert_eq!(
                a.backend(),
                b.backend(),
                "socket {i} on a remaining backend must stay: {a:?}"
            );
        }
    }
    // Connected to the pod IP itself, not through the VIP: not ours to destroy.
    assert_eq!(direct.round().unwrap()[0].backend(), Some("be-2"));
    // Reconnecting through the VIP reaches the remaining backends only.
    let again = tally(&fx.client().udp_connected(vip, 10).unwrap());
    assert!(!again.contains_key("be-2"), "{again:?}");
}
