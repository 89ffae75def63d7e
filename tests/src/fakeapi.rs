//! An in-process fake Kubernetes API server for Services, EndpointSlices and Nodes, speaking
//! the real protocol over plain HTTP/1.1 on `127.0.0.1:<ephemeral>` (see
//! `/work/shared/notes/kube-api.md` for what it has to do and why).
//!
//! It serves (bearer token required, else 401):
//! - `GET /api/v1/services`, `/api/v1/namespaces/NS/services[/NAME]`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`,
//!   `/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices[/NAME]`, `/api/v1/nodes[/NAME]`;
//! - lists: `labelSelector` (`key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`,
//!   `key notin (a,b)`, comma = AND), `fieldSelector` (`=`, `==`, `!=` on `metadata.name`,
//!   `metadata.namespace`, and `spec.clusterIP`/`spec.type` for Services, `addressType` for
//!   EndpointSlices, `spec.unschedulable` for Nodes; others are 400 like the real server),
//!   `limit` + `continue` paging (a continue token older than a [`FakeApi::compact`] is 410),
//!   list `resourceVersion` in `metadata`, items without `kind`/`apiVersion`;
//! - watches (`watch=true`): a chunked stream of JSON lines `{"type","object"}` — ADDED,
//!   MODIFIED, DELETED; an object that stops matching the selectors is DELETED (its previous
//!   content at the new resourceVersion), one that starts matching is ADDED; from
//!   `resourceVersion` unset or `0` it starts with ADDED for every current object; from an
//!   older resourceVersion it replays the retained history, or, when that is older than the
//!   last [`FakeApi::compact`], answers one `ERROR` event with a 410 `Expired` Status;
//!   BOOKMARKs every [`FakeApi::set_bookmark_interval`] only with `allowWatchBookmarks=true`;
//!   `sendInitialEvents=true` (needs `resourceVersionMatch=NotOlderThan` and bookmarks, else
//!   422) sends the current objects then a BOOKMARK annotated `k8s.io/initial-events-end`;
//!   `timeoutSeconds` ends the body cleanly and the connection stays alive for the next request.
//!
//! The control API is synchronous (the server runs on its own runtime thread), so it can be
//! used from sync and async tests alike. Dropping the [`FakeApi`] stops it and closes every
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_kind(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            _ => None,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Service | Kind::Node => "v1",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }
    fn namespaced(self) -> bool {
        self != Kind::Node
    }
    fn supports_field(self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || matches!(
                (self, field),
                (Kind::Service, "spec.clusterIP" | "spec.type")
                    | (Kind::EndpointSlice, "addressType")
                    | (Kind::Node, "spec.unschedulable")
            )
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Whether it carried the right bearer token.
    pub authorized: bool,
}

impl LoggedRequest {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        query_params(&self.uri).remove(name)
    }
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }
}

/// The fake API server. See the module documentation.
pub struct FakeApi {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    token: String,
    state: Arc<Mutex<State>>,
}

type Key = (Kind, String, String);

struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

struct Watcher {
    id: u64,
    kind: Kind,
    filter: Filter,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

enum WatchMsg {
    Line(Bytes),
    /// End the stream: `true` aborts the connection, `false` ends the body cleanly.
    End {
        abort: bool,
    },
}

struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches and continue tokens from before this resourceVersion get 410 Expired.
    compacted: u64,
    watchers: Vec<Watcher>,
    next_id: u64,
    log: Vec<LoggedRequest>,
    bookmark_interval: Duration,
    unavailable: bool,
}

