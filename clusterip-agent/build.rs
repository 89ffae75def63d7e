//! Builds the eBPF object and embeds it in the agent: a plain `cargo build` gives a working
//! agent, as with aya-template.
//!
//! `clusterip-ebpf` is its own workspace (it builds for `bpfel-unknown-none` with a pinned
//! nightly and bpf-linker), so aya-build is run from that crate's directory: it calls `rustup
//! run <nightly> cargo build --package clusterip-ebpf` there, with `-Z build-std=core` and the
//! BTF flags, in a target directory under `OUT_DIR`.
//!
//! Where the eBPF toolchain is absent (`cargo xtask setup` installs it) the outcome depends on
//! the profile: a debug build (unit tests, `cargo check`) embeds an empty placeholder with a
//! warning, and such an agent says what to do when asked to run; a release build fails, so an
//! agent without its datapath cannot be produced silently. `CLUSTERIP_EBPF_OBJECT=PATH`
//! embeds a prebuilt object instead of building one.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use aya_build::{Package, Toolchain};

/// Keep in step with `xtask/src/toolchain.rs` (its tests check that they agree).
const EBPF_NIGHTLY: &str = "nightly-2026-07-01";
/// The eBPF crate's binary: the object file.
const EBPF_BIN: &str = "clusterip";
/// What the agent embeds (`lib.rs`).
const EMBEDDED: &str = "clusterip.bpf.o";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=CLUSTERIP_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR is not set")?);
    let embedded = out_dir.join(EMBEDDED);
    if let Some(path) = env::var_os("CLUSTERIP_EBPF_OBJECT") {
        let path = PathBuf::from(path);
        println!("cargo::rerun-if-changed={}", path.display());
        fs::copy(&path, &embedded)
            .with_context(|| format!("CLUSTERIP_EBPF_OBJECT={}", path.display()))?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("the agent crate has no parent directory")?;
    let ebpf_dir = root.join("clusterip-ebpf");
    let common_dir = root.join("clusterip-common");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", watched.display());
    }

    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    if let Err(missing) = toolchain_present() {
        if release {
            bail!(
                "a release build of clusterip-agent embeds the eBPF datapath, and the eBPF \
                 toolchain is missing: {missing}. Run `cargo xtask setup` (it installs \
                 {EBPF_NIGHTLY} with rust-src and bpf-linker), or set CLUSTERIP_EBPF_OBJECT to \
                 a prebuilt object"
            );
        }
        println!(
            "cargo::warning=clusterip-agent is built WITHOUT its eBPF object ({missing}): \
             unit tests work, `run` does not. `cargo xtask setup` installs the eBPF toolchain"
        );
        fs::write(&embedded, [])?;
        return Ok(());
    }

    // aya-build runs cargo in the current directory: the eBPF crate's own workspace.
    env::set_current_dir(&ebpf_dir).with_context(|| format!("entering {}", ebpf_dir.display()))?;
    let src = ebpf_dir.join("src");
    aya_build::build_ebpf(
        [Package {
            name: "clusterip-ebpf",
            root_dir: path_str(&src)?,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_NIGHTLY),
    )
    .context("building the eBPF object (clusterip-ebpf)")?;
    // aya-build copies each binary to OUT_DIR under its name.
    fs::rename(out_dir.join(EBPF_BIN), &embedded)
        .with_context(|| format!("aya-build did not produce {EBPF_BIN}"))?;
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// What the eBPF build needs: rustup, the pinned nightly with rust-src, and bpf-linker.
fn toolchain_present() -> Result<(), String> {
    let sysroot = Command::new("rustup")
        .args(["run", EBPF_NIGHTLY, "rustc", "--print", "sysroot"])
        // Never download a toolchain from a build script.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map_err(|e| format!("rustup: {e}"))?;
    if !sysroot.status.success() {
        return Err(format!("toolchain {EBPF_NIGHTLY} is not installed"));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(format!("rust-src is missing on {EBPF_NIGHTLY}"));
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("bpf-linker is not on PATH".into()),
    }
}
