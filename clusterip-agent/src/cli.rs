//! Command line: `run`, `dump`, `explain`, `probe`, `cleanup`, `mount-bpffs`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use clusterip_common::DatapathConfigValue;

use crate::datapath::sizing::{
    DEFAULT_BACKEND_ENTRIES, DEFAULT_MAGLEV_ENTRIES, DEFAULT_RATIO, DEFAULT_SERVICE_ENTRIES,
};
use crate::health::DEFAULT_HEALTHZ_BIND_ADDRESS;

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/clusterip";

#[derive(Debug, Parser)]
#[command(
    name = "clusterip-agent",
    version,
    about = "Kubernetes ClusterIP services in eBPF: the node agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the datapath, attach it and keep the maps in sync with the manifests.
    Run(RunArgs),
    /// Print what the datapath holds, read back from the pinned maps.
    Dump(DumpArgs),
    /// Why a service is (not) load balanced the way it is: its endpoints, which are used and
    /// why not, and what the maps hold for it now.
    Explain(ExplainArgs),
    /// What the running kernel offers the datapath, and what the agent does without what is
    /// missing. Exits non-zero only when the datapath cannot run at all.
    Probe(ProbeArgs),
    /// Detach the programs and remove every pin.
    Cleanup(CleanupArgs),
    /// Mount a bpf filesystem at DIR unless one is there already. What the DaemonSet's init
    /// container runs: the image has no shell and no mount(8).
    MountBpffs(MountBpffsArgs),
}

/// Where Services and EndpointSlices come from: files, or the Kubernetes API.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// A YAML file, or a directory of them, with v1 Services and discovery.k8s.io/v1
    /// EndpointSlices (multi-document, or `kind: List` as kubectl prints). Followed: a change is
    /// in the maps within a second. Without it the Kubernetes API is used.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes API [default: the in-cluster configuration, else
    /// $KUBECONFIG / ~/.kube/config]
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: internalTrafficPolicy Local, its zone for topology
    /// [default: $NODE_NAME, else the hostname]
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The cgroup v2 whose processes get ClusterIP load balancing [default: the cgroup v2 root]
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Directory in bpffs where maps and links are pinned.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Attach the per-packet program `tc_ingress` to the ingress of this interface. Repeatable;
    /// a pattern such as 'veth*' (`*`, `?`) also covers matching interfaces that appear later
    /// (re-scanned every second). Only interfaces of the agent's network namespace.
    #[arg(long = "tc-iface", value_name = "NAME", action = ArgAction::Append)]
    pub tc_ifaces: Vec<String>,
    /// Attach the per-packet program `xdp_ingress` to this interface (native mode, else
    /// generic). Repeatable; patterns as for --tc-iface.
    #[arg(long = "xdp-iface", value_name = "NAME", action = ArgAction::Append)]
    pub xdp_ifaces: Vec<String>,
    /// The node's external interfaces, where traffic from outside the node reaches node
    /// ports, load-balancer IPs and external IPs (Cilium's `--devices`): `tc_nodeport` at
    /// their ingress (DNAT, and SNAT to the node's address for a backend on another node) and
    /// `tc_nodeport_egress` at their egress (replies of local backends). Repeatable; patterns
    /// as for --tc-iface.
    #[arg(long = "nodeport-iface", value_name = "NAME", action = ArgAction::Append)]
    pub nodeport_ifaces: Vec<String>,
    /// Also attach `xdp_nodeport` to the --nodeport-iface interfaces (native mode, else
    /// generic): traffic from outside to a backend on another node is translated and sent on
    /// at XDP, before the stack; everything else still goes through `tc_nodeport`. An
    /// interface cannot also be an --xdp-iface.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = ArgAction::Set,
        requires = "nodeport_ifaces"
    )]
    pub nodeport_xdp: bool,
    /// Socket-level load balancing (cgroup hooks). `--socket-lb=false` leaves the socket hooks
    /// out (and detaches those of a previous agent), so the per-packet path carries everything.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub socket_lb: bool,
    /// Conntrack entries per address family (LRU, preallocated) [default: a share of the
    /// node's memory, see --map-dynamic-size-ratio; `probe` shows it]. A changed size migrates
    /// the pinned maps with their flows.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub ct_max: Option<u32>,
    /// Socket reverse-NAT entries per address family (LRU, preallocated: one per connected
    /// socket through a VIP) [default: a share of the node's memory].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sock_revnat_max: Option<u32>,
    /// Share of the node's memory (MemTotal) the preallocated flow and socket maps may use,
    /// capped at 64 MiB; each map gets its part, within its bounds (Cilium's
    /// --bpf-map-dynamic-size-ratio). Maps of a path that is off stay minimal.
    #[arg(long, value_name = "RATIO", default_value_t = DEFAULT_RATIO, value_parser = parse_ratio)]
    pub map_dynamic_size_ratio: f64,
    /// Capacity of each service map (frontends, wildcards and backend slots; per family).
    /// Costs 16 bytes per entry up front, the rest as entries are used.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SERVICE_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub service_map_entries: u32,
    /// Capacity of each backend map (per family).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKEND_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub backend_map_entries: u32,
    /// Maglev tables (one per frontend of the per-packet path, 4 KiB each, allocated as used).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAGLEV_ENTRIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub maglev_map_entries: u32,
    /// Idle timeout of an established TCP flow.
    #[arg(long, value_name = "SECS", default_value_t = DatapathConfigValue::DEFAULT.ct_tcp_timeout_s)]
    pub ct_tcp_timeout: u32,
    /// Idle timeout of a closing TCP flow (FIN/RST seen).
    #[arg(long, value_name = "SECS", default_value_t = DatapathConfigValue::DEFAULT.ct_tcp_closing_timeout_s)]
    pub ct_tcp_closing_timeout: u32,
    /// Idle timeout of a UDP flow.
    #[arg(long, value_name = "SECS", default_value_t = DatapathConfigValue::DEFAULT.ct_udp_timeout_s)]
    pub ct_udp_timeout: u32,
    /// Serve /metrics (Prometheus), /healthz and /readyz here. `--metrics-addr ''` serves
    /// nothing.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: String,
    /// Serve kube-proxy's proxy health checks here: /healthz, which the cloud load balancers
    /// of `externalTrafficPolicy: Cluster` services probe (503 when the datapath lags behind
    /// pending changes, or while this node is being deleted), and /livez (the datapath
    /// only). An unspecified IP listens on both families, as kube-proxy does. A port that
    /// cannot be bound is retried every 5 s. `--healthz-bind-address ''` serves nothing.
    #[arg(long, value_name = "IP:PORT", default_value = DEFAULT_HEALTHZ_BIND_ADDRESS)]
    pub healthz_bind_address: String,
}

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9964";

