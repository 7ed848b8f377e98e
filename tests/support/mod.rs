//! Shared test support: start sluice in-process on 127.0.0.1:0, real upstreams
//! (WebSocket echo, HTTP, scripted raw TCP), and raw clients.
#![allow(dead_code)]

pub mod frames;
pub mod grpc;
pub mod h2;
pub mod netns;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod relay;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single awaited step of a test may take before it fails.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A running in-process gateway.
pub struct TestGateway {
    pub gateway: Gateway,
    /// The address of the listener named "http".
    pub addr: SocketAddr,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

/// Starts a gateway from configuration text. Listeners should use port 0.
pub async fn start(toml: &str) -> TestGateway {
    let settings = sluice::config::parse(toml, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let gateway = Gateway::start(settings).await.expect("gateway starts");
    let addr = gateway
        .listener_addr("http")
        .expect("a listener named http");
    TestGateway { gateway, addr }
}

/// A configuration with one listener "http", one any-host route on `/` to upstream
/// "backend" with `servers`, an admin listener, and `extra` appended (more sections).
pub fn config(servers: &[SocketAddr], extra: &str) -> String {
    listener_config("", servers, extra)
}

/// A configuration like [`config`] whose listener "http" carries `listener` (more
/// keys of its table, e.g. `http2 = true` or a `tls = ...` line).
pub fn listener_config(listener: &str, servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"
{listener}
[[routes]]
path = "/"
upstream = "backend"

[upstreams.backend]
servers = [{}]
{extra}
"#,
        list.join(", ")
    )
}

/// Starts a gateway in front of `servers` with [`config`].
pub async fn gateway_for(servers: &[SocketAddr], extra: &str) -> TestGateway {
    start(&config(servers, extra)).await
}

/// An address nothing listens on: bound, then released.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---- WebSocket upstreams ----

/// A WebSocket echo upstream. It records every handshake's request headers, picks
/// the first offered subprotocol, and echoes text and binary messages.
pub struct WsBackend {
    pub addr: SocketAddr,
    pub handshakes: mpsc::UnboundedReceiver<http::HeaderMap>,
    pub accepted: Arc<AtomicUsize>,
}

pub async fn ws_echo_backend() -> WsBackend {
    named_ws_backend("").await
}

/// A WebSocket echo upstream like [`ws_echo_backend`] whose 101 carries
/// `X-Backend: NAME`, so a client can tell which server it reached.
pub async fn named_ws_backend(name: &str) -> WsBackend {
    let name = name.to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                // The callback's error type is tungstenite's, not ours to shrink.
                #[allow(clippy::result_large_err)]
                let callback = |req: &WsRequest, mut resp: WsResponse| {
                    let _ = tx.send(req.headers().clone());
                    if !name.is_empty() {
                        resp.headers_mut()
                            .insert("x-backend", name.parse().unwrap());
                    }
                    if let Some(p) = req.headers().get("sec-websocket-protocol") {
                        let first = p
                            .to_str()
                            .unwrap()
                            .split(',')
                            .next()
                            .unwrap()
                            .trim()
                            .to_owned();
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", first.parse().unwrap());
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
                    stream,
                    callback,
                    Some(big_messages()),
                )
                .await
                else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    WsBackend {
        addr,
        handshakes: rx,
        accepted,
    }
}

/// Limits that allow the 16 MiB test message in one frame.
pub fn big_messages() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(64 << 20);
    c.max_frame_size = Some(64 << 20);
    c
}

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects through sluice and returns which named backend answered, with the open
/// client.
pub async fn ws_connect_which(url: &str) -> (Client, String) {
    let (ws, resp) = within(
        "websocket connect",
        tokio_tungstenite::connect_async_with_config(url, Some(big_messages()), false),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let name = resp
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (ws, name)
}

/// Polls `check` every 20 ms until it is true; fails the test after [`STEP`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects a WebSocket client to `url` (through sluice).
pub async fn ws_connect(url: &str) -> Client {
    let (ws, resp) = within(
        "websocket connect",
        tokio_tungstenite::connect_async_with_config(url, Some(big_messages()), false),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `msg` and expects the same message back.
pub async fn echo_once(ws: &mut Client, msg: tokio_tungstenite::tungstenite::Message) {
    within("send", ws.send(msg.clone())).await.unwrap();
    let got = within("echo", ws.next())
        .await
        .expect("a reply")
        .expect("no error");
    assert_eq!(got, msg);
}

// ---- scripted raw upstreams ----

/// A raw TCP upstream: each connection's request head is read and handed to
/// `script`, which then owns the connection. Returns the address and a count of
/// connections accepted.
pub async fn raw_backend<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                script(stream, head).await;
            });
        }
    });
    (addr, count)
}

