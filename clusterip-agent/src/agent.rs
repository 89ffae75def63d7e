//! The agent's commands: `run` (load, attach, follow the manifests), `dump`, `cleanup`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::cli::{Cli, Command, RunArgs};
use crate::datapath::{Datapath, DatapathConfig};
use crate::interfaces::Pattern;
use crate::manifests::ManifestSource;
use crate::syncer::Syncer;
use crate::{datapath, dump, sockdiag, syncer, telemetry};
use clusterip_common::DatapathConfigValue;

/// How often the manifests are re-read: a change is in the maps well within a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often the interfaces are re-scanned for --tc-iface / --xdp-iface patterns.
pub const IFACE_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Runs one CLI command to completion.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(run(args))
        }
        Command::Dump(args) => {
            let mut out = std::io::stdout().lock();
            if args.conntrack {
                let ct = dump::read_conntrack(&args.bpffs)?;
                if args.json {
                    serde_json::to_writer_pretty(&mut out, &ct)?;
                    writeln!(out)?;
                } else {
                    dump::print_conntrack(&mut out, &ct)?;
                }
                return Ok(());
            }
            let entries = dump::read(&args.bpffs)?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                writeln!(out)?;
            } else {
                let config = dump::read_config(&args.bpffs)?;
                dump::print_text(&mut out, &entries, &config)?;
            }
            Ok(())
        }
        Command::Explain(args) => crate::explain::main(args),
        Command::Probe(args) => crate::probe::main(args),
        Command::Cleanup(args) => {
            datapath::cleanup(&args.bpffs)
                .with_context(|| format!("cleaning up {}", args.bpffs.display()))?;
            info!(bpffs = %args.bpffs.display(), "detached and unpinned");
            Ok(())
        }
    }
}

/// `clusterip-agent run`: load or adopt the datapath, then follow the manifests until SIGINT or
/// SIGTERM. On exit the datapath stays attached (pinned), like the kernel side does when the
/// agent is killed: connections keep working; `cleanup` removes it.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cgroup = match (args.socket_lb, args.cgroup) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => {
            Some(datapath::default_cgroup_root().context("finding the cgroup v2 root")?)
        }
    };
    let Some(manifests) = args.source.manifests.clone() else {
        anyhow::bail!("the Kubernetes API source is not wired yet: pass --manifests");
    };
    let node_name = match args.source.node_name.clone() {
        Some(n) => n,
        None => hostname().context("reading the hostname (set --node-name or NODE_NAME)")?,
    };
    let debug_logs = telemetry::ebpf_debug_enabled();
    let cfg = DatapathConfig {
        bpffs: args.bpffs.clone(),
        cgroup: cgroup.clone(),
        debug_logs,
        tc_ifaces: args.tc_ifaces.iter().map(|p| Pattern::new(p)).collect(),
        xdp_ifaces: args.xdp_ifaces.iter().map(|p| Pattern::new(p)).collect(),
        ct_max: args.ct_max,
        ct_config: DatapathConfigValue {
            ct_tcp_timeout_s: args.ct_tcp_timeout,
            ct_tcp_closing_timeout_s: args.ct_tcp_closing_timeout,
            ct_udp_timeout_s: args.ct_udp_timeout,
            _pad: 0,
        },
    };
    let mut datapath = Datapath::load(&cfg).context("loading the eBPF datapath")?;
    if debug_logs {
        datapath
            .spawn_log_forwarder()
            .context("forwarding eBPF logs")?;
    }
    let mut syncer = Syncer::open(&args.bpffs).context("opening the pinned maps")?;
    info!(
        cgroup = %cgroup.as_deref().map(|c| c.display().to_string()).unwrap_or_else(|| "-".into()),
        bpffs = %args.bpffs.display(),
        node = %node_name,
        manifests = %manifests.display(),
        adopted_frontends = syncer.installed().frontends.len(),
        "datapath attached"
    );

    let mut source = ManifestSource::new(manifests, node_name);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut iface_tick = tokio::time::interval(IFACE_SCAN_INTERVAL);
    iface_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // After a failed apply the next table is applied even if the manifests did not change.
    let mut pending = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(table) = source.poll() {
                    pending = Some(table);
                }
                if let Some(table) = pending.take() {
                    let udp_before = sockdiag::udp_members(syncer.installed());
                    match syncer.apply(&table) {
                        Ok(stats) => {
                            syncer::log_stats(&stats);
                            if let Some(cg) = &cgroup {
                                let after = sockdiag::udp_members(syncer.installed());
                                let removed = udp_before.difference(&after).copied().collect();
                                destroy_stale_udp_sockets(&args.bpffs, cg, removed).await;
                            }
                        }
                        Err(e) => {
                            syncer::recover(&mut syncer, &e);
                            pending = Some(table);
                        }
                    }
                }
            }
            _ = iface_tick.tick(), if datapath.watches_interfaces() => {
                datapath.sync_interfaces();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("stopping; the datapath stays attached (`clusterip-agent cleanup` removes it)");
    drop(datapath);
    Ok(())
}

/// Connected UDP sockets of removed backends are destroyed so their owners reconnect through
/// the VIP (see `sockdiag`). Failing to do so is logged, never fatal.
async fn destroy_stale_udp_sockets(
    bpffs: &std::path::Path,
    cgroup: &std::path::Path,
    removed: sockdiag::UdpMembers,
) {
    if removed.is_empty() {
        return;
    }
    let (bpffs, cgroup) = (bpffs.to_path_buf(), cgroup.to_path_buf());
    let n = removed.len();
    let result = tokio::task::spawn_blocking(move || {
        sockdiag::destroy_udp_sockets(&bpffs, &cgroup, &removed)
    })
    .await;
    match result {
        Ok(Ok(0)) => {}
        Ok(Ok(destroyed)) => {
            info!(
                destroyed,
                removed_backends = n,
                "destroyed UDP sockets of removed backends"
            )
        }
        Ok(Err(e)) => warn!(error = %e, "destroying UDP sockets of removed backends"),
        Err(e) => warn!(error = %e, "the socket-destroy task failed"),
    }
}

fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}
