//! The Kubernetes API source (`clusterip_agent::source::kube`) against the in-process fake API
//! server (`clusterip_tests::fakeapi`), through a kubeconfig file with a bearer token. Not
//! privileged: no BPF, no netns; everything runs in this process over 127.0.0.1.
//!
//! The last tests check the fake server itself over raw HTTP/1.1 (410 Expired, bookmarks,
//! selector transitions, keep-alive after a watch ends, abrupt closes), so that what the source
//! tests prove holds against a server that behaves like the real one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clusterip_agent::model::{Key, ObjectKind, ServiceObject, SliceObject};
use clusterip_agent::source::SourceEvent;
use clusterip_agent::source::kube::{client, list_once, spawn};
use clusterip_tests::fakeapi::{FakeApi, Kind};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// Objects

fn service(name: &str, ip: &str, port: u16, labels: &[(&str, &str)]) -> Service {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": port, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn slice(name: &str, svc: &str, ip: &str, labels: &[(&str, &str)]) -> EndpointSlice {
    let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
    all.insert("kubernetes.io/service-name", svc);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": all},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

fn node(name: &str, zone: Option<&str>) -> Node {
    let labels: BTreeMap<&str, &str> = zone
        .map(|z| ("topology.kubernetes.io/zone", z))
        .into_iter()
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";
const NODE: &str = "node-a";

/// The name of what an event carries: a checked object or a key.
trait Named {
    fn name(&self) -> &str;
}

impl Named for Arc<ServiceObject> {
    fn name(&self) -> &str {
        self.key().name()
    }
}

impl Named for Arc<SliceObject> {
    fn name(&self) -> &str {
        self.key().name()
    }
}

impl Named for Service {
    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

impl Named for EndpointSlice {
    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

impl Named for Key {
    fn name(&self) -> &str {
        Key::name(self)
    }
}

fn names<K: Named>(objects: &[K]) -> Vec<String> {
    let mut names: Vec<String> = objects.iter().map(|o| o.name().to_owned()).collect();
    names.sort();
    names
}

fn name<K: Named>(object: &K) -> &str {
    object.name()
}

/// The port of a service's first frontend.
fn port(svc: &ServiceObject) -> u16 {
    svc.frontends().next().expect("a frontend").port
}

/// A short description of an event, for assertions and messages.
fn describe(event: &SourceEvent) -> String {
    match event {
        SourceEvent::ServiceApplied(s) => format!("ServiceApplied({})", name(s)),
        SourceEvent::ServiceDeleted(s) => format!("ServiceDeleted({})", name(s)),
        SourceEvent::SliceApplied(s) => format!("SliceApplied({})", name(s)),
        SourceEvent::SliceDeleted(s) => format!("SliceDeleted({})", name(s)),
        SourceEvent::Listing(kind) => format!("Listing({kind})"),
        SourceEvent::Listed(kind) => format!("Listed({kind})"),
        SourceEvent::NodeUpdated { zone, .. } => format!("NodeZone({zone:?})"),
        SourceEvent::WatchRestarted(what) => format!("WatchRestarted({what})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// Captured log output of the whole test binary (tracing, warn and above from the agent).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("clusterip_agent=info")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(data)?;
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("cip-kube-{}", clusterip_tests::uniq()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The source running against a kubeconfig; its events.
struct Source {
    rx: mpsc::Receiver<(Instant, SourceEvent)>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    async fn start(api: &FakeApi) -> Source {
        let dir = TempDir::new();
        let kubeconfig = api.write_kubeconfig(&dir.0);
        Source::start_with(kubeconfig, dir).await
    }

    async fn start_with(kubeconfig: PathBuf, dir: TempDir) -> Source {
        logs();
        let client = client(Some(kubeconfig.as_path())).await.expect("client");
        let (tx, rx) = mpsc::channel(1024);
        let task = spawn(client, NODE.to_string(), tx);
        Source {
            rx,
            task,
            _dir: dir,
        }
    }

    async fn next(&mut self) -> SourceEvent {
        let before = Instant::now();
        let (stamp, event) = tokio::time::timeout(Duration::from_secs(15), self.rx.recv())
            .await
            .expect("no event from the source within 15 s")
            .expect("source channel closed");
        assert!(stamp <= Instant::now() && stamp + Duration::from_secs(15) >= before);
        eprintln!("event: {}", describe(&event));
        event
    }

    /// Events until `want` returns Some; returns it and the events before it.
    async fn until<T>(
        &mut self,
        what: &str,
        mut want: impl FnMut(&SourceEvent) -> Option<T>,
    ) -> (T, Vec<SourceEvent>) {
        let mut skipped = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(15), self.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "waiting for {what}; got only {:?}",
                        skipped.iter().map(describe).collect::<Vec<_>>()
                    )
                });
            if let Some(t) = want(&event) {
                return (t, skipped);
            }
            skipped.push(event);
        }
    }

    /// Every event within `d`.
    async fn during(&mut self, d: Duration) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some((_, e))) = tokio::time::timeout_at(end, self.rx.recv()).await {
            events.push(e);
        }
        events
    }

    /// The three initial sets: (services, slices, zone), with nothing else before them: each
    /// kind as Listing, its objects one by one, Listed.
    async fn initial(
        &mut self,
    ) -> (
        Vec<Arc<ServiceObject>>,
        Vec<Arc<SliceObject>>,
        Option<String>,
    ) {
        let (mut services, mut slices, mut zone) = (None, None, None);
        let (mut listing_services, mut listing_slices) = (None, None);
        while services.is_none() || slices.is_none() || zone.is_none() {
            match self.next().await {
                SourceEvent::Listing(ObjectKind::Service) if services.is_none() => {
                    listing_services = Some(Vec::new())
                }
                SourceEvent::Listing(ObjectKind::EndpointSlice) if slices.is_none() => {
                    listing_slices = Some(Vec::new())
                }
                SourceEvent::ServiceApplied(s) if listing_services.is_some() => {
                    listing_services.as_mut().unwrap().push(s)
                }
                SourceEvent::SliceApplied(s) if listing_slices.is_some() => {
                    listing_slices.as_mut().unwrap().push(s)
                }
                SourceEvent::Listed(ObjectKind::Service) if listing_services.is_some() => {
                    services = listing_services.take()
                }
                SourceEvent::Listed(ObjectKind::EndpointSlice) if listing_slices.is_some() => {
                    slices = listing_slices.take()
                }
                SourceEvent::NodeUpdated { zone: z, .. } if zone.is_none() => zone = Some(z),
                other => panic!("unexpected before the initial sets: {}", describe(&other)),
            }
        }
        (services.unwrap(), slices.unwrap(), zone.unwrap())
    }
}

fn populate(api: &FakeApi) {
    api.apply(&service("a", "10.96.0.1", 80, &[]));
    api.apply(&service("b", "10.96.0.2", 81, &[("app", "b")]));
    api.apply(&service(
        "other-proxy",
        "10.96.0.3",
        80,
        &[(PROXY_NAME, "x")],
    ));
    api.apply(&service("headless", "None", 80, &[]));
    api.apply(&slice("a-1", "a", "10.0.0.1", &[]));
    api.apply(&slice("b-1", "b", "10.0.0.2", &[]));
    api.apply(&slice(
        "headless-1",
        "headless",
        "10.0.0.3",
        &[(HEADLESS, "")],
    ));
    api.apply(&node(NODE, Some("zone-a")));
    api.apply(&node("node-b", Some("zone-b")));
}

// ---------------------------------------------------------------------------------------------
// The source

#[tokio::test]
async fn initial_lists_arrive_object_by_object_between_listing_and_listed() {
    let api = FakeApi::start();
    populate(&api);
    let mut source = Source::start(&api).await;
    let (services, slices, zone) = source.initial().await;
    assert_eq!(names(&services), ["a", "b"], "kube-proxy's selectors");
    assert_eq!(names(&slices), ["a-1", "b-1"]);
    assert_eq!(zone.as_deref(), Some("zone-a"));
    let b = services.iter().find(|s| name(*s) == "b").unwrap();
    assert_eq!(
        b.cluster_ips(),
        ["10.96.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(b.problems().is_empty());

    // What was asked of the server: authenticated list then watch, with the selectors.
    let log = api.request_log();
    assert!(log.iter().all(|r| r.authorized), "{log:?}");
    let svc_list = log
        .iter()
        .find(|r| r.path() == "/api/v1/services" && !r.is_watch())
        .expect("services listed");
    assert_eq!(
        svc_list.param("labelSelector").as_deref(),
        Some("!service.kubernetes.io/service-proxy-name")
    );
    assert_eq!(
        svc_list.param("fieldSelector").as_deref(),
        Some("spec.clusterIP!=None")
    );
    let slice_list = log
        .iter()
        .find(|r| r.path() == "/apis/discovery.k8s.io/v1/endpointslices" && !r.is_watch())
        .expect("slices listed");
    assert_eq!(
        slice_list.param("labelSelector").as_deref(),
        Some("!service.kubernetes.io/headless")
    );
    let node_list = log
        .iter()
        .find(|r| r.path() == "/api/v1/nodes" && !r.is_watch())
        .expect("node listed");
    assert_eq!(
        node_list.param("fieldSelector").as_deref(),
        Some("metadata.name=node-a")
    );
    // Watches follow, with bookmarks, from the list's resourceVersion.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = api.request_log();
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
    ] {
        let watch = log
            .iter()
            .find(|r| r.path() == path && r.is_watch())
            .unwrap_or_else(|| panic!("no watch of {path}: {log:?}"));
        assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
        assert!(watch.param("resourceVersion").is_some_and(|rv| rv != "0"));
    }
}

#[tokio::test]
async fn empty_cluster_gives_empty_sets_then_events() {
    let api = FakeApi::start();
    let mut source = Source::start(&api).await;
    let (services, slices, zone) = source.initial().await;
    assert!(services.is_empty() && slices.is_empty() && zone.is_none());

    api.apply(&service("a", "10.96.0.1", 80, &[]));
    let (svc, _) = source
        .until("a applied", |e| match e {
            SourceEvent::ServiceApplied(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name(&svc), "a");

    // A modification arrives as an Apply with the new content.
    api.apply(&service("a", "10.96.0.1", 8080, &[]));
    let (port, skipped) = source
        .until("a modified", |e| match e {
            SourceEvent::ServiceApplied(s) => Some(port(s)),
            _ => None,
        })
        .await;
    assert_eq!(port, 8080);
    assert!(
        skipped.is_empty(),
        "{:?}",
        skipped.iter().map(describe).collect::<Vec<_>>()
    );

    api.apply(&slice("a-1", "a", "10.0.0.1", &[]));
    let (sl, _) = source
        .until("slice applied", |e| match e {
            SourceEvent::SliceApplied(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(name(&sl), "a-1");
    assert_eq!(
        sl.endpoint_addresses().collect::<Vec<_>>(),
        ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    assert!(api.delete(Kind::EndpointSlice, "default", "a-1"));
    let (gone, _) = source
        .until("slice deleted", |e| match e {
            SourceEvent::SliceDeleted(s) => Some(name(s).to_string()),
            _ => None,
        })
        .await;
    assert_eq!(gone, "a-1");
    assert!(api.delete(Kind::Service, "default", "a"));
    let (gone, _) = source
        .until("service deleted", |e| match e {
            SourceEvent::ServiceDeleted(s) => Some(name(s).to_string()),
            _ => None,
        })
        .await;
    assert_eq!(gone, "a");
}

#[tokio::test]
async fn services_entering_and_leaving_the_selectors() {
    let api = FakeApi::start();
    api.apply(&service("a", "10.96.0.1", 80, &[]));
    let mut source = Source::start(&api).await;
    let (services, _, _) = source.initial().await;
    assert_eq!(names(&services), ["a"]);

    // Another proxy takes it over: deleted for us.
    api.apply(&service("a", "10.96.0.1", 80, &[(PROXY_NAME, "other")]));
    let (gone, skipped) = source
        .until("a deleted", |e| match e {
            SourceEvent::ServiceDeleted(s) => Some(name(s).to_string()),
            _ => None,
        })
        .await;
    assert_eq!(gone, "a");
    assert!(
        skipped.is_empty(),
        "{:?}",
        skipped.iter().map(describe).collect::<Vec<_>>()
    );
    // A change while it is not ours: nothing.
    api.apply(&service("a", "10.96.0.1", 81, &[(PROXY_NAME, "other")]));
    // Given back: applied.
    api.apply(&service("a", "10.96.0.1", 82, &[]));
    let (port, skipped) = source
        .until("a applied", |e| match e {
            SourceEvent::ServiceApplied(s) => Some(port(s)),
            _ => None,
        })
        .await;
    assert_eq!(port, 82);
    assert!(
        skipped.is_empty(),
        "{:?}",
        skipped.iter().map(describe).collect::<Vec<_>>()
    );

    // Headless services and their slices are never reported, whatever happens to them.
    api.apply(&service("headless", "None", 80, &[]));
    api.apply(&service("headless", "None", 81, &[]));
    api.apply(&slice(
        "headless-1",
        "headless",
        "10.0.0.9",
        &[(HEADLESS, "")],
    ));
    api.apply(&slice(
        "headless-1",
        "headless",
        "10.0.0.8",
        &[(HEADLESS, "")],
    ));
    assert!(api.delete(Kind::Service, "default", "headless"));
    assert!(api.delete(Kind::EndpointSlice, "default", "headless-1"));
    // A sentinel after them: everything before it has been delivered.
    api.apply(&service("sentinel", "10.96.0.9", 80, &[]));
    api.apply(&slice("sentinel-1", "sentinel", "10.0.0.1", &[]));
    let mut events = Vec::new();
    let mut seen = (false, false);
    while seen != (true, true) {
        let e = source.next().await;
        match &e {
            SourceEvent::ServiceApplied(s) if name(s) == "sentinel" => seen.0 = true,
            SourceEvent::SliceApplied(s) if name(s) == "sentinel-1" => seen.1 = true,
            _ => events.push(describe(&e)),
        }
    }
    assert!(events.is_empty(), "headless objects reported: {events:?}");
}

/// The objects of a folded state: what the store would hold, by name.
#[derive(Default, Debug, PartialEq)]
struct Folded {
    services: BTreeMap<String, Arc<ServiceObject>>,
    slices: BTreeMap<String, Arc<SliceObject>>,
    /// Lists in progress, per kind: they replace the state once complete.
    listing_services: Option<BTreeMap<String, Arc<ServiceObject>>>,
    listing_slices: Option<BTreeMap<String, Arc<SliceObject>>>,
}

impl Folded {
    fn apply(&mut self, e: &SourceEvent) {
        match e {
            SourceEvent::ServiceApplied(s) => {
                let into = self.listing_services.as_mut().unwrap_or(&mut self.services);
                into.insert(name(s).into(), s.clone());
            }
            SourceEvent::ServiceDeleted(s) => {
                self.services.remove(name(s));
            }
            SourceEvent::SliceApplied(s) => {
                let into = self.listing_slices.as_mut().unwrap_or(&mut self.slices);
                into.insert(name(s).into(), s.clone());
            }
            SourceEvent::SliceDeleted(s) => {
                self.slices.remove(name(s));
            }
            SourceEvent::Listing(ObjectKind::Service) => {
                self.listing_services = Some(BTreeMap::new())
            }
            SourceEvent::Listing(ObjectKind::EndpointSlice) => {
                self.listing_slices = Some(BTreeMap::new())
            }
            SourceEvent::Listed(ObjectKind::Service) => {
                self.services = self.listing_services.take().unwrap_or_default()
            }
            SourceEvent::Listed(ObjectKind::EndpointSlice) => {
                self.slices = self.listing_slices.take().unwrap_or_default()
            }
            SourceEvent::Listing(_)
            | SourceEvent::Listed(_)
            | SourceEvent::NodeUpdated { .. }
            | SourceEvent::WatchRestarted(_) => {}
        }
    }

    fn of(services: Vec<Arc<ServiceObject>>, slices: Vec<Arc<SliceObject>>) -> Folded {
        Folded {
            services: services.into_iter().map(|s| (name(&s).into(), s)).collect(),
            slices: slices.into_iter().map(|s| (name(&s).into(), s)).collect(),
            ..Folded::default()
        }
    }
}

/// What the server holds, as a [`Folded`], read through its own API (raw HTTP lists) and
/// checked as the source checks what it gets.
fn server_state(api: &FakeApi) -> Folded {
    let mut conn = Raw::connect(api);
    let mut list = |path: &str| -> Vec<Value> {
        let (code, body) = conn.get(path);
        assert_eq!(code, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["items"].as_array().unwrap().clone()
    };
    let services = list(
        "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fservice-proxy-name&fieldSelector=spec.clusterIP%21%3DNone",
    );
    let slices = list(
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless",
    );
    Folded::of(
        services
            .into_iter()
            .map(|v| Arc::new(ServiceObject::new(&serde_json::from_value(v).unwrap())))
            .collect(),
        slices
            .into_iter()
            .map(|v| Arc::new(SliceObject::new(&serde_json::from_value(v).unwrap())))
            .collect(),
    )
}

#[tokio::test]
async fn expired_history_relists_without_an_empty_state() {
    let api = FakeApi::start();
    populate(&api);
    let mut source = Source::start(&api).await;
    let (services, slices, _) = source.initial().await;
    let mut folded = Folded::of(services, slices);
    assert_eq!(folded, server_state(&api));
    let watches_before = api.request_log().len();

    // History is compacted and the watches break: resuming gets 410, the source relists.
    api.compact();
    api.drop_watches();
    // Changes while it is away: it learns them from the relist.
    api.apply(&service("c", "10.96.0.4", 80, &[]));
    assert!(api.delete(Kind::Service, "default", "a"));
    api.apply(&slice("b-1", "b", "10.0.0.22", &[]));
    assert!(api.delete(Kind::EndpointSlice, "default", "a-1"));

    // The relist arrives as Listing, the objects, Listed; the state held meanwhile (what
    // the store keeps) is never emptied: deletions happen at Listed.
    let mut restarted = Vec::new();
    let mut relisted = (false, false);
    while relisted != (true, true) {
        let e = source.next().await;
        match &e {
            SourceEvent::WatchRestarted(what) => restarted.push(*what),
            SourceEvent::Listing(ObjectKind::Service) => {
                assert!(restarted.contains(&"services"), "relist without a restart")
            }
            SourceEvent::Listing(ObjectKind::EndpointSlice) => assert!(
                restarted.contains(&"endpointslices"),
                "relist without a restart"
            ),
            SourceEvent::ServiceApplied(_) => assert!(folded.listing_services.is_some()),
            SourceEvent::SliceApplied(_) => assert!(folded.listing_slices.is_some()),
            SourceEvent::Listed(ObjectKind::Service) => {
                assert!(!folded.listing_services.as_ref().unwrap().is_empty());
                relisted.0 = true;
            }
            SourceEvent::Listed(ObjectKind::EndpointSlice) => {
                assert!(!folded.listing_slices.as_ref().unwrap().is_empty());
                relisted.1 = true;
            }
            SourceEvent::NodeUpdated { zone: z, .. } => assert_eq!(z.as_deref(), Some("zone-a")),
            other => panic!("before the relist: {}", describe(other)),
        }
        folded.apply(&e);
        assert!(!folded.services.is_empty() && !folded.slices.is_empty());
    }
    assert_eq!(folded, server_state(&api), "relisted state = the server's");
    assert!(restarted.contains(&"nodes"));

    // The server saw: watches resumed from before the compaction (410), then lists.
    let log = api.request_log();
    let after = &log[watches_before..];
    let resumed_svc = after
        .iter()
        .position(|r| r.path() == "/api/v1/services" && r.is_watch())
        .expect("services watch resumed");
    assert!(
        after[resumed_svc + 1..]
            .iter()
            .any(|r| r.path() == "/api/v1/services" && !r.is_watch()),
        "relisted after 410: {after:?}"
    );
    // The warning names the resource and the error.
    let text = log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("services") && l.contains("Expired")),
        "{text}"
    );

    // And it keeps watching afterwards.
    api.apply(&service("d", "10.96.0.5", 80, &[]));
    let (n, _) = source
        .until("d", |e| match e {
            SourceEvent::ServiceApplied(s) => Some(name(s).to_string()),
            _ => None,
        })
        .await;
    assert_eq!(n, "d");
}

async fn wait_open_watches(api: &FakeApi, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.open_watches() < n {
        assert!(Instant::now() < deadline, "watches not (re)opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes made while the watches are broken, and the events they must come back as.
fn change_while_away(api: &FakeApi, round: u16) -> Vec<String> {
    api.apply(&service(&format!("c{round}"), "10.96.0.4", 80, &[]));
    api.apply(&service("a", "10.96.0.1", 8080 + round, &[]));
    api.apply(&slice(&format!("c{round}-1"), "c", "10.0.0.4", &[]));
    api.apply(&node(NODE, Some(&format!("zone-{round}"))));
    let mut expected = vec![
        format!("NodeZone(Some(\"zone-{round}\"))"),
        "ServiceApplied(a)".to_string(),
        format!("ServiceApplied(c{round})"),
        format!("SliceApplied(c{round}-1)"),
    ];
    expected.sort();
    expected
}

/// The next `n` events that are not WatchRestarted (returned separately); a relist fails.
async fn resumed_events(
    source: &mut Source,
    folded: &mut Folded,
    n: usize,
) -> (Vec<String>, Vec<&'static str>) {
    let mut restarted = Vec::new();
    let mut got = Vec::new();
    while got.len() < n {
        let e = source.next().await;
        match &e {
            SourceEvent::WatchRestarted(what) => restarted.push(*what),
            SourceEvent::Listing(_) | SourceEvent::Listed(_) => {
                panic!("relisted instead of resuming: {}", describe(&e))
            }
            other => got.push(describe(other)),
        }
        folded.apply(&e);
    }
    got.sort();
    restarted.sort();
    (got, restarted)
}

#[tokio::test]
async fn broken_watches_resume_without_losing_events() {
    let api = FakeApi::start();
    populate(&api);
    let mut source = Source::start(&api).await;
    let (services, slices, _) = source.initial().await;
    let mut folded = Folded::of(services, slices);
    wait_open_watches(&api, 3).await;
    let before = api.request_log().len();

    // Connections cut mid-stream: kube resumes from its resourceVersion at once (an EOF in a
    // watch body is a resumable end for kube, not an error), nothing is lost, no relist.
    api.drop_watches();
    let expected = change_while_away(&api, 1);
    let (got, _) = resumed_events(&mut source, &mut folded, 4).await;
    assert_eq!(got, expected);
    let log = api.request_log();
    let after = &log[before..];
    assert!(
        after
            .iter()
            .all(|r| r.is_watch() && r.param("resourceVersion").is_some_and(|rv| rv != "0")),
        "resumed from a resourceVersion, no list: {after:?}"
    );
    assert_eq!(folded, server_state(&api));

    // An outage: connections cut and the server gone for a while. Every watcher
    // reports its restart; once the server is back they resume where they were.
    wait_open_watches(&api, 3).await;
    api.set_down(true);
    api.drop_watches();
    let expected = change_while_away(&api, 2);
    let mut restarted = Vec::new();
    while restarted.len() < 3 {
        match source.next().await {
            SourceEvent::WatchRestarted(what) => {
                if !restarted.contains(&what) {
                    restarted.push(what)
                }
            }
            other => panic!("while the server is down: {}", describe(&other)),
        }
    }
    api.set_down(false);
    let (got, _) = resumed_events(&mut source, &mut folded, 4).await;
    assert_eq!(got, expected);
    assert_eq!(folded, server_state(&api));
    let text = log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("nodes") && l.contains("watch")),
        "{text}"
    );
}

#[tokio::test]
async fn watches_ended_by_the_server_resume_silently() {
    let api = FakeApi::start();
    populate(&api);
    let mut source = Source::start(&api).await;
    source.initial().await;
    wait_open_watches(&api, 3).await;
    // A clean end (timeoutSeconds) on a kept-alive connection: rewatch, no error.
    api.end_watches();
    api.apply(&service("c", "10.96.0.4", 80, &[]));
    let events: Vec<String> = source
        .during(Duration::from_secs(2))
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(events, ["ServiceApplied(c)"]);
}

#[tokio::test]
async fn node_zone_and_its_changes() {
    let api = FakeApi::start();
    api.apply(&node(NODE, Some("zone-a")));
    api.apply(&node("node-b", Some("zone-b")));
    let mut source = Source::start(&api).await;
    let (_, _, zone) = source.initial().await;
    assert_eq!(zone.as_deref(), Some("zone-a"));

    // Another node's changes are not ours.
    api.apply(&node("node-b", Some("zone-x")));
    api.apply(&node(NODE, Some("zone-b")));
    let (zone, skipped) = source
        .until("zone", |e| match e {
            SourceEvent::NodeUpdated { zone: z, .. } => Some(z.clone()),
            _ => None,
        })
        .await;
    assert_eq!(zone.as_deref(), Some("zone-b"));
    assert!(skipped.is_empty());
    api.apply(&node(NODE, None));
    let (zone, _) = source
        .until("no zone", |e| match e {
            SourceEvent::NodeUpdated { zone: z, .. } => Some(z.clone()),
            _ => None,
        })
        .await;
    assert_eq!(zone, None);
    api.apply(&node(NODE, Some("zone-c")));
    assert!(api.delete(Kind::Node, "", NODE));
    let mut zones = Vec::new();
    while zones.len() < 2 {
        if let SourceEvent::NodeUpdated { zone: z, .. } = source.next().await {
            zones.push(z);
        }
    }
    assert_eq!(zones, [Some("zone-c".to_string()), None]);
}

/// This node being deleted, as kube-proxy tells (a deletionTimestamp, or the cluster
/// autoscaler's taint; not any other taint), and its Node missing from a list.
#[tokio::test]
async fn node_deletion_and_its_reversal() {
    let api = FakeApi::start();
    let mut source = Source::start(&api).await;
    // No Node for this node in the initial list: as if deleted.
    let (_, _, zone) = source.initial().await;
    assert_eq!(zone, None);
    let with = |extra: serde_json::Value| {
        let mut n = serde_json::to_value(node(NODE, Some("zone-a"))).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            match k.as_str() {
                "deletionTimestamp" => n["metadata"][k] = v.clone(),
                _ => n[k] = v.clone(),
            }
        }
        serde_json::from_value::<Node>(n).unwrap()
    };
    let taint = |key: &str| json!({"spec": {"taints": [{"key": key, "effect": "NoSchedule"}]}});
    for (n, expected) in [
        (with(json!({})), false),
        (with(taint("ToBeDeletedByClusterAutoscaler")), true),
        (with(taint("example.com/other")), false),
        (
            with(json!({"deletionTimestamp": "2024-01-01T00:00:00Z"})),
            true,
        ),
    ] {
        api.apply(&n);
        let (deleting, _) = source
            .until("the node", |e| match e {
                SourceEvent::NodeUpdated { zone, deleting, .. } => {
                    assert_eq!(zone.as_deref(), Some("zone-a"));
                    Some(*deleting)
                }
                _ => None,
            })
            .await;
        assert_eq!(deleting, expected, "{:?}", n.spec);
    }
}

#[tokio::test]
async fn wrong_token_is_reported_not_fatal() {
    let api = FakeApi::start();
    populate(&api);
    let dir = TempDir::new();
    let kubeconfig = api.write_kubeconfig_with_token(&dir.0, "not-the-token");
    let mut source = Source::start_with(kubeconfig, dir).await;
    let events = source.during(Duration::from_secs(3)).await;
    let described: Vec<String> = events.iter().map(describe).collect();
    for what in ["services", "endpointslices", "nodes"] {
        assert!(
            described.contains(&format!("WatchRestarted({what})")),
            "{described:?}"
        );
    }
    assert!(
        events
            .iter()
            .all(|e| matches!(e, SourceEvent::WatchRestarted(_))),
        "{described:?}"
    );
    assert!(!source.task.is_finished(), "the source keeps trying");
    // It sent the token it was given, and was refused.
    let log = api.request_log();
    assert!(!log.is_empty() && log.iter().all(|r| !r.authorized));
    let text = log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("Unauthorized")),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_server_is_reported_not_fatal() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new();
    let kubeconfig = clusterip_tests::fakeapi::write_kubeconfig(
        &dir.0,
        &format!("http://127.0.0.1:{port}"),
        "token",
    );
    let mut source = Source::start_with(kubeconfig, dir).await;
    let events = source.during(Duration::from_secs(3)).await;
    let described: Vec<String> = events.iter().map(describe).collect();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| matches!(e, SourceEvent::WatchRestarted(_))),
        "{described:?}"
    );
    assert!(!source.task.is_finished());
}

#[tokio::test]
async fn client_errors_name_the_kubeconfig() {
    let dir = TempDir::new();
    let missing = dir.0.join("nope");
    let Err(err) = client(Some(missing.as_path())).await else {
        panic!("a missing kubeconfig is an error")
    };
    assert!(
        format!("{err:#}").contains(&missing.display().to_string()),
        "{err:#}"
    );
    let garbage = dir.0.join("garbage");
    std::fs::write(&garbage, "{ not: [yaml").unwrap();
    let Err(err) = client(Some(garbage.as_path())).await else {
        panic!("a broken kubeconfig is an error")
    };
    assert!(
        format!("{err:#}").contains(&garbage.display().to_string()),
        "{err:#}"
    );
}

#[tokio::test]
async fn list_once_reads_every_page() {
    let api = FakeApi::start();
    populate(&api);
    // More than one page of 500.
    for i in 0..620 {
        api.apply(&service(&format!("s{i:03}"), "10.96.1.1", 80, &[]));
    }
    let dir = TempDir::new();
    let objects = list_once(Some(api.write_kubeconfig(&dir.0).as_path()), NODE)
        .await
        .expect("list_once");
    assert_eq!(objects.services.len(), 622);
    assert!(
        names(&objects.services)
            .iter()
            .all(|n| n != "headless" && n != "other-proxy")
    );
    assert_eq!(names(&objects.slices), ["a-1", "b-1"]);
    assert_eq!(objects.node_zone.as_deref(), Some("zone-a"));
    let log = api.request_log();
    assert!(log.iter().all(|r| !r.is_watch()), "{log:?}");
    let pages = log
        .iter()
        .filter(|r| r.path() == "/api/v1/services")
        .collect::<Vec<_>>();
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(pages[1].param("continue").is_some());

    // A node that is not there: no zone, not an error.
    let objects = list_once(Some(api.write_kubeconfig(&dir.0).as_path()), "elsewhere")
        .await
        .expect("list_once");
    assert_eq!(objects.node_zone, None);
    // A refused token is an error.
    let kubeconfig = api.write_kubeconfig_with_token(&dir.0, "wrong");
    let Err(err) = list_once(Some(kubeconfig.as_path()), NODE).await else {
        panic!("listing with a wrong token succeeded")
    };
    assert!(format!("{err:#}").contains("Unauthorized"), "{err:#}");
}

// ---------------------------------------------------------------------------------------------
// The fake server itself, over raw HTTP/1.1

/// A raw HTTP/1.1 connection (keep-alive).
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    token: String,
    /// Bytes of the current chunked body not yet returned as lines.
    pending: Vec<u8>,
}

impl Raw {
    fn connect(api: &FakeApi) -> Raw {
        let stream = TcpStream::connect(api.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            token: api.token().to_string(),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, path: &str, token: Option<&str>) {
        let token = token.unwrap_or(&self.token).to_string();
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
    }

    /// The status and headers (lowercased names).
    fn head(&mut self) -> (u16, BTreeMap<String, String>) {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let code: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
        (code, headers)
    }

    /// The next chunk; `Ok(None)` at the terminating chunk; `Err` when the connection ends
    /// before it.
    fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data)?;
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }

    /// The next JSON line of a chunked body; `Ok(None)` at its end.
    fn event(&mut self) -> std::io::Result<Option<Value>> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line).unwrap()));
            }
            match self.chunk()? {
                Some(data) => self.pending.extend_from_slice(&data),
                None => return Ok(None),
            }
        }
    }

    /// A whole response.
    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        self.send(path, None);
        let (code, headers) = self.head();
        let body = match headers.get("content-length") {
            Some(len) => {
                let mut body = vec![0; len.parse().unwrap()];
                self.reader.read_exact(&mut body).unwrap();
                body
            }
            None => {
                let mut body = Vec::new();
                while let Some(c) = self.chunk().unwrap() {
                    body.extend_from_slice(&c);
                }
                body
            }
        };
        (code, body)
    }

    fn get_json(&mut self, path: &str) -> (u16, Value) {
        let (code, body) = self.get(path);
        (code, serde_json::from_slice(&body).unwrap())
    }
}

