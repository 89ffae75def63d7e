//! Running child processes with a clean, predictable environment.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt,
    io::{self, ErrorKind},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Variables that pin a toolchain or its flags. `cargo xtask` runs under `cargo run` (which sets
/// CARGO, and through rustup RUSTUP_TOOLCHAIN), while its children use other toolchains
/// (`cargo +stable`, `cargo +nightly-...`): inherited, these would make the child use the wrong
/// rustc or flags. CARGO_TARGET_DIR is deliberately kept.
const TOOLCHAIN_ENV: &[&str] = &[
    "RUSTC",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOC",
    "RUSTDOCFLAGS",
];

/// A child process that failed; `main` exits with its exit code.
#[derive(Debug)]
pub struct ChildFailed {
    pub what: String,
    pub status: ExitStatus,
}

impl fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.what, self.status)
    }
}

impl std::error::Error for ChildFailed {}

/// Cargo's bin dir (`$CARGO_HOME/bin`, default `~/.cargo/bin`): where rustup's proxies and
/// `cargo install`ed tools such as bpf-linker live.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// PATH with cargo's bin dir in front, so a freshly installed bpf-linker is found even when the
/// caller's PATH lacks it.
fn child_path() -> Option<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let bin = cargo_bin_dir()?;
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if dirs.contains(&bin) {
        return Some(current);
    }
    dirs.insert(0, bin);
    env::join_paths(dirs).ok()
}

/// A `Command` without toolchain-pinning variables in its environment.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in TOOLCHAIN_ENV {
        cmd.env_remove(var);
    }
    if let Some(path) = child_path() {
        cmd.env("PATH", path);
    }
    cmd
}

/// `cargo +<toolchain>`.
pub fn cargo(toolchain: &str) -> Command {
    let mut cmd = command("cargo");
    cmd.arg(format!("+{toolchain}"));
    cmd
}

/// Shell-like rendering of a command and the variables it sets, for logs.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value
            && key != "PATH"
        {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        parts.push(quote(&arg.to_string_lossy()));
    }
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:@,%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio, printing it first; fails on non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let what = display(cmd);
    eprintln!("running: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(ChildFailed { what, status }.into())
    }
}

/// Runs a command quietly and returns its stdout if it exited 0; `None` if the program does not
/// exist or failed. For probes ("is X installed?").
pub fn probe(cmd: &mut Command) -> Result<Option<String>> {
    let what = display(cmd);
    match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(Some(String::from_utf8_lossy(&out.stdout).into())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot start `{what}`")),
    }
}

/// Runs a command with captured output and returns stdout; fails (showing stderr) on non-zero
/// exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let what = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{what}`"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(ChildFailed {
            what,
            status: out.status,
        })
        .with_context(|| stderr.trim().to_string())
    }
}

/// Waits for the child to exit, up to `timeout`. `Ok(true)` if it exited, `Ok(false)` if it
/// still runs.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_toolchain_variables_and_keeps_target_dir() {
        let cmd = command("true");
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for var in ["RUSTC", "RUSTUP_TOOLCHAIN", "CARGO", "RUSTFLAGS", "RUSTDOC"] {
            assert!(removed.iter().any(|r| r == var), "{var} not removed");
        }
        assert!(!removed.iter().any(|r| r == "CARGO_TARGET_DIR"));
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}", "it's"]);
        assert_eq!(display(&cmd), r"dpkg-query -W '-f=${Status}' 'it'\''s'");
    }
}
