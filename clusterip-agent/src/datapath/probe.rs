//! What the running kernel offers the datapath: `clusterip-agent probe`, and the feature set
//! [`Datapath::load`](crate::datapath::Datapath::load) decides its fallbacks from.
//!
//! Every probe is side-effect free: it creates a map or loads a tiny program and closes it,
//! asks sock_diag to destroy a socket that does not exist, or reads a file. Nothing is attached
//! to a cgroup or interface.
//!
//! Program types, map types and helpers are aya's probes (`aya::sys::is_*_supported`, what
//! `bpftool feature probe` and libbpf do). What aya cannot answer stays here, each saying why:
//! the attach type of each sock_addr hook, TCX links, BPF_PROG_TEST_RUN and the
//! `bpf_sock_destroy` kfunc; sock_diag SOCK_DESTROY goes through [`super::sockdiag`].

use std::fs;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};
use aya_obj::generated::{
    BPF_ALU64, BPF_EXIT, BPF_JMP, BPF_K, BPF_MOV, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn,
    bpf_prog_type,
};
use netlink_packet_sock_diag::constants::AF_INET;
use netlink_packet_sock_diag::inet::SocketId;
use tracing::debug;

use crate::datapath::sockdiag::{NlError, SockDiag, udp_request};

/// `XDP_PASS` (enum xdp_action, which aya-obj does not generate).
const XDP_PASS: u32 = 2;

