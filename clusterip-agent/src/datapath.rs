//! Loads the clusterip eBPF programs, attaches them to a cgroup and pins everything.
//!
//! Layout under the pin directory (`--bpffs`, default `/sys/fs/bpf/clusterip`):
//! - `<dir>/<MAP>` for every map in [`clusterip_common::map_names::ALL`] (the programs declare
//!   them `pin_by_name`; an existing pin is adopted, so the table and per-socket state survive
//!   an agent restart);
//! - `<dir>/links/<program>` for the eight cgroup links. A pinned link keeps its program
//!   attached after the agent exits (or is killed); `cleanup` removes them.
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
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use aya_log::EbpfLogger;
use clusterip_common::map_names;
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

/// Sub-directory of the pin directory holding the link pins.
pub const LINKS_DIR: &str = "links";

/// Where bpffs is expected (and mounted when missing).
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The global of aya-log-ebpf that holds the enabled log level; patched before load.
const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

const FIX_PRIVILEGES: &str = "run the agent as root (it needs CAP_BPF, CAP_NET_ADMIN and \
                              CAP_SYS_ADMIN) on a kernel with BPF and cgroup v2";

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Pin directory for maps and links (on bpffs).
    pub bpffs: PathBuf,
    /// cgroup v2 directory the programs are attached to.
    pub cgroup: PathBuf,
    /// Enables the programs' aya-log `debug!` records (otherwise the verifier removes them).
    pub debug_logs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this clusterip-agent was built without the eBPF object: build it with \
         `cargo xtask build-ebpf` (or start it with `cargo xtask run`)"
    )]
    NoObject,
    #[error("{path}: not permitted ({source}): {FIX_PRIVILEGES}")]
    NotPermitted { path: PathBuf, source: io::Error },
    #[error(
        "/sys/fs/bpf is not a bpf filesystem and mounting one failed ({source}): \
         mount it with `mount -t bpf bpf /sys/fs/bpf`, as root"
    )]
    MountBpffs { source: io::Error },
    #[error("{path} is not on a bpf filesystem: choose a pin directory under /sys/fs/bpf")]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "loading the eBPF object (maps pinned in {dir}) failed: {source}. Fix: {FIX_PRIVILEGES}; \
         if maps pinned there by another clusterip version have a different layout, remove \
         them with `clusterip-agent cleanup --bpffs {dir}`",
        dir = dir.display()
    )]
    Load {
        dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no program {0}: rebuild it with `cargo xtask build-ebpf`")]
    MissingProgram(&'static str),
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
        name: &'static str,
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("no cgroup2 mount in /proc/mounts: mount cgroup v2 or pass --cgroup DIR")]
    NoCgroup2,
    #[error("forwarding eBPF logs: {0}")]
    Log(#[from] Box<aya_log::Error>),
    #[error("forwarding eBPF logs needs a tokio runtime: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
}

impl DatapathError {
    fn io(path: &Path, source: io::Error) -> Self {
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
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("links", &self.links.len())
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
    /// Ensures /sys/fs/bpf is bpffs (mounts it if missing), creates `cfg.bpffs`, loads the
    /// object with its maps pinned in (or adopted from) `cfg.bpffs`, sets the programs' log
    /// level, attaches the 8 programs to `cfg.cgroup` (as BPF links, which are multi-program
    /// attachments) and pins each link at `<bpffs>/links/<program>`, replacing a previous
    /// agent's links make-before-break.
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
        let cgroup = File::open(&cfg.cgroup).map_err(|e| DatapathError::io(&cfg.cgroup, e))?;

        let level: u8 = if cfg.debug_logs {
            aya_log::Level::Debug as u8
        } else {
            0 /* off */
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&cfg.bpffs)
            .override_global(LOG_LEVEL_GLOBAL, &level, true)
            .load(object)
            .map_err(|source| DatapathError::Load {
                dir: cfg.bpffs.clone(),
                source: Box::new(source),
            })?;

        let mut links = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let prog_err = |source| DatapathError::Program {
                name,
                source: Box::new(source),
            };
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(prog_err)?;
            // A verifier rejection's message carries the verifier log.
            program.load().map_err(prog_err)?;
            let attach_err = |source| DatapathError::Attach {
                name,
                cgroup: cfg.cgroup.clone(),
                source: Box::new(source),
            };
            let link_id = program.attach(&cgroup, ATTACH_MODE).map_err(attach_err)?;
            let link = program.take_link(link_id).map_err(prog_err)?;
            let link = FdLink::try_from(link)
                .map_err(|e| prog_err(aya::programs::ProgramError::from(e)))?;
            links.push(pin_replacing(name, link, &links_dir)?);
            tracing::debug!(program = name, cgroup = %cfg.cgroup.display(), "attached");
        }
        tracing::info!(
            bpffs = %cfg.bpffs.display(),
            cgroup = %cfg.cgroup.display(),
            "eBPF datapath attached"
        );
        Ok(Self {
            ebpf,
            links,
            pin_dir: cfg.bpffs.clone(),
            log_task: None,
        })
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

    /// The pin directory this datapath uses.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
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
        name,
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
        let path = bpffs.join(name);
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(map = %path.display(), "unpinned"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::io(&path, e)),
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
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root).unwrap_or(false) {
        return Ok(());
    }
    fs::create_dir_all(root).map_err(|source| DatapathError::MountBpffs { source })?;
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (src, target, fstype) = (
        c("bpf").map_err(|source| DatapathError::MountBpffs { source })?,
        c(BPFFS_ROOT).map_err(|source| DatapathError::MountBpffs { source })?,
        c("bpf").map_err(|source| DatapathError::MountBpffs { source })?,
    );
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
        return Err(DatapathError::MountBpffs {
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted bpffs at {BPFFS_ROOT}");
    Ok(())
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

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

// Minimal bpf(2) wrappers for what aya does not expose: opening a pinned link as a raw fd and
// BPF_LINK_DETACH, which detaches a link even while another process still holds it.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: `attr` points at a live #[repr(C)] struct of `size` bytes for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens whatever is pinned at `path`; `Ok(None)` when nothing is.
fn open_pin(path: &Path) -> io::Result<Option<OwnedFd>> {
    let c_path = path_cstring(path)?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..Default::default()
    };
    match bpf(
        BPF_OBJ_GET,
        (&raw const attr).cast(),
        size_of::<ObjGetAttr>(),
    ) {
        // SAFETY: the kernel returned a new fd that we now own.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens and unpins the link at `path`; `Ok(None)` when nothing is pinned there.
fn take_pinned_link(path: &Path) -> Result<Option<OwnedFd>, DatapathError> {
    let Some(fd) = open_pin(path).map_err(|e| DatapathError::io(path, e))? else {
        return Ok(None);
    };
    match fs::remove_file(path) {
        Ok(()) => Ok(Some(fd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(fd)),
        Err(e) => Err(DatapathError::io(path, e)),
    }
}

/// Detaches the link behind `fd` (it was pinned at `path`). Failures are logged: the link is
/// unpinned already, so it goes away once the last holder closes it.
fn detach_link(path: &Path, fd: &OwnedFd) {
    let attr = LinkDetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    if let Err(e) = bpf(
        BPF_LINK_DETACH,
        (&raw const attr).cast(),
        size_of::<LinkDetachAttr>(),
    ) {
        tracing::warn!(link = %path.display(), "BPF_LINK_DETACH failed: {e}");
    }
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
    fn empty_object_gives_a_build_hint() {
        let msg = DatapathError::NoObject.to_string();
        assert!(msg.contains("cargo xtask build-ebpf"), "{msg}");
    }

    #[test]
    fn cleanup_of_a_missing_dir_is_fine() {
        let dir = std::env::temp_dir().join(format!("cip-cleanup-missing-{}", std::process::id()));
        assert!(!dir.exists());
        cleanup(&dir).expect("nothing to clean is not an error");
    }
}
