//! Make-before-break: connections racing updates of their service never see a half-written
//! service (a count covering a slot not written yet, or a slot naming a deleted backend would
//! make the connect fail or go nowhere).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::tally;
use clusterip_tests::require_env;

/// While a client makes sequential connections to the VIP, the EndpointSlice is rewritten
/// every 60 ms, cycling through backend sets that grow, shrink and swap ({0,1} → {2} →
/// {0,1,2} → {1}), so the agent applies an update on nearly every poll. Every single
/// connection must reach one of the backends.
#[test]
fn connects_racing_updates_always_reach_a_backend() {
    let env = require_env!();
    let mut fx = Fixture::new(env, 3).unwrap();
    fx.standard_backends(3).unwrap();
    let svc = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let sets: [&[usize]; 4] = [&[0, 1], &[2], &[0, 1, 2], &[1]];
    let slice_of = |set: &[usize]| {
        svc.slice("a")
            .ready(set.iter().map(|i| pod_ip(*i, false)))
            .to_value()
    };
    fx.manifests
        .write("web.yaml", &[svc.to_value(), slice_of(sets[0])])
        .unwrap();
    fx.start_agent().unwrap();
    let mark = fx.agent().log_len();
    let vip = "10.96.0.10:80".parse().unwrap();

    // A writer rewrites the slice every 60 ms while two clients make batches of sequential
    // connections, until the agent has applied at least 40 updates (bounded by 60 s).
    let done = AtomicBool::new(false);
    let mut replies = Vec::new();
    let mut updates = 0;
    std::thread::scope(|s| {
        let done = &done;
        let manifests = &fx.manifests;
        let svc = &svc;
        s.spawn(move || {
            let mut writes = 0usize;
            while !done.load(Ordering::SeqCst) {
                writes += 1;
                let set = sets[writes % sets.len()];
                manifests
                    .write("web.yaml", &[svc.to_value(), slice_of(set)])
                    .unwrap();
                std::thread::sleep(Duration::from_millis(60));
            }
        });
        let client = fx.client();
        let clients: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    let mut replies = Vec::new();
                    while !done.load(Ordering::SeqCst) {
                        replies.extend(client.tcp(vip, 500).unwrap());
                    }
                    replies
                })
            })
            .collect();
        let started = Instant::now();
        while updates < 40 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
            updates = applied_updates(&fx.agent.as_ref().unwrap().lines()[mark..]);
        }
        done.store(true, Ordering::SeqCst);
        for c in clients {
            replies.extend(c.join().unwrap());
        }
    });

    let failures: Vec<_> = replies.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed during {updates} updates: first {:?}",
        failures.len(),
        replies.len(),
        failures.first()
    );
    let counts = tally(&replies);
    assert!(
        counts
            .keys()
            .all(|b| ["be-0", "be-1", "be-2"].contains(&b.as_str())),
        "replies from unexpected backends: {counts:?}"
    );
    // The race was real: the table changed many times while connections were being made.
    assert!(updates >= 40, "only {updates} updates applied in 60 s");
    eprintln!(
        "{} connections across {updates} updates: {counts:?}",
        replies.len()
    );
}

fn applied_updates(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.contains("synced") && l.contains("updated=1"))
        .count()
}
