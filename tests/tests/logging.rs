//! The programs' own decision logs: printed by the agent when it runs with debug logging
//! (RUST_LOG=debug), absent otherwise (the programs are then loaded with logging off).

use std::time::Duration;

use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::require_env;

/// Lines of the eBPF programs (log target `clusterip::...`, not `clusterip_agent::...`).
fn ebpf_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains(" clusterip::"))
        .collect()
}

#[test]
fn ebpf_decisions_are_logged_only_with_debug_logging() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 1).unwrap();
    fx.standard_backends(1).unwrap();
    let svc = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let empty = Service::new("empty", "10.96.0.11").port(tcp("http", 80, TCP_PORT));
    fx.manifests
        .write(
            "web.yaml",
            &[
                svc.to_value(),
                svc.slice("a").ready([pod_ip(0, false)]).to_value(),
                empty.to_value(),
            ],
        )
        .unwrap();
    fx.start_agent().unwrap();
    let vip = "10.96.0.10:80".parse().unwrap();
    let refused = "10.96.0.11:80".parse().unwrap();

    // Default filter (agent debug, eBPF not): traffic works and the programs say nothing.
    let mark = fx.agent().log_len();
    assert!(fx.client().tcp(vip, 3).unwrap().iter().all(|r| r.is_ok()));
    assert_eq!(fx.client().tcp(refused, 1).unwrap()[0].errno, Some(111));
    std::thread::sleep(Duration::from_millis(300));
    let lines = fx.agent().lines();
    assert!(
        ebpf_lines(&lines[mark..]).is_empty(),
        "eBPF lines without debug logging: {:?}",
        ebpf_lines(&lines[mark..])
    );

    // RUST_LOG=debug: the restarted agent loads the programs with logging on and prints
    // the service hit, the backend chosen and the refusal.
    fx.agent().restart_with_log("debug").unwrap();
    fx.agent().wait_synced(Duration::from_secs(15)).unwrap();
    let mark = fx.agent().log_len();
    assert!(fx.client().tcp(vip, 3).unwrap().iter().all(|r| r.is_ok()));
    assert_eq!(fx.client().tcp(refused, 1).unwrap()[0].errno, Some(111));
    let agent = fx.agent();
    agent
        .wait_line_since(
            mark,
            &["clusterip::", "10.96.0.10:80 -> 10.200.0.11:8080"],
            Duration::from_secs(5),
        )
        .unwrap();
    agent
        .wait_line_since(
            mark,
            &["clusterip::", "has no backends: refused"],
            Duration::from_secs(5),
        )
        .unwrap();
}
