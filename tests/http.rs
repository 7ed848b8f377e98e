//! Ordinary HTTP reverse proxying: bodies, keep-alive, header rules and errors.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn get_and_post_are_proxied_with_their_bodies() {
    let (addr, _) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let mut c = HttpClient::connect(gw.addr).await;
    let (status, _, body) = c.get("/a/b?x=1&y=2").await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"GET /a/b?x=1&y=2\n"), "{body:?}");

    let payload = Bytes::from(vec![b'p'; 100_000]);
    let req = Request::post("/upload")
        .header("host", "test.local")
        .header("content-type", "application/octet-stream")
        .body(Full::new(payload.clone()))
        .unwrap();
    let (status, _, body) = c.send(req).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"POST /upload\n"));
    assert!(body.ends_with(&payload));
}

#[tokio::test]
async fn chunked_request_bodies_are_streamed_upstream() {
    let (addr, _) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    // The rest comes later: the proxy must not wait for the whole body to start.
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut head = read_head(&mut s).await.unwrap();
    // The mirror's response is chunked or sized; read the rest until it ends.
    let mut rest = vec![0u8; 4096];
    let n = within("body", s.read(&mut rest)).await.unwrap();
    head.push_str(&String::from_utf8_lossy(&rest[..n]));
    assert_eq!(status_of(&head), 200);
    assert!(head.contains("hello world"), "{head}");
}

