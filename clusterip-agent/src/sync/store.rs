//! The object store between the sources and the syncer.
//!
//! Sources (the manifest files, the Kubernetes API) report [`SourceEvent`]s. The store keeps
//! the current Services, EndpointSlices and this node's zone, and the [`DesiredTable`] built
//! from them. An event marks the services it concerns as dirty; [`Store::compute`] rebuilds
//! only those (through [`model::build_service`]) and returns the frontends whose entries
//! changed, which is what [`crate::sync::syncer::Syncer::apply_partial`] writes. One endpoint
//! change therefore costs one service's rebuild and its map writes, however many services
//! there are.
//!
//! A relist ([`SourceEvent::ServicesReplaced`], [`SourceEvent::SlicesReplaced`]) is diffed
//! against what the store holds: objects that did not change stay clean, so a watch that
//! reconnects and relists rewrites nothing and the maps never pass through an empty state.
//!
//! Objects are kept stripped of what the model never reads (managed fields, owner references,
//! unrelated annotations, endpoints' target references, status) and serialized as compact
//! JSON, and parsed again only when their service is rebuilt: 10,000 services with 10
//! endpoints each take about 10 MB instead of about 60 MB as typed objects.
//!
//! Two services claiming the same frontend (which the API server's allocator prevents): the
//! one that holds it keeps it; the other is rejected as a whole, reported, and retried when
//! a frontend is released.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, warn};

use crate::model::table::{DesiredTable, Frontend};
use crate::model::{self, NodeInfo, ObjectKind, ObjectRef, ProblemKind, Severity};
use crate::source::SourceEvent;

/// `namespace/name` of an object, interned: every map of the store that names the object
/// shares one allocation (10,000 services and their slices are named in six maps each).
#[derive(Clone, Debug)]
pub struct Key(Arc<str>);

impl Key {
    pub fn ns(&self) -> &str {
        split(&self.0).0
    }

    pub fn name(&self) -> &str {
        split(&self.0).1
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (*self.0).hash(h);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self.0).cmp(&*other.0)
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `namespace/name` → (namespace, name). Neither may contain a `/` in Kubernetes.
fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// `namespace/name` of an object (default namespace when unset); None without a name.
fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    let ns = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(model::DEFAULT_NAMESPACE);
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some(format!("{ns}/{name}"))
}

/// What [`Store::compute`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Frontends whose entry in the table was added, changed or removed.
    pub touched: BTreeSet<Frontend>,
    /// Services rebuilt.
    pub services_rebuilt: usize,
    /// When the oldest event behind these changes was received (None: nothing dirty).
    pub since: Option<Instant>,
}

/// Deletions after which unused interned keys are dropped.
const PRUNE_AFTER: usize = 1024;

#[derive(Default)]
pub struct Store {
    node: NodeInfo,
    /// Stripped objects as JSON ([`strip_service`], [`strip_slice`]).
    services: HashMap<Key, Box<[u8]>>,
    slices: HashMap<Key, Box<[u8]>>,
    /// slice key -> the service key it belongs to.
    slice_owner: HashMap<Key, Key>,
    /// service key -> its slices' keys (sorted: deterministic merge order).
    slices_of: HashMap<Key, BTreeSet<Key>>,
    dirty: BTreeSet<Key>,
    /// When the oldest event not yet computed was received.
    dirty_since: Option<Instant>,
    /// Frontends each service holds in `table`.
    held: HashMap<Key, Vec<Frontend>>,
    owner: HashMap<Frontend, Key>,
    /// Services rejected because another holds one of their frontends.
    conflicted: BTreeSet<Key>,
    /// Last problems logged per object, so a problem is logged when it appears or changes.
    logged: HashMap<ObjectRef, Vec<String>>,
    table: DesiredTable,
    /// Every key in use (see [`Key`]); pruned after many deletions.
    names: HashSet<Key>,
    deletions: usize,
    services_seen: bool,
    slices_seen: bool,
}

impl Store {
    pub fn new(node: NodeInfo) -> Self {
        Self {
            node,
            ..Default::default()
        }
    }