impl State {
    fn record(&mut self, kind: Kind, old: Option<Value>, new: Option<Value>) {
        let change = Change {
            rv: self.rv,
            kind,
            old,
            new,
        };
        self.watchers.retain(|w| {
            if w.kind != kind {
                return true;
            }
            match event_for(&w.filter, &change) {
                Some(line) => w.tx.send(WatchMsg::Line(line)).is_ok(),
                None => !w.tx.is_closed(),
            }
        });
        self.history.push(change);
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl FakeApi {
    /// Starts a server on 127.0.0.1 (ephemeral port) on its own runtime thread.
    pub fn start() -> FakeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fakeapi")
            .enable_all()
            .build()
            .expect("fakeapi runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fakeapi bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let token = format!(
            "fake-token-{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let state = Arc::new(Mutex::new(State {
            rv: 1,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            watchers: Vec::new(),
            next_id: 0,
            log: Vec::new(),
            bookmark_interval: Duration::from_secs(1),
            unavailable: false,
        }));
        let server = Server {
            state: state.clone(),
            token: Arc::from(token.as_str()),
        };
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("fakeapi: listener: {e}");
                    return;
                }
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { server.handle(req) }
                    });
                    // Errors here are clients going away and aborted watches.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi {
            runtime: Some(runtime),
            addr,
            token,
            state,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token the server requires.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates or replaces a Service, EndpointSlice or Node (namespace `default` when unset
    /// for namespaced kinds). Assigns `resourceVersion`; `uid` and `creationTimestamp` when it
    /// is new (kept on updates). Returns the new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + Serialize>(&self, object: &K) -> String {
        let kind =
            Kind::from_kind(K::KIND).unwrap_or_else(|| panic!("fakeapi serves no {}", K::KIND));
        let mut value = serde_json::to_value(object).expect("serializable object");
        let name = value["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .expect("object has metadata.name")
            .to_string();
        let ns = if kind.namespaced() {
            let ns = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            value["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let key = (kind, ns, name);
        let old = st.objects.get(&key).cloned();
        value["apiVersion"] = json!(kind.api_version());
        value["kind"] = json!(kind.kind());
        let meta = &mut value["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        match &old {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            }
            None => {
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012x}"));
                meta["creationTimestamp"] = json!(now_rfc3339());
            }
        }
        st.objects.insert(key, value.clone());
        st.record(kind, old, Some(value));
        rv.to_string()
    }

    /// Deletes an object (`ns` is ignored for Nodes). Returns whether it existed.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> bool {
        let ns = if kind.namespaced() { ns } else { "" };
        let mut st = self.lock();
        let Some(old) = st.objects.remove(&(kind, ns.to_string(), name.to_string())) else {
            return false;
        };
        st.rv += 1;
        st.record(kind, Some(old), None);
        true
    }

    /// Forgets the history (like an etcd compaction followed by more writes): every watch or
    /// continue token from a resourceVersion before now gets 410 Expired. Open watches go on.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.rv += 1;
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Abruptly closes every open watch connection (no terminating chunk), like a server
    /// crash or a network failure.
    pub fn drop_watches(&self) {
        for w in self.lock().watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::End { abort: true });
        }
    }

    /// Ends every open watch cleanly, as a server does at `timeoutSeconds`.
    pub fn end_watches(&self) {
        for w in self.lock().watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::End { abort: false });
        }
    }

    /// While set, the server closes every connection at its next request without answering,
    /// like an API server that went away (open watches go on: combine with
    /// [`FakeApi::drop_watches`] for an outage). Not a 503: kube retries those itself.
    pub fn set_down(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        let mut st = self.lock();
        st.watchers.retain(|w| !w.tx.is_closed());
        st.watchers.len()
    }

    /// How often open watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.lock().bookmark_interval = interval;
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> String {
        self.lock().rv.to_string()
    }

    /// Every request so far, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// Writes `DIR/kubeconfig` pointing at this server with its bearer token.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        self.write_kubeconfig_with_token(dir, &self.token.clone())
    }

    /// Writes `DIR/kubeconfig` pointing at this server with the given token (a wrong one to
    /// test authentication failures).
    pub fn write_kubeconfig_with_token(&self, dir: &Path, token: &str) -> PathBuf {
        write_kubeconfig(dir, &self.url(), token)
    }
}

