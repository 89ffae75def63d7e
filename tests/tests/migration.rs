//! Pinned maps whose definition changed are migrated by a restarted agent: no `cleanup`,
//! traffic throughout, and state of connections through unchanged entries carried over.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clusterip_tests::fixture::{ECHO_PORT, Fixture, TCP_PORT, UDP_PORT};
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::{ClientCtx, Reply, tally};
use clusterip_tests::require_env;

const WEB: &str = "10.96.0.10:80";
const ECHO: &str = "10.96.0.12:9000";
const DNS: &str = "10.96.0.13:53";
/// Connects made across the restart at most (see the connector).
const MAX_CONNECTS: usize = 10_000;

fn write_services(fx: &Fixture) {
    let web = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let echo = Service::new("echo", "10.96.0.12").port(tcp("echo", 9000, ECHO_PORT));
    let dns = Service::new("dns", "10.96.0.13").port(udp("dns", 53, UDP_PORT));
    let all = || (0..3).map(|i| pod_ip(i, false));
    fx.manifests
        .write(
            "services.yaml",
            &[
                web.to_value(),
                web.slice("a").ready(all()).to_value(),
                echo.to_value(),
                echo.slice("a").ready(all()).to_value(),
                dns.to_value(),
                dns.slice("a").ready(all()).to_value(),
            ],
        )
        .unwrap();
}

/// `bpftool map show pinned PATH` as JSON.
fn map_show(path: &Path) -> serde_json::Value {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map show {}", path.display());
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

fn max_entries(dir: &Path, map: &str) -> u64 {
    map_show(&dir.join(map))["max_entries"]
        .as_u64()
        .expect("max_entries")
}

fn old_pins(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_old"))
        .collect()
}

/// A restart with other map sizes (socket reverse NAT, services, backends) migrates the pinned
/// maps while clients keep connecting: no connect fails, the table is intact, a held TCP
/// connection keeps working, and connected UDP sockets opened before the restart still see
/// the VIP as the source of replies — their reverse-NAT entries were carried over (without
/// them recvmsg would report the backend's address).
#[test]
fn changed_map_sizes_are_migrated_under_traffic() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    write_services(&fx);
    fx.start_agent_with(&["--sock-revnat-max", "16384"])
        .unwrap();
    let pins = fx.pins.path().to_owned();
    assert_eq!(max_entries(&pins, "CIP_RNAT4"), 16384);
    let before = fx.dump().unwrap();

    let mut udp = fx
        .client()
        .ns()
        .udp_connected_multi(DNS.parse().unwrap(), 8)
        .unwrap();
    let first = udp.round().unwrap();
    assert!(
        first.iter().all(|r| r.from.as_deref() == Some(DNS)),
        "{first:?}"
    );
    let mut held = fx.client().hold(ECHO.parse().unwrap()).unwrap();
    assert_eq!(held.greeting.peer.as_deref(), Some(ECHO));

    let done = AtomicBool::new(false);
    let mut replies: Vec<Reply> = Vec::new();
    let mark = fx.agent().log_len();
    std::thread::scope(|s| {
        let done = &done;
        // Borrows only the fields the client needs: the agent is restarted meanwhile.
        let client = ClientCtx {
            bin: Path::new(fx.env.bins.client),
            netns: &fx.topo.client,
            cgroup: &fx.cgroup,
        };
        let connector = s.spawn(move || {
            let mut replies = Vec::new();
            // Bounded: each connect takes a reverse-NAT entry, and more than the 16,384 the
            // first agent has would evict the UDP sockets' entries (LRU) whatever the
            // migration does.
            while !done.load(Ordering::SeqCst) && replies.len() < MAX_CONNECTS {
                replies.extend(client.tcp(WEB.parse().unwrap(), 50).unwrap());
            }
            replies
        });
        std::thread::sleep(Duration::from_millis(300));
        let agent = fx.agent.as_mut().unwrap();
        agent
            .restart_with_args(&[
                "--sock-revnat-max",
                "32768",
                "--service-map-entries",
                "65536",
                "--backend-map-entries",
                "32768",
            ])
            .unwrap();
        agent
            .wait_line_since(mark, &["map migration finished"], Duration::from_secs(20))
            .unwrap();
        agent
            .wait_line_since(mark, &["synced"], Duration::from_secs(5))
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::SeqCst);
        replies = connector.join().unwrap();
    });

    let failed: Vec<_> = replies.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connects failed across the migration: {:?}",
        failed.len(),
        replies.len(),
        failed.first()
    );
    assert!(replies.len() >= 100, "only {} connects", replies.len());
    eprintln!(
        "{} connects across the migration: {:?}",
        replies.len(),
        tally(&replies)
    );

    for (map, want) in [
        ("CIP_RNAT4", 32768),
        ("CIP_RNAT6", 32768),
        ("CIP_SVC4", 65536),
        ("CIP_BE4", 32768),
    ] {
        assert_eq!(max_entries(&pins, map), want, "{map}");
    }
    assert!(
        old_pins(&pins).is_empty(),
        "old pins left: {:?}",
        old_pins(&pins)
    );
    assert_eq!(fx.dump().unwrap(), before);

    let after = udp.round().unwrap();
    assert!(
        after
            .iter()
            .all(|r| r.is_ok() && r.from.as_deref() == Some(DNS)),
        "connected UDP sockets lost their VIP: {after:?}"
    );
    let ping = held.ping("after the migration").unwrap();
    assert_eq!(ping.alive, Some(true), "{ping:?}");
    let lines = fx.agent().lines();
    assert!(
        lines[mark..]
            .iter()
            .any(|l| l.contains("migrated map entries") && l.contains("CIP_RNAT4")),
        "no copy of CIP_RNAT4 logged"
    );
}

