//! The NodePort benchmark's world (`benches/nodeport.rs`): an external client, the node with
//! the node port (node A: the agent, or kube-proxy's rules, run there) and a node with remote
//! backends (node B), joined by veths in a chain; pods behind both nodes wired as the CNI
//! `ptp` plugin does (a /32 per pod, the gateway address on every pod veth, a /32 route).
//! Nothing lives in the root netns.
//!
//! ```text
//!   client netns        node A netns (forwarding)                  node B netns (forwarding)
//!   eth0 10.100.0.100 - ext0 10.100.0.1/24   ext1 10.100.1.1/24 -  eth0 10.100.1.2/24
//!   10.224.0.0/16         10.224.2.0/24 via 10.100.1.2               default via 10.100.1.1
//!     via 10.100.0.1      pod<p> 10.224.1.1/32                       pod<p> 10.224.2.1/32
//!     (direct only)         |                                          |
//!                         pod netns: eth0 10.224.1.(10+p)/32         eth0 10.224.2.(10+p)/32
//!                         nginx :8080                                nginx :8080
//! ```
//! Node ports are reached at 10.100.0.1. The client's route to the pod network exists for the
//! `direct` baseline only (kube-proxy's and clusterip's cases reach the pods through the node
//! port); node B's default route via node A keeps direct traffic to its pods symmetric, as
//! source-NATed node-port traffic is.
//!
//! [`Services`]: the measured services (`np-remote`, backends on node B: the source-NAT
//! path; `np-local`, backends on node A) and N others with fake endpoints, as kube-proxy's
//! units and as the Service and EndpointSlice YAML the agent reads.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::kubeproxy::{Proto, SvcPort, proto_upper};
use crate::loadgen::{Nginx, wait_http};
use crate::netns::{Netns, ip};
use crate::node::{output_in, sysctl};

/// Pods per node; each measured service has them all as endpoints.
pub const PODS_PER_NODE: usize = 2;
/// Fake endpoints of each of the N other services.
pub const FAKE_ENDPOINTS: usize = 10;
/// Where nginx listens in every pod.
pub const HTTP_PORT: u16 = 8080;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);
/// Node A's address toward the client: where node ports are reached.
pub const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// Node A's address toward node B.
pub const NODE_A_INT: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 2);
/// Node A's interface toward the client.
pub const EXT_IFACE: &str = "ext0";
/// Node A's interface toward node B.
pub const INT_IFACE: &str = "ext1";
/// The pod network, routed via node A from the client for `direct`.
pub const POD_NET: &str = "10.224.0.0/16";
/// Node ports of the measured services.
pub const REMOTE_NODE_PORT: u16 = 30080;
pub const LOCAL_NODE_PORT: u16 = 30081;
/// Node port of other service `i`: 20000 + i (below the measured ones; a cluster with 10,000
/// node ports needs a wider `--service-node-port-range` than the default 30000-32767).
const FAKE_NODE_PORT_BASE: u16 = 20_000;
/// Service port on the cluster IPs.
const SERVICE_PORT: u16 = 80;

/// The two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

impl Node {
    fn n(self) -> u8 {
        match self {
            Node::A => 1,
            Node::B => 2,
        }
    }

    /// The `nodeName` of its endpoints (and the agent's `--node-name` for node A).
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "node-a",
            Node::B => "node-b",
        }
    }
}

/// Pod `p` of `node`: 10.224.<1|2>.(10+p).
pub fn pod_ip(node: Node, p: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 224, node.n(), 10 + p as u8)
}

/// The gateway address of `node`'s pods, on every pod veth of the node.
fn pod_gateway(node: Node) -> Ipv4Addr {
    Ipv4Addr::new(10, 224, node.n(), 1)
}

/// The namespaces and the servers; dropped servers first, then pods, nodes and the client.
pub struct World {
    nginx: Option<Nginx>,
    pub pods_a: Vec<Netns>,
    pub pods_b: Vec<Netns>,
    pub node_b: Netns,
    pub node_a: Netns,
    pub client: Netns,
}

impl World {
    /// The namespaces, links, addresses and routes; nginx in every pod, answering.
    pub fn new() -> Result<Self> {
        let client = Netns::new("npx")?;
        let node_a = Netns::new("npa")?;
        let node_b = Netns::new("npb")?;
        let mut me = Self {
            nginx: None,
            pods_a: Vec::new(),
            pods_b: Vec::new(),
            node_b,
            node_a,
            client,
        };
        me.wire().context("wiring the NodePort bench")?;
        let mut servers = Vec::new();
        for (node, pods) in [(Node::A, &me.pods_a), (Node::B, &me.pods_b)] {
            for (p, pod) in pods.iter().enumerate() {
                servers.push((pod, IpAddr::from(pod_ip(node, p))));
            }
        }
        me.nginx = Some(Nginx::start(&servers, HTTP_PORT)?);
        for node in [Node::A, Node::B] {
            for p in 0..PODS_PER_NODE {
                let addr = SocketAddr::new(pod_ip(node, p).into(), HTTP_PORT);
                wait_http(&me.client, None, addr, Duration::from_secs(15))?;
            }
        }
        Ok(me)
    }

