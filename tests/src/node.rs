//! The per-packet topology: a node netns that routes between a client netns and pod netns,
//! with the agent running inside the node netns and its TC (and XDP) programs on the node's
//! veths. Nothing of it lives in the root netns.
//!
//! ```text
//!   client netns                 node netns (agent, forwarding)          pod netns i
//!   eth0 10.100.0.2/24  <--->  cipc 10.100.0.1/24                        
//!        fd00:100::2/64              fd00:100::1/64                       
//!                              cipp<i> 10.200.<i+1>.1/24       <--->  eth0 10.200.<i+1>.2/24
//!                                      fd00:200:<i+1>::1/64                fd00:200:<i+1>::2/64
//! ```
//! Default routes (v4 and v6) of the client and the pods point at the node. No netns has a
//! route to the VIPs other than its default route, so a VIP packet that is not translated by
//! the node's programs goes nowhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::agent::Agent;
use crate::bpffs::PinDir;
use crate::cgroup::Cgroup;
use crate::env::Env;
use crate::fixture::standard_listen;
use crate::manifests::Manifests;
use crate::netns::{Netns, ip};
use crate::process::{Listen, NsClient, Proc, output, start_backend};

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 2);
pub const NODE_C4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const NODE_C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);

/// The node's interface toward the client.
pub const CLIENT_IFACE: &str = "cipc";
/// Matches every node-side veth (client and pods), including pods added later.
pub const IFACE_GLOB: &str = "cip*";

/// Ports every standard backend serves (on its v4 and v6 address): those of
/// [`crate::fixture::standard_listen`] and these two.
pub use crate::fixture::{ECHO_PORT, TCP_PORT, UDP_PORT};
pub const HTTP_PORT: u16 = 8081;
pub const DATA_PORT: u16 = 9001;

/// The node's interface toward pod `i`.
pub fn pod_iface(i: usize) -> String {
    format!("cipp{i}")
}

/// Pod `i`'s IPv4 address: 10.200.<i+1>.2.
pub fn pod4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, i as u8 + 1, 2)
}

/// Pod `i`'s IPv6 address: fd00:200:<i+1>::2.
pub fn pod6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, i as u16 + 1, 0, 0, 0, 0, 2)
}

pub fn pod_ip(i: usize, v6: bool) -> IpAddr {
    if v6 { pod6(i).into() } else { pod4(i).into() }
}

pub fn client_ip(v6: bool) -> IpAddr {
    if v6 { CLIENT6.into() } else { CLIENT4.into() }
}

