//! Pieces shared by the benchmarks (`tests/benches/*.rs`, `harness = false`): the client loop
//! and the server that a bench runs by re-executing itself (`--client ...` / `--server ...`)
//! inside a network namespace, the agent process guard, statistics and the machine line.
//!
//! A bench's `main` starts with
//! ```ignore
//! if let Some(r) = clusterip_tests::bench::dispatch() { return r; }
//! ```
//! so that its re-executed copies act as client or server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cgroup::Cgroup;
use crate::netns::Netns;
use crate::process::enter;

/// If this process is a bench's re-executed client or server, runs it and returns its
/// result; None for the bench itself.
pub fn dispatch() -> Option<Result<()>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--client") => Some(client(&args[2..])),
        Some("--server") => Some(ServerConfig::parse(&args[2..]).and_then(|c| serve(&c))),
        _ => None,
    }
}

/// The options of the `kubeproxy` and `nodeport` benches (after `--`): `--parts LIST`
/// (names of `P`), `--services LIST`, `--rounds N`, `--duration SECONDS`, `--requests N`,
/// `--smoke` (N = 10 unless `--services`, every part unless `--parts`, one round, 1 s runs,
/// 200 requests), `--out DIR`.
pub struct Opts<P> {
    pub parts: Vec<P>,
    pub services: Vec<usize>,
    pub rounds: usize,
    /// wrk's duration per measurement.
    pub duration: Duration,
    /// Requests of the latency (and UDP) clients per measurement.
    pub requests: u64,
    pub smoke: bool,
    pub out: PathBuf,
}

impl<P: Copy + PartialEq> Opts<P> {
    /// `all`: every part, `name` its name on the command line; `default`: the parts without
    /// `--parts`.
    pub fn parse(
        args: &[String],
        all: &[P],
        default: &[P],
        name: impl Fn(P) -> &'static str,
    ) -> Result<Self> {
        let mut me = Self {
            parts: default.to_vec(),
            services: vec![1, 1000, 10_000],
            rounds: 5,
            duration: Duration::from_secs(3),
            requests: 20_000,
            smoke: false,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        };
        let (mut explicit_parts, mut explicit_services) = (false, false);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--bench" => {}
                "--smoke" => me.smoke = true,
                "--parts" => {
                    explicit_parts = true;
                    me.parts = value()?
                        .split(',')
                        .map(|p| {
                            all.iter()
                                .copied()
                                .find(|x| name(*x) == p)
                                .with_context(|| {
                                    let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
                                    format!("unknown part {p}; parts: {}", names.join(","))
                                })
                        })
                        .collect::<Result<_>>()?;
                }
                "--services" => {
                    explicit_services = true;
                    me.services = value()?
                        .split(',')
                        .map(|n| n.parse().with_context(|| format!("--services {n}")))
                        .collect::<Result<_>>()?;
                }
                "--rounds" => me.rounds = value()?.parse()?,
                "--duration" => me.duration = Duration::from_secs(value()?.parse()?),
                "--requests" => me.requests = value()?.parse()?,
                "--out" => me.out = PathBuf::from(value()?),
                other => bail!(
                    "unknown option {other}; options: --parts LIST --services LIST --rounds N \
                     --duration S --requests N --smoke --out DIR"
                ),
            }
        }
        if me.smoke {
            if !explicit_services {
                me.services = vec![10];
            }
            if !explicit_parts {
                me.parts = all.to_vec();
            }
            me.rounds = 1;
            me.duration = Duration::from_secs(1);
            me.requests = 200;
        }
        if me.services.contains(&0) || me.rounds == 0 {
            bail!("--services and --rounds must be at least 1");
        }
        Ok(me)
    }

    pub fn wants(&self, part: P) -> bool {
        self.parts.contains(&part)
    }
}

/// `(median, min, max)` of `v` (not empty).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// A process's memory as `/proc/PID/status` has it, in KiB: resident in all, of which
/// anonymous (its heap and stacks: what the agent's own data costs) and file-backed (its
/// binary and libraries), and the peak resident size so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Memory {
            rss_kib: field("VmRSS")?,
            anon_kib: field("RssAnon")?,
            file_kib: field("RssFile")?,
            peak_kib: field("VmHWM")?,
        })
    }

    pub fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB (anon {:.1}, file {:.1}; peak {:.1})",
            Memory::mib(self.rss_kib),
            Memory::mib(self.anon_kib),
            Memory::mib(self.file_kib),
            Memory::mib(self.peak_kib)
        )
    }
}