    pub fn table(&self) -> &DesiredTable {
        &self.table
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Whether both kinds have been listed once: only then is the table the cluster's (an
    /// agent must not remove what an earlier one programmed before it knows the state).
    pub fn initialized(&self) -> bool {
        self.services_seen && self.slices_seen
    }

    /// Number of distinct services that have at least one frontend in the table.
    pub fn programmed_services(&self) -> usize {
        self.held.values().filter(|f| !f.is_empty()).count()
    }

    fn mark(&mut self, key: Key, at: Instant) {
        self.dirty.insert(key);
        self.dirty_since = Some(self.dirty_since.map_or(at, |t| t.min(at)));
    }

    /// Takes one event in. Cheap: the work is done by [`Store::compute`].
    pub fn handle(&mut self, at: Instant, ev: SourceEvent) {
        match ev {
            SourceEvent::ServiceApplied(svc) => self.apply_service(at, svc),
            SourceEvent::ServiceDeleted(svc) => {
                if let Some(key) = key_of(&svc.metadata) {
                    self.delete_service(at, &key);
                }
            }
            SourceEvent::SliceApplied(slice) => self.apply_slice(at, slice),
            SourceEvent::SliceDeleted(slice) => {
                if let Some(key) = key_of(&slice.metadata) {
                    self.delete_slice(at, &key);
                }
            }
            SourceEvent::ServicesReplaced(all) => {
                self.services_seen = true;
                for key in missing_from(&self.services, all.iter().map(|s| &s.metadata)) {
                    self.delete_service(at, &key.0);
                }
                for svc in all {
                    self.apply_service(at, svc);
                }
            }
            SourceEvent::SlicesReplaced(all) => {
                self.slices_seen = true;
                for key in missing_from(&self.slices, all.iter().map(|s| &s.metadata)) {
                    self.delete_slice(at, &key.0);
                }
                for slice in all {
                    self.apply_slice(at, slice);
                }
            }
            // Whether the node is being deleted is the health checks' business (the run loop's).
            SourceEvent::NodeUpdated { zone, .. } => {
                if zone != self.node.zone {
                    debug!(zone = ?zone, "node zone changed; rebuilding every service");
                    self.node.zone = zone;
                    let all: Vec<Key> = self.services.keys().cloned().collect();
                    for key in all {
                        self.mark(key, at);
                    }
                }
            }
            SourceEvent::WatchRestarted(_) => {}
        }
    }

    /// The interned [`Key`] for `namespace/name`.
    fn intern(&mut self, key: String) -> Key {
        if let Some(k) = self.names.get(key.as_str()) {
            return k.clone();
        }
        let k = Key(Arc::from(key));
        self.names.insert(k.clone());
        k
    }

    fn apply_service(&mut self, at: Instant, mut svc: Service) {
        let Some(key) = key_of(&svc.metadata) else {
            warn!(namespace = ?svc.metadata.namespace, "a Service without a name was ignored");
            return;
        };
        strip_service(&mut svc);
        let Some(json) = to_json(&svc, &key) else {
            return;
        };
        if self.services.get(key.as_str()) == Some(&json) {
            return;
        }
        let key = self.intern(key);
        self.services.insert(key.clone(), json);
        self.mark(key, at);
    }

    fn delete_service(&mut self, at: Instant, key: &str) {
        if let Some((key, _)) = self.services.remove_entry(key) {
            self.deletions += 1;
            self.mark(key, at);
        }
    }

    fn apply_slice(&mut self, at: Instant, mut slice: EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            warn!(namespace = ?slice.metadata.namespace, "an EndpointSlice without a name was ignored");
            return;
        };
        strip_slice(&mut slice);
        let Some(json) = to_json(&slice, &key) else {
            return;
        };
        if self.slices.get(key.as_str()) == Some(&json) {
            return;
        }
        let (ns, name) = split(&key);
        let object = ObjectRef::new(ObjectKind::EndpointSlice, ns, name);
        let problems = model::slice_problems(&slice);
        self.log_problems(object, &problems);
        let new_owner =
            model::slice_service(&slice).map(|(ns, n)| self.intern(format!("{ns}/{n}")));
        self.unlink_slice(at, &key);
        let key = self.intern(key);
        if let Some(owner) = new_owner {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            self.slice_owner.insert(key.clone(), owner.clone());
            self.mark(owner, at);
        }
        self.slices.insert(key, json);
    }

    fn delete_slice(&mut self, at: Instant, key: &str) {
        if self.slices.remove(key).is_some() {
            self.deletions += 1;
            self.unlink_slice(at, key);
            let (ns, name) = split(key);
            self.logged
                .remove(&ObjectRef::new(ObjectKind::EndpointSlice, ns, name));
        }
    }

