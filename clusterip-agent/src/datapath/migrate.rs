//! Pinned maps whose definition changed (another size, another key or value layout) are
//! migrated, not refused: a restarted agent never needs a manual `cleanup`.
//!
//! The loader adopts a pinned map only when its type, key and value sizes, entries and flags
//! are exactly what this agent wants. For every other one, before the object is loaded:
//! 1. [`Migration::prepare`] moves the pin aside to `<name>_old` (the programs attached now
//!    keep using that map: they hold it, not its name), so the loader creates the map anew;
//! 2. after the load, [`Migration::copy`] copies every entry the new map can take (same type,
//!    key and value sizes; arrays up to the smaller size) — the service table, backends,
//!    Maglev tables and all flow and socket state;
//! 3. the agent fills the new maps (its first sync) and only then attaches the new programs,
//!    replacing the old ones atomically;
//! 4. [`Migration::copy`] runs again over the maps the programs write (conntrack, reverse NAT,
//!    affinity, UDP flows), create-only, for entries the old programs made after the first
//!    copy; [`Migration::finish`] removes the `_old` pins, and the old maps go with their last
//!    user.
//!
//! A map whose key or value layout changed cannot be copied: the agent rewrites what it owns
//! (services, backends, Maglev tables, settings) and the programs' state starts afresh (an open
//! TCP connection then keeps working at socket level; a per-packet flow is rebuilt by its next
//! packet only for the forward direction). A layout change must therefore change a key or
//! value size, or the map's name (the sizes are asserted in `clusterip-common`).
//!
//! An agent that dies half way leaves `<name>_old` pins: the next one treats them as sources
//! again, since the programs still attached may be using them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya_obj::generated::bpf_map_type;
use clusterip_common::map_names;
use serde::Serialize;

use super::sizing::Sizing;
use super::sys;

/// Suffix of a pin moved aside while its map is replaced (bpffs refuses dots in names).
pub const OLD_SUFFIX: &str = "_old";

/// BPF_F_RDONLY and BPF_F_WRONLY describe a file descriptor, not the map: older kernels
/// report them in the map's flags.
const FD_MODE_FLAGS: u32 = (1 << 3) | (1 << 4);

/// Map types whose keys are indices (copied index by index, always present).
const ARRAYS: [u32; 2] = [
    bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
    bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
];
/// Map types whose values are one per possible CPU.
const PER_CPU: [u32; 3] = [
    bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
    bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH as u32,
    bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH as u32,
];

/// Maps the eBPF programs write: copied a second time after the new programs are attached.
const PROGRAM_STATE: [&str; 6] = [
    map_names::CONNTRACK_V4,
    map_names::CONNTRACK_V6,
    map_names::SOCK_REVNAT_V4,
    map_names::SOCK_REVNAT_V6,
    map_names::AFFINITY,
    map_names::SOCK_FLOWS,
];

/// What defines a map for adoption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDef {
    /// Whether entries of a map defined as `self` fit a map defined as `to`.
    fn copies_to(&self, to: &MapDef) -> bool {
        self.map_type == to.map_type
            && self.key_size == to.key_size
            && self.value_size == to.value_size
    }
}

