//! `cargo xtask bench`: what the per-packet datapath (`tc_ingress`, `xdp_ingress`) costs
//! routed traffic, against no program and against iptables DNAT (kube-proxy's mechanism), in
//! the same run on the same machine.
//!
//! Topology: the node fixture of the per-packet tests (`clusterip_tests::node`): a client
//! netns routed through a node netns (forwarding) to one pod netns. The client runs in no
//! cgroup of ours, so only per-packet programs can see it. The pod runs this bench's own
//! server: a sink port (accepts and closes, deep backlog) and a source port (writes
//! DOWNLOAD_BYTES zeros per connection, then closes).
//!
//! Cases, all of them in every round (rounds interleave the cases, so drift hits all alike):
//! - `no program, pod IP`: nothing attached in the node; the client talks to the pod IP.
//! - `iptables DNAT, VIP`: an iptables nat PREROUTING DNAT rule in the node netns (what
//!   kube-proxy writes for a one-endpoint service) translates VIP_IPT to the pod; the rules
//!   and their chain are removed again after the case, so netfilter conntrack is off for the
//!   other cases. Skipped with a note when `iptables` is not installed.
//! - `tc, pod IP`: the agent with `--tc-iface cip*` (TC on every node veth): the pass path.
//! - `tc, VIP`: the same agent, client to VIP: DNAT + conntrack at TC ingress, reverse NAT of
//!   the replies at TC ingress of the pod's veth.
//! - `xdp+tc, VIP`: the agent with `--xdp-iface cipc --tc-iface cipp*`: forward path at XDP
//!   (generic XDP on veth unless the driver does native), replies at TC.
//!
//! The agent runs with debug logging off and is stopped, its programs detached and pins
//! removed (`clusterip-agent cleanup`) between configurations.
//!
//! Operations: `tcp-connect` (socket + connect + close with RST, ns/op) and `download` (one
//! connection receiving DOWNLOAD_BYTES, read into a reused buffer, MB/s = 10^6 bytes/s).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusterip_tests::bench::{
    AgentProc, ClientOp, Server, ServerConfig, dispatch, print_machine, run_client, stats,
};
use clusterip_tests::bins;
use clusterip_tests::env::prerequisites;
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::Netns;
use clusterip_tests::node::{
    CLIENT_IFACE, IFACE_GLOB, NodeFixture, net_progs, output_in, pod_iface, pod_ip, tcx_ingress,
};

const ROUNDS: usize = 5;
const VIP: &str = "10.96.0.10";
/// The iptables baseline's VIP: not in our table, so our programs would pass it untouched.
const VIP_IPT: &str = "10.97.0.10";
const SINK_PORT: u16 = 7000;
const SOURCE_PORT: u16 = 7001;
/// Service ports on the VIPs.
const SINK_VPORT: u16 = 80;
const SOURCE_VPORT: u16 = 81;
const CONNECTS: u64 = 3_000;
const DOWNLOAD_BYTES: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    NoProgram,
    Iptables,
    TcPod,
    TcVip,
    XdpVip,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::NoProgram => "no program, pod IP",
            Case::Iptables => "iptables DNAT, VIP",
            Case::TcPod => "tc, pod IP",
            Case::TcVip => "tc, VIP",
            Case::XdpVip => "xdp+tc, VIP",
        }
    }

    /// Where the client connects for `op`.
    fn addr(self, op: ClientOp) -> SocketAddr {
        let (vport, pport) = match op {
            ClientOp::Download => (SOURCE_VPORT, SOURCE_PORT),
            _ => (SINK_VPORT, SINK_PORT),
        };
        let (ip, port): (IpAddr, u16) = match self {
            Case::NoProgram | Case::TcPod => (pod_ip(0, false), pport),
            Case::Iptables => (ip(VIP_IPT), vport),
            Case::TcVip | Case::XdpVip => (ip(VIP), vport),
        };
        SocketAddr::new(ip, port)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a constant address")
}

const OPS: [ClientOp; 2] = [ClientOp::TcpConnect, ClientOp::Download];

