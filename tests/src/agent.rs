//! The agent under test: process, captured output, `dump --json`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Every line a process printed (stdout and stderr interleaved, ANSI escapes removed), each
/// prefixed with a tag (the agent's run number), and a wait for a given line.
#[derive(Default)]
pub struct LineLog {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl LineLog {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
        self.changed.notify_all();
    }

    /// Collects the lines of `pipe` in a thread of its own until EOF, as `<tag>: <line>`.
    pub fn capture(self: &Arc<Self>, pipe: impl Read + Send + 'static, tag: String) {
        let log = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                log.push(format!("{tag}: {}", strip_ansi(&line)));
            }
        });
    }

    /// Number of lines logged so far; a mark for [`LineLog::wait_line`].
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for a line logged at or after index `from` that contains every one of
    /// `patterns`; fails after `timeout`, or as soon as `exited` reports that the process
    /// ended (with everything it logged).
    pub fn wait_line(
        &self,
        from: usize,
        patterns: &[&str],
        timeout: Duration,
        mut exited: impl FnMut() -> Option<ExitStatus>,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(l) = lines
                    .iter()
                    .skip(from)
                    .find(|l| patterns.iter().all(|p| l.contains(p)))
                {
                    return Ok(l.clone());
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wait = (deadline - now).min(Duration::from_millis(50));
                drop(self.changed.wait_timeout(lines, wait));
            }
            if let Some(status) = exited() {
                // Let the reader threads collect the last lines before reporting.
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "the process exited ({status}) while waiting for a line with {patterns:?}; \
                     log:\n{}",
                    self.lines().join("\n")
                );
            }
        }
        bail!(
            "no line with {patterns:?} within {timeout:?}; log:\n{}",
            self.lines().join("\n")
        )
    }
}

/// The agent's log filter in tests: its own debug lines, not the eBPF programs'.
pub const DEFAULT_RUST_LOG: &str = "info,clusterip_agent=debug";

/// `--node-name` of an agent started without one: the node every
/// [`crate::manifests::Endpoint::ready`] is on, so single-node tests see their endpoints as
/// local.
pub const DEFAULT_NODE_NAME: &str = "node-a";

/// `clusterip-agent run` for one test; killed on drop, its output then printed to stderr.
pub struct Agent {
    bin: PathBuf,
    manifests: PathBuf,
    cgroup: PathBuf,
    bpffs: PathBuf,
    /// The network namespace to run in (setns before exec); None: the test's own.
    netns: Option<std::fs::File>,
    /// More arguments after the standard ones.
    extra: Vec<String>,
    /// `--node-name`: decides which endpoints are local (`internalTrafficPolicy: Local`).
    node_name: String,
    source: AgentSource,
    /// RUST_LOG of the agent.
    rust_log: String,
    child: Option<Child>,
    runs: u32,
    /// Index in the log where the current run started.
    run_start: usize,
    log: Arc<LineLog>,
}

/// Where the agent under test reads Services from.
#[derive(Clone, Debug)]
enum AgentSource {
    /// `--manifests` (the `manifests` path).
    Manifests,
    /// `--kubeconfig PATH`: the Kubernetes API (a [`crate::fakeapi`] server).
    Kubeconfig(PathBuf),
}

impl Agent {
    /// Starts `BIN run --kubeconfig KUBECONFIG --cgroup CG --bpffs BPFFS --node-name node-a`
    /// (inside `netns` if given, with `extra` arguments).
    pub fn start_kube(
        bin: &Path,
        kubeconfig: &Path,
        cgroup: &Path,
        bpffs: &Path,
        netns: Option<&crate::netns::Netns>,
        extra: &[&str],
    ) -> Result<Self> {
        let source = AgentSource::Kubeconfig(kubeconfig.to_owned());
        Self::launch(
            bin,
            source,
            Path::new(""),
            cgroup,
            bpffs,
            netns,
            DEFAULT_NODE_NAME,
            extra,
        )
    }

    /// The address the current run serves /metrics, /healthz and /readyz on (from its log;
    /// waits up to `timeout` for the line).
    pub fn metrics_addr(&mut self, timeout: Duration) -> Result<std::net::SocketAddr> {
        let line = self.wait_line_since(self.run_start, &["serving /metrics"], timeout)?;
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in {line:?}"))
    }

    /// The address the current run serves kube-proxy's /healthz and /livez on (from its log;
    /// waits up to `timeout` for the line).
    pub fn healthz_addr(&mut self, timeout: Duration) -> Result<std::net::SocketAddr> {
        let line =
            self.wait_line_since(self.run_start, &["serving /healthz and /livez"], timeout)?;
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in {line:?}"))
    }

    /// Starts `BIN run --manifests DIR --cgroup CG --bpffs BPFFS --node-name node-a`
    /// ([`DEFAULT_NODE_NAME`]).
    pub fn start(bin: &Path, manifests: &Path, cgroup: &Path, bpffs: &Path) -> Result<Self> {
        Self::start_in(bin, manifests, cgroup, bpffs, None, &[])
    }

    /// [`Agent::start`] inside `netns` (entered with setns between fork and exec, so /sys and
    /// bpffs stay the test's), with `extra` arguments appended (`--tc-iface cip*`, ...).
    pub fn start_in(
        bin: &Path,
        manifests: &Path,
        cgroup: &Path,
        bpffs: &Path,
        netns: Option<&crate::netns::Netns>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_as(
            DEFAULT_NODE_NAME,
            bin,
            manifests,
            cgroup,
            bpffs,
            netns,
            extra,
        )
    }

