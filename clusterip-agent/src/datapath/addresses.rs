//! The addresses of the agent's network namespace, from which `--nodeport-addresses` selects
//! the node-port addresses ([`crate::model::select_node_port_addresses`]).
//!
//! `getifaddrs(3)` through nix's safe iterator: glibc and musl both answer it over a netlink
//! socket (RTM_GETADDR) in the calling thread's network namespace, as `if_nameindex` does for
//! [`super::interfaces`], so an agent started with setns() sees its own namespace (sysfs and
//! /proc/net would show another's). nix rather than netlink-packet-route: this needs the
//! addresses only, not their flags, and nix wraps the libc call without unsafe code here.

use std::io;
use std::net::IpAddr;

/// Every IPv4 and IPv6 address of the calling thread's network namespace (loopback and
/// link-local included: selecting is the model's business), sorted, without duplicates.
pub fn list() -> io::Result<Vec<IpAddr>> {
    let iter = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    let mut out: Vec<IpAddr> = iter
        .filter_map(|ifa| {
            let address = ifa.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_loopback_address() {
        // Every network namespace has lo, and it is up in the test's (the host's or a
        // container's): 127.0.0.1 at least.
        let all = list().expect("getifaddrs");
        assert!(
            all.contains(&IpAddr::from([127, 0, 0, 1])),
            "no 127.0.0.1 in {all:?}"
        );
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(all, sorted);
    }
}
