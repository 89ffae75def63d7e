use clap::Parser;

/// mimalloc: far less fragmentation than glibc malloc after the agent parses and drops tens of
/// thousands of objects (a relist), and it returns freed memory to the kernel by itself.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clusterip_agent::cli::Cli;

fn main() -> std::process::ExitCode {
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