/// Writes `DIR/kubeconfig` for a server at `url` with a bearer token.
pub fn write_kubeconfig(dir: &Path, url: &str, token: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
         users:\n- name: fake\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n\
         \x20   cluster: fake\n    user: fake\ncurrent-context: fake\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

// ---------------------------------------------------------------------------------------------
// Serving

type RespBody = BoxBody<Bytes, io::Error>;
/// A response, or an error response (boxed: it is large).
type Reply = Result<Response<RespBody>, Box<Response<RespBody>>>;

#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    token: Arc<str>,
}

/// Where a request goes.
struct Route {
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (kind, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (None, rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => (Some(Kind::EndpointSlice), rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some((*ns).to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some((*name).to_string())),
        _ => return None,
    };
    let kind = match (kind, plural) {
        (None, "services") => Kind::Service,
        (None, "nodes") if ns.is_none() => Kind::Node,
        (Some(Kind::EndpointSlice), "endpointslices") => Kind::EndpointSlice,
        _ => return None,
    };
    Some(Route { kind, ns, name })
}

impl Server {
    /// An `Err` closes the connection without an answer.
    fn handle(&self, req: Request<Incoming>) -> Result<Response<RespBody>, io::Error> {
        let uri = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string());
        let expected = format!("Bearer {}", self.token);
        let authorized = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        let unavailable = {
            let mut st = lock(&self.state);
            st.log.push(LoggedRequest {
                method: req.method().to_string(),
                uri: uri.clone(),
                authorized,
            });
            st.unavailable
        };
        if unavailable {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server down",
            ));
        }
        if !authorized {
            return Ok(status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
            ));
        }
        if req.method() != http::Method::GET {
            return Ok(status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("the fake API server only serves GET, not {}", req.method()),
            ));
        }
        let path = uri.split('?').next().unwrap_or("");
        let Some(route) = route(path) else {
            return Ok(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ));
        };
        let params = query_params(&uri);
        Ok(match self.serve(route, &params) {
            Ok(resp) => resp,
            Err(resp) => *resp,
        })
    }

    fn serve(&self, route: Route, params: &BTreeMap<String, String>) -> Reply {
        let kind = route.kind;
        if let Some(name) = &route.name {
            let st = lock(&self.state);
            let key = (kind, route.ns.clone().unwrap_or_default(), name.to_string());
            return match st.objects.get(&key) {
                Some(obj) => Ok(json_response(StatusCode::OK, obj)),
                None => Err(reject(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} \"{name}\" not found", kind.plural()),
                )),
            };
        }
        let filter = Filter::parse(kind, route.ns.clone(), params)
            .map_err(|msg| reject(StatusCode::BAD_REQUEST, "BadRequest", &msg))?;
        if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
            self.watch(kind, filter, params)
        } else {
            self.list(kind, &filter, params)
        }
    }

    fn list(&self, kind: Kind, filter: &Filter, params: &BTreeMap<String, String>) -> Reply {
        let limit = match params.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => Some(l.parse::<usize>().map_err(|_| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid limit {l:?}"),
                )
            })?),
            None => None,
        }
        .filter(|l| *l > 0);
        let st = lock(&self.state);
        // A continue token: [resourceVersion, namespace, name] of the last item sent.
        let (rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (rv, ns, name): (u64, String, String) =
                    serde_json::from_str(token).map_err(|_| {
                        reject(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            "invalid continue token",
                        )
                    })?;
                if rv < st.compacted {
                    return Err(reject(
                        StatusCode::GONE,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns, name)))
            }
            None => {
                if params.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
                    let wanted = params.get("resourceVersion").cloned().unwrap_or_default();
                    if wanted != st.rv.to_string() {
                        return Err(reject(
                            StatusCode::GONE,
                            "Expired",
                            &format!("too old resource version: {wanted} ({})", st.rv),
                        ));
                    }
                }
                (st.rv, None)
            }
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0usize;
        let mut last_key = (String::new(), String::new());
        let start = match &after {
            Some((ns, name)) => std::ops::Bound::Excluded((kind, ns.clone(), name.clone())),
            None => std::ops::Bound::Included((kind, String::new(), String::new())),
        };
        for ((_, ns, name), obj) in st
            .objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|((k, _, _), _)| *k == kind)
        {
            if !filter.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                if next.is_none() {
                    // The token points at the last item sent.
                    next = Some(
                        serde_json::to_string(&(rv, &last_key.0, &last_key.1)).unwrap_or_default(),
                    );
                }
                remaining += 1;
                continue;
            }
            last_key = (ns.clone(), name.clone());
            let mut item = obj.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            items.push(item);
        }
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if let Some(token) = next {
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(remaining);
        }
        let list = json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": metadata,
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    fn watch(&self, kind: Kind, filter: Filter, params: &BTreeMap<String, String>) -> Reply {
        let flag = |name: &str| matches!(params.get(name).map(String::as_str), Some("true" | "1"));
        let bookmarks = flag("allowWatchBookmarks");
        let initial_events = flag("sendInitialEvents");
        let rv_param = params.get("resourceVersion").cloned().unwrap_or_default();
        let timeout = match params.get("timeoutSeconds").filter(|t| !t.is_empty()) {
            Some(t) => Some(Duration::from_secs(t.parse::<u64>().map_err(|_| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid timeoutSeconds {t:?}"),
                )
            })?)),
            None => None,
        };
        if initial_events
            && (params.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
                || !bookmarks)
        {
            return Err(reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is \
                 NotOlderThan and allowWatchBookmarks is true",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = lock(&self.state);
        let mut register = true;
        if initial_events || rv_param.is_empty() || rv_param == "0" {
            for ((k, _, _), obj) in st.objects.iter() {
                if *k == kind && filter.matches(obj) {
                    let _ = tx.send(WatchMsg::Line(event_line("ADDED", obj)));
                }
            }
            if initial_events {
                let mut bm = bookmark(kind, st.rv);
                bm["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                let _ = tx.send(WatchMsg::Line(event_line("BOOKMARK", &bm)));
            }
        } else {
            let from: u64 = rv_param.parse().map_err(|_| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resourceVersion {rv_param:?}"),
                )
            })?;
            if from < st.compacted {
                let expired = status_value(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", st.compacted),
                );
                let _ = tx.send(WatchMsg::Line(event_line("ERROR", &expired)));
                let _ = tx.send(WatchMsg::End { abort: false });
                register = false;
            } else {
                for change in st.history.iter().filter(|c| c.rv > from && c.kind == kind) {
                    if let Some(line) = event_for(&filter, change) {
                        let _ = tx.send(WatchMsg::Line(line));
                    }
                }
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        if register {
            st.watchers.push(Watcher {
                id,
                kind,
                filter,
                tx: tx.clone(),
            });
        }
        drop(st);
        let (body_tx, body_rx) = mpsc::channel(64);
        tokio::spawn(forward_watch(
            self.state.clone(),
            id,
            kind,
            rx,
            tx,
            body_tx,
            bookmarks,
            timeout,
        ));
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(ChanBody { rx: body_rx }.boxed())
            .unwrap_or_else(|_| Response::new(empty())))
    }
}

