//! The Kubernetes API source: watches v1 Services, discovery.k8s.io/v1 EndpointSlices and this
//! node's v1 Node, and turns what it sees into [`SourceEvent`]s for the store.
//!
//! Selectors are kube-proxy's (`cmd/kube-proxy/app/server.go`):
//! - Services: label selector `!service.kubernetes.io/service-proxy-name` (services another
//!   proxy implements) and field selector `spec.clusterIP!=None` (headless services are served
//!   by DNS, not by a proxy);
//! - EndpointSlices: label selector `!service.kubernetes.io/headless` (the label the
//!   EndpointSlice controller puts on the slices of headless services). kube-proxy does not
//!   filter slices by service-proxy-name: a slice whose Service is not watched is inert, and
//!   keeping it avoids a window without endpoints when that label is removed from a Service
//!   (the controller relabels its slices only afterwards);
//! - Node: field selector `metadata.name=<node>`, for its `topology.kubernetes.io/zone` label,
//!   its addresses (`--nodeport-addresses primary`, source NAT) and whether it is being deleted (a `deletionTimestamp`, the cluster autoscaler's
//!   `ToBeDeletedByClusterAutoscaler` taint, or the object gone: the health checks then tell
//!   load balancers to stop sending this node traffic).
//!
//! Each kind is a kube-runtime `watcher` (list + watch with bookmarks, the strategy every API
//! server supports; streaming lists need `WatchList`, beta since 1.32 only) behind kube's
//! default exponential backoff (0.8 s doubling to 30 s, with jitter). A relist (`Init` ..
//! `InitDone`) is reported as [`SourceEvent::Listing`], its objects one at a time, then
//! [`SourceEvent::Listed`]: the store removes what the list lacked only then, so it never
//! sees an empty intermediate state, and no copy of the whole list is held; every watcher error (failed list or watch request, 410 Expired,
//! error event, unreadable body, ...) is logged and reported as
//! [`SourceEvent::WatchRestarted`]. kube treats a watch body that ends — cleanly at
//! `timeoutSeconds`, or cut mid-stream (EOF) — as a resumable end: it re-watches from the last
//! resourceVersion without surfacing anything, so such a resume is reported only when the
//! re-watch itself fails (server unreachable, refused, 410 ...). Nothing is lost either way.

use std::fmt::{self, Debug};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;
use tracing::{debug, info, warn};

use crate::model::{Key, NodeAddresses, ObjectKind, ServiceObject, SliceObject};
use crate::source::{SourceEvent, node_deleting};

/// kube-proxy's label selector for Services.
pub const SERVICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
/// kube-proxy's field selector for Services: no headless services.
pub const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";
/// kube-proxy's label selector for EndpointSlices: no slices of headless services.
pub const SLICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/headless";
/// The Node label holding the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A client for the Kubernetes API: `--kubeconfig PATH` when given; else the in-cluster
/// configuration when running in a pod (`KUBERNETES_SERVICE_HOST` set); else `$KUBECONFIG` /
/// `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Config::incluster()
            .context(
                "in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST is set; the \
                 service account token and CA are read from \
                 /var/run/secrets/kubernetes.io/serviceaccount)",
            )?,
        None => Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .context(
                "no Kubernetes API configuration: not in a pod (KUBERNETES_SERVICE_HOST unset) \
                 and no usable kubeconfig ($KUBECONFIG or ~/.kube/config); use --kubeconfig \
                 or --manifests",
            )?,
    };
    let url = config.cluster_url.clone();
    Client::try_from(config).with_context(|| format!("Kubernetes API client for {url}"))
}

/// Starts the three watchers; events go to `tx`, each stamped with the instant it was
/// received. The task ends only when `tx`'s receiver is gone.
pub fn spawn(
    client: Client,
    node_name: String,
    tx: Sender<(Instant, SourceEvent)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let services = watch_kind(
            Api::<Service>::all(client.clone()),
            watcher::Config::default()
                .labels(SERVICE_LABEL_SELECTOR)
                .fields(SERVICE_FIELD_SELECTOR),
            tx.clone(),
        );
        let slices = watch_kind(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SLICE_LABEL_SELECTOR),
            tx.clone(),
        );
        let node = watch_kind(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&node_field_selector(&node_name)),
            tx,
        );
        tokio::join!(services, slices, node);
    })
}

