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
//! Two services claiming the same frontend (which the API server's allocator prevents): the
//! one that holds it keeps it; the other is rejected as a whole, reported, and retried when
//! a frontend is released.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use crate::model::table::{DesiredTable, Frontend};
use crate::model::{
    self, Key, NodeInfo, ObjectKind, ObjectRef, ProblemKind, ServiceObject, Severity, SliceObject,
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
    /// Services rejected because another holds one of their frontends.
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

    /// Rebuilds one service; returns whether it released a frontend.
    fn rebuild(&mut self, key: &Key, changes: &mut Changes) -> bool {
        let old: Box<[Frontend]> = self.held.remove(key).unwrap_or_default();
        self.conflicted.remove(key);
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
