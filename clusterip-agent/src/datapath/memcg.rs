//! This process's memory cgroup and its limit: since Linux 5.11 BPF map memory is charged to
//! it, so a pod's memory limit must hold the maps, and a failed map creation is explained by
//! it (cgroup v1 `memory` controller or v2 `memory.max`, whichever the process is in).

use std::fs;
use std::path::{Path, PathBuf};

use super::sizing::Mib;

/// A memory cgroup with a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The cgroup's directory.
    pub path: PathBuf,
    pub limit: u64,
    /// Current usage, when readable.
    pub usage: Option<u64>,
}

/// v1 reports "no limit" as a page-rounded `i64::MAX`; anything this large is no limit.
const UNLIMITED_V1: u64 = 1 << 60;

/// The memory cgroup of this process and its limit; None when there is no limit (or it cannot
/// be read).
pub fn limit() -> Option<MemoryLimit> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let (path, v2) = memory_cgroup_dir(&cgroups, &mounts)?;
    let read = |name: &str| -> Option<String> {
        fs::read_to_string(path.join(name))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let (limit, usage) = if v2 {
        (read("memory.max")?, read("memory.current"))
    } else {
        (
            read("memory.limit_in_bytes")?,
            read("memory.usage_in_bytes"),
        )
    };
    let limit: u64 = limit.parse().ok()?; // "max" (v2): no limit
    if limit >= UNLIMITED_V1 {
        return None;
    }
    Some(MemoryLimit {
        path,
        limit,
        usage: usage.and_then(|u| u.parse().ok()),
    })
}

/// One sentence on this process's memory limit, for an out-of-memory error; None without one.
pub fn describe_limit() -> Option<String> {
    let l = limit()?;
    let usage = l
        .usage
        .map(|u| format!(", {} in use", Mib(u)))
        .unwrap_or_default();
    Some(format!(
        "This process's memory cgroup {} is limited to {}{usage}",
        l.path.display(),
        Mib(l.limit)
    ))
}

/// The directory of the memory cgroup of this process, from /proc/self/cgroup and the mounts:
/// the v1 `memory` hierarchy when mounted, else the v2 one. `true` for v2.
fn memory_cgroup_dir(cgroups: &str, mounts: &str) -> Option<(PathBuf, bool)> {
    let mut v2_path = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let mount = mount_point(mounts, |fstype, opts| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "memory")
            })?;
            return Some((mount.join(rel), false));
        }
        if id == "0" && controllers.is_empty() {
            v2_path = Some(rel.to_string());
        }
    }
    let rel = v2_path?;
    let mount = mount_point(mounts, |fstype, _| fstype == "cgroup2")?;
    // The v2 hierarchy only has memory.max where the memory controller is enabled.
    let dir = mount.join(rel);
    dir.join("memory.max").exists().then_some((dir, true))
}

fn mount_point(mounts: &str, want: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_src, target, fstype, opts, ..] if want(fstype, opts) => {
                Some(Path::new(target).into())
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n\
                          cgroup /sys/fs/cgroup/cpu cgroup rw,cpu,cpuacct 0 0\n\
                          cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";

    #[test]
    fn finds_the_v1_memory_cgroup_first() {
        let cgroups = "12:cpu,cpuacct:/x\n5:memory:/pods/agent\n0::/pods/agent\n";
        assert_eq!(
            memory_cgroup_dir(cgroups, MOUNTS),
            Some((PathBuf::from("/sys/fs/cgroup/memory/pods/agent"), false))
        );
    }

    #[test]
    fn no_memory_hierarchy_no_limit() {
        // v2 only, and the test's path has no memory.max: no limit to report.
        let mounts = "cgroup2 /nonexistent-cgroup2 cgroup2 rw 0 0\n";
        assert_eq!(memory_cgroup_dir("0::/a\n", mounts), None);
    }
}
