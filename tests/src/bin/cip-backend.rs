//! A test backend ("pod"): tells every client who answered and whom it saw.
//!
//! ```text
//! cip-backend --name NAME [--tcp ADDR:PORT]... [--tcp-echo ADDR:PORT]... [--udp ADDR:PORT]...
//!             [--http ADDR:PORT]... [--tcp-data ADDR:PORT]...
//! ```
//! - `--tcp`: for each connection write `NAME <peer ip>\n` and close.
//! - `--tcp-echo`: for each connection write `NAME <peer ip>\n`, then echo every line back
//!   until the client closes (for tests that hold a connection open).
//! - `--udp`: reply to each datagram with `NAME <peer ip> <payload>`.
//! - `--http`: read an HTTP/1.1 request (up to the empty line), answer `200 OK` with the body
//!   `NAME <peer ip>\n` and `Connection: close`.
//! - `--tcp-data`: bulk transfers checked byte by byte against `clusterip_tests::datagen`:
//!   the client's first line is `up SEED LEN` (it then sends LEN bytes of the seed's stream;
//!   the backend answers `NAME <peer ip> received=N mismatch=none|OFFSET\n` after reading them)
//!   or `down SEED LEN` (the backend writes `NAME <peer ip>\n`, then LEN bytes of the stream,
//!   then closes).
//!
//! Prints `ready` on stdout once every socket is bound, then serves until killed.
//! IPv6 addresses are written `[addr]:port`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;

fn usage(msg: &str) -> ExitCode {
    eprintln!("cip-backend: {msg}");
    eprintln!(
        "usage: cip-backend --name NAME [--tcp ADDR:PORT]... [--tcp-echo ADDR:PORT]... [--udp ADDR:PORT]... [--http ADDR:PORT]... [--tcp-data ADDR:PORT]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut tcp_echo = Vec::new();
    let mut udp = Vec::new();
    let mut http = Vec::new();
    let mut data = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--name" => name = Some(value),
            "--tcp" | "--tcp-echo" | "--udp" | "--http" | "--tcp-data" => {
                let addr: SocketAddr = match value.parse() {
                    Ok(a) => a,
                    Err(e) => return usage(&format!("bad address {value:?}: {e}")),
                };
                match flag.as_str() {
                    "--tcp" => tcp.push(addr),
                    "--tcp-echo" => tcp_echo.push(addr),
                    "--http" => http.push(addr),
                    "--tcp-data" => data.push(addr),
                    _ => udp.push(addr),
                }
            }
            other => return usage(&format!("unknown flag {other}")),
        }
    }
    let Some(name) = name else {
        return usage("--name is required");
    };
    if tcp.is_empty() && tcp_echo.is_empty() && udp.is_empty() && http.is_empty() && data.is_empty()
    {
        return usage("nothing to serve");
    }

    let mut threads = Vec::new();
    for (addr, kind) in tcp
        .iter()
        .map(|a| (a, Kind::Greet))
        .chain(tcp_echo.iter().map(|a| (a, Kind::Echo)))
        .chain(http.iter().map(|a| (a, Kind::Http)))
        .chain(data.iter().map(|a| (a, Kind::Data)))
    {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cip-backend {name}: bind tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || serve_tcp(&name, listener, kind)));
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Greet,
    Echo,
    Http,
    Data,
}

fn serve_tcp(name: &str, listener: TcpListener, kind: Kind) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cip-backend {name}: accept: {e}");
                continue;
            }
        };
        let name = name.to_owned();
        match kind {
            Kind::Greet => {
                let mut stream = stream;
                // The client may already be gone; nothing to do about it.
                let _ = stream.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
            }
            Kind::Echo => {
                thread::spawn(move || serve_echo(&name, stream, peer));
            }
            Kind::Http => {
                thread::spawn(move || serve_http(&name, stream, peer));
            }
            Kind::Data => {
                thread::spawn(move || {
                    if let Err(e) = serve_data(&name, stream, peer) {
                        eprintln!("cip-backend {name}: transfer with {peer}: {e}");
                    }
                });
            }
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

fn serve_http(name: &str, stream: TcpStream, peer: SocketAddr) {
    let Ok(mut write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Headers up to the empty line.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let (status, body) = if request_line.starts_with("GET ") {
        ("200 OK", format!("{name} {}\n", peer.ip()))
    } else {
        ("405 Method Not Allowed", String::new())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = write_half.write_all(response.as_bytes());
}

fn serve_data(name: &str, stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    use clusterip_tests::datagen::{Checker, Stream};
    let mut write_half = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{header:?}"));
    let mut words = header.split_whitespace();
    let (Some(dir), Some(seed), Some(len)) = (words.next(), words.next(), words.next()) else {
        return Err(bad());
    };
    let seed: u64 = seed.parse().map_err(|_| bad())?;
    let len: u64 = len.parse().map_err(|_| bad())?;
    match dir {
        "up" => {
            let mut checker = Checker::new(seed);
            let mut buf = vec![0u8; 64 * 1024];
            while checker.len < len {
                let want = buf.len().min((len - checker.len) as usize);
                let n = reader.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                checker.update(&buf[..n]);
            }
            let mismatch = checker
                .first_mismatch
                .map_or_else(|| "none".to_owned(), |o| o.to_string());
            write_half.write_all(
                format!(
                    "{name} {} received={} mismatch={mismatch}\n",
                    peer.ip(),
                    checker.len
                )
                .as_bytes(),
            )
        }
        "down" => {
            write_half.write_all(format!("{name} {}\n", peer.ip()).as_bytes())?;
            let mut stream = Stream::new(seed);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = buf.len().min(left as usize);
                stream.fill(&mut buf[..n]);
                write_half.write_all(&buf[..n])?;
                left -= n as u64;
            }
            write_half.shutdown(std::net::Shutdown::Write)
        }
        _ => Err(bad()),
    }
}
