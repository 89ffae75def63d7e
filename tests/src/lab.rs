//! The multi-node lab: N nodes on one shared L2 network, each with its own pods, agent, pin
//! directory and cgroup, plus an external client that reaches the cluster only through the
//! nodes' addresses. For what only shows with more than one node: pod-to-pod across nodes,
//! per-node `--node-name` and `nodeName`, NodePort / LoadBalancer / externalTrafficPolicy.
//!
//! ```text
//!                 switch netns: bridge br0 (no address, IPv6 off, no STP, no snooping)
//!                 port n1 ──────────────── port n2 ──────────────── port x
//!                    │                        │                        │
//!   node-1 netns (agent, forwarding)  node-2 netns (the same, 2)   external client netns
//!   ext0 10.100.0.1/24 fd00:100::1/64 ext0 10.100.0.2/24 ...       eth0 10.100.0.100/24
//!   10.201.2.0/24   via 10.100.0.2    10.201.1.0/24 via 10.100.0.1      fd00:100::100/64
//!   fd00:201:2::/64 via fd00:100::2   ...                          no other route; an LB
//!   pod<p> 10.201.1.1/32                                           IP via a node: route_via
//!          fd00:201:1::1/128  (the gateway, on every pod veth)
//!   10.201.1.<10+p>/32 dev pod<p>, fd00:201:1::<10+p>/128 dev pod<p>
//!      │
//!   pod netns n1p<p>: eth0 10.201.1.<10+p>/32 fd00:201:1::<10+p>/128
//!      10.201.1.1 dev eth0 scope link; default via 10.201.1.1 (IPv6 alike)
//! ```
//!
//! Pods are wired as the CNI `ptp` plugin does: a veth per pod, the pod's /32 (/128) on its
//! `eth0`, the node side holding the pod CIDR's gateway address (the same on every pod veth)
//! and a /32 (/128) route to the pod. Nodes route the other nodes' pod CIDRs via those nodes'
//! external addresses, as a routed CNI (or kube-router, Calico without overlay) would; the
//! external client has no such route, so pod IPs are unreachable from outside.
//!
//! Node `n` (1-based, as in `node-1`) is [`Lab::node`]`(n)`, its pod `p` (0-based) `n<n>p<p>`;
//! the agent of node `n` runs inside its netns with `--node-name node-<n>`, `--cgroup` its own
//! child cgroup (the socket hooks see only processes put there: [`Lab::pod_client`],
//! [`Lab::node_client`]), `--bpffs` its own pin directory and `--tc-iface pod*` (its pods'
//! veths). All agents read the same manifest directory, as all kube-proxies watch one API.
//!
//! The per-packet path across nodes needs TC on `ext0` as well (`start_agents(&["--tc-iface",
//! EXT_IFACE])`): a backend on another node answers the client pod's own address, so the reply
//! enters the client's node through `ext0`, not through a pod veth, and is reverse-NATed only
//! if a TC program sits there.
//!
//! Nothing lives in the root netns: every veth is created directly in its two namespaces.
//! Dropping the [`Lab`] kills the agents, then every process, cleans the pins
//! (`clusterip-agent cleanup --bpffs`), removes the cgroups and deletes the namespaces (which
//! takes their interfaces and the bridge with them), also when a test panics.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::agent::{Agent, DumpEntry, dump_json};
use crate::bpffs::PinDir;
use crate::cgroup::Cgroup;
use crate::env::Env;
use crate::fixture::standard_listen;
use crate::manifests::Manifests;
use crate::netns::Netns;
use crate::node::{DATA_PORT, HTTP_PORT, no_dad, wait_tc_ingress};
use crate::process::{Listen, NsClient, Proc, output, start_backend};

