//! Where Services and EndpointSlices come from: the Kubernetes API ([`kube`]) or YAML files
//! ([`manifests`]). Both report [`SourceEvent`]s; neither knows what consumes them.

pub mod kube;
pub mod manifests;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{Key, NodeAddresses, ObjectKind, ServiceObject, SliceObject};

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
    /// This node's Node object, as far as the agent uses it: its `topology.kubernetes.io/zone`
    /// label (topology hints), whether it is being deleted ([`node_deleting`]; load
    /// balancers are told to stop sending it traffic), and its InternalIP and ExternalIP
    /// addresses (`--nodeport-addresses primary`, the source NAT address). Sent when it is
    /// listed, changes or is deleted (then without addresses). The manifest source never
    /// reports deletion.
    NodeUpdated {
        zone: Option<String>,
        deleting: bool,
        addresses: NodeAddresses,
    },
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
    /// This node's addresses, if its Node is known.
    pub node_addresses: NodeAddresses,
}

/// The taint the cluster autoscaler puts on a node it is about to delete (kube-proxy's
/// `ToBeDeletedTaint`, `pkg/proxy/healthcheck/proxy_health.go`).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether `node` is being deleted, as kube-proxy decides a node is no longer eligible for
/// load-balanced traffic: it has a `deletionTimestamp`, or the cluster autoscaler's
/// [`TO_BE_DELETED_TAINT`] (whatever its value and effect).
pub fn node_deleting(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|spec| spec.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("a Node")
    }

    #[test]
    fn node_deleting_as_kube_proxy_decides() {
        assert!(!node_deleting(&node(
            serde_json::json!({"metadata": {"name": "n"}})
        )));
        assert!(node_deleting(&node(serde_json::json!({"metadata": {
            "name": "n", "deletionTimestamp": "2024-01-01T00:00:00Z"}}))));
        let tainted = |key: &str| {
            node(
                serde_json::json!({"metadata": {"name": "n"}, "spec": {"taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": key, "value": "1700000000", "effect": "NoSchedule"}]}}),
            )
        };
        assert!(node_deleting(&tainted(TO_BE_DELETED_TAINT)));
        // Any other taint (kube-proxy's test: "tainted in any other way") is not deletion.
        assert!(!node_deleting(&tainted("other")));
        assert!(!node_deleting(&tainted(
            "DeletionCandidateOfClusterAutoscaler"
        )));
    }
}
