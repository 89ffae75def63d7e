//! `cargo xtask bench`: what socket-level load balancing costs a client, measured against the
//! baselines that matter, in the same run on the same machine:
//!
//! - `no-program`: the client is outside the attached cgroup and talks to the pod IP: nothing
//!   of ours runs (the floor).
//! - `prog, pod IP`: inside the cgroup, to the pod IP: our connect/sendmsg program runs and
//!   finds no VIP (what every non-service connection pays).
//! - `prog, VIP`: inside the cgroup, to the VIP: the translation (debug logging off).
//! - `prog+debug, VIP`: the same with the agent running at RUST_LOG=debug, so the programs
//!   were loaded with their aya-log calls live.
//! - `iptables DNAT, VIP`: kube-proxy's mechanism: the client outside the cgroup, an iptables
//!   nat rule (statistic mode random, as kube-proxy writes it) in the client's netns
//!   translates the VIP. Skipped with a note when `iptables` is not installed.
//!
//! Operations: `udp-connect` (socket + connect + close: only the connect hook, no packet),
//! `udp-sendto` (one unconnected socket, one datagram per op: the sendmsg hook + the packet),
//! `tcp-connect` (socket + connect + close with RST: the hook plus a real handshake).
//! Each case runs ROUNDS times interleaved; the median ns/op is reported with min and max.
//!
//! The client is this binary re-executed (`--client MODE ADDR N`) inside the client netns
//! (and the cgroup where the case says so).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clusterip_tests::bench::{
    AgentProc, ClientOp, Server, ServerConfig, dispatch, print_machine, run_client, stats,
};
use clusterip_tests::bins;
use clusterip_tests::cgroup::Cgroup;
use clusterip_tests::env::prerequisites;
use clusterip_tests::fixture::Fixture;
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::netns::{Netns, pod_ip};

const ROUNDS: usize = 5;
const VIP: &str = "10.96.0.10";
/// The bench's own sink server in the pod: a TCP listener with a deep backlog that accepts and
/// closes, and a UDP socket that only reads, so the server is never what is measured.
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7053;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    UdpConnect,
    UdpSendto,
    TcpConnect,
}

impl Op {
    fn client(self) -> ClientOp {
        match self {
            Op::UdpConnect => ClientOp::UdpConnect,
            Op::UdpSendto => ClientOp::UdpSendto,
            Op::TcpConnect => ClientOp::TcpConnect,
        }
    }
    fn count(self) -> u64 {
        match self {
            Op::UdpConnect => 100_000,
            Op::UdpSendto => 100_000,
            Op::TcpConnect => 5_000,
        }
    }
    fn port(self) -> (u16, u16) {
        match self {
            Op::TcpConnect => (80, TCP_PORT),
            _ => (53, UDP_PORT),
        }
    }
}

