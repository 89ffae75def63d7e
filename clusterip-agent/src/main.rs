use clap::Parser;
use clusterip_agent::cli::Cli;

/// mimalloc: far less fragmentation than glibc malloc after the agent parses and drops tens of
/// thousands of objects (a relist), and it returns freed memory to the kernel by itself.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (mimalloc.h): purge freed memory at once, not on a later
/// allocation. An idle agent otherwise keeps the pages its last relist freed (103 -> 86 MiB at
/// 10,000 services).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for the agent's memory. mimalloc is built without them
    // (`no_thp`: it no longer asks for them with MADV_HUGEPAGE), and this keeps a kernel set to
    // THP "always" from backing the heap with 2 MiB pages: the agent's resident size would grow
    // 2 MiB at a time and a purge of a freed 64 KiB page would return nothing while the huge
    // page around it is in use. Measured at 10,000 services through the API: 56 -> 43 MiB.
    // SAFETY: prctl with integer arguments only; a kernel without it returns an error, which
    // changes nothing.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    // SAFETY: sets an allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    clusterip_agent::telemetry::init();
    let cli = Cli::parse();
    match clusterip_agent::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("clusterip-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
