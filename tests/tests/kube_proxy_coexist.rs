//! Migrating from kube-proxy: clusterip started on nodes that still carry kube-proxy's rules
//! for the same services, then those rules removed as `kube-proxy --cleanup` removes them.
//!
//! The multi-node lab (`clusterip_tests::lab`), two nodes of three pods: pod 0 of node 1 is
//! the client pod, pod 1 of each node is what clusterip's manifests list as endpoints, pod 2
//! what kube-proxy's rules (`clusterip_tests::kubeproxy`, the same services: cluster IP and
//! node port) DNAT to, so every answer says who served it. Two services: `web-local` (its
//! endpoint on node 1, where the clients enter) and `web-remote` (on node 2). Three paths from
//! node 1: a pod's socket `connect()` to the cluster IP (the pod in the agent's cgroup), the
//! same pod seen only per packet (no cgroup: TC on its veth), and the external client to node
//! 1's node port (TC on `ext0`).
//!
//! Each test proves, in order: kube-proxy's rules alone serve every path (so they are live);
//! with the agents started, who serves each path (clusterip, but for the per-packet path next
//! to the iptables mode: see [`Mode::clusterip_serves`]); that while the rules are removed,
//! not one connection on the paths clusterip serves fails; and that afterwards clusterip
//! serves every path. Connections opened through kube-proxy before the agent started are not
//! kept (their packets are balanced anew; README, "Migrating from kube-proxy").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clusterip_tests::kubeproxy::{
    NFT_TABLE, Proto, SvcPort, iptables_cleanup, iptables_full, nft_cleanup, nft_full,
};
use clusterip_tests::lab::{EXT_IFACE, Lab, backend_name, node_ip, node_name, node4, pod_ip};
use clusterip_tests::loadgen::stdin_in;
use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::node::{ECHO_PORT, UDP_PORT, output_in};
use clusterip_tests::process::{NsClient, Reply};
use clusterip_tests::{Env, require_env};

const CLIENT_POD: usize = 0;
/// clusterip's endpoint on each node.
const CIP_POD: usize = 1;
/// kube-proxy's endpoint on each node.
const KP_POD: usize = 2;
const PORT: u16 = 80;
/// The UDP port of both services.
const DNS: u16 = 53;

/// The two services: where their endpoints run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Svc {
    /// On node 1, where the clients enter.
    Local,
    /// On node 2.
    Remote,
}

impl Svc {
    const ALL: [Svc; 2] = [Svc::Local, Svc::Remote];

    fn name(self) -> &'static str {
        match self {
            Svc::Local => "web-local",
            Svc::Remote => "web-remote",
        }
    }

    fn vip(self) -> Ipv4Addr {
        match self {
            Svc::Local => Ipv4Addr::new(10, 96, 0, 31),
            Svc::Remote => Ipv4Addr::new(10, 96, 0, 32),
        }
    }

    fn node_port(self) -> u16 {
        match self {
            Svc::Local => 30081,
            Svc::Remote => 30082,
        }
    }

    /// The node port of its UDP port.
    fn udp_node_port(self) -> u16 {
        self.node_port() + 10
    }

    /// The node its endpoints (both owners') run on.
    fn node(self) -> usize {
        match self {
            Svc::Local => 1,
            Svc::Remote => 2,
        }
    }

    fn backend(self, owner: Owner) -> String {
        let pod = match owner {
            Owner::Clusterip => CIP_POD,
            Owner::KubeProxy => KP_POD,
        };
        backend_name(self.node(), pod)
    }
}

/// Who answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Clusterip,
    KubeProxy,
}

/// How node 1 sees the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Pod 0 of node 1, in the agent's cgroup: `connect()` to the cluster IP.
    Socket,
    /// The same pod outside the cgroup: packets to the cluster IP reach node 1's pod veth.
    PerPacket,
    /// The external client to node 1's node port.
    External,
}

impl Path {
    const ALL: [Path; 3] = [Path::Socket, Path::PerPacket, Path::External];

    fn client(self, lab: &Lab) -> NsClient<'_> {
        match self {
            Path::Socket => lab.pod_client(1, CLIENT_POD),
            Path::PerPacket => lab.pod_client(1, CLIENT_POD).without_cgroup(),
            Path::External => lab.external_client(),
        }
    }

    fn addr(self, svc: Svc) -> SocketAddr {
        match self {
            Path::Socket | Path::PerPacket => SocketAddr::new(svc.vip().into(), PORT),
            Path::External => SocketAddr::new(node_ip(1, false), svc.node_port()),
        }
    }
}

/// kube-proxy's mode on the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Iptables,
    Nftables,
}