/// `sysctl -w KEY=VALUE` inside `ns` (nsenter --net: /proc/sys/net is per netns; /sys is not
/// remounted as `ip netns exec` would).
pub fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["sysctl", "-q", "-w", &format!("{key}={value}")])
        .output()
        .context("running nsenter sysctl")?;
    if !out.status.success() {
        bail!(
            "sysctl -w {key}={value} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `PROGRAM ARGS` inside `ns` (nsenter --net) and returns its stdout.
pub fn output_in(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec![format!("--net={}", ns.path().display()), program.to_owned()];
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    output("nsenter", &all)
}

/// Node, client and pod netns; dropped (deleted, with their veths) in reverse order.
pub struct NodeTopology {
    pub pods: Vec<Netns>,
    pub client: Netns,
    pub node: Netns,
}

impl NodeTopology {
    pub fn new(n_pods: usize) -> Result<Self> {
        let node = Netns::new("n")?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // Reverse-NATed replies have the VIP as source, which no route in the node
            // leads to: strict or loose reverse-path filtering would drop them.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            sysctl(&node, k, v)?;
        }
        no_dad(&node)?;
        node.ip(&["link", "set", "lo", "up"])?;
        let client = Netns::new("c")?;
        no_dad(&client)?;
        veth(&node, CLIENT_IFACE, &client)?;
        node.ip(&["addr", "add", &format!("{NODE_C4}/24"), "dev", CLIENT_IFACE])?;
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_C6}/64"),
            "dev",
            CLIENT_IFACE,
            "nodad",
        ])?;
        node.ip(&["link", "set", CLIENT_IFACE, "up"])?;
        endpoint(&client, CLIENT4, NODE_C4, CLIENT6, NODE_C6)?;
        let mut me = Self {
            pods: Vec::new(),
            client,
            node,
        };
        for _ in 0..n_pods {
            me.add_pod()?;
        }
        Ok(me)
    }

    /// A new pod netns `i` (= the number of pods so far) with its veth `cipp<i>` on the node.
    pub fn add_pod(&mut self) -> Result<usize> {
        let i = self.pods.len();
        let pod = Netns::new(&format!("p{i}"))?;
        no_dad(&pod)?;
        let iface = pod_iface(i);
        veth(&self.node, &iface, &pod)?;
        let gw4 = Ipv4Addr::new(10, 200, i as u8 + 1, 1);
        let gw6 = Ipv6Addr::new(0xfd00, 0x200, i as u16 + 1, 0, 0, 0, 0, 1);
        self.node
            .ip(&["addr", "add", &format!("{gw4}/24"), "dev", &iface])?;
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gw6}/64"),
            "dev",
            &iface,
            "nodad",
        ])?;
        self.node.ip(&["link", "set", &iface, "up"])?;
        endpoint(&pod, pod4(i), gw4, pod6(i), gw6)?;
        self.pods.push(pod);
        Ok(i)
    }
}

impl NodeTopology {
    /// Sets the MTU of pod `i`'s link (both ends).
    pub fn set_pod_mtu(&self, i: usize, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        self.node.ip(&["link", "set", &pod_iface(i), "mtu", &mtu])?;
        self.pods[i].ip(&["link", "set", "eth0", "mtu", &mtu])
    }
}

/// No duplicate address detection on interfaces created in `ns` from now on: their IPv6
/// addresses, link-local ones included, are usable at once (a tentative link-local address
/// delays neighbour discovery and loses the first packets of a test).
pub(crate) fn no_dad(ns: &Netns) -> Result<()> {
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")?;
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
}

/// A veth pair created directly in its two netns: `node_side` in `node`, `eth0` in `other`.
fn veth(node: &Netns, node_side: &str, other: &Netns) -> Result<()> {
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
        other.name(),
    ])
}

/// Addresses and default routes of a client or pod netns behind its `eth0`.
fn endpoint(ns: &Netns, v4: Ipv4Addr, gw4: Ipv4Addr, v6: Ipv6Addr, gw6: Ipv6Addr) -> Result<()> {
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gw4.to_string()])?;
    ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])
}

/// Everything one per-packet test needs. Field order is drop order: the agent dies, the
/// backends, then the pins are cleaned up (programs detached), then the cgroup, the netns and
/// the manifests go.
pub struct NodeFixture {
    pub agent: Option<Agent>,
    backends: Vec<Proc>,
    pub pins: PinDir,
    /// Passed as the agent's `--cgroup` (so that even a misbehaving agent never touches the
    /// root cgroup); holds no process, and with `--socket-lb=false` it must get no program.
    pub cgroup: Cgroup,
    pub topo: NodeTopology,
    pub manifests: Manifests,
    pub env: Env,
}

impl NodeFixture {
    pub fn new(env: Env, n_pods: usize) -> Result<Self> {
        let manifests = Manifests::new()?;
        let topo = NodeTopology::new(n_pods).context("creating the node topology")?;
        let cgroup = Cgroup::new()?;
        let pins = PinDir::new(&env);
        Ok(Self {
            agent: None,
            backends: Vec::new(),
            pins,
            cgroup,
            topo,
            manifests,
            env,
        })
    }

