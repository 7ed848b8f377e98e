//! HTTP/2 to clients: ALPN on TLS listeners, h2c with prior knowledge where a plain
//! listener allows it, every request feature over h2 toward HTTP/1.1 upstreams, the
//! `[http2]` settings, the negotiated-protocol metric and access field.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::h2::*;
use support::pki::{Ca, tls_connect};
use support::process::Sluice;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A gateway with a TLS listener (default ALPN) in front of `backend`.
async fn tls_gateway(ca: &Ca, backend: SocketAddr, listener: &str) -> TestGateway {
    let cert = ca.server("server", &["localhost"]);
    start(&h2_config(
        &format!("{}\n{listener}", tls_line(&cert)),
        &[backend],
        "",
    ))
    .await
}

/// A gateway whose plain listener accepts h2c beside HTTP/1.1.
async fn h2c_gateway(backends: &[SocketAddr], extra: &str) -> TestGateway {
    start(&h2_config("http2 = true", backends, extra)).await
}

fn body_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

/// GET and a 5 MiB POST, its body mirrored back, over an HTTP/2 client.
async fn get_and_post(client: &mut H2Client, scheme: &str, authority: &str) {
    let (status, _, body) = client.get_from(scheme, authority, "/items?id=7").await;
    assert_eq!(status, 200);
    let (head, rest) = mirrored(&body);
    assert!(head.starts_with("GET /items?id=7\n"), "{head}");
    assert!(rest.is_empty());

    let big = body_of(5 << 20);
    let req = Request::post(uri(scheme, authority, "/upload"))
        .header("content-type", "application/octet-stream")
        .body(full(big.clone()))
        .unwrap();
    let (status, _, body) = client.send(req).await;
    assert_eq!(status, 200);
    let (head, rest) = mirrored(&body);
    assert!(head.starts_with("POST /upload\n"), "{head}");
    assert!(
        head.contains("content-type: application/octet-stream\n"),
        "{head}"
    );
    assert_eq!(rest.len(), big.len(), "the 5 MiB body came back whole");
    assert!(rest == big, "the 5 MiB body came back changed");
}

#[tokio::test]
async fn get_and_post_with_large_bodies_over_tls_h2() {
    let ca = Ca::new("h2");
    let (addr, _) = mirror_backend().await;
    let gw = tls_gateway(&ca, addr, "").await;
    let mut client = H2Client::tls(gw.addr, &ca).await;
    get_and_post(&mut client, "https", "localhost").await;
}

#[tokio::test]
async fn get_and_post_with_large_bodies_over_h2c() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(&[addr], "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    get_and_post(&mut client, "http", "test.local").await;
    // HTTP/1.1 still works on the same listener.
    let (status, _, _) = HttpClient::connect(gw.addr).await.get("/h1").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_and_response_bodies_stream_over_h2() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<&'static str>();
    let (go_tx, go) = mpsc::unbounded_channel::<()>();
    let go = std::sync::Arc::new(tokio::sync::Mutex::new(go));
    let (addr, _) = raw_backend(move |mut s, _head| {
        let seen_tx = seen_tx.clone();
        let go = go.clone();
        async move {
            // The request body arrives as the client sends it: "first" before the
            // client has sent "second".
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut said_first = false;
            while !got.ends_with(b"0\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request body ended early: {got:?}");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if !said_first && text.contains("first") {
                    said_first = true;
                    seen_tx.send("first").unwrap();
                }
            }
            assert!(String::from_utf8_lossy(&got).contains("second"));
            seen_tx.send("whole").unwrap();
            // The response body goes out in two chunks, the second only once the
            // client has shown it received the first.
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
                .await
                .unwrap();
            go.lock().await.recv().await;
            s.write_all(b"3\r\ntwo\r\n0\r\n\r\n").await.unwrap();
            let _ = read_to_eof(&mut s).await;
        }
    })
    .await;
    let gw = h2c_gateway(&[addr], "").await;
    let client = H2Client::h2c(gw.addr).await;
    let (tx, body) = streamed();
    let req = Request::post(uri("http", "test.local", "/stream"))
        .body(body)
        .unwrap();
    let pending = tokio::spawn({
        let mut sender = client.sender.clone();
        async move { sender.send_request(req).await }
    });
    tx.send(Bytes::from_static(b"first")).unwrap();
    assert_eq!(
        within("first chunk upstream", seen.recv()).await,
        Some("first")
    );
    tx.send(Bytes::from_static(b"second")).unwrap();
    drop(tx);
    assert_eq!(
        within("whole body upstream", seen.recv()).await,
        Some("whole")
    );
    let resp = within("response head", pending).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = within("first response chunk", body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"one");
    go_tx.send(()).unwrap();
    let rest = within("rest of the body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"two");
}

