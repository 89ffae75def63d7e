//! Applies a [`DesiredTable`] to the pinned maps with minimal, make-before-break writes.
//!
//! The syncer keeps a mirror of what it wrote, seeded from the maps themselves when it starts
//! (so a restarted agent adopts what the previous one left and only writes the difference).
//!
//! Write order for one frontend (Cilium's): new backends, then the slots, then the frontend
//! (slot 0, which carries the count), then trim the slots beyond the new count, then delete
//! the backends nobody uses. A connect() racing an update reads a count and then a slot at or
//! below it, and every such slot still names a live backend.
//!
//! Backend ids are per frontend: the same pod behind two services gets two ids. A backend id
//! therefore exists exactly while it belongs to its service, which lets the datapath validate
//! affinity and UDP socket flows with one lookup. Ids are never reused while the agent runs;
//! entries of the LRU maps that name a removed backend are purged after each update (and at
//! start, for what an earlier agent left behind).
//!
//! Per-packet datapath (when the object has its maps): every frontend has a Maglev table in
//! `CIP_MAGLEV` (keyed by svc_id), written whole in one update after the new backends and
//! before the frontend's count, and only when its backend set changed. Service ids index the
//! per-CPU counters `CIP_STATS`, so they stay below `MAX_SVC_ID`: a new frontend gets the
//! smallest free id and its counters are zeroed. When backends go, the conntrack entries of
//! their UDP flows are deleted (as kube-proxy's conntrack cleanup does); TCP flows expire.

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;

use aya::maps::{HashMap, MapData};
use clusterip_common::{
    AffinityKey, AffinityValue, BE_FLAG_LOCAL, Backend4, Backend6, CT_DIR_FORWARD,
    MAGLEV_TABLE_SIZE, MAX_BACKENDS_PER_SERVICE, MAX_SVC_ID, MaglevValue, PROTO_UDP, SCOPE_DEFAULT,
    SCOPE_EXTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_DROP, SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL,
    SVC_FLAG_NODE_ADDR, SVC_FLAG_SOURCE_RANGE, Service4Key, Service6Key, ServiceValue,
    SockFlowValue, map_names,
};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use crate::datapath::maps::{
    self, BackendAddr, CtKey, Installed, InstalledFrontend, MapsError, PinnedMaps, op_err,
};
use crate::model::table::{
    Backend, DesiredTable, Frontend, FrontendKind, NoEndpoints, ServiceEntry,
};
use crate::sync::maglev;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("{frontend}: {count} backends, more than the {max} one frontend can hold")]
    TooManyBackends {
        frontend: Frontend,
        count: usize,
        max: u16,
    },
    #[error("{frontend}: backend {backend} is not of the VIP's address family")]
    FamilyMismatch {
        frontend: Frontend,
        backend: Backend,
    },
    #[error("out of ids")]
    OutOfIds,
    #[error("out of service ids: {MAX_SVC_ID} frontends at most")]
    OutOfSvcIds,
}

/// What one `apply` changed, for the "synced" log line and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub frontends: usize,
    pub frontends_added: usize,
    pub frontends_updated: usize,
    pub frontends_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub writes: usize,
    pub deletes: usize,
    pub lru_purged: usize,
    /// Maglev tables written.
    pub maglev_writes: usize,
    /// Conntrack entries of UDP flows to removed backends deleted.
    pub ct_purged: usize,
}

impl SyncStats {
    pub fn changed(&self) -> bool {
        self.writes + self.deletes > 0
    }
}

pub struct Syncer {
    maps: PinnedMaps,
    /// Mirror of the maps: what we believe is installed.
    installed: Installed,
    next_backend_id: u32,
    /// Service ids in use (the frontends'); a new frontend gets the smallest free one.
    svc_ids: BTreeSet<u32>,
    /// svc_ids whose installed Maglev table was compared with the wanted one since the last
    /// resync (a table that is right stays right until the backend set changes).
    maglev_checked: BTreeSet<u32>,
    /// Whether Maglev tables are written (only the per-packet programs read them; without
    /// them they fall back to hash modulo count). Off: no tables, and a full apply deletes
    /// those an earlier agent wrote.
    maglev_enabled: bool,
    /// Writes queued by the current apply, flushed phase by phase (see [`Pending`]).
    pending: Pending,
}

/// The writes of one apply, grouped by phase. [`Syncer::flush`] writes each phase whole, in
/// batches, before the next: wildcards, backends, Maglev tables, slots, frontends (slot 0,
/// the count), then the trims. Every frontend's own writes therefore keep the
/// make-before-break order, while thousands of frontends share each syscall.
#[derive(Default)]
struct Pending {
    wild4: Vec<(Service4Key, ServiceValue)>,
    wild6: Vec<(Service6Key, ServiceValue)>,
    be4: Vec<(u32, Backend4)>,
    be6: Vec<(u32, Backend6)>,
    maglev: Vec<(u32, MaglevValue)>,
    slots4: Vec<(Service4Key, ServiceValue)>,
    slots6: Vec<(Service6Key, ServiceValue)>,
    heads4: Vec<(Service4Key, ServiceValue)>,
    heads6: Vec<(Service6Key, ServiceValue)>,
    /// Source ranges to add (with the slots, before the frontend that turns them on) and to
    /// delete (with the trims, after it), by service id.
    ranges_add: Vec<(u32, IpNet)>,
    ranges_del: Vec<(u32, IpNet)>,
    trims: Vec<SvcAt>,
}

/// Backend ids an apply took out of their frontend.
type Removed = BTreeSet<u32>;

/// Maglev tables (4 KiB each) queued at most before the phases up to them are flushed.
const MAGLEV_QUEUE: usize = 128;

/// Writes queued at most in one phase before the phases up to it are flushed: one batch
/// syscall's worth (`datapath::batch`). Without a bound, a full apply of 10,000 frontends of
/// 10 backends would hold 200,000 queued writes (about 6 MB) at once.
const QUEUE_FLUSH: usize = 8192;

