//! Where Services and EndpointSlices come from: the Kubernetes API ([`kube`]) or YAML files
//! ([`manifests`]). Both report [`SourceEvent`]s; neither knows what consumes them.

pub mod kube;
pub mod manifests;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{Key, ObjectKind, ServiceObject, SliceObject};

/// What a source reports. Each is stamped with the `Instant` it was received.
///
/// Objects travel checked and compact ([`ServiceObject`], [`SliceObject`]): a source converts
/// each one as it gets it, so no typed copy of a whole list is ever held. They are shared
/// (`Arc`) with the source that keeps them (the manifest source), not copied.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    ServiceApplied(Arc<ServiceObject>),
    ServiceDeleted(Key),
    SliceApplied(Arc<SliceObject>),
    SliceDeleted(Key),
    /// A complete list of this kind (Service or EndpointSlice) begins: at the start, and again
    /// after the watch lost its place (410 Gone). Its objects follow one at a time as
    /// `*Applied`, then [`SourceEvent::Listed`].
    Listing(ObjectKind),
    /// The list is complete: objects of this kind held from before and not applied since
    /// [`SourceEvent::Listing`] are gone. The store removes them only now, so the maps never
    /// go through an empty or partial state.
    Listed(ObjectKind),
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
