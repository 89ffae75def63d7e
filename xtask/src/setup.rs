//! `cargo xtask setup`: checks, and installs what is missing, for the eBPF toolchain.
//!
//! Idempotent: on a ready machine it only prints `ok:` lines. Each install is followed by the
//! same check, so a step that "succeeded" without producing the right thing still fails.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    proc::{self, cargo, command, probe, run},
    toolchain::{
        BPF_LINKER_VERSION, EBPF_NIGHTLY, IMAGE_TARGET, LLVM_MAJOR, MIN_STABLE, NIGHTLY_COMPONENTS,
        STABLE, STABLE_COMPONENTS, debian_packages, image_packages, llvm_prefix,
    },
};

pub const BPFFS: &str = "/sys/fs/bpf";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn setup() -> Result<()> {
    eprintln!("==> setup: checking the eBPF toolchain");
    check_root()?;
    check_bpf()?;
    debian()?;
    stable()?;
    stable_target(IMAGE_TARGET)?;
    nightly()?;
    bpf_linker()?;
    Ok(())
}

fn ok(what: impl AsRef<str>) {
    eprintln!("ok: {}", what.as_ref());
}

fn installing(what: impl AsRef<str>) {
    eprintln!("installing: {}", what.as_ref());
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_root() -> Result<()> {
    let uid = euid();
    if uid != 0 {
        bail!(
            "not root (euid {uid}): installing packages and loading eBPF programs need root; \
             run `sudo -E cargo xtask setup` or, as root, `cargo xtask setup`"
        );
    }
    ok("running as root");
    Ok(())
}

/// Mount points of the given filesystem type, from /proc/mounts.
pub fn mounts_of_type(fstype: &str) -> Result<Vec<String>> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let ty = fields.next()?;
            (ty == fstype).then(|| target.to_string())
        })
        .collect())
}

/// The cgroup v2 mount point (`/sys/fs/cgroup/unified` in hybrid setups).
pub fn cgroup2_root() -> Result<String> {
    mounts_of_type("cgroup2")?
        .into_iter()
        .next()
        .context("no cgroup v2 filesystem mounted (see /proc/mounts)")
}

fn check_bpf() -> Result<()> {
    if mounts_of_type("bpf")?.iter().any(|m| m == BPFFS) {
        ok(format!("bpffs mounted at {BPFFS}"));
    } else {
        installing(format!("mounting bpffs at {BPFFS}"));
        if !Path::new(BPFFS).is_dir() {
            bail!(
                "{BPFFS} does not exist: this kernel has no BPF syscall support \
                 (CONFIG_BPF_SYSCALL) or sysfs is not mounted"
            );
        }
        run(command("mount").args(["-t", "bpf", "bpf", BPFFS]))
            .with_context(|| format!("cannot mount bpffs at {BPFFS}"))?;
    }
    if !Path::new(KERNEL_BTF).exists() {
        bail!(
            "{KERNEL_BTF} missing: the kernel was built without CONFIG_DEBUG_INFO_BTF; \
             the eBPF programs need kernel BTF"
        );
    }
    ok(format!("kernel BTF at {KERNEL_BTF}"));
    match cgroup2_root() {
        Ok(root) => ok(format!("cgroup v2 mounted at {root}")),
        Err(e) => eprintln!("warning: {e:#}; the agent, tests and demo need it"),
    }
    Ok(())
}

