//! Prometheus metrics, /healthz and /readyz.
//!
//! [`Metrics`] holds the agent's counters, gauges and histograms and renders them in the
//! Prometheus text exposition format (version 0.0.4) by hand. [`serve`] runs a deliberately
//! small HTTP/1.1 server on tokio: one request per connection (`Connection: close`), GET and
//! HEAD only, a bounded request head, a deadline for reading it (slow or silent clients are
//! dropped) and a cap on concurrent connections, so that nothing a client sends can stop it.
//!
//! Paths: `/metrics`; `/healthz`: 200 `ok` while the process serves; `/readyz`: 200 once the
//! agent has programmed the datapath (see [`Metrics::set_ready`]), else 503 with the reason.

pub mod server;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

/// Upper bounds of `clusterip_sync_duration_seconds` (one apply of the table to the maps).
pub const SYNC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of `clusterip_network_programming_duration_seconds` (event received -> maps
/// written).
pub const PROGRAMMING_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The watched resources whose restart counters exist (at 0) before any restart.
const WATCHED_RESOURCES: &[&str] = &["services", "endpointslices", "nodes"];

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// What /readyz says before the first successful sync.
const NOT_SYNCED: &str = "the datapath has not been programmed yet";

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error(
        "invalid metrics address {value:?}: {source}; expected IP:PORT such as \
         127.0.0.1:9964 or [::1]:9964, or '' to serve nothing"
    )]
    BadAddr {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

/// `--metrics-addr`: `""` (or only blanks) disables the server.
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, MetricsError> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    trimmed
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|source| MetricsError::BadAddr {
            value: s.to_string(),
            source,
        })
}

/// A histogram with fixed upper bounds; counts are per bucket (not cumulative) until rendered.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default, Clone)]
struct HistogramState {
    /// `counts[i]` observations fell in `(bounds[i-1], bounds[i]]`; the last one above all.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                ..HistogramState::default()
            }),
        }
    }

    fn observe(&self, seconds: f64) {
        if !seconds.is_finite() {
            debug!(seconds, "ignoring a non-finite duration");
            return;
        }
        let value = seconds.max(0.0);
        let idx = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        let mut state = lock(&self.state);
        if let Some(c) = state.counts.get_mut(idx) {
            *c += 1;
        }
        state.sum += value;
        state.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let state = lock(&self.state).clone();
        header(out, name, help, "histogram");
        let mut cumulative = 0u64;
        for (bound, count) in self.bounds.iter().zip(&state.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                fmt_float(*bound)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", state.count);
        let _ = writeln!(out, "{name}_sum {}", fmt_float(state.sum));
        let _ = writeln!(out, "{name}_count {}", state.count);
    }
}

/// The agent's metrics and readiness. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    sync_duration: Histogram,
    programming_latency: Histogram,
    services: AtomicU64,
    frontends: AtomicU64,
    endpoints: AtomicU64,
    sync_errors: AtomicU64,
    syncs: AtomicU64,
    /// Unix time (seconds, as f64 bits) of the last successful sync; 0 before the first.
    last_sync: AtomicU64,
    /// map name -> (entries, capacity)
    maps: Mutex<BTreeMap<String, (u64, u64)>>,
    watch_restarts: Mutex<BTreeMap<String, u64>>,
    ready: AtomicBool,
    not_ready_reason: Mutex<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sync_duration: Histogram::new(SYNC_BUCKETS),
            programming_latency: Histogram::new(PROGRAMMING_BUCKETS),
            services: AtomicU64::new(0),
            frontends: AtomicU64::new(0),
            endpoints: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            last_sync: AtomicU64::new(0),
            maps: Mutex::new(BTreeMap::new()),
            watch_restarts: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            not_ready_reason: Mutex::new(NOT_SYNCED.to_string()),
        }
    }
}

impl Metrics {
    /// One successful apply of the table to the maps took `seconds`.
    pub fn observe_sync(&self, seconds: f64) {
        self.sync_duration.observe(seconds);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_sync.store(now.to_bits(), Ordering::Relaxed);
    }

    /// An event (Service/EndpointSlice change) was received `seconds` before the maps held it.
    pub fn observe_programming_latency(&self, seconds: f64) {
        self.programming_latency.observe(seconds);
    }