/// Each node's interface on the shared network.
pub const EXT_IFACE: &str = "ext0";
/// The bridge in the switch netns.
pub const BRIDGE: &str = "br0";
/// Matches every pod veth of a node (and only those: not [`EXT_IFACE`]).
pub const POD_IFACE_GLOB: &str = "pod*";
/// The external client's address on the nodes' network.
pub const EXTERNAL4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);
pub const EXTERNAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x100);
/// Prefix lengths of the nodes' network.
const NODE_NET4_LEN: u8 = 24;
const NODE_NET6_LEN: u8 = 64;
/// Node numbers stop below the external client's host part.
const MAX_NODES: usize = 99;
/// Pod host parts start at 10 (10.201.<n>.10): the gateway is .1.
const FIRST_POD: usize = 10;
const MAX_PODS: usize = 200;

/// `node-<n>`: the agent's `--node-name` and the endpoints' `nodeName`.
pub fn node_name(n: usize) -> String {
    format!("node-{n}")
}

/// Node `n`'s address on the shared network: 10.100.0.<n>.
pub fn node4(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 0, n as u8)
}

/// `x`'s decimal digits read as hex (12 -> 0x12), so IPv6 addresses read like their IPv4
/// twins: node 12 is 10.100.0.12 and fd00:100::12. Callers keep `x` below 10,000.
fn hex_digits(x: usize) -> u16 {
    x.to_string()
        .chars()
        .fold(0, |acc, d| acc * 16 + d.to_digit(10).unwrap_or(0) as u16)
}

/// Node `n`'s IPv6 address on the shared network: fd00:100::<n>.
pub fn node6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, hex_digits(n))
}

pub fn node_ip(n: usize, v6: bool) -> IpAddr {
    if v6 { node6(n).into() } else { node4(n).into() }
}

pub fn external_ip(v6: bool) -> IpAddr {
    if v6 {
        EXTERNAL6.into()
    } else {
        EXTERNAL4.into()
    }
}

/// Node `n`'s pod CIDRs: 10.201.<n>.0/24 and fd00:201:<n>::/64.
pub fn pod_cidr(n: usize, v6: bool) -> String {
    if v6 {
        format!("fd00:201:{:x}::/64", hex_digits(n))
    } else {
        format!("10.201.{n}.0/24")
    }
}

/// The gateway of node `n`'s pods (on every pod veth of the node): 10.201.<n>.1,
/// fd00:201:<n>::1.
pub fn pod_gateway(n: usize, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0xfd00, 0x201, hex_digits(n), 0, 0, 0, 0, 1).into()
    } else {
        Ipv4Addr::new(10, 201, n as u8, 1).into()
    }
}

/// Pod `p` of node `n`: 10.201.<n>.<10+p>, fd00:201:<n>::<10+p>.
pub fn pod_ip(n: usize, p: usize, v6: bool) -> IpAddr {
    let host = FIRST_POD + p;
    if v6 {
        Ipv6Addr::new(0xfd00, 0x201, hex_digits(n), 0, 0, 0, 0, hex_digits(host)).into()
    } else {
        Ipv4Addr::new(10, 201, n as u8, host as u8).into()
    }
}

/// Node-side veth of pod `p`: `pod<p>`.
pub fn pod_iface(p: usize) -> String {
    format!("pod{p}")
}

/// The switch's port toward node `n`: `n<n>`.
fn switch_port(n: usize) -> String {
    format!("n{n}")
}

/// The switch's port toward the external client.
const EXTERNAL_PORT: &str = "x";

/// The name a standard backend in pod `p` of node `n` answers with: `n<n>p<p>`.
pub fn backend_name(n: usize, p: usize) -> String {
    format!("n{n}p{p}")
}

