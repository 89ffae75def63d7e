//! Prometheus metrics, /healthz and /readyz.
//!
//! [`Metrics`] holds the agent's counters, gauges and histograms in a prometheus-client
//! [`Registry`], and its readiness. [`serve`] answers on [`crate::http`] (hyper, with its
//! limits):
//! `/metrics` in the Prometheus text format 0.0.4 (what the agent always served: the same
//! `# TYPE` lines, no `# EOF`, readable by every scraper); `/healthz`: 200 `ok` while the
//! process serves; `/readyz`: 200 once the agent has programmed the datapath (see
//! [`Metrics::set_ready`]), else 503 with the reason.
//!
//! To add a metric: a field in [`Metrics`], its registration in [`Metrics::default`] (the
//! order there is the order in `/metrics`) and a method that updates it. A family with labels
//! is a `Family<L, _>` with `L` a `#[derive(EncodeLabelSet)]` struct, like [`MapLabels`].

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
};

use hyper::StatusCode;
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::http::{self, Limits, Routes};

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

/// What /readyz says before the first successful sync.
const NOT_SYNCED: &str = "the datapath has not been programmed yet";

/// `--metrics-addr`: `""` (or only blanks) disables the server.
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, crate::http::BadAddr> {
    crate::http::parse_optional_addr(s, "metrics address", "127.0.0.1:9964 or [::1]:9964")
}

/// A count that is set, not added to (prometheus-client's default gauge is signed).
type Count = Gauge<u64, AtomicU64>;

/// The `map` label: a BPF map by its pinned name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

/// The `kind` label: where a frontend's address comes from (`cluster_ip`, `external_ip`,
/// `node_port`, `load_balancer`: [`crate::model::FrontendKind`] as JSON names it).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every frontend kind: their gauges exist from the start, at 0.
pub const FRONTEND_KINDS: &[&str] = &["cluster_ip", "external_ip", "node_port", "load_balancer"];

/// The `resource` label: a watched Kubernetes resource (`services`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// The agent's metrics and readiness. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    /// Holds clones of the handles below (they share their values); only read after
    /// [`Metrics::default`].
    registry: Registry,
    ready: Count,
    sync_duration: Histogram,
    programming_latency: Histogram,
    syncs: Counter,
    sync_errors: Counter,
    /// Unix time of the last successful sync; 0 before the first.
    last_sync: Gauge<f64, AtomicU64>,
    services: Count,
    frontends: Count,
    frontends_by_kind: Family<KindLabels, Count>,
    endpoints: Count,
    map_entries: Family<MapLabels, Count>,
    map_capacity: Family<MapLabels, Count>,
    watch_restarts: Family<ResourceLabels, Counter>,
    /// `None` while ready, else why not. Changed together with `ready` under this lock, so
    /// /readyz and `clusterip_ready` agree.
    not_ready: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::with_prefix("clusterip"),
            ready: Count::default(),
            sync_duration: Histogram::new(SYNC_BUCKETS.iter().copied()),
            programming_latency: Histogram::new(PROGRAMMING_BUCKETS.iter().copied()),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            last_sync: Gauge::default(),
            services: Count::default(),
            frontends: Count::default(),
            frontends_by_kind: Family::default(),
            endpoints: Count::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            watch_restarts: Family::default(),
            not_ready: Mutex::new(Some(NOT_SYNCED.to_string())),
        };
        // The restart counters exist at 0 from the start, so a rate over them is defined
        // before the first restart.
        for kind in FRONTEND_KINDS {
            let _created = m.frontends_by_kind.get_or_create(&KindLabels {
                kind: (*kind).to_string(),
            });
        }
        for resource in WATCHED_RESOURCES {
            let _created = m.watch_restarts.get_or_create(&ResourceLabels {
                resource: (*resource).to_string(),
            });
        }
        m.register()
    }
}

