//! Small Linux helpers for the demo: signals, netns, cgroups, process control.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM/SIGHUP into a flag (see `interrupted`), so that waits can stop and the
/// teardown guard runs instead of the process dying with things left behind.
pub fn catch_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        if previous == libc::SIG_ERR {
            return Err(io::Error::last_os_error()).context("cannot install a signal handler");
        }
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Makes the child join the network namespace `name` (a `ip netns add` one) before exec.
/// Unlike `ip netns exec`, this leaves the mount namespace (and so /sys/fs/bpf) alone.
pub fn enter_netns(cmd: &mut Command, name: &str) -> Result<()> {
    let path = netns_path(name);
    let ns = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes the child move itself into the cgroup at `cgroup` before exec.
pub fn join_cgroup(cmd: &mut Command, cgroup: &Path) -> Result<()> {
    let path = cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the closure only calls write(2), which is async-signal-safe, on an fd it owns.
    unsafe {
        cmd.pre_exec(move || {
            // "0" means "the writing process".
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Starts the child in its own process group, so that Ctrl-C in the terminal reaches only
/// xtask, which then stops the children in order.
pub fn own_process_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

/// Makes the kernel send `signal` to the child when xtask dies (even by SIGKILL), so that no
/// demo process outlives it.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn stop(child: &mut Child, grace: Duration) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if !crate::proc::wait_timeout(child, grace)? {
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

/// Kills every process in `cgroup` (cgroup.kill, Linux >= 5.14) and removes it.
pub fn remove_cgroup(cgroup: &Path) -> Result<()> {
    let kill = cgroup.join("cgroup.kill");
    for _ in 0..50 {
        match fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) if kill.exists() => {
                let _ = OpenOptions::new()
                    .write(true)
                    .open(&kill)
                    .and_then(|mut f| f.write_all(b"1"));
            }
            Err(_) => {}
        }
        thread::sleep(Duration::from_millis(100));
    }
    fs::remove_dir(cgroup).with_context(|| format!("cannot remove cgroup {}", cgroup.display()))
}
