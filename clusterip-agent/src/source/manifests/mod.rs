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
//! are cluster-scoped). Nodes only matter for this node's zone and addresses: the
//! `topology.kubernetes.io/zone` label of the Node named like the agent's node (topology
//! hints, see [`crate::model`]) and its InternalIP/ExternalIP addresses
//! (`--nodeport-addresses primary`, the source NAT address).
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
//! object is checked on its own as it is parsed ([`ServiceObject::new`],
//! [`SliceObject::new`]); two versions are the same when their checked forms are equal; an object with an error is replaced by its last good version
//! (or dropped). Then the services claim their frontends in this order: established first
//! (unchanged, or standing in with their last good version), then changed-but-previously-
//! good, then new, each group in file order; a service claiming a frontend already claimed
//! is replaced by its last good version (claiming again) or dropped. So an established owner
//! of a VIP wins a duplicate frontend, and the good set never holds two owners of one.
//!
//! Memory: files are parsed one document at a time, and each object is kept only in its
//! checked compact form ([`ServiceObject`], [`SliceObject`], a Node's zone), shared between a
//! file's documents, the good set and the store (through the events) when it is the same
//! version; file contents are kept only as a hash. `explain` reads typed objects on its own
//! ([`read_objects`]).
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
use tracing::{debug, error, warn};