#[test]
fn fake_server_lists_pages_and_selects() {
    let api = FakeApi::start();
    populate(&api);
    let mut conn = Raw::connect(&api);
    // Unauthenticated requests are refused.
    conn.send("/api/v1/services", Some("wrong"));
    let (code, _) = conn.head();
    assert_eq!(code, 401);
    let mut conn = Raw::connect(&api);

    let (code, list) = conn.get_json("/api/v1/services?limit=2");
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["apiVersion"], "v1");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rv, api.resource_version());
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0].get("kind").is_none() && items[0].get("apiVersion").is_none());
    let token = list["metadata"]["continue"].as_str().unwrap().to_string();
    assert_eq!(list["metadata"]["remainingItemCount"], 2);
    let mut all: Vec<String> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let enc: String = token
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect::<Vec<_>>()
        .concat();
    let (_, page2) = conn.get_json(&format!("/api/v1/services?limit=2&continue={enc}"));
    assert!(page2["metadata"].get("continue").is_none());
    all.extend(
        page2["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
    );
    assert_eq!(all, ["a", "b", "headless", "other-proxy"]);
    // A continue token from before a compaction has expired.
    api.compact();
    let (code, status) = conn.get_json(&format!("/api/v1/services?limit=2&continue={enc}"));
    assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")));

    let (_, sel) = conn.get_json(
        "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fservice-proxy-name,app&fieldSelector=spec.clusterIP!%3DNone",
    );
    assert_eq!(sel["items"].as_array().unwrap().len(), 1);
    assert_eq!(sel["items"][0]["metadata"]["name"], "b");
    let (_, nodes) = conn.get_json("/api/v1/nodes?fieldSelector=metadata.name%3Dnode-b");
    assert_eq!(nodes["items"][0]["metadata"]["name"], "node-b");
    assert_eq!(nodes["items"].as_array().unwrap().len(), 1);
    let (code, st) = conn.get_json("/api/v1/nodes?fieldSelector=spec.clusterIP%3DNone");
    assert_eq!((code, st["kind"].as_str()), (400, Some("Status")));
    let (code, st) = conn.get_json("/api/v1/namespaces/default/services/nope");
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")));
    let (code, one) =
        conn.get_json("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/a-1");
    assert_eq!((code, one["kind"].as_str()), (200, Some("EndpointSlice")));
}

