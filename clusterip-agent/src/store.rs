//! The object store between sources and the syncer (being written).

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
