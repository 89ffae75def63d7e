//! Embeds the eBPF object into the agent.
//!
//! `cargo xtask build-ebpf` builds `clusterip-ebpf` with the pinned nightly and bpf-linker and
//! then builds the agent with `CLUSTERIP_EBPF_OBJECT` pointing at the object. Without that
//! variable (plain `cargo check`/`cargo test`, which must not need the eBPF toolchain) an empty
//! placeholder is embedded and the agent says how to build the real thing when it needs it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CLUSTERIP_EBPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("clusterip.bpf.o");
    match env::var_os("CLUSTERIP_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            fs::copy(&path, &out)
                .map_err(|e| anyhow::anyhow!("CLUSTERIP_EBPF_OBJECT={}: {e}", path.display()))?;
        }
        None => {
            fs::write(&out, [])?;
        }
    }
    Ok(())
}