fn prefixed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Runs `ip [-n NS] -batch -` with `cmds` (one command a line) on stdin: one process for a
/// whole interface setup instead of one per command. Stops at the first failing line. A
/// batch line takes no options (no `-6`): the family comes from the addresses (`::/0` for an
/// IPv6 default route).
fn ip_batch(ns: Option<&Netns>, cmds: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns.name()]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    let mut script = String::new();
    for c in cmds {
        script.push_str(c);
        script.push('\n');
    }
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(script.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -batch in {}: {}\nscript:\n{script}",
            ns.map_or("the root netns", |n| n.name()),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `sysctl -w` of every pair inside `ns`, one process (nsenter --net: /proc/sys/net is the
/// netns's own).
fn sysctls(ns: &Netns, pairs: &[(&str, &str)]) -> Result<()> {
    let mut args = vec![
        format!("--net={}", ns.path().display()),
        "sysctl".to_owned(),
        "-q".to_owned(),
        "-w".to_owned(),
    ];
    args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    output("nsenter", &args).map(drop)
}

/// `ip link add A netns NS_A type veth peer name B netns NS_B`: both ends are created in their
/// namespaces directly, never in the root netns.
fn veth_cmd(a: &str, ns_a: &Netns, b: &str, ns_b: &Netns) -> String {
    format!(
        "link add {a} netns {} type veth peer name {b} netns {}",
        ns_a.name(),
        ns_b.name()
    )
}

/// One node. Field order is drop order: agent, processes, pins, cgroup, pods, the node netns.
pub struct LabNode {
    /// 1-based, as in `node-1`.
    pub n: usize,
    /// `node-<n>`.
    pub name: String,
    pub agent: Option<Agent>,
    /// Backends in the pods and servers in the node netns.
    procs: Vec<Proc>,
    pub pins: PinDir,
    /// The agent's `--cgroup`; holds the clients [`Lab::pod_client`] and [`Lab::node_client`]
    /// start.
    pub cgroup: Cgroup,
    /// Pod `p`'s netns.
    pub pods: Vec<Netns>,
    pub netns: Netns,
}

impl LabNode {
    pub fn agent(&mut self) -> &mut Agent {
        self.agent
            .as_mut()
            .unwrap_or_else(|| panic!("the agent of {} is not started", self.name))
    }

    /// The node-side veths of its pods.
    pub fn pod_ifaces(&self) -> Vec<String> {
        (0..self.pods.len()).map(pod_iface).collect()
    }
}

/// The lab. Dropping it kills every agent first (none outlives another's namespaces), then
/// each node goes ([`LabNode`]'s order), then the external client, the switch and the
/// manifests.
pub struct Lab {
    /// Node `n` is `nodes[n - 1]`; see [`Lab::node`].
    pub nodes: Vec<LabNode>,
    /// The external client: on the nodes' network only.
    pub external: Netns,
    pub switch: Netns,
    /// Read by every agent.
    pub manifests: Manifests,
    pub env: Env,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.agent.take();
        }
    }
}

impl Lab {
    /// `nodes` nodes with `pods_per_node` pods each, the switch and the external client; no
    /// agent or backend yet.
    pub fn new(env: Env, nodes: usize, pods_per_node: usize) -> Result<Self> {
        ensure!(
            (1..=MAX_NODES).contains(&nodes),
            "1 to {MAX_NODES} nodes, not {nodes}"
        );
        ensure!(
            pods_per_node <= MAX_PODS,
            "at most {MAX_PODS} pods per node"
        );
        let manifests = Manifests::new()?;
        let switch = Netns::new("sw")?;
        let external = Netns::new("x")?;
        let mut lab = Self {
            nodes: Vec::new(),
            external,
            switch,
            manifests,
            env,
        };
        lab.wire_switch().context("creating the switch")?;
        lab.wire_external()
            .context("creating the external client")?;
        for n in 1..=nodes {
            let node = lab
                .wire_node(n, nodes, pods_per_node)
                .with_context(|| format!("creating {}", node_name(n)))?;
            lab.nodes.push(node);
        }
        Ok(lab)
    }

    fn wire_switch(&self) -> Result<()> {
        // An L2 switch only: no address of its own, nothing it would send (IPv6 would give
        // the bridge a link-local address, router solicitations, MLD reports).
        sysctls(
            &self.switch,
            &[
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ],
        )?;
        // No STP: ports forward at once. No multicast snooping: neighbour solicitations
        // (to solicited-node multicast groups) are flooded, never held back waiting for MLD
        // reports of hosts that joined before the port existed.
        ip_batch(
            Some(&self.switch),
            &[
                "link set lo up".into(),
                format!("link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0"),
                format!("link set {BRIDGE} up"),
            ],
        )
    }

