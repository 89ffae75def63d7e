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

use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use clusterip_common::{
    SockRevNat4Key, SockRevNat4Value, SockRevNat6Key, SockRevNat6Value, ip4_to_net, ip6_to_net,
    map_names, port_to_net,
};
use netlink_packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
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

fn peer_of(id: &SocketId) -> SocketAddr {
    SocketAddr::new(id.destination_address, id.destination_port)
}

/// The socket cookie of a sock_diag socket id: the kernel stores it as two native-endian
/// u32 halves, low half first (`sock_diag_save_cookie`), which is how the BPF programs' cookie
/// reads once joined.
fn cookie_of(id: &SocketId) -> u64 {
    let c = id.cookie;
    let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
    u64::from(lo) | (u64::from(hi) << 32)
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
    let nl = SockDiag::open().map_err(io_err("netlink sock_diag socket"))?;
    let mut destroyed = 0;
    for (family, all) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let victims: Vec<SocketId> = nl
            .dump(udp_request(family, all))
            .map_err(|e| io_err(format!("sock_diag dump of UDP family {family}"))(e.into()))?
            .into_iter()
            .filter(|id| {
                let peer = normalize(peer_of(id));
                rnat.service_of(cookie_of(id), peer)
                    .is_some_and(|svc| removed.contains(&(svc, peer)))
            })
            .collect();
        for id in victims {
            let (peer, cookie) = (peer_of(&id), cookie_of(&id));
            match nl.destroy(udp_request(family, id)) {
                Ok(()) => {
                    destroyed += 1;
                    debug!(%peer, cookie, "destroyed UDP socket of a removed backend");
                }
                // Closed meanwhile.
                Err(NlError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io_err(format!("SOCK_DESTROY to {peer}"))(e.into())),
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

/// A UDP sock_diag request (`struct inet_diag_req_v2`) for the socket(s) `id` names.
///
/// Every state bit is set, as `ss` does: the crate's [`StateFlags`] only names the TCP states
/// 1..=11, and the kernel matches a UDP socket's state (established when connected, close
/// when not) against this mask.
pub(crate) fn udp_request(family: u8, socket_id: SocketId) -> InetRequest {
    InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(u32::MAX),
        socket_id,
    }
}

/// How an exchange with sock_diag failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NlError {
    /// The socket failed, or its answer could not be decoded.
    #[error("{0}")]
    Socket(io::Error),
    /// The kernel answered with this error (`NLMSG_ERROR`).
    #[error("{0}")]
    Kernel(io::Error),
}

impl From<NlError> for io::Error {
    fn from(e: NlError) -> Self {
        match e {
            NlError::Socket(e) | NlError::Kernel(e) => e,
        }
    }
}

/// A NETLINK_SOCK_DIAG socket in the calling thread's network namespace.
///
/// The rust-netlink crates do the socket ([`netlink_sys`]), the framing and error/done
/// messages ([`netlink_packet_core`]) and the inet_diag request, socket id and response
/// layouts ([`netlink_packet_sock_diag`], whose [`SockDiagDestroy`] is the SOCK_DESTROY
/// message). What is left here: sending one request and reading its answers until the
/// acknowledgement, the dump's end or an error.
pub(crate) struct SockDiag {
    socket: Socket,
    seq: Cell<u32>,
}

impl SockDiag {
    pub(crate) fn open() -> io::Result<Self> {
        Ok(Self {
            socket: Socket::new(NETLINK_SOCK_DIAG)?,
            seq: Cell::new(1),
        })
    }

    /// Bounds each `recv` (the probe must never hang, whatever the kernel does).
    pub(crate) fn set_recv_timeout(&self, timeout: Duration) -> io::Result<()> {
        // The field types are inferred, not named: libc deprecates its musl `time_t` and
        // `suseconds_t` aliases (they change width with musl 1.2), and the image's agent is
        // built for musl.
        let tv = libc::timeval {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i32::MAX.into()),
            tv_usec: timeout.subsec_micros().into(),
        };
        // SAFETY: a valid option buffer of its size, on a socket we own; netlink-sys has no
        // setter for SO_RCVTIMEO.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SOCK_DIAG_BY_FAMILY with NLM_F_DUMP: the ids of the sockets `request` matches.
    pub(crate) fn dump(&self, request: InetRequest) -> Result<Vec<SocketId>, NlError> {
        self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            SockDiagMessage::InetRequest(request),
        )?;
        let mut out = Vec::new();
        self.answers(|answer| dump_answer(&mut out, answer))?;
        Ok(out)
    }

    /// SOCK_DESTROY of the socket `request` names exactly (5-tuple, interface, cookie),
    /// acknowledged.
    pub(crate) fn destroy(&self, request: InetRequest) -> Result<(), NlError> {
        self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            SockDiagDestroy::new(SockDiagMessage::InetRequest(request)),
        )?;
        self.answers(ack_answer)
    }

    fn send(&self, flags: u16, payload: impl NetlinkSerializable) -> Result<(), NlError> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        self.socket
            .send(&message(flags, seq, payload), 0)
            .map_err(NlError::Socket)?;
        Ok(())
    }

    /// Hands each answer to `each` until it returns a result.
    fn answers(
        &self,
        mut each: impl FnMut(Answer) -> Option<Result<(), NlError>>,
    ) -> Result<(), NlError> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(NlError::Socket)?;
            // Without MSG_TRUNC `n` is at most the buffer's length.
            if let Some(done) = each_message(&buf[..n.min(buf.len())], &mut each) {
                return done;
            }
        }
    }
}

