//! A test client: connects like an application would and reports what the socket API said.
//!
//! ```text
//! cip-client tcp ADDR:PORT [--count N] [--timeout-ms MS]
//! cip-client udp-connected ADDR:PORT [--count N] [--timeout-ms MS]
//! cip-client udp-unconnected ADDR:PORT [--count N] [--timeout-ms MS]
//! cip-client tcp-hold ADDR:PORT [--timeout-ms MS]
//! cip-client http ADDR:PORT [--count N] [--timeout-ms MS]
//! cip-client tcp-upload|tcp-download ADDR:PORT --bytes N [--seed S] [--timeout-ms MS]
//! cip-client udp-multi|tcp-multi ADDR:PORT --sockets N [--timeout-ms MS]
//! ```
//! Prints one JSON object per line on stdout. Network errors never abort the program; they are
//! reported as `{"error": "...", "errno": N, "elapsed_ms": T}`.
//! - `tcp`: N sequential connections; each `{"peer": getpeername(), "reply": first line}`.
//! - `udp-connected`: one socket, connect(), N times send "ping" and recv:
//!   `{"peer": getpeername(), "from": address recvfrom reported, "reply": ...}`.
//!   With `--size N` (udp modes) the datagram is "ping" padded with 'x' to N bytes and sent
//!   with "don't fragment" (IP_PMTUDISC_DO / IPV6_PMTUDISC_DO).
//! - `udp-unconnected`: one socket that is never bound nor connected, N times sendto "ping" and
//!   recvfrom: `{"from": address recvfrom reported, "reply": ...}`.
//! - `tcp-hold`: one connection; prints `{"peer", "reply"}` for the greeting, then for each line
//!   read on stdin sends it, reads the echo and prints `{"alive": echo == line, "reply": ...}`.
//!   Exits at end of stdin.
//! - `http`: N sequential `GET /` requests (HTTP/1.1, one connection each):
//!   `{"peer", "status": code, "reply": first line of the body}`.
//! - `tcp-upload`: to a `--tcp-data` backend: sends `up SEED N` and N bytes of the seed's
//!   stream, then `{"peer", "reply": the backend's verdict line, "bytes": N}`.
//! - `tcp-download`: sends `down SEED N`, reads the greeting and N bytes, checking each against
//!   the stream: `{"peer", "reply": greeting, "bytes": bytes received, "mismatch": offset|null}`.
//! - `udp-connected-multi`: the same with N connected sockets (each connect()ed once).
//! - `udp-multi`: N unconnected UDP sockets; for each line on stdin every socket sends "ping"
//!   to ADDR and waits for the answer; prints `{"round": [one object per socket, as udp]}`
//!   (with `"local"`: the socket's own address). Exits at end of stdin.
//! - `tcp-multi`: N TCP connections to an echo backend, opened at once; prints
//!   `{"round": [greeting per connection]}`, then for each line on stdin sends it on every
//!   connection and prints `{"round": [{"alive", "reply"} per connection]}`.
//!
//! Every object also carries `elapsed_ms`, the time the operation took, so tests can tell an
//! immediate error from a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    mode: String,
    addr: SocketAddr,
    count: u32,
    timeout: Duration,
    bytes: u64,
    seed: u64,
    sockets: usize,
    size: usize,
    /// The path of `http` requests.
    path: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("missing mode")?;
    let addr = args.next().ok_or("missing ADDR:PORT")?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let mut count = 1;
    let mut timeout = Duration::from_millis(1000);
    let mut bytes = 0;
    let mut seed = 1;
    let mut sockets = 1;
    let mut size = 0;
    let mut path = "/".to_owned();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bytes" => bytes = value.parse().map_err(|e| format!("bad --bytes: {e}"))?,
            "--seed" => seed = value.parse().map_err(|e| format!("bad --seed: {e}"))?,
            "--size" => size = value.parse().map_err(|e| format!("bad --size: {e}"))?,
            "--sockets" => sockets = value.parse().map_err(|e| format!("bad --sockets: {e}"))?,
            "--path" => path = value,
            "--count" => count = value.parse().map_err(|e| format!("bad --count: {e}"))?,
            "--timeout-ms" => {
                timeout = Duration::from_millis(
                    value
                        .parse()
                        .map_err(|e| format!("bad --timeout-ms: {e}"))?,
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        mode,
        addr,
        count,
        timeout,
        bytes,
        seed,
        sockets,
        size,
        path,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cip-client: {e}");
            eprintln!(
                "usage: cip-client tcp|udp-connected|udp-unconnected|tcp-hold|http|tcp-upload|tcp-download|udp-multi|udp-connected-multi|tcp-multi ADDR:PORT [--count N] [--timeout-ms MS] [--bytes N] [--seed S] [--sockets N] [--size N]"
            );
            return ExitCode::from(2);
        }
    };
    match args.mode.as_str() {
        "tcp" => (0..args.count).for_each(|_| emit(tcp_once(&args))),
        "udp-connected" => udp(&args, true),
        "udp-unconnected" => udp(&args, false),
        "tcp-hold" => tcp_hold(&args),
        "http" => (0..args.count).for_each(|_| emit(http_once(&args))),
        "tcp-upload" => emit(upload(&args)),
        "tcp-download" => emit(download(&args)),
        "udp-multi" => udp_multi(&args, false),
        "udp-connected-multi" => udp_multi(&args, true),
        "tcp-multi" => tcp_multi(&args),
        other => {
            eprintln!("cip-client: unknown mode {other}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    // If the test stopped reading there is nobody to tell.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn error(e: &std::io::Error, start: Instant) -> Value {
    json!({
        "error": e.to_string(),
        "errno": e.raw_os_error().unwrap_or(0),
        "elapsed_ms": ms(start),
    })
}

fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    stream.read_line(&mut line)?;
    Ok(line.trim_end_matches('\n').to_owned())
}

fn tcp_connect(
    args: &Args,
    start: Instant,
) -> Result<(BufReader<TcpStream>, String, String), Value> {
    let stream =
        TcpStream::connect_timeout(&args.addr, args.timeout).map_err(|e| error(&e, start))?;
    stream
        .set_read_timeout(Some(args.timeout))
        .map_err(|e| error(&e, start))?;
    stream
        .set_write_timeout(Some(args.timeout))
        .map_err(|e| error(&e, start))?;
    let peer = stream.peer_addr().map_err(|e| error(&e, start))?;
    let mut reader = BufReader::new(stream);
    let reply = read_line(&mut reader).map_err(|e| error(&e, start))?;
    Ok((reader, peer.to_string(), reply))
}

fn tcp_once(args: &Args) -> Value {
    let start = Instant::now();
    match tcp_connect(args, start) {
        Ok((_, peer, reply)) => json!({"peer": peer, "reply": reply, "elapsed_ms": ms(start)}),
        Err(v) => v,
    }
}

fn tcp_hold(args: &Args) {
    let start = Instant::now();
    let mut reader = match tcp_connect(args, start) {
        Ok((reader, peer, reply)) => {
            emit(json!({"peer": peer, "reply": reply, "elapsed_ms": ms(start)}));
            reader
        }
        Err(v) => return emit(v),
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let start = Instant::now();
        let sent = reader.get_mut().write_all(format!("{line}\n").as_bytes());
        let result = sent.and_then(|_| read_line(&mut reader));
        emit(match result {
            Ok(reply) => {
                json!({"alive": reply == line, "reply": reply, "elapsed_ms": ms(start)})
            }
            Err(e) => {
                let mut v = error(&e, start);
                v["alive"] = json!(false);
                v
            }
        });
    }
}

fn sockaddr_from(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn sockaddr_to(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                sin.sin_addr.s_addr.to_ne_bytes().into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> std::io::Result<usize> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A UDP socket that is neither bound nor connected yet (the kernel autobinds on first use).
fn udp_socket(addr: &SocketAddr, timeout: Duration) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned right after.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv outlives the call; the length matches.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

fn getpeername(fd: &OwnedFd) -> std::io::Result<String> {
    // SAFETY: zeroed sockaddr_storage is valid; the kernel fills at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    cvt(unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    Ok(sockaddr_to(&storage).map_or_else(|| "?".into(), |a| a.to_string()))
}

fn udp(args: &Args, connected: bool) {
    let start = Instant::now();
    let fd = match udp_socket(&args.addr, args.timeout) {
        Ok(fd) => fd,
        Err(e) => return emit(error(&e, start)),
    };
    let (dst, dst_len) = sockaddr_from(&args.addr);
    if connected {
        // SAFETY: dst is a valid sockaddr of length dst_len.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &dst as *const _ as *const libc::sockaddr,
                dst_len,
            )
        };
        if let Err(e) = cvt(r) {
            return emit(error(&e, start));
        }
    }
    let mut payload = b"ping".to_vec();
    if args.size > payload.len() {
        payload.resize(args.size, b'x');
        // Don't fragment: a datagram too big for the path fails with EMSGSIZE once an ICMP
        // "fragmentation needed" / "packet too big" about it reached this socket.
        let (level, name, value) = if args.addr.is_ipv4() {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            )
        } else {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
            )
        };
        // SAFETY: value outlives the call; the length matches.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                &value as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if let Err(e) = cvt(r) {
            return emit(error(&e, start));
        }
    }
    let payload = &payload[..];
    for _ in 0..args.count {
        let start = Instant::now();
        emit(match udp_exchange(&fd, connected, payload, &dst, dst_len) {
            Ok((reply, from)) => {
                let reply = String::from_utf8_lossy(&reply).into_owned();
                let from = from.map_or_else(|| "?".into(), |a| a.to_string());
                if connected {
                    match getpeername(&fd) {
                        Ok(peer) => json!({
                            "peer": peer, "from": from, "reply": reply, "elapsed_ms": ms(start)
                        }),
                        Err(e) => error(&e, start),
                    }
                } else {
                    json!({"from": from, "reply": reply, "elapsed_ms": ms(start)})
                }
            }
            Err(e) => error(&e, start),
        });
    }
}

