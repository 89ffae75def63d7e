//! clusterip-agent: keeps the clusterip eBPF datapath in sync with Kubernetes Services and
//! EndpointSlices. `main.rs` only wires; everything lives here.

pub mod agent;
pub mod batch;
pub mod cli;
pub mod datapath;
pub mod dump;
pub mod explain;
pub mod interfaces;
pub mod kube_source;
pub mod maglev;
pub mod manifests;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod sockdiag;
pub mod store;
pub mod syncer;
pub mod table;
pub mod telemetry;

pub use agent::{main, run};

/// The eBPF object built by `cargo xtask build-ebpf`; empty when the agent was built without it.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/clusterip.bpf.o"));
