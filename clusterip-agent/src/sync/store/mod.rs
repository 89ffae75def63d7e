//! The object store between the sources and the syncer.
//!
//! Sources (the manifest files, the Kubernetes API) report [`SourceEvent`]s. The store keeps
//! the current Services, EndpointSlices and this node's zone, and the [`DesiredTable`] built
//! from them. An event marks the services it concerns as dirty; [`Store::compute`] rebuilds
//! only those (through [`model::build`]) and returns the frontends whose entries changed,
//! which is what [`crate::sync::syncer::Syncer::apply_partial`] writes. One endpoint change
//! therefore costs one service's rebuild and its map writes, however many services there are.
//!
//! A (re)list ([`SourceEvent::Listing`], the objects, [`SourceEvent::Listed`]) is diffed
//! against what the store holds: objects that did not change stay clean, and what the list
//! lacked is removed only once it is complete, so a watch that reconnects and relists
//! rewrites nothing and the maps never pass through an empty or partial state.
//!
//! Objects are kept as the sources hand them over: checked and compact
//! ([`crate::model::ServiceObject`], [`crate::model::SliceObject`]), shared with the manifest
//! source when it is the one feeding the store. 10,000 services with one slice of 10
//! endpoints each take about 11 MB with the store's indexes (`tests::scale::memory_at_10k`),
//! where the compact JSON it kept before took 17 MB.
//!
//! Two services claiming the same frontend, or the same node port (which the API server's
//! allocators prevent): the one that holds it keeps it; the other is rejected as a whole,
//! reported, and retried when a frontend or node port is released. Node ports are claimed
//! as (port, protocol), whatever the node's addresses, so that the holder does not depend on
//! which addresses the node has at the moment.
//!
//! The store also keeps each service's health check ([`model::HealthCheck`]), for the
//! health check servers, and the node's node-port addresses
//! ([`Store::set_node_port_addresses`]): a change rebuilds the services with node ports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use std::net::IpAddr;

use crate::model::table::{DesiredTable, Frontend, Protocol};
use crate::model::{
    self, HealthCheck, Key, NodeInfo, ObjectKind, ObjectRef, ProblemKind, ServiceObject, Severity,
    SliceObject,
};
use crate::source::SourceEvent;

/// What [`Store::compute`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Frontends whose entry in the table was added, changed or removed.
    pub touched: BTreeSet<Frontend>,
    /// Services rebuilt.
    pub services_rebuilt: usize,
    /// When the oldest event behind these changes was received (None: nothing dirty).
    pub since: Option<Instant>,
    /// A service's health check appeared, went, or changed port or count.
    pub health_checks: bool,
}

#[derive(Default)]
pub struct Store {
    node: NodeInfo,
    services: HashMap<Key, Arc<ServiceObject>>,
    slices: HashMap<Key, Arc<SliceObject>>,
    /// service key -> the keys of the slices naming it, sorted (a slice's owner is its
    /// [`SliceObject::service`]).
    slices_of: HashMap<Key, Vec<Key>>,
    dirty: BTreeSet<Key>,
    /// When the oldest event not yet computed was received.
    dirty_since: Option<Instant>,
    /// Frontends each service holds in `table`.
    held: HashMap<Key, Box<[Frontend]>>,
    owner: HashMap<Frontend, Key>,
    /// Node ports each service holds, and who holds each.
    held_node_ports: HashMap<Key, Box<[(u16, Protocol)]>>,
    node_port_owner: HashMap<(u16, Protocol), Key>,
    /// The health check of each service that has one (and is in the table).
    health_checks: BTreeMap<Key, HealthCheck>,
    /// Services rejected because another holds one of their frontends or node ports.
    conflicted: BTreeSet<Key>,
    /// Last problems logged per object, so a problem is logged when it appears or changes.
    logged: HashMap<ObjectRef, Vec<String>>,
    table: DesiredTable,
    /// The keys applied since [`SourceEvent::Listing`], per kind, while a list is in progress.
    listing_services: Option<HashSet<Key>>,
    listing_slices: Option<HashSet<Key>>,
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

