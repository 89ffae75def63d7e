//! The agent's pin directory in bpffs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{BPFFS, Env};

/// `/sys/fs/bpf/cip-test-<uniq>` (created by the agent). On drop runs
/// `clusterip-agent cleanup --bpffs DIR`, then removes whatever is left.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    agent_bin: PathBuf,
}

impl PinDir {
    pub fn new(env: &Env) -> Self {
        Self {
            path: Path::new(BPFFS).join(format!("cip-test-{}", crate::uniq())),
            agent_bin: env.agent_bin.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        match Command::new(&self.agent_bin)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.path)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: clusterip-agent cleanup --bpffs {}: {}: {}",
                self.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: running clusterip-agent cleanup: {e}"),
        }
        if self.path.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            eprintln!("cleanup: rm -r {}: {e}", self.path.display());
        }
    }
}
