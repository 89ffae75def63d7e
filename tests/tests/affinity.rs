//! sessionAffinity: ClientIP.

use std::time::Duration;

use clusterip_tests::agent::DumpEntry;
use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::tally;
use clusterip_tests::require_env;

fn setup(fx: &mut Fixture, timeout_s: u32) {
    fx.standard_backends(3).unwrap();
    let svc = Service::new("sticky", "10.96.0.10")
        .port(tcp("http", 80, TCP_PORT))
        .affinity(timeout_s);
    let slice = svc.slice("a").ready((0..3).map(|i| pod_ip(i, false)));
    fx.manifests
        .write("sticky.yaml", &[svc.to_value(), slice.to_value()])
        .unwrap();
    fx.start_agent().unwrap();
    let expected = [DumpEntry::new(
        "10.96.0.10",
        80,
        "TCP",
        &["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"],
        Some(timeout_s),
    )];
    assert_eq!(fx.dump().unwrap(), expected);
}

/// A long timeout: 20 connections all hit one backend (without affinity that happens with
/// probability 3 * (1/3)^20 < 1e-9).
#[test]
fn client_ip_affinity_pins_connections() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    setup(&mut fx, 10800);
    let replies = fx
        .client()
        .tcp("10.96.0.10:80".parse().unwrap(), 20)
        .unwrap();
    let counts = tally(&replies);
    assert_eq!(
        counts.len(),
        1,
        "all connections on one backend: {counts:?}"
    );
    assert!(
        replies
            .iter()
            .all(|r| r.peer.as_deref() == Some("10.96.0.10:80")),
        "{replies:?}"
    );
}

/// timeoutSeconds: 2. Within the timeout connections stay on one backend; after 3 s idle the
/// affinity has expired and the next connection picks a backend afresh, which is a different
/// one with probability 2/3. Up to ROUNDS rounds: the test fails falsely only if every round
/// picks the same backend again, (1/3)^13 < 6.3e-7 < 1e-6. It stops at the first move.
#[test]
fn client_ip_affinity_expires() {
    const ROUNDS: usize = 13;
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    setup(&mut fx, 2);
    let vip = "10.96.0.10:80".parse().unwrap();
    let pick = |fx: &Fixture| {
        let counts = tally(&fx.client().tcp(vip, 3).unwrap());
        assert_eq!(
            counts.len(),
            1,
            "affinity holds within the timeout: {counts:?}"
        );
        counts.into_keys().next().unwrap()
    };
    let mut previous = pick(&fx);
    let mut history = vec![previous.clone()];
    for _ in 0..ROUNDS {
        std::thread::sleep(Duration::from_secs(3));
        let now = pick(&fx);
        history.push(now.clone());
        if now != previous {
            return;
        }
        previous = now;
    }
    panic!("affinity never expired over {ROUNDS} rounds of 3 s: {history:?}");
}