#[tokio::test]
async fn alpn_prefers_h2_and_falls_back_to_http1() {
    let ca = Ca::new("alpn");
    let (addr, _) = mirror_backend().await;
    let gw = tls_gateway(&ca, addr, "").await;
    // A client listing http/1.1 first still gets the server's preference, h2.
    let tls = tls_connect(
        gw.addr,
        "localhost",
        client_config(&ca, &[b"http/1.1", b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // A client offering only http/1.1 is served HTTP/1.1.
    let tls = tls_connect(gw.addr, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = http1_get(tls, "/fallback").await;
    assert_eq!(status, 200);
    let (head, _) = mirrored(&body);
    assert!(head.starts_with("GET /fallback\n"), "{head}");
    assert!(head.contains("x-forwarded-proto: https\n"), "{head}");
}

/// One GET over HTTP/1.1 on an established stream.
async fn http1_get<S>(io: S, path: &str) -> (http::StatusCode, Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp: Response<Incoming> = within("h1 response", sender.send_request(req))
        .await
        .unwrap();
    let status = resp.status();
    let body = within("h1 body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn a_tls_listener_with_http2_off_offers_only_http1() {
    let ca = Ca::new("noh2");
    let (addr, _) = mirror_backend().await;
    let gw = tls_gateway(&ca, addr, "http2 = false").await;
    let tls = tls_connect(
        gw.addr,
        "localhost",
        client_config(&ca, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _) = http1_get(tls, "/").await;
    assert_eq!(status, 200);
    // A client that only speaks h2 is never given it.
    match tls_connect(gw.addr, "localhost", client_config(&ca, &[b"h2"])).await {
        Err(_) => {}
        Ok(tls) => assert_ne!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..])),
    }
}

/// Writes an h2c preface with SETTINGS to `addr`; returns all that comes back
/// until the connection closes.
async fn h2c_preface_answer(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(settings(&[]));
    let _ = s.write_all(&out).await;
    read_to_eof(&mut s).await
}

#[tokio::test]
async fn a_default_plain_listener_refuses_an_h2c_preface() {
    let (addr, conns) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let answer = h2c_preface_answer(gw.addr).await;
    let text = String::from_utf8_lossy(&answer);
    // Closed, or an HTTP/1.1 error: never a SETTINGS frame.
    assert!(
        answer.is_empty() || (text.starts_with("HTTP/1.") && status_of(&text) >= 400),
        "the preface was answered with {answer:?}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 0);
    // And an explicit `http2 = false` is the same.
    let gw = start(&h2_config("http2 = false", &[addr], "")).await;
    let answer = h2c_preface_answer(gw.addr).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1."),
        "{answer:?}"
    );
}

#[tokio::test]
async fn upgrade_to_h2c_is_not_honoured_even_where_h2c_is_on() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(&[addr], "").await;
    let resp = raw_exchange(
        gw.addr,
        b"GET /h2 HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = resp.to_ascii_lowercase();
    assert!(seen.contains("get /h2\n"), "{resp}");
    assert!(!seen.contains("upgrade:"), "{resp}");
    assert!(!seen.contains("http2-settings"), "{resp}");
}

#[tokio::test]
async fn cookie_fields_arrive_joined_in_one_header() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(&[addr], "").await;
    let mut client = H2Client::h2c(gw.addr).await;
    let req = Request::get(uri("http", "test.local", "/c"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(empty())
        .unwrap();
    assert_eq!(req.headers().get_all("cookie").iter().count(), 3);
    let (status, _, body) = client.send(req).await;
    assert_eq!(status, 200);
    let (head, _) = mirrored(&body);
    let cookies: Vec<&str> = head.lines().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(cookies, ["cookie: a=1; b=2; c=3"], "{head}");
}

#[tokio::test]
async fn host_and_forwarded_headers_come_from_the_authority() {
    let ca = Ca::new("fwd");
    let (addr, _) = mirror_backend().await;
    let gw = tls_gateway(&ca, addr, "").await;
    let mut client = H2Client::tls(gw.addr, &ca).await;
    let req = Request::get(uri("https", "app.example.com:8443", "/who"))
        .header("x-forwarded-for", "198.51.100.1")
        .body(empty())
        .unwrap();
    let (status, _, body) = client.send(req).await;
    assert_eq!(status, 200);
    let (head, _) = mirrored(&body);
    assert!(head.contains("host: app.example.com:8443\n"), "{head}");
    assert!(
        head.contains("x-forwarded-host: app.example.com:8443\n"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-proto: https\n"), "{head}");
    // Replaced, not appended to: the client is not a trusted proxy.
    assert!(head.contains("x-forwarded-for: 127.0.0.1\n"), "{head}");
    assert_eq!(head.matches("\nhost:").count(), 1, "{head}");
}

#[tokio::test]
async fn routes_are_chosen_by_the_authority() {
    let named = |name: &'static str| {
        http_backend(move |req: Request<Incoming>| async move {
            let path = req.uri().path().to_owned();
            Response::new(Full::new(Bytes::from(format!("{name} {path}"))))
        })
    };
    let (a, _) = named("a").await;
    let (b, _) = named("b").await;
    let (any, _) = named("any").await;
    let gw = start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
http2 = true
[[routes]]
host = "a.test"
upstream = "a"
[[routes]]
host = "b.test"
path = "/api"
upstream = "b"
[[routes]]
upstream = "any"
[upstreams.a]
servers = ["{a}"]
[upstreams.b]
servers = ["{b}"]
[upstreams.any]
servers = ["{any}"]
"#
    ))
    .await;
    let mut client = H2Client::h2c(gw.addr).await;
    for (authority, path, expected) in [
        ("a.test", "/x", "a /x"),
        ("A.TEST:8080", "/y", "a /y"),
        ("b.test", "/api/v1", "b /api/v1"),
        ("b.test", "/other", "any /other"),
        ("c.test", "/api", "any /api"),
    ] {
        let (status, _, body) = client.get_from("http", authority, path).await;
        assert_eq!(status, 200, "{authority}{path}");
        assert_eq!(body, expected.as_bytes(), "{authority}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_on_one_connection() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(&[addr], "").await;
    let client = H2Client::h2c(gw.addr).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let mut sender = client.sender.clone();
            tokio::spawn(async move {
                let path = format!("/stream/{i}");
                let req = Request::get(uri("http", "test.local", &path))
                    .body(empty())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let (head, _) = mirrored(&body);
                assert!(head.starts_with(&format!("GET {path}\n")), "{head}");
            })
        })
        .collect();
    for t in tasks {
        within("every stream answered", t).await.unwrap();
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "sluice_connections_total{listener=\"http\"}"),
        1.0,
        "all streams shared one client connection"
    );
}

#[tokio::test]
async fn the_negotiated_protocol_is_counted() {
    let ca = Ca::new("metric");
    let (addr, _) = mirror_backend().await;
    let gw = tls_gateway(&ca, addr, "").await;
    let mut h2 = H2Client::tls(gw.addr, &ca).await;
    assert_eq!(h2.get_from("https", "localhost", "/").await.0, 200);
    let tls = tls_connect(gw.addr, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(http1_get(tls, "/").await.0, 200);
    let tls = tls_connect(gw.addr, "localhost", ca.client_default())
        .await
        .unwrap();
    assert_eq!(http1_get(tls, "/").await.0, 200);
    let text = metrics_text(&gw).await;
    let h2_series = "sluice_connections_negotiated_total{listener=\"http\",protocol=\"h2\"}";
    let h1_series = "sluice_connections_negotiated_total{listener=\"http\",protocol=\"http1\"}";
    assert!(text.contains(h2_series), "no h2 series in:\n{text}");
    assert_eq!(metric(&text, h2_series), 1.0);
    assert_eq!(metric(&text, h1_series), 2.0);

    // On an h2c listener: prior knowledge counts as h2, HTTP/1.1 as http1.
    let gw = h2c_gateway(&[addr], "").await;
    let mut h2 = H2Client::h2c(gw.addr).await;
    assert_eq!(h2.get("/").await.0, 200);
    assert_eq!(HttpClient::connect(gw.addr).await.get("/").await.0, 200);
    let text = metrics_text(&gw).await;
    assert_eq!(metric(&text, h2_series), 1.0);
    assert_eq!(metric(&text, h1_series), 1.0);
}

#[tokio::test]
async fn access_lines_name_the_protocol() {
    let (addr, _) = mirror_backend().await;
    let sluice = Sluice::start(&h2_config(
        "http2 = true",
        &[addr],
        "[log]\nformat = \"json\"\n",
    ));
    let mut h2 = H2Client::h2c(sluice.http).await;
    assert_eq!(h2.get("/over-h2").await.0, 200);
    let line = sluice.wait_log("\"target\":\"access\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["path"], "/over-h2", "{line}");
    assert_eq!(v["fields"]["protocol"], "h2", "{line}");
    assert_eq!(v["fields"]["host"], "test.local", "{line}");

    let resp = raw_exchange(
        sluice.http,
        b"GET /over-h1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let line = sluice.wait_log("\"target\":\"access\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["path"], "/over-h1", "{line}");
    assert_eq!(v["fields"]["protocol"], "http1", "{line}");
}

#[tokio::test]
async fn the_server_advertises_extended_connect_and_its_stream_limit() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(&[addr], "").await;
    let (mut raw, server) = RawH2::handshake(gw.addr, &[]).await;
    assert!(
        server.contains(&(SETTINGS_ENABLE_CONNECT_PROTOCOL, 1)),
        "{server:?}"
    );
    assert!(
        server.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 128)),
        "{server:?}"
    );
    raw.send(&get(1, "test.local", "/raw")).await;
    match raw.outcome(1).await {
        Outcome::Response(status, body) => {
            assert_eq!(status, Some(200));
            assert!(body.starts_with(b"GET /raw\n"));
        }
        other => panic!("{other:?}"),
    }

    let gw = h2c_gateway(&[addr], "[http2]\nmax_concurrent_streams = 7\n").await;
    let (_raw, server) = RawH2::handshake(gw.addr, &[]).await;
    assert!(
        server.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 7)),
        "{server:?}"
    );
}