/// The write phases, in the order they are flushed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Backend,
    Maglev,
    Slot,
    Head,
    Trim,
}

#[derive(Clone, Copy)]
enum SvcPhase {
    Wildcard,
    Slot,
    Head,
}

impl Syncer {
    /// Opens the pinned maps in `bpffs` and adopts what they hold.
    pub fn open(bpffs: &Path) -> Result<Self, SyncError> {
        let maps = PinnedMaps::open(bpffs)?;
        let mut s = Self {
            maps,
            installed: Installed::default(),
            next_backend_id: 1,
            svc_ids: BTreeSet::new(),
            maglev_checked: BTreeSet::new(),
            maglev_enabled: true,
            pending: Pending::default(),
        };
        s.resync()?;
        // An earlier agent may have removed backends whose ids this one will hand out again:
        // forget the LRU entries that name ids not installed now.
        let purged = s.purge_lru()?;
        if purged > 0 {
            debug!(
                purged,
                "purged affinity and flow entries of removed backends"
            );
        }
        let live: BTreeSet<u32> = s.installed.backends.keys().copied().collect();
        let ct = s.purge_udp_ct(|id| id != 0 && !live.contains(&id))?;
        if ct > 0 {
            debug!(
                ct,
                "purged conntrack entries of UDP flows to removed backends"
            );
        }
        Ok(s)
    }

    /// Re-reads the maps into the mirror (at start, and after a failed apply).
    pub fn resync(&mut self) -> Result<(), SyncError> {
        let installed = self.maps.read_installed()?;
        let max_backend = installed.backends.keys().max().copied().unwrap_or(0);
        self.next_backend_id = self.next_backend_id.max(max_backend.saturating_add(1));
        self.svc_ids = installed
            .frontends
            .values()
            .chain(installed.external_local.values())
            .map(|f| f.svc_id)
            .collect();
        self.maglev_checked.clear();
        debug!(
            frontends = installed.frontends.len(),
            backends = installed.backends.len(),
            "adopted the pinned maps"
        );
        self.installed = installed;
        Ok(())
    }

    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    /// (map name, entries, capacity) of the service and backend maps, from the mirror.
    pub fn map_usage(&self) -> Vec<(&'static str, u64, u64)> {
        let mut svc = [0u64; 2];
        let mut be = [0u64; 2];
        for vip in self.installed.wildcards.keys() {
            svc[usize::from(vip.is_ipv6())] += 1;
        }
        // Backends are of their VIP's family and belong to one frontend each: counting slots
        // avoids walking 100,000 backends after every sync.
        for (fe, f) in self
            .installed
            .frontends
            .iter()
            .chain(&self.installed.external_local)
        {
            let fam = usize::from(fe.vip.is_ipv6());
            svc[fam] += 1 + f.slots.len() as u64;
            be[fam] += f.slots.len() as u64;
        }
        let svc_cap = u64::from(clusterip_common::MAX_SERVICE_ENTRIES);
        let be_cap = u64::from(clusterip_common::MAX_BACKENDS);
        vec![
            (map_names::SERVICES_V4, svc[0], svc_cap),
            (map_names::SERVICES_V6, svc[1], svc_cap),
            (map_names::BACKENDS_V4, be[0], be_cap),
            (map_names::BACKENDS_V6, be[1], be_cap),
            (
                map_names::MAGLEV,
                self.installed.maglev.len() as u64,
                u64::from(clusterip_common::MAX_MAGLEV_SERVICES),
            ),
        ]
    }

    /// Whether to write Maglev tables (see the field). Takes effect on the next apply.
    pub fn set_maglev(&mut self, enabled: bool) {
        self.maglev_enabled = enabled;
    }

    fn maglev_on(&self) -> bool {
        self.maglev_enabled && self.maps.packet.is_some()
    }

    /// Makes the maps hold `desired` for the frontends in `touched` only: the others must
    /// already be as `desired` says (a full [`Syncer::apply`] happened since, and every
    /// frontend whose entry changed since is in `touched`). Costs what the touched frontends
    /// cost, whatever the size of the table.
    pub fn apply_partial(
        &mut self,
        desired: &DesiredTable,
        touched: &BTreeSet<Frontend>,
    ) -> Result<SyncStats, SyncError> {
        let mut st = SyncStats {
            frontends: desired.services.len(),
            ..Default::default()
        };
        for fe in touched {
            if let Some(entry) = desired.services.get(fe) {
                check_entry(fe, entry)?;
            }
        }
        let vips: BTreeSet<IpAddr> = touched.iter().map(|fe| fe.vip).collect();
        for &vip in &vips {
            if let Some(flags) = desired.wildcard(vip) {
                self.queue_wildcard(vip, flags, &mut st);
            }
        }
        let mut removed: Removed = BTreeSet::new();
        for fe in touched {
            if let Some(entry) = desired.services.get(fe) {
                self.apply_frontend(fe, entry, &mut st, &mut removed)?;
            }
        }
        self.flush()?;
        for fe in touched {
            match desired.services.get(fe) {
                None => {
                    self.remove_frontend(*fe, SCOPE_DEFAULT, &mut st, &mut removed)?;
                    self.remove_frontend(*fe, SCOPE_EXTERNAL, &mut st, &mut removed)?;
                }
                Some(e) if e.external_local.is_none() => {
                    self.remove_frontend(*fe, SCOPE_EXTERNAL, &mut st, &mut removed)?;
                }
                Some(_) => {}
            }
        }
        // Backend ids are per frontend: an id a frontend dropped is used by nobody.
        for id in &removed {
            if self.installed.backends.contains_key(id) {
                self.delete_backend(*id)?;
                st.backends_removed += 1;
                st.deletes += 1;
            }
        }
        // Wildcards of VIPs that lost their last frontend.
        for vip in vips {
            if self.installed.wildcards.contains_key(&vip) && desired.wildcard(vip).is_none() {
                self.delete_svc(SvcAt::wildcard(vip))?;
                self.installed.wildcards.remove(&vip);
                st.deletes += 1;
            }
        }
        if !removed.is_empty() {
            st.lru_purged = self.purge_lru_of(&removed)?;
            st.ct_purged = self.purge_udp_ct(|id| removed.contains(&id))?;
        }
        Ok(st)
    }

