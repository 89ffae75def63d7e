//! Raw bpf(2) calls on maps by file descriptor and byte buffers, for what aya's typed maps
//! cannot do: reading a pinned map's definition without knowing its key and value types, and
//! copying entries between two maps of any layout (see `migrate`). Types and command numbers
//! come from aya-obj's kernel bindings.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_info};

/// BPF_NOEXIST: create only.
pub const NOEXIST: u64 = 1;
/// BPF_ANY: create or update.
pub const ANY: u64 = 0;

fn zeroed() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all zeroes is its documented default.
    unsafe { mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a live bpf_attr and its size is passed; the kernel reads (and for some
    // commands writes) only within it and within the buffers its fields point at, which the
    // callers keep alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the object pinned at `path`; `Ok(None)` when nothing is pinned there.
pub fn obj_get(path: &Path) -> io::Result<Option<OwnedFd>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = zeroed();
    // SAFETY: union access; the obj member is what BPF_OBJ_GET reads.
    let obj = unsafe { &mut attr.__bindgen_anon_4 };
    obj.pathname = c_path.as_ptr() as u64;
    match bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `bpf_map_info` of the map behind `fd`.
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<bpf_map_info> {
    // SAFETY: plain C struct of integers.
    let mut info: bpf_map_info = unsafe { mem::zeroed() };
    let mut attr = zeroed();
    // SAFETY: union access; the info member is what BPF_OBJ_GET_INFO_BY_FD reads.
    let by_fd = unsafe { &mut attr.info };
    by_fd.bpf_fd = fd.as_raw_fd() as u32;
    by_fd.info_len = mem::size_of::<bpf_map_info>() as u32;
    by_fd.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

fn elem_attr(fd: BorrowedFd<'_>, key: Option<&[u8]>, value_or_next: u64, flags: u64) -> bpf_attr {
    let mut attr = zeroed();
    // SAFETY: union access; the map-element member is what the element commands read.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = fd.as_raw_fd() as u32;
    elem.key = key.map_or(0, |k| k.as_ptr() as u64);
    elem.__bindgen_anon_1.value = value_or_next;
    elem.flags = flags;
    attr
}

/// The key after `key` (the first key for None) into `next`; false at the end.
pub fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem_attr(fd, key, next.as_mut_ptr() as u64, 0);
    match bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The value of `key` into `value`; false when there is none.
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem_attr(fd, Some(key), value.as_mut_ptr() as u64, 0);
    match bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `key` → `value` with `flags` ([`ANY`], [`NOEXIST`]).
pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = elem_attr(fd, Some(key), value.as_ptr() as u64, flags);
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}