    fn unlink_slice(&mut self, at: Instant, key: &str) {
        if let Some(old) = self.slice_owner.remove(key) {
            if let Some(set) = self.slices_of.get_mut(&old) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(&old);
                }
            }
            self.mark(old, at);
        }
    }

    /// Rebuilds the dirty services and updates the table; returns what changed.
    pub fn compute(&mut self) -> Changes {
        let mut changes = Changes {
            since: self.dirty_since.take(),
            ..Default::default()
        };
        if self.deletions > PRUNE_AFTER {
            self.deletions = 0;
            self.names.retain(|k| Arc::strong_count(&k.0) > 1);
        }
        // Releasing a frontend may let a conflicted service in: a few rounds at most.
        for _ in 0..4 {
            let dirty = std::mem::take(&mut self.dirty);
            if dirty.is_empty() {
                break;
            }
            let mut released = false;
            for key in &dirty {
                released |= self.rebuild(key, &mut changes);
                changes.services_rebuilt += 1;
            }
            if released && !self.conflicted.is_empty() {
                let retry: Vec<Key> = self
                    .conflicted
                    .iter()
                    .filter(|k| !dirty.contains(*k))
                    .cloned()
                    .collect();
                self.dirty.extend(retry);
            }
        }
        changes
    }

    /// Rebuilds one service; returns whether it released a frontend.
    fn rebuild(&mut self, key: &Key, changes: &mut Changes) -> bool {
        let old: Vec<Frontend> = self.held.remove(key).unwrap_or_default();
        self.conflicted.remove(key);
        let object = ObjectRef::new(ObjectKind::Service, key.ns(), key.name());
        let mut new_entries = Vec::new();
        let svc: Option<Service> = self.services.get(key).and_then(|j| from_json(j, &key.0));
        match svc {
            None => {
                self.logged.remove(&object);
            }
            Some(svc) => {
                let slices: Vec<EndpointSlice> = self
                    .slices_of
                    .get(key)
                    .map(|set| {
                        set.iter()
                            .filter_map(|k| self.slices.get(k).and_then(|j| from_json(j, &k.0)))
                            .collect()
                    })
                    .unwrap_or_default();
                let refs: Vec<&EndpointSlice> = slices.iter().collect();
                let built = model::build_service(&svc, &refs, &self.node);
                let mut problems = built.problems;
                let conflicts: Vec<ProblemKind> = built
                    .entries
                    .iter()
                    .filter_map(|(fe, _)| match self.owner.get(fe) {
                        Some(o) if o != key => Some(ProblemKind::DuplicateFrontend {
                            frontend: *fe,
                            owner: o.to_string(),
                        }),
                        _ => None,
                    })
                    .collect();
                if conflicts.is_empty() {
                    new_entries = built.entries;
                } else {
                    problems.extend(conflicts);
                    self.conflicted.insert(key.clone());
                }
                self.log_problems(object, &problems);
            }
        }

        let new_fes: BTreeSet<Frontend> = new_entries.iter().map(|(fe, _)| *fe).collect();
        let mut released = false;
        for fe in &old {
            if !new_fes.contains(fe) {
                self.table.services.remove(fe);
                self.owner.remove(fe);
                changes.touched.insert(*fe);
                released = true;
            }
        }
        let mut held = Vec::with_capacity(new_entries.len());
        for (fe, entry) in new_entries {
            held.push(fe);
            self.owner.insert(fe, key.clone());
            if self.table.services.get(&fe) != Some(&entry) {
                self.table.services.insert(fe, entry);
                changes.touched.insert(fe);
            }
        }
        if !held.is_empty() {
            self.held.insert(key.clone(), held);
        }
        released
    }

    /// Logs an object's problems when they differ from what was last logged for it.
    fn log_problems(&mut self, object: ObjectRef, problems: &[ProblemKind]) {
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        if self.logged.get(&object).map(Vec::as_slice).unwrap_or(&[]) == texts.as_slice() {
            return;
        }
        for p in problems {
            match p.severity() {
                Severity::Error => warn!(object = %object, problem = %p, "rejected"),
                Severity::Warning => warn!(object = %object, problem = %p, "partly ignored"),
            }
        }
        if texts.is_empty() {
            self.logged.remove(&object);
        } else {
            self.logged.insert(object, texts);
        }
    }

    /// Problems currently logged, for tests and `explain`.
    pub fn problems(&self) -> BTreeMap<String, Vec<String>> {
        self.logged
            .iter()
            .map(|(o, p)| (o.to_string(), p.clone()))
            .collect()
    }
}

