//! The agent's commands: `run` (load, attach, follow the source), `dump`, `explain`,
//! `probe`, `cleanup`, `mount-bpffs`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cli::{Cli, Command, RunArgs};
use crate::cmd::dump;
use crate::datapath::interfaces::Pattern;
use crate::datapath::maps::pinned_map_info;
use crate::datapath::migrate::possible_cpus;
use crate::datapath::sizing::{Mib, Sizing, SizingInput};
use crate::datapath::{self, sockdiag};
use crate::datapath::{Datapath, DatapathConfig};
use crate::health::{self, ProxyHealth};
use crate::metrics::{self, Metrics};
use crate::model::NodeInfo;
use crate::source::SourceEvent;
use crate::source::kube as kube_source;
use crate::source::manifests::ManifestSource;
use crate::sync::store::Store;
use crate::sync::syncer;
use crate::sync::syncer::Syncer;
use crate::telemetry;
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
            if args.maps {
                let maps = pinned_map_info(&args.bpffs)?;
                if args.json {
                    serde_json::to_writer_pretty(&mut out, &maps)?;
                    writeln!(out)?;
                } else {
                    dump::print_maps(&mut out, &maps)?;
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
                let maps = pinned_map_info(&args.bpffs)?;
                let total: u64 = maps.iter().map(|m| m.bytes_memlock).sum();
                writeln!(
                    out,
                    "maps: {} of kernel memory in {} maps (`dump --maps`: each)",
                    Mib(total),
                    maps.len()
                )?;
            }
            Ok(())
        }
        Command::Explain(args) => crate::cmd::explain::main(args),
        Command::Probe(args) => crate::cmd::probe::main(args),
        Command::Cleanup(args) => {
            datapath::cleanup(&args.bpffs)
                .with_context(|| format!("cleaning up {}", args.bpffs.display()))?;
            info!(bpffs = %args.bpffs.display(), "detached and unpinned");
            Ok(())
        }
        Command::MountBpffs(args) => {
            match datapath::mount_bpffs(&args.dir)? {
                datapath::BpffsMount::Present => {
                    info!(dir = %args.dir.display(), "already a bpf filesystem")
                }
                // mount_bpffs logs the mount itself (the loader's path does too).
                datapath::BpffsMount::Mounted => {}
            }
            Ok(())
        }
    }
}

