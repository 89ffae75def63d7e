//! `cargo xtask kernels`: boots Debian kernels under QEMU (TCG) and runs a clusterip smoke test
//! inside each: `clusterip-agent probe`, socket-level load balancing (TCP, UDP, a refused
//! connect), TC attach (TCX or netlink clsact), XDP attach, BPF_PROG_TEST_RUN of `tc_ingress` and
//! `xdp_ingress` on a real frame (bpftool), and TCP and UDP traffic through the TC path. Prints
//! a table kernel x check.
//!
//! A check passes, fails, or is DEGRADED: the documented fallback of an older kernel happened
//! (EPERM instead of ECONNREFUSED, netlink instead of TCX). `kernels/expected.toml` lists, per
//! kernel line, the degradations and the features `probe` reports missing. The command fails on
//! anything else: a failure, an undocumented degradation, a documented one that now passes, or
//! another set of missing features.
//!
//! Everything downloaded is cached under `target/kernels/`: the kernel (vmlinuz and the few
//! modules the test needs, ~13 MB each), Debian's static busybox, and the apt states used to
//! fetch them. QEMU (10.x from bookworm-backports, whose qemu-system-x86 keeps the machine's
//! qemu-utils 10) is installed on the host when missing. Kernels come through a private apt state
//! that is only ever used for `apt-get download`; nothing from newer suites is installed.
//!
//! The guest's `/init` is `kernels/init.sh`, run by busybox; it prints
//! `CIP-RESULT <check> PASS|FAIL|INFO <detail>` lines on the serial console and reboots, which
//! ends QEMU. A check without its line (panic, hang, timeout) is a failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    proc::{command, output, probe, run, wait_timeout},
    tasks,
};

/// The guest's /init.
const INIT_SCRIPT: &str = include_str!("kernels/init.sh");

/// The modules the guest loads (when they are modules and not built in), in this order.
/// inet_diag/udp_diag: sock_diag SOCK_DESTROY for UDP, which `probe` checks.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "inet_diag", "udp_diag"];

/// The checks the guest reports, in table order.
const CHECKS: &[&str] = &[
    "probe",
    "socket-tcp",
    "socket-udp",
    "refused",
    "tc",
    "xdp",
    "tc-testrun",
    "xdp-testrun",
    "tc-tcp",
    "tc-udp",
    "nodeport",
    "nodeport-local",
    "nodeport-snat",
];

/// Image packages of the current package lists whose parts are not on the mirror (one per line).
const UNAVAILABLE_FILE: &str = "unavailable";

/// Documented gaps per kernel line, in the repository.
const EXPECTED_FILE: &str = "kernels/expected.toml";

/// VMs running at once (the machine has 2 cores; TCG uses one per VM).
const PARALLEL: usize = 2;

/// Suites the kernels (and busybox-static) are downloaded from. Never used for `install`.
const KERNEL_SOURCES: &str = "\
deb http://deb.debian.org/debian-security bullseye-security main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian trixie-backports main
deb http://deb.debian.org/debian bookworm main
";

/// Suites QEMU is installed from: the host's own release and its backports.
const HOST_SOURCES: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
";

/// A kernel line: a name for the table and which `linux-image-*-cloud-amd64` packages belong
/// to it (the newest one is booted).
struct Line {
    name: &'static str,
    matches: fn(&str) -> bool,
}

const LINES: &[Line] = &[
    Line {
        name: "5.10",
        matches: |v| v.strip_prefix("5.10.0-").is_some_and(all_digits),
    },
    Line {
        name: "6.1",
        matches: |v| v.strip_prefix("6.1.0-").is_some_and(all_digits),
    },
    Line {
        name: "6.12",
        matches: |v| {
            v.strip_prefix("6.12.")
                .and_then(|r| r.strip_suffix("+deb12"))
                .is_some_and(all_digits)
        },
    },
    Line {
        name: "6.x",
        matches: |v| backports_version(v).is_some_and(|(major, minor)| major == 6 && minor >= 13),
    },
    Line {
        name: "7.x",
        matches: |v| backports_version(v).is_some_and(|(major, _)| major == 7),
    },
];

/// (major, minor) of a trixie(-backports) version "X.Y.Z+deb13".
fn backports_version(v: &str) -> Option<(u64, u64)> {
    let r = v.strip_suffix("+deb13")?;
    let parts: Vec<&str> = r.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| all_digits(p)) {
        return None;
    }
    Some((parts[0].parse().ok()?, parts[1].parse().ok()?))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The version inside `linux-image-<version>-cloud-amd64`.
fn image_version(package: &str) -> Option<&str> {
    package
        .strip_prefix("linux-image-")?
        .strip_suffix("-cloud-amd64")
}

/// Numbers in a version string, for ordering ("6.12.117+deb12" -> [6, 12, 117, 12]).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

