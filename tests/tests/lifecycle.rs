//! The agent's life: kill -9, restart with a changed table, cleanup.

use std::collections::BTreeSet;
use std::time::Duration;

use clusterip_tests::agent::DumpEntry;
use clusterip_tests::fixture::{ECHO_PORT, Fixture, TCP_PORT, UDP_PORT, links};
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::{assert_all_from, tally};
use clusterip_tests::require_env;

fn v4(i: usize) -> std::net::IpAddr {
    pod_ip(i, false)
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

/// Asserts that exactly one program is attached per hook (8 hooks) and that the cgroup has
/// exactly 8 links.
fn assert_attached_once(fx: &Fixture) {
    let progs = fx.cgroup_progs().unwrap();
    let types: BTreeSet<String> = progs.iter().map(|p| p.attach_type.to_string()).collect();
    assert_eq!(progs.len(), 8, "8 programs attached: {progs:?}");
    assert_eq!(types.len(), 8, "one per hook: {progs:?}");
    let cgroup_id = fx.cgroup.id().unwrap();
    let ours: Vec<_> = links()
        .unwrap()
        .into_iter()
        .filter(|l| l.cgroup_id == Some(cgroup_id))
        .collect();
    assert_eq!(ours.len(), 8, "8 links on the cgroup: {ours:?}");
}

/// kill -9 of the agent: a connection established before keeps working, new connections
/// still reach every backend through the VIP, `dump` still shows the table.
#[test]
fn agent_kill9_keeps_the_datapath() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let web = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let echo = Service::new("echo", "10.96.0.12").port(tcp("echo", 9000, ECHO_PORT));
    fx.manifests
        .write(
            "services.yaml",
            &[
                web.to_value(),
                web.slice("a").ready((0..3).map(v4)).to_value(),
                echo.to_value(),
                echo.slice("a").ready([v4(0)]).to_value(),
            ],
        )
        .unwrap();
    fx.start_agent().unwrap();
    let expected = vec![
        DumpEntry::new(
            "10.96.0.10",
            80,
            "TCP",
            &["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"],
            None,
        ),
        DumpEntry::new("10.96.0.12", 9000, "TCP", &["10.200.0.11:9000"], None),
    ];
    assert_eq!(fx.dump().unwrap(), expected);

    let mut held = fx
        .client()
        .hold("10.96.0.12:9000".parse().unwrap())
        .unwrap();
    assert_eq!(
        held.greeting.peer.as_deref(),
        Some("10.96.0.12:9000"),
        "{:?}",
        held.greeting
    );
    assert_eq!(held.greeting.backend(), Some("be-0"), "{:?}", held.greeting);
    let r = held.ping("before").unwrap();
    assert_eq!(
        (r.alive, r.reply.as_deref()),
        (Some(true), Some("before")),
        "{r:?}"
    );

    fx.agent().kill9().unwrap();

    let r = held.ping("after").unwrap();
    assert_eq!(
        (r.alive, r.reply.as_deref()),
        (Some(true), Some("after")),
        "{r:?}"
    );
    let replies = fx
        .client()
        .tcp("10.96.0.10:80".parse().unwrap(), 60)
        .unwrap();
    let counts = tally(&replies);
    assert!(
        replies
            .iter()
            .all(|r| r.peer.as_deref() == Some("10.96.0.10:80")),
        "{replies:?}"
    );
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["be-0", "be-1", "be-2"],
        "{counts:?}"
    );
    assert_eq!(fx.dump().unwrap(), expected);
    assert_attached_once(&fx);
}

