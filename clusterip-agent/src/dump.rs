//! `clusterip-agent dump`: what the datapath holds, read back from the pinned maps.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use clusterip_common::{SVC_FLAG_AFFINITY, SVC_FLAG_DROP};
use serde::Serialize;

use crate::maps::{Installed, MapsError, PinnedMaps};

/// One frontend as `dump --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DumpEntry {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// "ip:port", IPv6 as "[ip]:port", in slot order.
    pub backends: Vec<String>,
    pub affinity_timeout_s: Option<u32>,
    /// What happens without backends: "reject" or "drop".
    pub no_endpoints: String,
    pub svc_id: u32,
}

/// Reads the pinned maps under `bpffs`.
pub fn read(bpffs: &Path) -> Result<Vec<DumpEntry>, MapsError> {
    let maps = PinnedMaps::open(bpffs)?;
    Ok(entries(&maps.read_installed()?))
}

pub fn entries(installed: &Installed) -> Vec<DumpEntry> {
    installed
        .frontends
        .iter()
        .map(|(fe, f)| DumpEntry {
            vip: fe.vip,
            port: fe.port,
            protocol: fe.protocol.to_string(),
            backends: f
                .slots
                .iter()
                .map(|id| match installed.backends.get(id) {
                    Some(b) => SocketAddr::to_string(&b.addr),
                    None => format!("<missing backend {id}>"),
                })
                .collect(),
            affinity_timeout_s: (f.flags & SVC_FLAG_AFFINITY != 0).then_some(f.affinity_timeout_s),
            no_endpoints: if f.flags & SVC_FLAG_DROP != 0 {
                "drop"
            } else {
                "reject"
            }
            .to_string(),
            svc_id: f.svc_id,
        })
        .collect()
}

/// Prints the table for people: one frontend per line, its backends below.
pub fn print_text(out: &mut impl Write, entries: &[DumpEntry]) -> std::io::Result<()> {
    if entries.is_empty() {
        writeln!(out, "no services")?;
    }
    for e in entries {
        let vip = SocketAddr::new(e.vip, e.port);
        let affinity = match e.affinity_timeout_s {
            Some(t) => format!(" affinity=ClientIP/{t}s"),
            None => String::new(),
        };
        writeln!(
            out,
            "{vip}/{} id={}{affinity} backends={}",
            e.protocol,
            e.svc_id,
            e.backends.len()
        )?;
        if e.backends.is_empty() {
            writeln!(out, "  (no endpoints: {})", e.no_endpoints)?;
        }
        for b in &e.backends {
            writeln!(out, "  -> {b}")?;
        }
    }
    Ok(())
}