impl fmt::Display for MapDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The definition of every pinned map of the datapath, with this agent's sizes. Stated here
/// from the shared types rather than parsed out of the object at every start (a debug build
/// takes a second for that); `definitions_match_the_object` checks that both agree.
pub fn wanted(sizing: &Sizing) -> BTreeMap<String, MapDef> {
    use aya_obj::generated::bpf_map_type::*;
    use clusterip_common::*;
    const NO_PREALLOC: u32 = 1;
    fn def<K, V>(map_type: bpf_map_type, entries: u32, flags: u32) -> MapDef {
        MapDef {
            map_type: map_type as u32,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries: entries,
            flags,
        }
    }
    let n = |name: &str| sizing.entries(name).unwrap_or(1);
    let defs = [
        (
            map_names::SERVICES_V4,
            def::<Service4Key, ServiceValue>(
                BPF_MAP_TYPE_HASH,
                n(map_names::SERVICES_V4),
                NO_PREALLOC,
            ),
        ),
        (
            map_names::SERVICES_V6,
            def::<Service6Key, ServiceValue>(
                BPF_MAP_TYPE_HASH,
                n(map_names::SERVICES_V6),
                NO_PREALLOC,
            ),
        ),
        (
            map_names::BACKENDS_V4,
            def::<u32, Backend4>(BPF_MAP_TYPE_HASH, n(map_names::BACKENDS_V4), NO_PREALLOC),
        ),
        (
            map_names::BACKENDS_V6,
            def::<u32, Backend6>(BPF_MAP_TYPE_HASH, n(map_names::BACKENDS_V6), NO_PREALLOC),
        ),
        (
            map_names::SOCK_REVNAT_V4,
            def::<SockRevNat4Key, SockRevNat4Value>(
                BPF_MAP_TYPE_LRU_HASH,
                n(map_names::SOCK_REVNAT_V4),
                0,
            ),
        ),
        (
            map_names::SOCK_REVNAT_V6,
            def::<SockRevNat6Key, SockRevNat6Value>(
                BPF_MAP_TYPE_LRU_HASH,
                n(map_names::SOCK_REVNAT_V6),
                0,
            ),
        ),
        (
            map_names::AFFINITY,
            def::<AffinityKey, AffinityValue>(BPF_MAP_TYPE_LRU_HASH, n(map_names::AFFINITY), 0),
        ),
        (
            map_names::SOCK_FLOWS,
            def::<SockFlowKey, SockFlowValue>(BPF_MAP_TYPE_LRU_HASH, n(map_names::SOCK_FLOWS), 0),
        ),
        (
            map_names::MAGLEV,
            def::<u32, MaglevValue>(BPF_MAP_TYPE_HASH, n(map_names::MAGLEV), NO_PREALLOC),
        ),
        (
            map_names::CONNTRACK_V4,
            def::<Ct4Key, Ct4Value>(BPF_MAP_TYPE_LRU_HASH, n(map_names::CONNTRACK_V4), 0),
        ),
        (
            map_names::CONNTRACK_V6,
            def::<Ct6Key, Ct6Value>(BPF_MAP_TYPE_LRU_HASH, n(map_names::CONNTRACK_V6), 0),
        ),
        (
            map_names::STATS,
            def::<u32, SvcStats>(BPF_MAP_TYPE_PERCPU_ARRAY, n(map_names::STATS), 0),
        ),
        (
            map_names::CONFIG,
            def::<u32, DatapathConfigValue>(BPF_MAP_TYPE_ARRAY, 1, 0),
        ),
        (
            map_names::SOURCE_RANGES_V4,
            def::<(u32, SourceRange4), u8>(
                BPF_MAP_TYPE_LPM_TRIE,
                n(map_names::SOURCE_RANGES_V4),
                NO_PREALLOC,
            ),
        ),
        (
            map_names::SOURCE_RANGES_V6,
            def::<(u32, SourceRange6), u8>(
                BPF_MAP_TYPE_LPM_TRIE,
                n(map_names::SOURCE_RANGES_V6),
                NO_PREALLOC,
            ),
        ),
    ];
    defs.into_iter()
        .map(|(name, d)| (name.to_string(), d))
        .collect()
}

/// The definition of the map pinned at `path`, and the map; None when nothing is pinned.
fn pinned(path: &Path) -> Result<Option<(MapDef, OwnedFd)>, MigrateError> {
    let Some(fd) = sys::obj_get(path).map_err(io_err(path))? else {
        return Ok(None);
    };
    let info = sys::map_info(fd.as_fd()).map_err(io_err(path))?;
    let def = MapDef {
        map_type: info.type_,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        flags: info.map_flags & !FD_MODE_FLAGS,
    };
    Ok(Some((def, fd)))
}

/// One map being replaced.
#[derive(Debug)]
struct Replaced {
    name: String,
    /// Where the old map is pinned until the migration is done.
    old_path: PathBuf,
    old: MapDef,
    new: MapDef,
}

/// What one copy pass did to one map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub map: String,
    pub entries: u64,
    /// Entries the new map did not take (it is smaller, or full).
    pub dropped: u64,
    /// The layouts differ: nothing was copied.
    pub incompatible: bool,
}

/// The maps this agent replaces, from [`Migration::prepare`] to [`Migration::finish`].
#[derive(Debug, Default)]
pub struct Migration {
    dir: PathBuf,
    replaced: Vec<Replaced>,
}

