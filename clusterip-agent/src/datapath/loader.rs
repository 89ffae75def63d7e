//! Loads the clusterip eBPF programs, attaches them to a cgroup and pins everything.
//!
//! Layout under the pin directory (`--bpffs`, default `/sys/fs/bpf/clusterip`):
//! - `<dir>/<MAP>` for every map in [`clusterip_common::map_names::ALL`] (the programs declare
//!   them `pin_by_name`; an existing pin is adopted, so the table and per-socket state survive
//!   an agent restart);
//! - `<dir>/links/<program>` for the eight cgroup links. A pinned link keeps its program
//!   attached after the agent exits (or is killed); `cleanup` removes them.
//!
//! Per-packet datapath: `tc_ingress` on the ingress of every `--tc-iface` interface (TCX
//! links, kernel >= 6.6; netlink with a clsact qdisc before that) and `xdp_ingress` on every
//! `--xdp-iface` interface (native mode, else generic). Their links are pinned at
//! `<dir>/links/tc_<ifname>` and `<dir>/links/xdp_<ifname>` ('.' and '_' in names written as
//! `_2e`, `_5f`: bpffs refuses dots). Interfaces are re-scanned every second
//! ([`Datapath::sync_interfaces`]): a new interface matching a pattern gets the program, the
//! pin of a vanished one goes. A restarted agent swaps its program into the pinned link of an
//! interface that is still there (BPF_LINK_UPDATE: atomic) and detaches pins of interfaces it
//! was not told about this time. Only interfaces named by the flags are touched.
//!
//! A restarted agent replaces the previous links make-before-break: the new program is
//! attached next to the old one (cgroup BPF links are multi-program attachments), its link
//! pinned under a temporary name and renamed over the old pin, and only then the old link is
//! detached (BPF_LINK_DETACH, so even a still-running old agent's link goes). Both programs
//! running for that moment is harmless: the first one rewrites a VIP to a backend, which the
//! second one does not know as a VIP.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttach, TcAttachType, Xdp,
        XdpMode, links::FdLink, tc,
    },
};
use aya_log::EbpfLogger;
use clusterip_common::{DatapathConfigValue, map_names};

use super::interfaces::{self, Pattern};
use super::links::{detach_link, link_info, link_update, open_pin, take_pinned_link};
use super::migrate::{self, MigrateError, Migration};
use super::sizing::{Mib, Sizing};
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

/// The programs of the eBPF object, by symbol name; each is pinned at `links/<name>`.
pub const PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// How the programs are attached. aya creates BPF links (kernel >= 5.7), and a cgroup BPF link
/// is always a multi-program attachment (BPF_F_ALLOW_MULTI semantics): other programs on the
/// cgroup and its children keep running, and a second link (the make-before-break
/// replacement) runs next to ours. `BPF_LINK_CREATE` rejects explicit attach flags with
/// EINVAL, which is what `CgroupAttachMode::AllowMultiple` would pass, so `Single` (flags 0)
/// is the mode that yields a multi attachment here.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The per-packet programs, by symbol name.
pub const TC_PROGRAM: &str = "tc_ingress";
pub const XDP_PROGRAM: &str = "xdp_ingress";
/// On the egress of the `--tc-iface` interfaces: ICMP errors the node itself sends about
/// translated flows (fragmentation needed, packet too big).
pub const TC_EGRESS_PROGRAM: &str = "tc_egress";
/// On the ingress and egress of the node's external interfaces (`--nodeport-iface`): node
/// ports, load-balancer and external IPs from outside the node, and their replies.
pub const NODEPORT_PROGRAM: &str = "tc_nodeport";
pub const NODEPORT_EGRESS_PROGRAM: &str = "tc_nodeport_egress";
/// With `--nodeport-xdp`, at XDP on the same interfaces: the forward path of flows to
/// backends on other nodes.
pub const NODEPORT_XDP_PROGRAM: &str = "xdp_nodeport";
/// Pin name prefixes of their per-interface links.
pub const TC_PIN_PREFIX: &str = "tc";
pub const XDP_PIN_PREFIX: &str = "xdp";
pub const TC_EGRESS_PIN_PREFIX: &str = "tce";
pub const NODEPORT_PIN_PREFIX: &str = "np";
pub const NODEPORT_EGRESS_PIN_PREFIX: &str = "npe";
pub const NODEPORT_XDP_PIN_PREFIX: &str = "npx";

/// Sub-directory of the pin directory holding the link pins.
pub const LINKS_DIR: &str = "links";

/// Where bpffs is expected (and mounted when missing).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The global of aya-log-ebpf that holds the enabled log level; patched before load.
const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";
/// The object's `.rodata` switch for `bpf_set_retval` (clusterip-ebpf `ctx.rs`): 0 on kernels
/// without the helper, so the verifier drops the call and a refused connect() gives EPERM.
const SET_RETVAL_GLOBAL: &str = "HAVE_SET_RETVAL";