impl Metrics {
    /// Registers every metric, in the order `/metrics` lists them. The registry adds the
    /// `clusterip_` prefix, the unit (`_seconds`), `_total` to counters, `_info` to the info
    /// metric, and a full stop to each help text.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "build",
            "The agent's version; always 1",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "ready",
            "1 when the datapath is attached and holds the current table",
            self.ready.clone(),
        );
        r.register_with_unit(
            "sync_duration",
            "Time to apply a table (or part of one) to the BPF maps",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        r.register_with_unit(
            "network_programming_duration",
            "Time from receiving a Service or EndpointSlice change to having it in the BPF maps",
            Unit::Seconds,
            self.programming_latency.clone(),
        );
        r.register(
            "syncs",
            "Successful applies of the table to the BPF maps",
            self.syncs.clone(),
        );
        r.register(
            "sync_errors",
            "Failed applies of the table to the BPF maps",
            self.sync_errors.clone(),
        );
        r.register_with_unit(
            "last_sync_timestamp",
            "Unix time of the last successful apply; 0 before the first",
            Unit::Seconds,
            self.last_sync.clone(),
        );
        r.register(
            "programmed_services",
            "Services programmed in the datapath",
            self.services.clone(),
        );
        r.register(
            "programmed_frontends",
            "Frontends (VIP, port, protocol) programmed in the datapath",
            self.frontends.clone(),
        );
        r.register(
            "programmed_frontends_by_kind",
            "Frontends programmed in the datapath, by where their address comes from",
            self.frontends_by_kind.clone(),
        );
        r.register(
            "programmed_endpoints",
            "Backends programmed in the datapath",
            self.endpoints.clone(),
        );
        r.register(
            "map_entries",
            "Entries in use in a BPF map",
            self.map_entries.clone(),
        );
        r.register(
            "map_capacity",
            "Maximum entries of a BPF map",
            self.map_capacity.clone(),
        );
        r.register(
            "watch_restarts",
            "Restarts of a Kubernetes API watch after an error or its end",
            self.watch_restarts.clone(),
        );
        self
    }

    /// One successful apply of the table to the maps took `seconds`.
    pub fn observe_sync(&self, seconds: f64) {
        observe(&self.sync_duration, seconds);
        self.syncs.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_sync.set(now);
    }

    /// An event (Service/EndpointSlice change) was received `seconds` before the maps held it.
    pub fn observe_programming_latency(&self, seconds: f64) {
        observe(&self.programming_latency, seconds);
    }

    /// What the maps hold now.
    pub fn set_programmed(&self, services: u64, frontends: u64, endpoints: u64) {
        self.services.set(services);
        self.frontends.set(frontends);
        self.endpoints.set(endpoints);
    }

    /// How many frontends of `kind` (one of [`FRONTEND_KINDS`]) the maps hold.
    pub fn set_programmed_frontends_of_kind(&self, kind: &str, frontends: u64) {
        self.frontends_by_kind
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(frontends);
    }

    /// Entries in use and capacity of one BPF map (by its pinned name).
    pub fn set_map_usage(&self, map: &str, used: u64, capacity: u64) {
        let labels = MapLabels {
            map: map.to_string(),
        };
        self.map_entries.get_or_create(&labels).set(used);
        self.map_capacity.get_or_create(&labels).set(capacity);
    }

    pub fn inc_sync_errors(&self) {
        self.sync_errors.inc();
    }

    /// A watch of `resource` (`services`, `endpointslices`, `nodes`) was restarted.
    pub fn inc_watch_restarts(&self, resource: &str) {
        self.watch_restarts
            .get_or_create(&ResourceLabels {
                resource: resource.to_string(),
            })
            .inc();
    }

    /// Ready: the datapath is attached and holds the current table. `false` gives /readyz the
    /// generic reason; [`Metrics::set_not_ready`] gives a specific one.
    pub fn set_ready(&self, ready: bool) {
        let mut not_ready = lock(&self.not_ready);
        *not_ready = (!ready).then(|| NOT_SYNCED.to_string());
        self.ready.set(u64::from(ready));
    }

    /// Not ready, for `reason` (shown by /readyz).
    pub fn set_not_ready(&self, reason: &str) {
        let mut not_ready = lock(&self.not_ready);
        *not_ready = Some(reason.to_string());
        self.ready.set(0);
    }

    pub fn is_ready(&self) -> bool {
        lock(&self.not_ready).is_none()
    }

    /// `Ok` while ready, else why not (what /readyz answers).
    pub fn readiness(&self) -> Result<(), String> {
        lock(&self.not_ready).clone().map_or(Ok(()), Err)
    }

    /// Every metric in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, nor can encoding these label values; were it to,
        // a partial page beats none.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding the metrics");
        }
        out
    }
}