/// Which copy: the first (the new maps are fresh: overwrite) or the one after the new
/// programs are attached (only the programs' state maps, create-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    BeforeAttach,
    AfterAttach,
}

impl Migration {
    /// Moves aside the pins in `dir` whose map is not defined as `wanted` says, so that the
    /// loader creates those maps anew. Pins moved aside by an agent that did not finish stay
    /// the source of their map.
    pub fn prepare(dir: &Path, wanted: &BTreeMap<String, MapDef>) -> Result<Self, MigrateError> {
        let mut replaced = Vec::new();
        for (name, want) in wanted {
            let path = dir.join(name);
            let old_path = dir.join(format!("{name}{OLD_SUFFIX}"));
            let current = pinned(&path)?;
            if let Some((old, _fd)) = pinned(&old_path)? {
                // An earlier migration did not finish: the programs attached now may use the
                // old map; what is pinned under the name is a half-filled new one.
                if current.as_ref().is_some_and(|(def, _)| def != want) {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                tracing::info!(
                    map = %name,
                    "resuming the migration of a previous agent from {}",
                    old_path.display()
                );
                replaced.push(Replaced {
                    name: name.clone(),
                    old_path,
                    old,
                    new: *want,
                });
                continue;
            }
            let Some((old, _fd)) = current else { continue };
            if old == *want {
                continue;
            }
            fs::rename(&path, &old_path).map_err(io_err(&path))?;
            tracing::info!(map = %name, old = %old, new = %want, "map definition changed: migrating it");
            replaced.push(Replaced {
                name: name.clone(),
                old_path,
                old,
                new: *want,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            replaced,
        })
    }

    /// Whether any map is being replaced.
    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty()
    }

    /// Names of the maps being replaced.
    pub fn maps(&self) -> impl Iterator<Item = &str> {
        self.replaced.iter().map(|r| r.name.as_str())
    }

    /// Copies the old maps' entries into the new ones (see [`Pass`]). A map that cannot be
    /// copied is reported; an I/O error on one map is logged and the others go on (the agent
    /// rewrites what it owns; lost state only costs those flows).
    pub fn copy(&self, pass: Pass) -> Vec<Copied> {
        let mut out = Vec::new();
        for r in &self.replaced {
            if pass == Pass::AfterAttach && !PROGRAM_STATE.contains(&r.name.as_str()) {
                continue;
            }
            if r.name == map_names::CONFIG {
                // Written by the loader with this agent's settings.
                continue;
            }
            if !r.old.copies_to(&r.new) {
                if pass == Pass::BeforeAttach {
                    tracing::warn!(
                        map = %r.name,
                        old = %r.old,
                        new = %r.new,
                        "map layout changed: its entries cannot be carried over"
                    );
                }
                out.push(Copied {
                    map: r.name.clone(),
                    entries: 0,
                    dropped: 0,
                    incompatible: true,
                });
                continue;
            }
            match self.copy_one(r, pass) {
                Ok(c) => {
                    tracing::info!(
                        map = %c.map,
                        copied = c.entries,
                        dropped = c.dropped,
                        pass = ?pass,
                        "migrated map entries"
                    );
                    out.push(c);
                }
                Err(e) => tracing::warn!(map = %r.name, "copying the old map's entries: {e}"),
            }
        }
        out
    }

    fn copy_one(&self, r: &Replaced, pass: Pass) -> Result<Copied, MigrateError> {
        let new_path = self.dir.join(&r.name);
        let (Some((_, old)), Some((_, new))) = (pinned(&r.old_path)?, pinned(&new_path)?) else {
            return Ok(Copied {
                map: r.name.clone(),
                entries: 0,
                dropped: 0,
                incompatible: false,
            });
        };
        let value_len = if PER_CPU.contains(&r.old.map_type) {
            (r.old.value_size as usize).div_ceil(8) * 8 * possible_cpus()
        } else {
            r.old.value_size as usize
        };
        let mut key = vec![0u8; r.old.key_size as usize];
        let mut next = vec![0u8; r.old.key_size as usize];
        let mut value = vec![0u8; value_len];
        let (mut entries, mut dropped) = (0u64, 0u64);
        let flags = match pass {
            Pass::BeforeAttach => sys::ANY,
            Pass::AfterAttach => sys::NOEXIST,
        };
        let err = io_err(&new_path);
        if ARRAYS.contains(&r.old.map_type) {
            for i in 0..r.old.max_entries {
                if i >= r.new.max_entries {
                    dropped += u64::from(r.old.max_entries - i);
                    break;
                }
                let k = i.to_ne_bytes();
                if sys::lookup(old.as_fd(), &k, &mut value).map_err(io_err(&r.old_path))? {
                    sys::update(new.as_fd(), &k, &value, sys::ANY).map_err(io_err(&new_path))?;
                    entries += 1;
                }
            }
        } else {
            // A key deleted while we walk restarts the walk from the first key: bound it.
            let mut budget = u64::from(r.old.max_entries) * 2 + 16;
            let mut have =
                sys::next_key(old.as_fd(), None, &mut next).map_err(io_err(&r.old_path))?;
            while have && budget > 0 {
                budget -= 1;
                key.copy_from_slice(&next);
                if sys::lookup(old.as_fd(), &key, &mut value).map_err(io_err(&r.old_path))? {
                    match sys::update(new.as_fd(), &key, &value, flags) {
                        Ok(()) => entries += 1,
                        // Create-only: the new programs already made this entry.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        // The new map is full (a smaller hash map).
                        Err(e) if e.raw_os_error() == Some(libc::E2BIG) => dropped += 1,
                        Err(e) => return Err(err(e)),
                    }
                }
                have = sys::next_key(old.as_fd(), Some(&key), &mut next)
                    .map_err(io_err(&r.old_path))?;
            }
        }
        Ok(Copied {
            map: r.name.clone(),
            entries,
            dropped,
            incompatible: false,
        })
    }

    /// Removes the `_old` pins: the programs no longer use those maps.
    pub fn finish(self) {
        for r in self.replaced {
            match fs::remove_file(&r.old_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(pin = %r.old_path.display(), "removing the old map's pin: {e}")
                }
            }
        }
    }
}

