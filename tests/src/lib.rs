//! Harness for the privileged end-to-end tests of clusterip.
//!
//! Everything a test creates lives behind a guard with a unique name (pid + counter) that
//! removes it in `Drop`, also when the test panics:
//! - [`netns::Topology`]: a client netns and a pods netns joined by a veth pair;
//! - [`cgroup::Cgroup`]: a child cgroup v2 the agent attaches to and the clients run in;
//! - [`bpffs::PinDir`]: the agent's bpffs pin directory (`clusterip-agent cleanup` on drop);
//! - [`agent::Agent`]: the agent process, its output captured line by line;
//! - [`manifests::Manifests`]: a directory of Service/EndpointSlice YAML;
//! - [`process`]: backends in the pods netns, clients in the client netns and cgroup;
//! - [`container::Podman`]: a podman store of the test's own for the agent's image, with its
//!   containers' cgroups ([`container::SharedMount`]: a shared mount standing in for a node's
//!   /sys/fs/bpf).
//!
//! [`fixture::Fixture`] puts them together in the order they must be torn down;
//! [`node::NodeFixture`] is one node routing between a client and pods (per-packet tests);
//! [`lab::Lab`] is several nodes on a shared network, each with its pods and agent, and an
//! external client (pod-to-pod across nodes, per-node endpoints, traffic from outside).
//! [`env::prerequisites`] (or [`require_env!`]) decides whether a test can run at all.

pub mod agent;
pub mod bench;
pub mod bpffs;
pub mod cgroup;
pub mod container;
pub mod datagen;
pub mod env;
pub mod fakeapi;
pub mod fixture;
pub mod kubeproxy;
pub mod lab;
pub mod loadgen;
pub mod manifests;
pub mod memcg;
pub mod netns;
pub mod node;
pub mod npbench;
pub mod packet;
pub mod process;

pub use env::{
    Bins, Env, ImageEnv, image_prerequisites, prerequisites, prerequisites_without_agent,
};
pub use fixture::Fixture;

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique among all tests running on this machine: `<pid>x<counter>`.
/// Short on purpose: it ends up in netns and cgroup names and IFNAMSIZ is 15.
pub fn uniq() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The path of the enclosing function (`tcp::some_test`), for skip messages.
#[doc(hidden)]
#[macro_export]
macro_rules! __test_name {
    () => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        name.strip_suffix("::here").unwrap_or(name)
    }};
}

/// Returns the [`Env`] or, when a prerequisite is missing, skips the calling test (prints
/// `SKIP <test>: <reason>` and returns) — or panics when `CLUSTERIP_E2E_REQUIRED=1`.
#[macro_export]
macro_rules! require_env {
    () => {
        match $crate::prerequisites($crate::__test_name!(), $crate::bins!()) {
            Some(env) => env,
            None => return,
        }
    };
}

/// [`require_env!`] for the image test: the [`ImageEnv`] (the image archive besides the
/// [`Env`]), or a skip (a panic when `CLUSTERIP_E2E_REQUIRED=1`).
#[macro_export]
macro_rules! require_image {
    () => {
        match $crate::image_prerequisites($crate::__test_name!(), $crate::bins!()) {
            Some(env) => env,
            None => return,
        }
    };
}

/// [`require_env!`] for harness self-tests that do not need the agent.
#[macro_export]
macro_rules! require_root {
    () => {
        match $crate::prerequisites_without_agent($crate::__test_name!(), $crate::bins!()) {
            Some(env) => env,
            None => return,
        }
    };
}

/// [`require_env!`] for the packet tests: the loaded [`packet::Datapath`], or a skip (a panic
/// when `CLUSTERIP_E2E_REQUIRED=1`).
#[macro_export]
macro_rules! require_datapath {
    () => {
        match $crate::packet::Datapath::load($crate::__test_name!()) {
            Some(dp) => dp,
            None => return,
        }
    };
}
