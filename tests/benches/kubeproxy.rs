//! `cargo xtask bench`: clusterip against kube-proxy (iptables and nftables modes) and against
//! no service proxy at all, on one topology, in one run, cases interleaved round by round.
//!
//! Topology (all in network namespaces this bench creates; nothing in the root netns), wired
//! as a simple CNI (the `ptp` plugin) does: a node netns routing between pod netns, each pod
//! with a /32 address on its `eth0`, a /32 route to it on the node over its veth, and the node
//! side of every veth holding the gateway address 10.224.0.1/32.
//! ```text
//!   client pod 10.224.0.2/32 eth0 <-> cipc  \
//!                                            node (forwarding; agent, iptables, nft)
//!   pod i 10.224.0.(10+i)/32 eth0 <-> cipb<i> /   nginx :8080, UDP echo :5353
//! ```
//! Cases (one row each): `direct` (client to a pod IP: the floor), `socket` (clusterip
//! socket-LB, the client in the attached cgroup), `tc` (clusterip `--socket-lb=false` with TC
//! on the node's veths), `xdp` (XDP on the client's veth, TC for the replies), `iptables-last`
//! / `iptables-mid` (kube-proxy iptables rules loaded with `iptables-restore`, the measured
//! service last / in the middle of KUBE-SERVICES), `nftables` (kube-proxy nftables rules
//! loaded with `nft -f`). N services with 10 endpoints each: the measured ones have the 10
//! real pods, the others fake pod IPs.
//!
//! Data plane: new connections per second with one request per connection (`wrk` with
//! `Connection: close`, concurrency 1 and 16; the client netns' TCP ActiveOpens counter checks
//! that wrk opened one connection per request), request/response latency on one kept-alive
//! connection (own client: mean, p50, p99), UDP request/response rate (own client).
//! Control plane: time to program N services from empty, to change one endpoint; for clusterip
//! the agent's start-to-"synced" time, its edit-to-"synced" time (its `apply_us=` /
//! `latency_us=` fields when it logs them), RSS and map memory.
//!
//! Options (after `--`): `--parts direct,socket,tc,xdp,iptables,nftables`,
//! `--services 1,1000,10000`, `--rounds N`, `--duration SECONDS`, `--smoke`, `--out DIR`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusterip_tests::bench::{
    ClientOp, Memory, Server, ServerConfig, dispatch, parse_latency, run_client, run_client_raw,
};
use clusterip_tests::bins;
use clusterip_tests::bpffs::PinDir;
use clusterip_tests::cgroup::Cgroup;
use clusterip_tests::env::{Env, prerequisites};
use clusterip_tests::kubeproxy::{
    NFT_TABLE, Proto, SvcPort, iptables_full, iptables_partial, nft_full, nft_update, proto_upper,
    stale_sep_chains,
};
use clusterip_tests::loadgen::{Nginx, conn_rate, fmt_num, med, stdin_in, xml};
use clusterip_tests::manifests::Manifests;
use clusterip_tests::netns::{Netns, ip};
use clusterip_tests::node::{output_in, sysctl};
use clusterip_tests::process::enter;
use serde_json::{Value, json};

const PODS: usize = 10;
const ENDPOINTS: usize = 10;
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 5353;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 2);
const CLIENT_IFACE: &str = "cipc";

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 224, 0, 10 + i as u8)
}
fn pod_iface(i: usize) -> String {
    format!("cipb{i}")
}
/// VIP of service `i`: 10.96.0.1 + i.
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}
/// Fake endpoint `j` of service `i` (in the cluster CIDR, never contacted).
fn fake_ep(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 225, 0, 1)) + (i * ENDPOINTS + j) as u32)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Direct,
    Socket,
    Tc,
    Xdp,
    /// kube-proxy iptables mode with the legacy (xtables) backend.
    Iptables,
    /// kube-proxy iptables mode with the nf_tables backend (`iptables-nft`).
    IptablesNft,
    Nftables,
}

const ALL_PARTS: [Part; 7] = [
    Part::Direct,
    Part::Socket,
    Part::Tc,
    Part::Xdp,
    Part::Iptables,
    Part::IptablesNft,
    Part::Nftables,
];

/// The default parts: all but `iptables-nft`, whose `iptables-restore` of 10,000 services x 10
/// endpoints takes minutes (smoke mode runs every part).
const DEFAULT_PARTS: [Part; 6] = [
    Part::Direct,
    Part::Socket,
    Part::Tc,
    Part::Xdp,
    Part::Iptables,
    Part::Nftables,
];

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Direct => "direct",
            Part::Socket => "socket",
            Part::Tc => "tc",
            Part::Xdp => "xdp",
            Part::Iptables => "iptables",
            Part::IptablesNft => "iptables-nft",
            Part::Nftables => "nftables",
        }
    }
}

type Opts = clusterip_tests::bench::Opts<Part>;