use crate::model::table::{DesiredTable, Frontend, Protocol};
use crate::model::{
    self, DEFAULT_NAMESPACE, Key, LABEL_TOPOLOGY_ZONE, NodeAddresses, NodeInfo, ObjectKind,
    ObjectRef, Problem, ProblemKind, ServiceObject, Severity, SliceObject,
};
use crate::source::{Objects, SourceEvent};

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
    let files = list_files(path).map_err(ManifestError::Path)?;
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for file in files {
        match fs::read(&file) {
            Err(e) => errors.push(format!("{}: cannot read: {e}", file.display())),
            Ok(content) => match parse_file::<TypedDoc>(&content) {
                Ok(docs) => parsed.push((file, docs)),
                Err(e) => errors.push(format!("{}: {e}", file.display())),
            },
        }
    }
    if !errors.is_empty() {
        return Err(ManifestError::Files(errors));
    }
    let mut seen: HashSet<ObjectRef> = HashSet::new();
    let mut out = Objects::default();
    for (path, docs) in parsed {
        for doc in docs {
            let typed = match doc.parsed {
                Ok(typed) => typed,
                Err(bad) => {
                    warn!(
                        "{} ({}): {}; ignored",
                        path.display(),
                        doc.location,
                        bad.error
                    );
                    continue;
                }
            };
            if !seen.insert(typed.key.clone()) {
                warn!(
                    "{} ({}): {} is defined twice; ignored",
                    path.display(),
                    doc.location,
                    typed.key
                );
                continue;
            }
            match typed.object {
                Typed::Service(svc) => out.services.push(*svc),
                Typed::Slice(slice) => out.slices.push(*slice),
                Typed::Node(zone, addresses) => {
                    if !node_name.is_empty() && typed.key.name == node_name {
                        out.node_zone = zone;
                        out.node_addresses = addresses;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The good set, checked and compact ([`ManifestSource::poll_objects`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GoodObjects {
    /// Established ones first (see the module doc).
    pub services: Vec<Arc<ServiceObject>>,
    pub slices: Vec<Arc<SliceObject>>,
    /// The `topology.kubernetes.io/zone` label of this node, if known.
    pub node_zone: Option<String>,
    /// This node's addresses, if its Node is there.
    pub node_addresses: NodeAddresses,
}

/// Splits versions by kind; the zone and addresses are those of the Node called `node_name`.
fn objects_of<'a>(versions: impl IntoIterator<Item = &'a Parsed>, node_name: &str) -> GoodObjects {
    let mut out = GoodObjects::default();
    for version in versions {
        match &version.object {
            Object::Service(svc) => out.services.push(Arc::clone(svc)),
            Object::Slice(slice) => out.slices.push(Arc::clone(slice)),
            Object::Node { zone, addresses } => {
                if !node_name.is_empty() && version.key.name == node_name {
                    out.node_zone = zone.as_deref().map(str::to_owned);
                    out.node_addresses = addresses.clone();
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
    /// The generation [`Self::poll_events`] reported last, with its good set and zone.
    events_generation: Option<u64>,
    reported: Option<(Vec<Version>, NodeState)>,
}

/// This node's zone and addresses, as last reported.
type NodeState = (Option<String>, NodeAddresses);

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
    docs: Vec<Doc<Version>>,
    /// Current read or syntax error; `docs` are then the last good ones.
    error: Option<String>,
}

/// One version of one object, checked and compact.
#[derive(Debug)]
struct Parsed {
    key: ObjectRef,
    object: Object,
}

#[derive(Debug, PartialEq)]
enum Object {
    Service(Arc<ServiceObject>),
    Slice(Arc<SliceObject>),
    /// Only its zone label and addresses matter.
    Node {
        zone: Option<Box<str>>,
        addresses: NodeAddresses,
    },
}

type Version = Arc<Parsed>;

impl Parsed {
    /// The model's problems with the object on its own.
    fn problems(&self) -> &[ProblemKind] {
        match &self.object {
            Object::Service(svc) => svc.problems(),
            Object::Slice(slice) => slice.problems(),
            Object::Node { .. } => &[],
        }
    }

    fn rejected(&self) -> bool {
        self.problems()
            .iter()
            .any(|p| p.severity() == Severity::Error)
    }

    /// Service: the frontends it claims (none when it is ignored or rejected).
    fn frontends(&self) -> Vec<Frontend> {
        match &self.object {
            Object::Service(svc) => svc.frontends().collect(),
            _ => Vec::new(),
        }
    }

    /// Service: the node ports it claims, on whatever addresses the node has.
    fn service_object(&self) -> Option<&ServiceObject> {
        match &self.object {
            Object::Service(svc) => Some(svc),
            _ => None,
        }
    }

    /// Slice: the name of the service (in its namespace) it feeds, if the model would look
    /// for it (valid, this proxy's, not FQDN): a missing one is warned about.
    fn service(&self) -> Option<&str> {
        match &self.object {
            Object::Slice(slice) if slice.problems().is_empty() && !slice.is_fqdn() => {
                slice.service().map(Key::name)
            }
            _ => None,
        }
    }
}

/// The event for an object added or changed (none for a Node: its zone is reported apart).
/// The object is shared with the store, not copied.
fn applied(version: &Parsed) -> Option<SourceEvent> {
    match &version.object {
        Object::Service(svc) => Some(SourceEvent::ServiceApplied(Arc::clone(svc))),
        Object::Slice(slice) => Some(SourceEvent::SliceApplied(Arc::clone(slice))),
        Object::Node { .. } => None,
    }
}

/// The event for an object removed (none for a Node).
fn deleted(key: &ObjectRef) -> Option<SourceEvent> {
    let name = Key::new(&key.namespace, &key.name);
    match key.kind {
        ObjectKind::Service => Some(SourceEvent::ServiceDeleted(name)),
        ObjectKind::EndpointSlice => Some(SourceEvent::SliceDeleted(name)),
        ObjectKind::Node => None,
    }
}

/// The same version (usually the same allocation; else equal checked forms).
fn same(a: &Version, b: &Version) -> bool {
    Arc::ptr_eq(a, b) || (a.key == b.key && a.object == b.object)
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

/// One object (or an unusable document) in a file: a [`Version`] for the source, a
/// [`TypedDoc`] for [`read_objects`].
#[derive(Clone, Debug)]
struct Doc<T = Version> {
    location: Location,
    parsed: Result<T, Box<BadDoc>>,
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
        let services = objects.services.iter().map(|s| &**s);
        let slices = objects.slices.iter().map(|s| &**s);
        let table = model::build_table_of(services, slices, &node).table;
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
    pub fn poll_objects(&mut self) -> Option<GoodObjects> {
        self.refresh();
        if self.objects_generation == Some(self.generation) {
            return None;
        }
        self.objects_generation = Some(self.generation);
        Some(self.current_objects())
    }

    /// Re-reads PATH. Returns what changed in the good set (as [`Self::poll_objects`] hands
    /// it out) since the last call, as events for the object store: the first call returns
    /// the whole set ([`SourceEvent::NodeUpdated`], then each kind as a complete list:
    /// [`SourceEvent::Listing`], the objects, [`SourceEvent::Listed`]); later ones the
    /// objects added or changed (`ServiceApplied`, `SliceApplied`), the ones removed
    /// (`ServiceDeleted`, `SliceDeleted`, carrying only the key) and the zone if it changed.
    /// None when nothing changed. The objects are shared with the events, not copied.
    pub fn poll_events(&mut self) -> Option<Vec<SourceEvent>> {
        self.refresh();
        if self.events_generation == Some(self.generation) {
            return None;
        }
        self.events_generation = Some(self.generation);
        let node = objects_of(
            self.accepted
                .iter()
                .filter(|v| v.key.kind == ObjectKind::Node)
                .map(|v| v.as_ref()),
            &self.node_name,
        );
        let zone = (node.node_zone, node.node_addresses);
        let node_event =
            |(zone, addresses): &(Option<String>, NodeAddresses)| SourceEvent::NodeUpdated {
                zone: zone.clone(),
                deleting: false,
                addresses: addresses.clone(),
            };
        let events = match self.reported.take() {
            None => {
                // The whole set, as one list of each kind.
                let mut events = vec![node_event(&zone), SourceEvent::Listing(ObjectKind::Service)];
                let of = |kind: ObjectKind| {
                    self.accepted
                        .iter()
                        .filter(move |v| v.key.kind == kind)
                        .filter_map(|v| applied(v))
                };
                events.extend(of(ObjectKind::Service));
                events.push(SourceEvent::Listed(ObjectKind::Service));
                events.push(SourceEvent::Listing(ObjectKind::EndpointSlice));
                events.extend(of(ObjectKind::EndpointSlice));
                events.push(SourceEvent::Listed(ObjectKind::EndpointSlice));
                events
            }
            Some((base, base_zone)) => {
                let mut events = Vec::new();
                if zone != base_zone {
                    events.push(node_event(&zone));
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
        self.reported = Some((self.accepted.clone(), zone));
        (!events.is_empty()).then_some(events)
    }

    /// The good set.
    fn current_objects(&self) -> GoodObjects {
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
        match list_files(&self.path) {
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
            match parse_file(&content) {
                Ok(mut docs) => {
                    share_unchanged(&mut docs, &state.docs);
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
                        for kind in version.problems() {
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
        let mut claimed_node_ports: HashMap<(u16, Protocol), &ObjectRef> = HashMap::new();
        let name = |o: &ObjectRef| format!("{}/{}", o.namespace, o.name);
        let mut chosen: Vec<Candidate<'_>> = Vec::with_capacity(ranked.len());
        'candidates: for (_, mut c) in ranked {
            if c.key.kind == ObjectKind::Service {
                loop {
                    let conflicts: Vec<ProblemKind> = match c.version.service_object() {
                        Some(svc) => model::claim_conflicts(
                            svc,
                            &[],
                            |np| claimed_node_ports.get(&np).map(|o| name(o)),
                            |_| None,
                        ),
                        None => Vec::new(),
                    }
                    .into_iter()
                    .chain(c.version.frontends().iter().filter_map(|fe| {
                        claimed.get(fe).map(|owner| ProblemKind::DuplicateFrontend {
                            frontend: *fe,
                            owner: name(owner),
                        })
                    }))
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
                for fe in c.version.frontends() {
                    claimed.insert(fe, c.key);
                }
                for (_, node_port, protocol) in c
                    .version
                    .service_object()
                    .into_iter()
                    .flat_map(|s| s.node_ports())
                {
                    claimed_node_ports.insert((node_port, protocol), c.key);
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
            for kind in c.version.problems() {
                log.problem(c.file, c.key, kind, "");
            }
            let namespace = c.key.namespace.as_str();
            if let Some(name) = c.version.service()
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

/// The files PATH designates, in order: PATH itself, or the manifest files of the directory
/// it names; Err when it cannot be read or listed.
fn list_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    match fs::metadata(path) {
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(meta) if meta.is_dir() => match fs::read_dir(path) {
            Err(e) => Err(format!("cannot list {}: {e}", path.display())),
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
        Ok(_) => Ok(vec![path.to_path_buf()]),
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

/// Parses a whole file; Err (with the line) on a YAML syntax error anywhere in it.
///
/// The documents are turned into [`Doc`]s one at a time, as the parser finishes each
/// ([`FileDocs`]): only one document is ever held as a tree, however large the file.
fn parse_file<T: FromDocument>(content: &[u8]) -> Result<Vec<Doc<T>>, String> {
    let parsed: FileDocs<T> =
        serde_saphyr::from_bytes_multiple_with_options(content, yaml_options(content.len()))
            .map_err(|e| e.to_string())?;
    Ok(parsed.docs)
}

/// Replaces each version in `docs` that equals the one `old` (the file's previous documents)
/// has for the same key by that one: an unchanged object keeps its allocation, which the good
/// set and the store may share.
fn share_unchanged(docs: &mut [Doc<Version>], old: &[Doc<Version>]) {
    let old: HashMap<&ObjectRef, &Version> = old
        .iter()
        .filter_map(|d| d.parsed.as_ref().ok())
        .map(|v| (&v.key, v))
        .collect();
    for doc in docs {
        if let Ok(version) = &mut doc.parsed
            && let Some(previous) = old.get(&version.key)
            && same(previous, version)
        {
            *version = Arc::clone(previous);
        }
    }
}

/// How manifest files are parsed. serde-saphyr's default budget is meant for one
/// configuration file (1,024 documents, 250,000 nodes in all); a manifest of 10,000
/// Services with their EndpointSlices has 20,000 documents and millions of nodes. The limits
/// on the whole input therefore grow with its size (no YAML node is shorter than a byte, no
/// document shorter than `---`), while the limits that guard against hostile structure (depth,
/// aliases and anchors) keep their defaults.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let budget = serde_saphyr::budget! {
        max_documents: len / 3 + 1_024,
        max_nodes: len + 250_000,
        max_events: 2 * len + 1_000_000,
    };
    serde_saphyr::options! {
        budget: budget,
        // Comments are never read; not collecting them saves their copies.
        emit_comments: false,
        // Errors name the file and line in one log line, without a source excerpt.
        with_snippet: false,
        // YAML 1.2 scalars, as serde_yaml read them before: `y`, `no`, `on` are strings
        // (a Service may well be called `y`), and so are `0755` and `1_000`.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    }
}

/// The documents of one file, each turned into [`Doc`]s as soon as it is parsed (serde-saphyr
/// collects a stream into any `Default + Extend`). serde-saphyr extends the collection once
/// per document, with `None` for an empty one, so `documents` counts empty documents too and
/// a location is the document's position in the file, as an editor shows it.
struct FileDocs<T> {
    documents: u32,
    docs: Vec<Doc<T>>,
}

impl<T> Default for FileDocs<T> {
    fn default() -> Self {
        FileDocs {
            documents: 0,
            docs: Vec::new(),
        }
    }
}

impl<T: FromDocument> Extend<serde_json::Value> for FileDocs<T> {
    fn extend<I: IntoIterator<Item = serde_json::Value>>(&mut self, values: I) {
        self.documents = self.documents.saturating_add(1);
        for value in values {
            let location = Location {
                document: self.documents,
                items: Vec::new(),
            };
            collect(value, location, &mut self.docs);
        }
    }
}

fn str_field<'a>(value: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(|v| v.as_str())
}

/// Turns one document (or List item) into Docs.
fn collect<T: FromDocument>(value: serde_json::Value, location: Location, docs: &mut Vec<Doc<T>>) {
    let unusable = |location: Location, error: String| Doc {
        location,
        parsed: Err(Box::new(BadDoc { key: None, error })),
    };
    let mut value = match value {
        serde_json::Value::Null => return,
        serde_json::Value::Object(m) => m,
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
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Array(items)) => {
                    drop(value);
                    for (i, item) in items.into_iter().enumerate() {
                        let mut at = location.clone();
                        at.items.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
                        collect(item, at, docs);
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
    let value = serde_json::Value::Object(value);
    let parsed = T::from_document(&key, value).map_err(|error| {
        Box::new(BadDoc {
            key: Some(key),
            error,
        })
    });
    docs.push(Doc { location, parsed });
}

/// What one object document becomes.
trait FromDocument: Sized {
    /// Deserializes the object `key` names; Err when it does not deserialize.
    fn from_document(key: &ObjectRef, value: serde_json::Value) -> Result<Self, String>;
}

/// The source keeps each object checked and compact.
impl FromDocument for Version {
    fn from_document(key: &ObjectRef, value: serde_json::Value) -> Result<Self, String> {
        let object = match key.kind {
            ObjectKind::Service => {
                let svc: Service = serde_json::from_value(value).map_err(|e| e.to_string())?;
                Object::Service(Arc::new(ServiceObject::new(&svc)))
            }
            ObjectKind::EndpointSlice => {
                let slice: EndpointSlice =
                    serde_json::from_value(value).map_err(|e| e.to_string())?;
                Object::Slice(Arc::new(SliceObject::new(&slice)))
            }
            ObjectKind::Node => {
                let node: Node = serde_json::from_value(value).map_err(|e| e.to_string())?;
                Object::Node {
                    zone: node_zone(&node).map(Into::into),
                    addresses: NodeAddresses::of(&node),
                }
            }
        };
        Ok(Arc::new(Parsed {
            key: key.clone(),
            object,
        }))
    }
}

/// An object as written, for [`read_objects`].
#[derive(Debug)]
struct TypedDoc {
    key: ObjectRef,
    object: Typed,
}

#[derive(Debug)]
enum Typed {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    /// Its zone label and addresses.
    Node(Option<String>, NodeAddresses),
}

impl FromDocument for TypedDoc {
    fn from_document(key: &ObjectRef, value: serde_json::Value) -> Result<Self, String> {
        let object = match key.kind {
            ObjectKind::Service => {
                let mut svc: Service = serde_json::from_value(value).map_err(|e| e.to_string())?;
                svc.metadata.namespace = Some(key.namespace.clone());
                Typed::Service(Box::new(svc))
            }
            ObjectKind::EndpointSlice => {
                let mut slice: EndpointSlice =
                    serde_json::from_value(value).map_err(|e| e.to_string())?;
                slice.metadata.namespace = Some(key.namespace.clone());
                Typed::Slice(Box::new(slice))
            }
            ObjectKind::Node => {
                let node: Node = serde_json::from_value(value).map_err(|e| e.to_string())?;
                Typed::Node(
                    node_zone(&node).map(str::to_owned),
                    NodeAddresses::of(&node),
                )
            }
        };
        Ok(TypedDoc {
            key: key.clone(),
            object,
        })
    }
}

/// A Node's zone label, when set and not empty.
fn node_zone(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .map(String::as_str)
        .filter(|z| !z.is_empty())
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
