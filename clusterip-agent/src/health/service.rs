//! The service health check servers, as kube-proxy runs them
//! (`pkg/proxy/healthcheck/service_health.go`): for each `externalTrafficPolicy: Local`
//! service with a `spec.healthCheckNodePort`, an HTTP server on that port, on the node-port
//! addresses, telling the cloud load balancer whether to send the service's traffic to this
//! node:
//!
//! * `200` when the node has local endpoints for the service and the proxy is healthy
//!   ([`ProxyHealth::is_healthy`], not the node's eligibility), else `503`;
//! * whatever the path and method (kube-proxy's handler is the whole server);
//! * headers `Content-Type: application/json`, `X-Content-Type-Options: nosniff` and
//!   `X-Load-Balancing-Endpoint-Weight: <local endpoints>` (for weighted load balancers);
//! * body exactly as kube-proxy formats it (one tab per level, shown here as four spaces; no
//!   final newline):
//!
//! ```text
//! {
//!     "service": {
//!         "namespace": "ns",
//!         "name": "web"
//!     },
//!     "localEndpoints": 2,
//!     "serviceProxyHealthy": true
//! }
//! ```
//!
//! [`ServiceHealth::sync`] takes the whole current list: servers of services gone, or whose
//! port changed, are closed first (so ports can move between services in one sync), then the
//! new ones opened; a service keeps its server (and its connections) while only its endpoint
//! count changes. A port that cannot be bound (taken by another process, an address not there)
//! is logged with the service and retried every 5 s, and at each sync; it never stops the
//! agent. As in kube-proxy a service is served on all of its addresses or on none.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::node::nosniff;
use super::{ProxyHealth, lock};
use crate::http::{self, Body, Limits, Routes};

/// How often ports that could not be bound are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// One service that wants a health check server: a service of type LoadBalancer with
/// `externalTrafficPolicy: Local` and a `spec.healthCheckNodePort`, and how many of its
/// endpoints this node has: as kube-proxy counts them (`LocalReadyEndpoints`), the distinct
/// addresses of its ready endpoints on this node, whatever the ports; serving-but-terminating
/// ones do not count, so that a node left with only those fails the check and is drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckService {
    pub namespace: String,
    pub name: String,
    /// `spec.healthCheckNodePort`; 0 is no port (ignored).
    pub port: u16,
    pub local_endpoints: usize,
}

/// A service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where the health check servers listen: kube-proxy listens on the node-port addresses
/// (`--nodeport-addresses`), every address when they are unrestricted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BindAddresses {
    /// Every address of both families (one dual-stack socket, as Go listens on `0.0.0.0`).
    #[default]
    All,
    /// These addresses, one socket each; a service is served on all of them or on none.
    Only(Vec<IpAddr>),
}

/// What one service's health check server is doing (see [`ServiceHealth::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckStatus {
    pub service: ServiceName,
    pub port: u16,
    pub local_endpoints: usize,
    /// The bound addresses; empty while the port cannot be bound.
    pub listening: Vec<SocketAddr>,
    /// Why the port cannot be bound (retried), if it cannot.
    pub error: Option<String>,
}

/// The service health check servers. Needs a tokio runtime; dropping it closes every server.
pub struct ServiceHealth {
    shared: Arc<Shared>,
    retry: JoinHandle<()>,
}

impl fmt::Debug for ServiceHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHealth")
            .field("bind", &*lock(&self.shared.bind))
            .field("services", &self.status())
            .finish()
    }
}

struct Shared {
    /// Changed by [`ServiceHealth::rebind`].
    bind: Mutex<BindAddresses>,
    proxy: Arc<ProxyHealth>,
    /// How often failed binds are retried (for the log).
    retry: Duration,
    services: Mutex<BTreeMap<ServiceName, Instance>>,
}

struct Instance {
    port: u16,
    /// Read by the server's handler at each request.
    local_endpoints: Arc<AtomicUsize>,
    serving: Serving,
}

enum Serving {
    Listening(Vec<(SocketAddr, JoinHandle<()>)>),
    /// The last bind error (logged when it changes); retried. Empty: not tried yet.
    Failed(String),
}

