//! Developer tasks for clusterip: `cargo xtask <command>`.
//!
//! Builds with the machine's preinstalled toolchain (no aya here): `setup` is what installs the
//! newer ones. Pinned versions: `toolchain.rs`.

mod demo;
mod image;
mod kernels;
mod proc;
mod setup;
mod tasks;
mod toolchain;

use std::{net::SocketAddr, process::ExitCode, time::Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "clusterip developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the eBPF toolchain (root, bpffs, BTF, Debian packages, stable and pinned nightly
    /// Rust, bpf-linker) and install what is missing. Idempotent.
    Setup,
    /// `cargo fmt --check` and `cargo clippy -D warnings` on the userspace workspace and on the
    /// eBPF crate (with the pinned nightly).
    Lint,
    /// `setup`, then the workspace's binaries and test binaries; the agent's build script
    /// builds the eBPF object (aya-build, pinned nightly) and embeds it, as a plain
    /// `cargo build` does.
    Build,
    /// The agent's OCI image, FROM scratch (static musl agent, buildah; no base image pulled):
    /// target/image/clusterip-agent-<version>.oci.tar. Prints its size and digest.
    Image,
    /// `build` (and `image` unless only other `--test` targets are picked), then
    /// `cargo test --workspace` with the privileged e2e tests required to run.
    /// Arguments go to `cargo test`: `cargo xtask test -- some_filter -- --nocapture`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The benchmark (`tests/benches/kubeproxy.rs`): clusterip socket-LB, TC and XDP against
    /// kube-proxy's iptables and nftables modes and against direct pod IPs, for N services, in
    /// network namespaces it creates; data plane (connections/s, latency, UDP) and control
    /// plane. Builds the eBPF object and a release agent first. Writes
    /// target/bench/kubeproxy.{md,json,svg}.
    Bench {
        /// Parts to run, comma-separated: direct,socket,tc,xdp,iptables,nftables (default all).
        #[arg(long)]
        parts: Option<String>,
        /// Service counts, comma-separated (default 1,1000,10000).
        #[arg(long)]
        services: Option<String>,
        /// Rounds; every part runs once per round, interleaved (default 5).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per connection-rate run (default 3).
        #[arg(long)]
        duration: Option<u64>,
        /// Requests per latency and UDP measurement (default 20000).
        #[arg(long)]
        requests: Option<u64>,
        /// Smoke mode (what CI runs): N = 10, one round, short runs, every part, debug build.
        #[arg(long)]
        smoke: bool,
        /// Also run the older micro-benchmarks (socket_lb, packet_lb).
        #[arg(long)]
        micro: bool,
    },
    /// The demo: `build`, then two ClusterIP services with three stand-in pods in network
    /// namespaces, the agent, and a client; everything is removed at the end (also on Ctrl-C).
    Run {
        /// Keep the demo running until Ctrl-C, to look around.
        #[arg(long)]
        keep: bool,
    },
    /// `build`, then boot Debian kernels (5.10, 6.1, 6.12, the newest 6.x and 7.x) under QEMU
    /// and check in each: probe, TCP/UDP through a VIP at socket level and through TC, refusals,
    /// XDP, and test runs of the packet programs; gaps documented in kernels/expected.toml are
    /// expected, anything else fails. Downloads are cached in target/kernels/. `.ci/run` runs it
    /// after `test`.
    Kernels {
        /// Refresh the package lists (pick up newer kernels).
        #[arg(long)]
        refresh: bool,
        /// Only these kernel lines (5.10, 6.1, 6.12, 6.x, 7.x). Repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Seconds before a VM without its results is killed.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Use the binaries already in target/debug instead of running `build` first.
        #[arg(long)]
        no_build: bool,
    },
    /// (demo) A stand-in pod: TCP hello server and UDP echo server.
    #[command(hide = true)]
    DemoBackend {
        #[arg(long)]
        tcp: Option<SocketAddr>,
        #[arg(long)]
        udp: Option<SocketAddr>,
        #[arg(long)]
        name: String,
    },
    /// (demo) Sends requests to the services and reports which backend answered.
    #[command(hide = true)]
    DemoClient {
        #[arg(long)]
        tcp: SocketAddr,
        #[arg(long, default_value_t = 9)]
        tcp_requests: usize,
        #[arg(long)]
        udp: SocketAddr,
        #[arg(long, default_value_t = 4)]
        udp_requests: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = Instant::now();
    let quiet = matches!(
        cli.command,
        Cmd::DemoBackend { .. } | Cmd::DemoClient { .. }
    );
    let root = tasks::workspace_root();
    let result = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => tasks::build(&root).map(|_| ()),
        Cmd::Image => image::image(&root),
        Cmd::Test { args } => tasks::test(&root, &args),
        Cmd::Bench {
            parts,
            services,
            rounds,
            duration,
            requests,
            smoke,
            micro,
        } => tasks::bench(
            &root,
            &tasks::BenchOpts {
                parts,
                services,
                rounds,
                duration,
                requests,
                smoke,
                micro,
            },
        ),
        Cmd::Lint => tasks::lint(&root),
        Cmd::Run { keep } => demo::run(keep),
        Cmd::Kernels {
            refresh,
            only,
            timeout,
            no_build,
        } => kernels::kernels(
            &root,
            refresh,
            &only,
            std::time::Duration::from_secs(timeout),
            no_build,
        ),
        Cmd::DemoBackend { tcp, udp, name } => demo::backend::serve(tcp, udp, &name),
        Cmd::DemoClient {
            tcp,
            tcp_requests,
            udp,
            udp_requests,
        } => demo::client::run(tcp, tcp_requests, udp, udp_requests),
    };
    match result {
        Ok(()) => {
            if !quiet {
                eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            // Exit with a failed child's own code (e.g. cargo test's 101) when there is one.
            let code = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<proc::ChildFailed>())
                .and_then(|failed| failed.status.code())
                .and_then(|code| u8::try_from(code).ok())
                .filter(|code| *code != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
