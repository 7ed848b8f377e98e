//! The admin listener, on its own port: the status page (`/`) and its data
//! (`/status`, JSON), `/metrics`, `/healthz` and `/readyz`. With `[admin] token`
//! everything but the two probes wants `Authorization: Bearer TOKEN`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::status::StatusBoard;

/// The status page: one self-contained file (no outside assets) that polls `/status`.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// Serves the admin endpoints until shutdown stops the gateway. It keeps answering
/// while the gateway drains, so `/readyz` can say 503 and the last scrapes see the
/// drain.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    status: Arc<StatusBoard>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.stopped() => return,
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let svc = service_fn(|req| {
                let resp = answer(&req, &metrics, &shutdown, &status);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = shutdown.stopped() => {}
            }
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    metrics: &Metrics,
    shutdown: &Shutdown,
    status: &StatusBoard,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let path = req.uri().path();
    // Probes stay open: an orchestrator's health checks carry no token.
    if !matches!(path, "/healthz" | "/readyz")
        && let Some(token) = status.token()
        && !bearer_matches(req, &token)
    {
        let mut resp = text(StatusCode::UNAUTHORIZED, "an admin token is required\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"sluice admin\""),
        );
        return resp;
    }
    match path {
        "/" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The page runs only its own inline script and talks only to this origin.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                ),
            );
            resp
        }
        "/status" => {
            let body = status.json(metrics, shutdown.is_draining()).to_string();
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        // Browsers ask for it; an empty answer keeps their consoles quiet.
        "/favicon.ico" => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // Listeners are bound and the configuration loaded before this listener
        // starts, so ready means not draining.
        "/readyz" if shutdown.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /status, /metrics, /healthz or /readyz\n",
        ),
    }
}

/// Whether the request carries `Authorization: Bearer TOKEN`, compared in constant
/// time.
fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let want = token.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
