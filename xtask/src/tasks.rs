//! `build`, `test`, `lint`, `bench`. The eBPF object is built by the agent's build script
//! (aya-build), so a plain `cargo build` and these tasks take the same path.

use std::{
    env,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Result, bail};

use crate::{
    proc::{cargo, run},
    setup::setup,
    toolchain::{EBPF_NIGHTLY, EBPF_TARGET, STABLE},
};

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The userspace target dir: `CARGO_TARGET_DIR` (kept for children) or `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir), // join keeps an absolute path as is
        None => root.join("target"),
    }
}

/// The eBPF crate's own target dir (its own workspace, another toolchain and target), for
/// `lint`'s clippy run; the agent's build script builds the object under its OUT_DIR.
fn ebpf_target_dir(root: &Path) -> PathBuf {
    root.join("clusterip-ebpf").join("target")
}

pub fn agent_bin_path(root: &Path) -> PathBuf {
    target_dir(root).join("debug").join("clusterip-agent")
}

/// `cargo fmt --check` and `cargo clippy -D warnings` on both workspaces: userspace with
/// stable, the eBPF crate with the pinned nightly for its target.
pub fn lint(root: &Path) -> Result<()> {
    setup()?;
    eprintln!("==> lint: userspace");
    run(cargo(STABLE)
        .current_dir(root)
        .args(["fmt", "--all", "--check"]))?;
    run(cargo(STABLE).current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("==> lint: clusterip-ebpf");
    let crate_dir = root.join("clusterip-ebpf");
    run(cargo(STABLE)
        .current_dir(&crate_dir)
        .args(["fmt", "--all", "--check"]))?;
    run(cargo(EBPF_NIGHTLY)
        .current_dir(&crate_dir)
        .args([
            "clippy",
            "-Z",
            "build-std=core",
            "--target",
            EBPF_TARGET,
            "--release",
        ])
        .arg("--target-dir")
        .arg(ebpf_target_dir(root))
        .args(["--", "-D", "warnings"]))
}

/// `setup`, then the workspace's binaries and test binaries; the agent's build script builds
/// the eBPF object with the pinned nightly and embeds it. Returns the agent binary.
pub fn build(root: &Path) -> Result<PathBuf> {
    setup()?;
    eprintln!("==> build: workspace binaries and tests with {STABLE} (eBPF with {EBPF_NIGHTLY})");
    let started = Instant::now();
    // xtask is excluded: it is the running program and is built by `cargo xtask` with the
    // default toolchain; rebuilding it here with another one would make them take turns.
    run(cargo(STABLE).current_dir(root).args([
        "build",
        "--workspace",
        "--exclude",
        "xtask",
        "--bins",
        "--tests",
    ]))?;
    let agent = agent_bin_path(root);
    if !agent.is_file() {
        bail!("the build succeeded but {} is missing", agent.display());
    }
    eprintln!(
        "agent: {} (with the eBPF object embedded, built in {:.1}s)",
        agent.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(agent)
}

/// Builds everything, then `cargo test` with the e2e tests required to run. `args` go to
/// `cargo test` (`cargo xtask test -- some_filter -- --nocapture`).
pub fn test(root: &Path, args: &[String]) -> Result<()> {
    let agent = build(root)?;
    // The image test (tests/tests/image.rs) runs the image built here; `--test` picks that
    // leave it out skip the (release, musl) build.
    let image = if wants_image(args) {
        Some(crate::image::build(root)?)
    } else {
        eprintln!("==> image: not built (no selected test runs it)");
        None
    };
    eprintln!("==> test");
    let started = Instant::now();
    let mut cmd = cargo(STABLE);
    cmd.current_dir(root)
        .env("CLUSTERIP_AGENT_BIN", &agent)
        .env("CLUSTERIP_E2E_REQUIRED", "1")
        .arg("test");
    if let Some(image) = &image {
        cmd.env("CLUSTERIP_IMAGE", &image.archive);
    }
    if !selects_packages(args) {
        cmd.arg("--workspace");
    }
    cmd.args(args);
    let result = run(&mut cmd);
    eprintln!(
        "==> test: {} in {:.1}s",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result?;
    // The whole suite also runs the benchmarks' smoke mode, so `cargo xtask bench` cannot rot.
    if args.is_empty() {
        bench_smoke(root, &agent)?;
    }
    Ok(())
}

/// Options of `cargo xtask bench` (see `tests/benches/kubeproxy.rs`); `None` = its default.
#[derive(Clone, Debug, Default)]
pub struct BenchOpts {
    /// Comma-separated: direct,socket,tc,xdp,iptables,nftables.
    pub parts: Option<String>,
    /// Comma-separated service counts, e.g. 1,1000,10000.
    pub services: Option<String>,
    pub rounds: Option<usize>,
    /// Seconds per wrk run.
    pub duration: Option<u64>,
    /// Requests per latency / UDP measurement.
    pub requests: Option<u64>,
    /// N = 10, one round, short runs, every part (what CI runs: [`bench_smoke`]).
    pub smoke: bool,
    /// Also run the older micro-benchmarks (`socket_lb`, `packet_lb`).
    pub micro: bool,
}

impl BenchOpts {
    /// The arguments of the `kubeproxy` and `nodeport` bench binaries.
    fn args(&self, out: &Path) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.extend([k.to_string(), v]);
            }
        };
        opt("--parts", self.parts.clone());
        opt("--services", self.services.clone());
        opt("--rounds", self.rounds.map(|r| r.to_string()));
        opt("--duration", self.duration.map(|d| d.to_string()));
        opt("--requests", self.requests.map(|r| r.to_string()));
        if self.smoke {
            a.push("--smoke".into());
        }
        a.push("--out".into());
        a.push(out.display().to_string());
        a
    }
}

/// The main benchmarks, with the same options: ClusterIP from pods (`kubeproxy`) and
/// NodePort from outside the node (`nodeport`).
const MAIN_BENCHES: [&str; 2] = ["kubeproxy", "nodeport"];

/// The micro-benchmarks `cargo xtask bench --micro` runs after the main ones.
const MICRO_BENCHES: [&str; 2] = ["socket_lb", "packet_lb"];

/// `cargo xtask bench`: builds the eBPF object and a release agent, then runs the
/// `kubeproxy` and `nodeport` benchmarks in release mode (clusterip vs kube-proxy
/// iptables/nftables vs direct, in network namespaces they create; needs root and BPF like the
/// e2e tests, plus wrk, nginx and nft, which `setup` installs). Results: stdout and
/// `target/bench/{kubeproxy,nodeport}.{md,json}`.
/// With `--smoke`: the debug build and [`bench_smoke`] instead.
pub fn bench(root: &Path, opts: &BenchOpts) -> Result<()> {
    if opts.smoke {
        let agent = build(root)?;
        return bench_smoke(root, &agent);
    }
    setup()?;
    eprintln!("==> bench: release agent");
    run(cargo(STABLE)
        .current_dir(root)
        .args(["build", "--release", "-p", "clusterip-agent"]))?;
    let agent = target_dir(root).join("release").join("clusterip-agent");
    let out = target_dir(root).join("bench");
    for name in MAIN_BENCHES {
        eprintln!("==> bench {name}");
        run(cargo(STABLE)
            .current_dir(root)
            .env("CLUSTERIP_AGENT_BIN", &agent)
            .env("CLUSTERIP_E2E_REQUIRED", "1")
            .args(["bench", "-p", "clusterip-tests", "--bench", name, "--"])
            .args(opts.args(&out)))?;
    }
    let largest = opts
        .services
        .as_deref()
        .and_then(|s| {
            s.split(',')
                .filter_map(|n| n.trim().parse::<usize>().ok())
                .max()
        })
        .unwrap_or(10_000);
    programming(root, &agent, "release", largest, &out)?;
    if opts.micro {
        for name in MICRO_BENCHES {
            eprintln!("==> bench {name}");
            run(cargo(STABLE)
                .current_dir(root)
                .env("CLUSTERIP_AGENT_BIN", &agent)
                .env("CLUSTERIP_E2E_REQUIRED", "1")
                .args(["bench", "-p", "clusterip-tests", "--bench", name]))?;
        }
    }
    Ok(())
}

/// The `programming` bench: network programming through the (fake) Kubernetes API at
/// `services` services of 10 endpoints (`tests/benches/programming.rs`).
fn programming(
    root: &Path,
    agent: &Path,
    profile: &str,
    services: usize,
    out: &Path,
) -> Result<()> {
    eprintln!("==> bench programming ({services} services)");
    let rounds = if services <= 100 { "3" } else { "30" };
    let burst = (services / 10).clamp(1, 1_000).to_string();
    run(cargo(STABLE)
        .current_dir(root)
        .env("CLUSTERIP_AGENT_BIN", agent)
        .args([
            "bench",
            "--profile",
            profile,
            "-p",
            "clusterip-tests",
            "--bench",
            "programming",
            "--",
            "--services",
            &services.to_string(),
            "--rounds",
            rounds,
            "--burst",
            &burst,
            "--json",
        ])
        .arg(out.join("programming.json")))
}

/// The benchmark's smoke mode, for CI (called by `test` after `build`): every part at N = 10,
/// one round, 1 s runs, built with the dev profile (reuses the test build; nothing is timed
/// against a target). Fails if a part cannot be set up or measures nothing, or if wrk did not
/// open one connection per request. Output in `target/bench-smoke/`.
pub fn bench_smoke(root: &Path, agent: &Path) -> Result<()> {
    eprintln!("==> bench smoke");
    let started = Instant::now();
    let out = target_dir(root).join("bench-smoke");
    let opts = BenchOpts {
        smoke: true,
        ..Default::default()
    };
    let result = MAIN_BENCHES
        .iter()
        .try_for_each(|name| {
            eprintln!("==> bench smoke: {name}");
            run(cargo(STABLE)
                .current_dir(root)
                .env("CLUSTERIP_AGENT_BIN", agent)
                .env("CLUSTERIP_E2E_REQUIRED", "1")
                .args(["bench", "--profile", "dev", "-p", "clusterip-tests"])
                .args(["--bench", name, "--"])
                .args(opts.args(&out)))
        })
        .and_then(|()| programming(root, agent, "dev", 100, &out));
    eprintln!(
        "==> bench smoke: {} in {:.1}s",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result
}

/// Whether the selected tests may include the image test: unless every `--test` target named
/// (before any `--`) is another one. Filters and package selections may include it.
fn wants_image(args: &[String]) -> bool {
    let cargo_args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| *a != "--")
        .collect();
    let mut targets = Vec::new();
    let mut it = cargo_args.iter();
    while let Some(arg) = it.next() {
        if *arg == "--test" {
            targets.extend(it.next().copied());
        } else if let Some(target) = arg.strip_prefix("--test=") {
            targets.push(target);
        }
    }
    targets.is_empty() || targets.contains(&IMAGE_TEST)
}

/// The integration test that runs the image (`tests/tests/image.rs`).
const IMAGE_TEST: &str = "image";

/// Whether cargo arguments (before any `--`) pick packages themselves.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("-p") || a.starts_with("--package") || a == "--workspace")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn package_selection_is_left_to_the_caller() {
        assert!(!selects_packages(&strings(&["some_filter"])));
        assert!(!selects_packages(&strings(&["f", "--", "-p"])));
        assert!(selects_packages(&strings(&["-p", "clusterip-tests"])));
        assert!(selects_packages(&strings(&["-pclusterip-tests"])));
        assert!(selects_packages(&strings(&["--package=xtask"])));
    }

    #[test]
    fn the_image_is_built_unless_other_tests_are_picked() {
        assert!(wants_image(&[]));
        assert!(wants_image(&strings(&["some_filter"])));
        assert!(wants_image(&strings(&["-p", "clusterip-tests"])));
        assert!(wants_image(&strings(&["--test", "image"])));
        assert!(wants_image(&strings(&["--test", "tcp", "--test=image"])));
        assert!(!wants_image(&strings(&["--test", "tcp"])));
        assert!(!wants_image(&strings(&[
            "--test=tcp",
            "--",
            "--test",
            "image"
        ])));
    }

    #[test]
    fn bench_options_become_bench_arguments() {
        let out = Path::new("/t/bench");
        assert_eq!(
            BenchOpts::default().args(out),
            strings(&["--out", "/t/bench"])
        );
        let opts = BenchOpts {
            parts: Some("socket,iptables".into()),
            services: Some("1,10000".into()),
            rounds: Some(3),
            smoke: true,
            ..Default::default()
        };
        assert_eq!(
            opts.args(out),
            strings(&[
                "--parts",
                "socket,iptables",
                "--services",
                "1,10000",
                "--rounds",
                "3",
                "--smoke",
                "--out",
                "/t/bench"
            ])
        );
    }

    #[test]
    fn agent_path_is_absolute() {
        let root = workspace_root();
        assert!(agent_bin_path(&root).is_absolute());
        assert!(agent_bin_path(&root).ends_with("debug/clusterip-agent"));
    }

    #[test]
    fn build_script_pins_the_same_nightly() {
        // The agent's build script cannot import xtask: it names the nightly itself.
        let script = include_str!("../../clusterip-agent/build.rs");
        assert!(
            script.contains(&format!("const EBPF_NIGHTLY: &str = \"{EBPF_NIGHTLY}\";")),
            "clusterip-agent/build.rs must pin {EBPF_NIGHTLY}"
        );
    }
}