impl ServiceHealth {
    /// No servers yet; they listen on `bind` and answer with `proxy`'s health. Ports that
    /// cannot be bound are retried every [`RETRY_INTERVAL`].
    pub fn new(bind: BindAddresses, proxy: Arc<ProxyHealth>) -> Self {
        Self::with_retry_interval(bind, proxy, RETRY_INTERVAL)
    }

    /// [`ServiceHealth::new`] retrying every `retry`.
    pub fn with_retry_interval(
        bind: BindAddresses,
        proxy: Arc<ProxyHealth>,
        retry: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            bind: Mutex::new(bind),
            proxy,
            retry,
            services: Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&shared);
        let retry = tokio::spawn(async move {
            let mut tick = tokio::time::interval(retry);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.retry_failed();
            }
        });
        Self { shared, retry }
    }

    /// Makes `services` the served set: closes the servers of services not in it or whose
    /// port changed, then opens the missing ones and sets every endpoint count. A service
    /// listed twice: the first entry counts. Returns once the ports of closed servers are
    /// free again.
    pub async fn sync(&mut self, services: Vec<HealthCheckService>) {
        let mut wanted: BTreeMap<ServiceName, (u16, usize)> = BTreeMap::new();
        for s in services {
            let name = ServiceName {
                namespace: s.namespace,
                name: s.name,
            };
            if s.port == 0 {
                warn!(service = %name, "a health check without a port was ignored");
                continue;
            }
            if wanted.contains_key(&name) {
                warn!(service = %name, "service listed twice for health checks; the first counts");
                continue;
            }
            wanted.insert(name, (s.port, s.local_endpoints));
        }

        // Close first, so a port leaving one service can be taken by another in this sync.
        let closing: Vec<JoinHandle<()>> = {
            let mut services = lock(&self.shared.services);
            let gone: Vec<ServiceName> = services
                .iter()
                .filter(|(name, i)| wanted.get(*name).is_none_or(|(port, _)| *port != i.port))
                .map(|(name, _)| name.clone())
                .collect();
            gone.into_iter()
                .filter_map(|name| {
                    let instance = services.remove(&name)?;
                    debug!(service = %name, port = instance.port, "closing health check");
                    match instance.serving {
                        Serving::Listening(servers) => Some(servers),
                        Serving::Failed(_) => None,
                    }
                })
                .flatten()
                .map(|(_, server)| server)
                .collect()
        };
        for server in closing {
            server.abort();
            // Done once the task, and with it the listener, is dropped.
            let _cancelled = server.await;
        }

        let mut services = lock(&self.shared.services);
        for (name, (port, local_endpoints)) in wanted {
            match services.get_mut(&name) {
                Some(instance) => {
                    instance
                        .local_endpoints
                        .store(local_endpoints, Ordering::Relaxed);
                    if matches!(instance.serving, Serving::Failed(_)) {
                        self.shared.open(&name, instance);
                    }
                }
                None => {
                    debug!(service = %name, port, "opening health check");
                    let mut instance = Instance {
                        port,
                        local_endpoints: Arc::new(AtomicUsize::new(local_endpoints)),
                        serving: Serving::Failed(String::new()),
                    };
                    self.shared.open(&name, &mut instance);
                    services.insert(name, instance);
                }
            }
        }
    }

    /// Moves every server to `bind` (the node-port addresses changed): closes them all, then
    /// opens them again there. Nothing happens when `bind` is already in force.
    pub async fn rebind(&mut self, bind: BindAddresses) {
        {
            let mut current = lock(&self.shared.bind);
            if *current == bind {
                return;
            }
            info!(from = ?*current, to = ?bind, "moving the service health checks");
            *current = bind;
        }
        let closing: Vec<JoinHandle<()>> = lock(&self.shared.services)
            .values_mut()
            .flat_map(|instance| {
                match std::mem::replace(&mut instance.serving, Serving::Failed(String::new())) {
                    Serving::Listening(servers) => servers,
                    Serving::Failed(_) => Vec::new(),
                }
            })
            .map(|(_, server)| server)
            .collect();
        for server in closing {
            server.abort();
            let _cancelled = server.await;
        }
        self.shared.retry_failed();
    }

    /// Where the servers listen.
    pub fn bind(&self) -> BindAddresses {
        lock(&self.shared.bind).clone()
    }

    /// Tries again to bind the ports that could not be bound (also done every retry interval
    /// and at each [`ServiceHealth::sync`]).
    pub fn retry_failed(&self) {
        self.shared.retry_failed();
    }

    /// Every service's server, by name.
    pub fn status(&self) -> Vec<HealthCheckStatus> {
        lock(&self.shared.services)
            .iter()
            .map(|(name, i)| {
                let (listening, error) = match &i.serving {
                    Serving::Listening(servers) => {
                        (servers.iter().map(|(addr, _)| *addr).collect(), None)
                    }
                    Serving::Failed(e) => (Vec::new(), Some(e.clone())),
                };
                HealthCheckStatus {
                    service: name.clone(),
                    port: i.port,
                    local_endpoints: i.local_endpoints.load(Ordering::Relaxed),
                    listening,
                    error,
                }
            })
            .collect()
    }
}