/// Pins left by an earlier layout — a service map and an affinity map whose value sizes
/// differ, and a reverse-NAT map moved aside by an agent that died mid-migration — are
/// replaced at start without `cleanup`: the agent says it cannot carry their entries over,
/// rewrites the table, and the VIPs answer.
#[test]
fn pins_of_an_earlier_layout_are_replaced() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    write_services(&fx);
    let pins = fx.pins.path().to_owned();
    std::fs::create_dir_all(&pins).unwrap();
    for (name, kind, key, value) in [
        ("CIP_SVC4", "hash", "12", "12"),
        ("CIP_AFFINITY", "lru_hash", "24", "8"),
        // Same layout as today's, as an interrupted migration leaves it.
        ("CIP_RNAT4_old", "lru_hash", "16", "12"),
    ] {
        let out = Command::new("bpftool")
            .args(["map", "create"])
            .arg(pins.join(name))
            .args(["type", kind, "key", key, "value", value, "entries", "128"])
            .args(["name", name.trim_end_matches("_old")])
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool map create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fx.start_agent().unwrap();
    let lines = fx.agent().lines();
    for map in ["CIP_SVC4", "CIP_AFFINITY"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("map layout changed") && l.contains(map)),
            "{map}: no layout change logged"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("resuming the migration") && l.contains("CIP_RNAT4")),
        "the interrupted migration was not resumed"
    );
    assert!(
        old_pins(&pins).is_empty(),
        "old pins left: {:?}",
        old_pins(&pins)
    );
    assert_eq!(
        map_show(&pins.join("CIP_SVC4"))["bytes_value"].as_u64(),
        Some(16)
    );
    let replies = fx.client().tcp(WEB.parse().unwrap(), 30).unwrap();
    assert!(replies.iter().all(Reply::is_ok), "{replies:?}");
    assert_eq!(tally(&replies).len(), 3, "{:?}", tally(&replies));
    let replies = fx.client().udp_connected(DNS.parse().unwrap(), 5).unwrap();
    assert!(
        replies
            .iter()
            .all(|r| r.is_ok() && r.from.as_deref() == Some(DNS)),
        "{replies:?}"
    );
}
