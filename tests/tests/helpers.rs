//! The helper binaries against plain loopback, no eBPF and no privileges: if these fail, the
//! end-to-end tests cannot be trusted.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use clusterip_tests::process::Reply;

const BACKEND: &str = env!("CARGO_BIN_EXE_cip-backend");
const CLIENT: &str = env!("CARGO_BIN_EXE_cip-client");

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago (the kernel's pick for port 0).
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn backend(name: &str, args: &[String]) -> Backend {
    let mut child = Command::new(BACKEND)
        .args(["--name", name])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    Backend(child)
}

fn client(args: &[&str]) -> Vec<Reply> {
    let out = Command::new(CLIENT).args(args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check_family(ip: &str, bracketed: &str) {
    let tcp = free_port(ip);
    let echo = free_port(ip);
    let udp = free_port(ip);
    let tcp_addr = format!("{bracketed}:{tcp}");
    let echo_addr = format!("{bracketed}:{echo}");
    let udp_addr = format!("{bracketed}:{udp}");
    let _b = backend(
        "lo-be",
        &[
            "--tcp".into(),
            tcp_addr.clone(),
            "--tcp-echo".into(),
            echo_addr.clone(),
            "--udp".into(),
            udp_addr.clone(),
        ],
    );

    let replies = client(&["tcp", &tcp_addr, "--count", "3"]);
    assert_eq!(replies.len(), 3);
    for r in &replies {
        assert_eq!(r.peer.as_deref(), Some(tcp_addr.as_str()), "{r:?}");
        assert_eq!(r.reply, Some(format!("lo-be {ip}")));
        assert_eq!(r.backend(), Some("lo-be"));
        assert_eq!(r.seen_client(), Some(ip));
    }

    let replies = client(&["udp-connected", &udp_addr, "--count", "2"]);
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert_eq!(r.peer.as_deref(), Some(udp_addr.as_str()), "{r:?}");
        assert_eq!(r.from.as_deref(), Some(udp_addr.as_str()), "{r:?}");
        assert_eq!(r.reply, Some(format!("lo-be {ip} ping")));
    }

    let replies = client(&["udp-unconnected", &udp_addr, "--count", "2"]);
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert_eq!(r.from.as_deref(), Some(udp_addr.as_str()), "{r:?}");
        assert_eq!(r.peer, None);
        assert_eq!(r.reply, Some(format!("lo-be {ip} ping")));
    }

    // tcp-hold: greeting, then each stdin line is echoed.
    let mut hold = Command::new(CLIENT)
        .args(["tcp-hold", &echo_addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = hold.stdin.take().unwrap();
        writeln!(stdin, "one").unwrap();
        writeln!(stdin, "two").unwrap();
    }
    let out = hold.wait_with_output().unwrap();
    let lines: Vec<Reply> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0].peer.as_deref(), Some(echo_addr.as_str()));
    assert_eq!(lines[0].backend(), Some("lo-be"));
    assert_eq!(lines[1].alive, Some(true));
    assert_eq!(lines[1].reply.as_deref(), Some("one"));
    assert_eq!(lines[2].alive, Some(true));
    assert_eq!(lines[2].reply.as_deref(), Some("two"));
}

#[test]
fn helpers_work_on_ipv4_loopback() {
    check_family("127.0.0.1", "127.0.0.1");
}

#[test]
fn helpers_work_on_ipv6_loopback() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIP helpers_work_on_ipv6_loopback: no IPv6 loopback");
        return;
    }
    check_family("::1", "[::1]");
}

#[test]
fn client_reports_errors_as_json_with_errno() {
    // Nobody listens on a port that was just free: ECONNREFUSED at once.
    let port = free_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let replies = client(&[
        "tcp",
        &addr.to_string(),
        "--count",
        "2",
        "--timeout-ms",
        "3000",
    ]);
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "{r:?}");
        assert!(r.error.is_some());
        assert!(r.elapsed_ms < 1000.0, "{r:?}");
    }
    // UDP to a closed port: the ICMP error comes back as ECONNREFUSED on a connected socket.
    let replies = client(&["udp-connected", &addr.to_string(), "--count", "1"]);
    assert_eq!(replies[0].errno, Some(libc::ECONNREFUSED), "{replies:?}");
    // Unconnected: nothing comes back, recvfrom times out (EAGAIN) after --timeout-ms.
    let replies = client(&[
        "udp-unconnected",
        &addr.to_string(),
        "--count",
        "1",
        "--timeout-ms",
        "200",
    ]);
    assert_eq!(replies[0].errno, Some(libc::EAGAIN), "{replies:?}");
    assert!(replies[0].elapsed_ms >= 150.0, "{replies:?}");
}
