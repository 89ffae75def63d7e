//! The proxy health server on `--healthz-bind-address`, as kube-proxy serves it
//! (`pkg/proxy/healthcheck/proxy_health.go`, `cmd/kube-proxy/app/server.go`):
//!
//! * `/healthz`: 200 while the proxy is healthy and the node eligible, else 503; body
//!   `{"lastUpdated":…,"currentTime":…,"nodeEligible":…,"healthy":…,"status":{"IPv4":{…},"IPv6":{…}}}`
//!   (Go's `json.Marshal` of kube-proxy's `ProxyHealth`: compact, times in RFC 3339 with
//!   nanoseconds, `status` left out before the first update). `lastUpdated` is the current
//!   time when the answer is 200 (kube-proxy keeps that for older clients), else the last
//!   update (`0001-01-01T00:00:00Z` before the first).
//! * `/livez`: the same without the node: 200 while the proxy is healthy, and no
//!   `nodeEligible` in the body.
//! * Both answer every method (Go handlers that do not look at it), with `Content-Type:
//!   application/json` and `X-Content-Type-Options: nosniff`; any other path is Go's
//!   `404 page not found`.
//!
//! `status` has one entry per IP family kube-proxy runs a proxier for; the agent programs both
//! families in one sync, so both entries carry that sync's state.
//!
//! A bind that fails (port taken, address not there yet) is logged and retried every 5 s, as
//! kube-proxy's `serveHealthz` does (`wait.Until(…, 5*time.Second, …)`); it never stops the
//! agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Health, ProxyHealth};
use crate::http::{self, Body, Limits, Routes};

/// How soon a failed bind is tried again (kube-proxy: 5 s).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The IP families in `status`: the agent's one datapath serves both.
const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// Go's zero `time.Time` in JSON: `lastUpdated` before the first update.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `--healthz-bind-address`: `""` (or only blanks) disables the server, as in kube-proxy.
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, crate::http::BadAddr> {
    crate::http::parse_optional_addr(
        s,
        "--healthz-bind-address",
        "0.0.0.0:10256 (every address) or 127.0.0.1:10256",
    )
}

impl ProxyHealth {
    /// Serves `/healthz` and `/livez` on `addr` (an unspecified address: every address of
    /// both families) on a task of its own, binding again every 5 s until it can. Logs
    /// `serving /healthz and /livez` with the bound `addr=` once listening.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> JoinHandle<()> {
        serve_retrying(Arc::clone(self), addr, RETRY_INTERVAL)
    }
}

fn serve_retrying(health: Arc<ProxyHealth>, addr: SocketAddr, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_error: Option<String> = None;
        loop {
            match http::bind_like_go(addr, "the proxy health checks (--healthz-bind-address)") {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(addr);
                    // The tests read the address from this line (`127.0.0.1:0`).
                    info!(addr = %local, "serving /healthz and /livez");
                    http::serve(listener, routes(health), Limits::default()).await;
                    return;
                }
                Err(e) => {
                    let error = e.to_string();
                    // Once per distinct error: a port held for hours is one line, not thousands.
                    if last_error.as_deref() == Some(error.as_str()) {
                        debug!(%error, "proxy health server still cannot bind");
                    } else {
                        warn!(%error, retry_in_s = every.as_secs_f64(), "proxy health server not started; retrying");
                    }
                    last_error = Some(error);
                    tokio::time::sleep(every).await;
                }
            }
        }
    })
}

/// `/healthz` and `/livez` of `health`, every method; Go's 404 elsewhere.
pub fn routes(health: Arc<ProxyHealth>) -> Routes {
    let live = Arc::clone(&health);
    Routes::new()
        .any_method("/healthz", move |_| healthz(&health))
        .any_method("/livez", move |_| livez(&live))
        .fallback(|_| go_not_found())
}

fn healthz(proxy: &ProxyHealth) -> Response<Body> {
    let health = proxy.health();
    let ok = health.healthy && health.node_eligible;
    answer(&health, ok, Some(health.node_eligible))
}

fn livez(proxy: &ProxyHealth) -> Response<Body> {
    let health = proxy.health();
    answer(&health, health.healthy, None)
}

/// kube-proxy's `ProxyHealth` as JSON: field order and names as Go marshals the struct.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyHealthBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, ProxierHealthBody>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxierHealthBody {
    last_updated: String,
    healthy: bool,
}