/// The newest package of `line` among `packages`.
fn newest<'a>(line: &Line, packages: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    packages
        .into_iter()
        .filter(|p| image_version(p).is_some_and(line.matches))
        .max_by_key(|p| version_key(image_version(p).unwrap_or_default()))
}

/// A private apt state under the cache: sources, lists and downloaded archives.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: PathBuf, sources: &str) -> Result<Self> {
        fs::create_dir_all(dir.join("lists").join("partial"))?;
        fs::create_dir_all(dir.join("cache").join("archives").join("partial"))?;
        fs::write(dir.join("sources.list"), sources)?;
        Ok(Self { dir })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = command(program);
        cmd.arg("-o")
            .arg(format!(
                "Dir::Etc::sourcelist={}",
                self.dir.join("sources.list").display()
            ))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(format!(
                "Dir::State::Lists={}",
                self.dir.join("lists").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.dir.join("cache").display()));
        cmd
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    fn update(&self) -> Result<()> {
        run(self.cmd("apt-get").args(["-q", "update"]))
    }

    fn package_names(&self, prefix: &str) -> Result<Vec<String>> {
        let out = output(self.cmd("apt-cache").args(["pkgnames", prefix]))?;
        Ok(out.lines().map(|l| l.trim().to_string()).collect())
    }

    /// The `linux-binary-*` / `linux-modules-*` packages an image package depends on (from 7.x
    /// the image package is only a meta package).
    fn kernel_parts(&self, image: &str) -> Result<Vec<String>> {
        let out = output(
            self.cmd("apt-cache")
                .args(["show", "--no-all-versions", image]),
        )?;
        let depends = out
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .unwrap_or_default();
        Ok(depends
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .filter(|d| d.starts_with("linux-binary-") || d.starts_with("linux-modules-"))
            .map(str::to_string)
            .collect())
    }

    /// Whether the image and every part it depends on have a downloadable version (one
    /// `apt-cache show` for all: a stanza with a `Filename:` per package).
    fn downloadable(&self, image: &str) -> Result<bool> {
        let mut packages = vec![image.to_string()];
        packages.extend(self.kernel_parts(image)?);
        let out = output(
            self.cmd("apt-cache")
                .args(["show", "--no-all-versions"])
                .args(&packages),
        )
        .unwrap_or_default();
        let with_file: BTreeSet<&str> = out
            .split("\n\n")
            .filter(|stanza| stanza.lines().any(|l| l.starts_with("Filename:")))
            .filter_map(|stanza| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix("Package:"))
                    .map(str::trim)
            })
            .collect();
        Ok(packages.iter().all(|p| with_file.contains(p.as_str())))
    }

    /// `apt-get download` into `dir`; returns the .deb files it holds afterwards.
    fn download(&self, packages: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        run(self
            .cmd("apt-get")
            .current_dir(dir)
            .args(["-q", "download"])
            .args(packages))?;
        let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        debs.sort();
        Ok(debs)
    }
}

/// A kernel ready to boot, from the cache.
struct Kernel {
    line: &'static str,
    package: String,
    dir: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }
    fn release(&self) -> String {
        fs::read_to_string(self.dir.join("release"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| self.package.clone())
    }
}

