//! The standalone source of Services and EndpointSlices: YAML manifests on disk.
//!
//! [`ManifestSource`] watches PATH, a YAML file or a directory (every `*.yaml`, `*.yml` and
//! `*.json` file in it, sorted by name, not recursive, dotfiles skipped), by polling: the agent
//! calls [`ManifestSource::poll_objects`] every 200 ms. Polling stats the files and only
//! re-reads a file whose metadata changed (or whose mtime is so recent that a same-size rewrite
//! within the timestamp granularity could hide); it re-parses a file and re-decides which
//! objects are good only when some file's content actually changed.
//!
//! Each file holds YAML documents (`---` separated; JSON is YAML too). A document is a `v1`
//! `Service`, a `discovery.k8s.io/v1` `EndpointSlice`, a `v1` `Node`, or a `List` whose
//! `items` are such objects (what `kubectl get svc,endpointslices -A -o yaml` prints). Other
//! kinds are skipped (debug log), empty documents too. A missing namespace is "default" (Nodes
//! are cluster-scoped). Nodes only matter for this node's zone: the
//! `topology.kubernetes.io/zone` label of the Node named like the agent's node (topology
//! hints, see [`crate::model`]), and whether that Node is being deleted (a `deletionTimestamp`
//! or the cluster autoscaler's taint: the proxy health check then fails). Without that Node
//! the zone is unknown and the node not being deleted.
//!
//! Two ways to consume it: [`ManifestSource::poll`] (the table) or
//! [`ManifestSource::poll_objects`] (the last good objects themselves, for the object store);
//! [`read_objects`] reads PATH once (for `explain`).
//!
//! Bad input never disturbs the rest:
//! * a file that cannot be read or parsed (YAML syntax error): error log naming the file and
//!   the error (with its line); the file's objects keep their last good state;
//! * an object that does not deserialize, or that the model rejects ([`crate::model::Problem`]
//!   of severity error): error log naming the file, the object and the problem; the object
//!   keeps its last good version, or is absent if it never had one;
//! * the same kind/namespace/name in two places: the first (by file order, then document
//!   order) wins, error for the other;
//! * a deleted file, or an object removed from a file: its objects are removed (not an error).
//!
//! "Last good version" is the version of each object in the last good set. On a change, each
//! object is checked on its own when its version is new ([`model::build_service`],
//! [`model::slice_problems`]); an object with an error is replaced by its last good version
//! (or dropped). Then the services claim their frontends in this order: established first
//! (unchanged, or standing in with their last good version), then changed-but-previously-
//! good, then new, each group in file order; a service claiming a frontend already claimed
//! is replaced by its last good version (claiming again) or dropped. So an established owner
//! of a VIP wins a duplicate frontend, and the good set never holds two owners of one.
//!
//! Memory: one compact JSON copy of each object version is kept (shared between a file's
//! documents and the good set when they are the same version), with what the checks found;
//! typed objects are only made on demand ([`ManifestSource::poll_objects`],
//! [`ManifestSource::poll`]), and file contents only as a hash.
//!
//! Problems are found on each change of the manifests (never on idle polls) and logged when
//! they appear (not again while they persist); [`ManifestSource::problems`] lists the current
//! ones. Writers should replace files atomically (write + rename): a half-written file that
//! happens to be valid YAML is taken as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use tracing::{debug, error, warn};

use crate::model::table::{DesiredTable, Frontend};
use crate::model::{
    self, DEFAULT_NAMESPACE, LABEL_TOPOLOGY_ZONE, NodeInfo, ObjectKind, ObjectRef, Problem,
    ProblemKind, Severity,
};
use crate::source::{Objects, SourceEvent, node_deleting};

/// A file whose mtime is younger than this is re-read on every poll even if its metadata looks
/// unchanged (a rewrite within the filesystem's timestamp granularity keeps the mtime).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// One problem found while building the table from the manifests (already logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    pub severity: Severity,
    /// Names the file, and the object when there is one.
    pub message: String,
}