    /// Starts backend `be-<i>` in pod `i`: greeting TCP, HTTP, UDP, echo and data ports on
    /// the pod's IPv4 and IPv6 addresses.
    pub fn standard_backend(&mut self, i: usize) -> Result<()> {
        let ips = [pod_ip(i, false), pod_ip(i, true)];
        let listen = Listen {
            http: ips
                .iter()
                .map(|&ip| SocketAddr::new(ip, HTTP_PORT))
                .collect(),
            tcp_data: ips
                .iter()
                .map(|&ip| SocketAddr::new(ip, DATA_PORT))
                .collect(),
            ..standard_listen(ips)
        };
        let p = start_backend(
            Path::new(self.env.bins.backend),
            &self.topo.pods[i],
            &format!("be-{i}"),
            &listen,
        )?;
        self.backends.push(p);
        Ok(())
    }

    pub fn standard_backends(&mut self) -> Result<()> {
        (0..self.topo.pods.len()).try_for_each(|i| self.standard_backend(i))
    }

    /// `clusterip-agent run` in the node netns with `--tc-iface cip* --socket-lb=false` and
    /// `extra`; waits for "synced" and for the TC program on every node veth.
    pub fn start_agent(&mut self, extra: &[&str]) -> Result<&mut Agent> {
        let mut want = vec![CLIENT_IFACE.to_owned()];
        want.extend((0..self.topo.pods.len()).map(pod_iface));
        self.start_agent_tc(IFACE_GLOB, &want, extra)
    }

    /// `clusterip-agent run --tc-iface TC --socket-lb=false EXTRA` in the node netns; waits
    /// for "synced" and for the TC program on each of `tc_ifaces`.
    pub fn start_agent_tc(
        &mut self,
        tc: &str,
        tc_ifaces: &[String],
        extra: &[&str],
    ) -> Result<&mut Agent> {
        let mut args = vec!["--tc-iface", tc, "--socket-lb=false"];
        args.extend_from_slice(extra);
        let agent = Agent::start_in(
            &self.env.agent_bin,
            &self.manifests.dir(),
            self.cgroup.path(),
            self.pins.path(),
            Some(&self.topo.node),
            &args,
        )?;
        self.agent = Some(agent);
        self.agent().wait_synced(Duration::from_secs(15))?;
        self.wait_tc(tc_ifaces, Duration::from_secs(10))?;
        Ok(self.agent())
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent not started")
    }

    /// Waits until every interface in `ifaces` has a TC ingress program (tcx or cls_bpf) in
    /// the node netns.
    pub fn wait_tc(&mut self, ifaces: &[String], timeout: Duration) -> Result<()> {
        wait_tc_ingress(&self.topo.node, self.agent.as_mut(), ifaces, timeout)
    }

    /// `bpftool net show` in the node netns.
    pub fn net(&self) -> Result<NetProgs> {
        net_progs(&self.topo.node)
    }

    /// A client in the client netns, in no cgroup of the test (no socket program sees it).
    pub fn client(&self) -> NsClient<'_> {
        NsClient {
            bin: Path::new(self.env.bins.client),
            netns: &self.topo.client,
            cgroup: None,
        }
    }

    /// A client inside pod `i`'s netns (for hairpin).
    pub fn pod_client(&self, i: usize) -> NsClient<'_> {
        NsClient {
            bin: Path::new(self.env.bins.client),
            netns: &self.topo.pods[i],
            cgroup: None,
        }
    }

    /// `clusterip-agent dump --conntrack --json`.
    pub fn conntrack(&self) -> Result<Conntrack> {
        let v = self.dump_args(&["--conntrack"])?;
        serde_json::from_value(v.clone()).with_context(|| format!("dump --conntrack: {v}"))
    }

    fn dump_args(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["dump", "--bpffs"];
        let pins = self.pins.path().to_str().context("pin path")?;
        all.push(pins);
        all.extend_from_slice(args);
        all.push("--json");
        let out = output(&self.env.agent_bin, &all)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing `clusterip-agent {all:?}` output: {out}"))
    }

    /// `clusterip-agent dump --json`: one entry per frontend (with `packets` and `bytes`).
    pub fn services(&self) -> Result<Vec<Value>> {
        match self.dump_args(&[])? {
            Value::Array(a) => Ok(a),
            other => bail!("dump --json printed {other}"),
        }
    }
}