    /// What the maps hold now.
    pub fn set_programmed(&self, services: u64, frontends: u64, endpoints: u64) {
        self.services.store(services, Ordering::Relaxed);
        self.frontends.store(frontends, Ordering::Relaxed);
        self.endpoints.store(endpoints, Ordering::Relaxed);
    }

    /// Entries in use and capacity of one BPF map (by its pinned name).
    pub fn set_map_usage(&self, map: &str, used: u64, capacity: u64) {
        lock(&self.maps).insert(map.to_string(), (used, capacity));
    }

    pub fn inc_sync_errors(&self) {
        self.sync_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A watch of `resource` (`services`, `endpointslices`, `nodes`) was restarted.
    pub fn inc_watch_restarts(&self, resource: &str) {
        *lock(&self.watch_restarts)
            .entry(resource.to_string())
            .or_insert(0) += 1;
    }

    /// Ready: the datapath is attached and holds the current table. `false` gives /readyz the
    /// generic reason; [`Metrics::set_not_ready`] gives a specific one.
    pub fn set_ready(&self, ready: bool) {
        if !ready {
            *lock(&self.not_ready_reason) = NOT_SYNCED.to_string();
        }
        self.ready.store(ready, Ordering::Release);
    }

    /// Not ready, for `reason` (shown by /readyz).
    pub fn set_not_ready(&self, reason: &str) {
        *lock(&self.not_ready_reason) = reason.to_string();
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Why /readyz fails (meaningless while ready).
    pub fn not_ready_reason(&self) -> String {
        lock(&self.not_ready_reason).clone()
    }

    /// Every metric in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "clusterip_build_info",
            "The agent's version; always 1.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "clusterip_build_info{{version=\"{}\"}} 1",
            escape_label(env!("CARGO_PKG_VERSION"))
        );

        gauge(
            &mut out,
            "clusterip_ready",
            "1 when the datapath is attached and holds the current table.",
            u64::from(self.is_ready()),
        );

        self.sync_duration.render(
            &mut out,
            "clusterip_sync_duration_seconds",
            "Time to apply a table (or part of one) to the BPF maps.",
        );
        self.programming_latency.render(
            &mut out,
            "clusterip_network_programming_duration_seconds",
            "Time from receiving a Service or EndpointSlice change to having it in the BPF maps.",
        );

        header(
            &mut out,
            "clusterip_syncs_total",
            "Successful applies of the table to the BPF maps.",
            "counter",
        );
        let _ = writeln!(
            out,
            "clusterip_syncs_total {}",
            self.syncs.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "clusterip_sync_errors_total",
            "Failed applies of the table to the BPF maps.",
            "counter",
        );
        let _ = writeln!(
            out,
            "clusterip_sync_errors_total {}",
            self.sync_errors.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "clusterip_last_sync_timestamp_seconds",
            "Unix time of the last successful apply; 0 before the first.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "clusterip_last_sync_timestamp_seconds {}",
            fmt_float(f64::from_bits(self.last_sync.load(Ordering::Relaxed)))
        );

        gauge(
            &mut out,
            "clusterip_programmed_services",
            "Services programmed in the datapath.",
            self.services.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "clusterip_programmed_frontends",
            "Frontends (VIP, port, protocol) programmed in the datapath.",
            self.frontends.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "clusterip_programmed_endpoints",
            "Backends programmed in the datapath.",
            self.endpoints.load(Ordering::Relaxed),
        );

        let maps = lock(&self.maps).clone();
        header(
            &mut out,
            "clusterip_map_entries",
            "Entries in use in a BPF map.",
            "gauge",
        );
        for (map, (used, _)) in &maps {
            let _ = writeln!(
                out,
                "clusterip_map_entries{{map=\"{}\"}} {used}",
                escape_label(map)
            );
        }
        header(
            &mut out,
            "clusterip_map_capacity",
            "Maximum entries of a BPF map.",
            "gauge",
        );
        for (map, (_, capacity)) in &maps {
            let _ = writeln!(
                out,
                "clusterip_map_capacity{{map=\"{}\"}} {capacity}",
                escape_label(map)
            );
        }

        let mut restarts = lock(&self.watch_restarts).clone();
        for resource in WATCHED_RESOURCES {
            restarts.entry((*resource).to_string()).or_insert(0);
        }
        header(
            &mut out,
            "clusterip_watch_restarts_total",
            "Restarts of a Kubernetes API watch after an error or its end.",
            "counter",
        );
        for (resource, n) in &restarts {
            let _ = writeln!(
                out,
                "clusterip_watch_restarts_total{{resource=\"{}\"}} {n}",
                escape_label(resource)
            );
        }
        out
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// Prometheus floats: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round-trip form (never an
/// exponent, which Prometheus would also accept).
fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds `addr` (an error names it) and serves /metrics, /healthz and /readyz on a task of
/// its own until the runtime shuts down or the handle is aborted.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<JoinHandle<()>> {
    serve_with_timeout(addr, metrics, READ_TIMEOUT).await
}

/// [`serve`] with another deadline for reading a request head.
pub async fn serve_with_timeout(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    read_timeout: Duration,
) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr} (--metrics-addr): {e}"),
        )
    })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(addr = %local, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(accept_loop(listener, metrics, read_timeout)))
}