/// Why the manifests could not be read at all ([`read_objects`]).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifests: {0}")]
    Path(String),
    #[error("manifests: {}", .0.join("; "))]
    Files(Vec<String>),
}

/// Reads PATH (file or directory, as [`ManifestSource`]) once: every object that
/// deserializes, as written (not checked by the model: a rejected Service is there too, so
/// `explain` can tell why), the first of each kind/namespace/name; and the zone of the Node
/// named `node_name`. Err if PATH cannot be listed or a file cannot be read or parsed.
pub fn read_objects(path: &Path, node_name: &str) -> Result<Objects, ManifestError> {
    let mut src = ManifestSource::new(path.to_owned(), node_name.to_owned());
    src.scan();
    if let Some(e) = &src.path_error {
        return Err(ManifestError::Path(e.clone()));
    }
    let errors: Vec<String> = src
        .files
        .iter()
        .filter_map(|(p, s)| s.error.as_ref().map(|e| format!("{}: {e}", p.display())))
        .collect();
    if !errors.is_empty() {
        return Err(ManifestError::Files(errors));
    }
    let mut seen: HashSet<&ObjectRef> = HashSet::new();
    let mut objects: Vec<&Parsed> = Vec::new();
    for (path, state) in &src.files {
        for doc in &state.docs {
            match &doc.parsed {
                Ok(version) => {
                    if seen.insert(&version.key) {
                        objects.push(version);
                    } else {
                        warn!(
                            "{} ({}): {} is defined twice; ignored",
                            path.display(),
                            doc.location,
                            version.key
                        );
                    }
                }
                Err(bad) => warn!(
                    "{} ({}): {}; ignored",
                    path.display(),
                    doc.location,
                    bad.error
                ),
            }
        }
    }
    Ok(objects_of(objects, node_name))
}

/// Makes the typed objects (splitting them by kind); the zone is the one of the Node called
/// `node_name`.
fn objects_of<'a>(versions: impl IntoIterator<Item = &'a Parsed>, node_name: &str) -> Objects {
    let mut out = Objects::default();
    for version in versions {
        match version.key.kind {
            ObjectKind::Service => {
                if let Some(svc) = version.decode() {
                    out.services.push(svc);
                }
            }
            ObjectKind::EndpointSlice => {
                if let Some(slice) = version.decode() {
                    out.slices.push(slice);
                }
            }
            ObjectKind::Node => {
                if !node_name.is_empty() && version.key.name == node_name {
                    out.node_zone = version.zone.as_deref().map(str::to_owned);
                }
            }
        }
    }
    out
}

/// Polls a manifest file or directory and hands out the good objects (or the
/// [`DesiredTable`] built from them).
#[derive(Debug)]
pub struct ManifestSource {
    path: PathBuf,
    node_name: String,
    /// Per file, in file order.
    files: BTreeMap<PathBuf, FileState>,
    /// Why PATH could not be listed, if it could not (logged on change).
    path_error: Option<String>,
    /// The good set: the last good version of each object, in output order (services:
    /// established ones first). Versions are shared with the files' documents.
    accepted: Vec<Version>,
    /// The current problems.
    problems: Vec<ManifestProblem>,
    /// Whether the good set was decided at least once.
    decided: bool,
    /// Bumped each time the good set changes.
    generation: u64,
    /// The generation [`Self::poll_objects`] returned last.
    objects_generation: Option<u64>,
    /// The generation [`Self::poll`] built its table from last, and what it returned last.
    table_generation: Option<u64>,
    last_table: Option<DesiredTable>,
    /// The generation [`Self::poll_events`] reported last, with its good set and this node.
    events_generation: Option<u64>,
    reported: Option<(Vec<Version>, NodeFacts)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Length and hash of a file's content: tells a changed content without keeping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Digest(u64, u64);

impl Digest {
    fn of(content: &[u8]) -> Self {
        // SipHash with fixed keys: a rewrite colliding by chance is not a concern.
        let mut h = std::hash::DefaultHasher::new();
        h.write(content);
        Digest(content.len() as u64, h.finish())
    }
}

#[derive(Debug)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    content: Option<Digest>,
    /// The documents of the last successful parse.
    docs: Vec<Doc>,
    /// Current read or syntax error; `docs` are then the last good ones.
    error: Option<String>,
}

