//! Hostile HTTP/2 clients: each attack ends or is held within bounds while a
//! well-behaved client keeps being served.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::h2::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// A gateway with an h2c listener in front of `backend`.
async fn h2c_gateway(backend: SocketAddr, extra: &str) -> TestGateway {
    start(&h2_config("http2 = true", &[backend], extra)).await
}

/// A well-behaved client on a new connection gets its answer.
async fn served(addr: SocketAddr, what: &str) {
    let mut client = H2Client::h2c(addr).await;
    let (status, _, body) = client.get("/good").await;
    assert_eq!(status, 200, "{what}");
    let (head, _) = mirrored(&body);
    assert!(head.starts_with("GET /good\n"), "{what}: {head}");
}

/// Did the connection end (EOF or GOAWAY) within [`STEP`]? Fails the test if not.
async fn ends(r: &mut FrameReader, what: &str) -> Frame {
    let end = r.until(what, |f| f.kind == GOAWAY).await;
    end.unwrap_or(Frame {
        kind: 0xff,
        flags: 0,
        stream: 0,
        payload: Bytes::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_the_connection_closed_and_others_are_served() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(addr, "").await;
    served(gw.addr, "before").await;
    let (RawH2 { mut r, mut w }, _) = RawH2::handshake(gw.addr, &[]).await;
    // Ten thousand streams, each opened and at once cancelled.
    let mut attack = Vec::new();
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        attack.extend(get(id, "test.local", "/reset"));
        attack.extend(rst_stream(id, CANCEL));
    }
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&attack).await;
        w
    });
    let end = ends(&mut r, "the rapid-reset connection ends").await;
    if end.kind == GOAWAY {
        assert_ne!(end.error_code(), 0, "GOAWAY without an error: {end:?}");
    }
    drop(writer);
    served(gw.addr, "after").await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_not_buffered() {
    let (addr, conns) = mirror_backend().await;
    let gw = h2c_gateway(addr, "").await;
    served(gw.addr, "before").await;
    let (RawH2 { mut r, mut w }, _) = RawH2::handshake(gw.addr, &[]).await;
    let start = header_block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "test.local"),
        (":path", "/flood"),
    ]);
    // HEADERS without END_HEADERS, then CONTINUATION frames of 1 KiB of headers
    // each, up to 16 MiB in all: never the end of the header block.
    let writer = tokio::spawn(async move {
        if w.write_all(&frame(HEADERS, 0, 1, &start)).await.is_err() {
            return 0;
        }
        let value = "v".repeat(1000);
        let mut sent = 0usize;
        for n in 0..16 * 1024 {
            let name = format!("x-flood-{n}");
            let block = header_block(&[(&name, &value)]);
            if w.write_all(&frame(CONTINUATION, 0, 1, &block))
                .await
                .is_err()
            {
                break;
            }
            sent += block.len();
        }
        sent
    });
    ends(&mut r, "the flooding connection ends").await;
    let sent = within("the flood stops", writer).await.unwrap();
    assert!(
        sent < 16 << 20,
        "sluice took all {sent} bytes of one header block"
    );
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "only the good request went upstream"
    );
    served(gw.addr, "after").await;
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused() {
    let (addr, conns) = mirror_backend().await;
    let gw = h2c_gateway(addr, "[limits]\nmax_request_header_bytes = 2048\n").await;
    let (mut raw, _) = RawH2::handshake(gw.addr, &[]).await;
    let big = "x".repeat(3000);
    raw.send(&headers(
        1,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "test.local"),
            (":path", "/big"),
            ("x-big", &big),
        ],
        true,
    ))
    .await;
    match raw.outcome(1).await {
        Outcome::Response(Some(431), _)
        | Outcome::Reset(_)
        | Outcome::GoAway(_)
        | Outcome::Closed => {}
        other => panic!("an oversized header list was answered {other:?}"),
    }
    assert_eq!(conns.load(Ordering::SeqCst), 0);
    // Just under the limit passes.
    let mut client = H2Client::h2c(gw.addr).await;
    let req = Request::get(uri("http", "test.local", "/ok"))
        .header("x-ok", "x".repeat(1500))
        .body(empty())
        .unwrap();
    assert_eq!(client.send(req).await.0, 200);
}