const FIX_PRIVILEGES: &str = "run the agent as root (it needs CAP_BPF, CAP_NET_ADMIN and \
                              CAP_SYS_ADMIN) on a kernel with BPF and cgroup v2";

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Pin directory for maps and links (on bpffs).
    pub bpffs: PathBuf,
    /// cgroup v2 directory the socket programs are attached to; None: no socket-level load
    /// balancing (and the socket links of a previous agent are detached).
    pub cgroup: Option<PathBuf>,
    /// Enables the programs' aya-log `debug!` records (otherwise the verifier removes them).
    pub debug_logs: bool,
    /// Interfaces (names or patterns) whose ingress gets `tc_ingress`.
    pub tc_ifaces: Vec<Pattern>,
    /// Interfaces (names or patterns) that get `xdp_ingress`.
    pub xdp_ifaces: Vec<Pattern>,
    /// The node's external interfaces (names or patterns): `tc_nodeport` at ingress,
    /// `tc_nodeport_egress` at egress.
    pub nodeport_ifaces: Vec<Pattern>,
    /// Also `xdp_nodeport` on the `nodeport_ifaces` (native mode, else generic).
    pub nodeport_xdp: bool,
    /// Every map's size ([`Sizing::compute`]).
    pub sizing: Sizing,
    /// Timeouts, written to `CIP_CONFIG[0]`.
    pub ct_config: DatapathConfigValue,
}

