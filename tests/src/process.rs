//! Backends in the pods netns, clients in the client netns and the test cgroup.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::cgroup::Cgroup;
use crate::netns::Netns;

/// Makes `cmd` enter `netns` (and join `cgroup`) between fork and exec, with only
/// async-signal-safe syscalls (setns, open, write, close); everything is prepared before.
pub fn enter(cmd: &mut Command, netns: Option<&Netns>, cgroup: Option<&Cgroup>) -> Result<()> {
    let ns_fd = netns.map(|n| n.file().as_raw_fd());
    let procs = match cgroup {
        Some(cg) => Some(
            CString::new(
                cg.path()
                    .join("cgroup.procs")
                    .as_os_str()
                    .as_encoded_bytes(),
            )
            .context("cgroup path")?,
        ),
        None => None,
    };
    // SAFETY: the closure only makes async-signal-safe syscalls on data prepared before fork;
    // io::Error::last_os_error does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a backend serves: `--tcp`, `--tcp-echo`, `--udp`, `--http` and `--tcp-data` addresses.
#[derive(Clone, Debug, Default)]
pub struct Listen {
    pub tcp: Vec<SocketAddr>,
    pub tcp_echo: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub tcp_data: Vec<SocketAddr>,
}

/// Starts `cip-backend --name NAME ...` in `netns` and waits for its `ready`.
pub fn start_backend(bin: &Path, netns: &Netns, name: &str, listen: &Listen) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(["--name", name]);
    for (flag, addrs) in [
        ("--tcp", &listen.tcp),
        ("--tcp-echo", &listen.tcp_echo),
        ("--udp", &listen.udp),
        ("--http", &listen.http),
        ("--tcp-data", &listen.tcp_data),
    ] {
        for a in addrs {
            cmd.arg(flag).arg(a.to_string());
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    enter(&mut cmd, Some(netns), None)?;
    let mut child = cmd.spawn().context("spawning cip-backend")?;
    let stdout = child.stdout.take().context("backend stdout")?;
    let mut proc = Proc {
        name: name.into(),
        child,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => Ok(proc),
        Ok(line) => {
            let status = proc.child.wait().ok();
            bail!("backend {name} did not start (said {line:?}, exit {status:?})")
        }
        Err(_) => bail!("backend {name} not ready within 10 s"),
    }
}

/// One line of `cip-client` output.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Reply {
    pub peer: Option<String>,
    pub from: Option<String>,
    pub reply: Option<String>,
    pub error: Option<String>,
    pub errno: Option<i32>,
    pub alive: Option<bool>,
    /// `http`: the response's status code.
    #[serde(default)]
    pub status: Option<u16>,
    /// `tcp-upload` / `tcp-download`: bytes sent / received.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// `tcp-download`: offset of the first byte that differed from the expected stream.
    #[serde(default)]
    pub mismatch: Option<u64>,
    /// `udp-multi` / `tcp-multi`: the socket's own address.
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub elapsed_ms: f64,
}

impl Reply {
    /// The backend that answered (first word of the reply).
    pub fn backend(&self) -> Option<&str> {
        self.reply.as_deref()?.split(' ').next()
    }

    /// The client address the backend saw (second word of the reply).
    pub fn seen_client(&self) -> Option<&str> {
        self.reply.as_deref()?.split(' ').nth(1)
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Where and how clients run: the client netns and the test cgroup.
#[derive(Clone, Copy)]
pub struct ClientCtx<'a> {
    /// The `cip-client` binary.
    pub bin: &'a Path,
    pub netns: &'a Netns,
    pub cgroup: &'a Cgroup,
}

impl<'a> ClientCtx<'a> {
    /// The same client, as an [`NsClient`].
    pub fn ns(&self) -> NsClient<'a> {
        NsClient {
            bin: self.bin,
            netns: self.netns,
            cgroup: Some(self.cgroup),
        }
    }

    /// Runs `cip-client ARGS` to completion (killed after 60 s) and parses its lines.
    pub fn run(&self, args: &[&str]) -> Result<Vec<Reply>> {
        self.ns().run(args)
    }

    /// `cip-client MODE ADDR --count N --timeout-ms MS`.
    pub fn run_mode(
        &self,
        mode: &str,
        addr: SocketAddr,
        count: u32,
        timeout_ms: u32,
    ) -> Result<Vec<Reply>> {
        self.ns().run_mode(mode, addr, count, timeout_ms)
    }

    /// `count` sequential TCP connections (2 s timeout).
    pub fn tcp(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.ns().tcp(addr, count)
    }

    pub fn udp_connected(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.ns().udp_connected(addr, count)
    }

    pub fn udp_unconnected(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.ns().udp_unconnected(addr, count)
    }

    /// `cip-client tcp-hold ADDR`: returns once the greeting was read.
    pub fn hold(&self, addr: SocketAddr) -> Result<HoldClient> {
        self.ns().hold(addr)
    }
}

/// Clients in a netns, optionally in a cgroup (the per-packet tests run them in no cgroup of
/// theirs: plain processes the socket hooks never see).
#[derive(Clone, Copy)]
pub struct NsClient<'a> {
    /// The `cip-client` binary.
    pub bin: &'a Path,
    pub netns: &'a Netns,
    pub cgroup: Option<&'a Cgroup>,
}