/// One list of each kind, with the same selectors as the watchers (for `explain`).
pub async fn list_once(
    kubeconfig: Option<&Path>,
    node_name: &str,
) -> anyhow::Result<crate::source::Objects> {
    let client = client(kubeconfig).await?;
    let services = list_all(
        &Api::<Service>::all(client.clone()),
        ListParams::default()
            .labels(SERVICE_LABEL_SELECTOR)
            .fields(SERVICE_FIELD_SELECTOR),
    )
    .await?;
    let slices = list_all(
        &Api::<EndpointSlice>::all(client.clone()),
        ListParams::default().labels(SLICE_LABEL_SELECTOR),
    )
    .await?;
    let nodes = list_all(
        &Api::<Node>::all(client),
        ListParams::default().fields(&node_field_selector(node_name)),
    )
    .await?;
    if nodes.is_empty() {
        warn!(
            node = node_name,
            "node not found in the Kubernetes API: no zone"
        );
    }
    Ok(crate::source::Objects {
        services,
        slices,
        node_zone: nodes.first().and_then(node_zone),
        node_addresses: nodes.first().map(NodeAddresses::of).unwrap_or_default(),
    })
}

fn node_field_selector(node_name: &str) -> String {
    format!("metadata.name={node_name}")
}

/// The `topology.kubernetes.io/zone` label of a node.
pub fn node_zone(node: &Node) -> Option<String> {
    node.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned()
}

async fn list_all<K>(api: &Api<K>, params: ListParams) -> anyhow::Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut params = params.limit(500);
    let mut items = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .with_context(|| format!("listing {}", K::plural(&())))?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// A kind the source watches, and how its watcher events become [`SourceEvent`]s. Each object
/// is checked and made compact ([`ServiceObject`], [`SliceObject`]) the moment it arrives, so
/// the typed copy lives only as long as the page of the list it came in.
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static {
    /// The name in logs and in [`SourceEvent::WatchRestarted`].
    const RESOURCE: &'static str;
    /// What a (re)list collects until it is complete (nothing for Services and slices, which
    /// are reported one by one).
    type Listing: Default + Send;
    /// The event opening a (re)list, if any.
    fn listing() -> Option<SourceEvent>;
    /// One object of a (re)list: its event, or None when it is folded into `listing`.
    fn listed_one(self, listing: &mut Self::Listing) -> Option<SourceEvent>;
    /// The event closing a (re)list.
    fn listed(listing: Self::Listing) -> SourceEvent;
    fn applied(self) -> SourceEvent;
    fn deleted(self) -> SourceEvent;
}

impl Watched for Service {
    const RESOURCE: &'static str = "services";
    type Listing = ();
    fn listing() -> Option<SourceEvent> {
        Some(SourceEvent::Listing(ObjectKind::Service))
    }
    fn listed_one(self, _: &mut ()) -> Option<SourceEvent> {
        Some(self.applied())
    }
    fn listed(_: ()) -> SourceEvent {
        SourceEvent::Listed(ObjectKind::Service)
    }
    fn applied(self) -> SourceEvent {
        SourceEvent::ServiceApplied(Arc::new(ServiceObject::new(&self)))
    }
    fn deleted(self) -> SourceEvent {
        SourceEvent::ServiceDeleted(Key::of(&self.metadata))
    }
}

impl Watched for EndpointSlice {
    const RESOURCE: &'static str = "endpointslices";
    type Listing = ();
    fn listing() -> Option<SourceEvent> {
        Some(SourceEvent::Listing(ObjectKind::EndpointSlice))
    }
    fn listed_one(self, _: &mut ()) -> Option<SourceEvent> {
        Some(self.applied())
    }
    fn listed(_: ()) -> SourceEvent {
        SourceEvent::Listed(ObjectKind::EndpointSlice)
    }
    fn applied(self) -> SourceEvent {
        SourceEvent::SliceApplied(Arc::new(SliceObject::new(&self)))
    }
    fn deleted(self) -> SourceEvent {
        SourceEvent::SliceDeleted(Key::of(&self.metadata))
    }
}

