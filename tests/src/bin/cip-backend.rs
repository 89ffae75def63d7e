//! A test backend ("pod"): tells every client who answered and whom it saw.
//!
//! ```text
//! cip-backend --name NAME [--tcp ADDR:PORT]... [--tcp-echo ADDR:PORT]... [--udp ADDR:PORT]...
//! ```
//! - `--tcp`: for each connection write `NAME <peer ip>\n` and close.
//! - `--tcp-echo`: for each connection write `NAME <peer ip>\n`, then echo every line back
//!   until the client closes (for tests that hold a connection open).
//! - `--udp`: reply to each datagram with `NAME <peer ip> <payload>`.
//!
//! Prints `ready` on stdout once every socket is bound, then serves until killed.
//! IPv6 addresses are written `[addr]:port`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;

fn usage(msg: &str) -> ExitCode {
    eprintln!("cip-backend: {msg}");
    eprintln!(
        "usage: cip-backend --name NAME [--tcp ADDR:PORT]... [--tcp-echo ADDR:PORT]... [--udp ADDR:PORT]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut tcp_echo = Vec::new();
    let mut udp = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--name" => name = Some(value),
            "--tcp" | "--tcp-echo" | "--udp" => {
                let addr: SocketAddr = match value.parse() {
                    Ok(a) => a,
                    Err(e) => return usage(&format!("bad address {value:?}: {e}")),
                };
                match flag.as_str() {
                    "--tcp" => tcp.push(addr),
                    "--tcp-echo" => tcp_echo.push(addr),
                    _ => udp.push(addr),
                }
            }
            other => return usage(&format!("unknown flag {other}")),
        }
    }
    let Some(name) = name else {
        return usage("--name is required");
    };
    if tcp.is_empty() && tcp_echo.is_empty() && udp.is_empty() {
        return usage("nothing to serve");
    }

    let mut threads = Vec::new();
    for (addr, echo) in tcp
        .iter()
        .map(|a| (a, false))
        .chain(tcp_echo.iter().map(|a| (a, true)))
    {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cip-backend {name}: bind tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || serve_tcp(&name, listener, echo)));
    }
    for addr in &udp {
        let socket = match UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cip-backend {name}: bind udp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || serve_udp(&name, socket)));
    }

    let mut stdout = std::io::stdout();
    if writeln!(stdout, "ready")
        .and_then(|_| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

fn serve_tcp(name: &str, listener: TcpListener, echo: bool) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cip-backend {name}: accept: {e}");
                continue;
            }
        };
        if echo {
            let name = name.to_owned();
            thread::spawn(move || serve_echo(&name, stream, peer));
        } else {
            let mut stream = stream;
            // The client may already be gone; nothing to do about it.
            let _ = stream.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
        }
    }
}

fn serve_echo(name: &str, mut stream: TcpStream, peer: SocketAddr) {
    if stream
        .write_all(format!("{name} {}\n", peer.ip()).as_bytes())
        .is_err()
    {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(read_half).lines() {
        let Ok(line) = line else { return };
        if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn serve_udp(name: &str, socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cip-backend {name}: recv: {e}");
                continue;
            }
        };
        let payload = String::from_utf8_lossy(&buf[..n]);
        let reply = format!("{name} {} {payload}", peer.ip());
        if let Err(e) = socket.send_to(reply.as_bytes(), peer) {
            eprintln!("cip-backend {name}: send to {peer}: {e}");
        }
    }
}
