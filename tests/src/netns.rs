//! Network namespaces and the test topology.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Open handle for setns() in children.
    file: File,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = format!("cip{prefix}{}", crate::uniq());
        ip(&["netns", "add", &name])?;
        let path = PathBuf::from("/run/netns").join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        Ok(Self { name, file })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);

/// IPv4 address of pod `i` (10.200.0.11 + i).
pub fn pod_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 11 + i as u8)
}

/// IPv6 address of pod `i` (fd00:200::11 + i).
pub fn pod_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x11 + i as u16)
}

pub fn pod_ip(i: usize, v6: bool) -> IpAddr {
    if v6 {
        pod_v6(i).into()
    } else {
        pod_v4(i).into()
    }
}

/// Netns `c` (client: 10.200.0.1/24, fd00:200::1/64) and netns `p` (pods: 10.200.0.11.. and
/// fd00:200::11..), joined by a veth pair created directly inside them.
/// Each test has its own pair, so every test can use the same addresses.
#[derive(Debug)]
pub struct Topology {
    pub client: Netns,
    pub pods: Netns,
    pub n_pods: usize,
}

impl Topology {
    pub fn new(n_pods: usize) -> Result<Self> {
        let client = Netns::new("c")?;
        let pods = Netns::new("p")?;
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            pods.name(),
        ])?;
        for ns in [&client, &pods] {
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["link", "set", "veth0", "up"])?;
        }
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", "veth0"])?;
        client.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            "veth0",
            "nodad",
        ])?;
        for i in 0..n_pods {
            pods.ip(&["addr", "add", &format!("{}/24", pod_v4(i)), "dev", "veth0"])?;
            pods.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/64", pod_v6(i)),
                "dev",
                "veth0",
                "nodad",
            ])?;
        }
        Ok(Self {
            client,
            pods,
            n_pods,
        })
    }
}
