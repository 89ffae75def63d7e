//! The standalone source of Services and EndpointSlices: YAML manifests on disk.
//!
//! [`ManifestSource`] watches PATH, a YAML file or a directory (every `*.yaml`, `*.yml` and
//! `*.json` file in it, sorted by name, not recursive, dotfiles skipped), by polling: the agent
//! calls [`ManifestSource::poll`] every 200 ms. Polling stats the files and only re-reads a
//! file whose metadata changed (or whose mtime is so recent that a same-size rewrite within
//! the timestamp granularity could hide); it re-parses and rebuilds the table only when some
//! file's content actually changed.
//!
//! Each file holds YAML documents (`---` separated; JSON is YAML too). A document is a `v1`
//! `Service`, a `discovery.k8s.io/v1` `EndpointSlice`, a `v1` `Node`, or a `List` whose
//! `items` are such objects (what `kubectl get svc,endpointslices -A -o yaml` prints). Other
//! kinds are skipped (debug log), empty documents too. A missing namespace is "default" (Nodes
//! are cluster-scoped). Nodes only matter for this node's zone: the
//! `topology.kubernetes.io/zone` label of the Node named like the agent's node (topology
//! hints, see [`crate::model`]).
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
//! "Last good version" is the version of each object used by the last table built. On a
//! change, the candidate objects are fed to the model; each object with an error is replaced
//! by its last good version (or dropped) and the model runs again, until no object has an
//! error. Services are ordered unchanged-and-accepted first, then changed-but-previously-
//! accepted, then new, so an established owner of a VIP wins a duplicate frontend.
//!
//! Problems are logged once per change of the manifests (never on idle polls). Writers should
//! replace files atomically (write + rename): a half-written file that happens to be valid YAML
//! is taken as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use tracing::{debug, error, warn};

use crate::model::{
    self, DEFAULT_NAMESPACE, LABEL_TOPOLOGY_ZONE, NodeInfo, ObjectKind, ObjectRef, Severity,
};
use crate::table::DesiredTable;

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

/// Objects read from the manifests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// The `topology.kubernetes.io/zone` label of the Node named like this node, if any.
    pub node_zone: Option<String>,
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
    let mut objects: Vec<&Object> = Vec::new();
    for (path, state) in &src.files {
        for doc in &state.docs {
            match (&doc.key, &doc.parsed) {
                (Some(key), Ok(object)) => {
                    if seen.insert(key) {
                        objects.push(object);
                    } else {
                        warn!(
                            "{} ({}): {key} is defined twice; ignored",
                            path.display(),
                            doc.location
                        );
                    }
                }
                (_, Err(e)) => warn!("{} ({}): {e}; ignored", path.display(), doc.location),
                (None, Ok(_)) => {}
            }
        }
    }
    Ok(objects_of(objects, node_name))
}

/// Splits objects by kind; the zone is the one of the Node called `node_name`.
fn objects_of<'a>(objects: impl IntoIterator<Item = &'a Object>, node_name: &str) -> Objects {
    let mut out = Objects::default();
    for object in objects {
        match object {
            Object::Service(s) => out.services.push((**s).clone()),
            Object::EndpointSlice(s) => out.slices.push((**s).clone()),
            Object::Node(n) => {
                if !node_name.is_empty() && n.metadata.name.as_deref() == Some(node_name) {
                    out.node_zone = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
                        .filter(|z| !z.is_empty())
                        .cloned();
                }
            }
        }
    }
    out
}

