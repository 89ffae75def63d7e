//! `xtask demo-backend`: a stand-in pod. TCP: answers "hello from NAME\n" (as an HTTP/1.0
//! response when the request looks like HTTP, so `curl` works). UDP: echoes each datagram
//! prefixed with "NAME: ".

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

pub fn hello(name: &str) -> String {
    format!("hello from {name}\n")
}

pub fn serve(tcp: Option<SocketAddr>, udp: Option<SocketAddr>, name: &str) -> Result<()> {
    if tcp.is_none() && udp.is_none() {
        bail!("demo-backend needs --tcp and/or --udp");
    }
    let mut threads = Vec::new();
    if let Some(addr) = tcp {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        let name = name.to_string();
        threads.push(thread::spawn(move || serve_tcp(listener, &name)));
    }
    if let Some(addr) = udp {
        let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind udp {addr}"))?;
        let name = name.to_string();
        threads.push(thread::spawn(move || serve_udp(socket, &name)));
    }
    // The parent waits for this line: the sockets are bound from here on.
    println!("ready");
    for handle in threads {
        match handle.join() {
            Ok(result) => result?,
            Err(_) => bail!("a server thread panicked"),
        }
    }
    Ok(())
}

fn serve_tcp(listener: TcpListener, name: &str) -> Result<()> {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let name = name.to_string();
                thread::spawn(move || {
                    if let Err(e) = answer_tcp(stream, &name) {
                        eprintln!("demo-backend {name}: {e:#}");
                    }
                });
            }
            Err(e) => eprintln!("demo-backend {name}: accept: {e}"),
        }
    }
    Ok(())
}

fn answer_tcp(stream: TcpStream, name: &str) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let body = hello(name);
    let mut stream = stream;
    if request_line.trim_end().ends_with("HTTP/1.0")
        || request_line.trim_end().ends_with("HTTP/1.1")
    {
        // Read the headers up to the blank line, then answer and close.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
        }
        write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )?;
    } else {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    Ok(())
}

fn serve_udp(socket: UdpSocket, name: &str) -> Result<()> {
    let mut buf = [0u8; 2048];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("demo-backend {name}: udp recv: {e}");
                continue;
            }
        };
        let mut reply = format!("{name}: ").into_bytes();
        reply.extend_from_slice(&buf[..len]);
        if let Err(e) = socket.send_to(&reply, peer) {
            eprintln!("demo-backend {name}: udp send to {peer}: {e}");
        }
    }
}
