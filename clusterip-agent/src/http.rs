//! A small HTTP/1.1 server on hyper for the agent's read-only endpoints (`/metrics`, the
//! health checks): fixed paths (and optionally a handler for every other path), one request
//! per connection, and [`Limits`] so that nothing a client sends, or withholds, can stop the
//! server or take all of it. It imports nothing of the agent: the metrics server and the
//! health check servers share it.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use clusterip_agent::http::{self, Limits, Routes, text};
//! use hyper::StatusCode;
//!
//! let routes = Routes::new().get("/healthz", |_| text(StatusCode::OK, "ok\n"));
//! let listener = http::bind("127.0.0.1:0".parse().expect("addr"), "health checks").await?;
//! http::spawn(listener, routes, Limits::default());
//! # Ok(()) }
//! ```

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, warn};

/// A response body: always complete, so hyper sends a `Content-Length` (never chunks).
pub type Body = Full<Bytes>;

/// What one connection may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers) read; a larger one gets 431.
    pub max_head: usize,
    /// Time a client has to send its whole request head, from its connect; a slower (or
    /// silent) client is disconnected without an answer.
    pub head_timeout: Duration,
    /// Time a connection may take in all: head, response, and the client closing after it
    /// (so at least `head_timeout`). A client that does not read its response, or does not
    /// close, cannot hold a slot longer.
    pub connection_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 8 KiB, 5 s to send the head and as long again for the response, 64 connections: a
    /// scrape or a probe needs a fraction of each.
    fn default() -> Self {
        Self {
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

type Handler = Box<dyn Fn(&Request<Incoming>) -> Response<Body> + Send + Sync>;

/// Which methods a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Methods {
    /// GET and HEAD; any other method gets 405.
    Read,
    /// Every method, as a Go `http.Handler` does unless it checks (kube-proxy's health
    /// checks answer a POST like a GET).
    Any,
}

struct Route {
    path: &'static str,
    methods: Methods,
    handler: Handler,
}

/// The paths served and what answers each. Routes added with [`Routes::get`] answer GET and
/// HEAD only (these endpoints only read); [`Routes::any_method`] and [`Routes::fallback`] are
/// for servers that must answer like kube-proxy's Go handlers, whatever the method.
#[derive(Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// Answers every path no route matches (and every method); without it such a path is 404.
    fallback: Option<Handler>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("paths", &self.paths().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers GET and HEAD of exactly `path` (whatever the query string) with `handler`;
    /// hyper drops the body of a HEAD response and keeps its length.
    pub fn get(
        self,
        path: &'static str,
        handler: impl Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        self.route(path, Methods::Read, handler)
    }

    /// Answers every method on exactly `path` with `handler` (a request body is not read).
    pub fn any_method(
        self,
        path: &'static str,
        handler: impl Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        self.route(path, Methods::Any, handler)
    }

    /// Answers every path no route matches, with every method, with `handler`.
    pub fn fallback(
        mut self,
        handler: impl Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        self.fallback = Some(Box::new(handler));
        self
    }

    fn route(
        mut self,
        path: &'static str,
        methods: Methods,
        handler: impl Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Route {
            path,
            methods,
            handler: Box::new(handler),
        });
        self
    }

    /// The paths, in the order they were added.
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.iter().map(|r| r.path)
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        let path = req.uri().path();
        match self.routes.iter().find(|r| r.path == path) {
            Some(route) if read || route.methods == Methods::Any => (route.handler)(req),
            Some(_) => method_not_allowed(),
            None => match &self.fallback {
                Some(handler) => handler(req),
                None if !read => method_not_allowed(),
                None => {
                    let paths = self.paths().collect::<Vec<_>>().join(", ");
                    text(StatusCode::NOT_FOUND, format!("not found: try {paths}\n"))
                }
            },
        }
    }
}

fn method_not_allowed() -> Response<Body> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A response with this status, content type and body.
pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<String>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds `addr`; the error names it and `what` was to be served there, so a taken port reads
/// as such in the agent's exit message.
pub async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot serve {what} on {addr}: {e}")))
}

/// A server address flag (`--metrics-addr`, `--healthz-bind-address`) that is not IP:PORT.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid {flag} {value:?}: {source}; expected IP:PORT such as {examples}, or '' to serve nothing"
)]
pub struct BadAddr {
    flag: &'static str,
    examples: &'static str,
    value: String,
    #[source]
    source: std::net::AddrParseError,
}