/// Polls a manifest file or directory and turns it into a [`DesiredTable`] (or hands out the
/// objects).
#[derive(Debug)]
pub struct ManifestSource {
    path: PathBuf,
    node_name: String,
    /// Per file, in file order.
    files: BTreeMap<PathBuf, FileState>,
    /// Why PATH could not be listed, if it could not (logged on change).
    path_error: Option<String>,
    /// The version of each object used by the last table built ("last good").
    accepted: HashMap<ObjectRef, Object>,
    /// The problems of the last build.
    problems: Vec<ManifestProblem>,
    /// The result of the last build: table and the objects it was built from.
    built: Option<(DesiredTable, Objects)>,
    /// What [`Self::poll`] returned last.
    last_table: Option<DesiredTable>,
    /// What [`Self::poll_objects`] returned last.
    last_objects: Option<Objects>,
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

#[derive(Debug)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    content: Option<Vec<u8>>,
    /// The documents of the last successful parse.
    docs: Vec<Doc>,
    /// Current read or syntax error; `docs` are then the last good ones.
    error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

/// One object (or an unusable document) in a file.
#[derive(Clone, Debug)]
struct Doc {
    /// "document 2" or "document 1, item 3".
    location: String,
    /// None when the document does not even name an object.
    key: Option<ObjectRef>,
    parsed: Result<Object, String>,
}

impl ManifestSource {
    pub fn new(path: PathBuf, node_name: String) -> Self {
        ManifestSource {
            path,
            node_name,
            files: BTreeMap::new(),
            path_error: None,
            accepted: HashMap::new(),
            problems: Vec::new(),
            built: None,
            last_table: None,
            last_objects: None,
        }
    }

    /// Problems found by the last rebuild (they were logged when found).
    pub fn problems(&self) -> &[ManifestProblem] {
        &self.problems
    }

    /// Re-reads PATH. Returns the table if it differs from the last one returned (the first
    /// call always returns one, possibly empty); None when nothing changed.
    pub fn poll(&mut self) -> Option<DesiredTable> {
        self.refresh();
        let (table, _) = self.built.as_ref()?;
        if self.last_table.as_ref() == Some(table) {
            return None;
        }
        let table = table.clone();
        self.last_table = Some(table.clone());
        Some(table)
    }

    /// Re-reads PATH. Returns the objects the last good table is built from (see the module
    /// doc: each bad object replaced by its last good version, or absent) if they differ from
    /// the last ones returned (the first call always returns them); None when nothing changed.
    /// Services come established ones first (they win duplicate frontends).
    pub fn poll_objects(&mut self) -> Option<Objects> {
        self.refresh();
        let (_, objects) = self.built.as_ref()?;
        if self.last_objects.as_ref() == Some(objects) {
            return None;
        }
        let objects = objects.clone();
        self.last_objects = Some(objects.clone());
        Some(objects)
    }

    /// Rescans, rebuilding if anything changed (or nothing was built yet).
    fn refresh(&mut self) {
        let changed = self.scan();
        if changed || self.built.is_none() {
            let built = self.rebuild();
            self.built = Some(built);
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
        // A new or cleared PATH error is a change (logged by the rebuild).
        let mut changed = self.path_error != path_error;

        let before = self.files.len();
        self.files.retain(|path, _| listed.contains(path));
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
            if state.content.as_ref() == Some(&content) {
                continue;
            }
            changed = true;
            match parse_file(&content) {
                Ok(docs) => {
                    state.docs = docs;
                    state.error = None;
                }
                Err(e) => state.error = Some(e),
            }
            state.content = Some(content);
        }
        changed
    }