fn op_count(op: ClientOp) -> u64 {
    match op {
        ClientOp::Download => DOWNLOAD_BYTES,
        _ => CONNECTS,
    }
}

fn main() -> Result<()> {
    if let Some(result) = dispatch() {
        return result;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let Some(env) = prerequisites("bench packet_lb", bins!()) else {
        return Ok(());
    };
    print_machine();
    let started = Instant::now();

    let mut fx = NodeFixture::new(env, 1)?;
    let _server = Server::start(
        &fx.topo.pods[0],
        &ServerConfig {
            ip: pod_ip(0, false),
            sink: Some(SINK_PORT),
            udp: None,
            source: Some((SOURCE_PORT, DOWNLOAD_BYTES)),
            echo: None,
        },
    )?;
    let svc = Service::new("bench", VIP)
        .port(tcp("sink", SINK_VPORT, SINK_PORT))
        .port(tcp("source", SOURCE_VPORT, SOURCE_PORT));
    fx.manifests.write(
        "bench.yaml",
        &[
            svc.to_value(),
            svc.slice("a").ready([pod_ip(0, false)]).to_value(),
        ],
    )?;
    let have_iptables = Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());

    let mut results: BTreeMap<Case, BTreeMap<ClientOp, Vec<f64>>> = BTreeMap::new();
    let mut measure = |fx: &NodeFixture, case: Case| -> Result<()> {
        for op in OPS {
            let ns = run_client(&fx.topo.client, None, op, case.addr(op), op_count(op))
                .with_context(|| case.name())?;
            results
                .entry(case)
                .or_default()
                .entry(op)
                .or_default()
                .push(ns);
        }
        Ok(())
    };
    let mut xdp_mode = None;
    for _ in 0..ROUNDS {
        assert_no_programs(&fx)?;
        measure(&fx, Case::NoProgram)?;
        if have_iptables {
            let rules = IptablesDnat::install(&fx.topo.node)?;
            measure(&fx, Case::Iptables)?;
            rules.remove()?;
        }

        let agent = start_agent(&mut fx, IFACE_GLOB, &[], false)?;
        measure(&fx, Case::TcPod)?;
        measure(&fx, Case::TcVip)?;
        stop_agent(&fx, agent)?;

        let agent = start_agent(&mut fx, "cipp*", &["--xdp-iface", CLIENT_IFACE], true)?;
        xdp_mode = fx
            .net()?
            .xdp
            .into_iter()
            .find(|x| x.devname == CLIENT_IFACE)
            .and_then(|x| x.mode);
        measure(&fx, Case::XdpVip)?;
        stop_agent(&fx, agent)?;
    }

    println!();
    println!(
        "{:<22} {:>30} {:>30}",
        "case (median [min..max])", "tcp-connect ns/op", "download MB/s"
    );
    for (case, ops) in &results {
        let connect = ops.get(&ClientOp::TcpConnect).map_or("-".into(), |v| {
            let (med, min, max) = stats(v);
            format!("{med:>8.0} [{min:.0}..{max:.0}]")
        });
        let download = ops.get(&ClientOp::Download).map_or("-".into(), |v| {
            // ns per byte -> MB/s (10^6 bytes per second).
            let mbs: Vec<f64> = v.iter().map(|ns| 1e3 / ns).collect();
            let (med, min, max) = stats(&mbs);
            format!("{med:>8.0} [{min:.0}..{max:.0}]")
        });
        println!("{:<22} {connect:>30} {download:>30}", case.name());
    }
    println!(
        "\n{ROUNDS} rounds; tcp-connect x{CONNECTS}, download {} MiB per round; \
         [min..max] over rounds; {:.0} s in all.",
        DOWNLOAD_BYTES >> 20,
        started.elapsed().as_secs_f64()
    );
    println!(
        "xdp_ingress attach mode on the veth {CLIENT_IFACE}: {}.",
        xdp_mode.as_deref().unwrap_or("unknown")
    );
    if !have_iptables {
        println!(
            "iptables DNAT baseline skipped: `iptables` not found (apt-get install iptables)."
        );
    }
    Ok(())
}