impl DatapathConfig {
    /// The interface patterns of `kind`'s program.
    fn patterns(&self, kind: HookKind) -> &[Pattern] {
        match kind {
            HookKind::Tc | HookKind::TcEgress => &self.tc_ifaces,
            HookKind::Xdp => &self.xdp_ifaces,
            HookKind::NodePort | HookKind::NodePortEgress => &self.nodeport_ifaces,
            HookKind::NodePortXdp if self.nodeport_xdp => &self.nodeport_ifaces,
            HookKind::NodePortXdp => &[],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this clusterip-agent was built without the eBPF object (its build script found no \
         eBPF toolchain): run `cargo xtask setup`, then build the agent again"
    )]
    NoObject,
    #[error("{path}: not permitted ({source}): {FIX_PRIVILEGES}")]
    NotPermitted { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a bpf filesystem and mounting one failed ({source}): \
         mount it with `mount -t bpf bpf {path}`, as root"
    )]
    MountBpffs { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpf filesystem: choose a pin directory under /sys/fs/bpf")]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "loading the eBPF object (maps pinned in {dir}) failed: {source}. Fix: {FIX_PRIVILEGES}",
        dir = dir.display()
    )]
    Load {
        dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error(
        "creating the maps failed. {limit}. Since Linux 5.11 the kernel charges BPF \
         map memory to the memory cgroup of the process that creates the maps; at these sizes \
         they take about {need} (`clusterip-agent probe` shows each map). Fix: raise the memory \
         limit (deploy/daemonset.yaml sets it for these defaults) or make the maps smaller \
         (--map-dynamic-size-ratio, --ct-max, --sock-revnat-max, --service-map-entries)"
    )]
    MemoryLimit {
        #[source]
        source: Box<aya::EbpfError>,
        /// The cgroup's limit and usage, as text.
        limit: String,
        need: Mib,
    },
    #[error("preparing the pinned maps in {dir}: {source}", dir = dir.display())]
    Migrate {
        dir: PathBuf,
        source: Box<MigrateError>,
    },
    #[error("the eBPF object has no program {0}: rebuild the agent (`cargo build`)")]
    MissingProgram(&'static str),
    #[error(
        "--{flag} needs the program {program}, which this agent's eBPF object does not have: \
         rebuild the agent (`cargo build`; its build script builds the object)"
    )]
    MissingPacketProgram {
        flag: &'static str,
        program: &'static str,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        source: Box<crate::datapath::maps::MapsError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {name} to cgroup {cgroup}: {source}. Is it a cgroup v2 directory?")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning the {name} link at {path}: {source}")]
    PinLink {
        name: String,
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error(
        "socket-level load balancing cannot run on this kernel: {0}. Run with \
         --socket-lb=false and --tc-iface (see `clusterip-agent probe`)"
    )]
    NoSocketLb(String),
    #[error("no cgroup2 mount in /proc/mounts: mount cgroup v2 or pass --cgroup DIR")]
    NoCgroup2,
    #[error("forwarding eBPF logs: {0}")]
    Log(#[from] Box<aya_log::Error>),
    #[error("forwarding eBPF logs needs a tokio runtime: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
}

impl DatapathError {
    pub(super) fn io(path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::NotPermitted {
                path: path.to_path_buf(),
                source,
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// The loaded and attached datapath. Dropping it leaves the programs attached (their links
/// are pinned) and the maps in place; only [`cleanup`] removes them.
pub struct Datapath {
    ebpf: Ebpf,
    /// The links this agent created (also pinned); kept so they stay valid while we run.
    links: Vec<FdLink>,
    pin_dir: PathBuf,
    log_task: Option<JoinHandle<()>>,
    /// One per [`HookKind`], in [`HookKind::ALL`] order.
    hooks: [IfaceHook; 6],
    /// The kernel has TCX links (else TC programs go straight to netlink clsact).
    tcx: bool,
    /// The cgroup the socket programs go on (None: socket-level load balancing off).
    cgroup: Option<(PathBuf, File)>,
    /// [`Datapath::attach`] has run.
    attached: bool,
    /// Maps replaced because their definition changed, until the new programs are attached.
    migration: Option<Migration>,
}

/// Which per-packet program a hook attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Tc,
    TcEgress,
    Xdp,
    NodePort,
    NodePortEgress,
    NodePortXdp,
}

impl HookKind {
    pub const ALL: [HookKind; 6] = [
        HookKind::Tc,
        HookKind::TcEgress,
        HookKind::Xdp,
        HookKind::NodePort,
        HookKind::NodePortEgress,
        HookKind::NodePortXdp,
    ];

    pub fn program(self) -> &'static str {
        match self {
            HookKind::Tc => TC_PROGRAM,
            HookKind::TcEgress => TC_EGRESS_PROGRAM,
            HookKind::Xdp => XDP_PROGRAM,
            HookKind::NodePort => NODEPORT_PROGRAM,
            HookKind::NodePortEgress => NODEPORT_EGRESS_PROGRAM,
            HookKind::NodePortXdp => NODEPORT_XDP_PROGRAM,
        }
    }
    pub fn pin_prefix(self) -> &'static str {
        match self {
            HookKind::Tc => TC_PIN_PREFIX,
            HookKind::TcEgress => TC_EGRESS_PIN_PREFIX,
            HookKind::Xdp => XDP_PIN_PREFIX,
            HookKind::NodePort => NODEPORT_PIN_PREFIX,
            HookKind::NodePortEgress => NODEPORT_EGRESS_PIN_PREFIX,
            HookKind::NodePortXdp => NODEPORT_XDP_PIN_PREFIX,
        }
    }
    fn flag(self) -> &'static str {
        match self {
            HookKind::Tc | HookKind::TcEgress => "tc-iface",
            HookKind::Xdp => "xdp-iface",
            HookKind::NodePort | HookKind::NodePortEgress => "nodeport-iface",
            HookKind::NodePortXdp => "nodeport-xdp",
        }
    }
    /// TC programs attach at ingress or egress; XDP is neither.
    fn tc_attach(self) -> Option<TcAttachType> {
        match self {
            HookKind::Tc | HookKind::NodePort => Some(TcAttachType::Ingress),
            HookKind::TcEgress | HookKind::NodePortEgress => Some(TcAttachType::Egress),
            HookKind::Xdp | HookKind::NodePortXdp => None,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
    /// The error for an object without this hook's program.
    fn missing(self) -> DatapathError {
        DatapathError::MissingPacketProgram {
            flag: self.flag(),
            program: self.program(),
        }
    }
    /// BPF_LINK_TYPE_TCX / BPF_LINK_TYPE_XDP.
    fn link_type(self) -> u32 {
        match self {
            HookKind::Xdp | HookKind::NodePortXdp => 6,
            _ => 11,
        }
    }
}

/// One per-packet program and the interfaces it is attached to.
#[derive(Debug)]
struct IfaceHook {
    patterns: Vec<Pattern>,
    /// Interface name -> ifindex the link is attached to (pinned, or netlink).
    attached: BTreeMap<String, u32>,
    /// Interface name -> ifindex where attaching failed (retried when the ifindex changes).
    failed: BTreeMap<String, u32>,
}

impl IfaceHook {
    fn new(patterns: Vec<Pattern>) -> Self {
        Self {
            patterns,
            attached: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("links", &self.links.len())
            .field("tc", &self.hook(HookKind::Tc).attached)
            .field("xdp", &self.hook(HookKind::Xdp).attached)
            .field("nodeport", &self.hook(HookKind::NodePort).attached)
            .field("log_forwarder", &self.log_task.is_some())
            .finish()
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
    }
}

impl Datapath {
    /// Ensures /sys/fs/bpf is bpffs (mounts it if missing), creates `cfg.bpffs`, migrates
    /// pinned maps whose definition changed (see [`super::migrate`]), loads the object with its
    /// maps pinned in (or adopted from) `cfg.bpffs` at `cfg.sizing`'s sizes, sets the programs'
    /// log level and loads the programs. Nothing is attached yet: [`Datapath::attach`] does
    /// that once the maps hold the table (the programs a previous agent attached keep serving
    /// until then).
    pub fn load(cfg: &DatapathConfig) -> Result<Self, DatapathError> {
        let object = crate::EBPF_OBJECT;
        if object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        ensure_bpffs()?;
        fs::create_dir_all(&cfg.bpffs).map_err(|e| DatapathError::io(&cfg.bpffs, e))?;
        if !is_bpffs(&cfg.bpffs).map_err(|e| DatapathError::io(&cfg.bpffs, e))? {
            return Err(DatapathError::NotBpffs {
                path: cfg.bpffs.clone(),
            });
        }
        let links_dir = cfg.bpffs.join(LINKS_DIR);
        fs::create_dir_all(&links_dir).map_err(|e| DatapathError::io(&links_dir, e))?;
        let cgroup = match &cfg.cgroup {
            Some(path) => Some((
                path.clone(),
                File::open(path).map_err(|e| DatapathError::io(path, e))?,
            )),
            None => None,
        };

        let features = crate::datapath::probe::Features::detect();
        if cfg.cgroup.is_some() {
            if !features.socket_lb() {
                return Err(DatapathError::NoSocketLb(socket_lb_missing(&features)));
            }
            if !features.set_retval {
                tracing::warn!(
                    feature = "bpf_set_retval",
                    "{}",
                    crate::datapath::probe::SET_RETVAL_FALLBACK
                );
            }
            if let Err(why) = &features.sock_diag_destroy {
                tracing::warn!(
                    feature = "sock_diag_destroy",
                    "{why}: {}",
                    crate::datapath::probe::SOCK_DESTROY_FALLBACK
                );
            }
        }
        if (!cfg.tc_ifaces.is_empty() || !cfg.nodeport_ifaces.is_empty()) && !features.tcx {
            tracing::warn!(feature = "tcx", "{}", crate::datapath::probe::TCX_FALLBACK);
        }
        let have_set_retval = u8::from(features.set_retval);

        let migrate_err = |source| DatapathError::Migrate {
            dir: cfg.bpffs.clone(),
            source: Box::new(source),
        };
        let wanted = migrate::wanted(&cfg.sizing);
        let migration = Migration::prepare(&cfg.bpffs, &wanted).map_err(migrate_err)?;

        let level: u8 = if cfg.debug_logs {
            aya_log::Level::Debug as u8
        } else {
            0 /* off */
        };
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&cfg.bpffs)
            .override_global(LOG_LEVEL_GLOBAL, &level, true)
            .override_global(SET_RETVAL_GLOBAL, &have_set_retval, false);
        for map in &cfg.sizing.maps {
            loader.map_max_entries(map.name, map.entries);
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|source| load_error(cfg, source))?;
        tracing::info!(
            node_memory = %Mib(cfg.sizing.node_memory),
            ratio = cfg.sizing.ratio,
            budget = %Mib(cfg.sizing.budget),
            maps = %Mib(cfg.sizing.fixed_bytes()),
            "maps sized"
        );

        match crate::datapath::maps::write_config(&cfg.bpffs, &cfg.ct_config) {
            Ok(true) => tracing::info!(
                ct_max_v4 = cfg.sizing.entries(map_names::CONNTRACK_V4),
                ct_max_v6 = cfg.sizing.entries(map_names::CONNTRACK_V6),
                tcp_timeout_s = cfg.ct_config.ct_tcp_timeout_s,
                tcp_closing_timeout_s = cfg.ct_config.ct_tcp_closing_timeout_s,
                udp_timeout_s = cfg.ct_config.ct_udp_timeout_s,
                "conntrack configured"
            ),
            Ok(false) => tracing::debug!("the eBPF object has no {}", map_names::CONFIG),
            Err(e) => {
                return Err(DatapathError::Map {
                    what: "writing the conntrack timeouts".into(),
                    source: Box::new(e),
                });
            }
        }
        migration.copy(migrate::Pass::BeforeAttach);

        if cgroup.is_some() {
            for name in PROGRAMS {
                // A verifier rejection's message carries the verifier log.
                socket_program(&mut ebpf, name)?
                    .load()
                    .map_err(program_err(name))?;
            }
        }
        // The per-packet programs: loaded only when asked for.
        for kind in HookKind::ALL {
            if cfg.patterns(kind).is_empty() {
                continue;
            }
            let name = kind.program();
            let prog_err = program_err(name);
            let program = ebpf.program_mut(name).ok_or_else(|| kind.missing())?;
            if kind.tc_attach().is_some() {
                let p: &mut SchedClassifier = program.try_into().map_err(prog_err)?;
                p.load().map_err(prog_err)?;
            } else {
                let p: &mut Xdp = program.try_into().map_err(prog_err)?;
                p.load().map_err(prog_err)?;
            }
        }

        Ok(Self {
            ebpf,
            links: Vec::with_capacity(PROGRAMS.len()),
            pin_dir: cfg.bpffs.clone(),
            log_task: None,
            hooks: HookKind::ALL.map(|kind| IfaceHook::new(cfg.patterns(kind).to_vec())),
            tcx: features.tcx,
            cgroup,
            attached: false,
            migration: (!migration.is_empty()).then_some(migration),
        })
    }

    /// Whether [`Datapath::attach`] has run.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Attaches the 8 socket programs to the cgroup (as BPF links, which are multi-program
    /// attachments) and pins each link at `<bpffs>/links/<program>`, and the per-packet
    /// programs to their interfaces, replacing a previous agent's links make-before-break;
    /// then finishes a map migration (the old programs' last state is copied over and the old
    /// maps let go). Called once the maps hold the table; again is a no-op.
    pub fn attach(&mut self) -> Result<(), DatapathError> {
        if self.attached {
            return Ok(());
        }
        let links_dir = self.pin_dir.join(LINKS_DIR);
        match &self.cgroup {
            Some((path, cgroup)) => {
                attach_socket_programs(&mut self.ebpf, path, cgroup, &links_dir, &mut self.links)?;
                tracing::info!(cgroup = %path.display(), "socket-level load balancing attached");
            }
            None => {
                let mut n = 0;
                for name in PROGRAMS {
                    let path = links_dir.join(name);
                    if let Some(link) = take_pinned_link(&path)? {
                        detach_link(&path, &link);
                        n += 1;
                    }
                }
                tracing::info!(
                    detached_previous = n,
                    "socket-level load balancing off (--socket-lb=false)"
                );
            }
        }
        self.adopt_interface_links()?;
        self.attached = true;
        self.sync_interfaces();
        if let Some(migration) = self.migration.take() {
            migration.copy(migrate::Pass::AfterAttach);
            let maps: Vec<String> = migration.maps().map(str::to_owned).collect();
            migration.finish();
            tracing::info!(?maps, "map migration finished");
        }
        tracing::info!(
            bpffs = %self.pin_dir.display(),
            socket_lb = self.cgroup.is_some(),
            tc = ?self.hook(HookKind::Tc).attached.keys().collect::<Vec<_>>(),
            xdp = ?self.hook(HookKind::Xdp).attached.keys().collect::<Vec<_>>(),
            nodeport = ?self.hook(HookKind::NodePort).attached.keys().collect::<Vec<_>>(),
            "eBPF datapath attached"
        );
        Ok(())
    }

    /// Whether any per-packet hook was asked for (then interfaces are re-scanned).
    pub fn watches_interfaces(&self) -> bool {
        self.hooks.iter().any(|h| !h.patterns.is_empty())
    }

    /// At start: the per-interface links a previous agent pinned. A link on an interface that
    /// is still wanted and still there gets this agent's program swapped in (atomically);
    /// every other one is detached and unpinned.
    fn adopt_interface_links(&mut self) -> Result<(), DatapathError> {
        let links_dir = self.pin_dir.join(LINKS_DIR);
        let now = match interfaces::list() {
            Ok(all) => all,
            // Without the list every pin would look stale: keep them and fail.
            Err(e) if self.watches_interfaces() => {
                return Err(DatapathError::io(Path::new("if_nameindex()"), e));
            }
            // Nothing is wanted: every per-interface pin goes anyway.
            Err(_) => BTreeMap::new(),
        };
        let entries = fs::read_dir(&links_dir).map_err(|e| DatapathError::io(&links_dir, e))?;
        let mut pins = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DatapathError::io(&links_dir, e))?;
            pins.push(entry.file_name().to_string_lossy().into_owned());
        }
        pins.sort();
        for pin in pins {
            for kind in HookKind::ALL {
                let Some(ifname) = interfaces::ifname_from_pin(kind.pin_prefix(), &pin) else {
                    continue;
                };
                let path = links_dir.join(&pin);
                let Some(fd) = open_pin(&path).map_err(|e| DatapathError::io(&path, e))? else {
                    continue;
                };
                let info = link_info(&fd).ok();
                let hook = self.hook_mut(kind);
                let ifindex = now.get(&ifname).copied();
                let wanted = interfaces::matches_any(&hook.patterns, &ifname);
                let alive = matches!(
                    (info, ifindex),
                    (Some(i), Some(idx)) if i.link_type == kind.link_type() && i.ifindex == idx
                );
                if wanted && alive {
                    let prog_fd = self.program_fd(kind)?;
                    match link_update(&fd, prog_fd) {
                        Ok(()) => {
                            let idx = ifindex.unwrap_or(0);
                            self.hook_mut(kind).attached.insert(ifname.clone(), idx);
                            tracing::info!(
                                program = kind.program(),
                                iface = %ifname,
                                "adopted the link of a previous agent (program replaced)"
                            );
                            continue;
                        }
                        Err(e) => tracing::warn!(
                            program = kind.program(),
                            iface = %ifname,
                            "replacing the program of the pinned link failed ({e}): attaching anew"
                        ),
                    }
                }
                drop(fd);
                if let Some(link) = take_pinned_link(&path)? {
                    detach_link(&path, &link);
                }
                tracing::info!(
                    program = kind.program(),
                    iface = %ifname,
                    "detached a previous agent's link (interface gone or not asked for)"
                );
            }
        }
        Ok(())
    }

    fn hook_mut(&mut self, kind: HookKind) -> &mut IfaceHook {
        &mut self.hooks[kind.index()]
    }

    fn hook(&self, kind: HookKind) -> &IfaceHook {
        &self.hooks[kind.index()]
    }

    fn program_fd(&self, kind: HookKind) -> Result<std::os::fd::RawFd, DatapathError> {
        let name = kind.program();
        let program = self.ebpf.program(name).ok_or_else(|| kind.missing())?;
        let fd = program.fd().map_err(program_err(name))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Attaches the per-packet programs to the wanted interfaces that do not have them yet and
    /// drops the links of interfaces that are gone. Called at start and every second; errors
    /// are logged (once per interface), never fatal.
    pub fn sync_interfaces(&mut self) {
        if !self.attached || !self.watches_interfaces() {
            return;
        }
        let all = match interfaces::list() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("listing network interfaces: {e}");
                return;
            }
        };
        for kind in HookKind::ALL {
            self.sync_hook(kind, &all);
        }
    }

    fn sync_hook(&mut self, kind: HookKind, all: &BTreeMap<String, u32>) {
        let links_dir = self.pin_dir.join(LINKS_DIR);
        let hook = self.hook_mut(kind);
        if hook.patterns.is_empty() {
            return;
        }
        let wanted = interfaces::select(all, &hook.patterns);
        hook.failed
            .retain(|name, idx| wanted.get(name) == Some(idx));
        let diff = interfaces::diff(&hook.attached, &wanted);
        for name in diff.detach {
            hook.attached.remove(&name);
            let path = links_dir.join(interfaces::pin_name(kind.pin_prefix(), &name));
            match take_pinned_link(&path) {
                Ok(Some(link)) => detach_link(&path, &link),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
            tracing::info!(program = kind.program(), iface = %name, "interface gone: link dropped");
        }
        for (name, ifindex) in diff.attach {
            let hook = self.hook_mut(kind);
            if hook.failed.get(&name) == Some(&ifindex) {
                continue;
            }
            match self.attach_iface(kind, &name, ifindex, &links_dir) {
                Ok(mode) => {
                    self.hook_mut(kind).attached.insert(name.clone(), ifindex);
                    tracing::info!(program = kind.program(), iface = %name, ifindex, mode, "attached");
                }
                Err(e) => {
                    self.hook_mut(kind).failed.insert(name.clone(), ifindex);
                    tracing::warn!(
                        program = kind.program(),
                        iface = %name,
                        "attaching failed (retried if the interface is re-created): {}",
                        error_chain(&e)
                    );
                }
            }
        }
    }

    /// Attaches one per-packet program to `ifindex` and pins the link; returns the mode.
    fn attach_iface(
        &mut self,
        kind: HookKind,
        ifname: &str,
        ifindex: u32,
        links_dir: &Path,
    ) -> Result<&'static str, DatapathError> {
        let name = kind.program();
        let prog_err = program_err(name);
        let path = links_dir.join(interfaces::pin_name(kind.pin_prefix(), ifname));
        // A pin left for an earlier interface of this name.
        if let Some(stale) = take_pinned_link(&path)? {
            detach_link(&path, &stale);
        }
        let use_tcx = self.tcx;
        let program = self.ebpf.program_mut(name).ok_or_else(|| kind.missing())?;
        let (link, mode): (Option<FdLink>, &'static str) = match kind.tc_attach() {
            Some(attach_type) => {
                let p: &mut SchedClassifier = program.try_into().map_err(prog_err)?;
                let tcx = TcAttach::Tcx {
                    attach_type,
                    order: LinkOrder::default(),
                };
                // Without TCX (probed at load; warned once there) straight to netlink.
                let tcx_result = use_tcx.then(|| p.attach(ifindex, tcx));
                match tcx_result {
                    Some(Ok(id)) => {
                        let link = p.take_link(id).map_err(prog_err)?;
                        let link = FdLink::try_from(link)
                            .map_err(|e| prog_err(aya::programs::ProgramError::from(e)))?;
                        (Some(link), "tcx")
                    }
                    tcx_failed => {
                        if let Some(Err(tcx_err)) = tcx_failed {
                            tracing::info!(
                                iface = ifname,
                                "TCX attach failed ({}): using netlink with a clsact qdisc",
                                error_chain(&tcx_err)
                            );
                        }
                        match tc::qdisc_add_clsact(ifindex) {
                            Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
                            // The qdisc exists (tc_ingress created it before tc_egress): the
                            // errno is only in the error's source.
                            Err(e) if error_chain(&e).contains("File exists") => {}
                            Err(e) => {
                                return Err(prog_err(aya::programs::ProgramError::from(e)));
                            }
                        }
                        // A netlink filter cannot be pinned: replace a previous agent's.
                        let _none = tc::qdisc_detach_program(ifindex, attach_type.into(), name);
                        let nl = TcAttach::Netlink {
                            parent: attach_type.into(),
                            options: tc::NlOptions::default(),
                        };
                        let id = p.attach(ifindex, nl).map_err(prog_err)?;
                        let link = p.take_link(id).map_err(prog_err)?;
                        // Dropping the link would remove the filter; it must outlive us.
                        std::mem::forget(link);
                        (None, "netlink clsact (not pinned)")
                    }
                }
            }
            None => {
                let p: &mut Xdp = program.try_into().map_err(prog_err)?;
                let (id, mode) = match p.attach(ifindex, XdpMode::Driver) {
                    Ok(id) => (id, "native (driver)"),
                    Err(native_err) => {
                        tracing::info!(
                            iface = ifname,
                            "native XDP failed ({}): using generic (SKB) mode",
                            error_chain(&native_err)
                        );
                        (
                            p.attach(ifindex, XdpMode::Skb).map_err(prog_err)?,
                            "generic (SKB)",
                        )
                    }
                };
                let link = p.take_link(id).map_err(prog_err)?;
                match FdLink::try_from(link) {
                    Ok(link) => (Some(link), mode),
                    // A netlink attachment (kernel < 5.9): stays after we go, cannot be pinned.
                    Err(_) => (None, "netlink (not pinned)"),
                }
            }
        };
        if let Some(link) = link {
            link.pin(&path).map_err(|source| DatapathError::PinLink {
                name: format!("{name} on {ifname}"),
                path: path.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(mode)
    }

    /// Starts forwarding the programs' aya-log records into the `log` crate (the agent's
    /// tracing subscriber picks them up) on the current tokio runtime. Record targets are the
    /// eBPF modules, e.g. `clusterip::lb`.
    pub fn spawn_log_forwarder(&mut self) -> Result<(), DatapathError> {
        if self.log_task.is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current()?;
        let logger = EbpfLogger::init(&mut self.ebpf).map_err(Box::new)?;
        let _guard = runtime.enter();
        // SAFETY: the logger owns the ring buffer's fd; it stays open and the same for as long
        // as the AsyncFd owns the logger.
        let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|e| DatapathError::Io {
                path: PathBuf::from("AYA_LOGS ring buffer"),
                source: e.into_parts().1,
            })?;
        self.log_task = Some(runtime.spawn(async move {
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::warn!("eBPF log forwarder stopped: {e}");
                        return;
                    }
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }));
        Ok(())
    }
}