impl NsClient<'_> {
    fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(self.bin);
        cmd.args(args);
        enter(&mut cmd, Some(self.netns), self.cgroup)?;
        Ok(cmd)
    }

    /// Runs `cip-client ARGS` to completion (killed after 60 s) and parses its lines.
    pub fn run(&self, args: &[&str]) -> Result<Vec<Reply>> {
        let mut cmd = self.command(args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().context("spawning cip-client")?;
        let mut proc = Proc {
            name: "cip-client".into(),
            child,
        };
        let stdout = proc.child.stdout.take().context("client stdout")?;
        let stderr = proc.child.stderr.take().context("client stderr")?;
        let out = std::thread::spawn(move || std::io::read_to_string(stdout));
        let err = std::thread::spawn(move || std::io::read_to_string(stderr));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = proc.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!("cip-client {args:?} still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let out = out.join().map_err(|_| anyhow!("reader panicked"))??;
        let err = err.join().map_err(|_| anyhow!("reader panicked"))??;
        if !status.success() {
            bail!("cip-client {args:?} failed ({status}): {err}");
        }
        out.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("client printed {l:?}")))
            .collect()
    }

    /// `cip-client MODE ADDR --count N --timeout-ms MS`.
    pub fn run_mode(
        &self,
        mode: &str,
        addr: SocketAddr,
        count: u32,
        timeout_ms: u32,
    ) -> Result<Vec<Reply>> {
        let replies = self.run(&[
            mode,
            &addr.to_string(),
            "--count",
            &count.to_string(),
            "--timeout-ms",
            &timeout_ms.to_string(),
        ])?;
        if replies.len() != count as usize {
            bail!("cip-client {mode} {addr}: expected {count} lines, got {replies:?}");
        }
        Ok(replies)
    }

    /// `count` sequential TCP connections (2 s timeout).
    pub fn tcp(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.run_mode("tcp", addr, count, 2000)
    }

    /// `count` sequential HTTP GETs (2 s timeout).
    pub fn http(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.run_mode("http", addr, count, 2000)
    }

    /// One HTTP GET of `path` (2 s timeout).
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<Reply> {
        let replies = self.run(&[
            "http",
            &addr.to_string(),
            "--path",
            path,
            "--timeout-ms",
            "2000",
        ])?;
        match <[Reply; 1]>::try_from(replies) {
            Ok([r]) => Ok(r),
            Err(replies) => {
                bail!("cip-client http {addr}{path}: expected one line, got {replies:?}")
            }
        }
    }

    pub fn udp_connected(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.run_mode("udp-connected", addr, count, 1000)
    }

    pub fn udp_unconnected(&self, addr: SocketAddr, count: u32) -> Result<Vec<Reply>> {
        self.run_mode("udp-unconnected", addr, count, 1000)
    }

    /// `cip-client tcp-upload|tcp-download ADDR --bytes N --seed S` (5 s I/O timeout).
    pub fn transfer(&self, upload: bool, addr: SocketAddr, bytes: u64, seed: u64) -> Result<Reply> {
        let mode = if upload { "tcp-upload" } else { "tcp-download" };
        let mut replies = self.run(&[
            mode,
            &addr.to_string(),
            "--bytes",
            &bytes.to_string(),
            "--seed",
            &seed.to_string(),
            "--timeout-ms",
            "5000",
        ])?;
        if replies.len() != 1 {
            bail!("cip-client {mode} {addr}: expected one line, got {replies:?}");
        }
        Ok(replies.remove(0))
    }

    /// `cip-client tcp-hold ADDR`: returns once the greeting was read.
    pub fn hold(&self, addr: SocketAddr) -> Result<HoldClient> {
        let mut cmd = self.command(&["tcp-hold", &addr.to_string(), "--timeout-ms", "2000"])?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().context("spawning cip-client tcp-hold")?;
        HoldClient::new(Proc {
            name: "cip-client tcp-hold".into(),
            child,
        })
    }

    /// `cip-client udp-multi|tcp-multi ADDR --sockets N`: many flows in one process.
    /// For TCP, returns once every connection was opened (see [`MultiClient::first`]).
    pub fn multi(&self, tcp: bool, addr: SocketAddr, sockets: usize) -> Result<MultiClient> {
        let mode = if tcp { "tcp-multi" } else { "udp-multi" };
        self.multi_mode(mode, addr, sockets)
    }

    /// `cip-client udp-connected-multi ADDR --sockets N`: N connected UDP sockets.
    pub fn udp_connected_multi(&self, addr: SocketAddr, sockets: usize) -> Result<MultiClient> {
        self.multi_mode("udp-connected-multi", addr, sockets)
    }

    fn multi_mode(&self, mode: &str, addr: SocketAddr, sockets: usize) -> Result<MultiClient> {
        let tcp = mode == "tcp-multi";
        let mut cmd = self.command(&[
            mode,
            &addr.to_string(),
            "--sockets",
            &sockets.to_string(),
            "--timeout-ms",
            "1000",
        ])?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning cip-client {mode}"))?;
        MultiClient::new(
            Proc {
                name: format!("cip-client {mode}"),
                child,
            },
            tcp,
            sockets,
        )
    }
}