/// One version of one object: its compact JSON (typed again on demand) and what the checks
/// of the object on its own found.
#[derive(Debug)]
struct Parsed {
    key: ObjectRef,
    json: Box<[u8]>,
    /// The model's problems with the object on its own (service: [`model::build_service`];
    /// slice: [`model::slice_problems`]).
    problems: Box<[ProblemKind]>,
    /// Service: the frontends it claims (none when it is ignored or rejected).
    frontends: Box<[Frontend]>,
    /// Slice: the name of the service (in its namespace) it feeds, if the model would look
    /// for it (valid, this proxy's, not FQDN): a missing one is warned about.
    service: Option<Box<str>>,
    /// Node: its zone label.
    zone: Option<Box<str>>,
    /// Node: being deleted ([`node_deleting`]).
    deleting: bool,
}

/// What [`SourceEvent::NodeUpdated`] says of this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeFacts {
    zone: Option<String>,
    deleting: bool,
}

impl NodeFacts {
    fn event(self) -> SourceEvent {
        SourceEvent::NodeUpdated {
            zone: self.zone,
            deleting: self.deleting,
        }
    }
}

type Version = Arc<Parsed>;

impl Parsed {
    fn rejected(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.severity() == Severity::Error)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        match serde_json::from_slice(&self.json) {
            Ok(v) => Some(v),
            Err(e) => {
                // Cannot happen: the JSON was written from the same type.
                error!(
                    "manifests: {}: cannot decode the kept copy: {e}; ignored",
                    self.key
                );
                None
            }
        }
    }
}

/// The event for an object added or changed (none for a Node: its zone is reported apart).
fn applied(version: &Parsed) -> Option<SourceEvent> {
    match version.key.kind {
        ObjectKind::Service => version.decode().map(SourceEvent::ServiceApplied),
        ObjectKind::EndpointSlice => version.decode().map(SourceEvent::SliceApplied),
        ObjectKind::Node => None,
    }
}

/// The event for an object removed (none for a Node).
fn deleted(key: &ObjectRef) -> Option<SourceEvent> {
    let metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        ..Default::default()
    };
    match key.kind {
        ObjectKind::Service => Some(SourceEvent::ServiceDeleted(Service {
            metadata,
            ..Default::default()
        })),
        ObjectKind::EndpointSlice => Some(SourceEvent::SliceDeleted(EndpointSlice {
            metadata,
            ..Default::default()
        })),
        ObjectKind::Node => None,
    }
}

/// The same version (usually the same allocation; else equal JSON).
fn same(a: &Version, b: &Version) -> bool {
    Arc::ptr_eq(a, b) || a.json == b.json
}

/// Where a document is in its file: "document 2" or "document 1, item 3".
#[derive(Clone, Debug)]
struct Location {
    document: u32,
    items: Vec<u32>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        for i in &self.items {
            write!(f, ", item {i}")?;
        }
        Ok(())
    }
}

/// One object (or an unusable document) in a file.
#[derive(Clone, Debug)]
struct Doc {
    location: Location,
    parsed: Result<Version, Box<BadDoc>>,
}

/// A document that is not a usable object.
#[derive(Clone, Debug)]
struct BadDoc {
    /// None when the document does not even name an object.
    key: Option<ObjectRef>,
    error: String,
}

/// A candidate for the good set while deciding it.
struct Candidate<'a> {
    key: &'a ObjectRef,
    file: &'a Path,
    version: Version,
    /// This is the last good version standing in for a bad new one.
    is_last_good: bool,
}

