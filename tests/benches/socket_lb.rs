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
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusterip_tests::bins;
use clusterip_tests::cgroup::Cgroup;
use clusterip_tests::env::prerequisites;
use clusterip_tests::fixture::Fixture;
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::netns::{Netns, pod_ip};
use clusterip_tests::process::enter;

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
    fn name(self) -> &'static str {
        match self {
            Op::UdpConnect => "udp-connect",
            Op::UdpSendto => "udp-sendto",
            Op::TcpConnect => "tcp-connect",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Op::UdpConnect, Op::UdpSendto, Op::TcpConnect]
            .into_iter()
            .find(|o| o.name() == s)
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
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("--server") {
        return server(&args[2..]);
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let Some(env) = prerequisites("bench socket_lb", bins!()) else {
        return Ok(());
    };
    print_machine();

    let fx = Fixture::new(env, 1)?;
    let _server = Server::start(&fx.topo.pods, pod_ip(0, false))?;
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
        let agent = AgentProc::start(&fx, agent_log)?;
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
                    let ns = run_client(&fx.topo.client, cg, op, addr)?;
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

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpu}, {cores} cores, Linux {}", kernel.trim());
}

/// Runs one measurement in a client process; returns ns per operation.
fn run_client(netns: &Netns, cgroup: Option<&Cgroup>, op: Op, addr: SocketAddr) -> Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "--client",
        op.name(),
        &addr.to_string(),
        &op.count().to_string(),
    ]);
    enter(&mut cmd, Some(netns), cgroup)?;
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running the client")?;
    if !out.status.success() {
        bail!(
            "client {} {addr} failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("client said {text:?}"))?;
    Ok(ns)
}

/// The client side: N operations, prints ns/op.
fn client(args: &[String]) -> Result<()> {
    let [mode, addr, n] = args else {
        bail!("usage: --client MODE ADDR N")
    };
    let op = Op::parse(mode).context("mode")?;
    let addr: SocketAddr = addr.parse()?;
    let n: u64 = n.parse()?;
    let started = Instant::now();
    match op {
        Op::UdpConnect => {
            for _ in 0..n {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(addr)?;
            }
        }
        Op::UdpSendto => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..n {
                s.send_to(b"x", addr)?;
            }
        }
        Op::TcpConnect => {
            for _ in 0..n {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                // Close with RST: no TIME_WAIT piles up over thousands of connections.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on a socket we own with a correctly sized option value.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{ns}");
    Ok(())
}

/// The sink server, run in the pods netns (this binary with `--server IP`).
struct Server(Child);

impl Server {
    fn start(netns: &Netns, ip: std::net::IpAddr) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["--server", &ip.to_string()])
            .stdout(Stdio::piped());
        enter(&mut cmd, Some(netns), None)?;
        let mut child = cmd.spawn().context("starting the sink server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("sink server said {line:?}");
        }
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(args: &[String]) -> Result<()> {
    let [ip] = args else {
        bail!("usage: --server IP")
    };
    let ip: std::net::IpAddr = ip.parse()?;
    let listener = std::net::TcpListener::bind((ip, TCP_PORT))?;
    // SAFETY: listen(2) again on our listening socket only deepens its backlog.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let udp = UdpSocket::bind((ip, UDP_PORT))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while udp.recv_from(&mut buf).is_ok() {}
    });
    println!("ready");
    for conn in listener.incoming() {
        drop(conn);
    }
    Ok(())
}

/// The agent for the bench, its output discarded (a benchmark must not pay for a test log).
struct AgentProc(Child);

impl AgentProc {
    fn start(fx: &Fixture, rust_log: &str) -> Result<Self> {
        let mut child = Command::new(&fx.env.agent_bin)
            .arg("run")
            .arg("--manifests")
            .arg(fx.manifests.dir())
            .arg("--cgroup")
            .arg(fx.cgroup.path())
            .arg("--bpffs")
            .arg(fx.pins.path())
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut synced = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !synced && line.contains("synced") {
                    synced = true;
                    let _ = tx.send(());
                }
            }
        });
        let agent = Self(child);
        rx.recv_timeout(Duration::from_secs(20))
            .context("the agent did not sync within 20 s")?;
        Ok(agent)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
