//! HTTP load for the benchmarks that compare service proxies (`benches/kubeproxy.rs`,
//! `benches/nodeport.rs`): nginx backends in pod namespaces, `wrk` connection-rate runs with
//! one request per connection (checked against the client's TCP `ActiveOpens` counter), and
//! the summary statistics of their reports.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{ClientOp, parse_latency, run_client_raw, stats};
use crate::cgroup::Cgroup;
use crate::netns::Netns;
use crate::node::output_in;
use crate::process::enter;

/// nginx in pod namespaces (Debian's, with a config of its own: `return 200`, access log off,
/// one worker per core, deep backlog, long keep-alive); every process killed on drop.
pub struct Nginx {
    children: Vec<Child>,
    /// Every nginx process (masters and workers): killed with the cgroup.
    _cg: Cgroup,
    dir: PathBuf,
}

impl Nginx {
    /// One nginx per `(pod netns, address)`, listening on `address:port`.
    pub fn start(pods: &[(&Netns, IpAddr)], port: u16) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("cip-nginx-{}", crate::uniq()));
        std::fs::create_dir_all(&dir)?;
        let mut me = Self {
            children: Vec::new(),
            _cg: Cgroup::new()?,
            dir: dir.clone(),
        };
        // One worker per core: a case that talks to one pod at concurrency 16 must not be
        // capped by a single nginx process.
        for (i, (pod, ip)) in pods.iter().enumerate() {
            let prefix = dir.join(format!("nginx{i}"));
            std::fs::create_dir_all(&prefix)?;
            let conf = prefix.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "worker_processes auto;\ndaemon off;\npid {p}/nginx.pid;\nerror_log \
                     {p}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  \
                     access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout \
                     300s;\n  server {{\n    listen {addr} backlog=4096;\n    location / {{ \
                     return 200 \"ok\\n\"; }}\n  }}\n}}\n",
                    p = prefix.display(),
                    addr = SocketAddr::new(*ip, port)
                ),
            )?;
            let mut cmd = Command::new("nginx");
            cmd.arg("-p")
                .arg(&prefix)
                .arg("-e")
                .arg(prefix.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            enter(&mut cmd, Some(pod), Some(&me._cg))?;
            me.children
                .push(cmd.spawn().context("starting nginx in a pod netns")?);
        }
        Ok(me)
    }
}

impl Nginx {
    /// Restricts every nginx process (masters and workers) to CPU `cpu`, or with None lets
    /// them run on every CPU again.
    pub fn pin(&self, cpu: Option<usize>) -> Result<()> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for pid in self._cg.procs() {
            set_affinity(pid, cpu.map_or_else(|| (0..cpus).collect(), |c| vec![c]))
                .with_context(|| format!("pinning nginx {pid}"))?;
        }
        Ok(())
    }
}