fn main() -> Result<()> {
    if let Some(result) = dispatch() {
        return result;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let Some(env) = prerequisites("bench socket_lb", bins!()) else {
        return Ok(());
    };
    print_machine();

    let fx = Fixture::new(env, 1)?;
    let _server = Server::start(
        &fx.topo.pods,
        &ServerConfig {
            ip: pod_ip(0, false),
            sink: Some(TCP_PORT),
            udp: Some(UDP_PORT),
            source: None,
            echo: None,
        },
    )?;
    let svc = Service::new("bench", VIP)
        .port(tcp("http", 80, TCP_PORT))
        .port(udp("dns", 53, UDP_PORT));
    fx.manifests.write(
        "bench.yaml",
        &[
            svc.to_value(),
            svc.slice("a").ready([pod_ip(0, false)]).to_value(),
        ],
    )?;
    let iptables = IptablesDnat::install(&fx.topo.client, pod_ip(0, false).to_string()).ok();

    // case name -> op -> ns/op of each round.
    let mut results: BTreeMap<(usize, &str), BTreeMap<Op, Vec<f64>>> = BTreeMap::new();
    for (debug, agent_log) in [(false, "info"), (true, "debug")] {
        let cgroup = fx.cgroup.path().to_str().context("cgroup path")?;
        let agent = AgentProc::start(
            &fx.env.agent_bin,
            &fx.manifests.dir(),
            fx.pins.path(),
            &["--cgroup", cgroup],
            None,
            agent_log,
        )?;
        for _ in 0..ROUNDS {
            for op in [Op::UdpConnect, Op::UdpSendto, Op::TcpConnect] {
                let (vport, pport) = op.port();
                let vip: SocketAddr = format!("{VIP}:{vport}").parse()?;
                let pod = SocketAddr::new(pod_ip(0, false), pport);
                let mut cases: Vec<(usize, &str, SocketAddr, Option<&Cgroup>)> = Vec::new();
                if debug {
                    cases.push((3, "prog+debug, VIP", vip, Some(&fx.cgroup)));
                } else {
                    cases.push((0, "no-program, pod IP", pod, None));
                    cases.push((1, "prog, pod IP", pod, Some(&fx.cgroup)));
                    cases.push((2, "prog, VIP", vip, Some(&fx.cgroup)));
                    if iptables.is_some() && op != Op::UdpConnect {
                        cases.push((4, "iptables DNAT, VIP", vip, None));
                    }
                }
                for (i, name, addr, cg) in cases {
                    let ns = run_client(&fx.topo.client, cg, op.client(), addr, op.count())?;
                    results
                        .entry((i, name))
                        .or_default()
                        .entry(op)
                        .or_default()
                        .push(ns);
                }
            }
        }
        drop(agent);
    }
    let had_iptables = iptables.is_some();
    drop(iptables);

    println!();
    println!(
        "{:<22} {:>26} {:>26} {:>26}",
        "case (median ns/op)", "udp-connect", "udp-sendto", "tcp-connect"
    );
    for ((_, name), ops) in &results {
        let cell = |op: Op| match ops.get(&op) {
            Some(v) => {
                let (med, min, max) = stats(v);
                format!("{med:>8.0} [{min:.0}..{max:.0}]")
            }
            None => "-".to_string(),
        };
        println!(
            "{name:<22} {:>26} {:>26} {:>26}",
            cell(Op::UdpConnect),
            cell(Op::UdpSendto),
            cell(Op::TcpConnect)
        );
    }
    println!(
        "\n{} rounds; udp ops x{}, tcp ops x{} per round; [min..max] over rounds.",
        ROUNDS,
        Op::UdpConnect.count(),
        Op::TcpConnect.count()
    );
    if !had_iptables {
        println!(
            "iptables DNAT baseline skipped: `iptables` not found (apt-get install iptables)."
        );
    }
    Ok(())
}

/// kube-proxy's way: DNAT in the client's netns (the chain kube-proxy would write for a
/// one-endpoint service: statistic random with probability 1 is elided by kube-proxy too).
struct IptablesDnat {
    netns: String,
}

impl IptablesDnat {
    fn install(netns: &Netns, pod: String) -> Result<Self> {
        let me = Self {
            netns: netns.name().to_string(),
        };
        // Netfilter DNATs after the route lookup: the VIP must be routable, as on a node with
        // a default route. The socket programs never need this (they rewrite before routing).
        clusterip_tests::netns::ip(&[
            "-n",
            netns.name(),
            "route",
            "add",
            "10.96.0.0/16",
            "dev",
            "veth0",
        ])?;
        for (proto, vport, pport) in [("tcp", 80, TCP_PORT), ("udp", 53, UDP_PORT)] {
            me.iptables(&[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                VIP,
                "-p",
                proto,
                "--dport",
                &vport.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{pod}:{pport}"),
            ])?;
        }
        Ok(me)
    }

    fn iptables(&self, args: &[&str]) -> Result<()> {
        let netns = Path::new("/run/netns").join(&self.netns);
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("iptables")
            .args(args)
            .output()
            .context("running iptables")?;
        if !out.status.success() {
            bail!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for IptablesDnat {
    fn drop(&mut self) {
        // The netns goes away with the fixture, and its rules with it; flush anyway.
        let _ = self.iptables(&["-t", "nat", "-F", "OUTPUT"]);
    }
}