/// The error of a failed load: when map creation ran out of memory inside a memory cgroup
/// with a limit, say so (the usual cause in a pod), else the generic one.
fn load_error(cfg: &DatapathConfig, source: aya::EbpfError) -> DatapathError {
    let enomem = error_chain(&source).contains("Cannot allocate memory")
        || std::error::Error::source(&source).is_some_and(|s| {
            s.downcast_ref::<io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ENOMEM))
        });
    if enomem && let Some(limit) = super::memcg::describe_limit() {
        return DatapathError::MemoryLimit {
            source: Box::new(source),
            limit,
            need: Mib(cfg.sizing.fixed_bytes()),
        };
    }
    DatapathError::Load {
        dir: cfg.bpffs.clone(),
        source: Box::new(source),
    }
}

/// What the socket programs need and the kernel lacks, for [`DatapathError::NoSocketLb`].
fn socket_lb_missing(f: &crate::datapath::probe::Features) -> String {
    let mut missing: Vec<String> = Vec::new();
    if !f.bpf_syscall {
        missing.push("the bpf() syscall".into());
    }
    if !f.cgroup2 {
        missing.push("a cgroup v2 mount".into());
    }
    if !f.missing_sock_addr_hooks.is_empty() {
        missing.push(format!(
            "the cgroup sock_addr hooks {}",
            f.missing_sock_addr_hooks.join(", ")
        ));
    }
    if !f.socket_cookie {
        missing.push("bpf_get_socket_cookie in sock_addr hooks".into());
    }
    if !f.netns_cookie {
        missing.push("bpf_get_netns_cookie in sock_addr hooks (5.7)".into());
    }
    if !f.lru_hash {
        missing.push("LRU hash maps".into());
    }
    format!("missing {}", missing.join("; "))
}