fn main() -> Result<()> {
    if let Some(result) = dispatch() {
        return result;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Opts::parse(&args, &ALL_PARTS, &DEFAULT_PARTS, Part::name)?;
    let Some(env) = prerequisites("bench kubeproxy", bins!()) else {
        return Ok(());
    };
    for tool in [
        "wrk",
        "nginx",
        "nft",
        "iptables-nft-restore",
        "iptables-legacy-restore",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("`{tool}` is not installed (cargo xtask setup installs it)");
        }
    }
    let machine = clusterip_tests::bench::machine();
    println!("machine: {machine}");
    let started = Instant::now();
    let mut report = Report {
        machine,
        opts: json!({
            "parts": opts.parts.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "services": opts.services, "rounds": opts.rounds,
            "duration_s": opts.duration.as_secs_f64(), "requests": opts.requests,
            "smoke": opts.smoke,
        }),
        runs: Vec::new(),
    };
    let world = World::new(env)?;
    for &n in &opts.services {
        eprintln!("==> N = {n} services");
        let run = run_n(&world, &opts, n)?;
        report.runs.push(run);
    }
    drop(world);
    let md = report.markdown();
    println!("\n{md}");
    std::fs::create_dir_all(&opts.out)?;
    let json_path = opts.out.join("kubeproxy.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json())?)?;
    std::fs::write(opts.out.join("kubeproxy.md"), &md)?;
    std::fs::write(opts.out.join("kubeproxy.svg"), report.svg())?;
    println!(
        "written: {} (+ .md, .svg); {:.0} s in all",
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
// Topology and servers

/// Netns, cgroups and servers; dropped servers first, then cgroups, then the netns.
struct World {
    _servers: Servers,
    /// The socket-LB agent attaches here; the `socket` case's clients run in it.
    client_cg: Cgroup,
    /// Given to the per-packet agents as `--cgroup` (never the root); holds no process.
    idle_cg: Cgroup,
    _pods: Vec<Netns>,
    client: Netns,
    node: Netns,
    manifests: Manifests,
    env: Env,
}

struct Servers {
    _nginx: Nginx,
    _echo: Vec<Server>,
}

impl World {
    fn new(env: Env) -> Result<Self> {
        let manifests = Manifests::new()?;
        let node = Netns::new("kn")?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            sysctl(&node, k, v)?;
        }
        node.ip(&["link", "set", "lo", "up"])?;
        let client = Netns::new("kc")?;
        for (k, v) in [
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ] {
            sysctl(&client, k, v)?;
        }
        ptp(&node, CLIENT_IFACE, &client, CLIENT)?;
        let mut pods = Vec::new();
        for i in 0..PODS {
            let pod = Netns::new(&format!("k{i}"))?;
            sysctl(&pod, "net.core.somaxconn", "4096")?;
            // No TIME_WAIT on the servers: a client port reused within 60 s toward another
            // destination (pod IP in one case, a VIP in the next) carries an ISN and timestamp
            // from another hash space, which a TIME_WAIT socket answers with an ACK, costing
            // the client a RST and a retransmitted SYN: cases would slow each other down.
            sysctl(&pod, "net.ipv4.tcp_max_tw_buckets", "0")?;
            ptp(&node, &pod_iface(i), &pod, pod_ip(i))?;
            pods.push(pod);
        }
        // The node's legacy iptables tables exist, empty, for every case: once instantiated in
        // a netns they stay (with their hooks) until the netns goes, so the iptables case
        // would otherwise leave them behind for the cases after it.
        for t in ["nat", "filter"] {
            output_in(&node, "iptables-legacy", &["-t", t, "-n", "-L"])?;
        }
        let servers = start_servers(&pods)?;
        let me = Self {
            _servers: servers,
            client_cg: Cgroup::new()?,
            idle_cg: Cgroup::new()?,
            _pods: pods,
            client,
            node,
            manifests,
            env,
        };
        for i in 0..PODS {
            wait_http(&me, None, SocketAddr::new(pod_ip(i).into(), HTTP_PORT))?;
        }
        Ok(me)
    }
}

/// A veth `node_side` (node) <-> `eth0` (pod), the CNI ptp way: the pod has `addr/32` and a
/// default route via the gateway on the link; the node has a /32 route to the pod.
fn ptp(node: &Netns, node_side: &str, pod: &Netns, addr: Ipv4Addr) -> Result<()> {
    ip(&[
        "link",
        "add",
        node_side,
        "netns",
        node.name(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    let gw = GATEWAY.to_string();
    node.ip(&["addr", "add", &format!("{gw}/32"), "dev", node_side])?;
    node.ip(&["link", "set", node_side, "up"])?;
    node.ip(&[
        "route",
        "add",
        &format!("{addr}/32"),
        "dev",
        node_side,
        "scope",
        "link",
        "src",
        &gw,
    ])?;
    pod.ip(&["link", "set", "lo", "up"])?;
    pod.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])
}

fn start_servers(pods: &[Netns]) -> Result<Servers> {
    let addrs: Vec<(&Netns, IpAddr)> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| (pod, pod_ip(i).into()))
        .collect();
    let mut echo = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        echo.push(Server::start(
            pod,
            &ServerConfig {
                ip: pod_ip(i).into(),
                sink: None,
                udp: None,
                source: None,
                echo: Some(ECHO_PORT),
            },
        )?);
    }
    Ok(Servers {
        _nginx: Nginx::start(&addrs, HTTP_PORT)?,
        _echo: echo,
    })
}

/// Retries one HTTP request to `addr` from the client (in `cg`) until it works.
fn wait_http(w: &World, cg: Option<&Cgroup>, addr: SocketAddr) -> Result<()> {
    clusterip_tests::loadgen::wait_http(&w.client, cg, addr, Duration::from_secs(15))
}

// ---------------------------------------------------------------------------------------
// Services

/// The N services as kube-proxy's units (service ports), in KUBE-SERVICES order, and the
/// indices of the measured ones.
struct Services {
    ports: Vec<SvcPort>,
    /// Service index of the one measured last in KUBE-SERVICES / in its middle.
    last: usize,
    mid: usize,
    /// Service whose endpoint the control-plane measurements change.
    edited: usize,
}

impl Services {
    fn new(n: usize) -> Self {
        let last = n - 1;
        let mid = n / 2;
        let edited = if n >= 3 { n / 3 } else { last };
        let mut ports = Vec::new();
        for i in 0..n {
            let real = i == last || i == mid;
            let eps: Vec<Ipv4Addr> = (0..ENDPOINTS)
                .map(|j| {
                    if real {
                        pod_ip(j % PODS)
                    } else {
                        fake_ep(i, j)
                    }
                })
                .collect();
            let port = |port_name: &str, port, target, proto| {
                SvcPort::new(
                    &format!("svc-{i}"),
                    port_name,
                    vip(i),
                    port,
                    proto,
                    eps.iter().map(|&e| (e, target)).collect(),
                )
            };
            if real {
                // UDP first: the TCP rule of `last` is the very last service rule.
                ports.push(port("echo", 53, ECHO_PORT, Proto::Udp));
            }
            ports.push(port("http", 80, HTTP_PORT, Proto::Tcp));
        }
        Self {
            ports,
            last,
            mid,
            edited,
        }
    }

    /// Indices into `ports` of service `i`'s ports.
    fn ports_of(&self, i: usize) -> Vec<usize> {
        let name = format!("svc-{i}");
        (0..self.ports.len())
            .filter(|&k| self.ports[k].name == name)
            .collect()
    }

    /// The edited service with its last endpoint replaced by another fake one (`toggle`
    /// picks which of two), as ports.
    fn edited_ports(&self, toggle: bool) -> Vec<(usize, SvcPort)> {
        self.ports_of(self.edited)
            .into_iter()
            .map(|k| {
                let mut p = self.ports[k].clone();
                if toggle && let Some(last) = p.endpoints.last_mut() {
                    last.0 = fake_ep(self.ports.len() + 7, 0);
                }
                (k, p)
            })
            .collect()
    }

    /// Service and EndpointSlice YAML for the ports in `ports` grouped by service.
    fn yaml(ports: &[&SvcPort], with_service: bool, with_slice: bool) -> String {
        let mut by_svc: BTreeMap<&str, Vec<&SvcPort>> = BTreeMap::new();
        for p in ports {
            by_svc.entry(&p.name).or_default().push(p);
        }
        let mut out = String::new();
        for (name, ps) in by_svc {
            if with_service {
                let _ = write!(
                    out,
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: \
                     default}}\nspec:\n  type: ClusterIP\n  clusterIP: {v}\n  clusterIPs: \
                     [{v}]\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n  ports:\n",
                    v = ps[0].vip
                );
                for p in &ps {
                    let target = p.endpoints.first().map_or(0, |e| e.1);
                    let _ = writeln!(
                        out,
                        "  - {{name: {}, port: {}, targetPort: {target}, protocol: {}}}",
                        p.port_name,
                        p.port,
                        proto_upper(p.proto)
                    );
                }
            }
            if with_slice {
                let _ = write!(
                    out,
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                     name: {name}-a\n  namespace: default\n  labels: \
                     {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n"
                );
                for p in &ps {
                    let target = p.endpoints.first().map_or(0, |e| e.1);
                    let _ = writeln!(
                        out,
                        "- {{name: {}, port: {target}, protocol: {}}}",
                        p.port_name,
                        proto_upper(p.proto)
                    );
                }
                out.push_str("endpoints:\n");
                for e in &ps[0].endpoints {
                    let _ = writeln!(
                        out,
                        "- {{addresses: [\"{}\"], conditions: {{ready: true, serving: true, \
                         terminating: false}}, nodeName: node-a}}",
                        e.0
                    );
                }
            }
        }
        out
    }

    /// `bulk.yaml` (every service, every slice but the edited one's) and `edit.yaml` (the
    /// edited service's slice, `toggle` choosing its version).
    fn write_manifests(&self, m: &Manifests) -> Result<()> {
        let edited: Vec<usize> = self.ports_of(self.edited);
        let all: Vec<&SvcPort> = self.ports.iter().collect();
        let others: Vec<&SvcPort> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(k, _)| !edited.contains(k))
            .map(|(_, p)| p)
            .collect();
        let mut text = Self::yaml(&all, true, false);
        text.push_str(&Self::yaml(&others, false, true));
        m.write_raw("bulk.yaml", &text)?;
        self.write_edit(m, false)
    }

    fn write_edit(&self, m: &Manifests, toggle: bool) -> Result<()> {
        let ports: Vec<SvcPort> = self.edited_ports(toggle).into_iter().map(|x| x.1).collect();
        let refs: Vec<&SvcPort> = ports.iter().collect();
        m.write_raw("edit.yaml", &Self::yaml(&refs, false, true))
    }
}