#[test]
fn fake_server_watch_protocol() {
    let api = FakeApi::start();
    api.set_bookmark_interval(Duration::from_millis(200));
    populate(&api);
    let rv: u64 = api.resource_version().parse().unwrap();
    let mut conn = Raw::connect(&api);

    // A watch from the current resourceVersion, with bookmarks, ending after 2 s.
    conn.send(
        &format!(
            "/api/v1/services?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&labelSelector=%21{PROXY_NAME}&resourceVersion={rv}"
        ),
        None,
    );
    let (code, headers) = conn.head();
    assert_eq!(code, 200);
    assert_eq!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );
    let ev = conn.event().unwrap().unwrap();
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], rv.to_string());
    // A service that starts matching is ADDED; one that stops is DELETED with its previous
    // content at the new resourceVersion.
    api.apply(&service("other-proxy", "10.96.0.3", 80, &[]));
    api.apply(&service("b", "10.96.0.2", 81, &[(PROXY_NAME, "x")]));
    let mut events = Vec::new();
    while events.len() < 2 {
        let ev = conn.event().unwrap().unwrap();
        if ev["type"] != "BOOKMARK" {
            events.push(ev);
        }
    }
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "other-proxy");
    assert_eq!(events[0]["object"]["kind"], "Service");
    assert_eq!(events[1]["type"], "DELETED");
    assert_eq!(events[1]["object"]["metadata"]["name"], "b");
    assert!(
        events[1]["object"]["metadata"]["labels"]
            .get(PROXY_NAME)
            .is_none()
    );
    assert_eq!(
        events[1]["object"]["metadata"]["resourceVersion"],
        api.resource_version()
    );
    // timeoutSeconds ends the body; the connection stays usable.
    let started = Instant::now();
    while conn.event().unwrap().is_some() {}
    assert!(started.elapsed() < Duration::from_secs(3));
    let (code, _) = conn.get("/api/v1/nodes");
    assert_eq!(code, 200);

    // History replays from an old resourceVersion.
    conn.send(
        &format!("/api/v1/services?watch=1&timeoutSeconds=1&resourceVersion={rv}"),
        None,
    );
    assert_eq!(conn.head().0, 200);
    let ev = conn.event().unwrap().unwrap();
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("MODIFIED"), Some("other-proxy"))
    );
    let ev = conn.event().unwrap().unwrap();
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("MODIFIED"), Some("b"))
    );
    // Without allowWatchBookmarks: no bookmarks, just the end.
    assert!(conn.event().unwrap().is_none());

    // Too old after a compaction: one ERROR event with a 410 Expired Status.
    api.compact();
    conn.send(
        &format!("/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion={rv}"),
        None,
    );
    assert_eq!(conn.head().0, 200);
    let ev = conn.event().unwrap().unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(conn.event().unwrap().is_none());

    // From 0: every current object as ADDED.
    conn.send(
        "/api/v1/nodes?watch=true&resourceVersion=0&timeoutSeconds=1",
        None,
    );
    assert_eq!(conn.head().0, 200);
    let mut added = Vec::new();
    while let Some(ev) = conn.event().unwrap() {
        assert_eq!(ev["type"], "ADDED");
        added.push(
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(added, ["node-a", "node-b"]);

    // Streaming lists: validated, then the objects and the initial-events-end bookmark.
    let (code, st) = conn.get_json("/api/v1/nodes?watch=true&sendInitialEvents=true");
    assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")));
    conn.send(
        "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=0&timeoutSeconds=1",
        None,
    );
    assert_eq!(conn.head().0, 200);
    let types: Vec<Value> = std::iter::from_fn(|| conn.event().unwrap()).collect();
    assert_eq!(types[0]["type"], "ADDED");
    assert_eq!(types[1]["type"], "ADDED");
    assert_eq!(types[2]["type"], "BOOKMARK");
    assert_eq!(
        types[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // drop_watches closes the connection mid-body: no terminating chunk.
    conn.send("/api/v1/services?watch=true", None);
    assert_eq!(conn.head().0, 200);
    for _ in 0..4 {
        assert_eq!(conn.event().unwrap().unwrap()["type"], "ADDED");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.open_watches() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    api.drop_watches();
    let end = conn.event();
    assert!(end.is_err(), "{end:?}");
}
