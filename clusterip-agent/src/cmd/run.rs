//! The agent's commands: `run` (load, attach, follow the source), `dump`, `explain`,
//! `probe`, `cleanup`, `mount-bpffs`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
use crate::health::{self, BindAddresses, HealthCheckService, ProxyHealth, ServiceHealth};
use crate::metrics::{self, Metrics};
use crate::model::table::{DesiredTable, FrontendKind};
use crate::model::{
    NodeAddresses, NodeInfo, NodePortAddresses, select_node_port_addresses, snat_addresses,
};
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

/// How often the interfaces are re-scanned for --tc-iface / --xdp-iface patterns, and the
/// network namespace's addresses for the node-port addresses.
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
    let nodeport_flag = args.nodeport_addresses().context("--nodeport-addresses")?;
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
    let mut node_ports = NodePorts {
        flag: nodeport_flag,
        node: NodeAddresses::default(),
        netns: Vec::new(),
        selected: None,
    };
    // Before the first sync, so that the first table has the node ports.
    node_ports.rescan();
    node_ports.apply(&mut store, Instant::now());
    let mut state = SyncState {
        full_needed: true,
        cgroup,
        bpffs: args.bpffs.clone(),
        metrics: Arc::clone(&metrics),
        proxy_health: Arc::clone(&proxy_health),
        service_health: ServiceHealth::new(node_ports.bind(), Arc::clone(&proxy_health)),
        config: cfg.ct_config,
        health_checks_dirty: true,
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
                take_event(&mut store, &metrics, &proxy_health, &mut node_ports, at, ev);
                // Everything already queued joins this batch.
                for _ in 0..MAX_BATCH {
                    match rx.try_recv() {
                        Ok((at, ev)) => {
                            take_event(&mut store, &metrics, &proxy_health, &mut node_ports, at, ev)
                        }
                        Err(_) => break,
                    }
                }
                // The Node's addresses may have changed what `primary` selects.
                node_ports.apply(&mut store, at);
                if store.initialized() {
                    state.sync(&mut store, &mut syncer, &mut datapath, &node_ports).await?;
                }

            }
            _ = retry.tick(), if state.full_needed && store.initialized() => {
                state.sync(&mut store, &mut syncer, &mut datapath, &node_ports).await?;
            }
            _ = iface_tick.tick() => {
                if datapath.watches_interfaces() {
                    datapath.sync_interfaces();
                }
                node_ports.rescan();
                if node_ports.apply(&mut store, Instant::now()) && store.initialized() {
                    state.sync(&mut store, &mut syncer, &mut datapath, &node_ports).await?;
                }
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
    node_ports: &mut NodePorts,
    at: Instant,
    ev: SourceEvent,
) {
    match &ev {
        SourceEvent::WatchRestarted(resource) => metrics.inc_watch_restarts(resource),
        SourceEvent::NodeUpdated {
            deleting,
            addresses,
            ..
        } => {
            node_ports.node = addresses.clone();
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

/// The node-port addresses: `--nodeport-addresses`, the Node's addresses (from
/// [`SourceEvent::NodeUpdated`]) and the network namespace's (re-read every second), and what
/// they select.
struct NodePorts {
    flag: NodePortAddresses,
    node: NodeAddresses,
    netns: Vec<IpAddr>,
    /// What the store has; None before the first [`NodePorts::apply`].
    selected: Option<Vec<IpAddr>>,
}

impl NodePorts {
    /// Re-reads the network namespace's addresses (a failure keeps the last ones: logged).
    fn rescan(&mut self) {
        match datapath::addresses::list() {
            Ok(addresses) => self.netns = addresses,
            Err(e) => warn!(error = %e, "listing the network namespace's addresses"),
        }
    }

    /// Selects the node-port addresses again and hands them to the store if they changed
    /// (the store then rebuilds the services with node ports); true if they did.
    fn apply(&mut self, store: &mut Store, at: Instant) -> bool {
        let selected = select_node_port_addresses(&self.flag, &self.netns, &self.node);
        if self.selected.as_ref() == Some(&selected) {
            return false;
        }
        info!(
            addresses = %selected.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "node-port addresses"
        );
        store.set_node_port_addresses(at, &selected);
        self.selected = Some(selected);
        true
    }

    fn selected(&self) -> &[IpAddr] {
        self.selected.as_deref().unwrap_or_default()
    }

    /// Where the health check node ports listen: every address when the flag selects every
    /// address of both families (kube-proxy listens on the wildcard then), else the
    /// node-port addresses.
    fn bind(&self) -> BindAddresses {
        if self.flag.matches_all(&self.node) {
            BindAddresses::All
        } else {
            BindAddresses::Only(self.selected().to_vec())
        }
    }

    /// The source NAT addresses for traffic from outside to a backend on another node.
    fn snat(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        snat_addresses(&self.node, self.selected())
    }
}

struct SyncState {
    /// The next sync applies the whole table (first sync; after a failure).
    full_needed: bool,
    cgroup: Option<PathBuf>,
    bpffs: PathBuf,
    metrics: Arc<Metrics>,
    /// Told each time the maps are current.
    proxy_health: Arc<ProxyHealth>,
    /// The health check node ports of `externalTrafficPolicy: Local` LoadBalancer services.
    service_health: ServiceHealth,
    /// `CIP_CONFIG` as last written (the source NAT addresses change with the node's).
    config: DatapathConfigValue,
    /// The store's health checks changed since `service_health` was last fed (true at
    /// first: it has never been). Kept across failed syncs, which do not feed it.
    health_checks_dirty: bool,
}

impl SyncState {
    /// One sync; after the first successful one the datapath is attached (a failure to attach
    /// is fatal: the agent cannot do its job).
    async fn sync(
        &mut self,
        store: &mut Store,
        syncer: &mut Syncer,
        datapath: &mut Datapath,
        node_ports: &NodePorts,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let changes = store.compute();
        self.health_checks_dirty |= changes.health_checks;
        self.write_snat(node_ports);
        if !self.full_needed && changes.touched.is_empty() {
            // Nothing to write: the maps hold the current state (kube-proxy too counts a
            // sync that changed nothing as an update).
            self.proxy_health.updated(Instant::now());
            self.feed_health_checks(store, node_ports).await;
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
                self.feed_health_checks(store, node_ports).await;
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

    /// Hands the services' health checks to their servers (kube-proxy does it after each
    /// sync, `SyncServices` then `SyncEndpoints`), on the node-port addresses. Only when they
    /// changed, or where they listen did; the servers answer from what they were last told.
    async fn feed_health_checks(&mut self, store: &Store, node_ports: &NodePorts) {
        let bind = node_ports.bind();
        if self.service_health.bind() != bind {
            self.service_health.rebind(bind).await;
        }
        if !self.health_checks_dirty {
            return;
        }
        self.health_checks_dirty = false;
        let services = store
            .health_checks()
            .iter()
            .map(|(key, hc)| HealthCheckService {
                namespace: key.namespace().to_owned(),
                name: key.name().to_owned(),
                port: hc.port,
                local_endpoints: hc.local_endpoints,
            })
            .collect();
        self.service_health.sync(services).await;
    }

    /// Writes the source NAT addresses to `CIP_CONFIG` when they changed. A failure is
    /// logged and retried at the next sync.
    fn write_snat(&mut self, node_ports: &NodePorts) {
        let (v4, v6) = node_ports.snat();
        let mut config = self.config;
        config.snat4 = v4.map_or(0, clusterip_common::ip4_to_net);
        config.snat6 = v6.map_or([0; 4], clusterip_common::ip6_to_net);
        if config == self.config {
            return;
        }
        match datapath::maps::write_config(&self.bpffs, &config) {
            Ok(_) => {
                info!(snat4 = ?v4, snat6 = ?v6, "source NAT addresses for external traffic to other nodes");
                self.config = config;
            }
            Err(e) => warn!(error = %e, "writing the source NAT addresses to CIP_CONFIG"),
        }
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
        for (kind, count) in frontends_by_kind(table) {
            self.metrics.set_programmed_frontends_of_kind(kind, count);
        }
        for (map, used, capacity) in syncer.map_usage() {
            self.metrics.set_map_usage(map, used, capacity);
        }
    }
}

/// How many frontends of each kind the table has, by the names the metrics label them with.
fn frontends_by_kind(table: &DesiredTable) -> [(&'static str, u64); 4] {
    let mut counts = [0u64; 4];
    for e in table.services.values() {
        counts[match e.kind {
            FrontendKind::ClusterIp => 0,
            FrontendKind::ExternalIp => 1,
            FrontendKind::NodePort => 2,
            FrontendKind::LoadBalancer => 3,
        }] += 1;
    }
    [
        ("cluster_ip", counts[0]),
        ("external_ip", counts[1]),
        ("node_port", counts[2]),
        ("load_balancer", counts[3]),
    ]
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