    /// Plugs the veth `port` of the switch (its other end already in another netns) into the
    /// bridge.
    fn plug(&self, port: &str) -> Result<()> {
        ip_batch(
            Some(&self.switch),
            &[
                format!("link set {port} master {BRIDGE}"),
                format!("link set {port} up"),
            ],
        )
    }

    fn wire_external(&self) -> Result<()> {
        let x = &self.external;
        no_dad(x)?;
        // A host, not a router: ICMP redirects from a node forwarding back out of ext0 would
        // otherwise reroute later packets of a test straight to another node.
        sysctls(
            x,
            &[
                ("net.ipv4.conf.all.accept_redirects", "0"),
                ("net.ipv4.conf.default.accept_redirects", "0"),
                ("net.ipv6.conf.all.accept_redirects", "0"),
                ("net.ipv6.conf.default.accept_redirects", "0"),
            ],
        )?;
        ip_batch(None, &[veth_cmd("eth0", x, EXTERNAL_PORT, &self.switch)])?;
        self.plug(EXTERNAL_PORT)?;
        // Only the connected routes of the nodes' network: no default route, no pod CIDR.
        ip_batch(
            Some(x),
            &[
                "link set lo up".into(),
                format!("addr add {EXTERNAL4}/{NODE_NET4_LEN} dev eth0"),
                format!("addr add {EXTERNAL6}/{NODE_NET6_LEN} dev eth0 nodad"),
                "link set eth0 up".into(),
            ],
        )
    }

    fn wire_node(&self, n: usize, nodes: usize, pods: usize) -> Result<LabNode> {
        let netns = Netns::new(&format!("n{n}"))?;
        no_dad(&netns)?;
        sysctls(
            &netns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                // As in node.rs: replies reverse-NATed by TC carry the VIP as source, which
                // no route leads to; reverse-path filtering would drop them.
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                // A node forwarding a packet back out of ext0 (an external client's packet
                // for a pod on another node) must not teach the client a shortcut.
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.default.send_redirects", "0"),
            ],
        )?;
        let port = switch_port(n);
        ip_batch(None, &[veth_cmd(EXT_IFACE, &netns, &port, &self.switch)])?;
        self.plug(&port)?;
        let mut cmds = vec![
            "link set lo up".to_owned(),
            format!("addr add {}/{NODE_NET4_LEN} dev {EXT_IFACE}", node4(n)),
            format!(
                "addr add {}/{NODE_NET6_LEN} dev {EXT_IFACE} nodad",
                node6(n)
            ),
            format!("link set {EXT_IFACE} up"),
        ];
        // The other nodes' pods, via those nodes: what a routed CNI programs.
        for other in (1..=nodes).filter(|&o| o != n) {
            for v6 in [false, true] {
                cmds.push(format!(
                    "route add {} via {} dev {EXT_IFACE}",
                    pod_cidr(other, v6),
                    node_ip(other, v6)
                ));
            }
        }
        ip_batch(Some(&netns), &cmds)?;