/// Observes a duration: a non-finite one is dropped (it would poison `_sum`), a negative one
/// (clock step) counts as 0.
fn observe(histogram: &Histogram, seconds: f64) {
    if !seconds.is_finite() {
        debug!(seconds, "ignoring a non-finite duration");
        return;
    }
    histogram.observe(seconds.max(0.0));
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/metrics`, `/healthz` and `/readyz` of `metrics`.
pub fn routes(metrics: Arc<Metrics>) -> Routes {
    let readiness = Arc::clone(&metrics);
    Routes::new()
        .get("/metrics", move |_| {
            http::with_type(
                StatusCode::OK,
                prometheus_text::CONTENT_TYPE,
                metrics.render(),
            )
        })
        .get("/healthz", |_| http::text(StatusCode::OK, "ok\n"))
        .get("/readyz", move |_| match readiness.readiness() {
            Ok(()) => http::text(StatusCode::OK, "ok\n"),
            Err(reason) => http::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        })
}

/// Binds `addr` (an error names it) and serves [`routes`] on a task of its own, within the
/// default [`Limits`], until the runtime shuts down or the handle is aborted.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<JoinHandle<()>> {
    let listener = http::bind(addr, "metrics (--metrics-addr)").await?;
    let local = listener.local_addr().unwrap_or(addr);
    // The tests read the address from this line (`--metrics-addr 127.0.0.1:0`).
    info!(addr = %local, "serving /metrics, /healthz and /readyz");
    Ok(http::spawn(listener, routes(metrics), Limits::default()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::net::TcpListener;

    use super::*;
    use crate::http::testing::*;

    async fn start(metrics: Arc<Metrics>) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = http::spawn(listener, routes(metrics), Limits::default());
        (addr, server)
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
        m.set_programmed_frontends_of_kind("node_port", 4);
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
        assert_eq!(
            s["clusterip_programmed_frontends_by_kind{kind=\"node_port\"}"],
            4.0
        );
        assert_eq!(
            s["clusterip_programmed_frontends_by_kind{kind=\"load_balancer\"}"],
            0.0
        );
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

    /// Every family the hand-written renderer emitted, with its type and help, exactly: the
    /// names dashboards, alerts and the e2e tests know (no `_total_total`, no lost unit).
    /// One difference: a labelled family without any series (the map gauges before the first
    /// sync) is now left out whole, where the old renderer wrote its HELP and TYPE alone.
    #[test]
    fn names_types_and_help_are_unchanged() {
        let expected = [
            (
                "clusterip_build_info",
                "gauge",
                "The agent's version; always 1.",
            ),
            (
                "clusterip_ready",
                "gauge",
                "1 when the datapath is attached and holds the current table.",
            ),
            (
                "clusterip_sync_duration_seconds",
                "histogram",
                "Time to apply a table (or part of one) to the BPF maps.",
            ),
            (
                "clusterip_network_programming_duration_seconds",
                "histogram",
                "Time from receiving a Service or EndpointSlice change to having it in the BPF maps.",
            ),
            (
                "clusterip_syncs_total",
                "counter",
                "Successful applies of the table to the BPF maps.",
            ),
            (
                "clusterip_sync_errors_total",
                "counter",
                "Failed applies of the table to the BPF maps.",
            ),
            (
                "clusterip_last_sync_timestamp_seconds",
                "gauge",
                "Unix time of the last successful apply; 0 before the first.",
            ),
            (
                "clusterip_programmed_services",
                "gauge",
                "Services programmed in the datapath.",
            ),
            (
                "clusterip_programmed_frontends",
                "gauge",
                "Frontends (VIP, port, protocol) programmed in the datapath.",
            ),
            (
                "clusterip_programmed_frontends_by_kind",
                "gauge",
                "Frontends programmed in the datapath, by where their address comes from.",
            ),
            (
                "clusterip_programmed_endpoints",
                "gauge",
                "Backends programmed in the datapath.",
            ),
            (
                "clusterip_map_entries",
                "gauge",
                "Entries in use in a BPF map.",
            ),
            (
                "clusterip_map_capacity",
                "gauge",
                "Maximum entries of a BPF map.",
            ),
            (
                "clusterip_watch_restarts_total",
                "counter",
                "Restarts of a Kubernetes API watch after an error or its end.",
            ),
        ];
        let m = Metrics::default();
        let bare = m.render();
        assert!(!bare.contains("clusterip_map_"), "{bare}");
        m.set_map_usage("CIP_SVC4", 1, 2);
        let text = m.render();
        let mut families = Vec::new();
        let mut lines = text.lines().filter(|l| l.starts_with('#')).peekable();
        while let Some(help) = lines.next() {
            let help = help.strip_prefix("# HELP ").expect(help);
            let (name, help) = help.split_once(' ').expect("name help");
            let kind = lines
                .next()
                .and_then(|t| t.strip_prefix(&format!("# TYPE {name} ")))
                .expect("TYPE after HELP");
            families.push((name, kind, help));
        }
        assert_eq!(families, expected);
        assert!(!text.contains("# EOF"), "not OpenMetrics");

        let samples = check_exposition(&text);
        assert_eq!(
            samples[&format!(
                "clusterip_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )],
            1.0
        );
        assert_eq!(samples["clusterip_last_sync_timestamp_seconds"], 0.0);
    }

    #[test]
    fn readiness_and_its_gauge_agree() {
        let m = Metrics::default();
        let ready = |m: &Metrics| check_exposition(&m.render())["clusterip_ready"];
        assert_eq!(m.readiness(), Err(NOT_SYNCED.to_string()));
        assert!(!m.is_ready());
        assert_eq!(ready(&m), 0.0);
        m.set_ready(true);
        assert_eq!(
            (m.readiness(), m.is_ready(), ready(&m)),
            (Ok(()), true, 1.0)
        );
        m.set_not_ready("the API server is unreachable");
        assert_eq!(
            m.readiness(),
            Err("the API server is unreachable".to_string())
        );
        assert_eq!(ready(&m), 0.0);
        m.set_ready(true);
        m.set_ready(false);
        assert_eq!(m.readiness(), Err(NOT_SYNCED.to_string()));
        assert_eq!(ready(&m), 0.0);
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_over_tcp() {
        let metrics = Arc::new(Metrics::default());
        let (addr, server) = start(Arc::clone(&metrics)).await;

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&head, "content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
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

        let (status, _, body) = get(addr, "/nope").await;
        assert_eq!(
            (status, body.as_str()),
            (404, "not found: try /metrics, /healthz, /readyz\n")
        );
        assert_eq!(get(addr, "/metrics/x").await.0, 404);

        let (status, head, _) =
            raw(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, 405);
        assert_eq!(header(&head, "allow"), Some("GET, HEAD"), "{head}");

        let (status, head, body) = raw(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200);
        assert_eq!(header(&head, "content-length"), Some("3"), "{head}");
        assert!(body.is_empty(), "HEAD has no body: {body:?}");

        assert!(!server.is_finished());
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
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        let msg = e.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("--metrics-addr"), "{msg}");
        drop(taken);
        let server = serve(addr, metrics).await.expect("free now");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        server.abort();
    }
}