/// `clusterip-agent run`: load or adopt the datapath, then follow the source (manifest files
/// or the Kubernetes API) until SIGINT or SIGTERM. On exit the datapath stays attached
/// (pinned), like the kernel side does when the agent is killed: connections keep working;
/// `cleanup` removes it.
///
/// Events from the source go into the [`Store`]; every batch of events that arrived together
/// is computed and written at once (bursts coalesce without waiting for a timer). The first
/// sync, and any sync after a failed one, applies the whole table (removing what an earlier
/// agent left that is no longer wanted); the others write only the touched frontends.
///
/// The proxy health checks follow kube-proxy's: each batch of events is a queued update,
/// each sync that leaves the maps current (or finds nothing to write) an update, and this
/// Node being deleted makes the node ineligible ([`ProxyHealth`]).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics_addr = metrics::parse_addr(&args.metrics_addr)?;
    let healthz_addr = health::node::parse_addr(&args.healthz_bind_address)?;
    let cgroup = match (args.socket_lb, args.cgroup.clone()) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => {
            Some(datapath::default_cgroup_root().context("finding the cgroup v2 root")?)
        }
    };
    let node_name = node_name(&args.source)?;
    // The source is set up before anything is attached: a bad kubeconfig changes nothing.
    let kube_client = match &args.source.manifests {
        Some(_) => None,
        None => Some(
            kube_source::client(args.source.kubeconfig.as_deref())
                .await
                .context("connecting to the Kubernetes API")?,
        ),
    };
    let metrics = Arc::new(Metrics::default());
    metrics.set_not_ready("waiting for the initial lists of Services and EndpointSlices");
    if let Some(addr) = metrics_addr {
        metrics::serve(addr, Arc::clone(&metrics)).await?;
    }
    let proxy_health = Arc::new(ProxyHealth::new(health::DEFAULT_HEALTH_TIMEOUT));
    if let Some(addr) = healthz_addr {
        // Not fatal when the port is taken (kube-proxy's may still be running): retried.
        let _healthz_task = proxy_health.serve(addr);
    }

    let debug_logs = telemetry::ebpf_debug_enabled();
    let per_packet = per_packet(&args);
    let cfg = DatapathConfig {
        bpffs: args.bpffs.clone(),
        cgroup: cgroup.clone(),
        debug_logs,
        tc_ifaces: args.tc_ifaces.iter().map(|p| Pattern::new(p)).collect(),
        xdp_ifaces: args.xdp_ifaces.iter().map(|p| Pattern::new(p)).collect(),
        nodeport_ifaces: args
            .nodeport_ifaces
            .iter()
            .map(|p| Pattern::new(p))
            .collect(),
        nodeport_xdp: args.nodeport_xdp,
        sizing: sizing(&args)?,
        ct_config: DatapathConfigValue {
            ct_tcp_timeout_s: args.ct_tcp_timeout,
            ct_tcp_closing_timeout_s: args.ct_tcp_closing_timeout,
            ct_udp_timeout_s: args.ct_udp_timeout,
            // Set from the node's addresses once they are known.
            snat4: 0,
            snat6: [0; 4],
        },
    };
    let mut datapath = Datapath::load(&cfg).context("loading the eBPF datapath")?;
    if debug_logs {
        datapath
            .spawn_log_forwarder()
            .context("forwarding eBPF logs")?;
    }
    let mut syncer = Syncer::open(&args.bpffs).context("opening the pinned maps")?;
    // The programs go on once the maps hold the table (after the first sync).
    // Only the per-packet programs read Maglev tables (10,000 services: 40 MiB, 10,000 writes).
    syncer.set_maglev(per_packet);
    let source_name = match &args.source.manifests {
        Some(m) => m.display().to_string(),
        None => "kubernetes".to_string(),
    };
    info!(
        cgroup = %cgroup.as_deref().map(|c| c.display().to_string()).unwrap_or_else(|| "-".into()),
        bpffs = %args.bpffs.display(),
        node = %node_name,
        source = %source_name,
        adopted_frontends = syncer.installed().frontends.len(),
        "datapath loaded"
    );

    let (tx, mut rx) = mpsc::channel::<(Instant, SourceEvent)>(EVENT_QUEUE);
    let _source_task = match (&args.source.manifests, kube_client) {
        (Some(path), _) => spawn_manifest_source(path.clone(), node_name.clone(), tx),
        (None, Some(client)) => kube_source::spawn(client, node_name.clone(), tx),
        (None, None) => anyhow::bail!("no source of Services"),
    };

    let mut store = Store::new(NodeInfo::new(node_name, None));
    let mut state = SyncState {
        full_needed: true,
        cgroup,
        bpffs: args.bpffs.clone(),
        metrics: Arc::clone(&metrics),
        proxy_health: Arc::clone(&proxy_health),
    };
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut iface_tick = tokio::time::interval(IFACE_SCAN_INTERVAL);
    iface_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some((at, ev)) = ev else {
                    anyhow::bail!("the source of Services stopped");
                };
                // Pending from when the first change of the batch was received.
                proxy_health.queued_update(at);
                take_event(&mut store, &metrics, &proxy_health, at, ev);
                // Everything already queued joins this batch.
                for _ in 0..MAX_BATCH {
                    match rx.try_recv() {
                        Ok((at, ev)) => take_event(&mut store, &metrics, &proxy_health, at, ev),
                        Err(_) => break,
                    }
                }
                if store.initialized() {
                    state.sync(&mut store, &mut syncer, &mut datapath).await?;
                }

            }
            _ = retry.tick(), if state.full_needed && store.initialized() => {
                state.sync(&mut store, &mut syncer, &mut datapath).await?;
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

/// Events queued between the sources and the store.
const EVENT_QUEUE: usize = 4096;
/// Events taken into one batch at most before it is synced.
const MAX_BATCH: usize = 20_000;
/// How soon a failed sync is retried (as a full apply).
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

fn take_event(
    store: &mut Store,
    metrics: &Metrics,
    proxy_health: &ProxyHealth,
    at: Instant,
    ev: SourceEvent,
) {
    match &ev {
        SourceEvent::WatchRestarted(resource) => metrics.inc_watch_restarts(resource),
        SourceEvent::NodeUpdated { deleting, .. } => {
            let eligible = !deleting;
            if eligible != proxy_health.node_eligible() {
                if eligible {
                    info!("this node is no longer being deleted: /healthz passes again");
                } else {
                    warn!(
                        "this node is being deleted (deletionTimestamp, \
                         ToBeDeletedByClusterAutoscaler taint, or its Node is gone): /healthz \
                         fails so that load balancers stop sending it traffic"
                    );
                }
            }
            proxy_health.set_node_eligible(eligible);
        }
        _ => {}
    }
    store.handle(at, ev);
}

struct SyncState {
    /// The next sync applies the whole table (first sync; after a failure).
    full_needed: bool,
    cgroup: Option<PathBuf>,
    bpffs: PathBuf,
    metrics: Arc<Metrics>,
    /// Told each time the maps are current.
    proxy_health: Arc<ProxyHealth>,
}

impl SyncState {
    /// One sync; after the first successful one the datapath is attached (a failure to attach
    /// is fatal: the agent cannot do its job).
    async fn sync(
        &mut self,
        store: &mut Store,
        syncer: &mut Syncer,
        datapath: &mut Datapath,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let changes = store.compute();
        if !self.full_needed && changes.touched.is_empty() {
            // Nothing to write: the maps hold the current state (kube-proxy too counts a
            // sync that changed nothing as an update).
            self.proxy_health.updated(Instant::now());
            return Ok(());
        }
        let full = self.full_needed;
        let udp_before = self.cgroup.as_ref().map(|_| {
            if full {
                sockdiag::udp_members(syncer.installed())
            } else {
                sockdiag::udp_members_of(syncer.installed(), &changes.touched)
            }
        });
        let write_start = Instant::now();
        let result = if full {
            syncer.apply(store.table())
        } else {
            syncer.apply_partial(store.table(), &changes.touched)
        };
        let written = Instant::now();
        match result {
            Ok(stats) => {
                self.full_needed = false;
                if !datapath.is_attached() {
                    datapath.attach().context("attaching the eBPF datapath")?;
                }
                self.proxy_health.updated(written);
                let latency = changes.since.map(|t| written.saturating_duration_since(t));
                syncer::log_stats(&stats, full, written - write_start, latency);
                self.metrics
                    .observe_sync(written.duration_since(started).as_secs_f64());
                if let Some(l) = latency {
                    self.metrics.observe_programming_latency(l.as_secs_f64());
                }
                self.report(store, syncer);
                self.metrics.set_ready(true);
                if let (Some(cg), Some(before)) = (&self.cgroup, udp_before) {
                    let after = if full {
                        sockdiag::udp_members(syncer.installed())
                    } else {
                        sockdiag::udp_members_of(syncer.installed(), &changes.touched)
                    };
                    let removed = before.difference(&after).copied().collect();
                    destroy_stale_udp_sockets(&self.bpffs, cg, removed).await;
                }
            }
            Err(e) => {
                self.metrics.inc_sync_errors();
                syncer::recover(syncer, &e);
                self.full_needed = true;
            }
        }
        Ok(())
    }

    /// Gauges: what is programmed and how full the maps are.
    fn report(&self, store: &Store, syncer: &Syncer) {
        let table = store.table();
        let endpoints: usize = table.services.values().map(|e| e.backends.len()).sum();
        self.metrics.set_programmed(
            store.programmed_services() as u64,
            table.services.len() as u64,
            endpoints as u64,
        );
        for (map, used, capacity) in syncer.map_usage() {
            self.metrics.set_map_usage(map, used, capacity);
        }
    }
}

/// Follows the manifest files on a thread of its own (a large file takes a while to parse):
/// the complete set first, then the objects that changed.
fn spawn_manifest_source(
    path: PathBuf,
    node_name: String,
    tx: mpsc::Sender<(Instant, SourceEvent)>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut source = ManifestSource::new(path, node_name);
        loop {
            // The whole set first, then only what changed: the store stays in step because
            // nothing else feeds it.
            if let Some(events) = source.poll_events() {
                let at = Instant::now();
                for ev in events {
                    if tx.blocking_send((at, ev)).is_err() {
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    })
}

/// The maps' sizes from the flags, the node's memory and the paths that are on.
fn sizing(args: &RunArgs) -> anyhow::Result<Sizing> {
    let node_memory = node_memory().context("reading the node's memory from /proc/meminfo")?;
    let mut input = SizingInput::defaults(
        node_memory,
        u32::try_from(possible_cpus()).unwrap_or(u32::MAX),
        args.socket_lb,
        per_packet(args),
    );
    input.ratio = args.map_dynamic_size_ratio;
    input.ct_max = args.ct_max;
    input.sock_revnat_max = args.sock_revnat_max;
    input.service_entries = args.service_map_entries;
    input.backend_entries = args.backend_map_entries;
    input.maglev_entries = args.maglev_map_entries;
    Ok(Sizing::compute(&input))
}

/// Whether a per-packet program runs (then conntrack and the Maglev tables are needed).
fn per_packet(args: &RunArgs) -> bool {
    !args.tc_ifaces.is_empty() || !args.xdp_ifaces.is_empty() || !args.nodeport_ifaces.is_empty()
}

/// `MemTotal` of /proc/meminfo, in bytes.
pub fn node_memory() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no MemTotal line")?;
    Ok(kib * 1024)
}

fn node_name(source: &crate::cli::SourceArgs) -> anyhow::Result<String> {
    match &source.node_name {
        Some(n) => Ok(n.clone()),
        None => hostname().context("reading the hostname (set --node-name or NODE_NAME)"),
    }
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