/// Moves a watch's lines to its response body; adds bookmarks; ends it at its timeout.
#[allow(clippy::too_many_arguments)]
async fn forward_watch(
    state: Arc<Mutex<State>>,
    id: u64,
    kind: Kind,
    mut rx: mpsc::UnboundedReceiver<WatchMsg>,
    tx: mpsc::UnboundedSender<WatchMsg>,
    body: mpsc::Sender<Result<Bytes, io::Error>>,
    bookmarks: bool,
    timeout: Option<Duration>,
) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let interval = lock(&state).bookmark_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(WatchMsg::Line(line)) => {
                    if body.send(Ok(line)).await.is_err() {
                        break;
                    }
                }
                Some(WatchMsg::End { abort: true }) => {
                    let _ = body
                        .send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "watch dropped")))
                        .await;
                    break;
                }
                Some(WatchMsg::End { abort: false }) | None => break,
            },
            _ = ticker.tick(), if bookmarks => {
                // Sent through the watch's own queue, under the lock, so it never overtakes
                // an event with a lower resourceVersion.
                let st = lock(&state);
                let _ = tx.send(WatchMsg::Line(event_line("BOOKMARK", &bookmark(kind, st.rv))));
            }
            _ = sleep_until(deadline) => break,
            _ = body.closed() => break,
        }
    }
    lock(&state).watchers.retain(|w| w.id != id);
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A response body fed by a channel; an `Err` aborts the connection.
struct ChanBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