#[tokio::test]
async fn response_bodies_stream_as_they_are_produced() {
    // The upstream sends one chunk, then waits for the test to see it before the last.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (addr, _) = raw_backend(move |mut s, _| {
        let mut release = release_rx.clone();
        async move {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst \r\n")
                .await
                .unwrap();
            let _ = release.wait_for(|r| *r).await;
            s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.unwrap();
        }
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let head = within("head", read_head(&mut s)).await.unwrap();
    assert_eq!(status_of(&head), 200);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("first ") {
        let n = within("first chunk before the last is sent", s.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    release_tx.send(true).unwrap();
    while !got.ends_with(b"0\r\n\r\n") {
        let n = within("last chunk", s.read(&mut buf)).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("last"));
}

#[tokio::test]
async fn keep_alive_is_used_on_both_sides() {
    let (addr, upstream_conns) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let mut c = HttpClient::connect(gw.addr).await;
    for i in 0..20 {
        let (status, _, body) = c.get(&format!("/n/{i}")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(format!("GET /n/{i}\n").as_bytes()));
    }
    // Twenty requests from one client connection: the upstream saw one connection.
    assert_eq!(upstream_conns.load(Ordering::SeqCst), 1);
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "sluice_connections_total{listener=\"http\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "sluice_http_requests_total{route=\"backend\",status=\"200\"}"
        ),
        20.0
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let (addr, _) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let resp = raw_exchange(
        gw.addr,
        b"GET /h HTTP/1.1\r\nHost: app.example.com:8080\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nCookie: a=b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = resp.to_ascii_lowercase();
    for absent in [
        "x-drop-me",
        "keep-alive:",
        "\nte:",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !seen.contains(absent),
            "{absent} reached the upstream:\n{resp}"
        );
    }
    assert!(seen.contains("host: app.example.com:8080\n"), "{resp}");
    // The client's own X-Forwarded-For is replaced: it is not a trusted proxy.
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{resp}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{resp}");
    assert!(
        seen.contains("x-forwarded-host: app.example.com:8080\n"),
        "{resp}"
    );
    assert!(seen.contains("cookie: a=b\n"), "{resp}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_from_responses() {
    let (addr, _) = raw_backend(|mut s, _| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nok")
            .await
            .unwrap();
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("x-kept: yes"), "{resp}");
    assert!(!lower.contains("x-internal"), "{resp}");
    assert!(!lower.contains("keep-alive: timeout"), "{resp}");
}

#[tokio::test]
async fn unrouted_requests_get_404() {
    let (addr, _) = mirror_backend().await;
    let toml = format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"
[[routes]]
host = "only.example.com"
path = "/api"
upstream = "b"
[upstreams.b]
servers = ["{addr}"]
"#
    );
    let gw = start(&toml).await;
    let resp = raw_exchange(
        gw.addr,
        b"GET /api HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert!(resp.ends_with("no route for this host and path\n"));
    let resp = raw_exchange(
        gw.addr,
        b"GET /api/x HTTP/1.1\r\nHost: ONLY.example.com:80\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[tokio::test]
async fn a_dead_upstream_is_a_502() {
    let gw = gateway_for(&[dead_addr().await], "").await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(resp.ends_with("bad gateway\n"));
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &text,
            "sluice_http_requests_total{route=\"backend\",status=\"502\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let (addr, _) = raw_backend(|mut s, _| async move {
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "[timeouts]\nupstream_response = \"200ms\"\n").await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 504, "{resp}");
}

#[tokio::test]
async fn an_unasked_101_from_upstream_is_a_502() {
    let (addr, _) = raw_backend(|mut s, _| async move {
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        let _ = read_to_eof(&mut s).await;
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let resp = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status_of(&resp), 502, "{resp}");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let (addr, conns) = mirror_backend().await;
    let gw = gateway_for(&[addr], "[limits]\nmax_request_header_bytes = 2048\n").await;
    let big = "x".repeat(3000);
    let req = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let resp = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    // Answered like every other error: a plain-text body that says why.
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"),
        "{resp}"
    );
    assert!(
        resp.ends_with("the request head is larger than 2048 bytes\n"),
        "{resp}"
    );
    // Far past the limit hyper stops reading and answers 431 itself.
    let huge = "x".repeat(10_000);
    let req = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\n\r\n");
    let resp = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    // Just under the limit passes.
    let ok = "x".repeat(1500);
    let req = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Ok: {ok}\r\n\r\n");
    let resp = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_sending_one_byte_a_second_is_cut_off() {
    let (addr, conns) = mirror_backend().await;
    let gw = gateway_for(&[addr], "[timeouts]\nrequest_header = \"1s\"\n").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut closed = false;
    for b in request {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        // One byte a second; stop as soon as the proxy has hung up.
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the slow client was never cut off");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "cut off after {elapsed:?}"
    );
    assert_eq!(
        conns.load(Ordering::SeqCst),
        0,
        "the slow request reached the upstream"
    );
}

#[tokio::test]
async fn odd_requests_get_clear_refusals() {
    let (addr, conns) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let cases: [(&[u8], u16); 5] = [
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            405,
        ),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET /static/../admin HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /static/%2e%2E/admin HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ];
    for (req, status) in cases {
        let resp = raw_exchange(gw.addr, req).await;
        assert_eq!(
            status_of(&resp),
            status,
            "{}: {resp}",
            String::from_utf8_lossy(req)
        );
    }
    let garbage = raw_exchange(gw.addr, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert_eq!(status_of(&garbage), 400, "{garbage}");
    assert_eq!(conns.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn absolute_form_and_http_1_0_requests_get_a_host() {
    let (addr, _) = mirror_backend().await;
    let gw = gateway_for(&[addr], "").await;
    let resp = raw_exchange(
        gw.addr,
        b"GET http://abs.example.com/p?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("GET /p?q=1\n"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("host: abs.example.com\n"),
        "{resp}"
    );

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let resp = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains(&format!("host: {addr}\n")),
        "{resp}"
    );
}

#[tokio::test]
async fn head_requests_and_empty_responses_keep_the_connection_usable() {
    let (addr, _) = http_backend(|req: Request<hyper::body::Incoming>| async move {
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"0123456789")));
        if req.uri().path() == "/empty" {
            *r.status_mut() = http::StatusCode::NO_CONTENT;
            *r.body_mut() = Full::new(Bytes::new());
        }
        r
    })
    .await;
    let gw = gateway_for(&[addr], "").await;
    let mut c = HttpClient::connect(gw.addr).await;
    let req = Request::head("/x")
        .header("host", "t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = c.send(req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "10");
    assert!(body.is_empty());
    let (status, _, _) = c.get("/empty").await;
    assert_eq!(status, 204);
    let (status, _, body) = c.get("/x").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"0123456789");
}

/// A pooled connection the server closed while it sat idle is never used for the
/// next request: that goes on a new connection, and the client sees no error.
#[tokio::test]
async fn a_pooled_connection_the_server_closed_while_idle_is_not_used() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server answers one request per connection, keep-alive in its answer, then
    // closes it and says so.
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            n += 1;
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let got = s.read(&mut buf).await.unwrap();
                assert!(got > 0, "sluice closed before its request");
                head.extend_from_slice(&buf[..got]);
            }
            let body = format!("conn {n}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            drop(s);
            closed_tx.send(n).unwrap();
        }
    });
    let gw = gateway_for(&[addr], "").await;
    let mut c = HttpClient::connect(gw.addr).await;
    for n in 1..=3 {
        let (status, _, body) = c.get("/again").await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], format!("conn {n}").as_bytes());
        // Closed by the server, and its FIN sent, before the next request.
        assert_eq!(closed.recv().await, Some(n));
    }
}