    /// The installed frontends of `scope`.
    fn scoped(&mut self, scope: u8) -> &mut BTreeMap<Frontend, InstalledFrontend> {
        if scope == SCOPE_EXTERNAL {
            &mut self.installed.external_local
        } else {
            &mut self.installed.frontends
        }
    }

    /// Removes one installed frontend of `scope`: slot 0 first, so nothing new picks it, then
    /// its slots, Maglev table and source ranges; its backend ids go to `removed`. Scope 0
    /// goes before scope 1 (whose absence the datapath reads as "drop" while scope 0 still
    /// says `SVC_FLAG_EXT_LOCAL`).
    fn remove_frontend(
        &mut self,
        fe: Frontend,
        scope: u8,
        st: &mut SyncStats,
        removed: &mut Removed,
    ) -> Result<(), SyncError> {
        let Some(old) = self.scoped(scope).remove(&fe) else {
            return Ok(());
        };
        self.delete_svc(SvcAt::of(&fe, scope, 0))?;
        st.deletes += 1;
        for slot in 1..=old.slots.len() {
            self.delete_svc(SvcAt::of(&fe, scope, slot_u16(slot)))?;
            st.deletes += 1;
        }
        if self.installed.maglev.contains_key(&old.svc_id) {
            st.deletes += 1;
        }
        self.delete_maglev(old.svc_id)?;
        st.deletes += self.delete_source_ranges(old.svc_id)?;
        self.svc_ids.remove(&old.svc_id);
        removed.extend(old.slots);
        if scope == SCOPE_DEFAULT {
            st.frontends_removed += 1;
            debug!(%fe, "frontend removed");
        }
        Ok(())
    }

    /// Deletes every source range of service id `svc_id`; returns how many.
    fn delete_source_ranges(&mut self, svc_id: u32) -> Result<usize, SyncError> {
        let Some(ranges) = self.installed.source_ranges.remove(&svc_id) else {
            return Ok(0);
        };
        if let Some(p) = &mut self.maps.packet {
            for r in &ranges {
                p.set_source_range(svc_id, *r, false)?;
            }
        }
        Ok(ranges.len())
    }

    /// The smallest service id >= 1 not in use; it indexes `CIP_STATS`, hence < MAX_SVC_ID.
    fn alloc_svc_id(&mut self) -> Result<u32, SyncError> {
        let candidate =
            smallest_free_id(&self.svc_ids, MAX_SVC_ID).ok_or(SyncError::OutOfSvcIds)?;
        self.svc_ids.insert(candidate);
        if let Some(p) = &mut self.maps.packet {
            p.zero_stats(candidate)?;
        }
        Ok(candidate)
    }

    /// Makes the maps hold `desired`, writing only what differs.
    pub fn apply(&mut self, desired: &DesiredTable) -> Result<SyncStats, SyncError> {
        let mut st = SyncStats {
            frontends: desired.services.len(),
            ..Default::default()
        };
        for (fe, entry) in &desired.services {
            check_entry(fe, entry)?;
        }

        // Wildcards first: from now on other ports on a new VIP are refused.
        let vips = desired.wildcards();
        for (&vip, &flags) in &vips {
            self.queue_wildcard(vip, flags, &mut st);
        }

        let mut removed_backends: Removed = BTreeSet::new();
        for (fe, entry) in &desired.services {
            self.apply_frontend(fe, entry, &mut st, &mut removed_backends)?;
        }
        // Everything new is in place before anything old goes.
        self.flush()?;

        // Frontends that are no longer wanted: frontend first, so nothing new picks them;
        // then the outside views (scope 1) that are no longer wanted.
        let gone: Vec<Frontend> = self
            .installed
            .frontends
            .keys()
            .filter(|fe| !desired.services.contains_key(fe))
            .copied()
            .collect();
        for fe in gone {
            self.remove_frontend(fe, SCOPE_DEFAULT, &mut st, &mut removed_backends)?;
        }
        let gone: Vec<Frontend> = self
            .installed
            .external_local
            .keys()
            .filter(|fe| {
                desired
                    .services
                    .get(fe)
                    .is_none_or(|e| e.external_local.is_none())
            })
            .copied()
            .collect();
        for fe in gone {
            self.remove_frontend(fe, SCOPE_EXTERNAL, &mut st, &mut removed_backends)?;
        }

        // Source ranges of no frontend (a crash of an earlier agent).
        let owners: BTreeSet<u32> = self
            .installed
            .frontends
            .values()
            .map(|f| f.svc_id)
            .collect();
        let stray_ranges: Vec<u32> = self
            .installed
            .source_ranges
            .keys()
            .filter(|id| !owners.contains(id))
            .copied()
            .collect();
        for id in stray_ranges {
            st.deletes += self.delete_source_ranges(id)?;
        }

        // Maglev tables of no frontend (a crash of an earlier agent), or all of them when
        // they are not wanted.
        let svc_ids: BTreeSet<u32> = if self.maglev_on() {
            self.installed
                .frontends
                .values()
                .chain(self.installed.external_local.values())
                .map(|f| f.svc_id)
                .collect()
        } else {
            BTreeSet::new()
        };
        let stray_tables: Vec<u32> = self
            .installed
            .maglev
            .keys()
            .filter(|id| !svc_ids.contains(id))
            .copied()
            .collect();
        for id in stray_tables {
            self.delete_maglev(id)?;
            st.deletes += 1;
        }

        // Stray slot entries (a crash mid-update of an earlier agent).
        for (fe, scope, slot) in std::mem::take(&mut self.installed.stray_slots) {
            self.delete_svc(SvcAt::of(&fe, scope, slot))?;
            st.deletes += 1;
        }

        // Backends: delete the ids that no frontend uses any more, and orphans.
        let used: BTreeSet<u32> = self
            .installed
            .frontends
            .values()
            .chain(self.installed.external_local.values())
            .flat_map(|f| f.slots.iter().copied())
            .collect();
        let orphans: Vec<u32> = self
            .installed
            .backends
            .keys()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        for id in orphans {
            self.delete_backend(id)?;
            removed_backends.insert(id);
            st.backends_removed += 1;
            st.deletes += 1;
        }

        // Wildcards of VIPs that have no frontend left.
        let stale: Vec<IpAddr> = self
            .installed
            .wildcards
            .keys()
            .filter(|v| !vips.contains_key(v))
            .copied()
            .collect();
        for vip in stale {
            self.delete_svc(SvcAt::wildcard(vip))?;
            self.installed.wildcards.remove(&vip);
            st.deletes += 1;
        }

        if !removed_backends.is_empty() {
            st.lru_purged = self.purge_lru()?;
            st.ct_purged = self.purge_udp_ct(|id| removed_backends.contains(&id))?;
        }
        Ok(st)
    }