    /// The pods' nginx (to pin for latency runs).
    pub fn nginx(&self) -> Result<&Nginx> {
        self.nginx.as_ref().context("nginx is not running")
    }

    fn wire(&mut self) -> Result<()> {
        for ns in [&self.node_a, &self.node_b] {
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ] {
                sysctl(ns, k, v)?;
            }
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        // The client reuses ports quickly across millions of connections.
        for (k, v) in [
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ] {
            sysctl(&self.client, k, v)?;
        }
        veth(&self.node_a, EXT_IFACE, &self.client, "eth0")?;
        veth(&self.node_a, INT_IFACE, &self.node_b, "eth0")?;
        let c = &self.client;
        c.ip(&["link", "set", "lo", "up"])?;
        c.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        c.ip(&["link", "set", "eth0", "up"])?;
        // The client computes its checksums, as a host across a wire has: a veth otherwise
        // hands on packets with a partial checksum, which XDP cannot see or finish (the
        // `xdp` case's rewritten packets would reach node B with bad checksums).
        output_in(c, "ethtool", &["-K", "eth0", "tx", "off"])
            .context("ethtool (cargo xtask setup installs it)")?;
        c.ip(&["route", "add", POD_NET, "via", &NODE_A.to_string()])?;
        let a = &self.node_a;
        a.ip(&["addr", "add", &format!("{NODE_A}/24"), "dev", EXT_IFACE])?;
        a.ip(&["addr", "add", &format!("{NODE_A_INT}/24"), "dev", INT_IFACE])?;
        a.ip(&["link", "set", EXT_IFACE, "up"])?;
        a.ip(&["link", "set", INT_IFACE, "up"])?;
        let b = &self.node_b;
        b.ip(&["addr", "add", &format!("{NODE_B}/24"), "dev", "eth0"])?;
        b.ip(&["link", "set", "eth0", "up"])?;
        // GRO on node B's veth: the kernel delivers frames an XDP program redirects into a
        // veth only when its peer runs NAPI (an XDP program, or GRO on), else drops them (the
        // `xdp` case redirects node A's forward path into it). On for every case alike.
        output_in(b, "ethtool", &["-K", "eth0", "gro", "on"])
            .context("ethtool (cargo xtask setup installs it)")?;
        b.ip(&["route", "add", "default", "via", &NODE_A_INT.to_string()])?;
        a.ip(&[
            "route",
            "add",
            &format!("10.224.{}.0/24", Node::B.n()),
            "via",
            &NODE_B.to_string(),
        ])?;
        for node in [Node::A, Node::B] {
            for p in 0..PODS_PER_NODE {
                let pod = Netns::new(&format!("np{}{p}", node.n()))?;
                let host = match node {
                    Node::A => &self.node_a,
                    Node::B => &self.node_b,
                };
                ptp(host, node, p, &pod)?;
                match node {
                    Node::A => self.pods_a.push(pod),
                    Node::B => self.pods_b.push(pod),
                }
            }
        }
        Ok(())
    }
}

/// A veth pair created directly in its two namespaces.
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    ip(&[
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])
}

/// Pod `p` of `node` behind `host` (its node's netns), the CNI ptp way.
fn ptp(host: &Netns, node: Node, p: usize, pod: &Netns) -> Result<()> {
    let iface = format!("pod{p}");
    let gw = pod_gateway(node).to_string();
    let addr = pod_ip(node, p);
    veth(host, &iface, pod, "eth0")?;
    host.ip(&["addr", "add", &format!("{gw}/32"), "dev", &iface])?;
    host.ip(&["link", "set", &iface, "up"])?;
    host.ip(&[
        "route",
        "add",
        &format!("{addr}/32"),
        "dev",
        &iface,
        "scope",
        "link",
        "src",
        &gw,
    ])?;
    sysctl(pod, "net.core.somaxconn", "4096")?;
    // No TIME_WAIT on the servers: a client port reused toward another destination (a pod IP
    // in one case, the node port in the next) carries an ISN from another hash space, which
    // a TIME_WAIT socket answers with an ACK, costing a RST and a retransmitted SYN.
    sysctl(pod, "net.ipv4.tcp_max_tw_buckets", "0")?;
    pod.ip(&["link", "set", "lo", "up"])?;
    pod.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])
}

/// The services of one N: the N others first, the two measured ones last (the worst place
/// in kube-proxy's KUBE-SERVICES and KUBE-NODEPORTS chains).
pub struct Services {
    pub ports: Vec<SvcPort>,
}

/// Cluster IP of service `i` (in [`Services::ports`] order): 10.96.0.1 + i.
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// Fake endpoint `j` of service `i` (in the pod network, never contacted).
fn fake_ep(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 225, 0, 1)) + (i * FAKE_ENDPOINTS + j) as u32)
}