/// A long-running `cip-client` driven line by line: lines written to its stdin, its stdout
/// lines read by a thread of their own so that a silent client times out instead of hanging.
struct LineIo {
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    proc: Proc,
}

impl LineIo {
    fn new(mut proc: Proc) -> Result<Self> {
        let stdin = proc.child.stdin.take().context("stdin")?;
        let stdout = proc.child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { stdin, lines, proc })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}").with_context(|| format!("writing to {}", self.proc.name))?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The next stdout line, parsed as JSON.
    fn recv<T: serde::de::DeserializeOwned>(&mut self, timeout: Duration) -> Result<T> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .with_context(|| format!("no output from {}", self.proc.name))?;
        serde_json::from_str(&line).with_context(|| format!("{} printed {line:?}", self.proc.name))
    }
}

/// Many flows held by one `cip-client udp-multi|tcp-multi`: each [`MultiClient::round`] sends
/// one message on every flow and returns what each one got back.
pub struct MultiClient {
    io: LineIo,
    /// How many flows the client holds: every round has one reply per flow.
    flows: usize,
    /// TCP: the greeting of every connection (who answered); UDP: empty.
    pub first: Vec<Reply>,
    rounds: u32,
}

#[derive(Deserialize)]
struct Round {
    round: Vec<Reply>,
}

impl MultiClient {
    fn new(proc: Proc, tcp: bool, flows: usize) -> Result<Self> {
        let mut me = Self {
            io: LineIo::new(proc)?,
            flows,
            first: Vec::new(),
            rounds: 0,
        };
        if tcp {
            me.first = me.next()?;
        }
        Ok(me)
    }

    fn next(&mut self) -> Result<Vec<Reply>> {
        let Round { round } = self.io.recv(Duration::from_secs(60))?;
        if round.len() != self.flows {
            bail!("{} flows, {} replies: {round:?}", self.flows, round.len());
        }
        Ok(round)
    }

    /// One message on every flow; the replies in flow order, one per flow.
    pub fn round(&mut self) -> Result<Vec<Reply>> {
        self.rounds += 1;
        self.io.send(&format!("round-{}", self.rounds))?;
        self.next()
    }
}

/// A client holding one TCP connection open to an echo backend.
pub struct HoldClient {
    io: LineIo,
    /// The greeting: peer and backend.
    pub greeting: Reply,
}

impl HoldClient {
    fn new(proc: Proc) -> Result<Self> {
        let mut io = LineIo::new(proc)?;
        let greeting = io.recv(Duration::from_secs(10))?;
        Ok(Self { io, greeting })
    }

    /// Sends `msg` over the held connection and returns what the client saw.
    pub fn ping(&mut self, msg: &str) -> Result<Reply> {
        self.io.send(msg)?;
        self.io.recv(Duration::from_secs(10))
    }
}

/// Runs a command and returns its stdout, failing with stderr.
pub fn output(program: impl AsRef<Path>, args: &[&str]) -> Result<String> {
    let program: PathBuf = program.as_ref().into();
    let out = Command::new(&program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How many replies each backend gave; panics (with all replies) if any reply is an error.
pub fn tally(replies: &[Reply]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in replies {
        assert!(
            r.is_ok(),
            "a request failed: {r:?}\nall replies: {replies:#?}"
        );
        let backend = r
            .backend()
            .unwrap_or_else(|| panic!("reply without a backend: {r:?}"));
        *counts.entry(backend.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that all `n` replies succeeded and came from `backend`, and from no other.
pub fn assert_all_from(replies: &[Reply], backend: &str, n: usize) {
    assert_eq!(
        tally(replies).into_iter().collect::<Vec<_>>(),
        [(backend.to_owned(), n)],
        "{n} replies from {backend} only: {replies:#?}"
    );
}

/// Asserts that every reply succeeded with `peer` as its getpeername(), that each backend saw
/// `client` as the source (no SNAT), and that exactly `backends` answered, each at least once.
pub fn assert_spread_via(replies: &[Reply], peer: &str, client: &str, backends: &[&str]) {
    let counts = tally(replies);
    for r in replies {
        assert_eq!(r.peer.as_deref(), Some(peer), "getpeername: {r:?}");
        assert_eq!(
            r.seen_client(),
            Some(client),
            "client address seen by the backend: {r:?}"
        );
    }
    assert_eq!(
        counts.keys().map(String::as_str).collect::<Vec<_>>(),
        backends,
        "{peer}: every backend answers: {counts:?}"
    );
}
