//! What the per-packet programs cost, guarded against regressions: fixed packets run through
//! each program with BPF_PROG_TEST_RUN next to a program that only returns (`tc_floor`,
//! `xdp_floor`), run the same way, interleaved round by round. The kernel times each run
//! itself (its `duration`); a cost is the 10th percentile of many single runs (each starts from
//! the same packet, as a real one would: a repeated run would see the packet its previous
//! run rewrote). The ratio to the floor cancels the machine's speed and most of its noise, not
//! the CPU's make (the floor is mostly the kernel's timer): baselines are kept per CPU model in
//! `tests/cost-baseline.json`, and the test fails when a ratio grows more than 30% over its
//! CPU's (measured twice before failing). On a CPU without a baseline it checks the paths and
//! prints the costs. `CLUSTERIP_COST_BASELINE=write` records this CPU's ratios (say why in the
//! commit).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clusterip_common::{BE_FLAG_LOCAL, SVC_FLAG_EXTERNAL, SVC_FLAG_NODE_ADDR};
use clusterip_tests::packet::*;
use clusterip_tests::require_datapath;

/// How much a ratio may grow over its baseline.
const TOLERANCE: f64 = 1.30;
/// Rounds (each measures every case once, floor and program interleaved) and single runs per
/// measurement.
const ROUNDS: usize = 7;
const RUNS: usize = 400;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 7);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp(
        ip(src),
        sport,
        ip(dst),
        dport,
        Tcp::ack(),
        b"GET / HTTP/1.1\r\n\r\n",
    )
}

/// A packet, the program it goes through, and the verdict it must get (so the measurement
/// is of the path it names).
struct Case {
    name: &'static str,
    prog: &'static str,
    pkt: Vec<u8>,
    ret: u32,
}

impl Case {
    fn floor(&self) -> &'static str {
        if self.prog.starts_with("xdp_") {
            "xdp_floor"
        } else {
            "tc_floor"
        }
    }
}

/// A ClusterIP service with one backend, a node port with a local one, and the flows the
/// cases continue (opened by their first packets).
fn setup(dp: &mut Datapath) -> Vec<Case> {
    dp.add_service(&Svc::new(ip(VIP), 80, PROTO_TCP, 7, &[(ip(BACKEND), 8080)]));
    let mut np = Svc::new(ip(NODE), 30080, PROTO_TCP, 8, &[(ip(BACKEND), 8080)]);
    np.flags = SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_ADDR;
    np.backend_flags = vec![BE_FLAG_LOCAL];
    dp.add_service(&np);

    let syn = tcp(ip(CLIENT), 40000, ip(VIP), 80, Tcp::syn(), b"");
    assert_eq!(dp.tc(&syn).ret, TC_ACT_OK, "the ClusterIP flow opens");
    let syn = tcp(ip(CLIENT), 40001, ip(VIP), 80, Tcp::syn(), b"");
    assert_eq!(dp.xdp(&syn).ret, XDP_PASS, "the XDP flow opens");
    let syn = tcp(ip(OUTSIDE), 50000, ip(NODE), 30080, Tcp::syn(), b"");
    assert_eq!(
        dp.try_run("tc_nodeport", &syn).expect("test run").ret,
        TC_ACT_OK,
        "the node-port flow opens"
    );

    vec![
        Case {
            name: "tc_ingress pod to pod (not a service)",
            prog: "tc_ingress",
            pkt: ack(CLIENT, 40000, OTHER_POD, 8080),
            ret: TC_ACT_UNSPEC,
        },
        Case {
            name: "tc_ingress established, to the cluster IP",
            prog: "tc_ingress",
            pkt: ack(CLIENT, 40000, VIP, 80),
            ret: TC_ACT_OK,
        },
        Case {
            name: "tc_ingress established, the backend's reply",
            prog: "tc_ingress",
            pkt: ack(BACKEND, 8080, CLIENT, 40000),
            ret: TC_ACT_OK,
        },
        Case {
            name: "tc_egress not ICMP",
            prog: "tc_egress",
            pkt: ack(BACKEND, 8080, CLIENT, 40000),
            ret: TC_ACT_UNSPEC,
        },
        Case {
            name: "xdp_ingress pod to pod (not a service)",
            prog: "xdp_ingress",
            pkt: ack(CLIENT, 40001, OTHER_POD, 8080),
            ret: XDP_PASS,
        },
        Case {
            name: "xdp_ingress established, to the cluster IP",
            prog: "xdp_ingress",
            pkt: ack(CLIENT, 40001, VIP, 80),
            ret: XDP_PASS,
        },
        Case {
            name: "tc_nodeport not for a frontend",
            prog: "tc_nodeport",
            pkt: ack(OUTSIDE, 50001, OTHER_POD, 8080),
            ret: TC_ACT_UNSPEC,
        },
        Case {
            name: "tc_nodeport established, local backend",
            prog: "tc_nodeport",
            pkt: ack(OUTSIDE, 50000, NODE, 30080),
            ret: TC_ACT_OK,
        },
    ]
}

