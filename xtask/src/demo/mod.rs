//! `cargo xtask run`: the demo. Two network namespaces joined by a veth pair (the root netns is
//! not touched), stand-in pods in one, a client in the other; the agent attaches the socket
//! hooks to a child cgroup that only the client joins.
//!
//! ```text
//!   netns cip-demo-client               netns cip-demo-pods
//!   10.200.0.1/24  cip-demo-c <-veth-> cip-demo-p  10.200.0.11, .12, .13 /24
//!   demo-client (cgroup cip-demo)       demo-backend web-0..2 (tcp 8080),
//!                                                    dns-like-0..1 (udp 5353)
//! ```

pub mod backend;
pub mod client;
mod sys;

use std::{
    env, fs,
    io::{self, BufRead, BufReader, IsTerminal, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    proc::{command, output, run as run_cmd},
    setup::cgroup2_root,
    tasks,
};

const CLIENT_NETNS: &str = "cip-demo-client";
const PODS_NETNS: &str = "cip-demo-pods";
const CLIENT_IF: &str = "cip-demo-c";
const PODS_IF: &str = "cip-demo-p";
const CLIENT_ADDR: &str = "10.200.0.1/24";
const CGROUP_NAME: &str = "cip-demo";
const BPFFS_DIR: &str = "/sys/fs/bpf/cip-demo";
const MANIFESTS: &str = "examples/manifests";

/// Must match examples/manifests/demo.yaml.
const TCP_SERVICE: &str = "10.96.100.10:80";
const UDP_SERVICE: &str = "10.96.100.53:53";
const TCP_REQUESTS: usize = 9;
const UDP_REQUESTS: usize = 4;

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// One stand-in pod (a `demo-backend` process) per endpoint; names are the EndpointSlices'
/// targetRef names, so the client's output can be checked against the manifest.
struct Endpoint {
    name: &'static str,
    proto: Proto,
    addr: &'static str,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        name: "web-0",
        proto: Proto::Tcp,
        addr: "10.200.0.11:8080",
    },
    Endpoint {
        name: "web-1",
        proto: Proto::Tcp,
        addr: "10.200.0.12:8080",
    },
    Endpoint {
        name: "web-2",
        proto: Proto::Tcp,
        addr: "10.200.0.13:8080",
    },
    Endpoint {
        name: "dns-like-0",
        proto: Proto::Udp,
        addr: "10.200.0.11:5353",
    },
    Endpoint {
        name: "dns-like-1",
        proto: Proto::Udp,
        addr: "10.200.0.12:5353",
    },
];
/// The pods' addresses (on the pods' end of the veth pair).
const POD_IPS: &[&str] = &["10.200.0.11", "10.200.0.12", "10.200.0.13"];

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(keep: bool) -> Result<()> {
    let root = tasks::workspace_root();
    let agent_bin = tasks::build(&root)?;
    sys::catch_signals()?;
    let manifests = root.join(MANIFESTS);
    if !manifests.is_dir() {
        bail!("{} is missing", manifests.display());
    }
    let cgroup = PathBuf::from(cgroup2_root()?).join(CGROUP_NAME);

    eprintln!("==> demo: setting up");
    let mut demo = Demo {
        agent_bin,
        cgroup,
        agent: None,
        backends: Vec::new(),
        client: None,
    };
    // Leftovers of a run that could not clean up (kill -9, power loss).
    if demo.leftovers() {
        eprintln!("found leftovers of an earlier demo: removing them first");
        demo.teardown();
    }
    demo.create_network()?;
    demo.start_backends()?;
    fs::create_dir(&demo.cgroup)
        .with_context(|| format!("cannot create cgroup {}", demo.cgroup.display()))?;
    eprintln!("created cgroup {}", demo.cgroup.display());
    demo.start_agent(&manifests)?;

    eprintln!(
        "==> demo: client in netns {CLIENT_NETNS} and cgroup {}",
        demo.cgroup.display()
    );
    let client_result = demo.run_client();

    eprintln!("==> demo: the maps");
    let agent = demo.agent_bin.display().to_string();
    eprintln!("look at them with:");
    eprintln!("  {agent} dump --bpffs {BPFFS_DIR}");
    eprintln!("  bpftool map dump pinned {BPFFS_DIR}/CIP_SVC4");
    if let Err(e) = run_cmd(demo.agent_command().args(["dump", "--bpffs", BPFFS_DIR])) {
        eprintln!("warning: {e:#}");
    }
    client_result?;

    if keep {
        eprintln!("==> demo: running until Ctrl-C. Try, for example:");
        let procs = demo.cgroup.join("cgroup.procs");
        eprintln!(
            "  nsenter --net=/run/netns/{CLIENT_NETNS} sh -c 'echo $$ > {}; exec curl -s http://{TCP_SERVICE}/'",
            procs.display()
        );
        eprintln!("  {agent} dump --bpffs {BPFFS_DIR} --json");
        while !sys::interrupted() {
            if let Some(agent) = demo.agent.as_mut()
                && let Some(status) = agent.try_wait()?
            {
                bail!("the agent exited ({status})");
            }
            thread::sleep(Duration::from_millis(200));
        }
        eprintln!();
    }
    Ok(())
    // `demo` is dropped here, and on every early return above: that tears everything down.
}