/// `Some(version)` if the Debian package is installed.
fn deb_version(package: &str) -> Result<Option<String>> {
    let out = probe(command("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]))?;
    Ok(out.and_then(|s| {
        let (status, version) = s.split_once('\t')?;
        (status.trim() == "install ok installed").then(|| version.trim().to_string())
    }))
}

fn debian() -> Result<()> {
    if probe(command("dpkg-query").arg("--version"))?.is_none() {
        bail!(
            "dpkg-query not found: `cargo xtask setup` only knows Debian/Ubuntu; install by hand: \
             LLVM {LLVM_MAJOR} (dev files, polly), zlib and zstd dev files, bpftool, iproute2, \
             and for the image musl-tools, buildah, podman, runc"
        );
    }
    let missing = missing_packages(&debian_packages())?;
    let missing_image = missing_packages(&image_packages())?;
    if missing.is_empty() && missing_image.is_empty() {
        return Ok(());
    }
    installing(
        missing
            .iter()
            .chain(&missing_image)
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
    );
    let apt = || {
        let mut cmd = command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt().arg("update"))?;
    // Packages such as nginx start their service on install; the benchmark runs its own
    // nginx in namespaces it creates, and a setup must not leave a web server on the host.
    let _no_services = NoServiceStarts::new()?;
    if !missing.is_empty() {
        run(apt().args(["install", "-y"]).args(&missing))?;
    }
    if !missing_image.is_empty() {
        // Without recommends: they would bring crun as podman's runtime (it cannot start
        // containers here: see image.rs), fuse-overlayfs, slirp4netns, dbus-user-session.
        run(apt()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing_image))?;
    }
    for package in missing.iter().chain(&missing_image) {
        match deb_version(package)? {
            Some(version) => ok(format!("{package} {version}")),
            None => bail!("{package} still not installed after apt-get install"),
        }
    }
    Ok(())
}

/// The packages of `wanted` that are not installed; prints `ok:` for the others.
fn missing_packages(wanted: &[String]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for package in wanted {
        match deb_version(package)? {
            Some(version) => ok(format!("{package} {version}")),
            None => missing.push(package.clone()),
        }
    }
    Ok(missing)
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while it lives, so packages do
/// not start services on install; a policy the machine already has is left alone.
struct NoServiceStarts {
    created: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(
            path,
            "#!/bin/sh\n# written by cargo xtask setup for the install\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = std::fs::remove_file(POLICY_RC_D)
        {
            eprintln!("setup: removing {POLICY_RC_D}: {e}");
        }
    }
}

/// `(major, minor, patch)` from `rustc 1.99.1 (58cf8f9c3 2026-10-13)`.
pub fn parse_rustc_version(out: &str) -> Option<(u32, u32, u32)> {
    let version = out.split_whitespace().nth(1)?;
    let version = version.split('-').next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn rustc_version(toolchain: &str) -> Result<Option<String>> {
    Ok(probe(
        command("rustc")
            .arg(format!("+{toolchain}"))
            .arg("--version"),
    )?
    .map(|s| s.trim().to_string()))
}

fn installed_components(toolchain: &str) -> Result<Vec<String>> {
    let out = proc::output(command("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    Ok(out.lines().map(|l| l.trim().to_string()).collect())
}

/// Components are listed as `rustfmt-x86_64-unknown-linux-gnu`, or `rust-src` (no host).
fn has_component(installed: &[String], component: &str) -> bool {
    installed.iter().any(|c| {
        c == component
            || c.strip_prefix(component)
                .and_then(|rest| rest.strip_prefix('-'))
                // The rest must be a target triple, so that `rust` does not match `rust-src`.
                .is_some_and(|triple| triple.matches('-').count() >= 2)
    })
}

fn require_rustup() -> Result<()> {
    if probe(command("rustup").arg("--version"))?.is_none() {
        bail!("rustup not found: install it from https://rustup.rs (it manages the toolchains)");
    }
    Ok(())
}

fn stable() -> Result<()> {
    require_rustup()?;
    let (min_major, min_minor) = MIN_STABLE;
    let good = |v: &Option<String>| {
        v.as_deref()
            .and_then(parse_rustc_version)
            .is_some_and(|(major, minor, _)| (major, minor) >= (min_major, min_minor))
    };
    let mut version = rustc_version(STABLE)?;
    if !good(&version) {
        installing(format!(
            "{STABLE} toolchain (found: {}, need >= {min_major}.{min_minor})",
            version.as_deref().unwrap_or("none")
        ));
        run(command("rustup").args([
            "toolchain",
            "install",
            STABLE,
            "--profile",
            "minimal",
            "--no-self-update",
        ]))?;
        version = rustc_version(STABLE)?;
        if !good(&version) {
            bail!(
                "{STABLE} is still {} after install; need >= {min_major}.{min_minor}",
                version.as_deref().unwrap_or("missing")
            );
        }
    }
    ok(format!(
        "{STABLE}: {}",
        version.as_deref().unwrap_or_default()
    ));
    let installed = installed_components(STABLE)?;
    let missing: Vec<&str> = STABLE_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !has_component(&installed, c))
        .collect();
    if !missing.is_empty() {
        installing(format!("{} on {STABLE}", missing.join(" ")));
        run(command("rustup")
            .args(["component", "add", "--toolchain", STABLE])
            .args(&missing))?;
    }
    let installed = installed_components(STABLE)?;
    for component in STABLE_COMPONENTS {
        if !has_component(&installed, component) {
            bail!("component {component} still missing on {STABLE}");
        }
    }
    ok(format!(
        "{STABLE} components: {}",
        STABLE_COMPONENTS.join(" ")
    ));
    Ok(())
}

/// rustup's standard library for `target` on the stable toolchain (the image's musl agent).
fn stable_target(target: &str) -> Result<()> {
    let installed = || -> Result<bool> {
        let out = proc::output(command("rustup").args([
            "target",
            "list",
            "--installed",
            "--toolchain",
            STABLE,
        ]))?;
        Ok(out.lines().any(|l| l.trim() == target))
    };
    if !installed()? {
        installing(format!("target {target} on {STABLE}"));
        run(command("rustup").args(["target", "add", "--toolchain", STABLE, target]))?;
        if !installed()? {
            bail!("target {target} still missing on {STABLE} after `rustup target add`");
        }
    }
    ok(format!("{STABLE} target {target}"));
    Ok(())
}

fn toolchain_installed(name: &str) -> Result<bool> {
    let out = proc::output(command("rustup").args(["toolchain", "list"]))?;
    Ok(out.lines().any(|line| {
        let first = line.split_whitespace().next().unwrap_or_default();
        first == name || first.starts_with(&format!("{name}-"))
    }))
}

fn nightly() -> Result<()> {
    if !toolchain_installed(EBPF_NIGHTLY)? {
        installing(format!(
            "{EBPF_NIGHTLY} with {}",
            NIGHTLY_COMPONENTS.join(" ")
        ));
        let mut cmd = command("rustup");
        cmd.args(["toolchain", "install", EBPF_NIGHTLY, "--profile", "minimal"]);
        for c in NIGHTLY_COMPONENTS {
            cmd.args(["--component", c]);
        }
        run(cmd.arg("--no-self-update"))?;
    }
    let installed = installed_components(EBPF_NIGHTLY)?;
    let missing: Vec<&str> = NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !has_component(&installed, c))
        .collect();
    if !missing.is_empty() {
        installing(format!("{} on {EBPF_NIGHTLY}", missing.join(" ")));
        run(command("rustup")
            .args(["component", "add", "--toolchain", EBPF_NIGHTLY])
            .args(&missing))?;
        let installed = installed_components(EBPF_NIGHTLY)?;
        if let Some(c) = missing.iter().find(|c| !has_component(&installed, c)) {
            bail!("{c} still missing on {EBPF_NIGHTLY}");
        }
    }
    let version = rustc_version(EBPF_NIGHTLY)?
        .with_context(|| format!("`rustc +{EBPF_NIGHTLY} --version` fails after install"))?;
    ok(format!(
        "{EBPF_NIGHTLY}: {version}, with {}",
        NIGHTLY_COMPONENTS.join(" ")
    ));
    Ok(())
}

fn bpf_linker_version() -> Result<Option<String>> {
    Ok(probe(command("bpf-linker").arg("--version"))?
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string)))
}

fn bpf_linker() -> Result<()> {
    let found = bpf_linker_version()?;
    if found.as_deref() != Some(BPF_LINKER_VERSION) {
        installing(format!(
            "bpf-linker {BPF_LINKER_VERSION} for LLVM {LLVM_MAJOR} (found: {}; takes about a minute)",
            found.as_deref().unwrap_or("none")
        ));
        let mut install: Command = cargo(STABLE);
        install
            .env("LLVM_PREFIX", llvm_prefix())
            .arg("install")
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            .arg("--locked");
        run(&mut install)?;
        let now = bpf_linker_version()?;
        if now.as_deref() != Some(BPF_LINKER_VERSION) {
            bail!(
                "`bpf-linker --version` reports {} after install, want {BPF_LINKER_VERSION}: \
                 is another bpf-linker earlier on PATH?",
                now.as_deref().unwrap_or("nothing")
            );
        }
    }
    ok(format!("bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rustc_versions() {
        assert_eq!(
            parse_rustc_version("rustc 1.99.1 (58cf8f9c3 2026-10-13)"),
            Some((1, 99, 1))
        );
        assert_eq!(
            parse_rustc_version("rustc 1.98.0-nightly (abcdef 2026-06-30)"),
            Some((1, 98, 0))
        );
        assert_eq!(parse_rustc_version("error: toolchain not installed"), None);
        assert_eq!(parse_rustc_version(""), None);
    }

    #[test]
    fn recognises_components_with_and_without_host_suffix() {
        let installed = vec![
            "cargo-x86_64-unknown-linux-gnu".to_string(),
            "rustfmt-x86_64-unknown-linux-gnu".to_string(),
            "rust-src".to_string(),
        ];
        assert!(has_component(&installed, "rustfmt"));
        assert!(has_component(&installed, "rust-src"));
        assert!(!has_component(&installed, "clippy"));
        assert!(!has_component(&installed, "rust"));
    }
}