/// Waits until every interface in `ifaces` of `ns` has a TC ingress program (tcx or
/// cls_bpf); fails early if `agent` (the one expected to attach them) exits.
pub fn wait_tc_ingress(
    ns: &Netns,
    mut agent: Option<&mut Agent>,
    ifaces: &[String],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let net = net_progs(ns)?;
        let mut missing = Vec::new();
        for i in ifaces {
            let legacy = net.tc.iter().any(|t| &t.devname == i && t.is_ingress());
            if !legacy && tcx_ingress(ns, i)?.is_empty() {
                missing.push(i);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no TC ingress program on {missing:?} after {timeout:?}: {net:?}");
        }
        if let Some(agent) = agent.as_deref_mut()
            && let Some(status) = agent.exit_status()
        {
            bail!("the agent exited ({status}) before attaching to {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `dump --conntrack --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Conntrack {
    /// Size and timeouts ({max_entries_v4, max_entries_v6, tcp_timeout_s, ...}).
    pub config: Option<Value>,
    pub flows: Vec<Flow>,
}

/// One conntrack flow as the dump shows it.
#[derive(Clone, Debug, Deserialize)]
pub struct Flow {
    /// `ip:port` / `[ip6]:port`.
    pub client: String,
    pub vip: String,
    pub backend: String,
    pub protocol: String,
    #[serde(default)]
    pub flags: Vec<String>,
}

/// What `bpftool -j net show` lists in a netns.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NetProgs {
    #[serde(default)]
    pub xdp: Vec<XdpProg>,
    #[serde(default)]
    pub tc: Vec<TcProg>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct XdpProg {
    pub devname: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub multi_attachments: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TcProg {
    pub devname: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub prog_id: Option<u32>,
}

impl TcProg {
    pub fn is_ingress(&self) -> bool {
        self.kind.contains("ingress")
    }
}

/// Program ids attached with tcx to the ingress of `iface` in `ns` (BPF_PROG_QUERY; the
/// installed bpftool predates tcx and does not list them).
pub fn tcx_ingress(ns: &Netns, iface: &str) -> Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    let fd = std::os::fd::AsRawFd::as_raw_fd(ns.file());
    let name = std::ffi::CString::new(iface)?;
    // setns() changes only the calling thread: do it in a thread of its own.
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Vec<u32>> {
                // SAFETY: plain syscalls on an fd and a C string we own.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if ifindex == 0 {
                    bail!("no interface {iface} in {}", ns.name());
                }
                let mut ids = [0u32; 64];
                // union bpf_attr, query part: target_ifindex, attach_type, query_flags,
                // attach_flags, prog_ids (u64), prog_cnt, pad, prog_attach_flags, link_ids,
                // link_attach_flags, revision.
                let mut attr = [0u64; 8];
                attr[0] = ifindex as u64 | (BPF_TCX_INGRESS as u64) << 32;
                attr[2] = ids.as_mut_ptr() as u64;
                attr[3] = ids.len() as u64;
                // SAFETY: attr is a valid bpf_attr of the size given; the kernel writes at most
                // prog_cnt ids into `ids`.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_bpf,
                        BPF_PROG_QUERY,
                        attr.as_mut_ptr(),
                        std::mem::size_of_val(&attr),
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error()).context("BPF_PROG_QUERY tcx");
                }
                let n = (attr[3] & 0xffff_ffff) as usize;
                Ok(ids[..n.min(ids.len())].to_vec())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("query thread panicked"))?
    })
}

pub fn net_progs(ns: &Netns) -> Result<NetProgs> {
    let out = output_in(ns, "bpftool", &["-j", "net", "show"])?;
    let all: Vec<NetProgs> =
        serde_json::from_str(&out).with_context(|| format!("bpftool net show printed {out}"))?;
    Ok(all.into_iter().next().unwrap_or_default())
}
