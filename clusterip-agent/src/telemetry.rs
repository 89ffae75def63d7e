//! Logging: tracing with RUST_LOG (default info). `log` records, which is how the eBPF
//! programs' aya-log messages arrive, are forwarded into tracing.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // try_init also installs the log -> tracing bridge; a second init (tests) is harmless.
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The target of the eBPF programs' log records (their crate name).
pub const EBPF_LOG_TARGET: &str = "clusterip";

/// Whether the eBPF programs' debug records would be printed (`RUST_LOG=debug` or
/// `RUST_LOG=clusterip=debug`): only then are they loaded with logging on.
pub fn ebpf_debug_enabled() -> bool {
    tracing::enabled!(target: "clusterip", tracing::Level::DEBUG)
}