/// Wraps a program error with the program's name.
/// The socket program `name` of the object.
fn socket_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(program_err(name))
}

fn program_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> DatapathError + Copy {
    move |source| DatapathError::Program {
        name,
        source: Box::new(source),
    }
}

/// An error with its sources, "a: b: c" (aya's errors keep the errno in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// Attaches the 8 socket programs (loaded by [`Datapath::load`]) to `cgroup` and pins their
/// links, replacing a previous agent's make-before-break.
fn attach_socket_programs(
    ebpf: &mut Ebpf,
    cgroup_path: &Path,
    cgroup: &File,
    links_dir: &Path,
    links: &mut Vec<FdLink>,
) -> Result<(), DatapathError> {
    for name in PROGRAMS {
        let prog_err = program_err(name);
        let program = socket_program(ebpf, name)?;
        let attach_err = |source| DatapathError::Attach {
            name,
            cgroup: cgroup_path.to_path_buf(),
            source: Box::new(source),
        };
        let link_id = program.attach(cgroup, ATTACH_MODE).map_err(attach_err)?;
        let link = program.take_link(link_id).map_err(prog_err)?;
        let link =
            FdLink::try_from(link).map_err(|e| prog_err(aya::programs::ProgramError::from(e)))?;
        links.push(pin_replacing(name, link, links_dir)?);
        tracing::debug!(program = name, cgroup = %cgroup_path.display(), "attached");
    }
    Ok(())
}