impl ManifestSource {
    pub fn new(path: PathBuf, node_name: String) -> Self {
        ManifestSource {
            path,
            node_name,
            files: BTreeMap::new(),
            path_error: None,
            accepted: Vec::new(),
            problems: Vec::new(),
            decided: false,
            generation: 0,
            objects_generation: None,
            table_generation: None,
            last_table: None,
            events_generation: None,
            reported: None,
        }
    }

    /// Problems found by the last change (they were logged when they appeared).
    pub fn problems(&self) -> &[ManifestProblem] {
        &self.problems
    }

    /// Re-reads PATH. Returns the table if it differs from the last one returned (the first
    /// call always returns one, possibly empty); None when nothing changed.
    pub fn poll(&mut self) -> Option<DesiredTable> {
        self.refresh();
        if self.table_generation == Some(self.generation) {
            return None;
        }
        self.table_generation = Some(self.generation);
        let objects = self.current_objects();
        let node = NodeInfo::new(self.node_name.clone(), objects.node_zone.clone());
        let table = model::build_table(&objects.services, &objects.slices, &node).table;
        drop(objects);
        if self.last_table.as_ref() == Some(&table) {
            return None;
        }
        self.last_table = Some(table.clone());
        Some(table)
    }

    /// Re-reads PATH. Returns the good objects (see the module doc: each bad object replaced
    /// by its last good version, or absent; no two services claiming a frontend) if they
    /// changed since the last ones returned (the first call always returns them); None when
    /// nothing changed. Services come established ones first.
    pub fn poll_objects(&mut self) -> Option<Objects> {
        self.refresh();
        if self.objects_generation == Some(self.generation) {
            return None;
        }
        self.objects_generation = Some(self.generation);
        Some(self.current_objects())
    }

    /// Re-reads PATH. Returns what changed in the good set (as [`Self::poll_objects`] hands
    /// it out) since the last call, as events for the object store: the first call returns
    /// the whole set ([`SourceEvent::NodeUpdated`], [`SourceEvent::ServicesReplaced`],
    /// [`SourceEvent::SlicesReplaced`]); later ones the objects added or changed
    /// (`ServiceApplied`, `SliceApplied`), the ones removed (`ServiceDeleted`, `SliceDeleted`,
    /// carrying only namespace and name) and this node if it changed. None when nothing changed.
    /// Only the changed objects are typed: cheap for a small change in a large set.
    pub fn poll_events(&mut self) -> Option<Vec<SourceEvent>> {
        self.refresh();
        if self.events_generation == Some(self.generation) {
            return None;
        }
        self.events_generation = Some(self.generation);
        let node = self.node_facts();
        let events = match self.reported.take() {
            None => {
                let objects = self.current_objects();
                vec![
                    node.clone().event(),
                    SourceEvent::ServicesReplaced(objects.services),
                    SourceEvent::SlicesReplaced(objects.slices),
                ]
            }
            Some((base, base_node)) => {
                let mut events = Vec::new();
                if node != base_node {
                    events.push(node.clone().event());
                }
                let before: HashMap<&ObjectRef, &Version> =
                    base.iter().map(|v| (&v.key, v)).collect();
                let now: HashSet<&ObjectRef> = self.accepted.iter().map(|v| &v.key).collect();
                for version in &base {
                    if !now.contains(&version.key) {
                        events.extend(deleted(&version.key));
                    }
                }
                for version in &self.accepted {
                    if before.get(&version.key).is_none_or(|b| !same(b, version)) {
                        events.extend(applied(version));
                    }
                }
                events
            }
        };
        self.reported = Some((self.accepted.clone(), node));
        (!events.is_empty()).then_some(events)
    }

    /// This node's Node in the good set (defaults without one).
    fn node_facts(&self) -> NodeFacts {
        self.accepted
            .iter()
            .find(|v| {
                v.key.kind == ObjectKind::Node
                    && !self.node_name.is_empty()
                    && v.key.name == self.node_name
            })
            .map(|v| NodeFacts {
                zone: v.zone.as_deref().map(str::to_owned),
                deleting: v.deleting,
            })
            .unwrap_or_default()
    }