/// Like [`serve`] on an already bound listener (port 0 in tests).
pub fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    read_timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(listener, metrics, read_timeout))
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, read_timeout: Duration) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &metrics, read_timeout).await {
                        debug!(%peer, error = %e, "metrics connection");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: do not spin, do not die.
                warn!(error = %e, "metrics server: accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }
}

/// What a request head asks for, or the error response it earns.
fn route(head: &[u8], metrics: &Metrics) -> (Response, bool) {
    let Some(line) = head
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return (Response::text("400 Bad Request", "bad request\n"), false);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (
            Response::text("400 Bad Request", "bad request line\n"),
            false,
        );
    };
    if !version.starts_with("HTTP/1.") {
        return (
            Response::text("400 Bad Request", "bad HTTP version\n"),
            false,
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::text("405 Method Not Allowed", "only GET and HEAD\n");
            r.allow = true;
            return (r, false);
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let response = match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
            allow: false,
        },
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/readyz" if metrics.is_ready() => Response::text("200 OK", "ok\n"),
        "/readyz" => Response::text(
            "503 Service Unavailable",
            format!("not ready: {}\n", metrics.not_ready_reason()),
        ),
        _ => Response::text(
            "404 Not Found",
            "not found: try /metrics, /healthz, /readyz\n",
        ),
    };
    (response, head_only)
}

