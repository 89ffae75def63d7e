//! kube-proxy's health checks (`pkg/proxy/healthcheck/` in Kubernetes), which cloud load
//! balancers probe to pick the nodes they send traffic to:
//!
//! * [`ProxyHealth`]: the proxy's own health, served by [`node`] on `--healthz-bind-address`
//!   (`/healthz`, `/livez`; what the load balancers of `externalTrafficPolicy: Cluster`
//!   services probe). The run loop reports each batch of changes it takes
//!   ([`ProxyHealth::queued_update`]), each time the datapath holds them
//!   ([`ProxyHealth::updated`]) and whether this Node is being deleted
//!   ([`ProxyHealth::set_node_eligible`]).
//! * [`ServiceHealth`]: one server per `externalTrafficPolicy: Local` service with a
//!   `healthCheckNodePort` ([`service`]), saying whether this node has local endpoints for it.
//!
//! Plain structs in, no model types: whoever computes the service list feeds
//! [`ServiceHealth::sync`]. Time comes from a [`Clock`], so tests step it instead of sleeping.

pub mod node;
pub mod service;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub use service::{
    BindAddresses, HealthCheckService, HealthCheckStatus, ServiceHealth, ServiceName,
};

/// kube-proxy's `--healthz-bind-address` default: every address (both families, as Go listens),
/// port 10256, the port cloud providers probe.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";

/// How long a queued update may wait for the datapath before the proxy is unhealthy:
/// kube-proxy's `2 × --iptables-sync-period` with its default period of 30 s
/// (`cmd/kube-proxy/app/server.go`). The agent syncs as changes arrive, so only failing syncs
/// (retried every second) come near it.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// A reading of both clocks: the monotonic one to measure how long an update has waited (a
/// wall-clock step must not make the proxy unhealthy), the wall clock for the JSON bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

/// Where the health checks read the time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Now;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// The proxy's health as kube-proxy's `ProxyHealthServer` keeps it (`proxy_health.go`):
/// the oldest update queued and not yet in the datapath, the last time the datapath was
/// brought up to date, and whether this node may receive load-balanced traffic. Cheap to
/// update from any thread.
pub struct ProxyHealth {
    timeout: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ProxyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHealth")
            .field("timeout", &self.timeout)
            .field("state", &*lock(&self.state))
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// The last [`ProxyHealth::updated`]; None before the first.
    last_updated: Option<Instant>,
    /// The first [`ProxyHealth::queued_update`] since the last [`ProxyHealth::updated`].
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// What [`ProxyHealth::health`] finds at one instant (kube-proxy's `ProxyHealth` and
/// `NodeEligible()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The datapath is up to date, or its pending update is younger than the timeout. Not
    /// about the node: `/livez` and the service health checks use this alone.
    pub healthy: bool,
    /// The node is not being deleted (`/healthz` also requires it).
    pub node_eligible: bool,
    /// Wall-clock time of the last [`ProxyHealth::updated`]; None before the first.
    pub last_updated: Option<SystemTime>,
    /// When this was found.
    pub now: Now,
}

impl ProxyHealth {
    /// Unhealthy once an update has been queued for `timeout` without the datapath being
    /// updated; real clocks.
    pub fn new(timeout: Duration) -> Self {
        Self::with_clock(timeout, Arc::new(SystemClock))
    }

    /// [`ProxyHealth::new`] reading the time from `clock` (the instants passed to
    /// [`ProxyHealth::queued_update`] and [`ProxyHealth::updated`] must come from it too).
    pub fn with_clock(timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            timeout,
            clock,
            state: Mutex::new(State {
                last_updated: None,
                oldest_pending: None,
                // kube-proxy: "The node is eligible (and thus the proxy healthy) while it's
                // starting up and until we've processed the first node event that indicates
                // the contrary."
                node_eligible: true,
            }),
        }
    }

    /// Changes were received at `now` that the datapath does not hold yet. Only the first
    /// since the last [`ProxyHealth::updated`] counts: the wait is measured from it.
    pub fn queued_update(&self, now: Instant) {
        let mut state = lock(&self.state);
        state.oldest_pending.get_or_insert(now);
    }

    /// The datapath was brought up to date at `now` (a successful sync, or one that found
    /// nothing to write).
    pub fn updated(&self, now: Instant) {
        let mut state = lock(&self.state);
        state.oldest_pending = None;
        state.last_updated = Some(now);
    }

    /// Whether this node may receive load-balanced traffic: false while its Node object is
    /// being deleted (kube-proxy: a `deletionTimestamp`, or the cluster autoscaler's
    /// `ToBeDeletedByClusterAutoscaler` taint).
    pub fn set_node_eligible(&self, eligible: bool) {
        lock(&self.state).node_eligible = eligible;
    }

    pub fn node_eligible(&self) -> bool {
        lock(&self.state).node_eligible
    }

    /// The proxy's own health, ignoring the node (kube-proxy's `Health().Healthy`).
    pub fn is_healthy(&self) -> bool {
        self.health().healthy
    }

    /// The health now. As kube-proxy judges it: healthy unless an update has been pending for
    /// at least the timeout; a datapath never updated yet is not judged at all (kube-proxy
    /// only looks at the proxiers that have updated once), so the agent is healthy while it
    /// starts.
    pub fn health(&self) -> Health {
        let state = *lock(&self.state);
        let now = self.clock.now();
        let healthy = match (state.last_updated, state.oldest_pending) {
            (Some(_), Some(pending)) => {
                now.instant.saturating_duration_since(pending) < self.timeout
            }
            _ => true,
        };
        Health {
            healthy,
            node_eligible: state.node_eligible,
            last_updated: state.last_updated.map(|at| wall_at(now, at)),
            now,
        }
    }
}