/// The keys `held` has that a relist of `listed` objects no longer has.
fn missing_from<'a>(
    held: &HashMap<Key, Box<[u8]>>,
    listed: impl Iterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> Vec<Key> {
    let listed: HashSet<String> = listed.filter_map(key_of).collect();
    held.keys()
        .filter(|k| !listed.contains(&*k.0))
        .cloned()
        .collect()
}

/// Drops what the model never reads from a Service.
fn strip_service(svc: &mut Service) {
    strip_meta(&mut svc.metadata);
    svc.status = None;
    if let Some(spec) = &mut svc.spec {
        spec.selector = None;
    }
}

/// Drops what the model never reads from an EndpointSlice.
fn strip_slice(slice: &mut EndpointSlice) {
    strip_meta(&mut slice.metadata);
    for ep in slice.endpoints.iter_mut().flatten() {
        ep.target_ref = None;
        ep.deprecated_topology = None;
        ep.hostname = None;
    }
}

fn strip_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.uid = None;
    meta.resource_version = None;
    meta.generation = None;
    meta.creation_timestamp = None;
    meta.generate_name = None;
    if let Some(a) = &mut meta.annotations {
        a.retain(|k, _| k.starts_with("service.kubernetes.io/"));
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

fn to_json<T: serde::Serialize>(obj: &T, key: &str) -> Option<Box<[u8]>> {
    match serde_json::to_vec(obj) {
        Ok(v) => Some(v.into_boxed_slice()),
        Err(e) => {
            warn!(object = %key, error = %e, "cannot store an object; ignored");
            None
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(json: &[u8], key: &str) -> Option<T> {
    match serde_json::from_slice(json) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(object = %key, error = %e, "cannot read a stored object; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::Protocol;

    fn svc(ns: &str, name: &str, ip: &str, port: u16) -> Service {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: {port}, targetPort: 8080}}]}}"
        ))
        .unwrap()
    }

    fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{addresses: [{ip}], conditions: {{ready: true}}}}"))
            .collect();
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints: [{}]",
            eps.join(", ")
        ))
        .unwrap()
    }

    fn fe(ip: &str, port: u16) -> Frontend {
        Frontend {
            vip: ip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn backends(store: &Store, f: Frontend) -> Vec<String> {
        store.table().services[&f]
            .backends
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn node() -> NodeInfo {
        NodeInfo::new("node-a", None)
    }

    #[test]
    fn only_changed_services_are_rebuilt_and_touched() {
        let now = Instant::now();
        let mut s = Store::new(node());
        let services: Vec<Service> = (1..=50)
            .map(|i| svc("ns", &format!("s{i}"), &format!("10.96.0.{i}"), 80))
            .collect();
        let slices: Vec<EndpointSlice> = (1..=50)
            .map(|i| {
                slice(
                    "ns",
                    &format!("s{i}-a"),
                    &format!("s{i}"),
                    &[&format!("10.1.0.{i}")],
                )
            })
            .collect();
        s.handle(now, SourceEvent::ServicesReplaced(services.clone()));
        assert!(!s.initialized());
        s.handle(now, SourceEvent::SlicesReplaced(slices.clone()));
        assert!(s.initialized());
        let c = s.compute();
        assert_eq!(c.touched.len(), 50);
        assert_eq!(c.since, Some(now));

        // One endpoint change: one service rebuilt, one frontend touched.
        let later = now + std::time::Duration::from_millis(5);
        s.handle(
            later,
            SourceEvent::SliceApplied(slice("ns", "s7-a", "s7", &["10.1.0.7", "10.1.1.7"])),
        );
        let c = s.compute();
        assert_eq!(c.services_rebuilt, 1);
        assert_eq!(
            c.touched.into_iter().collect::<Vec<_>>(),
            vec![fe("10.96.0.7", 80)]
        );
        assert_eq!(c.since, Some(later));
        assert_eq!(
            backends(&s, fe("10.96.0.7", 80)),
            ["10.1.0.7:8080", "10.1.1.7:8080"]
        );

        // A relist with the same objects changes nothing: nothing is rewritten.
        s.handle(later, SourceEvent::ServicesReplaced(services.clone()));
        let c = s.compute();
        assert!(c.touched.is_empty());
        assert_eq!(s.table().services.len(), 50);

        // Nothing dirty: compute is a no-op.
        let c = s.compute();
        assert_eq!((c.services_rebuilt, c.since), (0, None));
    }

    #[test]
    fn relist_removes_only_what_is_gone() {
        let now = Instant::now();
        let mut s = Store::new(node());
        s.handle(
            now,
            SourceEvent::ServicesReplaced(vec![
                svc("ns", "a", "10.96.0.1", 80),
                svc("ns", "b", "10.96.0.2", 80),
            ]),
        );
        s.handle(
            now,
            SourceEvent::SlicesReplaced(vec![
                slice("ns", "a-1", "a", &["10.1.0.1"]),
                slice("ns", "b-1", "b", &["10.1.0.2"]),
            ]),
        );
        s.compute();
        // The relist after a watch outage: b and its slice are gone, a's slice changed.
        s.handle(
            now,
            SourceEvent::ServicesReplaced(vec![svc("ns", "a", "10.96.0.1", 80)]),
        );
        s.handle(
            now,
            SourceEvent::SlicesReplaced(vec![slice("ns", "a-1", "a", &["10.1.0.9"])]),
        );
        let c = s.compute();
        assert_eq!(
            c.touched.into_iter().collect::<Vec<_>>(),
            vec![fe("10.96.0.1", 80), fe("10.96.0.2", 80)]
        );
        assert_eq!(backends(&s, fe("10.96.0.1", 80)), ["10.1.0.9:8080"]);
        assert!(!s.table().services.contains_key(&fe("10.96.0.2", 80)));
    }

    #[test]
    fn slice_moving_between_services_rebuilds_both() {
        let now = Instant::now();
        let mut s = Store::new(node());
        s.handle(
            now,
            SourceEvent::ServicesReplaced(vec![
                svc("ns", "a", "10.96.0.1", 80),
                svc("ns", "b", "10.96.0.2", 80),
            ]),
        );
        s.handle(
            now,
            SourceEvent::SlicesReplaced(vec![slice("ns", "x", "a", &["10.1.0.1"])]),
        );
        s.compute();
        s.handle(
            now,
            SourceEvent::SliceApplied(slice("ns", "x", "b", &["10.1.0.1"])),
        );
        s.compute();
        assert!(backends(&s, fe("10.96.0.1", 80)).is_empty());
        assert_eq!(backends(&s, fe("10.96.0.2", 80)), ["10.1.0.1:8080"]);
        s.handle(now, SourceEvent::SliceDeleted(slice("ns", "x", "b", &[])));
        s.compute();
        assert!(backends(&s, fe("10.96.0.2", 80)).is_empty());
    }

    #[test]
    fn a_conflicting_service_gets_the_frontend_when_the_holder_goes() {
        let now = Instant::now();
        let mut s = Store::new(node());
        s.handle(
            now,
            SourceEvent::ServicesReplaced(vec![svc("ns", "a", "10.96.0.1", 80)]),
        );
        s.handle(now, SourceEvent::SlicesReplaced(vec![]));
        s.compute();
        s.handle(
            now,
            SourceEvent::ServiceApplied(svc("ns", "b", "10.96.0.1", 80)),
        );
        s.compute();
        assert_eq!(s.table().services[&fe("10.96.0.1", 80)].service.name, "a");
        assert_eq!(s.problems().len(), 1, "{:?}", s.problems());
        s.handle(
            now,
            SourceEvent::ServiceDeleted(svc("ns", "a", "10.96.0.1", 80)),
        );
        let c = s.compute();
        assert_eq!(s.table().services[&fe("10.96.0.1", 80)].service.name, "b");
        assert!(c.touched.contains(&fe("10.96.0.1", 80)));
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    fn zone_event(zone: Option<&str>) -> SourceEvent {
        SourceEvent::NodeUpdated {
            zone: zone.map(str::to_owned),
            deleting: false,
        }
    }

    #[test]
    fn a_zone_change_rebuilds_every_service() {
        let now = Instant::now();
        let mut s = Store::new(node());
        s.handle(
            now,
            SourceEvent::ServicesReplaced(vec![svc("ns", "a", "10.96.0.1", 80)]),
        );
        s.handle(now, SourceEvent::SlicesReplaced(vec![]));
        s.compute();
        s.handle(now, zone_event(Some("z1")));
        assert_eq!(s.node().zone.as_deref(), Some("z1"));
        assert_eq!(s.compute().services_rebuilt, 1);
        s.handle(now, zone_event(Some("z1")));
        assert_eq!(s.compute().services_rebuilt, 0);
    }

    /// Whatever the order of events, the incremental table is the one the model builds from
    /// the final objects in one go.
    #[test]
    fn incremental_table_equals_the_full_build() {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let now = Instant::now();
        for _round in 0..20 {
            let mut s = Store::new(node());
            let mut services: BTreeMap<String, Service> = BTreeMap::new();
            let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            s.handle(now, SourceEvent::ServicesReplaced(vec![]));
            s.handle(now, SourceEvent::SlicesReplaced(vec![]));
            for _ in 0..200 {
                let i = next(12);
                let name = format!("s{i}");
                match next(5) {
                    0 | 1 => {
                        // Distinct VIPs (duplicates would make the winner order-dependent).
                        let v = svc("ns", &name, &format!("10.96.0.{i}"), 80 + next(2) as u16);
                        services.insert(name, v.clone());
                        s.handle(now, SourceEvent::ServiceApplied(v));
                    }
                    2 => {
                        if let Some(v) = services.remove(&name) {
                            s.handle(now, SourceEvent::ServiceDeleted(v));
                        }
                    }
                    3 => {
                        let sname = format!("x{}", next(16));
                        let owner = format!("s{}", next(12));
                        let ips: Vec<String> =
                            (0..next(4)).map(|k| format!("10.1.{i}.{k}")).collect();
                        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
                        let v = slice("ns", &sname, &owner, &refs);
                        slices.insert(sname, v.clone());
                        s.handle(now, SourceEvent::SliceApplied(v));
                    }
                    _ => {
                        let sname = format!("x{}", next(16));
                        if let Some(v) = slices.remove(&sname) {
                            s.handle(now, SourceEvent::SliceDeleted(v));
                        }
                    }
                }
                if next(4) == 0 {
                    s.compute();
                }
            }
            s.compute();
            let all_services: Vec<Service> = services.values().cloned().collect();
            let all_slices: Vec<EndpointSlice> = slices.values().cloned().collect();
            let full = model::build_table(&all_services, &all_slices, &node());
            assert_eq!(s.table(), &full.table);
        }
    }
}

#[cfg(test)]
mod scale {
    use super::*;

    fn in_use() -> usize {
        // SAFETY: plain allocator statistics.
        unsafe {
            libc::malloc_trim(0);
            libc::mallinfo2().uordblks
        }
    }

    /// Memory the store keeps at 10,000 services x 10 endpoints (run by hand:
    /// `cargo test --release -p clusterip-agent --lib store::scale -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn memory_at_10k() {
        let base = in_use();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..10_000usize {
            services.push(
                serde_json::from_value::<Service>(serde_json::json!({
                    "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                    "spec": {"clusterIP": format!("10.{}.{}.{}", 96 + i / 62_500, (i / 250) % 250, i % 250 + 1),
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap(),
            );
            let eps: Vec<serde_json::Value> = (0..10)
                .map(|e| serde_json::json!({"addresses": [format!("100.{}.{}.{}", 64 + i / 6000, (i / 25) % 250, (i % 25) * 10 + e)], "conditions": {"ready": true}}))
                .collect();
            slices.push(
                serde_json::from_value::<EndpointSlice>(serde_json::json!({
                    "metadata": {"name": format!("svc-{i}-a"), "namespace": "bench",
                                 "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": eps
                }))
                .unwrap(),
            );
        }
        let typed = in_use();
        let mut s = Store::new(NodeInfo::new("n", None));
        let now = Instant::now();
        s.handle(now, SourceEvent::ServicesReplaced(services));
        s.handle(now, SourceEvent::SlicesReplaced(slices));
        let stored = in_use();
        let c = s.compute();
        let computed = in_use();
        let table_only: usize = s.table().services.len();
        eprintln!(
            "typed objects {} MB; store after handle {} MB; after compute {} MB ({} frontends, {} touched)",
            (typed - base) >> 20,
            (stored - base) >> 20,
            (computed - base) >> 20,
            table_only,
            c.touched.len()
        );
        let t = std::mem::take(&mut s.table);
        drop(t);
        eprintln!("without the table {} MB", (in_use() - base) >> 20);
    }
}