        let mut node_pods = Vec::with_capacity(pods);
        for p in 0..pods {
            let pod = Netns::new(&format!("n{n}p{p}"))?;
            no_dad(&pod)?;
            let iface = pod_iface(p);
            ip_batch(None, &[veth_cmd(&iface, &netns, "eth0", &pod)])?;
            let mut node_cmds = Vec::new();
            let mut pod_cmds = vec!["link set lo up".to_owned(), "link set eth0 up".to_owned()];
            for v6 in [false, true] {
                let gw = pod_gateway(n, v6);
                let default = if v6 { "::/0" } else { "default" };
                let ip = pod_ip(n, p, v6);
                let nodad = if v6 { " nodad" } else { "" };
                node_cmds.push(format!("addr add {} dev {iface}{nodad}", prefixed(gw)));
                pod_cmds.push(format!("addr add {} dev eth0{nodad}", prefixed(ip)));
                pod_cmds.push(format!("route add {gw} dev eth0 scope link"));
                pod_cmds.push(format!("route add {default} via {gw} dev eth0"));
            }
            node_cmds.push(format!("link set {iface} up"));
            for v6 in [false, true] {
                node_cmds.push(format!(
                    "route add {} dev {iface} scope link",
                    prefixed(pod_ip(n, p, v6))
                ));
            }
            ip_batch(Some(&netns), &node_cmds)?;
            ip_batch(Some(&pod), &pod_cmds)?;
            node_pods.push(pod);
        }
        Ok(LabNode {
            n,
            name: node_name(n),
            agent: None,
            procs: Vec::new(),
            pins: PinDir::new(&self.env),
            cgroup: Cgroup::new()?,
            pods: node_pods,
            netns,
        })
    }

    /// Node `n` (1-based).
    pub fn node(&self, n: usize) -> &LabNode {
        let len = self.nodes.len();
        self.nodes
            .get(n.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no node {n}: nodes are 1..={len}"))
    }

    pub fn node_mut(&mut self, n: usize) -> &mut LabNode {
        let len = self.nodes.len();
        self.nodes
            .get_mut(n.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no node {n}: nodes are 1..={len}"))
    }

    /// Node numbers, 1..=N.
    pub fn node_numbers(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.nodes.len()
    }

    /// Starts `cip-backend --name n<n>p<p>` in pod `p` of node `n`: greeting TCP
    /// ([`crate::node::TCP_PORT`]), HTTP, UDP, echo and data ports on the pod's IPv4 and IPv6
    /// addresses, as [`crate::node::NodeFixture::standard_backend`].
    pub fn standard_backend(&mut self, n: usize, p: usize) -> Result<()> {
        let ips = [pod_ip(n, p, false), pod_ip(n, p, true)];
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
        let bin = Path::new(self.env.bins.backend);
        let node = self.node_mut(n);
        let pod = node
            .pods
            .get(p)
            .with_context(|| format!("{} has no pod {p}", node.name))?;
        let proc = start_backend(bin, pod, &backend_name(n, p), &listen)?;
        node.procs.push(proc);
        Ok(())
    }

    /// [`Lab::standard_backend`] in every pod of every node.
    pub fn standard_backends(&mut self) -> Result<()> {
        for n in self.node_numbers() {
            for p in 0..self.node(n).pods.len() {
                self.standard_backend(n, p)?;
            }
        }
        Ok(())
    }

    /// Starts `cip-backend --name NAME` with `listen` in node `n`'s own netns (a host-network
    /// server, e.g. on the node's external address).
    pub fn node_backend(&mut self, n: usize, name: &str, listen: &Listen) -> Result<()> {
        let bin = Path::new(self.env.bins.backend);
        let node = self.node_mut(n);
        let proc = start_backend(bin, &node.netns, name, listen)?;
        node.procs.push(proc);
        Ok(())
    }

    /// The arguments [`Lab::start_agents`] gives every agent before `extra`.
    pub fn agent_args(extra: &[&str]) -> Vec<String> {
        let mut args = vec!["--tc-iface".to_owned(), POD_IFACE_GLOB.to_owned()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts the agent of every node (`--node-name node-<n>`, its cgroup, pins and netns,
    /// `--tc-iface pod*`, then `extra`) and waits until each has synced and put its TC
    /// program on each of its pod veths (and on each interface `extra` names with
    /// `--tc-iface` or `--nodeport-iface`). The agents start together: the lab costs one
    /// agent start, not N.
    pub fn start_agents(&mut self, extra: &[&str]) -> Result<()> {
        for n in self.node_numbers() {
            self.spawn_agent(n, extra)?;
        }
        let named = Self::named_tc_ifaces(extra);
        for n in self.node_numbers() {
            self.wait_agent(n, &named)?;
        }
        Ok(())
    }

    /// Starts the agent of node `n` alone (see [`Lab::start_agents`]).
    pub fn start_agent(&mut self, n: usize, extra: &[&str]) -> Result<&mut Agent> {
        self.spawn_agent(n, extra)?;
        self.wait_agent(n, &Self::named_tc_ifaces(extra))?;
        Ok(self.node_mut(n).agent())
    }

    /// Interfaces named outright (not a glob) by `--tc-iface` or `--nodeport-iface` in
    /// `extra`, which [`Lab::start_agents`] waits for along with the pod veths.
    fn named_tc_ifaces(extra: &[&str]) -> Vec<String> {
        extra
            .windows(2)
            .filter(|w| matches!(w[0], "--tc-iface" | "--nodeport-iface"))
            .filter(|w| !w[1].contains(['*', '?', '[']))
            .map(|w| w[1].to_owned())
            .collect()
    }

    fn spawn_agent(&mut self, n: usize, extra: &[&str]) -> Result<()> {
        let args = Self::agent_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bin = self.env.agent_bin.clone();
        let manifests = self.manifests.dir();
        let node = self.node_mut(n);
        ensure!(
            node.agent.is_none(),
            "the agent of {} runs already",
            node.name
        );
        let agent = Agent::start_as(
            &node.name,
            &bin,
            &manifests,
            node.cgroup.path(),
            node.pins.path(),
            Some(&node.netns),
            &args,
        )?;
        node.agent = Some(agent);
        Ok(())
    }

    fn wait_agent(&mut self, n: usize, more_tc: &[String]) -> Result<()> {
        let node = self.node_mut(n);
        let mut ifaces = node.pod_ifaces();
        ifaces.extend_from_slice(more_tc);
        let name = node.name.clone();
        let agent = node.agent.as_mut().context("agent not started")?;
        agent
            .wait_synced(Duration::from_secs(15))
            .with_context(|| format!("the agent of {name}"))?;
        wait_tc_ingress(&node.netns, Some(agent), &ifaces, Duration::from_secs(10))
            .with_context(|| format!("the agent of {name}"))
    }

    fn client<'a>(&'a self, netns: &'a Netns, cgroup: Option<&'a Cgroup>) -> NsClient<'a> {
        NsClient {
            bin: Path::new(self.env.bins.client),
            netns,
            cgroup,
        }
    }

    /// A client in pod `p` of node `n`, in the node's cgroup: its connects go through the
    /// node agent's socket hooks, as every pod's would with the agent on the root cgroup.
    /// `.without_cgroup()`: the same pod seen only by the per-packet path.
    pub fn pod_client(&self, n: usize, p: usize) -> NsClient<'_> {
        let node = self.node(n);
        let pod = node
            .pods
            .get(p)
            .unwrap_or_else(|| panic!("{} has no pod {p}", node.name));
        self.client(pod, Some(&node.cgroup))
    }

    /// A client in node `n`'s own netns (a host-network process), in the node's cgroup.
    pub fn node_client(&self, n: usize) -> NsClient<'_> {
        let node = self.node(n);
        self.client(&node.netns, Some(&node.cgroup))
    }

    /// A client in the external client's netns (in no cgroup of the lab: outside the cluster).
    pub fn external_client(&self) -> NsClient<'_> {
        self.client(&self.external, None)
    }

    /// Routes `ip` (a load-balancer IP) from the external client via node `n`, as MetalLB
    /// does with an L2 announcement (the client sends to that node's MAC) or BGP (a route).
    /// Replaces an earlier route for `ip`.
    pub fn route_via(&self, ip: IpAddr, n: usize) -> Result<()> {
        ip_batch(
            Some(&self.external),
            &[format!(
                "route replace {} via {} dev eth0",
                prefixed(ip),
                node_ip(n, ip.is_ipv6())
            )],
        )
    }

    /// `clusterip-agent dump --json` of node `n`'s pins, sorted.
    pub fn dump(&self, n: usize) -> Result<Vec<DumpEntry>> {
        dump_json(&self.env.agent_bin, self.node(n).pins.path())
    }

    /// What the lab owns, to check after it is dropped that none of it remains
    /// ([`Inventory::leftovers`]).
    pub fn inventory(&self) -> Result<Inventory> {
        let mut inv = Inventory {
            manifests: self.manifests.root().to_owned(),
            ..Inventory::default()
        };
        let mut all_ns = vec![&self.switch, &self.external];
        for node in &self.nodes {
            all_ns.push(&node.netns);
            all_ns.extend(&node.pods);
            inv.pins.push(node.pins.path().to_owned());
            inv.cgroups.push(node.cgroup.path().to_owned());
            inv.pids.extend(node.procs.iter().map(|p| p.child.id()));
            if let Some(pid) = node.agent.as_ref().and_then(Agent::pid) {
                inv.pids.push(pid);
            }
            inv.links.extend(pinned_links(node.pins.path())?);
        }
        for ns in all_ns {
            let ino = std::fs::metadata(ns.path())
                .with_context(|| format!("stat {}", ns.path().display()))?
                .ino();
            inv.netns.push((ns.name().to_owned(), ino));
        }
        Ok(inv)
    }
}