/// Possible CPUs (the width of a per-CPU value), from sysfs; 1 when unreadable.
pub fn possible_cpus() -> usize {
    fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or(1)
}

/// Counts the CPUs of a list such as `0-3,5`.
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0;
    for part in s.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn only_same_layouts_copy() {
        let a = MapDef {
            map_type: 9,
            key_size: 16,
            value_size: 32,
            max_entries: 1024,
            flags: 0,
        };
        assert!(a.copies_to(&MapDef {
            max_entries: 64,
            ..a
        }));
        assert!(!a.copies_to(&MapDef {
            value_size: 40,
            ..a
        }));
        assert!(!a.copies_to(&MapDef { map_type: 1, ..a }));
    }

    /// The stated definitions are the object's (with the object's own sizes for maps the
    /// sizing leaves alone).
    #[test]
    fn definitions_match_the_object() {
        let object = crate::EBPF_OBJECT;
        if object.is_empty() {
            eprintln!("built without the eBPF object: nothing to compare");
            return;
        }
        let obj = aya_obj::Object::parse(object).expect("the embedded object parses");
        let sizing = crate::datapath::sizing::Sizing::compute(
            &crate::datapath::sizing::SizingInput::defaults(1 << 34, 2, true, true),
        );
        let wanted = wanted(&sizing);
        let pinned: Vec<_> = obj
            .maps
            .iter()
            .filter(|(_, m)| matches!(m.pinning(), aya_obj::maps::PinningType::ByName))
            .collect();
        assert_eq!(pinned.len(), wanted.len(), "pinned maps of the object");
        for (name, m) in pinned {
            let w = wanted
                .get(name)
                .unwrap_or_else(|| panic!("{name} not stated"));
            assert_eq!(w.map_type, m.map_type(), "{name} type");
            assert_eq!(w.key_size, m.key_size(), "{name} key");
            assert_eq!(w.value_size, m.value_size(), "{name} value");
            assert_eq!(w.flags, m.map_flags() & !FD_MODE_FLAGS, "{name} flags");
            if sizing.entries(name).is_none() {
                assert_eq!(w.max_entries, m.max_entries(), "{name} entries");
            }
        }
    }
}