/// The services as kube-proxy's rules have them: endpoints in pod 2.
fn kube_proxy_ports() -> Vec<SvcPort> {
    Svc::ALL
        .iter()
        .flat_map(|&s| {
            let ep = match pod_ip(s.node(), KP_POD, false) {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("pod_ip(.., false) is IPv4"),
            };
            [
                SvcPort::new(
                    s.name(),
                    "echo",
                    s.vip(),
                    PORT,
                    Proto::Tcp,
                    vec![(ep, ECHO_PORT)],
                )
                .with_node_port(s.node_port()),
                SvcPort::new(
                    s.name(),
                    "dns",
                    s.vip(),
                    DNS,
                    Proto::Udp,
                    vec![(ep, UDP_PORT)],
                )
                .with_node_port(s.udp_node_port()),
            ]
        })
        .collect()
}

impl Mode {
    /// kube-proxy's first sync on every node (nftables: node ports on the node's address).
    fn load(self, lab: &Lab) {
        let ports = kube_proxy_ports();
        for n in lab.node_numbers() {
            let ns = &lab.node(n).netns;
            match self {
                Mode::Iptables => stdin_in(
                    ns,
                    "iptables-legacy-restore",
                    &["--noflush"],
                    &iptables_full(&ports, true, &[]),
                ),
                Mode::Nftables => stdin_in(ns, "nft", &["-f", "-"], &nft_full(&ports, &[node4(n)])),
            }
            .unwrap();
        }
    }

    /// `kube-proxy --cleanup` on every node; then nothing of kube-proxy's is left.
    fn cleanup(self, lab: &Lab) {
        for n in lab.node_numbers() {
            let ns = &lab.node(n).netns;
            match self {
                Mode::Iptables => {
                    let saved = output_in(ns, "iptables-legacy-save", &[]).unwrap();
                    let input = iptables_cleanup(&saved);
                    stdin_in(ns, "iptables-legacy-restore", &["--noflush"], &input).unwrap();
                    let left = output_in(ns, "iptables-legacy-save", &[]).unwrap();
                    assert!(!left.contains("KUBE-"), "node-{n} after cleanup:\n{left}");
                }
                Mode::Nftables => {
                    stdin_in(ns, "nft", &["-f", "-"], &nft_cleanup()).unwrap();
                    let left = output_in(ns, "nft", &["list", "tables"]).unwrap();
                    assert!(!left.contains(NFT_TABLE), "node-{n} after cleanup: {left}");
                }
            }
        }
    }
}

/// Two nodes of three pods, standard backends everywhere, clusterip's manifests written
/// (endpoints in pod 1), kube-proxy's rules loaded on both nodes; no agent yet.
fn lab_with_kube_proxy(env: Env, mode: Mode) -> Lab {
    let mut lab = Lab::new(env, 2, 3).unwrap();
    lab.standard_backends().unwrap();
    let mut objects = Vec::new();
    for s in Svc::ALL {
        let svc = Service::new(s.name(), s.vip())
            .port(tcp("echo", PORT, ECHO_PORT).node_port(s.node_port()))
            .port(udp("dns", DNS, UDP_PORT).node_port(s.udp_node_port()))
            .node_port();
        let slice = svc
            .slice("a")
            .ready_on(&node_name(s.node()), [pod_ip(s.node(), CIP_POD, false)]);
        objects.push(svc.to_value());
        objects.push(slice.to_value());
    }
    lab.manifests.write("web.yaml", &objects).unwrap();
    mode.load(&lab);
    lab
}

/// `count` connections on `path` to `svc`: who answered each, or the error.
fn connect(lab: &Lab, path: Path, svc: Svc, count: u32) -> Vec<Outcome> {
    let replies = path
        .client(lab)
        .run_mode("tcp", path.addr(svc), count, 1500)
        .unwrap();
    replies.into_iter().map(|r| owner(svc, r)).collect()
}

/// Who served a connection, or the failed reply.
type Outcome = Result<Owner, Box<Reply>>;

fn owner(svc: Svc, r: Reply) -> Outcome {
    match r.backend() {
        Some(b) if r.is_ok() && b == svc.backend(Owner::Clusterip) => Ok(Owner::Clusterip),
        Some(b) if r.is_ok() && b == svc.backend(Owner::KubeProxy) => Ok(Owner::KubeProxy),
        _ => Err(Box::new(r)),
    }
}

/// Every one of `count` connections on `path` to `svc` is served by `want`.
fn assert_served(lab: &Lab, path: Path, svc: Svc, want: Owner) {
    let got = connect(lab, path, svc, 3);
    assert!(
        got.iter().all(|r| r.as_ref().is_ok_and(|o| *o == want)),
        "{path:?} to {svc:?} ({}): want all served by {want:?}, got {got:?}",
        path.addr(svc)
    );
}