impl<'a> NsClient<'a> {
    /// The same client in no cgroup: no socket hook sees it, only the per-packet path does.
    pub fn without_cgroup(self) -> Self {
        Self {
            cgroup: None,
            ..self
        }
    }
}

/// Ids of the BPF links pinned under `<pins>/links/` (cgroup, TC and XDP links).
fn pinned_links(pins: &Path) -> Result<Vec<u32>> {
    #[derive(Deserialize)]
    struct LinkId {
        id: u32,
    }
    let dir = pins.join("links");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    for e in entries {
        let path = e?.path();
        let p = path.to_str().context("pin path")?;
        let out = output("bpftool", &["-j", "link", "show", "pinned", p])?;
        let link: LinkId =
            serde_json::from_str(&out).with_context(|| format!("bpftool link show: {out}"))?;
        ids.push(link.id);
    }
    Ok(ids)
}

/// Everything a [`Lab`] created, by name, id or inode.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Name and inode of each netns (the inode finds a namespace that outlives its name: a
    /// process or descriptor still in it).
    pub netns: Vec<(String, u64)>,
    pub pins: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    pub manifests: PathBuf,
    /// Agents and backends.
    pub pids: Vec<u32>,
    /// The agents' BPF links.
    pub links: Vec<u32>,
}

