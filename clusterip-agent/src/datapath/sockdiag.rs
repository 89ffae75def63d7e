//! Destroys connected UDP sockets whose backend went away.
//!
//! A connected UDP socket was rewritten once, at connect(), to one backend; when that backend
//! leaves its service, the socket would keep sending into the void (the trap Cilium's issues
//! describe). kube-proxy clears the UDP conntrack entries for the same reason. Here the agent
//! finds, in every network namespace of the processes under the attached cgroup, the UDP
//! sockets connected to a removed backend *through a VIP* (the socket-level reverse-NAT map
//! holds an entry for the socket's cookie and that backend), and destroys them with sock_diag's
//! SOCK_DESTROY (what `ss -K` does): the application gets an error and reconnects, through the
//! VIP, to a live backend. Sockets that connected to a pod IP directly are left alone.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use clusterip_common::{
    SockRevNat4Key, SockRevNat4Value, SockRevNat6Key, SockRevNat6Value, ip4_to_net, ip6_to_net,
    map_names, port_to_net,
};
use tracing::{debug, warn};

use crate::datapath::maps::{self, Installed, MapsError};
use crate::model::table::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error(transparent)]
    Map(#[from] MapsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the socket-destroy thread panicked")]
    Thread,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SockDiagError {
    let what = what.into();
    move |source| SockDiagError::Io { what, source }
}

// Netlink and sock_diag constants (linux/netlink.h, linux/sock_diag.h); `probe` uses them too.
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub(crate) const SOCK_DESTROY: u16 = 21;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_req_v2.
const REQ_LEN: usize = 56;
/// struct inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid at offset 4.
const DIAG_MSG_MIN: usize = 72;

/// A socket as sock_diag identifies it (struct inet_diag_sockid, kept as raw bytes).
#[derive(Clone, Copy)]
struct SockId {
    family: u8,
    raw: [u8; 48],
}

impl SockId {
    fn dst(&self) -> SocketAddr {
        let port = u16::from_be_bytes([self.raw[2], self.raw[3]]);
        let d = &self.raw[20..36];
        let ip = if self.family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(d);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        SocketAddr::new(ip, port)
    }

    fn cookie(&self) -> u64 {
        let lo = u32::from_ne_bytes([self.raw[40], self.raw[41], self.raw[42], self.raw[43]]);
        let hi = u32::from_ne_bytes([self.raw[44], self.raw[45], self.raw[46], self.raw[47]]);
        u64::from(lo) | (u64::from(hi) << 32)
    }
}

/// (service id, backend) pairs: a UDP backend of one frontend.
pub type UdpMembers = BTreeSet<(u32, SocketAddr)>;

/// The UDP backends of the installed frontends among `frontends`.
pub fn udp_members_of<'a>(
    installed: &Installed,
    frontends: impl IntoIterator<Item = &'a crate::model::table::Frontend>,
) -> UdpMembers {
    frontends
        .into_iter()
        .filter(|fe| fe.protocol == Protocol::Udp)
        .filter_map(|fe| installed.frontends.get(fe))
        .flat_map(|f| {
            f.slots
                .iter()
                .filter_map(|id| installed.backends.get(id))
                .map(|b| (f.svc_id, b.addr.socket_addr()))
        })
        .collect()
}

/// The UDP backends of every installed frontend.
pub fn udp_members(installed: &Installed) -> UdpMembers {
    udp_members_of(installed, installed.frontends.keys())
}