/// kill -9, edit the manifests, restart: the restarted agent adopts the pinned state and
/// applies the new table; nothing lost (the unchanged service still works), nothing
/// duplicated (`dump` is exactly the new table, one program and one link per hook).
#[test]
fn agent_restart_reconciles_without_loss_or_duplicates() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let a = Service::new("a", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let b = Service::new("b", "10.96.0.11")
        .port(tcp("http", 80, TCP_PORT))
        .port(udp("dns", 53, UDP_PORT));
    let c = Service::new("c", "10.96.0.13").port(tcp("http", 80, TCP_PORT));
    fx.manifests
        .write(
            "a.yaml",
            &[a.to_value(), a.slice("x").ready([v4(0), v4(1)]).to_value()],
        )
        .unwrap();
    fx.manifests
        .write(
            "b.yaml",
            &[b.to_value(), b.slice("x").ready([v4(2)]).to_value()],
        )
        .unwrap();
    fx.start_agent().unwrap();
    let b_entries = [
        DumpEntry::new("10.96.0.11", 53, "UDP", &["10.200.0.13:5353"], None),
        DumpEntry::new("10.96.0.11", 80, "TCP", &["10.200.0.13:8080"], None),
    ];
    let mut expected = vec![DumpEntry::new(
        "10.96.0.10",
        80,
        "TCP",
        &["10.200.0.11:8080", "10.200.0.12:8080"],
        None,
    )];
    expected.extend(b_entries.iter().cloned());
    expected.sort();
    assert_eq!(fx.dump().unwrap(), expected);
    assert_attached_once(&fx);

    fx.agent().kill9().unwrap();
    // a: be-0 removed, be-2 added, with affinity now; c: new.
    let a2 = a.clone().affinity(300);
    fx.manifests
        .write(
            "a.yaml",
            &[
                a2.to_value(),
                a2.slice("x").ready([v4(1), v4(2)]).to_value(),
            ],
        )
        .unwrap();
    fx.manifests
        .write(
            "c.yaml",
            &[c.to_value(), c.slice("x").ready([v4(0)]).to_value()],
        )
        .unwrap();
    fx.agent().restart().unwrap();
    fx.agent().wait_synced(Duration::from_secs(15)).unwrap();

    let mut expected = vec![
        DumpEntry::new(
            "10.96.0.10",
            80,
            "TCP",
            &["10.200.0.12:8080", "10.200.0.13:8080"],
            Some(300),
        ),
        DumpEntry::new("10.96.0.13", 80, "TCP", &["10.200.0.11:8080"], None),
    ];
    expected.extend(b_entries.iter().cloned());
    expected.sort();
    assert_eq!(fx.dump().unwrap(), expected);
    assert_attached_once(&fx);

    let counts = tally(
        &fx.client()
            .tcp("10.96.0.10:80".parse().unwrap(), 10)
            .unwrap(),
    );
    assert_eq!(counts.len(), 1, "a has affinity now: {counts:?}");
    assert!(!counts.contains_key("be-0"), "be-0 left a: {counts:?}");
    // b is unchanged and still works; c is new.
    let client = fx.client();
    assert_all_from(&client.tcp(addr("10.96.0.11:80"), 10).unwrap(), "be-2", 10);
    assert_all_from(
        &client.udp_connected(addr("10.96.0.11:53"), 3).unwrap(),
        "be-2",
        3,
    );
    assert_all_from(&client.tcp(addr("10.96.0.13:80"), 10).unwrap(), "be-0", 10);
}

/// `clusterip-agent cleanup` (after kill -9, so the agent cannot have done it): no program
/// is attached to the cgroup any more, no link of it remains, the pin dir is gone, and the
/// VIP is no longer translated (the client netns has no route to it: ENETUNREACH).
#[test]
fn cleanup_detaches_and_unpins() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 1).unwrap();
    fx.standard_backends(1).unwrap();
    let web = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    fx.manifests
        .write(
            "web.yaml",
            &[web.to_value(), web.slice("a").ready([v4(0)]).to_value()],
        )
        .unwrap();
    fx.start_agent().unwrap();
    tally(
        &fx.client()
            .tcp("10.96.0.10:80".parse().unwrap(), 3)
            .unwrap(),
    );
    fx.agent().kill9().unwrap();
    assert_attached_once(&fx);

    let out = std::process::Command::new(&fx.env.agent_bin)
        .arg("cleanup")
        .arg("--bpffs")
        .arg(fx.pins.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "cleanup failed: {out:?}");

    let progs = fx.cgroup_progs().unwrap();
    assert!(progs.is_empty(), "still attached: {progs:?}");
    let cgroup_id = fx.cgroup.id().unwrap();
    let ours: Vec<_> = links()
        .unwrap()
        .into_iter()
        .filter(|l| l.cgroup_id == Some(cgroup_id))
        .collect();
    assert!(ours.is_empty(), "links remain: {ours:?}");
    assert!(
        !fx.pins.path().exists(),
        "{} remains",
        fx.pins.path().display()
    );
    let r = fx
        .client()
        .run_mode("tcp", "10.96.0.10:80".parse().unwrap(), 1, 2000)
        .unwrap();
    assert_eq!(r[0].errno, Some(libc::ENETUNREACH), "{r:?}");
}