/// Floods `frame_bytes` repeatedly from a client that never reads, up to 64 MiB.
/// Returns true when the server pushed back (stopped reading) or closed, false
/// when it swallowed all of it.
async fn flood_without_reading(addr: SocketAddr, unit: Vec<u8>) -> bool {
    let raw = RawH2::connect(addr, &[]).await;
    let mut w = raw.w;
    // Keep the read half alive and unread.
    let _r = raw.r;
    let chunk: Vec<u8> = unit
        .iter()
        .copied()
        .cycle()
        .take(unit.len() * 1000)
        .collect();
    let mut sent = 0usize;
    while sent < 64 << 20 {
        // A server that reads nothing more leaves this write pending: that is the
        // push back this test expects, seen as a write that does not complete.
        match tokio::time::timeout(Duration::from_secs(2), w.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) | Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_from_a_client_that_never_reads_is_bounded() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(addr, "").await;
    served(gw.addr, "before").await;
    let unit = settings(&[(SETTINGS_HEADER_TABLE_SIZE, 0)]);
    let flood = tokio::spawn(flood_without_reading(gw.addr, unit));
    served(gw.addr, "during").await;
    let bounded = tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the flood ran on")
        .unwrap();
    assert!(bounded, "64 MiB of SETTINGS were taken without push back");
    served(gw.addr, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(addr, "").await;
    served(gw.addr, "before").await;
    let unit = frame(PING, 0, 0, b"12345678");
    let flood = tokio::spawn(flood_without_reading(gw.addr, unit));
    served(gw.addr, "during").await;
    let bounded = tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the flood ran on")
        .unwrap();
    assert!(bounded, "64 MiB of PINGs were taken without push back");
    served(gw.addr, "after").await;
}

#[tokio::test]
async fn streams_beyond_max_concurrent_streams_are_refused() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let (addr, conns) = raw_backend(move |mut s, head| {
        let r = r.clone();
        async move {
            if head.starts_with("GET /hold") {
                r.notified().await;
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = read_to_eof(&mut s).await;
        }
    })
    .await;
    let gw = h2c_gateway(addr, "[http2]\nmax_concurrent_streams = 4\n").await;
    let (mut raw, server) = RawH2::handshake(gw.addr, &[]).await;
    assert!(
        server.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 4)),
        "{server:?}"
    );
    let mut five = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        five.extend(get(id, "test.local", "/hold"));
    }
    raw.send(&five).await;
    match raw.event(9).await {
        Event::Reset(code) => assert_eq!(code, REFUSED_STREAM),
        other => panic!("the fifth stream was not refused: {other:?}"),
    }
    eventually("four requests upstream", || async {
        conns.load(Ordering::SeqCst) == 4
    })
    .await;
    // Other clients are served meanwhile.
    let mut good = H2Client::h2c(gw.addr).await;
    assert_eq!(good.get("/free").await.0, 200);
    for _ in 0..4 {
        release.notify_one();
    }
    // Each of the four gets its answer; frames of the others are skipped by
    // `outcome`, so read the four in turn on the connection after release.
    let mut answered = 0;
    let deadline = Instant::now() + STEP;
    while answered < 4 {
        assert!(
            Instant::now() < deadline,
            "{answered} of 4 held streams answered"
        );
        let f = raw
            .r
            .until("held streams answered", |f| {
                f.has(END_STREAM) && (f.kind == DATA || f.kind == HEADERS)
            })
            .await
            .expect("the connection stays open");
        assert!([1, 3, 5, 7].contains(&f.stream), "{f:?}");
        answered += 1;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 5, "four held and one free");
}

