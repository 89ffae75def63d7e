//! The agent's OCI image under a container runtime (tests/tests/image.rs).
//!
//! The runtime is podman (Debian's 4.3) with runc (1.1) behind `cip-runc`, because that is
//! what starts containers on these machines, where root's capability bounding set lacks
//! CAP_SYS_RESOURCE and cgroups are hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified):
//! - crun, podman's default runtime, is refused: "setrlimit RLIMIT_NOFILE: Operation not
//!   permitted", and "cgroups in hybrid mode not supported".
//! - podman with plain runc fails on podman's own spec: "runc create failed: unable to start
//!   container process: error during container init: error setting rlimits for ready process:
//!   error setting rlimit type 7: operation not permitted" (it asks RLIMIT_NOFILE 1048576).
//!   `--ulimit` does not help: `--ulimit nofile=20000:20000 --ulimit nproc=96367:96367` (the
//!   shell's limits) fails with "rlimit type 6", podman's runtime having lower ones.
//! - podman with `--runtime cip-runc` (runc after clamping the spec to what the caller may
//!   set: src/bin/cip-runc.rs) starts them.
//!
//! So the image test needs no fallback that unpacks the root filesystem and runs it under
//! unshare: it runs the image as an image, entrypoint and all.
//!
//! [`Podman`] keeps everything of its own: a store (vfs: plain directories, no overlay mounts)
//! under the temp dir and its containers' cgroups under `cip-podman-<uniq>` in each hierarchy,
//! all removed on drop; nothing touches the machine's container storage or the root cgroup.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::agent::LineLog;

/// Where the cgroup hierarchies are mounted (v1 controllers and `unified`).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A podman of the test's own (see the module doc); removed with everything it made on drop.
pub struct Podman {
    dir: PathBuf,
    runtime: PathBuf,
    /// Name of the cgroup its containers (and their conmon) go under, in every hierarchy.
    cgroup_parent: String,
}

impl Podman {
    /// A fresh store under the temp dir, with `runtime` (`cip-runc`) as the OCI runtime.
    pub fn new(runtime: &Path) -> Result<Self> {
        let name = format!("cip-podman-{}", crate::uniq());
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Self {
            dir,
            runtime: runtime.to_owned(),
            cgroup_parent: name,
        })
    }

    /// `podman` with this store and runtime.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs"])
            // No systemd here: podman writes the cgroups itself, under --cgroup-parent.
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .arg("--runtime")
            .arg(&self.runtime);
        cmd
    }

    /// `podman ARGS`: its stdout; fails with its stderr.
    pub fn output(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running podman")?;
        if !out.status.success() {
            bail!(
                "podman {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman load`: the image's name in this store (`localhost/clusterip-agent:0.1.0`).
    pub fn load(&self, archive: &Path) -> Result<String> {
        let path = archive.to_str().context("image path")?;
        let out = self.output(&["load", "--quiet", "--input", path])?;
        out.lines()
            .find_map(|l| l.strip_prefix("Loaded image:"))
            .and_then(|names| names.split(',').next())
            .map(|name| name.trim().to_string())
            .with_context(|| format!("`podman load` printed {out:?}"))
    }

    /// `podman run --name NAME --cgroup-parent ... OPTIONS IMAGE ARGS` (attached).
    fn run_command(&self, name: &str, options: &[String], image: &str, args: &[String]) -> Command {
        let mut cmd = self.command();
        cmd.args(["run", "--name", name])
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.cgroup_parent))
            .args(options)
            .arg(image)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a container to its end (at most `timeout`) and removes it.
    pub fn run_to_end(
        &self,
        name: &str,
        options: &[String],
        image: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<Finished> {
        let mut container = self.start(name, options, image, args)?;
        let status = container.wait(timeout)?;
        Ok(Finished {
            status,
            lines: container.lines(),
        })
    }

    /// Starts a container whose output is captured line by line (stdout and stderr
    /// interleaved, each line tagged with its stream); removed on drop.
    pub fn start(
        &self,
        name: &str,
        options: &[String],
        image: &str,
        args: &[String],
    ) -> Result<Container<'_>> {
        let mut child = self
            .run_command(name, options, image, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning podman run")?;
        let log = Arc::new(LineLog::default());
        log.capture(child.stdout.take().context("stdout")?, "out".into());
        log.capture(child.stderr.take().context("stderr")?, "err".into());
        Ok(Container {
            podman: self,
            name: name.to_string(),
            child,
            log,
        })
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their cgroups, mounts and conmon go with them), then images.
        for args in [["rm", "--all", "--force"], ["rmi", "--all", "--force"]] {
            if let Err(e) = self.output(&args) {
                eprintln!("cleanup: {e:#}");
            }
        }
        // Whatever podman left mounted in its store (a container's /dev/shm).
        unmount_below(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: rm -r {}: {e}", self.dir.display());
        }
        remove_cgroup_everywhere(&self.cgroup_parent);
    }
}

/// A container [`Podman::run_to_end`] ran.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// What it printed, each line tagged `out:` or `err:`.
    pub lines: Vec<String>,
}