impl Inventory {
    /// What of the inventory still exists, one line each; waits up to `timeout` for what the
    /// kernel releases asynchronously (links once their last reference is gone).
    pub fn leftovers(&self, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.leftovers_now()?;
            if left.is_empty() || Instant::now() > deadline {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn leftovers_now(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for (name, _) in &self.netns {
            if Path::new("/run/netns").join(name).exists() {
                left.push(format!("netns {name}"));
            }
        }
        for p in self.pins.iter().chain(&self.cgroups) {
            if p.exists() {
                left.push(format!("{}", p.display()));
            }
        }
        if self.manifests.exists() {
            left.push(format!("{}", self.manifests.display()));
        }
        for pid in &self.pids {
            // A pid may be reused: only a lab binary under it counts.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("cip-backend") || cmdline.contains("clusterip-agent") {
                left.push(format!("process {pid} {cmdline}"));
            }
        }
        let inodes: Vec<u64> = self.netns.iter().map(|(_, ino)| *ino).collect();
        for (pid, ino) in processes_netns()? {
            if inodes.contains(&ino) {
                left.push(format!("process {pid} in a lab netns (inode {ino})"));
            }
        }
        let out = output("bpftool", &["-j", "link", "show"])?;
        #[derive(Deserialize)]
        struct LinkId {
            id: u32,
        }
        let now: Vec<LinkId> = if out.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&out).with_context(|| format!("bpftool link show: {out}"))?
        };
        for id in &self.links {
            if now.iter().any(|l| l.id == *id) {
                left.push(format!("BPF link {id}"));
            }
        }
        Ok(left)
    }
}

/// (pid, inode of its network namespace) of every process.
fn processes_netns() -> Result<Vec<(u32, u64)>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").context("reading /proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we look: a vanished one holds nothing.
        if let Ok(meta) = std::fs::metadata(e.path().join("ns/net")) {
            all.push((pid, meta.ino()));
        }
    }
    Ok(all)
}

/// Interface names of the root netns (the lab must add none).
pub fn root_interfaces() -> Result<Vec<String>> {
    let out = output("ip", &["-o", "link", "show"])?;
    let mut names = Vec::new();
    for line in out.lines() {
        // "2: eth0@if3: <...": the name is the second field, before any "@peer".
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            names.push(name.to_owned());
        }
    }
    Ok(names)
}