/// A server address flag's value: `""` (or only blanks) serves nothing (None), as in
/// kube-proxy. `flag` and `examples` name the flag and good values in the error.
pub fn parse_optional_addr(
    s: &str,
    flag: &'static str,
    examples: &'static str,
) -> Result<Option<SocketAddr>, BadAddr> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    trimmed
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|source| BadAddr {
            flag,
            examples,
            value: s.to_string(),
            source,
        })
}

/// Binds `addr` as Go's `net.Listen("tcp", addr)` does, which is what kube-proxy's health
/// check servers get: an unspecified address (`0.0.0.0` or `::`) listens on every address of
/// both families (one IPv6 socket that also accepts IPv4 peers), or of its own family where
/// the kernel has no IPv6; any other address only on itself. Synchronous (a bind does not
/// block), so that a failed bind can be handled before anything is spawned; needs a tokio
/// runtime. The error names `addr` and `what` was to be served there.
pub fn bind_like_go(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    let named =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot serve {what} on {addr}: {e}"));
    if addr.ip().is_unspecified() {
        let any6 = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), addr.port());
        match listen_socket(any6, Some(false)) {
            Ok(listener) => return Ok(listener),
            // No IPv6 in this kernel (or none configured): the address's own family only.
            Err(e)
                if addr.is_ipv4()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                    ) =>
            {
                debug!(%addr, error = %e, "no dual-stack socket; listening on IPv4 only");
            }
            Err(e) => return Err(named(e)),
        }
    }
    listen_socket(addr, None).map_err(named)
}

/// A listening TCP socket on `addr`; `only_v6` set for an IPv6 socket when given.
fn listen_socket(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    // As Go and Rust's std do: a restarted agent can bind while its old connections linger in
    // TIME_WAIT (a listening socket still excludes every other).
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The listen backlog tokio uses for its own binds.
const LISTEN_BACKLOG: i32 = 1024;

/// Serves `routes` on `listener` within `limits`, on a task of its own, until the runtime
/// shuts down or the handle is aborted (which closes the listener: await the aborted handle
/// to know the port is free again).
pub fn spawn(listener: TcpListener, routes: Routes, limits: Limits) -> JoinHandle<()> {
    tokio::spawn(serve(listener, routes, limits))
}

/// Serves `routes` on `listener` within `limits`; never returns (drop the future to stop).
pub async fn serve(listener: TcpListener, routes: Routes, limits: Limits) {
    accept_loop(listener, Arc::new(routes), limits).await
}

async fn accept_loop(listener: TcpListener, routes: Arc<Routes>, limits: Limits) {
    // A slot is taken before accepting: past the cap, clients wait in the kernel's backlog
    // instead of costing a task each.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    let served = tokio::time::timeout(
                        limits.connection_timeout,
                        serve_connection(stream, routes, &limits),
                    )
                    .await;
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, error = %e, "http connection"),
                        Err(_) => debug!(%peer, "http connection: client too slow, dropped"),
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: do not spin, do not die.
                warn!(error = %e, "http server: accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a connection ended without a complete exchange (logged at debug: clients' business).
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

async fn serve_connection(
    stream: TcpStream,
    routes: Arc<Routes>,
    limits: &Limits,
) -> Result<(), ConnectionError> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(limits.max_head)
        // One request per connection: an idle kept-alive client would hold a slot for nothing.
        .keep_alive(false);
    // The handlers are synchronous: a ready future keeps the service Unpin, which taking the
    // socket back below needs.
    let service =
        service_fn(move |req| std::future::ready(Ok::<_, Infallible>(routes.respond(&req))));
    let mut conn = builder.serve_connection(TokioIo::new(stream), service);
    let served = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
    let mut stream = conn.into_parts().io.into_inner();
    match served {
        Ok(()) => linger(&mut stream).await.map_err(Into::into),
        // A malformed or oversized head: hyper has answered it 400 or 431.
        Err(e) if e.is_parse() => {
            linger(&mut stream).await?;
            Err(e.into())
        }
        // Head timeout, or the client went away: nothing to say to it.
        Err(e) => Err(e.into()),
    }
}

