//! Manifest edits while the agent runs: good ones take effect within a second, bad ones are
//! reported and change nothing.

use std::time::{Duration, Instant};

use clusterip_tests::agent::DumpEntry;
use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::{assert_all_from, tally};
use clusterip_tests::require_env;

/// The endpoints of a running service are replaced by a single different backend: from the
/// moment the file is renamed into place until new connections all go to it takes < 1 s
/// (the requirement), and from then on every new connection goes there.
#[test]
fn yaml_edit_moves_traffic_within_a_second() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let before = svc.slice("a").ready([pod_ip(0, false), pod_ip(1, false)]);
    fx.manifests
        .write("web.yaml", &[svc.to_value(), before.to_value()])
        .unwrap();
    fx.start_agent().unwrap();
    let vip = "10.96.0.10:80".parse().unwrap();
    let counts = tally(&fx.client().tcp(vip, 20).unwrap());
    assert!(
        !counts.contains_key("be-2"),
        "be-2 is not a backend yet: {counts:?}"
    );

    let mark = fx.agent().log_len();
    let after = svc.slice("a").ready([pod_ip(2, false)]);
    let written = Instant::now();
    fx.manifests
        .write("web.yaml", &[svc.to_value(), after.to_value()])
        .unwrap();
    // Poll with real connections (each client run takes a few ms): the change is observed
    // when a batch of 3 new connections all reach be-2.
    let observed = loop {
        let replies = fx.client().tcp(vip, 3).unwrap();
        let counts = tally(&replies);
        if counts.keys().eq(["be-2"]) {
            break written.elapsed();
        }
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "traffic never moved: {counts:?}"
        );
    };
    eprintln!("traffic moved {observed:?} after the write");
    assert!(
        observed < Duration::from_secs(1),
        "traffic moved only after {observed:?}"
    );
    fx.agent()
        .wait_line_since(mark, &["synced"], Duration::from_secs(1))
        .unwrap();

    assert_all_from(&fx.client().tcp(vip, 20).unwrap(), "be-2", 20);
    assert_eq!(
        fx.dump().unwrap(),
        [DumpEntry::new(
            "10.96.0.10",
            80,
            "TCP",
            &["10.200.0.13:8080"],
            None
        )]
    );
}

/// One file becomes a YAML syntax error, another gets a Service with an invalid cluster IP,
/// a third gets a valid change. The agent names both bad files in its log, applies the good
/// change, and the bad objects keep their last good state: traffic to them still works with
/// the old backends.
#[test]
fn bad_input_is_reported_and_keeps_last_good_state() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let one = Service::new("one", "10.96.0.41").port(tcp("http", 80, TCP_PORT));
    let two = Service::new("two", "10.96.0.42").port(tcp("http", 80, TCP_PORT));
    let three = Service::new("three", "10.96.0.43").port(tcp("http", 80, TCP_PORT));
    let one_slice = one.slice("a").ready([pod_ip(0, false)]);
    let two_slice = two.slice("a").ready([pod_ip(1, false)]);
    fx.manifests
        .write("one.yaml", &[one.to_value(), one_slice.to_value()])
        .unwrap();
    fx.manifests
        .write("two.yaml", &[two.to_value(), two_slice.to_value()])
        .unwrap();
    fx.manifests
        .write(
            "three.yaml",
            &[
                three.to_value(),
                three.slice("a").ready([pod_ip(2, false)]).to_value(),
            ],
        )
        .unwrap();
    fx.start_agent().unwrap();
    expect(&fx, "10.96.0.41", "be-0");
    expect(&fx, "10.96.0.42", "be-1");
    expect(&fx, "10.96.0.43", "be-2");

    let mark = fx.agent().log_len();
    fx.manifests
        .write_raw(
            "one.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: one\n  spec: [\n",
        )
        .unwrap();
    let mut bad_two = two.clone();
    bad_two.cluster_ip = "10.96.0.300".into();
    fx.manifests
        .write("two.yaml", &[bad_two.to_value(), two_slice.to_value()])
        .unwrap();
    fx.manifests
        .write(
            "three.yaml",
            &[
                three.to_value(),
                three.slice("a").ready([pod_ip(0, false)]).to_value(),
            ],
        )
        .unwrap();

    let agent = fx.agent();
    let line = agent
        .wait_line_since(mark, &["one.yaml"], Duration::from_secs(5))
        .unwrap();
    eprintln!("syntax error reported: {line}");
    let line = agent
        .wait_line_since(mark, &["two.yaml"], Duration::from_secs(5))
        .unwrap();
    eprintln!("invalid IP reported: {line}");
    // The valid change is applied despite the bad files.
    let start = Instant::now();
    loop {
        let counts = tally(
            &fx.client()
                .tcp("10.96.0.43:80".parse().unwrap(), 3)
                .unwrap(),
        );
        if counts.keys().eq(["be-0"]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "three never moved to be-0: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    expect(&fx, "10.96.0.41", "be-0");
    expect(&fx, "10.96.0.42", "be-1");
    expect(&fx, "10.96.0.43", "be-0");
    assert_eq!(
        fx.dump().unwrap(),
        [
            DumpEntry::new("10.96.0.41", 80, "TCP", &["10.200.0.11:8080"], None),
            DumpEntry::new("10.96.0.42", 80, "TCP", &["10.200.0.12:8080"], None),
            DumpEntry::new("10.96.0.43", 80, "TCP", &["10.200.0.11:8080"], None),
        ]
    );
}

/// 5 connections to VIP:80 all answered by `be`.
fn expect(fx: &Fixture, vip: &str, be: &str) {
    let replies = fx
        .client()
        .tcp(format!("{vip}:80").parse().unwrap(), 5)
        .unwrap();
    assert_all_from(&replies, be, 5);
}
