//! The agent fits the memory limit the DaemonSet gives it. Since Linux 5.11 the kernel charges
//! BPF map memory to the memory cgroup of the process that creates the maps, so the pod's
//! limit must hold the agent's heap *and* its maps. These tests start the agent inside a memory
//! cgroup limited to exactly `deploy/daemonset.yaml`'s limit, at the default map sizes, with
//! the socket hooks only and with TC, and check a request through a VIP; and with a limit far
//! too small, that the agent says the limit is the reason.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clusterip_tests::agent::Agent;
use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::memcg::{MemoryCgroup, parse_quantity};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::node::NodeFixture;
use clusterip_tests::process::tally;
use clusterip_tests::require_env;

/// The agent container's `resources.limits.memory` in deploy/daemonset.yaml, in bytes.
fn daemonset_limit() -> u64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/daemonset.yaml");
    let ds: serde_json::Value = serde_saphyr::from_str(&text).expect("daemonset YAML");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let agent = containers
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the agent container");
    let limit = agent["resources"]["limits"]["memory"]
        .as_str()
        .expect("limits.memory");
    parse_quantity(limit).expect("a memory quantity")
}

fn web(ip: &str) -> Service {
    Service::new("web", ip).port(tcp("http", 80, TCP_PORT))
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

/// Socket hooks only, default sizes, under the DaemonSet's limit: a request through the VIP
/// reaches every backend, and the cgroup really carried the agent (its peak includes the maps).
#[test]
fn socket_hooks_fit_the_daemonset_limit() {
    let mut env = require_env!();
    let limit = daemonset_limit();
    let memcg = MemoryCgroup::new(limit).unwrap();
    env.agent_bin = memcg.wrapper(&env.agent_bin).unwrap();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let svc = web("10.96.0.10");
    fx.manifests
        .write(
            "web.yaml",
            &[
                svc.to_value(),
                svc.slice("a")
                    .ready((0..3).map(|i| pod_ip(i, false)))
                    .to_value(),
            ],
        )
        .unwrap();
    fx.start_agent().unwrap();
    let replies = fx
        .client()
        .tcp("10.96.0.10:80".parse().unwrap(), 30)
        .unwrap();
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
    assert_eq!(tally(&replies).len(), 3, "{:?}", tally(&replies));
    let maps = maps_bytes(&fx.env.agent_bin, fx.pins.path());
    let peak = memcg.peak().unwrap();
    eprintln!(
        "{}: limit {:.0} MiB, peak {:.1} MiB, maps {:.1} MiB",
        memcg.kind(),
        mib(limit),
        mib(peak),
        mib(maps)
    );
    assert!(
        peak >= maps,
        "the cgroup's peak ({peak}) is below the maps' memory ({maps}): the agent ran elsewhere"
    );
}

/// TC (the per-packet path) with its default conntrack size, under the DaemonSet's limit: a
/// request from a client outside any cgroup of ours reaches the backends through the VIP.
#[test]
fn tc_fits_the_daemonset_limit() {
    let mut env = require_env!();
    let limit = daemonset_limit();
    let memcg = MemoryCgroup::new(limit).unwrap();
    env.agent_bin = memcg.wrapper(&env.agent_bin).unwrap();
    let mut fx = NodeFixture::new(env, 3).unwrap();
    fx.standard_backends().unwrap();
    let svc = web("10.96.0.10");
    fx.manifests
        .write(
            "web.yaml",
            &[
                svc.to_value(),
                svc.slice("a")
                    .ready((0..3).map(|i| clusterip_tests::node::pod_ip(i, false)))
                    .to_value(),
            ],
        )
        .unwrap();
    fx.start_agent(&[]).unwrap();
    let addr: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let replies = fx.client().tcp(addr, 30).unwrap();
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
    assert_eq!(tally(&replies).len(), 3, "{:?}", tally(&replies));
    let maps = maps_bytes(&fx.env.agent_bin, fx.pins.path());
    let peak = memcg.peak().unwrap();
    eprintln!(
        "{}: limit {:.0} MiB, peak {:.1} MiB, maps {:.1} MiB (with conntrack)",
        memcg.kind(),
        mib(limit),
        mib(peak),
        mib(maps)
    );
    assert!(
        peak >= maps,
        "peak {peak} < maps {maps}: the agent ran elsewhere"
    );
}

/// Maps far larger than the limit (a million reverse-NAT entries per family, about 220 MiB,
/// under 64 MiB): the agent fails at start and its error names the memory cgroup, its limit
/// and the flags that make the maps smaller, instead of blaming privileges or old pins.
#[test]
fn a_limit_too_small_is_named_as_the_cause() {
    let mut env = require_env!();
    let memcg = MemoryCgroup::new(64 << 20).unwrap();
    env.agent_bin = memcg.wrapper(&env.agent_bin).unwrap();
    let mut fx = Fixture::new(env, 1).unwrap();
    let svc = web("10.96.0.10");
    fx.manifests.write("web.yaml", &[svc.to_value()]).unwrap();
    let mut agent = Agent::start_in(
        &fx.env.agent_bin,
        &fx.manifests.dir(),
        fx.cgroup.path(),
        fx.pins.path(),
        None,
        &["--sock-revnat-max", "1048576"],
    )
    .unwrap();
    for _ in 0..200 {
        if agent.exit_status().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = agent.exit_status();
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}: {:#?}",
        agent.lines()
    );
    let lines = agent.lines();
    let line = lines
        .iter()
        .find(|l| l.contains("creating the maps failed"))
        .unwrap_or_else(|| panic!("no memory-limit error: {lines:#?}"));
    for want in [
        memcg.path().to_string_lossy().as_ref(),
        "limited to 64.0 MiB",
        "memory cgroup",
        "--map-dynamic-size-ratio",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line:?}");
    }
    assert!(!line.contains("run the agent as root"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        agent.exit_status().is_some_and(|s| !s.success()),
        "still running"
    );
    fx.agent = Some(agent);
}

/// `bytes_memlock` of every map, as `dump --maps --json` reports it.
fn maps_bytes(bin: &Path, pins: &Path) -> u64 {
    let out = std::process::Command::new(bin)
        .args(["dump", "--maps", "--json", "--bpffs"])
        .arg(pins)
        .output()
        .expect("dump --maps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    maps.as_array()
        .expect("a list")
        .iter()
        .map(|m| m["bytes_memlock"].as_u64().unwrap_or(0))
        .sum()
}