    /// Builds the table from the current files, logging the problems.
    fn rebuild(&mut self) -> (DesiredTable, Objects) {
        let mut log = ProblemLog::default();
        if let Some(e) = &self.path_error {
            log.push(
                Severity::Warning,
                format!("manifests: {e}; no objects from it"),
            );
        }

        // Candidates, first occurrence of each key wins.
        struct Candidate {
            key: ObjectRef,
            file: PathBuf,
            object: Object,
            /// This is the last good version standing in for a bad new one.
            is_last_good: bool,
        }
        let mut first_seen: HashMap<ObjectRef, PathBuf> = HashMap::new();
        let mut candidates: Vec<Candidate> = Vec::new();
        for (path, state) in &self.files {
            let file = path.display();
            if let Some(e) = &state.error {
                log.push(
                    Severity::Error,
                    format!("{file}: {e}; its objects keep their last good state"),
                );
            }
            for doc in &state.docs {
                let Some(key) = &doc.key else {
                    if let Err(e) = &doc.parsed {
                        log.push(Severity::Error, format!("{file} ({}): {e}", doc.location));
                    }
                    continue;
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
                first_seen.insert(key.clone(), path.clone());
                let (object, is_last_good) = match &doc.parsed {
                    Ok(object) => (object.clone(), false),
                    Err(e) => match self.accepted.get(key) {
                        Some(good) => {
                            log.push(
                                Severity::Error,
                                format!(
                                    "{file} ({}): {key}: {e}; keeping its last good version",
                                    doc.location
                                ),
                            );
                            (good.clone(), true)
                        }
                        None => {
                            log.push(
                                Severity::Error,
                                format!("{file} ({}): {key}: {e}; ignored", doc.location),
                            );
                            continue;
                        }
                    },
                };
                candidates.push(Candidate {
                    key: key.clone(),
                    file: path.clone(),
                    object,
                    is_last_good,
                });
            }
        }

        // Established services first (stable: file order within each rank).
        let rank = |c: &Candidate| match self.accepted.get(&c.key) {
            Some(good) if *good == c.object => 0,
            Some(_) => 1,
            None => 2,
        };
        candidates.sort_by_key(|c| rank(c));

        let (table, objects) = loop {
            let objects = objects_of(candidates.iter().map(|c| &c.object), &self.node_name);
            let node = NodeInfo::new(self.node_name.clone(), objects.node_zone.clone());
            let out = model::build_table(&objects.services, &objects.slices, &node);
            let file_of = |key: &ObjectRef| {
                candidates
                    .iter()
                    .find(|c| &c.key == key)
                    .map(|c| c.file.display().to_string())
                    .unwrap_or_else(|| self.path.display().to_string())
            };
            let mut bad: HashSet<ObjectRef> = HashSet::new();
            for p in &out.problems {
                let file = file_of(&p.object);
                match p.severity() {
                    Severity::Warning => log.push(Severity::Warning, format!("{file}: {p}")),
                    Severity::Error => {
                        bad.insert(p.object.clone());
                        let what_now = match candidates.iter().find(|c| c.key == p.object) {
                            Some(c) if !c.is_last_good && self.accepted.contains_key(&c.key) => {
                                "keeping its last good version"
                            }
                            _ => "ignored",
                        };
                        log.push(Severity::Error, format!("{file}: {p}; {what_now}"));
                    }
                }
            }
            if bad.is_empty() {
                break (out.table, objects);
            }
            let before = candidates.len();
            let mut substituted = false;
            candidates.retain_mut(|c| {
                if !bad.contains(&c.key) {
                    return true;
                }
                match self.accepted.get(&c.key) {
                    Some(good) if !c.is_last_good && *good != c.object => {
                        c.object = good.clone();
                        c.is_last_good = true;
                        substituted = true;
                        true
                    }
                    _ => false,
                }
            });
            if !substituted && candidates.len() == before {
                // Cannot happen (every problem names a candidate); never loop forever.
                break (out.table, objects);
            }
        };

        self.accepted = candidates.into_iter().map(|c| (c.key, c.object)).collect();
        self.problems = log.problems;
        debug!(
            "manifests: {} objects, {} frontends",
            self.accepted.len(),
            table.services.len()
        );
        (table, objects)
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

/// Logs each distinct problem once.
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
        match severity {
            Severity::Warning => warn!("{message}"),
            Severity::Error => error!("{message}"),
        }
        self.problems.push(ManifestProblem { severity, message });
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
fn parse_file(content: &[u8]) -> Result<Vec<Doc>, String> {
    let mut docs = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_slice(content).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        collect(value, &format!("document {}", i + 1), &mut docs);
    }
    Ok(docs)
}

fn str_field<'a>(value: &'a serde_yaml::Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(|v| v.as_str())
}

/// Turns one document (or List item) into Docs.
fn collect(value: serde_yaml::Value, location: &str, docs: &mut Vec<Doc>) {
    if value.is_null() {
        return;
    }
    if !value.is_mapping() {
        docs.push(Doc {
            location: location.to_owned(),
            key: None,
            parsed: Err("not a Kubernetes object (expected a mapping)".to_owned()),
        });
        return;
    }
    let api_version = str_field(&value, "apiVersion").unwrap_or("");
    let kind = str_field(&value, "kind").unwrap_or("");
    let object_kind = match (api_version, kind) {
        (_, "List") => {
            let items = match value.get("items") {
                None => return,
                Some(v) if v.is_null() => return,
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(_) => {
                    docs.push(Doc {
                        location: location.to_owned(),
                        key: None,
                        parsed: Err("List items is not a sequence".to_owned()),
                    });
                    return;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                collect(item, &format!("{location}, item {}", i + 1), docs);
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
        docs.push(Doc {
            location: location.to_owned(),
            key: None,
            parsed: Err(format!("{kind} without metadata.name")),
        });
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
    let parsed = match object_kind {
        ObjectKind::Service => serde_yaml::from_value::<Service>(value).map(|mut s| {
            s.metadata.namespace = Some(key.namespace.clone());
            Object::Service(Box::new(s))
        }),
        ObjectKind::EndpointSlice => serde_yaml::from_value::<EndpointSlice>(value).map(|mut s| {
            s.metadata.namespace = Some(key.namespace.clone());
            Object::EndpointSlice(Box::new(s))
        }),
        ObjectKind::Node => {
            serde_yaml::from_value::<Node>(value).map(|n| Object::Node(Box::new(n)))
        }
    }
    .map_err(|e| e.to_string());
    docs.push(Doc {
        location: location.to_owned(),
        key: Some(key),
        parsed,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Protocol;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "clusterip-manifests-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, content).unwrap();
            path
        }

        fn remove(&self, name: &str) {
            fs::remove_file(self.0.join(name)).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    use crate::table::test_support::{entry, fe, table};

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, namespace: t, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
            ips.iter()
                .map(|ip| format!("{{addresses: [{ip}]}}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn source(path: &Path) -> ManifestSource {
        ManifestSource::new(path.to_owned(), "node-a".into())
    }

    fn has_problem(src: &ManifestSource, severity: Severity, parts: &[&str]) -> bool {
        src.problems()
            .iter()
            .any(|p| p.severity == severity && parts.iter().all(|s| p.message.contains(s)))
    }

    #[test]
    fn first_poll_returns_empty_table_then_none() {
        let dir = TempDir::new();
        let mut src = source(&dir.0);
        assert_eq!(src.poll(), Some(DesiredTable::default()));
        assert_eq!(src.poll(), None);
        // A missing path is an empty table too.
        let mut missing = source(&dir.0.join("nope"));
        assert_eq!(missing.poll(), Some(DesiredTable::default()));
        assert!(has_problem(&missing, Severity::Warning, &["nope"]));
    }

    #[test]
    fn multi_document_file_with_default_namespace() {
        let dir = TempDir::new();
        let file = dir.write(
            "all.yaml",
            r#"
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.5.1, ports: [{name: http, port: 80}]}
---
# an empty document
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
data: {a: b}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
"#,
        );
        let mut src = source(&file);
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.5.1", 80, Protocol::Tcp),
                entry("default", "web", "http", &["10.0.0.1:8080"])
            )]))
        );
        assert_eq!(src.problems(), &[]);
    }

    #[test]
    fn kubectl_list_output() {
        let dir = TempDir::new();
        dir.write(
            "list.yaml",
            r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    resourceVersion: "123"
    uid: 5b1f7c1e-0000-4000-8000-000000000001
  spec:
    clusterIP: 10.96.5.2
    clusterIPs: [10.96.5.2]
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: http}
    selector: {app: web}
    sessionAffinity: None
    type: ClusterIP
  status: {loadBalancer: {}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  endpoints:
  - addresses: [10.0.0.7]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-a
    targetRef: {kind: Pod, name: web-0, namespace: shop}
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: shop
  ports:
  - {name: http, port: 8080, protocol: TCP}
- apiVersion: v1
  kind: Endpoints
  metadata: {name: web, namespace: shop}
kind: List
metadata: {resourceVersion: ""}
"#,
        );
        let mut src = source(&dir.0);
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.5.2", 80, Protocol::Tcp),
                entry("shop", "web", "http", &["10.0.0.7:8080"])
            )]))
        );
        assert_eq!(src.problems(), &[]);
    }

    #[test]
    fn directory_reads_manifest_files_only() {
        let dir = TempDir::new();
        dir.write("a.yaml", &svc("a", "10.96.6.1"));
        dir.write("b.yml", &slice("a-1", "a", &["10.0.0.1"]));
        dir.write(
            "c.json",
            r#"{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "c", "namespace": "t"},
                "spec": {"clusterIP": "10.96.6.3", "ports": [{"port": 80}]}}"#,
        );
        dir.write("d.txt", &svc("d", "10.96.6.4"));
        dir.write(".e.yaml", &svc("e", "10.96.6.5"));
        fs::create_dir(dir.0.join("sub.yaml")).unwrap();
        fs::write(dir.0.join("sub.yaml/f.yaml"), svc("f", "10.96.6.6")).unwrap();
        let mut src = source(&dir.0);
        assert_eq!(
            src.poll(),
            Some(table(vec![
                (
                    fe("10.96.6.1", 80, Protocol::Tcp),
                    entry("t", "a", "", &["10.0.0.1:8080"])
                ),
                (fe("10.96.6.3", 80, Protocol::Tcp), entry("t", "c", "", &[])),
            ]))
        );
    }

    #[test]
    fn change_detection() {
        let dir = TempDir::new();
        dir.write("a.yaml", &svc("a", "10.96.7.1"));
        let mut src = source(&dir.0);
        assert!(src.poll().is_some());
        assert_eq!(src.poll(), None);
        assert_eq!(src.poll(), None);
        // Same size, different content, immediately: detected.
        dir.write("a.yaml", &svc("a", "10.96.7.2"));
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.7.2", 80, Protocol::Tcp),
                entry("t", "a", "", &[])
            )]))
        );
        assert_eq!(src.poll(), None);
        // A change that does not change the table: None.
        dir.write("a.yaml", &format!("# comment\n{}", svc("a", "10.96.7.2")));
        assert_eq!(src.poll(), None);
        // A new file.
        dir.write("b.yaml", &slice("a-1", "a", &["10.0.0.1"]));
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.7.2", 80, Protocol::Tcp),
                entry("t", "a", "", &["10.0.0.1:8080"])
            )]))
        );
    }

    #[test]
    fn syntax_error_keeps_last_good() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}",
                svc("a", "10.96.8.1"),
                slice("a-1", "a", &["10.0.0.1"])
            ),
        );
        dir.write("b.yaml", &svc("b", "10.96.8.2"));
        let mut src = source(&dir.0);
        let good = src.poll().unwrap();
        assert_eq!(good.services.len(), 2);

        // a.yaml broken (and its slice changed); b.yaml changed: b's change applies, a's
        // objects keep their last good state.
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}\nspec: [unclosed\n",
                svc("a", "10.96.8.1"),
                slice("a-1", "a", &["10.0.0.9"])
            ),
        );
        dir.write("b.yaml", &svc("b", "10.96.8.3"));
        assert_eq!(
            src.poll(),
            Some(table(vec![
                (
                    fe("10.96.8.1", 80, Protocol::Tcp),
                    entry("t", "a", "", &["10.0.0.1:8080"])
                ),
                (fe("10.96.8.3", 80, Protocol::Tcp), entry("t", "b", "", &[])),
            ]))
        );
        assert!(has_problem(&src, Severity::Error, &["a.yaml", "line"]));
        assert_eq!(src.poll(), None);

        // Fixed: applied.
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}",
                svc("a", "10.96.8.1"),
                slice("a-1", "a", &["10.0.0.9"])
            ),
        );
        assert_eq!(
            src.poll().unwrap().services[&fe("10.96.8.1", 80, Protocol::Tcp)],
            entry("t", "a", "", &["10.0.0.9:8080"])
        );
        assert_eq!(src.problems(), &[]);
    }

    #[test]
    fn new_file_with_syntax_error_contributes_nothing() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a\n",
        );
        dir.write("b.yaml", &svc("b", "10.96.8.5"));
        let mut src = source(&dir.0);
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.8.5", 80, Protocol::Tcp),
                entry("t", "b", "", &[])
            )]))
        );
        assert!(has_problem(&src, Severity::Error, &["a.yaml", "line 3"]));
    }

    #[test]
    fn object_that_does_not_deserialize_keeps_last_good() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("a", "10.96.9.1"), svc("b", "10.96.9.2")),
        );
        let mut src = source(&dir.0);
        assert_eq!(src.poll().unwrap().services.len(), 2);
        // a: port is not a number (deserialization fails); b changed legitimately.
        dir.write(
            "a.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: t}}\n\
                 spec: {{clusterIP: 10.96.9.7, ports: [{{port: eighty}}]}}\n---\n{}",
                svc("b", "10.96.9.3")
            ),
        );
        assert_eq!(
            src.poll(),
            Some(table(vec![
                (fe("10.96.9.1", 80, Protocol::Tcp), entry("t", "a", "", &[])),
                (fe("10.96.9.3", 80, Protocol::Tcp), entry("t", "b", "", &[])),
            ]))
        );
        assert!(has_problem(
            &src,
            Severity::Error,
            &["a.yaml", "Service t/a", "last good"]
        ));
    }

    #[test]
    fn object_the_model_rejects_keeps_last_good_or_is_absent() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}",
                svc("a", "10.96.10.1"),
                slice("a-1", "a", &["10.0.0.1"])
            ),
        );
        let mut src = source(&dir.0);
        assert!(src.poll().is_some());
        // Invalid cluster IP for a, an IPv6 address in an IPv4 slice, and a new invalid service.
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}---\n{}",
                svc("a", "10.96.10.999"),
                slice("a-1", "a", &["\"fd00::1\""]),
                svc("new", "not-an-ip")
            ),
        );
        assert_eq!(
            src.poll(),
            None,
            "everything bad: the table stays as it was"
        );
        assert!(has_problem(
            &src,
            Severity::Error,
            &["a.yaml", "Service t/a", "10.96.10.999", "last good"]
        ));
        assert!(has_problem(
            &src,
            Severity::Error,
            &["a.yaml", "EndpointSlice t/a-1", "fd00::1", "last good"]
        ));
        assert!(has_problem(
            &src,
            Severity::Error,
            &["a.yaml", "Service t/new", "not-an-ip", "ignored"]
        ));
        // The problems are logged per change, not per poll: an idle poll keeps them listed
        // but does not rebuild.
        assert_eq!(src.poll(), None);
        assert_eq!(src.problems().len(), 3);
    }

    #[test]
    fn removing_a_file_or_an_object_removes_its_objects() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!("{}---\n{}", svc("a", "10.96.11.1"), svc("b", "10.96.11.2")),
        );
        dir.write("c.yaml", &svc("c", "10.96.11.3"));
        let mut src = source(&dir.0);
        assert_eq!(src.poll().unwrap().services.len(), 3);
        dir.write("a.yaml", &svc("a", "10.96.11.1"));
        assert_eq!(
            src.poll(),
            Some(table(vec![
                (
                    fe("10.96.11.1", 80, Protocol::Tcp),
                    entry("t", "a", "", &[])
                ),
                (
                    fe("10.96.11.3", 80, Protocol::Tcp),
                    entry("t", "c", "", &[])
                ),
            ]))
        );
        dir.remove("c.yaml");
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.11.1", 80, Protocol::Tcp),
                entry("t", "a", "", &[])
            )]))
        );
        assert_eq!(src.problems(), &[]);
        // A removed object has no last good version any more.
        dir.write("a.yaml", &svc("a", "bad-ip"));
        assert_eq!(src.poll(), None);
        dir.write("a.yaml", "");
        assert_eq!(src.poll(), Some(DesiredTable::default()));
        dir.write("a.yaml", &svc("a", "bad-ip"));
        assert_eq!(src.poll(), None);
        assert!(has_problem(
            &src,
            Severity::Error,
            &["Service t/a", "ignored"]
        ));
    }

    #[test]
    fn same_object_in_two_files_first_wins() {
        let dir = TempDir::new();
        dir.write("1.yaml", &svc("a", "10.96.12.1"));
        dir.write("2.yaml", &svc("a", "10.96.12.2"));
        let mut src = source(&dir.0);
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.12.1", 80, Protocol::Tcp),
                entry("t", "a", "", &[])
            )]))
        );
        assert!(has_problem(
            &src,
            Severity::Error,
            &["2.yaml", "Service t/a", "1.yaml"]
        ));
    }

    #[test]
    fn established_vip_owner_wins_duplicate() {
        let dir = TempDir::new();
        // b.yaml comes after a.yaml, but once b owns 10.96.13.2, a cannot take it.
        dir.write("a.yaml", &svc("a", "10.96.13.1"));
        dir.write("b.yaml", &svc("b", "10.96.13.2"));
        let mut src = source(&dir.0);
        assert_eq!(src.poll().unwrap().services.len(), 2);
        dir.write("a.yaml", &svc("a", "10.96.13.2"));
        assert_eq!(src.poll(), None, "a keeps its last good version");
        assert!(has_problem(
            &src,
            Severity::Error,
            &["a.yaml", "Service t/a", "owned by Service t/b", "last good"]
        ));
        // A new service claiming the VIP is ignored.
        dir.write("0.yaml", &svc("z", "10.96.13.2"));
        assert_eq!(src.poll(), None);
        assert!(has_problem(
            &src,
            Severity::Error,
            &["0.yaml", "Service t/z", "ignored"]
        ));
        // b gives the VIP up: a's pending version now applies (z is new and comes later).
        dir.write("b.yaml", &svc("b", "10.96.13.3"));
        let t = src.poll().unwrap();
        assert_eq!(
            t.services
                .values()
                .map(|e| e.service.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(
            t.services[&fe("10.96.13.2", 80, Protocol::Tcp)]
                .service
                .name,
            "a"
        );
    }

    #[test]
    fn slice_warning_is_not_an_error() {
        let dir = TempDir::new();
        dir.write("a.yaml", &slice("orphan-1", "orphan", &["10.0.0.1"]));
        let mut src = source(&dir.0);
        assert_eq!(src.poll(), Some(DesiredTable::default()));
        assert!(has_problem(
            &src,
            Severity::Warning,
            &["a.yaml", "orphan-1"]
        ));
        // Its service appears: the slice is used.
        dir.write("b.yaml", &svc("orphan", "10.96.14.1"));
        assert_eq!(
            src.poll(),
            Some(table(vec![(
                fe("10.96.14.1", 80, Protocol::Tcp),
                entry("t", "orphan", "", &["10.0.0.1:8080"])
            )]))
        );
    }

    #[test]
    fn example_manifests() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
        let mut src = source(&path);
        let web = entry(
            "demo",
            "web",
            "http",
            &["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"],
        );
        assert_eq!(
            src.poll(),
            Some(table(vec![
                (fe("10.96.100.10", 80, Protocol::Tcp), web),
                (
                    fe("10.96.100.53", 53, Protocol::Udp),
                    entry(
                        "demo",
                        "dns-like",
                        "dns",
                        &["10.200.0.11:5353", "10.200.0.12:5353"]
                    )
                ),
            ]))
        );
        assert_eq!(src.problems(), &[]);
    }

    fn node(name: &str, zone: Option<&str>) -> String {
        let labels = match zone {
            Some(z) => format!(", labels: {{topology.kubernetes.io/zone: {z}}}"),
            None => String::new(),
        };
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}{labels}}}\n")
    }

    /// Service t/h with two endpoints hinted for zones a and b.
    fn hinted() -> String {
        format!(
            "{}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: h-1, namespace: t, labels: {{kubernetes.io/service-name: h}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n\
             - {{addresses: [10.0.0.1], hints: {{forZones: [{{name: a}}]}}}}\n\
             - {{addresses: [10.0.0.2], hints: {{forZones: [{{name: b}}]}}}}\n",
            svc("h", "10.96.30.1")
        )
    }

    fn backends(table: &DesiredTable) -> Vec<String> {
        table.services[&fe("10.96.30.1", 80, Protocol::Tcp)]
            .backends
            .iter()
            .map(|b| b.to_string())
            .collect()
    }

    #[test]
    fn node_objects_give_this_nodes_zone() {
        let dir = TempDir::new();
        dir.write("svc.yaml", &hinted());
        dir.write(
            "nodes.yaml",
            &format!(
                "{}---\n{}",
                node("node-a", Some("b")),
                node("node-x", Some("a"))
            ),
        );
        let mut src = source(&dir.0);
        let table = src.poll().unwrap();
        assert_eq!(src.problems(), &[]);
        assert_eq!(backends(&table), vec!["10.0.0.2:8080"]);
        let objects = src.poll_objects().unwrap();
        assert_eq!(objects.node_zone.as_deref(), Some("b"));
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.slices.len(), 1);
        assert_eq!(src.poll_objects(), None);

        // The node moves to zone a.
        dir.write(
            "nodes.yaml",
            &format!(
                "{}---\n{}",
                node("node-a", Some("a")),
                node("node-x", Some("a"))
            ),
        );
        assert_eq!(backends(&src.poll().unwrap()), vec!["10.0.0.1:8080"]);
        assert_eq!(src.poll_objects().unwrap().node_zone.as_deref(), Some("a"));
        // This node's Node object gone: zone unknown, hints unused.
        dir.remove("nodes.yaml");
        assert_eq!(
            backends(&src.poll().unwrap()),
            vec!["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert_eq!(src.poll_objects().unwrap().node_zone, None);
        assert_eq!(src.poll(), None);
        assert_eq!(src.poll_objects(), None);
    }

    #[test]
    fn poll_objects_keeps_last_good_objects() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}",
                svc("a", "10.96.31.1"),
                slice("a-1", "a", &["10.0.0.1"])
            ),
        );
        let mut src = source(&dir.0);
        let first = src.poll_objects().unwrap();
        assert_eq!(first.services.len(), 1);
        assert_eq!(first.slices.len(), 1);
        // A syntax error: the file keeps its last good objects.
        dir.write("a.yaml", "kind: [unclosed\n");
        assert_eq!(src.poll_objects(), None);
        // A service the model rejects keeps its last good version; a new valid one is added.
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}---\n{}",
                svc("a", "10.96.31.999"),
                slice("a-1", "a", &["10.0.0.1"]),
                svc("b", "10.96.31.2")
            ),
        );
        let objects = src.poll_objects().unwrap();
        let ips: Vec<Option<String>> = objects
            .services
            .iter()
            .map(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.clone()))
            .collect();
        assert_eq!(
            ips,
            vec![Some("10.96.31.1".to_owned()), Some("10.96.31.2".to_owned())]
        );
        // poll() still works alongside, on the same state.
        assert_eq!(src.poll().unwrap().services.len(), 2);
    }

    #[test]
    fn read_objects_once() {
        let dir = TempDir::new();
        dir.write(
            "a.yaml",
            &format!(
                "{}---\n{}---\n{}---\n{}",
                svc("a", "10.96.32.999"),
                slice("a-1", "a", &["10.0.0.1"]),
                node("node-a", Some("z1")),
                node("node-b", Some("z2"))
            ),
        );
        dir.write("b.yaml", &svc("a", "10.96.32.2"));
        // As written, rejected service included (explain tells why); first definition wins.
        let objects = read_objects(&dir.0, "node-b").unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(
            objects.services[0]
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref()),
            Some("10.96.32.999")
        );
        assert_eq!(objects.slices.len(), 1);
        assert_eq!(objects.node_zone.as_deref(), Some("z2"));
        assert_eq!(read_objects(&dir.0, "node-c").unwrap().node_zone, None);

        dir.write("c.yaml", "kind: [unclosed\n");
        let err = read_objects(&dir.0, "node-a").unwrap_err().to_string();
        assert!(err.contains("c.yaml"), "{err}");
        let err = read_objects(&dir.0.join("missing"), "node-a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