impl Drop for ServiceHealth {
    fn drop(&mut self) {
        self.retry.abort();
        for instance in lock(&self.shared.services).values() {
            if let Serving::Listening(servers) = &instance.serving {
                for (_, server) in servers {
                    server.abort();
                }
            }
        }
    }
}

impl Shared {
    fn retry_failed(&self) {
        let mut services = lock(&self.services);
        for (name, instance) in services.iter_mut() {
            if matches!(instance.serving, Serving::Failed(_)) {
                self.open(name, instance);
            }
        }
    }

    /// Binds every address of `instance`'s port and starts serving, or records (and logs, when
    /// it is new) why not.
    fn open(&self, name: &ServiceName, instance: &mut Instance) {
        let ips = match &*lock(&self.bind) {
            BindAddresses::All => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            BindAddresses::Only(ips) => ips.clone(),
        };
        let what = format!("the health check of service {name}");
        // All or nothing: listeners bound so far close when this is dropped on an error.
        let bound: Result<Vec<TcpListener>, std::io::Error> = ips
            .iter()
            .map(|ip| http::bind_like_go(SocketAddr::new(*ip, instance.port), &what))
            .collect();
        match bound {
            Ok(listeners) => {
                let servers = listeners
                    .into_iter()
                    .map(|listener| {
                        let addr = listener.local_addr().unwrap_or_else(|_| {
                            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), instance.port)
                        });
                        let routes = service_routes(
                            name.clone(),
                            Arc::clone(&instance.local_endpoints),
                            Arc::clone(&self.proxy),
                        );
                        (addr, http::spawn(listener, routes, Limits::default()))
                    })
                    .collect::<Vec<_>>();
                let addrs: Vec<String> = servers.iter().map(|(a, _)| a.to_string()).collect();
                if matches!(&instance.serving, Serving::Failed(e) if !e.is_empty()) {
                    info!(service = %name, port = instance.port, addrs = %addrs.join(","), "serving the health check at last");
                } else {
                    debug!(service = %name, addrs = %addrs.join(","), "serving health check");
                }
                instance.serving = Serving::Listening(servers);
            }
            Err(e) => {
                let error = e.to_string();
                match &instance.serving {
                    Serving::Failed(last) if *last == error => {
                        debug!(service = %name, port = instance.port, %error, "health check port still not bound");
                    }
                    _ => warn!(
                        service = %name,
                        port = instance.port,
                        %error,
                        retry_in_s = self.retry.as_secs_f64(),
                        "cannot serve the health check of a service; retrying"
                    ),
                }
                instance.serving = Serving::Failed(error);
            }
        }
    }
}

/// kube-proxy's `hcHandler`, for every path and method.
fn service_routes(
    name: ServiceName,
    local_endpoints: Arc<AtomicUsize>,
    proxy: Arc<ProxyHealth>,
) -> Routes {
    Routes::new().fallback(move |_| {
        answer(
            &name,
            local_endpoints.load(Ordering::Relaxed),
            proxy.is_healthy(),
        )
    })
}

fn answer(name: &ServiceName, local_endpoints: usize, proxy_healthy: bool) -> Response<Body> {
    let code = if local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = nosniff(http::with_type(
        code,
        "application/json",
        body(name, local_endpoints, proxy_healthy),
    ));
    response.headers_mut().insert(
        "x-load-balancing-endpoint-weight",
        HeaderValue::from(local_endpoints),
    );
    response
}