    /// The good set, typed.
    fn current_objects(&self) -> Objects {
        objects_of(self.accepted.iter().map(|v| v.as_ref()), &self.node_name)
    }

    /// Rescans, deciding the good set again if anything changed (or it never was).
    fn refresh(&mut self) {
        let changed = self.scan();
        if changed || !self.decided {
            self.decide();
            self.decided = true;
        }
    }

    /// The files PATH designates, in order.
    fn list(&mut self) -> Vec<PathBuf> {
        let result = match fs::metadata(&self.path) {
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
            Ok(meta) if meta.is_dir() => match fs::read_dir(&self.path) {
                Err(e) => Err(format!("cannot list {}: {e}", self.path.display())),
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| is_manifest_name(p))
                        // Follows symlinks (ConfigMap volumes); skips directories.
                        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
                        .collect();
                    files.sort();
                    Ok(files)
                }
            },
            Ok(_) => Ok(vec![self.path.clone()]),
        };
        match result {
            Ok(files) => {
                self.path_error = None;
                files
            }
            Err(e) => {
                self.path_error = Some(e);
                Vec::new()
            }
        }
    }

    /// Refreshes the per-file state; true if anything that matters changed.
    fn scan(&mut self) -> bool {
        let path_error = self.path_error.clone();
        let listed = self.list();
        // A new or cleared PATH error is a change (logged by the decision).
        let mut changed = self.path_error != path_error;

        let before = self.files.len();
        let wanted: HashSet<&PathBuf> = listed.iter().collect();
        self.files.retain(|path, _| wanted.contains(path));
        drop(wanted);
        if self.files.len() != before {
            changed = true;
        }

        let now = SystemTime::now();
        for path in listed {
            let state = self.files.entry(path.clone()).or_insert_with(|| {
                changed = true;
                FileState {
                    fingerprint: None,
                    content: None,
                    docs: Vec::new(),
                    error: None,
                }
            });
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    changed |= state.set_error(format!("cannot read: {e}"));
                    continue;
                }
            };
            let fingerprint = Fingerprint::of(&meta);
            let racy = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < RACY_WINDOW);
            if state.fingerprint.as_ref() == Some(&fingerprint) && !racy {
                continue;
            }
            state.fingerprint = Some(fingerprint);
            let content = match fs::read(&path) {
                Ok(c) => c,
                Err(e) => {
                    state.content = None;
                    changed |= state.set_error(format!("cannot read: {e}"));
                    continue;
                }
            };
            let digest = Digest::of(&content);
            if state.content == Some(digest) {
                continue;
            }
            changed = true;
            match parse_file(&content, &state.docs) {
                Ok(docs) => {
                    state.docs = docs;
                    state.error = None;
                }
                Err(e) => state.error = Some(e),
            }
            state.content = Some(digest);
        }
        changed
    }

    /// Decides the good set from the current files, recording (and logging new) problems.
    fn decide(&mut self) {
        let mut log = ProblemLog::default();
        if let Some(e) = &self.path_error {
            log.push(
                Severity::Warning,
                format!("manifests: {e}; no objects from it"),
            );
        }
        let last_good: HashMap<&ObjectRef, &Version> =
            self.accepted.iter().map(|v| (&v.key, v)).collect();

        // Candidates: the first occurrence of each key, bad versions replaced by the last
        // good one; ranked established (0), changed (1), new (2).
        let mut first_seen: HashMap<&ObjectRef, &Path> = HashMap::new();
        let mut ranked: Vec<(u8, Candidate<'_>)> = Vec::new();
        for (path, state) in &self.files {
            let file = path.display();
            if let Some(e) = &state.error {
                log.push(
                    Severity::Error,
                    format!("{file}: {e}; its objects keep their last good state"),
                );
            }
            for doc in &state.docs {
                let key = match &doc.parsed {
                    Ok(version) => &version.key,
                    Err(bad) => match bad.as_ref() {
                        BadDoc { key: Some(key), .. } => key,
                        BadDoc { key: None, error } => {
                            let at = &doc.location;
                            log.push(Severity::Error, format!("{file} ({at}): {error}"));
                            continue;
                        }
                    },
                };
                if let Some(first) = first_seen.get(key) {
                    log.push(
                        Severity::Error,
                        format!(
                            "{file} ({}): {key} is already defined in {}; ignored",
                            doc.location,
                            first.display()
                        ),
                    );
                    continue;
                }
                first_seen.insert(key, path);
                let good = last_good.get(key).copied();
                let (version, is_last_good) = match &doc.parsed {
                    Ok(version) if !version.rejected() => (version.clone(), false),
                    Ok(version) => {
                        let stand_in = good.filter(|g| !same(g, version));
                        let what_now = match stand_in {
                            Some(_) => "keeping its last good version",
                            None => "ignored",
                        };
                        for kind in &version.problems {
                            log.problem(path, key, kind, what_now);
                        }
                        match stand_in {
                            Some(g) => (g.clone(), true),
                            None => continue,
                        }
                    }
                    Err(bad) => match good {
                        Some(g) => {
                            let e = &bad.error;
                            log.push(
                                Severity::Error,
                                format!(
                                    "{file} ({}): {key}: {e}; keeping its last good version",
                                    doc.location
                                ),
                            );
                            (g.clone(), true)
                        }
                        None => {
                            let e = &bad.error;
                            log.push(
                                Severity::Error,
                                format!("{file} ({}): {key}: {e}; ignored", doc.location),
                            );
                            continue;
                        }
                    },
                };
                let rank = match good {
                    Some(g) if same(g, &version) => 0,
                    Some(_) => 1,
                    None => 2,
                };
                let candidate = Candidate {
                    key,
                    file: path,
                    version,
                    is_last_good,
                };
                ranked.push((rank, candidate));
            }
        }
        drop(first_seen);
        // Stable: file order within each rank.
        ranked.sort_by_key(|(rank, _)| *rank);

        // Frontends: the first claim wins; a later claimant falls back to its last good
        // version (which claims again) or is dropped.
        let mut claimed: HashMap<Frontend, &ObjectRef> = HashMap::new();
        let mut chosen: Vec<Candidate<'_>> = Vec::with_capacity(ranked.len());
        'candidates: for (_, mut c) in ranked {
            if c.key.kind == ObjectKind::Service {
                loop {
                    let conflicts: Vec<ProblemKind> = c
                        .version
                        .frontends
                        .iter()
                        .filter_map(|fe| {
                            claimed.get(fe).map(|owner| ProblemKind::DuplicateFrontend {
                                frontend: *fe,
                                owner: format!("{}/{}", owner.namespace, owner.name),
                            })
                        })
                        .collect();
                    if conflicts.is_empty() {
                        break;
                    }
                    let stand_in = last_good
                        .get(c.key)
                        .filter(|g| !c.is_last_good && !same(g, &c.version));
                    let what_now = match stand_in {
                        Some(_) => "keeping its last good version",
                        None => "ignored",
                    };
                    for kind in &conflicts {
                        log.problem(c.file, c.key, kind, what_now);
                    }
                    match stand_in {
                        Some(g) => {
                            c.version = Arc::clone(g);
                            c.is_last_good = true;
                        }
                        None => continue 'candidates,
                    }
                }
                for fe in &c.version.frontends {
                    claimed.insert(*fe, c.key);
                }
            }
            chosen.push(c);
        }
        drop(claimed);

        // Warnings about what is used; slices of services that are not there.
        let known: HashSet<(&str, &str)> = chosen
            .iter()
            .filter(|c| c.key.kind == ObjectKind::Service)
            .map(|c| (c.key.namespace.as_str(), c.key.name.as_str()))
            .collect();
        for c in &chosen {
            for kind in &c.version.problems {
                log.problem(c.file, c.key, kind, "");
            }
            let namespace = c.key.namespace.as_str();
            if let Some(name) = c.version.service.as_deref()
                && !known.contains(&(namespace, name))
            {
                let kind = ProblemKind::UnknownService {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                log.problem(c.file, c.key, &kind, "");
            }
        }
        drop(known);
        drop(last_good);

        let unchanged = chosen.len() == self.accepted.len()
            && chosen
                .iter()
                .zip(&self.accepted)
                .all(|(c, version)| same(&c.version, version));
        if !unchanged || !self.decided {
            let accepted: Vec<Version> = chosen.into_iter().map(|c| c.version).collect();
            self.accepted = accepted;
            self.generation += 1;
        }

        let before: HashSet<&str> = self.problems.iter().map(|p| p.message.as_str()).collect();
        for p in &log.problems {
            if !before.contains(p.message.as_str()) {
                match p.severity {
                    Severity::Warning => warn!("{}", p.message),
                    Severity::Error => error!("{}", p.message),
                }
            }
        }
        drop(before);
        self.problems = log.problems;
        debug!(
            "manifests: {} good objects, generation {}",
            self.accepted.len(),
            self.generation
        );
    }
}