// ---------------------------------------------------------------------------------------
// Measurements

/// Data-plane results of one case in one round.
#[derive(Clone, Debug, Default)]
struct Sample {
    conn1: f64,
    conn16: f64,
    lat_mean_us: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    udp_rr: f64,
    /// Connections the client opened per request wrk completed (both wrk runs).
    opens_per_request: f64,
}

fn measure(w: &World, opts: &Opts, cg: Option<&Cgroup>, ip: IpAddr) -> Result<Sample> {
    let http = SocketAddr::new(ip, if is_vip(ip) { 80 } else { HTTP_PORT });
    let udp = SocketAddr::new(ip, if is_vip(ip) { 53 } else { ECHO_PORT });
    wait_http(w, cg, http)?;
    let mut s = Sample::default();
    let mut opens = 0u64;
    let mut reqs = 0u64;
    for (c, t) in [(1, 1), (16, 2)] {
        let r = conn_rate(&w.client, cg, http, c, t, opts.duration)?;
        if r.syn_retrans > 0 {
            eprintln!(
                "      c={c}: the client retransmitted {} SYNs (1 s each)",
                r.syn_retrans
            );
        }
        opens += r.opens;
        reqs += r.requests;
        if c == 1 {
            s.conn1 = r.rate;
        } else {
            s.conn16 = r.rate;
        }
    }
    s.opens_per_request = opens as f64 / reqs.max(1) as f64;
    let text = run_client_raw(&w.client, cg, ClientOp::HttpKeepalive, http, opts.requests)?;
    let (mean, p50, p99) = parse_latency(&text)?;
    (s.lat_mean_us, s.lat_p50_us, s.lat_p99_us) = (mean / 1e3, p50 / 1e3, p99 / 1e3);
    let ns = run_client(&w.client, cg, ClientOp::UdpRr, udp, opts.requests)?;
    s.udp_rr = 1e9 / ns;
    Ok(s)
}