/// The body as kube-proxy prints it (a dedented template, not `json.Marshal`): tabs, no final
/// newline. Names are quoted as JSON strings (Go's `%q` gives the same for the DNS labels
/// Kubernetes allows).
fn body(name: &ServiceName, local_endpoints: usize, proxy_healthy: bool) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&name.namespace),
        quote(&name.name),
    )
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokio::net::TcpStream;

    use super::super::FakeClock;
    use super::*;
    use crate::http::testing::*;

    fn svc(ns: &str, name: &str, port: u16, local_endpoints: usize) -> HealthCheckService {
        HealthCheckService {
            namespace: ns.into(),
            name: name.into(),
            port,
            local_endpoints,
        }
    }

    /// Ports free right now on loopback (the kernel's choice, released at once).
    fn free_ports(n: usize) -> Vec<u16> {
        let held: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        held.iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect()
    }

    fn loopback() -> BindAddresses {
        BindAddresses::Only(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn proxy() -> (Arc<FakeClock>, Arc<ProxyHealth>) {
        let clock = FakeClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let proxy = Arc::new(ProxyHealth::with_clock(
            Duration::from_secs(10),
            clock.clone(),
        ));
        (clock, proxy)
    }

    fn expected_body(ns: &str, name: &str, n: usize, healthy: bool) -> String {
        format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": \"{ns}\",\n\t\t\"name\": \"{name}\"\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {healthy}\n}}"
        )
    }

    /// Asks `port` and checks status, headers and the exact body.
    async fn expect(port: u16, ns: &str, name: &str, code: u16, n: usize, healthy: bool) {
        let (got, head, body) = get(at(port), "/healthz").await;
        assert_eq!(got, code, "{ns}/{name} on {port}: {body}");
        assert_eq!(body, expected_body(ns, name, n, healthy));
        assert_eq!(
            header(&head, "content-type"),
            Some("application/json"),
            "{head}"
        );
        assert_eq!(
            header(&head, "x-content-type-options"),
            Some("nosniff"),
            "{head}"
        );
        assert_eq!(
            header(&head, "x-load-balancing-endpoint-weight"),
            Some(n.to_string().as_str()),
            "{head}"
        );
    }

    async fn closed(port: u16) -> bool {
        TcpStream::connect(at(port)).await.is_err()
    }

    /// kube-proxy's TestServer (healthcheck_test.go) on real sockets: services come and go,
    /// endpoint counts flip the answer, a changed port moves the server.
    #[tokio::test]
    async fn servers_follow_the_services() {
        let (_clock, proxy) = proxy();
        let mut hs = ServiceHealth::new(loopback(), proxy);
        let p = free_ports(5);

        hs.sync(vec![]).await;
        assert!(hs.status().is_empty());

        // One service, no local endpoints: 503.
        hs.sync(vec![svc("a", "b", p[0], 0)]).await;
        expect(p[0], "a", "b", 503, 0, true).await;
        // Endpoints come: 200, the weight follows; they go: 503.
        hs.sync(vec![svc("a", "b", p[0], 18)]).await;
        expect(p[0], "a", "b", 200, 18, true).await;
        hs.sync(vec![svc("a", "b", p[0], 0)]).await;
        expect(p[0], "a", "b", 503, 0, true).await;
        hs.sync(vec![svc("a", "b", p[0], 11)]).await;
        expect(p[0], "a", "b", 200, 11, true).await;
        // Any path, any method.
        let (code, _, body) = get(at(p[0]), "/").await;
        assert_eq!((code, body), (200, expected_body("a", "b", 11, true)));
        let (code, _, _) = raw(at(p[0]), b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(code, 200);
        // The service goes: its port closes.
        hs.sync(vec![]).await;
        assert!(closed(p[0]).await);
        assert!(hs.status().is_empty());

        // Several services.
        hs.sync(vec![
            svc("a", "b", p[0], 9),
            svc("c", "d", p[1], 3),
            svc("e", "f", p[2], 0),
        ])
        .await;
        expect(p[0], "a", "b", 200, 9, true).await;
        expect(p[1], "c", "d", 200, 3, true).await;
        expect(p[2], "e", "f", 503, 0, true).await;
        // Remove one, leave one, move one, add one.
        let mut kept = TcpStream::connect(at(p[1])).await.expect("connect");
        hs.sync(vec![
            svc("c", "d", p[1], 3),
            svc("e", "f", p[3], 7),
            svc("g", "h", p[4], 6),
        ])
        .await;
        assert!(closed(p[0]).await, "removed service still served");
        assert!(closed(p[2]).await, "moved service still on its old port");
        expect(p[1], "c", "d", 200, 3, true).await;
        expect(p[3], "e", "f", 200, 7, true).await;
        expect(p[4], "g", "h", 200, 6, true).await;
        // The kept service kept its server: a connection made before the sync is answered.
        tokio::io::AsyncWriteExt::write_all(&mut kept, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut kept, &mut out)
            .await
            .expect("read");
        assert_eq!(parse_response(&out).0, 200);
        let status = hs.status();
        assert_eq!(
            status
                .iter()
                .map(|s| (
                    s.service.to_string(),
                    s.port,
                    s.local_endpoints,
                    s.listening.clone()
                ))
                .collect::<Vec<_>>(),
            [
                ("c/d".to_string(), p[1], 3, vec![at(p[1])]),
                ("e/f".to_string(), p[3], 7, vec![at(p[3])]),
                ("g/h".to_string(), p[4], 6, vec![at(p[4])]),
            ]
        );
        // A service missing from the list is closed even if its port is reused by another.
        hs.sync(vec![svc("x", "y", p[1], 1)]).await;
        expect(p[1], "x", "y", 200, 1, true).await;
        for port in [p[3], p[4]] {
            assert!(closed(port).await);
        }
        // Two services swap ports in one sync.
        hs.sync(vec![svc("x", "y", p[1], 1), svc("z", "w", p[2], 2)])
            .await;
        hs.sync(vec![svc("x", "y", p[2], 1), svc("z", "w", p[1], 2)])
            .await;
        expect(p[2], "x", "y", 200, 1, true).await;
        expect(p[1], "z", "w", 200, 2, true).await;
        assert!(hs.status().iter().all(|s| s.error.is_none()));
        // Dropping closes everything.
        drop(hs);
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(closed(p[1]).await && closed(p[2]).await) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still served after drop"
            );
            tokio::task::yield_now().await;
        }
    }

    /// An unhealthy proxy makes every service 503 whatever its endpoints (and says so), and
    /// the answer follows the proxy's health at each request, with no sync in between.
    #[tokio::test]
    async fn the_proxys_health_is_read_at_each_request() {
        let (clock, proxy) = proxy();
        let mut hs = ServiceHealth::new(loopback(), Arc::clone(&proxy));
        let p = free_ports(2);
        hs.sync(vec![svc("a", "b", p[0], 0), svc("c", "d", p[1], 7)])
            .await;
        proxy.updated(clock.instant());
        proxy.queued_update(clock.instant());
        clock.step(Duration::from_secs(10));
        expect(p[0], "a", "b", 503, 0, false).await;
        expect(p[1], "c", "d", 503, 7, false).await;
        proxy.updated(clock.instant());
        expect(p[0], "a", "b", 503, 0, true).await;
        expect(p[1], "c", "d", 200, 7, true).await;
        // Node eligibility is /healthz's business, not the services'.
        proxy.set_node_eligible(false);
        expect(p[1], "c", "d", 200, 7, true).await;
    }

    /// A port held by someone else: logged, the other services unaffected, served once free
    /// (by the retry, or by the next sync); a bad entry never takes the rest down.
    #[tokio::test]
    async fn a_taken_port_is_retried() {
        let (_clock, proxy) = proxy();
        // No background retries in the first part: the test drives them.
        let mut hs = ServiceHealth::with_retry_interval(
            loopback(),
            Arc::clone(&proxy),
            Duration::from_secs(3600),
        );
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = blocker.local_addr().expect("addr").port();
        let p = free_ports(1);
        hs.sync(vec![
            svc("a", "taken", taken, 1),
            svc("a", "free", p[0], 1),
            svc("a", "noport", 0, 1),
        ])
        .await;
        expect(p[0], "a", "free", 200, 1, true).await;
        let status = hs.status();
        assert_eq!(status.len(), 2, "{status:?}");
        let failed = &status[1];
        assert_eq!(
            (failed.service.name.as_str(), failed.port),
            ("taken", taken)
        );
        assert!(failed.listening.is_empty());
        let error = failed.error.clone().expect("an error");
        assert!(
            error.contains("a/taken") && error.contains(&taken.to_string()),
            "{error}"
        );
        // Still taken: still failing, nothing else disturbed.
        hs.retry_failed();
        assert!(hs.status()[1].error.is_some());
        expect(p[0], "a", "free", 200, 1, true).await;
        // Freed: the retry binds it, with the count of the last sync.
        drop(blocker);
        hs.retry_failed();
        assert_eq!(hs.status()[1].listening, [at(taken)]);
        expect(taken, "a", "taken", 200, 1, true).await;

        // The next sync retries too, and carries the new count.
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken2 = blocker.local_addr().expect("addr").port();
        hs.sync(vec![svc("a", "taken", taken2, 1)]).await;
        assert!(closed(taken).await, "moved away from its old port");
        assert!(hs.status()[0].error.is_some());
        drop(blocker);
        hs.sync(vec![svc("a", "taken", taken2, 4)]).await;
        expect(taken2, "a", "taken", 200, 4, true).await;
    }

    /// The background retry, on its own.
    #[tokio::test]
    async fn the_background_retry_binds_a_freed_port() {
        let (_clock, proxy) = proxy();
        let mut hs =
            ServiceHealth::with_retry_interval(loopback(), proxy, Duration::from_millis(20));
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = blocker.local_addr().expect("addr").port();
        hs.sync(vec![svc("a", "b", port, 2)]).await;
        assert!(hs.status()[0].error.is_some());
        drop(blocker);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while hs.status()[0].listening.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never retried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        expect(port, "a", "b", 200, 2, true).await;
    }

    /// Every address, by default: IPv4 and (where the kernel has it) IPv6 on one socket.
    #[tokio::test]
    async fn all_addresses_by_default() {
        let (_clock, proxy) = proxy();
        let mut hs = ServiceHealth::new(BindAddresses::default(), proxy);
        let p = free_ports(1);
        hs.sync(vec![svc("a", "b", p[0], 1)]).await;
        let listening = hs.status()[0].listening.clone();
        assert_eq!(listening.len(), 1);
        assert!(listening[0].ip().is_unspecified(), "{listening:?}");
        expect(p[0], "a", "b", 200, 1, true).await;
        if listening[0].is_ipv6() {
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p[0]));
            assert_eq!(get(v6, "/").await.0, 200);
        }
    }

    /// Several addresses: one socket each, all or none.
    #[tokio::test]
    async fn several_addresses_all_or_none() {
        let (_clock, proxy) = proxy();
        let two = BindAddresses::Only(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        ]);
        let mut hs = ServiceHealth::with_retry_interval(two, proxy, Duration::from_secs(3600));
        let p = free_ports(1);
        hs.sync(vec![svc("a", "b", p[0], 1)]).await;
        let second = SocketAddr::from(([127, 0, 0, 2], p[0]));
        assert_eq!(hs.status()[0].listening, [at(p[0]), second]);
        assert_eq!(get(second, "/").await.0, 200);
        expect(p[0], "a", "b", 200, 1, true).await;

        // The second address's port taken: the first is not served either.
        let blocker =
            std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 2], 0))).expect("bind");
        let port = blocker.local_addr().expect("addr").port();
        hs.sync(vec![svc("c", "d", port, 1)]).await;
        assert!(closed(p[0]).await);
        assert!(closed(port).await, "served on some addresses only");
        assert!(hs.status()[0].error.is_some());
        drop(blocker);
        hs.retry_failed();
        assert_eq!(get(at(port), "/").await.0, 200);
    }

    /// The node-port addresses change: every server moves to the new ones, with its count.
    #[tokio::test]
    async fn rebind_moves_every_server() {
        let (_clock, proxy) = proxy();
        // 127.0.0.2 is on lo in every network namespace (127.0.0.0/8 is local).
        let mut hs = ServiceHealth::new(
            BindAddresses::Only(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]),
            proxy,
        );
        let p = free_ports(1)[0];
        hs.sync(vec![svc("ns", "a", p, 2)]).await;
        assert!(closed(p).await, "not on 127.0.0.1 yet");
        hs.rebind(loopback()).await;
        assert_eq!(hs.bind(), loopback());
        expect(p, "ns", "a", 200, 2, true).await;
        let status = hs.status();
        assert_eq!(status[0].listening, vec![at(p)]);
        // The same again changes nothing.
        hs.rebind(loopback()).await;
        expect(p, "ns", "a", 200, 2, true).await;
    }
}