impl FileState {
    /// Records a read error; true if it is a new one.
    fn set_error(&mut self, e: String) -> bool {
        if self.error.as_ref() == Some(&e) {
            return false;
        }
        self.error = Some(e);
        self.fingerprint = None;
        true
    }
}

/// The problems of one decision, each once (logged by the caller when new).
#[derive(Default)]
struct ProblemLog {
    seen: HashSet<String>,
    problems: Vec<ManifestProblem>,
}

impl ProblemLog {
    fn push(&mut self, severity: Severity, message: String) {
        if !self.seen.insert(message.clone()) {
            return;
        }
        self.problems.push(ManifestProblem { severity, message });
    }

    /// A model problem of an object in `file`; an error says `what_now`.
    fn problem(&mut self, file: &Path, key: &ObjectRef, kind: &ProblemKind, what_now: &str) {
        let problem = Problem {
            object: key.clone(),
            kind: kind.clone(),
        };
        let file = file.display();
        match kind.severity() {
            Severity::Warning => self.push(Severity::Warning, format!("{file}: {problem}")),
            Severity::Error => {
                self.push(Severity::Error, format!("{file}: {problem}; {what_now}"));
            }
        }
    }
}

fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// Parses a whole file; Err (with the line) on a YAML syntax error anywhere in it. A version
/// equal to the one `old` (the file's previous documents) has for the same key is shared.
fn parse_file(content: &[u8], old: &[Doc]) -> Result<Vec<Doc>, String> {
    let old: HashMap<&ObjectRef, &Version> = old
        .iter()
        .filter_map(|d| d.parsed.as_ref().ok())
        .map(|v| (&v.key, v))
        .collect();
    let mut docs = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_slice(content).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        let location = Location {
            document: u32::try_from(i + 1).unwrap_or(u32::MAX),
            items: Vec::new(),
        };
        collect(value, location, &old, &mut docs);
    }
    Ok(docs)
}