/// A share of memory: a number in 0..=1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{s} is not between 0 and 1"))
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The frontend: VIP:PORT, [VIP6]:PORT, optionally /TCP or /UDP (default TCP).
    #[arg(value_name = "VIP:PORT[/PROTOCOL]")]
    pub frontend: String,
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// JSON: a list of {vip, port, protocol, backends, affinity_timeout_s, packets, bytes,
    /// ...}; with --conntrack an object {config, flows}.
    #[arg(long)]
    pub json: bool,
    /// List the per-packet datapath's conntrack flows (and its size and timeouts) instead of
    /// the services.
    #[arg(long)]
    pub conntrack: bool,
    /// List the pinned maps instead of the services: entries, key and value sizes, and the
    /// kernel memory each takes (charged to the agent's memory cgroup).
    #[arg(long, conflicts_with = "conntrack")]
    pub maps: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub struct MountBpffsArgs {
    /// The mount point. Whether a bpf filesystem is there is decided by its filesystem type,
    /// not by it being a mount point: in a container a hostPath volume is always one.
    #[arg(value_name = "DIR", default_value = crate::datapath::BPFFS_ROOT)]
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["clusterip-agent", "run", "--manifests", "/m"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn run_defaults() {
        let r = run_args(&[]);
        assert!(r.socket_lb);
        assert!(r.tc_ifaces.is_empty() && r.xdp_ifaces.is_empty());
        assert_eq!(r.ct_max, None);
        assert_eq!(r.map_dynamic_size_ratio, DEFAULT_RATIO);
        assert_eq!(r.service_map_entries, DEFAULT_SERVICE_ENTRIES);
        assert_eq!(r.ct_tcp_timeout, 21_600);
        assert_eq!(r.ct_tcp_closing_timeout, 10);
        assert_eq!(r.ct_udp_timeout, 30);
        assert_eq!(r.healthz_bind_address, "0.0.0.0:10256");
        assert_eq!(
            run_args(&["--healthz-bind-address", ""]).healthz_bind_address,
            ""
        );
    }

    #[test]
    fn mount_bpffs_defaults_to_sys_fs_bpf() {
        let dir = |argv: &[&str]| match Cli::try_parse_from(argv).expect("parses").command {
            Command::MountBpffs(a) => a.dir,
            other => panic!("not mount-bpffs: {other:?}"),
        };
        assert_eq!(
            dir(&["clusterip-agent", "mount-bpffs"]),
            PathBuf::from("/sys/fs/bpf")
        );
        assert_eq!(
            dir(&["clusterip-agent", "mount-bpffs", "/mnt/bpf"]),
            PathBuf::from("/mnt/bpf")
        );
        assert!(DEFAULT_BPFFS.starts_with(crate::datapath::BPFFS_ROOT));
    }

    #[test]
    fn per_packet_flags() {
        let r = run_args(&[
            "--tc-iface",
            "veth*",
            "--tc-iface=eth1",
            "--xdp-iface",
            "eth0",
            "--socket-lb=false",
            "--ct-max",
            "1024",
            "--ct-udp-timeout",
            "5",
        ]);
        assert_eq!(r.tc_ifaces, ["veth*", "eth1"]);
        assert_eq!(r.xdp_ifaces, ["eth0"]);
        assert!(!r.socket_lb);
        assert_eq!(r.ct_max, Some(1024));
        for bad in [
            ["--ct-max", "0"],
            ["--map-dynamic-size-ratio", "2"],
            ["--map-dynamic-size-ratio", "-0.1"],
            ["--service-map-entries", "0"],
        ] {
            let mut argv = vec!["clusterip-agent", "run", "--manifests", "/m"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
        assert_eq!(r.ct_udp_timeout, 5);
        assert!(run_args(&["--socket-lb"]).socket_lb);
        assert!(!run_args(&["--socket-lb", "false"]).socket_lb);
        assert!(
            Cli::try_parse_from([
                "clusterip-agent",
                "run",
                "--manifests",
                "/m",
                "--socket-lb=maybe"
            ])
            .is_err()
        );
    }
}
