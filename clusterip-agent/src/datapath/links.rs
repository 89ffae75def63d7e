//! Pinned BPF links: open, inspect, update and detach them.
//!
//! Minimal bpf(2) wrappers for what aya does not expose: opening a pinned link as a raw fd,
//! its type and interface, BPF_LINK_UPDATE and BPF_LINK_DETACH (which detaches a link even
//! while another process still holds it).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::loader::{DatapathError, path_cstring};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// What `bpf_link_info` says about a per-interface link.
#[derive(Clone, Copy, Debug)]
pub(super) struct LinkInfoLite {
    pub(super) link_type: u32,
    /// tcx.ifindex / xdp.ifindex (0 once the interface is gone).
    pub(super) ifindex: u32,
}

pub(super) fn link_info(fd: &OwnedFd) -> io::Result<LinkInfoLite> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union aligned to 8 whose
    // tcx and xdp members start with the ifindex (offset 16).
    let mut buf = [0u64; 16];
    let attr = InfoByFdAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&buf) as u32,
        info: buf.as_mut_ptr() as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw const attr).cast(),
        size_of::<InfoByFdAttr>(),
    )?;
    Ok(LinkInfoLite {
        link_type: buf[0] as u32,
        ifindex: buf[2] as u32,
    })
}

/// Atomically makes the link behind `link` run `prog_fd` instead of its program.
pub(super) fn link_update(link: &OwnedFd, prog_fd: std::os::fd::RawFd) -> io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog_fd as u32,
        ..Default::default()
    };
    bpf(
        BPF_LINK_UPDATE,
        (&raw const attr).cast(),
        size_of::<LinkUpdateAttr>(),
    )
    .map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: `attr` points at a live #[repr(C)] struct of `size` bytes for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens whatever is pinned at `path`; `Ok(None)` when nothing is.
pub(super) fn open_pin(path: &Path) -> io::Result<Option<OwnedFd>> {
    let c_path = path_cstring(path)?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..Default::default()
    };
    match bpf(
        BPF_OBJ_GET,
        (&raw const attr).cast(),
        size_of::<ObjGetAttr>(),
    ) {
        // SAFETY: the kernel returned a new fd that we now own.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens and unpins the link at `path`; `Ok(None)` when nothing is pinned there.
pub(super) fn take_pinned_link(path: &Path) -> Result<Option<OwnedFd>, DatapathError> {
    let Some(fd) = open_pin(path).map_err(|e| DatapathError::io(path, e))? else {
        return Ok(None);
    };
    match fs::remove_file(path) {
        Ok(()) => Ok(Some(fd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(fd)),
        Err(e) => Err(DatapathError::io(path, e)),
    }
}

/// Detaches the link behind `fd` (it was pinned at `path`). Failures are logged: the link is
/// unpinned already, so it goes away once the last holder closes it.
pub(super) fn detach_link(path: &Path, fd: &OwnedFd) {
    let attr = LinkDetachAttr {
        link_fd: fd.as_raw_fd() as u32,
    };
    if let Err(e) = bpf(
        BPF_LINK_DETACH,
        (&raw const attr).cast(),
        size_of::<LinkDetachAttr>(),
    ) {
        tracing::warn!(link = %path.display(), "BPF_LINK_DETACH failed: {e}");
    }
}
