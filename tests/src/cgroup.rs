//! A child cgroup v2 for the agent to attach to and the clients to run in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::env::CGROUP2;

/// `/sys/fs/cgroup/unified/cip-test-<uniq>`; on drop every process in it is killed and the
/// directory removed.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Result<Self> {
        let path = Path::new(CGROUP2).join(format!("cip-test-{}", crate::uniq()));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id (the inode of its directory), as `bpftool` reports it.
    pub fn id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(&self.path)?.ino())
    }

    pub fn procs(&self) -> Vec<i32> {
        procs_of(&self.path)
    }
}

/// The processes in the cgroup at `path`.
pub(crate) fn procs_of(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes a test's cgroup at `path`, killing what still runs in it; gives up (and says so)
/// after 10 s.
pub(crate) fn remove_killing(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = procs_of(path);
        if procs.is_empty() {
            match std::fs::remove_dir(path) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("cleanup: rmdir {}: {e}", path.display());
                    return;
                }
                Err(_) => {}
            }
        }
        for pid in procs {
            // SAFETY: plain syscall; the pid is in our test cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if Instant::now() > deadline {
            eprintln!("cleanup: {} still not empty", path.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_killing(&self.path);
    }
}