pub fn kernels(
    root: &Path,
    refresh: bool,
    only: &[String],
    timeout: Duration,
    no_build: bool,
) -> Result<()> {
    // Read first: a broken expectations file should not cost a build and five boots.
    let expected_path = root.join(EXPECTED_FILE);
    let expected = parse_expected(
        &fs::read_to_string(&expected_path)
            .with_context(|| format!("reading {}", expected_path.display()))?,
    )
    .with_context(|| format!("parsing {}", expected_path.display()))?;
    if !no_build {
        tasks::build(root)?;
    }
    let target = tasks::target_dir(root);
    let cache = target.join("kernels");
    fs::create_dir_all(&cache)?;
    let started = Instant::now();
    eprintln!("==> kernels: cache {}", cache.display());
    ensure_qemu(&cache)?;

    let apt = Apt::new(cache.join("apt"), KERNEL_SOURCES)?;
    if refresh || !apt.has_lists() {
        apt.update()?;
        // New lists: packages found incomplete before may be complete now.
        let _ = fs::remove_file(cache.join(UNAVAILABLE_FILE));
    }
    let busybox = fetch_busybox(&apt, &cache)?;
    // The image (with copies of the binaries) right after the build: others building in the
    // same target directory may replace target/debug/clusterip-agent while kernels download.
    let debug = target.join("debug");
    let bins = [
        (debug.join("clusterip-agent"), "usr/bin/clusterip-agent"),
        (debug.join("cip-client"), "usr/bin/cip-client"),
        (debug.join("cip-backend"), "usr/bin/cip-backend"),
    ];
    let base = base_image(&cache, &busybox, &bins)?;

    let images = apt.package_names("linux-image-")?;
    let mut kernels = Vec::new();
    for line in LINES {
        if !only.is_empty() && !only.iter().any(|o| o == line.name) {
            continue;
        }
        kernels.push(fetch_kernel(&apt, &cache, line, &images)?);
    }
    let fetched = started.elapsed();
    eprintln!(
        "==> kernels: {} kernels ready in {:.1}s: {}",
        kernels.len(),
        fetched.as_secs_f64(),
        kernels
            .iter()
            .map(|k| k.package.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let run_dir = cache.join("run");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let logs = cache.join("logs");
    fs::create_dir_all(&logs)?;
    let mut jobs = Vec::new();
    for kernel in &kernels {
        let initrd = run_dir.join(format!("{}.cpio.gz", kernel.line));
        let mut image = base.clone();
        add_modules(&mut image, kernel)?;
        write_initramfs(&image, &initrd)?;
        jobs.push((kernel, initrd, logs.join(format!("{}.log", kernel.line))));
    }

    // At most PARALLEL VMs at once.
    let queue = Arc::new(Mutex::new(jobs.iter().enumerate().collect::<Vec<_>>()));
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    thread::scope(|s| {
        for _ in 0..PARALLEL {
            let queue = Arc::clone(&queue);
            let outcomes = Arc::clone(&outcomes);
            s.spawn(move || {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((i, (kernel, initrd, log))) = next else {
                        break;
                    };
                    eprintln!("==> kernels: booting {} ({})", kernel.line, kernel.package);
                    let outcome = boot(kernel, initrd, log, timeout);
                    match &outcome {
                        Ok(o) => eprintln!(
                            "==> kernels: {} finished in {:.1}s{}",
                            kernel.line,
                            o.elapsed.as_secs_f64(),
                            if o.timed_out { " (timed out)" } else { "" }
                        ),
                        Err(e) => eprintln!("==> kernels: {}: {e:#}", kernel.line),
                    }
                    if let Ok(mut outcomes) = outcomes.lock() {
                        outcomes.insert(i, outcome);
                    }
                }
            });
        }
    });
    let _ = fs::remove_dir_all(&run_dir);

    let outcomes = Arc::try_unwrap(outcomes)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for (i, (kernel, _, log)) in jobs.iter().enumerate() {
        let outcome = outcomes.get(&i);
        let (results, elapsed, note) = match outcome {
            Some(Ok(o)) => (
                o.results.clone(),
                format!("{:.1}s", o.elapsed.as_secs_f64()),
                if o.timed_out {
                    "timed out".to_string()
                } else {
                    String::new()
                },
            ),
            Some(Err(e)) => (BTreeMap::new(), "-".into(), format!("{e:#}")),
            None => (BTreeMap::new(), "-".into(), "not run".into()),
        };
        let release = results
            .get("kernel")
            .map(|r| r.detail.clone())
            .unwrap_or_else(|| kernel.release());
        let empty = LineExpectations::default();
        let exp = expected.get(kernel.line).unwrap_or(&empty);
        let mut cells = vec![kernel.line.to_string(), release, elapsed];
        for check in CHECKS {
            let (cell, problem) = judge(check, results.get(*check), exp, &note, log);
            if let Some(p) = problem {
                problems.push(format!("{} {check}: {p}", kernel.line));
            }
            if let Some(r) = results.get(*check) {
                details.push(format!(
                    "{} {check}: {} {}",
                    kernel.line, r.verdict, r.detail
                ));
            }
            cells.push(cell);
        }
        for (check, r) in &results {
            if !CHECKS.contains(&check.as_str()) && r.verdict == "FAIL" {
                problems.push(format!("{} {check}: {}", kernel.line, r.detail));
            }
        }
        rows.push(cells);
    }
    println!();
    for d in &details {
        println!("  {d}");
    }
    print_table(&rows);
    println!(
        "expected = a degradation {EXPECTED_FILE} documents for that kernel; serial logs in {}",
        logs.display()
    );
    eprintln!(
        "==> kernels: downloads/cache {:.1}s, total {:.1}s",
        fetched.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        bail!(
            "{} unexpected result(s) (failures, undocumented degradations, or documented gaps \
             that are gone: update {EXPECTED_FILE} if the kernel really changed)",
            problems.len()
        )
    }
}

/// The table cell of one check and, if the result is not what `exp` says, why.
fn judge(
    check: &str,
    result: Option<&CheckResult>,
    exp: &LineExpectations,
    note: &str,
    log: &Path,
) -> (String, Option<String>) {
    let Some(r) = result else {
        let why = if note.is_empty() {
            "no result line"
        } else {
            note
        };
        return (
            format!("FAIL ({why})"),
            Some(format!("{why} (see {})", log.display())),
        );
    };
    let documented = exp.degraded.get(check);
    if check == "probe" {
        // "missing=a,b,c": compare with the documented set.
        let found: BTreeSet<String> = r
            .detail
            .rsplit("missing=")
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "none")
            .collect();
        if r.verdict != "PASS" {
            return ("FAIL".into(), Some(r.detail.clone()));
        }
        if found != exp.probe_missing {
            let extra: Vec<_> = found.difference(&exp.probe_missing).cloned().collect();
            let gone: Vec<_> = exp.probe_missing.difference(&found).cloned().collect();
            return (
                "FAIL (missing features differ)".into(),
                Some(format!(
                    "probe reports missing {found:?}; {EXPECTED_FILE} says {:?} \
                     (newly missing: {extra:?}; now found: {gone:?})",
                    exp.probe_missing
                )),
            );
        }
        let cell = if found.is_empty() {
            "PASS (all found)".to_string()
        } else {
            format!(
                "PASS (missing as expected: {})",
                found.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        return (cell, None);
    }
    match (r.verdict.as_str(), documented) {
        ("PASS", None) => ("PASS".into(), None),
        ("PASS", Some(reason)) => (
            "PASS (documented gap gone)".into(),
            Some(format!(
                "passes, but {EXPECTED_FILE} documents a degradation here ({reason}): remove it"
            )),
        ),
        ("DEGRADED", Some(_)) => (format!("expected: {}", short(&r.detail)), None),
        ("DEGRADED", None) => (
            format!("DEGRADED: {}", short(&r.detail)),
            Some(format!("undocumented degradation: {}", r.detail)),
        ),
        (verdict, _) => (verdict.to_string(), Some(r.detail.clone())),
    }
}

/// The part of a detail after the last ": " (the mode or errno), for a table cell.
fn short(detail: &str) -> String {
    detail.rsplit(": ").next().unwrap_or(detail).to_string()
}

/// What `kernels/expected.toml` says about one kernel line.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
struct LineExpectations {
    /// `probe-missing = [..]`: the features `clusterip-agent probe` reports missing.
    #[serde(default, rename = "probe-missing")]
    probe_missing: BTreeSet<String>,
    /// `<check> = "why"`: the check is expected DEGRADED (the documented fallback).
    #[serde(flatten)]
    degraded: BTreeMap<String, String>,
}

/// The file: `[kernels."<line>"]` tables and nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFile {
    #[serde(default)]
    kernels: BTreeMap<String, LineExpectations>,
}

/// Parses `kernels/expected.toml` and checks that it names only known kernel lines and
/// checks.
fn parse_expected(text: &str) -> Result<BTreeMap<String, LineExpectations>> {
    let file: ExpectedFile = toml::from_str(text)?;
    for (name, line) in &file.kernels {
        if !LINES.iter().any(|l| l.name == name) {
            bail!(
                "no kernel line {name:?} (lines: {})",
                LINES.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(key) = line
            .degraded
            .keys()
            .find(|k| !CHECKS.contains(&k.as_str()) || *k == "probe")
        {
            bail!(
                "[kernels.{name:?}]: unknown key {key:?} (probe-missing, or a check: {})",
                CHECKS.join(", ")
            );
        }
    }
    Ok(file.kernels)
}

fn print_table(rows: &[Vec<String>]) {
    let mut header = vec!["kernel", "release", "boot+test"];
    header.extend(CHECKS);
    println!("| {} |", header.join(" | "));
    println!(
        "|{}",
        header.iter().map(|_| "---|").collect::<Vec<_>>().concat()
    );
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        println!("| {} |", cells.join(" | "));
    }
    println!();
}

/// Installs qemu-system-x86 from bookworm-backports when `qemu-system-x86_64` is missing.
fn ensure_qemu(cache: &Path) -> Result<()> {
    if probe(command("qemu-system-x86_64").arg("--version"))?.is_some() {
        return Ok(());
    }
    eprintln!("==> kernels: installing qemu-system-x86 from bookworm-backports");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("qemu-system-x86_64 is missing and installing it needs root");
    }
    let apt = Apt::new(cache.join("apt-host"), HOST_SOURCES)?;
    apt.update()?;
    run(apt
        .cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "-q",
            "install",
            "-y",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
            "qemu-system-x86",
        ]))
}

