//! A memory cgroup with a limit for the agent under test: cgroup v1's `memory` controller where
//! it is mounted (this machine's hybrid layout), else v2's `memory.max`. Since Linux 5.11 the
//! kernel charges BPF map memory to the memory cgroup of the process creating the maps, which
//! is what a pod's memory limit does to the agent.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// v1 memory hierarchy on hybrid hosts.
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// `<memory root>/cip-mem-<uniq>` with a limit; on drop its processes are killed, it is
/// removed, and so is the wrapper script.
#[derive(Debug)]
pub struct MemoryCgroup {
    path: PathBuf,
    v2: bool,
    wrapper: PathBuf,
}

impl MemoryCgroup {
    /// A new memory cgroup limited to `limit` bytes.
    pub fn new(limit: u64) -> Result<Self> {
        let name = format!("cip-mem-{}", crate::uniq());
        let (root, v2) = if Path::new(V1_MEMORY).join("memory.limit_in_bytes").exists() {
            (PathBuf::from(V1_MEMORY), false)
        } else {
            let root = PathBuf::from(crate::env::CGROUP2);
            let controllers =
                std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "memory") {
                bail!(
                    "no memory controller: neither {V1_MEMORY} (v1) nor memory in {}/cgroup.subtree_control",
                    root.display()
                );
            }
            (root, true)
        };
        let path = root.join(&name);
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let wrapper = std::env::temp_dir().join(format!("{name}-enter.sh"));
        let me = Self { path, v2, wrapper };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(me.path.join(file), limit.to_string())
            .with_context(|| format!("setting {file} of {}", me.path.display()))?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which hierarchy: "cgroup v1 memory" or "cgroup v2 memory.max".
    pub fn kind(&self) -> &'static str {
        if self.v2 {
            "cgroup v2 memory.max"
        } else {
            "cgroup v1 memory controller"
        }
    }

    /// A script that moves itself into this cgroup and then execs `program` with its own
    /// arguments: every process it starts, and all the kernel memory they allocate (maps
    /// included), is charged here from the first instruction.
    pub fn wrapper(&self, program: &Path) -> Result<PathBuf> {
        let script = format!(
            "#!/bin/sh\necho $$ > '{}/cgroup.procs' || exit 97\nexec '{}' \"$@\"\n",
            self.path.display(),
            program.display()
        );
        std::fs::write(&self.wrapper, script)
            .with_context(|| format!("writing {}", self.wrapper.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.wrapper, std::fs::Permissions::from_mode(0o755))?;
        Ok(self.wrapper.clone())
    }

    /// The highest memory use the cgroup has seen (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`).
    pub fn peak(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        let s = std::fs::read_to_string(self.path.join(file))
            .with_context(|| format!("reading {file}"))?;
        s.trim().parse().with_context(|| format!("{file}: {s:?}"))
    }

    pub fn procs(&self) -> Vec<i32> {
        crate::cgroup::procs_of(&self.path)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.wrapper);
        crate::cgroup::remove_killing(&self.path);
    }
}

/// A Kubernetes memory quantity ("128Mi", "1Gi", "100M", "5000000") in bytes.
pub fn parse_quantity(q: &str) -> Result<u64> {
    let q = q.trim();
    let (digits, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(suffix, m)| q.strip_suffix(suffix).map(|d| (d, *m)))
    .unwrap_or((q, 1));
    let n: u64 = digits
        .parse()
        .with_context(|| format!("memory quantity {q:?}"))?;
    Ok(n * mult)
}