impl Watched for Node {
    const RESOURCE: &'static str = "nodes";
    /// This node's Node as the list had it (the field selector lets only it through).
    type Listing = Option<Node>;
    fn listing() -> Option<SourceEvent> {
        None
    }
    fn listed_one(self, node: &mut Option<Node>) -> Option<SourceEvent> {
        *node = Some(self);
        None
    }
    /// A list without this node's Node (deleted while the watch was away, or a wrong
    /// `--node-name`) is the same as its deletion.
    fn listed(node: Option<Node>) -> SourceEvent {
        match node {
            Some(node) => node.applied(),
            None => SourceEvent::NodeUpdated {
                zone: None,
                deleting: true,
                addresses: NodeAddresses::default(),
            },
        }
    }
    fn applied(self) -> SourceEvent {
        SourceEvent::NodeUpdated {
            zone: node_zone(&self),
            deleting: node_deleting(&self),
            addresses: NodeAddresses::of(&self),
        }
    }
    /// The Node object is gone: this node is going away (newer kube-proxies exit then, and
    /// their health checks fail with them).
    fn deleted(self) -> SourceEvent {
        SourceEvent::NodeUpdated {
            zone: None,
            deleting: true,
            addresses: NodeAddresses::default(),
        }
    }
}

/// Runs one watcher until the receiver is gone.
async fn watch_kind<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    tx: Sender<(Instant, SourceEvent)>,
) {
    let stream = watch(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // A (re)list in progress (between Init and InitDone): what it collected, how many
    // objects it had so far, and whether its opening event went out. kube announces a list
    // (Init) before asking for it, so a list that fails would open one list after another;
    // the opening event waits for the list's first object or its end instead.
    let mut listing: Option<(K::Listing, usize, bool)> = None;
    let mut listed_once = false;
    while let Some(item) = next(&mut stream).await {
        let received = Instant::now();
        let mut opening = None;
        let mut open = |listing: &mut (K::Listing, usize, bool)| {
            if !listing.2 {
                listing.2 = true;
                opening = K::listing();
            }
        };
        let event = match item {
            Ok(Event::Init) => {
                debug!(resource = K::RESOURCE, "listing");
                listing = Some(Default::default());
                None
            }
            Ok(Event::InitApply(object)) => {
                let current = listing.get_or_insert_with(Default::default);
                open(current);
                current.1 += 1;
                object.listed_one(&mut current.0)
            }
            Ok(Event::InitDone) => {
                let mut current = listing.take().unwrap_or_default();
                open(&mut current);
                let (state, count, _) = current;
                if listed_once {
                    info!(resource = K::RESOURCE, count, "relisted");
                } else {
                    info!(resource = K::RESOURCE, count, "listed");
                    listed_once = true;
                }
                Some(K::listed(state))
            }
            Ok(Event::Apply(object)) => Some(object.applied()),
            Ok(Event::Delete(object)) => Some(object.deleted()),
            Err(error) => {
                warn!(
                    resource = K::RESOURCE,
                    error = %Chain(&error),
                    "Kubernetes API watch failed; resuming with backoff"
                );
                Some(SourceEvent::WatchRestarted(K::RESOURCE))
            }
        };
        for event in [opening, event].into_iter().flatten() {
            if tx.send((received, event)).await.is_err() {
                debug!(resource = K::RESOURCE, "event receiver gone; watcher stops");
                return;
            }
        }
    }
}

/// The next item of a stream (kube's streams, without a direct `futures` dependency: the bound
/// `WatchStreamExt` brings its supertrait `Stream` along).
fn next<S>(stream: &mut Pin<&mut S>) -> impl Future<Output = Option<S::Item>>
where
    S: WatchStreamExt + ?Sized,
{
    std::future::poll_fn(move |cx: &mut TaskContext<'_>| -> Poll<Option<S::Item>> {
        stream.as_mut().poll_next(cx)
    })
}

/// An error and its sources, `: `-separated.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kube's errors often repeat their source in their own message: skip what is known.
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(error) = source {
            let more = error.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            source = error.source();
        }
        f.write_str(&text)
    }
}