/// The cgroup sock_addr hooks the socket-level datapath attaches, with their attach types.
pub const SOCK_ADDR_HOOKS: [(&str, bpf_attach_type); 8] = [
    ("connect4", bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    ("connect6", bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    ("sendmsg4", bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    ("sendmsg6", bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
    ("recvmsg4", bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    ("recvmsg6", bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    (
        "getpeername4",
        bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
    ),
    (
        "getpeername6",
        bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME,
    ),
];

/// What was found, as booleans: what [`Datapath::load`](crate::datapath::Datapath::load)
/// decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub bpf_syscall: bool,
    pub btf: bool,
    pub cgroup2: bool,
    /// Hooks of [`SOCK_ADDR_HOOKS`] the kernel refused (empty: all there).
    pub missing_sock_addr_hooks: Vec<&'static str>,
    pub set_retval: bool,
    pub socket_cookie: bool,
    pub netns_cookie: bool,
    pub tcx: bool,
    pub sched_cls: bool,
    pub xdp: bool,
    pub lru_hash: bool,
    pub prog_test_run: bool,
    pub sock_destroy_kfunc: bool,
    pub sock_diag_destroy: Result<(), String>,
}

impl Features {
    /// Probes the running kernel (needs root for the bpf probes; without it they all read as
    /// missing, with the reason in [`report`]).
    pub fn detect() -> Self {
        // Creating the simplest map is what "bpf(2) works for us" means.
        let bpf_syscall = found("array map", is_map_supported(MapType::Array));
        let btf = Path::new("/sys/kernel/btf/vmlinux").is_file();
        let cgroup2 = crate::datapath::default_cgroup_root().is_ok();
        let missing_sock_addr_hooks = SOCK_ADDR_HOOKS
            .iter()
            .filter(|(_, attach)| {
                prog_load(
                    bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                    *attach as u32,
                    1,
                )
                .is_err()
            })
            .map(|(name, _)| *name)
            .collect();
        // aya loads its cgroup sock_addr helper probe with expected_attach_type
        // BPF_CGROUP_INET4_CONNECT, the attach type the hand-written probe used: connect4,
        // whose refusals bpf_set_retval turns into ECONNREFUSED, and which calls both cookies.
        // Helpers are allowed per attach type, so this is the same question.
        let sock_addr_helper = |what: &str, helper: BpfHelper| {
            found(
                what,
                is_helper_supported(ProgramType::CgroupSockAddr, helper),
            )
        };
        Self {
            bpf_syscall,
            btf,
            cgroup2,
            missing_sock_addr_hooks,
            set_retval: sock_addr_helper("bpf_set_retval", BpfHelper::BPF_FUNC_set_retval),
            socket_cookie: sock_addr_helper(
                "bpf_get_socket_cookie",
                BpfHelper::BPF_FUNC_get_socket_cookie,
            ),
            netns_cookie: sock_addr_helper(
                "bpf_get_netns_cookie",
                BpfHelper::BPF_FUNC_get_netns_cookie,
            ),
            tcx: probe_tcx(),
            sched_cls: found(
                "sched_cls",
                is_program_supported(ProgramType::SchedClassifier),
            ),
            xdp: found("xdp", is_program_supported(ProgramType::Xdp)),
            lru_hash: found("lru_hash", is_map_supported(MapType::LruHash)),
            prog_test_run: probe_test_run(),
            sock_destroy_kfunc: btf_has_name("bpf_sock_destroy"),
            sock_diag_destroy: probe_sock_diag_destroy(),
        }
    }

    /// Socket-level load balancing can be loaded: cgroup v2, all eight hooks, the cookies.
    pub fn socket_lb(&self) -> bool {
        self.bpf_syscall
            && self.cgroup2
            && self.missing_sock_addr_hooks.is_empty()
            && self.socket_cookie
            && self.netns_cookie
            && self.lru_hash
    }

    /// Why the datapath cannot run at all, if it cannot.
    pub fn fatal(&self) -> Option<String> {
        if !self.bpf_syscall {
            return Some(
                "the bpf() syscall is not available (not root, or CONFIG_BPF_SYSCALL unset): \
                 run as root on a kernel with BPF"
                    .into(),
            );
        }
        if !self.lru_hash {
            return Some("BPF LRU hash maps are missing (kernel < 4.10?)".into());
        }
        if !self.socket_lb() && !self.sched_cls && !self.xdp {
            return Some(
                "neither the socket hooks nor TC nor XDP programs can be loaded on this kernel"
                    .into(),
            );
        }
        None
    }

    /// One line per feature: name, found, what it is, and what the agent does about it.
    pub fn report(&self) -> Vec<FeatureLine> {
        let mut out = Vec::new();
        let mut add = |name: &str, found: bool, what: &str, action: String| {
            out.push(FeatureLine {
                name: name.to_string(),
                found,
                what: what.to_string(),
                action,
            })
        };
        add(
            "bpf_syscall",
            self.bpf_syscall,
            "bpf(2): maps and programs",
            if self.bpf_syscall {
                "used".into()
            } else {
                "nothing can run (needs root and CONFIG_BPF_SYSCALL)".into()
            },
        );
        add(
            "btf",
            self.btf,
            "kernel BTF (/sys/kernel/btf/vmlinux)",
            if self.btf {
                "used".into()
            } else {
                "the object's BTF maps may not load (CONFIG_DEBUG_INFO_BTF)".into()
            },
        );
        add(
            "cgroup2",
            self.cgroup2,
            "cgroup v2 mounted",
            if self.cgroup2 {
                "socket hooks attach to it".into()
            } else {
                "no socket-level load balancing: use --socket-lb=false with --tc-iface".into()
            },
        );
        for (hook, _) in SOCK_ADDR_HOOKS {
            let found = !self.missing_sock_addr_hooks.contains(&hook);
            add(
                &format!("sock_addr_{hook}"),
                found,
                "cgroup sock_addr hook",
                if found {
                    "used".into()
                } else {
                    "no socket-level load balancing: use --socket-lb=false with --tc-iface".into()
                },
            );
        }
        add(
            "socket_cookie",
            self.socket_cookie,
            "bpf_get_socket_cookie in sock_addr hooks",
            if self.socket_cookie {
                "used".into()
            } else {
                "no socket-level load balancing".into()
            },
        );
        add(
            "netns_cookie",
            self.netns_cookie,
            "bpf_get_netns_cookie in sock_addr hooks (5.7)",
            if self.netns_cookie {
                "used".into()
            } else {
                "no socket-level load balancing".into()
            },
        );
        add(
            "bpf_set_retval",
            self.set_retval,
            "bpf_set_retval in sock_addr hooks (5.18)",
            if self.set_retval {
                "used: a refused connect() fails with ECONNREFUSED".into()
            } else {
                SET_RETVAL_FALLBACK.into()
            },
        );
        add(
            "lru_hash",
            self.lru_hash,
            "BPF_MAP_TYPE_LRU_HASH",
            if self.lru_hash {
                "used (affinity, reverse NAT, conntrack)".into()
            } else {
                "nothing can run".into()
            },
        );
        add(
            "tcx",
            self.tcx,
            "TCX links (6.6)",
            if self.tcx {
                "--tc-iface attaches with pinned TCX links".into()
            } else {
                TCX_FALLBACK.into()
            },
        );
        add(
            "tc_clsact",
            self.sched_cls,
            "TC (sched_cls) programs, clsact qdisc over netlink",
            if !self.sched_cls {
                "no --tc-iface".into()
            } else if self.tcx {
                "fallback, not needed".into()
            } else {
                format!("used for --tc-iface ({})", clsact_modules())
            },
        );
        add(
            "xdp",
            self.xdp,
            "XDP programs",
            if self.xdp {
                "--xdp-iface: native (driver) mode where the driver has it, else generic (SKB), \
                 decided per interface"
                    .into()
            } else {
                "no --xdp-iface".into()
            },
        );
        add(
            "prog_test_run",
            self.prog_test_run,
            "BPF_PROG_TEST_RUN",
            if self.prog_test_run {
                "not used by the agent; tests run TC/XDP programs on packets with it".into()
            } else {
                "not used by the agent; the packet tests cannot run".into()
            },
        );
        add(
            "bpf_sock_destroy",
            self.sock_destroy_kfunc,
            "bpf_sock_destroy kfunc (6.5)",
            "not used: stale UDP sockets are destroyed through sock_diag on every kernel".into(),
        );
        let (found, action) = match &self.sock_diag_destroy {
            Ok(()) => (
                true,
                "used: connected UDP sockets to a removed backend are destroyed".to_string(),
            ),
            Err(why) => (false, format!("{why}; {SOCK_DESTROY_FALLBACK}")),
        };
        add(
            "sock_diag_destroy",
            found,
            "sock_diag SOCK_DESTROY for UDP (CONFIG_INET_DIAG_DESTROY)",
            action,
        );
        out
    }
}

/// The warn lines of the fallbacks (one per feature the agent does without).
pub const SET_RETVAL_FALLBACK: &str = "bpf_set_retval is missing (kernel < 5.18): a connect() \
     to a service without endpoints (or to an undefined port of a VIP) fails with EPERM instead \
     of ECONNREFUSED";
pub const TCX_FALLBACK: &str = "TCX is missing (kernel < 6.6): --tc-iface attaches with \
     netlink on a clsact qdisc; those filters are not pinned (they stay after the agent exits \
     and a restarted agent replaces them)";
pub const SOCK_DESTROY_FALLBACK: &str = "connected UDP sockets keep sending to a removed backend \
     until the application reconnects";

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureLine {
    pub name: String,
    pub found: bool,
    pub what: String,
    pub action: String,
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Which of the clsact modules are loaded or built in (the guest insmods them; a normal
/// system autoloads them on first use).
fn clsact_modules() -> String {
    let release = kernel_release();
    let builtin =
        fs::read_to_string(format!("/lib/modules/{release}/modules.builtin")).unwrap_or_default();
    ["sch_ingress", "cls_bpf"]
        .iter()
        .map(|m| {
            let state = if Path::new("/sys/module").join(m).exists() {
                "loaded"
            } else if builtin.contains(&format!("/{m}.ko")) {
                "built in"
            } else {
                "module, loaded on first use"
            };
            format!("{m} {state}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An answer of aya's probes. One that could not tell (EPERM without root, ENOSYS without
/// CONFIG_BPF_SYSCALL) reads as missing, as the hand-written probes read any failure.
fn found<E: std::fmt::Debug>(what: &str, answer: Result<bool, E>) -> bool {
    answer.unwrap_or_else(|e| {
        // Debug: aya's errors display the call only, the errno is in their source.
        debug!(probe = what, error = ?e, "feature probe failed: reading it as missing");
        false
    })
}

// ---- raw bpf(2) probes: what aya's probes cannot answer --------------------------------------
//
// aya's `is_program_supported` loads each program type with one fixed expected_attach_type (for
// sock_addr: BPF_CGROUP_INET4_CONNECT) and keeps its loader private, it has no TCX probe (its
// `SchedClassifier::attach` picks TCX by kernel version, not by asking), and its test run needs
// a program loaded from an eBPF object, which `probe` must work without. The bpf_attr layout,
// the enums and the opcodes are still the kernel's, through aya-obj's generated bindings.

/// bpf(2) with a command returning a new fd.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live bpf_attr of the size passed; the kernel reads the fields of
    // `cmd` and checks that the rest is zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: every command used here returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// A zeroed bpf_attr: every command reads its fields and wants the rest zero.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: all zeros is a valid bpf_attr (a union of plain integers).
    unsafe { mem::zeroed() }
}

/// `r0 = ret; exit`.
fn prog_ret(ret: i32) -> [bpf_insn; 2] {
    // SAFETY: all zeros is a valid bpf_insn (registers r0, no offset).
    let mut insns: [bpf_insn; 2] = unsafe { mem::zeroed() };
    insns[0].code = (BPF_ALU64 | BPF_MOV | BPF_K) as u8;
    insns[0].imm = ret;
    insns[1].code = (BPF_JMP | BPF_EXIT) as u8;
    insns
}

/// BPF_PROG_LOAD of `r0 = ret; exit` as `prog_type` for `expected_attach_type`. Per sock_addr
/// hook this is the only way to ask: a kernel refuses an attach type it does not know at load
/// (sendmsg 4.18, recvmsg 5.2, getpeername 5.8), and aya only asks for connect4.
fn prog_load(prog_type: bpf_prog_type, expected_attach_type: u32, ret: i32) -> io::Result<OwnedFd> {
    let insns = prog_ret(ret);
    let license = c"GPL";
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_PROG_LOAD member of a zeroed union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = prog_type as u32;
    load.insn_cnt = insns.len() as u32;
    load.insns = insns.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    load.expected_attach_type = expected_attach_type;
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// TCX: BPF_LINK_CREATE of a TC program with BPF_TCX_INGRESS on ifindex 0. A kernel with TCX
/// looks the device up and fails with ENODEV; one without refuses the attach type (EINVAL).
fn probe_tcx() -> bool {
    let tcx_ingress = bpf_attach_type::BPF_TCX_INGRESS as u32;
    let Ok(prog) = prog_load(bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS, tcx_ingress, 0) else {
        return false;
    };
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_LINK_CREATE member of a zeroed union (target_ifindex stays 0).
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.attach_type = tcx_ingress;
    match bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) {
        Err(e) => e.raw_os_error() == Some(libc::ENODEV),
        // Cannot happen (no device 0); the link goes with the fd.
        Ok(_link) => true,
    }
}

/// Runs an XDP program returning XDP_PASS on a 64-byte packet.
fn probe_test_run() -> bool {
    let Ok(prog) = prog_load(bpf_prog_type::BPF_PROG_TYPE_XDP, 0, XDP_PASS as i32) else {
        return false;
    };
    let data = [0u8; 64];
    let mut attr = zeroed_attr();
    // SAFETY: writing the BPF_PROG_TEST_RUN member of a zeroed union.
    let test = unsafe { &mut attr.test };
    test.prog_fd = prog.as_raw_fd() as u32;
    test.data_size_in = data.len() as u32;
    test.data_in = data.as_ptr() as u64;
    test.repeat = 1;
    // TEST_RUN returns 0, not an fd.
    // SAFETY: as in bpf(): a live bpf_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_TEST_RUN as libc::c_long,
            &raw mut attr,
            mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    // SAFETY: reading back the member written above.
    rc == 0 && unsafe { attr.test.retval } == XDP_PASS
}

/// Whether `name` is a string of the kernel's BTF (functions, kfuncs included, are named there).
/// aya has no kfunc probe; `aya::Btf::from_sys_fs` could look the function up, but parses all of
/// vmlinux's BTF (megabytes, again after the loader) for a feature the agent only reports.
fn btf_has_name(name: &str) -> bool {
    let Ok(btf) = fs::read("/sys/kernel/btf/vmlinux") else {
        return false;
    };
    let mut needle = Vec::with_capacity(name.len() + 2);
    needle.push(0);
    needle.extend_from_slice(name.as_bytes());
    needle.push(0);
    btf.windows(needle.len()).any(|w| w == needle.as_slice())
}

// ---- sock_diag SOCK_DESTROY ---------------------------------------------------------------

/// The probe's sock_diag requests: UDP over IPv4, ports 1 to 1 between unspecified addresses,
/// no cookie (INET_DIAG_NOCOOKIE): a socket that does not exist, so the dump lists nothing
/// and the destroy finds nothing.
fn probe_socket_id() -> SocketId {
    SocketId {
        source_port: 1,
        destination_port: 1,
        cookie: [0xff; 8],
        ..SocketId::new_v4()
    }
}

/// A sock_diag socket that gives up after 2 s without an answer.
fn probe_socket() -> Result<SockDiag, NlError> {
    let nl = SockDiag::open().map_err(NlError::Socket)?;
    nl.set_recv_timeout(Duration::from_secs(2))
        .map_err(NlError::Socket)?;
    Ok(nl)
}

/// SOCK_DESTROY of a UDP socket that does not exist: ENOENT when the kernel has it (after a
/// dump showed that UDP sock_diag is there, which also answers ENOENT when missing),
/// EOPNOTSUPP without CONFIG_INET_DIAG_DESTROY.
fn probe_sock_diag_destroy() -> Result<(), String> {
    let request = || udp_request(AF_INET, probe_socket_id());
    match probe_socket().and_then(|nl| nl.dump(request())) {
        Ok(_) => {}
        Err(NlError::Kernel(e)) => {
            return Err(format!(
                "UDP sock_diag is missing ({e}; CONFIG_INET_UDP_DIAG, module udp_diag)"
            ));
        }
        Err(NlError::Socket(e)) => return Err(format!("sock_diag netlink: {e}")),
    }
    match probe_socket().and_then(|nl| nl.destroy(request())) {
        Ok(()) => Ok(()),
        Err(NlError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(NlError::Kernel(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            Err("SOCK_DESTROY is not supported (CONFIG_INET_DIAG_DESTROY unset)".into())
        }
        Err(NlError::Kernel(e)) => Err(format!("SOCK_DESTROY: {e}")),
        Err(NlError::Socket(e)) => Err(format!("sock_diag netlink: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_instructions() {
        // SAFETY: bpf_insn is 8 plain bytes.
        let bytes = |i: bpf_insn| unsafe { mem::transmute::<bpf_insn, [u8; 8]>(i) };
        let [mov, exit] = prog_ret(1);
        // r0 = 1 -> b7 00 0000 01000000
        assert_eq!(bytes(mov), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(bytes(exit), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(prog_ret(-1)[0])[4..], [0xff; 4]);
    }

    #[test]
    fn attach_types_are_the_kernels() {
        let attach = |hook| SOCK_ADDR_HOOKS.iter().find(|(h, _)| *h == hook).unwrap().1 as u32;
        assert_eq!(attach("connect4"), 10);
        assert_eq!(attach("sendmsg6"), 15);
        assert_eq!(attach("recvmsg4"), 19);
        assert_eq!(attach("getpeername6"), 30);
        assert_eq!(bpf_attach_type::BPF_TCX_INGRESS as u32, 46);
    }

    /// The SOCK_DESTROY request of the probe, byte for byte as the hand-written probe sent it:
    /// nlmsghdr, then inet_diag_req_v2 for UDP over IPv4 with every state, sport 1, dport 1,
    /// no addresses, no interface, INET_DIAG_NOCOOKIE.
    #[test]
    fn sock_destroy_probe_request() {
        use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
        use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
        let request = crate::datapath::sockdiag::message(
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            SockDiagDestroy::new(SockDiagMessage::InetRequest(udp_request(
                AF_INET,
                probe_socket_id(),
            ))),
        );
        let mut expected = Vec::new();
        expected.extend_from_slice(&72u32.to_ne_bytes());
        expected.extend_from_slice(&21u16.to_ne_bytes()); // SOCK_DESTROY
        expected.extend_from_slice(&5u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
        expected.extend_from_slice(&1u32.to_ne_bytes()); // seq
        expected.extend_from_slice(&0u32.to_ne_bytes()); // pid
        expected.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_UDP as u8, 0, 0]);
        expected.extend_from_slice(&u32::MAX.to_ne_bytes());
        expected.extend_from_slice(&[0, 1, 0, 1]);
        expected.extend_from_slice(&[0u8; 36]);
        expected.extend_from_slice(&[0xff; 8]);
        assert_eq!(request, expected);
    }

    #[test]
    fn fatal_only_when_nothing_can_run() {
        let all = Features {
            bpf_syscall: true,
            btf: true,
            cgroup2: true,
            missing_sock_addr_hooks: vec![],
            set_retval: false,
            socket_cookie: true,
            netns_cookie: true,
            tcx: false,
            sched_cls: true,
            xdp: true,
            lru_hash: true,
            prog_test_run: true,
            sock_destroy_kfunc: false,
            sock_diag_destroy: Err("x".into()),
        };
        assert!(all.socket_lb());
        assert_eq!(all.fatal(), None);
        let no_bpf = Features {
            bpf_syscall: false,
            ..all.clone()
        };
        assert!(no_bpf.fatal().is_some_and(|w| w.contains("bpf()")));
        let nothing = Features {
            cgroup2: false,
            sched_cls: false,
            xdp: false,
            ..all.clone()
        };
        assert!(nothing.fatal().is_some());
        let lines = all.report();
        let set_retval = lines.iter().find(|l| l.name == "bpf_set_retval").unwrap();
        assert!(!set_retval.found && set_retval.action.contains("EPERM"));
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.name.starts_with("sock_addr_"))
                .count(),
            8
        );
    }

    /// On the machine the tests run on (root, a kernel with BPF): what a 5.18+ kernel has.
    #[test]
    fn detects_this_kernel() {
        let f = Features::detect();
        if !f.bpf_syscall {
            eprintln!("skipping: no bpf() here (not root?)");
            return;
        }
        let (major, minor) = {
            let r = kernel_release();
            let mut it = r.split(|c: char| !c.is_ascii_digit());
            let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            (major, minor)
        };
        assert!(
            f.lru_hash && f.sched_cls && f.xdp && f.prog_test_run,
            "{f:?}"
        );
        assert!(f.missing_sock_addr_hooks.is_empty(), "{f:?}");
        assert_eq!(f.set_retval, (major, minor) >= (5, 18), "{f:?}");
        assert_eq!(f.tcx, (major, minor) >= (6, 6), "{f:?}");
        assert_eq!(f.fatal(), None);
    }
}
