use clap::Parser;
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