#[tokio::test]
async fn a_client_that_sends_only_the_preface_is_closed_after_request_header() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(addr, "[timeouts]\nrequest_header = \"1s\"\n").await;
    let started = Instant::now();
    let mut raw = RawH2::connect(gw.addr, &[]).await;
    let seen = raw.r.until_closed("the silent client is closed").await;
    let took = started.elapsed();
    assert!(
        seen.first().is_some_and(|f| f.kind == SETTINGS),
        "the preface was not answered as HTTP/2: {seen:?}"
    );
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    served(gw.addr, "after").await;
}

#[tokio::test]
async fn an_idle_connection_without_streams_is_closed_after_request_header() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(addr, "[timeouts]\nrequest_header = \"1s\"\n").await;
    let (mut raw, _) = RawH2::handshake(gw.addr, &[]).await;
    raw.send(&get(1, "test.local", "/once")).await;
    match raw.outcome(1).await {
        Outcome::Response(Some(200), _) => {}
        other => panic!("{other:?}"),
    }
    let idle_since = Instant::now();
    raw.r.until_closed("the idle connection is closed").await;
    let took = idle_since.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(
        addr,
        "[timeouts]\nrequest_header = \"60s\"\n[http2]\nkeepalive_interval = \"300ms\"\nkeepalive_timeout = \"300ms\"\n",
    )
    .await;
    // A client that answers pings (hyper's does), connected over the same span.
    let mut good = H2Client::h2c(gw.addr).await;
    assert_eq!(good.get("/before").await.0, 200);
    let (mut raw, _) = RawH2::handshake(gw.addr, &[]).await;
    let ping = raw
        .r
        .until("a keepalive PING", |f| f.kind == PING && !f.has(ACK))
        .await;
    assert!(ping.is_some(), "the connection ended without a PING");
    raw.r.until_closed("the silent peer is closed").await;
    assert_eq!(good.get("/after").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_one_byte_window_does_not_stop_others() {
    let big = Bytes::from(vec![b'b'; 5 << 20]);
    let (addr, _) = http_backend(move |req: Request<hyper::body::Incoming>| {
        let big = big.clone();
        async move {
            if req.uri().path() == "/big" {
                Response::new(Full::new(big))
            } else {
                Response::new(Full::new(Bytes::from_static(b"small")))
            }
        }
    })
    .await;
    let gw = h2c_gateway(addr, "").await;
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let (mut raw, _) = RawH2::handshake(gw.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 1)]).await;
        raw.send(&get(1, "test.local", "/big")).await;
        // The head comes; the body can only trickle, and no WINDOW_UPDATE is sent.
        raw.r
            .until("the head of the big response", |f| {
                f.kind == HEADERS && f.stream == 1
            })
            .await
            .expect("the stuck client gets its head");
        stuck.push(raw);
    }
    let mut client = H2Client::h2c(gw.addr).await;
    for _ in 0..3 {
        let (status, _, body) = client.get("/big").await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), 5 << 20);
        assert_eq!(client.get("/small").await.2, "small");
    }
    drop(stuck);
}

#[tokio::test]
async fn a_preface_in_pieces_is_still_http2_and_a_stalled_one_is_closed() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let (addr, _) = mirror_backend().await;
    let gw = h2c_gateway(addr, "[timeouts]\nrequest_header = \"1s\"\n").await;
    // Three bytes at a time, with pauses: the listener waits for the whole preface
    // before it chooses, and then answers as HTTP/2 (a SETTINGS frame first).
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for piece in PREFACE.chunks(3) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    within("the server's SETTINGS", async {
        use tokio::io::AsyncReadExt;
        s.read_exact(&mut head).await
    })
    .await
    .unwrap();
    assert_eq!(head[3], 4, "the first frame is SETTINGS: {head:?}");
    // Part of a preface, then nothing: closed when `request_header` ends, unanswered.
    let mut stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stalled.write_all(&PREFACE[..8]).await.unwrap();
    let started = Instant::now();
    let rest = read_to_eof(&mut stalled).await;
    let took = started.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}