/// Extracts a .deb into `dir`.
fn extract(deb: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    run(command("dpkg-deb").arg("-x").arg(deb).arg(dir))
}

fn fetch_busybox(apt: &Apt, cache: &Path) -> Result<PathBuf> {
    let busybox = cache.join("busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    let tmp = cache.join("tmp-busybox");
    let _ = fs::remove_dir_all(&tmp);
    let debs = apt.download(&["busybox-static".to_string()], &tmp)?;
    let deb = debs
        .first()
        .context("apt-get download busybox-static left no .deb")?;
    let tree = tmp.join("tree");
    extract(deb, &tree)?;
    fs::copy(tree.join("bin").join("busybox"), &busybox)
        .context("busybox-static has no bin/busybox")?;
    fs::remove_dir_all(&tmp)?;
    Ok(busybox)
}

/// The newest kernel of `line` (downloaded once), else the newest one already cached.
fn fetch_kernel(apt: &Apt, cache: &Path, line: &Line, images: &[String]) -> Result<Kernel> {
    let cached = || -> Option<Kernel> {
        let entries = fs::read_dir(cache.join("k")).ok()?;
        let names: Vec<String> = entries
            .flatten()
            .filter(|e| is_complete(&e.path()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let package = newest(line, names.iter().map(String::as_str))?.to_string();
        Some(Kernel {
            line: line.name,
            dir: cache.join("k").join(&package),
            package,
        })
    };
    // Newest first. Debian drops the modules packages of older backports kernels from the
    // mirror while their image meta packages stay listed: skip what cannot be downloaded.
    let mut candidates: Vec<&str> = images
        .iter()
        .map(String::as_str)
        .filter(|p| image_version(p).is_some_and(line.matches))
        .collect();
    candidates
        .sort_by_key(|p| std::cmp::Reverse(version_key(image_version(p).unwrap_or_default())));
    let mut last_err = None;
    for package in candidates.into_iter().take(8) {
        let dir = cache.join("k").join(package);
        let kernel = Kernel {
            line: line.name,
            package: package.to_string(),
            dir: dir.clone(),
        };
        if is_complete(&dir) {
            return Ok(kernel);
        }
        let unavailable_path = cache.join(UNAVAILABLE_FILE);
        let unavailable = fs::read_to_string(&unavailable_path).unwrap_or_default();
        if unavailable.lines().any(|l| l == package) {
            continue;
        }
        match apt.downloadable(package) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!(
                    "==> kernels: {package}: not all its packages are on the mirror, skipped"
                );
                let _ = fs::write(&unavailable_path, format!("{unavailable}{package}\n"));
                continue;
            }
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        }
        eprintln!("==> kernels: fetching {package}");
        match download_kernel(apt, cache, package, &dir) {
            Ok(()) => return Ok(kernel),
            Err(e) => {
                eprintln!("warning: {package}: {e:#}");
                last_err = Some(e);
            }
        }
    }
    match (cached(), last_err) {
        (Some(old), _) => {
            eprintln!(
                "warning: kernel line {}: using the cached {}",
                line.name, old.package
            );
            Ok(old)
        }
        (None, Some(e)) => Err(e),
        (None, None) => bail!(
            "no downloadable linux-image package for kernel line {}",
            line.name
        ),
    }
}

fn download_kernel(apt: &Apt, cache: &Path, package: &str, dir: &Path) -> Result<()> {
    let tmp = cache.join(format!("tmp-{package}"));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(dir);
    let mut packages = vec![package.to_string()];
    packages.extend(apt.kernel_parts(package)?);
    let debs = apt.download(&packages, &tmp)?;
    let tree = tmp.join("tree");
    for deb in &debs {
        extract(deb, &tree)?;
    }
    fs::create_dir_all(dir.join("modules"))?;

    // /boot/vmlinuz-<release>, or (7.x) /usr/lib/modules/<release>/vmlinuz.
    let vmlinuz = fs::read_dir(tree.join("boot"))
        .into_iter()
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .or_else(|| {
            fs::read_dir(tree.join("usr/lib/modules"))
                .into_iter()
                .flat_map(|entries| entries.flatten().map(|e| e.path().join("vmlinuz")))
                .find(|p| p.is_file())
        })
        .context("no vmlinuz in the kernel packages")?;
    fs::copy(&vmlinuz, dir.join("vmlinuz"))?;

    // lib/modules/<release> or usr/lib/modules/<release> (merged /usr).
    let modroot = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|d| fs::read_dir(tree.join(d)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .context("no lib/modules/<release>/kernel in the kernel packages")?;
    let release = modroot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::write(dir.join("release"), format!("{release}\n"))?;
    // modules.dep is made by depmod at install time and not shipped: dependencies come from
    // each module's own `.modinfo` (`depends=a,b`).
    let mut files = BTreeMap::new();
    index_modules(&modroot.join("kernel"), &mut files)?;
    let builtin = fs::read_to_string(modroot.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin
        .lines()
        .filter_map(module_name)
        .map(|n| n.replace('-', "_"))
        .collect();
    let mut names = Vec::new();
    for name in MODULES {
        if builtin.contains(*name) {
            continue;
        }
        add_module(name, &files, &dir.join("modules"), &mut names, 0)
            .with_context(|| format!("{package}: module {name}"))?;
    }
    fs::write(dir.join("modules").join("order"), names.join("\n") + "\n")?;
    fs::write(dir.join("package"), format!("{package}\n"))?;
    fs::remove_dir_all(&tmp)?;
    fs::write(dir.join("ok"), MODULES.join(" ") + "\n")?;
    Ok(())
}

/// A cached kernel is complete when it was extracted with the current module list.
fn is_complete(dir: &Path) -> bool {
    fs::read_to_string(dir.join("ok")).is_ok_and(|s| s.trim() == MODULES.join(" "))
}

/// "kernel/net/core/veth.ko.xz" -> "veth" (modules.dep and modules.builtin spell '-' or '_').
fn module_name(path: &str) -> Option<&str> {
    let file = path.trim().rsplit('/').next()?;
    file.split(".ko").next().filter(|n| !n.is_empty())
}

/// Module name (with '_') -> file, for every module under `dir`.
fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = path.to_str().and_then(module_name) {
            files.insert(name.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

/// Decompresses module `name` into `out` (as `<name>.ko`) after its dependencies, appending
/// file names to `order` in load order.
fn add_module(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    out: &Path,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<()> {
    let file = format!("{name}.ko");
    if order.contains(&file) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies nest too deep at {name}");
    }
    let src = files
        .get(name)
        .with_context(|| format!("{name} is neither built in nor a module"))?;
    let dst = out.join(&file);
    let src_name = src.to_string_lossy();
    let decompressor = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .iter()
        .find(|(ext, _)| src_name.ends_with(ext))
        .map(|(_, tool)| *tool);
    match decompressor {
        Some(tool) => {
            let f = fs::File::create(&dst)?;
            let status = command(tool)
                .arg("-dc")
                .arg(src)
                .stdout(f)
                .status()
                .with_context(|| format!("cannot start {tool}"))?;
            if !status.success() {
                bail!("{tool} -dc {} failed ({status})", src.display());
            }
        }
        None => {
            fs::copy(src, &dst)?;
        }
    }
    for dep in modinfo_depends(&fs::read(&dst)?) {
        add_module(&dep, files, out, order, depth + 1)?;
    }
    order.push(file);
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` (NUL-separated `key=value` strings).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .map(|d| d.trim().replace('-', "_"))
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// An initramfs entry.
#[derive(Clone)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

type Image = BTreeMap<String, Entry>;

/// Adds `path`'s parent directories and the entry.
fn add(image: &mut Image, path: &str, entry: Entry) {
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        image.entry(prefix.clone()).or_insert(Entry::Dir);
    }
    image.insert(parts.join("/"), entry);
}

fn add_file(image: &mut Image, path: &str, src: &Path, mode: u32) -> Result<()> {
    let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    add(image, path, Entry::File { data, mode });
    Ok(())
}

/// Everything but the kernel's modules: busybox, /init, the (stripped) binaries, `ip`, and the
/// shared libraries they need.
fn base_image(cache: &Path, busybox: &Path, bins: &[(PathBuf, &str)]) -> Result<Image> {
    let mut image = Image::new();
    for dir in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "sbin"] {
        add(&mut image, dir, Entry::Dir);
    }
    add(
        &mut image,
        "dev/console",
        Entry::CharDev { major: 5, minor: 1 },
    );
    add(
        &mut image,
        "dev/null",
        Entry::CharDev { major: 1, minor: 3 },
    );
    add_file(&mut image, "bin/busybox", busybox, 0o755)?;
    add(&mut image, "bin/sh", Entry::Symlink("busybox".into()));
    add(
        &mut image,
        "init",
        Entry::File {
            data: INIT_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        },
    );
    add(
        &mut image,
        "etc/passwd",
        Entry::File {
            data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            mode: 0o644,
        },
    );

    let stripped = cache.join("bin");
    fs::create_dir_all(&stripped)?;
    let mut elf = Vec::new();
    for (src, dst) in bins {
        if !src.is_file() {
            bail!("{} is missing: run `cargo xtask build`", src.display());
        }
        let name = src.file_name().context("binary without a name")?;
        let small = stripped.join(name);
        // A debug build is ~100 MB; stripped it is a few MB.
        let ok = probe(command("strip").arg("-o").arg(&small).arg(src))?.is_some();
        let from = if ok { small } else { src.clone() };
        add_file(&mut image, dst, &from, 0o755)?;
        elf.push(src.clone());
    }
    // iproute2's ip (busybox's cannot create veth pairs) and bpftool (`prog run`: the
    // BPF_PROG_TEST_RUN checks); `cargo xtask setup` installs bpftool.
    for (tool, package) in [("ip", "iproute2"), ("bpftool", "bpftool")] {
        let path = Path::new("/usr/sbin").join(tool);
        if !path.is_file() {
            bail!("{} ({package}) is missing", path.display());
        }
        add_file(&mut image, &format!("usr/sbin/{tool}"), &path, 0o755)?;
        elf.push(path);
    }
    // Two TCP SYNs from 10.0.1.2 to the guest's service 10.96.0.10:80 (different source
    // ports: each test run makes its own conntrack entry).
    for (name, sport) in [("tcp-syn-a", 40_001), ("tcp-syn-b", 40_002)] {
        let frame = tcp_syn([10, 0, 1, 2], sport, [10, 96, 0, 10], 80);
        add(
            &mut image,
            &format!("pkt/{name}.bin"),
            Entry::File {
                data: frame,
                mode: 0o644,
            },
        );
    }

    let mut libs = BTreeSet::new();
    for bin in &elf {
        let out = output(command("ldd").arg(bin))?;
        libs.extend(ldd_paths(&out));
    }
    for lib in libs {
        let real = fs::canonicalize(&lib).with_context(|| format!("resolving {lib}"))?;
        add_file(&mut image, &lib, &real, 0o755)?;
    }
    Ok(image)
}

/// An Ethernet frame with an IPv4 TCP SYN, checksums filled in.
fn tcp_syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
    fn sum16(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let csum = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes()); // seq
    tcp.extend_from_slice(&0u32.to_be_bytes()); // ack
    tcp.extend_from_slice(&[5 << 4, 0x02]); // data offset 5, SYN
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let csum = fold(sum16(&pseudo));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// Absolute library paths in `ldd` output (including the dynamic loader).
fn ldd_paths(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

fn add_modules(image: &mut Image, kernel: &Kernel) -> Result<()> {
    let dir = kernel.modules_dir();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            add_file(image, &format!("modules/{name}"), &path, 0o644)?;
        }
    }
    Ok(())
}

/// Writes `image` as a gzip-compressed newc cpio archive.
fn write_initramfs(image: &Image, path: &Path) -> Result<()> {
    let mut cpio = Vec::new();
    for (ino, (name, entry)) in image.iter().enumerate() {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir => (0o040755, &[], (0, 0)),
            Entry::File { data, mode } => (0o100000 | mode, data, (0, 0)),
            Entry::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
            Entry::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
        };
        cpio_entry(&mut cpio, ino as u32 + 1, name, mode, data, rdev)?;
    }
    cpio_entry(&mut cpio, 0, "TRAILER!!!", 0, &[], (0, 0))?;
    let raw = path.with_extension("");
    fs::write(&raw, &cpio)?;
    let out = fs::File::create(path)?;
    let status = command("gzip")
        .args(["-1", "-c"])
        .arg(&raw)
        .stdout(out)
        .status()
        .context("cannot start gzip")?;
    fs::remove_file(&raw)?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    Ok(())
}

fn cpio_entry(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<()> {
    let size = u32::try_from(data.len()).context("file too large for cpio")?;
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        0,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.push(0);
    pad4(out);
    out.write_all(data)?;
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// What one VM reported.
struct Outcome {
    results: BTreeMap<String, CheckResult>,
    elapsed: Duration,
    timed_out: bool,
}

#[derive(Clone)]
struct CheckResult {
    verdict: String,
    detail: String,
}

/// `CIP-RESULT <check> <verdict> <detail>` lines of a serial log (the first line per check).
fn parse_results(log: &str) -> BTreeMap<String, CheckResult> {
    let mut results = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split_once("CIP-RESULT ").map(|(_, r)| r) else {
            continue;
        };
        let mut parts = rest.trim_end_matches('\r').splitn(3, ' ');
        let (Some(check), Some(verdict)) = (parts.next(), parts.next()) else {
            continue;
        };
        let detail = parts.next().unwrap_or_default().trim().to_string();
        results
            .entry(check.to_string())
            .or_insert_with(|| CheckResult {
                verdict: verdict.to_string(),
                detail,
            });
    }
    results
}

/// Boots one kernel with the initramfs, serial console to `log`; kills QEMU after `timeout`.
fn boot(kernel: &Kernel, initrd: &Path, log: &Path, timeout: Duration) -> Result<Outcome> {
    let started = Instant::now();
    let file = fs::File::create(log)?;
    let mut child: Child = command("qemu-system-x86_64")
        .args(["-accel", "tcg", "-smp", "1", "-m", "1024", "-nographic"])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let timed_out = !wait_timeout(&mut child, timeout)?;
    if timed_out {
        // Our own child, by its handle.
        let _ = child.kill();
        let _ = child.wait();
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&fs::read(log)?).into_owned();
    // Make the log readable by anyone looking at it later.
    let _ = fs::set_permissions(log, fs::Permissions::from_mode(0o644));
    Ok(Outcome {
        results: parse_results(&text),
        elapsed,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGES: &[&str] = &[
        "linux-image-5.10.0-43-cloud-amd64",
        "linux-image-5.10.0-46-cloud-amd64",
        "linux-image-6.1-cloud-amd64",
        "linux-image-6.1.0-0.deb11.52-cloud-amd64",
        "linux-image-6.1.0-9-cloud-amd64",
        "linux-image-6.1.0-56-cloud-amd64",
        "linux-image-6.12.117+deb12-cloud-amd64",
        "linux-image-6.12.99+deb12-cloud-amd64",
        "linux-image-6.19.14+deb13-cloud-amd64",
        "linux-image-7.3.4+deb13-cloud-amd64",
        "linux-image-7.10.1+deb13-cloud-amd64",
        "linux-image-7.3.4+deb13-amd64",
    ];

    #[test]
    fn picks_the_newest_package_of_each_line() {
        let pick = |name| {
            let line = LINES.iter().find(|l| l.name == name).unwrap();
            newest(line, IMAGES.iter().copied())
        };
        assert_eq!(pick("5.10"), Some("linux-image-5.10.0-46-cloud-amd64"));
        assert_eq!(pick("6.1"), Some("linux-image-6.1.0-56-cloud-amd64"));
        assert_eq!(pick("6.12"), Some("linux-image-6.12.117+deb12-cloud-amd64"));
        assert_eq!(pick("6.x"), Some("linux-image-6.19.14+deb13-cloud-amd64"));
        assert_eq!(pick("7.x"), Some("linux-image-7.10.1+deb13-cloud-amd64"));
    }

    #[test]
    fn the_repository_expectations_parse() {
        let text = include_str!("../../kernels/expected.toml");
        let exp = parse_expected(text).unwrap();
        assert!(exp["5.10"].probe_missing.contains("bpf_set_retval"));
        assert!(exp["5.10"].degraded.contains_key("refused"));
        assert!(exp["6.12"].probe_missing.is_empty() && exp["6.12"].degraded.is_empty());
        assert!(parse_expected("[kernels.\"4.19\"]\n").is_err());
        assert!(parse_expected("[kernels.\"6.1\"]\nsocket-lb = \"x\"\n").is_err());
        assert!(parse_expected("tc = \"x\"\n").is_err());
    }

    #[test]
    fn judges_results_against_expectations() {
        let exp =
            parse_expected("[kernels.\"5.10\"]\nprobe-missing = [\"tcx\"]\nrefused = \"EPERM\"\n")
                .unwrap();
        let exp = &exp["5.10"];
        let r = |verdict: &str, detail: &str| CheckResult {
            verdict: verdict.into(),
            detail: detail.into(),
        };
        let log = Path::new("/log");
        let judge1 = |check, res: &CheckResult| judge(check, Some(res), exp, "", log);
        assert!(judge1("refused", &r("DEGRADED", "x: EPERM")).1.is_none());
        assert!(judge1("refused", &r("PASS", "ok")).1.is_some(), "gap gone");
        assert!(
            judge1("tc", &r("DEGRADED", "netlink")).1.is_some(),
            "undocumented"
        );
        assert!(judge1("tc", &r("FAIL", "x")).1.is_some());
        assert!(judge1("tc", &r("PASS", "tcx")).1.is_none());
        assert!(judge1("probe", &r("PASS", "missing=tcx")).1.is_none());
        assert!(judge1("probe", &r("PASS", "missing=tcx,btf")).1.is_some());
        assert!(judge1("probe", &r("PASS", "missing=none")).1.is_some());
        assert!(judge("tc", None, exp, "timed out", log).1.is_some());
    }

    #[test]
    fn syn_frame_checksums_verify() {
        let f = tcp_syn([10, 0, 1, 2], 40_001, [10, 96, 0, 10], 80);
        assert_eq!(f.len(), 54);
        let sum = |d: &[u8]| {
            let mut s: u32 = d
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s
        };
        assert_eq!(sum(&f[14..34]), 0xffff, "IPv4 header checksum");
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&f[34..54]);
        assert_eq!(sum(&pseudo), 0xffff, "TCP checksum");
        assert_eq!(&f[30..34], &[10, 96, 0, 10]);
        assert_eq!(&f[36..38], &80u16.to_be_bytes());
    }

    #[test]
    fn reads_dependencies_from_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=nf_conntrack,libcrc32c\0intree=Y\0";
        assert_eq!(modinfo_depends(ko), ["nf_conntrack", "libcrc32c"]);
        assert!(modinfo_depends(b"\0depends=\0name=veth\0").is_empty());
    }

    #[test]
    fn parses_result_lines_and_ldd_output() {
        let log = "boot noise\r\nCIP-RESULT kernel INFO 6.1.0-56-cloud-amd64\r\n\
                   x CIP-RESULT tc PASS tc_ingress on v0: tcx\r\nCIP-RESULT tc FAIL later\n";
        let r = parse_results(log);
        assert_eq!(r["kernel"].detail, "6.1.0-56-cloud-amd64");
        assert_eq!(r["tc"].verdict, "PASS");
        assert_eq!(r["tc"].detail, "tc_ingress on v0: tcx");
        let ldd = "\tlinux-vdso.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            ldd_paths(ldd),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn cpio_headers_are_110_bytes_and_padded() {
        let mut out = Vec::new();
        cpio_entry(&mut out, 1, "init", 0o100755, b"abc", (0, 0)).unwrap();
        assert_eq!(&out[..6], b"070701");
        // header 110 + "init\0" 5 = 115 -> 116, data 3 -> 120
        assert_eq!(out.len(), 120);
    }
}