/// Destroys the UDP sockets that were connected through a VIP to a backend in `removed` (as
/// that VIP's service's backend), in every network namespace used by a process in `cgroup`
/// (or below it). Returns how many were destroyed. Runs on a thread of its own, since
/// entering network namespaces changes the calling thread.
pub fn destroy_udp_sockets(
    bpffs: &Path,
    cgroup: &Path,
    removed: &UdpMembers,
) -> Result<usize, SockDiagError> {
    if removed.is_empty() {
        return Ok(0);
    }
    let rnat = RevNat::open(bpffs)?;
    let namespaces = netns_of_cgroup(cgroup);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut total = 0;
            for (path, ns) in namespaces {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    debug!(netns = %path.display(), error = %e, "cannot enter netns (process gone?)");
                    continue;
                }
                match destroy_in_current_netns(&rnat, removed) {
                    Ok(n) => total += n,
                    Err(e) => warn!(netns = %path.display(), error = %e, "destroying UDP sockets"),
                }
            }
            Ok(total)
        })
        .join()
        .map_err(|_| SockDiagError::Thread)?
    })
}

/// The socket-level reverse-NAT maps: which (socket, backend) pairs went through a VIP.
struct RevNat {
    v4: HashMap<MapData, SockRevNat4Key, SockRevNat4Value>,
    v6: HashMap<MapData, SockRevNat6Key, SockRevNat6Value>,
}

impl RevNat {
    fn open(bpffs: &Path) -> Result<Self, SockDiagError> {
        Ok(Self {
            v4: maps::open(bpffs, map_names::SOCK_REVNAT_V4)?,
            v6: maps::open(bpffs, map_names::SOCK_REVNAT_V6)?,
        })
    }

    /// The service whose VIP the socket `cookie` connected through to reach `peer` (as
    /// [`normalize`]d: a v6 socket connected to a v4-mapped VIP went through the v4 tables).
    fn service_of(&self, cookie: u64, peer: SocketAddr) -> Option<u32> {
        let port = port_to_net(peer.port());
        match peer.ip() {
            IpAddr::V4(a) => {
                let key = SockRevNat4Key {
                    cookie,
                    addr: ip4_to_net(a),
                    port,
                    _pad: 0,
                };
                self.v4.get(&key, 0).ok().map(|v| v.svc_id)
            }
            IpAddr::V6(a) => {
                let key = SockRevNat6Key {
                    cookie,
                    addr: ip6_to_net(a),
                    port,
                    _pad: [0; 6],
                };
                self.v6.get(&key, 0).ok().map(|v| v.svc_id)
            }
        }
    }
}

/// Network namespaces of the processes in `cgroup` and its descendants, each once.
fn netns_of_cgroup(cgroup: &Path) -> Vec<(PathBuf, File)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter(|l| !l.is_empty()) {
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if seen.insert((meta.dev(), meta.ino()))
                    && let Ok(f) = File::open(&path)
                {
                    out.push((path, f));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    out
}

fn destroy_in_current_netns(rnat: &RevNat, removed: &UdpMembers) -> Result<usize, SockDiagError> {
    let nl = Netlink::open()?;
    let mut destroyed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let victims: Vec<SockId> = nl
            .dump_udp(family)?
            .into_iter()
            .filter(|id| {
                let peer = normalize(id.dst());
                rnat.service_of(id.cookie(), peer)
                    .is_some_and(|svc| removed.contains(&(svc, peer)))
            })
            .collect();
        for id in victims {
            match nl.destroy(&id) {
                Ok(()) => {
                    destroyed += 1;
                    debug!(peer = %id.dst(), cookie = id.cookie(), "destroyed UDP socket of a removed backend");
                }
                // Closed meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io_err(format!("SOCK_DESTROY to {}", id.dst()))(e)),
            }
        }
    }
    Ok(destroyed)
}

