//! `cargo xtask bench`, NodePort part: an external client reaching a node port whose backends
//! run on another node (node B: the source-NAT path) or on the node itself (node A), through
//! clusterip's per-packet NodePort datapath or kube-proxy's iptables / nftables NodePort rules,
//! against the same pods reached directly (the floor), on one topology, in one run, cases
//! interleaved round by round. Topology and services: `clusterip_tests::npbench`.
//!
//! Cases: `direct` (the client to the backend pod IPs through a route via node A, no NAT),
//! `tc` (the agent in node A with `--socket-lb=false --nodeport-iface` on node A's two
//! veths), `xdp` (the same with `--nodeport-xdp`: flows to remote backends translated and
//! sent at XDP, the rest left to TC), `iptables` /
//! `iptables-nft` (kube-proxy's iptables mode, legacy or nf_tables backend), `nftables`
//! (kube-proxy's nftables mode). N other NodePort services with fake endpoints come first in
//! kube-proxy's chains, the measured ones last.
//!
//! Measured per path: new connections per second with one request per connection (`wrk
//! -H 'Connection: close'`, concurrency 1 with one thread and 16 with two; the client's TCP
//! `ActiveOpens` counter checks one connection per request; SYN retransmissions counted),
//! request/response latency on one kept-alive connection (mean, p50, p99), and the time to
//! program the N + 2 services. Results as ratios to `direct` of the same path, in
//! `<out>/nodeport.{md,json}`.
//!
//! Options (after `--`): `--parts direct,tc,xdp,iptables,iptables-nft,nftables` (`socket` is
//! accepted and skipped: socket-LB does not apply to clients outside the node),
//! `--services 1,1000,10000`, `--rounds N`, `--duration SECONDS`, `--requests N`, `--smoke`,
//! `--out DIR`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusterip_tests::bench::{AgentProc, dispatch, machine};
use clusterip_tests::bins;
use clusterip_tests::bpffs::PinDir;
use clusterip_tests::env::{Env, prerequisites};
use clusterip_tests::kubeproxy::{
    NFT_TABLE, iptables_cleanup, iptables_full, nft_cleanup, nft_full,
};
use clusterip_tests::loadgen::{conn_rate, fmt_range, keepalive_latency, med, stdin_in, wait_http};
use clusterip_tests::manifests::Manifests;
use clusterip_tests::netns::Netns;
use clusterip_tests::node::{net_progs, output_in, sysctl, wait_tc_ingress};
use clusterip_tests::npbench::{
    EXT_IFACE, HTTP_PORT, INT_IFACE, LOCAL_NODE_PORT, NODE_A, NODE_A_INT, Node, REMOTE_NODE_PORT,
    Services, World, pod_ip,
};
use serde_json::{Value, json};

/// What `--parts` can name, in table order.
const PARTS: [&str; 7] = [
    "direct",
    "socket",
    "tc",
    "xdp",
    "iptables",
    "iptables-nft",
    "nftables",
];
/// The default parts: all but `socket` (not applicable) and `iptables-nft` (loading 10,000
/// services with the nf_tables backend takes minutes).
const DEFAULT_PARTS: [&str; 5] = ["direct", "tc", "xdp", "iptables", "nftables"];

type Opts = clusterip_tests::bench::Opts<&'static str>;