/// Reads an HTTP head (through the blank line) one byte at a time, so nothing after
/// it is consumed.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The value of header `name` in a raw head, case-insensitively.
pub fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `101` a correct WebSocket server sends for a request head, plus `extra`
/// header lines (each ending in CRLF).
pub fn switching_protocols(request_head: &str, extra: &str) -> String {
    let key = header_of(request_head, "sec-websocket-key").expect("a key");
    let accept = sluice::handshake::accept_for(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        std::str::from_utf8(&accept).unwrap()
    )
}

/// A valid handshake request head for `path` with `extra` header lines.
pub fn handshake_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

// ---- HTTP upstreams ----

/// An HTTP/1.1 upstream serving `handler`, counting the connections it accepts.
pub async fn http_backend<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

/// An upstream that answers every request with its method, path and headers, and
/// the request body, as text: `METHOD PATH\nname: value\n...\n\nBODY`.
pub async fn mirror_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    http_backend(|req: Request<Incoming>| async move {
        let mut text = format!(
            "{} {}\n",
            req.method(),
            req.uri().path_and_query().map_or("", |p| p.as_str())
        );
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        text.push('\n');
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut out = text.into_bytes();
        out.extend_from_slice(&body);
        Response::new(Full::new(Bytes::from(out)))
    })
    .await
}

// ---- clients ----

/// An HTTP/1.1 client connection (one TCP connection, keep-alive).
pub struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        HttpClient { sender }
    }

    /// Sends a request; returns the status, headers and whole body.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> (http::StatusCode, http::HeaderMap, Bytes) {
        within("ready", self.sender.ready()).await.unwrap();
        let resp = within("response", self.sender.send_request(req))
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = within("body", body.collect()).await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    pub async fn get(&mut self, path: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let req = Request::get(path)
            .header("host", "test.local")
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req).await
    }
}

/// Writes raw bytes to `addr` and reads the response head and as much of the body as
/// arrives until the connection closes or goes quiet for a moment.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// Reads one response head (and the body, if its Content-Length says so).
pub async fn read_response(s: &mut TcpStream) -> String {
    let head = within("response head", read_head(s))
        .await
        .expect("a response head");
    let len: usize = header_of(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    within("response body", s.read_exact(&mut body))
        .await
        .unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// The status code of a raw response.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {response:?}"))
}

/// Reads from `s` until EOF; fails the test if it does not come within [`STEP`].
pub async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    within("eof", s.read_to_end(&mut out)).await.ok();
    out
}

/// Raises the soft open-file limit to the hard one, for tests that hold many sockets.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// Fetches the gateway's `/metrics` text.
pub async fn metrics_text(gw: &TestGateway) -> String {
    let admin = gw.gateway.admin_addr().expect("admin configured");
    let mut c = HttpClient::connect(admin).await;
    let (status, _, body) = c.get("/metrics").await;
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one series in metrics text, e.g. `name{a="b"}`; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Whether an outside program a test drives (a browser, another implementation, a
/// tool) is here, checked by running `check`. When it is not, the test says so and
/// passes, except under CI (`CI=true`), where `.ci/run` installs it and its absence
/// fails.
pub fn peer_available(what: &str, check: &mut std::process::Command) -> bool {
    let ok = check
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "{what} is required under CI (.ci/run installs it)"
        );
        eprintln!("skipped: {what} is not installed");
    }
    ok
}