impl Services {
    /// `others` services with fake endpoints, then `np-remote` and `np-local`.
    pub fn new(others: usize) -> Self {
        let mut ports = Vec::with_capacity(others + 2);
        for i in 0..others {
            let eps = (0..FAKE_ENDPOINTS)
                .map(|j| (fake_ep(i, j), HTTP_PORT))
                .collect();
            let np = FAKE_NODE_PORT_BASE + i as u16;
            ports.push(
                SvcPort::new(
                    &format!("svc-{i}"),
                    "http",
                    vip(i),
                    SERVICE_PORT,
                    Proto::Tcp,
                    eps,
                )
                .with_node_port(np),
            );
        }
        for (name, node, np) in [
            ("np-remote", Node::B, REMOTE_NODE_PORT),
            ("np-local", Node::A, LOCAL_NODE_PORT),
        ] {
            let eps = (0..PODS_PER_NODE)
                .map(|p| (pod_ip(node, p), HTTP_PORT))
                .collect();
            let i = ports.len();
            ports.push(
                SvcPort::new(name, "http", vip(i), SERVICE_PORT, Proto::Tcp, eps)
                    .with_node_port(np),
            );
        }
        Self { ports }
    }

    /// The node of an endpoint address: node A's pods are 10.224.1.x, everything else
    /// (node B's pods, the fake endpoints) is elsewhere.
    fn node_of(ip: Ipv4Addr) -> Node {
        if ip.octets()[..3] == [10, 224, Node::A.n()] {
            Node::A
        } else {
            Node::B
        }
    }

    /// `type: NodePort` Services (`externalTrafficPolicy: Cluster`) and their EndpointSlices,
    /// each endpoint with its node's `nodeName`: what the agent reads.
    pub fn yaml(&self) -> String {
        let mut out = String::with_capacity(self.ports.len() * 1100);
        for p in &self.ports {
            let (name, proto) = (&p.name, proto_upper(p.proto));
            let target = p.endpoints.first().map_or(HTTP_PORT, |e| e.1);
            let node_port = p
                .node_port
                .map_or(String::new(), |np| format!(", nodePort: {np}"));
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: \
                 default}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Cluster\n  \
                 clusterIP: {v}\n  clusterIPs: [{v}]\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: \
                 SingleStack\n  ports:\n  - {{name: {pn}, port: {port}, targetPort: \
                 {target}{node_port}, protocol: {proto}}}\n---\napiVersion: \
                 discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-a\n  \
                 namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
                 addressType: IPv4\nports:\n- {{name: {pn}, port: {target}, protocol: \
                 {proto}}}\nendpoints:\n",
                v = p.vip,
                pn = p.port_name,
                port = p.port,
            );
            for e in &p.endpoints {
                let _ = writeln!(
                    out,
                    "- {{addresses: [\"{}\"], conditions: {{ready: true, serving: true, \
                     terminating: false}}, nodeName: {}}}",
                    e.0,
                    Self::node_of(e.0).name()
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_services_come_last_with_their_nodes_pods() {
        let s = Services::new(3);
        assert_eq!(s.ports.len(), 5);
        let remote = &s.ports[3];
        let local = &s.ports[4];
        assert_eq!(remote.name, "np-remote");
        assert_eq!(remote.node_port, Some(REMOTE_NODE_PORT));
        assert_eq!(
            remote.endpoints,
            [
                (pod_ip(Node::B, 0), HTTP_PORT),
                (pod_ip(Node::B, 1), HTTP_PORT)
            ]
        );
        assert_eq!(local.endpoints[0], (pod_ip(Node::A, 0), HTTP_PORT));
        let vips: std::collections::BTreeSet<_> = s.ports.iter().map(|p| p.vip).collect();
        let nps: std::collections::BTreeSet<_> = s.ports.iter().map(|p| p.node_port).collect();
        assert_eq!(
            (vips.len(), nps.len()),
            (5, 5),
            "distinct VIPs and node ports"
        );
        let yaml = s.yaml();
        assert_eq!(yaml.matches("kind: Service\n").count(), 5);
        assert!(yaml.contains("targetPort: 8080, nodePort: 30080, protocol: TCP"));
        assert!(yaml.contains("addresses: [\"10.224.2.11\"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-b"));
        assert!(yaml.contains("addresses: [\"10.224.1.10\"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-a"));
    }

    #[test]
    fn the_largest_n_fits_the_address_and_port_plan() {
        let s = Services::new(10_000);
        let last = s.ports.last().unwrap();
        assert_eq!(last.vip, Ipv4Addr::new(10, 96, 39, 18));
        assert_eq!(s.ports[9_999].node_port, Some(29_999));
        // Fake endpoints stay in the pod network, away from the real pods.
        assert!(s.ports[9_999].endpoints.iter().all(|e| {
            let o = e.0.octets();
            o[0] == 10 && (225..=239).contains(&o[1])
        }));
    }
}