/// A container started by [`Podman::start`], its `podman run` attached; removed on drop, its
/// output then printed to stderr.
pub struct Container<'p> {
    podman: &'p Podman,
    pub name: String,
    child: Child,
    log: Arc<LineLog>,
}

impl Container<'_> {
    /// Waits for a line (since the start) containing every one of `patterns`; fails early if
    /// the container ends.
    pub fn wait_line(&mut self, patterns: &[&str], timeout: Duration) -> Result<String> {
        let log = Arc::clone(&self.log);
        log.wait_line(0, patterns, timeout, || {
            self.child.try_wait().ok().flatten()
        })
        .with_context(|| format!("container {}", self.name))
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Waits for the container to end: the status of its `podman run`, which is the
    /// container's own.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "container {} still running after {timeout:?}; log:\n{}",
                    self.name,
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as the kubelet stops a container (`podman stop`, SIGKILL after `grace`), then
    /// the container's exit code.
    pub fn stop(&mut self, grace: Duration) -> Result<i64> {
        let grace_s = grace.as_secs().to_string();
        self.podman
            .output(&["stop", "--time", &grace_s, &self.name])?;
        self.wait(grace + Duration::from_secs(10))?;
        let code = self.podman.output(&[
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.ExitCode}}",
            &self.name,
        ])?;
        code.trim()
            .parse()
            .with_context(|| format!("exit code {code:?}"))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.podman.output(&["rm", "--force", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(20));
        eprintln!("----- container {} output -----", self.name);
        for line in self.lines() {
            eprintln!("{line}");
        }
        eprintln!("------------------------");
    }
}

/// A directory bind-mounted on itself and made a shared mount: a stand-in for a node's
/// /sys/fs/bpf, which systemd makes shared, so that a container's Bidirectional volume can
/// propagate a mount to it, without changing the propagation of this machine's real
/// /sys/fs/bpf (private here, like every mount). On drop everything mounted on it is
/// unmounted and the directory removed.
pub struct SharedMount {
    dir: PathBuf,
}

impl SharedMount {
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("cip-shared-{}", crate::uniq()));
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let me = Self { dir };
        mount(&me.dir, Some(&me.dir), libc::MS_BIND).context("bind-mounting it on itself")?;
        mount(&me.dir, None, libc::MS_SHARED).context("making it a shared mount")?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        unmount_stack(&self.dir);
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("cleanup: rmdir {}: {e}", self.dir.display());
        }
    }
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path with a NUL")
}

/// `mount --bind SOURCE TARGET` (`source` given) or a propagation change of `target`.
fn mount(target: &Path, source: Option<&Path>, flags: libc::c_ulong) -> Result<()> {
    let target_c = cstring(target)?;
    let source_c = source.map(cstring).transpose()?;
    // SAFETY: NUL-terminated paths that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            source_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mount {}", target.display()));
    }
    Ok(())
}

/// Unmounts every mount stacked on `dir` (lazily: nothing can keep one busy).
fn unmount_stack(dir: &Path) {
    let Ok(c) = cstring(dir) else { return };
    for _ in 0..16 {
        // SAFETY: a NUL-terminated path; EINVAL once `dir` is no longer a mount point.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return;
        }
    }
    eprintln!("cleanup: {} still mounted after 16 unmounts", dir.display());
}

/// Unmounts whatever is mounted at or below `dir`, deepest first (/proc/self/mountinfo).
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        unmount_stack(&point);
    }
}

/// Removes the cgroup `name` (a child of each hierarchy's root, made by podman for
/// `--cgroup-parent`) and its empty descendants, in every hierarchy. Only that subtree.
fn remove_cgroup_everywhere(name: &str) {
    let Ok(hierarchies) = fs::read_dir(CGROUP_ROOT) else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let top = hierarchy.path().join(name);
        if top.is_dir() {
            remove_cgroup_tree(&top);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            // Only directories are child cgroups; the rest are the controllers' files.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("cleanup: rmdir {}: {e}", dir.display());
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    let magic = crate::env::fs_magic(path).with_context(|| path.display().to_string())?;
    Ok(magic == crate::env::BPF_FS_MAGIC)
}
