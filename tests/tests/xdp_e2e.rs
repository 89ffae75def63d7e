//! End to end with XDP doing the forward translation: the agent runs with
//! `--xdp-iface cipc` (the node's veth toward the client) and TC only on the pods' veths
//! (`--tc-iface cipp*`), so the TC program never sees the client's packets: everything that
//! reaches a backend was translated by `xdp_ingress`, and replies are reverse-NATed at TC.

use std::net::SocketAddr;

use clusterip_tests::manifests::{Service, tcp, udp};
use clusterip_tests::node::{
    CLIENT_IFACE, DATA_PORT, HTTP_PORT, NodeFixture, UDP_PORT, client_ip, pod_iface, pod_ip,
    tcx_ingress,
};
use clusterip_tests::process::{assert_spread_via, tally};
use clusterip_tests::require_env;

const MB20: u64 = 20 * 1024 * 1024;

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// HTTP (v4 and v6), UDP (connected, v4 and v6) and 20 MiB each way (v4) through the VIP with
/// the forward path at XDP: every response arrives, getpeername()/recvfrom() report VIP:port,
/// the backends see the client's address, HTTP is spread over all three backends, the
/// transfers are byte-identical.
#[test]
fn xdp_forward_tc_reply() {
    let env = require_env!();
    let mut fx = NodeFixture::new(env, 3).unwrap();
    fx.standard_backends().unwrap();
    let mut objects = Vec::new();
    for (name, vip, v6) in [("web", "10.96.0.10", false), ("web6", "fd00:96::10", true)] {
        let svc = Service::new(name, vip)
            .port(tcp("http", 80, HTTP_PORT))
            .port(udp("dns", 53, UDP_PORT))
            .port(tcp("data", 91, DATA_PORT));
        objects.push(svc.to_value());
        objects.push(
            svc.slice("a")
                .ready((0..3).map(|i| pod_ip(i, v6)))
                .to_value(),
        );
    }
    fx.manifests.write("web.yaml", &objects).unwrap();
    let pods: Vec<String> = (0..3).map(pod_iface).collect();
    fx.start_agent_tc("cipp*", &pods, &["--xdp-iface", CLIENT_IFACE])
        .unwrap();

    let net = fx.net().unwrap();
    assert!(
        net.xdp.iter().any(|x| x.devname == CLIENT_IFACE),
        "no XDP program on {CLIENT_IFACE}: {net:?}"
    );
    assert!(
        !net.tc.iter().any(|t| t.devname == CLIENT_IFACE)
            && tcx_ingress(&fx.topo.node, CLIENT_IFACE).unwrap().is_empty(),
        "TC on {CLIENT_IFACE} would hide what XDP does: {net:?}"
    );
    eprintln!("programs in the node netns: {net:?}");

    for (vip, v6) in [("10.96.0.10", false), ("fd00:96::10", true)] {
        let addr = at(vip, 80);
        let replies = fx.client().http(addr, 60).unwrap();
        for r in &replies {
            assert_eq!(r.status, Some(200), "{r:?}");
        }
        assert_spread_via(
            &replies,
            &addr.to_string(),
            &client_ip(v6).to_string(),
            &["be-0", "be-1", "be-2"],
        );
        let addr = at(vip, 53);
        let replies = fx.client().udp_connected(addr, 5).unwrap();
        assert_eq!(tally(&replies).len(), 1, "{replies:?}");
        for r in &replies {
            assert_eq!(r.peer, Some(addr.to_string()), "{r:?}");
            assert_eq!(r.from, Some(addr.to_string()), "{r:?}");
        }
    }

    let addr = at("10.96.0.10", 91);
    let up = fx.client().transfer(true, addr, MB20, 21).unwrap();
    assert!(
        up.reply
            .as_deref()
            .is_some_and(|v| v.ends_with(&format!(" received={MB20} mismatch=none"))),
        "upload: {up:?}"
    );
    assert_eq!(up.peer, Some(addr.to_string()), "{up:?}");
    let down = fx.client().transfer(false, addr, MB20, 22).unwrap();
    assert!(down.is_ok(), "{down:?}");
    assert_eq!((down.bytes, down.mismatch), (Some(MB20), None), "{down:?}");
    assert_eq!(down.peer, Some(addr.to_string()), "{down:?}");
}
