//! Services without usable endpoints and ports the service does not define.

use std::net::SocketAddr;

use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Endpoint, Service, tcp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::{Reply, assert_all_from, tally};
use clusterip_tests::require_env;

/// The client waits up to 3 s; an error must come back well before that.
const IMMEDIATE_MS: f64 = 500.0;

fn one(fx: &Fixture, addr: &str) -> Reply {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut r = fx.client().run_mode("tcp", addr, 1, 3000).unwrap();
    r.remove(0)
}

fn assert_fails_at_once(r: &Reply, errno: i32, what: &str) {
    assert_eq!(r.errno, Some(errno), "{what}: {r:?}");
    assert!(
        r.elapsed_ms < IMMEDIATE_MS,
        "{what}: took {} ms: {r:?}",
        r.elapsed_ms
    );
}

/// ECONNREFUSED at once for a service without endpoints, for one whose only endpoint is
/// neither ready nor serving, and for a port the VIP's service does not define; the defined
/// port works (so the VIP itself is configured).
#[test]
fn refused_without_endpoints_and_on_undefined_ports() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 1).unwrap();
    fx.standard_backends(1).unwrap();
    let web = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let empty = Service::new("empty", "10.96.0.20").port(tcp("http", 80, TCP_PORT));
    let notready = Service::new("notready", "10.96.0.21").port(tcp("http", 80, TCP_PORT));
    fx.manifests
        .write(
            "services.yaml",
            &[
                web.to_value(),
                web.slice("a").ready([pod_ip(0, false)]).to_value(),
                empty.to_value(),
                empty.slice("a").to_value(),
                notready.to_value(),
                notready
                    .slice("a")
                    .endpoint(Endpoint::ready(pod_ip(0, false)).conditions(false, false, false))
                    .to_value(),
            ],
        )
        .unwrap();
    fx.start_agent().unwrap();

    let ok = one(&fx, "10.96.0.10:80");
    assert_eq!(tally(std::slice::from_ref(&ok)).len(), 1);
    assert_fails_at_once(
        &one(&fx, "10.96.0.20:80"),
        libc::ECONNREFUSED,
        "no endpoints",
    );
    assert_fails_at_once(
        &one(&fx, "10.96.0.21:80"),
        libc::ECONNREFUSED,
        "endpoint not ready",
    );
    assert_fails_at_once(
        &one(&fx, "10.96.0.10:81"),
        libc::ECONNREFUSED,
        "undefined port",
    );
    assert_fails_at_once(
        &one(&fx, "10.96.0.20:443"),
        libc::ECONNREFUSED,
        "undefined port",
    );
}

/// internalTrafficPolicy: Local uses only this node's (node-a) endpoints; with none, the
/// connect fails at once with EHOSTUNREACH (dropped, not rejected). The same endpoints under
/// policy Cluster work, and a Local service with one local endpoint uses only that one.
#[test]
fn internal_traffic_policy_local() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 2).unwrap();
    fx.standard_backends(2).unwrap();
    let remote = |i| Endpoint::ready(pod_ip(i, false)).on_node("node-b");
    let local = Service::new("local", "10.96.0.30")
        .port(tcp("http", 80, TCP_PORT))
        .internal_traffic_local();
    let cluster = Service::new("cluster", "10.96.0.31").port(tcp("http", 80, TCP_PORT));
    let mixed = Service::new("mixed", "10.96.0.32")
        .port(tcp("http", 80, TCP_PORT))
        .internal_traffic_local();
    fx.manifests
        .write(
            "services.yaml",
            &[
                local.to_value(),
                local
                    .slice("a")
                    .endpoint(remote(0))
                    .endpoint(remote(1))
                    .to_value(),
                cluster.to_value(),
                cluster
                    .slice("a")
                    .endpoint(remote(0))
                    .endpoint(remote(1))
                    .to_value(),
                mixed.to_value(),
                mixed
                    .slice("a")
                    .endpoint(remote(0))
                    .endpoint(Endpoint::ready(pod_ip(1, false)))
                    .to_value(),
            ],
        )
        .unwrap();
    fx.start_agent().unwrap();

    assert_fails_at_once(
        &one(&fx, "10.96.0.30:80"),
        libc::EHOSTUNREACH,
        "Local, no local endpoints",
    );
    let counts = tally(
        &fx.client()
            .tcp("10.96.0.31:80".parse().unwrap(), 30)
            .unwrap(),
    );
    assert_eq!(
        counts.len(),
        2,
        "Cluster policy uses the remote endpoints: {counts:?}"
    );
    // be-0 is on node-b: picked with p = 1/2 per connection if the policy were ignored.
    let replies = fx
        .client()
        .tcp("10.96.0.32:80".parse().unwrap(), 30)
        .unwrap();
    assert_all_from(&replies, "be-1", 30);
}