fn str_field<'a>(value: &'a serde_yaml::Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(|v| v.as_str())
}

/// Turns one document (or List item) into Docs.
fn collect(
    value: serde_yaml::Value,
    location: Location,
    old: &HashMap<&ObjectRef, &Version>,
    docs: &mut Vec<Doc>,
) {
    let unusable = |location: Location, error: String| Doc {
        location,
        parsed: Err(Box::new(BadDoc { key: None, error })),
    };
    let mut value = match value {
        serde_yaml::Value::Null => return,
        serde_yaml::Value::Mapping(m) => m,
        _ => {
            let e = "not a Kubernetes object (expected a mapping)".to_owned();
            docs.push(unusable(location, e));
            return;
        }
    };
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let object_kind = match (api_version.as_str(), kind.as_str()) {
        (_, "List") => {
            match value.remove("items") {
                None | Some(serde_yaml::Value::Null) => {}
                Some(serde_yaml::Value::Sequence(items)) => {
                    drop(value);
                    for (i, item) in items.into_iter().enumerate() {
                        let mut at = location.clone();
                        at.items.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
                        collect(item, at, old, docs);
                    }
                }
                Some(_) => {
                    docs.push(unusable(
                        location,
                        "List items is not a sequence".to_owned(),
                    ));
                }
            }
            return;
        }
        ("v1", "Service") => ObjectKind::Service,
        ("v1", "Node") => ObjectKind::Node,
        ("discovery.k8s.io/v1", "EndpointSlice") => ObjectKind::EndpointSlice,
        _ => {
            debug!("manifests: {location}: skipping {api_version:?} {kind:?}");
            return;
        }
    };

    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| str_field(m, "name")).unwrap_or("");
    if name.is_empty() {
        docs.push(unusable(location, format!("{kind} without metadata.name")));
        return;
    }
    let namespace = match object_kind {
        ObjectKind::Node => "",
        _ => metadata
            .and_then(|m| str_field(m, "namespace"))
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE),
    };
    let key = ObjectRef::new(object_kind, namespace, name);
    let value = serde_yaml::Value::Mapping(value);
    let parsed = version_of(&key, value, old.get(&key).copied()).map_err(|error| {
        Box::new(BadDoc {
            key: Some(key),
            error,
        })
    });
    docs.push(Doc { location, parsed });
}

