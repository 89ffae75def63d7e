//! The load-balancing decision shared by every forward hook (connect4/6, sendmsg4/6) and the
//! reverse translation shared by the reverse hooks (recvmsg4/6, getpeername4/6).
//!
//! Forward ([`forward4`] / [`forward6`]): wildcard check (is it a VIP?) -> frontend lookup
//! (slot 0) -> backend choice (per-socket UDP flow, ClientIP affinity, or a random slot) ->
//! the address is rewritten and the reverse NAT entry recorded.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use clusterip_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, SVC_FLAG_AFFINITY, SVC_FLAG_DROP,
    SVC_FLAG_OPEN, Service4Key, Service6Key, ServiceValue, SockFlowKey, SockFlowValue,
    SockRevNat4Key, SockRevNat4Value, SockRevNat6Key, SockRevNat6Value, ip4_from_net, ip6_from_net,
    port_from_net,
};

use crate::ctx;
use crate::maps::{
    CIP_AFFINITY, CIP_BE4, CIP_BE6, CIP_RNAT4, CIP_RNAT6, CIP_SOCKFLOW, CIP_SVC4, CIP_SVC6,
};

pub const ECONNREFUSED: i32 = 111;
pub const EHOSTUNREACH: i32 = 113;

const NS_PER_SEC: u64 = 1_000_000_000;
/// BPF_ANY.
const ANY: u64 = 0;

/// What a forward hook does with the destination.
pub enum Decision<B> {
    /// Not a service address: leave the socket address exactly as it is.
    Pass,
    /// A VIP with no usable backend (or an undefined port on a VIP): fail with this errno.
    Refuse(i32),
    /// Rewrite the destination to this backend.
    Forward { backend: B, svc_id: u32 },
}

/// One address family's service and backend tables.
pub trait Family {
    type SvcKey: Copy;
    type Backend: Copy;
    fn service(key: &Self::SvcKey) -> Option<ServiceValue>;
    fn backend(id: u32) -> Option<Self::Backend>;
    fn with_slot(key: &Self::SvcKey, slot: u16) -> Self::SvcKey;
    fn wildcard(key: &Self::SvcKey) -> Self::SvcKey;
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type SvcKey = Service4Key;
    type Backend = Backend4;

    #[inline(always)]
    fn service(key: &Service4Key) -> Option<ServiceValue> {
        // SAFETY: the value is copied out right away.
        unsafe { CIP_SVC4.get(key) }.copied()
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend4> {
        // SAFETY: as above.
        unsafe { CIP_BE4.get(&id) }.copied()
    }
    #[inline(always)]
    fn with_slot(key: &Service4Key, slot: u16) -> Service4Key {
        Service4Key { slot, ..*key }
    }
    #[inline(always)]
    fn wildcard(key: &Service4Key) -> Service4Key {
        Service4Key {
            addr: key.addr,
            port: 0,
            slot: 0,
            proto: 0,
            scope: 0,
            _pad: [0; 2],
        }
    }
}

impl Family for V6 {
    type SvcKey = Service6Key;
    type Backend = Backend6;