/// One message from sock_diag, as netlink-packet-core decodes it.
type Answer = NetlinkPayload<SockDiagMessage>;

/// A netlink request: header (length and type filled in by the crate) and payload.
pub(super) fn message(flags: u16, seq: u32, payload: impl NetlinkSerializable) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// An answer to a dump: a socket (read on), its end, or the kernel's error.
fn dump_answer(out: &mut Vec<SocketId>, answer: Answer) -> Option<Result<(), NlError>> {
    match answer {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
            out.push(r.header.socket_id);
            None
        }
        // The dump's end. The error a dump may end with (DoneMessage::code) is not looked at,
        // as before the crates: the sockets listed so far are all there is to act on.
        other => ack_answer(other),
    }
}

/// An answer to a request: acknowledged (or done), or the kernel's error; anything else is
/// skipped.
fn ack_answer(answer: Answer) -> Option<Result<(), NlError>> {
    match answer {
        NetlinkPayload::Done(_) | NetlinkPayload::Error(ErrorMessage { code: None, .. }) => {
            Some(Ok(()))
        }
        NetlinkPayload::Error(e) => Some(Err(NlError::Kernel(e.to_io()))),
        _ => None,
    }
}

/// Hands each message of one datagram to `each` until it returns a result (`None`: read on).
fn each_message(
    mut data: &[u8],
    each: &mut impl FnMut(Answer) -> Option<Result<(), NlError>>,
) -> Option<Result<(), NlError>> {
    while !data.is_empty() {
        let msg = match NetlinkMessage::<SockDiagMessage>::deserialize(data) {
            Ok(msg) => msg,
            Err(e) => {
                return Some(Err(NlError::Socket(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e,
                ))));
            }
        };
        // `deserialize` checked it: at least a header, at most what is left.
        let len = msg.header.length as usize;
        if let Some(done) = each(msg.payload) {
            return Some(done);
        }
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
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

    /// A netlink message as the kernel frames it: header, payload, padding to 4 bytes.
    fn nlmsg(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&7u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    /// struct inet_diag_sockid as the kernel fills it (addresses zero-padded to 16 bytes; the
    /// cookie as two native-endian u32 halves, low first).
    fn sockid(src: SocketAddr, dst: SocketAddr, cookie: u64) -> Vec<u8> {
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                b
            }
            IpAddr::V6(a) => a.octets(),
        };
        let mut id = Vec::new();
        id.extend_from_slice(&src.port().to_be_bytes());
        id.extend_from_slice(&dst.port().to_be_bytes());
        id.extend_from_slice(&addr(src.ip()));
        id.extend_from_slice(&addr(dst.ip()));
        id.extend_from_slice(&3u32.to_ne_bytes()); // ifindex
        id.extend_from_slice(&(cookie as u32).to_ne_bytes());
        id.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        id
    }

    /// A SOCK_DIAG_BY_FAMILY answer: struct inet_diag_msg and the INET_DIAG_SHUTDOWN attribute
    /// a UDP dump always carries.
    fn diag_msg(family: u8, id: &[u8]) -> Vec<u8> {
        let mut p = vec![family, 1 /* established */, 0, 0];
        p.extend_from_slice(id);
        p.extend_from_slice(&[0u8; 20]); // expires, rqueue, wqueue, uid, inode
        p.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]); // nla: len 5, INET_DIAG_SHUTDOWN, 0
        nlmsg(20, 2 /* NLM_F_MULTI */, &p)
    }

    fn error(errno: i32) -> Vec<u8> {
        let mut p = (-errno).to_ne_bytes().to_vec();
        p.extend_from_slice(&nlmsg(21, 5, &[])[..16]); // the request's header
        nlmsg(2, 0, &p)
    }

    #[test]
    fn requests_are_inet_diag_req_v2_for_udp() {
        let dump = message(
            NLM_F_REQUEST | NLM_F_DUMP,
            9,
            SockDiagMessage::InetRequest(udp_request(AF_INET6, SocketId::new_v6())),
        );
        let mut expected = Vec::new();
        expected.extend_from_slice(&72u32.to_ne_bytes());
        expected.extend_from_slice(&20u16.to_ne_bytes()); // SOCK_DIAG_BY_FAMILY
        expected.extend_from_slice(&0x301u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
        expected.extend_from_slice(&9u32.to_ne_bytes()); // seq
        expected.extend_from_slice(&0u32.to_ne_bytes()); // pid
        expected.extend_from_slice(&[AF_INET6, 17, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0u8; 48]); // any socket
        assert_eq!(dump, expected);
    }

    /// The real kernel: a connected UDP socket is listed by the dump with its peer and cookie,
    /// and SOCK_DESTROY of that id aborts it (what the agent does in each pod's namespace).
    #[test]
    fn destroys_a_connected_udp_socket() {
        use std::net::UdpSocket;
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        sock.connect(peer).unwrap();
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: reading a u64 option into a u64 of that size.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let nl = SockDiag::open().unwrap();
        let ids = match nl.dump(udp_request(AF_INET, SocketId::new_v4())) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("skipping: no UDP sock_diag here ({e})");
                return;
            }
        };
        let id = ids
            .into_iter()
            .find(|id| cookie_of(id) == cookie)
            .expect("the dump lists our socket");
        assert_eq!(peer_of(&id), peer);
        match nl.destroy(udp_request(AF_INET, id)) {
            Ok(()) => {}
            Err(NlError::Kernel(e))
                if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) =>
            {
                eprintln!("skipping: SOCK_DESTROY refused here ({e})");
                return;
            }
            Err(e) => panic!("SOCK_DESTROY: {e}"),
        }
        // Aborted and disconnected: the next send finds either (as in tests/udp_stale.rs).
        let e = sock.send(b"x").unwrap_err();
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::ECONNABORTED | libc::EDESTADDRREQ)
            ),
            "{e}"
        );
        // Gone: a second destroy finds nothing.
        let again = nl.destroy(udp_request(AF_INET, {
            let mut id = SocketId::new_v4();
            id.cookie = cookie.to_ne_bytes();
            id
        }));
        assert!(again.is_err());
    }

    /// What the dump lists is what SOCK_DESTROY gets back, byte for byte (the kernel matches
    /// the 5-tuple, interface and cookie), for both families.
    #[test]
    fn dumped_sockets_are_destroyed_by_the_same_id() {
        let cases = [
            (
                AF_INET,
                "10.0.0.5:40000",
                "10.96.0.10:53",
                0x1122_3344_5566_7788u64,
            ),
            (AF_INET6, "[fd00::5]:40000", "[::ffff:10.1.2.3]:53", 42),
        ];
        for (family, src, dst, cookie) in cases {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let raw = sockid(src, dst, cookie);
            let mut datagram = diag_msg(family, &raw);
            datagram.extend(diag_msg(
                family,
                &sockid(src, "10.0.0.9:1".parse().unwrap(), 1),
            ));
            datagram.extend(nlmsg(3, 2, &0i32.to_ne_bytes()));
            let mut ids = Vec::new();
            let end = each_message(&datagram, &mut |a| dump_answer(&mut ids, a));
            assert!(matches!(end, Some(Ok(()))), "{end:?}");
            assert_eq!(ids.len(), 2);
            assert_eq!(peer_of(&ids[0]), dst);
            assert_eq!(cookie_of(&ids[0]), cookie);
            let destroy = message(
                NLM_F_REQUEST | NLM_F_ACK,
                1,
                SockDiagDestroy::new(SockDiagMessage::InetRequest(udp_request(
                    family,
                    ids[0].clone(),
                ))),
            );
            assert_eq!(u16::from_ne_bytes([destroy[4], destroy[5]]), 21);
            assert_eq!(
                &destroy[16..24],
                &[family, 17, 0, 0, 0xff, 0xff, 0xff, 0xff]
            );
            assert_eq!(&destroy[24..], raw.as_slice());
        }
    }

    #[test]
    fn kernel_errors_and_acks() {
        let answer = |datagram: Vec<u8>| each_message(&datagram, &mut ack_answer);
        assert!(matches!(answer(error(0)), Some(Ok(()))));
        assert!(matches!(
            answer(error(libc::ENOENT)),
            Some(Err(NlError::Kernel(e))) if e.raw_os_error() == Some(libc::ENOENT)
        ));
        // A dump's error ends it.
        let mut ids = Vec::new();
        let end = each_message(&error(libc::EOPNOTSUPP), &mut |a| dump_answer(&mut ids, a));
        assert!(
            matches!(end, Some(Err(NlError::Kernel(e))) if e.raw_os_error() == Some(libc::EOPNOTSUPP))
        );
        // Nothing conclusive yet: read on.
        assert!(answer(Vec::new()).is_none());
        assert!(answer(nlmsg(1 /* NOOP */, 0, &[])).is_none());
    }

    #[test]
    fn malformed_answers_are_errors() {
        let mut truncated = error(libc::ENOENT);
        truncated[0..4].copy_from_slice(&64u32.to_ne_bytes()); // longer than the datagram
        assert!(matches!(
            each_message(&truncated, &mut ack_answer),
            Some(Err(NlError::Socket(_)))
        ));
        let short = diag_msg(AF_INET, &[0u8; 8]);
        let mut ids = Vec::new();
        assert!(matches!(
            each_message(&short, &mut |a| dump_answer(&mut ids, a)),
            Some(Err(NlError::Socket(_)))
        ));
    }

    #[test]
    fn v4_mapped_peers_are_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:53".parse().unwrap();
        assert_eq!(normalize(mapped), "10.0.0.1:53".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:53".parse().unwrap();
        assert_eq!(normalize(v6), v6);
    }
}