    /// Installs one frontend: its outside view first (scope 1, `externalTrafficPolicy:
    /// Local`), then its source ranges, then the frontend itself (scope 0), whose flags turn
    /// both on. Removing what is no longer wanted happens after the flush.
    fn apply_frontend(
        &mut self,
        fe: &Frontend,
        entry: &ServiceEntry,
        st: &mut SyncStats,
        removed: &mut Removed,
    ) -> Result<(), SyncError> {
        let mut common = 0;
        if entry.affinity_timeout_s.is_some() {
            common |= SVC_FLAG_AFFINITY;
        }
        if entry.external() {
            common |= SVC_FLAG_EXTERNAL;
        }
        if entry.kind == FrontendKind::NodePort {
            common |= SVC_FLAG_NODE_ADDR;
        }
        let mut flags = common;
        if let Some(local) = &entry.external_local {
            // Without a local endpoint the datapath drops whatever the flags say.
            let drop = if local.is_empty() { SVC_FLAG_DROP } else { 0 };
            let svc_id = self.svc_id_of(fe, SCOPE_EXTERNAL)?;
            let scoped = Scoped {
                fe,
                scope: SCOPE_EXTERNAL,
                svc_id,
                flags: common | drop,
            };
            self.apply_scoped(&scoped, entry, local, st, removed)?;
            flags |= SVC_FLAG_EXT_LOCAL;
        }
        if entry.backends.is_empty() && entry.no_endpoints == NoEndpoints::Drop {
            flags |= SVC_FLAG_DROP;
        }
        let svc_id = self.svc_id_of(fe, SCOPE_DEFAULT)?;
        if self.queue_source_ranges(fe, svc_id, &entry.source_ranges, st) {
            flags |= SVC_FLAG_SOURCE_RANGE;
        }
        let scoped = Scoped {
            fe,
            scope: SCOPE_DEFAULT,
            svc_id,
            flags,
        };
        let old = self.installed.frontends.get(fe).cloned();
        let new = self.apply_scoped(&scoped, entry, &entry.backends, st, removed)?;
        match &old {
            None => {
                st.frontends_added += 1;
                debug!(%fe, service = %entry.service, backends = entry.backends.len(), "frontend added");
            }
            Some(o) if *o != new => {
                st.frontends_updated += 1;
                debug!(%fe, service = %entry.service, backends = entry.backends.len(), "frontend updated");
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The service id of `fe` in `scope`: the installed one, or a new one.
    fn svc_id_of(&mut self, fe: &Frontend, scope: u8) -> Result<u32, SyncError> {
        match self.scoped(scope).get(fe) {
            Some(f) => Ok(f.svc_id),
            None => self.alloc_svc_id(),
        }
    }

    /// Queues the source ranges of `fe` (service id `svc_id`) that are not installed, and the
    /// deletion of those installed that are no longer wanted. Ranges of the other address
    /// family are ignored (kube-proxy's per-family proxiers never see them); returns whether
    /// any is left, which turns `SVC_FLAG_SOURCE_RANGE` on.
    fn queue_source_ranges(
        &mut self,
        fe: &Frontend,
        svc_id: u32,
        ranges: &[IpNet],
        st: &mut SyncStats,
    ) -> bool {
        let wanted: BTreeSet<IpNet> = ranges
            .iter()
            .filter(|r| matches!(r, IpNet::V4(_)) == fe.vip.is_ipv4())
            .map(IpNet::trunc)
            .collect();
        if self.maps.packet.is_none() {
            return false;
        }
        let installed = self
            .installed
            .source_ranges
            .remove(&svc_id)
            .unwrap_or_default();
        for r in wanted.difference(&installed) {
            self.pending.ranges_add.push((svc_id, *r));
            st.writes += 1;
        }
        for r in installed.difference(&wanted) {
            self.pending.ranges_del.push((svc_id, *r));
            st.deletes += 1;
        }
        let any = !wanted.is_empty();
        if any {
            self.installed.source_ranges.insert(svc_id, wanted);
        }
        any
    }

    /// Writes one frontend of one scope with `backends` (make-before-break: backends, Maglev
    /// table, slots, then slot 0 with the count; trims last) and returns what is installed.
    fn apply_scoped(
        &mut self,
        sc: &Scoped,
        entry: &ServiceEntry,
        backends: &[Backend],
        st: &mut SyncStats,
        removed: &mut Removed,
    ) -> Result<InstalledFrontend, SyncError> {
        let fe = sc.fe;
        let svc_id = sc.svc_id;
        let old = self.scoped(sc.scope).get(fe).cloned();

        // 1. Backends: reuse this frontend's ids (found through its own slots: ids are per
        // frontend), write the new ones.
        let own: StdHashMap<BackendAddr, u32> = old
            .as_ref()
            .map(|o| {
                o.slots
                    .iter()
                    .filter_map(|id| self.installed.backends.get(id).map(|b| (*b, *id)))
                    .collect()
            })
            .unwrap_or_default();
        let mut members: Vec<(Backend, u32)> = Vec::with_capacity(backends.len());
        for addr in backends {
            let key = BackendAddr {
                addr: *addr,
                protocol: fe.protocol,
            };
            let id = match own.get(&key) {
                Some(id) => *id,
                None => {
                    let id = alloc(&mut self.next_backend_id)?;
                    self.queue_backend(id, key)?;
                    self.installed.backends.insert(id, key);
                    st.backends_added += 1;
                    st.writes += 1;
                    id
                }
            };
            members.push((*addr, id));
        }
        let ids: BTreeSet<u32> = members.iter().map(|(_, id)| *id).collect();

        // 1b. The Maglev table, whole, before the count that may make new slots visible.
        let old_slots: &[u32] = old.as_ref().map(|o| o.slots.as_slice()).unwrap_or(&[]);
        let old_ids: BTreeSet<u32> = old_slots.iter().copied().collect();
        if self.maglev_on() && (old_ids != ids || !self.maglev_checked.contains(&svc_id)) {
            let by_name: Vec<(String, u32)> = members
                .iter()
                .map(|(addr, id)| (addr.to_string(), *id))
                .collect();
            let table = maglev_table(&by_name);
            let fp = maps::maglev_fingerprint(&table.backend_ids);
            if self.installed.maglev.get(&svc_id) != Some(&fp) {
                self.queue_maglev(svc_id, table)?;
                self.installed.maglev.insert(svc_id, fp);
                st.maglev_writes += 1;
                st.writes += 1;
            }
            self.maglev_checked.insert(svc_id);
        }

        // 2. Slots, keeping every remaining backend where it was.
        let slots = assign_slots(old_slots, &ids);
        for (i, id) in slots.iter().enumerate() {
            if old_slots.get(i) != Some(id) {
                let v = ServiceValue {
                    backend_id: *id,
                    svc_id,
                    ..Default::default()
                };
                if let Some(phase) =
                    self.queue_svc(SvcPhase::Slot, SvcAt::of(fe, sc.scope, slot_u16(i + 1)), v)
                {
                    self.flush_through(phase)?;
                }
                st.writes += 1;
            }
        }

        // 3. The frontend, which publishes the new count.
        let new_fe = InstalledFrontend {
            svc_id,
            flags: sc.flags,
            affinity_timeout_s: entry.affinity_timeout_s.unwrap_or(0),
            slots,
        };
        let header_changed = old.as_ref().is_none_or(|o| {
            o.flags != new_fe.flags
                || o.affinity_timeout_s != new_fe.affinity_timeout_s
                || o.slots.len() != new_fe.slots.len()
        });
        if header_changed {
            let v = ServiceValue {
                backend_id: 0,
                count: slot_u16(new_fe.slots.len()),
                flags: new_fe.flags,
                svc_id,
                affinity_timeout_s: new_fe.affinity_timeout_s,
            };
            if let Some(phase) = self.queue_svc(SvcPhase::Head, SvcAt::of(fe, sc.scope, 0), v) {
                self.flush_through(phase)?;
            }
            st.writes += 1;
        }

        // 4. Trim slots beyond the new count.
        for slot in new_fe.slots.len() + 1..=old_slots.len() {
            self.pending
                .trims
                .push(SvcAt::of(fe, sc.scope, slot_u16(slot)));
            st.deletes += 1;
        }
        for id in old_slots {
            if !ids.contains(id) {
                removed.insert(*id);
            }
        }
        self.scoped(sc.scope).insert(*fe, new_fe.clone());
        Ok(new_fe)
    }

    /// Deletes affinity and socket-flow entries that name one of the `removed` backend ids.
    fn purge_lru_of(&mut self, removed: &Removed) -> Result<usize, SyncError> {
        self.purge_lru_where(
            |_, v| removed.contains(&v.backend_id),
            |v| removed.contains(&v.backend_id),
        )
    }

    /// Deletes affinity and socket-flow entries whose backend is gone from its service.
    fn purge_lru(&mut self) -> Result<usize, SyncError> {
        let live: BTreeSet<u32> = self.installed.backends.keys().copied().collect();
        let members: BTreeSet<(u32, u32)> = self
            .installed
            .frontends
            .values()
            .chain(self.installed.external_local.values())
            .flat_map(|f| f.slots.iter().map(move |id| (f.svc_id, *id)))
            .collect();
        self.purge_lru_where(
            |k, v| !members.contains(&(k.svc_id, v.backend_id)),
            |v| !live.contains(&v.backend_id),
        )
    }

    /// Deletes the affinity and socket-flow entries the predicates call stale; returns how
    /// many. LRU entries can vanish while we walk: such errors are skipped, never fatal.
    fn purge_lru_where(
        &mut self,
        stale_affinity: impl Fn(&AffinityKey, &AffinityValue) -> bool,
        stale_flow: impl Fn(&SockFlowValue) -> bool,
    ) -> Result<usize, SyncError> {
        let mut stale_aff: Vec<AffinityKey> = Vec::new();
        for item in self.maps.affinity.iter() {
            match item {
                Ok((k, v)) if stale_affinity(&k, &v) => stale_aff.push(k),
                Ok(_) => {}
                Err(e) => debug!(error = %e, "walking the affinity map"),
            }
        }
        let mut stale_flows = Vec::new();
        for item in self.maps.sockflow.iter() {
            match item {
                Ok((k, v)) if stale_flow(&v) => stale_flows.push(k),
                Ok(_) => {}
                Err(e) => debug!(error = %e, "walking the socket-flow map"),
            }
        }
        let n = stale_aff.len() + stale_flows.len();
        for k in stale_aff {
            ignore_missing(self.maps.affinity.remove(&k), map_names::AFFINITY)?;
        }
        for k in stale_flows {
            ignore_missing(self.maps.sockflow.remove(&k), map_names::SOCK_FLOWS)?;
        }
        Ok(n)
    }

    /// Queues `vip`'s wildcard entry unless the maps already hold it with these flags.
    fn queue_wildcard(&mut self, vip: IpAddr, flags: u16, st: &mut SyncStats) {
        if self.installed.wildcards.get(&vip) != Some(&flags) {
            let v = ServiceValue {
                flags,
                ..Default::default()
            };
            // Never full (see queue_svc).
            let _ = self.queue_svc(SvcPhase::Wildcard, SvcAt::wildcard(vip), v);
            self.installed.wildcards.insert(vip, flags);
            st.writes += 1;
        }
    }

    fn queue_maglev(&mut self, svc_id: u32, table: MaglevValue) -> Result<(), SyncError> {
        self.pending.maglev.push((svc_id, table));
        if self.pending.maglev.len() >= MAGLEV_QUEUE {
            self.flush_through_maglev()?;
        }
        Ok(())
    }

    /// Queues a service-map write; returns the phase to flush through when its queue is
    /// full (wildcards never fill one: there is one per VIP, and they are flushed first).
    fn queue_svc(&mut self, phase: SvcPhase, at: SvcAt, v: ServiceValue) -> Option<Phase> {
        let p = &mut self.pending;
        let queued = match at.vip {
            IpAddr::V4(a) => {
                let q = match phase {
                    SvcPhase::Wildcard => &mut p.wild4,
                    SvcPhase::Slot => &mut p.slots4,
                    SvcPhase::Head => &mut p.heads4,
                };
                q.push((
                    Service4Key::scoped(a, at.port, at.proto, at.slot, at.scope),
                    v,
                ));
                q.len()
            }
            IpAddr::V6(a) => {
                let q = match phase {
                    SvcPhase::Wildcard => &mut p.wild6,
                    SvcPhase::Slot => &mut p.slots6,
                    SvcPhase::Head => &mut p.heads6,
                };
                q.push((
                    Service6Key::scoped(a, at.port, at.proto, at.slot, at.scope),
                    v,
                ));
                q.len()
            }
        };
        let phase = match phase {
            SvcPhase::Wildcard => return None,
            SvcPhase::Slot => Phase::Slot,
            SvcPhase::Head => Phase::Head,
        };
        (queued >= QUEUE_FLUSH).then_some(phase)
    }

    /// Queues a backend write; flushes the phases through the backends' when full.
    fn queue_backend(&mut self, id: u32, b: BackendAddr) -> Result<(), SyncError> {
        let proto = b.protocol.number();
        let port = b.addr.port;
        let queued = match b.addr.ip {
            IpAddr::V4(ip) => {
                let mut v = Backend4::new(ip, port, proto);
                v.flags = backend_flags(&b.addr);
                self.pending.be4.push((id, v));
                self.pending.be4.len()
            }
            IpAddr::V6(ip) => {
                let mut v = Backend6::new(ip, port, proto);
                v.flags = backend_flags(&b.addr);
                self.pending.be6.push((id, v));
                self.pending.be6.len()
            }
        };
        if queued >= QUEUE_FLUSH {
            self.flush_through(Phase::Backend)?;
        }
        Ok(())
    }

    /// Writes the queued wildcards, backends and Maglev tables, in that order.
    fn flush_through_maglev(&mut self) -> Result<(), SyncError> {
        self.flush_through(Phase::Maglev)
    }

    /// Writes everything queued, phase by phase (see [`Pending`]).
    fn flush(&mut self) -> Result<(), SyncError> {
        self.flush_through(Phase::Trim)
    }

    /// Writes what is queued in the phases up to `last`, in phase order. Every frontend
    /// queues its writes in phase order, so flushing a prefix of the phases early (when a
    /// queue is full) still writes each frontend's backends before its slots, and its slots
    /// before its count.
    fn flush_through(&mut self, last: Phase) -> Result<(), SyncError> {
        let p = std::mem::take(&mut self.pending.wild4);
        write_batch(&mut self.maps.svc4, &p, map_names::SERVICES_V4)?;
        let p = std::mem::take(&mut self.pending.wild6);
        write_batch(&mut self.maps.svc6, &p, map_names::SERVICES_V6)?;
        if last >= Phase::Backend {
            let p = std::mem::take(&mut self.pending.be4);
            write_batch(&mut self.maps.be4, &p, map_names::BACKENDS_V4)?;
            let p = std::mem::take(&mut self.pending.be6);
            write_batch(&mut self.maps.be6, &p, map_names::BACKENDS_V6)?;
        }
        if last >= Phase::Maglev {
            let p = std::mem::take(&mut self.pending.maglev);
            if let Some(pm) = &mut self.maps.packet {
                write_batch(&mut pm.maglev, &p, map_names::MAGLEV)?;
            }
        }
        if last >= Phase::Slot {
            let adds = std::mem::take(&mut self.pending.ranges_add);
            if let Some(pm) = &mut self.maps.packet {
                for (svc_id, r) in adds {
                    pm.set_source_range(svc_id, r, true)?;
                }
            }
            let p = std::mem::take(&mut self.pending.slots4);
            write_batch(&mut self.maps.svc4, &p, map_names::SERVICES_V4)?;
            let p = std::mem::take(&mut self.pending.slots6);
            write_batch(&mut self.maps.svc6, &p, map_names::SERVICES_V6)?;
        }
        if last >= Phase::Head {
            let p = std::mem::take(&mut self.pending.heads4);
            write_batch(&mut self.maps.svc4, &p, map_names::SERVICES_V4)?;
            let p = std::mem::take(&mut self.pending.heads6);
            write_batch(&mut self.maps.svc6, &p, map_names::SERVICES_V6)?;
        }
        if last >= Phase::Trim {
            for at in std::mem::take(&mut self.pending.trims) {
                self.delete_svc(at)?;
            }
            let dels = std::mem::take(&mut self.pending.ranges_del);
            if let Some(pm) = &mut self.maps.packet {
                for (svc_id, r) in dels {
                    pm.set_source_range(svc_id, r, false)?;
                }
            }
        }
        Ok(())
    }

    fn delete_maglev(&mut self, svc_id: u32) -> Result<(), SyncError> {
        self.maglev_checked.remove(&svc_id);
        if self.installed.maglev.remove(&svc_id).is_none() {
            // The mirror is read from the map: no table to delete.
            return Ok(());
        }
        match &mut self.maps.packet {
            Some(p) => ignore_missing(p.maglev.remove(&svc_id), map_names::MAGLEV),
            None => Ok(()),
        }
    }

    /// Deletes the conntrack entries (both directions) of UDP flows whose backend id `gone`
    /// selects. Reply entries are found by their backend id and, in case they carry none, by
    /// the reply key of their forward entry.
    fn purge_udp_ct(&mut self, gone: impl Fn(u32) -> bool) -> Result<usize, SyncError> {
        let Some(p) = &mut self.maps.packet else {
            return Ok(0);
        };
        Ok(purge_udp_ct_in(&mut p.ct4, &gone)? + purge_udp_ct_in(&mut p.ct6, &gone)?)
    }

    fn delete_svc(&mut self, at: SvcAt) -> Result<(), SyncError> {
        match at.vip {
            IpAddr::V4(a) => ignore_missing(
                self.maps.svc4.remove(&Service4Key::scoped(
                    a, at.port, at.proto, at.slot, at.scope,
                )),
                map_names::SERVICES_V4,
            ),
            IpAddr::V6(a) => ignore_missing(
                self.maps.svc6.remove(&Service6Key::scoped(
                    a, at.port, at.proto, at.slot, at.scope,
                )),
                map_names::SERVICES_V6,
            ),
        }
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), SyncError> {
        match self.installed.backends.remove(&id).map(|b| b.addr.ip) {
            Some(IpAddr::V6(_)) => {
                ignore_missing(self.maps.be6.remove(&id), map_names::BACKENDS_V6)
            }
            _ => ignore_missing(self.maps.be4.remove(&id), map_names::BACKENDS_V4),
        }
    }
}

/// A service-map key: the address, port, protocol, scope and slot (the wildcard entry of an
/// address has port, protocol, scope and slot 0).
#[derive(Clone, Copy, Debug)]
struct SvcAt {
    vip: IpAddr,
    port: u16,
    proto: u8,
    scope: u8,
    slot: u16,
}

impl SvcAt {
    fn wildcard(vip: IpAddr) -> Self {
        SvcAt {
            vip,
            port: 0,
            proto: 0,
            scope: SCOPE_DEFAULT,
            slot: 0,
        }
    }

    fn of(fe: &Frontend, scope: u8, slot: u16) -> Self {
        SvcAt {
            vip: fe.vip,
            port: fe.port,
            proto: fe.protocol.number(),
            scope,
            slot,
        }
    }
}

/// One frontend of one scope as [`Syncer::apply_scoped`] writes it.
struct Scoped<'a> {
    fe: &'a Frontend,
    scope: u8,
    svc_id: u32,
    /// Its slot-0 flags (`SVC_FLAG_*`).
    flags: u16,
}

/// The `BE_FLAG_*` of a backend.
fn backend_flags(b: &Backend) -> u8 {
    if b.local { BE_FLAG_LOCAL } else { 0 }
}

/// Writes `entries` in batches; an error names the map.
fn write_batch<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    entries: &[(K, V)],
    name: &'static str,
) -> Result<(), SyncError> {
    crate::datapath::batch::update(map, entries)
        .map_err(op_err(name, format!("write {} entries", entries.len())))?;
    Ok(())
}

/// [`Syncer::purge_udp_ct`] for one family's conntrack map; returns how many entries went.
fn purge_udp_ct_in<K: CtKey>(
    map: &mut HashMap<MapData, K, K::Value>,
    gone: &impl Fn(u32) -> bool,
) -> Result<usize, SyncError> {
    let mut stale = Vec::new();
    // LRU entries can vanish while we walk: skip them.
    for (k, v) in map.iter().flatten() {
        let e = k.view(&v);
        if e.proto != PROTO_UDP || !gone(e.backend_id) {
            continue;
        }
        stale.push(k);
        if e.dir == CT_DIR_FORWARD {
            stale.push(k.reply_key(&v));
        }
    }
    let mut n = 0;
    for k in stale {
        match map.remove(&k) {
            Ok(()) => n += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(op_err(K::MAP, "delete")(e).into()),
        }
    }
    Ok(n)
}

fn ignore_missing(r: Result<(), aya::maps::MapError>, name: &'static str) -> Result<(), SyncError> {
    match r {
        Ok(()) => Ok(()),
        // A delete of an absent key fails with ENOENT.
        Err(e) if maps::is_missing(&e) => Ok(()),
        Err(e) => Err(op_err(name, "delete")(e).into()),
    }
}

fn check_entry(fe: &Frontend, entry: &ServiceEntry) -> Result<(), SyncError> {
    if entry.backends.len() > usize::from(MAX_BACKENDS_PER_SERVICE) {
        return Err(SyncError::TooManyBackends {
            frontend: *fe,
            count: entry.backends.len(),
            max: MAX_BACKENDS_PER_SERVICE,
        });
    }
    if let Some(b) = entry
        .backends
        .iter()
        .find(|b| b.ip.is_ipv4() != fe.vip.is_ipv4())
    {
        return Err(SyncError::FamilyMismatch {
            frontend: *fe,
            backend: *b,
        });
    }
    Ok(())
}

/// Slot numbers fit u16: `check_entry` bounds the backend count.
fn slot_u16(slot: usize) -> u16 {
    u16::try_from(slot).unwrap_or(u16::MAX)
}

fn alloc(next: &mut u32) -> Result<u32, SyncError> {
    let id = *next;
    if id == u32::MAX {
        return Err(SyncError::OutOfIds);
    }
    *next += 1;
    Ok(id)
}

/// The smallest id in `1..max` that `used` does not hold.
pub fn smallest_free_id(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
    let mut candidate = 1u32;
    for id in used.range(1..) {
        if *id > candidate {
            break;
        }
        candidate = candidate.checked_add(1)?;
    }
    (candidate < max).then_some(candidate)
}

/// The Maglev table of a frontend whose backends are `(ip:port, backend id)`; all zeros (no
/// backend) when there are none.
pub fn maglev_table(backends: &[(String, u32)]) -> MaglevValue {
    let names: Vec<&str> = backends.iter().map(|(n, _)| n.as_str()).collect();
    let mut v = MaglevValue {
        backend_ids: [0; MAGLEV_TABLE_SIZE],
        _pad: 0,
    };
    for (slot, idx) in v.backend_ids.iter_mut().zip(maglev::populate(&names)) {
        *slot = backends[idx].1;
    }
    v
}

/// New slot contents for a frontend: backends that stay keep their slot, newcomers fill the
/// holes, and when the set shrinks the last slots move into the remaining holes. Slots are
/// dense (1..=count), so a few moves are unavoidable when backends leave; none when they only
/// come.
pub fn assign_slots(old: &[u32], desired: &BTreeSet<u32>) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| (desired.contains(id) && seen.insert(*id)).then_some(*id))
        .collect();
    let mut newcomers: VecDeque<u32> = desired
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        match newcomers.pop_front() {
            Some(id) => *s = Some(id),
            None => break,
        }
    }
    slots.extend(newcomers.into_iter().map(Some));
    // Compact: move the last occupied slot into the first hole until none is left.
    while let Some(hole) = slots.iter().position(Option::is_none) {
        match slots.iter().rposition(Option::is_some) {
            Some(last) if last > hole => {
                slots[hole] = slots[last].take();
            }
            _ => break,
        }
    }
    slots.into_iter().flatten().collect()
}