/// Pins `link` at `<links_dir>/<name>`, replacing (and detaching) a link pinned there before.
fn pin_replacing(
    name: &'static str,
    link: FdLink,
    links_dir: &Path,
) -> Result<FdLink, DatapathError> {
    let path = links_dir.join(name);
    // bpffs refuses names with a '.' (EPERM), hence no dot-file.
    let tmp = links_dir.join(format!("{name}_new"));
    // A temporary pin left by an agent that died between pin and rename.
    if let Some(stale) = take_pinned_link(&tmp)? {
        detach_link(&tmp, &stale);
    }
    // Opened before the rename: afterwards the old link is reachable only through this fd.
    let old = open_pin(&path).map_err(|e| DatapathError::io(&path, e))?;
    let pinned = link.pin(&tmp).map_err(|source| DatapathError::PinLink {
        name: name.to_string(),
        path: tmp.clone(),
        source: Box::new(source),
    })?;
    fs::rename(&tmp, &path).map_err(|e| DatapathError::io(&path, e))?;
    if let Some(old) = old {
        detach_link(&path, &old);
        tracing::info!(program = name, "replaced the link of a previous agent");
    }
    Ok(FdLink::from(pinned))
}

/// Detaches everything clusterip pinned in `bpffs`: every link pinned in `<bpffs>/links`
/// (unpinned and detached), the map pins, then the directories. Not an error if nothing is
/// there.
pub fn cleanup(bpffs: &Path) -> Result<(), DatapathError> {
    let links_dir = bpffs.join(LINKS_DIR);
    match fs::read_dir(&links_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| DatapathError::io(&links_dir, e))?;
                let path = entry.path();
                if let Some(link) = take_pinned_link(&path)? {
                    detach_link(&path, &link);
                    tracing::debug!(link = %path.display(), "detached");
                }
            }
            remove_dir_if_exists(&links_dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DatapathError::io(&links_dir, e)),
    }
    for name in map_names::ALL {
        // `<name>_old`: a map being migrated by an agent that did not finish.
        for pin in [name.to_string(), format!("{name}{}", migrate::OLD_SUFFIX)] {
            let path = bpffs.join(pin);
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!(map = %path.display(), "unpinned"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(DatapathError::io(&path, e)),
            }
        }
    }
    remove_dir_if_exists(bpffs)
}

