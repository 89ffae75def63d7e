//! `cip-runc`: runc behind a clamp, podman's `--runtime` in the image test.
//!
//! Root's capability bounding set on the test machines lacks CAP_SYS_RESOURCE, so runc cannot
//! apply what podman's OCI spec asks for: podman asks RLIMIT_NOFILE 1048576 and runc fails
//! with "error setting rlimit type 7: operation not permitted". A capability outside the
//! bounding set (the DaemonSet's SYS_RESOURCE) or an `oomScoreAdj` below the caller's would
//! fail the same way. Before runc reads `<bundle>/config.json` this lowers each rlimit to the
//! caller's hard limit, raises `oomScoreAdj` to the caller's and drops capabilities the
//! bounding set does not have, prints what it changed, and execs runc with the same arguments.
//! Podman starts runtimes with a cleaned environment, so nothing configures this from outside;
//! the real runc is found on the standard paths.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result};
use serde_json::Value;

const RUNC_PATHS: &[&str] = &[
    "/usr/sbin/runc",
    "/usr/bin/runc",
    "/usr/local/sbin/runc",
    "/usr/local/bin/runc",
];

fn main() -> ExitCode {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    if let Some(bundle) = bundle_of(&args) {
        let config = bundle.join("config.json");
        match clamp_file(&config) {
            Ok(changes) => {
                for change in changes {
                    eprintln!("cip-runc: {}: {change}", config.display());
                }
            }
            Err(e) => {
                eprintln!("cip-runc: {}: {e:#}", config.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let runc = RUNC_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .unwrap_or(Path::new("runc"));
    let err = Command::new(runc).args(&args).exec();
    eprintln!("cip-runc: exec {}: {err}", runc.display());
    ExitCode::from(127)
}

/// The bundle of a `create` or `run` (`--bundle DIR`, `-b DIR`, `--bundle=DIR`).
fn bundle_of(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg.to_str()?;
        if arg == "--bundle" || arg == "-b" {
            return it.next().map(PathBuf::from);
        }
        if let Some(dir) = arg.strip_prefix("--bundle=") {
            return Some(PathBuf::from(dir));
        }
    }
    None
}

fn clamp_file(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).context("reading")?;
    let mut spec: Value = serde_json::from_str(&text).context("parsing")?;
    let changes = clamp(&mut spec, &Limits::of_this_process()?);
    if !changes.is_empty() {
        fs::write(path, serde_json::to_vec(&spec)?).context("writing")?;
    }
    Ok(changes)
}

/// What this process (runc's caller) may set.
struct Limits {
    /// Hard limit of an rlimit by its OCI name; None for a name this does not know.
    hard: fn(&str) -> Option<u64>,
    oom_score_adj: i64,
    /// CapBnd of /proc/self/status.
    bounding: u64,
}

impl Limits {
    fn of_this_process() -> Result<Self> {
        let status = fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
        let bounding = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .context("no CapBnd in /proc/self/status")?;
        let bounding = u64::from_str_radix(bounding.trim(), 16).context("CapBnd")?;
        let oom = fs::read_to_string("/proc/self/oom_score_adj").context("oom_score_adj")?;
        Ok(Self {
            hard: current_hard_limit,
            oom_score_adj: oom.trim().parse().context("oom_score_adj")?,
            bounding,
        })
    }
}

fn current_hard_limit(name: &str) -> Option<u64> {
    let resource = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    (unsafe { libc::getrlimit(resource, &mut limit) } == 0).then_some(limit.rlim_max)
}

/// Capability numbers by name (linux/capability.h).
const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Whether `name` (`CAP_BPF`) is in `bounding`; names this does not know are kept (runc
/// warns about them itself).
fn allowed(name: &str, bounding: u64) -> bool {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    match CAPS.iter().position(|c| *c == bare) {
        Some(bit) => bounding & (1 << bit) != 0,
        None => true,
    }
}

/// Clamps the spec in place; returns what it changed.
fn clamp(spec: &mut Value, limits: &Limits) -> Vec<String> {
    let mut changes = Vec::new();
    let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) else {
        return changes;
    };
    if let Some(rlimits) = process.get_mut("rlimits").and_then(Value::as_array_mut) {
        for rlimit in rlimits {
            let Some(name) = rlimit
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let Some(max) = (limits.hard)(&name) else {
                continue;
            };
            for field in ["hard", "soft"] {
                if let Some(v) = rlimit.get(field).and_then(Value::as_u64)
                    && v > max
                {
                    rlimit[field] = max.into();
                    changes.push(format!("{name} {field} {v} -> {max}"));
                }
            }
        }
    }
    if let Some(adj) = process.get("oomScoreAdj").and_then(Value::as_i64)
        && adj < limits.oom_score_adj
    {
        process.insert("oomScoreAdj".into(), limits.oom_score_adj.into());
        changes.push(format!("oomScoreAdj {adj} -> {}", limits.oom_score_adj));
    }
    if let Some(caps) = process
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    {
        for (set, list) in caps.iter_mut() {
            let Some(list) = list.as_array_mut() else {
                continue;
            };
            list.retain(|cap| {
                let name = cap.as_str().unwrap_or_default();
                let keep = allowed(name, limits.bounding);
                if !keep {
                    changes.push(format!(
                        "{name} dropped from {set}: not in the bounding set"
                    ));
                }
                keep
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_what_the_caller_cannot_set() {
        let mut spec: Value = serde_json::json!({
            "process": {
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576},
                    {"type": "RLIMIT_NPROC", "hard": 100, "soft": 100},
                    {"type": "RLIMIT_UNKNOWN", "hard": 9, "soft": 9}
                ],
                "oomScoreAdj": -999,
                "capabilities": {
                    "bounding": ["CAP_BPF", "CAP_SYS_RESOURCE", "CAP_NEW_ONE"],
                    "effective": ["CAP_SYS_RESOURCE"]
                }
            },
            "root": {"path": "rootfs"}
        });
        let limits = Limits {
            hard: |name| (name != "RLIMIT_UNKNOWN").then_some(20000),
            oom_score_adj: 0,
            bounding: !(1 << 24), // all but SYS_RESOURCE
        };
        let changes = clamp(&mut spec, &limits);
        assert_eq!(changes.len(), 5, "{changes:?}");
        let process = &spec["process"];
        assert_eq!(process["rlimits"][0]["hard"], 20000);
        assert_eq!(process["rlimits"][0]["soft"], 20000);
        assert_eq!(process["rlimits"][1]["hard"], 100);
        assert_eq!(process["rlimits"][2]["hard"], 9);
        assert_eq!(process["oomScoreAdj"], 0);
        assert_eq!(
            process["capabilities"]["bounding"],
            serde_json::json!(["CAP_BPF", "CAP_NEW_ONE"])
        );
        assert_eq!(process["capabilities"]["effective"], serde_json::json!([]));
        assert_eq!(spec["root"]["path"], "rootfs");
        // A second pass changes nothing.
        assert!(clamp(&mut spec, &limits).is_empty());
    }

    #[test]
    fn finds_the_bundle() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            bundle_of(&args(&["create", "--bundle", "/b", "id"])),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(
            bundle_of(&args(&["create", "--bundle=/c", "id"])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(bundle_of(&args(&["start", "id"])), None);
    }
}