fn udp_exchange(
    fd: &OwnedFd,
    connected: bool,
    payload: &[u8],
    dst: &libc::sockaddr_storage,
    dst_len: libc::socklen_t,
) -> std::io::Result<(Vec<u8>, Option<SocketAddr>)> {
    let raw = fd.as_raw_fd();
    let ptr = payload.as_ptr() as *const libc::c_void;
    // SAFETY: payload and dst are valid for the given lengths during the calls.
    cvt_size(unsafe {
        if connected {
            libc::send(raw, ptr, payload.len(), 0)
        } else {
            libc::sendto(
                raw,
                ptr,
                payload.len(),
                0,
                dst as *const _ as *const libc::sockaddr,
                dst_len,
            )
        }
    })?;
    let mut buf = vec![0u8; 2048];
    // SAFETY: zeroed sockaddr_storage is valid; the kernel writes at most `len` bytes into it
    // and at most buf.len() bytes into buf.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let n = cvt_size(unsafe {
        libc::recvfrom(
            raw,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
            &mut from as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    buf.truncate(n);
    Ok((buf, sockaddr_to(&from)))
}

fn http_once(args: &Args) -> Value {
    let start = Instant::now();
    let result = (|| -> std::io::Result<(String, u16, String)> {
        let mut stream = TcpStream::connect_timeout(&args.addr, args.timeout)?;
        stream.set_read_timeout(Some(args.timeout))?;
        stream.set_write_timeout(Some(args.timeout))?;
        let peer = stream.peer_addr()?.to_string();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cip-client\r\nAccept: */*\r\n\r\n",
            args.path, args.addr
        );
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let invalid = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {text:?}"),
            )
        };
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(invalid)?;
        let status = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.split(' ').next())
            .and_then(|c| c.parse().ok())
            .ok_or_else(invalid)?;
        Ok((
            peer,
            status,
            // Whole, for multi-line bodies (a health check's JSON); the backends' one line
            // without its newline.
            body.trim_end().to_owned(),
        ))
    })();
    match result {
        Ok((peer, status, reply)) => {
            json!({"peer": peer, "status": status, "reply": reply, "elapsed_ms": ms(start)})
        }
        Err(e) => error(&e, start),
    }
}

fn data_connect(args: &Args, dir: &str) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect_timeout(&args.addr, args.timeout)?;
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    let peer = stream.peer_addr()?.to_string();
    stream.write_all(format!("{dir} {} {}\n", args.seed, args.bytes).as_bytes())?;
    Ok((stream, peer))
}

fn upload(args: &Args) -> Value {
    use clusterip_tests::datagen::Stream;
    let start = Instant::now();
    let result = (|| -> std::io::Result<(String, String)> {
        let (mut stream, peer) = data_connect(args, "up")?;
        let mut data = Stream::new(args.seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = args.bytes;
        while left > 0 {
            let n = buf.len().min(left as usize);
            data.fill(&mut buf[..n]);
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let reply = read_line(&mut BufReader::new(stream))?;
        Ok((peer, reply))
    })();
    match result {
        Ok((peer, reply)) => json!({
            "peer": peer, "reply": reply, "bytes": args.bytes, "elapsed_ms": ms(start)
        }),
        Err(e) => error(&e, start),
    }
}

fn download(args: &Args) -> Value {
    use clusterip_tests::datagen::Checker;
    let start = Instant::now();
    let result = (|| -> std::io::Result<(String, String, Checker)> {
        let (stream, peer) = data_connect(args, "down")?;
        let mut reader = BufReader::new(stream);
        let greeting = read_line(&mut reader)?;
        let mut checker = Checker::new(args.seed);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            checker.update(&buf[..n]);
        }
        Ok((peer, greeting, checker))
    })();
    match result {
        Ok((peer, reply, checker)) => json!({
            "peer": peer, "reply": reply, "bytes": checker.len,
            "mismatch": checker.first_mismatch, "elapsed_ms": ms(start)
        }),
        Err(e) => error(&e, start),
    }
}

fn local_addr(fd: &OwnedFd) -> std::io::Result<String> {
    // SAFETY: zeroed sockaddr_storage is valid; the kernel fills at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    Ok(sockaddr_to(&storage).map_or_else(|| "?".into(), |a| a.to_string()))
}

fn udp_multi(args: &Args, connected: bool) {
    let start = Instant::now();
    let (dst, dst_len) = sockaddr_from(&args.addr);
    let mut fds = Vec::new();
    for _ in 0..args.sockets {
        match udp_socket(&args.addr, args.timeout) {
            Ok(fd) => fds.push(fd),
            Err(e) => return emit(json!({"round": [error(&e, start)]})),
        }
        if connected {
            let fd = fds.last().map_or(-1, |f| f.as_raw_fd());
            // SAFETY: dst is a valid sockaddr of length dst_len.
            let r =
                unsafe { libc::connect(fd, &dst as *const _ as *const libc::sockaddr, dst_len) };
            if let Err(e) = cvt(r) {
                return emit(json!({"round": [error(&e, start)]}));
            }
        }
    }
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            return;
        }
        let round: Vec<Value> = fds
            .iter()
            .map(|fd| {
                let start = Instant::now();
                match udp_exchange(fd, connected, b"ping", &dst, dst_len) {
                    Ok((reply, from)) => json!({
                        "from": from.map_or_else(|| "?".into(), |a| a.to_string()),
                        "peer": if connected { getpeername(fd).ok() } else { None },
                        "reply": String::from_utf8_lossy(&reply),
                        "local": local_addr(fd).unwrap_or_default(),
                        "elapsed_ms": ms(start),
                    }),
                    Err(e) => error(&e, start),
                }
            })
            .collect();
        emit(json!({ "round": round }));
    }
}

fn tcp_multi(args: &Args) {
    let mut conns: Vec<Option<BufReader<TcpStream>>> = Vec::new();
    let mut greetings = Vec::new();
    for _ in 0..args.sockets {
        let start = Instant::now();
        match tcp_connect(args, start) {
            Ok((reader, peer, reply)) => {
                let local = reader
                    .get_ref()
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                greetings.push(json!({
                    "peer": peer, "reply": reply, "local": local, "elapsed_ms": ms(start)
                }));
                conns.push(Some(reader));
            }
            Err(v) => {
                greetings.push(v);
                conns.push(None);
            }
        }
    }
    emit(json!({ "round": greetings }));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let round: Vec<Value> = conns
            .iter_mut()
            .map(|conn| {
                let start = Instant::now();
                let Some(reader) = conn else {
                    return json!({"alive": false, "error": "not connected", "errno": 0});
                };
                let sent = reader.get_mut().write_all(format!("{line}\n").as_bytes());
                match sent.and_then(|_| read_line(reader)) {
                    Ok(reply) => {
                        json!({"alive": reply == line, "reply": reply, "elapsed_ms": ms(start)})
                    }
                    Err(e) => {
                        let mut v = error(&e, start);
                        v["alive"] = json!(false);
                        v
                    }
                }
            })
            .collect();
        emit(json!({ "round": round }));
    }
}