/// The cgroup v2 mount point, from /proc/mounts (e.g. /sys/fs/cgroup/unified).
pub fn default_cgroup_root() -> Result<PathBuf, DatapathError> {
    let mounts_path = Path::new("/proc/mounts");
    let mounts = fs::read_to_string(mounts_path).map_err(|e| DatapathError::io(mounts_path, e))?;
    cgroup2_mount(&mounts).ok_or(DatapathError::NoCgroup2)
}

fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let octal = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
                .map(|d| d.iter().fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0')));
            if let Some(v) = octal.and_then(|v| u8::try_from(v).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn remove_dir_if_exists(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io(path, e)),
    }
}

fn ensure_bpffs() -> Result<(), DatapathError> {
    mount_bpffs(Path::new(BPFFS_ROOT)).map(|_| ())
}

/// What [`mount_bpffs`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpffsMount {
    /// `dir` already was on a bpf filesystem.
    Present,
    /// A bpf filesystem was mounted at `dir`.
    Mounted,
}

/// Mounts a bpf filesystem at `dir` (created if missing) unless `dir` is on one already.
///
/// Decided by the filesystem type (statfs), not by `dir` being a mount point: in a container
/// a hostPath volume is a mount point whether or not the host mounted bpffs there, which is
/// why `mountpoint -q /sys/fs/bpf || mount ...` never mounted anything in a pod.
pub fn mount_bpffs(dir: &Path) -> Result<BpffsMount, DatapathError> {
    if is_bpffs(dir).unwrap_or(false) {
        return Ok(BpffsMount::Present);
    }
    let failed = |source| DatapathError::MountBpffs {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(failed)?;
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (src, fstype) = (c("bpf").map_err(failed)?, c("bpf").map_err(failed)?);
    let target = path_cstring(dir).map_err(failed)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // A mount that "succeeded" but left something else visible at `dir` (mounted over by
    // another mount) must not pass for a bpffs.
    if !is_bpffs(dir).map_err(failed)? {
        return Err(DatapathError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    tracing::info!("mounted bpffs at {}", dir.display());
    Ok(BpffsMount::Mounted)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = path_cstring(path)?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

pub(super) fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("sysfs /sys sysfs rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(
            unescape_mount_path(r"/mnt/with\040space"),
            "/mnt/with space"
        );
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/trailing\"), r"/trailing\");
    }

    #[test]
    fn missing_packet_program_names_it() {
        let msg = HookKind::Tc.missing().to_string();
        assert!(
            msg.contains("--tc-iface") && msg.contains("tc_ingress"),
            "{msg}"
        );
    }

    #[test]
    fn error_chain_keeps_the_errno() {
        let e = DatapathError::Io {
            path: PathBuf::from("/x"),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(error_chain(&e).contains("busy"), "{}", error_chain(&e));
    }

    #[test]
    fn empty_object_gives_a_build_hint() {
        let msg = DatapathError::NoObject.to_string();
        assert!(msg.contains("cargo xtask setup"), "{msg}");
    }

    #[test]
    fn cleanup_of_a_missing_dir_is_fine() {
        let dir = std::env::temp_dir().join(format!("cip-cleanup-missing-{}", std::process::id()));
        assert!(!dir.exists());
        cleanup(&dir).expect("nothing to clean is not an error");
    }
}
