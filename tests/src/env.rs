//! Prerequisites of the privileged tests and the skip/fail decision.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

pub const BPFFS: &str = "/sys/fs/bpf";
pub const CGROUP2: &str = "/sys/fs/cgroup/unified";
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

/// What a privileged test needs from its environment.
#[derive(Clone, Debug)]
pub struct Env {
    /// `clusterip-agent` with the eBPF object embedded (`CLUSTERIP_AGENT_BIN`).
    pub agent_bin: PathBuf,
    pub bins: Bins,
}

/// The helper binaries of this crate. `CARGO_BIN_EXE_*` only exists when compiling integration
/// tests, so the tests fill this in with [`crate::bins!`].
#[derive(Clone, Copy, Debug)]
pub struct Bins {
    pub backend: &'static str,
    pub client: &'static str,
    /// `cip-runc`: runc behind a clamp, podman's runtime in the image test.
    pub runc_clamp: &'static str,
}

/// [`Bins`] of this crate; expand it in an integration test.
#[macro_export]
macro_rules! bins {
    () => {
        $crate::env::Bins {
            backend: env!("CARGO_BIN_EXE_cip-backend"),
            client: env!("CARGO_BIN_EXE_cip-client"),
            runc_clamp: env!("CARGO_BIN_EXE_cip-runc"),
        }
    };
}

/// Checks everything a privileged test needs. Missing something: panics with the reason when
/// `CLUSTERIP_E2E_REQUIRED=1`, else prints `SKIP <test>: <reason>` to stderr and returns None.
pub fn prerequisites(test: &str, bins: Bins) -> Option<Env> {
    decide(test, check(bins))
}

/// Like [`prerequisites`] for harness self-tests that need root, netns and cgroups but no
/// agent: `agent_bin` is then whatever `CLUSTERIP_AGENT_BIN` says (possibly nothing).
pub fn prerequisites_without_agent(test: &str, bins: Bins) -> Option<Env> {
    decide(
        test,
        check_system().map(|()| Env {
            agent_bin: agent_bin_var().unwrap_or_default(),
            bins,
        }),
    )
}

/// What the image test needs besides [`Env`]: the image archive `cargo xtask image` wrote
/// (`CLUSTERIP_IMAGE`, set by `cargo xtask test`), podman and runc to run it.
#[derive(Clone, Debug)]
pub struct ImageEnv {
    pub env: Env,
    pub archive: PathBuf,
}

/// [`prerequisites`] plus the image's; the same skip/fail decision.
pub fn image_prerequisites(test: &str, bins: Bins) -> Option<ImageEnv> {
    decide(
        test,
        check(bins).and_then(|env| {
            let archive = std::env::var_os("CLUSTERIP_IMAGE")
                .map(PathBuf::from)
                .ok_or(
                    "CLUSTERIP_IMAGE is not set (`cargo xtask test` builds the image and sets it; \
                 or `cargo xtask image`)",
                )?;
            if !archive.is_file() {
                return Err(format!(
                    "CLUSTERIP_IMAGE={} does not exist",
                    archive.display()
                ));
            }
            for tool in ["podman", "runc"] {
                let ok = Command::new(tool)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err(format!(
                        "`{tool}` is not installed (`cargo xtask setup` installs it)"
                    ));
                }
            }
            Ok(ImageEnv { env, archive })
        }),
    )
}

fn agent_bin_var() -> Option<PathBuf> {
    std::env::var_os("CLUSTERIP_AGENT_BIN").map(PathBuf::from)
}

/// `checked`, or the skip (None) / panic (`CLUSTERIP_E2E_REQUIRED=1`) for its reason.
pub(crate) fn decide<T>(test: &str, checked: Result<T, String>) -> Option<T> {
    match checked {
        Ok(env) => Some(env),
        Err(reason) => {
            if std::env::var("CLUSTERIP_E2E_REQUIRED").as_deref() == Ok("1") {
                panic!("{test}: prerequisite missing (CLUSTERIP_E2E_REQUIRED=1): {reason}");
            }
            eprintln!("SKIP {test}: {reason}");
            None
        }
    }
}

fn check(bins: Bins) -> Result<Env, String> {
    check_system()?;
    let Some(agent_bin) = agent_bin_var() else {
        return Err("CLUSTERIP_AGENT_BIN is not set (run `cargo xtask test`)".into());
    };
    if !agent_bin.is_file() {
        return Err(format!(
            "CLUSTERIP_AGENT_BIN={} does not exist",
            agent_bin.display()
        ));
    }
    Ok(Env { agent_bin, bins })
}

fn check_system() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    for tool in ["ip", "bpftool"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    match fs_magic(Path::new(CGROUP2)) {
        Ok(CGROUP2_SUPER_MAGIC) => {}
        Ok(m) => return Err(format!("{CGROUP2} is not cgroup2 (magic {m:#x})")),
        Err(e) => return Err(format!("{CGROUP2}: {e}")),
    }
    ensure_bpffs()
}

pub(crate) fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: zeroed statfs is valid; c is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there. Serialized within the process by a mutex
/// and across test processes by an flock, so two tests never stack two mounts.
pub(crate) fn ensure_bpffs() -> Result<(), String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if fs_magic(Path::new(BPFFS)).ok() == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let lock = File::create("/run/clusterip-tests-bpffs.lock")
        .map_err(|e| format!("/run/clusterip-tests-bpffs.lock: {e}"))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("flock: {}", std::io::Error::last_os_error()));
    }
    if fs_magic(Path::new(BPFFS)).ok() != Some(BPF_FS_MAGIC) {
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf", BPFFS])
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !status.success() {
            return Err(format!("`mount -t bpf bpf {BPFFS}` failed: {status}"));
        }
    }
    match fs_magic(Path::new(BPFFS)) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        other => Err(format!(
            "{BPFFS} is not a bpffs after mounting it: {other:?}"
        )),
    }
}