    #[inline(always)]
    fn service(key: &Service6Key) -> Option<ServiceValue> {
        // SAFETY: the value is copied out right away.
        unsafe { CIP_SVC6.get(key) }.copied()
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend6> {
        // SAFETY: as above.
        unsafe { CIP_BE6.get(&id) }.copied()
    }
    #[inline(always)]
    fn with_slot(key: &Service6Key, slot: u16) -> Service6Key {
        Service6Key { slot, ..*key }
    }
    #[inline(always)]
    fn wildcard(key: &Service6Key) -> Service6Key {
        Service6Key {
            addr: key.addr,
            port: 0,
            slot: 0,
            proto: 0,
            scope: 0,
            _pad: [0; 2],
        }
    }
}

#[inline(always)]
fn refuse_errno(fe: &ServiceValue) -> i32 {
    if fe.flags & SVC_FLAG_DROP != 0 {
        EHOSTUNREACH
    } else {
        ECONNREFUSED
    }
}

/// Chooses the backend for a connection or datagram to the frontend `key` (slot 0).
///
/// `flow` is set for unconnected UDP (sendmsg): the socket keeps the backend it got while that
/// backend exists.
#[inline(always)]
pub fn select<F: Family>(
    ctx: &SockAddrContext,
    key: &F::SvcKey,
    flow: Option<&SockFlowKey>,
) -> Decision<F::Backend> {
    // Most connections are not to a VIP: one lookup (the VIP's wildcard entry) says so. The
    // agent writes a VIP's wildcard before its frontends and removes it after them.
    let Some(wildcard) = F::service(&F::wildcard(key)) else {
        return Decision::Pass;
    };
    let Some(fe) = F::service(key) else {
        if wildcard.flags & SVC_FLAG_OPEN != 0 {
            // Only an external IP: other ports are the address's own.
            return Decision::Pass;
        }
        debug!(ctx, "clusterip: port not defined on VIP: refused");
        return Decision::Refuse(ECONNREFUSED);
    };
    let count = fe.count;
    if count == 0 {
        debug!(ctx, "clusterip: svc {} has no backends: refused", fe.svc_id);
        return Decision::Refuse(refuse_errno(&fe));
    }
    // ClientIP affinity: the client is the socket's netns. Key and clock are read once and
    // serve the lookup and every write below.
    let affinity = (fe.flags & SVC_FLAG_AFFINITY != 0).then(|| Affinity {
        key: AffinityKey::netns(ctx::netns_cookie(ctx), fe.svc_id),
        // SAFETY: plain helper call.
        now: unsafe { bpf_ktime_get_ns() },
    });

    // Unconnected UDP: stay with the socket's backend while it exists. Backend ids are per
    // frontend and the agent never reuses one while LRU entries may name it, so "the id is in
    // the backends map" means "still a backend of this service".
    if let Some(fk) = flow {
        // SAFETY: copied out right away.
        if let Some(prev) = unsafe { CIP_SOCKFLOW.get(fk) }.copied()
            && let Some(backend) = F::backend(prev.backend_id)
        {
            if let Some(a) = &affinity {
                a.write(ctx, prev.backend_id);
            }
            debug!(
                ctx,
                "clusterip: svc {} udp flow keeps backend {}", fe.svc_id, prev.backend_id
            );
            return Decision::Forward {
                backend,
                svc_id: fe.svc_id,
            };
        }
    }

    // The client's previous backend, if fresh and still there.
    if let Some(a) = &affinity {
        // SAFETY: copied out right away.
        if let Some(prev) = unsafe { CIP_AFFINITY.get(&a.key) }.copied() {
            let timeout_ns = u64::from(fe.affinity_timeout_s) * NS_PER_SEC;
            if a.now.wrapping_sub(prev.last_used_ns) < timeout_ns
                && let Some(backend) = F::backend(prev.backend_id)
            {
                a.write(ctx, prev.backend_id);
                // Not recorded as a UDP flow: affinity already keeps the client on it.
                debug!(
                    ctx,
                    "clusterip: svc {} affinity keeps backend {}", fe.svc_id, prev.backend_id
                );
                return Decision::Forward {
                    backend,
                    svc_id: fe.svc_id,
                };
            }
        }
    }

    // A random slot in 1..=count.
    // SAFETY: plain helper call.
    let rnd = unsafe { bpf_get_prandom_u32() };
    let slot = (1 + rnd % u32::from(count)) as u16;
    let Some(sv) = F::service(&F::with_slot(key, slot)) else {
        // The agent writes slots before the count that covers them; a hole is a bug or a
        // torn update: refuse rather than send the packet to the VIP.
        debug!(
            ctx,
            "clusterip: svc {} slot {} missing: refused", fe.svc_id, slot
        );
        return Decision::Refuse(refuse_errno(&fe));
    };
    let Some(backend) = F::backend(sv.backend_id) else {
        debug!(
            ctx,
            "clusterip: svc {} backend {} missing: refused", fe.svc_id, sv.backend_id
        );
        return Decision::Refuse(refuse_errno(&fe));
    };
    if let Some(a) = &affinity {
        a.write(ctx, sv.backend_id);
    }
    record_flow(ctx, flow, sv.backend_id, slot);
    debug!(
        ctx,
        "clusterip: svc {} slot {} backend {}", fe.svc_id, slot, sv.backend_id
    );
    Decision::Forward {
        backend,
        svc_id: fe.svc_id,
    }
}

/// A ClientIP-affinity service's entry for this client, and the time of this decision.
struct Affinity {
    key: AffinityKey,
    now: u64,
}

impl Affinity {
    /// Records (or refreshes) that the client uses `backend_id` now.
    #[inline(always)]
    fn write(&self, ctx: &SockAddrContext, backend_id: u32) {
        let value = AffinityValue {
            last_used_ns: self.now,
            backend_id,
            _pad: 0,
        };
        if CIP_AFFINITY.insert(&self.key, &value, ANY).is_err() {
            debug!(ctx, "clusterip: affinity update failed");
        }
    }
}

/// Remembers the backend (and its slot) an unconnected UDP socket sends a VIP:port's datagrams to.
#[inline(always)]
fn record_flow(ctx: &SockAddrContext, flow: Option<&SockFlowKey>, backend_id: u32, slot: u16) {
    if let Some(fk) = flow {
        let value = SockFlowValue {
            backend_id,
            slot,
            _pad: 0,
        };
        if CIP_SOCKFLOW.insert(fk, &value, ANY).is_err() {
            debug!(ctx, "clusterip: sockflow update failed");
        }
    }
}

/// Records that `cookie`'s traffic with backend `be` stands for `vip:port` (network order).
#[inline(always)]
fn record_rnat4(
    ctx: &SockAddrContext,
    cookie: u64,
    be: &Backend4,
    vip: u32,
    port: u16,
    svc_id: u32,
) {
    let key = SockRevNat4Key {
        cookie,
        addr: be.addr,
        port: be.port,
        _pad: 0,
    };
    let value = SockRevNat4Value {
        addr: vip,
        port,
        _pad: 0,
        svc_id,
    };
    if CIP_RNAT4.insert(&key, &value, ANY).is_err() {
        debug!(ctx, "clusterip: rnat4 update failed");
    }
}

#[inline(always)]
fn record_rnat6(
    ctx: &SockAddrContext,
    cookie: u64,
    be: &Backend6,
    vip: [u32; 4],
    port: u16,
    svc_id: u32,
) {
    let key = SockRevNat6Key {
        cookie,
        addr: be.addr,
        port: be.port,
        _pad: [0; 6],
    };
    let value = SockRevNat6Value {
        addr: vip,
        port,
        _pad: 0,
        svc_id,
    };
    if CIP_RNAT6.insert(&key, &value, ANY).is_err() {
        debug!(ctx, "clusterip: rnat6 update failed");
    }
}

/// The VIP:port a socket's peer `addr:port` (a backend) stands for, if any.
#[inline(always)]
fn rnat4(cookie: u64, addr: u32, port: u16) -> Option<SockRevNat4Value> {
    let key = SockRevNat4Key {
        cookie,
        addr,
        port,
        _pad: 0,
    };
    // SAFETY: copied out right away.
    unsafe { CIP_RNAT4.get(&key) }.copied()
}

#[inline(always)]
fn rnat6(cookie: u64, addr: [u32; 4], port: u16) -> Option<SockRevNat6Value> {
    let key = SockRevNat6Key {
        cookie,
        addr,
        port,
        _pad: [0; 6],
    };
    // SAFETY: copied out right away.
    unsafe { CIP_RNAT6.get(&key) }.copied()
}

/// The forward hooks: connect4/6 (TCP and UDP) and sendmsg4/6 (unconnected UDP).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Sendmsg,
}

impl Hook {
    #[inline(always)]
    fn handles(self, proto: u32) -> bool {
        match self {
            Hook::Connect => proto == ctx::PROTO_TCP || proto == ctx::PROTO_UDP,
            Hook::Sendmsg => proto == ctx::PROTO_UDP,
        }
    }
}

/// IPv4 forward hook. `Ok` lets the syscall go on (rewritten or untouched), `Err(errno)`
/// makes it fail with errno.
#[inline(always)]
pub fn forward4(ctx: &SockAddrContext, hook: Hook) -> Result<(), i32> {
    let proto = ctx::protocol(ctx);
    if !hook.handles(proto) {
        return Ok(());
    }
    forward_v4_addr(ctx, hook, proto, ctx::ip4(ctx), ctx::port(ctx), |addr| {
        ctx::set_ip4(ctx, addr)
    })
}

/// IPv6 forward hook; IPv4-mapped destinations (`::ffff:a.b.c.d`) go through the IPv4 tables
/// (the kernel then runs the IPv4 stack, and recvmsg6/getpeername6 map them back).
#[inline(always)]
pub fn forward6(ctx: &SockAddrContext, hook: Hook) -> Result<(), i32> {
    let proto = ctx::protocol(ctx);
    if !hook.handles(proto) {
        return Ok(());
    }
    let vip = ctx::ip6(ctx);
    let port = ctx::port(ctx);
    if ctx::is_v4_mapped(&vip) {
        return forward_v4_addr(ctx, hook, proto, vip[3], port, |addr| {
            ctx::set_ip6_word3(ctx, addr)
        });
    }
    let key = Service6Key {
        addr: vip,
        port,
        slot: 0,
        proto: proto as u8,
        scope: 0,
        _pad: [0; 2],
    };
    let flow = flow_key(ctx, hook, vip, 6, proto, port);
    match select::<V6>(ctx, &key, flow.as_ref()) {
        Decision::Pass => Ok(()),
        Decision::Refuse(errno) => {
            debug!(
                ctx,
                "clusterip: {:i}:{} refused",
                ip6_from_net(vip),
                port_from_net(port)
            );
            Err(errno)
        }
        Decision::Forward { backend, svc_id } => {
            debug!(
                ctx,
                "clusterip: [{:i}]:{} -> [{:i}]:{}",
                ip6_from_net(vip),
                port_from_net(port),
                ip6_from_net(backend.addr),
                port_from_net(backend.port)
            );
            ctx::set_ip6(ctx, backend.addr);
            ctx::set_port(ctx, backend.port);
            record_rnat6(ctx, cookie_of(ctx, &flow), &backend, vip, port, svc_id);
            Ok(())
        }
    }
}

/// An IPv4 destination (also reached through a v4-mapped IPv6 one, whose last word
/// `set_addr` then writes).
#[inline(always)]
fn forward_v4_addr(
    ctx: &SockAddrContext,
    hook: Hook,
    proto: u32,
    vip: u32,
    port: u16,
    set_addr: impl FnOnce(u32),
) -> Result<(), i32> {
    let key = Service4Key {
        addr: vip,
        port,
        slot: 0,
        proto: proto as u8,
        scope: 0,
        _pad: [0; 2],
    };
    let flow = flow_key(ctx, hook, [vip, 0, 0, 0], 4, proto, port);
    match select::<V4>(ctx, &key, flow.as_ref()) {
        Decision::Pass => Ok(()),
        Decision::Refuse(errno) => {
            debug!(
                ctx,
                "clusterip: {:i}:{} refused",
                ip4_from_net(vip),
                port_from_net(port)
            );
            Err(errno)
        }
        Decision::Forward { backend, svc_id } => {
            debug!(
                ctx,
                "clusterip: {:i}:{} -> {:i}:{}",
                ip4_from_net(vip),
                port_from_net(port),
                ip4_from_net(backend.addr),
                port_from_net(backend.port)
            );
            set_addr(backend.addr);
            ctx::set_port(ctx, backend.port);
            record_rnat4(ctx, cookie_of(ctx, &flow), &backend, vip, port, svc_id);
            Ok(())
        }
    }
}

#[inline(always)]
fn flow_key(
    ctx: &SockAddrContext,
    hook: Hook,
    addr: [u32; 4],
    family: u8,
    proto: u32,
    port: u16,
) -> Option<SockFlowKey> {
    match hook {
        Hook::Connect => None,
        Hook::Sendmsg => Some(SockFlowKey {
            cookie: ctx::socket_cookie(ctx),
            addr,
            port,
            family,
            proto: proto as u8,
            _pad: 0,
        }),
    }
}

/// The socket cookie, taken from the flow key when there is one (one helper call fewer).
#[inline(always)]
fn cookie_of(ctx: &SockAddrContext, flow: &Option<SockFlowKey>) -> u64 {
    match flow {
        Some(f) => f.cookie,
        None => ctx::socket_cookie(ctx),
    }
}

/// IPv4 reverse hook (recvmsg4, getpeername4): a backend peer is shown as its VIP:port.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext) {
    let addr = ctx::ip4(ctx);
    let port = ctx::port(ctx);
    if let Some(v) = rnat4(ctx::socket_cookie(ctx), addr, port) {
        ctx::set_ip4(ctx, v.addr);
        ctx::set_port(ctx, v.port);
    }
}

/// IPv6 reverse hook (recvmsg6, getpeername6), including v4-mapped peers.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) {
    let addr = ctx::ip6(ctx);
    let port = ctx::port(ctx);
    let cookie = ctx::socket_cookie(ctx);
    if ctx::is_v4_mapped(&addr) {
        if let Some(v) = rnat4(cookie, addr[3], port) {
            ctx::set_ip6_word3(ctx, v.addr);
            ctx::set_port(ctx, v.port);
        }
    } else if let Some(v) = rnat6(cookie, addr, port) {
        ctx::set_ip6(ctx, v.addr);
        ctx::set_port(ctx, v.port);
    }
}
