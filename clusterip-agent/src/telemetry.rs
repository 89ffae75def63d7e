//! Logging: tracing with RUST_LOG (default info). `log` records, which is how the eBPF
//! programs' aya-log messages arrive, are forwarded into tracing.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // try_init also installs the log -> tracing bridge; a second init (tests) is harmless.
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether debug records would be printed anywhere: then the eBPF programs log too.
pub fn debug_enabled() -> bool {
    tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG
}