/// The wall-clock time of `at`, counted back from `now`.
fn wall_at(now: Now, at: Instant) -> SystemTime {
    match now.instant.checked_duration_since(at) {
        Some(ago) => now.wall.checked_sub(ago).unwrap_or(now.wall),
        None => now.wall + at.duration_since(now.instant),
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A clock the tests move by hand.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct FakeClock {
    start: Now,
    elapsed: Mutex<Duration>,
}

#[cfg(test)]
impl FakeClock {
    /// Starts at `wall` (and at the real monotonic now).
    pub(crate) fn at(wall: SystemTime) -> Arc<Self> {
        Arc::new(Self {
            start: Now {
                instant: Instant::now(),
                wall,
            },
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    pub(crate) fn step(&self, by: Duration) {
        *lock(&self.elapsed) += by;
    }

    pub(crate) fn instant(&self) -> Instant {
        self.now().instant
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Now {
        let elapsed = *lock(&self.elapsed);
        Now {
            instant: self.start.instant + elapsed,
            wall: self.start.wall + elapsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Arc<FakeClock>, ProxyHealth) {
        let clock = FakeClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let health = ProxyHealth::with_clock(Duration::from_secs(10), clock.clone());
        (clock, health)
    }

    /// kube-proxy's `testProxyHealthUpdater` (healthcheck_test.go), with one datapath for both
    /// families: the same steps, the same answers.
    #[test]
    fn timing_follows_kube_proxy() {
        let (clock, h) = setup();
        // Healthy by default.
        assert!(h.is_healthy());
        // Healthy after the first update...
        h.updated(clock.instant());
        assert!(h.is_healthy());
        // ...and as long as nothing is queued, however long.
        clock.step(Duration::from_secs(25));
        assert!(h.is_healthy());
        // Unhealthy once a queued update has waited the timeout...
        h.queued_update(clock.instant());
        clock.step(Duration::from_secs(9));
        assert!(h.is_healthy(), "not late yet");
        clock.step(Duration::from_secs(1));
        assert!(!h.is_healthy(), "late at exactly the timeout");
        clock.step(Duration::from_secs(15));
        assert!(!h.is_healthy());
        // ...healthy again once updated.
        h.updated(clock.instant());
        clock.step(Duration::from_secs(5));
        assert!(h.is_healthy());
        // The wait counts from the oldest queued update, not the latest.
        h.queued_update(clock.instant());
        clock.step(Duration::from_secs(6));
        h.queued_update(clock.instant());
        clock.step(Duration::from_secs(6));
        assert!(!h.is_healthy());
        h.updated(clock.instant());
        assert!(h.is_healthy());
    }

    #[test]
    fn a_datapath_never_updated_is_not_judged() {
        let (clock, h) = setup();
        h.queued_update(clock.instant());
        clock.step(Duration::from_secs(3600));
        assert!(h.is_healthy());
        // Once updated it is, from the next queued update on.
        h.updated(clock.instant());
        h.queued_update(clock.instant());
        clock.step(Duration::from_secs(10));
        assert!(!h.is_healthy());
    }

    #[test]
    fn node_eligibility_is_apart_from_health() {
        let (_clock, h) = setup();
        assert!(h.node_eligible(), "eligible while starting");
        h.set_node_eligible(false);
        let health = h.health();
        assert!(health.healthy && !health.node_eligible);
        assert!(h.is_healthy());
        h.set_node_eligible(true);
        assert!(h.health().node_eligible);
    }

    #[test]
    fn last_updated_is_wall_clock() {
        let (clock, h) = setup();
        assert_eq!(h.health().last_updated, None);
        let at = clock.now();
        h.updated(at.instant);
        clock.step(Duration::from_millis(1500));
        let health = h.health();
        assert_eq!(health.last_updated, Some(at.wall));
        assert_eq!(
            health.now.wall,
            at.wall + Duration::from_millis(1500),
            "{health:?}"
        );
    }
}