    /// [`Agent::start_in`] as node `node_name` (`--node-name`): the multi-node lab runs one
    /// agent per node on the same manifests, each seeing its own endpoints as local.
    pub fn start_as(
        node_name: &str,
        bin: &Path,
        manifests: &Path,
        cgroup: &Path,
        bpffs: &Path,
        netns: Option<&crate::netns::Netns>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::launch(
            bin,
            AgentSource::Manifests,
            manifests,
            cgroup,
            bpffs,
            netns,
            node_name,
            extra,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        bin: &Path,
        source: AgentSource,
        manifests: &Path,
        cgroup: &Path,
        bpffs: &Path,
        netns: Option<&crate::netns::Netns>,
        node_name: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let netns = match netns {
            Some(ns) => Some(ns.file().try_clone().context("dup of the netns handle")?),
            None => None,
        };
        let mut agent = Self {
            bin: bin.to_owned(),
            manifests: manifests.to_owned(),
            cgroup: cgroup.to_owned(),
            bpffs: bpffs.to_owned(),
            netns,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            node_name: node_name.to_owned(),
            source,
            rust_log: std::env::var("CLUSTERIP_AGENT_LOG")
                .unwrap_or_else(|_| DEFAULT_RUST_LOG.to_string()),
            child: None,
            runs: 0,
            run_start: 0,
            log: Arc::default(),
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Restarts the agent with another RUST_LOG (e.g. `debug`, which also turns on the eBPF
    /// programs' own logs).
    pub fn restart_with_log(&mut self, rust_log: &str) -> Result<()> {
        self.rust_log = rust_log.to_string();
        self.restart()
    }

    fn spawn(&mut self) -> Result<()> {
        self.runs += 1;
        self.run_start = self.log_len();
        let mut cmd = Command::new(&self.bin);
        if let Some(ns) = &self.netns {
            let fd = std::os::fd::AsRawFd::as_raw_fd(ns);
            // SAFETY: only setns (async-signal-safe) between fork and exec, on an fd we own.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("run");
        match &self.source {
            AgentSource::Manifests => cmd.arg("--manifests").arg(&self.manifests),
            AgentSource::Kubeconfig(k) => cmd.arg("--kubeconfig").arg(k),
        };
        if !self.extra.iter().any(|a| a.starts_with("--metrics-addr")) {
            // Port 0: agents of tests running in parallel never collide; the address is
            // in the log ([`Agent::metrics_addr`]).
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        if !self
            .extra
            .iter()
            .any(|a| a.starts_with("--healthz-bind-address"))
        {
            // Likewise for the proxy health server ([`Agent::healthz_addr`]), which would
            // otherwise take every address's port 10256.
            cmd.args(["--healthz-bind-address", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--node-name")
            .arg(&self.node_name)
            .args(&self.extra)
            .env("RUST_LOG", &self.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let tag = format!("run#{}", self.runs);
        self.log
            .capture(child.stdout.take().context("agent stdout")?, tag.clone());
        self.log
            .capture(child.stderr.take().context("agent stderr")?, tag);
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Number of lines logged so far; a mark for [`Agent::wait_line_since`].
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Waits for a line logged at or after index `from` that contains every one of `patterns`.
    pub fn wait_line_since(
        &mut self,
        from: usize,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let log = Arc::clone(&self.log);
        log.wait_line(from, patterns, timeout, || self.exit_status())
            .context("clusterip-agent")
    }

    /// Waits for the current run to log a line containing "synced".
    pub fn wait_synced(&mut self, timeout: Duration) -> Result<()> {
        self.wait_line_since(self.run_start, &["synced"], timeout)
            .map(|_| ())
    }

    /// The exit status if the agent process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing the agent")?;
            child.wait().context("reaping the agent")?;
        }
        Ok(())
    }

    /// Starts the agent again with `extra` arguments instead of the earlier ones.
    pub fn restart_with_args(&mut self, extra: &[&str]) -> Result<()> {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart()
    }

    /// Starts the agent again (after [`Agent::kill9`]) with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.kill9() {
            eprintln!("cleanup: {e}");
        }
        // The reader threads end at EOF; give them a moment for the last lines.
        std::thread::sleep(Duration::from_millis(20));
        eprintln!("----- agent output -----");
        for line in self.lines() {
            eprintln!("{line}");
        }
        eprintln!("------------------------");
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte(@..~)
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One frontend as `clusterip-agent dump --json` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct DumpEntry {
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub backends: Vec<String>,
    pub affinity_timeout_s: Option<u32>,
    /// `externalTrafficPolicy: Local`: the backends traffic from outside gets.
    #[serde(default)]
    pub external_local: Option<Vec<String>>,
    /// `loadBalancerSourceRanges` in the datapath.
    #[serde(default)]
    pub source_ranges: Vec<String>,
}

impl DumpEntry {
    pub fn new(
        vip: &str,
        port: u16,
        protocol: &str,
        backends: &[&str],
        affinity: Option<u32>,
    ) -> Self {
        let mut backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        backends.sort();
        Self {
            vip: vip.into(),
            port,
            protocol: protocol.into(),
            backends,
            affinity_timeout_s: affinity,
            external_local: None,
            source_ranges: Vec::new(),
        }
    }
}

/// `BIN dump --bpffs DIR --json`, entries and their backends sorted.
pub fn dump_json(bin: &Path, bpffs: &Path) -> Result<Vec<DumpEntry>> {
    let out = Command::new(bin)
        .arg("dump")
        .arg("--bpffs")
        .arg(bpffs)
        .arg("--json")
        .output()
        .context("running clusterip-agent dump")?;
    if !out.status.success() {
        bail!(
            "clusterip-agent dump failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut entries: Vec<DumpEntry> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "parsing dump --json output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    for e in &mut entries {
        e.backends.sort();
    }
    entries.sort();
    Ok(entries)
}