// ---- configuration ----

const TAIL: &str = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nhttp2 = true\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:9001\"]\n";

fn parse(toml: &str) -> Result<sluice::config::Settings, String> {
    sluice::config::parse(toml, Path::new("h2.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_http2_table_is_accepted_with_defaults_and_values() {
    parse(TAIL).unwrap_or_else(|e| panic!("{e}"));
    let full = format!(
        "[http2]\nmax_concurrent_streams = 64\nkeepalive_interval = \"15s\"\nkeepalive_timeout = \"5s\"\n{TAIL}"
    );
    parse(&full).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_http2_settings_are_named() {
    for (table, key) in [
        ("max_concurrent_streams = 0", "max_concurrent_streams"),
        ("max_concurrent_streams = -1", "max_concurrent_streams"),
        ("keepalive_interval = \"soon\"", "keepalive_interval"),
        // A wrong type gets toml's own message, placed at the value.
        ("keepalive_timeout = 5", "h2.toml:2:21: invalid type"),
        ("max_streams = 4", "max_streams"),
    ] {
        let toml = format!("[http2]\n{table}\n{TAIL}");
        match parse(&toml) {
            Ok(_) => panic!("accepted: {table}"),
            Err(e) => {
                assert!(e.starts_with("h2.toml:2:"), "{table}: {e}");
                assert!(e.contains(key), "{table}: {e}");
            }
        }
    }
    let toml = TAIL.replace("http2 = true", "http2 = \"yes\"");
    let Err(e) = parse(&toml) else {
        panic!("http2 = \"yes\" accepted");
    };
    assert!(e.starts_with("h2.toml:3:"), "{e}");
}

#[test]
fn check_accepts_http2_settings_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_sluice");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[http2]\nmax_concurrent_streams = 4\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n{TAIL}"),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["-c", good.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("[http2]\nmax_concurrent_streams = 0\n{TAIL}")).unwrap();
    let out = Command::new(bin)
        .args(["-c", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2:", bad.display())) && err.contains("max_concurrent_streams"),
        "{err}"
    );
}

// ---- shutdown ----

#[tokio::test]
async fn sigterm_sends_goaway_and_the_in_flight_stream_completes() {
    let (got_tx, mut got) = mpsc::unbounded_channel::<()>();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let (addr, _) = raw_backend(move |mut s, _head| {
        let got_tx = got_tx.clone();
        let r = r.clone();
        async move {
            // The response waits until the test has seen the GOAWAY.
            let _ = got_tx.send(());
            r.notified().await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
                .await
                .unwrap();
            let _ = read_to_eof(&mut s).await;
        }
    })
    .await;
    let mut sluice = Sluice::start(&h2_config(
        "http2 = true",
        &[addr],
        "[timeouts]\ndrain = \"5s\"\n",
    ));
    let (mut raw, _) = RawH2::handshake(sluice.http, &[]).await;
    raw.send(&get(1, "test.local", "/slow")).await;
    within("the request reaches the upstream", got.recv())
        .await
        .unwrap();
    sluice.signal("TERM");
    let goaway = raw
        .r
        .until("GOAWAY on SIGTERM", |f| f.kind == GOAWAY)
        .await
        .expect("a GOAWAY before the connection ends");
    assert_eq!(goaway.error_code(), 0, "a graceful GOAWAY: {goaway:?}");
    release.notify_one();
    assert_eq!(
        raw.outcome(1).await,
        Outcome::Response(Some(200), b"done".to_vec()),
        "the in-flight stream completes after the GOAWAY"
    );
    raw.r.until_closed("the drained connection closes").await;
    let (code, took) = sluice.wait_exit().await;
    assert_eq!(code, Some(0));
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
}
