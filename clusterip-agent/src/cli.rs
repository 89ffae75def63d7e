//! Command line: `run`, `dump`, `cleanup`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Detach the programs and remove every pin.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A YAML file, or a directory of them, with v1 Services and discovery.k8s.io/v1
    /// EndpointSlices (multi-document, or `kind: List` as kubectl prints). Followed: a change is
    /// in the maps within a second.
    #[arg(long, value_name = "PATH")]
    pub manifests: PathBuf,
    /// The cgroup v2 whose processes get ClusterIP load balancing [default: the cgroup v2 root]
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Directory in bpffs where maps and links are pinned.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// This node's name, for internalTrafficPolicy: Local [default: $NODE_NAME, else the hostname]
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// JSON: a list of {vip, port, protocol, backends, affinity_timeout_s, ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}