/// Everything the demo creates; dropping it removes all of it.
struct Demo {
    agent_bin: PathBuf,
    cgroup: PathBuf,
    agent: Option<Child>,
    backends: Vec<Child>,
    client: Option<Child>,
}

fn ip(args: &[&str]) -> Result<()> {
    output(command("ip").args(args)).map(|_| ())
}

impl Demo {
    fn agent_command(&self) -> Command {
        let mut cmd = command(&self.agent_bin);
        if !io::stderr().is_terminal() && env::var_os("NO_COLOR").is_none() {
            // No colour codes in files and CI logs.
            cmd.env("NO_COLOR", "1");
        }
        cmd
    }

    fn leftovers(&self) -> bool {
        sys::netns_path(CLIENT_NETNS).exists()
            || sys::netns_path(PODS_NETNS).exists()
            || self.cgroup.exists()
            || Path::new(BPFFS_DIR).exists()
    }

    fn create_network(&mut self) -> Result<()> {
        for ns in [CLIENT_NETNS, PODS_NETNS] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Created inside the client netns with its peer directly in the pods netns: the root
        // netns never sees either end.
        ip(&[
            "-n",
            CLIENT_NETNS,
            "link",
            "add",
            CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            PODS_IF,
            "netns",
            PODS_NETNS,
        ])?;
        ip(&[
            "-n",
            CLIENT_NETNS,
            "addr",
            "add",
            CLIENT_ADDR,
            "dev",
            CLIENT_IF,
        ])?;
        ip(&["-n", CLIENT_NETNS, "link", "set", CLIENT_IF, "up"])?;
        for pod_ip in POD_IPS {
            let addr = format!("{pod_ip}/24");
            ip(&["-n", PODS_NETNS, "addr", "add", &addr, "dev", PODS_IF])?;
        }
        ip(&["-n", PODS_NETNS, "link", "set", PODS_IF, "up"])?;
        eprintln!(
            "created netns {CLIENT_NETNS} ({CLIENT_ADDR} on {CLIENT_IF}) and {PODS_NETNS} \
             ({} on {PODS_IF})",
            POD_IPS.join(", ")
        );
        Ok(())
    }

    fn start_backends(&mut self) -> Result<()> {
        let exe = env::current_exe().context("cannot find the xtask executable")?;
        for endpoint in ENDPOINTS {
            let (flag, proto) = match endpoint.proto {
                Proto::Tcp => ("--tcp", "tcp"),
                Proto::Udp => ("--udp", "udp"),
            };
            let mut cmd = command(&exe);
            cmd.arg("demo-backend")
                .args(["--name", endpoint.name, flag, endpoint.addr])
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
            sys::own_process_group(&mut cmd);
            sys::die_with_parent(&mut cmd, libc::SIGKILL);
            sys::enter_netns(&mut cmd, PODS_NETNS)?;
            let mut child = cmd
                .spawn()
                .with_context(|| format!("cannot start backend {}", endpoint.name))?;
            let stdout = child.stdout.take();
            self.backends.push(child);
            let stdout = stdout.context("no stdout pipe")?;
            wait_for_line(stdout, "ready", READY_TIMEOUT)
                .with_context(|| format!("backend {} did not start", endpoint.name))?;
            eprintln!(
                "started backend {} on {}/{proto} in netns {PODS_NETNS}",
                endpoint.name, endpoint.addr
            );
        }
        Ok(())
    }

