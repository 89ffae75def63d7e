//! `xtask demo-client`: talks to the ClusterIP services like a pod would, and reports which
//! backend answered each request. Exits non-zero if any request failed.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Counts {
    tcp: usize,
    udp: usize,
}

pub fn run(
    tcp: SocketAddr,
    tcp_requests: usize,
    udp: SocketAddr,
    udp_requests: usize,
) -> Result<()> {
    let mut per_backend: BTreeMap<String, Counts> = BTreeMap::new();
    let mut failures = 0;
    for i in 1..=tcp_requests {
        match tcp_request(tcp) {
            Ok((name, peer)) => {
                println!(
                    "tcp {i}/{tcp_requests}: {tcp} -> \"hello from {name}\" (getpeername: {peer})"
                );
                per_backend.entry(name).or_default().tcp += 1;
            }
            Err(e) => {
                println!("tcp {i}/{tcp_requests}: {tcp} -> FAILED: {e:#}");
                failures += 1;
            }
        }
    }
    for i in 1..=udp_requests {
        // Alternate unconnected sendto()/recvfrom() (sendmsg4/recvmsg4 hooks) and connected
        // sockets (connect4/getpeername4 hooks).
        let connected = i % 2 == 0;
        let how = if connected { "connect+send" } else { "sendto" };
        match udp_request(udp, i, connected) {
            Ok((name, reply, from)) => {
                println!("udp {i}/{udp_requests}: {udp} ({how}) -> \"{reply}\" (from {from})");
                per_backend.entry(name).or_default().udp += 1;
            }
            Err(e) => {
                println!("udp {i}/{udp_requests}: {udp} ({how}) -> FAILED: {e:#}");
                failures += 1;
            }
        }
    }
    println!("answers per backend:");
    for (name, counts) in &per_backend {
        println!("  {name:<12} tcp {:>2}  udp {:>2}", counts.tcp, counts.udp);
    }
    if failures > 0 {
        bail!(
            "{failures} of {} requests failed",
            tcp_requests + udp_requests
        );
    }
    println!("all {} requests answered", tcp_requests + udp_requests);
    Ok(())
}

/// One HTTP/1.0 GET; returns (backend name, getpeername()).
fn tcp_request(service: SocketAddr) -> Result<(String, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&service, TIMEOUT).context("connect")?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let peer = stream.peer_addr().context("getpeername")?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {service}\r\n\r\n").context("send")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("receive")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let name = body
        .trim_end()
        .strip_prefix("hello from ")
        .with_context(|| format!("unexpected answer {body:?}"))?
        .to_string();
    if peer != service {
        bail!("answered by {name}, but getpeername() says {peer} instead of the service address");
    }
    Ok((name, peer))
}

/// One datagram; returns (backend name, reply, source address of the reply).
fn udp_request(
    service: SocketAddr,
    seq: usize,
    connected: bool,
) -> Result<(String, String, SocketAddr)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind")?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    let payload = format!("ping {seq}");
    if connected {
        socket.connect(service).context("connect")?;
        let peer = socket.peer_addr().context("getpeername")?;
        if peer != service {
            bail!("getpeername() says {peer} instead of the service address");
        }
        socket.send(payload.as_bytes()).context("send")?;
    } else {
        socket
            .send_to(payload.as_bytes(), service)
            .context("sendto")?;
    }
    let mut buf = [0u8; 2048];
    let (len, from) = socket.recv_from(&mut buf).context("no reply")?;
    let reply = String::from_utf8_lossy(&buf[..len]).into_owned();
    let (name, echoed) = reply
        .split_once(": ")
        .with_context(|| format!("unexpected reply {reply:?}"))?;
    if echoed != payload {
        bail!("reply {reply:?} does not echo {payload:?}");
    }
    if from != service {
        bail!("reply {reply:?} came from {from} instead of the service address");
    }
    Ok((name.to_string(), reply.clone(), from))
}