fn main() -> Result<()> {
    if let Some(result) = dispatch() {
        return result;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Opts::parse(&args, &PARTS, &DEFAULT_PARTS, |p| p)?;
    let Some(env) = prerequisites("bench nodeport", bins!()) else {
        return Ok(());
    };
    for tool in [
        "wrk",
        "nginx",
        "nft",
        "iptables-legacy-restore",
        "iptables-nft-restore",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("`{tool}` is not installed (cargo xtask setup installs it)");
        }
    }
    if opts.wants("socket") {
        eprintln!("note: part `socket` skipped: socket-LB does not serve clients outside the node");
    }
    let machine = machine();
    println!("machine: {machine}");
    let started = Instant::now();
    let world = World::new()?;
    // The node's legacy iptables tables exist, empty, for every case: once instantiated in a
    // netns they stay (with their conntrack hooks) until the netns goes.
    for t in ["nat", "filter"] {
        output_in(&world.node_a, "iptables-legacy", &["-t", t, "-n", "-L"])?;
    }
    let manifests = Manifests::new()?;
    let mut runs = Vec::new();
    for &n in &opts.services {
        eprintln!("==> N = {n} other services");
        runs.push(run_n(&world, &env, &manifests, &opts, n)?);
    }
    drop(world);
    let report = Report {
        machine,
        opts: &opts,
        runs,
    };
    let md = report.markdown();
    println!("\n{md}");
    std::fs::create_dir_all(&opts.out)?;
    let json_path = opts.out.join("nodeport.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json())?)?;
    std::fs::write(opts.out.join("nodeport.md"), &md)?;
    println!(
        "written: {} (+ .md); {:.0} s in all",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    if opts.smoke {
        report.check_smoke()?;
        println!("smoke: every part measured");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measurements

/// Where the backends of the measured service run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Backends {
    /// On node B: the node port source-NATs.
    Remote,
    /// On node A, the node with the node port.
    Local,
}

impl Backends {
    const ALL: [Backends; 2] = [Backends::Remote, Backends::Local];

    fn name(self) -> &'static str {
        match self {
            Backends::Remote => "remote",
            Backends::Local => "local",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Backends::Remote => "backends on node B (the node port source-NATs)",
            Backends::Local => "backends on node A (the node with the node port)",
        }
    }

    /// The node port of its service on node A.
    fn node_port(self) -> SocketAddr {
        let port = match self {
            Backends::Remote => REMOTE_NODE_PORT,
            Backends::Local => LOCAL_NODE_PORT,
        };
        SocketAddr::new(NODE_A.into(), port)
    }

    /// The first backend pod, what `direct` talks to.
    fn pod(self) -> SocketAddr {
        let node = match self {
            Backends::Remote => Node::B,
            Backends::Local => Node::A,
        };
        SocketAddr::new(pod_ip(node, 0).into(), HTTP_PORT)
    }
}

/// One case on one path in one round.
#[derive(Clone, Debug, Default)]
struct Sample {
    conn1: f64,
    conn16: f64,
    lat_mean_us: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    /// Connections the client opened per request wrk completed (both runs).
    opens_per_request: f64,
    /// SYNs the client retransmitted during both wrk runs.
    syn_retrans: u64,
}

fn measure(w: &World, opts: &Opts, addr: SocketAddr) -> Result<Sample> {
    wait_http(&w.client, None, addr, Duration::from_secs(15))?;
    let mut s = Sample::default();
    let (mut opens, mut reqs) = (0, 0);
    for (c, t) in [(1, 1), (16, 2)] {
        let r = conn_rate(&w.client, None, addr, c, t, opts.duration)?;
        if r.syn_retrans > 0 {
            eprintln!(
                "      c={c}: the client retransmitted {} SYNs (1 s each)",
                r.syn_retrans
            );
        }
        opens += r.opens;
        reqs += r.requests;
        s.syn_retrans += r.syn_retrans;
        if c == 1 {
            s.conn1 = r.rate;
        } else {
            s.conn16 = r.rate;
        }
    }
    s.opens_per_request = opens as f64 / reqs.max(1) as f64;
    // Pinned to one CPU with the servers (see keepalive_latency): the last one.
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    (s.lat_mean_us, s.lat_p50_us, s.lat_p99_us) =
        keepalive_latency(&w.client, addr, opts.requests, Some((cpu, w.nginx()?)))?;
    Ok(s)
}

/// Both paths through the node ports.
fn measure_node_ports(w: &World, opts: &Opts) -> Result<Vec<(Backends, Sample)>> {
    Backends::ALL
        .iter()
        .map(|&p| {
            Ok((
                p,
                measure(w, opts, p.node_port()).with_context(|| p.name())?,
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Cases

/// The clusterip agent in node A, per packet on node A's two veths (`tc_nodeport`, and with
/// `extra` = `--nodeport-xdp` also `xdp_nodeport`): start (timed to its first sync and its
/// programs on both), measure, stop (the pins go with the [`PinDir`]).
fn clusterip_case(
    w: &World,
    env: &Env,
    manifests: &Manifests,
    opts: &Opts,
    n: usize,
    extra: &[&str],
) -> Result<(Vec<(Backends, Sample)>, f64)> {
    let pins = PinDir::new(env);
    let sizes = MapSizes::for_services(n + 2);
    let (svc, be, maglev) = (
        sizes.service.to_string(),
        sizes.backend.to_string(),
        sizes.maglev.to_string(),
    );
    let mut args = vec![
        "--node-name",
        Node::A.name(),
        "--socket-lb=false",
        "--nodeport-iface",
        EXT_IFACE,
        "--nodeport-iface",
        INT_IFACE,
        // Node ports on node A's address toward the client only, as kube-proxy's rules have
        // them here (its nftables mode's `nodeport-ips`): not also on the address toward
        // node B and the pods' gateway, which would triple the frontends.
        "--nodeport-addresses",
        NODE_PORT_CIDR,
        // Closed flows linger as long as netfilter's TIME_WAIT does in the kube-proxy
        // cases (see short_conntrack_time_wait).
        "--ct-tcp-closing-timeout",
        "5",
        "--service-map-entries",
        &svc,
        "--backend-map-entries",
        &be,
        "--maglev-map-entries",
        &maglev,
        "--metrics-addr",
        "",
        "--healthz-bind-address",
        "",
    ];
    args.extend_from_slice(extra);
    let t0 = Instant::now();
    let agent = AgentProc::start(
        &env.agent_bin,
        &manifests.dir(),
        pins.path(),
        &args,
        Some(&w.node_a),
        "info",
    )?;
    let ifaces = [EXT_IFACE.to_owned(), INT_IFACE.to_owned()];
    wait_tc_ingress(&w.node_a, None, &ifaces, Duration::from_secs(10))?;
    if extra.contains(&"--nodeport-xdp") {
        wait_xdp(&w.node_a, &ifaces, Duration::from_secs(10))?;
    }
    let programmed_ms = t0.elapsed().as_secs_f64() * 1e3;
    let samples = measure_node_ports(w, opts)?;
    drop(agent);
    drop(pins);
    Ok((samples, programmed_ms))
}

/// Waits until each of `ifaces` in `ns` has an XDP program.
fn wait_xdp(ns: &Netns, ifaces: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let net = net_progs(ns)?;
        let missing: Vec<&String> = ifaces
            .iter()
            .filter(|i| !net.xdp.iter().any(|x| &x.devname == *i))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no XDP program on {missing:?} after {timeout:?}: {net:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `--nodeport-addresses` selects in node A: [`NODE_A`] alone.
const NODE_PORT_CIDR: &str = "10.100.0.0/24";

/// Capacities of the agent's service, backend and Maglev maps for `services` NodePort
/// services with up to 10 endpoints: a cluster IP and a node-port frontend each (each with
/// its backends' slots), one Maglev table per frontend, with room to spare.
struct MapSizes {
    service: u32,
    backend: u32,
    maglev: u32,
}

impl MapSizes {
    fn for_services(services: usize) -> Self {
        let frontends = 2 * services as u32;
        let size = |x: u32| (x + x / 4).next_power_of_two().max(16_384);
        Self {
            service: size(frontends * 12),
            backend: size(frontends * 10),
            maglev: size(frontends),
        }
    }
}

/// The conntrack TIME_WAIT timeout in node A: short, so that millions of closed connections
/// do not fill the conntrack table across rounds (and source ports free up as fast as
/// clusterip's closed flows do with `--ct-tcp-closing-timeout 5`).
fn short_conntrack_time_wait(w: &World) -> Result<()> {
    sysctl(
        &w.node_a,
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
        "5",
    )
}

/// kube-proxy's rules in node A: which mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KubeProxy {
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

impl KubeProxy {
    fn case(self) -> &'static str {
        match self {
            KubeProxy::IptablesLegacy => "iptables",
            KubeProxy::IptablesNft => "iptables-nft",
            KubeProxy::Nftables => "nftables",
        }
    }

    /// Programs `svcs` from empty; its wall time in ms.
    fn load(self, w: &World, svcs: &Services) -> Result<f64> {
        let took = match self {
            KubeProxy::IptablesLegacy | KubeProxy::IptablesNft => stdin_in(
                &w.node_a,
                self.iptables_tool("restore"),
                &["--noflush"],
                &iptables_full(&svcs.ports, true, &[]),
            )?,
            KubeProxy::Nftables => stdin_in(
                &w.node_a,
                "nft",
                &["-f", "-"],
                &nft_full(&svcs.ports, &[NODE_A, NODE_A_INT]),
            )?,
        };
        Ok(took.as_secs_f64() * 1e3)
    }

    fn iptables_tool(self, what: &str) -> &'static str {
        match (self, what) {
            (KubeProxy::IptablesNft, "save") => "iptables-nft-save",
            (KubeProxy::IptablesNft, _) => "iptables-nft-restore",
            (_, "save") => "iptables-legacy-save",
            _ => "iptables-legacy-restore",
        }
    }

    /// Removes the rules as `kube-proxy --cleanup` does. The nf_tables backend's `nat` and
    /// `filter` tables go altogether, so that no netfilter hook of theirs is left for the
    /// other cases (the legacy ones stay, empty, as from the start).
    fn remove(self, w: &World) -> Result<()> {
        match self {
            KubeProxy::IptablesLegacy | KubeProxy::IptablesNft => {
                let saved = output_in(&w.node_a, self.iptables_tool("save"), &[])?;
                let restore = self.iptables_tool("restore");
                stdin_in(
                    &w.node_a,
                    restore,
                    &["--noflush"],
                    &iptables_cleanup(&saved),
                )?;
                if self == KubeProxy::IptablesNft {
                    for t in ["nat", "filter"] {
                        output_in(&w.node_a, "nft", &["delete", "table", "ip", t])?;
                    }
                }
            }
            KubeProxy::Nftables => {
                stdin_in(&w.node_a, "nft", &["-f", "-"], &nft_cleanup())?;
            }
        }
        Ok(())
    }
}

/// Removes kube-proxy's rules when a case ends, also when it fails.
struct Rules<'a>(&'a World, KubeProxy);

impl Drop for Rules<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.1.remove(self.0) {
            eprintln!("removing the {} rules: {e:#}", self.1.case());
            // The bench cannot go on with rules of one case left under the next.
            if self.1 == KubeProxy::Nftables {
                let _ = output_in(&self.0.node_a, "nft", &["delete", "table", "ip", NFT_TABLE]);
            }
        }
    }
}

fn kube_proxy_case(
    w: &World,
    opts: &Opts,
    svcs: &Services,
    mode: KubeProxy,
) -> Result<(Vec<(Backends, Sample)>, f64)> {
    let guard = Rules(w, mode);
    let ms = mode.load(w, svcs)?;
    short_conntrack_time_wait(w)?;
    let samples = measure_node_ports(w, opts)?;
    drop(guard);
    Ok((samples, ms))
}

// ---------------------------------------------------------------------------------------
// One N

struct RunN {
    n: usize,
    /// (case, path) -> one sample per round.
    samples: BTreeMap<(String, Backends), Vec<Sample>>,
    /// case -> time to program the N + 2 services, per round.
    programmed_ms: BTreeMap<String, Vec<f64>>,
}

fn run_n(w: &World, env: &Env, manifests: &Manifests, opts: &Opts, n: usize) -> Result<RunN> {
    let svcs = Services::new(n);
    manifests.write_raw("services.yaml", &svcs.yaml())?;
    let mut run = RunN {
        n,
        samples: BTreeMap::new(),
        programmed_ms: BTreeMap::new(),
    };
    for round in 0..opts.rounds {
        eprintln!("  round {}/{}", round + 1, opts.rounds);
        for part in &opts.parts {
            let (case, result) = match *part {
                "direct" => {
                    let samples = Backends::ALL
                        .iter()
                        .map(|&p| Ok((p, measure(w, opts, p.pod()).context("direct")?)))
                        .collect::<Result<Vec<_>>>()?;
                    ("direct", (samples, f64::NAN))
                }
                "tc" => (
                    "tc",
                    clusterip_case(w, env, manifests, opts, n, &[]).context("tc")?,
                ),
                "xdp" => (
                    "xdp",
                    clusterip_case(w, env, manifests, opts, n, &["--nodeport-xdp"])
                        .context("xdp")?,
                ),
                "iptables" | "iptables-nft" | "nftables" => {
                    let mode = match *part {
                        "iptables" => KubeProxy::IptablesLegacy,
                        "iptables-nft" => KubeProxy::IptablesNft,
                        _ => KubeProxy::Nftables,
                    };
                    let r = kube_proxy_case(w, opts, &svcs, mode).context(mode.case())?;
                    (mode.case(), r)
                }
                // `socket`: not applicable.
                _ => continue,
            };
            let (samples, ms) = result;
            for (path, s) in samples {
                eprintln!(
                    "    {case:<13} {:<6} conn/s c1 {:>7.0} c16 {:>7.0}  lat p50 {:>6.1} us  \
                     SYN retrans {}",
                    path.name(),
                    s.conn1,
                    s.conn16,
                    s.lat_p50_us,
                    s.syn_retrans
                );
                run.samples.entry((case.into(), path)).or_default().push(s);
            }
            if !ms.is_nan() {
                run.programmed_ms.entry(case.into()).or_default().push(ms);
            }
        }
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// Report

struct Report<'a> {
    machine: String,
    opts: &'a Opts,
    runs: Vec<RunN>,
}

/// Data-plane metrics: (key, header, getter).
type Metric = (&'static str, &'static str, fn(&Sample) -> f64);
const METRICS: [Metric; 5] = [
    ("conn_per_s_c1", "conn/s c=1", |s| s.conn1),
    ("conn_per_s_c16", "conn/s c=16", |s| s.conn16),
    ("latency_mean_us", "latency mean µs", |s| s.lat_mean_us),
    ("latency_p50_us", "latency p50 µs", |s| s.lat_p50_us),
    ("latency_p99_us", "latency p99 µs", |s| s.lat_p99_us),
];

impl RunN {
    fn values(&self, case: &str, path: Backends, m: &Metric) -> Vec<f64> {
        self.samples
            .get(&(case.to_string(), path))
            .map_or(Vec::new(), |v| v.iter().map(m.2).collect())
    }

    fn ratio(&self, case: &str, path: Backends, m: &Metric) -> f64 {
        med(&self.values(case, path, m)).0 / med(&self.values("direct", path, m)).0
    }

    fn syn_retrans(&self, case: &str, path: Backends) -> u64 {
        self.samples
            .get(&(case.to_string(), path))
            .map_or(0, |v| v.iter().map(|s| s.syn_retrans).sum())
    }

    fn opens_per_request(&self) -> (f64, f64) {
        let all: Vec<f64> = self
            .samples
            .values()
            .flatten()
            .map(|s| s.opens_per_request)
            .collect();
        let (_, lo, hi) = med(&all);
        (lo, hi)
    }
}

impl Report<'_> {
    /// The rows in table order.
    fn cases(&self) -> Vec<&'static str> {
        PARTS
            .iter()
            .copied()
            .filter(|p| *p != "socket" && self.opts.wants(p))
            .collect()
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Machine: {}.\n", self.machine);
        for run in &self.runs {
            let rounds = run.samples.values().map(Vec::len).max().unwrap_or(0);
            for path in Backends::ALL {
                let _ = writeln!(
                    out,
                    "**N = {} other NodePort services**, {}; median [min–max] over {rounds} \
                     round(s); (×direct)\n",
                    run.n,
                    path.title()
                );
                out.push_str("| case |");
                for m in &METRICS {
                    let _ = write!(out, " {} |", m.1);
                }
                out.push_str(" SYN retrans |\n|---|");
                out.push_str(&"---|".repeat(METRICS.len() + 1));
                out.push('\n');
                for case in self.cases() {
                    let _ = write!(out, "| {case} |");
                    for m in &METRICS {
                        let ratio = if case == "direct" {
                            String::new()
                        } else {
                            format!(" ({:.2}×)", run.ratio(case, path, m))
                        };
                        let _ = write!(out, " {}{ratio} |", fmt_range(&run.values(case, path, m)));
                    }
                    let _ = writeln!(out, " {} |", run.syn_retrans(case, path));
                }
                out.push('\n');
            }
            if !run.programmed_ms.is_empty() {
                let _ = writeln!(out, "Programming the N + 2 services from empty (ms):\n");
                for (case, v) in &run.programmed_ms {
                    let what = match case.as_str() {
                        "tc" => "agent start → first sync and its programs on both veths",
                        "xdp" => "agent start → first sync, its TC and XDP programs on both veths",
                        _ => "rules loaded",
                    };
                    let _ = writeln!(out, "- {case}: {} ({what})", fmt_range(v));
                }
                out.push('\n');
            }
            let (lo, hi) = run.opens_per_request();
            let _ = writeln!(
                out,
                "wrk opened {lo:.3}–{hi:.3} connections per completed request.\n"
            );
        }
        out
    }

    fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let mut cases = serde_json::Map::new();
                for case in self.cases() {
                    let mut paths = serde_json::Map::new();
                    for path in Backends::ALL {
                        let mut o = serde_json::Map::new();
                        for m in &METRICS {
                            let raw = r.values(case, path, m);
                            let (md, lo, hi) = med(&raw);
                            o.insert(
                                m.0.into(),
                                json!({"median": md, "min": lo, "max": hi, "raw": raw,
                                       "ratio_to_direct": r.ratio(case, path, m)}),
                            );
                        }
                        o.insert("syn_retrans".into(), json!(r.syn_retrans(case, path)));
                        paths.insert(path.name().into(), Value::Object(o));
                    }
                    cases.insert(case.into(), Value::Object(paths));
                }
                json!({
                    "other_services": r.n,
                    "cases": cases,
                    "programmed_ms": r.programmed_ms,
                    "wrk_opens_per_request": r.opens_per_request(),
                })
            })
            .collect();
        json!({
            "machine": self.machine,
            "options": {
                "parts": self.opts.parts, "services": self.opts.services,
                "rounds": self.opts.rounds, "duration_s": self.opts.duration.as_secs_f64(),
                "requests": self.opts.requests, "smoke": self.opts.smoke,
            },
            "runs": runs,
        })
    }

    /// Smoke mode: every measured case has numbers on both paths, and wrk opened one
    /// connection per request.
    fn check_smoke(&self) -> Result<()> {
        for run in &self.runs {
            for case in self.cases() {
                for path in Backends::ALL {
                    let samples = run.samples.get(&(case.to_string(), path));
                    let Some(samples) = samples.filter(|s| !s.is_empty()) else {
                        bail!("N={} {case} {}: not measured", run.n, path.name());
                    };
                    for s in samples {
                        if !(s.conn1 > 0.0 && s.conn16 > 0.0 && s.lat_p50_us > 0.0) {
                            bail!(
                                "N={} {case} {}: empty measurement {s:?}",
                                run.n,
                                path.name()
                            );
                        }
                    }
                }
            }
            let (lo, hi) = run.opens_per_request();
            if !(0.9..=1.1).contains(&lo) || !(0.9..=1.1).contains(&hi) {
                bail!("wrk did not open one connection per request: {lo}–{hi}");
            }
        }
        Ok(())
    }
}