/// Connections on every path `mode` lets clusterip serve, to every service, one after the
/// other, until `stop`: the answers of each.
fn traffic(lab: &Lab, mode: Mode, stop: &AtomicBool) -> Vec<((Path, Svc), Vec<Outcome>)> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = Path::ALL
            .iter()
            .filter(|&&p| mode.clusterip_serves(p))
            .flat_map(|&p| Svc::ALL.iter().map(move |&s| (p, s)))
            .map(|(p, s)| {
                let client = p.client(lab);
                let worker = scope.spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        // 3.5 s: room for two SYN retransmissions (1 s, then 2 s more).
                        // Deleting netfilter tables can drop a packet in passing, whoever
                        // serves the connection; a failure here is a connection that never
                        // got through.
                        let r = client.run_mode("tcp", p.addr(s), 1, 3500).unwrap();
                        out.extend(r.into_iter().map(|r| owner(s, r)));
                    }
                    out
                });
                ((p, s), worker)
            })
            .collect();
        workers
            .into_iter()
            .map(|(k, w)| (k, w.join().expect("traffic thread")))
            .collect()
    })
}

impl Mode {
    /// Whether clusterip serves `path` while kube-proxy's rules are still there. Not the
    /// per-packet path next to the iptables mode: clusterip translates a pod's packets at its
    /// veth, so netfilter sees the backend's SYN-ACK come back as the service address, finds
    /// it INVALID, and kube-proxy's KUBE-FORWARD drops it (unless kube-proxy runs with
    /// `--conntrack-tcp-be-liberal`). Its nftables mode has no such rule.
    fn clusterip_serves(self, path: Path) -> bool {
        !(self == Mode::Iptables && path == Path::PerPacket)
    }
}

fn coexist(env: Env, mode: Mode) {
    let mut lab = lab_with_kube_proxy(env, mode);

    // kube-proxy alone serves every path: its rules are live, so what follows can tell.
    for path in Path::ALL {
        for svc in Svc::ALL {
            assert_served(&lab, path, svc, Owner::KubeProxy);
        }
    }

    // With the agents started, clusterip answers first: its socket and TC hooks translate
    // before netfilter's PREROUTING and OUTPUT chains see a packet.
    lab.start_agents(&["--nodeport-iface", EXT_IFACE]).unwrap();
    for path in Path::ALL {
        for svc in Svc::ALL {
            if mode.clusterip_serves(path) {
                assert_served(&lab, path, svc, Owner::Clusterip);
            } else {
                let got = connect(&lab, path, svc, 1);
                assert!(
                    got.iter().all(Result::is_err),
                    "{mode:?}: {path:?} to {svc:?} was expected to fail (KUBE-FORWARD \
                     drops it as INVALID), got {got:?}"
                );
            }
        }
    }
    // UDP has no handshake for netfilter to find invalid: served on every path.
    for svc in Svc::ALL {
        let addr = SocketAddr::new(svc.vip().into(), DNS);
        let replies = Path::PerPacket.client(&lab).udp_connected(addr, 3).unwrap();
        let cip = svc.backend(Owner::Clusterip);
        assert!(
            replies
                .iter()
                .all(|r| r.is_ok() && r.backend() == Some(cip.as_str())),
            "UDP per packet to {svc:?}: {replies:?}"
        );
    }

    // kube-proxy --cleanup while connections run on every path clusterip serves: not one
    // fails.
    let stop = AtomicBool::new(false);
    let results = std::thread::scope(|scope| {
        let t = scope.spawn(|| traffic(&lab, mode, &stop));
        std::thread::sleep(Duration::from_millis(500));
        mode.cleanup(&lab);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        t.join().expect("traffic")
    });
    for ((path, svc), got) in &results {
        assert!(!got.is_empty(), "{path:?} to {svc:?}: no connection made");
        let bad: Vec<_> = got
            .iter()
            .filter(|r| !matches!(r, Ok(Owner::Clusterip)))
            .collect();
        assert!(
            bad.is_empty(),
            "{mode:?} cleanup: {path:?} to {svc:?}: {} of {} not served by clusterip: {bad:?}",
            bad.len(),
            got.len()
        );
    }

    // And with kube-proxy gone, clusterip serves every path.
    for path in Path::ALL {
        for svc in Svc::ALL {
            assert_served(&lab, path, svc, Owner::Clusterip);
        }
    }
}

#[test]
fn clusterip_next_to_kube_proxy_iptables_rules() {
    let env = require_env!();
    coexist(env, Mode::Iptables);
}

#[test]
fn clusterip_next_to_kube_proxy_nftables_rules() {
    let env = require_env!();
    coexist(env, Mode::Nftables);
}
