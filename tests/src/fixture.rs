//! Everything one test needs, torn down in the right order.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::agent::{Agent, DumpEntry, dump_json};
use crate::bpffs::PinDir;
use crate::cgroup::Cgroup;
use crate::env::Env;
use crate::manifests::Manifests;
use crate::netns::{Topology, pod_ip};
use crate::process::{ClientCtx, Listen, Proc, output, start_backend};

/// Port the standard backends answer TCP on (`--tcp`).
pub const TCP_PORT: u16 = 8080;
/// Port the standard backends answer UDP on.
pub const UDP_PORT: u16 = 5353;
/// Port the standard backends echo TCP lines on (`--tcp-echo`).
pub const ECHO_PORT: u16 = 9000;

/// What a standard backend serves on each of `ips`: TCP [`TCP_PORT`], UDP [`UDP_PORT`] and
/// TCP echo [`ECHO_PORT`].
pub fn standard_listen(ips: [IpAddr; 2]) -> Listen {
    let on = |port| ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect();
    Listen {
        tcp: on(TCP_PORT),
        udp: on(UDP_PORT),
        tcp_echo: on(ECHO_PORT),
        ..Listen::default()
    }
}

/// Field order is drop order: the agent dies first, then backends, then the pins are cleaned
/// up (detaching the programs), then the cgroup (its clients killed), netns and manifests go.
pub struct Fixture {
    pub agent: Option<Agent>,
    backends: Vec<Proc>,
    pub pins: PinDir,
    pub cgroup: Cgroup,
    pub topo: Topology,
    pub manifests: Manifests,
    pub env: Env,
}

impl Fixture {
    /// Topology with `n_pods` pod addresses, a fresh cgroup, pin dir and manifest dir.
    pub fn new(env: Env, n_pods: usize) -> Result<Self> {
        let manifests = Manifests::new()?;
        let topo = Topology::new(n_pods).context("creating the netns topology")?;
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

    /// Starts backend `be-<i>` on pod `i`: TCP [`TCP_PORT`], UDP [`UDP_PORT`] and TCP echo
    /// [`ECHO_PORT`], each on the pod's IPv4 and IPv6 address.
    pub fn standard_backend(&mut self, i: usize) -> Result<()> {
        let listen = standard_listen([pod_ip(i, false), pod_ip(i, true)]);
        self.backend(&format!("be-{i}"), &listen)
    }

    /// Starts [`Fixture::standard_backend`] on pods 0..n.
    pub fn standard_backends(&mut self, n: usize) -> Result<()> {
        (0..n).try_for_each(|i| self.standard_backend(i))
    }

    pub fn backend(&mut self, name: &str, listen: &Listen) -> Result<()> {
        let p = start_backend(
            Path::new(self.env.bins.backend),
            &self.topo.pods,
            name,
            listen,
        )?;
        self.backends.push(p);
        Ok(())
    }

    /// Starts the agent on the manifests, this cgroup and pin dir; waits for "synced".
    pub fn start_agent(&mut self) -> Result<&mut Agent> {
        self.start_agent_with(&[])
    }

    /// [`Fixture::start_agent`] with `extra` arguments.
    pub fn start_agent_with(&mut self, extra: &[&str]) -> Result<&mut Agent> {
        let agent = Agent::start_in(
            &self.env.agent_bin,
            &self.manifests.dir(),
            self.cgroup.path(),
            self.pins.path(),
            None,
            extra,
        )?;
        let agent = self.agent.insert(agent);
        agent.wait_synced(Duration::from_secs(15))?;
        Ok(agent)
    }

    /// Process ids of the backends started so far.
    pub fn backend_pids(&self) -> Vec<u32> {
        self.backends.iter().map(|p| p.child.id()).collect()
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent not started")
    }

    /// Runs clients in the client netns and the test cgroup.
    pub fn client(&self) -> ClientCtx<'_> {
        ClientCtx {
            bin: Path::new(self.env.bins.client),
            netns: &self.topo.client,
            cgroup: &self.cgroup,
        }
    }

    /// `clusterip-agent dump --bpffs <pins> --json`, sorted.
    pub fn dump(&self) -> Result<Vec<DumpEntry>> {
        dump_json(&self.env.agent_bin, self.pins.path())
    }

    /// Programs attached to the test cgroup (`bpftool cgroup show CG`).
    pub fn cgroup_progs(&self) -> Result<Vec<CgroupProg>> {
        cgroup_progs(self.cgroup.path())
    }
}

/// One program attached to a cgroup, as `bpftool cgroup show -j` lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct CgroupProg {
    pub id: u32,
    pub attach_type: serde_json::Value,
    #[serde(default)]
    pub name: String,
}

pub fn cgroup_progs(cgroup: &Path) -> Result<Vec<CgroupProg>> {
    let path = cgroup.to_str().context("cgroup path")?;
    let out = output("bpftool", &["-j", "cgroup", "show", path])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&out).with_context(|| format!("bpftool cgroup show printed {out:?}"))
}

/// One BPF link, as `bpftool link show -j` lists it (only the fields we use).
#[derive(Clone, Debug, Deserialize)]
pub struct Link {
    pub id: u32,
    #[serde(rename = "type", default)]
    pub kind: serde_json::Value,
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    #[serde(default)]
    pub attach_type: Option<serde_json::Value>,
}

pub fn links() -> Result<Vec<Link>> {
    let out = output("bpftool", &["-j", "link", "show"])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&out).with_context(|| format!("bpftool link show printed {out:?}"))
}