/// `<cpu model>, <n> cores, Linux <release>`: the machine a benchmark ran on.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Prints `machine: <cpu model>, <n> cores, Linux <release>`.
pub fn print_machine() {
    println!("machine: {}", machine());
}

/// What one client process does, N times (or with N bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientOp {
    /// UDP socket + connect + close (no packet).
    UdpConnect,
    /// One unconnected UDP socket, one datagram per op.
    UdpSendto,
    /// TCP socket + connect + close with RST (SO_LINGER 0: no TIME_WAIT piles up).
    TcpConnect,
    /// One TCP connection; reads N bytes (into a reused buffer, discarded) until the server
    /// closes. The result is per byte.
    Download,
    /// One kept-alive TCP connection, N HTTP/1.1 `GET /` requests one after the other; prints
    /// `mean p50 p99` of the request/response times in ns (see [`run_client_raw`]).
    HttpKeepalive,
    /// One connected UDP socket, N request/response exchanges with an echo server; ns per
    /// exchange.
    UdpRr,
}

impl ClientOp {
    pub fn name(self) -> &'static str {
        match self {
            ClientOp::UdpConnect => "udp-connect",
            ClientOp::UdpSendto => "udp-sendto",
            ClientOp::TcpConnect => "tcp-connect",
            ClientOp::Download => "download",
            ClientOp::HttpKeepalive => "http-keepalive",
            ClientOp::UdpRr => "udp-rr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ClientOp::UdpConnect,
            ClientOp::UdpSendto,
            ClientOp::TcpConnect,
            ClientOp::Download,
            ClientOp::HttpKeepalive,
            ClientOp::UdpRr,
        ]
        .into_iter()
        .find(|o| o.name() == s)
    }
}

/// Runs one measurement in a client process (this binary, `--client OP ADDR N`) in `netns`
/// (and `cgroup`); returns ns per operation (per byte for [`ClientOp::Download`]).
pub fn run_client(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    op: ClientOp,
    addr: SocketAddr,
    n: u64,
) -> Result<f64> {
    let text = run_client_raw(netns, cgroup, op, addr, n)?;
    let ns: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("client said {text:?}"))?;
    Ok(ns)
}