fn answer(health: &Health, ok: bool, node_eligible: Option<bool>) -> Response<Body> {
    let status = health
        .last_updated
        .map(|at| {
            FAMILIES.map(|family| {
                let proxier = ProxierHealthBody {
                    last_updated: go_time(Some(at)),
                    healthy: health.healthy,
                };
                (family, proxier)
            })
        })
        .into_iter()
        .flatten()
        .collect();
    let body = ProxyHealthBody {
        // "In older releases, the returned lastUpdated time indicated the last time the
        // proxier sync loop ran, even if nothing had changed": kube-proxy says "now" when
        // healthy.
        last_updated: go_time(if ok {
            Some(health.now.wall)
        } else {
            health.last_updated
        }),
        current_time: go_time(Some(health.now.wall)),
        node_eligible,
        healthy: health.healthy,
        status,
    };
    // Cannot fail: strings and booleans.
    let json = serde_json::to_string(&body).unwrap_or_default();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    nosniff(http::with_type(code, "application/json", json))
}

/// What Go's `http.NotFound` answers.
fn go_not_found() -> Response<Body> {
    nosniff(http::text(StatusCode::NOT_FOUND, "404 page not found\n"))
}

pub(super) fn nosniff(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A time as Go's `time.Time` marshals to JSON in UTC (RFC 3339, nanoseconds without trailing
/// zeros, `Z`); None is Go's zero time.
fn go_time(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return GO_ZERO_TIME.to_string();
    };
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let before = e.duration();
            let (s, n) = (before.as_secs() as i64, before.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    };
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// (year, month, day) of a count of days since 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::net::TcpListener;

    use super::super::FakeClock;
    use super::*;
    use crate::http::testing::*;

    const T0: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn setup() -> (Arc<FakeClock>, Arc<ProxyHealth>) {
        let clock = FakeClock::at(at(T0, 0));
        let health = Arc::new(ProxyHealth::with_clock(
            Duration::from_secs(10),
            clock.clone(),
        ));
        (clock, health)
    }

    /// (status, head, body) of `method path`.
    async fn ask(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        raw(
            addr,
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await
    }

    /// The exact body, and the headers every answer carries.
    fn check(head: &str, body: &str) -> Value {
        assert_eq!(
            header(head, "content-type"),
            Some("application/json"),
            "{head}"
        );
        assert_eq!(
            header(head, "x-content-type-options"),
            Some("nosniff"),
            "{head}"
        );
        serde_json::from_str(body).expect("JSON")
    }

    #[test]
    fn go_time_formats_as_go_marshals() {
        assert_eq!(go_time(None), "0001-01-01T00:00:00Z");
        assert_eq!(go_time(Some(UNIX_EPOCH)), "1970-01-01T00:00:00Z");
        assert_eq!(go_time(Some(at(T0, 0))), "2023-11-14T22:13:20Z");
        assert_eq!(go_time(Some(at(T0, 500_000_000))), "2023-11-14T22:13:20.5Z");
        assert_eq!(
            go_time(Some(at(T0, 123_456_789))),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(go_time(Some(at(T0, 1_000))), "2023-11-14T22:13:20.000001Z");
        assert_eq!(go_time(Some(at(951_782_400, 0))), "2000-02-29T00:00:00Z");
        assert_eq!(go_time(Some(at(1_709_209_496, 0))), "2024-02-29T12:24:56Z");
        assert_eq!(go_time(Some(at(4_102_444_799, 0))), "2099-12-31T23:59:59Z");
        assert_eq!(
            go_time(Some(UNIX_EPOCH - Duration::from_secs(86_400))),
            "1969-12-31T00:00:00Z"
        );
        assert_eq!(
            go_time(Some(UNIX_EPOCH - Duration::from_millis(1))),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[tokio::test]
    async fn bodies_are_kube_proxys_byte_for_byte() {
        let (clock, health) = setup();
        let (addr, server) = start(routes(Arc::clone(&health)), Limits::default()).await;

        // Before any update: healthy, no status, and "now" as lastUpdated.
        let (code, head, body) = get(addr, "/healthz").await;
        assert_eq!(code, 200);
        check(&head, &body);
        assert_eq!(
            body,
            r#"{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:13:20Z","nodeEligible":true,"healthy":true}"#
        );
        let (code, head, body) = get(addr, "/livez").await;
        assert_eq!(code, 200);
        check(&head, &body);
        assert_eq!(
            body,
            r#"{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:13:20Z","healthy":true}"#
        );

        // Updated; 1.5 s later a healthy answer says "now" on top and the update per family.
        health.updated(clock.instant());
        clock.step(Duration::from_millis(1500));
        let (_, _, body) = get(addr, "/healthz").await;
        assert_eq!(
            body,
            concat!(
                r#"{"lastUpdated":"2023-11-14T22:13:21.5Z","currentTime":"2023-11-14T22:13:21.5Z","#,
                r#""nodeEligible":true,"healthy":true,"status":{"#,
                r#""IPv4":{"lastUpdated":"2023-11-14T22:13:20Z","healthy":true},"#,
                r#""IPv6":{"lastUpdated":"2023-11-14T22:13:20Z","healthy":true}}}"#
            )
        );

        // Late: 503 on both, with the last update on top.
        health.queued_update(clock.instant());
        clock.step(Duration::from_secs(10));
        let expected_late = |eligible: &str| {
            format!(
                concat!(
                    r#"{{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:13:31.5Z",{}"#,
                    r#""healthy":false,"status":{{"#,
                    r#""IPv4":{{"lastUpdated":"2023-11-14T22:13:20Z","healthy":false}},"#,
                    r#""IPv6":{{"lastUpdated":"2023-11-14T22:13:20Z","healthy":false}}}}}}"#
                ),
                eligible
            )
        };
        let (code, head, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        check(&head, &body);
        assert_eq!(body, expected_late(r#""nodeEligible":true,"#));
        let (code, _, body) = get(addr, "/livez").await;
        assert_eq!(code, 503);
        assert_eq!(body, expected_late(""));
        server.abort();
    }

    /// kube-proxy's TestHealthzServer and TestLivezServer: the node's deletion makes /healthz
    /// 503 (the body still says the proxy is healthy), never /livez.
    #[tokio::test]
    async fn node_deletion_fails_healthz_only() {
        let (clock, health) = setup();
        let (addr, server) = start(routes(Arc::clone(&health)), Limits::default()).await;
        health.updated(clock.instant());
        for eligible in [true, false, true, false] {
            health.set_node_eligible(eligible);
            let (code, head, body) = get(addr, "/healthz").await;
            let v = check(&head, &body);
            assert_eq!(code, if eligible { 200 } else { 503 }, "{body}");
            assert_eq!(v["nodeEligible"], json!(eligible), "{body}");
            assert_eq!(v["healthy"], json!(true), "{body}");
            let (code, head, body) = get(addr, "/livez").await;
            let v = check(&head, &body);
            assert_eq!(code, 200, "{body}");
            assert!(v.get("nodeEligible").is_none(), "{body}");
        }
        // Ineligible and never updated: lastUpdated is Go's zero time.
        let (_clock, fresh) = setup();
        fresh.set_node_eligible(false);
        let (addr2, server2) = start(routes(fresh), Limits::default()).await;
        let (code, _, body) = get(addr2, "/healthz").await;
        assert_eq!(code, 503);
        assert_eq!(
            body,
            r#"{"lastUpdated":"0001-01-01T00:00:00Z","currentTime":"2023-11-14T22:13:20Z","nodeEligible":false,"healthy":true}"#
        );
        server.abort();
        server2.abort();
    }

    #[tokio::test]
    async fn methods_paths_and_heads_as_go_serves_them() {
        let (_clock, health) = setup();
        let (addr, server) = start(routes(health), Limits::default()).await;
        // Every method gets the answer (Go handlers do not look at the method).
        for method in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            for path in ["/healthz", "/livez", "/healthz?verbose=1"] {
                let (code, head, body) = ask(addr, method, path).await;
                assert_eq!(code, 200, "{method} {path}");
                check(&head, &body);
            }
        }
        // HEAD: the head without the body.
        let (code, head, body) = ask(addr, "HEAD", "/healthz").await;
        assert_eq!(code, 200);
        assert!(body.is_empty(), "{body}");
        assert_eq!(header(&head, "content-type"), Some("application/json"));
        // Elsewhere: Go's 404.
        for path in ["/", "/healthz/", "/livez/x", "/metrics", "/readyz"] {
            let (code, head, body) = get(addr, path).await;
            assert_eq!(
                (code, body.as_str()),
                (404, "404 page not found\n"),
                "{path}"
            );
            assert_eq!(
                header(&head, "content-type"),
                Some("text/plain; charset=utf-8")
            );
            assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_retried_until_free() {
        let (_clock, health) = setup();
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let server = serve_retrying(Arc::clone(&health), addr, Duration::from_millis(20));
        // Let it fail a few times; the task lives on.
        for _ in 0..5 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!server.is_finished(), "gave up on a taken port");
        drop(taken);
        // Served within a few retries once the port is free.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never bound");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(addr, "/livez").await.0, 200);
        server.abort();
    }

    #[test]
    fn parse_addr_cases() {
        assert_eq!(parse_addr("").expect("empty"), None);
        assert_eq!(parse_addr(" ").expect("blank"), None);
        assert_eq!(
            parse_addr("0.0.0.0:10256").expect("default"),
            Some("0.0.0.0:10256".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("[::]:10256").expect("v6"),
            Some("[::]:10256".parse().expect("addr"))
        );
        for bad in ["0.0.0.0", ":10256", "localhost:10256", "1.2.3.4:70000"] {
            let e = parse_addr(bad).expect_err(bad).to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("IP:PORT"),
                "{e}"
            );
        }
    }
}
