//! Where Services and EndpointSlices come from: the Kubernetes API ([`kube`]) or YAML files
//! ([`manifests`]). Both report [`SourceEvent`]s; neither knows what consumes them.

pub mod kube;
pub mod manifests;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What a source reports. Each is stamped with the `Instant` it was received.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    ServiceApplied(Service),
    ServiceDeleted(Service),
    SliceApplied(EndpointSlice),
    SliceDeleted(EndpointSlice),
    /// A relist finished: the complete current set of Services (replaces them; the store
    /// diffs, so the maps never go through an empty state).
    ServicesReplaced(Vec<Service>),
    /// A relist finished: the complete current set of EndpointSlices.
    SlicesReplaced(Vec<EndpointSlice>),
    /// This node's `topology.kubernetes.io/zone` label.
    NodeZone(Option<String>),
    /// A watch was (re)started after an error or its end: "services", "endpointslices", "nodes".
    WatchRestarted(&'static str),
}

/// Every object of one listing (the manifests read once, or one list of each kind from the
/// API): what `explain` works from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// The `topology.kubernetes.io/zone` label of this node, if known.
    pub node_zone: Option<String>,
}