/// Deserializes one object and checks it on its own; `old` (the previous version at this
/// key in the file) is shared if equal.
fn version_of(
    key: &ObjectRef,
    value: serde_yaml::Value,
    old: Option<&Version>,
) -> Result<Version, String> {
    let mut parsed = Parsed {
        key: key.clone(),
        json: Box::default(),
        problems: Box::default(),
        frontends: Box::default(),
        service: None,
        zone: None,
        deleting: false,
    };
    let json = match key.kind {
        ObjectKind::Service => {
            let mut svc: Service = serde_yaml::from_value(value).map_err(|e| e.to_string())?;
            svc.metadata.namespace = Some(key.namespace.clone());
            let json = to_json(&svc)?;
            if let Some(old) = old.filter(|o| *o.json == *json) {
                return Ok(Arc::clone(old));
            }
            // What the service claims does not depend on its slices nor on the node.
            let built = model::build_service(&svc, &[], &NodeInfo::default());
            if built.accepted() {
                parsed.frontends = built.entries.into_iter().map(|(fe, _)| fe).collect();
            }
            parsed.problems = built.problems.into_boxed_slice();
            json
        }
        ObjectKind::EndpointSlice => {
            let mut slice: EndpointSlice =
                serde_yaml::from_value(value).map_err(|e| e.to_string())?;
            slice.metadata.namespace = Some(key.namespace.clone());
            let json = to_json(&slice)?;
            if let Some(old) = old.filter(|o| *o.json == *json) {
                return Ok(Arc::clone(old));
            }
            parsed.problems = model::slice_problems(&slice).into_boxed_slice();
            if parsed.problems.is_empty() && slice.address_type != "FQDN" {
                // The slice's own namespace.
                parsed.service = model::slice_service(&slice).map(|(_, name)| name.into());
            }
            json
        }
        ObjectKind::Node => {
            let node: Node = serde_yaml::from_value(value).map_err(|e| e.to_string())?;
            let json = to_json(&node)?;
            if let Some(old) = old.filter(|o| *o.json == *json) {
                return Ok(Arc::clone(old));
            }
            parsed.zone = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
                .filter(|z| !z.is_empty())
                .map(|z| z.as_str().into());
            parsed.deleting = node_deleting(&node);
            json
        }
    };
    parsed.json = json;
    Ok(Arc::new(parsed))
}

fn to_json<T: serde::Serialize>(object: &T) -> Result<Box<[u8]>, String> {
    serde_json::to_vec(object)
        .map(Vec::into_boxed_slice)
        .map_err(|e| format!("cannot be encoded: {e}"))
}

#[cfg(test)]
mod tests;
