//! The kernel side as the agent sees it: loading and attaching the programs ([`loader`]),
//! the pinned maps ([`maps`], [`batch`]), what the kernel offers ([`probe`]), the interfaces
//! the per-packet programs go on ([`interfaces`]), the namespace's addresses ([`addresses`]) and destroying sockets of removed backends
//! ([`sockdiag`]).

pub mod addresses;
pub mod batch;
pub mod interfaces;
mod links;
pub mod loader;
pub mod maps;
pub mod memcg;
pub mod migrate;
pub mod probe;
pub mod sizing;
pub mod sockdiag;
mod sys;

pub use loader::{
    BPFFS_ROOT, BpffsMount, Datapath, DatapathConfig, DatapathError, cleanup, default_cgroup_root,
    mount_bpffs,
};
