//! clusterip-agent: keeps the clusterip eBPF datapath in sync with Kubernetes Services and
//! EndpointSlices. `main.rs` only wires; everything lives here, one folder per stage of the
//! data flow (see ARCHITECTURE.md):
//!
//! `source` (Kubernetes API, manifest files) → `sync` (store, syncer) → `datapath` (pinned
//! maps, programs, links), with `model` (pure Kubernetes semantics and the desired table)
//! used by all three, and the edges on top: `cmd` (the commands), `cli`, `health`,
//! `http`, `metrics`, `telemetry`. No folder imports one to its left in that chain, and
//! `model` imports none.

pub mod cli;
pub mod cmd;
pub mod datapath;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod source;
pub mod sync;
pub mod telemetry;

pub use cmd::{main, run};

/// The eBPF object, built and embedded by `build.rs`; empty when the agent was built without the
/// eBPF toolchain (debug builds only: a release build fails instead).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/clusterip.bpf.o"));