/// The 10th percentile: the program's own cost with the least of the machine's noise (a
/// median moved by a third from run to run for the cheapest cases on this shared VM).
fn low(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 10] as f64
}

fn baseline_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cost-baseline.json")
}

/// The CPU's model name (`/proc/cpuinfo`): baselines are kept per model, since how a
/// program's cost compares to the floor (mostly the kernel's timer) depends on the CPU.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Baselines by CPU model, then by case.
type Baselines = BTreeMap<String, BTreeMap<String, f64>>;

/// Every case's ratio to its floor: the median over [`ROUNDS`] rounds, each measuring every
/// case, floor next to program.
fn measure(dp: &Datapath, cases: &[Case]) -> BTreeMap<String, f64> {
    let mut ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut costs: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for _ in 0..ROUNDS {
        for c in cases {
            // Run by run, floor and program alternate, so both see the same moment of the
            // machine (the floor alone moved by a fifth between batches).
            let (mut f, mut g) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
            for _ in 0..RUNS {
                f.extend(dp.durations(c.floor(), &c.pkt, 1));
                g.extend(dp.durations(c.prog, &c.pkt, 1));
            }
            let (floor, prog) = (low(f), low(g));
            ratios
                .entry(c.name)
                .or_default()
                .push(prog / floor.max(1.0));
            let e = costs.entry(c.name).or_default();
            e.0.push(prog);
            e.1.push(floor);
        }
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let measured: BTreeMap<String, f64> = ratios
        .into_iter()
        .map(|(k, v)| (k.to_string(), (mid(v) * 100.0).round() / 100.0))
        .collect();
    for (name, (prog, floor)) in costs {
        eprintln!(
            "{name}: {:.0} ns, floor {:.0} ns, ratio {:.2}",
            mid(prog),
            mid(floor),
            measured[name]
        );
    }
    measured
}

/// The cases over `tolerance` times their baseline, described.
fn over(measured: &BTreeMap<String, f64>, baseline: &BTreeMap<String, f64>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, ratio) in measured {
        let Some(base) = baseline.get(name) else {
            panic!("{name}: no baseline (CLUSTERIP_COST_BASELINE=write)");
        };
        if *ratio > base * TOLERANCE {
            out.push(format!(
                "{name}: {ratio:.2}x the floor, baseline {base:.2}x (+{:.0}%)",
                (ratio / base - 1.0) * 100.0
            ));
        }
    }
    out
}

#[test]
fn per_packet_costs_stay_within_their_baseline() {
    let mut dp = require_datapath!();
    let cases = setup(&mut dp);
    for c in &cases {
        let r = dp.try_run(c.prog, &c.pkt).expect("test run");
        assert_eq!(r.ret, c.ret, "{}: not the path it names", c.name);
    }

    let path = baseline_path();
    let cpu = cpu_model();
    let mut all: Baselines = match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Baselines::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    if std::env::var("CLUSTERIP_COST_BASELINE").as_deref() == Ok("write") {
        // The highest of three measurements: the baseline is what this machine's noise
        // reaches, not its luckiest run.
        let mut worst = measure(&dp, &cases);
        for _ in 0..2 {
            for (k, v) in measure(&dp, &cases) {
                let w = worst.entry(k).or_insert(v);
                *w = w.max(v);
            }
        }
        all.insert(cpu.clone(), worst);
        let text = serde_json::to_string_pretty(&all).expect("serialize");
        std::fs::write(&path, text + "\n").expect("write the baseline");
        eprintln!("wrote {} for {cpu}", path.display());
        return;
    }
    let mut measured = measure(&dp, &cases);
    let Some(baseline) = all.remove(&cpu) else {
        // The paths were checked above and the costs printed; without a baseline of this CPU
        // there is nothing to hold them to.
        eprintln!(
            "no baseline for {cpu:?} in {}: costs printed, not compared \
             (CLUSTERIP_COST_BASELINE=write adds this CPU's)",
            path.display()
        );
        return;
    };
    if !over(&measured, &baseline).is_empty() {
        // A regression shows in every measurement, a noisy moment in one: measure again and
        // keep each case's lower ratio.
        eprintln!("over the baseline; measuring again");
        for (k, v) in measure(&dp, &cases) {
            if let Some(m) = measured.get_mut(&k) {
                *m = m.min(v);
            }
        }
    }
    let over = over(&measured, &baseline);
    assert!(
        over.is_empty(),
        "costs grew more than {:.0}% over the baseline ({}), twice:\n{}",
        (TOLERANCE - 1.0) * 100.0,
        path.display(),
        over.join("\n")
    );
}