fn empty() -> RespBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<RespBody> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed();
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| Response::new(empty()))
}

fn status_value(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<RespBody> {
    json_response(code, &status_value(code.as_u16(), reason, message))
}

fn reject(code: StatusCode, reason: &str, message: &str) -> Box<Response<RespBody>> {
    Box::new(status(code, reason, message))
}

fn bookmark(kind: Kind, rv: u64) -> Value {
    json!({
        "kind": kind.kind(),
        "apiVersion": kind.api_version(),
        "metadata": { "resourceVersion": rv.to_string() },
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// What a watch with `filter` sees of `change`, if anything.
fn event_for(filter: &Filter, change: &Change) -> Option<Bytes> {
    let was = change.old.as_ref().is_some_and(|o| filter.matches(o));
    let is = change.new.as_ref().is_some_and(|n| filter.matches(n));
    match (was, is, &change.old, &change.new) {
        (false, true, _, Some(new)) => Some(event_line("ADDED", new)),
        (true, true, _, Some(new)) => Some(event_line("MODIFIED", new)),
        (true, false, Some(old), _) => {
            let mut gone = old.clone();
            gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            Some(event_line("DELETED", &gone))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Debug)]
enum Req {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

#[derive(Debug, Default)]
struct Filter {
    ns: Option<String>,
    labels: Vec<Req>,
    /// (field path, value, equal?)
    fields: Vec<(String, String, bool)>,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

fn parse_label_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut reqs = Vec::new();
    if s.trim().is_empty() {
        return Ok(reqs);
    }
    let bad = |term: &str| format!("unable to parse requirement: invalid label selector {term:?}");
    for term in split_terms(s) {
        let term = term.trim();
        let req = if let Some(key) = term.strip_prefix('!') {
            Req::NotExists(key.trim().to_string())
        } else if let Some((k, v)) = term.split_once("!=") {
            Req::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==") {
            Req::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = term.split_once('=') {
            Req::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, rest)) = term.split_once(char::is_whitespace) {
            let rest = rest.trim();
            let (op, set) = rest
                .split_once(char::is_whitespace)
                .map(|(op, set)| (op, set.trim()))
                .or_else(|| rest.find('(').map(|i| (rest[..i].trim(), &rest[i..])))
                .ok_or_else(|| bad(term))?;
            let set = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| bad(term))?;
            let values: BTreeSet<String> = set
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            match op {
                "in" => Req::In(k.to_string(), values),
                "notin" => Req::NotIn(k.to_string(), values),
                _ => return Err(bad(term)),
            }
        } else {
            Req::Exists(term.to_string())
        };
        let key = match &req {
            Req::Exists(k) | Req::NotExists(k) | Req::Eq(k, _) | Req::NotEq(k, _) => k,
            Req::In(k, _) | Req::NotIn(k, _) => k,
        };
        if !valid_key(key) {
            return Err(bad(term));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

impl Filter {
    fn parse(
        kind: Kind,
        ns: Option<String>,
        params: &BTreeMap<String, String>,
    ) -> Result<Filter, String> {
        let labels = parse_label_selector(params.get("labelSelector").map_or("", String::as_str))?;
        let mut fields = Vec::new();
        let fs = params.get("fieldSelector").map_or("", String::as_str);
        if !fs.trim().is_empty() {
            for term in fs.split(',') {
                let term = term.trim();
                let (path, value, eq) = if let Some((k, v)) = term.split_once("!=") {
                    (k, v, false)
                } else if let Some((k, v)) = term.split_once("==") {
                    (k, v, true)
                } else if let Some((k, v)) = term.split_once('=') {
                    (k, v, true)
                } else {
                    return Err(format!("invalid field selector: {term:?}"));
                };
                let path = path.trim();
                if !kind.supports_field(path) {
                    return Err(format!(
                        "field label not supported: {path} (for {})",
                        kind.plural()
                    ));
                }
                fields.push((path.to_string(), value.trim().to_string(), eq));
            }
        }
        Ok(Filter { ns, labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.ns
            && meta["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|req| match req {
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
            Req::Eq(k, v) => label(k) == Some(v.as_str()),
            Req::NotEq(k, v) => label(k) != Some(v.as_str()),
            Req::In(k, set) => label(k).is_some_and(|l| set.contains(l)),
            Req::NotIn(k, set) => label(k).is_none_or(|l| !set.contains(l)),
        });
        labels_ok
            && self.fields.iter().all(|(path, value, eq)| {
                let mut v = obj;
                for part in path.split('.') {
                    v = &v[part];
                }
                let actual = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (actual == *value) == *eq
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings

/// The query parameters of `uri`, percent-decoded (the last of repeated names wins).
pub fn query_params(uri: &str) -> BTreeMap<String, String> {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Value {
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({"metadata": {"name": "x", "namespace": "default", "labels": map}, "spec": {"clusterIP": "10.0.0.1"}})
    }

    fn filter(kind: Kind, ls: &str, fs: &str) -> Result<Filter, String> {
        let mut params = BTreeMap::new();
        params.insert("labelSelector".to_string(), ls.to_string());
        params.insert("fieldSelector".to_string(), fs.to_string());
        Filter::parse(kind, None, &params)
    }

    #[test]
    fn label_selectors() {
        let f = filter(Kind::Service, "!a,b,c=1,d!=2,e in (x, y),f notin (z)", "").unwrap();
        let good = labels(&[("b", ""), ("c", "1"), ("e", "y")]);
        assert!(f.matches(&good));
        for bad in [
            labels(&[("a", ""), ("b", ""), ("c", "1"), ("e", "y")]),
            labels(&[("c", "1"), ("e", "y")]),
            labels(&[("b", ""), ("c", "2"), ("e", "y")]),
            labels(&[("b", ""), ("c", "1"), ("d", "2"), ("e", "y")]),
            labels(&[("b", ""), ("c", "1"), ("e", "q")]),
            labels(&[("b", ""), ("c", "1"), ("e", "y"), ("f", "z")]),
        ] {
            assert!(!f.matches(&bad), "{bad}");
        }
        assert!(filter(Kind::Service, "a b c", "").is_err());
        assert!(filter(Kind::Service, "!", "").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = labels(&[]);
        assert!(
            filter(Kind::Service, "", "spec.clusterIP!=None")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !filter(Kind::Service, "", "spec.clusterIP=None")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            filter(Kind::Service, "", "metadata.name==x")
                .unwrap()
                .matches(&obj)
        );
        assert!(filter(Kind::Node, "", "spec.clusterIP=None").is_err());
    }

    #[test]
    fn decoding() {
        let p =
            query_params("/x?&labelSelector=%21a%2Cb&fieldSelector=metadata.name%3Dn+1&limit=5");
        assert_eq!(p["labelSelector"], "!a,b");
        assert_eq!(p["fieldSelector"], "metadata.name=n 1");
        assert_eq!(p["limit"], "5");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