    /// The health check of each service in the table that has one.
    pub fn health_checks(&self) -> &BTreeMap<Key, HealthCheck> {
        &self.health_checks
    }

    /// Sets the addresses node ports are served on ([`NodeInfo::node_port_addresses`]); a
    /// change rebuilds every service with a node port. Returns whether they changed.
    pub fn set_node_port_addresses(&mut self, at: Instant, addresses: &[IpAddr]) -> bool {
        let node = self
            .node
            .clone()
            .with_node_port_addresses(addresses.iter().copied());
        if node == self.node {
            return false;
        }
        debug!(addresses = ?node.node_port_addresses, "node-port addresses changed; rebuilding the services with node ports");
        self.node = node;
        let with_node_ports: Vec<Key> = self
            .services
            .iter()
            .filter(|(_, svc)| svc.node_ports().next().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in with_node_ports {
            self.mark(key, at);
        }
        true
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
            SourceEvent::ServiceDeleted(key) => {
                if let Some(listing) = &mut self.listing_services {
                    listing.remove(&key);
                }
                self.delete_service(at, &key);
            }
            SourceEvent::SliceApplied(slice) => self.apply_slice(at, slice),
            SourceEvent::SliceDeleted(key) => {
                if let Some(listing) = &mut self.listing_slices {
                    listing.remove(&key);
                }
                self.delete_slice(at, &key);
            }
            SourceEvent::Listing(ObjectKind::Service) => {
                self.listing_services = Some(HashSet::new());
            }
            SourceEvent::Listing(ObjectKind::EndpointSlice) => {
                self.listing_slices = Some(HashSet::new());
            }
            // A Listed without its Listing lists nothing: everything held is gone.
            SourceEvent::Listed(ObjectKind::Service) => {
                let listed = self.listing_services.take().unwrap_or_default();
                self.services_seen = true;
                for key in missing_from(self.services.keys(), &listed) {
                    self.delete_service(at, &key);
                }
            }
            SourceEvent::Listed(ObjectKind::EndpointSlice) => {
                let listed = self.listing_slices.take().unwrap_or_default();
                self.slices_seen = true;
                for key in missing_from(self.slices.keys(), &listed) {
                    self.delete_slice(at, &key);
                }
            }
            // Nodes are reported through their zone.
            SourceEvent::Listing(ObjectKind::Node) | SourceEvent::Listed(ObjectKind::Node) => {}
            // Whether the node is being deleted is the health checks' business, and its
            // addresses select the node-port addresses (the run loop's, which sets them).
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

    fn apply_service(&mut self, at: Instant, svc: Arc<ServiceObject>) {
        let key = svc.key();
        if key.name().is_empty() {
            warn!(
                namespace = key.namespace(),
                "a Service without a name was ignored"
            );
            return;
        }
        if let Some(listing) = &mut self.listing_services {
            listing.insert(key.clone());
        }
        if self.services.get(key).is_some_and(|old| **old == *svc) {
            return;
        }
        let key = key.clone();
        self.services.insert(key.clone(), svc);
        self.mark(key, at);
    }

    fn delete_service(&mut self, at: Instant, key: &Key) {
        if let Some((key, _)) = self.services.remove_entry(key) {
            self.mark(key, at);
        }
    }

    fn apply_slice(&mut self, at: Instant, slice: Arc<SliceObject>) {
        let key = slice.key().clone();
        if key.name().is_empty() {
            warn!(
                namespace = key.namespace(),
                "an EndpointSlice without a name was ignored"
            );
            return;
        }
        if let Some(listing) = &mut self.listing_slices {
            listing.insert(key.clone());
        }
        if self.slices.get(&key).is_some_and(|old| **old == *slice) {
            return;
        }
        self.log_problems(slice.object_ref(), slice.problems());
        self.unlink_slice(at, &key);
        if let Some(owner) = slice.service() {
            let of = self.slices_of.entry(owner.clone()).or_default();
            if let Err(at) = of.binary_search(&key) {
                of.insert(at, key.clone());
            }
            self.mark(owner.clone(), at);
        }
        self.slices.insert(key, slice);
    }

    fn delete_slice(&mut self, at: Instant, key: &Key) {
        self.unlink_slice(at, key);
        if let Some(slice) = self.slices.remove(key) {
            self.logged.remove(&slice.object_ref());
        }
    }

    /// Takes a slice out of its owner's list (marking the owner); the slice stays stored.
    fn unlink_slice(&mut self, at: Instant, key: &Key) {
        let Some(owner) = self.slices.get(key).and_then(|s| s.service()).cloned() else {
            return;
        };
        if let Some(of) = self.slices_of.get_mut(&owner) {
            if let Ok(i) = of.binary_search(key) {
                of.remove(i);
            }
            if of.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        self.mark(owner, at);
    }

    /// Rebuilds the dirty services and updates the table; returns what changed.
    pub fn compute(&mut self) -> Changes {
        let mut changes = Changes {
            since: self.dirty_since.take(),
            ..Default::default()
        };
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

    /// Rebuilds one service; returns whether it released a frontend or node port.
    fn rebuild(&mut self, key: &Key, changes: &mut Changes) -> bool {
        let old: Box<[Frontend]> = self.held.remove(key).unwrap_or_default();
        let old_node_ports = self.held_node_ports.remove(key).unwrap_or_default();
        for np in &old_node_ports {
            self.node_port_owner.remove(np);
        }
        self.conflicted.remove(key);
        let mut new_node_ports: Vec<(u16, Protocol)> = Vec::new();
        let mut health_check = None;
        let object = ObjectRef::new(ObjectKind::Service, key.namespace(), key.name());
        let mut new_entries = Vec::new();
        match self.services.get(key).cloned() {
            None => {
                self.logged.remove(&object);
            }
            Some(svc) => {
                let slices: Vec<&SliceObject> = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.slices.get(k).map(|s| &**s))
                    .collect();
                let built = model::build(&svc, &slices, &self.node);
                let mut problems = built.problems;
                let conflicts = model::claim_conflicts(
                    &svc,
                    &built.entries,
                    |np| self.node_port_owner.get(&np).map(ToString::to_string),
                    |fe| {
                        self.owner
                            .get(fe)
                            .filter(|o| *o != key)
                            .map(ToString::to_string)
                    },
                );
                if conflicts.is_empty() {
                    new_entries = built.entries;
                    new_node_ports = svc.node_ports().map(|(_, np, p)| (np, p)).collect();
                    health_check = built.health_check;
                } else {
                    problems.extend(conflicts);
                    self.conflicted.insert(key.clone());
                }
                self.log_problems(object, &problems);
            }
        }

        let mut released = old_node_ports.iter().any(|np| !new_node_ports.contains(np));
        for np in &new_node_ports {
            self.node_port_owner.insert(*np, key.clone());
        }
        if !new_node_ports.is_empty() {
            self.held_node_ports
                .insert(key.clone(), new_node_ports.into());
        }
        let old_health_check = match health_check {
            Some(hc) => self.health_checks.insert(key.clone(), hc),
            None => self.health_checks.remove(key),
        };
        changes.health_checks |= old_health_check != health_check;

        let new_fes: BTreeSet<Frontend> = new_entries.iter().map(|(fe, _)| *fe).collect();
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
            self.held.insert(key.clone(), held.into());
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

/// The keys held that a complete list no longer has.
fn missing_from<'a>(held: impl Iterator<Item = &'a Key>, listed: &HashSet<Key>) -> Vec<Key> {
    held.filter(|k| !listed.contains(*k)).cloned().collect()
}

#[cfg(test)]
mod tests;