/// Reads until the end of the request head (`\r\n\r\n`, or `\n\n`), EOF or `MAX_HEAD` bytes.
/// `Ok(None)`: the client closed before sending a whole head.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    read_timeout: Duration,
) -> io::Result<()> {
    let (response, head_only) =
        match tokio::time::timeout(read_timeout, read_head(&mut stream)).await {
            Err(_) => (
                Response::text("408 Request Timeout", "request timeout\n"),
                false,
            ),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(head))) => route(&head, metrics),
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => (
                Response::text(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                ),
                false,
            ),
            Ok(Err(e)) => return Err(e),
        };
    let mut bytes = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        bytes.push_str("Allow: GET, HEAD\r\n");
    }
    bytes.push_str("\r\n");
    if !head_only {
        bytes.push_str(&response.body);
    }
    // A client that does not read gets the same deadline as one that does not write.
    tokio::time::timeout(read_timeout, async {
        stream.write_all(bytes.as_bytes()).await?;
        stream.shutdown().await?;
        // Drain what the client still sends so that closing does not reset the connection
        // (and lose the response) because of unread data.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client too slow"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(metrics: Arc<Metrics>, read_timeout: Duration) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        (addr, serve_listener(listener, metrics, read_timeout))
    }

    /// Sends `request` raw and returns (status code, headers, body) of the whole response.
    async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("response within 10s")
            .expect("read");
        parse_response(&out)
    }

    fn parse_response(out: &[u8]) -> (u16, String, String) {
        let text = String::from_utf8(out.to_vec()).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        // HEAD responses announce the length of a body they do not carry.
        assert!(
            body.is_empty() || body.len() == length,
            "length {length}: {body:?}"
        );
        (status, head.to_string(), body.to_string())
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
        .await
    }

    /// Checks the text format line by line: every sample belongs to a family announced by
    /// `# HELP` and `# TYPE` before it, names and values are well formed, and each histogram
    /// has increasing cumulative buckets ending in `le="+Inf"` equal to `_count`, and `_sum`.
    /// Returns the samples as (name with labels, value).
    fn check_exposition(text: &str) -> BTreeMap<String, f64> {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helps = std::collections::BTreeSet::new();
        let mut samples = BTreeMap::new();
        assert!(text.ends_with('\n'), "exposition must end with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                assert!(helps.insert(name.to_string()), "duplicate HELP {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(helps.contains(name), "TYPE before HELP: {line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "duplicate TYPE {name}"
                );
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name = series.split('{').next().expect("name");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad name {name}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                let inner = &labels[1..labels.len() - 1];
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
            }
            let family = types
                .keys()
                .find(|f| {
                    name == f.as_str()
                        || (types[*f] == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|s| name == format!("{f}{s}")))
                })
                .unwrap_or_else(|| panic!("sample {name} without TYPE before it"));
            if types[family] == "counter" {
                assert!(name.ends_with("_total"), "counter {name}");
            }
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "dup {series}"
            );
        }
        for (family, kind) in &types {
            if kind != "histogram" {
                continue;
            }
            let prefix = format!("{family}_bucket{{le=\"");
            let buckets: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|(s, v)| {
                    let le = s.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect("le")
                    };
                    Some((le, *v))
                })
                .collect();
            let mut buckets = buckets;
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(buckets.len() >= 2, "{family}: buckets");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}: buckets not cumulative"
            );
            let last = buckets.last().expect("a bucket");
            assert_eq!(last.0, f64::INFINITY, "{family}: no +Inf bucket");
            assert_eq!(
                Some(&last.1),
                samples.get(&format!("{family}_count")),
                "{family}: +Inf != _count"
            );
            assert!(
                samples.contains_key(&format!("{family}_sum")),
                "{family}_sum"
            );
        }
        samples
    }

    #[test]
    fn parse_addr_cases() {
        assert_eq!(parse_addr("").expect("empty"), None);
        assert_eq!(parse_addr("  ").expect("blank"), None);
        assert_eq!(
            parse_addr("127.0.0.1:9964").expect("v4"),
            Some("127.0.0.1:9964".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("[::1]:9964").expect("v6"),
            Some("[::1]:9964".parse().expect("addr"))
        );
        for bad in [
            "localhost:9964",
            "127.0.0.1",
            ":9964",
            "1.2.3.4:99999",
            "::1:9964",
        ] {
            let e = parse_addr(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains("IP:PORT"), "{e}");
        }
    }

    #[test]
    fn histogram_buckets_and_rendering() {
        let m = Metrics::default();
        m.observe_programming_latency(0.00005); // first bucket
        m.observe_programming_latency(0.0001); // le is inclusive
        m.observe_programming_latency(0.003);
        m.observe_programming_latency(20.0); // only +Inf
        m.observe_programming_latency(f64::NAN); // ignored
        m.observe_programming_latency(-1.0); // clamped to 0
        let samples = check_exposition(&m.render());
        let name = "clusterip_network_programming_duration_seconds";
        let bucket = |le: &str| samples[&format!("{name}_bucket{{le=\"{le}\"}}")];
        assert_eq!(bucket("0.0001"), 3.0);
        assert_eq!(bucket("0.0025"), 3.0);
        assert_eq!(bucket("0.005"), 4.0);
        assert_eq!(bucket("10"), 4.0);
        assert_eq!(bucket("+Inf"), 5.0);
        assert_eq!(samples[&format!("{name}_count")], 5.0);
        let sum = samples[&format!("{name}_sum")];
        assert!((sum - 20.00315).abs() < 1e-9, "{sum}");
        // The sync histogram is independent.
        assert_eq!(samples["clusterip_sync_duration_seconds_count"], 0.0);
    }

    #[test]
    fn gauges_counters_and_labels() {
        let m = Metrics::default();
        m.set_programmed(3, 5, 7);
        m.set_map_usage("CIP_SVC4", 12, 65536);
        m.set_map_usage("odd\"name\\\n", 1, 2);
        m.inc_sync_errors();
        m.inc_sync_errors();
        m.inc_watch_restarts("services");
        m.inc_watch_restarts("services");
        m.inc_watch_restarts("nodes");
        m.observe_sync(0.02);
        let text = m.render();
        let s = check_exposition(&text);
        assert_eq!(s["clusterip_programmed_services"], 3.0);
        assert_eq!(s["clusterip_programmed_frontends"], 5.0);
        assert_eq!(s["clusterip_programmed_endpoints"], 7.0);
        assert_eq!(s["clusterip_map_entries{map=\"CIP_SVC4\"}"], 12.0);
        assert_eq!(s["clusterip_map_capacity{map=\"CIP_SVC4\"}"], 65536.0);
        assert_eq!(s["clusterip_map_entries{map=\"odd\\\"name\\\\\\n\"}"], 1.0);
        assert_eq!(s["clusterip_sync_errors_total"], 2.0);
        assert_eq!(s["clusterip_syncs_total"], 1.0);
        assert_eq!(
            s["clusterip_watch_restarts_total{resource=\"services\"}"],
            2.0
        );
        assert_eq!(s["clusterip_watch_restarts_total{resource=\"nodes\"}"], 1.0);
        assert_eq!(
            s["clusterip_watch_restarts_total{resource=\"endpointslices\"}"],
            0.0
        );
        assert_eq!(
            s["clusterip_sync_duration_seconds_bucket{le=\"0.025\"}"],
            1.0
        );
        assert_eq!(
            s["clusterip_sync_duration_seconds_bucket{le=\"0.01\"}"],
            0.0
        );
        assert!(s["clusterip_last_sync_timestamp_seconds"] > 1.7e9);
        assert_eq!(s["clusterip_ready"], 0.0);
        m.set_ready(true);
        assert_eq!(check_exposition(&m.render())["clusterip_ready"], 1.0);
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_over_tcp() {
        let metrics = Arc::new(Metrics::default());
        let (addr, server) = start(Arc::clone(&metrics), READ_TIMEOUT).await;

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
        let samples = check_exposition(&body);
        assert_eq!(
            samples["clusterip_network_programming_duration_seconds_count"],
            0.0
        );

        metrics.observe_programming_latency(0.002);
        let (_, _, body) = get(addr, "/metrics?x=1").await;
        let samples = check_exposition(&body);
        assert_eq!(
            samples["clusterip_network_programming_duration_seconds_count"],
            1.0
        );

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(
            body.contains("not ready") && body.contains(NOT_SYNCED),
            "{body}"
        );
        metrics.set_ready(true);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        metrics.set_not_ready("the API server is unreachable");
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("the API server is unreachable"), "{body}");
        metrics.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        metrics.set_ready(false);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains(NOT_SYNCED), "{body}");

        assert_eq!(get(addr, "/nope").await.0, 404);
        assert_eq!(get(addr, "/metrics/x").await.0, 404);

        let (status, head, _) =
            raw(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET, HEAD"), "{head}");

        let (status, head, body) = raw(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200);
        assert!(head.contains("Content-Length: 3"), "{head}");
        assert!(body.is_empty(), "HEAD has no body: {body:?}");

        assert!(!server.is_finished());
        server.abort();
    }

    #[tokio::test]
    async fn survives_garbage_slow_and_oversized_clients() {
        let metrics = Arc::new(Metrics::default());
        let (addr, server) = start(Arc::clone(&metrics), Duration::from_millis(300)).await;

        // Garbage and malformed request lines get 400.
        for garbage in [
            &b"\x00\xff\xfe garbage\r\n\r\n"[..],
            b"hello\n\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3 extra\r\n\r\n",
            b"GET /metrics FTP/1.0\r\n\r\n",
        ] {
            let (status, _, _) = raw(addr, garbage).await;
            assert_eq!(status, 400, "{garbage:?}");
        }
        // An oversized head gets 431 and the server goes on.
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        let (status, _, _) = raw(addr, &big).await;
        assert_eq!(status, 431);
        // A client that connects and closes without a word.
        drop(TcpStream::connect(addr).await.expect("connect"));
        // A slow client holding a half request does not block others...
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metr").await.expect("write");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        // ...and is answered 408 and dropped at the deadline.
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
            .await
            .expect("the server closes a slow client")
            .expect("read");
        assert_eq!(parse_response(&out).0, 408);
        // A client that never reads cannot stall the server either.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        silent
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(get(addr, "/metrics").await.0, 200);
        drop(silent);

        assert!(!server.is_finished(), "the server died");
        assert_eq!(get(addr, "/readyz").await.0, 503);
        server.abort();
    }

    #[tokio::test]
    async fn serve_binds_first_and_names_the_address() {
        let metrics = Arc::new(Metrics::default());
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = serve(addr, Arc::clone(&metrics))
            .await
            .expect_err("the port is taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        drop(taken);
        let server = serve(addr, metrics).await.expect("free now");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        server.abort();
    }
}