/// v4-mapped IPv6 peers compare as the IPv4 backend they are.
fn normalize(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

struct Netlink {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl Netlink {
    fn open() -> Result<Self, SockDiagError> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io_err("netlink sock_diag socket")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: std::cell::Cell::new(1),
        })
    }

    fn request(
        &self,
        msg_type: u16,
        flags: u16,
        family: u8,
        id: Option<&SockId>,
    ) -> io::Result<u32> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let mut buf = [0u8; NLMSG_HDRLEN + REQ_LEN];
        buf[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
        buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        let req = &mut buf[NLMSG_HDRLEN..];
        req[0] = family;
        req[1] = libc::IPPROTO_UDP as u8;
        // idiag_states: every state (UDP sockets are "established" when connected).
        req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        if let Some(id) = id {
            req[8..56].copy_from_slice(&id.raw);
        }
        // SAFETY: sending a fully initialised buffer on our socket (kernel is the peer).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(seq)
    }

    fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(&buf[..n as usize])
    }

    fn dump_udp(&self, family: u8) -> Result<Vec<SockId>, SockDiagError> {
        let what = || format!("sock_diag dump of UDP family {family}");
        self.request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            None,
        )
        .map_err(io_err(what()))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let data = self.recv(&mut buf).map_err(io_err(what()))?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= data.len() {
                let len =
                    u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                        as usize;
                let ty = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
                if len < NLMSG_HDRLEN || off + len > data.len() {
                    return Err(io_err(what())(io::Error::other(
                        "truncated netlink message",
                    )));
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(&data[off..off + len]);
                        return Err(io_err(what())(io::Error::from_raw_os_error(code)));
                    }
                    SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDRLEN + DIAG_MSG_MIN => {
                        let msg = &data[off + NLMSG_HDRLEN..off + len];
                        let mut raw = [0u8; 48];
                        raw.copy_from_slice(&msg[4..52]);
                        out.push(SockId {
                            family: msg[0],
                            raw,
                        });
                    }
                    _ => {}
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn destroy(&self, id: &SockId) -> io::Result<()> {
        self.request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, id.family, Some(id))?;
        let mut buf = [0u8; 512];
        let data = self.recv(&mut buf)?;
        if data.len() >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes([data[4], data[5]]) == NLMSG_ERROR {
            let code = error_code(data);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(code));
            }
        }
        Ok(())
    }
}

/// The errno of an NLMSG_ERROR message (its payload starts with a negative errno).
fn error_code(msg: &[u8]) -> i32 {
    if msg.len() < NLMSG_HDRLEN + 4 {
        return libc::EIO;
    }
    let e = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
    -e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::maps::{BackendAddr, InstalledFrontend};
    use crate::model::table::Frontend;

    #[test]
    fn udp_members_are_the_udp_frontends_backends() {
        let mut installed = Installed::default();
        let b = |s: &str, protocol| BackendAddr {
            addr: s.parse::<std::net::SocketAddr>().unwrap().into(),
            protocol,
        };
        installed
            .backends
            .insert(1, b("10.0.0.1:53", Protocol::Udp));
        installed
            .backends
            .insert(2, b("10.0.0.2:53", Protocol::Udp));
        installed
            .backends
            .insert(3, b("10.0.0.1:80", Protocol::Tcp));
        let fe = |port, protocol| Frontend {
            vip: "10.96.0.1".parse().unwrap(),
            port,
            protocol,
        };
        let installed_fe = |svc_id, slots: Vec<u32>| InstalledFrontend {
            svc_id,
            flags: 0,
            affinity_timeout_s: 0,
            slots,
        };
        installed
            .frontends
            .insert(fe(53, Protocol::Udp), installed_fe(5, vec![1, 2, 4]));
        installed
            .frontends
            .insert(fe(80, Protocol::Tcp), installed_fe(6, vec![3]));
        // Slot 4 names no installed backend; TCP frontends do not count.
        let expected: UdpMembers = [
            (5, "10.0.0.1:53".parse().unwrap()),
            (5, "10.0.0.2:53".parse().unwrap()),
        ]
        .into_iter()
        .collect();
        assert_eq!(udp_members(&installed), expected);
    }

    #[test]
    fn v4_mapped_peers_are_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:53".parse().unwrap();
        assert_eq!(normalize(mapped), "10.0.0.1:53".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:53".parse().unwrap();
        assert_eq!(normalize(v6), v6);
    }
}