/// sched_setaffinity(2) of `pid` to `cpus`.
fn set_affinity(pid: i32, cpus: Vec<usize>) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET only writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: a plain syscall with a set of the size given.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // A process that exited meanwhile (an nginx worker restarting) holds nothing.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Kept-alive request/response latency to `addr` from `ns`, `requests` requests: `(mean, p50,
/// p99)` in µs. With `pin`, the client and every nginx process run on that one CPU for the
/// measurement: on a small VM a request whose server sits on the other CPU pays two cross-CPU
/// wake-ups, and which nginx worker accepts the connection is chance, so unpinned runs
/// scatter between two modes.
pub fn keepalive_latency(
    ns: &Netns,
    addr: SocketAddr,
    requests: u64,
    pin: Option<(usize, &Nginx)>,
) -> Result<(f64, f64, f64)> {
    let exe = std::env::current_exe()?;
    let op = [
        "--client".to_string(),
        ClientOp::HttpKeepalive.name().into(),
        addr.to_string(),
        requests.to_string(),
    ];
    let mut cmd = match pin {
        Some((cpu, nginx)) => {
            nginx.pin(Some(cpu))?;
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(op).stderr(Stdio::inherit());
    enter(&mut cmd, Some(ns), None)?;
    let out = cmd.output().context("running the latency client");
    if let Some((_, nginx)) = pin {
        nginx.pin(None)?;
    }
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("latency client to {addr} failed: {text}");
    }
    let (mean, p50, p99) = parse_latency(&text)?;
    Ok((mean / 1e3, p50 / 1e3, p99 / 1e3))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Retries one kept-alive HTTP request to `addr` from `ns` (in `cg`) until it is answered.
pub fn wait_http(
    ns: &Netns,
    cg: Option<&Cgroup>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match run_client_raw(ns, cg, ClientOp::HttpKeepalive, addr, 1) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("{addr} never answered"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One `wrk` run with `Connection: close`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnRate {
    /// Requests (= connections) per second.
    pub rate: f64,
    /// Requests wrk completed.
    pub requests: u64,
    /// Connections the client netns opened meanwhile (TCP ActiveOpens).
    pub opens: u64,
    /// SYNs the client retransmitted meanwhile (each costs a second).
    pub syn_retrans: u64,
}

/// `wrk -t T -c C -d D -H 'Connection: close' http://ADDR/` in `ns` (and `cg`), with the
/// client's TCP counters around it.
pub fn conn_rate(
    ns: &Netns,
    cg: Option<&Cgroup>,
    addr: SocketAddr,
    c: u32,
    t: u32,
    d: Duration,
) -> Result<ConnRate> {
    let opens = tcp_counter(ns, "ActiveOpens")?;
    let retrans = tcp_counter(ns, "TCPSynRetrans")?;
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &t.to_string(),
        "-c",
        &c.to_string(),
        "-d",
        &format!("{}s", d.as_secs().max(1)),
        "-H",
        "Connection: close",
        &format!("http://{addr}/"),
    ]);
    enter(&mut cmd, Some(ns), cg)?;
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {addr}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (rate, requests) =
        parse_wrk(&text).with_context(|| format!("wrk {addr} -c {c}: {text}"))?;
    Ok(ConnRate {
        rate,
        requests,
        opens: tcp_counter(ns, "ActiveOpens")? - opens,
        syn_retrans: tcp_counter(ns, "TCPSynRetrans")? - retrans,
    })
}

/// (requests per second, requests completed) of wrk's report; an error on non-2xx answers.
pub fn parse_wrk(text: &str) -> Result<(f64, u64)> {
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk got errors: {l}");
    }
    if let Some(l) = text.lines().find(|l| l.contains("Socket errors")) {
        // A handful of connect errors at the very end of a run are not worth a failure, but
        // they are worth seeing.
        eprintln!("  wrk: {}", l.trim());
    }
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("no Requests/sec")?
        .trim()
        .parse()?;
    let n = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .context("no request count")?
        .parse()?;
    if n == 0 {
        bail!("wrk completed no request");
    }
    Ok((rate, n))
}

/// A TCP counter in `ns`: `Tcp:` of /proc/net/snmp (ActiveOpens, RetransSegs, ...) or
/// `TcpExt:` of /proc/net/netstat (TCPSynRetrans, ...).
pub fn tcp_counter(ns: &Netns, name: &str) -> Result<u64> {
    for (file, prefix) in [("/proc/net/snmp", "Tcp:"), ("/proc/net/netstat", "TcpExt:")] {
        let text = output_in(ns, "cat", &[file])?;
        let mut lines = text.lines().filter(|l| l.starts_with(prefix));
        let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
            continue;
        };
        if let Some(k) = head.split_whitespace().position(|h| h == name) {
            return vals
                .split_whitespace()
                .nth(k)
                .with_context(|| format!("no {name} value"))?
                .parse()
                .with_context(|| name.to_string());
        }
    }
    bail!("no TCP counter {name} in {}", ns.name())
}

/// Runs `program args` inside `ns` (nsenter --net) with `input` on stdin, as kube-proxy
/// feeds `iptables-restore` and `nft -f`; its wall time. Fails with its stderr.
pub fn stdin_in(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(input.as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{program} {args:?} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// `(median, min, max)` of the numbers in `v` (NaN = a missing sample, skipped; all NaN if
/// none is left).
pub fn med(v: &[f64]) -> (f64, f64, f64) {
    let v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        stats(&v)
    }
}

/// A number with three significant digits or so; `-` for NaN.
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `median [min–max]` of `v`.
pub fn fmt_range(v: &[f64]) -> String {
    let (m, lo, hi) = med(v);
    format!("{} [{}–{}]", fmt_num(m), fmt_num(lo), fmt_num(hi))
}

/// Escapes text for SVG.
pub fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_parse_and_errors_fail() {
        let ok = "Running 1s test @ http://10.0.0.1/\n  1 threads and 1 connections\n  9000 \
                  requests in 1.00s, 1.2MB read\nRequests/sec:   8999.50\n";
        assert_eq!(parse_wrk(ok).unwrap(), (8999.5, 9000));
        assert!(parse_wrk(&format!("{ok}  Non-2xx or 3xx responses: 3\n")).is_err());
        assert!(parse_wrk("  0 requests in 1.00s\nRequests/sec: 0.00\n").is_err());
    }

    #[test]
    fn medians_skip_missing_samples() {
        assert_eq!(med(&[3.0, f64::NAN, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert!(med(&[f64::NAN]).0.is_nan());
        assert_eq!(fmt_range(&[1.0, 2.0, 30.0]), "2.00 [1.00–30.0]");
        assert_eq!(fmt_num(f64::NAN), "-");
    }
}