/// Like [`run_client`], returning what the client printed.
pub fn run_client_raw(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    op: ClientOp,
    addr: SocketAddr,
    n: u64,
) -> Result<String> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--client", op.name(), &addr.to_string(), &n.to_string()]);
    enter(&mut cmd, Some(netns), cgroup)?;
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running the client")?;
    if !out.status.success() {
        bail!(
            "client {} {addr} failed: {}",
            op.name(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(mean, p50, p99)` in ns of the kept-alive HTTP client's output.
pub fn parse_latency(text: &str) -> Result<(f64, f64, f64)> {
    let v: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("latency client said {text:?}"))?;
    match v[..] {
        [mean, p50, p99] => Ok((mean, p50, p99)),
        _ => bail!("latency client said {text:?}"),
    }
}

/// The client side: N operations, prints ns/op.
fn client(args: &[String]) -> Result<()> {
    let [mode, addr, n] = args else {
        bail!("usage: --client MODE ADDR N")
    };
    let op = ClientOp::parse(mode).context("mode")?;
    let addr: SocketAddr = addr.parse()?;
    let n: u64 = n.parse()?;
    let started = Instant::now();
    match op {
        ClientOp::UdpConnect => {
            for _ in 0..n {
                let s = UdpSocket::bind(unspecified(addr))?;
                s.connect(addr)?;
            }
        }
        ClientOp::UdpSendto => {
            let s = UdpSocket::bind(unspecified(addr))?;
            for _ in 0..n {
                s.send_to(b"x", addr)?;
            }
        }
        ClientOp::TcpConnect => {
            for _ in 0..n {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                // Close with RST: no TIME_WAIT piles up over thousands of connections.
                set_linger_zero(&s)?;
            }
        }
        ClientOp::Download => {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => got += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("reading the download"),
                }
            }
            if got != n {
                bail!("download from {addr}: got {got} bytes, expected {n}");
            }
        }
        ClientOp::HttpKeepalive => {
            let times = http_keepalive(addr, n)?;
            println!("{}", latency_summary(times));
            return Ok(());
        }
        ClientOp::UdpRr => udp_rr(addr, n)?,
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{ns}");
    Ok(())
}

/// N `GET /` on one connection; the time of each request/response in ns.
fn http_keepalive(addr: SocketAddr, n: u64) -> Result<Vec<u64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: cip-bench\r\n\r\n");
    let mut buf = vec![0u8; 16 * 1024];
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(request.as_bytes())?;
        read_http_response(&mut s, &mut buf)?;
        times.push(t.elapsed().as_nanos() as u64);
    }
    Ok(times)
}

/// Reads one HTTP/1.1 response with a Content-Length body (what the bench's nginx sends).
fn read_http_response(s: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    let mut len = 0;
    loop {
        let k = s.read(&mut buf[len..]).context("reading the response")?;
        if k == 0 {
            bail!("the server closed the kept-alive connection");
        }
        len += k;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head")?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("response {head:?}");
            }
            let body: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("no Content-Length")?;
            let want = end + 4 + body;
            if want > buf.len() {
                bail!("response of {want} bytes does not fit the buffer");
            }
            while len < want {
                let k = s.read(&mut buf[len..want])?;
                if k == 0 {
                    bail!("the server closed mid-body");
                }
                len += k;
            }
            if len > want {
                bail!("the server sent more than one response");
            }
            return Ok(());
        }
        if len == buf.len() {
            bail!("response head larger than {len} bytes");
        }
    }
}

/// `mean p50 p99` of `times` (ns).
fn latency_summary(mut times: Vec<u64>) -> String {
    if times.is_empty() {
        return "0 0 0".into();
    }
    times.sort_unstable();
    let mean = times.iter().sum::<u64>() as f64 / times.len() as f64;
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    format!("{mean:.0} {} {}", at(0.50), at(0.99))
}

/// N request/response exchanges on one connected UDP socket (a lost datagram is resent after
/// 200 ms, up to 5 times).
fn udp_rr(addr: SocketAddr, n: u64) -> Result<()> {
    let s = UdpSocket::bind(unspecified(addr))?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 64];
    for i in 0..n {
        let msg = i.to_le_bytes();
        let mut tries = 0;
        loop {
            s.send(&msg)?;
            match s.recv(&mut buf) {
                Ok(8) if buf[..8] == msg => break,
                // A late answer to an earlier resend: wait for ours.
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) && tries < 5 =>
                {
                    tries += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("udp echo from {addr}")),
            }
        }
    }
    Ok(())
}

fn unspecified(addr: SocketAddr) -> SocketAddr {
    let ip: IpAddr = if addr.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, 0)
}

fn set_linger_zero(s: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// What the bench's server serves on `ip`, so that the server is never what is measured:
/// - `sink`: a TCP listener with a deep backlog that accepts and closes;
/// - `udp`: a UDP socket that only reads;
/// - `echo`: a UDP socket that sends every datagram back;
/// - `source`: a TCP port that writes `bytes` zeros on each connection, then closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub ip: IpAddr,
    pub sink: Option<u16>,
    pub udp: Option<u16>,
    pub source: Option<(u16, u64)>,
    pub echo: Option<u16>,
}

impl ServerConfig {
    fn args(&self) -> Vec<String> {
        let mut a = vec![self.ip.to_string()];
        if let Some(p) = self.sink {
            a.extend(["--sink".into(), p.to_string()]);
        }
        if let Some(p) = self.udp {
            a.extend(["--udp".into(), p.to_string()]);
        }
        if let Some((p, bytes)) = self.source {
            a.extend(["--source".into(), format!("{p}:{bytes}")]);
        }
        if let Some(p) = self.echo {
            a.extend(["--echo".into(), p.to_string()]);
        }
        a
    }

    fn parse(args: &[String]) -> Result<Self> {
        let usage =
            "usage: --server IP [--sink PORT] [--udp PORT] [--source PORT:BYTES] [--echo PORT]";
        let (ip, mut rest) = args.split_first().context(usage)?;
        let mut me = Self {
            ip: ip.parse().context(usage)?,
            sink: None,
            udp: None,
            source: None,
            echo: None,
        };
        while let [flag, value, tail @ ..] = rest {
            match flag.as_str() {
                "--sink" => me.sink = Some(value.parse().context(usage)?),
                "--udp" => me.udp = Some(value.parse().context(usage)?),
                "--echo" => me.echo = Some(value.parse().context(usage)?),
                "--source" => {
                    let (p, b) = value.split_once(':').context(usage)?;
                    me.source = Some((p.parse().context(usage)?, b.parse().context(usage)?));
                }
                _ => bail!("{usage}: unknown {flag}"),
            }
            rest = tail;
        }
        if !rest.is_empty() {
            bail!("{usage}: dangling {rest:?}");
        }
        Ok(me)
    }
}

/// The server process (this binary, `--server ...`) in a netns; killed on drop.
pub struct Server(Child);

impl Server {
    /// Starts it in `netns` and waits for its `ready`.
    pub fn start(netns: &Netns, config: &ServerConfig) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--server")
            .args(config.args())
            .stdout(Stdio::piped());
        enter(&mut cmd, Some(netns), None)?;
        let mut child = cmd.spawn().context("starting the bench server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let me = Self(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("bench server said {line:?}");
        }
        Ok(me)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deep_listener(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    // SAFETY: listen(2) again on our listening socket only deepens its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(listener)
}

fn serve(config: &ServerConfig) -> Result<()> {
    let ip = config.ip;
    let sink = config
        .sink
        .map(|p| deep_listener(SocketAddr::new(ip, p)))
        .transpose()?;
    if let Some(port) = config.udp {
        let udp = UdpSocket::bind((ip, port))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while udp.recv_from(&mut buf).is_ok() {}
        });
    }
    if let Some(port) = config.echo {
        let udp = UdpSocket::bind((ip, port))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((k, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..k], from);
            }
        });
    }
    if let Some((port, bytes)) = config.source {
        let listener = deep_listener(SocketAddr::new(ip, port))?;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let buf = vec![0u8; 256 * 1024];
                    let mut left = bytes;
                    while left > 0 {
                        let k = left.min(buf.len() as u64) as usize;
                        if conn.write_all(&buf[..k]).is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                });
            }
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    match sink {
        Some(listener) => {
            for conn in listener.incoming() {
                drop(conn);
            }
        }
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}

/// The agent for a bench, its output discarded (a benchmark must not pay for a test log);
/// killed on drop. Its pins stay (the owner's [`crate::bpffs::PinDir`] removes them).
pub struct AgentProc(Child);

impl AgentProc {
    /// `AGENT run --manifests M --bpffs B ARGS` with `RUST_LOG=rust_log`, in `netns` if
    /// given; returns once it logged "synced".
    pub fn start(
        agent_bin: &Path,
        manifests: &Path,
        bpffs: &Path,
        args: &[&str],
        netns: Option<&Netns>,
        rust_log: &str,
    ) -> Result<Self> {
        let mut cmd = Command::new(agent_bin);
        cmd.arg("run")
            .arg("--manifests")
            .arg(manifests)
            .args(args)
            .arg("--bpffs")
            .arg(bpffs)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        enter(&mut cmd, netns, None)?;
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut synced = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !synced && line.contains("synced") {
                    synced = true;
                    let _ = tx.send(());
                }
            }
        });
        let agent = Self(child);
        rx.recv_timeout(Duration::from_secs(20))
            .context("the agent did not sync within 20 s")?;
        Ok(agent)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_round_trips_through_its_arguments() {
        let c = ServerConfig {
            ip: "10.200.1.2".parse().unwrap(),
            sink: Some(7000),
            udp: None,
            source: Some((7001, 256 << 20)),
            echo: Some(7002),
        };
        assert_eq!(ServerConfig::parse(&c.args()).unwrap(), c);
        assert!(ServerConfig::parse(&["10.0.0.1".into(), "--sink".into()]).is_err());
    }

    #[test]
    fn latency_summary_is_mean_p50_p99() {
        let times: Vec<u64> = (1..=100).rev().collect();
        let text = latency_summary(times);
        assert_eq!(text, "50 51 100");
        assert_eq!(parse_latency(&text).unwrap(), (50.0, 51.0, 100.0));
        assert!(parse_latency("1 2").is_err());
    }

    #[test]
    fn stats_are_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0, 5.0, 4.0]), (3.0, 1.0, 5.0));
    }
}