/// The agent in the node netns, debug logging off, per-packet only; returns once it synced
/// and its programs are on the interfaces (TC on those `tc` matches, XDP on the client's).
fn start_agent(fx: &mut NodeFixture, tc: &str, extra: &[&str], xdp: bool) -> Result<AgentProc> {
    let cgroup = fx.cgroup.path().to_str().context("cgroup path")?.to_owned();
    let mut args = vec!["--cgroup", &cgroup, "--tc-iface", tc, "--socket-lb=false"];
    args.extend_from_slice(extra);
    let agent = AgentProc::start(
        &fx.env.agent_bin,
        &fx.manifests.dir(),
        fx.pins.path(),
        &args,
        Some(&fx.topo.node),
        "info",
    )?;
    let mut ifaces = vec![pod_iface(0)];
    if !xdp {
        ifaces.push(CLIENT_IFACE.to_owned());
    }
    fx.wait_tc(&ifaces, Duration::from_secs(10))?;
    if xdp {
        let net = fx.net()?;
        if !net.xdp.iter().any(|x| x.devname == CLIENT_IFACE) {
            bail!("no XDP program on {CLIENT_IFACE}: {net:?}");
        }
        if !tcx_ingress(&fx.topo.node, CLIENT_IFACE)?.is_empty()
            || net.tc.iter().any(|t| t.devname == CLIENT_IFACE)
        {
            bail!("TC on {CLIENT_IFACE} would carry what XDP should: {net:?}");
        }
    }
    Ok(agent)
}

/// Stops the agent and detaches its programs (`clusterip-agent cleanup`, which removes the
/// pins); the next configuration starts from nothing.
fn stop_agent(fx: &NodeFixture, agent: AgentProc) -> Result<()> {
    drop(agent);
    let out = Command::new(&fx.env.agent_bin)
        .arg("cleanup")
        .arg("--bpffs")
        .arg(fx.pins.path())
        .output()
        .context("running clusterip-agent cleanup")?;
    if !out.status.success() {
        bail!(
            "clusterip-agent cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The baseline must be what it says: no XDP and no TC program in the node netns.
fn assert_no_programs(fx: &NodeFixture) -> Result<()> {
    let net = net_progs(&fx.topo.node)?;
    let mut tcx = Vec::new();
    for iface in [CLIENT_IFACE.to_owned(), pod_iface(0)] {
        tcx.extend(tcx_ingress(&fx.topo.node, &iface)?);
    }
    if !net.xdp.is_empty() || !net.tc.is_empty() || !tcx.is_empty() {
        bail!("programs left in the node netns: {net:?}, tcx {tcx:?}");
    }
    Ok(())
}

/// kube-proxy's mechanism for a one-endpoint service, per packet in the node: nat PREROUTING
/// DNAT of VIP_IPT:port to the pod (netfilter conntrack reverse-translates the replies).
struct IptablesDnat<'a> {
    netns: &'a Netns,
    removed: bool,
}

impl<'a> IptablesDnat<'a> {
    fn install(netns: &'a Netns) -> Result<Self> {
        let me = Self {
            netns,
            removed: false,
        };
        let pod = pod_ip(0, false);
        for (vport, pport) in [(SINK_VPORT, SINK_PORT), (SOURCE_VPORT, SOURCE_PORT)] {
            me.iptables(&[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                VIP_IPT,
                "-p",
                "tcp",
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

    /// Flushes the rules and deletes the (then empty) built-in chain: with no nat chain left
    /// netfilter's conntrack hooks are off again in the node netns.
    fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.iptables(&["-t", "nat", "-F", "PREROUTING"])?;
        self.iptables(&["-t", "nat", "-X", "PREROUTING"])
    }

    fn iptables(&self, args: &[&str]) -> Result<()> {
        output_in(self.netns, "iptables", args)
            .with_context(|| format!("iptables {}", args.join(" ")))
            .map(drop)
    }
}

impl Drop for IptablesDnat<'_> {
    fn drop(&mut self) {
        // The rules go with the node netns anyway; flush them if a case failed.
        if !self.removed {
            let _ = self.iptables(&["-t", "nat", "-F", "PREROUTING"]);
        }
    }
}
