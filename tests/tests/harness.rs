//! Self-tests of the harness: the topology carries traffic, and nothing a test creates
//! survives it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clusterip_tests::cgroup::Cgroup;
use clusterip_tests::fixture::{Fixture, TCP_PORT, UDP_PORT, links};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::{CLIENT_V4, CLIENT_V6, Topology, pod_ip};
use clusterip_tests::process::{ClientCtx, Listen, start_backend, tally};
use clusterip_tests::{require_env, require_root};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Without any eBPF: clients in the client netns and cgroup reach backends in the pods netns
/// on IPv4 and IPv6, and the backends see the client's address. Then the guards remove the
/// netns and the cgroup (killing what is left in it).
#[test]
fn topology_carries_traffic_and_guards_clean_up() {
    let env = require_root!();
    let topo = Topology::new(2).unwrap();
    let cgroup = Cgroup::new().unwrap();
    let mut listen = Listen::default();
    for v6 in [false, true] {
        listen.tcp.push(SocketAddr::new(pod_ip(1, v6), TCP_PORT));
        listen.udp.push(SocketAddr::new(pod_ip(1, v6), UDP_PORT));
    }
    let backend = start_backend(Path::new(env.bins.backend), &topo.pods, "be-1", &listen).unwrap();
    let client = ClientCtx {
        bin: Path::new(env.bins.client),
        netns: &topo.client,
        cgroup: &cgroup,
    };

    for (v6, seen) in [
        (false, CLIENT_V4.to_string()),
        (true, CLIENT_V6.to_string()),
    ] {
        let addr = SocketAddr::new(pod_ip(1, v6), TCP_PORT);
        let replies = client.tcp(addr, 3).unwrap();
        assert_eq!(tally(&replies).get("be-1"), Some(&3));
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()));
            assert_eq!(r.seen_client(), Some(seen.as_str()));
        }
        let addr = SocketAddr::new(pod_ip(1, v6), UDP_PORT);
        let replies = client.udp_unconnected(addr, 2).unwrap();
        assert_eq!(tally(&replies).get("be-1"), Some(&2));
        assert!(
            replies.iter().all(|r| r.from == Some(addr.to_string())),
            "{replies:?}"
        );
    }
    // Pod 0's address exists but nothing listens there: a real RST, ECONNREFUSED.
    let refused = client
        .tcp(SocketAddr::new(pod_ip(0, false), TCP_PORT), 1)
        .unwrap();
    assert_eq!(refused[0].errno, Some(libc::ECONNREFUSED), "{refused:?}");

    // A process left behind in the cgroup is killed by the guard.
    let mut hold = std::process::Command::new("sleep");
    hold.arg("600");
    clusterip_tests::process::enter(&mut hold, Some(&topo.client), Some(&cgroup)).unwrap();
    let sleeper = hold.spawn().unwrap();
    assert_eq!(cgroup.procs(), vec![sleeper.id() as i32]);

    let names = [topo.client.name().to_owned(), topo.pods.name().to_owned()];
    let cgroup_path = cgroup.path().to_owned();
    drop(backend);
    drop(cgroup);
    drop(topo);
    assert!(!cgroup_path.exists(), "{} remains", cgroup_path.display());
    for n in &names {
        assert!(!netns_exists(n), "netns {n} remains");
    }
    let mut sleeper = sleeper;
    let status = sleeper.wait().unwrap();
    assert!(
        !status.success(),
        "the sleeper in the cgroup was killed: {status}"
    );
}

/// A whole test with the agent running: afterwards no netns, cgroup, pin dir, link, backend
/// or manifest directory of it is left.
#[test]
fn nothing_remains_after_a_test() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 2).unwrap();
    fx.standard_backends(2).unwrap();
    let svc = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let slice = svc.slice("a").ready([pod_ip(0, false), pod_ip(1, false)]);
    fx.manifests
        .write("web.yaml", &[svc.to_value(), slice.to_value()])
        .unwrap();
    fx.start_agent().unwrap();
    let replies = fx
        .client()
        .tcp("10.96.0.10:80".parse().unwrap(), 5)
        .unwrap();
    tally(&replies);

    let cgroup_id = fx.cgroup.id().unwrap();
    let our_links: Vec<u32> = links()
        .unwrap()
        .iter()
        .filter(|l| l.cgroup_id == Some(cgroup_id))
        .map(|l| l.id)
        .collect();
    assert_eq!(our_links.len(), 8, "one link per hook while the agent runs");
    let names = [
        fx.topo.client.name().to_owned(),
        fx.topo.pods.name().to_owned(),
    ];
    let cgroup_path = fx.cgroup.path().to_owned();
    let pins = fx.pins.path().to_owned();
    let manifests = fx.manifests.root().to_owned();
    let agent_pid = fx.agent().pid().unwrap();
    let mut pids = fx.backend_pids();
    pids.push(agent_pid);
    assert!(pins.exists());

    drop(fx);

    for n in &names {
        assert!(!netns_exists(n), "netns {n} remains");
    }
    assert!(!cgroup_path.exists(), "{} remains", cgroup_path.display());
    assert!(!pins.exists(), "{} remains", pins.display());
    assert!(!manifests.exists(), "{} remains", manifests.display());
    // Links may take a moment to be released after their last fd/pin is gone.
    let mut remaining = Vec::new();
    for _ in 0..50 {
        let now: Vec<u32> = links().unwrap().iter().map(|l| l.id).collect();
        remaining = our_links
            .iter()
            .filter(|id| now.contains(id))
            .copied()
            .collect();
        if remaining.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(remaining.is_empty(), "links {remaining:?} remain");
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains("cip-backend") && !cmdline.contains("clusterip-agent"),
            "process {pid} ({cmdline}) remains"
        );
    }
}