/// Logs the outcome of an apply: `apply_us` is the time spent writing the maps, `latency_us`
/// the time from the oldest event behind it being received to the maps holding it.
pub fn log_stats(
    st: &SyncStats,
    full: bool,
    apply: std::time::Duration,
    latency: Option<std::time::Duration>,
) {
    let apply_us = apply.as_micros() as u64;
    let latency_us = latency.map(|l| l.as_micros() as u64);
    if st.changed() {
        info!(
            full,
            apply_us,
            latency_us,
            frontends = st.frontends,
            added = st.frontends_added,
            updated = st.frontends_updated,
            removed = st.frontends_removed,
            backends_added = st.backends_added,
            backends_removed = st.backends_removed,
            writes = st.writes,
            deletes = st.deletes,
            lru_purged = st.lru_purged,
            maglev_writes = st.maglev_writes,
            ct_purged = st.ct_purged,
            "synced"
        );
    } else {
        info!(
            frontends = st.frontends,
            full, apply_us, latency_us, "synced (no change)"
        );
    }
}

/// Used when an apply fails half way: the mirror may be off, so the maps are read again.
pub fn recover(syncer: &mut Syncer, err: &SyncError) {
    warn!(error = %err, "applying the table failed; re-reading the maps and retrying on the next change");
    if let Err(e) = syncer.resync() {
        warn!(error = %e, "re-reading the maps failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn growing_keeps_every_slot() {
        assert_eq!(
            assign_slots(&[3, 1, 2], &set(&[1, 2, 3, 4, 5])),
            vec![3, 1, 2, 4, 5]
        );
    }

    #[test]
    fn a_new_backend_fills_the_hole_of_a_removed_one() {
        assert_eq!(assign_slots(&[1, 2, 3], &set(&[1, 3, 9])), vec![1, 9, 3]);
    }

    #[test]
    fn shrinking_moves_only_the_last_slot() {
        assert_eq!(assign_slots(&[1, 2, 3, 4], &set(&[1, 3, 4])), vec![1, 4, 3]);
        assert_eq!(assign_slots(&[1, 2, 3, 4], &set(&[4])), vec![4]);
        assert_eq!(assign_slots(&[1, 2], &set(&[])), Vec::<u32>::new());
    }

    #[test]
    fn service_ids_fill_the_lowest_hole() {
        assert_eq!(smallest_free_id(&set(&[]), 10), Some(1));
        assert_eq!(smallest_free_id(&set(&[1, 2, 4]), 10), Some(3));
        assert_eq!(smallest_free_id(&set(&[0, 2, 3]), 10), Some(1));
        assert_eq!(smallest_free_id(&set(&[1, 2, 3]), 10), Some(4));
        assert_eq!(smallest_free_id(&set(&[1, 2, 3]), 4), None);
        // Ids adopted from an older agent at or above the limit do not block the range.
        assert_eq!(smallest_free_id(&set(&[1, 70_000]), MAX_SVC_ID), Some(2));
    }

    #[test]
    fn maglev_table_holds_only_the_backends_ids() {
        let backends: Vec<(String, u32)> = vec![
            ("10.0.0.1:80".into(), 11),
            ("10.0.0.2:80".into(), 12),
            ("10.0.0.3:80".into(), 13),
        ];
        let t = maglev_table(&backends);
        assert!(t.backend_ids.iter().all(|x| [11, 12, 13].contains(x)));
        for id in [11, 12, 13] {
            let n = t.backend_ids.iter().filter(|x| **x == id).count();
            assert!((340..=341).contains(&n), "id {id}: {n}");
        }
        // The table depends on addresses, not on ids or their order: renumbered and
        // reversed, every entry names the same address.
        let renumbered: Vec<(String, u32)> = backends
            .iter()
            .rev()
            .map(|(name, id)| (name.clone(), id + 10))
            .collect();
        let t2 = maglev_table(&renumbered);
        let shifted: Vec<u32> = t.backend_ids.iter().map(|id| id + 10).collect();
        assert_eq!(t2.backend_ids.as_slice(), shifted.as_slice());
        assert!(maglev_table(&[]).backend_ids.iter().all(|x| *x == 0));
    }

    #[test]
    fn duplicate_or_zero_slots_are_repaired() {
        assert_eq!(assign_slots(&[1, 1, 0], &set(&[1, 2])), vec![1, 2]);
    }
}