fn is_vip(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v) if v.octets()[..2] == [10, 96])
}

// ---------------------------------------------------------------------------------------
// clusterip agent

/// The agent with its "synced" lines forwarded with their arrival time; killed on drop, then
/// its pins cleaned up (the [`PinDir`] field drops after the process).
struct Agent {
    child: Child,
    synced: Receiver<(Instant, String)>,
    /// The agent's last log lines, for a failure report.
    tail: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    pins: PinDir,
}

impl Agent {
    fn start(w: &World, args: &[&str]) -> Result<(Self, Instant)> {
        let pins = PinDir::new(&w.env);
        let mut cmd = Command::new(&w.env.agent_bin);
        cmd.arg("run")
            .arg("--manifests")
            .arg(w.manifests.dir())
            .arg("--bpffs")
            .arg(pins.path())
            .args(["--node-name", "node-a"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        enter(&mut cmd, Some(&w.node), None)?;
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("starting the agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, rx) = channel();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let keep = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut t) = keep.lock() {
                    if t.len() == 20 {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                if line.contains("synced") && !line.contains("no change") {
                    let _ = tx.send((Instant::now(), line));
                } else if line.contains("ERROR") {
                    eprintln!("  agent: {line}");
                }
            }
        });
        Ok((
            Self {
                child,
                synced: rx,
                tail,
                pins,
            },
            t0,
        ))
    }

    fn next_synced(&mut self, timeout: Duration) -> Result<(Instant, String)> {
        self.synced.recv_timeout(timeout).with_context(|| {
            let tail = self
                .tail
                .lock()
                .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n    "))
                .unwrap_or_default();
            format!(
                "no \"synced\" from the agent within {timeout:?} (exit: {:?}); its last \
                 lines:\n    {tail}",
                self.child.try_wait().ok().flatten()
            )
        })
    }

    fn memory(&self) -> Option<Memory> {
        Memory::of(self.child.id())
    }

    /// Sum of `bytes_memlock` of the maps pinned in the agent's pin directory.
    fn map_bytes(&self) -> Option<u64> {
        let mut total = 0;
        for e in std::fs::read_dir(self.pins.path()).ok()? {
            let e = e.ok()?;
            if !e.file_type().ok()?.is_file() {
                continue;
            }
            let path = e.path();
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(&path)
                .output()
                .ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            total += v.get("bytes_memlock").and_then(Value::as_u64).unwrap_or(0);
        }
        Some(total)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=<u64>` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}=");
    let at = line.find(&pat)? + pat.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Agent control-plane numbers of one run.
#[derive(Clone, Debug, Default)]
struct AgentCp {
    start_ms: f64,
    start_apply_us: Option<u64>,
    edit_wall_ms: f64,
    edit_apply_us: Option<u64>,
    edit_latency_us: Option<u64>,
    rss_mib: f64,
    /// Of which anonymous (heap, stacks) and file-backed (binary, libraries).
    rss_anon_mib: f64,
    rss_file_mib: f64,
    /// The largest RSS so far.
    rss_peak_mib: f64,
    maps_mib: f64,
}

/// Runs one clusterip configuration: start (timed), measure, edit (timed), stop.
fn clusterip_case(
    w: &World,
    opts: &Opts,
    svcs: &Services,
    args: &[&str],
    cg: Option<&Cgroup>,
) -> Result<(Sample, AgentCp)> {
    svcs.write_edit(&w.manifests, false)?;
    let (mut agent, t0) = Agent::start(w, args)?;
    let (t1, line) = agent.next_synced(Duration::from_secs(120))?;
    let mut cp = AgentCp {
        start_ms: (t1 - t0).as_secs_f64() * 1e3,
        start_apply_us: field(&line, "apply_us"),
        ..Default::default()
    };
    let sample = measure(w, opts, cg, vip(svcs.last).into())?;
    let memory = agent.memory().unwrap_or_default();
    cp.rss_mib = Memory::mib(memory.rss_kib);
    cp.rss_anon_mib = Memory::mib(memory.anon_kib);
    cp.rss_file_mib = Memory::mib(memory.file_kib);
    cp.rss_peak_mib = Memory::mib(memory.peak_kib);
    cp.maps_mib = agent.map_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let t2 = Instant::now();
    svcs.write_edit(&w.manifests, true)?;
    match agent.next_synced(Duration::from_secs(30)) {
        Ok((t3, line)) => {
            cp.edit_wall_ms = (t3 - t2).as_secs_f64() * 1e3;
            cp.edit_apply_us = field(&line, "apply_us");
            cp.edit_latency_us = field(&line, "latency_us");
        }
        // A missed edit costs its control-plane sample, not the run (reported as "-").
        Err(e) => {
            eprintln!("    the agent did not apply the edit: {e:#}");
            cp.edit_wall_ms = f64::NAN;
        }
    }
    drop(agent);
    Ok((sample, cp))
}

// ---------------------------------------------------------------------------------------
// kube-proxy rules

/// Runs `program args` in the node netns with `input` on stdin; its wall time in ms.
fn timed_stdin(w: &World, program: &str, args: &[&str], input: &str) -> Result<f64> {
    Ok(stdin_in(&w.node, program, args, input)?.as_secs_f64() * 1e3)
}

/// Which iptables: the legacy (xtables) or the nf_tables backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ipt {
    Legacy,
    Nft,
}

impl Ipt {
    fn restore(self) -> &'static str {
        match self {
            Ipt::Legacy => "iptables-legacy-restore",
            Ipt::Nft => "iptables-nft-restore",
        }
    }
}

/// Removes kube-proxy's rules of the legacy backend: flushes and deletes its chains (the
/// empty tables stay, as they do from the start; see [`World::new`]).
fn iptables_legacy_remove(w: &World) {
    for t in ["nat", "filter"] {
        let _ = output_in(&w.node, "iptables-legacy", &["-t", t, "-F"]);
        let _ = output_in(&w.node, "iptables-legacy", &["-t", t, "-X"]);
    }
}

/// Removes the nf_tables backend's tables altogether (`nft delete table`), so that no
/// netfilter hook is left for the other cases.
fn iptables_nft_remove(w: &World) {
    for t in ["nat", "filter"] {
        let _ = output_in(&w.node, "nft", &["delete", "table", "ip", t]);
    }
}

fn nft_remove(w: &World) {
    let _ = output_in(&w.node, "nft", &["delete", "table", "ip", NFT_TABLE]);
}

/// A netfilter case's guard: removes the rules even when the case fails.
struct Rules<'a>(&'a World, fn(&World));
impl Drop for Rules<'_> {
    fn drop(&mut self) {
        (self.1)(self.0);
    }
}

/// The conntrack TIME_WAIT timeout in the node netns: short, so that millions of closed
/// connections do not fill the conntrack table across rounds (kube-proxy leaves it at 120 s).
fn short_conntrack_time_wait(w: &World) {
    let _ = sysctl(
        &w.node,
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
        "5",
    );
}

/// iptables control-plane numbers of one round.
#[derive(Clone, Debug, Default)]
struct IptCp {
    load_ms: f64,
    full_ms: f64,
    partial_ms: f64,
}

fn iptables_case(
    w: &World,
    opts: &Opts,
    svcs: &Services,
    ipt: Ipt,
) -> Result<(Sample, Sample, IptCp)> {
    let guard = Rules(
        w,
        match ipt {
            Ipt::Legacy => iptables_legacy_remove,
            Ipt::Nft => iptables_nft_remove,
        },
    );
    let mut cp = IptCp {
        load_ms: timed_stdin(
            w,
            ipt.restore(),
            &["--noflush"],
            &iptables_full(&svcs.ports, true, &[]),
        )?,
        ..Default::default()
    };
    short_conntrack_time_wait(w);
    let last = measure(w, opts, None, vip(svcs.last).into())?;
    let mid = measure(w, opts, None, vip(svcs.mid).into())?;
    // One endpoint of the edited service changes: a full sync, then (back) a partial one.
    let mut changed = svcs.ports.clone();
    let mut stale = Vec::new();
    for (k, p) in svcs.edited_ports(true) {
        stale.extend(stale_sep_chains(&changed[k], &p));
        changed[k] = p;
    }
    // kube-proxy deletes the chains that went away in the same restore.
    let full = iptables_full(&changed, false, &stale);
    cp.full_ms = timed_stdin(w, ipt.restore(), &["--noflush"], &full)?;
    let edited: Vec<usize> = svcs.ports_of(svcs.edited);
    let mut back_stale = Vec::new();
    for &k in &edited {
        back_stale.extend(stale_sep_chains(&changed[k], &svcs.ports[k]));
    }
    cp.partial_ms = timed_stdin(
        w,
        ipt.restore(),
        &["--noflush"],
        &iptables_partial(&svcs.ports, &edited, &back_stale),
    )?;
    drop(guard);
    Ok((last, mid, cp))
}

#[derive(Clone, Debug, Default)]
struct NftCp {
    load_ms: f64,
    one_ms: f64,
}

fn nftables_case(w: &World, opts: &Opts, svcs: &Services) -> Result<(Sample, NftCp)> {
    let guard = Rules(w, nft_remove);
    let mut cp = NftCp {
        load_ms: timed_stdin(w, "nft", &["-f", "-"], &nft_full(&svcs.ports, &[GATEWAY]))?,
        ..Default::default()
    };
    short_conntrack_time_wait(w);
    let s = measure(w, opts, None, vip(svcs.last).into())?;
    let mut text = String::new();
    for (k, p) in svcs.edited_ports(true) {
        text.push_str(&nft_update(&svcs.ports[k], &p));
    }
    cp.one_ms = timed_stdin(w, "nft", &["-f", "-"], &text)?;
    drop(guard);
    Ok((s, cp))
}

// ---------------------------------------------------------------------------------------
// One N

#[derive(Default)]
struct RunN {
    n: usize,
    /// case -> samples (one per round).
    cases: BTreeMap<String, Vec<Sample>>,
    /// clusterip socket agent, per round.
    agent: Vec<AgentCp>,
    ipt: Vec<IptCp>,
    ipt_nft: Vec<IptCp>,
    nft: Vec<NftCp>,
    /// wrk's opened connections per request, worst over all measurements.
    max_opens_per_request: f64,
    min_opens_per_request: f64,
}

const CASE_ORDER: [&str; 9] = [
    "direct",
    "socket",
    "tc",
    "xdp",
    "iptables-last",
    "iptables-mid",
    "iptables-nft-last",
    "iptables-nft-mid",
    "nftables",
];

fn run_n(w: &World, opts: &Opts, n: usize) -> Result<RunN> {
    let svcs = Services::new(n);
    svcs.write_manifests(&w.manifests)?;
    let mut run = RunN {
        n,
        min_opens_per_request: f64::MAX,
        ..Default::default()
    };
    let client_cg = w
        .client_cg
        .path()
        .to_str()
        .context("cgroup path")?
        .to_owned();
    let idle_cg = w.idle_cg.path().to_str().context("cgroup path")?.to_owned();
    let tc_all = "cip*";
    let tc_pods = "cipb*";
    for round in 0..opts.rounds {
        eprintln!("  round {}/{}", round + 1, opts.rounds);
        let push = |run: &mut RunN, name: &str, s: Sample| {
            eprintln!(
                "    {name:<14} conn/s c1 {:>8.0} c16 {:>8.0}  lat p50 {:>6.1} us  udp {:>8.0}/s",
                s.conn1, s.conn16, s.lat_p50_us, s.udp_rr
            );
            run.max_opens_per_request = run.max_opens_per_request.max(s.opens_per_request);
            run.min_opens_per_request = run.min_opens_per_request.min(s.opens_per_request);
            run.cases.entry(name.into()).or_default().push(s);
        };
        for &part in &opts.parts {
            match part {
                Part::Direct => {
                    let s = measure(w, opts, None, pod_ip(0).into())?;
                    push(&mut run, "direct", s);
                }
                Part::Socket => {
                    let (s, cp) = clusterip_case(
                        w,
                        opts,
                        &svcs,
                        &["--cgroup", &client_cg],
                        Some(&w.client_cg),
                    )
                    .context("socket")?;
                    push(&mut run, "socket", s);
                    run.agent.push(cp);
                }
                Part::Tc => {
                    let (s, _) = clusterip_case(
                        w,
                        opts,
                        &svcs,
                        &[
                            "--cgroup",
                            &idle_cg,
                            "--socket-lb=false",
                            "--tc-iface",
                            tc_all,
                        ],
                        None,
                    )
                    .context("tc")?;
                    push(&mut run, "tc", s);
                }
                Part::Xdp => {
                    let (s, _) = clusterip_case(
                        w,
                        opts,
                        &svcs,
                        &[
                            "--cgroup",
                            &idle_cg,
                            "--socket-lb=false",
                            "--tc-iface",
                            tc_pods,
                            "--xdp-iface",
                            CLIENT_IFACE,
                        ],
                        None,
                    )
                    .context("xdp")?;
                    push(&mut run, "xdp", s);
                }
                Part::Iptables | Part::IptablesNft => {
                    let (ipt, prefix) = if part == Part::Iptables {
                        (Ipt::Legacy, "iptables")
                    } else {
                        (Ipt::Nft, "iptables-nft")
                    };
                    let (last, mid, cp) = iptables_case(w, opts, &svcs, ipt).context(prefix)?;
                    push(&mut run, &format!("{prefix}-last"), last);
                    push(&mut run, &format!("{prefix}-mid"), mid);
                    eprintln!(
                        "    {}: from empty {:.0} ms, full {:.0} ms, partial {:.0} ms",
                        ipt.restore(),
                        cp.load_ms,
                        cp.full_ms,
                        cp.partial_ms
                    );
                    if ipt == Ipt::Legacy {
                        run.ipt.push(cp);
                    } else {
                        run.ipt_nft.push(cp);
                    }
                }
                Part::Nftables => {
                    let (s, cp) = nftables_case(w, opts, &svcs).context("nftables")?;
                    push(&mut run, "nftables", s);
                    eprintln!(
                        "    nft -f: from empty {:.0} ms, one service {:.1} ms",
                        cp.load_ms, cp.one_ms
                    );
                    run.nft.push(cp);
                }
            }
        }
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// Report

struct Report {
    machine: String,
    opts: Value,
    runs: Vec<RunN>,
}

/// The data-plane metrics: (key, header, higher is better, getter).
type Metric = (&'static str, &'static str, bool, fn(&Sample) -> f64);
const METRICS: [Metric; 6] = [
    ("conn_per_s_c1", "conn/s c=1", true, |s| s.conn1),
    ("conn_per_s_c16", "conn/s c=16", true, |s| s.conn16),
    ("latency_mean_us", "latency mean µs", false, |s| {
        s.lat_mean_us
    }),
    ("latency_p50_us", "latency p50 µs", false, |s| s.lat_p50_us),
    ("latency_p99_us", "latency p99 µs", false, |s| s.lat_p99_us),
    ("udp_rr_per_s", "UDP rr/s", true, |s| s.udp_rr),
];

impl RunN {
    fn ordered(&self) -> Vec<(&str, &Vec<Sample>)> {
        CASE_ORDER
            .iter()
            .filter_map(|c| self.cases.get_key_value(*c).map(|(k, v)| (k.as_str(), v)))
            .collect()
    }

    fn median(&self, case: &str, m: &Metric) -> f64 {
        self.cases
            .get(case)
            .map_or(f64::NAN, |v| med(&v.iter().map(m.3).collect::<Vec<_>>()).0)
    }
}

impl Report {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Machine: {}.\n", self.machine);
        for run in &self.runs {
            let rounds = run.cases.values().map(Vec::len).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "**N = {} services** × {ENDPOINTS} endpoints; median [min–max] over {rounds} \
                 round(s); (×direct)\n",
                run.n
            );
            let _ = write!(out, "| case |");
            for m in &METRICS {
                let _ = write!(out, " {} |", m.1);
            }
            let _ = write!(out, "\n|---|");
            for _ in &METRICS {
                let _ = write!(out, "---|");
            }
            out.push('\n');
            for (case, samples) in run.ordered() {
                let _ = write!(out, "| {case} |");
                for m in &METRICS {
                    let (md, lo, hi) = med(&samples.iter().map(m.3).collect::<Vec<_>>());
                    let base = run.median("direct", m);
                    let ratio = if base.is_nan() || case == "direct" {
                        String::new()
                    } else {
                        format!(" ({:.2}×)", md / base)
                    };
                    let _ = write!(
                        out,
                        " {} [{}–{}]{ratio} |",
                        fmt_num(md),
                        fmt_num(lo),
                        fmt_num(hi)
                    );
                }
                out.push('\n');
            }
            out.push('\n');
            let mut cp = Vec::new();
            if !run.agent.is_empty() {
                let a = &run.agent;
                let col = |f: fn(&AgentCp) -> f64| {
                    let (m, lo, hi) = med(&a.iter().map(f).collect::<Vec<_>>());
                    format!("{} [{}–{}]", fmt_num(m), fmt_num(lo), fmt_num(hi))
                };
                let opt = |f: fn(&AgentCp) -> Option<u64>| {
                    let v: Vec<f64> = a.iter().filter_map(f).map(|x| x as f64).collect();
                    if v.is_empty() {
                        "not logged".to_string()
                    } else {
                        let (m, lo, hi) = med(&v);
                        format!("{} [{}–{}] µs", fmt_num(m), fmt_num(lo), fmt_num(hi))
                    }
                };
                cp.push(format!(
                    "- clusterip agent (socket-LB): start → first \"synced\" {} ms (apply_us \
                     {}); YAML edit of one endpoint → \"synced\" {} ms wall (includes the 200 ms \
                     manifest poll; apply_us {}, latency_us {}); RSS {} MiB (anonymous {}, \
                     file-backed {}; peak {}; target at 10,000 services through the file source: <= 96 MiB); \
                     maps {} MiB (bytes_memlock; targets: 1 service <= 16 MiB, 10,000 <= 48 MiB)",
                    col(|c| c.start_ms),
                    opt(|c| c.start_apply_us),
                    col(|c| c.edit_wall_ms),
                    opt(|c| c.edit_apply_us),
                    opt(|c| c.edit_latency_us),
                    col(|c| c.rss_mib),
                    col(|c| c.rss_anon_mib),
                    col(|c| c.rss_file_mib),
                    col(|c| c.rss_peak_mib),
                    col(|c| c.maps_mib),
                ));
            }
            for (list, tool) in [
                (&run.ipt, "iptables-legacy-restore"),
                (&run.ipt_nft, "iptables-nft-restore"),
            ] {
                if list.is_empty() {
                    continue;
                }
                let col = |f: fn(&IptCp) -> f64| {
                    let (m, lo, hi) = med(&list.iter().map(f).collect::<Vec<_>>());
                    format!("{} [{}–{}]", fmt_num(m), fmt_num(lo), fmt_num(hi))
                };
                cp.push(format!(
                    "- kube-proxy iptables (`{tool} --noflush`): from empty {} ms; one endpoint \
                     change, full sync {} ms, partial sync {} ms",
                    col(|c| c.load_ms),
                    col(|c| c.full_ms),
                    col(|c| c.partial_ms)
                ));
            }
            if !run.nft.is_empty() {
                let col = |f: fn(&NftCp) -> f64| {
                    let (m, lo, hi) = med(&run.nft.iter().map(f).collect::<Vec<_>>());
                    format!("{} [{}–{}]", fmt_num(m), fmt_num(lo), fmt_num(hi))
                };
                cp.push(format!(
                    "- kube-proxy nftables (`nft -f`): from empty {} ms; one-service change {} ms",
                    col(|c| c.load_ms),
                    col(|c| c.one_ms)
                ));
            }
            if !cp.is_empty() {
                let _ = writeln!(out, "Control plane (N = {}):\n", run.n);
                for l in cp {
                    let _ = writeln!(out, "{l}");
                }
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "wrk opened {:.3}–{:.3} connections per completed request.\n",
                run.min_opens_per_request, run.max_opens_per_request
            );
        }
        out
    }

    fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let cases: serde_json::Map<String, Value> = r
                    .ordered()
                    .into_iter()
                    .map(|(c, samples)| {
                        let mut o = serde_json::Map::new();
                        for m in &METRICS {
                            let raw: Vec<f64> = samples.iter().map(m.3).collect();
                            let (md, lo, hi) = med(&raw);
                            o.insert(
                                m.0.into(),
                                json!({"median": md, "min": lo, "max": hi, "raw": raw,
                                       "ratio_to_direct": md / r.median("direct", m)}),
                            );
                        }
                        (c.to_string(), Value::Object(o))
                    })
                    .collect();
                json!({
                    "services": r.n,
                    "endpoints_per_service": ENDPOINTS,
                    "cases": cases,
                    "clusterip_agent": r.agent.iter().map(|a| json!({
                        "start_to_synced_ms": a.start_ms, "start_apply_us": a.start_apply_us,
                        "edit_to_synced_wall_ms": a.edit_wall_ms,
                        "edit_apply_us": a.edit_apply_us, "edit_latency_us": a.edit_latency_us,
                        "rss_mib": a.rss_mib, "rss_anon_mib": a.rss_anon_mib,
                        "rss_file_mib": a.rss_file_mib, "rss_peak_mib": a.rss_peak_mib,
                        "maps_memlock_mib": a.maps_mib,
                    })).collect::<Vec<_>>(),
                    "iptables_legacy": r.ipt.iter().map(ipt_json).collect::<Vec<_>>(),
                    "iptables_nft": r.ipt_nft.iter().map(ipt_json).collect::<Vec<_>>(),
                    "nftables": r.nft.iter().map(|c| json!({
                        "from_empty_ms": c.load_ms, "one_service_change_ms": c.one_ms,
                    })).collect::<Vec<_>>(),
                    "wrk_opens_per_request": [r.min_opens_per_request, r.max_opens_per_request],
                })
            })
            .collect();
        json!({"machine": self.machine, "options": self.opts, "runs": runs})
    }

    /// Bars of each case's median relative to direct (higher is better: latencies inverted),
    /// one panel per N.
    fn svg(&self) -> String {
        let metrics: Vec<&Metric> = METRICS
            .iter()
            .filter(|m| m.0 != "latency_mean_us")
            .collect();
        let colors = [
            "#888888", "#1f77b4", "#2ca02c", "#17becf", "#d62728", "#ff7f0e", "#8c564b", "#e377c2",
            "#9467bd",
        ];
        let (gw, bw, ph, top) = (150.0, 18.0, 220.0, 40.0);
        let width = 80.0 + gw * metrics.len() as f64;
        let height = top + ph * self.runs.len() as f64 + 40.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"10\" y=\"18\" \
             font-size=\"13\">clusterip vs kube-proxy: median relative to direct (higher is \
             better; latency as direct/case) — {}</text>\n",
            xml(&self.machine)
        );
        for (k, c) in CASE_ORDER.iter().enumerate() {
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"26\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" \
                 y=\"35\">{c}</text>",
                10.0 + k as f64 * 95.0,
                colors[k],
                24.0 + k as f64 * 95.0
            );
        }
        for (r, run) in self.runs.iter().enumerate() {
            let y0 = top + 10.0 + ph * r as f64;
            let base = y0 + ph - 40.0;
            let scale = (ph - 70.0) / 1.2;
            let _ = write!(
                s,
                "<text x=\"10\" y=\"{}\" font-size=\"12\">N = {}</text>\n\
                 <line x1=\"60\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#bbb\" \
                 stroke-dasharray=\"3,3\"/><text x=\"30\" y=\"{}\">1.0</text>\n",
                y0 + 14.0,
                run.n,
                width - 10.0,
                base - scale,
                base - scale,
                base - scale + 4.0
            );
            for (g, m) in metrics.iter().enumerate() {
                let gx = 70.0 + gw * g as f64;
                let _ = writeln!(
                    s,
                    "<text x=\"{gx}\" y=\"{}\">{}</text>",
                    base + 14.0,
                    xml(m.1)
                );
                let direct = run.median("direct", m);
                for (k, c) in CASE_ORDER.iter().enumerate() {
                    let v = run.median(c, m);
                    if v.is_nan() || direct.is_nan() || v == 0.0 {
                        continue;
                    }
                    let ratio = if m.2 { v / direct } else { direct / v };
                    let h = (ratio.min(1.2) * scale).max(1.0);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{}\">\
                         <title>{c} {}: {} ({ratio:.2}x)</title></rect>",
                        gx + k as f64 * bw,
                        base - h,
                        bw - 2.0,
                        colors[k],
                        xml(m.1),
                        fmt_num(v)
                    );
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }

    /// Smoke mode: every selected part produced numbers that make sense.
    fn check_smoke(&self) -> Result<()> {
        for run in &self.runs {
            for (case, samples) in &run.cases {
                for s in samples {
                    if !(s.conn1 > 0.0 && s.conn16 > 0.0 && s.udp_rr > 0.0 && s.lat_p50_us > 0.0) {
                        bail!("N={} {case}: empty measurement {s:?}", run.n);
                    }
                }
            }
            if run.agent.iter().any(|a| a.edit_wall_ms.is_nan()) {
                bail!("N={}: the agent did not apply a manifest edit", run.n);
            }
            if !(0.9..=1.1).contains(&run.min_opens_per_request)
                || !(0.9..=1.1).contains(&run.max_opens_per_request)
            {
                bail!(
                    "wrk did not open one connection per request: {}–{}",
                    run.min_opens_per_request,
                    run.max_opens_per_request
                );
            }
        }
        Ok(())
    }
}

fn ipt_json(c: &IptCp) -> Value {
    json!({
        "from_empty_ms": c.load_ms, "one_endpoint_full_sync_ms": c.full_ms,
        "one_endpoint_partial_sync_ms": c.partial_ms,
    })
}