    fn start_agent(&mut self, manifests: &Path) -> Result<()> {
        let mut cmd = self.agent_command();
        cmd.arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(["--bpffs", BPFFS_DIR])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::own_process_group(&mut cmd);
        // SIGTERM: the agent shuts down cleanly; the links and maps stay pinned, and the next
        // run's leftover check runs `clusterip-agent cleanup`.
        sys::die_with_parent(&mut cmd, libc::SIGTERM);
        eprintln!("starting: {}", crate::proc::display(&cmd));
        let mut agent = cmd.spawn().context("cannot start the agent")?;
        let (tx, synced) = mpsc::channel();
        for pipe in [
            agent
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            agent
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            // Forward the agent's log (and keep draining the pipe so it never blocks).
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  agent | {line}");
                    if line.contains("synced") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        self.agent = Some(agent);
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            match synced.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(200))
                }
            }
            if sys::interrupted() {
                bail!("interrupted");
            }
            if let Some(agent) = self.agent.as_mut()
                && let Some(status) = agent.try_wait()?
            {
                bail!("the agent exited before it synced ({status})");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not log \"synced\" within {}s",
                    SYNC_TIMEOUT.as_secs()
                );
            }
        }
        eprintln!("the agent synced the services into the maps");
        Ok(())
    }

    fn run_client(&mut self) -> Result<()> {
        let exe = env::current_exe().context("cannot find the xtask executable")?;
        let mut cmd = command(&exe);
        cmd.arg("demo-client")
            .args(["--tcp", TCP_SERVICE, "--tcp-requests"])
            .arg(TCP_REQUESTS.to_string())
            .args(["--udp", UDP_SERVICE, "--udp-requests"])
            .arg(UDP_REQUESTS.to_string())
            .stdin(Stdio::null());
        sys::own_process_group(&mut cmd);
        sys::die_with_parent(&mut cmd, libc::SIGKILL);
        sys::join_cgroup(&mut cmd, &self.cgroup)?;
        sys::enter_netns(&mut cmd, CLIENT_NETNS)?;
        self.client = Some(cmd.spawn().context("cannot start the demo client")?);
        loop {
            if sys::interrupted() {
                bail!("interrupted");
            }
            if let Some(client) = self.client.as_mut()
                && let Some(status) = client.try_wait()?
            {
                self.client = None;
                if status.success() {
                    return Ok(());
                }
                bail!("the demo client reported failures ({status})");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Idempotent; removes whatever exists, reporting but not stopping on errors.
    fn teardown(&mut self) {
        let report = |what: &str, result: Result<()>| match result {
            Ok(()) => eprintln!("teardown: {what}"),
            Err(e) => eprintln!("teardown: {what} FAILED: {e:#}"),
        };
        if let Some(mut client) = self.client.take() {
            report(
                "stopped the demo client",
                sys::stop(&mut client, Duration::from_secs(1)).map_err(Into::into),
            );
        }
        if let Some(mut agent) = self.agent.take() {
            report(
                "stopped the agent",
                sys::stop(&mut agent, Duration::from_secs(10)).map_err(Into::into),
            );
        }
        if Path::new(BPFFS_DIR).exists() {
            let mut cleanup = self.agent_command();
            cleanup
                .args(["cleanup", "--bpffs", BPFFS_DIR])
                .stdin(Stdio::null());
            let result = run_cmd(&mut cleanup);
            report("clusterip-agent cleanup", result);
            if Path::new(BPFFS_DIR).exists() {
                report(
                    &format!("removed leftover pins in {BPFFS_DIR}"),
                    fs::remove_dir_all(BPFFS_DIR).map_err(Into::into),
                );
            }
        }
        for mut backend in self.backends.drain(..) {
            let _ = backend.kill();
            let _ = backend.wait();
        }
        if self.cgroup.exists() {
            report(
                &format!("removed cgroup {}", self.cgroup.display()),
                sys::remove_cgroup(&self.cgroup),
            );
        }
        for ns in [CLIENT_NETNS, PODS_NETNS] {
            if sys::netns_path(ns).exists() {
                // Deleting a netns also stops whatever was left in it (the backends: killed
                // above) from having an address, and destroys its end of the veth pair.
                report(&format!("deleted netns {ns}"), ip(&["netns", "del", ns]));
            }
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        eprintln!("==> demo: tearing down");
        self.teardown();
    }
}

/// Reads `pipe` until a line equal to `expected`, for at most `timeout`.
fn wait_for_line(
    pipe: impl Read + Send + 'static,
    expected: &str,
    timeout: Duration,
) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    let wanted = expected.to_string();
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        let found = loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break false,
                Ok(_) if line.trim_end() == wanted => break true,
                Ok(_) => {}
            }
        };
        let _ = tx.send(found);
    });
    match rx.recv_timeout(timeout) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("it exited or closed its output without printing {expected:?}"),
        Err(_) => bail!("no answer within {}s", timeout.as_secs()),
    }
}