/// Closes our side and reads what the client still sends until it closes: closing a socket
/// with unread data resets the connection, and the client could lose the response (the 431
/// to an oversized head, say). Bounded by [`Limits::connection_timeout`].
async fn linger(stream: &mut TcpStream) -> io::Result<()> {
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// A raw HTTP client for the tests: real sockets, bytes as sent.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Serves `routes` within `limits` on a free loopback port.
    pub async fn start(routes: Routes, limits: Limits) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        (addr, spawn(listener, routes, limits))
    }

    /// Sends `request` raw and returns (status code, head, body) of the whole response.
    pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("response within 10s")
            .expect("read");
        parse_response(&out)
    }

    pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
        .await
    }

    /// The value of header `name` (case-insensitive, as HTTP header names are) in `head`.
    pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn parse_response(out: &[u8]) -> (u16, String, String) {
        let text = String::from_utf8(out.to_vec()).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let length: usize = header(head, "content-length")
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        // HEAD responses announce the length of a body they do not carry.
        assert!(
            body.is_empty() || body.len() == length,
            "length {length}: {body:?}"
        );
        (status, head.to_string(), body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{testing::*, *};

    fn hello() -> Routes {
        Routes::new()
            .get("/hello", |_| text(StatusCode::OK, "hello\n"))
            .get("/other", |_| text(StatusCode::OK, "other\n"))
    }

    fn limits(head_timeout_ms: u64, connection_timeout_ms: u64, max_connections: usize) -> Limits {
        Limits {
            head_timeout: Duration::from_millis(head_timeout_ms),
            connection_timeout: Duration::from_millis(connection_timeout_ms),
            max_connections,
            ..Limits::default()
        }
    }

    #[test]
    fn default_limits_are_the_old_servers() {
        let l = Limits::default();
        assert_eq!(l.max_head, 8192);
        assert_eq!(l.head_timeout, Duration::from_secs(5));
        // 5 s for the head, then 5 s for the response, as before.
        assert_eq!(l.connection_timeout, Duration::from_secs(10));
        assert_eq!(l.max_connections, 64);
    }

    #[tokio::test]
    async fn routes_methods_and_heads() {
        let (addr, server) = start(hello(), Limits::default()).await;
        let (status, head, body) = get(addr, "/hello?x=1").await;
        assert_eq!((status, body.as_str()), (200, "hello\n"));
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        assert_eq!(
            header(&head, "content-type"),
            Some("text/plain; charset=utf-8")
        );

        let (status, _, body) = get(addr, "/nope").await;
        assert_eq!(
            (status, body.as_str()),
            (404, "not found: try /hello, /other\n")
        );
        assert_eq!(get(addr, "/hello/x").await.0, 404);

        let (status, head, _) = raw(
            addr,
            b"POST /hello HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status, 405);
        assert_eq!(header(&head, "allow"), Some("GET, HEAD"), "{head}");

        let (status, head, body) = raw(addr, b"HEAD /hello HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200);
        assert_eq!(header(&head, "content-length"), Some("6"), "{head}");
        assert!(body.is_empty(), "HEAD has no body: {body:?}");

        // HTTP/1.0 clients are served too.
        assert_eq!(raw(addr, b"GET /hello HTTP/1.0\r\n\r\n").await.0, 200);
        assert!(!server.is_finished());
        server.abort();
    }

    #[tokio::test]
    async fn any_method_routes_and_the_fallback() {
        let routes = Routes::new()
            .get("/read", |_| text(StatusCode::OK, "read\n"))
            .any_method("/any", |req| {
                text(StatusCode::OK, format!("any {}\n", req.method()))
            })
            .fallback(|req| {
                text(
                    StatusCode::IM_A_TEAPOT,
                    format!("fallback {} {}\n", req.method(), req.uri().path()),
                )
            });
        let (addr, server) = start(routes, Limits::default()).await;
        assert_eq!(get(addr, "/any").await.2, "any GET\n");
        // A body is left unread and the answer still arrives whole.
        let (status, _, body) = raw(
            addr,
            b"POST /any HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "any POST\n"));
        let (status, _, body) = raw(addr, b"DELETE /any HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "any DELETE\n"));
        // A read-only route still refuses other methods, even with a fallback.
        assert_eq!(raw(addr, b"PUT /read HTTP/1.1\r\n\r\n").await.0, 405);
        // Every other path, with every method, goes to the fallback.
        let (status, _, body) = get(addr, "/elsewhere?x=1").await;
        assert_eq!((status, body.as_str()), (418, "fallback GET /elsewhere\n"));
        let (status, _, body) = raw(addr, b"POST / HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (418, "fallback POST /\n"));
        server.abort();
    }

    #[tokio::test]
    async fn survives_garbage_slow_and_oversized_clients() {
        let (addr, server) = start(hello(), limits(300, 5_000, 64)).await;

        // Garbage and malformed request lines get 400.
        for garbage in [
            &b"\x00\xff\xfe garbage\r\n\r\n"[..],
            b"hello\n\n",
            b"GET /hello\r\n\r\n",
            b"GET /hello SPDY/3 extra\r\n\r\n",
            b"GET /hello FTP/1.0\r\n\r\n",
        ] {
            let (status, _, _) = raw(addr, garbage).await;
            assert_eq!(status, 400, "{garbage:?}");
        }
        // An oversized head gets 431 (read whole: the server drains what it did not parse)
        // and the server goes on; one just under the limit is served.
        let max = Limits::default().max_head;
        let mut big = b"GET /hello HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * max));
        big.extend(b"\r\n\r\n");
        assert_eq!(raw(addr, &big).await.0, 431);
        let mut fits = b"GET /hello HTTP/1.1\r\nX: ".to_vec();
        fits.extend(std::iter::repeat_n(b'a', max - 100));
        fits.extend(b"\r\n\r\n");
        assert_eq!(raw(addr, &fits).await.0, 200);
        // A client that connects and closes without a word.
        drop(TcpStream::connect(addr).await.expect("connect"));
        // A slow client holding a half request does not block others...
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /hel").await.expect("write");
        assert_eq!(get(addr, "/hello").await.0, 200);
        // ...and is dropped at the head deadline, without an answer (as Go's and nginx's
        // servers do; the old server said 408 first).
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
            .await
            .expect("the server closes a slow client")
            .expect("read");
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "closed early: {waited:?}"
        );
        // A silent client is dropped at the same deadline.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out))
            .await
            .expect("the server closes a silent client")
            .expect("read");
        assert!(out.is_empty());
        // A client that never reads cannot stall the server either.
        let mut deaf = TcpStream::connect(addr).await.expect("connect");
        deaf.write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(get(addr, "/hello").await.0, 200);
        drop(deaf);

        assert!(!server.is_finished(), "the server died");
        server.abort();
    }

    /// Connects `n` clients that say nothing.
    async fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        held
    }

    #[tokio::test]
    async fn connection_cap_queues_the_rest() {
        // Long head deadline: idle clients hold their slots for the whole test.
        let (addr, server) = start(hello(), limits(30_000, 60_000, 2)).await;
        // Below the cap: served.
        let mut idle = hold(addr, 1).await;
        assert_eq!(get(addr, "/hello").await.0, 200);
        // At the cap: a new client is accepted by the kernel but not served...
        idle.extend(hold(addr, 1).await);
        let queued = tokio::spawn(get(addr, "/hello"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!queued.is_finished(), "served past the connection cap");
        // ...until a slot frees up.
        drop(idle.pop());
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("served once a slot is free")
            .expect("client task");
        assert_eq!(status, 200);
        server.abort();
    }

    #[tokio::test]
    async fn connection_deadline_frees_the_slot_of_a_client_that_stays() {
        // One slot; a client that reads its answer but never closes keeps it until the
        // connection deadline.
        let (addr, server) = start(hello(), limits(5_000, 600, 1)).await;
        let mut lingering = TcpStream::connect(addr).await.expect("connect");
        lingering
            .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        // The server closes its side after answering; this client keeps its own open.
        let mut out = Vec::new();
        lingering.read_to_end(&mut out).await.expect("read");
        assert_eq!(parse_response(&out).0, 200);
        let started = Instant::now();
        let (status, _, _) = get(addr, "/hello").await;
        assert_eq!(status, 200);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "the next client waited {waited:?}"
        );
        drop(lingering);
        server.abort();
    }

    #[tokio::test]
    async fn bind_like_go_listens_on_both_families_for_an_unspecified_address() {
        let listener = bind_like_go("0.0.0.0:0".parse().expect("addr"), "things").expect("bind");
        let local = listener.local_addr().expect("addr");
        assert!(local.ip().is_unspecified(), "{local}");
        let server = spawn(listener, hello(), Limits::default());
        let port = local.port();
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(get(v4, "/hello").await.0, 200);
        if local.is_ipv6() {
            // Dual stack: IPv6 peers too.
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            assert_eq!(get(v6, "/hello").await.0, 200);
        }
        // A specific address is that address only; a taken port is an error naming it.
        let specific = bind_like_go(SocketAddr::from(([127, 0, 0, 1], 0)), "things").expect("bind");
        assert_eq!(specific.local_addr().expect("addr").ip(), v4.ip());
        let e = bind_like_go(v4, "things").expect_err("the port is taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&v4.to_string()), "{e}");
        server.abort();
        // An aborted server, once awaited, has closed its port.
        assert!(server.await.expect_err("aborted").is_cancelled());
        drop(bind_like_go(v4, "things").expect("free again"));
    }

    #[tokio::test]
    async fn bind_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = bind(addr, "things").await.expect_err("the port is taken");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let msg = e.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("things"),
            "{msg}"
        );
    }
}
