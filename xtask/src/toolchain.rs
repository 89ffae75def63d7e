//! Every pinned toolchain version, in one place.
//!
//! Why these: the eBPF object is linked by bpf-linker, which reads rustc's LLVM bitcode, so the
//! nightly's LLVM major must equal the LLVM bpf-linker is built against. Debian bookworm offers
//! LLVM 22 at most; `nightly-2026-07-01` is rustc 1.98.0-nightly on LLVM 22.1. Userspace (aya
//! 0.16) declares `rust-version = "1.98.0"`.

/// Nightly used for the eBPF crate (`-Z build-std=core`).
pub const EBPF_NIGHTLY: &str = "nightly-2026-07-01";
/// rustup components on `EBPF_NIGHTLY`: `rust-src` for build-std, `clippy` for `lint`.
pub const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];
/// LLVM major shared by `EBPF_NIGHTLY` and bpf-linker.
pub const LLVM_MAJOR: u32 = 22;
/// bpf-linker version, built with `--features llvm-22` against Debian's LLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Rust toolchain for userspace; must be at least `MIN_STABLE`.
pub const STABLE: &str = "stable";
pub const MIN_STABLE: (u32, u32) = (1, 98);
/// rustup components CI needs on `STABLE` (`cargo fmt --check`, `cargo clippy`).
pub const STABLE_COMPONENTS: &[&str] = &["rustfmt", "clippy"];
/// Target triple of the eBPF object.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Target of the agent in the container image (`cargo xtask image`, deploy/Dockerfile): a
/// static musl binary, so that it runs FROM scratch and still resolves host names (musl's
/// resolver reads /etc/hosts and /etc/resolv.conf itself; a static glibc needs NSS modules
/// that a scratch image does not have). The C parts (ring, mimalloc) go through musl-gcc.
pub const IMAGE_TARGET: &str = "x86_64-unknown-linux-musl";
/// Cargo profile of the image's agent (workspace Cargo.toml: release without symbols).
pub const IMAGE_PROFILE: &str = "dist";

/// Debian packages: LLVM for bpf-linker, bpftool to inspect maps, iproute2 for the demo/tests,
/// and for the benchmark (`cargo xtask bench`, and its smoke mode in `test`): iptables and
/// nftables (kube-proxy's two modes), wrk (the load generator), nginx (the pods' HTTP
/// server; the bench runs its own instances in network namespaces with its own config) and
/// ethtool (GRO on the veth an XDP redirect sends into, which the kernel requires).
pub fn debian_packages() -> Vec<String> {
    vec![
        format!("llvm-{LLVM_MAJOR}-dev"),
        format!("libpolly-{LLVM_MAJOR}-dev"),
        "zlib1g-dev".to_string(),
        "libzstd-dev".to_string(),
        "bpftool".to_string(),
        "iproute2".to_string(),
        "iptables".to_string(),
        "nftables".to_string(),
        "wrk".to_string(),
        "nginx".to_string(),
        "ethtool".to_string(),
    ]
}

/// Debian packages for `cargo xtask image` and its test, installed without their recommends
/// (crun, fuse-overlayfs, slirp4netns, dbus-user-session: crun cannot start containers on
/// these machines and the others are not used): musl-gcc for the image's C parts, buildah to
/// build the image, podman and runc to run it, the CA bundle the image carries.
pub fn image_packages() -> Vec<String> {
    ["musl-tools", "buildah", "podman", "runc", "ca-certificates"]
        .map(String::from)
        .to_vec()
}

/// Where Debian installs `llvm-<major>-dev` (bpf-linker's build script needs it in LLVM_PREFIX).
pub fn llvm_prefix() -> String {
    format!("/usr/lib/llvm-{LLVM_MAJOR}")
}
